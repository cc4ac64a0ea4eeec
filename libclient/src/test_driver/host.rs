//! The test driver's host service: libvirt's test host (i686, 16 CPUs, "TEST" hypervisor 0.0.2).

use std::sync::Arc;

use rvirt_proto::v1::host_service_server::HostService;
use rvirt_proto::v1::*;
use tonic::{Request, Response, Status};

use super::node::{TestState, node_info};

/// The test driver's hypervisor version, as libvirt's test driver reports it (0.0.2).
const HYPERVISOR_VERSION: u64 = 2;

/// libvirt's test host capabilities.
const CAPABILITIES: &str = r#"<capabilities>
  <host>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
    <cpu>
      <arch>i686</arch>
      <features>
        <pae/>
        <nonpae/>
      </features>
    </cpu>
    <topology>
      <cells num='2'>
        <cell id='0'>
          <memory unit='KiB'>1572864</memory>
          <cpus num='8'>
            <cpu id='0'/><cpu id='1'/><cpu id='2'/><cpu id='3'/><cpu id='4'/><cpu id='5'/><cpu id='6'/><cpu id='7'/>
          </cpus>
        </cell>
        <cell id='1'>
          <memory unit='KiB'>1572864</memory>
          <cpus num='8'>
            <cpu id='8'/><cpu id='9'/><cpu id='10'/><cpu id='11'/><cpu id='12'/><cpu id='13'/><cpu id='14'/><cpu id='15'/>
          </cpus>
        </cell>
      </cells>
    </topology>
    <secmodel>
      <model>testSecurity</model>
      <doi></doi>
    </secmodel>
  </host>
  <guest>
    <os_type>hvm</os_type>
    <arch name='i686'>
      <wordsize>32</wordsize>
      <emulator>/usr/bin/test-hv</emulator>
      <domain type='test'/>
    </arch>
    <features>
      <pae/>
      <nonpae/>
    </features>
  </guest>
  <guest>
    <os_type>xen</os_type>
    <arch name='i686'>
      <wordsize>32</wordsize>
      <emulator>/usr/bin/test-hv</emulator>
      <domain type='test'/>
    </arch>
    <features>
      <pae/>
      <nonpae/>
    </features>
  </guest>
</capabilities>
"#;

/// The test driver's domain capabilities: the test emulator, with no optional feature.
const DOMAIN_CAPABILITIES: &str = r#"<domainCapabilities>
  <path>/usr/bin/test-hv</path>
  <domain>test</domain>
  <arch>i686</arch>
  <iothreads supported='no'/>
  <os supported='no'/>
  <cpu>
    <mode name='host-passthrough' supported='no'/>
    <mode name='maximum' supported='no'/>
    <mode name='host-model' supported='no'/>
    <mode name='custom' supported='no'/>
  </cpu>
  <devices>
    <disk supported='no'/>
    <graphics supported='no'/>
    <video supported='no'/>
    <hostdev supported='no'/>
  </devices>
  <features>
    <gic supported='no'/>
    <vmcoreinfo supported='no'/>
    <genid supported='no'/>
    <sev supported='no'/>
  </features>
</domainCapabilities>
"#;

/// The test driver's host service.
#[derive(Debug)]
pub struct TestHost {
    _state: Arc<TestState>,
}

impl TestHost {
    /// The host service of a test driver instance.
    pub fn new(state: Arc<TestState>) -> Self {
        TestHost { _state: state }
    }
}

#[tonic::async_trait]
impl HostService for TestHost {
    async fn get_version(
        &self,
        _: Request<GetVersionRequest>,
    ) -> Result<Response<GetVersionResponse>, Status> {
        let lib = env!("CARGO_PKG_VERSION");
        Ok(Response::new(GetVersionResponse {
            hypervisor_version: HYPERVISOR_VERSION,
            hypervisor_version_string: "0.0.2".into(),
            library_version: crate::host::version_number(lib),
            library_version_string: lib.into(),
            libvirt_api_version: crate::host::LIBVIRT_API_VERSION,
        }))
    }

    async fn get_hostname(
        &self,
        _: Request<GetHostnameRequest>,
    ) -> Result<Response<GetHostnameResponse>, Status> {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_owned();
        Ok(Response::new(GetHostnameResponse { hostname }))
    }

    async fn get_uri(&self, request: Request<GetUriRequest>) -> Result<Response<GetUriResponse>, Status> {
        let uri = request
            .metadata()
            .get(rvirt_proto::URI_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("test:///default")
            .to_owned();
        Ok(Response::new(GetUriResponse { uri }))
    }

    async fn get_type(&self, _: Request<GetTypeRequest>) -> Result<Response<GetTypeResponse>, Status> {
        Ok(Response::new(GetTypeResponse {
            r#type: "TEST".into(),
        }))
    }

    async fn get_connection_info(
        &self,
        _: Request<GetConnectionInfoRequest>,
    ) -> Result<Response<GetConnectionInfoResponse>, Status> {
        Ok(Response::new(GetConnectionInfoResponse {
            transport: ConnectionTransport::InProcess as i32,
            secure: true,
            privileged: true,
            daemon: "test".into(),
            ..GetConnectionInfoResponse::default()
        }))
    }

    async fn get_capabilities(
        &self,
        _: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<GetCapabilitiesResponse>, Status> {
        Ok(Response::new(GetCapabilitiesResponse {
            xml: CAPABILITIES.into(),
        }))
    }

    async fn get_domain_capabilities(
        &self,
        request: Request<GetDomainCapabilitiesRequest>,
    ) -> Result<Response<GetDomainCapabilitiesResponse>, Status> {
        let request = request.into_inner();
        let refuse = |what: &str, value: &str, expected: &str| {
            rvirt_proto::error::status(
                ErrorCode::InvalidArg,
                ErrorDomain::Test,
                format!(
                    "Invalid argument: the test driver has no {what} '{value}': use '{expected}' or leave it out"
                ),
            )
        };
        if !request.virttype.is_empty() && request.virttype != "test" {
            return Err(refuse("virtualization type", &request.virttype, "test"));
        }
        if !request.arch.is_empty() && request.arch != "i686" {
            return Err(refuse("architecture", &request.arch, "i686"));
        }
        if !request.emulator_bin.is_empty() && request.emulator_bin != "/usr/bin/test-hv" {
            return Err(refuse("emulator", &request.emulator_bin, "/usr/bin/test-hv"));
        }
        Ok(Response::new(GetDomainCapabilitiesResponse {
            xml: DOMAIN_CAPABILITIES.into(),
        }))
    }

    async fn get_node_info(
        &self,
        _: Request<GetNodeInfoRequest>,
    ) -> Result<Response<GetNodeInfoResponse>, Status> {
        Ok(Response::new(node_info()))
    }

    async fn get_free_memory(
        &self,
        request: Request<GetFreeMemoryRequest>,
    ) -> Result<Response<GetFreeMemoryResponse>, Status> {
        let request = request.into_inner();
        let cell = 1_572_864u64 * 1024;
        let cells = (request.start_cell..request.start_cell.saturating_add(request.max_cells))
            .take_while(|c| *c < 2)
            .map(|_| cell)
            .collect();
        Ok(Response::new(GetFreeMemoryResponse {
            free_bytes: 2 * cell,
            cells_free_bytes: cells,
        }))
    }

    async fn get_max_vcpus(
        &self,
        _: Request<GetMaxVcpusRequest>,
    ) -> Result<Response<GetMaxVcpusResponse>, Status> {
        Ok(Response::new(GetMaxVcpusResponse { max_vcpus: 32 }))
    }
}
