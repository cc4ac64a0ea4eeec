//! Device addresses libvirt assigns at define time, so the guest sees the same hardware on every
//! start: drive addresses for IDE/SATA/SCSI disks, PCI slots for pc (i440FX) and q35 machines,
//! USB ports.
//!
//! PCI assignment follows libvirt's `qemu_domain_address.c`: the chipset's fixed devices first
//! (PIIX3 IDE and USB at 00:01.1/00:01.2 and the first video at 00:02.0 on pc; AHCI at 00:1f.2
//! and the first video at 00:01.0 on q35), then devices in libvirt's order (PCI controllers,
//! interfaces, other controllers, virtio disks, balloon, RNG, watchdog, video, virtio input),
//! each in the first free slot of the first bus that accepts it. A dry run first finds out which
//! buses are missing — a `pcie-root-port` per PCI Express device on q35 (plus one spare for
//! hotplug in a new definition), a `pcie-to-pci-bridge` for legacy PCI devices there, a
//! `pci-bridge` when a pc's bus is full — and adds those controllers.

use std::collections::{BTreeMap, HashSet};

use super::machine::{self, MachineFamily, QemuDefaults};
use super::model::*;
use crate::xml::{XmlError, XmlErrorKind};

/// The index of a disk target name (`sda` → 0, `hdc` → 2, `vdaa` → 26), as libvirt computes it.
pub fn disk_name_index(target: &str) -> Option<u32> {
    let letters = ["hd", "sd", "vd", "fd", "xvd", "ubd"]
        .iter()
        .find_map(|p| target.strip_prefix(p))?;
    if letters.is_empty() || letters.len() > 6 || !letters.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    let mut index: u32 = 0;
    for (i, b) in letters.bytes().enumerate() {
        index = (index + u32::from(i > 0)) * 26 + u32::from(b - b'a');
    }
    Some(index)
}

/// Gives a disk without an address the drive address its target name implies (libvirt's
/// `virDomainDiskDefAssignAddress`): two units per IDE bus and two buses per controller, six
/// SATA units per controller, seven SCSI units per controller.
pub(crate) fn assign_drive_address(disk: &mut Disk) -> Result<(), XmlError> {
    let (per_controller, per_bus) = match disk.bus {
        Some(DiskBus::Ide) => (4, 2),
        Some(DiskBus::Sata) => (6, 6),
        Some(DiskBus::Scsi) => (7, 7),
        _ => return Ok(()),
    };
    let index = disk_name_index(&disk.target).ok_or_else(|| {
        XmlError::invalid(
            "/domain/devices/disk/target/@dev",
            format!("unknown disk name '{}' and no address specified", disk.target),
        )
    })?;
    disk.info.address = Some(Address::Drive(DriveAddress {
        controller: index / per_controller,
        bus: (index % per_controller) / per_bus,
        target: 0,
        unit: index % per_bus,
    }));
    Ok(())
}

// How a device (or bus) connects, as libvirt's `virDomainPCIConnectFlags`.
const PCI_DEVICE: u32 = 1;
const PCIE_DEVICE: u32 = 1 << 1;
const PCI_BRIDGE: u32 = 1 << 2;
const PCIE_ROOT_PORT: u32 = 1 << 3;
const DMI_TO_PCI_BRIDGE: u32 = 1 << 4;
const PCIE_TO_PCI_BRIDGE: u32 = 1 << 5;
const TYPES: u32 = 0x3f;
const ENDPOINTS: u32 = PCI_DEVICE | PCIE_DEVICE;
const HOTPLUG: u32 = 1 << 6;
const AUTOASSIGN: u32 = 1 << 7;
const AGGREGATE: u32 = 1 << 8;

#[derive(Debug, Clone)]
struct Bus {
    model: PciModel,
    flags: u32,
    min_slot: u32,
    max_slot: u32,
    /// Functions in use, one bit each, per slot.
    functions: [u8; 32],
    aggregate: [bool; 32],
    /// Not in the definition yet: added by the assignment.
    added: bool,
}

impl Bus {
    fn new(model: PciModel, added: bool) -> Self {
        let (flags, min_slot, max_slot) = match model {
            PciModel::PciRoot | PciModel::PciBridge => {
                (PCI_DEVICE | PCI_BRIDGE | AUTOASSIGN | HOTPLUG, 1, 31)
            }
            PciModel::PcieRoot => (PCIE_DEVICE | PCIE_ROOT_PORT | DMI_TO_PCI_BRIDGE, 1, 31),
            // Only bridges are plugged into a dmi-to-pci-bridge: no automatic placement.
            PciModel::DmiToPciBridge => (PCI_DEVICE | PCI_BRIDGE, 0, 31),
            PciModel::PcieRootPort => (PCIE_DEVICE | PCIE_TO_PCI_BRIDGE | AUTOASSIGN | HOTPLUG, 0, 0),
            PciModel::PcieToPciBridge => (PCI_DEVICE | PCI_BRIDGE | AUTOASSIGN | HOTPLUG, 1, 31),
        };
        Bus {
            model,
            flags,
            min_slot,
            max_slot,
            functions: [0; 32],
            aggregate: [false; 32],
            added,
        }
    }

    fn fully_reserved(&self) -> bool {
        (self.min_slot..=self.max_slot).all(|s| self.functions[s as usize] != 0)
    }
}

fn pci_string(a: &PciAddress) -> String {
    format!("{:04x}:{:02x}:{:02x}.{:x}", a.domain, a.bus, a.slot, a.function)
}

fn compatible(bus_flags: u32, dev_flags: u32, from_config: bool) -> bool {
    let mut bus = bus_flags;
    let mut dev = dev_flags;
    if from_config {
        if bus & ENDPOINTS != 0 {
            bus |= ENDPOINTS;
        }
        if dev & PCI_BRIDGE != 0 {
            dev |= PCI_DEVICE;
        }
    } else if dev & AUTOASSIGN != 0 && bus & AUTOASSIGN == 0 {
        return false;
    }
    dev & bus & TYPES != 0
}

#[derive(Debug)]
struct AddressSet {
    buses: Vec<Bus>,
    dry_run: bool,
    pcie_pci_bridge: bool,
}

impl AddressSet {
    fn reserve(&mut self, addr: &PciAddress, flags: u32, from_config: bool) -> Result<(), XmlError> {
        let text = || pci_string(addr);
        let Some(bus) = self.buses.get_mut(addr.bus as usize) else {
            return Err(XmlError::invalid(
                "/domain/devices",
                format!(
                    "PCI address {} is on bus {:#04x}, which has no PCI controller",
                    text(),
                    addr.bus
                ),
            ));
        };
        if addr.domain != 0 {
            return Err(XmlError::invalid(
                "/domain/devices",
                format!("PCI address {}: only PCI domain 0 exists", text()),
            ));
        }
        if addr.slot < bus.min_slot || addr.slot > bus.max_slot {
            return Err(XmlError::invalid(
                "/domain/devices",
                format!(
                    "PCI address {}: slot must be between {:#04x} and {:#04x} on a {} bus",
                    text(),
                    bus.min_slot,
                    bus.max_slot,
                    bus.model
                ),
            ));
        }
        if !compatible(bus.flags, flags, from_config) {
            return Err(XmlError::invalid(
                "/domain/devices",
                format!(
                    "PCI address {}: this device cannot be plugged into a {} bus",
                    text(),
                    bus.model
                ),
            ));
        }
        let slot = addr.slot as usize;
        let bit = 1u8 << addr.function;
        if bus.functions[slot] & bit != 0 {
            return Err(XmlError::invalid(
                "/domain/devices",
                format!("PCI address {} is used by more than one device", text()),
            ));
        }
        if bus.functions[slot] == 0 && flags & AGGREGATE != 0 {
            bus.aggregate[slot] = true;
        }
        bus.functions[slot] |= bit;
        Ok(())
    }

    fn slot_in_use(&self, addr: &PciAddress) -> bool {
        self.buses
            .get(addr.bus as usize)
            .is_some_and(|b| b.functions[addr.slot as usize] != 0)
    }

    /// The first free address for a device connecting with `flags`, reserved.
    fn reserve_next(&mut self, flags: u32) -> Result<PciAddress, XmlError> {
        for (index, bus) in self.buses.iter().enumerate() {
            if !compatible(bus.flags, flags, false) {
                continue;
            }
            for slot in bus.min_slot..=bus.max_slot {
                let used = bus.functions[slot as usize];
                let function = if flags & AGGREGATE != 0 && bus.aggregate[slot as usize] && used != 0xff {
                    Some(used.trailing_ones())
                } else if used == 0 {
                    Some(0)
                } else {
                    None
                };
                if let Some(function) = function {
                    let addr = PciAddress {
                        domain: 0,
                        bus: index as u32,
                        slot,
                        function,
                        multifunction: None,
                    };
                    self.reserve(&addr, flags, false)?;
                    return Ok(addr);
                }
            }
        }
        if !self.dry_run {
            return Err(XmlError::invalid(
                "/domain/devices",
                "no free PCI slot is left for a device",
            ));
        }
        let index = self.grow(flags)?;
        let addr = PciAddress {
            domain: 0,
            bus: index as u32,
            slot: self.buses[index].min_slot,
            function: 0,
            multifunction: None,
        };
        self.reserve(&addr, flags, false)?;
        Ok(addr)
    }

    /// Adds the buses a device with `flags` needs; returns the one it goes on.
    fn grow(&mut self, flags: u32) -> Result<usize, XmlError> {
        if self.buses.len() >= 256 {
            return Err(XmlError::invalid(
                "/domain/devices",
                "no free PCI bus is left for a device",
            ));
        }
        if flags & PCI_DEVICE != 0 {
            if self.buses.iter().any(|b| b.flags & PCI_BRIDGE != 0) {
                self.buses.push(Bus::new(PciModel::PciBridge, true));
            } else if self.pcie_pci_bridge {
                // This root port is for the bridge only (not for a spare hotplug slot).
                let mut port = Bus::new(PciModel::PcieRootPort, true);
                port.flags = PCIE_TO_PCI_BRIDGE;
                self.buses.push(port);
                self.buses.push(Bus::new(PciModel::PcieToPciBridge, true));
            } else {
                self.buses.push(Bus::new(PciModel::DmiToPciBridge, true));
                self.buses.push(Bus::new(PciModel::PciBridge, true));
            }
        } else if flags & PCIE_DEVICE != 0 {
            self.buses.push(Bus::new(PciModel::PcieRootPort, true));
        } else {
            return Err(XmlError::invalid(
                "/domain/devices",
                "no PCI bus accepts this device",
            ));
        }
        Ok(self.buses.len() - 1)
    }
}

/// The connect flags of every device (0: not a PCI device), for the definition's machine.
fn connect_flags(device: &Device, pcie: u32, virtio: u32) -> u32 {
    let pci = PCI_DEVICE | AUTOASSIGN;
    match device {
        Device::Controller(c) => match c.model {
            ControllerModel::Pci(Some(model)) => match model {
                PciModel::PciRoot | PciModel::PcieRoot => 0,
                PciModel::PciBridge => PCI_BRIDGE,
                PciModel::DmiToPciBridge => DMI_TO_PCI_BRIDGE,
                PciModel::PcieRootPort => PCIE_ROOT_PORT | AGGREGATE,
                PciModel::PcieToPciBridge => PCIE_TO_PCI_BRIDGE,
            },
            ControllerModel::Pci(None) => 0,
            ControllerModel::Sata | ControllerModel::Ide => pci,
            ControllerModel::Usb(model) => match model {
                Some(UsbModel::NecXhci | UsbModel::QemuXhci) => pcie,
                Some(UsbModel::None) => 0,
                _ => pci,
            },
            ControllerModel::Scsi(model) => match model {
                Some(ScsiModel::VirtioScsi | ScsiModel::VirtioNonTransitional) => virtio,
                None => 0,
                _ => pci,
            },
        },
        Device::Interface(net) => match net.model {
            Some(NetModel::Virtio | NetModel::VirtioNonTransitional) => virtio,
            Some(NetModel::E1000e | NetModel::Igb) | None => pcie,
            _ => pci,
        },
        Device::Disk(d) if d.bus == Some(DiskBus::Virtio) => virtio,
        Device::Memballoon(m) => match m.model {
            MemballoonModel::Virtio | MemballoonModel::VirtioNonTransitional => virtio,
            MemballoonModel::VirtioTransitional => pci,
            MemballoonModel::None => 0,
        },
        Device::Rng(r) => match r.model {
            RngModel::Virtio | RngModel::VirtioNonTransitional => virtio,
            RngModel::VirtioTransitional => pci,
        },
        Device::Watchdog(w) if w.model == WatchdogModel::I6300esb => pci,
        Device::Video(v) => match v.model {
            VideoModel::Virtio => virtio,
            VideoModel::Bochs => pcie,
            VideoModel::None | VideoModel::Ramfb => 0,
            _ => pci,
        },
        Device::Input(i) if i.bus == Some(InputBus::Virtio) => virtio,
        _ => 0,
    }
}

fn pci_present(info: &DeviceInfo) -> Option<PciAddress> {
    match &info.address {
        Some(Address::Pci(a)) if a.domain != 0 || a.bus != 0 || a.slot != 0 => Some(*a),
        _ => None,
    }
}

fn pci_wanted(info: &DeviceInfo) -> bool {
    match &info.address {
        None => true,
        Some(Address::Pci(a)) => a.domain == 0 && a.bus == 0 && a.slot == 0,
        Some(_) => false,
    }
}

struct Assigner<'a> {
    family: MachineFamily,
    defaults: &'a QemuDefaults,
    pcie: u32,
    virtio: u32,
}

impl Assigner<'_> {
    fn flags(&self, device: &Device) -> u32 {
        connect_flags(device, self.pcie, self.virtio)
    }

    /// An address set with a bus per PCI controller (`nbuses` at least) and every address the
    /// definition already has reserved.
    fn create(&self, def: &DomainDef, nbuses: usize, dry_run: bool) -> Result<AddressSet, XmlError> {
        let has_pcie_root = self.family == MachineFamily::Q35;
        let default_model = if has_pcie_root {
            PciModel::PcieRootPort
        } else {
            PciModel::PciBridge
        };
        let mut models: BTreeMap<usize, PciModel> = BTreeMap::new();
        for c in def.devices.controllers() {
            if let ControllerModel::Pci(Some(m)) = c.model {
                models.insert(c.index as usize, m);
            }
        }
        let root = machine::pci_root_model(self.family).unwrap_or(PciModel::PciRoot);
        let buses = (0..nbuses)
            .map(|i| match models.get(&i) {
                Some(m) => Bus::new(*m, false),
                None if i == 0 => Bus::new(root, false),
                None => Bus::new(default_model, true),
            })
            .collect();
        let mut set = AddressSet {
            buses,
            dry_run,
            pcie_pci_bridge: self.defaults.pcie_pci_bridge,
        };
        for device in &def.devices.list {
            let Some(info) = device.info() else { continue };
            let Some(addr) = pci_present(info) else { continue };
            // PIIX3's IDE and USB functions are reserved with the chipset.
            if let Device::Controller(c) = device
                && addr.bus == 0
                && addr.slot == 1
                && self.family == MachineFamily::I440fx
                && c.index == 0
                && ((c.kind() == ControllerType::Ide && addr.function == 1)
                    || (matches!(c.model, ControllerModel::Usb(Some(UsbModel::Piix3Uhci) | None))
                        && addr.function == 2))
            {
                continue;
            }
            let flags = match self.flags(device) {
                0 => PCI_DEVICE,
                f => f,
            };
            set.reserve(&addr, flags, true)?;
        }
        Ok(set)
    }

    /// The chipset's fixed devices.
    fn chipset(&self, def: &mut DomainDef, set: &mut AddressSet) -> Result<(), XmlError> {
        let fixed = |slot, function| PciAddress {
            domain: 0,
            bus: 0,
            slot,
            function,
            multifunction: None,
        };
        let pci = PCI_DEVICE | AUTOASSIGN;
        let (video_slot, video_flags) = match self.family {
            MachineFamily::I440fx => {
                for c in def.devices.controllers_mut() {
                    let want = match c.model {
                        ControllerModel::Ide if c.index == 0 => fixed(1, 1),
                        ControllerModel::Usb(Some(UsbModel::Piix3Uhci) | None) if c.index == 0 => fixed(1, 2),
                        _ => continue,
                    };
                    match pci_present(&c.info) {
                        Some(a) if a.bus != 0 || a.slot != 1 || a.function != want.function => {
                            return Err(XmlError::invalid(
                                "/domain/devices/controller/address",
                                format!(
                                    "the primary {} controller must have PCI address {}",
                                    c.kind(),
                                    pci_string(&want)
                                ),
                            ));
                        }
                        _ => c.info.address = Some(Address::Pci(want)),
                    }
                    set.reserve(&want, pci, false)?;
                }
                set.reserve(&fixed(1, 0), pci, false)?;
                set.reserve(&fixed(1, 3), pci, false)?;
                (2, pci)
            }
            MachineFamily::Q35 => {
                let sata = fixed(0x1f, 2);
                for c in def.devices.controllers_mut() {
                    if c.kind() == ControllerType::Sata && c.index == 0 {
                        match pci_present(&c.info) {
                            Some(a) if a != sata && (a.bus, a.slot, a.function) != (0, 0x1f, 2) => {
                                return Err(XmlError::invalid(
                                    "/domain/devices/controller/address",
                                    "the primary SATA controller must have PCI address 0000:00:1f.2",
                                ));
                            }
                            Some(_) => {}
                            None => {
                                c.info.address = Some(Address::Pci(sata));
                                set.reserve(&sata, PCIE_DEVICE, false)?;
                            }
                        }
                    }
                }
                for c in def.devices.controllers_mut() {
                    if c.model == ControllerModel::Pci(Some(PciModel::DmiToPciBridge))
                        && c.info.address.is_none()
                    {
                        let at = fixed(0x1e, 0);
                        if !set.slot_in_use(&at) {
                            set.reserve(&at, DMI_TO_PCI_BRIDGE, false)?;
                            c.info.address = Some(Address::Pci(at));
                        }
                    }
                }
                let mut lpc = fixed(0x1f, 0);
                lpc.multifunction = Some(true);
                set.reserve(&lpc, PCIE_DEVICE, true)?;
                set.reserve(&fixed(0x1f, 3), PCIE_DEVICE, true)?;
                (1, PCIE_DEVICE)
            }
            MachineFamily::Other => return Ok(()),
        };
        let dry_run = set.dry_run;
        if let Some(video) = def.devices.videos_mut().next()
            && !matches!(video.model, VideoModel::None | VideoModel::Ramfb)
            && pci_wanted(&video.info)
        {
            let at = fixed(video_slot, 0);
            if set.slot_in_use(&at) {
                let flags = connect_flags(&Device::Video(video.clone()), self.pcie, self.virtio);
                let next = set.reserve_next(flags)?;
                if !dry_run {
                    video.info.address = Some(Address::Pci(next));
                }
            } else {
                set.reserve(&at, video_flags, true)?;
                video.info.address = Some(Address::Pci(at));
            }
        }
        Ok(())
    }

    /// Every device still without a PCI address, in libvirt's order.
    fn assign_slots(&self, def: &mut DomainDef, set: &mut AddressSet) -> Result<(), XmlError> {
        let order: Vec<usize> = {
            let list = &def.devices.list;
            let pick = |f: &dyn Fn(&Device) -> bool| -> Vec<usize> {
                list.iter()
                    .enumerate()
                    .filter(|(_, d)| f(d))
                    .map(|(i, _)| i)
                    .collect()
            };
            let mut order = Vec::with_capacity(list.len());
            order.extend(pick(&|d| {
                matches!(d, Device::Controller(c) if c.kind() == ControllerType::Pci
                    && !matches!(c.model, ControllerModel::Pci(Some(PciModel::PciRoot | PciModel::PcieRoot))))
            }));
            order.extend(pick(&|d| matches!(d, Device::Interface(_))));
            order.extend(pick(&|d| {
                matches!(d, Device::Controller(c) if c.kind() != ControllerType::Pci
                    && c.model != ControllerModel::Usb(Some(UsbModel::None))
                    && !(c.kind() == ControllerType::Ide && c.index == 0))
            }));
            order.extend(pick(
                &|d| matches!(d, Device::Disk(disk) if disk.bus == Some(DiskBus::Virtio)),
            ));
            order.extend(pick(
                &|d| matches!(d, Device::Memballoon(m) if m.model != MemballoonModel::None),
            ));
            order.extend(pick(&|d| matches!(d, Device::Rng(_))));
            order.extend(pick(
                &|d| matches!(d, Device::Watchdog(w) if w.model == WatchdogModel::I6300esb),
            ));
            order.extend(pick(&|d| {
                matches!(d, Device::Video(v) if !matches!(v.model, VideoModel::None | VideoModel::Ramfb))
            }));
            order.extend(pick(
                &|d| matches!(d, Device::Input(i) if i.bus == Some(InputBus::Virtio)),
            ));
            order
        };
        for index in order {
            let device = &def.devices.list[index];
            let flags = self.flags(device);
            let wanted = device.info().is_some_and(pci_wanted);
            if flags == 0 || !wanted {
                continue;
            }
            let addr = set.reserve_next(flags)?;
            if !set.dry_run
                && let Some(info) = def.devices.list[index].info_mut()
            {
                info.address = Some(Address::Pci(addr));
            }
        }
        Ok(())
    }
}

/// Assigns PCI addresses (and adds the PCI controllers they need) for pc and q35 machines.
pub(crate) fn assign_pci_addresses(
    def: &mut DomainDef,
    family: MachineFamily,
    defaults: &QemuDefaults,
) -> Result<(), XmlError> {
    if !family.is_pc() {
        return Ok(());
    }
    let pcie = if family == MachineFamily::Q35 {
        PCIE_DEVICE | AUTOASSIGN
    } else {
        PCI_DEVICE | AUTOASSIGN
    };
    let assigner = Assigner {
        family,
        defaults,
        pcie,
        virtio: if defaults.virtio_pcie {
            pcie
        } else {
            PCI_DEVICE | AUTOASSIGN
        },
    };
    let max_index = def
        .devices
        .controllers()
        .filter(|c| c.kind() == ControllerType::Pci)
        .map(|c| c.index as usize)
        .max()
        .unwrap_or(0);
    if max_index > 255 {
        return Err(XmlError::invalid(
            "/domain/devices/controller",
            "a PCI controller index must be at most 255",
        ));
    }

    // Dry run: how many buses are needed?
    let mut set = assigner.create(def, max_index + 1, true)?;
    assigner.chipset(def, &mut set)?;
    if family == MachineFamily::I440fx && !set.buses.iter().all(Bus::fully_reserved) {
        // Keep a slot for a future bridge.
        set.reserve_next(PCI_DEVICE | AUTOASSIGN)?;
    }
    assigner.assign_slots(def, &mut set)?;
    if max_index == 0 && set.buses.len() > 1 && family == MachineFamily::Q35 {
        // A new definition whose topology libvirt manages gets one spare root port for hotplug.
        set.reserve_next(PCIE_DEVICE | AUTOASSIGN)?;
    }
    let mut i = 1;
    while i < set.buses.len() {
        if set.buses[i].added && def.devices.controller(ControllerType::Pci, i as u32).is_none() {
            let model = set.buses[i].model;
            let controller = Controller::new(ControllerModel::Pci(Some(model)), i as u32);
            let flags = connect_flags(&Device::Controller(controller.clone()), pcie, assigner.virtio);
            def.devices.insert_controller(controller);
            set.reserve_next(flags)?;
        }
        i += 1;
    }
    let nbuses = set.buses.len();

    // The real assignment.
    let mut set = assigner.create(def, nbuses, false)?;
    assigner.chipset(def, &mut set)?;
    assigner.assign_slots(def, &mut set)?;
    set_multifunction(def);
    for c in def.devices.controllers_mut() {
        let ControllerModel::Pci(Some(model)) = c.model else {
            continue;
        };
        if c.pci.model_name.is_none() {
            c.pci.model_name = machine::pci_model_name(model, defaults);
        }
        let addr = pci_present(&c.info);
        match model {
            PciModel::PciBridge => {
                if c.pci.chassis_nr.is_none() {
                    c.pci.chassis_nr = Some(c.index);
                }
                if let Some(a) = addr
                    && c.index <= a.bus
                {
                    return Err(XmlError::invalid(
                        "/domain/devices/controller/@index",
                        format!(
                            "the PCI controller with index {} is on bus {:#04x}: its index must be larger than its bus",
                            c.index, a.bus
                        ),
                    ));
                }
            }
            PciModel::PcieRootPort => {
                if c.pci.chassis.is_none() {
                    c.pci.chassis = Some(c.index);
                }
                if c.pci.port.is_none()
                    && let Some(a) = addr
                {
                    c.pci.port = Some((a.slot << 3) + a.function);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Sets `multifunction='on'` on function 0 of every slot with more than one function in use.
fn set_multifunction(def: &mut DomainDef) {
    let mut multi: HashSet<(u32, u32, u32)> = HashSet::new();
    for device in &def.devices.list {
        if let Some(a) = device.info().and_then(pci_present)
            && a.function != 0
        {
            multi.insert((a.domain, a.bus, a.slot));
        }
    }
    for device in &mut def.devices.list {
        if let Some(info) = device.info_mut()
            && let Some(Address::Pci(a)) = &mut info.address
            && a.function == 0
            && a.multifunction.is_none()
            && multi.contains(&(a.domain, a.bus, a.slot))
        {
            a.multifunction = Some(true);
        }
    }
}

/// The number of ports a USB controller model provides (libvirt's defaults).
pub fn usb_ports(model: UsbModel) -> u32 {
    match model {
        UsbModel::Piix3Uhci | UsbModel::Piix4Uhci | UsbModel::Vt82c686bUhci => 2,
        UsbModel::PciOhci => 3,
        UsbModel::Ehci | UsbModel::Ich9Ehci1 => 6,
        UsbModel::NecXhci | UsbModel::QemuXhci => 4,
        UsbModel::None => 0,
    }
}

/// Gives USB input devices without an address a port on the first USB controller.
pub(crate) fn assign_usb_addresses(def: &mut DomainDef) -> Result<(), XmlError> {
    let wants = def
        .devices
        .inputs()
        .any(|i| i.bus == Some(InputBus::Usb) && i.info.address.is_none());
    if !wants {
        return Ok(());
    }
    let model = match def.devices.controller(ControllerType::Usb, 0).map(|c| c.model) {
        Some(ControllerModel::Usb(Some(m))) if m != UsbModel::None => m,
        _ => {
            return Err(XmlError::invalid(
                "/domain/devices/input",
                "USB is disabled for this domain, but USB devices are present",
            ));
        }
    };
    let ports = usb_ports(model);
    let mut used: HashSet<u32> = HashSet::new();
    for input in def.devices.inputs() {
        if let Some(Address::Usb(a)) = &input.info.address
            && a.bus == 0
            && let Some(first) = a.port.as_deref().and_then(|p| p.split('.').next())
            && let Ok(n) = first.parse::<u32>()
        {
            used.insert(n);
        }
    }
    for input in def.devices.inputs_mut() {
        if input.bus != Some(InputBus::Usb) || input.info.address.is_some() {
            continue;
        }
        let Some(port) = (1..=ports).find(|p| !used.contains(p)) else {
            return Err(XmlError {
                kind: XmlErrorKind::Unsupported,
                path: "/domain/devices/input".into(),
                message: format!(
                    "the USB controller has {ports} ports and more USB devices need one: USB hubs are not supported"
                ),
            });
        };
        used.insert(port);
        input.info.address = Some(Address::Usb(UsbAddress {
            bus: 0,
            port: Some(port.to_string()),
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names_index_like_libvirt() {
        assert_eq!(disk_name_index("sda"), Some(0));
        assert_eq!(disk_name_index("hdc"), Some(2));
        assert_eq!(disk_name_index("vdz"), Some(25));
        assert_eq!(disk_name_index("vdaa"), Some(26));
        assert_eq!(disk_name_index("sdab"), Some(27));
        assert_eq!(disk_name_index("sda1"), None);
        assert_eq!(disk_name_index("foo"), None);
        assert_eq!(disk_name_index("sd"), None);
    }

    #[test]
    fn aggregate_root_ports_share_a_slot() {
        let mut set = AddressSet {
            buses: vec![Bus::new(PciModel::PcieRoot, false)],
            dry_run: false,
            pcie_pci_bridge: true,
        };
        let a = set.reserve_next(PCIE_ROOT_PORT | AGGREGATE).expect("first");
        let b = set.reserve_next(PCIE_ROOT_PORT | AGGREGATE).expect("second");
        assert_eq!((a.slot, a.function), (1, 0));
        assert_eq!((b.slot, b.function), (1, 1));
        // Endpoints are never auto-placed on pcie-root.
        assert!(set.reserve_next(PCIE_DEVICE | AUTOASSIGN).is_err());
    }
}
