//! The `virtproxyd` binary: see the library for what it does.

fn main() -> std::process::ExitCode {
    rvirt_daemon::main(virtproxyd::SPEC, virtproxyd::init)
}
