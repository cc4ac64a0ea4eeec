//! The end-to-end tests, in one test binary: one link instead of one per area, and one copy of
//! the harness and its dependencies on disk (a CI machine's disk is not large). Each area is a
//! module; `cargo nextest` still runs every test in a process of its own. The session test,
//! which changes the process's environment, is `tests/session.rs`, a binary of its own.

mod guest_image;
mod networks;
mod policy;
mod proxy;
mod proxy_streams;
mod proxy_tls;
mod python_client;
mod qemu_caps;
mod qemu_domains;
mod qemu_resources;
mod runtime;
mod rvirsh_secrets;
mod secrets;
mod storage;
mod storage_luks;
