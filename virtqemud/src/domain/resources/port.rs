//! Network ports for `<interface type='network'>`: virtqemud asks virtnetworkd for a port
//! (`CreateNetworkPort` with a `<networkport>` naming the owning domain and the NIC's MAC) and
//! learns from the reply which bridge to plug the tap into; the port is deleted when the domain
//! stops (`DeleteNetworkPort`), or when the start fails.

use rvirt::Connect;
use rvirt::connect::GrpcTransport;
use rvirt_conf::network::{Mac, NetworkPortDef, PortOwner};
use rvirt_proto::v1::network_service_client::NetworkServiceClient;
use rvirt_proto::v1::{
    CreateNetworkPortRequest, DeleteNetworkPortRequest, ErrorCode, ErrorDomain, NetworkPortRef, NetworkRef,
    network_ref,
};
use tonic::Status;

use super::{PortRecord, fail};

const SERVICE: &str = "rvirt.v1.NetworkService";

/// The `<networkport>` XML for one NIC of a domain, with a new port UUID (chosen here, as
/// libvirt's QEMU driver does; the schema requires one).
pub fn port_xml(owner_name: &str, owner_uuid: &str, mac: &str) -> Result<String, Status> {
    let def = NetworkPortDef {
        uuid: Some(rvirt_conf::xml::new_uuid()),
        owner: PortOwner {
            name: owner_name.to_owned(),
            uuid: owner_uuid.to_owned(),
        },
        mac: Mac {
            address: mac.to_owned(),
        },
        rxfilters: None,
        plug: None,
    };
    def.to_xml().map_err(|e| {
        fail(
            ErrorCode::InternalError,
            ErrorDomain::Qemu,
            format!("Cannot format the network port of interface {mac}: {e}"),
        )
    })
}

/// A port virtnetworkd created, and where to plug the NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedPort {
    /// For the status file and the release at stop.
    pub record: PortRecord,
    /// `network` or `bridge` (a tap on `bridge`); other plugs are refused.
    pub plug_type: String,
    /// The bridge.
    pub bridge: String,
}

fn client(conn: &Connect) -> Result<NetworkServiceClient<GrpcTransport>, rvirt::Error> {
    Ok(NetworkServiceClient::new(conn.transport(SERVICE)?))
}

fn network_ref(name: &str) -> Option<NetworkRef> {
    Some(NetworkRef {
        key: Some(network_ref::Key::Name(name.to_owned())),
    })
}

/// The error for a failed port request of interface `mac` on `network`.
pub fn port_error(network: &str, mac: &str, e: &rvirt::Error) -> Status {
    let what = format!("interface {mac} on network '{network}'");
    match e.code {
        ErrorCode::NoNetwork => fail(
            ErrorCode::NoNetwork,
            ErrorDomain::Network,
            format!(
                "Network not found: no network with matching name '{network}', used by interface {mac}: define and start it, or fix <source network>"
            ),
        ),
        ErrorCode::OperationInvalid => fail(
            ErrorCode::OperationInvalid,
            ErrorDomain::Network,
            format!(
                "Requested operation is not valid: network '{network}' of interface {mac} is not active: start the network first"
            ),
        ),
        ErrorCode::NoConnect => fail(
            ErrorCode::NoConnect,
            ErrorDomain::Network,
            format!(
                "Cannot plug {what}: virtnetworkd is not reachable ({}): start virtnetworkd",
                e.message
            ),
        ),
        code => fail(
            code,
            ErrorDomain::Network,
            format!("Cannot create a port for {what}: {}", e.message),
        ),
    }
}

/// Creates the port of NIC `mac` of domain (`owner_name`, `owner_uuid`) on `network`.
pub async fn create(
    conn: &Connect,
    network: &str,
    owner_name: &str,
    owner_uuid: &str,
    mac: &str,
) -> Result<CreatedPort, Status> {
    let xml = port_xml(owner_name, owner_uuid, mac)?;
    let mut client = client(conn).map_err(|e| port_error(network, mac, &e))?;
    let reply = client
        .create_network_port(CreateNetworkPortRequest {
            network: network_ref(network),
            xml,
            flags: 0,
        })
        .await
        .map_err(|s| port_error(network, mac, &rvirt::Error::from(s)))?
        .into_inner();
    let port = reply.port.unwrap_or_default();
    Ok(CreatedPort {
        record: PortRecord {
            network: network.to_owned(),
            uuid: port.uuid,
        },
        plug_type: port.plug_type,
        bridge: port.plug_device,
    })
}

/// Deletes a port; a port or network that is already gone is not an error.
pub async fn delete(conn: &Connect, port: &PortRecord) -> Result<(), rvirt::Error> {
    let result = client(conn)?
        .delete_network_port(DeleteNetworkPortRequest {
            port: Some(NetworkPortRef {
                network: network_ref(&port.network),
                uuid: port.uuid.clone(),
            }),
        })
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(status) => {
            let e = rvirt::Error::from(status);
            match e.code {
                ErrorCode::NoNetworkPort | ErrorCode::NoNetwork => Ok(()),
                _ => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rvirt_proto::error::from_status;

    #[test]
    fn port_xml_names_owner_and_mac_and_parses_back() {
        let xml = port_xml("vm1", "c7a5fdbd-edaf-9455-926a-d65c16db1809", "52:54:00:aa:bb:cc").expect("xml");
        let def = NetworkPortDef::parse(&xml).expect("the daemon's parser accepts it");
        assert_eq!(def.owner.name, "vm1");
        assert_eq!(def.owner.uuid, "c7a5fdbd-edaf-9455-926a-d65c16db1809");
        assert_eq!(def.mac.address, "52:54:00:aa:bb:cc");
        assert!(def.uuid.is_some());
        assert!(def.plug.is_none());
    }

    #[test]
    fn port_xml_validates_against_libvirts_schema() {
        let xml = port_xml("vm1", "c7a5fdbd-edaf-9455-926a-d65c16db1809", "52:54:00:aa:bb:cc").expect("xml");
        rvirt_testdata::validate("networkport.rng", &xml).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn port_errors_keep_libvirt_codes_and_name_the_interface() {
        let missing = rvirt::Error::new(ErrorCode::NoNetwork, ErrorDomain::Network, "x");
        let detail = from_status(&port_error("lan", "52:54:00:aa:bb:cc", &missing));
        assert_eq!(detail.code(), ErrorCode::NoNetwork);
        assert!(detail.message.contains("'lan'"), "{}", detail.message);
        assert!(detail.message.contains("52:54:00:aa:bb:cc"), "{}", detail.message);
        let inactive = rvirt::Error::new(ErrorCode::OperationInvalid, ErrorDomain::Network, "x");
        let detail = from_status(&port_error("lan", "52:54:00:aa:bb:cc", &inactive));
        assert_eq!(detail.code(), ErrorCode::OperationInvalid);
        assert!(detail.message.contains("not active"), "{}", detail.message);
    }
}
