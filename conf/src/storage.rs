//! Storage pool and volume XML (virtstoraged): libvirt's `<pool>` and `<volume>` documents.
//!
//! - [`pool`]: `<pool>` — type, name, UUID, sizes, source, target, features;
//! - [`vol`]: `<volume>` — parsed in the context of its pool, whose type decides which formats
//!   exist and which defaults apply.
//!
//! Both follow the crate's path: strict parse ([`crate::xml::from_str`]), then `post_parse`
//! (libvirt's defaults and rules: units scaled to bytes, UUID generated, paths sanitized,
//! elements that only describe run-time state dropped), then format with
//! [`crate::xml::to_string`]. The formatted XML is what libvirt would format for the same input
//! and validates against `storagepool.rng` / `storagevol.rng`.

pub mod pool;
pub mod vol;

pub use pool::*;
pub use vol::*;

use serde::{Deserialize, Serialize};

use crate::xml::XmlError;

/// A size element as XML carries it: `<capacity unit='G'>5</capacity>`. After `post_parse` the
/// unit is `bytes` (or `B` for `clusterSize`) and the value is in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaledXml {
    /// The unit (`bytes`, `KiB`, `G`, `MB`, ...); none means bytes.
    #[serde(rename = "@unit", default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The number, as written.
    #[serde(rename = "$text", default)]
    pub value: String,
}

impl ScaledXml {
    /// `value` bytes, formatted with `unit` (`bytes` or `B`).
    pub fn bytes(value: u64, unit: &str) -> Self {
        ScaledXml {
            unit: Some(unit.to_owned()),
            value: value.to_string(),
        }
    }

    /// The value in bytes, once normalized; 0 when it is not a number.
    pub fn as_bytes(&self) -> u64 {
        self.value.trim().parse().unwrap_or(0)
    }
}

/// Scales `value` written with `unit` to bytes, following libvirt's unit names: none, `b`,
/// `byte`, `bytes` are bytes; `k`, `KiB`, `M`, `MiB`, ... `E`, `EiB` are powers of 1024; `KB`,
/// `MB`, ... `EB` are powers of 1000. Fails above `limit`.
pub fn scale_size(value: &str, unit: Option<&str>, limit: u64) -> Result<u64, String> {
    let number: u64 = value.trim().parse().map_err(|_| {
        format!(
            "malformed size '{}': expected a non-negative integer",
            value.trim()
        )
    })?;
    let unit = unit.map(str::trim).unwrap_or("");
    let scale: u64 = if unit.is_empty()
        || ["b", "byte", "bytes"]
            .iter()
            .any(|u| unit.eq_ignore_ascii_case(u))
    {
        1
    } else {
        let rest = &unit[unit.chars().next().map_or(0, char::len_utf8)..];
        let base: u64 = if rest.is_empty() || rest.eq_ignore_ascii_case("ib") {
            1024
        } else if rest.eq_ignore_ascii_case("b") {
            1000
        } else {
            return Err(format!("unknown size unit '{unit}'"));
        };
        let power = match unit.chars().next().map(|c| c.to_ascii_lowercase()) {
            Some('k') => 1,
            Some('m') => 2,
            Some('g') => 3,
            Some('t') => 4,
            Some('p') => 5,
            Some('e') => 6,
            _ => return Err(format!("unknown size unit '{unit}'")),
        };
        base.pow(power)
    };
    if number > 0 && number > limit / scale {
        return Err(format!(
            "size {value} {unit} is too large: the limit is {limit} bytes"
        ));
    }
    Ok(number * scale)
}

/// `<permissions>`: mode, owner, group and security label of a pool directory or a volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    /// Octal mode; after `post_parse`, written as libvirt does (`0755`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Owner uid; `-1` (none) is dropped by `post_parse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Group gid; `-1` (none) is dropped by `post_parse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Security label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl Permissions {
    /// Checks and canonicalizes the values; `at` is the element's XPath.
    pub fn post_parse(&mut self, at: &str) -> Result<(), XmlError> {
        if let Some(mode) = &self.mode {
            let parsed = u32::from_str_radix(mode.trim(), 8)
                .ok()
                .filter(|m| m & !0o777 == 0)
                .ok_or_else(|| {
                    XmlError::invalid(
                        format!("{at}/mode"),
                        format!("malformed octal mode '{}': use 0 to 0777", mode.trim()),
                    )
                })?;
            self.mode = Some(format!("0{parsed:o}"));
        }
        for (field, what) in [(&mut self.owner, "owner"), (&mut self.group, "group")] {
            if let Some(text) = field.as_ref() {
                let id = parse_id(text).ok_or_else(|| {
                    XmlError::invalid(
                        format!("{at}/{what}"),
                        format!("malformed {what} '{}': use a numeric id", text.trim()),
                    )
                })?;
                *field = if id == -1 { None } else { Some(id.to_string()) };
            }
        }
        Ok(())
    }

    /// The mode, when set.
    pub fn mode_bits(&self) -> Option<u32> {
        self.mode
            .as_deref()
            .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
    }

    /// The owner uid, when set.
    pub fn uid(&self) -> Option<u32> {
        self.owner.as_deref().and_then(|t| t.trim().parse().ok())
    }

    /// The group gid, when set.
    pub fn gid(&self) -> Option<u32> {
        self.group.as_deref().and_then(|t| t.trim().parse().ok())
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.mode.is_none() && self.owner.is_none() && self.group.is_none() && self.label.is_none()
    }
}

/// An id as libvirt reads it (XPath `number()`): decimal, `-1` for "none", any 32-bit id.
fn parse_id(text: &str) -> Option<i64> {
    let value: i64 = text.trim().parse().ok()?;
    if value == -1 || (0..=i64::from(u32::MAX)).contains(&value) {
        Some(value)
    } else {
        None
    }
}

/// An element whose only content is a `type` attribute: `<format type='qcow2'/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeAttr {
    /// The value.
    #[serde(rename = "@type")]
    pub r#type: String,
}

/// An element whose only content is a `path` attribute: `<dir path='/srv'/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathAttr {
    /// The path.
    #[serde(rename = "@path")]
    pub path: String,
}

/// An element whose only content is a `name` attribute: `<vendor name='x'/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameAttr {
    /// The name.
    #[serde(rename = "@name")]
    pub name: String,
}

/// An empty element used as a flag: `<nocow/>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// libvirt's path sanitizing: repeated slashes collapse to one and a trailing slash goes
/// (a leading `//` stays, as POSIX gives it a meaning).
pub fn sanitize_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let keep_double = path.starts_with("//") && !path.starts_with("///");
    let mut prev_slash = false;
    for (i, c) in path.chars().enumerate() {
        if c == '/' {
            if prev_slash && !(keep_double && i == 1) {
                continue;
            }
            prev_slash = true;
        } else {
            prev_slash = false;
        }
        out.push(c);
    }
    while out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_follow_libvirt() {
        assert_eq!(scale_size("1", Some("MiB"), u64::MAX), Ok(1 << 20));
        assert_eq!(scale_size("1", Some("M"), u64::MAX), Ok(1 << 20));
        assert_eq!(scale_size("1", Some("MB"), u64::MAX), Ok(1_000_000));
        assert_eq!(scale_size("5", Some("G"), u64::MAX), Ok(5 << 30));
        assert_eq!(scale_size("1", Some("TiB"), u64::MAX), Ok(1 << 40));
        assert_eq!(scale_size("7", Some("bytes"), u64::MAX), Ok(7));
        assert_eq!(scale_size("7", None, u64::MAX), Ok(7));
        assert!(scale_size("1", Some("parsecs"), u64::MAX).is_err());
        assert!(scale_size("-1", None, u64::MAX).is_err());
        assert!(scale_size("9", Some("EiB"), i64::MAX as u64).is_err());
    }

    #[test]
    fn paths_are_sanitized() {
        assert_eq!(
            sanitize_path("///var/////lib/libvirt/images//"),
            "/var/lib/libvirt/images"
        );
        assert_eq!(sanitize_path("/"), "/");
        assert_eq!(sanitize_path("//net/share"), "//net/share");
    }

    #[test]
    fn permissions_are_canonical() {
        let mut p = Permissions {
            mode: Some("0".into()),
            owner: Some("0744".into()),
            group: Some("-1".into()),
            label: None,
        };
        p.post_parse("/volume/target/permissions").expect("valid");
        assert_eq!(p.mode.as_deref(), Some("00"));
        assert_eq!(p.owner.as_deref(), Some("744"));
        assert_eq!(p.group, None);
        let mut bad = Permissions {
            mode: Some("1777".into()),
            ..Permissions::default()
        };
        let err = bad
            .post_parse("/pool/target/permissions")
            .expect_err("sticky bit");
        assert_eq!(err.path, "/pool/target/permissions/mode");
    }
}
