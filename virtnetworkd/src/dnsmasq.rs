//! dnsmasq configuration for a network, generated from its definition: pure, no I/O.
//!
//! [`generate`] produces the three files dnsmasq reads: the configuration (`--conf-file`), the
//! DHCP hosts file (`dhcp-hostsfile`, re-read on SIGHUP) and the DNS hosts file (`addn-hosts`).
//! The options, their values and the hosts files are libvirt's (`networkDnsmasqConfContents`
//! in libvirt's bridge driver), so the conformance test compares them with libvirt's own
//! `tests/networkxml2confdata` outputs; rvirt adds `dhcp-leasefile` (dnsmasq keeps the leases,
//! where libvirt uses a helper script) and `pid-file` when given paths for them.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rvirt_conf::network::{Dns, DnsSrv, ForwardMode, Ip, Lease, LeaseUnit, NetworkDef, range_size};

/// Where dnsmasq's files for one network live.
#[derive(Debug, Clone)]
pub struct DnsmasqPaths {
    /// The DHCP hosts file.
    pub hostsfile: PathBuf,
    /// The DNS hosts file.
    pub addnhosts: PathBuf,
    /// The pid file dnsmasq writes, when it should write one.
    pub pid_file: Option<PathBuf>,
    /// The lease database dnsmasq keeps, when it should keep one.
    pub lease_file: Option<PathBuf>,
}

impl DnsmasqPaths {
    /// libvirt's layout in `dir`: `NAME.hostsfile` and `NAME.addnhosts`, no pid or lease file.
    pub fn libvirt(dir: &Path, name: &str) -> Self {
        DnsmasqPaths {
            hostsfile: dir.join(format!("{name}.hostsfile")),
            addnhosts: dir.join(format!("{name}.addnhosts")),
            pid_file: None,
            lease_file: None,
        }
    }
}

/// The generated files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqFiles {
    /// The configuration file.
    pub conf: String,
    /// The DHCP hosts file.
    pub hostsfile: String,
    /// The DNS hosts file.
    pub addnhosts: String,
}

/// Why a configuration cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsmasqError {
    /// The network has no bridge name yet.
    #[error("the network has no bridge name")]
    NoBridge,
    /// A `localPtr='yes'` subnet whose prefix is not on a label boundary.
    #[error(
        "PTR domain for {family} network with prefix {prefix} cannot be created automatically: use a prefix that is a multiple of {step}"
    )]
    PtrPrefix {
        /// IPv4 or IPv6.
        family: &'static str,
        /// The prefix.
        prefix: u8,
        /// 8 (IPv4) or 4 (IPv6).
        step: u8,
    },
}

/// Whether the network needs dnsmasq at all (libvirt's rule): it has an address, and serves
/// DHCP or DNS.
pub fn needed(def: &NetworkDef) -> bool {
    if !def.builds_bridge() || def.ip.is_empty() {
        return false;
    }
    def.ip.iter().any(Ip::has_dhcp) || Dns::enabled(def.dns.as_ref())
}

fn lease_time(lease: Option<&Lease>) -> Option<String> {
    let lease = lease?;
    if lease.expiry == 0 {
        return Some("infinite".to_owned());
    }
    let unit = match lease.unit.unwrap_or(LeaseUnit::Minutes) {
        LeaseUnit::Seconds => 's',
        LeaseUnit::Minutes => 'm',
        LeaseUnit::Hours => 'h',
    };
    Some(format!("{}{unit}", lease.expiry))
}

/// The DHCP hosts file lines of one `<ip>`.
fn dhcp_host_lines(ip: &Ip, out: &mut Vec<String>) {
    let v6 = ip.is_ipv6();
    for host in ip.hosts() {
        let Some(addr) = host.ip else { continue };
        let mut line = if v6 {
            let mut l = match (&host.name, &host.id) {
                (Some(name), Some(id)) => format!("id:{id},{name}"),
                (Some(name), None) => name.clone(),
                (None, Some(id)) => format!("id:{id}"),
                (None, None) => String::new(),
            };
            let _ = write!(l, ",[{addr}]");
            l
        } else {
            match (&host.mac, &host.name) {
                (Some(mac), Some(name)) => format!("{mac},{addr},{name}"),
                (None, Some(name)) => format!("{name},{addr}"),
                (Some(mac), None) => format!("{mac},{addr}"),
                (None, None) => continue,
            }
        };
        if let Some(lease) = lease_time(host.lease.as_ref()) {
            let _ = write!(line, ",{lease}");
        }
        out.push(line);
    }
}

/// The DHCP hosts file alone (what UpdateNetwork rewrites before SIGHUP).
pub fn hostsfile(def: &NetworkDef) -> String {
    let mut lines = Vec::new();
    for ip in [def.dhcp_ipv4(), def.dhcp_ipv6()].into_iter().flatten() {
        dhcp_host_lines(ip, &mut lines);
    }
    join_lines(&lines)
}

/// The DNS hosts file alone: one line per address, its names tab-separated.
pub fn addnhosts(def: &NetworkDef) -> String {
    let mut entries: Vec<(IpAddr, Vec<&str>)> = Vec::new();
    for host in def.dns.as_ref().map_or(&[][..], |d| &d.host) {
        let index = match entries.iter().position(|(ip, _)| *ip == host.ip) {
            Some(i) => i,
            None => {
                entries.push((host.ip, Vec::new()));
                entries.len() - 1
            }
        };
        entries[index].1.extend(host.hostname.iter().map(String::as_str));
    }
    let mut out = String::new();
    for (ip, names) in entries {
        let _ = write!(out, "{ip}\t");
        for name in names {
            let _ = write!(out, "{name}\t");
        }
        out.push('\n');
    }
    out
}

fn join_lines(lines: &[String]) -> String {
    let mut out = String::new();
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The reverse-lookup domain of a subnet (`122.168.192.in-addr.arpa`).
pub fn ptr_domain(ip: &Ip) -> Result<String, DnsmasqError> {
    let prefix = ip.prefix_len().unwrap_or(0);
    match ip.network_addr() {
        IpAddr::V4(a) => {
            if !prefix.is_multiple_of(8) || prefix == 0 {
                return Err(DnsmasqError::PtrPrefix {
                    family: "IPv4",
                    prefix,
                    step: 8,
                });
            }
            let octets = a.octets();
            let mut labels: Vec<String> = octets[..usize::from(prefix / 8)]
                .iter()
                .map(u8::to_string)
                .collect();
            labels.reverse();
            Ok(format!("{}.in-addr.arpa", labels.join(".")))
        }
        IpAddr::V6(a) => {
            if !prefix.is_multiple_of(4) || prefix == 0 {
                return Err(DnsmasqError::PtrPrefix {
                    family: "IPv6",
                    prefix,
                    step: 4,
                });
            }
            let bits = u128::from(a);
            let mut nibbles: Vec<String> = (0..usize::from(prefix / 4))
                .map(|i| format!("{:x}", (bits >> (124 - 4 * i)) & 0xf))
                .collect();
            nibbles.reverse();
            Ok(format!("{}.ip6.arpa", nibbles.join(".")))
        }
    }
}

fn srv_line(srv: &DnsSrv) -> String {
    let mut line = format!("srv-host=_{}._{}", srv.service, srv.protocol);
    if let Some(domain) = &srv.domain {
        let _ = write!(line, ".{domain}");
    }
    // An empty target, or ".", means "no such service": nothing else matters then.
    if let Some(target) = srv.target.as_deref().filter(|t| *t != ".") {
        let _ = write!(line, ",{target}");
        let port = srv.port.unwrap_or(0);
        let priority = srv.priority.unwrap_or(0);
        let weight = srv.weight.unwrap_or(0);
        // Positional fields: give the defaults of the ones before a given one.
        if port != 0 || priority != 0 || weight != 0 {
            let _ = write!(line, ",{}", if port == 0 { 1 } else { port });
        }
        if priority != 0 || weight != 0 {
            let _ = write!(line, ",{priority}");
        }
        if weight != 0 {
            let _ = write!(line, ",{weight}");
        }
    }
    line
}

/// Generates dnsmasq's configuration and hosts files for `def` (which must have its bridge
/// name).
pub fn generate(def: &NetworkDef, paths: &DnsmasqPaths) -> Result<DnsmasqFiles, DnsmasqError> {
    let bridge = def.bridge_name().ok_or(DnsmasqError::NoBridge)?;
    let dns = def.dns.clone().unwrap_or_default();
    let want_dns = Dns::enabled(def.dns.as_ref());
    let mut c: Vec<String> = Vec::new();
    c.push("strict-order".into());
    if !want_dns {
        c.push("port=0".into());
    }
    if want_dns && !dns.forwarder.is_empty() {
        let mut no_resolv = false;
        for fwd in &dns.forwarder {
            let mut line = "server=".to_owned();
            if let Some(domain) = &fwd.domain {
                let _ = write!(line, "/{domain}/");
            }
            match fwd.addr {
                Some(addr) => {
                    let _ = write!(line, "{addr}");
                    no_resolv |= fwd.domain.is_none();
                }
                None => line.push('#'),
            }
            c.push(line);
        }
        if no_resolv {
            c.push("no-resolv".into());
        }
    }
    if let Some(domain) = &def.domain {
        if domain.local_only.is_some_and(|v| v.is_yes()) {
            c.push(format!("local=/{}/", domain.name));
        }
        c.push(format!("domain={}", domain.name));
        c.push("expand-hosts".into());
    }
    if want_dns {
        for ip in def
            .ip
            .iter()
            .filter(|ip| ip.local_ptr.is_some_and(|v| v.is_yes()))
        {
            c.push(format!("local=/{}/", ptr_domain(ip)?));
        }
        if dns.forward_plain_names.is_some_and(|v| !v.is_yes()) {
            c.push("domain-needed".into());
            c.push("local=//".into());
        }
    }
    if let Some(pid) = &paths.pid_file {
        c.push(format!("pid-file={}", pid.display()));
    }
    c.push("except-interface=lo".into());
    c.push("bind-dynamic".into());
    c.push(format!("interface={bridge}"));
    if def.forward_mode().is_none() {
        // Isolated: no default route, no upstream DNS, no IPv6 default route by RA.
        c.push("dhcp-option=3".into());
        c.push("no-resolv".into());
        c.push("ra-param=*,0,0".into());
    }
    if want_dns {
        for txt in &dns.txt {
            c.push(format!("txt-record={},{}", txt.name, txt.value));
        }
        for srv in &dns.srv {
            c.push(srv_line(srv));
        }
    }
    let ipv4 = def.dhcp_ipv4();
    let ipv6 = def.dhcp_ipv6();
    let mut leases: u64 = 0;
    for ip in [ipv4, ipv6].into_iter().flatten() {
        let prefix = ip.prefix_len().unwrap_or(0);
        for range in ip.ranges() {
            let mut line = if ip.is_ipv6() {
                format!("dhcp-range={},{},{prefix}", range.start, range.end)
            } else {
                format!("dhcp-range={},{},{}", range.start, range.end, ip.netmask_v4())
            };
            if let Some(lease) = lease_time(range.lease.as_ref()) {
                let _ = write!(line, ",{lease}");
            }
            c.push(line);
            leases = leases.saturating_add(range_size(range.start, range.end));
        }
        if ip.ranges().is_empty() && !ip.hosts().is_empty() {
            let mut line = format!("dhcp-range={},static", ip.addr());
            if ip.is_ipv6() {
                let _ = write!(line, ",{prefix}");
            }
            c.push(line);
        }
        if !ip.is_ipv6() {
            c.push("dhcp-no-override".into());
            c.push("dhcp-authoritative".into());
            if let Some(tftp) = &ip.tftp {
                c.push("enable-tftp".into());
                c.push(format!("tftp-root={}", tftp.root));
            }
            if let Some(bootp) = ip.dhcp.as_ref().and_then(|d| d.bootp.as_ref()) {
                match &bootp.server {
                    Some(server) => c.push(format!("dhcp-boot={},,{server}", bootp.file)),
                    None => c.push(format!("dhcp-boot={}", bootp.file)),
                }
            }
        }
    }
    if ipv4.is_none() {
        // TFTP without DHCP still needs the TFTP server (libvirt's netboot-tftp case).
        if let Some(ip) = def.ip.iter().find(|ip| !ip.is_ipv6() && ip.tftp.is_some())
            && let Some(tftp) = &ip.tftp
        {
            c.push("enable-tftp".into());
            c.push(format!("tftp-root={}", tftp.root));
        }
    }
    if leases > 0 {
        c.push(format!("dhcp-lease-max={leases}"));
    }
    if ipv4.is_some() || ipv6.is_some() {
        c.push(format!("dhcp-hostsfile={}", paths.hostsfile.display()));
        if let Some(lease) = &paths.lease_file {
            c.push(format!("dhcp-leasefile={}", lease.display()));
        }
    }
    if want_dns {
        c.push(format!("addn-hosts={}", paths.addnhosts.display()));
    }
    if let Some(mtu) = def.mtu {
        c.push(format!("dhcp-option=option:mtu,{}", mtu.size));
    }
    if ipv6.is_some() {
        c.push("enable-ra".into());
    } else {
        for ip in def.ip.iter().filter(|ip| ip.is_ipv6() && !ip.has_dhcp()) {
            c.push(format!("dhcp-range={},ra-only", ip.addr()));
        }
    }
    let mut conf = format!(
        "## Generated by rvirt's virtnetworkd for network '{}': changes are overwritten.\n\
         ## Change the network with the rvirt API (e.g. rvirsh net-edit {}).\n",
        def.name, def.name
    );
    conf.push_str(&join_lines(&c));
    Ok(DnsmasqFiles {
        conf,
        hostsfile: hostsfile(def),
        addnhosts: addnhosts(def),
    })
}

/// Whether the network routes or masquerades (and so needs IP forwarding).
pub fn forwards(def: &NetworkDef) -> bool {
    matches!(
        def.forward_mode(),
        Some(ForwardMode::Nat | ForwardMode::Route | ForwardMode::Open)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(xml: &str) -> NetworkDef {
        NetworkDef::parse(xml).expect("valid XML")
    }

    fn paths() -> DnsmasqPaths {
        DnsmasqPaths {
            hostsfile: "/s/n.hostsfile".into(),
            addnhosts: "/s/n.addnhosts".into(),
            pid_file: Some("/s/n.pid".into()),
            lease_file: Some("/s/n.leases".into()),
        }
    }

    #[test]
    fn pid_and_lease_files_are_configured_when_given() {
        let d = def(
            "<network><name>n</name><bridge name='br1'/><ip address='10.0.0.1' prefix='24'><dhcp>\
             <range start='10.0.0.2' end='10.0.0.9'/></dhcp></ip></network>",
        );
        let files = generate(&d, &paths()).expect("generate");
        assert!(
            files.conf.lines().any(|l| l == "pid-file=/s/n.pid"),
            "{}",
            files.conf
        );
        assert!(
            files.conf.lines().any(|l| l == "dhcp-leasefile=/s/n.leases"),
            "{}",
            files.conf
        );
        assert!(files.conf.lines().any(|l| l == "interface=br1"));
    }

    #[test]
    fn local_ptr_adds_the_reverse_domain() {
        let d = def(
            "<network><name>n</name><bridge name='br1'/><ip address='192.168.122.1' prefix='24' localPtr='yes'/>\
             <ip family='ipv6' address='2001:db8:ac10:fd01::1' prefix='64' localPtr='yes'/></network>",
        );
        let conf = generate(&d, &paths()).expect("generate").conf;
        assert!(conf.contains("local=/122.168.192.in-addr.arpa/\n"), "{conf}");
        assert!(
            conf.contains("local=/1.0.d.f.0.1.c.a.8.b.d.0.1.0.0.2.ip6.arpa/\n"),
            "{conf}"
        );
    }

    #[test]
    fn local_ptr_on_an_odd_prefix_is_an_error() {
        let d = def(
            "<network><name>n</name><bridge name='br1'/><ip address='10.1.0.1' prefix='20' localPtr='yes'/></network>",
        );
        assert!(matches!(
            generate(&d, &paths()),
            Err(DnsmasqError::PtrPrefix { prefix: 20, .. })
        ));
    }

    #[test]
    fn dns_hosts_are_grouped_by_address() {
        let d = def(
            "<network><name>n</name><dns><host ip='10.0.0.5'><hostname>a</hostname><hostname>b</hostname></host>\
             <host ip='10.0.0.6'><hostname>c</hostname></host><host ip='10.0.0.5'><hostname>d</hostname></host></dns></network>",
        );
        assert_eq!(addnhosts(&d), "10.0.0.5\ta\tb\td\t\n10.0.0.6\tc\t\n");
    }

    #[test]
    fn infinite_lease_is_spelled_infinite() {
        let d = def(
            "<network><name>n</name><bridge name='br1'/><ip address='10.0.0.1' prefix='24'><dhcp>\
             <range start='10.0.0.2' end='10.0.0.9'><lease expiry='0'/></range>\
             <host mac='52:54:00:00:00:01' ip='10.0.0.3'><lease expiry='2' unit='hours'/></host></dhcp></ip></network>",
        );
        let files = generate(&d, &paths()).expect("generate");
        assert!(
            files
                .conf
                .contains("dhcp-range=10.0.0.2,10.0.0.9,255.255.255.0,infinite\n"),
            "{}",
            files.conf
        );
        assert_eq!(files.hostsfile, "52:54:00:00:00:01,10.0.0.3,2h\n");
    }

    #[test]
    fn dnsmasq_is_not_needed_without_addresses_or_services() {
        assert!(!needed(&def("<network><name>n</name></network>")));
        assert!(!needed(&def(
            "<network><name>n</name><dns enable='no'/><ip address='10.0.0.1' prefix='24'/></network>"
        )));
        assert!(needed(&def(
            "<network><name>n</name><ip address='10.0.0.1' prefix='24'/></network>"
        )));
    }
}
