//! LUKS passphrases for encrypted disks (`<encryption format='luks'><secret type='passphrase'
//! uuid='…'/></encryption>`), as libvirt hands them to QEMU: never in clear.
//!
//! The passphrase comes from virtsecretd's internal path (`GetSecretValueInternal`, with the
//! token virtsecretd writes to `<its state dir>/internal-token` at each start, readable only by
//! root or the daemon's user). A fresh 32-byte master key is written 0600 to
//! `<runtime_dir>/master-key.aes` and given to QEMU as `-object secret,id=masterKey0,file=…`;
//! each passphrase travels AES-256-CBC encrypted (PKCS#7 padding) under that key with a random
//! IV, base64, in `-object secret,id=libvirt-N-format-encryption-secret0,data=…,keyid=masterKey0,
//! iv=…`. The passphrase and the key are wiped from memory after use and never appear in argv,
//! logs or error messages.

use std::path::{Path, PathBuf};

use aes::cipher::{BlockModeEncrypt as _, KeyIvInit as _, block_padding::Pkcs7};
use base64::Engine as _;
use rvirt::Connect;
use rvirt::paths::{BaseDirs, DaemonPaths};
use rvirt_conf::domain::{Device, DomainDef};
use rvirt_proto::v1::secret_service_client::SecretServiceClient;
use rvirt_proto::v1::{ErrorCode, ErrorDomain, GetSecretValueInternalRequest, SecretRef, secret_ref};
use tonic::Status;
use zeroize::Zeroizing;

use super::{Context, fail};
use crate::command::{Resources, SecretObject};

/// The master key's file name in the domain's runtime directory (libvirt's name).
pub const MASTER_KEY_FILE: &str = "master-key.aes";
/// The token file virtsecretd writes in its state directory.
const TOKEN_FILE: &str = "internal-token";
const SERVICE: &str = "rvirt.v1.SecretService";

/// One encrypted disk: its target and the UUID of its passphrase secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuksDisk {
    /// `<target dev>`.
    pub target: String,
    /// `<encryption><secret uuid>`.
    pub secret_uuid: String,
}

/// A 256-bit key that is wiped when dropped.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A random key.
    pub fn generate() -> Result<MasterKey, Status> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut()).map_err(|e| {
            fail(
                ErrorCode::InternalError,
                ErrorDomain::Qemu,
                format!("Cannot generate the domain's master key: {e}"),
            )
        })?;
        Ok(MasterKey(key))
    }

    /// A key with these bytes (tests).
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        MasterKey(Zeroizing::new(bytes))
    }

    /// Writes the key, raw, to `<runtime_dir>/master-key.aes` with mode 0600.
    pub fn write(&self, runtime_dir: &Path) -> Result<PathBuf, Status> {
        let path = runtime_dir.join(MASTER_KEY_FILE);
        rvirt_daemon::atomic::write_atomic(&path, self.0.as_ref(), 0o600).map_err(|e| {
            fail(
                ErrorCode::OperationFailed,
                ErrorDomain::Qemu,
                format!("Cannot write the master key '{}': {e}", path.display()),
            )
        })?;
        Ok(path)
    }

    /// Encrypts `plain` for QEMU under this key with a fresh random IV: (ciphertext, IV).
    pub fn seal(&self, plain: &[u8]) -> Result<(Vec<u8>, [u8; 16]), Status> {
        let mut iv = [0u8; 16];
        getrandom::fill(&mut iv).map_err(|e| {
            fail(
                ErrorCode::InternalError,
                ErrorDomain::Qemu,
                format!("Cannot generate an IV: {e}"),
            )
        })?;
        Ok((encrypt(&self.0, &iv, plain), iv))
    }
}

/// AES-256-CBC with PKCS#7 padding, what QEMU's `secret` object decrypts with `keyid` + `iv`.
pub fn encrypt(key: &[u8; 32], iv: &[u8; 16], plain: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; plain.len() + 16 - plain.len() % 16];
    let n = cbc::Encryptor::<aes::Aes256>::new(key.into(), iv.into())
        .encrypt_padded_b2b::<Pkcs7>(plain, &mut out)
        .map_or(0, <[u8]>::len);
    out.truncate(n);
    out
}

/// The id of a disk's LUKS secret object, as libvirt names it after the disk's format node.
pub fn secret_object_id(node_index: usize) -> String {
    format!("libvirt-{node_index}-format-encryption-secret0")
}

/// The storage node index the command builder gives the disk with `target`: disks are
/// numbered from the last one (`libvirt-1-…` is the last `<disk>`), as libvirt does.
pub fn node_index(def: &DomainDef, target: &str) -> Option<usize> {
    let targets: Vec<&str> = def
        .devices
        .list
        .iter()
        .filter_map(|d| match d {
            Device::Disk(disk) => Some(disk.target.as_str()),
            _ => None,
        })
        .collect();
    let total = targets.len();
    targets.iter().position(|t| *t == target).map(|n| total - n)
}

fn secret_error(disk: &LuksDisk, e: &rvirt::Error) -> Status {
    let what = format!(
        "the passphrase of disk '{}' (secret {})",
        disk.target, disk.secret_uuid
    );
    match e.code {
        ErrorCode::NoSecret => fail(
            ErrorCode::NoSecret,
            ErrorDomain::Secret,
            format!(
                "Secret not found: cannot read {what}: the secret does not exist or has no value: define it and set its value"
            ),
        ),
        ErrorCode::NoConnect => fail(
            ErrorCode::NoConnect,
            ErrorDomain::Secret,
            format!(
                "Cannot read {what}: virtsecretd is not reachable ({}): start virtsecretd",
                e.message
            ),
        ),
        code => fail(
            code,
            ErrorDomain::Secret,
            format!("Cannot read {what}: {}", e.message),
        ),
    }
}

/// Reads the passphrase of `disk` from virtsecretd's internal path.
pub async fn passphrase(
    ctx: &Context,
    conn: &Connect,
    disk: &LuksDisk,
) -> Result<Zeroizing<Vec<u8>>, Status> {
    let base = BaseDirs::new(ctx.mode);
    let paths = DaemonPaths::new(&base, ctx.mode, "virtsecretd", "virtsecretd", "secret");
    let token_path = paths.driver_state_dir.join(TOKEN_FILE);
    let token = Zeroizing::new(std::fs::read_to_string(&token_path).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorCode::NoConnect
        } else {
            ErrorCode::AccessDenied
        };
        secret_error(
            disk,
            &rvirt::Error::new(
                code,
                ErrorDomain::Secret,
                format!("cannot read '{}': {e}", token_path.display()),
            ),
        )
    })?);
    let mut client = SecretServiceClient::new(conn.transport(SERVICE).map_err(|e| secret_error(disk, &e))?);
    let reply = client
        .get_secret_value_internal(GetSecretValueInternalRequest {
            secret: Some(SecretRef {
                key: Some(secret_ref::Key::Uuid(disk.secret_uuid.clone())),
            }),
            token: token.trim().to_owned(),
        })
        .await
        .map_err(|s| secret_error(disk, &rvirt::Error::from(s)))?;
    let value = Zeroizing::new(reply.into_inner().value);
    if value.is_empty() {
        return Err(secret_error(
            disk,
            &rvirt::Error::new(ErrorCode::NoSecret, ErrorDomain::Secret, String::new()),
        ));
    }
    Ok(value)
}

/// Fills `resources.master_key` and `resources.disk_secrets` for `disks`: writes a new master
/// key to `runtime_dir` and encrypts each passphrase under it.
pub async fn prepare(
    ctx: &Context,
    def: &DomainDef,
    runtime_dir: &Path,
    disks: &[LuksDisk],
    resources: &mut Resources,
) -> Result<(), Status> {
    if disks.is_empty() {
        return Ok(());
    }
    let conn = super::open(ctx, "secret")
        .await
        .map_err(|e| secret_error(&disks[0], &e))?;
    let key = MasterKey::generate()?;
    let mut secrets = Vec::with_capacity(disks.len());
    for disk in disks {
        let index = node_index(def, &disk.target).ok_or_else(|| {
            fail(
                ErrorCode::InternalError,
                ErrorDomain::Qemu,
                format!("Disk '{}' is not in the definition", disk.target),
            )
        })?;
        let value = passphrase(ctx, &conn, disk).await?;
        let (data, iv) = key.seal(&value)?;
        let engine = base64::engine::general_purpose::STANDARD;
        secrets.push((
            disk.target.clone(),
            SecretObject {
                id: secret_object_id(index),
                data_base64: engine.encode(data),
                iv_base64: engine.encode(iv),
            },
        ));
    }
    resources.master_key = Some(key.write(runtime_dir)?);
    resources.disk_secrets.extend(secrets);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::BlockModeDecrypt as _;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    // NIST SP 800-38A, F.2.5 (CBC-AES256.Encrypt), first block.
    const KEY: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
    const IV: &str = "000102030405060708090a0b0c0d0e0f";
    const PLAIN: &str = "6bc1bee22e409f96e93d7e117393172a";
    const CIPHER: &str = "f58c4c04d6e5f1ba779eabfb5f7bfbd6";

    #[test]
    fn encrypt_matches_the_nist_cbc_aes256_vector() {
        let key: [u8; 32] = hex(KEY).try_into().expect("key");
        let iv: [u8; 16] = hex(IV).try_into().expect("iv");
        let out = encrypt(&key, &iv, &hex(PLAIN));
        // A whole block of plaintext gets a whole block of PKCS#7 padding.
        assert_eq!(out.len(), 32);
        assert_eq!(out[..16], hex(CIPHER)[..]);
    }

    #[test]
    fn sealed_passphrase_decrypts_back_with_the_key_and_iv() {
        let key = MasterKey::from_bytes([7u8; 32]);
        let (data, iv) = key.seal(b"correct horse battery staple").expect("seal");
        assert_eq!(data.len() % 16, 0);
        assert_ne!(&data[..], &b"correct horse battery staple"[..]);
        let mut buf = data.clone();
        let plain = cbc::Decryptor::<aes::Aes256>::new((&[7u8; 32]).into(), (&iv).into())
            .decrypt_padded::<Pkcs7>(&mut buf)
            .expect("padding");
        assert_eq!(plain, b"correct horse battery staple");
    }

    #[test]
    fn two_seals_use_different_ivs() {
        let key = MasterKey::from_bytes([1u8; 32]);
        let (a, iv_a) = key.seal(b"x").expect("seal");
        let (b, iv_b) = key.seal(b"x").expect("seal");
        assert_ne!(iv_a, iv_b);
        assert_ne!(a, b);
    }

    #[test]
    fn master_key_file_is_private_and_raw() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = MasterKey::from_bytes([9u8; 32]);
        let path = key.write(dir.path()).expect("write");
        assert_eq!(path, dir.path().join("master-key.aes"));
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).expect("read"), vec![9u8; 32]);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = MasterKey::from_bytes([0xabu8; 32]);
        assert_eq!(format!("{key:?} {key:#?}"), "MasterKey(..) MasterKey(..)");
    }

    #[test]
    fn secret_ids_follow_the_builders_node_numbering() {
        let def = DomainDef::parse(
            "<domain type='qemu'><name>d</name><memory>65536</memory><os><type>hvm</type></os>\
             <devices><disk type='file' device='disk'><source file='/a'/><target dev='vda' bus='virtio'/></disk>\
             <disk type='file' device='disk'><source file='/b'/><target dev='vdb' bus='virtio'/></disk></devices></domain>",
            rvirt_conf::domain::ParseFlags::default(),
        );
        let def = match def {
            Ok(def) => def,
            Err(e) => panic!("parse: {e}"),
        };
        assert_eq!(node_index(&def, "vda"), Some(2));
        assert_eq!(node_index(&def, "vdb"), Some(1));
        assert_eq!(node_index(&def, "vdc"), None);
        assert_eq!(secret_object_id(2), "libvirt-2-format-encryption-secret0");
    }

    fn tool(name: &str) -> bool {
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
    }

    /// QEMU itself decrypts what [`MasterKey::seal`] produced: a LUKS image created with the
    /// sealed secret object opens with the passphrase in clear, and not with another.
    #[test]
    fn qemu_decrypts_the_sealed_passphrase() {
        if !tool("qemu-img") || !tool("qemu-io") {
            eprintln!("skipped: qemu-img or qemu-io is not installed");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let key = MasterKey::generate().expect("key");
        let key_path = key.write(dir.path()).expect("write key");
        let (data, iv) = key.seal(b"s3cret-pass").expect("seal");
        let engine = base64::engine::general_purpose::STANDARD;
        let image = dir.path().join("luks.img");
        let out = std::process::Command::new("qemu-img")
            .arg("create")
            .arg("--object")
            .arg(format!(
                "secret,id=masterKey0,format=raw,file={}",
                key_path.display()
            ))
            .arg("--object")
            .arg(format!(
                "secret,id=sec0,data={},keyid=masterKey0,iv={},format=base64",
                engine.encode(&data),
                engine.encode(iv)
            ))
            .args(["-f", "luks", "-o", "key-secret=sec0,iter-time=10"])
            .arg(&image)
            .arg("1M")
            .output()
            .expect("run qemu-img");
        assert!(
            out.status.success(),
            "qemu-img create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let opens = |passphrase: &str| {
            std::process::Command::new("qemu-io")
                .arg("--object")
                .arg(format!("secret,id=s,data={passphrase}"))
                .arg("--image-opts")
                .arg(format!(
                    "driver=luks,key-secret=s,file.filename={}",
                    image.display()
                ))
                .args(["-c", "read 0 512"])
                .output()
                .expect("run qemu-io")
        };
        let good = opens("s3cret-pass");
        assert!(
            good.status.success() && !String::from_utf8_lossy(&good.stderr).contains("Invalid"),
            "qemu-io with the passphrase: {}",
            String::from_utf8_lossy(&good.stderr)
        );
        let bad = opens("not-the-pass");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&bad.stdout),
            String::from_utf8_lossy(&bad.stderr)
        );
        assert!(
            said.contains("Invalid password"),
            "another passphrase is refused: {said}"
        );
    }

    #[test]
    fn secret_errors_never_carry_values_and_keep_codes() {
        let disk = LuksDisk {
            target: "vda".into(),
            secret_uuid: "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f".into(),
        };
        let e = rvirt::Error::new(ErrorCode::NoSecret, ErrorDomain::Secret, "gone");
        let detail = rvirt_proto::error::from_status(&secret_error(&disk, &e));
        assert_eq!(detail.code(), ErrorCode::NoSecret);
        assert!(detail.message.contains("'vda'"), "{}", detail.message);
        assert!(detail.message.contains(&disk.secret_uuid), "{}", detail.message);
    }
}
