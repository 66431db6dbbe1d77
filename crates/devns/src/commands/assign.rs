//! `devns assign DEVICE --to NS`: give a device (and its partitions) to a
//! namespace; its node is in the namespace's view when this returns.

use super::Global;
use crate::client::Client;
use anyhow::Result;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A /dev path, MAJ:MIN, c:MAJ:MIN, b:MAJ:MIN or a name such as loop3.
    pub device: String,
    /// The namespace: its name, pid:N or id:N.
    #[arg(long, value_name = "NS")]
    pub to: String,
}

pub fn run(global: &Global, args: Args) -> Result<i32> {
    let r =
        Client::connect(&global.socket)?.call(json!({ "op": "assign", "device": args.device, "to": args.to }), &[])?;
    super::print_result(global, &r, || format!("{} -> {}", args.device, r["owner"].as_str().unwrap_or("?")));
    Ok(0)
}
