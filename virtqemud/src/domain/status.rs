//! The status file of a running domain: what a restarted virtqemud needs to find and adopt its
//! QEMU again (pid, monitor socket, runtime directory, id, live XML, state and reason).
//!
//! One JSON file per running domain, `<state dir>/<name>.status`, written atomically at start
//! and at every state change, removed when the domain stops. [`StatusWriter`] does the writing
//! and removing, in order, on a thread of its own.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// The status file's format version.
pub const STATUS_VERSION: u32 = 1;

/// What a status file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusFile {
    /// [`STATUS_VERSION`].
    pub version: u32,
    /// The domain's name.
    pub name: String,
    /// Its UUID.
    pub uuid: String,
    /// Its runtime id.
    pub id: u32,
    /// QEMU's pid.
    pub pid: u32,
    /// QEMU's monitor socket.
    pub monitor: PathBuf,
    /// The domain's runtime directory.
    pub dir: PathBuf,
    /// QEMU's log file.
    pub log: PathBuf,
    /// The live definition (live XML).
    pub live_xml: String,
    /// The state (`DomainState` number).
    pub state: i32,
    /// The reason (the number within the state's reason enum).
    pub reason: i32,
    /// Whether the domain has no persistent definition.
    pub transient: bool,
    /// A guest shutdown was seen and the process is being stopped.
    #[serde(default)]
    pub shutdown_seen: bool,
    /// A reboot through a shutdown is pending (libvirt's fake reboot).
    #[serde(default)]
    pub fake_reboot: bool,
    /// When the domain started, seconds since the epoch.
    pub started: u64,
    /// Network ports to release when the domain stops.
    #[serde(default)]
    pub ports: Vec<super::resources::PortRecord>,
}

/// The status file path of domain `name` in `state_dir`.
pub fn path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("{name}.status"))
}

impl StatusFile {
    /// Reads a status file.
    pub fn read(path: &Path) -> Result<StatusFile, String> {
        let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let status: StatusFile =
            serde_json::from_slice(&data).map_err(|e| format!("cannot parse {}: {e}", path.display()))?;
        if status.version != STATUS_VERSION {
            return Err(format!(
                "{} has status version {}, this daemon reads {STATUS_VERSION}",
                path.display(),
                status.version
            ));
        }
        Ok(status)
    }
}

/// What to do to one status file.
enum Op {
    Write(Box<StatusFile>),
    Remove,
}

struct Job {
    path: PathBuf,
    op: Op,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// Does `job`, logs a failure (most callers do not wait to hear of it) and tells whoever waits.
fn run(job: Job) {
    let result = match &job.op {
        Op::Write(status) => serde_json::to_vec_pretty(status)
            .map_err(std::io::Error::other)
            .and_then(|data| rvirt_daemon::atomic::write_atomic(&job.path, &data, 0o600)),
        Op::Remove => rvirt_daemon::atomic::remove_durable(&job.path),
    };
    if let Err(e) = &result {
        tracing::error!(path = %job.path.display(), error = %e, "cannot update a status file");
    }
    let _ = job.done.send(result);
}

/// Writes and removes status files durably (each an fsync of the file and of its directory),
/// in the order asked, on a thread of its own: the daemon's worker never waits for the disk,
/// which on a busy host can take long. A caller that must not answer before the file is on
/// disk (a start, an adoption) awaits the returned [`Pending`]; one that only records a
/// change (an event from QEMU) lets it go. Ordering holds either way: a later write or the
/// removal of a stopped domain's file always lands after an earlier one.
#[derive(Debug)]
pub struct StatusWriter {
    state_dir: PathBuf,
    jobs: Option<std::sync::mpsc::Sender<Job>>,
}

/// A status write or removal on its way; [`Pending::wait`] for it to be on disk.
#[derive(Debug)]
#[must_use = "await it when the answer must wait for the disk; drop it otherwise"]
pub struct Pending(oneshot::Receiver<std::io::Result<()>>);

impl Pending {
    /// Waits until the file is written or removed, durably.
    pub async fn wait(self) -> std::io::Result<()> {
        self.0
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the status writer stopped")))
    }
}

impl StatusWriter {
    /// A writer for the status files of `state_dir`, with its thread (which ends when the
    /// writer is dropped, after the jobs already asked). If no thread can be started, it
    /// writes on the caller's thread instead.
    pub fn new(state_dir: PathBuf) -> StatusWriter {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("status-writer".into())
            .spawn(move || rx.into_iter().for_each(run));
        let jobs = match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the status writer thread; status files are written inline");
                None
            }
        };
        StatusWriter { state_dir, jobs }
    }

    /// Writes `status` as its domain's status file.
    pub fn write(&self, status: StatusFile) -> Pending {
        let path = path(&self.state_dir, &status.name);
        self.submit(path, Op::Write(Box::new(status)))
    }

    /// Removes domain `name`'s status file (a missing file is not an error).
    pub fn remove(&self, name: &str) -> Pending {
        self.submit(path(&self.state_dir, name), Op::Remove)
    }

    fn submit(&self, path: PathBuf, op: Op) -> Pending {
        let (done, rx) = oneshot::channel();
        let job = Job { path, op, done };
        let unsent = match &self.jobs {
            Some(jobs) => jobs.send(job).err().map(|std::sync::mpsc::SendError(job)| job),
            None => Some(job),
        };
        // No writer thread: the caller's thread does it.
        if let Some(job) = unsent {
            run(job);
        }
        Pending(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, state: i32) -> StatusFile {
        StatusFile {
            version: STATUS_VERSION,
            name: name.into(),
            uuid: "c7a5fdbd-edaf-9455-926a-d65c16db1809".into(),
            id: 1,
            pid: 42,
            monitor: "/run/mon".into(),
            dir: "/run/dir".into(),
            log: "/var/log/x".into(),
            live_xml: "<domain/>".into(),
            state,
            reason: 0,
            transient: false,
            shutdown_seen: false,
            fake_reboot: false,
            started: 0,
            ports: Vec::new(),
        }
    }

    #[tokio::test]
    async fn writes_and_removals_land_in_the_order_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let writer = StatusWriter::new(dir.path().to_owned());
        // Many writes not waited for, then one waited for: the file holds the last.
        for state in 1..=50 {
            drop(writer.write(status("vm", state)));
        }
        writer.write(status("vm", 51)).wait().await.expect("write");
        let read = StatusFile::read(&path(dir.path(), "vm")).expect("read");
        assert_eq!(read.state, 51);
        // A removal after writes not waited for leaves no file.
        drop(writer.write(status("vm", 52)));
        writer.remove("vm").wait().await.expect("remove");
        assert!(!path(dir.path(), "vm").exists());
        writer
            .remove("vm")
            .wait()
            .await
            .expect("removing a missing file is fine");
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").flatten().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_to_whoever_waits() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The state directory's place holds a plain file.
        let not_a_dir = dir.path().join("state");
        std::fs::write(&not_a_dir, b"").expect("file");
        let writer = StatusWriter::new(not_a_dir);
        writer
            .write(status("vm", 1))
            .wait()
            .await
            .expect_err("the directory cannot be made");
    }
}
