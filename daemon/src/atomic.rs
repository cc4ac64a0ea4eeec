//! Crash-safe file writes: write a temporary file beside the target, fsync it, rename it over
//! the target, fsync the directory. A crash at any instant leaves the old file or the new one,
//! never a torn one.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Writes `data` to `path` atomically with permissions `mode` (e.g. `0o600`), creating the
/// parent directory if needed.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    replace(path, data, mode)?;
    sync_dir(dir)
}

/// The first three steps of [`write_atomic`]: a temporary file beside `path`, written and
/// fsynced, renamed over `path`. The directory is not synced: a caller replacing many files
/// syncs it once.
pub(crate) fn replace(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let tmp = temporary_path(dir, &name.to_string_lossy());
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A new temporary file name in `dir` for file `name`: hidden, and unique per process and per
/// call, so concurrent writers of one path never share a temporary. Every temporary of this
/// crate is named so (`.NAME.tmp-PID-N`), which is how a recovery finds those a crash left.
pub(crate) fn temporary_path(dir: &Path, name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pid = PID.get_or_init(std::process::id);
    dir.join(format!(".{name}.tmp-{pid}-{n}"))
}

/// Makes `dir`'s entries (creations, renames, removals) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Removes `path`; a missing file is not an error. Nothing is synced.
pub(crate) fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes `path` and fsyncs its directory; a missing file is not an error.
pub fn remove_durable(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// [`write_atomic`] for async code: the write and its fsyncs run on a blocking thread, so the
/// daemon's worker thread serves other calls meanwhile. The caller serializes writers of one
/// path, as with [`write_atomic`].
pub async fn write_atomic_async(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let (path, data) = (path.to_owned(), data.to_vec());
    off_worker(move || write_atomic(&path, &data, mode)).await
}

/// [`remove_durable`] for async code, on a blocking thread.
pub async fn remove_durable_async(path: &Path) -> std::io::Result<()> {
    let path = path.to_owned();
    off_worker(move || remove_durable(&path)).await
}

/// Runs file work that waits on the disk (`work`) on a blocking thread, so the daemon's worker
/// thread serves other calls meanwhile; a thread that could not finish it is an I/O error too.
pub async fn off_worker(work: impl FnOnce() -> std::io::Result<()> + Send + 'static) -> std::io::Result<()> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(std::io::Error::other(format!(
            "the disk write did not finish: {e}"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_writers_of_one_path_do_not_collide() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("obj.xml");
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(path, &[i; 64], 0o600).expect("write");
                    }
                });
            }
        });
        let data = std::fs::read(&path).expect("read");
        assert_eq!(data.len(), 64);
        assert!(data.iter().all(|b| *b == data[0]), "a torn file");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "temporaries left behind"
        );
    }

    #[test]
    fn replaces_content_with_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/obj.xml");
        write_atomic(&path, b"old", 0o600).expect("first write");
        write_atomic(&path, b"new", 0o600).expect("second write");
        assert_eq!(std::fs::read(&path).expect("read"), b"new");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("ls")
            .collect();
        assert_eq!(names.len(), 1, "a temporary file was left behind");
        remove_durable(&path).expect("remove");
        remove_durable(&path).expect("removing again is fine");
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn async_writes_and_removals_reach_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("net.xml");
        write_atomic_async(&path, b"<network/>", 0o600)
            .await
            .expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"<network/>");
        remove_durable_async(&path).await.expect("remove");
        assert!(!path.exists());
        remove_durable_async(&path)
            .await
            .expect("a missing file is not an error");
    }
}
