//! The in-process test driver: libvirt's `test:///default` (and `test:///PATH.xml`), held in
//! memory and served through the same generated tonic services as the daemons, with a tower
//! service as the client's transport instead of a socket.
//!
//! State is shared by every connection to the same URI in the process, as libvirt's is. Every
//! lifecycle rule applies (starting a running domain is OPERATION_INVALID, undefining a running
//! persistent domain makes it transient, ...) and every change emits its event.

mod devices;
mod domain;
mod host;
mod network;
mod node;
mod secret;
mod storage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tower::util::BoxCloneSyncService;

use crate::connect::{BoxError, GrpcTransport};
use crate::error::Result;
use crate::uri::Instance;

pub use node::TestState;

fn drivers() -> &'static Mutex<HashMap<Instance, GrpcTransport>> {
    static DRIVERS: OnceLock<Mutex<HashMap<Instance, GrpcTransport>>> = OnceLock::new();
    DRIVERS.get_or_init(Mutex::default)
}

/// The transport of the test driver for `instance`, created on first use and shared after.
pub async fn transport(instance: &Instance) -> Result<GrpcTransport> {
    if let Some(t) = drivers()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(instance)
    {
        return Ok(t.clone());
    }
    let state = Arc::new(match instance {
        Instance::File(path) => TestState::from_file(path)?,
        _ => TestState::default_state()?,
    });
    let transport = serve(state);
    let mut map = drivers()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(map.entry(instance.clone()).or_insert(transport).clone())
}

/// Serves `state` through the generated services, as a transport.
pub fn serve(state: Arc<TestState>) -> GrpcTransport {
    use rvirt_proto::v1::domain_service_server::DomainServiceServer;
    use rvirt_proto::v1::host_service_server::HostServiceServer;
    use rvirt_proto::v1::network_service_server::NetworkServiceServer;
    use rvirt_proto::v1::secret_service_server::SecretServiceServer;
    use rvirt_proto::v1::storage_pool_service_server::StoragePoolServiceServer;
    use rvirt_proto::v1::storage_vol_service_server::StorageVolServiceServer;
    let mut routes = tonic::service::RoutesBuilder::default();
    routes
        .add_service(HostServiceServer::new(host::TestHost::new(Arc::clone(&state))))
        .add_service(DomainServiceServer::new(domain::TestDomains::new(Arc::clone(
            &state,
        ))))
        .add_service(NetworkServiceServer::new(network::TestNetworks::new(Arc::clone(
            &state,
        ))))
        .add_service(StoragePoolServiceServer::new(storage::TestPools::new(
            Arc::clone(&state),
        )))
        .add_service(StorageVolServiceServer::new(storage::TestVols::new(Arc::clone(
            &state,
        ))))
        .add_service(SecretServiceServer::new(secret::TestSecrets::new(Arc::clone(
            &state,
        ))));
    let routes = routes.routes();
    BoxCloneSyncService::new(tower::ServiceExt::<http::Request<tonic::body::Body>>::map_err(
        routes,
        |never| -> BoxError { match never {} },
    ))
}
