//! Starting a session daemon on demand, as libvirt's client does for `qemu:///session`.
//!
//! The daemon is started with `--timeout 120` (it exits when idle), told to notify readiness on
//! a datagram socket of ours (`NOTIFY_SOCKET`), and waited for through that notification: no
//! polling for the socket file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rvirt_proto::v1::{ErrorCode, ErrorDomain};

use crate::error::{Error, Result};
use crate::route::DaemonId;

/// How long a starting daemon may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the daemon's binary is: `RVIRT_DAEMON_DIR`, beside this program, on `PATH`, or
/// `/usr/sbin`.
fn daemon_binary(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("RVIRT_DAEMON_DIR") {
        dirs.push(dir.into());
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.push("/usr/sbin".into());
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Starts `daemon` in session mode and waits until it is ready to serve `socket`.
pub async fn start_session_daemon(daemon: DaemonId, socket: &Path) -> Result<()> {
    let fail = |message: String| Error::new(ErrorCode::NoConnect, ErrorDomain::Rpc, message);
    let binary = daemon_binary(daemon.name).ok_or_else(|| {
        fail(format!(
            "{} is not running and its binary was not found (looked beside this program, on PATH, in /usr/sbin)",
            daemon.name
        ))
    })?;
    let dir = socket.parent().ok_or_else(|| fail("bad socket path".into()))?;
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    let notify_path = dir.join(format!(".notify-{}-{}", daemon.name, std::process::id()));
    let _ = std::fs::remove_file(&notify_path);
    let notify = tokio::net::UnixDatagram::bind(&notify_path)
        .map_err(|e| fail(format!("cannot create {}: {e}", notify_path.display())))?;
    let spawned = Command::new(&binary)
        .args(["--timeout", "120", "--mode", "session"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let _ = std::fs::remove_file(&notify_path);
            return Err(fail(format!("cannot start {}: {e}", binary.display())));
        }
    };
    let mut buf = [0u8; 1024];
    let ready = tokio::time::timeout(READY_TIMEOUT, async {
        loop {
            match notify.recv(&mut buf).await {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    let _ = std::fs::remove_file(&notify_path);
    // Reap the daemon when it exits, however long it lives.
    std::thread::spawn(move || child.wait());
    match ready {
        Ok(true) => Ok(()),
        _ => Err(fail(format!(
            "{} was started but did not become ready within {READY_TIMEOUT:?}",
            binary.display()
        ))),
    }
}

use std::os::unix::process::CommandExt as _;
