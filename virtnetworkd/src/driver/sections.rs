//! UpdateNetwork's sections: parsing the element a caller gives and applying one command (add
//! first/last, modify, delete) to a definition, with libvirt's rules (`virNetworkDefUpdate*`
//! in libvirt's network_conf.c): which element each section takes, how an existing entry is
//! matched, which commands a section allows, and the errors for duplicates and misses. Pure:
//! what the change does to the host is the driver's business.
//!
//! Supported: `ip-dhcp-host`, `ip-dhcp-range`, `forward-interface`, `dns-host`, `dns-txt`,
//! `dns-srv`. `bridge`, `domain`, `ip`, `forward` and `forward-pf` are refused as libvirt does,
//! and `portgroup` because rvirt has no port groups.

use rvirt_conf::network::{
    DhcpHost, DhcpRange, DnsHostSpec, DnsSrvSpec, DnsTxtSpec, ForwardInterface, NetworkDef, canonical_mac,
    parse_dhcp_host, parse_dhcp_range, parse_dns_host, parse_dns_srv, parse_dns_txt, parse_forward_interface,
    validate_dhcp_host, validate_dhcp_range, validate_dns_host, validate_dns_srv, validate_dns_txt,
};
use rvirt_proto::v1::ErrorCode;

use super::{NetError, update};

/// libvirt's name of a section number.
pub fn section_name(section: i32) -> &'static str {
    match section {
        1 => "bridge",
        2 => "domain",
        3 => "ip",
        4 => "ip-dhcp-host",
        5 => "ip-dhcp-range",
        6 => "forward",
        7 => "forward-interface",
        8 => "forward-pf",
        9 => "portgroup",
        10 => "dns-host",
        11 => "dns-txt",
        12 => "dns-srv",
        _ => "unknown",
    }
}

/// What a live change needs from dnsmasq and the firewall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// dnsmasq's configuration or hosts files.
    Dnsmasq,
    /// The firewall rules (the forward interfaces restrict where traffic leaves).
    Firewall,
}

/// One parsed UpdateNetwork element.
#[derive(Debug, Clone, PartialEq)]
pub enum Element {
    /// `<host>` of `<ip><dhcp>`.
    DhcpHost(DhcpHost),
    /// `<range>` of `<ip><dhcp>`.
    DhcpRange(DhcpRange),
    /// `<interface>` of `<forward>`.
    ForwardInterface(ForwardInterface),
    /// `<host>` of `<dns>`.
    DnsHost(DnsHostSpec),
    /// `<txt>` of `<dns>`.
    DnsTxt(DnsTxtSpec),
    /// `<srv>` of `<dns>`.
    DnsSrv(DnsSrvSpec),
}

impl Element {
    /// What applying it to a running network touches.
    pub fn effect(&self) -> Effect {
        match self {
            Element::ForwardInterface(_) => Effect::Firewall,
            _ => Effect::Dnsmasq,
        }
    }
}

fn unsupported(message: String) -> NetError {
    NetError::new(ErrorCode::OperationUnsupported, message)
}

fn no_modify(what: &str) -> NetError {
    unsupported(format!(
        "{what} cannot be modified, only added or deleted: delete the old one and add the new one"
    ))
}

/// Checks the section and command and parses `xml` as the section's element.
pub fn parse(command: i32, section: i32, xml: &str) -> Result<Element, NetError> {
    let name = section_name(section);
    match section {
        update::SECTION_IP_DHCP_HOST
        | update::SECTION_IP_DHCP_RANGE
        | update::SECTION_FORWARD_INTERFACE
        | update::SECTION_DNS_HOST
        | update::SECTION_DNS_TXT
        | update::SECTION_DNS_SRV => {}
        update::SECTION_PORTGROUP => {
            return Err(unsupported(
                "Cannot update the 'portgroup' section of a network: rvirt does not support port groups"
                    .to_owned(),
            ));
        }
        1..=3 | 6 | 8 => {
            return Err(unsupported(format!(
                "Cannot update the '{name}' section of a network: redefine the network instead \
                 (updatable: ip-dhcp-host, ip-dhcp-range, forward-interface, dns-host, dns-txt, dns-srv)"
            )));
        }
        _ => {
            return Err(unsupported(format!(
                "Cannot update unrecognized section {section} of a network"
            )));
        }
    }
    if !(update::MODIFY..=update::ADD_FIRST).contains(&command) {
        return Err(unsupported(format!(
            "Unrecognized network update command {command}: use modify, delete, add-last or add-first"
        )));
    }
    let delete = command == update::DELETE;
    let modify = command == update::MODIFY;
    let element = match section {
        update::SECTION_IP_DHCP_HOST => Element::DhcpHost(parse_dhcp_host(xml).map_err(NetError::xml)?),
        update::SECTION_IP_DHCP_RANGE => {
            if modify {
                return Err(no_modify("DHCP ranges"));
            }
            Element::DhcpRange(parse_dhcp_range(xml).map_err(NetError::xml)?)
        }
        update::SECTION_FORWARD_INTERFACE => {
            if modify {
                return Err(no_modify("Forward interfaces"));
            }
            Element::ForwardInterface(parse_forward_interface(xml).map_err(NetError::xml)?)
        }
        update::SECTION_DNS_HOST => {
            if modify {
                return Err(no_modify("DNS host records"));
            }
            Element::DnsHost(parse_dns_host(xml, delete).map_err(NetError::xml)?)
        }
        update::SECTION_DNS_TXT => {
            if modify {
                return Err(no_modify("DNS TXT records"));
            }
            Element::DnsTxt(parse_dns_txt(xml, delete).map_err(NetError::xml)?)
        }
        _ => {
            if modify {
                return Err(no_modify("DNS SRV records"));
            }
            Element::DnsSrv(parse_dns_srv(xml, delete).map_err(NetError::xml)?)
        }
    };
    Ok(element)
}

/// Applies one command with `element` to `def`, then re-checks the whole definition as if it
/// were parsed anew (so every rule of the XML holds afterwards).
pub fn apply(
    def: &mut NetworkDef,
    command: i32,
    parent_index: i32,
    element: &Element,
) -> Result<(), NetError> {
    match element {
        Element::DhcpHost(host) => apply_dhcp_host(def, command, parent_index, host)?,
        Element::DhcpRange(range) => apply_dhcp_range(def, command, parent_index, range)?,
        Element::ForwardInterface(iface) => apply_forward_interface(def, command, iface)?,
        Element::DnsHost(spec) => apply_dns_host(def, command, spec)?,
        Element::DnsTxt(spec) => apply_dns_txt(def, command, spec)?,
        Element::DnsSrv(spec) => apply_dns_srv(def, command, spec)?,
    }
    for ip in &mut def.ip {
        if ip
            .dhcp
            .as_ref()
            .is_some_and(|d| d.range.is_empty() && d.host.is_empty())
        {
            ip.dhcp = None;
        }
    }
    if def.dns.as_ref().is_some_and(|d| {
        d.enable.is_none()
            && d.forward_plain_names.is_none()
            && d.forwarder.is_empty()
            && d.txt.is_empty()
            && d.srv.is_empty()
            && d.host.is_empty()
    }) {
        def.dns = None;
    }
    let xml = def.to_xml().map_err(NetError::xml)?;
    let mut checked = NetworkDef::parse(&xml).map_err(NetError::xml)?;
    checked.connections = def.connections;
    *def = checked;
    Ok(())
}

fn is_add(command: i32) -> bool {
    command == update::ADD_FIRST || command == update::ADD_LAST
}

fn insert<T>(list: &mut Vec<T>, command: i32, item: T) {
    if command == update::ADD_FIRST {
        list.insert(0, item);
    } else {
        list.push(item);
    }
}

/// The `<ip>` a DHCP change applies to (libvirt's rule): the one at `parent_index`, else the
/// one with DHCP, else the first IPv4, else the first IPv6 one.
fn dhcp_ip_index(def: &NetworkDef, parent_index: i32) -> Result<usize, NetError> {
    if parent_index >= 0 {
        let i = usize::try_from(parent_index).unwrap_or(usize::MAX);
        if i >= def.ip.len() {
            return Err(NetError::invalid(format!(
                "Network '{}' has no <ip> element at index {parent_index}",
                def.name
            )));
        }
        return Ok(i);
    }
    def.ip
        .iter()
        .position(|ip| ip.has_dhcp())
        .or_else(|| def.ip.iter().position(|ip| !ip.is_ipv6()))
        .or_else(|| def.ip.iter().position(|ip| ip.is_ipv6()))
        .ok_or_else(|| {
            NetError::invalid(format!(
                "Network '{}' has no <ip> element to hold DHCP settings",
                def.name
            ))
        })
}

/// Refuses to add DHCP to a second `<ip>` of the same family.
fn check_single_dhcp(def: &NetworkDef, index: usize) -> Result<(), NetError> {
    let v6 = def.ip[index].is_ipv6();
    if def
        .ip
        .iter()
        .enumerate()
        .any(|(i, other)| i != index && other.is_ipv6() == v6 && other.has_dhcp())
    {
        return Err(NetError::invalid(format!(
            "DHCP is supported on one {} address per network only",
            if v6 { "IPv6" } else { "IPv4" }
        )));
    }
    Ok(())
}

fn same_mac(a: &str, b: &str) -> bool {
    canonical_mac(a).is_some() && canonical_mac(a) == canonical_mac(b)
}

fn host_matches_any(a: &DhcpHost, b: &DhcpHost) -> bool {
    a.mac
        .as_deref()
        .zip(b.mac.as_deref())
        .is_some_and(|(x, y)| same_mac(x, y))
        || a.ip.is_some() && a.ip == b.ip
        || a.name.is_some() && a.name == b.name
}

fn host_matches_all(spec: &DhcpHost, existing: &DhcpHost) -> bool {
    spec.mac
        .as_deref()
        .is_none_or(|m| existing.mac.as_deref().is_none_or(|e| same_mac(m, e)))
        && spec
            .name
            .as_ref()
            .is_none_or(|n| existing.name.as_ref() == Some(n))
        && spec.ip.is_none_or(|ip| existing.ip == Some(ip))
}

fn apply_dhcp_host(
    def: &mut NetworkDef,
    command: i32,
    parent_index: i32,
    host: &DhcpHost,
) -> Result<(), NetError> {
    let index = dhcp_ip_index(def, parent_index)?;
    let path = format!("/network/ip[{}]/dhcp/host", index + 1);
    let ip = &def.ip[index];
    validate_dhcp_host(&path, ip, host, command == update::DELETE).map_err(NetError::xml)?;
    if command != update::DELETE && host.ip.is_some_and(|a| a.is_ipv6() != ip.is_ipv6()) {
        return Err(NetError::invalid(
            "The address family of a host entry must match that of the <ip> element it is added to",
        ));
    }
    if is_add(command) {
        check_single_dhcp(def, index)?;
    }
    let name = def.name.clone();
    let hosts = &mut def.ip[index].dhcp.get_or_insert_with(Default::default).host;
    match command {
        update::MODIFY => {
            let Some(i) = hosts.iter().position(|h| host_matches_any(host, h)) else {
                return Err(NetError::invalid(format!(
                    "Cannot find a DHCP host entry matching mac, name or ip of {:?} in network '{name}'",
                    host.mac
                        .as_deref()
                        .or(host.name.as_deref())
                        .unwrap_or("the entry"),
                )));
            };
            hosts[i] = host.clone();
        }
        update::DELETE => {
            let Some(i) = hosts.iter().position(|h| host_matches_all(host, h)) else {
                return Err(NetError::invalid(format!(
                    "Cannot find a matching DHCP host entry in network '{name}'"
                )));
            };
            hosts.remove(i);
        }
        _ => {
            if hosts.iter().any(|h| host_matches_any(host, h)) {
                return Err(NetError::invalid(format!(
                    "Network '{name}' already has a DHCP host entry with the same mac, name or ip"
                )));
            }
            insert(hosts, command, host.clone());
        }
    }
    Ok(())
}

fn apply_dhcp_range(
    def: &mut NetworkDef,
    command: i32,
    parent_index: i32,
    range: &DhcpRange,
) -> Result<(), NetError> {
    let index = dhcp_ip_index(def, parent_index)?;
    let ip = &def.ip[index];
    if range.start.is_ipv6() != ip.is_ipv6() || range.end.is_ipv6() != ip.is_ipv6() {
        return Err(NetError::invalid(
            "The address family of a DHCP range must match that of the <ip> element it is in",
        ));
    }
    validate_dhcp_range(&format!("/network/ip[{}]/dhcp/range", index + 1), ip, range)
        .map_err(NetError::xml)?;
    if is_add(command) {
        check_single_dhcp(def, index)?;
    }
    let name = def.name.clone();
    let ranges = &mut def.ip[index].dhcp.get_or_insert_with(Default::default).range;
    let found = ranges
        .iter()
        .position(|r| r.start == range.start && r.end == range.end);
    match (command, found) {
        (update::DELETE, Some(i)) => {
            ranges.remove(i);
        }
        (update::DELETE, None) => {
            return Err(NetError::invalid(format!(
                "Cannot find DHCP range {} - {} in network '{name}'",
                range.start, range.end
            )));
        }
        (_, Some(_)) => {
            return Err(NetError::invalid(format!(
                "Network '{name}' already has DHCP range {} - {}",
                range.start, range.end
            )));
        }
        (_, None) => insert(ranges, command, range.clone()),
    }
    Ok(())
}

fn apply_forward_interface(
    def: &mut NetworkDef,
    command: i32,
    iface: &ForwardInterface,
) -> Result<(), NetError> {
    let name = def.name.clone();
    let Some(forward) = def.forward.as_mut() else {
        return Err(NetError::invalid(format!(
            "Network '{name}' is isolated (no <forward>): it has no forward interfaces to change"
        )));
    };
    let found = forward.interface.iter().position(|i| i.dev == iface.dev);
    match (command, found) {
        (update::DELETE, Some(i)) => {
            forward.interface.remove(i);
        }
        (update::DELETE, None) => {
            return Err(NetError::invalid(format!(
                "Cannot find forward interface '{}' in network '{name}'",
                iface.dev
            )));
        }
        (_, Some(_)) => {
            return Err(NetError::invalid(format!(
                "Network '{name}' already has forward interface '{}'",
                iface.dev
            )));
        }
        (_, None) => insert(&mut forward.interface, command, iface.clone()),
    }
    // `dev` mirrors the first interface.
    forward.dev = forward.interface.first().map(|i| i.dev.clone());
    Ok(())
}

fn apply_dns_host(def: &mut NetworkDef, command: i32, spec: &DnsHostSpec) -> Result<(), NetError> {
    let name = def.name.clone();
    let dns = def.dns.get_or_insert_with(Default::default);
    if is_add(command) {
        let Some(host) = spec.to_host() else {
            return Err(NetError::invalid(
                "A DNS host record to add needs ip and a hostname",
            ));
        };
        validate_dns_host("/network/dns/host", &host).map_err(NetError::xml)?;
        // As libvirt: several records may share a name, not an address.
        if dns.host.iter().any(|h| h.ip == host.ip) {
            return Err(NetError::invalid(format!(
                "Network '{name}' already has a DNS host record for {}",
                host.ip
            )));
        }
        insert(&mut dns.host, command, host);
        return Ok(());
    }
    let matching: Vec<usize> = dns
        .host
        .iter()
        .enumerate()
        .filter(|(_, h)| spec.ip == Some(h.ip) || spec.hostname.iter().any(|n| h.hostname.contains(n)))
        .map(|(i, _)| i)
        .collect();
    match matching.as_slice() {
        [i] => {
            dns.host.remove(*i);
            Ok(())
        }
        [] => Err(NetError::invalid(format!(
            "Cannot find a matching DNS host record in network '{name}'"
        ))),
        _ => Err(NetError::invalid(format!(
            "Several DNS host records of network '{name}' match: give the address"
        ))),
    }
}

fn apply_dns_txt(def: &mut NetworkDef, command: i32, spec: &DnsTxtSpec) -> Result<(), NetError> {
    let name = def.name.clone();
    let dns = def.dns.get_or_insert_with(Default::default);
    let found = dns.txt.iter().position(|t| t.name == spec.name);
    match (command, found) {
        (update::DELETE, Some(i)) => {
            dns.txt.remove(i);
        }
        (update::DELETE, None) => {
            return Err(NetError::invalid(format!(
                "Cannot find DNS TXT record '{}' in network '{name}'",
                spec.name
            )));
        }
        (_, Some(_)) => {
            return Err(NetError::invalid(format!(
                "Network '{name}' already has a DNS TXT record named '{}'",
                spec.name
            )));
        }
        (_, None) => {
            let Some(value) = spec.value.clone() else {
                return Err(NetError::invalid("A DNS TXT record to add needs a value"));
            };
            let txt = rvirt_conf::network::DnsTxt {
                name: spec.name.clone(),
                value,
            };
            validate_dns_txt("/network/dns/txt", &txt).map_err(NetError::xml)?;
            insert(&mut dns.txt, command, txt);
        }
    }
    Ok(())
}

fn apply_dns_srv(def: &mut NetworkDef, command: i32, spec: &DnsSrvSpec) -> Result<(), NetError> {
    let name = def.name.clone();
    let dns = def.dns.get_or_insert_with(Default::default);
    let matching: Vec<usize> = dns
        .srv
        .iter()
        .enumerate()
        .filter(|(_, s)| spec.matches(s))
        .map(|(i, _)| i)
        .collect();
    if is_add(command) {
        let Some(srv) = spec.to_srv() else {
            return Err(NetError::invalid(
                "A DNS SRV record to add needs service and protocol",
            ));
        };
        validate_dns_srv("/network/dns/srv", &srv).map_err(NetError::xml)?;
        if !matching.is_empty() {
            return Err(NetError::invalid(format!(
                "Network '{name}' already has a DNS SRV record with the same service, protocol, domain and target"
            )));
        }
        insert(&mut dns.srv, command, srv);
        return Ok(());
    }
    match matching.as_slice() {
        [i] => {
            dns.srv.remove(*i);
            Ok(())
        }
        [] => Err(NetError::invalid(format!(
            "Cannot find a matching DNS SRV record in network '{name}'"
        ))),
        _ => Err(NetError::invalid(format!(
            "Several DNS SRV records of network '{name}' match: give more of service, protocol, domain and target"
        ))),
    }
}
