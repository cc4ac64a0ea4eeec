//! Remote access: virtproxyd's TLS (16514) and plain TCP (16509) listeners, and the remote hop
//! (a call whose URI names a host goes to that host's virtproxyd).
//!
//! Listeners start with `--listen` (TLS, and TCP when `listen_tcp = 1`) or when
//! `virtproxyd.conf` sets `listen_tls = 1` / `listen_tcp = 1`. Plain TCP additionally needs
//! `auth_tcp = "none"`: it has no authentication at all, for tests and trusted networks only.
//! Calls that arrive over them are forwarded exactly as local ones (the same [`Forwarder`] and
//! route table); what differs is the caller's identity and what it may do:
//!
//! - the caller is a [`ClientInfo`] whose uid/gid are "nobody" (`u32::MAX - 1`, never used to
//!   grant anything) and whose `cert_subject` is the client certificate's subject, plus a
//!   [`RemotePeer`] (transport, address); it is registered with the runtime's client registry
//!   (admin `ListClients`, `max_clients`, `max_anonymous_clients` during the handshake, the idle
//!   timer);
//! - the access policy file's rules decide first (a rule may name the `cert_subject`); without a
//!   matching rule, a TLS caller whose certificate passed the CA and `tls_allowed_dn_list`, and
//!   any caller over TCP with `auth_tcp = "none"`, may make read and write calls (libvirt gives
//!   such connections read-write access when no access driver is configured), while privileged
//!   calls (secret values) stay with local root; the admin service is never served remotely;
//! - the backend then receives the caller's identity as for a local caller, marked remote
//!   (`rvirt-caller-remote`), and checks again with the same rules: rules that name objects
//!   (`object = "web-*"`) can only be decided by the driver that resolves the object.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use rvirt_daemon::access::{AccessControl, Verdict, within};
use rvirt_daemon::clients::{ClientHandle, PeerIdentity};
use rvirt_daemon::listen::{RemotePeer, RemoteTransport, SocketKind};
use rvirt_daemon::{ClientInfo, DaemonContext};
use rvirt_proto::access as table;
use rvirt_proto::error::status;
use rvirt_proto::v1::{ErrorCode, ErrorDomain};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::Forwarder;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The uid and gid of a remote caller's [`ClientInfo`]: "nobody", never used to grant access.
pub const REMOTE_NOBODY: u32 = u32::MAX - 1;

/// The remote listeners that run.
#[derive(Debug, Default)]
pub struct RemoteListeners {
    /// The addresses listened on, with their transport.
    pub addresses: Vec<(RemoteTransport, SocketAddr)>,
    /// The TLS listener's server configuration, when it runs.
    pub tls: Option<Arc<TlsServer>>,
}

/// The TLS listener's server configuration (certificates, CA, revocation list, allow-list):
/// read for every new connection, replaced by [`reload`](Self::reload).
#[derive(Debug)]
pub struct TlsServer {
    config: std::sync::RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsServer {
    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .config
            .read()
            .map(|c| Arc::clone(&c))
            .unwrap_or_else(|poisoned| Arc::clone(&poisoned.into_inner()));
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Reads the PKI files again for `config`: new connections use the new certificates,
    /// connections already made keep theirs. Files that do not make a configuration leave
    /// the one in force.
    pub fn reload(
        &self,
        config: &rvirt_daemon::config::RemoteConfig,
        mode: rvirt::paths::Mode,
    ) -> Result<(), String> {
        let fresh = crate::tls::server_config(config, mode)
            .map_err(|e| format!("TLS certificates not reloaded, the previous ones stay in use: {e}"))?;
        match self.config.write() {
            Ok(mut current) => *current = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        tracing::info!("TLS certificates reloaded");
        Ok(())
    }
}

/// Starts the TCP/TLS listeners the configuration and `--listen` ask for, serving `forwarder`'s
/// services until the daemon shuts down. Errors (certificates missing, address in use, TCP
/// without `auth_tcp = "none"`) stop the daemon before it reports readiness.
pub async fn start(ctx: &Arc<DaemonContext>, forwarder: &Forwarder) -> Result<RemoteListeners, String> {
    let config = ctx
        .config
        .read()
        .map_err(|_| "configuration lock poisoned")?
        .remote
        .clone();
    let activated = ctx.take_activated_remote();
    // Socket activation (virtproxyd-tls.socket, virtproxyd-tcp.socket): the sockets systemd
    // passed are served, and listen_tls, listen_tcp and the ports are not consulted.
    let transports: Vec<RemoteTransport> = if activated.is_empty() {
        let mut wanted = Vec::new();
        if config.tls_enabled(ctx.args.listen) {
            wanted.push(RemoteTransport::Tls);
        }
        if config.tcp_enabled() {
            wanted.push(RemoteTransport::Tcp);
        }
        wanted
    } else {
        activated.iter().map(|(_, t)| *t).collect()
    };
    // Certificates and auth_tcp are checked before any socket is served.
    let tls = if transports.contains(&RemoteTransport::Tls) {
        Some(Arc::new(TlsServer {
            config: std::sync::RwLock::new(crate::tls::server_config(&config, ctx.mode)?),
        }))
    } else {
        None
    };
    if transports.contains(&RemoteTransport::Tcp) && config.auth_tcp != "none" {
        return Err(tcp_without_auth_none(&config.auth_tcp));
    }
    let mut sockets = Vec::new();
    if activated.is_empty() {
        for transport in transports {
            let (port, key) = match transport {
                RemoteTransport::Tls => (config.tls_port, "tls_port"),
                RemoteTransport::Tcp => (config.tcp_port, "tcp_port"),
            };
            let (listener, address) = bind(&config.listen_addr, port, key).await?;
            sockets.push((transport, listener, address, ""));
        }
    } else {
        for (fd, transport) in activated {
            let (listener, address) = from_systemd(fd, transport)?;
            sockets.push((transport, listener, address, " on a socket systemd passed"));
        }
    }
    let mut listeners = RemoteListeners::default();
    for (transport, listener, address, how) in sockets {
        match transport {
            RemoteTransport::Tls => {
                serve(ctx, forwarder, listener, tls.clone());
                tracing::info!(%address, "listening for TLS clients{how}");
            }
            RemoteTransport::Tcp => {
                serve(ctx, forwarder, listener, None);
                tracing::warn!(%address, "listening for plain TCP clients without authentication (auth_tcp = \"none\"){how}");
            }
        }
        listeners.addresses.push((transport, address));
    }
    listeners.tls = tls;
    Ok(listeners)
}

/// A TCP socket systemd passed for `transport`, ready for tokio.
fn from_systemd(
    fd: std::os::fd::OwnedFd,
    transport: RemoteTransport,
) -> Result<(TcpListener, SocketAddr), String> {
    let std_listener = std::net::TcpListener::from(fd);
    let address = std_listener.local_addr().map_err(|e| {
        format!(
            "a socket systemd passed for {} is not a TCP socket: {e}",
            transport.as_str()
        )
    })?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| format!("the {} socket systemd passed: {e}", transport.as_str()))?;
    let listener = TcpListener::from_std(std_listener)
        .map_err(|e| format!("the {} socket systemd passed: {e}", transport.as_str()))?;
    Ok((listener, address))
}

fn tcp_without_auth_none(auth_tcp: &str) -> String {
    format!(
        "listen_tcp = 1 needs auth_tcp = \"none\" (auth_tcp is {auth_tcp:?}; SASL is not supported): plain TCP then has no authentication at all, so use it only for tests or trusted networks, and TLS (listen_tls) otherwise"
    )
}

/// Binds `listen_addr:port`; an empty address listens on every address (IPv6 and IPv4, or IPv4
/// alone where IPv6 is off).
async fn bind(listen_addr: &str, port: u16, key: &str) -> Result<(TcpListener, SocketAddr), String> {
    let candidates: Vec<String> = if listen_addr.is_empty() {
        vec![format!("[::]:{port}"), format!("0.0.0.0:{port}")]
    } else if listen_addr.contains(':') && !listen_addr.starts_with('[') {
        vec![format!("[{listen_addr}]:{port}")]
    } else {
        vec![format!("{listen_addr}:{port}")]
    };
    let mut last = String::new();
    for candidate in &candidates {
        match TcpListener::bind(candidate.as_str()).await {
            Ok(listener) => {
                let address = listener
                    .local_addr()
                    .map_err(|e| format!("cannot listen on {candidate}: {e}"))?;
                return Ok((listener, address));
            }
            Err(e) => last = format!("cannot listen on {candidate} ({e}): check listen_addr and {key}"),
        }
    }
    Err(last)
}

/// Accepts connections on `listener` (TLS handshakes run in their own tasks, so a slow client
/// holds up no one) and serves them until shutdown.
fn serve(
    ctx: &Arc<DaemonContext>,
    forwarder: &Forwarder,
    listener: TcpListener,
    tls: Option<Arc<TlsServer>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<RemoteStream>>(64);
    let accept_ctx = Arc::clone(ctx);
    let mut stop = ctx.shutdown_requested();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, address) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            let limits = &accept_ctx.limits;
            let pending = match accept_ctx.clients.admit_anonymous(
                limits.max_clients.load(Ordering::Relaxed),
                limits.max_anonymous_clients.load(Ordering::Relaxed),
                &[SocketKind::ReadWrite, SocketKind::ReadOnly],
            ) {
                Ok(pending) => pending,
                Err(why) => {
                    tracing::warn!(%address, "remote connection refused: {why}");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let tx = tx.clone();
            let tls = tls.as_ref().map(|t| t.acceptor());
            let ctx = Arc::clone(&accept_ctx);
            tokio::spawn(async move {
                let stream = match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => {
                                let subject = tls
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|certs| certs.first())
                                    .and_then(|cert| crate::tls::subject_dn(cert));
                                let fd = tls.get_ref().0.as_raw_fd();
                                let handle = register(&ctx, subject, fd, RemoteTransport::Tls, address);
                                RemoteStream::new(MaybeTls::Tls(Box::new(tls)), address, handle)
                            }
                            Ok(Err(e)) => {
                                tracing::info!(%address, error = %e, "TLS handshake refused");
                                return;
                            }
                            Err(_) => {
                                tracing::info!(%address, "TLS handshake timed out");
                                return;
                            }
                        }
                    }
                    None => {
                        let handle = register(&ctx, None, tcp.as_raw_fd(), RemoteTransport::Tcp, address);
                        RemoteStream::new(MaybeTls::Plain(tcp), address, handle)
                    }
                };
                drop(pending);
                tracing::debug!(
                    %address,
                    subject = stream.info.client.cert_subject.as_deref().unwrap_or(""),
                    "remote client connected"
                );
                let _ = tx.send(Ok(stream)).await;
            });
        }
    });
    let routes = crate::routes(forwarder);
    let mut stop = ctx.shutdown_requested();
    let server = tonic::transport::Server::builder()
        .layer(rvirt_daemon::busy_poll::BusyPollLayer::new(Arc::clone(
            &ctx.busy_poll,
        )))
        .layer(RemoteAccessLayer {
            access: Arc::clone(&ctx.access),
        })
        .add_routes(routes)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "remote listener failed");
        }
    });
}

/// Registers an authenticated remote connection (socket `fd`, from `address`) with the
/// runtime's registry.
fn register(
    ctx: &DaemonContext,
    cert_subject: Option<String>,
    fd: std::os::fd::RawFd,
    transport: RemoteTransport,
    address: SocketAddr,
) -> ClientHandle {
    let identity = PeerIdentity {
        uid: REMOTE_NOBODY,
        gid: REMOTE_NOBODY,
        groups: Vec::new(),
        pid: None,
        cert_subject,
    };
    ctx.clients.register_remote(
        identity,
        SocketKind::ReadWrite,
        fd,
        RemotePeer { transport, address },
    )
}

/// A TLS stream or a plain TCP one.
#[derive(Debug)]
pub enum MaybeTls<S> {
    /// TLS over TCP.
    Tls(Box<S>),
    /// Plain TCP.
    Plain(TcpStream),
}

impl<S: AsyncRead + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Tls(s) => s.is_write_vectored(),
            MaybeTls::Plain(s) => s.is_write_vectored(),
        }
    }
}

/// How the proxy dials another host's virtproxyd for the remote hop: TLS with the proxy's own
/// client certificate (the client layout of [`rvirt::tls::PkiPaths`]), or plain TCP.
#[derive(Debug, Clone)]
pub struct RemoteDial {
    /// The host.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The TLS client configuration; `None` for plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// The stream of a dialed remote hop.
pub type DialedStream = MaybeTls<rvirt::tls::client::TlsConnection>;

impl RemoteDial {
    /// Connects (and runs the TLS handshake).
    pub async fn dial(&self) -> std::io::Result<DialedStream> {
        match &self.tls {
            Some(config) => {
                let tls = rvirt::tls::client::connect(Arc::clone(config), &self.host, self.port).await?;
                Ok(MaybeTls::Tls(Box::new(tls)))
            }
            None => {
                let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
                let _ = tcp.set_nodelay(true);
                Ok(MaybeTls::Plain(tcp))
            }
        }
    }
}

/// Who a remote connection is: what the access layer and the forwarder see.
#[derive(Debug, Clone)]
pub struct RemoteConnection {
    /// The runtime's view (uid and gid "nobody").
    pub client: ClientInfo,
    /// The transport, address and certificate subject.
    pub peer: RemotePeer,
}

/// An accepted remote connection, listed in the registry while open.
#[derive(Debug)]
struct RemoteStream {
    // Declared first: unregistered before the stream closes its fd.
    _handle: ClientHandle,
    io: MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>,
    info: RemoteConnection,
}

impl RemoteStream {
    fn new(
        io: MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>,
        address: SocketAddr,
        handle: ClientHandle,
    ) -> RemoteStream {
        let transport = match io {
            MaybeTls::Tls(_) => RemoteTransport::Tls,
            MaybeTls::Plain(_) => RemoteTransport::Tcp,
        };
        RemoteStream {
            info: RemoteConnection {
                client: handle.info().clone(),
                peer: RemotePeer { transport, address },
            },
            _handle: handle,
            io,
        }
    }
}

impl tonic::transport::server::Connected for RemoteStream {
    type ConnectInfo = RemoteConnection;

    fn connect_info(&self) -> RemoteConnection {
        self.info.clone()
    }
}

impl AsyncRead for RemoteStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for RemoteStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Who the remote caller is, for messages: `the TLS client 'C=GB,CN=x' (1.2.3.4:5)`.
fn describe(client: &ClientInfo, peer: &RemotePeer) -> String {
    match &client.cert_subject {
        Some(subject) => format!(
            "the {} client '{subject}' ({})",
            peer.transport.as_str(),
            peer.address
        ),
        None => format!("the {} client {}", peer.transport.as_str(), peer.address),
    }
}

/// Decides whether a remote caller may make the call at gRPC `path`: the admin service never;
/// else as for local callers ([`rvirt_daemon::access::check_with_rules`]): the first rule of the
/// policy file that matches, else read and write calls yes (the certificate was checked),
/// privileged ones no. Rules that name objects leave the decision to the driver.
pub fn check_remote(
    path: &str,
    client: &ClientInfo,
    access: &AccessControl,
) -> Result<Verdict, tonic::Status> {
    if table::lookup(path).is_some_and(|m| m.service == "rvirt.v1.AdminService") {
        return Err(status(
            ErrorCode::OperationUnsupported,
            ErrorDomain::Admin,
            "The admin service is served only on the daemon's admin socket, never over the network",
        ));
    }
    access.check(path, SocketKind::ReadWrite, client)
}

/// The access check of the remote listeners: turns the connection's [`RemoteConnection`] into
/// the [`ClientInfo`] and [`RemotePeer`] extensions the forwarder reads, after [`check_remote`]
/// with the policy file's rules in force.
#[derive(Debug, Clone)]
pub struct RemoteAccessLayer {
    /// The daemon's access control (its policy file's rules).
    pub access: Arc<AccessControl>,
}

impl<S> tower::Layer<S> for RemoteAccessLayer {
    type Service = RemoteAccess<S>;

    fn layer(&self, inner: S) -> RemoteAccess<S> {
        RemoteAccess {
            inner,
            access: Arc::clone(&self.access),
        }
    }
}

/// The service [`RemoteAccessLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub struct RemoteAccess<S> {
    inner: S,
    access: Arc<AccessControl>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RemoteAccess<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let Some(connection) = req.extensions_mut().remove::<RemoteConnection>() else {
            let refused = status(
                ErrorCode::AccessDenied,
                ErrorDomain::Access,
                "The caller's identity is unknown, so the call is refused",
            );
            return Box::pin(std::future::ready(Ok(refused.into_http())));
        };
        let verdict = match check_remote(req.uri().path(), &connection.client, &self.access) {
            Ok(verdict) => verdict,
            Err(refused) => {
                tracing::info!(
                    path = req.uri().path(),
                    caller = describe(&connection.client, &connection.peer),
                    "remote call refused"
                );
                return Box::pin(std::future::ready(Ok(refused.into_http())));
            }
        };
        req.extensions_mut().insert(connection.client);
        req.extensions_mut().insert(connection.peer);
        match verdict {
            Verdict::Allowed => Box::pin(self.inner.call(req)),
            Verdict::ByObject(gate) => Box::pin(within(gate, self.inner.call(req))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rvirt_daemon::policy::Policy;
    use rvirt_proto::error::from_status;

    fn client() -> ClientInfo {
        ClientInfo {
            id: 1,
            uid: REMOTE_NOBODY,
            gid: REMOTE_NOBODY,
            groups: Vec::new(),
            pid: None,
            socket: SocketKind::ReadWrite,
            connected_at: std::time::SystemTime::now(),
            cert_subject: Some("C=GB,CN=client".into()),
            remote: true,
        }
    }

    fn check(path: &str, rules: &Policy) -> Result<Verdict, tonic::Status> {
        let base = rvirt_daemon::access::AccessPolicy {
            daemon_uid: 0,
            write_group: None,
        };
        check_remote(path, &client(), &AccessControl::new(base, rules.clone()))
    }

    #[test]
    fn remote_callers_may_read_and_write() {
        assert!(check("/rvirt.v1.SecretService/ListSecrets", Policy::empty()).is_ok());
        assert!(check("/rvirt.v1.SecretService/DefineSecretXml", Policy::empty()).is_ok());
    }

    #[test]
    fn remote_callers_may_not_make_privileged_calls() {
        let err = check("/rvirt.v1.SecretService/GetSecretValue", Policy::empty()).expect_err("privileged");
        assert_eq!(from_status(&err).code(), ErrorCode::AccessDenied);
        assert!(err.message().contains("C=GB,CN=client"), "{}", err.message());
    }

    #[test]
    fn policy_rules_on_the_certificate_subject_decide_first() {
        let rules = Policy::parse(
            "[[rule]]\neffect = \"deny\"\npermission = \"secret.save\"\ncert_subject = \"C=GB,*\"\n\n[[rule]]\neffect = \"allow\"\npermission = \"secret.read_secure\"\ncert_subject = \"*CN=client\"\n",
            &rvirt_daemon::policy::SystemNames,
        )
        .expect("policy");
        let err = check("/rvirt.v1.SecretService/DefineSecretXml", &rules).expect_err("denied by rule");
        assert_eq!(from_status(&err).code(), ErrorCode::AccessDenied);
        assert!(check("/rvirt.v1.SecretService/GetSecretValue", &rules).is_ok());
    }

    #[test]
    fn the_admin_service_is_never_remote() {
        let err = check("/rvirt.v1.AdminService/ListClients", Policy::empty()).expect_err("admin");
        assert_eq!(from_status(&err).code(), ErrorCode::OperationUnsupported);
    }
}
