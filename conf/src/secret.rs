//! libvirt's secret XML (`<secret>`): parse → fill defaults → validate → format.
//!
//! A secret's definition names it (UUID), says what it is for (`<usage>`: a volume path, a Ceph,
//! TLS or vTPM name, an iSCSI target) and how it is kept (`ephemeral`, `private`). The value is
//! not part of the XML. Rules follow libvirt's `secret_conf.c` and `secret.rng`:
//!
//! - a missing or empty `<uuid>` gets a random one; any UUID is stored in canonical lower-case;
//! - `ephemeral` and `private` are `yes` or `no` and default to `no`; the output always carries
//!   both, as libvirt's does;
//! - `<usage type='none'/>` is the same as no usage (libvirt accepts it, the schema does not);
//! - a usage needs its id (`<volume>`, `<name>` or `<target>`) and no other child; a volume path
//!   must be absolute and a name may contain neither `/` nor a new line (the schema's
//!   `absFilePath` and `objectName`), so that everything formatted validates against
//!   `secret.rng`;
//! - an empty `<description>` is no description.
//!
//! Anything else, an element or attribute the model does not know, is an error naming its path.

use serde::{Deserialize, Serialize};

use crate::xml::{self, XmlError, XmlErrorKind};

const ROOT: &str = "secret";

/// What a secret is used for: libvirt's `virSecretUsageType` (the numbers are libvirt's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecretUsageType {
    /// A passphrase for an encrypted volume; the id is the volume's path.
    Volume = 1,
    /// A Ceph (RBD) client key; the id is a free-form name.
    Ceph = 2,
    /// An iSCSI CHAP password; the id is the target.
    Iscsi = 3,
    /// A password for a TLS private key; the id is a free-form name.
    Tls = 4,
    /// A passphrase for an emulated TPM's state; the id is a free-form name.
    Vtpm = 5,
}

impl SecretUsageType {
    /// Every usage type, in libvirt's order.
    pub const ALL: [SecretUsageType; 5] = [
        SecretUsageType::Volume,
        SecretUsageType::Ceph,
        SecretUsageType::Iscsi,
        SecretUsageType::Tls,
        SecretUsageType::Vtpm,
    ];

    /// The `type` attribute's value (`volume`, `ceph`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SecretUsageType::Volume => "volume",
            SecretUsageType::Ceph => "ceph",
            SecretUsageType::Iscsi => "iscsi",
            SecretUsageType::Tls => "tls",
            SecretUsageType::Vtpm => "vtpm",
        }
    }

    /// The usage type named `name` in XML.
    pub fn from_name(name: &str) -> Option<SecretUsageType> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// libvirt's number (`VIR_SECRET_USAGE_TYPE_VOLUME` = 1, ...).
    pub fn number(self) -> i32 {
        self as i32
    }

    /// The usage type with libvirt's number `number`; `None` for 0 (no usage) and unknown ones.
    pub fn from_number(number: i32) -> Option<SecretUsageType> {
        Self::ALL.into_iter().find(|t| t.number() == number)
    }

    /// The element under `<usage>` that holds the id.
    pub fn id_element(self) -> &'static str {
        match self {
            SecretUsageType::Volume => "volume",
            SecretUsageType::Iscsi => "target",
            SecretUsageType::Ceph | SecretUsageType::Tls | SecretUsageType::Vtpm => "name",
        }
    }
}

impl std::fmt::Display for SecretUsageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a secret is used for, and the id within that usage.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretUsage {
    /// The usage type.
    pub usage_type: SecretUsageType,
    /// The volume path, Ceph/TLS/vTPM name or iSCSI target.
    pub id: String,
}

/// A parsed `<secret>` definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDef {
    /// The UUID, canonical (lower-case, hyphenated).
    pub uuid: String,
    /// The `<description>`, if any (never empty).
    pub description: Option<String>,
    /// The `<usage>`; `None` when the secret can only be found by UUID.
    pub usage: Option<SecretUsage>,
    /// Kept in memory only, never stored on disk.
    pub ephemeral: bool,
    /// The value is never revealed to clients.
    pub private: bool,
}

/// The document as serde reads it, before the rules are applied.
#[derive(Debug, Deserialize)]
struct RawSecret {
    #[serde(rename = "@ephemeral", default)]
    ephemeral: Option<String>,
    #[serde(rename = "@private", default)]
    private: Option<String>,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Debug, Deserialize)]
struct RawUsage {
    #[serde(rename = "@type", default)]
    usage_type: Option<String>,
    #[serde(default)]
    volume: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    target: Option<String>,
}

/// The document as it is formatted.
#[derive(Debug, Serialize)]
struct OutSecret<'a> {
    #[serde(rename = "@ephemeral")]
    ephemeral: &'static str,
    #[serde(rename = "@private")]
    private: &'static str,
    uuid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OutUsage<'a>>,
}

#[derive(Debug, Serialize)]
struct OutUsage<'a> {
    #[serde(rename = "@type")]
    usage_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    volume: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
}

fn yes_no(value: Option<String>, attribute: &str) -> Result<bool, XmlError> {
    match value.as_deref() {
        None | Some("no") => Ok(false),
        Some("yes") => Ok(true),
        Some(other) => Err(XmlError::invalid(
            format!("/{ROOT}/@{attribute}"),
            format!("invalid value {other:?} of '{attribute}': use yes or no"),
        )),
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

impl SecretDef {
    /// Parses a `<secret>` document, applying libvirt's defaults (a generated UUID) and rules.
    pub fn from_xml(text: &str) -> Result<SecretDef, XmlError> {
        let raw: RawSecret = xml::from_str(ROOT, text)?;
        let ephemeral = yes_no(raw.ephemeral, "ephemeral")?;
        let private = yes_no(raw.private, "private")?;
        let uuid = match non_empty(raw.uuid) {
            None => xml::new_uuid(),
            Some(text) => xml::canonical_uuid(&text).ok_or_else(|| {
                XmlError::invalid(
                    format!("/{ROOT}/uuid"),
                    format!("malformed UUID {text:?}: use 32 hexadecimal digits, optionally hyphenated"),
                )
            })?,
        };
        let usage = match raw.usage {
            None => None,
            Some(usage) => parse_usage(usage)?,
        };
        let def = SecretDef {
            uuid,
            description: non_empty(raw.description),
            usage,
            ephemeral,
            private,
        };
        def.validate()?;
        Ok(def)
    }

    /// Checks the rules a definition built in code must follow too (the schema's patterns).
    pub fn validate(&self) -> Result<(), XmlError> {
        if xml::canonical_uuid(&self.uuid).as_deref() != Some(self.uuid.as_str()) {
            return Err(XmlError::invalid(
                format!("/{ROOT}/uuid"),
                format!("UUID {:?} is not in canonical form", self.uuid),
            ));
        }
        let Some(usage) = &self.usage else {
            return Ok(());
        };
        let path = format!("/{ROOT}/usage/{}", usage.usage_type.id_element());
        match usage.usage_type {
            SecretUsageType::Volume => {
                if !is_abs_file_path(&usage.id) {
                    return Err(XmlError::invalid(
                        path,
                        format!(
                            "volume path {:?} is not absolute: give the volume's full path",
                            usage.id
                        ),
                    ));
                }
            }
            _ => {
                if usage.id.is_empty() || usage.id.contains(['/', '\n']) {
                    return Err(XmlError::invalid(
                        path,
                        format!(
                            "{} usage name {:?} may contain neither '/' nor a new line",
                            usage.usage_type, usage.id
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Formats the definition as libvirt does: both attributes, `<uuid>`, then `<description>`
    /// and `<usage>` when present.
    pub fn to_xml(&self) -> Result<String, XmlError> {
        let usage = self.usage.as_ref().map(|u| {
            let id = Some(u.id.as_str());
            OutUsage {
                usage_type: u.usage_type.as_str(),
                volume: id.filter(|_| u.usage_type.id_element() == "volume"),
                name: id.filter(|_| u.usage_type.id_element() == "name"),
                target: id.filter(|_| u.usage_type.id_element() == "target"),
            }
        });
        let out = OutSecret {
            ephemeral: if self.ephemeral { "yes" } else { "no" },
            private: if self.private { "yes" } else { "no" },
            uuid: &self.uuid,
            description: self.description.as_deref(),
            usage,
        };
        xml::to_string(ROOT, &out)
    }

    /// The usage type, `None` when the secret has no usage.
    pub fn usage_type(&self) -> Option<SecretUsageType> {
        self.usage.as_ref().map(|u| u.usage_type)
    }

    /// The usage id; empty when the secret has no usage.
    pub fn usage_id(&self) -> &str {
        self.usage.as_ref().map_or("", |u| u.id.as_str())
    }
}

fn parse_usage(raw: RawUsage) -> Result<Option<SecretUsage>, XmlError> {
    let type_path = format!("/{ROOT}/usage/@type");
    let Some(type_name) = non_empty(raw.usage_type) else {
        return Err(XmlError::invalid(
            type_path,
            "<usage> has no type: use type='volume', 'ceph', 'iscsi', 'tls' or 'vtpm'",
        ));
    };
    let ids = [("volume", raw.volume), ("name", raw.name), ("target", raw.target)];
    if type_name == "none" {
        // libvirt's "no usage": nothing may be inside.
        if let Some((element, _)) = ids.iter().find(|(_, v)| v.is_some()) {
            return Err(unexpected_child(element, "none"));
        }
        return Ok(None);
    }
    let Some(usage_type) = SecretUsageType::from_name(&type_name) else {
        return Err(XmlError {
            kind: XmlErrorKind::Unsupported,
            path: type_path,
            message: format!("unknown secret usage type {type_name:?}: use volume, ceph, iscsi, tls or vtpm"),
        });
    };
    let wanted = usage_type.id_element();
    let mut id = None;
    for (element, value) in ids {
        if element == wanted {
            id = non_empty(value);
        } else if value.is_some() {
            return Err(unexpected_child(element, usage_type.as_str()));
        }
    }
    let Some(id) = id else {
        return Err(XmlError::invalid(
            format!("/{ROOT}/usage/{wanted}"),
            format!("{usage_type} usage needs its id in <{wanted}>, which is missing or empty"),
        ));
    };
    Ok(Some(SecretUsage { usage_type, id }))
}

fn unexpected_child(element: &str, usage_type: &str) -> XmlError {
    XmlError {
        kind: XmlErrorKind::Unsupported,
        path: format!("/{ROOT}/usage/{element}"),
        message: format!("<{element}> does not belong in a usage of type {usage_type:?}"),
    }
}

/// The schema's `absFilePath`: `/` or a drive letter and `:\`, then at least one character.
fn is_abs_file_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    let unix = bytes.first() == Some(&b'/') && path.chars().count() >= 2;
    let drive = bytes.len() >= 4 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' && bytes[2] == b'\\';
    (unix || drive) && !path.contains('\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SecretDef, XmlError> {
        SecretDef::from_xml(text)
    }

    #[test]
    fn minimal_secret_gets_a_uuid_and_defaults() {
        let def = parse("<secret/>").expect("minimal");
        assert!(xml::canonical_uuid(&def.uuid).is_some());
        assert!(!def.ephemeral && !def.private);
        assert_eq!(def.usage, None);
        assert_eq!(def.usage_id(), "");
        let again = parse("<secret/>").expect("minimal");
        assert_ne!(def.uuid, again.uuid, "each parse generates a new UUID");
    }

    #[test]
    fn uuid_is_stored_canonical() {
        let def = parse("<secret><uuid>6695EB01F6A4830479AA97F2502E193F</uuid></secret>").expect("parse");
        assert_eq!(def.uuid, "6695eb01-f6a4-8304-79aa-97f2502e193f");
    }

    #[test]
    fn empty_uuid_and_description_are_absent() {
        let def = parse("<secret><uuid></uuid><description/></secret>").expect("parse");
        assert!(xml::canonical_uuid(&def.uuid).is_some());
        assert_eq!(def.description, None);
    }

    #[test]
    fn bad_uuid_is_an_error_at_its_path() {
        let err = parse("<secret><uuid>not-a-uuid</uuid></secret>").expect_err("bad uuid");
        assert_eq!(err.kind, XmlErrorKind::Invalid);
        assert_eq!(err.path, "/secret/uuid");
    }

    #[test]
    fn bad_yes_no_is_an_error_at_its_path() {
        let err = parse("<secret private='maybe'/>").expect_err("bad private");
        assert_eq!(err.path, "/secret/@private");
        let err = parse("<secret ephemeral='1'/>").expect_err("bad ephemeral");
        assert_eq!(err.path, "/secret/@ephemeral");
    }

    #[test]
    fn unknown_usage_type_is_unsupported() {
        let err = parse("<secret><usage type='nfs'><name>x</name></usage></secret>").expect_err("type");
        assert_eq!(err.kind, XmlErrorKind::Unsupported);
        assert_eq!(err.path, "/secret/usage/@type");
        assert!(err.message.contains("nfs"), "{}", err.message);
    }

    #[test]
    fn usage_without_type_is_an_error() {
        let err = parse("<secret><usage><name>x</name></usage></secret>").expect_err("no type");
        assert_eq!(err.path, "/secret/usage/@type");
    }

    #[test]
    fn missing_usage_id_is_an_error_naming_the_element() {
        for (usage_type, element) in [
            ("volume", "volume"),
            ("ceph", "name"),
            ("iscsi", "target"),
            ("tls", "name"),
            ("vtpm", "name"),
        ] {
            let err =
                parse(&format!("<secret><usage type='{usage_type}'/></secret>")).expect_err("missing id");
            assert_eq!(err.kind, XmlErrorKind::Invalid, "{usage_type}");
            assert_eq!(err.path, format!("/secret/usage/{element}"), "{usage_type}");
            let err = parse(&format!(
                "<secret><usage type='{usage_type}'><{element}></{element}></usage></secret>"
            ))
            .expect_err("empty id");
            assert_eq!(err.path, format!("/secret/usage/{element}"), "{usage_type}");
        }
    }

    #[test]
    fn id_element_of_another_usage_type_is_refused() {
        let err = parse("<secret><usage type='ceph'><volume>/a</volume><name>x</name></usage></secret>")
            .expect_err("volume under ceph");
        assert_eq!(err.kind, XmlErrorKind::Unsupported);
        assert_eq!(err.path, "/secret/usage/volume");
    }

    #[test]
    fn usage_type_none_means_no_usage() {
        let def = parse("<secret><usage type='none'/></secret>").expect("none");
        assert_eq!(def.usage, None);
        let text = def.to_xml().expect("format");
        assert!(!text.contains("usage"), "{text}");
    }

    #[test]
    fn relative_volume_path_is_refused() {
        let err = parse("<secret><usage type='volume'><volume>images/a.img</volume></usage></secret>")
            .expect_err("relative");
        assert_eq!(err.path, "/secret/usage/volume");
    }

    #[test]
    fn name_with_a_slash_is_refused() {
        let err =
            parse("<secret><usage type='ceph'><name>pool/client</name></usage></secret>").expect_err("slash");
        assert_eq!(err.path, "/secret/usage/name");
    }

    #[test]
    fn unknown_element_and_attribute_name_their_path() {
        let err = parse("<secret><colour>red</colour></secret>").expect_err("element");
        assert_eq!(err.kind, XmlErrorKind::Unsupported);
        assert_eq!(err.path, "/secret/colour");
        let err = parse("<secret><usage type='tls' extra='1'><name>a</name></usage></secret>")
            .expect_err("attribute");
        assert_eq!(err.path, "/secret/usage/@extra");
    }

    #[test]
    fn special_characters_survive_a_round_trip() {
        let def = parse(
            "<secret><description>a &lt;b&gt; &amp; 'c' \"d\"</description>\
             <usage type='iscsi'><target>iqn.2013-07.com.example:t&amp;1</target></usage></secret>",
        )
        .expect("parse");
        assert_eq!(def.description.as_deref(), Some("a <b> & 'c' \"d\""));
        let again = parse(&def.to_xml().expect("format")).expect("reparse");
        assert_eq!(again, def);
    }

    #[test]
    fn usage_type_numbers_are_libvirts() {
        assert_eq!(SecretUsageType::Volume.number(), 1);
        assert_eq!(SecretUsageType::Vtpm.number(), 5);
        assert_eq!(SecretUsageType::from_number(3), Some(SecretUsageType::Iscsi));
        assert_eq!(SecretUsageType::from_number(0), None);
    }
}
