//! `rvirsh`: see the library crate for the pieces; this only hands over the arguments.

fn main() -> std::process::ExitCode {
    rvirsh::cli::main(std::env::args().collect())
}
