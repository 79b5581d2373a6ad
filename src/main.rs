//! The `tierwise` command: parse arguments, call the library, render, exit with a code.
//! Exit codes: 0 success; 1 the command ran and found a problem; 2 usage or unreadable input.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
