//! A runtime's container under devns (its OCI hooks): the runtime's own
//! device controller made to defer to devns's program once that is
//! attached, and the namespace let go at the container's poststop.
//!
//! The kernel lets a device through only when every controller allows
//! it: the v1 `devices` controller (runc's whitelist on a hybrid host)
//! and every `BPF_CGROUP_DEVICE` program on the cgroup (crun's and runc's
//! own on cgroup2). A runtime writes its rules before its hooks run, from
//! its config's device list, which knows nothing of the devices devns
//! gives the container later (its loop devices): so once devns's program
//! decides, the v1 controller is told to allow everything and the
//! runtime's programs on the container's cgroup are detached. devns's map
//! alone decides from then on; never is there a moment with neither.

use super::{Engine, Role};
use anyhow::{Context, Result, anyhow, bail};
use devns_core::hook::{V1_ALLOW_ALL, v1_allows_all, v1_mount, v1_path};
use devns_core::registry::NsId;
use std::path::{Path, PathBuf};

impl Engine {
    /// Makes the runtime's device rules of `pid`'s cgroups defer to the
    /// program of `id`, which is attached. Nothing when the access layer
    /// is off (the runtime's rules then stay as they are). Again at the
    /// first `execve` of a container attached when its listener came, in
    /// case its runtime wrote rules since.
    pub fn defer_runtime_devices(&mut self, id: NsId, pid: i32) -> Result<()> {
        let Some(a) = self.kept.get(&id).and_then(|k| k.access.as_ref()) else { return Ok(()) };
        let gone = a.detach_others().context("cannot detach the runtime's device program")?;
        if !gone.is_empty() {
            tracing::info!(ns = %id, programs = ?gone, cgroup = %a.cgroup().display(), "detached the runtime's device programs: devns's decides");
        }
        if let Some(dir) = v1_devices_of(pid)? {
            let list = dir.join("devices.list");
            let list = std::fs::read_to_string(&list).with_context(|| format!("cannot read {}", list.display()))?;
            if v1_allows_all(&list) {
                // Nothing to defer (crun on cgroup2 leaves the container in
                // its monitor's v1 cgroup, which allows all).
                return Ok(());
            }
            let host_ns = self.host_ns;
            if let Some((at, p)) = crate::cgroup::procs_below(&dir)?
                .into_iter()
                .find(|(_, p)| crate::host::user_ns_of(*p).is_ok_and(|n| n == host_ns))
            {
                bail!(
                    "the devices cgroup {} of process {pid} also holds process {p} (in {}) of the host's user namespace: its rules stay the runtime's",
                    dir.display(),
                    at.display()
                );
            }
            let file = dir.join("devices.allow");
            std::fs::write(&file, V1_ALLOW_ALL).with_context(|| format!("cannot write {}", file.display()))?;
            tracing::info!(ns = %id, cgroup = %dir.display(), "the runtime's devices cgroup allows all: devns's program decides");
        }
        Ok(())
    }

    /// A runtime's poststop: lets go of the namespace named `name` if a
    /// hook attached it for `container`, and nothing of it is left
    /// running; any other namespace is left alone. Whether it was let go
    /// now (not before, by its last process's end).
    pub fn detach(&mut self, name: &str, container: &str) -> Result<serde_json::Value> {
        if self.role != Role::Daemon {
            bail!("only the daemon detaches namespaces");
        }
        let Some(id) = self.model.by_name(name) else {
            return Ok(serde_json::json!({ "detached": false }));
        };
        let rec = self.model.record(id).ok_or_else(|| anyhow!("namespace {name:?} has no record"))?;
        if rec.container.as_deref() != Some(container) {
            tracing::info!(ns = %id, name, container, "detach: namespace not attached for this container, left alone");
            return Ok(serde_json::json!({ "detached": false }));
        }
        let seen = crate::host::seen(&rec);
        if seen.member_alive || seen.keeper_alive || seen.processes_left {
            bail!("namespace {} still has processes: stop the container first", rec.label());
        }
        tracing::info!(ns = %id, name, container, "container stopped: releasing its devices and view");
        self.let_go(id);
        Ok(serde_json::json!({ "detached": true, "id": id.0 }))
    }
}

/// The v1 `devices` cgroup of `pid` where this host mounts that
/// hierarchy; `None` when it has none (cgroup2 only) or is in its root.
fn v1_devices_of(pid: i32) -> Result<Option<PathBuf>> {
    let file = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {file}"))?;
    let Some(rel) = v1_path(&text, "devices").map(|p| p.trim_start_matches('/')) else { return Ok(None) };
    if rel.is_empty() {
        return Ok(None);
    }
    // Found once: devns's own mountinfo grows with every view it mounts.
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let root = match ROOT.get() {
        Some(r) => r,
        None => {
            let mountinfo = std::fs::read("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
            let found = v1_mount(&mountinfo, "devices").ok_or_else(|| {
                anyhow!("process {pid} is in a v1 devices cgroup, but devns sees no devices hierarchy mounted")
            })?;
            ROOT.get_or_init(|| found)
        }
    };
    let dir = root.join(rel);
    if !Path::new(&dir).is_dir() {
        bail!("the devices cgroup {} of process {pid} is not there", dir.display());
    }
    Ok(Some(dir))
}
