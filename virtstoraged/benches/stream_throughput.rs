//! Upload and download throughput against `cp` of the same file, direct to virtstoraged and
//! through virtproxyd.
//!
//! Starts the real `virtstoraged` and `virtproxyd` binaries (from `RVIRT_BIN_DIR`, else
//! `target/release`) in a temporary `RVIRT_ROOT`, waits for their readiness notification,
//! creates a dir pool, and for a dense file and a sparse one measures `cp` (+ fsync), then an
//! upload and a download through `rvirt::Connect` — `storage:///system?mode=direct` (the
//! daemon's socket) and `?mode=legacy` (virtproxyd's socket) — with the client's real channel
//! settings. Each transfer is timed to the end of the last write (the upload's reply comes
//! after the daemon's `fdatasync`; a download ends with the client's `fsync`). Prints a table.
//!
//! ```text
//! cargo build --release -p virtstoraged -p virtproxyd
//! cargo bench -p virtstoraged --bench stream_throughput [-- --size-mib N --runs R]
//! ```

use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rvirt::connect::GrpcTransport;
use rvirt::{Connect, OpenOptions};
use rvirt_proto::v1::storage_pool_service_client::StoragePoolServiceClient;
use rvirt_proto::v1::storage_vol_service_client::StorageVolServiceClient;
use rvirt_proto::v1::*;

type Vols = StorageVolServiceClient<GrpcTransport>;

/// Starts daemon `name` in `root` and waits for its readiness.
fn start(name: &str, root: &Path) -> rvirt_daemon::launch::Launched {
    rvirt_daemon::launch::start_ready(name, root, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"))
}

fn vol_ref(name: &str) -> Option<StorageVolRef> {
    Some(StorageVolRef {
        key: Some(storage_vol_ref::Key::PoolAndName(StorageVolByName {
            pool: Some(StoragePoolRef {
                key: Some(storage_pool_ref::Key::Name("bench".into())),
            }),
            name: name.into(),
        })),
    })
}

fn seek(f: &std::fs::File, pos: u64, whence: libc::c_int) -> Option<u64> {
    // SAFETY: lseek on an open descriptor; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, whence) };
    (r >= 0).then_some(r as u64)
}

/// Upload messages produced lazily from the file (data chunks of 1 MiB, holes when sparse).
fn upload_stream(
    path: PathBuf,
    vol: String,
    sparse: bool,
) -> impl tokio_stream::Stream<Item = UploadStorageVolRequest> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open");
        let size = f.metadata().expect("meta").len();
        let start = UploadStorageVolRequest {
            message: Some(upload_storage_vol_request::Message::Start(
                StorageVolUploadStart {
                    vol: vol_ref(&vol),
                    offset: 0,
                    length: size,
                    flags: u32::from(sparse),
                },
            )),
        };
        if tx.blocking_send(start).is_err() {
            return;
        }
        let mut pos = 0;
        while pos < size {
            let data = if sparse {
                seek(&f, pos, libc::SEEK_DATA).unwrap_or(size)
            } else {
                pos
            };
            if data > pos {
                let hole = UploadStorageVolRequest {
                    message: Some(upload_storage_vol_request::Message::Hole(StorageVolHole {
                        length: data - pos,
                    })),
                };
                if tx.blocking_send(hole).is_err() {
                    return;
                }
                pos = data;
                continue;
            }
            let end = if sparse {
                seek(&f, pos, libc::SEEK_HOLE).unwrap_or(size)
            } else {
                size
            };
            while pos < end {
                let n = (end - pos).min(1 << 20) as usize;
                let mut buf = vec![0u8; n];
                f.read_exact_at(&mut buf, pos).expect("read");
                let msg = UploadStorageVolRequest {
                    message: Some(upload_storage_vol_request::Message::Data(buf)),
                };
                if tx.blocking_send(msg).is_err() {
                    return;
                }
                pos += n as u64;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn download(vols: &mut Vols, vol: &str, dest: &Path, sparse: bool) {
    let mut stream = vols
        .download_storage_vol(DownloadStorageVolRequest {
            vol: vol_ref(vol),
            offset: 0,
            length: 0,
            flags: u32::from(sparse),
        })
        .await
        .expect("download")
        .into_inner();
    let f = std::fs::File::create(dest).expect("dest");
    let mut end = 0;
    while let Some(msg) = stream.message().await.expect("message") {
        match msg.chunk.expect("chunk") {
            download_storage_vol_response::Chunk::Data(d) => {
                f.write_all_at(&d, msg.offset).expect("write");
                end = msg.offset + d.len() as u64;
            }
            download_storage_vol_response::Chunk::HoleLength(h) => end = msg.offset + h,
        }
    }
    f.set_len(end).expect("len");
    f.sync_all().expect("sync");
}

fn cp(src: &Path, dst: &Path) -> Duration {
    let _ = std::fs::remove_file(dst);
    let t = Instant::now();
    let ok = Command::new("cp")
        .arg(src)
        .arg(dst)
        .status()
        .expect("cp")
        .success();
    assert!(ok);
    std::fs::File::open(dst).expect("dst").sync_all().expect("sync");
    t.elapsed()
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn open(uri: &str) -> (StoragePoolServiceClient<GrpcTransport>, Vols) {
    let uri = rvirt::uri::ConnectUri::parse(uri).expect("URI");
    let conn = Connect::open_with(
        uri,
        OpenOptions {
            read_only: false,
            deadline: Duration::from_secs(600),
            autostart: false,
        },
    )
    .await
    .expect("connect");
    let pools = StoragePoolServiceClient::new(conn.transport("rvirt.v1.StoragePoolService").expect("pools"));
    let vols = StorageVolServiceClient::new(conn.transport("rvirt.v1.StorageVolService").expect("vols"))
        .max_decoding_message_size(8 << 20)
        .max_encoding_message_size(8 << 20);
    (pools, vols)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size_mib = arg(&args, "--size-mib", 256);
    let runs = arg(&args, "--runs", 3).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    // SAFETY: no other thread exists yet (the runtime is built below), so nothing reads the
    // environment concurrently.
    unsafe { std::env::set_var("RVIRT_ROOT", &root) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(dir.path(), &root, size_mib, runs));
}

async fn run(dir: &Path, root: &Path, size_mib: u64, runs: u64) {
    let _storaged = start("virtstoraged", root);
    let _proxy = start("virtproxyd", root);
    let (mut pools, direct) = open("storage:///system?mode=direct").await;
    let (_, proxied) = open("storage:///system?mode=legacy").await;
    let pool_dir = dir.join("pool");
    pools
        .create_storage_pool_xml(CreateStoragePoolXmlRequest {
            xml: format!(
                "<pool type='dir'><name>bench</name><target><path>{}</path></target></pool>",
                pool_dir.display()
            ),
            flags: 1,
        })
        .await
        .expect("pool");

    let dense = dir.join("dense.img");
    {
        let f = std::fs::File::create(&dense).expect("dense");
        let chunk: Vec<u8> = (0..(1u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for i in 0..size_mib {
            f.write_all_at(&chunk, i << 20).expect("write");
        }
        f.sync_all().expect("sync");
    }
    let sparse = dir.join("sparse.img");
    {
        let f = std::fs::File::create(&sparse).expect("sparse");
        f.set_len((size_mib * 4) << 20).expect("len");
        let chunk = vec![0x5au8; 1 << 20];
        for i in 0..(size_mib / 8).max(1) {
            f.write_all_at(&chunk, (i * 32) << 20).expect("write");
        }
        f.sync_all().expect("sync");
    }

    println!(
        "{:<44} {:>11} {:>9} {:>10} {:>9}",
        "operation (best of runs)", "bytes", "seconds", "MiB/s", "vs cp"
    );
    for (label, src, is_sparse) in [("dense", &dense, false), ("sparse", &sparse, true)] {
        let size = std::fs::metadata(src).expect("meta").len();
        let best = |times: Vec<Duration>| times.into_iter().min().unwrap_or_default();
        let cp_time = best((0..runs).map(|_| cp(src, &dir.join("cp.out"))).collect());
        let row = |op: &str, d: Duration| {
            println!(
                "{:<44} {:>11} {:>9.3} {:>10.1} {:>8.2}x",
                op,
                size,
                d.as_secs_f64(),
                mbps(size, d),
                cp_time.as_secs_f64() / d.as_secs_f64()
            );
        };
        row(&format!("cp ({label} file)"), cp_time);
        let stream = if is_sparse { ", sparse stream" } else { "" };
        for (path, client) in [("direct", &direct), ("via virtproxyd", &proxied)] {
            let mut vols = client.clone();
            let name = format!("{label}-{}.raw", path.replace(' ', "-"));
            vols.create_storage_vol_xml(CreateStorageVolXmlRequest {
                pool: Some(StoragePoolRef {
                    key: Some(storage_pool_ref::Key::Name("bench".into())),
                }),
                xml: format!(
                    "<volume><name>{name}</name><capacity>{size}</capacity><allocation>0</allocation></volume>"
                ),
                flags: 0,
            })
            .await
            .expect("volume");
            let mut ups = Vec::new();
            let mut downs = Vec::new();
            for _ in 0..runs {
                let t = Instant::now();
                vols.upload_storage_vol(upload_stream(src.clone(), name.clone(), is_sparse))
                    .await
                    .expect("upload");
                ups.push(t.elapsed());
                // As for cp: the previous copy is removed before the clock starts, so freeing
                // its blocks is not counted.
                let _ = std::fs::remove_file(dir.join("down.out"));
                let t = Instant::now();
                download(&mut vols, &name, &dir.join("down.out"), is_sparse).await;
                downs.push(t.elapsed());
            }
            row(&format!("upload ({label}{stream}, {path})"), best(ups));
            row(&format!("download ({label}{stream}, {path})"), best(downs));
        }
    }
}
