//! What a domain needs from outside QEMU before it starts, and gives back when it stops:
//! volumes (`<disk type='volume'>`, resolved by virtstoraged), network ports and tap devices
//! (`<interface type='network'|'bridge'>`, virtnetworkd), LUKS passphrases (virtsecretd).
//!
//! (Stub: being written.)

use std::os::fd::OwnedFd;
use std::path::Path;

use rvirt_conf::domain::{Device, DomainDef, InterfaceSource};
use rvirt_proto::error::status;
use rvirt_proto::v1::{ErrorCode, ErrorDomain};
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::command::Resources;

pub use rvirt::paths::Mode;

/// How to reach the other daemons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// System or session: the same as this daemon's.
    pub mode: Mode,
}

/// A network port created for one interface; deleted when the domain stops. Kept in the
/// status file, so a restarted daemon can still release it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRecord {
    /// The network.
    pub network: String,
    /// The port's UUID.
    pub uuid: String,
}

/// What [`prepare`] set up.
#[derive(Debug, Default)]
pub struct Prepared {
    /// For the command builder.
    pub resources: Resources,
    /// Descriptors QEMU must inherit (tap fds), under these numbers; the caller closes its
    /// copies (drops this) once QEMU is spawned.
    pub fds: Vec<OwnedFd>,
    /// Ports to release at stop.
    pub ports: Vec<PortRecord>,
}

impl Prepared {
    /// The descriptor numbers QEMU inherits.
    pub fn inherited(&self) -> Vec<i32> {
        use std::os::fd::AsRawFd as _;
        self.fds.iter().map(|fd| fd.as_raw_fd()).collect()
    }
}

/// Prepares everything `def` needs before QEMU starts; fills what becomes part of the live XML
/// (tap names in `<target dev>`). `runtime_dir` is the domain's private runtime directory
/// (for the master key file). On error nothing stays allocated.
pub async fn prepare(def: &mut DomainDef, runtime_dir: &Path, ctx: &Context) -> Result<Prepared, Status> {
    let _ = (runtime_dir, ctx);
    for device in &def.devices.list {
        match device {
            Device::Disk(disk) => {
                if let Some(rvirt_conf::domain::DiskSource::Volume { pool, volume }) = &disk.source {
                    return Err(status(
                        ErrorCode::OperationUnsupported,
                        ErrorDomain::Qemu,
                        format!(
                            "Operation not supported: disk '{}' uses volume '{volume}' of pool '{pool}'; \
                             type='volume' disks are not wired to virtstoraged yet: use type='file' with the volume's path",
                            disk.target
                        ),
                    ));
                }
            }
            Device::Interface(iface) if !matches!(iface.source, InterfaceSource::User) => {
                return Err(status(
                    ErrorCode::OperationUnsupported,
                    ErrorDomain::Qemu,
                    format!(
                        "Operation not supported: interface {} needs a tap device, which virtqemud does not create yet: use type='user'",
                        iface.mac
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(Prepared::default())
}

/// Releases what [`prepare`] allocated (network ports) after the domain stopped; errors are
/// logged, never fatal.
pub async fn release(ctx: &Context, ports: Vec<PortRecord>) {
    let _ = (ctx, ports);
}
