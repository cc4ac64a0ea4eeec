//! Opening a connection: from a URI to a gRPC transport per service.
//!
//! Socket choice follows libvirt: `mode=direct` talks to the owning daemon's socket (by the
//! route table the proxy uses), `mode=legacy` always to virtproxyd's `rvirt-sock`, and the
//! default `mode=auto` goes direct when the owning daemon's socket exists, else through the
//! proxy. A read-only connection uses the `-sock-ro` sockets and refuses non-read calls before
//! they leave the process. `test:///` URIs are served in process by the test driver. Opening a
//! `*:///session` URI whose daemon is not running starts it (`--timeout 120`) and waits for its
//! readiness notification, as libvirt does.

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
            return Err(Error::new(
                ErrorCode::NoSupport,
                ErrorDomain::Remote,
                format!(
                    "Remote connections ({uri}) arrive with virtproxyd's TLS support; connect locally for now"
                ),
            ));
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
    let endpoint = tonic::transport::Endpoint::from_static("http://localhost").timeout(deadline);
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
