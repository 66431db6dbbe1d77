//! `devns hold` (hidden): the holder of the daemon's seccomp listeners
//! (see `crate::holder`); the daemon starts it, nobody else needs to.

use super::Global;
use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(global: &Global, _args: Args) -> Result<i32> {
    crate::holder::start(&global.state_dir)?;
    Ok(0)
}
