//! The tiny test guest (`rvirt_e2e::guest`) booted by raw `qemu-system-x86_64`, no rvirt
//! daemon: it prints its banner on COM1, echoes what it reads, powers off on `p`, resets on
//! `r`, and ignores ACPI power-button presses (also after `h`, when it halts for good).
//!
//! The test listens on two Unix sockets and QEMU connects to both as a client (the serial
//! chardev and the QMP monitor), so nothing waits for a socket file to appear. Every wait is on
//! data with a deadline. Without `qemu-system-x86_64` the tests print why and pass; the KVM
//! test does the same when `/dev/kvm` does not open.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rvirt_e2e::guest::{self, HALT, POWER_OFF, RESET, SerialReader};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};

const QEMU: &str = "qemu-system-x86_64";
/// From exec to the banner under TCG (~0.1 s when idle): generous for a loaded machine.
const TCG_BOOT: Duration = Duration::from_secs(60);
/// Under KVM here SeaBIOS's port I/O makes booting take ~4 s.
const KVM_BOOT: Duration = Duration::from_secs(120);
/// For QMP answers, events and echoes once the guest runs.
const REPLY: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq)]
enum Machine {
    /// i440FX; the disk on virtio-blk.
    Pc,
    /// Q35; the disk on the built-in AHCI (SATA) controller.
    Q35,
}

#[derive(Clone, Copy, PartialEq)]
enum Accel {
    Tcg,
    Kvm,
}

/// The QEMU binary on `PATH`, or `None` (with the reason printed) when there is none.
fn qemu_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(QEMU))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!("skipped: {QEMU} is not on PATH");
    }
    found
}

/// Whether `/dev/kvm` opens read-write (printing why not).
fn kvm_usable() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipped: /dev/kvm does not open: {e}");
            false
        }
    }
}

/// A QMP connection: commands and their answers, events kept in arrival order.
struct Qmp {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    events: Vec<Value>,
}

impl Qmp {
    /// Reads the greeting and negotiates capabilities.
    async fn negotiate(stream: UnixStream) -> Qmp {
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            lines: BufReader::new(read).lines(),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.next().await;
        assert!(greeting.get("QMP").is_some(), "not a QMP greeting: {greeting}");
        qmp.execute("qmp_capabilities", json!({})).await;
        qmp
    }

    /// The next message, failing the test after [`REPLY`].
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(REPLY, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("QMP said nothing within {REPLY:?}"))
            .expect("read from QMP")
            .expect("QMP closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent bad JSON ({e}): {line}"))
    }

    /// Runs `command` and returns its `return` value; events read meanwhile are kept.
    async fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let mut message = json!({ "execute": command, "arguments": arguments }).to_string();
        message.push('\n');
        self.writer
            .write_all(message.as_bytes())
            .await
            .expect("write to QMP");
        loop {
            let reply = self.next().await;
            if reply.get("event").is_some() {
                self.events.push(reply);
            } else if let Some(value) = reply.get("return") {
                return value.clone();
            } else {
                panic!("{command} failed: {reply}");
            }
        }
    }

    /// Waits for event `name` (skipping others), returning it.
    async fn event(&mut self, name: &str) -> Value {
        loop {
            if let Some(at) = self.events.iter().position(|e| e["event"] == name) {
                let rest = self.events.split_off(at + 1);
                let event = self.events.pop().expect("the event found");
                self.events = rest;
                return event;
            }
            let message = self.next().await;
            assert!(
                message.get("event").is_some(),
                "unexpected QMP message: {message}"
            );
            self.events.push(message);
        }
    }
}

/// A QEMU running the test guest; killed when dropped.
struct Vm {
    _dir: tempfile::TempDir,
    child: Child,
    log: PathBuf,
    serial: SerialReader<UnixStream>,
    qmp: Qmp,
    banner: String,
}

impl Vm {
    /// Starts QEMU on a fresh guest disk and connects to its serial port and QMP monitor.
    async fn start(qemu: &Path, machine: Machine, accel: Accel) -> Vm {
        let dir = tempfile::Builder::new()
            .prefix("rvirt-guest-")
            .tempdir()
            .expect("temporary directory");
        let banner = "image".to_owned();
        let disk = dir.path().join("disk.img");
        guest::write_boot_disk(&disk, &banner).expect("write the guest disk");
        let serial_path = dir.path().join("serial.sock");
        let qmp_path = dir.path().join("qmp.sock");
        let serial_listener = UnixListener::bind(&serial_path).expect("bind the serial socket");
        let qmp_listener = UnixListener::bind(&qmp_path).expect("bind the QMP socket");
        let log = dir.path().join("qemu.log");
        let log_file = std::fs::File::create(&log).expect("QEMU's log file");

        let mut command = Command::new(qemu);
        command
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-shutdown",
            ])
            .args(["-m", "32"])
            .arg("-machine")
            .arg(match machine {
                Machine::Pc => "pc",
                Machine::Q35 => "q35",
            })
            .arg("-accel")
            .arg(match accel {
                Accel::Tcg => "tcg",
                Accel::Kvm => "kvm",
            })
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=d0",
                disk.display().to_string().replace(',', ",,")
            ))
            .arg("-device")
            .arg(match machine {
                Machine::Pc => "virtio-blk-pci,drive=d0",
                Machine::Q35 => "ide-hd,drive=d0,bus=ide.0",
            })
            .arg("-chardev")
            .arg(format!(
                "socket,id=s0,path={}",
                serial_path.display().to_string().replace(',', ",,")
            ))
            .args(["-serial", "chardev:s0"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=m0,path={}",
                qmp_path.display().to_string().replace(',', ",,")
            ))
            .args(["-mon", "chardev=m0,mode=control"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        if accel == Accel::Kvm {
            // `-cpu host` does not work on this machine's nested KVM.
            command.args(["-cpu", "qemu64"]);
        }
        let mut child = command.spawn().expect("start QEMU");
        let accept = |listener: UnixListener, what: &'static str| async move {
            match tokio::time::timeout(REPLY, listener.accept()).await {
                Ok(Ok((stream, _))) => Ok(stream),
                Ok(Err(e)) => Err(format!("accept on the {what} socket: {e}")),
                Err(_) => Err(format!("QEMU did not connect to the {what} socket")),
            }
        };
        let connected = async {
            let qmp = accept(qmp_listener, "QMP").await?;
            let serial = accept(serial_listener, "serial").await?;
            Ok::<_, String>((qmp, serial))
        };
        let (qmp, serial) = tokio::select! {
            connected = connected => connected.unwrap_or_else(|e| {
                panic!("{e}; QEMU's log:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
            }),
            status = child.wait() => panic!(
                "QEMU exited at once ({status:?}); its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        };
        let qmp = Qmp::negotiate(qmp).await;
        Vm {
            _dir: dir,
            child,
            log,
            serial: SerialReader::new(serial),
            qmp,
            banner,
        }
    }

    /// Reads the serial port until `needle` arrives; fails the test with QEMU's log if it does
    /// not within `timeout`.
    async fn expect_serial(&mut self, needle: &str, timeout: Duration) -> String {
        match self.serial.expect(needle.as_bytes(), timeout).await {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => panic!(
                "serial port: {e}; QEMU's log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            ),
        }
    }

    /// Waits for the guest's banner line.
    async fn expect_banner(&mut self, timeout: Duration) {
        let line = guest::banner_line(&self.banner);
        self.expect_serial(&line, timeout).await;
    }

    /// Sends one byte to the guest and waits for its echo.
    async fn send(&mut self, byte: u8) {
        self.serial
            .get_mut()
            .write_all(&[byte])
            .await
            .expect("write to the serial port");
        self.expect_serial(&char::from(byte).to_string(), REPLY).await;
    }

    /// QEMU's run state (`query-status`).
    async fn status(&mut self) -> String {
        let status = self.qmp.execute("query-status", json!({})).await;
        status["status"].as_str().unwrap_or_default().to_owned()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn booted(machine: Machine) -> Option<Vm> {
    let qemu = qemu_binary()?;
    let mut vm = Vm::start(&qemu, machine, Accel::Tcg).await;
    vm.expect_banner(TCG_BOOT).await;
    Some(vm)
}

#[tokio::test]
async fn guest_prints_its_banner_on_com1_under_tcg_on_q35() {
    let Some(qemu) = qemu_binary() else { return };
    let mut vm = Vm::start(&qemu, Machine::Q35, Accel::Tcg).await;
    vm.expect_banner(TCG_BOOT).await;
}

#[tokio::test]
async fn guest_prints_its_banner_on_com1_under_tcg_on_pc() {
    let Some(qemu) = qemu_binary() else { return };
    let mut vm = Vm::start(&qemu, Machine::Pc, Accel::Tcg).await;
    vm.expect_banner(TCG_BOOT).await;
}

#[tokio::test]
async fn guest_prints_its_banner_on_com1_under_kvm() {
    let Some(qemu) = qemu_binary() else { return };
    if !kvm_usable() {
        return;
    }
    let mut vm = Vm::start(&qemu, Machine::Pc, Accel::Kvm).await;
    vm.expect_banner(KVM_BOOT).await;
}

#[tokio::test]
async fn guest_echoes_every_byte_it_reads() {
    let Some(mut vm) = booted(Machine::Q35).await else {
        return;
    };
    vm.serial
        .get_mut()
        .write_all(b"xyz")
        .await
        .expect("write to the serial port");
    vm.expect_serial("xyz", REPLY).await;
}

#[tokio::test]
async fn guest_powers_off_on_p_with_a_guest_shutdown_on_q35() {
    let Some(mut vm) = booted(Machine::Q35).await else {
        return;
    };
    vm.send(POWER_OFF).await;
    let event = vm.qmp.event("SHUTDOWN").await;
    assert_eq!(event["data"]["guest"], true, "{event}");
    assert_eq!(event["data"]["reason"], "guest-shutdown", "{event}");
}

#[tokio::test]
async fn guest_powers_off_on_p_with_a_guest_shutdown_on_pc() {
    let Some(mut vm) = booted(Machine::Pc).await else {
        return;
    };
    vm.send(POWER_OFF).await;
    let event = vm.qmp.event("SHUTDOWN").await;
    assert_eq!(event["data"]["guest"], true, "{event}");
    assert_eq!(event["data"]["reason"], "guest-shutdown", "{event}");
}

#[tokio::test]
async fn guest_resets_on_r_with_a_guest_reset_and_boots_again_on_q35() {
    let Some(mut vm) = booted(Machine::Q35).await else {
        return;
    };
    vm.send(RESET).await;
    let event = vm.qmp.event("RESET").await;
    assert_eq!(event["data"]["guest"], true, "{event}");
    assert_eq!(event["data"]["reason"], "guest-reset", "{event}");
    vm.expect_banner(TCG_BOOT).await;
}

#[tokio::test]
async fn guest_resets_on_r_with_a_guest_reset_and_boots_again_on_pc() {
    let Some(mut vm) = booted(Machine::Pc).await else {
        return;
    };
    vm.send(RESET).await;
    let event = vm.qmp.event("RESET").await;
    assert_eq!(event["data"]["guest"], true, "{event}");
    vm.expect_banner(TCG_BOOT).await;
}

#[tokio::test]
async fn guest_ignores_the_acpi_power_button_and_keeps_echoing() {
    let Some(mut vm) = booted(Machine::Q35).await else {
        return;
    };
    vm.qmp.execute("system_powerdown", json!({})).await;
    vm.qmp.event("POWERDOWN").await;
    // Still polling COM1 after the button press: it echoes, and QEMU has not shut down.
    vm.send(b'x').await;
    assert_eq!(vm.status().await, "running");
    assert!(
        !vm.qmp.events.iter().any(|e| e["event"] == "SHUTDOWN"),
        "{:?}",
        vm.qmp.events
    );
}

#[tokio::test]
async fn halted_guest_ignores_the_acpi_power_button_and_stays_running() {
    let Some(mut vm) = booted(Machine::Pc).await else {
        return;
    };
    vm.send(HALT).await;
    vm.qmp.execute("system_powerdown", json!({})).await;
    vm.qmp.event("POWERDOWN").await;
    assert_eq!(vm.status().await, "running");
    assert!(
        !vm.qmp.events.iter().any(|e| e["event"] == "SHUTDOWN"),
        "{:?}",
        vm.qmp.events
    );
}
