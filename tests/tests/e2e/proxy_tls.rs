//! Remote access end to end: virtsecretd and virtproxyd in a temporary `RVIRT_ROOT` standing for
//! the remote host, its proxy listening on TLS (and plain TCP when a test enables it) on a free
//! loopback port, a PKI the test makes with rcgen (a CA, a server certificate for 127.0.0.1, a
//! trusted client, a client from another CA, a client whose subject is not in
//! `tls_allowed_dn_list`), and clients dialing `qemu+tls://127.0.0.1:PORT/system?pkipath=DIR`
//! with the client library, or a second virtproxyd forwarding such a URI for a local caller.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber, date_time_ymd,
};
use rvirt::Connect;
use rvirt_e2e::{DAEMON_DEADLINE, DaemonOptions, DaemonProcess, TestRoot, channel};
use rvirt_proto::error::from_status;
use rvirt_proto::v1::admin_service_client::AdminServiceClient;
use rvirt_proto::v1::secret_service_client::SecretServiceClient;
use rvirt_proto::v1::{Client, ClientTransport, ErrorCode, ListClientsRequest, ListSecretsRequest};

/// The allow-list every remote host in these tests uses: trusted clients' CNs start `trusted`.
const ALLOWED_DN: &str = "C=GB,O=rvirt tests,CN=trusted*";

fn subject(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "GB");
    dn.push(DnType::OrganizationName, "rvirt tests");
    dn.push(DnType::CommonName, cn);
    dn
}

fn new_ca(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = subject(cn);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate")
}

/// A certificate and key signed by `ca`, as PEM: a server's for 127.0.0.1 and localhost, or a
/// client's.
fn issue(ca: &CertifiedIssuer<'static, KeyPair>, cn: &str, server: bool) -> (String, String) {
    issue_with_serial(ca, cn, server, None)
}

/// [`issue`] with a chosen serial number (which a revocation list names).
fn issue_with_serial(
    ca: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    server: bool,
    serial: Option<u64>,
) -> (String, String) {
    let names = if server {
        vec!["127.0.0.1".to_owned(), "localhost".to_owned()]
    } else {
        Vec::new()
    };
    let mut params = CertificateParams::new(names).expect("leaf parameters");
    params.distinguished_name = subject(cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    params.serial_number = serial.map(SerialNumber::from);
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, ca).expect("leaf certificate");
    (cert.pem(), key.serialize_pem())
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("a parent directory")).expect("create directory");
    std::fs::write(path, text).expect("write PKI file");
}

/// The test's PKI: the real CA, another CA nobody trusts, and client directories for `pkipath=`.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    other_ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            ca: new_ca("rvirt test CA"),
            other_ca: new_ca("someone else's CA"),
            dir: tempfile::tempdir().expect("PKI directory"),
        }
    }

    /// Installs the server certificate, its key and the CA where a system virtproxyd in `root`
    /// looks by default.
    fn install_server(&self, root: &TestRoot) {
        let (cert, key) = issue(&self.ca, "127.0.0.1", true);
        write(&root.path().join("etc/pki/CA/cacert.pem"), &self.ca.pem());
        write(&root.path().join("etc/pki/rvirt/servercert.pem"), &cert);
        write(&root.path().join("etc/pki/rvirt/private/serverkey.pem"), &key);
    }

    /// A `pkipath=` directory: the real CA (to check the server), and a client certificate with
    /// common name `cn` from the real CA or the other one, or none.
    fn client_dir(&self, name: &str, cert: Option<(&str, bool)>) -> PathBuf {
        let dir = self.dir.path().join(name);
        write(&dir.join("cacert.pem"), &self.ca.pem());
        if let Some((cn, trusted_ca)) = cert {
            let (cert, key) = issue(if trusted_ca { &self.ca } else { &self.other_ca }, cn, false);
            write(&dir.join("clientcert.pem"), &cert);
            write(&dir.join("clientkey.pem"), &key);
        }
        dir
    }
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The remote host: virtsecretd and a virtproxyd with TLS on `tls_port` (and whatever `extra`
/// adds to its configuration).
struct RemoteHost {
    root: TestRoot,
    tls_port: u16,
    _secrets: DaemonProcess,
    proxy: DaemonProcess,
}

fn proxy_conf(root: &TestRoot, text: &str) {
    write(&root.path().join("etc/rvirt/virtproxyd.conf"), text);
}

async fn remote_host(pki: &Pki, extra: &str) -> RemoteHost {
    remote_host_in(TestRoot::new(), pki, extra).await
}

async fn remote_host_in(root: TestRoot, pki: &Pki, extra: &str) -> RemoteHost {
    pki.install_server(&root);
    let tls_port = free_port();
    proxy_conf(
        &root,
        &format!(
            "listen_addr = \"127.0.0.1\"\ntls_port = \"{tls_port}\"\ntls_allowed_dn_list = [\"{ALLOWED_DN}\"]\n{extra}"
        ),
    );
    let secrets = DaemonProcess::start("virtsecretd", &root).await;
    let proxy = DaemonProcess::start_with(
        "virtproxyd",
        &root,
        DaemonOptions {
            args: vec!["--listen".into()],
            ..DaemonOptions::default()
        },
    )
    .await;
    RemoteHost {
        root,
        tls_port,
        _secrets: secrets,
        proxy,
    }
}

fn tls_uri(port: u16, pkipath: &Path) -> String {
    format!("qemu+tls://127.0.0.1:{port}/system?pkipath={}", pkipath.display())
}

fn secret_xml(uuid: &str) -> String {
    format!("<secret><uuid>{uuid}</uuid><usage type='tls'><name>remote-{uuid}</name></usage></secret>")
}

/// The error a client gets from a connection the TLS handshake refuses: at open, since the
/// client waits for the server's verdict on its certificate before it returns.
async fn refused_at_open(uri: &str) -> rvirt::Error {
    Connect::open(uri)
        .await
        .expect_err("the handshake refuses this client")
}

/// The error a client gets from a connection that fails: at open, or at the first call (a plain
/// TCP connection is made before anything is sent).
async fn refusal(uri: &str) -> rvirt::Error {
    match Connect::open(uri).await {
        Err(e) => e,
        Ok(conn) => conn.list_all_secrets(0).await.expect_err("the connection fails"),
    }
}

#[tokio::test]
async fn trusted_client_defines_and_lists_secrets_over_tls() {
    let pki = Pki::new();
    let host = remote_host(&pki, "").await;
    let client = pki.client_dir("trusted", Some(("trusted-client", true)));
    let conn = Connect::open(&tls_uri(host.tls_port, &client))
        .await
        .expect("open qemu+tls://");
    let uuid = "6d3b6c8e-8f7a-4c1e-9b9a-1f2e3d4c5b6a";
    conn.define_secret_xml(&secret_xml(uuid), 0)
        .await
        .expect("a TLS caller may write");
    let listed: Vec<String> = conn
        .list_all_secrets(0)
        .await
        .expect("list over TLS")
        .iter()
        .map(|s| s.uuid().to_owned())
        .collect();
    assert_eq!(listed, vec![uuid.to_owned()]);
    // The secret is the remote host's: its own virtsecretd stored it.
    let direct = SecretServiceClient::new(channel(&host.root.socket("virtsecretd-sock")).await)
        .list_secrets(ListSecretsRequest { flags: 0 })
        .await
        .expect("list directly")
        .into_inner();
    assert_eq!(direct.secrets.len(), 1);
    // The proxy's admin service shows the connection as a TLS client with its subject.
    let clients = admin_clients(&host.root).await;
    let tls: Vec<_> = clients
        .iter()
        .filter(|c| c.transport == ClientTransport::Tls as i32)
        .collect();
    assert_eq!(tls.len(), 1, "{clients:?}");
    assert!(
        tls[0].certificate_subject.contains("CN=trusted-client"),
        "{tls:?}"
    );
    assert!(tls[0].address.starts_with("127.0.0.1:"), "{tls:?}");
    assert_eq!(
        (tls[0].uid, tls[0].gid),
        (None, None),
        "no local credentials: {tls:?}"
    );
    drop(conn);
}

/// The clients the remote host's virtproxyd lists on its admin socket.
async fn admin_clients(root: &TestRoot) -> Vec<Client> {
    AdminServiceClient::new(channel(&root.socket("rvirt-admin-sock")).await)
        .list_clients(ListClientsRequest::default())
        .await
        .expect("list the proxy's clients")
        .into_inner()
        .clients
}

#[tokio::test]
async fn client_certificate_from_an_unknown_ca_is_refused_naming_the_ca() {
    let pki = Pki::new();
    let host = remote_host(&pki, "").await;
    let client = pki.client_dir("untrusted", Some(("trusted-but-other-ca", false)));
    let e = refused_at_open(&tls_uri(host.tls_port, &client)).await;
    assert_eq!(e.code, ErrorCode::AuthFailed, "{e}");
    assert!(e.message.contains("not signed by a CA the server trusts"), "{e}");
}

#[tokio::test]
async fn client_subject_outside_the_allow_list_is_refused() {
    let pki = Pki::new();
    let host = remote_host(&pki, "").await;
    let client = pki.client_dir("outsider", Some(("outsider", true)));
    let e = refused_at_open(&tls_uri(host.tls_port, &client)).await;
    assert_eq!(e.code, ErrorCode::AuthFailed, "{e}");
    assert!(e.message.contains("tls_allowed_dn_list"), "{e}");
}

#[tokio::test]
async fn client_without_a_certificate_is_told_to_install_one() {
    let pki = Pki::new();
    let host = remote_host(&pki, "").await;
    let client = pki.client_dir("anonymous", None);
    let e = refused_at_open(&tls_uri(host.tls_port, &client)).await;
    assert_eq!(e.code, ErrorCode::AuthFailed, "{e}");
    assert!(e.message.contains("requires a client certificate"), "{e}");
}

#[tokio::test]
async fn server_certificate_from_another_ca_is_refused_by_the_client() {
    let pki = Pki::new();
    let host = remote_host(&pki, "").await;
    let client = pki.client_dir("wrong-ca", Some(("trusted-client", true)));
    write(&client.join("cacert.pem"), &pki.other_ca.pem());
    let e = refused_at_open(&tls_uri(host.tls_port, &client)).await;
    assert_eq!(e.code, ErrorCode::AuthFailed, "{e}");
    assert!(e.message.contains("is not signed by the CA in"), "{e}");
}

#[tokio::test]
async fn remote_callers_may_not_read_secret_values() {
    let pki = Pki::new();
    let host = remote_host(&pki, "").await;
    let client = pki.client_dir("trusted", Some(("trusted-client", true)));
    let conn = Connect::open(&tls_uri(host.tls_port, &client))
        .await
        .expect("open");
    let secret = conn
        .define_secret_xml(&secret_xml("0b7c1f4e-2d3a-4b5c-8d6e-7f8091a2b3c4"), 0)
        .await
        .expect("define");
    secret
        .set_value(b"hunter2")
        .await
        .expect("a TLS caller may set a value");
    let e = secret.value().await.expect_err("values are privileged");
    assert_eq!(e.code, ErrorCode::AccessDenied, "{e}");
    assert!(e.message.contains("CN=trusted-client"), "{e}");
}

#[tokio::test]
async fn plain_tcp_is_refused_unless_enabled() {
    let pki = Pki::new();
    let host = remote_host(&pki, "").await;
    let tcp_port = free_port();
    let e = refusal(&format!("qemu+tcp://127.0.0.1:{tcp_port}/system")).await;
    assert_eq!(e.code, ErrorCode::NoConnect, "{e}");
    assert!(e.message.contains("connection refused"), "{e}");
    // Nor does the TLS port speak plain TCP.
    let e = refusal(&format!("qemu+tcp://127.0.0.1:{}/system", host.tls_port)).await;
    assert_eq!(e.code, ErrorCode::NoConnect, "{e}");
}

#[tokio::test]
async fn plain_tcp_with_auth_none_serves_calls() {
    let pki = Pki::new();
    let tcp_port = free_port();
    let host = remote_host(
        &pki,
        &format!("listen_tcp = 1\ntcp_port = {tcp_port}\nauth_tcp = \"none\"\n"),
    )
    .await;
    let conn = Connect::open(&format!("qemu+tcp://127.0.0.1:{tcp_port}/system"))
        .await
        .expect("open qemu+tcp://");
    assert!(conn.list_all_secrets(0).await.expect("list over TCP").is_empty());
    let clients = admin_clients(&host.root).await;
    assert!(
        clients
            .iter()
            .any(|c| c.transport == ClientTransport::Tcp as i32 && c.address.starts_with("127.0.0.1:")),
        "{clients:?}"
    );
    drop(host);
}

#[tokio::test]
async fn listen_tcp_without_auth_none_refuses_to_start() {
    let pki = Pki::new();
    let root = TestRoot::new();
    pki.install_server(&root);
    proxy_conf(
        &root,
        &format!(
            "listen_tls = 0\nlisten_tcp = 1\nlisten_addr = \"127.0.0.1\"\ntcp_port = {}\n",
            free_port()
        ),
    );
    let mut proxy = DaemonProcess::spawn("virtproxyd", &root, DaemonOptions::default());
    let (status, log) = proxy.wait_exit(DAEMON_DEADLINE).await.expect("virtproxyd exits");
    assert!(!status.success());
    assert!(log.contains("auth_tcp = \"none\""), "{log}");
}

/// A local virtproxyd whose client certificate (system layout under its root) is `cn` from the
/// real CA or the other one.
async fn local_proxy(pki: &Pki, cn: &str, trusted_ca: bool) -> (TestRoot, DaemonProcess) {
    let root = TestRoot::new();
    let (cert, key) = issue(if trusted_ca { &pki.ca } else { &pki.other_ca }, cn, false);
    write(&root.path().join("etc/pki/CA/cacert.pem"), &pki.ca.pem());
    write(&root.path().join("etc/pki/rvirt/clientcert.pem"), &cert);
    write(&root.path().join("etc/pki/rvirt/private/clientkey.pem"), &key);
    let proxy = DaemonProcess::start("virtproxyd", &root).await;
    (root, proxy)
}

async fn list_through(proxy_root: &TestRoot, uri: &str) -> Result<usize, tonic::Status> {
    let request = rvirt_e2e::at(uri, ListSecretsRequest { flags: 0 });
    Ok(
        SecretServiceClient::new(channel(&proxy_root.socket("rvirt-sock")).await)
            .list_secrets(request)
            .await?
            .into_inner()
            .secrets
            .len(),
    )
}

#[tokio::test]
async fn second_proxy_forwards_a_tls_uri_to_the_remote_proxy() {
    let pki = Pki::new();
    let host = remote_host(&pki, "").await;
    let trusted = pki.client_dir("trusted", Some(("trusted-client", true)));
    Connect::open(&tls_uri(host.tls_port, &trusted))
        .await
        .expect("open")
        .define_secret_xml(&secret_xml("2f1e0d9c-8b7a-4654-a321-0fedcba98765"), 0)
        .await
        .expect("define on the remote host");
    let (local, _proxy) = local_proxy(&pki, "trusted-proxy", true).await;
    let count = list_through(&local, &format!("qemu+tls://127.0.0.1:{}/system", host.tls_port))
        .await
        .expect("list through the second proxy");
    assert_eq!(count, 1);
}

#[tokio::test]
async fn second_proxy_with_an_untrusted_certificate_is_refused() {
    let pki = Pki::new();
    let host = remote_host(&pki, "").await;
    let (local, _proxy) = local_proxy(&pki, "trusted-proxy", false).await;
    let status = list_through(&local, &format!("qemu+tls://127.0.0.1:{}/system", host.tls_port))
        .await
        .expect_err("the remote proxy refuses the local proxy's certificate");
    assert_eq!(from_status(&status).code(), ErrorCode::AuthFailed, "{status:?}");
    assert!(
        status.message().contains("not signed by a CA the server trusts"),
        "{}",
        status.message()
    );
}

/// A client certificate the CA revoked (its serial is in `cacrl.pem` beside the CA certificate,
/// where the proxy looks by default) is refused in the handshake, saying so; others still pass.
#[tokio::test]
async fn a_revoked_client_certificate_is_refused() {
    let pki = Pki::new();
    let revoked = {
        let (cert, key) = issue_with_serial(&pki.ca, "trusted-revoked", false, Some(0x7e57));
        let dir = pki.dir.path().join("revoked");
        write(&dir.join("cacert.pem"), &pki.ca.pem());
        write(&dir.join("clientcert.pem"), &cert);
        write(&dir.join("clientkey.pem"), &key);
        dir
    };
    let crl = CertificateRevocationListParams {
        this_update: date_time_ymd(2026, 1, 1),
        next_update: date_time_ymd(2036, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(0x7e57u64),
            revocation_time: date_time_ymd(2026, 6, 1),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&pki.ca)
    .expect("CRL");
    // Written before the proxy starts: remote_host installs the server files beside it.
    let root = TestRoot::new();
    write(
        &root.path().join("etc/pki/CA/cacrl.pem"),
        &crl.pem().expect("CRL PEM"),
    );
    let host = remote_host_in(root, &pki, "").await;
    let e = refused_at_open(&tls_uri(host.tls_port, &revoked)).await;
    assert_eq!(e.code, ErrorCode::AuthFailed, "{e}");
    assert!(e.message.contains("revoked"), "{e}");
    let good = pki.client_dir("good", Some(("trusted-good", true)));
    let conn = Connect::open(&tls_uri(host.tls_port, &good))
        .await
        .expect("a certificate not in the CRL passes");
    assert!(conn.list_all_secrets(0).await.expect("list").is_empty());
}

/// SIGHUP makes the proxy read its certificates again: after the host's PKI is replaced by one
/// from a new CA, new connections get the new server certificate and need the new CA's client
/// certificates.
#[tokio::test]
async fn sighup_reloads_the_tls_certificates() {
    let old = Pki::new();
    let mut host = remote_host(&old, "").await;
    let old_client = old.client_dir("old", Some(("trusted-old", true)));
    Connect::open(&tls_uri(host.tls_port, &old_client))
        .await
        .expect("the old PKI works before the reload");

    let new = Pki::new();
    new.install_server(&host.root);
    host.proxy.signal(nix::sys::signal::Signal::SIGHUP);
    host.proxy.wait_notify("RELOADING=1").await;
    host.proxy.wait_notify("READY=1").await;

    let new_client = new.client_dir("new", Some(("trusted-new", true)));
    let conn = Connect::open(&tls_uri(host.tls_port, &new_client))
        .await
        .expect("the new PKI works after the reload");
    assert!(conn.list_all_secrets(0).await.expect("list").is_empty());
    let e = refused_at_open(&tls_uri(host.tls_port, &old_client)).await;
    assert_eq!(e.code, ErrorCode::AuthFailed, "{e}");

    // A reload with a broken key keeps the certificates in force.
    write(
        &host.root.path().join("etc/pki/rvirt/private/serverkey.pem"),
        "not a key",
    );
    host.proxy.signal(nix::sys::signal::Signal::SIGHUP);
    host.proxy.wait_notify("READY=1").await;
    Connect::open(&tls_uri(host.tls_port, &new_client))
        .await
        .expect("a failed reload keeps the working certificates");
}

/// Socket activation of the TLS listener (`virtproxyd-tls.socket`): virtproxyd serves the TCP
/// socket systemd passed, without `--listen` and whatever the configured port.
#[tokio::test]
async fn the_tls_socket_systemd_passes_serves_remote_clients() {
    use std::os::fd::AsRawFd as _;
    let pki = Pki::new();
    let root = TestRoot::new();
    pki.install_server(&root);
    proxy_conf(&root, &format!("tls_allowed_dn_list = [\"{ALLOWED_DN}\"]\n"));
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a TCP socket");
    let port = socket.local_addr().expect("its address").port();
    let _secrets = DaemonProcess::start("virtsecretd", &root).await;
    let _proxy = DaemonProcess::start_with(
        "virtproxyd",
        &root,
        DaemonOptions {
            activated: vec![(socket.as_raw_fd(), "virtproxyd-tls.socket".into())],
            ..DaemonOptions::default()
        },
    )
    .await;
    drop(socket);
    let client = pki.client_dir("activated", Some(("trusted-activated", true)));
    let conn = Connect::open(&tls_uri(port, &client))
        .await
        .expect("open qemu+tls:// on the activated socket");
    assert!(conn.list_all_secrets(0).await.expect("list").is_empty());
    let clients = admin_clients(&root).await;
    assert!(
        clients.iter().any(|c| c.transport == ClientTransport::Tls as i32),
        "{clients:?}"
    );
}
