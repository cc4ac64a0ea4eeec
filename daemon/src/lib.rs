//! `rvirt-daemon`: the runtime every rvirt daemon shares.
//!
//! A daemon crate implements [`Driver`] (its gRPC services, whether it is busy, how it reloads)
//! and calls [`main`] from its `main.rs`. The runtime owns the rest:
//!
//! - paths come from [`rvirt::paths`], shared with clients;
//! - [`config`]: the daemon's configuration file, with libvirt's keys;
//! - [`listen`]: the read-write, read-only and admin sockets, bound with libvirt's permissions or
//!   passed by systemd socket activation;
//! - [`pidfile`]: the lock that keeps a second instance out;
//! - [`clients`]: caller identity from SO_PEERCRED and the registry of connected clients;
//! - [`access`]: the one interceptor that enforces the access table;
//! - [`policy`]: the access policy file's allow and deny rules;
//! - [`admin`]: the admin service, implemented once for every daemon;
//! - [`host`]: the generic parts of the host service (version, hostname, node info);
//! - [`logging`]: tracing with run-time filters;
//! - [`events`] (re-exported from `rvirt::events`, which the in-process test driver shares):
//!   sequenced, resumable event logs behind every `Watch*Events` RPC;
//! - [`atomic`]: crash-safe writes of configuration and state;
//! - [`journal`]: durable definition files at the cost of one disk flush each;
//! - [`server`]: readiness notification, signals (SIGTERM drains, SIGHUP reloads), idle exit.

pub mod access;
pub mod admin;
pub mod atomic;
pub mod busy_poll;
pub mod clients;
pub mod config;
pub mod host;
pub mod journal;
pub mod launch;
pub mod listen;
pub mod logging;

pub mod pidfile;
pub mod policy;
pub mod reflection;
pub mod server;

pub use clients::ClientInfo;
pub use rvirt::events;
pub use server::{DaemonArgs, DaemonContext, DaemonSpec, Driver, ServiceSet, main};
