//! `mount -t devtmpfs`, which mounts the caller's own view where it asked,
//! `fsopen("devtmpfs")`, which sends new-mount-API tools back to
//! `mount(2)`, and (in [`super::blockdev`]) mounts of the caller's own
//! block devices. Every other mount goes to the kernel unchanged.

use super::caller::Caller;
use super::resolve::openat2;
use super::{Answer, PATH_MAX, Policy, refuse};
use devns_core::blockmount;
use devns_core::seccomp::CAP_SYS_ADMIN;
use devns_sys::procstate::{InNamespace, Namespace};
use devns_sys::seccomp::Notif;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

pub(super) fn fsopen(n: &Notif, c: Caller<'_>, policy: &dyn Policy) -> Answer {
    // Only the name decides, and continuing never grants anything: a
    // devtmpfs, or a type devns serves from block devices, asked through
    // the new API falls back to mount(2) on ENOSYS.
    match c.read_str(n.data.args[0], 64) {
        Ok(name) if name == b"devtmpfs" => Answer::Done(Err(Errno::NOSYS)),
        Ok(name) if std::str::from_utf8(&name).is_ok_and(|t| blockmount::way(t, policy.mount_kernel()).is_some()) => {
            Answer::Done(Err(Errno::NOSYS))
        }
        _ => Answer::Continue,
    }
}

/// What the agent reads of a caller for a mount it serves, before it
/// checks that the thread read was the caller all along.
pub(super) struct Place {
    pub root: OwnedFd,
    pub cwd: OwnedFd,
    pub mntns: OwnedFd,
}

impl Place {
    pub(super) fn of(c: &Caller<'_>) -> Result<Place, Errno> {
        Ok(Place { root: c.dir("root")?, cwd: c.dir("cwd")?, mntns: c.open_at("ns/mnt", OFlags::RDONLY)? })
    }

    /// `path` of the caller's, resolved as its own lookup would, never
    /// leaving its root: absolute from its root, relative from its cwd.
    pub(super) fn resolve(&self, path: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
        let (base, how) = if path.starts_with('/') {
            (&self.root, ResolveFlags::IN_ROOT)
        } else {
            (&self.cwd, ResolveFlags::BENEATH)
        };
        openat2(base, path, flags | OFlags::CLOEXEC, how | ResolveFlags::NO_MAGICLINKS)
    }

    /// Attaches the detached mount `tree` at the caller's directory
    /// `target`, in its mount namespace.
    pub(super) fn attach(&self, tree: &OwnedFd, target: &str) -> Result<(), Errno> {
        let _in_ns = InNamespace::enter(self.mntns.as_fd(), Namespace::Mount)?;
        let dir = self.resolve(target, OFlags::PATH | OFlags::DIRECTORY)?;
        rustix::mount::move_mount(
            tree,
            "",
            &dir,
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
    }
}

/// A path argument of the caller's: `ENOENT` when empty, `EINVAL` when not
/// UTF-8 (no path devns serves is not).
pub(super) fn path_arg(read: Result<Vec<u8>, Errno>) -> Result<String, Errno> {
    match read {
        Ok(t) if t.is_empty() => Err(Errno::NOENT),
        Ok(t) => String::from_utf8(t).map_err(|_| Errno::INVAL),
        Err(e) => Err(e),
    }
}

pub(super) fn mount(listener: BorrowedFd<'_>, n: &Notif, c: Caller<'_>, policy: &dyn Policy) -> Answer {
    let [_source, _target, fstype_addr, flags, _data, _] = n.data.args;
    // Not a new mount: the kernel decides, with the caller's own rights.
    if !blockmount::is_new_mount(flags) || fstype_addr == 0 {
        return Answer::Continue;
    }
    let fstype = match c.read_str(fstype_addr, 64).map(String::from_utf8) {
        Ok(Ok(t)) => t,
        _ => return Answer::Continue,
    };
    if fstype == "devtmpfs" {
        return devtmpfs(listener, n, c, policy);
    }
    match blockmount::way(&fstype, policy.mount_kernel()) {
        Some(way) => super::blockdev::mount(listener, n, c, policy, &fstype, way),
        None => Answer::Continue,
    }
}

fn devtmpfs(listener: BorrowedFd<'_>, n: &Notif, mut c: Caller<'_>, policy: &dyn Policy) -> Answer {
    let [_source, target_addr, _fstype, flags, _data, _] = n.data.args;
    let target = c.read_str(target_addr, PATH_MAX);
    let (place, ns) = (Place::of(&c), c.user_ns());
    if !devns_sys::seccomp::id_valid(listener, n.id) {
        return Answer::Gone;
    }
    let (place, ns) = match (place, ns) {
        (Ok(p), Ok(ns)) => (p, ns),
        (Err(e), _) | (_, Err(e)) => return super::unreadable(listener, n.id, n.pid, e),
    };
    let target = match path_arg(target) {
        Ok(t) => t,
        Err(e) => return Answer::Done(Err(e)),
    };
    if !c.creds.has_cap(CAP_SYS_ADMIN) {
        return refuse(c.pid, Some(ns), "mount devtmpfs", "no CAP_SYS_ADMIN in its namespace", Errno::PERM);
    }
    let Some(view) = policy.view(ns) else {
        return refuse(c.pid, Some(ns), "mount devtmpfs", "devns has no view for this namespace", Errno::PERM);
    };
    let tree = match rustix::mount::open_tree(
        view,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH,
    ) {
        Ok(t) => t,
        Err(e) => return Answer::Done(Err(e)),
    };
    if flags & blockmount::MS_RDONLY != 0
        && let Err(e) = devns_sys::mount::set_attrs(&tree, devns_sys::mount::MOUNT_ATTR_RDONLY)
    {
        return Answer::Done(Err(e));
    }
    Answer::Done(place.attach(&tree, &target))
}
