//! Post-parse: the defaults libvirt fills after reading a domain, then its validation rules.
//!
//! The order follows libvirt's `virDomainDefPostParse` with the QEMU driver's callbacks
//! (`qemu_postparse.c`): the machine's implicit devices (PS/2 input, USB, SATA on q35, the PCI
//! root, a balloon, q35's iTCO watchdog) and default CPU come first, then each device's
//! defaults, then the domain-wide rules and the devices libvirt adds for compatibility (a
//! serial port behind a `<console>`, disk controllers for drive addresses, a video card for
//! `<graphics>`).

use std::collections::{HashMap, HashSet};

use super::address;
use super::machine::{self, MachineFamily, QemuDefaults};
use super::model::*;
use super::parse::INDEX_UNSET;
use crate::xml::{XmlError, XmlErrorKind};

fn invalid(path: impl Into<String>, message: impl Into<String>) -> XmlError {
    XmlError::invalid(path, message)
}

/// Every post-parse step, in libvirt's order.
pub(crate) fn post_parse(def: &mut DomainDef, defaults: &QemuDefaults) -> Result<(), XmlError> {
    if def.devices.emulator.is_none() {
        def.devices.emulator = defaults.emulator.clone();
    }
    if def.os.arch.is_none() {
        def.os.arch = Some(defaults.arch.clone());
    }
    if def.os.machine.is_none() {
        def.os.machine = Some(defaults.machine.clone());
    }
    assign_controller_indexes(def);
    // Input buses first, so that an explicit `<input type='mouse'/>` is the implicit PS/2 one.
    input_bus_defaults(def);
    machine_defaults(def, defaults)?;
    device_defaults(def, defaults)?;
    memory_defaults(def)?;
    if let Some(loader) = &mut def.os.loader
        && loader.path.is_some()
        && loader.kind.is_none()
    {
        loader.kind = Some(LoaderType::Rom);
    }
    if let Some(dir) = &defaults.nvram_dir
        && let Some(loader) = &def.os.loader
        && loader.kind == Some(LoaderType::Pflash)
        && loader.readonly == Some(true)
        && def.os.nvram.as_ref().is_none_or(|n| n.path.is_none())
    {
        let path = machine::default_nvram_path(dir, &def.name);
        match &mut def.os.nvram {
            Some(nvram) => nvram.path = Some(path),
            None => {
                def.os.nvram = Some(Nvram {
                    path: Some(path),
                    template: None,
                })
            }
        }
    }
    reject_duplicate_controllers(def)?;
    boot_order_defaults(def)?;
    check_timers(def)?;
    implicit_devices(def, defaults)?;
    // Devices added just above get their defaults too (every step is idempotent).
    device_defaults(def, defaults)?;
    video_primary(def);
    graphics_defaults(def);
    if let Some(cpu) = &def.cpu
        && cpu.mode == CpuMode::Custom
        && cpu.model.as_ref().is_none_or(|m| m.name.is_none())
        && cpu.check.is_some()
    {
        return Err(invalid(
            "/domain/cpu/@check",
            "attribute 'check' is specified for a CPU without a model",
        ));
    }
    Ok(())
}

/// The machine family of a parsed definition.
pub(crate) fn family(def: &DomainDef) -> MachineFamily {
    MachineFamily::of(
        def.os.arch.as_deref().unwrap_or(""),
        def.os.machine.as_deref().unwrap_or(""),
    )
}

fn is_x86(def: &DomainDef) -> bool {
    def.os.arch.as_deref().is_some_and(machine::is_x86)
}

/// Controllers without `index` get the lowest index unused by their type.
fn assign_controller_indexes(def: &mut DomainDef) {
    let mut used: HashMap<ControllerType, HashSet<u32>> = HashMap::new();
    for c in def.devices.controllers() {
        if c.index != INDEX_UNSET {
            used.entry(c.kind()).or_default().insert(c.index);
        }
    }
    for c in def.devices.controllers_mut() {
        if c.index == INDEX_UNSET {
            let set = used.entry(c.kind()).or_default();
            let index = (0..).find(|i| !set.contains(i)).unwrap_or(0);
            set.insert(index);
            c.index = index;
        }
    }
}

fn has_input(def: &DomainDef, kind: InputType, bus: InputBus) -> bool {
    def.devices
        .inputs()
        .any(|i| i.input_type == kind && i.bus == Some(bus))
}

fn maybe_add_input(def: &mut DomainDef, kind: InputType, bus: InputBus) {
    if !has_input(def, kind, bus) {
        def.devices.insert(Device::Input(Input {
            input_type: kind,
            bus: Some(bus),
            info: DeviceInfo::default(),
        }));
    }
}

/// The QEMU driver's domain callback: machine type, implicit devices, default CPU.
fn machine_defaults(def: &mut DomainDef, defaults: &QemuDefaults) -> Result<(), XmlError> {
    let family = family(def);
    if family.is_pc() {
        if machine::has_ps2(family) {
            maybe_add_input(def, InputType::Mouse, InputBus::Ps2);
            maybe_add_input(def, InputType::Keyboard, InputBus::Ps2);
        }
        if def.devices.controller(ControllerType::Usb, 0).is_none()
            && let Some(model) = machine::default_usb_model(family, defaults)
        {
            def.devices
                .insert_controller(Controller::new(ControllerModel::Usb(Some(model)), 0));
        }
        if family == MachineFamily::Q35 && def.devices.controller(ControllerType::Sata, 0).is_none() {
            def.devices
                .insert_controller(Controller::new(ControllerModel::Sata, 0));
        }
        if let Some(root) = machine::pci_root_model(family) {
            let existing = def
                .devices
                .controllers_mut()
                .find(|c| c.kind() == ControllerType::Pci && c.index == 0);
            match existing {
                Some(c) => match &mut c.model {
                    ControllerModel::Pci(m @ None) => *m = Some(root),
                    ControllerModel::Pci(Some(m)) if *m == root => {}
                    ControllerModel::Pci(Some(m)) => {
                        return Err(invalid(
                            "/domain/devices/controller",
                            format!(
                                "the PCI controller with index='0' must be model='{root}' for machine type '{}', but model='{m}' was found instead",
                                def.os.machine.as_deref().unwrap_or("")
                            ),
                        ));
                    }
                    _ => {}
                },
                None => def
                    .devices
                    .insert_controller(Controller::new(ControllerModel::Pci(Some(root)), 0)),
            }
        }
        if def.devices.memballoon().is_none() {
            def.devices.insert(Device::Memballoon(Memballoon {
                model: MemballoonModel::Virtio,
                stats_period: None,
                info: DeviceInfo::default(),
            }));
        }
        if family == MachineFamily::Q35 && !def.devices.watchdogs().any(|w| w.model == WatchdogModel::Itco) {
            let action = def
                .devices
                .watchdogs()
                .next()
                .map_or(WatchdogAction::Reset, |w| w.action);
            def.devices.insert(Device::Watchdog(Watchdog {
                model: WatchdogModel::Itco,
                action,
                info: DeviceInfo::default(),
            }));
        }
    }
    // An audio backend: SPICE's when there is SPICE graphics, else none.
    if def.devices.audios().next().is_none() {
        let audio_type = if def
            .devices
            .graphics()
            .any(|g| g.graphics_type == GraphicsType::Spice)
        {
            AudioType::Spice
        } else {
            AudioType::None
        };
        def.devices.insert(Device::Audio(Audio { id: 1, audio_type }));
    }
    // The default CPU model, as QEMU reports it for the machine type.
    let needs_model = match &def.cpu {
        None => true,
        Some(cpu) => cpu.mode == CpuMode::Custom && cpu.model.as_ref().is_none_or(|m| m.name.is_none()),
    };
    if needs_model
        && is_x86(def)
        && let Some(model) = &defaults.cpu_model
    {
        def.cpu = Some(Cpu {
            mode: CpuMode::Custom,
            match_: Some(CpuMatch::Exact),
            check: Some(CpuCheck::None),
            migratable: None,
            model: Some(CpuModel {
                name: Some(model.clone()),
                fallback: Some(CpuFallback::Forbid),
            }),
        });
    }
    if let Some(cpu) = &mut def.cpu {
        if cpu.mode == CpuMode::HostPassthrough && cpu.migratable.is_none() && defaults.cpu_migratable {
            cpu.migratable = Some(true);
        }
        let has_model = cpu.model.as_ref().is_some_and(|m| m.name.is_some());
        if cpu.check.is_none() {
            cpu.check = match cpu.mode {
                CpuMode::HostPassthrough => Some(CpuCheck::None),
                CpuMode::HostModel => Some(CpuCheck::Partial),
                CpuMode::Custom if !has_model => None,
                CpuMode::Custom if def.virt_type == VirtType::Qemu => Some(CpuCheck::None),
                CpuMode::Custom => Some(CpuCheck::Partial),
            };
        }
        if cpu.mode == CpuMode::Custom
            && let Some(model) = &mut cpu.model
            && model.name.is_some()
            && model.fallback.is_none()
        {
            model.fallback = Some(CpuFallback::Allow);
        }
    }
    Ok(())
}

/// The bus a disk target name implies (`vda` → virtio), as libvirt infers it.
fn bus_from_target(target: &str) -> Result<DiskBus, &'static str> {
    if target.starts_with("hd") {
        Ok(DiskBus::Ide)
    } else if target.starts_with("sd") {
        Ok(DiskBus::Scsi)
    } else if target.starts_with("vd") {
        Ok(DiskBus::Virtio)
    } else if target.starts_with("xvd") {
        Err("xen")
    } else if target.starts_with("ubd") {
        Err("uml")
    } else if target.starts_with("nvme") {
        Err("nvme")
    } else {
        Ok(DiskBus::Ide)
    }
}

/// How many devices of each element name there are.
fn element_totals(def: &DomainDef) -> HashMap<&'static str, usize> {
    let mut totals = HashMap::new();
    for device in &def.devices.list {
        *totals.entry(device.element()).or_insert(0) += 1;
    }
    totals
}

/// The XPath-like location of the `n`th (1-based) device named `element`, with an index only
/// when there are several, as in parse errors.
fn device_path(totals: &HashMap<&'static str, usize>, element: &str, n: usize) -> String {
    if totals.get(element).copied().unwrap_or(0) > 1 {
        format!("/domain/devices/{element}[{n}]")
    } else {
        format!("/domain/devices/{element}")
    }
}

/// Each device's own defaults (QEMU's device callback, then libvirt's common one).
fn device_defaults(def: &mut DomainDef, defaults: &QemuDefaults) -> Result<(), XmlError> {
    let family = family(def);
    let x86 = is_x86(def);
    let arch = def.os.arch.clone().unwrap_or_default();
    let mut serial_max: Option<u32> = None;
    let mut console_max: Option<u32> = None;
    for c in def.devices.serials() {
        serial_max = serial_max.max(c.port);
    }
    for c in def.devices.consoles() {
        console_max = console_max.max(c.port);
    }
    let mut disk_index = 0usize;
    let totals = element_totals(def);
    for device in &mut def.devices.list {
        match device {
            Device::Interface(net) => {
                if net.model.is_none() {
                    net.model = machine::default_net_model(&arch);
                }
            }
            Device::Disk(disk) => {
                disk_index += 1;
                if disk.driver.name.is_none() {
                    disk.driver.name = Some("qemu".into());
                }
                if disk.driver.format.is_none() && disk.disk_type != DiskType::Volume {
                    disk.driver.format = Some(DiskFormat::Raw);
                }
                if disk.device == DiskDevice::Cdrom {
                    disk.readonly = true;
                }
                if disk.bus.is_none() {
                    match bus_from_target(&disk.target) {
                        Ok(bus) => disk.bus = Some(bus),
                        Err(bus) => {
                            return Err(XmlError {
                                kind: XmlErrorKind::Unsupported,
                                path: format!("{}/target/@dev", device_path(&totals, "disk", disk_index)),
                                message: format!(
                                    "disk target '{}' implies the {bus} bus, which rvirt does not support; set <target bus>",
                                    disk.target
                                ),
                            });
                        }
                    }
                }
                if disk.info.address.is_none() {
                    address::assign_drive_address(disk)?;
                }
            }
            Device::Video(video) => {
                if video.model == VideoModel::Qxl && video.vgamem.is_none() {
                    video.vgamem = Some(16 * 1024);
                }
                if video.model == VideoModel::Qxl && video.ram.is_none() {
                    video.ram = Some(machine::default_video_ram(video.model));
                }
                if video.vram.is_none() {
                    let ram = machine::default_video_ram(video.model);
                    if ram > 0 {
                        video.vram = Some(ram);
                    }
                }
                video.ram = video.ram.map(round_up_power_of_two);
                video.vram = video.vram.map(round_up_power_of_two);
                if video.heads.is_none() && video.model != VideoModel::None {
                    video.heads = Some(1);
                }
                if video.model == VideoModel::None {
                    video.vram = None;
                    video.ram = None;
                    video.vgamem = None;
                    video.heads = None;
                }
            }
            Device::Controller(c) => match &mut c.model {
                ControllerModel::Scsi(model) => {
                    if matches!(model, None | Some(ScsiModel::Auto)) {
                        *model = Some(machine::default_scsi_model(defaults));
                    }
                }
                ControllerModel::Usb(model) => {
                    if model.is_none() {
                        *model = machine::default_usb_model(family, defaults);
                    }
                    if *model == Some(UsbModel::None) {
                        c.info.address = None;
                    }
                }
                ControllerModel::Pci(model) => {
                    if model.is_none() {
                        return Err(invalid(
                            "/domain/devices/controller/@model",
                            format!("the PCI controller with index='{}' needs a model", c.index),
                        ));
                    }
                    if matches!(model, Some(PciModel::PciRoot | PciModel::PcieRoot)) && c.index != 0 {
                        return Err(invalid(
                            "/domain/devices/controller/@index",
                            "pci-root and pcie-root controllers must have index 0",
                        ));
                    }
                }
                ControllerModel::Ide | ControllerModel::Sata => {}
            },
            Device::Serial(c) => {
                if x86 && c.serial_type.is_none() {
                    c.serial_type = Some(SerialTargetType::IsaSerial);
                }
                if c.serial_type == Some(SerialTargetType::IsaSerial) && c.serial_model.is_none() {
                    c.serial_model = Some(SerialTargetModel::IsaSerial);
                }
                if c.port.is_none() {
                    let port = serial_max.map_or(0, |m| m.saturating_add(1));
                    c.port = Some(port);
                    serial_max = Some(port);
                }
                chr_source_defaults(&mut c.source);
            }
            Device::Console(c) => {
                if c.console_type.is_none() {
                    c.console_type = Some(ConsoleTargetType::Serial);
                }
                if c.port.is_none() {
                    let port = console_max.map_or(0, |m| m.saturating_add(1));
                    c.port = Some(port);
                    console_max = Some(port);
                }
                chr_source_defaults(&mut c.source);
            }
            Device::Input(_) => {}
            Device::Rng(rng) => {
                if let RngBackend::Random(path @ None) = &mut rng.backend {
                    *path = Some("/dev/random".into());
                }
            }
            Device::Graphics(_) | Device::Audio(_) | Device::Watchdog(_) | Device::Memballoon(_) => {}
        }
    }
    Ok(())
}

/// The bus of an `<input>` without one: PS/2 for a mouse or keyboard on x86, else USB.
fn input_bus_defaults(def: &mut DomainDef) {
    let x86 = def.os.arch.as_deref().is_none_or(machine::is_x86);
    for input in def.devices.inputs_mut() {
        if input.bus.is_none() {
            input.bus = Some(match input.input_type {
                InputType::Mouse | InputType::Keyboard if x86 => InputBus::Ps2,
                _ => InputBus::Usb,
            });
        }
    }
}

/// A UNIX socket without a path is created by QEMU, so it listens.
fn chr_source_defaults(source: &mut ChrSource) {
    if let ChrSource::Unix { mode, path: None } = source {
        *mode = ChrMode::Bind;
    }
}

fn round_up_power_of_two(v: u32) -> u32 {
    if v == 0 {
        0
    } else {
        v.checked_next_power_of_two().unwrap_or(v)
    }
}

fn memory_defaults(def: &mut DomainDef) -> Result<(), XmlError> {
    let m = &mut def.memory;
    if m.total_kib == 0 {
        return Err(invalid("/domain/memory", "memory size must be greater than zero"));
    }
    if m.current_kib == 0 || m.current_kib > m.total_kib {
        m.current_kib = m.total_kib;
    }
    if let Some(max) = &m.max {
        if max.slots == 0 {
            return Err(invalid(
                "/domain/maxMemory/@slots",
                "both the maximum memory size and the number of memory slots must be specified",
            ));
        }
        if max.kib < m.total_kib {
            return Err(invalid(
                "/domain/maxMemory",
                "the maximum memory size must be equal to or greater than the memory size",
            ));
        }
    }
    Ok(())
}

fn reject_duplicate_controllers(def: &DomainDef) -> Result<(), XmlError> {
    let mut seen = HashSet::new();
    for c in def.devices.controllers() {
        if !seen.insert((c.kind(), c.index)) {
            let note = if c.kind() == ControllerType::Usb {
                " (USB companion controllers are not supported)"
            } else {
                ""
            };
            return Err(invalid(
                "/domain/devices/controller",
                format!(
                    "multiple '{}' controllers with index '{}'{note}",
                    c.kind(),
                    c.index
                ),
            ));
        }
    }
    Ok(())
}

fn boot_order_defaults(def: &mut DomainDef) -> Result<(), XmlError> {
    let mut orders = HashSet::new();
    for device in &def.devices.list {
        if let Some(order) = device.info().and_then(|i| i.boot_order)
            && !orders.insert(order)
        {
            return Err(invalid(
                format!("/domain/devices/{}/boot/@order", device.element()),
                format!("boot order '{order}' is used for more than one device"),
            ));
        }
    }
    if !orders.is_empty() && !def.os.boot.is_empty() {
        return Err(invalid(
            "/domain/os/boot",
            "per-device boot elements cannot be used together with os/boot elements",
        ));
    }
    if orders.is_empty() && def.os.boot.is_empty() {
        def.os.boot.push(BootDev::Hd);
    }
    Ok(())
}

fn check_timers(def: &DomainDef) -> Result<(), XmlError> {
    for t in &def.clock.timers {
        if matches!(t.name, TimerName::Kvmclock | TimerName::Hypervclock) && t.tickpolicy.is_some() {
            return Err(invalid(
                "/domain/clock/timer/@tickpolicy",
                format!("timer {} does not support setting a tick policy", t.name),
            ));
        }
        if !matches!(t.name, TimerName::Platform | TimerName::Rtc) && t.track.is_some() {
            return Err(invalid(
                "/domain/clock/timer/@track",
                format!("timer {} does not support setting track", t.name),
            ));
        }
    }
    Ok(())
}

/// Devices libvirt adds for compatibility: the serial/console pairing, disk controllers for
/// drive addresses, a video card and PS/2 input for graphics.
fn implicit_devices(def: &mut DomainDef, defaults: &QemuDefaults) -> Result<(), XmlError> {
    console_compat(def)?;
    for (bus, kind) in [
        (DiskBus::Scsi, ControllerType::Scsi),
        (DiskBus::Ide, ControllerType::Ide),
        (DiskBus::Sata, ControllerType::Sata),
    ] {
        let max = def
            .devices
            .disks()
            .filter(|d| d.bus == Some(bus))
            .filter_map(|d| match &d.info.address {
                Some(Address::Drive(a)) => Some(a.controller),
                _ => None,
            })
            .max();
        if let Some(max) = max {
            for index in 0..=max {
                if def.devices.controller(kind, index).is_none() {
                    let model = match kind {
                        ControllerType::Scsi => ControllerModel::Scsi(None),
                        ControllerType::Ide => ControllerModel::Ide,
                        _ => ControllerModel::Sata,
                    };
                    def.devices.insert_controller(Controller::new(model, index));
                }
            }
        }
    }
    let has_graphics = def.devices.graphics().next().is_some();
    if has_graphics && def.devices.videos().next().is_none() {
        let arch = def.os.arch.clone().unwrap_or_default();
        def.devices.insert(Device::Video(Video {
            model: machine::default_video_model(&arch, defaults),
            vram: None,
            ram: None,
            vgamem: None,
            heads: None,
            primary: false,
            info: DeviceInfo::default(),
        }));
    }
    if has_graphics && is_x86(def) {
        maybe_add_input(def, InputType::Mouse, InputBus::Ps2);
        maybe_add_input(def, InputType::Keyboard, InputBus::Ps2);
    }
    Ok(())
}

/// libvirt's serial/console back-compatibility for HVM guests: the first console of target
/// type `serial` is an alias of the first serial port. A console without a serial port gets
/// one; a serial port without such a console gets one.
fn console_compat(def: &mut DomainDef) -> Result<(), XmlError> {
    let first_console = def
        .devices
        .list
        .iter()
        .position(|d| matches!(d, Device::Console(_)));
    let first_serial = def
        .devices
        .list
        .iter()
        .position(|d| matches!(d, Device::Serial(_)));
    match (first_console, first_serial) {
        (Some(ci), None) => {
            let Device::Console(console) = &def.devices.list[ci] else {
                return Ok(());
            };
            if console
                .console_type
                .is_none_or(|t| t == ConsoleTargetType::Serial)
            {
                let serial = Chardev {
                    source: console.source.clone(),
                    port: Some(0),
                    serial_type: None,
                    serial_model: None,
                    console_type: None,
                    info: console.info.clone(),
                };
                if let Device::Console(console) = &mut def.devices.list[ci] {
                    console.info = DeviceInfo::default();
                    console.port = Some(0);
                }
                def.devices.insert(Device::Serial(serial));
            }
        }
        (None, Some(si)) => {
            let Device::Serial(serial) = &def.devices.list[si] else {
                return Ok(());
            };
            let console = Chardev {
                source: serial.source.clone(),
                port: serial.port,
                serial_type: None,
                serial_model: None,
                console_type: Some(ConsoleTargetType::Serial),
                info: DeviceInfo::default(),
            };
            def.devices.insert(Device::Console(console));
        }
        _ => {}
    }
    sync_console_alias(def);
    Ok(())
}

/// Makes the first serial-type console mirror the first serial port, as libvirt formats it.
pub(crate) fn sync_console_alias(def: &mut DomainDef) {
    let Some(serial) = def.devices.serials().next().cloned() else {
        return;
    };
    if let Some(console) = def.devices.consoles_mut().next()
        && console
            .console_type
            .is_none_or(|t| t == ConsoleTargetType::Serial)
    {
        console.source = serial.source;
        console.port = serial.port;
        if serial.info.alias.is_some() {
            console.info.alias = serial.info.alias;
        }
    }
}

/// The primary video goes first and is marked primary.
fn video_primary(def: &mut DomainDef) {
    let positions: Vec<usize> = def
        .devices
        .list
        .iter()
        .enumerate()
        .filter(|(_, d)| matches!(d, Device::Video(_)))
        .map(|(i, _)| i)
        .collect();
    let Some(&first) = positions.first() else {
        return;
    };
    if let Some(&p) = positions
        .iter()
        .find(|&&p| matches!(&def.devices.list[p], Device::Video(v) if v.primary))
        && p != first
    {
        let video = def.devices.list.remove(p);
        def.devices.list.insert(first, video);
    }
    for (n, p) in positions.iter().enumerate() {
        if let Device::Video(v) = &mut def.devices.list[*p] {
            v.primary = n == 0 && v.model != VideoModel::None;
        }
    }
}

fn graphics_defaults(def: &mut DomainDef) {
    for g in def.devices.graphics_mut() {
        if g.listen.is_none() {
            g.listen = Some(Listen::Address(None));
        }
        // A VNC UNIX socket has no TCP port.
        if g.graphics_type == GraphicsType::Vnc && matches!(g.listen, Some(Listen::Socket(_))) {
            g.port = None;
            g.autoport = false;
        }
        // SPICE without ports and without autoport listens nowhere: libvirt says so.
        if g.graphics_type == GraphicsType::Spice
            && g.port.is_none()
            && !g.autoport
            && g.listen == Some(Listen::Address(None))
        {
            g.listen = Some(Listen::None);
        }
    }
}

/// Checks a complete definition against libvirt's rules (and the QEMU driver's, for the
/// machine family).
pub(crate) fn validate(def: &DomainDef) -> Result<(), XmlError> {
    if def.name.is_empty() {
        return Err(invalid("/domain/name", "the domain name must not be empty"));
    }
    if def.name.contains('/') {
        return Err(invalid(
            "/domain/name",
            format!("name '{}' cannot contain '/'", def.name),
        ));
    }
    if def.name.contains('\n') {
        return Err(invalid(
            "/domain/name",
            "the domain name cannot contain a new line",
        ));
    }
    if crate::xml::canonical_uuid(&def.uuid).as_deref() != Some(def.uuid.as_str()) {
        return Err(invalid(
            "/domain/uuid",
            format!("UUID '{}' is not in canonical form", def.uuid),
        ));
    }
    if def.title.as_deref().is_some_and(|t| t.contains('\n')) {
        return Err(invalid("/domain/title", "the title cannot contain a new line"));
    }
    if def.vcpu.count == 0 {
        return Err(invalid("/domain/vcpu", "the number of vCPUs must be at least 1"));
    }
    if let Some(current) = def.vcpu.current {
        if current == 0 {
            return Err(invalid(
                "/domain/vcpu/@current",
                "the number of online vCPUs must be at least 1",
            ));
        }
        if current > def.vcpu.count {
            return Err(invalid(
                "/domain/vcpu/@current",
                format!(
                    "the maximum vCPUs must not be less than the current vCPUs ({} < {current})",
                    def.vcpu.count
                ),
            ));
        }
    }
    if def.vcpu.count > MAX_VCPUS {
        return Err(invalid(
            "/domain/vcpu",
            format!(
                "{} vCPUs is more than the {MAX_VCPUS} a domain may have",
                def.vcpu.count
            ),
        ));
    }
    validate_domain_values(def)?;
    let family = family(def);
    validate_devices(def, family)
}

/// The most vCPUs a definition may name (the schema's `unsignedShort`).
const MAX_VCPUS: u32 = 65535;

/// libvirt's architecture names (`archnames` in the schema).
const ARCHES: &[&str] = &[
    "aarch64",
    "alpha",
    "armv6l",
    "armv7l",
    "cris",
    "i686",
    "ia64",
    "lm32",
    "loongarch64",
    "m68k",
    "microblaze",
    "microblazeel",
    "mips",
    "mipsel",
    "mips64",
    "mips64el",
    "openrisc",
    "parisc",
    "parisc64",
    "ppc",
    "ppc64",
    "ppc64le",
    "ppcemb",
    "riscv32",
    "riscv64",
    "s390",
    "s390x",
    "sh4",
    "sh4eb",
    "sparc",
    "sparc64",
    "unicore32",
    "x86_64",
    "xtensa",
    "xtensaeb",
];

/// An absolute path as the schema's `absFilePath` wants it: `/` (or `C:\`) and more.
fn is_abs_path(v: &str) -> bool {
    let rest = v.strip_prefix('/').or_else(|| {
        let b = v.as_bytes();
        (b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'\\').then(|| &v[3..])
    });
    rest.is_some_and(|r| !r.is_empty() && !r.contains(['\n', '\r']))
}

/// Non-empty and made only of characters `ok` accepts.
fn is_word(v: &str, ok: impl Fn(char) -> bool) -> bool {
    !v.is_empty() && v.chars().all(ok)
}

/// The schema's `deviceName`: letters, digits and `_.-\:/`.
fn is_device_name(v: &str) -> bool {
    is_word(v, |c| c.is_ascii_alphanumeric() || "_.-\\:/".contains(c))
}

/// An IP address or a DNS name (the schema's `addrIPorName`).
fn is_address(v: &str) -> bool {
    v.parse::<std::net::IpAddr>().is_ok() || is_word(v, |c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}

fn check(ok: bool, path: impl Into<String>, message: impl Into<String>) -> Result<(), XmlError> {
    if ok { Ok(()) } else { Err(invalid(path, message)) }
}

fn check_abs(value: &str, path: impl Into<String>, what: &str) -> Result<(), XmlError> {
    check(
        is_abs_path(value),
        path,
        format!("{what} '{value}' must be an absolute path"),
    )
}

/// Values of domain-level elements that the schema constrains.
fn validate_domain_values(def: &DomainDef) -> Result<(), XmlError> {
    if let Some(arch) = &def.os.arch {
        check(
            ARCHES.contains(&arch.as_str()),
            "/domain/os/type/@arch",
            format!("unknown architecture '{arch}'"),
        )?;
    }
    if let Some(machine) = &def.os.machine {
        check(
            is_word(machine, |c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
            "/domain/os/type/@machine",
            format!("invalid machine type '{machine}'"),
        )?;
    }
    if let Some(e) = &def.devices.emulator {
        check_abs(e, "/domain/devices/emulator", "the emulator")?;
    }
    for (value, path, what) in [
        (&def.os.kernel, "/domain/os/kernel", "the kernel"),
        (&def.os.initrd, "/domain/os/initrd", "the initrd"),
    ] {
        if let Some(v) = value {
            check_abs(v, path, what)?;
        }
    }
    if let Some(path) = def.os.loader.as_ref().and_then(|l| l.path.as_ref()) {
        check_abs(path, "/domain/os/loader", "the loader")?;
    }
    if let Some(nvram) = &def.os.nvram {
        if let Some(p) = &nvram.path {
            check_abs(p, "/domain/os/nvram", "the NVRAM store")?;
        }
        if let Some(t) = &nvram.template {
            check_abs(t, "/domain/os/nvram/@template", "the NVRAM template")?;
        }
    }
    if let ClockOffset::Timezone(tz) = &def.clock.offset {
        check(
            is_word(tz, |c| c.is_ascii_alphanumeric() || "_.+-/".contains(c)),
            "/domain/clock/@timezone",
            format!("invalid time zone '{tz}'"),
        )?;
    }
    Ok(())
}

/// Values of a device's fields that the schema constrains.
fn validate_device_values(device: &Device, path: &str) -> Result<(), XmlError> {
    if let Some(info) = device.info() {
        if let Some(alias) = &info.alias {
            check(
                is_word(alias, |c| c.is_ascii_alphanumeric() || "_-.".contains(c)),
                format!("{path}/alias/@name"),
                format!("invalid alias '{alias}': use letters, digits, '_', '-' and '.'"),
            )?;
        }
        match &info.address {
            Some(Address::Drive(a)) => {
                check(
                    a.controller <= 99 && a.bus <= 99 && a.target <= 99 && a.unit <= 99999,
                    format!("{path}/address"),
                    "a drive address needs controller, bus and target 0-99 and unit 0-99999",
                )?;
            }
            Some(Address::Usb(u)) => {
                if let Some(port) = &u.port {
                    let ok = port.split('.').count() <= 4
                        && port.split('.').all(|p| {
                            let hex = p.strip_prefix("0x").unwrap_or(p);
                            (1..=3).contains(&hex.len()) && hex.chars().all(|c| c.is_ascii_hexdigit())
                        });
                    check(
                        ok,
                        format!("{path}/address/@port"),
                        format!("invalid USB port '{port}'"),
                    )?;
                }
            }
            _ => {}
        }
    }
    match device {
        Device::Disk(d) => {
            let body = ["fd", "hd", "sd", "vd", "xvd", "ubd"]
                .iter()
                .find_map(|p| d.target.strip_prefix(p));
            check(
                body.is_some_and(|b| is_word(b, |c| c.is_ascii_alphanumeric() || c == '_')),
                format!("{path}/target/@dev"),
                format!("invalid disk target '{}'", d.target),
            )?;
            match &d.source {
                Some(DiskSource::File(f)) => check_abs(f, format!("{path}/source/@file"), "the disk file")?,
                Some(DiskSource::Block(b)) => check(
                    is_abs_path(b) || is_device_name(b),
                    format!("{path}/source/@dev"),
                    format!("invalid block device '{b}'"),
                )?,
                Some(DiskSource::Volume { pool, volume }) => {
                    check(
                        is_word(pool, |c| c != '/' && c != '\n'),
                        format!("{path}/source/@pool"),
                        format!("invalid pool name '{pool}'"),
                    )?;
                    check(
                        is_word(volume, |c| c != '/') && volume != "." && volume != "..",
                        format!("{path}/source/@volume"),
                        format!("invalid volume name '{volume}'"),
                    )?;
                }
                None => {}
            }
        }
        Device::Interface(i) => {
            if let InterfaceSource::Bridge(b) = &i.source {
                check(
                    b.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-\\:/ ".contains(c)),
                    format!("{path}/source/@bridge"),
                    format!("invalid bridge name '{b}'"),
                )?;
            }
            if let Some(dev) = &i.target_dev {
                check(
                    is_device_name(dev),
                    format!("{path}/target/@dev"),
                    format!("invalid device name '{dev}'"),
                )?;
            }
        }
        Device::Serial(c) | Device::Console(c) => validate_chr_source(&c.source, path)?,
        Device::Rng(r) => match &r.backend {
            RngBackend::Random(Some(p)) => check_abs(p, format!("{path}/backend"), "the random source")?,
            RngBackend::Egd(source) => validate_chr_source(source, &format!("{path}/backend"))?,
            RngBackend::Random(None) => {}
        },
        Device::Graphics(g) => match &g.listen {
            Some(Listen::Address(Some(a))) => check(
                is_address(a),
                format!("{path}/listen/@address"),
                format!("invalid listen address '{a}'"),
            )?,
            Some(Listen::Socket(Some(s))) => check_abs(s, format!("{path}/listen/@socket"), "the socket")?,
            _ => {}
        },
        _ => {}
    }
    Ok(())
}

fn validate_devices(def: &DomainDef, family: MachineFamily) -> Result<(), XmlError> {
    let mut targets: HashMap<&str, usize> = HashMap::new();
    let mut drives: HashMap<(DiskBus, u32, u32, u32, u32), &str> = HashMap::new();
    let mut macs: HashSet<&str> = HashSet::new();
    let mut aliases: HashSet<&str> = HashSet::new();
    let mut serial_ports: HashSet<u32> = HashSet::new();
    let mut graphics_types: HashSet<GraphicsType> = HashSet::new();
    let mut watchdog_models: HashSet<WatchdogModel> = HashSet::new();
    let mut audio_ids: HashSet<u32> = HashSet::new();
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    let mut balloons = 0;
    let mut consoles = 0;
    let mut videos = 0;
    let mut video_none = false;
    let serial_alias = def.devices.serials().next().and_then(|s| s.info.alias.as_deref());
    let totals = element_totals(def);
    for device in &def.devices.list {
        let n = counts.entry(device.element()).or_insert(0);
        *n += 1;
        let path = device_path(&totals, device.element(), *n);
        if let Some(info) = device.info()
            && let Some(alias) = &info.alias
        {
            if alias.starts_with("ua-")
                && !alias[3..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(invalid(
                    format!("{path}/alias/@name"),
                    format!("user alias '{alias}' may contain only letters, digits, '_' and '-' after 'ua-'"),
                ));
            }
            // The first console is the first serial port under another name.
            let mirrored = matches!(device, Device::Console(_)) && Some(alias.as_str()) == serial_alias;
            if !mirrored && !aliases.insert(alias) {
                return Err(invalid(
                    format!("{path}/alias/@name"),
                    format!("alias '{alias}' is not unique"),
                ));
            }
        }
        validate_device_values(device, &path)?;
        match device {
            Device::Disk(disk) => {
                if let Some(first) = targets.insert(disk.target.as_str(), *n) {
                    return Err(invalid(
                        format!("{path}/target/@dev"),
                        format!("target '{}' is used by disks {first} and {}", disk.target, *n),
                    ));
                }
                if disk.device == DiskDevice::Disk
                    && !["hd", "sd", "vd"].iter().any(|p| disk.target.starts_with(p))
                {
                    return Err(invalid(
                        format!("{path}/target/@dev"),
                        format!(
                            "invalid hard disk name '{}': it must start with hd, sd or vd",
                            disk.target
                        ),
                    ));
                }
                if disk.device == DiskDevice::Disk && disk.source.is_none() {
                    return Err(invalid(
                        format!("{path}/source"),
                        format!("disk '{}' has no source", disk.target),
                    ));
                }
                if let Some(name) = &disk.driver.name
                    && name != "qemu"
                {
                    return Err(XmlError {
                        kind: XmlErrorKind::Unsupported,
                        path: format!("{path}/driver/@name"),
                        message: format!("unsupported disk driver name '{name}': only 'qemu' is supported"),
                    });
                }
                let bus = disk.bus.unwrap_or(DiskBus::Ide);
                if bus == DiskBus::Virtio && disk.device == DiskDevice::Cdrom {
                    return Err(invalid(
                        format!("{path}/target/@bus"),
                        "a CD-ROM cannot be on the virtio bus",
                    ));
                }
                if bus == DiskBus::Ide && family == MachineFamily::Q35 {
                    return Err(invalid(
                        format!("{path}/target/@bus"),
                        "IDE is not available on q35 machines: use bus='sata'",
                    ));
                }
                match (&disk.info.address, bus) {
                    (Some(Address::Drive(a)), DiskBus::Ide | DiskBus::Sata | DiskBus::Scsi) => {
                        if bus == DiskBus::Ide && (a.bus > 1 || a.unit > 1 || a.target != 0) {
                            return Err(invalid(
                                format!("{path}/address"),
                                "an IDE drive address needs bus 0-1, target 0 and unit 0-1",
                            ));
                        }
                        if bus == DiskBus::Sata && (a.bus != 0 || a.target != 0 || a.unit > 5) {
                            return Err(invalid(
                                format!("{path}/address"),
                                "a SATA drive address needs bus 0, target 0 and unit 0-5",
                            ));
                        }
                        if let Some(other) =
                            drives.insert((bus, a.controller, a.bus, a.target, a.unit), &disk.target)
                        {
                            return Err(invalid(
                                format!("{path}/address"),
                                format!(
                                    "disks '{other}' and '{}' have the same drive address controller='{}' bus='{}' target='{}' unit='{}'",
                                    disk.target, a.controller, a.bus, a.target, a.unit
                                ),
                            ));
                        }
                    }
                    (Some(Address::Pci(_)), DiskBus::Virtio) | (None, _) => {}
                    (Some(_), _) => {
                        return Err(invalid(
                            format!("{path}/address"),
                            format!("the address type does not fit a disk on the {bus} bus"),
                        ));
                    }
                }
            }
            Device::Controller(c) => {
                if c.kind() == ControllerType::Ide && !machine::has_ide(family) && family.is_pc() {
                    return Err(invalid(path, "IDE controllers are not available on q35 machines"));
                }
                if let ControllerModel::Pci(Some(m)) = c.model
                    && c.pci.model_name.is_some()
                    && !pci_name_fits(m, c.pci.model_name)
                {
                    return Err(invalid(
                        format!("{path}/model/@name"),
                        format!("model name does not fit a {m} controller"),
                    ));
                }
            }
            Device::Interface(net) => {
                if !macs.insert(net.mac.as_str()) {
                    return Err(invalid(
                        format!("{path}/mac/@address"),
                        format!("MAC address {} is used by more than one interface", net.mac),
                    ));
                }
                match &net.source {
                    InterfaceSource::Network(s) | InterfaceSource::Bridge(s) if s.is_empty() => {
                        return Err(invalid(
                            format!("{path}/source"),
                            "the interface source must not be empty",
                        ));
                    }
                    _ => {}
                }
                if let Some(Address::Drive(_) | Address::Usb(_)) = net.info.address {
                    return Err(invalid(
                        format!("{path}/address"),
                        "an interface needs a PCI address",
                    ));
                }
            }
            Device::Serial(c) => {
                if c.serial_type == Some(SerialTargetType::IsaSerial) {
                    let port = c.port.unwrap_or(0);
                    if port >= 4 || serial_ports.len() >= 4 {
                        return Err(invalid(path, "at most 4 ISA serial ports (0-3) are supported"));
                    }
                    if !serial_ports.insert(port) {
                        return Err(invalid(
                            format!("{path}/target/@port"),
                            format!("serial port {port} is used twice"),
                        ));
                    }
                }
                validate_chr_source(&c.source, &path)?;
            }
            Device::Console(c) => {
                consoles += 1;
                if consoles > 1 {
                    return Err(invalid(
                        path,
                        "only one console is supported: the first console is an alias of the first serial port",
                    ));
                }
                validate_chr_source(&c.source, &path)?;
            }
            Device::Input(input) => {
                if input.bus == Some(InputBus::Ps2) {
                    if input.input_type == InputType::Tablet {
                        return Err(invalid(
                            format!("{path}/@bus"),
                            "the ps2 bus does not support a tablet",
                        ));
                    }
                    if def.os.arch.as_deref().is_some_and(|a| !machine::is_x86(a)) {
                        return Err(invalid(format!("{path}/@bus"), "the ps2 bus exists only on x86"));
                    }
                }
                if let Some(Address::Drive(_)) = input.info.address {
                    return Err(invalid(
                        format!("{path}/address"),
                        "an input device cannot have a drive address",
                    ));
                }
            }
            Device::Graphics(g) => {
                if !graphics_types.insert(g.graphics_type) {
                    return Err(invalid(
                        path,
                        format!(
                            "only one graphics device of type '{}' is supported",
                            g.graphics_type
                        ),
                    ));
                }
                let listens = !matches!(g.listen, Some(Listen::Socket(_) | Listen::None));
                if g.graphics_type == GraphicsType::Vnc
                    && listens
                    && !g.autoport
                    && g.port.is_none_or(|p| p < 5900)
                {
                    return Err(invalid(
                        format!("{path}/@port"),
                        "a VNC port must be in the range 5900-65535, or autoport='yes'",
                    ));
                }
            }
            Device::Video(v) => {
                videos += 1;
                if v.model == VideoModel::None {
                    video_none = true;
                }
                if videos > 1 && !matches!(v.model, VideoModel::Qxl | VideoModel::Virtio) {
                    return Err(invalid(
                        format!("{path}/model/@type"),
                        format!(
                            "video type '{}' is only valid as the primary video device",
                            v.model
                        ),
                    ));
                }
                if v.heads == Some(0) {
                    return Err(invalid(
                        format!("{path}/model/@heads"),
                        "a video device needs at least one head",
                    ));
                }
            }
            Device::Watchdog(w) => {
                if !watchdog_models.insert(w.model) {
                    return Err(invalid(
                        path,
                        format!("watchdog model '{}' appears more than once", w.model),
                    ));
                }
                if w.model == WatchdogModel::Itco && family != MachineFamily::Q35 {
                    return Err(invalid(
                        format!("{path}/@model"),
                        "the itco watchdog exists only on q35 machines",
                    ));
                }
            }
            Device::Memballoon(_) => {
                balloons += 1;
                if balloons > 1 {
                    return Err(invalid(path, "only one memory balloon is supported"));
                }
            }
            Device::Rng(r) => {
                if let RngBackend::Egd(source) = &r.backend {
                    validate_chr_source(source, &path)?;
                }
            }
            Device::Audio(au) => {
                if !audio_ids.insert(au.id) {
                    return Err(invalid(
                        format!("{path}/@id"),
                        format!("audio id {} is used twice", au.id),
                    ));
                }
            }
        }
    }
    if video_none && videos > 1 {
        return Err(invalid(
            "/domain/devices/video",
            "a video of type 'none' must be the only video device",
        ));
    }
    Ok(())
}

fn pci_name_fits(model: PciModel, name: Option<PciModelName>) -> bool {
    use PciModelName as N;
    matches!(
        (model, name),
        (_, None)
            | (PciModel::PciBridge, Some(N::PciBridge))
            | (PciModel::DmiToPciBridge, Some(N::I82801b11Bridge))
            | (PciModel::PcieRootPort, Some(N::PcieRootPort | N::Ioh3420))
            | (PciModel::PcieToPciBridge, Some(N::PciePciBridge))
    )
}

fn validate_chr_source(source: &ChrSource, path: &str) -> Result<(), XmlError> {
    match source {
        ChrSource::File { path: p, .. } if !is_abs_path(p) => Err(invalid(
            format!("{path}/source/@path"),
            format!("file path '{p}' must be absolute"),
        )),
        ChrSource::Unix { path: Some(p), .. } | ChrSource::Pty { path: Some(p) } if !is_abs_path(p) => {
            Err(invalid(
                format!("{path}/source/@path"),
                format!("path '{p}' must be absolute"),
            ))
        }
        ChrSource::Tcp { service, .. } if service.trim().is_empty() => Err(invalid(
            format!("{path}/source/@service"),
            "the TCP service (port) must not be empty",
        )),
        _ => Ok(()),
    }
}
