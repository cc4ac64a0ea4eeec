//! Where a daemon keeps its sockets, configuration, runtime state and data, for system and
//! session mode (DESIGN.md §5). `RVIRT_ROOT=DIR` prefixes every path, for daemons and clients
//! alike, so a whole stack can run inside one directory.

use std::path::{Path, PathBuf};

/// The environment variable that prefixes every path.
pub const ROOT_ENV: &str = "RVIRT_ROOT";

/// System mode (root, `/run/rvirt`) or session mode (one user, `$XDG_RUNTIME_DIR/rvirt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The privileged, machine-wide instance.
    System,
    /// One user's own instance.
    Session,
}

impl Mode {
    /// System mode for root, session mode for everyone else: what libvirt's daemons do.
    pub fn for_current_user() -> Mode {
        if nix::unistd::geteuid().is_root() {
            Mode::System
        } else {
            Mode::Session
        }
    }

    /// `system` or `session`, as in `qemu:///system`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::System => "system",
            Mode::Session => "session",
        }
    }
}

/// The base directories of one mode, already prefixed by `RVIRT_ROOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseDirs {
    /// Sockets and runtime state: `/run/rvirt` or `$XDG_RUNTIME_DIR/rvirt`.
    pub runtime: PathBuf,
    /// Configuration: `/etc/rvirt` or `$XDG_CONFIG_HOME/rvirt`.
    pub config: PathBuf,
    /// Persistent data: `/var/lib/rvirt` or `$XDG_DATA_HOME/rvirt`.
    pub data: PathBuf,
    /// Logs: `/var/log/rvirt` or `$XDG_STATE_HOME/rvirt/log`.
    pub log: PathBuf,
}

impl BaseDirs {
    /// The directories of `mode`, read from the environment (`RVIRT_ROOT`, `XDG_*`, `HOME`).
    pub fn new(mode: Mode) -> BaseDirs {
        let env = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        BaseDirs::from_env(mode, env(ROOT_ENV), &env)
    }

    /// The directories of `mode` with an explicit root and environment lookup (for tests).
    pub fn from_env(mode: Mode, root: Option<PathBuf>, env: &dyn Fn(&str) -> Option<PathBuf>) -> BaseDirs {
        let dirs = match mode {
            Mode::System => BaseDirs {
                runtime: PathBuf::from("/run/rvirt"),
                config: PathBuf::from("/etc/rvirt"),
                data: PathBuf::from("/var/lib/rvirt"),
                log: PathBuf::from("/var/log/rvirt"),
            },
            Mode::Session => {
                let home = env("HOME").unwrap_or_else(|| PathBuf::from("/"));
                let uid = nix::unistd::geteuid().as_raw();
                let runtime =
                    env("XDG_RUNTIME_DIR").unwrap_or_else(|| PathBuf::from(format!("/run/user/{uid}")));
                let config = env("XDG_CONFIG_HOME").unwrap_or_else(|| home.join(".config"));
                let data = env("XDG_DATA_HOME").unwrap_or_else(|| home.join(".local/share"));
                let state = env("XDG_STATE_HOME").unwrap_or_else(|| home.join(".local/state"));
                BaseDirs {
                    runtime: runtime.join("rvirt"),
                    config: config.join("rvirt"),
                    data: data.join("rvirt"),
                    log: state.join("rvirt").join("log"),
                }
            }
        };
        match root {
            Some(root) => BaseDirs {
                runtime: prefix(&root, &dirs.runtime),
                config: prefix(&root, &dirs.config),
                data: prefix(&root, &dirs.data),
                log: prefix(&root, &dirs.log),
            },
            None => dirs,
        }
    }
}

/// `root` joined with `path` taken as relative (`/run/rvirt` under `/tmp/t` is `/tmp/t/run/rvirt`).
pub fn prefix(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The paths of one daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonPaths {
    /// The mode these paths are for.
    pub mode: Mode,
    /// The read-write socket: `<runtime>/<daemon>-sock`.
    pub rw_socket: PathBuf,
    /// The read-only socket (system mode only): `<runtime>/<daemon>-sock-ro`.
    pub ro_socket: Option<PathBuf>,
    /// The admin socket: `<runtime>/<daemon>-admin-sock`.
    pub admin_socket: PathBuf,
    /// The lock and pid file that keeps a second instance out: `<runtime>/<daemon>.pid`.
    pub pid_file: PathBuf,
    /// The daemon's configuration file: `<config>/<daemon>.conf`.
    pub config_file: PathBuf,
    /// The driver's configuration directory (persistent object definitions): `<config>/<driver>`.
    pub driver_config_dir: PathBuf,
    /// The driver's runtime state directory: `<runtime>/<driver>`.
    pub driver_state_dir: PathBuf,
    /// The driver's data directory: `<data>/<driver>`.
    pub driver_data_dir: PathBuf,
    /// The driver's log directory: `<log>/<driver>`.
    pub driver_log_dir: PathBuf,
}

impl DaemonPaths {
    /// The paths of daemon `daemon` (e.g. `virtqemud`) whose sockets are named after `sockets`
    /// (the daemon's name, or `rvirt` for the proxy) and whose driver is `driver` (e.g. `qemu`).
    pub fn new(base: &BaseDirs, mode: Mode, daemon: &str, sockets: &str, driver: &str) -> DaemonPaths {
        DaemonPaths {
            mode,
            rw_socket: base.runtime.join(format!("{sockets}-sock")),
            ro_socket: (mode == Mode::System).then(|| base.runtime.join(format!("{sockets}-sock-ro"))),
            admin_socket: base.runtime.join(format!("{sockets}-admin-sock")),
            pid_file: base.runtime.join(format!("{daemon}.pid")),
            config_file: base.config.join(format!("{daemon}.conf")),
            driver_config_dir: base.config.join(driver),
            driver_state_dir: base.runtime.join(driver),
            driver_data_dir: base.data.join(driver),
            driver_log_dir: base.log.join(driver),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<PathBuf> {
        None
    }

    #[test]
    fn system_paths_follow_libvirt_layout() {
        let base = BaseDirs::from_env(Mode::System, None, &no_env);
        let p = DaemonPaths::new(&base, Mode::System, "virtqemud", "virtqemud", "qemu");
        assert_eq!(p.rw_socket, Path::new("/run/rvirt/virtqemud-sock"));
        assert_eq!(
            p.ro_socket.as_deref(),
            Some(Path::new("/run/rvirt/virtqemud-sock-ro"))
        );
        assert_eq!(p.admin_socket, Path::new("/run/rvirt/virtqemud-admin-sock"));
        assert_eq!(p.config_file, Path::new("/etc/rvirt/virtqemud.conf"));
        assert_eq!(p.driver_config_dir, Path::new("/etc/rvirt/qemu"));
        assert_eq!(p.driver_state_dir, Path::new("/run/rvirt/qemu"));
        assert_eq!(p.driver_data_dir, Path::new("/var/lib/rvirt/qemu"));
    }

    #[test]
    fn root_prefixes_every_path() {
        let base = BaseDirs::from_env(Mode::System, Some(PathBuf::from("/tmp/t")), &no_env);
        let p = DaemonPaths::new(&base, Mode::System, "virtnetworkd", "virtnetworkd", "network");
        for path in [
            &p.rw_socket,
            &p.admin_socket,
            &p.pid_file,
            &p.config_file,
            &p.driver_data_dir,
        ] {
            assert!(
                path.starts_with("/tmp/t"),
                "{} is not under the root",
                path.display()
            );
        }
        assert_eq!(p.rw_socket, Path::new("/tmp/t/run/rvirt/virtnetworkd-sock"));
    }

    #[test]
    fn session_paths_use_xdg_and_have_no_ro_socket() {
        let env = |name: &str| match name {
            "XDG_RUNTIME_DIR" => Some(PathBuf::from("/run/user/1000")),
            "HOME" => Some(PathBuf::from("/home/u")),
            _ => None,
        };
        let base = BaseDirs::from_env(Mode::Session, None, &env);
        let p = DaemonPaths::new(&base, Mode::Session, "virtqemud", "virtqemud", "qemu");
        assert_eq!(p.rw_socket, Path::new("/run/user/1000/rvirt/virtqemud-sock"));
        assert_eq!(p.ro_socket, None);
        assert_eq!(p.config_file, Path::new("/home/u/.config/rvirt/virtqemud.conf"));
        assert_eq!(p.driver_data_dir, Path::new("/home/u/.local/share/rvirt/qemu"));
    }
}
