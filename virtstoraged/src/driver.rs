//! The storage driver: pools and their volumes, their persistent definitions and run-time
//! state, and pool events. The gRPC services ([`crate::service`]) are thin adapters over it.
//!
//! State lives in one mutex that is only held for bookkeeping, never across a host command:
//! long operations (building a volume, cloning, streaming) mark what they use (a pool's job
//! count, a volume's `building`/`in_use`) and release the lock, so queries never wait behind
//! them. Persistent definitions are `<config>/<name>.xml` (autostart: a symlink in
//! `<config>/autostart/`), written atomically; an active pool has `<state>/<name>.xml` with its
//! live XML, from which a restarted daemon recovers it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rvirt_conf::storage::{Encryption, EncryptionSecret, PoolDef, PoolType, VolDef, VolParseOptions};
use rvirt_daemon::atomic::{off_worker, remove_durable_async, write_atomic_async};
use rvirt_daemon::events::EventLog;
use rvirt_proto::v1::{
    ErrorCode, StoragePoolEventLifecycleType as Lifecycle, StoragePoolState, StorageVolType,
};

use crate::backend::{self, Overwrite};
use crate::command::CommandRunner;
use crate::error::{Result, StorageError};
use crate::fsvol;
use crate::lvm;
use crate::names::check_vol_name;
use crate::qemu_img::{ImageOptions, LuksKey};
use crate::secrets::{FixedSecrets, KeyFile, SecretSource};
use crate::wipe;

/// Where the driver keeps its files.
#[derive(Debug, Clone)]
pub struct DriverPaths {
    /// Persistent definitions.
    pub config_dir: PathBuf,
    /// Status files of active pools.
    pub state_dir: PathBuf,
}

/// A pool, addressed by name or UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolKey {
    /// By name.
    Name(String),
    /// By UUID (any spelling libvirt accepts).
    Uuid(String),
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolKey::Name(n) => write!(f, "'{n}'"),
            PoolKey::Uuid(u) => write!(f, "with UUID {u}"),
        }
    }
}

/// A volume, addressed by pool and name, key, or path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolKey {
    /// By pool and name.
    Name(PoolKey, String),
    /// By key.
    Key(String),
    /// By path.
    Path(String),
}

/// A pool as lists and lookups show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSummary {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Running.
    pub active: bool,
    /// Has a persistent definition.
    pub persistent: bool,
    /// Starts with the daemon.
    pub autostart: bool,
    /// Type.
    pub pool_type: PoolType,
}

impl PoolSummary {
    /// The state libvirt reports.
    pub fn state(&self) -> StoragePoolState {
        if self.active {
            StoragePoolState::Running
        } else {
            StoragePoolState::Inactive
        }
    }
}

/// A volume as lists and lookups show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolSummary {
    /// Name.
    pub name: String,
    /// Key.
    pub key: String,
    /// Path.
    pub path: String,
    /// The pool's name and UUID.
    pub pool: (String, String),
    /// Kind.
    pub vol_type: StorageVolType,
}

/// Sizes of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolInfo {
    /// Kind.
    pub vol_type: StorageVolType,
    /// Capacity.
    pub capacity: u64,
    /// Allocation.
    pub allocation: u64,
    /// Physical size.
    pub physical: Option<u64>,
}

/// A pool event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolEvent {
    /// Pool name.
    pub name: String,
    /// Pool UUID.
    pub uuid: String,
    /// What happened.
    pub kind: PoolEventKind,
}

/// What happened to a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolEventKind {
    /// A lifecycle change.
    Lifecycle(Lifecycle),
    /// A refresh.
    Refresh,
}

#[derive(Debug)]
struct VolObj {
    def: VolDef,
    building: bool,
    in_use: u32,
}

#[derive(Debug)]
struct PoolObj {
    def: PoolDef,
    new_def: Option<PoolDef>,
    persistent: bool,
    autostart: bool,
    active: bool,
    /// Volume creations, clones and streams in progress.
    jobs: u32,
    /// A lifecycle operation in progress.
    changing: Option<&'static str>,
    vols: BTreeMap<String, VolObj>,
    sizes: (u64, u64, u64),
}

impl PoolObj {
    fn summary(&self) -> PoolSummary {
        PoolSummary {
            name: self.def.name().to_owned(),
            uuid: self.def.uuid().to_owned(),
            active: self.active,
            persistent: self.persistent,
            autostart: self.autostart,
            pool_type: self.def.pool_type,
        }
    }

    fn idle(&self, what: &str) -> Result<()> {
        if let Some(op) = self.changing {
            return Err(StorageError::op_invalid(format!(
                "Cannot {what} pool '{}': an operation is in progress ({op}): try again when it is done",
                self.def.name()
            )));
        }
        if self.jobs > 0 {
            return Err(StorageError::op_invalid(format!(
                "Cannot {what} pool '{}': it has {} volume operations running (creation, clone or stream): wait for them",
                self.def.name(),
                self.jobs
            )));
        }
        Ok(())
    }

    fn vol_summary(&self, vol: &VolDef) -> VolSummary {
        let path = vol
            .target
            .as_ref()
            .and_then(|t| t.path.clone())
            .unwrap_or_default();
        VolSummary {
            name: vol.name.clone(),
            key: vol.key.clone().unwrap_or_else(|| path.clone()),
            path,
            pool: (self.def.name().to_owned(), self.def.uuid().to_owned()),
            vol_type: match vol.vol_type.unwrap_or_default() {
                rvirt_conf::storage::VolType::File => StorageVolType::File,
                rvirt_conf::storage::VolType::Block => StorageVolType::Block,
                rvirt_conf::storage::VolType::Dir => StorageVolType::Dir,
                rvirt_conf::storage::VolType::Network => StorageVolType::Network,
                rvirt_conf::storage::VolType::Netdir => StorageVolType::Netdir,
                rvirt_conf::storage::VolType::Ploop => StorageVolType::Ploop,
            },
        }
    }
}

#[derive(Debug, Default)]
struct State {
    pools: BTreeMap<String, PoolObj>,
}

/// [`rvirt_proto::access::authorize`] as a driver error.
fn authorize(kinds: &[&str], names: &[&str]) -> Result<()> {
    rvirt_proto::access::authorize(kinds, names)
        .map_err(|denied| StorageError::new(ErrorCode::AccessDenied, denied.message()))
}

/// What access rules may match a volume by: `pool/volume`, its key and its path.
fn vol_names(pool: &str, name: &str, vol: &VolDef) -> [String; 3] {
    let path = vol
        .target
        .as_ref()
        .and_then(|t| t.path.clone())
        .unwrap_or_default();
    [
        format!("{pool}/{name}"),
        vol.key.clone().unwrap_or_default(),
        path,
    ]
}

impl State {
    fn find_name(&self, key: &PoolKey) -> Result<String> {
        let name = self.find_name_unchecked(key)?;
        // Access rules that name pools are decided here, whatever the caller named it by.
        self.authorize_pool(&name)?;
        Ok(name)
    }

    /// [`authorize`] on pool `name`, known by its name and UUID.
    fn authorize_pool(&self, name: &str) -> Result<()> {
        let uuid = self.pools.get(name).map_or("", |p| p.def.uuid());
        authorize(&["storage_pool"], &[name, uuid])
    }

    fn find_name_unchecked(&self, key: &PoolKey) -> Result<String> {
        match key {
            PoolKey::Name(name) => self
                .pools
                .contains_key(name)
                .then(|| name.clone())
                .ok_or_else(|| StorageError::no_pool(key)),
            PoolKey::Uuid(uuid) => {
                let uuid = rvirt_conf::xml::canonical_uuid(uuid)
                    .ok_or_else(|| StorageError::invalid_arg(format!("'{uuid}' is not a UUID")))?;
                self.pools
                    .values()
                    .find(|p| p.def.uuid() == uuid)
                    .map(|p| p.def.name().to_owned())
                    .ok_or_else(|| StorageError::no_pool(key))
            }
        }
    }

    fn pool(&self, key: &PoolKey) -> Result<&PoolObj> {
        let name = self.find_name(key)?;
        self.pools.get(&name).ok_or_else(|| StorageError::no_pool(key))
    }

    fn pool_mut(&mut self, key: &PoolKey) -> Result<&mut PoolObj> {
        let name = self.find_name(key)?;
        self.pools
            .get_mut(&name)
            .ok_or_else(|| StorageError::no_pool(key))
    }

    /// The pool name and volume name a volume key resolves to.
    fn find_vol(&self, key: &VolKey) -> Result<(String, String)> {
        let (pool, name) = self.find_vol_unchecked(key)?;
        // Access rules that name volumes are decided here, whatever the caller named it by.
        if let Some(vol) = self.pools.get(&pool).and_then(|p| p.vols.get(&name)) {
            let names = vol_names(&pool, &name, &vol.def);
            authorize(&["storage_vol"], &[&names[0], &names[1], &names[2]])?;
        }
        Ok((pool, name))
    }

    fn find_vol_unchecked(&self, key: &VolKey) -> Result<(String, String)> {
        match key {
            VolKey::Name(pool, name) => {
                let p = self.pool(pool)?;
                if !p.active {
                    return Err(StorageError::op_invalid(format!(
                        "Storage pool '{}' is not active: start it first",
                        p.def.name()
                    )));
                }
                p.vols
                    .get(name)
                    .filter(|v| !v.building)
                    .map(|_| (p.def.name().to_owned(), name.clone()))
                    .ok_or_else(|| StorageError::no_vol(format!("'{name}' in pool '{}'", p.def.name())))
            }
            VolKey::Key(k) | VolKey::Path(k) => {
                let wanted = rvirt_conf::storage::sanitize_path(k);
                let canonical = std::fs::canonicalize(&wanted).ok();
                for p in self.pools.values().filter(|p| p.active) {
                    for (name, v) in p.vols.iter().filter(|(_, v)| !v.building) {
                        let path = v
                            .def
                            .target
                            .as_ref()
                            .and_then(|t| t.path.as_deref())
                            .unwrap_or("");
                        let vkey = v.def.key.as_deref().unwrap_or(path);
                        let hit = match key {
                            VolKey::Key(_) => vkey == k.as_str() || vkey == wanted,
                            _ => path == wanted || canonical.as_deref().is_some_and(|c| Path::new(path) == c),
                        };
                        if hit {
                            return Ok((p.def.name().to_owned(), name.clone()));
                        }
                    }
                }
                Err(StorageError::no_vol(format!("'{k}'")))
            }
        }
    }
}

/// Decrements a pool's job count when dropped.
struct PoolJob<'a> {
    driver: &'a StorageDriver,
    pool: String,
}

impl Drop for PoolJob<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.driver.lock().pools.get_mut(&self.pool) {
            p.jobs = p.jobs.saturating_sub(1);
        }
    }
}

/// Clears a pool's lifecycle marker when dropped.
struct Changing<'a> {
    driver: &'a StorageDriver,
    pool: String,
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.driver.lock().pools.get_mut(&self.pool) {
            p.changing = None;
        }
    }
}

/// A volume marked `building` while it is created or modified. When dropped without being
/// committed (a failure, or a cancelled call), a new volume's placeholder is removed and an
/// existing volume is released unchanged.
struct VolReservation<'a> {
    driver: &'a StorageDriver,
    pool: String,
    name: String,
    committed: bool,
    /// A new volume (remove the placeholder) rather than an existing one (release it).
    new: bool,
}

impl Drop for VolReservation<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Some(p) = self.driver.lock().pools.get_mut(&self.pool) {
            if self.new {
                if p.vols.get(&self.name).is_some_and(|v| v.building) {
                    p.vols.remove(&self.name);
                }
            } else if let Some(v) = p.vols.get_mut(&self.name) {
                v.building = false;
            }
        }
    }
}

/// Removes a transient pool whose creation did not finish (failed or cancelled).
struct TransientCreate<'a> {
    driver: &'a StorageDriver,
    pool: String,
    done: bool,
}

impl Drop for TransientCreate<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut state = self.driver.lock();
            if state
                .pools
                .get(&self.pool)
                .is_some_and(|p| !p.persistent && !p.active)
            {
                state.pools.remove(&self.pool);
            }
        }
    }
}

/// A volume kept in use (a stream or the source of a clone); released when dropped.
#[derive(Debug)]
pub struct VolUse {
    driver: Arc<StorageDriver>,
    pool: String,
    name: String,
    /// The volume's path.
    pub path: PathBuf,
    /// The volume's format.
    pub format: String,
    /// The volume's capacity.
    pub capacity: u64,
    /// Its definition when it was taken into use.
    pub def: VolDef,
}

impl Drop for VolUse {
    fn drop(&mut self) {
        let mut state = self.driver.lock();
        if let Some(p) = state.pools.get_mut(&self.pool) {
            p.jobs = p.jobs.saturating_sub(1);
            if let Some(v) = p.vols.get_mut(&self.name) {
                v.in_use = v.in_use.saturating_sub(1);
            }
        }
    }
}

/// Bits of the create and build flags.
mod flags {
    pub const CREATE_WITH_BUILD: u32 = 1;
    pub const CREATE_WITH_BUILD_OVERWRITE: u32 = 2;
    pub const CREATE_WITH_BUILD_NO_OVERWRITE: u32 = 4;
    pub const BUILD_REPAIR: u32 = 1;
    pub const BUILD_RESIZE: u32 = 2;
    pub const BUILD_NO_OVERWRITE: u32 = 4;
    pub const BUILD_OVERWRITE: u32 = 8;
    pub const DEFINE_VALIDATE: u32 = 1;
    pub const VOL_PREALLOC_METADATA: u32 = 1;
    pub const VOL_REFLINK: u32 = 2;
    pub const VOL_VALIDATE: u32 = 4;
    pub const VOL_DELETE_ZEROED: u32 = 1;
    pub const VOL_DELETE_WITH_SNAPSHOTS: u32 = 2;
    pub const RESIZE_ALLOCATE: u32 = 1;
    pub const RESIZE_DELTA: u32 = 2;
    pub const RESIZE_SHRINK: u32 = 4;
}

fn check_flags(flags: u32, allowed: u32, what: &str) -> Result<()> {
    if flags & !allowed != 0 {
        return Err(StorageError::invalid_arg(format!(
            "Unsupported flags {:#x} for {what}",
            flags & !allowed
        )));
    }
    Ok(())
}

/// The pool-list filter bit of a pool type.
fn type_flag(kind: PoolType) -> u32 {
    match kind {
        PoolType::Dir => 64,
        PoolType::Fs => 128,
        PoolType::Netfs => 256,
        PoolType::Logical => 512,
        PoolType::Disk => 1024,
        PoolType::Iscsi => 2048,
        PoolType::Scsi => 4096,
        PoolType::Mpath => 8192,
        PoolType::Rbd => 16384,
        PoolType::Sheepdog => 32768,
        PoolType::Gluster => 65536,
        PoolType::Zfs => 131072,
        PoolType::Vstorage => 262144,
        PoolType::IscsiDirect => 524288,
    }
}

/// Whether `pool` passes the list filter `flags` (groups of alternatives; an empty group
/// matches everything).
pub fn list_filter(pool: &PoolSummary, flags: u32) -> bool {
    let group = |a: u32, b: u32, first: bool| {
        let bits = flags & (a | b);
        bits == 0 || (first && bits & a != 0) || (!first && bits & b != 0)
    };
    let types = flags & !63;
    group(2, 1, pool.active)
        && group(4, 8, pool.persistent)
        && group(16, 32, pool.autostart)
        && (types == 0 || types & type_flag(pool.pool_type) != 0)
}

/// The storage driver.
#[derive(Debug)]
pub struct StorageDriver {
    paths: DriverPaths,
    state: Mutex<State>,
    /// Held by define, undefine and autostart changes while they write or remove their files
    /// (outside `state`, on a blocking thread), and by a transient create while it checks for
    /// duplicates and inserts its pool, so that no other definition change comes in between.
    definitions: tokio::sync::Mutex<()>,
    /// Pool events.
    pub events: EventLog<PoolEvent>,
    runner: Arc<dyn CommandRunner>,
    secrets: Arc<dyn SecretSource>,
}

/// What rvirt can create encrypted: LUKS (`<encryption format='luks'>` with one passphrase
/// secret) in raw and qcow2 file volumes, by QEMU.
fn check_encryption(kind: PoolType, vol: &VolDef, enc: &Encryption) -> Result<()> {
    let refuse = |what: String| Err(StorageError::new(ErrorCode::ConfigUnsupported, what));
    if kind == PoolType::Logical {
        return refuse(format!(
            "Volume '{}': encrypted logical volumes are not supported: use a dir or fs pool",
            vol.name
        ));
    }
    if enc.format != "luks" {
        return refuse(format!(
            "Volume '{}': encryption format '{}' is not supported for new volumes: use <encryption format='luks'>",
            vol.name, enc.format
        ));
    }
    if enc.engine.as_deref().is_some_and(|e| e != "qemu") {
        return refuse(format!(
            "Volume '{}': encryption engine '{}' is not supported: remove the engine attribute",
            vol.name,
            enc.engine.as_deref().unwrap_or_default()
        ));
    }
    if !matches!(vol.format(), Some("raw" | "qcow2")) {
        return refuse(format!(
            "Volume '{}': LUKS encryption needs the raw or qcow2 format, not '{}'",
            vol.name,
            vol.format().unwrap_or_default()
        ));
    }
    if enc.secret.len() != 1 {
        return refuse(format!(
            "Volume '{}': an encrypted volume needs exactly one <secret type='passphrase' uuid='…'/> in <encryption>",
            vol.name
        ));
    }
    Ok(())
}

/// The format to give `qemu-img info` for a volume rvirt knows: `luks` for an encrypted raw
/// volume (so its size is the payload's), the volume's format otherwise.
fn probe_format(def: &VolDef) -> Option<&str> {
    let luks = def
        .target
        .as_ref()
        .and_then(|t| t.encryption.as_ref())
        .is_some_and(|e| e.format == "luks");
    match def.format() {
        Some("raw") if luks => Some("luks"),
        other => other,
    }
}

/// Carries the secrets (and cipher) of a volume's `<encryption>` over to a new reading of it
/// from disk, which only knows that it is encrypted.
fn keep_encryption(fresh: &mut VolDef, old: &VolDef) {
    let old = old.target.as_ref().and_then(|t| t.encryption.as_ref());
    if let (Some(new), Some(old)) = (fresh.target.as_mut().and_then(|t| t.encryption.as_mut()), old)
        && new.format == old.format
    {
        new.secret.clone_from(&old.secret);
        new.cipher.clone_from(&old.cipher);
        new.ivgen.clone_from(&old.ivgen);
    }
}

/// `<secret type='passphrase' uuid='…'/>`.
fn default_secret(uuid: String) -> EncryptionSecret {
    EncryptionSecret {
        r#type: "passphrase".into(),
        uuid: Some(uuid),
        usage: None,
    }
}

/// Whether `vol` is encrypted with no passphrase secret named.
fn lacks_secret(vol: &VolDef) -> bool {
    vol.target
        .as_ref()
        .and_then(|t| t.encryption.as_ref())
        .is_some_and(|e| e.secret.is_empty())
}

fn config_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.xml"))
}

impl StorageDriver {
    /// A driver with no pools and no secrets (encrypted volumes fail with `NO_SECRET`);
    /// [`StorageDriver::load`] reads what is on disk.
    pub fn new(paths: DriverPaths, runner: Arc<dyn CommandRunner>) -> Arc<Self> {
        Self::with_secrets(paths, runner, Arc::new(FixedSecrets::default()))
    }

    /// A driver with no pools that reads the passphrases of encrypted volumes from `secrets`.
    pub fn with_secrets(
        paths: DriverPaths,
        runner: Arc<dyn CommandRunner>,
        secrets: Arc<dyn SecretSource>,
    ) -> Arc<Self> {
        Arc::new(StorageDriver {
            paths,
            state: Mutex::new(State::default()),
            definitions: tokio::sync::Mutex::new(()),
            events: EventLog::new(1024),
            runner,
            secrets,
        })
    }

    /// Where passphrase files for `qemu-img` live while it runs.
    fn key_dir(&self) -> PathBuf {
        self.paths.state_dir.join("keys")
    }

    /// Writes the passphrase of `vol`'s encryption to a private key file and returns it with
    /// the `qemu-img` key it becomes; `None` for a volume without encryption.
    async fn luks_key(&self, vol: &VolDef) -> Result<Option<(KeyFile, LuksKey)>> {
        let Some(enc) = vol.target.as_ref().and_then(|t| t.encryption.as_ref()) else {
            return Ok(None);
        };
        let options = crate::qemu_img::luks_options(enc).map_err(|e| {
            StorageError::new(
                ErrorCode::ConfigUnsupported,
                format!("Cannot encrypt volume '{}': {e}", vol.name),
            )
        })?;
        let found;
        let secret = if let Some(secret) = enc.secret.first() {
            secret
        } else {
            // A volume found on disk: its secret is the one whose usage is its path.
            let path = vol
                .target
                .as_ref()
                .and_then(|t| t.path.as_deref())
                .unwrap_or_default();
            let uuid = self.secrets.volume_secret(path).await.ok_or_else(|| {
                StorageError::new(
                    ErrorCode::NoSecret,
                    format!(
                        "Volume '{}' is encrypted but its passphrase secret is not known: define a secret with \
                         <usage type='volume'><volume>{path}</volume></usage> holding its passphrase",
                        vol.name
                    ),
                )
            })?;
            found = default_secret(uuid);
            &found
        };
        let value = self.secrets.passphrase(secret).await?;
        let file = KeyFile::write(&self.key_dir(), &value)?;
        let key = LuksKey {
            alias: "sec0".into(),
            file: file.path().to_owned(),
            options,
        };
        Ok(Some((file, key)))
    }

    /// Names the passphrase secret of every encrypted volume in `vols` that has none and that
    /// `known` (the volumes as they were before a refresh) cannot supply: the secret whose usage
    /// is the volume's path, as libvirt does after a refresh or a restart.
    async fn load_default_secrets(&self, vols: &mut [VolDef], known: &BTreeSet<String>) {
        for vol in vols
            .iter_mut()
            .filter(|v| lacks_secret(v) && !known.contains(&v.name))
        {
            let Some(path) = vol.target.as_ref().and_then(|t| t.path.clone()) else {
                continue;
            };
            if let Some(uuid) = self.secrets.volume_secret(&path).await
                && let Some(enc) = vol.target.as_mut().and_then(|t| t.encryption.as_mut())
            {
                enc.secret.push(default_secret(uuid));
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(&self, def: &PoolDef, kind: PoolEventKind) {
        self.events.emit(PoolEvent {
            name: def.name().to_owned(),
            uuid: def.uuid().to_owned(),
            kind,
        });
    }

    fn autostart_link(&self, name: &str) -> PathBuf {
        self.paths
            .config_dir
            .join("autostart")
            .join(format!("{name}.xml"))
    }

    // The files below are written and removed on blocking threads (`*_async`): each waits for
    // a disk flush, which must not hold up the runtime's worker and every other call with it.

    async fn save_config(&self, def: &PoolDef) -> Result<()> {
        let mut def = def.clone();
        def.set_sizes(0, 0, 0);
        let xml = def.to_xml().map_err(|e| StorageError::internal(e.to_string()))?;
        let path = config_file(&self.paths.config_dir, def.name());
        write_atomic_async(&path, xml.as_bytes(), 0o600)
            .await
            .map_err(|e| StorageError::io(format!("Cannot save the definition of pool '{}'", def.name()), &e))
    }

    async fn save_state(&self, def: &PoolDef) -> Result<()> {
        let xml = def.to_xml().map_err(|e| StorageError::internal(e.to_string()))?;
        let path = config_file(&self.paths.state_dir, def.name());
        write_atomic_async(&path, xml.as_bytes(), 0o600)
            .await
            .map_err(|e| StorageError::io(format!("Cannot save the state of pool '{}'", def.name()), &e))
    }

    async fn remove_state(&self, name: &str) {
        if let Err(e) = remove_durable_async(&config_file(&self.paths.state_dir, name)).await {
            tracing::warn!(pool = name, error = %e, "cannot remove the pool's status file");
        }
    }

    async fn set_autostart_link(&self, name: &str, on: bool) -> Result<()> {
        let link = self.autostart_link(name);
        if !on {
            return remove_durable_async(&link)
                .await
                .map_err(|e| StorageError::io(format!("Cannot unmark pool '{name}' for autostart"), &e));
        }
        let dir = self.paths.config_dir.join("autostart");
        let target = Path::new("..").join(format!("{name}.xml"));
        let tmp = dir.join(format!(".{name}.xml.tmp-{}", std::process::id()));
        off_worker(move || {
            std::fs::create_dir_all(&dir).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
            })?;
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(target, &tmp)?;
            std::fs::rename(&tmp, &link)?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| StorageError::io(format!("Cannot mark pool '{name}' for autostart"), &e))
    }

    // ------------------------------------------------------------------------------------
    // Start-up
    // ------------------------------------------------------------------------------------

    fn read_defs(dir: &Path) -> Vec<PoolDef> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let is_xml = path.extension().is_some_and(|e| e == "xml")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !is_xml || !path.is_file() {
                continue;
            }
            match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| PoolDef::from_xml(&text).map_err(|e| e.to_string()))
            {
                Ok(def) => out.push(def),
                // Kept on disk untouched: a definition is never lost because it cannot be read.
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "cannot load a pool definition; skipping it")
                }
            }
        }
        out
    }

    /// Loads persistent definitions and status files, recovers active pools (refreshing them)
    /// and starts autostart pools.
    pub async fn load(self: &Arc<Self>) {
        // Key files left by a daemon that stopped while qemu-img ran.
        if let Ok(entries) = std::fs::read_dir(self.key_dir()) {
            for entry in entries.flatten() {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale key file");
                }
            }
        }
        for def in Self::read_defs(&self.paths.config_dir) {
            let autostart = self.autostart_link(def.name()).exists();
            self.lock().pools.insert(
                def.name().to_owned(),
                PoolObj {
                    def,
                    new_def: None,
                    persistent: true,
                    autostart,
                    active: false,
                    jobs: 0,
                    changing: None,
                    vols: BTreeMap::new(),
                    sizes: (0, 0, 0),
                },
            );
        }
        for live in Self::read_defs(&self.paths.state_dir) {
            let name = live.name().to_owned();
            if !backend::is_active(self.runner.as_ref(), &live).await {
                tracing::info!(pool = %name, "pool recorded active is no longer active");
                self.remove_state(&name).await;
                continue;
            }
            {
                let mut state = self.lock();
                match state.pools.get_mut(&name) {
                    Some(p) => {
                        if p.def != live {
                            p.new_def = Some(std::mem::replace(&mut p.def, live));
                        }
                        p.active = true;
                    }
                    None => {
                        state.pools.insert(
                            name.clone(),
                            PoolObj {
                                def: live,
                                new_def: None,
                                persistent: false,
                                autostart: false,
                                active: true,
                                jobs: 0,
                                changing: None,
                                vols: BTreeMap::new(),
                                sizes: (0, 0, 0),
                            },
                        );
                    }
                }
            }
            if let Err(e) = self.refresh_pool(&name).await {
                tracing::error!(pool = %name, error = %e, "cannot refresh a recovered pool");
            }
        }
        let autostart: Vec<String> = self
            .lock()
            .pools
            .values()
            .filter(|p| p.autostart && !p.active)
            .map(|p| p.def.name().to_owned())
            .collect();
        for name in autostart {
            if let Err(e) = self.start(&PoolKey::Name(name.clone()), 0).await {
                tracing::error!(pool = %name, error = %e, "cannot autostart pool");
            }
        }
    }

    /// Whether any pool is active (the daemon then should not exit when idle: fs pools stay
    /// mounted, but nothing needs the daemon; reported for information).
    pub fn active_pools(&self) -> usize {
        self.lock().pools.values().filter(|p| p.active).count()
    }

    // ------------------------------------------------------------------------------------
    // Pools
    // ------------------------------------------------------------------------------------

    fn parse_pool(xml: &str) -> Result<PoolDef> {
        let def = PoolDef::from_xml(xml).map_err(|e| StorageError::xml("storage pool", e))?;
        authorize(&["storage_pool"], &[def.name(), def.uuid()])?;
        backend::check_supported(def.pool_type)?;
        Ok(def)
    }

    fn check_duplicates(state: &State, def: &PoolDef, same_allowed: bool) -> Result<()> {
        for p in state.pools.values() {
            let same_name = p.def.name() == def.name();
            let same_uuid = p.def.uuid() == def.uuid();
            if same_name && !same_uuid {
                return Err(StorageError::failed(format!(
                    "Pool '{}' is already defined with UUID {}: use that UUID or another name",
                    def.name(),
                    p.def.uuid()
                )));
            }
            if same_uuid && !same_name {
                return Err(StorageError::failed(format!(
                    "A pool with UUID {} already exists as '{}': use another UUID",
                    def.uuid(),
                    p.def.name()
                )));
            }
            if same_name && !same_allowed {
                return Err(StorageError::failed(format!(
                    "Pool '{}' already exists",
                    def.name()
                )));
            }
            if !same_name && p.def.pool_type == def.pool_type {
                let conflict = match def.pool_type {
                    PoolType::Logical => p.def.source_name() == def.source_name(),
                    PoolType::Fs => {
                        p.def.target_path() == def.target_path()
                            || def
                                .source_devices()
                                .iter()
                                .any(|d| p.def.source_devices().contains(d))
                    }
                    _ => p.def.target_path() == def.target_path(),
                };
                if conflict {
                    return Err(StorageError::failed(format!(
                        "Storage source conflict with pool '{}': both use the same storage",
                        p.def.name()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Defines (or redefines) a persistent pool.
    pub async fn define(&self, xml: &str, flags: u32) -> Result<PoolSummary> {
        check_flags(flags, flags::DEFINE_VALIDATE, "defining a pool")?;
        let def = Self::parse_pool(xml)?;
        // No other definition change, nor a transient pool, can come in between the check and
        // the insert below: they hold `definitions` too.
        let _definitions = self.definitions.lock().await;
        Self::check_duplicates(&self.lock(), &def, true)?;
        self.save_config(&def).await?;
        let name = def.name().to_owned();
        let mut state = self.lock();
        let summary = match state.pools.get_mut(&name) {
            Some(p) => {
                if p.active {
                    p.new_def = Some(def.clone());
                } else {
                    p.def = def.clone();
                }
                p.persistent = true;
                p.summary()
            }
            None => {
                let obj = PoolObj {
                    def: def.clone(),
                    new_def: None,
                    persistent: true,
                    autostart: false,
                    active: false,
                    jobs: 0,
                    changing: None,
                    vols: BTreeMap::new(),
                    sizes: (0, 0, 0),
                };
                let s = obj.summary();
                state.pools.insert(name, obj);
                s
            }
        };
        drop(state);
        self.emit(&def, PoolEventKind::Lifecycle(Lifecycle::Defined));
        Ok(summary)
    }

    /// Removes a pool's persistent definition.
    pub async fn undefine(&self, key: &PoolKey) -> Result<()> {
        let _definitions = self.definitions.lock().await;
        let def = {
            let mut state = self.lock();
            let p = state.pool_mut(key)?;
            if !p.persistent {
                return Err(StorageError::op_invalid(format!(
                    "Pool '{}' is transient: it has no definition to remove (destroy it instead)",
                    p.def.name()
                )));
            }
            if p.active {
                return Err(StorageError::op_invalid(format!(
                    "Storage pool '{}' is still active: destroy it first",
                    p.def.name()
                )));
            }
            p.idle("undefine")?;
            // Marked busy while its files go: a start now would find it gone after.
            p.changing = Some("undefine");
            p.def.clone()
        };
        let name = def.name().to_owned();
        let changing = Changing {
            driver: self,
            pool: name.clone(),
        };
        remove_durable_async(&config_file(&self.paths.config_dir, &name))
            .await
            .map_err(|e| StorageError::io(format!("Cannot remove the definition of pool '{name}'"), &e))?;
        if let Err(e) = self.set_autostart_link(&name, false).await {
            tracing::warn!(pool = %name, error = %e, "cannot remove the autostart link");
        }
        self.lock().pools.remove(&name);
        drop(changing);
        self.emit(&def, PoolEventKind::Lifecycle(Lifecycle::Undefined));
        Ok(())
    }

    fn create_overwrite(flags: u32) -> Result<Option<Overwrite>> {
        let build = flags
            & (flags::CREATE_WITH_BUILD
                | flags::CREATE_WITH_BUILD_OVERWRITE
                | flags::CREATE_WITH_BUILD_NO_OVERWRITE);
        if flags & flags::CREATE_WITH_BUILD_OVERWRITE != 0
            && flags & flags::CREATE_WITH_BUILD_NO_OVERWRITE != 0
        {
            return Err(StorageError::invalid_arg(
                "WITH_BUILD_OVERWRITE and WITH_BUILD_NO_OVERWRITE are mutually exclusive",
            ));
        }
        Ok(if build == 0 {
            None
        } else if flags & flags::CREATE_WITH_BUILD_OVERWRITE != 0 {
            Some(Overwrite::Yes)
        } else if flags & flags::CREATE_WITH_BUILD_NO_OVERWRITE != 0 {
            Some(Overwrite::No)
        } else {
            Some(Overwrite::Default)
        })
    }

    /// Creates and starts a transient pool.
    pub async fn create(&self, xml: &str, flags: u32) -> Result<PoolSummary> {
        check_flags(flags, 7, "creating a pool")?;
        let overwrite = Self::create_overwrite(flags)?;
        let def = Self::parse_pool(xml)?;
        let name = def.name().to_owned();
        {
            let _definitions = self.definitions.lock().await;
            let mut state = self.lock();
            Self::check_duplicates(&state, &def, false)?;
            state.pools.insert(
                name.clone(),
                PoolObj {
                    def: def.clone(),
                    new_def: None,
                    persistent: false,
                    autostart: false,
                    active: false,
                    jobs: 0,
                    changing: Some("create"),
                    vols: BTreeMap::new(),
                    sizes: (0, 0, 0),
                },
            );
        }
        let mut guard = TransientCreate {
            driver: self,
            pool: name.clone(),
            done: false,
        };
        if let Some(overwrite) = overwrite {
            backend::build(self.runner.as_ref(), &def, overwrite).await?;
        }
        backend::start(self.runner.as_ref(), &def).await?;
        let result = self.finish_start(&name, &def).await;
        guard.done = true;
        result
    }

    async fn finish_start(&self, name: &str, def: &PoolDef) -> Result<PoolSummary> {
        {
            let mut state = self.lock();
            if let Some(p) = state.pools.get_mut(name) {
                p.active = true;
                p.changing = None;
            }
        }
        if let Err(e) = self.refresh_pool(name).await {
            // libvirt stops a pool it cannot refresh.
            let _ = backend::stop(self.runner.as_ref(), def).await;
            let mut state = self.lock();
            let transient = state.pools.get(name).is_some_and(|p| !p.persistent);
            if transient {
                state.pools.remove(name);
            } else if let Some(p) = state.pools.get_mut(name) {
                p.active = false;
                p.vols.clear();
            }
            return Err(e);
        }
        let live = {
            let state = self.lock();
            state.pools.get(name).map(|p| {
                let mut d = p.def.clone();
                d.set_sizes(p.sizes.0, p.sizes.1, p.sizes.2);
                (d, p.summary())
            })
        };
        let (live, summary) = live.ok_or_else(|| StorageError::no_pool(format!("'{name}'")))?;
        self.save_state(&live).await?;
        self.emit(def, PoolEventKind::Lifecycle(Lifecycle::Started));
        Ok(summary)
    }

    fn begin<'a>(
        &'a self,
        key: &PoolKey,
        what: &'static str,
        want_active: Option<bool>,
    ) -> Result<(Changing<'a>, PoolDef)> {
        let mut state = self.lock();
        let p = state.pool_mut(key)?;
        p.idle(what)?;
        match want_active {
            Some(true) if !p.active => {
                return Err(StorageError::op_invalid(format!(
                    "Storage pool '{}' is not active: start it first",
                    p.def.name()
                )));
            }
            Some(false) if p.active => {
                return Err(StorageError::op_invalid(format!(
                    "Storage pool '{}' is already active: destroy it first",
                    p.def.name()
                )));
            }
            _ => {}
        }
        p.changing = Some(what);
        let def = p.def.clone();
        Ok((
            Changing {
                driver: self,
                pool: def.name().to_owned(),
            },
            def,
        ))
    }

    /// Builds a pool's storage.
    pub async fn build(&self, key: &PoolKey, flags: u32) -> Result<()> {
        check_flags(
            flags,
            flags::BUILD_REPAIR | flags::BUILD_RESIZE | flags::BUILD_NO_OVERWRITE | flags::BUILD_OVERWRITE,
            "building a pool",
        )?;
        if flags & (flags::BUILD_REPAIR | flags::BUILD_RESIZE) != 0 {
            return Err(StorageError::new(
                ErrorCode::ArgumentUnsupported,
                "REPAIR and RESIZE builds are not supported: build with NEW, NO_OVERWRITE or OVERWRITE",
            ));
        }
        if flags & flags::BUILD_NO_OVERWRITE != 0 && flags & flags::BUILD_OVERWRITE != 0 {
            return Err(StorageError::invalid_arg(
                "OVERWRITE and NO_OVERWRITE are mutually exclusive",
            ));
        }
        let overwrite = if flags & flags::BUILD_OVERWRITE != 0 {
            Overwrite::Yes
        } else if flags & flags::BUILD_NO_OVERWRITE != 0 {
            Overwrite::No
        } else {
            Overwrite::Default
        };
        let (_changing, def) = self.begin(key, "build", Some(false))?;
        backend::build(self.runner.as_ref(), &def, overwrite).await?;
        self.emit(&def, PoolEventKind::Lifecycle(Lifecycle::Created));
        Ok(())
    }

    /// Starts a defined pool.
    pub async fn start(&self, key: &PoolKey, flags: u32) -> Result<PoolSummary> {
        check_flags(flags, 7, "starting a pool")?;
        let overwrite = Self::create_overwrite(flags)?;
        let def = {
            let mut state = self.lock();
            let p = state.pool_mut(key)?;
            p.idle("start")?;
            if p.active {
                return Err(StorageError::op_invalid(format!(
                    "Storage pool '{}' is already active",
                    p.def.name()
                )));
            }
            if let Some(new_def) = p.new_def.take() {
                p.def = new_def;
            }
            p.changing = Some("start");
            p.def.clone()
        };
        let name = def.name().to_owned();
        let changing = Changing {
            driver: self,
            pool: name.clone(),
        };
        if let Some(overwrite) = overwrite {
            backend::build(self.runner.as_ref(), &def, overwrite).await?;
        }
        backend::start(self.runner.as_ref(), &def).await?;
        drop(changing);
        self.finish_start(&name, &def).await
    }

    /// Stops a pool.
    pub async fn destroy(&self, key: &PoolKey) -> Result<()> {
        let (changing, def) = self.begin(key, "destroy", Some(true))?;
        backend::stop(self.runner.as_ref(), &def).await?;
        let name = def.name().to_owned();
        self.remove_state(&name).await;
        {
            let mut state = self.lock();
            let transient = state.pools.get(&name).is_some_and(|p| !p.persistent);
            if transient {
                state.pools.remove(&name);
            } else if let Some(p) = state.pools.get_mut(&name) {
                p.active = false;
                p.vols.clear();
                p.sizes = (0, 0, 0);
                if let Some(new_def) = p.new_def.take() {
                    p.def = new_def;
                }
            }
        }
        drop(changing);
        self.emit(&def, PoolEventKind::Lifecycle(Lifecycle::Stopped));
        Ok(())
    }

    /// Deletes a pool's storage.
    pub async fn delete(&self, key: &PoolKey, flags: u32) -> Result<()> {
        check_flags(flags, 1, "deleting a pool")?;
        if flags != 0 {
            return Err(StorageError::new(
                ErrorCode::ArgumentUnsupported,
                "Zeroing a pool's storage on delete is not supported: delete without ZEROED",
            ));
        }
        let (_changing, def) = self.begin(key, "delete", Some(false))?;
        backend::delete(self.runner.as_ref(), &def).await?;
        self.emit(&def, PoolEventKind::Lifecycle(Lifecycle::Deleted));
        Ok(())
    }

    /// Rescans a pool.
    pub async fn refresh(&self, key: &PoolKey) -> Result<()> {
        let name = {
            let state = self.lock();
            let p = state.pool(key)?;
            if !p.active {
                return Err(StorageError::op_invalid(format!(
                    "Storage pool '{}' is not active: start it first",
                    p.def.name()
                )));
            }
            p.idle("refresh")?;
            p.def.name().to_owned()
        };
        self.refresh_pool(&name).await?;
        let def = self.lock().pools.get(&name).map(|p| p.def.clone());
        if let Some(def) = def {
            self.emit(&def, PoolEventKind::Refresh);
        }
        Ok(())
    }

    /// Scans an active pool's volumes and sizes, keeping volumes being built.
    async fn refresh_pool(&self, name: &str) -> Result<()> {
        let (def, known, with_secret) = {
            let state = self.lock();
            let p = state
                .pools
                .get(name)
                .ok_or_else(|| StorageError::no_pool(format!("'{name}'")))?;
            let with_secret: BTreeSet<String> = p
                .vols
                .iter()
                .filter(|(_, v)| !lacks_secret(&v.def))
                .map(|(n, _)| n.clone())
                .collect();
            let known: BTreeMap<String, Option<String>> = p
                .vols
                .iter()
                .map(|(n, v)| {
                    (
                        n.clone(),
                        if v.building {
                            None
                        } else {
                            probe_format(&v.def).map(str::to_owned)
                        },
                    )
                })
                .collect();
            (p.def.clone(), known, with_secret)
        };
        let (sizes, mut vols) = match def.pool_type {
            PoolType::Logical => lvm::refresh(self.runner.as_ref(), &def).await?,
            _ => self.scan_dir(&def, &known).await?,
        };
        self.load_default_secrets(&mut vols, &with_secret).await;
        let mut state = self.lock();
        if let Some(p) = state.pools.get_mut(name) {
            p.sizes = sizes;
            let mut fresh: BTreeMap<String, VolObj> = vols
                .into_iter()
                .map(|mut v| {
                    let in_use = p.vols.get(&v.name).map_or(0, |o| o.in_use);
                    if let Some(old) = p.vols.get(&v.name) {
                        keep_encryption(&mut v, &old.def);
                    }
                    (
                        v.name.clone(),
                        VolObj {
                            def: v,
                            building: false,
                            in_use,
                        },
                    )
                })
                .collect();
            for (n, v) in std::mem::take(&mut p.vols) {
                if v.building || (v.in_use > 0 && !fresh.contains_key(&n)) {
                    fresh.insert(n, v);
                }
            }
            p.vols = fresh;
        }
        Ok(())
    }

    async fn scan_dir(
        &self,
        def: &PoolDef,
        known: &BTreeMap<String, Option<String>>,
    ) -> Result<((u64, u64, u64), Vec<VolDef>)> {
        let dir = PathBuf::from(def.target_path().unwrap_or_default());
        let entries = std::fs::read_dir(&dir).map_err(|e| {
            StorageError::io(
                format!(
                    "Cannot read the directory {} of pool '{}'",
                    dir.display(),
                    def.name()
                ),
                &e,
            )
        })?;
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| check_vol_name(n).is_ok())
            .collect();
        names.sort();
        let mut vols = Vec::new();
        for name in names {
            match known.get(&name) {
                Some(None) => continue, // being built
                Some(Some(format)) => {
                    if let Some(v) =
                        fsvol::probe(self.runner.as_ref(), &dir.join(&name), &name, Some(format)).await?
                    {
                        vols.push(v);
                    }
                }
                None => {
                    if let Some(v) = fsvol::probe(self.runner.as_ref(), &dir.join(&name), &name, None).await?
                    {
                        vols.push(v);
                    }
                }
            }
        }
        let sizes = backend::fs_sizes(&dir)?;
        Ok((sizes, vols))
    }

    /// A pool's state and sizes.
    pub fn info(&self, key: &PoolKey) -> Result<(StoragePoolState, u64, u64, u64)> {
        let state = self.lock();
        let p = state.pool(key)?;
        let s = p.summary();
        Ok(if p.active {
            (s.state(), p.sizes.0, p.sizes.1, p.sizes.2)
        } else {
            (s.state(), 0, 0, 0)
        })
    }

    /// A pool's XML: live, or with `inactive` the persistent definition.
    pub fn xml(&self, key: &PoolKey, inactive: bool) -> Result<String> {
        let state = self.lock();
        let p = state.pool(key)?;
        let mut def = match (&p.new_def, inactive) {
            (Some(new_def), true) => new_def.clone(),
            _ => p.def.clone(),
        };
        if p.active && !(inactive && p.new_def.is_some()) {
            def.set_sizes(p.sizes.0, p.sizes.1, p.sizes.2);
        } else {
            def.set_sizes(0, 0, 0);
        }
        def.to_xml().map_err(|e| StorageError::internal(e.to_string()))
    }

    /// Whether a pool autostarts.
    pub fn autostart(&self, key: &PoolKey) -> Result<bool> {
        Ok(self.lock().pool(key)?.autostart)
    }

    /// Turns autostart on or off.
    pub async fn set_autostart(&self, key: &PoolKey, on: bool) -> Result<()> {
        let _definitions = self.definitions.lock().await;
        let name = {
            let state = self.lock();
            let p = state.pool(key)?;
            if !p.persistent {
                return Err(StorageError::op_invalid(format!(
                    "Cannot set autostart for transient pool '{}': define it first",
                    p.def.name()
                )));
            }
            if p.autostart == on {
                return Ok(());
            }
            p.def.name().to_owned()
        };
        self.set_autostart_link(&name, on).await?;
        // Still there: only undefine removes a persistent pool, and it holds `definitions`.
        if let Some(p) = self.lock().pools.get_mut(&name) {
            p.autostart = on;
        }
        Ok(())
    }

    /// Finds a pool.
    pub fn lookup(&self, key: &PoolKey) -> Result<PoolSummary> {
        Ok(self.lock().pool(key)?.summary())
    }

    /// Finds the pool holding a volume.
    pub fn lookup_by_vol(&self, key: &VolKey) -> Result<PoolSummary> {
        let state = self.lock();
        let (pool, _) = state.find_vol(key)?;
        state.authorize_pool(&pool)?;
        state
            .pools
            .get(&pool)
            .map(PoolObj::summary)
            .ok_or_else(|| StorageError::no_pool(format!("'{pool}'")))
    }

    /// Finds the pool whose target path is `path`.
    pub fn lookup_by_target(&self, path: &str) -> Result<PoolSummary> {
        let wanted = rvirt_conf::storage::sanitize_path(path);
        self.lock()
            .pools
            .values()
            .find(|p| p.def.target_path() == Some(wanted.as_str()))
            .map(|p| authorize(&["storage_pool"], &[p.def.name(), p.def.uuid()]).map(|()| p.summary()))
            .transpose()?
            .ok_or_else(|| StorageError::no_pool(format!("with target path '{path}'")))
    }

    /// Lists pools.
    pub fn list(&self, flags: u32) -> Vec<PoolSummary> {
        self.lock()
            .pools
            .values()
            .map(PoolObj::summary)
            .filter(|s| list_filter(s, flags) && rvirt_proto::access::visible(&[&s.name, &s.uuid]))
            .collect()
    }

    // ------------------------------------------------------------------------------------
    // Volumes
    // ------------------------------------------------------------------------------------

    /// Reserves a new volume's name in an active pool and returns the pool definition.
    fn reserve(&self, pool: &PoolKey, vol: &VolDef) -> Result<(VolReservation<'_>, PoolJob<'_>, PoolDef)> {
        check_vol_name(&vol.name)?;
        let mut state = self.lock();
        let p = state.pool_mut(pool)?;
        if !p.active {
            return Err(StorageError::op_invalid(format!(
                "Storage pool '{}' is not active: start it first",
                p.def.name()
            )));
        }
        if let Some(op) = p.changing {
            return Err(StorageError::op_invalid(format!(
                "Storage pool '{}' is busy ({op}): try again",
                p.def.name()
            )));
        }
        if p.vols.contains_key(&vol.name) {
            return Err(StorageError::new(
                ErrorCode::StorageVolExist,
                format!(
                    "Storage volume name '{}' is already in use in pool '{}': choose another name",
                    vol.name,
                    p.def.name()
                ),
            ));
        }
        let mut placeholder = vol.clone();
        let path = self.vol_path(&p.def, &vol.name);
        if let Some(t) = placeholder.target.as_mut() {
            t.path = Some(path.display().to_string());
        }
        p.vols.insert(
            vol.name.clone(),
            VolObj {
                def: placeholder,
                building: true,
                in_use: 0,
            },
        );
        p.jobs += 1;
        let def = p.def.clone();
        let name = def.name().to_owned();
        Ok((
            VolReservation {
                driver: self,
                pool: name.clone(),
                name: vol.name.clone(),
                committed: false,
                new: true,
            },
            PoolJob {
                driver: self,
                pool: name,
            },
            def,
        ))
    }

    fn vol_path(&self, pool: &PoolDef, name: &str) -> PathBuf {
        match pool.pool_type {
            PoolType::Logical => PathBuf::from(format!(
                "/dev/{}/{name}",
                pool.source_name().unwrap_or(pool.name())
            )),
            _ => Path::new(pool.target_path().unwrap_or_default()).join(name),
        }
    }

    fn parse_vol(&self, pool: &PoolKey, xml: &str, options: VolParseOptions) -> Result<VolDef> {
        let kind = self.lock().pool(pool)?.def.pool_type;
        let vol = VolDef::from_xml(xml, kind, options).map_err(|e| StorageError::xml("storage volume", e))?;
        check_vol_name(&vol.name)?;
        let pool_name = self.lock().pool(pool)?.def.name().to_owned();
        authorize(&["storage_vol"], &[&format!("{pool_name}/{}", vol.name)])?;
        if let Some(enc) = vol.target.as_ref().and_then(|t| t.encryption.as_ref()) {
            check_encryption(kind, &vol, enc)?;
        }
        Ok(vol)
    }

    async fn commit(
        &self,
        mut reservation: VolReservation<'_>,
        pool: &PoolDef,
        known_format: Option<String>,
    ) -> Result<VolSummary> {
        let path = self.vol_path(pool, &reservation.name);
        let probed = match pool.pool_type {
            PoolType::Logical => lvm::probe(self.runner.as_ref(), pool, &reservation.name).await?,
            _ => {
                fsvol::probe(
                    self.runner.as_ref(),
                    &path,
                    &reservation.name,
                    known_format.as_deref(),
                )
                .await?
            }
        }
        .ok_or_else(|| {
            StorageError::internal(format!("Volume {} vanished after creation", path.display()))
        })?;
        let mut state = self.lock();
        let p = state
            .pools
            .get_mut(&reservation.pool)
            .ok_or_else(|| StorageError::no_pool(format!("'{}'", reservation.pool)))?;
        let mut probed = probed;
        if let Some(requested) = p.vols.get(&reservation.name) {
            keep_encryption(&mut probed, &requested.def);
        }
        let summary = p.vol_summary(&probed);
        p.vols.insert(
            reservation.name.clone(),
            VolObj {
                def: probed,
                building: false,
                in_use: 0,
            },
        );
        reservation.committed = true;
        Ok(summary)
    }

    /// Creates a volume.
    pub async fn vol_create(&self, pool: &PoolKey, xml: &str, flags: u32) -> Result<VolSummary> {
        check_flags(
            flags,
            flags::VOL_PREALLOC_METADATA | flags::VOL_VALIDATE,
            "creating a volume",
        )?;
        let vol = self.parse_vol(pool, xml, VolParseOptions::default())?;
        let (reservation, _job, pool_def) = self.reserve(pool, &vol)?;
        let path = self.vol_path(&pool_def, &vol.name);
        let format = probe_format(&vol).map(str::to_owned);
        match pool_def.pool_type {
            PoolType::Logical => lvm::create(self.runner.as_ref(), &pool_def, &vol).await?,
            _ => {
                // Removed (with the passphrase in it) when this scope ends, create or not.
                let (key_file, key) = self.luks_key(&vol).await?.unzip();
                let mut image = ImageOptions::from_vol(&vol, flags & flags::VOL_PREALLOC_METADATA != 0, key);
                if image.format == "raw"
                    && image.preallocation.is_none()
                    && image.allocation >= image.capacity
                    && image.capacity > 0
                {
                    image.preallocation = Some(crate::qemu_img::Preallocation::Falloc);
                }
                if image.backing.is_some() {
                    let b = image.backing.as_mut().map(|b| &mut b.path);
                    if let Some(p) = b
                        && !p.starts_with('/')
                    {
                        *p = Path::new(pool_def.target_path().unwrap_or_default())
                            .join(&*p)
                            .display()
                            .to_string();
                    }
                    let bpath = image.backing.as_ref().map(|b| b.path.clone()).unwrap_or_default();
                    if std::fs::File::open(&bpath).is_err() {
                        return Err(StorageError::invalid_arg(format!(
                            "Backing store {bpath} of volume '{}' cannot be read: create it first or fix the path",
                            vol.name
                        )));
                    }
                }
                fsvol::create(self.runner.as_ref(), &path, &vol, &image, None).await?;
                drop(key_file);
            }
        }
        self.commit(reservation, &pool_def, format).await
    }

    /// Takes a volume for use (a stream or the source of a clone).
    pub fn vol_use(self: &Arc<Self>, key: &VolKey) -> Result<VolUse> {
        let mut state = self.lock();
        let (pool, name) = state.find_vol(key)?;
        let p = state
            .pools
            .get_mut(&pool)
            .ok_or_else(|| StorageError::no_pool(format!("'{pool}'")))?;
        let v = p
            .vols
            .get_mut(&name)
            .ok_or_else(|| StorageError::no_vol(format!("'{name}'")))?;
        v.in_use += 1;
        let path = PathBuf::from(
            v.def
                .target
                .as_ref()
                .and_then(|t| t.path.clone())
                .unwrap_or_default(),
        );
        let format = v.def.format().unwrap_or("raw").to_owned();
        let capacity = v.def.capacity_bytes();
        p.jobs += 1;
        Ok(VolUse {
            driver: Arc::clone(self),
            pool,
            name,
            path,
            format,
            capacity,
            def: v.def.clone(),
        })
    }

    /// Creates a volume as a copy of another.
    pub async fn vol_create_from(
        self: &Arc<Self>,
        pool: &PoolKey,
        xml: &str,
        source: &VolKey,
        flags: u32,
    ) -> Result<VolSummary> {
        check_flags(
            flags,
            flags::VOL_PREALLOC_METADATA | flags::VOL_REFLINK | flags::VOL_VALIDATE,
            "cloning a volume",
        )?;
        let mut vol = self.parse_vol(
            pool,
            xml,
            VolParseOptions {
                capacity_optional: true,
            },
        )?;
        if vol.target.as_ref().is_some_and(|t| t.encryption.is_some()) {
            return Err(StorageError::new(
                ErrorCode::ConfigUnsupported,
                "Cloning into an encrypted volume is not supported: create the encrypted volume, then upload into it from a guest",
            ));
        }
        let input = self.vol_use(source)?;
        // An encrypted source is decrypted into the copy (as libvirt does), with its passphrase.
        let input_key = self.luks_key(&input.def).await?.map(|(file, key)| {
            (
                file,
                LuksKey {
                    alias: "secin".into(),
                    ..key
                },
            )
        });
        if !vol.has_capacity() {
            vol.capacity = Some(rvirt_conf::storage::ScaledXml::bytes(input.capacity, "bytes"));
            vol.allocation
                .get_or_insert(rvirt_conf::storage::ScaledXml::bytes(0, "bytes"));
        }
        if vol.backing_store.is_some() {
            return Err(StorageError::new(
                ErrorCode::ConfigUnsupported,
                "A clone cannot have a different backing store: remove <backingStore> from the volume XML",
            ));
        }
        let (reservation, _job, pool_def) = self.reserve(pool, &vol)?;
        let path = self.vol_path(&pool_def, &vol.name);
        let format = vol.format().map(str::to_owned);
        if input_key.is_some() && (pool_def.pool_type == PoolType::Logical || flags & flags::VOL_REFLINK != 0)
        {
            return Err(StorageError::new(
                ErrorCode::ArgumentUnsupported,
                format!(
                    "Volume '{}' is encrypted: it can be cloned (decrypted) into a file volume without REFLINK, \
                     not into a logical volume or as a reflink copy of its ciphertext",
                    input.def.name
                ),
            ));
        }
        match pool_def.pool_type {
            PoolType::Logical => {
                lvm::create_from(self.runner.as_ref(), &pool_def, &vol, &input.path, &input.format).await?
            }
            _ => {
                let image = ImageOptions::from_vol(&vol, flags & flags::VOL_PREALLOC_METADATA != 0, None);
                if let Some((_file, key)) = &input_key {
                    fsvol::create_decrypted(
                        self.runner.as_ref(),
                        &path,
                        &vol,
                        &image,
                        &input.path,
                        &input.format,
                        key,
                    )
                    .await?;
                } else if flags & flags::VOL_REFLINK != 0 {
                    if image.format != "raw" || input.format != "raw" {
                        return Err(StorageError::new(
                            ErrorCode::ArgumentUnsupported,
                            "REFLINK clones are only supported from a raw volume to a raw volume",
                        ));
                    }
                    let guard = fsvol::create_exclusive(&path, &vol.permissions())?;
                    self.runner
                        .run(
                            "cp",
                            &[
                                "--reflink=always".into(),
                                input.path.clone().into(),
                                path.clone().into(),
                            ],
                        )
                        .await?;
                    guard.disarm();
                } else {
                    fsvol::create(
                        self.runner.as_ref(),
                        &path,
                        &vol,
                        &image,
                        Some((&input.path, &input.format)),
                    )
                    .await?;
                }
            }
        }
        drop(input);
        self.commit(reservation, &pool_def, format).await
    }

    fn vol_state(&self, key: &VolKey) -> Result<(PoolDef, VolDef)> {
        let state = self.lock();
        let (pool, name) = state.find_vol(key)?;
        let p = state
            .pools
            .get(&pool)
            .ok_or_else(|| StorageError::no_pool(format!("'{pool}'")))?;
        let v = p
            .vols
            .get(&name)
            .ok_or_else(|| StorageError::no_vol(format!("'{name}'")))?;
        Ok((p.def.clone(), v.def.clone()))
    }

    /// Marks a volume busy for a modifying operation; fails if it is in use.
    fn vol_modify(
        &self,
        key: &VolKey,
        what: &str,
    ) -> Result<(PoolDef, VolDef, VolReservation<'_>, PoolJob<'_>)> {
        let mut state = self.lock();
        let (pool, name) = state.find_vol(key)?;
        let p = state
            .pools
            .get_mut(&pool)
            .ok_or_else(|| StorageError::no_pool(format!("'{pool}'")))?;
        if let Some(op) = p.changing {
            return Err(StorageError::op_invalid(format!(
                "Storage pool '{pool}' is busy ({op}): try again"
            )));
        }
        let v = p
            .vols
            .get_mut(&name)
            .ok_or_else(|| StorageError::no_vol(format!("'{name}'")))?;
        if v.in_use > 0 {
            return Err(StorageError::op_invalid(format!(
                "Cannot {what} volume '{name}': it is in use (a stream or a clone is reading or writing it)"
            )));
        }
        v.building = true;
        p.jobs += 1;
        let (pool_def, vol_def) = (p.def.clone(), v.def.clone());
        Ok((
            pool_def,
            vol_def,
            VolReservation {
                driver: self,
                pool: pool.clone(),
                name,
                committed: false,
                new: false,
            },
            PoolJob { driver: self, pool },
        ))
    }

    /// Puts a volume back after a modifying operation, re-reading it from disk.
    async fn vol_done(&self, mut reservation: VolReservation<'_>, pool: &PoolDef, vol: &VolDef) {
        let path = self.vol_path(pool, &vol.name);
        let probed = match pool.pool_type {
            PoolType::Logical => lvm::probe(self.runner.as_ref(), pool, &vol.name).await,
            _ => fsvol::probe(self.runner.as_ref(), &path, &vol.name, probe_format(vol)).await,
        };
        let mut state = self.lock();
        if let Some(p) = state.pools.get_mut(&reservation.pool)
            && let Some(v) = p.vols.get_mut(&reservation.name)
        {
            if let Ok(Some(mut def)) = probed {
                keep_encryption(&mut def, vol);
                v.def = def;
            }
            v.building = false;
        }
        reservation.committed = true;
    }

    /// Deletes a volume.
    pub async fn vol_delete(&self, key: &VolKey, flags: u32) -> Result<()> {
        check_flags(
            flags,
            flags::VOL_DELETE_ZEROED | flags::VOL_DELETE_WITH_SNAPSHOTS,
            "deleting a volume",
        )?;
        if flags & flags::VOL_DELETE_WITH_SNAPSHOTS != 0 {
            return Err(StorageError::new(
                ErrorCode::ArgumentUnsupported,
                "WITH_SNAPSHOTS applies to RBD volumes only: delete without it",
            ));
        }
        let (pool, vol, reservation, _job) = self.vol_modify(key, "delete")?;
        let path = self.vol_path(&pool, &vol.name);
        let result = async {
            if flags & flags::VOL_DELETE_ZEROED != 0 {
                wipe::wipe(&path, rvirt_proto::v1::StorageVolWipeAlgorithm::Zero).await?;
            }
            match pool.pool_type {
                PoolType::Logical => lvm::delete(self.runner.as_ref(), &pool, &vol.name).await,
                _ => match std::fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(StorageError::io(
                        format!("Cannot delete volume {}", path.display()),
                        &e,
                    )),
                },
            }
        }
        .await;
        match result {
            Ok(()) => {
                let mut reservation = reservation;
                if let Some(p) = self.lock().pools.get_mut(&reservation.pool) {
                    p.vols.remove(&reservation.name);
                }
                reservation.committed = true;
                Ok(())
            }
            Err(e) => {
                self.vol_done(reservation, &pool, &vol).await;
                Err(e)
            }
        }
    }

    /// Wipes a volume with one of libvirt's algorithms ([`crate::wipe`]); a volume of a
    /// format with metadata (qcow2) is then recreated empty with the same format and capacity.
    pub async fn vol_wipe(&self, key: &VolKey, algorithm: i32, flags: u32) -> Result<()> {
        check_flags(flags, 0, "wiping a volume")?;
        let alg = wipe::algorithm(algorithm)?;
        let (pool, vol, reservation, _job) = self.vol_modify(key, "wipe")?;
        let path = self.vol_path(&pool, &vol.name);
        let result = async {
            let encrypted = vol.target.as_ref().is_some_and(|t| t.encryption.is_some());
            let format = vol.format().unwrap_or("raw");
            let recreate =
                pool.pool_type != PoolType::Logical && (encrypted || !matches!(format, "raw" | "iso"));
            // The passphrase is read before anything is overwritten: a volume that could not
            // be re-encrypted is left as it was.
            let key = if recreate {
                self.luks_key(&vol).await?
            } else {
                None
            };
            wipe::wipe(&path, alg).await?;
            if recreate {
                let (key_file, key) = key.unzip();
                fsvol::recreate(self.runner.as_ref(), &path, &vol, key).await?;
                drop(key_file);
            }
            Ok(())
        }
        .await;
        self.vol_done(reservation, &pool, &vol).await;
        result
    }

    /// Resizes a volume.
    pub async fn vol_resize(&self, key: &VolKey, capacity: u64, flags: u32) -> Result<()> {
        check_flags(
            flags,
            flags::RESIZE_ALLOCATE | flags::RESIZE_DELTA | flags::RESIZE_SHRINK,
            "resizing a volume",
        )?;
        let (pool, vol, reservation, _job) = self.vol_modify(key, "resize")?;
        let current = vol.capacity_bytes();
        let shrink = flags & flags::RESIZE_SHRINK != 0;
        let result = async {
            let wanted = if flags & flags::RESIZE_DELTA != 0 {
                if shrink {
                    current.checked_sub(capacity).ok_or_else(|| {
                        StorageError::invalid_arg(
                            "Cannot shrink the capacity below zero: use a smaller delta",
                        )
                    })?
                } else {
                    current
                        .checked_add(capacity)
                        .ok_or_else(|| StorageError::invalid_arg("Capacity overflows"))?
                }
            } else {
                capacity
            };
            if wanted < current && !shrink {
                return Err(StorageError::invalid_arg(format!(
                    "Cannot shrink volume '{}' from {current} to {wanted} bytes without the SHRINK flag",
                    vol.name
                )));
            }
            if wanted == 0 {
                return Err(StorageError::invalid_arg("A volume cannot be resized to 0 bytes"));
            }
            if let Some(enc) = vol.target.as_ref().and_then(|t| t.encryption.as_ref()) {
                if enc.format != "luks" {
                    return Err(StorageError::unsupported(format!(
                        "Cannot resize volume '{}': resizing an image with '{}' encryption is not supported (only LUKS)",
                        vol.name, enc.format
                    )));
                }
                if flags & flags::RESIZE_ALLOCATE != 0 {
                    return Err(StorageError::unsupported(format!(
                        "Cannot resize encrypted volume '{}' with ALLOCATE: preallocation is only supported for an unencrypted raw volume",
                        vol.name
                    )));
                }
                let (_key_file, key) = self.luks_key(&vol).await?.ok_or_else(|| {
                    StorageError::internal(format!("Volume '{}' lost its encryption", vol.name))
                })?;
                let path = self.vol_path(&pool, &vol.name);
                let format = vol.format().unwrap_or("raw");
                return self
                    .runner
                    .run(
                        "qemu-img",
                        &crate::qemu_img::resize_encrypted_args(&path, format, &key, wanted, wanted < current),
                    )
                    .await
                    .map(|_| ());
            }
            match pool.pool_type {
                PoolType::Logical => {
                    lvm::resize(self.runner.as_ref(), &pool, &vol.name, wanted, shrink).await
                }
                _ => {
                    let path = self.vol_path(&pool, &vol.name);
                    let format = vol.format().unwrap_or("raw");
                    fsvol::resize(
                        self.runner.as_ref(),
                        &path,
                        format,
                        current,
                        wanted,
                        flags & flags::RESIZE_ALLOCATE != 0,
                    )
                    .await
                }
            }
        }
        .await;
        self.vol_done(reservation, &pool, &vol).await;
        result
    }

    /// A volume's kind and sizes.
    pub fn vol_info(&self, key: &VolKey) -> Result<VolInfo> {
        let state = self.lock();
        let (pool, name) = state.find_vol(key)?;
        let p = state
            .pools
            .get(&pool)
            .ok_or_else(|| StorageError::no_pool(format!("'{pool}'")))?;
        let v = p
            .vols
            .get(&name)
            .ok_or_else(|| StorageError::no_vol(format!("'{name}'")))?;
        Ok(VolInfo {
            vol_type: p.vol_summary(&v.def).vol_type,
            capacity: v.def.capacity_bytes(),
            allocation: v.def.allocation_bytes(),
            physical: v
                .def
                .physical
                .as_ref()
                .map(rvirt_conf::storage::ScaledXml::as_bytes),
        })
    }

    /// A volume's XML.
    pub fn vol_xml(&self, key: &VolKey) -> Result<String> {
        let (_, vol) = self.vol_state(key)?;
        vol.to_xml().map_err(|e| StorageError::internal(e.to_string()))
    }

    /// Finds a volume.
    pub fn vol_lookup(&self, key: &VolKey) -> Result<VolSummary> {
        let state = self.lock();
        let (pool, name) = state.find_vol(key)?;
        let p = state
            .pools
            .get(&pool)
            .ok_or_else(|| StorageError::no_pool(format!("'{pool}'")))?;
        let v = p
            .vols
            .get(&name)
            .ok_or_else(|| StorageError::no_vol(format!("'{name}'")))?;
        Ok(p.vol_summary(&v.def))
    }

    /// A pool's volumes, by name.
    pub fn vol_list(&self, pool: &PoolKey) -> Result<Vec<VolSummary>> {
        let state = self.lock();
        let p = state.pool(pool)?;
        if !p.active {
            return Err(StorageError::op_invalid(format!(
                "Storage pool '{}' is not active: start it first",
                p.def.name()
            )));
        }
        Ok(p.vols
            .values()
            .filter(|v| !v.building)
            .map(|v| p.vol_summary(&v.def))
            .collect())
    }

    /// Re-reads one volume after its data changed (an upload).
    pub async fn vol_reprobe(&self, pool: &str, name: &str) {
        let found = {
            let state = self.lock();
            state
                .pools
                .get(pool)
                .and_then(|p| p.vols.get(name).map(|v| (p.def.clone(), v.def.clone())))
        };
        let Some((pool_def, vol)) = found else { return };
        let path = self.vol_path(&pool_def, name);
        let probed = match pool_def.pool_type {
            PoolType::Logical => lvm::probe(self.runner.as_ref(), &pool_def, name).await,
            _ => fsvol::probe(self.runner.as_ref(), &path, name, probe_format(&vol)).await,
        };
        if let Ok(Some(mut def)) = probed
            && let Some(v) = self.lock().pools.get_mut(pool).and_then(|p| p.vols.get_mut(name))
        {
            keep_encryption(&mut def, &v.def);
            v.def = def;
        }
    }
}

impl VolUse {
    /// The pool and volume names.
    pub fn names(&self) -> (&str, &str) {
        (&self.pool, &self.name)
    }

    /// The driver.
    pub fn driver(&self) -> &Arc<StorageDriver> {
        &self.driver
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(active: bool, persistent: bool, autostart: bool, pool_type: PoolType) -> PoolSummary {
        PoolSummary {
            name: "p".into(),
            uuid: String::new(),
            active,
            persistent,
            autostart,
            pool_type,
        }
    }

    #[test]
    fn list_flags_filter_by_group() {
        let p = pool(true, true, false, PoolType::Dir);
        assert!(list_filter(&p, 0));
        assert!(list_filter(&p, 2)); // ACTIVE
        assert!(!list_filter(&p, 1)); // INACTIVE
        assert!(list_filter(&p, 1 | 2)); // either
        assert!(!list_filter(&p, 8)); // TRANSIENT
        assert!(list_filter(&p, 32)); // NO_AUTOSTART
        assert!(list_filter(&p, 64)); // DIR
        assert!(!list_filter(&p, 512)); // LOGICAL
        assert!(list_filter(
            &pool(false, false, false, PoolType::Logical),
            512 | 1 | 8
        ));
    }

    #[tokio::test]
    async fn define_then_redefine_while_active_keeps_the_new_definition_for_next_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = StorageDriver::new(
            DriverPaths {
                config_dir: dir.path().join("config"),
                state_dir: dir.path().join("state"),
            },
            Arc::new(crate::command::HostRunner),
        );
        let target = dir.path().join("pool");
        std::fs::create_dir(&target).expect("target");
        let xml = |mode: &str| {
            format!(
                "<pool type='dir'><name>p</name><uuid>8f0e9f6a-1a70-4d6b-9a57-3a1f2a6f1b11</uuid><target><path>{}</path>\
                 <permissions><mode>{mode}</mode></permissions></target></pool>",
                target.display()
            )
        };
        driver.define(&xml("0700"), 0).await.expect("define");
        driver.start(&PoolKey::Name("p".into()), 0).await.expect("start");
        driver.define(&xml("0750"), 0).await.expect("redefine");
        let live = driver.xml(&PoolKey::Name("p".into()), false).expect("live");
        let inactive = driver.xml(&PoolKey::Name("p".into()), true).expect("inactive");
        assert!(live.contains("<mode>0700</mode>"), "{live}");
        assert!(inactive.contains("<mode>0750</mode>"), "{inactive}");
        driver.destroy(&PoolKey::Name("p".into())).await.expect("destroy");
        let now = driver
            .xml(&PoolKey::Name("p".into()), false)
            .expect("after destroy");
        assert!(now.contains("<mode>0750</mode>"), "{now}");
        let saved = std::fs::read_to_string(dir.path().join("config/p.xml")).expect("config file");
        assert!(saved.contains("<mode>0750</mode>"), "{saved}");
    }

    #[tokio::test]
    async fn define_refuses_a_second_pool_on_the_same_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = StorageDriver::new(
            DriverPaths {
                config_dir: dir.path().join("config"),
                state_dir: dir.path().join("state"),
            },
            Arc::new(crate::command::HostRunner),
        );
        let xml = |name: &str| {
            format!(
                "<pool type='dir'><name>{name}</name><target><path>{}</path></target></pool>",
                dir.path().display()
            )
        };
        driver.define(&xml("a"), 0).await.expect("first");
        let err = driver.define(&xml("b"), 0).await.expect_err("second");
        assert_eq!(err.code, ErrorCode::OperationFailed);
        assert!(err.message.contains("'a'"), "{}", err.message);
    }

    #[tokio::test]
    async fn autostart_and_undefine_write_and_remove_their_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config");
        let driver = StorageDriver::new(
            DriverPaths {
                config_dir: config.clone(),
                state_dir: dir.path().join("state"),
            },
            Arc::new(crate::command::HostRunner),
        );
        let xml = format!(
            "<pool type='dir'><name>p</name><target><path>{}</path></target></pool>",
            dir.path().display()
        );
        let key = PoolKey::Name("p".into());
        driver.define(&xml, 0).await.expect("define");
        assert!(config.join("p.xml").is_file());
        let link = config.join("autostart/p.xml");
        driver.set_autostart(&key, true).await.expect("autostart on");
        assert_eq!(std::fs::read_link(&link).expect("link"), Path::new("../p.xml"));
        assert!(driver.autostart(&key).expect("autostart"));
        // Again: nothing to change.
        driver
            .set_autostart(&key, true)
            .await
            .expect("autostart on again");
        driver.set_autostart(&key, false).await.expect("autostart off");
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert!(!driver.autostart(&key).expect("autostart"));
        driver.set_autostart(&key, true).await.expect("autostart on");
        driver.undefine(&key).await.expect("undefine");
        assert!(!config.join("p.xml").exists());
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert_eq!(
            driver.lookup(&key).expect_err("gone").code,
            ErrorCode::NoStoragePool
        );
        let err = driver.undefine(&key).await.expect_err("already gone");
        assert_eq!(err.code, ErrorCode::NoStoragePool);
    }
}
