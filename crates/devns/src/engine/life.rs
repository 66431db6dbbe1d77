//! A namespace's life under the engine: provisioned (`devns run`, with or
//! without the daemon), attached (`devns attach`), its watched processes,
//! and its end — one path for every keeper.

use super::kernel::{self, adopt_from_proc, read_maps, uevent_sender};
use super::place::{Place, mount_into_after};
use super::{Attach, Engine, Kept, Member, POLICY_HINT, Role};
use crate::host;
use anyhow::{Context, Result, anyhow, bail};
use devns_core::api::Event;
use devns_core::idmap::IdMap;
use devns_core::model::{Change, Ids};
use devns_core::registry::NsId;
use devns_core::state::Keeper;
use devns_core::subid::BLOCK;
use rustix::fd::OwnedFd;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};
use rustix::process::{Pid, PidfdFlags};
use std::path::PathBuf;

fn clone_tree(fd: &OwnedFd) -> rustix::io::Result<OwnedFd> {
    rustix::mount::open_tree(
        fd,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH,
    )
}

impl Engine {
    /// Makes `id`'s view and keeps its fd; the daemon mounts it at
    /// `views/ID` (so that a restarted daemon finds it again).
    pub(super) fn make_view(&mut self, id: NsId) -> Result<()> {
        let k = self.kept.get(&id).ok_or_else(|| anyhow!("unknown namespace {id}"))?;
        let plan = devns_core::view::plan(&self.model.view_devices(id), &k.uids, &k.gids, self.overflow);
        let view = crate::view::create(&plan).context("cannot create the view")?;
        if let Some(views) = &self.views_dir {
            let path = kernel::view_path(views, id);
            std::fs::create_dir_all(&path)?;
            rustix::mount::move_mount(&view, "", rustix::fs::CWD, &path, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
                .with_context(|| format!("cannot mount the view at {}", path.display()))?;
        }
        self.kept.get_mut(&id).expect("checked").view = Some(view);
        Ok(())
    }

    /// A private `/tmp` for `id` (root's own, as the view, so that its
    /// nodes work), kept for the agent's checks; a clone to hand over.
    fn make_tmp(&mut self, id: NsId) -> Result<OwnedFd> {
        let k = self.kept.get_mut(&id).ok_or_else(|| anyhow!("unknown namespace {id}"))?;
        let root = |m: &IdMap| m.to_host(0).ok_or_else(|| anyhow!("namespace {id} maps no root"));
        let (u, g) = (root(&k.uids)?.to_string(), root(&k.gids)?.to_string());
        let tmp = crate::view::tmpfs(
            &[("mode", "1777"), ("uid", &u), ("gid", &g)],
            rustix::mount::MountAttrFlags::MOUNT_ATTR_NOSUID,
        )
        .context("cannot create /tmp")?;
        let clone = clone_tree(&tmp)?;
        k.tmp = Some(tmp);
        Ok(clone)
    }

    /// A clone of `id`'s view to hand to a container.
    pub fn view_clone(&self, id: NsId) -> Result<OwnedFd> {
        let view =
            self.kept.get(&id).and_then(|n| n.view.as_ref()).ok_or_else(|| anyhow!("namespace {id} has no view"))?;
        clone_tree(view).context("cannot clone the view")
    }

    /// `devns run`: the namespace of the process behind `pidfd` (a fresh
    /// child whose maps are unset, waiting to be told to go on) gets an id
    /// block, its devices, a view, its device policy and a `/tmp`; returns
    /// the ids, a clone of the view and the `/tmp`. Undone on failure.
    pub fn provision(
        &mut self,
        pidfd: OwnedFd,
        name: Option<&str>,
        devices: &[String],
    ) -> Result<(serde_json::Value, Vec<OwnedFd>)> {
        let pid = host::pid_of_pidfd(&pidfd).ok_or_else(|| anyhow!("the process behind the pidfd is gone"))?;
        let nsfd = devns_sys::ns::pidfd_user_ns(&pidfd).context("cannot get the process's user namespace")?;
        let id = NsId(devns_sys::ns::ns_id(&nsfd)?);
        drop(nsfd);
        if id == self.host_ns {
            bail!("process {pid} is in the host's user namespace");
        }
        let devs = devices.iter().map(|d| self.resolve(d)).collect::<Result<Vec<_>>>()?;
        let start_time = host::start_time(pid).ok_or_else(|| anyhow!("process {pid} is gone"))?;
        let child = Keeper { pid, start_time };
        // The daemon watches the process; a stand-alone run is the keeper.
        let (keeper, members) = match self.role {
            Role::Daemon => (None, vec![child]),
            Role::Run(k) => (Some(k), vec![]),
            Role::Look => bail!("this devns command keeps no namespace"),
        };
        let ids = Ids::Allocate { uids: host::subid_ranges("/etc/subuid"), gids: host::subid_ranges("/etc/subgid") };
        let name = name.map(str::to_owned);
        // Recorded first (under the lock, against every keeper's records):
        // whatever happens from here, the next devns command finds it.
        self.locked(|e| e.commit(Change::Claim { id, name, keeper, members, devices: devs, ids, container: None }))?;
        let ns = self.model.namespace(id).expect("claimed");
        let (ub, gb) = (ns.uid_base.expect("allocated"), ns.gid_base.expect("allocated"));
        let (uids, gids) = (IdMap::single(ub, BLOCK), IdMap::single(gb, BLOCK));
        let result = (|| -> Result<Vec<OwnedFd>> {
            crate::container::write_maps(pid, &uids, &gids)?;
            let uevents = uevent_sender(pid);
            let members = match self.role {
                Role::Daemon => vec![Member { keeper: child, pidfd, watched: false }],
                Role::Run(_) | Role::Look => vec![],
            };
            self.kept
                .insert(id, Kept { view: None, tmp: None, uids, gids, members, uevents, access: None, covered: None });
            self.make_view(id)?;
            // Its cgroup, filled and attached, with the process moved in
            // before the process is told to go on.
            self.start_policy(id, pid, true).context(POLICY_HINT)?;
            self.save(&[id])?;
            let tmp = self.make_tmp(id)?;
            Ok(vec![self.view_clone(id)?, tmp])
        })();
        match result {
            Ok(fds) => {
                self.emit(Event::ns("ns-new", id));
                Ok((serde_json::json!({ "id": id.0, "uid_base": ub, "gid_base": gb }), fds))
            }
            Err(e) => {
                self.let_go(id);
                Err(e)
            }
        }
    }

    /// `devns attach` (and a runtime's createRuntime hook): bring `pid`'s
    /// user namespace under devns and mount its view as `spec` says.
    pub fn attach(&mut self, spec: &Attach<'_>) -> Result<serde_json::Value> {
        let (pid, at) = (spec.pid, spec.at);
        if let Some(n) = spec.name.filter(|n| !devns_core::hook::is_name(n)) {
            bail!("{n:?} is not a namespace name (1 to 64 bytes, no ':')");
        }
        let p = Pid::from_raw(pid).ok_or_else(|| anyhow!("invalid pid {pid}"))?;
        let pidfd = rustix::process::pidfd_open(p, PidfdFlags::empty()).with_context(|| format!("no process {pid}"))?;
        let nsfd = devns_sys::ns::pidfd_user_ns(&pidfd).context("cannot get the process's user namespace")?;
        let id = NsId(devns_sys::ns::ns_id(&nsfd)?);
        if let Some(want) = spec.ns.filter(|w| *w != id) {
            bail!("process {pid} is in user namespace {id}, not {want}: not attached");
        }
        if id == self.host_ns {
            bail!("process {pid} is in the host's user namespace; devns attaches user-namespaced processes");
        }
        // The view is mounted in the process's mount namespace: were that
        // devns's own, it would cover this host's own `at` (its `/dev`).
        let mnt_of = |fd: &rustix::fd::OwnedFd| devns_sys::ns::pidfd_mnt_ns(fd).and_then(devns_sys::ns::ns_id);
        let ours = rustix::process::pidfd_open(rustix::process::getpid(), PidfdFlags::empty())
            .and_then(|me| mnt_of(&me))
            .context("cannot get devns's own mount namespace")?;
        if mnt_of(&pidfd).context("cannot get the process's mount namespace")? == ours {
            bail!(
                "process {pid} shares devns's own mount namespace, where its view at {at} would cover the host's; \
                 attach a process in a mount namespace of its own"
            );
        }
        let start_time = host::start_time(pid).ok_or_else(|| anyhow!("process {pid} is gone"))?;
        let keeper = Keeper { pid, start_time };
        let new = !self.kept.contains_key(&id);
        if !new && (spec.runtime || !spec.devices.is_empty()) {
            let same = spec.container.is_some()
                && self.model.record(id).and_then(|r| r.container).as_deref() == spec.container;
            if !same {
                bail!("the user namespace of process {pid} is already under devns ({id})");
            }
            // An LXC container's start-host hook after its autodev join:
            // what LXC mounted on the covered /dev since goes onto the view.
            if let Some(covered) = self.kept.get_mut(&id).and_then(|k| k.covered.take()) {
                let view = self.view_clone(id)?;
                let view_dev = rustix::fs::fstat(&view)?.st_dev;
                super::place::carry_covered(pid, &covered, view_dev, at)?;
                // LXC's own device rules, written since the join, defer too.
                self.defer_runtime_devices(id, pid)?;
            }
            // Another hook of the same container (a runtime runs one per
            // CDI device): its devices join the namespace, nothing else.
            for d in spec.devices {
                let dev = self.resolve(d)?;
                self.locked(|e| e.commit(Change::Assign { dev, to: id }))
                    .map_err(|e| anyhow!("cannot give {d} to {id}: {e}"))?;
            }
            return Ok(serde_json::json!({ "id": id.0 }));
        }
        if new {
            let devices = spec.devices.iter().map(|d| self.resolve(d)).collect::<Result<Vec<_>>>()?;
            let (uids, gids) = read_maps(pid)?;
            let claim = Change::Claim {
                id,
                name: spec.name.map(str::to_owned),
                keeper: None,
                members: vec![keeper],
                devices,
                ids: Ids::Own,
                container: spec.container.map(str::to_owned),
            };
            self.locked(|e| e.commit(claim))?;
            let uevents = uevent_sender(pid);
            self.kept.insert(
                id,
                Kept { view: None, tmp: None, uids, gids, members: vec![], uevents, access: None, covered: None },
            );
            if let Err(e) = self.make_view(id) {
                self.let_go(id);
                return Err(e);
            }
        } else if let (Some(h), Some(a)) = (&self.cgroups, self.kept.get(&id).and_then(|n| n.access.as_ref())) {
            let theirs = h.of(&pid.to_string())?;
            if theirs != a.cgroup() {
                bail!(
                    "process {pid} is in cgroup {}, but its namespace's device policy is in {}",
                    theirs.display(),
                    a.cgroup().display()
                );
            }
        }
        let k = self.kept.get_mut(&id).expect("present");
        if !k.members.iter().any(|m| m.keeper == keeper) {
            k.members.push(Member { keeper, pidfd, watched: false });
        }
        self.sync_members(id);
        let view = self.view_clone(id)?;
        let k = &self.kept[&id];
        let udev = (self.cfg.udev_events && k.uevents.is_some())
            .then(|| (k.uids.carry(0, self.overflow.0), k.gids.carry(0, self.overflow.1)));
        let place = Place { root: spec.root, at, carry: spec.runtime, udev, keep_covered: spec.keep_covered };
        // The policy is in force before the view is mounted (its place
        // made ready beside it); a runtime's own device controller defers
        // to devns's program only once that decides, and the view is in
        // place.
        let gate = || if new { self.start_policy(id, pid, false) } else { Ok(()) };
        let placed = mount_into_after(pid, &view, &place, gate).and_then(|covered| {
            if spec.runtime {
                self.defer_runtime_devices(id, pid)?;
            }
            Ok(covered)
        });
        match placed {
            Ok(covered) => {
                if let Some(k) = self.kept.get_mut(&id) {
                    k.covered = covered;
                }
            }
            Err(e) => {
                if new {
                    self.let_go(id);
                }
                return Err(e);
            }
        }
        self.save(&[id])?;
        if new {
            self.emit(Event::ns("ns-new", id));
        }
        Ok(serde_json::json!({ "id": id.0 }))
    }

    /// Records the watched members of `id` as its record's.
    fn sync_members(&mut self, id: NsId) {
        let members: Vec<Keeper> =
            self.kept.get(&id).map(|n| n.members.iter().map(|m| m.keeper).collect()).unwrap_or_default();
        if self.model.namespace(id).is_some_and(|n| n.members != members) {
            // Saved by the caller.
            let _ = self.model.apply(Change::Members { ns: id, members });
        }
    }

    /// Lets go of a namespace: its loop devices, view and policy undone,
    /// devices back to host, record gone. Every step runs even when one fails.
    pub fn let_go(&mut self, id: NsId) {
        self.observe(Change::Death { ns: id }, None);
        // A claim that never got as far as the model's record still has kernel
        // objects kept.
        if let Some(k) = self.kept.remove(&id) {
            self.end_kept(id, k, None);
        }
    }

    /// Undoes what a gone namespace's record holds on the host: its loop
    /// devices, its view, its device policy.
    pub(super) fn free(&mut self, rec: devns_core::state::NsRecord) {
        let Some(id) = rec.id else { return };
        // Its FUSE drivers close their devices first.
        crate::agent::fuse::end_namespace(id);
        self.clean_loops(rec.loops.clone());
        match self.kept.remove(&id) {
            Some(k) => self.end_kept(id, k, rec.cgroup.as_ref()),
            None => self.end_policy(id, None, rec.cgroup.as_ref()),
        }
    }

    fn end_kept(&mut self, id: NsId, k: Kept, rec: Option<&devns_core::state::CgroupRecord>) {
        if let Some(views) = &self.views_dir {
            kernel::unmount_view(views, id);
        }
        self.end_policy(id, k.access, rec);
    }

    /// A watched process of `id` ended: another of the namespace's is
    /// watched, or the namespace is let go. Whether it is still kept.
    pub fn member_exited(&mut self, id: NsId, pid: i32) -> bool {
        let Some(k) = self.kept.get_mut(&id) else { return false };
        k.members.retain(|m| m.keeper.pid != pid);
        if k.members.is_empty() {
            let cgroup = self.model.namespace(id).and_then(|n| n.cgroup.as_ref()).map(|c| PathBuf::from(&c.path));
            let adopted = adopt_from_proc(id, cgroup.as_deref(), &[pid]);
            if adopted.is_empty() {
                tracing::info!(ns = %id, "last process gone: releasing its devices and view");
                self.let_go(id);
                return false;
            }
            tracing::debug!(ns = %id, pid = adopted[0].keeper.pid, "watching another process of the namespace");
            self.kept.get_mut(&id).expect("present").members = adopted;
        }
        self.sync_members(id);
        let _ = self.save(&[id]);
        true
    }

    /// The end of a stand-alone run, once its container's init is reaped:
    /// what is left in its cgroup is killed and the policy ended; then its
    /// ids and devices are freed — only once nothing of its namespace is
    /// left (a process that joined it from outside survives the pid
    /// namespace): what is left is killed first, and if something survives
    /// even that, the record stays for the next devns command.
    pub fn end_run(&mut self) {
        let Role::Run(me) = self.role else { return };
        let Some(id) = self.model.by_keeper(me) else { return };
        if let Some(p) = self.kept.get_mut(&id).and_then(|k| k.access.take()) {
            let path = p.cgroup().to_owned();
            if let Err(e) = crate::cgroup::kill(&path) {
                tracing::warn!(error = %e, "cannot kill what is left in the run's cgroup");
            }
            if let Some(busy) = crate::bpf::log_close(path.display(), p.close(super::access::RUN_PATIENCE)) {
                tracing::warn!(cgroup = %busy.display(), "the run's cgroup still has processes: left (its map is empty)");
            }
        }
        let Some(rec) = self.model.record(id) else { return };
        // This run is over: its keeper no longer counts.
        let over = devns_core::state::NsRecord { keeper: None, members: vec![], ..rec.clone() };
        if host::seen(&over).processes_left && !host::kill_leftovers(&rec) {
            return;
        }
        self.let_go(id);
    }
}
