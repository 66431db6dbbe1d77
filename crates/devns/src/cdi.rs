//! devns's CDI spec on disk (`devns_core::cdi` makes it): written whole
//! (a temporary file renamed over it, 0644), and kept true by the daemon
//! as devices come and go once `devns cdi generate` has written it.

use anyhow::{Context, Result, anyhow};
use devns_core::cdi::{self, Hook};
use std::path::Path;

/// The devices a container may be given through CDI: every device devns
/// knows but the global ones (in every view already) and loop-control
/// (the view's own stand-in is it; CDI's `loop` asks for that).
pub fn assignable<'a>(devices: impl Iterator<Item = (&'a str, bool)>) -> Vec<&'a str> {
    devices.filter(|(name, global)| !global && *name != "loop-control").map(|(n, _)| n).collect()
}

/// Writes the spec of `kind` for `devices` at `path`, its hooks running
/// this devns with `--socket socket` when that is not the default.
pub fn write(path: &Path, kind: &str, devices: &[&str], socket: &Path) -> Result<()> {
    if !cdi::is_kind(kind) {
        return Err(anyhow!("{kind:?} is not a CDI kind (vendor/class, such as {})", cdi::KIND));
    }
    let exe = std::env::current_exe().context("cannot tell devns's own path for the spec's hooks")?;
    let exe = exe.to_str().ok_or_else(|| anyhow!("devns's path {} is not UTF-8", exe.display()))?;
    let global: Vec<String> = if socket == Path::new(devns_core::layout::SOCKET) {
        vec![]
    } else {
        vec!["--socket".into(), socket.to_string_lossy().into_owned()]
    };
    let spec = cdi::spec(kind, devices, &Hook { path: exe, global: &global });
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path.file_name().ok_or_else(|| anyhow!("{} names no file", path.display()))?;
    // Of this process alone: the daemon and a `devns cdi generate` may
    // write at once, and each file renamed over it is whole.
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let text = serde_json::to_string_pretty(&spec)? + "\n";
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot put the spec at {}", path.display()))
}

/// The kind of devns's spec at `path`, when one is there (written by
/// `devns cdi generate`): what the daemon keeps up to date.
pub fn written_kind(path: &Path) -> Option<String> {
    let text = std::fs::read(path).ok().filter(|t| t.len() <= 4 << 20)?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let kind = v["kind"].as_str()?;
    let ours = v["devices"].as_array()?.iter().any(|d| d["name"] == cdi::LOOP);
    (ours && cdi::is_kind(kind)).then(|| kind.to_owned())
}
