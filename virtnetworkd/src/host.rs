//! The seam between the driver and the host: everything that changes the (namespaced) host goes
//! through [`NetHost`]. [`SystemHost`] does it for real (rtnetlink, `nft`, `/proc/sys`,
//! dnsmasq); [`RecordingHost`] records the calls and keeps a pretend set of links and processes,
//! so the driver's start/stop/re-adoption logic is unit-testable without privileges.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use crate::netlink::{self, BridgeSpec};

/// A host operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HostError(pub String);

/// What the driver asks of the host.
#[tonic::async_trait]
pub trait NetHost: Send + Sync + std::fmt::Debug + 'static {
    /// The names of every network interface.
    async fn link_names(&self) -> Result<Vec<String>, HostError>;
    /// Creates a bridge with its addresses, up.
    async fn create_bridge(&self, spec: &BridgeSpec) -> Result<(), HostError>;
    /// Deletes an interface (missing is fine).
    async fn delete_link(&self, name: &str) -> Result<(), HostError>;
    /// Runs an `nft -f` script as one transaction.
    async fn nft(&self, script: &str) -> Result<(), HostError>;
    /// Turns IPv4 and/or IPv6 forwarding on.
    async fn enable_forwarding(&self, ipv4: bool, ipv6: bool) -> Result<(), HostError>;
    /// Starts dnsmasq with `conf` (which names `pid_file`); returns its pid once it runs.
    async fn start_dnsmasq(&self, conf: &Path, pid_file: &Path) -> Result<u32, HostError>;
    /// Whether `pid` is a live dnsmasq running with `conf`.
    fn dnsmasq_alive(&self, pid: u32, conf: &Path) -> bool;
    /// Stops process `pid` (SIGTERM, then SIGKILL) and waits for it to exit.
    async fn stop_process(&self, pid: u32) -> Result<(), HostError>;
    /// Asks dnsmasq to re-read its hosts files (SIGHUP).
    fn reload_dnsmasq(&self, pid: u32) -> Result<(), HostError>;
}

/// The real host: the namespace the daemon runs in.
#[derive(Debug, Clone)]
pub struct SystemHost {
    /// The dnsmasq program.
    pub dnsmasq: PathBuf,
    /// The nft program.
    pub nft: PathBuf,
}

impl Default for SystemHost {
    fn default() -> Self {
        SystemHost {
            dnsmasq: std::env::var_os("RVIRT_DNSMASQ").map_or_else(|| "dnsmasq".into(), PathBuf::from),
            nft: std::env::var_os("RVIRT_NFT").map_or_else(|| "nft".into(), PathBuf::from),
        }
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until the process behind `pidfd` has exited, up to `timeout`.
async fn wait_pidfd(pidfd: &tokio::io::unix::AsyncFd<OwnedFd>, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, pidfd.readable()).await.is_ok()
}

fn watch_pidfd(pidfd: OwnedFd) -> Option<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for the
    // AsyncFd's whole life.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }.ok()
}

fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses and may contain spaces.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[tonic::async_trait]
impl NetHost for SystemHost {
    async fn link_names(&self) -> Result<Vec<String>, HostError> {
        netlink::link_names().await.map_err(|e| HostError(e.to_string()))
    }

    async fn create_bridge(&self, spec: &BridgeSpec) -> Result<(), HostError> {
        netlink::create_bridge(spec)
            .await
            .map_err(|e| HostError(e.to_string()))
    }

    async fn delete_link(&self, name: &str) -> Result<(), HostError> {
        netlink::delete_link(name)
            .await
            .map_err(|e| HostError(e.to_string()))
    }

    async fn nft(&self, script: &str) -> Result<(), HostError> {
        let mut child = tokio::process::Command::new(&self.nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| HostError(format!("cannot run {}: {e}", self.nft.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|e| HostError(format!("cannot feed nft: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| HostError(format!("nft failed: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(HostError(format!(
                "nft refused the rules: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    async fn enable_forwarding(&self, ipv4: bool, ipv6: bool) -> Result<(), HostError> {
        let mut keys = Vec::new();
        if ipv4 {
            keys.push("/proc/sys/net/ipv4/ip_forward");
        }
        if ipv6 {
            keys.push("/proc/sys/net/ipv6/conf/all/forwarding");
        }
        for key in keys {
            tokio::fs::write(key, b"1\n")
                .await
                .map_err(|e| HostError(format!("cannot enable forwarding ({key}): {e}")))?;
        }
        Ok(())
    }

    async fn start_dnsmasq(&self, conf: &Path, pid_file: &Path) -> Result<u32, HostError> {
        let _ = std::fs::remove_file(pid_file);
        let log = conf.with_extension("log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| HostError(format!("cannot open {}: {e}", log.display())))?;
        // dnsmasq forks into the background; its first process exits once the server runs (or
        // with an error), and the server is then nobody's child: it survives the daemon.
        let status = tokio::process::Command::new(&self.dnsmasq)
            .arg(format!("--conf-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .status()
            .await
            .map_err(|e| HostError(format!("cannot run {}: {e}", self.dnsmasq.display())))?;
        if !status.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let last = text.lines().last().unwrap_or("no message").to_owned();
            return Err(HostError(format!("dnsmasq failed to start ({status}): {last}")));
        }
        let pid = std::fs::read_to_string(pid_file)
            .map_err(|e| HostError(format!("dnsmasq wrote no pid file {}: {e}", pid_file.display())))?;
        pid.trim()
            .parse::<u32>()
            .map_err(|_| HostError(format!("dnsmasq's pid file {} is not a pid", pid_file.display())))
    }

    fn dnsmasq_alive(&self, pid: u32, conf: &Path) -> bool {
        if matches!(process_state(pid), None | Some('Z' | 'X')) {
            return false;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let wanted = format!("--conf-file={}", conf.display());
        cmdline.split(|b| *b == 0).any(|arg| arg == wanted.as_bytes())
    }

    async fn stop_process(&self, pid: u32) -> Result<(), HostError> {
        let Some(pidfd) = pidfd_open(pid) else {
            return Ok(()); // already gone
        };
        let Some(pidfd) = watch_pidfd(pidfd) else {
            return Err(HostError(format!("cannot wait for process {pid}")));
        };
        let target = nix::unistd::Pid::from_raw(pid as i32);
        if nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM).is_err() {
            return Ok(());
        }
        if wait_pidfd(&pidfd, Duration::from_secs(5)).await {
            return Ok(());
        }
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
        if wait_pidfd(&pidfd, Duration::from_secs(5)).await {
            Ok(())
        } else {
            Err(HostError(format!("process {pid} did not exit after SIGKILL")))
        }
    }

    fn reload_dnsmasq(&self, pid: u32) -> Result<(), HostError> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .map_err(|e| HostError(format!("cannot signal dnsmasq ({pid}): {e}")))
    }
}

#[derive(Debug, Default)]
struct Recorded {
    calls: Vec<String>,
    links: BTreeSet<String>,
    processes: BTreeMap<u32, PathBuf>,
    next_pid: u32,
    fail: Option<String>,
}

/// A pretend host that records every call, for unit tests.
#[derive(Debug, Default)]
pub struct RecordingHost {
    state: Mutex<Recorded>,
}

impl RecordingHost {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The calls so far, one line each (`create_bridge virbr0`, `nft <script>`, ...).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The links that exist.
    pub fn links(&self) -> BTreeSet<String> {
        self.lock().links.clone()
    }

    /// Adds a link created by someone else.
    pub fn add_link(&self, name: &str) {
        self.lock().links.insert(name.to_owned());
    }

    /// Pretends process `pid` died.
    pub fn kill(&self, pid: u32) {
        self.lock().processes.remove(&pid);
    }

    /// The pids of the pretend dnsmasq processes.
    pub fn processes(&self) -> Vec<u32> {
        self.lock().processes.keys().copied().collect()
    }

    /// Makes the next call whose record starts with `prefix` fail.
    pub fn fail_next(&self, prefix: &str) {
        self.lock().fail = Some(prefix.to_owned());
    }

    fn record(&self, call: String) -> Result<(), HostError> {
        let mut state = self.lock();
        if let Some(prefix) = state.fail.clone()
            && call.starts_with(&prefix)
        {
            state.fail = None;
            state.calls.push(format!("FAILED {call}"));
            return Err(HostError(format!("injected failure: {call}")));
        }
        state.calls.push(call);
        Ok(())
    }
}

#[tonic::async_trait]
impl NetHost for RecordingHost {
    async fn link_names(&self) -> Result<Vec<String>, HostError> {
        Ok(self.lock().links.iter().cloned().collect())
    }

    async fn create_bridge(&self, spec: &BridgeSpec) -> Result<(), HostError> {
        self.record(format!("create_bridge {}", spec.name))?;
        if !self.lock().links.insert(spec.name.clone()) {
            return Err(HostError(format!("{} exists", spec.name)));
        }
        Ok(())
    }

    async fn delete_link(&self, name: &str) -> Result<(), HostError> {
        self.record(format!("delete_link {name}"))?;
        self.lock().links.remove(name);
        Ok(())
    }

    async fn nft(&self, script: &str) -> Result<(), HostError> {
        self.record(format!("nft {script}"))
    }

    async fn enable_forwarding(&self, ipv4: bool, ipv6: bool) -> Result<(), HostError> {
        self.record(format!("forwarding ipv4={ipv4} ipv6={ipv6}"))
    }

    async fn start_dnsmasq(&self, conf: &Path, _pid_file: &Path) -> Result<u32, HostError> {
        self.record(format!("start_dnsmasq {}", conf.display()))?;
        let mut state = self.lock();
        state.next_pid += 1;
        let pid = 1000 + state.next_pid;
        state.processes.insert(pid, conf.to_owned());
        Ok(pid)
    }

    fn dnsmasq_alive(&self, pid: u32, conf: &Path) -> bool {
        self.lock().processes.get(&pid).is_some_and(|c| c == conf)
    }

    async fn stop_process(&self, pid: u32) -> Result<(), HostError> {
        self.record(format!("stop_process {pid}"))?;
        self.lock().processes.remove(&pid);
        Ok(())
    }

    fn reload_dnsmasq(&self, pid: u32) -> Result<(), HostError> {
        self.record(format!("reload_dnsmasq {pid}"))
    }
}
