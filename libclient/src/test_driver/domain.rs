//! The test driver's domain service: libvirt's lifecycle rules, in memory, with events.

use std::pin::Pin;
use std::sync::Arc;

use rvirt_proto::error::status;
use rvirt_proto::v1::domain_lifecycle_event::Detail;
use rvirt_proto::v1::domain_service_server::DomainService;
use rvirt_proto::v1::domain_state_reason::Reason;
use rvirt_proto::v1::*;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::node::{DomainRecord, Objects, TestState, canonical_uuid, parse_domain};
use crate::domain::serve::{matches_list_flags, watch_response};

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchDomainEventsResponse, Status>> + Send + 'static>>;

/// The test driver's domain service.
#[derive(Debug)]
pub struct TestDomains {
    state: Arc<TestState>,
}

impl TestDomains {
    /// The domain service of a test driver instance.
    pub fn new(state: Arc<TestState>) -> Self {
        TestDomains { state }
    }

    fn emit(&self, domain: &DomainRecord, event: domain_event::Event) {
        self.state.domain_events.emit((domain.identity(), event));
    }
}

fn lifecycle(kind: DomainEventType, detail: Detail) -> domain_event::Event {
    domain_event::Event::Lifecycle(DomainLifecycleEvent {
        r#type: kind as i32,
        detail: Some(detail),
    })
}

fn invalid(message: String) -> Status {
    status(ErrorCode::OperationInvalid, ErrorDomain::Test, message)
}

fn missing_ref() -> Status {
    status(
        ErrorCode::InvalidArg,
        ErrorDomain::Test,
        "No domain given: set the domain's name, UUID or id",
    )
}

/// The key of the domain a reference names, in the map by name.
/// The domain a reference names, once the access rules that name domains allow the call on it.
fn find(objects: &Objects, domain: Option<&DomainRef>) -> Result<String, Status> {
    let name = find_unchecked(objects, domain)?;
    let uuid = objects.domains.get(&name).map_or("", |d| d.uuid.as_str());
    rvirt_proto::access::authorize(&["domain"], &[&name, uuid])?;
    Ok(name)
}

fn find_unchecked(objects: &Objects, domain: Option<&DomainRef>) -> Result<String, Status> {
    let key = domain.and_then(|d| d.key.as_ref()).ok_or_else(missing_ref)?;
    let found = match key {
        domain_ref::Key::Name(name) => objects.domains.get(name).map(|d| d.name.clone()),
        domain_ref::Key::Uuid(uuid) => {
            let uuid = canonical_uuid(uuid);
            objects
                .domains
                .values()
                .find(|d| Some(&d.uuid) == uuid.as_ref())
                .map(|d| d.name.clone())
        }
        domain_ref::Key::Id(id) => objects
            .domains
            .values()
            .find(|d| d.id == Some(*id))
            .map(|d| d.name.clone()),
    };
    found.ok_or_else(|| {
        let what = match key {
            domain_ref::Key::Name(name) => format!("no domain with matching name '{name}'"),
            domain_ref::Key::Uuid(uuid) => format!("no domain with matching uuid '{uuid}'"),
            domain_ref::Key::Id(id) => format!("no domain with matching id {id}"),
        };
        status(
            ErrorCode::NoDomain,
            ErrorDomain::Test,
            format!("Domain not found: {what}"),
        )
    })
}

fn get<'a>(objects: &'a mut Objects, key: &str) -> Result<&'a mut DomainRecord, Status> {
    objects.domains.get_mut(key).ok_or_else(|| {
        status(
            ErrorCode::NoDomain,
            ErrorDomain::Test,
            format!("Domain not found: '{key}'"),
        )
    })
}

fn start(objects: &mut Objects, key: &str, paused: bool) -> Result<DomainRecord, Status> {
    let id = objects.next_id;
    let domain = get(objects, key)?;
    if domain.is_active() {
        return Err(invalid(format!(
            "Requested operation is not valid: domain '{}' is already running",
            domain.name
        )));
    }
    domain.id = Some(id);
    if paused {
        domain.state = DomainState::Paused;
        domain.reason = Reason::Paused(DomainPausedReason::User as i32);
    } else {
        domain.state = DomainState::Running;
        domain.reason = Reason::Running(DomainRunningReason::Booted as i32);
    }
    let snapshot = domain.clone();
    objects.next_id += 1;
    Ok(snapshot)
}

/// Stops an active domain; a transient one disappears. Returns the domain as it was stopped.
fn stop(objects: &mut Objects, key: &str, reason: DomainShutoffReason) -> Result<DomainRecord, Status> {
    let domain = get(objects, key)?;
    if !domain.is_active() {
        return Err(invalid(format!(
            "Requested operation is not valid: domain '{}' is not running",
            domain.name
        )));
    }
    let before = domain.clone();
    domain.id = None;
    domain.state = DomainState::Shutoff;
    domain.reason = Reason::Shutoff(reason as i32);
    domain.memory_kib = domain.memory_kib.min(domain.max_memory_kib);
    if !domain.persistent {
        objects.domains.remove(key);
    }
    Ok(before)
}

fn flagged(flags: u32, bit: i32) -> bool {
    flags & (bit as u32) != 0
}

fn live_xml(domain: &DomainRecord) -> String {
    match domain.id {
        // The live XML carries the runtime id on the root element, as libvirt's does.
        Some(id) => domain.xml.replacen("<domain ", &format!("<domain id='{id}' "), 1),
        None => domain.xml.clone(),
    }
}

#[tonic::async_trait]
impl DomainService for TestDomains {
    async fn define_domain_xml(
        &self,
        request: Request<DefineDomainXmlRequest>,
    ) -> Result<Response<DefineDomainXmlResponse>, Status> {
        let mut parsed = parse_domain(&request.get_ref().xml)?;
        rvirt_proto::access::authorize(&["domain"], &[&parsed.name, &parsed.uuid])?;
        let mut objects = self.state.lock();
        if let Some(other) = objects
            .domains
            .values()
            .find(|d| d.uuid == parsed.uuid && d.name != parsed.name)
        {
            return Err(status(
                ErrorCode::DomExist,
                ErrorDomain::Test,
                format!("Domain '{}' already exists with uuid {}", other.name, other.uuid),
            ));
        }
        let detail = match objects.domains.get_mut(&parsed.name) {
            Some(existing) if existing.uuid != parsed.uuid => {
                return Err(status(
                    ErrorCode::DomExist,
                    ErrorDomain::Test,
                    format!(
                        "Domain '{}' already exists with uuid {}",
                        existing.name, existing.uuid
                    ),
                ));
            }
            Some(existing) => {
                let was_persistent = existing.persistent;
                existing.xml = parsed.xml;
                existing.title = parsed.title;
                existing.persistent = true;
                if !existing.is_active() {
                    existing.max_memory_kib = parsed.max_memory_kib;
                    existing.memory_kib = parsed.memory_kib;
                    existing.vcpus = parsed.vcpus;
                    existing.current_vcpus = parsed.current_vcpus;
                }
                if was_persistent {
                    DomainEventDefinedDetail::Updated
                } else {
                    DomainEventDefinedDetail::Added
                }
            }
            None => {
                parsed.persistent = true;
                objects.domains.insert(parsed.name.clone(), parsed.clone());
                DomainEventDefinedDetail::Added
            }
        };
        let domain = objects
            .domains
            .get(&parsed.name)
            .cloned()
            .ok_or_else(|| invalid("domain vanished".into()))?;
        drop(objects);
        self.emit(
            &domain,
            lifecycle(DomainEventType::Defined, Detail::Defined(detail as i32)),
        );
        Ok(Response::new(DefineDomainXmlResponse {
            domain: Some(domain.summary()),
        }))
    }

    async fn undefine_domain(
        &self,
        request: Request<UndefineDomainRequest>,
    ) -> Result<Response<UndefineDomainResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find(&objects, request.get_ref().domain.as_ref())?;
        let domain = get(&mut objects, &key)?;
        if !domain.persistent {
            return Err(invalid(format!(
                "Requested operation is not valid: cannot undefine transient domain '{key}'"
            )));
        }
        let snapshot = domain.clone();
        if domain.is_active() {
            domain.persistent = false;
            domain.autostart = false;
        } else {
            objects.domains.remove(&key);
        }
        drop(objects);
        self.emit(
            &snapshot,
            lifecycle(
                DomainEventType::Undefined,
                Detail::Undefined(DomainEventUndefinedDetail::Removed as i32),
            ),
        );
        Ok(Response::new(UndefineDomainResponse::default()))
    }

    async fn create_domain_xml(
        &self,
        request: Request<CreateDomainXmlRequest>,
    ) -> Result<Response<CreateDomainXmlResponse>, Status> {
        let request = request.into_inner();
        let parsed = parse_domain(&request.xml)?;
        rvirt_proto::access::authorize(&["domain"], &[&parsed.name, &parsed.uuid])?;
        let paused = flagged(request.flags, DomainCreateFlag::StartPaused as i32);
        let mut objects = self.state.lock();
        if let Some(existing) = objects
            .domains
            .values()
            .find(|d| d.name == parsed.name || d.uuid == parsed.uuid)
            && (existing.is_active() || existing.uuid != parsed.uuid || existing.name != parsed.name)
        {
            return Err(status(
                ErrorCode::DomExist,
                ErrorDomain::Test,
                format!(
                    "Domain '{}' already exists with uuid {}",
                    existing.name, existing.uuid
                ),
            ));
        }
        let name = parsed.name.clone();
        let persistent = objects.domains.get(&name).is_some_and(|d| d.persistent);
        let mut record = parsed;
        record.persistent = persistent;
        record.autostart = objects.domains.get(&name).is_some_and(|d| d.autostart);
        objects.domains.insert(name.clone(), record);
        let started = start(&mut objects, &name, paused)?;
        drop(objects);
        self.emit(
            &started,
            lifecycle(
                DomainEventType::Started,
                Detail::Started(DomainEventStartedDetail::Booted as i32),
            ),
        );
        if paused {
            self.emit(
                &started,
                lifecycle(
                    DomainEventType::Suspended,
                    Detail::Suspended(DomainEventSuspendedDetail::Paused as i32),
                ),
            );
        }
        Ok(Response::new(CreateDomainXmlResponse {
            domain: Some(started.summary()),
        }))
    }

    async fn start_domain(
        &self,
        request: Request<StartDomainRequest>,
    ) -> Result<Response<StartDomainResponse>, Status> {
        let request = request.into_inner();
        let paused = flagged(request.flags, DomainCreateFlag::StartPaused as i32);
        let mut objects = self.state.lock();
        let key = find(&objects, request.domain.as_ref())?;
        let started = start(&mut objects, &key, paused)?;
        drop(objects);
        self.emit(
            &started,
            lifecycle(
                DomainEventType::Started,
                Detail::Started(DomainEventStartedDetail::Booted as i32),
            ),
        );
        if paused {
            self.emit(
                &started,
                lifecycle(
                    DomainEventType::Suspended,
                    Detail::Suspended(DomainEventSuspendedDetail::Paused as i32),
                ),
            );
        }
        Ok(Response::new(StartDomainResponse {
            domain: Some(started.summary()),
        }))
    }

    async fn shutdown_domain(
        &self,
        request: Request<ShutdownDomainRequest>,
    ) -> Result<Response<ShutdownDomainResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find(&objects, request.get_ref().domain.as_ref())?;
        let stopped = stop(&mut objects, &key, DomainShutoffReason::Shutdown)?;
        drop(objects);
        self.emit(
            &stopped,
            lifecycle(
                DomainEventType::Stopped,
                Detail::Stopped(DomainEventStoppedDetail::Shutdown as i32),
            ),
        );
        Ok(Response::new(ShutdownDomainResponse::default()))
    }

    async fn reboot_domain(
        &self,
        request: Request<RebootDomainRequest>,
    ) -> Result<Response<RebootDomainResponse>, Status> {
        let objects = self.state.lock();
        let key = find(&objects, request.get_ref().domain.as_ref())?;
        let domain = objects
            .domains
            .get(&key)
            .cloned()
            .ok_or_else(|| invalid("domain vanished".into()))?;
        drop(objects);
        if !domain.is_active() {
            return Err(invalid(format!(
                "Requested operation is not valid: domain '{key}' is not running"
            )));
        }
        self.emit(&domain, domain_event::Event::Reboot(DomainRebootEvent {}));
        Ok(Response::new(RebootDomainResponse::default()))
    }

    async fn reset_domain(
        &self,
        request: Request<ResetDomainRequest>,
    ) -> Result<Response<ResetDomainResponse>, Status> {
        let objects = self.state.lock();
        let key = find(&objects, request.get_ref().domain.as_ref())?;
        if !objects.domains.get(&key).is_some_and(DomainRecord::is_active) {
            return Err(invalid(format!(
                "Requested operation is not valid: domain '{key}' is not running"
            )));
        }
        Ok(Response::new(ResetDomainResponse::default()))
    }

    async fn destroy_domain(
        &self,
        request: Request<DestroyDomainRequest>,
    ) -> Result<Response<DestroyDomainResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find(&objects, request.get_ref().domain.as_ref())?;
        let stopped = stop(&mut objects, &key, DomainShutoffReason::Destroyed)?;
        drop(objects);
        self.emit(
            &stopped,
            lifecycle(
                DomainEventType::Stopped,
                Detail::Stopped(DomainEventStoppedDetail::Destroyed as i32),
            ),
        );
        Ok(Response::new(DestroyDomainResponse::default()))
    }

    async fn suspend_domain(
        &self,
        request: Request<SuspendDomainRequest>,
    ) -> Result<Response<SuspendDomainResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find(&objects, request.get_ref().domain.as_ref())?;
        let domain = get(&mut objects, &key)?;
        if domain.state != DomainState::Running {
            return Err(invalid(format!(
                "Requested operation is not valid: domain '{key}' is not running"
            )));
        }
        domain.state = DomainState::Paused;
        domain.reason = Reason::Paused(DomainPausedReason::User as i32);
        let snapshot = domain.clone();
        drop(objects);
        self.emit(
            &snapshot,
            lifecycle(
                DomainEventType::Suspended,
                Detail::Suspended(DomainEventSuspendedDetail::Paused as i32),
            ),
        );
        Ok(Response::new(SuspendDomainResponse::default()))
    }

    async fn resume_domain(
        &self,
        request: Request<ResumeDomainRequest>,
    ) -> Result<Response<ResumeDomainResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find(&objects, request.get_ref().domain.as_ref())?;
        let domain = get(&mut objects, &key)?;
        if domain.state != DomainState::Paused {
            return Err(invalid(format!(
                "Requested operation is not valid: domain '{key}' is not paused"
            )));
        }
        domain.state = DomainState::Running;
        domain.reason = Reason::Running(DomainRunningReason::Unpaused as i32);
        let snapshot = domain.clone();
        drop(objects);
        self.emit(
            &snapshot,
            lifecycle(
                DomainEventType::Resumed,
                Detail::Resumed(DomainEventResumedDetail::Unpaused as i32),
            ),
        );
        Ok(Response::new(ResumeDomainResponse::default()))
    }

    async fn lookup_domain(
        &self,
        request: Request<LookupDomainRequest>,
    ) -> Result<Response<LookupDomainResponse>, Status> {
        let objects = self.state.lock();
        let key = find(&objects, request.get_ref().domain.as_ref())?;
        let domain = objects.domains.get(&key).map(DomainRecord::summary);
        Ok(Response::new(LookupDomainResponse { domain }))
    }

    async fn list_domains(
        &self,
        request: Request<ListDomainsRequest>,
    ) -> Result<Response<ListDomainsResponse>, Status> {
        let flags = request.get_ref().flags;
        let objects = self.state.lock();
        let domains = objects
            .domains
            .values()
            .map(DomainRecord::summary)
            .filter(|d| matches_list_flags(d, flags) && rvirt_proto::access::visible(&[&d.name, &d.uuid]))
            .collect();
        Ok(Response::new(ListDomainsResponse { domains }))
    }

    async fn get_domain_xml(
        &self,
        request: Request<GetDomainXmlRequest>,
    ) -> Result<Response<GetDomainXmlResponse>, Status> {
        let objects = self.state.lock();
        let key = find(&objects, request.get_ref().domain.as_ref())?;
        let domain = objects
            .domains
            .get(&key)
            .ok_or_else(|| invalid("domain vanished".into()))?;
        let inactive = flagged(request.get_ref().flags, DomainXmlFlag::Inactive as i32);
        let xml = if inactive {
            domain.xml.clone()
        } else {
            live_xml(domain)
        };
        Ok(Response::new(GetDomainXmlResponse { xml }))
    }

    async fn get_domain_info(
        &self,
        request: Request<GetDomainInfoRequest>,
    ) -> Result<Response<GetDomainInfoResponse>, Status> {
        let objects = self.state.lock();
        let key = find(&objects, request.get_ref().domain.as_ref())?;
        let d = objects
            .domains
            .get(&key)
            .ok_or_else(|| invalid("domain vanished".into()))?;
        Ok(Response::new(GetDomainInfoResponse {
            state: d.state as i32,
            max_memory_kib: d.max_memory_kib,
            memory_kib: d.memory_kib,
            nr_virt_cpu: d.current_vcpus,
            // The test driver's guests have no real CPU time; libvirt's reports a fixed value.
            cpu_time_ns: if d.is_active() { 5_000_000_000 } else { 0 },
        }))
    }

    async fn get_domain_state(
        &self,
        request: Request<GetDomainStateRequest>,
    ) -> Result<Response<GetDomainStateResponse>, Status> {
        let objects = self.state.lock();
        let key = find(&objects, request.get_ref().domain.as_ref())?;
        let d = objects
            .domains
            .get(&key)
            .ok_or_else(|| invalid("domain vanished".into()))?;
        Ok(Response::new(GetDomainStateResponse {
            state: d.state as i32,
            reason: Some(DomainStateReason {
                reason: Some(d.reason),
            }),
        }))
    }

    async fn get_domain_autostart(
        &self,
        request: Request<GetDomainAutostartRequest>,
    ) -> Result<Response<GetDomainAutostartResponse>, Status> {
        let objects = self.state.lock();
        let key = find(&objects, request.get_ref().domain.as_ref())?;
        let autostart = objects.domains.get(&key).is_some_and(|d| d.autostart);
        Ok(Response::new(GetDomainAutostartResponse { autostart }))
    }

    async fn set_domain_autostart(
        &self,
        request: Request<SetDomainAutostartRequest>,
    ) -> Result<Response<SetDomainAutostartResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find(&objects, request.get_ref().domain.as_ref())?;
        let domain = get(&mut objects, &key)?;
        if !domain.persistent {
            return Err(invalid(format!(
                "Requested operation is not valid: cannot set autostart for transient domain '{key}'"
            )));
        }
        domain.autostart = request.get_ref().autostart;
        Ok(Response::new(SetDomainAutostartResponse::default()))
    }

    async fn set_domain_memory(
        &self,
        request: Request<SetDomainMemoryRequest>,
    ) -> Result<Response<SetDomainMemoryResponse>, Status> {
        let request = request.into_inner();
        let mut objects = self.state.lock();
        let key = find(&objects, request.domain.as_ref())?;
        let domain = get(&mut objects, &key)?;
        // Bit 4 is libvirt's VIR_DOMAIN_MEM_MAXIMUM.
        if request.flags & 4 != 0 {
            if domain.is_active() {
                return Err(invalid(
                    "Requested operation is not valid: cannot change the maximum memory of a running domain"
                        .into(),
                ));
            }
            domain.max_memory_kib = request.memory_kib;
            domain.memory_kib = domain.memory_kib.min(request.memory_kib);
        } else {
            if request.memory_kib > domain.max_memory_kib {
                return Err(status(
                    ErrorCode::InvalidArg,
                    ErrorDomain::Test,
                    format!(
                        "Invalid argument: cannot set memory higher than max memory ({} KiB)",
                        domain.max_memory_kib
                    ),
                ));
            }
            domain.memory_kib = request.memory_kib;
        }
        Ok(Response::new(SetDomainMemoryResponse::default()))
    }

    async fn set_domain_vcpus(
        &self,
        request: Request<SetDomainVcpusRequest>,
    ) -> Result<Response<SetDomainVcpusResponse>, Status> {
        let request = request.into_inner();
        let mut objects = self.state.lock();
        let key = find(&objects, request.domain.as_ref())?;
        let domain = get(&mut objects, &key)?;
        if request.nvcpus == 0 {
            return Err(status(
                ErrorCode::InvalidArg,
                ErrorDomain::Test,
                "Invalid argument: the vCPU count must be at least 1",
            ));
        }
        if flagged(request.flags, DomainVcpuFlag::Maximum as i32) {
            if domain.is_active() {
                return Err(invalid(
                    "Requested operation is not valid: cannot change the maximum vCPUs of a running domain"
                        .into(),
                ));
            }
            domain.vcpus = request.nvcpus;
            domain.current_vcpus = domain.current_vcpus.min(request.nvcpus);
        } else {
            if request.nvcpus > domain.vcpus {
                return Err(status(
                    ErrorCode::InvalidArg,
                    ErrorDomain::Test,
                    format!(
                        "Invalid argument: requested vcpus {} is greater than max allowable vcpus {}",
                        request.nvcpus, domain.vcpus
                    ),
                ));
            }
            domain.current_vcpus = request.nvcpus;
        }
        Ok(Response::new(SetDomainVcpusResponse::default()))
    }

    async fn attach_domain_device(
        &self,
        request: Request<AttachDomainDeviceRequest>,
    ) -> Result<Response<AttachDomainDeviceResponse>, Status> {
        let request = request.into_inner();
        let mut objects = self.state.lock();
        let key = find(&objects, request.domain.as_ref())?;
        let domain = get(&mut objects, &key)?;
        domain.xml = super::devices::attach(&domain.xml, &request.xml)?;
        Ok(Response::new(AttachDomainDeviceResponse::default()))
    }

    async fn detach_domain_device(
        &self,
        request: Request<DetachDomainDeviceRequest>,
    ) -> Result<Response<DetachDomainDeviceResponse>, Status> {
        let request = request.into_inner();
        let mut objects = self.state.lock();
        let key = find(&objects, request.domain.as_ref())?;
        let domain = get(&mut objects, &key)?;
        let xml = match request.device {
            Some(detach_domain_device_request::Device::Xml(xml)) => xml,
            Some(detach_domain_device_request::Device::Alias(_)) => {
                return Err(status(
                    ErrorCode::ArgumentUnsupported,
                    ErrorDomain::Test,
                    "The test driver detaches devices by their XML, not by alias",
                ));
            }
            None => {
                return Err(status(
                    ErrorCode::InvalidArg,
                    ErrorDomain::Test,
                    "No device given: set its XML",
                ));
            }
        };
        domain.xml = super::devices::detach(&domain.xml, &xml)?;
        Ok(Response::new(DetachDomainDeviceResponse::default()))
    }

    async fn update_domain_device(
        &self,
        request: Request<UpdateDomainDeviceRequest>,
    ) -> Result<Response<UpdateDomainDeviceResponse>, Status> {
        let request = request.into_inner();
        let mut objects = self.state.lock();
        let key = find(&objects, request.domain.as_ref())?;
        let domain = get(&mut objects, &key)?;
        let without = super::devices::detach(&domain.xml, &request.xml)?;
        domain.xml = super::devices::attach(&without, &request.xml)?;
        Ok(Response::new(UpdateDomainDeviceResponse::default()))
    }

    async fn watch_domain_events(
        &self,
        request: Request<WatchDomainEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let request = request.into_inner();
        let wanted: Vec<i32> = request.event_ids.clone();
        let filter = request.domain.and_then(|d| d.key);
        let events = self
            .state
            .domain_events
            .watch(&request.since_epoch, request.since_sequence);
        let epoch = self.state.domain_events.epoch().to_owned();
        let stream = events
            .filter_map(move |delivery| watch_response(delivery, &epoch, &wanted, filter.as_ref()).map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }
}
