//! The subcommands. Each one is glue: it parses flags, calls the library, prints.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use trunkline::api::Kind;
use trunkline::config::yaml;

/// SIP trunks as Kubernetes resources: an operator, a SIP/RTP gateway, and the offline tools for
/// the git side of the workflow.
#[derive(Debug, Parser)]
#[command(name = "trunkline", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions of the three kinds as YAML.
    Crds {
        /// Write one file per kind into this folder instead of printing.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crds { out } => crds(out),
    }
}

fn crds(out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    match out {
        None => {
            let mut all = String::new();
            for kind in Kind::ALL {
                all.push_str("---\n");
                all.push_str(&yaml::to_yaml(&kind.crd())?);
            }
            print!("{all}");
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for kind in Kind::ALL {
                let path = dir.join(kind.crd_file_name());
                std::fs::write(&path, trunkline::api::crd_yaml(kind)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
