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

impl MethodAccess {
    /// What the call is about, for object-scoped access rules: read from the permission's
    /// object part (`domain.start` is about one domain, `connect.search_domains` about many).
    pub fn scope(&self) -> ObjectScope {
        let (object, permission) = self.permission.split_once('.').unwrap_or((self.permission, ""));
        match object {
            "connect" => match permission.strip_prefix("search_") {
                Some(plural) => ObjectScope::Many(plural.strip_suffix('s').unwrap_or(plural)),
                None => ObjectScope::None,
            },
            "admin" => ObjectScope::None,
            _ => ObjectScope::One,
        }
    }
}

/// What a call is about, for object-scoped access rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectScope {
    /// No object: host information, capabilities, the admin service.
    None,
    /// One object, which the driver resolves from the request (a domain, a network, a pool, a
    /// volume, a secret; a port or a pool's volume list counts as its network or pool).
    One,
    /// Many objects of one kind (`domain`, `network`, `storage_pool`, `secret`): lists, events,
    /// statistics. The driver leaves out those the caller may not see (`<kind>.getattr`).
    Many(&'static str),
}

include!(concat!(env!("OUT_DIR"), "/access_table.rs"));

/// The access decision that waits for the object: the access layer puts one in force for the
/// call (see [`scope`]) when the first policy rule that could apply names objects, and the driver
/// consults it once it knows which object the call is about.
pub trait ObjectGate: Send + Sync + std::fmt::Debug {
    /// Whether the call may proceed on the object known by `names` (its name, UUID, and for
    /// volumes and secrets their path or usage id: a rule's pattern may match any of them).
    /// `ERROR_CODE_ACCESS_DENIED` when a rule denies it.
    fn check(&self, names: &[&str]) -> Result<(), tonic::Status>;
    /// The permission checked on each object (`domain.start`; `domain.getattr` for a list).
    fn permission(&self) -> &str;
    /// Marks the decision as taken elsewhere: a proxy that forwards the call to the daemon that
    /// resolves the object, which checks again with the same rules.
    fn delegate(&self);
}

tokio::task_local! {
    static GATE: std::sync::Arc<dyn ObjectGate>;
}

/// Runs `call` with `gate` in force: [`authorize`], [`visible`] and [`delegate`] inside it
/// consult `gate`.
pub async fn scope<F: std::future::Future>(gate: std::sync::Arc<dyn ObjectGate>, call: F) -> F::Output {
    GATE.scope(gate, call).await
}

/// The gate in force for the current call, if its decision waits for the object: for a
/// handler that filters a stream it returns after the call (events).
pub fn current_gate() -> Option<std::sync::Arc<dyn ObjectGate>> {
    GATE.try_with(std::sync::Arc::clone).ok()
}

/// Whether the current call may proceed on the object known by `names`, an object of one of
/// `kinds` (`domain`, `network`, `network_port`, `storage_pool`, `storage_vol`, `secret`: the
/// object part of permissions). Every driver calls it where it resolves a request's object
/// (lookup by name, UUID, id, key or path, or the XML of a define). Only a call whose permission
/// is about one of `kinds` is decided here, so a volume call that looks up its pool on the way
/// is decided on the volume. Outside a call whose decision waits for the object it allows
/// everything.
pub fn authorize(kinds: &[&str], names: &[&str]) -> Result<(), tonic::Status> {
    GATE.try_with(|gate| {
        let kind = gate.permission().split('.').next().unwrap_or_default();
        if kinds.contains(&kind) {
            gate.check(names)
        } else {
            Ok(())
        }
    })
    .unwrap_or(Ok(()))
}

/// Whether the object known by `names` belongs in the current call's answer: a list, a stream of
/// events, statistics (`<kind>.getattr` for calls about many objects).
pub fn visible(names: &[&str]) -> bool {
    GATE.try_with(|gate| gate.check(names).is_ok()).unwrap_or(true)
}

/// Marks the current call's object decision as taken by the daemon it is forwarded to.
pub fn delegate() {
    let _ = GATE.try_with(|gate| gate.delegate());
}

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

    #[test]
    fn scope_follows_the_permissions_object() {
        let scope = |path: &str| lookup(path).expect("declared").scope();
        assert_eq!(scope("/rvirt.v1.DomainService/StartDomain"), ObjectScope::One);
        assert_eq!(
            scope("/rvirt.v1.StorageVolService/ListStorageVols"),
            ObjectScope::One
        );
        assert_eq!(
            scope("/rvirt.v1.NetworkService/CreateNetworkPort"),
            ObjectScope::One
        );
        assert_eq!(
            scope("/rvirt.v1.DomainService/ListDomains"),
            ObjectScope::Many("domain")
        );
        assert_eq!(
            scope("/rvirt.v1.StoragePoolService/WatchStoragePoolEvents"),
            ObjectScope::Many("storage_pool")
        );
        assert_eq!(scope("/rvirt.v1.HostService/GetCapabilities"), ObjectScope::None);
        assert_eq!(scope("/rvirt.v1.AdminService/ListClients"), ObjectScope::None);
        for method in ACCESS_TABLE {
            if let ObjectScope::Many(kind) = method.scope() {
                assert!(
                    ["domain", "network", "storage_pool", "secret"].contains(&kind),
                    "{}: {kind}",
                    method.path
                );
            }
        }
    }
}
