//! `event --loop` as rvirsh runs it, observing a lifecycle script made by another client of the
//! same test driver (so nothing waits on a clock: the loop ends once the lines are in).

use std::sync::{Arc, Mutex};

use rvirsh::commands::{EventOptions, event_loop};
use rvirt::Connect;
use rvirt_proto::v1::WatchDomainEventsRequest;

#[tokio::test]
async fn event_loop_prints_virshs_lines_for_a_lifecycle_script() {
    let dir = tempfile::tempdir().expect("dir");
    let node = dir.path().join("node.xml");
    std::fs::write(&node, "<node/>").expect("node");
    let uri = format!("test://{}", node.display());
    let conn = Connect::open(&uri).await.expect("open");
    let mut events = conn
        .domain_events(WatchDomainEventsRequest::default())
        .await
        .expect("subscribe");

    let changes = tokio::spawn(async move {
        let other = Connect::open(&uri).await.expect("second client");
        let xml = "<domain type='test'><name>vm1</name><memory>65536</memory></domain>";
        let mut dom = other.define_domain_xml(xml, 0).await.expect("define");
        dom.create(0).await.expect("start");
        dom.suspend().await.expect("suspend");
        dom.resume().await.expect("resume");
        dom.shutdown(0).await.expect("shutdown");
        dom.undefine(0).await.expect("undefine");
    });

    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let interrupt = Arc::new(tokio::sync::Notify::new());
    let (seen, stop) = (Arc::clone(&lines), Arc::clone(&interrupt));
    let mut print = move |line: &str| {
        let mut seen = seen.lock().expect("lines");
        seen.push(line.to_owned());
        if seen.len() == 6 {
            stop.notify_one();
        }
    };
    let options = EventOptions {
        repeat: true,
        timeout: Some(std::time::Duration::from_secs(30)),
        timestamp: false,
    };
    let (count, end) = event_loop(&mut events, options, interrupt, &mut print).await;
    changes.await.expect("changes ran");
    assert_eq!(count, 6);
    assert_eq!(end, rvirsh::commands::End::Interrupted);
    assert_eq!(
        *lines.lock().expect("lines"),
        [
            "event 'lifecycle' for domain 'vm1': Defined Added\n",
            "event 'lifecycle' for domain 'vm1': Started Booted\n",
            "event 'lifecycle' for domain 'vm1': Suspended Paused\n",
            "event 'lifecycle' for domain 'vm1': Resumed Unpaused\n",
            "event 'lifecycle' for domain 'vm1': Stopped Shutdown\n",
            "event 'lifecycle' for domain 'vm1': Undefined Removed\n",
        ]
    );
}

#[tokio::test]
async fn one_shot_event_stops_after_the_first_event() {
    let dir = tempfile::tempdir().expect("dir");
    let node = dir.path().join("node.xml");
    std::fs::write(
        &node,
        "<node><domain type='test'><name>r</name><memory>1024</memory></domain></node>",
    )
    .expect("node");
    let uri = format!("test://{}", node.display());
    let conn = Connect::open(&uri).await.expect("open");
    let mut events = conn
        .domain_events(WatchDomainEventsRequest::default())
        .await
        .expect("subscribe");
    let dom = conn.lookup_domain_by_name("r").await.expect("lookup");
    dom.suspend().await.expect("suspend");
    dom.resume().await.expect("resume");
    let mut lines = Vec::new();
    let (count, end) = event_loop(
        &mut events,
        EventOptions::default(),
        Arc::new(tokio::sync::Notify::new()),
        &mut |line| lines.push(line.to_owned()),
    )
    .await;
    assert_eq!((count, end), (1, rvirsh::commands::End::Done));
    assert_eq!(lines, ["event 'lifecycle' for domain 'r': Suspended Paused\n"]);
}
