//! A small read-only XML tree and a strict cursor over it, for the domain parser.
//!
//! The domain model is read by hand rather than through serde: libvirt's domain XML has many
//! quirks (case-insensitive values, units, `0x` numbers, `<metadata>` kept verbatim, devices in
//! document order) and every refusal must name its XPath-like location, including for device
//! elements, which a serde `$value` enum cannot name. [`parse_document`] builds the tree with
//! quick-xml's pull reader, remembering each element's inner byte range so that raw content can
//! be kept; [`El`] walks it and records which attributes and children the model consumed, so
//! that anything left over is reported ([`El::finish`]) as unsupported — or, in lenient mode,
//! collected as an ignored path.

use std::ops::Range;

use quick_xml::events::Event;

use crate::xml::{XmlError, XmlErrorKind};

/// Deepest element nesting accepted: far more than any domain needs, low enough that dropping
/// the tree (recursive) cannot exhaust the stack.
const MAX_DEPTH: usize = 128;

/// One element of the document.
#[derive(Debug)]
pub(crate) struct Node {
    /// The qualified name as written (`disk`, `app:foo`).
    pub name: String,
    /// Attributes in document order, values unescaped and normalized.
    pub attrs: Vec<(String, String)>,
    /// Child elements in document order.
    pub children: Vec<Node>,
    /// Character data directly inside this element (text and CDATA, entities resolved).
    pub text: String,
    /// Byte range of everything between the start and the end tag in the source.
    pub inner: Range<usize>,
}

fn malformed(path: impl Into<String>, message: impl Into<String>) -> XmlError {
    XmlError {
        kind: XmlErrorKind::Malformed,
        path: path.into(),
        message: message.into(),
    }
}

fn check_chars(value: &str, what: &str) -> Result<(), XmlError> {
    // XML 1.0 forbids most control characters even as character references; refusing them here
    // keeps every formatted document well-formed.
    if let Some(c) = value
        .chars()
        .find(|&c| (c < ' ' && c != '\t' && c != '\n' && c != '\r') || c == '\u{fffe}' || c == '\u{ffff}')
    {
        return Err(malformed(
            "/",
            format!(
                "XML is not well-formed: {what} contains the forbidden character U+{:04X}",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// Parses `xml` into a tree, refusing anything that is not a single well-formed element.
pub(crate) fn parse_document(xml: &str) -> Result<Node, XmlError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.expand_empty_elements = false;
    config.trim_text(false);
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    fn bad(reader: &quick_xml::Reader<&[u8]>, e: &dyn std::fmt::Display) -> XmlError {
        malformed(
            "/",
            format!(
                "XML is not well-formed (at byte {}): {e}",
                reader.error_position()
            ),
        )
    }
    fn outside() -> XmlError {
        malformed("/", "XML is not well-formed: text outside the root element")
    }
    loop {
        let before = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(e) => return Err(bad(&reader, &e)),
        };
        let (start, is_empty) = match event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                let Some(mut node) = stack.pop() else {
                    return Err(malformed("/", "XML is not well-formed: unexpected end tag"));
                };
                node.inner.end = before;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
                continue;
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                match stack.last_mut() {
                    Some(node) => {
                        check_chars(&content, "text")?;
                        node.text.push_str(&content);
                    }
                    None if content.trim().is_empty() => {}
                    None => return Err(outside()),
                }
                continue;
            }
            Event::CData(t) => {
                let content = t.xml10_content();
                check_chars(&content, "text")?;
                match stack.last_mut() {
                    Some(node) => node.text.push_str(&content),
                    None => return Err(outside()),
                }
                continue;
            }
            Event::GeneralRef(r) => {
                let resolved: String = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => match quick_xml::escape::resolve_predefined_entity(&r) {
                        Some(s) => s.to_owned(),
                        None => {
                            return Err(malformed(
                                "/",
                                format!("XML is not well-formed: unknown entity &{};", &*r),
                            ));
                        }
                    },
                    Err(e) => return Err(bad(&reader, &e)),
                };
                check_chars(&resolved, "a character reference")?;
                match stack.last_mut() {
                    Some(node) => node.text.push_str(&resolved),
                    None => return Err(outside()),
                }
                continue;
            }
            Event::DocType(_) => {
                return Err(malformed(
                    "/",
                    "a DOCTYPE declaration is not accepted in domain XML",
                ));
            }
            Event::Comment(_) | Event::PI(_) | Event::Decl(_) => continue,
            Event::Eof => break,
        };
        if root.is_some() {
            return Err(malformed(
                "/",
                "XML is not well-formed: content after the root element",
            ));
        }
        if stack.len() >= MAX_DEPTH {
            return Err(malformed("/", "XML is nested too deeply"));
        }
        let qname = start.name();
        let name: &str = qname.as_ref();
        let name = name.to_owned();
        let mut attrs = Vec::new();
        for attr in start.attributes() {
            let attr = attr.map_err(|e| bad(&reader, &e))?;
            let key: &str = attr.key.as_ref();
            let key = key.to_owned();
            let value = attr
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| bad(&reader, &e))?
                .into_owned();
            check_chars(&value, "an attribute value")?;
            attrs.push((key, value));
        }
        let here = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let node = Node {
            name,
            attrs,
            children: Vec::new(),
            text: String::new(),
            inner: here..here,
        };
        if is_empty {
            match stack.last_mut() {
                Some(parent) => parent.children.push(node),
                None => root = Some(node),
            }
        } else {
            stack.push(node);
        }
    }
    if let Some(open) = stack.last() {
        return Err(malformed(
            "/",
            format!("XML is not well-formed: <{}> is not closed", open.name),
        ));
    }
    root.ok_or_else(|| malformed("/", "empty document: expected <domain>"))
}

/// A cursor over one element: hands out attributes and children, remembering what was used.
#[derive(Debug)]
pub(crate) struct El<'n> {
    node: &'n Node,
    path: String,
    attr_used: Vec<bool>,
    child_used: Vec<bool>,
}

/// Parse-wide state: strict or lenient, and the paths ignored in lenient mode.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    pub lenient: bool,
    pub ignored: Vec<String>,
}

impl Reader {
    /// Reports unsupported content at `path`: an error when strict, a recorded path when lenient.
    pub fn unsupported(&mut self, path: String, what: &str) -> Result<(), XmlError> {
        if self.lenient {
            self.ignored.push(path);
            Ok(())
        } else {
            Err(XmlError {
                kind: XmlErrorKind::Unsupported,
                message: format!("unsupported XML {what} {path}: rvirt does not implement it"),
                path,
            })
        }
    }
}

impl<'n> El<'n> {
    /// A cursor on the document's root element.
    pub fn root(node: &'n Node) -> Self {
        El::new(node, format!("/{}", node.name))
    }

    fn new(node: &'n Node, path: String) -> Self {
        El {
            node,
            path,
            attr_used: vec![false; node.attrs.len()],
            child_used: vec![false; node.children.len()],
        }
    }

    /// This element's XPath-like location.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The location of attribute `name` of this element.
    pub fn attr_path(&self, name: &str) -> String {
        format!("{}/@{name}", self.path)
    }

    /// The node itself (for raw access).
    pub fn node(&self) -> &'n Node {
        self.node
    }

    /// The value of attribute `name`, marking it used.
    pub fn attr(&mut self, name: &str) -> Option<&'n str> {
        let node = self.node;
        for (i, (key, value)) in node.attrs.iter().enumerate() {
            if key == name {
                self.attr_used[i] = true;
                return Some(value.as_str());
            }
        }
        None
    }

    /// The text content (all direct character data).
    pub fn text(&self) -> &'n str {
        &self.node.text
    }

    /// Every child element named `name`, in order, marking them used.
    pub fn children(&mut self, name: &str) -> Vec<El<'n>> {
        let node = self.node;
        let count = node.children.iter().filter(|c| c.name == name).count();
        let mut out = Vec::with_capacity(count);
        let mut position = 0usize;
        for (i, child) in node.children.iter().enumerate() {
            if child.name == name {
                position += 1;
                self.child_used[i] = true;
                let path = if count > 1 {
                    format!("{}/{name}[{position}]", self.path)
                } else {
                    format!("{}/{name}", self.path)
                };
                out.push(El::new(child, path));
            }
        }
        out
    }

    /// The child element named `name`, if any; more than one is an error.
    pub fn child(&mut self, name: &str) -> Result<Option<El<'n>>, XmlError> {
        let mut found = self.children(name);
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            _ => Err(XmlError::invalid(
                format!("{}/{name}", self.path),
                format!("<{name}> may appear only once in <{}>", self.node.name),
            )),
        }
    }

    /// Every child element, in document order, marking them used.
    pub fn all_children(&mut self) -> Vec<El<'n>> {
        let node = self.node;
        let mut counts: std::collections::HashMap<&str, (usize, usize)> = std::collections::HashMap::new();
        for child in &node.children {
            counts.entry(child.name.as_str()).or_insert((0, 0)).0 += 1;
        }
        let mut out = Vec::with_capacity(node.children.len());
        for (i, child) in node.children.iter().enumerate() {
            self.child_used[i] = true;
            let entry = counts.entry(child.name.as_str()).or_insert((1, 0));
            entry.1 += 1;
            let path = if entry.0 > 1 {
                format!("{}/{}[{}]", self.path, child.name, entry.1)
            } else {
                format!("{}/{}", self.path, child.name)
            };
            out.push(El::new(child, path));
        }
        out
    }

    /// Reports every attribute and child the model did not consume.
    pub fn finish(self, reader: &mut Reader) -> Result<(), XmlError> {
        for (i, (key, _)) in self.node.attrs.iter().enumerate() {
            if self.attr_used[i] || key == "xmlns" || key.starts_with("xmlns:") {
                continue;
            }
            reader.unsupported(self.attr_path(key), "attribute")?;
        }
        if self.child_used.iter().all(|&u| u) {
            return Ok(());
        }
        // Sibling counts once, so that many unknown children stay linear.
        let mut counts: std::collections::HashMap<&str, (usize, usize)> = std::collections::HashMap::new();
        for child in &self.node.children {
            counts.entry(child.name.as_str()).or_insert((0, 0)).0 += 1;
        }
        for (i, child) in self.node.children.iter().enumerate() {
            let entry = counts.entry(child.name.as_str()).or_insert((1, 0));
            entry.1 += 1;
            if self.child_used[i] {
                continue;
            }
            let path = if entry.0 > 1 {
                format!("{}/{}[{}]", self.path, child.name, entry.1)
            } else {
                format!("{}/{}", self.path, child.name)
            };
            reader.unsupported(path, "element")?;
        }
        Ok(())
    }

    /// Marks everything inside as used, for elements whose whole content is handled elsewhere.
    pub fn consume_all(&mut self) {
        self.attr_used.iter_mut().for_each(|u| *u = true);
        self.child_used.iter_mut().for_each(|u| *u = true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_tree_with_text_entities_and_inner_ranges() {
        let xml = "<a x='1 &amp; 2'><b>t&lt;x&#65;</b><c/><m><p:q xmlns:p='u'>k</p:q></m></a>";
        let root = parse_document(xml).expect("parse");
        assert_eq!(root.name, "a");
        assert_eq!(root.attrs, vec![("x".to_owned(), "1 & 2".to_owned())]);
        assert_eq!(root.children[0].text, "t<xA");
        assert!(root.children[1].children.is_empty());
        assert_eq!(&xml[root.children[2].inner.clone()], "<p:q xmlns:p='u'>k</p:q>");
    }

    #[test]
    fn self_closing_with_slash_in_quoted_value_is_not_mistaken() {
        let root = parse_document("<a><b v='x/>'/><c v=\"/\"></c></a>").expect("parse");
        assert_eq!(root.children.len(), 2);
        assert_eq!(root.children[0].attrs[0].1, "x/>");
    }

    #[test]
    fn refuses_ill_formed_documents() {
        for bad in [
            "",
            "<a>",
            "<a></b>",
            "<a/><b/>",
            "text<a/>",
            "<a>&unknown;</a>",
            "<a x='1' x='2'/>",
            "<!DOCTYPE a><a/>",
            "<a>&#1;</a>",
        ] {
            let err = parse_document(bad).expect_err(bad);
            assert_eq!(err.kind, XmlErrorKind::Malformed, "{bad}: {err}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let xml = format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000));
        assert!(parse_document(&xml).is_err());
    }

    #[test]
    fn cursor_reports_leftovers_with_paths() {
        let root = parse_document("<d><x/><y a='1' b='2'/><y/></d>").expect("parse");
        let mut el = El::root(&root);
        let ys = el.children("y");
        assert_eq!(ys[0].path(), "/d/y[1]");
        let mut reader = Reader {
            lenient: true,
            ..Reader::default()
        };
        let mut first = El::new(ys[0].node, ys[0].path.clone());
        assert_eq!(first.attr("a"), Some("1"));
        first.finish(&mut reader).expect("lenient");
        el.finish(&mut reader).expect("lenient");
        assert_eq!(reader.ignored, vec!["/d/y[1]/@b".to_owned(), "/d/x".to_owned()]);
        let mut strict = Reader::default();
        let err = El::root(&root).finish(&mut strict).expect_err("strict");
        assert_eq!(err.kind, XmlErrorKind::Unsupported);
        assert_eq!(err.path, "/d/x");
    }
}
