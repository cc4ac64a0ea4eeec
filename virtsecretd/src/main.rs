//! The `virtsecretd` binary: see the library for what it does.

fn main() -> std::process::ExitCode {
    rvirt_daemon::main(virtsecretd::SPEC, virtsecretd::init)
}
