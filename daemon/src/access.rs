//! The one interceptor that enforces the access table on every call: the read-only socket takes
//! read calls only, the access policy file's rules allow or deny permissions (see
//! [`crate::policy`]), and without a matching rule privileged calls need a privileged caller and
//! write calls a writer. The admin service lives on the admin socket alone. Handlers never check
//! access themselves; only when a rule names objects do the drivers consult the decision this
//! layer puts in force ([`ObjectRules`]), where they resolve the object.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use rvirt_proto::access::{self, AccessLevel, MethodAccess, ObjectGate, ObjectScope};
use rvirt_proto::error::status;
use rvirt_proto::v1::{ErrorCode, ErrorDomain};

use crate::clients::ClientInfo;
use crate::listen::SocketKind;
use crate::policy::{BeforeObject, Effect, Policy, Rule};

const ADMIN_SERVICE: &str = "rvirt.v1.AdminService";

/// Metadata with which a proxy (virtproxyd) forwards its caller's user id to a backend.
pub const CALLER_UID_METADATA: &str = "rvirt-caller-uid";
/// Metadata with the forwarded caller's primary group id.
pub const CALLER_GID_METADATA: &str = "rvirt-caller-gid";
/// Metadata with the forwarded caller's process id (optional).
pub const CALLER_PID_METADATA: &str = "rvirt-caller-pid";
/// Metadata with the forwarded caller's supplementary groups, comma-separated (optional).
pub const CALLER_GROUPS_METADATA: &str = "rvirt-caller-groups";
/// Metadata with the forwarded caller's TLS certificate subject DN (optional; absent for callers
/// without a certificate).
pub const CALLER_CERT_SUBJECT_METADATA: &str = "rvirt-caller-cert-subject";
/// Metadata present (`1`) when the forwarded caller came over the network, through the proxy's
/// TCP or TLS listener (optional).
pub const CALLER_REMOTE_METADATA: &str = "rvirt-caller-remote";

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
    // The peer's own certificate (a remote proxy's) is not the caller's.
    let cert_subject = match headers.get(CALLER_CERT_SUBJECT_METADATA) {
        // Subjects may hold UTF-8 beyond ASCII.
        Some(value) => Some(
            std::str::from_utf8(value.as_bytes())
                .map_err(|_| malformed(CALLER_CERT_SUBJECT_METADATA))?
                .to_owned(),
        ),
        None => None,
    };
    let remote = match headers.get(CALLER_REMOTE_METADATA) {
        Some(value) if value == "1" => true,
        Some(_) => return Err(malformed(CALLER_REMOTE_METADATA)),
        None => false,
    };
    Ok(Some(ClientInfo {
        uid,
        gid,
        groups,
        pid,
        cert_subject,
        remote,
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
        !caller.remote && (caller.uid == 0 || caller.uid == self.daemon_uid)
    }

    fn may_write(&self, caller: &ClientInfo) -> bool {
        // A remote caller passed the proxy's certificate checks (or its auth_tcp), as in libvirt.
        caller.remote
            || self.is_privileged(caller)
            || self
                .write_group
                .is_some_and(|g| caller.gid == g || caller.groups.contains(&g))
    }
}

/// Decides whether `caller` may make the call at gRPC `path` on a socket of kind `socket`, with
/// the default policy alone (no rules).
pub fn check(
    path: &str,
    socket: SocketKind,
    caller: &ClientInfo,
    policy: &AccessPolicy,
) -> Result<(), tonic::Status> {
    check_with_rules(path, socket, caller, policy, &Arc::new(Policy::default())).map(|_| ())
}

/// Who the caller is, for messages: `uid 1000`, `the remote client 'CN=c1,O=Example'`.
fn describe(caller: &ClientInfo) -> String {
    match (&caller.cert_subject, caller.remote) {
        (Some(subject), true) => format!("the remote client '{subject}'"),
        (None, true) => "a remote client without a certificate".to_owned(),
        (Some(subject), false) => format!("uid {} (certificate {subject})", caller.uid),
        (None, false) => format!("uid {}", caller.uid),
    }
}

/// What the access check lets through.
#[derive(Debug)]
pub enum Verdict {
    /// The call may proceed.
    Allowed,
    /// The call may proceed, and the driver decides once it knows the object: the gate goes in
    /// force for the call ([`rvirt_proto::access::scope`]).
    ByObject(Arc<ObjectRules>),
}

/// Decides whether `caller` may make the call at gRPC `path` on a socket of kind `socket`: the
/// socket's restrictions first, then the first rule of `rules` that matches, else the default
/// `policy`. When the first rule that could apply names objects, the answer is
/// [`Verdict::ByObject`].
pub fn check_with_rules(
    path: &str,
    socket: SocketKind,
    caller: &ClientInfo,
    policy: &AccessPolicy,
    rules: &Arc<Policy>,
) -> Result<Verdict, tonic::Status> {
    if is_public_infrastructure(path) {
        return Ok(Verdict::Allowed);
    }
    let Some(method) = access::lookup(path) else {
        // Not part of the contract: the router answers UNIMPLEMENTED.
        return Ok(Verdict::Allowed);
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
    let gate = |permission: String, required: bool| {
        Verdict::ByObject(Arc::new(ObjectRules {
            method,
            permission,
            required,
            caller: caller.clone(),
            policy: *policy,
            rules: Arc::clone(rules),
            consulted: AtomicBool::new(false),
        }))
    };
    if !rules.has_object_rules() {
        // No rule names objects: the call is decided here, whatever it is about.
        let rule = rules.decide(method.permission, caller);
        return apply(method, method.permission, None, caller, policy, rules, rule)
            .map(|()| Verdict::Allowed);
    }
    match method.scope() {
        ObjectScope::One => {
            let rule = match rules.decide_before_object(method.permission, caller) {
                BeforeObject::ByObject => return Ok(gate(method.permission.to_owned(), true)),
                BeforeObject::Rule(rule) => Some(rule),
                BeforeObject::Default => None,
            };
            apply(method, method.permission, None, caller, policy, rules, rule).map(|()| Verdict::Allowed)
        }
        scope => {
            let rule = rules.decide(method.permission, caller);
            apply(method, method.permission, None, caller, policy, rules, rule)?;
            match scope {
                // Lists and event streams leave out what the caller may not see.
                ObjectScope::Many(kind) => Ok(gate(format!("{kind}.getattr"), false)),
                _ => Ok(Verdict::Allowed),
            }
        }
    }
}

/// Applies `rule` (the first that matched) or, without one, the default `policy` to `method`
/// called by `caller` for `permission`, on the object named `object` when there is one.
fn apply(
    method: &MethodAccess,
    permission: &str,
    object: Option<&str>,
    caller: &ClientInfo,
    policy: &AccessPolicy,
    rules: &Policy,
    rule: Option<&Rule>,
) -> Result<(), tonic::Status> {
    let on = object.map_or(String::new(), |name| format!(" on '{name}'"));
    if let Some(rule) = rule {
        return match rule.effect {
            Effect::Allow => Ok(()),
            Effect::Deny => Err(status(
                ErrorCode::AccessDenied,
                ErrorDomain::Access,
                format!(
                    "{}{on} needs permission {permission}, which {} (rule {}) denies to {}",
                    method.method,
                    rules.source_name(),
                    rule.number,
                    describe(caller)
                ),
            )),
        };
    }
    if method.level == AccessLevel::Privileged && !policy.is_privileged(caller) {
        let hint = if caller.remote {
            "remote callers do not have it: run it on the host as root, or allow it in the access policy file"
        } else {
            "run it as root or as the daemon's user"
        };
        return Err(status(
            ErrorCode::AccessDenied,
            ErrorDomain::Access,
            format!(
                "{} needs privileged access ({}): {} may not call it; {hint}",
                method.method,
                method.permission,
                describe(caller)
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

/// Runs `call` with `gate` in force. A call about one object that succeeds without its driver
/// having consulted the gate is a driver bug: it is reported as an internal error rather than
/// passed as a grant nobody checked.
pub async fn within<F, B, E>(gate: Arc<ObjectRules>, call: F) -> Result<http::Response<B>, E>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: Default,
{
    let response = access::scope(Arc::clone(&gate) as Arc<dyn ObjectGate>, call).await?;
    let succeeded = response.headers().get("grpc-status").is_none_or(|s| s == "0");
    if succeeded && gate.unchecked() {
        tracing::error!(
            method = gate.method.method,
            "the driver never checked the call's object against the access rules"
        );
        return Ok(status(
            ErrorCode::InternalError,
            ErrorDomain::Access,
            format!(
                "{} ran without checking its object against the access rules that name objects; this is a bug, please report it",
                gate.method.method
            ),
        )
        .into_http());
    }
    Ok(response)
}

/// The rules that decide a call once the driver knows its object: the gate a [`Verdict::ByObject`]
/// puts in force.
#[derive(Debug)]
pub struct ObjectRules {
    method: &'static MethodAccess,
    /// The permission checked on each object: the method's, or `<kind>.getattr` for a call about
    /// many objects.
    permission: String,
    /// Whether the call must consult the gate (a call about one object) or only filters with it.
    required: bool,
    caller: ClientInfo,
    policy: AccessPolicy,
    rules: Arc<Policy>,
    consulted: AtomicBool,
}

impl ObjectRules {
    /// Whether a call about one object ended without the driver deciding on its object: a
    /// driver bug the layer turns into an error rather than a silent grant.
    fn unchecked(&self) -> bool {
        self.required && !self.consulted.load(Ordering::Acquire)
    }
}

impl ObjectGate for ObjectRules {
    fn check(&self, names: &[&str]) -> Result<(), tonic::Status> {
        self.consulted.store(true, Ordering::Release);
        let rule = self.rules.decide_object(&self.permission, &self.caller, names);
        let verdict = apply(
            self.method,
            &self.permission,
            names.first().copied(),
            &self.caller,
            &self.policy,
            &self.rules,
            rule,
        );
        if verdict.is_err() && self.required {
            tracing::info!(
                method = self.method.method,
                object = names.first().copied().unwrap_or_default(),
                uid = self.caller.uid,
                "call refused on its object"
            );
        }
        verdict
    }

    fn permission(&self) -> &str {
        &self.permission
    }

    fn delegate(&self) {
        self.consulted.store(true, Ordering::Release);
    }
}

/// The access rules in force: the default policy and the policy file's rules, which a reload
/// replaces (SIGHUP, the admin service's Reload). Shared by every listener's [`AccessLayer`] and
/// the daemon's context.
#[derive(Debug)]
pub struct AccessControl {
    state: RwLock<(AccessPolicy, Arc<Policy>)>,
}

impl AccessControl {
    /// Access with the default policy `base` and the rules of `rules`.
    pub fn new(base: AccessPolicy, rules: Policy) -> Self {
        AccessControl {
            state: RwLock::new((base, Arc::new(rules))),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (AccessPolicy, Arc<Policy>)> {
        // Both halves are replaced whole under the lock: a poisoned lock still holds a
        // consistent state.
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, (AccessPolicy, Arc<Policy>)> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The default policy.
    pub fn base(&self) -> AccessPolicy {
        self.read().0
    }

    /// Replaces the default policy (the runtime sets the socket group once its sockets exist).
    pub fn set_base(&self, base: AccessPolicy) {
        self.write().0 = base;
    }

    /// The policy file's rules in force.
    pub fn rules(&self) -> Arc<Policy> {
        Arc::clone(&self.read().1)
    }

    /// Puts `rules` in force for every call that starts from now on.
    pub fn set_rules(&self, rules: Policy) {
        self.write().1 = Arc::new(rules);
    }

    /// [`check_with_rules`] with the rules in force.
    pub fn check(
        &self,
        path: &str,
        socket: SocketKind,
        caller: &ClientInfo,
    ) -> Result<Verdict, tonic::Status> {
        let state = self.read();
        check_with_rules(path, socket, caller, &state.0, &state.1)
    }
}

/// The tower layer that runs [`check`] (with the policy file's rules) before every call.
#[derive(Debug, Clone)]
pub struct AccessLayer {
    access: Arc<AccessControl>,
}

impl AccessLayer {
    /// A layer enforcing `policy` alone, without rules.
    pub fn new(policy: AccessPolicy) -> Self {
        Self::with_control(Arc::new(AccessControl::new(policy, Policy::default())))
    }

    /// A layer enforcing what `access` holds at the time of each call.
    pub fn with_control(access: Arc<AccessControl>) -> Self {
        AccessLayer { access }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService {
            inner,
            access: Arc::clone(&self.access),
        }
    }
}

/// The service [`AccessLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub struct AccessService<S> {
    inner: S,
    access: Arc<AccessControl>,
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
            Some(peer) => forwarded_caller(req.headers(), peer, &self.access.base()),
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
            Some(caller) => self.access.check(req.uri().path(), caller.socket, caller),
            None => Err(status(
                ErrorCode::AccessDenied,
                ErrorDomain::Access,
                "The caller's identity is unknown, so the call is refused",
            )),
        };
        match verdict {
            Ok(Verdict::Allowed) => Box::pin(self.inner.call(req)),
            Ok(Verdict::ByObject(gate)) => Box::pin(within(gate, self.inner.call(req))),
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
            cert_subject: None,
            remote: false,
        }
    }

    fn code<T>(result: Result<T, tonic::Status>) -> ErrorCode {
        match result {
            Ok(_) => ErrorCode::Ok,
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

    fn policy(text: &str) -> Policy {
        let mut policy = Policy::parse(text, &crate::policy::SystemNames).expect("valid policy");
        policy.source = Some("/etc/rvirt/access.toml".into());
        policy
    }

    fn rules(text: &str) -> Arc<Policy> {
        Arc::new(policy(text))
    }

    #[test]
    fn a_deny_rule_refuses_even_root_naming_permission_caller_and_rule() {
        let policy = rules("[[rule]]\neffect = \"deny\"\npermission = \"domain.start\"\nuid = 0\n");
        let root = caller(0, SocketKind::ReadWrite);
        let err = check_with_rules(START, SocketKind::ReadWrite, &root, &ROOT_DAEMON, &policy)
            .expect_err("denied by rule");
        assert_eq!(from_status(&err).code(), ErrorCode::AccessDenied);
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        for part in ["domain.start", "uid 0", "/etc/rvirt/access.toml", "rule 1"] {
            assert!(err.message().contains(part), "{part}: {}", err.message());
        }
        // Other permissions keep the default.
        assert_eq!(
            code(check_with_rules(
                XML,
                SocketKind::ReadWrite,
                &root,
                &ROOT_DAEMON,
                &policy
            )),
            ErrorCode::Ok
        );
    }

    #[test]
    fn an_allow_rule_grants_beyond_the_default_but_not_past_the_read_only_socket() {
        let policy = rules(
            "[[rule]]\neffect = \"allow\"\npermission = [\"domain.start\", \"secret.read_secure\"]\nuid = 1000\n",
        );
        let user = caller(1000, SocketKind::ReadWrite);
        assert_eq!(
            code(check_with_rules(
                START,
                SocketKind::ReadWrite,
                &user,
                &ROOT_DAEMON,
                &policy
            )),
            ErrorCode::Ok
        );
        assert_eq!(
            code(check_with_rules(
                SECRET,
                SocketKind::ReadWrite,
                &user,
                &ROOT_DAEMON,
                &policy
            )),
            ErrorCode::Ok
        );
        let ro = caller(1000, SocketKind::ReadOnly);
        assert_eq!(
            code(check_with_rules(
                START,
                SocketKind::ReadOnly,
                &ro,
                &ROOT_DAEMON,
                &policy
            )),
            ErrorCode::OperationDenied
        );
    }

    #[test]
    fn access_control_applies_rules_replaced_at_run_time() {
        let access = AccessControl::new(ROOT_DAEMON, Policy::default());
        let root = caller(0, SocketKind::ReadWrite);
        assert!(access.check(START, SocketKind::ReadWrite, &root).is_ok());
        access.set_rules(policy("[[rule]]\neffect = \"deny\"\npermission = \"domain.*\"\n"));
        assert!(access.check(START, SocketKind::ReadWrite, &root).is_err());
        access.set_rules(Policy::default());
        assert!(access.check(START, SocketKind::ReadWrite, &root).is_ok());
    }

    const LIST: &str = "/rvirt.v1.DomainService/ListDomains";

    fn gate(verdict: Result<Verdict, tonic::Status>) -> Arc<ObjectRules> {
        match verdict {
            Ok(Verdict::ByObject(gate)) => gate,
            other => panic!("expected a decision by object, got {other:?}"),
        }
    }

    #[test]
    fn an_object_rule_defers_the_decision_to_the_object() {
        let policy =
            rules("[[rule]]\neffect = \"deny\"\npermission = \"domain.*\"\nuid = 1000\nobject = \"web-*\"\n");
        let user = caller(1000, SocketKind::ReadWrite);
        let writer = AccessPolicy {
            daemon_uid: 0,
            write_group: Some(1000),
        };
        let start = gate(check_with_rules(
            START,
            SocketKind::ReadWrite,
            &user,
            &writer,
            &policy,
        ));
        assert!(start.unchecked(), "a call about one object must consult the gate");
        let err = start.check(&["web-1", "uuid"]).expect_err("denied on web-1");
        assert_eq!(from_status(&err).code(), ErrorCode::AccessDenied);
        for part in ["StartDomain on 'web-1'", "domain.start", "rule 1", "uid 1000"] {
            assert!(err.message().contains(part), "{part}: {}", err.message());
        }
        assert!(!start.unchecked());
        // Another object gets the default: a member of the socket group may write.
        assert!(start.check(&["db", "uuid"]).is_ok());
        // Without the group, the default refuses the write on any object the rule does not name.
        let reader = gate(check_with_rules(
            START,
            SocketKind::ReadWrite,
            &user,
            &ROOT_DAEMON,
            &policy,
        ));
        assert_eq!(code(reader.check(&["db"])), ErrorCode::AccessDenied);
        // Root is not named by the rule: decided at once, nothing waits for the object.
        let root = caller(0, SocketKind::ReadWrite);
        assert!(matches!(
            check_with_rules(START, SocketKind::ReadWrite, &root, &ROOT_DAEMON, &policy),
            Ok(Verdict::Allowed)
        ));
        // The read-only socket still refuses writes before any object is looked at.
        let ro = caller(1000, SocketKind::ReadOnly);
        assert_eq!(
            code(check_with_rules(
                START,
                SocketKind::ReadOnly,
                &ro,
                &ROOT_DAEMON,
                &policy
            )),
            ErrorCode::OperationDenied
        );
    }

    #[test]
    fn lists_filter_by_getattr_when_rules_name_objects() {
        let policy = rules(
            "[[rule]]\neffect = \"deny\"\npermission = \"domain.getattr\"\nuid = 1000\nobject = \"web-*\"\n",
        );
        let user = caller(1000, SocketKind::ReadWrite);
        let list = gate(check_with_rules(
            LIST,
            SocketKind::ReadWrite,
            &user,
            &ROOT_DAEMON,
            &policy,
        ));
        assert!(!list.unchecked(), "a list need not consult the gate");
        assert!(list.check(&["web-1"]).is_err());
        assert!(list.check(&["db"]).is_ok());
        // Without object rules a list is simply allowed.
        assert!(matches!(
            check_with_rules(
                LIST,
                SocketKind::ReadWrite,
                &user,
                &ROOT_DAEMON,
                &Arc::new(Policy::default())
            ),
            Ok(Verdict::Allowed)
        ));
    }

    #[test]
    fn a_forwarded_caller_carries_its_own_certificate_subject_only() {
        let proxy = ClientInfo {
            cert_subject: Some("CN=proxy".into()),
            ..caller(0, SocketKind::ReadWrite)
        };
        let headers = forwarded("1000", "100");
        let user = forwarded_caller(&headers, &proxy, &ROOT_DAEMON)
            .expect("well formed")
            .expect("honoured");
        assert_eq!(user.cert_subject, None);
        let mut headers = forwarded("65534", "65534");
        headers.insert(
            CALLER_CERT_SUBJECT_METADATA,
            http::HeaderValue::from_static("CN=client1,O=Example"),
        );
        let remote = forwarded_caller(&headers, &proxy, &ROOT_DAEMON)
            .expect("well formed")
            .expect("honoured");
        assert_eq!(remote.cert_subject.as_deref(), Some("CN=client1,O=Example"));
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
