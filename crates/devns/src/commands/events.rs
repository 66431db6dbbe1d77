//! `devns events`: ownership, hotplug and namespace events as they happen.

use super::Global;
use crate::client::Client;
use anyhow::Result;
use devns_core::api::Event;
use serde_json::json;
use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(global: &Global, args: Args) -> Result<i32> {
    let mut c = Client::connect(&global.socket)?;
    c.call(json!({ "op": "events" }), &[])?;
    let mut out = std::io::stdout().lock();
    while let Some(line) = c.next_line()? {
        let ev: Event = serde_json::from_value(line["event"].clone())?;
        let written = if args.json {
            writeln!(out, "{}", serde_json::to_string(&ev)?)
        } else {
            let mut s = ev.event.clone();
            for (k, v) in [("device", &ev.device), ("dev", &ev.dev), ("ns", &ev.ns)] {
                if let Some(v) = v {
                    s.push_str(&format!(" {k}={v}"));
                }
            }
            if let Some(g) = ev.global {
                s.push_str(&format!(" global={g}"));
            }
            writeln!(out, "{s}")
        };
        // A closed pipe (`devns events | head`) ends the stream quietly.
        if written.and_then(|()| out.flush()).is_err() {
            return Ok(0);
        }
    }
    Ok(0)
}
