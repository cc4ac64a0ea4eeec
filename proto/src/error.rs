//! The error model: every failed rvirt call carries a `google.rpc.Status` in its
//! `grpc-status-details-bin` trailer, holding one `google.protobuf.Any` of type `rvirt.v1.Error`.
//! That is gRPC's standard "richer error model", readable from any language.

use prost::Message as _;

use crate::v1::{Error, ErrorCode, ErrorDomain};

/// The type URL of the [`Error`] detail inside the `Any`.
pub const ERROR_TYPE_URL: &str = "type.googleapis.com/rvirt.v1.Error";

/// `google.rpc.Status`, the envelope of the status details.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// The gRPC status code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// The status message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// The details; rvirt puts one [`Error`] here.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types::Any>,
}

/// The gRPC status code that goes with a libvirt error number.
pub fn grpc_code(code: ErrorCode) -> tonic::Code {
    use ErrorCode as E;
    use tonic::Code as C;
    match code {
        E::Ok => C::Ok,
        E::NoDomain
        | E::NoNetwork
        | E::NoStoragePool
        | E::NoStorageVol
        | E::NoSecret
        | E::NoInterface
        | E::NoNodeDevice
        | E::NoNwfilter
        | E::NoNwfilterBinding
        | E::NoDomainSnapshot
        | E::NoDomainCheckpoint
        | E::NoDomainBackup
        | E::NoDomainMetadata
        | E::NoNetworkMetadata
        | E::NoNetworkPort
        | E::NoServer
        | E::NoClient
        | E::DeviceMissing => C::NotFound,
        E::DomExist | E::NetworkExist | E::StorageVolExist | E::NetworkPortExist | E::StoragePoolBuilt => {
            C::AlreadyExists
        }
        E::InvalidArg
        | E::XmlError
        | E::XmlDetail
        | E::XmlInvalidSchema
        | E::ConfSyntax
        | E::ParseFailed
        | E::InvalidMac
        | E::OsType
        | E::InvalidDomain
        | E::InvalidNetwork
        | E::InvalidStoragePool
        | E::InvalidStorageVol
        | E::InvalidSecret
        | E::InvalidStream
        | E::InvalidNetworkPort
        | E::MultipleDomains
        | E::MultipleInterfaces => C::InvalidArgument,
        E::OperationInvalid
        | E::BlockCopyActive
        | E::MigrateUnsafe
        | E::CpuIncompatible
        | E::SnapshotRevertRisky => C::FailedPrecondition,
        E::OperationDenied | E::AccessDenied => C::PermissionDenied,
        E::AuthFailed | E::AuthCancelled | E::AuthUnavailable => C::Unauthenticated,
        E::NoSupport | E::OperationUnsupported | E::ConfigUnsupported | E::ArgumentUnsupported => {
            C::Unimplemented
        }
        E::OperationTimeout | E::AgentCommandTimeout => C::DeadlineExceeded,
        E::OperationAborted => C::Aborted,
        E::ResourceBusy => C::ResourceExhausted,
        E::NoConnect | E::InvalidConn | E::Rpc | E::AgentUnresponsive | E::AgentUnsynced => C::Unavailable,
        E::Overflow => C::OutOfRange,
        _ => C::Internal,
    }
}

/// The libvirt error number a plain gRPC status (one without an rvirt detail, e.g. from the
/// transport) stands for.
pub fn code_for_grpc(code: tonic::Code) -> ErrorCode {
    use ErrorCode as E;
    use tonic::Code as C;
    match code {
        C::Ok => E::Ok,
        C::NotFound => E::OperationFailed,
        C::InvalidArgument | C::OutOfRange => E::InvalidArg,
        C::AlreadyExists | C::FailedPrecondition => E::OperationInvalid,
        C::PermissionDenied => E::OperationDenied,
        C::Unauthenticated => E::AuthFailed,
        C::Unimplemented => E::OperationUnsupported,
        C::DeadlineExceeded => E::OperationTimeout,
        C::Cancelled | C::Aborted => E::OperationAborted,
        C::ResourceExhausted => E::ResourceBusy,
        C::Unavailable => E::NoConnect,
        C::Unknown | C::Internal | C::DataLoss => E::InternalError,
    }
}

/// Builds the status of a failed call from an [`Error`] detail.
pub fn to_status(error: &Error) -> tonic::Status {
    let code = grpc_code(error.code());
    let envelope = RpcStatus {
        code: code as i32,
        message: error.message.clone(),
        details: vec![prost_types::Any {
            type_url: ERROR_TYPE_URL.to_owned(),
            value: error.encode_to_vec(),
        }],
    };
    tonic::Status::with_details(code, error.message.clone(), envelope.encode_to_vec().into())
}

/// Builds the status of a failed call from its parts.
pub fn status(code: ErrorCode, domain: ErrorDomain, message: impl Into<String>) -> tonic::Status {
    to_status(&Error {
        code: code as i32,
        domain: domain as i32,
        message: message.into(),
        ..Error::default()
    })
}

/// Reads the rvirt [`Error`] detail of a status; a status without one (transport errors, other
/// servers) gets a detail derived from its gRPC code and message.
pub fn from_status(status: &tonic::Status) -> Error {
    if let Ok(envelope) = RpcStatus::decode(status.details()) {
        for any in &envelope.details {
            if any.type_url == ERROR_TYPE_URL
                && let Ok(error) = Error::decode(any.value.as_slice())
            {
                return error;
            }
        }
    }
    Error {
        code: code_for_grpc(status.code()) as i32,
        domain: ErrorDomain::Rpc as i32,
        message: status.message().to_owned(),
        ..Error::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_survives_the_status_round_trip() {
        let mut error = Error {
            code: ErrorCode::NoDomain as i32,
            domain: ErrorDomain::Qemu as i32,
            message: "Domain 'web' not found: check the name with 'rvirsh list --all'".into(),
            ..Error::default()
        };
        error.context.insert("name".into(), "web".into());
        let status = to_status(&error);
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(from_status(&status), error);
    }

    #[test]
    fn plain_status_gets_a_derived_code() {
        let status = tonic::Status::unavailable("connection refused");
        let error = from_status(&status);
        assert_eq!(error.code(), ErrorCode::NoConnect);
        assert_eq!(error.message, "connection refused");
    }

    #[test]
    fn denied_maps_to_permission_denied() {
        let status = status(ErrorCode::OperationDenied, ErrorDomain::Access, "read-only");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(from_status(&status).code(), ErrorCode::OperationDenied);
    }
}
