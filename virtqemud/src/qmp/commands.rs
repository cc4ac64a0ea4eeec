//! Typed QMP commands and their answers, after QEMU's schema (`qapi/*.json`, QEMU 10.0).
//!
//! A command is a serializable struct of its arguments implementing [`QmpCommand`], which names
//! it and its answer type. Answers ignore members this client does not know, so a newer QEMU
//! that adds members keeps working. [`super::QmpClient::execute_raw`] is the escape hatch for
//! everything not typed here.

use super::name::Name;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A QMP command: its arguments (the struct itself), its name and its answer.
pub trait QmpCommand: Serialize {
    /// The command's name on the wire (`query-status`).
    const NAME: &'static str;
    /// What a successful command returns.
    type Output: DeserializeOwned;
}

/// The answer `{}` of commands that return nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct Empty {}

macro_rules! no_arg_command {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $out:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, Serialize)]
        pub struct $ty {}

        impl QmpCommand for $ty {
            const NAME: &'static str = $name;
            type Output = $out;
        }
    };
}

no_arg_command!(
    /// `qmp_capabilities`: leaves capabilities negotiation mode (sent by the client itself).
    QmpCapabilities, "qmp_capabilities", Empty
);
no_arg_command!(
    /// `query-status`: the VM's run state.
    QueryStatus, "query-status", StatusInfo
);
no_arg_command!(
    /// `cont`: starts or resumes the vCPUs.
    Cont, "cont", Empty
);
no_arg_command!(
    /// `stop`: pauses the vCPUs.
    Stop, "stop", Empty
);
no_arg_command!(
    /// `system_powerdown`: presses the ACPI power button.
    SystemPowerdown, "system_powerdown", Empty
);
no_arg_command!(
    /// `system_reset`: resets the machine.
    SystemReset, "system_reset", Empty
);
no_arg_command!(
    /// `quit`: QEMU exits at once (the connection then closes).
    Quit, "quit", Empty
);
no_arg_command!(
    /// `query-cpu-definitions`: the CPU models, with what the accelerator lacks for each.
    QueryCpuDefinitions, "query-cpu-definitions", Vec<CpuDefinitionInfo>
);
no_arg_command!(
    /// `query-version`: QEMU's version.
    QueryVersion, "query-version", VersionInfo
);
no_arg_command!(
    /// `query-kvm`: whether KVM is present and in use.
    QueryKvm, "query-kvm", KvmInfo
);
no_arg_command!(
    /// `query-commands`: the commands this QEMU has.
    QueryCommands, "query-commands", Vec<CommandInfo>
);
no_arg_command!(
    /// `query-target`: the architecture this QEMU emulates.
    QueryTarget, "query-target", TargetInfo
);
no_arg_command!(
    /// `query-balloon`: the guest's current memory through the balloon.
    QueryBalloon, "query-balloon", BalloonInfo
);
no_arg_command!(
    /// `query-cpus-fast`: the vCPUs and their host threads, without interrupting them.
    QueryCpusFast, "query-cpus-fast", Vec<CpuInfoFast>
);

/// `query-machines`: the machine types.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueryMachines {
    /// Also return each machine's compatibility properties.
    #[serde(rename = "compat-props", skip_serializing_if = "Option::is_none")]
    pub compat_props: Option<bool>,
}

impl QmpCommand for QueryMachines {
    const NAME: &'static str = "query-machines";
    type Output = Vec<MachineInfo>;
}

/// `qom-list-types`: the QOM types, optionally those implementing a type.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QomListTypes {
    /// Only types that implement this one (e.g. `device`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub implements: Option<String>,
    /// Include abstract types.
    #[serde(rename = "abstract", skip_serializing_if = "Option::is_none")]
    pub include_abstract: Option<bool>,
}

impl QmpCommand for QomListTypes {
    const NAME: &'static str = "qom-list-types";
    type Output = Vec<ObjectTypeInfo>;
}

/// `device_del`: asks the guest to release a device; `DEVICE_DELETED` tells when it is gone.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceDel {
    /// The device's id or QOM path.
    pub id: String,
}

impl QmpCommand for DeviceDel {
    const NAME: &'static str = "device_del";
    type Output = Empty;
}

/// `balloon`: asks the guest to resize its memory through the balloon.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Balloon {
    /// The target size in bytes.
    pub value: u64,
}

impl QmpCommand for Balloon {
    const NAME: &'static str = "balloon";
    type Output = Empty;
}

/// `query-blockstats`: I/O counters of the block devices.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueryBlockstats {
    /// Report every named node instead of the devices' root nodes.
    #[serde(rename = "query-nodes", skip_serializing_if = "Option::is_none")]
    pub query_nodes: Option<bool>,
}

impl QmpCommand for QueryBlockstats {
    const NAME: &'static str = "query-blockstats";
    type Output = Vec<BlockStats>;
}

/// `human-monitor-command`: runs a human monitor (HMP) command line; its output as text.
/// The escape hatch for what QMP lacks: never parse its output for anything that matters.
#[derive(Debug, Clone, Serialize)]
pub struct HumanMonitorCommand {
    /// The HMP command line, e.g. `info registers`.
    #[serde(rename = "command-line")]
    pub command_line: String,
    /// The CPU the command applies to.
    #[serde(rename = "cpu-index", skip_serializing_if = "Option::is_none")]
    pub cpu_index: Option<i64>,
}

impl QmpCommand for HumanMonitorCommand {
    const NAME: &'static str = "human-monitor-command";
    type Output = String;
}

/// QEMU's run states (`RunState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Stopped by a debugger.
    Debug,
    /// Waiting for an incoming migration.
    Inmigrate,
    /// An internal error stopped the VM.
    InternalError,
    /// An I/O error stopped the VM.
    IoError,
    /// Paused by `stop`.
    Paused,
    /// Paused after an outgoing migration.
    Postmigrate,
    /// Not started yet (`-S`).
    Prelaunch,
    /// Finishing an outgoing migration.
    FinishMigrate,
    /// Restoring state.
    RestoreVm,
    /// Running.
    Running,
    /// Saving state.
    SaveVm,
    /// Shut down (with `-no-shutdown`).
    Shutdown,
    /// Suspended (ACPI S3).
    Suspended,
    /// Stopped by a watchdog.
    Watchdog,
    /// Stopped after a guest panic.
    GuestPanicked,
    /// COLO replication.
    Colo,
    /// A state this client does not know.
    #[serde(other)]
    Unknown,
}

/// The answer of `query-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// Whether the vCPUs run.
    pub running: bool,
    /// The run state.
    pub status: RunState,
}

/// One machine type (`MachineInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MachineInfo {
    /// Its versioned name, e.g. `pc-q35-10.0`.
    pub name: Name,
    /// Its short alias, e.g. `q35`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<Name>,
    /// Whether it is the default machine.
    #[serde(default)]
    pub is_default: bool,
    /// The most CPUs it takes.
    pub cpu_max: u32,
    /// Whether CPUs can be hot-plugged.
    #[serde(default)]
    pub hotpluggable_cpus: bool,
    /// Whether it is deprecated.
    #[serde(default)]
    pub deprecated: bool,
    /// The QOM type of its default CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_cpu_type: Option<Name>,
    /// The id of its default RAM backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ram_id: Option<Name>,
    /// Whether it has ACPI.
    #[serde(default)]
    pub acpi: bool,
}

/// One CPU model (`CpuDefinitionInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuDefinitionInfo {
    /// The model's name, e.g. `EPYC-Rome`.
    pub name: Name,
    /// Whether it is migration-safe.
    #[serde(default)]
    pub migration_safe: bool,
    /// Whether it is static (never changes between QEMU versions).
    #[serde(default, rename = "static")]
    pub is_static: bool,
    /// What the accelerator lacks to run this model; empty when usable, absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_features: Option<Vec<Name>>,
    /// Its QOM type.
    #[serde(default)]
    pub typename: Name,
    /// The versioned model this name stands for (`EPYC-Rome` → `EPYC-Rome-v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias_of: Option<Name>,
    /// Whether it is deprecated.
    #[serde(default)]
    pub deprecated: bool,
}

/// QEMU's version numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Micro.
    pub micro: u32,
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// The answer of `query-version` (and the version in the greeting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The version.
    pub qemu: QemuVersion,
    /// The distributor's package string.
    #[serde(default)]
    pub package: String,
}

/// The answer of `query-kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct KvmInfo {
    /// KVM is in use.
    pub enabled: bool,
    /// KVM is built in and the host has it.
    pub present: bool,
}

/// One entry of `query-commands`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CommandInfo {
    /// The command's name.
    pub name: Name,
}

/// The answer of `query-target`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TargetInfo {
    /// QEMU's name for the architecture (`x86_64`, `i386`, `aarch64`).
    pub arch: String,
}

/// One entry of `qom-list-types`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ObjectTypeInfo {
    /// The type's name.
    pub name: Name,
    /// Whether it is abstract.
    #[serde(default, rename = "abstract")]
    pub is_abstract: bool,
    /// Its parent type.
    #[serde(default)]
    pub parent: Option<String>,
}

/// The answer of `query-balloon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct BalloonInfo {
    /// The guest's memory in bytes.
    pub actual: u64,
}

/// One vCPU (`CpuInfoFast`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuInfoFast {
    /// Its index.
    pub cpu_index: i64,
    /// Its QOM path.
    pub qom_path: String,
    /// The host thread running it.
    pub thread_id: i64,
    /// The target architecture.
    #[serde(default)]
    pub target: String,
    /// Its topology properties, as QEMU sent them.
    #[serde(default)]
    pub props: Option<Value>,
}

/// I/O counters of one block device or node (`BlockDeviceStats`, the members rvirt reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct BlockDeviceStats {
    /// Bytes read.
    #[serde(default)]
    pub rd_bytes: u64,
    /// Bytes written.
    #[serde(default)]
    pub wr_bytes: u64,
    /// Read requests.
    #[serde(default)]
    pub rd_operations: u64,
    /// Write requests.
    #[serde(default)]
    pub wr_operations: u64,
    /// Flush requests.
    #[serde(default)]
    pub flush_operations: u64,
    /// Nanoseconds spent reading.
    #[serde(default)]
    pub rd_total_time_ns: u64,
    /// Nanoseconds spent writing.
    #[serde(default)]
    pub wr_total_time_ns: u64,
    /// Nanoseconds spent flushing.
    #[serde(default)]
    pub flush_total_time_ns: u64,
    /// The highest offset written, in bytes.
    #[serde(default)]
    pub wr_highest_offset: u64,
}

/// One entry of `query-blockstats`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockStats {
    /// The legacy drive name, when there is one.
    #[serde(default)]
    pub device: Option<String>,
    /// The node name.
    #[serde(default)]
    pub node_name: Option<String>,
    /// The guest device's id or QOM path.
    #[serde(default)]
    pub qdev: Option<String>,
    /// The counters.
    pub stats: BlockDeviceStats,
    /// The counters of the protocol layer below.
    #[serde(default)]
    pub parent: Option<Box<BlockStats>>,
}
