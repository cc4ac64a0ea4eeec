//! Which URI rvirsh opens when `-c` is not given, in libvirt's order: `RVIRT_DEFAULT_URI`
//! (libvirt: `LIBVIRT_DEFAULT_URI`), then `uri_default` in the client configuration file
//! (`$XDG_CONFIG_HOME/rvirt/rvirsh.conf` for users, `/etc/rvirt/rvirsh.conf` for root;
//! libvirt: `libvirt.conf`), then probing which daemon sockets exist (libvirt asks the daemon it
//! reaches; rvirt looks for virtqemud's socket, then the proxy's, session before system for
//! ordinary users), and finally `test:///default`, which needs no daemon at all.

use std::path::{Path, PathBuf};

use rvirt::paths::{BaseDirs, Mode};

/// The environment variable that names the default URI.
pub const ENV: &str = "RVIRT_DEFAULT_URI";

/// What the resolution looks at; real implementations in [`default_uri`], fakes in tests.
pub struct Probe<'a> {
    /// An environment variable.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// A file's contents.
    pub read: &'a dyn Fn(&Path) -> Option<String>,
    /// Whether a socket exists.
    pub exists: &'a dyn Fn(&Path) -> bool,
    /// The configuration file for this user.
    pub config_file: PathBuf,
    /// The runtime directory of system mode (`/run/rvirt`).
    pub system_runtime: PathBuf,
    /// The runtime directory of session mode, for non-root users.
    pub session_runtime: Option<PathBuf>,
}

impl std::fmt::Debug for Probe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("config_file", &self.config_file)
            .finish_non_exhaustive()
    }
}

/// The value of `uri_default` in a libvirt.conf-style file (`uri_default = "qemu:///system"`).
pub fn config_uri(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let (key, value) = line.split_once('=')?;
        if key.trim() != "uri_default" {
            return None;
        }
        let value = value.trim().trim_matches('"').trim_matches('\'').trim();
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// Resolves the default URI from `probe`.
pub fn resolve(probe: &Probe<'_>) -> String {
    if let Some(uri) = (probe.env)(ENV).filter(|u| !u.trim().is_empty()) {
        return uri.trim().to_owned();
    }
    if let Some(uri) = (probe.read)(&probe.config_file).as_deref().and_then(config_uri) {
        return uri;
    }
    if let Some(session) = &probe.session_runtime
        && ["virtqemud-sock", "rvirt-sock"]
            .iter()
            .any(|s| (probe.exists)(&session.join(s)))
    {
        return "qemu:///session".into();
    }
    if ["virtqemud-sock", "rvirt-sock"]
        .iter()
        .any(|s| (probe.exists)(&probe.system_runtime.join(s)))
    {
        return "qemu:///system".into();
    }
    "test:///default".into()
}

/// The default URI for this process.
pub fn default_uri() -> String {
    let mode = Mode::for_current_user();
    let mine = BaseDirs::new(mode);
    let system = BaseDirs::new(Mode::System);
    let probe = Probe {
        env: &|name| std::env::var(name).ok(),
        read: &|path| std::fs::read_to_string(path).ok(),
        exists: &|path| path.exists(),
        config_file: mine.config.join("rvirsh.conf"),
        system_runtime: system.runtime,
        session_runtime: (mode == Mode::Session).then_some(mine.runtime),
    };
    resolve(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe<'a>(
        env: &'a dyn Fn(&str) -> Option<String>,
        read: &'a dyn Fn(&Path) -> Option<String>,
        exists: &'a dyn Fn(&Path) -> bool,
    ) -> Probe<'a> {
        Probe {
            env,
            read,
            exists,
            config_file: PathBuf::from("/home/u/.config/rvirt/rvirsh.conf"),
            system_runtime: PathBuf::from("/run/rvirt"),
            session_runtime: Some(PathBuf::from("/run/user/1000/rvirt")),
        }
    }

    #[test]
    fn the_environment_wins() {
        let env = |k: &str| (k == ENV).then(|| "qemu:///system".to_owned());
        let p = probe(&env, &|_| Some("uri_default = \"test:///x.xml\"".into()), &|_| {
            true
        });
        assert_eq!(resolve(&p), "qemu:///system");
    }

    #[test]
    fn then_the_config_file() {
        let read = |_: &Path| Some("# comment\nuri_default = \"network:///system\" # trailing\n".to_owned());
        let p = probe(&|_| None, &read, &|_| true);
        assert_eq!(resolve(&p), "network:///system");
    }

    #[test]
    fn then_session_sockets_before_system_ones() {
        let p = probe(&|_| None, &|_| None, &|path| path.starts_with("/run/user"));
        assert_eq!(resolve(&p), "qemu:///session");
        let p = probe(&|_| None, &|_| None, &|path| {
            path == Path::new("/run/rvirt/rvirt-sock")
        });
        assert_eq!(resolve(&p), "qemu:///system");
    }

    #[test]
    fn without_daemons_it_is_the_test_driver() {
        let p = probe(&|_| Some(String::new()), &|_| Some("other = 1".into()), &|_| {
            false
        });
        assert_eq!(resolve(&p), "test:///default");
    }
}
