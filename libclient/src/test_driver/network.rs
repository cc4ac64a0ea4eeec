//! The test driver's network service: libvirt's network lifecycle rules, in memory, with
//! events. Nothing is built on the host; a network is a record that can be active or not.

use std::pin::Pin;
use std::sync::Arc;

use rvirt_proto::error::status;
use rvirt_proto::v1::network_service_server::NetworkService;
use rvirt_proto::v1::*;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::node::{
    NetworkRecord, Objects, TestState, XmlNode, canonical_uuid, insert_uuid, uuid_v4, xml_error,
};
use crate::events::Delivery;

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchNetworkEventsResponse, Status>> + Send + 'static>>;

/// Reads the parts of a `<network>` the test driver keeps: name, UUID (filled in when absent)
/// and bridge. The one place network XML is read, to be replaced by `rvirt_conf`'s model.
pub fn parse_network(xml: &str) -> Result<NetworkRecord, Status> {
    let root = XmlNode::parse(xml)?;
    if root.name != "network" {
        return Err(xml_error(format!(
            "Expected a <network> element, found <{}>",
            root.name
        )));
    }
    let name = root
        .text_at(&["name"])
        .filter(|n| !n.is_empty())
        .ok_or_else(|| xml_error("The network has no <name>: add <name>NAME</name>"))?;
    if name.contains('/') {
        return Err(xml_error(format!("Network name {name:?} may not contain '/'")));
    }
    let (uuid, xml) = match root.text_at(&["uuid"]) {
        Some(text) => (
            canonical_uuid(&text)
                .ok_or_else(|| xml_error(format!("The network <uuid> {text:?} is not a UUID")))?,
            xml.trim().to_owned(),
        ),
        None => {
            let uuid = uuid_v4();
            let xml = insert_uuid(xml, &uuid);
            (uuid, xml)
        }
    };
    let bridge = root
        .child("bridge")
        .and_then(|b| b.attr("name"))
        .unwrap_or_default()
        .to_owned();
    Ok(NetworkRecord {
        name,
        uuid,
        bridge,
        xml,
        active: false,
        persistent: false,
        autostart: false,
    })
}

/// The test driver's network service.
#[derive(Debug)]
pub struct TestNetworks {
    state: Arc<TestState>,
}

impl TestNetworks {
    /// The network service of a test driver instance.
    pub fn new(state: Arc<TestState>) -> Self {
        TestNetworks { state }
    }

    fn emit(&self, network: &NetworkRecord, kind: NetworkEventLifecycleType) {
        self.state.network_events.emit((
            network.identity(),
            network_event::Event::Lifecycle(NetworkLifecycleEvent {
                r#type: kind as i32,
                detail: 0,
            }),
        ));
    }
}

fn invalid(message: String) -> Status {
    status(ErrorCode::OperationInvalid, ErrorDomain::Test, message)
}

/// The name (the map key) of the network a reference names.
/// The network a reference names, once the access rules that name networks allow the call on it.
fn find(objects: &Objects, network: Option<&NetworkRef>) -> Result<String, Status> {
    let name = find_unchecked(objects, network)?;
    let uuid = objects.networks.get(&name).map_or("", |n| n.uuid.as_str());
    rvirt_proto::access::authorize(&["network", "network_port"], &[&name, uuid])?;
    Ok(name)
}

fn find_unchecked(objects: &Objects, network: Option<&NetworkRef>) -> Result<String, Status> {
    let key = network.and_then(|n| n.key.as_ref()).ok_or_else(|| {
        status(
            ErrorCode::InvalidArg,
            ErrorDomain::Test,
            "No network given: set the network's name or UUID",
        )
    })?;
    let found = match key {
        network_ref::Key::Name(name) => objects.networks.get(name).map(|n| n.name.clone()),
        network_ref::Key::Uuid(uuid) => {
            let uuid = canonical_uuid(uuid);
            objects
                .networks
                .values()
                .find(|n| Some(&n.uuid) == uuid.as_ref())
                .map(|n| n.name.clone())
        }
    };
    found.ok_or_else(|| {
        let what = match key {
            network_ref::Key::Name(name) => format!("no network with matching name '{name}'"),
            network_ref::Key::Uuid(uuid) => format!("no network with matching uuid '{uuid}'"),
        };
        status(
            ErrorCode::NoNetwork,
            ErrorDomain::Test,
            format!("Network not found: {what}"),
        )
    })
}

fn get<'a>(objects: &'a mut Objects, key: &str) -> Result<&'a mut NetworkRecord, Status> {
    objects.networks.get_mut(key).ok_or_else(|| {
        status(
            ErrorCode::NoNetwork,
            ErrorDomain::Test,
            format!("Network not found: no network with matching name '{key}'"),
        )
    })
}

fn flagged(flags: u32, bit: NetworkListFlag) -> bool {
    flags & (bit as u32) != 0
}

fn matches_list_flags(n: &NetworkRecord, flags: u32) -> bool {
    use NetworkListFlag as F;
    let pair = |yes: F, no: F, value: bool| {
        (!flagged(flags, yes) && !flagged(flags, no))
            || (flagged(flags, yes) && value)
            || (flagged(flags, no) && !value)
    };
    pair(F::Active, F::Inactive, n.active)
        && pair(F::Persistent, F::Transient, n.persistent)
        && pair(F::Autostart, F::NoAutostart, n.autostart)
}

#[tonic::async_trait]
impl NetworkService for TestNetworks {
    async fn define_network_xml(
        &self,
        request: Request<DefineNetworkXmlRequest>,
    ) -> Result<Response<DefineNetworkXmlResponse>, Status> {
        let parsed = parse_network(&request.get_ref().xml)?;
        rvirt_proto::access::authorize(&["network"], &[&parsed.name, &parsed.uuid])?;
        let mut objects = self.state.lock();
        if let Some(other) = objects
            .networks
            .values()
            .find(|n| n.uuid == parsed.uuid && n.name != parsed.name)
        {
            return Err(status(
                ErrorCode::NetworkExist,
                ErrorDomain::Test,
                format!(
                    "Network '{}' already exists with uuid {}: use another UUID or undefine it first",
                    other.name, other.uuid
                ),
            ));
        }
        let network = match objects.networks.get_mut(&parsed.name) {
            Some(existing) if existing.uuid != parsed.uuid => {
                return Err(status(
                    ErrorCode::NetworkExist,
                    ErrorDomain::Test,
                    format!(
                        "Network '{}' already exists with uuid {}: use that UUID to redefine it",
                        existing.name, existing.uuid
                    ),
                ));
            }
            Some(existing) => {
                // An active network keeps its live bridge until it is restarted.
                existing.xml = parsed.xml;
                if !existing.active {
                    existing.bridge = parsed.bridge;
                }
                existing.persistent = true;
                existing.clone()
            }
            None => {
                let mut record = parsed;
                record.persistent = true;
                objects.networks.insert(record.name.clone(), record.clone());
                record
            }
        };
        drop(objects);
        self.emit(&network, NetworkEventLifecycleType::Defined);
        Ok(Response::new(DefineNetworkXmlResponse {
            network: Some(network.summary()),
        }))
    }

    async fn undefine_network(
        &self,
        request: Request<UndefineNetworkRequest>,
    ) -> Result<Response<UndefineNetworkResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find(&objects, request.get_ref().network.as_ref())?;
        let network = get(&mut objects, &key)?;
        if !network.persistent {
            return Err(invalid(format!(
                "Requested operation is not valid: network '{key}' is transient: destroy it instead"
            )));
        }
        let snapshot = network.clone();
        if network.active {
            // Keeps running as a transient network, as libvirt's network driver does.
            network.persistent = false;
            network.autostart = false;
        } else {
            objects.networks.remove(&key);
        }
        drop(objects);
        self.emit(&snapshot, NetworkEventLifecycleType::Undefined);
        Ok(Response::new(UndefineNetworkResponse::default()))
    }

    async fn create_network_xml(
        &self,
        request: Request<CreateNetworkXmlRequest>,
    ) -> Result<Response<CreateNetworkXmlResponse>, Status> {
        let parsed = parse_network(&request.get_ref().xml)?;
        rvirt_proto::access::authorize(&["network"], &[&parsed.name, &parsed.uuid])?;
        let mut objects = self.state.lock();
        if let Some(existing) = objects
            .networks
            .values()
            .find(|n| n.name == parsed.name || n.uuid == parsed.uuid)
        {
            let message = if existing.active {
                format!("Network '{}' is already running", existing.name)
            } else {
                format!(
                    "Network '{}' is already defined with uuid {}: start it instead",
                    existing.name, existing.uuid
                )
            };
            return Err(status(ErrorCode::NetworkExist, ErrorDomain::Test, message));
        }
        let mut record = parsed;
        record.active = true;
        objects.networks.insert(record.name.clone(), record.clone());
        drop(objects);
        self.emit(&record, NetworkEventLifecycleType::Started);
        Ok(Response::new(CreateNetworkXmlResponse {
            network: Some(record.summary()),
        }))
    }

    async fn start_network(
        &self,
        request: Request<StartNetworkRequest>,
    ) -> Result<Response<StartNetworkResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find(&objects, request.get_ref().network.as_ref())?;
        let network = get(&mut objects, &key)?;
        if network.active {
            return Err(invalid(format!(
                "Requested operation is not valid: network '{key}' is already running"
            )));
        }
        network.active = true;
        let snapshot = network.clone();
        drop(objects);
        self.emit(&snapshot, NetworkEventLifecycleType::Started);
        Ok(Response::new(StartNetworkResponse {
            network: Some(snapshot.summary()),
        }))
    }

    async fn destroy_network(
        &self,
        request: Request<DestroyNetworkRequest>,
    ) -> Result<Response<DestroyNetworkResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find(&objects, request.get_ref().network.as_ref())?;
        let network = get(&mut objects, &key)?;
        if !network.active {
            return Err(invalid(format!(
                "Requested operation is not valid: network '{key}' is not active"
            )));
        }
        network.active = false;
        let snapshot = network.clone();
        if !snapshot.persistent {
            objects.networks.remove(&key);
        }
        drop(objects);
        self.emit(&snapshot, NetworkEventLifecycleType::Stopped);
        Ok(Response::new(DestroyNetworkResponse::default()))
    }

    async fn lookup_network(
        &self,
        request: Request<LookupNetworkRequest>,
    ) -> Result<Response<LookupNetworkResponse>, Status> {
        let objects = self.state.lock();
        let key = find(&objects, request.get_ref().network.as_ref())?;
        let network = objects.networks.get(&key).map(NetworkRecord::summary);
        Ok(Response::new(LookupNetworkResponse { network }))
    }

    async fn list_networks(
        &self,
        request: Request<ListNetworksRequest>,
    ) -> Result<Response<ListNetworksResponse>, Status> {
        let flags = request.get_ref().flags;
        let objects = self.state.lock();
        let networks = objects
            .networks
            .values()
            .filter(|n| matches_list_flags(n, flags) && rvirt_proto::access::visible(&[&n.name, &n.uuid]))
            .map(NetworkRecord::summary)
            .collect();
        Ok(Response::new(ListNetworksResponse { networks }))
    }

    async fn get_network_xml(
        &self,
        request: Request<GetNetworkXmlRequest>,
    ) -> Result<Response<GetNetworkXmlResponse>, Status> {
        let objects = self.state.lock();
        let key = find(&objects, request.get_ref().network.as_ref())?;
        let xml = objects
            .networks
            .get(&key)
            .map(|n| n.xml.clone())
            .unwrap_or_default();
        Ok(Response::new(GetNetworkXmlResponse { xml }))
    }

    async fn get_network_info(
        &self,
        request: Request<GetNetworkInfoRequest>,
    ) -> Result<Response<GetNetworkInfoResponse>, Status> {
        let objects = self.state.lock();
        let key = find(&objects, request.get_ref().network.as_ref())?;
        let network = objects.networks.get(&key).map(NetworkRecord::summary);
        Ok(Response::new(GetNetworkInfoResponse { network }))
    }

    async fn get_network_autostart(
        &self,
        request: Request<GetNetworkAutostartRequest>,
    ) -> Result<Response<GetNetworkAutostartResponse>, Status> {
        let objects = self.state.lock();
        let key = find(&objects, request.get_ref().network.as_ref())?;
        let autostart = objects.networks.get(&key).is_some_and(|n| n.autostart);
        Ok(Response::new(GetNetworkAutostartResponse { autostart }))
    }

    async fn set_network_autostart(
        &self,
        request: Request<SetNetworkAutostartRequest>,
    ) -> Result<Response<SetNetworkAutostartResponse>, Status> {
        let mut objects = self.state.lock();
        let key = find(&objects, request.get_ref().network.as_ref())?;
        let network = get(&mut objects, &key)?;
        if !network.persistent {
            return Err(invalid(format!(
                "Requested operation is not valid: cannot set autostart for transient network '{key}'"
            )));
        }
        network.autostart = request.get_ref().autostart;
        Ok(Response::new(SetNetworkAutostartResponse::default()))
    }

    async fn get_network_bridge_name(
        &self,
        request: Request<GetNetworkBridgeNameRequest>,
    ) -> Result<Response<GetNetworkBridgeNameResponse>, Status> {
        let objects = self.state.lock();
        let key = find(&objects, request.get_ref().network.as_ref())?;
        let bridge_name = objects
            .networks
            .get(&key)
            .map(|n| n.bridge.clone())
            .unwrap_or_default();
        if bridge_name.is_empty() {
            return Err(invalid(format!(
                "Requested operation is not valid: network '{key}' does not have a bridge name"
            )));
        }
        Ok(Response::new(GetNetworkBridgeNameResponse { bridge_name }))
    }

    async fn get_network_dhcp_leases(
        &self,
        request: Request<GetNetworkDhcpLeasesRequest>,
    ) -> Result<Response<GetNetworkDhcpLeasesResponse>, Status> {
        let objects = self.state.lock();
        let key = find(&objects, request.get_ref().network.as_ref())?;
        if !objects.networks.get(&key).is_some_and(|n| n.active) {
            return Err(invalid(format!(
                "Requested operation is not valid: network '{key}' is not active"
            )));
        }
        // The test driver runs no DHCP server: no guest ever got a lease.
        Ok(Response::new(GetNetworkDhcpLeasesResponse { leases: Vec::new() }))
    }

    async fn watch_network_events(
        &self,
        request: Request<WatchNetworkEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let request = request.into_inner();
        let wanted = request.event_ids.clone();
        let filter = request.network.and_then(|n| n.key);
        let events = self
            .state
            .network_events
            .watch(&request.since_epoch, request.since_sequence);
        let epoch = self.state.network_events.epoch().to_owned();
        let stream = events.filter_map(move |delivery| {
            let message = match delivery {
                Delivery::Event(e) => {
                    let (who, event) = &e.event;
                    let id = match event {
                        network_event::Event::Lifecycle(_) => NetworkEventId::Lifecycle,
                        network_event::Event::DhcpLease(_) => NetworkEventId::DhcpLease,
                    };
                    if !wanted.is_empty() && !wanted.contains(&(id as i32)) {
                        return None;
                    }
                    let matches = match &filter {
                        None => true,
                        Some(network_ref::Key::Name(n)) => &who.name == n,
                        Some(network_ref::Key::Uuid(u)) => {
                            canonical_uuid(u).as_deref() == Some(who.uuid.as_str())
                        }
                    };
                    if !matches {
                        return None;
                    }
                    watch_network_events_response::Message::Event(NetworkEvent {
                        sequence: e.sequence,
                        epoch: epoch.clone(),
                        time: Some(prost_types::Timestamp::from(e.time)),
                        network: Some(who.clone()),
                        event: Some(event.clone()),
                    })
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
                    reason: rvirt_proto::v1::ResyncReason::from(reason) as i32,
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
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_name_uuid_and_bridge() {
        let n = parse_network(
            "<network><name>n1</name><uuid>DD8FE884-6C02-601E-7551-CCA97DF1C5DF</uuid><bridge name='br9'/></network>",
        )
        .expect("parse");
        assert_eq!(
            (n.name.as_str(), n.uuid.as_str(), n.bridge.as_str()),
            ("n1", "dd8fe884-6c02-601e-7551-cca97df1c5df", "br9")
        );
    }

    #[test]
    fn parse_fills_a_missing_uuid_into_the_xml() {
        let n = parse_network("<network><name>n2</name></network>").expect("parse");
        assert!(canonical_uuid(&n.uuid).is_some());
        assert!(n.xml.contains(&format!("<uuid>{}</uuid>", n.uuid)), "{}", n.xml);
    }

    #[test]
    fn parse_refuses_bad_networks() {
        for bad in [
            "<network/>",
            "<network><name>a/b</name></network>",
            "<network><name>a</name><uuid>x</uuid></network>",
            "<pool><name>a</name></pool>",
            "<network><name>a",
        ] {
            let err = parse_network(bad).expect_err(bad);
            assert_eq!(
                rvirt_proto::error::from_status(&err).code(),
                ErrorCode::XmlError,
                "{bad}"
            );
        }
    }
}
