//! `devns daemon`: the long-running service (see `crate::daemon`).

use super::Global;
use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(global: &Global, _args: Args) -> Result<i32> {
    crate::daemon::run(crate::daemon::Options {
        socket: global.socket.clone(),
        state_dir: global.state_dir.clone(),
        config: global.config.clone(),
    })?;
    Ok(0)
}
