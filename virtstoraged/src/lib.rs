//! `virtstoraged`: the rvirt storage pool and volume daemon.
//!
//! It runs on the shared runtime (`rvirt-daemon`) and serves `StoragePoolService`,
//! `StorageVolService` and the generic host service. The code map:
//!
//! - [`driver`]: pools and volumes, their persistence and events — the driver the services
//!   adapt;
//! - [`service`]: the gRPC adapters;
//! - [`backend`]: what build/start/stop/delete mean for dir, fs and logical pools;
//! - [`fsvol`]: file volumes (create with `qemu-img` leaving nothing behind on failure, probe,
//!   resize); [`wipe`]: libvirt's wipe algorithms, natively; [`lvm`]: logical volumes;
//! - [`qemu_img`]: pure `qemu-img` command construction and `qemu-img info` parsing;
//! - [`stream`]: sparse-aware upload and download;
//! - [`secrets`]: passphrases of encrypted volumes from virtsecretd, and their key files;
//! - [`names`]: volume name rules; [`command`]: the seam for running host tools;
//!   [`error`]: the error type and its gRPC mapping.

pub mod backend;
pub mod command;
pub mod driver;
pub mod error;
pub mod fsvol;
pub mod lvm;
pub mod names;
pub mod qemu_img;
pub mod secrets;
pub mod service;
pub mod stream;
pub mod wipe;

use std::sync::Arc;

use rvirt_daemon::host::{DriverIdentity, GenericHost};
use rvirt_daemon::{DaemonContext, DaemonSpec, ServiceSet};
use rvirt_proto::v1::storage_pool_service_server::StoragePoolServiceServer;
use rvirt_proto::v1::storage_vol_service_server::StorageVolServiceServer;

use crate::command::HostRunner;
use crate::driver::{DriverPaths, StorageDriver};

/// What this daemon is.
pub const SPEC: DaemonSpec = DaemonSpec {
    name: "virtstoraged",
    sockets: "virtstoraged",
    driver: "storage",
    about: "The rvirt storage pool and volume daemon",
};

/// The largest gRPC message the services accept or send: a 1 MiB data chunk plus framing.
pub const MAX_MESSAGE: usize = 4 << 20;

/// The daemon's driver: the storage driver and the host service.
#[derive(Debug)]
pub struct StorageDaemon {
    ctx: Arc<DaemonContext>,
    driver: Arc<StorageDriver>,
}

impl StorageDaemon {
    /// The storage driver.
    pub fn driver(&self) -> &Arc<StorageDriver> {
        &self.driver
    }
}

/// The storage services of `driver`, ready to serve.
pub fn storage_services(
    driver: &Arc<StorageDriver>,
) -> (
    StoragePoolServiceServer<service::PoolService>,
    StorageVolServiceServer<service::VolService>,
) {
    (
        StoragePoolServiceServer::new(service::PoolService::new(Arc::clone(driver)))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        StorageVolServiceServer::new(service::VolService::new(Arc::clone(driver)))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    )
}

impl rvirt_daemon::Driver for StorageDaemon {
    fn services(&self) -> ServiceSet {
        let (pools, vols) = storage_services(&self.driver);
        ServiceSet::new()
            .with(
                GenericHost::new(
                    Arc::clone(&self.ctx),
                    Arc::new(DriverIdentity {
                        driver_type: "storage",
                        uri_scheme: "storage",
                    }),
                )
                .into_server(),
            )
            .with(pools)
            .with(vols)
    }

    fn shutting_down(&self) {
        self.driver.events.close();
    }
}

/// Builds the daemon's driver: loads definitions, recovers active pools, starts autostart
/// pools.
pub async fn init(ctx: Arc<DaemonContext>) -> Result<StorageDaemon, String> {
    let paths = DriverPaths {
        config_dir: ctx.paths.driver_config_dir.clone(),
        state_dir: ctx.paths.driver_state_dir.clone(),
    };
    for dir in [&paths.config_dir, &paths.state_dir] {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let driver = StorageDriver::with_secrets(
        paths,
        Arc::new(HostRunner),
        Arc::new(secrets::VirtSecretd::new(ctx.mode)),
    );
    driver.load().await;
    Ok(StorageDaemon { ctx, driver })
}
