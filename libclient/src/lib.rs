//! `rvirt`, the client library.
//!
//! - [`paths`]: where daemons put their sockets and state, in system and session mode, under
//!   `RVIRT_ROOT` when it is set; the daemons bind where clients look because both use this.
//! - [`transport`]: gRPC channels to a daemon's Unix socket.
//! - [`tls`]: remote connections: the PKI layout, TLS client configuration (feature `tls`),
//!   and errors that name why a remote connection failed.
//!
//! URIs, `Connect`, typed handles, event streams and the in-process test driver build on these.
//!
//! Typed handles mirror libvirt's objects: [`Domain`], [`Network`], [`StoragePool`] and
//! [`StorageVol`] (with sparse-aware upload and download), [`Secret`]; each category's events
//! come as resumable [`watch::Subscription`]s.

pub mod autostart;
pub mod connect;
pub mod domain;
pub mod error;
pub mod events;
pub mod host;
pub mod network;
pub mod paths;
pub mod route;
pub mod secret;
pub mod storage;
pub mod test_driver;
pub mod tls;
pub mod transport;
pub mod uri;
pub mod watch;

pub use connect::{Connect, OpenOptions};
pub use domain::Domain;
pub use error::{Error, Result};
pub use network::Network;
pub use secret::Secret;
pub use storage::{StoragePool, StorageVol, Transfer};
