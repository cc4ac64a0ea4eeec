//! `rvirsh`, the rvirt command line with virsh's command names. Its commands arrive with the
//! client library (`rvirt`) they are built on.

fn main() -> std::process::ExitCode {
    eprintln!("rvirsh: no commands yet; see README.md for what rvirt serves today");
    std::process::ExitCode::FAILURE
}
