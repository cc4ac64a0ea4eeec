//! `NetworkService`: the thin gRPC adapter over [`NetworkDriver`]. It decodes requests, calls
//! the driver and maps results and errors; no logic lives here. Access levels are enforced
//! before these handlers run.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use rvirt_daemon::events::Delivery;
use rvirt_proto::error::to_status;
use rvirt_proto::v1::network_service_server::NetworkService;
use rvirt_proto::v1::*;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use crate::driver::{
    EventKind, Key, LeaseInfo, Lifecycle, NetError, NetworkDriver, NetworkEvent, PortSummary, Summary,
};
use crate::leases::Change;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct NetworkServiceImpl {
    driver: Arc<NetworkDriver>,
}

impl NetworkServiceImpl {
    /// The service over `driver`.
    pub fn new(driver: Arc<NetworkDriver>) -> Self {
        NetworkServiceImpl { driver }
    }

    /// As a tonic server.
    pub fn into_server(self) -> network_service_server::NetworkServiceServer<Self> {
        network_service_server::NetworkServiceServer::new(self)
    }
}

fn status(e: NetError) -> Status {
    to_status(&Error {
        code: e.code as i32,
        domain: ErrorDomain::Network as i32,
        message: e.message,
        xml_path: e.xml_path,
        ..Error::default()
    })
}

fn key(r: Option<NetworkRef>) -> Result<Key, Status> {
    match r.and_then(|r| r.key) {
        Some(network_ref::Key::Name(n)) => Ok(Key::Name(n)),
        Some(network_ref::Key::Uuid(u)) => Ok(Key::Uuid(u)),
        None => Err(status(NetError::new(
            ErrorCode::InvalidArg,
            "No network given: set the network's name or uuid",
        ))),
    }
}

fn network(s: Summary) -> Network {
    Network {
        name: s.name,
        uuid: s.uuid,
        active: s.active,
        persistent: s.persistent,
        autostart: s.autostart,
        bridge_name: s.bridge,
    }
}

fn port_key(r: Option<NetworkPortRef>) -> Result<(Key, String), Status> {
    let r = r.ok_or_else(|| {
        status(NetError::new(
            ErrorCode::InvalidArg,
            "No port given: set the network and the port's uuid",
        ))
    })?;
    Ok((key(r.network)?, r.uuid))
}

fn port(s: PortSummary) -> NetworkPort {
    NetworkPort {
        uuid: s.uuid,
        network: Some(NetworkIdentity {
            name: s.network,
            uuid: s.network_uuid,
        }),
        owner_name: s.owner_name,
        owner_uuid: s.owner_uuid,
        mac: s.mac,
        plug_type: s.plug_type,
        plug_device: s.plug_device,
    }
}

/// A lease as the API reports it.
pub fn lease_message(info: &LeaseInfo) -> NetworkDhcpLease {
    let l = &info.lease;
    NetworkDhcpLease {
        iface: info.bridge.clone(),
        expiry_time: (l.expiry != 0).then(|| prost_types::Timestamp {
            seconds: i64::try_from(l.expiry).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        r#type: if l.ip.is_ipv6() {
            IpAddrType::Ipv6
        } else {
            IpAddrType::Ipv4
        } as i32,
        mac: l.mac.clone(),
        iaid: l.iaid.clone(),
        ipaddr: l.ip.to_string(),
        prefix: u32::from(info.prefix),
        hostname: l.hostname.clone(),
        clientid: l.clientid.clone(),
    }
}

fn event_id(kind: &EventKind) -> NetworkEventId {
    match kind {
        EventKind::Lifecycle(_) => NetworkEventId::Lifecycle,
        EventKind::Lease(_) => NetworkEventId::DhcpLease,
    }
}

fn event_message(sequence: u64, epoch: &str, time: SystemTime, e: &NetworkEvent) -> NetworkEvent_ {
    let event = match &e.kind {
        EventKind::Lifecycle(l) => network_event::Event::Lifecycle(NetworkLifecycleEvent {
            r#type: match l {
                Lifecycle::Defined => NetworkEventLifecycleType::Defined,
                Lifecycle::Undefined => NetworkEventLifecycleType::Undefined,
                Lifecycle::Started => NetworkEventLifecycleType::Started,
                Lifecycle::Stopped => NetworkEventLifecycleType::Stopped,
            } as i32,
            detail: 0,
        }),
        EventKind::Lease(le) => {
            let (change, lease) = match &le.change {
                Change::Added(l) => (NetworkDhcpLeaseChange::Added, l),
                Change::Removed(l) => (NetworkDhcpLeaseChange::Removed, l),
                Change::Updated(l) => (NetworkDhcpLeaseChange::Updated, l),
            };
            network_event::Event::DhcpLease(NetworkDhcpLeaseEvent {
                change: change as i32,
                lease: Some(lease_message(&LeaseInfo {
                    lease: lease.clone(),
                    bridge: le.bridge.clone(),
                    prefix: le.prefix,
                })),
            })
        }
    };
    NetworkEvent_ {
        sequence,
        epoch: epoch.to_owned(),
        time: Some(prost_types::Timestamp::from(time)),
        network: Some(NetworkIdentity {
            name: e.name.clone(),
            uuid: e.uuid.clone(),
        }),
        event: Some(event),
    }
}

/// The generated event message (named apart from the driver's event).
type NetworkEvent_ = rvirt_proto::v1::NetworkEvent;

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchNetworkEventsResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl NetworkService for NetworkServiceImpl {
    async fn define_network_xml(
        &self,
        request: Request<DefineNetworkXmlRequest>,
    ) -> Result<Response<DefineNetworkXmlResponse>, Status> {
        let summary = self
            .driver
            .define(&request.into_inner().xml)
            .await
            .map_err(status)?;
        Ok(Response::new(DefineNetworkXmlResponse {
            network: Some(network(summary)),
        }))
    }

    async fn undefine_network(
        &self,
        request: Request<UndefineNetworkRequest>,
    ) -> Result<Response<UndefineNetworkResponse>, Status> {
        self.driver
            .undefine(&key(request.into_inner().network)?)
            .await
            .map_err(status)?;
        Ok(Response::new(UndefineNetworkResponse {}))
    }

    async fn create_network_xml(
        &self,
        request: Request<CreateNetworkXmlRequest>,
    ) -> Result<Response<CreateNetworkXmlResponse>, Status> {
        let summary = self
            .driver
            .create(&request.into_inner().xml)
            .await
            .map_err(status)?;
        Ok(Response::new(CreateNetworkXmlResponse {
            network: Some(network(summary)),
        }))
    }

    async fn start_network(
        &self,
        request: Request<StartNetworkRequest>,
    ) -> Result<Response<StartNetworkResponse>, Status> {
        let summary = self
            .driver
            .start(&key(request.into_inner().network)?)
            .await
            .map_err(status)?;
        Ok(Response::new(StartNetworkResponse {
            network: Some(network(summary)),
        }))
    }

    async fn destroy_network(
        &self,
        request: Request<DestroyNetworkRequest>,
    ) -> Result<Response<DestroyNetworkResponse>, Status> {
        self.driver
            .destroy(&key(request.into_inner().network)?)
            .await
            .map_err(status)?;
        Ok(Response::new(DestroyNetworkResponse {}))
    }

    async fn lookup_network(
        &self,
        request: Request<LookupNetworkRequest>,
    ) -> Result<Response<LookupNetworkResponse>, Status> {
        let summary = self
            .driver
            .lookup(&key(request.into_inner().network)?)
            .map_err(status)?;
        Ok(Response::new(LookupNetworkResponse {
            network: Some(network(summary)),
        }))
    }

    async fn list_networks(
        &self,
        request: Request<ListNetworksRequest>,
    ) -> Result<Response<ListNetworksResponse>, Status> {
        let networks = self
            .driver
            .list(request.into_inner().flags)
            .into_iter()
            .filter(|s| rvirt_proto::access::visible(&[&s.name, &s.uuid]))
            .map(network)
            .collect();
        Ok(Response::new(ListNetworksResponse { networks }))
    }

    async fn get_network_xml(
        &self,
        request: Request<GetNetworkXmlRequest>,
    ) -> Result<Response<GetNetworkXmlResponse>, Status> {
        let r = request.into_inner();
        let inactive = r.flags & NetworkXmlFlag::Inactive as u32 != 0;
        let xml = self.driver.xml(&key(r.network)?, inactive).map_err(status)?;
        Ok(Response::new(GetNetworkXmlResponse { xml }))
    }

    async fn get_network_info(
        &self,
        request: Request<GetNetworkInfoRequest>,
    ) -> Result<Response<GetNetworkInfoResponse>, Status> {
        let summary = self
            .driver
            .lookup(&key(request.into_inner().network)?)
            .map_err(status)?;
        Ok(Response::new(GetNetworkInfoResponse {
            network: Some(network(summary)),
        }))
    }

    async fn get_network_autostart(
        &self,
        request: Request<GetNetworkAutostartRequest>,
    ) -> Result<Response<GetNetworkAutostartResponse>, Status> {
        let autostart = self
            .driver
            .autostart(&key(request.into_inner().network)?)
            .map_err(status)?;
        Ok(Response::new(GetNetworkAutostartResponse { autostart }))
    }

    async fn set_network_autostart(
        &self,
        request: Request<SetNetworkAutostartRequest>,
    ) -> Result<Response<SetNetworkAutostartResponse>, Status> {
        let r = request.into_inner();
        self.driver
            .set_autostart(&key(r.network)?, r.autostart)
            .await
            .map_err(status)?;
        Ok(Response::new(SetNetworkAutostartResponse {}))
    }

    async fn get_network_bridge_name(
        &self,
        request: Request<GetNetworkBridgeNameRequest>,
    ) -> Result<Response<GetNetworkBridgeNameResponse>, Status> {
        let bridge_name = self
            .driver
            .bridge_name(&key(request.into_inner().network)?)
            .map_err(status)?;
        Ok(Response::new(GetNetworkBridgeNameResponse { bridge_name }))
    }

    async fn get_network_dhcp_leases(
        &self,
        request: Request<GetNetworkDhcpLeasesRequest>,
    ) -> Result<Response<GetNetworkDhcpLeasesResponse>, Status> {
        let r = request.into_inner();
        let leases = self
            .driver
            .leases(&key(r.network)?, &r.mac)
            .map_err(status)?
            .iter()
            .map(lease_message)
            .collect();
        Ok(Response::new(GetNetworkDhcpLeasesResponse { leases }))
    }

    async fn update_network(
        &self,
        request: Request<UpdateNetworkRequest>,
    ) -> Result<Response<UpdateNetworkResponse>, Status> {
        let r = request.into_inner();
        self.driver
            .update(
                &key(r.network)?,
                r.command,
                r.section,
                r.parent_index,
                &r.xml,
                r.flags,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(UpdateNetworkResponse {}))
    }

    async fn create_network_port(
        &self,
        request: Request<CreateNetworkPortRequest>,
    ) -> Result<Response<CreateNetworkPortResponse>, Status> {
        let r = request.into_inner();
        let (summary, xml) = self
            .driver
            .create_port(&key(r.network)?, &r.xml, r.flags)
            .await
            .map_err(status)?;
        Ok(Response::new(CreateNetworkPortResponse {
            port: Some(port(summary)),
            xml,
        }))
    }

    async fn delete_network_port(
        &self,
        request: Request<DeleteNetworkPortRequest>,
    ) -> Result<Response<DeleteNetworkPortResponse>, Status> {
        let (network, uuid) = port_key(request.into_inner().port)?;
        self.driver.delete_port(&network, &uuid).await.map_err(status)?;
        Ok(Response::new(DeleteNetworkPortResponse {}))
    }

    async fn lookup_network_port(
        &self,
        request: Request<LookupNetworkPortRequest>,
    ) -> Result<Response<LookupNetworkPortResponse>, Status> {
        let (network, uuid) = port_key(request.into_inner().port)?;
        let summary = self.driver.lookup_port(&network, &uuid).map_err(status)?;
        Ok(Response::new(LookupNetworkPortResponse {
            port: Some(port(summary)),
        }))
    }

    async fn list_network_ports(
        &self,
        request: Request<ListNetworkPortsRequest>,
    ) -> Result<Response<ListNetworkPortsResponse>, Status> {
        let ports = self
            .driver
            .list_ports(&key(request.into_inner().network)?)
            .map_err(status)?
            .into_iter()
            .map(port)
            .collect();
        Ok(Response::new(ListNetworkPortsResponse { ports }))
    }

    async fn get_network_port_xml(
        &self,
        request: Request<GetNetworkPortXmlRequest>,
    ) -> Result<Response<GetNetworkPortXmlResponse>, Status> {
        let (network, uuid) = port_key(request.into_inner().port)?;
        let xml = self.driver.port_xml(&network, &uuid).map_err(status)?;
        Ok(Response::new(GetNetworkPortXmlResponse { xml }))
    }

    async fn watch_network_events(
        &self,
        request: Request<WatchNetworkEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let r = request.into_inner();
        let only: Option<(String, String)> = match r.network {
            Some(n) => {
                let summary = self.driver.lookup(&key(Some(n))?).map_err(status)?;
                Some((summary.name, summary.uuid))
            }
            None => None,
        };
        let ids: Vec<i32> = r.event_ids;
        let log = self.driver.events();
        let epoch = log.epoch().to_owned();
        let gate = rvirt_proto::access::current_gate();
        let stream = log
            .watch(&r.since_epoch, r.since_sequence)
            .filter_map(move |delivery| {
                let message = match delivery {
                    Delivery::Event(e) => {
                        if let Some((name, uuid)) = &only
                            && (e.event.name != *name || e.event.uuid != *uuid)
                        {
                            return None;
                        }
                        if !ids.is_empty() && !ids.contains(&(event_id(&e.event.kind) as i32)) {
                            return None;
                        }
                        // Events of networks the caller may not see are left out, as from lists.
                        if gate
                            .as_ref()
                            .is_some_and(|g| g.check(&[&e.event.name, &e.event.uuid]).is_err())
                        {
                            return None;
                        }
                        watch_network_events_response::Message::Event(event_message(
                            e.sequence, &epoch, e.time, &e.event,
                        ))
                    }
                    Delivery::CaughtUp {
                        epoch,
                        current_sequence,
                    } => watch_network_events_response::Message::CaughtUp(CaughtUp {
                        epoch,
                        current_sequence,
                    }),
                    Delivery::ResyncRequired {
                        reason,
                        epoch,
                        requested_sequence,
                        oldest_retained_sequence,
                        current_sequence,
                    } => watch_network_events_response::Message::ResyncRequired(ResyncRequired {
                        reason: ResyncReason::from(reason) as i32,
                        epoch,
                        requested_sequence,
                        oldest_retained_sequence,
                        current_sequence,
                    }),
                };
                Some(Ok(WatchNetworkEventsResponse {
                    message: Some(message),
                }))
            });
        Ok(Response::new(Box::pin(stream) as EventStream))
    }
}
