//! `<pool>`: a storage pool definition, libvirt's `virStoragePoolDef`.
//!
//! Every libvirt pool type parses (so `storagepoolxml2xmlin/` round-trips); which types a
//! daemon can run is the daemon's business. `post_parse` applies libvirt's per-type rules:
//! which `<source>` children exist, the default source format, the source name defaulting to
//! the pool name (logical, rbd, ...), the target path of logical pools (`/dev/<vg>`), required
//! elements, and drops what only describes run-time state (sizes, free extents).

use serde::{Deserialize, Serialize};

use super::{NameAttr, PathAttr, Permissions, ScaledXml, TypeAttr, sanitize_path};
use crate::xml::{self, XmlError};

/// A pool type (libvirt's `virStoragePoolType`, same order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolType {
    /// A directory.
    Dir,
    /// A block device or image with a file system, mounted on the target.
    Fs,
    /// A network file system (NFS, CIFS, GlusterFS), mounted on the target.
    Netfs,
    /// An LVM volume group.
    Logical,
    /// A partitioned disk.
    Disk,
    /// An iSCSI target through the host's initiator.
    Iscsi,
    /// An iSCSI target through libiscsi.
    #[serde(rename = "iscsi-direct")]
    IscsiDirect,
    /// A SCSI host adapter.
    Scsi,
    /// Multipath devices.
    Mpath,
    /// A Ceph RBD pool.
    Rbd,
    /// A Sheepdog cluster.
    Sheepdog,
    /// A Gluster volume.
    Gluster,
    /// A ZFS pool.
    Zfs,
    /// A Virtuozzo storage cluster.
    Vstorage,
}

impl PoolType {
    /// Every type, in libvirt's order.
    pub const ALL: [PoolType; 14] = [
        PoolType::Dir,
        PoolType::Fs,
        PoolType::Netfs,
        PoolType::Logical,
        PoolType::Disk,
        PoolType::Iscsi,
        PoolType::IscsiDirect,
        PoolType::Scsi,
        PoolType::Mpath,
        PoolType::Rbd,
        PoolType::Sheepdog,
        PoolType::Gluster,
        PoolType::Zfs,
        PoolType::Vstorage,
    ];

    /// The name in XML (`dir`, `iscsi-direct`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PoolType::Dir => "dir",
            PoolType::Fs => "fs",
            PoolType::Netfs => "netfs",
            PoolType::Logical => "logical",
            PoolType::Disk => "disk",
            PoolType::Iscsi => "iscsi",
            PoolType::IscsiDirect => "iscsi-direct",
            PoolType::Scsi => "scsi",
            PoolType::Mpath => "mpath",
            PoolType::Rbd => "rbd",
            PoolType::Sheepdog => "sheepdog",
            PoolType::Gluster => "gluster",
            PoolType::Zfs => "zfs",
            PoolType::Vstorage => "vstorage",
        }
    }

    /// Which `<source>` children the type uses (libvirt's per-type source flags).
    pub fn source_parts(self) -> SourceParts {
        let none = SourceParts::default();
        match self {
            PoolType::Dir | PoolType::Mpath => none,
            PoolType::Fs | PoolType::Disk => SourceParts { device: true, ..none },
            PoolType::Netfs => SourceParts {
                host: true,
                dir: true,
                ..none
            },
            PoolType::Logical | PoolType::Zfs => SourceParts {
                name: true,
                device: true,
                ..none
            },
            PoolType::Iscsi => SourceParts {
                host: true,
                device: true,
                initiator: true,
                ..none
            },
            PoolType::IscsiDirect => SourceParts {
                host: true,
                device: true,
                network: true,
                initiator: true,
                ..none
            },
            PoolType::Scsi => SourceParts {
                adapter: true,
                ..none
            },
            PoolType::Rbd | PoolType::Sheepdog => SourceParts {
                host: true,
                network: true,
                name: true,
                ..none
            },
            PoolType::Gluster => SourceParts {
                host: true,
                network: true,
                name: true,
                dir: true,
                ..none
            },
            PoolType::Vstorage => SourceParts { name: true, ..none },
        }
    }

    /// The source formats the type knows and its default, if it has formats.
    pub fn source_formats(self) -> Option<(&'static [&'static str], &'static str)> {
        const FS: &[&str] = &[
            "auto", "ext2", "ext3", "ext4", "ufs", "iso9660", "udf", "gfs", "gfs2", "vfat", "hfs+", "xfs",
            "ocfs2", "vmfs",
        ];
        const NETFS: &[&str] = &["auto", "nfs", "glusterfs", "cifs"];
        const DISK: &[&str] = &[
            "unknown", "dos", "dvh", "gpt", "mac", "bsd", "pc98", "sun", "lvm2",
        ];
        const LOGICAL: &[&str] = &["unknown", "lvm2"];
        match self {
            PoolType::Fs => Some((FS, "auto")),
            PoolType::Netfs => Some((NETFS, "auto")),
            PoolType::Disk => Some((DISK, "unknown")),
            PoolType::Logical => Some((LOGICAL, "lvm2")),
            _ => None,
        }
    }

    /// Whether the pool lives on the network and has no local target (rbd, sheepdog, gluster,
    /// iscsi-direct).
    pub fn is_network(self) -> bool {
        self.source_parts().network
    }
}

impl std::fmt::Display for PoolType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which parts of `<source>` a pool type uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceParts {
    /// `<host>`.
    pub host: bool,
    /// `<device>`.
    pub device: bool,
    /// `<dir>`.
    pub dir: bool,
    /// `<adapter>`.
    pub adapter: bool,
    /// `<name>`.
    pub name: bool,
    /// `<initiator>`.
    pub initiator: bool,
    /// A network pool without a local target.
    pub network: bool,
}

/// A `<pool>` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolDef {
    /// The pool type.
    #[serde(rename = "@type")]
    pub pool_type: PoolType,
    /// The name; after `post_parse` always set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The UUID; after `post_parse` always set, canonical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Total size (run-time; input is ignored, as libvirt does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<ScaledXml>,
    /// Space used (run-time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<ScaledXml>,
    /// Space free (run-time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<ScaledXml>,
    /// `<features><cow state=.../></features>` (dir and fs pools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<PoolFeatures>,
    /// Where the storage comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PoolSource>,
    /// Where it appears on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<PoolTarget>,
    /// How refresh computes volume allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<PoolRefresh>,
}

/// `<features>` of a pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolFeatures {
    /// `<cow state='yes|no'/>`: copy-on-write for the pool directory (btrfs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cow: Option<CowFeature>,
}

/// `<cow state=.../>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CowFeature {
    /// `yes` or `no`.
    #[serde(rename = "@state")]
    pub state: String,
}

/// `<refresh><volume allocation=.../></refresh>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRefresh {
    /// The volume part.
    pub volume: RefreshVolume,
}

/// `<volume allocation='default|capacity'/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshVolume {
    /// `default` or `capacity`.
    #[serde(rename = "@allocation")]
    pub allocation: String,
}

/// `<source>` of a pool, children in libvirt's output order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSource {
    /// Hosts (netfs, iscsi, rbd, gluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host: Vec<SourceHost>,
    /// Devices (fs, logical, disk, iscsi).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device: Vec<SourceDevice>,
    /// Remote directory (netfs, gluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathAttr>,
    /// SCSI adapter (scsi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<SourceAdapter>,
    /// Source name: volume group, RBD pool, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// iSCSI initiator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<Initiator>,
    /// Source format (file system type, partition table, `lvm2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TypeAttr>,
    /// Authentication (iscsi chap, rbd ceph).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<SourceAuth>,
    /// NFS protocol version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Vendor of the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<NameAttr>,
    /// Product of the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<NameAttr>,
}

/// `<host name=... port=.../>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceHost {
    /// Host name or address.
    #[serde(rename = "@name")]
    pub name: String,
    /// Port.
    #[serde(rename = "@port", default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
}

/// `<device path=.../>`; its free extents are run-time state and are not kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceDevice {
    /// Device path.
    #[serde(rename = "@path")]
    pub path: String,
    /// `yes`/`no`: whether partition names get a `p` separator (disk pools).
    #[serde(rename = "@part_separator", default, skip_serializing_if = "Option::is_none")]
    pub part_separator: Option<String>,
    /// Free extents (run-time, dropped).
    #[serde(rename = "freeExtent", default, skip_serializing)]
    pub free_extent: Vec<Extent>,
}

/// `<freeExtent start=... end=.../>` or `<extent .../>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Start offset.
    #[serde(rename = "@start")]
    pub start: String,
    /// End offset.
    #[serde(rename = "@end")]
    pub end: String,
}

/// `<adapter>` of a scsi pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceAdapter {
    /// `scsi_host` (default) or `fc_host`.
    #[serde(rename = "@type", default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    /// SCSI host name (`host0`).
    #[serde(rename = "@name", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether libvirt manages the vHBA.
    #[serde(rename = "@managed", default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<String>,
    /// Parent HBA.
    #[serde(rename = "@parent", default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Parent WWNN.
    #[serde(rename = "@parent_wwnn", default, skip_serializing_if = "Option::is_none")]
    pub parent_wwnn: Option<String>,
    /// Parent WWPN.
    #[serde(rename = "@parent_wwpn", default, skip_serializing_if = "Option::is_none")]
    pub parent_wwpn: Option<String>,
    /// Parent fabric WWN.
    #[serde(
        rename = "@parent_fabric_wwn",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub parent_fabric_wwn: Option<String>,
    /// WWNN.
    #[serde(rename = "@wwnn", default, skip_serializing_if = "Option::is_none")]
    pub wwnn: Option<String>,
    /// WWPN.
    #[serde(rename = "@wwpn", default, skip_serializing_if = "Option::is_none")]
    pub wwpn: Option<String>,
    /// The adapter by PCI address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parentaddr: Option<ParentAddr>,
}

/// `<parentaddr unique_id=...><address .../></parentaddr>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentAddr {
    /// Unique id of the SCSI host.
    #[serde(rename = "@unique_id", default, skip_serializing_if = "Option::is_none")]
    pub unique_id: Option<String>,
    /// PCI address.
    pub address: PciAddress,
}

/// A PCI address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciAddress {
    /// Domain.
    #[serde(rename = "@domain")]
    pub domain: String,
    /// Bus.
    #[serde(rename = "@bus")]
    pub bus: String,
    /// Slot.
    #[serde(rename = "@slot")]
    pub slot: String,
    /// Function.
    #[serde(rename = "@function")]
    pub function: String,
}

/// `<initiator><iqn name=.../></initiator>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Initiator {
    /// The IQN.
    pub iqn: NameAttr,
}

/// `<auth type=... username=...><secret .../></auth>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceAuth {
    /// `chap` or `ceph`.
    #[serde(rename = "@type")]
    pub r#type: String,
    /// User name.
    #[serde(rename = "@username")]
    pub username: String,
    /// The secret holding the password or key.
    pub secret: AuthSecret,
}

/// `<secret uuid=.../>` or `<secret usage=.../>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthSecret {
    /// Secret UUID.
    #[serde(rename = "@uuid", default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Secret usage id.
    #[serde(rename = "@usage", default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<String>,
}

/// `<protocol ver=.../>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protocol {
    /// NFS version.
    #[serde(rename = "@ver")]
    pub ver: String,
}

/// `<target>` of a pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolTarget {
    /// Where the pool's volumes appear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Permissions of the target directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Permissions>,
}

fn bad(path: impl Into<String>, message: impl Into<String>) -> XmlError {
    XmlError::invalid(path, message)
}

impl PoolDef {
    /// Parses and post-parses a `<pool>` document.
    pub fn from_xml(text: &str) -> Result<PoolDef, XmlError> {
        let mut def: PoolDef = xml::from_str("pool", text)?;
        def.post_parse()?;
        Ok(def)
    }

    /// Formats the pool as libvirt does.
    pub fn to_xml(&self) -> Result<String, XmlError> {
        xml::to_string("pool", self)
    }

    /// The pool's name (empty before `post_parse`).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The pool's UUID (empty before `post_parse`).
    pub fn uuid(&self) -> &str {
        self.uuid.as_deref().unwrap_or("")
    }

    /// The target path, for pools that have one.
    pub fn target_path(&self) -> Option<&str> {
        self.target.as_ref().and_then(|t| t.path.as_deref())
    }

    /// The target permissions.
    pub fn target_permissions(&self) -> Permissions {
        self.target
            .as_ref()
            .and_then(|t| t.permissions.clone())
            .unwrap_or_default()
    }

    /// The source format (`ext4`, `lvm2`, `auto`), for types with formats.
    pub fn source_format(&self) -> Option<&str> {
        self.source
            .as_ref()
            .and_then(|s| s.format.as_ref())
            .map(|f| f.r#type.as_str())
    }

    /// The source name (volume group of a logical pool).
    pub fn source_name(&self) -> Option<&str> {
        self.source.as_ref().and_then(|s| s.name.as_deref())
    }

    /// The source device paths.
    pub fn source_devices(&self) -> Vec<&str> {
        self.source
            .as_ref()
            .map(|s| s.device.iter().map(|d| d.path.as_str()).collect())
            .unwrap_or_default()
    }

    /// Sets the run-time sizes shown in the XML.
    pub fn set_sizes(&mut self, capacity: u64, allocation: u64, available: u64) {
        self.capacity = Some(ScaledXml::bytes(capacity, "bytes"));
        self.allocation = Some(ScaledXml::bytes(allocation, "bytes"));
        self.available = Some(ScaledXml::bytes(available, "bytes"));
    }

    /// libvirt's post-parse rules (see the module documentation).
    pub fn post_parse(&mut self) -> Result<(), XmlError> {
        let kind = self.pool_type;
        let parts = kind.source_parts();
        let mut source = self.source.take().unwrap_or_default();

        if kind == PoolType::Rbd && source.name.is_none() {
            return Err(bad(
                "/pool/source/name",
                "element 'name' is mandatory for RBD pool",
            ));
        }
        match kind.source_formats() {
            Some((known, default)) => {
                let format = source.format.get_or_insert_with(|| TypeAttr {
                    r#type: default.to_owned(),
                });
                if !known.contains(&format.r#type.as_str()) {
                    return Err(bad(
                        "/pool/source/format/@type",
                        format!(
                            "unknown pool format type '{}' for a {kind} pool: use one of {}",
                            format.r#type,
                            known.join(", ")
                        ),
                    ));
                }
            }
            None => source.format = None,
        }
        for (i, host) in source.host.iter().enumerate() {
            if let Some(port) = &host.port
                && port.trim().parse::<i32>().is_err()
            {
                return Err(bad(
                    format!("/pool/source/host[{}]/@port", i + 1),
                    format!("malformed port '{port}'"),
                ));
            }
        }
        if let Some(dir) = source.dir.as_mut() {
            dir.path = sanitize_path(&dir.path);
        }
        if kind == PoolType::Gluster && source.dir.is_none() {
            source.dir = Some(PathAttr { path: "/".into() });
        }
        if let Some(protocol) = &source.protocol {
            if !matches!(
                source.format.as_ref().map(|f| f.r#type.as_str()),
                Some("nfs" | "auto")
            ) {
                return Err(bad(
                    "/pool/source/protocol",
                    "storage pool protocol ver is only supported for nfs and auto netfs pools",
                ));
            }
            if protocol.ver.trim().parse::<u32>().is_err() {
                return Err(bad(
                    "/pool/source/protocol/@ver",
                    format!("storage pool protocol ver '{}' is malformed", protocol.ver),
                ));
            }
        }
        if let Some(auth) = &source.auth {
            if !matches!(auth.r#type.as_str(), "chap" | "ceph") {
                return Err(bad(
                    "/pool/source/auth/@type",
                    format!("unknown auth type '{}': use chap or ceph", auth.r#type),
                ));
            }
            if auth.secret.uuid.is_some() == auth.secret.usage.is_some() {
                return Err(bad(
                    "/pool/source/auth/secret",
                    "the auth secret needs exactly one of uuid or usage",
                ));
            }
        }

        if self.name.is_none() && parts.name {
            self.name = source.name.clone();
        }
        let name = self
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("/pool/name", "missing pool name element"))?
            .to_owned();
        if name.contains('/') {
            return Err(bad(
                "/pool/name",
                format!("pool name '{name}' cannot contain '/'"),
            ));
        }
        self.name = Some(name.clone());

        self.uuid = Some(match &self.uuid {
            None => xml::new_uuid(),
            Some(text) => {
                xml::canonical_uuid(text).ok_or_else(|| bad("/pool/uuid", "malformed uuid element"))?
            }
        });

        if let Some(features) = &self.features
            && let Some(cow) = &features.cow
        {
            if !matches!(kind, PoolType::Fs | PoolType::Dir) {
                return Err(bad(
                    "/pool/features/cow",
                    "cow feature may only be used for 'fs' and 'dir' pools",
                ));
            }
            if !matches!(cow.state.as_str(), "yes" | "no") {
                return Err(bad(
                    "/pool/features/cow/@state",
                    "cow state must be 'yes' or 'no'",
                ));
            }
        }
        if self.features.as_ref().is_some_and(|f| f.cow.is_none()) {
            self.features = None;
        }

        if parts.host && source.host.is_empty() {
            return Err(bad("/pool/source/host", "missing storage pool source host name"));
        }
        if parts.dir && source.dir.is_none() {
            return Err(bad("/pool/source/dir", "missing storage pool source path"));
        }
        if parts.name && source.name.is_none() {
            source.name = Some(name.clone());
        }
        if parts.adapter {
            validate_adapter(&mut source)?;
        }
        if parts
            == (SourceParts {
                device: true,
                ..SourceParts::default()
            })
            && source.device.is_empty()
        {
            return Err(bad(
                "/pool/source/device",
                "missing storage pool source device name",
            ));
        }
        if kind == PoolType::IscsiDirect && source.initiator.is_none() {
            return Err(bad("/pool/source/initiator", "missing initiator IQN"));
        }

        // What the type does not use is not kept (libvirt neither formats nor uses it).
        if !parts.host {
            source.host.clear();
        }
        if !parts.device {
            source.device.clear();
        }
        for device in &mut source.device {
            device.free_extent.clear();
        }
        if !parts.dir {
            source.dir = None;
        }
        if !parts.adapter {
            source.adapter = None;
        }
        if !parts.name {
            source.name = None;
        }
        if !parts.initiator {
            source.initiator = None;
        }
        self.source = Some(source);

        if parts.network {
            self.target = None;
        } else {
            let mut target = self.target.take().unwrap_or_default();
            let path = match kind {
                PoolType::Logical => format!("/dev/{}", self.source_name().unwrap_or_default()),
                PoolType::Zfs => format!("/dev/zvol/{}", self.source_name().unwrap_or_default()),
                _ => target
                    .path
                    .clone()
                    .filter(|p| !p.trim().is_empty())
                    .ok_or_else(|| bad("/pool/target/path", "missing storage pool target path"))?,
            };
            target.path = Some(sanitize_path(&path));
            if let Some(perms) = target.permissions.as_mut() {
                perms.post_parse("/pool/target/permissions")?;
                if perms.is_empty() {
                    target.permissions = None;
                }
            }
            self.target = Some(target);
        }

        if let Some(refresh) = &self.refresh
            && !matches!(refresh.volume.allocation.as_str(), "default" | "capacity")
        {
            return Err(bad(
                "/pool/refresh/volume/@allocation",
                format!(
                    "unknown storage pool volume refresh allocation type '{}'",
                    refresh.volume.allocation
                ),
            ));
        }
        // Sizes are run-time values: input is ignored, output shows what the daemon measured.
        self.set_sizes(0, 0, 0);
        Ok(())
    }
}

fn validate_adapter(source: &mut PoolSource) -> Result<(), XmlError> {
    let adapter = source
        .adapter
        .as_mut()
        .ok_or_else(|| bad("/pool/source/adapter", "missing storage pool source adapter"))?;
    let kind = adapter.r#type.get_or_insert_with(|| {
        if adapter.wwnn.is_some() || adapter.wwpn.is_some() {
            "fc_host".to_owned()
        } else {
            "scsi_host".to_owned()
        }
    });
    match kind.as_str() {
        "scsi_host" => {
            if adapter.name.is_some() == adapter.parentaddr.is_some() {
                return Err(bad(
                    "/pool/source/adapter",
                    "a scsi_host adapter needs exactly one of the 'name' attribute or <parentaddr>",
                ));
            }
        }
        "fc_host" => {
            if adapter.wwnn.is_none() || adapter.wwpn.is_none() {
                return Err(bad(
                    "/pool/source/adapter",
                    "an fc_host adapter needs 'wwnn' and 'wwpn'",
                ));
            }
        }
        other => {
            return Err(bad(
                "/pool/source/adapter/@type",
                format!("unknown adapter type '{other}': use scsi_host or fc_host"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_pool_gets_defaults() {
        let def =
            PoolDef::from_xml("<pool type='dir'><name>p</name><target><path>/srv//p/</path></target></pool>")
                .expect("valid");
        assert_eq!(def.name(), "p");
        assert!(xml::canonical_uuid(def.uuid()).is_some());
        assert_eq!(def.target_path(), Some("/srv/p"));
    }

    #[test]
    fn logical_pool_target_is_the_volume_group_device_dir() {
        let def = PoolDef::from_xml(
            "<pool type='logical'><source><name>vg0</name></source><target><path>/x</path></target></pool>",
        )
        .expect("valid");
        assert_eq!(def.name(), "vg0");
        assert_eq!(def.target_path(), Some("/dev/vg0"));
        assert_eq!(def.source_format(), Some("lvm2"));
    }

    #[test]
    fn unknown_pool_type_is_named() {
        let err = PoolDef::from_xml("<pool type='tape'><name>p</name></pool>").expect_err("bad type");
        assert!(err.message.contains("tape"), "{}", err.message);
    }

    #[test]
    fn name_with_slash_is_refused() {
        let err =
            PoolDef::from_xml("<pool type='dir'><name>a/b</name><target><path>/x</path></target></pool>")
                .expect_err("slash");
        assert_eq!(err.path, "/pool/name");
    }

    #[test]
    fn missing_target_path_is_refused() {
        let err = PoolDef::from_xml("<pool type='dir'><name>p</name></pool>").expect_err("no target");
        assert_eq!(err.path, "/pool/target/path");
    }

    #[test]
    fn fs_pool_needs_a_device_and_checks_its_format() {
        let err = PoolDef::from_xml("<pool type='fs'><name>p</name><target><path>/m</path></target></pool>")
            .expect_err("no device");
        assert_eq!(err.path, "/pool/source/device");
        let err = PoolDef::from_xml(
            "<pool type='fs'><name>p</name><source><device path='/dev/x'/><format type='zork'/></source><target><path>/m</path></target></pool>",
        )
        .expect_err("bad format");
        assert_eq!(err.path, "/pool/source/format/@type");
    }

    #[test]
    fn unknown_element_is_refused_with_its_path() {
        let err = PoolDef::from_xml(
            "<pool type='dir'><name>p</name><target><path>/x</path><colour/></target></pool>",
        )
        .expect_err("unknown");
        assert_eq!(err.path, "/pool/target/colour");
    }
}
