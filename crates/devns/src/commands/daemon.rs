//! `devns daemon`: the long-running service (see `crate::daemon`).

use super::Global;
use anyhow::Result;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The seccomp agent socket runtimes pass their listeners to
    /// (`linux.seccomp.listenerPath`), root's alone [default: the config's
    /// `seccomp_socket`, else `seccomp.sock` beside --socket]
    #[arg(long, value_name = "PATH", env = "DEVNS_SECCOMP_SOCKET")]
    pub seccomp_socket: Option<PathBuf>,
}

pub fn run(global: &Global, args: Args) -> Result<i32> {
    crate::daemon::run(crate::daemon::Options {
        socket: global.socket.clone(),
        seccomp_socket: args.seccomp_socket,
        state_dir: global.state_dir.clone(),
        config: global.config.clone(),
    })?;
    Ok(0)
}
