//! dnsmasq's lease database (`dhcp-leasefile`): parsing it and telling what changed between two
//! readings. Pure; the driver reads the file and watches it with inotify.
//!
//! The format, one lease per line: IPv4 `EXPIRY MAC IP HOSTNAME CLIENTID`; then a
//! `duid SERVER-DUID` line and IPv6 `EXPIRY IAID IP HOSTNAME CLIENT-DUID`. `*` stands for an
//! unknown host name or client id; an expiry of 0 is a lease that never expires.

use std::net::IpAddr;

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Expiry as seconds since the epoch; 0 for never.
    pub expiry: u64,
    /// MAC address (IPv4), empty for IPv6.
    pub mac: String,
    /// IAID (IPv6), empty for IPv4.
    pub iaid: String,
    /// The address.
    pub ip: IpAddr,
    /// The client's host name, empty when unknown.
    pub hostname: String,
    /// Client id (IPv4) or DUID (IPv6), empty when unknown.
    pub clientid: String,
}

fn field(text: &str) -> String {
    if text == "*" {
        String::new()
    } else {
        text.to_owned()
    }
}

/// Parses a lease file; lines it does not understand (including a partial last line) are
/// skipped.
pub fn parse(text: &str) -> Vec<Lease> {
    let mut out = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.first() == Some(&"duid") || parts.len() < 4 {
            continue;
        }
        let (Ok(expiry), Ok(ip)) = (parts[0].parse::<u64>(), parts[2].parse::<IpAddr>()) else {
            continue;
        };
        let clientid = parts.get(4).map(|c| field(c)).unwrap_or_default();
        let (mac, iaid) = if ip.is_ipv6() {
            (String::new(), parts[1].to_owned())
        } else {
            (parts[1].to_ascii_lowercase(), String::new())
        };
        out.push(Lease {
            expiry,
            mac,
            iaid,
            ip,
            hostname: field(parts[3]),
            clientid,
        });
    }
    out
}

/// How one lease changed between two readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new lease.
    Added(Lease),
    /// A lease that is gone (as it was).
    Removed(Lease),
    /// A lease renewed or changed.
    Updated(Lease),
}

/// The changes from `before` to `after`, leases matched by address.
pub fn diff(before: &[Lease], after: &[Lease]) -> Vec<Change> {
    let mut out = Vec::new();
    for lease in after {
        match before.iter().find(|b| b.ip == lease.ip) {
            None => out.push(Change::Added(lease.clone())),
            Some(old) if old.mac != lease.mac || old.iaid != lease.iaid => {
                out.push(Change::Removed(old.clone()));
                out.push(Change::Added(lease.clone()));
            }
            Some(old) if old != lease => out.push(Change::Updated(lease.clone())),
            Some(_) => {}
        }
    }
    for lease in before {
        if !after.iter().any(|a| a.ip == lease.ip) {
            out.push(Change::Removed(lease.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "1700000000 52:54:00:AA:bb:01 192.168.122.10 guest1 01:52:54:00:aa:bb:01\n\
                        0 52:54:00:aa:bb:02 192.168.122.11 * *\n\
                        duid 00:01:00:01:2c:00:00:00:52:54:00:00:00:01\n\
                        1700000500 12345 2001:db8::20 six 00:04:7e:7d\n\
                        17000";

    #[test]
    fn parses_ipv4_and_ipv6_leases_and_skips_junk() {
        let leases = parse(FILE);
        assert_eq!(leases.len(), 3);
        assert_eq!(leases[0].mac, "52:54:00:aa:bb:01");
        assert_eq!(leases[0].hostname, "guest1");
        assert_eq!(leases[0].clientid, "01:52:54:00:aa:bb:01");
        assert_eq!(leases[1].expiry, 0);
        assert_eq!(leases[1].hostname, "");
        assert_eq!(leases[2].iaid, "12345");
        assert_eq!(leases[2].mac, "");
        assert_eq!(leases[2].clientid, "00:04:7e:7d");
    }

    #[test]
    fn diff_reports_added_updated_and_removed() {
        let before = parse(FILE);
        let mut after = before.clone();
        after[0].expiry += 3600;
        after.remove(1);
        after.push(parse("1700000000 52:54:00:aa:bb:03 192.168.122.12 new *").remove(0));
        let changes = diff(&before, &after);
        assert!(matches!(&changes[0], Change::Updated(l) if l.expiry == 1700003600));
        assert!(matches!(&changes[1], Change::Added(l) if l.hostname == "new"));
        assert!(matches!(&changes[2], Change::Removed(l) if l.mac == "52:54:00:aa:bb:02"));
        assert_eq!(changes.len(), 3);
        assert!(diff(&after, &after).is_empty());
    }
}
