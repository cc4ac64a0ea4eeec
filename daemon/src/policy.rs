//! The access policy file: rules that allow or deny an RPC's permission (`domain.start`,
//! `secret.read_secure`, `domain.*`) to callers named by uid, gid, user or group name, or TLS
//! certificate subject. It is rvirt's counterpart of libvirt's polkit rules.
//!
//! The file is TOML, by default `<config>/access.toml` (`/etc/rvirt/access.toml` for system
//! daemons, `~/.config/rvirt/access.toml` for session ones), shared by every daemon and the proxy;
//! a daemon's `access_policy_file` key points elsewhere. A missing file is an empty policy.
//!
//! ```toml
//! [[rule]]
//! effect = "deny"                  # or "allow"
//! permission = ["domain.start", "domain.stop"]
//! user = "alice"                   # and/or uid, gid, group, cert_subject; any of them matches
//!
//! [[rule]]
//! effect = "allow"
//! permission = "domain.*"
//! group = "ops"
//! ```
//!
//! Rules are tried in order and the first whose permission and subject match decides. When none
//! matches, the default applies: root, the daemon's user and the socket's group may make every
//! call their level allows (see [`crate::access`]), everyone else reads. The socket always has
//! the last word: nothing a rule allows passes the read-only socket unless it is a read, and the
//! admin service stays on the admin socket.
//!
//! User and group names are resolved when the file is loaded: a name that does not exist is an
//! error rather than a rule that silently matches nobody.
//!
//! A rule may name objects (`object = "web-*"`): it then applies only to calls about an object
//! one of whose names (name, UUID, volume path, secret usage id) matches. The access layer runs
//! before a request is decoded, so when such a rule is the first that could apply, the decision
//! waits for the driver to resolve the object ([`rvirt_proto::access::authorize`]); lists and
//! event streams leave out the objects whose `<kind>.getattr` the rules deny.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use rvirt_proto::access::ObjectScope;

use crate::clients::ClientInfo;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// The call may proceed (the socket's own restrictions still apply).
    Allow,
    /// The call is refused with `ERROR_CODE_ACCESS_DENIED`.
    Deny,
}

impl Effect {
    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

/// One rule of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Its position in the file, from 1, for messages and logs.
    pub number: usize,
    /// Allow or deny.
    pub effect: Effect,
    /// Permission patterns (`domain.start`, `domain.*`, `*`).
    pub permissions: Vec<String>,
    /// User ids, including those of `user` names.
    pub uids: Vec<u32>,
    /// Group ids, including those of `group` names; a caller matches through its primary or a
    /// supplementary group.
    pub gids: Vec<u32>,
    /// Certificate subject patterns (`CN=client1,O=Example`, `*,O=Example`).
    pub cert_subjects: Vec<String>,
    /// Object name patterns (`web-*`); empty for a rule about every object.
    pub objects: Vec<String>,
}

impl Rule {
    /// Whether the rule names no subject and so applies to every caller.
    fn is_for_everyone(&self) -> bool {
        self.uids.is_empty() && self.gids.is_empty() && self.cert_subjects.is_empty()
    }

    /// Whether the rule applies only to some objects.
    pub fn is_object_scoped(&self) -> bool {
        !self.objects.is_empty()
    }

    /// Whether the rule applies to the object known by `names` (any of them may match).
    pub fn matches_object(&self, names: &[&str]) -> bool {
        self.objects.is_empty() || self.objects.iter().any(|p| names.iter().any(|n| glob(p, n)))
    }

    /// Whether the rule applies to `permission` called by `caller`, whatever the object.
    pub fn matches(&self, permission: &str, caller: &ClientInfo) -> bool {
        self.permissions.iter().any(|p| glob(p, permission))
            && (self.is_for_everyone()
                || self.uids.contains(&caller.uid)
                || self
                    .gids
                    .iter()
                    .any(|g| caller.gid == *g || caller.groups.contains(g))
                || caller
                    .cert_subject
                    .as_deref()
                    .is_some_and(|subject| self.cert_subjects.iter().any(|p| glob(p, subject))))
    }
}

/// A loaded policy: its rules and where they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The file, when the policy came from one.
    pub source: Option<PathBuf>,
    /// The rules, in file order.
    pub rules: Vec<Rule>,
}

/// Why a policy file could not be used; the message names the file, the rule and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("access policy {path}: {message}")]
pub struct PolicyError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// A value that may be written once or as a list: `uid = 0` or `uid = [0, 1000]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    effect: Effect,
    permission: OneOrMany<String>,
    uid: Option<OneOrMany<u32>>,
    gid: Option<OneOrMany<u32>>,
    user: Option<OneOrMany<String>>,
    group: Option<OneOrMany<String>>,
    cert_subject: Option<OneOrMany<String>>,
    object: Option<OneOrMany<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    rule: Vec<RawRule>,
}

/// What the rules say about a call before its object is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeforeObject<'a> {
    /// This rule decides, whatever the object.
    Rule(&'a Rule),
    /// No rule applies: the default decides.
    Default,
    /// A rule that names objects could apply: the decision waits for the object.
    ByObject,
}

/// Resolves user and group names; the real one asks the system's user database.
pub trait NameResolver {
    /// The uid of user `name`.
    fn user(&self, name: &str) -> Option<u32>;
    /// The gid of group `name`.
    fn group(&self, name: &str) -> Option<u32>;
}

/// The system's user and group database (`getpwnam`, `getgrnam`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemNames;

impl NameResolver for SystemNames {
    fn user(&self, name: &str) -> Option<u32> {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    }

    fn group(&self, name: &str) -> Option<u32> {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    }
}

/// Whether `pattern` matches `text`: `*` stands for any run of characters, `?` for one.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with backtracking to the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl Policy {
    /// The empty policy: every call gets the default.
    pub fn empty() -> &'static Policy {
        static EMPTY: Policy = Policy {
            source: None,
            rules: Vec::new(),
        };
        &EMPTY
    }

    /// The first rule that applies to `permission` called by `caller` in a call about no
    /// particular object: rules that name objects do not apply to it.
    pub fn decide(&self, permission: &str, caller: &ClientInfo) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| !r.is_object_scoped() && r.matches(permission, caller))
    }

    /// The first rule that applies to `permission` called by `caller` on the object known by
    /// `names`.
    pub fn decide_object(&self, permission: &str, caller: &ClientInfo, names: &[&str]) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.matches(permission, caller) && r.matches_object(names))
    }

    /// What the rules say about `permission` called by `caller` on an object not known yet.
    pub fn decide_before_object(&self, permission: &str, caller: &ClientInfo) -> BeforeObject<'_> {
        match self.rules.iter().find(|r| r.matches(permission, caller)) {
            None => BeforeObject::Default,
            Some(rule) if rule.is_object_scoped() => BeforeObject::ByObject,
            Some(rule) => BeforeObject::Rule(rule),
        }
    }

    /// Whether some rule names objects.
    pub fn has_object_rules(&self) -> bool {
        self.rules.iter().any(Rule::is_object_scoped)
    }

    /// Where the policy came from, for messages: `/etc/rvirt/access.toml`.
    pub fn source_name(&self) -> String {
        self.source
            .as_ref()
            .map_or_else(|| "the access policy".to_owned(), |p| p.display().to_string())
    }

    /// Reads `path`; a missing file is the empty policy.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let error = |message: String| PolicyError {
            path: path.display().to_string(),
            message,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Policy::default()),
            Err(e) => return Err(error(format!("cannot read it: {e}"))),
        };
        let mut policy = Policy::parse(&text, &SystemNames).map_err(error)?;
        policy.source = Some(path.to_path_buf());
        Ok(policy)
    }

    /// Parses the text of a policy file, resolving names with `names`. Permission patterns must
    /// match at least one RPC's permission, so a misspelt one is an error, not a dead rule.
    pub fn parse(text: &str, names: &dyn NameResolver) -> Result<Policy, String> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let mut message = e.message().to_owned();
            if let Some(span) = e.span() {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                message = format!("line {line}: {message}");
            }
            message
        })?;
        let known: Vec<&str> = rvirt_proto::access::ACCESS_TABLE
            .iter()
            .map(|m| m.permission)
            .collect();
        let object_permissions: Vec<&str> = rvirt_proto::access::ACCESS_TABLE
            .iter()
            .filter(|m| m.scope() == ObjectScope::One)
            .map(|m| m.permission)
            .collect();
        let mut rules = Vec::with_capacity(raw.rule.len());
        for (i, r) in raw.rule.into_iter().enumerate() {
            let number = i + 1;
            let fail = |message: String| format!("rule {number}: {message}");
            let permissions = r.permission.into_vec();
            if permissions.is_empty() {
                return Err(fail("permission: name at least one permission".into()));
            }
            for p in &permissions {
                if !known.iter().any(|k| glob(p, k)) {
                    return Err(fail(format!(
                        "permission {p:?} matches no RPC's permission (such as \"domain.start\" or \"domain.*\"; see the table in docs/api.md)"
                    )));
                }
            }
            let object_given = r.object.is_some();
            let objects = r.object.map(OneOrMany::into_vec).unwrap_or_default();
            if object_given && objects.is_empty() {
                return Err(fail("object: name at least one object pattern".into()));
            }
            if !objects.is_empty() {
                for p in &permissions {
                    if !object_permissions.iter().any(|k| glob(p, k)) {
                        return Err(fail(format!(
                            "object: permission {p:?} is about no single object (connect.* and admin.* calls are about the host or the daemon; lists are filtered by <kind>.getattr), so a rule naming objects would never apply to it"
                        )));
                    }
                }
            }
            let mut uids = r.uid.map(OneOrMany::into_vec).unwrap_or_default();
            for name in r.user.map(OneOrMany::into_vec).unwrap_or_default() {
                uids.push(
                    names
                        .user(&name)
                        .ok_or_else(|| fail(format!("user {name:?} does not exist on this host")))?,
                );
            }
            let mut gids = r.gid.map(OneOrMany::into_vec).unwrap_or_default();
            for name in r.group.map(OneOrMany::into_vec).unwrap_or_default() {
                gids.push(
                    names
                        .group(&name)
                        .ok_or_else(|| fail(format!("group {name:?} does not exist on this host")))?,
                );
            }
            let cert_subjects = r.cert_subject.map(OneOrMany::into_vec).unwrap_or_default();
            rules.push(Rule {
                number,
                effect: r.effect,
                permissions,
                uids,
                gids,
                cert_subjects,
                objects,
            });
        }
        Ok(Policy { source: None, rules })
    }
}

/// The policy file a daemon uses: `configured` when set (the `access_policy_file` key), else
/// `access.toml` beside the daemon's configuration file.
pub fn policy_path(configured: &str, config_file: &Path) -> PathBuf {
    if configured.is_empty() {
        config_file
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(DEFAULT_FILE_NAME)
    } else {
        PathBuf::from(configured)
    }
}

/// The file name of the default policy, in the daemons' configuration directory.
pub const DEFAULT_FILE_NAME: &str = "access.toml";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::SocketKind;

    struct Names;

    impl NameResolver for Names {
        fn user(&self, name: &str) -> Option<u32> {
            match name {
                "root" => Some(0),
                "alice" => Some(1000),
                _ => None,
            }
        }

        fn group(&self, name: &str) -> Option<u32> {
            (name == "ops").then_some(300)
        }
    }

    fn caller(uid: u32, gid: u32, groups: Vec<u32>, cert: Option<&str>) -> ClientInfo {
        ClientInfo {
            id: 1,
            uid,
            gid,
            groups,
            pid: None,
            socket: SocketKind::ReadWrite,
            connected_at: std::time::SystemTime::now(),
            cert_subject: cert.map(str::to_owned),
            remote: false,
        }
    }

    fn effect(policy: &Policy, permission: &str, caller: &ClientInfo) -> Option<(Effect, usize)> {
        policy.decide(permission, caller).map(|r| (r.effect, r.number))
    }

    #[test]
    fn glob_matches_stars_and_question_marks() {
        assert!(glob("domain.*", "domain.start"));
        assert!(glob("*", "secret.read_secure"));
        assert!(glob("domain.st?rt", "domain.start"));
        assert!(glob("*,O=Example", "CN=c1,O=Example"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("domain.*", "network.start"));
        assert!(!glob("domain.start", "domain.starts"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let text = r#"
            [[rule]]
            effect = "deny"
            permission = "domain.start"
            uid = 1000

            [[rule]]
            effect = "allow"
            permission = "domain.*"
            user = "alice"
        "#;
        let policy = Policy::parse(text, &Names).expect("valid policy");
        let alice = caller(1000, 1000, vec![], None);
        assert_eq!(effect(&policy, "domain.start", &alice), Some((Effect::Deny, 1)));
        assert_eq!(effect(&policy, "domain.stop", &alice), Some((Effect::Allow, 2)));
        assert_eq!(effect(&policy, "network.start", &alice), None);
        assert_eq!(
            effect(&policy, "domain.start", &caller(1001, 1001, vec![], None)),
            None
        );
    }

    #[test]
    fn groups_match_primary_and_supplementary_and_lists_mean_any() {
        let text = r#"
            [[rule]]
            effect = "allow"
            permission = ["secret.read_secure", "secret.delete"]
            group = "ops"
            gid = [5, 6]
        "#;
        let policy = Policy::parse(text, &Names).expect("valid policy");
        assert!(
            policy
                .decide("secret.delete", &caller(7, 300, vec![], None))
                .is_some()
        );
        assert!(
            policy
                .decide("secret.delete", &caller(7, 7, vec![1, 300], None))
                .is_some()
        );
        assert!(
            policy
                .decide("secret.read_secure", &caller(7, 6, vec![], None))
                .is_some()
        );
        assert!(
            policy
                .decide("secret.delete", &caller(7, 7, vec![1], None))
                .is_none()
        );
        assert!(
            policy
                .decide("secret.write", &caller(7, 300, vec![], None))
                .is_none()
        );
    }

    #[test]
    fn certificate_subjects_match_by_pattern_and_only_callers_with_a_certificate() {
        let text = r#"
            [[rule]]
            effect = "deny"
            permission = "*"
            cert_subject = "*,O=Untrusted"
        "#;
        let policy = Policy::parse(text, &Names).expect("valid policy");
        let bad = caller(65534, 65534, vec![], Some("CN=c1,O=Untrusted"));
        let good = caller(65534, 65534, vec![], Some("CN=c1,O=Example"));
        assert!(policy.decide("domain.read", &bad).is_some());
        assert!(policy.decide("domain.read", &good).is_none());
        assert!(
            policy
                .decide("domain.read", &caller(0, 0, vec![], None))
                .is_none()
        );
    }

    #[test]
    fn a_rule_without_subject_applies_to_everyone() {
        let text = "[[rule]]\neffect = \"deny\"\npermission = \"domain.delete\"\n";
        let policy = Policy::parse(text, &Names).expect("valid policy");
        assert!(
            policy
                .decide("domain.delete", &caller(0, 0, vec![], None))
                .is_some()
        );
    }

    #[test]
    fn a_misspelt_permission_is_refused_naming_the_rule() {
        let text = "[[rule]]\neffect = \"deny\"\npermission = \"domain.strat\"\n";
        let err = Policy::parse(text, &Names).expect_err("no such permission");
        assert!(err.contains("rule 1") && err.contains("domain.strat"), "{err}");
    }

    #[test]
    fn an_unknown_user_or_group_is_refused() {
        let text = "[[rule]]\neffect = \"deny\"\npermission = \"*\"\nuser = \"mallory\"\n";
        let err = Policy::parse(text, &Names).expect_err("no such user");
        assert!(err.contains("mallory"), "{err}");
        let text = "[[rule]]\neffect = \"deny\"\npermission = \"*\"\ngroup = \"nobodies\"\n";
        let err = Policy::parse(text, &Names).expect_err("no such group");
        assert!(err.contains("nobodies"), "{err}");
    }

    #[test]
    fn unknown_keys_and_effects_are_refused_naming_them() {
        let err = Policy::parse(
            "[[rule]]\neffect = \"deny\"\npermission = \"*\"\nusr = \"x\"\n",
            &Names,
        )
        .expect_err("unknown key");
        assert!(err.contains("usr"), "{err}");
        let err = Policy::parse("[[rule]]\neffect = \"maybe\"\npermission = \"*\"\n", &Names)
            .expect_err("unknown effect");
        assert!(err.contains("maybe"), "{err}");
    }

    #[test]
    fn object_rules_apply_to_the_objects_they_name() {
        let text = r#"
            [[rule]]
            effect = "allow"
            permission = "domain.*"
            user = "alice"
            object = ["web-*", "0b5c*"]

            [[rule]]
            effect = "deny"
            permission = "domain.*"
            user = "alice"
        "#;
        let policy = Policy::parse(text, &Names).expect("valid policy");
        let alice = caller(1000, 1000, vec![], None);
        let number = |r: Option<&Rule>| r.map(|r| (r.effect, r.number));
        assert_eq!(
            number(policy.decide_object("domain.start", &alice, &["web-1", "1234"])),
            Some((Effect::Allow, 1))
        );
        // Any of the object's names may match: here its UUID.
        assert_eq!(
            number(policy.decide_object("domain.start", &alice, &["db", "0b5c-11"])),
            Some((Effect::Allow, 1))
        );
        assert_eq!(
            number(policy.decide_object("domain.start", &alice, &["db", "1234"])),
            Some((Effect::Deny, 2))
        );
        // Before the object is known the decision waits for it; for another caller no rule
        // applies.
        assert_eq!(
            policy.decide_before_object("domain.start", &alice),
            BeforeObject::ByObject
        );
        assert_eq!(
            policy.decide_before_object("domain.start", &caller(0, 0, vec![], None)),
            BeforeObject::Default
        );
        // A call about no single object skips the rules that name objects.
        assert_eq!(
            number(policy.decide("domain.start", &alice)),
            Some((Effect::Deny, 2))
        );
        assert!(policy.has_object_rules());
    }

    #[test]
    fn an_unscoped_rule_before_the_object_rules_decides_at_once() {
        let text = r#"
            [[rule]]
            effect = "deny"
            permission = "domain.start"
            uid = 1000

            [[rule]]
            effect = "allow"
            permission = "domain.*"
            uid = 1000
            object = "web-*"
        "#;
        let policy = Policy::parse(text, &Names).expect("valid policy");
        let alice = caller(1000, 1000, vec![], None);
        assert!(matches!(
            policy.decide_before_object("domain.start", &alice),
            BeforeObject::Rule(Rule { number: 1, .. })
        ));
        assert_eq!(
            policy.decide_before_object("domain.stop", &alice),
            BeforeObject::ByObject
        );
    }

    #[test]
    fn object_rules_on_calls_about_no_object_or_empty_are_refused() {
        let text =
            "[[rule]]\neffect = \"deny\"\npermission = \"connect.search_domains\"\nobject = \"web-*\"\n";
        let err = Policy::parse(text, &Names).expect_err("lists are about no single object");
        assert!(
            err.contains("rule 1") && err.contains("connect.search_domains"),
            "{err}"
        );
        let text = "[[rule]]\neffect = \"deny\"\npermission = \"domain.*\"\nobject = []\n";
        let err = Policy::parse(text, &Names).expect_err("empty object list");
        assert!(err.contains("object"), "{err}");
    }

    #[test]
    fn a_missing_file_is_the_empty_policy() {
        let policy = Policy::load(Path::new("/nonexistent/access.toml")).expect("empty");
        assert!(policy.rules.is_empty());
    }

    #[test]
    fn the_default_file_sits_beside_the_daemon_config() {
        assert_eq!(
            policy_path("", Path::new("/etc/rvirt/virtqemud.conf")),
            PathBuf::from("/etc/rvirt/access.toml")
        );
        assert_eq!(
            policy_path("/srv/acl.toml", Path::new("/etc/rvirt/virtqemud.conf")),
            PathBuf::from("/srv/acl.toml")
        );
    }
}
