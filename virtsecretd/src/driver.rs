//! The secret driver: the secrets in memory, the rules of libvirt's secret driver, persistence
//! through [`Store`], values sealed under the [`MasterKey`], and the event log.
//!
//! Values are kept sealed in memory too (the same bytes as the value file): a clear value exists
//! only while a `SetSecretValue` or `GetSecretValue` call handles it, in a buffer wiped on drop.
//!
//! Modifications (define, undefine, set value) are serialized by one writer lock and run to
//! completion in their own task even when the caller goes away, so memory and disk never
//! disagree; each is on disk (fsync-ed) before it is acknowledged. Reads (lookup, list, XML,
//! get value) never wait for a modification's disk I/O.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rvirt_conf::secret::{SecretDef, SecretUsage, SecretUsageType};
use rvirt_conf::{XmlError, XmlErrorKind};
use rvirt_daemon::atomic::write_atomic;
use rvirt_daemon::events::EventLog;
use rvirt_proto::v1::{ErrorCode, ErrorDomain};
use zeroize::Zeroizing;

use crate::crypto::{self, KeySource, MasterKey};
use crate::store::{FILE_MODE, Store};
use crate::value::{MAX_VALUE_LEN, SecretValue};

/// The name of the internal-path token file in the driver's state directory.
pub const TOKEN_FILE: &str = "internal-token";
/// How many events the log keeps for resuming watches.
pub const EVENT_CAPACITY: usize = 1024;

/// `DefineSecretXml` flag: validate against the schema (always done; accepted for libvirt).
pub const DEFINE_VALIDATE: u32 = 1;
/// `ListSecrets` flags (libvirt's `virConnectListAllSecretsFlags`).
pub const LIST_EPHEMERAL: u32 = 1;
/// Stored on disk.
pub const LIST_NO_EPHEMERAL: u32 = 2;
/// Value not readable by clients.
pub const LIST_PRIVATE: u32 = 4;
/// Value readable by privileged clients.
pub const LIST_NO_PRIVATE: u32 = 8;
const LIST_ALL: u32 = LIST_EPHEMERAL | LIST_NO_EPHEMERAL | LIST_PRIVATE | LIST_NO_PRIVATE;

/// [`rvirt_proto::access::authorize`] on a secret, known by its UUID and its usage id.
fn authorize(def: &SecretDef) -> Result<(), SecretError> {
    let usage = def.usage.as_ref().map_or("", |u| u.id.as_str());
    rvirt_proto::access::authorize(&["secret"], &[&def.uuid, usage])
        .map_err(|denied| SecretError::new(ErrorCode::AccessDenied, denied.message()))
}

/// A failed secret operation: libvirt's error number and a sentence saying what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SecretError {
    /// libvirt's error number.
    pub code: ErrorCode,
    /// What failed and what to do. Never contains a value.
    pub message: String,
    /// For XML errors: where.
    pub xml_path: Option<String>,
}

impl SecretError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        SecretError {
            code,
            message: message.into(),
            xml_path: None,
        }
    }

    /// The gRPC status carrying this error.
    pub fn to_status(&self) -> tonic::Status {
        rvirt_proto::error::to_status(&rvirt_proto::v1::Error {
            code: self.code as i32,
            domain: ErrorDomain::Secret as i32,
            message: self.message.clone(),
            xml_path: self.xml_path.clone().unwrap_or_default(),
            ..Default::default()
        })
    }
}

impl From<XmlError> for SecretError {
    fn from(e: XmlError) -> Self {
        let code = match e.kind {
            XmlErrorKind::Unsupported => ErrorCode::ConfigUnsupported,
            XmlErrorKind::Malformed | XmlErrorKind::Invalid => ErrorCode::XmlError,
        };
        SecretError {
            code,
            message: format!("Cannot define the secret: {e}"),
            xml_path: Some(e.path),
        }
    }
}

fn system_error(what: &str, path: &Path, e: &std::io::Error) -> SecretError {
    SecretError::new(
        ErrorCode::SystemError,
        format!(
            "Cannot {what} {}: {e}; check that the disk has room and the daemon may write there",
            path.display()
        ),
    )
}

/// How a call names a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretKey {
    /// By UUID, in any spelling libvirt accepts.
    Uuid(String),
    /// By usage type and id.
    Usage(SecretUsageType, String),
}

/// A secret as calls report it; never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    /// The definition.
    pub def: SecretDef,
    /// Whether a value has been set (readable or not).
    pub has_value: bool,
}

/// What a secret event says; never a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretEventKind {
    /// Defined or redefined.
    Defined,
    /// Undefined.
    Undefined,
    /// Its value was set.
    ValueChanged,
}

/// One secret event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretEvent {
    /// The secret's UUID.
    pub uuid: String,
    /// Its usage at the time.
    pub usage: Option<SecretUsage>,
    /// What happened.
    pub kind: SecretEventKind,
}

/// A secret's value as held in memory.
#[derive(Clone, PartialEq, Eq)]
enum StoredValue {
    /// No value set.
    None,
    /// Sealed for this secret under the master key (the value file's bytes).
    Sealed(Vec<u8>),
    /// Set, but its file could not be read or decrypted at start: why.
    Unreadable(String),
}

impl std::fmt::Debug for StoredValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoredValue::None => f.write_str("None"),
            StoredValue::Sealed(_) => f.write_str("Sealed(..)"),
            StoredValue::Unreadable(why) => write!(f, "Unreadable({why})"),
        }
    }
}

#[derive(Debug, Clone)]
struct SecretObj {
    def: SecretDef,
    value: StoredValue,
}

impl SecretObj {
    fn info(&self) -> SecretInfo {
        SecretInfo {
            def: self.def.clone(),
            has_value: !matches!(self.value, StoredValue::None),
        }
    }
}

/// Where the driver keeps things.
#[derive(Debug, Clone)]
pub struct DriverPaths {
    /// Definitions.
    pub config_dir: PathBuf,
    /// Sealed values and the key file.
    pub data_dir: PathBuf,
    /// The internal-path token.
    pub state_dir: PathBuf,
    /// systemd's `$CREDENTIALS_DIRECTORY`, if set.
    pub credentials_dir: Option<PathBuf>,
}

/// The secret driver.
pub struct SecretDriver {
    store: Store,
    key: MasterKey,
    token: Zeroizing<String>,
    secrets: RwLock<BTreeMap<String, SecretObj>>,
    writer: tokio::sync::Mutex<()>,
    events: EventLog<SecretEvent>,
}

impl std::fmt::Debug for SecretDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretDriver")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl SecretDriver {
    /// Opens the driver: creates its directories, loads the master key, writes a new internal
    /// token, and loads every stored secret. A definition that cannot be used is logged and
    /// skipped; a value that does not decrypt is reported for that secret when it is read.
    pub fn open(paths: &DriverPaths) -> Result<SecretDriver, String> {
        let store = Store::new(paths.config_dir.clone(), paths.data_dir.clone());
        store.prepare()?;
        let (key, source) = crypto::load_master_key(paths.credentials_dir.as_deref(), store.data_dir())?;
        match &source {
            KeySource::Credential(p) => {
                tracing::info!(path = %p.display(), "secrets encryption key from the systemd credential");
            }
            KeySource::KeyFile(p) => {
                tracing::info!(path = %p.display(), "secrets encryption key from the key file")
            }
            KeySource::NewKeyFile(p) => {
                tracing::info!(path = %p.display(), "created a new secrets encryption key")
            }
        }
        let token = crypto::new_token()?;
        std::fs::create_dir_all(&paths.state_dir)
            .map_err(|e| format!("cannot create {}: {e}", paths.state_dir.display()))?;
        let token_path = paths.state_dir.join(TOKEN_FILE);
        write_atomic(&token_path, token.as_bytes(), FILE_MODE)
            .map_err(|e| format!("cannot write the internal token {}: {e}", token_path.display()))?;

        let loaded = store.load()?;
        let mut secrets = BTreeMap::new();
        let mut usages: BTreeMap<(SecretUsageType, String), String> = BTreeMap::new();
        let mut unreadable = 0usize;
        for stored in loaded.secrets {
            let def = stored.def;
            if let Some(usage) = &def.usage
                && let Some(other) = usages.get(&(usage.usage_type, usage.id.clone()))
            {
                tracing::warn!(
                    uuid = %def.uuid,
                    "skipping a secret definition: secret {other} already has usage {} {:?}",
                    usage.usage_type,
                    usage.id
                );
                continue;
            }
            let value = match stored.sealed {
                None => StoredValue::None,
                Some(sealed) => match key.open(&def.uuid, &sealed) {
                    // The clear value is wiped as soon as the check is done.
                    Ok(_) => StoredValue::Sealed(sealed),
                    Err(e) => {
                        unreadable += 1;
                        tracing::warn!(
                            uuid = %def.uuid,
                            "a secret's value cannot be decrypted: {e}; restore the key or set the value again"
                        );
                        StoredValue::Unreadable(e.to_string())
                    }
                },
            };
            if let Some(usage) = &def.usage {
                usages.insert((usage.usage_type, usage.id.clone()), def.uuid.clone());
            }
            secrets.insert(def.uuid.clone(), SecretObj { def, value });
        }
        tracing::info!(
            secrets = secrets.len(),
            skipped = loaded.skipped.len(),
            unreadable_values = unreadable,
            "secrets loaded"
        );
        Ok(SecretDriver {
            store,
            key,
            token,
            secrets: RwLock::new(secrets),
            writer: tokio::sync::Mutex::new(()),
            events: EventLog::new(EVENT_CAPACITY),
        })
    }

    /// How many ephemeral secrets exist (they are lost when the daemon exits).
    pub fn ephemeral_count(&self) -> usize {
        self.read().values().filter(|o| o.def.ephemeral).count()
    }

    /// The event log.
    pub fn events(&self) -> &EventLog<SecretEvent> {
        &self.events
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, SecretObj>> {
        self.secrets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, SecretObj>> {
        self.secrets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn find<'a>(
        secrets: &'a BTreeMap<String, SecretObj>,
        key: &SecretKey,
    ) -> Result<&'a SecretObj, SecretError> {
        let obj = Self::find_unchecked(secrets, key)?;
        // Access rules that name secrets are decided here, whatever the caller named it by.
        authorize(&obj.def)?;
        Ok(obj)
    }

    fn find_unchecked<'a>(
        secrets: &'a BTreeMap<String, SecretObj>,
        key: &SecretKey,
    ) -> Result<&'a SecretObj, SecretError> {
        match key {
            SecretKey::Uuid(text) => {
                let uuid = rvirt_conf::xml::canonical_uuid(text).ok_or_else(|| {
                    SecretError::new(
                        ErrorCode::InvalidArg,
                        format!("{text:?} is not a UUID: use the form 0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"),
                    )
                })?;
                secrets.get(&uuid).ok_or_else(|| {
                    SecretError::new(
                        ErrorCode::NoSecret,
                        format!("No secret with matching uuid '{uuid}': list the secrets to see which exist"),
                    )
                })
            }
            SecretKey::Usage(usage_type, id) => secrets
                .values()
                .find(|o| {
                    o.def
                        .usage
                        .as_ref()
                        .is_some_and(|u| u.usage_type == *usage_type && u.id == *id)
                })
                .ok_or_else(|| {
                    SecretError::new(
                        ErrorCode::NoSecret,
                        format!("No secret with matching usage '{id}' of type {usage_type}: list the secrets to see which exist"),
                    )
                }),
        }
    }

    /// Looks a secret up.
    pub fn lookup(&self, key: &SecretKey) -> Result<SecretInfo, SecretError> {
        Ok(Self::find(&self.read(), key)?.info())
    }

    /// Lists the secrets matching libvirt's `virConnectListAllSecretsFlags`, sorted by UUID.
    pub fn list(&self, flags: u32) -> Result<Vec<SecretInfo>, SecretError> {
        if flags & !LIST_ALL != 0 {
            return Err(SecretError::new(
                ErrorCode::InvalidArg,
                format!(
                    "Unsupported flags {:#x} for ListSecrets: use bits of SecretListFlag",
                    flags & !LIST_ALL
                ),
            ));
        }
        let pair = |yes: u32, no: u32, value: bool| {
            flags & (yes | no) == 0 || (flags & yes != 0 && value) || (flags & no != 0 && !value)
        };
        Ok(self
            .read()
            .values()
            .filter(|o| pair(LIST_EPHEMERAL, LIST_NO_EPHEMERAL, o.def.ephemeral))
            .filter(|o| pair(LIST_PRIVATE, LIST_NO_PRIVATE, o.def.private))
            .map(SecretObj::info)
            .collect())
    }

    /// The secret's XML (never the value).
    pub fn xml(&self, key: &SecretKey) -> Result<String, SecretError> {
        let secrets = self.read();
        let obj = Self::find(&secrets, key)?;
        obj.def.to_xml().map_err(|e| {
            SecretError::new(
                ErrorCode::InternalError,
                format!("Cannot format secret {}: {e}", obj.def.uuid),
            )
        })
    }

    /// The value, for a client: refused for a `private` secret, whoever asks.
    pub fn get_value(&self, key: &SecretKey) -> Result<SecretValue, SecretError> {
        self.value(key, false)
    }

    /// The value, for the hypervisor's internal path: `token` must be the one this daemon wrote
    /// at start; `private` secrets are returned too.
    pub fn get_value_internal(&self, key: &SecretKey, token: &str) -> Result<SecretValue, SecretError> {
        if !crypto::constant_time_eq(token.as_bytes(), self.token.as_bytes()) {
            return Err(SecretError::new(
                ErrorCode::AccessDenied,
                "The internal token does not match: GetSecretValueInternal is for the hypervisor daemon, which reads the token from virtsecretd's state directory at each call",
            ));
        }
        self.value(key, true)
    }

    fn value(&self, key: &SecretKey, internal: bool) -> Result<SecretValue, SecretError> {
        let secrets = self.read();
        let obj = Self::find(&secrets, key)?;
        let uuid = &obj.def.uuid;
        if obj.def.private && !internal {
            return Err(SecretError::new(
                ErrorCode::OperationDenied,
                format!(
                    "Secret {uuid} is private: its value is never returned to clients, only used by the hypervisor daemon"
                ),
            ));
        }
        let value = match &obj.value {
            StoredValue::None => Err(SecretError::new(
                ErrorCode::NoSecret,
                format!("Secret {uuid} has no value: set one with SetSecretValue"),
            )),
            StoredValue::Unreadable(why) => Err(unreadable(uuid, why)),
            StoredValue::Sealed(sealed) => self
                .key
                .open(uuid, sealed)
                .map_err(|e| unreadable(uuid, &e.to_string())),
        };
        tracing::debug!(uuid = %uuid, internal, ok = value.is_ok(), "secret value read");
        value
    }

    /// Defines or redefines a secret from XML (libvirt's `virSecretDefineXML` rules).
    pub async fn define(self: &Arc<Self>, xml: &str, flags: u32) -> Result<SecretInfo, SecretError> {
        if flags & !DEFINE_VALIDATE != 0 {
            return Err(SecretError::new(
                ErrorCode::InvalidArg,
                format!(
                    "Unsupported flags {:#x} for DefineSecretXml: use bits of SecretDefineFlag",
                    flags & !DEFINE_VALIDATE
                ),
            ));
        }
        let def = SecretDef::from_xml(xml)?;
        authorize(&def)?;
        let this = Arc::clone(self);
        // Its own task: a caller that goes away does not cut the operation in half.
        tokio::spawn(async move { this.define_locked(def).await })
            .await
            .map_err(|e| {
                SecretError::new(
                    ErrorCode::InternalError,
                    format!("The define operation failed: {e}"),
                )
            })?
    }

    async fn define_locked(&self, def: SecretDef) -> Result<SecretInfo, SecretError> {
        let _writer = self.writer.lock().await;
        let old = {
            let secrets = self.read();
            match secrets.get(&def.uuid) {
                Some(old) => {
                    if old.def.usage != def.usage {
                        return Err(SecretError::new(
                            ErrorCode::OperationInvalid,
                            format!(
                                "A secret with UUID {} is already defined for use with {}: its usage cannot change; undefine it first",
                                def.uuid,
                                describe_usage(old.def.usage.as_ref())
                            ),
                        ));
                    }
                    if old.def.private && !def.private {
                        return Err(SecretError::new(
                            ErrorCode::OperationInvalid,
                            format!(
                                "Cannot change the private flag of existing secret {}: a private secret stays private; undefine it and define a new one",
                                def.uuid
                            ),
                        ));
                    }
                    Some(old.clone())
                }
                None => {
                    if let Some(usage) = &def.usage
                        && let Ok(other) =
                            Self::find(&secrets, &SecretKey::Usage(usage.usage_type, usage.id.clone()))
                    {
                        return Err(SecretError::new(
                            ErrorCode::OperationInvalid,
                            format!(
                                "A secret with UUID {} is already defined for use with {}: redefine that one, or undefine it first",
                                other.def.uuid,
                                describe_usage(Some(usage))
                            ),
                        ));
                    }
                    None
                }
            }
        };
        let value = old.as_ref().map_or(StoredValue::None, |o| o.value.clone());
        let was_ephemeral = old.as_ref().is_some_and(|o| o.def.ephemeral);
        let was_persistent = old.as_ref().is_some_and(|o| !o.def.ephemeral);
        let store = self.store.clone();
        let to_save = def.clone();
        let sealed = match &value {
            StoredValue::Sealed(s) => Some(s.clone()),
            _ => None,
        };
        let uuid = def.uuid.clone();
        blocking(move || {
            if !to_save.ephemeral {
                let wrote_value = if was_ephemeral && let Some(sealed) = &sealed {
                    store
                        .save_value(&uuid, sealed)
                        .map_err(|e| system_error("save the value to", &store.value_path(&uuid), &e))?;
                    true
                } else {
                    false
                };
                if let Err(e) = store.save_def(&to_save) {
                    if wrote_value {
                        let _ = store.remove_value(&uuid);
                    }
                    return Err(system_error("save the definition to", &store.def_path(&uuid), &e));
                }
            } else if was_persistent {
                store
                    .remove_def(&uuid)
                    .map_err(|e| system_error("remove", &store.def_path(&uuid), &e))?;
                if let Err(e) = store.remove_value(&uuid) {
                    tracing::warn!(uuid = %uuid, "cannot remove the value file of a secret now ephemeral: {e}; it is removed at the next start");
                }
            }
            Ok(())
        })
        .await?;
        let info = {
            let mut secrets = self.write();
            let obj = SecretObj { def, value };
            let info = obj.info();
            secrets.insert(obj.def.uuid.clone(), obj);
            info
        };
        tracing::info!(
            uuid = %info.def.uuid,
            ephemeral = info.def.ephemeral,
            private = info.def.private,
            redefined = old.is_some(),
            "secret defined"
        );
        self.emit(&info.def, SecretEventKind::Defined);
        Ok(info)
    }

    /// Undefines a secret and removes its value.
    pub async fn undefine(self: &Arc<Self>, key: SecretKey) -> Result<(), SecretError> {
        // Access is decided in the caller's task, before the work moves to its own.
        Self::find(&self.read(), &key)?;
        let this = Arc::clone(self);
        tokio::spawn(async move { this.undefine_locked(key).await })
            .await
            .map_err(|e| {
                SecretError::new(
                    ErrorCode::InternalError,
                    format!("The undefine operation failed: {e}"),
                )
            })?
    }

    async fn undefine_locked(&self, key: SecretKey) -> Result<(), SecretError> {
        let _writer = self.writer.lock().await;
        let def = Self::find(&self.read(), &key)?.def.clone();
        if !def.ephemeral {
            let store = self.store.clone();
            let uuid = def.uuid.clone();
            blocking(move || {
                store
                    .remove_def(&uuid)
                    .map_err(|e| system_error("remove", &store.def_path(&uuid), &e))?;
                if let Err(e) = store.remove_value(&uuid) {
                    tracing::warn!(uuid = %uuid, "cannot remove an undefined secret's value file: {e}; it is removed at the next start");
                }
                Ok(())
            })
            .await?;
        }
        self.write().remove(&def.uuid);
        tracing::info!(uuid = %def.uuid, "secret undefined");
        self.emit(&def, SecretEventKind::Undefined);
        Ok(())
    }

    /// Sets or replaces a secret's value; on disk (sealed) before it returns, unless the secret
    /// is ephemeral.
    pub async fn set_value(self: &Arc<Self>, key: SecretKey, value: SecretValue) -> Result<(), SecretError> {
        if value.len() > MAX_VALUE_LEN {
            return Err(SecretError::new(
                ErrorCode::InvalidArg,
                format!(
                    "The value has {} bytes, more than the {MAX_VALUE_LEN} a secret may hold",
                    value.len()
                ),
            ));
        }
        // Access is decided in the caller's task, before the work moves to its own.
        Self::find(&self.read(), &key)?;
        let this = Arc::clone(self);
        tokio::spawn(async move { this.set_value_locked(key, value).await })
            .await
            .map_err(|e| {
                SecretError::new(
                    ErrorCode::InternalError,
                    format!("The set-value operation failed: {e}"),
                )
            })?
    }

    async fn set_value_locked(&self, key: SecretKey, value: SecretValue) -> Result<(), SecretError> {
        let _writer = self.writer.lock().await;
        let def = Self::find(&self.read(), &key)?.def.clone();
        let sealed = self.key.seal(&def.uuid, &value).map_err(|e| {
            SecretError::new(
                ErrorCode::InternalError,
                format!("Cannot encrypt the value of secret {}: {e}", def.uuid),
            )
        })?;
        drop(value);
        if !def.ephemeral {
            let store = self.store.clone();
            let uuid = def.uuid.clone();
            let to_write = sealed.clone();
            blocking(move || {
                store
                    .save_value(&uuid, &to_write)
                    .map_err(|e| system_error("save the value to", &store.value_path(&uuid), &e))
            })
            .await?;
        }
        if let Some(obj) = self.write().get_mut(&def.uuid) {
            obj.value = StoredValue::Sealed(sealed);
        }
        tracing::info!(uuid = %def.uuid, "secret value set");
        self.emit(&def, SecretEventKind::ValueChanged);
        Ok(())
    }

    fn emit(&self, def: &SecretDef, kind: SecretEventKind) {
        self.events.emit(SecretEvent {
            uuid: def.uuid.clone(),
            usage: def.usage.clone(),
            kind,
        });
    }
}

fn unreadable(uuid: &str, why: &str) -> SecretError {
    SecretError::new(
        ErrorCode::ReadFailed,
        format!(
            "The value of secret {uuid} cannot be read: {why}. Restore the encryption key it was stored with, or set the value again with SetSecretValue"
        ),
    )
}

fn describe_usage(usage: Option<&SecretUsage>) -> String {
    match usage {
        None => "no usage".to_owned(),
        Some(u) => format!("{} '{}'", u.usage_type, u.id),
    }
}

async fn blocking<F>(f: F) -> Result<(), SecretError>
where
    F: FnOnce() -> Result<(), SecretError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SecretError::new(ErrorCode::InternalError, format!("A disk operation failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID_A: &str = "f52a81b2-424e-490c-823d-6bd4235bc572";
    const UUID_B: &str = "27f25d34-aea6-4e2a-be85-fa2c18380be8";

    fn paths(dir: &Path) -> DriverPaths {
        DriverPaths {
            config_dir: dir.join("etc"),
            data_dir: dir.join("lib"),
            state_dir: dir.join("run"),
            credentials_dir: None,
        }
    }

    fn open(dir: &Path) -> Arc<SecretDriver> {
        Arc::new(SecretDriver::open(&paths(dir)).expect("open"))
    }

    fn xml(uuid: &str, attrs: &str, usage: &str) -> String {
        format!("<secret {attrs}><uuid>{uuid}</uuid>{usage}</secret>")
    }

    fn ceph(name: &str) -> String {
        format!("<usage type='ceph'><name>{name}</name></usage>")
    }

    fn uuid(u: &str) -> SecretKey {
        SecretKey::Uuid(u.to_owned())
    }

    fn value(bytes: &[u8]) -> SecretValue {
        SecretValue::new(bytes.to_vec())
    }

    #[tokio::test]
    async fn second_secret_with_the_same_usage_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = open(dir.path());
        driver
            .define(&xml(UUID_A, "", &ceph("c")), 0)
            .await
            .expect("first");
        let err = driver
            .define(&xml(UUID_B, "", &ceph("c")), 0)
            .await
            .expect_err("same usage");
        assert_eq!(err.code, ErrorCode::OperationInvalid);
        assert!(err.message.contains(UUID_A), "{}", err.message);
        assert!(driver.lookup(&uuid(UUID_B)).is_err());
    }

    #[tokio::test]
    async fn secrets_without_usage_never_conflict() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = open(dir.path());
        driver.define(&xml(UUID_A, "", ""), 0).await.expect("first");
        driver.define(&xml(UUID_B, "", ""), 0).await.expect("second");
        assert_eq!(driver.list(0).expect("list").len(), 2);
    }

    #[tokio::test]
    async fn redefining_keeps_the_value_and_may_not_change_usage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = open(dir.path());
        driver
            .define(&xml(UUID_A, "", &ceph("c")), 0)
            .await
            .expect("define");
        driver.set_value(uuid(UUID_A), value(b"v1")).await.expect("set");
        let redefined = format!(
            "<secret><uuid>{UUID_A}</uuid><description>new</description>{}</secret>",
            ceph("c")
        );
        driver.define(&redefined, 0).await.expect("redefine");
        assert_eq!(driver.get_value(&uuid(UUID_A)).expect("value").expose(), b"v1");
        assert_eq!(
            driver
                .lookup(&uuid(UUID_A))
                .expect("lookup")
                .def
                .description
                .as_deref(),
            Some("new")
        );
        let err = driver
            .define(&xml(UUID_A, "", &ceph("other")), 0)
            .await
            .expect_err("usage change");
        assert_eq!(err.code, ErrorCode::OperationInvalid);
    }

    #[tokio::test]
    async fn private_may_be_set_but_never_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = open(dir.path());
        driver
            .define(&xml(UUID_A, "private='no'", ""), 0)
            .await
            .expect("define");
        driver
            .define(&xml(UUID_A, "private='yes'", ""), 0)
            .await
            .expect("make private");
        let err = driver
            .define(&xml(UUID_A, "private='no'", ""), 0)
            .await
            .expect_err("clear private");
        assert_eq!(err.code, ErrorCode::OperationInvalid);
        assert!(driver.lookup(&uuid(UUID_A)).expect("lookup").def.private);
    }

    #[tokio::test]
    async fn private_value_is_refused_to_clients_but_given_to_the_internal_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = open(dir.path());
        driver
            .define(&xml(UUID_A, "private='yes'", ""), 0)
            .await
            .expect("define");
        driver.set_value(uuid(UUID_A), value(b"pw")).await.expect("set");
        let err = driver.get_value(&uuid(UUID_A)).expect_err("private");
        assert_eq!(err.code, ErrorCode::OperationDenied);
        let token = std::fs::read_to_string(dir.path().join("run").join(TOKEN_FILE)).expect("token");
        assert_eq!(
            driver
                .get_value_internal(&uuid(UUID_A), &token)
                .expect("internal")
                .expose(),
            b"pw"
        );
        let err = driver
            .get_value_internal(&uuid(UUID_A), "0000")
            .expect_err("bad token");
        assert_eq!(err.code, ErrorCode::AccessDenied);
        let err = driver
            .get_value_internal(&uuid(UUID_A), "")
            .expect_err("no token");
        assert_eq!(err.code, ErrorCode::AccessDenied);
    }

    #[tokio::test]
    async fn values_and_definitions_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let driver = open(dir.path());
            driver
                .define(&xml(UUID_A, "", &ceph("c")), 0)
                .await
                .expect("define");
            driver
                .set_value(uuid(UUID_A), value(b"persisted"))
                .await
                .expect("set");
            driver
                .define(&xml(UUID_B, "ephemeral='yes'", ""), 0)
                .await
                .expect("ephemeral");
            driver
                .set_value(uuid(UUID_B), value(b"memory only"))
                .await
                .expect("set");
        }
        let driver = open(dir.path());
        assert_eq!(
            driver.get_value(&uuid(UUID_A)).expect("value").expose(),
            b"persisted"
        );
        assert_eq!(
            driver
                .lookup(&SecretKey::Usage(SecretUsageType::Ceph, "c".into()))
                .expect("usage")
                .def
                .uuid,
            UUID_A
        );
        assert_eq!(
            driver.lookup(&uuid(UUID_B)).expect_err("gone").code,
            ErrorCode::NoSecret
        );
    }

    #[tokio::test]
    async fn ephemeral_secrets_never_touch_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = open(dir.path());
        driver
            .define(&xml(UUID_A, "ephemeral='yes'", ""), 0)
            .await
            .expect("define");
        driver.set_value(uuid(UUID_A), value(b"v")).await.expect("set");
        assert!(!driver.store.def_path(UUID_A).exists());
        assert!(!driver.store.value_path(UUID_A).exists());
        assert_eq!(driver.get_value(&uuid(UUID_A)).expect("value").expose(), b"v");
    }

    #[tokio::test]
    async fn switching_ephemeral_moves_definition_and_value_on_and_off_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = open(dir.path());
        driver
            .define(&xml(UUID_A, "ephemeral='yes'", ""), 0)
            .await
            .expect("define");
        driver.set_value(uuid(UUID_A), value(b"v")).await.expect("set");
        driver
            .define(&xml(UUID_A, "ephemeral='no'", ""), 0)
            .await
            .expect("persist");
        assert!(driver.store.def_path(UUID_A).exists());
        assert!(driver.store.value_path(UUID_A).exists());
        driver
            .define(&xml(UUID_A, "ephemeral='yes'", ""), 0)
            .await
            .expect("back to memory");
        assert!(!driver.store.def_path(UUID_A).exists());
        assert!(!driver.store.value_path(UUID_A).exists());
        assert_eq!(driver.get_value(&uuid(UUID_A)).expect("value").expose(), b"v");
    }

    #[tokio::test]
    async fn undefine_removes_definition_and_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = open(dir.path());
        driver.define(&xml(UUID_A, "", ""), 0).await.expect("define");
        driver.set_value(uuid(UUID_A), value(b"v")).await.expect("set");
        driver.undefine(uuid(UUID_A)).await.expect("undefine");
        assert!(!driver.store.def_path(UUID_A).exists());
        assert!(!driver.store.value_path(UUID_A).exists());
        assert_eq!(
            driver.undefine(uuid(UUID_A)).await.expect_err("again").code,
            ErrorCode::NoSecret
        );
    }

    #[tokio::test]
    async fn a_changed_key_makes_values_unreadable_but_the_daemon_still_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let driver = open(dir.path());
            driver.define(&xml(UUID_A, "", ""), 0).await.expect("define");
            driver.set_value(uuid(UUID_A), value(b"v")).await.expect("set");
        }
        std::fs::write(
            dir.path().join("lib").join(crypto::KEY_NAME),
            [9u8; crypto::KEY_LEN],
        )
        .expect("new key");
        let driver = open(dir.path());
        let info = driver.lookup(&uuid(UUID_A)).expect("still defined");
        assert!(info.has_value);
        let err = driver.get_value(&uuid(UUID_A)).expect_err("unreadable");
        assert_eq!(err.code, ErrorCode::ReadFailed);
        assert!(err.message.contains("set the value again"), "{}", err.message);
        driver
            .set_value(uuid(UUID_A), value(b"new"))
            .await
            .expect("set again");
        assert_eq!(
            driver.get_value(&uuid(UUID_A)).expect("readable").expose(),
            b"new"
        );
    }

    #[tokio::test]
    async fn a_corrupted_value_file_affects_only_its_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let driver = open(dir.path());
            for u in [UUID_A, UUID_B] {
                driver.define(&xml(u, "", ""), 0).await.expect("define");
                driver.set_value(uuid(u), value(u.as_bytes())).await.expect("set");
            }
        }
        let path = dir.path().join("lib").join(format!("{UUID_A}.value"));
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(&path, bytes).expect("corrupt");
        let driver = open(dir.path());
        assert_eq!(
            driver.get_value(&uuid(UUID_A)).expect_err("corrupt").code,
            ErrorCode::ReadFailed
        );
        assert_eq!(
            driver.get_value(&uuid(UUID_B)).expect("intact").expose(),
            UUID_B.as_bytes()
        );
    }

    #[tokio::test]
    async fn swapped_value_files_do_not_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let driver = open(dir.path());
            for u in [UUID_A, UUID_B] {
                driver.define(&xml(u, "", ""), 0).await.expect("define");
                driver.set_value(uuid(u), value(u.as_bytes())).await.expect("set");
            }
        }
        let a = dir.path().join("lib").join(format!("{UUID_A}.value"));
        let b = dir.path().join("lib").join(format!("{UUID_B}.value"));
        let tmp = dir.path().join("swap");
        std::fs::rename(&a, &tmp).expect("swap");
        std::fs::rename(&b, &a).expect("swap");
        std::fs::rename(&tmp, &b).expect("swap");
        let driver = open(dir.path());
        assert_eq!(
            driver.get_value(&uuid(UUID_A)).expect_err("swapped").code,
            ErrorCode::ReadFailed
        );
        assert_eq!(
            driver.get_value(&uuid(UUID_B)).expect_err("swapped").code,
            ErrorCode::ReadFailed
        );
    }

    #[tokio::test]
    async fn list_flags_filter_by_pairs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = open(dir.path());
        driver
            .define(&xml(UUID_A, "ephemeral='yes' private='no'", ""), 0)
            .await
            .expect("a");
        driver
            .define(&xml(UUID_B, "ephemeral='no' private='yes'", ""), 0)
            .await
            .expect("b");
        let uuids = |flags| -> Vec<String> {
            driver
                .list(flags)
                .expect("list")
                .into_iter()
                .map(|i| i.def.uuid)
                .collect()
        };
        assert_eq!(uuids(0), vec![UUID_B.to_owned(), UUID_A.to_owned()]);
        assert_eq!(uuids(LIST_EPHEMERAL), vec![UUID_A.to_owned()]);
        assert_eq!(uuids(LIST_NO_EPHEMERAL), vec![UUID_B.to_owned()]);
        assert_eq!(uuids(LIST_PRIVATE), vec![UUID_B.to_owned()]);
        assert_eq!(uuids(LIST_NO_PRIVATE | LIST_EPHEMERAL), vec![UUID_A.to_owned()]);
        assert!(uuids(LIST_PRIVATE | LIST_EPHEMERAL).is_empty());
        assert_eq!(uuids(LIST_EPHEMERAL | LIST_NO_EPHEMERAL).len(), 2);
        assert_eq!(
            driver.list(16).expect_err("unknown bit").code,
            ErrorCode::InvalidArg
        );
    }

    #[tokio::test]
    async fn bad_xml_and_unknown_define_flags_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = open(dir.path());
        let err = driver
            .define("<secret><bogus/></secret>", 0)
            .await
            .expect_err("unknown element");
        assert_eq!(err.code, ErrorCode::ConfigUnsupported);
        assert_eq!(err.xml_path.as_deref(), Some("/secret/bogus"));
        let err = driver
            .define("<secret private='perhaps'/>", 0)
            .await
            .expect_err("bad attr");
        assert_eq!(err.code, ErrorCode::XmlError);
        let err = driver.define("<secret/>", 2).await.expect_err("flag");
        assert_eq!(err.code, ErrorCode::InvalidArg);
        driver
            .define("<secret/>", DEFINE_VALIDATE)
            .await
            .expect("validate flag");
    }

    #[tokio::test]
    async fn events_say_what_happened_in_order() {
        use rvirt_daemon::events::Delivery;
        use tokio_stream::StreamExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = open(dir.path());
        let mut watch = Box::pin(driver.events().watch("", 0));
        assert!(matches!(watch.next().await, Some(Delivery::CaughtUp { .. })));
        driver
            .define(&xml(UUID_A, "", &ceph("c")), 0)
            .await
            .expect("define");
        driver.set_value(uuid(UUID_A), value(b"v")).await.expect("set");
        driver.undefine(uuid(UUID_A)).await.expect("undefine");
        let mut got = Vec::new();
        for _ in 0..3 {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next()).await;
            match next.expect("an event in time") {
                Some(Delivery::Event(e)) => got.push((e.sequence, e.event.clone())),
                other => panic!("unexpected {other:?}"),
            }
        }
        let usage = Some(SecretUsage {
            usage_type: SecretUsageType::Ceph,
            id: "c".into(),
        });
        let event = |kind| SecretEvent {
            uuid: UUID_A.into(),
            usage: usage.clone(),
            kind,
        };
        assert_eq!(
            got,
            vec![
                (1, event(SecretEventKind::Defined)),
                (2, event(SecretEventKind::ValueChanged)),
                (3, event(SecretEventKind::Undefined)),
            ]
        );
    }

    #[tokio::test]
    async fn oversized_value_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = open(dir.path());
        driver.define(&xml(UUID_A, "", ""), 0).await.expect("define");
        let err = driver
            .set_value(uuid(UUID_A), SecretValue::new(vec![0; MAX_VALUE_LEN + 1]))
            .await
            .expect_err("too big");
        assert_eq!(err.code, ErrorCode::InvalidArg);
        assert_eq!(
            driver.get_value(&uuid(UUID_A)).expect_err("no value").code,
            ErrorCode::NoSecret
        );
    }

    #[tokio::test]
    async fn lookup_by_bad_uuid_is_an_invalid_argument() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = open(dir.path());
        assert_eq!(
            driver.lookup(&uuid("nope")).expect_err("bad").code,
            ErrorCode::InvalidArg
        );
        assert_eq!(
            driver.lookup(&uuid(UUID_A)).expect_err("missing").code,
            ErrorCode::NoSecret
        );
    }
}
