//! What every test that boots QEMU through virtqemud needs: whether QEMU is installed, the pid
//! in a domain's status file, and a guard that kills whatever QEMU a test left running.

use std::path::{Path, PathBuf};

use crate::TestRoot;

/// Whether `qemu-system-x86_64` is on `PATH`; prints why the test is skipped when it is not.
pub fn qemu_present() -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").is_file()))
        .unwrap_or(false);
    if !found {
        eprintln!("skipped: qemu-system-x86_64 is not installed");
    }
    found
}

/// QEMU's pid from a virtqemud status file (`<state>/qemu/<name>.status`).
pub fn status_pid(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value.get("pid")?.as_u64().and_then(|p| u32::try_from(p).ok())
}

/// Kills the QEMU of every status file under a test root when dropped. Drop it before the
/// root (declare it after the root as a local, or before it as a struct field).
#[derive(Debug)]
pub struct Reaper {
    state_dir: PathBuf,
}

impl Reaper {
    /// A reaper for virtqemud's state directory under `root`.
    pub fn new(root: &TestRoot) -> Reaper {
        Reaper {
            state_dir: root.run_dir().join("qemu"),
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.state_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("status") {
                continue;
            }
            if let Some(pid) = status_pid(&path) {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains("qemu") {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}
