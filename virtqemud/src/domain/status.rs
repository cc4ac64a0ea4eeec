//! The status file of a running domain: what a restarted virtqemud needs to find and adopt its
//! QEMU again (pid, monitor socket, runtime directory, id, live XML, state and reason).
//!
//! One JSON file per running domain, `<state dir>/<name>.status`, written atomically at start
//! and at every state change, removed when the domain stops.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The status file's format version.
pub const STATUS_VERSION: u32 = 1;

/// What a status file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusFile {
    /// [`STATUS_VERSION`].
    pub version: u32,
    /// The domain's name.
    pub name: String,
    /// Its UUID.
    pub uuid: String,
    /// Its runtime id.
    pub id: u32,
    /// QEMU's pid.
    pub pid: u32,
    /// QEMU's monitor socket.
    pub monitor: PathBuf,
    /// The domain's runtime directory.
    pub dir: PathBuf,
    /// QEMU's log file.
    pub log: PathBuf,
    /// The live definition (live XML).
    pub live_xml: String,
    /// The state (`DomainState` number).
    pub state: i32,
    /// The reason (the number within the state's reason enum).
    pub reason: i32,
    /// Whether the domain has no persistent definition.
    pub transient: bool,
    /// A guest shutdown was seen and the process is being stopped.
    #[serde(default)]
    pub shutdown_seen: bool,
    /// A reboot through a shutdown is pending (libvirt's fake reboot).
    #[serde(default)]
    pub fake_reboot: bool,
    /// When the domain started, seconds since the epoch.
    pub started: u64,
    /// Network ports to release when the domain stops.
    #[serde(default)]
    pub ports: Vec<super::resources::PortRecord>,
}

/// The status file path of domain `name` in `state_dir`.
pub fn path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("{name}.status"))
}

impl StatusFile {
    /// Writes the file atomically.
    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        let data = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        rvirt_daemon::atomic::write_atomic(&path(state_dir, &self.name), &data, 0o600)
    }

    /// Reads a status file.
    pub fn read(path: &Path) -> Result<StatusFile, String> {
        let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let status: StatusFile =
            serde_json::from_slice(&data).map_err(|e| format!("cannot parse {}: {e}", path.display()))?;
        if status.version != STATUS_VERSION {
            return Err(format!(
                "{} has status version {}, this daemon reads {STATUS_VERSION}",
                path.display(),
                status.version
            ));
        }
        Ok(status)
    }
}
