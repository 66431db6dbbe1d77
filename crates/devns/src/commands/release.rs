//! `devns release DEVICE`: return a device to `host`; its node leaves the
//! owner's view when this returns.

use super::Global;
use crate::client::Client;
use anyhow::Result;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A /dev path, MAJ:MIN, c:MAJ:MIN, b:MAJ:MIN or a name such as loop3.
    pub device: String,
}

pub fn run(global: &Global, args: Args) -> Result<i32> {
    let r = Client::connect(&global.socket)?.call(json!({ "op": "release", "device": args.device }), &[])?;
    super::print_result(global, &r, || format!("{} -> host", args.device));
    Ok(0)
}
