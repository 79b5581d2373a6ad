//! The `tierwise` command: parse arguments, call the library, render, exit with a code.
//! Exit codes: 0 success; 1 the command ran and found a problem; 2 usage or unreadable input.

mod cli;

/// mimalloc: decisions and snapshots are many small allocations; the system allocator spent
/// more time freeing a portfolio's results than computing them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
