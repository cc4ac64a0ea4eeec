#!/usr/bin/env python3
"""Turns a text-touch record into a linker symbol-ordering file.

usage: order.py PROFILED TOUCH_FILE RELEASE [RELEASE...] > hot-symbols.txt

PROFILED is the program text-touch watched (built with every function on its own page, so a
page names exactly one function); TOUCH_FILE is what text-touch wrote for it; each RELEASE is a
normal release build of the same source. The output names each function that ran, once, in the
order it first ran, under each name it has in the RELEASE builds.

Several RELEASE builds: cargo compiles a dependency with the features that all the packages of
one build ask for, and those features are part of the hash in every symbol name, so virtqemud
built alone (`cargo build --release -p virtqemud`) and built with the whole workspace (`cargo
build --release`) name the same functions differently. The linker skips names its binary does
not have, so one file serves every build whose names it lists.

The two builds compile the same code but the profiled one is built through a rustc wrapper,
which changes the hash in the names of functions instantiated in the virtqemud crates
(`..17h<hash>E`). A function is therefore found in RELEASE by its name without that hash and
its size; when several instances match both, all are kept.
"""

import bisect
import re
import subprocess
import sys


def code_base(binary):
    """The virtual address the executable segment's mapping starts at (page-aligned)."""
    out = subprocess.run(["readelf", "-lW", binary], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields[:1] == ["LOAD"] and "E" in fields[6:-1]:
            return int(fields[2], 16) & ~4095
    sys.exit(f"{binary}: no executable LOAD segment")


def functions(binary):
    out = subprocess.run(["nm", "-S", "--defined-only", binary], check=True, capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2] in "tTwW":
            size = int(fields[1], 16)
            if size:
                found.append((int(fields[0], 16), size, fields[3]))
    found.sort()
    return found


def unhashed(name):
    return re.sub(r"17h[0-9a-f]{16}E(\.\d+)?$", "E", name)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    binary, touches, releases = sys.argv[1], sys.argv[2], sys.argv[3:]
    base = code_base(binary)
    funcs = functions(binary)
    starts = [f[0] for f in funcs]
    by_shape = {}
    for release in releases:
        for _, size, name in functions(release):
            by_shape.setdefault((unhashed(name), size), []).append(name)
    seen = set()
    missed = 0
    for line in open(touches):
        if line.startswith("#"):
            continue
        _, first = line.split()
        at = base + int(first, 16)
        i = bisect.bisect_right(starts, at) - 1
        if i < 0:
            continue
        start, size, name = funcs[i]
        if not start <= at < start + size:
            continue
        matches = by_shape.get((unhashed(name), size), [])
        missed += not matches
        for match in matches:
            if match not in seen:
                seen.add(match)
                print(match)
    print(f"{len(seen)} functions; {missed} that ran have no match in {' '.join(releases)}", file=sys.stderr)


main()
