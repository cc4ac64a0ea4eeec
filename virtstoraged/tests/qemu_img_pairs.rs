//! Our `qemu-img` commands against libvirt's (`tests/storagevolxml2argvdata/*.argv`): for every
//! "volume argv pair" of the reference tree's README, both commands run for real in temporary
//! directories, and the images they produce must agree in what `qemu-img info` reports (format,
//! virtual size, cluster size, compat, lazy refcounts, extended L2, backing file and format, and
//! roughly the allocated size, which shows the preallocation). Strings are never compared.

use std::path::Path;
use std::process::Command;

use rvirt_conf::storage::{PoolDef, VolDef, VolParseOptions};
use virtstoraged::qemu_img::{self, ImageInfo, ImageOptions, LuksKey};

fn vol(pool: &str, name: &str) -> VolDef {
    let pool = PoolDef::from_xml(&rvirt_testdata::read(&format!(
        "tests/storagepoolxml2xmlin/{pool}.xml"
    )))
    .expect("pool");
    VolDef::from_xml(
        &rvirt_testdata::read(&format!("tests/storagevolxml2xmlin/{name}.xml")),
        pool.pool_type,
        VolParseOptions::default(),
    )
    .expect("volume")
}

/// libvirt's argv with its paths moved: inputs into `inputs`, the output into `out_dir`, the
/// secret file to `secret`.
fn libvirt_argv(file: &str, inputs: &Path, out_dir: &Path, output_name: &str, secret: &Path) -> Vec<String> {
    let text = rvirt_testdata::read(&format!("tests/storagevolxml2argvdata/{file}.argv"));
    let words: Vec<String> = text
        .split_whitespace()
        .filter(|w| *w != "\\")
        .map(str::to_owned)
        .collect();
    words
        .into_iter()
        .skip(1) // qemu-img
        .map(|w| {
            let w = w.replace("/path/to/secretFile", &secret.display().to_string());
            match w.strip_prefix("/var/lib/libvirt/images/") {
                Some(name) if name == output_name => out_dir.join(name).display().to_string(),
                Some(name) => inputs.join(name).display().to_string(),
                None => w,
            }
        })
        .collect()
}

fn run(args: &[std::ffi::OsString]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn info(path: &Path) -> ImageInfo {
    let out = Command::new("qemu-img")
        .args(qemu_img::info_args(path, None))
        .output()
        .expect("qemu-img info");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    qemu_img::parse_info(&out.stdout).expect("info JSON").remove(0)
}

struct Pair {
    argv: &'static str,
    vol: &'static str,
    input: Option<&'static str>,
    prealloc_metadata: bool,
}

const PAIRS: &[Pair] = &[
    Pair {
        argv: "qcow2-compat",
        vol: "vol-qcow2",
        input: None,
        prealloc_metadata: false,
    },
    Pair {
        argv: "qcow2-nobacking-prealloc-compat",
        vol: "vol-qcow2-nobacking",
        input: None,
        prealloc_metadata: true,
    },
    Pair {
        argv: "qcow2-nobacking-convert-prealloc-compat",
        vol: "vol-qcow2-nobacking",
        input: Some("vol-file"),
        prealloc_metadata: true,
    },
    Pair {
        argv: "qcow2-lazy",
        vol: "vol-qcow2-lazy",
        input: None,
        prealloc_metadata: false,
    },
    Pair {
        argv: "qcow2-1.1",
        vol: "vol-qcow2-1.1",
        input: None,
        prealloc_metadata: false,
    },
    Pair {
        argv: "qcow2-nocow-compat",
        vol: "vol-qcow2-nocow",
        input: None,
        prealloc_metadata: false,
    },
    Pair {
        argv: "iso",
        vol: "vol-file-iso",
        input: None,
        prealloc_metadata: false,
    },
    Pair {
        argv: "iso-input",
        vol: "vol-file",
        input: Some("vol-file-iso"),
        prealloc_metadata: false,
    },
    Pair {
        argv: "luks",
        vol: "vol-luks",
        input: None,
        prealloc_metadata: false,
    },
];

fn file_name(def: &VolDef) -> String {
    let path = def
        .target
        .as_ref()
        .and_then(|t| t.path.clone())
        .expect("target path");
    Path::new(&path)
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

fn check_pair(pair: &Pair) {
    let dir = tempfile::tempdir().expect("tempdir");
    let inputs = dir.path().join("in");
    let theirs = dir.path().join("libvirt");
    let ours = dir.path().join("rvirt");
    for d in [&inputs, &theirs, &ours] {
        std::fs::create_dir(d).expect("mkdir");
    }
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "passphrase").expect("secret");

    let def = vol("pool-dir", pair.vol);
    let name = file_name(&def);
    let encryption = def
        .target
        .as_ref()
        .and_then(|t| t.encryption.as_ref())
        .map(|_| LuksKey {
            alias: format!("{}_encrypt0", def.name),
            file: secret.clone(),
            options: Vec::new(),
        });
    let options = ImageOptions::from_vol(&def, pair.prealloc_metadata, encryption);

    let our_args = match pair.input {
        None => qemu_img::create_args(&ours.join(&name), &options).expect("our create argv"),
        Some(input) => {
            let input_def = vol("pool-dir", input);
            let input_path = inputs.join(file_name(&input_def));
            let file = std::fs::File::create(&input_path).expect("input file");
            file.set_len(input_def.capacity_bytes()).expect("input size");
            qemu_img::convert_args(
                &input_path,
                input_def.format().unwrap_or("raw"),
                &ours.join(&name),
                &options,
            )
            .expect("our convert argv")
        }
    };
    run(&our_args);
    let their_args: Vec<std::ffi::OsString> = libvirt_argv(pair.argv, &inputs, &theirs, &name, &secret)
        .into_iter()
        .map(Into::into)
        .collect();
    run(&their_args);

    let (a, b) = (info(&ours.join(&name)), info(&theirs.join(&name)));
    let what = pair.argv;
    assert_eq!(a.format, b.format, "{what}: format");
    assert_eq!(a.virtual_size, b.virtual_size, "{what}: virtual size");
    assert_eq!(a.cluster_size, b.cluster_size, "{what}: cluster size");
    assert_eq!(a.compat, b.compat, "{what}: compat");
    assert_eq!(a.lazy_refcounts, b.lazy_refcounts, "{what}: lazy refcounts");
    assert_eq!(a.extended_l2, b.extended_l2, "{what}: extended L2");
    assert_eq!(a.backing_filename, b.backing_filename, "{what}: backing file");
    assert_eq!(a.backing_format, b.backing_format, "{what}: backing format");
    let (x, y) = (a.actual_size.unwrap_or(0), b.actual_size.unwrap_or(0));
    assert!(
        x.abs_diff(y) <= (x.max(y) / 10).max(1 << 20),
        "{what}: allocated {x} bytes against libvirt's {y}"
    );
}

#[test]
fn qcow2_compat_pair_reaches_the_same_image() {
    check_pair(&PAIRS[0]);
}

#[test]
fn qcow2_nobacking_prealloc_pair_reaches_the_same_image() {
    check_pair(&PAIRS[1]);
}

#[test]
fn qcow2_nobacking_convert_prealloc_pair_reaches_the_same_image() {
    check_pair(&PAIRS[2]);
}

#[test]
fn qcow2_lazy_pair_reaches_the_same_image() {
    check_pair(&PAIRS[3]);
}

#[test]
fn qcow2_1_1_pair_reaches_the_same_image() {
    check_pair(&PAIRS[4]);
}

#[test]
fn qcow2_nocow_pair_reaches_the_same_image() {
    check_pair(&PAIRS[5]);
}

#[test]
fn iso_pair_reaches_the_same_image() {
    check_pair(&PAIRS[6]);
}

#[test]
fn iso_input_pair_reaches_the_same_image() {
    check_pair(&PAIRS[7]);
}

#[test]
fn luks_pair_reaches_the_same_image() {
    check_pair(&PAIRS[8]);
}
