//! dnsmasq's lease database (`dhcp-leasefile`): parsing it and telling what changed between two
//! readings. Pure; the driver reads the file and watches it with inotify.
//!
//! The format, one lease per line: IPv4 `EXPIRY MAC IP HOSTNAME CLIENTID`; then a
//! `duid SERVER-DUID` line and IPv6 `EXPIRY IAID IP HOSTNAME CLIENT-DUID`. `*` stands for an
//! unknown host name or client id; an expiry of 0 is a lease that never expires.
//!
//! dnsmasq records no MAC address for IPv6 leases. When the client's DUID is built from its
//! Ethernet address (DUID-LLT or DUID-LL, RFC 8415 §11.2 and §11.4: what dhclient, systemd-networkd
//! and NetworkManager use by default), the lease's MAC is read from it; otherwise it stays empty.

use std::net::IpAddr;

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Expiry as seconds since the epoch; 0 for never.
    pub expiry: u64,
    /// MAC address: IPv4's own, or for IPv6 the one in a link-layer DUID; empty when unknown.
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
            (duid_mac(&clientid).unwrap_or_default(), parts[1].to_owned())
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

/// The Ethernet address inside a DUID written as colon-separated hex: DUID-LLT (type 1: type,
/// hardware type, 4 bytes of time, address) or DUID-LL (type 3: type, hardware type, address),
/// hardware type 1 (Ethernet).
fn duid_mac(duid: &str) -> Option<String> {
    let bytes = duid
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<Vec<u8>, _>>()
        .ok()?;
    let address = match bytes.as_slice() {
        [0, 1, 0, 1, _, _, _, _, address @ ..] | [0, 3, 0, 1, address @ ..] => address,
        _ => return None,
    };
    (address.len() == 6).then(|| {
        address
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
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
    fn ipv6_leases_take_the_mac_of_a_link_layer_duid() {
        let text = "1700000500 1 2001:db8::21 a 00:01:00:01:2c:9e:1f:00:52:54:00:Ab:cD:01\n\
                    1700000500 2 2001:db8::22 b 00:03:00:01:52:54:00:ab:cd:02\n\
                    1700000500 3 2001:db8::23 c 00:02:00:00:ab:11:01:02:03:04:05:06\n\
                    1700000500 4 2001:db8::24 d 00:03:00:20:52:54:00:ab:cd:04\n\
                    1700000500 5 2001:db8::25 e 00:01:00:01:2c:9e:1f\n";
        let macs: Vec<String> = parse(text).into_iter().map(|l| l.mac).collect();
        assert_eq!(
            macs,
            [
                "52:54:00:ab:cd:01", // DUID-LLT, Ethernet
                "52:54:00:ab:cd:02", // DUID-LL, Ethernet
                "",                  // DUID-EN: no address in it
                "",                  // DUID-LL of another hardware type (InfiniBand)
                "",                  // truncated
            ]
        );
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
