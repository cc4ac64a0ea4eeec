//! gRPC server reflection (v1 and v1alpha), built on its first call.
//!
//! `tonic_reflection` decodes every file descriptor of the API into maps when its service is
//! built: about half a megabyte per service and version. A daemon serves two routers (the
//! driver's sockets and the admin socket), so building them eagerly cost each daemon about two
//! megabytes of heap before any client asked, and reflection is asked for only by tools such as
//! grpcurl. [`LazyReflection`] builds the real service when the first reflection call arrives,
//! once per router and version, and forwards every call to it.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::server::NamedService;
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;

type Inner = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// One reflection protocol version.
pub trait Version: Send + Sync + 'static {
    /// Its gRPC service name.
    const NAME: &'static str;
    /// Builds its service.
    fn build(builder: tonic_reflection::server::Builder<'static>) -> Result<Inner, String>;
}

/// `grpc.reflection.v1.ServerReflection`.
#[derive(Debug)]
pub enum V1 {}

impl Version for V1 {
    const NAME: &'static str = "grpc.reflection.v1.ServerReflection";
    fn build(builder: tonic_reflection::server::Builder<'static>) -> Result<Inner, String> {
        let svc = builder.build_v1().map_err(|e| format!("reflection: {e}"))?;
        Ok(BoxCloneSyncService::new(svc))
    }
}

/// `grpc.reflection.v1alpha.ServerReflection`.
#[derive(Debug)]
pub enum V1Alpha {}

impl Version for V1Alpha {
    const NAME: &'static str = "grpc.reflection.v1alpha.ServerReflection";
    fn build(builder: tonic_reflection::server::Builder<'static>) -> Result<Inner, String> {
        let svc = builder.build_v1alpha().map_err(|e| format!("reflection: {e}"))?;
        Ok(BoxCloneSyncService::new(svc))
    }
}

/// A reflection service of version `V` describing `services`, built on its first call.
pub struct LazyReflection<V> {
    services: Arc<[&'static str]>,
    built: Arc<OnceLock<Result<Inner, String>>>,
    version: PhantomData<fn() -> V>,
}

impl<V> Clone for LazyReflection<V> {
    fn clone(&self) -> Self {
        LazyReflection {
            services: Arc::clone(&self.services),
            built: Arc::clone(&self.built),
            version: PhantomData,
        }
    }
}

impl<V: Version> LazyReflection<V> {
    /// Reflection over rvirt's API and gRPC health, listing `services` (the router's own) beside
    /// health and reflection.
    pub fn new(services: &[&'static str]) -> Self {
        LazyReflection {
            services: services.into(),
            built: Arc::new(OnceLock::new()),
            version: PhantomData,
        }
    }

    fn builder(&self) -> tonic_reflection::server::Builder<'static> {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(rvirt_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name(V1::NAME)
            .with_service_name(V1Alpha::NAME);
        for name in self.services.iter() {
            builder = builder.with_service_name(*name);
        }
        builder
    }

    fn service(&self) -> Result<Inner, String> {
        self.built.get_or_init(|| V::build(self.builder())).clone()
    }
}

impl<V> std::fmt::Debug for LazyReflection<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyReflection")
            .field("built", &self.built.get().is_some())
            .finish()
    }
}

impl<V: Version> NamedService for LazyReflection<V> {
    const NAME: &'static str = V::NAME;
}

impl<V: Version> tower::Service<http::Request<Body>> for LazyReflection<V> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self.service() {
            Ok(svc) => Box::pin(svc.oneshot(request)),
            Err(e) => {
                let response = tonic::Status::internal(e).into_http();
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_built_until_the_first_call_and_then_once() {
        for services in [&["rvirt.v1.HostService"][..], &["rvirt.v1.AdminService"][..]] {
            let lazy = LazyReflection::<V1>::new(services);
            assert!(lazy.built.get().is_none());
            lazy.clone().service().expect("the descriptors make a v1 service");
            assert!(lazy.built.get().is_some(), "clones share the built service");
            let alpha = LazyReflection::<V1Alpha>::new(services);
            alpha.service().expect("the descriptors make a v1alpha service");
        }
    }
}
