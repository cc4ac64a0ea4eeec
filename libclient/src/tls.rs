//! Remote connections: where certificates live (libvirt's PKI layout, with `rvirt` in place of
//! `libvirt`), the TLS client configuration, dialing a remote virtproxyd over TCP or TLS, and
//! turning TLS and TCP failures into sentences that name the cause.
//!
//! | who | CA | certificate | key |
//! |---|---|---|---|
//! | system server | `/etc/pki/CA/cacert.pem` | `/etc/pki/rvirt/servercert.pem` | `/etc/pki/rvirt/private/serverkey.pem` |
//! | system client | `/etc/pki/CA/cacert.pem` | `/etc/pki/rvirt/clientcert.pem` | `/etc/pki/rvirt/private/clientkey.pem` |
//! | session (`~/.pki/rvirt/`) | `cacert.pem` | `servercert.pem`, `clientcert.pem` | `serverkey.pem`, `clientkey.pem` |
//! | `pkipath=DIR` (client) | `DIR/cacert.pem` | `DIR/clientcert.pem` | `DIR/clientkey.pem` (or `DIR/private/clientkey.pem`) |
//!
//! `RVIRT_ROOT` prefixes the system and session paths (not `pkipath=`). A non-root client uses
//! `~/.pki/rvirt/` when its `cacert.pem` exists, else the system paths, as libvirt's client does.
//! A client without a certificate connects without one (the server then refuses it, naming why).
//!
//! The TLS parts need the crate's `tls` feature; plain TCP (`qemu+tcp://`) does not.

use std::path::{Path, PathBuf};

use rvirt_proto::v1::{ErrorCode, ErrorDomain};

use crate::error::Error;
use crate::paths::{Mode, ROOT_ENV, prefix};

/// The CA certificate of the system layout (libvirt's, shared with it).
pub const SYSTEM_CA_FILE: &str = "/etc/pki/CA/cacert.pem";
/// The directory of the system layout's certificates; keys are in its `private/`.
pub const SYSTEM_PKI_DIR: &str = "/etc/pki/rvirt";
/// The session layout's directory, under the home directory.
pub const USER_PKI_DIR: &str = ".pki/rvirt";

/// Where one side's CA, certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiPaths {
    /// The CA certificate(s) that sign the peer's certificate.
    pub ca: PathBuf,
    /// This side's certificate (chain).
    pub cert: PathBuf,
    /// This side's private key.
    pub key: PathBuf,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn rooted(root: Option<&Path>, path: PathBuf) -> PathBuf {
    match root {
        Some(root) => prefix(root, &path),
        None => path,
    }
}

impl PkiPaths {
    /// The server's paths for a daemon in `mode`, from the environment (`RVIRT_ROOT`, `HOME`).
    pub fn server(mode: Mode) -> PkiPaths {
        let home = env_path("HOME").unwrap_or_else(|| PathBuf::from("/"));
        Self::server_in(mode, env_path(ROOT_ENV).as_deref(), &home)
    }

    /// The server's paths with an explicit root and home directory.
    pub fn server_in(mode: Mode, root: Option<&Path>, home: &Path) -> PkiPaths {
        match mode {
            Mode::System => PkiPaths {
                ca: rooted(root, PathBuf::from(SYSTEM_CA_FILE)),
                cert: rooted(root, Path::new(SYSTEM_PKI_DIR).join("servercert.pem")),
                key: rooted(root, Path::new(SYSTEM_PKI_DIR).join("private/serverkey.pem")),
            },
            Mode::Session => {
                let dir = rooted(root, home.join(USER_PKI_DIR));
                PkiPaths {
                    ca: dir.join("cacert.pem"),
                    cert: dir.join("servercert.pem"),
                    key: dir.join("serverkey.pem"),
                }
            }
        }
    }

    /// The client's paths: `pkipath` when given, else from the environment.
    pub fn client(pkipath: Option<&Path>) -> PkiPaths {
        let home = env_path("HOME").unwrap_or_else(|| PathBuf::from("/"));
        let privileged = nix::unistd::geteuid().is_root();
        Self::client_in(pkipath, privileged, env_path(ROOT_ENV).as_deref(), &home, &|p| {
            p.exists()
        })
    }

    /// The client's paths with an explicit environment.
    pub fn client_in(
        pkipath: Option<&Path>,
        privileged: bool,
        root: Option<&Path>,
        home: &Path,
        exists: &dyn Fn(&Path) -> bool,
    ) -> PkiPaths {
        if let Some(dir) = pkipath {
            let flat = dir.join("clientkey.pem");
            let private = dir.join("private/clientkey.pem");
            return PkiPaths {
                ca: dir.join("cacert.pem"),
                cert: dir.join("clientcert.pem"),
                key: if !exists(&flat) && exists(&private) {
                    private
                } else {
                    flat
                },
            };
        }
        if !privileged {
            let dir = rooted(root, home.join(USER_PKI_DIR));
            if exists(&dir.join("cacert.pem")) {
                return PkiPaths {
                    ca: dir.join("cacert.pem"),
                    cert: dir.join("clientcert.pem"),
                    key: dir.join("clientkey.pem"),
                };
            }
        }
        PkiPaths {
            ca: rooted(root, PathBuf::from(SYSTEM_CA_FILE)),
            cert: rooted(root, Path::new(SYSTEM_PKI_DIR).join("clientcert.pem")),
            key: rooted(root, Path::new(SYSTEM_PKI_DIR).join("private/clientkey.pem")),
        }
    }
}

/// Why a remote connection or call failed, as far as the transport tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteFailure {
    /// Nothing listens there (or a firewall refused).
    Refused,
    /// The host could not be reached or resolved, or the connection timed out.
    Unreachable(String),
    /// The server does not know the CA that signed our certificate.
    ClientCertUnknownCa,
    /// The server refused our certificate's subject (`tls_allowed_dn_list`).
    ClientCertNotAllowed,
    /// The server requires a client certificate and we sent none.
    ClientCertMissing,
    /// The server's CA has revoked our certificate (its `crl_file` lists it).
    ClientCertRevoked,
    /// The server refused our certificate for another reason (expired, wrong purpose, ...).
    ClientCertRefused(String),
    /// The server's certificate is not signed by our CA.
    ServerCertUnknownCa,
    /// The server's certificate does not name the host we dialed.
    ServerCertWrongName(String),
    /// The server's certificate is expired or not yet valid.
    ServerCertExpired,
    /// The server's certificate is unacceptable for another reason.
    ServerCertBad(String),
    /// The peer does not speak TLS (a plain TCP server on a TLS URI, or the reverse).
    NotTls,
    /// Anything else, with the innermost cause.
    Other(String),
}

/// Classifies a transport error by walking its sources (including the text of errors that hide
/// their source, such as HTTP/2's).
pub fn classify(error: &(dyn std::error::Error + 'static)) -> RemoteFailure {
    let mut texts = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return RemoteFailure::Refused,
                std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable => {
                    return RemoteFailure::Unreachable(io.to_string());
                }
                _ => {}
            }
        }
        texts.push(e.to_string());
        current = e.source();
    }
    let text = texts.join(": ");
    classify_text(&text).unwrap_or_else(|| RemoteFailure::Other(texts.pop().unwrap_or_default()))
}

/// Classifies a failure known only by its message (the innermost cause of a transport error).
pub fn classify_message(text: &str) -> RemoteFailure {
    if text.contains("Connection refused") {
        return RemoteFailure::Refused;
    }
    classify_text(text).unwrap_or_else(|| RemoteFailure::Other(text.to_owned()))
}

fn classify_text(text: &str) -> Option<RemoteFailure> {
    if let Some(rest) = text.split("received fatal alert: ").nth(1) {
        let alert: String = rest.chars().take_while(char::is_ascii_alphanumeric).collect();
        return Some(match alert.as_str() {
            "UnknownCA" => RemoteFailure::ClientCertUnknownCa,
            "AccessDenied" => RemoteFailure::ClientCertNotAllowed,
            "CertificateRequired" => RemoteFailure::ClientCertMissing,
            "BadCertificate"
            | "CertificateExpired"
            | "CertificateUnknown"
            | "UnsupportedCertificate"
            | "DecryptError" => RemoteFailure::ClientCertRefused(alert),
            "CertificateRevoked" => RemoteFailure::ClientCertRevoked,
            // A TLS 1.2 server without our certificate, or a protocol mismatch.
            "HandshakeFailure" => RemoteFailure::ClientCertRefused(alert),
            _ => RemoteFailure::Other(format!("the server sent TLS alert {alert}")),
        });
    }
    if let Some(rest) = text.split("invalid peer certificate: ").nth(1) {
        let rest = rest.split(": ").next().unwrap_or(rest);
        return Some(if rest.starts_with("UnknownIssuer") {
            RemoteFailure::ServerCertUnknownCa
        } else if rest.contains("not valid for name") || rest.starts_with("NotValidForName") {
            RemoteFailure::ServerCertWrongName(rest.to_owned())
        } else if rest.contains("expired") || rest.contains("not valid yet") || rest.starts_with("Expired") {
            RemoteFailure::ServerCertExpired
        } else {
            RemoteFailure::ServerCertBad(rest.to_owned())
        });
    }
    if text.contains("received corrupt message") || text.contains("InvalidContentType") {
        return Some(RemoteFailure::NotTls);
    }
    None
}

/// The error a client sees for `failure` when talking to `target` (`host:port`) over
/// `transport` (`tls`, `tcp`), with the PKI files it used.
pub fn failure_error(
    failure: &RemoteFailure,
    target: &str,
    transport: &str,
    pki: Option<&PkiPaths>,
) -> Error {
    let cert = pki.map_or_else(
        || "its client certificate".to_owned(),
        |p| format!("'{}'", p.cert.display()),
    );
    let ca = pki.map_or_else(
        || "the client's CA".to_owned(),
        |p| format!("'{}'", p.ca.display()),
    );
    let (code, message) = match failure {
        RemoteFailure::Refused => (
            ErrorCode::NoConnect,
            format!(
                "Cannot connect to {target}: connection refused; is virtproxyd running there with --listen and listen_{transport} = 1?"
            ),
        ),
        RemoteFailure::Unreachable(cause) => (
            ErrorCode::NoConnect,
            format!("Cannot reach {target} ({cause}): check the host name, port and network"),
        ),
        RemoteFailure::ClientCertUnknownCa => (
            ErrorCode::AuthFailed,
            format!(
                "The server at {target} refused the client certificate {cert}: it is not signed by a CA the server trusts (the server's ca_file); use a certificate from that CA"
            ),
        ),
        RemoteFailure::ClientCertNotAllowed => (
            ErrorCode::AuthFailed,
            format!(
                "The server at {target} refused the client certificate {cert}: its subject is not in the server's tls_allowed_dn_list; ask for it to be added"
            ),
        ),
        RemoteFailure::ClientCertMissing => (
            ErrorCode::AuthFailed,
            format!(
                "The server at {target} requires a client certificate and none was sent: put clientcert.pem and clientkey.pem beside {ca} or name their directory with pkipath="
            ),
        ),
        RemoteFailure::ClientCertRevoked => (
            ErrorCode::AuthFailed,
            format!(
                "The server at {target} refused the client certificate {cert}: its CA has revoked it (the server's crl_file lists it); get a new certificate"
            ),
        ),
        RemoteFailure::ClientCertRefused(alert) => (
            ErrorCode::AuthFailed,
            format!(
                "The server at {target} refused the client certificate {cert} (TLS alert {alert}): check that it is valid now and made for client authentication"
            ),
        ),
        RemoteFailure::ServerCertUnknownCa => (
            ErrorCode::AuthFailed,
            format!(
                "The certificate of the server at {target} is not signed by the CA in {ca}: install the CA that signed the server's certificate there"
            ),
        ),
        RemoteFailure::ServerCertWrongName(detail) => (
            ErrorCode::AuthFailed,
            format!(
                "The certificate of the server at {target} does not name the host dialed ({detail}): connect by a name or address in its subjectAltName"
            ),
        ),
        RemoteFailure::ServerCertExpired => (
            ErrorCode::AuthFailed,
            format!(
                "The certificate of the server at {target} is expired or not yet valid: renew it, or check both clocks"
            ),
        ),
        RemoteFailure::ServerCertBad(detail) => (
            ErrorCode::AuthFailed,
            format!("The certificate of the server at {target} is not acceptable ({detail})"),
        ),
        RemoteFailure::NotTls => (
            ErrorCode::NoConnect,
            format!(
                "The server at {target} does not speak {transport}: check the port (TLS 16514, TCP 16509) and the URI's transport"
            ),
        ),
        RemoteFailure::Other(cause) => (
            ErrorCode::NoConnect,
            format!("The connection to {target} over {transport} failed ({cause})"),
        ),
    };
    Error::new(code, ErrorDomain::Rpc, message)
}

/// The TLS client side (feature `tls`).
#[cfg(feature = "tls")]
pub mod client {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rvirt_proto::v1::{ErrorCode, ErrorDomain};
    use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

    use super::PkiPaths;
    use crate::error::Error;

    /// The crypto provider every rvirt TLS endpoint uses (ring), named explicitly so that the
    /// process-wide default never matters.
    pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn file_error(what: &str, path: &std::path::Path, cause: impl std::fmt::Display) -> Error {
        Error::new(
            ErrorCode::SystemError,
            ErrorDomain::Rpc,
            format!(
                "Cannot read the {what} '{}' ({cause}): put it there or name its directory with pkipath=",
                path.display()
            ),
        )
    }

    /// Reads every certificate of a PEM file.
    pub fn read_certs(what: &str, path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, Error> {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| file_error(what, path, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error(what, path, e))?;
        if certs.is_empty() {
            return Err(file_error(what, path, "no PEM certificate in it"));
        }
        Ok(certs)
    }

    /// Reads a PEM private key.
    pub fn read_key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, Error> {
        PrivateKeyDer::from_pem_file(path).map_err(|e| file_error("private key", path, e))
    }

    /// The TLS configuration of a client using `paths`: the CA to check the server with, and the
    /// client certificate when `paths.cert` exists.
    pub fn config(paths: &PkiPaths) -> Result<Arc<rustls::ClientConfig>, Error> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs("CA certificate", &paths.ca)? {
            roots
                .add(cert)
                .map_err(|e| file_error("CA certificate", &paths.ca, e))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::new(ErrorCode::InternalError, ErrorDomain::Rpc, e.to_string()))?
            .with_root_certificates(roots);
        let mut config = if paths.cert.exists() {
            let chain = read_certs("client certificate", &paths.cert)?;
            let key = read_key(&paths.key)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                Error::new(
                    ErrorCode::SystemError,
                    ErrorDomain::Rpc,
                    format!(
                        "The client certificate '{}' and key '{}' do not go together ({e}): install the key the certificate was made for",
                        paths.cert.display(),
                        paths.key.display()
                    ),
                )
            })?
        } else if paths.key.exists() {
            return Err(file_error(
                "client certificate",
                &paths.cert,
                format!("missing, but the key '{}' exists", paths.key.display()),
            ));
        } else {
            builder.with_no_client_auth()
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A dialed TLS connection.
    pub type TlsConnection = Prefetched<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

    /// Dials `host:port`, runs the TLS handshake (checking the server's certificate for `host`),
    /// and waits for the server's verdict on the client certificate (see [`Prefetched`]).
    pub async fn connect(
        config: Arc<rustls::ClientConfig>,
        host: &str,
        port: u16,
    ) -> std::io::Result<TlsConnection> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        Prefetched::first_bytes(tls, VERDICT_TIMEOUT).await
    }

    /// How long [`connect`] waits for the server's first bytes after the handshake.
    pub const VERDICT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

    /// A stream whose first bytes were read already, and are read again first.
    ///
    /// With TLS 1.3 the client's handshake ends before the server has judged the client
    /// certificate: a refusal (unknown CA, subject not allowed, no certificate) arrives as an
    /// alert afterwards, racing with the first request, which may then fail with nothing better
    /// than "broken pipe". An HTTP/2 server speaks first (its SETTINGS frame), so reading its first
    /// bytes right after the handshake gives the verdict at once: data means accepted, an alert
    /// means refused, with the alert naming why.
    #[derive(Debug)]
    pub struct Prefetched<S> {
        prefix: Vec<u8>,
        offset: usize,
        inner: S,
    }

    impl<S: AsyncRead + Unpin> Prefetched<S> {
        /// Reads the first bytes of `inner`, failing with the peer's error, at end of stream, or
        /// after `timeout`.
        pub async fn first_bytes(mut inner: S, timeout: std::time::Duration) -> std::io::Result<Self> {
            let mut prefix = vec![0u8; 4096];
            let read = tokio::time::timeout(timeout, inner.read(&mut prefix))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the server sent nothing after the TLS handshake",
                    )
                })??;
            if read == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection right after the TLS handshake",
                ));
            }
            prefix.truncate(read);
            Ok(Prefetched {
                prefix,
                offset: 0,
                inner,
            })
        }
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Prefetched<S> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let this = self.get_mut();
            if this.offset < this.prefix.len() {
                let n = buf.remaining().min(this.prefix.len() - this.offset);
                buf.put_slice(&this.prefix[this.offset..this.offset + n]);
                this.offset += n;
                if this.offset == this.prefix.len() {
                    this.prefix = Vec::new();
                    this.offset = 0;
                }
                return Poll::Ready(Ok(()));
            }
            Pin::new(&mut this.inner).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Prefetched<S> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_layout_mirrors_libvirt_under_the_root() {
        let server = PkiPaths::server_in(Mode::System, Some(Path::new("/r")), Path::new("/root"));
        assert_eq!(server.ca, Path::new("/r/etc/pki/CA/cacert.pem"));
        assert_eq!(server.cert, Path::new("/r/etc/pki/rvirt/servercert.pem"));
        assert_eq!(server.key, Path::new("/r/etc/pki/rvirt/private/serverkey.pem"));
        let client = PkiPaths::client_in(None, true, None, Path::new("/root"), &|_| true);
        assert_eq!(client.cert, Path::new("/etc/pki/rvirt/clientcert.pem"));
        assert_eq!(client.key, Path::new("/etc/pki/rvirt/private/clientkey.pem"));
    }

    #[test]
    fn session_layout_is_in_the_home_directory() {
        let server = PkiPaths::server_in(Mode::Session, None, Path::new("/home/u"));
        assert_eq!(server.cert, Path::new("/home/u/.pki/rvirt/servercert.pem"));
        let user = PkiPaths::client_in(None, false, None, Path::new("/home/u"), &|_| true);
        assert_eq!(user.key, Path::new("/home/u/.pki/rvirt/clientkey.pem"));
        let fallback = PkiPaths::client_in(None, false, None, Path::new("/home/u"), &|_| false);
        assert_eq!(fallback.ca, Path::new("/etc/pki/CA/cacert.pem"));
    }

    #[test]
    fn pkipath_is_flat_with_a_private_key_fallback() {
        let dir = Path::new("/p");
        let flat = PkiPaths::client_in(Some(dir), true, Some(Path::new("/r")), Path::new("/"), &|_| true);
        assert_eq!(flat.ca, Path::new("/p/cacert.pem"));
        assert_eq!(flat.cert, Path::new("/p/clientcert.pem"));
        assert_eq!(flat.key, Path::new("/p/clientkey.pem"));
        let private = PkiPaths::client_in(Some(dir), true, None, Path::new("/"), &|p| {
            p == Path::new("/p/private/clientkey.pem")
        });
        assert_eq!(private.key, Path::new("/p/private/clientkey.pem"));
    }

    #[test]
    fn tls_alerts_name_the_cause() {
        let cases = [
            (
                "connection error: received fatal alert: UnknownCA",
                RemoteFailure::ClientCertUnknownCa,
            ),
            (
                "received fatal alert: AccessDenied",
                RemoteFailure::ClientCertNotAllowed,
            ),
            (
                "io: received fatal alert: CertificateRequired",
                RemoteFailure::ClientCertMissing,
            ),
            (
                "invalid peer certificate: UnknownIssuer",
                RemoteFailure::ServerCertUnknownCa,
            ),
            (
                "received corrupt message of type InvalidContentType",
                RemoteFailure::NotTls,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(classify_text(text), Some(expected), "{text}");
        }
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&refused), RemoteFailure::Refused);
    }

    #[cfg(feature = "tls")]
    #[tokio::test]
    async fn prefetched_bytes_are_read_again_first() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut server, client) = tokio::io::duplex(64);
        server.write_all(b"settings").await.expect("write");
        let mut stream = client::Prefetched::first_bytes(client, std::time::Duration::from_secs(5))
            .await
            .expect("first bytes");
        server.write_all(b"+more").await.expect("write");
        drop(server);
        let mut all = String::new();
        stream.read_to_string(&mut all).await.expect("read");
        assert_eq!(all, "settings+more");
    }

    #[cfg(feature = "tls")]
    #[tokio::test]
    async fn a_server_that_closes_after_the_handshake_is_an_error() {
        let (server, client) = tokio::io::duplex(64);
        drop(server);
        let e = client::Prefetched::first_bytes(client, std::time::Duration::from_secs(5))
            .await
            .expect_err("closed");
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn failure_messages_are_sentences_naming_the_target() {
        let e = failure_error(&RemoteFailure::ClientCertNotAllowed, "h:1", "tls", None);
        assert_eq!(e.code, ErrorCode::AuthFailed);
        assert!(
            e.message.contains("h:1") && e.message.contains("tls_allowed_dn_list"),
            "{}",
            e.message
        );
    }
}
