//! virtqemud's capabilities end to end: the daemon in a temporary `RVIRT_ROOT`, asked through
//! its socket for the host capabilities and domain capabilities (both validated with `xmllint`
//! against libvirt's schemas), readiness that does not wait for QEMU, and a restart that reuses
//! the capability cache instead of running QEMU again.
//!
//! The daemon finds `qemu-system-x86_64` through `PATH`, where the test puts a wrapper script
//! first: it records every run in a file, then `exec`s the real QEMU (so the probe's pre-bound
//! monitor socket passes through unchanged). Counting those runs is how the test knows whether
//! QEMU ran.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use rvirt_e2e::{DAEMON_DEADLINE, DaemonOptions, DaemonProcess, TestRoot, channel};
use rvirt_proto::error::from_status;
use rvirt_proto::v1::host_service_client::HostServiceClient;
use rvirt_proto::v1::*;
use tonic::transport::Channel;

const DAEMON: &str = "virtqemud";
const REAL_QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// Probing runs QEMU a few times (TCG, KVM, per binary): generous for a loaded machine.
const PROBE_LIMIT: Duration = Duration::from_secs(60);

use rvirt_testdata::validate;

/// A `PATH` directory whose `qemu-system-x86_64` counts its runs, then runs the real one;
/// optionally held at a gate until the test opens it.
struct QemuWrapper {
    dir: PathBuf,
    runs: PathBuf,
    gate: PathBuf,
    started: PathBuf,
}

/// How the wrapper behaves before it runs QEMU.
#[derive(Clone, Copy, PartialEq)]
enum Wrap {
    /// Runs QEMU at once.
    Open,
    /// Waits at the gate.
    Gated,
    /// Writes its pid (QEMU's, after `exec`) to the `started` FIFO, then waits at the gate.
    AnnouncedAndGated,
}

impl QemuWrapper {
    fn new(root: &TestRoot, wrap: Wrap) -> QemuWrapper {
        let dir = root.path().join("wrapper-bin");
        std::fs::create_dir_all(&dir).expect("wrapper dir");
        let runs = root.path().join("qemu-runs");
        let gate = root.path().join("qemu-gate");
        let started = root.path().join("qemu-started");
        let fifo = |path: &Path| {
            nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo")
        };
        let mut wait = String::new();
        if wrap == Wrap::AnnouncedAndGated {
            fifo(&started);
            // Opening a FIFO for writing blocks until the test opens it for reading.
            wait.push_str(&format!("echo $$ > '{}'\n", started.display()));
        }
        if wrap != Wrap::Open {
            fifo(&gate);
            // Opening a FIFO for reading blocks until someone holds its write end.
            wait.push_str(&format!(": < '{}'\n", gate.display()));
        }
        let script = format!(
            "#!/bin/sh\necho run >> '{}'\n{wait}exec {REAL_QEMU} \"$@\"\n",
            runs.display()
        );
        let path = dir.join("qemu-system-x86_64");
        std::fs::write(&path, script).expect("write the wrapper");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        QemuWrapper {
            dir,
            runs,
            gate,
            started,
        }
    }

    fn emulator(&self) -> PathBuf {
        self.dir.join("qemu-system-x86_64")
    }

    /// How many times QEMU was started through the wrapper.
    fn runs(&self) -> usize {
        std::fs::read_to_string(&self.runs)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// Lets every wrapper run pass the gate, now and later (the returned file holds the FIFO's
    /// write end open; opened read-write so that opening does not block).
    fn open_gate(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.gate)
            .expect("open the gate")
    }

    /// Waits for the wrapper to announce itself; its pid.
    async fn started_pid(&self) -> i32 {
        let path = self.started.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(path));
        let text = tokio::time::timeout(PROBE_LIMIT, read)
            .await
            .expect("the probe starts QEMU")
            .expect("reader task")
            .expect("read the started FIFO");
        text.trim().parse().expect("a pid")
    }

    fn options(&self) -> DaemonOptions {
        let path = std::env::var("PATH").unwrap_or_default();
        DaemonOptions {
            env: vec![("PATH".into(), format!("{}:{path}", self.dir.display()))],
            ..DaemonOptions::default()
        }
    }
}

fn cache_dir(root: &TestRoot) -> PathBuf {
    root.path().join("var/lib/rvirt/qemu/capabilities")
}

async fn host(root: &TestRoot) -> HostServiceClient<Channel> {
    HostServiceClient::new(channel(&root.socket("virtqemud-sock")).await)
}

async fn capabilities(host: &mut HostServiceClient<Channel>) -> String {
    tokio::time::timeout(PROBE_LIMIT, host.get_capabilities(GetCapabilitiesRequest {}))
        .await
        .expect("capabilities within the probe limit")
        .expect("GetCapabilities")
        .into_inner()
        .xml
}

async fn domain_capabilities(
    host: &mut HostServiceClient<Channel>,
    request: GetDomainCapabilitiesRequest,
) -> Result<String, tonic::Status> {
    tokio::time::timeout(PROBE_LIMIT, host.get_domain_capabilities(request))
        .await
        .expect("domain capabilities within the probe limit")
        .map(|r| r.into_inner().xml)
}

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

#[tokio::test]
async fn capabilities_through_the_socket_validate_against_libvirt_schema() {
    let root = TestRoot::new();
    let wrapper = QemuWrapper::new(&root, Wrap::Open);
    let _daemon = DaemonProcess::start_with(DAEMON, &root, wrapper.options()).await;
    let mut host = host(&root).await;
    let xml = capabilities(&mut host).await;
    validate("capability.rng", &xml).expect("capabilities validate");
    assert!(
        xml.contains(&format!("<emulator>{}</emulator>", wrapper.emulator().display())),
        "the emulator found on PATH: {xml}"
    );
    assert!(xml.contains("<arch name=\"x86_64\">"));
    assert!(xml.contains(">q35</machine>"));
    assert_eq!(xml.contains("<domain type=\"kvm\"/>"), kvm_usable());

    let version = host
        .get_version(GetVersionRequest {})
        .await
        .expect("GetVersion")
        .into_inner();
    assert!(
        version.hypervisor_version >= 7_000_000,
        "QEMU's version: {version:?}"
    );
    assert!(
        version
            .hypervisor_version_string
            .starts_with(&format!("{}.", version.hypervisor_version / 1_000_000))
    );
    let kind = host
        .get_type(GetTypeRequest {})
        .await
        .expect("GetType")
        .into_inner();
    assert_eq!(kind.r#type, "QEMU");
}

#[tokio::test]
async fn domain_capabilities_through_the_socket_validate_against_libvirt_schema() {
    let root = TestRoot::new();
    let wrapper = QemuWrapper::new(&root, Wrap::Open);
    let _daemon = DaemonProcess::start_with(DAEMON, &root, wrapper.options()).await;
    let mut host = host(&root).await;
    let mut virt_types = vec!["", "qemu"];
    if kvm_usable() {
        virt_types.push("kvm");
    }
    for virttype in virt_types {
        for machine in ["", "q35"] {
            let xml = domain_capabilities(
                &mut host,
                GetDomainCapabilitiesRequest {
                    virttype: virttype.into(),
                    machine: machine.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("domain capabilities {virttype}/{machine}: {e:?}"));
            validate("domaincaps.rng", &xml)
                .unwrap_or_else(|e| panic!("{virttype}/{machine} does not validate: {e}"));
            assert!(
                xml.contains(&format!("<path>{}</path>", wrapper.emulator().display())),
                "{xml}"
            );
            if machine == "q35" {
                assert!(xml.contains("<machine>pc-q35-"), "{xml}");
            }
        }
    }
    let models = host
        .get_cpu_model_names(GetCpuModelNamesRequest {
            arch: "x86_64".into(),
        })
        .await
        .expect("CPU models")
        .into_inner()
        .models;
    assert!(models.iter().any(|m| m == "qemu64"), "{models:?}");
    let tcg = host
        .get_max_vcpus(GetMaxVcpusRequest {
            r#type: "qemu".into(),
        })
        .await
        .expect("max vcpus")
        .into_inner();
    assert_eq!(tcg.max_vcpus, 16);
}

#[tokio::test]
async fn bad_domain_capabilities_requests_are_invalid_arguments() {
    let root = TestRoot::new();
    let wrapper = QemuWrapper::new(&root, Wrap::Open);
    let _daemon = DaemonProcess::start_with(DAEMON, &root, wrapper.options()).await;
    let mut host = host(&root).await;
    for (request, mentions) in [
        (
            GetDomainCapabilitiesRequest {
                arch: "aarch64".into(),
                emulator_bin: wrapper.emulator().display().to_string(),
                ..Default::default()
            },
            "aarch64",
        ),
        (
            GetDomainCapabilitiesRequest {
                machine: "no-such-machine".into(),
                ..Default::default()
            },
            "no-such-machine",
        ),
        (
            GetDomainCapabilitiesRequest {
                virttype: "xen".into(),
                ..Default::default()
            },
            "xen",
        ),
    ] {
        let err = domain_capabilities(&mut host, request)
            .await
            .expect_err("refused");
        let detail = from_status(&err);
        assert_eq!(detail.code(), ErrorCode::InvalidArg, "{detail:?}");
        assert!(detail.message.contains(mentions), "{}", detail.message);
    }
}

#[tokio::test]
async fn readiness_does_not_wait_for_the_qemu_probe() {
    let root = TestRoot::new();
    let wrapper = QemuWrapper::new(&root, Wrap::Gated);
    // READY=1 arrives although every QEMU the probe starts is held at the gate.
    let _daemon = DaemonProcess::start_with(DAEMON, &root, wrapper.options()).await;
    let mut host = host(&root).await;
    let info = host
        .get_connection_info(GetConnectionInfoRequest {})
        .await
        .expect("generic calls answer during the probe")
        .into_inner();
    assert_eq!(info.daemon, DAEMON);
    // A capabilities request waits for the probe in flight...
    let mut waiting = host.clone();
    let request = tokio::spawn(async move { capabilities(&mut waiting).await });
    // ...which completes once QEMU may run.
    let _gate = wrapper.open_gate();
    let xml = request.await.expect("request task");
    validate("capability.rng", &xml).expect("validates");
    assert!(xml.contains(&format!("<emulator>{}</emulator>", wrapper.emulator().display())));
}

#[tokio::test]
async fn restart_reuses_the_capability_cache() {
    let root = TestRoot::new();
    let wrapper = QemuWrapper::new(&root, Wrap::Open);
    let mut daemon = DaemonProcess::start_with(DAEMON, &root, wrapper.options()).await;
    let first = capabilities(&mut host(&root).await).await;
    let runs = wrapper.runs();
    assert!(runs >= 1, "the first start runs QEMU");
    let cached: Vec<PathBuf> = std::fs::read_dir(cache_dir(&root))
        .expect("cache directory")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(
        cached
            .iter()
            .any(|p| file_name(p).starts_with("qemu-system-x86_64-")),
        "{cached:?}"
    );

    daemon.signal(Signal::SIGTERM);
    let (status, log) = daemon.wait_exit(DAEMON_DEADLINE).await.expect("exit");
    assert!(status.success(), "{log}");

    let _daemon = DaemonProcess::start_with(DAEMON, &root, wrapper.options()).await;
    let second = capabilities(&mut host(&root).await).await;
    assert_eq!(wrapper.runs(), runs, "the restarted daemon did not run QEMU");
    let guests = |xml: &str| xml.split_once("<guest>").map(|(_, g)| g.to_owned());
    assert_eq!(guests(&first), guests(&second), "same guests from the cache");
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Waits until process `pid` (not our child) exits, through a pidfd: no polling of `/proc`.
async fn wait_gone(pid: i32, limit: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        // ESRCH: already gone (and reaped).
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    // SAFETY: `fd` is a descriptor pidfd_open just returned, owned by nothing else.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // SAFETY: the OwnedFd is a valid open descriptor that the AsyncFd owns until it is dropped.
    let pidfd =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(|e| e.to_string())
            .expect("watch the pidfd");
    tokio::time::timeout(limit, pidfd.readable()).await.is_ok()
}

#[tokio::test]
async fn killed_daemon_leaves_no_probe_qemu_behind() {
    let root = TestRoot::new();
    let wrapper = QemuWrapper::new(&root, Wrap::AnnouncedAndGated);
    let daemon = DaemonProcess::start_with(DAEMON, &root, wrapper.options()).await;
    // The probe's process (the wrapper, QEMU after its exec) is running and held at the gate.
    let pid = wrapper.started_pid().await;
    daemon.signal(Signal::SIGKILL);
    assert!(
        wait_gone(pid, DAEMON_DEADLINE).await,
        "the probe process {pid} outlived the daemon"
    );
    drop(daemon);
}
