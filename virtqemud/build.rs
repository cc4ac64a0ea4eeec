//! Release builds of the `virtqemud` binary place the functions a daemon runs from its start to
//! its first answers together at the front of its code, in the order they first run, by
//! handing `hot-symbols.txt` to the linker (lld's `--symbol-ordering-file`). The kernel maps a
//! program's code 64 KiB around each page it executes, so scattered hot functions would make
//! most of the 10 MB of code resident. See `docs/qemu-bench.md` ("Idle memory") for how the
//! file is made and what it saves.
//!
//! Debug builds, and builds with `RVIRT_NO_SYMBOL_ORDER` set (a linker other than lld), link as
//! usual. A symbol the file names that no longer exists is skipped without a warning, so a
//! stale file only costs memory, never a build.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=hot-symbols.txt");
    println!("cargo:rerun-if-env-changed=RVIRT_NO_SYMBOL_ORDER");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if !release || std::env::var_os("RVIRT_NO_SYMBOL_ORDER").is_some() {
        return;
    }
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
