//! `mknod`/`mknodat` of a device, made by the agent where the caller's own
//! call would have made it, as the caller, once the policy allows it.

use super::caller::Caller;
use super::{Answer, PATH_MAX, Policy, refuse};
use devns_core::registry::NsId;
use devns_core::seccomp::{self, CAP_MKNOD, Creds, NR_MKNOD};
use devns_core::{DevId, Kind, nodes};
use devns_sys::seccomp::Notif;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{Access, AtFlags, FileType, Mode, OFlags, ResolveFlags, StatVfsMountFlags};
use rustix::io::Errno;
use rustix::thread::{CapabilitySet, CapabilitySets};

const AT_FDCWD: i32 = -100;

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
        return match native_refusal(&parent, &name, &c.creds, base) {
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
    let r = match AsCaller::become_(&c.creds, base) {
        Ok(_as_caller) => {
            rustix::fs::mknodat(&parent, name.as_slice(), ft, perm, rustix::fs::makedev(dev.major, dev.minor))
        }
        Err(e) => Err(e),
    };
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
fn native_refusal(parent: &OwnedFd, name: &[u8], creds: &Creds, base: &Base) -> Errno {
    let exists = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => true,
        Err(Errno::NOENT) => false,
        Err(e) => return e,
    };
    let read_only = rustix::fs::fstatvfs(parent).is_ok_and(|s| s.f_flag.contains(StatVfsMountFlags::RDONLY));
    let may_write = if exists || read_only {
        Ok(())
    } else {
        // The caller's own access check (its fsuid, fsgid, groups).
        AsCaller::become_(creds, base).and_then(|_as_caller| {
            rustix::fs::accessat(parent, ".", Access::WRITE_OK | Access::EXEC_OK, AtFlags::EACCESS)
        })
    };
    let before = nodes::Before { exists, read_only, may_write: may_write.map_err(|e| e.raw_os_error()) };
    Errno::from_raw_os_error(nodes::native_refusal(&before))
}

/// The directory a relative path of the caller starts from, and the name
/// of the magic link that shows it.
fn base_dir(c: &Caller<'_>, dirfd: i32) -> Result<(OwnedFd, String), Errno> {
    if dirfd == AT_FDCWD {
        return Ok((c.dir("cwd")?, "cwd".into()));
    }
    let fd = c.fd(dirfd)?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Err(Errno::NOTDIR);
    }
    Ok((fd, format!("fd/{dirfd}")))
}

/// devns's own root, which does not change while it runs.
fn host_root() -> Result<(u64, u64), Errno> {
    static ROOT: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    if let Some(r) = ROOT.get() {
        return Ok(*r);
    }
    let s = rustix::fs::stat("/")?;
    Ok(*ROOT.get_or_init(|| (s.st_dev, s.st_ino)))
}

/// Whether directory `dir` lies inside `root` (walking up with `..`). For
/// the host's own root everything does.
fn inside(dir: &OwnedFd, root: &OwnedFd) -> Result<bool, Errno> {
    let r = rustix::fs::fstat(root)?;
    let slash = host_root()?;
    if (r.st_dev, r.st_ino) == slash {
        return Ok(true);
    }
    let mut cur = rustix::fs::openat(dir, ".", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    for _ in 0..256 {
        let st = rustix::fs::fstat(&cur)?;
        if (st.st_dev, st.st_ino) == (r.st_dev, r.st_ino) {
            return Ok(true);
        }
        if (st.st_dev, st.st_ino) == slash {
            return Ok(false);
        }
        cur = rustix::fs::openat(&cur, "..", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    }
    Ok(false)
}

/// `openat2`, retried when a concurrent rename or mount anywhere on the
/// host made a `..` walk unverifiable (EAGAIN): a native call never fails so.
pub(super) fn openat2<P: rustix::path::Arg + Copy>(
    dir: impl AsFd,
    path: P,
    flags: OFlags,
    how: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    let dir = dir.as_fd();
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, path, flags, Mode::empty(), how) {
            Err(Errno::AGAIN) if tries < 64 => tries += 1,
            r => return r,
        }
    }
}

/// Opens the directory that will hold `path`'s last component, resolving as
/// the caller would but never leaving its root; returns it and the name.
fn resolve_parent(c: &mut Caller<'_>, base: &Base, dirfd: i32, path: &[u8]) -> Result<(OwnedFd, Vec<u8>), Errno> {
    if path.is_empty() {
        return Err(Errno::NOENT);
    }
    let trimmed = {
        let mut p = path;
        while p.len() > 1 && p.ends_with(b"/") {
            p = &p[..p.len() - 1];
        }
        p
    };
    let (dir_part, name) = match trimmed.iter().rposition(|b| *b == b'/') {
        Some(i) => (&trimmed[..i.max(1)], &trimmed[i + 1..]),
        None => (&b""[..], trimmed),
    };
    if name.is_empty() || name == b"." || name == b".." || trimmed.len() != path.len() {
        // "/", ".", "..", or a trailing slash: what exists is EEXIST.
        return Err(Errno::EXIST);
    }
    let root = c.dir("root")?;
    let absolute = path.starts_with(b"/");
    // Where a relative path starts, checked (as devns) to lie in the root.
    let start = || -> Result<Option<(OwnedFd, String)>, Errno> {
        if absolute {
            return Ok(None);
        }
        let (base, link) = base_dir(c, dirfd)?;
        if !inside(&base, &root)? {
            return Err(Errno::PERM);
        }
        Ok(Some((base, link)))
    };
    let from = start()?;
    // Looked up as the caller: its search permission on every directory
    // on the way, as in its own lookup.
    let looked_up = AsCaller::become_(&c.creds, base).and_then(|_as_caller| resolve_dir(c, &root, from, dir_part));
    let parent = match looked_up {
        // Through procfs's `self` or a magic link, perhaps, which the
        // caller's own lookup follows: walked as it would walk them.
        Err(Errno::NOENT | Errno::LOOP) if !dir_part.is_empty() => {
            let from = match start()? {
                Some((b, _)) => b,
                None => c.dir("root")?,
            };
            let creds = c.creds.clone();
            let dir =
                AsCaller::become_(&creds, base).and_then(|_as_caller| super::walk::walk(c, &root, from, dir_part))?;
            if !inside(&dir, &root)? {
                return Err(Errno::PERM);
            }
            dir
        }
        r => r?,
    };
    Ok((parent, name.to_vec()))
}

/// The directory `dir_part` of a caller's path names, resolved inside its
/// `root` by the kernel (`openat2`), from the root, or from `from` (with
/// the name of its magic link) for a relative path.
fn resolve_dir(
    c: &Caller<'_>,
    root: &OwnedFd,
    from: Option<(OwnedFd, String)>,
    dir_part: &[u8],
) -> Result<OwnedFd, Errno> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let in_root = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let Some((base, link)) = from else {
        return openat2(root, if dir_part.is_empty() { &b"."[..] } else { dir_part }, flags, in_root);
    };
    if dir_part.is_empty() {
        return Ok(base);
    }
    match openat2(&base, dir_part, flags, ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS) {
        // `..` above the base, or an absolute symlink: resolve the whole
        // path from the caller's root instead.
        Err(Errno::XDEV) => {
            let (base_path, root_path) = (c.link(&link)?, c.link("root")?);
            let (b, r) = (base_path.to_bytes(), root_path.to_bytes());
            let rel = if r == b"/" { b } else { b.strip_prefix(r).ok_or(Errno::PERM)? };
            let full = [rel, b"/", dir_part].concat();
            openat2(root, full.as_slice(), flags, in_root)
        }
        r => r,
    }
}

/// The capabilities that a filesystem uid of 0 stands for, which the
/// kernel drops from the effective set when the fsuid leaves 0 and raises
/// again (from the permitted set) when it returns (`CAP_FS_MASK`).
const FS_CAPS: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::MKNOD)
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::DAC_READ_SEARCH)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::MAC_OVERRIDE);

/// The agent thread's own identity, read once: what it goes back to after
/// each call made as a caller.
pub struct Base {
    caps: CapabilitySets,
    /// Whether giving the fsuid back restores exactly `caps` by itself.
    restored_by_fsuid: bool,
}

impl Base {
    /// The calling thread's identity, which from now on carries no
    /// supplementary groups (host root needs none, and callers mostly have
    /// none, so that most calls need no `setgroups` at all).
    pub fn of_this_thread() -> Result<Base, Errno> {
        devns_sys::creds::set_groups(&[])?;
        let caps = rustix::thread::capabilities(None)?;
        let restored_by_fsuid = caps.effective & FS_CAPS == caps.permitted & FS_CAPS;
        Ok(Base { caps, restored_by_fsuid })
    }
}

/// Takes on a caller's filesystem identity (fsuid, fsgid, groups, umask)
/// while keeping `CAP_MKNOD` of all the filesystem capabilities, and gives
/// the thread's own back on drop: permission checks, ownership, the
/// `setgid` directory rule and default ACLs are then the kernel's own.
/// Five syscalls for a caller without supplementary groups, each kept
/// because the kernel needs it: fsgid and fsuid (in that order, while the
/// thread may still set any gid), the capability set, and both back.
pub struct AsCaller<'a> {
    base: &'a Base,
    groups: bool,
    umask: Mode,
}

impl AsCaller<'_> {
    pub fn become_<'a>(c: &Creds, base: &'a Base) -> Result<AsCaller<'a>, Errno> {
        let groups = !c.groups.is_empty();
        if groups {
            devns_sys::creds::set_groups(&c.groups)?;
        }
        // The process's umask: devns's own loops are single-threaded, and
        // the kernel applies it (or a default ACL instead) as for the caller.
        let umask = rustix::process::umask(Mode::from_raw_mode(c.umask & 0o777));
        devns_sys::creds::set_fsgid(c.fsgid);
        devns_sys::creds::set_fsuid(c.fsuid);
        let guard = AsCaller { base, groups, umask };
        let mut caps = base.caps;
        caps.effective = (caps.effective - FS_CAPS) | CapabilitySet::MKNOD;
        rustix::thread::set_capabilities(None, caps)?;
        Ok(guard)
    }
}

impl Drop for AsCaller<'_> {
    fn drop(&mut self) {
        // fsuid 0 raises the filesystem capabilities again from the
        // permitted set: the effective set is the thread's own again.
        devns_sys::creds::set_fsuid(0);
        devns_sys::creds::set_fsgid(0);
        rustix::process::umask(self.umask);
        if self.groups {
            let _ = devns_sys::creds::set_groups(&[]);
        }
        if !self.base.restored_by_fsuid {
            let _ = rustix::thread::set_capabilities(None, self.base.caps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs_ids() -> (u32, u32) {
        // Setting an invalid id changes nothing and returns the current one.
        (devns_sys::creds::set_fsuid(u32::MAX), devns_sys::creds::set_fsgid(u32::MAX))
    }

    /// Needs root (fails otherwise unless the opt-out is set): runs in a
    /// thread of its own, whose credentials no other test shares.
    #[test]
    fn a_caller_s_identity_is_taken_on_and_given_back_exactly() {
        if !rustix::process::geteuid().is_root() {
            assert!(
                std::env::var_os("DEVNS_TEST_SKIP_PRIVILEGED").is_some_and(|v| v == "1"),
                "this test needs root: run as root, or set DEVNS_TEST_SKIP_PRIVILEGED=1"
            );
            eprintln!("SKIPPED: this test needs root");
            return;
        }
        std::thread::spawn(|| {
            let base = Base::of_this_thread().expect("base");
            let before = rustix::thread::capabilities(None).expect("caps");
            let umask_before = rustix::process::umask(Mode::from_raw_mode(0o022));
            rustix::process::umask(umask_before);
            for groups in [vec![], vec![100_005, 100_010]] {
                let c = Creds { fsuid: 100_001, fsgid: 100_002, groups: groups.clone(), umask: 0o007, cap_eff: 0 };
                {
                    let _g = AsCaller::become_(&c, &base).expect("become");
                    assert_eq!(fs_ids(), (100_001, 100_002));
                    let now = rustix::thread::capabilities(None).expect("caps");
                    assert_eq!(now.effective & FS_CAPS, CapabilitySet::MKNOD, "only CAP_MKNOD of the fs caps");
                    assert_eq!(now.effective - FS_CAPS, before.effective - FS_CAPS, "other caps untouched");
                    assert_eq!(rustix::process::getgroups().expect("groups").len(), groups.len());
                    let m = rustix::process::umask(Mode::from_raw_mode(0o007));
                    assert_eq!(m.bits(), 0o007);
                }
                assert_eq!(fs_ids(), (0, 0));
                assert_eq!(rustix::thread::capabilities(None).expect("caps"), before);
                assert!(rustix::process::getgroups().expect("groups").is_empty());
                let m = rustix::process::umask(umask_before);
                assert_eq!(m, umask_before);
            }
        })
        .join()
        .expect("the test thread");
    }
}
