//! `QemuCommandBuilder`: a domain definition plus what the driver resolved for it, turned into
//! QEMU's argv. Pure: it reads nothing from the host and starts nothing.
//!
//! The command line is the one libvirt 11 writes for QEMU ≥ 7 (its `*.x86_64-latest.args`
//! test outputs): `-blockdev`, `-device`, `-object`, `-netdev` and `-audiodev` take JSON, other
//! options `key=value` lists with commas in values doubled; devices are named by the aliases
//! libvirt assigns ([`assign_aliases`]); a disk is a storage node (`libvirt-N-storage`) with a
//! format node (`libvirt-N-format`) above it unless it is plain raw; secrets reach QEMU only
//! encrypted with the master key. Whatever the definition asks for that this builder or this
//! QEMU cannot express is a [`CommandError::Unsupported`] naming the element, never dropped.
//! See `docs/qemu-command.md`.

mod alias;
mod args;
mod build;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub use alias::assign_aliases;

use rvirt_conf::domain::{DiskFormat, DomainDef};

use crate::caps::Target;

/// How QEMU serves its monitor: a listening Unix socket rvirt bound and hands over as an
/// inherited descriptor (`-chardev socket,id=charmonitor,fd=N,server=on,wait=off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorFd(pub i32);

/// A disk source the driver resolved at start (a `type='volume'` disk, asked of virtstoraged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDisk {
    /// The file or block device.
    pub path: PathBuf,
    /// Whether `path` is a block device (else a file).
    pub block: bool,
    /// The image format.
    pub format: DiskFormat,
}

/// The host side of one `<interface>`, prepared by the driver before QEMU starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// A tap device opened by the driver and inherited by QEMU under this descriptor number
    /// (`-netdev tap,fd=N`).
    TapFd {
        /// The descriptor number in QEMU.
        fd: i32,
        /// The tap device's name (for the live XML's `<target dev>`).
        ifname: String,
    },
}

/// A `-object secret` QEMU decrypts with the master key (`keyid`), for a LUKS passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretObject {
    /// The object id (`libvirt-1-format-encryption-secret0` style).
    pub id: String,
    /// The AES-256-CBC ciphertext, base64.
    pub data_base64: String,
    /// The IV, base64.
    pub iv_base64: String,
}

/// What the driver prepared for one start of one domain.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// Resolved sources of `type='volume'` disks, by target (`vda`).
    pub disks: BTreeMap<String, ResolvedDisk>,
    /// Host sides of interfaces, by index among the definition's `<interface>` elements.
    pub interfaces: BTreeMap<usize, NetBackend>,
    /// The master key file (`-object secret,id=masterKey0,format=raw,file=…`), when any secret
    /// object is passed.
    pub master_key: Option<PathBuf>,
    /// LUKS secrets, by disk target.
    pub disk_secrets: BTreeMap<String, SecretObject>,
    /// TCP ports chosen for `autoport` graphics, by index among the `<graphics>` elements.
    /// A VNC server without one lets QEMU take the first free display (`to=99`; read the port
    /// back with `query-vnc`); a SPICE server without one is [`CommandError::Unresolved`].
    pub graphics_ports: BTreeMap<usize, u32>,
    /// Targets of CD-ROM disks whose block device source the driver found to be a real CD-ROM
    /// drive (`CDROM_GET_CAPABILITY` succeeds): QEMU opens them as `host_cdrom`.
    pub host_cdroms: BTreeSet<String>,
    /// The start time in seconds since the epoch, for `<clock offset='variable'>` (the
    /// current time when `None`).
    pub start_time: Option<i64>,
}

/// QEMU's argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCommand {
    /// The emulator binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables to set for it (`TZ` for `<clock offset='timezone'>`).
    pub env: Vec<(String, String)>,
}

/// Where a `unix` character device without a `<source path>` listens: `<runtime_dir>/<alias>.sock`.
/// The driver writes this path into the live XML.
pub fn default_unix_socket(runtime_dir: &Path, alias: &str) -> PathBuf {
    runtime_dir.join(format!("{alias}.sock"))
}

/// Why a definition cannot be turned into a command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The definition asks for something this QEMU lacks, or that the driver does not
    /// support at start (message names the element).
    #[error("{0}")]
    Unsupported(String),
    /// A resource the driver must resolve first is missing (a volume disk, a network port).
    #[error("{0}")]
    Unresolved(String),
}

/// Builds QEMU's command line for a domain.
#[derive(Debug)]
pub struct QemuCommandBuilder<'a> {
    def: &'a DomainDef,
    target: &'a Target,
    runtime_dir: &'a Path,
    monitor: MonitorFd,
    resources: &'a Resources,
}

impl<'a> QemuCommandBuilder<'a> {
    /// A builder for `def` running on `target`; `runtime_dir` is the domain's private runtime
    /// directory (sockets for `unix` chardevs without a path, the master key);
    /// `monitor` the inherited QMP socket.
    pub fn new(
        def: &'a DomainDef,
        target: &'a Target,
        runtime_dir: &'a Path,
        monitor: MonitorFd,
        resources: &'a Resources,
    ) -> Self {
        QemuCommandBuilder {
            def,
            target,
            runtime_dir,
            monitor,
            resources,
        }
    }

    /// The command line.
    ///
    /// Devices without an alias get libvirt's (on a copy: call [`assign_aliases`] on the
    /// definition itself so that the live XML matches).
    pub fn build(&self) -> Result<QemuCommand, CommandError> {
        build::Build::new(
            self.def,
            self.target,
            self.runtime_dir,
            self.monitor,
            self.resources,
        )
        .run()
    }
}
