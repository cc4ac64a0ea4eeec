//! `rvirt-conf`: libvirt's XML formats as Rust models.
//!
//! Each model follows the same path: parse → fill defaults → validate → format, pure and without
//! I/O, so every rule is unit-testable and the daemons share one implementation. The models arrive
//! with the drivers that need them: domains with virtqemud, networks with virtnetworkd, pools and
//! volumes with virtstoraged, secrets with virtsecretd.
