//! `devns attach --pid PID`: bring an existing process's user namespace
//! under devns and mount its view in that process's mount namespace.

use super::Global;
use crate::client::Client;
use anyhow::Result;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub pid: i32,
    /// A name for the namespace.
    #[arg(long)]
    pub name: Option<String>,
    /// Where to mount the view, inside the process's root.
    #[arg(long, value_name = "PATH", default_value = "/dev")]
    pub at: String,
}

pub fn run(global: &Global, args: Args) -> Result<i32> {
    let r = Client::connect(&global.socket)?
        .call(json!({ "op": "attach", "pid": args.pid, "name": args.name, "at": args.at }), &[])?;
    super::print_result(global, &r, || format!("id:{}", r["id"]));
    Ok(0)
}
