//! The kernel side of a namespace under devns: the host mounts of the
//! daemon's views, its id maps, the uevent socket in its network namespace,
//! the processes watched in it (its view mounted into its mount namespace:
//! `place`).

use super::Member;
use crate::host;
use anyhow::{Context, Result};
use devns_core::idmap::IdMap;
use devns_core::registry::NsId;
use devns_core::state::Keeper;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountPropagationFlags, UnmountFlags};
use rustix::process::{Pid, PidfdFlags};
use std::path::{Path, PathBuf};

/// `STATE_DIR/views`, a private mount of its own so that views mounted there
/// propagate nowhere.
pub fn prepare_views_dir(state_dir: &Path) -> Result<PathBuf> {
    let dir = state_dir.join("views");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mountinfo = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    let canon = std::fs::canonicalize(&dir)?;
    if !devns_core::mountinfo::mounts(&mountinfo).any(|m| m.mount_point == canon) {
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

pub(crate) fn reopen_members(ks: &[Keeper]) -> Vec<Member> {
    ks.iter().filter_map(reopen).collect()
}

/// A process of namespace `id` or of one nested in it found in /proc
/// (other than `skip`), else one left in its recorded `cgroup` (or below
/// it), to watch: a process that moved into a nested user namespace keeps
/// the view and the devices, and one in the cgroup is under its policy, so
/// either keeps the namespace.
pub(crate) fn adopt_from_proc(id: NsId, cgroup: Option<&Path>, skip: &[i32]) -> Vec<Member> {
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

pub(crate) fn read_maps(pid: i32) -> Result<(IdMap, IdMap)> {
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
pub(crate) fn uevent_sender(pid: i32) -> Option<OwnedFd> {
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

pub(crate) fn view_path(views: &Path, id: NsId) -> PathBuf {
    views.join(id.0.to_string())
}

/// The view mounted at `views/ID`, if one is.
pub(crate) fn open_mounted_view(views: &Path, id: NsId) -> Option<OwnedFd> {
    let path = view_path(views, id);
    let fd = rustix::fs::open(&path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let (inner, outer) = (rustix::fs::fstat(&fd).ok()?, rustix::fs::stat(views).ok()?);
    (inner.st_dev != outer.st_dev).then_some(fd)
}

pub(crate) fn unmount_view(views: &Path, id: NsId) {
    let path = view_path(views, id);
    match rustix::mount::unmount(&path, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
        Err(e) => tracing::warn!(ns = %id, error = %e, "cannot unmount the view"),
    }
    let _ = std::fs::remove_dir(&path);
}

/// Unmounts views of namespaces the state no longer knows.
pub(crate) fn unmount_orphan_views(views: &Path, live: &[NsId]) {
    let Ok(dir) = std::fs::read_dir(views) else { return };
    for e in dir.flatten() {
        if let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()).map(NsId)
            && !live.contains(&id)
        {
            unmount_view(views, id);
        }
    }
}

/// Sends `payload` (a kernel-format uevent) through `sock`, a uevent socket
/// in namespace `id`'s network namespace.
///
/// The kernel itself broadcasts it there (UEVENT_SEND: a request to the
/// kernel's uevent socket of that network namespace), so listeners see a
/// kernel event (sender port 0, a fresh SEQNUM). udev also wants the
/// sender's credentials to be root's as it sees them: the request goes out
/// with the real uid/gid of the namespace's root for that one call.
pub(crate) fn send_uevent(sock: &OwnedFd, payload: &[u8], uids: &IdMap, gids: &IdMap, overflow: (u32, u32), id: NsId) {
    let (root_uid, root_gid) = (uids.carry(0, overflow.0), gids.carry(0, overflow.1));
    let sent = crate::uevents::send_as_kernel(sock, payload, root_uid, root_gid);
    if let Err(e) = sent {
        tracing::debug!(ns = %id, error = %e, "cannot deliver a uevent");
    }
}

/// Sends `payload` (a kernel-format uevent) as udev would have, after its
/// processing, on the "udev" group of namespace `id`'s network namespace
/// (config `udev_events`), with the credentials of the namespace's root,
/// whom libudev trusts.
pub(crate) fn send_udev_event(
    sock: &OwnedFd,
    payload: &[u8],
    uids: &IdMap,
    gids: &IdMap,
    overflow: (u32, u32),
    id: NsId,
) {
    let Some(msg) = devns_core::uevent::udev_message(payload) else { return };
    let (root_uid, root_gid) = (uids.carry(0, overflow.0), gids.carry(0, overflow.1));
    if let Err(e) = crate::uevents::send_to_udev_group(sock, &msg, root_uid, root_gid) {
        tracing::debug!(ns = %id, error = %e, "cannot deliver a udev event");
    }
}
