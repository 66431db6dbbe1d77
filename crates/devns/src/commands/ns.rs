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
    let mut cells = Vec::new();
    for row in rows {
        let pids = row.pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        cells.push(vec![row.id, row.name.unwrap_or_else(|| "-".into()), pids, row.devices.join(" ")]);
        // Each mount of its own devices on a line of its own below it.
        for m in &row.mounts {
            let ro = if m.read_only { ",ro" } else { "" };
            let what = format!("mounted /dev/{} at {} ({}, {}{ro})", m.device, m.target, m.fstype, m.way);
            cells.push(vec![String::new(), String::new(), String::new(), what]);
        }
    }
    let table = devns_core::table::render(&["ID", "NAME", "PIDS", "DEVICES"], &cells, super::terminal_width());
    print!("{table}");
    Ok(0)
}
