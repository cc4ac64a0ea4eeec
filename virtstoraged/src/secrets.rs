//! Passphrases of encrypted volumes (`<encryption format='luks'><secret type='passphrase'
//! uuid='…'/></encryption>`) and the key files `qemu-img` reads them from.
//!
//! A passphrase comes from virtsecretd's internal path, as virtqemud gets its disk passphrases:
//! `GetSecretValueInternal` over a direct-mode connection, with the token virtsecretd writes to
//! `<its state dir>/internal-token` at each start (readable only by root or the daemon's user).
//! It is handed to `qemu-img` as `--object secret,id=sec0,file=<key file>`: a file created
//! exclusively with mode 0600 in `<virtstoraged state dir>/keys/` (a 0700 directory) and removed
//! as soon as `qemu-img` has finished, so the passphrase never appears on a command line, in a
//! log or in an error message. Values are wiped from memory after use.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rvirt::connect::GrpcTransport;
use rvirt::paths::{BaseDirs, DaemonPaths, Mode};
use rvirt::{Connect, OpenOptions as ConnectOptions};
use rvirt_conf::storage::EncryptionSecret;
use rvirt_proto::v1::secret_service_client::SecretServiceClient;
use rvirt_proto::v1::{
    ErrorCode, GetSecretValueInternalRequest, LookupSecretRequest, SecretRef, SecretUsage, SecretUsageType,
    secret_ref,
};
use zeroize::Zeroizing;

use crate::error::{Result, StorageError};

/// The token file virtsecretd writes in its state directory.
const TOKEN_FILE: &str = "internal-token";
const SERVICE: &str = "rvirt.v1.SecretService";
const CALL_DEADLINE: Duration = Duration::from_secs(30);

/// Where passphrases come from (a seam so the driver can be tested without virtsecretd).
#[tonic::async_trait]
pub trait SecretSource: Send + Sync + std::fmt::Debug + 'static {
    /// The value of the passphrase secret `secret` names.
    async fn passphrase(&self, secret: &EncryptionSecret) -> Result<Zeroizing<Vec<u8>>>;

    /// The UUID of the secret whose usage is the volume at `path` (`<usage type='volume'>
    /// <volume>PATH</volume></usage>`), as libvirt finds the passphrase of an encrypted volume
    /// that a refresh or a daemon restart found on disk. `None` when there is no such secret or
    /// the secret daemon cannot be asked (the volume then stays without a known passphrase, as
    /// in libvirt).
    async fn volume_secret(&self, path: &str) -> Option<String>;
}

/// How the secret is named in messages: `with UUID …` or `for volume usage …`.
pub fn describe(secret: &EncryptionSecret) -> String {
    match (&secret.uuid, &secret.usage) {
        (Some(uuid), _) => format!("with UUID {uuid}"),
        (None, Some(usage)) => format!("with volume usage '{usage}'"),
        (None, None) => "without UUID or usage".to_owned(),
    }
}

/// virtsecretd of the same mode (system or session), through its internal path.
#[derive(Debug, Clone, Copy)]
pub struct VirtSecretd {
    mode: Mode,
}

impl VirtSecretd {
    /// virtsecretd of `mode`.
    pub fn new(mode: Mode) -> Self {
        VirtSecretd { mode }
    }
}

fn secret_error(secret: &EncryptionSecret, code: ErrorCode, detail: &str) -> StorageError {
    let what = format!("the passphrase secret {}", describe(secret));
    let message = match code {
        ErrorCode::NoSecret => format!(
            "Secret not found: cannot read {what}: the secret does not exist or has no value: define it and set its value"
        ),
        ErrorCode::NoConnect => {
            format!("Cannot read {what}: virtsecretd is not reachable ({detail}): start virtsecretd")
        }
        _ => format!("Cannot read {what}: {detail}"),
    };
    StorageError::new(code, message)
}

impl VirtSecretd {
    /// A client of virtsecretd (direct mode) and the token of its internal path.
    async fn client(
        &self,
    ) -> std::result::Result<(SecretServiceClient<GrpcTransport>, Zeroizing<String>), (ErrorCode, String)>
    {
        let base = BaseDirs::new(self.mode);
        let paths = DaemonPaths::new(&base, self.mode, "virtsecretd", "virtsecretd", "secret");
        let token_path = paths.driver_state_dir.join(TOKEN_FILE);
        let token = Zeroizing::new(std::fs::read_to_string(&token_path).map_err(|e| {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorCode::NoConnect
            } else {
                ErrorCode::AccessDenied
            };
            (code, format!("cannot read '{}': {e}", token_path.display()))
        })?);
        let uri = rvirt::uri::ConnectUri::parse(&format!("secret:///{}?mode=direct", self.mode.as_str()))
            .map_err(|e| (ErrorCode::InternalError, e.message))?;
        let conn = Connect::open_with(
            uri,
            ConnectOptions {
                read_only: false,
                deadline: CALL_DEADLINE,
                autostart: true,
            },
        )
        .await
        .map_err(|e| (ErrorCode::NoConnect, e.message))?;
        let transport = conn.transport(SERVICE).map_err(|e| (e.code, e.message))?;
        Ok((SecretServiceClient::new(transport), token))
    }
}

#[tonic::async_trait]
impl SecretSource for VirtSecretd {
    async fn passphrase(&self, secret: &EncryptionSecret) -> Result<Zeroizing<Vec<u8>>> {
        let key = match (&secret.uuid, &secret.usage) {
            (Some(uuid), _) => secret_ref::Key::Uuid(uuid.clone()),
            (None, Some(usage)) => secret_ref::Key::Usage(SecretUsage {
                usage_type: SecretUsageType::Volume as i32,
                usage_id: usage.clone(),
            }),
            (None, None) => {
                return Err(secret_error(
                    secret,
                    ErrorCode::InvalidArg,
                    "name it with uuid= or usage=",
                ));
            }
        };
        let (mut client, token) = self
            .client()
            .await
            .map_err(|(code, detail)| secret_error(secret, code, &detail))?;
        let reply = client
            .get_secret_value_internal(GetSecretValueInternalRequest {
                secret: Some(SecretRef { key: Some(key) }),
                token: token.trim().to_owned(),
            })
            .await
            .map_err(|s| {
                let e = rvirt::Error::from(s);
                secret_error(secret, e.code, &e.message)
            })?;
        let value = Zeroizing::new(reply.into_inner().value);
        if value.is_empty() {
            return Err(secret_error(secret, ErrorCode::NoSecret, ""));
        }
        Ok(value)
    }

    async fn volume_secret(&self, path: &str) -> Option<String> {
        let (mut client, _token) = match self.client().await {
            Ok(c) => c,
            Err((_, detail)) => {
                tracing::warn!(volume = path, error = %detail, "cannot look up the secret of an encrypted volume");
                return None;
            }
        };
        let key = secret_ref::Key::Usage(SecretUsage {
            usage_type: SecretUsageType::Volume as i32,
            usage_id: path.to_owned(),
        });
        match client
            .lookup_secret(LookupSecretRequest {
                secret: Some(SecretRef { key: Some(key) }),
            })
            .await
        {
            Ok(reply) => reply.into_inner().secret.map(|s| s.uuid),
            Err(status) => {
                let e = rvirt::Error::from(status);
                if e.code != ErrorCode::NoSecret {
                    tracing::warn!(volume = path, error = %e.message, "cannot look up the secret of an encrypted volume");
                }
                None
            }
        }
    }
}

/// Passphrases given up front (tests).
#[derive(Debug, Default)]
pub struct FixedSecrets {
    /// (UUID or usage, value).
    pub values: Vec<(String, Vec<u8>)>,
    /// (volume path, UUID): the secrets whose usage is a volume.
    pub volumes: Vec<(String, String)>,
}

#[tonic::async_trait]
impl SecretSource for FixedSecrets {
    async fn passphrase(&self, secret: &EncryptionSecret) -> Result<Zeroizing<Vec<u8>>> {
        let name = secret.uuid.as_ref().or(secret.usage.as_ref());
        self.values
            .iter()
            .find(|(n, _)| Some(n) == name)
            .map(|(_, v)| Zeroizing::new(v.clone()))
            .ok_or_else(|| secret_error(secret, ErrorCode::NoSecret, ""))
    }

    async fn volume_secret(&self, path: &str) -> Option<String> {
        self.volumes
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, uuid)| uuid.clone())
    }
}

/// A passphrase in a private file for `qemu-img --object secret,file=…`; the file is removed
/// when this is dropped.
#[derive(Debug)]
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    /// Writes `value` to a new file with mode 0600 in `dir` (created 0700 if missing).
    pub fn write(dir: &Path, value: &[u8]) -> Result<KeyFile> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| StorageError::io(format!("Cannot create {}", dir.display()), &e))?;
        let mut name = [0u8; 16];
        getrandom::fill(&mut name)
            .map_err(|e| StorageError::internal(format!("Cannot name a key file: {e}")))?;
        let name: String = name.iter().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(format!("{name}.key"));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| StorageError::io(format!("Cannot create key file {}", path.display()), &e))?;
        let key = KeyFile { path };
        file.write_all(value)
            .and_then(|()| file.flush())
            .map_err(|e| StorageError::io(format!("Cannot write key file {}", key.path.display()), &e))?;
        Ok(key)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a key file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn key_file_is_private_and_removed_when_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = dir.path().join("keys");
        let key = KeyFile::write(&keys, b"pass").expect("write");
        let mode = std::fs::metadata(key.path()).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&keys).expect("stat").permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(std::fs::read(key.path()).expect("read"), b"pass");
        let path = key.path().to_owned();
        drop(key);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn missing_secret_is_no_secret_and_names_it() {
        let source = FixedSecrets::default();
        let err = source
            .passphrase(&EncryptionSecret {
                r#type: "passphrase".into(),
                uuid: Some("f52a81b2-424e-490c-823d-6bd4235bc572".into()),
                usage: None,
            })
            .await
            .expect_err("missing");
        assert_eq!(err.code, ErrorCode::NoSecret);
        assert!(err.message.contains("f52a81b2"), "{}", err.message);
    }
}
