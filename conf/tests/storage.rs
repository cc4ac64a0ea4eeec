//! Conformance of the storage pool and volume models with libvirt's own test data: every input
//! under `storagepoolxml2xmlin/` and `storagevolxml2xmlin/` (volumes in the context of the pool
//! libvirt's `storagevolxml2xmltest.c` pairs them with) formats to its `*xml2xmlout/` twin and
//! validates against `storagepool.rng` / `storagevol.rng`.
//!
//! Comparison is canonical: both documents are parsed into trees (attributes as sets,
//! whitespace-only text ignored, quotes and empty-element spelling irrelevant) and the trees
//! must be equal.

use std::path::Path;

use quick_xml::XmlVersion;
use quick_xml::events::Event;
use rvirt_conf::storage::{PoolDef, PoolType, VolDef, VolParseOptions};

#[derive(Debug, PartialEq)]
struct Node {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<Node>,
}

fn tree(xml: &str) -> Node {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<Node> = vec![Node {
        name: "#document".into(),
        attrs: vec![],
        text: String::new(),
        children: vec![],
    }];
    let open = |e: &quick_xml::events::BytesStart<'_>| {
        let mut attrs: Vec<(String, String)> = e
            .attributes()
            .map(|a| {
                let a = a.expect("attribute");
                (
                    a.key.as_ref().to_owned(),
                    a.normalized_value(XmlVersion::Implicit1_0)
                        .expect("attribute value")
                        .into_owned(),
                )
            })
            .collect();
        attrs.sort();
        Node {
            name: e.name().as_ref().to_owned(),
            attrs,
            text: String::new(),
            children: vec![],
        }
    };
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => stack.push(open(&e)),
            Event::Empty(e) => {
                let node = open(&e);
                stack.last_mut().expect("parent").children.push(node);
            }
            Event::End(_) => {
                let mut node = stack.pop().expect("open element");
                node.text = node.text.trim().to_owned();
                stack.last_mut().expect("parent").children.push(node);
            }
            Event::Text(t) => {
                let text = t.xml_content(XmlVersion::Implicit1_0);
                stack.last_mut().expect("element").text.push_str(&text);
            }
            Event::GeneralRef(r) => {
                let name = r.xml_content(XmlVersion::Implicit1_0);
                let resolved = match name.as_ref() {
                    "lt" => "<",
                    "gt" => ">",
                    "amp" => "&",
                    "apos" => "'",
                    "quot" => "\"",
                    other => panic!("unknown entity {other}"),
                };
                stack.last_mut().expect("element").text.push_str(resolved);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let mut doc = stack.pop().expect("document");
    doc.children.pop().expect("root element")
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .expect("file name")
        .to_owned()
}

#[test]
fn libvirt_pool_inputs_format_to_their_outputs_and_validate() {
    let inputs = rvirt_testdata::files("tests/storagepoolxml2xmlin", ".xml");
    assert!(!inputs.is_empty(), "no pool inputs found");
    let mut checked = 0;
    for input in inputs {
        let name = stem(&input);
        let xml = std::fs::read_to_string(&input).expect("read input");
        let def = PoolDef::from_xml(&xml).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ours = def.to_xml().unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = rvirt_testdata::read(&format!("tests/storagepoolxml2xmlout/{name}.xml"));
        assert_eq!(tree(&ours), tree(&expected), "{name}:\n{ours}");
        rvirt_testdata::validate("storagepool.rng", &ours).unwrap_or_else(|e| panic!("{name}: {e}"));
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} pool files checked");
}

/// The pool libvirt's `storagevolxml2xmltest.c` parses each volume input with.
fn pool_of(volume: &str) -> &'static str {
    match volume {
        "vol-logical" | "vol-logical-backing" => "pool-logical",
        "vol-partition" => "pool-disk",
        _ => "pool-dir",
    }
}

/// Volume inputs not compared, and why.
const VOLUME_SKIPS: &[(&str, &str)] = &[
    (
        "vol-file-qcow2",
        "no storagevolxml2xmlout twin: libvirt uses it only as an input of other tests",
    ),
    (
        "vol-qcow2-nocow",
        "not in storagevolxml2xmltest.c: its stale out file keeps an empty <source> that libvirt 11.3 no \
         longer formats (checked separately below)",
    ),
];

#[test]
fn libvirt_volume_inputs_format_to_their_outputs_and_validate() {
    let mut checked = 0;
    for input in rvirt_testdata::files("tests/storagevolxml2xmlin", ".xml") {
        let name = stem(&input);
        if VOLUME_SKIPS.iter().any(|(skip, _)| *skip == name) {
            continue;
        }
        let pool = PoolDef::from_xml(&rvirt_testdata::read(&format!(
            "tests/storagepoolxml2xmlin/{}.xml",
            pool_of(&name)
        )))
        .expect("pool");
        let xml = std::fs::read_to_string(&input).expect("read input");
        let def = VolDef::from_xml(&xml, pool.pool_type, VolParseOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let ours = def.to_xml().unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = rvirt_testdata::read(&format!("tests/storagevolxml2xmlout/{name}.xml"));
        assert_eq!(tree(&ours), tree(&expected), "{name}:\n{ours}");
        rvirt_testdata::validate("storagevol.rng", &ours).unwrap_or_else(|e| panic!("{name}: {e}"));
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} volume files checked");
}

#[test]
fn nocow_volume_matches_its_output_except_the_stale_empty_source() {
    let pool = PoolType::Dir;
    let xml = rvirt_testdata::read("tests/storagevolxml2xmlin/vol-qcow2-nocow.xml");
    let def = VolDef::from_xml(&xml, pool, VolParseOptions::default()).expect("parse");
    assert!(def.nocow(), "nocow is kept for creation");
    let ours = def.to_xml().expect("format");
    let mut expected = tree(&rvirt_testdata::read(
        "tests/storagevolxml2xmlout/vol-qcow2-nocow.xml",
    ));
    expected
        .children
        .retain(|c| !(c.name == "source" && c.children.is_empty()));
    assert_eq!(tree(&ours), expected, "{ours}");
    rvirt_testdata::validate("storagevol.rng", &ours).expect("valid");
}

#[test]
fn other_pool_types_parse() {
    for (kind, xml) in [
        (
            PoolType::Zfs,
            "<pool type='zfs'><name>tank</name><source><name>tank</name><device path='/dev/sdb'/></source></pool>",
        ),
        (
            PoolType::Gluster,
            "<pool type='gluster'><name>g</name><source><host name='h'/><name>vol</name></source></pool>",
        ),
        (
            PoolType::Mpath,
            "<pool type='mpath'><name>m</name><target><path>/dev/mapper</path></target></pool>",
        ),
    ] {
        let def = PoolDef::from_xml(xml).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(def.pool_type, kind);
        let ours = def.to_xml().expect("format");
        rvirt_testdata::validate("storagepool.rng", &ours).unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}

#[test]
fn formatted_pool_parses_back_to_the_same_definition() {
    for input in rvirt_testdata::files("tests/storagepoolxml2xmlin", ".xml") {
        let def = PoolDef::from_xml(&std::fs::read_to_string(&input).expect("read")).expect("parse");
        let again = PoolDef::from_xml(&def.to_xml().expect("format")).expect("reparse");
        assert_eq!(def, again, "{}", input.display());
    }
}

#[test]
fn canonical_comparison_notices_differences() {
    assert_ne!(tree("<a x='1'/>"), tree("<a x='2'/>"));
    assert_ne!(tree("<a><b/></a>"), tree("<a><b/><c/></a>"));
    assert_ne!(tree("<a>t</a>"), tree("<a>u</a>"));
    assert_eq!(
        tree("<a y='2' x=\"1\">\n  <b/>\n</a>"),
        tree("<a x='1' y='2'><b></b></a>")
    );
}
