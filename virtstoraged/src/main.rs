//! The `virtstoraged` binary: see the library for what it does.

fn main() -> std::process::ExitCode {
    rvirt_daemon::main(virtstoraged::SPEC, virtstoraged::init)
}
