//! The `virtqemud` binary: see the library for what it does.

fn main() -> std::process::ExitCode {
    rvirt_daemon::main(virtqemud::SPEC, virtqemud::init)
}
