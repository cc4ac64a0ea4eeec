//! rvirt's public gRPC contract.
//!
//! - [`v1`]: the messages, clients and servers generated from `proto/rvirt/v1/*.proto`.
//! - [`access`]: the access each RPC declares, generated from its `(rvirt.v1.access)` option.
//! - [`error`]: building and reading the `rvirt.v1.Error` detail carried by every failed call.
//! - [`FILE_DESCRIPTOR_SET`]: the compiled descriptors, for gRPC server reflection.

pub mod access;
pub mod error;

/// Generated code for the `rvirt.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("rvirt.v1");
}

/// The messages that carry secret values have no derived `Debug`: this one prints no bytes.
macro_rules! redacted_debug {
    ($($name:ident),*) => {$(
        impl std::fmt::Debug for v1::$name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), " { <redacted> }"))
            }
        }
    )*};
}

redacted_debug!(
    SetSecretValueRequest,
    GetSecretValueResponse,
    GetSecretValueInternalResponse
);

/// The encoded `FileDescriptorSet` of the whole contract, with its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rvirt_descriptor.bin"));

/// The gRPC metadata key that carries the connection URI (`qemu:///system`, `test:///default`).
pub const URI_METADATA_KEY: &str = "rvirt-uri";
