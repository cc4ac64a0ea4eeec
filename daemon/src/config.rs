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
    /// Log filters as tracing directives (`info,rvirt_daemon=debug`); `RVIRT_LOG` overrides.
    pub log_filters: String,
    /// Seconds SIGTERM waits for in-flight calls before the daemon exits anyway.
    pub shutdown_timeout: u64,
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
            log_filters: String::new(),
            shutdown_timeout: 10,
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
            log_filters: Option<String>,
            shutdown_timeout: Option<u64>,
        }
        let p: Partial = toml::from_str(text).map_err(|e| e.message().to_owned())?;
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
            log_filters,
            shutdown_timeout
        );
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
        Ok(c)
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
    fn missing_file_gives_defaults() {
        let c = DaemonConfig::load(Path::new("/nonexistent/rvirt.conf"), Mode::Session).expect("defaults");
        assert_eq!(c, DaemonConfig::defaults(Mode::Session));
    }
}
