//! Connection URIs in libvirt's grammar:
//! `driver[+transport]://[user@][host][:port]/path[?param=value&...]`.
//!
//! Drivers: `qemu`, `test`, `network`, `storage`, `secret`. Transports: `unix` (the default
//! without a host), `tls` (the default with a host), `tcp`; `ssh` and its variants are parsed
//! and refused as not supported yet. Paths: `/system` and `/session`, or for `test`, `/default`
//! or an absolute path to a `<node>` document. Parameters: `socket`, `mode=auto|direct|legacy`,
//! `pkipath`, `no_verify`, `keyfile`. A malformed URI is an error that names the bad part.

use std::fmt;
use std::path::PathBuf;

/// The driver a URI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Driver {
    /// QEMU/KVM domains (virtqemud).
    Qemu,
    /// The in-process test driver.
    Test,
    /// Virtual networks (virtnetworkd).
    Network,
    /// Storage pools and volumes (virtstoraged).
    Storage,
    /// Secrets (virtsecretd).
    Secret,
}

impl Driver {
    /// The scheme's driver part, `qemu`.
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Qemu => "qemu",
            Driver::Test => "test",
            Driver::Network => "network",
            Driver::Storage => "storage",
            Driver::Secret => "secret",
        }
    }
}

/// How a client reaches the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A local Unix socket.
    Unix,
    /// TCP with mutual TLS (port 16514).
    Tls,
    /// Plain TCP (port 16509), for loopback testing.
    Tcp,
}

impl Transport {
    /// The scheme's transport part, `tls`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Unix => "unix",
            Transport::Tls => "tls",
            Transport::Tcp => "tcp",
        }
    }

    /// The default port of a network transport.
    pub fn default_port(self) -> Option<u16> {
        match self {
            Transport::Unix => None,
            Transport::Tls => Some(16514),
            Transport::Tcp => Some(16509),
        }
    }
}

/// Which socket a local connection uses (libvirt's `mode` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SocketMode {
    /// The owning daemon's socket when it exists, else the proxy's.
    #[default]
    Auto,
    /// Always the owning daemon's socket.
    Direct,
    /// Always the proxy's socket (`rvirt-sock`).
    Legacy,
}

impl SocketMode {
    /// `auto`, `direct` or `legacy`.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketMode::Auto => "auto",
            SocketMode::Direct => "direct",
            SocketMode::Legacy => "legacy",
        }
    }
}

/// Which instance of the driver a URI names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Instance {
    /// The machine's instance (`/system`).
    System,
    /// The caller's own instance (`/session`).
    Session,
    /// The test driver's built-in state (`test:///default`).
    Default,
    /// The test driver loaded from a `<node>` document (`test:///abs/path.xml`).
    File(PathBuf),
}

/// A parsed connection URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectUri {
    /// The driver.
    pub driver: Driver,
    /// The transport.
    pub transport: Transport,
    /// The user part, `user@`.
    pub user: Option<String>,
    /// The host, without brackets for IPv6.
    pub host: Option<String>,
    /// The port.
    pub port: Option<u16>,
    /// The instance.
    pub instance: Instance,
    /// `socket=`: an explicit socket path.
    pub socket: Option<PathBuf>,
    /// `mode=`.
    pub mode: SocketMode,
    /// `pkipath=`: the directory with the CA, client certificate and key.
    pub pkipath: Option<PathBuf>,
    /// `no_verify=1`: do not check the server's certificate.
    pub no_verify: bool,
    /// `keyfile=`: the client key for TLS.
    pub keyfile: Option<PathBuf>,
}

/// A malformed or unsupported URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid connection URI {uri:?}: {part}: {message}")]
pub struct UriError {
    /// The URI as given.
    pub uri: String,
    /// Which part is wrong: `driver`, `transport`, `host`, `port`, `path`, `parameter 'x'`.
    pub part: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl ConnectUri {
    /// Parses a URI.
    pub fn parse(uri: &str) -> Result<ConnectUri, UriError> {
        let err = |part: &str, message: String| UriError {
            uri: uri.to_owned(),
            part: part.to_owned(),
            message,
        };
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| {
            err(
                "scheme",
                "expected driver[+transport]://..., e.g. qemu:///system".into(),
            )
        })?;
        let (driver_text, transport_text) = match scheme.split_once('+') {
            Some((d, t)) => (d, Some(t)),
            None => (scheme, None),
        };
        let driver = match driver_text.to_ascii_lowercase().as_str() {
            "qemu" => Driver::Qemu,
            "test" => Driver::Test,
            "network" => Driver::Network,
            "storage" => Driver::Storage,
            "secret" => Driver::Secret,
            "" => return Err(err("driver", "the driver is missing, e.g. qemu:///system".into())),
            other => {
                return Err(err(
                    "driver",
                    format!("unknown driver {other:?}: rvirt has qemu, test, network, storage and secret"),
                ));
            }
        };
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i..]),
            None => (before_query, ""),
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => {
                let user = percent_decode(u)
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| err("user", format!("{u:?} is not a valid user name")))?;
                (Some(user), h)
            }
            None => (None, authority),
        };
        let (host, port) = parse_host_port(hostport).map_err(|(part, message)| err(part, message))?;
        let transport = match transport_text.map(str::to_ascii_lowercase).as_deref() {
            None if host.is_some() => Transport::Tls,
            None | Some("unix") => Transport::Unix,
            Some("tls") => Transport::Tls,
            Some("tcp") => Transport::Tcp,
            Some(t @ ("ssh" | "libssh" | "libssh2" | "ext")) => {
                return Err(err(
                    "transport",
                    format!("the {t} transport is not supported yet: use tls (qemu+tls://host/system)"),
                ));
            }
            Some(other) => {
                return Err(err(
                    "transport",
                    format!("unknown transport {other:?}: use unix, tls or tcp"),
                ));
            }
        };
        if transport == Transport::Unix && (host.is_some() || port.is_some()) {
            return Err(err(
                "host",
                "a unix connection has no host or port: use tls for a remote host".into(),
            ));
        }
        if driver == Driver::Test && host.is_some() {
            return Err(err(
                "host",
                "the test driver runs in the client: test:/// takes no host".into(),
            ));
        }
        let path =
            percent_decode(path).ok_or_else(|| err("path", format!("{path:?} has a bad percent escape")))?;
        let instance = match (driver, path.as_str()) {
            (_, "/system") if driver != Driver::Test => Instance::System,
            (_, "/session") if driver != Driver::Test => Instance::Session,
            (Driver::Test, "/default") => Instance::Default,
            (Driver::Test, p) if p.len() > 1 && p.starts_with('/') && !p.contains('\0') => {
                Instance::File(PathBuf::from(p))
            }
            (Driver::Test, p) => {
                return Err(err(
                    "path",
                    format!("{p:?}: the test driver takes /default or an absolute path to a <node> XML file"),
                ));
            }
            (_, p) => {
                return Err(err("path", format!("{p:?}: expected /system or /session")));
            }
        };
        let mut parsed = ConnectUri {
            driver,
            transport,
            user,
            host,
            port,
            instance,
            socket: None,
            mode: SocketMode::Auto,
            pkipath: None,
            no_verify: false,
            keyfile: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let part = format!("parameter '{key}'");
            let value = percent_decode(value).ok_or_else(|| err(&part, "bad percent escape".into()))?;
            let path_value = |value: String| -> Result<PathBuf, UriError> {
                if value.is_empty() || value.contains('\0') {
                    Err(err(&part, "expected a path".into()))
                } else {
                    Ok(PathBuf::from(value))
                }
            };
            match key {
                "socket" => parsed.socket = Some(path_value(value)?),
                "pkipath" => parsed.pkipath = Some(path_value(value)?),
                "keyfile" => parsed.keyfile = Some(path_value(value)?),
                "mode" => {
                    parsed.mode = match value.as_str() {
                        "auto" => SocketMode::Auto,
                        "direct" => SocketMode::Direct,
                        "legacy" => SocketMode::Legacy,
                        other => {
                            return Err(err(&part, format!("{other:?}: expected auto, direct or legacy")));
                        }
                    }
                }
                "no_verify" => {
                    parsed.no_verify = match value.as_str() {
                        "0" => false,
                        "1" => true,
                        other => return Err(err(&part, format!("{other:?}: expected 0 or 1"))),
                    }
                }
                "command" | "netcat" | "no_tty" | "sshauth" | "known_hosts" | "known_hosts_verify" => {
                    return Err(err(&part, "ssh parameters are not supported yet".into()));
                }
                other => {
                    return Err(err(
                        &format!("parameter '{other}'"),
                        "unknown parameter: rvirt takes socket, mode, pkipath, no_verify and keyfile".into(),
                    ));
                }
            }
        }
        if parsed.socket.is_some() && transport != Transport::Unix {
            return Err(err(
                "parameter 'socket'",
                "socket= applies to unix connections only".into(),
            ));
        }
        Ok(parsed)
    }

    /// True when the URI names another host (the call goes over TLS or TCP).
    pub fn is_remote(&self) -> bool {
        self.host.is_some()
    }

    /// The URI a daemon serves the call for: the driver and instance, without transport, host
    /// or parameters (`qemu+tls://h/system?pkipath=/x` → `qemu:///system`). This is what travels
    /// in `rvirt-uri` once the call reached the host it is for.
    pub fn local(&self) -> String {
        format!("{}://{}", self.driver.as_str(), self.path_text())
    }

    fn path_text(&self) -> String {
        match &self.instance {
            Instance::System => "/system".into(),
            Instance::Session => "/session".into(),
            Instance::Default => "/default".into(),
            Instance::File(p) => percent_encode(&p.to_string_lossy(), b"/"),
        }
    }
}

/// A host and port, or the failing part and why.
type HostPort = Result<(Option<String>, Option<u16>), (&'static str, String)>;

fn parse_host_port(text: &str) -> HostPort {
    if text.is_empty() {
        return Ok((None, None));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or(("host", format!("{text:?}: unclosed '[' in IPv6 host")))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(("host", format!("{host:?} is not an IPv6 address")));
        }
        match after {
            "" => (host.to_owned(), None),
            p => (
                host.to_owned(),
                Some(
                    p.strip_prefix(':')
                        .ok_or(("port", format!("{p:?} after the host")))?,
                ),
            ),
        }
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (text.to_owned(), None),
        }
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':');
    if host.is_empty() && port.is_some() {
        return Err(("host", "a port needs a host".into()));
    }
    if !host.chars().all(valid) {
        return Err(("host", format!("{host:?} is not a host name or address")));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or(("port", format!("{p:?} is not a port number (1-65535)")))?,
        ),
    };
    Ok(((!host.is_empty()).then_some(host), port))
}

impl fmt::Display for ConnectUri {
    /// The canonical form: transport only when it is not the default for the URI's shape,
    /// parameters in a fixed order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let default_transport = if self.host.is_some() {
            Transport::Tls
        } else {
            Transport::Unix
        };
        write!(f, "{}", self.driver.as_str())?;
        if self.transport != default_transport {
            write!(f, "+{}", self.transport.as_str())?;
        }
        f.write_str("://")?;
        if let Some(user) = &self.user {
            write!(f, "{}@", percent_encode(user, b""))?;
        }
        if let Some(host) = &self.host {
            if host.contains(':') {
                write!(f, "[{host}]")?;
            } else {
                f.write_str(host)?;
            }
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        f.write_str(&self.path_text())?;
        let mut params = Vec::new();
        if let Some(s) = &self.socket {
            params.push(format!("socket={}", percent_encode(&s.to_string_lossy(), b"/")));
        }
        if self.mode != SocketMode::Auto {
            params.push(format!("mode={}", self.mode.as_str()));
        }
        if let Some(p) = &self.pkipath {
            params.push(format!("pkipath={}", percent_encode(&p.to_string_lossy(), b"/")));
        }
        if self.no_verify {
            params.push("no_verify=1".into());
        }
        if let Some(k) = &self.keyfile {
            params.push(format!("keyfile={}", percent_encode(&k.to_string_lossy(), b"/")));
        }
        if !params.is_empty() {
            write!(f, "?{}", params.join("&"))?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ConnectUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConnectUri::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(uri: &str) -> ConnectUri {
        ConnectUri::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"))
    }

    fn part(uri: &str) -> String {
        ConnectUri::parse(uri).expect_err(uri).part
    }

    #[test]
    fn local_forms() {
        let u = ok("qemu:///system");
        assert_eq!(
            (u.driver, u.transport, u.instance.clone()),
            (Driver::Qemu, Transport::Unix, Instance::System)
        );
        assert!(!u.is_remote());
        assert_eq!(ok("qemu:///session").instance, Instance::Session);
        assert_eq!(ok("network:///system").driver, Driver::Network);
        assert_eq!(ok("storage:///session").driver, Driver::Storage);
        assert_eq!(ok("secret:///system").driver, Driver::Secret);
        assert_eq!(ok("qemu+unix:///system").transport, Transport::Unix);
        assert_eq!(ok("test:///default").instance, Instance::Default);
        assert_eq!(
            ok("test:///tmp/node%20a.xml").instance,
            Instance::File(PathBuf::from("/tmp/node a.xml"))
        );
    }

    #[test]
    fn remote_forms() {
        let u = ok("qemu+tls://user@host.example.org:16515/system?pkipath=/etc/pki/x&no_verify=1");
        assert_eq!(u.transport, Transport::Tls);
        assert_eq!(u.user.as_deref(), Some("user"));
        assert_eq!(u.host.as_deref(), Some("host.example.org"));
        assert_eq!(u.port, Some(16515));
        assert_eq!(u.pkipath, Some(PathBuf::from("/etc/pki/x")));
        assert!(u.no_verify);
        assert_eq!(u.local(), "qemu:///system");
        assert_eq!(
            ok("qemu://host/system").transport,
            Transport::Tls,
            "a host defaults to tls"
        );
        assert_eq!(ok("qemu+tcp://127.0.0.1/system").transport, Transport::Tcp);
        let v6 = ok("qemu+tls://[::1]:16514/system");
        assert_eq!(v6.host.as_deref(), Some("::1"));
        assert_eq!(v6.port, Some(16514));
    }

    #[test]
    fn parameters() {
        let u = ok("qemu:///system?socket=/run/x%20y&mode=direct&keyfile=/k");
        assert_eq!(u.socket, Some(PathBuf::from("/run/x y")));
        assert_eq!(u.mode, SocketMode::Direct);
        assert_eq!(u.keyfile, Some(PathBuf::from("/k")));
        assert_eq!(ok("qemu:///system?mode=legacy").mode, SocketMode::Legacy);
    }

    #[test]
    fn malformed_uris_name_the_bad_part() {
        assert_eq!(part("qemu:/system"), "scheme");
        assert_eq!(part("xen:///system"), "driver");
        assert_eq!(part("://x"), "driver");
        assert_eq!(part("qemu+ssh://user@host/system"), "transport");
        assert_eq!(part("qemu+carrier-pigeon:///system"), "transport");
        assert_eq!(part("qemu+tls://host:99999/system"), "port");
        assert_eq!(part("qemu+tls://host:0/system"), "port");
        assert_eq!(part("qemu+tls://host:x/system"), "port");
        assert_eq!(part("qemu+tls://ho st/system"), "host");
        assert_eq!(part("qemu+tls://[zz]/system"), "host");
        assert_eq!(part("qemu+unix://host/system"), "host");
        assert_eq!(part("test://host/default"), "host");
        assert_eq!(part("qemu:///systen"), "path");
        assert_eq!(part("qemu://"), "path");
        assert_eq!(part("test:///"), "path");
        assert_eq!(part("qemu:///system?mode=sideways"), "parameter 'mode'");
        assert_eq!(part("qemu:///system?no_verify=yes"), "parameter 'no_verify'");
        assert_eq!(part("qemu:///system?colour=red"), "parameter 'colour'");
        assert_eq!(part("qemu+tls://h/system?socket=/x"), "parameter 'socket'");
        assert_eq!(part("qemu:///system?command=ssh"), "parameter 'command'");
        let e = ConnectUri::parse("qemu+ssh://h/system").expect_err("ssh");
        assert!(e.message.contains("not supported yet"), "{e}");
    }

    #[test]
    fn canonical_form_round_trips() {
        for uri in [
            "qemu:///system",
            "qemu+tcp://127.0.0.1/system",
            "qemu://user@host:16515/system?pkipath=/p&no_verify=1",
            "qemu:///system?socket=/run/a%20b&mode=direct",
            "test:///tmp/n.xml",
            "secret://[fe80::1]/session",
        ] {
            assert_eq!(ok(uri).to_string(), uri);
        }
        assert_eq!(ok("qemu+tls://host/system").to_string(), "qemu://host/system");
        assert_eq!(ok("qemu+unix:///system").to_string(), "qemu:///system");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_uri() -> impl Strategy<Value = ConnectUri> {
            let driver = prop_oneof![
                Just(Driver::Qemu),
                Just(Driver::Network),
                Just(Driver::Storage),
                Just(Driver::Secret)
            ];
            let host = proptest::option::of(prop_oneof!["[a-z][a-z0-9.-]{0,20}", Just("::1".to_owned())]);
            (
                driver,
                host,
                proptest::option::of(1u16..),
                any::<bool>(),
                prop_oneof![
                    Just(SocketMode::Auto),
                    Just(SocketMode::Direct),
                    Just(SocketMode::Legacy)
                ],
                proptest::option::of("/[a-z /%?&=]{1,20}"),
                any::<bool>(),
            )
                .prop_map(|(driver, host, port, session, mode, path, no_verify)| {
                    let remote = host.is_some();
                    ConnectUri {
                        driver,
                        transport: if remote { Transport::Tls } else { Transport::Unix },
                        user: None,
                        port: if remote { port } else { None },
                        host,
                        instance: if session {
                            Instance::Session
                        } else {
                            Instance::System
                        },
                        socket: if remote {
                            None
                        } else {
                            path.clone().map(PathBuf::from)
                        },
                        mode,
                        pkipath: path.map(PathBuf::from),
                        no_verify,
                        keyfile: None,
                    }
                })
        }

        proptest! {
            #[test]
            fn display_then_parse_is_identity(uri in arb_uri()) {
                let text = uri.to_string();
                prop_assert_eq!(ConnectUri::parse(&text).map_err(|e| e.to_string()), Ok(uri));
            }

            #[test]
            fn arbitrary_text_never_panics(text in "\\PC{0,80}") {
                let _ = ConnectUri::parse(&text);
            }

            #[test]
            fn uri_like_text_never_panics(text in "(qemu|test|x)(\\+[a-z]{0,5})?://[a-z@:\\[\\]0-9.%]{0,20}/[a-z%/?=&]{0,30}") {
                let _ = ConnectUri::parse(&text);
            }
        }
    }
}
