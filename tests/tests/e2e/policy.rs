//! The access policy file and the connection limits, end to end: a rule denying `domain.start`
//! to the caller's uid through virtproxyd, SIGHUP and the admin service's Reload applying a
//! changed file or refusing a broken one, `access_policy_file`, a daemon refusing to start with a
//! bad policy, `max_clients` refusing a client with a clear error, and HTTP/2 keepalive closing a
//! peer that does not answer pings.

use nix::sys::signal::Signal;
use rvirt_e2e::{DAEMON_DEADLINE, DaemonOptions, DaemonProcess, TestRoot, at, channel};
use rvirt_proto::error::from_status;
use rvirt_proto::v1::admin_service_client::AdminServiceClient;
use rvirt_proto::v1::domain_service_client::DomainServiceClient;
use rvirt_proto::v1::host_service_client::HostServiceClient;
use rvirt_proto::v1::secret_service_client::SecretServiceClient;
use rvirt_proto::v1::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SECRETS: &str = "virtsecretd";
const UUID: &str = "6dd3e4a5-1d76-44ce-961f-f119f5aad935";

/// The uid the test runs as, which the daemons see over SO_PEERCRED.
fn my_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn deny(permission: &str, uid: u32) -> String {
    format!("[[rule]]\neffect = \"deny\"\npermission = \"{permission}\"\nuid = {uid}\n")
}

fn domain(name: &str) -> Option<DomainRef> {
    Some(DomainRef {
        key: Some(domain_ref::Key::Name(name.into())),
    })
}

fn secret_ref() -> Option<SecretRef> {
    Some(SecretRef {
        key: Some(secret_ref::Key::Uuid(UUID.into())),
    })
}

async fn secrets(root: &TestRoot) -> SecretServiceClient<tonic::transport::Channel> {
    SecretServiceClient::new(channel(&root.socket("virtsecretd-sock")).await)
}

async fn define_secret(client: &mut SecretServiceClient<tonic::transport::Channel>) {
    client
        .define_secret_xml(DefineSecretXmlRequest {
            xml: format!("<secret><uuid>{UUID}</uuid><usage type='tls'><name>policy</name></usage></secret>"),
            flags: 0,
        })
        .await
        .expect("define a secret");
}

async fn undefine(client: &mut SecretServiceClient<tonic::transport::Channel>) -> Result<(), tonic::Status> {
    client
        .undefine_secret(UndefineSecretRequest { secret: secret_ref() })
        .await
        .map(drop)
}

/// Asserts that `err` is the policy's denial of `permission` to the test's uid.
fn assert_denied_by_policy(err: &tonic::Status, permission: &str) {
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{}", err.message());
    assert_eq!(from_status(err).code(), ErrorCode::AccessDenied);
    let caller = format!("uid {}", my_uid());
    for part in [permission, caller.as_str(), "access.toml"] {
        assert!(err.message().contains(part), "{part}: {}", err.message());
    }
}

/// Sends SIGHUP and waits until the daemon has reloaded.
async fn sighup(daemon: &mut DaemonProcess) {
    daemon.signal(Signal::SIGHUP);
    daemon.wait_notify("RELOADING=1").await;
    daemon.wait_notify("READY=1").await;
}

#[tokio::test]
async fn a_rule_denying_domain_start_to_the_callers_uid_refuses_it_through_the_proxy() {
    let root = TestRoot::new();
    root.write_config("access.toml", &deny("domain.start", my_uid()));
    let _proxy = DaemonProcess::start("virtproxyd", &root).await;
    let mut domains = DomainServiceClient::new(channel(&root.socket("rvirt-sock")).await);
    // Other calls, reads and writes, still pass.
    domains
        .destroy_domain(at(
            "test:///default",
            DestroyDomainRequest {
                domain: domain("test"),
                flags: 0,
            },
        ))
        .await
        .expect("domain.stop is not denied");
    let err = domains
        .start_domain(at(
            "test:///default",
            StartDomainRequest {
                domain: domain("test"),
                flags: 0,
            },
        ))
        .await
        .expect_err("domain.start is denied");
    assert_denied_by_policy(&err, "domain.start");
    let listed = domains
        .list_domains(at("test:///default", ListDomainsRequest::default()))
        .await
        .expect("listing is not denied")
        .into_inner();
    let test = listed
        .domains
        .iter()
        .find(|d| d.name == "test")
        .expect("domain test");
    assert_ne!(test.state, DomainState::Running as i32, "the start was refused");
}

#[tokio::test]
async fn sighup_puts_a_changed_policy_file_in_force() {
    let root = TestRoot::new();
    let mut daemon = DaemonProcess::start(SECRETS, &root).await;
    let mut client = secrets(&root).await;
    define_secret(&mut client).await;
    root.write_config("access.toml", &deny("secret.delete", my_uid()));
    sighup(&mut daemon).await;
    let err = undefine(&mut client)
        .await
        .expect_err("secret.delete is denied now");
    assert_denied_by_policy(&err, "secret.delete");
    client
        .get_secret_xml(GetSecretXmlRequest { secret: secret_ref() })
        .await
        .expect("secret.read is not denied");

    std::fs::write(root.path().join("etc/rvirt/access.toml"), "").expect("empty the policy");
    sighup(&mut daemon).await;
    undefine(&mut client)
        .await
        .expect("allowed again after the rule is gone");
}

#[tokio::test]
async fn a_policy_that_does_not_parse_is_refused_on_reload_and_the_old_one_stays() {
    let root = TestRoot::new();
    let policy = root.write_config("access.toml", &deny("secret.delete", my_uid()));
    let mut daemon = DaemonProcess::start(SECRETS, &root).await;
    let mut client = secrets(&root).await;
    define_secret(&mut client).await;

    std::fs::write(&policy, "[[rule]]\neffect = \"perhaps\"\npermission = \"*\"\n").expect("break it");
    let mut admin = AdminServiceClient::new(channel(&root.socket("virtsecretd-admin-sock")).await);
    let err = admin.reload(ReloadRequest {}).await.expect_err("a broken policy");
    assert!(
        err.message().contains("access.toml") && err.message().contains("perhaps"),
        "{}",
        err.message()
    );
    // SIGHUP with the same file logs the error and keeps serving with the old rules.
    sighup(&mut daemon).await;
    let err = undefine(&mut client).await.expect_err("the old rule stays");
    assert_denied_by_policy(&err, "secret.delete");
}

#[tokio::test]
async fn a_daemon_with_an_invalid_policy_refuses_to_start_naming_the_problem() {
    let root = TestRoot::new();
    root.write_config(
        "access.toml",
        "[[rule]]\neffect = \"deny\"\npermission = \"secret.delet\"\n",
    );
    let mut daemon = DaemonProcess::spawn(SECRETS, &root, DaemonOptions::default());
    let (status, log) = daemon.wait_exit(DAEMON_DEADLINE).await.expect("the daemon exits");
    assert!(!status.success(), "started with an invalid policy: {log}");
    assert!(
        log.contains("access.toml") && log.contains("rule 1") && log.contains("secret.delet"),
        "{log}"
    );
}

#[tokio::test]
async fn access_policy_file_points_a_daemon_to_another_policy() {
    let root = TestRoot::new();
    let custom = root.path().join("custom-access.toml");
    std::fs::write(&custom, deny("connect.search_secrets", my_uid())).expect("custom policy");
    root.write_config(
        "virtsecretd.conf",
        &format!("access_policy_file = \"{}\"\n", custom.display()),
    );
    // The default file allows everything it names; the custom one is in force.
    root.write_config(
        "access.toml",
        "[[rule]]\neffect = \"allow\"\npermission = \"*\"\n",
    );
    let _daemon = DaemonProcess::start(SECRETS, &root).await;
    let err = secrets(&root)
        .await
        .list_secrets(ListSecretsRequest::default())
        .await
        .expect_err("denied by the custom policy");
    assert_eq!(from_status(&err).code(), ErrorCode::AccessDenied);
    assert!(
        err.message().contains("custom-access.toml") && err.message().contains("connect.search_secrets"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_client_beyond_max_clients_gets_a_clear_error_and_the_others_keep_working() {
    let root = TestRoot::new();
    root.write_config("virtsecretd.conf", "max_clients = 2\n");
    let _daemon = DaemonProcess::start(SECRETS, &root).await;
    let mut first = HostServiceClient::new(channel(&root.socket("virtsecretd-sock")).await);
    let mut second = HostServiceClient::new(channel(&root.socket("virtsecretd-sock-ro")).await);
    first.get_type(GetTypeRequest {}).await.expect("first client");
    second.get_type(GetTypeRequest {}).await.expect("second client");

    let mut third = HostServiceClient::new(channel(&root.socket("virtsecretd-sock")).await);
    let err = third
        .get_type(GetTypeRequest {})
        .await
        .expect_err("a third client is refused");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{}", err.message());
    assert_eq!(from_status(&err).code(), ErrorCode::ResourceBusy);
    assert!(
        err.message().contains("Too many clients") && err.message().contains("max_clients"),
        "{}",
        err.message()
    );

    first
        .get_type(GetTypeRequest {})
        .await
        .expect("the first client is unaffected");
    second
        .get_type(GetTypeRequest {})
        .await
        .expect("the second client is unaffected");
}

/// HTTP/2 frame types and flags used by the raw peer below.
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

#[tokio::test]
async fn a_peer_that_does_not_answer_keepalive_pings_is_disconnected() {
    let root = TestRoot::new();
    root.write_config(
        "virtsecretd.conf",
        "keepalive_interval = 1\nkeepalive_count = 1\n",
    );
    let _daemon = DaemonProcess::start(SECRETS, &root).await;
    let mut peer = tokio::net::UnixStream::connect(root.socket("virtsecretd-sock"))
        .await
        .expect("connect");
    // The client preface and an empty SETTINGS frame: a valid HTTP/2 client, which then
    // acknowledges the server's settings but never its pings.
    peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    let mut pings = 0;
    let closed = tokio::time::timeout(DAEMON_DEADLINE, async {
        loop {
            let mut header = [0u8; 9];
            if peer.read_exact(&mut header).await.is_err() {
                return; // closed by the daemon
            }
            let length = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0u8; length];
            if peer.read_exact(&mut payload).await.is_err() {
                return;
            }
            match (header[3], header[4] & ACK) {
                (SETTINGS, 0) => {
                    let ack = [0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0];
                    if peer.write_all(&ack).await.is_err() {
                        return;
                    }
                }
                (PING, 0) => pings += 1,
                _ => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent peer was not disconnected");
    assert!(
        pings >= 1,
        "the daemon closed the connection without pinging first"
    );
}

const WEB: &str = "0a0b0c0d-0000-4000-8000-00000000000a";
const DB: &str = "0a0b0c0d-0000-4000-8000-00000000000b";
const WEB2: &str = "0a0b0c0d-0000-4000-8000-00000000000c";

fn by_uuid(uuid: &str) -> Option<SecretRef> {
    Some(SecretRef {
        key: Some(secret_ref::Key::Uuid(uuid.into())),
    })
}

async fn define_tls_secret(
    client: &mut SecretServiceClient<tonic::transport::Channel>,
    uuid: &str,
    name: &str,
) {
    client
        .define_secret_xml(DefineSecretXmlRequest {
            xml: format!("<secret><uuid>{uuid}</uuid><usage type='tls'><name>{name}</name></usage></secret>"),
            flags: 0,
        })
        .await
        .expect("define a secret");
}

async fn set_value(client: &mut SecretServiceClient<tonic::transport::Channel>, uuid: &str) {
    client
        .set_secret_value(SetSecretValueRequest {
            secret: by_uuid(uuid),
            value: b"value".to_vec(),
        })
        .await
        .expect("secret.write is not denied");
}

/// Asserts that `err` is rule `rule`'s denial of `permission` on `object`.
fn assert_denied_on(err: &tonic::Status, permission: &str, object: &str, rule: usize) {
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{}", err.message());
    assert_eq!(from_status(err).code(), ErrorCode::AccessDenied);
    let on = format!("on '{object}'");
    let rule = format!("rule {rule}");
    for part in [permission, on.as_str(), rule.as_str(), "access.toml"] {
        assert!(err.message().contains(part), "{part}: {}", err.message());
    }
}

#[tokio::test]
async fn an_object_rule_is_decided_on_the_object_however_the_caller_names_it() {
    let root = TestRoot::new();
    // The db-* secrets may neither be deleted nor seen by the caller; everything else keeps the
    // default. The rule names the usage id, the calls name the UUID.
    root.write_config("access.toml",
        &format!(
            "[[rule]]\neffect = \"deny\"\npermission = [\"secret.delete\", \"secret.getattr\"]\nuid = {}\nobject = \"db-*\"\n",
            my_uid()
        ),
    );
    let _secrets = DaemonProcess::start(SECRETS, &root).await;
    let _proxy = DaemonProcess::start("virtproxyd", &root).await;
    let mut direct = secrets(&root).await;
    define_tls_secret(&mut direct, WEB, "web-cert").await;
    define_tls_secret(&mut direct, DB, "db-cert").await;
    define_tls_secret(&mut direct, WEB2, "web-2").await;

    // Lookups by UUID are decided on the secret the UUID names.
    let err = direct
        .lookup_secret(LookupSecretRequest { secret: by_uuid(DB) })
        .await
        .expect_err("db-cert is hidden");
    assert_denied_on(&err, "secret.getattr", DB, 1);
    direct
        .lookup_secret(LookupSecretRequest { secret: by_uuid(WEB) })
        .await
        .expect("web-cert is not named by the rule");
    // Lists leave out what the caller may not see.
    let listed: Vec<String> = direct
        .list_secrets(ListSecretsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .secrets
        .into_iter()
        .map(|s| s.usage_id)
        .collect();
    assert!(
        listed.contains(&"web-cert".to_owned()) && listed.contains(&"web-2".to_owned()),
        "{listed:?}"
    );
    assert!(!listed.contains(&"db-cert".to_owned()), "{listed:?}");

    // Through the proxy: the proxy cannot tell the object, so the daemon decides.
    let mut proxied = SecretServiceClient::new(channel(&root.socket("rvirt-sock")).await);
    let err = proxied
        .undefine_secret(at(
            "secret:///system",
            UndefineSecretRequest { secret: by_uuid(DB) },
        ))
        .await
        .expect_err("db-cert may not be deleted through the proxy");
    assert_denied_on(&err, "secret.delete", DB, 1);
    proxied
        .undefine_secret(at(
            "secret:///system",
            UndefineSecretRequest { secret: by_uuid(WEB) },
        ))
        .await
        .expect("web-cert may be deleted through the proxy");

    // Events of hidden secrets are left out: db-cert's value change is set first, web-2's next,
    // and the first event the watcher gets is web-2's.
    let mut events = proxied
        .watch_secret_events(at("secret:///system", WatchSecretEventsRequest::default()))
        .await
        .expect("watch")
        .into_inner();
    set_value(&mut direct, DB).await;
    set_value(&mut direct, WEB2).await;
    let first = tokio::time::timeout(DAEMON_DEADLINE, async {
        loop {
            let message = events.message().await.expect("stream").expect("not ended");
            if let Some(watch_secret_events_response::Message::Event(event)) = message.message {
                break event;
            }
        }
    })
    .await
    .expect("an event within the deadline");
    assert_eq!(first.secret.expect("identity").uuid, WEB2);
}

#[tokio::test]
async fn object_rules_apply_to_the_test_driver_behind_the_proxy() {
    let root = TestRoot::new();
    root.write_config("access.toml",
        &format!(
            "[[rule]]\neffect = \"allow\"\npermission = \"domain.*\"\nuid = {uid}\nobject = \"test\"\n\n[[rule]]\neffect = \"deny\"\npermission = \"domain.start\"\nuid = {uid}\n",
            uid = my_uid()
        ),
    );
    let _proxy = DaemonProcess::start("virtproxyd", &root).await;
    let mut domains = DomainServiceClient::new(channel(&root.socket("rvirt-sock")).await);
    let other = domains
        .define_domain_xml(at(
            "test:///default",
            DefineDomainXmlRequest {
                xml: "<domain type='test'><name>other</name><memory>1024</memory></domain>".into(),
                flags: 0,
            },
        ))
        .await
        .expect("domain.save is not denied")
        .into_inner()
        .domain
        .expect("defined");
    // Named by its UUID, `other` is still `other`: rule 1 does not name it, rule 2 denies.
    let err = domains
        .start_domain(at(
            "test:///default",
            StartDomainRequest {
                domain: Some(DomainRef {
                    key: Some(domain_ref::Key::Uuid(other.uuid.clone())),
                }),
                flags: 0,
            },
        ))
        .await
        .expect_err("other may not start");
    assert_denied_on(&err, "domain.start", "other", 2);
    // `test` is allowed by rule 1 before rule 2 is reached.
    domains
        .destroy_domain(at(
            "test:///default",
            DestroyDomainRequest {
                domain: domain("test"),
                flags: 0,
            },
        ))
        .await
        .expect("destroy test");
    domains
        .start_domain(at(
            "test:///default",
            StartDomainRequest {
                domain: domain("test"),
                flags: 0,
            },
        ))
        .await
        .expect("rule 1 allows starting test");
}
