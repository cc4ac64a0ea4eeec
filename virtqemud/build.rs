//! Release builds of the `virtqemud` binary place the functions a daemon runs from its start to
//! its first answers together at the front of its code, in the order they first run, by
//! handing `hot-symbols.txt` to the linker (lld's `--symbol-ordering-file`). The kernel maps a
//! program's code 64 KiB around each page it executes, so scattered hot functions would make
//! most of the 10 MB of code resident. See `docs/qemu-bench.md` ("Idle memory") for how the
//! file is made and what it saves.
//!
//! The file lists each function under the names it has in the two usual release builds,
//! `cargo build --release -p virtqemud` and `cargo build --release` (the workspace): cargo
//! builds a dependency with the features all the packages of one build ask for, and the hash
//! in each symbol name follows them. A symbol the file names that the binary does not have is
//! skipped without a warning, so a stale file only costs memory, never a build.
//!
//! Release builds also pack the binary's relative relocations (`-z pack-relative-relocs`,
//! DT_RELR, which glibc 2.36 and later load). Debug builds, and builds with
//! `RVIRT_NO_SYMBOL_ORDER` set (a linker other than lld), link as usual.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=hot-symbols.txt");
    println!("cargo:rerun-if-env-changed=RVIRT_NO_SYMBOL_ORDER");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if !release || std::env::var_os("RVIRT_NO_SYMBOL_ORDER").is_some() {
        return;
    }
    // Relative relocations packed as a bitmap (DT_RELR, glibc 2.36 and later) instead of 24
    // bytes each: the loader reads 0.35 MB less of the binary at every start.
    println!("cargo:rustc-link-arg-bin=virtqemud=-Wl,-z,pack-relative-relocs");
    let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let order = Path::new(&dir).join("hot-symbols.txt");
    if !order.is_file() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=virtqemud=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=virtqemud=-Wl,--no-warn-symbol-ordering");
}
