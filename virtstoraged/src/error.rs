//! The driver's error: a libvirt error number and a sentence saying what failed and what to do,
//! mapped once to a gRPC status with an `rvirt.v1.Error` detail.

use rvirt_conf::XmlError;
use rvirt_proto::error::to_status;
use rvirt_proto::v1::{Error, ErrorCode, ErrorDomain};

/// A failed storage operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StorageError {
    /// libvirt's error number.
    pub code: ErrorCode,
    /// What failed and what to do.
    pub message: String,
    /// For XML errors, where.
    pub xml_path: Option<String>,
}

/// The driver's result.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl StorageError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        StorageError {
            code,
            message: message.into(),
            xml_path: None,
        }
    }

    /// `INVALID_ARG`.
    pub fn invalid_arg(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArg, message)
    }

    /// `OPERATION_INVALID`: the object is in the wrong state.
    pub fn op_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::OperationInvalid, message)
    }

    /// `OPERATION_FAILED`.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::OperationFailed, message)
    }

    /// `OPERATION_UNSUPPORTED`.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::OperationUnsupported, message)
    }

    /// `INTERNAL_ERROR`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InternalError, message)
    }

    /// `SYSTEM_ERROR` for a failed system call on `what`.
    pub fn io(what: impl std::fmt::Display, e: &std::io::Error) -> Self {
        Self::new(ErrorCode::SystemError, format!("{what}: {e}"))
    }

    /// `NO_STORAGE_POOL`.
    pub fn no_pool(what: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorCode::NoStoragePool,
            format!("Storage pool {what} not found: check the name with 'rvirsh pool-list --all'"),
        )
    }

    /// `NO_STORAGE_VOL`.
    pub fn no_vol(what: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorCode::NoStorageVol,
            format!("Storage volume {what} not found: check the name with 'rvirsh vol-list POOL'"),
        )
    }

    /// `XML_ERROR` from a parse failure.
    pub fn xml(kind: &str, e: XmlError) -> Self {
        StorageError {
            code: ErrorCode::XmlError,
            message: format!("Invalid {kind} XML: {}", e.message),
            xml_path: Some(e.path),
        }
    }
}

impl From<StorageError> for tonic::Status {
    fn from(e: StorageError) -> tonic::Status {
        to_status(&Error {
            code: e.code as i32,
            domain: ErrorDomain::Storage as i32,
            message: e.message,
            xml_path: e.xml_path.unwrap_or_default(),
            ..Error::default()
        })
    }
}
