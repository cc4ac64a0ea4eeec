//! `virtnetworkd`: the rvirt virtual network daemon.
//!
//! It runs on the shared runtime (`rvirt-daemon`) and serves `NetworkService` plus the generic
//! host service. Virtual networks are libvirt's: a Linux bridge built over rtnetlink, dnsmasq for
//! DHCP and DNS, nftables rules in rvirt's own table per network.
//!
//! - [`driver`]: the networks, their files, start/stop/re-adoption, updates, lease events;
//! - [`service`]: the gRPC adapter;
//! - [`dnsmasq`]: dnsmasq configuration generation (pure);
//! - [`nft`]: nftables rule generation (pure);
//! - [`leases`]: dnsmasq's lease file (pure);
//! - [`host`]: the seam to the host (real and recording implementations);
//! - [`netlink`]: the small wrapper around rtnetlink.

pub mod dnsmasq;
pub mod driver;
pub mod host;
pub mod leases;
pub mod netlink;
pub mod nft;
pub mod service;

use std::sync::Arc;

use rvirt_daemon::host::{DriverIdentity, GenericHost};
use rvirt_daemon::{DaemonContext, DaemonSpec, Driver, ServiceSet};

use crate::driver::{DriverPaths, NetworkDriver};
use crate::host::SystemHost;
use crate::service::NetworkServiceImpl;

/// What this daemon is.
pub const SPEC: DaemonSpec = DaemonSpec {
    name: "virtnetworkd",
    sockets: "virtnetworkd",
    driver: "network",
    about: "The rvirt virtual network daemon",
};

/// The daemon's driver: the network service and the host service.
#[derive(Debug)]
pub struct NetworkDaemon {
    ctx: Arc<DaemonContext>,
    driver: Arc<NetworkDriver>,
}

impl Driver for NetworkDaemon {
    fn services(&self) -> ServiceSet {
        ServiceSet::new()
            .with(NetworkServiceImpl::new(Arc::clone(&self.driver)).into_server())
            .with(
                GenericHost::new(
                    Arc::clone(&self.ctx),
                    Arc::new(DriverIdentity {
                        driver_type: "network",
                        uri_scheme: "network",
                    }),
                )
                .into_server(),
            )
    }

    fn busy(&self) -> Option<String> {
        self.driver.busy()
    }
}

/// Builds the daemon's driver: loads definitions, re-adopts active networks, autostarts, and
/// starts watching DHCP leases.
pub async fn init(ctx: Arc<DaemonContext>) -> Result<NetworkDaemon, String> {
    let paths = DriverPaths::new(&ctx.paths.driver_config_dir, &ctx.paths.driver_state_dir);
    let driver = Arc::new(NetworkDriver::new(paths, Arc::new(SystemHost::default())));
    driver.watch_leases()?;
    driver.load().await;
    Ok(NetworkDaemon { ctx, driver })
}
