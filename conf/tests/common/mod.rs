//! Helpers shared by the conformance tests: where libvirt's reference tree is, and RelaxNG
//! validation with `xmllint`.

#![allow(dead_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// libvirt's reference tree (schemas and test data, laid out as in libvirt's sources): the
/// `RVIRT_LIBVIRT_TREE` environment variable, else `../shared/libvirt` beside the workspace.
pub fn libvirt_tree() -> PathBuf {
    let tree = std::env::var_os("RVIRT_LIBVIRT_TREE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/libvirt"));
    assert!(
        tree.join("src/conf/schemas").is_dir(),
        "libvirt's reference tree is not at {}: set RVIRT_LIBVIRT_TREE to a libvirt source tree",
        tree.display()
    );
    tree
}

/// A file of libvirt's tree, by its relative path (`tests/secretxml2xmlin/usage-volume.xml`).
pub fn read(relative: &str) -> String {
    let path = libvirt_tree().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The files of a directory of libvirt's tree whose names end in `suffix`, sorted.
pub fn files(relative_dir: &str, suffix: &str) -> Vec<PathBuf> {
    let dir = libvirt_tree().join(relative_dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(suffix))
        })
        .collect();
    out.sort();
    out
}

/// Validates `xml` against libvirt's schema `schema` (`domain.rng`, `secret.rng`, ...).
pub fn validate(schema: &str, xml: &str) -> Result<(), String> {
    let rng = libvirt_tree().join("src/conf/schemas").join(schema);
    let mut child = Command::new("xmllint")
        .arg("--noout")
        .arg("--relaxng")
        .arg(&rng)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run xmllint (install libxml2-utils): {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(xml.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}\n{xml}", String::from_utf8_lossy(&out.stderr)))
    }
}
