//! `<volume>`: a storage volume definition, libvirt's `virStorageVolDef`.
//!
//! A volume is parsed in the context of its pool ([`VolDef::from_xml`] takes the pool type):
//! the pool decides which formats exist (file formats for dir/fs/netfs, partition types for
//! disk, none for logical) and the default (`raw`). `post_parse` scales sizes to bytes, fills
//! the allocation from the capacity, sets `compat` 1.1 when `<features>` is present, and drops
//! what only describes run-time state (`<source>` extents, `<timestamps>`, `<physical>`).

use serde::{Deserialize, Serialize};

use super::{Empty, Permissions, PoolType, ScaledXml, TypeAttr, scale_size};
use crate::xml::{self, XmlError};

/// Volume kind (libvirt's `virStorageVolType`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolType {
    /// A regular file.
    #[default]
    File,
    /// A block device.
    Block,
    /// A directory.
    Dir,
    /// A network volume.
    Network,
    /// A network directory.
    Netdir,
    /// A ploop image.
    Ploop,
}

impl VolType {
    /// The name in XML.
    pub fn as_str(self) -> &'static str {
        match self {
            VolType::File => "file",
            VolType::Block => "block",
            VolType::Dir => "dir",
            VolType::Network => "network",
            VolType::Netdir => "netdir",
            VolType::Ploop => "ploop",
        }
    }
}

/// The image formats of file volumes (libvirt's `virStorageFileFormat`, without `none`).
pub const FILE_FORMATS: &[&str] = &[
    "raw", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi", "fat", "vhd", "ploop", "cow", "qcow",
    "qcow2", "qed", "vmdk",
];

/// The partition types of disk pool volumes (libvirt's `virStorageVolFormatDisk`).
pub const DISK_VOL_FORMATS: &[&str] = &[
    "none",
    "linux",
    "fat16",
    "fat32",
    "linux-swap",
    "linux-lvm",
    "linux-raid",
    "extended",
];

/// The volume formats a pool type knows and its default, if it has formats.
pub fn vol_formats(pool: PoolType) -> Option<(&'static [&'static str], &'static str)> {
    match pool {
        PoolType::Dir
        | PoolType::Fs
        | PoolType::Netfs
        | PoolType::Gluster
        | PoolType::Vstorage
        | PoolType::Rbd => Some((FILE_FORMATS, "raw")),
        PoolType::Disk => Some((DISK_VOL_FORMATS, "none")),
        _ => None,
    }
}

/// How to parse a volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolParseOptions {
    /// The capacity may be missing (a clone takes its source's).
    pub capacity_optional: bool,
}

/// A `<volume>` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolDef {
    /// The kind; after `post_parse` always set.
    #[serde(rename = "@type", default, skip_serializing_if = "Option::is_none")]
    pub vol_type: Option<VolType>,
    /// The name inside the pool.
    pub name: String,
    /// The key, unique on the host (set by the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Extents (run-time; dropped on input).
    #[serde(default, skip_serializing)]
    pub source: Option<VolSource>,
    /// Size the guest sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<ScaledXml>,
    /// Host space used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<ScaledXml>,
    /// Size of the container on the host (output only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<ScaledXml>,
    /// Path, format, permissions and format options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<VolTarget>,
    /// The image this one is layered on.
    #[serde(rename = "backingStore", default, skip_serializing_if = "Option::is_none")]
    pub backing_store: Option<BackingStore>,
}

/// `<source>` of a volume: devices and extents, as a pool refresh reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolSource {
    /// Devices.
    #[serde(default)]
    pub device: Vec<VolSourceDevice>,
}

/// `<device path=...><extent .../></device>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolSourceDevice {
    /// Device path.
    #[serde(rename = "@path")]
    pub path: String,
    /// Extents.
    #[serde(default)]
    pub extent: Vec<super::pool::Extent>,
}

/// `<target>` of a volume, children in libvirt's output order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolTarget {
    /// Path on the host (set by the daemon; input is informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Image format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TypeAttr>,
    /// Permissions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Permissions>,
    /// Access, modification, change and birth times (run-time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamps: Option<Timestamps>,
    /// Encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// qcow2 compatibility level (`0.10`, `1.1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compat: Option<String>,
    /// Turn off copy-on-write on btrfs (a creation option, not formatted, as libvirt does).
    #[serde(default, skip_serializing)]
    pub nocow: Option<Empty>,
    /// qcow2 cluster size.
    #[serde(rename = "clusterSize", default, skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<ScaledXml>,
    /// qcow2 features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<VolFeatures>,
}

/// `<timestamps>`, in libvirt's output order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamps {
    /// Last access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime: Option<String>,
    /// Last modification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<String>,
    /// Last status change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime: Option<String>,
    /// Creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub btime: Option<String>,
}

/// `<features>` of a qcow2 volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolFeatures {
    /// `<lazy_refcounts/>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lazy_refcounts: Option<Empty>,
    /// `<extended_l2/>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_l2: Option<Empty>,
}

/// `<encryption format=...>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// `default`, `qcow`, `luks`, `luks2`, `luks-any`.
    #[serde(rename = "@format")]
    pub format: String,
    /// `qemu` or `librbd`.
    #[serde(rename = "@engine", default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// The passphrase secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret: Vec<EncryptionSecret>,
    /// Cipher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher: Option<Cipher>,
    /// IV generator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ivgen: Option<Ivgen>,
}

/// `<secret type='passphrase' uuid=.../>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionSecret {
    /// `passphrase`.
    #[serde(rename = "@type")]
    pub r#type: String,
    /// Secret UUID.
    #[serde(rename = "@uuid", default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Secret usage id.
    #[serde(rename = "@usage", default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<String>,
}

/// `<cipher name=... size=... mode=... hash=.../>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cipher {
    /// Algorithm.
    #[serde(rename = "@name")]
    pub name: String,
    /// Key size in bits.
    #[serde(rename = "@size")]
    pub size: String,
    /// Mode.
    #[serde(rename = "@mode", default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Hash.
    #[serde(rename = "@hash", default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// `<ivgen name=... hash=.../>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ivgen {
    /// Algorithm.
    #[serde(rename = "@name")]
    pub name: String,
    /// Hash.
    #[serde(rename = "@hash", default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// `<backingStore>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackingStore {
    /// Path of the backing image.
    pub path: String,
    /// Its format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TypeAttr>,
    /// Its permissions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Permissions>,
    /// Its timestamps (run-time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamps: Option<Timestamps>,
}

fn bad(path: impl Into<String>, message: impl Into<String>) -> XmlError {
    XmlError::invalid(path, message)
}

fn scaled(at: &str, value: &ScaledXml, limit: u64) -> Result<u64, XmlError> {
    scale_size(&value.value, value.unit.as_deref(), limit).map_err(|e| bad(at, e))
}

fn check_format(at: &str, pool: PoolType, format: &mut Option<TypeAttr>) -> Result<(), XmlError> {
    match vol_formats(pool) {
        Some((known, default)) => {
            let f = format.get_or_insert_with(|| TypeAttr {
                r#type: default.to_owned(),
            });
            if !known.contains(&f.r#type.as_str()) {
                return Err(bad(
                    at,
                    format!(
                        "unknown volume format type '{}' in a {pool} pool: use one of {}",
                        f.r#type,
                        known.join(", ")
                    ),
                ));
            }
        }
        None => *format = None,
    }
    Ok(())
}

impl VolDef {
    /// Parses and post-parses a `<volume>` document for a pool of type `pool`.
    pub fn from_xml(text: &str, pool: PoolType, options: VolParseOptions) -> Result<VolDef, XmlError> {
        let mut def: VolDef = xml::from_str("volume", text)?;
        def.post_parse(pool, options)?;
        Ok(def)
    }

    /// Formats the volume as libvirt does.
    pub fn to_xml(&self) -> Result<String, XmlError> {
        xml::to_string("volume", self)
    }

    /// Capacity in bytes (0 when missing).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity.as_ref().map_or(0, ScaledXml::as_bytes)
    }

    /// Whether a capacity was given.
    pub fn has_capacity(&self) -> bool {
        self.capacity.is_some()
    }

    /// Allocation in bytes.
    pub fn allocation_bytes(&self) -> u64 {
        self.allocation.as_ref().map_or(0, ScaledXml::as_bytes)
    }

    /// The target format (`raw`, `qcow2`), if the pool has formats.
    pub fn format(&self) -> Option<&str> {
        self.target
            .as_ref()
            .and_then(|t| t.format.as_ref())
            .map(|f| f.r#type.as_str())
    }

    /// The target permissions.
    pub fn permissions(&self) -> Permissions {
        self.target
            .as_ref()
            .and_then(|t| t.permissions.clone())
            .unwrap_or_default()
    }

    /// The qcow2 cluster size in bytes, if given.
    pub fn cluster_size_bytes(&self) -> Option<u64> {
        self.target
            .as_ref()
            .and_then(|t| t.cluster_size.as_ref())
            .map(ScaledXml::as_bytes)
    }

    /// Whether `<nocow/>` was given.
    pub fn nocow(&self) -> bool {
        self.target.as_ref().is_some_and(|t| t.nocow.is_some())
    }

    /// libvirt's post-parse rules (see the module documentation).
    pub fn post_parse(&mut self, pool: PoolType, options: VolParseOptions) -> Result<(), XmlError> {
        if self.name.trim().is_empty() {
            return Err(bad("/volume/name", "missing volume name element"));
        }
        self.vol_type.get_or_insert(VolType::File);
        self.source = None;
        self.physical = None;

        if let Some(backing) = self.backing_store.as_mut() {
            check_format("/volume/backingStore/format/@type", pool, &mut backing.format)?;
            if let Some(perms) = backing.permissions.as_mut() {
                perms.post_parse("/volume/backingStore/permissions")?;
                if perms.is_empty() {
                    backing.permissions = None;
                }
            }
            backing.timestamps = None;
        }

        let capacity = match &self.capacity {
            Some(c) => Some(scaled("/volume/capacity", c, i64::MAX as u64)?),
            None if options.capacity_optional => None,
            None => return Err(bad("/volume/capacity", "missing capacity element")),
        };
        self.capacity = capacity.map(|c| ScaledXml::bytes(c, "bytes"));
        let allocation = match &self.allocation {
            Some(a) => Some(scaled("/volume/allocation", a, i64::MAX as u64)?),
            None => capacity,
        };
        self.allocation = allocation.map(|a| ScaledXml::bytes(a, "bytes"));

        let mut target = self.target.take().unwrap_or_default();
        check_format("/volume/target/format/@type", pool, &mut target.format)?;
        if let Some(perms) = target.permissions.as_mut() {
            perms.post_parse("/volume/target/permissions")?;
            if perms.is_empty() {
                target.permissions = None;
            }
        }
        target.timestamps = None;
        if let Some(enc) = &target.encryption {
            if !matches!(
                enc.format.as_str(),
                "default" | "qcow" | "luks" | "luks2" | "luks-any"
            ) {
                return Err(bad(
                    "/volume/target/encryption/@format",
                    format!("unknown volume encryption format '{}'", enc.format),
                ));
            }
            for (i, secret) in enc.secret.iter().enumerate() {
                if secret.r#type != "passphrase" || secret.uuid.is_some() == secret.usage.is_some() {
                    return Err(bad(
                        format!("/volume/target/encryption/secret[{}]", i + 1),
                        "an encryption secret is <secret type='passphrase'> with one of uuid or usage",
                    ));
                }
            }
        }
        if let Some(compat) = &target.compat {
            let ok = compat
                .split_once('.')
                .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
            if !ok {
                return Err(bad(
                    "/volume/target/compat",
                    format!("forbidden characters in compat '{compat}': use a version such as 1.1"),
                ));
            }
        }
        if let Some(size) = &target.cluster_size {
            let bytes = scaled("/volume/target/clusterSize", size, u64::MAX)?;
            target.cluster_size = Some(ScaledXml::bytes(bytes, "B"));
        }
        if target.features.is_some() && target.compat.is_none() {
            target.compat = Some("1.1".into());
        }
        self.target = Some(target);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Result<VolDef, XmlError> {
        VolDef::from_xml(xml, PoolType::Dir, VolParseOptions::default())
    }

    #[test]
    fn sizes_scale_and_allocation_defaults_to_capacity() {
        let vol = parse("<volume><name>a</name><capacity unit='G'>5</capacity></volume>").expect("valid");
        assert_eq!(vol.capacity_bytes(), 5 << 30);
        assert_eq!(vol.allocation_bytes(), 5 << 30);
        assert_eq!(vol.format(), Some("raw"));
    }

    #[test]
    fn missing_capacity_is_refused_unless_optional() {
        let err = parse("<volume><name>a</name></volume>").expect_err("no capacity");
        assert_eq!(err.path, "/volume/capacity");
        let vol = VolDef::from_xml(
            "<volume><name>a</name></volume>",
            PoolType::Dir,
            VolParseOptions {
                capacity_optional: true,
            },
        )
        .expect("clone XML");
        assert!(!vol.has_capacity());
    }

    #[test]
    fn features_imply_compat_1_1() {
        let vol = parse(
            "<volume><name>a</name><capacity>1</capacity><target><format type='qcow2'/><features><lazy_refcounts/></features></target></volume>",
        )
        .expect("valid");
        assert_eq!(vol.target.as_ref().and_then(|t| t.compat.as_deref()), Some("1.1"));
    }

    #[test]
    fn unknown_format_is_refused() {
        let err = parse(
            "<volume><name>a</name><capacity>1</capacity><target><format type='zip'/></target></volume>",
        )
        .expect_err("bad format");
        assert_eq!(err.path, "/volume/target/format/@type");
    }

    #[test]
    fn bad_compat_is_refused() {
        let err = parse(
            "<volume><name>a</name><capacity>1</capacity><target><compat>x.1</compat></target></volume>",
        )
        .expect_err("bad compat");
        assert_eq!(err.path, "/volume/target/compat");
    }

    #[test]
    fn logical_volumes_have_no_format() {
        let vol = VolDef::from_xml(
            "<volume><name>a</name><capacity>1</capacity><target><format type='qcow2'/></target></volume>",
            PoolType::Logical,
            VolParseOptions::default(),
        )
        .expect("valid");
        assert_eq!(vol.format(), None);
    }

    #[test]
    fn cluster_size_is_bytes() {
        let vol = parse(
            "<volume><name>a</name><capacity>1</capacity><target><format type='qcow2'/><clusterSize unit='KiB'>64</clusterSize></target></volume>",
        )
        .expect("valid");
        assert_eq!(vol.cluster_size_bytes(), Some(65536));
    }
}
