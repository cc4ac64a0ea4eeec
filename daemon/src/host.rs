//! The host service every daemon serves. The generic calls (versions, host name, URI, driver
//! type, connection info, node info, free memory) are answered here from the host itself; the
//! hypervisor calls go to the daemon's [`HostBackend`], which by default has no support for them.

use std::sync::Arc;

use rvirt_proto::error::status;
use rvirt_proto::v1::host_service_server::HostService;
use rvirt_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::clients::ClientInfo;
use crate::listen::SocketKind;
use crate::server::DaemonContext;

pub use rvirt::host::{LIBVIRT_API_VERSION, version_number};

/// What a daemon adds to the generic host service.
#[tonic::async_trait]
pub trait HostBackend: Send + Sync + 'static {
    /// libvirt's driver name: "QEMU", "Test", "network", "storage", "secret".
    fn driver_type(&self) -> &'static str;

    /// The URI scheme the daemon answers for when the call carries no `rvirt-uri`: "qemu", ...
    fn uri_scheme(&self) -> &'static str;

    /// The hypervisor's version as text, e.g. "10.0.0"; empty when the daemon drives none.
    async fn hypervisor_version(&self) -> Result<String, Status> {
        Ok(String::new())
    }

    /// The capabilities XML.
    async fn capabilities(&self) -> Result<String, Status> {
        Err(no_support(self.driver_type(), "host capabilities"))
    }

    /// The domain capabilities XML.
    async fn domain_capabilities(&self, _request: GetDomainCapabilitiesRequest) -> Result<String, Status> {
        Err(no_support(self.driver_type(), "domain capabilities"))
    }

    /// The vCPU limit for a virtualization type.
    async fn max_vcpus(&self, _virt_type: &str) -> Result<u32, Status> {
        Err(no_support(self.driver_type(), "the vCPU limit"))
    }

    /// CPU model names for an architecture.
    async fn cpu_model_names(&self, _arch: &str) -> Result<Vec<String>, Status> {
        Err(no_support(self.driver_type(), "CPU models"))
    }
}

/// The error of a hypervisor call on a daemon that drives no hypervisor.
pub fn no_support(driver: &str, what: &str) -> Status {
    status(
        ErrorCode::NoSupport,
        ErrorDomain::None,
        format!("The {driver} driver does not report {what}: ask the hypervisor driver (a qemu:// URI)"),
    )
}

/// The host service of a daemon.
#[derive(Debug)]
pub struct GenericHost<B> {
    ctx: Arc<DaemonContext>,
    backend: Arc<B>,
}

impl<B: HostBackend> GenericHost<B> {
    /// The host service of the daemon `ctx`, with `backend` for the hypervisor calls.
    pub fn new(ctx: Arc<DaemonContext>, backend: Arc<B>) -> Self {
        GenericHost { ctx, backend }
    }

    /// As a tonic server, ready to add to a [`crate::ServiceSet`].
    pub fn into_server(self) -> host_service_server::HostServiceServer<Self> {
        host_service_server::HostServiceServer::new(self)
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    status(
        ErrorCode::InternalError,
        ErrorDomain::None,
        format!("Cannot read {what}: {e}"),
    )
}

#[tonic::async_trait]
impl<B: HostBackend> HostService for GenericHost<B> {
    async fn get_version(
        &self,
        _: Request<GetVersionRequest>,
    ) -> Result<Response<GetVersionResponse>, Status> {
        let hv = self.backend.hypervisor_version().await?;
        let lib = env!("CARGO_PKG_VERSION");
        Ok(Response::new(GetVersionResponse {
            hypervisor_version: version_number(&hv),
            hypervisor_version_string: hv,
            library_version: version_number(lib),
            library_version_string: lib.to_owned(),
            libvirt_api_version: LIBVIRT_API_VERSION,
        }))
    }

    async fn get_hostname(
        &self,
        _: Request<GetHostnameRequest>,
    ) -> Result<Response<GetHostnameResponse>, Status> {
        let name = nix::unistd::gethostname().map_err(|e| internal("the host name", e))?;
        Ok(Response::new(GetHostnameResponse {
            hostname: name.to_string_lossy().into_owned(),
        }))
    }

    async fn get_uri(&self, request: Request<GetUriRequest>) -> Result<Response<GetUriResponse>, Status> {
        let uri = request
            .metadata()
            .get(rvirt_proto::URI_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}:///{}", self.backend.uri_scheme(), self.ctx.mode.as_str()));
        Ok(Response::new(GetUriResponse { uri }))
    }

    async fn get_type(&self, _: Request<GetTypeRequest>) -> Result<Response<GetTypeResponse>, Status> {
        Ok(Response::new(GetTypeResponse {
            r#type: self.backend.driver_type().to_owned(),
        }))
    }

    async fn get_connection_info(
        &self,
        request: Request<GetConnectionInfoRequest>,
    ) -> Result<Response<GetConnectionInfoResponse>, Status> {
        let caller = request.extensions().get::<ClientInfo>();
        Ok(Response::new(GetConnectionInfoResponse {
            transport: ConnectionTransport::Unix as i32,
            secure: true,
            encrypted: false,
            read_only: caller.is_some_and(|c| c.socket == SocketKind::ReadOnly),
            privileged: caller.is_some_and(|c| c.uid == 0 || c.uid == self.ctx.uid),
            uid: caller.map(|c| c.uid),
            gid: caller.map(|c| c.gid),
            pid: caller.and_then(|c| c.pid).and_then(|p| u32::try_from(p).ok()),
            certificate_subject: String::new(),
            daemon: self.ctx.spec.name.to_owned(),
        }))
    }

    async fn get_capabilities(
        &self,
        _: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<GetCapabilitiesResponse>, Status> {
        Ok(Response::new(GetCapabilitiesResponse {
            xml: self.backend.capabilities().await?,
        }))
    }

    async fn get_domain_capabilities(
        &self,
        request: Request<GetDomainCapabilitiesRequest>,
    ) -> Result<Response<GetDomainCapabilitiesResponse>, Status> {
        let xml = self.backend.domain_capabilities(request.into_inner()).await?;
        Ok(Response::new(GetDomainCapabilitiesResponse { xml }))
    }

    async fn get_node_info(
        &self,
        _: Request<GetNodeInfoRequest>,
    ) -> Result<Response<GetNodeInfoResponse>, Status> {
        node_info()
            .map(Response::new)
            .map_err(|e| internal("the host's CPU and memory", e))
    }

    async fn get_free_memory(
        &self,
        request: Request<GetFreeMemoryRequest>,
    ) -> Result<Response<GetFreeMemoryResponse>, Status> {
        let request = request.into_inner();
        free_memory(request.start_cell, request.max_cells)
            .map(Response::new)
            .map_err(|e| internal("the host's free memory", e))
    }

    async fn get_max_vcpus(
        &self,
        request: Request<GetMaxVcpusRequest>,
    ) -> Result<Response<GetMaxVcpusResponse>, Status> {
        let max_vcpus = self.backend.max_vcpus(&request.get_ref().r#type).await?;
        Ok(Response::new(GetMaxVcpusResponse { max_vcpus }))
    }

    async fn get_cpu_model_names(
        &self,
        request: Request<GetCpuModelNamesRequest>,
    ) -> Result<Response<GetCpuModelNamesResponse>, Status> {
        let models = self.backend.cpu_model_names(&request.get_ref().arch).await?;
        Ok(Response::new(GetCpuModelNamesResponse { models }))
    }
}

/// A `/proc/meminfo`-style value in KiB.
fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line
            .trim_start()
            .strip_prefix(key)?
            .trim_start()
            .strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn numa_nodes() -> Vec<u32> {
    let mut nodes: Vec<u32> = std::fs::read_dir("/sys/devices/system/node")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("node")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    nodes.sort_unstable();
    nodes
}

/// libvirt's `virNodeInfo` for this host, from `/proc` and `/sys`.
pub fn node_info() -> std::io::Result<GetNodeInfoResponse> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let uname = nix::sys::utsname::uname().map_err(std::io::Error::from)?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let field = |key: &str| -> Vec<&str> {
        cpuinfo
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim())
            })
            .collect()
    };
    let mhz = field("cpu MHz")
        .first()
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |m| m as u32);
    let mut packages: Vec<&str> = field("physical id");
    packages.sort_unstable();
    packages.dedup();
    let nodes = (numa_nodes().len() as u32).max(1);
    let cores_per_socket = field("cpu cores").first().and_then(|v| v.parse::<u32>().ok());
    let siblings = field("siblings").first().and_then(|v| v.parse::<u32>().ok());
    let (sockets, cores, threads) = match (cores_per_socket, siblings) {
        (Some(cores), Some(siblings)) if cores > 0 && siblings >= cores => {
            let sockets = (packages.len() as u32).max(1);
            ((sockets / nodes).max(1), cores, siblings / cores)
        }
        _ => (1, cpus, 1),
    };
    // Like libvirt, report a flat topology when the parts do not multiply up to the CPU count
    // (offline CPUs, a container's CPU limit).
    let (sockets, cores, threads) = if sockets * cores * threads * nodes == cpus {
        (sockets, cores, threads)
    } else {
        (1, cpus / nodes.max(1), 1)
    };
    Ok(GetNodeInfoResponse {
        model: uname.machine().to_string_lossy().into_owned(),
        memory_kib: meminfo_kib(&meminfo, "MemTotal").unwrap_or(0),
        cpus,
        mhz,
        nodes,
        sockets,
        cores,
        threads,
    })
}

/// Free memory in bytes, in total and for the NUMA cells asked.
pub fn free_memory(start_cell: u32, max_cells: u32) -> std::io::Result<GetFreeMemoryResponse> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let free_bytes = meminfo_kib(&meminfo, "MemFree").unwrap_or(0) * 1024;
    let mut cells_free_bytes = Vec::new();
    let nodes = numa_nodes();
    for cell in start_cell..start_cell.saturating_add(max_cells) {
        if nodes.is_empty() && cell == 0 {
            cells_free_bytes.push(free_bytes);
            continue;
        }
        if !nodes.contains(&cell) {
            break;
        }
        let text = std::fs::read_to_string(format!("/sys/devices/system/node/node{cell}/meminfo"))?;
        // Lines read "Node 0 MemFree:  123 kB".
        let kib = text.lines().find_map(|l| {
            let (_, rest) = l.split_once("MemFree:")?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        });
        cells_free_bytes.push(kib.unwrap_or(0) * 1024);
    }
    Ok(GetFreeMemoryResponse {
        free_bytes,
        cells_free_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_use_libvirt_encoding() {
        assert_eq!(version_number("10.0.2"), 10_000_002);
        assert_eq!(version_number("0.1.0"), 1_000);
        assert_eq!(version_number("11.3"), 11_003_000);
        assert_eq!(version_number(""), 0);
        assert_eq!(version_number("abc"), 0);
    }

    #[test]
    fn meminfo_values_parse() {
        let text = "MemTotal:       24576000 kB\nMemFree:         1000 kB\n";
        assert_eq!(meminfo_kib(text, "MemTotal"), Some(24_576_000));
        assert_eq!(meminfo_kib(text, "MemFree"), Some(1000));
        assert_eq!(meminfo_kib(text, "Buffers"), None);
    }

    #[test]
    fn node_info_is_plausible_on_this_host() {
        let info = node_info().expect("node info");
        assert!(info.cpus >= 1);
        assert!(info.memory_kib > 0);
        assert!(info.nodes >= 1);
        assert!(info.sockets >= 1 && info.cores >= 1 && info.threads >= 1);
        assert_eq!(info.sockets * info.cores * info.threads * info.nodes, info.cpus);
        let free = free_memory(0, 1).expect("free memory");
        assert!(free.free_bytes > 0);
        assert_eq!(free.cells_free_bytes.len(), 1);
    }
}

/// The host backend of a daemon that drives no hypervisor: its name and URI scheme only.
#[derive(Debug, Clone, Copy)]
pub struct DriverIdentity {
    /// libvirt's driver name ("network", "storage", "secret").
    pub driver_type: &'static str,
    /// The URI scheme ("network", "storage", "secret").
    pub uri_scheme: &'static str,
}

#[tonic::async_trait]
impl HostBackend for DriverIdentity {
    fn driver_type(&self) -> &'static str {
        self.driver_type
    }

    fn uri_scheme(&self) -> &'static str {
        self.uri_scheme
    }
}

/// A driver that serves only the generic host service: what a daemon serves before its own
/// driver exists.
#[derive(Debug)]
pub struct HostOnlyDriver {
    ctx: Arc<DaemonContext>,
    identity: DriverIdentity,
}

impl HostOnlyDriver {
    /// The driver of daemon `ctx`.
    pub fn new(ctx: Arc<DaemonContext>, identity: DriverIdentity) -> Self {
        HostOnlyDriver { ctx, identity }
    }
}

impl crate::Driver for HostOnlyDriver {
    fn services(&self) -> crate::ServiceSet {
        crate::ServiceSet::new()
            .with(GenericHost::new(Arc::clone(&self.ctx), Arc::new(self.identity)).into_server())
    }
}
