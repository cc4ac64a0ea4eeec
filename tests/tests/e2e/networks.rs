//! virtnetworkd end to end, always inside network namespaces the test creates (`rvirt-test-*`)
//! and deletes again (also on failure, by a Drop guard): the daemon runs inside one with
//! `ip netns exec`, so its bridge, dnsmasq and nftables table exist only there; a second
//! namespace plays a guest, joined to the bridge by a veth pair, and asks for a DHCP lease with
//! busybox's `udhcpc`. Nothing touches the host's own interfaces, routes or rule sets.

use std::process::{Output, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use rvirt_e2e::netns::{Netns, check};
use rvirt_e2e::{DAEMON_DEADLINE, DaemonOptions, DaemonProcess, TestRoot, channel};
use rvirt_proto::v1::network_service_client::NetworkServiceClient;
use rvirt_proto::v1::*;
use tonic::transport::Channel;

const NET: &str = "e2e";
const BRIDGE: &str = "rvbr0";
const TABLE: &str = "rvirt_e2e";
const CLIENT_MAC: &str = "52:54:00:12:34:56";
// STP off: with it on, a new bridge port takes ~4 s more to forward (the lease tests wait for it).
const XML: &str = "<network><name>e2e</name><forward mode='nat'/><bridge name='rvbr0' stp='off'/>\
    <ip address='192.168.150.1' netmask='255.255.255.0'><dhcp>\
    <range start='192.168.150.10' end='192.168.150.99'/></dhcp></ip></network>";
const LEASE_DEADLINE: Duration = Duration::from_secs(60);

/// What these tests ask of a namespace beyond the harness's [`Netns`].
trait NetnsExt {
    /// The pids of the live dnsmasq processes in the namespace.
    fn dnsmasq_pids(&self) -> Vec<u32>;
    /// Whether nftables table `ip <table>` exists in the namespace.
    fn has_table(&self, table: &str) -> bool;
}

impl NetnsExt for Netns {
    fn dnsmasq_pids(&self) -> Vec<u32> {
        self.pids()
            .into_iter()
            .filter(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, s)| s.trim_start().chars().next());
                comm.trim() == "dnsmasq" && !matches!(state, Some('Z' | 'X'))
            })
            .collect()
    }

    fn has_table(&self, table: &str) -> bool {
        self.exec(&["nft", "list", "table", "ip", table]).status.success()
    }
}

/// Waits (up to 10 s) until process `pid` has exited, through a pidfd.
fn wait_exited(pid: u32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    let Ok(fd) = i32::try_from(fd) else { return };
    if fd < 0 {
        return; // already gone
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; then the fd this function opened is closed once.
    unsafe {
        libc::poll(&mut pfd, 1, 10_000);
        libc::close(fd);
    }
    assert!(pfd.revents & libc::POLLIN != 0, "process {pid} did not exit");
}

fn by_name() -> Option<NetworkRef> {
    Some(NetworkRef {
        key: Some(network_ref::Key::Name(NET.into())),
    })
}

/// A root that dnsmasq, which drops to an unprivileged user, can read its hosts files in.
fn root() -> TestRoot {
    let root = TestRoot::new();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod root");
    root
}

async fn start_daemon(ns: &Netns, root: &TestRoot) -> (DaemonProcess, NetworkServiceClient<Channel>) {
    let options = DaemonOptions {
        netns: Some(ns.name.clone()),
        ..Default::default()
    };
    let daemon = DaemonProcess::start_with("virtnetworkd", root, options).await;
    let client = NetworkServiceClient::new(channel(&root.socket("virtnetworkd-sock")).await);
    (daemon, client)
}

async fn define_and_start(client: &mut NetworkServiceClient<Channel>) {
    client
        .define_network_xml(DefineNetworkXmlRequest {
            xml: XML.into(),
            flags: 0,
        })
        .await
        .expect("define");
    let started = client
        .start_network(StartNetworkRequest { network: by_name() })
        .await
        .expect("start")
        .into_inner();
    assert!(
        started
            .network
            .is_some_and(|n| n.active && n.bridge_name == BRIDGE)
    );
}

/// Joins a new client namespace to the bridge by a veth pair and runs udhcpc there once.
async fn dhcp_client(ns: &Netns, client_ns: &Netns, hostname: &str) -> Output {
    let out = ns.ip(&[
        "link",
        "add",
        "vh0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &client_ns.name,
    ]);
    assert!(
        out.status.success(),
        "veth: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(
        "ip",
        &["-n", &ns.name, "link", "set", "vh0", "master", BRIDGE, "up"],
    );
    check(
        "ip",
        &[
            "-n",
            &client_ns.name,
            "link",
            "set",
            "eth0",
            "address",
            CLIENT_MAC,
            "up",
        ],
    );
    let hostname_opt = format!("hostname:{hostname}");
    let child = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &client_ns.name,
            "busybox",
            "udhcpc",
            "-i",
            "eth0",
            "-f",
            "-q",
            "-n",
        ])
        .args(["-t", "20", "-T", "1", "-s", "/bin/true", "-x", &hostname_opt])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(LEASE_DEADLINE, child)
        .await
        .expect("udhcpc finished in time")
        .expect("run busybox udhcpc (install busybox)")
}

#[tokio::test]
async fn nat_network_builds_bridge_dnsmasq_and_table_and_destroy_removes_them() {
    let ns = Netns::new();
    let root = root();
    let (_daemon, mut client) = start_daemon(&ns, &root).await;
    define_and_start(&mut client).await;

    assert!(ns.has_link(BRIDGE), "the bridge exists in the namespace");
    let details = String::from_utf8_lossy(&ns.ip(&["-d", "link", "show", "dev", BRIDGE]).stdout).into_owned();
    assert!(
        details.contains("stp_state 0") && details.contains("forward_delay 0"),
        "STP and forward delay as defined: {details}"
    );
    let addr = String::from_utf8_lossy(&ns.ip(&["-o", "addr", "show", "dev", BRIDGE]).stdout).into_owned();
    assert!(addr.contains("192.168.150.1/24"), "{addr}");
    assert_eq!(ns.dnsmasq_pids().len(), 1, "one dnsmasq runs");
    assert!(ns.has_table(TABLE), "rvirt's table is installed");
    let rules = String::from_utf8_lossy(&ns.exec(&["nft", "list", "table", "ip", TABLE]).stdout).into_owned();
    assert!(rules.contains("masquerade"), "{rules}");
    let forward =
        String::from_utf8_lossy(&ns.exec(&["sysctl", "-n", "net.ipv4.ip_forward"]).stdout).into_owned();
    assert_eq!(forward.trim(), "1", "forwarding is on inside the namespace");
    let xml = client
        .get_network_xml(GetNetworkXmlRequest {
            network: by_name(),
            flags: 0,
        })
        .await
        .expect("xml")
        .into_inner()
        .xml;
    assert!(
        xml.contains("<bridge name=\"rvbr0\" stp=\"off\" delay=\"0\"/>"),
        "{xml}"
    );

    client
        .destroy_network(DestroyNetworkRequest { network: by_name() })
        .await
        .expect("destroy");
    assert!(!ns.has_link(BRIDGE), "the bridge is gone");
    assert!(ns.dnsmasq_pids().is_empty(), "dnsmasq is gone");
    assert!(!ns.has_table(TABLE), "the table is gone");
    let info = client
        .get_network_info(GetNetworkInfoRequest { network: by_name() })
        .await
        .expect("info")
        .into_inner();
    assert!(info.network.is_some_and(|n| !n.active && n.persistent));
}

#[tokio::test]
async fn a_guest_gets_a_lease_seen_by_the_api_and_as_an_event() {
    let ns = Netns::new();
    let guest = Netns::new();
    let root = root();
    let (_daemon, mut client) = start_daemon(&ns, &root).await;
    define_and_start(&mut client).await;
    let mut events = client
        .watch_network_events(WatchNetworkEventsRequest {
            network: by_name(),
            event_ids: vec![NetworkEventId::DhcpLease as i32],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let first = events.message().await.expect("stream").expect("message");
    assert!(matches!(
        first.message,
        Some(watch_network_events_response::Message::CaughtUp(_))
    ));

    let out = dhcp_client(&ns, &guest, "guest1").await;
    assert!(
        out.status.success(),
        "udhcpc got no lease: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let lease = tokio::time::timeout(LEASE_DEADLINE, async {
        loop {
            let message = events.message().await.expect("stream").expect("open stream");
            if let Some(watch_network_events_response::Message::Event(NetworkEvent {
                event: Some(network_event::Event::DhcpLease(e)),
                ..
            })) = message.message
                && e.change == NetworkDhcpLeaseChange::Added as i32
            {
                return e.lease.expect("lease");
            }
        }
    })
    .await
    .expect("a lease event in time");
    assert_eq!(lease.mac, CLIENT_MAC);
    assert_eq!(lease.iface, BRIDGE);
    assert_eq!(lease.prefix, 24);
    assert!(lease.ipaddr.starts_with("192.168.150."), "{}", lease.ipaddr);

    let leases = client
        .get_network_dhcp_leases(GetNetworkDhcpLeasesRequest {
            network: by_name(),
            mac: CLIENT_MAC.into(),
        })
        .await
        .expect("leases")
        .into_inner()
        .leases;
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].ipaddr, lease.ipaddr);
    assert_eq!(leases[0].hostname, "guest1");
    assert!(leases[0].expiry_time.is_some(), "the lease expires");
}

#[tokio::test]
async fn a_killed_daemon_readopts_the_running_network_on_restart() {
    let ns = Netns::new();
    let guest = Netns::new();
    let root = root();
    let (mut daemon, mut client) = start_daemon(&ns, &root).await;
    define_and_start(&mut client).await;
    let dnsmasq = ns.dnsmasq_pids();
    assert_eq!(dnsmasq.len(), 1);
    drop(client);

    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(DAEMON_DEADLINE).await.expect("the daemon died");
    assert!(ns.has_link(BRIDGE), "the bridge outlives the daemon");
    assert_eq!(ns.dnsmasq_pids(), dnsmasq, "dnsmasq outlives the daemon");
    assert!(ns.has_table(TABLE), "the rules outlive the daemon");

    let (_daemon, mut client) = start_daemon(&ns, &root).await;
    let info = client
        .get_network_info(GetNetworkInfoRequest { network: by_name() })
        .await
        .expect("info")
        .into_inner()
        .network
        .expect("network");
    assert!(info.active && info.persistent, "{info:?}");
    assert_eq!(ns.dnsmasq_pids(), dnsmasq, "the same dnsmasq was adopted");

    let out = dhcp_client(&ns, &guest, "after-restart").await;
    assert!(
        out.status.success(),
        "the network still serves DHCP: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leases = client
        .get_network_dhcp_leases(GetNetworkDhcpLeasesRequest {
            network: by_name(),
            mac: CLIENT_MAC.into(),
        })
        .await
        .expect("leases")
        .into_inner()
        .leases;
    assert_eq!(leases.len(), 1, "{leases:?}");

    client
        .destroy_network(DestroyNetworkRequest { network: by_name() })
        .await
        .expect("destroy the adopted network");
    assert!(!ns.has_link(BRIDGE));
    assert!(ns.dnsmasq_pids().is_empty());
    assert!(!ns.has_table(TABLE));
}

#[tokio::test]
async fn a_dead_dnsmasq_is_restarted_when_the_network_is_readopted() {
    let ns = Netns::new();
    let root = root();
    let (mut daemon, mut client) = start_daemon(&ns, &root).await;
    define_and_start(&mut client).await;
    let old = ns.dnsmasq_pids();
    assert_eq!(old.len(), 1);
    drop(client);
    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(DAEMON_DEADLINE).await.expect("the daemon died");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old[0] as i32), Signal::SIGKILL).expect("kill dnsmasq");
    wait_exited(old[0]);

    let (_daemon, mut client) = start_daemon(&ns, &root).await;
    let now = ns.dnsmasq_pids();
    assert_eq!(now.len(), 1, "a dnsmasq runs again");
    assert_ne!(now, old, "it is a new one");
    let info = client
        .get_network_info(GetNetworkInfoRequest { network: by_name() })
        .await
        .expect("info")
        .into_inner()
        .network
        .expect("network");
    assert!(info.active);
}

#[tokio::test]
async fn a_port_is_plugged_into_the_bridge_and_recovered_after_a_restart() {
    let ns = Netns::new();
    let root = root();
    let (mut daemon, mut client) = start_daemon(&ns, &root).await;
    define_and_start(&mut client).await;
    let xml = "<networkport><owner><name>vm1</name><uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid></owner>\
               <mac address='52:54:00:ab:cd:ef'/></networkport>";
    let created = client
        .create_network_port(CreateNetworkPortRequest {
            network: by_name(),
            xml: xml.into(),
            flags: 0,
        })
        .await
        .expect("create port")
        .into_inner();
    let port = created.port.expect("port");
    assert_eq!(
        (port.plug_type.as_str(), port.plug_device.as_str()),
        ("network", BRIDGE)
    );
    assert!(
        created.xml.contains("<plug type=\"network\" bridge=\"rvbr0\"/>"),
        "{}",
        created.xml
    );
    drop(client);

    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(DAEMON_DEADLINE).await.expect("the daemon died");
    let (_daemon, mut client) = start_daemon(&ns, &root).await;
    let ports = client
        .list_network_ports(ListNetworkPortsRequest { network: by_name() })
        .await
        .expect("list ports")
        .into_inner()
        .ports;
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0].uuid, port.uuid);
    client
        .delete_network_port(DeleteNetworkPortRequest {
            port: Some(NetworkPortRef {
                network: by_name(),
                uuid: port.uuid.clone(),
            }),
        })
        .await
        .expect("delete port");
    client
        .destroy_network(DestroyNetworkRequest { network: by_name() })
        .await
        .expect("destroy");
}

// ---------------------------------------------------------------------------------------------
// Live updates (UpdateNetwork) and IPv6
// ---------------------------------------------------------------------------------------------

const DOMAIN_XML: &str = "<network><name>e2e</name><forward mode='nat'/><bridge name='rvbr0' stp='off'/>\
    <domain name='e2e.test' localOnly='yes'/>\
    <ip address='192.168.150.1' netmask='255.255.255.0'><dhcp>\
    <range start='192.168.150.10' end='192.168.150.19'/></dhcp></ip></network>";
const DUAL_XML: &str = "<network><name>e2e</name><forward mode='nat'/><bridge name='rvbr0' stp='off'/>\
    <ip address='192.168.150.1' netmask='255.255.255.0'><dhcp>\
    <range start='192.168.150.10' end='192.168.150.99'/></dhcp></ip>\
    <ip family='ipv6' address='fd00:150::1' prefix='64'><dhcp>\
    <range start='fd00:150::10' end='fd00:150::99'/></dhcp></ip></network>";
const GUEST_V4: &str = "192.168.150.200";

async fn define_and_start_xml(client: &mut NetworkServiceClient<Channel>, xml: &str) {
    client
        .define_network_xml(DefineNetworkXmlRequest {
            xml: xml.into(),
            flags: 0,
        })
        .await
        .expect("define");
    client
        .start_network(StartNetworkRequest { network: by_name() })
        .await
        .expect("start");
}

async fn update_live(
    client: &mut NetworkServiceClient<Channel>,
    command: NetworkUpdateCommand,
    section: NetworkUpdateSection,
    xml: &str,
) {
    client
        .update_network(UpdateNetworkRequest {
            network: by_name(),
            command: command as i32,
            section: section as i32,
            parent_index: -1,
            xml: xml.into(),
            flags: NetworkUpdateFlag::AffectLive as u32,
        })
        .await
        .unwrap_or_else(|e| panic!("update {section:?} {command:?} {xml}: {e}"));
}

/// Joins `guest` to the bridge by a veth pair (`vh0` on the bridge, `eth0` in the guest, up,
/// with `CLIENT_MAC`); IPv6 duplicate address detection is off in the guest so its link-local
/// address is usable at once.
fn attach_guest(ns: &Netns, guest: &Netns) {
    check(
        "ip",
        &[
            "-n",
            &ns.name,
            "link",
            "add",
            "vh0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &guest.name,
        ],
    );
    check(
        "ip",
        &["-n", &ns.name, "link", "set", "vh0", "master", BRIDGE, "up"],
    );
    let out = guest.exec(&["sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"]);
    assert!(
        out.status.success(),
        "sysctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(
        "ip",
        &[
            "-n",
            &guest.name,
            "link",
            "set",
            "eth0",
            "address",
            CLIENT_MAC,
            "up",
        ],
    );
}

/// `busybox nslookup [-type=TYPE] NAME` asked of the network's dnsmasq from the guest.
fn nslookup(guest: &Netns, args: &[&str]) -> Output {
    let mut all = vec!["busybox", "nslookup"];
    all.extend_from_slice(args);
    all.push("192.168.150.1");
    guest.exec(&all)
}

/// dnsmasq's configuration file of network `e2e` under the daemon's root.
fn dnsmasq_conf(root: &TestRoot) -> String {
    fn find(dir: &std::path::Path) -> Option<std::path::PathBuf> {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if let Some(found) = find(&path) {
                    return Some(found);
                }
            } else if path.ends_with("dnsmasq/e2e.conf") {
                return Some(path);
            }
        }
        None
    }
    let path = find(root.path()).expect("dnsmasq's configuration of the network");
    std::fs::read_to_string(path).expect("read dnsmasq's configuration")
}

#[tokio::test]
async fn a_dns_host_added_live_resolves_through_dnsmasq_and_goes_away_when_deleted() {
    let ns = Netns::new();
    let guest = Netns::new();
    let root = root();
    let (_daemon, mut client) = start_daemon(&ns, &root).await;
    define_and_start_xml(&mut client, DOMAIN_XML).await;
    attach_guest(&ns, &guest);
    check(
        "ip",
        &[
            "-n",
            &guest.name,
            "addr",
            "add",
            &format!("{GUEST_V4}/24"),
            "dev",
            "eth0",
        ],
    );
    let before = nslookup(&guest, &["db.e2e.test"]);
    assert!(
        !String::from_utf8_lossy(&before.stdout).contains("192.168.150.7"),
        "not known yet: {}",
        String::from_utf8_lossy(&before.stdout)
    );
    let dnsmasq = ns.dnsmasq_pids();

    update_live(
        &mut client,
        NetworkUpdateCommand::AddLast,
        NetworkUpdateSection::DnsHost,
        "<host ip='192.168.150.7'><hostname>db.e2e.test</hostname></host>",
    )
    .await;
    let found = nslookup(&guest, &["db.e2e.test"]);
    let text = String::from_utf8_lossy(&found.stdout).into_owned();
    assert!(
        found.status.success() && text.contains("192.168.150.7"),
        "dnsmasq answers with the new record: {text} {}",
        String::from_utf8_lossy(&found.stderr)
    );
    assert_eq!(ns.dnsmasq_pids(), dnsmasq, "a DNS host needs no dnsmasq restart");

    update_live(
        &mut client,
        NetworkUpdateCommand::Delete,
        NetworkUpdateSection::DnsHost,
        "<host><hostname>db.e2e.test</hostname></host>",
    )
    .await;
    let gone = nslookup(&guest, &["db.e2e.test"]);
    assert!(
        !String::from_utf8_lossy(&gone.stdout).contains("192.168.150.7"),
        "the record is gone: {}",
        String::from_utf8_lossy(&gone.stdout)
    );
}

#[tokio::test]
async fn dhcp_ranges_added_and_deleted_live_decide_the_guests_address() {
    let ns = Netns::new();
    let guest = Netns::new();
    let root = root();
    let (_daemon, mut client) = start_daemon(&ns, &root).await;
    define_and_start_xml(&mut client, DOMAIN_XML).await;
    let old = ns.dnsmasq_pids();
    assert_eq!(old.len(), 1);

    update_live(
        &mut client,
        NetworkUpdateCommand::AddLast,
        NetworkUpdateSection::IpDhcpRange,
        "<range start='192.168.150.100' end='192.168.150.109'/>",
    )
    .await;
    update_live(
        &mut client,
        NetworkUpdateCommand::Delete,
        NetworkUpdateSection::IpDhcpRange,
        "<range start='192.168.150.10' end='192.168.150.19'/>",
    )
    .await;
    let conf = dnsmasq_conf(&root);
    assert!(
        conf.contains("\ndhcp-range=192.168.150.100,192.168.150.109,255.255.255.0\n")
            && !conf.contains("192.168.150.19"),
        "{conf}"
    );
    let now = ns.dnsmasq_pids();
    assert_eq!(now.len(), 1, "one dnsmasq runs: {now:?}");
    assert_ne!(now, old, "dnsmasq was restarted with the new ranges");

    let out = dhcp_client(&ns, &guest, "ranged").await;
    assert!(
        out.status.success(),
        "udhcpc got no lease: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leases = client
        .get_network_dhcp_leases(GetNetworkDhcpLeasesRequest {
            network: by_name(),
            mac: CLIENT_MAC.into(),
        })
        .await
        .expect("leases")
        .into_inner()
        .leases;
    let last_octet: Option<u8> = leases
        .first()
        .and_then(|l| l.ipaddr.rsplit('.').next())
        .and_then(|o| o.parse().ok());
    assert!(
        last_octet.is_some_and(|o| (100..=109).contains(&o)),
        "the lease comes from the added range: {leases:?}"
    );
    let xml = client
        .get_network_xml(GetNetworkXmlRequest {
            network: by_name(),
            flags: NetworkXmlFlag::Inactive as u32,
        })
        .await
        .expect("xml")
        .into_inner()
        .xml;
    assert!(
        xml.contains("192.168.150.19") && !xml.contains("192.168.150.109"),
        "a live update leaves the persistent definition alone: {xml}"
    );
}

#[tokio::test]
async fn a_dual_stack_network_serves_dhcpv6_and_routes_ipv6() {
    let ns = Netns::new();
    let guest = Netns::new();
    let root = root();
    let (_daemon, mut client) = start_daemon(&ns, &root).await;
    define_and_start_xml(&mut client, DUAL_XML).await;

    let addr = String::from_utf8_lossy(&ns.ip(&["-o", "addr", "show", "dev", BRIDGE]).stdout).into_owned();
    assert!(
        addr.contains("192.168.150.1/24") && addr.contains("fd00:150::1/64"),
        "{addr}"
    );
    let conf = dnsmasq_conf(&root);
    for line in [
        "dhcp-range=192.168.150.10,192.168.150.99,255.255.255.0",
        "dhcp-range=fd00:150::10,fd00:150::99,64",
        "enable-ra",
    ] {
        assert!(conf.lines().any(|l| l == line), "{line} in {conf}");
    }
    let v6 = String::from_utf8_lossy(&ns.exec(&["nft", "list", "table", "ip6", TABLE]).stdout).into_owned();
    assert!(
        v6.contains("ip6 saddr fd00:150::/64 iifname \"rvbr0\"")
            && v6.contains("ip6 daddr fd00:150::/64 oifname \"rvbr0\"")
            && v6.contains("udp dport { 53, 547 }"),
        "IPv6 is routed and DHCPv6 accepted: {v6}"
    );
    assert!(!v6.contains("masquerade"), "IPv6 is not masqueraded: {v6}");
    let v4 = String::from_utf8_lossy(&ns.exec(&["nft", "list", "table", "ip", TABLE]).stdout).into_owned();
    assert!(v4.contains("masquerade"), "IPv4 is: {v4}");
    let forwarding =
        String::from_utf8_lossy(&ns.exec(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout)
            .into_owned();
    assert_eq!(forwarding.trim(), "1");
    for (key, want) in [("disable_ipv6", "0"), ("accept_ra", "0"), ("autoconf", "0")] {
        let value = String::from_utf8_lossy(
            &ns.exec(&["sysctl", "-n", &format!("net.ipv6.conf.{BRIDGE}.{key}")])
                .stdout,
        )
        .into_owned();
        assert_eq!(value.trim(), want, "{key} of the bridge, as libvirt sets it");
    }

    let mut events = client
        .watch_network_events(WatchNetworkEventsRequest {
            network: by_name(),
            event_ids: vec![NetworkEventId::DhcpLease as i32],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    attach_guest(&ns, &guest);
    let dir = tempfile::tempdir().expect("tempdir");
    let lease_file = dir.path().join("dhclient6.leases");
    let pid_file = dir.path().join("dhclient6.pid");
    // dhclient goes to the background once it has a lease; the guest namespace's guard kills it.
    let child = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &guest.name,
            "dhclient",
            "-6",
            "-1",
            "-v",
            "-sf",
            "/bin/true",
        ])
        .arg("-lf")
        .arg(&lease_file)
        .arg("-pf")
        .arg(&pid_file)
        .arg("eth0")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(LEASE_DEADLINE, child)
        .await
        .expect("dhclient finished in time")
        .expect("run dhclient (install isc-dhcp-client: scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "dhclient -6 got no lease: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client_leases = std::fs::read_to_string(&lease_file).expect("dhclient's lease file");
    assert!(client_leases.contains("iaaddr fd00:150::"), "{client_leases}");

    let lease = tokio::time::timeout(LEASE_DEADLINE, async {
        loop {
            let message = events.message().await.expect("stream").expect("open stream");
            if let Some(watch_network_events_response::Message::Event(NetworkEvent {
                event: Some(network_event::Event::DhcpLease(e)),
                ..
            })) = message.message
                && e.change == NetworkDhcpLeaseChange::Added as i32
                && let Some(lease) = e.lease
                && lease.r#type == IpAddrType::Ipv6 as i32
            {
                return lease;
            }
        }
    })
    .await
    .expect("an IPv6 lease event in time");
    assert!(lease.ipaddr.starts_with("fd00:150::"), "{lease:?}");
    assert_eq!(lease.prefix, 64);
    assert_eq!(lease.iface, BRIDGE);
    assert!(!lease.iaid.is_empty() && !lease.clientid.is_empty(), "{lease:?}");
    // dnsmasq records no MAC for IPv6; dhclient's DUID-LLT carries the client's own.
    let guest_mac =
        String::from_utf8_lossy(&guest.exec(&["cat", "/sys/class/net/eth0/address"]).stdout).into_owned();
    assert_eq!(lease.mac, guest_mac.trim(), "{lease:?}");
    assert!(
        client_leases.contains(&format!("iaaddr {} ", lease.ipaddr)),
        "the client holds the address the API reports: {client_leases}"
    );
    let leases = client
        .get_network_dhcp_leases(GetNetworkDhcpLeasesRequest {
            network: by_name(),
            mac: String::new(),
        })
        .await
        .expect("leases")
        .into_inner()
        .leases;
    assert!(
        leases
            .iter()
            .any(|l| l.ipaddr == lease.ipaddr && l.r#type == IpAddrType::Ipv6 as i32),
        "{leases:?}"
    );

    client
        .destroy_network(DestroyNetworkRequest { network: by_name() })
        .await
        .expect("destroy");
    assert!(!ns.has_link(BRIDGE));
    assert!(
        !ns.exec(&["nft", "list", "table", "ip6", TABLE]).status.success(),
        "the IPv6 table is gone"
    );
}
