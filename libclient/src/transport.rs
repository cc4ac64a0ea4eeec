//! Channels to rvirt daemons over Unix sockets.
//!
//! The HTTP/2 authority is always `localhost`: servers reject a socket path as authority, which
//! is what some gRPC libraries send by default.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {path}")]
pub struct ConnectError {
    /// The socket.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: tonic::transport::Error,
}

/// Opens a channel to the daemon listening on the Unix socket at `path`, connecting now.
pub async fn unix_channel(path: &Path) -> Result<Channel, ConnectError> {
    let socket = path.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http_uri::Uri| {
            let socket = socket.clone();
            async move { tokio::net::UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| ConnectError {
            path: path.to_path_buf(),
            source,
        })
}

mod http_uri {
    pub use tonic::codegen::http::Uri;
}
