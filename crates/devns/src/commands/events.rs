//! `devns events`: ownership, hotplug and namespace events as they happen.

use super::Global;
use crate::client::Client;
use anyhow::Result;
use devns_core::api::Event;
use serde_json::json;
use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON object per line (else aligned columns: event, device,
    /// MAJ:MIN, namespace; the event coloured on a terminal).
    #[arg(long)]
    pub json: bool,
}

pub fn run(global: &Global, args: Args) -> Result<i32> {
    let mut c = Client::connect(&global.socket)?;
    c.call(json!({ "op": "events" }), &[])?;
    let colour = super::colour();
    let mut out = std::io::stdout().lock();
    while let Some(line) = c.next_line()? {
        let ev: Event = serde_json::from_value(line["event"].clone())?;
        let written = if args.json {
            writeln!(out, "{}", serde_json::to_string(&ev)?)
        } else {
            writeln!(out, "{}", devns_core::table::event_line(&ev, colour))
        };
        // A closed pipe (`devns events | head`) ends the stream quietly.
        if written.and_then(|()| out.flush()).is_err() {
            return Ok(0);
        }
    }
    Ok(0)
}
