//! Device aliases as libvirt's QEMU driver assigns them at start (`virtio-disk0`, `sata0-0-0`,
//! `net0`, `pci.1`, `usb`, ...): QEMU's device ids, and the `<alias name>` of the live XML.

use rvirt_conf::domain::{
    Address, ControllerModel, ControllerType, Device, DiskBus, DomainDef, MachineFamily, ScsiModel,
    disk_name_index,
};

/// The alias of controller `kind`/`index` on a machine of `family`.
pub(crate) fn controller_alias(family: MachineFamily, model: ControllerModel, index: u32) -> String {
    match model {
        ControllerModel::Pci(_) if index == 0 => {
            if family == MachineFamily::Q35 {
                "pcie.0".into()
            } else {
                "pci.0".into()
            }
        }
        ControllerModel::Pci(_) => format!("pci.{index}"),
        // The chipset's own IDE (PIIX3) and AHCI (ICH9) controllers are QEMU's `ide`.
        ControllerModel::Ide if index == 0 => "ide".into(),
        ControllerModel::Sata if index == 0 && family == MachineFamily::Q35 => "ide".into(),
        ControllerModel::Usb(_) if index == 0 => "usb".into(),
        other => {
            let kind = match other {
                ControllerModel::Ide => ControllerType::Ide,
                ControllerModel::Sata => ControllerType::Sata,
                ControllerModel::Scsi(_) => ControllerType::Scsi,
                ControllerModel::Usb(_) => ControllerType::Usb,
                ControllerModel::Pci(_) => ControllerType::Pci,
            };
            format!("{kind}{index}")
        }
    }
}

/// Whether SCSI disks on a controller of this model are addressed without channel and LUN
/// (libvirt's `lsilogic` special case).
pub(crate) fn scsi_short_address(model: Option<ScsiModel>) -> bool {
    model == Some(ScsiModel::Lsilogic)
}

/// The alias libvirt gives a disk, from its bus, drive address and target name.
fn disk_alias(
    def: &DomainDef,
    bus: Option<DiskBus>,
    address: Option<&Address>,
    target: &str,
) -> Option<String> {
    let drive = match address {
        Some(Address::Drive(d)) => Some(*d),
        _ => None,
    };
    match bus? {
        DiskBus::Virtio => Some(format!("virtio-disk{}", disk_name_index(target)?)),
        DiskBus::Ide => drive.map(|d| format!("ide{}-{}-{}", d.controller, d.bus, d.unit)),
        DiskBus::Sata => drive.map(|d| format!("sata{}-{}-{}", d.controller, d.bus, d.unit)),
        DiskBus::Scsi => {
            let d = drive?;
            let model = def
                .devices
                .controller(ControllerType::Scsi, d.controller)
                .and_then(|c| match c.model {
                    ControllerModel::Scsi(m) => m,
                    _ => None,
                });
            if scsi_short_address(model) {
                Some(format!("scsi{}-{}-{}", d.controller, d.bus, d.unit))
            } else {
                Some(format!("scsi{}-{}-{}-{}", d.controller, d.bus, d.target, d.unit))
            }
        }
    }
}

/// Gives every device without an alias the one libvirt's QEMU driver would give it at start.
/// Aliases already set (user aliases `ua-*`, or a live definition's) are kept. Call it before
/// starting QEMU so that the live XML carries the ids QEMU knows the devices by.
pub fn assign_aliases(def: &mut DomainDef) {
    let family = def.machine_family();
    let mut computed: Vec<Option<String>> = Vec::with_capacity(def.devices.list.len());
    let (mut net, mut input, mut video, mut rng, mut watchdog, mut serial) = (0, 0, 0, 0, 0, 0);
    for device in &def.devices.list {
        let alias = match device {
            Device::Disk(d) => disk_alias(def, d.bus, d.info.address.as_ref(), &d.target),
            Device::Controller(c) => Some(controller_alias(family, c.model, c.index)),
            Device::Interface(_) => {
                net += 1;
                Some(format!("net{}", net - 1))
            }
            Device::Serial(c) => {
                serial += 1;
                Some(format!("serial{}", c.port.unwrap_or(serial - 1)))
            }
            // A console of type serial is the first serial port; set below.
            Device::Console(_) => None,
            Device::Input(_) => {
                input += 1;
                Some(format!("input{}", input - 1))
            }
            Device::Video(_) => {
                video += 1;
                Some(format!("video{}", video - 1))
            }
            Device::Rng(_) => {
                rng += 1;
                Some(format!("rng{}", rng - 1))
            }
            Device::Watchdog(_) => {
                watchdog += 1;
                Some(format!("watchdog{}", watchdog - 1))
            }
            Device::Memballoon(_) => Some("balloon0".into()),
            Device::Graphics(_) | Device::Audio(_) => None,
        };
        computed.push(alias);
    }
    for (device, alias) in def.devices.list.iter_mut().zip(computed) {
        if let Some(info) = device.info_mut()
            && info.alias.is_none()
        {
            info.alias = alias;
        }
    }
    let first_serial = def.devices.serials().next().and_then(|s| s.info.alias.clone());
    for console in def.devices.consoles_mut() {
        if console.info.alias.is_none() {
            console.info.alias = first_serial.clone();
        }
    }
}
