//! The daemon's sockets: read-write, read-only (system mode) and admin, either passed by
//! systemd socket activation or bound here with libvirt's permissions.

use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::config::{DaemonConfig, parse_mode};
use rvirt::paths::DaemonPaths;

/// Which of the daemon's sockets a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SocketKind {
    /// `<daemon>-sock`: every call the caller is allowed.
    ReadWrite,
    /// `<daemon>-sock-ro`: read calls only.
    ReadOnly,
    /// `<daemon>-admin-sock`: the admin service only.
    Admin,
}

impl SocketKind {
    /// `rw`, `ro` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketKind::ReadWrite => "rw",
            SocketKind::ReadOnly => "ro",
            SocketKind::Admin => "admin",
        }
    }

    /// The kind a systemd `FileDescriptorName=` stands for: names ending in `-ro` or
    /// `-ro.socket` are read-only, `-admin` or `-admin.socket` admin, anything else read-write
    /// (systemd's default name is the socket unit's, `virtqemud.socket`).
    pub fn from_fd_name(name: &str) -> SocketKind {
        let stem = name.strip_suffix(".socket").unwrap_or(name);
        if stem.ends_with("-ro") {
            SocketKind::ReadOnly
        } else if stem.ends_with("-admin") {
            SocketKind::Admin
        } else {
            SocketKind::ReadWrite
        }
    }
}

/// How a remote caller reached the daemon (virtproxyd's TCP and TLS listeners).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemoteTransport {
    /// TLS with a client certificate the CA signed (and `tls_allowed_dn_list` allowed).
    Tls,
    /// Plain TCP with `auth_tcp = "none"`: no authentication.
    Tcp,
}

impl RemoteTransport {
    /// `tls` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteTransport::Tls => "tls",
            RemoteTransport::Tcp => "tcp",
        }
    }
}

/// A caller that came over the network rather than a Unix socket. virtproxyd's TCP and TLS
/// listeners attach it to every request as an extension, beside the caller's
/// [`ClientInfo`](crate::ClientInfo), whose uid and gid then mean nothing (they are
/// `u32::MAX - 1`, "nobody") and whose `cert_subject` is the TLS client certificate's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePeer {
    /// TLS or plain TCP.
    pub transport: RemoteTransport,
    /// The peer's address.
    pub address: std::net::SocketAddr,
}

/// One listening socket and where it came from.
#[derive(Debug)]
pub struct Listener {
    /// What the socket is for.
    pub kind: SocketKind,
    /// Its path, when known.
    pub path: Option<PathBuf>,
    /// True when systemd passed it: the daemon neither chmods nor removes it.
    pub activated: bool,
    /// The listening socket, not yet registered with tokio.
    pub socket: std::os::unix::net::UnixListener,
}

/// Why the sockets could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Socket activation passed something unusable.
    #[error("socket activation: {0}")]
    Activation(String),
    /// A socket could not be bound or prepared.
    #[error("cannot listen on {path}")]
    Bind {
        /// The socket path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration names a group that does not exist.
    #[error("unix_sock_group {0:?} is not a group on this host")]
    NoSuchGroup(String),
}

/// The sockets systemd passed (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`), read and removed
/// from the environment.
#[derive(Debug, Default)]
pub struct Activated {
    /// Unix sockets, with their kind.
    pub local: Vec<(RawFd, SocketKind)>,
    /// TCP sockets for remote clients (virtproxyd's `virtproxyd-tls.socket` and
    /// `virtproxyd-tcp.socket`), with their transport.
    pub remote: Vec<(RawFd, RemoteTransport)>,
}

/// The remote transport a systemd `FileDescriptorName=` stands for: names ending in `-tls` or
/// `-tls.socket` are TLS listeners, `-tcp` or `-tcp.socket` plain TCP ones (libvirt's
/// `virtproxyd-tls.socket`, `virtproxyd-tcp.socket`); `None` for a local socket's name.
pub fn remote_fd_transport(name: &str) -> Option<RemoteTransport> {
    let stem = name.strip_suffix(".socket").unwrap_or(name);
    if stem.ends_with("-tls") {
        Some(RemoteTransport::Tls)
    } else if stem.ends_with("-tcp") {
        Some(RemoteTransport::Tcp)
    } else {
        None
    }
}

/// Reads and removes the sockets systemd passed.
///
/// # Safety
/// Changes the environment: call it before any thread starts (before the tokio runtime).
pub unsafe fn take_activated() -> Result<Activated, ListenError> {
    // SAFETY: the caller guarantees no other thread runs yet.
    let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
        .map_err(|e| ListenError::Activation(e.to_string()))?;
    let mut activated = Activated::default();
    for (fd, name) in fds {
        match remote_fd_transport(&name) {
            Some(transport) => activated.remote.push((fd, transport)),
            None => activated.local.push((fd, SocketKind::from_fd_name(&name))),
        }
    }
    Ok(activated)
}

/// Turns the activated fds into listeners, checking each is a listening Unix stream socket.
pub fn from_activated(
    fds: Vec<(RawFd, SocketKind)>,
    paths: &DaemonPaths,
) -> Result<Vec<Listener>, ListenError> {
    let mut out = Vec::new();
    for (fd, kind) in fds {
        // SAFETY: systemd passed this fd to this process for it to own; nothing else uses it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let socket = std::os::unix::net::UnixListener::from(owned);
        let local = socket
            .local_addr()
            .map_err(|e| ListenError::Activation(format!("fd {fd} is not a Unix socket: {e}")))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| ListenError::Activation(format!("fd {fd}: {e}")))?;
        let path = local.as_pathname().map(Path::to_path_buf).or_else(|| match kind {
            SocketKind::ReadWrite => Some(paths.rw_socket.clone()),
            SocketKind::ReadOnly => paths.ro_socket.clone(),
            SocketKind::Admin => Some(paths.admin_socket.clone()),
        });
        out.push(Listener {
            kind,
            path,
            activated: true,
            socket,
        });
    }
    Ok(out)
}

/// Binds the daemon's own sockets. The caller holds the daemon's lock, so any socket file
/// already there is stale and removed.
pub fn bind_all(paths: &DaemonPaths, config: &DaemonConfig) -> Result<Vec<Listener>, ListenError> {
    let group = resolve_group(&config.unix_sock_group)?;
    let mut wanted = vec![(
        SocketKind::ReadWrite,
        paths.rw_socket.clone(),
        &config.unix_sock_rw_perms,
    )];
    if let Some(ro) = &paths.ro_socket {
        wanted.push((SocketKind::ReadOnly, ro.clone(), &config.unix_sock_ro_perms));
    }
    wanted.push((
        SocketKind::Admin,
        paths.admin_socket.clone(),
        &config.unix_sock_admin_perms,
    ));
    let mut out = Vec::new();
    for (kind, path, perms) in wanted {
        let bind_err = |source| ListenError::Bind {
            path: path.display().to_string(),
            source,
        };
        let mode = parse_mode(perms).map_err(|e| bind_err(std::io::Error::other(e)))?;
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed stale socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let socket = std::os::unix::net::UnixListener::bind(&path).map_err(bind_err)?;
        socket.set_nonblocking(true).map_err(bind_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
        if let Some(gid) = group {
            nix::unistd::chown(&path, None, Some(gid)).map_err(|e| bind_err(e.into()))?;
        }
        out.push(Listener {
            kind,
            path: Some(path),
            activated: false,
            socket,
        });
    }
    Ok(out)
}

/// The gid of a group given by name or number; `None` for an empty name.
pub fn resolve_group(name: &str) -> Result<Option<nix::unistd::Gid>, ListenError> {
    if name.is_empty() {
        return Ok(None);
    }
    if let Ok(n) = name.parse::<u32>() {
        return Ok(Some(nix::unistd::Gid::from_raw(n)));
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(Some(group.gid)),
        _ => Err(ListenError::NoSuchGroup(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rvirt::paths::{BaseDirs, Mode};

    #[test]
    fn remote_fd_names_map_to_transports() {
        assert_eq!(
            remote_fd_transport("virtproxyd-tls.socket"),
            Some(RemoteTransport::Tls)
        );
        assert_eq!(remote_fd_transport("virtproxyd-tcp"), Some(RemoteTransport::Tcp));
        assert_eq!(remote_fd_transport("virtproxyd.socket"), None);
        assert_eq!(remote_fd_transport("virtproxyd-admin.socket"), None);
    }

    #[test]
    fn fd_names_map_to_kinds() {
        assert_eq!(
            SocketKind::from_fd_name("virtqemud.socket"),
            SocketKind::ReadWrite
        );
        assert_eq!(
            SocketKind::from_fd_name("virtqemud-ro.socket"),
            SocketKind::ReadOnly
        );
        assert_eq!(
            SocketKind::from_fd_name("virtqemud-admin.socket"),
            SocketKind::Admin
        );
        assert_eq!(SocketKind::from_fd_name("unknown"), SocketKind::ReadWrite);
        assert_eq!(SocketKind::from_fd_name("x-ro"), SocketKind::ReadOnly);
    }

    #[test]
    fn bind_sets_libvirt_permissions_and_replaces_stale_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = BaseDirs::from_env(Mode::System, Some(dir.path().to_path_buf()), &|_| None);
        let paths = DaemonPaths::new(&base, Mode::System, "virttestd", "virttestd", "test");
        std::fs::create_dir_all(&base.runtime).expect("mkdir");
        std::fs::write(&paths.rw_socket, b"stale").expect("stale file");
        let listeners = bind_all(&paths, &DaemonConfig::defaults(Mode::System)).expect("bind");
        assert_eq!(listeners.len(), 3);
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&paths.rw_socket), 0o666);
        assert_eq!(mode(paths.ro_socket.as_deref().expect("ro")), 0o666);
        assert_eq!(mode(&paths.admin_socket), 0o600);
    }
}
