//! Conformance of the secret XML model with libvirt: every document of libvirt's
//! `tests/secretxml2xmlin/` parses, formats back to the same document, and what we format
//! validates against `secret.rng`.

use rvirt_conf::secret::{SecretDef, SecretUsageType};

/// A canonical text of a document for comparison: elements with their attributes sorted, text
/// trimmed, one item a line. Quoting, indentation and attribute order do not matter.
fn normalized(text: &str) -> String {
    use quick_xml::events::{BytesStart, Event};
    let mut reader = quick_xml::Reader::from_str(text);
    let mut out = String::new();
    let mut pending = String::new();
    let flush = |pending: &mut String, out: &mut String| {
        if !pending.trim().is_empty() {
            out.push_str(pending.trim());
            out.push('\n');
        }
        pending.clear();
    };
    let element = |e: &BytesStart<'_>, out: &mut String| {
        let mut attrs: Vec<String> = e
            .attributes()
            .map(|a| {
                let a = a.expect("attribute");
                let value = a
                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .expect("attribute value");
                format!("{}={value}", a.key.as_ref())
            })
            .collect();
        attrs.sort();
        out.push_str(&format!("<{} {}>\n", e.name().as_ref(), attrs.join(" ")));
    };
    loop {
        match reader.read_event().expect("well-formed") {
            Event::Start(e) => {
                flush(&mut pending, &mut out);
                element(&e, &mut out);
            }
            Event::Empty(e) => {
                flush(&mut pending, &mut out);
                element(&e, &mut out);
                out.push_str("</>\n");
            }
            Event::End(_) => {
                flush(&mut pending, &mut out);
                out.push_str("</>\n");
            }
            Event::Text(t) => pending.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => {
                if let Some(c) = r.resolve_char_ref().expect("character reference") {
                    pending.push(c);
                } else {
                    let name = r.xml10_content();
                    let resolved =
                        quick_xml::escape::resolve_predefined_entity(&name).expect("predefined entity");
                    pending.push_str(resolved);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

#[test]
fn every_libvirt_secret_document_round_trips_and_validates() {
    let files = rvirt_testdata::files("tests/secretxml2xmlin", ".xml");
    assert!(
        files.len() >= 7,
        "expected libvirt's secret test files, found {files:?}"
    );
    for path in files {
        let input = std::fs::read_to_string(&path).expect("read test file");
        let name = path.display();
        let def = SecretDef::from_xml(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
        let output = def.to_xml().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            normalized(&output),
            normalized(&input),
            "{name}: output differs:\n{output}"
        );
        // Byte for byte too, but for the quote character (libvirt's files use `'`).
        assert_eq!(output.replace('"', "'"), input, "{name}: output text differs");
        let again = SecretDef::from_xml(&output).unwrap_or_else(|e| panic!("{name} reparsed: {e}"));
        assert_eq!(again, def, "{name}: the model changed through format and parse");
        rvirt_testdata::validate("secret.rng", &output).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn libvirt_documents_give_the_expected_models() {
    let def = SecretDef::from_xml(&rvirt_testdata::read(
        "tests/secretxml2xmlin/usage-ceph-space.xml",
    ))
    .expect("ceph");
    assert_eq!(def.uuid, "f52a81b2-424e-490c-823d-6bd4235bc573");
    assert_eq!(def.usage_type(), Some(SecretUsageType::Ceph));
    assert_eq!(def.usage_id(), "client.admin secret");
    assert!(def.private && !def.ephemeral);
    assert_eq!(def.description.as_deref(), Some("Ceph secret with space and dot"));
    let def = SecretDef::from_xml(&rvirt_testdata::read(
        "tests/secretxml2xmlin/ephemeral-usage-volume.xml",
    ))
    .expect("volume");
    assert!(def.ephemeral);
    assert_eq!(def.usage_type(), Some(SecretUsageType::Volume));
    assert_eq!(def.usage_id(), "/var/lib/libvirt/images/image.img");
}

#[test]
fn generated_and_minimal_definitions_validate() {
    for input in [
        "<secret/>",
        "<secret><usage type='none'/></secret>",
        "<secret private='yes'><description>d</description></secret>",
        "<secret><usage type='vtpm'><name>tpm-state</name></usage></secret>",
        "<secret><usage type='volume'><volume>C:\\images\\a.img</volume></usage></secret>",
    ] {
        let def = SecretDef::from_xml(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        let output = def.to_xml().expect("format");
        rvirt_testdata::validate("secret.rng", &output).unwrap_or_else(|e| panic!("{input}: {e}"));
    }
}

#[test]
fn a_second_uuid_element_is_an_error() {
    let err = SecretDef::from_xml(
        "<secret><uuid>f52a81b2-424e-490c-823d-6bd4235bc573</uuid><uuid>f52a81b2-424e-490c-823d-6bd4235bc574</uuid></secret>",
    )
    .expect_err("two uuids");
    assert!(err.path.starts_with("/secret"), "{err}");
}

#[test]
fn markup_inside_the_description_is_an_error() {
    let err = SecretDef::from_xml("<secret><description>a <b>bold</b> one</description></secret>")
        .expect_err("markup");
    assert!(err.path.starts_with("/secret/description"), "{err}");
}
