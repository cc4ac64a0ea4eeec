//! The client library's error: libvirt's error number and a sentence, from the daemon's
//! `rvirt.v1.Error` detail or from the client itself (URI, connection).

use rvirt_proto::v1::{ErrorCode, ErrorDomain};

/// A failed call or connection.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// libvirt's error number.
    pub code: ErrorCode,
    /// Which part of rvirt raised it.
    pub domain: ErrorDomain,
    /// What failed and what to do.
    pub message: String,
    /// For XML errors, where.
    pub xml_path: String,
}

impl Error {
    /// An error raised by the client itself.
    pub fn new(code: ErrorCode, domain: ErrorDomain, message: impl Into<String>) -> Self {
        Error {
            code,
            domain,
            message: message.into(),
            xml_path: String::new(),
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let detail = rvirt_proto::error::from_status(&status);
        Error {
            code: detail.code(),
            domain: detail.domain(),
            message: detail.message,
            xml_path: detail.xml_path,
        }
    }
}

impl From<crate::uri::UriError> for Error {
    fn from(e: crate::uri::UriError) -> Self {
        Error::new(ErrorCode::InvalidArg, ErrorDomain::Uri, e.to_string())
    }
}

/// The result of a client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
