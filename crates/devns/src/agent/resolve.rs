//! Where a caller's `mknod` would make its node: the directory that holds
//! the path's last component, resolved as the caller's own lookup resolves
//! it (with its search permission on the way, and its capabilities where
//! the kernel counts them, from its root, its working directory or a
//! directory fd of its own) but never leaving its root.
//!
//! The kernel resolves (`openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`);
//! what it cannot resolve for the agent although the caller's own call
//! would (procfs's `self`, magic links) is walked by [`super::walk`]. A
//! relative path's starting directory, and where a walk ends, are checked
//! to lie inside the caller's root.

use super::caller::Caller;
use super::identity::{AsCaller, Base};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

pub(super) const AT_FDCWD: i32 = -100;

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
pub(super) fn resolve_parent(
    c: &mut Caller<'_>,
    base: &Base,
    dirfd: i32,
    path: &[u8],
) -> Result<(OwnedFd, Vec<u8>), Errno> {
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
    let from = start(c, dirfd, absolute, &root)?;
    // Looked up as the caller: its search permission on every directory
    // on the way, as in its own lookup.
    let looked_up = AsCaller::become_(&c.creds, base).and_then(|_as_caller| resolve_dir(c, &root, from, dir_part));
    let parent = match looked_up {
        // Through procfs's `self` or a magic link, perhaps, which the
        // caller's own lookup follows, or past a directory its ids may not
        // search but a capability of its may: walked as it would walk
        // them, each step checked by the kernel.
        Err(Errno::NOENT | Errno::LOOP) if !dir_part.is_empty() => walked(c, base, &root, dirfd, absolute, dir_part)?,
        Err(Errno::ACCESS) if !dir_part.is_empty() && devns_core::dac::may_count(&c.creds) => {
            walked(c, base, &root, dirfd, absolute, dir_part)?
        }
        r => r?,
    };
    Ok((parent, name.to_vec()))
}

/// Where a relative path starts, checked (as devns) to lie in the root;
/// `None` for an absolute one.
fn start(c: &Caller<'_>, dirfd: i32, absolute: bool, root: &OwnedFd) -> Result<Option<(OwnedFd, String)>, Errno> {
    if absolute {
        return Ok(None);
    }
    let (base, link) = base_dir(c, dirfd)?;
    if !inside(&base, root)? {
        return Err(Errno::PERM);
    }
    Ok(Some((base, link)))
}

/// The directory `dir_part` names, walked ([`super::walk`]) as the caller,
/// checked to lie inside its root.
fn walked(
    c: &mut Caller<'_>,
    base: &Base,
    root: &OwnedFd,
    dirfd: i32,
    absolute: bool,
    dir_part: &[u8],
) -> Result<OwnedFd, Errno> {
    let from = match start(c, dirfd, absolute, root)? {
        Some((b, _)) => b,
        None => c.dir("root")?,
    };
    let creds = c.creds.clone();
    let dir = {
        let as_caller = AsCaller::become_(&creds, base)?;
        super::walk::walk(c, &as_caller, root, from, dir_part)?
    };
    if !inside(&dir, root)? {
        return Err(Errno::PERM);
    }
    Ok(dir)
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
