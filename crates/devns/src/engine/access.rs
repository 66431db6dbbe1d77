//! The engine's side of the access layer: each namespace's device policy
//! made (a cgroup of its own for `devns run`, the process's own cgroup for
//! `attach`), found again at a restart, and ended at its death.

use super::{Engine, Role};
use crate::bpf::{AccessPolicy, close_recorded, log_close};
use anyhow::{Context, Result, bail};
use devns_core::model::{Change, Scope};
use devns_core::registry::NsId;
use devns_core::state::CgroupRecord;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the daemon waits for a dead namespace's cgroup, at once and in
/// all (retried from its event loop meanwhile).
const PATIENCE_NOW: Duration = Duration::from_millis(20);
const PATIENCE: Duration = Duration::from_secs(10);
/// How long the end of a stand-alone run waits for its cgroup to empty
/// (it has no loop to try again from).
pub(super) const RUN_PATIENCE: Duration = Duration::from_secs(2);

impl Engine {
    fn set_cgroup(&mut self, id: NsId, rec: Option<CgroupRecord>) {
        // Saved by the caller; a namespace gone meanwhile has nothing to keep.
        let _ = self.model.apply(Change::Cgroup { ns: id, rec });
    }

    /// Gives namespace `id` (process `pid`, not yet running anything of
    /// its own) a device policy: in a new cgroup below the daemon's
    /// (`create`), or in the cgroup `pid` is in. The map is filled from the
    /// view's plan and the program attached before `pid` is moved in (or,
    /// in its own cgroup, before the call returns). Recorded in the state.
    pub(super) fn start_policy(&mut self, id: NsId, pid: i32, create: bool) -> Result<()> {
        let Some(h) = self.cgroups.clone() else { return Ok(()) };
        let (path, created) = if create {
            (h.for_namespace(id)?, true)
        } else {
            let path = h.of(&pid.to_string())?;
            let own = h.of("self")?;
            if own.starts_with(&path) {
                bail!(
                    "process {pid} is in cgroup {}, which holds devns itself: its device policy would apply to the host; run it in a cgroup of its own, or set device_policy = false",
                    path.display()
                );
            }
            // Every process of a cgroup and of the cgroups below it is
            // under its programs: one of the host's own would be policed
            // by a container's map.
            let host_ns = self.host_ns;
            let of_host = crate::cgroup::procs_below(&path)?
                .into_iter()
                .find(|(_, p)| crate::host::user_ns_of(*p).is_ok_and(|n| n == host_ns));
            if let Some((at, p)) = of_host {
                let below = if at == path { String::new() } else { format!(" (in {} below it)", at.display()) };
                bail!(
                    "cgroup {} of process {pid} also holds process {p}{below} of the host's user namespace: its device policy would apply to it; run the container in a cgroup of its own, or set device_policy = false",
                    path.display()
                );
            }
            (path, false)
        };
        let rec = CgroupRecord { path: path.to_string_lossy().into_owned(), created, prog_id: None };
        // Recorded first: whatever happens from here, a restart finds it.
        self.set_cgroup(id, Some(rec));
        self.save(&[id])?;
        if created {
            crate::cgroup::create(&path)?;
        }
        let prepared = match self.spare.take() {
            Some(p) => p,
            None => crate::bpf::Prepared::new(&path)?,
        };
        let policy = AccessPolicy::with(&path, created, prepared)?;
        self.kept.get_mut(&id).context("namespace vanished")?.access = Some(policy);
        self.reconcile(id, &Scope::All)?;
        let ns = self.kept.get_mut(&id).context("namespace vanished")?;
        let a = ns.access.as_mut().expect("just set");
        a.attach()?;
        let rec = a.record();
        if created {
            crate::cgroup::move_pid(&path, pid)?;
        }
        self.set_cgroup(id, Some(rec));
        Ok(())
    }

    /// The policy of a live namespace `id` after a restart: found again
    /// in its cgroup (the same map, now shadowed from the kernel's
    /// contents), or, when it is not there, a new one attached to it.
    pub(super) fn recover_policy(&mut self, id: NsId, rec: &CgroupRecord) -> Option<AccessPolicy> {
        if self.cgroups.is_none() {
            // Turned off since: a map nobody updates any more must not
            // go on deciding. The cgroup stays until the namespace dies.
            match AccessPolicy::recover(rec).and_then(AccessPolicy::detach) {
                Ok(()) => tracing::warn!(ns = %id, "device_policy is off: devns's device program detached"),
                Err(e) => tracing::error!(ns = %id, error = %e, "device_policy is off, but its program stays"),
            }
            return None;
        }
        match AccessPolicy::recover(rec) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(ns = %id, error = %e, "device policy not found again: attaching a new one");
                let path = Path::new(&rec.path);
                let fresh = AccessPolicy::new(path, rec.created).and_then(|mut p| p.attach().map(|()| p));
                match fresh {
                    Ok(p) => {
                        self.set_cgroup(id, Some(p.record()));
                        Some(p)
                    }
                    Err(e) => {
                        tracing::error!(ns = %id, error = %e, "namespace has no device policy");
                        None
                    }
                }
            }
        }
    }

    /// Ends `id`'s policy (a namespace that is gone): the live one, or
    /// what `rec` names when the daemon holds none.
    pub(super) fn end_policy(&mut self, id: NsId, live: Option<AccessPolicy>, rec: Option<&CgroupRecord>) {
        let patience = if self.role == Role::Daemon { PATIENCE_NOW } else { RUN_PATIENCE };
        let result = match (live, rec) {
            (Some(p), _) => p.close(patience),
            (None, Some(rec)) => close_recorded(rec, patience),
            (None, None) => return,
        };
        let Some(busy) = log_close(id, result) else { return };
        if self.role == Role::Daemon {
            tracing::debug!(ns = %id, cgroup = %busy.display(), "cgroup still has processes; retrying");
            self.busy_cgroups.push((busy, Instant::now() + PATIENCE));
        } else {
            tracing::warn!(cgroup = %busy.display(), "a dead namespace's cgroup still has processes: left (its map is empty: they may open no device)");
        }
    }

    /// Whether [`Engine::prepare`] has something to do.
    pub fn wants_spare(&self) -> bool {
        self.spare.is_none() && self.keep_spare && self.cgroups.is_some() && self.role == Role::Daemon
    }

    /// Loads a device map and program ahead for the next namespace, when
    /// the daemon has none spare: called when nothing waits, so that a
    /// container's start does not wait for them.
    pub fn prepare(&mut self) {
        if !self.wants_spare() {
            return;
        }
        match crate::bpf::Prepared::new(Path::new("(spare)")) {
            Ok(p) => self.spare = Some(p),
            Err(e) => {
                tracing::debug!(error = %e, "no device program loaded ahead");
                self.keep_spare = false;
            }
        }
    }

    pub(super) fn retry_busy_cgroups(&mut self) {
        if self.busy_cgroups.is_empty() {
            return;
        }
        let now = Instant::now();
        self.busy_cgroups.retain(|(path, deadline)| match crate::cgroup::try_remove(path) {
            Ok(true) => false,
            Ok(false) if *deadline <= now => {
                tracing::warn!(cgroup = %path.display(), "a dead namespace's cgroup still has processes: left (its map is empty: they may open no device)");
                false
            }
            Ok(false) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot remove a dead namespace's cgroup");
                false
            }
        });
    }
}
