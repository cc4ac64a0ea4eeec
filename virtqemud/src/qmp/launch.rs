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
