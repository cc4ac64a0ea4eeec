//! Host and connection calls (`virConnectGet*`, `virNodeGetInfo`) on a [`Connect`].

use rvirt_proto::v1::host_service_client::HostServiceClient;
use rvirt_proto::v1::*;

use crate::connect::{Connect, GrpcTransport};
use crate::error::Result;

/// The libvirt release whose API numbers and XML formats rvirt mirrors (11.3.0).
pub const LIBVIRT_API_VERSION: u64 = 11_003_000;

/// libvirt's version encoding, `major * 1_000_000 + minor * 1_000 + micro`, of a `x.y.z` string;
/// 0 when it is not one.
pub fn version_number(text: &str) -> u64 {
    let mut parts = text.split(['.', '-', '+']).map(|p| p.parse::<u64>().ok());
    match (
        parts.next().flatten(),
        parts.next().flatten(),
        parts.next().flatten(),
    ) {
        (Some(major), Some(minor), micro) => major * 1_000_000 + minor * 1_000 + micro.unwrap_or(0),
        _ => 0,
    }
}

impl Connect {
    fn host_client(&self) -> Result<HostServiceClient<GrpcTransport>> {
        Ok(HostServiceClient::new(self.transport("rvirt.v1.HostService")?))
    }

    /// `virConnectGetVersion` and `virConnectGetLibVersion` together.
    pub async fn version(&self) -> Result<GetVersionResponse> {
        Ok(self
            .host_client()?
            .get_version(GetVersionRequest {})
            .await?
            .into_inner())
    }

    /// `virConnectGetHostname`.
    pub async fn hostname(&self) -> Result<String> {
        Ok(self
            .host_client()?
            .get_hostname(GetHostnameRequest {})
            .await?
            .into_inner()
            .hostname)
    }

    /// `virConnectGetURI`.
    pub async fn canonical_uri(&self) -> Result<String> {
        Ok(self
            .host_client()?
            .get_uri(GetUriRequest {})
            .await?
            .into_inner()
            .uri)
    }

    /// `virConnectGetType`.
    pub async fn driver_type(&self) -> Result<String> {
        Ok(self
            .host_client()?
            .get_type(GetTypeRequest {})
            .await?
            .into_inner()
            .r#type)
    }

    /// `virConnectGetCapabilities`.
    pub async fn capabilities(&self) -> Result<String> {
        Ok(self
            .host_client()?
            .get_capabilities(GetCapabilitiesRequest {})
            .await?
            .into_inner()
            .xml)
    }

    /// `virConnectGetDomainCapabilities`.
    pub async fn domain_capabilities(&self, request: GetDomainCapabilitiesRequest) -> Result<String> {
        Ok(self
            .host_client()?
            .get_domain_capabilities(request)
            .await?
            .into_inner()
            .xml)
    }

    /// `virNodeGetInfo`.
    pub async fn node_info(&self) -> Result<GetNodeInfoResponse> {
        Ok(self
            .host_client()?
            .get_node_info(GetNodeInfoRequest {})
            .await?
            .into_inner())
    }

    /// `virConnectIsAlive` and friends: how the daemon sees this connection.
    pub async fn connection_info(&self) -> Result<GetConnectionInfoResponse> {
        Ok(self
            .host_client()?
            .get_connection_info(GetConnectionInfoRequest {})
            .await?
            .into_inner())
    }
}
