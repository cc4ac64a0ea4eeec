//! Connected clients: identity from SO_PEERCRED, the registry the admin service lists and
//! closes, connection limits, and the count the idle timer watches.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd as _, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt as _};

use crate::listen::SocketKind;

/// Who is calling, and over which socket. Every request carries it as an extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The connection's id, unique for the daemon's lifetime.
    pub id: u64,
    /// The peer's user id (SO_PEERCRED).
    pub uid: u32,
    /// The peer's group id.
    pub gid: u32,
    /// The peer's supplementary groups (from `/proc/<pid>/status`), for group-based access.
    pub groups: Vec<u32>,
    /// The peer's process id, when the kernel reports it.
    pub pid: Option<i32>,
    /// The socket the connection came in on.
    pub socket: SocketKind,
    /// When it connected.
    pub connected_at: SystemTime,
}

#[derive(Debug)]
struct Entry {
    info: ClientInfo,
    fd: RawFd,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    clients: BTreeMap<u64, Entry>,
}

/// The daemon's connected clients.
#[derive(Debug)]
pub struct ClientRegistry {
    inner: Mutex<Inner>,
    count: watch::Sender<usize>,
}

impl Default for ClientRegistry {
    fn default() -> Self {
        ClientRegistry {
            inner: Mutex::default(),
            count: watch::channel(0).0,
        }
    }
}

impl ClientRegistry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves the map consistent: keep using it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The clients connected now, oldest first.
    pub fn list(&self) -> Vec<ClientInfo> {
        self.lock().clients.values().map(|e| e.info.clone()).collect()
    }

    /// One client.
    pub fn get(&self, id: u64) -> Option<ClientInfo> {
        self.lock().clients.get(&id).map(|e| e.info.clone())
    }

    /// How many clients are connected on sockets of the given kinds.
    pub fn count(&self, kinds: &[SocketKind]) -> usize {
        self.lock()
            .clients
            .values()
            .filter(|e| kinds.contains(&e.info.socket))
            .count()
    }

    /// Follows the total number of connected clients.
    pub fn watch_count(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// Closes a client's connection (both directions) and forgets it at once; false when there
    /// is no such client.
    pub fn close(&self, id: u64) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.clients.remove(&id) else {
            return false;
        };
        // SAFETY: the entry was still registered under this lock, and an entry is removed (under
        // the lock) before its socket is closed, so the fd still belongs to that connection.
        unsafe { libc::shutdown(entry.fd, libc::SHUT_RDWR) };
        let total = inner.clients.len();
        drop(inner);
        self.count.send_replace(total);
        true
    }

    fn register(self: &Arc<Self>, stream: &UnixStream, socket: SocketKind) -> ClientGuard {
        let (uid, gid, pid) = match stream.peer_cred() {
            Ok(cred) => (cred.uid(), cred.gid(), cred.pid()),
            Err(e) => {
                tracing::warn!(error = %e, "SO_PEERCRED failed; treating the peer as nobody");
                (u32::MAX - 1, u32::MAX - 1, None)
            }
        };
        let groups = pid.map(supplementary_groups).unwrap_or_default();
        let mut inner = self.lock();
        inner.next_id += 1;
        let info = ClientInfo {
            id: inner.next_id,
            uid,
            gid,
            groups,
            pid,
            socket,
            connected_at: SystemTime::now(),
        };
        inner.clients.insert(
            info.id,
            Entry {
                info: info.clone(),
                fd: stream.as_raw_fd(),
            },
        );
        let total = inner.clients.len();
        drop(inner);
        self.count.send_replace(total);
        tracing::debug!(
            client = info.id,
            uid,
            pid,
            socket = socket.as_str(),
            "client connected"
        );
        ClientGuard {
            registry: Arc::clone(self),
            info,
        }
    }

    fn unregister(&self, id: u64) {
        let mut inner = self.lock();
        if inner.clients.remove(&id).is_none() {
            return; // closed by the admin already
        }
        let total = inner.clients.len();
        drop(inner);
        self.count.send_replace(total);
        tracing::debug!(client = id, "client disconnected");
    }
}

/// The supplementary groups of process `pid`, from the `Groups:` line of `/proc/<pid>/status`
/// (SO_PEERCRED carries only the primary group).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
            Some(line.split_whitespace().filter_map(|g| g.parse().ok()).collect())
        })
        .unwrap_or_default()
}

/// Removes its client from the registry when the connection ends.
#[derive(Debug)]
struct ClientGuard {
    registry: Arc<ClientRegistry>,
    info: ClientInfo,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.registry.unregister(self.info.id);
    }
}

/// An accepted connection that stays in the registry while it is open.
#[derive(Debug)]
pub struct TrackedStream {
    // Declared first: dropped (unregistered) before the stream closes its fd.
    guard: ClientGuard,
    stream: UnixStream,
}

impl tonic::transport::server::Connected for TrackedStream {
    type ConnectInfo = ClientInfo;

    fn connect_info(&self) -> ClientInfo {
        self.guard.info.clone()
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The connections accepted on `listener`, registered, with those beyond `limit` (counted over
/// `limit_kinds`) refused: closed at once, with a warning in the log.
pub fn incoming(
    listener: tokio::net::UnixListener,
    kind: SocketKind,
    registry: Arc<ClientRegistry>,
    limit: impl Fn() -> usize + Send + 'static,
    limit_kinds: &'static [SocketKind],
) -> impl Stream<Item = Result<TrackedStream, std::io::Error>> {
    tokio_stream::wrappers::UnixListenerStream::new(listener).filter_map(move |accepted| match accepted {
        Ok(stream) => {
            let limit = limit();
            if registry.count(limit_kinds) >= limit {
                tracing::warn!(
                    socket = kind.as_str(),
                    limit,
                    "too many clients: connection refused"
                );
                return None;
            }
            let guard = registry.register(&stream, kind);
            Some(Ok(TrackedStream { guard, stream }))
        }
        Err(e) => {
            tracing::warn!(socket = kind.as_str(), error = %e, "accept failed");
            None
        }
    })
}
