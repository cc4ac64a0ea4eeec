//! The in-process test driver through `Connect`: libvirt's default objects, lifecycle rules,
//! events with resume, read-only connections.

use std::time::Duration;

use rvirt::Connect;
use rvirt_proto::v1::domain_service_client::DomainServiceClient;
use rvirt_proto::v1::host_service_client::HostServiceClient;
use rvirt_proto::v1::*;
use tokio_stream::StreamExt as _;

fn by_name(name: &str) -> Option<DomainRef> {
    Some(DomainRef {
        key: Some(domain_ref::Key::Name(name.into())),
    })
}

async fn domains(uri: &str) -> DomainServiceClient<rvirt::connect::GrpcTransport> {
    let conn = Connect::open(uri).await.expect("open");
    DomainServiceClient::new(conn.transport("rvirt.v1.DomainService").expect("domain service"))
}

fn code(status: tonic::Status) -> ErrorCode {
    rvirt_proto::error::from_status(&status).code()
}

#[tokio::test]
async fn default_state_is_libvirts() {
    let conn = Connect::open("test:///default").await.expect("open");
    let mut host = HostServiceClient::new(conn.transport("rvirt.v1.HostService").expect("host"));
    assert_eq!(
        host.get_type(GetTypeRequest {})
            .await
            .expect("type")
            .into_inner()
            .r#type,
        "TEST"
    );
    let info = host
        .get_node_info(GetNodeInfoRequest {})
        .await
        .expect("node")
        .into_inner();
    assert_eq!(
        (info.model.as_str(), info.cpus, info.mhz, info.memory_kib),
        ("i686", 16, 1400, 3_145_728)
    );
    let mut d = DomainServiceClient::new(conn.transport("rvirt.v1.DomainService").expect("domain"));
    let list = d
        .list_domains(ListDomainsRequest { flags: 0 })
        .await
        .expect("list")
        .into_inner()
        .domains;
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].name.as_str(), list[0].id, list[0].state()),
        ("test", 1, DomainState::Running)
    );
    assert_eq!(list[0].uuid, "6695eb01-f6a4-8304-79aa-97f2502e193f");
}

#[tokio::test]
async fn lifecycle_rules_and_events_follow_libvirt() {
    // A file-backed instance of its own, so other tests do not interfere.
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("node.xml");
    std::fs::write(&node, "<node/>").expect("node file");
    let uri = format!("test://{}", node.display());
    let mut d = domains(&uri).await;
    let mut events = d
        .watch_domain_events(WatchDomainEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let xml = "<domain type='test'><name>vm1</name><memory unit='MiB'>256</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>";
    d.define_domain_xml(DefineDomainXmlRequest {
        xml: xml.into(),
        flags: 0,
    })
    .await
    .expect("define");
    d.start_domain(StartDomainRequest {
        domain: by_name("vm1"),
        flags: 0,
    })
    .await
    .expect("start");
    let err = d
        .start_domain(StartDomainRequest {
            domain: by_name("vm1"),
            flags: 0,
        })
        .await
        .expect_err("twice");
    assert_eq!(code(err), ErrorCode::OperationInvalid);
    d.suspend_domain(SuspendDomainRequest {
        domain: by_name("vm1"),
    })
    .await
    .expect("suspend");
    d.resume_domain(ResumeDomainRequest {
        domain: by_name("vm1"),
    })
    .await
    .expect("resume");
    d.shutdown_domain(ShutdownDomainRequest {
        domain: by_name("vm1"),
        flags: 0,
    })
    .await
    .expect("shutdown");
    let state = d
        .get_domain_state(GetDomainStateRequest {
            domain: by_name("vm1"),
        })
        .await
        .expect("state")
        .into_inner();
    assert_eq!(state.state(), DomainState::Shutoff);
    d.undefine_domain(UndefineDomainRequest {
        domain: by_name("vm1"),
        flags: 0,
    })
    .await
    .expect("undefine");
    let err = d
        .lookup_domain(LookupDomainRequest {
            domain: by_name("vm1"),
        })
        .await
        .expect_err("gone");
    assert_eq!(code(err), ErrorCode::NoDomain);

    let mut seen = Vec::new();
    while seen.len() < 6 {
        let next = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("event in time");
        let message = next.expect("open").expect("ok").message.expect("message");
        if let watch_domain_events_response::Message::Event(e) = message
            && let Some(domain_event::Event::Lifecycle(l)) = e.event
        {
            seen.push(l.r#type());
        }
    }
    use DomainEventType as T;
    assert_eq!(
        seen,
        vec![
            T::Defined,
            T::Started,
            T::Suspended,
            T::Resumed,
            T::Stopped,
            T::Undefined
        ]
    );
}

#[tokio::test]
async fn undefining_a_running_domain_makes_it_transient_and_destroy_removes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("node.xml");
    std::fs::write(
        &node,
        "<node><domain type='test'><name>t</name><memory>1024</memory></domain></node>",
    )
    .expect("node file");
    let mut d = domains(&format!("test://{}", node.display())).await;
    d.undefine_domain(UndefineDomainRequest {
        domain: by_name("t"),
        flags: 0,
    })
    .await
    .expect("undefine");
    let t = d
        .lookup_domain(LookupDomainRequest { domain: by_name("t") })
        .await
        .expect("still there")
        .into_inner();
    let t = t.domain.expect("domain");
    assert!(t.active && !t.persistent);
    let err = d
        .set_domain_autostart(SetDomainAutostartRequest {
            domain: by_name("t"),
            autostart: true,
        })
        .await;
    assert_eq!(code(err.expect_err("transient")), ErrorCode::OperationInvalid);
    d.destroy_domain(DestroyDomainRequest {
        domain: by_name("t"),
        flags: 0,
    })
    .await
    .expect("destroy");
    let err = d
        .lookup_domain(LookupDomainRequest { domain: by_name("t") })
        .await
        .expect_err("transient gone");
    assert_eq!(code(err), ErrorCode::NoDomain);
}

#[tokio::test]
async fn read_only_connections_refuse_writes_before_sending() {
    let conn = Connect::open_read_only("test:///default").await.expect("open");
    let mut d = DomainServiceClient::new(conn.transport("rvirt.v1.DomainService").expect("domain"));
    let err = d
        .destroy_domain(DestroyDomainRequest {
            domain: by_name("test"),
            flags: 0,
        })
        .await
        .expect_err("ro");
    assert_eq!(code(err), ErrorCode::OperationDenied);
    d.get_domain_info(GetDomainInfoRequest {
        domain: by_name("test"),
    })
    .await
    .expect("reads pass");
}

#[tokio::test]
async fn a_resumed_watch_replays_missed_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("node.xml");
    std::fs::write(
        &node,
        "<node><domain type='test'><name>r</name><memory>1024</memory></domain></node>",
    )
    .expect("node file");
    let mut d = domains(&format!("test://{}", node.display())).await;
    d.suspend_domain(SuspendDomainRequest { domain: by_name("r") })
        .await
        .expect("suspend");
    d.resume_domain(ResumeDomainRequest { domain: by_name("r") })
        .await
        .expect("resume");
    let mut replay = d
        .watch_domain_events(WatchDomainEventsRequest {
            since_sequence: 1,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let first = replay
        .next()
        .await
        .expect("open")
        .expect("ok")
        .message
        .expect("message");
    let watch_domain_events_response::Message::Event(e) = first else {
        panic!("expected the replayed event")
    };
    assert_eq!(e.sequence, 2);
    let second = replay
        .next()
        .await
        .expect("open")
        .expect("ok")
        .message
        .expect("message");
    assert!(matches!(
        second,
        watch_domain_events_response::Message::CaughtUp(CaughtUp {
            current_sequence: 2,
            ..
        })
    ));
}

#[tokio::test]
async fn category_uris_without_the_service_say_so() {
    let err = Connect::open("xen:///system").await.expect_err("bad driver");
    assert_eq!(err.code, ErrorCode::InvalidArg);
    let conn = Connect::open("test:///default").await.expect("open");
    assert!(conn.transport("rvirt.v1.AdminService").is_err());
}

#[tokio::test]
async fn typed_handles_drive_the_lifecycle_and_the_subscription_sees_it() {
    use rvirt::watch::WatchItem;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("node.xml");
    std::fs::write(&node, "<node/>").expect("node file");
    let conn = Connect::open(&format!("test://{}", node.display()))
        .await
        .expect("open");
    let mut events = conn
        .domain_events(WatchDomainEventsRequest::default())
        .await
        .expect("subscribe");
    let xml = "<domain type='test'><name>h</name><memory>65536</memory><vcpu>2</vcpu></domain>";
    let mut dom = conn.define_domain_xml(xml, 0).await.expect("define");
    assert_eq!(dom.id(), None);
    dom.create(0).await.expect("start");
    assert!(dom.id().is_some());
    assert_eq!(dom.info().await.expect("info").nr_virt_cpu, 2);
    dom.set_vcpus(1, 0).await.expect("set vcpus");
    assert_eq!(dom.info().await.expect("info").nr_virt_cpu, 1);
    dom.set_memory(32768, 0).await.expect("setmem");
    assert_eq!(dom.info().await.expect("info").memory_kib, 32768);
    let err = dom.set_memory(1 << 30, 0).await.expect_err("above max");
    assert_eq!(err.code, ErrorCode::InvalidArg);
    dom.destroy(0).await.expect("destroy");
    let found = conn
        .lookup_domain_by_uuid(dom.uuid())
        .await
        .expect("lookup by uuid");
    assert_eq!(found.name(), "h");
    assert_eq!(
        conn.list_all_domains(DomainListFlag::Inactive as u32)
            .await
            .expect("list")
            .len(),
        1
    );
    assert_eq!(
        conn.list_all_domains(DomainListFlag::Active as u32)
            .await
            .expect("list")
            .len(),
        0
    );

    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let item = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("in time")
            .expect("open");
        if let WatchItem::Event(DomainEvent {
            event: Some(domain_event::Event::Lifecycle(l)),
            ..
        }) = item
        {
            kinds.push(l.r#type());
        }
    }
    assert_eq!(
        kinds,
        vec![
            DomainEventType::Defined,
            DomainEventType::Started,
            DomainEventType::Stopped
        ]
    );
}
