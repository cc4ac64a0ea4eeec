//! End to end through virtproxyd: a real guest's lifecycle with its event stream and its
//! console (a bidirectional stream), and a volume upload (client stream) and download (server
//! stream), all on the proxy's socket (`rvirt-sock`), which forwards them undecoded.

use std::time::Duration;

use rvirt_e2e::guest::{self, SerialKind, Transcript};
use rvirt_e2e::qemu::{Reaper, qemu_present};
use rvirt_e2e::{DaemonProcess, TestRoot, channel};
use rvirt_proto::v1::domain_lifecycle_event::Detail;
use rvirt_proto::v1::domain_service_client::DomainServiceClient;
use rvirt_proto::v1::storage_pool_service_client::StoragePoolServiceClient;
use rvirt_proto::v1::storage_vol_service_client::StorageVolServiceClient;
use rvirt_proto::v1::*;
use tokio_stream::StreamExt as _;

const DEADLINE: Duration = Duration::from_secs(60);

fn by_name(name: &str) -> Option<DomainRef> {
    Some(DomainRef {
        key: Some(domain_ref::Key::Name(name.to_owned())),
    })
}

#[tokio::test]
async fn a_guest_runs_with_events_and_console_through_the_proxy() {
    if !qemu_present() {
        return;
    }
    let root = TestRoot::new();
    let _reaper = Reaper::new(&root);
    let _qemu = DaemonProcess::start("virtqemud", &root).await;
    let _proxy = DaemonProcess::start("virtproxyd", &root).await;
    // No rvirt-uri: the proxy routes to qemu:///system, i.e. virtqemud.
    let mut domains = DomainServiceClient::new(channel(&root.socket("rvirt-sock")).await);

    let mut events = domains
        .watch_domain_events(WatchDomainEventsRequest::default())
        .await
        .expect("watch through the proxy")
        .into_inner();
    loop {
        let message = tokio::time::timeout(DEADLINE, events.next())
            .await
            .expect("caught up in time")
            .expect("stream open")
            .expect("message");
        if let Some(watch_domain_events_response::Message::CaughtUp(_)) = message.message {
            break;
        }
    }

    let disk = root.path().join("proxied.img");
    guest::write_boot_disk(&disk, "proxied").expect("boot disk");
    domains
        .define_domain_xml(DefineDomainXmlRequest {
            xml: guest::domain_xml("proxied", &disk, "qemu", SerialKind::Pty),
            flags: 0,
        })
        .await
        .expect("define through the proxy");
    domains
        .start_domain(StartDomainRequest {
            domain: by_name("proxied"),
            flags: DomainCreateFlag::StartPaused as u32,
        })
        .await
        .expect("start through the proxy");

    // The console: a bidirectional stream through the proxy.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(OpenDomainConsoleRequest {
        message: Some(open_domain_console_request::Message::Open(DomainConsoleOpen {
            domain: by_name("proxied"),
            dev_name: String::new(),
            flags: 0,
        })),
    })
    .await
    .expect("queue open");
    let mut console = domains
        .open_domain_console(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("console through the proxy")
        .into_inner();
    let first = console.next().await.expect("opened").expect("opened message");
    assert!(matches!(
        first.message,
        Some(open_domain_console_response::Message::Opened(_))
    ));
    domains
        .resume_domain(ResumeDomainRequest {
            domain: by_name("proxied"),
        })
        .await
        .expect("resume");
    let mut transcript = Transcript::default();
    let mut expect = async |console: &mut tonic::Streaming<OpenDomainConsoleResponse>, needle: &str| {
        let wait = async {
            loop {
                if transcript.take_through(needle.as_bytes()).is_some() {
                    return;
                }
                match console.next().await {
                    Some(Ok(OpenDomainConsoleResponse {
                        message: Some(open_domain_console_response::Message::Data(d)),
                    })) => transcript.push(&d),
                    other => panic!("console ended: {other:?}"),
                }
            }
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .unwrap_or_else(|_| panic!("{needle:?} not received through the proxy"));
    };
    expect(&mut console, &guest::banner_line("proxied")).await;
    tx.send(OpenDomainConsoleRequest {
        message: Some(open_domain_console_request::Message::Data(b"w".to_vec())),
    })
    .await
    .expect("key");
    expect(&mut console, "w").await;

    domains
        .destroy_domain(DestroyDomainRequest {
            domain: by_name("proxied"),
            flags: 0,
        })
        .await
        .expect("destroy through the proxy");
    // Started, resumed and stopped all arrived through the proxy's event stream.
    let mut seen = Vec::new();
    let stopped = tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(message)) = events.next().await {
            if let Some(watch_domain_events_response::Message::Event(e)) = message.message
                && let Some(domain_event::Event::Lifecycle(l)) = e.event
            {
                seen.push(l.r#type);
                if l.r#type == DomainEventType::Stopped as i32 {
                    return l.detail == Some(Detail::Stopped(DomainEventStoppedDetail::Destroyed as i32));
                }
            }
        }
        false
    })
    .await
    .expect("events in time");
    assert!(stopped, "a destroyed event arrived: {seen:?}");
    assert!(seen.contains(&(DomainEventType::Started as i32)), "{seen:?}");
    assert!(seen.contains(&(DomainEventType::Resumed as i32)), "{seen:?}");
}

#[tokio::test]
async fn a_volume_is_uploaded_and_downloaded_through_the_proxy() {
    let root = TestRoot::new();
    let _storage = DaemonProcess::start("virtstoraged", &root).await;
    let _proxy = DaemonProcess::start("virtproxyd", &root).await;
    let proxy = channel(&root.socket("rvirt-sock")).await;
    let mut pools = StoragePoolServiceClient::new(proxy.clone());
    let mut vols = StorageVolServiceClient::new(proxy);
    let dir = root.path().join("pool");
    pools
        .define_storage_pool_xml(DefineStoragePoolXmlRequest {
            xml: format!(
                "<pool type='dir'><name>up</name><target><path>{}</path></target></pool>",
                dir.display()
            ),
            flags: 0,
        })
        .await
        .expect("define pool");
    let pool = Some(StoragePoolRef {
        key: Some(storage_pool_ref::Key::Name("up".to_owned())),
    });
    pools
        .build_storage_pool(BuildStoragePoolRequest {
            pool: pool.clone(),
            flags: 0,
        })
        .await
        .expect("build");
    pools
        .start_storage_pool(StartStoragePoolRequest {
            pool: pool.clone(),
            flags: 0,
        })
        .await
        .expect("start");
    const SIZE: usize = 4 << 20;
    vols.create_storage_vol_xml(CreateStorageVolXmlRequest {
        pool: pool.clone(),
        xml: format!(
            "<volume><name>data.raw</name><capacity unit='bytes'>{SIZE}</capacity>\
             <target><format type='raw'/></target></volume>"
        ),
        flags: 0,
    })
    .await
    .expect("create volume");
    let vol = Some(StorageVolRef {
        key: Some(storage_vol_ref::Key::PoolAndName(StorageVolByName {
            pool: pool.clone(),
            name: "data.raw".to_owned(),
        })),
    });
    let content: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let mut messages = vec![UploadStorageVolRequest {
        message: Some(upload_storage_vol_request::Message::Start(
            StorageVolUploadStart {
                vol: vol.clone(),
                offset: 0,
                length: SIZE as u64,
                flags: 0,
            },
        )),
    }];
    for chunk in content.chunks(256 << 10) {
        messages.push(UploadStorageVolRequest {
            message: Some(upload_storage_vol_request::Message::Data(chunk.to_vec())),
        });
    }
    let reply = vols
        .upload_storage_vol(tokio_stream::iter(messages))
        .await
        .expect("upload through the proxy")
        .into_inner();
    assert_eq!(reply.data_bytes, SIZE as u64);
    assert_eq!(std::fs::read(dir.join("data.raw")).expect("volume file"), content);

    let mut stream = vols
        .download_storage_vol(DownloadStorageVolRequest {
            vol,
            offset: 0,
            length: 0,
            flags: 0,
        })
        .await
        .expect("download through the proxy")
        .into_inner();
    let mut back = vec![0u8; SIZE];
    while let Some(message) = stream.message().await.expect("download message") {
        if let Some(download_storage_vol_response::Chunk::Data(d)) = message.chunk {
            let at = message.offset as usize;
            back[at..at + d.len()].copy_from_slice(&d);
        }
    }
    assert_eq!(back, content);
}
