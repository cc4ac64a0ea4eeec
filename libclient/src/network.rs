//! Virtual networks: typed handles named after libvirt's API (`virNetwork*`), on a [`Connect`].

use rvirt_proto::v1::network_service_client::NetworkServiceClient;
use rvirt_proto::v1::*;

use crate::connect::{Connect, GrpcTransport};
use crate::error::Result;

const SERVICE: &str = "rvirt.v1.NetworkService";

/// A network as seen when it was looked up (libvirt's `virNetworkPtr`): its identity is fixed,
/// its state is whatever the last call returned.
#[derive(Debug, Clone)]
pub struct Network {
    conn: Connect,
    summary: rvirt_proto::v1::Network,
}

impl Connect {
    fn network_client(&self) -> Result<NetworkServiceClient<GrpcTransport>> {
        Ok(NetworkServiceClient::new(self.transport(SERVICE)?))
    }

    fn network_handle(&self, summary: Option<rvirt_proto::v1::Network>) -> Network {
        Network {
            conn: self.clone(),
            summary: summary.unwrap_or_default(),
        }
    }

    async fn lookup_network(&self, key: network_ref::Key) -> Result<Network> {
        let reply = self
            .network_client()?
            .lookup_network(LookupNetworkRequest {
                network: Some(NetworkRef { key: Some(key) }),
            })
            .await?;
        Ok(self.network_handle(reply.into_inner().network))
    }

    /// `virNetworkLookupByName`.
    pub async fn lookup_network_by_name(&self, name: &str) -> Result<Network> {
        self.lookup_network(network_ref::Key::Name(name.to_owned())).await
    }

    /// `virNetworkLookupByUUIDString`.
    pub async fn lookup_network_by_uuid(&self, uuid: &str) -> Result<Network> {
        self.lookup_network(network_ref::Key::Uuid(uuid.to_owned())).await
    }

    /// `virConnectListAllNetworks`: `flags` are `NetworkListFlag` bits.
    pub async fn list_all_networks(&self, flags: u32) -> Result<Vec<Network>> {
        let reply = self
            .network_client()?
            .list_networks(ListNetworksRequest { flags })
            .await?;
        Ok(reply
            .into_inner()
            .networks
            .into_iter()
            .map(|n| self.network_handle(Some(n)))
            .collect())
    }

    /// `virNetworkDefineXMLFlags`: `flags` are `NetworkDefineFlag` bits.
    pub async fn define_network_xml(&self, xml: &str, flags: u32) -> Result<Network> {
        let reply = self
            .network_client()?
            .define_network_xml(DefineNetworkXmlRequest {
                xml: xml.into(),
                flags,
            })
            .await?;
        Ok(self.network_handle(reply.into_inner().network))
    }

    /// `virNetworkCreateXMLFlags`: a transient network, started.
    pub async fn create_network_xml(&self, xml: &str, flags: u32) -> Result<Network> {
        let reply = self
            .network_client()?
            .create_network_xml(CreateNetworkXmlRequest {
                xml: xml.into(),
                flags,
            })
            .await?;
        Ok(self.network_handle(reply.into_inner().network))
    }
}

impl Network {
    fn reference(&self) -> Option<NetworkRef> {
        Some(NetworkRef {
            key: Some(network_ref::Key::Uuid(self.summary.uuid.clone())),
        })
    }

    fn client(&self) -> Result<NetworkServiceClient<GrpcTransport>> {
        self.conn.network_client()
    }

    /// `virNetworkGetName`.
    pub fn name(&self) -> &str {
        &self.summary.name
    }

    /// `virNetworkGetUUIDString`.
    pub fn uuid(&self) -> &str {
        &self.summary.uuid
    }

    /// The summary returned by the last call (active, persistent, autostart, bridge).
    pub fn summary(&self) -> &rvirt_proto::v1::Network {
        &self.summary
    }

    /// Re-reads the summary (`virNetworkIsActive`, `virNetworkIsPersistent` and friends).
    pub async fn refresh(&mut self) -> Result<()> {
        let reply = self
            .client()?
            .get_network_info(GetNetworkInfoRequest {
                network: self.reference(),
            })
            .await?;
        if let Some(network) = reply.into_inner().network {
            self.summary = network;
        }
        Ok(())
    }

    /// `virNetworkCreate`: starts a defined network.
    pub async fn create(&mut self) -> Result<()> {
        let reply = self
            .client()?
            .start_network(StartNetworkRequest {
                network: self.reference(),
            })
            .await?;
        if let Some(network) = reply.into_inner().network {
            self.summary = network;
        }
        Ok(())
    }

    /// `virNetworkDestroy`: stops the network; a transient one disappears.
    pub async fn destroy(&self) -> Result<()> {
        self.client()?
            .destroy_network(DestroyNetworkRequest {
                network: self.reference(),
            })
            .await?;
        Ok(())
    }

    /// `virNetworkUndefine`: removes the persistent definition.
    pub async fn undefine(&self) -> Result<()> {
        self.client()?
            .undefine_network(UndefineNetworkRequest {
                network: self.reference(),
            })
            .await?;
        Ok(())
    }

    /// `virNetworkGetXMLDesc`: `flags` are `NetworkXmlFlag` bits.
    pub async fn xml_desc(&self, flags: u32) -> Result<String> {
        let reply = self
            .client()?
            .get_network_xml(GetNetworkXmlRequest {
                network: self.reference(),
                flags,
            })
            .await?;
        Ok(reply.into_inner().xml)
    }

    /// `virNetworkGetAutostart`.
    pub async fn autostart(&self) -> Result<bool> {
        let reply = self
            .client()?
            .get_network_autostart(GetNetworkAutostartRequest {
                network: self.reference(),
            })
            .await?;
        Ok(reply.into_inner().autostart)
    }

    /// `virNetworkSetAutostart`.
    pub async fn set_autostart(&self, autostart: bool) -> Result<()> {
        self.client()?
            .set_network_autostart(SetNetworkAutostartRequest {
                network: self.reference(),
                autostart,
            })
            .await?;
        Ok(())
    }

    /// `virNetworkGetBridgeName`.
    pub async fn bridge_name(&self) -> Result<String> {
        let reply = self
            .client()?
            .get_network_bridge_name(GetNetworkBridgeNameRequest {
                network: self.reference(),
            })
            .await?;
        Ok(reply.into_inner().bridge_name)
    }

    /// `virNetworkGetDHCPLeases`: every lease, or those of one MAC address.
    pub async fn dhcp_leases(&self, mac: Option<&str>) -> Result<Vec<NetworkDhcpLease>> {
        let reply = self
            .client()?
            .get_network_dhcp_leases(GetNetworkDhcpLeasesRequest {
                network: self.reference(),
                mac: mac.unwrap_or_default().to_owned(),
            })
            .await?;
        Ok(reply.into_inner().leases)
    }
}

fn split_network_event(
    response: WatchNetworkEventsResponse,
) -> Option<crate::watch::WatchMessage<NetworkEvent>> {
    use crate::watch::WatchMessage;
    use watch_network_events_response::Message;
    match response.message? {
        Message::Event(event) => Some(WatchMessage::Event {
            epoch: event.epoch.clone(),
            sequence: event.sequence,
            event,
        }),
        Message::ResyncRequired(r) => Some(WatchMessage::Resync(r)),
        Message::CaughtUp(c) => Some(WatchMessage::CaughtUp(c)),
    }
}

impl Connect {
    /// Network events (`virConnectNetworkEventRegisterAny`), reconnecting and resuming by
    /// sequence when the connection drops. `filter` narrows the watch (network, event ids).
    /// Returns once the daemon confirmed the watch: every change made after it is seen.
    pub async fn network_events(
        &self,
        filter: WatchNetworkEventsRequest,
    ) -> Result<crate::watch::Subscription<NetworkEvent>> {
        let transport = self.transport(SERVICE)?;
        let open: crate::watch::Opener<WatchNetworkEventsResponse> = Box::new(move |epoch, sequence| {
            let mut client = NetworkServiceClient::new(transport.clone());
            let request = WatchNetworkEventsRequest {
                since_epoch: epoch,
                since_sequence: sequence,
                ..filter.clone()
            };
            Box::pin(async move {
                let stream = client.watch_network_events(request).await?.into_inner();
                Ok(Box::pin(stream) as crate::watch::RawStream<WatchNetworkEventsResponse>)
            })
        });
        crate::watch::subscribe(open, split_network_event, None).await
    }
}
