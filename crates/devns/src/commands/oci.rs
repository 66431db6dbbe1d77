//! `devns oci`: what container runtimes take from devns. `profile` prints
//! a seccomp profile that routes devns's calls to its agent; `runtime`
//! wraps a runtime binary (also as `devns-runtime`, a symlink to devns).

pub mod profile;
pub mod runtime;

use super::Global;
use clap::Subcommand;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Oci,
}

#[derive(Debug, Subcommand)]
pub enum Oci {
    /// Print a seccomp profile (for podman's --security-opt seccomp=FILE)
    /// with devns's notify rules and listenerPath.
    Profile(profile::Args),
    /// Edit a container's config.json when it asks for devns (annotation
    /// devns.io/enable=true), then exec the real runtime with the same arguments.
    Runtime(runtime::Args),
}

pub fn run(global: &Global, args: Args) -> anyhow::Result<i32> {
    match args.command {
        Oci::Profile(a) => profile::run(global, a),
        Oci::Runtime(a) => runtime::run(global, a),
    }
}
