//! The end-to-end test harness: starts real rvirt daemons inside a temporary `RVIRT_ROOT`,
//! learns that they are ready from their systemd readiness notification (no sleeps, no polling),
//! and talks to them over their real sockets.

pub mod guest;
pub mod netns;
pub mod qemu;

use std::os::fd::{AsRawFd as _, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::net::UnixDatagram;

/// How long a daemon may take to become ready or to exit before a test fails.
pub const DAEMON_DEADLINE: Duration = Duration::from_secs(30);

/// Where the workspace's binaries are: `RVIRT_BIN_DIR`, else the directory of the test binary's
/// parent (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RVIRT_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

/// The path of a workspace binary, built first if needed.
///
/// `cargo test` and `cargo nextest` build test binaries, not the daemons' own binaries, so the
/// first call in a test process runs `cargo build --bins` for the workspace, in the test's profile
/// (a no-op when they are fresh). Set `RVIRT_BIN_DIR` to use binaries built elsewhere instead.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    if std::env::var_os("RVIRT_BIN_DIR").is_none() {
        BUILT.call_once(build_binaries);
    }
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} does not exist: build the workspace first (`cargo build --workspace`)",
        path.display()
    );
    path
}

fn build_binaries() {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return; // not run by cargo: use what is there
    };
    let dir = bin_dir();
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--workspace",
            "--bins",
            "--profile",
            &profile,
            "--manifest-path",
        ])
        .arg(&manifest)
        .stdin(Stdio::null())
        .status()
        .expect("run cargo build for the daemons");
    assert!(status.success(), "cargo build of the daemons failed");
}

/// A temporary `RVIRT_ROOT`.
#[derive(Debug)]
pub struct TestRoot {
    dir: tempfile::TempDir,
}

impl TestRoot {
    /// A fresh, empty root.
    pub fn new() -> Self {
        TestRoot {
            dir: tempfile::Builder::new()
                .prefix("rvirt-e2e-")
                .tempdir()
                .expect("temporary root"),
        }
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `<root>/run/rvirt`, where system-mode sockets live.
    pub fn run_dir(&self) -> PathBuf {
        self.path().join("run/rvirt")
    }

    /// Writes `<root>/etc/rvirt/<name>` (the system daemons' configuration directory: a
    /// daemon's `.conf`, `access.toml`) and returns its path.
    pub fn write_config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join("etc/rvirt").join(name);
        std::fs::create_dir_all(path.parent().expect("config dir")).expect("create the config dir");
        std::fs::write(&path, text).expect("write the config file");
        path
    }

    /// A system-mode socket of a daemon, by file name (`virtqemud-sock`).
    pub fn socket(&self, name: &str) -> PathBuf {
        self.run_dir().join(name)
    }
}

impl Default for TestRoot {
    fn default() -> Self {
        Self::new()
    }
}

/// A running daemon process; killed if still running when dropped.
#[derive(Debug)]
pub struct DaemonProcess {
    /// The daemon's name.
    pub name: String,
    pid: u32,
    notify: UnixDatagram,
    exited: tokio::sync::watch::Receiver<Option<(ExitStatus, String)>>,
    /// The log again, for a failing test's drop (which cannot await the watch).
    log: std::sync::mpsc::Receiver<String>,
}

/// How to start a daemon.
#[derive(Debug, Default)]
pub struct DaemonOptions {
    /// Extra arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Listening sockets to pass by socket activation, with their `FileDescriptorName`s.
    pub activated: Vec<(RawFd, String)>,
    /// Run the daemon inside this network namespace (`ip netns exec NAME`), which the test
    /// created; `None` runs it in the test's own namespace.
    pub netns: Option<String>,
}

impl DaemonProcess {
    /// Starts daemon `name` in `root` and waits until it notifies readiness.
    pub async fn start(name: &str, root: &TestRoot) -> DaemonProcess {
        Self::start_with(name, root, DaemonOptions::default()).await
    }

    /// Starts daemon `name` in `root` with `options` and waits until it notifies readiness.
    pub async fn start_with(name: &str, root: &TestRoot, options: DaemonOptions) -> DaemonProcess {
        let mut daemon = Self::spawn(name, root, options);
        daemon.wait_notify("READY=1").await;
        daemon
    }

    /// Starts daemon `name` without waiting for readiness (inside a tokio runtime).
    pub fn spawn(name: &str, root: &TestRoot, options: DaemonOptions) -> DaemonProcess {
        let notify_path = root.path().join(format!("notify-{name}-{}", unique()));
        let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
        let program = binary(name);
        // `ip netns exec` execs the daemon itself, so its pid stays the daemon's pid.
        let in_netns = |program: &Path| match &options.netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        let mut command = if options.activated.is_empty() {
            in_netns(&program)
        } else {
            // LISTEN_PID must be the daemon's own pid: a shell sets it to its pid, then execs.
            let mut c = in_netns(Path::new("/bin/sh"));
            c.arg("-c").arg("LISTEN_PID=$$ exec \"$0\" \"$@\"").arg(&program);
            let names: Vec<&str> = options.activated.iter().map(|(_, n)| n.as_str()).collect();
            c.env("LISTEN_FDS", options.activated.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
            let fds: Vec<RawFd> = options.activated.iter().map(|(fd, _)| *fd).collect();
            // SAFETY: the closure only calls async-signal-safe functions (fcntl, dup2) on fds that
            // this process owns, between fork and exec.
            unsafe {
                c.pre_exec(move || pass_fds(&fds));
            }
            c
        };
        command
            .args(&options.args)
            .env("RVIRT_ROOT", root.path())
            .env("NOTIFY_SOCKET", &notify_path)
            .env(
                "RVIRT_LOG",
                std::env::var("RVIRT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let pid = child.id();
        let (tx, exited) = tokio::sync::watch::channel(None);
        let (log_tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || wait_child(&mut child, &tx, &log_tx));
        DaemonProcess {
            name: name.to_owned(),
            pid,
            notify,
            exited,
            log,
        }
    }

    /// Waits for the daemon to send `line` (e.g. `READY=1`) to its notification socket, failing
    /// the test with the daemon's log if it does not within [`DAEMON_DEADLINE`].
    pub async fn wait_notify(&mut self, line: &str) {
        let mut buf = [0u8; 4096];
        let failure = loop {
            match tokio::time::timeout(DAEMON_DEADLINE, self.notify.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == line) {
                        return;
                    }
                }
                Ok(Err(e)) => break e.to_string(),
                Err(_) => break format!("nothing within {DAEMON_DEADLINE:?}"),
            }
        };
        if self.exited.borrow().is_none() {
            self.signal(nix::sys::signal::Signal::SIGKILL);
        }
        let log = self
            .wait_exit(DAEMON_DEADLINE)
            .await
            .map(|(_, log)| log)
            .unwrap_or_default();
        panic!("{} did not notify {line} ({failure}); its log:\n{log}", self.name);
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends a signal.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the daemon");
    }

    /// Waits up to `timeout` for the daemon to exit, letting the test's own tasks run meanwhile;
    /// its status and log, or `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, String)> {
        let done = self.exited.wait_for(Option::is_some);
        match tokio::time::timeout(timeout, done).await {
            Ok(Ok(status)) => status.clone(),
            _ => None,
        }
    }
}

/// How many of a daemon's last log lines a failing test prints.
const LOG_TAIL_LINES: usize = 80;

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if self.exited.borrow().is_none() {
            let pid = nix::unistd::Pid::from_raw(self.pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        // A failing test shows what its daemons logged: a failure that happens once in CI
        // can then be understood from CI's output alone.
        if std::thread::panicking() {
            let log = self
                .exited
                .borrow()
                .as_ref()
                .map(|(_, log)| log.clone())
                .or_else(|| self.log.recv_timeout(Duration::from_secs(5)).ok());
            if let Some(log) = log {
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
                eprintln!(
                    "--- the last {} lines {} logged ---\n{}",
                    tail.len(),
                    self.name,
                    tail.join("\n")
                );
            }
        }
    }
}

fn wait_child(
    child: &mut Child,
    tx: &tokio::sync::watch::Sender<Option<(ExitStatus, String)>>,
    log_tx: &std::sync::mpsc::Sender<String>,
) {
    let mut log = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
    }
    if let Ok(status) = child.wait() {
        let _ = log_tx.send(log.clone());
        tx.send_replace(Some((status, log)));
    }
}

/// Moves `fds` to 3, 4, 5, ... without close-on-exec, for socket activation.
fn pass_fds(fds: &[RawFd]) -> std::io::Result<()> {
    // First copy every fd above the target range, so no target overwrites a source.
    let mut high = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an fd this process owns.
        let dup = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 64) };
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        high.push(dup);
    }
    for (i, fd) in high.iter().enumerate() {
        let target = 3 + i as RawFd;
        // SAFETY: dup2 onto the socket-activation range; the new fd has no close-on-exec flag.
        if unsafe { libc::dup2(*fd, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A channel to a Unix socket, failing the test if it cannot connect.
/// A request carrying connection URI `uri` (`rvirt-uri` metadata), as every client sends it.
pub fn at<T>(uri: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        rvirt_proto::URI_METADATA_KEY,
        uri.parse().expect("a URI is valid metadata"),
    );
    request
}

pub async fn channel(path: &Path) -> tonic::transport::Channel {
    rvirt::transport::unix_channel(path).await.unwrap_or_else(|e| {
        panic!(
            "{}",
            std::error::Error::source(&e).map_or(e.to_string(), |s| format!("{e}: {s}"))
        )
    })
}

/// Keeps an fd's number alive for the test's lifetime: the raw fd of a std listener.
pub fn raw(listener: &std::os::unix::net::UnixListener) -> RawFd {
    listener.as_raw_fd()
}

/// A resumable subscription to secret events through the client library's watch machinery,
/// over the Unix socket `socket` (a daemon's or the proxy's), each call carrying connection URI
/// `uri` when given (as the proxy needs it).
pub async fn secret_subscription(
    socket: PathBuf,
    uri: Option<&'static str>,
) -> rvirt::watch::Subscription<rvirt_proto::v1::SecretEvent> {
    use rvirt::watch::{Opener, RawStream, subscribe};
    use rvirt_proto::v1::WatchSecretEventsRequest;
    use rvirt_proto::v1::secret_service_client::SecretServiceClient;
    let open: Opener<rvirt_proto::v1::WatchSecretEventsResponse> = Box::new(move |epoch, sequence| {
        let socket = socket.clone();
        Box::pin(async move {
            let channel = rvirt::transport::unix_channel(&socket)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let mut request = tonic::Request::new(WatchSecretEventsRequest {
                since_epoch: epoch,
                since_sequence: sequence,
                ..Default::default()
            });
            if let Some(uri) = uri {
                request.metadata_mut().insert(
                    rvirt_proto::URI_METADATA_KEY,
                    tonic::metadata::MetadataValue::from_static(uri),
                );
            }
            let stream = SecretServiceClient::new(channel)
                .watch_secret_events(request)
                .await?
                .into_inner();
            Ok(Box::pin(stream) as RawStream<rvirt_proto::v1::WatchSecretEventsResponse>)
        })
    });
    subscribe(open, rvirt::secret::split_secret_event, None)
        .await
        .expect("subscribe")
}
