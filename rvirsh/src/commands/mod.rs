//! The command table (virsh's names, options and help lines, by group) and the dispatcher.

mod console;
mod domain;
mod event;
mod host;
mod network;
mod pool;
mod secret;
mod volume;

pub use event::{End, EventOptions, event_loop};

use crate::parse::{Args, Opt};
use crate::shell::Shell;

/// A failed command: the `error:` lines to print (none for a failure virsh reports only by its
/// exit status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdError {
    /// The lines, without the `error: ` prefix.
    pub lines: Vec<String>,
}

impl CmdError {
    /// One line.
    pub fn msg(line: impl Into<String>) -> CmdError {
        CmdError {
            lines: vec![line.into()],
        }
    }

    /// virsh's pair: what rvirsh was doing, then the library's error.
    pub fn with(context: impl Into<String>, error: rvirt::Error) -> CmdError {
        CmdError {
            lines: vec![context.into(), error.message],
        }
    }

    /// A failure with nothing to print.
    pub fn silent() -> CmdError {
        CmdError { lines: Vec::new() }
    }
}

impl From<rvirt::Error> for CmdError {
    fn from(e: rvirt::Error) -> Self {
        CmdError::msg(e.message)
    }
}

/// What a command returns.
pub type CmdResult = Result<(), CmdError>;

/// A command group, as `help` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    /// The heading.
    pub name: &'static str,
    /// The keyword for `help KEYWORD`.
    pub keyword: &'static str,
}

/// Domain Management.
pub const DOMAIN: Group = Group {
    name: "Domain Management",
    keyword: "domain",
};
/// Domain Monitoring.
pub const MONITOR: Group = Group {
    name: "Domain Monitoring",
    keyword: "monitor",
};
/// Host and Hypervisor.
pub const HOST: Group = Group {
    name: "Host and Hypervisor",
    keyword: "host",
};
/// Networking.
pub const NETWORK: Group = Group {
    name: "Networking",
    keyword: "network",
};
/// Storage Pool.
pub const POOL: Group = Group {
    name: "Storage Pool",
    keyword: "pool",
};
/// Storage Volume.
pub const VOLUME: Group = Group {
    name: "Storage Volume",
    keyword: "volume",
};
/// Secret.
pub const SECRET: Group = Group {
    name: "Secret",
    keyword: "secret",
};
/// The shell itself.
pub const VIRSH: Group = Group {
    name: "Virsh itself",
    keyword: "virsh",
};

/// The groups in `help` order.
pub const GROUPS: &[Group] = &[DOMAIN, MONITOR, HOST, NETWORK, POOL, VOLUME, SECRET, VIRSH];

/// One command.
#[derive(Debug, Clone, Copy)]
pub struct CmdDef {
    /// Its name.
    pub name: &'static str,
    /// Its group.
    pub group: Group,
    /// One line for the group listing.
    pub help: &'static str,
    /// The description for `help NAME`.
    pub desc: &'static str,
    /// Its options.
    pub opts: &'static [Opt],
}

const DOMAIN_OPT: Opt = Opt::data("domain", "domain name, id or uuid");
const NETWORK_OPT: Opt = Opt::data("network", "network name or uuid");
const POOL_OPT: Opt = Opt::data("pool", "pool name or uuid");
const VOL_OPT: Opt = Opt::data("vol", "vol name, key or path");
const POOL_OPTIONAL: Opt = Opt::string("pool", "pool name or uuid");
const SECRET_OPT: Opt = Opt::data("secret", "secret UUID");
const FILE_OPT: Opt = Opt::data("file", "file containing an XML description");
const VALIDATE: Opt = Opt::flag("validate", "validate the XML against the schema");
const CONFIG: Opt = Opt::flag("config", "affect next boot");
const LIVE: Opt = Opt::flag("live", "affect running domain");
const CURRENT: Opt = Opt::flag("current", "affect current domain");

macro_rules! cmd {
    ($name:literal, $group:expr, $help:literal, $desc:literal, [$($opt:expr),* $(,)?]) => {
        CmdDef { name: $name, group: $group, help: $help, desc: $desc, opts: &[$($opt),*] }
    };
}

/// Every command, by group.
pub static COMMANDS: &[CmdDef] = &[
    cmd!(
        "attach-device",
        DOMAIN,
        "attach device from an XML file",
        "Attach device from an XML <file>.",
        [
            DOMAIN_OPT,
            Opt::data("file", "XML file"),
            Opt::flag("persistent", "make live change persistent"),
            CONFIG,
            LIVE,
            CURRENT
        ]
    ),
    cmd!(
        "attach-disk",
        DOMAIN,
        "attach disk device",
        "Attach new disk device.",
        [
            DOMAIN_OPT,
            Opt::data("source", "source of disk device or name of network disk"),
            Opt::data("target", "target of disk device"),
            Opt::named("targetbus", "target bus of disk device"),
            Opt::named("driver", "driver of disk device"),
            Opt::named("subdriver", "subdriver of disk device"),
            Opt::named("cache", "cache mode of disk device"),
            Opt::named("type", "target device type"),
            Opt::named("mode", "mode of device reading and writing"),
            Opt::named("sourcetype", "type of source (block|file)"),
            Opt::named("serial", "serial of disk device"),
            Opt::flag("print-xml", "print XML document rather than attach the disk"),
            Opt::flag("persistent", "make live change persistent"),
            CONFIG,
            LIVE,
            CURRENT
        ]
    ),
    cmd!(
        "detach-disk",
        DOMAIN,
        "detach disk device",
        "Detach disk device.",
        [
            DOMAIN_OPT,
            Opt::data("target", "target of disk device"),
            Opt::flag("print-xml", "print XML document rather than detach the disk"),
            Opt::flag("persistent", "make live change persistent"),
            CONFIG,
            LIVE,
            CURRENT
        ]
    ),
    cmd!(
        "attach-interface",
        DOMAIN,
        "attach network interface",
        "Attach new network interface.",
        [
            DOMAIN_OPT,
            Opt::data("type", "network interface type"),
            Opt::string("source", "source of network interface"),
            Opt::named("target", "target network name"),
            Opt::named("mac", "MAC address"),
            Opt::named("model", "model type"),
            Opt::flag("print-xml", "print XML document rather than attach the interface"),
            Opt::flag("persistent", "make live change persistent"),
            CONFIG,
            LIVE,
            CURRENT
        ]
    ),
    cmd!(
        "detach-interface",
        DOMAIN,
        "detach network interface",
        "Detach network interface.",
        [
            DOMAIN_OPT,
            Opt::data("type", "network interface type"),
            Opt::named("mac", "MAC address"),
            Opt::flag("persistent", "make live change persistent"),
            CONFIG,
            LIVE,
            CURRENT
        ]
    ),
    cmd!(
        "change-media",
        DOMAIN,
        "Change media of CD or floppy drive",
        "Change media of CD or floppy drive.",
        [
            DOMAIN_OPT,
            Opt::data("path", "Fully-qualified path or target of disk device"),
            Opt::string("source", "source of the media"),
            Opt::flag("eject", "Eject the media"),
            Opt::flag("insert", "Insert the media"),
            Opt::flag("update", "Update the media"),
            CURRENT,
            LIVE,
            CONFIG,
            Opt::flag("force", "force media changing"),
            Opt::flag("print-xml", "print XML document rather than change media")
        ]
    ),
    cmd!(
        "domrename",
        DOMAIN,
        "rename a domain",
        "Rename an inactive domain.",
        [DOMAIN_OPT, Opt::data("new-name", "new domain name")]
    ),
    cmd!(
        "desc",
        DOMAIN,
        "show or set domain's description or title",
        "Allows setting or modifying the description or title of a domain.",
        [
            DOMAIN_OPT,
            LIVE,
            CONFIG,
            CURRENT,
            Opt::flag("title", "modify/get the title instead of description"),
            Opt::flag("edit", "open an editor to modify the description"),
            Opt::string("new-desc", "message")
        ]
    ),
    cmd!(
        "metadata",
        DOMAIN,
        "show or set domain's custom XML metadata",
        "Shows or modifies the XML metadata of a domain.",
        [
            DOMAIN_OPT,
            Opt::data("uri", "URI of the namespace"),
            LIVE,
            CONFIG,
            CURRENT,
            Opt::flag("edit", "use an editor to change the metadata"),
            Opt::named("key", "key to be used as a namespace identifier"),
            Opt::named("set", "new metadata to set"),
            Opt::flag("remove", "remove the metadata corresponding to an uri")
        ]
    ),
    cmd!(
        "autostart",
        DOMAIN,
        "autostart a domain",
        "Configure a domain to be automatically started at boot.",
        [DOMAIN_OPT, Opt::flag("disable", "disable autostarting")]
    ),
    cmd!(
        "console",
        DOMAIN,
        "connect to the guest console",
        "Connect the virtual serial console for the guest",
        [
            DOMAIN_OPT,
            Opt::string("devname", "character device name"),
            Opt::flag(
                "force",
                "force console connection (disconnect already connected sessions)"
            ),
            Opt::flag("safe", "only connect if safe console handling is supported")
        ]
    ),
    cmd!(
        "create",
        DOMAIN,
        "create a domain from an XML file",
        "Create a domain.",
        [
            FILE_OPT,
            Opt::flag("console", "attach to console after creation"),
            Opt::flag("paused", "leave the guest paused after creation"),
            Opt::flag(
                "autodestroy",
                "automatically destroy the guest when virsh disconnects"
            ),
            VALIDATE
        ]
    ),
    cmd!(
        "define",
        DOMAIN,
        "define (but don't start) a domain from an XML file",
        "Define a domain.",
        [FILE_OPT, VALIDATE]
    ),
    cmd!(
        "destroy",
        DOMAIN,
        "destroy (stop) a domain",
        "Forcefully stop a given domain, but leave its resources intact.",
        [
            DOMAIN_OPT,
            Opt::flag("graceful", "terminate gracefully"),
            Opt::flag("remove-logs", "remove domain logs")
        ]
    ),
    cmd!(
        "detach-device",
        DOMAIN,
        "detach device from an XML file",
        "Detach device from an XML <file>",
        [
            DOMAIN_OPT,
            Opt::data("file", "XML file"),
            Opt::flag("persistent", "make live change persistent"),
            CONFIG,
            LIVE,
            CURRENT
        ]
    ),
    cmd!(
        "dumpxml",
        DOMAIN,
        "domain information in XML",
        "Output the domain information as an XML dump to stdout.",
        [
            DOMAIN_OPT,
            Opt::flag("inactive", "show inactive defined XML"),
            Opt::flag(
                "security-info",
                "include security sensitive information in XML dump"
            ),
            Opt::flag("update-cpu", "update guest CPU according to host CPU"),
            Opt::flag("migratable", "provide XML suitable for migrations")
        ]
    ),
    cmd!(
        "reboot",
        DOMAIN,
        "reboot a domain",
        "Run a reboot command in the target domain.",
        [
            DOMAIN_OPT,
            Opt::string("mode", "shutdown mode: acpi|agent|initctl|signal|paravirt")
        ]
    ),
    cmd!(
        "reset",
        DOMAIN,
        "reset a domain",
        "Reset the target domain as if by power button",
        [DOMAIN_OPT]
    ),
    cmd!(
        "resume",
        DOMAIN,
        "resume a domain",
        "Resume a previously suspended domain.",
        [DOMAIN_OPT]
    ),
    cmd!(
        "setmaxmem",
        DOMAIN,
        "change maximum memory limit",
        "Change the maximum memory allocation limit in the guest domain.",
        [
            DOMAIN_OPT,
            Opt::data("size", "new maximum memory size, as scaled integer (default KiB)"),
            CONFIG,
            LIVE,
            CURRENT
        ]
    ),
    cmd!(
        "setmem",
        DOMAIN,
        "change memory allocation",
        "Change the current memory allocation in the guest domain.",
        [
            DOMAIN_OPT,
            Opt::data("size", "new memory size, as scaled integer (default KiB)"),
            CONFIG,
            LIVE,
            CURRENT
        ]
    ),
    cmd!(
        "setvcpus",
        DOMAIN,
        "change number of virtual CPUs",
        "Change the number of virtual CPUs in the guest domain.",
        [
            DOMAIN_OPT,
            Opt::data("count", "number of virtual CPUs"),
            Opt::flag("maximum", "set maximum limit on next boot"),
            CONFIG,
            LIVE,
            CURRENT,
            Opt::flag("guest", "modify cpu state in the guest"),
            Opt::flag("hotpluggable", "make added vcpus hot(un)pluggable")
        ]
    ),
    cmd!(
        "shutdown",
        DOMAIN,
        "gracefully shutdown a domain",
        "Run shutdown in the target domain.",
        [
            DOMAIN_OPT,
            Opt::string("mode", "shutdown mode: acpi|agent|initctl|signal|paravirt")
        ]
    ),
    cmd!(
        "start",
        DOMAIN,
        "start a (previously defined) inactive domain",
        "Start a domain, either from the last managedsave\n    state, or via a fresh boot if no managedsave state\n    is present.",
        [
            Opt::data("domain", "name of the inactive domain"),
            Opt::flag("console", "attach to console after creation"),
            Opt::flag("paused", "leave the guest paused after creation"),
            Opt::flag(
                "autodestroy",
                "automatically destroy the guest when virsh disconnects"
            ),
            Opt::flag("bypass-cache", "avoid file system cache when loading"),
            Opt::flag("force-boot", "force fresh boot by discarding any managed save"),
            Opt::flag("reset-nvram", "re-initialize NVRAM from its pristine template")
        ]
    ),
    cmd!(
        "suspend",
        DOMAIN,
        "suspend a domain",
        "Suspend a running domain.",
        [DOMAIN_OPT]
    ),
    cmd!(
        "undefine",
        DOMAIN,
        "undefine a domain",
        "Undefine an inactive domain, or convert persistent to transient.",
        [
            DOMAIN_OPT,
            Opt::flag("managed-save", "remove domain managed state file"),
            Opt::flag(
                "snapshots-metadata",
                "remove all domain snapshot metadata, if inactive"
            ),
            Opt::flag(
                "checkpoints-metadata",
                "remove all domain checkpoint metadata, if inactive"
            ),
            Opt::flag("nvram", "remove nvram file"),
            Opt::flag("keep-nvram", "keep nvram file"),
            Opt::flag("tpm", "remove TPM state"),
            Opt::flag("keep-tpm", "keep TPM state")
        ]
    ),
    cmd!(
        "domid",
        MONITOR,
        "convert a domain name or UUID to domain id",
        "",
        [Opt::data("domain", "domain name or uuid")]
    ),
    cmd!(
        "dominfo",
        MONITOR,
        "domain information",
        "Returns basic information about the domain.",
        [DOMAIN_OPT]
    ),
    cmd!(
        "domname",
        MONITOR,
        "convert a domain id or UUID to domain name",
        "",
        [Opt::data("domain", "domain id or uuid")]
    ),
    cmd!(
        "domstate",
        MONITOR,
        "domain state",
        "Returns state about a domain.",
        [DOMAIN_OPT, Opt::flag("reason", "also print reason for the state")]
    ),
    cmd!(
        "domuuid",
        MONITOR,
        "convert a domain name or id to domain UUID",
        "",
        [Opt::data("domain", "domain id or name")]
    ),
    cmd!(
        "event",
        MONITOR,
        "Domain Events",
        "List event types, or wait for domain events to occur",
        [
            Opt::string("domain", "filter by domain name, id or uuid"),
            Opt::string("event", "which event type to wait for"),
            Opt::flag("all", "wait for all events instead of just one type"),
            Opt::flag("loop", "loop until timeout or interrupt, rather than one-shot"),
            Opt::int("timeout", "timeout seconds"),
            Opt::flag("list", "list valid event types"),
            Opt::flag("timestamp", "show timestamp for each printed event")
        ]
    ),
    cmd!(
        "list",
        MONITOR,
        "list domains",
        "Returns list of domains.",
        [
            Opt::flag("inactive", "list inactive domains"),
            Opt::flag("all", "list inactive & active domains"),
            Opt::flag("transient", "list transient domains"),
            Opt::flag("persistent", "list persistent domains"),
            Opt::flag("with-snapshot", "list domains with existing snapshot"),
            Opt::flag("without-snapshot", "list domains without a snapshot"),
            Opt::flag("with-checkpoint", "list domains with existing checkpoint"),
            Opt::flag("without-checkpoint", "list domains without a checkpoint"),
            Opt::flag("state-running", "list domains in running state"),
            Opt::flag("state-paused", "list domains in paused state"),
            Opt::flag("state-shutoff", "list domains in shutoff state"),
            Opt::flag("state-other", "list domains in other states"),
            Opt::flag("autostart", "list domains with autostart enabled"),
            Opt::flag("no-autostart", "list domains with autostart disabled"),
            Opt::flag("with-managed-save", "list domains with managed save state"),
            Opt::flag("without-managed-save", "list domains without managed save"),
            Opt::flag("uuid", "list uuid's only"),
            Opt::flag("name", "list domain names only"),
            Opt::flag("id", "list domain IDs only"),
            Opt::flag("table", "list table (default)"),
            Opt::flag("managed-save", "mark inactive domains with managed save state"),
            Opt::flag("title", "show domain title")
        ]
    ),
    cmd!(
        "capabilities",
        HOST,
        "capabilities",
        "Returns capabilities of hypervisor/driver.",
        []
    ),
    cmd!(
        "domcapabilities",
        HOST,
        "domain capabilities",
        "Returns capabilities of emulator with respect to host and libvirt.",
        [
            Opt::string("virttype", "virtualization type (/domain/@type)"),
            Opt::string(
                "emulatorbin",
                "path to emulator binary (/domain/devices/emulator)"
            ),
            Opt::string("arch", "domain architecture (/domain/os/type/@arch)"),
            Opt::string("machine", "machine type (/domain/os/type/@machine)")
        ]
    ),
    cmd!("hostname", HOST, "print the hypervisor hostname", "", []),
    cmd!(
        "nodeinfo",
        HOST,
        "node information",
        "Returns basic information about the node.",
        []
    ),
    cmd!("uri", HOST, "print the hypervisor canonical URI", "", []),
    cmd!(
        "version",
        HOST,
        "show version",
        "Display the system version information.",
        [Opt::flag("daemon", "report daemon version too")]
    ),
    cmd!(
        "net-autostart",
        NETWORK,
        "autostart a network",
        "Configure a network to be automatically started at boot.",
        [NETWORK_OPT, Opt::flag("disable", "disable autostarting")]
    ),
    cmd!(
        "net-create",
        NETWORK,
        "create a network from an XML file",
        "Create a network.",
        [
            Opt::data("file", "file containing an XML network description"),
            VALIDATE
        ]
    ),
    cmd!(
        "net-define",
        NETWORK,
        "define an inactive persistent virtual network or modify an existing persistent one from an XML file",
        "Define or modify a persistent virtual network.",
        [
            Opt::data("file", "file containing an XML network description"),
            VALIDATE
        ]
    ),
    cmd!(
        "net-destroy",
        NETWORK,
        "destroy (stop) a network",
        "Forcefully stop a given network.",
        [NETWORK_OPT]
    ),
    cmd!(
        "net-dhcp-leases",
        NETWORK,
        "print lease info for a given network",
        "Print lease info for a given network",
        [NETWORK_OPT, Opt::string("mac", "MAC address")]
    ),
    cmd!(
        "net-dumpxml",
        NETWORK,
        "network information in XML",
        "Output the network information as an XML dump to stdout.",
        [NETWORK_OPT, Opt::flag("inactive", "show inactive defined XML")]
    ),
    cmd!(
        "net-info",
        NETWORK,
        "network information",
        "Returns basic information about the network",
        [NETWORK_OPT]
    ),
    cmd!(
        "net-list",
        NETWORK,
        "list networks",
        "Returns list of networks.",
        [
            Opt::flag("inactive", "list inactive networks"),
            Opt::flag("all", "list inactive & active networks"),
            Opt::flag("persistent", "list persistent networks"),
            Opt::flag("transient", "list transient networks"),
            Opt::flag("autostart", "list networks with autostart enabled"),
            Opt::flag("no-autostart", "list networks with autostart disabled"),
            Opt::flag("uuid", "list uuid's only"),
            Opt::flag("name", "list network names only"),
            Opt::flag("table", "list table (default)")
        ]
    ),
    cmd!(
        "net-name",
        NETWORK,
        "convert a network UUID to network name",
        "",
        [Opt::data("network", "network uuid")]
    ),
    cmd!(
        "net-start",
        NETWORK,
        "start a (previously defined) inactive network",
        "Start a network.",
        [NETWORK_OPT]
    ),
    cmd!(
        "net-undefine",
        NETWORK,
        "undefine a persistent network",
        "Undefine the configuration for a persistent network.",
        [NETWORK_OPT]
    ),
    cmd!(
        "net-uuid",
        NETWORK,
        "convert a network name to network UUID",
        "",
        [Opt::data("network", "network name")]
    ),
    cmd!(
        "pool-autostart",
        POOL,
        "autostart a pool",
        "Configure a pool to be automatically started at boot.",
        [POOL_OPT, Opt::flag("disable", "disable autostarting")]
    ),
    cmd!(
        "pool-build",
        POOL,
        "build a pool",
        "Build a given pool.",
        [
            POOL_OPT,
            Opt::flag("no-overwrite", "do not overwrite any existing data"),
            Opt::flag("overwrite", "overwrite any existing data")
        ]
    ),
    cmd!(
        "pool-create",
        POOL,
        "create a pool from an XML file",
        "Create a pool.",
        [
            Opt::data("file", "file containing an XML pool description"),
            Opt::flag("build", "build the pool as normal"),
            Opt::flag("no-overwrite", "do not overwrite any existing data"),
            Opt::flag("overwrite", "overwrite any existing data")
        ]
    ),
    cmd!(
        "pool-define",
        POOL,
        "define an inactive persistent storage pool or modify an existing persistent one from an XML file",
        "Define or modify a persistent storage pool.",
        [
            Opt::data("file", "file containing an XML pool description"),
            VALIDATE
        ]
    ),
    cmd!(
        "pool-delete",
        POOL,
        "delete a pool",
        "Delete a given pool.",
        [POOL_OPT]
    ),
    cmd!(
        "pool-destroy",
        POOL,
        "destroy (stop) a pool",
        "Forcefully stop a given pool. Raw data in the pool is untouched",
        [POOL_OPT]
    ),
    cmd!(
        "pool-dumpxml",
        POOL,
        "pool information in XML",
        "Output the pool information as an XML dump to stdout.",
        [POOL_OPT, Opt::flag("inactive", "show inactive defined XML")]
    ),
    cmd!(
        "pool-info",
        POOL,
        "storage pool information",
        "Returns basic information about the storage pool.",
        [POOL_OPT, Opt::flag("bytes", "Return pool info in bytes")]
    ),
    cmd!(
        "pool-list",
        POOL,
        "list pools",
        "Returns list of pools.",
        [
            Opt::flag("inactive", "list inactive pools"),
            Opt::flag("all", "list inactive & active pools"),
            Opt::flag("transient", "list transient pools"),
            Opt::flag("persistent", "list persistent pools"),
            Opt::flag("autostart", "list pools with autostart enabled"),
            Opt::flag("no-autostart", "list pools with autostart disabled"),
            Opt::string("type", "only list pool of specified type(s) (if supported)"),
            Opt::flag("details", "display extended details for pools"),
            Opt::flag("uuid", "list UUID of active pools only"),
            Opt::flag("name", "list name of active pools only")
        ]
    ),
    cmd!(
        "pool-name",
        POOL,
        "convert a pool UUID to pool name",
        "",
        [POOL_OPT]
    ),
    cmd!(
        "pool-refresh",
        POOL,
        "refresh a pool",
        "Refresh a given pool.",
        [POOL_OPT]
    ),
    cmd!(
        "pool-start",
        POOL,
        "start a (previously defined) inactive pool",
        "Start a pool.",
        [
            POOL_OPT,
            Opt::flag("build", "build the pool as normal"),
            Opt::flag("no-overwrite", "do not overwrite any existing data"),
            Opt::flag("overwrite", "overwrite any existing data")
        ]
    ),
    cmd!(
        "pool-undefine",
        POOL,
        "undefine an inactive pool",
        "Undefine the configuration for an inactive pool.",
        [POOL_OPT]
    ),
    cmd!(
        "pool-uuid",
        POOL,
        "convert a pool name to pool UUID",
        "",
        [POOL_OPT]
    ),
    cmd!(
        "vol-create",
        VOLUME,
        "create a vol from an XML file",
        "Create a vol.",
        [
            Opt::data("pool", "pool name"),
            Opt::data("file", "file containing an XML vol description"),
            Opt::flag(
                "prealloc-metadata",
                "preallocate metadata (for qcow2 instead of full allocation)"
            ),
            VALIDATE
        ]
    ),
    cmd!(
        "vol-create-from",
        VOLUME,
        "create a vol, using another volume as input",
        "Create a vol from an existing volume.",
        [
            POOL_OPT,
            Opt::data("file", "file containing an XML vol description"),
            VOL_OPT,
            Opt::string("inputpool", "pool name or uuid of the input volume's pool"),
            Opt::flag(
                "prealloc-metadata",
                "preallocate metadata (for qcow2 instead of full allocation)"
            ),
            Opt::flag("reflink", "use btrfs COW lightweight copy"),
            VALIDATE
        ]
    ),
    cmd!(
        "vol-delete",
        VOLUME,
        "delete a vol",
        "Delete a given vol.",
        [
            VOL_OPT,
            POOL_OPTIONAL,
            Opt::flag(
                "delete-snapshots",
                "delete snapshots associated with volume (must be supported by storage driver)"
            )
        ]
    ),
    cmd!(
        "vol-download",
        VOLUME,
        "download volume contents to a file",
        "Download volume contents to a file",
        [
            VOL_OPT,
            Opt::data("file", "file"),
            POOL_OPTIONAL,
            Opt::int("offset", "volume offset to download from"),
            Opt::int("length", "amount of data to download"),
            Opt::flag("sparse", "preserve sparseness of volume")
        ]
    ),
    cmd!(
        "vol-dumpxml",
        VOLUME,
        "vol information in XML",
        "Output the vol information as an XML dump to stdout.",
        [VOL_OPT, POOL_OPTIONAL]
    ),
    cmd!(
        "vol-info",
        VOLUME,
        "storage vol information",
        "Returns basic information about the storage vol.",
        [
            VOL_OPT,
            POOL_OPTIONAL,
            Opt::flag("bytes", "sizes are represented in bytes rather than pretty units"),
            Opt::flag(
                "physical",
                "return the physical size of the volume in allocation field"
            )
        ]
    ),
    cmd!(
        "vol-key",
        VOLUME,
        "returns the volume key for a given volume name or path",
        "",
        [Opt::data("vol", "volume name or path"), POOL_OPTIONAL]
    ),
    cmd!(
        "vol-list",
        VOLUME,
        "list vols",
        "Returns list of vols by pool.",
        [
            POOL_OPT,
            Opt::flag("details", "display extended details for volumes")
        ]
    ),
    cmd!(
        "vol-name",
        VOLUME,
        "returns the volume name for a given volume key or path",
        "",
        [Opt::data("vol", "volume key or path")]
    ),
    cmd!(
        "vol-path",
        VOLUME,
        "returns the volume path for a given volume name or key",
        "",
        [Opt::data("vol", "volume name or key"), POOL_OPTIONAL]
    ),
    cmd!(
        "vol-pool",
        VOLUME,
        "returns the storage pool for a given volume key or path",
        "",
        [
            Opt::data("vol", "volume key or path"),
            Opt::flag("uuid", "return the pool uuid rather than pool name")
        ]
    ),
    cmd!(
        "vol-resize",
        VOLUME,
        "resize a vol",
        "Resizes a storage volume. This is safe only for storage volumes not in use by an active guest.\n    See blockresize for live resizing.",
        [
            VOL_OPT,
            Opt::data(
                "capacity",
                "new capacity for the vol, as scaled integer (default bytes)"
            ),
            POOL_OPTIONAL,
            Opt::flag(
                "allocate",
                "allocate the new capacity, rather than leaving it sparse"
            ),
            Opt::flag(
                "delta",
                "use capacity as a delta to current size, rather than the new size"
            ),
            Opt::flag("shrink", "allow the resize to shrink the volume")
        ]
    ),
    cmd!(
        "vol-upload",
        VOLUME,
        "upload file contents to a volume",
        "Upload file contents to a volume",
        [
            VOL_OPT,
            Opt::data("file", "file"),
            POOL_OPTIONAL,
            Opt::int("offset", "volume offset to upload to"),
            Opt::int("length", "amount of data to upload"),
            Opt::flag("sparse", "preserve sparseness of volume")
        ]
    ),
    cmd!(
        "vol-wipe",
        VOLUME,
        "wipe a vol",
        "Ensure data previously on a volume is not accessible to future reads",
        [
            VOL_OPT,
            POOL_OPTIONAL,
            Opt::string("algorithm", "perform selected wiping algorithm")
        ]
    ),
    cmd!(
        "secret-define",
        SECRET,
        "define or modify a secret from an XML file",
        "Define or modify a secret.",
        [
            Opt::data("file", "file containing secret attributes in XML"),
            VALIDATE
        ]
    ),
    cmd!(
        "secret-dumpxml",
        SECRET,
        "secret attributes in XML",
        "Output attributes of a secret as an XML dump to stdout.",
        [SECRET_OPT]
    ),
    cmd!(
        "secret-get-value",
        SECRET,
        "Output a secret value",
        "Output a secret value to stdout.",
        [
            SECRET_OPT,
            Opt::flag("plain", "get value without converting to base64")
        ]
    ),
    cmd!(
        "secret-list",
        SECRET,
        "list secrets",
        "Returns a list of secrets",
        [
            Opt::flag("ephemeral", "list ephemeral secrets"),
            Opt::flag("no-ephemeral", "list non-ephemeral secrets"),
            Opt::flag("private", "list private secrets"),
            Opt::flag("no-private", "list non-private secrets")
        ]
    ),
    cmd!(
        "secret-set-value",
        SECRET,
        "set a secret value",
        "Set a secret value.",
        [
            SECRET_OPT,
            Opt::named("file", "read secret from file"),
            Opt::flag(
                "plain",
                "read the secret from file without converting from base64"
            ),
            Opt::flag("interactive", "read the secret from the terminal"),
            Opt::string("base64", "base64-encoded secret value")
        ]
    ),
    cmd!(
        "secret-undefine",
        SECRET,
        "undefine a secret",
        "Undefine a secret.",
        [SECRET_OPT]
    ),
    cmd!(
        "connect",
        VIRSH,
        "(re)connect to hypervisor",
        "Connect to local hypervisor. This is built-in command after shell start up.",
        [
            Opt::string("name", "hypervisor connection URI"),
            Opt::flag("readonly", "read-only connection")
        ]
    ),
    cmd!("exit", VIRSH, "quit this interactive terminal", "", []),
    cmd!(
        "help",
        VIRSH,
        "print help",
        "Prints global help, command specific help, or help for a group of related commands",
        [Opt::string(
            "command",
            "Prints global help, command specific help, or help for a group of related commands"
        )]
    ),
    cmd!("quit", VIRSH, "quit this interactive terminal", "", []),
];

/// The command with this name.
pub fn find(name: &str) -> Option<&'static CmdDef> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// Runs a parsed command.
pub async fn dispatch(sh: &mut Shell, def: &CmdDef, args: &Args) -> CmdResult {
    match def.name {
        "attach-device" | "detach-device" => domain::device(sh, args, def.name == "attach-device").await,
        "autostart" => domain::autostart(sh, args).await,
        "domrename" => domain::domrename(sh, args).await,
        "attach-disk" => domain::attach_disk(sh, args).await,
        "change-media" => domain::change_media(sh, args).await,
        "detach-disk" => domain::detach_disk(sh, args).await,
        "attach-interface" => domain::attach_interface(sh, args).await,
        "detach-interface" => domain::detach_interface(sh, args).await,
        "desc" => domain::desc(sh, args).await,
        "metadata" => domain::metadata(sh, args).await,
        "console" => domain::console(sh, args).await,
        "create" => domain::create(sh, args).await,
        "define" => domain::define(sh, args).await,
        "destroy" | "reboot" | "reset" | "resume" | "shutdown" | "suspend" => {
            domain::lifecycle(sh, args, def.name).await
        }
        "dumpxml" => domain::dumpxml(sh, args).await,
        "setmem" | "setmaxmem" => domain::setmem(sh, args, def.name == "setmaxmem").await,
        "setvcpus" => domain::setvcpus(sh, args).await,
        "start" => domain::start(sh, args).await,
        "undefine" => domain::undefine(sh, args).await,
        "domid" | "domname" | "domuuid" => domain::ids(sh, args, def.name).await,
        "dominfo" => domain::dominfo(sh, args).await,
        "domstate" => domain::domstate(sh, args).await,
        "event" => event::event(sh, args).await,
        "list" => domain::list(sh, args).await,
        "capabilities" | "domcapabilities" | "hostname" | "nodeinfo" | "uri" | "version" => {
            host::run(sh, args, def.name).await
        }
        name if name.starts_with("net-") => network::run(sh, args, name).await,
        name if name.starts_with("pool-") => pool::run(sh, args, name).await,
        name if name.starts_with("vol-") => volume::run(sh, args, name).await,
        name if name.starts_with("secret-") => secret::run(sh, args, name).await,
        "connect" => {
            let uri = args.get("name").map(str::to_owned);
            sh.reconnect(uri, args.flag("readonly")).await
        }
        "help" => {
            let text = crate::help::help(args.get("command"))?;
            sh.print(&text);
            Ok(())
        }
        "quit" | "exit" => Ok(()),
        other => Err(CmdError::msg(format!("unknown command: '{other}'"))),
    }
}

/// Reads an XML file named on the command line, with virsh's error.
pub(crate) fn read_file(path: &str) -> Result<String, CmdError> {
    std::fs::read_to_string(path)
        .map_err(|e| CmdError::msg(format!("Failed to open file '{path}': {}", io_text(&e))))
}

/// An I/O error as C's `strerror` words it ("No such file or directory").
pub(crate) fn io_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_owned(),
        None => e.to_string(),
    }
}

/// Fails when two exclusive options are both given (virsh's `VSH_EXCLUSIVE_OPTIONS`).
pub(crate) fn exclusive(args: &Args, a: &str, b: &str) -> CmdResult {
    if args.has(a) && args.has(b) {
        return Err(CmdError::msg(format!(
            "Options --{a} and --{b} are mutually exclusive"
        )));
    }
    Ok(())
}

/// The `--config`/`--live`/`--current` bits (virsh's `VIR_DOMAIN_AFFECT_*`).
pub(crate) fn affect_flags(args: &Args) -> Result<u32, CmdError> {
    exclusive(args, "current", "live")?;
    exclusive(args, "current", "config")?;
    let mut flags = 0;
    if args.flag("live") {
        flags |= 1;
    }
    if args.flag("config") || args.flag("persistent") {
        flags |= 2;
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_found_by_name_and_dispatch_knows_it() {
        for def in COMMANDS {
            assert_eq!(find(def.name).map(|d| d.name), Some(def.name));
        }
        let mut names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COMMANDS.len(), "duplicate command names");
    }

    #[test]
    fn option_names_are_unique_per_command() {
        for def in COMMANDS {
            let mut names: Vec<&str> = def.opts.iter().map(|o| o.name).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), def.opts.len(), "{}", def.name);
        }
    }
}
