//! `devns cdi generate`: devns's CDI spec, for podman, containerd, CRI-O
//! and Docker (`--device devns.io/device=loop3`).

use super::Global;
use crate::engine::{Engine, Role};
use crate::{config, store::Store};
use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Cdi,
}

#[derive(Debug, Subcommand)]
pub enum Cdi {
    /// Write the CDI spec: one device per device devns can give a
    /// container, and `loop`; each runs devns's hook with it. The daemon
    /// keeps the file up to date as devices come and go.
    Generate {
        /// Where (default: the config's cdi_spec, /var/run/cdi/devns.json).
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The spec's kind, vendor/class.
        #[arg(long, default_value = devns_core::cdi::KIND)]
        kind: String,
    },
}

pub fn run(global: &Global, args: Args) -> Result<i32> {
    let Cdi::Generate { output, kind } = args.command;
    let cfg = config::load(&global.config)?;
    let path = output.unwrap_or_else(|| cfg.cdi_spec.clone());
    let names: Vec<String> = if let Some(mut daemon) = crate::client::Client::connect_if_running(&global.socket)? {
        let rows: Vec<devns_core::api::DeviceRow> =
            serde_json::from_value(daemon.call(serde_json::json!({ "op": "ls" }), &[])?)?;
        let all = rows.iter().map(|r| (r.name.as_str(), r.global));
        crate::cdi::assignable(all).into_iter().map(str::to_owned).collect()
    } else {
        let store = Store::open(&global.state_dir)?;
        let engine = Engine::open(Role::Look, cfg, store, None)?;
        let reg = engine.model().registry();
        let all = reg.devices().map(|d| (d.name.as_str(), reg.is_global(d.id)));
        crate::cdi::assignable(all).into_iter().map(str::to_owned).collect()
    };
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    crate::cdi::write(&path, &kind, &names, &global.socket)?;
    println!("{} ({} devices and loop, kind {kind})", path.display(), names.len());
    Ok(0)
}
