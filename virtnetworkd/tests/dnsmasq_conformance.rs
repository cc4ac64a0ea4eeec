//! dnsmasq configuration conformance: for every input of libvirt's
//! `tests/networkxml2confdata/`, the configuration rvirt generates holds the same options with
//! the same values as libvirt's `.conf` (compared as multisets of lines, comments dropped), and
//! the DHCP hosts file equals libvirt's `.hostsfile` (empty when libvirt has none).
//!
//! libvirt's reference tree comes from `RVIRT_LIBVIRT_TREE`, else `../shared/libvirt` beside
//! the workspace. No input is skipped: every one uses only features rvirt implements.

use std::path::Path;

use rvirt_conf::network::NetworkDef;
use virtnetworkd::dnsmasq::{DnsmasqPaths, generate};

/// Inputs skipped, with the reason. Empty: every libvirt input is supported.
const SKIPPED: &[(&str, &str)] = &[];

fn option_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

fn compare(dir: &Path, name: &str) -> Result<(), String> {
    let xml = std::fs::read_to_string(dir.join(format!("{name}.xml"))).map_err(|e| e.to_string())?;
    let expected = std::fs::read_to_string(dir.join(format!("{name}.conf"))).map_err(|e| e.to_string())?;
    let expected_hosts = std::fs::read_to_string(dir.join(format!("{name}.hostsfile"))).unwrap_or_default();
    let def = NetworkDef::parse(&xml).map_err(|e| format!("parse: {e}"))?;
    // libvirt's test writes the hosts files to /var/lib/libvirt/dnsmasq and passes no pid file.
    let paths = DnsmasqPaths::libvirt(Path::new("/var/lib/libvirt/dnsmasq"), &def.name);
    let files = generate(&def, &paths).map_err(|e| format!("generate: {e}"))?;
    let (ours, theirs) = (option_lines(&files.conf), option_lines(&expected));
    if ours != theirs {
        let missing: Vec<_> = theirs.iter().filter(|l| !ours.contains(l)).collect();
        let extra: Vec<_> = ours.iter().filter(|l| !theirs.contains(l)).collect();
        return Err(format!(
            "options differ: missing {missing:?}, extra {extra:?}\nours:\n{}",
            files.conf
        ));
    }
    if files.hostsfile != expected_hosts {
        return Err(format!(
            "hosts file differs:\nours:\n{}\nlibvirt's:\n{expected_hosts}",
            files.hostsfile
        ));
    }
    Ok(())
}

#[test]
fn every_libvirt_input_gives_libvirts_dnsmasq_options_and_hosts_file() {
    let dir = rvirt_testdata::libvirt_dir("tests/networkxml2confdata");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("list networkxml2confdata")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".conf"))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    assert!(
        names.len() >= 20,
        "expected libvirt's inputs, found {}",
        names.len()
    );
    let mut failures = Vec::new();
    let mut checked = 0;
    for name in &names {
        if SKIPPED.iter().any(|(skip, _)| skip == name) {
            continue;
        }
        checked += 1;
        if let Err(e) = compare(&dir, name) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} inputs differ:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
