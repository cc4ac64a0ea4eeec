//! `rvirt-conf`: libvirt's XML formats as Rust models.
//!
//! Each model follows the same path: parse → fill defaults → validate → format, pure and without
//! I/O, so every rule is unit-testable and the daemons share one implementation.
//!
//! - [`xml`]: strict parsing (an element or attribute the model does not know is an error naming
//!   its XPath-like location) and formatting, shared by every model;
//! - [`secret`]: secret XML (virtsecretd);
//! - [`domain`]: domain XML (virtqemud);
//! - [`network`]: network XML (virtnetworkd);
//! - [`storage`]: storage pool and volume XML (virtstoraged).

pub mod domain;
pub mod network;
pub mod secret;
pub mod storage;
pub mod xml;

pub use xml::{XmlError, XmlErrorKind};
