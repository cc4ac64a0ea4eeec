//! virtsecretd end to end, through its real sockets in a temporary `RVIRT_ROOT`: the secret
//! lifecycle, values, `private`, the read-only socket, events with resume, encryption at rest,
//! values that never leak into logs or files, and durability under `kill -9`.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher as _, Hasher as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use rvirt_e2e::{DAEMON_DEADLINE, DaemonOptions, DaemonProcess, TestRoot, channel};
use rvirt_proto::error::from_status;
use rvirt_proto::v1::secret_service_client::SecretServiceClient;
use rvirt_proto::v1::*;
use tonic::transport::Channel;

const DAEMON: &str = "virtsecretd";
const WAIT: Duration = Duration::from_secs(10);

fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

fn random_uuid() -> String {
    let hex = format!("{:016x}{:016x}", random_u64(), random_u64());
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// A value no other text in the test run contains.
fn random_value(tag: &str) -> Vec<u8> {
    format!("{tag}-Zq{:016x}{:016x}", random_u64(), random_u64()).into_bytes()
}

fn config_dir(root: &TestRoot) -> PathBuf {
    root.path().join("etc/rvirt/secret")
}

fn data_dir(root: &TestRoot) -> PathBuf {
    root.path().join("var/lib/rvirt/secret")
}

fn token_path(root: &TestRoot) -> PathBuf {
    root.path().join("run/rvirt/secret/internal-token")
}

async fn client(root: &TestRoot) -> SecretServiceClient<Channel> {
    SecretServiceClient::new(channel(&root.socket("virtsecretd-sock")).await)
}

async fn read_only_client(root: &TestRoot) -> SecretServiceClient<Channel> {
    SecretServiceClient::new(channel(&root.socket("virtsecretd-sock-ro")).await)
}

fn by_uuid(uuid: &str) -> Option<SecretRef> {
    Some(SecretRef {
        key: Some(secret_ref::Key::Uuid(uuid.to_owned())),
    })
}

fn by_usage(usage_type: SecretUsageType, id: &str) -> Option<SecretRef> {
    Some(SecretRef {
        key: Some(secret_ref::Key::Usage(SecretUsage {
            usage_type: usage_type as i32,
            usage_id: id.to_owned(),
        })),
    })
}

fn code(status: &tonic::Status) -> ErrorCode {
    from_status(status).code()
}

async fn define(client: &mut SecretServiceClient<Channel>, xml: &str) -> Result<Secret, tonic::Status> {
    let response = client
        .define_secret_xml(DefineSecretXmlRequest {
            xml: xml.to_owned(),
            flags: 0,
        })
        .await?;
    Ok(response.into_inner().secret.expect("the defined secret"))
}

async fn set_value(
    client: &mut SecretServiceClient<Channel>,
    uuid: &str,
    value: &[u8],
) -> Result<(), tonic::Status> {
    client
        .set_secret_value(SetSecretValueRequest {
            secret: by_uuid(uuid),
            value: value.to_vec(),
        })
        .await
        .map(|_| ())
}

async fn get_value(client: &mut SecretServiceClient<Channel>, uuid: &str) -> Result<Vec<u8>, tonic::Status> {
    Ok(client
        .get_secret_value(GetSecretValueRequest {
            secret: by_uuid(uuid),
        })
        .await?
        .into_inner()
        .value)
}

async fn list(client: &mut SecretServiceClient<Channel>, flags: u32) -> Vec<String> {
    client
        .list_secrets(ListSecretsRequest { flags })
        .await
        .expect("ListSecrets")
        .into_inner()
        .secrets
        .into_iter()
        .map(|s| s.uuid)
        .collect()
}

fn xml(uuid: &str, attrs: &str, inner: &str) -> String {
    format!("<secret {attrs}><uuid>{uuid}</uuid>{inner}</secret>")
}

/// Stops the daemon with SIGTERM and returns its whole log.
async fn stop(mut daemon: DaemonProcess) -> String {
    daemon.signal(Signal::SIGTERM);
    let (status, log) = daemon
        .wait_exit(DAEMON_DEADLINE)
        .await
        .expect("exit after SIGTERM");
    assert!(status.success(), "virtsecretd failed: {log}");
    log
}

/// Every regular file under `dir`.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(path),
                Ok(t) if t.is_file() => out.push(path),
                _ => {}
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn temporary_files(root: &TestRoot) -> Vec<PathBuf> {
    [config_dir(root), data_dir(root)]
        .iter()
        .flat_map(|d| all_files(d))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"))
        })
        .collect()
}

#[tokio::test]
async fn define_lookup_both_ways_xml_and_undefine() {
    let root = TestRoot::new();
    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    let uuid = random_uuid();
    let input = xml(
        &uuid.to_uppercase(),
        "private='yes'",
        "<description>Ceph key</description><usage type='ceph'><name>client.admin</name></usage>",
    );
    let defined = define(&mut secrets, &input).await.expect("define");
    assert_eq!(defined.uuid, uuid, "the UUID comes back canonical");
    assert_eq!(defined.usage_type, SecretUsageType::Ceph as i32);
    assert_eq!(defined.usage_id, "client.admin");
    assert!(defined.private && !defined.ephemeral && !defined.has_value);

    let found = secrets
        .lookup_secret(LookupSecretRequest {
            secret: by_usage(SecretUsageType::Ceph, "client.admin"),
        })
        .await
        .expect("lookup by usage")
        .into_inner()
        .secret
        .expect("secret");
    assert_eq!(found, defined);
    let found = secrets
        .lookup_secret(LookupSecretRequest {
            secret: by_uuid(&uuid),
        })
        .await
        .expect("lookup by uuid")
        .into_inner()
        .secret
        .expect("secret");
    assert_eq!(found, defined);

    let text = secrets
        .get_secret_xml(GetSecretXmlRequest {
            secret: by_uuid(&uuid),
        })
        .await
        .expect("xml")
        .into_inner()
        .xml;
    assert_eq!(
        text,
        format!(
            "<secret ephemeral=\"no\" private=\"yes\">\n  <uuid>{uuid}</uuid>\n  <description>Ceph key</description>\n  \
             <usage type=\"ceph\">\n    <name>client.admin</name>\n  </usage>\n</secret>\n"
        )
    );
    assert_eq!(list(&mut secrets, 0).await, vec![uuid.clone()]);

    secrets
        .undefine_secret(UndefineSecretRequest {
            secret: by_uuid(&uuid),
        })
        .await
        .expect("undefine");
    assert!(list(&mut secrets, 0).await.is_empty());
    let err = secrets
        .lookup_secret(LookupSecretRequest {
            secret: by_usage(SecretUsageType::Ceph, "client.admin"),
        })
        .await
        .expect_err("gone");
    assert_eq!(code(&err), ErrorCode::NoSecret);
    assert_eq!(err.code(), tonic::Code::NotFound);
    drop(secrets);
    stop(daemon).await;
}

#[tokio::test]
async fn second_secret_with_the_same_usage_is_refused() {
    let root = TestRoot::new();
    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    let usage = "<usage type='volume'><volume>/var/lib/images/a.qcow2</volume></usage>";
    let first = random_uuid();
    define(&mut secrets, &xml(&first, "", usage))
        .await
        .expect("first");
    let err = define(&mut secrets, &xml(&random_uuid(), "", usage))
        .await
        .expect_err("same usage, another uuid");
    assert_eq!(code(&err), ErrorCode::OperationInvalid);
    assert!(err.message().contains(&first), "{}", err.message());
    assert_eq!(list(&mut secrets, 0).await, vec![first]);
    drop(secrets);
    stop(daemon).await;
}

#[tokio::test]
async fn bad_xml_is_an_xml_error_naming_its_path() {
    let root = TestRoot::new();
    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    let err = define(&mut secrets, "<secret><uuid>zz</uuid></secret>")
        .await
        .expect_err("bad uuid");
    let detail = from_status(&err);
    assert_eq!(detail.code(), ErrorCode::XmlError);
    assert_eq!(detail.xml_path, "/secret/uuid");
    let err = define(&mut secrets, "<secret><usage type='ceph'/></secret>")
        .await
        .expect_err("no name");
    assert_eq!(from_status(&err).xml_path, "/secret/usage/name");
    drop(secrets);
    stop(daemon).await;
}

#[tokio::test]
async fn list_flags_select_ephemeral_and_private_secrets() {
    let root = TestRoot::new();
    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    let mut uuids = [random_uuid(), random_uuid(), random_uuid()];
    uuids.sort();
    let [plain, ephemeral, private] = uuids.clone();
    define(&mut secrets, &xml(&plain, "", "")).await.expect("plain");
    define(&mut secrets, &xml(&ephemeral, "ephemeral='yes'", ""))
        .await
        .expect("ephemeral");
    define(&mut secrets, &xml(&private, "private='yes'", ""))
        .await
        .expect("private");
    assert_eq!(list(&mut secrets, 0).await, uuids.to_vec(), "sorted by UUID");
    let e = SecretListFlag::Ephemeral as u32;
    let ne = SecretListFlag::NoEphemeral as u32;
    let p = SecretListFlag::Private as u32;
    let np = SecretListFlag::NoPrivate as u32;
    assert_eq!(list(&mut secrets, e).await, vec![ephemeral.clone()]);
    assert_eq!(list(&mut secrets, ne).await, vec![plain.clone(), private.clone()]);
    assert_eq!(list(&mut secrets, p).await, vec![private.clone()]);
    assert_eq!(list(&mut secrets, np | ne).await, vec![plain.clone()]);
    assert_eq!(list(&mut secrets, e | ne).await.len(), 3);
    let err = secrets
        .list_secrets(ListSecretsRequest { flags: 1 << 7 })
        .await
        .expect_err("unknown flag");
    assert_eq!(code(&err), ErrorCode::InvalidArg);
    drop(secrets);
    stop(daemon).await;
}

#[tokio::test]
async fn value_set_is_the_value_got_and_survives_a_restart() {
    let root = TestRoot::new();
    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    let uuid = random_uuid();
    define(&mut secrets, &xml(&uuid, "", "")).await.expect("define");
    let err = get_value(&mut secrets, &uuid).await.expect_err("no value yet");
    assert_eq!(code(&err), ErrorCode::NoSecret);
    let value = random_value("restart");
    set_value(&mut secrets, &uuid, &value).await.expect("set");
    assert_eq!(get_value(&mut secrets, &uuid).await.expect("get"), value);
    drop(secrets);
    stop(daemon).await;

    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    assert_eq!(
        get_value(&mut secrets, &uuid).await.expect("get after restart"),
        value
    );
    let lookup = secrets
        .lookup_secret(LookupSecretRequest {
            secret: by_uuid(&uuid),
        })
        .await
        .expect("lookup")
        .into_inner()
        .secret
        .expect("secret");
    assert!(lookup.has_value);
    drop(secrets);
    stop(daemon).await;
}

#[tokio::test]
async fn files_at_rest_are_private_and_values_encrypted() {
    let root = TestRoot::new();
    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    let uuid = random_uuid();
    define(&mut secrets, &xml(&uuid, "", "")).await.expect("define");
    let value = random_value("at-rest");
    set_value(&mut secrets, &uuid, &value).await.expect("set");
    let def_file = config_dir(&root).join(format!("{uuid}.xml"));
    let value_file = data_dir(&root).join(format!("{uuid}.value"));
    let key_file = data_dir(&root).join("secrets-encryption-key");
    for path in [&def_file, &value_file, &key_file, &token_path(&root)] {
        assert_eq!(mode(path), 0o600, "{}", path.display());
    }
    assert_eq!(std::fs::metadata(&key_file).expect("key").len(), 32);
    let sealed = std::fs::read(&value_file).expect("value file");
    assert_eq!(sealed[0], 1, "format version byte");
    assert_eq!(
        sealed.len(),
        1 + 24 + value.len() + 16,
        "version, nonce, ciphertext, tag"
    );
    assert!(!contains(&sealed, &value));
    drop(secrets);
    stop(daemon).await;
}

#[tokio::test]
async fn ephemeral_secret_never_touches_the_disk_and_is_gone_after_restart() {
    let root = TestRoot::new();
    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    let uuid = random_uuid();
    define(&mut secrets, &xml(&uuid, "ephemeral='yes'", ""))
        .await
        .expect("define");
    let value = random_value("ephemeral");
    set_value(&mut secrets, &uuid, &value).await.expect("set");
    assert_eq!(get_value(&mut secrets, &uuid).await.expect("get"), value);
    let on_disk: Vec<PathBuf> = all_files(root.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&uuid))
        .collect();
    assert!(on_disk.is_empty(), "ephemeral secret on disk: {on_disk:?}");
    drop(secrets);
    stop(daemon).await;
    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    assert!(list(&mut secrets, 0).await.is_empty());
    drop(secrets);
    stop(daemon).await;
}

#[tokio::test]
async fn private_value_is_refused_to_every_client_and_given_to_the_internal_path() {
    let root = TestRoot::new();
    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    let uuid = random_uuid();
    define(&mut secrets, &xml(&uuid, "private='yes'", ""))
        .await
        .expect("define");
    let value = random_value("private");
    set_value(&mut secrets, &uuid, &value).await.expect("set");
    // Root is the most privileged client there is, and is refused.
    let err = get_value(&mut secrets, &uuid).await.expect_err("private");
    assert_eq!(code(&err), ErrorCode::OperationDenied);
    assert!(!contains(err.message().as_bytes(), &value));

    let token = std::fs::read_to_string(token_path(&root)).expect("token");
    let internal = secrets
        .get_secret_value_internal(GetSecretValueInternalRequest {
            secret: by_uuid(&uuid),
            token: token.clone(),
        })
        .await
        .expect("internal path")
        .into_inner();
    assert_eq!(internal.value, value);
    let err = secrets
        .get_secret_value_internal(GetSecretValueInternalRequest {
            secret: by_uuid(&uuid),
            token: "0".repeat(64),
        })
        .await
        .expect_err("wrong token");
    assert_eq!(code(&err), ErrorCode::AccessDenied);
    drop(secrets);
    stop(daemon).await;
}

#[tokio::test]
async fn internal_token_changes_at_each_start() {
    let root = TestRoot::new();
    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let first = std::fs::read_to_string(token_path(&root)).expect("token");
    stop(daemon).await;
    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let second = std::fs::read_to_string(token_path(&root)).expect("token");
    assert_ne!(first, second);
    let mut secrets = client(&root).await;
    let uuid = random_uuid();
    define(&mut secrets, &xml(&uuid, "", "")).await.expect("define");
    set_value(&mut secrets, &uuid, b"v").await.expect("set");
    let err = secrets
        .get_secret_value_internal(GetSecretValueInternalRequest {
            secret: by_uuid(&uuid),
            token: first,
        })
        .await
        .expect_err("the previous start's token");
    assert_eq!(code(&err), ErrorCode::AccessDenied);
    drop(secrets);
    stop(daemon).await;
}

#[tokio::test]
async fn read_only_socket_never_reads_or_writes_values() {
    let root = TestRoot::new();
    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut rw = client(&root).await;
    let uuid = random_uuid();
    define(&mut rw, &xml(&uuid, "", "")).await.expect("define");
    let value = random_value("read-only");
    set_value(&mut rw, &uuid, &value).await.expect("set");

    let mut ro = read_only_client(&root).await;
    let err = get_value(&mut ro, &uuid)
        .await
        .expect_err("GetSecretValue on -sock-ro");
    assert_eq!(code(&err), ErrorCode::OperationDenied);
    let token = std::fs::read_to_string(token_path(&root)).expect("token");
    let err = ro
        .get_secret_value_internal(GetSecretValueInternalRequest {
            secret: by_uuid(&uuid),
            token,
        })
        .await
        .expect_err("GetSecretValueInternal on -sock-ro");
    assert_eq!(code(&err), ErrorCode::OperationDenied);
    let err = set_value(&mut ro, &uuid, b"other")
        .await
        .expect_err("SetSecretValue on -sock-ro");
    assert_eq!(code(&err), ErrorCode::OperationDenied);
    // Reads of definitions are fine there.
    assert_eq!(list(&mut ro, 0).await, vec![uuid.clone()]);
    assert_eq!(get_value(&mut rw, &uuid).await.expect("unchanged"), value);
    drop((rw, ro));
    stop(daemon).await;
}

async fn next_message(
    stream: &mut tonic::Streaming<WatchSecretEventsResponse>,
) -> watch_secret_events_response::Message {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a watch message in time")
        .expect("the watch is healthy")
        .expect("the watch is open")
        .message
        .expect("a message")
}

fn event_summary(message: watch_secret_events_response::Message) -> (u64, String, &'static str) {
    let watch_secret_events_response::Message::Event(event) = message else {
        panic!("expected an event, got {message:?}");
    };
    let kind = match event.event.expect("event body") {
        secret_event::Event::Lifecycle(l) if l.r#type == SecretEventLifecycleType::Defined as i32 => {
            "defined"
        }
        secret_event::Event::Lifecycle(_) => "undefined",
        secret_event::Event::ValueChanged(_) => "value_changed",
    };
    (event.sequence, event.secret.expect("identity").uuid, kind)
}

#[tokio::test]
async fn events_report_the_lifecycle_and_resume_by_sequence() {
    let root = TestRoot::new();
    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    let mut stream = secrets
        .watch_secret_events(WatchSecretEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let watch_secret_events_response::Message::CaughtUp(caught_up) = next_message(&mut stream).await else {
        panic!("a live watch starts with CaughtUp");
    };
    let epoch = caught_up.epoch;
    let uuid = random_uuid();
    let value = random_value("events");
    define(
        &mut secrets,
        &xml(&uuid, "", "<usage type='tls'><name>web</name></usage>"),
    )
    .await
    .expect("define");
    set_value(&mut secrets, &uuid, &value).await.expect("set");
    secrets
        .undefine_secret(UndefineSecretRequest {
            secret: by_uuid(&uuid),
        })
        .await
        .expect("undefine");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let message = next_message(&mut stream).await;
        let encoded = format!("{message:?}");
        assert!(!encoded.contains(&String::from_utf8_lossy(&value).into_owned()));
        seen.push(event_summary(message));
    }
    let first = seen[0].0;
    assert_eq!(
        seen,
        vec![
            (first, uuid.clone(), "defined"),
            (first + 1, uuid.clone(), "value_changed"),
            (first + 2, uuid.clone(), "undefined"),
        ]
    );
    drop(stream);

    // A client that handled the first event resumes after it: the other two, then CaughtUp.
    let mut resumed = secrets
        .watch_secret_events(WatchSecretEventsRequest {
            since_epoch: epoch.clone(),
            since_sequence: first,
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(event_summary(next_message(&mut resumed).await), seen[1]);
    assert_eq!(event_summary(next_message(&mut resumed).await), seen[2]);
    assert!(matches!(
        next_message(&mut resumed).await,
        watch_secret_events_response::Message::CaughtUp(CaughtUp { current_sequence, .. }) if current_sequence == first + 2
    ));
    drop(resumed);

    // Filtered: only value changes of one secret, replayed from the same point.
    let mut filtered = secrets
        .watch_secret_events(WatchSecretEventsRequest {
            since_epoch: epoch,
            since_sequence: first,
            secret: by_usage(SecretUsageType::Tls, "web"),
            event_ids: vec![SecretEventId::ValueChanged as i32],
        })
        .await
        .expect("filtered")
        .into_inner();
    assert_eq!(event_summary(next_message(&mut filtered).await), seen[1]);
    assert!(matches!(
        next_message(&mut filtered).await,
        watch_secret_events_response::Message::CaughtUp(_)
    ));
    drop((filtered, secrets));
    stop(daemon).await;
}

#[tokio::test]
async fn values_never_appear_in_the_trace_log_or_in_any_file() {
    let root = TestRoot::new();
    let options = DaemonOptions {
        env: vec![("RVIRT_LOG".into(), "trace".into())],
        ..Default::default()
    };
    let daemon = DaemonProcess::start_with(DAEMON, &root, options).await;
    let mut secrets = client(&root).await;
    let persistent = random_uuid();
    let private = random_uuid();
    let ephemeral = random_uuid();
    define(&mut secrets, &xml(&persistent, "", ""))
        .await
        .expect("define");
    define(&mut secrets, &xml(&private, "private='yes'", ""))
        .await
        .expect("define");
    define(&mut secrets, &xml(&ephemeral, "ephemeral='yes'", ""))
        .await
        .expect("define");
    let values: Vec<(String, Vec<u8>)> = [&persistent, &private, &ephemeral]
        .into_iter()
        .map(|u| (u.clone(), random_value("leak")))
        .collect();
    for (uuid, value) in &values {
        set_value(&mut secrets, uuid, value).await.expect("set");
    }
    assert_eq!(
        get_value(&mut secrets, &persistent).await.expect("get"),
        values[0].1
    );
    assert_eq!(
        get_value(&mut secrets, &ephemeral).await.expect("get"),
        values[2].1
    );
    let err = get_value(&mut secrets, &private).await.expect_err("private");
    assert!(!contains(err.message().as_bytes(), &values[1].1));
    let token = std::fs::read_to_string(token_path(&root)).expect("token");
    let internal = secrets
        .get_secret_value_internal(GetSecretValueInternalRequest {
            secret: by_uuid(&private),
            token,
        })
        .await
        .expect("internal");
    assert_eq!(internal.into_inner().value, values[1].1);
    drop(secrets);
    let log = stop(daemon).await;
    assert!(
        log.contains("TRACE"),
        "the daemon did not log at trace level:\n{log}"
    );
    assert!(
        log.contains(&persistent),
        "the log should name the secrets it handled"
    );

    let files = all_files(root.path());
    assert!(
        files.iter().any(|p| p.ends_with(format!("{persistent}.value"))),
        "the value file exists"
    );
    for (uuid, value) in &values {
        // The clear bytes, and the encodings a careless log line would use.
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        let debug_bytes = format!("{:?}", value.as_slice());
        let forms = [value.clone(), hex.into_bytes(), debug_bytes.into_bytes()];
        for form in &forms {
            assert!(
                !contains(log.as_bytes(), form),
                "the value of {uuid} is in the daemon's log"
            );
            for file in &files {
                let bytes = std::fs::read(file).expect("read a file under the root");
                assert!(
                    !contains(&bytes, form),
                    "the value of {uuid} is in {}",
                    file.display()
                );
            }
        }
    }
}

#[tokio::test]
async fn a_corrupted_value_fails_alone_and_the_daemon_still_starts() {
    let root = TestRoot::new();
    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    let (damaged, intact) = (random_uuid(), random_uuid());
    for uuid in [&damaged, &intact] {
        define(&mut secrets, &xml(uuid, "", "")).await.expect("define");
        set_value(&mut secrets, uuid, uuid.as_bytes()).await.expect("set");
    }
    drop(secrets);
    stop(daemon).await;
    let path = data_dir(&root).join(format!("{damaged}.value"));
    let mut bytes = std::fs::read(&path).expect("value file");
    bytes[30] ^= 0xff;
    std::fs::write(&path, bytes).expect("corrupt");

    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    let err = get_value(&mut secrets, &damaged).await.expect_err("corrupted");
    assert_eq!(code(&err), ErrorCode::ReadFailed);
    assert!(err.message().contains("set the value again"), "{}", err.message());
    assert_eq!(
        get_value(&mut secrets, &intact).await.expect("intact"),
        intact.as_bytes()
    );
    // Setting it again repairs it.
    set_value(&mut secrets, &damaged, b"repaired")
        .await
        .expect("set again");
    assert_eq!(
        get_value(&mut secrets, &damaged).await.expect("repaired"),
        b"repaired"
    );
    drop(secrets);
    stop(daemon).await;
}

#[tokio::test]
async fn a_broken_definition_file_is_skipped_and_the_others_load() {
    let root = TestRoot::new();
    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    let good = random_uuid();
    define(&mut secrets, &xml(&good, "", "")).await.expect("define");
    drop(secrets);
    stop(daemon).await;
    let broken = config_dir(&root).join(format!("{}.xml", random_uuid()));
    std::fs::write(&broken, "<secret><uuid>").expect("torn file");

    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    assert_eq!(list(&mut secrets, 0).await, vec![good]);
    drop(secrets);
    let log = stop(daemon).await;
    assert!(log.contains("skipping a secret definition"), "{log}");
    assert!(
        broken.exists(),
        "a broken definition is left for the administrator"
    );
}

#[tokio::test]
async fn systemd_credential_is_the_key_when_present() {
    let root = TestRoot::new();
    let credentials = root.path().join("credentials");
    std::fs::create_dir_all(&credentials).expect("credentials dir");
    std::fs::write(credentials.join("secrets-encryption-key"), [0x5au8; 32]).expect("credential");
    let with_credential = || DaemonOptions {
        env: vec![("CREDENTIALS_DIRECTORY".into(), credentials.display().to_string())],
        ..Default::default()
    };
    let daemon = DaemonProcess::start_with(DAEMON, &root, with_credential()).await;
    let mut secrets = client(&root).await;
    let uuid = random_uuid();
    define(&mut secrets, &xml(&uuid, "", "")).await.expect("define");
    set_value(&mut secrets, &uuid, b"sealed with the credential")
        .await
        .expect("set");
    drop(secrets);
    stop(daemon).await;
    assert!(
        !data_dir(&root).join("secrets-encryption-key").exists(),
        "no key file is created when the credential exists"
    );

    // Without the credential the daemon makes its own key, and the value does not open.
    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    let err = get_value(&mut secrets, &uuid).await.expect_err("another key");
    assert_eq!(code(&err), ErrorCode::ReadFailed);
    drop(secrets);
    stop(daemon).await;

    let daemon = DaemonProcess::start_with(DAEMON, &root, with_credential()).await;
    let mut secrets = client(&root).await;
    assert_eq!(
        get_value(&mut secrets, &uuid)
            .await
            .expect("the credential again"),
        b"sealed with the credential"
    );
    drop(secrets);
    stop(daemon).await;
}

/// What the burst's clients were told.
#[derive(Debug, Default)]
struct Acknowledged {
    /// Secrets whose define returned OK, with the value they were to get.
    defined: BTreeMap<String, Vec<u8>>,
    /// Secrets whose SetSecretValue returned OK.
    valued: BTreeSet<String>,
}

#[tokio::test]
async fn kill_9_during_a_burst_loses_no_acknowledged_secret_or_value() {
    const WORKERS: usize = 4;
    const PER_WORKER: usize = 50;
    const KILL_AFTER: usize = 120; // acknowledgements (defines + set values) out of 400
    let root = TestRoot::new();
    let mut daemon = DaemonProcess::start(DAEMON, &root).await;
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    let (acks_tx, mut acks) = tokio::sync::watch::channel(0usize);
    let acks_tx = Arc::new(acks_tx);
    let started = std::time::Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let channel = channel(&root.socket("virtsecretd-sock")).await;
        let acknowledged = Arc::clone(&acknowledged);
        let acks_tx = Arc::clone(&acks_tx);
        workers.spawn(async move {
            let mut secrets = SecretServiceClient::new(channel);
            for i in 0..PER_WORKER {
                let uuid = random_uuid();
                let value = random_value(&format!("burst-{worker}-{i}"));
                let usage = format!("<usage type='ceph'><name>burst-{worker}-{i}</name></usage>");
                if define(&mut secrets, &xml(&uuid, "", &usage)).await.is_err() {
                    return;
                }
                acknowledged
                    .lock()
                    .expect("lock")
                    .defined
                    .insert(uuid.clone(), value.clone());
                acks_tx.send_modify(|n| *n += 1);
                if set_value(&mut secrets, &uuid, &value).await.is_err() {
                    return;
                }
                acknowledged.lock().expect("lock").valued.insert(uuid);
                acks_tx.send_modify(|n| *n += 1);
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(120), acks.wait_for(|n| *n >= KILL_AFTER))
        .await
        .expect("acknowledgements in time")
        .expect("workers running");
    daemon.signal(Signal::SIGKILL);
    let killed_at = started.elapsed();
    while workers.join_next().await.is_some() {}
    let (status, _) = daemon.wait_exit(DAEMON_DEADLINE).await.expect("killed");
    assert!(!status.success());
    let acknowledged = std::mem::take(&mut *acknowledged.lock().expect("lock"));
    let total_acks = acknowledged.defined.len() + acknowledged.valued.len();
    assert!(
        (KILL_AFTER..2 * WORKERS * PER_WORKER).contains(&total_acks),
        "the kill must land inside the burst ({total_acks} acknowledgements)"
    );
    let leftovers = temporary_files(&root).len();
    eprintln!(
        "burst: {total_acks} acknowledgements in {killed_at:?} before SIGKILL, {leftovers} temporary file(s) left by the kill"
    );

    let daemon = DaemonProcess::start(DAEMON, &root).await;
    let mut secrets = client(&root).await;
    let listed = secrets
        .list_secrets(ListSecretsRequest { flags: 0 })
        .await
        .expect("list")
        .into_inner()
        .secrets;
    let listed: BTreeMap<String, Secret> = listed.into_iter().map(|s| (s.uuid.clone(), s)).collect();
    for (uuid, value) in &acknowledged.defined {
        let secret = listed
            .get(uuid)
            .unwrap_or_else(|| panic!("acknowledged secret {uuid} is lost"));
        if acknowledged.valued.contains(uuid) {
            assert!(secret.has_value, "acknowledged value of {uuid} is lost");
        }
        if secret.has_value {
            // Acknowledged, or in flight at the kill: either way, whole and correct.
            assert_eq!(
                &get_value(&mut secrets, uuid).await.expect("value decrypts"),
                value,
                "{uuid}"
            );
        }
    }
    // Secrets whose define was in flight may exist; they must be whole too.
    for (uuid, secret) in &listed {
        if !acknowledged.defined.contains_key(uuid) {
            assert!(!secret.has_value, "{uuid} got a value nobody sent");
        }
    }
    let definition_files = all_files(&config_dir(&root))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .count();
    assert_eq!(
        definition_files,
        listed.len(),
        "every definition file parsed and loaded"
    );
    assert_eq!(
        temporary_files(&root),
        Vec::<PathBuf>::new(),
        "temporary files left after restart"
    );
    drop(secrets);
    let log = stop(daemon).await;
    assert!(!log.contains("skipping a secret definition"), "{log}");
    assert!(!log.contains("cannot be decrypted"), "{log}");
}

#[tokio::test]
async fn ephemeral_secret_keeps_the_daemon_from_exiting_when_idle() {
    let root = TestRoot::new();
    let options = DaemonOptions {
        args: vec!["--timeout".into(), "1".into()],
        ..Default::default()
    };
    let mut daemon = DaemonProcess::start_with(DAEMON, &root, options).await;
    let mut secrets = client(&root).await;
    let uuid = random_uuid();
    define(&mut secrets, &xml(&uuid, "ephemeral='yes'", ""))
        .await
        .expect("define");
    drop(secrets);
    // Three idle periods pass with no client: the daemon stays, or the secret would be lost.
    assert!(
        daemon.wait_exit(Duration::from_secs(3)).await.is_none(),
        "virtsecretd exited while holding an ephemeral secret"
    );
    let mut secrets = client(&root).await;
    assert_eq!(list(&mut secrets, 0).await, vec![uuid.clone()]);
    secrets
        .undefine_secret(UndefineSecretRequest {
            secret: by_uuid(&uuid),
        })
        .await
        .expect("undefine");
    drop(secrets);
    let (status, log) = daemon
        .wait_exit(DAEMON_DEADLINE)
        .await
        .expect("idle exit once nothing is held");
    assert!(status.success(), "{log}");
}

/// A resumable subscription to secret events on virtsecretd's own socket.
async fn secret_subscription(root: &TestRoot) -> rvirt::watch::Subscription<SecretEvent> {
    rvirt_e2e::secret_subscription(root.socket("virtsecretd-sock"), None).await
}

async fn next_item(
    subscription: &mut rvirt::watch::Subscription<SecretEvent>,
) -> rvirt::watch::WatchItem<SecretEvent> {
    use tokio_stream::StreamExt as _;
    tokio::time::timeout(DAEMON_DEADLINE, subscription.next())
        .await
        .expect("an item in time")
        .expect("the subscription is open")
}

#[tokio::test]
async fn a_subscription_survives_a_daemon_restart_and_says_what_it_missed() {
    use rvirt::watch::WatchItem;
    let root = TestRoot::new();
    let daemon = DaemonProcess::start("virtsecretd", &root).await;
    let mut events = secret_subscription(&root).await;
    let first = random_uuid();
    define(
        &mut client(&root).await,
        &xml(&first, "", "<usage type='tls'><name>a</name></usage>"),
    )
    .await
    .expect("define");
    let WatchItem::Event(event) = next_item(&mut events).await else {
        panic!("expected the define event")
    };
    assert_eq!(event.secret.map(|s| s.uuid), Some(first));

    // The daemon goes away under the live subscription and comes back with a new numbering.
    stop(daemon).await;
    let _daemon = DaemonProcess::start("virtsecretd", &root).await;
    let WatchItem::Resync(resync) = next_item(&mut events).await else {
        panic!("expected a resync")
    };
    assert_eq!(resync.reason(), ResyncReason::EpochChanged);
    let second = random_uuid();
    define(
        &mut client(&root).await,
        &xml(&second, "", "<usage type='tls'><name>b</name></usage>"),
    )
    .await
    .expect("define after restart");
    let WatchItem::Event(event) = next_item(&mut events).await else {
        panic!("expected the new event")
    };
    assert_eq!(event.secret.map(|s| s.uuid), Some(second));
}

#[tokio::test]
async fn sigterm_ends_open_event_watches_instead_of_waiting_for_the_drain_timeout() {
    let root = TestRoot::new();
    let daemon = DaemonProcess::start("virtsecretd", &root).await;
    let _events = secret_subscription(&root).await;
    let log = stop(daemon).await;
    assert!(!log.contains("after the drain timeout"), "{log}");
}
