//! The runtime wrapper's decisions (`devns oci runtime`, `devns-runtime`):
//! which OCI command a runtime's command line runs and with which bundle,
//! and the edit of a bundle's `config.json` for a container that asks for
//! devns. Pure: arguments and bytes in, bytes out; the shell reads the
//! file, writes it back atomically and execs the real runtime.

use crate::ociprofile::{self, ProfileError};
use serde_json::{Map, Value, json};
use std::ffi::{OsStr, OsString};

/// The annotation by which a container asks for devns; only the exact
/// value `true` counts (`TRUE`, `true `, `1`: devns never touches it).
pub const ENABLE: &str = "devns.io/enable";
/// The devices the namespace is given (`devns run --dev` syntax).
pub const DEVICES: &str = "devns.io/devices";
/// Largest config.json read: runtimes set no bound, Kubernetes bounds a
/// pod's annotations to 256 KiB; beyond this devns cannot tell whether
/// a container asks for it, and refuses to start it.
pub const MAX_CONFIG_BYTES: usize = 16 * 1024 * 1024;

/// runc's and crun's global flags that take a value (as `--flag value`,
/// `--flag=value`, and Go's `-flag value`). Others are taken as booleans.
const GLOBAL_VALUED: [&str; 7] = ["root", "log", "log-format", "log-level", "rootless", "criu", "cgroup-manager"];
/// `create`'s and `run`'s flags that take a value, besides the bundle.
const CREATE_VALUED: [&str; 4] = ["console-socket", "pid-file", "preserve-fds", "pidfd-socket"];

/// What a runtime command line runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invocation<'a> {
    /// `create` or `run`, of the bundle given (`None`: the working directory).
    Create { bundle: Option<&'a OsStr> },
    /// Anything else, passed through untouched.
    Other,
}

/// A flag's name without its dashes and the value glued to it by `=`;
/// `None` for a non-flag.
fn flag(arg: &OsStr) -> Option<(&str, bool)> {
    let s = arg.to_str()?;
    let name = s.strip_prefix("--").or_else(|| s.strip_prefix('-')).filter(|n| !n.is_empty())?;
    Some(match name.split_once('=') {
        Some((n, _)) => (n, true),
        None => (name, false),
    })
}

/// Finds the OCI command among the runtime's global flags, and for
/// `create` and `run` the bundle (`--bundle`/`-b`, the last one given:
/// flags may follow the container id, runc and crun both permute).
pub fn invocation(args: &[OsString]) -> Invocation<'_> {
    let mut i = 0;
    let command = loop {
        let Some(a) = args.get(i) else { return Invocation::Other };
        i += 1;
        if a == "--" {
            i += 1;
            break args.get(i - 1);
        }
        match flag(a) {
            Some((n, glued)) => {
                if GLOBAL_VALUED.contains(&n) && !glued {
                    i += 1;
                }
            }
            None => break Some(a),
        }
    };
    if !matches!(command.and_then(|c| c.to_str()), Some("create" | "run")) {
        return Invocation::Other;
    }
    let mut bundle = None;
    while let Some(a) = args.get(i) {
        i += 1;
        if a == "--" {
            break;
        }
        let Some((n, glued)) = flag(a) else { continue };
        if n == "b" || n == "bundle" {
            bundle = if glued {
                a.to_str().and_then(|s| s.split_once('=')).map(|(_, v)| OsStr::new(v))
            } else {
                args.get(i).map(OsString::as_os_str)
            };
            i += usize::from(!glued);
        } else if CREATE_VALUED.contains(&n) && !glued {
            i += 1;
        }
    }
    Invocation::Create { bundle }
}

/// What the edit puts in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edit<'a> {
    /// The devns binary the hooks run (its real path).
    pub devns: &'a str,
    /// The API socket the hooks talk to, the state directory and the
    /// config file: what devns is told to use, passed on to the hooks
    /// (as the `DEVNS_*` variables, which every devns command reads).
    pub socket: &'a str,
    pub state_dir: &'a str,
    pub config: &'a str,
    /// The seccomp agent socket (`listenerPath`).
    pub listener: &'a str,
    /// Whether devns's device program decides (the config's
    /// `device_policy`): only then is the runtime's own device list opened.
    pub device_policy: bool,
    /// Every container asks, whatever its annotations: for stacks that
    /// cannot set one (Docker 20.10), where choosing the runtime is the ask.
    /// The edit then sets `devns.io/enable=true` (the hooks read it).
    pub all: bool,
}

impl Edit<'static> {
    /// The edit for devns installed in `/usr/bin` with the default layout.
    pub const DEFAULT: Edit<'static> = Edit {
        devns: "/usr/bin/devns",
        socket: crate::layout::SOCKET,
        state_dir: crate::layout::STATE_DIR,
        config: "/etc/devns/config.toml",
        listener: "/run/devns/seccomp.sock",
        device_policy: true,
        all: false,
    };
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("config.json too large: {0} bytes (at most {MAX_CONFIG_BYTES})")]
    TooLarge(usize),
    #[error("config.json: {0} is not an object")]
    NotObject(&'static str),
    #[error("config.json: a bad linux.devices entry {0}")]
    Device(String),
    #[error("config.json: linux.seccomp: {0}")]
    Seccomp(#[from] ProfileError),
}

/// Whether `config` asks for devns.
pub fn asks_for_devns(config: &Value) -> bool {
    config.get("annotations").and_then(|a| a.get(ENABLE)).and_then(Value::as_str) == Some("true")
}

/// The edited config.json, or `None` when the container does not ask for
/// devns (then the file stays as it is, byte for byte). A file that is no
/// JSON object cannot ask: the runtime refuses it itself (also with
/// [`Edit::all`]).
pub fn edit(bytes: &[u8], e: &Edit) -> Result<Option<Vec<u8>>, EditError> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(EditError::TooLarge(bytes.len()));
    }
    let Ok(mut config) = serde_json::from_slice::<Value>(bytes) else { return Ok(None) };
    if !config.is_object() || !(e.all || asks_for_devns(&config)) {
        return Ok(None);
    }
    add_hook(object(&mut config, "hooks")?, e);
    let linux = object(&mut config, "linux")?;
    let base = linux.remove("seccomp").filter(|s| !s.is_null());
    linux.insert("seccomp".into(), ociprofile::build(base, e.listener, None)?);
    let moved = take_devices(linux)?;
    if e.device_policy {
        // The runtime's own device rules (runc's v1 whitelist, crun's BPF
        // program) would refuse what devns assigns while the container
        // runs: allow all there and let devns's program decide. The
        // daemon attaches it at the container's first execve (trapped by
        // the profile), before any of the container's code runs, and
        // fails that execve when it cannot.
        let resources = object_in(linux, "resources")?;
        resources.insert("devices".into(), json!([{ "allow": true, "access": "rwm" }]));
    }
    if e.all {
        // Choosing the runtime was the ask: written down, for the hooks
        // serve a container by its state's annotations (taken from here).
        object(&mut config, "annotations")?.insert(ENABLE.into(), "true".into());
    }
    if !moved.is_empty() {
        let annotations = object(&mut config, "annotations")?;
        let mut list: Vec<String> = match annotations.get(DEVICES).and_then(Value::as_str) {
            Some(d) if !d.trim().is_empty() => d.split(',').map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        list.extend(moved.into_iter().filter(|d| !list.contains(d)).collect::<Vec<_>>());
        annotations.insert(DEVICES.into(), list.join(",").into());
    }
    Ok(Some(serde_json::to_vec(&config).expect("a Value serializes")))
}

fn object<'v>(config: &'v mut Value, key: &'static str) -> Result<&'v mut Map<String, Value>, EditError> {
    let o = config.as_object_mut().ok_or(EditError::NotObject("the file"))?;
    object_in(o, key)
}

fn object_in<'v>(o: &'v mut Map<String, Value>, key: &'static str) -> Result<&'v mut Map<String, Value>, EditError> {
    let v = o.entry(key).or_insert_with(|| json!({}));
    if v.is_null() {
        *v = json!({});
    }
    v.as_object_mut().ok_or(EditError::NotObject(key))
}

/// The poststop hook (`devns hook poststop`), unless there already: the
/// container is attached at its first execve, by the profile's listener,
/// with no createRuntime hook to run (and to wait for) at its start.
fn add_hook(hooks: &mut Map<String, Value>, e: &Edit) {
    let hook = json!({
        "path": e.devns,
        "args": ["devns", "hook", "poststop"],
        "env": [format!("DEVNS_SOCKET={}", e.socket), format!("DEVNS_STATE_DIR={}", e.state_dir), format!("DEVNS_CONFIG={}", e.config)],
    });
    let list = hooks.entry("poststop").or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    let list = list.as_array_mut().expect("an array");
    if !list.contains(&hook) {
        list.push(hook);
    }
}

/// Removes the `linux.devices` entries below `/dev`, which the view
/// replaces (the runtime would bind the host's node there in a user
/// namespace, under the view), and returns them as device specs for
/// [`DEVICES`]: the container gets them from devns instead. FIFOs go
/// without a spec. Entries elsewhere stay.
fn take_devices(linux: &mut Map<String, Value>) -> Result<Vec<String>, EditError> {
    let Some(devices) = linux.get_mut("devices").filter(|d| !d.is_null()) else { return Ok(Vec::new()) };
    let Some(list) = devices.as_array_mut() else { return Err(EditError::NotObject("linux.devices (an array)")) };
    let mut moved = Vec::new();
    let mut kept = Vec::new();
    for (i, d) in list.drain(..).enumerate() {
        let bad = |why: &str| EditError::Device(format!("[{i}]: {why}"));
        let path = d.get("path").and_then(Value::as_str).ok_or_else(|| bad("no path"))?;
        if !path.starts_with("/dev/") {
            kept.push(d);
            continue;
        }
        let num = |k| d.get(k).and_then(Value::as_u64).filter(|n| *n <= u64::from(u32::MAX));
        let spec = match (d.get("type").and_then(Value::as_str), num("major"), num("minor")) {
            (Some("c" | "u"), Some(ma), Some(mi)) => Some(format!("c:{ma}:{mi}")),
            (Some("b"), Some(ma), Some(mi)) => Some(format!("b:{ma}:{mi}")),
            (Some("p"), _, _) => None,
            _ => return Err(bad("a type or numbers not of a device")),
        };
        moved.extend(spec);
    }
    *list = kept;
    Ok(moved)
}

#[cfg(test)]
mod tests;
