//! The one interceptor that enforces the access table on every call: the read-only socket takes
//! read calls only, privileged calls need a privileged caller, the admin service lives on the
//! admin socket alone. Handlers never check access themselves.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use rvirt_proto::access::{self, AccessLevel};
use rvirt_proto::error::status;
use rvirt_proto::v1::{ErrorCode, ErrorDomain};

use crate::clients::ClientInfo;
use crate::listen::SocketKind;

const ADMIN_SERVICE: &str = "rvirt.v1.AdminService";

/// Metadata with which a proxy (virtproxyd) forwards its caller's user id to a backend.
pub const CALLER_UID_METADATA: &str = "rvirt-caller-uid";
/// Metadata with the forwarded caller's primary group id.
pub const CALLER_GID_METADATA: &str = "rvirt-caller-gid";
/// Metadata with the forwarded caller's process id (optional).
pub const CALLER_PID_METADATA: &str = "rvirt-caller-pid";
/// Metadata with the forwarded caller's supplementary groups, comma-separated (optional).
pub const CALLER_GROUPS_METADATA: &str = "rvirt-caller-groups";

/// The identity a call is made for when the connection's peer forwards its own caller's in
/// `rvirt-caller-*` metadata, as virtproxyd does (the backend sees the proxy over SO_PEERCRED).
///
/// Forwarded identity is honoured only from a privileged peer (root or the daemon's own user,
/// which may make every call anyway), so it can only lower privilege, never raise it; from any
/// other peer it is ignored (`Ok(None)`) and the peer's own identity counts. The connection's
/// socket (read-only or not) always stays the peer's. Malformed metadata from a privileged peer
/// refuses the call rather than falling back to the peer's privilege.
pub fn forwarded_caller(
    headers: &http::HeaderMap,
    peer: &ClientInfo,
    policy: &AccessPolicy,
) -> Result<Option<ClientInfo>, tonic::Status> {
    let Some(uid) = headers.get(CALLER_UID_METADATA) else {
        return Ok(None);
    };
    if !policy.is_privileged(peer) {
        tracing::debug!(
            uid = peer.uid,
            "ignoring forwarded identity from an unprivileged peer"
        );
        return Ok(None);
    }
    let malformed = |what: &str| {
        status(
            ErrorCode::AccessDenied,
            ErrorDomain::Access,
            format!("The forwarded caller identity has a malformed {what}, so the call is refused"),
        )
    };
    let number = |value: &http::HeaderValue, what: &str| {
        value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .ok_or_else(|| malformed(what))
    };
    let uid = number(uid, CALLER_UID_METADATA)?;
    let gid = number(
        headers
            .get(CALLER_GID_METADATA)
            .ok_or_else(|| malformed(CALLER_GID_METADATA))?,
        CALLER_GID_METADATA,
    )?;
    let pid = match headers.get(CALLER_PID_METADATA) {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i32>().ok())
                .ok_or_else(|| malformed(CALLER_PID_METADATA))?,
        ),
        None => None,
    };
    let groups = match headers.get(CALLER_GROUPS_METADATA) {
        Some(value) => value
            .to_str()
            .map_err(|_| malformed(CALLER_GROUPS_METADATA))?
            .split(',')
            .filter(|g| !g.trim().is_empty())
            .map(|g| {
                g.trim()
                    .parse::<u32>()
                    .map_err(|_| malformed(CALLER_GROUPS_METADATA))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    Ok(Some(ClientInfo {
        uid,
        gid,
        groups,
        pid,
        ..peer.clone()
    }))
}

/// Services outside the rvirt contract that every socket serves to anyone: health and reflection.
fn is_public_infrastructure(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// Who may do what, beyond the socket a call came in on.
///
/// The default policy: root and the daemon's own user may make every call; members of the
/// read-write socket's group (`unix_sock_group`) may make read and write calls; everyone else may
/// only read, even on the read-write socket (which is mode 0666 in system mode, as libvirt's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessPolicy {
    /// The user the daemon runs as.
    pub daemon_uid: u32,
    /// The group whose members may write, when one is configured.
    pub write_group: Option<u32>,
}

impl AccessPolicy {
    fn is_privileged(&self, caller: &ClientInfo) -> bool {
        caller.uid == 0 || caller.uid == self.daemon_uid
    }

    fn may_write(&self, caller: &ClientInfo) -> bool {
        self.is_privileged(caller)
            || self
                .write_group
                .is_some_and(|g| caller.gid == g || caller.groups.contains(&g))
    }
}

/// Decides whether `caller` may make the call at gRPC `path` on a socket of kind `socket`.
pub fn check(
    path: &str,
    socket: SocketKind,
    caller: &ClientInfo,
    policy: &AccessPolicy,
) -> Result<(), tonic::Status> {
    if is_public_infrastructure(path) {
        return Ok(());
    }
    let Some(method) = access::lookup(path) else {
        // Not part of the contract: the router answers UNIMPLEMENTED.
        return Ok(());
    };
    let is_admin = method.service == ADMIN_SERVICE;
    match (socket, is_admin) {
        (SocketKind::Admin, false) => {
            return Err(status(
                ErrorCode::OperationUnsupported,
                ErrorDomain::Admin,
                format!(
                    "{} is not served on the admin socket: connect to the daemon's read-write or read-only socket",
                    method.service
                ),
            ));
        }
        (SocketKind::ReadWrite | SocketKind::ReadOnly, true) => {
            return Err(status(
                ErrorCode::OperationUnsupported,
                ErrorDomain::Admin,
                "The admin service is served only on the daemon's admin socket (<daemon>-admin-sock)",
            ));
        }
        _ => {}
    }
    if socket == SocketKind::ReadOnly && method.level != AccessLevel::Read {
        return Err(status(
            ErrorCode::OperationDenied,
            ErrorDomain::Access,
            format!(
                "{} needs {} access ({}), but this connection is read-only: connect to the read-write socket",
                method.method,
                method.level.as_str(),
                method.permission
            ),
        ));
    }
    if method.level == AccessLevel::Privileged && !policy.is_privileged(caller) {
        return Err(status(
            ErrorCode::AccessDenied,
            ErrorDomain::Access,
            format!(
                "{} needs privileged access ({}): uid {} may not call it; run it as root or as the daemon's user",
                method.method, method.permission, caller.uid
            ),
        ));
    }
    if method.level == AccessLevel::Write && !policy.may_write(caller) {
        let group = policy
            .write_group
            .map_or(String::new(), |g| format!(", or membership of group {g}"));
        return Err(status(
            ErrorCode::AccessDenied,
            ErrorDomain::Access,
            format!(
                "{} needs write access ({}): uid {} may only read; writes need root, the daemon's user{group} (unix_sock_group)",
                method.method, method.permission, caller.uid
            ),
        ));
    }
    Ok(())
}

/// The tower layer that runs [`check`] before every call.
#[derive(Debug, Clone, Copy)]
pub struct AccessLayer {
    policy: AccessPolicy,
}

impl AccessLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: AccessPolicy) -> Self {
        AccessLayer { policy }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService {
            inner,
            policy: self.policy,
        }
    }
}

/// The service [`AccessLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub struct AccessService<S> {
    inner: S,
    policy: AccessPolicy,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for AccessService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let forwarded = match req.extensions().get::<ClientInfo>() {
            Some(peer) => forwarded_caller(req.headers(), peer, &self.policy),
            None => Ok(None),
        };
        let forwarded = match forwarded {
            Ok(forwarded) => forwarded,
            Err(refused) => return Box::pin(std::future::ready(Ok(refused.into_http()))),
        };
        if let Some(caller) = forwarded {
            // Handlers see the caller the proxy forwarded, not the proxy.
            req.extensions_mut().insert(caller);
        }
        let verdict = match req.extensions().get::<ClientInfo>() {
            Some(caller) => check(req.uri().path(), caller.socket, caller, &self.policy),
            None => Err(status(
                ErrorCode::AccessDenied,
                ErrorDomain::Access,
                "The caller's identity is unknown, so the call is refused",
            )),
        };
        match verdict {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(denied) => {
                if let Some(caller) = req.extensions().get::<ClientInfo>() {
                    tracing::info!(
                        path = req.uri().path(),
                        uid = caller.uid,
                        socket = caller.socket.as_str(),
                        "call refused"
                    );
                }
                Box::pin(std::future::ready(Ok(denied.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rvirt_proto::error::from_status;

    const ROOT_DAEMON: AccessPolicy = AccessPolicy {
        daemon_uid: 0,
        write_group: None,
    };

    fn caller(uid: u32, socket: SocketKind) -> ClientInfo {
        ClientInfo {
            id: 1,
            uid,
            gid: uid,
            groups: Vec::new(),
            pid: Some(1),
            socket,
            connected_at: std::time::SystemTime::now(),
        }
    }

    fn code(result: Result<(), tonic::Status>) -> ErrorCode {
        match result {
            Ok(()) => ErrorCode::Ok,
            Err(status) => from_status(&status).code(),
        }
    }

    const START: &str = "/rvirt.v1.DomainService/StartDomain";
    const XML: &str = "/rvirt.v1.DomainService/GetDomainXml";
    const SECRET: &str = "/rvirt.v1.SecretService/GetSecretValue";

    #[test]
    fn read_only_socket_refuses_writes_with_operation_denied() {
        let c = caller(0, SocketKind::ReadOnly);
        let err = check(START, SocketKind::ReadOnly, &c, &ROOT_DAEMON).expect_err("write on ro");
        assert_eq!(from_status(&err).code(), ErrorCode::OperationDenied);
        assert!(err.message().contains("read-only"), "{}", err.message());
        assert_eq!(
            code(check(XML, SocketKind::ReadOnly, &c, &ROOT_DAEMON)),
            ErrorCode::Ok
        );
        let rw = caller(0, SocketKind::ReadWrite);
        assert_eq!(
            code(check(START, SocketKind::ReadWrite, &rw, &ROOT_DAEMON)),
            ErrorCode::Ok
        );
    }

    #[test]
    fn on_the_read_write_socket_other_users_may_only_read_unless_in_the_group() {
        let user = caller(1000, SocketKind::ReadWrite);
        assert_eq!(
            code(check(XML, SocketKind::ReadWrite, &user, &ROOT_DAEMON)),
            ErrorCode::Ok
        );
        assert_eq!(
            code(check(START, SocketKind::ReadWrite, &user, &ROOT_DAEMON)),
            ErrorCode::AccessDenied
        );
        let grouped = AccessPolicy {
            daemon_uid: 0,
            write_group: Some(107),
        };
        assert_eq!(
            code(check(START, SocketKind::ReadWrite, &user, &grouped)),
            ErrorCode::AccessDenied
        );
        let member = ClientInfo {
            groups: vec![27, 107],
            ..caller(1000, SocketKind::ReadWrite)
        };
        assert_eq!(
            code(check(START, SocketKind::ReadWrite, &member, &grouped)),
            ErrorCode::Ok
        );
        let primary = ClientInfo {
            gid: 107,
            ..caller(1000, SocketKind::ReadWrite)
        };
        assert_eq!(
            code(check(START, SocketKind::ReadWrite, &primary, &grouped)),
            ErrorCode::Ok
        );
        // Group members still may not make privileged calls.
        assert_eq!(
            code(check(SECRET, SocketKind::ReadWrite, &member, &grouped)),
            ErrorCode::AccessDenied
        );
    }

    #[test]
    fn privileged_needs_root_or_the_daemon_user() {
        let user = caller(1000, SocketKind::ReadWrite);
        assert_eq!(
            code(check(SECRET, SocketKind::ReadWrite, &user, &ROOT_DAEMON)),
            ErrorCode::AccessDenied
        );
        let root = caller(0, SocketKind::ReadWrite);
        assert_eq!(
            code(check(SECRET, SocketKind::ReadWrite, &root, &ROOT_DAEMON)),
            ErrorCode::Ok
        );
        let session = AccessPolicy {
            daemon_uid: 1000,
            write_group: None,
        };
        assert_eq!(
            code(check(SECRET, SocketKind::ReadWrite, &user, &session)),
            ErrorCode::Ok
        );
        let ro = caller(0, SocketKind::ReadOnly);
        assert_eq!(
            code(check(SECRET, SocketKind::ReadOnly, &ro, &ROOT_DAEMON)),
            ErrorCode::OperationDenied
        );
    }

    #[test]
    fn admin_service_only_on_admin_socket() {
        let path = "/rvirt.v1.AdminService/ListClients";
        let admin = caller(0, SocketKind::Admin);
        assert_eq!(
            code(check(path, SocketKind::Admin, &admin, &ROOT_DAEMON)),
            ErrorCode::Ok
        );
        let rw = caller(0, SocketKind::ReadWrite);
        assert_eq!(
            code(check(path, SocketKind::ReadWrite, &rw, &ROOT_DAEMON)),
            ErrorCode::OperationUnsupported
        );
        let host = "/rvirt.v1.HostService/GetVersion";
        assert_eq!(
            code(check(host, SocketKind::Admin, &admin, &ROOT_DAEMON)),
            ErrorCode::OperationUnsupported
        );
    }

    fn forwarded(uid: &'static str, gid: &'static str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(CALLER_UID_METADATA, http::HeaderValue::from_static(uid));
        headers.insert(CALLER_GID_METADATA, http::HeaderValue::from_static(gid));
        headers
    }

    #[test]
    fn a_privileged_peer_forwards_a_lesser_caller() {
        let proxy = caller(0, SocketKind::ReadWrite);
        let mut headers = forwarded("1000", "100");
        headers.insert(CALLER_PID_METADATA, http::HeaderValue::from_static("4242"));
        headers.insert(CALLER_GROUPS_METADATA, http::HeaderValue::from_static("27,107"));
        let user = forwarded_caller(&headers, &proxy, &ROOT_DAEMON)
            .expect("well formed")
            .expect("honoured from root");
        assert_eq!((user.uid, user.gid, user.pid), (1000, 100, Some(4242)));
        assert_eq!(user.groups, vec![27, 107]);
        assert_eq!(user.socket, SocketKind::ReadWrite);
        assert_eq!(
            code(check(START, user.socket, &user, &ROOT_DAEMON)),
            ErrorCode::AccessDenied
        );
    }

    #[test]
    fn an_unprivileged_peer_cannot_claim_another_identity() {
        let user = caller(1000, SocketKind::ReadWrite);
        let claimed = forwarded_caller(&forwarded("0", "0"), &user, &ROOT_DAEMON).expect("ignored");
        assert_eq!(claimed, None);
    }

    #[test]
    fn the_daemons_own_user_may_forward_too() {
        let session = AccessPolicy {
            daemon_uid: 1000,
            write_group: None,
        };
        let proxy = caller(1000, SocketKind::ReadWrite);
        let other = forwarded_caller(&forwarded("1001", "1001"), &proxy, &session)
            .expect("well formed")
            .expect("honoured from the daemon's user");
        assert_eq!(other.uid, 1001);
        assert_eq!(
            code(check(SECRET, other.socket, &other, &session)),
            ErrorCode::AccessDenied
        );
    }

    #[test]
    fn malformed_forwarded_identity_is_refused_not_ignored() {
        let proxy = caller(0, SocketKind::ReadWrite);
        let err = forwarded_caller(&forwarded("root", "0"), &proxy, &ROOT_DAEMON).expect_err("malformed uid");
        assert_eq!(from_status(&err).code(), ErrorCode::AccessDenied);
        let mut no_gid = http::HeaderMap::new();
        no_gid.insert(CALLER_UID_METADATA, http::HeaderValue::from_static("1000"));
        assert!(forwarded_caller(&no_gid, &proxy, &ROOT_DAEMON).is_err());
    }

    #[test]
    fn a_forwarded_read_only_caller_stays_read_only() {
        let proxy = caller(0, SocketKind::ReadOnly);
        let user = forwarded_caller(&forwarded("0", "0"), &proxy, &ROOT_DAEMON)
            .expect("well formed")
            .expect("honoured");
        assert_eq!(
            code(check(START, user.socket, &user, &ROOT_DAEMON)),
            ErrorCode::OperationDenied
        );
    }

    #[test]
    fn health_and_reflection_are_open_everywhere() {
        for socket in [SocketKind::ReadOnly, SocketKind::ReadWrite, SocketKind::Admin] {
            let user = caller(1000, socket);
            for path in [
                "/grpc.health.v1.Health/Check",
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            ] {
                assert_eq!(
                    code(check(path, socket, &user, &ROOT_DAEMON)),
                    ErrorCode::Ok,
                    "{path}"
                );
            }
        }
    }
}
