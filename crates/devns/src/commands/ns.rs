//! `devns ns ls`: the namespaces under devns.

use super::Global;
use crate::client::Client;
use anyhow::Result;
use devns_core::api::NsRow;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: NsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum NsCommand {
    /// List namespaces: id, name, watched pids, owned devices, and their
    /// mounts of their own block devices.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(global: &Global, args: Args) -> Result<i32> {
    let NsCommand::Ls { json } = args.command;
    let r = Client::connect(&global.socket)?.call(json!({ "op": "ns-ls" }), &[])?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(0);
    }
    let rows: Vec<NsRow> = serde_json::from_value(r)?;
    println!("{:<24} {:<16} {:<16} DEVICES", "ID", "NAME", "PIDS");
    for row in rows {
        let pids = row.pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        println!("{:<24} {:<16} {:<16} {}", row.id, row.name.as_deref().unwrap_or("-"), pids, row.devices.join(" "));
        for m in &row.mounts {
            let ro = if m.read_only { ",ro" } else { "" };
            println!("{:<24} mounted /dev/{} at {} ({}, {}{ro})", "", m.device, m.target, m.fstype, m.way);
        }
    }
    Ok(0)
}
