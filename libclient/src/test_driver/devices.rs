//! Device hotplug in the test driver: attach appends a device to the domain's `<devices>`,
//! detach removes the one that matches (a disk by its target, an interface by its MAC, anything
//! else by its whole XML), as libvirt's test driver does on its stored definition.

use rvirt_proto::error::status;
use rvirt_proto::v1::{ErrorCode, ErrorDomain};
use tonic::Status;

use super::node::{top_level_children, xml_error};

/// The element name and identifying key of one device's XML.
fn identity(xml: &str) -> Result<(String, Option<String>), Status> {
    let children = top_level_children(&format!("<devices>{xml}</devices>"), "devices")?;
    let [(name, raw)] = children.as_slice() else {
        return Err(xml_error("The device XML must hold exactly one device element"));
    };
    let attr = |element: &str, attribute: &str| -> Option<String> {
        let start = raw.find(&format!("<{element} "))?;
        let rest = &raw[start..];
        let end = rest.find('>')?;
        let tag = &rest[..end];
        let at = tag.find(&format!("{attribute}="))? + attribute.len() + 1;
        let quote = tag[at..].chars().next()?;
        let value = &tag[at + 1..];
        Some(value[..value.find(quote)?].to_owned())
    };
    let key = match name.as_str() {
        "disk" => attr("target", "dev"),
        "interface" => attr("mac", "address").map(|m| m.to_ascii_lowercase()),
        _ => None,
    };
    Ok((name.clone(), key))
}

fn normalized(xml: &str) -> String {
    xml.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('"', "'")
}

/// The domain XML with `device` appended to its devices.
pub fn attach(domain_xml: &str, device: &str) -> Result<String, Status> {
    let (name, key) = identity(device)?;
    if key.is_some() {
        for (other, raw) in devices(domain_xml)? {
            if other == name && identity(&raw)?.1 == key {
                return Err(status(
                    ErrorCode::OperationFailed,
                    ErrorDomain::Test,
                    format!(
                        "The domain already has a {name} with {}",
                        key.as_deref().unwrap_or_default()
                    ),
                ));
            }
        }
    }
    let device = device.trim();
    Ok(match domain_xml.rfind("</devices>") {
        Some(at) => format!(
            "{}  {device}\n  {}",
            domain_xml[..at].trim_end_matches([' ']),
            &domain_xml[at..]
        ),
        None => {
            let at = domain_xml
                .rfind("</domain>")
                .ok_or_else(|| xml_error("The domain XML has no </domain>"))?;
            format!(
                "{}  <devices>\n    {device}\n  </devices>\n{}",
                &domain_xml[..at],
                &domain_xml[at..]
            )
        }
    })
}

fn devices(domain_xml: &str) -> Result<Vec<(String, String)>, Status> {
    let (Some(start), Some(end)) = (domain_xml.find("<devices>"), domain_xml.rfind("</devices>")) else {
        return Ok(Vec::new());
    };
    top_level_children(&domain_xml[start..end + "</devices>".len()], "devices")
}

/// The domain XML without the device matching `device`.
pub fn detach(domain_xml: &str, device: &str) -> Result<String, Status> {
    let (name, key) = identity(device)?;
    let wanted = normalized(device);
    for (other, raw) in devices(domain_xml)? {
        let matches = other == name
            && match &key {
                Some(_) => identity(&raw)?.1 == key,
                None => normalized(&raw) == wanted,
            };
        if matches && let Some(at) = domain_xml.find(&raw) {
            let line_start = domain_xml[..at].rfind('\n').map_or(at, |n| n + 1);
            let blank_before = domain_xml[line_start..at].trim().is_empty();
            let from = if blank_before { line_start } else { at };
            let mut to = at + raw.len();
            if domain_xml[to..].starts_with('\n') && blank_before {
                to += 1;
            }
            return Ok(format!("{}{}", &domain_xml[..from], &domain_xml[to..]));
        }
    }
    Err(status(
        ErrorCode::DeviceMissing,
        ErrorDomain::Test,
        match key {
            Some(key) => format!("No {name} {key} found in the domain: check dumpxml for its devices"),
            None => format!("No matching {name} found in the domain: check dumpxml for its devices"),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = "<domain type='test'>\n  <name>a</name>\n  <devices>\n    <disk type='file' device='disk'>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n  </devices>\n</domain>";

    #[test]
    fn attach_then_detach_restores_the_definition() {
        let disk =
            "<disk type='file' device='disk'><source file='/x'/><target dev='vdb' bus='virtio'/></disk>";
        let with = attach(DOMAIN, disk).expect("attach");
        assert!(with.contains("vdb"), "{with}");
        let err = attach(&with, disk).expect_err("twice");
        assert_eq!(
            rvirt_proto::error::from_status(&err).code(),
            ErrorCode::OperationFailed
        );
        let without = detach(&with, "<disk><target dev='vdb'/></disk>").expect("detach by target");
        assert!(!without.contains("vdb"), "{without}");
        assert!(without.contains("vda"));
    }

    #[test]
    fn interfaces_match_by_mac_and_missing_devices_are_device_missing() {
        let nic = "<interface type='network'><mac address='52:54:00:AA:BB:CC'/><source network='default'/></interface>";
        let with = attach(DOMAIN, nic).expect("attach");
        let err = detach(
            &with,
            "<interface type='network'><mac address='52:54:00:00:00:01'/></interface>",
        )
        .expect_err("other mac");
        assert_eq!(
            rvirt_proto::error::from_status(&err).code(),
            ErrorCode::DeviceMissing
        );
        let without = detach(
            &with,
            "<interface type='network'><mac address='52:54:00:aa:bb:cc'/></interface>",
        )
        .expect("same mac, other case");
        assert!(!without.contains("interface"), "{without}");
    }

    #[test]
    fn a_domain_without_devices_gets_them_and_bad_device_xml_is_refused() {
        let bare = "<domain type='test'><name>b</name></domain>";
        let with = attach(bare, "<watchdog model='i6300esb'/>").expect("attach");
        assert!(with.contains("<devices>") && with.contains("i6300esb"), "{with}");
        let restored = detach(&with, "<watchdog model=\"i6300esb\"/>").expect("detach by xml");
        assert!(!restored.contains("i6300esb"));
        assert!(attach(bare, "<a/><b/>").is_err());
        assert!(attach(bare, "<disk").is_err());
    }
}
