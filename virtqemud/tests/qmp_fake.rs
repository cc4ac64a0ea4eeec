//! The QMP client against a fake QMP server in this process, on a temporary Unix socket: the
//! server scripts exactly what QEMU would say (greeting, answers out of order, events between
//! answers, malformed JSON, a disconnect in the middle of a command).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use virtqemud::qmp::commands::RunState;
use virtqemud::qmp::{
    QmpClient, QmpError, QmpErrorClass, QmpEventKind, QmpEvents, QmpOptions, ShutdownCause,
};

/// Every wait in these tests is bounded by this, so a bug fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {LIMIT:?}"))
}

struct FakeQemu {
    listener: UnixListener,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeQemu {
    fn new() -> FakeQemu {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind the fake QMP socket");
        FakeQemu {
            listener,
            path,
            _dir: dir,
        }
    }

    async fn accept(&self) -> FakeConn {
        let (stream, _) = within("accept", self.listener.accept()).await.expect("accept");
        let (read, write) = stream.into_split();
        FakeConn {
            reader: BufReader::new(read),
            writer: write,
        }
    }
}

struct FakeConn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl FakeConn {
    async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write to the client");
    }

    async fn send(&mut self, value: Value) {
        let mut line = value.to_string().into_bytes();
        line.extend_from_slice(b"\r\n");
        self.send_raw(&line).await;
    }

    /// The next command the client sent.
    async fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = within("a command from the client", self.reader.read_line(&mut line))
            .await
            .expect("read from the client");
        assert!(n > 0, "the client closed the connection");
        serde_json::from_str(&line).expect("the client sends JSON")
    }

    async fn greet(&mut self) {
        self.send(
            json!({"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10},
            "package": "fake"}, "capabilities": ["oob"]}}),
        )
        .await;
    }

    /// Greeting and capabilities negotiation, as QEMU does them.
    async fn handshake(&mut self) {
        self.greet().await;
        let cmd = self.recv().await;
        assert_eq!(cmd["execute"], "qmp_capabilities");
        self.reply(&cmd, json!({})).await;
    }

    async fn reply(&mut self, cmd: &Value, value: Value) {
        self.send(json!({"return": value, "id": cmd["id"]})).await;
    }
}

/// A client connected to a fake QEMU that has done the handshake.
async fn connected(options: QmpOptions) -> (FakeQemu, FakeConn, QmpClient, QmpEvents) {
    let fake = FakeQemu::new();
    let path = fake.path.clone();
    let client = tokio::spawn(async move { QmpClient::connect(&path, options).await });
    let mut conn = fake.accept().await;
    conn.handshake().await;
    let (client, events) = within("connect", client)
        .await
        .expect("connect task")
        .expect("connect");
    (fake, conn, client, events)
}

#[tokio::test]
async fn connect_reads_greeting_and_negotiates_capabilities() {
    let fake = FakeQemu::new();
    let path = fake.path.clone();
    let client = tokio::spawn(async move { QmpClient::connect(&path, QmpOptions::default()).await });
    let mut conn = fake.accept().await;
    conn.greet().await;
    let cmd = conn.recv().await;
    assert_eq!(cmd["execute"], "qmp_capabilities");
    assert!(cmd["id"].is_u64(), "every command carries a numeric id: {cmd}");
    assert!(
        cmd.get("arguments").is_none(),
        "no arguments for qmp_capabilities: {cmd}"
    );
    conn.reply(&cmd, json!({})).await;
    let (client, _events) = within("connect", client).await.expect("task").expect("connect");
    assert_eq!(client.greeting().version.qemu.to_string(), "10.0.2");
    assert_eq!(client.greeting().capabilities, vec!["oob".to_owned()]);
}

#[tokio::test]
async fn answers_out_of_order_reach_their_own_commands() {
    let (_fake, mut conn, client, _events) = connected(QmpOptions::default()).await;
    let c1 = client.clone();
    let status = tokio::spawn(async move { c1.query_status().await });
    let first = conn.recv().await;
    let c2 = client.clone();
    let version = tokio::spawn(async move { c2.query_version().await });
    let second = conn.recv().await;
    assert_ne!(first["id"], second["id"], "ids are unique");
    let (status_cmd, version_cmd) = if first["execute"] == "query-status" {
        (first, second)
    } else {
        (second, first)
    };
    // Answer the later command first.
    conn.reply(
        &version_cmd,
        json!({"qemu": {"major": 9, "minor": 2, "micro": 1}, "package": ""}),
    )
    .await;
    conn.reply(&status_cmd, json!({"running": false, "status": "prelaunch"}))
        .await;
    let version = within("version", version).await.expect("task").expect("version");
    let status = within("status", status).await.expect("task").expect("status");
    assert_eq!(version.qemu.to_string(), "9.2.1");
    assert_eq!(status.status, RunState::Prelaunch);
    assert!(!status.running);
}

#[tokio::test]
async fn many_concurrent_commands_are_all_answered() {
    let (_fake, mut conn, client, _events) = connected(QmpOptions::default()).await;
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            (i, c.human_monitor_command(&format!("echo {i}")).await)
        }));
    }
    let mut cmds = Vec::new();
    for _ in 0..40 {
        cmds.push(conn.recv().await);
    }
    for cmd in cmds.iter().rev() {
        let line = cmd["arguments"]["command-line"]
            .as_str()
            .expect("command-line")
            .to_owned();
        conn.reply(cmd, Value::String(line)).await;
    }
    for task in tasks {
        let (i, answer) = within("answer", task).await.expect("task");
        assert_eq!(answer.expect("answer"), format!("echo {i}"));
    }
}

#[tokio::test]
async fn events_between_answers_go_to_the_event_stream() {
    let (_fake, mut conn, client, mut events) = connected(QmpOptions::default()).await;
    let c = client.clone();
    let stop = tokio::spawn(async move { c.stop().await });
    let cmd = conn.recv().await;
    assert_eq!(cmd["execute"], "stop");
    conn.send(json!({"event": "STOP", "timestamp": {"seconds": 10, "microseconds": 5}}))
        .await;
    conn.send(
        json!({"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"},
        "timestamp": {"seconds": 11, "microseconds": 0}}),
    )
    .await;
    conn.send(
        json!({"event": "NIC_RX_FILTER_CHANGED", "data": {"path": "/machine/peripheral/net0"},
        "timestamp": {"seconds": 12, "microseconds": 0}}),
    )
    .await;
    conn.reply(&cmd, json!({})).await;
    within("stop", stop).await.expect("task").expect("stop");

    let e = within("event", events.next()).await.expect("event").expect("ok");
    assert_eq!(e.kind, QmpEventKind::Stop);
    assert_eq!(e.timestamp.map(|t| t.seconds), Some(10));
    let e = within("event", events.next()).await.expect("event").expect("ok");
    assert_eq!(
        e.kind,
        QmpEventKind::Shutdown {
            guest: true,
            reason: ShutdownCause::GuestShutdown
        }
    );
    let e = within("event", events.next()).await.expect("event").expect("ok");
    assert_eq!(
        e.kind,
        QmpEventKind::Other {
            name: "NIC_RX_FILTER_CHANGED".into(),
            data: json!({"path": "/machine/peripheral/net0"})
        }
    );
}

#[tokio::test]
async fn qemu_errors_carry_class_and_description() {
    let (_fake, mut conn, client, _events) = connected(QmpOptions::default()).await;
    let c = client.clone();
    let del = tokio::spawn(async move { c.device_del("net0").await });
    let cmd = conn.recv().await;
    assert_eq!(cmd["execute"], "device_del");
    assert_eq!(cmd["arguments"], json!({"id": "net0"}));
    conn.send(
        json!({"error": {"class": "DeviceNotFound", "desc": "Device 'net0' not found"}, "id": cmd["id"]}),
    )
    .await;
    let err = within("device_del", del)
        .await
        .expect("task")
        .expect_err("an error");
    match &err {
        QmpError::Command { command, class, desc } => {
            assert_eq!(command, "device_del");
            assert_eq!(*class, QmpErrorClass::DeviceNotFound);
            assert_eq!(desc, "Device 'net0' not found");
        }
        other => panic!("expected a command error, got {other:?}"),
    }
    assert!(!err.is_connection_lost());
    assert!(client.closed().is_none(), "an error answer keeps the connection");
}

#[tokio::test]
async fn malformed_json_fails_waiters_and_ends_the_event_stream() {
    let (_fake, mut conn, client, mut events) = connected(QmpOptions::default()).await;
    let c = client.clone();
    let status = tokio::spawn(async move { c.query_status().await });
    conn.recv().await;
    conn.send_raw(b"{\"return\": {\"running\": tru\r\n").await;
    let err = within("status", status)
        .await
        .expect("task")
        .expect_err("an error");
    assert!(matches!(err, QmpError::Protocol { .. }), "{err:?}");
    let last = within("event", events.next()).await.expect("a last item");
    assert!(matches!(last, Err(QmpError::Protocol { .. })), "{last:?}");
    assert!(
        within("end", events.next()).await.is_none(),
        "the stream ends after the error"
    );
    let later = within("later", client.query_status()).await.expect_err("closed");
    assert!(later.is_connection_lost(), "{later:?}");
}

#[tokio::test]
async fn disconnect_mid_command_fails_every_waiter() {
    let (_fake, mut conn, client, mut events) = connected(QmpOptions::default()).await;
    let c1 = client.clone();
    let a = tokio::spawn(async move { c1.query_status().await });
    let c2 = client.clone();
    let b = tokio::spawn(async move { c2.query_balloon().await });
    conn.recv().await;
    conn.recv().await;
    // Half a message, then the connection goes away.
    conn.send_raw(b"{\"return\": ").await;
    drop(conn);
    let err = within("waiter", a).await.expect("task").expect_err("an error");
    assert!(matches!(err, QmpError::Disconnected { .. }), "{err:?}");
    let err = within("waiter", b).await.expect("task").expect_err("an error");
    assert!(matches!(err, QmpError::Disconnected { .. }), "{err:?}");
    let last = within("event", events.next()).await.expect("a last item");
    assert!(matches!(last, Err(QmpError::Disconnected { .. })), "{last:?}");
    assert!(within("end", events.next()).await.is_none());
    let later = within("later", client.cont()).await.expect_err("closed");
    assert!(matches!(later, QmpError::Disconnected { .. }), "{later:?}");
}

#[tokio::test]
async fn timed_out_command_leaves_the_connection_usable() {
    let (_fake, mut conn, client, _events) = connected(QmpOptions {
        command_timeout: Duration::from_millis(200),
        ..QmpOptions::default()
    })
    .await;
    let c = client.clone();
    let slow = tokio::spawn(async move { c.query_status().await });
    let slow_cmd = conn.recv().await;
    let err = within("timeout", slow).await.expect("task").expect_err("timeout");
    assert!(
        matches!(&err, QmpError::Timeout { command, .. } if command == "query-status"),
        "{err:?}"
    );
    // The late answer is dropped; the next command gets its own answer.
    conn.reply(&slow_cmd, json!({"running": true, "status": "running"}))
        .await;
    let c = client.clone();
    let next = tokio::spawn(async move { c.query_kvm().await });
    let cmd = conn.recv().await;
    conn.reply(&cmd, json!({"enabled": true, "present": true})).await;
    let kvm = within("query-kvm", next).await.expect("task").expect("answer");
    assert!(kvm.enabled && kvm.present);
    assert!(client.closed().is_none());
}

#[tokio::test]
async fn silent_server_times_out_waiting_for_the_greeting() {
    let fake = FakeQemu::new();
    let path = fake.path.clone();
    let client = tokio::spawn(async move {
        QmpClient::connect(
            &path,
            QmpOptions {
                greeting_timeout: Duration::from_millis(200),
                ..QmpOptions::default()
            },
        )
        .await
    });
    let _conn = fake.accept().await;
    let err = within("connect", client)
        .await
        .expect("task")
        .expect_err("timeout");
    assert!(
        matches!(&err, QmpError::Timeout { command, .. } if command == "greeting"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_first_message_that_is_no_greeting_is_refused() {
    let fake = FakeQemu::new();
    let path = fake.path.clone();
    let client = tokio::spawn(async move { QmpClient::connect(&path, QmpOptions::default()).await });
    let mut conn = fake.accept().await;
    conn.send(json!({"hello": "world"})).await;
    let err = within("connect", client)
        .await
        .expect("task")
        .expect_err("refused");
    assert!(matches!(err, QmpError::Protocol { .. }), "{err:?}");
}

#[tokio::test]
async fn an_event_sent_before_the_greeting_is_skipped() {
    let fake = FakeQemu::new();
    let path = fake.path.clone();
    let client = tokio::spawn(async move { QmpClient::connect(&path, QmpOptions::default()).await });
    let mut conn = fake.accept().await;
    // What QEMU sent a test once when its guest was not started with -S.
    conn.send(json!({"timestamp": {"seconds": 1763924000, "microseconds": 1}, "event": "RESUME"}))
        .await;
    conn.handshake().await;
    let (client, _events) = within("connect", client).await.expect("task").expect("connect");
    assert_eq!(client.greeting().version.qemu.to_string(), "10.0.2");
}

#[tokio::test]
async fn connecting_to_a_missing_socket_fails_with_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("none.sock");
    let err = QmpClient::connect(&path, QmpOptions::default())
        .await
        .expect_err("no socket");
    assert!(
        matches!(&err, QmpError::Connect { path: p, .. } if *p == path),
        "{err:?}"
    );
}

#[tokio::test]
async fn dropping_the_client_ends_the_event_stream() {
    let (_fake, _conn, client, mut events) = connected(QmpOptions::default()).await;
    drop(client);
    let last = within("event", events.next()).await.expect("a last item");
    assert!(matches!(last, Err(QmpError::Disconnected { .. })), "{last:?}");
    assert!(within("end", events.next()).await.is_none());
}

#[tokio::test]
async fn typed_answers_decode_and_bad_shapes_are_decode_errors() {
    let (_fake, mut conn, client, _events) = connected(QmpOptions::default()).await;
    let c = client.clone();
    let stats = tokio::spawn(async move { c.query_blockstats().await });
    let cmd = conn.recv().await;
    assert_eq!(cmd["execute"], "query-blockstats");
    conn.reply(
        &cmd,
        json!([{"device": "", "qdev": "/machine/peripheral/virtio-disk0/virtio-backend",
            "node-name": "libvirt-1-format",
            "stats": {"rd_bytes": 512, "wr_bytes": 1024, "rd_operations": 1, "wr_operations": 2,
                "flush_operations": 3, "idle_time_ns": 7, "account_invalid": true}}]),
    )
    .await;
    let stats = within("blockstats", stats).await.expect("task").expect("stats");
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].node_name.as_deref(), Some("libvirt-1-format"));
    assert_eq!(stats[0].stats.rd_bytes, 512);
    assert_eq!(stats[0].stats.flush_operations, 3);

    let c = client.clone();
    let balloon = tokio::spawn(async move { c.query_balloon().await });
    let cmd = conn.recv().await;
    conn.reply(&cmd, json!({"actual": "a lot"})).await;
    let err = within("balloon", balloon)
        .await
        .expect("task")
        .expect_err("decode");
    assert!(
        matches!(&err, QmpError::Decode { command, .. } if command == "query-balloon"),
        "{err:?}"
    );
    assert!(
        client.closed().is_none(),
        "a bad answer shape keeps the connection"
    );
}

#[tokio::test]
async fn raw_commands_pass_arguments_and_return_json() {
    let (_fake, mut conn, client, _events) = connected(QmpOptions::default()).await;
    let c = client.clone();
    let raw = tokio::spawn(async move {
        c.execute_raw("qom-get", json!({"path": "/machine", "property": "type"}))
            .await
    });
    let cmd = conn.recv().await;
    assert_eq!(cmd["execute"], "qom-get");
    assert_eq!(cmd["arguments"], json!({"path": "/machine", "property": "type"}));
    conn.reply(&cmd, json!("none-machine")).await;
    let value = within("raw", raw).await.expect("task").expect("answer");
    assert_eq!(value, json!("none-machine"));
}

#[tokio::test]
async fn stream_helper_speaks_qmp_over_any_stream() {
    let (a, b) = UnixStream::pair().expect("socketpair");
    let client = tokio::spawn(async move { QmpClient::from_stream(a, QmpOptions::default()).await });
    let (read, write) = b.into_split();
    let mut conn = FakeConn {
        reader: BufReader::new(read),
        writer: write,
    };
    conn.handshake().await;
    let (client, _events) = within("connect", client).await.expect("task").expect("connect");
    assert_eq!(client.greeting().version.package, "fake");
}
