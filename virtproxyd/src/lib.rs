//! `virtproxyd`: The rvirt proxy daemon, which routes calls by connection URI.
//!
//! It runs on the shared runtime (`rvirt-daemon`): sockets, access checks, the admin service,
//! health and reflection. Until its driver for routing by connection URI lands it serves the generic host service
//! only.

use std::sync::Arc;

use rvirt_daemon::host::{DriverIdentity, HostOnlyDriver};
use rvirt_daemon::{DaemonContext, DaemonSpec};

/// What this daemon is.
pub const SPEC: DaemonSpec = DaemonSpec {
    name: "virtproxyd",
    sockets: "rvirt",
    driver: "proxy",
    about: "The rvirt proxy daemon, which routes calls by connection URI",
};

/// Builds the daemon's driver.
pub async fn init(ctx: Arc<DaemonContext>) -> Result<HostOnlyDriver, String> {
    Ok(HostOnlyDriver::new(
        ctx,
        DriverIdentity {
            driver_type: "proxy",
            uri_scheme: "proxy",
        },
    ))
}
