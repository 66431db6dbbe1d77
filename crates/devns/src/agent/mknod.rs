//! `mknod`/`mknodat` of a device, made by the agent where the caller's own
//! call would have made it, as the caller, once the policy allows it.

use super::caller::Caller;
use super::{Answer, PATH_MAX, Policy, refuse};
use devns_core::seccomp::{self, CAP_MKNOD, Creds, NR_MKNOD};
use devns_core::{DevId, Kind};
use devns_sys::seccomp::Notif;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::thread::{CapabilitySet, CapabilitySets};

const AT_FDCWD: i32 = -100;

/// The device `mknod`'s arguments name, or `None` for a FIFO, socket or
/// file (which the filter lets through; a caller racing the filter with a
/// changed mode gets the kernel's own answer).
pub(super) fn device_of(n: &Notif) -> Option<DevId> {
    let a = n.data.args;
    let (mode, dev) = if n.data.nr as u32 == NR_MKNOD { (a[1], a[2]) } else { (a[2], a[3]) };
    let kind = match mode as u32 & seccomp::S_IFMT {
        seccomp::S_IFCHR => Kind::Char,
        seccomp::S_IFBLK => Kind::Block,
        _ => return None,
    };
    let (major, minor) = seccomp::decode_dev(dev);
    Some(DevId::new(kind, major, minor))
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
    if !c.creds.has_cap(CAP_MKNOD) {
        return refuse(c.pid, Some(ns), "mknod", "no CAP_MKNOD in its namespace", Errno::PERM);
    }
    if !policy.may_have(ns, dev) {
        let why = format!("{dev} is neither global nor owned by the namespace");
        return refuse(c.pid, Some(ns), "mknod", &why, Errno::PERM);
    }
    let (parent, name) = match resolve_parent(&c, dirfd, &path) {
        Ok(p) => p,
        Err(Errno::PERM) => {
            return refuse(c.pid, Some(ns), "mknod", "its directory lies outside its root", Errno::PERM);
        }
        Err(e) => {
            tracing::debug!(pid = c.pid, errno = %e, dirfd, "mknod: cannot resolve the path");
            return Answer::Done(Err(e));
        }
    };
    let Ok(at) = rustix::fs::statx(&parent, "", AtFlags::EMPTY_PATH, MNT_ID_UNIQUE) else {
        return Answer::Done(Err(Errno::NOENT));
    };
    let in_view = policy.view(ns).is_some_and(|v| {
        rustix::fs::fstat(v).is_ok_and(|s| s.st_dev == rustix::fs::makedev(at.stx_dev_major, at.stx_dev_minor))
    });
    if !in_view && !nodes_work_in(&parent, &at) {
        let why = "device nodes do not work on that filesystem (nodev or mounted in a user namespace)";
        return refuse(c.pid, Some(ns), "mknod", why, Errno::PERM);
    }
    let ft = if dev.kind == Kind::Char { FileType::CharacterDevice } else { FileType::BlockDevice };
    let perm = Mode::from_raw_mode(mode as u32 & 0o7777);
    let name = String::from_utf8_lossy(&name).into_owned();
    let r = match AsCaller::become_(&c.creds, base) {
        Ok(_as_caller) => {
            rustix::fs::mknodat(&parent, name.as_str(), ft, perm, rustix::fs::makedev(dev.major, dev.minor))
        }
        Err(e) => Err(e),
    };
    Answer::Done(r)
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
pub(super) fn openat2(dir: impl AsFd, path: &str, flags: OFlags, how: ResolveFlags) -> Result<OwnedFd, Errno> {
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
fn resolve_parent(c: &Caller<'_>, dirfd: i32, path: &[u8]) -> Result<(OwnedFd, Vec<u8>), Errno> {
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
    let dir_str = std::str::from_utf8(dir_part).map_err(|_| Errno::INVAL)?;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let in_root = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let root = c.dir("root")?;
    let parent = if path.starts_with(b"/") {
        openat2(&root, if dir_str.is_empty() { "." } else { dir_str }, flags, in_root)?
    } else {
        let (base, link) = base_dir(c, dirfd)?;
        if !inside(&base, &root)? {
            return Err(Errno::PERM);
        }
        if dir_str.is_empty() {
            base
        } else {
            match openat2(&base, dir_str, flags, ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS) {
                // `..` above the base, or an absolute symlink: resolve the
                // whole path from the caller's root instead.
                Err(Errno::XDEV) => {
                    let (base_path, root_path) = (c.link(&link)?, c.link("root")?);
                    let (b, r) = (base_path.to_bytes(), root_path.to_bytes());
                    let rel = if r == b"/" { b } else { b.strip_prefix(r).ok_or(Errno::PERM)? };
                    let full = format!("{}/{}", String::from_utf8_lossy(rel), dir_str);
                    openat2(&root, full.as_str(), flags, in_root)?
                }
                r => r?,
            }
        }
    };
    Ok((parent, name.to_vec()))
}

/// `STATX_MNT_ID_UNIQUE` (Linux 6.8, not in rustix yet): a mount id never
/// reused, so a remembered answer cannot be taken for a later mount's.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;
pub const MNT_ID_UNIQUE: rustix::fs::StatxFlags = rustix::fs::StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE);

/// Whether device nodes on the filesystem of `dir` (whose `statx` with
/// [`MNT_ID_UNIQUE`] is `at`) work for the caller: not `nodev`, and not
/// mounted inside a user namespace (whose nodes do not open there, and no
/// interface says so). The latter is found out once per mount with a probe,
/// then remembered.
pub fn nodes_work_in(dir: &OwnedFd, at: &rustix::fs::Statx) -> bool {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    /// Mounts remembered at most; a container making mounts without end
    /// costs a probe each, not memory.
    const SEEN_MAX: usize = 4096;
    static SEEN: OnceLock<Mutex<HashMap<u64, bool>>> = OnceLock::new();
    match rustix::fs::fstatvfs(dir) {
        Ok(s) if s.f_flag.contains(rustix::fs::StatVfsMountFlags::NODEV) => return false,
        Ok(_) => {}
        Err(_) => return false,
    }
    // On an older kernel, probe every time rather than trust a reused id.
    let key = (at.stx_mask & STATX_MNT_ID_UNIQUE != 0).then_some(at.stx_mnt_id);
    let seen = SEEN.get_or_init(Default::default);
    if let Some(v) = key.and_then(|k| seen.lock().ok()?.get(&k).copied()) {
        return v;
    }
    let v = probe(dir);
    if let (Some(k), Ok(mut m)) = (key, seen.lock()) {
        if m.len() >= SEEN_MAX {
            m.clear();
        }
        m.insert(k, v);
    }
    v
}

fn probe(dir: &OwnedFd) -> bool {
    // Host root can make an inode only on a filesystem whose owning user
    // namespace maps host root: the host's own. One mounted inside a user
    // namespace answers EOVERFLOW, and its nodes do not open there.
    let name = format!(".devns-probe-{}", std::process::id());
    let null = rustix::fs::makedev(1, 3);
    let usable =
        match rustix::fs::mknodat(dir, name.as_str(), FileType::CharacterDevice, Mode::from_raw_mode(0o600), null) {
            Ok(()) => {
                let _ = rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty());
                true
            }
            Err(Errno::OVERFLOW) => false,
            // Read-only, full, a name in the way: the real mknod reports that.
            Err(_) => true,
        };
    tracing::debug!(usable, "probed a filesystem for device nodes");
    usable
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
