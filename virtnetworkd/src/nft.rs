//! nftables rules for a network, generated from its definition: pure, no I/O.
//!
//! Each network gets rvirt's own tables, `table ip rvirt_<name>` and (with IPv6)
//! `table ip6 rvirt_<name>`, never touching any other table. The rules are libvirt's
//! (`network_nftables.c`), folded into three base chains per table:
//!
//! - `input`: DHCP, DNS (and TFTP) from the bridge are accepted;
//! - `forward`: traffic between guests on the bridge is accepted; for `nat`, replies
//!   (established/related) to the subnet and everything from the subnet are accepted; for
//!   `route`, everything to and from the subnet; anything else entering or leaving the bridge is
//!   rejected (so an isolated network reaches nothing but the host);
//! - `postrouting` (nat only): the subnet is masqueraded, TCP and UDP onto ports 1024-65535 (or
//!   `<nat><port>`), except traffic to local multicast (224.0.0.0/24, ff02::/16) and
//!   broadcast, or SNAT to `<nat><address>`.
//!
//! `open` and `bridge` networks get no rules at all, as in libvirt. [`apply_script`] replaces
//! the tables atomically (one `nft -f` transaction); [`delete_script`] removes exactly them.

use std::fmt::Write as _;

use rvirt_conf::network::{ForwardMode, Ip, NatPort, NetworkDef};

/// An nftables address family rvirt uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TableFamily {
    /// `ip`.
    Ip,
    /// `ip6`.
    Ip6,
}

impl TableFamily {
    /// nft's name of the family.
    pub fn as_str(self) -> &'static str {
        match self {
            TableFamily::Ip => "ip",
            TableFamily::Ip6 => "ip6",
        }
    }

    /// Parses `ip` / `ip6`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ip" => Some(TableFamily::Ip),
            "ip6" => Some(TableFamily::Ip6),
            _ => None,
        }
    }
}

/// One table rvirt owns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableRef {
    /// Its family.
    pub family: TableFamily,
    /// Its name, `rvirt_<network>`.
    pub name: String,
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.family.as_str(), self.name)
    }
}

/// The default source port range of masqueraded TCP and UDP (libvirt's).
pub const DEFAULT_NAT_PORTS: NatPort = NatPort {
    start: 1024,
    end: 65535,
};

/// The name of the network's tables: `rvirt_` and the name, where every character other than
/// ASCII letters, digits and `_` becomes `_` (and then the UUID's first 8 digits are added, so
/// two names cannot collide).
pub fn table_name(def: &NetworkDef) -> String {
    let clean: String = def
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == def.name {
        format!("rvirt_{clean}")
    } else {
        let tag: String = def
            .uuid()
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(8)
            .collect();
        format!("rvirt_{clean}_{tag}")
    }
}

/// The tables a network's firewall uses (none for `open` and `bridge`).
pub fn tables(def: &NetworkDef) -> Vec<TableRef> {
    if matches!(def.forward_mode(), Some(ForwardMode::Open | ForwardMode::Bridge)) {
        return Vec::new();
    }
    let name = table_name(def);
    let mut out = vec![TableRef {
        family: TableFamily::Ip,
        name: name.clone(),
    }];
    if def.ip.iter().any(Ip::is_ipv6) || def.ipv6.is_some_and(|v| v.is_yes()) {
        out.push(TableRef {
            family: TableFamily::Ip6,
            name,
        });
    }
    out
}

struct Chains {
    input: Vec<String>,
    forward_in: Vec<String>,
    forward_out: Vec<String>,
    postrouting: Vec<String>,
}

fn quote(name: &str) -> String {
    // Interface names are validated (no quotes, no spaces): quoting makes any of them a string.
    format!("\"{name}\"")
}

fn add_masquerade(c: &mut Chains, def: &NetworkDef, ip: &Ip, layer: &str, physdev: Option<&str>) {
    let net = ip.subnet();
    let oif = physdev
        .map(|d| format!(" oifname {}", quote(d)))
        .unwrap_or_default();
    let nat = def.forward.as_ref().and_then(|f| f.nat.as_ref());
    let ports = nat.and_then(|n| n.port).unwrap_or(DEFAULT_NAT_PORTS);
    let snat = if ip.is_ipv6() {
        None
    } else {
        nat.and_then(|n| n.address.as_ref())
    };
    let multicast = if ip.is_ipv6() { "ff02::/16" } else { "224.0.0.0/24" };
    c.postrouting.push(format!(
        "{layer} saddr {net} {layer} daddr {multicast}{oif} counter return"
    ));
    if !ip.is_ipv6() {
        c.postrouting.push(format!(
            "{layer} saddr {net} {layer} daddr 255.255.255.255{oif} counter return"
        ));
    }
    for proto in ["tcp", "udp"] {
        let to = match snat {
            Some(a) if a.start == a.end => format!("snat to {}:{}-{}", a.start, ports.start, ports.end),
            Some(a) => format!("snat to {}-{}:{}-{}", a.start, a.end, ports.start, ports.end),
            None => format!("masquerade to :{}-{}", ports.start, ports.end),
        };
        c.postrouting.push(format!(
            "meta l4proto {proto} {layer} saddr {net} {layer} daddr != {net}{oif} counter {to}"
        ));
    }
    let to = match snat {
        Some(a) if a.start == a.end => format!("snat to {}", a.start),
        Some(a) => format!("snat to {}-{}", a.start, a.end),
        None => "masquerade".to_owned(),
    };
    c.postrouting.push(format!(
        "{layer} saddr {net} {layer} daddr != {net}{oif} counter {to}"
    ));
}

fn chains_for(def: &NetworkDef, family: TableFamily) -> Chains {
    let bridge = quote(def.bridge_name().unwrap_or_default());
    let physdev = def.forward_dev();
    let layer = family.as_str();
    let mut c = Chains {
        input: Vec::new(),
        forward_in: Vec::new(),
        forward_out: Vec::new(),
        postrouting: Vec::new(),
    };
    match family {
        TableFamily::Ip => {
            c.input
                .push(format!("iifname {bridge} udp dport {{ 53, 67 }} counter accept"));
            c.input
                .push(format!("iifname {bridge} tcp dport 53 counter accept"));
            if def.ip.iter().any(|ip| !ip.is_ipv6() && ip.tftp.is_some()) {
                c.input
                    .push(format!("iifname {bridge} udp dport 69 counter accept"));
            }
        }
        TableFamily::Ip6 => {
            c.input
                .push(format!("iifname {bridge} udp dport {{ 53, 547 }} counter accept"));
            c.input
                .push(format!("iifname {bridge} tcp dport 53 counter accept"));
        }
    }
    let from_phys = physdev
        .map(|d| format!("iifname {} ", quote(d)))
        .unwrap_or_default();
    let to_phys = physdev
        .map(|d| format!(" oifname {}", quote(d)))
        .unwrap_or_default();
    let nat_v6 = def
        .forward
        .as_ref()
        .and_then(|f| f.nat.as_ref())
        .and_then(|n| n.ipv6)
        .is_some_and(|v| v.is_yes());
    for ip in def
        .ip
        .iter()
        .filter(|ip| ip.is_ipv6() == (family == TableFamily::Ip6))
    {
        let net = ip.subnet();
        let masquerade = match def.forward_mode() {
            Some(ForwardMode::Nat) => !ip.is_ipv6() || nat_v6,
            Some(ForwardMode::Route) => false,
            _ => continue,
        };
        c.forward_out.push(format!(
            "{layer} saddr {net} iifname {bridge}{to_phys} counter accept"
        ));
        if masquerade {
            c.forward_in.push(format!(
                "{from_phys}oifname {bridge} {layer} daddr {net} ct state related,established counter accept"
            ));
            add_masquerade(&mut c, def, ip, layer, physdev);
        } else {
            c.forward_in.push(format!(
                "{layer} daddr {net} {from_phys}oifname {bridge} counter accept"
            ));
        }
    }
    c
}

fn write_table(out: &mut String, def: &NetworkDef, table: &TableRef) {
    let bridge = quote(def.bridge_name().unwrap_or_default());
    let c = chains_for(def, table.family);
    let _ = writeln!(out, "table {table} {{");
    let _ = writeln!(out, "\tcomment \"rvirt network {}\"", def.name.replace('"', "'"));
    let _ = writeln!(out, "\tchain input {{");
    let _ = writeln!(out, "\t\ttype filter hook input priority 0; policy accept;");
    for rule in &c.input {
        let _ = writeln!(out, "\t\t{rule}");
    }
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "\tchain forward {{");
    let _ = writeln!(out, "\t\ttype filter hook forward priority 0; policy accept;");
    let _ = writeln!(out, "\t\tiifname {bridge} oifname {bridge} counter accept");
    for rule in &c.forward_in {
        let _ = writeln!(out, "\t\t{rule}");
    }
    let _ = writeln!(out, "\t\toifname {bridge} counter reject");
    for rule in &c.forward_out {
        let _ = writeln!(out, "\t\t{rule}");
    }
    let _ = writeln!(out, "\t\tiifname {bridge} counter reject");
    let _ = writeln!(out, "\t}}");
    if !c.postrouting.is_empty() {
        let _ = writeln!(out, "\tchain postrouting {{");
        let _ = writeln!(out, "\t\ttype nat hook postrouting priority 100; policy accept;");
        for rule in &c.postrouting {
            let _ = writeln!(out, "\t\t{rule}");
        }
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(out, "}}");
}

/// The `nft -f` script that (re)creates the network's tables in one transaction: any stale
/// table of the same name is replaced. `None` when the network has no firewall.
pub fn apply_script(def: &NetworkDef) -> Option<String> {
    let tables = tables(def);
    if tables.is_empty() {
        return None;
    }
    let mut out = delete_script(&tables);
    for table in &tables {
        write_table(&mut out, def, table);
    }
    Some(out)
}

/// The `nft -f` script that deletes exactly `tables`, whether or not they exist (each is added
/// empty first, so the delete cannot fail on a missing table).
pub fn delete_script(tables: &[TableRef]) -> String {
    let mut out = String::new();
    for table in tables {
        let _ = writeln!(out, "add table {table}");
        let _ = writeln!(out, "delete table {table}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(xml: &str) -> NetworkDef {
        let mut d = NetworkDef::parse(xml).expect("valid XML");
        d.ensure_uuid();
        d
    }

    fn nat() -> NetworkDef {
        def(
            "<network><name>default</name><forward mode='nat'/><bridge name='virbr0'/>\
             <ip address='192.168.122.1' netmask='255.255.255.0'/></network>",
        )
    }

    fn rules(script: &str) -> Vec<&str> {
        script.lines().map(str::trim).collect()
    }

    #[test]
    fn nat_network_gets_its_own_ip_table_only() {
        let d = nat();
        assert_eq!(
            tables(&d),
            vec![TableRef {
                family: TableFamily::Ip,
                name: "rvirt_default".into()
            }]
        );
        let script = apply_script(&d).expect("script");
        assert!(
            script.starts_with(
                "add table ip rvirt_default\ndelete table ip rvirt_default\ntable ip rvirt_default {\n"
            ),
            "{script}"
        );
        assert!(!script.contains("ip6"), "{script}");
        for line in script.lines().filter(|l| l.starts_with("table ")) {
            assert_eq!(line, "table ip rvirt_default {", "only rvirt's table is touched");
        }
    }

    #[test]
    fn nat_masquerades_the_subnet_except_multicast_and_broadcast() {
        let script = apply_script(&nat()).expect("script");
        let r = rules(&script);
        let pos = |needle: &str| {
            r.iter()
                .position(|l| *l == needle)
                .unwrap_or_else(|| panic!("missing {needle}\n{script}"))
        };
        let mcast = pos("ip saddr 192.168.122.0/24 ip daddr 224.0.0.0/24 counter return");
        let bcast = pos("ip saddr 192.168.122.0/24 ip daddr 255.255.255.255 counter return");
        let tcp = pos(
            "meta l4proto tcp ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 counter masquerade to :1024-65535",
        );
        let udp = pos(
            "meta l4proto udp ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 counter masquerade to :1024-65535",
        );
        let all = pos("ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 counter masquerade");
        assert!(
            mcast < tcp && bcast < tcp && tcp < all && udp < all,
            "exemptions come first, the generic rule last"
        );
        assert!(r.contains(&"type nat hook postrouting priority 100; policy accept;"));
    }

    #[test]
    fn nat_forwards_replies_in_and_everything_out() {
        let script = apply_script(&nat()).expect("script");
        let r = rules(&script);
        let pos = |needle: &str| {
            r.iter()
                .position(|l| *l == needle)
                .unwrap_or_else(|| panic!("missing {needle}\n{script}"))
        };
        let cross = pos("iifname \"virbr0\" oifname \"virbr0\" counter accept");
        let related =
            pos("oifname \"virbr0\" ip daddr 192.168.122.0/24 ct state related,established counter accept");
        let reject_in = pos("oifname \"virbr0\" counter reject");
        let out = pos("ip saddr 192.168.122.0/24 iifname \"virbr0\" counter accept");
        let reject_out = pos("iifname \"virbr0\" counter reject");
        assert!(cross < related && related < reject_in && reject_in < out && out < reject_out);
    }

    #[test]
    fn forward_dev_restricts_the_outside_interface() {
        let d = def(
            "<network><name>n</name><forward mode='nat' dev='eth1'/><bridge name='br5'/>\
                     <ip address='10.0.0.1' prefix='24'/></network>",
        );
        let script = apply_script(&d).expect("script");
        assert!(
            script.contains("ip saddr 10.0.0.0/24 iifname \"br5\" oifname \"eth1\" counter accept"),
            "{script}"
        );
        assert!(
            script.contains(
                "iifname \"eth1\" oifname \"br5\" ip daddr 10.0.0.0/24 ct state related,established"
            ),
            "{script}"
        );
        assert!(
            script.contains("ip daddr != 10.0.0.0/24 oifname \"eth1\" counter masquerade\n"),
            "{script}"
        );
    }

    #[test]
    fn nat_port_and_address_ranges_are_used() {
        let d = def(
            "<network><name>n</name><forward mode='nat'><nat><address start='1.2.3.4' end='1.2.3.9'/>\
                     <port start='2000' end='3000'/></nat></forward><bridge name='br5'/>\
                     <ip address='10.0.0.1' prefix='24'/></network>",
        );
        let script = apply_script(&d).expect("script");
        assert!(
            script.contains("counter snat to 1.2.3.4-1.2.3.9:2000-3000\n"),
            "{script}"
        );
        assert!(
            script.contains("daddr != 10.0.0.0/24 counter snat to 1.2.3.4-1.2.3.9\n"),
            "{script}"
        );
    }

    #[test]
    fn isolated_network_rejects_all_forwarding_but_accepts_dhcp_and_dns() {
        let d = def(
            "<network><name>iso</name><bridge name='virbr3'/><ip address='10.1.0.1' prefix='24'/></network>",
        );
        let script = apply_script(&d).expect("script");
        let r = rules(&script);
        assert!(r.contains(&"oifname \"virbr3\" counter reject"));
        assert!(r.contains(&"iifname \"virbr3\" counter reject"));
        assert!(r.contains(&"iifname \"virbr3\" udp dport { 53, 67 } counter accept"));
        assert!(!script.contains("saddr"), "no forwarding or NAT rule: {script}");
        assert!(!script.contains("postrouting"), "{script}");
    }

    #[test]
    fn route_network_accepts_both_ways_without_nat() {
        let d = def(
            "<network><name>r</name><forward mode='route'/><bridge name='br6'/>\
                     <ip address='10.2.0.1' prefix='24'/></network>",
        );
        let script = apply_script(&d).expect("script");
        assert!(
            script.contains("ip daddr 10.2.0.0/24 oifname \"br6\" counter accept"),
            "{script}"
        );
        assert!(
            script.contains("ip saddr 10.2.0.0/24 iifname \"br6\" counter accept"),
            "{script}"
        );
        assert!(!script.contains("masquerade"), "{script}");
        assert!(!script.contains("ct state"), "{script}");
    }

    #[test]
    fn ipv6_is_routed_in_its_own_table_unless_nat_ipv6() {
        let d = def(
            "<network><name>six</name><forward mode='nat'/><bridge name='br7'/>\
                     <ip family='ipv6' address='2001:db8::1' prefix='64'/></network>",
        );
        let ts = tables(&d);
        assert_eq!(ts.len(), 2);
        assert_eq!(ts[1].to_string(), "ip6 rvirt_six");
        let script = apply_script(&d).expect("script");
        assert!(
            script.contains("ip6 daddr 2001:db8::/64 oifname \"br7\" counter accept"),
            "{script}"
        );
        assert!(
            !script.contains("ip6 saddr 2001:db8::/64 ip6 daddr != 2001:db8::/64 counter masquerade"),
            "{script}"
        );
        let d = def(
            "<network><name>six</name><forward mode='nat'><nat ipv6='yes'/></forward><bridge name='br7'/>\
                     <ip family='ipv6' address='2001:db8::1' prefix='64'/></network>",
        );
        let script = apply_script(&d).expect("script");
        assert!(
            script.contains("ip6 saddr 2001:db8::/64 ip6 daddr ff02::/16 counter return"),
            "{script}"
        );
        assert!(
            script.contains("ip6 saddr 2001:db8::/64 ip6 daddr != 2001:db8::/64 counter masquerade\n"),
            "{script}"
        );
    }

    #[test]
    fn open_and_bridge_networks_have_no_firewall() {
        let d = def(
            "<network><name>o</name><forward mode='open'/><bridge name='br8'/><ip address='10.3.0.1' prefix='24'/></network>",
        );
        assert!(apply_script(&d).is_none());
        let d = def("<network><name>h</name><forward mode='bridge'/><bridge name='br0'/></network>");
        assert!(apply_script(&d).is_none());
    }

    #[test]
    fn stopping_deletes_exactly_the_networks_tables() {
        let d = def(
            "<network><name>six</name><forward mode='nat'/><bridge name='br7'/>\
                     <ip address='10.0.0.1' prefix='24'/><ip family='ipv6' address='2001:db8::1' prefix='64'/></network>",
        );
        assert_eq!(
            delete_script(&tables(&d)),
            "add table ip rvirt_six\ndelete table ip rvirt_six\nadd table ip6 rvirt_six\ndelete table ip6 rvirt_six\n"
        );
    }

    #[test]
    fn odd_names_are_made_safe_and_unique() {
        let mut d = nat();
        d.name = "my-net.1".into();
        d.uuid = Some("81ff0d90-c91e-6742-64da-4a736edb9a9b".into());
        assert_eq!(table_name(&d), "rvirt_my_net_1_81ff0d90");
    }
}
