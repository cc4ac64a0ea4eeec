//! The network driver: the table of networks, their persistent definitions and run-time state,
//! and what starting and stopping one does to the host (through [`NetHost`]).
//!
//! Files (libvirt's layout, under the daemon's own directories):
//! - `<config>/NAME.xml`: a persistent definition; `<config>/autostart/NAME.xml` links to it
//!   when the network starts with the daemon;
//! - `<state>/NAME.xml`: the status of an active network (its live definition, the dnsmasq
//!   pid, the nftables tables and whether rvirt created the bridge), from which a restarted
//!   daemon re-adopts it;
//! - `<state>/dnsmasq/NAME.{conf,hostsfile,addnhosts,pid,leases,log}`: dnsmasq's files.
//!
//! Concurrency: every change (define, start, update, ...) holds one async lock for its
//! duration, so names, UUIDs and bridge names are allocated without races; queries (lookup,
//! list, XML, leases) only take the table's read lock for a copy and never wait behind a change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rvirt_conf::XmlError;
use rvirt_conf::network::{
    ForwardMode, Nat, NetworkDef, NetworkPortDef, Plug, PlugType, allocate_bridge_name, canonical_mac,
};
use rvirt_daemon::atomic::{remove_durable_async, write_atomic_async};
use rvirt_daemon::events::EventLog;
use rvirt_proto::v1::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::dnsmasq::{self, DnsmasqPaths};
use crate::host::NetHost;
use crate::leases::{self, Change, Lease};
use crate::netlink::BridgeSpec;
use crate::nft::{self, TableFamily, TableRef};

/// A driver failure: libvirt's error number and a sentence saying what failed and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct NetError {
    /// libvirt's error number.
    pub code: ErrorCode,
    /// What failed and what to do.
    pub message: String,
    /// For XML errors, where.
    pub xml_path: String,
}

/// [`rvirt_proto::access::authorize`] as a driver error.
fn authorize(names: &[&str]) -> Result<(), NetError> {
    rvirt_proto::access::authorize(&["network", "network_port"], names)
        .map_err(|denied| NetError::new(ErrorCode::AccessDenied, denied.message()))
}

impl NetError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        NetError {
            code,
            message: message.into(),
            xml_path: String::new(),
        }
    }

    fn xml(e: XmlError) -> Self {
        let message = format!("Invalid network XML: {} (at {})", e.message, e.path);
        NetError {
            code: ErrorCode::XmlError,
            message,
            xml_path: e.path,
        }
    }

    fn no_network(what: &str) -> Self {
        Self::new(
            ErrorCode::NoNetwork,
            format!("Network not found: no network with matching {what}"),
        )
    }

    fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::OperationFailed, message)
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::OperationInvalid, message)
    }

    fn io(what: &str, path: &Path, e: std::io::Error) -> Self {
        Self::new(
            ErrorCode::SystemError,
            format!(
                "Cannot {what} {}: {e}; check the directory's permissions and free space",
                path.display()
            ),
        )
    }
}

/// How a call names a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// By name.
    Name(String),
    /// By UUID (any spelling libvirt accepts).
    Uuid(String),
}

/// A network as lookups and lists report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Running.
    pub active: bool,
    /// Has a persistent definition.
    pub persistent: bool,
    /// Starts with the daemon.
    pub autostart: bool,
    /// Its bridge device.
    pub bridge: String,
}

/// A lifecycle change (libvirt's virNetworkEventLifecycleType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Defined or redefined.
    Defined,
    /// Undefined.
    Undefined,
    /// Started.
    Started,
    /// Stopped.
    Stopped,
}

/// A lease change with what the API reports with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEvent {
    /// What happened.
    pub change: Change,
    /// The bridge the lease is on.
    pub bridge: String,
    /// The prefix of the subnet the address is in.
    pub prefix: u8,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Lifecycle.
    Lifecycle(Lifecycle),
    /// A DHCP lease changed.
    Lease(LeaseEvent),
}

/// One network event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkEvent {
    /// The network's name.
    pub name: String,
    /// Its UUID.
    pub uuid: String,
    /// What happened.
    pub kind: EventKind,
}

/// A lease with what the API reports with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The lease.
    pub lease: Lease,
    /// The bridge.
    pub bridge: String,
    /// The subnet's prefix.
    pub prefix: u8,
}

/// A port as lookups and lists report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSummary {
    /// The port's UUID.
    pub uuid: String,
    /// The network's name.
    pub network: String,
    /// The network's UUID.
    pub network_uuid: String,
    /// The owning domain's name.
    pub owner_name: String,
    /// The owning domain's UUID.
    pub owner_uuid: String,
    /// The guest NIC's MAC address.
    pub mac: String,
    /// `network` or `bridge`.
    pub plug_type: String,
    /// The bridge to attach the tap to.
    pub plug_device: String,
}

fn port_summary(def: &NetworkDef, port: &NetworkPortDef) -> PortSummary {
    PortSummary {
        uuid: port.uuid().to_owned(),
        network: def.name.clone(),
        network_uuid: def.uuid().to_owned(),
        owner_name: port.owner.name.clone(),
        owner_uuid: port.owner.uuid.clone(),
        mac: port.mac.address.clone(),
        plug_type: port
            .plug
            .as_ref()
            .map(|p| p.plug_type.as_str().to_owned())
            .unwrap_or_default(),
        plug_device: port.plug.as_ref().map(|p| p.bridge.clone()).unwrap_or_default(),
    }
}

/// `NetworkPortCreateFlag` bits.
pub mod port_flags {
    /// Take over a port that is already plugged (virtqemud reconnecting after a restart).
    pub const RECLAIM: u32 = 1;
}

/// Where the driver keeps its files.
#[derive(Debug, Clone)]
pub struct DriverPaths {
    /// Persistent definitions.
    pub config_dir: PathBuf,
    /// Autostart links.
    pub autostart_dir: PathBuf,
    /// Status files.
    pub state_dir: PathBuf,
    /// dnsmasq's files.
    pub dnsmasq_dir: PathBuf,
}

impl DriverPaths {
    /// The layout under the daemon's config and state directories.
    pub fn new(config_dir: &Path, state_dir: &Path) -> Self {
        DriverPaths {
            config_dir: config_dir.to_owned(),
            autostart_dir: config_dir.join("autostart"),
            state_dir: state_dir.to_owned(),
            dnsmasq_dir: state_dir.join("dnsmasq"),
        }
    }

    fn config_file(&self, name: &str) -> PathBuf {
        self.config_dir.join(format!("{name}.xml"))
    }

    fn autostart_link(&self, name: &str) -> PathBuf {
        self.autostart_dir.join(format!("{name}.xml"))
    }

    fn status_file(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.xml"))
    }

    /// Where the ports of active network `name` are kept (libvirt's `<state>/NAME/`).
    fn port_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join(name)
    }

    fn port_file(&self, name: &str, uuid: &str) -> PathBuf {
        self.port_dir(name).join(format!("{uuid}.xml"))
    }

    /// dnsmasq's file `NAME.<ext>`.
    pub fn dnsmasq_file(&self, name: &str, ext: &str) -> PathBuf {
        self.dnsmasq_dir.join(format!("{name}.{ext}"))
    }

    fn dnsmasq_paths(&self, name: &str) -> DnsmasqPaths {
        DnsmasqPaths {
            hostsfile: self.dnsmasq_file(name, "hostsfile"),
            addnhosts: self.dnsmasq_file(name, "addnhosts"),
            pid_file: Some(self.dnsmasq_file(name, "pid")),
            lease_file: Some(self.dnsmasq_file(name, "leases")),
        }
    }
}

/// What an active network holds on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Runtime {
    dnsmasq_pid: Option<u32>,
    tables: Vec<TableRef>,
    bridge_created: bool,
}

#[derive(Debug, Clone)]
struct NetworkObj {
    /// The live definition when active, else the persistent one.
    live: NetworkDef,
    /// The persistent definition, `None` for a transient network.
    persistent: Option<NetworkDef>,
    runtime: Option<Runtime>,
    autostart: bool,
    /// The ports of an active network, by UUID.
    ports: BTreeMap<String, NetworkPortDef>,
}

impl NetworkObj {
    fn summary(&self) -> Summary {
        Summary {
            name: self.live.name.clone(),
            uuid: self.live.uuid().to_owned(),
            active: self.runtime.is_some(),
            persistent: self.persistent.is_some(),
            autostart: self.autostart,
            bridge: self.live.bridge_name().unwrap_or_default().to_owned(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StatusTable {
    #[serde(rename = "@family")]
    family: String,
    #[serde(rename = "@name")]
    name: String,
}

/// `<networkstatus>`: what a restarted daemon needs to re-adopt an active network.
#[derive(Debug, Serialize, Deserialize)]
struct StatusFile {
    #[serde(rename = "@dnsmasqPid", default, skip_serializing_if = "Option::is_none")]
    dnsmasq_pid: Option<u32>,
    #[serde(rename = "@bridgeCreated")]
    bridge_created: bool,
    #[serde(default)]
    table: Vec<StatusTable>,
    network: NetworkDef,
}

/// The network driver.
#[derive(Debug)]
pub struct NetworkDriver {
    paths: DriverPaths,
    host: Arc<dyn NetHost>,
    networks: RwLock<BTreeMap<String, NetworkObj>>,
    ops: tokio::sync::Mutex<()>,
    events: EventLog<NetworkEvent>,
    lease_cache: Mutex<HashMap<String, Vec<Lease>>>,
}

/// `NetworkListFlag` bits.
pub mod list_flags {
    /// Not running.
    pub const INACTIVE: u32 = 1;
    /// Running.
    pub const ACTIVE: u32 = 2;
    /// Persistent.
    pub const PERSISTENT: u32 = 4;
    /// Transient.
    pub const TRANSIENT: u32 = 8;
    /// Autostart on.
    pub const AUTOSTART: u32 = 16;
    /// Autostart off.
    pub const NO_AUTOSTART: u32 = 32;
}

/// `NetworkUpdateCommand` values.
pub mod update {
    /// Replace.
    pub const MODIFY: i32 = 1;
    /// Remove.
    pub const DELETE: i32 = 2;
    /// Append.
    pub const ADD_LAST: i32 = 3;
    /// Prepend.
    pub const ADD_FIRST: i32 = 4;
    /// The `<ip><dhcp><host>` section.
    pub const SECTION_IP_DHCP_HOST: i32 = 4;
    /// The `<ip><dhcp><range>` section.
    pub const SECTION_IP_DHCP_RANGE: i32 = 5;
    /// The `<forward><interface>` section.
    pub const SECTION_FORWARD_INTERFACE: i32 = 7;
    /// The `<portgroup>` section.
    pub const SECTION_PORTGROUP: i32 = 9;
    /// The `<dns><host>` section.
    pub const SECTION_DNS_HOST: i32 = 10;
    /// The `<dns><txt>` section.
    pub const SECTION_DNS_TXT: i32 = 11;
    /// The `<dns><srv>` section.
    pub const SECTION_DNS_SRV: i32 = 12;
    /// Flag: the live network.
    pub const AFFECT_LIVE: u32 = 1;
    /// Flag: the persistent definition.
    pub const AFFECT_CONFIG: u32 = 2;
}

fn random_mac_tail() -> [u8; 3] {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    [bytes[0], bytes[1], bytes[2]]
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn same_mac(a: &str, b: &str) -> bool {
    canonical_mac(a).is_some() && canonical_mac(a) == canonical_mac(b)
}

impl NetworkDriver {
    /// A driver with no networks yet (see [`NetworkDriver::load`]).
    pub fn new(paths: DriverPaths, host: Arc<dyn NetHost>) -> Self {
        NetworkDriver {
            paths,
            host,
            networks: RwLock::new(BTreeMap::new()),
            ops: tokio::sync::Mutex::new(()),
            events: EventLog::new(1024),
            lease_cache: Mutex::new(HashMap::new()),
        }
    }

    /// The event log.
    pub fn events(&self) -> &EventLog<NetworkEvent> {
        &self.events
    }

    /// The driver's paths.
    pub fn paths(&self) -> &DriverPaths {
        &self.paths
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, NetworkObj>> {
        self.networks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, NetworkObj>> {
        self.networks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(&self, def: &NetworkDef, kind: EventKind) {
        self.events.emit(NetworkEvent {
            name: def.name.clone(),
            uuid: def.uuid().to_owned(),
            kind,
        });
    }

    fn resolve(&self, key: &Key) -> Result<(String, NetworkObj), NetError> {
        let (name, obj) = self.resolve_unchecked(key)?;
        // Access rules that name networks are decided here, whatever the caller named it by.
        authorize(&[&name, obj.live.uuid()])?;
        Ok((name, obj))
    }

    fn resolve_unchecked(&self, key: &Key) -> Result<(String, NetworkObj), NetError> {
        let networks = self.read();
        match key {
            Key::Name(name) => networks
                .get(name)
                .map(|o| (name.clone(), o.clone()))
                .ok_or_else(|| NetError::no_network(&format!("name '{name}'"))),
            Key::Uuid(uuid) => {
                let wanted = rvirt_conf::xml::canonical_uuid(uuid).ok_or_else(|| {
                    NetError::new(
                        ErrorCode::InvalidArg,
                        format!("Invalid UUID '{uuid}': use the 8-4-4-4-12 hex form"),
                    )
                })?;
                networks
                    .iter()
                    .find(|(_, o)| o.live.uuid() == wanted)
                    .map(|(n, o)| (n.clone(), o.clone()))
                    .ok_or_else(|| NetError::no_network(&format!("uuid '{wanted}'")))
            }
        }
    }

    /// Whether a network is active (for idle exit).
    pub fn busy(&self) -> Option<String> {
        let active: Vec<String> = self
            .read()
            .values()
            .filter(|o| o.runtime.is_some())
            .map(|o| o.live.name.clone())
            .collect();
        if active.is_empty() {
            None
        } else {
            Some(format!("active networks: {}", active.join(", ")))
        }
    }

    // ---------------------------------------------------------------------------------------
    // Queries
    // ---------------------------------------------------------------------------------------

    /// Finds a network.
    pub fn lookup(&self, key: &Key) -> Result<Summary, NetError> {
        Ok(self.resolve(key)?.1.summary())
    }

    /// Lists networks matching `flags` (NetworkListFlag bits), by name.
    pub fn list(&self, flags: u32) -> Vec<Summary> {
        use list_flags::*;
        let pair = |yes: u32, no: u32, value: bool| {
            let (y, n) = (flags & yes != 0, flags & no != 0);
            (!y && !n) || (y && value) || (n && !value)
        };
        self.read()
            .values()
            .map(NetworkObj::summary)
            .filter(|s| {
                pair(ACTIVE, INACTIVE, s.active)
                    && pair(PERSISTENT, TRANSIENT, s.persistent)
                    && pair(AUTOSTART, NO_AUTOSTART, s.autostart)
            })
            .collect()
    }

    /// The XML: live, or the persistent definition with `inactive`.
    pub fn xml(&self, key: &Key, inactive: bool) -> Result<String, NetError> {
        let (_, obj) = self.resolve(key)?;
        let def = match (&obj.persistent, inactive) {
            (Some(p), true) => p.inactive(),
            _ => obj.live.clone(),
        };
        def.to_xml().map_err(NetError::xml)
    }

    /// Whether the network starts with the daemon.
    pub fn autostart(&self, key: &Key) -> Result<bool, NetError> {
        Ok(self.resolve(key)?.1.autostart)
    }

    /// The bridge device.
    pub fn bridge_name(&self, key: &Key) -> Result<String, NetError> {
        let (name, obj) = self.resolve(key)?;
        obj.live
            .bridge_name()
            .map(str::to_owned)
            .ok_or_else(|| NetError::invalid(format!("Network '{name}' has no bridge device")))
    }

    /// The unexpired leases of the network, optionally only those of `mac`.
    pub fn leases(&self, key: &Key, mac: &str) -> Result<Vec<LeaseInfo>, NetError> {
        let (name, obj) = self.resolve(key)?;
        if !mac.is_empty() && canonical_mac(mac).is_none() {
            return Err(NetError::new(
                ErrorCode::InvalidMac,
                format!("Invalid MAC address '{mac}'"),
            ));
        }
        let text = std::fs::read_to_string(self.paths.dnsmasq_file(&name, "leases")).unwrap_or_default();
        let now = now_secs();
        Ok(leases::parse(&text)
            .into_iter()
            .filter(|l| l.expiry == 0 || l.expiry > now)
            .filter(|l| mac.is_empty() || same_mac(&l.mac, mac))
            .map(|lease| self.lease_info(&obj.live, lease))
            .collect())
    }

    fn lease_info(&self, def: &NetworkDef, lease: Lease) -> LeaseInfo {
        let prefix = def
            .ip
            .iter()
            .find(|ip| ip.contains(lease.ip))
            .and_then(|ip| ip.prefix_len())
            .unwrap_or(0);
        LeaseInfo {
            lease,
            bridge: def.bridge_name().unwrap_or_default().to_owned(),
            prefix,
        }
    }

    // ---------------------------------------------------------------------------------------
    // Define, undefine, autostart
    // ---------------------------------------------------------------------------------------

    fn parse(xml: &str) -> Result<NetworkDef, NetError> {
        NetworkDef::parse(xml).map_err(NetError::xml)
    }

    /// Checks name/UUID clashes and fills UUID, bridge name and MAC (reusing the existing
    /// network's when the new XML has none).
    async fn prepare(&self, def: &mut NetworkDef, existing: Option<&NetworkObj>) -> Result<(), NetError> {
        let others: Vec<NetworkObj> = self
            .read()
            .values()
            .filter(|o| o.live.name != def.name)
            .cloned()
            .collect();
        if let Some(uuid) = def.uuid.as_deref()
            && let Some(other) = others.iter().find(|o| o.live.uuid() == uuid)
        {
            return Err(NetError::new(
                ErrorCode::NetworkExist,
                format!(
                    "Network '{}' already has UUID {uuid}: use another UUID or undefine it",
                    other.live.name
                ),
            ));
        }
        let old = existing.map(|o| o.persistent.as_ref().unwrap_or(&o.live));
        match (def.uuid.as_deref(), old) {
            (Some(uuid), Some(old)) if uuid != old.uuid() => {
                return Err(NetError::new(
                    ErrorCode::OperationFailed,
                    format!(
                        "Network '{}' is already defined with UUID {}: keep that UUID or undefine it first",
                        def.name,
                        old.uuid()
                    ),
                ));
            }
            (None, Some(old)) => def.uuid = old.uuid.clone(),
            _ => def.ensure_uuid(),
        }
        if def.builds_bridge() {
            let others_bridges: HashSet<String> = others
                .iter()
                .flat_map(|o| [Some(&o.live), o.persistent.as_ref()])
                .flatten()
                .filter_map(|d| d.bridge_name().map(str::to_owned))
                .collect();
            let old_bridge = old.and_then(|o| o.bridge_name()).filter(|n| !n.contains("%d"));
            if def.needs_bridge_name() {
                match old_bridge {
                    Some(name) if def.bridge_name().is_none() => def.set_bridge_name(name.to_owned()),
                    _ => {
                        let mut used = others_bridges.clone();
                        let links =
                            self.host.link_names().await.map_err(|e| {
                                NetError::failed(format!("Cannot list network interfaces: {e}"))
                            })?;
                        used.extend(links.into_iter().filter(|l| Some(l.as_str()) != old_bridge));
                        let name = allocate_bridge_name(def.bridge_template(), &used).ok_or_else(|| {
                            NetError::failed(format!(
                                "No free bridge name for template '{}': name the bridge explicitly",
                                def.bridge_template()
                            ))
                        })?;
                        def.set_bridge_name(name);
                    }
                }
            } else if let Some(name) = def.bridge_name()
                && others_bridges.contains(name)
            {
                return Err(NetError::failed(format!(
                    "Bridge name '{name}' is already used by another network: choose another name"
                )));
            }
            if def.mac.is_none() {
                def.mac = old.and_then(|o| o.mac.clone());
            }
            def.ensure_mac(random_mac_tail());
        }
        Ok(())
    }

    async fn save_config(&self, def: &NetworkDef) -> Result<(), NetError> {
        let xml = def.inactive().to_xml().map_err(NetError::xml)?;
        let path = self.paths.config_file(&def.name);
        write_atomic_async(&path, xml.as_bytes(), 0o600)
            .await
            .map_err(|e| NetError::io("write", &path, e))
    }

    /// Defines (or redefines) a persistent network.
    pub async fn define(&self, xml: &str) -> Result<Summary, NetError> {
        let mut def = Self::parse(xml)?;
        authorize(&[&def.name, def.uuid()])?;
        let _ops = self.ops.lock().await;
        let existing = self.read().get(&def.name).cloned();
        self.prepare(&mut def, existing.as_ref()).await?;
        self.save_config(&def).await?;
        let summary = {
            let mut networks = self.write();
            let obj = networks.entry(def.name.clone()).or_insert_with(|| NetworkObj {
                live: def.clone(),
                persistent: None,
                runtime: None,
                autostart: false,
                ports: BTreeMap::new(),
            });
            if obj.runtime.is_none() {
                obj.live = def.clone();
            }
            obj.persistent = Some(def.clone());
            obj.summary()
        };
        self.emit(&def, EventKind::Lifecycle(Lifecycle::Defined));
        Ok(summary)
    }

    /// Removes a persistent definition; an active network goes on as a transient one.
    pub async fn undefine(&self, key: &Key) -> Result<(), NetError> {
        let _ops = self.ops.lock().await;
        let (name, obj) = self.resolve(key)?;
        let Some(def) = obj.persistent.clone() else {
            return Err(NetError::invalid(format!(
                "Network '{name}' is transient: destroy it instead"
            )));
        };
        let link = self.paths.autostart_link(&name);
        if let Err(e) = std::fs::remove_file(&link)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(NetError::io("remove", &link, e));
        }
        let path = self.paths.config_file(&name);
        remove_durable_async(&path)
            .await
            .map_err(|e| NetError::io("remove", &path, e))?;
        {
            let mut networks = self.write();
            if obj.runtime.is_some() {
                if let Some(o) = networks.get_mut(&name) {
                    o.persistent = None;
                    o.autostart = false;
                }
            } else {
                networks.remove(&name);
            }
        }
        if obj.runtime.is_none() {
            self.remove_leases(&name);
        }
        self.emit(&def, EventKind::Lifecycle(Lifecycle::Undefined));
        Ok(())
    }

    /// Turns autostart on or off.
    pub async fn set_autostart(&self, key: &Key, autostart: bool) -> Result<(), NetError> {
        let _ops = self.ops.lock().await;
        let (name, obj) = self.resolve(key)?;
        if obj.persistent.is_none() {
            return Err(NetError::invalid(format!(
                "Cannot set autostart for transient network '{name}': define it first"
            )));
        }
        let link = self.paths.autostart_link(&name);
        if autostart {
            std::fs::create_dir_all(&self.paths.autostart_dir)
                .map_err(|e| NetError::io("create", &self.paths.autostart_dir, e))?;
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(self.paths.config_file(&name), &link)
                .map_err(|e| NetError::io("create", &link, e))?;
        } else if let Err(e) = std::fs::remove_file(&link)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(NetError::io("remove", &link, e));
        }
        if let Some(o) = self.write().get_mut(&name) {
            o.autostart = autostart;
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Start and stop
    // ---------------------------------------------------------------------------------------

    /// Creates and starts a transient network.
    pub async fn create(&self, xml: &str) -> Result<Summary, NetError> {
        let mut def = Self::parse(xml)?;
        authorize(&[&def.name, def.uuid()])?;
        let _ops = self.ops.lock().await;
        if self.read().contains_key(&def.name) {
            return Err(NetError::new(
                ErrorCode::NetworkExist,
                format!(
                    "Network '{}' already exists: start it, or undefine it first",
                    def.name
                ),
            ));
        }
        self.prepare(&mut def, None).await?;
        let runtime = self.bring_up(&mut def).await?;
        let obj = NetworkObj {
            live: def.clone(),
            persistent: None,
            runtime: Some(runtime),
            autostart: false,
            ports: BTreeMap::new(),
        };
        let summary = obj.summary();
        self.write().insert(def.name.clone(), obj);
        self.emit(&def, EventKind::Lifecycle(Lifecycle::Started));
        Ok(summary)
    }

    /// Starts a defined network.
    pub async fn start(&self, key: &Key) -> Result<Summary, NetError> {
        let _ops = self.ops.lock().await;
        self.start_locked(key).await
    }

    async fn start_locked(&self, key: &Key) -> Result<Summary, NetError> {
        let (name, obj) = self.resolve(key)?;
        if obj.runtime.is_some() {
            return Err(NetError::invalid(format!("Network '{name}' is already active")));
        }
        let mut def = obj.persistent.clone().unwrap_or(obj.live);
        let runtime = self.bring_up(&mut def).await?;
        let summary = {
            let mut networks = self.write();
            let Some(o) = networks.get_mut(&name) else {
                return Err(NetError::no_network(&format!("name '{name}'")));
            };
            o.live = def.clone();
            o.runtime = Some(runtime);
            o.summary()
        };
        self.emit(&def, EventKind::Lifecycle(Lifecycle::Started));
        Ok(summary)
    }

    /// Stops a network and removes what starting it built; a transient network disappears.
    pub async fn destroy(&self, key: &Key) -> Result<(), NetError> {
        let _ops = self.ops.lock().await;
        let (name, obj) = self.resolve(key)?;
        let Some(runtime) = obj.runtime.clone() else {
            return Err(NetError::invalid(format!("Network '{name}' is not active")));
        };
        let problems = self.tear_down(&obj.live, &runtime).await;
        let status = self.paths.status_file(&name);
        remove_durable_async(&status)
            .await
            .map_err(|e| NetError::io("remove", &status, e))?;
        // As in libvirt, a stopped network has no ports.
        let _ = std::fs::remove_dir_all(self.paths.port_dir(&name));
        {
            let mut networks = self.write();
            match &obj.persistent {
                None => {
                    networks.remove(&name);
                }
                Some(p) => {
                    if let Some(o) = networks.get_mut(&name) {
                        o.live = p.clone();
                        o.runtime = None;
                        o.ports.clear();
                    }
                }
            }
        }
        self.lease_cache_lock().remove(&name);
        if obj.persistent.is_none() {
            self.remove_leases(&name);
        }
        self.emit(&obj.live, EventKind::Lifecycle(Lifecycle::Stopped));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(NetError::failed(format!(
                "Network '{name}' stopped, but not everything could be removed: {}",
                problems.join("; ")
            )))
        }
    }

    fn remove_leases(&self, name: &str) {
        let _ = std::fs::remove_file(self.paths.dnsmasq_file(name, "leases"));
    }

    /// Builds the network on the host: bridge, addresses, firewall, forwarding, dnsmasq. Fills
    /// run-time defaults into `def` (the NAT port range). On failure nothing is left behind.
    async fn bring_up(&self, def: &mut NetworkDef) -> Result<Runtime, NetError> {
        let bridge = def.bridge_name().unwrap_or_default().to_owned();
        let links = self
            .host
            .link_names()
            .await
            .map_err(|e| NetError::failed(format!("Cannot list network interfaces: {e}")))?;
        let mut runtime = Runtime::default();
        if !def.builds_bridge() {
            if !links.contains(&bridge) {
                return Err(NetError::failed(format!(
                    "Host bridge '{bridge}' of network '{}' does not exist: create it first",
                    def.name
                )));
            }
            self.write_status(def, &runtime).await?;
            return Ok(runtime);
        }
        if links.contains(&bridge) {
            return Err(NetError::failed(format!(
                "Cannot start network '{}': a device named '{bridge}' already exists; remove it or choose another bridge name",
                def.name
            )));
        }
        if def.forward_mode() == Some(ForwardMode::Nat)
            && let Some(forward) = def.forward.as_mut()
        {
            // As libvirt does, the live definition shows the source port range in use.
            let nat = forward.nat.get_or_insert_with(Nat::default);
            nat.port.get_or_insert(nft::DEFAULT_NAT_PORTS);
        }
        let spec = BridgeSpec {
            name: bridge.clone(),
            mac: def.mac.as_ref().and_then(|m| mac_bytes(&m.address)),
            mtu: def.mtu.map(|m| m.size),
            stp: def.bridge.as_ref().and_then(|b| b.stp) != Some(rvirt_conf::network::OnOff::Off),
            delay: def.bridge.as_ref().and_then(|b| b.delay).unwrap_or(0),
            addresses: def
                .ip
                .iter()
                .map(|ip| (ip.addr(), ip.prefix_len().unwrap_or(0)))
                .collect(),
            ipv6: def.ip.iter().any(|ip| ip.is_ipv6()),
        };
        self.host
            .create_bridge(&spec)
            .await
            .map_err(|e| NetError::failed(format!("Cannot create bridge '{bridge}': {e}")))?;
        runtime.bridge_created = true;
        if let Err(e) = self.start_services(def, &mut runtime).await {
            let _ = self.tear_down(def, &runtime).await;
            return Err(e);
        }
        if let Err(e) = self.write_status(def, &runtime).await {
            let _ = self.tear_down(def, &runtime).await;
            return Err(e);
        }
        Ok(runtime)
    }

    async fn start_services(&self, def: &NetworkDef, runtime: &mut Runtime) -> Result<(), NetError> {
        if let Some(script) = nft::apply_script(def) {
            runtime.tables = nft::tables(def);
            self.host.nft(&script).await.map_err(|e| {
                NetError::failed(format!(
                    "Cannot install the firewall rules of network '{}': {e}",
                    def.name
                ))
            })?;
        }
        if dnsmasq::forwards(def) {
            let v4 = def.ip.iter().any(|ip| !ip.is_ipv6());
            let v6 = def.ip.iter().any(|ip| ip.is_ipv6());
            if v4 || v6 {
                self.host
                    .enable_forwarding(v4, v6)
                    .await
                    .map_err(|e| NetError::failed(format!("Cannot enable IP forwarding: {e}")))?;
            }
        }
        if dnsmasq::needed(def) {
            runtime.dnsmasq_pid = Some(self.spawn_dnsmasq(def).await?);
        }
        Ok(())
    }

    fn ensure_dnsmasq_dir(&self) -> Result<(), NetError> {
        let dir = &self.paths.dnsmasq_dir;
        std::fs::create_dir_all(dir).map_err(|e| NetError::io("create", dir, e))?;
        // dnsmasq drops its privileges and re-reads its hosts files as an unprivileged user.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| NetError::io("set permissions of", dir, e))
    }

    async fn spawn_dnsmasq(&self, def: &NetworkDef) -> Result<u32, NetError> {
        self.ensure_dnsmasq_dir()?;
        let name = &def.name;
        let files = dnsmasq::generate(def, &self.paths.dnsmasq_paths(name)).map_err(|e| {
            NetError::new(
                ErrorCode::ConfigUnsupported,
                format!("Cannot configure dnsmasq for network '{name}': {e}"),
            )
        })?;
        for (ext, text) in [
            ("conf", &files.conf),
            ("hostsfile", &files.hostsfile),
            ("addnhosts", &files.addnhosts),
        ] {
            self.write_dnsmasq_file(name, ext, text).await?;
        }
        let leases = self.paths.dnsmasq_file(name, "leases");
        if !leases.exists() {
            self.write_dnsmasq_file(name, "leases", "").await?;
        }
        let current = leases::parse(&std::fs::read_to_string(&leases).unwrap_or_default());
        self.lease_cache_lock().insert(name.clone(), current);
        let conf = self.paths.dnsmasq_file(name, "conf");
        self.host
            .start_dnsmasq(&conf, &self.paths.dnsmasq_file(name, "pid"))
            .await
            .map_err(|e| {
                NetError::failed(format!(
                    "Cannot start the DHCP/DNS server of network '{name}': {e}"
                ))
            })
    }

    /// Undoes `runtime`; returns what could not be undone.
    async fn tear_down(&self, def: &NetworkDef, runtime: &Runtime) -> Vec<String> {
        let mut problems = Vec::new();
        let name = &def.name;
        let conf = self.paths.dnsmasq_file(name, "conf");
        if let Some(pid) = runtime.dnsmasq_pid
            && self.host.dnsmasq_alive(pid, &conf)
            && let Err(e) = self.host.stop_process(pid).await
        {
            problems.push(format!("dnsmasq: {e}"));
        }
        if !runtime.tables.is_empty()
            && let Err(e) = self.host.nft(&nft::delete_script(&runtime.tables)).await
        {
            problems.push(format!("firewall: {e}"));
        }
        if runtime.bridge_created
            && let Some(bridge) = def.bridge_name()
            && let Err(e) = self.host.delete_link(bridge).await
        {
            problems.push(format!("bridge: {e}"));
        }
        for ext in ["conf", "hostsfile", "addnhosts", "pid", "log"] {
            let _ = std::fs::remove_file(self.paths.dnsmasq_file(name, ext));
        }
        problems
    }

    async fn write_status(&self, def: &NetworkDef, runtime: &Runtime) -> Result<(), NetError> {
        let status = StatusFile {
            dnsmasq_pid: runtime.dnsmasq_pid,
            bridge_created: runtime.bridge_created,
            table: runtime
                .tables
                .iter()
                .map(|t| StatusTable {
                    family: t.family.as_str().to_owned(),
                    name: t.name.clone(),
                })
                .collect(),
            network: def.clone(),
        };
        let xml = rvirt_conf::xml::to_string("networkstatus", &status).map_err(NetError::xml)?;
        let path = self.paths.status_file(&def.name);
        write_atomic_async(&path, xml.as_bytes(), 0o600)
            .await
            .map_err(|e| NetError::io("write", &path, e))
    }

    // ---------------------------------------------------------------------------------------
    // Update
    // ---------------------------------------------------------------------------------------

    /// Changes one element of a network (libvirt's virNetworkUpdate): a DHCP host or range, a
    /// forward interface, a DNS host, TXT or SRV record; live, in the persistent definition, or
    /// both.
    ///
    /// The persistent definition is replaced atomically first; then the running network is
    /// changed: hosts files rewritten and dnsmasq sent SIGHUP when only they changed, dnsmasq
    /// restarted when its configuration changed (ranges, TXT and SRV records, DHCP turned on or
    /// off), the firewall replaced for forward interfaces. If the live change fails, the host
    /// and the saved definition are put back as they were and nothing changes.
    pub async fn update(
        &self,
        key: &Key,
        command: i32,
        section: i32,
        parent_index: i32,
        xml: &str,
        flags: u32,
    ) -> Result<(), NetError> {
        let element = sections::parse(command, section, xml)?;
        let _ops = self.ops.lock().await;
        let (name, obj) = self.resolve(key)?;
        let active = obj.runtime.is_some();
        let (live, config) = match flags & (update::AFFECT_LIVE | update::AFFECT_CONFIG) {
            0 => (active, !active),
            f => (f & update::AFFECT_LIVE != 0, f & update::AFFECT_CONFIG != 0),
        };
        if live && !active {
            return Err(NetError::invalid(format!(
                "Network '{name}' is not active: cannot change it live"
            )));
        }
        if config && obj.persistent.is_none() {
            return Err(NetError::invalid(format!(
                "Network '{name}' is transient: it has no persistent definition to change"
            )));
        }
        let new_live = if live {
            let mut d = obj.live.clone();
            sections::apply(&mut d, command, parent_index, &element)?;
            Some(d)
        } else {
            None
        };
        let new_config = match (&obj.persistent, config) {
            (Some(p), true) => {
                let mut d = p.clone();
                sections::apply(&mut d, command, parent_index, &element)?;
                Some(d)
            }
            _ => None,
        };
        if let Some(def) = &new_config {
            self.save_config(def).await?;
        }
        let mut new_runtime = None;
        if let (Some(def), Some(runtime)) = (&new_live, &obj.runtime) {
            match self.change_live(&obj.live, def, runtime, element.effect()).await {
                Ok(r) => new_runtime = Some(r),
                Err((now, e)) => {
                    if let (Some(_), Some(old)) = (&new_config, &obj.persistent)
                        && let Err(e2) = self.save_config(old).await
                    {
                        tracing::warn!(network = %name, error = %e2, "cannot restore the persistent definition after a failed update");
                    }
                    if now != *runtime
                        && let Some(o) = self.write().get_mut(&name)
                    {
                        o.runtime = Some(now);
                    }
                    return Err(e);
                }
            }
        }
        let mut networks = self.write();
        if let Some(o) = networks.get_mut(&name) {
            if let Some(d) = new_live {
                o.live = d;
            } else if let (Some(d), false) = (&new_config, active) {
                o.live = d.clone();
            }
            if let Some(d) = new_config {
                o.persistent = Some(d);
            }
            if let Some(r) = new_runtime {
                o.runtime = Some(r);
            }
        }
        Ok(())
    }

    /// Changes the running network from `old` to `new` and records it in the status file. On
    /// failure the host is put back to `old` (as far as possible) and the runtime as it then
    /// is comes back with the error.
    async fn change_live(
        &self,
        old: &NetworkDef,
        new: &NetworkDef,
        runtime: &Runtime,
        effect: sections::Effect,
    ) -> Result<Runtime, (Runtime, NetError)> {
        let (after, result) = self.change_host(old, new, runtime, effect).await;
        if let Err(e) = result {
            let _ = self.write_status(old, &after).await;
            return Err((after, e));
        }
        if let Err(e) = self.write_status(new, &after).await {
            let (restored, undo) = self.change_host(new, old, &after, effect).await;
            if let Err(e2) = undo {
                tracing::warn!(network = %new.name, error = %e2, "cannot undo a live update");
            }
            return Err((restored, e));
        }
        Ok(after)
    }

    /// Makes the host match `to` instead of `from` for `effect`; returns the runtime as it is
    /// afterwards, and whether that worked (on failure `from`'s state is restored).
    async fn change_host(
        &self,
        from: &NetworkDef,
        to: &NetworkDef,
        runtime: &Runtime,
        effect: sections::Effect,
    ) -> (Runtime, Result<(), NetError>) {
        let mut runtime = runtime.clone();
        match effect {
            sections::Effect::Firewall => {
                let script = nft::apply_script(to);
                if script != nft::apply_script(from)
                    && let Some(script) = script
                {
                    if let Err(e) = self.host.nft(&script).await {
                        return (
                            runtime,
                            Err(NetError::failed(format!(
                                "Cannot change the firewall rules of network '{}': {e}",
                                to.name
                            ))),
                        );
                    }
                    runtime.tables = nft::tables(to);
                }
                (runtime, Ok(()))
            }
            sections::Effect::Dnsmasq => {
                let (pid, result) = self.change_dnsmasq(from, to, runtime.dnsmasq_pid).await;
                runtime.dnsmasq_pid = pid;
                (runtime, result)
            }
        }
    }

    async fn write_dnsmasq_file(&self, name: &str, ext: &str, text: &str) -> Result<(), NetError> {
        let path = self.paths.dnsmasq_file(name, ext);
        write_atomic_async(&path, text.as_bytes(), 0o644)
            .await
            .map_err(|e| NetError::io("write", &path, e))
    }

    /// Moves dnsmasq from `from`'s configuration to `to`'s: SIGHUP when only the hosts files
    /// differ, else a restart (dnsmasq reads its configuration file only when it starts). Returns
    /// the pid of the dnsmasq running afterwards; on failure `from`'s files and dnsmasq are put
    /// back.
    async fn change_dnsmasq(
        &self,
        from: &NetworkDef,
        to: &NetworkDef,
        pid: Option<u32>,
    ) -> (Option<u32>, Result<(), NetError>) {
        let name = &to.name;
        let paths = self.paths.dnsmasq_paths(name);
        let conf = self.paths.dnsmasq_file(name, "conf");
        let alive = pid.filter(|p| self.host.dnsmasq_alive(*p, &conf));
        let old_files = dnsmasq::needed(from)
            .then(|| dnsmasq::generate(from, &paths).ok())
            .flatten();
        let new_files = if dnsmasq::needed(to) {
            match dnsmasq::generate(to, &paths) {
                Ok(f) => Some(f),
                Err(e) => {
                    return (
                        alive,
                        Err(NetError::new(
                            ErrorCode::ConfigUnsupported,
                            format!("Cannot configure dnsmasq for network '{name}': {e}"),
                        )),
                    );
                }
            }
        } else {
            None
        };
        if let (Some(pid), Some(new), Some(old)) = (alive, &new_files, &old_files)
            && new.conf == old.conf
        {
            let written = match self.write_dnsmasq_file(name, "hostsfile", &new.hostsfile).await {
                Ok(()) => self.write_dnsmasq_file(name, "addnhosts", &new.addnhosts).await,
                Err(e) => Err(e),
            };
            let result = written.and_then(|()| {
                self.host.reload_dnsmasq(pid).map_err(|e| {
                    NetError::failed(format!("Cannot make dnsmasq re-read its hosts files: {e}"))
                })
            });
            if result.is_err() {
                let _ = self.write_dnsmasq_file(name, "hostsfile", &old.hostsfile).await;
                let _ = self.write_dnsmasq_file(name, "addnhosts", &old.addnhosts).await;
            }
            return (Some(pid), result);
        }
        if let Some(pid) = alive
            && let Err(e) = self.host.stop_process(pid).await
        {
            return (
                Some(pid),
                Err(NetError::failed(format!(
                    "Cannot stop dnsmasq of network '{name}' to restart it: {e}"
                ))),
            );
        }
        if new_files.is_none() {
            for ext in ["conf", "hostsfile", "addnhosts", "pid"] {
                let _ = std::fs::remove_file(self.paths.dnsmasq_file(name, ext));
            }
            return (None, Ok(()));
        }
        match self.spawn_dnsmasq(to).await {
            Ok(pid) => (Some(pid), Ok(())),
            Err(e) => {
                let restored = if alive.is_some() {
                    match self.spawn_dnsmasq(from).await {
                        Ok(pid) => Some(pid),
                        Err(e2) => {
                            tracing::warn!(network = %name, error = %e2, "cannot restart the previous dnsmasq");
                            None
                        }
                    }
                } else {
                    None
                };
                (restored, Err(e))
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Ports
    // ---------------------------------------------------------------------------------------

    fn load_ports(&self, name: &str) -> BTreeMap<String, NetworkPortDef> {
        let mut out = BTreeMap::new();
        for (uuid, path) in Self::xml_files(&self.paths.port_dir(name)) {
            match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| NetworkPortDef::parse(&t).map_err(|e| e.to_string()))
            {
                Ok(port) if port.uuid() == uuid => {
                    out.insert(uuid, port);
                }
                Ok(_) => {
                    tracing::warn!(path = %path.display(), "ignoring port file whose name is not its UUID")
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable port file"),
            }
        }
        out
    }

    fn port_of(&self, key: &Key, uuid: &str) -> Result<(NetworkObj, NetworkPortDef), NetError> {
        let (_, obj) = self.resolve(key)?;
        let wanted = rvirt_conf::xml::canonical_uuid(uuid)
            .ok_or_else(|| NetError::new(ErrorCode::InvalidArg, format!("Invalid port UUID '{uuid}'")))?;
        let port = obj.ports.get(&wanted).cloned().ok_or_else(|| {
            NetError::new(
                ErrorCode::NoNetworkPort,
                format!(
                    "Network port not found: network '{}' has no port {wanted}",
                    obj.live.name
                ),
            )
        })?;
        Ok((obj, port))
    }

    /// Records the ports, and their count in the live XML and the status file.
    async fn set_ports(&self, name: &str, ports: BTreeMap<String, NetworkPortDef>) -> Result<(), NetError> {
        let (def, runtime) = {
            let mut networks = self.write();
            let Some(o) = networks.get_mut(name) else {
                return Err(NetError::no_network(&format!("name '{name}'")));
            };
            o.live.connections = connections(ports.len());
            o.ports = ports;
            (o.live.clone(), o.runtime.clone())
        };
        match runtime {
            Some(runtime) => self.write_status(&def, &runtime).await,
            None => Ok(()),
        }
    }

    /// Creates a port on an active network for one guest NIC, choosing where to plug it.
    pub async fn create_port(
        &self,
        key: &Key,
        xml: &str,
        flags: u32,
    ) -> Result<(PortSummary, String), NetError> {
        let mut port = NetworkPortDef::parse(xml).map_err(NetError::xml)?;
        let _ops = self.ops.lock().await;
        let (name, obj) = self.resolve(key)?;
        if obj.runtime.is_none() {
            return Err(NetError::invalid(format!(
                "Network '{name}' is not active: start it first"
            )));
        }
        if obj.ports.contains_key(port.uuid()) {
            return Err(NetError::new(
                ErrorCode::NetworkPortExist,
                format!("Network '{name}' already has port {}", port.uuid()),
            ));
        }
        let plug = Plug {
            plug_type: if obj.live.builds_bridge() {
                PlugType::Network
            } else {
                PlugType::Bridge
            },
            bridge: obj.live.bridge_name().unwrap_or_default().to_owned(),
            mac_table_manager: None,
        };
        match &port.plug {
            None => {}
            Some(given) if flags & port_flags::RECLAIM == 0 => {
                return Err(NetError::invalid(format!(
                    "Port {} is already plugged into '{}': create it with the RECLAIM flag to take it over",
                    port.uuid(),
                    given.bridge
                )));
            }
            Some(given) if given.bridge != plug.bridge || given.plug_type != plug.plug_type => {
                return Err(NetError::invalid(format!(
                    "Port {} is plugged into '{}', but network '{name}' uses '{}': it cannot be reclaimed",
                    port.uuid(),
                    given.bridge,
                    plug.bridge
                )));
            }
            Some(_) => {}
        }
        port.plug = Some(plug);
        let xml = port.to_xml().map_err(NetError::xml)?;
        let path = self.paths.port_file(&name, port.uuid());
        write_atomic_async(&path, xml.as_bytes(), 0o600)
            .await
            .map_err(|e| NetError::io("write", &path, e))?;
        let mut ports = obj.ports.clone();
        ports.insert(port.uuid().to_owned(), port.clone());
        self.set_ports(&name, ports).await?;
        Ok((port_summary(&obj.live, &port), xml))
    }

    /// Releases a port.
    pub async fn delete_port(&self, key: &Key, uuid: &str) -> Result<(), NetError> {
        let _ops = self.ops.lock().await;
        let (obj, port) = self.port_of(key, uuid)?;
        let name = obj.live.name.clone();
        let path = self.paths.port_file(&name, port.uuid());
        remove_durable_async(&path)
            .await
            .map_err(|e| NetError::io("remove", &path, e))?;
        let mut ports = obj.ports.clone();
        ports.remove(port.uuid());
        self.set_ports(&name, ports).await
    }

    /// Finds a port.
    pub fn lookup_port(&self, key: &Key, uuid: &str) -> Result<PortSummary, NetError> {
        let (obj, port) = self.port_of(key, uuid)?;
        Ok(port_summary(&obj.live, &port))
    }

    /// The ports of a network.
    pub fn list_ports(&self, key: &Key) -> Result<Vec<PortSummary>, NetError> {
        let (_, obj) = self.resolve(key)?;
        Ok(obj.ports.values().map(|p| port_summary(&obj.live, p)).collect())
    }

    /// A port's XML.
    pub fn port_xml(&self, key: &Key, uuid: &str) -> Result<String, NetError> {
        self.port_of(key, uuid)?.1.to_xml().map_err(NetError::xml)
    }

    // ---------------------------------------------------------------------------------------
    // Loading, re-adoption, autostart
    // ---------------------------------------------------------------------------------------

    fn xml_files(dir: &Path) -> Vec<(String, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut out: Vec<(String, PathBuf)> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .filter_map(|p| {
                // write_atomic's temporary files (`.NAME.xml.tmp-PID`) do not end in `.xml`.
                let name = p.file_name()?.to_str()?.strip_suffix(".xml")?.to_owned();
                Some((name, p))
            })
            .collect();
        out.sort();
        out
    }

    /// Loads persistent definitions and status files, re-adopts active networks (restarting a
    /// dead dnsmasq, re-installing the firewall; a network whose bridge vanished becomes
    /// inactive) and starts autostart networks. Problems with one network are logged and do not
    /// stop the others.
    pub async fn load(&self) {
        let _ops = self.ops.lock().await;
        let mut table = BTreeMap::new();
        for (name, path) in Self::xml_files(&self.paths.config_dir) {
            let def = match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| NetworkDef::parse(&t).map_err(|e| e.to_string()))
            {
                Ok(d) if d.name == name && d.uuid.is_some() => d,
                Ok(_) => {
                    tracing::warn!(path = %path.display(), "ignoring network definition: its name does not match the file or it has no UUID");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable network definition");
                    continue;
                }
            };
            let autostart = self.paths.autostart_link(&name).exists();
            table.insert(
                name,
                NetworkObj {
                    live: def.clone(),
                    persistent: Some(def),
                    runtime: None,
                    autostart,
                    ports: BTreeMap::new(),
                },
            );
        }
        let mut active = Vec::new();
        for (name, path) in Self::xml_files(&self.paths.state_dir) {
            let status: StatusFile = match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| rvirt_conf::xml::from_str("networkstatus", &t).map_err(|e| e.to_string()))
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable network status file");
                    continue;
                }
            };
            let runtime = Runtime {
                dnsmasq_pid: status.dnsmasq_pid,
                tables: status
                    .table
                    .iter()
                    .filter_map(|t| {
                        Some(TableRef {
                            family: TableFamily::parse(&t.family)?,
                            name: t.name.clone(),
                        })
                    })
                    .collect(),
                bridge_created: status.bridge_created,
            };
            let obj = table.entry(name.clone()).or_insert_with(|| NetworkObj {
                live: status.network.clone(),
                persistent: None,
                runtime: None,
                autostart: false,
                ports: BTreeMap::new(),
            });
            obj.live = status.network;
            obj.runtime = Some(runtime);
            obj.ports = self.load_ports(&name);
            obj.live.connections = connections(obj.ports.len());
            active.push(name);
        }
        *self.write() = table;
        for name in active {
            self.readopt(&name).await;
        }
        let autostart: Vec<String> = self
            .read()
            .values()
            .filter(|o| o.autostart && o.runtime.is_none())
            .map(|o| o.live.name.clone())
            .collect();
        for name in autostart {
            match self.start_locked(&Key::Name(name.clone())).await {
                Ok(_) => tracing::info!(network = %name, "autostarted"),
                Err(e) => tracing::warn!(network = %name, error = %e, "cannot autostart network"),
            }
        }
    }

    async fn readopt(&self, name: &str) {
        let Some(obj) = self.read().get(name).cloned() else {
            return;
        };
        let Some(mut runtime) = obj.runtime.clone() else {
            return;
        };
        let def = obj.live.clone();
        let bridge = def.bridge_name().unwrap_or_default().to_owned();
        let links = self.host.link_names().await.unwrap_or_default();
        if !links.contains(&bridge) {
            tracing::warn!(network = %name, bridge = %bridge, "the network's bridge is gone: marking the network inactive");
            let _ = self
                .tear_down(
                    &def,
                    &Runtime {
                        bridge_created: false,
                        ..runtime
                    },
                )
                .await;
            let _ = remove_durable_async(&self.paths.status_file(name)).await;
            let mut networks = self.write();
            match obj.persistent {
                Some(p) => {
                    if let Some(o) = networks.get_mut(name) {
                        o.live = p;
                        o.runtime = None;
                    }
                }
                None => {
                    networks.remove(name);
                }
            }
            return;
        }
        if let Some(script) = nft::apply_script(&def) {
            match self.host.nft(&script).await {
                Ok(()) => runtime.tables = nft::tables(&def),
                Err(e) => tracing::warn!(network = %name, error = %e, "cannot re-install the firewall rules"),
            }
        }
        if dnsmasq::needed(&def) {
            let conf = self.paths.dnsmasq_file(name, "conf");
            let alive = runtime
                .dnsmasq_pid
                .is_some_and(|pid| self.host.dnsmasq_alive(pid, &conf));
            if alive {
                let leases = self.paths.dnsmasq_file(name, "leases");
                let current = leases::parse(&std::fs::read_to_string(leases).unwrap_or_default());
                self.lease_cache_lock().insert(name.to_owned(), current);
                tracing::info!(network = %name, "re-adopted, dnsmasq running");
            } else {
                tracing::warn!(network = %name, "dnsmasq of the network is not running: restarting it");
                match self.spawn_dnsmasq(&def).await {
                    Ok(pid) => runtime.dnsmasq_pid = Some(pid),
                    Err(e) => {
                        runtime.dnsmasq_pid = None;
                        tracing::warn!(network = %name, error = %e, "cannot restart dnsmasq");
                    }
                }
            }
        }
        if let Err(e) = self.write_status(&def, &runtime).await {
            tracing::warn!(network = %name, error = %e, "cannot update the status file");
        }
        if let Some(o) = self.write().get_mut(name) {
            o.runtime = Some(runtime);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Leases
    // ---------------------------------------------------------------------------------------

    fn lease_cache_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Lease>>> {
        self.lease_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Re-reads network `name`'s lease file and emits an event per change since the last
    /// reading.
    pub fn refresh_leases(&self, name: &str) {
        let Some(obj) = self.read().get(name).cloned() else {
            return;
        };
        if obj.runtime.is_none() {
            return;
        }
        let text = std::fs::read_to_string(self.paths.dnsmasq_file(name, "leases")).unwrap_or_default();
        let current = leases::parse(&text);
        let changes = {
            let mut cache = self.lease_cache_lock();
            let before = cache.entry(name.to_owned()).or_default();
            let changes = leases::diff(before, &current);
            *before = current;
            changes
        };
        for change in changes {
            let lease = match &change {
                Change::Added(l) | Change::Removed(l) | Change::Updated(l) => l.clone(),
            };
            let info = self.lease_info(&obj.live, lease);
            self.emit(
                &obj.live,
                EventKind::Lease(LeaseEvent {
                    change,
                    bridge: info.bridge,
                    prefix: info.prefix,
                }),
            );
        }
    }

    /// Watches dnsmasq's lease files with inotify and turns their changes into events, for as
    /// long as the driver lives.
    pub fn watch_leases(self: &Arc<Self>) -> Result<(), String> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        self.ensure_dnsmasq_dir().map_err(|e| e.message)?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| format!("cannot watch lease files: {e}"))?;
        inotify
            .add_watch(
                &self.paths.dnsmasq_dir,
                AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO,
            )
            .map_err(|e| format!("cannot watch {}: {e}", self.paths.dnsmasq_dir.display()))?;
        // SAFETY: the AsyncFd owns the Inotify, whose descriptor stays open and the same until
        // the AsyncFd is dropped.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(InotifyFd(inotify)) }
            .map_err(|e| format!("cannot watch lease files: {e}"))?;
        let driver = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let mut dirty = HashSet::new();
                if !read_inotify(&fd, &mut dirty).await {
                    return;
                }
                // dnsmasq truncates then rewrites the file: let a burst of changes settle.
                while let Ok(true) =
                    tokio::time::timeout(Duration::from_millis(50), read_inotify(&fd, &mut dirty)).await
                {
                }
                let Some(driver) = driver.upgrade() else { return };
                for name in dirty {
                    driver.refresh_leases(&name);
                }
            }
        });
        Ok(())
    }
}

#[derive(Debug)]
struct InotifyFd(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

/// Waits for inotify events and adds the networks whose lease file changed to `dirty`; false
/// when the watch broke.
async fn read_inotify(fd: &tokio::io::unix::AsyncFd<InotifyFd>, dirty: &mut HashSet<String>) -> bool {
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return false;
        };
        match guard.get_inner().0.read_events() {
            Ok(events) => {
                for event in events {
                    if let Some(name) = event
                        .name
                        .as_ref()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_suffix(".leases"))
                    {
                        dirty.insert(name.to_owned());
                    }
                }
                return true;
            }
            Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
            Err(e) => {
                tracing::warn!(error = %e, "lease file watch failed");
                return false;
            }
        }
    }
}

fn mac_bytes(text: &str) -> Option<[u8; 6]> {
    let canonical = canonical_mac(text)?;
    let mut out = [0u8; 6];
    for (i, part) in canonical.split(':').enumerate() {
        out[i] = u8::from_str_radix(part, 16).ok()?;
    }
    Some(out)
}

fn connections(ports: usize) -> Option<u32> {
    (ports > 0).then(|| u32::try_from(ports).unwrap_or(u32::MAX))
}

mod sections;

#[cfg(test)]
mod tests;
