//! Opening a connection: from a URI to a gRPC transport per service.
//!
//! Socket choice follows libvirt: `mode=direct` talks to the owning daemon's socket (by the
//! route table the proxy uses), `mode=legacy` always to virtproxyd's `rvirt-sock`, and the
//! default `mode=auto` goes direct when the owning daemon's socket exists, else through the
//! proxy. A read-only connection uses the `-sock-ro` sockets and refuses non-read calls before
//! they leave the process. `test:///` URIs are served in process by the test driver. Opening a
//! `*:///session` URI whose daemon is not running starts it (`--timeout 120`) and waits for its
//! readiness notification, as libvirt does.
//!
//! A URI with a host (`qemu+tls://host[:port]/system`, `qemu+tcp://...`) dials the remote
//! virtproxyd over TLS (port 16514, mutual authentication, see [`crate::tls`]; needs the `tls`
//! feature) or plain TCP (port 16509), and sends the URI with its host stripped
//! (`qemu:///system`) as `rvirt-uri`, so the remote proxy routes it as a local call. Transport
//! failures (refused, unknown CA, certificate subject not allowed, no client certificate) come
//! back as errors that name the cause.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rvirt_proto::access::{self, AccessLevel};
use rvirt_proto::v1::{ErrorCode, ErrorDomain};
use tonic::body::Body;
use tower::util::BoxCloneSyncService;

use crate::error::{Error, Result};
use crate::paths::{BaseDirs, Mode};
use crate::route::{self, DaemonId, Owner, VIRTPROXYD};
use crate::uri::{ConnectUri, Driver, Instance, SocketMode, Transport};

/// An error a transport returned (a concrete type: boxed trait objects as a service's error
/// type trip the compiler's higher-ranked lifetime checks in boxed futures).
#[derive(Debug)]
pub struct BoxError(pub Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for BoxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BoxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A gRPC transport: a socket channel or the in-process test driver, boxed so every generated
/// client has one type.
pub type GrpcTransport = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;

/// How to open a connection.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Read-only: the `-sock-ro` sockets, read calls only.
    pub read_only: bool,
    /// The deadline of every unary call.
    pub deadline: Duration,
    /// Start a session daemon that is not running.
    pub autostart: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            deadline: Duration::from_secs(60),
            autostart: true,
        }
    }
}

/// An open connection: which URI, and how each service is reached.
#[derive(Clone)]
pub struct Connect {
    uri: Arc<ConnectUri>,
    read_only: bool,
    transports: Arc<HashMap<&'static str, GrpcTransport>>,
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("uri", &self.uri.to_string())
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// The socket a local connection uses to reach `owner`.
pub fn socket_path(
    uri: &ConnectUri,
    owner: DaemonId,
    read_only: bool,
    base: &BaseDirs,
    exists: &dyn Fn(&Path) -> bool,
) -> PathBuf {
    if let Some(socket) = &uri.socket {
        return socket.clone();
    }
    let session = uri.instance == Instance::Session;
    let name = |stem: &str| {
        if read_only && !session {
            format!("{stem}-sock-ro")
        } else {
            format!("{stem}-sock")
        }
    };
    let direct = base.runtime.join(name(owner.sockets));
    let proxy = base.runtime.join(name(VIRTPROXYD.sockets));
    match uri.mode {
        SocketMode::Direct => direct,
        SocketMode::Legacy => proxy,
        SocketMode::Auto if exists(&direct) => direct,
        SocketMode::Auto if exists(&proxy) => proxy,
        // Neither exists: name the daemon's socket in the error (and autostart it in session mode).
        SocketMode::Auto => direct,
    }
}

impl Connect {
    /// Opens a read-write connection to `uri` (`qemu:///system`, `test:///default`, ...).
    pub async fn open(uri: &str) -> Result<Connect> {
        Self::open_with(ConnectUri::parse(uri)?, OpenOptions::default()).await
    }

    /// Opens a read-only connection.
    pub async fn open_read_only(uri: &str) -> Result<Connect> {
        Self::open_with(
            ConnectUri::parse(uri)?,
            OpenOptions {
                read_only: true,
                ..OpenOptions::default()
            },
        )
        .await
    }

    /// Opens a connection with explicit options.
    pub async fn open_with(uri: ConnectUri, options: OpenOptions) -> Result<Connect> {
        if uri.is_remote() || uri.transport != Transport::Unix {
            return Self::open_remote(uri, options).await;
        }
        let mut transports: HashMap<&'static str, GrpcTransport> = HashMap::new();
        if uri.driver == Driver::Test {
            let transport = crate::test_driver::transport(&uri.instance).await?;
            for service in route::SERVICES {
                transports.insert(service, wrap(transport.clone(), &uri, options.read_only));
            }
        } else {
            let mode = if uri.instance == Instance::Session {
                Mode::Session
            } else {
                Mode::System
            };
            let base = BaseDirs::new(mode);
            let exists = |p: &Path| p.exists();
            let mut channels: HashMap<PathBuf, GrpcTransport> = HashMap::new();
            let primary = primary_daemon(uri.driver);
            let primary_socket = socket_path(&uri, primary, options.read_only, &base, &exists);
            if !primary_socket.exists() && mode == Mode::Session && options.autostart && uri.socket.is_none()
            {
                crate::autostart::start_session_daemon(primary, &primary_socket).await?;
            }
            for service in route::SERVICES {
                let Some(Owner::Daemon(daemon)) = route::owner(uri.driver, service) else {
                    continue;
                };
                let path = socket_path(&uri, daemon, options.read_only, &base, &exists);
                let transport = match channels.get(&path) {
                    Some(t) => t.clone(),
                    None => {
                        let eager = path == primary_socket;
                        let t = socket_transport(&path, options.deadline, eager).await?;
                        channels.insert(path, t.clone());
                        t
                    }
                };
                transports.insert(service, wrap(transport, &uri, options.read_only));
            }
        }
        Ok(Connect {
            uri: Arc::new(uri),
            read_only: options.read_only,
            transports: Arc::new(transports),
        })
    }

    /// Opens a connection to the virtproxyd on the URI's host, over TLS or TCP.
    async fn open_remote(uri: ConnectUri, options: OpenOptions) -> Result<Connect> {
        if uri.no_verify {
            return Err(Error::new(
                ErrorCode::NoSupport,
                ErrorDomain::Remote,
                format!(
                    "{uri}: no_verify=1 is not supported: install the CA that signed the server's certificate"
                ),
            ));
        }
        let transport = remote_transport(&uri, options.deadline).await?;
        let mut transports: HashMap<&'static str, GrpcTransport> = HashMap::new();
        for service in route::SERVICES {
            if route::owner(uri.driver, service).is_some() {
                transports.insert(service, wrap(transport.clone(), &uri, options.read_only));
            }
        }
        Ok(Connect {
            uri: Arc::new(uri),
            read_only: options.read_only,
            transports: Arc::new(transports),
        })
    }

    /// The URI the connection was opened with.
    pub fn uri(&self) -> &ConnectUri {
        &self.uri
    }

    /// Whether the connection is read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The transport for gRPC service `service` (`rvirt.v1.DomainService`), or the error a
    /// libvirt client would see for a URI that does not serve it.
    pub fn transport(&self, service: &str) -> Result<GrpcTransport> {
        self.transports.get(service).cloned().ok_or_else(|| {
            Error::new(
                ErrorCode::NoSupport,
                ErrorDomain::Rpc,
                format!(
                    "{} does not serve {service}: use a qemu:/// URI, or the URI of that driver",
                    self.uri
                ),
            )
        })
    }
}

fn primary_daemon(driver: Driver) -> DaemonId {
    match driver {
        Driver::Network => route::VIRTNETWORKD,
        Driver::Storage => route::VIRTSTORAGED,
        Driver::Secret => route::VIRTSECRETD,
        Driver::Qemu | Driver::Test => route::VIRTQEMUD,
    }
}

async fn socket_transport(path: &Path, deadline: Duration, eager: bool) -> Result<GrpcTransport> {
    let socket = path.to_path_buf();
    let connector = tower::service_fn(move |_: http::Uri| {
        let socket = socket.clone();
        async move {
            tokio::net::UnixStream::connect(socket)
                .await
                .map(hyper_util::rt::TokioIo::new)
        }
    });
    // Windows and frames sized for bulk streams (volume upload/download, 1 MiB messages).
    let endpoint = tonic::transport::Endpoint::from_static("http://localhost")
        .timeout(deadline)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20);
    let channel = if eager {
        endpoint.connect_with_connector(connector).await.map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(ToString::to_string)
                .unwrap_or_else(|| e.to_string());
            Error::new(
                ErrorCode::NoConnect,
                ErrorDomain::Rpc,
                format!(
                    "Failed to connect socket to '{}': {cause}; is the daemon running?",
                    path.display()
                ),
            )
        })?
    } else {
        endpoint.connect_with_connector_lazy(connector)
    };
    Ok(BoxCloneSyncService::new(tower::ServiceExt::map_err(
        channel,
        |e| BoxError(Box::new(e)),
    )))
}

/// The host and port a remote URI dials (`localhost` without a host; the transport's default
/// port without a port), and `host:port` as messages show it.
pub fn remote_target(uri: &ConnectUri) -> (String, u16, String) {
    let host = uri.host.clone().unwrap_or_else(|| "localhost".to_owned());
    let port = uri.port.or(uri.transport.default_port()).unwrap_or(16514);
    let shown = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    (host, port, shown)
}

/// What a remote transport needs to explain its failures.
#[derive(Debug)]
struct RemoteContext {
    target: String,
    transport: &'static str,
    pki: Option<crate::tls::PkiPaths>,
}

impl RemoteContext {
    fn error(&self, e: &(dyn std::error::Error + 'static)) -> Error {
        let failure = crate::tls::classify(e);
        crate::tls::failure_error(&failure, &self.target, self.transport, self.pki.as_ref())
    }
}

/// A channel to the remote virtproxyd of `uri`, connected now (so an unreachable host, or a
/// server certificate the client does not trust, fails the open).
async fn remote_transport(uri: &ConnectUri, deadline: Duration) -> Result<GrpcTransport> {
    let (host, port, shown) = remote_target(uri);
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{shown}"))
        .map_err(|e| Error::new(ErrorCode::InvalidArg, ErrorDomain::Uri, format!("{uri}: {e}")))?
        .timeout(deadline)
        .tcp_nodelay(true);
    let (context, connected) = match uri.transport {
        Transport::Tcp => {
            let context = RemoteContext {
                target: shown,
                transport: "tcp",
                pki: None,
            };
            let connector = tower::service_fn(move |_: http::Uri| {
                let host = host.clone();
                async move {
                    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                    let _ = tcp.set_nodelay(true);
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tcp))
                }
            });
            let connected = endpoint.connect_with_connector(connector).await;
            (context, connected)
        }
        Transport::Tls => tls_channel(uri, endpoint, host, port, shown).await?,
        Transport::Unix => {
            return Err(Error::new(
                ErrorCode::InternalError,
                ErrorDomain::Remote,
                format!("{uri} is local: report a bug"),
            ));
        }
    };
    let context = Arc::new(context);
    let channel = connected.map_err(|e| context.error(&e))?;
    Ok(BoxCloneSyncService::new(RemoteService {
        inner: channel,
        context,
    }))
}

#[cfg(feature = "tls")]
async fn tls_channel(
    uri: &ConnectUri,
    endpoint: tonic::transport::Endpoint,
    host: String,
    port: u16,
    shown: String,
) -> Result<(
    RemoteContext,
    std::result::Result<tonic::transport::Channel, tonic::transport::Error>,
)> {
    let pki = crate::tls::PkiPaths::client(uri.pkipath.as_deref());
    let config = crate::tls::client::config(&pki)?;
    let context = RemoteContext {
        target: shown,
        transport: "tls",
        pki: Some(pki),
    };
    let connector = tower::service_fn(move |_: http::Uri| {
        let host = host.clone();
        let config = Arc::clone(&config);
        async move {
            let tls = crate::tls::client::connect(config, &host, port).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let connected = endpoint.connect_with_connector(connector).await;
    Ok((context, connected))
}

#[cfg(not(feature = "tls"))]
async fn tls_channel(
    uri: &ConnectUri,
    _endpoint: tonic::transport::Endpoint,
    _host: String,
    _port: u16,
    _shown: String,
) -> Result<(
    RemoteContext,
    std::result::Result<tonic::transport::Channel, tonic::transport::Error>,
)> {
    Err(Error::new(
        ErrorCode::NoSupport,
        ErrorDomain::Remote,
        format!(
            "{uri}: this build of the client library has no TLS support: build rvirt with its `tls` feature"
        ),
    ))
}

/// A remote channel whose transport failures (the server refused the client certificate,
/// the connection dropped) become rvirt errors naming the cause, instead of "transport error".
#[derive(Clone)]
struct RemoteService {
    inner: tonic::transport::Channel,
    context: Arc<RemoteContext>,
}

impl tower::Service<http::Request<Body>> for RemoteService {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        tower::Service::poll_ready(&mut self.inner, cx).map_err(|e| BoxError(Box::new(e)))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let call = tower::Service::call(&mut self.inner, req);
        let context = Arc::clone(&self.context);
        Box::pin(async move {
            match call.await {
                Ok(response) => Ok(response),
                Err(e) => {
                    let error = context.error(&e);
                    Ok(rvirt_proto::error::status(error.code, error.domain, error.message).into_http())
                }
            }
        })
    }
}

/// Adds `rvirt-uri` to every call, and refuses non-read calls on a read-only connection.
fn wrap(inner: GrpcTransport, uri: &ConnectUri, read_only: bool) -> GrpcTransport {
    let value = http::HeaderValue::from_str(&uri.local()).ok();
    BoxCloneSyncService::new(UriService {
        inner,
        value,
        read_only,
    })
}

#[derive(Clone)]
struct UriService {
    inner: GrpcTransport,
    value: Option<http::HeaderValue>,
    read_only: bool,
}

impl tower::Service<http::Request<Body>> for UriService {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        if self.read_only
            && let Some(method) = access::lookup(req.uri().path())
            && method.level != AccessLevel::Read
        {
            let status = rvirt_proto::error::status(
                ErrorCode::OperationDenied,
                ErrorDomain::Access,
                format!(
                    "{} needs {} access, but this connection is read-only",
                    method.method,
                    method.level.as_str()
                ),
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        if let Some(value) = &self.value {
            req.headers_mut()
                .insert(rvirt_proto::URI_METADATA_KEY, value.clone());
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BaseDirs {
        BaseDirs::from_env(Mode::System, Some(PathBuf::from("/r")), &|_| None)
    }

    fn uri(text: &str) -> ConnectUri {
        ConnectUri::parse(text).expect("uri")
    }

    #[test]
    fn auto_prefers_the_daemon_then_the_proxy() {
        let u = uri("qemu:///system");
        let daemon = PathBuf::from("/r/run/rvirt/virtqemud-sock");
        let proxy = PathBuf::from("/r/run/rvirt/rvirt-sock");
        assert_eq!(
            socket_path(&u, route::VIRTQEMUD, false, &base(), &|p| p == daemon),
            daemon
        );
        assert_eq!(
            socket_path(&u, route::VIRTQEMUD, false, &base(), &|p| p == proxy),
            proxy
        );
        assert_eq!(
            socket_path(&u, route::VIRTQEMUD, false, &base(), &|_| false),
            daemon
        );
    }

    #[test]
    fn direct_legacy_read_only_and_explicit_socket() {
        let all = |_: &Path| true;
        assert_eq!(
            socket_path(
                &uri("qemu:///system?mode=legacy"),
                route::VIRTQEMUD,
                false,
                &base(),
                &all
            ),
            PathBuf::from("/r/run/rvirt/rvirt-sock")
        );
        assert_eq!(
            socket_path(
                &uri("qemu:///system?mode=direct"),
                route::VIRTNETWORKD,
                true,
                &base(),
                &|_| false
            ),
            PathBuf::from("/r/run/rvirt/virtnetworkd-sock-ro")
        );
        assert_eq!(
            socket_path(
                &uri("qemu:///system?socket=/x/y"),
                route::VIRTQEMUD,
                true,
                &base(),
                &all
            ),
            PathBuf::from("/x/y")
        );
    }
}
