//! The admin service, implemented once for every daemon and served on its admin socket.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rvirt::paths::Mode;
use rvirt_proto::error::status;
use rvirt_proto::v1::admin_service_server::AdminService;
use rvirt_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::clients::ClientInfo;
use crate::listen::{RemotePeer, RemoteTransport, SocketKind};
use crate::server::DaemonContext;

/// The admin service of one daemon.
#[derive(Debug)]
pub struct AdminApi {
    ctx: Arc<DaemonContext>,
}

impl AdminApi {
    /// The admin service of daemon `ctx`.
    pub fn new(ctx: Arc<DaemonContext>) -> Self {
        AdminApi { ctx }
    }
}

fn listener_kind(kind: SocketKind) -> ListenerKind {
    match kind {
        SocketKind::ReadWrite => ListenerKind::ReadWrite,
        SocketKind::ReadOnly => ListenerKind::ReadOnly,
        SocketKind::Admin => ListenerKind::Admin,
    }
}

/// A client as the admin API shows it: a local one with its credentials, a network one with
/// its transport, address and certificate subject (its uid and gid are placeholders that grant
/// nothing, so they are not shown).
fn client((info, remote): &(ClientInfo, Option<RemotePeer>)) -> Client {
    let (transport, address, uid, gid) = match remote {
        None => (
            ClientTransport::Unix,
            String::new(),
            Some(info.uid),
            Some(info.gid),
        ),
        Some(peer) => (
            match peer.transport {
                RemoteTransport::Tls => ClientTransport::Tls,
                RemoteTransport::Tcp => ClientTransport::Tcp,
            },
            peer.address.to_string(),
            None,
            None,
        ),
    };
    Client {
        id: info.id,
        transport: transport as i32,
        socket: listener_kind(info.socket) as i32,
        connected_at: Some(prost_types::Timestamp::from(info.connected_at)),
        uid,
        gid,
        pid: info.pid.and_then(|p| u32::try_from(p).ok()),
        certificate_subject: info.cert_subject.clone().unwrap_or_default(),
        address,
        read_only: info.socket == SocketKind::ReadOnly,
    }
}

fn no_client(id: u64) -> Status {
    status(
        ErrorCode::NoClient,
        ErrorDomain::Admin,
        format!("No client with id {id} is connected: list them with ListClients"),
    )
}

fn u32_saturating(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_server_info(
        &self,
        _: Request<GetServerInfoRequest>,
    ) -> Result<Response<GetServerInfoResponse>, Status> {
        let ctx = &self.ctx;
        let sockets = ctx
            .sockets
            .read()
            .map(|s| {
                s.iter()
                    .map(|s| ListeningSocket {
                        kind: listener_kind(s.kind) as i32,
                        address: s
                            .path
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                        activated: s.activated,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(GetServerInfoResponse {
            daemon: ctx.spec.name.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            mode: match ctx.mode {
                Mode::System => DaemonMode::System,
                Mode::Session => DaemonMode::Session,
            } as i32,
            started_at: Some(prost_types::Timestamp::from(ctx.started_at)),
            uptime_seconds: ctx.started_at.elapsed().map(|d| d.as_secs()).unwrap_or(0),
            worker_threads: u32_saturating(ctx.workers),
            current_clients: u32_saturating(ctx.clients.list().len()),
            max_clients: u32_saturating(ctx.limits.max_clients.load(Ordering::Relaxed)),
            admin_max_clients: u32_saturating(ctx.limits.admin_max_clients.load(Ordering::Relaxed)),
            sockets,
            idle_timeout_seconds: ctx.args.timeout.unwrap_or(0),
            busy_reason: ctx.driver_busy().unwrap_or_default(),
        }))
    }

    async fn list_clients(
        &self,
        _: Request<ListClientsRequest>,
    ) -> Result<Response<ListClientsResponse>, Status> {
        let clients = self.ctx.clients.list_with_peers().iter().map(client).collect();
        Ok(Response::new(ListClientsResponse { clients }))
    }

    async fn get_client_info(
        &self,
        request: Request<GetClientInfoRequest>,
    ) -> Result<Response<GetClientInfoResponse>, Status> {
        let id = request.get_ref().id;
        let info = self.ctx.clients.get(id).ok_or_else(|| no_client(id))?;
        Ok(Response::new(GetClientInfoResponse {
            client: Some(client(&info)),
        }))
    }

    async fn close_client(
        &self,
        request: Request<CloseClientRequest>,
    ) -> Result<Response<CloseClientResponse>, Status> {
        let id = request.get_ref().id;
        if !self.ctx.clients.close(id) {
            return Err(no_client(id));
        }
        tracing::info!(client = id, "client closed by the admin");
        Ok(Response::new(CloseClientResponse {}))
    }

    async fn get_log_filters(
        &self,
        _: Request<GetLogFiltersRequest>,
    ) -> Result<Response<GetLogFiltersResponse>, Status> {
        Ok(Response::new(GetLogFiltersResponse {
            filters: self.ctx.logging.filters(),
        }))
    }

    async fn set_log_filters(
        &self,
        request: Request<SetLogFiltersRequest>,
    ) -> Result<Response<SetLogFiltersResponse>, Status> {
        self.ctx
            .logging
            .set_filters(&request.get_ref().filters)
            .map_err(|e| status(ErrorCode::InvalidArg, ErrorDomain::Admin, e))?;
        Ok(Response::new(SetLogFiltersResponse {}))
    }

    async fn get_log_outputs(
        &self,
        _: Request<GetLogOutputsRequest>,
    ) -> Result<Response<GetLogOutputsResponse>, Status> {
        Ok(Response::new(GetLogOutputsResponse {
            outputs: "1:stderr".to_owned(),
        }))
    }

    async fn set_server_limits(
        &self,
        request: Request<SetServerLimitsRequest>,
    ) -> Result<Response<SetServerLimitsResponse>, Status> {
        let request = request.into_inner();
        let limits = &self.ctx.limits;
        if request.admin_max_clients == Some(0) {
            return Err(status(
                ErrorCode::InvalidArg,
                ErrorDomain::Admin,
                "admin_max_clients must be at least 1, or nobody could administer the daemon",
            ));
        }
        if let Some(max) = request.max_clients {
            limits.max_clients.store(max as usize, Ordering::Relaxed);
        }
        if let Some(max) = request.admin_max_clients {
            limits.admin_max_clients.store(max as usize, Ordering::Relaxed);
        }
        Ok(Response::new(SetServerLimitsResponse {
            max_clients: u32_saturating(limits.max_clients.load(Ordering::Relaxed)),
            admin_max_clients: u32_saturating(limits.admin_max_clients.load(Ordering::Relaxed)),
        }))
    }

    async fn reload(&self, _: Request<ReloadRequest>) -> Result<Response<ReloadResponse>, Status> {
        self.ctx.reload().map_err(|e| {
            status(
                ErrorCode::ConfSyntax,
                ErrorDomain::Conf,
                format!("Reload failed, the previous configuration stays: {e}"),
            )
        })?;
        Ok(Response::new(ReloadResponse {}))
    }
}
