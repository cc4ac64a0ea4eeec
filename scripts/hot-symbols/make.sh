#!/usr/bin/env bash
# Regenerates virtqemud/hot-symbols.txt, the order in which the release build of virtqemud lays
# out the functions it runs (see virtqemud/build.rs and docs/qemu-bench.md, "Idle memory").
#
# 1. builds the normal release binary twice, alone (`-p virtqemud`) and with the whole workspace
#    (`cargo build --release`): cargo's feature unification makes the two name the same
#    functions differently, and the file lists both names (order.py);
# 2. builds virtqemud again with every function on a page of its own (align-wrapper.sh);
# 3. runs qemu-bench against that build with text-touch.c preloaded into the daemon, which
#    records the first run of each function, in order;
# 4. writes those functions, named as in both normal builds, to virtqemud/hot-symbols.txt
#    (order.py), and builds the normal release binary again, laid out with it.
# Needs cc, python3, readelf and nm; takes about 30 minutes on two cores. Run it after changes
# that move much code, then commit the new file.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cc -O2 -shared -fPIC -o "$work/text-touch.so" scripts/hot-symbols/text-touch.c
cargo build --release --workspace
cp target/release/virtqemud "$work/release-workspace"
cargo build --release -p virtqemud
cp target/release/virtqemud "$work/release"
RUSTC_WORKSPACE_WRAPPER="$PWD/scripts/hot-symbols/align-wrapper.sh" \
    cargo build --release -p virtqemud --bin virtqemud
mkdir "$work/bin"
cp target/release/virtqemud "$work/bin/"

TEXTTOUCH_EXE=virtqemud TEXTTOUCH_OUT="$work/touch" LD_PRELOAD="$work/text-touch.so" \
    RVIRT_BIN_DIR="$work/bin" target/release/qemu-bench --starts 1 --domains 100
# The daemon's own record is the largest (its children record a few pages before exec).
daemon=$(ls -S "$work"/touch.* | head -n 1)
python3 scripts/hot-symbols/order.py "$work/bin/virtqemud" "$daemon" "$work/release" "$work/release-workspace" \
    > virtqemud/hot-symbols.txt
echo "virtqemud/hot-symbols.txt: $(wc -l < virtqemud/hot-symbols.txt) functions"

cargo build --release -p virtqemud
