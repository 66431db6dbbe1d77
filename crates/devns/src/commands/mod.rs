//! One file per subcommand: an `Args` struct and a `run` function each.

pub mod ls;
pub mod run;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "devns", version, about = "Per-user-namespace /dev views for unprivileged containers")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// Policy file; a missing file means the built-in defaults.
    #[arg(long, global = true, value_name = "FILE", default_value = "/etc/devns/config.toml", env = "DEVNS_CONFIG")]
    pub config: PathBuf,
    /// Where devns keeps what must outlive one process (assignments, namespaces).
    #[arg(long, global = true, value_name = "DIR", default_value = "/run/devns", env = "DEVNS_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Print errors as one JSON object on stderr.
    #[arg(long, global = true)]
    pub json_errors: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in new namespaces with its own /dev view.
    Run(run::Args),
    /// List the host's devices with owner and global flag.
    Ls(ls::Args),
}
