//! `mknod`/`mknodat` of a device: the directory found ([`super::resolve`]),
//! probed for what the decision needs (which filesystem holds it, whether
//! it is `nodev`) and, where devns makes nothing, for the answer the
//! kernel would have given first; then the node made there as the caller
//! ([`super::identity`]), once the policy allows it.

use super::caller::Caller;
use super::identity::{AsCaller, Base};
use super::resolve::{AT_FDCWD, resolve_parent};
use super::{Answer, PATH_MAX, Policy, refuse};
use devns_core::registry::NsId;
use devns_core::seccomp::{self, CAP_MKNOD, NR_MKNOD};
use devns_core::{DevId, Kind, nodes};
use devns_sys::seccomp::Notif;
use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::fs::{Access, AtFlags, FileType, Mode, OFlags, StatVfsMountFlags};
use rustix::io::Errno;

/// The device `mknod`'s arguments name, or `None` for a FIFO, socket or
/// file (which the filter lets through) and for a whiteout (which the
/// kernel lets anyone make who may write the directory): those are the
/// kernel's to answer. The arguments are registers, which the caller
/// cannot change between the filter, the agent and the kernel.
pub(super) fn device_of(n: &Notif) -> Option<DevId> {
    let a = n.data.args;
    let (mode, dev) = if n.data.nr as u32 == NR_MKNOD { (a[1], a[2]) } else { (a[2], a[3]) };
    let kind = match mode as u32 & seccomp::S_IFMT {
        seccomp::S_IFCHR => Kind::Char,
        seccomp::S_IFBLK => Kind::Block,
        _ => return None,
    };
    let (major, minor) = seccomp::decode_dev(dev);
    Some(DevId::new(kind, major, minor)).filter(|d| !nodes::is_whiteout(*d))
}

pub(super) fn mknod(
    listener: BorrowedFd<'_>,
    n: &Notif,
    mut c: Caller<'_>,
    dev: DevId,
    policy: &dyn Policy,
    base: &Base,
) -> Answer {
    let a = n.data.args;
    let (dirfd, path_addr, mode) =
        if n.data.nr as u32 == NR_MKNOD { (AT_FDCWD, a[0], a[1]) } else { (a[0] as i32, a[1], a[2]) };
    let path = c.read_str(path_addr, PATH_MAX);
    let ns = c.user_ns();
    // Everything about the caller is read; now make sure it was the caller.
    let ns = match super::confirm(listener, n, ns) {
        Ok(ns) => ns,
        Err(answer) => return answer,
    };
    let path = match path {
        Ok(p) => p,
        Err(e) => return Answer::Done(Err(e)),
    };
    // The path first, as the kernel looks it up before anything else.
    let (parent, name) = match resolve_parent(&mut c, base, dirfd, &path) {
        Ok(p) => p,
        Err(Errno::PERM) => {
            return refuse(c.pid, Some(ns), "mknod", "its directory lies outside its root", Errno::PERM);
        }
        Err(e) => {
            tracing::debug!(pid = c.pid, errno = %e, dirfd, "mknod: cannot resolve the path");
            return Answer::Done(Err(e));
        }
    };
    let facts = nodes::Facts {
        dev,
        cap_mknod: c.creds.has_cap(CAP_MKNOD),
        may_have: policy.may_have(ns, dev),
        place: place_of(&parent, policy, kept_ancestor(&c, policy, ns)),
        // Unknown counts as nodev: nothing is made where it is not known.
        nodev: rustix::fs::fstatvfs(&parent).map_or(true, |s| s.f_flag.contains(StatVfsMountFlags::NODEV)),
    };
    if let Err(why) = nodes::decide(&facts) {
        return match native_refusal(&parent, &name, &c, base) {
            Errno::PERM => refuse(c.pid, Some(ns), "mknod", &why.to_string(), Errno::PERM),
            // The kernel's own answer, before any question of devices.
            e => {
                tracing::debug!(pid = c.pid, errno = %e, %why, "mknod: answered as natively");
                Answer::Done(Err(e))
            }
        };
    }
    let ft = if dev.kind == Kind::Char { FileType::CharacterDevice } else { FileType::BlockDevice };
    let perm = Mode::from_raw_mode(mode as u32 & 0o7777);
    let make = || rustix::fs::mknodat(&parent, name.as_slice(), ft, perm, rustix::fs::makedev(dev.major, dev.minor));
    // `S_ISGID` with group execute is kept in a setgid directory only for
    // a member of its group or one whose `CAP_FSETID` counts over it.
    let keeps_sgid = mode as u32 & 0o2010 == 0o2010 && c.creds.has_cap(devns_core::dac::CAP_FSETID);
    let r = AsCaller::become_(&c.creds, base)
        .and_then(|me| if keeps_sgid { me.over_eagerly(&c, &parent, make) } else { me.over(&c, &parent, make) });
    Answer::Done(r)
}

/// Which of the filesystems devns made for `ns` holds `dir`, if one does.
/// A superblock is known by its device number, which no other live
/// superblock has: the policy holds both (view and `/tmp`) open.
fn place_of(dir: &OwnedFd, policy: &dyn Policy, ns: NsId) -> nodes::Place {
    let Ok(at) = rustix::fs::fstat(dir) else { return nodes::Place::Other };
    let is = |fd: Option<BorrowedFd<'_>>| fd.is_some_and(|f| rustix::fs::fstat(f).is_ok_and(|s| s.st_dev == at.st_dev));
    if is(policy.view(ns)) {
        nodes::Place::View
    } else if is(policy.tmp(ns)) {
        nodes::Place::Tmp
    } else {
        nodes::Place::Other
    }
}

/// The namespace whose filesystems may hold the caller's nodes: its own,
/// or for a namespace nested in one devns keeps, that one (whose
/// filesystems end with it, as the nested one's processes do).
fn kept_ancestor(c: &Caller<'_>, policy: &dyn Policy, ns: NsId) -> NsId {
    if policy.view(ns).is_some() {
        return ns;
    }
    let Ok(mut fd) = c.open_at("ns/user", OFlags::RDONLY) else { return ns };
    // User namespaces nest 32 deep at most.
    for _ in 0..33 {
        let Ok(up) = devns_sys::ns::ns_parent(&fd) else { return ns };
        let Ok(id) = devns_sys::ns::ns_id(&up) else { return ns };
        if policy.view(NsId(id)).is_some() {
            return NsId(id);
        }
        fd = up;
    }
    ns
}

/// What a native `mknod` of a device answers where devns makes none: the
/// kernel's checks before the capability (the name taken, a read-only
/// mount, the caller's own write and search permission on the directory),
/// found out without creating anything; else `EPERM`.
fn native_refusal(parent: &OwnedFd, name: &[u8], c: &Caller<'_>, base: &Base) -> Errno {
    let exists = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => true,
        Err(Errno::NOENT) => false,
        Err(e) => return e,
    };
    let read_only = rustix::fs::fstatvfs(parent).is_ok_and(|s| s.f_flag.contains(StatVfsMountFlags::RDONLY));
    let may_write = if exists || read_only {
        Ok(())
    } else {
        // The caller's own access check (its fsuid, fsgid, groups, and the
        // capabilities that count over the directory).
        AsCaller::become_(&c.creds, base).and_then(|me| {
            me.over(c, parent, || {
                rustix::fs::accessat(parent, ".", Access::WRITE_OK | Access::EXEC_OK, AtFlags::EACCESS)
            })
        })
    };
    let before = nodes::Before { exists, read_only, may_write: may_write.map_err(|e| e.raw_os_error()) };
    Errno::from_raw_os_error(nodes::native_refusal(&before))
}
