//! Pool backends: what building, starting, stopping and deleting a pool means for each type
//! rvirt runs, and how big it is.
//!
//! - `dir`: a directory; build makes it (mode and owner from the XML), start checks it is there;
//! - `fs`: a block device (or loop device) with a file system mounted on the target: build
//!   makes the directory and, with `OVERWRITE`/`NO_OVERWRITE`, the file system (`mkfs`);
//!   start mounts with libvirt's options (`nodev,nosuid,noexec`); stop unmounts;
//! - `logical`: an LVM volume group: build runs `pvcreate` and `vgcreate`, start and stop
//!   (de)activate it with `vgchange`, delete removes it.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use rvirt_conf::storage::{PoolDef, PoolType};
use rvirt_proto::v1::ErrorCode;

use crate::command::CommandRunner;
use crate::error::{Result, StorageError};

/// libvirt's default mode for a pool directory it creates.
pub const DEFAULT_POOL_MODE: u32 = 0o711;

/// The pool types this daemon can run.
pub const SUPPORTED: [PoolType; 3] = [PoolType::Dir, PoolType::Fs, PoolType::Logical];

/// Refuses pool types rvirt does not run.
pub fn check_supported(kind: PoolType) -> Result<()> {
    if SUPPORTED.contains(&kind) {
        Ok(())
    } else {
        Err(StorageError::unsupported(format!(
            "Storage pool type '{kind}' is not supported by rvirt: use a dir, fs or logical pool"
        )))
    }
}

/// How to treat what is already on the device when building.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// Neither flag: make the directory only (fs), or the volume group.
    #[default]
    Default,
    /// Fail if a file system or volume group is there.
    No,
    /// Format whatever is there.
    Yes,
}

fn target(def: &PoolDef) -> Result<&Path> {
    def.target_path()
        .map(Path::new)
        .ok_or_else(|| StorageError::internal(format!("Pool '{}' has no target path", def.name())))
}

fn mkdir_target(def: &PoolDef) -> Result<()> {
    let path = target(def)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| StorageError::io(format!("Cannot create {}", parent.display()), &e))?;
    }
    let existed = path.is_dir();
    if !existed {
        std::fs::create_dir(path)
            .map_err(|e| StorageError::io(format!("Cannot create {}", path.display()), &e))?;
    }
    let perms = def.target_permissions();
    let mode = perms.mode_bits().or((!existed).then_some(DEFAULT_POOL_MODE));
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| StorageError::io(format!("Cannot set the mode of {}", path.display()), &e))?;
    }
    if perms.uid().is_some() || perms.gid().is_some() {
        std::os::unix::fs::chown(path, perms.uid(), perms.gid())
            .map_err(|e| StorageError::io(format!("Cannot set the owner of {}", path.display()), &e))?;
    }
    Ok(())
}

/// The file system `blkid` finds on `device`, if any.
async fn probe_fs(runner: &dyn CommandRunner, device: &str) -> Option<String> {
    let args: Vec<OsString> = vec![
        "-o".into(),
        "value".into(),
        "-s".into(),
        "TYPE".into(),
        device.into(),
    ];
    runner
        .run("blkid", &args)
        .await
        .ok()
        .map(|out| String::from_utf8_lossy(&out).trim().to_owned())
        .filter(|t| !t.is_empty())
}

fn first_device(def: &PoolDef) -> Result<String> {
    def.source_devices()
        .first()
        .map(|d| (*d).to_owned())
        .ok_or_else(|| StorageError::invalid_arg(format!("Pool '{}' has no source device", def.name())))
}

/// Builds the pool's storage.
pub async fn build(runner: &dyn CommandRunner, def: &PoolDef, overwrite: Overwrite) -> Result<()> {
    match def.pool_type {
        PoolType::Dir => mkdir_target(def),
        PoolType::Fs => {
            mkdir_target(def)?;
            if overwrite == Overwrite::Default {
                return Ok(());
            }
            let device = first_device(def)?;
            let format = def.source_format().unwrap_or("auto");
            if format == "auto" {
                return Err(StorageError::new(
                    ErrorCode::ConfigUnsupported,
                    "Cannot format a file system of type 'auto': set <format type='ext4'/> (or another type) in <source>",
                ));
            }
            if overwrite == Overwrite::No
                && let Some(found) = probe_fs(runner, &device).await
            {
                return Err(StorageError::new(
                    ErrorCode::StoragePoolBuilt,
                    format!(
                        "Device '{device}' already holds a '{found}' file system: build with OVERWRITE to format it anyway"
                    ),
                ));
            }
            let mut args: Vec<OsString> = vec!["-t".into(), format.into()];
            if format.starts_with("ext") {
                args.push("-F".into());
            } else if format == "xfs" {
                args.push("-f".into());
            }
            args.push(device.into());
            runner.run("mkfs", &args).await.map(|_| ())
        }
        PoolType::Logical => {
            let vg = def.source_name().unwrap_or(def.name()).to_owned();
            let devices: Vec<String> = def.source_devices().iter().map(|d| (*d).to_owned()).collect();
            if devices.is_empty() {
                return Err(StorageError::invalid_arg(format!(
                    "Pool '{}' has no source device to build a volume group on: add <device path=.../> to <source>",
                    def.name()
                )));
            }
            for device in &devices {
                if overwrite != Overwrite::Yes
                    && let Some(found) = probe_fs(runner, device).await
                {
                    return Err(StorageError::new(
                        ErrorCode::StoragePoolBuilt,
                        format!(
                            "Device '{device}' already holds '{found}': build with OVERWRITE to use it anyway"
                        ),
                    ));
                }
                let mut args: Vec<OsString> = Vec::new();
                if overwrite == Overwrite::Yes {
                    args.push("-ff".into());
                    args.push("-y".into());
                }
                args.push(device.into());
                runner.run("pvcreate", &args).await?;
            }
            let mut args: Vec<OsString> = vec![vg.into()];
            args.extend(devices.into_iter().map(OsString::from));
            runner.run("vgcreate", &args).await.map(|_| ())
        }
        other => check_supported(other),
    }
}

/// Whether `path` is a mount point, from `/proc/self/mounts`.
pub fn mounted_at(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = path.to_string_lossy();
    mounts.lines().any(|line| {
        line.split_whitespace()
            .nth(1)
            .is_some_and(|m| m.replace("\\040", " ") == want)
    })
}

/// Starts the pool: checks (dir), mounts (fs) or activates (logical).
pub async fn start(runner: &dyn CommandRunner, def: &PoolDef) -> Result<()> {
    match def.pool_type {
        PoolType::Dir => {
            let path = target(def)?;
            if !path.is_dir() {
                return Err(StorageError::op_invalid(format!(
                    "Cannot start pool '{}': directory {} does not exist: build the pool first ('rvirsh pool-build {}')",
                    def.name(),
                    path.display(),
                    def.name()
                )));
            }
            Ok(())
        }
        PoolType::Fs => {
            let path = target(def)?;
            if !path.is_dir() {
                return Err(StorageError::op_invalid(format!(
                    "Cannot start pool '{}': mount point {} does not exist: build the pool first",
                    def.name(),
                    path.display()
                )));
            }
            if mounted_at(path) {
                return Ok(());
            }
            let device = first_device(def)?;
            let mut args: Vec<OsString> = vec!["-o".into(), "nodev,nosuid,noexec".into()];
            if let Some(format) = def.source_format().filter(|f| *f != "auto") {
                args.push("-t".into());
                args.push(format.into());
            }
            args.push(device.into());
            args.push(path.into());
            runner.run("mount", &args).await.map(|_| ())
        }
        PoolType::Logical => {
            let vg = def.source_name().unwrap_or(def.name());
            runner
                .run("vgchange", &["-aly".into(), vg.into()])
                .await
                .map(|_| ())
        }
        other => check_supported(other),
    }
}

/// Stops the pool: unmounts (fs) or deactivates (logical).
pub async fn stop(runner: &dyn CommandRunner, def: &PoolDef) -> Result<()> {
    match def.pool_type {
        PoolType::Dir => Ok(()),
        PoolType::Fs => {
            let path = target(def)?;
            if !mounted_at(path) {
                return Ok(());
            }
            runner.run("umount", &[path.into()]).await.map(|_| ())
        }
        PoolType::Logical => {
            let vg = def.source_name().unwrap_or(def.name());
            runner
                .run("vgchange", &["-aln".into(), vg.into()])
                .await
                .map(|_| ())
        }
        other => check_supported(other),
    }
}

/// Whether a pool recorded as active is still active on the host (after a daemon restart).
pub async fn is_active(runner: &dyn CommandRunner, def: &PoolDef) -> bool {
    match def.pool_type {
        PoolType::Dir => def.target_path().is_some_and(|p| Path::new(p).is_dir()),
        PoolType::Fs => def.target_path().is_some_and(|p| mounted_at(Path::new(p))),
        PoolType::Logical => {
            let vg = def.source_name().unwrap_or(def.name());
            runner.run("vgs", &[vg.into()]).await.is_ok()
        }
        _ => false,
    }
}

/// Deletes the pool's storage (the pool is inactive).
pub async fn delete(runner: &dyn CommandRunner, def: &PoolDef) -> Result<()> {
    match def.pool_type {
        PoolType::Dir | PoolType::Fs => {
            let path = target(def)?;
            std::fs::remove_dir(path).map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOTEMPTY) {
                    StorageError::op_invalid(format!(
                        "Cannot delete pool '{}': {} is not empty: delete its volumes first",
                        def.name(),
                        path.display()
                    ))
                } else {
                    StorageError::io(format!("Cannot remove {}", path.display()), &e)
                }
            })
        }
        PoolType::Logical => {
            let vg = def.source_name().unwrap_or(def.name());
            runner.run("vgremove", &["-f".into(), vg.into()]).await?;
            for device in def.source_devices() {
                runner.run("pvremove", &[device.into()]).await?;
            }
            Ok(())
        }
        other => check_supported(other),
    }
}

/// Capacity, allocation and available bytes of the file system at `path` (statvfs).
pub fn fs_sizes(path: &Path) -> Result<(u64, u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| StorageError::io(format!("Cannot read the size of {}", path.display()), &e.into()))?;
    let frsize = st.fragment_size();
    let capacity = st.blocks() * frsize;
    let free = st.blocks_free() * frsize;
    let available = st.blocks_available() * frsize;
    Ok((capacity, capacity.saturating_sub(free), available))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::RecordingRunner;

    fn calls(runner: &RecordingRunner) -> Vec<String> {
        runner.calls.lock().expect("calls").clone()
    }

    #[tokio::test]
    async fn fs_pool_mounts_with_libvirt_options() {
        let dir = tempfile::tempdir().expect("tempdir");
        let def = PoolDef::from_xml(&format!(
            "<pool type='fs'><name>f</name><source><device path='/dev/sdz6'/><format type='ext3'/></source>\
             <target><path>{}</path></target></pool>",
            dir.path().display()
        ))
        .expect("pool");
        let runner = RecordingRunner::default();
        start(&runner, &def).await.expect("start");
        assert_eq!(
            calls(&runner),
            [format!(
                "mount -o nodev,nosuid,noexec -t ext3 /dev/sdz6 {}",
                dir.path().display()
            )]
        );
    }

    #[tokio::test]
    async fn fs_build_without_overwrite_flags_does_not_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let def = PoolDef::from_xml(&format!(
            "<pool type='fs'><name>f</name><source><device path='/dev/sdz6'/><format type='ext4'/></source>\
             <target><path>{}/m</path></target></pool>",
            dir.path().display()
        ))
        .expect("pool");
        let runner = RecordingRunner::default();
        build(&runner, &def, Overwrite::Default).await.expect("build");
        assert!(calls(&runner).is_empty());
        assert!(dir.path().join("m").is_dir());
        build(&runner, &def, Overwrite::Yes).await.expect("build");
        assert_eq!(calls(&runner), ["mkfs -t ext4 -F /dev/sdz6"]);
    }

    #[tokio::test]
    async fn logical_build_creates_physical_volumes_then_the_group() {
        let def = PoolDef::from_xml(
            "<pool type='logical'><name>vg9</name><source><device path='/dev/sdy'/><device path='/dev/sdx'/></source></pool>",
        )
        .expect("pool");
        let runner = RecordingRunner::default();
        build(&runner, &def, Overwrite::Yes).await.expect("build");
        assert_eq!(
            calls(&runner),
            [
                "pvcreate -ff -y /dev/sdy",
                "pvcreate -ff -y /dev/sdx",
                "vgcreate vg9 /dev/sdy /dev/sdx"
            ]
        );
    }

    #[tokio::test]
    async fn logical_build_without_overwrite_refuses_a_used_device() {
        let def = PoolDef::from_xml(
            "<pool type='logical'><name>vg9</name><source><device path='/dev/sdy'/></source></pool>",
        )
        .expect("pool");
        let runner = RecordingRunner::default();
        runner
            .outputs
            .lock()
            .expect("outputs")
            .push(("blkid".into(), Ok(b"ext4\n".to_vec())));
        let err = build(&runner, &def, Overwrite::No)
            .await
            .expect_err("used device");
        assert_eq!(err.code, ErrorCode::StoragePoolBuilt);
        assert!(!calls(&runner).iter().any(|c| c.starts_with("pvcreate")));
    }

    #[test]
    fn other_types_are_refused_naming_the_type() {
        let err = check_supported(PoolType::Rbd).expect_err("rbd");
        assert_eq!(err.code, ErrorCode::OperationUnsupported);
        assert!(err.message.contains("'rbd'"));
    }
}
