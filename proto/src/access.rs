//! The access table: what every RPC of the contract needs, generated at build time from the
//! `(rvirt.v1.access)` method options, so enforcement lives in one interceptor and no handler can
//! forget it.

/// How much trust a call needs (mirrors `rvirt.v1.AccessLevel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccessLevel {
    /// Reads state; allowed on the read-only socket.
    Read,
    /// Changes state; needs the read-write socket.
    Write,
    /// Reveals secrets or changes the daemon; needs a privileged caller.
    Privileged,
}

impl AccessLevel {
    /// The lowercase name used in logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLevel::Read => "read",
            AccessLevel::Write => "write",
            AccessLevel::Privileged => "privileged",
        }
    }
}

/// The access one RPC declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodAccess {
    /// The gRPC path, `/rvirt.v1.DomainService/Start`.
    pub path: &'static str,
    /// The fully qualified service name, `rvirt.v1.DomainService`.
    pub service: &'static str,
    /// The method name, `Start`.
    pub method: &'static str,
    /// The level the caller needs.
    pub level: AccessLevel,
    /// The object permission, `domain.start`.
    pub permission: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/access_table.rs"));

/// The access declared by the RPC at `path` (`/rvirt.v1.DomainService/Start`), or `None` for a
/// path that is not part of the rvirt contract.
pub fn lookup(path: &str) -> Option<&'static MethodAccess> {
    ACCESS_TABLE
        .binary_search_by(|m| m.path.cmp(path))
        .ok()
        .map(|i| &ACCESS_TABLE[i])
}

/// The names of the services of the contract (`rvirt.v1.DomainService`, ...), without repeats.
pub fn services() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = ACCESS_TABLE.iter().map(|m| m.service).collect();
    names.sort_unstable();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        for pair in ACCESS_TABLE.windows(2) {
            assert!(
                pair[0].path < pair[1].path,
                "{} before {}",
                pair[0].path,
                pair[1].path
            );
        }
    }

    #[test]
    fn every_service_of_the_contract_is_present() {
        let services = services();
        for name in [
            "rvirt.v1.AdminService",
            "rvirt.v1.DomainService",
            "rvirt.v1.HostService",
            "rvirt.v1.NetworkService",
            "rvirt.v1.SecretService",
            "rvirt.v1.StoragePoolService",
            "rvirt.v1.StorageVolService",
        ] {
            assert!(services.contains(&name), "{name} missing from the access table");
        }
    }

    #[test]
    fn lookup_finds_declared_levels() {
        let version = lookup("/rvirt.v1.HostService/GetVersion").expect("GetVersion is declared");
        assert_eq!(version.level, AccessLevel::Read);
        let start = lookup("/rvirt.v1.DomainService/StartDomain").expect("Start is declared");
        assert_eq!(start.level, AccessLevel::Write);
        assert_eq!(start.permission, "domain.start");
        let value = lookup("/rvirt.v1.SecretService/GetSecretValue").expect("GetValue is declared");
        assert_eq!(value.level, AccessLevel::Privileged);
        assert!(lookup("/rvirt.v1.DomainService/NoSuchMethod").is_none());
        assert!(lookup("/grpc.health.v1.Health/Check").is_none());
    }
}
