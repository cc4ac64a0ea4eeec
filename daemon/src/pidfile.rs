//! The pid file that is also the daemon's lock: a second instance on the same paths finds it
//! locked and refuses to start, naming the running one.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another instance holds it.
    #[error(
        "{daemon} is already running{pid} with the same paths (lock {path}): stop it first, or give this one another RVIRT_ROOT"
    )]
    Running {
        /// The daemon's name.
        daemon: String,
        /// ` (pid N)` when the file names it.
        pid: String,
        /// The pid file.
        path: String,
    },
    /// The file could not be created or written.
    #[error("cannot write pid file {path}")]
    Io {
        /// The pid file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A locked pid file; the lock lasts as long as this value, and dropping it removes the file.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    _lock: Flock<File>,
}

impl PidFile {
    /// Creates and locks `path`, writing this process's pid into it.
    pub fn acquire(path: &Path, daemon: &str) -> Result<PidFile, LockError> {
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let pid = text
                    .trim()
                    .parse::<u32>()
                    .map(|p| format!(" (pid {p})"))
                    .unwrap_or_default();
                return Err(LockError::Running {
                    daemon: daemon.to_owned(),
                    pid,
                    path: path.display().to_string(),
                });
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        writeln!(lock, "{}", std::process::id()).map_err(io)?;
        lock.sync_all().map_err(io)?;
        Ok(PidFile {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/virttestd.pid");
        let first = PidFile::acquire(&path, "virttestd").expect("first");
        let err = PidFile::acquire(&path, "virttestd").expect_err("second");
        let text = err.to_string();
        assert!(text.contains("already running"), "{text}");
        assert!(text.contains(&format!("pid {}", std::process::id())), "{text}");
        drop(first);
        assert!(!path.exists());
        PidFile::acquire(&path, "virttestd").expect("free again");
    }
}
