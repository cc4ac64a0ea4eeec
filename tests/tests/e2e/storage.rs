//! virtstoraged end to end: a real daemon on a temporary root, driven over its socket.
//!
//! Dir pools (define, build with mode, start, sizes, events, restart recovery and autostart),
//! volumes (qcow2 with a backing file, raw, clones across pools and formats, resize, wipe,
//! name rules, leftovers after a failed create, refresh of files added outside rvirt) and the
//! sparse-aware upload and download streams.

use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use rvirt_e2e::{DAEMON_DEADLINE, DaemonProcess, TestRoot, channel};
use rvirt_proto::error::from_status;
use rvirt_proto::v1::storage_pool_service_client::StoragePoolServiceClient;
use rvirt_proto::v1::storage_vol_service_client::StorageVolServiceClient;
use rvirt_proto::v1::*;
use tonic::transport::Channel;

type Pools = StoragePoolServiceClient<Channel>;
type Vols = StorageVolServiceClient<Channel>;

struct Env {
    root: TestRoot,
    daemon: DaemonProcess,
    pools: Pools,
    vols: Vols,
}

async fn connect(root: &TestRoot) -> (Pools, Vols) {
    let ch = channel(&root.socket("virtstoraged-sock")).await;
    (
        StoragePoolServiceClient::new(ch.clone())
            .max_decoding_message_size(8 << 20)
            .max_encoding_message_size(8 << 20),
        StorageVolServiceClient::new(ch)
            .max_decoding_message_size(8 << 20)
            .max_encoding_message_size(8 << 20),
    )
}

async fn env() -> Env {
    let root = TestRoot::new();
    let daemon = DaemonProcess::start("virtstoraged", &root).await;
    let (pools, vols) = connect(&root).await;
    Env {
        root,
        daemon,
        pools,
        vols,
    }
}

fn by_name(name: &str) -> Option<StoragePoolRef> {
    Some(StoragePoolRef {
        key: Some(storage_pool_ref::Key::Name(name.into())),
    })
}

fn vol_ref(pool: &str, name: &str) -> Option<StorageVolRef> {
    Some(StorageVolRef {
        key: Some(storage_vol_ref::Key::PoolAndName(StorageVolByName {
            pool: by_name(pool),
            name: name.into(),
        })),
    })
}

fn code(status: &tonic::Status) -> ErrorCode {
    from_status(status).code()
}

fn pool_xml(name: &str, path: &Path) -> String {
    format!(
        "<pool type='dir'><name>{name}</name><target><path>{}</path><permissions><mode>0750</mode></permissions></target></pool>",
        path.display()
    )
}

fn validate(schema: &str, xml: &str) {
    rvirt_testdata::validate(schema, xml).unwrap_or_else(|e| panic!("{e}"));
}

/// Defines, builds and starts a dir pool `name` under the test root.
async fn running_pool(env: &mut Env, name: &str) -> PathBuf {
    let path = env.root.path().join("pools").join(name);
    env.pools
        .define_storage_pool_xml(DefineStoragePoolXmlRequest {
            xml: pool_xml(name, &path),
            flags: 0,
        })
        .await
        .expect("define");
    env.pools
        .build_storage_pool(BuildStoragePoolRequest {
            pool: by_name(name),
            flags: 0,
        })
        .await
        .expect("build");
    env.pools
        .start_storage_pool(StartStoragePoolRequest {
            pool: by_name(name),
            flags: 0,
        })
        .await
        .expect("start");
    path
}

async fn create_vol(env: &mut Env, pool: &str, xml: &str) -> Result<StorageVol, tonic::Status> {
    env.vols
        .create_storage_vol_xml(CreateStorageVolXmlRequest {
            pool: by_name(pool),
            xml: xml.into(),
            flags: 0,
        })
        .await
        .map(|r| r.into_inner().vol.expect("vol"))
}

fn raw_vol(name: &str, bytes: u64, allocation: u64) -> String {
    format!(
        "<volume><name>{name}</name><capacity>{bytes}</capacity><allocation>{allocation}</allocation><target><format type='raw'/></target></volume>"
    )
}

fn qemu_img_info(path: &Path) -> serde_json_lite::Value {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img info");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json_lite::parse(&String::from_utf8_lossy(&out.stdout))
}

/// Just enough JSON to read `qemu-img info` in tests without another dependency.
mod serde_json_lite {
    #[derive(Debug)]
    pub struct Value(pub String);

    pub fn parse(text: &str) -> Value {
        Value(text.to_owned())
    }

    impl Value {
        /// The raw text of the first `"key": value` (string quotes removed).
        pub fn get(&self, key: &str) -> Option<String> {
            // The image's own keys come after its children's in qemu-img's output.
            let at = self.0.rfind(&format!("\"{key}\":"))? + key.len() + 3;
            let rest = self.0[at..].trim_start();
            if let Some(s) = rest.strip_prefix('"') {
                return s.split('"').next().map(str::to_owned);
            }
            Some(rest.split([',', '\n', '}']).next()?.trim().to_owned())
        }
    }
}

/// A sparse "boot image": a boot sector, 1 MiB of data in the middle, holes elsewhere.
fn boot_image(dir: &Path) -> PathBuf {
    let path = dir.join("boot.img");
    let f = std::fs::File::create(&path).expect("create");
    f.set_len(64 << 20).expect("size");
    let mut sector = vec![0x90u8; 512];
    sector[510] = 0x55;
    sector[511] = 0xaa;
    f.write_all_at(&sector, 0).expect("boot sector");
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    f.write_all_at(&data, 20 << 20).expect("data");
    f.sync_all().expect("sync");
    path
}

fn seek_data_hole(f: &std::fs::File, pos: u64, whence: libc::c_int) -> Option<u64> {
    // SAFETY: lseek on an open descriptor; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, whence) };
    (r >= 0).then_some(r as u64)
}

/// Upload messages for `path`: data chunks and (sparse) hole records, from `offset`.
fn upload_messages(
    path: &Path,
    vol: Option<StorageVolRef>,
    offset: u64,
    sparse: bool,
) -> Vec<UploadStorageVolRequest> {
    let f = std::fs::File::open(path).expect("open");
    let size = f.metadata().expect("meta").len();
    let mut out = vec![UploadStorageVolRequest {
        message: Some(upload_storage_vol_request::Message::Start(
            StorageVolUploadStart {
                vol,
                offset,
                length: size - offset,
                flags: u32::from(sparse),
            },
        )),
    }];
    let mut pos = offset;
    while pos < size {
        let data = if sparse {
            seek_data_hole(&f, pos, libc::SEEK_DATA).unwrap_or(size)
        } else {
            pos
        };
        if data > pos {
            out.push(UploadStorageVolRequest {
                message: Some(upload_storage_vol_request::Message::Hole(StorageVolHole {
                    length: data - pos,
                })),
            });
            pos = data;
            continue;
        }
        let end = if sparse {
            seek_data_hole(&f, pos, libc::SEEK_HOLE).unwrap_or(size)
        } else {
            size
        };
        while pos < end {
            let n = (end - pos).min(1 << 20) as usize;
            let mut buf = vec![0u8; n];
            f.read_exact_at(&mut buf, pos).expect("read");
            out.push(UploadStorageVolRequest {
                message: Some(upload_storage_vol_request::Message::Data(buf)),
            });
            pos += n as u64;
        }
    }
    out
}

async fn download_to(
    vols: &mut Vols,
    vol: Option<StorageVolRef>,
    dest: &Path,
    offset: u64,
    sparse: bool,
) -> (u64, u64) {
    let mut stream = vols
        .download_storage_vol(DownloadStorageVolRequest {
            vol,
            offset,
            length: 0,
            flags: u32::from(sparse),
        })
        .await
        .expect("download")
        .into_inner();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dest)
        .expect("dest");
    let (mut holes, mut last_done) = (0u64, 0u64);
    let mut end = 0;
    while let Some(msg) = stream.message().await.expect("download message") {
        assert!(msg.bytes_done > last_done, "progress must grow");
        last_done = msg.bytes_done;
        match msg.chunk.expect("chunk") {
            download_storage_vol_response::Chunk::Data(d) => {
                f.write_all_at(&d, msg.offset - offset).expect("write");
                end = msg.offset - offset + d.len() as u64;
            }
            download_storage_vol_response::Chunk::HoleLength(h) => {
                holes += h;
                end = msg.offset - offset + h;
            }
        }
        assert!(msg.bytes_done <= msg.bytes_total);
    }
    f.set_len(end).expect("length");
    (holes, last_done)
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn dir_pool_builds_with_its_mode_starts_and_reports_sizes() {
    let mut env = env().await;
    let path = running_pool(&mut env, "images").await;
    assert_eq!(
        std::fs::metadata(&path).expect("pool dir").permissions().mode() & 0o777,
        0o750
    );
    let info = env
        .pools
        .get_storage_pool_info(GetStoragePoolInfoRequest {
            pool: by_name("images"),
        })
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.state(), StoragePoolState::Running);
    assert!(info.capacity_bytes > 0 && info.available_bytes <= info.capacity_bytes);
    assert!(info.allocation_bytes <= info.capacity_bytes);
    let xml = env
        .pools
        .get_storage_pool_xml(GetStoragePoolXmlRequest {
            pool: by_name("images"),
            flags: 0,
        })
        .await
        .expect("xml")
        .into_inner()
        .xml;
    assert!(
        xml.contains(&format!(
            "<capacity unit=\"bytes\">{}</capacity>",
            info.capacity_bytes
        )),
        "{xml}"
    );
    validate("storagepool.rng", &xml);
    let listed = env
        .pools
        .list_storage_pools(ListStoragePoolsRequest { flags: 2 | 64 })
        .await
        .expect("list")
        .into_inner()
        .pools;
    assert_eq!(
        listed.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["images"]
    );
    let inactive = env
        .pools
        .list_storage_pools(ListStoragePoolsRequest { flags: 1 })
        .await
        .expect("list")
        .into_inner()
        .pools;
    assert!(inactive.is_empty());
}

#[tokio::test]
async fn unsupported_pool_type_is_refused_at_define_naming_the_type() {
    let mut env = env().await;
    let xml = "<pool type='iscsi'><name>san</name><source><host name='h'/><device path='iqn.x'/></source>\
               <target><path>/dev/disk/by-path</path></target></pool>";
    let err = env
        .pools
        .define_storage_pool_xml(DefineStoragePoolXmlRequest {
            xml: xml.into(),
            flags: 0,
        })
        .await
        .expect_err("iscsi");
    assert_eq!(code(&err), ErrorCode::OperationUnsupported);
    assert!(err.message().contains("iscsi"), "{}", err.message());
}

#[tokio::test]
async fn bad_pool_xml_names_the_offending_element() {
    let mut env = env().await;
    let err = env
        .pools
        .define_storage_pool_xml(DefineStoragePoolXmlRequest {
            xml: "<pool type='dir'><name>p</name><target><path>/x</path><bogus/></target></pool>".into(),
            flags: 0,
        })
        .await
        .expect_err("bogus");
    assert_eq!(code(&err), ErrorCode::XmlError);
    assert_eq!(from_status(&err).xml_path, "/pool/target/bogus");
}

#[tokio::test]
async fn qcow2_volume_with_a_backing_file_reports_its_chain() {
    let mut env = env().await;
    let dir = running_pool(&mut env, "p").await;
    create_vol(&mut env, "p", &raw_vol("base.img", 16 << 20, 0))
        .await
        .expect("base");
    let xml = format!(
        "<volume><name>top.qcow2</name><capacity unit='MiB'>32</capacity><target><format type='qcow2'/>\
         <features><lazy_refcounts/></features></target><backingStore><path>{}</path><format type='raw'/></backingStore></volume>",
        dir.join("base.img").display()
    );
    let vol = create_vol(&mut env, "p", &xml).await.expect("qcow2");
    assert_eq!(vol.path, dir.join("top.qcow2").display().to_string());
    assert_eq!(vol.key, vol.path);
    let info = qemu_img_info(&dir.join("top.qcow2"));
    assert_eq!(info.get("format").as_deref(), Some("qcow2"));
    assert_eq!(
        info.get("backing-filename").map(PathBuf::from),
        Some(dir.join("base.img"))
    );
    assert_eq!(info.get("lazy-refcounts").as_deref(), Some("true"));
    let xml = env
        .vols
        .get_storage_vol_xml(GetStorageVolXmlRequest {
            vol: vol_ref("p", "top.qcow2"),
        })
        .await
        .expect("xml")
        .into_inner()
        .xml;
    assert!(xml.contains("<backingStore>"), "{xml}");
    assert!(xml.contains("<lazy_refcounts/>"), "{xml}");
    validate("storagevol.rng", &xml);
    let vinfo = env
        .vols
        .get_storage_vol_info(GetStorageVolInfoRequest {
            vol: vol_ref("p", "top.qcow2"),
        })
        .await
        .expect("info")
        .into_inner();
    assert_eq!(vinfo.capacity_bytes, 32 << 20);
    assert!(vinfo.allocation_bytes < 32 << 20);
}

#[tokio::test]
async fn upload_keeps_a_sparse_image_sparse_and_download_gives_it_back() {
    let mut env = env().await;
    let dir = running_pool(&mut env, "p").await;
    let work = tempfile::tempdir().expect("tempdir");
    let image = boot_image(work.path());
    create_vol(&mut env, "p", &raw_vol("boot.raw", 64 << 20, 0))
        .await
        .expect("raw");
    let msgs = upload_messages(&image, vol_ref("p", "boot.raw"), 0, true);
    let reply = env
        .vols
        .upload_storage_vol(tokio_stream::iter(msgs))
        .await
        .expect("upload")
        .into_inner();
    assert_eq!(reply.data_bytes + reply.hole_bytes, 64 << 20);
    assert!(reply.hole_bytes >= 60 << 20, "{reply:?}");
    let vol_file = dir.join("boot.raw");
    let blocks = std::fs::metadata(&vol_file).expect("meta").blocks() * 512;
    assert!(
        blocks <= 4 << 20,
        "the uploaded volume uses {blocks} bytes: it is not sparse"
    );
    assert_eq!(sha256(&vol_file), sha256(&image));

    let back = work.path().join("back.img");
    let (holes, done) = download_to(&mut env.vols, vol_ref("p", "boot.raw"), &back, 0, true).await;
    assert!(holes >= 60 << 20, "download sent only {holes} bytes of holes");
    assert_eq!(done, 64 << 20);
    assert_eq!(sha256(&back), sha256(&image));
}

#[tokio::test]
async fn download_and_upload_resume_at_an_offset() {
    let mut env = env().await;
    let dir = running_pool(&mut env, "p").await;
    let work = tempfile::tempdir().expect("tempdir");
    let image = boot_image(work.path());
    create_vol(&mut env, "p", &raw_vol("v", 64 << 20, 0))
        .await
        .expect("raw");
    // Upload only the second half, as a resumed upload would.
    let msgs = upload_messages(&image, vol_ref("p", "v"), 16 << 20, true);
    env.vols
        .upload_storage_vol(tokio_stream::iter(msgs))
        .await
        .expect("upload");
    let mut expected = std::fs::read(&image).expect("image");
    expected[..16 << 20].fill(0);
    assert_eq!(std::fs::read(dir.join("v")).expect("vol"), expected);
    let part = work.path().join("part");
    let (_, done) = download_to(&mut env.vols, vol_ref("p", "v"), &part, 20 << 20, false).await;
    assert_eq!(done, 44 << 20);
    assert_eq!(std::fs::read(&part).expect("part"), expected[20 << 20..]);
}

#[tokio::test]
async fn clone_across_pools_and_formats_copies_the_data() {
    let mut env = env().await;
    let src_dir = running_pool(&mut env, "a").await;
    let dst_dir = running_pool(&mut env, "b").await;
    let work = tempfile::tempdir().expect("tempdir");
    let image = boot_image(work.path());
    create_vol(&mut env, "a", &raw_vol("src.raw", 64 << 20, 0))
        .await
        .expect("raw");
    env.vols
        .upload_storage_vol(tokio_stream::iter(upload_messages(
            &image,
            vol_ref("a", "src.raw"),
            0,
            true,
        )))
        .await
        .expect("upload");
    let clone = env
        .vols
        .create_storage_vol_xml_from(CreateStorageVolXmlFromRequest {
            pool: by_name("b"),
            xml: "<volume><name>copy.qcow2</name><target><format type='qcow2'/></target></volume>".into(),
            source: vol_ref("a", "src.raw"),
            flags: 0,
        })
        .await
        .expect("clone")
        .into_inner()
        .vol
        .expect("vol");
    assert_eq!(clone.pool.as_ref().map(|p| p.name.as_str()), Some("b"));
    let copy = dst_dir.join("copy.qcow2");
    assert_eq!(qemu_img_info(&copy).get("format").as_deref(), Some("qcow2"));
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(src_dir.join("src.raw"))
        .arg(&copy)
        .output()
        .expect("qemu-img compare");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // And back to raw, downloaded: the same bytes as the original image.
    env.vols
        .create_storage_vol_xml_from(CreateStorageVolXmlFromRequest {
            pool: by_name("a"),
            xml: "<volume><name>again.raw</name><target><format type='raw'/></target></volume>".into(),
            source: vol_ref("b", "copy.qcow2"),
            flags: 0,
        })
        .await
        .expect("clone back");
    let back = work.path().join("back");
    download_to(&mut env.vols, vol_ref("a", "again.raw"), &back, 0, true).await;
    assert_eq!(sha256(&back), sha256(&image));
}

#[tokio::test]
async fn resize_grows_and_shrinks_only_with_the_flag() {
    let mut env = env().await;
    running_pool(&mut env, "p").await;
    for (name, format) in [("r", "raw"), ("q", "qcow2")] {
        let xml = format!(
            "<volume><name>{name}</name><capacity>{}</capacity><allocation>0</allocation><target><format type='{format}'/></target></volume>",
            8 << 20
        );
        create_vol(&mut env, "p", &xml).await.expect("create");
        let capacity = |vols: &mut Vols| {
            let mut vols = vols.clone();
            async move {
                vols.get_storage_vol_info(GetStorageVolInfoRequest {
                    vol: vol_ref("p", name),
                })
                .await
                .expect("info")
                .into_inner()
                .capacity_bytes
            }
        };
        env.vols
            .resize_storage_vol(ResizeStorageVolRequest {
                vol: vol_ref("p", name),
                capacity_bytes: 16 << 20,
                flags: 0,
            })
            .await
            .expect("grow");
        assert_eq!(capacity(&mut env.vols).await, 16 << 20, "{format}");
        let err = env
            .vols
            .resize_storage_vol(ResizeStorageVolRequest {
                vol: vol_ref("p", name),
                capacity_bytes: 4 << 20,
                flags: 0,
            })
            .await
            .expect_err("shrink without flag");
        assert_eq!(code(&err), ErrorCode::InvalidArg);
        assert_eq!(capacity(&mut env.vols).await, 16 << 20, "{format}");
        env.vols
            .resize_storage_vol(ResizeStorageVolRequest {
                vol: vol_ref("p", name),
                capacity_bytes: 4 << 20,
                flags: 4,
            })
            .await
            .expect("shrink with flag");
        assert_eq!(capacity(&mut env.vols).await, 4 << 20, "{format}");
    }
}

#[tokio::test]
async fn wipe_zeroes_the_volume() {
    let mut env = env().await;
    let dir = running_pool(&mut env, "p").await;
    create_vol(&mut env, "p", &raw_vol("w", 4 << 20, 4 << 20))
        .await
        .expect("raw");
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("w"))
        .expect("open")
        .write_all_at(&[0xaa; 65536], 4096)
        .expect("scribble");
    env.vols
        .wipe_storage_vol(WipeStorageVolRequest {
            vol: vol_ref("p", "w"),
            algorithm: StorageVolWipeAlgorithm::Zero as i32,
            flags: 0,
        })
        .await
        .expect("wipe");
    let data = std::fs::read(dir.join("w")).expect("read");
    assert_eq!(data.len(), 4 << 20);
    assert!(data.iter().all(|b| *b == 0), "wiped volume still has data");
}

#[tokio::test]
async fn wipe_algorithms_leave_their_last_pass_and_qcow2_stays_usable() {
    let mut env = env().await;
    let dir = running_pool(&mut env, "p").await;
    create_vol(&mut env, "p", &raw_vol("w", 1 << 20, 1 << 20))
        .await
        .expect("raw");
    for (alg, last) in [
        (StorageVolWipeAlgorithm::Bsi, 0x7fu8),
        (StorageVolWipeAlgorithm::Dod, 0xff),
        (StorageVolWipeAlgorithm::Nnsa, 0x00),
    ] {
        env.vols
            .wipe_storage_vol(WipeStorageVolRequest {
                vol: vol_ref("p", "w"),
                algorithm: alg as i32,
                flags: 0,
            })
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {}", e.message()));
        let data = std::fs::read(dir.join("w")).expect("read");
        assert_eq!(data.len(), 1 << 20, "{alg:?}");
        assert!(data.iter().all(|b| *b == last), "{alg:?} left other bytes");
    }
    create_vol(
        &mut env,
        "p",
        "<volume><name>q</name><capacity>1048576</capacity><target><format type='qcow2'/></target></volume>",
    )
    .await
    .expect("qcow2");
    env.vols
        .wipe_storage_vol(WipeStorageVolRequest {
            vol: vol_ref("p", "q"),
            algorithm: StorageVolWipeAlgorithm::Schneier as i32,
            flags: 0,
        })
        .await
        .expect("schneier");
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(dir.join("q"))
        .output()
        .expect("qemu-img check");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = env
        .vols
        .wipe_storage_vol(WipeStorageVolRequest {
            vol: vol_ref("p", "q"),
            algorithm: 42,
            flags: 0,
        })
        .await
        .expect_err("unknown algorithm");
    assert_eq!(code(&err), ErrorCode::InvalidArg);
}

#[tokio::test]
async fn volume_names_that_are_paths_are_refused() {
    let mut env = env().await;
    let dir = running_pool(&mut env, "p").await;
    for name in ["../escape", "/etc/evil", "a/b", "..", "."] {
        let err = create_vol(&mut env, "p", &raw_vol(name, 1 << 20, 0))
            .await
            .expect_err(name);
        assert_eq!(code(&err), ErrorCode::InvalidArg, "{name}: {}", err.message());
    }
    let err = create_vol(&mut env, "p", &raw_vol("", 1 << 20, 0))
        .await
        .expect_err("empty");
    assert!(
        matches!(code(&err), ErrorCode::InvalidArg | ErrorCode::XmlError),
        "{}",
        err.message()
    );
    assert!(!dir.parent().expect("parent").join("escape").exists());
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0);
}

#[tokio::test]
async fn creating_over_an_existing_volume_or_file_fails_and_keeps_it() {
    let mut env = env().await;
    let dir = running_pool(&mut env, "p").await;
    create_vol(&mut env, "p", &raw_vol("v", 1 << 20, 0))
        .await
        .expect("create");
    let err = create_vol(&mut env, "p", &raw_vol("v", 2 << 20, 0))
        .await
        .expect_err("again");
    assert_eq!(code(&err), ErrorCode::StorageVolExist);
    std::fs::write(dir.join("outside"), b"precious").expect("outside file");
    let err = create_vol(&mut env, "p", &raw_vol("outside", 1 << 20, 0))
        .await
        .expect_err("over file");
    assert_eq!(code(&err), ErrorCode::StorageVolExist);
    assert_eq!(std::fs::read(dir.join("outside")).expect("kept"), b"precious");
    assert_eq!(std::fs::metadata(dir.join("v")).expect("v").len(), 1 << 20);
}

#[tokio::test]
async fn failed_create_leaves_nothing_behind() {
    let mut env = env().await;
    let dir = running_pool(&mut env, "p").await;
    // qemu-img refuses a cluster size that is not a power of two.
    let xml = "<volume><name>bad.qcow2</name><capacity>1048576</capacity><target><format type='qcow2'/>\
               <clusterSize>1000</clusterSize></target></volume>";
    let err = create_vol(&mut env, "p", xml)
        .await
        .expect_err("bad cluster size");
    assert_eq!(code(&err), ErrorCode::OperationFailed, "{}", err.message());
    assert!(!dir.join("bad.qcow2").exists(), "a failed create left its file");
    let vols = env
        .vols
        .list_storage_vols(ListStorageVolsRequest { pool: by_name("p") })
        .await
        .expect("list")
        .into_inner()
        .vols;
    assert!(vols.is_empty(), "{vols:?}");
}

#[tokio::test]
async fn refresh_picks_up_files_added_outside_with_their_format_and_chain() {
    let mut env = env().await;
    let dir = running_pool(&mut env, "p").await;
    let base = dir.join("base.raw");
    std::fs::File::create(&base)
        .expect("base")
        .set_len(1 << 20)
        .expect("size");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(dir.join("overlay.qcow2"))
        .status()
        .expect("qemu-img");
    assert!(status.success());
    env.pools
        .refresh_storage_pool(RefreshStoragePoolRequest { pool: by_name("p") })
        .await
        .expect("refresh");
    let names: Vec<String> = env
        .vols
        .list_storage_vols(ListStorageVolsRequest { pool: by_name("p") })
        .await
        .expect("list")
        .into_inner()
        .vols
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["base.raw", "overlay.qcow2"]);
    let xml = env
        .vols
        .get_storage_vol_xml(GetStorageVolXmlRequest {
            vol: Some(StorageVolRef {
                key: Some(storage_vol_ref::Key::Path(
                    dir.join("overlay.qcow2").display().to_string(),
                )),
            }),
        })
        .await
        .expect("by path")
        .into_inner()
        .xml;
    assert!(xml.contains("<format type=\"qcow2\"/>"), "{xml}");
    assert!(xml.contains(&format!("<path>{}</path>", base.display())), "{xml}");
    validate("storagevol.rng", &xml);
}

#[tokio::test]
async fn pool_events_follow_the_lifecycle() {
    let mut env = env().await;
    let mut watch = env
        .pools
        .watch_storage_pool_events(WatchStoragePoolEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("message").expect("open");
    assert!(matches!(
        first.message,
        Some(watch_storage_pool_events_response::Message::CaughtUp(_))
    ));
    running_pool(&mut env, "p").await;
    env.pools
        .refresh_storage_pool(RefreshStoragePoolRequest { pool: by_name("p") })
        .await
        .expect("refresh");
    env.pools
        .destroy_storage_pool(DestroyStoragePoolRequest { pool: by_name("p") })
        .await
        .expect("destroy");
    env.pools
        .undefine_storage_pool(UndefineStoragePoolRequest { pool: by_name("p") })
        .await
        .expect("undefine");
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let msg = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("event in time")
            .expect("stream")
            .expect("open");
        if let Some(watch_storage_pool_events_response::Message::Event(e)) = msg.message {
            assert_eq!(e.pool.as_ref().map(|p| p.name.as_str()), Some("p"));
            seen.push(match e.event.expect("event") {
                storage_pool_event::Event::Lifecycle(l) => format!("{:?}", l.r#type()),
                storage_pool_event::Event::Refresh(_) => "Refresh".into(),
            });
        }
    }
    assert_eq!(
        seen,
        ["Defined", "Created", "Started", "Refresh", "Stopped", "Undefined"]
    );
}

#[tokio::test]
async fn restarted_daemon_recovers_active_pools_and_starts_autostart_ones() {
    let mut env = env().await;
    running_pool(&mut env, "live").await;
    create_vol(&mut env, "live", &raw_vol("keep", 1 << 20, 0))
        .await
        .expect("vol");
    let auto_path = running_pool(&mut env, "auto").await;
    env.pools
        .destroy_storage_pool(DestroyStoragePoolRequest {
            pool: by_name("auto"),
        })
        .await
        .expect("destroy");
    env.pools
        .set_storage_pool_autostart(SetStoragePoolAutostartRequest {
            pool: by_name("auto"),
            autostart: true,
        })
        .await
        .expect("autostart");
    assert!(auto_path.is_dir());
    env.daemon.signal(Signal::SIGTERM);
    env.daemon.wait_exit(DAEMON_DEADLINE).await.expect("daemon exits");

    let _daemon = DaemonProcess::start("virtstoraged", &env.root).await;
    let (mut pools, mut vols) = connect(&env.root).await;
    let listed = pools
        .list_storage_pools(ListStoragePoolsRequest { flags: 0 })
        .await
        .expect("list")
        .into_inner()
        .pools;
    let state: Vec<(String, bool, bool)> = listed
        .into_iter()
        .map(|p| (p.name, p.active, p.autostart))
        .collect();
    assert_eq!(
        state,
        [("auto".to_owned(), true, true), ("live".to_owned(), true, false)]
    );
    let names: Vec<String> = vols
        .list_storage_vols(ListStorageVolsRequest {
            pool: by_name("live"),
        })
        .await
        .expect("vols")
        .into_inner()
        .vols
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["keep"]);
}

#[tokio::test]
async fn delete_refuses_a_volume_in_use_by_a_stream_and_removes_it_after() {
    let mut env = env().await;
    let dir = running_pool(&mut env, "p").await;
    create_vol(&mut env, "p", &raw_vol("busy", 8 << 20, 8 << 20))
        .await
        .expect("raw");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(UploadStorageVolRequest {
        message: Some(upload_storage_vol_request::Message::Start(
            StorageVolUploadStart {
                vol: vol_ref("p", "busy"),
                offset: 0,
                length: 0,
                flags: 0,
            },
        )),
    })
    .await
    .expect("start");
    tx.send(UploadStorageVolRequest {
        message: Some(upload_storage_vol_request::Message::Data(vec![1; 4096])),
    })
    .await
    .expect("data");
    let mut uploader = env.vols.clone();
    let upload = tokio::spawn(async move {
        uploader
            .upload_storage_vol(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    // A pool with a stream running refuses a refresh: that tells when the daemon has the
    // volume open, without sleeping.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match env
            .pools
            .refresh_storage_pool(RefreshStoragePoolRequest { pool: by_name("p") })
            .await
        {
            Err(e) if code(&e) == ErrorCode::OperationInvalid => break,
            Err(e) => panic!("unexpected error {e:?}"),
            Ok(_) => {
                assert!(tokio::time::Instant::now() < deadline, "the upload never started");
                tokio::task::yield_now().await;
            }
        }
    }
    let err = env
        .vols
        .delete_storage_vol(DeleteStorageVolRequest {
            vol: vol_ref("p", "busy"),
            flags: 0,
        })
        .await
        .expect_err("a volume under upload was deleted");
    assert_eq!(code(&err), ErrorCode::OperationInvalid, "{}", err.message());
    drop(tx);
    upload.await.expect("join").expect("upload");
    env.vols
        .delete_storage_vol(DeleteStorageVolRequest {
            vol: vol_ref("p", "busy"),
            flags: 0,
        })
        .await
        .expect("delete after the stream");
    assert!(!dir.join("busy").exists());
}

/// A loop device over a file the test made; detached when dropped.
struct LoopDevice {
    device: String,
    _file: tempfile::NamedTempFile,
    // Loop-device tests of this file run one at a time (nextest runs tests as separate
    // processes): a device just released by one test can still show its old contents to the
    // next.
    _serial: nix::fcntl::Flock<std::fs::File>,
}

impl LoopDevice {
    fn new(size: u64) -> LoopDevice {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("rvirt-e2e-storage-loop.lock"))
            .expect("lock file");
        let serial = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("loop device lock");
        let file = tempfile::NamedTempFile::new().expect("backing file");
        file.as_file().set_len(size).expect("size");
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file.path())
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let device = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        // A device just released by another test can still show that test's blocks for a
        // moment: zero the start of ours through the device itself, so it reads as empty.
        let dev = std::fs::OpenOptions::new()
            .write(true)
            .open(&device)
            .expect("open loop device");
        dev.write_all_at(&vec![0u8; 4 << 20], 0)
            .expect("zero the loop device");
        dev.sync_all().expect("sync the loop device");
        LoopDevice {
            device,
            _file: file,
            _serial: serial,
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// Unmounts a directory when dropped, if something is mounted there.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if mounted(&self.0) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
}

/// Removes a volume group and its physical volume when dropped.
struct RemoveVg {
    vg: String,
    device: String,
}

impl Drop for RemoveVg {
    fn drop(&mut self) {
        let _ = Command::new("vgremove")
            .args(["-f", &self.vg])
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output();
        let _ = Command::new("pvremove")
            .arg(&self.device)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output();
    }
}

fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*path.to_string_lossy()))
}

#[tokio::test]
async fn fs_pool_on_a_loop_device_formats_mounts_and_holds_volumes() {
    let mut env = env().await;
    let device = LoopDevice::new(64 << 20);
    let target = env.root.path().join("fsmount");
    let _unmount = Unmount(target.clone());
    let xml = format!(
        "<pool type='fs'><name>fsp</name><source><device path='{}'/><format type='ext4'/></source>\
         <target><path>{}</path></target></pool>",
        device.device,
        target.display()
    );
    env.pools
        .define_storage_pool_xml(DefineStoragePoolXmlRequest { xml, flags: 0 })
        .await
        .expect("define");
    env.pools
        .build_storage_pool(BuildStoragePoolRequest {
            pool: by_name("fsp"),
            flags: 4, // NO_OVERWRITE: the device is empty, so mkfs runs
        })
        .await
        .expect("build");
    let err = env
        .pools
        .build_storage_pool(BuildStoragePoolRequest {
            pool: by_name("fsp"),
            flags: 4,
        })
        .await
        .expect_err("second NO_OVERWRITE build");
    assert_eq!(code(&err), ErrorCode::StoragePoolBuilt, "{}", err.message());
    env.pools
        .start_storage_pool(StartStoragePoolRequest {
            pool: by_name("fsp"),
            flags: 0,
        })
        .await
        .expect("start");
    assert!(mounted(&target), "the pool's file system is not mounted");
    let info = env
        .pools
        .get_storage_pool_info(GetStoragePoolInfoRequest { pool: by_name("fsp") })
        .await
        .expect("info")
        .into_inner();
    assert!(
        info.capacity_bytes > 32 << 20 && info.capacity_bytes <= 64 << 20,
        "{info:?}"
    );
    let xml = "<volume><name>d.qcow2</name><capacity unit='MiB'>100</capacity><target><format type='qcow2'/></target></volume>";
    create_vol(&mut env, "fsp", xml).await.expect("volume");
    assert_eq!(
        qemu_img_info(&target.join("d.qcow2")).get("format").as_deref(),
        Some("qcow2")
    );
    env.pools
        .destroy_storage_pool(DestroyStoragePoolRequest { pool: by_name("fsp") })
        .await
        .expect("destroy");
    assert!(!mounted(&target), "destroy did not unmount");
}

#[tokio::test]
async fn logical_pool_builds_and_starts_its_own_volume_group() {
    let mut env = env().await;
    let device = LoopDevice::new(64 << 20);
    // The test root's random directory name makes the volume group's name unique.
    let unique = env
        .root
        .path()
        .file_name()
        .expect("root name")
        .to_string_lossy()
        .into_owned();
    let vg = format!("rvirt-test-{unique}");
    let _cleanup = RemoveVg {
        vg: vg.clone(),
        device: device.device.clone(),
    };
    let xml = format!(
        "<pool type='logical'><name>lvp</name><source><device path='{}'/><name>{vg}</name><format type='lvm2'/></source>\
         <target><path>/dev/{vg}</path></target></pool>",
        device.device
    );
    env.pools
        .define_storage_pool_xml(DefineStoragePoolXmlRequest { xml, flags: 0 })
        .await
        .expect("define");
    env.pools
        .build_storage_pool(BuildStoragePoolRequest {
            pool: by_name("lvp"),
            flags: 0,
        })
        .await
        .expect("build");
    env.pools
        .start_storage_pool(StartStoragePoolRequest {
            pool: by_name("lvp"),
            flags: 0,
        })
        .await
        .expect("start");
    let info = env
        .pools
        .get_storage_pool_info(GetStoragePoolInfoRequest { pool: by_name("lvp") })
        .await
        .expect("info")
        .into_inner();
    assert!(
        info.capacity_bytes > 32 << 20 && info.capacity_bytes <= 64 << 20,
        "{info:?}"
    );
    assert_eq!(info.available_bytes, info.capacity_bytes);
    let xml = env
        .pools
        .get_storage_pool_xml(GetStoragePoolXmlRequest {
            pool: by_name("lvp"),
            flags: 0,
        })
        .await
        .expect("xml")
        .into_inner()
        .xml;
    validate("storagepool.rng", &xml);
    let has_device_mapper = std::fs::read_to_string("/proc/misc")
        .unwrap_or_default()
        .contains("device-mapper");
    let created = create_vol(
        &mut env,
        "lvp",
        "<volume><name>lv1</name><capacity unit='MiB'>8</capacity></volume>",
    )
    .await;
    if has_device_mapper {
        let vol = created.expect("logical volume");
        assert_eq!(vol.r#type(), StorageVolType::Block);
        assert_eq!(vol.path, format!("/dev/{vg}/lv1"));
        env.vols
            .delete_storage_vol(DeleteStorageVolRequest {
                vol: vol_ref("lvp", "lv1"),
                flags: 0,
            })
            .await
            .expect("lvremove");
    } else {
        // This kernel has no device-mapper: lvcreate cannot work, and says so.
        let err = created.expect_err("lvcreate without device-mapper");
        assert_eq!(code(&err), ErrorCode::OperationFailed, "{}", err.message());
        assert!(err.message().contains("lvcreate"), "{}", err.message());
    }
    let vols = env
        .vols
        .list_storage_vols(ListStorageVolsRequest { pool: by_name("lvp") })
        .await
        .expect("list")
        .into_inner()
        .vols;
    assert!(vols.is_empty(), "{vols:?}");
    env.pools
        .destroy_storage_pool(DestroyStoragePoolRequest { pool: by_name("lvp") })
        .await
        .expect("destroy");
    env.pools
        .delete_storage_pool(DeleteStoragePoolRequest {
            pool: by_name("lvp"),
            flags: 0,
        })
        .await
        .expect("vgremove");
    let out = Command::new("vgs")
        .arg(&vg)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .expect("vgs");
    assert!(!out.status.success(), "volume group {vg} still exists");
}

#[tokio::test]
async fn object_rules_decide_volumes_by_pool_and_name_however_they_are_named() {
    let root = TestRoot::new();
    let uid = nix::unistd::geteuid().as_raw();
    root.write_config(
        "access.toml",
        &format!(
            "[[rule]]\neffect = \"deny\"\npermission = \"storage_vol.delete\"\nuid = {uid}\nobject = \"imgs/keep-*\"\n\n\
             [[rule]]\neffect = \"deny\"\npermission = \"storage_vol.create\"\nuid = {uid}\nobject = \"imgs/no-*\"\n\n\
             [[rule]]\neffect = \"deny\"\npermission = \"storage_pool.getattr\"\nuid = {uid}\nobject = \"hidden\"\n"
        ),
    );
    let daemon = DaemonProcess::start("virtstoraged", &root).await;
    let (pools, vols) = connect(&root).await;
    let mut env = Env {
        root,
        daemon,
        pools,
        vols,
    };
    let imgs = running_pool(&mut env, "imgs").await;
    running_pool(&mut env, "hidden").await;
    let denied_on = |err: &tonic::Status, object: &str, rule: &str| {
        assert_eq!(code(err), ErrorCode::AccessDenied, "{}", err.message());
        let on = format!("on '{object}'");
        assert!(
            err.message().contains(&on) && err.message().contains(rule),
            "{}",
            err.message()
        );
    };

    create_vol(&mut env, "imgs", &raw_vol("keep-1.raw", 1 << 20, 0))
        .await
        .expect("keep-1 may be created");
    create_vol(&mut env, "imgs", &raw_vol("a.raw", 1 << 20, 0))
        .await
        .expect("a may be created");
    // A new volume is decided by the name its XML gives it.
    let err = create_vol(&mut env, "imgs", &raw_vol("no-1.raw", 1 << 20, 0))
        .await
        .expect_err("no-* may not be created");
    denied_on(&err, "imgs/no-1.raw", "rule 2");
    assert!(!imgs.join("no-1.raw").exists());

    // Named by its path, keep-1 is still imgs/keep-1.raw.
    let by_path = |path: PathBuf| {
        Some(StorageVolRef {
            key: Some(storage_vol_ref::Key::Path(path.display().to_string())),
        })
    };
    let err = env
        .vols
        .delete_storage_vol(DeleteStorageVolRequest {
            vol: by_path(imgs.join("keep-1.raw")),
            flags: 0,
        })
        .await
        .expect_err("keep-* may not be deleted");
    denied_on(&err, "imgs/keep-1.raw", "rule 1");
    assert!(imgs.join("keep-1.raw").exists(), "the volume is still there");
    env.vols
        .delete_storage_vol(DeleteStorageVolRequest {
            vol: by_path(imgs.join("a.raw")),
            flags: 0,
        })
        .await
        .expect("a may be deleted");

    // The hidden pool is left out of lists and refused to lookups, even through one of its
    // volumes' paths.
    let listed: Vec<String> = env
        .pools
        .list_storage_pools(ListStoragePoolsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .pools
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(listed, ["imgs"]);
    let err = env
        .pools
        .lookup_storage_pool(LookupStoragePoolRequest {
            key: Some(lookup_storage_pool_request::Key::Pool(
                by_name("hidden").expect("ref"),
            )),
        })
        .await
        .expect_err("hidden is hidden");
    denied_on(&err, "hidden", "rule 3");
    env.pools
        .lookup_storage_pool(LookupStoragePoolRequest {
            key: Some(lookup_storage_pool_request::Key::Volume(
                vol_ref("imgs", "keep-1.raw").expect("ref"),
            )),
        })
        .await
        .expect("imgs may be looked up through its volume");
}
