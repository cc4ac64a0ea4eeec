//! libvirt's network XML (`<network>`, schema `network.rng`) for virtnetworkd.
//!
//! [`NetworkDef::parse`] reads the XML strictly (an element or attribute rvirt does not implement
//! is an [`XmlError`] naming its path), fills libvirt's parse-time defaults (UUID when absent,
//! `nat` for a `<forward>` without mode, `stp='on' delay='0'` for bridge-backed modes, the first
//! `<forward><interface>` mirrored in `dev`) and checks libvirt's rules (addresses, families,
//! prefixes, DHCP ranges inside their subnet, one DHCP `<ip>` per family, what forward
//! `mode='bridge'` may not have). [`NetworkDef::to_xml`] formats it in libvirt's element order.
//! What the driver decides (the bridge name `virbrN`, a random MAC) is left to it through
//! [`NetworkDef::needs_bridge_name`], [`allocate_bridge_name`] and [`NetworkDef::ensure_mac`].
//!
//! Supported: name, uuid, title, description, bridge (name, stp, delay), mtu, mac, forward
//! (`nat` with `<nat><address/><port/></nat>`, `route`, `open`, `bridge` onto an existing host
//! bridge; isolated when absent; `dev` and `<interface dev>`), domain (name, localOnly), dns
//! (enable, forwardPlainNames, forwarder, txt, srv, host), ip (IPv4 and IPv6, netmask or
//! prefix, localPtr, tftp, dhcp ranges with lease, hosts by mac/id/name with lease, bootp).
//!
//! UpdateNetwork's elements are parsed on their own ([`parse_dhcp_host`], [`parse_dhcp_range`],
//! [`parse_forward_interface`], [`parse_dns_host`], [`parse_dns_txt`], [`parse_dns_srv`]; the DNS
//! ones may be partial to name a record to delete) and checked with the same rules as in a whole
//! definition ([`validate_dhcp_host`], [`validate_dhcp_range`], [`validate_dns_host`],
//! [`validate_dns_txt`], [`validate_dns_srv`]).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::xml::{self, XmlError};

/// Linux's limit on an interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// The bridge name template the driver uses when the XML names none.
pub const DEFAULT_BRIDGE_TEMPLATE: &str = "virbr%d";

/// libvirt's yes/no attribute values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum YesNo {
    /// `yes`.
    Yes,
    /// `no`.
    No,
}

impl YesNo {
    /// Whether it is `yes`.
    pub fn is_yes(self) -> bool {
        self == YesNo::Yes
    }
}

/// libvirt's on/off attribute values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOff {
    /// `on`.
    On,
    /// `off`.
    Off,
}

/// `<forward mode=...>`: how the network reaches the outside. Modes rvirt does not implement
/// (`passthrough`, `private`, `vepa`, `hostdev`) are refused when parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    /// Masquerade (NAT) the network's IPv4 subnets behind the host.
    Nat,
    /// Route the subnets without NAT.
    Route,
    /// Like route, without any firewall rule.
    Open,
    /// Guests join an existing host bridge; rvirt builds nothing.
    Bridge,
}

impl ForwardMode {
    /// libvirt's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardMode::Nat => "nat",
            ForwardMode::Route => "route",
            ForwardMode::Open => "open",
            ForwardMode::Bridge => "bridge",
        }
    }
}

/// `<network>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkDef {
    /// Number of ports in use, shown in the live XML only.
    #[serde(rename = "@connections", default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    /// `ipv6='yes'`: IPv6 between guests even without an IPv6 address.
    #[serde(rename = "@ipv6", default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<YesNo>,
    /// `trustGuestRxFilters`, passed on to ports.
    #[serde(
        rename = "@trustGuestRxFilters",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub trust_guest_rx_filters: Option<YesNo>,
    /// The network's name.
    pub name: String,
    /// Its UUID (canonical form); [`NetworkDef::ensure_uuid`] fills it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// A short title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// A description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How traffic leaves the network; `None` is an isolated network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,
    /// The bridge device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<Bridge>,
    /// The bridge's MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<Mtu>,
    /// The bridge's MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// The DNS domain of the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<Domain>,
    /// The DNS server's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// The addresses of the bridge, with their DHCP settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip: Vec<Ip>,
}

/// `<forward>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forward {
    /// The host interface traffic leaves by (the first `<interface>`).
    #[serde(rename = "@dev", default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// The mode; `nat` when absent.
    #[serde(rename = "@mode", default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ForwardMode>,
    /// NAT address and port ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<Nat>,
    /// The host interfaces traffic may leave by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interface: Vec<ForwardInterface>,
}

impl Forward {
    /// The mode, `nat` when absent.
    pub fn mode(&self) -> ForwardMode {
        self.mode.unwrap_or(ForwardMode::Nat)
    }
}

/// `<forward><interface dev=.../>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardInterface {
    /// The host interface.
    #[serde(rename = "@dev")]
    pub dev: String,
    /// Ports using it (live XML only; ignored on input).
    #[serde(rename = "@connections", default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
}

/// `<forward><nat>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Nat {
    /// `ipv6='yes'`: masquerade IPv6 too.
    #[serde(rename = "@ipv6", default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<YesNo>,
    /// SNAT to this address range instead of masquerading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<NatAddress>,
    /// The source port range for TCP and UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<NatPort>,
}

/// `<nat><address start end/>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NatAddress {
    /// First address.
    #[serde(rename = "@start")]
    pub start: Ipv4Addr,
    /// Last address.
    #[serde(rename = "@end")]
    pub end: Ipv4Addr,
}

/// `<nat><port start end/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatPort {
    /// First port.
    #[serde(rename = "@start")]
    pub start: u16,
    /// Last port.
    #[serde(rename = "@end")]
    pub end: u16,
}

/// `<bridge>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bridge {
    /// The device name; `None` or a `%d` template lets the driver choose.
    #[serde(rename = "@name", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Spanning tree protocol; on by default.
    #[serde(rename = "@stp", default, skip_serializing_if = "Option::is_none")]
    pub stp: Option<OnOff>,
    /// Forward delay in seconds; 0 by default.
    #[serde(rename = "@delay", default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<u64>,
}

/// `<mtu size/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mtu {
    /// Bytes.
    #[serde(rename = "@size")]
    pub size: u32,
}

/// `<mac address/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mac {
    /// `52:54:00:12:34:56`, lower case.
    #[serde(rename = "@address")]
    pub address: String,
}

/// `<domain>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// The DNS domain.
    #[serde(rename = "@name")]
    pub name: String,
    /// Answer queries for the domain locally only, never forwarding them.
    #[serde(rename = "@localOnly", default, skip_serializing_if = "Option::is_none")]
    pub local_only: Option<YesNo>,
}

/// `<dns>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    /// `enable='no'` turns the DNS server off.
    #[serde(rename = "@enable", default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<YesNo>,
    /// `forwardPlainNames='no'` answers unqualified names locally only.
    #[serde(
        rename = "@forwardPlainNames",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub forward_plain_names: Option<YesNo>,
    /// Upstream servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwarder: Vec<DnsForwarder>,
    /// TXT records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub txt: Vec<DnsTxt>,
    /// SRV records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub srv: Vec<DnsSrv>,
    /// Host records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host: Vec<DnsHost>,
}

impl Dns {
    /// Whether the DNS server runs (it does unless `enable='no'`).
    pub fn enabled(dns: Option<&Dns>) -> bool {
        dns.and_then(|d| d.enable) != Some(YesNo::No)
    }
}

/// `<dns><forwarder>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsForwarder {
    /// Only queries for this domain.
    #[serde(rename = "@domain", default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The server; absent with a domain means "resolve that domain locally only".
    #[serde(rename = "@addr", default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<IpAddr>,
}

/// `<dns><txt>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsTxt {
    /// The record name.
    #[serde(rename = "@name")]
    pub name: String,
    /// Its value.
    #[serde(rename = "@value")]
    pub value: String,
}

/// `<dns><srv>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsSrv {
    /// The service.
    #[serde(rename = "@service")]
    pub service: String,
    /// `tcp` or `udp`.
    #[serde(rename = "@protocol")]
    pub protocol: String,
    /// The domain.
    #[serde(rename = "@domain", default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The target host.
    #[serde(rename = "@target", default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Port.
    #[serde(rename = "@port", default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Priority.
    #[serde(rename = "@priority", default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u16>,
    /// Weight.
    #[serde(rename = "@weight", default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
}

/// `<dns><host ip>` with its `<hostname>`s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsHost {
    /// The address.
    #[serde(rename = "@ip")]
    pub ip: IpAddr,
    /// Its names.
    #[serde(default)]
    pub hostname: Vec<String>,
}

/// `family='ipv4|ipv6'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

/// `<ip>`: one address of the bridge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ip {
    /// The family, when given.
    #[serde(rename = "@family", default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
    /// The bridge's address.
    #[serde(rename = "@address", default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// IPv4 netmask.
    #[serde(rename = "@netmask", default, skip_serializing_if = "Option::is_none")]
    pub netmask: Option<Ipv4Addr>,
    /// Prefix length.
    #[serde(rename = "@prefix", default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<u8>,
    /// Answer reverse lookups for the subnet locally.
    #[serde(rename = "@localPtr", default, skip_serializing_if = "Option::is_none")]
    pub local_ptr: Option<YesNo>,
    /// The TFTP server's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tftp: Option<Tftp>,
    /// The DHCP server's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<Dhcp>,
}

/// `<tftp root/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tftp {
    /// The directory served.
    #[serde(rename = "@root")]
    pub root: String,
}

/// `<dhcp>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dhcp {
    /// Address ranges handed out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub range: Vec<DhcpRange>,
    /// Static hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host: Vec<DhcpHost>,
    /// Network boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootp: Option<Bootp>,
}

/// `<range start end>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpRange {
    /// First address.
    #[serde(rename = "@start")]
    pub start: IpAddr,
    /// Last address.
    #[serde(rename = "@end")]
    pub end: IpAddr,
    /// Lease time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// `<host>` of `<dhcp>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpHost {
    /// MAC address (IPv4), as written.
    #[serde(rename = "@mac", default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// DUID (IPv6).
    #[serde(rename = "@id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Host name.
    #[serde(rename = "@name", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The fixed address.
    #[serde(rename = "@ip", default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// Lease time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// Lease time units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseUnit {
    /// Seconds.
    Seconds,
    /// Minutes (the default).
    Minutes,
    /// Hours.
    Hours,
}

/// `<lease expiry unit/>`; expiry 0 is an infinite lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Duration in `unit`s; 0 for infinite.
    #[serde(rename = "@expiry")]
    pub expiry: u64,
    /// The unit; minutes when absent.
    #[serde(rename = "@unit", default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<LeaseUnit>,
}

/// `<bootp file server/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootp {
    /// The boot file.
    #[serde(rename = "@file")]
    pub file: String,
    /// The TFTP server, when not this host.
    #[serde(rename = "@server", default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

impl Ip {
    /// The bridge address (validated present after [`NetworkDef::parse`]).
    pub fn addr(&self) -> IpAddr {
        self.address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// Whether this is an IPv6 address.
    pub fn is_ipv6(&self) -> bool {
        self.addr().is_ipv6()
    }

    /// The prefix length: `prefix`, else from `netmask`, else libvirt's default (the class of
    /// an IPv4 address, 64 for IPv6). `None` for a class D/E IPv4 address without one.
    pub fn prefix_len(&self) -> Option<u8> {
        if let Some(p) = self.prefix {
            return Some(p);
        }
        if let Some(mask) = self.netmask {
            return Some(u32::from(mask).count_ones() as u8);
        }
        match self.addr() {
            IpAddr::V6(_) => Some(64),
            IpAddr::V4(v4) => match v4.octets()[0] {
                0..=127 => Some(8),
                128..=191 => Some(16),
                192..=223 => Some(24),
                _ => None,
            },
        }
    }

    /// The subnet's network address (the bridge address with host bits cleared).
    pub fn network_addr(&self) -> IpAddr {
        let prefix = u32::from(self.prefix_len().unwrap_or(0));
        match self.addr() {
            IpAddr::V4(a) => {
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix.min(32))
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix.min(128))
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }

    /// `network/prefix`, e.g. `192.168.122.0/24`.
    pub fn subnet(&self) -> String {
        format!("{}/{}", self.network_addr(), self.prefix_len().unwrap_or(0))
    }

    /// The IPv4 netmask of the prefix.
    pub fn netmask_v4(&self) -> Ipv4Addr {
        let prefix = u32::from(self.prefix_len().unwrap_or(0)).min(32);
        Ipv4Addr::from(if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) })
    }

    /// Whether `addr` is inside this subnet.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let net = Ip {
            address: Some(addr),
            ..self.clone()
        };
        addr.is_ipv6() == self.is_ipv6() && net.network_addr() == self.network_addr()
    }

    /// The DHCP ranges (empty without `<dhcp>`).
    pub fn ranges(&self) -> &[DhcpRange] {
        self.dhcp.as_ref().map_or(&[], |d| &d.range)
    }

    /// The static DHCP hosts (empty without `<dhcp>`).
    pub fn hosts(&self) -> &[DhcpHost] {
        self.dhcp.as_ref().map_or(&[], |d| &d.host)
    }

    /// Whether this address serves DHCP (it has a range or a static host).
    pub fn has_dhcp(&self) -> bool {
        !self.ranges().is_empty() || !self.hosts().is_empty()
    }
}

/// The number of addresses in `start..=end` (saturating), 0 when `end < start` or the families
/// differ.
pub fn range_size(start: IpAddr, end: IpAddr) -> u64 {
    match (start, end) {
        (IpAddr::V4(s), IpAddr::V4(e)) => {
            let (s, e) = (u32::from(s), u32::from(e));
            if e < s { 0 } else { u64::from(e - s) + 1 }
        }
        (IpAddr::V6(s), IpAddr::V6(e)) => {
            let (s, e) = (u128::from(s), u128::from(e));
            if e < s {
                0
            } else {
                u64::try_from(e - s).map_or(u64::MAX, |d| d.saturating_add(1))
            }
        }
        _ => 0,
    }
}

/// Parses a MAC address (`52:54:00:AB:cd:0f`) into its canonical lower-case form.
pub fn canonical_mac(text: &str) -> Option<String> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut bytes = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        bytes[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(format_mac(bytes))
}

/// Formats six bytes as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(bytes: [u8; 6]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> XmlError {
    XmlError::invalid(path, message)
}

fn check_text(path: &str, value: &str) -> Result<(), XmlError> {
    // Values end up in dnsmasq's line-based configuration: no control characters.
    if value.chars().any(char::is_control) {
        return Err(invalid(
            path,
            format!("invalid value at {path}: control characters (such as new lines) are not allowed"),
        ));
    }
    Ok(())
}

fn check_ifname(path: &str, name: &str) -> Result<(), XmlError> {
    if name.is_empty()
        || name.len() > MAX_IFNAME_LEN
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | ':' | '"' | '\'' | '\\'))
    {
        return Err(invalid(
            path,
            format!(
                "invalid interface name '{name}': use at most {MAX_IFNAME_LEN} characters without spaces, '/', ':' or quotes"
            ),
        ));
    }
    Ok(())
}

impl NetworkDef {
    /// Parses network XML: strict, then defaults, then libvirt's rules.
    pub fn parse(text: &str) -> Result<NetworkDef, XmlError> {
        let mut def: NetworkDef = xml::from_str("network", text)?;
        def.connections = None;
        if let Some(forward) = def.forward.as_mut() {
            for iface in &mut forward.interface {
                iface.connections = None;
            }
        }
        def.fill_defaults()?;
        def.validate()?;
        Ok(def)
    }

    /// The forward mode, `None` for an isolated network.
    pub fn forward_mode(&self) -> Option<ForwardMode> {
        self.forward.as_ref().map(Forward::mode)
    }

    /// Whether rvirt builds a bridge for this network (isolated, nat, route, open), as opposed
    /// to joining an existing host bridge.
    pub fn builds_bridge(&self) -> bool {
        self.forward_mode() != Some(ForwardMode::Bridge)
    }

    /// The bridge device name, when set.
    pub fn bridge_name(&self) -> Option<&str> {
        self.bridge.as_ref().and_then(|b| b.name.as_deref())
    }

    /// The first forward device (`<forward dev>`), when set.
    pub fn forward_dev(&self) -> Option<&str> {
        self.forward.as_ref().and_then(|f| f.dev.as_deref())
    }

    /// Whether the driver must choose a bridge name (none given, or a `%d` template).
    pub fn needs_bridge_name(&self) -> bool {
        self.builds_bridge() && self.bridge_name().is_none_or(|n| n.contains("%d"))
    }

    /// The bridge name template: the given `%d` name, else `virbr%d`.
    pub fn bridge_template(&self) -> &str {
        match self.bridge_name() {
            Some(n) if n.contains("%d") => n,
            _ => DEFAULT_BRIDGE_TEMPLATE,
        }
    }

    /// Sets the bridge device name.
    pub fn set_bridge_name(&mut self, name: String) {
        self.bridge.get_or_insert_with(Bridge::default).name = Some(name);
    }

    /// The UUID (empty until [`NetworkDef::ensure_uuid`]).
    pub fn uuid(&self) -> &str {
        self.uuid.as_deref().unwrap_or("")
    }

    /// Gives the network a new random UUID if it has none.
    pub fn ensure_uuid(&mut self) {
        if self.uuid.is_none() {
            self.uuid = Some(xml::new_uuid());
        }
    }

    /// Gives a network that builds a bridge a MAC address `52:54:00:` + `random` when it has
    /// none (libvirt's virNetworkSetBridgeMacAddr).
    pub fn ensure_mac(&mut self, random: [u8; 3]) {
        if self.mac.is_none() && self.builds_bridge() {
            self.mac = Some(Mac {
                address: format_mac([0x52, 0x54, 0x00, random[0], random[1], random[2]]),
            });
        }
    }

    /// The IPv4 `<ip>` serving DHCP, if any.
    pub fn dhcp_ipv4(&self) -> Option<&Ip> {
        self.ip.iter().find(|ip| !ip.is_ipv6() && ip.has_dhcp())
    }

    /// The IPv6 `<ip>` serving DHCP, if any.
    pub fn dhcp_ipv6(&self) -> Option<&Ip> {
        self.ip.iter().find(|ip| ip.is_ipv6() && ip.has_dhcp())
    }

    /// Formats the definition as libvirt does.
    pub fn to_xml(&self) -> Result<String, XmlError> {
        xml::to_string("network", self)
    }

    /// The definition as persisted: without run-time attributes.
    pub fn inactive(&self) -> NetworkDef {
        let mut def = self.clone();
        def.connections = None;
        if let Some(forward) = def.forward.as_mut() {
            for iface in &mut forward.interface {
                iface.connections = None;
            }
        }
        def
    }

    fn fill_defaults(&mut self) -> Result<(), XmlError> {
        if let Some(uuid) = &self.uuid {
            let canonical = xml::canonical_uuid(uuid).ok_or_else(|| {
                invalid(
                    "/network/uuid",
                    format!("invalid UUID '{uuid}': use the 8-4-4-4-12 hex form"),
                )
            })?;
            self.uuid = Some(canonical);
        }
        if let Some(mac) = &self.mac {
            let canonical = canonical_mac(&mac.address).ok_or_else(|| {
                invalid(
                    "/network/mac/@address",
                    format!(
                        "invalid MAC address '{}': use the form 52:54:00:12:34:56",
                        mac.address
                    ),
                )
            })?;
            self.mac = Some(Mac { address: canonical });
        }
        if let Some(forward) = self.forward.as_mut() {
            forward.mode = Some(forward.mode());
            match (&forward.dev, forward.interface.first()) {
                (Some(dev), None) => forward.interface.push(ForwardInterface {
                    dev: dev.clone(),
                    connections: None,
                }),
                (None, Some(first)) => forward.dev = Some(first.dev.clone()),
                (Some(dev), Some(first)) if *dev != first.dev => {
                    return Err(invalid(
                        "/network/forward/@dev",
                        format!(
                            "forward dev '{dev}' must match the first <interface dev='{}'>: make them equal or drop dev",
                            first.dev
                        ),
                    ));
                }
                _ => {}
            }
        }
        if self.builds_bridge() {
            let bridge = self.bridge.get_or_insert_with(Bridge::default);
            bridge.stp.get_or_insert(OnOff::On);
            bridge.delay.get_or_insert(0);
        }
        for ip in &mut self.ip {
            if ip
                .dhcp
                .as_ref()
                .is_some_and(|d| d.range.is_empty() && d.host.is_empty())
            {
                // libvirt keeps <dhcp> (and its bootp) only with a range or a host.
                ip.dhcp = None;
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), XmlError> {
        if self.name.trim().is_empty() {
            return Err(invalid("/network/name", "missing network name: give <name>"));
        }
        if self.name.contains('/') {
            return Err(invalid(
                "/network/name",
                format!("invalid network name '{}': '/' is not allowed", self.name),
            ));
        }
        check_text("/network/name", &self.name)?;
        let mode = self.forward_mode();
        if let Some(forward) = &self.forward {
            for (i, iface) in forward.interface.iter().enumerate() {
                check_ifname(&format!("/network/forward/interface[{}]/@dev", i + 1), &iface.dev)?;
            }
            if let Some(nat) = &forward.nat {
                if forward.mode() != ForwardMode::Nat {
                    return Err(invalid(
                        "/network/forward/nat",
                        "<nat> is only allowed with forward mode='nat'",
                    ));
                }
                if let Some(addr) = &nat.address
                    && u32::from(addr.end) < u32::from(addr.start)
                {
                    return Err(invalid(
                        "/network/forward/nat/address",
                        "invalid NAT address range: start must not be above end",
                    ));
                }
                if let Some(port) = nat.port
                    && (port.start == 0 || port.end < port.start)
                {
                    return Err(invalid(
                        "/network/forward/nat/port",
                        "invalid NAT port range: use 1 <= start <= end <= 65535",
                    ));
                }
            }
        }
        if let Some(name) = self.bridge_name()
            && !name.contains("%d")
        {
            check_ifname("/network/bridge/@name", name)?;
        }
        if mode == Some(ForwardMode::Bridge) {
            let bridge = self.bridge.as_ref();
            if bridge.and_then(|b| b.name.as_ref()).is_none() {
                return Err(invalid(
                    "/network/bridge",
                    "forward mode='bridge' needs <bridge name='...'> naming an existing host bridge (macvtap is not supported)",
                ));
            }
            if bridge.is_some_and(|b| b.stp.is_some() || b.delay.is_some()) {
                return Err(invalid(
                    "/network/bridge",
                    "bridge stp/delay are only allowed in nat, route, open and isolated networks",
                ));
            }
            if self.forward.as_ref().is_some_and(|f| !f.interface.is_empty()) {
                return Err(invalid(
                    "/network/forward/@dev",
                    "a network with forward mode='bridge' can name a bridge or a forward dev, not both",
                ));
            }
            for (what, present) in [
                ("ip", !self.ip.is_empty()),
                ("dns", self.dns.is_some()),
                ("domain", self.domain.is_some()),
                ("mac", self.mac.is_some()),
                ("mtu", self.mtu.is_some()),
            ] {
                if present {
                    return Err(invalid(
                        format!("/network/{what}"),
                        format!(
                            "<{what}> is not allowed with forward mode='bridge': the host bridge is not managed by rvirt"
                        ),
                    ));
                }
            }
        }
        if let Some(mtu) = self.mtu
            && !(68..=65535).contains(&mtu.size)
        {
            return Err(invalid(
                "/network/mtu/@size",
                format!("invalid MTU {}: use 68 to 65535", mtu.size),
            ));
        }
        if let Some(mac) = &self.mac
            && u8::from_str_radix(&mac.address[..2], 16).is_ok_and(|b| b & 1 == 1)
        {
            return Err(invalid(
                "/network/mac/@address",
                format!(
                    "invalid bridge MAC address '{}': it must not be a multicast address",
                    mac.address
                ),
            ));
        }
        if let Some(domain) = &self.domain {
            check_text("/network/domain/@name", &domain.name)?;
        }
        if let Some(dns) = &self.dns {
            self.validate_dns(dns)?;
        }
        let mut dhcp4 = false;
        let mut dhcp6 = false;
        for (i, ip) in self.ip.iter().enumerate() {
            let path = format!("/network/ip[{}]", i + 1);
            self.validate_ip(&path, ip)?;
            if ip.has_dhcp() {
                let seen = if ip.is_ipv6() { &mut dhcp6 } else { &mut dhcp4 };
                if *seen {
                    return Err(invalid(
                        format!("{path}/dhcp"),
                        format!(
                            "DHCP is supported on one {} address per network only: move the <dhcp> settings to one <ip>",
                            if ip.is_ipv6() { "IPv6" } else { "IPv4" }
                        ),
                    ));
                }
                *seen = true;
            }
        }
        Ok(())
    }

    fn validate_dns(&self, dns: &Dns) -> Result<(), XmlError> {
        for (i, fwd) in dns.forwarder.iter().enumerate() {
            let path = format!("/network/dns/forwarder[{}]", i + 1);
            if fwd.addr.is_none() && fwd.domain.is_none() {
                return Err(invalid(path, "invalid DNS forwarder: give addr, domain or both"));
            }
            if let Some(domain) = &fwd.domain {
                check_text(&format!("{path}/@domain"), domain)?;
                if domain.contains('/') {
                    return Err(invalid(
                        format!("{path}/@domain"),
                        "invalid DNS forwarder domain: '/' is not allowed",
                    ));
                }
            }
        }
        for (i, txt) in dns.txt.iter().enumerate() {
            validate_dns_txt(&format!("/network/dns/txt[{}]", i + 1), txt)?;
        }
        for (i, srv) in dns.srv.iter().enumerate() {
            validate_dns_srv(&format!("/network/dns/srv[{}]", i + 1), srv)?;
        }
        for (i, host) in dns.host.iter().enumerate() {
            validate_dns_host(&format!("/network/dns/host[{}]", i + 1), host)?;
        }
        Ok(())
    }

    fn validate_ip(&self, path: &str, ip: &Ip) -> Result<(), XmlError> {
        let Some(address) = ip.address else {
            return Err(invalid(
                format!("{path}/@address"),
                "missing address in <ip>: give address='...'",
            ));
        };
        match (ip.family, address) {
            (Some(Family::Ipv4), IpAddr::V6(_)) | (Some(Family::Ipv6), IpAddr::V4(_)) => {
                return Err(invalid(
                    format!("{path}/@family"),
                    format!("the family of <ip> does not match its address {address}"),
                ));
            }
            _ => {}
        }
        if ip.netmask.is_some() && ip.prefix.is_some() {
            return Err(invalid(
                format!("{path}/@prefix"),
                "give netmask or prefix, not both",
            ));
        }
        if let Some(mask) = ip.netmask {
            if address.is_ipv6() {
                return Err(invalid(
                    format!("{path}/@netmask"),
                    "netmask is IPv4 only: use prefix for IPv6",
                ));
            }
            let bits = u32::from(mask);
            if bits.leading_ones() + bits.trailing_zeros() != 32 {
                return Err(invalid(
                    format!("{path}/@netmask"),
                    format!("invalid netmask {mask}: its bits must be contiguous"),
                ));
            }
        }
        let max = if address.is_ipv6() { 128 } else { 32 };
        match ip.prefix_len() {
            Some(p) if p <= max => {}
            _ => {
                return Err(invalid(
                    format!("{path}/@prefix"),
                    format!("invalid or missing prefix for {address}: give a prefix of at most {max}"),
                ));
            }
        }
        if let Some(tftp) = &ip.tftp {
            if address.is_ipv6() {
                return Err(invalid(
                    format!("{path}/tftp"),
                    "TFTP is supported on IPv4 addresses only",
                ));
            }
            check_text(&format!("{path}/tftp/@root"), &tftp.root)?;
        }
        let Some(dhcp) = &ip.dhcp else { return Ok(()) };
        if let Some(bootp) = &dhcp.bootp {
            if address.is_ipv6() {
                return Err(invalid(
                    format!("{path}/dhcp/bootp"),
                    "bootp is supported on IPv4 addresses only",
                ));
            }
            check_text(&format!("{path}/dhcp/bootp/@file"), &bootp.file)?;
            if let Some(server) = &bootp.server {
                check_text(&format!("{path}/dhcp/bootp/@server"), server)?;
                if server.contains(',') {
                    return Err(invalid(
                        format!("{path}/dhcp/bootp/@server"),
                        "invalid bootp server: commas are not allowed",
                    ));
                }
            }
        }
        for (i, range) in dhcp.range.iter().enumerate() {
            validate_dhcp_range(&format!("{path}/dhcp/range[{}]", i + 1), ip, range)?;
        }
        let mut macs = HashSet::new();
        for (i, host) in dhcp.host.iter().enumerate() {
            let hpath = format!("{path}/dhcp/host[{}]", i + 1);
            validate_dhcp_host(&hpath, ip, host, false)?;
            if let Some(mac) = &host.mac
                && !macs.insert(canonical_mac(mac))
            {
                return Err(invalid(
                    format!("{hpath}/@mac"),
                    format!("duplicate DHCP host MAC address {mac}"),
                ));
            }
        }
        Ok(())
    }
}

/// Checks one `<dhcp><range>` against its `<ip>`: both ends inside the subnet, start not above
/// end.
pub fn validate_dhcp_range(path: &str, ip: &Ip, range: &DhcpRange) -> Result<(), XmlError> {
    for (attr, a) in [("start", range.start), ("end", range.end)] {
        if !ip.contains(a) {
            return Err(invalid(
                format!("{path}/@{attr}"),
                format!("DHCP range {attr} {a} is not in the network {}", ip.subnet()),
            ));
        }
    }
    if range_size(range.start, range.end) == 0 {
        return Err(invalid(
            path,
            format!(
                "invalid DHCP range {} - {}: start must not be above end",
                range.start, range.end
            ),
        ));
    }
    Ok(())
}

fn check_txt_name(path: &str, name: &str) -> Result<(), XmlError> {
    if name.is_empty() || name.contains([' ', ',']) || name.chars().any(char::is_control) {
        return Err(invalid(
            format!("{path}/@name"),
            format!("invalid TXT record name '{name}': it must be non-empty, without spaces or commas"),
        ));
    }
    Ok(())
}

/// Checks one `<dns><txt>`: a name without spaces or commas, a value dnsmasq can take.
pub fn validate_dns_txt(path: &str, txt: &DnsTxt) -> Result<(), XmlError> {
    check_txt_name(path, &txt.name)?;
    check_text(&format!("{path}/@value"), &txt.value)
}

fn check_srv_service(path: &str, service: &str) -> Result<(), XmlError> {
    if service.is_empty() || service.len() > 15 || service.contains([' ', ',', '.']) {
        return Err(invalid(
            format!("{path}/@service"),
            format!(
                "invalid SRV service '{service}': use at most 15 characters without spaces, dots or commas"
            ),
        ));
    }
    check_text(&format!("{path}/@service"), service)
}

fn check_srv_protocol(path: &str, protocol: &str) -> Result<(), XmlError> {
    if protocol != "tcp" && protocol != "udp" {
        return Err(invalid(
            format!("{path}/@protocol"),
            format!("invalid SRV protocol '{protocol}': use tcp or udp"),
        ));
    }
    Ok(())
}

/// Checks one `<dns><srv>`: service, protocol `tcp`/`udp`, domain and target dnsmasq can take.
pub fn validate_dns_srv(path: &str, srv: &DnsSrv) -> Result<(), XmlError> {
    check_srv_service(path, &srv.service)?;
    check_srv_protocol(path, &srv.protocol)?;
    for (attr, value) in [("domain", &srv.domain), ("target", &srv.target)] {
        if let Some(v) = value {
            check_text(&format!("{path}/@{attr}"), v)?;
            if v.contains(',') {
                return Err(invalid(
                    format!("{path}/@{attr}"),
                    format!("invalid SRV {attr} '{v}': commas are not allowed"),
                ));
            }
        }
    }
    Ok(())
}

fn check_hostname(path: &str, name: &str) -> Result<(), XmlError> {
    check_text(path, name)?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(invalid(path, format!("invalid host name '{name}'")));
    }
    Ok(())
}

/// Checks one `<dns><host>`: at least one `<hostname>`, each a single word.
pub fn validate_dns_host(path: &str, host: &DnsHost) -> Result<(), XmlError> {
    if host.hostname.is_empty() {
        return Err(invalid(path, "a DNS <host> needs at least one <hostname>"));
    }
    for (j, name) in host.hostname.iter().enumerate() {
        check_hostname(&format!("{path}/hostname[{}]", j + 1), name)?;
    }
    Ok(())
}

/// Checks one `<dhcp><host>` against its `<ip>`; `partial` allows the incomplete hosts that
/// identify an entry to delete.
pub fn validate_dhcp_host(path: &str, ip: &Ip, host: &DhcpHost, partial: bool) -> Result<(), XmlError> {
    if let Some(mac) = &host.mac {
        if ip.is_ipv6() {
            return Err(invalid(
                format!("{path}/@mac"),
                "a DHCPv6 host is identified by id (DUID) or name, not mac",
            ));
        }
        let canonical = canonical_mac(mac).ok_or_else(|| {
            invalid(
                format!("{path}/@mac"),
                format!("invalid MAC address '{mac}': use the form 52:54:00:12:34:56"),
            )
        })?;
        if u8::from_str_radix(&canonical[..2], 16).is_ok_and(|b| b & 1 == 1) {
            return Err(invalid(
                format!("{path}/@mac"),
                format!("invalid DHCP host MAC address '{mac}': it is a multicast address"),
            ));
        }
    }
    if let Some(id) = &host.id {
        if !ip.is_ipv6() {
            return Err(invalid(
                format!("{path}/@id"),
                "a DHCP host id (DUID) is for IPv6 networks only",
            ));
        }
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(invalid(
                format!("{path}/@id"),
                format!("invalid DUID '{id}': use colon-separated hex"),
            ));
        }
    }
    if let Some(name) = &host.name {
        check_text(&format!("{path}/@name"), name)?;
        if name.is_empty() || name.contains([',', ' ']) {
            return Err(invalid(
                format!("{path}/@name"),
                format!("invalid DHCP host name '{name}'"),
            ));
        }
    }
    if partial {
        return Ok(());
    }
    if host.mac.is_none() && host.id.is_none() && host.name.is_none() {
        return Err(invalid(
            path,
            "a static DHCP host needs mac (IPv4), id (IPv6) or name",
        ));
    }
    let Some(addr) = host.ip else {
        return Err(invalid(
            format!("{path}/@ip"),
            "a static DHCP host needs ip='...'",
        ));
    };
    if !ip.contains(addr) {
        return Err(invalid(
            format!("{path}/@ip"),
            format!("DHCP host address {addr} is not in the network {}", ip.subnet()),
        ));
    }
    Ok(())
}

/// Parses one `<host>` element (for UpdateNetwork's DHCP host section).
pub fn parse_dhcp_host(text: &str) -> Result<DhcpHost, XmlError> {
    xml::from_str("host", text)
}

/// Parses one `<range>` element (UpdateNetwork's `ip-dhcp-range` section). Whether it fits
/// its `<ip>` is [`validate_dhcp_range`]'s job.
pub fn parse_dhcp_range(text: &str) -> Result<DhcpRange, XmlError> {
    xml::from_str("range", text)
}

/// Parses one `<interface dev>` element (UpdateNetwork's `forward-interface` section).
pub fn parse_forward_interface(text: &str) -> Result<ForwardInterface, XmlError> {
    let mut iface: ForwardInterface = xml::from_str("interface", text)?;
    iface.connections = None;
    check_ifname("/interface/@dev", &iface.dev)?;
    Ok(iface)
}

/// A `<dns><host>` given to UpdateNetwork: complete to add one; to name one to delete, the
/// address or a host name is enough.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct DnsHostSpec {
    /// The address.
    #[serde(rename = "@ip", default)]
    pub ip: Option<IpAddr>,
    /// Host names.
    #[serde(default)]
    pub hostname: Vec<String>,
}

impl DnsHostSpec {
    /// The complete record, when it is one.
    pub fn to_host(&self) -> Option<DnsHost> {
        Some(DnsHost {
            ip: self.ip?,
            hostname: self.hostname.clone(),
        })
        .filter(|h| !h.hostname.is_empty())
    }
}

/// Parses one `<host ip><hostname/></host>` for UpdateNetwork's `dns-host` section; `partial`
/// (deleting) lets it name a record by its address or one of its names only.
pub fn parse_dns_host(text: &str, partial: bool) -> Result<DnsHostSpec, XmlError> {
    let spec: DnsHostSpec = xml::from_str("host", text)?;
    for (j, name) in spec.hostname.iter().enumerate() {
        check_hostname(&format!("/host/hostname[{}]", j + 1), name)?;
    }
    if partial {
        if spec.ip.is_none() && spec.hostname.is_empty() {
            return Err(invalid(
                "/host",
                "give ip='...' or a <hostname> to name the DNS host record",
            ));
        }
    } else if spec.ip.is_none() {
        return Err(invalid("/host/@ip", "a DNS <host> needs ip='...'"));
    } else if spec.hostname.is_empty() {
        return Err(invalid("/host", "a DNS <host> needs at least one <hostname>"));
    }
    Ok(spec)
}

/// A `<dns><txt>` given to UpdateNetwork: complete to add one; the name alone names one to
/// delete.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DnsTxtSpec {
    /// The record name.
    #[serde(rename = "@name")]
    pub name: String,
    /// Its value.
    #[serde(rename = "@value", default)]
    pub value: Option<String>,
}

/// Parses one `<txt name value/>` for UpdateNetwork's `dns-txt` section; `partial` (deleting)
/// allows it without a value.
pub fn parse_dns_txt(text: &str, partial: bool) -> Result<DnsTxtSpec, XmlError> {
    let spec: DnsTxtSpec = xml::from_str("txt", text)?;
    check_txt_name("/txt", &spec.name)?;
    match &spec.value {
        Some(value) => check_text("/txt/@value", value)?,
        None if !partial => {
            return Err(invalid("/txt/@value", "a DNS <txt> record needs value='...'"));
        }
        None => {}
    }
    Ok(spec)
}

/// A `<dns><srv>` given to UpdateNetwork: complete to add one; to name one to delete, any of
/// service, protocol, domain and target may be left out (they then match anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct DnsSrvSpec {
    /// The service.
    #[serde(rename = "@service", default)]
    pub service: Option<String>,
    /// `tcp` or `udp`.
    #[serde(rename = "@protocol", default)]
    pub protocol: Option<String>,
    /// The domain.
    #[serde(rename = "@domain", default)]
    pub domain: Option<String>,
    /// The target host.
    #[serde(rename = "@target", default)]
    pub target: Option<String>,
    /// Port.
    #[serde(rename = "@port", default)]
    pub port: Option<u16>,
    /// Priority.
    #[serde(rename = "@priority", default)]
    pub priority: Option<u16>,
    /// Weight.
    #[serde(rename = "@weight", default)]
    pub weight: Option<u16>,
}

impl DnsSrvSpec {
    /// Whether `srv` has every field this spec gives among service, protocol, domain and
    /// target (libvirt's matching rule).
    pub fn matches(&self, srv: &DnsSrv) -> bool {
        self.service.as_ref().is_none_or(|s| *s == srv.service)
            && self.protocol.as_ref().is_none_or(|p| *p == srv.protocol)
            && self
                .domain
                .as_ref()
                .is_none_or(|d| srv.domain.as_ref() == Some(d))
            && self
                .target
                .as_ref()
                .is_none_or(|t| srv.target.as_ref() == Some(t))
    }

    /// The complete record, when it is one.
    pub fn to_srv(&self) -> Option<DnsSrv> {
        Some(DnsSrv {
            service: self.service.clone()?,
            protocol: self.protocol.clone()?,
            domain: self.domain.clone(),
            target: self.target.clone(),
            port: self.port,
            priority: self.priority,
            weight: self.weight,
        })
    }
}

/// Parses one `<srv>` for UpdateNetwork's `dns-srv` section; `partial` (deleting) allows it
/// without service or protocol.
pub fn parse_dns_srv(text: &str, partial: bool) -> Result<DnsSrvSpec, XmlError> {
    let spec: DnsSrvSpec = xml::from_str("srv", text)?;
    match spec.to_srv() {
        Some(srv) => validate_dns_srv("/srv", &srv)?,
        None if !partial => {
            let missing = if spec.service.is_none() {
                "service"
            } else {
                "protocol"
            };
            return Err(invalid(
                format!("/srv/@{missing}"),
                format!("a DNS <srv> record needs {missing}='...'"),
            ));
        }
        None => {
            if let Some(service) = &spec.service {
                check_srv_service("/srv", service)?;
            }
            if let Some(protocol) = &spec.protocol {
                check_srv_protocol("/srv", protocol)?;
            }
        }
    }
    Ok(spec)
}

/// The lowest free name for `template` (`virbr%d`): `%d` replaced by 0, 1, 2, ..., skipping
/// names in `used`. `None` when the template has no `%d` or every number up to 255 is taken.
pub fn allocate_bridge_name(template: &str, used: &HashSet<String>) -> Option<String> {
    if !template.contains("%d") {
        return None;
    }
    (0..256)
        .map(|n| template.replacen("%d", &n.to_string(), 1))
        .find(|name| !used.contains(name) && name.len() <= MAX_IFNAME_LEN)
}

/// `<networkport>`: one guest NIC's port on a network (schema `networkport.rng`).
///
/// Supported: uuid, owner (name, uuid), mac, rxfilters, and the `<plug>` the driver fills in
/// (`type='network'` or `type='bridge'` with the bridge to attach a tap to). Port groups,
/// bandwidth, VLANs, virtual ports and `direct`/`hostdev-pci` plugs are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename = "networkport")]
pub struct NetworkPortDef {
    /// The port's UUID; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The domain that owns the port.
    pub owner: PortOwner,
    /// The guest NIC's MAC address.
    pub mac: Mac,
    /// Whether to trust the guest's receive filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rxfilters: Option<RxFilters>,
    /// Where to plug the NIC; filled in by the driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plug: Option<Plug>,
}

/// `<owner>` of a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortOwner {
    /// The domain's name.
    pub name: String,
    /// The domain's UUID.
    pub uuid: String,
}

/// `<rxfilters trustGuest/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RxFilters {
    /// Trust the guest.
    #[serde(rename = "@trustGuest")]
    pub trust_guest: YesNo,
}

/// How a port is plugged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlugType {
    /// A tap on the network's own bridge.
    Network,
    /// A tap on a host bridge (forward mode='bridge').
    Bridge,
}

impl PlugType {
    /// libvirt's name.
    pub fn as_str(self) -> &'static str {
        match self {
            PlugType::Network => "network",
            PlugType::Bridge => "bridge",
        }
    }
}

/// `<plug type bridge/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plug {
    /// The kind of plug.
    #[serde(rename = "@type")]
    pub plug_type: PlugType,
    /// The bridge to attach the tap device to.
    #[serde(rename = "@bridge")]
    pub bridge: String,
    /// `kernel` or `libvirt`.
    #[serde(rename = "@macTableManager", default, skip_serializing_if = "Option::is_none")]
    pub mac_table_manager: Option<String>,
}

impl NetworkPortDef {
    /// Parses port XML strictly and checks it (a UUID is generated when absent).
    pub fn parse(text: &str) -> Result<NetworkPortDef, XmlError> {
        let mut port: NetworkPortDef = xml::from_str("networkport", text)?;
        match &port.uuid {
            Some(uuid) => {
                let canonical = xml::canonical_uuid(uuid).ok_or_else(|| {
                    invalid(
                        "/networkport/uuid",
                        format!("invalid UUID '{uuid}': use the 8-4-4-4-12 hex form"),
                    )
                })?;
                port.uuid = Some(canonical);
            }
            None => port.uuid = Some(xml::new_uuid()),
        }
        if port.owner.name.trim().is_empty() {
            return Err(invalid(
                "/networkport/owner/name",
                "missing owner name: give <owner><name>",
            ));
        }
        check_text("/networkport/owner/name", &port.owner.name)?;
        port.owner.uuid = xml::canonical_uuid(&port.owner.uuid).ok_or_else(|| {
            invalid(
                "/networkport/owner/uuid",
                format!(
                    "invalid owner UUID '{}': use the 8-4-4-4-12 hex form",
                    port.owner.uuid
                ),
            )
        })?;
        port.mac.address = canonical_mac(&port.mac.address).ok_or_else(|| {
            invalid(
                "/networkport/mac/@address",
                format!(
                    "invalid MAC address '{}': use the form 52:54:00:12:34:56",
                    port.mac.address
                ),
            )
        })?;
        if let Some(plug) = &port.plug {
            check_ifname("/networkport/plug/@bridge", &plug.bridge)?;
            if let Some(m) = &plug.mac_table_manager
                && m != "kernel"
                && m != "libvirt"
            {
                return Err(invalid(
                    "/networkport/plug/@macTableManager",
                    format!("invalid macTableManager '{m}': use kernel or libvirt"),
                ));
            }
        }
        Ok(port)
    }

    /// The UUID (set after [`NetworkPortDef::parse`]).
    pub fn uuid(&self) -> &str {
        self.uuid.as_deref().unwrap_or("")
    }

    /// Formats the port as libvirt does.
    pub fn to_xml(&self) -> Result<String, XmlError> {
        xml::to_string("networkport", self)
    }
}
