//! A caller's path walked one component at a time, as its own lookup
//! would walk it, for the paths `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` cannot resolve for the agent although the
//! caller's own call would: those through procfs's `self` and
//! `thread-self` (which name the reading process, and the agent is in no
//! pid namespace of a container's procfs) and through procfs's magic links
//! (`/proc/PID/root`, `cwd`, `fd/N`), which the kernel never follows below
//! a root; and those past a directory the caller's ids may not search
//! but a capability of its may (`CAP_DAC_READ_SEARCH`, `CAP_DAC_OVERRIDE`
//! where they count: [`super::identity`]), which `openat2` as the caller
//! refuses. Tried only when that resolution failed with `ENOENT` or
//! `ELOOP`, or with `EACCES` for a caller with such a capability, so it
//! changes only answers that differed from native ones.
//!
//! Each component is opened `O_PATH | O_NOFOLLOW` from the directory held
//! so far and looked at through its own fd (no name is looked up twice);
//! `..` stops at the caller's root; a magic link is followed by the kernel
//! for the agent, and only of the caller's own process, or of another in
//! its user namespace or one below it when it has `CAP_SYS_PTRACE` there
//! (what lets its root trace them: elsewhere the caller's own lookup fails
//! with `EACCES`, and so does this walk). Where the walk ends up is checked to lie
//! inside the caller's root by the caller of this module, as for a dirfd.

use super::caller::Caller;
use super::identity::AsCaller;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use std::collections::VecDeque;

/// The kernel's limit of symlinks followed in one lookup.
const MAX_LINKS: usize = 40;
/// Components walked at most (a path and 40 link targets of 4 KiB could
/// make 80,000 `..`s): the agent serves other callers too.
const MAX_STEPS: usize = 4096;
/// The inode of a procfs's root directory.
const PROC_ROOT_INO: u64 = 1;

fn open(dir: impl AsFd, name: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(dir, name, flags | OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
}

/// A `/proc` file's text (the first 16 KiB: the lines read come early).
fn read(f: &OwnedFd) -> Result<Vec<u8>, Errno> {
    let mut text = vec![0u8; 16 * 1024];
    let n = rustix::io::pread(f, &mut text, 0)?;
    text.truncate(n);
    Ok(text)
}

fn same(a: &OwnedFd, b: &OwnedFd) -> Result<bool, Errno> {
    let (x, y) = (rustix::fs::fstat(a)?, rustix::fs::fstat(b)?);
    Ok((x.st_dev, x.st_ino) == (y.st_dev, y.st_ino))
}

fn on_procfs(fd: &OwnedFd) -> bool {
    rustix::fs::fstatfs(fd).is_ok_and(|s| s.f_type == libc::PROC_SUPER_MAGIC)
}

fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = Vec<u8>> + '_ {
    path.split(|b| *b == b'/').filter(|c| !c.is_empty() && *c != b".").map(<[u8]>::to_vec)
}

/// The directory `path` names, walked from `start` (or from `root` when
/// it is absolute) inside `root`.
/// Each step is taken as the caller (`as_caller`), with the capabilities
/// counted for it over the directory it looks a name up in.
pub(super) fn walk(
    c: &mut Caller<'_>,
    as_caller: &AsCaller<'_>,
    root: &OwnedFd,
    start: OwnedFd,
    path: &[u8],
) -> Result<OwnedFd, Errno> {
    // A second fd of the same directory, which needs no lookup (and so no
    // search permission) at all.
    let dup = |fd: &OwnedFd| rustix::io::fcntl_dupfd_cloexec(fd, 0);
    let mut cur = if path.starts_with(b"/") { dup(root)? } else { start };
    let mut todo: VecDeque<Vec<u8>> = components(path).collect();
    let mut links = 0;
    // The `/proc/PID` directory the walk is in, whose magic links it may
    // meet, and whether PID is the caller's own process.
    let mut process: Option<(OwnedFd, bool)> = None;
    let mut steps = 0;
    while let Some(name) = todo.pop_front() {
        steps += 1;
        if steps > MAX_STEPS {
            return Err(Errno::LOOP);
        }
        if name == b".." {
            if !same(&cur, root)? {
                cur = as_caller.over(c, &cur, || open(&cur, b"..", OFlags::DIRECTORY))?;
            }
            process = None;
            continue;
        }
        if rustix::fs::fstat(&cur).map(|s| FileType::from_raw_mode(s.st_mode))? != FileType::Directory {
            return Err(Errno::NOTDIR);
        }
        let fd = as_caller.over(c, &cur, || open(&cur, &name, OFlags::NOFOLLOW))?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
            if on_procfs(&cur)
                && rustix::fs::fstat(&cur)?.st_ino == PROC_ROOT_INO
                && name.iter().all(u8::is_ascii_digit)
            {
                let own = caller_ids_in(&cur, c).is_ok_and(|(tgid, _)| tgid.to_string().as_bytes() == name);
                process = Some((dup(&fd)?, own));
            }
            cur = fd;
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(Errno::LOOP);
        }
        if on_procfs(&cur) {
            if rustix::fs::fstat(&cur)?.st_ino == PROC_ROOT_INO && (name == b"self" || name == b"thread-self") {
                let (tgid, tid) = caller_ids_in(&cur, c)?;
                let mut to: Vec<Vec<u8>> = vec![tgid.to_string().into_bytes()];
                if name == b"thread-self" {
                    to.extend([b"task".to_vec(), tid.to_string().into_bytes()]);
                }
                to.into_iter().rev().for_each(|n| todo.push_front(n));
                continue;
            }
            if rustix::fs::fstat(&cur)?.st_ino != PROC_ROOT_INO {
                // A magic link: the kernel follows it, for a process the
                // caller may trace.
                let Some((p, own)) = &process else { return Err(Errno::LOOP) };
                if !own && !may_trace(c, p)? {
                    return Err(Errno::ACCESS);
                }
                cur = as_caller.over(c, &cur, || open(&cur, &name, OFlags::empty()))?;
                process = None;
                continue;
            }
        }
        let target = rustix::fs::readlinkat(&fd, "", Vec::new())?;
        let target = target.to_bytes();
        if target.starts_with(b"/") {
            cur = dup(root)?;
            process = None;
        }
        components(target).rev().for_each(|n| todo.push_front(n));
    }
    if rustix::fs::fstat(&cur).map(|s| FileType::from_raw_mode(s.st_mode))? != FileType::Directory {
        return Err(Errno::NOTDIR);
    }
    Ok(cur)
}

/// The caller's process and thread ids in the pid namespace of the procfs
/// whose root is `proc_root`: that of its pid 1, which is the init of the
/// namespace it shows. `ENOENT` (as natively) when the caller is not in it.
fn caller_ids_in(proc_root: &OwnedFd, c: &Caller<'_>) -> Result<(u32, u32), Errno> {
    let shown = rustix::fs::openat(proc_root, "1/ns/pid", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|_| Errno::NOENT)?;
    let shown = rustix::fs::fstat(&shown)?;
    let mut ns = c.open_at("ns/pid", OFlags::RDONLY)?;
    for depth in 0..33 {
        let s = rustix::fs::fstat(&ns)?;
        if (s.st_dev, s.st_ino) == (shown.st_dev, shown.st_ino) {
            let status = read(&c.open_at("status", OFlags::RDONLY)?)?;
            return devns_core::nodes::ids_in_pid_ns(&status, depth).ok_or(Errno::NOENT);
        }
        ns = devns_sys::ns::ns_parent(&ns).map_err(|_| Errno::NOENT)?;
    }
    Err(Errno::NOENT)
}

/// Whether the caller may follow the magic links of another process, that
/// of `/proc/PID` directory `p`: a dumpable one (else the kernel wants
/// `CAP_SYS_PTRACE` over the namespace of its memory, which a container
/// is not shown to have: refused) whose ids are its fs ids, or with
/// `CAP_SYS_PTRACE` in its user namespace, one in that namespace or below.
fn may_trace(c: &mut Caller<'_>, p: &OwnedFd) -> Result<bool, Errno> {
    let file = rustix::fs::openat(p, "status", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let status = read(&file)?;
    // A file's, not the directory's: the kernel shows `/proc/PID` itself
    // as the process's effective ids whatever its dumpability.
    let owner = rustix::fs::fstat(&file)?;
    if !devns_core::nodes::dumpable(&status, owner.st_uid, owner.st_gid) {
        return Ok(false);
    }
    if devns_core::nodes::ids_match(&status, c.creds.fsuid, c.creds.fsgid) {
        return Ok(true);
    }
    if !c.creds.has_cap(devns_core::seccomp::CAP_SYS_PTRACE) {
        return Ok(false);
    }
    let mine = c.user_ns()?;
    let mut ns = rustix::fs::openat(p, "ns/user", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    for _ in 0..33 {
        if devns_sys::ns::ns_id(&ns)? == mine.0 {
            return Ok(true);
        }
        match devns_sys::ns::ns_parent(&ns) {
            Ok(up) => ns = up,
            Err(_) => return Ok(false),
        }
    }
    Ok(false)
}
