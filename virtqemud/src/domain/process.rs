//! QEMU processes: spawning one in its own session with its log, watching it through a pidfd,
//! signalling it, and reading its log's last lines for error messages.
//!
//! A pidfd names one process for as long as the descriptor is open, so signals never reach a
//! recycled pid, and it becomes readable when the process exits, which is how the driver learns
//! of an exit without polling — whether QEMU is its child (started by this daemon) or was
//! adopted after a restart (then init reaps it).

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use tokio::io::unix::AsyncFd;

/// A process watched through its pidfd.
#[derive(Debug)]
pub struct Pidfd {
    pid: u32,
    fd: AsyncFd<OwnedFd>,
}

impl Pidfd {
    /// Opens a pidfd for `pid`. Fails with `ESRCH` when no such process exists.
    pub fn open(pid: u32) -> std::io::Result<Pidfd> {
        let pid_t = libc::pid_t::try_from(pid)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid out of range"))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no
        // memory is shared with the kernel.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid_t, libc::PIDFD_NONBLOCK) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let raw = i32::try_from(raw).map_err(|_| std::io::Error::other("pidfd out of range"))?;
        // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd owns the pidfd, which stays open and the same for as long as the
        // AsyncFd (which owns the OwnedFd) lives.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Pidfd { pid, fd })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` to the process (a no-op once it exited).
    pub fn signal(&self, signal: libc::c_int) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal reads only its integer arguments (info is null).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }

    /// Waits until the process exits, then reaps it if it is this daemon's child.
    pub async fn exited(&self) {
        // Readiness never clears once the process exited; an error means the reactor is gone,
        // in which case there is nothing left to wait with.
        if let Ok(mut guard) = self.fd.readable().await {
            guard.retain_ready();
        }
        // Reap our own child; for an adopted process this fails with ECHILD, which is fine.
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.fd.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let rc = unsafe { libc::poll(&mut poll, 1, 0) };
        rc > 0 && poll.revents & libc::POLLIN != 0
    }
}

/// Spawns `program args` in a new session, stdin from /dev/null, stdout and stderr appended to
/// `log`, after writing the command line to the log as a header. Descriptors named in
/// `inherit` stay open in the child under the same numbers (everything else this daemon opened
/// is close-on-exec).
pub fn spawn(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
    inherit: &[i32],
) -> std::io::Result<(u32, Pidfd)> {
    let mut log_file = OpenOptions::new().create(true).append(true).open(log)?;
    let mut header = String::new();
    header.push_str(&format!(
        "{} starting: {}",
        humantime_now(),
        shell_quote(&program.to_string_lossy())
    ));
    for arg in args {
        header.push_str(" \\\n");
        header.push_str(&shell_quote(arg));
    }
    header.push('\n');
    log_file.write_all(header.as_bytes())?;
    let stderr = log_file.try_clone()?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env("LC_ALL", "C")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(stderr));
    let inherit: Vec<i32> = inherit.to_vec();
    // SAFETY: between fork and exec the closure only calls setsid and fcntl, both
    // async-signal-safe, on descriptors this process owns.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for fd in &inherit {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    let pid = child.id();
    // The child cannot be reaped before we wait for it, so the pid still names it here.
    let pidfd = Pidfd::open(pid)?;
    // Dropping a std Child neither kills nor waits: the pidfd watcher reaps it.
    drop(child);
    Ok((pid, pidfd))
}

fn humantime_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("[{}.{:03}]", now.as_secs(), now.subsec_millis())
}

fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// The last `lines` non-empty lines of the log at `path` (at most 16 KiB are read), for error
/// messages about a QEMU that failed.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(16 * 1024);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(' ') && !l.ends_with('\\'))
        .collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

/// CPU time (user, system) the process has used, in nanoseconds, from `/proc/<pid>/stat`.
pub fn cpu_time_ns(pid: u32) -> Option<(u64, u64)> {
    parse_cpu_times(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU time (user, system) of one thread of a process (a vCPU thread).
pub fn cpu_time_ns_of_thread(pid: u32, tid: i64) -> Option<(u64, u64)> {
    parse_cpu_times(&std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?)
}

fn parse_cpu_times(stat: &str) -> Option<(u64, u64)> {
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    let ns = 1_000_000_000 / ticks;
    Some((utime * ns, stime * ns))
}

/// Counters of one host network device, as `/proc/net/dev` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetDevCounters {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_drops: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Packets dropped on send.
    pub tx_drops: u64,
}

/// Counters of every network device in this network namespace.
pub fn net_dev_counters() -> std::collections::HashMap<String, NetDevCounters> {
    std::fs::read_to_string("/proc/net/dev")
        .map(|text| parse_net_dev(&text))
        .unwrap_or_default()
}

fn parse_net_dev(text: &str) -> std::collections::HashMap<String, NetDevCounters> {
    let mut map = std::collections::HashMap::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let n: Vec<u64> = rest.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        if n.len() < 12 {
            continue;
        }
        map.insert(
            name.trim().to_owned(),
            NetDevCounters {
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                rx_drops: n[3],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
                tx_drops: n[11],
            },
        );
    }
    map
}

/// The resident memory of a process in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_lines_parse_into_counters() {
        let text = "Inter-|   Receive                            |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n \
             vnet0:    1000      10    1    2    0     0          0         0     2000      20    3    4    0     0       0          0\n";
        let map = parse_net_dev(text);
        let c = map.get("vnet0").expect("vnet0 parsed");
        assert_eq!(
            (c.rx_bytes, c.rx_packets, c.rx_errors, c.rx_drops),
            (1000, 10, 1, 2)
        );
        assert_eq!(
            (c.tx_bytes, c.tx_packets, c.tx_errors, c.tx_drops),
            (2000, 20, 3, 4)
        );
    }

    #[test]
    fn cpu_times_come_from_fields_14_and_15() {
        let stat = "42 (qemu (x)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        let (user, system) = parse_cpu_times(stat).expect("parses");
        // SAFETY: sysconf reads a constant.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).expect("positive");
        assert_eq!(user, 250 * (1_000_000_000 / hz));
        assert_eq!(system, 50 * (1_000_000_000 / hz));
    }

    #[test]
    fn quoting_keeps_plain_arguments_and_quotes_the_rest() {
        assert_eq!(shell_quote("-machine"), "-machine");
        assert_eq!(shell_quote("{\"a\":1}"), "'{\"a\":1}'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[tokio::test]
    async fn a_spawned_process_is_seen_exiting_through_its_pidfd() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        let (pid, pidfd) = spawn(
            Path::new("/bin/sh"),
            &["-c".into(), "echo hello; exit 3".into()],
            &[],
            &log,
            &[],
        )
        .expect("spawns");
        assert_eq!(pidfd.pid(), pid);
        tokio::time::timeout(std::time::Duration::from_secs(10), pidfd.exited())
            .await
            .expect("exits");
        assert!(pidfd.has_exited());
        assert!(log_tail(&log, 5).ends_with("hello"), "{}", log_tail(&log, 5));
    }

    #[tokio::test]
    async fn signals_reach_the_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        let (_, pidfd) = spawn(Path::new("/bin/sleep"), &["1000".into()], &[], &log, &[]).expect("spawns");
        assert!(!pidfd.has_exited());
        pidfd.signal(libc::SIGKILL).expect("signal");
        tokio::time::timeout(std::time::Duration::from_secs(10), pidfd.exited())
            .await
            .expect("exits");
    }
}
