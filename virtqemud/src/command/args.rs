//! The two syntaxes of QEMU's command line: JSON objects with keys in a fixed order (for
//! `-device`, `-blockdev`, `-object`, `-netdev`, `-audiodev`), and `key=value` lists whose
//! values have their commas doubled.

/// One JSON value of a property list.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// A string.
    Str(String),
    /// An unsigned number.
    Num(u64),
    /// A boolean.
    Bool(bool),
    /// A nested object.
    Obj(Props),
}

/// A JSON object whose keys keep the order they were added in (libvirt's order, so the
/// command line is stable and comparable with libvirt's).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Props(Vec<(&'static str, Value)>);

impl Props {
    /// An empty object.
    pub(crate) fn new() -> Props {
        Props(Vec::new())
    }

    /// Adds a string.
    pub(crate) fn s(mut self, key: &'static str, value: impl Into<String>) -> Props {
        self.0.push((key, Value::Str(value.into())));
        self
    }

    /// Adds a number.
    pub(crate) fn n(mut self, key: &'static str, value: u64) -> Props {
        self.0.push((key, Value::Num(value)));
        self
    }

    /// Adds a boolean.
    pub(crate) fn b(mut self, key: &'static str, value: bool) -> Props {
        self.0.push((key, Value::Bool(value)));
        self
    }

    /// Adds a nested object.
    pub(crate) fn o(mut self, key: &'static str, value: Props) -> Props {
        self.0.push((key, Value::Obj(value)));
        self
    }

    /// Adds a string when there is one.
    pub(crate) fn opt_s(self, key: &'static str, value: Option<impl Into<String>>) -> Props {
        match value {
            Some(v) => self.s(key, v),
            None => self,
        }
    }

    /// Adds a number when there is one.
    pub(crate) fn opt_n(self, key: &'static str, value: Option<u64>) -> Props {
        match value {
            Some(v) => self.n(key, v),
            None => self,
        }
    }

    /// The value of `key`, if set.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The compact JSON text (`{"driver":"virtio-blk-pci",...}`).
    pub(crate) fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&json_string(key));
            out.push(':');
            match value {
                Value::Str(s) => out.push_str(&json_string(s)),
                Value::Num(n) => out.push_str(&n.to_string()),
                Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                Value::Obj(o) => out.push_str(&o.to_json()),
            }
        }
        out.push('}');
        out
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    // Serializing a str cannot fail; fall back to a manual escape anyway rather than panic.
    serde_json::to_string(s)
        .unwrap_or_else(|_| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
}

/// `value` for a `key=value` list: QEMU's option parser reads `,,` as a literal comma.
pub(crate) fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_insertion_order_and_escapes_strings() {
        let p = Props::new()
            .s("driver", "file")
            .s("filename", "/tmp/a \"b\"")
            .n("size", 5)
            .b("read-only", true)
            .o("cache", Props::new().b("direct", false));
        assert_eq!(
            p.to_json(),
            r#"{"driver":"file","filename":"/tmp/a \"b\"","size":5,"read-only":true,"cache":{"direct":false}}"#
        );
    }

    #[test]
    fn escape_doubles_commas() {
        assert_eq!(escape("/tmp/a,b,,c"), "/tmp/a,,b,,,,c");
    }
}
