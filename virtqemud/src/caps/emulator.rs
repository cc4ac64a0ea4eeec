//! QEMU emulators: finding `qemu-system-<arch>` for each guest architecture, and asking one
//! binary over QMP what it can do ([`EmulatorCaps`]). Probing goes through the
//! [`EmulatorProber`] trait, so tests can count or fake it; [`QmpProber`] is the real one.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;

use super::arch::{self, Arch};
use crate::qmp::commands::{CpuDefinitionInfo, MachineInfo, QemuVersion};
use crate::qmp::launch::{QmpSocket, Stalled, stalled};
use crate::qmp::name::Name;
use crate::qmp::{QmpClient, QmpError, QmpOptions};

/// What one accelerator (TCG or KVM) offers with one emulator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelCaps {
    /// Machine types, as `query-machines` returned them.
    pub machines: Vec<MachineInfo>,
    /// CPU models with what this accelerator lacks for each (`query-cpu-definitions`).
    pub cpu_models: Vec<CpuDefinitionInfo>,
}

impl AccelCaps {
    /// The default machine type.
    pub fn default_machine(&self) -> Option<&MachineInfo> {
        self.machines.iter().find(|m| m.is_default)
    }

    /// The machine type named `name`, by its canonical name or its alias (`q35`).
    pub fn machine(&self, name: &str) -> Option<&MachineInfo> {
        self.machines
            .iter()
            .find(|m| m.name == name)
            .or_else(|| self.machines.iter().find(|m| m.alias.as_deref() == Some(name)))
    }
}

/// What one QEMU binary told about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmulatorCaps {
    /// The binary.
    pub binary: PathBuf,
    /// Its version.
    pub version: QemuVersion,
    /// Its package string (the distribution's version).
    pub package: String,
    /// libvirt's name for the architecture it emulates (`query-target`).
    pub arch: String,
    /// The QMP commands it has.
    pub commands: BTreeSet<Name>,
    /// Its concrete device types (`qom-list-types implements=device`).
    pub device_types: BTreeSet<Name>,
    /// All its concrete QOM types (devices, backends, objects).
    pub object_types: BTreeSet<Name>,
    /// Under TCG.
    pub tcg: AccelCaps,
    /// Under KVM, when KVM is usable and the architecture native to the host.
    pub kvm: Option<AccelCaps>,
}

impl EmulatorCaps {
    /// The capabilities of virtualization type `virt_type` (`kvm` or `qemu`).
    pub fn accel(&self, kvm: bool) -> Option<&AccelCaps> {
        if kvm { self.kvm.as_ref() } else { Some(&self.tcg) }
    }

    /// Whether QEMU has the QOM type `name` (device or object).
    pub fn has_type(&self, name: &str) -> bool {
        self.object_types.contains(name) || self.device_types.contains(name)
    }

    /// The version as text (`10.0.2`).
    pub fn version_string(&self) -> String {
        self.version.to_string()
    }
}

/// Why a binary could not be probed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProbeError {
    /// The binary is missing or unreadable.
    #[error("cannot use {binary}: {reason}")]
    Binary {
        /// The binary.
        binary: PathBuf,
        /// Why.
        reason: String,
    },
    /// It would not start.
    #[error("cannot start {binary}: {reason}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        reason: String,
    },
    /// It started but did not answer over QMP.
    #[error("{binary} did not describe itself over QMP: {error}{said}")]
    Qmp {
        /// The binary.
        binary: PathBuf,
        /// What failed.
        error: QmpError,
        /// What QEMU said and did meanwhile.
        said: Box<QemuSaid>,
    },
    /// It took too long.
    #[error("{binary} took longer than {timeout:?} to describe itself")]
    Timeout {
        /// The binary.
        binary: PathBuf,
        /// The limit.
        timeout: Duration,
    },
    /// It emulates an architecture rvirt does not know.
    #[error("{binary} emulates '{target}', an architecture rvirt does not know")]
    UnknownTarget {
        /// The binary.
        binary: PathBuf,
        /// QEMU's name for it.
        target: String,
    },
}

impl ProbeError {
    /// Whether probing again may succeed: QEMU was too slow to answer (a loaded or stalled
    /// host), as opposed to a binary that cannot start or describe itself.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ProbeError::Timeout { .. }
                | ProbeError::Qmp {
                    error: QmpError::Timeout { .. },
                    ..
                }
        )
    }
}

/// What a probe QEMU that failed said and did: shown after the error.
#[derive(Debug, Clone, Default)]
pub struct QemuSaid {
    /// The end of its standard error.
    pub stderr: String,
    /// What its threads were doing when it stopped answering (only when it timed out).
    pub threads: Option<Stalled>,
}

impl std::fmt::Display for QemuSaid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.stderr.trim().is_empty() {
            write!(f, " (QEMU said: {})", self.stderr.trim())?;
        }
        match &self.threads {
            Some(threads) => write!(f, "{threads}"),
            None => Ok(()),
        }
    }
}

/// Asks a QEMU binary what it can do. The seam between the capability cache and process
/// spawning.
#[tonic::async_trait]
pub trait EmulatorProber: Send + Sync + 'static {
    /// Probes `binary`; with `kvm`, also under KVM when the binary's architecture is native to
    /// the host.
    async fn probe(&self, binary: &Path, kvm: bool) -> Result<EmulatorCaps, ProbeError>;
}

/// Whether `path` is an executable file.
pub fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where emulators are looked for: `PATH` (absolute entries), then `/usr/bin`, deduplicated.
pub fn default_search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).filter(|d| d.is_absolute()).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/bin"));
    let mut seen = BTreeSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// The emulator for `guest` guests on a `host` host, as libvirt picks it: `qemu-system-<arch>`
/// in `search`, then the native target's binary (`qemu-system-x86_64` for i686), then for
/// native guests `qemu-kvm` and `kvm` in `search` and `/usr/libexec/qemu-kvm`. `None` when no
/// such binary is installed.
pub fn find_emulator(search: &[PathBuf], host: &str, guest: &'static Arch) -> Option<PathBuf> {
    let find = |name: &str| search.iter().map(|d| d.join(name)).find(|p| is_executable(p));
    for target in arch::targets_for(host, guest) {
        if let Some(found) = find(&format!("qemu-system-{target}")) {
            return Some(found);
        }
    }
    if arch::is_native(host, guest.name) {
        for name in ["qemu-kvm", "kvm"] {
            if let Some(found) = find(name) {
                return Some(found);
            }
        }
        let libexec = PathBuf::from("/usr/libexec/qemu-kvm");
        if is_executable(&libexec) {
            return Some(libexec);
        }
    }
    None
}

/// The real prober: runs the binary with `-machine none` under TCG (and again under KVM when
/// asked and native), with its monitor on a pre-bound socket in `work_dir`, and asks.
#[derive(Debug)]
pub struct QmpProber {
    work_dir: PathBuf,
    host_arch: &'static str,
    timeout: Duration,
    next: AtomicU64,
}

impl QmpProber {
    /// A prober putting its temporary sockets in `work_dir`, giving each binary `timeout`.
    pub fn new(work_dir: PathBuf, host_arch: &'static str, timeout: Duration) -> QmpProber {
        QmpProber {
            work_dir,
            host_arch,
            timeout,
            next: AtomicU64::new(0),
        }
    }
}

/// A probe QEMU: killed if dropped before [`ProbeQemu::finish`].
struct ProbeQemu {
    binary: PathBuf,
    child: tokio::process::Child,
    client: QmpClient,
    stderr: tokio::task::JoinHandle<String>,
    socket_file: SocketFile,
}

/// Removes a probe's socket file however the probe ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The last lines of a QEMU's standard error (it may be long).
async fn stderr_tail(handle: tokio::task::JoinHandle<String>) -> String {
    let text = handle.await.unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("; ")
}

impl QmpProber {
    async fn start(&self, binary: &Path, accel: &str) -> Result<ProbeQemu, ProbeError> {
        std::fs::create_dir_all(&self.work_dir).map_err(|e| ProbeError::Spawn {
            binary: binary.to_owned(),
            reason: format!("cannot create {}: {e}", self.work_dir.display()),
        })?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self
            .work_dir
            .join(format!("probe-{}-{n}.sock", std::process::id()));
        let mut socket = QmpSocket::bind(&path).map_err(|e| ProbeError::Spawn {
            binary: binary.to_owned(),
            reason: format!("cannot bind {}: {e}", path.display()),
        })?;
        let socket_file = SocketFile(path);
        let mut command = tokio::process::Command::new(binary);
        command
            .args(["-S", "-no-user-config", "-nodefaults", "-nographic"])
            .args(["-machine", "none", "-accel", accel])
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        socket
            .pass_to(command.as_std_mut())
            .map_err(|e| ProbeError::Spawn {
                binary: binary.to_owned(),
                reason: e.to_string(),
            })?;
        // A probe QEMU must not outlive the daemon, even one killed with SIGKILL (which no drop
        // guard sees): the kernel kills it when its parent goes. Unlike a domain's QEMU, which
        // must survive the daemon, it holds nothing worth keeping.
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and only makes the async-signal-safe
        // calls prctl, getppid and _exit.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(command.as_std_mut(), move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| ProbeError::Spawn {
            binary: binary.to_owned(),
            reason: e.to_string(),
        })?;
        socket.release();
        let mut pipe = child.stderr.take();
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            if let Some(pipe) = pipe.as_mut() {
                let _ = pipe.take(64 * 1024).read_to_string(&mut text).await;
            }
            text
        });
        match socket.connect(QmpOptions::default()).await {
            Ok((client, _events)) => Ok(ProbeQemu {
                binary: binary.to_owned(),
                child,
                client,
                stderr,
                socket_file,
            }),
            Err(error) => {
                let threads = child.id().and_then(|pid| stalled(&error, pid));
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(ProbeError::Qmp {
                    binary: binary.to_owned(),
                    error,
                    said: Box::new(QemuSaid {
                        stderr: stderr_tail(stderr).await,
                        threads,
                    }),
                })
            }
        }
    }
}

impl ProbeQemu {
    /// Asks QEMU to quit and waits for it (as its parent: no polling).
    async fn finish(mut self) {
        let _ = self.client.quit().await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        drop(self.socket_file);
        self.stderr.abort();
    }

    /// Kills QEMU and turns a QMP failure into a probe error with QEMU's last words.
    async fn fail(mut self, error: QmpError) -> ProbeError {
        let threads = self.child.id().and_then(|pid| stalled(&error, pid));
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        ProbeError::Qmp {
            binary: self.binary.clone(),
            error,
            said: Box::new(QemuSaid {
                stderr: stderr_tail(self.stderr).await,
                threads,
            }),
        }
    }

    async fn accel_caps(&self, has_cpu_definitions: bool) -> Result<AccelCaps, QmpError> {
        let mut machines = self.client.query_machines().await?;
        // `none` runs no guest: libvirt leaves it out too.
        machines.retain(|m| m.name != "none");
        let cpu_models = if has_cpu_definitions {
            self.client.query_cpu_definitions().await?
        } else {
            Vec::new()
        };
        Ok(AccelCaps { machines, cpu_models })
    }
}

fn names(types: Vec<crate::qmp::commands::ObjectTypeInfo>) -> BTreeSet<Name> {
    types.into_iter().map(|t| t.name).collect()
}

impl QmpProber {
    async fn probe_tcg(&self, binary: &Path) -> Result<EmulatorCaps, ProbeError> {
        let qemu = self.start(binary, "tcg").await?;
        let asked = async {
            let target = qemu.client.query_target().await?.arch;
            let commands: BTreeSet<Name> = qemu.client.query_commands().await?.into_iter().collect();
            let tcg = qemu
                .accel_caps(commands.contains("query-cpu-definitions"))
                .await?;
            let device_types = names(qemu.client.qom_list_types(Some("device")).await?);
            let object_types = names(qemu.client.qom_list_types(None).await?);
            Ok::<_, QmpError>((target, commands, tcg, device_types, object_types))
        }
        .await;
        let (target, commands, tcg, device_types, object_types) = match asked {
            Ok(answers) => answers,
            Err(e) => return Err(qemu.fail(e).await),
        };
        let version = qemu.client.greeting().version.clone();
        qemu.finish().await;
        let arch = arch::from_qemu_target(&target).ok_or_else(|| ProbeError::UnknownTarget {
            binary: binary.to_owned(),
            target: target.clone(),
        })?;
        Ok(EmulatorCaps {
            binary: binary.to_owned(),
            version: version.qemu,
            package: version.package,
            arch: arch.name.to_owned(),
            commands,
            device_types,
            object_types,
            tcg,
            kvm: None,
        })
    }

    async fn probe_kvm(
        &self,
        binary: &Path,
        has_cpu_definitions: bool,
    ) -> Result<Option<AccelCaps>, ProbeError> {
        let qemu = self.start(binary, "kvm").await?;
        let asked = async {
            if !qemu.client.query_kvm().await?.enabled {
                return Ok(None);
            }
            qemu.accel_caps(has_cpu_definitions).await.map(Some)
        }
        .await;
        match asked {
            Ok(kvm) => {
                qemu.finish().await;
                Ok(kvm)
            }
            Err(e) => Err(qemu.fail(e).await),
        }
    }
}

#[tonic::async_trait]
impl EmulatorProber for QmpProber {
    async fn probe(&self, binary: &Path, kvm: bool) -> Result<EmulatorCaps, ProbeError> {
        let probe = async {
            let mut caps = self.probe_tcg(binary).await?;
            if kvm && arch::is_native(self.host_arch, &caps.arch) {
                let has_defs = caps.commands.contains("query-cpu-definitions");
                match self.probe_kvm(binary, has_defs).await {
                    Ok(accel) => caps.kvm = accel,
                    Err(e) => {
                        tracing::warn!(binary = %binary.display(), error = %e, "KVM probe failed; offering TCG only")
                    }
                }
            }
            Ok(caps)
        };
        tokio::time::timeout(self.timeout, probe)
            .await
            .map_err(|_| ProbeError::Timeout {
                binary: binary.to_owned(),
                timeout: self.timeout,
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executable(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    #[test]
    fn emulators_are_found_by_target_name_with_native_fallbacks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let search = vec![dir.path().to_owned()];
        let x86_64 = arch::by_name("x86_64").expect("arch");
        let i686 = arch::by_name("i686").expect("arch");
        let aarch64 = arch::by_name("aarch64").expect("arch");
        assert_eq!(find_emulator(&search, "x86_64", x86_64), None);
        let kvm = executable(dir.path(), "kvm");
        assert_eq!(find_emulator(&search, "x86_64", x86_64), Some(kvm.clone()));
        assert_eq!(
            find_emulator(&search, "x86_64", aarch64),
            None,
            "kvm only serves native guests"
        );
        let qemu = executable(dir.path(), "qemu-system-x86_64");
        assert_eq!(find_emulator(&search, "x86_64", x86_64), Some(qemu.clone()));
        assert_eq!(
            find_emulator(&search, "x86_64", i686),
            Some(qemu),
            "i686 falls back to x86_64"
        );
        let i386 = executable(dir.path(), "qemu-system-i386");
        assert_eq!(find_emulator(&search, "x86_64", i686), Some(i386));
        std::fs::write(dir.path().join("qemu-system-aarch64"), "not executable").expect("write");
        assert_eq!(find_emulator(&search, "x86_64", aarch64), None);
    }

    #[test]
    fn machines_resolve_by_name_and_alias() {
        let machine = |name: &str, alias: Option<&str>, default: bool| MachineInfo {
            name: name.into(),
            alias: alias.map(Name::from),
            is_default: default,
            cpu_max: 255,
            hotpluggable_cpus: true,
            deprecated: false,
            default_cpu_type: None,
            default_ram_id: None,
            acpi: true,
        };
        let accel = AccelCaps {
            machines: vec![
                machine("pc-q35-10.0", Some("q35"), false),
                machine("pc-i440fx-10.0", Some("pc"), true),
            ],
            cpu_models: Vec::new(),
        };
        assert_eq!(accel.machine("q35").map(|m| m.name.as_str()), Some("pc-q35-10.0"));
        assert_eq!(
            accel.machine("pc-i440fx-10.0").map(|m| m.name.as_str()),
            Some("pc-i440fx-10.0")
        );
        assert_eq!(
            accel.default_machine().map(|m| m.name.as_str()),
            Some("pc-i440fx-10.0")
        );
        assert!(accel.machine("virt").is_none());
    }
}
