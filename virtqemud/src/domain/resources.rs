//! What a domain needs from outside QEMU before it starts, and gives back when it stops:
//! volumes (`<disk type='volume'>`, resolved by virtstoraged), network ports and tap devices
//! (`<interface type='network'>` through virtnetworkd, `type='bridge'` directly), LUKS
//! passphrases (virtsecretd, see [`luks`]).
//!
//! virtqemud is a client of the other daemons here, in direct mode through libclient
//! (`storage:///system?mode=direct`, ...), with the same mode and `RVIRT_ROOT` as the daemon
//! itself, so it finds their sockets where their clients do. See `docs/qemu-resources.md`.
//!
//! [`prepare`] either succeeds whole or leaves nothing behind: ports it created are deleted and
//! taps it opened are closed (a tap is not persistent: it vanishes with its last descriptor).

pub mod luks;
pub mod port;
pub mod tap;
pub mod volume;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use rvirt::{Connect, OpenOptions};
use rvirt_conf::domain::{Device, DiskSource, DomainDef, EncryptionSecret, InterfaceSource, NetModel};
use rvirt_proto::error::status;
use rvirt_proto::v1::{ErrorCode, ErrorDomain};
use serde::{Deserialize, Serialize};
use tonic::Status;

pub use rvirt::paths::Mode;

use crate::command::{NetBackend, Resources};

/// The deadline of each call to another daemon.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

/// How to reach the other daemons: the daemon's own mode (`DaemonContext.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// System or session: `*:///system` or `*:///session` connections.
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

/// A status with libvirt's error number.
pub(crate) fn fail(code: ErrorCode, domain: ErrorDomain, message: impl Into<String>) -> Status {
    status(code, domain, message)
}

/// Opens a direct connection to the daemon serving `driver` (`storage`, `network`,
/// `secret`) in the daemon's own mode.
pub(crate) async fn open(ctx: &Context, driver: &str) -> rvirt::Result<Connect> {
    let uri = rvirt::uri::ConnectUri::parse(&format!("{driver}:///{}?mode=direct", ctx.mode.as_str()))?;
    Connect::open_with(
        uri,
        OpenOptions {
            read_only: false,
            deadline: CALL_DEADLINE,
            autostart: true,
        },
    )
    .await
}

/// Whether QEMU's NIC model uses the virtio-net header on the tap.
fn wants_vnet_hdr(model: Option<NetModel>) -> bool {
    matches!(
        model,
        Some(NetModel::Virtio | NetModel::VirtioTransitional | NetModel::VirtioNonTransitional)
    )
}

/// Prepares everything `def` needs before QEMU starts; fills what becomes part of the live XML
/// (tap names in `<target dev>`). `runtime_dir` is the domain's private runtime directory
/// (for the master key file); it must exist. On error nothing stays allocated.
pub async fn prepare(def: &mut DomainDef, runtime_dir: &Path, ctx: &Context) -> Result<Prepared, Status> {
    let mut prepared = Prepared::default();
    let mut tap_names = Vec::new();
    match prepare_into(def, runtime_dir, ctx, &mut prepared, &mut tap_names).await {
        Ok(()) => {
            let mut names = tap_names.into_iter();
            for device in &mut def.devices.list {
                if let Device::Interface(iface) = device
                    && !matches!(iface.source, InterfaceSource::User)
                    && let Some(name) = names.next()
                {
                    iface.target_dev = Some(name);
                }
            }
            Ok(prepared)
        }
        Err(e) => {
            let ports = std::mem::take(&mut prepared.ports);
            drop(prepared);
            release(ctx, ports).await;
            let _ = std::fs::remove_file(runtime_dir.join(luks::MASTER_KEY_FILE));
            Err(e)
        }
    }
}

async fn prepare_into(
    def: &DomainDef,
    runtime_dir: &Path,
    ctx: &Context,
    prepared: &mut Prepared,
    tap_names: &mut Vec<String>,
) -> Result<(), Status> {
    // Volumes.
    let volumes: Vec<volume::VolumeDisk> = def
        .devices
        .list
        .iter()
        .filter_map(|d| match d {
            Device::Disk(disk) => match &disk.source {
                Some(DiskSource::Volume { pool, volume }) => Some(volume::VolumeDisk {
                    target: disk.target.clone(),
                    pool: pool.clone(),
                    volume: volume.clone(),
                    format: disk.driver.format,
                }),
                _ => None,
            },
            _ => None,
        })
        .collect();
    if let Some(first) = volumes.first() {
        let conn = open(ctx, "storage")
            .await
            .map_err(|e| volume::storage_error(first, &e))?;
        for disk in &volumes {
            let resolved = volume::resolve(&conn, disk).await?;
            tracing::debug!(target = %disk.target, path = %resolved.path.display(), "volume resolved");
            prepared.resources.disks.insert(disk.target.clone(), resolved);
        }
    }

    // Interfaces.
    let interfaces: Vec<_> = def
        .devices
        .list
        .iter()
        .filter_map(|d| match d {
            Device::Interface(iface) => Some(iface),
            _ => None,
        })
        .collect();
    let mut network_conn: Option<Connect> = None;
    for (k, iface) in interfaces.into_iter().enumerate() {
        let bridge = match &iface.source {
            InterfaceSource::User => continue,
            InterfaceSource::Bridge(bridge) => bridge.clone(),
            InterfaceSource::Network(network) => {
                let conn = match &network_conn {
                    Some(conn) => conn.clone(),
                    None => {
                        let conn = open(ctx, "network")
                            .await
                            .map_err(|e| port::port_error(network, &iface.mac, &e))?;
                        network_conn = Some(conn.clone());
                        conn
                    }
                };
                let created = port::create(&conn, network, &def.name, &def.uuid, &iface.mac).await?;
                prepared.ports.push(created.record.clone());
                if created.plug_type != "network" && created.plug_type != "bridge" {
                    return Err(fail(
                        ErrorCode::ConfigUnsupported,
                        ErrorDomain::Qemu,
                        format!(
                            "Unsupported configuration: network '{network}' plugs interface {} as '{}'; only networks that attach a tap to a bridge are supported",
                            iface.mac, created.plug_type
                        ),
                    ));
                }
                created.bridge
            }
        };
        let mac = tap::tap_mac(&iface.mac).ok_or_else(|| {
            fail(
                ErrorCode::InternalError,
                ErrorDomain::Qemu,
                format!("Interface MAC address '{}' is malformed", iface.mac),
            )
        })?;
        let requested = tap::requested_name(iface.target_dev.as_deref());
        let tap = tap::open(requested, wants_vnet_hdr(iface.model)).map_err(|e| {
            fail(
                ErrorCode::SystemError,
                ErrorDomain::Qemu,
                format!(
                    "Unable to create tap device {requested} for interface {}: {e}",
                    iface.mac
                ),
            )
        })?;
        let name = tap.name.clone();
        // Held from here on, so an error below closes it (and the device goes away).
        let fd_number = {
            use std::os::fd::AsRawFd as _;
            tap.fd.as_raw_fd()
        };
        prepared.fds.push(tap.fd);
        tap::plug(&name, mac, &bridge).await.map_err(|e| {
            fail(
                ErrorCode::SystemError,
                ErrorDomain::Qemu,
                format!(
                    "Unable to plug interface {} into bridge '{bridge}': {e}",
                    iface.mac
                ),
            )
        })?;
        tracing::debug!(tap = %name, bridge = %bridge, mac = %iface.mac, "tap device plugged");
        prepared.resources.interfaces.insert(
            k,
            NetBackend::TapFd {
                fd: fd_number,
                ifname: name.clone(),
            },
        );
        tap_names.push(name);
    }

    // LUKS passphrases.
    let mut luks_disks = Vec::new();
    for device in &def.devices.list {
        let Device::Disk(disk) = device else {
            continue;
        };
        let Some(encryption) = &disk.encryption else {
            continue;
        };
        match &encryption.secret {
            EncryptionSecret::Uuid(uuid) => luks_disks.push(luks::LuksDisk {
                target: disk.target.clone(),
                secret_uuid: uuid.clone(),
            }),
            EncryptionSecret::Usage(usage) => {
                return Err(fail(
                    ErrorCode::ConfigUnsupported,
                    ErrorDomain::Qemu,
                    format!(
                        "Unsupported configuration: disk '{}' names its passphrase secret by usage '{usage}'; name it by uuid",
                        disk.target
                    ),
                ));
            }
        }
    }
    luks::prepare(ctx, def, runtime_dir, &luks_disks, &mut prepared.resources).await?;
    Ok(())
}

/// Releases what [`prepare`] allocated (network ports) after the domain stopped; errors are
/// logged, never fatal.
pub async fn release(ctx: &Context, ports: Vec<PortRecord>) {
    if ports.is_empty() {
        return;
    }
    let conn = match open(ctx, "network").await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(ports = ports.len(), error = %e, "cannot reach virtnetworkd to release network ports");
            return;
        }
    };
    for record in &ports {
        if let Err(e) = port::delete(&conn, record).await {
            tracing::warn!(network = %record.network, port = %record.uuid, error = %e, "cannot delete network port");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnet_hdr_only_for_virtio_models() {
        assert!(wants_vnet_hdr(Some(NetModel::Virtio)));
        assert!(wants_vnet_hdr(Some(NetModel::VirtioNonTransitional)));
        assert!(!wants_vnet_hdr(Some(NetModel::E1000)));
        assert!(!wants_vnet_hdr(None));
    }

    #[test]
    fn port_records_round_trip_through_the_status_file_format() {
        let record = PortRecord {
            network: "default".into(),
            uuid: "5e6f3b2a-2a9b-4d8e-9f55-3f4c0b7d1a22".into(),
        };
        let json = serde_json::to_string(&record).expect("serialize");
        let back: PortRecord = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, record);
    }

    #[tokio::test]
    async fn a_domain_without_volumes_or_taps_needs_nothing() {
        let mut def = DomainDef::parse(
            "<domain type='qemu'><name>d</name><memory>65536</memory><os><type>hvm</type></os>\
             <devices><interface type='user'><mac address='52:54:00:00:00:01'/></interface></devices></domain>",
            rvirt_conf::domain::ParseFlags::default(),
        )
        .expect("parse");
        let dir = tempfile::tempdir().expect("tempdir");
        let prepared = prepare(&mut def, dir.path(), &Context { mode: Mode::System })
            .await
            .expect("nothing to prepare");
        assert!(prepared.fds.is_empty());
        assert!(prepared.ports.is_empty());
        assert!(prepared.resources.disks.is_empty());
        assert!(prepared.resources.interfaces.is_empty());
    }
}
