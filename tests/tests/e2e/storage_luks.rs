//! Encrypted volumes end to end: virtsecretd holds the passphrase, virtstoraged creates LUKS
//! volumes (qcow2 with LUKS encryption, raw LUKS) with it through virtsecretd's internal path,
//! and QEMU's own tools open them with that passphrase and not with another.

use std::path::{Path, PathBuf};
use std::process::Command;

use rvirt_e2e::{DaemonProcess, TestRoot, channel};
use rvirt_proto::error::from_status;
use rvirt_proto::v1::secret_service_client::SecretServiceClient;
use rvirt_proto::v1::storage_pool_service_client::StoragePoolServiceClient;
use rvirt_proto::v1::storage_vol_service_client::StorageVolServiceClient;
use rvirt_proto::v1::*;
use tonic::transport::Channel;

const SECRET: &str = "f52a81b2-424e-490c-823d-6bd4235bc572";
const PASSPHRASE: &str = "luks-e2e-passphrase";

struct Env {
    root: TestRoot,
    _secretd: DaemonProcess,
    storaged: DaemonProcess,
    pools: StoragePoolServiceClient<Channel>,
    vols: StorageVolServiceClient<Channel>,
    pool_dir: PathBuf,
}

fn pool_ref() -> Option<StoragePoolRef> {
    Some(StoragePoolRef {
        key: Some(storage_pool_ref::Key::Name("p".into())),
    })
}

fn vol_ref(name: &str) -> Option<StorageVolRef> {
    Some(StorageVolRef {
        key: Some(storage_vol_ref::Key::PoolAndName(StorageVolByName {
            pool: pool_ref(),
            name: name.into(),
        })),
    })
}

/// Both daemons on one root, the passphrase secret defined with its value, and a running dir
/// pool `p`.
async fn env() -> Env {
    let root = TestRoot::new();
    let secretd = DaemonProcess::start("virtsecretd", &root).await;
    let storaged = DaemonProcess::start("virtstoraged", &root).await;
    let mut secrets = SecretServiceClient::new(channel(&root.socket("virtsecretd-sock")).await);
    secrets
        .define_secret_xml(DefineSecretXmlRequest {
            xml: format!(
                "<secret ephemeral='no' private='yes'><uuid>{SECRET}</uuid>\
                 <usage type='volume'><volume>/luks</volume></usage></secret>"
            ),
            flags: 0,
        })
        .await
        .expect("define the secret");
    secrets
        .set_secret_value(SetSecretValueRequest {
            secret: Some(SecretRef {
                key: Some(secret_ref::Key::Uuid(SECRET.to_owned())),
            }),
            value: PASSPHRASE.as_bytes().to_vec(),
        })
        .await
        .expect("set the passphrase");
    let ch = channel(&root.socket("virtstoraged-sock")).await;
    let mut pools = StoragePoolServiceClient::new(ch.clone());
    let vols = StorageVolServiceClient::new(ch);
    let pool_dir = root.path().join("pools/p");
    pools
        .define_storage_pool_xml(DefineStoragePoolXmlRequest {
            xml: format!(
                "<pool type='dir'><name>p</name><target><path>{}</path></target></pool>",
                pool_dir.display()
            ),
            flags: 0,
        })
        .await
        .expect("define the pool");
    pools
        .build_storage_pool(BuildStoragePoolRequest {
            pool: pool_ref(),
            flags: 0,
        })
        .await
        .expect("build the pool");
    pools
        .start_storage_pool(StartStoragePoolRequest {
            pool: pool_ref(),
            flags: 0,
        })
        .await
        .expect("start the pool");
    Env {
        root,
        _secretd: secretd,
        storaged,
        pools,
        vols,
        pool_dir,
    }
}

fn encrypted_vol(name: &str, format: &str, encryption_format: &str, secret: &str) -> String {
    format!(
        "<volume><name>{name}</name><capacity unit='MiB'>16</capacity><allocation>0</allocation>\
         <target><format type='{format}'/><encryption format='{encryption_format}'>\
         <secret type='passphrase' uuid='{secret}'/></encryption></target></volume>"
    )
}

async fn create(env: &mut Env, xml: String) -> Result<StorageVol, tonic::Status> {
    env.vols
        .create_storage_vol_xml(CreateStorageVolXmlRequest {
            pool: pool_ref(),
            xml,
            flags: 0,
        })
        .await
        .map(|r| r.into_inner().vol.expect("vol"))
}

fn qemu_img_info(path: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .expect("run qemu-img info");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("qemu-img info JSON")
}

/// Whether qemu-io opens `path` (image options `driver`) with `passphrase` and reads from it.
fn opens_with(path: &Path, driver: &str, passphrase: &str) -> bool {
    let key = if driver == "qcow2" {
        "encrypt.key-secret"
    } else {
        "key-secret"
    };
    let out = Command::new("qemu-io")
        .arg("--object")
        .arg(format!("secret,id=s,data={passphrase}"))
        .arg("--image-opts")
        .arg(format!(
            "driver={driver},{key}=s,file.filename={}",
            path.display()
        ))
        .args(["-c", "read 0 512"])
        .output()
        .expect("run qemu-io");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success() && said.contains("read 512/512") && !said.contains("Invalid password")
}

fn key_files_left(root: &TestRoot) -> Vec<PathBuf> {
    std::fs::read_dir(root.run_dir().join("storage/keys"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

async fn vol_xml(env: &mut Env, name: &str) -> String {
    env.vols
        .get_storage_vol_xml(GetStorageVolXmlRequest { vol: vol_ref(name) })
        .await
        .expect("volume XML")
        .into_inner()
        .xml
}

#[tokio::test]
async fn encrypted_qcow2_volume_opens_with_the_passphrase_from_virtsecretd() {
    let mut env = env().await;
    create(&mut env, encrypted_vol("enc.qcow2", "qcow2", "luks", SECRET))
        .await
        .expect("create the encrypted volume");
    let path = env.pool_dir.join("enc.qcow2");
    let info = qemu_img_info(&path);
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["encrypted"], true, "{info}");
    assert_eq!(info["virtual-size"], 16 << 20, "{info}");
    assert_eq!(
        info["format-specific"]["data"]["encrypt"]["format"], "luks",
        "{info}"
    );
    assert!(opens_with(&path, "qcow2", PASSPHRASE), "the passphrase opens it");
    assert!(
        !opens_with(&path, "qcow2", "another-passphrase"),
        "another does not"
    );
    assert!(
        key_files_left(&env.root).is_empty(),
        "{:?}",
        key_files_left(&env.root)
    );
    let xml = vol_xml(&mut env, "enc.qcow2").await;
    assert!(
        xml.contains("<encryption format=\"luks\">") || xml.contains("<encryption format='luks'>"),
        "{xml}"
    );
    assert!(xml.contains(SECRET), "{xml}");
}

#[tokio::test]
async fn encrypted_raw_volume_is_a_luks_image_of_the_requested_size() {
    let mut env = env().await;
    create(&mut env, encrypted_vol("enc.img", "raw", "luks", SECRET))
        .await
        .expect("create the encrypted volume");
    let path = env.pool_dir.join("enc.img");
    let info = qemu_img_info(&path);
    assert_eq!(info["format"], "luks", "{info}");
    assert_eq!(info["virtual-size"], 16 << 20, "{info}");
    assert!(opens_with(&path, "luks", PASSPHRASE), "the passphrase opens it");
    assert!(
        !opens_with(&path, "luks", "another-passphrase"),
        "another does not"
    );
    // The volume is reported as libvirt does: raw, encrypted, with the payload's capacity.
    let info = env
        .vols
        .get_storage_vol_info(GetStorageVolInfoRequest {
            vol: vol_ref("enc.img"),
        })
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.capacity_bytes, 16 << 20, "{info:?}");
    let xml = vol_xml(&mut env, "enc.img").await;
    assert!(
        xml.contains("type=\"raw\"") || xml.contains("type='raw'"),
        "{xml}"
    );
    assert!(xml.contains("encryption"), "{xml}");
}

#[tokio::test]
async fn a_refresh_still_reports_an_encrypted_raw_volume_as_raw_luks() {
    let mut env = env().await;
    create(&mut env, encrypted_vol("enc.img", "raw", "luks", SECRET))
        .await
        .expect("create the encrypted volume");
    env.pools
        .refresh_storage_pool(RefreshStoragePoolRequest { pool: pool_ref() })
        .await
        .expect("refresh");
    let xml = vol_xml(&mut env, "enc.img").await;
    assert!(
        xml.contains("type=\"raw\"") || xml.contains("type='raw'"),
        "{xml}"
    );
    assert!(xml.contains(SECRET), "the secret is kept across a refresh: {xml}");
    assert!(
        xml.contains(&format!(">{}<", 16u64 << 20)),
        "capacity is the payload's: {xml}"
    );
}

#[tokio::test]
async fn wiping_an_encrypted_volume_leaves_an_empty_image_with_the_same_passphrase() {
    let mut env = env().await;
    create(&mut env, encrypted_vol("enc.qcow2", "qcow2", "luks", SECRET))
        .await
        .expect("create the encrypted volume");
    let path = env.pool_dir.join("enc.qcow2");
    let before = qemu_img_info(&path)["format-specific"]["data"]["encrypt"]["slots"].clone();
    env.vols
        .wipe_storage_vol(WipeStorageVolRequest {
            vol: vol_ref("enc.qcow2"),
            algorithm: StorageVolWipeAlgorithm::Random as i32,
            flags: 0,
        })
        .await
        .expect("wipe");
    let info = qemu_img_info(&path);
    assert_eq!(info["encrypted"], true, "{info}");
    assert_ne!(
        info["format-specific"]["data"]["encrypt"]["slots"], before,
        "a new LUKS header (new salts)"
    );
    assert!(opens_with(&path, "qcow2", PASSPHRASE));
    assert!(key_files_left(&env.root).is_empty());
}

#[tokio::test]
async fn an_unknown_secret_is_no_secret_and_leaves_nothing_behind() {
    let mut env = env().await;
    let err = create(
        &mut env,
        encrypted_vol(
            "enc.qcow2",
            "qcow2",
            "luks",
            "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f",
        ),
    )
    .await
    .expect_err("no such secret");
    assert_eq!(from_status(&err).code(), ErrorCode::NoSecret, "{}", err.message());
    assert!(err.message().contains("0a81f5b2"), "{}", err.message());
    assert!(!env.pool_dir.join("enc.qcow2").exists());
    assert!(key_files_left(&env.root).is_empty());
}

#[tokio::test]
async fn encryption_formats_other_than_luks_are_refused_as_unsupported() {
    let mut env = env().await;
    let err = create(&mut env, encrypted_vol("old.qcow2", "qcow2", "qcow", SECRET))
        .await
        .expect_err("qcow encryption");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::ConfigUnsupported,
        "{}",
        err.message()
    );
    assert!(err.message().contains("'qcow'"), "{}", err.message());
    assert!(!env.pool_dir.join("old.qcow2").exists());
}

async fn resize(env: &mut Env, name: &str, capacity: u64, flags: u32) -> Result<(), tonic::Status> {
    env.vols
        .resize_storage_vol(ResizeStorageVolRequest {
            vol: vol_ref(name),
            capacity_bytes: capacity,
            flags,
        })
        .await
        .map(|_| ())
}

async fn capacity(env: &mut Env, name: &str) -> u64 {
    env.vols
        .get_storage_vol_info(GetStorageVolInfoRequest { vol: vol_ref(name) })
        .await
        .expect("volume info")
        .into_inner()
        .capacity_bytes
}

#[tokio::test]
async fn encrypted_volumes_resize_their_payload_and_keep_their_passphrase() {
    let mut env = env().await;
    for (name, format) in [("enc.img", "raw"), ("enc.qcow2", "qcow2")] {
        create(&mut env, encrypted_vol(name, format, "luks", SECRET))
            .await
            .expect("create the encrypted volume");
        resize(&mut env, name, 32 << 20, 0).await.expect("grow");
        assert_eq!(
            capacity(&mut env, name).await,
            32 << 20,
            "{name}: the payload grew"
        );
        let driver = if format == "raw" { "luks" } else { "qcow2" };
        assert!(opens_with(&env.pool_dir.join(name), driver, PASSPHRASE), "{name}");
        let err = resize(&mut env, name, 64 << 20, 1 /* ALLOCATE */)
            .await
            .expect_err("preallocation of an encrypted volume");
        assert_eq!(
            from_status(&err).code(),
            ErrorCode::OperationUnsupported,
            "{}",
            err.message()
        );
        assert_eq!(capacity(&mut env, name).await, 32 << 20, "{name}: unchanged");
    }
    assert!(key_files_left(&env.root).is_empty());
}

/// libvirt's rule after a restart: an encrypted volume found on disk gets the secret whose
/// usage is its path; a volume whose secret names something else stays without one.
#[tokio::test]
async fn after_a_restart_an_encrypted_volume_finds_the_secret_named_by_its_path() {
    const BY_PATH: &str = "3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b0a";
    let mut env = env().await;
    let path = env.pool_dir.join("mine.qcow2");
    let mut secrets = SecretServiceClient::new(channel(&env.root.socket("virtsecretd-sock")).await);
    secrets
        .define_secret_xml(DefineSecretXmlRequest {
            xml: format!(
                "<secret ephemeral='no' private='yes'><uuid>{BY_PATH}</uuid>\
                 <usage type='volume'><volume>{}</volume></usage></secret>",
                path.display()
            ),
            flags: 0,
        })
        .await
        .expect("define the secret of the volume's path");
    secrets
        .set_secret_value(SetSecretValueRequest {
            secret: Some(SecretRef {
                key: Some(secret_ref::Key::Uuid(BY_PATH.to_owned())),
            }),
            value: b"by-path-passphrase".to_vec(),
        })
        .await
        .expect("set its value");
    create(&mut env, encrypted_vol("mine.qcow2", "qcow2", "luks", BY_PATH))
        .await
        .expect("create the volume named by its path");
    create(&mut env, encrypted_vol("other.qcow2", "qcow2", "luks", SECRET))
        .await
        .expect("create the volume whose secret names /luks");

    env.storaged.signal(nix::sys::signal::Signal::SIGTERM);
    env.storaged
        .wait_exit(rvirt_e2e::DAEMON_DEADLINE)
        .await
        .expect("virtstoraged stops");
    env.storaged = DaemonProcess::start("virtstoraged", &env.root).await;
    let ch = channel(&env.root.socket("virtstoraged-sock")).await;
    env.pools = StoragePoolServiceClient::new(ch.clone());
    env.vols = StorageVolServiceClient::new(ch);

    let xml = vol_xml(&mut env, "mine.qcow2").await;
    assert!(xml.contains(BY_PATH), "the secret of the volume's path: {xml}");
    env.vols
        .wipe_storage_vol(WipeStorageVolRequest {
            vol: vol_ref("mine.qcow2"),
            algorithm: StorageVolWipeAlgorithm::Zero as i32,
            flags: 0,
        })
        .await
        .expect("wipe re-encrypts with the passphrase found by path");
    assert!(opens_with(&path, "qcow2", "by-path-passphrase"));

    let xml = vol_xml(&mut env, "other.qcow2").await;
    assert!(!xml.contains(SECRET), "no secret is named by this path: {xml}");
    let err = resize(&mut env, "other.qcow2", 32 << 20, 0)
        .await
        .expect_err("no passphrase known");
    assert_eq!(from_status(&err).code(), ErrorCode::NoSecret, "{}", err.message());
    assert!(
        err.message()
            .contains(&env.pool_dir.join("other.qcow2").display().to_string()),
        "names the usage to define: {}",
        err.message()
    );
    assert_eq!(capacity(&mut env, "other.qcow2").await, 16 << 20);
}

/// Writes `pattern` over the first MiB of an encrypted image's payload with qemu-io.
fn write_payload(path: &Path, driver: &str, pattern: u8) {
    let key = if driver == "qcow2" {
        "encrypt.key-secret"
    } else {
        "key-secret"
    };
    let out = Command::new("qemu-io")
        .arg("--object")
        .arg(format!("secret,id=s,data={PASSPHRASE}"))
        .arg("--image-opts")
        .arg(format!(
            "driver={driver},{key}=s,file.filename={}",
            path.display()
        ))
        .args(["-c", &format!("write -P {pattern:#x} 0 1M")])
        .output()
        .expect("run qemu-io");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// libvirt decrypts an encrypted volume into a clone without `<encryption>`.
#[tokio::test]
async fn a_clone_of_an_encrypted_volume_is_its_decrypted_payload() {
    let mut env = env().await;
    create(&mut env, encrypted_vol("enc.img", "raw", "luks", SECRET))
        .await
        .expect("create the encrypted volume");
    write_payload(&env.pool_dir.join("enc.img"), "luks", 0x5a);
    for format in ["raw", "qcow2"] {
        let name = format!("plain.{format}");
        env.vols
            .create_storage_vol_xml_from(CreateStorageVolXmlFromRequest {
                pool: pool_ref(),
                xml: format!(
                    "<volume><name>{name}</name><target><format type='{format}'/></target></volume>"
                ),
                source: vol_ref("enc.img"),
                flags: 0,
            })
            .await
            .expect("clone the encrypted volume");
        let info = qemu_img_info(&env.pool_dir.join(&name));
        assert_eq!(info["format"], format, "{info}");
        assert_eq!(info["virtual-size"], 16u64 << 20, "the payload's size: {info}");
        assert!(info.get("encrypted").is_none_or(|e| e == false), "{info}");
        let out = Command::new("qemu-io")
            .args(["-f", format, "-r", "-c", "read -P 0x5a 0 1M"])
            .arg(env.pool_dir.join(&name))
            .output()
            .expect("run qemu-io");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !said.contains("Pattern verification failed"),
            "{name} holds the plaintext: {said}"
        );
        let xml = vol_xml(&mut env, &name).await;
        assert!(!xml.contains("encryption"), "{xml}");
    }
    let err = env
        .vols
        .create_storage_vol_xml_from(CreateStorageVolXmlFromRequest {
            pool: pool_ref(),
            xml: "<volume><name>copy.img</name><target><format type='raw'/></target></volume>".into(),
            source: vol_ref("enc.img"),
            flags: 2, // REFLINK
        })
        .await
        .expect_err("a reflink would copy the ciphertext");
    assert_eq!(
        from_status(&err).code(),
        ErrorCode::ArgumentUnsupported,
        "{}",
        err.message()
    );
    assert!(!env.pool_dir.join("copy.img").exists());
    assert!(key_files_left(&env.root).is_empty());
}
