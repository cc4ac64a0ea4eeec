//! Starting QEMU with its monitor on a socket this process bound first.
//!
//! rvirt binds and listens on the monitor socket itself, hands the listening descriptor to QEMU
//! (`-chardev socket,id=qmp,fd=N,server=on,wait=off -mon chardev=qmp,mode=control`, as libvirt
//! does), then closes its own copy. Connecting is then deterministic, with no sleeping and no
//! polling for a socket file to appear:
//!
//! - the socket exists and listens before QEMU even starts, so `connect` succeeds at once (the
//!   kernel queues the connection until QEMU accepts it) and the greeting arrives as soon as
//!   QEMU is ready;
//! - QEMU holds the only listening descriptor, so if it exits before accepting, the kernel
//!   resets the queued connection and the client fails at once (or `connect` is refused)
//!   instead of waiting for a greeting that will never come.
//!
//! The socket has a path, so a restarted daemon can reconnect to a QEMU that outlived it.

use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use super::{QmpClient, QmpError, QmpEvents, QmpOptions};

/// The chardev id rvirt gives QEMU's monitor.
pub const MONITOR_CHARDEV_ID: &str = "charmonitor";

/// A listening monitor socket, bound before QEMU starts.
#[derive(Debug)]
pub struct QmpSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl QmpSocket {
    /// Binds and listens at `path`, replacing a stale socket file left there.
    pub fn bind(path: impl Into<PathBuf>) -> std::io::Result<QmpSocket> {
        let path = path.into();
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(&path)?,
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // std creates sockets with close-on-exec set: no other child inherits this one.
        let listener = UnixListener::bind(&path)?;
        Ok(QmpSocket {
            path,
            listener: Some(listener),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening descriptor's number (for `-chardev socket,fd=N` built elsewhere, e.g. by
    /// `QemuCommandBuilder`), until [`QmpSocket::release`]. It is close-on-exec: the caller
    /// makes the child inherit it.
    pub fn listener_fd(&self) -> Option<std::os::fd::RawFd> {
        self.listener.as_ref().map(|l| l.as_raw_fd())
    }

    /// Makes `command` serve QMP on this socket: adds the `-chardev`/`-mon` arguments and lets
    /// the child inherit the listening descriptor (under the same number). Call
    /// [`QmpSocket::release`] once the child is spawned.
    pub fn pass_to(&self, command: &mut std::process::Command) -> std::io::Result<()> {
        let Some(listener) = &self.listener else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the monitor socket was already handed to a QEMU",
            ));
        };
        let fd = listener.as_raw_fd();
        command
            .arg("-chardev")
            .arg(format!(
                "socket,id={MONITOR_CHARDEV_ID},fd={fd},server=on,wait=off"
            ))
            .arg("-mon")
            .arg(format!("chardev={MONITOR_CHARDEV_ID},mode=control"));
        // SAFETY: the closure runs between fork and exec and only calls fcntl, which is
        // async-signal-safe, on a descriptor this process owns (kept open by `self`).
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Closes this process's copy of the listening socket, so that it lives only as long as the
    /// QEMU that inherited it. Call right after spawning QEMU.
    pub fn release(&mut self) {
        self.listener = None;
    }

    /// Connects to QEMU's monitor and negotiates. After [`QmpSocket::release`], fails at once
    /// when QEMU exited before serving the socket.
    pub async fn connect(&self, options: QmpOptions) -> Result<(QmpClient, QmpEvents), QmpError> {
        QmpClient::connect(&self.path, options).await
    }

    /// Removes the socket file (the socket itself lives on in QEMU until it exits).
    pub fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a QEMU's threads were doing when it stopped answering over QMP, read from `/proc`
/// before it is killed: a thread waiting on I/O (`D`) tells a stuck QEMU, all of them idle in
/// a poll tells a daemon that did not read the answer in time. Shown after the error.
#[derive(Debug, Clone)]
pub struct Stalled(String);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, " (QEMU's threads then: {})", self.0)
        }
    }
}

/// When `error` is a QMP timeout, what the threads of QEMU `pid` are doing now.
pub fn stalled(error: &QmpError, pid: u32) -> Option<Stalled> {
    matches!(error, QmpError::Timeout { .. }).then(|| Stalled(thread_states(pid)))
}

/// What each thread of process `pid` is doing, from `/proc`: its name, its scheduler state
/// (`R` running, `S` sleeping, `D` waiting on I/O, ...) and the kernel function it waits in.
/// Best effort: empty when `/proc` cannot tell.
pub fn thread_states(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return String::new();
    };
    let mut threads: Vec<(u64, String)> = tasks
        .flatten()
        .filter_map(|task| {
            let tid: u64 = task.file_name().to_str()?.parse().ok()?;
            let dir = task.path();
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // `pid (comm) state ...`: comm may hold spaces and parentheses.
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(').map_or("", |(_, n)| n);
            let state = rest.split_whitespace().next().unwrap_or("?");
            let wchan = std::fs::read_to_string(dir.join("wchan")).unwrap_or_default();
            let wchan = wchan.trim();
            let wait = if wchan.is_empty() || wchan == "0" {
                String::new()
            } else {
                format!(" in {wchan}")
            };
            Some((tid, format!("{name} {state}{wait}")))
        })
        .collect();
    threads.sort();
    threads.into_iter().map(|(_, t)| t).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_states_name_each_thread_with_its_state() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (named_tx, named) = std::sync::mpsc::channel::<()>();
        let idle = std::thread::Builder::new()
            .name("probe-idle".into())
            .spawn(move || {
                // The thread names itself before it runs this.
                let _ = named_tx.send(());
                rx.recv()
            })
            .expect("thread");
        named.recv().expect("the thread started");
        let states = thread_states(std::process::id());
        drop(tx);
        let _ = idle.join();
        let idle = states
            .split(", ")
            .find(|t| t.starts_with("probe-idle "))
            .unwrap_or_else(|| panic!("the idle thread is listed: {states}"));
        let state = idle["probe-idle ".len()..].chars().next();
        assert!(
            matches!(state, Some('R' | 'S')),
            "a scheduler state follows the name: {idle}"
        );
        assert_eq!(thread_states(u32::MAX), "", "no such process: nothing to say");
    }
}
