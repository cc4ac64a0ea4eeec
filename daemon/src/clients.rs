//! Connected clients: identity from SO_PEERCRED, the registry the admin service lists and
//! closes, connection limits (`max_clients`, `max_anonymous_clients`), the refusal a client beyond
//! them gets, and the count the idle timer watches.
//!
//! A Unix-socket client is authenticated the moment it connects (SO_PEERCRED). A client of a
//! network listener (TCP, TLS) is *anonymous* until its handshake proves who it is: such a
//! listener takes an [`AnonymousClient`] slot with [`ClientRegistry::admit_anonymous`] on accept,
//! which counts against both `max_anonymous_clients` and `max_clients`, and registers the client
//! with [`ClientRegistry::register_peer`] once authenticated.

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

use rvirt_proto::error::status;
use rvirt_proto::v1::{ErrorCode, ErrorDomain};

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
    /// The subject DN of the client's TLS certificate (`CN=client1,O=Example`), for callers that
    /// presented one; access policy rules may name it.
    pub cert_subject: Option<String>,
    /// Whether the caller came over the network (virtproxyd's TCP or TLS listener) rather than a
    /// local socket: its uid names no local user, and by default it may read and write but make
    /// no privileged call.
    pub remote: bool,
}

/// Who a connection's peer is, as its transport proved it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Process id, when local.
    pub pid: Option<i32>,
    /// The TLS certificate's subject DN, when the peer presented one.
    pub cert_subject: Option<String>,
}

#[derive(Debug)]
struct Entry {
    info: ClientInfo,
    fd: RawFd,
    /// Where a network client connected from, and how.
    remote: Option<crate::listen::RemotePeer>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    clients: BTreeMap<u64, Entry>,
    /// Connections accepted but not yet authenticated (network listeners only).
    anonymous: usize,
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

    /// The clients connected now, oldest first, each with its transport and address when it
    /// came over the network ([`register_remote`](Self::register_remote)).
    pub fn list_with_peers(&self) -> Vec<(ClientInfo, Option<crate::listen::RemotePeer>)> {
        self.lock()
            .clients
            .values()
            .map(|e| (e.info.clone(), e.remote.clone()))
            .collect()
    }

    /// One client, with its network peer.
    pub fn get(&self, id: u64) -> Option<(ClientInfo, Option<crate::listen::RemotePeer>)> {
        self.lock()
            .clients
            .get(&id)
            .map(|e| (e.info.clone(), e.remote.clone()))
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

    fn register(self: &Arc<Self>, stream: &UnixStream, socket: SocketKind) -> ClientHandle {
        let (uid, gid, pid) = match stream.peer_cred() {
            Ok(cred) => (cred.uid(), cred.gid(), cred.pid()),
            Err(e) => {
                tracing::warn!(error = %e, "SO_PEERCRED failed; treating the peer as nobody");
                (u32::MAX - 1, u32::MAX - 1, None)
            }
        };
        let groups = pid.map(supplementary_groups).unwrap_or_default();
        let identity = PeerIdentity {
            uid,
            gid,
            groups,
            pid,
            cert_subject: None,
        };
        self.register_peer(identity, socket, stream.as_raw_fd())
    }

    /// Registers an authenticated connection on socket `socket` whose file descriptor is `fd`
    /// (which [`close`](Self::close) shuts down). The client stays listed until the returned
    /// handle is dropped: keep it alive as long as the connection, and drop it before the socket
    /// closes.
    pub fn register_peer(
        self: &Arc<Self>,
        identity: PeerIdentity,
        socket: SocketKind,
        fd: RawFd,
    ) -> ClientHandle {
        self.register_entry(identity, socket, fd, None)
    }

    /// [`register_peer`](Self::register_peer) for a client that came over TCP or TLS from
    /// `remote`: the admin service reports its transport and address.
    pub fn register_remote(
        self: &Arc<Self>,
        identity: PeerIdentity,
        socket: SocketKind,
        fd: RawFd,
        remote: crate::listen::RemotePeer,
    ) -> ClientHandle {
        self.register_entry(identity, socket, fd, Some(remote))
    }

    fn register_entry(
        self: &Arc<Self>,
        identity: PeerIdentity,
        socket: SocketKind,
        fd: RawFd,
        remote: Option<crate::listen::RemotePeer>,
    ) -> ClientHandle {
        let PeerIdentity {
            uid,
            gid,
            groups,
            pid,
            cert_subject,
        } = identity;
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
            cert_subject,
            remote: remote.is_some(),
        };
        inner.clients.insert(
            info.id,
            Entry {
                info: info.clone(),
                fd,
                remote,
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
        ClientHandle {
            registry: Arc::clone(self),
            info,
        }
    }

    /// Connections accepted but not yet authenticated.
    pub fn anonymous(&self) -> usize {
        self.lock().anonymous
    }

    /// Takes a slot for a connection that is not authenticated yet (a TLS client before its
    /// handshake), or refuses it: when `max_anonymous` unauthenticated connections are pending
    /// (`max_anonymous_clients`), or when the clients on sockets of `kinds` plus the pending ones
    /// reach `max_clients`. The error is the refusal's message, for the log.
    pub fn admit_anonymous(
        self: &Arc<Self>,
        max_clients: usize,
        max_anonymous: usize,
        kinds: &[SocketKind],
    ) -> Result<AnonymousClient, String> {
        let mut inner = self.lock();
        if inner.anonymous >= max_anonymous {
            return Err(format!(
                "{} clients are connected but not yet authenticated (max_anonymous_clients = {max_anonymous})",
                inner.anonymous
            ));
        }
        let clients = inner
            .clients
            .values()
            .filter(|e| kinds.contains(&e.info.socket))
            .count();
        if clients + inner.anonymous >= max_clients {
            return Err(too_many(clients + inner.anonymous, max_clients, "max_clients"));
        }
        inner.anonymous += 1;
        Ok(AnonymousClient {
            registry: Arc::clone(self),
        })
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

/// A registered connection: removes its client from the registry when dropped.
#[derive(Debug)]
pub struct ClientHandle {
    registry: Arc<ClientRegistry>,
    info: ClientInfo,
}

impl ClientHandle {
    /// The client's identity, which every request on the connection carries.
    pub fn info(&self) -> &ClientInfo {
        &self.info
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.registry.unregister(self.info.id);
    }
}

/// A slot for a connection that is not authenticated yet; frees it when dropped (after the
/// handshake, whether it succeeded or not).
#[derive(Debug)]
pub struct AnonymousClient {
    registry: Arc<ClientRegistry>,
}

impl Drop for AnonymousClient {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        inner.anonymous = inner.anonymous.saturating_sub(1);
    }
}

/// An accepted connection that stays in the registry while it is open.
#[derive(Debug)]
pub struct TrackedStream {
    // Declared first: dropped (unregistered) before the stream closes its fd.
    guard: ClientHandle,
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

/// The message a client beyond a connection limit gets.
fn too_many(current: usize, limit: usize, key: &str) -> String {
    format!(
        "Too many clients: {current} are connected and the daemon accepts at most {limit} ({key}), so this connection is refused; close other connections or raise {key} in the daemon's configuration"
    )
}

/// Refused connections being answered at once; more are closed without an answer, so clients
/// beyond the limit cannot tie up the daemon.
const MAX_REFUSING: usize = 16;

/// How long a refused connection may stay open to read its answer.
const REFUSAL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Answers every call on the HTTP/2 connection `io` with `refusal` and closes it after the first
/// answer (or [`REFUSAL_DEADLINE`]), so that a client beyond a limit reads why instead of a reset
/// connection. Runs in the background; when too many refusals are under way the connection is
/// simply closed.
pub fn refuse<IO>(io: IO, refusal: tonic::Status)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    static REFUSING: AtomicUsize = AtomicUsize::new(0);
    if REFUSING.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        REFUSING.fetch_sub(1, Ordering::AcqRel);
        return; // dropping `io` closes the connection
    }
    tokio::spawn(async move {
        let answered = Arc::new(tokio::sync::Notify::new());
        let notify = Arc::clone(&answered);
        let service = hyper::service::service_fn(move |_request: http::Request<hyper::body::Incoming>| {
            notify.notify_one();
            let response = refusal.clone().into_http::<tonic::body::Body>();
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        let builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
        let serve = async move {
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = answered.notified() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        };
        let _ = tokio::time::timeout(REFUSAL_DEADLINE, serve).await;
        REFUSING.fetch_sub(1, Ordering::AcqRel);
    });
}

/// The connections accepted on `listener`, registered, with those beyond `limit` (counted over
/// `limit_kinds`, plus the unauthenticated connections of network listeners) refused: answered
/// with `RESOURCE_EXHAUSTED` (`ERROR_CODE_RESOURCE_BUSY`) naming the limit, then closed, with a
/// warning in the log. Connected clients are unaffected.
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
            let current = registry.count(limit_kinds) + registry.anonymous();
            if current >= limit {
                let key = match kind {
                    SocketKind::Admin => "admin_max_clients",
                    _ => "max_clients",
                };
                tracing::warn!(
                    socket = kind.as_str(),
                    limit,
                    key,
                    "too many clients: connection refused"
                );
                refuse(
                    stream,
                    status(
                        ErrorCode::ResourceBusy,
                        ErrorDomain::Rpc,
                        too_many(current, limit, key),
                    ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_clients_count_against_both_limits() {
        let registry = Arc::new(ClientRegistry::default());
        let kinds = [SocketKind::ReadWrite, SocketKind::ReadOnly];
        let first = registry.admit_anonymous(10, 2, &kinds).expect("first");
        let _second = registry.admit_anonymous(10, 2, &kinds).expect("second");
        let err = registry
            .admit_anonymous(10, 2, &kinds)
            .expect_err("third anonymous");
        assert!(err.contains("max_anonymous_clients"), "{err}");
        drop(first);
        assert_eq!(registry.anonymous(), 1);
        let _third = registry.admit_anonymous(10, 2, &kinds).expect("slot freed");
        let err = registry
            .admit_anonymous(2, 5, &kinds)
            .expect_err("max_clients counts anonymous clients");
        assert!(err.contains("max_clients"), "{err}");
    }

    #[test]
    fn authenticated_clients_count_against_max_clients_of_their_kinds() {
        let registry = Arc::new(ClientRegistry::default());
        let kinds = [SocketKind::ReadWrite, SocketKind::ReadOnly];
        let identity = PeerIdentity {
            uid: 1000,
            gid: 1000,
            cert_subject: Some("CN=client,O=Example".into()),
            ..PeerIdentity::default()
        };
        let handle = registry.register_peer(identity, SocketKind::ReadWrite, -1);
        assert_eq!(handle.info().cert_subject.as_deref(), Some("CN=client,O=Example"));
        let _admin = registry.register_peer(PeerIdentity::default(), SocketKind::Admin, -1);
        assert!(registry.admit_anonymous(1, 5, &kinds).is_err());
        assert!(registry.admit_anonymous(2, 5, &kinds).is_ok());
        drop(handle);
        assert!(registry.list().iter().all(|c| c.socket == SocketKind::Admin));
    }
}
