//! The command line itself, section by section in libvirt's order (`qemuBuildCommandLine`):
//! identity, firmware, machine, accelerator, CPU, memory, vCPUs, monitor, clock, boot, then the
//! devices (controllers, disks, interfaces, serial ports, inputs, audio, graphics, video,
//! watchdogs, balloon, RNGs), then the sandbox.

use std::collections::BTreeMap;
use std::path::Path;

use rvirt_conf::domain::{
    Address, BootDev, ChrMode, ChrProtocol, ChrSource, ClockBasis, ClockOffset, ControllerModel,
    ControllerType, CpuMode, Device, DeviceInfo, Disk, DiskBus, DiskCache, DiskDevice, DiskDiscard,
    DiskFormat, DiskIo, DiskSource, DomainDef, GraphicsType, InputBus, InputType, InterfaceSource,
    LifecycleAction, Listen, LoaderType, MachineFamily, MemballoonModel, NetModel, PciModel, PciModelName,
    RngBackend, RngModel, ScsiModel, TickPolicy, TimerName, TimerTrack, UsbModel, VideoModel, VirtType,
    WatchdogAction, WatchdogModel, XmlEnum as _,
};

use super::alias::{assign_aliases, controller_alias, scsi_short_address};
use super::args::{Props, escape};
use super::{CommandError, MonitorFd, NetBackend, QemuCommand, Resources, default_unix_socket};
use crate::caps::Target;
use crate::qmp::launch::MONITOR_CHARDEV_ID;

/// The id of the master key secret object.
pub(crate) const MASTER_KEY_ID: &str = "masterKey0";

/// Builds one command line.
pub(crate) struct Build<'a> {
    def: DomainDef,
    target: &'a Target,
    runtime_dir: &'a Path,
    monitor: MonitorFd,
    resources: &'a Resources,
    family: MachineFamily,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Boot index by position in `def.devices.list`.
    boot_index: BTreeMap<usize, u32>,
}

type R<T = ()> = Result<T, CommandError>;

fn unsupported(message: impl Into<String>) -> CommandError {
    CommandError::Unsupported(message.into())
}

impl<'a> Build<'a> {
    pub(crate) fn new(
        def: &DomainDef,
        target: &'a Target,
        runtime_dir: &'a Path,
        monitor: MonitorFd,
        resources: &'a Resources,
    ) -> Build<'a> {
        let mut def = def.clone();
        assign_aliases(&mut def);
        let family = def.machine_family();
        Build {
            def,
            target,
            runtime_dir,
            monitor,
            resources,
            family,
            args: Vec::new(),
            env: Vec::new(),
            boot_index: BTreeMap::new(),
        }
    }

    pub(crate) fn run(mut self) -> R<QemuCommand> {
        // What the driver does to the live definition at start, repeated on this copy so the
        // builder stands on its own (a no-op when the ports are already there).
        self.def
            .assign_usb_addresses()
            .map_err(|e| unsupported(e.to_string()))?;
        self.boot_index = self.boot_indexes()?;
        self.identity();
        self.firmware()?;
        self.machine()?;
        self.accel()?;
        self.cpu()?;
        self.memory()?;
        self.smp()?;
        self.push("-uuid", self.def.uuid.clone());
        if self.def.devices.graphics().next().is_none() {
            self.push("-display", "none");
        }
        self.args.push("-no-user-config".into());
        self.args.push("-nodefaults".into());
        self.monitor();
        self.clock()?;
        self.args.push("-no-shutdown".into());
        if self.def.on_reboot == LifecycleAction::Destroy {
            self.args.push("-no-reboot".into());
        }
        self.boot()?;
        self.controllers()?;
        self.disks()?;
        self.interfaces()?;
        self.serials()?;
        self.inputs()?;
        self.audio()?;
        self.graphics()?;
        self.videos()?;
        self.watchdogs()?;
        self.memballoon()?;
        self.rngs()?;
        self.push(
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        );
        self.push("-msg", "timestamp=on");
        Ok(QemuCommand {
            program: self.target.emulator.binary.clone(),
            args: self.args,
            env: self.env,
        })
    }

    // ---- helpers ---------------------------------------------------------------------------

    fn push(&mut self, flag: &str, value: impl Into<String>) {
        self.args.push(flag.into());
        self.args.push(value.into());
    }

    fn json(&mut self, flag: &str, props: &Props) {
        self.push(flag, props.to_json());
    }

    /// `/domain/devices/disk[2] (alias)`: where device `index` of the list is, for messages.
    /// The devices `pick` selects, with their index in the device list; cloned, so that the
    /// builder can be borrowed mutably while it emits them.
    fn devices_of<T: Clone>(&self, pick: impl Fn(&Device) -> Option<&T>) -> Vec<(usize, T)> {
        self.def
            .devices
            .list
            .iter()
            .enumerate()
            .filter_map(|(i, d)| pick(d).map(|x| (i, x.clone())))
            .collect()
    }

    fn where_(&self, index: usize) -> String {
        let Some(device) = self.def.devices.list.get(index) else {
            return "/domain/devices".into();
        };
        let element = device.element();
        let nth = self.def.devices.list[..=index]
            .iter()
            .filter(|d| d.element() == element)
            .count();
        let mut text = format!("/domain/devices/{element}[{nth}]");
        if let Device::Disk(d) = device {
            text.push_str(&format!(" (target '{}')", d.target));
        }
        text
    }

    /// Fails unless QEMU has the QOM type `name` (or the type behind QEMU's alias `name`).
    fn need_type(&self, name: &str, what: &str) -> R {
        // Device names libvirt uses that are qdev aliases of the QOM type.
        let qom = match name {
            "lsi" => "lsi53c895a",
            "ahci" => "ich9-ahci",
            other => other,
        };
        if self.target.emulator.has_type(qom) {
            Ok(())
        } else {
            Err(unsupported(format!(
                "{what} needs QEMU's '{name}', which {} ({}) does not have",
                self.target.emulator.binary.display(),
                self.target.emulator.version_string()
            )))
        }
    }

    /// Adds a device with its properties, after checking QEMU has the driver.
    fn device(&mut self, props: Props, what: &str) -> R {
        if let Some(super::args::Value::Str(driver)) = props.get("driver") {
            let driver = driver.clone();
            self.need_type(&driver, what)?;
        }
        self.json("-device", &props);
        Ok(())
    }

    /// The QEMU bus name of the PCI controller with `index`.
    fn pci_bus(&self, index: u32, what: &str) -> R<String> {
        self.def
            .devices
            .controller(ControllerType::Pci, index)
            .and_then(|c| c.info.alias.clone())
            .ok_or_else(|| unsupported(format!("{what}: PCI bus {index:#04x} has no controller")))
    }

    /// Appends `bus`, `multifunction` and `addr` for a PCI device.
    fn pci_address(&self, props: Props, info: &DeviceInfo, what: &str) -> R<Props> {
        match &info.address {
            None => Ok(props),
            Some(Address::Pci(a)) => {
                if a.domain != 0 {
                    return Err(unsupported(format!("{what}: only PCI domain 0 exists")));
                }
                let mut props = props.s("bus", self.pci_bus(a.bus, what)?);
                if let Some(mf) = a.multifunction {
                    props = props.b("multifunction", mf);
                }
                let addr = if a.function == 0 {
                    format!("{:#x}", a.slot)
                } else {
                    format!("{:#x}.{:#x}", a.slot, a.function)
                };
                Ok(props.s("addr", addr))
            }
            Some(_) => Err(unsupported(format!(
                "{what}: this device takes a PCI address only"
            ))),
        }
    }

    // ---- sections --------------------------------------------------------------------------

    fn identity(&mut self) {
        self.push(
            "-name",
            format!("guest={},debug-threads=on", escape(&self.def.name)),
        );
        self.args.push("-S".into());
        if let Some(key) = &self.resources.master_key {
            let props = Props::new()
                .s("qom-type", "secret")
                .s("id", MASTER_KEY_ID)
                .s("format", "raw")
                .s("file", key.to_string_lossy());
            self.json("-object", &props);
        }
    }

    /// UEFI code and variables as pflash block devices (the machine refers to them).
    fn firmware(&mut self) -> R {
        let Some(loader) = self.def.os.loader.clone() else {
            return Ok(());
        };
        if loader.kind != Some(LoaderType::Pflash) {
            return Ok(());
        }
        let Some(code) = &loader.path else {
            return Err(unsupported(
                "/domain/os/loader: a pflash loader needs a path (firmware auto-selection is not supported)",
            ));
        };
        let readonly = loader.readonly.unwrap_or(true);
        self.json(
            "-blockdev",
            &Props::new()
                .s("driver", "file")
                .s("filename", code.clone())
                .s("node-name", "libvirt-pflash0-storage")
                .b("auto-read-only", true)
                .s("discard", "unmap"),
        );
        self.json(
            "-blockdev",
            &Props::new()
                .s("node-name", "libvirt-pflash0-format")
                .b("read-only", readonly)
                .s("driver", "raw")
                .s("file", "libvirt-pflash0-storage"),
        );
        if let Some(nvram) = self.def.os.nvram.as_ref().and_then(|n| n.path.clone()) {
            self.json(
                "-blockdev",
                &Props::new()
                    .s("driver", "file")
                    .s("filename", nvram)
                    .s("node-name", "libvirt-pflash1-storage")
                    .b("read-only", false),
            );
        } else if readonly {
            return Err(unsupported(
                "/domain/os/nvram: a read-only pflash loader needs an NVRAM store path",
            ));
        }
        Ok(())
    }

    fn machine(&mut self) -> R {
        let m = &self.target.machine;
        let mut text = escape(&m.name);
        text.push_str(",usb=off");
        let secure = self.def.os.loader.as_ref().and_then(|l| l.secure) == Some(true);
        if secure {
            if self.family != MachineFamily::Q35 {
                return Err(unsupported(
                    "/domain/os/loader/@secure: Secure Boot needs a q35 machine type",
                ));
            }
            text.push_str(",smm=on");
        }
        text.push_str(",dump-guest-core=off");
        let ram_id = m.default_ram_id.clone().unwrap_or_else(|| "pc.ram".into());
        text.push_str(&format!(",memory-backend={}", escape(&ram_id)));
        let pflash = self
            .def
            .os
            .loader
            .as_ref()
            .is_some_and(|l| l.kind == Some(LoaderType::Pflash));
        if pflash {
            text.push_str(",pflash0=libvirt-pflash0-format");
            if self.def.os.nvram.as_ref().is_some_and(|n| n.path.is_some()) {
                text.push_str(",pflash1=libvirt-pflash1-storage");
            }
        }
        if self
            .def
            .clock
            .timers
            .iter()
            .any(|t| t.name == TimerName::Hpet && t.present == Some(false))
        {
            text.push_str(",hpet=off");
        }
        if m.acpi || self.family.is_pc() {
            text.push_str(if self.def.features.acpi {
                ",acpi=on"
            } else {
                ",acpi=off"
            });
        } else if self.def.features.acpi {
            return Err(unsupported(format!(
                "/domain/features/acpi: machine type '{}' has no ACPI",
                m.name
            )));
        }
        self.push("-machine", text);
        if secure {
            self.push("-global", "driver=cfi.pflash01,property=secure,value=on");
        }
        Ok(())
    }

    fn accel(&mut self) -> R {
        let want_kvm = self.def.virt_type == VirtType::Kvm;
        if want_kvm != self.target.kvm {
            return Err(unsupported(format!(
                "/domain/@type: the domain type is '{}' but the emulator target was resolved for {}",
                self.def.virt_type,
                if self.target.kvm { "KVM" } else { "TCG" }
            )));
        }
        self.push("-accel", if want_kvm { "kvm" } else { "tcg" });
        Ok(())
    }

    fn cpu(&mut self) -> R {
        let mut extra = Vec::new();
        for timer in &self.def.clock.timers {
            match (timer.name, timer.present) {
                (TimerName::Kvmclock, Some(false)) => extra.push("kvmclock=off".to_string()),
                (TimerName::Hypervclock, Some(true)) => extra.push("hv-time=on".to_string()),
                (TimerName::Kvmclock | TimerName::Hpet | TimerName::Rtc | TimerName::Pit, _) => {}
                (TimerName::Hypervclock, _) => {}
                (name, Some(_)) => {
                    return Err(unsupported(format!(
                        "/domain/clock/timer[@name='{name}']: the present attribute of this timer is not supported"
                    )));
                }
                (_, None) => {}
            }
        }
        let Some(cpu) = self.def.cpu.clone() else {
            if !extra.is_empty() {
                let model = if self.target.kvm { "host" } else { "qemu64" };
                self.push("-cpu", format!("{model},{}", extra.join(",")));
            }
            return Ok(());
        };
        let mut text = match cpu.mode {
            CpuMode::Custom => {
                let Some(name) = cpu.model.as_ref().and_then(|m| m.name.clone()) else {
                    return Err(unsupported("/domain/cpu/model: a custom CPU needs a model name"));
                };
                let known = self.target.accel().cpu_models.iter().any(|m| m.name == name);
                if !known {
                    return Err(unsupported(format!(
                        "/domain/cpu/model: QEMU does not know the CPU model '{name}'"
                    )));
                }
                escape(&name)
            }
            CpuMode::HostPassthrough => {
                if !self.target.kvm {
                    return Err(unsupported(
                        "/domain/cpu/@mode: host-passthrough needs KVM (use host-model or a named model with TCG)",
                    ));
                }
                match cpu.migratable {
                    Some(true) => "host,migratable=on".into(),
                    Some(false) => "host,migratable=off".into(),
                    None => "host".into(),
                }
            }
            CpuMode::HostModel => {
                if self.target.kvm {
                    "host".into()
                } else {
                    "max".into()
                }
            }
        };
        for e in extra {
            text.push(',');
            text.push_str(&e);
        }
        self.push("-cpu", text);
        Ok(())
    }

    fn memory(&mut self) -> R {
        let mem = self.def.memory.clone();
        // libvirt aligns guest memory to 1 MiB at start (x86), and so does QEMU's RAM backend.
        let total_kib = align_mib(mem.total_kib)?;
        let mut text = format!("size={total_kib}k");
        if let Some(max) = &mem.max {
            text.push_str(&format!(",slots={},maxmem={}k", max.slots, align_mib(max.kib)?));
        }
        self.push("-m", text);
        let ram_id = self
            .target
            .machine
            .default_ram_id
            .clone()
            .unwrap_or_else(|| "pc.ram".into());
        let bytes = total_kib
            .checked_mul(1024)
            .ok_or_else(|| unsupported("/domain/memory: the size is too large"))?;
        self.need_type("memory-backend-ram", "/domain/memory")?;
        let props = Props::new()
            .s("qom-type", "memory-backend-ram")
            .s("id", ram_id)
            .n("size", bytes);
        self.json("-object", &props);
        self.push("-overcommit", "mem-lock=off");
        Ok(())
    }

    fn smp(&mut self) -> R {
        let vcpu = &self.def.vcpu;
        let max = vcpu.count;
        if max > self.target.machine.cpu_max && self.target.machine.cpu_max > 0 {
            return Err(unsupported(format!(
                "/domain/vcpu: {max} vCPUs is more than machine type '{}' takes ({})",
                self.target.machine.name, self.target.machine.cpu_max
            )));
        }
        let online = vcpu.online();
        let mut text = online.to_string();
        if online != max {
            text.push_str(&format!(",maxcpus={max}"));
        }
        text.push_str(&format!(",sockets={max},cores=1,threads=1"));
        self.push("-smp", text);
        Ok(())
    }

    fn monitor(&mut self) {
        self.push(
            "-chardev",
            format!(
                "socket,id={MONITOR_CHARDEV_ID},fd={},server=on,wait=off",
                self.monitor.0
            ),
        );
        self.push(
            "-mon",
            format!("chardev={MONITOR_CHARDEV_ID},id=monitor,mode=control"),
        );
    }

    fn clock(&mut self) -> R {
        let mut rtc = match &self.def.clock.offset {
            ClockOffset::Utc => "base=utc".to_string(),
            ClockOffset::Localtime => "base=localtime".to_string(),
            ClockOffset::Timezone(tz) => {
                self.env.push(("TZ".into(), tz.clone()));
                "base=localtime".to_string()
            }
            ClockOffset::Variable { adjustment, basis } => {
                if *basis != ClockBasis::Utc {
                    return Err(unsupported(
                        "/domain/clock/@basis: a variable clock relative to localtime is not supported; use basis='utc'",
                    ));
                }
                let now = match self.resources.start_time {
                    Some(t) => t,
                    None => std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0),
                };
                format!("base={}", iso_datetime(now.saturating_add(*adjustment)))
            }
        };
        let mut globals = Vec::new();
        for timer in &self.def.clock.timers {
            match timer.name {
                TimerName::Rtc => {
                    match timer.track {
                        None => {}
                        Some(TimerTrack::Guest) => rtc.push_str(",clock=vm"),
                        Some(TimerTrack::Wall) => rtc.push_str(",clock=host"),
                        Some(TimerTrack::Realtime) => rtc.push_str(",clock=rt"),
                        Some(TimerTrack::Boot) => {
                            return Err(unsupported(
                                "/domain/clock/timer[@name='rtc']/@track: 'boot' is not supported",
                            ));
                        }
                    }
                    match timer.tickpolicy {
                        None | Some(TickPolicy::Delay) => {}
                        Some(TickPolicy::Catchup) => rtc.push_str(",driftfix=slew"),
                        Some(other) => {
                            return Err(unsupported(format!(
                                "/domain/clock/timer[@name='rtc']/@tickpolicy: '{other}' is not supported by QEMU"
                            )));
                        }
                    }
                }
                TimerName::Pit => match timer.tickpolicy {
                    None => {}
                    Some(TickPolicy::Delay) if !self.target.kvm => {}
                    Some(p @ (TickPolicy::Delay | TickPolicy::Discard)) if self.target.kvm => {
                        globals.push(format!("kvm-pit.lost_tick_policy={p}"));
                    }
                    Some(other) => {
                        return Err(unsupported(format!(
                            "/domain/clock/timer[@name='pit']/@tickpolicy: '{other}' is not supported with this accelerator"
                        )));
                    }
                },
                TimerName::Platform => {
                    return Err(unsupported(
                        "/domain/clock/timer[@name='platform']: the platform timer is not supported by QEMU",
                    ));
                }
                _ => {
                    if timer.tickpolicy.is_some() || timer.track.is_some() {
                        return Err(unsupported(format!(
                            "/domain/clock/timer[@name='{}']: tickpolicy and track apply to rtc and pit only",
                            timer.name
                        )));
                    }
                }
            }
        }
        self.push("-rtc", rtc);
        for g in globals {
            self.push("-global", g);
        }
        Ok(())
    }

    /// Boot indexes: the devices' own `<boot order>`, else `<os><boot dev>` mapped to the first
    /// device of each kind, as libvirt does.
    fn boot_indexes(&self) -> R<BTreeMap<usize, u32>> {
        let mut map = BTreeMap::new();
        let per_device = self
            .def
            .devices
            .list
            .iter()
            .any(|d| d.info().is_some_and(|i| i.boot_order.is_some()));
        if per_device {
            for (i, d) in self.def.devices.list.iter().enumerate() {
                if let Some(order) = d.info().and_then(|i| i.boot_order) {
                    map.insert(i, order);
                }
            }
            return Ok(map);
        }
        for (n, dev) in self.def.os.boot.iter().enumerate() {
            let index = n as u32 + 1;
            let found = self.def.devices.list.iter().position(|d| match (dev, d) {
                (BootDev::Hd, Device::Disk(disk)) => disk.device == DiskDevice::Disk,
                (BootDev::Cdrom, Device::Disk(disk)) => disk.device == DiskDevice::Cdrom,
                (BootDev::Network, Device::Interface(_)) => true,
                _ => false,
            });
            if *dev == BootDev::Fd {
                return Err(unsupported(
                    "/domain/os/boot[@dev='fd']: floppy drives are not supported",
                ));
            }
            if let Some(i) = found {
                map.entry(i).or_insert(index);
            }
        }
        Ok(map)
    }

    fn boot(&mut self) -> R {
        self.push("-boot", "strict=on");
        let os = self.def.os.clone();
        if let Some(loader) = &os.loader
            && loader.kind != Some(LoaderType::Pflash)
            && let Some(path) = &loader.path
        {
            // -bios, -kernel, -initrd and -append are taken whole (QEMU stores them as machine
            // properties without option parsing): no comma doubling.
            self.push("-bios", path.clone());
        }
        if let Some(kernel) = &os.kernel {
            self.push("-kernel", kernel.clone());
        }
        if let Some(initrd) = &os.initrd {
            self.push("-initrd", initrd.clone());
        }
        if let Some(cmdline) = &os.cmdline {
            self.push("-append", cmdline.clone());
        }
        Ok(())
    }

    fn controllers(&mut self) -> R {
        let order = [
            ControllerType::Pci,
            ControllerType::Usb,
            ControllerType::Scsi,
            ControllerType::Ide,
            ControllerType::Sata,
        ];
        for kind in order {
            let mut list: Vec<(usize, rvirt_conf::domain::Controller)> = self.devices_of(|d| match d {
                Device::Controller(c) if c.kind() == kind => Some(c),
                _ => None,
            });
            list.sort_by_key(|(_, c)| c.index);
            for (i, c) in list {
                self.controller(i, &c)?;
            }
        }
        Ok(())
    }

    fn controller(&mut self, i: usize, c: &rvirt_conf::domain::Controller) -> R {
        let what = self.where_(i);
        let id = c
            .info
            .alias
            .clone()
            .unwrap_or_else(|| controller_alias(self.family, c.model, c.index));
        let props = match c.model {
            ControllerModel::Pci(model) => {
                let model =
                    model.ok_or_else(|| unsupported(format!("{what}: the PCI controller has no model")))?;
                let name = c.pci.model_name;
                match model {
                    PciModel::PciRoot | PciModel::PcieRoot => return Ok(()),
                    PciModel::PciBridge => {
                        let driver = name.unwrap_or(PciModelName::PciBridge).as_str();
                        Props::new()
                            .s("driver", driver)
                            .n("chassis_nr", u64::from(c.pci.chassis_nr.unwrap_or(c.index)))
                            .s("id", id)
                    }
                    PciModel::DmiToPciBridge => Props::new()
                        .s("driver", name.unwrap_or(PciModelName::I82801b11Bridge).as_str())
                        .s("id", id),
                    PciModel::PcieRootPort => {
                        let mut p = Props::new()
                            .s("driver", name.unwrap_or(PciModelName::PcieRootPort).as_str())
                            .opt_n("port", c.pci.port.map(u64::from))
                            .opt_n("chassis", c.pci.chassis.map(u64::from));
                        if let Some(h) = c.pci.hotplug {
                            p = p.b("hotplug", h);
                        }
                        p.s("id", id)
                    }
                    PciModel::PcieToPciBridge => Props::new()
                        .s("driver", name.unwrap_or(PciModelName::PciePciBridge).as_str())
                        .s("id", id),
                }
            }
            ControllerModel::Usb(model) => {
                let driver = match model {
                    None | Some(UsbModel::None) => return Ok(()),
                    Some(UsbModel::Piix3Uhci) => "piix3-usb-uhci",
                    Some(UsbModel::Piix4Uhci) => "piix4-usb-uhci",
                    Some(UsbModel::Ehci) => "usb-ehci",
                    Some(UsbModel::Ich9Ehci1) => "ich9-usb-ehci1",
                    Some(UsbModel::Vt82c686bUhci) => "vt82c686b-usb-uhci",
                    Some(UsbModel::PciOhci) => "pci-ohci",
                    Some(UsbModel::NecXhci) => "nec-usb-xhci",
                    Some(UsbModel::QemuXhci) => "qemu-xhci",
                };
                Props::new().s("driver", driver).s("id", id)
            }
            ControllerModel::Scsi(model) => {
                let driver = match model.unwrap_or(ScsiModel::Lsilogic) {
                    ScsiModel::Auto | ScsiModel::Lsilogic => "lsi",
                    ScsiModel::VirtioScsi => "virtio-scsi-pci",
                    ScsiModel::VirtioTransitional => "virtio-scsi-pci-transitional",
                    ScsiModel::VirtioNonTransitional => "virtio-scsi-pci-non-transitional",
                    ScsiModel::Lsisas1068 => "mptsas1068",
                    ScsiModel::Lsisas1078 => "megasas",
                    ScsiModel::Vmpvscsi => "pvscsi",
                    ScsiModel::Am53c974 => "am53c974",
                    ScsiModel::Dc390 => "dc390",
                    ScsiModel::Buslogic => {
                        return Err(unsupported(format!(
                            "{what}: QEMU has no buslogic SCSI controller"
                        )));
                    }
                };
                Props::new().s("driver", driver).s("id", id)
            }
            ControllerModel::Ide => {
                if c.index == 0 && self.family == MachineFamily::I440fx {
                    return Ok(());
                }
                return Err(unsupported(format!(
                    "{what}: only the IDE controller built into pc machines exists"
                )));
            }
            ControllerModel::Sata => {
                if c.index == 0 && self.family == MachineFamily::Q35 {
                    return Ok(());
                }
                Props::new().s("driver", "ahci").s("id", id)
            }
        };
        let props = self.pci_address(props, &c.info, &what)?;
        self.device(props, &what)
    }

    fn disks(&mut self) -> R {
        let disks: Vec<(usize, Disk)> = self.devices_of(|d| match d {
            Device::Disk(disk) => Some(disk),
            _ => None,
        });
        let total = disks.len();
        for (n, (i, disk)) in disks.into_iter().enumerate() {
            self.disk(i, total - n, &disk)?;
        }
        Ok(())
    }

    fn disk(&mut self, i: usize, node_index: usize, disk: &Disk) -> R {
        let what = self.where_(i);
        let alias = disk
            .info
            .alias
            .clone()
            .ok_or_else(|| unsupported(format!("{what}: cannot name the disk (no bus or address)")))?;
        let cdrom = disk.device == DiskDevice::Cdrom;
        let readonly = disk.readonly || cdrom;
        // The host side: (path, is a block device, format).
        let source = match &disk.source {
            None => None,
            Some(DiskSource::File(path)) => {
                Some((path.clone(), false, disk.driver.format.unwrap_or(DiskFormat::Raw)))
            }
            Some(DiskSource::Block(dev)) => {
                Some((dev.clone(), true, disk.driver.format.unwrap_or(DiskFormat::Raw)))
            }
            Some(DiskSource::Volume { pool, volume }) => {
                let Some(resolved) = self.resources.disks.get(&disk.target) else {
                    return Err(CommandError::Unresolved(format!(
                        "{what}: volume '{volume}' of pool '{pool}' has not been resolved to a path"
                    )));
                };
                Some((
                    resolved.path.to_string_lossy().into_owned(),
                    resolved.block,
                    resolved.format,
                ))
            }
        };
        if source.is_none() && !cdrom {
            return Err(unsupported(format!(
                "{what}: a disk needs a source (only a CD-ROM may be empty)"
            )));
        }
        let cache = disk.driver.cache.map(|c| {
            let (direct, no_flush) = match c {
                DiskCache::None => (true, false),
                DiskCache::Writethrough | DiskCache::Writeback => (false, false),
                DiskCache::Directsync => (true, false),
                DiskCache::Unsafe => (false, true),
            };
            Props::new().b("direct", direct).b("no-flush", no_flush)
        });
        let write_cache = disk.driver.cache.map(|c| match c {
            DiskCache::None | DiskCache::Writeback | DiskCache::Unsafe => "on",
            DiskCache::Writethrough | DiskCache::Directsync => "off",
        });
        let discard = disk.driver.discard.map(|d| match d {
            DiskDiscard::Unmap => "unmap",
            DiskDiscard::Ignore => "ignore",
        });
        let mut drive = None;
        if let Some((path, block, format)) = source {
            let secret = self.resources.disk_secrets.get(&disk.target).cloned();
            let storage = format!("libvirt-{node_index}-storage");
            let format_node = format!("libvirt-{node_index}-format");
            let layered = format != DiskFormat::Raw || secret.is_some();
            if let Some(secret) = &secret {
                if self.resources.master_key.is_none() {
                    return Err(CommandError::Unresolved(format!(
                        "{what}: the LUKS passphrase is encrypted with the master key, which was not provided"
                    )));
                }
                self.need_type("secret", &what)?;
                let props = Props::new()
                    .s("qom-type", "secret")
                    .s("id", secret.id.clone())
                    .s("data", secret.data_base64.clone())
                    .s("keyid", MASTER_KEY_ID)
                    .s("iv", secret.iv_base64.clone())
                    .s("format", "base64");
                self.json("-object", &props);
            }
            // A real CD-ROM drive (which the driver probed) gets media change detection.
            let driver = match (block, cdrom && self.resources.host_cdroms.contains(&disk.target)) {
                (false, _) => "file",
                (true, true) => "host_cdrom",
                (true, false) => "host_device",
            };
            let aio = disk.driver.io.map(|io| match io {
                DiskIo::Threads => "threads",
                DiskIo::Native => "native",
                DiskIo::IoUring => "io_uring",
            });
            let mut sp = Props::new()
                .s("driver", driver)
                .s("filename", path)
                .opt_s("aio", aio)
                .s("node-name", storage.clone());
            if layered {
                sp = sp.b("auto-read-only", true).s("discard", "unmap");
            } else {
                sp = sp.b("read-only", readonly).opt_s("discard", discard);
            }
            if let Some(c) = &cache {
                sp = sp.o("cache", c.clone());
            }
            self.json("-blockdev", &sp);
            if layered {
                let mut fp = Props::new()
                    .s("node-name", format_node.clone())
                    .b("read-only", readonly)
                    .opt_s("discard", discard);
                if let Some(c) = &cache {
                    fp = fp.o("cache", c.clone());
                }
                fp = match (format, &secret) {
                    (DiskFormat::Raw, Some(s)) => fp.s("driver", "luks").s("key-secret", s.id.clone()),
                    (DiskFormat::Raw, None) => fp.s("driver", "raw"),
                    (DiskFormat::Qcow2, Some(s)) => fp.s("driver", "qcow2").o(
                        "encrypt",
                        Props::new().s("format", "luks").s("key-secret", s.id.clone()),
                    ),
                    (DiskFormat::Qcow2, None) => fp.s("driver", "qcow2"),
                };
                fp = fp.s("file", storage);
                self.json("-blockdev", &fp);
                drive = Some(format_node);
            } else {
                drive = Some(storage);
            }
        }
        let bus = disk
            .bus
            .ok_or_else(|| unsupported(format!("{what}: the disk has no bus")))?;
        let drive_addr = match &disk.info.address {
            Some(Address::Drive(d)) => Some(*d),
            _ => None,
        };
        let need_drive_addr = || unsupported(format!("{what}: the disk has no drive address"));
        let mut p = match bus {
            DiskBus::Virtio => {
                if cdrom {
                    return Err(unsupported(format!(
                        "{what}: a CD-ROM cannot be on the virtio bus"
                    )));
                }
                let p = Props::new().s("driver", "virtio-blk-pci");
                self.pci_address(p, &disk.info, &what)?
            }
            DiskBus::Ide => {
                let d = drive_addr.ok_or_else(need_drive_addr)?;
                let ctrl = self.drive_controller(ControllerType::Ide, d.controller, &what)?;
                Props::new()
                    .s("driver", if cdrom { "ide-cd" } else { "ide-hd" })
                    .s("bus", format!("{ctrl}.{}", d.bus))
                    .n("unit", u64::from(d.unit))
            }
            DiskBus::Sata => {
                let d = drive_addr.ok_or_else(need_drive_addr)?;
                let ctrl = self.drive_controller(ControllerType::Sata, d.controller, &what)?;
                Props::new()
                    .s("driver", if cdrom { "ide-cd" } else { "ide-hd" })
                    .s("bus", format!("{ctrl}.{}", d.unit))
            }
            DiskBus::Scsi => {
                let d = drive_addr.ok_or_else(need_drive_addr)?;
                let ctrl = self.drive_controller(ControllerType::Scsi, d.controller, &what)?;
                let model = self
                    .def
                    .devices
                    .controller(ControllerType::Scsi, d.controller)
                    .and_then(|c| match c.model {
                        ControllerModel::Scsi(m) => m,
                        _ => None,
                    });
                let mut p = Props::new()
                    .s("driver", if cdrom { "scsi-cd" } else { "scsi-hd" })
                    .s("bus", format!("{ctrl}.0"));
                if scsi_short_address(model) {
                    if d.bus != 0 || d.target != 0 {
                        return Err(unsupported(format!(
                            "{what}: an lsilogic controller has one bus and one target"
                        )));
                    }
                    p = p.n("scsi-id", u64::from(d.unit));
                } else {
                    p = p
                        .n("channel", u64::from(d.bus))
                        .n("scsi-id", u64::from(d.target))
                        .n("lun", u64::from(d.unit));
                }
                if !cdrom {
                    p = p.s("device_id", format!("drive-{alias}"));
                }
                p
            }
        };
        if disk.shareable {
            p = p.b("share-rw", true);
        }
        p = p.opt_s("drive", drive).s("id", alias);
        if let Some(index) = self.boot_index.get(&i) {
            p = p.n("bootindex", u64::from(*index));
        }
        p = p.opt_s("write-cache", write_cache);
        self.device(p, &what)
    }

    /// The QEMU bus prefix of a drive controller, checking it exists.
    fn drive_controller(&self, kind: ControllerType, index: u32, what: &str) -> R<String> {
        let c = self.def.devices.controller(kind, index).ok_or_else(|| {
            unsupported(format!(
                "{what}: there is no {kind} controller with index {index}"
            ))
        })?;
        Ok(c.info
            .alias
            .clone()
            .unwrap_or_else(|| controller_alias(self.family, c.model, c.index)))
    }

    fn interfaces(&mut self) -> R {
        let nets: Vec<(usize, rvirt_conf::domain::Interface)> = self.devices_of(|d| match d {
            Device::Interface(n) => Some(n),
            _ => None,
        });
        for (k, (i, net)) in nets.into_iter().enumerate() {
            let what = self.where_(i);
            let alias = net.info.alias.clone().unwrap_or_else(|| format!("net{k}"));
            let hostnet = format!("host{alias}");
            let backend = match &net.source {
                InterfaceSource::User => Props::new().s("type", "user").s("id", hostnet.clone()),
                InterfaceSource::Network(_) | InterfaceSource::Bridge(_) => {
                    match self.resources.interfaces.get(&k) {
                        Some(NetBackend::TapFd { fd, .. }) => Props::new()
                            .s("type", "tap")
                            .s("fd", fd.to_string())
                            .s("id", hostnet.clone()),
                        None => {
                            let source = match &net.source {
                                InterfaceSource::Network(n) => format!("network '{n}'"),
                                InterfaceSource::Bridge(b) => format!("bridge '{b}'"),
                                InterfaceSource::User => String::new(),
                            };
                            return Err(CommandError::Unresolved(format!(
                                "{what} ({alias}): no tap device was prepared for the interface on {source}"
                            )));
                        }
                    }
                }
            };
            self.json("-netdev", &backend);
            let driver = match net.model.unwrap_or(NetModel::Rtl8139) {
                NetModel::Virtio => "virtio-net-pci",
                NetModel::VirtioTransitional => "virtio-net-pci-transitional",
                NetModel::VirtioNonTransitional => "virtio-net-pci-non-transitional",
                NetModel::E1000 => "e1000",
                NetModel::E1000e => "e1000e",
                NetModel::Igb => "igb",
                NetModel::Rtl8139 => "rtl8139",
                NetModel::Ne2kPci => "ne2k_pci",
                NetModel::Pcnet => "pcnet",
                NetModel::Vmxnet3 => "vmxnet3",
            };
            let p = Props::new()
                .s("driver", driver)
                .s("netdev", hostnet)
                .s("id", alias)
                .s("mac", net.mac.clone());
            let mut p = self.pci_address(p, &net.info, &what)?;
            if let Some(index) = self.boot_index.get(&i) {
                p = p.n("bootindex", u64::from(*index));
            }
            self.device(p, &what)?;
        }
        Ok(())
    }

    /// The `-chardev` value for `source` with `id`; `alias` names a socket without a path.
    fn chardev(&self, id: &str, alias: &str, source: &ChrSource, what: &str) -> R<String> {
        Ok(match source {
            ChrSource::Pty { .. } => format!("pty,id={id}"),
            ChrSource::File { path, append } => {
                let mut t = format!("file,id={id},path={}", escape(path));
                match append {
                    Some(true) => t.push_str(",append=on"),
                    Some(false) => t.push_str(",append=off"),
                    None => {}
                }
                t
            }
            ChrSource::Unix { mode, path } => {
                let path = match path {
                    Some(p) => p.clone(),
                    None => default_unix_socket(self.runtime_dir, alias)
                        .to_string_lossy()
                        .into_owned(),
                };
                let mut t = format!("socket,id={id},path={}", escape(&path));
                if *mode == ChrMode::Bind {
                    t.push_str(",server=on,wait=off");
                }
                t
            }
            ChrSource::Tcp {
                mode,
                host,
                service,
                protocol,
            } => {
                let mut t = format!("socket,id={id}");
                if let Some(h) = host {
                    t.push_str(&format!(",host={}", escape(h)));
                }
                t.push_str(&format!(",port={}", escape(service)));
                match protocol {
                    ChrProtocol::Raw => {}
                    ChrProtocol::Telnet => t.push_str(",telnet=on"),
                    ChrProtocol::Telnets | ChrProtocol::Tls => {
                        return Err(unsupported(format!(
                            "{what}: TLS on a TCP character device is not supported"
                        )));
                    }
                }
                if *mode == ChrMode::Bind {
                    t.push_str(",server=on,wait=off");
                }
                t
            }
        })
    }

    fn serials(&mut self) -> R {
        let serials: Vec<(usize, rvirt_conf::domain::Chardev)> = self.devices_of(|d| match d {
            Device::Serial(c) => Some(c),
            _ => None,
        });
        for (k, (i, s)) in serials.into_iter().enumerate() {
            let what = self.where_(i);
            let alias = s.info.alias.clone().unwrap_or_else(|| format!("serial{k}"));
            let id = format!("char{alias}");
            let chardev = self.chardev(&id, &alias, &s.source, &what)?;
            self.push("-chardev", chardev);
            let port = s.port.unwrap_or(k as u32);
            let p = Props::new()
                .s("driver", "isa-serial")
                .s("chardev", id)
                .s("id", alias)
                .n("index", u64::from(port));
            self.device(p, &what)?;
        }
        // A console is the first serial port under another name: nothing more to add.
        Ok(())
    }

    fn inputs(&mut self) -> R {
        let inputs: Vec<(usize, rvirt_conf::domain::Input)> = self.devices_of(|d| match d {
            Device::Input(x) => Some(x),
            _ => None,
        });
        for (k, (i, input)) in inputs.into_iter().enumerate() {
            let what = self.where_(i);
            let alias = input.info.alias.clone().unwrap_or_else(|| format!("input{k}"));
            match input.bus {
                None | Some(InputBus::Ps2) => {
                    if !self.family.is_pc() {
                        return Err(unsupported(format!(
                            "{what}: this machine has no PS/2 controller"
                        )));
                    }
                }
                Some(InputBus::Usb) => {
                    let driver = match input.input_type {
                        InputType::Mouse => "usb-mouse",
                        InputType::Keyboard => "usb-kbd",
                        InputType::Tablet => "usb-tablet",
                    };
                    let mut p = Props::new().s("driver", driver).s("id", alias);
                    match &input.info.address {
                        Some(Address::Usb(u)) => {
                            let c = self.drive_controller(ControllerType::Usb, u.bus, &what)?;
                            p = p.s("bus", format!("{c}.0")).opt_s("port", u.port.clone());
                        }
                        None => {}
                        Some(_) => {
                            return Err(unsupported(format!(
                                "{what}: a USB device takes a USB address only"
                            )));
                        }
                    }
                    self.device(p, &what)?;
                }
                Some(InputBus::Virtio) => {
                    let driver = match input.input_type {
                        InputType::Mouse => "virtio-mouse-pci",
                        InputType::Keyboard => "virtio-keyboard-pci",
                        InputType::Tablet => "virtio-tablet-pci",
                    };
                    let p = Props::new().s("driver", driver).s("id", alias);
                    let p = self.pci_address(p, &input.info, &what)?;
                    self.device(p, &what)?;
                }
            }
        }
        Ok(())
    }

    fn audio(&mut self) -> R {
        let audios: Vec<_> = self.def.devices.audios().cloned().collect();
        for a in audios {
            let p = Props::new()
                .s("id", format!("audio{}", a.id))
                .s("driver", a.audio_type.as_str());
            self.json("-audiodev", &p);
        }
        Ok(())
    }

    fn graphics(&mut self) -> R {
        let audio = self.def.devices.audios().next().map(|a| format!("audio{}", a.id));
        let graphics: Vec<_> = self.def.devices.graphics().cloned().collect();
        for (k, g) in graphics.into_iter().enumerate() {
            let what = format!("/domain/devices/graphics[{}]", k + 1);
            let port = if g.autoport {
                self.resources.graphics_ports.get(&k).copied()
            } else {
                g.port.or_else(|| self.resources.graphics_ports.get(&k).copied())
            };
            match g.graphics_type {
                GraphicsType::Vnc => {
                    let mut text = match &g.listen {
                        Some(Listen::None) => "none".to_string(),
                        Some(Listen::Socket(path)) => {
                            let path = match path {
                                Some(p) => p.clone(),
                                None => self.runtime_dir.join("vnc.sock").to_string_lossy().into_owned(),
                            };
                            format!("vnc=unix:{}", escape(&path))
                        }
                        None | Some(Listen::Address(_)) => {
                            let addr = match &g.listen {
                                Some(Listen::Address(Some(a))) => a.clone(),
                                _ => "127.0.0.1".into(),
                            };
                            let addr = if addr.contains(':') {
                                format!("[{addr}]")
                            } else {
                                addr
                            };
                            match port {
                                Some(p) if p >= 5900 => format!("{}:{}", escape(&addr), p - 5900),
                                Some(p) => {
                                    return Err(unsupported(format!(
                                        "{what}: VNC port {p} is below 5900, the first display"
                                    )));
                                }
                                // QEMU takes the first free display itself; the driver reads
                                // the port back with query-vnc.
                                None => format!("{}:0,to=99", escape(&addr)),
                            }
                        }
                    };
                    if let Some(a) = &audio {
                        text.push_str(&format!(",audiodev={a}"));
                    }
                    self.push("-vnc", text);
                }
                GraphicsType::Spice => {
                    let mut text = match &g.listen {
                        Some(Listen::None) => "port=0".to_string(),
                        Some(Listen::Socket(path)) => {
                            let path = match path {
                                Some(p) => p.clone(),
                                None => self.runtime_dir.join("spice.sock").to_string_lossy().into_owned(),
                            };
                            format!("unix=on,addr={}", escape(&path))
                        }
                        None | Some(Listen::Address(_)) => {
                            let Some(port) = port else {
                                return Err(CommandError::Unresolved(format!(
                                    "{what}: no port was chosen for the SPICE server (autoport)"
                                )));
                            };
                            let addr = match &g.listen {
                                Some(Listen::Address(Some(a))) => a.clone(),
                                _ => "127.0.0.1".into(),
                            };
                            format!("port={port},addr={}", escape(&addr))
                        }
                    };
                    // No password support: a listening server is open to whoever connects
                    // (QEMU wants that said explicitly).
                    if !text.starts_with("port=0") {
                        text.push_str(",disable-ticketing=on");
                    }
                    text.push_str(",seamless-migration=on");
                    self.push("-spice", text);
                }
            }
        }
        Ok(())
    }

    fn videos(&mut self) -> R {
        let videos: Vec<(usize, rvirt_conf::domain::Video)> = self.devices_of(|d| match d {
            Device::Video(v) => Some(v),
            _ => None,
        });
        for (k, (i, v)) in videos.into_iter().enumerate() {
            let what = self.where_(i);
            let primary = k == 0;
            let alias = v.info.alias.clone().unwrap_or_else(|| format!("video{k}"));
            let mb = |kib: Option<u32>| kib.map(|k| u64::from(k / 1024));
            let p = match v.model {
                VideoModel::None => continue,
                VideoModel::Cirrus if primary => Props::new().s("driver", "cirrus-vga").s("id", alias),
                VideoModel::Vga if primary => Props::new()
                    .s("driver", "VGA")
                    .s("id", alias)
                    .opt_n("vgamem_mb", mb(v.vram)),
                VideoModel::Vmvga if primary => Props::new()
                    .s("driver", "vmware-svga")
                    .s("id", alias)
                    .opt_n("vgamem_mb", mb(v.vram)),
                VideoModel::Bochs if primary => Props::new()
                    .s("driver", "bochs-display")
                    .s("id", alias)
                    .opt_n("vgamem", v.vram.map(|k| u64::from(k) * 1024)),
                VideoModel::Ramfb if primary => {
                    let p = Props::new().s("driver", "ramfb").s("id", alias);
                    self.device(p, &what)?;
                    continue;
                }
                VideoModel::Qxl => Props::new()
                    .s("driver", if primary { "qxl-vga" } else { "qxl" })
                    .s("id", alias)
                    .opt_n("max_outputs", v.heads.map(u64::from))
                    .opt_n("ram_size", v.ram.map(|k| u64::from(k) * 1024))
                    .opt_n("vram_size", v.vram.map(|k| u64::from(k) * 1024))
                    .n("vram64_size_mb", 0)
                    .opt_n("vgamem_mb", mb(v.vgamem)),
                VideoModel::Virtio => {
                    let driver = if primary && self.target.emulator.has_type("virtio-vga") {
                        "virtio-vga"
                    } else {
                        "virtio-gpu-pci"
                    };
                    Props::new()
                        .s("driver", driver)
                        .s("id", alias)
                        .opt_n("max_outputs", v.heads.map(u64::from))
                }
                other => {
                    return Err(unsupported(format!(
                        "{what}: a '{other}' video device can only be the primary one"
                    )));
                }
            };
            let p = self.pci_address(p, &v.info, &what)?;
            self.device(p, &what)?;
        }
        Ok(())
    }

    fn watchdogs(&mut self) -> R {
        let dogs: Vec<(usize, rvirt_conf::domain::Watchdog)> = self.devices_of(|d| match d {
            Device::Watchdog(w) => Some(w),
            _ => None,
        });
        let mut action: Option<WatchdogAction> = None;
        for (i, w) in dogs {
            let what = self.where_(i);
            if let Some(a) = action
                && a != w.action
            {
                return Err(unsupported(format!(
                    "{what}: every watchdog must have the same action (QEMU has one)"
                )));
            }
            action = Some(w.action);
            let alias = w.info.alias.clone().unwrap_or_else(|| "watchdog0".into());
            match w.model {
                WatchdogModel::Itco => {
                    if self.family != MachineFamily::Q35 {
                        return Err(unsupported(format!(
                            "{what}: the itco watchdog exists on q35 only"
                        )));
                    }
                    self.push("-global", "ICH9-LPC.noreboot=off");
                }
                WatchdogModel::I6300esb => {
                    let p = Props::new().s("driver", "i6300esb").s("id", alias);
                    let p = self.pci_address(p, &w.info, &what)?;
                    self.device(p, &what)?;
                }
                WatchdogModel::Ib700 => {
                    self.device(Props::new().s("driver", "ib700").s("id", alias), &what)?;
                }
            }
        }
        if let Some(a) = action {
            let text = match a {
                WatchdogAction::Reset => "reset",
                WatchdogAction::Shutdown => "shutdown",
                WatchdogAction::Poweroff => "poweroff",
                // libvirt dumps core itself, with the guest paused.
                WatchdogAction::Pause | WatchdogAction::Dump => "pause",
                WatchdogAction::None => "none",
                WatchdogAction::InjectNmi => "inject-nmi",
            };
            self.push("-watchdog-action", text);
        }
        Ok(())
    }

    fn memballoon(&mut self) -> R {
        let Some(index) = self
            .def
            .devices
            .list
            .iter()
            .position(|d| matches!(d, Device::Memballoon(_)))
        else {
            return Ok(());
        };
        let Device::Memballoon(m) = self.def.devices.list[index].clone() else {
            return Ok(());
        };
        let what = self.where_(index);
        let driver = match m.model {
            MemballoonModel::None => return Ok(()),
            MemballoonModel::Virtio => "virtio-balloon-pci",
            MemballoonModel::VirtioTransitional => "virtio-balloon-pci-transitional",
            MemballoonModel::VirtioNonTransitional => "virtio-balloon-pci-non-transitional",
        };
        let alias = m.info.alias.clone().unwrap_or_else(|| "balloon0".into());
        let p = Props::new().s("driver", driver).s("id", alias);
        let p = self.pci_address(p, &m.info, &what)?;
        self.device(p, &what)
    }

    fn rngs(&mut self) -> R {
        let rngs: Vec<(usize, rvirt_conf::domain::Rng)> = self.devices_of(|d| match d {
            Device::Rng(r) => Some(r),
            _ => None,
        });
        for (k, (i, r)) in rngs.into_iter().enumerate() {
            let what = self.where_(i);
            let alias = r.info.alias.clone().unwrap_or_else(|| format!("rng{k}"));
            let object = format!("obj{alias}");
            match &r.backend {
                RngBackend::Random(path) => {
                    self.need_type("rng-random", &what)?;
                    let p = Props::new()
                        .s("qom-type", "rng-random")
                        .s("id", object.clone())
                        .s("filename", path.clone().unwrap_or_else(|| "/dev/random".into()));
                    self.json("-object", &p);
                }
                RngBackend::Egd(source) => {
                    self.need_type("rng-egd", &what)?;
                    let chardev_id = format!("char{alias}");
                    let chardev = self.chardev(&chardev_id, &alias, source, &what)?;
                    self.push("-chardev", chardev);
                    let p = Props::new()
                        .s("qom-type", "rng-egd")
                        .s("id", object.clone())
                        .s("chardev", chardev_id);
                    self.json("-object", &p);
                }
            }
            let driver = match r.model {
                RngModel::Virtio => "virtio-rng-pci",
                RngModel::VirtioTransitional => "virtio-rng-pci-transitional",
                RngModel::VirtioNonTransitional => "virtio-rng-pci-non-transitional",
            };
            let p = Props::new().s("driver", driver).s("rng", object).s("id", alias);
            let p = self.pci_address(p, &r.info, &what)?;
            self.device(p, &what)?;
        }
        Ok(())
    }
}

/// `kib` rounded up to a whole MiB.
fn align_mib(kib: u64) -> R<u64> {
    kib.checked_next_multiple_of(1024)
        .ok_or_else(|| unsupported("/domain/memory: the size is too large"))
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SS` (UTC), QEMU's `-rtc base=` syntax.
pub(crate) fn iso_datetime(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::iso_datetime;

    #[test]
    fn iso_datetime_matches_libvirts_mocked_clock() {
        // libvirt's tests pin the clock at 1234567890; clock-variable adds 123456 seconds.
        assert_eq!(iso_datetime(1_234_567_890 + 123_456), "2009-02-15T09:49:06");
        assert_eq!(iso_datetime(0), "1970-01-01T00:00:00");
    }
}
