//! `<disk type='volume'>`: the pool and volume a disk names, resolved through virtstoraged to
//! the file or block device QEMU opens and its image format.
//!
//! As libvirt does, the live XML keeps `type='volume'`; only the command line uses the path.
//! The format is the disk's own `<driver type>` when given, else the volume's
//! `<target><format>` (`iso` is raw to QEMU).

use rvirt::Connect;
use rvirt_conf::domain::DiskFormat;
use rvirt_conf::storage::vol::VolDef;
use rvirt_proto::v1::{ErrorCode, ErrorDomain, StorageVolType};
use tonic::Status;

use super::fail;
use crate::command::ResolvedDisk;

/// One volume disk to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDisk {
    /// `<target dev>`.
    pub target: String,
    /// `<source pool>`.
    pub pool: String,
    /// `<source volume>`.
    pub volume: String,
    /// The disk's `<driver type>`, if given.
    pub format: Option<DiskFormat>,
}

impl VolumeDisk {
    fn what(&self) -> String {
        format!(
            "disk '{}' (volume '{}' of pool '{}')",
            self.target, self.volume, self.pool
        )
    }
}

/// The image format QEMU opens a volume with, from the volume's `<target><format type>`.
pub fn disk_format(disk: &VolumeDisk, volume_format: Option<&str>) -> Result<DiskFormat, Status> {
    if let Some(format) = disk.format {
        return Ok(format);
    }
    match volume_format {
        None | Some("raw") | Some("iso") => Ok(DiskFormat::Raw),
        Some("qcow2") => Ok(DiskFormat::Qcow2),
        Some(other) => Err(fail(
            ErrorCode::ConfigUnsupported,
            ErrorDomain::Qemu,
            format!(
                "Unsupported configuration: {} has format '{other}'; only raw and qcow2 volumes can be used by a disk (or give <driver type>)",
                disk.what()
            ),
        )),
    }
}

/// The error for a call to virtstoraged that failed while resolving `disk`.
pub fn storage_error(disk: &VolumeDisk, e: &rvirt::Error) -> Status {
    let what = disk.what();
    match e.code {
        ErrorCode::NoStoragePool => fail(
            ErrorCode::NoStoragePool,
            ErrorDomain::Storage,
            format!(
                "Storage pool not found: no storage pool with matching name '{}', used by {what}: define and start it, or fix <source pool>",
                disk.pool
            ),
        ),
        ErrorCode::NoStorageVol => fail(
            ErrorCode::NoStorageVol,
            ErrorDomain::Storage,
            format!(
                "Storage volume not found: no storage vol with matching name '{}' in pool '{}', used by {what}: create it, or fix <source volume>",
                disk.volume, disk.pool
            ),
        ),
        ErrorCode::NoConnect => fail(
            ErrorCode::NoConnect,
            ErrorDomain::Storage,
            format!(
                "Cannot resolve {what}: virtstoraged is not reachable ({}): start virtstoraged",
                e.message
            ),
        ),
        code => fail(
            code,
            ErrorDomain::Storage,
            format!("Cannot resolve {what}: {}", e.message),
        ),
    }
}

/// The error for a volume whose pool is not running.
pub fn inactive_pool(disk: &VolumeDisk) -> Status {
    fail(
        ErrorCode::OperationInvalid,
        ErrorDomain::Storage,
        format!(
            "Requested operation is not valid: storage pool '{}' containing volume '{}' of disk '{}' is not active: start the pool first",
            disk.pool, disk.volume, disk.target
        ),
    )
}

/// Asks virtstoraged for the volume's path, kind and format.
pub async fn resolve(conn: &Connect, disk: &VolumeDisk) -> Result<ResolvedDisk, Status> {
    let pool = conn
        .lookup_storage_pool_by_name(&disk.pool)
        .await
        .map_err(|e| storage_error(disk, &e))?;
    if !pool.summary().active {
        return Err(inactive_pool(disk));
    }
    let vol = pool
        .lookup_volume_by_name(&disk.volume)
        .await
        .map_err(|e| storage_error(disk, &e))?;
    let block = match vol.summary().r#type() {
        StorageVolType::File => false,
        StorageVolType::Block => true,
        other => {
            return Err(fail(
                ErrorCode::ConfigUnsupported,
                ErrorDomain::Qemu,
                format!(
                    "Unsupported configuration: {} is a {} volume; only file and block volumes can back a disk",
                    disk.what(),
                    other
                        .as_str_name()
                        .trim_start_matches("STORAGE_VOL_TYPE_")
                        .to_lowercase()
                ),
            ));
        }
    };
    let mut path = vol.summary().path.clone();
    if path.is_empty() {
        path = vol.path().await.map_err(|e| storage_error(disk, &e))?;
    }
    let format = if disk.format.is_some() {
        disk_format(disk, None)?
    } else {
        let xml = vol.xml_desc().await.map_err(|e| storage_error(disk, &e))?;
        let def = rvirt_conf::xml::from_str_lenient::<VolDef>("volume", &xml)
            .map(|(def, _)| def)
            .map_err(|e| {
                fail(
                    ErrorCode::InternalError,
                    ErrorDomain::Storage,
                    format!(
                        "Cannot resolve {}: virtstoraged returned volume XML that does not parse: {e}",
                        disk.what()
                    ),
                )
            })?;
        disk_format(disk, def.format())?
    };
    Ok(ResolvedDisk {
        path: path.into(),
        block,
        format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rvirt_proto::error::from_status;

    fn disk(format: Option<DiskFormat>) -> VolumeDisk {
        VolumeDisk {
            target: "vda".into(),
            pool: "images".into(),
            volume: "boot.img".into(),
            format,
        }
    }

    #[test]
    fn format_comes_from_the_volume_unless_the_disk_gives_one() {
        assert_eq!(
            disk_format(&disk(None), Some("qcow2")).ok(),
            Some(DiskFormat::Qcow2)
        );
        assert_eq!(disk_format(&disk(None), Some("raw")).ok(), Some(DiskFormat::Raw));
        assert_eq!(disk_format(&disk(None), Some("iso")).ok(), Some(DiskFormat::Raw));
        assert_eq!(disk_format(&disk(None), None).ok(), Some(DiskFormat::Raw));
        assert_eq!(
            disk_format(&disk(Some(DiskFormat::Raw)), Some("qcow2")).ok(),
            Some(DiskFormat::Raw)
        );
    }

    #[test]
    fn unsupported_volume_format_names_the_disk() {
        let e = disk_format(&disk(None), Some("vmdk")).expect_err("vmdk refused");
        let detail = from_status(&e);
        assert_eq!(detail.code(), ErrorCode::ConfigUnsupported);
        assert!(detail.message.contains("disk 'vda'"), "{}", detail.message);
        assert!(detail.message.contains("'vmdk'"), "{}", detail.message);
    }

    #[test]
    fn missing_volume_error_names_disk_pool_and_volume() {
        let e = rvirt::Error::new(ErrorCode::NoStorageVol, ErrorDomain::Storage, "gone");
        let detail = from_status(&storage_error(&disk(None), &e));
        assert_eq!(detail.code(), ErrorCode::NoStorageVol);
        for part in ["'vda'", "'images'", "'boot.img'"] {
            assert!(detail.message.contains(part), "{part} in {}", detail.message);
        }
    }

    #[test]
    fn missing_pool_and_inactive_pool_keep_libvirt_codes() {
        let e = rvirt::Error::new(ErrorCode::NoStoragePool, ErrorDomain::Storage, "gone");
        assert_eq!(
            from_status(&storage_error(&disk(None), &e)).code(),
            ErrorCode::NoStoragePool
        );
        let detail = from_status(&inactive_pool(&disk(None)));
        assert_eq!(detail.code(), ErrorCode::OperationInvalid);
        assert!(detail.message.contains("'images'"), "{}", detail.message);
        assert!(detail.message.contains("not active"), "{}", detail.message);
    }
}
