//! The `trunkline` binary: parses the command line and hands over to `cli`.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("trunkline: {e:#}");
            ExitCode::from(2)
        }
    }
}
