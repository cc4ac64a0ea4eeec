//! libvirt's domain XML (`<domain>`): parse → fill defaults → validate → format.
//!
//! [`DomainDef::parse`] reads the subset of libvirt's domain XML that rvirt implements (the
//! table in `docs/domain-xml.md`), fills in every default libvirt's QEMU driver fills at define
//! time — including implicit devices and PCI, drive and USB addresses — and checks libvirt's
//! rules. [`DomainDef::format`] writes it back as libvirt would. Anything outside the supported
//! subset is an [`XmlError`] of kind [`XmlErrorKind::Unsupported`](crate::XmlErrorKind) whose
//! `path` names it (`/domain/devices/disk[2]/serial`); a lenient parse
//! ([`ParseFlags::lenient`]) instead drops it and lists it in
//! [`DomainDef::ignored_paths`].
//!
//! The model is pure data ([`model`]); defaults that depend on what the QEMU binary offers are
//! taken from a [`QemuDefaults`] ([`DomainDef::parse_with`]); the questions "what is the
//! default X for this machine type" are answered by the small functions in [`machine`], which
//! the driver can call too.
//!
//! Parsing is hand-written over quick-xml's pull reader (module `dom`) rather than serde: every
//! refusal must name its element, devices must keep document order, and `<metadata>` must be
//! kept byte for byte — none of which serde's `$value` enums allow.
//!
//! ```
//! use rvirt_conf::domain::{DomainDef, FormatFlags, ParseFlags};
//!
//! let def = DomainDef::parse(
//!     "<domain type='kvm'><name>vm</name><memory unit='GiB'>1</memory>\
//!      <os><type arch='x86_64' machine='q35'>hvm</type></os></domain>",
//!     ParseFlags::default(),
//! )
//! .expect("valid");
//! assert_eq!(def.memory.total_kib, 1024 * 1024);
//! let xml = def.format(FormatFlags::default()).expect("formats");
//! assert!(xml.contains("<controller type='pci' index='0' model='pcie-root'/>"));
//! ```

mod address;
mod dom;
mod format;
pub mod fragment;
pub mod machine;
pub mod metadata;
pub mod model;
mod parse;
mod postparse;
pub mod units;

pub use address::{disk_name_index, usb_ports};
pub use machine::{MachineFamily, QemuDefaults};
pub use model::*;
pub use parse::generate_mac;

use crate::xml::XmlError;

/// How to read a domain XML document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseFlags {
    /// Read a persistent configuration (libvirt's `VIR_DOMAIN_DEF_PARSE_INACTIVE`): runtime
    /// state in the document — the domain `id`, automatic device aliases, allocated pty paths,
    /// generated tap names, ports chosen by `autoport` — is dropped. Clear it to read the live
    /// XML of a running domain (a status file).
    pub inactive: bool,
    /// Accept elements and attributes outside the supported subset: they are dropped (not kept)
    /// and their paths listed in [`DomainDef::ignored_paths`]. Values the model knows but does
    /// not support (`<disk device='floppy'>`) are still errors.
    pub lenient: bool,
}

impl Default for ParseFlags {
    /// Strict parsing of a persistent configuration.
    fn default() -> Self {
        ParseFlags {
            inactive: true,
            lenient: false,
        }
    }
}

impl ParseFlags {
    /// Strict, for live (running) XML.
    pub fn live() -> Self {
        ParseFlags {
            inactive: false,
            lenient: false,
        }
    }

    /// Lenient, for a persistent configuration.
    pub fn lenient() -> Self {
        ParseFlags {
            inactive: true,
            lenient: true,
        }
    }
}

/// How to write a domain XML document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatFlags {
    /// Write the persistent configuration (libvirt's `VIR_DOMAIN_XML_INACTIVE`): no `id`, no
    /// automatic aliases (user aliases `ua-*` stay), no pty paths, `port='-1'` for autoport
    /// graphics. Clear it for the live XML of a running domain.
    pub inactive: bool,
    /// Include secrets (libvirt's `VIR_DOMAIN_XML_SECURE`). The supported subset has no secret
    /// attribute yet (graphics passwords are not supported), so this changes nothing today; it
    /// exists so callers pass the caller's intent through from the start.
    pub secure: bool,
}

impl Default for FormatFlags {
    /// The persistent configuration, without secrets.
    fn default() -> Self {
        FormatFlags {
            inactive: true,
            secure: false,
        }
    }
}

impl FormatFlags {
    /// The live XML of a running domain, without secrets.
    pub fn live() -> Self {
        FormatFlags {
            inactive: false,
            secure: false,
        }
    }
}

impl DomainDef {
    /// Parses `xml`, fills libvirt's defaults for a QEMU ≥ 10 x86_64 emulator
    /// ([`QemuDefaults::default`]) and validates.
    pub fn parse(xml: &str, flags: ParseFlags) -> Result<DomainDef, XmlError> {
        DomainDef::parse_with(xml, flags, &QemuDefaults::default())
    }

    /// Parses `xml`, fills libvirt's defaults for the emulator described by `defaults` and
    /// validates.
    pub fn parse_with(xml: &str, flags: ParseFlags, defaults: &QemuDefaults) -> Result<DomainDef, XmlError> {
        let root = dom::parse_document(xml)?;
        let mut ctx = parse::Ctx {
            reader: dom::Reader {
                lenient: flags.lenient,
                ignored: Vec::new(),
            },
            inactive: flags.inactive,
            defaults,
            default_video: VideoModel::Cirrus,
        };
        let mut def = parse::parse_domain(xml, &root, &mut ctx)?;
        drop(root);
        def.ignored = ctx.reader.ignored;
        postparse::post_parse(&mut def, defaults)?;
        postparse::validate(&def)?;
        let family = postparse::family(&def);
        address::assign_pci_addresses(&mut def, family, defaults)?;
        postparse::sync_console_alias(&mut def);
        Ok(def)
    }

    /// Writes the definition as libvirt's domain XML.
    ///
    /// Fails only for a definition changed in code into something XML cannot carry (a
    /// namespace prefix that is not a name).
    pub fn format(&self, flags: FormatFlags) -> Result<String, XmlError> {
        for (prefix, _) in &self.namespaces {
            let valid = !prefix.is_empty()
                && prefix
                    .chars()
                    .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !prefix.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.');
            if !valid {
                return Err(XmlError::invalid(
                    "/domain",
                    format!("namespace prefix '{prefix}' is not a valid XML name"),
                ));
            }
        }
        Ok(format::format(
            self,
            format::Mode {
                inactive: flags.inactive,
            },
        ))
    }

    /// Checks the definition against libvirt's rules again (after changing it in code).
    pub fn validate(&self) -> Result<(), XmlError> {
        postparse::validate(self)
    }

    /// Gives every USB input device without an address a port on USB controller 0, as libvirt
    /// does when a domain starts (not at define time). Fails when USB is disabled
    /// (`model='none'`) or when more ports are needed than the controller has (no hubs).
    pub fn assign_usb_addresses(&mut self) -> Result<(), XmlError> {
        address::assign_usb_addresses(self)
    }

    /// The paths of elements and attributes a lenient parse dropped.
    pub fn ignored_paths(&self) -> &[String] {
        &self.ignored
    }

    /// The chipset family of the definition's machine type.
    pub fn machine_family(&self) -> MachineFamily {
        postparse::family(self)
    }
}
