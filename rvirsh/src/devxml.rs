//! Device elements of a domain's XML, as `detach-disk` and `detach-interface` need them: virsh
//! finds the device in the domain's XML and detaches it with its own XML.

use quick_xml::events::{BytesStart, Event};

/// One direct child of `<devices>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceXml {
    /// The element name (`disk`, `interface`).
    pub name: String,
    /// Its XML, as it is in the document.
    pub xml: String,
    /// Its attributes.
    pub attrs: Vec<(String, String)>,
    /// Its child elements, with their attributes, in document order.
    pub children: Vec<(String, Vec<(String, String)>)>,
}

impl DeviceXml {
    /// The value of one of its attributes.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of attribute `attr` of its first child element `child`.
    pub fn child_attr(&self, child: &str, attr: &str) -> Option<&str> {
        self.children
            .iter()
            .find(|(name, _)| name == child)
            .and_then(|(_, attrs)| attrs.iter().find(|(k, _)| k == attr))
            .map(|(_, v)| v.as_str())
    }
}

fn element_name(start: &BytesStart<'_>) -> String {
    let name = start.name();
    let name: &str = name.as_ref();
    name.to_owned()
}

fn attributes(start: &BytesStart<'_>) -> Vec<(String, String)> {
    start
        .attributes()
        .flatten()
        .map(|a| {
            let key: &str = a.key.as_ref();
            let value = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map(|v| v.into_owned())
                .unwrap_or_default();
            (key.to_owned(), value)
        })
        .collect()
}

/// The devices of domain document `xml`, in document order; an unreadable document has none.
pub fn devices(xml: &str) -> Vec<DeviceXml> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut out: Vec<DeviceXml> = Vec::new();
    let mut open: Option<(usize, DeviceXml)> = None;
    loop {
        let before = usize::try_from(reader.buffer_position()).unwrap_or(0);
        let Ok(event) = reader.read_event() else {
            return Vec::new();
        };
        let after = usize::try_from(reader.buffer_position()).unwrap_or(0);
        let in_devices = path.len() == 2 && path[0] == "domain" && path[1] == "devices";
        match event {
            Event::Start(start) if in_devices => {
                let name = element_name(&start);
                path.push(name.clone());
                open = Some((
                    before,
                    DeviceXml {
                        name,
                        xml: String::new(),
                        attrs: attributes(&start),
                        children: Vec::new(),
                    },
                ));
            }
            Event::Empty(start) if in_devices => {
                out.push(DeviceXml {
                    name: element_name(&start),
                    xml: xml[before..after].to_owned(),
                    attrs: attributes(&start),
                    children: Vec::new(),
                });
            }
            Event::Start(start) => {
                if path.len() == 3
                    && let Some((_, device)) = open.as_mut()
                {
                    device.children.push((element_name(&start), attributes(&start)));
                }
                let name = element_name(&start);
                path.push(name.clone());
            }
            Event::Empty(start) => {
                if path.len() == 3
                    && let Some((_, device)) = open.as_mut()
                {
                    device.children.push((element_name(&start), attributes(&start)));
                }
            }
            Event::End(_) => {
                path.pop();
                if path.len() == 2
                    && let Some((start, mut device)) = open.take()
                {
                    device.xml = xml[start..after].to_owned();
                    out.push(device);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_found_with_their_xml_and_attributes() {
        let xml = "<domain type='kvm'><name>d</name><devices>\n\
                   <disk type='file' device='disk'><source file='/a.img'/><target dev='vda' bus='virtio'/></disk>\n\
                   <interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/></interface>\n\
                   <memballoon model='none'/>\n\
                   </devices></domain>";
        let found = devices(xml);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].child_attr("target", "dev"), Some("vda"));
        assert!(found[0].xml.starts_with("<disk") && found[0].xml.ends_with("</disk>"));
        assert_eq!(found[1].attr("type"), Some("network"));
        assert_eq!(found[1].child_attr("mac", "address"), Some("52:54:00:00:00:01"));
        assert_eq!(found[2].xml, "<memballoon model='none'/>");
        assert!(
            devices("<domain><devices><disk></devices>").is_empty(),
            "not well-formed"
        );
    }
}
