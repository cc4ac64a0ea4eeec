//! Upload and download throughput against `cp` of the same file.
//!
//! Serves the storage services in-process on a Unix socket (the same services and socket
//! transport the daemon uses), creates a dir pool in a temporary directory, and for a dense
//! file and a sparse one measures `cp`, an upload and a download through gRPC. Prints a table.
//! Run with `cargo bench -p virtstoraged --bench stream_throughput` (`-- --size-mib N` to
//! change the dense file's size, default 256).

use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rvirt_proto::v1::storage_pool_service_client::StoragePoolServiceClient;
use rvirt_proto::v1::storage_vol_service_client::StorageVolServiceClient;
use rvirt_proto::v1::*;
use virtstoraged::command::HostRunner;
use virtstoraged::driver::{DriverPaths, StorageDriver};

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

async fn download(
    vols: &mut StorageVolServiceClient<tonic::transport::Channel>,
    vol: &str,
    dest: &Path,
    sparse: bool,
) {
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

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size_mib: u64 = args
        .iter()
        .position(|a| a == "--size-mib")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = StorageDriver::new(
        DriverPaths {
            config_dir: dir.path().join("config"),
            state_dir: dir.path().join("state"),
        },
        Arc::new(HostRunner),
    );
    let socket = dir.path().join("sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    let (pools_svc, vols_svc) = virtstoraged::storage_services(&driver);
    // BENCH_TUNED=1: HTTP/2 frames and windows sized for 1 MiB chunks on both sides.
    let tuned = std::env::var_os("BENCH_TUNED").is_some();
    let mut server = tonic::transport::Server::builder();
    if tuned {
        server = server
            .max_frame_size(Some((1 << 24) - 1))
            .initial_stream_window_size(Some(16 << 20))
            .initial_connection_window_size(Some(32 << 20));
    }
    tokio::spawn(
        server
            .add_service(pools_svc)
            .add_service(vols_svc)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let channel = if tuned {
        let path = socket.clone();
        tonic::transport::Endpoint::from_static("http://localhost")
            .max_frame_size((1 << 24) - 1)
            .initial_stream_window_size(16 << 20)
            .initial_connection_window_size(32 << 20)
            .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(hyper_util::rt::TokioIo::new)
                }
            }))
            .await
            .expect("connect")
    } else {
        rvirt::transport::unix_channel(&socket).await.expect("connect")
    };
    let mut pools = StoragePoolServiceClient::new(channel.clone());
    let mut vols = StorageVolServiceClient::new(channel)
        .max_decoding_message_size(8 << 20)
        .max_encoding_message_size(8 << 20);
    let pool_dir = dir.path().join("pool");
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

    let dense = dir.path().join("dense.img");
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
    let sparse = dir.path().join("sparse.img");
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
        "{:<34} {:>10} {:>9} {:>10} {:>9}",
        "operation", "bytes", "seconds", "MiB/s", "vs cp"
    );
    for (label, src, is_sparse) in [("dense", &dense, false), ("sparse", &sparse, true)] {
        let size = std::fs::metadata(src).expect("meta").len();
        let cp_time = cp(src, &dir.path().join("cp.out"));
        let name = format!("{label}.raw");
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
        let t = Instant::now();
        vols.upload_storage_vol(upload_stream(src.clone(), name.clone(), is_sparse))
            .await
            .expect("upload");
        let up = t.elapsed();
        let t = Instant::now();
        download(&mut vols, &name, &dir.path().join("down.out"), is_sparse).await;
        let down = t.elapsed();
        let row = |op: &str, d: Duration| {
            println!(
                "{:<34} {:>10} {:>9.3} {:>10.1} {:>8.2}x",
                op,
                size,
                d.as_secs_f64(),
                mbps(size, d),
                cp_time.as_secs_f64() / d.as_secs_f64()
            );
        };
        row(&format!("cp ({label} file)"), cp_time);
        row(
            &format!(
                "upload ({label}{})",
                if is_sparse { ", sparse stream" } else { "" }
            ),
            up,
        );
        row(
            &format!(
                "download ({label}{})",
                if is_sparse { ", sparse stream" } else { "" }
            ),
            down,
        );
    }
}
