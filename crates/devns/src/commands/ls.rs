//! `devns ls`: the host's devices, who owns them, which are global.

use super::Global;
use crate::engine::{Engine, Role};
use crate::{config, store::Store};
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stable JSON output: an array of {name, kind, major, minor, owner, global}.
    #[arg(long)]
    pub json: bool,
    /// Only devices that a namespace owns.
    #[arg(long)]
    pub owned: bool,
}

#[derive(Serialize)]
struct Row<'a> {
    name: &'a str,
    kind: char,
    major: u32,
    minor: u32,
    owner: String,
    global: bool,
}

pub fn run(global: &Global, args: Args) -> Result<i32> {
    if let Some(mut daemon) = crate::client::Client::connect_if_running(&global.socket)? {
        let rows: Vec<devns_core::api::DeviceRow> =
            serde_json::from_value(daemon.call(serde_json::json!({ "op": "ls" }), &[])?)?;
        let rows: Vec<Row<'_>> = rows
            .iter()
            .map(|r| Row {
                name: &r.name,
                kind: r.kind,
                major: r.major,
                minor: r.minor,
                owner: r.owner.clone(),
                global: r.global,
            })
            .filter(|r| !args.owned || r.owner != "host")
            .collect();
        return print(rows, args.json || global.json);
    }
    let cfg = config::load(&global.config)?;
    let store = Store::open(&global.state_dir)?;
    // Reading frees namespaces whose devns process has gone, as every
    // keeper does, so what is shown is what holds.
    let mut engine = Engine::open(Role::Look, cfg, store, None)?;
    engine.recover()?;
    let registry = engine.model().registry();
    let rows: Vec<Row<'_>> = registry
        .devices()
        .map(|d| Row {
            name: &d.name,
            kind: d.id.kind.letter(),
            major: d.id.major,
            minor: d.id.minor,
            owner: registry.owner(d.id).to_string(),
            global: registry.is_global(d.id),
        })
        .filter(|r| !args.owned || r.owner != "host")
        .collect();
    print(rows, args.json || global.json)
}

fn print(rows: Vec<Row<'_>>, json: bool) -> Result<i32> {
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let global = if r.global { "yes" } else { "" };
                vec![
                    r.name.to_owned(),
                    r.kind.to_string(),
                    format!("{}:{}", r.major, r.minor),
                    global.into(),
                    r.owner.clone(),
                ]
            })
            .collect();
        let header = ["NAME", "KIND", "MAJ:MIN", "GLOBAL", "OWNER"];
        print!("{}", devns_core::table::render(&header, &cells, super::terminal_width()));
    }
    Ok(0)
}
