//! Network XML conformance: libvirt's network inputs parse, fill libvirt's defaults, format in
//! libvirt's order, validate against `network.rng` and round-trip; unsupported or invalid XML
//! is refused with the path of the offending node.

use std::collections::HashSet;

use rvirt_conf::XmlErrorKind;
use rvirt_conf::network::*;

fn parse(xml: &str) -> NetworkDef {
    NetworkDef::parse(xml).unwrap_or_else(|e| panic!("parse failed: {e}\n{xml}"))
}

fn error(xml: &str) -> rvirt_conf::XmlError {
    NetworkDef::parse(xml).expect_err("the XML must be refused")
}

#[test]
fn every_libvirt_network_input_round_trips_and_validates() {
    let inputs = rvirt_testdata::files("tests/networkxml2confdata", ".xml");
    assert!(
        inputs.len() >= 20,
        "expected libvirt's network inputs, found {}",
        inputs.len()
    );
    for path in inputs {
        let text = std::fs::read_to_string(&path).expect("read input");
        let mut def = NetworkDef::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        def.ensure_uuid();
        let out = def.to_xml().expect("format");
        rvirt_testdata::validate("network.rng", &out).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let again =
            NetworkDef::parse(&out).unwrap_or_else(|e| panic!("{}: reparse: {e}\n{out}", path.display()));
        assert_eq!(again, def, "{} does not round-trip:\n{out}", path.display());
    }
}

#[test]
fn defaults_are_libvirts() {
    let def = parse("<network><name>n</name><forward/><ip address='10.0.0.1' prefix='24'/></network>");
    assert_eq!(def.forward_mode(), Some(ForwardMode::Nat));
    let bridge = def.bridge.as_ref().expect("a bridge element");
    assert_eq!(bridge.stp, Some(OnOff::On));
    assert_eq!(bridge.delay, Some(0));
    assert!(def.needs_bridge_name());
    assert!(def.uuid.is_none(), "the UUID is the driver's to generate");
}

#[test]
fn formatted_xml_follows_libvirts_element_order() {
    let mut def = parse(
        "<network><ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>\
         <host mac='52:54:00:00:00:01' ip='192.168.122.5'/><range start='192.168.122.2' end='192.168.122.254'/>\
         </dhcp></ip><mac address='52:54:00:AA:BB:CC'/><bridge name='virbr7'/><forward mode='nat'/>\
         <uuid>81FF0D90C91E674264DA4A736EDB9A9B</uuid><name>default</name></network>",
    );
    def.ensure_uuid();
    let out = def.to_xml().expect("format");
    let expected = "<network>\n  <name>default</name>\n  <uuid>81ff0d90-c91e-6742-64da-4a736edb9a9b</uuid>\n  \
<forward mode=\"nat\"/>\n  <bridge name=\"virbr7\" stp=\"on\" delay=\"0\"/>\n  <mac address=\"52:54:00:aa:bb:cc\"/>\n  \
<ip address=\"192.168.122.1\" netmask=\"255.255.255.0\">\n    <dhcp>\n      \
<range start=\"192.168.122.2\" end=\"192.168.122.254\"/>\n      \
<host mac=\"52:54:00:00:00:01\" ip=\"192.168.122.5\"/>\n    </dhcp>\n  </ip>\n</network>\n";
    assert_eq!(out, expected);
}

#[test]
fn forward_dev_and_first_interface_mirror_each_other() {
    let def = parse("<network><name>n</name><forward mode='route' dev='eth1'/></network>");
    let fwd = def.forward.as_ref().expect("forward");
    assert_eq!(fwd.interface.len(), 1);
    assert_eq!(fwd.interface[0].dev, "eth1");
    let def = parse("<network><name>n</name><forward mode='nat'><interface dev='eth2'/></forward></network>");
    assert_eq!(def.forward_dev(), Some("eth2"));
    let err =
        error("<network><name>n</name><forward dev='a' mode='nat'><interface dev='b'/></forward></network>");
    assert_eq!(err.path, "/network/forward/@dev");
}

#[test]
fn nat_port_range_round_trips_and_validates() {
    let mut def = parse(
        "<network><name>n</name><forward mode='nat'><nat><port start='1024' end='65535'/></nat></forward></network>",
    );
    def.ensure_uuid();
    let out = def.to_xml().expect("format");
    assert!(out.contains("<port start=\"1024\" end=\"65535\"/>"), "{out}");
    rvirt_testdata::validate("network.rng", &out).expect("valid");
    let err = error(
        "<network><name>n</name><forward mode='nat'><nat><port start='2000' end='1000'/></nat></forward></network>",
    );
    assert_eq!(err.path, "/network/forward/nat/port");
}

#[test]
fn unknown_elements_and_unsupported_modes_name_their_path() {
    let err = error("<network><name>n</name><portgroup name='a'/></network>");
    assert_eq!(err.kind, XmlErrorKind::Unsupported);
    assert_eq!(err.path, "/network/portgroup");
    let err = error("<network><name>n</name><bridge name='br0' zone='trusted'/></network>");
    assert_eq!(err.path, "/network/bridge/@zone");
    let err = error("<network><name>n</name><forward mode='hostdev'/></network>");
    assert_eq!(err.kind, XmlErrorKind::Unsupported);
    assert!(err.path.starts_with("/network/forward"), "{}", err.path);
}

#[test]
fn bridge_mode_needs_a_host_bridge_and_nothing_rvirt_would_build() {
    let def = parse("<network><name>host</name><forward mode='bridge'/><bridge name='br0'/></network>");
    assert!(!def.builds_bridge());
    assert_eq!(
        def.bridge.as_ref().and_then(|b| b.stp),
        None,
        "no stp default for a host bridge"
    );
    let err = error("<network><name>host</name><forward mode='bridge'/></network>");
    assert_eq!(err.path, "/network/bridge");
    let err = error(
        "<network><name>host</name><forward mode='bridge'/><bridge name='br0'/><ip address='10.0.0.1' prefix='8'/></network>",
    );
    assert_eq!(err.path, "/network/ip");
}

#[test]
fn prefix_comes_from_netmask_prefix_or_address_class() {
    let def = parse(
        "<network><name>n</name><ip address='192.168.1.1' netmask='255.255.255.0'/><ip address='10.24.10.1'/>\
         <ip family='ipv6' address='2001:db8::1'/><ip address='172.16.0.1' prefix='12'/></network>",
    );
    let prefixes: Vec<_> = def.ip.iter().map(|ip| ip.prefix_len()).collect();
    assert_eq!(prefixes, vec![Some(24), Some(8), Some(64), Some(12)]);
    assert_eq!(def.ip[0].subnet(), "192.168.1.0/24");
    assert_eq!(def.ip[2].subnet(), "2001:db8::/64");
}

#[test]
fn dhcp_range_outside_the_subnet_is_refused() {
    let err = error(
        "<network><name>n</name><ip address='192.168.1.1' prefix='24'><dhcp>\
         <range start='192.168.1.2' end='192.168.2.9'/></dhcp></ip></network>",
    );
    assert_eq!(err.kind, XmlErrorKind::Invalid);
    assert_eq!(err.path, "/network/ip[1]/dhcp/range[1]/@end");
}

#[test]
fn reversed_dhcp_range_is_refused() {
    let err = error(
        "<network><name>n</name><ip address='192.168.1.1' prefix='24'><dhcp>\
         <range start='192.168.1.200' end='192.168.1.2'/></dhcp></ip></network>",
    );
    assert_eq!(err.path, "/network/ip[1]/dhcp/range[1]");
}

#[test]
fn two_ipv4_dhcp_servers_are_refused() {
    let err = error(
        "<network><name>n</name>\
         <ip address='192.168.1.1' prefix='24'><dhcp><range start='192.168.1.2' end='192.168.1.9'/></dhcp></ip>\
         <ip address='192.168.2.1' prefix='24'><dhcp><range start='192.168.2.2' end='192.168.2.9'/></dhcp></ip>\
         </network>",
    );
    assert_eq!(err.path, "/network/ip[2]/dhcp");
}

#[test]
fn family_must_match_the_address() {
    let err = error("<network><name>n</name><ip family='ipv6' address='10.0.0.1'/></network>");
    assert_eq!(err.path, "/network/ip[1]/@family");
}

#[test]
fn dhcp_host_identity_matches_the_family() {
    let err = error(
        "<network><name>n</name><ip family='ipv6' address='2001:db8::1' prefix='64'><dhcp>\
         <host mac='52:54:00:00:00:01' ip='2001:db8::5'/></dhcp></ip></network>",
    );
    assert_eq!(err.path, "/network/ip[1]/dhcp/host[1]/@mac");
    let err = error(
        "<network><name>n</name><ip address='10.0.0.1' prefix='8'><dhcp>\
         <host mac='52:54:00:00:00:01'/></dhcp></ip></network>",
    );
    assert_eq!(err.path, "/network/ip[1]/dhcp/host[1]/@ip");
}

#[test]
fn control_characters_cannot_reach_dnsmasq() {
    let err = error(
        "<network><name>n</name><dns><txt name='a' value='x&#10;dhcp-script=/bin/sh'/></dns></network>",
    );
    assert_eq!(err.path, "/network/dns/txt[1]/@value");
}

#[test]
fn bad_mac_and_uuid_are_refused() {
    let err = error("<network><name>n</name><mac address='52:54:00:zz:00:01'/></network>");
    assert_eq!(err.path, "/network/mac/@address");
    let err = error("<network><name>n</name><uuid>nope</uuid></network>");
    assert_eq!(err.path, "/network/uuid");
    let err = error("<network><name>n</name><mac address='01:54:00:00:00:01'/></network>");
    assert_eq!(err.path, "/network/mac/@address");
}

#[test]
fn bridge_names_are_allocated_lowest_first() {
    let used: HashSet<String> = ["virbr0".to_owned(), "virbr2".to_owned()].into();
    assert_eq!(allocate_bridge_name("virbr%d", &used).as_deref(), Some("virbr1"));
    assert_eq!(
        allocate_bridge_name("br-%d-x", &HashSet::new()).as_deref(),
        Some("br-0-x")
    );
    assert_eq!(allocate_bridge_name("fixed", &HashSet::new()), None);
}

#[test]
fn generated_mac_uses_qemus_prefix_and_only_for_built_bridges() {
    let mut def = parse("<network><name>n</name></network>");
    def.ensure_mac([1, 2, 3]);
    assert_eq!(
        def.mac.as_ref().map(|m| m.address.as_str()),
        Some("52:54:00:01:02:03")
    );
    let mut host = parse("<network><name>h</name><forward mode='bridge'/><bridge name='br0'/></network>");
    host.ensure_mac([1, 2, 3]);
    assert!(host.mac.is_none());
}

#[test]
fn range_sizes_count_both_ends() {
    let s = |a: &str, b: &str| range_size(a.parse().expect("ip"), b.parse().expect("ip"));
    assert_eq!(s("192.168.122.2", "192.168.122.254"), 253);
    assert_eq!(s("2001:db8:ac10:fd01::1:10", "2001:db8:ac10:fd01::1:ff"), 240);
    assert_eq!(s("10.0.0.9", "10.0.0.1"), 0);
}

#[test]
fn dhcp_host_element_parses_for_updates() {
    let host = parse_dhcp_host("<host mac='52:54:00:00:00:09' name='g' ip='10.0.0.9'/>").expect("host");
    assert_eq!(host.name.as_deref(), Some("g"));
    let err = parse_dhcp_host("<host mac='52:54:00:00:00:09' colour='red'/>").expect_err("unknown attr");
    assert_eq!(err.path, "/host/@colour");
}

#[test]
fn dhcp_range_element_parses_for_updates_and_is_checked_against_its_ip() {
    let range =
        parse_dhcp_range("<range start='10.0.0.20' end='10.0.0.30'><lease expiry='1' unit='hours'/></range>")
            .expect("range");
    assert_eq!(range.start.to_string(), "10.0.0.20");
    assert!(range.lease.is_some());
    let net = parse("<network><name>n</name><ip address='10.0.0.1' prefix='24'/></network>");
    validate_dhcp_range("/range", &net.ip[0], &range).expect("inside the subnet");
    let outside = parse_dhcp_range("<range start='10.0.1.20' end='10.0.1.30'/>").expect("range");
    let err = validate_dhcp_range("/range", &net.ip[0], &outside).expect_err("outside");
    assert_eq!(err.path, "/range/@start");
    let err = parse_dhcp_range("<range start='10.0.0.20'/>").expect_err("no end");
    assert!(err.message.contains("end"), "{}", err.message);
}

#[test]
fn dns_host_element_needs_ip_and_a_name_except_to_delete() {
    let full = parse_dns_host("<host ip='10.0.0.5'><hostname>a</hostname></host>", false).expect("host");
    assert_eq!(full.to_host().map(|h| h.hostname), Some(vec!["a".to_owned()]));
    let err = parse_dns_host("<host><hostname>a</hostname></host>", false).expect_err("no ip");
    assert_eq!(err.path, "/host/@ip");
    let err = parse_dns_host("<host ip='10.0.0.5'/>", false).expect_err("no name");
    assert_eq!(err.path, "/host");
    let by_name = parse_dns_host("<host><hostname>a</hostname></host>", true).expect("partial");
    assert!(by_name.ip.is_none() && by_name.to_host().is_none());
    let err = parse_dns_host("<host/>", true).expect_err("nothing to match");
    assert_eq!(err.path, "/host");
    let err =
        parse_dns_host("<host ip='10.0.0.5'><hostname>a b</hostname></host>", false).expect_err("space");
    assert_eq!(err.path, "/host/hostname[1]");
}

#[test]
fn dns_txt_element_needs_a_value_except_to_delete() {
    let txt = parse_dns_txt("<txt name='k' value='v w'/>", false).expect("txt");
    assert_eq!(txt.value.as_deref(), Some("v w"));
    let err = parse_dns_txt("<txt name='k'/>", false).expect_err("no value");
    assert_eq!(err.path, "/txt/@value");
    assert!(parse_dns_txt("<txt name='k'/>", true).is_ok());
    let err = parse_dns_txt("<txt name='a,b' value='v'/>", false).expect_err("comma");
    assert_eq!(err.path, "/txt/@name");
}

#[test]
fn dns_srv_element_matches_on_the_fields_given() {
    let srv = parse_dns_srv(
        "<srv service='ldap' protocol='tcp' domain='lab' target='a.lab' port='389' priority='1' weight='2'/>",
        false,
    )
    .expect("srv");
    let full = srv.to_srv().expect("complete");
    assert_eq!(
        (full.port, full.priority, full.weight),
        (Some(389), Some(1), Some(2))
    );
    let by_target = parse_dns_srv("<srv target='a.lab'/>", true).expect("partial");
    assert!(by_target.matches(&full));
    let other = parse_dns_srv("<srv target='b.lab'/>", true).expect("partial");
    assert!(!other.matches(&full));
    let err = parse_dns_srv("<srv protocol='tcp'/>", false).expect_err("no service");
    assert_eq!(err.path, "/srv/@service");
    let err = parse_dns_srv("<srv service='ldap' protocol='sctp'/>", true).expect_err("bad protocol");
    assert_eq!(err.path, "/srv/@protocol");
}

#[test]
fn forward_interface_element_needs_a_valid_device_name() {
    assert_eq!(
        parse_forward_interface("<interface dev='eth0'/>")
            .expect("interface")
            .dev,
        "eth0"
    );
    let err = parse_forward_interface("<interface dev='a/b'/>").expect_err("slash");
    assert_eq!(err.path, "/interface/@dev");
    let err = parse_forward_interface("<host dev='eth0'/>").expect_err("wrong element");
    assert_eq!(err.path, "/host");
}

const PORT: &str = "<networkport><uuid>5D2BCEF0-5A43-4B6D-9E5B-0E1B1F0C0A01</uuid>\
    <owner><name>vm1</name><uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid></owner>\
    <mac address='52:54:00:AB:CD:EF'/><plug type='network' bridge='virbr0'/></networkport>";

#[test]
fn network_port_round_trips_and_validates() {
    let port = NetworkPortDef::parse(PORT).expect("port");
    assert_eq!(port.uuid(), "5d2bcef0-5a43-4b6d-9e5b-0e1b1f0c0a01");
    assert_eq!(port.mac.address, "52:54:00:ab:cd:ef");
    let out = port.to_xml().expect("format");
    rvirt_testdata::validate("networkport.rng", &out).expect("valid port XML");
    assert_eq!(NetworkPortDef::parse(&out).expect("reparse"), port);
}

#[test]
fn network_port_without_uuid_gets_one() {
    let xml = "<networkport><owner><name>vm1</name><uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid></owner>\
               <mac address='52:54:00:00:00:01'/></networkport>";
    let port = NetworkPortDef::parse(xml).expect("port");
    assert!(rvirt_conf::xml::canonical_uuid(port.uuid()).is_some());
    rvirt_testdata::validate("networkport.rng", &port.to_xml().expect("format")).expect("valid");
}

#[test]
fn network_port_features_rvirt_lacks_are_refused() {
    let err = NetworkPortDef::parse(&PORT.replace("<plug", "<group>web</group><plug")).expect_err("group");
    assert_eq!(err.path, "/networkport/group");
    let err = NetworkPortDef::parse(&PORT.replace(
        "type='network' bridge='virbr0'",
        "type='direct' dev='eth0' mode='vepa'",
    ))
    .expect_err("direct");
    assert!(err.path.starts_with("/networkport/plug"), "{}", err.path);
    let err = NetworkPortDef::parse(&PORT.replace("c7a5fdbd-edaf-9455-926a-d65c16db1809", "nope"))
        .expect_err("uuid");
    assert_eq!(err.path, "/networkport/owner/uuid");
}
