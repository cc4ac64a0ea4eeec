//! Domains: typed handles named after libvirt's API (`virDomain*`), on a [`Connect`].

use rvirt_proto::v1::domain_service_client::DomainServiceClient;
use rvirt_proto::v1::*;

use crate::connect::{Connect, GrpcTransport};
use crate::error::Result;

const SERVICE: &str = "rvirt.v1.DomainService";

/// A domain as seen when it was looked up (libvirt's `virDomainPtr`): its identity is fixed,
/// its state is whatever the last call returned.
#[derive(Debug, Clone)]
pub struct Domain {
    conn: Connect,
    summary: rvirt_proto::v1::Domain,
}

impl Connect {
    fn domain_client(&self) -> Result<DomainServiceClient<GrpcTransport>> {
        Ok(DomainServiceClient::new(self.transport(SERVICE)?))
    }

    fn domain_handle(&self, summary: Option<rvirt_proto::v1::Domain>) -> Domain {
        Domain {
            conn: self.clone(),
            summary: summary.unwrap_or_default(),
        }
    }

    async fn lookup_domain(&self, key: domain_ref::Key) -> Result<Domain> {
        let reply = self
            .domain_client()?
            .lookup_domain(LookupDomainRequest {
                domain: Some(DomainRef { key: Some(key) }),
            })
            .await?;
        Ok(self.domain_handle(reply.into_inner().domain))
    }

    /// `virDomainLookupByName`.
    pub async fn lookup_domain_by_name(&self, name: &str) -> Result<Domain> {
        self.lookup_domain(domain_ref::Key::Name(name.to_owned())).await
    }

    /// `virDomainLookupByUUIDString`.
    pub async fn lookup_domain_by_uuid(&self, uuid: &str) -> Result<Domain> {
        self.lookup_domain(domain_ref::Key::Uuid(uuid.to_owned())).await
    }

    /// `virDomainLookupByID`.
    pub async fn lookup_domain_by_id(&self, id: i32) -> Result<Domain> {
        self.lookup_domain(domain_ref::Key::Id(id)).await
    }

    /// `virConnectListAllDomains`: `flags` are `DomainListFlag` bits.
    pub async fn list_all_domains(&self, flags: u32) -> Result<Vec<Domain>> {
        let reply = self
            .domain_client()?
            .list_domains(ListDomainsRequest { flags })
            .await?;
        Ok(reply
            .into_inner()
            .domains
            .into_iter()
            .map(|d| self.domain_handle(Some(d)))
            .collect())
    }

    /// `virDomainDefineXMLFlags`.
    pub async fn define_domain_xml(&self, xml: &str, flags: u32) -> Result<Domain> {
        let reply = self
            .domain_client()?
            .define_domain_xml(DefineDomainXmlRequest {
                xml: xml.into(),
                flags,
            })
            .await?;
        Ok(self.domain_handle(reply.into_inner().domain))
    }

    /// `virDomainCreateXML`: a transient domain, started.
    pub async fn create_domain_xml(&self, xml: &str, flags: u32) -> Result<Domain> {
        let reply = self
            .domain_client()?
            .create_domain_xml(CreateDomainXmlRequest {
                xml: xml.into(),
                flags,
            })
            .await?;
        Ok(self.domain_handle(reply.into_inner().domain))
    }
}

impl Domain {
    fn reference(&self) -> Option<DomainRef> {
        Some(DomainRef {
            key: Some(domain_ref::Key::Uuid(self.summary.uuid.clone())),
        })
    }

    fn client(&self) -> Result<DomainServiceClient<GrpcTransport>> {
        self.conn.domain_client()
    }

    /// `virDomainGetName`.
    pub fn name(&self) -> &str {
        &self.summary.name
    }

    /// `virDomainGetUUIDString`.
    pub fn uuid(&self) -> &str {
        &self.summary.uuid
    }

    /// `virDomainGetID`: the runtime id when it was last seen running.
    pub fn id(&self) -> Option<i32> {
        (self.summary.id >= 0).then_some(self.summary.id)
    }

    /// The summary returned by the last call (state, persistence, autostart, title).
    pub fn summary(&self) -> &rvirt_proto::v1::Domain {
        &self.summary
    }

    /// Re-reads the summary.
    pub async fn refresh(&mut self) -> Result<()> {
        let reply = self
            .client()?
            .lookup_domain(LookupDomainRequest {
                domain: self.reference(),
            })
            .await?;
        self.summary = reply.into_inner().domain.unwrap_or_default();
        Ok(())
    }

    /// `virDomainCreateWithFlags`: starts a defined domain.
    pub async fn create(&mut self, flags: u32) -> Result<()> {
        let reply = self
            .client()?
            .start_domain(StartDomainRequest {
                domain: self.reference(),
                flags,
            })
            .await?;
        if let Some(d) = reply.into_inner().domain {
            self.summary = d;
        }
        Ok(())
    }

    /// `virDomainShutdownFlags`.
    pub async fn shutdown(&self, flags: u32) -> Result<()> {
        self.client()?
            .shutdown_domain(ShutdownDomainRequest {
                domain: self.reference(),
                flags,
            })
            .await?;
        Ok(())
    }

    /// `virDomainReboot`.
    pub async fn reboot(&self, flags: u32) -> Result<()> {
        self.client()?
            .reboot_domain(RebootDomainRequest {
                domain: self.reference(),
                flags,
            })
            .await?;
        Ok(())
    }

    /// `virDomainReset`.
    pub async fn reset(&self) -> Result<()> {
        self.client()?
            .reset_domain(ResetDomainRequest {
                domain: self.reference(),
                flags: 0,
            })
            .await?;
        Ok(())
    }

    /// `virDomainDestroyFlags`.
    pub async fn destroy(&self, flags: u32) -> Result<()> {
        self.client()?
            .destroy_domain(DestroyDomainRequest {
                domain: self.reference(),
                flags,
            })
            .await?;
        Ok(())
    }

    /// `virDomainSuspend`.
    pub async fn suspend(&self) -> Result<()> {
        self.client()?
            .suspend_domain(SuspendDomainRequest {
                domain: self.reference(),
            })
            .await?;
        Ok(())
    }

    /// `virDomainResume`.
    pub async fn resume(&self) -> Result<()> {
        self.client()?
            .resume_domain(ResumeDomainRequest {
                domain: self.reference(),
            })
            .await?;
        Ok(())
    }

    /// `virDomainUndefineFlags`.
    pub async fn undefine(&self, flags: u32) -> Result<()> {
        self.client()?
            .undefine_domain(UndefineDomainRequest {
                domain: self.reference(),
                flags,
            })
            .await?;
        Ok(())
    }

    /// `virDomainGetXMLDesc`: `flags` are `DomainXmlFlag` bits.
    pub async fn xml_desc(&self, flags: u32) -> Result<String> {
        let reply = self
            .client()?
            .get_domain_xml(GetDomainXmlRequest {
                domain: self.reference(),
                flags,
            })
            .await?;
        Ok(reply.into_inner().xml)
    }

    /// `virDomainGetInfo`.
    pub async fn info(&self) -> Result<GetDomainInfoResponse> {
        Ok(self
            .client()?
            .get_domain_info(GetDomainInfoRequest {
                domain: self.reference(),
            })
            .await?
            .into_inner())
    }

    /// `virDomainGetState`: the state and its reason.
    pub async fn state(&self) -> Result<GetDomainStateResponse> {
        Ok(self
            .client()?
            .get_domain_state(GetDomainStateRequest {
                domain: self.reference(),
            })
            .await?
            .into_inner())
    }

    /// `virDomainGetAutostart`.
    pub async fn autostart(&self) -> Result<bool> {
        let reply = self
            .client()?
            .get_domain_autostart(GetDomainAutostartRequest {
                domain: self.reference(),
            })
            .await?;
        Ok(reply.into_inner().autostart)
    }

    /// `virDomainRename`: an inactive persistent domain gets `new_name`.
    pub async fn rename(&self, new_name: &str) -> Result<()> {
        self.client()?
            .rename_domain(RenameDomainRequest {
                domain: self.reference(),
                new_name: new_name.to_owned(),
                flags: 0,
            })
            .await?;
        Ok(())
    }

    /// `virDomainGetMetadata`: the title, description, or the `<metadata>` element of
    /// namespace `uri`; `NO_DOMAIN_METADATA` when there is none.
    pub async fn metadata(&self, kind: DomainMetadataType, uri: &str, flags: u32) -> Result<String> {
        let reply = self
            .client()?
            .get_domain_metadata(GetDomainMetadataRequest {
                domain: self.reference(),
                r#type: kind as i32,
                uri: uri.to_owned(),
                flags,
            })
            .await?;
        Ok(reply.into_inner().metadata)
    }

    /// `virDomainSetMetadata`: sets (or with `metadata` absent removes) the title, description,
    /// or the `<metadata>` element of namespace `uri`, written with prefix `key`.
    pub async fn set_metadata(
        &self,
        kind: DomainMetadataType,
        metadata: Option<&str>,
        key: &str,
        uri: &str,
        flags: u32,
    ) -> Result<()> {
        self.client()?
            .set_domain_metadata(SetDomainMetadataRequest {
                domain: self.reference(),
                r#type: kind as i32,
                metadata: metadata.map(str::to_owned),
                key: key.to_owned(),
                uri: uri.to_owned(),
                flags,
            })
            .await?;
        Ok(())
    }

    /// `virDomainSetAutostart`.
    pub async fn set_autostart(&self, autostart: bool) -> Result<()> {
        self.client()?
            .set_domain_autostart(SetDomainAutostartRequest {
                domain: self.reference(),
                autostart,
            })
            .await?;
        Ok(())
    }

    /// `virDomainSetMemoryFlags`, in KiB.
    pub async fn set_memory(&self, memory_kib: u64, flags: u32) -> Result<()> {
        self.client()?
            .set_domain_memory(SetDomainMemoryRequest {
                domain: self.reference(),
                memory_kib,
                flags,
            })
            .await?;
        Ok(())
    }

    /// `virDomainSetVcpusFlags`.
    pub async fn set_vcpus(&self, nvcpus: u32, flags: u32) -> Result<()> {
        self.client()?
            .set_domain_vcpus(SetDomainVcpusRequest {
                domain: self.reference(),
                nvcpus,
                flags,
            })
            .await?;
        Ok(())
    }

    /// `virDomainAttachDeviceFlags`.
    pub async fn attach_device(&self, xml: &str, flags: u32) -> Result<()> {
        self.client()?
            .attach_domain_device(AttachDomainDeviceRequest {
                domain: self.reference(),
                xml: xml.into(),
                flags,
            })
            .await?;
        Ok(())
    }

    /// `virDomainDetachDeviceFlags`.
    pub async fn detach_device(&self, xml: &str, flags: u32) -> Result<()> {
        self.client()?
            .detach_domain_device(DetachDomainDeviceRequest {
                domain: self.reference(),
                device: Some(detach_domain_device_request::Device::Xml(xml.into())),
                flags,
            })
            .await?;
        Ok(())
    }

    /// `virDomainUpdateDeviceFlags`.
    pub async fn update_device(&self, xml: &str, flags: u32) -> Result<()> {
        self.client()?
            .update_domain_device(UpdateDomainDeviceRequest {
                domain: self.reference(),
                xml: xml.into(),
                flags,
            })
            .await?;
        Ok(())
    }
}

/// One domain event, as delivered to subscribers.
pub type DomainEventItem = crate::watch::WatchItem<DomainEvent>;

fn split_domain_event(
    response: WatchDomainEventsResponse,
) -> Option<crate::watch::WatchMessage<DomainEvent>> {
    use crate::watch::WatchMessage;
    use watch_domain_events_response::Message;
    match response.message? {
        Message::Event(event) => Some(WatchMessage::Event {
            epoch: event.epoch.clone(),
            sequence: event.sequence,
            event,
        }),
        Message::ResyncRequired(r) => Some(WatchMessage::Resync(r)),
        Message::CaughtUp(c) => Some(WatchMessage::CaughtUp(c)),
    }
}

impl Connect {
    /// Domain events (`virConnectDomainEventRegisterAny`), reconnecting and resuming by
    /// sequence when the connection drops. `filter` narrows the watch (domain, event ids).
    /// Returns once the daemon confirmed the watch: every change made after it is seen.
    pub async fn domain_events(
        &self,
        filter: WatchDomainEventsRequest,
    ) -> Result<crate::watch::Subscription<DomainEvent>> {
        let transport = self.transport(SERVICE)?;
        let open: crate::watch::Opener<WatchDomainEventsResponse> = Box::new(move |epoch, sequence| {
            let mut client = DomainServiceClient::new(transport.clone());
            let request = WatchDomainEventsRequest {
                since_epoch: epoch,
                since_sequence: sequence,
                ..filter.clone()
            };
            Box::pin(async move {
                let stream = client.watch_domain_events(request).await?.into_inner();
                Ok(Box::pin(stream) as crate::watch::RawStream<WatchDomainEventsResponse>)
            })
        });
        crate::watch::subscribe(open, split_domain_event, None).await
    }
}

/// What every driver serving `DomainService` (virtqemud, the in-process test driver) answers the
/// same way: list filters, event ids, and the event stream's messages.
pub mod serve {
    use rvirt_proto::v1::*;

    use crate::events::Delivery;

    /// One entry of a domain event log: who, and what happened.
    pub type DomainEventData = (DomainIdentity, domain_event::Event);

    /// Whether `domain` passes libvirt's `virConnectListAllDomains` filter `flags`: within each
    /// group of flags (active/inactive, persistent/transient, state, managed save, autostart,
    /// snapshot, checkpoint) a domain must match one of the flags set, if any is set.
    pub fn matches_list_flags(domain: &rvirt_proto::v1::Domain, flags: u32) -> bool {
        use DomainListFlag as F;
        let flagged = |bit: F| flags & (bit as u32) != 0;
        let group = |bits: &[(F, bool)]| {
            let set: Vec<bool> = bits
                .iter()
                .filter(|(f, _)| flagged(*f))
                .map(|(_, m)| *m)
                .collect();
            set.is_empty() || set.contains(&true)
        };
        let state = DomainState::try_from(domain.state).unwrap_or(DomainState::Nostate);
        group(&[(F::Active, domain.active), (F::Inactive, !domain.active)])
            && group(&[
                (F::Persistent, domain.persistent),
                (F::Transient, !domain.persistent),
            ])
            && group(&[
                (F::Running, state == DomainState::Running),
                (F::Paused, state == DomainState::Paused),
                (F::Shutoff, state == DomainState::Shutoff),
                (
                    F::Other,
                    !matches!(
                        state,
                        DomainState::Running | DomainState::Paused | DomainState::Shutoff
                    ),
                ),
            ])
            && group(&[
                (F::Managedsave, domain.has_managed_save),
                (F::NoManagedsave, !domain.has_managed_save),
            ])
            && group(&[
                (F::Autostart, domain.autostart),
                (F::NoAutostart, !domain.autostart),
            ])
            && group(&[(F::HasSnapshot, false), (F::NoSnapshot, true)])
            && group(&[(F::HasCheckpoint, false), (F::NoCheckpoint, true)])
    }

    /// The event id a subscriber filters `event` by.
    pub fn event_id(event: &domain_event::Event) -> DomainEventId {
        match event {
            domain_event::Event::Reboot(_) => DomainEventId::Reboot,
            domain_event::Event::BalloonChange(_) => DomainEventId::BalloonChange,
            _ => DomainEventId::Lifecycle,
        }
    }

    /// The stream message for one delivery of a domain event log, or `None` when the
    /// subscriber's filters (`wanted` event ids, `domain`) leave it out.
    pub fn watch_response(
        delivery: Delivery<DomainEventData>,
        epoch: &str,
        wanted: &[i32],
        domain: Option<&domain_ref::Key>,
    ) -> Option<WatchDomainEventsResponse> {
        let message = match delivery {
            Delivery::Event(e) => {
                let (who, event) = &e.event;
                if !wanted.is_empty() && !wanted.contains(&(event_id(event) as i32)) {
                    return None;
                }
                let matches = match domain {
                    None => true,
                    Some(domain_ref::Key::Name(n)) => &who.name == n,
                    Some(domain_ref::Key::Uuid(u)) => {
                        uuid::Uuid::parse_str(u.trim()).is_ok_and(|u| u.hyphenated().to_string() == who.uuid)
                    }
                    Some(domain_ref::Key::Id(id)) => who.id == *id,
                };
                if !matches {
                    return None;
                }
                watch_domain_events_response::Message::Event(DomainEvent {
                    sequence: e.sequence,
                    epoch: epoch.to_owned(),
                    time: Some(prost_types::Timestamp::from(e.time)),
                    domain: Some(who.clone()),
                    event: Some(event.clone()),
                })
            }
            Delivery::CaughtUp {
                epoch,
                current_sequence,
            } => watch_domain_events_response::Message::CaughtUp(CaughtUp {
                epoch,
                current_sequence,
            }),
            Delivery::ResyncRequired {
                reason,
                epoch,
                requested_sequence,
                oldest_retained_sequence,
                current_sequence,
            } => watch_domain_events_response::Message::ResyncRequired(ResyncRequired {
                reason: ResyncReason::from(reason) as i32,
                epoch,
                requested_sequence,
                oldest_retained_sequence,
                current_sequence,
            }),
        };
        Some(WatchDomainEventsResponse {
            message: Some(message),
        })
    }
}
