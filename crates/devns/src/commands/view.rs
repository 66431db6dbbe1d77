//! `devns view NS`: the tree of a namespace's view.

use super::Global;
use crate::client::Client;
use anyhow::Result;
use devns_core::api::ViewRow;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The namespace: its name, pid:N or id:N.
    pub ns: String,
    #[arg(long)]
    pub json: bool,
}

pub fn run(global: &Global, args: Args) -> Result<i32> {
    let r = Client::connect(&global.socket)?.call(json!({ "op": "view", "ns": args.ns }), &[])?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(0);
    }
    let rows: Vec<ViewRow> = serde_json::from_value(r)?;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            // A tree: each entry below its directory, indented.
            let depth = row.path.matches('/').count();
            let name = row.path.rsplit('/').next().unwrap_or(&row.path);
            let what = match (&row.dev, &row.target) {
                (Some(d), _) => format!("{} {d}", row.kind),
                (None, Some(t)) => format!("-> {t}"),
                _ => row.kind.clone(),
            };
            vec![
                format!("{}{name}", "  ".repeat(depth)),
                format!("{:04o}", row.mode),
                format!("{}:{}", row.uid, row.gid),
                what,
            ]
        })
        .collect();
    print!("{}", devns_core::table::render(&["PATH", "MODE", "OWNER", "WHAT"], &cells, super::terminal_width()));
    Ok(0)
}
