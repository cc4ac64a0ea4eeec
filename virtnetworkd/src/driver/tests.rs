//! Driver logic against the recording host: what start, destroy, re-adoption, autostart and
//! updates do to the host and to the driver's files.

use std::sync::Arc;

use tokio_stream::StreamExt as _;

use super::*;
use crate::host::RecordingHost;

struct Fixture {
    _dir: tempfile::TempDir,
    paths: DriverPaths,
    host: Arc<RecordingHost>,
    driver: NetworkDriver,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = DriverPaths::new(&dir.path().join("config"), &dir.path().join("state"));
    let host = Arc::new(RecordingHost::default());
    let driver = NetworkDriver::new(paths.clone(), host.clone());
    Fixture {
        _dir: dir,
        paths,
        host,
        driver,
    }
}

impl Fixture {
    /// A second driver over the same files and host: a restarted daemon.
    async fn restart(&self) -> NetworkDriver {
        let driver = NetworkDriver::new(self.paths.clone(), self.host.clone());
        driver.load().await;
        driver
    }
}

const NAT: &str = "<network><name>default</name><forward mode='nat'/>\
    <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>\
    <range start='192.168.122.2' end='192.168.122.254'/></dhcp></ip></network>";

fn name(n: &str) -> Key {
    Key::Name(n.to_owned())
}

#[tokio::test]
async fn define_persists_the_xml_with_a_generated_uuid_bridge_and_mac() {
    let f = fixture();
    let summary = f.driver.define(NAT).await.expect("define");
    assert_eq!(summary.bridge, "virbr0");
    assert!(summary.persistent && !summary.active);
    let saved = std::fs::read_to_string(f.paths.config_file("default")).expect("config file");
    let def = NetworkDef::parse(&saved).expect("saved XML parses");
    assert_eq!(def.uuid(), summary.uuid);
    assert!(
        def.mac
            .as_ref()
            .is_some_and(|m| m.address.starts_with("52:54:00:")),
        "{saved}"
    );
    assert_eq!(def.bridge_name(), Some("virbr0"));
}

#[tokio::test]
async fn bridge_names_in_use_on_the_host_or_by_networks_are_skipped() {
    let f = fixture();
    f.host.add_link("virbr0");
    let a = f.driver.define(NAT).await.expect("define");
    assert_eq!(a.bridge, "virbr1");
    let b = f
        .driver
        .define(&NAT.replace("default", "second"))
        .await
        .expect("define");
    assert_eq!(b.bridge, "virbr2");
}

#[tokio::test]
async fn redefining_keeps_uuid_bridge_and_mac() {
    let f = fixture();
    let first = f.driver.define(NAT).await.expect("define");
    let before = f.driver.xml(&name("default"), true).expect("xml");
    let second = f.driver.define(NAT).await.expect("redefine");
    assert_eq!(first.uuid, second.uuid);
    assert_eq!(before, f.driver.xml(&name("default"), true).expect("xml"));
}

#[tokio::test]
async fn a_uuid_clash_with_another_network_is_refused() {
    let f = fixture();
    let a = f.driver.define(NAT).await.expect("define");
    let other = NAT
        .replace("default", "other")
        .replace("<forward", &format!("<uuid>{}</uuid><forward", a.uuid));
    let err = f.driver.define(&other).await.expect_err("clash");
    assert_eq!(err.code, ErrorCode::NetworkExist);
}

#[tokio::test]
async fn bad_xml_is_an_xml_error_with_its_path() {
    let f = fixture();
    let err = f
        .driver
        .define("<network><name>x</name><bogus/></network>")
        .await
        .expect_err("bad");
    assert_eq!(err.code, ErrorCode::XmlError);
    assert_eq!(err.xml_path, "/network/bogus");
    assert!(f.driver.list(0).is_empty(), "nothing was defined");
}

#[tokio::test]
async fn start_builds_bridge_then_firewall_then_forwarding_then_dnsmasq() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    let summary = f.driver.start(&name("default")).await.expect("start");
    assert!(summary.active);
    let calls = f.host.calls();
    assert_eq!(calls[0], "create_bridge virbr0");
    assert!(
        calls[1].starts_with("nft add table ip rvirt_default\n"),
        "{}",
        calls[1]
    );
    assert!(calls[1].contains("masquerade"), "{}", calls[1]);
    assert_eq!(calls[2], "forwarding ipv4=true ipv6=false");
    assert!(
        calls[3].starts_with("start_dnsmasq ") && calls[3].ends_with("default.conf"),
        "{}",
        calls[3]
    );
    let conf = std::fs::read_to_string(f.paths.dnsmasq_file("default", "conf")).expect("conf written");
    assert!(conf.contains("\ninterface=virbr0\n"), "{conf}");
    assert!(f.paths.status_file("default").exists());
    let live = f.driver.xml(&name("default"), false).expect("xml");
    assert!(
        live.contains("<port start=\"1024\" end=\"65535\"/>"),
        "live XML shows the NAT ports: {live}"
    );
    let inactive = f.driver.xml(&name("default"), true).expect("xml");
    assert!(!inactive.contains("<port"), "{inactive}");
}

#[tokio::test]
async fn destroy_removes_exactly_what_start_added() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    f.driver.start(&name("default")).await.expect("start");
    let pid = f.host.processes()[0];
    let started = f.host.calls().len();
    f.driver.destroy(&name("default")).await.expect("destroy");
    let calls = f.host.calls()[started..].to_vec();
    assert_eq!(
        calls,
        vec![
            format!("stop_process {pid}"),
            "nft add table ip rvirt_default\ndelete table ip rvirt_default\n".to_owned(),
            "delete_link virbr0".to_owned(),
        ]
    );
    assert!(f.host.links().is_empty());
    assert!(!f.paths.status_file("default").exists());
    assert!(!f.paths.dnsmasq_file("default", "conf").exists());
    assert!(!f.driver.lookup(&name("default")).expect("still defined").active);
}

#[tokio::test]
async fn a_failed_start_leaves_nothing_behind() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    f.host.fail_next("start_dnsmasq");
    let err = f.driver.start(&name("default")).await.expect_err("dnsmasq fails");
    assert_eq!(err.code, ErrorCode::OperationFailed);
    assert!(f.host.links().is_empty(), "the bridge was removed");
    assert!(f.host.calls().iter().any(|c| {
        c.starts_with("nft add table ip rvirt_default\ndelete table ip rvirt_default\n") && !c.contains('{')
    }));
    assert!(!f.paths.status_file("default").exists());
    assert!(!f.driver.lookup(&name("default")).expect("defined").active);
}

#[tokio::test]
async fn starting_over_an_existing_device_is_refused() {
    let f = fixture();
    f.driver
        .define(&NAT.replace("<forward", "<bridge name='br9'/><forward"))
        .await
        .expect("define");
    f.host.add_link("br9");
    let err = f.driver.start(&name("default")).await.expect_err("exists");
    assert!(err.message.contains("br9"), "{}", err.message);
    assert!(
        f.host.calls().is_empty(),
        "nothing was touched: {:?}",
        f.host.calls()
    );
}

#[tokio::test]
async fn a_restarted_driver_readopts_the_running_network() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    f.driver.start(&name("default")).await.expect("start");
    let pid = f.host.processes()[0];
    let before = f.host.calls().len();
    let again = f.restart().await;
    let s = again.lookup(&name("default")).expect("known");
    assert!(s.active && s.persistent);
    let calls = f.host.calls()[before..].to_vec();
    assert_eq!(calls.len(), 1, "only the firewall is re-installed: {calls:?}");
    assert!(calls[0].starts_with("nft "));
    assert_eq!(f.host.processes(), vec![pid], "the same dnsmasq keeps running");
    assert!(again.busy().is_some());
}

#[tokio::test]
async fn readoption_restarts_a_dead_dnsmasq() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    f.driver.start(&name("default")).await.expect("start");
    let pid = f.host.processes()[0];
    f.host.kill(pid);
    let again = f.restart().await;
    assert!(again.lookup(&name("default")).expect("known").active);
    let now = f.host.processes();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], pid, "a new dnsmasq runs");
    let status = std::fs::read_to_string(f.paths.status_file("default")).expect("status");
    assert!(status.contains(&format!("dnsmasqPid=\"{}\"", now[0])), "{status}");
}

#[tokio::test]
async fn readoption_without_the_bridge_marks_the_network_inactive() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    f.driver.start(&name("default")).await.expect("start");
    let pid = f.host.processes()[0];
    f.host.delete_link("virbr0").await.expect("delete");
    let again = f.restart().await;
    assert!(!again.lookup(&name("default")).expect("known").active);
    assert!(f.host.processes().is_empty(), "its dnsmasq {pid} was stopped");
    assert!(!f.paths.status_file("default").exists());
}

#[tokio::test]
async fn autostart_networks_start_when_the_driver_loads() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    f.driver
        .set_autostart(&name("default"), true)
        .await
        .expect("autostart");
    let again = f.restart().await;
    let s = again.lookup(&name("default")).expect("known");
    assert!(s.active && s.autostart);
    assert!(f.host.links().contains("virbr0"));
}

#[tokio::test]
async fn transient_networks_cannot_autostart_and_vanish_when_destroyed() {
    let f = fixture();
    let s = f
        .driver
        .create(&NAT.replace("default", "tmp"))
        .await
        .expect("create");
    assert!(s.active && !s.persistent);
    let err = f
        .driver
        .set_autostart(&name("tmp"), true)
        .await
        .expect_err("transient");
    assert_eq!(err.code, ErrorCode::OperationInvalid);
    f.driver.destroy(&name("tmp")).await.expect("destroy");
    assert_eq!(
        f.driver.lookup(&name("tmp")).expect_err("gone").code,
        ErrorCode::NoNetwork
    );
}

#[tokio::test]
async fn undefining_an_active_network_leaves_it_running_as_transient() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    f.driver.start(&name("default")).await.expect("start");
    f.driver.undefine(&name("default")).await.expect("undefine");
    let s = f.driver.lookup(&name("default")).expect("still there");
    assert!(s.active && !s.persistent);
    assert!(!f.paths.config_file("default").exists());
    f.driver.destroy(&name("default")).await.expect("destroy");
    assert!(f.driver.list(0).is_empty());
}

#[tokio::test]
async fn list_filters_by_libvirts_flag_pairs() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    f.driver
        .define(&NAT.replace("default", "idle"))
        .await
        .expect("define");
    f.driver.start(&name("default")).await.expect("start");
    f.driver
        .create(&NAT.replace("default", "tmp"))
        .await
        .expect("create");
    let names = |flags| {
        f.driver
            .list(flags)
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(0), vec!["default", "idle", "tmp"]);
    assert_eq!(names(list_flags::ACTIVE), vec!["default", "tmp"]);
    assert_eq!(names(list_flags::INACTIVE), vec!["idle"]);
    assert_eq!(names(list_flags::TRANSIENT), vec!["tmp"]);
    assert_eq!(
        names(list_flags::ACTIVE | list_flags::PERSISTENT),
        vec!["default"]
    );
    assert_eq!(names(list_flags::AUTOSTART), Vec::<String>::new());
}

#[tokio::test]
async fn lookup_by_uuid_accepts_libvirts_spellings() {
    let f = fixture();
    let s = f.driver.define(NAT).await.expect("define");
    let upper = s.uuid.replace('-', "").to_uppercase();
    assert_eq!(f.driver.lookup(&Key::Uuid(upper)).expect("found").name, "default");
    let err = f
        .driver
        .lookup(&Key::Uuid("81ff0d90-c91e-6742-64da-4a736edb9a9b".into()))
        .expect_err("none");
    assert_eq!(err.code, ErrorCode::NoNetwork);
}

const HOST: &str = "<host mac='52:54:00:00:00:42' name='guest' ip='192.168.122.42'/>";

#[tokio::test]
async fn live_dhcp_host_update_rewrites_the_hosts_file_and_signals_dnsmasq() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    f.driver.start(&name("default")).await.expect("start");
    let pid = f.host.processes()[0];
    f.driver
        .update(
            &name("default"),
            update::ADD_LAST,
            update::SECTION_IP_DHCP_HOST,
            -1,
            HOST,
            update::AFFECT_LIVE,
        )
        .await
        .expect("update");
    let hosts = std::fs::read_to_string(f.paths.dnsmasq_file("default", "hostsfile")).expect("hostsfile");
    assert_eq!(hosts, "52:54:00:00:00:42,192.168.122.42,guest\n");
    assert_eq!(
        f.host.calls().last().map(String::as_str),
        Some(format!("reload_dnsmasq {pid}").as_str())
    );
    assert!(
        f.driver
            .xml(&name("default"), false)
            .expect("xml")
            .contains("192.168.122.42")
    );
    assert!(
        !f.driver
            .xml(&name("default"), true)
            .expect("xml")
            .contains("192.168.122.42"),
        "config untouched"
    );
}

#[tokio::test]
async fn config_dhcp_host_update_changes_the_saved_definition_only() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    f.driver
        .update(
            &name("default"),
            update::ADD_FIRST,
            update::SECTION_IP_DHCP_HOST,
            0,
            HOST,
            0,
        )
        .await
        .expect("update inactive network");
    let saved = std::fs::read_to_string(f.paths.config_file("default")).expect("config");
    assert!(saved.contains("192.168.122.42"), "{saved}");
    f.driver
        .update(
            &name("default"),
            update::DELETE,
            update::SECTION_IP_DHCP_HOST,
            -1,
            "<host mac='52:54:00:00:00:42'/>",
            update::AFFECT_CONFIG,
        )
        .await
        .expect("delete");
    assert!(
        !std::fs::read_to_string(f.paths.config_file("default"))
            .expect("config")
            .contains("192.168.122.42")
    );
}

#[tokio::test]
async fn dhcp_host_updates_are_checked() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    let k = name("default");
    let outside = "<host mac='52:54:00:00:00:43' ip='10.0.0.5'/>";
    let err = f
        .driver
        .update(&k, update::ADD_LAST, update::SECTION_IP_DHCP_HOST, -1, outside, 0)
        .await
        .expect_err("outside");
    assert_eq!(err.code, ErrorCode::XmlError);
    f.driver
        .update(&k, update::ADD_LAST, update::SECTION_IP_DHCP_HOST, -1, HOST, 0)
        .await
        .expect("add");
    let err = f
        .driver
        .update(&k, update::ADD_LAST, update::SECTION_IP_DHCP_HOST, -1, HOST, 0)
        .await
        .expect_err("dup");
    assert_eq!(err.code, ErrorCode::OperationInvalid);
    let err = f
        .driver
        .update(&k, update::ADD_LAST, update::SECTION_PORTGROUP, -1, HOST, 0)
        .await
        .expect_err("section");
    assert_eq!(err.code, ErrorCode::OperationUnsupported);
    let err = f
        .driver
        .update(
            &k,
            update::ADD_LAST,
            update::SECTION_IP_DHCP_HOST,
            -1,
            HOST,
            update::AFFECT_LIVE,
        )
        .await
        .expect_err("inactive");
    assert_eq!(err.code, ErrorCode::OperationInvalid);
}

#[tokio::test]
async fn lease_file_changes_become_events_and_leases() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    f.driver.start(&name("default")).await.expect("start");
    let mut watch = Box::pin(f.driver.events().watch("", 0));
    assert!(matches!(
        watch.next().await,
        Some(rvirt_daemon::events::Delivery::CaughtUp { .. })
    ));
    let expiry = now_secs() + 3600;
    std::fs::write(
        f.paths.dnsmasq_file("default", "leases"),
        format!("{expiry} 52:54:00:00:00:07 192.168.122.77 guest7 *\n"),
    )
    .expect("write leases");
    f.driver.refresh_leases("default");
    let Some(rvirt_daemon::events::Delivery::Event(e)) = watch.next().await else {
        panic!("an event")
    };
    match &e.event.kind {
        EventKind::Lease(l) => {
            assert!(matches!(&l.change, Change::Added(lease) if lease.hostname == "guest7"));
            assert_eq!(l.bridge, "virbr0");
            assert_eq!(l.prefix, 24);
        }
        other => panic!("unexpected {other:?}"),
    }
    let leases = f
        .driver
        .leases(&name("default"), "52:54:00:00:00:07")
        .expect("leases");
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].lease.ip.to_string(), "192.168.122.77");
    assert!(
        f.driver
            .leases(&name("default"), "52:54:00:00:00:08")
            .expect("leases")
            .is_empty()
    );
}

#[tokio::test]
async fn lifecycle_events_follow_define_start_stop_undefine() {
    let f = fixture();
    let mut watch = Box::pin(f.driver.events().watch("", 0));
    f.driver.define(NAT).await.expect("define");
    f.driver.start(&name("default")).await.expect("start");
    f.driver.destroy(&name("default")).await.expect("destroy");
    f.driver.undefine(&name("default")).await.expect("undefine");
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        if let Some(rvirt_daemon::events::Delivery::Event(e)) = watch.next().await {
            kinds.push(e.event.kind.clone());
        }
    }
    assert_eq!(
        kinds,
        [
            Lifecycle::Defined,
            Lifecycle::Started,
            Lifecycle::Stopped,
            Lifecycle::Undefined
        ]
        .map(EventKind::Lifecycle)
    );
}

#[tokio::test]
async fn bridge_mode_needs_the_host_bridge_and_builds_nothing() {
    let f = fixture();
    let xml = "<network><name>host</name><forward mode='bridge'/><bridge name='br0'/></network>";
    f.driver.define(xml).await.expect("define");
    let err = f.driver.start(&name("host")).await.expect_err("no br0");
    assert_eq!(err.code, ErrorCode::OperationFailed);
    f.host.add_link("br0");
    f.driver.start(&name("host")).await.expect("start");
    f.driver.destroy(&name("host")).await.expect("destroy");
    assert!(f.host.calls().is_empty(), "{:?}", f.host.calls());
    assert!(
        f.host.links().contains("br0"),
        "the host bridge is not ours to delete"
    );
}

const PORT: &str = "<networkport><uuid>5d2bcef0-5a43-4b6d-9e5b-0e1b1f0c0a01</uuid>\
    <owner><name>vm1</name><uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid></owner>\
    <mac address='52:54:00:ab:cd:ef'/></networkport>";
const PORT_UUID: &str = "5d2bcef0-5a43-4b6d-9e5b-0e1b1f0c0a01";

#[tokio::test]
async fn a_port_is_plugged_into_the_networks_bridge_and_counted() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    f.driver.start(&name("default")).await.expect("start");
    let (port, xml) = f
        .driver
        .create_port(&name("default"), PORT, 0)
        .await
        .expect("port");
    assert_eq!(
        (port.plug_type.as_str(), port.plug_device.as_str()),
        ("network", "virbr0")
    );
    assert!(
        xml.contains("<plug type=\"network\" bridge=\"virbr0\"/>"),
        "{xml}"
    );
    assert!(
        f.driver
            .xml(&name("default"), false)
            .expect("xml")
            .starts_with("<network connections=\"1\">")
    );
    assert_eq!(f.driver.list_ports(&name("default")).expect("list").len(), 1);
    let err = f
        .driver
        .create_port(&name("default"), PORT, 0)
        .await
        .expect_err("twice");
    assert_eq!(err.code, ErrorCode::NetworkPortExist);
    f.driver
        .delete_port(&name("default"), PORT_UUID)
        .await
        .expect("delete");
    assert!(f.driver.list_ports(&name("default")).expect("list").is_empty());
    assert!(
        f.driver
            .xml(&name("default"), false)
            .expect("xml")
            .starts_with("<network>")
    );
    let err = f
        .driver
        .lookup_port(&name("default"), PORT_UUID)
        .expect_err("gone");
    assert_eq!(err.code, ErrorCode::NoNetworkPort);
}

#[tokio::test]
async fn ports_need_an_active_network_and_vanish_when_it_stops() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    let err = f
        .driver
        .create_port(&name("default"), PORT, 0)
        .await
        .expect_err("inactive");
    assert_eq!(err.code, ErrorCode::OperationInvalid);
    f.driver.start(&name("default")).await.expect("start");
    f.driver
        .create_port(&name("default"), PORT, 0)
        .await
        .expect("port");
    f.driver.destroy(&name("default")).await.expect("destroy");
    f.driver.start(&name("default")).await.expect("start again");
    assert!(f.driver.list_ports(&name("default")).expect("list").is_empty());
}

#[tokio::test]
async fn ports_survive_a_daemon_restart() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    f.driver.start(&name("default")).await.expect("start");
    f.driver
        .create_port(&name("default"), PORT, 0)
        .await
        .expect("port");
    let again = f.restart().await;
    let port = again.lookup_port(&name("default"), PORT_UUID).expect("recovered");
    assert_eq!(port.owner_name, "vm1");
    assert_eq!(port.plug_device, "virbr0");
    assert!(
        again
            .xml(&name("default"), false)
            .expect("xml")
            .starts_with("<network connections=\"1\">")
    );
}

#[tokio::test]
async fn a_plugged_port_is_taken_over_only_with_reclaim_and_a_matching_bridge() {
    let f = fixture();
    f.driver.define(NAT).await.expect("define");
    f.driver.start(&name("default")).await.expect("start");
    let plugged = PORT.replace(
        "</networkport>",
        "<plug type='network' bridge='virbr0'/></networkport>",
    );
    let err = f
        .driver
        .create_port(&name("default"), &plugged, 0)
        .await
        .expect_err("no reclaim");
    assert_eq!(err.code, ErrorCode::OperationInvalid);
    let elsewhere = plugged.replace("virbr0", "virbr9");
    let err = f
        .driver
        .create_port(&name("default"), &elsewhere, port_flags::RECLAIM)
        .await
        .expect_err("other bridge");
    assert_eq!(err.code, ErrorCode::OperationInvalid);
    f.driver
        .create_port(&name("default"), &plugged, port_flags::RECLAIM)
        .await
        .expect("reclaim");
}

#[tokio::test]
async fn a_host_bridge_network_plugs_ports_into_the_host_bridge() {
    let f = fixture();
    f.host.add_link("br0");
    f.driver
        .define("<network><name>host</name><forward mode='bridge'/><bridge name='br0'/></network>")
        .await
        .expect("define");
    f.driver.start(&name("host")).await.expect("start");
    let (port, _) = f.driver.create_port(&name("host"), PORT, 0).await.expect("port");
    assert_eq!(
        (port.plug_type.as_str(), port.plug_device.as_str()),
        ("bridge", "br0")
    );
}

// ---------------------------------------------------------------------------------------------
// UpdateNetwork sections beyond DHCP hosts
// ---------------------------------------------------------------------------------------------

const SMALL: &str = "<network><name>default</name><forward mode='nat'/>\
    <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>\
    <range start='192.168.122.2' end='192.168.122.99'/></dhcp></ip></network>";

/// A running network from `xml`, and the pid of its dnsmasq.
async fn running(xml: &str) -> (Fixture, u32) {
    let f = fixture();
    f.driver.define(xml).await.expect("define");
    f.driver.start(&name("default")).await.expect("start");
    let pid = f.host.processes()[0];
    (f, pid)
}

impl Fixture {
    async fn update(&self, command: i32, section: i32, xml: &str, flags: u32) -> Result<(), NetError> {
        self.driver
            .update(&name("default"), command, section, -1, xml, flags)
            .await
    }

    fn dnsmasq(&self, ext: &str) -> String {
        std::fs::read_to_string(self.paths.dnsmasq_file("default", ext)).unwrap_or_default()
    }

    fn calls_since(&self, n: usize) -> Vec<String> {
        self.host.calls()[n..].to_vec()
    }

    fn live_xml(&self) -> String {
        self.driver.xml(&name("default"), false).expect("xml")
    }

    fn config_xml(&self) -> String {
        std::fs::read_to_string(self.paths.config_file("default")).expect("config file")
    }
}

#[tokio::test]
async fn adding_a_dhcp_range_live_restarts_dnsmasq_with_it() {
    let (f, pid) = running(SMALL).await;
    let before = f.host.calls().len();
    f.update(
        update::ADD_LAST,
        update::SECTION_IP_DHCP_RANGE,
        "<range start='192.168.122.100' end='192.168.122.150'/>",
        update::AFFECT_LIVE,
    )
    .await
    .expect("add range");
    let calls = f.calls_since(before);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0], format!("stop_process {pid}"));
    assert!(calls[1].starts_with("start_dnsmasq "), "{calls:?}");
    let conf = f.dnsmasq("conf");
    assert!(
        conf.contains("\ndhcp-range=192.168.122.2,192.168.122.99,255.255.255.0\n")
            && conf.contains("\ndhcp-range=192.168.122.100,192.168.122.150,255.255.255.0\n")
            && conf.contains("\ndhcp-lease-max=149\n"),
        "{conf}"
    );
    let new_pid = f.host.processes();
    assert_eq!(new_pid.len(), 1);
    assert_ne!(new_pid[0], pid);
    let status = std::fs::read_to_string(f.paths.status_file("default")).expect("status");
    assert!(
        status.contains(&format!("dnsmasqPid=\"{}\"", new_pid[0])) && status.contains("192.168.122.150"),
        "{status}"
    );
    assert!(f.live_xml().contains("192.168.122.150"));
    assert!(!f.config_xml().contains("192.168.122.150"), "config untouched");
}

#[tokio::test]
async fn deleting_a_dhcp_range_removes_it_from_dnsmasq() {
    let (f, _) = running(SMALL).await;
    f.update(
        update::ADD_FIRST,
        update::SECTION_IP_DHCP_RANGE,
        "<range start='192.168.122.100' end='192.168.122.150'/>",
        update::AFFECT_LIVE,
    )
    .await
    .expect("add range");
    assert!(
        f.live_xml()
            .find("192.168.122.100")
            .is_some_and(|i| f.live_xml().find("192.168.122.2\"").is_some_and(|j| i < j)),
        "add-first puts it first: {}",
        f.live_xml()
    );
    f.update(
        update::DELETE,
        update::SECTION_IP_DHCP_RANGE,
        "<range start='192.168.122.2' end='192.168.122.99'/>",
        update::AFFECT_LIVE,
    )
    .await
    .expect("delete range");
    let conf = f.dnsmasq("conf");
    assert!(!conf.contains("192.168.122.99"), "{conf}");
    assert!(
        conf.contains("dhcp-range=192.168.122.100,192.168.122.150,"),
        "{conf}"
    );
}

#[tokio::test]
async fn dhcp_range_updates_follow_libvirts_rules() {
    let (f, _) = running(SMALL).await;
    let range = "<range start='192.168.122.2' end='192.168.122.99'/>";
    let modify = f
        .update(update::MODIFY, update::SECTION_IP_DHCP_RANGE, range, 0)
        .await
        .expect_err("modify");
    assert_eq!(modify.code, ErrorCode::OperationUnsupported);
    let dup = f
        .update(update::ADD_LAST, update::SECTION_IP_DHCP_RANGE, range, 0)
        .await
        .expect_err("duplicate");
    assert_eq!(dup.code, ErrorCode::OperationInvalid);
    let outside = f
        .update(
            update::ADD_LAST,
            update::SECTION_IP_DHCP_RANGE,
            "<range start='10.0.0.2' end='10.0.0.9'/>",
            0,
        )
        .await
        .expect_err("outside");
    assert_eq!(outside.code, ErrorCode::XmlError);
    let family = f
        .update(
            update::ADD_LAST,
            update::SECTION_IP_DHCP_RANGE,
            "<range start='fd00::2' end='fd00::9'/>",
            0,
        )
        .await
        .expect_err("family");
    assert_eq!(family.code, ErrorCode::OperationInvalid);
    let missing = f
        .update(
            update::DELETE,
            update::SECTION_IP_DHCP_RANGE,
            "<range start='192.168.122.2' end='192.168.122.9'/>",
            0,
        )
        .await
        .expect_err("missing");
    assert_eq!(missing.code, ErrorCode::OperationInvalid);
    let wrong = f
        .update(
            update::ADD_LAST,
            update::SECTION_IP_DHCP_RANGE,
            "<host ip='1.2.3.4'/>",
            0,
        )
        .await
        .expect_err("wrong element");
    assert_eq!(wrong.code, ErrorCode::XmlError);
}

#[tokio::test]
async fn adding_a_dns_host_live_rewrites_addnhosts_and_sends_sighup() {
    let (f, pid) = running(SMALL).await;
    let before = f.host.calls().len();
    f.update(
        update::ADD_LAST,
        update::SECTION_DNS_HOST,
        "<host ip='192.168.122.7'><hostname>db</hostname><hostname>db.lab</hostname></host>",
        0,
    )
    .await
    .expect("add dns host");
    assert_eq!(f.dnsmasq("addnhosts"), "192.168.122.7\tdb\tdb.lab\t\n");
    assert_eq!(f.calls_since(before), vec![format!("reload_dnsmasq {pid}")]);
    assert_eq!(f.host.processes(), vec![pid], "dnsmasq was not restarted");
    assert!(f.live_xml().contains("<hostname>db.lab</hostname>"));
}

#[tokio::test]
async fn a_dns_host_is_deleted_by_address_or_name() {
    let (f, _) = running(SMALL).await;
    for (ip, n) in [("192.168.122.7", "a"), ("192.168.122.8", "b")] {
        f.update(
            update::ADD_LAST,
            update::SECTION_DNS_HOST,
            &format!("<host ip='{ip}'><hostname>{n}</hostname></host>"),
            0,
        )
        .await
        .expect("add");
    }
    let dup = f
        .update(
            update::ADD_LAST,
            update::SECTION_DNS_HOST,
            "<host ip='192.168.122.7'><hostname>c</hostname></host>",
            0,
        )
        .await
        .expect_err("same address");
    assert_eq!(dup.code, ErrorCode::OperationInvalid);
    let modify = f
        .update(
            update::MODIFY,
            update::SECTION_DNS_HOST,
            "<host ip='192.168.122.7'><hostname>c</hostname></host>",
            0,
        )
        .await
        .expect_err("modify");
    assert_eq!(modify.code, ErrorCode::OperationUnsupported);
    f.update(
        update::DELETE,
        update::SECTION_DNS_HOST,
        "<host><hostname>b</hostname></host>",
        0,
    )
    .await
    .expect("delete by name");
    f.update(
        update::DELETE,
        update::SECTION_DNS_HOST,
        "<host ip='192.168.122.7'/>",
        0,
    )
    .await
    .expect("delete by address");
    assert_eq!(f.dnsmasq("addnhosts"), "");
    assert!(!f.live_xml().contains("<dns"), "an empty <dns> is dropped");
    let missing = f
        .update(
            update::DELETE,
            update::SECTION_DNS_HOST,
            "<host ip='192.168.122.7'/>",
            0,
        )
        .await
        .expect_err("gone");
    assert_eq!(missing.code, ErrorCode::OperationInvalid);
}

#[tokio::test]
async fn dns_txt_records_are_added_and_deleted_by_name_restarting_dnsmasq() {
    let (f, pid) = running(SMALL).await;
    let before = f.host.calls().len();
    f.update(
        update::ADD_LAST,
        update::SECTION_DNS_TXT,
        "<txt name='info' value='hello world'/>",
        0,
    )
    .await
    .expect("add txt");
    assert!(f.dnsmasq("conf").contains("\ntxt-record=info,hello world\n"));
    assert_eq!(
        f.calls_since(before)[0],
        format!("stop_process {pid}"),
        "TXT records are in the configuration: dnsmasq is restarted"
    );
    let dup = f
        .update(
            update::ADD_LAST,
            update::SECTION_DNS_TXT,
            "<txt name='info' value='x'/>",
            0,
        )
        .await
        .expect_err("dup");
    assert_eq!(dup.code, ErrorCode::OperationInvalid);
    let incomplete = f
        .update(
            update::ADD_LAST,
            update::SECTION_DNS_TXT,
            "<txt name='other'/>",
            0,
        )
        .await
        .expect_err("no value");
    assert_eq!(incomplete.code, ErrorCode::XmlError);
    f.update(update::DELETE, update::SECTION_DNS_TXT, "<txt name='info'/>", 0)
        .await
        .expect("delete by name");
    assert!(!f.dnsmasq("conf").contains("txt-record"));
}

#[tokio::test]
async fn dns_srv_records_are_deleted_by_the_fields_given() {
    let (f, _) = running(SMALL).await;
    for target in ["a.lab", "b.lab"] {
        f.update(
            update::ADD_LAST,
            update::SECTION_DNS_SRV,
            &format!("<srv service='ldap' protocol='tcp' domain='lab' target='{target}' port='389'/>"),
            0,
        )
        .await
        .expect("add srv");
    }
    assert!(
        f.dnsmasq("conf")
            .contains("\nsrv-host=_ldap._tcp.lab,a.lab,389\nsrv-host=_ldap._tcp.lab,b.lab,389\n"),
        "{}",
        f.dnsmasq("conf")
    );
    let ambiguous = f
        .update(
            update::DELETE,
            update::SECTION_DNS_SRV,
            "<srv service='ldap'/>",
            0,
        )
        .await
        .expect_err("two match");
    assert_eq!(ambiguous.code, ErrorCode::OperationInvalid);
    f.update(
        update::DELETE,
        update::SECTION_DNS_SRV,
        "<srv service='ldap' target='a.lab'/>",
        0,
    )
    .await
    .expect("delete one");
    let conf = f.dnsmasq("conf");
    assert!(!conf.contains("a.lab") && conf.contains("b.lab"), "{conf}");
    let bad = f
        .update(
            update::ADD_LAST,
            update::SECTION_DNS_SRV,
            "<srv service='x' protocol='sctp'/>",
            0,
        )
        .await
        .expect_err("protocol");
    assert_eq!(bad.code, ErrorCode::XmlError);
    assert_eq!(bad.xml_path, "/srv/@protocol");
}

#[tokio::test]
async fn forward_interfaces_change_the_firewall_rules() {
    let (f, pid) = running(SMALL).await;
    let before = f.host.calls().len();
    f.update(
        update::ADD_LAST,
        update::SECTION_FORWARD_INTERFACE,
        "<interface dev='eth1'/>",
        0,
    )
    .await
    .expect("add interface");
    let calls = f.calls_since(before);
    assert_eq!(calls.len(), 1, "only the firewall changes: {calls:?}");
    assert!(
        calls[0].starts_with("nft add table ip rvirt_default\ndelete table ip rvirt_default\n")
            && calls[0].contains("oifname \"eth1\" counter masquerade"),
        "{}",
        calls[0]
    );
    assert_eq!(f.host.processes(), vec![pid]);
    assert!(
        f.live_xml().contains("<forward dev=\"eth1\" mode=\"nat\">"),
        "dev mirrors the first interface: {}",
        f.live_xml()
    );
    let modify = f
        .update(
            update::MODIFY,
            update::SECTION_FORWARD_INTERFACE,
            "<interface dev='eth1'/>",
            0,
        )
        .await
        .expect_err("modify");
    assert_eq!(modify.code, ErrorCode::OperationUnsupported);
    f.update(
        update::DELETE,
        update::SECTION_FORWARD_INTERFACE,
        "<interface dev='eth1'/>",
        0,
    )
    .await
    .expect("delete");
    assert!(!f.host.calls().last().expect("nft").contains("eth1"));
    assert!(f.live_xml().contains("<forward mode=\"nat\""), "{}", f.live_xml());
}

#[tokio::test]
async fn sections_rvirt_does_not_update_are_refused_by_name() {
    let f = fixture();
    f.driver.define(SMALL).await.expect("define");
    for (section, label) in [
        (1, "'bridge'"),
        (2, "'domain'"),
        (3, "'ip'"),
        (6, "'forward'"),
        (8, "'forward-pf'"),
        (9, "'portgroup'"),
    ] {
        let err = f
            .update(update::ADD_LAST, section, "<portgroup name='x'/>", 0)
            .await
            .expect_err("unsupported");
        assert_eq!(err.code, ErrorCode::OperationUnsupported, "{section}");
        assert!(err.message.contains(label), "{}", err.message);
    }
    let err = f
        .update(7, update::SECTION_DNS_HOST, "<host ip='192.168.122.7'/>", 0)
        .await
        .expect_err("bad command");
    assert_eq!(err.code, ErrorCode::OperationUnsupported);
}

#[tokio::test]
async fn a_live_and_config_update_changes_both_definitions() {
    let (f, _) = running(SMALL).await;
    f.update(
        update::ADD_LAST,
        update::SECTION_DNS_TXT,
        "<txt name='both' value='yes'/>",
        update::AFFECT_LIVE | update::AFFECT_CONFIG,
    )
    .await
    .expect("update");
    assert!(f.live_xml().contains("both"));
    assert!(f.config_xml().contains("both"));
    assert!(
        f.driver
            .xml(&name("default"), true)
            .expect("xml")
            .contains("both")
    );
}

#[tokio::test]
async fn a_failed_live_update_changes_neither_definition_and_keeps_dnsmasq_running() {
    let (f, _) = running(SMALL).await;
    let config = f.config_xml();
    let live = f.live_xml();
    let conf = f.dnsmasq("conf");
    f.host.fail_next("start_dnsmasq");
    let err = f
        .update(
            update::ADD_LAST,
            update::SECTION_IP_DHCP_RANGE,
            "<range start='192.168.122.100' end='192.168.122.150'/>",
            update::AFFECT_LIVE | update::AFFECT_CONFIG,
        )
        .await
        .expect_err("dnsmasq fails");
    assert_eq!(err.code, ErrorCode::OperationFailed);
    assert_eq!(f.config_xml(), config, "the saved definition is restored");
    assert_eq!(f.live_xml(), live);
    assert_eq!(f.dnsmasq("conf"), conf, "dnsmasq's configuration is restored");
    let pids = f.host.processes();
    assert_eq!(pids.len(), 1, "the previous configuration runs again");
    let status = std::fs::read_to_string(f.paths.status_file("default")).expect("status");
    assert!(
        status.contains(&format!("dnsmasqPid=\"{}\"", pids[0])),
        "{status}"
    );
    // The driver knows the new pid: destroying stops it.
    f.driver.destroy(&name("default")).await.expect("destroy");
    assert!(f.host.processes().is_empty());
}

#[tokio::test]
async fn the_first_dhcp_host_on_an_address_without_dhcp_restarts_dnsmasq() {
    let xml = "<network><name>default</name><forward mode='nat'/>\
        <ip address='192.168.122.1' netmask='255.255.255.0'/></network>";
    let (f, pid) = running(xml).await;
    assert!(!f.dnsmasq("conf").contains("dhcp-range"));
    f.update(update::ADD_LAST, update::SECTION_IP_DHCP_HOST, HOST, 0)
        .await
        .expect("add host");
    assert!(
        f.dnsmasq("conf").contains("\ndhcp-range=192.168.122.1,static\n"),
        "{}",
        f.dnsmasq("conf")
    );
    assert!(!f.host.processes().contains(&pid), "dnsmasq was restarted");
    assert_eq!(f.dnsmasq("hostsfile"), "52:54:00:00:00:42,192.168.122.42,guest\n");
}
