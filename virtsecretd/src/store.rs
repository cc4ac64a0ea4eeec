//! The secrets on disk: one definition per secret in the config directory
//! (`<driver_config_dir>/<uuid>.xml`), one sealed value per secret in the data directory
//! (`<driver_data_dir>/<uuid>.value`), both 0600 and written atomically (temporary file, fsync,
//! rename, fsync of the directory). Ephemeral secrets never reach this module.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use rvirt_conf::secret::SecretDef;
use rvirt_daemon::atomic::{remove_durable, write_atomic};

/// File mode of every file this module writes.
pub const FILE_MODE: u32 = 0o600;
const DEF_SUFFIX: &str = ".xml";
const VALUE_SUFFIX: &str = ".value";

/// One definition found on disk, with its sealed value if it has one.
#[derive(Debug)]
pub struct StoredSecret {
    /// The definition.
    pub def: SecretDef,
    /// The sealed value file's contents.
    pub sealed: Option<Vec<u8>>,
}

/// What loading found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Definitions that parsed, sorted by UUID.
    pub secrets: Vec<StoredSecret>,
    /// Definition files that could not be used, with why (already logged).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Where the secrets live.
#[derive(Debug, Clone)]
pub struct Store {
    config_dir: PathBuf,
    data_dir: PathBuf,
}

fn is_temporary(name: &str) -> bool {
    // rvirt_daemon::atomic's temporary files: `.<name>.tmp-<pid>`.
    name.starts_with('.') && name.contains(".tmp-")
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

impl Store {
    /// The store in these directories.
    pub fn new(config_dir: PathBuf, data_dir: PathBuf) -> Store {
        Store { config_dir, data_dir }
    }

    /// The data directory (where the key file lives too).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The definition file of `uuid`.
    pub fn def_path(&self, uuid: &str) -> PathBuf {
        self.config_dir.join(format!("{uuid}{DEF_SUFFIX}"))
    }

    /// The value file of `uuid`.
    pub fn value_path(&self, uuid: &str) -> PathBuf {
        self.data_dir.join(format!("{uuid}{VALUE_SUFFIX}"))
    }

    /// Creates the directories (0700) and removes temporary files a crash left behind: this
    /// daemon holds its pid-file lock, so no other writer can own them.
    pub fn prepare(&self) -> Result<(), String> {
        for dir in [&self.config_dir, &self.data_dir] {
            create_private_dir(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let entries =
                std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            for entry in entries.flatten() {
                let name = entry.file_name();
                if name.to_str().is_some_and(is_temporary) {
                    let path = entry.path();
                    match std::fs::remove_file(&path) {
                        Ok(()) => {
                            tracing::info!(path = %path.display(), "removed a temporary file left by a crash")
                        }
                        Err(e) => {
                            tracing::warn!(path = %path.display(), "cannot remove a stale temporary file: {e}")
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads every definition and its sealed value. A definition that does not parse, is not
    /// named after its UUID, or claims to be ephemeral is logged and skipped (its value file is
    /// kept). A value file with no definition file at all is removed: an undefine or a define
    /// that a crash interrupted left it.
    pub fn load(&self) -> Result<Loaded, String> {
        let mut loaded = Loaded::default();
        let mut def_files: Vec<PathBuf> = std::fs::read_dir(&self.config_dir)
            .map_err(|e| format!("cannot list {}: {e}", self.config_dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(DEF_SUFFIX) && !n.starts_with('.'))
            })
            .collect();
        def_files.sort();
        for path in &def_files {
            match self.load_one(path) {
                Ok(secret) => loaded.secrets.push(secret),
                Err(why) => {
                    tracing::warn!(path = %path.display(), "skipping a secret definition: {why}");
                    loaded.skipped.push((path.clone(), why));
                }
            }
        }
        let entries = std::fs::read_dir(&self.data_dir)
            .map_err(|e| format!("cannot list {}: {e}", self.data_dir.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(uuid) = name.to_str().and_then(|n| n.strip_suffix(VALUE_SUFFIX)) else {
                continue;
            };
            if !self.def_path(uuid).exists() {
                let path = entry.path();
                match remove_durable(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed a value file whose secret is not defined")
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "cannot remove an orphaned value file: {e}")
                    }
                }
            }
        }
        Ok(loaded)
    }

    fn load_one(&self, path: &Path) -> Result<StoredSecret, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        let def = SecretDef::from_xml(&text).map_err(|e| format!("invalid XML: {e}"))?;
        let stem = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(DEF_SUFFIX))
            .unwrap_or_default();
        if stem != def.uuid {
            return Err(format!(
                "it defines secret {} but is not named {}{DEF_SUFFIX}",
                def.uuid, def.uuid
            ));
        }
        if def.ephemeral {
            return Err("it defines an ephemeral secret, which is never stored on disk".into());
        }
        let value_path = self.value_path(&def.uuid);
        let sealed = match std::fs::read(&value_path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                // The definition is fine; the value is reported unreadable when asked for.
                tracing::warn!(path = %value_path.display(), "cannot read a secret's value file: {e}");
                Some(Vec::new())
            }
        };
        Ok(StoredSecret { def, sealed })
    }

    /// Writes the definition of a persistent secret.
    pub fn save_def(&self, def: &SecretDef) -> std::io::Result<()> {
        let xml = def.to_xml().map_err(std::io::Error::other)?;
        write_atomic(&self.def_path(&def.uuid), xml.as_bytes(), FILE_MODE)
    }

    /// Writes the sealed value of a persistent secret.
    pub fn save_value(&self, uuid: &str, sealed: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.value_path(uuid), sealed, FILE_MODE)
    }

    /// Removes a definition file (missing is fine).
    pub fn remove_def(&self, uuid: &str) -> std::io::Result<()> {
        remove_durable(&self.def_path(uuid))
    }

    /// Removes a value file (missing is fine).
    pub fn remove_value(&self, uuid: &str) -> std::io::Result<()> {
        remove_durable(&self.value_path(uuid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    const UUID: &str = "f52a81b2-424e-490c-823d-6bd4235bc572";

    fn store(dir: &Path) -> Store {
        let store = Store::new(dir.join("etc"), dir.join("lib"));
        store.prepare().expect("prepare");
        store
    }

    fn def(uuid: &str) -> SecretDef {
        SecretDef::from_xml(&format!("<secret><uuid>{uuid}</uuid></secret>")).expect("def")
    }

    #[test]
    fn saved_definition_and_value_load_back_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        store.save_def(&def(UUID)).expect("save def");
        store.save_value(UUID, b"sealed").expect("save value");
        for path in [store.def_path(UUID), store.value_path(UUID)] {
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let loaded = store.load().expect("load");
        assert_eq!(loaded.secrets.len(), 1);
        assert_eq!(loaded.secrets[0].def, def(UUID));
        assert_eq!(loaded.secrets[0].sealed.as_deref(), Some(&b"sealed"[..]));
    }

    #[test]
    fn broken_and_misnamed_definitions_are_skipped_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        store.save_def(&def(UUID)).expect("save def");
        std::fs::write(
            dir.path().join("etc/27f25d34-aea6-4e2a-be85-fa2c18380be8.xml"),
            "<secret",
        )
        .expect("torn");
        std::fs::write(
            dir.path().join("etc/aa6c7af2-45a7-477c-85a2-fe86d9f2514e.xml"),
            def(UUID).to_xml().expect("xml"),
        )
        .expect("misnamed");
        let loaded = store.load().expect("load");
        assert_eq!(loaded.secrets.len(), 1);
        assert_eq!(loaded.skipped.len(), 2);
    }

    #[test]
    fn value_of_a_broken_definition_is_kept_and_an_orphan_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let broken = "27f25d34-aea6-4e2a-be85-fa2c18380be8";
        std::fs::write(store.def_path(broken), "<secret").expect("torn");
        store.save_value(broken, b"kept").expect("value");
        store.save_value(UUID, b"orphan").expect("value");
        store.load().expect("load");
        assert!(store.value_path(broken).exists());
        assert!(!store.value_path(UUID).exists());
    }

    #[test]
    fn prepare_removes_temporary_files_left_by_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let tmp = dir.path().join(format!("etc/.{UUID}.xml.tmp-4242"));
        std::fs::write(&tmp, "<secr").expect("tmp");
        let tmp_value = dir.path().join(format!("lib/.{UUID}.value.tmp-4242"));
        std::fs::write(&tmp_value, "x").expect("tmp");
        store.prepare().expect("prepare");
        assert!(!tmp.exists() && !tmp_value.exists());
    }

    #[test]
    fn directories_are_created_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        store(dir.path());
        for sub in ["etc", "lib"] {
            let mode = std::fs::metadata(dir.path().join(sub))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o700, "{sub}");
        }
    }
}
