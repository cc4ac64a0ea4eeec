//! For rvirt's tests: where libvirt's reference tree is (its RelaxNG schemas and test data, laid
//! out as in libvirt's sources), reading from it, and validating XML against its schemas with
//! `xmllint`. Tests never copy that tree into the project: they find it through
//! `RVIRT_LIBVIRT_TREE`, else `../shared/libvirt` beside the workspace.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// libvirt's reference tree; panics, saying how to point to it, when it has no schemas.
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

/// A directory of libvirt's tree (`tests/networkxml2confdata`); panics when it is missing.
pub fn libvirt_dir(relative: &str) -> PathBuf {
    let dir = libvirt_tree().join(relative);
    assert!(
        dir.is_dir(),
        "libvirt's reference tree has no {relative} at {}: set RVIRT_LIBVIRT_TREE to a libvirt source tree",
        dir.display()
    );
    dir
}

/// A file of libvirt's tree, by its relative path (`tests/secretxml2xmlin/usage-volume.xml`).
pub fn read(relative: &str) -> String {
    let path = libvirt_tree().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The files of a directory of libvirt's tree whose names end in `suffix`, sorted.
pub fn files(relative_dir: &str, suffix: &str) -> Vec<PathBuf> {
    let dir = libvirt_dir(relative_dir);
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

/// Validates `xml` against libvirt's schema `schema` (`domain.rng`, `secret.rng`, ...) with
/// `xmllint --relaxng`; the error holds xmllint's complaint and the document.
pub fn validate(schema: &str, xml: &str) -> Result<(), String> {
    let rng = libvirt_tree().join("src/conf/schemas").join(schema);
    let mut child = Command::new("xmllint")
        .args(["--noout", "--relaxng"])
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
