//! `QemuCommandBuilder`: golden command lines for the inputs under `tests/data/command/`
//! (regenerate with `RVIRT_UPDATE_GOLDEN=1`), the errors it gives, a conformance comparison
//! with libvirt's own `*.x86_64-latest.args` outputs, and real QEMU accepting the command lines.
//!
//! The emulator is described by fixtures taken from QEMU 10.0.2 (`qemu-types.txt`: its
//! `-device help` and `-object help` names; `qemu-cpus.txt`: its `-cpu help` models), so the
//! golden files do not depend on the host's QEMU.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rvirt_conf::domain::{
    ChrSource, Device, DiskFormat, DiskSource, DomainDef, InterfaceSource, Listen, MachineFamily, ParseFlags,
    VirtType,
};
use virtqemud::caps::Target;
use virtqemud::caps::arch;
use virtqemud::caps::emulator::{AccelCaps, EmulatorCaps};
use virtqemud::command::{
    CommandError, MonitorFd, NetBackend, QemuCommand, QemuCommandBuilder, ResolvedDisk, Resources,
    SecretObject, assign_aliases,
};
use virtqemud::qmp::commands::{CpuDefinitionInfo, MachineInfo, QemuVersion};
use virtqemud::qmp::name::Name;

const RUNTIME_DIR: &str = "/run/rvirt/qemu/domain-1";
const MONITOR_FD: i32 = 1729;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/command")
}

fn fixture_lines(name: &str) -> Vec<String> {
    let path = data_dir().join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

fn machine(name: &str, alias: &str, cpu_max: u32) -> MachineInfo {
    MachineInfo {
        name: name.into(),
        alias: Some(alias.into()),
        is_default: alias == "pc",
        cpu_max,
        hotpluggable_cpus: true,
        deprecated: false,
        default_cpu_type: Some("qemu64-x86_64-cpu".into()),
        default_ram_id: Some("pc.ram".into()),
        acpi: true,
    }
}

/// QEMU 10.0.2 for x86_64, as probed.
fn emulator() -> EmulatorCaps {
    let mut types: BTreeSet<Name> = fixture_lines("qemu-types.txt")
        .into_iter()
        .map(Name::from)
        .collect();
    // Debian ships QXL in a separate module package (qemu-system-modules-spice) the fixture's
    // QEMU lacked; libvirt's reference outputs assume it.
    types.extend(["qxl", "qxl-vga"].map(Name::from));
    let cpus: Vec<CpuDefinitionInfo> = fixture_lines("qemu-cpus.txt")
        .into_iter()
        .map(|name| CpuDefinitionInfo {
            typename: format!("{name}-x86_64-cpu").into(),
            name: name.into(),
            migration_safe: true,
            is_static: false,
            unavailable_features: Some(Vec::new()),
            alias_of: None,
            deprecated: false,
        })
        .collect();
    let accel = AccelCaps {
        machines: vec![
            machine("pc-i440fx-10.0", "pc", 255),
            machine("pc-q35-10.0", "q35", 4096),
        ],
        cpu_models: cpus,
    };
    EmulatorCaps {
        binary: PathBuf::from("/usr/bin/qemu-system-x86_64"),
        version: QemuVersion {
            major: 10,
            minor: 0,
            micro: 2,
        },
        package: String::new(),
        arch: "x86_64".into(),
        commands: BTreeSet::new(),
        device_types: types.clone(),
        object_types: types,
        tcg: accel.clone(),
        kvm: Some(accel),
    }
}

fn target_with(def: &DomainDef, emulator: EmulatorCaps) -> Target {
    let kvm = def.virt_type == VirtType::Kvm;
    let machine = match def.machine_family() {
        MachineFamily::Q35 => machine("pc-q35-10.0", "q35", 4096),
        _ => machine("pc-i440fx-10.0", "pc", 255),
    };
    Target {
        emulator: Arc::new(emulator),
        arch: arch::by_name("x86_64").expect("x86_64 is known"),
        machine,
        kvm,
    }
}

fn target(def: &DomainDef) -> Target {
    target_with(def, emulator())
}

/// What the driver would have prepared for each golden input.
fn resources_for(name: &str) -> Resources {
    let mut r = Resources::default();
    match name {
        "q35-kvm-network" => {
            r.interfaces.insert(
                0,
                NetBackend::TapFd {
                    fd: 40,
                    ifname: "vnet0".into(),
                },
            );
            r.interfaces.insert(
                1,
                NetBackend::TapFd {
                    fd: 41,
                    ifname: "vnet1".into(),
                },
            );
        }
        "volume-luks" => {
            r.master_key = Some(PathBuf::from(format!("{RUNTIME_DIR}/master-key.aes")));
            r.disks.insert(
                "vda".into(),
                ResolvedDisk {
                    path: PathBuf::from("/var/lib/rvirt/images/pool/root.qcow2"),
                    block: false,
                    format: DiskFormat::Qcow2,
                },
            );
            r.disks.insert(
                "vdc".into(),
                ResolvedDisk {
                    path: PathBuf::from("/dev/vg0/data"),
                    block: true,
                    format: DiskFormat::Raw,
                },
            );
            r.disk_secrets.insert(
                "vdb".into(),
                SecretObject {
                    id: "libvirt-2-format-encryption-secret0".into(),
                    data_base64: "9eao5F8qtkGt+seB1HYivWIxbtwUu6MQtg1zpj/oDtUsPr1q8wBYM91uU0b3xrwH".into(),
                    iv_base64: "/i7PTYQhVAJdxA1K5lsmmA==".into(),
                },
            );
            r.disk_secrets.insert(
                "vdc".into(),
                SecretObject {
                    id: "libvirt-1-format-encryption-secret0".into(),
                    data_base64: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into(),
                    iv_base64: "AAAAAAAAAAAAAAAAAAAAAA==".into(),
                },
            );
        }
        "clock-timers" => r.start_time = Some(1_234_567_890),
        "q35-tcg-devices" => {
            r.disks.insert(
                "vdc".into(),
                ResolvedDisk {
                    path: PathBuf::from("/var/lib/rvirt/images/pool/extra.qcow2"),
                    block: false,
                    format: DiskFormat::Qcow2,
                },
            );
        }
        "spice-qxl" => {
            r.graphics_ports.insert(0, 5930);
        }
        _ => {}
    }
    r
}

fn parse(xml: &str) -> DomainDef {
    DomainDef::parse(xml, ParseFlags::default()).unwrap_or_else(|e| panic!("the input parses: {e}"))
}

fn build(def: &DomainDef, resources: &Resources) -> Result<QemuCommand, CommandError> {
    let target = target(def);
    QemuCommandBuilder::new(
        def,
        &target,
        Path::new(RUNTIME_DIR),
        MonitorFd(MONITOR_FD),
        resources,
    )
    .build()
}

/// The command line as the golden files hold it: the program, then one argument per line.
fn render(command: &QemuCommand) -> String {
    let mut out = String::new();
    for (k, v) in &command.env {
        out.push_str(&format!("{k}={v}\n"));
    }
    out.push_str(&command.program.to_string_lossy());
    out.push('\n');
    for arg in &command.args {
        out.push_str(arg);
        out.push('\n');
    }
    out
}

fn golden_inputs() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir())
        .expect("the data directory")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".xml"))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

#[test]
fn golden_command_lines_match() {
    let update = std::env::var_os("RVIRT_UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    let names = golden_inputs();
    assert!(names.len() >= 8, "the golden inputs are there ({names:?})");
    for name in names {
        let xml = std::fs::read_to_string(data_dir().join(format!("{name}.xml"))).expect("read the input");
        let def = parse(&xml);
        let command = build(&def, &resources_for(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let text = render(&command);
        let golden = data_dir().join(format!("{name}.args"));
        if update {
            std::fs::write(&golden, &text).expect("write the golden file");
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(expected) if expected == text => {}
            Ok(expected) => failures.push(format!(
                "{name}: differs from {}\n--- expected\n{expected}\n--- got\n{text}",
                golden.display()
            )),
            Err(e) => failures.push(format!(
                "{name}: {}: {e} (RVIRT_UPDATE_GOLDEN=1 writes it)",
                golden.display()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn args_of(name: &str) -> Vec<String> {
    let xml = std::fs::read_to_string(data_dir().join(format!("{name}.xml"))).expect("read the input");
    build(&parse(&xml), &resources_for(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .args
}

/// The values of every occurrence of `flag`.
fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

fn json_values(args: &[String], flag: &str) -> Vec<serde_json::Value> {
    values(args, flag)
        .into_iter()
        .map(|v| serde_json::from_str(v).unwrap_or_else(|e| panic!("{flag} {v} is JSON: {e}")))
        .collect()
}

#[test]
fn commas_in_paths_and_names_are_doubled() {
    let args = args_of("pc-comma-paths");
    assert!(values(&args, "-name").contains(&"guest=comma,,guest,debug-threads=on"));
    let chardevs = values(&args, "-chardev");
    assert!(
        chardevs.contains(&"file,id=charserial0,path=/var/log/rvirt/serial,,0.log,append=on"),
        "{chardevs:?}"
    );
    assert!(
        chardevs.contains(&"socket,id=charserial1,path=/run/rvirt/a,,b.sock,server=on,wait=off"),
        "{chardevs:?}"
    );
    // JSON needs no escaping: the path is intact.
    let blockdevs = json_values(&args, "-blockdev");
    assert_eq!(blockdevs[0]["filename"], "/srv/vm,images/disk,1.img");
}

#[test]
fn unix_chardev_without_path_listens_in_the_runtime_dir() {
    let args = args_of("q35-tcg-devices");
    assert!(
        values(&args, "-chardev").contains(
            &format!("socket,id=charserial0,path={RUNTIME_DIR}/serial0.sock,server=on,wait=off").as_str()
        ),
        "{args:?}"
    );
}

#[test]
fn volume_disk_without_resolution_is_unresolved_naming_the_target() {
    let xml = std::fs::read_to_string(data_dir().join("volume-luks.xml")).expect("read");
    let def = parse(&xml);
    let mut resources = resources_for("volume-luks");
    resources.disks.remove("vda");
    match build(&def, &resources) {
        Err(CommandError::Unresolved(m)) => {
            assert!(m.contains("'vda'") && m.contains("volume"), "{m}")
        }
        other => panic!("expected Unresolved, got {other:?}"),
    }
}

#[test]
fn network_interface_without_tap_is_unresolved_naming_the_interface() {
    let xml = std::fs::read_to_string(data_dir().join("q35-kvm-network.xml")).expect("read");
    let def = parse(&xml);
    let mut resources = resources_for("q35-kvm-network");
    resources.interfaces.remove(&1);
    match build(&def, &resources) {
        Err(CommandError::Unresolved(m)) => {
            assert!(
                m.contains("/domain/devices/interface[2]") && m.contains("net1"),
                "{m}"
            )
        }
        other => panic!("expected Unresolved, got {other:?}"),
    }
}

#[test]
fn luks_secret_without_master_key_is_unresolved() {
    let xml = std::fs::read_to_string(data_dir().join("volume-luks.xml")).expect("read");
    let def = parse(&xml);
    let mut resources = resources_for("volume-luks");
    resources.master_key = None;
    assert!(matches!(build(&def, &resources), Err(CommandError::Unresolved(m)) if m.contains("master key")));
}

#[test]
fn luks_secret_is_passed_encrypted_with_the_master_key() {
    let args = args_of("volume-luks");
    let objects = json_values(&args, "-object");
    let secret = objects
        .iter()
        .find(|o| o["id"] == "libvirt-2-format-encryption-secret0")
        .expect("the secret object");
    assert_eq!(secret["keyid"], "masterKey0");
    assert_eq!(secret["format"], "base64");
    assert!(secret.get("file").is_none());
    let formats = json_values(&args, "-blockdev");
    let qcow = formats
        .iter()
        .find(|b| b["node-name"] == "libvirt-2-format")
        .expect("the qcow2 format node");
    assert_eq!(
        qcow["encrypt"]["key-secret"],
        "libvirt-2-format-encryption-secret0"
    );
    let luks = formats
        .iter()
        .find(|b| b["node-name"] == "libvirt-1-format")
        .expect("the luks format node");
    assert_eq!(luks["driver"], "luks");
}

#[test]
fn unknown_cpu_model_is_unsupported() {
    let xml = std::fs::read_to_string(data_dir().join("pc-tcg-basic.xml"))
        .expect("read")
        .replace(">qemu64<", ">NoSuchCpu<");
    match build(&parse(&xml), &Resources::default()) {
        Err(CommandError::Unsupported(m)) => {
            assert!(m.contains("NoSuchCpu") && m.contains("/domain/cpu"), "{m}")
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn device_the_emulator_lacks_is_unsupported_naming_the_element() {
    let xml = std::fs::read_to_string(data_dir().join("pc-tcg-basic.xml")).expect("read");
    let def = parse(&xml);
    let mut caps = emulator();
    caps.device_types.remove("virtio-blk-pci");
    caps.object_types.remove("virtio-blk-pci");
    let target = target_with(&def, caps);
    let resources = Resources::default();
    let result =
        QemuCommandBuilder::new(&def, &target, Path::new(RUNTIME_DIR), MonitorFd(3), &resources).build();
    match result {
        Err(CommandError::Unsupported(m)) => {
            assert!(
                m.contains("/domain/devices/disk[1]") && m.contains("virtio-blk-pci"),
                "{m}"
            )
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn host_passthrough_under_tcg_is_unsupported() {
    let xml = std::fs::read_to_string(data_dir().join("pc-tcg-basic.xml"))
        .expect("read")
        .replace(
            "<cpu mode='custom' match='exact'>\n    <model fallback='forbid'>qemu64</model>\n  </cpu>",
            "<cpu mode='host-passthrough'/>",
        );
    assert!(matches!(
        build(&parse(&xml), &Resources::default()),
        Err(CommandError::Unsupported(m)) if m.contains("host-passthrough")
    ));
}

#[test]
fn host_model_is_max_under_tcg() {
    let args = args_of("q35-tcg-devices");
    assert_eq!(values(&args, "-cpu"), ["max"]);
}

#[test]
fn os_boot_order_becomes_bootindex_of_first_device_of_each_kind() {
    let args = args_of("q35-tcg-devices");
    let devices = json_values(&args, "-device");
    let boot: BTreeMap<String, u64> = devices
        .iter()
        .filter_map(|d| Some((d["id"].as_str()?.to_owned(), d.get("bootindex")?.as_u64()?)))
        .collect();
    // <boot dev='cdrom'/><boot dev='hd'/>: the CD-ROM first, then the first disk.
    assert_eq!(
        boot,
        BTreeMap::from([("sata0-0-1".into(), 1), ("sata0-0-0".into(), 2)])
    );
}

#[test]
fn no_graphics_means_display_none() {
    let args = args_of("pc-tcg-basic");
    assert_eq!(values(&args, "-display"), ["none"]);
    let args = args_of("devices-misc");
    assert!(values(&args, "-display").is_empty());
    assert_eq!(values(&args, "-vnc"), ["127.0.0.1:1,audiodev=audio1"]);
}

#[test]
fn assign_aliases_names_devices_as_libvirt() {
    let xml = std::fs::read_to_string(data_dir().join("q35-tcg-devices.xml")).expect("read");
    let mut def = parse(&xml);
    assign_aliases(&mut def);
    let aliases: Vec<(String, String)> = def
        .devices
        .list
        .iter()
        .filter_map(|d| Some((d.element().to_owned(), d.info()?.alias.clone()?)))
        .collect();
    let has = |element: &str, alias: &str| aliases.iter().any(|(e, a)| e == element && a == alias);
    for (element, alias) in [
        ("disk", "sata0-0-0"),
        ("disk", "sata0-0-1"),
        ("disk", "virtio-disk1"),
        ("controller", "pcie.0"),
        ("controller", "pci.1"),
        ("controller", "usb"),
        ("controller", "ide"),
        ("interface", "net0"),
        ("serial", "serial0"),
        ("console", "serial0"),
        ("input", "input0"),
        ("video", "video0"),
        ("rng", "rng0"),
        ("watchdog", "watchdog0"),
        ("memballoon", "balloon0"),
    ] {
        assert!(has(element, alias), "{element} {alias} in {aliases:?}");
    }
    // Idempotent: a second pass changes nothing.
    let before = def.clone();
    assign_aliases(&mut def);
    assert_eq!(before, def);
}

// ---- real QEMU ------------------------------------------------------------------------------

const QEMU: &str = "qemu-system-x86_64";

fn qemu_available() -> bool {
    std::process::Command::new(QEMU)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `def` (and the volumes of `resources`) with every host path moved into `dir`, keeping file
/// names (commas included): images created with `qemu-img`, firmware as blank flash images,
/// graphics on a socket there.
fn localize(def: &mut DomainDef, resources: &mut Resources, dir: &Path) {
    let local = |path: &str| -> String {
        let name = Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        dir.join(name).to_string_lossy().into_owned()
    };
    let image = |path: &str, format: DiskFormat| {
        let status = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", format.to_string().as_str(), path, "1M"])
            .status()
            .expect("run qemu-img");
        assert!(status.success(), "qemu-img create {path}");
    };
    let flash = |path: &str| {
        std::fs::write(path, vec![0u8; 2 * 1024 * 1024]).expect("write a blank flash image");
    };
    if let Some(loader) = &mut def.os.loader
        && let Some(path) = &mut loader.path
    {
        *path = local(path);
        flash(path);
    }
    if let Some(nvram) = &mut def.os.nvram
        && let Some(path) = &mut nvram.path
    {
        *path = local(path);
        flash(path);
        nvram.template = None;
    }
    for device in &mut def.devices.list {
        match device {
            Device::Disk(disk) => {
                let format = disk.driver.format.unwrap_or(DiskFormat::Raw);
                match &mut disk.source {
                    None => {}
                    Some(DiskSource::Volume { .. }) => {
                        let resolved = resources
                            .disks
                            .get_mut(&disk.target)
                            .expect("the golden input's volume is resolved");
                        resolved.path = PathBuf::from(local(&resolved.path.to_string_lossy()));
                        resolved.block = false;
                        image(&resolved.path.to_string_lossy(), resolved.format);
                    }
                    Some(source) => {
                        let path = match &*source {
                            DiskSource::File(p) | DiskSource::Block(p) => local(p),
                            DiskSource::Volume { .. } => unreachable!("handled above"),
                        };
                        image(&path, format);
                        *source = DiskSource::File(path);
                        disk.disk_type = rvirt_conf::domain::DiskType::File;
                    }
                }
            }
            Device::Serial(s) | Device::Console(s) => match &mut s.source {
                ChrSource::File { path, .. } => *path = local(path),
                ChrSource::Unix { path: Some(p), .. } => *p = local(p),
                _ => {}
            },
            Device::Graphics(g) => g.listen = Some(Listen::Socket(Some(local("vnc.sock")))),
            Device::Interface(i) => {
                assert_eq!(
                    i.source,
                    InterfaceSource::User,
                    "real-QEMU inputs use user networking"
                )
            }
            _ => {}
        }
    }
}

async fn run_real_qemu(name: &str) {
    use std::os::fd::BorrowedFd;
    use virtqemud::qmp::QmpOptions;
    use virtqemud::qmp::launch::QmpSocket;

    let dir = tempfile::tempdir().expect("temporary directory");
    let xml = std::fs::read_to_string(data_dir().join(format!("{name}.xml"))).expect("read the input");
    let mut def = parse(&xml);
    let mut resources = resources_for(name);
    localize(&mut def, &mut resources, dir.path());
    let mut socket = QmpSocket::bind(dir.path().join("qmp.sock")).expect("bind the monitor socket");
    let fd = socket.listener_fd().expect("the listening descriptor");
    let target = target(&def);
    let command = QemuCommandBuilder::new(&def, &target, dir.path(), MonitorFd(fd), &resources)
        .build()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    // QEMU inherits the listening socket under the same number.
    // SAFETY: `fd` is the listener `socket` owns and keeps open until `release` below.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::fcntl::fcntl(
        borrowed,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .expect("let QEMU inherit the monitor socket");
    let log = dir.path().join("qemu.log");
    let mut child = tokio::process::Command::new(QEMU)
        .args(&command.args)
        .envs(command.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("the log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("start QEMU");
    socket.release();
    let connected =
        tokio::time::timeout(Duration::from_secs(30), socket.connect(QmpOptions::default())).await;
    let (client, _events) = match connected {
        Ok(Ok(c)) => c,
        other => {
            let _ = child.wait().await;
            panic!(
                "{name}: QEMU did not serve its monitor ({other:?}); it said: {}\nargs: {:?}",
                std::fs::read_to_string(&log).unwrap_or_default(),
                command.args
            );
        }
    };
    let status = client.query_status().await.expect("query-status");
    assert!(!status.running, "{name}: QEMU started with -S is not running yet");
    let _ = client.quit().await;
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("QEMU exits after quit")
        .expect("wait for QEMU");
    assert!(
        exit.success(),
        "{name}: QEMU exited with {exit}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[tokio::test]
async fn real_qemu_accepts_golden_command_lines() {
    if !qemu_available() {
        eprintln!("skipped: {QEMU} is not installed");
        return;
    }
    for name in [
        "pc-tcg-basic",
        "q35-tcg-devices",
        "pc-comma-paths",
        "devices-misc",
    ] {
        run_real_qemu(name).await;
    }
}

// ---- conformance with libvirt's reference outputs -------------------------------------------

/// One libvirt `*.args` file: the arguments after the binary, unquoted.
fn libvirt_args(text: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut started = false;
    for line in text.lines() {
        let line = line.trim_end().trim_end_matches('\\').trim_end();
        if !started {
            started = line.starts_with('/');
            continue;
        }
        let (flag, value) = match line.split_once(' ') {
            Some((f, v)) => (f, Some(v)),
            None => (line, None),
        };
        args.push(flag.to_owned());
        if let Some(v) = value {
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v);
            args.push(v.replace("'\\''", "'"));
        }
    }
    args
}

/// The parts of a command line that must agree with libvirt, each as one comparable line.
fn semantic(args: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let value = args.get(i + 1).map(String::as_str).unwrap_or("");
        let takes_value = !matches!(
            flag,
            "-S" | "-no-user-config" | "-nodefaults" | "-no-shutdown" | "-no-reboot"
        );
        match flag {
            "-device" | "-blockdev" | "-netdev" | "-object" | "-audiodev" => {
                match serde_json::from_str::<serde_json::Value>(value) {
                    // Whole objects: driver, id, bus, addr and every other property.
                    Ok(v) => out.insert(format!("{flag} {}", canonical_json(&v))),
                    Err(_) => out.insert(format!("{flag} {value}")),
                };
            }
            "-machine" => {
                // The machine type itself is compared by family (see KNOWN_DIFFERENCES).
                let (name, rest) = value.split_once(',').unwrap_or((value, ""));
                let family = if name.contains("q35") { "q35" } else { "pc" };
                out.insert(format!("-machine {family},{rest}"));
            }
            "-chardev" => {
                out.insert(format!("-chardev {value}"));
            }
            _ if takes_value => {
                out.insert(format!("{flag} {value}"));
            }
            _ => {
                out.insert(flag.to_owned());
            }
        }
        i += if takes_value { 2 } else { 1 };
    }
    out
}

/// JSON with sorted keys (what is compared is the set of properties, not their order).
fn canonical_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{k:?}:{}", canonical_json(&map[k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        other => other.to_string(),
    }
}

/// Differences between rvirt's and libvirt's command lines that are deliberate, one pattern
/// each: a line of libvirt's (prefix `-`) or of rvirt's (prefix `+`) containing the text is
/// not counted.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    // libvirt hands QEMU sockets it bound itself (`fd=1729`) and files it opened through
    // `-add-fd`/`/dev/fdset`; rvirt gives the paths (a unix chardev in bind mode listens
    // itself, a file chardev opens its file).
    ("-", "-chardev socket,id=charserial1,fd=1729,server=on,wait=off"),
    (
        "+",
        "-chardev socket,id=charserial1,path=/tmp/serial-server.sock,server=on,wait=off",
    ),
    ("-", "-add-fd "),
    ("-", "-chardev file,id=charserial0,path=/dev/fdset/0,append=on"),
    ("+", "-chardev file,id=charserial0,path=/tmp/serial.log"),
];

fn known(sign: char, line: &str) -> bool {
    KNOWN_DIFFERENCES
        .iter()
        .any(|(s, pattern)| s.starts_with(sign) && line.contains(pattern))
}

/// What the libvirt test harness gives each domain: its fake master key, tap descriptors,
/// resolved volumes, its mocked clock and the first VNC/SPICE ports.
fn libvirt_test_resources(def: &DomainDef) -> Resources {
    let mut r = Resources {
        master_key: Some(PathBuf::from(format!(
            "/var/lib/libvirt/qemu/domain--1-{}/master-key.aes",
            def.name.chars().take(20).collect::<String>()
        ))),
        start_time: Some(1_234_567_890),
        ..Resources::default()
    };
    for (i, net) in def.devices.interfaces().enumerate() {
        if net.source != InterfaceSource::User {
            r.interfaces.insert(
                i,
                NetBackend::TapFd {
                    fd: 1729 + i as i32,
                    ifname: format!("vnet{i}"),
                },
            );
        }
    }
    // libvirt's test mocks make /dev/cdrom a CD-ROM drive.
    for disk in def.devices.disks() {
        if disk.source == Some(DiskSource::Block("/dev/cdrom".into())) {
            r.host_cdroms.insert(disk.target.clone());
        }
    }
    for (i, g) in def.devices.graphics().enumerate() {
        if g.autoport {
            r.graphics_ports.insert(i, 5900 + i as u32);
        }
    }
    r
}

#[test]
fn command_lines_agree_with_libvirts_reference_outputs() {
    let mut compared = 0usize;
    let mut matched = Vec::new();
    let mut report = Vec::new();
    let mut refused = Vec::new();
    for input in rvirt_testdata::files("tests/qemuxmlconfdata", ".xml") {
        let file = input
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if file.contains(".x86_64-") || file.contains("-latest") {
            continue;
        }
        let stem = file.trim_end_matches(".xml");
        let expected = input.with_file_name(format!("{stem}.x86_64-latest.args"));
        let Ok(expected_text) = std::fs::read_to_string(&expected) else {
            continue;
        };
        let xml = std::fs::read_to_string(&input).expect("read the input");
        let Ok(def) = DomainDef::parse(&xml, ParseFlags::default()) else {
            continue;
        };
        compared += 1;
        let resources = libvirt_test_resources(&def);
        let built = match build(&def, &resources) {
            Ok(c) => c,
            Err(e) => {
                refused.push(format!("{stem}: {e}"));
                continue;
            }
        };
        let ours = semantic(&built.args);
        let theirs = semantic(&libvirt_args(&expected_text));
        for l in theirs.difference(&ours).filter(|l| known('-', l)) {
            println!("{stem}: known difference: libvirt has {l}");
        }
        for l in ours.difference(&theirs).filter(|l| known('+', l)) {
            println!("{stem}: known difference: rvirt has {l}");
        }
        let missing: Vec<&String> = theirs.difference(&ours).filter(|l| !known('-', l)).collect();
        let extra: Vec<&String> = ours.difference(&theirs).filter(|l| !known('+', l)).collect();
        if missing.is_empty() && extra.is_empty() {
            matched.push(stem.to_owned());
        } else {
            let mut text = format!("{stem}:");
            for l in missing {
                text.push_str(&format!("\n  - {l}"));
            }
            for l in extra {
                text.push_str(&format!("\n  + {l}"));
            }
            report.push(text);
        }
    }
    println!(
        "conformance: {} of {compared} parseable libvirt inputs give the same command line \
         (modulo the known differences); {} refused",
        matched.len(),
        refused.len()
    );
    for r in &refused {
        println!("refused: {r}");
    }
    for r in &report {
        println!("{r}");
    }
    assert!(
        compared >= 20,
        "libvirt's inputs were found and parsed ({compared})"
    );
    assert!(
        report.is_empty() && refused.is_empty(),
        "{} inputs differ from libvirt:\n{}\n{}",
        report.len() + refused.len(),
        refused.join("\n"),
        report.join("\n")
    );
}

#[test]
fn buslogic_scsi_controller_is_unsupported_naming_the_element() {
    let xml = std::fs::read_to_string(data_dir().join("spice-qxl.xml"))
        .expect("read")
        .replace("model='lsilogic'", "model='buslogic'");
    let mut resources = Resources::default();
    resources.graphics_ports.insert(0, 5930);
    match build(&parse(&xml), &resources) {
        Err(CommandError::Unsupported(m)) => {
            assert!(
                m.contains("/domain/devices/controller[") && m.contains("buslogic"),
                "{m}"
            )
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn spice_autoport_without_a_chosen_port_is_unresolved() {
    let xml = std::fs::read_to_string(data_dir().join("spice-qxl.xml")).expect("read");
    match build(&parse(&xml), &Resources::default()) {
        Err(CommandError::Unresolved(m)) => assert!(m.contains("/domain/devices/graphics[1]"), "{m}"),
        other => panic!("expected Unresolved, got {other:?}"),
    }
}

#[test]
fn kernel_paths_are_passed_whole() {
    // QEMU stores -kernel/-initrd/-append as machine properties without option parsing.
    let args = args_of("clock-timers");
    assert_eq!(values(&args, "-kernel"), ["/var/lib/rvirt/boot/vmlinuz,1"]);
    assert_eq!(values(&args, "-append"), ["console=ttyS0,115200 root=/dev/vda"]);
}
