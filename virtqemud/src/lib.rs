//! `virtqemud`: The rvirt QEMU/KVM hypervisor driver daemon.
//!
//! It runs on the shared runtime (`rvirt-daemon`): sockets, access checks, the admin service,
//! health and reflection. Its driver so far answers the host service's hypervisor calls from
//! [`caps`] (capabilities, domain capabilities, vCPU limits, CPU models, QEMU's version). The
//! capabilities are probed in the background when the daemon starts, so readiness never waits
//! for QEMU. [`domain`] runs domains: definitions, QEMU processes started from the command
//! line [`command`] builds, their monitor ([`qmp`]) and lifecycle, adopted again after a
//! restart; [`service`] serves them over gRPC.

pub mod caps;
pub mod command;
pub mod domain;
pub mod qmp;
pub mod service;

use std::path::PathBuf;
use std::sync::Arc;

use rvirt_daemon::host::{GenericHost, HostBackend};
use rvirt_daemon::{DaemonContext, DaemonSpec, Driver, ServiceSet};
use rvirt_proto::error::status;
use rvirt_proto::v1::domain_service_server::DomainServiceServer;
use rvirt_proto::v1::{ErrorCode, ErrorDomain, GetDomainCapabilitiesRequest};
use tonic::Status;

use caps::{CapsConfig, CapsError, QemuCaps, TargetQuery};

/// What this daemon is.
pub const SPEC: DaemonSpec = DaemonSpec {
    name: "virtqemud",
    sockets: "virtqemud",
    driver: "qemu",
    about: "The rvirt QEMU/KVM hypervisor driver daemon",
};

/// Builds the daemon's driver and starts probing QEMU in the background.
pub async fn init(ctx: Arc<DaemonContext>) -> Result<QemuDriver, String> {
    let config = CapsConfig::new(&ctx.paths.driver_data_dir, &ctx.paths.driver_state_dir);
    let caps = Arc::new(QemuCaps::new(config));
    caps.start_probe();
    let paths = domain::DomainPaths::new(
        &ctx.paths.driver_config_dir,
        &ctx.paths.driver_state_dir,
        &ctx.paths.driver_log_dir,
    );
    let domains = domain::Domains::new(
        Arc::clone(&caps),
        paths,
        domain::resources::Context { mode: ctx.mode },
    );
    domains.init().await?;
    Ok(QemuDriver {
        ctx,
        host: Arc::new(QemuHost { caps }),
        domains,
    })
}

/// The QEMU driver.
#[derive(Debug)]
pub struct QemuDriver {
    ctx: Arc<DaemonContext>,
    host: Arc<QemuHost>,
    domains: Arc<domain::Domains>,
}

impl QemuDriver {
    /// The driver's capabilities.
    pub fn caps(&self) -> &Arc<QemuCaps> {
        &self.host.caps
    }
}

impl Driver for QemuDriver {
    fn services(&self) -> ServiceSet {
        ServiceSet::new()
            .with(GenericHost::new(Arc::clone(&self.ctx), Arc::clone(&self.host)).into_server())
            .with(DomainServiceServer::new(service::QemuDomainService::new(
                Arc::clone(&self.domains),
            )))
    }

    fn busy(&self) -> Option<String> {
        self.domains.busy()
    }

    fn shutting_down(&self) {
        // Running domains keep running; only the event streams end so calls can drain.
        self.domains.events.close();
    }
}

/// The hypervisor half of the host service: answered from the capabilities.
#[derive(Debug)]
pub struct QemuHost {
    caps: Arc<QemuCaps>,
}

impl QemuHost {
    /// The host backend answering from `caps`.
    pub fn new(caps: Arc<QemuCaps>) -> QemuHost {
        QemuHost { caps }
    }
}

/// The status of a capabilities error: libvirt's `INVALID_ARG` for requests naming what does
/// not exist or fit, `OPERATION_FAILED` when an emulator could not be probed.
pub fn caps_status(error: &CapsError) -> Status {
    match error {
        CapsError::InvalidArg(message) => status(ErrorCode::InvalidArg, ErrorDomain::Qemu, message.clone()),
        CapsError::Probe(e) => status(
            ErrorCode::OperationFailed,
            ErrorDomain::Capabilities,
            format!(
                "Cannot probe the emulator's capabilities: {e}. Check that it runs: `<emulator> -machine none -nographic`"
            ),
        ),
        CapsError::Format(e) => status(
            ErrorCode::InternalError,
            ErrorDomain::Capabilities,
            format!("Cannot format the capabilities document: {e}"),
        ),
    }
}

#[tonic::async_trait]
impl HostBackend for QemuHost {
    fn driver_type(&self) -> &'static str {
        "QEMU"
    }

    fn uri_scheme(&self) -> &'static str {
        "qemu"
    }

    async fn hypervisor_version(&self) -> Result<String, Status> {
        Ok(self.caps.hypervisor_version().await.unwrap_or_default())
    }

    async fn capabilities(&self) -> Result<String, Status> {
        self.caps.capabilities_xml().await.map_err(|e| caps_status(&e))
    }

    async fn domain_capabilities(&self, request: GetDomainCapabilitiesRequest) -> Result<String, Status> {
        let query = TargetQuery {
            emulator: Some(PathBuf::from(request.emulator_bin)),
            arch: Some(request.arch),
            machine: Some(request.machine),
            virt_type: Some(request.virttype),
        };
        self.caps
            .domain_capabilities_xml(&query, request.flags)
            .await
            .map_err(|e| caps_status(&e))
    }

    async fn max_vcpus(&self, virt_type: &str) -> Result<u32, Status> {
        self.caps.max_vcpus(virt_type).await.map_err(|e| caps_status(&e))
    }

    async fn cpu_model_names(&self, arch: &str) -> Result<Vec<String>, Status> {
        self.caps.cpu_model_names(arch).await.map_err(|e| caps_status(&e))
    }
}
