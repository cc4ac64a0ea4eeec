//! Starting a daemon binary from a benchmark and waiting for its readiness notification, the
//! way systemd does: the daemon gets its own `NOTIFY_SOCKET` and `RVIRT_ROOT`, and the caller
//! waits for `READY=1` (no sleeps, no polling). `qemu-bench`, `proxy-bench` and virtstoraged's
//! stream bench share it; the end-to-end tests have their own async harness.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A daemon started by [`start_ready`]; killed when dropped.
#[derive(Debug)]
pub struct Launched {
    child: Child,
}

impl Launched {
    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the workspace's daemon binaries are: `RVIRT_BIN_DIR`, else the directory of the running
/// program (`target/<profile>`, also for a bench binary in `target/<profile>/deps`).
pub fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("RVIRT_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| "this binary has no directory".to_owned())?;
    Ok(match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    })
}

/// Starts daemon `name` from [`bin_dir`] with `RVIRT_ROOT=root` and its log at `warn`, and waits
/// up to `timeout` for `READY=1` on a notification socket in `root`.
pub fn start_ready(name: &str, root: &Path, timeout: Duration) -> Result<Launched, String> {
    let program = bin_dir()?.join(name);
    let notify_path = root.join(format!("notify-{name}"));
    let notify = UnixDatagram::bind(&notify_path).map_err(|e| format!("notify socket: {e}"))?;
    notify
        .set_read_timeout(Some(timeout))
        .map_err(|e| format!("notify socket: {e}"))?;
    let child = Command::new(&program)
        .env("RVIRT_ROOT", root)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RVIRT_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e} (build it first)", program.display()))?;
    let daemon = Launched { child };
    let mut buf = [0u8; 4096];
    loop {
        let n = notify
            .recv(&mut buf)
            .map_err(|e| format!("{name} did not notify readiness: {e}"))?;
        if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
            return Ok(daemon);
        }
    }
}
