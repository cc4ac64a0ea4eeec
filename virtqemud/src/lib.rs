//! `virtqemud`: The rvirt QEMU/KVM hypervisor driver daemon.
//!
//! It runs on the shared runtime (`rvirt-daemon`): sockets, access checks, the admin service,
//! health and reflection. Until its driver for domains and the host (issue: virtqemud) lands it serves the generic host service
//! only.

use std::sync::Arc;

use rvirt_daemon::host::{DriverIdentity, HostOnlyDriver};
use rvirt_daemon::{DaemonContext, DaemonSpec};

/// What this daemon is.
pub const SPEC: DaemonSpec = DaemonSpec {
    name: "virtqemud",
    sockets: "virtqemud",
    driver: "qemu",
    about: "The rvirt QEMU/KVM hypervisor driver daemon",
};

/// Builds the daemon's driver.
pub async fn init(ctx: Arc<DaemonContext>) -> Result<HostOnlyDriver, String> {
    Ok(HostOnlyDriver::new(
        ctx,
        DriverIdentity {
            driver_type: "QEMU",
            uri_scheme: "qemu",
        },
    ))
}
