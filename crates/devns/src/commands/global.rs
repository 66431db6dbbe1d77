//! `devns global DEVICE on|off`: put a device in every view, or take it out.

use super::Global;
use crate::client::Client;
use anyhow::Result;
use serde_json::json;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    pub device: String,
    #[arg(value_enum)]
    pub state: OnOff,
}

pub fn run(global: &Global, args: Args) -> Result<i32> {
    let on = matches!(args.state, OnOff::On);
    let r = Client::connect(&global.socket)?.call(json!({ "op": "global", "device": args.device, "on": on }), &[])?;
    super::print_result(global, &r, || format!("{} global {}", args.device, if on { "on" } else { "off" }));
    Ok(0)
}
