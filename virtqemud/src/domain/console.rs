//! Consoles: a caller connected to a guest's serial port.
//!
//! The driver opens the host side of the character device — the pty QEMU allocated (opened in
//! raw mode, as virsh's console expects) or a `unix` chardev QEMU listens on — and the service
//! pumps bytes both ways between it and the caller's bidirectional stream. One caller per
//! device: a second one is refused unless it forces, and then the first is told it was taken
//! over. When the domain stops, its [`ConsoleHandle`]s are dropped, which ends every stream
//! with `DOMAIN_STOPPED`.

use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rvirt_conf::domain::{ChrMode, ChrSource, Device, XmlEnum as _};
use rvirt_proto::v1::{DomainConsoleCloseReason, ErrorCode};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::Status;

use super::{Domains, Vm, err, not_running};

/// The driver's end of an open console: dropping it (the domain stopped) or sending a reason
/// ends the stream.
#[derive(Debug)]
pub struct ConsoleHandle {
    close: tokio::sync::oneshot::Sender<DomainConsoleCloseReason>,
}

/// The device side of an open console.
#[derive(Debug)]
pub enum ConsoleIo {
    /// A pty.
    Pty(PtyStream),
    /// A Unix socket chardev.
    Unix(tokio::net::UnixStream),
}

/// An open console.
#[derive(Debug)]
pub struct OpenConsole {
    /// The device alias (`serial0`).
    pub dev_name: String,
    /// Its host side.
    pub io: ConsoleIo,
    /// Resolves when the driver ends the console (domain stopped: the sender is dropped).
    pub closed: tokio::sync::oneshot::Receiver<DomainConsoleCloseReason>,
}

impl Domains {
    /// Opens the console `dev_name` (the first serial or console device when empty).
    pub async fn open_console(
        &self,
        vm: &Arc<Vm>,
        dev_name: &str,
        force: bool,
    ) -> Result<OpenConsole, Status> {
        let (alias, source) = {
            let inner = vm.lock();
            let run = inner.run.as_ref().ok_or_else(|| not_running(&inner.name))?;
            let mut found = None;
            for device in &run.def.devices.list {
                let chardev = match device {
                    Device::Serial(c) | Device::Console(c) => c,
                    _ => continue,
                };
                let alias = chardev.info.alias.clone().unwrap_or_default();
                if dev_name.is_empty() || dev_name == alias {
                    found = Some((alias, chardev.source.clone()));
                    break;
                }
            }
            found.ok_or_else(|| {
                let what = if dev_name.is_empty() {
                    "the domain has no serial port or console".to_owned()
                } else {
                    format!("cannot find character device '{dev_name}'")
                };
                err(
                    ErrorCode::InternalError,
                    format!("Cannot open the console: {what}"),
                )
            })?
        };
        let io = match &source {
            ChrSource::Pty { path: Some(path) } => ConsoleIo::Pty(PtyStream::open(path).map_err(|e| {
                err(
                    ErrorCode::OperationFailed,
                    format!("Cannot open console pty '{path}': {e}"),
                )
            })?),
            ChrSource::Unix {
                mode: ChrMode::Bind,
                path: Some(path),
            } => ConsoleIo::Unix(tokio::net::UnixStream::connect(path).await.map_err(|e| {
                err(
                    ErrorCode::OperationFailed,
                    format!("Cannot connect to console socket '{path}': {e}"),
                )
            })?),
            other => {
                return Err(err(
                    ErrorCode::OperationUnsupported,
                    format!(
                        "Operation not supported: character device '{alias}' of type '{}' cannot be used as a console",
                        other.kind().as_str()
                    ),
                ));
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut inner = vm.lock();
            let name = inner.name.clone();
            let run = inner.run.as_mut().ok_or_else(|| not_running(&name))?;
            if let Some(previous) = run.consoles.remove(&alias) {
                if !force && !previous.close.is_closed() {
                    run.consoles.insert(alias.clone(), previous);
                    return Err(err(
                        ErrorCode::OperationFailed,
                        format!(
                            "Operation failed: an active console session exists for device '{alias}' of domain '{name}'"
                        ),
                    ));
                }
                let _ = previous.close.send(DomainConsoleCloseReason::TakenOver);
            }
            run.consoles.insert(alias.clone(), ConsoleHandle { close: tx });
        }
        Ok(OpenConsole {
            dev_name: alias,
            io,
            closed: rx,
        })
    }
}

/// A pty's slave side, non-blocking, in raw mode.
#[derive(Debug)]
pub struct PtyStream {
    fd: AsyncFd<std::fs::File>,
}

impl PtyStream {
    /// Opens `path` read-write, without making it the controlling terminal, in raw mode.
    pub fn open(path: &str) -> std::io::Result<PtyStream> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        // SAFETY: a zeroed termios is a valid buffer for tcgetattr to fill; both calls only
        // touch that buffer and the descriptor we own.
        unsafe {
            let mut attrs: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(file.as_raw_fd(), &mut attrs) == 0 {
                libc::cfmakeraw(&mut attrs);
                libc::tcsetattr(file.as_raw_fd(), libc::TCSANOW, &attrs);
            }
        }
        // SAFETY: the File owns its descriptor, which stays open and the same for as long as
        // the AsyncFd (which owns the File) lives.
        let fd = unsafe { AsyncFd::register(file) }.map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(PtyStream { fd })
    }
}

impl AsyncRead for PtyStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| {
                let mut file: &std::fs::File = inner.get_ref();
                file.read(unfilled)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A pty whose other side closed reads EIO: that is the end of the stream.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|inner| {
                let mut file: &std::fs::File = inner.get_ref();
                file.write(data)
            }) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
