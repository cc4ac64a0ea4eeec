//! File volumes (dir and fs pools): probing a file into a volume definition, creating with
//! `qemu-img` so that a failure leaves nothing behind, cloning, resizing, and recreating an image after a wipe.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use rvirt_conf::storage::Empty;
use rvirt_conf::storage::{
    BackingStore, Encryption, Permissions, ScaledXml, Timestamps, TypeAttr, VolDef, VolFeatures, VolTarget,
    VolType,
};
use rvirt_proto::v1::ErrorCode;

use crate::command::CommandRunner;
use crate::error::{Result, StorageError};
use crate::qemu_img::{self, ImageOptions};

/// libvirt's default mode for new volumes.
pub const DEFAULT_VOL_MODE: u32 = 0o600;

/// Removes a file when dropped unless disarmed: a create that fails or is cancelled leaves
/// nothing behind.
#[derive(Debug)]
pub struct RemoveOnDrop {
    path: Option<PathBuf>,
}

impl RemoveOnDrop {
    /// Guards `path`.
    pub fn new(path: &Path) -> Self {
        RemoveOnDrop {
            path: Some(path.to_owned()),
        }
    }

    /// Keeps the file.
    pub fn disarm(mut self) {
        self.path = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.path.take()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a failed volume");
        }
    }
}

/// Creates `path` exclusively with the volume's mode and owner: the volume's name is reserved
/// on disk before any tool writes to it.
pub fn create_exclusive(path: &Path, perms: &Permissions) -> Result<RemoveOnDrop> {
    let mode = perms.mode_bits().unwrap_or(DEFAULT_VOL_MODE);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                StorageError::new(
                    ErrorCode::StorageVolExist,
                    format!(
                        "A file named {} already exists in the pool: refresh the pool to see it, or choose another name",
                        path.display()
                    ),
                )
            } else {
                StorageError::io(format!("Cannot create volume file {}", path.display()), &e)
            }
        })?;
    let guard = RemoveOnDrop::new(path);
    set_mode_owner(&file, path, mode, perms)?;
    Ok(guard)
}

fn set_mode_owner(file: &File, path: &Path, mode: u32, perms: &Permissions) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| StorageError::io(format!("Cannot set the mode of {}", path.display()), &e))?;
    if perms.uid().is_some() || perms.gid().is_some() {
        std::os::unix::fs::fchown(file, perms.uid(), perms.gid())
            .map_err(|e| StorageError::io(format!("Cannot set the owner of {}", path.display()), &e))?;
    }
    Ok(())
}

/// Creates a new file volume at `path`, or a copy of `input` (path and format) when given.
/// On failure or cancellation the file is removed.
pub async fn create(
    runner: &dyn CommandRunner,
    path: &Path,
    vol: &VolDef,
    image: &ImageOptions,
    input: Option<(&Path, &str)>,
) -> Result<()> {
    let args = match input {
        None => qemu_img::create_args(path, image),
        Some((input, format)) => qemu_img::convert_args(input, format, path, image),
    };
    create_with(runner, path, vol, image, args, input.is_some()).await
}

/// Creates the plain volume `vol` at `path` as a decrypted copy of the encrypted image
/// `input` (of `format`, opened with `key`).
pub async fn create_decrypted(
    runner: &dyn CommandRunner,
    path: &Path,
    vol: &VolDef,
    image: &ImageOptions,
    input: &Path,
    format: &str,
    key: &qemu_img::LuksKey,
) -> Result<()> {
    let args = qemu_img::convert_decrypting_args(input, format, key, path, image);
    create_with(runner, path, vol, image, args, true).await
}

async fn create_with(
    runner: &dyn CommandRunner,
    path: &Path,
    vol: &VolDef,
    image: &ImageOptions,
    args: std::result::Result<Vec<std::ffi::OsString>, qemu_img::QemuImgError>,
    copied: bool,
) -> Result<()> {
    let args = args.map_err(|e| {
        StorageError::new(
            ErrorCode::ConfigUnsupported,
            format!("Cannot create volume '{}': {e}", vol.name),
        )
    })?;
    let guard = create_exclusive(path, &vol.permissions())?;
    runner.run("qemu-img", &args).await?;
    if copied && image.capacity > 0 {
        let info = info(runner, path, Some(image.qemu_format())).await?;
        if image.capacity > info.virtual_size {
            runner
                .run(
                    "qemu-img",
                    &qemu_img::resize_args(path, image.qemu_format(), image.capacity, false),
                )
                .await?;
        }
    }
    // libvirt allocates the first `allocation` bytes of a raw volume.
    if !copied
        && image.format == "raw"
        && image.preallocation.is_none()
        && image.allocation > 0
        && image.encryption.is_none()
    {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| StorageError::io(format!("Cannot open {}", path.display()), &e))?;
        let len = image.allocation.min(image.capacity);
        if len > 0 {
            nix::fcntl::fallocate(
                &file,
                nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                0,
                len as i64,
            )
            .map_err(|e| {
                StorageError::io(
                    format!("Cannot allocate {len} bytes in {}", path.display()),
                    &e.into(),
                )
            })?;
        }
    }
    guard.disarm();
    Ok(())
}

/// `qemu-img info` of one image (the head of its chain).
pub async fn info(
    runner: &dyn CommandRunner,
    path: &Path,
    format: Option<&str>,
) -> Result<qemu_img::ImageInfo> {
    let out = runner.run("qemu-img", &qemu_img::info_args(path, format)).await?;
    let mut chain = qemu_img::parse_info(&out).map_err(|e| StorageError::internal(e.to_string()))?;
    if chain.is_empty() {
        return Err(StorageError::internal("qemu-img info reported nothing"));
    }
    Ok(chain.remove(0))
}

fn is_iso(path: &Path) -> bool {
    use std::io::{Read as _, Seek as _};
    let mut magic = [0u8; 5];
    File::open(path)
        .and_then(|mut f| {
            f.seek(std::io::SeekFrom::Start(32769))?;
            f.read_exact(&mut magic)
        })
        .is_ok()
        && &magic == b"CD001"
}

fn timestamp(secs: i64, nsecs: i64) -> String {
    if nsecs == 0 {
        secs.to_string()
    } else {
        format!("{secs}.{nsecs:09}")
    }
}

/// Reads the volume `name` at `path` as it is on disk; `known_format` (the format rvirt
/// created it with) skips format probing. `None` when the entry is not a regular file (or
/// vanished).
pub async fn probe(
    runner: &dyn CommandRunner,
    path: &Path,
    name: &str,
    known_format: Option<&str>,
) -> Result<Option<VolDef>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io(format!("Cannot read {}", path.display()), &e)),
    };
    if !meta.is_file() {
        return Ok(None);
    }
    let image = match info(runner, path, known_format).await {
        Ok(image) => Some(image),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the image; reporting it as raw");
            None
        }
    };
    let mut format = image
        .as_ref()
        .map_or_else(|| "raw".to_owned(), |i| i.format.clone());
    if known_format.is_none() && format == "raw" && is_iso(path) {
        format = "iso".into();
    }
    if let Some(known) = known_format {
        format = known.to_owned();
    }
    // A LUKS image is a raw volume with `<encryption format='luks'>`, as libvirt reports it.
    let mut encryption = None;
    if format == "luks" {
        format = "raw".into();
        encryption = Some("luks");
    } else if format == "qcow2" && image.as_ref().is_some_and(|i| i.encrypted) {
        encryption = Some(match image.as_ref().and_then(|i| i.encrypt_format.as_deref()) {
            Some("aes") => "qcow",
            _ => "luks",
        });
    }
    let capacity = image.as_ref().map_or(meta.len(), |i| i.virtual_size);
    let mut target = VolTarget {
        path: Some(path.display().to_string()),
        format: Some(TypeAttr {
            r#type: format.clone(),
        }),
        permissions: Some(Permissions {
            mode: Some(format!("0{:o}", meta.mode() & 0o777)),
            owner: Some(meta.uid().to_string()),
            group: Some(meta.gid().to_string()),
            label: None,
        }),
        timestamps: Some(Timestamps {
            atime: Some(timestamp(meta.atime(), meta.atime_nsec())),
            mtime: Some(timestamp(meta.mtime(), meta.mtime_nsec())),
            ctime: Some(timestamp(meta.ctime(), meta.ctime_nsec())),
            btime: None,
        }),
        encryption: encryption.map(|format| Encryption {
            format: format.to_owned(),
            engine: None,
            secret: Vec::new(),
            cipher: None,
            ivgen: None,
        }),
        ..VolTarget::default()
    };
    let mut backing_store = None;
    if let Some(image) = &image {
        if format == "qcow2" {
            target.compat = image.compat.clone();
            target.cluster_size = image.cluster_size.map(|c| ScaledXml::bytes(c, "B"));
            if image.compat.as_deref() != Some("0.10") {
                target.features = Some(VolFeatures {
                    lazy_refcounts: (image.lazy_refcounts == Some(true)).then(Empty::default),
                    extended_l2: (image.extended_l2 == Some(true)).then(Empty::default),
                });
            }
        }
        if let Some(backing) = image
            .full_backing_filename
            .clone()
            .or_else(|| image.backing_filename.clone())
        {
            backing_store = Some(BackingStore {
                path: backing,
                format: Some(TypeAttr {
                    r#type: image.backing_format.clone().unwrap_or_else(|| "raw".to_owned()),
                }),
                permissions: None,
                timestamps: None,
            });
        }
    }
    Ok(Some(VolDef {
        vol_type: Some(VolType::File),
        name: name.to_owned(),
        key: Some(path.display().to_string()),
        source: None,
        capacity: Some(ScaledXml::bytes(capacity, "bytes")),
        allocation: Some(ScaledXml::bytes(meta.blocks() * 512, "bytes")),
        physical: Some(ScaledXml::bytes(meta.len(), "bytes")),
        target: Some(target),
        backing_store,
    }))
}

/// Changes a volume's capacity: raw files are truncated (and allocated with `allocate`),
/// other formats go through `qemu-img resize`.
pub async fn resize(
    runner: &dyn CommandRunner,
    path: &Path,
    format: &str,
    current: u64,
    capacity: u64,
    allocate: bool,
) -> Result<()> {
    if format == "raw" || format == "iso" {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| StorageError::io(format!("Cannot open {}", path.display()), &e))?;
        if allocate && capacity > current {
            nix::fcntl::fallocate(
                &file,
                nix::fcntl::FallocateFlags::empty(),
                current as i64,
                (capacity - current) as i64,
            )
            .map_err(|e| {
                StorageError::io(format!("Cannot allocate space in {}", path.display()), &e.into())
            })?;
        }
        file.set_len(capacity)
            .map_err(|e| StorageError::io(format!("Cannot resize {}", path.display()), &e))?;
        file.sync_all()
            .map_err(|e| StorageError::io(format!("Cannot sync {}", path.display()), &e))?;
        Ok(())
    } else {
        if allocate {
            return Err(StorageError::unsupported(
                "Preallocation on resize is only supported for raw volumes: resize without ALLOCATE",
            ));
        }
        runner
            .run(
                "qemu-img",
                &qemu_img::resize_args(path, format, capacity, capacity < current),
            )
            .await
            .map(|_| ())
    }
}

/// Recreates an empty image of `format` and `capacity` over an existing file (after a wipe of
/// a non-raw or encrypted volume, so that it stays a valid image of its format; `key` re-encrypts it).
pub async fn recreate(
    runner: &dyn CommandRunner,
    path: &Path,
    vol: &VolDef,
    key: Option<qemu_img::LuksKey>,
) -> Result<()> {
    let mut image = ImageOptions::from_vol(vol, false, key);
    image.preallocation = None;
    let args: Vec<OsString> = qemu_img::create_args(path, &image)
        .map_err(|e| StorageError::failed(format!("Cannot recreate volume '{}': {e}", vol.name)))?;
    runner.run("qemu-img", &args).await.map(|_| ())
}
