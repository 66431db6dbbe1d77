//! `devns hook createRuntime|poststop`: devns as an OCI hook
//! (oci-hooks(5), `dist/oci-hooks.d/devns.json`). The runtime gives the
//! container's state on stdin. A container whose annotation
//! `devns.io/enable` is not `true` is never touched. createRuntime asks
//! the daemon to bring the container's user namespace under devns
//! (`attach` with its rootfs, devices and `runtime`); poststop asks it to
//! let go of that namespace (`detach`), harmless when it is gone already.

use super::Global;
use crate::client::Client;
use anyhow::{Context, Result, anyhow, bail};
use devns_core::{hook, oci};
use serde_json::json;
use std::io::Read;
use std::path::Path;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The hook's stage, as the runtime-spec names it; by default the one
    /// the state's status tells (`creating` or `created`: createRuntime,
    /// `stopped`: poststop), so that one hooks.d file serves both.
    #[arg(value_enum)]
    pub stage: Option<Stage>,
    /// A device the container gets (as `--dev` takes it), repeatable: how
    /// a CDI device of devns's asks (`devns cdi generate`). A container
    /// whose hook names one asked for devns, annotation or not.
    #[arg(long = "device", value_name = "DEVICE")]
    pub devices: Vec<String>,
    /// The container asked for devns (CDI's `devns.io/device=loop`), with
    /// no device of its own: its view, loop-control and policy.
    #[arg(long)]
    pub enable: bool,
    /// What LXC passes a hook: NAME, `lxc`, the hook's type.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub lxc: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    #[value(name = "createRuntime")]
    CreateRuntime,
    #[value(name = "poststop")]
    Poststop,
    /// An LXC hook (`lxc.hook.pre-start`, `lxc.hook.autodev`,
    /// `lxc.hook.post-stop`): the container from LXC's environment, not
    /// an OCI state on stdin.
    #[value(name = "lxc", alias = "lxc-autodev")]
    Lxc,
}

/// At most `max` bytes of `r`; more is an error.
fn read_bounded(r: impl Read, max: usize, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(max as u64 + 1).read_to_end(&mut buf).with_context(|| format!("cannot read {what}"))?;
    if buf.len() > max {
        bail!("{what} is larger than {max} bytes");
    }
    Ok(buf)
}

pub fn run(global: &Global, args: Args) -> Result<i32> {
    if args.stage == Some(Stage::Lxc) {
        return lxc(global, &args.devices, &args.lxc);
    }
    let input = read_bounded(std::io::stdin().lock(), oci::MAX_PROCESS_STATE_BYTES, "the OCI state on stdin")?;
    let state = oci::parse_state(&input).context("bad OCI state on stdin")?;
    for d in &args.devices {
        if d.is_empty() || d.len() > 256 || d.chars().any(char::is_control) {
            bail!("--device {d:?}: a device name, path or number is 1 to 256 printable characters");
        }
    }
    let Some(wanted) =
        hook::wanted_with(&state, &args.devices, args.enable).with_context(|| format!("container {}", state.id))?
    else {
        return Ok(0);
    };
    let stage = match (args.stage, hook::stage_of(&state.status)) {
        (Some(Stage::CreateRuntime), _) | (None, Some(hook::Stage::CreateRuntime)) => hook::Stage::CreateRuntime,
        (Some(Stage::Poststop), _) | (None, Some(hook::Stage::Poststop)) => hook::Stage::Poststop,
        (Some(Stage::Lxc), _) => unreachable!("served above"),
        (None, None) => bail!(
            "container {}: status {:?} is no stage devns serves (name it: devns hook createRuntime|poststop)",
            state.id,
            state.status
        ),
    };
    let req = match stage {
        hook::Stage::CreateRuntime => {
            let pid = state.pid.ok_or_else(|| anyhow!("the OCI state of container {} names no pid", state.id))?;
            let file = Path::new(&state.bundle).join("config.json");
            let f = std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
            let config = read_bounded(f, hook::MAX_CONFIG_BYTES, &file.display().to_string())?;
            let root = hook::root_path(&config, &state.bundle).with_context(|| file.display().to_string())?;
            json!({
                "op": "attach", "pid": pid, "name": wanted.name, "root": root, "at": "/dev",
                "devices": wanted.devices, "runtime": true, "container": state.id,
            })
        }
        hook::Stage::Poststop => json!({ "op": "detach", "name": wanted.name, "container": state.id }),
    };
    Client::connect(&global.socket)?
        .call(req, &[])
        .with_context(|| format!("container {} (namespace {})", state.id, wanted.name))?;
    Ok(0)
}

/// `devns hook lxc [--device D]... NAME lxc TYPE`, as LXC runs a hook:
/// at `pre-start` (host root, in the host's namespaces, run by the
/// container's monitor) it tells the daemon to expect the container; at
/// `autodev` (the container's root, in its namespaces, its rootfs mounted
/// and not yet its root) the container joins: its user namespace brought
/// under devns as a runtime's, the view at its `/dev` before LXC fills
/// it; at `start-host` (host root again, `LXC_PID`, just before the
/// container's init runs) what LXC mounted on the old `/dev` since (its
/// devpts, ttys and console) is carried onto the view, or, with no
/// autodev join before, the container is brought in there as a
/// runtime's; at `post-stop` it is let go.
fn lxc(global: &Global, devices: &[String], argv: &[String]) -> Result<i32> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let kind = var("LXC_HOOK_TYPE").or_else(|| argv.get(2).cloned());
    let name = var("LXC_NAME").ok_or_else(|| anyhow!("devns hook lxc runs as an LXC hook: LXC_NAME is not set"))?;
    if !hook::is_name(&name) {
        bail!("LXC_NAME {name:?} is not a namespace name (1 to 64 bytes, no ':')");
    }
    let container = format!("lxc/{name}");
    let req = match kind.as_deref() {
        Some("pre-start") => json!({ "op": "expect", "name": name, "container": container, "devices": devices }),
        Some("autodev") => {
            let root = var("LXC_ROOTFS_MOUNT")
                .ok_or_else(|| anyhow!("container {name}: LXC_ROOTFS_MOUNT is not set at autodev"))?;
            json!({ "op": "join", "name": name, "root": root })
        }
        Some("start-host") => {
            let pid: i32 = var("LXC_PID")
                .and_then(|p| p.parse().ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| anyhow!("container {name}: LXC_PID names no process"))?;
            json!({
                "op": "attach", "pid": pid, "name": name, "at": "/dev", "devices": devices,
                "runtime": true, "container": container,
            })
        }
        Some("post-stop") => json!({ "op": "detach", "name": name, "container": container }),
        other => bail!(
            "devns hook lxc serves lxc.hook.pre-start, autodev, start-host and post-stop, not {} \
             (devns lxc config prints the lines)",
            other.unwrap_or("an unnamed hook")
        ),
    };
    Client::connect(&global.socket)?.call(req, &[]).with_context(|| format!("LXC container {name}"))?;
    Ok(0)
}
