//! The network, storage and secret handles against the in-process test driver: libvirt's
//! default objects and lifecycle rules, volume transfers (sparse and not), events.

use std::io::Cursor;
use std::time::Duration;

use rvirt::Connect;
use rvirt::watch::WatchItem;
use rvirt_proto::v1::*;
use tokio_stream::StreamExt as _;

/// A test driver instance of its own, from a `<node>` document.
async fn node(text: &str) -> (tempfile::TempDir, Connect) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.xml");
    std::fs::write(&path, text).expect("node file");
    let conn = Connect::open(&format!("test://{}", path.display()))
        .await
        .expect("open");
    (dir, conn)
}

const POOL: &str = "<node><pool type='dir'><name>p</name><target><path>/p</path></target></pool></node>";

#[tokio::test]
async fn default_network_and_pool_are_libvirts() {
    let conn = Connect::open("test:///default").await.expect("open");
    let net = conn.lookup_network_by_name("default").await.expect("network");
    assert_eq!(net.uuid(), "dd8fe884-6c02-601e-7551-cca97df1c5df");
    assert!(net.summary().active && net.summary().persistent);
    assert_eq!(net.bridge_name().await.expect("bridge"), "virbr0");
    let pool = conn
        .lookup_storage_pool_by_name("default-pool")
        .await
        .expect("pool");
    let info = pool.info().await.expect("info");
    assert_eq!(info.state(), StoragePoolState::Running);
    assert_eq!(
        (info.capacity_bytes, info.allocation_bytes, info.available_bytes),
        (100 << 30, 0, 100 << 30)
    );
    assert_eq!(pool.summary().r#type, "dir");
}

#[tokio::test]
async fn starting_an_active_network_is_operation_invalid() {
    let (_dir, conn) = node("<node/>").await;
    let xml = "<network><name>n</name><bridge name='br1'/></network>";
    let mut net = conn.define_network_xml(xml, 0).await.expect("define");
    assert!(!net.summary().active);
    net.create().await.expect("start");
    let err = net.create().await.expect_err("twice");
    assert_eq!(err.code, ErrorCode::OperationInvalid);
    assert_eq!(
        conn.list_all_networks(NetworkListFlag::Active as u32)
            .await
            .expect("list")
            .len(),
        1
    );
}

#[tokio::test]
async fn undefining_an_active_network_leaves_it_transient_until_destroyed() {
    let (_dir, conn) = node("<node/>").await;
    let mut net = conn
        .define_network_xml("<network><name>n</name></network>", 0)
        .await
        .expect("define");
    net.create().await.expect("start");
    net.undefine().await.expect("undefine");
    net.refresh().await.expect("refresh");
    assert!(net.summary().active && !net.summary().persistent);
    let err = net.set_autostart(true).await.expect_err("transient");
    assert_eq!(err.code, ErrorCode::OperationInvalid);
    net.destroy().await.expect("destroy");
    let err = conn.lookup_network_by_name("n").await.expect_err("gone");
    assert_eq!(err.code, ErrorCode::NoNetwork);
}

#[tokio::test]
async fn network_events_follow_the_lifecycle() {
    let (_dir, conn) = node("<node/>").await;
    let mut events = conn
        .network_events(WatchNetworkEventsRequest::default())
        .await
        .expect("subscribe");
    let mut net = conn
        .create_network_xml("<network><name>t</name></network>", 0)
        .await
        .expect("create");
    assert!(net.summary().active);
    net.refresh().await.expect("refresh");
    net.destroy().await.expect("destroy");
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let item = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("in time")
            .expect("open");
        if let WatchItem::Event(NetworkEvent {
            event: Some(network_event::Event::Lifecycle(l)),
            ..
        }) = item
        {
            kinds.push(l.r#type());
        }
    }
    use NetworkEventLifecycleType as T;
    assert_eq!(kinds, [T::Started, T::Stopped]);
}

#[tokio::test]
async fn pool_rules_follow_libvirts_test_driver() {
    let (_dir, conn) = node("<node/>").await;
    let mut events = conn
        .storage_pool_events(WatchStoragePoolEventsRequest::default())
        .await
        .expect("subscribe");
    let xml = "<pool type='dir'><name>q</name><target><path>/q</path></target></pool>";
    let mut pool = conn.define_storage_pool_xml(xml, 0).await.expect("define");
    pool.build(0).await.expect("build");
    pool.create(0).await.expect("start");
    assert_eq!(
        pool.create(0).await.expect_err("twice").code,
        ErrorCode::OperationInvalid
    );
    assert_eq!(
        pool.undefine().await.expect_err("active").code,
        ErrorCode::OperationInvalid
    );
    assert_eq!(
        pool.build(0).await.expect_err("active").code,
        ErrorCode::OperationInvalid
    );
    pool.refresh().await.expect("refresh");
    pool.destroy().await.expect("destroy");
    assert_eq!(
        pool.refresh().await.expect_err("inactive").code,
        ErrorCode::OperationInvalid
    );
    let info = pool.info().await.expect("info");
    assert_eq!(
        (info.state(), info.capacity_bytes),
        (StoragePoolState::Inactive, 0)
    );
    pool.delete(0).await.expect("delete");
    pool.undefine().await.expect("undefine");
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let item = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("in time")
            .expect("open");
        match item {
            WatchItem::Event(StoragePoolEvent {
                event: Some(storage_pool_event::Event::Lifecycle(l)),
                ..
            }) => seen.push(format!("{:?}", l.r#type())),
            WatchItem::Event(StoragePoolEvent {
                event: Some(storage_pool_event::Event::Refresh(_)),
                ..
            }) => seen.push("Refresh".into()),
            _ => {}
        }
    }
    assert_eq!(
        seen,
        [
            "Defined",
            "Created",
            "Started",
            "Refresh",
            "Stopped",
            "Deleted",
            "Undefined"
        ]
    );
}

#[tokio::test]
async fn volumes_get_pool_paths_keys_and_count_against_the_pool() {
    let (_dir, conn) = node(POOL).await;
    let pool = conn.lookup_storage_pool_by_name("p").await.expect("pool");
    let vol = pool
        .create_volume_xml(
            "<volume><name>a.img</name><capacity unit='GiB'>2</capacity><allocation unit='GiB'>1</allocation></volume>",
            0,
        )
        .await
        .expect("create");
    assert_eq!((vol.key(), vol.pool_name()), ("/p/a.img", "p"));
    assert_eq!(vol.path().await.expect("path"), "/p/a.img");
    assert_eq!(pool.info().await.expect("info").allocation_bytes, 1 << 30);
    let by_path = conn.lookup_volume_by_path("/p/a.img").await.expect("by path");
    assert_eq!(by_path.name(), "a.img");
    let err = pool
        .create_volume_xml("<volume><name>a.img</name><capacity>1</capacity></volume>", 0)
        .await
        .expect_err("exists");
    assert_eq!(err.code, ErrorCode::StorageVolExist);
    let err = pool
        .create_volume_xml(
            "<volume><name>big</name><capacity unit='TiB'>1</capacity></volume>",
            0,
        )
        .await
        .expect_err("no space");
    assert_eq!(err.code, ErrorCode::InternalError);
    vol.delete(0).await.expect("delete");
    assert_eq!(pool.info().await.expect("info").allocation_bytes, 0);
    let err = conn.lookup_volume_by_key("/p/a.img").await.expect_err("gone");
    assert_eq!(err.code, ErrorCode::NoStorageVol);
}

#[tokio::test]
async fn volume_xml_validates_against_libvirts_schema() {
    let (_dir, conn) = node(POOL).await;
    let pool = conn.lookup_storage_pool_by_name("p").await.expect("pool");
    let vol = pool
        .create_volume_xml("<volume><name>x.qcow2</name><capacity>4096</capacity><target><format type='qcow2'/></target></volume>", 0)
        .await
        .expect("create");
    let xml = vol.xml_desc().await.expect("xml");
    rvirt_testdata::validate("storagevol.rng", &xml).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn upload_then_download_round_trips_and_sparse_streams_carry_holes() {
    let (_dir, conn) = node(POOL).await;
    let pool = conn.lookup_storage_pool_by_name("p").await.expect("pool");
    let vol = pool
        .create_volume_xml(
            "<volume><name>d</name><capacity unit='MiB'>3</capacity></volume>",
            0,
        )
        .await
        .expect("create");
    let mut data = vec![0u8; 3 << 20];
    data[..1000].fill(7);
    data[(2 << 20) + 5..(2 << 20) + 10].fill(9);
    let mut reported = 0;
    let sent = vol
        .upload(
            0,
            0,
            StorageVolUploadFlag::SparseStream as u32,
            Cursor::new(data.clone()),
            |done| reported = done,
        )
        .await
        .expect("upload");
    assert_eq!(reported, 3 << 20);
    assert_eq!(sent.total(), 3 << 20);
    assert_eq!(
        sent.hole_bytes,
        1 << 20,
        "the all-zero middle MiB travels as a hole"
    );

    let mut plain = Cursor::new(Vec::new());
    let got = vol
        .download(0, 0, 0, &mut plain, |_, _| {})
        .await
        .expect("download");
    assert_eq!((got.data_bytes, got.hole_bytes), (3 << 20, 0));
    assert_eq!(plain.into_inner(), data);

    let mut sparse = Cursor::new(Vec::new());
    let mut last = (0, 0);
    let got = vol
        .download(
            0,
            0,
            StorageVolDownloadFlag::SparseStream as u32,
            &mut sparse,
            |d, t| last = (d, t),
        )
        .await
        .expect("sparse download");
    assert_eq!(got.hole_bytes, 1 << 20);
    assert_eq!(last, (3 << 20, 3 << 20));
    assert_eq!(sparse.into_inner(), data);

    let mut part = Cursor::new(Vec::new());
    vol.download(999, 3, 0, &mut part, |_, _| {})
        .await
        .expect("range");
    assert_eq!(part.into_inner(), [7, 0, 0]);
}

#[tokio::test]
async fn uploads_past_the_capacity_are_refused_and_wipe_clears_data() {
    let (_dir, conn) = node(POOL).await;
    let pool = conn.lookup_storage_pool_by_name("p").await.expect("pool");
    let vol = pool
        .create_volume_xml("<volume><name>s</name><capacity>16</capacity></volume>", 0)
        .await
        .expect("create");
    let err = vol
        .upload(0, 0, 0, Cursor::new(vec![1u8; 17]), |_| {})
        .await
        .expect_err("too much");
    assert_eq!(err.code, ErrorCode::InvalidArg);
    vol.upload(0, 0, 0, Cursor::new(vec![1u8; 16]), |_| {})
        .await
        .expect("fits");
    vol.wipe(StorageVolWipeAlgorithm::Zero).await.expect("wipe");
    let mut out = Cursor::new(Vec::new());
    vol.download(0, 0, 0, &mut out, |_, _| {})
        .await
        .expect("download");
    assert_eq!(out.into_inner(), vec![0u8; 16]);
}

#[tokio::test]
async fn resize_needs_shrink_to_shrink() {
    let (_dir, conn) = node(POOL).await;
    let pool = conn.lookup_storage_pool_by_name("p").await.expect("pool");
    let vol = pool
        .create_volume_xml(
            "<volume><name>r</name><capacity>4096</capacity><allocation>0</allocation></volume>",
            0,
        )
        .await
        .expect("create");
    let err = vol.resize(1024, 0).await.expect_err("shrink");
    assert_eq!(err.code, ErrorCode::InvalidArg);
    vol.resize(1024, StorageVolResizeFlag::Shrink as u32)
        .await
        .expect("shrink");
    vol.resize(1024, StorageVolResizeFlag::Delta as u32)
        .await
        .expect("grow");
    assert_eq!(vol.info().await.expect("info").capacity_bytes, 2048);
}

#[tokio::test]
async fn clone_copies_the_source_data() {
    let (_dir, conn) = node(POOL).await;
    let pool = conn.lookup_storage_pool_by_name("p").await.expect("pool");
    let src = pool
        .create_volume_xml("<volume><name>src</name><capacity>8</capacity></volume>", 0)
        .await
        .expect("create");
    src.upload(0, 0, 0, Cursor::new(b"abcdefgh".to_vec()), |_| {})
        .await
        .expect("upload");
    let copy = pool
        .create_volume_xml_from("<volume><name>dst</name><capacity>8</capacity></volume>", &src, 0)
        .await
        .expect("clone");
    let mut out = Cursor::new(Vec::new());
    copy.download(0, 0, 0, &mut out, |_, _| {})
        .await
        .expect("download");
    assert_eq!(out.into_inner(), b"abcdefgh");
}

#[tokio::test]
async fn secrets_keep_values_and_never_return_private_ones() {
    let (_dir, conn) = node("<node/>").await;
    let mut events = conn
        .secret_events(WatchSecretEventsRequest::default())
        .await
        .expect("subscribe");
    let xml =
        "<secret ephemeral='no' private='no'><usage type='ceph'><name>client.admin</name></usage></secret>";
    let secret = conn.define_secret_xml(xml, 0).await.expect("define");
    assert_eq!(secret.usage_type(), SecretUsageType::Ceph);
    let err = secret.value().await.expect_err("no value yet");
    assert_eq!(err.code, ErrorCode::NoSecret);
    secret.set_value(b"s3cret").await.expect("set");
    assert_eq!(secret.value().await.expect("value"), b"s3cret");
    let by_usage = conn
        .lookup_secret_by_usage(SecretUsageType::Ceph, "client.admin")
        .await
        .expect("by usage");
    assert_eq!(by_usage.uuid(), secret.uuid());
    assert!(secret.xml_desc().await.expect("xml").contains(secret.uuid()));
    let clash = conn
        .define_secret_xml(
            "<secret><uuid>3c81f5b2-8403-7b23-c8d6-21ccc2f80d6f</uuid><usage type='ceph'><name>client.admin</name></usage></secret>",
            0,
        )
        .await
        .expect_err("same usage");
    assert_eq!(clash.code, ErrorCode::OperationInvalid);

    let private = conn
        .define_secret_xml("<secret private='yes'/>", 0)
        .await
        .expect("define private");
    private.set_value(b"x").await.expect("set");
    assert_eq!(
        private.value().await.expect_err("private").code,
        ErrorCode::OperationDenied
    );
    assert_eq!(
        conn.list_all_secrets(SecretListFlag::Private as u32)
            .await
            .expect("list")
            .len(),
        1
    );
    secret.undefine().await.expect("undefine");
    let mut kinds = Vec::new();
    while kinds.len() < 5 {
        let item = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("in time")
            .expect("open");
        match item {
            WatchItem::Event(SecretEvent {
                event: Some(secret_event::Event::Lifecycle(l)),
                ..
            }) => kinds.push(format!("{:?}", l.r#type())),
            WatchItem::Event(SecretEvent {
                event: Some(secret_event::Event::ValueChanged(_)),
                ..
            }) => kinds.push("ValueChanged".into()),
            _ => {}
        }
    }
    assert_eq!(
        kinds,
        ["Defined", "ValueChanged", "Defined", "ValueChanged", "Undefined"]
    );
}

#[tokio::test]
async fn read_only_connections_read_but_cannot_create_volumes() {
    let conn = Connect::open_read_only("test:///default").await.expect("open");
    let pool = conn
        .lookup_storage_pool_by_name("default-pool")
        .await
        .expect("pool");
    assert!(pool.info().await.is_ok());
    let err = pool
        .create_volume_xml("<volume><name>ro</name><capacity>1</capacity></volume>", 0)
        .await
        .expect_err("read-only");
    assert_eq!(err.code, ErrorCode::OperationDenied);
}

#[tokio::test]
async fn the_test_driver_refuses_data_it_would_have_to_keep_past_its_limit() {
    let (_dir, conn) = node(POOL).await;
    let pool = conn.lookup_storage_pool_by_name("p").await.expect("pool");
    let vol = pool
        .create_volume_xml(
            "<volume><name>big</name><capacity unit='GiB'>1</capacity><allocation>0</allocation></volume>",
            0,
        )
        .await
        .expect("create");
    let err = vol
        .upload(300 << 20, 0, 0, Cursor::new(vec![1u8; 4]), |_| {})
        .await
        .expect_err("past the in-memory limit");
    assert_eq!(err.code, ErrorCode::OperationUnsupported);
    vol.upload(
        300 << 20,
        0,
        StorageVolUploadFlag::SparseStream as u32,
        Cursor::new(vec![0u8; 4096]),
        |_| {},
    )
    .await
    .expect("holes cost nothing");
}
