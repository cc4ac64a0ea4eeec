//! `virtsecretd`: The rvirt secret daemon.
//!
//! It runs on the shared runtime (`rvirt-daemon`): sockets, access checks, the admin service,
//! health and reflection. It serves `SecretService` (libvirt's secret driver) beside the generic
//! host service.
//!
//! - [`driver`]: the secrets, libvirt's rules, persistence and events;
//! - [`store`]: definitions and sealed values on disk, written atomically;
//! - [`crypto`]: the master key and the AEAD that seals values at rest;
//! - [`value`]: values in memory, wiped on drop and never printed;
//! - [`service`]: the gRPC adapter.
//!
//! The user documentation, with the threat model, is `docs/secrets.md`.

pub mod crypto;
pub mod driver;
pub mod service;
pub mod store;
pub mod value;

use std::sync::Arc;

use rvirt_daemon::host::{DriverIdentity, GenericHost};
use rvirt_daemon::{DaemonContext, DaemonSpec, Driver, ServiceSet};

use crate::driver::{DriverPaths, SecretDriver};
use crate::service::SecretApi;

/// What this daemon is.
pub const SPEC: DaemonSpec = DaemonSpec {
    name: "virtsecretd",
    sockets: "virtsecretd",
    driver: "secret",
    about: "The rvirt secret daemon",
};

/// The systemd variable naming the directory of the service's credentials.
pub const CREDENTIALS_ENV: &str = "CREDENTIALS_DIRECTORY";

/// The daemon's driver: the secret driver and the generic host service.
#[derive(Debug)]
pub struct SecretDaemon {
    ctx: Arc<DaemonContext>,
    driver: Arc<SecretDriver>,
}

impl SecretDaemon {
    /// The secret driver.
    pub fn driver(&self) -> &Arc<SecretDriver> {
        &self.driver
    }
}

impl Driver for SecretDaemon {
    fn services(&self) -> ServiceSet {
        let identity = DriverIdentity {
            driver_type: "secret",
            uri_scheme: "secret",
        };
        ServiceSet::new()
            .with(GenericHost::new(Arc::clone(&self.ctx), Arc::new(identity)).into_server())
            .with(SecretApi::new(Arc::clone(&self.driver)).into_server())
    }

    /// Ephemeral secrets live only in this process: exiting when idle would lose them.
    fn busy(&self) -> Option<String> {
        let ephemeral = self.driver.ephemeral_count();
        (ephemeral > 0).then(|| format!("{ephemeral} ephemeral secret(s) exist only in memory"))
    }

    /// Ends open event watches so SIGTERM does not wait for them.
    fn shutting_down(&self) {
        self.driver.events().close();
    }
}

/// Builds the daemon's driver: loads the key and every stored secret.
pub async fn init(ctx: Arc<DaemonContext>) -> Result<SecretDaemon, String> {
    // No core dumps with the key or a value in them, and no ptrace by other processes of the
    // same user (session mode); root can still read everything (see docs/secrets.md).
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("cannot make the daemon non-dumpable: {e}");
    }
    let paths = DriverPaths {
        config_dir: ctx.paths.driver_config_dir.clone(),
        data_dir: ctx.paths.driver_data_dir.clone(),
        state_dir: ctx.paths.driver_state_dir.clone(),
        credentials_dir: std::env::var_os(CREDENTIALS_ENV)
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from),
    };
    let driver = tokio::task::spawn_blocking(move || SecretDriver::open(&paths))
        .await
        .map_err(|e| format!("loading the secrets failed: {e}"))??;
    Ok(SecretDaemon {
        ctx,
        driver: Arc::new(driver),
    })
}
