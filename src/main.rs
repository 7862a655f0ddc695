//! The `trunkline` binary: parses the command line and hands over to `cli` (and `cli` to
//! `explain` for `explain --outbound`).

use std::process::ExitCode;

mod cli;
mod explain;

fn main() -> ExitCode {
    let args = cli::Cli::from_env();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("trunkline: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// jemalloc, not glibc's malloc: less CPU per call, and the memory of ended calls goes back to
/// the system (Cargo.toml says why; docs/benchmarks.md has the measurements).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
