//! Defaults that depend on the machine type and on what the QEMU binary offers.
//!
//! libvirt's QEMU driver fills many values from the emulator's capabilities (which CPU model a
//! machine defaults to, whether `pcie-root-port` exists, which video device is the default).
//! [`QemuDefaults`] carries those facts; virqemud builds it from its probed capabilities, and
//! [`QemuDefaults::default`] describes a QEMU ≥ 10 x86_64 binary (what libvirt's own reference
//! outputs assume). The small functions here answer one question each for a machine type, so the
//! driver and the command builder can use the same answers as the parser.

use super::model::{NetModel, PciModel, PciModelName, ScsiModel, UsbModel, VideoModel};

/// What the driver knows about its QEMU binary, for filling defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuDefaults {
    /// Architecture of a definition without `<type arch>`.
    pub arch: String,
    /// Machine type of a definition without `<type machine>` (`pc` for QEMU's default).
    pub machine: String,
    /// `<emulator>` of a definition without one, if the driver wants it filled at parse time.
    pub emulator: Option<String>,
    /// Where per-domain UEFI variable stores live (`/var/lib/libvirt/qemu/nvram` in libvirt);
    /// when set, a read-only pflash `<loader>` without an `<nvram>` path gets
    /// [`default_nvram_path`].
    pub nvram_dir: Option<String>,
    /// The CPU model QEMU uses for the machine type (`qemu64` on x86); `None` leaves `<cpu>`
    /// absent.
    pub cpu_model: Option<String>,
    /// QEMU has the generic `pcie-root-port` (else `ioh3420` is used).
    pub pcie_root_port: bool,
    /// QEMU has `pcie-pci-bridge` (else legacy PCI devices on q35 go behind a
    /// `dmi-to-pci-bridge` and a `pci-bridge`).
    pub pcie_pci_bridge: bool,
    /// QEMU knows transitional/non-transitional virtio devices, so virtio devices may use PCIe
    /// slots.
    pub virtio_pcie: bool,
    /// QEMU has `cirrus-vga` (the x86 default video device; else `VGA`).
    pub cirrus_vga: bool,
    /// QEMU has `qemu-xhci` (the q35 default USB controller; else `ich9-usb-ehci1`).
    pub qemu_xhci: bool,
    /// QEMU has `lsi` (the x86 default SCSI controller; else `virtio-scsi`).
    pub lsi: bool,
    /// QEMU supports `-cpu host,migratable=` (so host-passthrough defaults to `migratable='on'`).
    pub cpu_migratable: bool,
}

impl Default for QemuDefaults {
    fn default() -> Self {
        QemuDefaults {
            arch: "x86_64".into(),
            machine: "pc".into(),
            emulator: None,
            nvram_dir: None,
            cpu_model: Some("qemu64".into()),
            pcie_root_port: true,
            pcie_pci_bridge: true,
            virtio_pcie: true,
            cirrus_vga: true,
            qemu_xhci: true,
            lsi: true,
            cpu_migratable: true,
        }
    }
}

/// The chipset family of a machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineFamily {
    /// `pc`, `pc-i440fx-*`: i440FX + PIIX3, a `pci-root` bus.
    I440fx,
    /// `q35`, `pc-q35-*`: Q35 + ICH9, a `pcie-root` complex.
    Q35,
    /// Anything else: no implicit devices or PCI addresses are filled.
    Other,
}

impl MachineFamily {
    /// The family of `machine` on `arch`.
    pub fn of(arch: &str, machine: &str) -> Self {
        if !is_x86(arch) {
            return MachineFamily::Other;
        }
        if machine == "q35" || machine.starts_with("pc-q35-") {
            MachineFamily::Q35
        } else if machine == "pc"
            || machine.starts_with("pc-i440fx-")
            || machine.starts_with("pc-0.")
            || machine.starts_with("pc-1.")
            || machine.starts_with("rhel")
        {
            MachineFamily::I440fx
        } else {
            MachineFamily::Other
        }
    }

    /// i440fx or q35.
    pub fn is_pc(self) -> bool {
        self != MachineFamily::Other
    }
}

/// Whether `arch` is 32- or 64-bit x86.
pub fn is_x86(arch: &str) -> bool {
    arch == "x86_64" || arch == "i686"
}

/// The PCI root controller model of the machine, if it has PCI.
pub fn pci_root_model(family: MachineFamily) -> Option<PciModel> {
    match family {
        MachineFamily::I440fx => Some(PciModel::PciRoot),
        MachineFamily::Q35 => Some(PciModel::PcieRoot),
        MachineFamily::Other => None,
    }
}

/// The USB controller model for a `<controller type='usb'>` without a model, and for the one
/// added implicitly.
pub fn default_usb_model(family: MachineFamily, defaults: &QemuDefaults) -> Option<UsbModel> {
    match family {
        MachineFamily::I440fx => Some(UsbModel::Piix3Uhci),
        MachineFamily::Q35 if defaults.qemu_xhci => Some(UsbModel::QemuXhci),
        MachineFamily::Q35 => Some(UsbModel::Ich9Ehci1),
        MachineFamily::Other => None,
    }
}

/// The SCSI controller model for a `<controller type='scsi'>` without a model.
pub fn default_scsi_model(defaults: &QemuDefaults) -> ScsiModel {
    if defaults.lsi {
        ScsiModel::Lsilogic
    } else {
        ScsiModel::VirtioScsi
    }
}

/// The NIC model for an `<interface>` without `<model>`.
pub fn default_net_model(arch: &str) -> Option<NetModel> {
    if is_x86(arch) {
        Some(NetModel::Rtl8139)
    } else {
        Some(NetModel::Virtio)
    }
}

/// The video model for a `<video>` without a type, and for the one added for `<graphics>`.
pub fn default_video_model(arch: &str, defaults: &QemuDefaults) -> VideoModel {
    if is_x86(arch) && defaults.cirrus_vga {
        VideoModel::Cirrus
    } else if is_x86(arch) {
        VideoModel::Vga
    } else {
        VideoModel::Virtio
    }
}

/// Whether the machine has the i8042 PS/2 controller (so a PS/2 mouse and keyboard are always
/// present).
pub fn has_ps2(family: MachineFamily) -> bool {
    family.is_pc()
}

/// Whether the machine has IDE (q35's disk controller is AHCI only).
pub fn has_ide(family: MachineFamily) -> bool {
    family == MachineFamily::I440fx
}

/// The QEMU device implementing a PCI controller model.
pub fn pci_model_name(model: PciModel, defaults: &QemuDefaults) -> Option<PciModelName> {
    match model {
        PciModel::PciRoot | PciModel::PcieRoot => None,
        PciModel::PciBridge => Some(PciModelName::PciBridge),
        PciModel::DmiToPciBridge => Some(PciModelName::I82801b11Bridge),
        PciModel::PcieToPciBridge => Some(PciModelName::PciePciBridge),
        PciModel::PcieRootPort if defaults.pcie_root_port => Some(PciModelName::PcieRootPort),
        PciModel::PcieRootPort => Some(PciModelName::Ioh3420),
    }
}

/// Default video RAM (KiB) for a model, as libvirt's `virDomainVideoDefaultRAM`.
pub fn default_video_ram(model: VideoModel) -> u32 {
    match model {
        VideoModel::Vga | VideoModel::Cirrus | VideoModel::Vmvga | VideoModel::Bochs => 16 * 1024,
        VideoModel::Qxl => 64 * 1024,
        VideoModel::Virtio | VideoModel::Ramfb | VideoModel::None => 0,
    }
}

/// Where libvirt puts the per-domain UEFI variable store when `<nvram>` names none.
pub fn default_nvram_path(nvram_dir: &str, domain_name: &str) -> String {
    format!("{}/{}_VARS.fd", nvram_dir.trim_end_matches('/'), domain_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_families() {
        assert_eq!(MachineFamily::of("x86_64", "pc"), MachineFamily::I440fx);
        assert_eq!(
            MachineFamily::of("x86_64", "pc-i440fx-10.0"),
            MachineFamily::I440fx
        );
        assert_eq!(MachineFamily::of("i686", "q35"), MachineFamily::Q35);
        assert_eq!(MachineFamily::of("x86_64", "pc-q35-9.2"), MachineFamily::Q35);
        assert_eq!(MachineFamily::of("x86_64", "microvm"), MachineFamily::Other);
        assert_eq!(MachineFamily::of("aarch64", "virt"), MachineFamily::Other);
    }

    #[test]
    fn defaults_follow_the_machine() {
        let d = QemuDefaults::default();
        assert_eq!(
            default_usb_model(MachineFamily::I440fx, &d),
            Some(UsbModel::Piix3Uhci)
        );
        assert_eq!(
            default_usb_model(MachineFamily::Q35, &d),
            Some(UsbModel::QemuXhci)
        );
        assert_eq!(default_video_model("x86_64", &d), VideoModel::Cirrus);
        assert_eq!(default_net_model("x86_64"), Some(NetModel::Rtl8139));
        assert!(has_ide(MachineFamily::I440fx) && !has_ide(MachineFamily::Q35));
        assert_eq!(default_nvram_path("/var/lib/x/", "vm"), "/var/lib/x/vm_VARS.fd");
    }
}
