//! Which daemon owns which service for which driver: one table, used by the client library in
//! direct mode and by virtproxyd, so both always agree.

use crate::uri::Driver;

/// A daemon that owns services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DaemonId {
    /// Its name, `virtqemud`.
    pub name: &'static str,
    /// The stem of its socket names, `virtqemud` (`rvirt` for the proxy).
    pub sockets: &'static str,
    /// Its driver directory name, `qemu`.
    pub driver: &'static str,
}

/// virtqemud: domains and the host.
pub const VIRTQEMUD: DaemonId = DaemonId {
    name: "virtqemud",
    sockets: "virtqemud",
    driver: "qemu",
};
/// virtnetworkd: networks.
pub const VIRTNETWORKD: DaemonId = DaemonId {
    name: "virtnetworkd",
    sockets: "virtnetworkd",
    driver: "network",
};
/// virtstoraged: storage pools and volumes.
pub const VIRTSTORAGED: DaemonId = DaemonId {
    name: "virtstoraged",
    sockets: "virtstoraged",
    driver: "storage",
};
/// virtsecretd: secrets.
pub const VIRTSECRETD: DaemonId = DaemonId {
    name: "virtsecretd",
    sockets: "virtsecretd",
    driver: "secret",
};
/// virtproxyd: routes everything, serves `test:///` in process.
pub const VIRTPROXYD: DaemonId = DaemonId {
    name: "virtproxyd",
    sockets: "rvirt",
    driver: "proxy",
};

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A daemon.
    Daemon(DaemonId),
    /// The in-process test driver.
    TestDriver,
}

const HOST: &str = "rvirt.v1.HostService";
const DOMAIN: &str = "rvirt.v1.DomainService";
const NETWORK: &str = "rvirt.v1.NetworkService";
const POOL: &str = "rvirt.v1.StoragePoolService";
const VOL: &str = "rvirt.v1.StorageVolService";
const SECRET: &str = "rvirt.v1.SecretService";

/// The route table: (URI driver, gRPC service) → daemon. `test` URIs go to the test driver for
/// every service; a pair not listed is not served for that URI.
pub const ROUTES: &[(Driver, &str, DaemonId)] = &[
    (Driver::Qemu, HOST, VIRTQEMUD),
    (Driver::Qemu, DOMAIN, VIRTQEMUD),
    (Driver::Qemu, NETWORK, VIRTNETWORKD),
    (Driver::Qemu, POOL, VIRTSTORAGED),
    (Driver::Qemu, VOL, VIRTSTORAGED),
    (Driver::Qemu, SECRET, VIRTSECRETD),
    (Driver::Network, HOST, VIRTNETWORKD),
    (Driver::Network, NETWORK, VIRTNETWORKD),
    (Driver::Storage, HOST, VIRTSTORAGED),
    (Driver::Storage, POOL, VIRTSTORAGED),
    (Driver::Storage, VOL, VIRTSTORAGED),
    (Driver::Secret, HOST, VIRTSECRETD),
    (Driver::Secret, SECRET, VIRTSECRETD),
];

/// The services a connection can reach, in the table's order.
pub const SERVICES: &[&str] = &[HOST, DOMAIN, NETWORK, POOL, VOL, SECRET];

/// The owner of `service` (`rvirt.v1.DomainService`) for URIs of `driver`, or `None` when that
/// URI does not serve it (`network:///system` has no domains).
pub fn owner(driver: Driver, service: &str) -> Option<Owner> {
    if driver == Driver::Test {
        return SERVICES.contains(&service).then_some(Owner::TestDriver);
    }
    ROUTES
        .iter()
        .find(|(d, s, _)| *d == driver && *s == service)
        .map(|(_, _, daemon)| Owner::Daemon(*daemon))
}

/// The gRPC service name of a path, `/rvirt.v1.DomainService/StartDomain` → `rvirt.v1.DomainService`.
pub fn service_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    rest.split_once('/').map(|(service, _)| service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_uris_reach_every_daemon() {
        assert_eq!(owner(Driver::Qemu, DOMAIN), Some(Owner::Daemon(VIRTQEMUD)));
        assert_eq!(owner(Driver::Qemu, NETWORK), Some(Owner::Daemon(VIRTNETWORKD)));
        assert_eq!(owner(Driver::Qemu, VOL), Some(Owner::Daemon(VIRTSTORAGED)));
        assert_eq!(owner(Driver::Qemu, SECRET), Some(Owner::Daemon(VIRTSECRETD)));
    }

    #[test]
    fn category_uris_reach_only_their_daemon() {
        assert_eq!(owner(Driver::Network, HOST), Some(Owner::Daemon(VIRTNETWORKD)));
        assert_eq!(owner(Driver::Network, DOMAIN), None);
        assert_eq!(owner(Driver::Secret, POOL), None);
        assert_eq!(owner(Driver::Storage, POOL), Some(Owner::Daemon(VIRTSTORAGED)));
    }

    #[test]
    fn test_uris_stay_in_process_and_admin_is_never_routed() {
        assert_eq!(owner(Driver::Test, DOMAIN), Some(Owner::TestDriver));
        assert_eq!(owner(Driver::Test, "rvirt.v1.AdminService"), None);
        assert_eq!(owner(Driver::Qemu, "rvirt.v1.AdminService"), None);
    }

    #[test]
    fn every_routed_service_is_in_the_contract() {
        let contract = rvirt_proto::access::services();
        for service in SERVICES {
            assert!(contract.contains(service), "{service}");
        }
        assert_eq!(service_of("/rvirt.v1.DomainService/StartDomain"), Some(DOMAIN));
        assert_eq!(service_of("nonsense"), None);
    }
}
