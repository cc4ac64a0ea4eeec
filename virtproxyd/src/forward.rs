//! The forwarder: routes each call by its `rvirt-uri` metadata and gRPC service name, and passes
//! the whole HTTP/2 request (headers, deadline, streaming body) to the owning backend, returning
//! the backend's response (streaming body and trailers) untouched. Messages are never decoded, so
//! unary, server-streaming, client-streaming and bidirectional calls all pass through; dropping
//! the response (the client cancelled) drops the backend call.
//!
//! Backends are one pooled HTTP/2 connection per daemon socket, made on first use and made again
//! when it closed (the backend restarted): a call the old connection refused before sending it is
//! sent on the new one; `test:///` URIs go to
//! the in-process test driver. The caller's identity (SO_PEERCRED on the proxy's socket) travels
//! to the backend as `rvirt-caller-*` metadata, which backends honour only from a privileged peer
//! (see `rvirt_daemon::access`); any such metadata the client sent is removed first.
//!
//! Remote hooks (see [`crate::remote`]): a caller that came over TCP/TLS carries a
//! [`RemotePeer`] and was checked by the remote listeners' access layer; the backend then gets
//! the call as the proxy's own (no `rvirt-caller-*` metadata). A URI with a host
//! (`qemu+tls://host/system`) goes to that host's virtproxyd over one pooled TLS (or TCP)
//! connection per host and port, as `qemu:///system`; only local callers may take this hop.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rvirt::paths::{BaseDirs, Mode};
use rvirt::route::{self, DaemonId, Owner};
use rvirt::uri::{ConnectUri, Instance, Transport};
use rvirt_daemon::ClientInfo;
use rvirt_daemon::access::{
    CALLER_CERT_SUBJECT_METADATA, CALLER_GID_METADATA, CALLER_GROUPS_METADATA, CALLER_PID_METADATA,
    CALLER_REMOTE_METADATA, CALLER_UID_METADATA,
};
use rvirt_daemon::listen::{RemotePeer, SocketKind};
use rvirt_proto::error::status;
use rvirt_proto::v1::{ErrorCode, ErrorDomain};
use tonic::body::Body;
use tower::ServiceExt as _;

/// The environment variable naming the URI of calls that carry no `rvirt-uri` (libvirt:
/// `LIBVIRT_DEFAULT_URI` in the daemon's environment).
pub const DEFAULT_URI_ENV: &str = "RVIRT_DEFAULT_URI";

/// The future of one forwarded call.
pub type ForwardFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

/// How many distinct `rvirt-uri` values are kept parsed; the cache starts over beyond that.
const URI_CACHE_LIMIT: usize = 64;

/// The URI of calls without `rvirt-uri`: `RVIRT_DEFAULT_URI`, else the proxy's own instance
/// (`qemu:///system` for a system proxy, `qemu:///session` for a session one).
pub fn default_uri(mode: Mode) -> Result<ConnectUri, String> {
    let configured = std::env::var(DEFAULT_URI_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let text = configured.unwrap_or_else(|| format!("qemu:///{}", mode.as_str()));
    let uri = ConnectUri::parse(text.trim()).map_err(|e| format!("{DEFAULT_URI_ENV}: {e}"))?;
    if uri.is_remote() {
        return Err(format!(
            "{DEFAULT_URI_ENV}={text} names a remote host; the proxy's default URI must be local"
        ));
    }
    Ok(uri)
}

/// Which backend socket serves a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendKey {
    /// The daemon.
    pub daemon: DaemonId,
    /// The session instance (`*:///session`) rather than the system one.
    pub session: bool,
    /// The daemon's read-only socket (the caller came in on the proxy's read-only socket).
    pub read_only: bool,
}

/// Another host's virtproxyd, for URIs with a host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteKey {
    /// The host.
    pub host: String,
    /// The port (the transport's default when the URI has none).
    pub port: u16,
    /// TLS (`+tls`, the default with a host) rather than plain TCP (`+tcp`).
    pub tls: bool,
}

/// Where a call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A daemon's socket.
    Daemon(BackendKey),
    /// The in-process test driver.
    TestDriver,
    /// Another host's virtproxyd.
    Remote(RemoteKey),
}

/// Routes a call for `service` (`rvirt.v1.DomainService`) with connection URI `uri`, from a
/// caller on a socket of kind `socket`: the route table's answer, or the error the caller gets.
pub fn route_call(uri: &ConnectUri, service: &str, socket: SocketKind) -> Result<Target, tonic::Status> {
    if uri.is_remote() || uri.transport != Transport::Unix {
        if uri.pkipath.is_some() || uri.keyfile.is_some() || uri.no_verify {
            return Err(status(
                ErrorCode::OperationUnsupported,
                ErrorDomain::Remote,
                format!(
                    "{uri}: the proxy dials remote hosts with its own certificate (/etc/pki/rvirt/clientcert.pem); drop pkipath=, keyfile= and no_verify="
                ),
            ));
        }
        if route::owner(uri.driver, service).is_none() {
            return Err(status(
                ErrorCode::OperationUnsupported,
                ErrorDomain::Remote,
                format!(
                    "{} does not serve {service}: use a qemu:// URI, or the URI of the driver that owns it",
                    uri.local()
                ),
            ));
        }
        let (host, port, _) = rvirt::connect::remote_target(uri);
        return Ok(Target::Remote(RemoteKey {
            host,
            port,
            tls: uri.transport != Transport::Tcp,
        }));
    }
    if uri.socket.is_some() {
        return Err(status(
            ErrorCode::OperationUnsupported,
            ErrorDomain::Remote,
            format!(
                "{uri} names a socket: the proxy reaches daemons by its own route table; drop the socket= parameter"
            ),
        ));
    }
    let Some(owner) = route::owner(uri.driver, service) else {
        return Err(status(
            ErrorCode::OperationUnsupported,
            ErrorDomain::Remote,
            format!(
                "{} does not serve {service}: use a qemu:/// URI, or the URI of the driver that owns it",
                uri.local()
            ),
        ));
    };
    match owner {
        Owner::TestDriver => Ok(Target::TestDriver),
        Owner::Daemon(daemon) => {
            let session = match uri.instance {
                Instance::System => false,
                Instance::Session => true,
                Instance::Default | Instance::File(_) => {
                    return Err(status(
                        ErrorCode::InvalidArg,
                        ErrorDomain::Uri,
                        format!("{uri}: only the test driver has instances other than /system and /session"),
                    ));
                }
            };
            Ok(Target::Daemon(BackendKey {
                daemon,
                session,
                // Session daemons have no read-only socket; the proxy's own check already
                // refused every non-read call from its read-only socket.
                read_only: socket == SocketKind::ReadOnly && !session,
            }))
        }
    }
}

/// The socket of a backend.
pub fn backend_socket(key: BackendKey, system: &BaseDirs, session: &BaseDirs) -> PathBuf {
    let base = if key.session { session } else { system };
    let suffix = if key.read_only { "sock-ro" } else { "sock" };
    base.runtime.join(format!("{}-{suffix}", key.daemon.sockets))
}

/// One backend socket (or remote proxy) and its pooled HTTP/2 connection, which carries every
/// concurrent call.
struct Backend {
    socket: PathBuf,
    /// Set for a remote proxy, dialed over TCP/TLS instead of `socket`.
    remote: Option<crate::remote::RemoteDial>,
    sender: Mutex<Option<SendRequest<Body>>>,
    /// The session daemon to start when its socket is not there (a session proxy's session
    /// backends), as libvirt's clients start session daemons.
    autostart: Option<DaemonId>,
    /// Held while the daemon is being started, so concurrent calls start it once.
    starting: tokio::sync::Mutex<()>,
    /// When the last call was handed to this backend.
    last_used: Mutex<Option<Instant>>,
}

/// Runs the HTTP/2 client handshake on `io` and drives the connection in its own task.
async fn handshake<T>(io: T) -> Result<SendRequest<Body>, Unreachable>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Windows and frames sized for bulk streams (volume upload/download, 1 MiB messages).
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| Unreachable(root_cause(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "backend connection ended");
        }
    });
    Ok(sender)
}

/// Why a call could not be handed to a backend.
#[derive(Debug)]
struct Unreachable(String);

impl Backend {
    fn new(socket: PathBuf, autostart: Option<DaemonId>) -> Backend {
        Backend {
            socket,
            remote: None,
            sender: Mutex::new(None),
            autostart,
            starting: tokio::sync::Mutex::new(()),
            last_used: Mutex::new(None),
        }
    }

    fn remote(dial: crate::remote::RemoteDial) -> Backend {
        Backend {
            remote: Some(dial),
            ..Backend::new(PathBuf::new(), None)
        }
    }

    /// Connects to the backend's socket; a session daemon that is not running is started
    /// first (once, whatever the number of calls waiting for it).
    async fn dial_local(&self) -> Result<tokio::net::UnixStream, Unreachable> {
        let first = tokio::net::UnixStream::connect(&self.socket).await;
        let Some(daemon) = self.autostart else {
            return first.map_err(|e| Unreachable(e.to_string()));
        };
        match first {
            Ok(stream) => Ok(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                let _starting = self.starting.lock().await;
                // Another call may have started it while this one waited.
                if let Ok(stream) = tokio::net::UnixStream::connect(&self.socket).await {
                    return Ok(stream);
                }
                tracing::info!(daemon = daemon.name, "starting the session daemon");
                rvirt::autostart::start_session_daemon(daemon, &self.socket)
                    .await
                    .map_err(|e| Unreachable(e.message))?;
                tokio::net::UnixStream::connect(&self.socket)
                    .await
                    .map_err(|e| Unreachable(e.to_string()))
            }
            Err(e) => Err(Unreachable(e.to_string())),
        }
    }

    /// The pooled connection, unless there is none or it closed (the backend went away).
    fn pooled(&self) -> Option<SendRequest<Body>> {
        let pooled = self
            .sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pooled.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Connects anew and pools the connection.
    async fn connect(&self) -> Result<SendRequest<Body>, Unreachable> {
        let sender = match &self.remote {
            None => handshake(self.dial_local().await?).await?,
            Some(dial) => handshake(dial.dial().await.map_err(|e| Unreachable(e.to_string()))?).await?,
        };
        *self
            .sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sender.clone());
        Ok(sender)
    }

    /// Sends a call on the pooled connection; a call the connection refused before sending it
    /// (the backend restarted since) goes once more on a fresh connection.
    /// Drops the pooled connection when no call was handed over for `idle`: the connection
    /// closes once the calls still running on it (event streams, consoles) end, and the backend
    /// can then idle-exit. The next call connects again.
    fn release_if_idle(&self, idle: Duration) -> bool {
        let last = *self
            .last_used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() < idle) {
            return false;
        }
        self.sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .is_some()
    }

    async fn send(&self, request: http::Request<Body>) -> Result<http::Response<Body>, Unreachable> {
        *self
            .last_used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        let mut sender = match self.pooled() {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut failed) => match failed.take_message() {
                Some(request) => self
                    .connect()
                    .await?
                    .send_request(request)
                    .await
                    .map_err(|e| Unreachable(root_cause(&e)))?,
                None => return Err(Unreachable(root_cause(failed.error()))),
            },
        };
        Ok(response.map(Body::new))
    }
}

struct ParsedUri {
    uri: ConnectUri,
    /// `uri.local()`, what the backend receives as `rvirt-uri`.
    local: HeaderValue,
}

struct Inner {
    /// The proxy's own user: it may open `test:///<file>` URIs, which read files as the proxy.
    proxy_uid: u32,
    default_uri: Arc<ParsedUri>,
    backends: HashMap<BackendKey, Backend>,
    uris: Mutex<HashMap<Vec<u8>, Arc<ParsedUri>>>,
    /// Remote proxies, made on first use.
    remotes: Mutex<HashMap<RemoteKey, Arc<Backend>>>,
}

/// Forwards calls to their backends; cheap to clone, one per proxy.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("default_uri", &self.inner.default_uri.uri.to_string())
            .field("backends", &self.inner.backends.len())
            .finish()
    }
}

impl Forwarder {
    /// A forwarder sending calls without `rvirt-uri` to `default_uri`. Backend connections are
    /// made on first use; with `start_session_daemons` (a proxy running in session mode), a
    /// session daemon that is not running is started first.
    pub fn new(default_uri: ConnectUri, start_session_daemons: bool) -> Forwarder {
        let system = BaseDirs::new(Mode::System);
        let session = BaseDirs::new(Mode::Session);
        let mut backends = HashMap::new();
        for (_, _, daemon) in route::ROUTES {
            for session_instance in [false, true] {
                for read_only in [false, true] {
                    let key = BackendKey {
                        daemon: *daemon,
                        session: session_instance,
                        read_only,
                    };
                    if backends.contains_key(&key) {
                        continue;
                    }
                    let autostart = (start_session_daemons && session_instance).then_some(*daemon);
                    backends.insert(
                        key,
                        Backend::new(backend_socket(key, &system, &session), autostart),
                    );
                }
            }
        }
        let default_uri = Arc::new(ParsedUri {
            local: HeaderValue::from_str(&default_uri.local())
                .unwrap_or_else(|_| HeaderValue::from_static("qemu:///system")),
            uri: default_uri,
        });
        Forwarder {
            inner: Arc::new(Inner {
                proxy_uid: nix::unistd::geteuid().as_raw(),
                default_uri,
                backends,
                uris: Mutex::new(HashMap::new()),
                remotes: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Releases the pooled backend connections (local and remote) that carried no new call for
    /// `idle`; returns how many.
    pub fn release_idle(&self, idle: Duration) -> usize {
        let local = self
            .inner
            .backends
            .values()
            .filter(|b| b.release_if_idle(idle))
            .count();
        let remotes: Vec<Arc<Backend>> = self
            .inner
            .remotes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        local + remotes.iter().filter(|b| b.release_if_idle(idle)).count()
    }

    /// Forwards one call to service `service`.
    pub fn forward(&self, service: &'static str, request: http::Request<Body>) -> ForwardFuture {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { Ok(inner.forward(service, request).await) })
    }
}

impl Inner {
    /// The parsed `rvirt-uri` of a call, or the default.
    fn uri_of(&self, headers: &http::HeaderMap) -> Result<Arc<ParsedUri>, tonic::Status> {
        let Some(value) = headers.get(rvirt_proto::URI_METADATA_KEY) else {
            return Ok(Arc::clone(&self.default_uri));
        };
        let mut cache = self
            .uris
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(parsed) = cache.get(value.as_bytes()) {
            return Ok(Arc::clone(parsed));
        }
        let text = value.to_str().map_err(|_| {
            status(
                ErrorCode::InvalidArg,
                ErrorDomain::Uri,
                "The rvirt-uri metadata is not text: send a connection URI such as qemu:///system",
            )
        })?;
        let uri = ConnectUri::parse(text)
            .map_err(|e| status(ErrorCode::InvalidArg, ErrorDomain::Uri, e.to_string()))?;
        let local = HeaderValue::from_str(&uri.local()).map_err(|_| {
            status(
                ErrorCode::InvalidArg,
                ErrorDomain::Uri,
                format!("{text:?} cannot be forwarded as metadata: use a plain connection URI"),
            )
        })?;
        let parsed = Arc::new(ParsedUri { uri, local });
        if cache.len() >= URI_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(value.as_bytes().to_vec(), Arc::clone(&parsed));
        Ok(parsed)
    }

    async fn forward(&self, service: &'static str, mut request: http::Request<Body>) -> http::Response<Body> {
        let Some(caller) = request.extensions_mut().remove::<ClientInfo>() else {
            return status(
                ErrorCode::AccessDenied,
                ErrorDomain::Access,
                "The caller's identity is unknown, so the call is refused",
            )
            .into_http();
        };
        let parsed = match self.uri_of(request.headers()) {
            Ok(parsed) => parsed,
            Err(refused) => return refused.into_http(),
        };
        let target = match route_call(&parsed.uri, service, caller.socket) {
            Ok(target) => target,
            Err(refused) => return refused.into_http(),
        };
        let remote_caller = request.extensions_mut().remove::<RemotePeer>();
        // Nothing the server layers attached is meant for the backend.
        request.extensions_mut().clear();
        let headers = request.headers_mut();
        headers.insert(rvirt_proto::URI_METADATA_KEY, parsed.local.clone());
        match (&target, &remote_caller) {
            (Target::Remote(_), Some(peer)) => {
                return status(
                    ErrorCode::OperationDenied,
                    ErrorDomain::Remote,
                    format!(
                        "{} names another host, and a caller that came over {} may not be forwarded further: connect to that host directly",
                        parsed.uri,
                        peer.transport.as_str()
                    ),
                )
                .into_http();
            }
            // The remote proxy knows us by our certificate.
            (Target::Remote(_), None) => strip_identity(headers),
            // A local daemon checks the caller again, with the object in hand.
            (_, _) => {
                if let Err(refused) = set_identity(headers, &caller) {
                    return refused.into_http();
                }
            }
        }
        match target {
            // The test driver runs here and consults the object rules itself.
            Target::TestDriver => self.to_test_driver(&parsed.uri, &caller, request).await,
            Target::Daemon(key) => {
                rvirt_proto::access::delegate();
                self.to_daemon(key, &parsed.uri, request).await
            }
            Target::Remote(key) => {
                rvirt_proto::access::delegate();
                self.to_remote(key, &parsed.uri, request).await
            }
        }
    }

    /// The pooled connection to a remote proxy, made on first use.
    fn remote_backend(&self, key: &RemoteKey) -> Result<Arc<Backend>, tonic::Status> {
        let mut remotes = self
            .remotes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(backend) = remotes.get(key) {
            return Ok(Arc::clone(backend));
        }
        let tls = if key.tls {
            let pki = rvirt::tls::PkiPaths::client(None);
            Some(
                rvirt::tls::client::config(&pki)
                    .map_err(|e| status(e.code, ErrorDomain::Remote, e.message))?,
            )
        } else {
            None
        };
        let backend = Arc::new(Backend::remote(crate::remote::RemoteDial {
            host: key.host.clone(),
            port: key.port,
            tls,
        }));
        remotes.insert(key.clone(), Arc::clone(&backend));
        Ok(backend)
    }

    async fn to_remote(
        &self,
        key: RemoteKey,
        uri: &ConnectUri,
        request: http::Request<Body>,
    ) -> http::Response<Body> {
        let backend = match self.remote_backend(&key) {
            Ok(backend) => backend,
            Err(refused) => return refused.into_http(),
        };
        match backend.send(request).await {
            Ok(response) => response,
            Err(Unreachable(cause)) => {
                let (_, _, shown) = rvirt::connect::remote_target(uri);
                let transport = if key.tls { "tls" } else { "tcp" };
                let pki = key.tls.then(|| rvirt::tls::PkiPaths::client(None));
                let failure = rvirt::tls::classify_message(&cause);
                let e = rvirt::tls::failure_error(&failure, &shown, transport, pki.as_ref());
                status(e.code, ErrorDomain::Remote, e.message).into_http()
            }
        }
    }

    async fn to_test_driver(
        &self,
        uri: &ConnectUri,
        caller: &ClientInfo,
        request: http::Request<Body>,
    ) -> http::Response<Body> {
        if matches!(uri.instance, Instance::File(_)) && caller.uid != 0 && caller.uid != self.proxy_uid {
            return status(
                ErrorCode::AccessDenied,
                ErrorDomain::Access,
                format!(
                    "{uri} loads a file as the proxy's user: only root or the proxy's user may open it; use test:///default"
                ),
            )
            .into_http();
        }
        let transport = match rvirt::test_driver::transport(&uri.instance).await {
            Ok(transport) => transport,
            Err(e) => return rvirt_proto::error::status(e.code, e.domain, e.message).into_http(),
        };
        match transport.oneshot(request).await {
            Ok(response) => response,
            Err(e) => status(
                ErrorCode::InternalError,
                ErrorDomain::Test,
                format!("The test driver failed the call ({e}): report a bug"),
            )
            .into_http(),
        }
    }

    async fn to_daemon(
        &self,
        key: BackendKey,
        uri: &ConnectUri,
        request: http::Request<Body>,
    ) -> http::Response<Body> {
        let Some(backend) = self.backends.get(&key) else {
            return status(
                ErrorCode::InternalError,
                ErrorDomain::Remote,
                format!(
                    "The proxy has no channel to {} for {uri}: report a bug",
                    key.daemon.name
                ),
            )
            .into_http();
        };
        match backend.send(request).await {
            Ok(response) => response,
            Err(Unreachable(cause)) => no_connect(key, &backend.socket, uri, &cause).into_http(),
        }
    }
}

/// Removes every `rvirt-caller-*` metadata.
fn strip_identity(headers: &mut http::HeaderMap) {
    for name in [
        CALLER_UID_METADATA,
        CALLER_GID_METADATA,
        CALLER_PID_METADATA,
        CALLER_GROUPS_METADATA,
        CALLER_CERT_SUBJECT_METADATA,
        CALLER_REMOTE_METADATA,
    ] {
        headers.remove(name);
    }
}

/// Replaces any `rvirt-caller-*` metadata with the caller's own identity; a certificate subject
/// that cannot travel as metadata refuses the call rather than drop what a rule may name.
fn set_identity(headers: &mut http::HeaderMap, caller: &ClientInfo) -> Result<(), tonic::Status> {
    strip_identity(headers);
    headers.insert(CALLER_UID_METADATA, HeaderValue::from(caller.uid));
    headers.insert(CALLER_GID_METADATA, HeaderValue::from(caller.gid));
    if let Some(pid) = caller.pid {
        headers.insert(CALLER_PID_METADATA, HeaderValue::from(pid));
    }
    if let Some(subject) = &caller.cert_subject {
        let value = HeaderValue::from_bytes(subject.as_bytes()).map_err(|_| {
            status(
                ErrorCode::AccessDenied,
                ErrorDomain::Access,
                "The client certificate's subject holds control characters, so the caller cannot be named to the daemon: the call is refused",
            )
        })?;
        headers.insert(CALLER_CERT_SUBJECT_METADATA, value);
    }
    if caller.remote {
        headers.insert(CALLER_REMOTE_METADATA, HeaderValue::from_static("1"));
    }
    if !caller.groups.is_empty() {
        let groups = caller
            .groups
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if let Ok(value) = HeaderValue::from_str(&groups) {
            headers.insert(CALLER_GROUPS_METADATA, value);
        }
    }
    Ok(())
}

/// The innermost cause of a transport error, for the message.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// UNAVAILABLE with NO_CONNECT: the backend is down (or went away during the call).
fn no_connect(key: BackendKey, socket: &std::path::Path, uri: &ConnectUri, cause: &str) -> tonic::Status {
    let daemon = key.daemon.name;
    let hint = if key.session {
        format!("start {daemon} (a direct client connection starts session daemons on demand)")
    } else {
        format!("start it with `systemctl start {daemon}.socket`")
    };
    status(
        ErrorCode::NoConnect,
        ErrorDomain::Remote,
        format!(
            "Cannot reach {daemon} for {} at '{}' ({cause}): {hint}",
            uri.local(),
            socket.display(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rvirt::route::{VIRTNETWORKD, VIRTQEMUD, VIRTSECRETD, VIRTSTORAGED};
    use rvirt_proto::error::from_status;

    fn uri(text: &str) -> ConnectUri {
        ConnectUri::parse(text).expect("uri")
    }

    fn key(daemon: DaemonId, session: bool, read_only: bool) -> Target {
        Target::Daemon(BackendKey {
            daemon,
            session,
            read_only,
        })
    }

    fn refused(result: Result<Target, tonic::Status>) -> (ErrorCode, String) {
        let status = result.expect_err("refused");
        (from_status(&status).code(), status.message().to_owned())
    }

    #[test]
    fn qemu_system_reaches_each_service_owner() {
        let u = uri("qemu:///system");
        let rw = SocketKind::ReadWrite;
        assert_eq!(
            route_call(&u, "rvirt.v1.DomainService", rw).ok(),
            Some(key(VIRTQEMUD, false, false))
        );
        assert_eq!(
            route_call(&u, "rvirt.v1.NetworkService", rw).ok(),
            Some(key(VIRTNETWORKD, false, false))
        );
        assert_eq!(
            route_call(&u, "rvirt.v1.StorageVolService", rw).ok(),
            Some(key(VIRTSTORAGED, false, false))
        );
        assert_eq!(
            route_call(&u, "rvirt.v1.SecretService", rw).ok(),
            Some(key(VIRTSECRETD, false, false))
        );
    }

    #[test]
    fn read_only_callers_reach_the_read_only_socket_in_system_mode_only() {
        let ro = SocketKind::ReadOnly;
        assert_eq!(
            route_call(&uri("secret:///system"), "rvirt.v1.SecretService", ro).ok(),
            Some(key(VIRTSECRETD, false, true))
        );
        assert_eq!(
            route_call(&uri("secret:///session"), "rvirt.v1.SecretService", ro).ok(),
            Some(key(VIRTSECRETD, true, false))
        );
    }

    #[test]
    fn unrouted_pair_is_unsupported_naming_uri_and_service() {
        let (code, message) = refused(route_call(
            &uri("network:///system"),
            "rvirt.v1.SecretService",
            SocketKind::ReadWrite,
        ));
        assert_eq!(code, ErrorCode::OperationUnsupported);
        assert!(message.contains("network:///system"), "{message}");
        assert!(message.contains("rvirt.v1.SecretService"), "{message}");
    }

    #[test]
    fn remote_uri_goes_to_the_remote_proxy() {
        assert_eq!(
            route_call(
                &uri("qemu+tls://host.example/system"),
                "rvirt.v1.DomainService",
                SocketKind::ReadWrite,
            )
            .ok(),
            Some(Target::Remote(RemoteKey {
                host: "host.example".into(),
                port: 16514,
                tls: true
            }))
        );
        assert_eq!(
            route_call(
                &uri("secret+tcp://10.0.0.1:7/system"),
                "rvirt.v1.SecretService",
                SocketKind::ReadWrite,
            )
            .ok(),
            Some(Target::Remote(RemoteKey {
                host: "10.0.0.1".into(),
                port: 7,
                tls: false
            }))
        );
    }

    #[test]
    fn a_remote_uri_may_not_name_the_proxys_certificates() {
        let (code, message) = refused(route_call(
            &uri("qemu+tls://h/system?pkipath=/home/u/.pki"),
            "rvirt.v1.DomainService",
            SocketKind::ReadWrite,
        ));
        assert_eq!(code, ErrorCode::OperationUnsupported);
        assert!(message.contains("pkipath"), "{message}");
    }

    #[test]
    fn client_sent_certificate_subject_is_removed() {
        let mut headers = http::HeaderMap::new();
        headers.insert(CALLER_CERT_SUBJECT_METADATA, HeaderValue::from_static("CN=admin"));
        strip_identity(&mut headers);
        assert!(headers.is_empty());
    }

    #[test]
    fn a_socket_parameter_is_refused() {
        let (code, _) = refused(route_call(
            &uri("qemu:///system?socket=/tmp/evil"),
            "rvirt.v1.DomainService",
            SocketKind::ReadWrite,
        ));
        assert_eq!(code, ErrorCode::OperationUnsupported);
    }

    #[test]
    fn test_uris_go_to_the_test_driver() {
        assert_eq!(
            route_call(
                &uri("test:///default"),
                "rvirt.v1.DomainService",
                SocketKind::ReadOnly
            )
            .ok(),
            Some(Target::TestDriver)
        );
    }

    #[test]
    fn backend_sockets_follow_the_daemon_paths() {
        let system = BaseDirs::from_env(Mode::System, Some(PathBuf::from("/r")), &|_| None);
        let session = BaseDirs::from_env(Mode::Session, None, &|name| {
            (name == "XDG_RUNTIME_DIR").then(|| PathBuf::from("/run/user/1000"))
        });
        let k = |session, read_only| BackendKey {
            daemon: VIRTSECRETD,
            session,
            read_only,
        };
        assert_eq!(
            backend_socket(k(false, false), &system, &session),
            PathBuf::from("/r/run/rvirt/virtsecretd-sock")
        );
        assert_eq!(
            backend_socket(k(false, true), &system, &session),
            PathBuf::from("/r/run/rvirt/virtsecretd-sock-ro")
        );
        assert_eq!(
            backend_socket(k(true, false), &system, &session),
            PathBuf::from("/run/user/1000/rvirt/virtsecretd-sock")
        );
    }

    #[test]
    fn client_sent_identity_is_replaced_by_the_callers() {
        let mut headers = http::HeaderMap::new();
        headers.insert(CALLER_UID_METADATA, HeaderValue::from_static("0"));
        headers.append(CALLER_UID_METADATA, HeaderValue::from_static("1"));
        headers.insert(CALLER_GROUPS_METADATA, HeaderValue::from_static("0"));
        let caller = ClientInfo {
            id: 1,
            uid: 1000,
            gid: 100,
            groups: Vec::new(),
            pid: Some(42),
            socket: SocketKind::ReadWrite,
            connected_at: std::time::SystemTime::now(),
            cert_subject: None,
            remote: false,
        };
        set_identity(&mut headers, &caller).expect("identity");
        let all: Vec<_> = headers.get_all(CALLER_UID_METADATA).iter().collect();
        assert_eq!(all, vec![&HeaderValue::from_static("1000")]);
        assert_eq!(
            headers.get(CALLER_GID_METADATA),
            Some(&HeaderValue::from_static("100"))
        );
        assert_eq!(
            headers.get(CALLER_PID_METADATA),
            Some(&HeaderValue::from_static("42"))
        );
        assert!(headers.get(CALLER_GROUPS_METADATA).is_none());
        assert!(headers.get(CALLER_REMOTE_METADATA).is_none());
    }

    #[test]
    fn a_remote_callers_identity_names_its_certificate_and_that_it_is_remote() {
        let mut headers = http::HeaderMap::new();
        let caller = ClientInfo {
            id: 1,
            uid: crate::remote::REMOTE_NOBODY,
            gid: crate::remote::REMOTE_NOBODY,
            groups: Vec::new(),
            pid: None,
            socket: SocketKind::ReadWrite,
            connected_at: std::time::SystemTime::now(),
            cert_subject: Some("C=FR,CN=Zoé".into()),
            remote: true,
        };
        set_identity(&mut headers, &caller).expect("identity");
        assert_eq!(
            headers.get(CALLER_CERT_SUBJECT_METADATA).map(|v| v.as_bytes()),
            Some("C=FR,CN=Zoé".as_bytes())
        );
        assert_eq!(
            headers.get(CALLER_REMOTE_METADATA),
            Some(&HeaderValue::from_static("1"))
        );
        let bad = ClientInfo {
            cert_subject: Some("CN=a\nb".into()),
            ..caller
        };
        assert!(set_identity(&mut headers, &bad).is_err());
    }
}
