//! The test driver's state: domains, networks and pools, loaded from libvirt's default `<node>`
//! document or from a file, and the domain event log.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use quick_xml::events::Event;
use rvirt_proto::error::status;
use rvirt_proto::v1::*;
use tonic::Status;

use crate::error::{Error, Result};
use crate::events::EventLog;

/// libvirt's default test node: one running domain, one active network, one active pool.
pub const DEFAULT_NODE: &str = r#"<node>
<domain type='test'>
  <name>test</name>
  <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
  <memory>8388608</memory>
  <currentMemory>2097152</currentMemory>
  <vcpu>2</vcpu>
  <os>
    <type>hvm</type>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/guest/diskimage1'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </disk>
    <interface type='network'>
      <mac address='aa:bb:cc:dd:ee:ff'/>
      <source network='default' bridge='virbr0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x0'/>
    </interface>
    <memballoon model='virtio'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </memballoon>
  </devices>
</domain>
<network>
  <name>default</name>
  <uuid>dd8fe884-6c02-601e-7551-cca97df1c5df</uuid>
  <bridge name='virbr0'/>
  <forward/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
</network>
<pool type='dir'>
  <name>default-pool</name>
  <uuid>dfe224cb-28fb-8dd0-c4b2-64eb3f0f4566</uuid>
  <target>
    <path>/default-pool</path>
  </target>
</pool>
</node>
"#;

/// libvirt's test driver host: i686, 3 GiB, 16 CPUs at 1400 MHz, 2 NUMA nodes of 2 sockets of
/// 2 cores of 2 threads.
pub fn node_info() -> GetNodeInfoResponse {
    GetNodeInfoResponse {
        model: "i686".into(),
        memory_kib: 3 * 1024 * 1024,
        cpus: 16,
        mhz: 1400,
        nodes: 2,
        sockets: 2,
        cores: 2,
        threads: 2,
    }
}

/// One domain.
#[derive(Debug, Clone)]
pub struct DomainRecord {
    /// Name.
    pub name: String,
    /// UUID, canonical.
    pub uuid: String,
    /// `<title>`.
    pub title: String,
    /// The definition as XML (the persistent one, or the live one of a transient domain).
    pub xml: String,
    /// Runtime id while active.
    pub id: Option<i32>,
    /// State.
    pub state: DomainState,
    /// Reason for the state.
    pub reason: domain_state_reason::Reason,
    /// Has a persistent definition.
    pub persistent: bool,
    /// Starts with the driver.
    pub autostart: bool,
    /// `<memory>` in KiB.
    pub max_memory_kib: u64,
    /// `<currentMemory>` in KiB.
    pub memory_kib: u64,
    /// `<vcpu>`.
    pub vcpus: u32,
    /// `<vcpu current=...>`, the active vCPUs.
    pub current_vcpus: u32,
}

impl DomainRecord {
    /// Whether it has a running or paused emulator.
    pub fn is_active(&self) -> bool {
        self.id.is_some()
    }

    /// The summary the API returns.
    pub fn summary(&self) -> Domain {
        Domain {
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            id: self.id.unwrap_or(-1),
            state: self.state as i32,
            reason: Some(DomainStateReason {
                reason: Some(self.reason),
            }),
            active: self.is_active(),
            persistent: self.persistent,
            autostart: self.autostart,
            has_managed_save: false,
            title: self.title.clone(),
        }
    }

    /// Who it is, for events.
    pub fn identity(&self) -> DomainIdentity {
        DomainIdentity {
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            id: self.id.unwrap_or(-1),
        }
    }
}

/// One network (the test driver keeps only what it reports).
#[derive(Debug, Clone)]
pub struct NetworkRecord {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Bridge name.
    pub bridge: String,
    /// XML.
    pub xml: String,
    /// Active.
    pub active: bool,
    /// Persistent.
    pub persistent: bool,
    /// Autostart.
    pub autostart: bool,
}

impl NetworkRecord {
    /// The summary the API returns.
    pub fn summary(&self) -> Network {
        Network {
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            active: self.active,
            persistent: self.persistent,
            autostart: self.autostart,
            bridge_name: self.bridge.clone(),
        }
    }

    /// Who it is, for events.
    pub fn identity(&self) -> NetworkIdentity {
        NetworkIdentity {
            name: self.name.clone(),
            uuid: self.uuid.clone(),
        }
    }
}

/// One storage pool.
#[derive(Debug, Clone)]
pub struct PoolRecord {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// XML.
    pub xml: String,
    /// Active.
    pub active: bool,
    /// Persistent.
    pub persistent: bool,
    /// Autostart.
    pub autostart: bool,
    /// The `type` attribute: `dir`, `fs`, `logical`, ...
    pub pool_type: String,
    /// `<target><path>`, where volume paths start.
    pub target_path: String,
    /// The volumes, by name.
    pub volumes: BTreeMap<String, VolumeRecord>,
}

/// libvirt's test driver gives every pool this capacity (100 GiB); allocation is the sum of
/// its volumes' allocations.
pub const POOL_CAPACITY: u64 = 100 * 1024 * 1024 * 1024;

impl PoolRecord {
    /// Bytes allocated by the pool's volumes.
    pub fn allocation(&self) -> u64 {
        self.volumes.values().map(|v| v.allocation).sum()
    }

    /// The summary the API returns.
    pub fn summary(&self) -> StoragePool {
        StoragePool {
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            active: self.active,
            persistent: self.persistent,
            autostart: self.autostart,
            r#type: self.pool_type.clone(),
            state: if self.active {
                StoragePoolState::Running
            } else {
                StoragePoolState::Inactive
            } as i32,
        }
    }

    /// Who it is, for events.
    pub fn identity(&self) -> StoragePoolIdentity {
        StoragePoolIdentity {
            name: self.name.clone(),
            uuid: self.uuid.clone(),
        }
    }
}

/// One storage volume, its data held in memory.
#[derive(Debug, Clone, Default)]
pub struct VolumeRecord {
    /// Name, unique in its pool.
    pub name: String,
    /// Key, unique on the host: the path, as libvirt's test driver makes it.
    pub key: String,
    /// `<pool path>/<name>`.
    pub path: String,
    /// What the guest sees, in bytes.
    pub capacity: u64,
    /// What the host uses, in bytes.
    pub allocation: u64,
    /// `<target><format type=...>`, `raw` when absent.
    pub format: String,
    /// The data written so far; everything past its end reads as zeros.
    pub data: Vec<u8>,
}

/// One secret.
#[derive(Debug, Clone)]
pub struct SecretRecord {
    /// UUID, canonical.
    pub uuid: String,
    /// What it is for.
    pub usage_type: SecretUsageType,
    /// The usage id: volume path, Ceph or TLS name, iSCSI target; empty for none.
    pub usage_id: String,
    /// Kept in memory only.
    pub ephemeral: bool,
    /// Value never returned to clients.
    pub private: bool,
    /// `<description>`.
    pub description: String,
    /// The definition as XML (with the UUID filled in).
    pub xml: String,
    /// The value, once set.
    pub value: Option<Vec<u8>>,
}

impl SecretRecord {
    /// The summary the API returns.
    pub fn summary(&self) -> Secret {
        Secret {
            uuid: self.uuid.clone(),
            usage_type: self.usage_type as i32,
            usage_id: self.usage_id.clone(),
            ephemeral: self.ephemeral,
            private: self.private,
            description: self.description.clone(),
            has_value: self.value.is_some(),
        }
    }

    /// Who it is, for events.
    pub fn identity(&self) -> SecretIdentity {
        SecretIdentity {
            uuid: self.uuid.clone(),
            usage_type: self.usage_type as i32,
            usage_id: self.usage_id.clone(),
        }
    }
}

/// What the test driver holds.
#[derive(Debug, Default)]
pub struct Objects {
    /// Domains by name.
    pub domains: BTreeMap<String, DomainRecord>,
    /// Networks by name.
    pub networks: BTreeMap<String, NetworkRecord>,
    /// Pools by name.
    pub pools: BTreeMap<String, PoolRecord>,
    /// Secrets by UUID.
    pub secrets: BTreeMap<String, SecretRecord>,
    /// The next domain id.
    pub next_id: i32,
}

/// A domain event before it is sequenced.
pub type DomainEventData = (DomainIdentity, domain_event::Event);

/// A network event before it is sequenced.
pub type NetworkEventData = (NetworkIdentity, network_event::Event);

/// A storage pool event before it is sequenced.
pub type PoolEventData = (StoragePoolIdentity, storage_pool_event::Event);

/// A secret event before it is sequenced.
pub type SecretEventData = (SecretIdentity, secret_event::Event);

/// The state of one test driver instance.
#[derive(Debug)]
pub struct TestState {
    objects: Mutex<Objects>,
    /// Domain events.
    pub domain_events: EventLog<DomainEventData>,
    /// Network events.
    pub network_events: EventLog<NetworkEventData>,
    /// Storage pool events.
    pub pool_events: EventLog<PoolEventData>,
    /// Secret events.
    pub secret_events: EventLog<SecretEventData>,
}

pub(crate) fn xml_error(message: impl Into<String>) -> Status {
    status(ErrorCode::XmlError, ErrorDomain::Test, message)
}

impl TestState {
    /// libvirt's default test node.
    pub fn default_state() -> Result<TestState> {
        Self::from_node(DEFAULT_NODE).map_err(Error::from)
    }

    /// A `<node>` document from a file.
    pub fn from_file(path: &Path) -> Result<TestState> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorCode::OpenFailed,
                ErrorDomain::Test,
                format!("Cannot read {}: {e}", path.display()),
            )
        })?;
        Self::from_node(&text).map_err(Error::from)
    }

    /// Loads a `<node>` document: its domains (running unless they say otherwise), networks and
    /// pools (active).
    pub fn from_node(text: &str) -> Result<TestState, Status> {
        let mut objects = Objects {
            next_id: 1,
            ..Objects::default()
        };
        for (name, raw) in top_level_children(text, "node")? {
            match name.as_str() {
                "domain" => {
                    let mut record = parse_domain(&raw)?;
                    record.persistent = true;
                    record.id = Some(objects.next_id);
                    objects.next_id += 1;
                    record.state = DomainState::Running;
                    record.reason = domain_state_reason::Reason::Running(DomainRunningReason::Booted as i32);
                    objects.domains.insert(record.name.clone(), record);
                }
                "network" => {
                    let mut record = super::network::parse_network(&raw)?;
                    record.active = true;
                    record.persistent = true;
                    objects.networks.insert(record.name.clone(), record);
                }
                "pool" => {
                    let mut record = super::storage::parse_pool(&raw)?;
                    record.active = true;
                    record.persistent = true;
                    for (child, vol_raw) in top_level_children(&raw, "pool")? {
                        if child == "volume" {
                            let volume = super::storage::parse_volume(&vol_raw, &record)?;
                            record.volumes.insert(volume.name.clone(), volume);
                        }
                    }
                    objects.pools.insert(record.name.clone(), record);
                }
                "secret" => {
                    let record = super::secret::parse_secret(&raw)?;
                    objects.secrets.insert(record.uuid.clone(), record);
                }
                // Host interfaces, node devices and host descriptions are not modelled.
                _ => {}
            }
        }
        Ok(TestState {
            objects: Mutex::new(objects),
            domain_events: EventLog::new(1024),
            network_events: EventLog::new(1024),
            pool_events: EventLog::new(1024),
            secret_events: EventLog::new(1024),
        })
    }

    /// The objects, locked.
    pub fn lock(&self) -> MutexGuard<'_, Objects> {
        self.objects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A random UUID (version 4) in lower-case hyphenated form.
pub fn uuid_v4() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// The canonical form of a UUID (lower case, hyphenated), or `None`.
pub fn canonical_uuid(text: &str) -> Option<String> {
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let h = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// The raw XML of each top-level child of `root`, with its element name.
pub(crate) fn top_level_children(text: &str, root: &str) -> Result<Vec<(String, String)>, Status> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0usize;
    let mut current = String::new();
    loop {
        let before = reader.buffer_position() as usize;
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                depth += 1;
                let name = e.name().0.to_owned();
                if depth == 1 && name != root {
                    return Err(xml_error(format!("Expected a <{root}> document, found <{name}>")));
                }
                if depth == 2 {
                    start = before;
                    current = name;
                }
            }
            Ok(Event::Empty(e)) if depth == 1 => {
                let end = reader.buffer_position() as usize;
                let name = e.name().0.to_owned();
                out.push((name, text[before..end].trim().to_owned()));
            }
            Ok(Event::End(_)) => {
                if depth == 2 {
                    let end = reader.buffer_position() as usize;
                    out.push((std::mem::take(&mut current), text[start..end].trim().to_owned()));
                }
                depth = depth.saturating_sub(1);
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(xml_error(format!("The XML is not well-formed: {e}"))),
        }
    }
    Ok(out)
}

/// Attributes as (name, value) pairs.
type Attrs = Vec<(String, String)>;

/// The text of each direct child element and the attributes of each, of a document's root.
struct SimpleFields {
    root_attrs: Attrs,
    children: Vec<(String, Attrs, String)>,
}

impl SimpleFields {
    fn text(&self, name: &str) -> Option<String> {
        self.children
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, t)| t.trim().to_owned())
    }

    fn attr(&self, element: &str, attr: &str) -> Option<String> {
        let (_, attrs, _) = self.children.iter().find(|(n, _, _)| n == element)?;
        attrs.iter().find(|(k, _)| k == attr).map(|(_, v)| v.clone())
    }

    fn root_attr(&self, attr: &str) -> Option<String> {
        self.root_attrs
            .iter()
            .find(|(k, _)| k == attr)
            .map(|(_, v)| v.clone())
    }
}

fn attrs_of(e: &quick_xml::events::BytesStart<'_>) -> Result<Attrs, Status> {
    e.attributes()
        .map(|a| {
            let a = a.map_err(|err| xml_error(format!("Bad attribute: {err}")))?;
            let value = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|err| xml_error(format!("Bad attribute value: {err}")))?;
            Ok((a.key.0.to_owned(), value.into_owned()))
        })
        .collect()
}

fn simple_fields(text: &str) -> Result<SimpleFields, Status> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut fields = SimpleFields {
        root_attrs: Vec::new(),
        children: Vec::new(),
    };
    let mut depth = 0usize;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                depth += 1;
                if depth == 1 {
                    fields.root_attrs = attrs_of(&e)?;
                } else if depth == 2 {
                    let name = e.name().0.to_owned();
                    fields.children.push((name, attrs_of(&e)?, String::new()));
                }
            }
            Ok(Event::Empty(e)) => {
                if depth == 0 {
                    fields.root_attrs = attrs_of(&e)?;
                } else if depth == 1 {
                    let name = e.name().0.to_owned();
                    fields.children.push((name, attrs_of(&e)?, String::new()));
                }
            }
            Ok(Event::Text(t)) if depth == 2 => {
                let text = t.xml_content(quick_xml::XmlVersion::Implicit1_0);
                if let Some(last) = fields.children.last_mut() {
                    last.2.push_str(&text);
                }
            }
            // Entity references arrive as their own events: `a&amp;b` is three.
            Ok(Event::GeneralRef(r)) if depth == 2 => {
                let text = resolve_entity(&r)?;
                if let Some(last) = fields.children.last_mut() {
                    last.2.push_str(&text);
                }
            }
            Ok(Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(xml_error(format!("The XML is not well-formed: {e}"))),
        }
    }
    Ok(fields)
}

/// A memory size with libvirt's `unit` attribute, in KiB.
pub(crate) fn kib(value: &str, unit: Option<&str>, what: &str) -> Result<u64, Status> {
    let n: u64 = value
        .trim()
        .parse()
        .map_err(|_| xml_error(format!("<{what}> {value:?} is not a number")))?;
    let bytes_per_unit: u64 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1024,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        other => return Err(xml_error(format!("<{what}> has an unknown unit {other:?}"))),
    };
    let bytes = n
        .checked_mul(bytes_per_unit)
        .ok_or_else(|| xml_error(format!("<{what}> is too large")))?;
    Ok(bytes.div_ceil(1024))
}

/// Reads the parts of a domain XML the test driver reports; fills in a UUID when absent.
pub fn parse_domain(xml: &str) -> Result<DomainRecord, Status> {
    let fields = simple_fields(xml)?;
    let name = fields
        .text("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| xml_error("The domain has no <name>"))?;
    if name.contains('/') {
        return Err(xml_error(format!("Domain name {name:?} may not contain '/'")));
    }
    let mut xml = xml.trim().to_owned();
    let uuid = match fields.text("uuid") {
        Some(text) => canonical_uuid(&text).ok_or_else(|| xml_error(format!("{text:?} is not a UUID")))?,
        None => {
            let uuid = uuid_v4();
            if let Some(pos) = xml.find("</name>") {
                xml.insert_str(pos + "</name>".len(), &format!("\n  <uuid>{uuid}</uuid>"));
            }
            uuid
        }
    };
    let max_memory_kib = match fields.text("memory") {
        Some(v) => kib(&v, fields.attr("memory", "unit").as_deref(), "memory")?,
        None => return Err(xml_error("The domain has no <memory>")),
    };
    let memory_kib = match fields.text("currentMemory") {
        Some(v) => kib(
            &v,
            fields.attr("currentMemory", "unit").as_deref(),
            "currentMemory",
        )?,
        None => max_memory_kib,
    };
    if memory_kib > max_memory_kib {
        return Err(xml_error("<currentMemory> is larger than <memory>"));
    }
    let vcpus: u32 = match fields.text("vcpu") {
        Some(v) => v
            .parse()
            .map_err(|_| xml_error(format!("<vcpu> {v:?} is not a number")))?,
        None => 1,
    };
    let current_vcpus = match fields.attr("vcpu", "current") {
        Some(v) => v
            .parse()
            .map_err(|_| xml_error(format!("<vcpu current> {v:?} is not a number")))?,
        None => vcpus,
    };
    if vcpus == 0 || current_vcpus == 0 || current_vcpus > vcpus {
        return Err(xml_error(
            "<vcpu> must be at least 1, and current no more than it",
        ));
    }
    if fields.root_attr("type").is_none() {
        return Err(xml_error("The <domain> element has no type attribute"));
    }
    Ok(DomainRecord {
        name,
        uuid,
        title: fields.text("title").unwrap_or_default(),
        xml,
        id: None,
        state: DomainState::Shutoff,
        reason: domain_state_reason::Reason::Shutoff(DomainShutoffReason::Unknown as i32),
        persistent: false,
        autostart: false,
        max_memory_kib,
        memory_kib,
        vcpus,
        current_vcpus,
    })
}

/// An XML element read leniently: name, attributes, text and child elements. The test driver's
/// network, pool, volume and secret readers use it until the strict models of `rvirt_conf`
/// replace them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XmlNode {
    /// Element name.
    pub name: String,
    /// Attributes in document order.
    pub attrs: Vec<(String, String)>,
    /// The element's own text, concatenated.
    pub text: String,
    /// Child elements in document order.
    pub children: Vec<XmlNode>,
}

impl XmlNode {
    /// Parses a document and returns its root element.
    pub fn parse(text: &str) -> Result<XmlNode, Status> {
        let mut reader = quick_xml::Reader::from_str(text);
        let mut stack: Vec<XmlNode> = Vec::new();
        let mut root: Option<XmlNode> = None;
        loop {
            match reader.read_event() {
                Ok(Event::Start(e)) => stack.push(XmlNode {
                    name: e.name().0.to_owned(),
                    attrs: attrs_of(&e)?,
                    ..XmlNode::default()
                }),
                Ok(Event::Empty(e)) => {
                    let node = XmlNode {
                        name: e.name().0.to_owned(),
                        attrs: attrs_of(&e)?,
                        ..XmlNode::default()
                    };
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(node),
                        None if root.is_none() => root = Some(node),
                        None => return Err(xml_error("The XML has more than one root element")),
                    }
                }
                Ok(Event::Text(t)) => {
                    if let Some(node) = stack.last_mut() {
                        node.text
                            .push_str(&t.xml_content(quick_xml::XmlVersion::Implicit1_0));
                    }
                }
                Ok(Event::GeneralRef(r)) => {
                    if let Some(node) = stack.last_mut() {
                        node.text.push_str(&resolve_entity(&r)?);
                    }
                }
                Ok(Event::CData(c)) => {
                    if let Some(node) = stack.last_mut() {
                        node.text.push_str(&c);
                    }
                }
                Ok(Event::End(_)) => {
                    let Some(node) = stack.pop() else {
                        return Err(xml_error("The XML closes an element it never opened"));
                    };
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(node),
                        None if root.is_none() => root = Some(node),
                        None => return Err(xml_error("The XML has more than one root element")),
                    }
                }
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(e) => return Err(xml_error(format!("The XML is not well-formed: {e}"))),
            }
        }
        if !stack.is_empty() {
            return Err(xml_error("The XML ends before its root element is closed"));
        }
        root.ok_or_else(|| xml_error("The XML document is empty"))
    }

    /// An attribute's value.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first child element with this name.
    pub fn child(&self, name: &str) -> Option<&XmlNode> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The trimmed text of the element at `path` below this one.
    pub fn text_at(&self, path: &[&str]) -> Option<String> {
        let mut node = self;
        for name in path {
            node = node.child(name)?;
        }
        Some(node.text.trim().to_owned())
    }
}

/// The text an entity reference (`amp`, `#x41`, ...) stands for.
fn resolve_entity(name: &str) -> Result<String, Status> {
    let text = match name {
        "lt" => "<".to_owned(),
        "gt" => ">".to_owned(),
        "amp" => "&".to_owned(),
        "apos" => "'".to_owned(),
        "quot" => "\"".to_owned(),
        other => other
            .strip_prefix("#x")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .or_else(|| other.strip_prefix('#').and_then(|d| d.parse().ok()))
            .and_then(char::from_u32)
            .map(String::from)
            .ok_or_else(|| xml_error(format!("Unknown entity &{other};")))?,
    };
    Ok(text)
}

/// A size with libvirt's `unit` attribute (storage XML: bytes when absent), in bytes.
pub fn bytes_with_unit(value: &str, unit: Option<&str>, what: &str) -> Result<u64, Status> {
    let n: u64 = value
        .trim()
        .parse()
        .map_err(|_| xml_error(format!("<{what}> {value:?} is not a number")))?;
    let per_unit: u64 = match unit.unwrap_or("bytes") {
        "b" | "B" | "bytes" => 1,
        "KB" => 1000,
        "k" | "K" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "m" | "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "g" | "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "t" | "T" | "TiB" => 1 << 40,
        "PB" => 1_000_000_000_000_000,
        "p" | "P" | "PiB" => 1 << 50,
        "EB" => 1_000_000_000_000_000_000,
        "e" | "E" | "EiB" => 1 << 60,
        other => return Err(xml_error(format!("<{what}> has an unknown unit {other:?}"))),
    };
    n.checked_mul(per_unit)
        .ok_or_else(|| xml_error(format!("<{what}> is too large")))
}

/// Inserts `<uuid>` after `<name>` in a definition that has none, as libvirt's formatter would
/// show it.
pub fn insert_uuid(xml: &str, uuid: &str) -> String {
    let mut xml = xml.trim().to_owned();
    match xml.find("</name>") {
        Some(pos) => xml.insert_str(pos + "</name>".len(), &format!("\n  <uuid>{uuid}</uuid>")),
        None => {
            // No <name> (secrets): right after the root element's start tag.
            let start = xml.find('<').unwrap_or(0);
            if let Some(end) = xml[start..].find('>').map(|e| e + start) {
                if xml[..end].ends_with('/') {
                    let root: String = xml[start + 1..end - 1]
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '/')
                        .collect();
                    xml.replace_range(end - 1..=end, &format!(">\n  <uuid>{uuid}</uuid>\n</{root}>"));
                } else {
                    xml.insert_str(end + 1, &format!("\n  <uuid>{uuid}</uuid>"));
                }
            }
        }
    }
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_node_has_libvirts_objects() {
        let state = TestState::default_state().expect("default node");
        let objects = state.lock();
        let test = objects.domains.get("test").expect("domain test");
        assert_eq!(test.uuid, "6695eb01-f6a4-8304-79aa-97f2502e193f");
        assert_eq!(
            (test.max_memory_kib, test.memory_kib, test.vcpus),
            (8_388_608, 2_097_152, 2)
        );
        assert_eq!((test.id, test.state), (Some(1), DomainState::Running));
        assert_eq!(
            objects.networks.get("default").map(|n| n.bridge.as_str()),
            Some("virbr0")
        );
        assert!(objects.pools.contains_key("default-pool"));
    }

    #[test]
    fn domain_parse_converts_units_and_fills_uuid() {
        let d = parse_domain("<domain type='test'><name>a</name><memory unit='MiB'>512</memory><vcpu current='1'>2</vcpu></domain>")
            .expect("parse");
        assert_eq!(
            (d.max_memory_kib, d.memory_kib, d.vcpus, d.current_vcpus),
            (524_288, 524_288, 2, 1)
        );
        assert!(canonical_uuid(&d.uuid).is_some());
        assert!(d.xml.contains(&d.uuid));
    }

    #[test]
    fn domain_parse_keeps_entities_in_names() {
        let d = parse_domain("<domain type='test'><name>a&amp;b&#x43;</name><memory>1</memory></domain>")
            .expect("parse");
        assert_eq!(d.name, "a&bC");
    }

    #[test]
    fn domain_parse_refuses_bad_input() {
        for bad in [
            "<domain type='test'><memory>1</memory></domain>",
            "<domain type='test'><name>a/b</name><memory>1</memory></domain>",
            "<domain type='test'><name>a</name></domain>",
            "<domain type='test'><name>a</name><memory unit='parsecs'>1</memory></domain>",
            "<domain type='test'><name>a</name><uuid>nope</uuid><memory>1</memory></domain>",
            "<domain type='test'><name>a</name><memory>1</memory><vcpu current='3'>2</vcpu></domain>",
            "<domain><name>a</name><memory>1</memory></domain>",
            "<domain type='test'><name>a",
        ] {
            let err = parse_domain(bad).expect_err(bad);
            assert_eq!(
                rvirt_proto::error::from_status(&err).code(),
                ErrorCode::XmlError,
                "{bad}"
            );
        }
    }
}
