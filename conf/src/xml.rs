//! Strict XML parsing and formatting shared by every model.
//!
//! Models are serde structs in quick-xml's conventions (`@name` for attributes, `$text` for
//! text, `$value` for ordered mixed children). [`from_str`] refuses anything the model does not
//! know, naming its location as an XPath-like path (`/domain/devices/disk[2]/@snapshot`), so an
//! unsupported feature is never silently dropped. [`to_string`] formats with two-space indents,
//! as libvirt does.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// What kind of XML problem it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XmlErrorKind {
    /// Not well-formed, or a value of the wrong type.
    Malformed,
    /// An element or attribute the model does not support.
    Unsupported,
    /// Well-formed and known, but breaking a rule (a missing name, a bad UUID, a value out of
    /// range).
    Invalid,
}

/// An XML problem and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at {path})")]
pub struct XmlError {
    /// What kind of problem.
    pub kind: XmlErrorKind,
    /// The XPath-like location, `/domain/devices/disk[2]/@snapshot`.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl XmlError {
    /// A rule violation at `path`.
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        XmlError {
            kind: XmlErrorKind::Invalid,
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Turns a serde path (`devices.disk.1.@type`, as serde_ignored and serde_path_to_error print
/// it) into an XPath-like one under `/root` (`/domain/devices/disk[2]/@type`).
pub fn xpath(root: &str, serde_path: &str) -> String {
    let mut out = format!("/{root}");
    if serde_path.is_empty() || serde_path == "." || serde_path == "?" {
        return out;
    }
    for segment in serde_path.split('.') {
        if segment == "$value" || segment == "$text" || segment == "?" {
            continue;
        }
        if let Ok(index) = segment.parse::<usize>() {
            out.push_str(&format!("[{}]", index + 1));
        } else {
            out.push('/');
            out.push_str(segment);
        }
    }
    out
}

fn ignorable(serde_path: &str) -> bool {
    // Namespace declarations are not content.
    serde_path
        .rsplit('.')
        .next()
        .is_some_and(|last| last == "@xmlns" || last.starts_with("@xmlns:"))
}

/// Parses `xml` into `T`, whose root element is `root`; every element or attribute `T` does not
/// model is reported (the first one is the error). Returns the value and the unknown paths, for
/// callers that accept and keep unknown content.
pub fn from_str_lenient<T: DeserializeOwned>(root: &str, xml: &str) -> Result<(T, Vec<String>), XmlError> {
    check_root(root, xml)?;
    let mut unknown = Vec::new();
    let mut de = quick_xml::de::Deserializer::from_str(xml);
    let mut record = |path: serde_ignored::Path<'_>| {
        let path = path.to_string();
        if !ignorable(&path) {
            unknown.push(xpath(root, &path));
        }
    };
    let wrapped = serde_ignored::Deserializer::new(&mut de, &mut record);
    let value: T = serde_path_to_error::deserialize(wrapped).map_err(|e| {
        let path = xpath(root, &e.path().to_string());
        let inner = e.into_inner().to_string();
        let kind = if inner.starts_with("unknown variant") || inner.starts_with("unknown field") {
            XmlErrorKind::Unsupported
        } else {
            XmlErrorKind::Malformed
        };
        let message = match kind {
            XmlErrorKind::Unsupported => format!("unsupported XML: {inner}"),
            _ => format!("invalid XML: {inner}"),
        };
        XmlError { kind, path, message }
    })?;
    Ok((value, unknown))
}

/// Parses `xml` into `T`, whose root element is `root`, refusing anything `T` does not model.
pub fn from_str<T: DeserializeOwned>(root: &str, xml: &str) -> Result<T, XmlError> {
    let (value, unknown) = from_str_lenient(root, xml)?;
    match unknown.into_iter().next() {
        None => Ok(value),
        Some(path) => Err(XmlError {
            kind: XmlErrorKind::Unsupported,
            message: format!("unsupported XML element or attribute {path}: rvirt does not implement it"),
            path,
        }),
    }
}

fn check_root(root: &str, xml: &str) -> Result<(), XmlError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e)) => {
                let name = e.name();
                let found = String::from_utf8_lossy(name.as_ref().as_ref()).into_owned();
                if found == root {
                    return Ok(());
                }
                return Err(XmlError {
                    kind: XmlErrorKind::Malformed,
                    path: format!("/{found}"),
                    message: format!("expected a <{root}> document, found <{found}>"),
                });
            }
            Ok(quick_xml::events::Event::Eof) => {
                return Err(XmlError {
                    kind: XmlErrorKind::Malformed,
                    path: "/".into(),
                    message: format!("empty document: expected <{root}>"),
                });
            }
            Ok(_) => {}
            Err(e) => {
                return Err(XmlError {
                    kind: XmlErrorKind::Malformed,
                    path: "/".into(),
                    message: format!("XML is not well-formed: {e}"),
                });
            }
        }
    }
}

/// Formats `value` as an XML document with root element `root`, indented by two spaces.
pub fn to_string<T: Serialize>(root: &str, value: &T) -> Result<String, XmlError> {
    let mut out = String::new();
    let mut ser = quick_xml::se::Serializer::with_root(&mut out, Some(root)).map_err(|e| XmlError {
        kind: XmlErrorKind::Invalid,
        path: format!("/{root}"),
        message: format!("cannot format XML: {e}"),
    })?;
    ser.indent(' ', 2);
    value.serialize(ser).map_err(|e| XmlError {
        kind: XmlErrorKind::Invalid,
        path: format!("/{root}"),
        message: format!("cannot format XML: {e}"),
    })?;
    out.push('\n');
    Ok(out)
}

/// A new random UUID in libvirt's lower-case, hyphenated form.
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// The canonical (lower-case, hyphenated) form of a UUID, accepting libvirt's spellings
/// (upper case, no hyphens); `None` when it is not a UUID.
pub fn canonical_uuid(text: &str) -> Option<String> {
    uuid::Uuid::parse_str(text.trim())
        .ok()
        .map(|u| u.hyphenated().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Thing {
        #[serde(rename = "@kind")]
        kind: String,
        name: String,
        #[serde(default)]
        part: Vec<Part>,
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Part {
        #[serde(rename = "@size")]
        size: u64,
    }

    #[test]
    fn unknown_attribute_is_named_with_its_path() {
        let xml = "<thing kind='a'><name>x</name><part size='1'/><part size='2' colour='red'/></thing>";
        let err = from_str::<Thing>("thing", xml).expect_err("unknown attribute");
        assert_eq!(err.kind, XmlErrorKind::Unsupported);
        assert_eq!(err.path, "/thing/part[2]/@colour");
    }

    #[test]
    fn unknown_element_is_named() {
        let err = from_str::<Thing>("thing", "<thing kind='a'><name>x</name><extra/></thing>")
            .expect_err("unknown");
        assert_eq!(err.path, "/thing/extra");
    }

    #[test]
    fn bad_value_names_its_path() {
        let err = from_str::<Thing>(
            "thing",
            "<thing kind='a'><name>x</name><part size='big'/></thing>",
        )
        .expect_err("bad number");
        assert_eq!(err.kind, XmlErrorKind::Malformed);
        assert!(err.path.starts_with("/thing/part"), "{}", err.path);
    }

    #[test]
    fn wrong_root_and_garbage_are_malformed() {
        let err = from_str::<Thing>("thing", "<other/>").expect_err("root");
        assert!(err.message.contains("<thing>"), "{}", err.message);
        let err = from_str::<Thing>("thing", "<thing").expect_err("garbage");
        assert_eq!(err.kind, XmlErrorKind::Malformed);
    }

    #[test]
    fn round_trip_with_indent() {
        let thing = Thing {
            kind: "a".into(),
            name: "x".into(),
            part: vec![Part { size: 3 }],
        };
        let text = to_string("thing", &thing).expect("format");
        assert_eq!(
            text,
            "<thing kind=\"a\">\n  <name>x</name>\n  <part size=\"3\"/>\n</thing>\n"
        );
        assert_eq!(from_str::<Thing>("thing", &text).expect("parse"), thing);
    }

    #[test]
    fn uuids_are_canonical() {
        assert_eq!(
            canonical_uuid("6695EB01F6A4830479AA97F2502E193F").as_deref(),
            Some("6695eb01-f6a4-8304-79aa-97f2502e193f")
        );
        assert!(canonical_uuid("not-a-uuid").is_none());
        assert!(canonical_uuid(&new_uuid()).is_some());
    }
}
