#!/bin/sh
# RUSTC_WORKSPACE_WRAPPER for make.sh: the virtqemud binary's compile (where whole-program LTO
# generates all the code) gets every function aligned to a page of its own. A wrapper, rather
# than `cargo rustc -- ARGS`, leaves cargo's -C metadata, and so every symbol's name, as in a
# normal release build.
case " $* " in
*" --crate-name virtqemud "*"--crate-type bin"*) exec "$@" -C llvm-args=-align-all-functions=12 ;;
esac
exec "$@"
