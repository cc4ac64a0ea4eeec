//! `virtnetworkd`: The rvirt virtual network daemon.
//!
//! It runs on the shared runtime (`rvirt-daemon`): sockets, access checks, the admin service,
//! health and reflection. Until its driver for virtual networks lands it serves the generic host service
//! only.

use std::sync::Arc;

use rvirt_daemon::host::{DriverIdentity, HostOnlyDriver};
use rvirt_daemon::{DaemonContext, DaemonSpec};

/// What this daemon is.
pub const SPEC: DaemonSpec = DaemonSpec {
    name: "virtnetworkd",
    sockets: "virtnetworkd",
    driver: "network",
    about: "The rvirt virtual network daemon",
};

/// Builds the daemon's driver.
pub async fn init(ctx: Arc<DaemonContext>) -> Result<HostOnlyDriver, String> {
    Ok(HostOnlyDriver::new(
        ctx,
        DriverIdentity {
            driver_type: "network",
            uri_scheme: "network",
        },
    ))
}
