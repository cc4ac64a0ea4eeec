//! One device element given alone (`virsh attach-device`'s file): checked to be exactly one
//! well-formed element before it is placed inside a domain's `<devices>`, so that it cannot
//! close `<devices>` and reach the rest of the definition.

use quick_xml::events::Event;

use crate::xml::{XmlError, XmlErrorKind};

/// The outline of one element: its name and the names of its direct children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outline {
    /// The element's name (`disk`, `interface`).
    pub name: String,
    /// Its child elements' names, in document order.
    pub children: Vec<String>,
}

fn malformed(message: impl Into<String>) -> XmlError {
    XmlError {
        kind: XmlErrorKind::Malformed,
        path: "/".into(),
        message: message.into(),
    }
}

/// The outline of `xml`, which must be exactly one well-formed element (an XML declaration,
/// comments and blanks around it are allowed).
pub fn outline(xml: &str) -> Result<Outline, XmlError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    let mut found: Option<Outline> = None;
    let mut closed = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| malformed(format!("XML is not well-formed: {e}")))?;
        let mut element = |name: &str, empty: bool| -> Result<(), XmlError> {
            let name = name.to_owned();
            if depth == 0 {
                if found.is_some() || closed {
                    return Err(malformed("give exactly one device element"));
                }
                found = Some(Outline {
                    name,
                    children: Vec::new(),
                });
                closed = empty;
            } else if depth == 1
                && let Some(outline) = found.as_mut()
            {
                outline.children.push(name);
            }
            Ok(())
        };
        match event {
            Event::Start(start) => {
                element(start.name().as_ref(), false)?;
                depth += 1;
            }
            Event::Empty(start) => element(start.name().as_ref(), true)?,
            Event::End(_) => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| malformed("XML is not well-formed: an end tag without its start"))?;
                if depth == 0 {
                    closed = true;
                }
            }
            Event::Text(text)
                if depth == 0 && {
                    let text: &str = text.as_ref();
                    !text.trim().is_empty()
                } =>
            {
                return Err(malformed("text outside the device element"));
            }
            Event::CData(_) if depth == 0 => return Err(malformed("text outside the device element")),
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err(malformed("XML is not well-formed: an element is not closed"));
    }
    found.ok_or_else(|| malformed("no device element given"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_element_with_its_children() {
        let o = outline(
            "<?xml version='1.0'?>\n<interface type='network'><mac address='52:54:00:00:00:01'/>\
             <source network='default'/></interface>\n",
        )
        .expect("outline");
        assert_eq!(o.name, "interface");
        assert_eq!(o.children, ["mac", "source"]);
        assert_eq!(outline("<disk/>").expect("empty").name, "disk");
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "text",
            "<disk/><disk/>",
            "<disk></disk></devices><on_crash>restart</on_crash><devices>",
            "</devices><disk/>",
            "<disk>",
            "<disk/>trailing",
        ] {
            assert!(outline(bad).is_err(), "{bad:?}");
        }
    }
}
