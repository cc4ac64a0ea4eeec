//! The capabilities and domain capabilities documents, as serde models formatted with
//! `rvirt_conf::xml::to_string`, in libvirt's element order (both validate against libvirt's
//! `capability.rng` and `domaincaps.rng`).

use serde::Serialize;

/// An element with no content (`<acpi/>`-style markers).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Empty {}

/// `yes` / `no`.
pub fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

// ---- <capabilities> ----

/// `<capabilities>`.
#[derive(Debug, Serialize)]
pub struct CapabilitiesXml {
    /// `<host>`.
    pub host: HostXml,
    /// One `<guest>` per architecture with an emulator.
    pub guest: Vec<GuestXml>,
}

/// `<host>`.
#[derive(Debug, Serialize)]
pub struct HostXml {
    /// `<uuid>`.
    pub uuid: String,
    /// `<cpu>`.
    pub cpu: HostCpuXml,
    /// `<power_management>`.
    pub power_management: PowerXml,
    /// `<iommu support=...>`.
    pub iommu: IommuXml,
    /// `<topology>`.
    pub topology: TopologyXml,
    /// `<secmodel>`.
    pub secmodel: Vec<SecmodelXml>,
}

/// The host `<cpu>`.
#[derive(Debug, Serialize)]
pub struct HostCpuXml {
    /// `<arch>`.
    pub arch: String,
    /// `<model>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `<vendor>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// `<microcode version=.../>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub microcode: Option<MicrocodeXml>,
    /// `<signature family model stepping/>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureXml>,
    /// `<topology .../>`.
    pub topology: CpuTopologyXml,
    /// `<maxphysaddr mode='emulate' bits=.../>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxphysaddr: Option<MaxPhysAddrXml>,
    /// `<pages unit='KiB' size=.../>`.
    pub pages: Vec<PageSizeXml>,
}

/// `<microcode>`.
#[derive(Debug, Serialize)]
pub struct MicrocodeXml {
    /// The revision.
    #[serde(rename = "@version")]
    pub version: u64,
}

/// `<signature>`.
#[derive(Debug, Serialize)]
pub struct SignatureXml {
    /// CPU family.
    #[serde(rename = "@family")]
    pub family: u32,
    /// Model.
    #[serde(rename = "@model")]
    pub model: u32,
    /// Stepping.
    #[serde(rename = "@stepping")]
    pub stepping: u32,
}

/// The CPU `<topology>`.
#[derive(Debug, Serialize)]
pub struct CpuTopologyXml {
    /// Sockets.
    #[serde(rename = "@sockets")]
    pub sockets: u32,
    /// Dies.
    #[serde(rename = "@dies")]
    pub dies: u32,
    /// Clusters.
    #[serde(rename = "@clusters")]
    pub clusters: u32,
    /// Cores.
    #[serde(rename = "@cores")]
    pub cores: u32,
    /// Threads.
    #[serde(rename = "@threads")]
    pub threads: u32,
}

/// `<maxphysaddr>`.
#[derive(Debug, Serialize)]
pub struct MaxPhysAddrXml {
    /// `emulate`.
    #[serde(rename = "@mode")]
    pub mode: &'static str,
    /// Address bits.
    #[serde(rename = "@bits")]
    pub bits: u32,
}

/// A page size.
#[derive(Debug, Serialize)]
pub struct PageSizeXml {
    /// `KiB`.
    #[serde(rename = "@unit")]
    pub unit: &'static str,
    /// The size.
    #[serde(rename = "@size")]
    pub size: u64,
}

/// `<power_management>`.
#[derive(Debug, Serialize)]
pub struct PowerXml {
    /// `<suspend_mem/>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend_mem: Option<Empty>,
    /// `<suspend_disk/>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend_disk: Option<Empty>,
    /// `<suspend_hybrid/>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend_hybrid: Option<Empty>,
}

/// `<iommu>`.
#[derive(Debug, Serialize)]
pub struct IommuXml {
    /// `yes` or `no`.
    #[serde(rename = "@support")]
    pub support: &'static str,
}

/// The NUMA `<topology>`.
#[derive(Debug, Serialize)]
pub struct TopologyXml {
    /// `<cells>`.
    pub cells: CellsXml,
}

/// `<cells>`.
#[derive(Debug, Serialize)]
pub struct CellsXml {
    /// How many.
    #[serde(rename = "@num")]
    pub num: usize,
    /// The cells.
    pub cell: Vec<CellXml>,
}

/// One `<cell>`.
#[derive(Debug, Serialize)]
pub struct CellXml {
    /// Node number.
    #[serde(rename = "@id")]
    pub id: u32,
    /// `<memory unit='KiB'>`.
    pub memory: MemoryXml,
    /// `<pages unit='KiB' size=...>count</pages>`.
    pub pages: Vec<PagesXml>,
    /// `<distances>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distances: Option<DistancesXml>,
    /// `<cpus>`.
    pub cpus: CpusXml,
}

/// `<memory>`.
#[derive(Debug, Serialize)]
pub struct MemoryXml {
    /// `KiB`.
    #[serde(rename = "@unit")]
    pub unit: &'static str,
    /// The amount.
    #[serde(rename = "$text")]
    pub value: u64,
}

/// A cell's pages of one size.
#[derive(Debug, Serialize)]
pub struct PagesXml {
    /// `KiB`.
    #[serde(rename = "@unit")]
    pub unit: &'static str,
    /// The size.
    #[serde(rename = "@size")]
    pub size: u64,
    /// How many.
    #[serde(rename = "$text")]
    pub count: u64,
}

/// `<distances>`.
#[derive(Debug, Serialize)]
pub struct DistancesXml {
    /// `<sibling id value/>`.
    pub sibling: Vec<SiblingXml>,
}

/// `<sibling>`.
#[derive(Debug, Serialize)]
pub struct SiblingXml {
    /// The other node.
    #[serde(rename = "@id")]
    pub id: u32,
    /// The distance.
    #[serde(rename = "@value")]
    pub value: u32,
}

/// `<cpus>`.
#[derive(Debug, Serialize)]
pub struct CpusXml {
    /// How many.
    #[serde(rename = "@num")]
    pub num: usize,
    /// The CPUs.
    pub cpu: Vec<CellCpuXml>,
}

/// One `<cpu>` of a cell.
#[derive(Debug, Serialize)]
pub struct CellCpuXml {
    /// Its number.
    #[serde(rename = "@id")]
    pub id: u32,
    /// `socket_id`.
    #[serde(rename = "@socket_id", skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<u32>,
    /// `die_id`.
    #[serde(rename = "@die_id", skip_serializing_if = "Option::is_none")]
    pub die_id: Option<u32>,
    /// `cluster_id`.
    #[serde(rename = "@cluster_id", skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<u32>,
    /// `core_id`.
    #[serde(rename = "@core_id", skip_serializing_if = "Option::is_none")]
    pub core_id: Option<u32>,
    /// `siblings`.
    #[serde(rename = "@siblings", skip_serializing_if = "Option::is_none")]
    pub siblings: Option<String>,
}

/// `<secmodel>`.
#[derive(Debug, Serialize)]
pub struct SecmodelXml {
    /// `<model>`.
    pub model: String,
    /// `<doi>`.
    pub doi: String,
}

/// `<guest>`.
#[derive(Debug, Serialize)]
pub struct GuestXml {
    /// `hvm`.
    pub os_type: &'static str,
    /// `<arch>`.
    pub arch: GuestArchXml,
    /// `<features>`.
    pub features: GuestFeaturesXml,
}

/// A guest `<arch>`.
#[derive(Debug, Serialize)]
pub struct GuestArchXml {
    /// libvirt's name.
    #[serde(rename = "@name")]
    pub name: String,
    /// `<wordsize>`.
    pub wordsize: u32,
    /// `<emulator>`.
    pub emulator: String,
    /// `<machine>`s.
    pub machine: Vec<MachineXml>,
    /// `<domain type=...>`s.
    pub domain: Vec<GuestDomainXml>,
}

/// A `<machine>`.
#[derive(Debug, Serialize)]
pub struct MachineXml {
    /// The machine an alias stands for.
    #[serde(rename = "@canonical", skip_serializing_if = "Option::is_none")]
    pub canonical: Option<String>,
    /// The most CPUs.
    #[serde(rename = "@maxCpus")]
    pub max_cpus: u32,
    /// `yes` when deprecated.
    #[serde(rename = "@deprecated", skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<&'static str>,
    /// The name.
    #[serde(rename = "$text")]
    pub name: String,
}

/// A guest `<domain>`.
#[derive(Debug, Serialize)]
pub struct GuestDomainXml {
    /// `qemu` or `kvm`.
    #[serde(rename = "@type")]
    pub kind: &'static str,
}

/// Guest `<features>`.
#[derive(Debug, Default, Serialize)]
pub struct GuestFeaturesXml {
    /// `<pae/>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pae: Option<Empty>,
    /// `<nonpae/>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonpae: Option<Empty>,
    /// `<acpi default toggle/>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acpi: Option<ToggleXml>,
    /// `<apic default toggle/>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apic: Option<ToggleXml>,
    /// `<cpuselection/>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpuselection: Option<Empty>,
    /// `<deviceboot/>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deviceboot: Option<Empty>,
    /// `<disksnapshot default toggle/>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disksnapshot: Option<ToggleXml>,
}

/// A feature with a default and whether it can be toggled.
#[derive(Debug, Serialize)]
pub struct ToggleXml {
    /// `on` / `off`.
    #[serde(rename = "@default")]
    pub default: &'static str,
    /// `yes` / `no`.
    #[serde(rename = "@toggle")]
    pub toggle: &'static str,
}

// ---- <domainCapabilities> ----

/// `<domainCapabilities>`.
#[derive(Debug, Serialize)]
pub struct DomainCapsXml {
    /// `<path>`: the emulator.
    pub path: String,
    /// `<domain>`: `kvm` or `qemu`.
    pub domain: &'static str,
    /// `<machine>`: the canonical machine type.
    pub machine: String,
    /// `<arch>`.
    pub arch: String,
    /// `<vcpu max=.../>`.
    pub vcpu: VcpuXml,
    /// `<iothreads supported=.../>`.
    pub iothreads: Supported,
    /// `<os>`.
    pub os: OsXml,
    /// `<cpu>`.
    pub cpu: CpuModesXml,
    /// `<devices>`.
    pub devices: DevicesXml,
    /// `<features>`.
    pub features: DomainFeaturesXml,
}

/// `<vcpu>`.
#[derive(Debug, Serialize)]
pub struct VcpuXml {
    /// The most vCPUs.
    #[serde(rename = "@max")]
    pub max: u32,
}

/// An element with only `supported`.
#[derive(Debug, Serialize)]
pub struct Supported {
    /// `yes` / `no`.
    #[serde(rename = "@supported")]
    pub supported: &'static str,
}

impl Supported {
    /// `supported='yes'` or `'no'`.
    pub fn new(yes: bool) -> Supported {
        Supported {
            supported: yes_no(yes),
        }
    }
}

/// An `<enum name=...>` of `<value>`s.
#[derive(Debug, Serialize)]
pub struct EnumXml {
    /// Its name.
    #[serde(rename = "@name")]
    pub name: &'static str,
    /// Its values.
    pub value: Vec<String>,
}

impl EnumXml {
    /// An enum of `values`.
    pub fn new<S: Into<String>>(name: &'static str, values: impl IntoIterator<Item = S>) -> EnumXml {
        EnumXml {
            name,
            value: values.into_iter().map(Into::into).collect(),
        }
    }
}

/// An element with `supported` and enums.
#[derive(Debug, Serialize)]
pub struct SupportedEnums {
    /// `yes` / `no`.
    #[serde(rename = "@supported")]
    pub supported: &'static str,
    /// Its enums.
    #[serde(rename = "enum")]
    pub enums: Vec<EnumXml>,
}

impl SupportedEnums {
    /// `supported` with `enums` (none when unsupported).
    pub fn new(supported: bool, enums: Vec<EnumXml>) -> SupportedEnums {
        SupportedEnums {
            supported: yes_no(supported),
            enums: if supported { enums } else { Vec::new() },
        }
    }
}

/// `<os>`.
#[derive(Debug, Serialize)]
pub struct OsXml {
    /// `yes`.
    #[serde(rename = "@supported")]
    pub supported: &'static str,
    /// `<enum name='firmware'>`.
    #[serde(rename = "enum")]
    pub enums: Vec<EnumXml>,
    /// `<loader>`.
    pub loader: LoaderXml,
}

/// `<loader>`.
#[derive(Debug, Serialize)]
pub struct LoaderXml {
    /// `yes`.
    #[serde(rename = "@supported")]
    pub supported: &'static str,
    /// Firmware image paths.
    pub value: Vec<String>,
    /// `type`, `readonly`, `secure`.
    #[serde(rename = "enum")]
    pub enums: Vec<EnumXml>,
}

/// `<cpu>` with its four modes.
#[derive(Debug, Serialize)]
pub struct CpuModesXml {
    /// host-passthrough, maximum, host-model, custom, in that order.
    pub mode: Vec<CpuModeXml>,
}

/// One CPU `<mode>`.
#[derive(Debug, Serialize)]
pub struct CpuModeXml {
    /// The mode's name.
    #[serde(rename = "@name")]
    pub name: &'static str,
    /// `yes` / `no`.
    #[serde(rename = "@supported")]
    pub supported: &'static str,
    /// Its content, in order.
    #[serde(rename = "$value", skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<CpuModeItem>,
}

/// What a CPU mode lists.
#[derive(Debug, Serialize)]
pub enum CpuModeItem {
    /// `<enum>` (migratable choices).
    #[serde(rename = "enum")]
    Enum(EnumXml),
    /// The host-model `<model fallback='forbid'>`.
    #[serde(rename = "model")]
    HostModel(HostModelXml),
    /// `<vendor>`.
    #[serde(rename = "vendor")]
    Vendor(String),
    /// A custom `<model>`.
    #[serde(rename = "model")]
    Model(CustomModelXml),
    /// `<blockers>` of the model before.
    #[serde(rename = "blockers")]
    Blockers(BlockersXml),
}

/// The host-model `<model>`.
#[derive(Debug, Serialize)]
pub struct HostModelXml {
    /// `forbid`.
    #[serde(rename = "@fallback")]
    pub fallback: &'static str,
    /// The model.
    #[serde(rename = "$text")]
    pub name: String,
}

/// A custom `<model>`.
#[derive(Debug, Serialize)]
pub struct CustomModelXml {
    /// `yes`, `no` or `unknown`.
    #[serde(rename = "@usable")]
    pub usable: &'static str,
    /// `yes` when deprecated.
    #[serde(rename = "@deprecated", skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<&'static str>,
    /// The vendor.
    #[serde(rename = "@vendor")]
    pub vendor: &'static str,
    /// The versioned model an alias stands for.
    #[serde(rename = "@canonical", skip_serializing_if = "Option::is_none")]
    pub canonical: Option<String>,
    /// The name.
    #[serde(rename = "$text")]
    pub name: String,
}

/// `<blockers model=...>`.
#[derive(Debug, Serialize)]
pub struct BlockersXml {
    /// The model.
    #[serde(rename = "@model")]
    pub model: String,
    /// The missing features.
    pub feature: Vec<NamedXml>,
}

/// An element with only a `name`.
#[derive(Debug, Serialize)]
pub struct NamedXml {
    /// The name.
    #[serde(rename = "@name")]
    pub name: String,
}

/// `<devices>`.
#[derive(Debug, Serialize)]
pub struct DevicesXml {
    /// `<disk>`.
    pub disk: SupportedEnums,
    /// `<graphics>`.
    pub graphics: SupportedEnums,
    /// `<video>`.
    pub video: SupportedEnums,
    /// `<hostdev>`.
    pub hostdev: SupportedEnums,
    /// `<rng>`.
    pub rng: SupportedEnums,
}

/// Domain `<features>`.
#[derive(Debug, Serialize)]
pub struct DomainFeaturesXml {
    /// `<gic>`.
    pub gic: Supported,
    /// `<vmcoreinfo>`.
    pub vmcoreinfo: Supported,
    /// `<genid>`.
    pub genid: Supported,
    /// `<backingStoreInput>`.
    #[serde(rename = "backingStoreInput")]
    pub backing_store_input: Supported,
    /// `<backup>`.
    pub backup: Supported,
    /// `<s390-pv>`.
    #[serde(rename = "s390-pv")]
    pub s390_pv: Supported,
    /// `<ps2>`.
    pub ps2: Supported,
    /// `<sev>`.
    pub sev: Supported,
    /// `<sgx>`.
    pub sgx: Supported,
}
