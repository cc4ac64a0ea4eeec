//! virtproxyd end to end: real daemons in one temporary `RVIRT_ROOT`, every call made through
//! the proxy's sockets. Routing by `rvirt-uri` and service, unary and streaming forwarding, the
//! in-process test driver, the read-only socket, the caller's identity reaching the backend,
//! unrouted pairs, a backend that is down, a backend restarted under a live subscription, and
//! the client library in `mode=legacy`.

use std::time::Duration;

use nix::sys::signal::Signal;
use rvirt_e2e::{DAEMON_DEADLINE, DaemonProcess, TestRoot, at, channel};
use rvirt_proto::error::from_status;
use rvirt_proto::v1::domain_service_client::DomainServiceClient;
use rvirt_proto::v1::host_service_client::HostServiceClient;
use rvirt_proto::v1::network_service_client::NetworkServiceClient;
use rvirt_proto::v1::secret_service_client::SecretServiceClient;
use rvirt_proto::v1::*;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

const PROXY: &str = "virtproxyd";
const SECRETS: &str = "virtsecretd";

async fn proxy_channel(root: &TestRoot) -> Channel {
    channel(&root.socket("rvirt-sock")).await
}

async fn proxy_read_only_channel(root: &TestRoot) -> Channel {
    channel(&root.socket("rvirt-sock-ro")).await
}

fn code(status: &tonic::Status) -> ErrorCode {
    from_status(status).code()
}

fn random_uuid() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let random = || {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    let hex = format!("{:016x}{:016x}", random(), random());
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

fn secret_xml(uuid: &str, usage: &str) -> String {
    format!("<secret><uuid>{uuid}</uuid><usage type='tls'><name>{usage}</name></usage></secret>")
}

async fn define_secret(channel: Channel, uuid: &str, usage: &str) -> Result<Secret, tonic::Status> {
    let response = SecretServiceClient::new(channel)
        .define_secret_xml(at(
            "secret:///system",
            DefineSecretXmlRequest {
                xml: secret_xml(uuid, usage),
                flags: 0,
            },
        ))
        .await?;
    Ok(response.into_inner().secret.expect("the defined secret"))
}

async fn get_type(channel: Channel, uri: &str) -> Result<String, tonic::Status> {
    Ok(HostServiceClient::new(channel)
        .get_type(at(uri, GetTypeRequest {}))
        .await?
        .into_inner()
        .r#type)
}

/// Stops a daemon with SIGTERM and waits for it to exit cleanly.
async fn stop(mut daemon: DaemonProcess) {
    daemon.signal(Signal::SIGTERM);
    let (status, log) = daemon
        .wait_exit(DAEMON_DEADLINE)
        .await
        .expect("exit after SIGTERM");
    assert!(status.success(), "{} failed: {log}", daemon.name);
}

#[tokio::test]
async fn unary_call_reaches_the_daemon_the_uri_names() {
    let root = TestRoot::new();
    let _secrets = DaemonProcess::start(SECRETS, &root).await;
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    let kind = get_type(proxy_channel(&root).await, "secret:///system")
        .await
        .expect("GetType through the proxy");
    assert_eq!(kind, "secret");
}

#[tokio::test]
async fn qemu_uri_network_calls_reach_virtnetworkd() {
    let root = TestRoot::new();
    let _networks = DaemonProcess::start("virtnetworkd", &root).await;
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    let proxy = proxy_channel(&root).await;
    assert_eq!(
        get_type(proxy.clone(), "network:///system")
            .await
            .expect("GetType"),
        "network"
    );
    let listed = NetworkServiceClient::new(proxy)
        .list_networks(at("qemu:///system", ListNetworksRequest::default()))
        .await
        .expect("qemu:///system's NetworkService is virtnetworkd's");
    assert!(listed.into_inner().networks.is_empty());
}

#[tokio::test]
async fn qemu_host_calls_without_virtqemud_are_no_connect_naming_its_socket() {
    let root = TestRoot::new();
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    let err = get_type(proxy_channel(&root).await, "qemu:///system")
        .await
        .expect_err("virtqemud is not running");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(code(&err), ErrorCode::NoConnect);
    let socket = root.socket("virtqemud-sock");
    assert!(
        err.message().contains(&socket.display().to_string()),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("systemctl start virtqemud.socket"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_call_without_uri_goes_to_the_default_qemu_system() {
    let root = TestRoot::new();
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    let err = HostServiceClient::new(proxy_channel(&root).await)
        .get_type(GetTypeRequest {})
        .await
        .expect_err("virtqemud is not running");
    assert_eq!(code(&err), ErrorCode::NoConnect);
    assert!(err.message().contains("qemu:///system"), "{}", err.message());
}

#[tokio::test]
async fn a_down_backend_is_no_connect_and_reached_again_once_it_is_back() {
    let root = TestRoot::new();
    let secrets = DaemonProcess::start(SECRETS, &root).await;
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    let proxy = proxy_channel(&root).await;
    get_type(proxy.clone(), "secret:///system")
        .await
        .expect("the backend is up");
    stop(secrets).await;
    let err = get_type(proxy.clone(), "secret:///system")
        .await
        .expect_err("the backend is down");
    assert_eq!(code(&err), ErrorCode::NoConnect);
    let socket = root.socket("virtsecretd-sock");
    assert!(err.message().contains("virtsecretd"), "{}", err.message());
    assert!(
        err.message().contains(&socket.display().to_string()),
        "{}",
        err.message()
    );
    let _secrets = DaemonProcess::start(SECRETS, &root).await;
    assert_eq!(
        get_type(proxy, "secret:///system")
            .await
            .expect("reconnected to the restarted backend"),
        "secret"
    );
}

#[tokio::test]
async fn unrouted_pair_is_operation_unsupported_naming_uri_and_service() {
    let root = TestRoot::new();
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    let err = SecretServiceClient::new(proxy_channel(&root).await)
        .list_secrets(at("network:///system", ListSecretsRequest { flags: 0 }))
        .await
        .expect_err("network:///system has no secrets");
    assert_eq!(code(&err), ErrorCode::OperationUnsupported);
    assert!(err.message().contains("network:///system"), "{}", err.message());
    assert!(
        err.message().contains("rvirt.v1.SecretService"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn remote_uri_without_a_remote_proxy_gives_no_connect() {
    let root = TestRoot::new();
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    // A loopback port nothing listens on; TLS and the remote hop are tested in proxy_tls.rs.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let err = get_type(
        proxy_channel(&root).await,
        &format!("qemu+tcp://127.0.0.1:{port}/system"),
    )
    .await
    .expect_err("nothing listens there");
    assert_eq!(code(&err), ErrorCode::NoConnect);
    assert!(err.message().contains("connection refused"), "{}", err.message());
}

#[tokio::test]
async fn test_default_domains_are_listed_through_the_proxy() {
    let root = TestRoot::new();
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    let domains = DomainServiceClient::new(proxy_read_only_channel(&root).await)
        .list_domains(at("test:///default", ListDomainsRequest { flags: 0 }))
        .await
        .expect("ListDomains of the proxy's in-process test driver")
        .into_inner()
        .domains;
    let names: Vec<_> = domains.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["test"]);
}

#[tokio::test]
async fn read_only_proxy_socket_refuses_a_write_with_operation_denied() {
    let root = TestRoot::new();
    let _secrets = DaemonProcess::start(SECRETS, &root).await;
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    let err = define_secret(proxy_read_only_channel(&root).await, &random_uuid(), "ro")
        .await
        .expect_err("a write on the read-only socket");
    assert_eq!(code(&err), ErrorCode::OperationDenied);
    let listed = SecretServiceClient::new(proxy_channel(&root).await)
        .list_secrets(at("secret:///system", ListSecretsRequest { flags: 0 }))
        .await
        .expect("ListSecrets")
        .into_inner()
        .secrets;
    assert!(listed.is_empty(), "nothing was defined: {listed:?}");
}

#[tokio::test]
async fn read_only_callers_reach_the_backends_read_only_socket() {
    let root = TestRoot::new();
    let _secrets = DaemonProcess::start(SECRETS, &root).await;
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    let info = HostServiceClient::new(proxy_read_only_channel(&root).await)
        .get_connection_info(at("secret:///system", GetConnectionInfoRequest {}))
        .await
        .expect("GetConnectionInfo is a read call")
        .into_inner();
    assert_eq!(info.daemon, "virtsecretd");
    assert!(info.read_only);
}

#[tokio::test]
async fn the_backend_sees_the_callers_identity_not_the_proxys() {
    let root = TestRoot::new();
    let _secrets = DaemonProcess::start(SECRETS, &root).await;
    let proxy = DaemonProcess::start(PROXY, &root).await;
    let info = HostServiceClient::new(proxy_channel(&root).await)
        .get_connection_info(at("secret:///system", GetConnectionInfoRequest {}))
        .await
        .expect("GetConnectionInfo")
        .into_inner();
    assert_eq!(info.daemon, "virtsecretd");
    assert!(!info.read_only);
    assert_eq!(info.pid, Some(std::process::id()));
    assert_ne!(info.pid, Some(proxy.pid()));
    assert_eq!(info.uid, Some(nix::unistd::geteuid().as_raw()));
}

/// Identity metadata as a privileged client (or a proxy in front of this one) sends it.
fn as_user<T>(mut request: tonic::Request<T>, uid: &str, pid: &str) -> tonic::Request<T> {
    let metadata = request.metadata_mut();
    metadata.insert("rvirt-caller-uid", uid.parse().expect("metadata"));
    metadata.insert("rvirt-caller-gid", uid.parse().expect("metadata"));
    metadata.insert("rvirt-caller-pid", pid.parse().expect("metadata"));
    request
}

#[tokio::test]
async fn a_privileged_client_may_forward_a_lesser_identity_through_the_proxy() {
    let root = TestRoot::new();
    let _secrets = DaemonProcess::start(SECRETS, &root).await;
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    let proxy = proxy_channel(&root).await;
    let info = HostServiceClient::new(proxy.clone())
        .get_connection_info(as_user(
            at("secret:///system", GetConnectionInfoRequest {}),
            "4242",
            "1",
        ))
        .await
        .expect("GetConnectionInfo")
        .into_inner();
    assert_eq!(
        (info.uid, info.pid, info.privileged),
        (Some(4242), Some(1), false)
    );
    let request = DefineSecretXmlRequest {
        xml: secret_xml(&random_uuid(), "lesser"),
        flags: 0,
    };
    let err = SecretServiceClient::new(proxy)
        .define_secret_xml(as_user(at("secret:///system", request), "4242", "1"))
        .await
        .expect_err("uid 4242 may only read");
    assert_eq!(code(&err), ErrorCode::AccessDenied);
}

#[tokio::test]
async fn incomplete_identity_metadata_is_refused() {
    let root = TestRoot::new();
    let _secrets = DaemonProcess::start(SECRETS, &root).await;
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    let mut request = at("secret:///system", GetConnectionInfoRequest {});
    request
        .metadata_mut()
        .insert("rvirt-caller-uid", "4242".parse().expect("metadata"));
    let err = HostServiceClient::new(proxy_channel(&root).await)
        .get_connection_info(request)
        .await
        .expect_err("a uid without a gid");
    assert_eq!(code(&err), ErrorCode::AccessDenied);
}

/// A resumable subscription to secret events through the proxy's socket.
async fn secret_subscription(root: &TestRoot) -> rvirt::watch::Subscription<SecretEvent> {
    rvirt_e2e::secret_subscription(root.socket("rvirt-sock"), Some("secret:///system")).await
}

async fn next_item(
    subscription: &mut rvirt::watch::Subscription<SecretEvent>,
) -> rvirt::watch::WatchItem<SecretEvent> {
    tokio::time::timeout(DAEMON_DEADLINE, subscription.next())
        .await
        .expect("an item in time")
        .expect("the subscription is open")
}

async fn next(events: &mut tonic::Streaming<WatchSecretEventsResponse>) -> WatchSecretEventsResponse {
    tokio::time::timeout(DAEMON_DEADLINE, events.next())
        .await
        .expect("a message in time")
        .expect("the stream is open")
        .expect("no error")
}

#[tokio::test]
async fn secret_events_stream_through_the_proxy() {
    let root = TestRoot::new();
    let _secrets = DaemonProcess::start(SECRETS, &root).await;
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    let proxy = proxy_channel(&root).await;
    let mut events = SecretServiceClient::new(proxy.clone())
        .watch_secret_events(at("secret:///system", WatchSecretEventsRequest::default()))
        .await
        .expect("WatchSecretEvents through the proxy")
        .into_inner();
    let first = next(&mut events).await;
    assert!(
        matches!(
            first.message,
            Some(watch_secret_events_response::Message::CaughtUp(_))
        ),
        "{first:?}"
    );
    let uuid = random_uuid();
    define_secret(proxy, &uuid, "streamed").await.expect("define");
    let Some(watch_secret_events_response::Message::Event(event)) = next(&mut events).await.message else {
        panic!("expected the define event")
    };
    assert_eq!(event.secret.map(|s| s.uuid), Some(uuid));
}

#[tokio::test]
async fn a_subscription_through_the_proxy_survives_a_backend_restart() {
    use rvirt::watch::WatchItem;
    let root = TestRoot::new();
    let secrets = DaemonProcess::start(SECRETS, &root).await;
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    let mut events = secret_subscription(&root).await;
    let first = random_uuid();
    define_secret(proxy_channel(&root).await, &first, "before")
        .await
        .expect("define");
    let WatchItem::Event(event) = next_item(&mut events).await else {
        panic!("expected the define event")
    };
    assert_eq!(event.secret.map(|s| s.uuid), Some(first));

    // The backend goes away under the live subscription and comes back with a new numbering;
    // the proxy stays up.
    stop(secrets).await;
    let _secrets = DaemonProcess::start(SECRETS, &root).await;
    let WatchItem::Resync(resync) = next_item(&mut events).await else {
        panic!("expected a resync")
    };
    assert_eq!(resync.reason(), ResyncReason::EpochChanged);
    let second = random_uuid();
    define_secret(proxy_channel(&root).await, &second, "after")
        .await
        .expect("define after the restart");
    let WatchItem::Event(event) = next_item(&mut events).await else {
        panic!("expected the new event")
    };
    assert_eq!(event.secret.map(|s| s.uuid), Some(second));
}

#[tokio::test]
async fn client_library_in_legacy_mode_works_through_the_proxy() {
    let root = TestRoot::new();
    let _secrets = DaemonProcess::start(SECRETS, &root).await;
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    // `socket=` points the library at this test's proxy socket (the test cannot change
    // RVIRT_ROOT for its own process); `mode=legacy` alone would pick `<root>/run/rvirt/rvirt-sock`.
    let uri = format!(
        "secret:///system?mode=legacy&socket={}",
        root.socket("rvirt-sock").display()
    );
    let conn = tokio::time::timeout(Duration::from_secs(30), rvirt::Connect::open(&uri))
        .await
        .expect("open in time")
        .expect("open through the proxy");
    assert_eq!(conn.driver_type().await.expect("GetType"), "secret");
    let info = conn.connection_info().await.expect("GetConnectionInfo");
    assert_eq!(
        info.daemon, "virtsecretd",
        "the call went through the proxy to virtsecretd"
    );
}

/// A proxy running in session mode starts the session daemon a call needs, as libvirt's
/// clients start session daemons, and forwards the call to it.
#[tokio::test]
async fn a_session_proxy_starts_the_session_daemon_a_call_needs() {
    let root = TestRoot::new();
    rvirt_e2e::binary(SECRETS); // built before the proxy looks for it
    let runtime = root.path().join("run/user/4343/rvirt");
    let proxy = DaemonProcess::start_with(
        PROXY,
        &root,
        rvirt_e2e::DaemonOptions {
            args: vec!["--mode".into(), "session".into()],
            env: vec![
                ("XDG_RUNTIME_DIR".into(), "/run/user/4343".into()),
                ("HOME".into(), root.path().join("home").display().to_string()),
                (
                    "RVIRT_DAEMON_DIR".into(),
                    rvirt_e2e::bin_dir().display().to_string(),
                ),
            ],
            ..rvirt_e2e::DaemonOptions::default()
        },
    )
    .await;
    let secret_socket = runtime.join("virtsecretd-sock");
    assert!(!secret_socket.exists());
    let mut secrets = SecretServiceClient::new(channel(&runtime.join("rvirt-sock")).await);
    let listed = secrets
        .list_secrets(at("secret:///session", ListSecretsRequest { flags: 0 }))
        .await
        .expect("the session daemon is started for the call")
        .into_inner();
    assert!(listed.secrets.is_empty());
    assert!(secret_socket.exists(), "virtsecretd serves its session socket");
    let pid: i32 = std::fs::read_to_string(runtime.join("virtsecretd.pid"))
        .expect("the session daemon's pid file")
        .trim()
        .parse()
        .expect("pid");
    // A second call uses the running daemon.
    secrets
        .list_secrets(at("secret:///session", ListSecretsRequest { flags: 0 }))
        .await
        .expect("second call");
    let still: i32 = std::fs::read_to_string(runtime.join("virtsecretd.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(pid, still, "no second daemon");
    drop(proxy);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
}

/// The proxy lets go of a backend connection that carried no call for a while, so a backend
/// started with `--timeout` exits when idle even while the proxy runs, and the next call
/// connects again.
#[tokio::test]
async fn an_idle_backend_connection_is_released_so_the_backend_can_exit() {
    let root = TestRoot::new();
    let idle_exit = || rvirt_e2e::DaemonOptions {
        args: vec!["--timeout".into(), "1".into()],
        ..rvirt_e2e::DaemonOptions::default()
    };
    let mut secretd = DaemonProcess::start_with(SECRETS, &root, idle_exit()).await;
    let _proxy = DaemonProcess::start(PROXY, &root).await;
    let mut secrets = SecretServiceClient::new(proxy_channel(&root).await);
    secrets
        .list_secrets(at("secret:///system", ListSecretsRequest { flags: 0 }))
        .await
        .expect("a call through the proxy");
    // Idle for the proxy's BACKEND_IDLE (30 s) plus its check interval, then the backend's own
    // second: well within this deadline.
    let exited = secretd.wait_exit(std::time::Duration::from_secs(120)).await;
    assert!(
        exited.is_some(),
        "virtsecretd did not exit: the proxy kept its connection"
    );
    let _secretd = DaemonProcess::start_with(SECRETS, &root, idle_exit()).await;
    secrets
        .list_secrets(at("secret:///system", ListSecretsRequest { flags: 0 }))
        .await
        .expect("the next call connects again");
}
