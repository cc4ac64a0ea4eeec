//! The QMP client against a real QEMU (`qemu-system-x86_64`, TCG), started by each test with
//! its monitor on a socket the test bound first (see `virtqemud::qmp::launch`), and killed by a
//! guard when the test ends. No sleeps: the connection is ready as soon as QEMU greets.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use virtqemud::qmp::commands::RunState;
use virtqemud::qmp::launch::QmpSocket;
use virtqemud::qmp::{
    QmpClient, QmpError, QmpErrorClass, QmpEventKind, QmpEvents, QmpOptions, ShutdownCause,
};

const LIMIT: Duration = Duration::from_secs(30);
const QEMU: &str = "qemu-system-x86_64";

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {LIMIT:?}"))
}

/// A QEMU started by a test; killed when dropped.
struct Qemu {
    child: tokio::process::Child,
    socket: QmpSocket,
    _dir: tempfile::TempDir,
}

impl Qemu {
    fn start(machine_args: &[&str]) -> Qemu {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut socket = QmpSocket::bind(dir.path().join("qmp.sock")).expect("bind the monitor socket");
        let mut command = tokio::process::Command::new(QEMU);
        command
            .args(["-nodefaults", "-nographic", "-no-user-config", "-accel", "tcg"])
            .args(machine_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        socket.pass_to(command.as_std_mut()).expect("pass the socket");
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {QEMU}: {e}"));
        socket.release();
        Qemu {
            child,
            socket,
            _dir: dir,
        }
    }

    async fn connect(&self) -> (QmpClient, QmpEvents) {
        within("QMP handshake", self.socket.connect(QmpOptions::default()))
            .await
            .expect("connect to QEMU's monitor")
    }

    fn path(&self) -> &Path {
        self.socket.path()
    }
}

async fn next_event(events: &mut QmpEvents) -> QmpEventKind {
    within("an event", events.next())
        .await
        .expect("an event")
        .expect("not the end of the stream")
        .kind
}

#[tokio::test]
async fn real_qemu_answers_version_target_and_machines() {
    let qemu = Qemu::start(&["-machine", "none"]);
    let (client, _events) = qemu.connect().await;
    let version = client.query_version().await.expect("query-version");
    assert_eq!(
        version,
        client.greeting().version,
        "greeting and query-version agree"
    );
    assert!(version.qemu.major >= 7, "a supported QEMU: {}", version.qemu);
    assert_eq!(client.query_target().await.expect("query-target").arch, "x86_64");
    let machines = client.query_machines().await.expect("query-machines");
    let q35 = machines
        .iter()
        .find(|m| m.alias.as_deref() == Some("q35"))
        .expect("a machine aliased q35");
    assert!(q35.name.starts_with("pc-q35-"), "{}", q35.name);
    assert!(
        machines
            .iter()
            .any(|m| m.is_default && m.alias.as_deref() == Some("pc"))
    );
    let commands = client.query_commands().await.expect("query-commands");
    assert!(commands.iter().any(|c| c == "query-cpu-definitions"));
    let devices = client
        .qom_list_types(Some("device"))
        .await
        .expect("qom-list-types");
    assert!(devices.iter().any(|t| t.name == "virtio-blk-pci"));
    let kvm = client.query_kvm().await.expect("query-kvm");
    assert!(!kvm.enabled, "the test runs QEMU under TCG");
    let models = client
        .query_cpu_definitions()
        .await
        .expect("query-cpu-definitions");
    assert!(models.iter().any(|m| m.name == "qemu64"));
}

#[tokio::test]
async fn real_qemu_pauses_and_resumes_with_events() {
    let qemu = Qemu::start(&["-machine", "pc", "-S", "-m", "32"]);
    let (client, mut events) = qemu.connect().await;
    let status = client.query_status().await.expect("query-status");
    assert_eq!(status.status, RunState::Prelaunch);
    client.cont().await.expect("cont");
    assert_eq!(next_event(&mut events).await, QmpEventKind::Resume);
    assert_eq!(
        client.query_status().await.expect("status").status,
        RunState::Running
    );
    client.stop().await.expect("stop");
    assert_eq!(next_event(&mut events).await, QmpEventKind::Stop);
    let status = client.query_status().await.expect("status");
    assert_eq!(status.status, RunState::Paused);
    assert!(!status.running);
}

#[tokio::test]
async fn real_qemu_reports_reset_and_powerdown() {
    let qemu = Qemu::start(&["-machine", "pc", "-S", "-m", "32"]);
    let (client, mut events) = qemu.connect().await;
    client.system_reset().await.expect("system_reset");
    assert_eq!(
        next_event(&mut events).await,
        QmpEventKind::Reset {
            guest: false,
            reason: ShutdownCause::HostQmpSystemReset
        }
    );
    client.system_powerdown().await.expect("system_powerdown");
    assert_eq!(next_event(&mut events).await, QmpEventKind::Powerdown);
}

#[tokio::test]
async fn real_qemu_answers_vcpu_block_and_hmp_queries() {
    let qemu = Qemu::start(&["-machine", "pc", "-S", "-m", "32", "-smp", "2"]);
    let (client, _events) = qemu.connect().await;
    let cpus = client.query_cpus_fast().await.expect("query-cpus-fast");
    assert_eq!(cpus.len(), 2);
    assert!(cpus.iter().all(|c| c.thread_id > 0 && c.target == "x86_64"));
    let blocks = client.query_blockstats().await.expect("query-blockstats");
    assert!(blocks.is_empty(), "-nodefaults: no disks");
    let text = client.human_monitor_command("info version").await.expect("hmp");
    assert!(
        text.starts_with(&client.greeting().version.qemu.to_string()),
        "{text}"
    );
}

#[tokio::test]
async fn real_qemu_errors_carry_its_class() {
    let qemu = Qemu::start(&["-machine", "pc", "-S", "-m", "32"]);
    let (client, _events) = qemu.connect().await;
    let err = client.query_balloon().await.expect_err("no balloon device");
    assert_eq!(err.class(), Some(&QmpErrorClass::DeviceNotActive), "{err:?}");
    let err = client
        .device_del("nosuchdevice")
        .await
        .expect_err("no such device");
    assert!(
        matches!(&err, QmpError::Command { desc, .. } if desc.contains("nosuchdevice")),
        "{err:?}"
    );
    let err = client
        .execute_raw("no-such-command", serde_json::Value::Null)
        .await
        .expect_err("unknown command");
    assert_eq!(err.class(), Some(&QmpErrorClass::CommandNotFound), "{err:?}");
    assert!(client.closed().is_none());
}

#[tokio::test]
async fn real_qemu_quit_ends_the_connection_and_the_process() {
    let mut qemu = Qemu::start(&["-machine", "none"]);
    let (client, mut events) = qemu.connect().await;
    client.quit().await.expect("quit");
    assert_eq!(
        next_event(&mut events).await,
        QmpEventKind::Shutdown {
            guest: false,
            reason: ShutdownCause::HostQmpQuit
        }
    );
    let last = within("end of events", events.next()).await.expect("a last item");
    assert!(matches!(last, Err(QmpError::Disconnected { .. })), "{last:?}");
    let err = client.query_status().await.expect_err("gone");
    assert!(err.is_connection_lost(), "{err:?}");
    let status = within("QEMU exit", qemu.child.wait()).await.expect("wait");
    assert!(status.success(), "quit exits cleanly: {status}");
}

#[tokio::test]
async fn killed_qemu_fails_waiters_instead_of_hanging() {
    let mut qemu = Qemu::start(&["-machine", "none"]);
    let (client, mut events) = qemu.connect().await;
    qemu.child.start_kill().expect("kill QEMU");
    let last = within("end of events", events.next()).await.expect("a last item");
    assert!(matches!(last, Err(QmpError::Disconnected { .. })), "{last:?}");
    let err = within("a command after the kill", client.query_status())
        .await
        .expect_err("gone");
    assert!(err.is_connection_lost(), "{err:?}");
}

#[tokio::test]
async fn qemu_that_fails_to_start_fails_the_connection_at_once() {
    let qemu = Qemu::start(&["-machine", "no-such-machine"]);
    // QEMU exits with an error before serving the socket: the connection is reset or refused.
    let err = within("connect", qemu.socket.connect(QmpOptions::default()))
        .await
        .expect_err("QEMU never serves the socket");
    assert!(err.is_connection_lost(), "{err:?}");
    assert!(qemu.path().exists(), "the socket path stays for diagnosis");
}
