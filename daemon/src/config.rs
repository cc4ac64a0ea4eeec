//! The daemon configuration file, `<config>/<daemon>.conf`.
//!
//! Keys are libvirt's (`unix_sock_group`, `unix_sock_rw_perms`, `max_clients`, `log_filters`,
//! ...). libvirt's `key = value` syntax for strings, numbers and lists is a subset of TOML, so the
//! file is read as TOML; an unknown key is an error that names it, never silently ignored.

use std::path::Path;

use serde::Deserialize;

use rvirt::paths::Mode;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read configuration file {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid, or has a key or value rvirt does not know.
    #[error("invalid configuration file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// A parse error with the line it is on, which names the key (`line 3, busy_poll_us = -1:
/// invalid value: integer `-1`, expected u32`).
fn located(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.message().to_owned();
    };
    let before = text.get(..span.start).unwrap_or(text);
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let number = text[..start].matches('\n').count() + 1;
    let line = text[start..].lines().next().unwrap_or("").trim();
    format!("line {number}, {line}: {}", e.message())
}

/// `busy_poll_us` when the file does not set it: 300 µs covers a backend's answer and a client's
/// next call on the 2-core development machine (`docs/proxy.md`, "Performance").
pub const DEFAULT_BUSY_POLL_US: u32 = 300;

/// The largest `busy_poll_us` accepted.
pub const MAX_BUSY_POLL_US: u32 = 10_000;

/// The daemon's settings, with libvirt's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Group owning the sockets (name or number); empty keeps the daemon's group.
    pub unix_sock_group: String,
    /// Permissions of the read-only socket, octal as a string (`"0666"`).
    pub unix_sock_ro_perms: String,
    /// Permissions of the read-write socket (`"0666"` system, `"0700"` session).
    pub unix_sock_rw_perms: String,
    /// Permissions of the admin socket (`"0600"` system, `"0700"` session).
    pub unix_sock_admin_perms: String,
    /// Connections accepted at once on the read-write and read-only sockets; more are refused.
    pub max_clients: u32,
    /// Connections accepted at once on the admin socket.
    pub admin_max_clients: u32,
    /// Tokio worker threads; on 2-core machines one gave the lowest latency.
    pub max_workers: u32,
    /// Connections of network listeners (TCP, TLS) not yet authenticated; they count against
    /// `max_clients` too. Unix-socket clients are authenticated when they connect.
    pub max_anonymous_clients: u32,
    /// Seconds of silence after which the daemon sends an HTTP/2 ping; `-1` sends none.
    pub keepalive_interval: i64,
    /// Ping intervals the daemon waits for an answer before it closes the connection.
    pub keepalive_count: u32,
    /// The access policy file; empty means `access.toml` beside the daemon's configuration file.
    pub access_policy_file: String,
    /// Log filters as tracing directives (`info,rvirt_daemon=debug`); `RVIRT_LOG` overrides.
    pub log_filters: String,
    /// Seconds SIGTERM waits for in-flight calls before the daemon exits anyway.
    pub shutdown_timeout: u64,
    /// The longest a worker keeps polling its sockets, in microseconds, after a call comes in or
    /// is answered, instead of sleeping at once; the window adapts below it (see
    /// [`crate::busy_poll`]); 0 turns polling off; unset, [`DEFAULT_BUSY_POLL_US`].
    pub busy_poll_us: Option<u32>,
    /// Remote access (virtproxyd only; other daemons ignore these keys).
    #[serde(skip)]
    pub remote: RemoteConfig,
}

/// virtproxyd's TCP and TLS listeners (libvirt's `listen_tls`, `listen_tcp`, ... keys).
///
/// The listeners start when virtproxyd runs with `--listen` (then `listen_tls` defaults to on and
/// `listen_tcp` to off, as libvirt's), or when the file sets `listen_tls = 1` or `listen_tcp = 1`
/// explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    /// `listen_tls`, when the file sets it.
    pub listen_tls: Option<bool>,
    /// `listen_tcp`, when the file sets it.
    pub listen_tcp: Option<bool>,
    /// `tls_port`: 16514 unless set.
    pub tls_port: u16,
    /// `tcp_port`: 16509 unless set.
    pub tcp_port: u16,
    /// `listen_addr`: the address to listen on; empty listens on every address.
    pub listen_addr: String,
    /// `key_file`: the server's private key; empty uses the PKI layout's default.
    pub key_file: String,
    /// `cert_file`: the server's certificate (chain); empty uses the default.
    pub cert_file: String,
    /// `ca_file`: the CA that signs client certificates; empty uses the default.
    pub ca_file: String,
    /// `crl_file`: the CA's revocation list (PEM); empty uses `cacrl.pem` beside the CA
    /// certificate when that file exists.
    pub crl_file: String,
    /// `tls_allowed_dn_list`: client certificate subjects allowed, with `*` and `?` wildcards;
    /// `None` allows every certificate the CA signed.
    pub tls_allowed_dn_list: Option<Vec<String>>,
    /// `auth_tcp`: `sasl` (libvirt's default, not supported: TCP stays off) or `none`.
    pub auth_tcp: String,
    /// `auth_tls`: `none` (the certificate is the authentication), the only value supported.
    pub auth_tls: String,
}

impl RemoteConfig {
    /// libvirt's defaults.
    pub fn defaults() -> RemoteConfig {
        RemoteConfig {
            listen_tls: None,
            listen_tcp: None,
            tls_port: 16514,
            tcp_port: 16509,
            listen_addr: String::new(),
            key_file: String::new(),
            cert_file: String::new(),
            ca_file: String::new(),
            crl_file: String::new(),
            tls_allowed_dn_list: None,
            auth_tcp: "sasl".into(),
            auth_tls: "none".into(),
        }
    }

    /// Whether the TLS listener runs, given `--listen`.
    pub fn tls_enabled(&self, listen_flag: bool) -> bool {
        self.listen_tls.unwrap_or(listen_flag)
    }

    /// Whether the plain TCP listener runs: only when the file sets `listen_tcp = 1` (libvirt's
    /// default is off, with or without `--listen`).
    pub fn tcp_enabled(&self) -> bool {
        self.listen_tcp.unwrap_or(false)
    }
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self::defaults()
    }
}

/// A port as libvirt writes it (`tls_port = "16514"`) or as a bare number.
#[derive(Deserialize)]
#[serde(untagged)]
enum PortText {
    Number(i64),
    Text(String),
}

fn port(key: &str, value: PortText) -> Result<u16, String> {
    let number = match value {
        PortText::Number(n) => n,
        PortText::Text(t) => t
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("{key}: {t:?} is not a port number (service names are not supported)"))?,
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{key}: {number} is not a port number (1-65535)"))
}

fn flag(key: &str, value: i64) -> Result<bool, String> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(format!("{key}: {other} is not 0 or 1")),
    }
}

impl DaemonConfig {
    /// The defaults for `mode`.
    pub fn defaults(mode: Mode) -> DaemonConfig {
        let (rw, admin) = match mode {
            Mode::System => ("0666", "0600"),
            Mode::Session => ("0700", "0700"),
        };
        DaemonConfig {
            unix_sock_group: String::new(),
            unix_sock_ro_perms: "0666".into(),
            unix_sock_rw_perms: rw.into(),
            unix_sock_admin_perms: admin.into(),
            max_clients: 5000,
            admin_max_clients: 5,
            max_workers: 1,
            max_anonymous_clients: 20,
            keepalive_interval: 5,
            keepalive_count: 5,
            access_policy_file: String::new(),
            log_filters: String::new(),
            shutdown_timeout: 10,
            busy_poll_us: None,
            remote: RemoteConfig::defaults(),
        }
    }

    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path, mode: Mode) -> Result<DaemonConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::defaults(mode)),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        Self::parse(&text, mode).map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses the text of a configuration file over the defaults of `mode`.
    pub fn parse(text: &str, mode: Mode) -> Result<DaemonConfig, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Partial {
            unix_sock_group: Option<String>,
            unix_sock_ro_perms: Option<String>,
            unix_sock_rw_perms: Option<String>,
            unix_sock_admin_perms: Option<String>,
            max_clients: Option<u32>,
            admin_max_clients: Option<u32>,
            max_workers: Option<u32>,
            max_anonymous_clients: Option<u32>,
            keepalive_interval: Option<i64>,
            keepalive_count: Option<u32>,
            access_policy_file: Option<String>,
            log_filters: Option<String>,
            shutdown_timeout: Option<u64>,
            busy_poll_us: Option<u32>,
            listen_tls: Option<i64>,
            listen_tcp: Option<i64>,
            tls_port: Option<PortText>,
            tcp_port: Option<PortText>,
            listen_addr: Option<String>,
            key_file: Option<String>,
            cert_file: Option<String>,
            ca_file: Option<String>,
            crl_file: Option<String>,
            tls_allowed_dn_list: Option<Vec<String>>,
            auth_tcp: Option<String>,
            auth_tls: Option<String>,
        }
        let p: Partial = toml::from_str(text).map_err(|e| located(text, &e))?;
        let mut c = Self::defaults(mode);
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = p.$f { c.$f = v; } )* };
        }
        set!(
            unix_sock_group,
            unix_sock_ro_perms,
            unix_sock_rw_perms,
            unix_sock_admin_perms,
            max_clients,
            admin_max_clients,
            max_workers,
            max_anonymous_clients,
            keepalive_interval,
            keepalive_count,
            access_policy_file,
            log_filters,
            shutdown_timeout
        );
        c.busy_poll_us = p.busy_poll_us;
        let r = &mut c.remote;
        if let Some(v) = p.listen_tls {
            r.listen_tls = Some(flag("listen_tls", v)?);
        }
        if let Some(v) = p.listen_tcp {
            r.listen_tcp = Some(flag("listen_tcp", v)?);
        }
        if let Some(v) = p.tls_port {
            r.tls_port = port("tls_port", v)?;
        }
        if let Some(v) = p.tcp_port {
            r.tcp_port = port("tcp_port", v)?;
        }
        for (field, value) in [
            (&mut r.listen_addr, p.listen_addr),
            (&mut r.key_file, p.key_file),
            (&mut r.cert_file, p.cert_file),
            (&mut r.ca_file, p.ca_file),
            (&mut r.crl_file, p.crl_file),
            (&mut r.auth_tcp, p.auth_tcp),
            (&mut r.auth_tls, p.auth_tls),
        ] {
            if let Some(v) = value {
                *field = v;
            }
        }
        if p.tls_allowed_dn_list.is_some() {
            r.tls_allowed_dn_list = p.tls_allowed_dn_list;
        }
        if !matches!(r.auth_tcp.as_str(), "none" | "sasl") {
            return Err(format!(
                "auth_tcp: {:?} is not supported: use \"none\" (no authentication, for tests and trusted networks)",
                r.auth_tcp
            ));
        }
        if r.auth_tls != "none" {
            return Err(format!(
                "auth_tls: {:?} is not supported: use \"none\" (the client certificate authenticates)",
                r.auth_tls
            ));
        }
        for (key, value) in [
            ("unix_sock_ro_perms", &c.unix_sock_ro_perms),
            ("unix_sock_rw_perms", &c.unix_sock_rw_perms),
            ("unix_sock_admin_perms", &c.unix_sock_admin_perms),
        ] {
            parse_mode(value).map_err(|e| format!("{key}: {e}"))?;
        }
        if c.max_workers == 0 {
            return Err("max_workers: must be at least 1".into());
        }
        if c.keepalive_interval == 0 || c.keepalive_interval < -1 {
            return Err("keepalive_interval: must be a number of seconds, or -1 to send no pings".into());
        }
        if let Some(us) = c.busy_poll_us.filter(|us| *us > MAX_BUSY_POLL_US) {
            return Err(format!(
                "busy_poll_us: {us} is more than {MAX_BUSY_POLL_US} (10 ms): a longer window keeps a core busy between calls for little gain; use 0 to turn polling off"
            ));
        }
        if c.keepalive_count == 0 {
            return Err("keepalive_count: must be at least 1".into());
        }
        Ok(c)
    }
}

impl DaemonConfig {
    /// The HTTP/2 keepalive: ping after `keepalive_interval` seconds of silence, and close the
    /// connection when no answer came `keepalive_interval × keepalive_count` seconds later (as
    /// libvirt, which closes after interval × (count + 1) without a message). `None` when
    /// `keepalive_interval` is -1.
    pub fn keepalive(&self) -> Option<(std::time::Duration, std::time::Duration)> {
        let interval = u64::try_from(self.keepalive_interval).ok().filter(|i| *i > 0)?;
        Some((
            std::time::Duration::from_secs(interval),
            std::time::Duration::from_secs(interval.saturating_mul(u64::from(self.keepalive_count))),
        ))
    }

    /// The busy-polling ceiling: `busy_poll_us`, or [`DEFAULT_BUSY_POLL_US`].
    pub fn busy_poll(&self) -> std::time::Duration {
        std::time::Duration::from_micros(u64::from(self.busy_poll_us.unwrap_or(DEFAULT_BUSY_POLL_US)))
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self::defaults(Mode::System)
    }
}

/// Parses an octal permission string such as `"0666"`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(text.trim(), 8)
        .map_err(|_| format!("{text:?} is not an octal permission such as \"0660\""))?;
    if mode > 0o7777 {
        return Err(format!("{text:?} is larger than 07777"));
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirt_style_file_parses() {
        let text = "# comment\nunix_sock_group = \"libvirt\"\nunix_sock_rw_perms = \"0770\"\nmax_clients = 10\nlog_filters=\"info,rvirt_daemon=debug\"\n";
        let c = DaemonConfig::parse(text, Mode::System).expect("valid config");
        assert_eq!(c.unix_sock_group, "libvirt");
        assert_eq!(parse_mode(&c.unix_sock_rw_perms), Ok(0o770));
        assert_eq!(c.max_clients, 10);
        assert_eq!(c.unix_sock_admin_perms, "0600");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = DaemonConfig::parse("max_clientz = 3\n", Mode::System).expect_err("unknown key");
        assert!(err.contains("max_clientz"), "{err}");
    }

    #[test]
    fn bad_permission_is_named() {
        let err = DaemonConfig::parse("unix_sock_ro_perms = \"rw\"\n", Mode::System).expect_err("bad perms");
        assert!(err.contains("unix_sock_ro_perms"), "{err}");
    }

    #[test]
    fn remote_keys_parse_as_libvirt_writes_them() {
        let text = "listen_tls = 1\nlisten_tcp = 0\ntls_port = \"16600\"\ntcp_port = 16601\nlisten_addr = \"127.0.0.1\"\nca_file = \"/x/ca.pem\"\ntls_allowed_dn_list = [\"C=GB,O=Example,CN=*\"]\nauth_tcp = \"none\"\n";
        let r = DaemonConfig::parse(text, Mode::System)
            .expect("valid config")
            .remote;
        assert_eq!((r.listen_tls, r.listen_tcp), (Some(true), Some(false)));
        assert_eq!((r.tls_port, r.tcp_port), (16600, 16601));
        assert_eq!(r.listen_addr, "127.0.0.1");
        assert_eq!(r.ca_file, "/x/ca.pem");
        assert_eq!(
            r.tls_allowed_dn_list,
            Some(vec!["C=GB,O=Example,CN=*".to_owned()])
        );
        assert_eq!(r.auth_tcp, "none");
    }

    #[test]
    fn listeners_follow_the_listen_flag_unless_the_file_says() {
        let defaults = RemoteConfig::defaults();
        assert!(!defaults.tls_enabled(false) && !defaults.tcp_enabled());
        assert!(defaults.tls_enabled(true));
        let off = DaemonConfig::parse("listen_tls = 0\n", Mode::System)
            .expect("valid")
            .remote;
        assert!(!off.tls_enabled(true));
        let on = DaemonConfig::parse("listen_tcp = 1\nauth_tcp = \"none\"\n", Mode::System)
            .expect("valid")
            .remote;
        assert!(on.tcp_enabled());
    }

    #[test]
    fn bad_remote_values_are_named() {
        for (text, key) in [
            ("listen_tls = 2\n", "listen_tls"),
            ("tls_port = \"https\"\n", "tls_port"),
            ("tcp_port = 70000\n", "tcp_port"),
            ("auth_tcp = \"polkit\"\n", "auth_tcp"),
            ("auth_tls = \"sasl\"\n", "auth_tls"),
        ] {
            let err = DaemonConfig::parse(text, Mode::System).expect_err(text);
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn limits_and_keepalive_keys_parse_and_bad_values_are_named() {
        let text = "max_anonymous_clients = 3\nkeepalive_interval = -1\nkeepalive_count = 2\naccess_policy_file = \"/srv/access.toml\"\n";
        let c = DaemonConfig::parse(text, Mode::System).expect("valid config");
        assert_eq!(
            (c.max_anonymous_clients, c.keepalive_interval, c.keepalive_count),
            (3, -1, 2)
        );
        assert_eq!(c.keepalive(), None);
        assert_eq!(c.access_policy_file, "/srv/access.toml");
        let d = DaemonConfig::defaults(Mode::System);
        assert_eq!(
            d.keepalive(),
            Some((
                std::time::Duration::from_secs(5),
                std::time::Duration::from_secs(25)
            ))
        );
        let err = DaemonConfig::parse("keepalive_count = 0\n", Mode::System).expect_err("zero count");
        assert!(err.contains("keepalive_count"), "{err}");
        let err = DaemonConfig::parse("keepalive_interval = 0\n", Mode::System).expect_err("zero interval");
        assert!(err.contains("keepalive_interval"), "{err}");
    }

    #[test]
    fn busy_polling_is_300_us_unless_the_file_sets_it() {
        let d = DaemonConfig::defaults(Mode::System);
        assert_eq!(d.busy_poll(), std::time::Duration::from_micros(300));
        let off = DaemonConfig::parse("busy_poll_us = 0\n", Mode::System).expect("valid");
        assert_eq!(off.busy_poll(), std::time::Duration::ZERO);
        let on = DaemonConfig::parse("busy_poll_us = 50\n", Mode::System).expect("valid");
        assert_eq!(on.busy_poll(), std::time::Duration::from_micros(50));
        let err = DaemonConfig::parse("busy_poll_us = 10001\n", Mode::System).expect_err("too long");
        assert!(err.contains("busy_poll_us") && err.contains("10000"), "{err}");
        let err = DaemonConfig::parse("busy_poll_us = -1\n", Mode::System).expect_err("negative");
        assert!(err.contains("busy_poll_us"), "{err}");
    }

    #[test]
    fn missing_file_gives_defaults() {
        let c = DaemonConfig::load(Path::new("/nonexistent/rvirt.conf"), Mode::Session).expect("defaults");
        assert_eq!(c, DaemonConfig::defaults(Mode::Session));
    }
}
