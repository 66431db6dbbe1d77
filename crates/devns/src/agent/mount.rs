//! `mount -t devtmpfs`, which mounts the caller's own view where it asked,
//! and `fsopen("devtmpfs")`, which sends new-mount-API tools back to
//! `mount(2)`. Every other mount goes to the kernel unchanged.

use super::caller::Caller;
use super::resolve::openat2;
use super::{Answer, PATH_MAX, Policy, refuse};
use devns_core::seccomp::CAP_SYS_ADMIN;
use devns_sys::procstate::{InNamespace, Namespace};
use devns_sys::seccomp::Notif;
use rustix::fd::{AsFd, BorrowedFd};
use rustix::fs::{OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

const MS_RDONLY: u64 = 1;
const MS_REMOUNT: u64 = 32;
const MS_BIND: u64 = 4096;
const MS_MOVE: u64 = 8192;
const MS_MGC_VAL: u64 = 0xC0ED_0000;
const MS_MGC_MSK: u64 = 0xffff_0000;
const MS_SHARED_ETC: u64 = (1 << 20) | (1 << 19) | (1 << 18) | (1 << 17);

pub(super) fn fsopen(n: &Notif, c: Caller<'_>) -> Answer {
    // Only the name decides, and continuing never grants anything: a
    // devtmpfs asked through the new API falls back to mount(2) on ENOSYS.
    match c.read_str(n.data.args[0], 64) {
        Ok(name) if name == b"devtmpfs" => Answer::Done(Err(Errno::NOSYS)),
        _ => Answer::Continue,
    }
}

pub(super) fn mount(listener: BorrowedFd<'_>, n: &Notif, mut c: Caller<'_>, policy: &dyn Policy) -> Answer {
    let [_source, target_addr, fstype_addr, flags, _data, _] = n.data.args;
    // The legacy magic in the high bits, dropped as the kernel drops it.
    let flags = if flags & MS_MGC_MSK == MS_MGC_VAL { flags & !MS_MGC_MSK } else { flags };
    // Not a new devtmpfs: the kernel decides, with the caller's own rights.
    if flags & (MS_REMOUNT | MS_BIND | MS_MOVE | MS_SHARED_ETC) != 0 || fstype_addr == 0 {
        return Answer::Continue;
    }
    match c.read_str(fstype_addr, 64) {
        Ok(t) if t == b"devtmpfs" => {}
        _ => return Answer::Continue,
    }
    let target = c.read_str(target_addr, PATH_MAX);
    let (root, ns, mntns, cwd) = (c.dir("root"), c.user_ns(), c.open_at("ns/mnt", OFlags::RDONLY), c.dir("cwd"));
    if !devns_sys::seccomp::id_valid(listener, n.id) {
        return Answer::Gone;
    }
    let (root, ns, mntns, cwd) = match (root, ns, mntns, cwd) {
        (Ok(r), Ok(ns), Ok(m), Ok(c)) => (r, ns, m, c),
        (Err(e), ..) | (_, Err(e), ..) | (.., Err(e), _) | (.., Err(e)) => {
            return super::unreadable(listener, n.id, n.pid, e);
        }
    };
    let target = match target {
        Ok(t) if !t.is_empty() => t,
        Ok(_) => return Answer::Done(Err(Errno::NOENT)),
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
    if flags & MS_RDONLY != 0
        && let Err(e) = devns_sys::mount::set_attrs(&tree, devns_sys::mount::MOUNT_ATTR_RDONLY)
    {
        return Answer::Done(Err(e));
    }
    let Ok(text) = std::str::from_utf8(&target) else { return Answer::Done(Err(Errno::INVAL)) };
    let (base, rel) = if text.starts_with('/') { (&root, text) } else { (&cwd, text) };
    let _in_ns = match InNamespace::enter(mntns.as_fd(), Namespace::Mount) {
        Ok(g) => g,
        Err(e) => return Answer::Done(Err(e)),
    };
    let how = if text.starts_with('/') { ResolveFlags::IN_ROOT } else { ResolveFlags::BENEATH };
    let dir =
        match openat2(base, rel, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, how | ResolveFlags::NO_MAGICLINKS)
        {
            Ok(d) => d,
            Err(e) => return Answer::Done(Err(e)),
        };
    Answer::Done(rustix::mount::move_mount(
        &tree,
        "",
        &dir,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    ))
}
