//! The domain model: plain Rust types for the supported subset of libvirt's domain XML.
//!
//! Every enum spells its values as libvirt does ([`XmlEnum::as_str`]); numbers are in libvirt's
//! units (memory in KiB). Optional XML attributes are `Option`s; after parsing, the defaults
//! libvirt fills in are filled in (see `postparse.rs`), so most `Option`s are `Some` in a parsed
//! definition. Devices keep document order in [`Devices::list`].

use std::fmt;

/// A closed set of XML values with their libvirt spelling.
pub trait XmlEnum: Sized + Copy + 'static {
    /// Every value, in libvirt's order.
    const ALL: &'static [Self];
    /// The XML spelling.
    fn as_str(self) -> &'static str;
    /// The value spelled `s` (exactly), if any.
    fn from_xml(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.as_str() == s)
    }
    /// The accepted spellings, comma-separated, for error messages.
    fn expected() -> String {
        Self::ALL
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

macro_rules! xml_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl XmlEnum for $name {
            const ALL: &'static [Self] = &[$($name::$variant,)+];
            fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

xml_enum! {
    /// `<domain type>`: the accelerator.
    pub enum VirtType {
        /// Hardware virtualization through `/dev/kvm`.
        Kvm = "kvm",
        /// Pure emulation (TCG).
        Qemu = "qemu",
    }
}

xml_enum! {
    /// `<os><type>`: only full virtualization is supported.
    pub enum OsType {
        /// A hardware-virtualized guest.
        Hvm = "hvm",
    }
}

xml_enum! {
    /// `<os><boot dev>`.
    pub enum BootDev {
        /// Floppy.
        Fd = "fd",
        /// Hard disk.
        Hd = "hd",
        /// CD-ROM.
        Cdrom = "cdrom",
        /// Network (PXE).
        Network = "network",
    }
}

xml_enum! {
    /// `<loader type>`.
    pub enum LoaderType {
        /// A ROM image.
        Rom = "rom",
        /// A flash image (UEFI with an NVRAM store).
        Pflash = "pflash",
    }
}

xml_enum! {
    /// `<cpu mode>`.
    pub enum CpuMode {
        /// A named model.
        Custom = "custom",
        /// The host's model, expanded at start.
        HostModel = "host-model",
        /// The host CPU as is.
        HostPassthrough = "host-passthrough",
    }
}

xml_enum! {
    /// `<cpu match>`.
    pub enum CpuMatch {
        /// At least the model.
        Minimum = "minimum",
        /// Exactly the model.
        Exact = "exact",
        /// Exactly the model, nothing more.
        Strict = "strict",
    }
}

xml_enum! {
    /// `<cpu check>`.
    pub enum CpuCheck {
        /// No check.
        None = "none",
        /// Checked against the host before start.
        Partial = "partial",
        /// Checked before start and against what QEMU made.
        Full = "full",
    }
}

xml_enum! {
    /// `<cpu><model fallback>`.
    pub enum CpuFallback {
        /// Another model may be used.
        Allow = "allow",
        /// Only this model.
        Forbid = "forbid",
    }
}

xml_enum! {
    /// `<clock><timer name>`.
    pub enum TimerName {
        /// The platform timer.
        Platform = "platform",
        /// The i8254 PIT.
        Pit = "pit",
        /// The RTC.
        Rtc = "rtc",
        /// The HPET.
        Hpet = "hpet",
        /// The TSC.
        Tsc = "tsc",
        /// KVM's paravirtual clock.
        Kvmclock = "kvmclock",
        /// Hyper-V's reference clock.
        Hypervclock = "hypervclock",
    }
}

xml_enum! {
    /// `<timer tickpolicy>`.
    pub enum TickPolicy {
        /// Deliver late ticks late.
        Delay = "delay",
        /// Deliver missed ticks faster.
        Catchup = "catchup",
        /// Merge missed ticks.
        Merge = "merge",
        /// Drop missed ticks.
        Discard = "discard",
    }
}

xml_enum! {
    /// `<timer track>` (RTC and platform timers only).
    pub enum TimerTrack {
        /// Since boot.
        Boot = "boot",
        /// Guest time.
        Guest = "guest",
        /// Host wall clock.
        Wall = "wall",
        /// Host real-time clock.
        Realtime = "realtime",
    }
}

xml_enum! {
    /// `<clock basis>` of a variable offset.
    pub enum ClockBasis {
        /// Relative to UTC.
        Utc = "utc",
        /// Relative to host local time.
        Localtime = "localtime",
    }
}

xml_enum! {
    /// `<on_poweroff>`, `<on_reboot>`, `<on_crash>`.
    pub enum LifecycleAction {
        /// Stop the domain.
        Destroy = "destroy",
        /// Start it again.
        Restart = "restart",
        /// Rename and restart (not with QEMU).
        RenameRestart = "rename-restart",
        /// Keep it for inspection.
        Preserve = "preserve",
        /// Dump core, then destroy (`on_crash` only).
        CoredumpDestroy = "coredump-destroy",
        /// Dump core, then restart (`on_crash` only).
        CoredumpRestart = "coredump-restart",
    }
}

xml_enum! {
    /// `<disk type>`.
    pub enum DiskType {
        /// A host file.
        File = "file",
        /// A host block device.
        Block = "block",
        /// A storage pool volume.
        Volume = "volume",
    }
}

xml_enum! {
    /// `<disk device>`.
    pub enum DiskDevice {
        /// A hard disk.
        Disk = "disk",
        /// A CD-ROM (always read-only).
        Cdrom = "cdrom",
    }
}

xml_enum! {
    /// `<disk><target bus>`.
    pub enum DiskBus {
        /// IDE (pc only).
        Ide = "ide",
        /// SCSI, on a SCSI controller.
        Scsi = "scsi",
        /// virtio-blk.
        Virtio = "virtio",
        /// SATA (AHCI).
        Sata = "sata",
    }
}

xml_enum! {
    /// `<disk><driver type>`.
    pub enum DiskFormat {
        /// Raw.
        Raw = "raw",
        /// QCOW2.
        Qcow2 = "qcow2",
    }
}

xml_enum! {
    /// `<disk><driver cache>`.
    pub enum DiskCache {
        /// No host cache (O_DIRECT).
        None = "none",
        /// Write-through.
        Writethrough = "writethrough",
        /// Write-back.
        Writeback = "writeback",
        /// O_DIRECT and O_DSYNC.
        Directsync = "directsync",
        /// Ignore flushes.
        Unsafe = "unsafe",
    }
}

xml_enum! {
    /// `<disk><driver io>`.
    pub enum DiskIo {
        /// A thread pool.
        Threads = "threads",
        /// Linux native AIO.
        Native = "native",
        /// io_uring.
        IoUring = "io_uring",
    }
}

xml_enum! {
    /// `<disk><driver discard>`.
    pub enum DiskDiscard {
        /// Pass discards to the image.
        Unmap = "unmap",
        /// Ignore them.
        Ignore = "ignore",
    }
}

xml_enum! {
    /// `<encryption format>`: only LUKS, opened by QEMU, is supported.
    pub enum EncryptionFormat {
        /// LUKS (version 1), opened by QEMU with a passphrase secret.
        Luks = "luks",
    }
}

xml_enum! {
    /// `<controller type>`.
    pub enum ControllerType {
        /// IDE.
        Ide = "ide",
        /// SCSI.
        Scsi = "scsi",
        /// SATA (AHCI).
        Sata = "sata",
        /// USB.
        Usb = "usb",
        /// PCI / PCI Express topology.
        Pci = "pci",
    }
}

xml_enum! {
    /// `<controller type='scsi' model>`.
    pub enum ScsiModel {
        /// Let libvirt choose (becomes a concrete model after parsing).
        Auto = "auto",
        /// BusLogic.
        Buslogic = "buslogic",
        /// LSI 53C895A.
        Lsilogic = "lsilogic",
        /// LSI SAS 1068.
        Lsisas1068 = "lsisas1068",
        /// VMware PVSCSI.
        Vmpvscsi = "vmpvscsi",
        /// virtio-scsi.
        VirtioScsi = "virtio-scsi",
        /// LSI SAS 1078 (megasas).
        Lsisas1078 = "lsisas1078",
        /// virtio-scsi, transitional.
        VirtioTransitional = "virtio-transitional",
        /// virtio-scsi, modern only.
        VirtioNonTransitional = "virtio-non-transitional",
        /// AMD am53c974.
        Am53c974 = "am53c974",
        /// Tekram DC-390.
        Dc390 = "dc390",
    }
}

xml_enum! {
    /// `<controller type='usb' model>`.
    pub enum UsbModel {
        /// PIIX3 UHCI (pc).
        Piix3Uhci = "piix3-uhci",
        /// PIIX4 UHCI.
        Piix4Uhci = "piix4-uhci",
        /// EHCI.
        Ehci = "ehci",
        /// ICH9 EHCI.
        Ich9Ehci1 = "ich9-ehci1",
        /// VIA UHCI.
        Vt82c686bUhci = "vt82c686b-uhci",
        /// OHCI.
        PciOhci = "pci-ohci",
        /// NEC xHCI.
        NecXhci = "nec-xhci",
        /// QEMU xHCI (q35).
        QemuXhci = "qemu-xhci",
        /// No USB at all.
        None = "none",
    }
}

xml_enum! {
    /// `<controller type='pci' model>`.
    pub enum PciModel {
        /// The root bus of pc machines.
        PciRoot = "pci-root",
        /// The root complex of q35 machines.
        PcieRoot = "pcie-root",
        /// A PCI-to-PCI bridge.
        PciBridge = "pci-bridge",
        /// A DMI-to-PCI bridge (q35).
        DmiToPciBridge = "dmi-to-pci-bridge",
        /// A PCIe root port (q35).
        PcieRootPort = "pcie-root-port",
        /// A PCIe-to-PCI bridge (q35).
        PcieToPciBridge = "pcie-to-pci-bridge",
    }
}

xml_enum! {
    /// `<controller type='pci'><model name>`: the QEMU device implementing the controller.
    pub enum PciModelName {
        /// `pci-bridge`.
        PciBridge = "pci-bridge",
        /// `i82801b11-bridge`.
        I82801b11Bridge = "i82801b11-bridge",
        /// `ioh3420`.
        Ioh3420 = "ioh3420",
        /// `pcie-root-port`.
        PcieRootPort = "pcie-root-port",
        /// `pcie-pci-bridge`.
        PciePciBridge = "pcie-pci-bridge",
    }
}

xml_enum! {
    /// `<interface type>`.
    pub enum InterfaceType {
        /// User-mode networking (slirp).
        User = "user",
        /// A libvirt virtual network.
        Network = "network",
        /// A host bridge.
        Bridge = "bridge",
    }
}

xml_enum! {
    /// `<interface><model type>` (matched case-insensitively, as libvirt does).
    pub enum NetModel {
        /// virtio-net.
        Virtio = "virtio",
        /// virtio-net, transitional.
        VirtioTransitional = "virtio-transitional",
        /// virtio-net, modern only.
        VirtioNonTransitional = "virtio-non-transitional",
        /// Intel e1000.
        E1000 = "e1000",
        /// Intel e1000e (PCIe).
        E1000e = "e1000e",
        /// Intel 82576 (PCIe).
        Igb = "igb",
        /// Realtek RTL8139.
        Rtl8139 = "rtl8139",
        /// NE2000.
        Ne2kPci = "ne2k_pci",
        /// AMD PCnet.
        Pcnet = "pcnet",
        /// VMware vmxnet3.
        Vmxnet3 = "vmxnet3",
    }
}

xml_enum! {
    /// The host side of a serial port or console (`<serial type>`).
    pub enum ChrType {
        /// A pseudo-terminal.
        Pty = "pty",
        /// Output to a file.
        File = "file",
        /// A UNIX socket.
        Unix = "unix",
        /// A TCP socket.
        Tcp = "tcp",
    }
}

xml_enum! {
    /// `<source mode>` of a socket character device.
    pub enum ChrMode {
        /// Listen.
        Bind = "bind",
        /// Connect.
        Connect = "connect",
    }
}

xml_enum! {
    /// `<protocol type>` of a TCP character device.
    pub enum ChrProtocol {
        /// Raw bytes.
        Raw = "raw",
        /// Telnet.
        Telnet = "telnet",
        /// Telnet over TLS.
        Telnets = "telnets",
        /// TLS.
        Tls = "tls",
    }
}

xml_enum! {
    /// `<serial><target type>`.
    pub enum SerialTargetType {
        /// A 16550A UART on the ISA bus (x86).
        IsaSerial = "isa-serial",
    }
}

xml_enum! {
    /// `<serial><target><model name>`.
    pub enum SerialTargetModel {
        /// QEMU's `isa-serial`.
        IsaSerial = "isa-serial",
    }
}

xml_enum! {
    /// `<console><target type>`.
    pub enum ConsoleTargetType {
        /// An alias for the first serial port.
        Serial = "serial",
    }
}

xml_enum! {
    /// `<input type>`.
    pub enum InputType {
        /// A relative pointer.
        Mouse = "mouse",
        /// A keyboard.
        Keyboard = "keyboard",
        /// An absolute pointer.
        Tablet = "tablet",
    }
}

xml_enum! {
    /// `<input bus>`.
    pub enum InputBus {
        /// The i8042 controller (x86).
        Ps2 = "ps2",
        /// USB.
        Usb = "usb",
        /// virtio-input.
        Virtio = "virtio",
    }
}

xml_enum! {
    /// `<graphics type>`.
    pub enum GraphicsType {
        /// VNC.
        Vnc = "vnc",
        /// SPICE.
        Spice = "spice",
    }
}

xml_enum! {
    /// `<audio type>`: the host audio backend.
    pub enum AudioType {
        /// No host audio.
        None = "none",
        /// Audio over the SPICE connection.
        Spice = "spice",
    }
}

xml_enum! {
    /// `<video><model type>`.
    pub enum VideoModel {
        /// Standard VGA.
        Vga = "vga",
        /// Cirrus Logic.
        Cirrus = "cirrus",
        /// VMware SVGA.
        Vmvga = "vmvga",
        /// QXL (SPICE).
        Qxl = "qxl",
        /// virtio-gpu.
        Virtio = "virtio",
        /// Bochs display.
        Bochs = "bochs",
        /// A RAM framebuffer (not PCI).
        Ramfb = "ramfb",
        /// No video device.
        None = "none",
    }
}

xml_enum! {
    /// `<rng model>`.
    pub enum RngModel {
        /// virtio-rng.
        Virtio = "virtio",
        /// virtio-rng, transitional.
        VirtioTransitional = "virtio-transitional",
        /// virtio-rng, modern only.
        VirtioNonTransitional = "virtio-non-transitional",
    }
}

xml_enum! {
    /// `<watchdog model>`.
    pub enum WatchdogModel {
        /// Intel 6300ESB (PCI).
        I6300esb = "i6300esb",
        /// iBase IB700 (ISA).
        Ib700 = "ib700",
        /// The ICH9 TCO watchdog built into q35.
        Itco = "itco",
    }
}

xml_enum! {
    /// `<watchdog action>`.
    pub enum WatchdogAction {
        /// Reset the guest.
        Reset = "reset",
        /// Shut down gracefully.
        Shutdown = "shutdown",
        /// Power off.
        Poweroff = "poweroff",
        /// Pause.
        Pause = "pause",
        /// Do nothing.
        None = "none",
        /// Dump core.
        Dump = "dump",
        /// Inject an NMI.
        InjectNmi = "inject-nmi",
    }
}

xml_enum! {
    /// `<memballoon model>`.
    pub enum MemballoonModel {
        /// virtio-balloon.
        Virtio = "virtio",
        /// virtio-balloon, transitional.
        VirtioTransitional = "virtio-transitional",
        /// virtio-balloon, modern only.
        VirtioNonTransitional = "virtio-non-transitional",
        /// No balloon.
        None = "none",
    }
}

/// A parsed domain definition.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainDef {
    /// `<domain type>`.
    pub virt_type: VirtType,
    /// `<domain id>`: the running instance's id (live XML only).
    pub id: Option<u32>,
    /// `xmlns:prefix` declarations on the root, kept for `<metadata>`.
    pub namespaces: Vec<(String, String)>,
    /// `<name>`.
    pub name: String,
    /// `<uuid>`, canonical (lower case, hyphenated).
    pub uuid: String,
    /// `<title>` (one line).
    pub title: Option<String>,
    /// `<description>`.
    pub description: Option<String>,
    /// The inner XML of `<metadata>`, exactly as written.
    pub metadata: Option<String>,
    /// `<maxMemory>`, `<memory>`, `<currentMemory>`.
    pub memory: Memory,
    /// `<vcpu>`.
    pub vcpu: Vcpu,
    /// `<os>`.
    pub os: Os,
    /// `<features>`.
    pub features: Features,
    /// `<cpu>`.
    pub cpu: Option<Cpu>,
    /// `<clock>`.
    pub clock: Clock,
    /// `<on_poweroff>`.
    pub on_poweroff: LifecycleAction,
    /// `<on_reboot>`.
    pub on_reboot: LifecycleAction,
    /// `<on_crash>`.
    pub on_crash: LifecycleAction,
    /// `<devices>`.
    pub devices: Devices,
    /// Paths of content ignored by a lenient parse.
    pub(crate) ignored: Vec<String>,
}

/// Memory sizes, in KiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    /// `<memory>`: the maximum at boot.
    pub total_kib: u64,
    /// `<currentMemory>`: the balloon target (≤ total; defaults to total).
    pub current_kib: u64,
    /// `<maxMemory>`: the hotplug limit.
    pub max: Option<MaxMemory>,
}

/// `<maxMemory slots='N'>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaxMemory {
    /// The limit, in KiB.
    pub kib: u64,
    /// Memory hotplug slots.
    pub slots: u32,
}

/// `<vcpu>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vcpu {
    /// The maximum number of vCPUs.
    pub count: u32,
    /// Online at boot (`current`), ≤ `count`; `None` means all.
    pub current: Option<u32>,
    /// `placement`: `auto` (numad) or `static` (the default).
    pub placement_auto: bool,
    /// `cpuset`: host CPUs the vCPUs may run on, in libvirt's syntax (`0-3,^2`).
    pub cpuset: Option<String>,
}

impl Vcpu {
    /// vCPUs online at boot.
    pub fn online(&self) -> u32 {
        self.current.unwrap_or(self.count)
    }
}

/// `<os>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Os {
    /// `<type>` (always `hvm`).
    pub os_type: OsType,
    /// `<type arch>`.
    pub arch: Option<String>,
    /// `<type machine>`.
    pub machine: Option<String>,
    /// `<boot dev>` in order.
    pub boot: Vec<BootDev>,
    /// `<kernel>`.
    pub kernel: Option<String>,
    /// `<initrd>`.
    pub initrd: Option<String>,
    /// `<cmdline>`.
    pub cmdline: Option<String>,
    /// `<loader>`.
    pub loader: Option<Loader>,
    /// `<nvram>`.
    pub nvram: Option<Nvram>,
}

/// `<loader>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loader {
    /// The firmware image.
    pub path: Option<String>,
    /// `readonly`.
    pub readonly: Option<bool>,
    /// `secure` (Secure Boot).
    pub secure: Option<bool>,
    /// `type` (`rom` when a path is given without one).
    pub kind: Option<LoaderType>,
}

/// `<nvram>`: the UEFI variable store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nvram {
    /// The per-domain store.
    pub path: Option<String>,
    /// The template copied to `path` when it does not exist.
    pub template: Option<String>,
}

/// `<features>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// `<acpi/>`.
    pub acpi: bool,
    /// `<apic/>`.
    pub apic: bool,
    /// `<pae/>`.
    pub pae: bool,
}

/// `<cpu>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpu {
    /// `mode`.
    pub mode: CpuMode,
    /// `match` (custom mode).
    pub match_: Option<CpuMatch>,
    /// `check`.
    pub check: Option<CpuCheck>,
    /// `migratable` (host-passthrough).
    pub migratable: Option<bool>,
    /// `<model>`.
    pub model: Option<CpuModel>,
}

/// `<cpu><model>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuModel {
    /// The model name (`Skylake-Client`, `qemu64`).
    pub name: Option<String>,
    /// `fallback`.
    pub fallback: Option<CpuFallback>,
}

/// `<clock>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clock {
    /// `offset` and its parameters.
    pub offset: ClockOffset,
    /// `<timer>` elements.
    pub timers: Vec<Timer>,
}

/// `<clock offset>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockOffset {
    /// `utc`.
    Utc,
    /// `localtime`.
    Localtime,
    /// `variable`, `adjustment` seconds from `basis`.
    Variable {
        /// Seconds.
        adjustment: i64,
        /// What the adjustment is relative to.
        basis: ClockBasis,
    },
    /// `timezone`.
    Timezone(String),
}

/// `<timer>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// `name`.
    pub name: TimerName,
    /// `present`.
    pub present: Option<bool>,
    /// `tickpolicy`.
    pub tickpolicy: Option<TickPolicy>,
    /// `track`.
    pub track: Option<TimerTrack>,
}

/// `<devices>`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Devices {
    /// `<emulator>`: the QEMU binary.
    pub emulator: Option<String>,
    /// Every device, in document order (devices libvirt adds implicitly are inserted beside
    /// their kind).
    pub list: Vec<Device>,
}

/// One device.
#[derive(Debug, Clone, PartialEq)]
pub enum Device {
    /// `<disk>`.
    Disk(Disk),
    /// `<controller>`.
    Controller(Controller),
    /// `<interface>`.
    Interface(Interface),
    /// `<serial>`.
    Serial(Chardev),
    /// `<console>`.
    Console(Chardev),
    /// `<input>`.
    Input(Input),
    /// `<graphics>`.
    Graphics(Graphics),
    /// `<audio>`.
    Audio(Audio),
    /// `<video>`.
    Video(Video),
    /// `<rng>`.
    Rng(Rng),
    /// `<watchdog>`.
    Watchdog(Watchdog),
    /// `<memballoon>`.
    Memballoon(Memballoon),
}

impl Device {
    /// The element name.
    pub fn element(&self) -> &'static str {
        match self {
            Device::Disk(_) => "disk",
            Device::Controller(_) => "controller",
            Device::Interface(_) => "interface",
            Device::Serial(_) => "serial",
            Device::Console(_) => "console",
            Device::Input(_) => "input",
            Device::Graphics(_) => "graphics",
            Device::Audio(_) => "audio",
            Device::Video(_) => "video",
            Device::Rng(_) => "rng",
            Device::Watchdog(_) => "watchdog",
            Device::Memballoon(_) => "memballoon",
        }
    }

    /// libvirt's formatting rank for this kind (disks first, memballoon late), used to place
    /// implicitly added devices.
    pub(crate) fn rank(&self) -> u8 {
        match self {
            Device::Disk(_) => 0,
            Device::Controller(_) => 1,
            Device::Interface(_) => 2,
            Device::Serial(_) => 3,
            Device::Console(_) => 4,
            Device::Input(_) => 5,
            Device::Graphics(_) => 6,
            Device::Audio(_) => 7,
            Device::Video(_) => 8,
            Device::Watchdog(_) => 9,
            Device::Memballoon(_) => 10,
            Device::Rng(_) => 11,
        }
    }

    /// The device's address, alias and boot order, when it has them.
    pub fn info(&self) -> Option<&DeviceInfo> {
        match self {
            Device::Disk(d) => Some(&d.info),
            Device::Controller(c) => Some(&c.info),
            Device::Interface(i) => Some(&i.info),
            Device::Serial(c) | Device::Console(c) => Some(&c.info),
            Device::Input(i) => Some(&i.info),
            Device::Video(v) => Some(&v.info),
            Device::Rng(r) => Some(&r.info),
            Device::Watchdog(w) => Some(&w.info),
            Device::Memballoon(m) => Some(&m.info),
            Device::Graphics(_) | Device::Audio(_) => None,
        }
    }

    /// Mutable access to the device's address, alias and boot order.
    pub fn info_mut(&mut self) -> Option<&mut DeviceInfo> {
        match self {
            Device::Disk(d) => Some(&mut d.info),
            Device::Controller(c) => Some(&mut c.info),
            Device::Interface(i) => Some(&mut i.info),
            Device::Serial(c) | Device::Console(c) => Some(&mut c.info),
            Device::Input(i) => Some(&mut i.info),
            Device::Video(v) => Some(&mut v.info),
            Device::Rng(r) => Some(&mut r.info),
            Device::Watchdog(w) => Some(&mut w.info),
            Device::Memballoon(m) => Some(&mut m.info),
            Device::Graphics(_) | Device::Audio(_) => None,
        }
    }
}

macro_rules! device_accessors {
    ($($iter:ident, $iter_mut:ident, $variant:ident, $ty:ty;)+) => {
        impl Devices {
            $(
                #[doc = concat!("Every `", stringify!($variant), "` device, in document order.")]
                pub fn $iter(&self) -> impl Iterator<Item = &$ty> + '_ {
                    self.list.iter().filter_map(|d| match d {
                        Device::$variant(x) => Some(x),
                        _ => None,
                    })
                }

                #[doc = concat!("Every `", stringify!($variant), "` device, mutably.")]
                pub fn $iter_mut(&mut self) -> impl Iterator<Item = &mut $ty> + '_ {
                    self.list.iter_mut().filter_map(|d| match d {
                        Device::$variant(x) => Some(x),
                        _ => None,
                    })
                }
            )+
        }
    };
}

device_accessors! {
    disks, disks_mut, Disk, Disk;
    controllers, controllers_mut, Controller, Controller;
    interfaces, interfaces_mut, Interface, Interface;
    serials, serials_mut, Serial, Chardev;
    consoles, consoles_mut, Console, Chardev;
    inputs, inputs_mut, Input, Input;
    graphics, graphics_mut, Graphics, Graphics;
    audios, audios_mut, Audio, Audio;
    videos, videos_mut, Video, Video;
    rngs, rngs_mut, Rng, Rng;
    watchdogs, watchdogs_mut, Watchdog, Watchdog;
}

impl Devices {
    /// The memory balloon, if any (model `none` included).
    pub fn memballoon(&self) -> Option<&Memballoon> {
        self.list.iter().find_map(|d| match d {
            Device::Memballoon(m) => Some(m),
            _ => None,
        })
    }

    /// The controller of `kind` with `index`, if any.
    pub fn controller(&self, kind: ControllerType, index: u32) -> Option<&Controller> {
        self.controllers().find(|c| c.kind() == kind && c.index == index)
    }

    /// Inserts `device` where libvirt would format it relative to the devices already there:
    /// after the last device of the same kind, else before the first device of a later kind.
    pub(crate) fn insert(&mut self, device: Device) {
        let rank = device.rank();
        let position = match self.list.iter().rposition(|d| d.rank() == rank) {
            Some(last) => last + 1,
            None => self
                .list
                .iter()
                .position(|d| d.rank() > rank)
                .unwrap_or(self.list.len()),
        };
        self.list.insert(position, device);
    }

    /// Inserts a controller as libvirt does: before the first controller of the same type with
    /// a higher index, else after the last controller of that type, else with the other
    /// controllers.
    pub(crate) fn insert_controller(&mut self, controller: Controller) {
        let kind = controller.kind();
        let index = controller.index;
        let mut position = None;
        for (i, device) in self.list.iter().enumerate().rev() {
            if let Device::Controller(c) = device
                && c.kind() == kind
            {
                if c.index > index {
                    position = Some(i);
                } else {
                    position = Some(position.unwrap_or(i + 1));
                    break;
                }
            }
        }
        match position {
            Some(p) => self.list.insert(p, Device::Controller(controller)),
            None => self.insert(Device::Controller(controller)),
        }
    }
}

/// What every addressable device carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `<alias name>`.
    pub alias: Option<String>,
    /// `<address>`.
    pub address: Option<Address>,
    /// `<boot order>` (disks and interfaces).
    pub boot_order: Option<u32>,
}

/// `<address>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `type='pci'`.
    Pci(PciAddress),
    /// `type='drive'`.
    Drive(DriveAddress),
    /// `type='usb'`.
    Usb(UsbAddress),
}

/// A guest PCI address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    /// Domain (segment), 0..=0xffff.
    pub domain: u32,
    /// Bus, 0..=0xff.
    pub bus: u32,
    /// Slot, 0..=0x1f.
    pub slot: u32,
    /// Function, 0..=7.
    pub function: u32,
    /// `multifunction='on'`/`'off'`.
    pub multifunction: Option<bool>,
}

/// A drive address on an IDE, SATA or SCSI controller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DriveAddress {
    /// The controller index.
    pub controller: u32,
    /// The bus on the controller.
    pub bus: u32,
    /// The SCSI target.
    pub target: u32,
    /// The unit.
    pub unit: u32,
}

/// A USB port address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbAddress {
    /// The USB bus (controller index).
    pub bus: u32,
    /// The port path (`1`, `1.2`).
    pub port: Option<String>,
}

/// `<disk>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// `type`.
    pub disk_type: DiskType,
    /// `device`.
    pub device: DiskDevice,
    /// `<driver>`.
    pub driver: DiskDriver,
    /// `<source>` (a CD-ROM may have none: an empty drive).
    pub source: Option<DiskSource>,
    /// `<target dev>`.
    pub target: String,
    /// `<target bus>` (inferred from the target name when absent).
    pub bus: Option<DiskBus>,
    /// `<readonly/>`.
    pub readonly: bool,
    /// `<shareable/>`.
    pub shareable: bool,
    /// `<encryption>` (in `<disk>` or in its `<source>`).
    pub encryption: Option<DiskEncryption>,
    /// Alias, address, boot order.
    pub info: DeviceInfo,
}

/// `<disk><encryption>`: the image is encrypted and QEMU opens it with a passphrase held by
/// the secret driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskEncryption {
    /// `format`.
    pub format: EncryptionFormat,
    /// `<secret type='passphrase' uuid>`.
    pub secret: EncryptionSecret,
    /// Whether the element was inside `<source>` (it is written back where it was found).
    pub in_source: bool,
}

/// `<encryption><secret type='passphrase'>`: by UUID or by usage name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncryptionSecret {
    /// `uuid='…'`.
    Uuid(String),
    /// `usage='…'` (the secret's volume path usage).
    Usage(String),
}

/// `<disk><driver>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskDriver {
    /// `name` (`qemu`).
    pub name: Option<String>,
    /// `type`: the image format.
    pub format: Option<DiskFormat>,
    /// `cache`.
    pub cache: Option<DiskCache>,
    /// `io`.
    pub io: Option<DiskIo>,
    /// `discard`.
    pub discard: Option<DiskDiscard>,
}

/// `<disk><source>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// `file='…'` (`type='file'`).
    File(String),
    /// `dev='…'` (`type='block'`).
    Block(String),
    /// `pool='…' volume='…'` (`type='volume'`).
    Volume {
        /// The storage pool.
        pool: String,
        /// The volume in it.
        volume: String,
    },
}

/// `<controller>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    /// The type and its model.
    pub model: ControllerModel,
    /// `index`.
    pub index: u32,
    /// PCI controller options (`<model name>`, `<target>`).
    pub pci: PciControllerOptions,
    /// Alias and address.
    pub info: DeviceInfo,
}

impl Controller {
    /// The controller's type.
    pub fn kind(&self) -> ControllerType {
        match self.model {
            ControllerModel::Ide => ControllerType::Ide,
            ControllerModel::Sata => ControllerType::Sata,
            ControllerModel::Scsi(_) => ControllerType::Scsi,
            ControllerModel::Usb(_) => ControllerType::Usb,
            ControllerModel::Pci(_) => ControllerType::Pci,
        }
    }

    /// A controller of `model` at `index` with nothing else set.
    pub fn new(model: ControllerModel, index: u32) -> Self {
        Controller {
            model,
            index,
            pci: PciControllerOptions::default(),
            info: DeviceInfo::default(),
        }
    }
}

/// A controller's type with its model (`None`: not yet chosen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerModel {
    /// IDE.
    Ide,
    /// SATA.
    Sata,
    /// SCSI.
    Scsi(Option<ScsiModel>),
    /// USB.
    Usb(Option<UsbModel>),
    /// PCI.
    Pci(Option<PciModel>),
}

/// `<controller type='pci'>` details.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PciControllerOptions {
    /// `<model name>`.
    pub model_name: Option<PciModelName>,
    /// `<target chassisNr>` (pci-bridge).
    pub chassis_nr: Option<u32>,
    /// `<target chassis>` (pcie-root-port).
    pub chassis: Option<u32>,
    /// `<target port>` (pcie-root-port).
    pub port: Option<u32>,
    /// `<target hotplug>`.
    pub hotplug: Option<bool>,
}

/// `<interface>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// `type` with its source.
    pub source: InterfaceSource,
    /// `<mac address>`, canonical lower case.
    pub mac: String,
    /// `<target dev>`: the host tap name.
    pub target_dev: Option<String>,
    /// `<model type>`.
    pub model: Option<NetModel>,
    /// Alias, address, boot order.
    pub info: DeviceInfo,
}

/// `<interface type>` and its `<source>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceSource {
    /// `type='user'`.
    User,
    /// `type='network'`, `<source network>`.
    Network(String),
    /// `type='bridge'`, `<source bridge>`.
    Bridge(String),
}

impl InterfaceSource {
    /// The interface type.
    pub fn kind(&self) -> InterfaceType {
        match self {
            InterfaceSource::User => InterfaceType::User,
            InterfaceSource::Network(_) => InterfaceType::Network,
            InterfaceSource::Bridge(_) => InterfaceType::Bridge,
        }
    }
}

/// `<serial>` or `<console>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chardev {
    /// The host side.
    pub source: ChrSource,
    /// `<target port>`.
    pub port: Option<u32>,
    /// `<target type>` of a serial port.
    pub serial_type: Option<SerialTargetType>,
    /// `<target><model name>` of a serial port.
    pub serial_model: Option<SerialTargetModel>,
    /// `<target type>` of a console.
    pub console_type: Option<ConsoleTargetType>,
    /// Alias (address-less).
    pub info: DeviceInfo,
}

/// The host side of a character device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChrSource {
    /// `type='pty'`; the allocated path in live XML.
    Pty {
        /// `/dev/pts/N`, once running.
        path: Option<String>,
    },
    /// `type='file'`.
    File {
        /// `<source path>`.
        path: String,
        /// `<source append>`.
        append: Option<bool>,
    },
    /// `type='unix'`.
    Unix {
        /// `<source mode>` (`bind` listens).
        mode: ChrMode,
        /// `<source path>` (generated at start when absent).
        path: Option<String>,
    },
    /// `type='tcp'`.
    Tcp {
        /// `<source mode>`.
        mode: ChrMode,
        /// `<source host>`.
        host: Option<String>,
        /// `<source service>`: the port.
        service: String,
        /// `<protocol type>`.
        protocol: ChrProtocol,
    },
}

impl ChrSource {
    /// The `type` attribute.
    pub fn kind(&self) -> ChrType {
        match self {
            ChrSource::Pty { .. } => ChrType::Pty,
            ChrSource::File { .. } => ChrType::File,
            ChrSource::Unix { .. } => ChrType::Unix,
            ChrSource::Tcp { .. } => ChrType::Tcp,
        }
    }
}

/// `<input>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// `type`.
    pub input_type: InputType,
    /// `bus`.
    pub bus: Option<InputBus>,
    /// Alias and address.
    pub info: DeviceInfo,
}

/// `<graphics>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graphics {
    /// `type`.
    pub graphics_type: GraphicsType,
    /// `port`: the TCP port; `None` when chosen at start.
    pub port: Option<u32>,
    /// `autoport`.
    pub autoport: bool,
    /// `<listen>` (one at most).
    pub listen: Option<Listen>,
}

/// `<graphics><listen>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `type='address'`: a host address (the daemon's default when `None`).
    Address(Option<String>),
    /// `type='socket'`: a UNIX socket (generated when `None`).
    Socket(Option<String>),
    /// `type='none'`: no listener.
    None,
}

/// `<audio>`: a host audio backend (sound devices themselves are not supported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audio {
    /// `id`, 1 or more, unique.
    pub id: u32,
    /// `type`.
    pub audio_type: AudioType,
}

/// `<video>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Video {
    /// `<model type>`.
    pub model: VideoModel,
    /// `<model vram>` in KiB.
    pub vram: Option<u32>,
    /// `<model ram>` in KiB (QXL).
    pub ram: Option<u32>,
    /// `<model vgamem>` in KiB (QXL).
    pub vgamem: Option<u32>,
    /// `<model heads>`.
    pub heads: Option<u32>,
    /// `<model primary='yes'>`.
    pub primary: bool,
    /// Alias and address.
    pub info: DeviceInfo,
}

/// `<rng>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    /// `model`.
    pub model: RngModel,
    /// `<backend>`.
    pub backend: RngBackend,
    /// Alias and address.
    pub info: DeviceInfo,
}

/// `<rng><backend>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RngBackend {
    /// `model='random'`: a host file (default `/dev/random`).
    Random(Option<String>),
    /// `model='egd'`: an EGD daemon over a character device.
    Egd(ChrSource),
}

/// `<watchdog>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watchdog {
    /// `model`.
    pub model: WatchdogModel,
    /// `action`.
    pub action: WatchdogAction,
    /// Alias and address.
    pub info: DeviceInfo,
}

/// `<memballoon>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memballoon {
    /// `model`.
    pub model: MemballoonModel,
    /// `<stats period>` in seconds.
    pub stats_period: Option<u32>,
    /// Alias and address.
    pub info: DeviceInfo,
}
