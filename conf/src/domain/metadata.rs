//! Application elements inside a domain's `<metadata>`, found and replaced by namespace URI as
//! libvirt's `virDomainGetMetadata`/`virDomainSetMetadata` do with `VIR_DOMAIN_METADATA_ELEMENT`.
//!
//! The model keeps `<metadata>`'s inner XML exactly as written ([`super::DomainDef::metadata`]);
//! these functions work on that text. An element belongs to the namespace its own tag declares
//! (`<app:info xmlns:app="http://example.org/app">`), which is how libvirt writes them.

use std::ops::Range;

use quick_xml::events::{BytesStart, Event};

use crate::xml::{XmlError, XmlErrorKind};

fn invalid(message: impl Into<String>) -> XmlError {
    XmlError {
        kind: XmlErrorKind::Invalid,
        path: "/domain/metadata".into(),
        message: message.into(),
    }
}

fn malformed(message: impl Into<String>) -> XmlError {
    XmlError {
        kind: XmlErrorKind::Malformed,
        path: "/domain/metadata".into(),
        message: message.into(),
    }
}

/// The namespace URI a start tag declares for its own name (`xmlns:p` for `<p:x>`, `xmlns` for
/// an unprefixed name).
fn own_namespace(start: &BytesStart<'_>) -> Option<String> {
    let name = start.name();
    let wanted = match name.prefix() {
        Some(prefix) => {
            let prefix: &str = prefix.as_ref();
            format!("xmlns:{prefix}")
        }
        None => "xmlns".to_owned(),
    };
    start
        .attributes()
        .flatten()
        .find(|a| {
            let key: &str = a.key.as_ref();
            key == wanted
        })
        .and_then(|a| {
            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .ok()
                .map(|v| v.into_owned())
        })
}

/// One top-level element: its byte range, the namespace URI it declares, and whether it is an
/// empty-element tag (`<x/>`).
type Span = (Range<usize>, Option<String>, bool);

/// The top-level elements of `raw`.
fn elements(raw: &str) -> Result<Vec<Span>, XmlError> {
    let mut reader = quick_xml::Reader::from_str(raw);
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut open: Option<(usize, Option<String>)> = None;
    loop {
        let before = reader.buffer_position() as usize;
        let event = reader
            .read_event()
            .map_err(|e| malformed(format!("XML is not well-formed: {e}")))?;
        match event {
            Event::Start(start) => {
                if depth == 0 {
                    open = Some((before, own_namespace(&start)));
                }
                depth += 1;
            }
            Event::Empty(start) if depth == 0 => {
                out.push((
                    before..reader.buffer_position() as usize,
                    own_namespace(&start),
                    true,
                ));
            }
            Event::End(_) => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| malformed("XML is not well-formed: an end tag without its start"))?;
                if depth == 0
                    && let Some((start, uri)) = open.take()
                {
                    out.push((start..reader.buffer_position() as usize, uri, false));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err(malformed("XML is not well-formed: an element is not closed"));
    }
    Ok(out)
}

/// The element of namespace `uri` in `metadata` (the inner XML of `<metadata>`), as written.
pub fn metadata_element(metadata: Option<&str>, uri: &str) -> Result<Option<String>, XmlError> {
    let Some(raw) = metadata else {
        return Ok(None);
    };
    Ok(elements(raw)?
        .into_iter()
        .find(|(_, ns, _)| ns.as_deref() == Some(uri))
        .map(|(range, _, _)| raw[range].to_owned()))
}

fn is_ncname(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn escape_attr(value: &str) -> String {
    quick_xml::escape::escape(value).into_owned()
}

/// `element` (one XML element, its name without a prefix) written in namespace `uri` with prefix
/// `key`: the prefix on its own start and end tags and the declaration on its start tag.
fn in_namespace(element: &str, key: &str, uri: &str) -> Result<String, XmlError> {
    let element = element.trim();
    let spans = elements(element)?;
    let [(range, _, empty)] = spans.as_slice() else {
        return Err(invalid("the metadata must be exactly one XML element"));
    };
    if range.start != 0 || range.end != element.len() {
        return Err(invalid(
            "the metadata must be exactly one XML element, with nothing around it",
        ));
    }
    let name_end = element[1..]
        .find(|c: char| c.is_whitespace() || c == '/' || c == '>')
        .map_or(element.len(), |i| i + 1);
    let name = &element[1..name_end];
    if name.contains(':') {
        return Err(invalid(format!(
            "the element <{name}> has a namespace prefix: give it without one, the key names the prefix"
        )));
    }
    let mut out = format!("<{key}:{name} xmlns:{key}=\"{}\"", escape_attr(uri));
    if *empty {
        out.push_str(&element[name_end..]);
    } else {
        // Everything up to the end tag, which is the last `</` of a well-formed element.
        let end_tag = element.rfind("</").unwrap_or(element.len());
        out.push_str(&element[name_end..end_tag]);
        out.push_str(&format!("</{key}:{name}>"));
    }
    Ok(out)
}

/// `metadata` (the inner XML of `<metadata>`) with its element of namespace `uri` replaced by
/// `element` written with prefix `key`, added when there was none, or removed when `element` is
/// `None`. `None` when nothing is left.
pub fn set_metadata_element(
    metadata: Option<&str>,
    uri: &str,
    key: &str,
    element: Option<&str>,
) -> Result<Option<String>, XmlError> {
    if uri.is_empty() {
        return Err(invalid("a metadata element needs its namespace URI"));
    }
    let replacement = match element {
        Some(element) => {
            if !is_ncname(key) {
                return Err(invalid(format!(
                    "'{key}' is not a valid namespace prefix: use letters, digits, '_', '-' or '.', starting with a letter"
                )));
            }
            Some(in_namespace(element, key, uri)?)
        }
        None => None,
    };
    let raw = metadata.unwrap_or_default();
    let mut kept = String::with_capacity(raw.len());
    let mut last = 0;
    for (range, ns, _) in elements(raw)? {
        if ns.as_deref() == Some(uri) {
            kept.push_str(&raw[last..range.start]);
            last = range.end;
        }
    }
    kept.push_str(&raw[last..]);
    let mut out = kept.trim().to_owned();
    if let Some(replacement) = replacement {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&replacement);
    }
    Ok((!out.is_empty()).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "http://example.org/app/1.0";

    #[test]
    fn an_element_is_found_by_the_namespace_its_tag_declares() {
        let raw = "<a:info xmlns:a=\"http://example.org/app/1.0\"><v>1</v></a:info>\n\
                   <other xmlns=\"http://other\"/>";
        assert_eq!(
            metadata_element(Some(raw), APP).expect("parse").as_deref(),
            Some("<a:info xmlns:a=\"http://example.org/app/1.0\"><v>1</v></a:info>")
        );
        assert_eq!(
            metadata_element(Some(raw), "http://other")
                .expect("parse")
                .as_deref(),
            Some("<other xmlns=\"http://other\"/>")
        );
        assert_eq!(metadata_element(Some(raw), "http://none").expect("parse"), None);
        assert_eq!(metadata_element(None, APP).expect("none"), None);
    }

    #[test]
    fn setting_adds_replaces_and_removes_one_namespace() {
        let set = set_metadata_element(None, APP, "app", Some("<info><v>1</v></info>"))
            .expect("add")
            .expect("some");
        assert_eq!(
            set,
            "<app:info xmlns:app=\"http://example.org/app/1.0\"><v>1</v></app:info>"
        );
        let both = set_metadata_element(Some(&set), "urn:b", "b", Some("<flag/>"))
            .expect("add another")
            .expect("some");
        assert_eq!(
            metadata_element(Some(&both), "urn:b").expect("find").as_deref(),
            Some("<b:flag xmlns:b=\"urn:b\"/>")
        );
        let replaced = set_metadata_element(Some(&both), APP, "app", Some("<info a='x'>2</info>"))
            .expect("replace")
            .expect("some");
        assert_eq!(
            metadata_element(Some(&replaced), APP).expect("find").as_deref(),
            Some("<app:info xmlns:app=\"http://example.org/app/1.0\" a='x'>2</app:info>")
        );
        assert!(
            metadata_element(Some(&replaced), "urn:b")
                .expect("find")
                .is_some()
        );
        let removed = set_metadata_element(Some(&replaced), "urn:b", "", None)
            .expect("remove")
            .expect("one left");
        assert!(metadata_element(Some(&removed), "urn:b").expect("find").is_none());
        assert_eq!(
            set_metadata_element(Some(&removed), APP, "", None).expect("remove"),
            None
        );
    }

    #[test]
    fn bad_input_is_refused() {
        for (element, key) in [
            ("<a/><b/>", "k"),
            ("text", "k"),
            ("<a>", "k"),
            ("<p:a xmlns:p='u'/>", "k"),
            ("<a/>", "1bad"),
            ("<a/>", "has:colon"),
        ] {
            assert!(
                set_metadata_element(None, APP, key, Some(element)).is_err(),
                "{element} with key {key}"
            );
        }
        assert!(set_metadata_element(None, "", "k", Some("<a/>")).is_err());
    }
}
