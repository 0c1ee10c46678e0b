//! The `meltica` binary: arguments → Config → Engine → exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    meltica::cli::main(&args)
}
