//! `virtproxyd`: the rvirt proxy daemon, which routes calls by connection URI.
//!
//! It runs on the shared runtime (`rvirt-daemon`): sockets (`rvirt-sock`, `rvirt-sock-ro`,
//! `rvirt-admin-sock`), the access check on the real caller, the admin service, health and
//! reflection. Its driver serves one forwarding service per routed gRPC service (Host, Domain,
//! Network, StoragePool, StorageVol, Secret): each call goes, undecoded, to the daemon that owns
//! the pair (URI driver, service) in [`rvirt::route`]'s table, or to the in-process test driver
//! for `test:///` URIs. See [`forward`] and `docs/proxy.md`.
//!
//! With `--listen` or `listen_tls`/`listen_tcp` in `virtproxyd.conf`, it also serves the same
//! forwarding services over TLS (16514, mutual authentication) and plain TCP (16509), and
//! forwards calls whose URI names a host to that host's virtproxyd: see [`remote`] and [`tls`].

pub mod forward;
pub mod remote;
pub mod tls;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use rvirt_daemon::{DaemonContext, DaemonSpec, Driver, ServiceSet};

pub use forward::Forwarder;

/// What this daemon is.
pub const SPEC: DaemonSpec = DaemonSpec {
    name: "virtproxyd",
    sockets: "rvirt",
    driver: "proxy",
    about: "The rvirt proxy daemon, which routes calls by connection URI",
};

/// Builds the daemon's driver.
pub async fn init(ctx: Arc<DaemonContext>) -> Result<ProxyDriver, String> {
    let default_uri = forward::default_uri(ctx.mode)?;
    let forwarder = Forwarder::new(default_uri, ctx.mode == rvirt::paths::Mode::Session);
    let remote = remote::start(&ctx, &forwarder).await?;
    release_idle_backends(&ctx, forwarder.clone());
    Ok(ProxyDriver {
        forwarder,
        remote,
        ctx: Arc::downgrade(&ctx),
    })
}

/// How long a pooled backend connection may carry no new call before the proxy lets it go, so
/// that a backend started with `--timeout` can exit when idle (libvirt's proxy holds a backend
/// connection per client connection; this one shares one between all its clients).
pub const BACKEND_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Checks every few seconds for backend connections idle for [`BACKEND_IDLE`], until the
/// daemon shuts down.
fn release_idle_backends(ctx: &Arc<DaemonContext>, forwarder: Forwarder) {
    let mut stop = ctx.shutdown_requested();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(BACKEND_IDLE / 3);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => {
                    let released = forwarder.release_idle(BACKEND_IDLE);
                    if released > 0 {
                        tracing::debug!(released, "idle backend connections released");
                    }
                }
            }
        }
    });
}

/// The proxy's driver: the forwarding services.
#[derive(Debug)]
pub struct ProxyDriver {
    forwarder: Forwarder,
    /// The TCP/TLS listeners (their clients are in the runtime's registry like local ones).
    pub remote: remote::RemoteListeners,
    /// The runtime (weak: it owns the driver), for the configuration a reload reads.
    ctx: std::sync::Weak<DaemonContext>,
}

impl Driver for ProxyDriver {
    fn services(&self) -> ServiceSet {
        let f = &self.forwarder;
        ServiceSet::new()
            .with(HostProxy(f.clone()))
            .with(DomainProxy(f.clone()))
            .with(NetworkProxy(f.clone()))
            .with(StoragePoolProxy(f.clone()))
            .with(StorageVolProxy(f.clone()))
            .with(SecretProxy(f.clone()))
    }

    /// SIGHUP or the admin service's Reload: the TLS listener reads its PKI files again (the
    /// runtime has already read the new configuration).
    fn reload(&self) -> Result<(), String> {
        let (Some(tls), Some(ctx)) = (&self.remote.tls, self.ctx.upgrade()) else {
            return Ok(());
        };
        let config = ctx
            .config
            .read()
            .map_err(|_| "configuration lock poisoned".to_owned())?
            .remote
            .clone();
        tls.reload(&config, ctx.mode)
    }
}

/// The forwarding services as routes, for the remote listeners (the Unix sockets get them
/// through the runtime's [`ServiceSet`]).
pub fn routes(f: &Forwarder) -> tonic::service::Routes {
    let mut builder = tonic::service::Routes::builder();
    builder
        .add_service(HostProxy(f.clone()))
        .add_service(DomainProxy(f.clone()))
        .add_service(NetworkProxy(f.clone()))
        .add_service(StoragePoolProxy(f.clone()))
        .add_service(StorageVolProxy(f.clone()))
        .add_service(SecretProxy(f.clone()));
    builder.routes()
}

/// Declares a forwarding service under a gRPC service name: the runtime's router dispatches by
/// name, and every name shares the one [`Forwarder`].
macro_rules! proxy_service {
    ($(#[$doc:meta] $ty:ident => $name:literal,)*) => {$(
        #[$doc]
        #[derive(Debug, Clone)]
        pub struct $ty(pub Forwarder);

        impl tonic::server::NamedService for $ty {
            const NAME: &'static str = $name;
        }

        impl tower::Service<http::Request<tonic::body::Body>> for $ty {
            type Response = http::Response<tonic::body::Body>;
            type Error = Infallible;
            type Future = forward::ForwardFuture;

            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
                self.0.forward($name, request)
            }
        }
    )*};
}

proxy_service! {
    /// Forwards `rvirt.v1.HostService`.
    HostProxy => "rvirt.v1.HostService",
    /// Forwards `rvirt.v1.DomainService`.
    DomainProxy => "rvirt.v1.DomainService",
    /// Forwards `rvirt.v1.NetworkService`.
    NetworkProxy => "rvirt.v1.NetworkService",
    /// Forwards `rvirt.v1.StoragePoolService`.
    StoragePoolProxy => "rvirt.v1.StoragePoolService",
    /// Forwards `rvirt.v1.StorageVolService`.
    StorageVolProxy => "rvirt.v1.StorageVolService",
    /// Forwards `rvirt.v1.SecretService`.
    SecretProxy => "rvirt.v1.SecretService",
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::server::NamedService as _;

    #[test]
    fn every_routed_service_has_a_forwarding_service() {
        let names = [
            HostProxy::NAME,
            DomainProxy::NAME,
            NetworkProxy::NAME,
            StoragePoolProxy::NAME,
            StorageVolProxy::NAME,
            SecretProxy::NAME,
        ];
        assert_eq!(names.as_slice(), rvirt::route::SERVICES);
    }
}
