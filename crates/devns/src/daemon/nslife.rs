//! Namespaces' lives under the daemon: provisioning (`devns run`),
//! attaching, watching members, and letting go when the last one is gone.

use super::{Daemon, Member, Ns};
use crate::host;
use anyhow::{Context, Result, anyhow, bail};
use devns_core::api::Event;
use devns_core::idmap::IdMap;
use devns_core::registry::NsId;
use devns_core::state::{Claim, Keeper};
use devns_core::subid::BLOCK;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::mount::{MountPropagationFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags};
use rustix::process::{Pid, PidfdFlags};
use std::path::{Path, PathBuf};

/// `STATE_DIR/views`, a private mount of its own so that views mounted there
/// propagate nowhere.
pub fn prepare_views_dir(state_dir: &Path) -> Result<PathBuf> {
    let dir = state_dir.join("views");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let canon = std::fs::canonicalize(&dir)?;
    let shown = canon.to_string_lossy();
    if !mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(&*shown)) {
        rustix::mount::mount_bind(&canon, &canon).with_context(|| format!("cannot bind {}", canon.display()))?;
    }
    rustix::mount::mount_change(&canon, MountPropagationFlags::PRIVATE)
        .with_context(|| format!("cannot make {} private", canon.display()))?;
    Ok(canon)
}

/// A pidfd for `k` if it is still that very process.
fn reopen(k: &Keeper) -> Option<Member> {
    let pidfd = rustix::process::pidfd_open(Pid::from_raw(k.pid)?, PidfdFlags::empty()).ok()?;
    // Checked after opening: the pidfd now pins the process we checked.
    host::keeper_alive(k).then(|| Member { keeper: *k, pidfd, watched: false })
}

pub(super) fn reopen_members(ks: &[Keeper]) -> Vec<Member> {
    ks.iter().filter_map(reopen).collect()
}

/// A process of namespace `id` or of one nested in it found in /proc
/// (other than `skip`), else one left in its recorded `cgroup` (or below
/// it), to watch: a process that moved into a nested user namespace keeps
/// the view and the devices, and one in the cgroup is under its policy, so
/// either keeps the namespace.
pub(super) fn adopt_from_proc(id: NsId, cgroup: Option<&Path>, skip: &[i32]) -> Vec<Member> {
    let pinned = |pid: i32| {
        let start_time = host::start_time(pid)?;
        reopen(&Keeper { pid, start_time })
    };
    for pid in host::members_of(id).filter(|p| !skip.contains(p)) {
        // Asked again of the pidfd: the pid may name another process by now.
        if let Some(m) = pinned(pid).filter(|m| host::pidfd_within(&m.pidfd, id)) {
            return vec![m];
        }
    }
    let Some(cg) = cgroup else { return vec![] };
    for pid in crate::cgroup::procs_tree(cg).into_iter().filter(|p| !skip.contains(p)) {
        // Listed again once the pidfd pins it.
        if let Some(m) = pinned(pid).filter(|_| crate::cgroup::procs_tree(cg).contains(&pid)) {
            return vec![m];
        }
    }
    vec![]
}

pub(super) fn read_maps(pid: i32) -> Result<(IdMap, IdMap)> {
    let read = |f: &str| -> Result<IdMap> {
        let path = format!("/proc/{pid}/{f}");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        IdMap::parse(&text).with_context(|| format!("bad {path}"))
    };
    Ok((read("uid_map")?, read("gid_map")?))
}

/// A `NETLINK_KOBJECT_UEVENT` socket in the network namespace of `pid`, to
/// send that namespace its devices' events; `None` when it is the host's
/// (the kernel already delivers there) or cannot be had. Made by entering
/// the namespace for the one `socket` call and coming back: no helper.
pub(super) fn uevent_sender(pid: i32) -> Option<OwnedFd> {
    use devns_sys::procstate::{InNamespace, Namespace};
    use rustix::net::{AddressFamily, SocketFlags, SocketType, netlink};
    let theirs =
        rustix::fs::open(format!("/proc/{pid}/ns/net"), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let (t, o) = (rustix::fs::fstat(&theirs).ok()?, rustix::fs::stat("/proc/thread-self/ns/net").ok()?);
    if (t.st_dev, t.st_ino) == (o.st_dev, o.st_ino) {
        return None;
    }
    let _in_theirs = InNamespace::enter(theirs.as_fd(), Namespace::Network).ok()?;
    rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        Some(netlink::KOBJECT_UEVENT),
    )
    .ok()
}

fn view_path(views: &Path, id: NsId) -> PathBuf {
    views.join(id.0.to_string())
}

/// The view mounted at `views/ID`, if one is.
pub(super) fn open_mounted_view(views: &Path, id: NsId) -> Option<OwnedFd> {
    let path = view_path(views, id);
    let fd = rustix::fs::open(&path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let (inner, outer) = (rustix::fs::fstat(&fd).ok()?, rustix::fs::stat(views).ok()?);
    (inner.st_dev != outer.st_dev).then_some(fd)
}

fn unmount_view(views: &Path, id: NsId) {
    let path = view_path(views, id);
    match rustix::mount::unmount(&path, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
        Err(e) => tracing::warn!(ns = %id, error = %e, "cannot unmount the view"),
    }
    let _ = std::fs::remove_dir(&path);
}

/// Unmounts views of namespaces the state no longer knows.
pub(super) fn unmount_orphan_views(views: &Path, live: &[NsId]) {
    let Ok(dir) = std::fs::read_dir(views) else { return };
    for e in dir.flatten() {
        if let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()).map(NsId)
            && !live.contains(&id)
        {
            unmount_view(views, id);
        }
    }
}

/// Mounts a new bind of `view` at `at` (inside the process's root) in the
/// mount namespace of `pid`, from a short-lived child: `setns` changes the
/// whole process, and the daemon must stay where it is.
fn mount_into(pid: i32, view: &OwnedFd, at: &str) -> Result<()> {
    let root = rustix::fs::open(
        format!("/proc/{pid}/root"),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open the root of process {pid}"))?;
    let mntns = rustix::fs::open(format!("/proc/{pid}/ns/mnt"), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .with_context(|| format!("cannot open the mount namespace of process {pid}"))?;
    let tree = rustix::mount::open_tree(
        view,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .context("cannot clone the view")?;
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // SAFETY: the daemon is single-threaded; the child only makes syscalls
    // and exits.
    match unsafe { devns_sys::process::fork_into(0) }? {
        devns_sys::process::Forked::Child => {
            drop(r);
            let res = (|| -> rustix::io::Result<()> {
                devns_sys::procstate::enter_for_good(&mntns, devns_sys::procstate::Namespace::Mount)?;
                let target = rustix::fs::openat2(
                    &root,
                    at,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
                )?;
                rustix::mount::move_mount(
                    &tree,
                    "",
                    &target,
                    "",
                    MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
                )
            })();
            let code = match res {
                Ok(()) => 0,
                Err(e) => e.raw_os_error(),
            };
            let _ = rustix::io::write(&w, &code.to_ne_bytes());
            std::process::exit(0);
        }
        devns_sys::process::Forked::Parent { pidfd, .. } => {
            drop(w);
            let mut buf = [0u8; 4];
            let n = rustix::io::read(&r, &mut buf).unwrap_or(0);
            let _ = devns_sys::process::wait_pidfd(&pidfd);
            match (n, i32::from_ne_bytes(buf)) {
                (4, 0) => Ok(()),
                (4, e) => bail!(
                    "cannot mount the view at {at} in process {pid}'s mount namespace: {}",
                    rustix::io::Errno::from_raw_os_error(e)
                ),
                _ => bail!("the helper that mounts the view in process {pid}'s namespace died"),
            }
        }
    }
}

impl Daemon {
    /// Sends `payload` (a kernel-format uevent) to namespace `id`'s own
    /// listeners. A namespace that died meanwhile is skipped quietly.
    ///
    /// The kernel itself broadcasts it there (UEVENT_SEND: a request to the
    /// kernel's uevent socket of that network namespace), so listeners see
    /// a kernel event (sender port 0, a fresh SEQNUM). udev also wants the
    /// sender's credentials to be root's as it sees them: the request goes
    /// out with the real uid/gid of the namespace's root for that one call.
    pub(super) fn announce(&self, id: NsId, payload: &[u8]) {
        let Some(ns) = self.nss.get(&id) else { return };
        let Some(sock) = ns.uevents.as_ref() else { return };
        let req = devns_core::uevent::kernel_send_request(payload);
        let to = rustix::net::netlink::SocketAddrNetlink::new(0, 0);
        let (root_uid, root_gid) = (ns.uids.carry(0, self.overflow.0), ns.gids.carry(0, self.overflow.1));
        // The credentials it goes out with, stated for this one message
        // (host root may state any), rather than taken on and given back.
        let creds = rustix::net::UCred {
            pid: rustix::process::getpid(),
            uid: rustix::process::Uid::from_raw(root_uid),
            gid: rustix::process::Gid::from_raw(root_gid),
        };
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
        let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
        let sent = if cmsg.push(rustix::net::SendAncillaryMessage::ScmCredentials(creds)) {
            rustix::net::sendmsg_addr(
                sock,
                &to,
                &[std::io::IoSlice::new(&req)],
                &mut cmsg,
                rustix::net::SendFlags::DONTWAIT,
            )
        } else {
            Err(rustix::io::Errno::NOBUFS)
        };
        if let Err(e) = sent {
            tracing::debug!(ns = %id, error = %e, "cannot deliver a uevent");
        }
    }

    /// Announces a device and its partitions to `id` as added or removed.
    pub(super) fn announce_device(&self, id: NsId, dev: devns_core::DevId, action: &str) {
        let parts: Vec<devns_core::DevId> =
            self.registry.devices().filter(|d| d.is_partition() && d.parent == Some(dev)).map(|d| d.id).collect();
        // A disk comes before its partitions, and goes after them.
        let order: Vec<devns_core::DevId> = if action == "add" {
            std::iter::once(dev).chain(parts).collect()
        } else {
            parts.into_iter().chain([dev]).collect()
        };
        for d in order {
            if let Some(msg) = crate::discover::synth_uevent(action, d) {
                self.announce(id, &msg);
            }
        }
    }

    /// Makes `id`'s view, mounts it at `views/ID`, and keeps its fd.
    pub(super) fn make_view(&mut self, id: NsId) -> Result<()> {
        let ns = self.nss.get(&id).ok_or_else(|| anyhow!("unknown namespace {id}"))?;
        let plan = devns_core::view::plan(&self.registry.view_devices(id), &ns.uids, &ns.gids, self.overflow);
        let view = crate::view::create(&plan)?;
        let path = view_path(&self.views_dir, id);
        std::fs::create_dir_all(&path)?;
        rustix::mount::move_mount(&view, "", rustix::fs::CWD, &path, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
            .with_context(|| format!("cannot mount the view at {}", path.display()))?;
        self.nss.get_mut(&id).expect("checked").view = Some(view);
        Ok(())
    }

    /// A private `/tmp` for `id` (root's own, as the view, so that its
    /// nodes work), kept for the agent's checks; a clone to hand over.
    fn make_tmp(&mut self, id: NsId) -> Result<OwnedFd> {
        let ns = self.nss.get_mut(&id).ok_or_else(|| anyhow!("unknown namespace {id}"))?;
        let root = |m: &IdMap| m.to_host(0).ok_or_else(|| anyhow!("namespace {id} maps no root"));
        let (u, g) = (root(&ns.uids)?.to_string(), root(&ns.gids)?.to_string());
        let tmp = crate::view::tmpfs(
            &[("mode", "1777"), ("uid", &u), ("gid", &g)],
            rustix::mount::MountAttrFlags::MOUNT_ATTR_NOSUID,
        )?;
        let clone = rustix::mount::open_tree(
            &tmp,
            "",
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH,
        )?;
        ns.tmp = Some(tmp);
        Ok(clone)
    }

    /// A clone of `id`'s view to hand to a container.
    pub(super) fn view_clone(&self, id: NsId) -> Result<OwnedFd> {
        let view =
            self.nss.get(&id).and_then(|n| n.view.as_ref()).ok_or_else(|| anyhow!("namespace {id} has no view"))?;
        Ok(rustix::mount::open_tree(
            view,
            "",
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH,
        )?)
    }

    /// Lets go of a namespace: devices back to host, view unmounted,
    /// record gone. Every step runs even when one fails.
    pub(super) fn forget_ns(&mut self, id: NsId) {
        let loops = self.state.by_id(id).map(|r| r.loops.clone()).unwrap_or_default();
        self.clean_loops(loops);
        unmount_view(&self.views_dir, id);
        let access = self.nss.remove(&id).and_then(|n| n.access);
        let rec = self.state.by_id(id).and_then(|r| r.cgroup.clone());
        self.end_policy(id, access, rec.as_ref());
        self.targets.retain(|_, t| !matches!(t, super::Target::Member(n, _) if *n == id));
        let released = self.registry.release_ns(id);
        self.state.remove_id(id);
        if let Err(e) = self.save_ns(&[id]) {
            tracing::error!(ns = %id, error = %e, "cannot save after releasing a namespace");
        }
        for d in released {
            let device = self.registry.device(d).map(|x| x.name.clone());
            self.emit(Event::device("release", device.as_deref().unwrap_or(""), d, Some(id.to_string())));
        }
        self.emit(Event::ns("ns-gone", id));
    }

    /// A watched process ended: watch another of the namespace's, or let go.
    pub(super) fn member_exited(&mut self, id: NsId, pid: i32) {
        let Some(ns) = self.nss.get_mut(&id) else { return };
        ns.members.retain(|m| m.keeper.pid != pid);
        if ns.members.is_empty() {
            let cgroup = self.state.by_id(id).and_then(|r| r.cgroup.as_ref()).map(|c| PathBuf::from(&c.path));
            let adopted = adopt_from_proc(id, cgroup.as_deref(), &[pid]);
            if adopted.is_empty() {
                tracing::info!(ns = %id, "last process gone: releasing its devices and view");
                self.forget_ns(id);
                return;
            }
            tracing::debug!(ns = %id, pid = adopted[0].keeper.pid, "watching another process of the namespace");
            self.nss.get_mut(&id).expect("present").members = adopted;
            self.watch_members(id);
        }
        self.sync_members(id);
        let _ = self.save_ns(&[id]);
    }

    /// `devns run` through the daemon: the namespace of the process behind
    /// `pidfd` (a fresh child whose maps are unset) gets an id block, its
    /// devices, a view and a `/tmp`; returns the ids, a clone of the view
    /// and the `/tmp`.
    pub(super) fn provision(
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
        let devs = devices.iter().map(|d| crate::discover::resolve(&self.registry, d)).collect::<Result<Vec<_>>>()?;
        let start_time = host::start_time(pid).ok_or_else(|| anyhow!("process {pid} is gone"))?;
        let keeper = Keeper { pid, start_time };
        let (uid_ranges, gid_ranges) =
            (crate::host::subid_ranges("/etc/subuid"), crate::host::subid_ranges("/etc/subgid"));
        let claim =
            Claim { id: Some(id), name, keeper: None, members: vec![keeper], devices: &devs, allocate_ids: true };
        let r = self.state.claim(claim, &self.registry, &uid_ranges, &gid_ranges)?;
        let (ub, gb) = (r.uid_base.expect("allocated"), r.gid_base.expect("allocated"));
        let (uids, gids) = (IdMap::single(ub, BLOCK), IdMap::single(gb, BLOCK));
        let result = (|| -> Result<Vec<OwnedFd>> {
            crate::container::write_maps(pid, &uids, &gids)?;
            for d in &devs {
                self.registry.assign(*d, id)?;
            }
            let uevents = uevent_sender(pid);
            let members = vec![Member { keeper, pidfd, watched: false }];
            self.nss.insert(id, Ns { view: None, tmp: None, uids, gids, members, uevents, access: None });
            self.watch_members(id);
            self.make_view(id)?;
            // Its cgroup, filled and attached, with the process moved in
            // before the process is told to go on.
            self.start_policy(id, pid, true)?;
            self.save_ns(&[id])?;
            let tmp = self.make_tmp(id)?;
            Ok(vec![self.view_clone(id)?, tmp])
        })();
        match result {
            Ok(fds) => {
                self.emit(Event::ns("ns-new", id));
                let out = serde_json::json!({ "id": id.0, "uid_base": ub, "gid_base": gb });
                Ok((out, fds))
            }
            Err(e) => {
                self.forget_ns(id);
                Err(e)
            }
        }
    }

    /// `devns attach`: bring `pid`'s user namespace under devns and mount
    /// its view at `at` in `pid`'s mount namespace.
    pub(super) fn attach(&mut self, pid: i32, name: Option<&str>, at: &str) -> Result<serde_json::Value> {
        let p = Pid::from_raw(pid).ok_or_else(|| anyhow!("invalid pid {pid}"))?;
        let pidfd = rustix::process::pidfd_open(p, PidfdFlags::empty()).with_context(|| format!("no process {pid}"))?;
        let nsfd = devns_sys::ns::pidfd_user_ns(&pidfd).context("cannot get the process's user namespace")?;
        let id = NsId(devns_sys::ns::ns_id(&nsfd)?);
        if id == self.host_ns {
            bail!("process {pid} is in the host's user namespace; devns attaches user-namespaced processes");
        }
        let start_time = host::start_time(pid).ok_or_else(|| anyhow!("process {pid} is gone"))?;
        let keeper = Keeper { pid, start_time };
        let new = !self.nss.contains_key(&id);
        if new {
            let (uids, gids) = read_maps(pid)?;
            let claim =
                Claim { id: Some(id), name, keeper: None, members: vec![keeper], devices: &[], allocate_ids: false };
            self.state.claim(claim, &self.registry, &[], &[])?;
            let uevents = uevent_sender(pid);
            self.nss.insert(id, Ns { view: None, tmp: None, uids, gids, members: vec![], uevents, access: None });
            // The policy is in force before the view is mounted.
            if let Err(e) = self.make_view(id).and_then(|()| self.start_policy(id, pid, false)) {
                self.forget_ns(id);
                return Err(e);
            }
        } else if let (Some(h), Some(a)) = (&self.cgroups, self.nss.get(&id).and_then(|n| n.access.as_ref())) {
            let theirs = h.of(&pid.to_string())?;
            if theirs != a.cgroup() {
                bail!(
                    "process {pid} is in cgroup {}, but its namespace's device policy is in {}",
                    theirs.display(),
                    a.cgroup().display()
                );
            }
        }
        let ns = self.nss.get_mut(&id).expect("present");
        if !ns.members.iter().any(|m| m.keeper == keeper) {
            ns.members.push(Member { keeper, pidfd, watched: false });
        }
        self.watch_members(id);
        self.sync_members(id);
        let view = self.view_clone(id)?;
        if let Err(e) = mount_into(pid, &view, at) {
            if new {
                self.forget_ns(id);
            }
            return Err(e);
        }
        self.save_ns(&[id])?;
        if new {
            self.emit(Event::ns("ns-new", id));
        }
        Ok(serde_json::json!({ "id": id.0 }))
    }
}
