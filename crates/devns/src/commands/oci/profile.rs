//! `devns oci profile [--base FILE] [--listener PATH]`: a runtime's seccomp
//! profile (podman's or moby's, or a config.json's `linux.seccomp`;
//! without a base everything is allowed) with devns's notify rules and
//! `listenerPath`, on stdout.

use super::Global;
use anyhow::{Context, Result};
use devns_core::ociprofile::{self, MAX_PROFILE_BYTES};
use std::io::Read;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The profile to start from: a seccomp profile file, or a config.json.
    #[arg(long, value_name = "FILE")]
    pub base: Option<PathBuf>,
    /// The seccomp agent socket (default: the config's seccomp_socket, else
    /// seccomp.sock beside --socket).
    #[arg(long, value_name = "PATH", env = "DEVNS_SECCOMP_SOCKET")]
    pub listener: Option<PathBuf>,
    /// listenerMetadata, handed to the agent with each listener.
    #[arg(long, value_name = "TEXT")]
    pub metadata: Option<String>,
}

pub fn run(global: &Global, args: Args) -> Result<i32> {
    let base = match &args.base {
        None => None,
        Some(path) => {
            let shown = path.display();
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_PROFILE_BYTES as u64 + 1).read_to_end(&mut bytes))
                .with_context(|| format!("cannot read the base profile {shown}"))?;
            ociprofile::parse_base(&bytes).with_context(|| format!("bad base profile {shown}"))?
        }
    };
    let cfg = crate::config::load(&global.config)?;
    let listener = cfg.agent_socket(&global.socket, args.listener);
    let listener = listener.to_str().context("the listener path is not UTF-8")?;
    let profile = ociprofile::build(base, listener, args.metadata.as_deref()).context("bad base profile")?;
    println!("{}", serde_json::to_string_pretty(&profile)?);
    Ok(0)
}
