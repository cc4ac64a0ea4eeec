//! Encryption of values at rest: XChaCha20-Poly1305 under one 32-byte master key.
//!
//! A sealed value is `version (1) ‖ nonce (24) ‖ ciphertext ‖ tag (16)`. The associated data is
//! the version byte and the secret's UUID, so a sealed value only opens as the value of the
//! secret it was sealed for: swapping two `.value` files, or renaming one, makes both unreadable
//! instead of silently exchanging them. Each seal draws a fresh random nonce from the OS.
//!
//! The master key is the systemd credential `secrets-encryption-key`
//! (`$CREDENTIALS_DIRECTORY/secrets-encryption-key`) when there is one, else the key file
//! `<driver_data_dir>/secrets-encryption-key`, created 0600 from the OS random source on first
//! start. Either holds exactly 32 raw bytes.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::value::SecretValue;

/// The format version this daemon writes (the first byte of a sealed value).
pub const FORMAT_V1: u8 = 1;
/// The name of the credential and of the key file.
pub const KEY_NAME: &str = "secrets-encryption-key";
/// The master key's length.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Why a sealed value does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Too short, or written by a format this daemon does not know.
    #[error("the value file is truncated or in an unknown format")]
    Format,
    /// The tag does not verify: another key, another secret's file, or corrupted bytes.
    #[error(
        "the value does not decrypt with the current encryption key (the key changed, or the file is corrupted or belongs to another secret)"
    )]
    Authentication,
}

/// Where the master key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The systemd credential at this path.
    Credential(PathBuf),
    /// The key file at this path, which existed.
    KeyFile(PathBuf),
    /// The key file at this path, created now.
    NewKeyFile(PathBuf),
}

/// The master key, ready to seal and open values. The key schedule is wiped on drop.
pub struct MasterKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

fn associated_data(version: u8, uuid: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + uuid.len());
    aad.push(version);
    aad.extend_from_slice(uuid.as_bytes());
    aad
}

impl MasterKey {
    /// A key from exactly [`KEY_LEN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<MasterKey, String> {
        let key = <&Key>::try_from(bytes).map_err(|_| {
            format!(
                "the key has {} bytes; it must have exactly {KEY_LEN}",
                bytes.len()
            )
        })?;
        Ok(MasterKey {
            cipher: XChaCha20Poly1305::new(key),
        })
    }

    /// Seals `value` for the secret `uuid`.
    pub fn seal(&self, uuid: &str, value: &SecretValue) -> Result<Vec<u8>, String> {
        let mut nonce_bytes = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce_bytes).map_err(|e| format!("the OS random source failed: {e}"))?;
        let nonce = XNonce::from(nonce_bytes);
        // Room for the tag up front, so that encrypting never reallocates and leaves a copy of
        // the clear value in freed memory.
        let mut buffer = SecretValue::with_capacity(value.len() + TAG_LEN);
        buffer.buffer_mut().extend_from_slice(value.expose());
        self.cipher
            .encrypt_in_place(&nonce, &associated_data(FORMAT_V1, uuid), buffer.buffer_mut())
            .map_err(|_| "the value could not be encrypted".to_owned())?;
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + buffer.len());
        sealed.push(FORMAT_V1);
        sealed.extend_from_slice(&nonce_bytes);
        sealed.extend_from_slice(buffer.expose());
        Ok(sealed)
    }

    /// Opens a value sealed for the secret `uuid`.
    pub fn open(&self, uuid: &str, sealed: &[u8]) -> Result<SecretValue, OpenError> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != FORMAT_V1 {
            return Err(OpenError::Format);
        }
        let nonce = <&XNonce>::try_from(&sealed[1..1 + NONCE_LEN]).map_err(|_| OpenError::Format)?;
        let ciphertext = &sealed[1 + NONCE_LEN..];
        let mut buffer = SecretValue::with_capacity(ciphertext.len());
        buffer.buffer_mut().extend_from_slice(ciphertext);
        self.cipher
            .decrypt_in_place(nonce, &associated_data(FORMAT_V1, uuid), buffer.buffer_mut())
            .map_err(|_| OpenError::Authentication)?;
        Ok(buffer)
    }
}

fn read_key(path: &Path) -> Result<MasterKey, String> {
    let bytes = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| format!("cannot read the secrets encryption key {}: {e}", path.display()))?,
    );
    MasterKey::from_bytes(&bytes).map_err(|e| {
        format!(
            "the secrets encryption key {} is not usable: {e} (for example `head -c 32 /dev/urandom`)",
            path.display()
        )
    })
}

/// Loads the master key: the systemd credential when `credentials_dir` has one, else the key
/// file in `data_dir`, created on first start.
pub fn load_master_key(
    credentials_dir: Option<&Path>,
    data_dir: &Path,
) -> Result<(MasterKey, KeySource), String> {
    if let Some(dir) = credentials_dir {
        let path = dir.join(KEY_NAME);
        if path.exists() {
            return Ok((read_key(&path)?, KeySource::Credential(path)));
        }
    }
    let path = data_dir.join(KEY_NAME);
    match std::fs::metadata(&path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "the secrets encryption key file is readable by other users: chmod 600 it"
                );
            }
            Ok((read_key(&path)?, KeySource::KeyFile(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
            getrandom::fill(&mut *bytes).map_err(|e| format!("the OS random source failed: {e}"))?;
            create_key_file(&path, &*bytes)
                .map_err(|e| format!("cannot create the secrets encryption key {}: {e}", path.display()))?;
            Ok((MasterKey::from_bytes(&*bytes)?, KeySource::NewKeyFile(path)))
        }
        Err(e) => Err(format!(
            "cannot read the secrets encryption key {}: {e}",
            path.display()
        )),
    }
}

/// Creates the key file 0600 without ever replacing one: written to a temporary file, then
/// linked into place (which fails if a key file appeared meanwhile).
fn create_key_file(path: &Path, key: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("the key path has no directory"))?;
    let tmp = dir.join(format!(".{KEY_NAME}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(key)?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// A new random token for the internal path: 32 bytes from the OS, in hexadecimal.
pub fn new_token() -> Result<Zeroizing<String>, String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut *bytes).map_err(|e| format!("the OS random source failed: {e}"))?;
    let mut text = Zeroizing::new(String::with_capacity(64));
    for b in bytes.iter() {
        text.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        text.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    Ok(text)
}

/// Compares two byte strings in time that depends on their lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID_A: &str = "f52a81b2-424e-490c-823d-6bd4235bc572";
    const UUID_B: &str = "27f25d34-aea6-4e2a-be85-fa2c18380be8";

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes(&[byte; KEY_LEN]).expect("key")
    }

    #[test]
    fn sealed_value_opens_to_the_same_bytes_and_hides_them() {
        let value = SecretValue::new(b"correct horse battery staple".to_vec());
        let sealed = key(1).seal(UUID_A, &value).expect("seal");
        assert_eq!(sealed[0], FORMAT_V1);
        assert_eq!(sealed.len(), 1 + NONCE_LEN + value.len() + TAG_LEN);
        assert!(!sealed.windows(5).any(|w| w == b"horse"));
        assert_eq!(key(1).open(UUID_A, &sealed).expect("open"), value);
    }

    #[test]
    fn each_seal_uses_a_new_nonce() {
        let value = SecretValue::new(b"same".to_vec());
        assert_ne!(
            key(1).seal(UUID_A, &value).expect("seal"),
            key(1).seal(UUID_A, &value).expect("seal")
        );
    }

    #[test]
    fn another_key_does_not_open() {
        let sealed = key(1)
            .seal(UUID_A, &SecretValue::new(b"v".to_vec()))
            .expect("seal");
        assert_eq!(key(2).open(UUID_A, &sealed), Err(OpenError::Authentication));
    }

    #[test]
    fn a_value_sealed_for_another_secret_does_not_open() {
        let sealed = key(1)
            .seal(UUID_A, &SecretValue::new(b"v".to_vec()))
            .expect("seal");
        assert_eq!(key(1).open(UUID_B, &sealed), Err(OpenError::Authentication));
    }

    #[test]
    fn flipped_bit_truncation_and_unknown_version_do_not_open() {
        let sealed = key(1)
            .seal(UUID_A, &SecretValue::new(b"value".to_vec()))
            .expect("seal");
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(key(1).open(UUID_A, &flipped), Err(OpenError::Authentication));
        assert_eq!(key(1).open(UUID_A, &sealed[..20]), Err(OpenError::Format));
        let mut version = sealed.clone();
        version[0] = 2;
        assert_eq!(key(1).open(UUID_A, &version), Err(OpenError::Format));
    }

    #[test]
    fn empty_value_round_trips() {
        let sealed = key(1).seal(UUID_A, &SecretValue::default()).expect("seal");
        assert!(key(1).open(UUID_A, &sealed).expect("open").is_empty());
    }

    #[test]
    fn key_of_the_wrong_length_is_refused() {
        assert!(MasterKey::from_bytes(&[0u8; 31]).is_err());
        assert!(MasterKey::from_bytes(&[0u8; 33]).is_err());
    }

    #[test]
    fn key_file_is_created_once_with_mode_0600_and_then_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, source) = load_master_key(None, dir.path()).expect("create");
        assert_eq!(source, KeySource::NewKeyFile(dir.path().join(KEY_NAME)));
        let meta = std::fs::metadata(dir.path().join(KEY_NAME)).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_LEN as u64);
        let sealed = first
            .seal(UUID_A, &SecretValue::new(b"v".to_vec()))
            .expect("seal");
        let (second, source) = load_master_key(None, dir.path()).expect("reuse");
        assert!(matches!(source, KeySource::KeyFile(_)));
        assert_eq!(second.open(UUID_A, &sealed).expect("open").expose(), b"v");
        let leftovers = std::fs::read_dir(dir.path()).expect("ls").count();
        assert_eq!(leftovers, 1, "a temporary file was left behind");
    }

    #[test]
    fn credential_wins_over_the_key_file() {
        let data = tempfile::tempdir().expect("tempdir");
        let creds = tempfile::tempdir().expect("tempdir");
        std::fs::write(creds.path().join(KEY_NAME), [7u8; KEY_LEN]).expect("credential");
        let (loaded, source) = load_master_key(Some(creds.path()), data.path()).expect("load");
        assert!(matches!(source, KeySource::Credential(_)));
        assert!(
            !data.path().join(KEY_NAME).exists(),
            "no key file when a credential exists"
        );
        let sealed = key(7)
            .seal(UUID_A, &SecretValue::new(b"v".to_vec()))
            .expect("seal");
        assert!(loaded.open(UUID_A, &sealed).is_ok());
    }

    #[test]
    fn credential_directory_without_the_key_falls_back_to_the_key_file() {
        let data = tempfile::tempdir().expect("tempdir");
        let creds = tempfile::tempdir().expect("tempdir");
        let (_, source) = load_master_key(Some(creds.path()), data.path()).expect("load");
        assert!(matches!(source, KeySource::NewKeyFile(_)));
    }

    #[test]
    fn malformed_credential_is_an_error() {
        let data = tempfile::tempdir().expect("tempdir");
        let creds = tempfile::tempdir().expect("tempdir");
        std::fs::write(creds.path().join(KEY_NAME), b"short").expect("credential");
        let err = load_master_key(Some(creds.path()), data.path()).expect_err("short key");
        assert!(err.contains("exactly 32"), "{err}");
    }

    #[test]
    fn tokens_are_random_hex() {
        let a = new_token().expect("token");
        let b = new_token().expect("token");
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(*a, *b);
        assert!(constant_time_eq(a.as_bytes(), a.as_bytes()));
        assert!(!constant_time_eq(a.as_bytes(), b.as_bytes()));
        assert!(!constant_time_eq(b"ab", b"abc"));
    }
}
