//! The gRPC domain service: a thin layer that turns requests into calls on
//! [`Domains`](crate::domain::Domains) and their results into responses.

use std::pin::Pin;
use std::sync::Arc;

use rvirt::domain::serve::{matches_list_flags, watch_response};
use rvirt_proto::access;
use rvirt_proto::error::status;
use rvirt_proto::v1::domain_service_server::DomainService;
use rvirt_proto::v1::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use crate::domain::Domains;
use crate::domain::console::{ConsoleIo, OpenConsole};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The domain service of virtqemud.
#[derive(Debug, Clone)]
pub struct QemuDomainService {
    domains: Arc<Domains>,
}

impl QemuDomainService {
    /// The service over `domains`.
    pub fn new(domains: Arc<Domains>) -> Self {
        QemuDomainService { domains }
    }
}

fn flagged(flags: u32, bit: i32) -> bool {
    flags & (bit as u32) != 0
}

fn unsupported_flags(flags: u32, known: u32) -> Result<(), Status> {
    let unknown = flags & !known;
    if unknown != 0 {
        return Err(status(
            ErrorCode::InvalidArg,
            ErrorDomain::Qemu,
            format!("Unsupported flags (0x{unknown:x}) in function"),
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl DomainService for QemuDomainService {
    async fn define_domain_xml(
        &self,
        request: Request<DefineDomainXmlRequest>,
    ) -> Result<Response<DefineDomainXmlResponse>, Status> {
        let request = request.into_inner();
        unsupported_flags(request.flags, DomainDefineFlag::Validate as u32)?;
        let domain = self.domains.define(&request.xml).await?;
        Ok(Response::new(DefineDomainXmlResponse { domain: Some(domain) }))
    }

    async fn undefine_domain(
        &self,
        request: Request<UndefineDomainRequest>,
    ) -> Result<Response<UndefineDomainResponse>, Status> {
        let request = request.into_inner();
        let vm = self.domains.find(request.domain.as_ref())?;
        self.domains.undefine(&vm).await?;
        Ok(Response::new(UndefineDomainResponse {}))
    }

    async fn create_domain_xml(
        &self,
        request: Request<CreateDomainXmlRequest>,
    ) -> Result<Response<CreateDomainXmlResponse>, Status> {
        let request = request.into_inner();
        unsupported_flags(
            request.flags,
            (DomainCreateFlag::StartPaused as u32) | (DomainCreateFlag::StartValidate as u32),
        )?;
        let paused = flagged(request.flags, DomainCreateFlag::StartPaused as i32);
        let vm = self.domains.create(&request.xml, paused).await?;
        Ok(Response::new(CreateDomainXmlResponse {
            domain: Some(vm.describe()),
        }))
    }

    async fn start_domain(
        &self,
        request: Request<StartDomainRequest>,
    ) -> Result<Response<StartDomainResponse>, Status> {
        let request = request.into_inner();
        unsupported_flags(
            request.flags,
            (DomainCreateFlag::StartPaused as u32) | (DomainCreateFlag::StartForceBoot as u32),
        )?;
        let vm = self.domains.find(request.domain.as_ref())?;
        let paused = flagged(request.flags, DomainCreateFlag::StartPaused as i32);
        self.domains.start(&vm, paused).await?;
        Ok(Response::new(StartDomainResponse {
            domain: Some(vm.describe()),
        }))
    }

    async fn shutdown_domain(
        &self,
        request: Request<ShutdownDomainRequest>,
    ) -> Result<Response<ShutdownDomainResponse>, Status> {
        let request = request.into_inner();
        unsupported_flags(request.flags, DomainShutdownFlag::AcpiPowerBtn as u32)?;
        let vm = self.domains.find(request.domain.as_ref())?;
        self.domains.shutdown(&vm).await?;
        Ok(Response::new(ShutdownDomainResponse {}))
    }

    async fn reboot_domain(
        &self,
        request: Request<RebootDomainRequest>,
    ) -> Result<Response<RebootDomainResponse>, Status> {
        let request = request.into_inner();
        unsupported_flags(request.flags, DomainRebootFlag::AcpiPowerBtn as u32)?;
        let vm = self.domains.find(request.domain.as_ref())?;
        self.domains.reboot(&vm).await?;
        Ok(Response::new(RebootDomainResponse {}))
    }

    async fn reset_domain(
        &self,
        request: Request<ResetDomainRequest>,
    ) -> Result<Response<ResetDomainResponse>, Status> {
        let request = request.into_inner();
        unsupported_flags(request.flags, 0)?;
        let vm = self.domains.find(request.domain.as_ref())?;
        self.domains.reset(&vm).await?;
        Ok(Response::new(ResetDomainResponse {}))
    }

    async fn destroy_domain(
        &self,
        request: Request<DestroyDomainRequest>,
    ) -> Result<Response<DestroyDomainResponse>, Status> {
        let request = request.into_inner();
        unsupported_flags(request.flags, DomainDestroyFlag::Graceful as u32)?;
        let vm = self.domains.find(request.domain.as_ref())?;
        let graceful = flagged(request.flags, DomainDestroyFlag::Graceful as i32);
        self.domains.destroy(&vm, graceful).await?;
        Ok(Response::new(DestroyDomainResponse {}))
    }

    async fn suspend_domain(
        &self,
        request: Request<SuspendDomainRequest>,
    ) -> Result<Response<SuspendDomainResponse>, Status> {
        let vm = self.domains.find(request.get_ref().domain.as_ref())?;
        self.domains.suspend(&vm).await?;
        Ok(Response::new(SuspendDomainResponse {}))
    }

    async fn resume_domain(
        &self,
        request: Request<ResumeDomainRequest>,
    ) -> Result<Response<ResumeDomainResponse>, Status> {
        let vm = self.domains.find(request.get_ref().domain.as_ref())?;
        self.domains.resume(&vm).await?;
        Ok(Response::new(ResumeDomainResponse {}))
    }

    async fn lookup_domain(
        &self,
        request: Request<LookupDomainRequest>,
    ) -> Result<Response<LookupDomainResponse>, Status> {
        let vm = self.domains.find(request.get_ref().domain.as_ref())?;
        Ok(Response::new(LookupDomainResponse {
            domain: Some(vm.describe()),
        }))
    }

    async fn list_domains(
        &self,
        request: Request<ListDomainsRequest>,
    ) -> Result<Response<ListDomainsResponse>, Status> {
        let flags = request.get_ref().flags;
        let domains = self
            .domains
            .all()
            .iter()
            .map(|vm| vm.describe())
            .filter(|d| matches_list_flags(d, flags) && access::visible(&[&d.name, &d.uuid]))
            .collect();
        Ok(Response::new(ListDomainsResponse { domains }))
    }

    async fn get_domain_xml(
        &self,
        request: Request<GetDomainXmlRequest>,
    ) -> Result<Response<GetDomainXmlResponse>, Status> {
        let request = request.into_inner();
        unsupported_flags(
            request.flags,
            (DomainXmlFlag::Secure as u32)
                | (DomainXmlFlag::Inactive as u32)
                | (DomainXmlFlag::Migratable as u32),
        )?;
        let vm = self.domains.find(request.domain.as_ref())?;
        let xml = self.domains.xml(
            &vm,
            flagged(request.flags, DomainXmlFlag::Inactive as i32),
            flagged(request.flags, DomainXmlFlag::Secure as i32),
        )?;
        Ok(Response::new(GetDomainXmlResponse { xml }))
    }

    async fn get_domain_info(
        &self,
        request: Request<GetDomainInfoRequest>,
    ) -> Result<Response<GetDomainInfoResponse>, Status> {
        let vm = self.domains.find(request.get_ref().domain.as_ref())?;
        Ok(Response::new(self.domains.info(&vm)))
    }

    async fn get_domain_state(
        &self,
        request: Request<GetDomainStateRequest>,
    ) -> Result<Response<GetDomainStateResponse>, Status> {
        let vm = self.domains.find(request.get_ref().domain.as_ref())?;
        let (state, reason) = self.domains.state(&vm);
        Ok(Response::new(GetDomainStateResponse {
            state: state as i32,
            reason: Some(DomainStateReason { reason: Some(reason) }),
        }))
    }

    async fn get_domain_autostart(
        &self,
        request: Request<GetDomainAutostartRequest>,
    ) -> Result<Response<GetDomainAutostartResponse>, Status> {
        let vm = self.domains.find(request.get_ref().domain.as_ref())?;
        Ok(Response::new(GetDomainAutostartResponse {
            autostart: vm.describe().autostart,
        }))
    }

    async fn set_domain_autostart(
        &self,
        request: Request<SetDomainAutostartRequest>,
    ) -> Result<Response<SetDomainAutostartResponse>, Status> {
        let request = request.into_inner();
        let vm = self.domains.find(request.domain.as_ref())?;
        self.domains.set_autostart(&vm, request.autostart)?;
        Ok(Response::new(SetDomainAutostartResponse {}))
    }

    async fn get_domain_stats(
        &self,
        request: Request<GetDomainStatsRequest>,
    ) -> Result<Response<GetDomainStatsResponse>, Status> {
        let request = request.into_inner();
        let vms = if request.domains.is_empty() {
            let list_flags = request.flags & 0xff;
            self.domains
                .all()
                .into_iter()
                .filter(|vm| {
                    let d = vm.describe();
                    matches_list_flags(&d, list_flags) && access::visible(&[&d.name, &d.uuid])
                })
                .collect()
        } else {
            request
                .domains
                .iter()
                .map(|d| self.domains.find(Some(d)))
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut records = Vec::with_capacity(vms.len());
        for vm in vms {
            records.push(self.domains.stats(&vm, request.stats).await);
        }
        Ok(Response::new(GetDomainStatsResponse { records }))
    }

    async fn open_domain_console(
        &self,
        request: Request<Streaming<OpenDomainConsoleRequest>>,
    ) -> Result<Response<BoxStream<OpenDomainConsoleResponse>>, Status> {
        let mut inbound = request.into_inner();
        let open = match inbound.message().await? {
            Some(OpenDomainConsoleRequest {
                message: Some(open_domain_console_request::Message::Open(open)),
            }) => open,
            _ => {
                return Err(status(
                    ErrorCode::InvalidArg,
                    ErrorDomain::Qemu,
                    "The first console message must be `open`, naming the domain",
                ));
            }
        };
        unsupported_flags(
            open.flags,
            (DomainConsoleFlag::Force as u32) | (DomainConsoleFlag::Safe as u32),
        )?;
        let vm = self.domains.find(open.domain.as_ref())?;
        let console = self
            .domains
            .open_console(
                &vm,
                &open.dev_name,
                flagged(open.flags, DomainConsoleFlag::Force as i32),
            )
            .await?;
        Ok(Response::new(pump_console(console, inbound)))
    }

    async fn watch_domain_events(
        &self,
        request: Request<WatchDomainEventsRequest>,
    ) -> Result<Response<BoxStream<WatchDomainEventsResponse>>, Status> {
        let request = request.into_inner();
        let wanted = request.event_ids.clone();
        let filter = request.domain.and_then(|d| d.key);
        let epoch = self.domains.events.epoch().to_owned();
        let events = self
            .domains
            .events
            .watch(&request.since_epoch, request.since_sequence);
        // Events of domains the caller may not see are left out, as from lists.
        let gate = access::current_gate();
        let stream = events.filter_map(move |delivery| {
            let response = watch_response(delivery, &epoch, &wanted, filter.as_ref())?;
            if let (Some(gate), Some(watch_domain_events_response::Message::Event(event))) =
                (&gate, &response.message)
                && let Some(domain) = &event.domain
                && gate.check(&[&domain.name, &domain.uuid]).is_err()
            {
                return None;
            }
            Some(Ok(response))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_domain_job_info(
        &self,
        request: Request<GetDomainJobInfoRequest>,
    ) -> Result<Response<GetDomainJobInfoResponse>, Status> {
        let _vm = self.domains.find(request.get_ref().domain.as_ref())?;
        Ok(Response::new(GetDomainJobInfoResponse {
            job: Some(DomainJobInfo {
                r#type: DomainJobType::None as i32,
                ..DomainJobInfo::default()
            }),
            modify_job_owner: None,
        }))
    }

    async fn has_domain_managed_save(
        &self,
        request: Request<HasDomainManagedSaveRequest>,
    ) -> Result<Response<HasDomainManagedSaveResponse>, Status> {
        let _vm = self.domains.find(request.get_ref().domain.as_ref())?;
        Ok(Response::new(HasDomainManagedSaveResponse::default()))
    }

    /// No long-running job (migration, save, dump) exists in virtqemud, so there is never one to
    /// abort: libvirt's answer when none is active.
    async fn abort_domain_job(
        &self,
        request: Request<AbortDomainJobRequest>,
    ) -> Result<Response<AbortDomainJobResponse>, Status> {
        let vm = self.domains.find(request.get_ref().domain.as_ref())?;
        Err(rvirt_proto::error::status(
            ErrorCode::OperationInvalid,
            ErrorDomain::Qemu,
            format!(
                "Requested operation is not valid: no job is active on domain '{}'",
                vm.describe().name
            ),
        ))
    }

    async fn attach_domain_device(
        &self,
        request: Request<AttachDomainDeviceRequest>,
    ) -> Result<Response<AttachDomainDeviceResponse>, Status> {
        let request = request.into_inner();
        let vm = self.domains.find(request.domain.as_ref())?;
        self.domains
            .attach_device(&vm, &request.xml, request.flags)
            .await?;
        Ok(Response::new(AttachDomainDeviceResponse {}))
    }

    async fn detach_domain_device(
        &self,
        request: Request<DetachDomainDeviceRequest>,
    ) -> Result<Response<DetachDomainDeviceResponse>, Status> {
        use rvirt_proto::v1::detach_domain_device_request::Device as Which;
        let request = request.into_inner();
        let vm = self.domains.find(request.domain.as_ref())?;
        let (xml, alias) = match &request.device {
            Some(Which::Xml(xml)) => (Some(xml.as_str()), None),
            Some(Which::Alias(alias)) => (None, Some(alias.as_str())),
            None => (None, None),
        };
        self.domains.detach_device(&vm, xml, alias, request.flags).await?;
        Ok(Response::new(DetachDomainDeviceResponse {}))
    }

    async fn update_domain_device(
        &self,
        request: Request<UpdateDomainDeviceRequest>,
    ) -> Result<Response<UpdateDomainDeviceResponse>, Status> {
        let request = request.into_inner();
        let vm = self.domains.find(request.domain.as_ref())?;
        self.domains
            .update_device(&vm, &request.xml, request.flags)
            .await?;
        Ok(Response::new(UpdateDomainDeviceResponse {}))
    }

    async fn set_domain_memory(
        &self,
        request: Request<SetDomainMemoryRequest>,
    ) -> Result<Response<SetDomainMemoryResponse>, Status> {
        let request = request.into_inner();
        let vm = self.domains.find(request.domain.as_ref())?;
        self.domains
            .set_memory(&vm, request.memory_kib, request.flags)
            .await?;
        Ok(Response::new(SetDomainMemoryResponse {}))
    }

    async fn set_domain_vcpus(
        &self,
        request: Request<SetDomainVcpusRequest>,
    ) -> Result<Response<SetDomainVcpusResponse>, Status> {
        let request = request.into_inner();
        let vm = self.domains.find(request.domain.as_ref())?;
        self.domains.set_vcpus(&vm, request.nvcpus, request.flags).await?;
        Ok(Response::new(SetDomainVcpusResponse {}))
    }

    async fn rename_domain(
        &self,
        request: Request<RenameDomainRequest>,
    ) -> Result<Response<RenameDomainResponse>, Status> {
        let request = request.into_inner();
        unsupported_flags(request.flags, 0)?;
        let vm = self.domains.find(request.domain.as_ref())?;
        self.domains.rename(&vm, &request.new_name).await?;
        Ok(Response::new(RenameDomainResponse {
            domain: Some(vm.describe()),
        }))
    }

    async fn set_domain_metadata(
        &self,
        request: Request<SetDomainMetadataRequest>,
    ) -> Result<Response<SetDomainMetadataResponse>, Status> {
        let request = request.into_inner();
        let vm = self.domains.find(request.domain.as_ref())?;
        self.domains
            .set_metadata(
                &vm,
                request.r#type,
                request.metadata.as_deref(),
                &request.key,
                &request.uri,
                request.flags,
            )
            .await?;
        Ok(Response::new(SetDomainMetadataResponse {}))
    }

    async fn get_domain_metadata(
        &self,
        request: Request<GetDomainMetadataRequest>,
    ) -> Result<Response<GetDomainMetadataResponse>, Status> {
        let request = request.into_inner();
        let vm = self.domains.find(request.domain.as_ref())?;
        let metadata = self
            .domains
            .metadata(&vm, request.r#type, &request.uri, request.flags)?;
        Ok(Response::new(GetDomainMetadataResponse { metadata }))
    }
}

/// Bytes from the device to the caller and from the caller to the device, until either side
/// ends or the driver closes the console.
fn pump_console(
    console: OpenConsole,
    mut inbound: Streaming<OpenDomainConsoleRequest>,
) -> BoxStream<OpenDomainConsoleResponse> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<OpenDomainConsoleResponse, Status>>(64);
    let OpenConsole {
        dev_name,
        io,
        mut closed,
    } = console;
    let (mut reader, mut writer): (
        Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    ) = match io {
        ConsoleIo::Pty(pty) => {
            let (r, w) = tokio::io::split(pty);
            (Box::new(r), Box::new(w))
        }
        ConsoleIo::Unix(stream) => {
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
    };
    tokio::spawn(async move {
        let send = |message| OpenDomainConsoleResponse {
            message: Some(message),
        };
        if tx
            .send(Ok(send(open_domain_console_response::Message::Opened(
                DomainConsoleOpened { dev_name },
            ))))
            .await
            .is_err()
        {
            return;
        }
        let mut buf = vec![0u8; 16 * 1024];
        let (reason, message) = loop {
            tokio::select! {
                read = reader.read(&mut buf) => match read {
                    Ok(0) => break (DomainConsoleCloseReason::DeviceError, "The console device closed".to_owned()),
                    Ok(n) => {
                        let data = buf[..n].to_vec();
                        if tx.send(Ok(send(open_domain_console_response::Message::Data(data)))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => break (DomainConsoleCloseReason::DeviceError, format!("Cannot read the console: {e}")),
                },
                input = inbound.message() => match input {
                    Ok(Some(OpenDomainConsoleRequest { message: Some(open_domain_console_request::Message::Data(data)) })) => {
                        if let Err(e) = writer.write_all(&data).await {
                            break (DomainConsoleCloseReason::DeviceError, format!("Cannot write to the console: {e}"));
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                },
                reason = &mut closed => {
                    let reason = reason.unwrap_or(DomainConsoleCloseReason::DomainStopped);
                    let message = match reason {
                        DomainConsoleCloseReason::TakenOver => "Another client took over the console",
                        _ => "The domain stopped",
                    };
                    break (reason, message.to_owned());
                }
            }
        };
        // A device that ends usually means QEMU is exiting: wait a little for the driver to
        // say so, so the caller learns the domain stopped rather than of a device error.
        let (reason, message) = if reason == DomainConsoleCloseReason::DeviceError {
            match tokio::time::timeout(std::time::Duration::from_secs(5), &mut closed).await {
                Ok(Ok(DomainConsoleCloseReason::TakenOver)) => (
                    DomainConsoleCloseReason::TakenOver,
                    "Another client took over the console".to_owned(),
                ),
                Ok(_) => (
                    DomainConsoleCloseReason::DomainStopped,
                    "The domain stopped".to_owned(),
                ),
                Err(_) => (reason, message),
            }
        } else {
            (reason, message)
        };
        let _ = tx
            .send(Ok(send(open_domain_console_response::Message::Closed(
                DomainConsoleClosed {
                    reason: reason as i32,
                    message,
                },
            ))))
            .await;
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
