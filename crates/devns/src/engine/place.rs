//! A view placed in a process's mount namespace: `at` resolved inside the
//! process's root (and inside `root` there, a container's rootfs before
//! `pivot_root`) with `RESOLVE_IN_ROOT`, never by host path; for a
//! runtime's container, the mounts the runtime made below its old `/dev`
//! (devpts, shm, mqueue, bound nodes) moved onto the view at the same
//! places. Done from a short-lived thread with an `fs_struct` of its own:
//! `setns` moves only it, and the daemon stays where it is.

use anyhow::{Context, Result, bail};
use devns_core::hook::Carry;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxFlags};
use rustix::mount::OpenTreeFlags;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Longest mountinfo read (a container has a few dozen mounts).
const MAX_MOUNTINFO: usize = 4 << 20;

/// Where in the process's root the view goes.
pub(crate) struct Place<'a> {
    pub root: Option<&'a str>,
    pub at: &'a str,
    /// Carry the mounts below the old `at` onto the view.
    pub carry: bool,
    /// The host uid and gid of the container's root, when its namespace
    /// gets udev-format events: its `/run/udev/control` is made as that
    /// root ([`crate::uevents::mark_udev_running`]).
    pub udev: Option<(u32, u32)>,
    /// Give back the `at` the view covers (see [`carry_covered`]).
    pub keep_covered: bool,
}

/// The root and mount namespace of `pid`.
fn root_and_mntns(pid: i32) -> Result<(OwnedFd, OwnedFd)> {
    let open = |p: String, flags| rustix::fs::open(&p, flags | OFlags::CLOEXEC, Mode::empty());
    let Ok(root) = open(format!("/proc/{pid}/root"), OFlags::PATH | OFlags::DIRECTORY) else {
        bail!("cannot open the root of process {pid}");
    };
    let Ok(mntns) = open(format!("/proc/{pid}/ns/mnt"), OFlags::RDONLY) else {
        bail!("cannot open the mount namespace of process {pid}");
    };
    Ok((root, mntns))
}

/// Mounts a new bind of `view` at `place` in the mount namespace of `pid`
/// once `gate` (the namespace's device policy put in force) succeeded;
/// with `keep_covered`, gives back what it covers there. The steps before
/// the mount (a thread in that namespace, `at` resolved, the runtime's
/// mounts there found) run while `gate` runs on the calling thread. A
/// failed `gate` is the error, and nothing is mounted.
pub(crate) fn mount_into_after(
    pid: i32,
    view: &OwnedFd,
    place: &Place<'_>,
    gate: impl FnOnce() -> Result<()>,
) -> Result<Option<OwnedFd>> {
    let tree = rustix::mount::open_tree(
        view,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH,
    )?;
    let at = place.at;
    let (go, gone) = std::sync::mpsc::sync_channel::<bool>(1);
    let (placed, gated) = in_mount_ns_beside(
        pid,
        move |root, me| place_view(root, me, &tree, place, move || gone.recv() == Ok(true)),
        || {
            let g = gate();
            // The worker may have stopped before it waited.
            let _ = go.send(g.is_ok());
            g
        },
    );
    gated?;
    placed.with_context(|| format!("cannot mount the view at {at} in process {pid}'s mount namespace"))
}

/// Runs `f` with the root of `pid` and a `/proc` entry of the running
/// thread, in `pid`'s mount namespace: on a thread of its own, as `setns`
/// into a mount namespace moves only the calling thread, once it has an
/// `fs_struct` of its own. `f`'s error is text.
fn in_mount_ns<T: Send>(pid: i32, f: impl FnOnce(&OwnedFd, &OwnedFd) -> Result<T, String> + Send) -> Result<T> {
    in_mount_ns_beside(pid, f, || ()).0
}

/// [`in_mount_ns`], with `meanwhile` run on the calling thread while `f`
/// runs; `meanwhile` runs also when `pid`'s namespace cannot be had.
fn in_mount_ns_beside<T: Send, U>(
    pid: i32,
    f: impl FnOnce(&OwnedFd, &OwnedFd) -> Result<T, String> + Send,
    meanwhile: impl FnOnce() -> U,
) -> (Result<T>, U) {
    let (root, mntns) = match root_and_mntns(pid) {
        Ok(fds) => fds,
        Err(e) => return (Err(e), meanwhile()),
    };
    let (done, beside) = devns_sys::procstate::on_own_fs_thread_beside(
        || {
            // The thread's own /proc entry, opened while it is in devns's
            // namespace: read after setns, it tells the new namespace's mounts.
            let me = rustix::fs::open(
                "/proc/thread-self",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(step("cannot open /proc/thread-self"))?;
            devns_sys::procstate::enter_for_good(&mntns, devns_sys::procstate::Namespace::Mount)
                .map_err(step("cannot enter the mount namespace"))?;
            f(&root, &me)
        },
        meanwhile,
    );
    let done = match done {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(why)) => Err(anyhow::anyhow!(why)),
        Err(e) => Err(anyhow::anyhow!(e.to_string())),
    };
    (done, beside)
}

/// An errno of step `what` as text.
fn step(what: &str) -> impl FnOnce(rustix::io::Errno) -> String {
    let what = what.to_owned();
    move |e| format!("{what}: {e}")
}

/// Moves each of `carried` (the runtime's mounts below the old `/dev`)
/// to its place on `view`.
fn carry_all(view: &OwnedFd, carried: Vec<(OwnedFd, PathBuf)>) -> Result<(), String> {
    for (fd, rel) in carried {
        carry(view, &fd, &rel).map_err(|e| format!("cannot carry the runtime's mount {}: {e}", rel.display()))?;
    }
    Ok(())
}

/// On the helper thread, in the namespace: resolves, finds the runtime's
/// mounts, and once `go` says so, mounts and carries.
fn place_view(
    proc_root: &OwnedFd,
    me: &OwnedFd,
    view: &OwnedFd,
    place: &Place<'_>,
    go: impl FnOnce() -> bool,
) -> Result<Option<OwnedFd>, String> {
    let dir = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let in_root = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let rootfs = match place.root {
        Some(r) => Some(
            rustix::fs::openat2(proc_root, r, dir, Mode::empty(), in_root)
                .map_err(step(&format!("cannot open the container's root {r}")))?,
        ),
        None => None,
    };
    let base = rootfs.as_ref().unwrap_or(proc_root);
    let target = rustix::fs::openat2(base, place.at, dir, Mode::empty(), in_root)
        .map_err(step(&format!("cannot open {}", place.at)))?;
    let carried = if place.carry { take_carried(me, &target)? } else { vec![] };
    if !go() {
        return Err("not mounted: the namespace's device policy is not in force".into());
    }
    if !carried.is_empty() || place.keep_covered {
        // Mounts below a shared one cannot be moved (LXC's /dev is
        // shared): the old /dev, covered by the view from now on, stops
        // propagating.
        make_private_if_mount(&target).map_err(step("cannot make the old /dev private"))?;
    }
    devns_sys::mount::move_onto(view, &target).map_err(step("cannot mount the view"))?;
    // The view's fd is its mounted root now.
    carry_all(view, carried)?;
    if let Some((uid, gid)) = place.udev {
        // Last, and for good: this thread ends here. As the container's
        // root, nothing is made where it could not make it itself.
        let as_root =
            devns_sys::procstate::set_ids_for_good(rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
        if let Err(e) = as_root.and_then(|()| crate::uevents::mark_udev_running(base.as_fd()).map(|_| ())) {
            tracing::debug!(error = %e, "cannot make the container's /run/udev/control");
        }
    }
    Ok(place.keep_covered.then_some(target))
}

/// Carries onto the view at `at` in the root of `pid` the mounts made
/// since on `covered`, the `at` that view covers: an LXC container's
/// devpts, ttys and console, which LXC makes after its autodev hook
/// through a directory fd of the old `/dev`. `view_dev` is the view's
/// device number: a different filesystem at `at` is refused.
pub(crate) fn carry_covered(pid: i32, covered: &OwnedFd, view_dev: u64, at: &str) -> Result<()> {
    in_mount_ns(pid, |root, me| {
        let in_root = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        let dir = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let view =
            rustix::fs::openat2(root, at, dir, Mode::empty(), in_root).map_err(step(&format!("cannot open {at}")))?;
        let dev = rustix::fs::fstat(&view).map_err(step(&format!("cannot stat {at}")))?.st_dev;
        if dev != view_dev {
            return Err(format!("{at} is not the namespace's view any more"));
        }
        // Made shared again since (LXC shares the container's mounts
        // before its pivot_root), and mounts below a shared one cannot be
        // moved.
        make_private_if_mount(covered).map_err(step("cannot make the old /dev private"))?;
        carry_all(&view, take_carried(me, covered)?)
    })
    .with_context(|| format!("cannot carry the mounts made below the old {at} in process {pid}'s mount namespace"))
}

/// Makes `fd`'s mount private when `fd` is its root (a plain directory
/// has no propagation of its own).
fn make_private_if_mount(fd: &OwnedFd) -> rustix::io::Result<()> {
    let stx = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)?;
    if !stx.stx_attributes.contains(rustix::fs::StatxAttributes::MOUNT_ROOT) {
        return Ok(());
    }
    devns_sys::mount::make_private(fd)
}

fn mnt_id(fd: BorrowedFd<'_>) -> rustix::io::Result<u64> {
    Ok(rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?.stx_mnt_id)
}

/// The runtime's mounts on `target` (an fd of its `/dev`), each opened
/// and checked to be the mount its mountinfo line names.
fn take_carried(me: &OwnedFd, target: &OwnedFd) -> Result<Vec<(OwnedFd, PathBuf)>, String> {
    let step = |what: &'static str| move |e: rustix::io::Errno| format!("{what}: {e}");
    let info = rustix::fs::openat(me, "mountinfo", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(step("cannot open the namespace's mountinfo"))?;
    let text = read_bounded(&info).map_err(step("cannot read the namespace's mountinfo"))?;
    let link = rustix::fs::readlinkat(me, format!("fd/{}", target.as_raw_fd()), Vec::new())
        .map_err(step("cannot read where /dev is"))?;
    let dev_path = Path::new(std::ffi::OsStr::from_bytes(link.as_bytes()));
    let dev_id = mnt_id(target.as_fd()).map_err(step("cannot stat /dev"))?;
    let dev_id = u32::try_from(dev_id).map_err(|_| "a mount id beyond 32 bits".to_owned())?;
    let mounts: Vec<_> = devns_core::mountinfo::mounts(&text).collect();
    let mut out = Vec::new();
    for Carry { id, rel } in devns_core::hook::carried(&mounts, dev_id, dev_path) {
        let beneath = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let fd = rustix::fs::openat2(
            target,
            &rel,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            beneath,
        )
        .map_err(|e| format!("cannot open the runtime's mount {}: {e}", rel.display()))?;
        // Another mount stacked on it since: what is seen there is carried
        // with it; a different one at its place is refused.
        if mnt_id(fd.as_fd()).ok() != Some(u64::from(id)) {
            return Err(format!("the runtime's mount {} changed while devns read it", rel.display()));
        }
        out.push((fd, rel));
    }
    Ok(out)
}

fn read_bounded(fd: &OwnedFd) -> rustix::io::Result<Vec<u8>> {
    let mut text = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = rustix::io::read(fd, &mut chunk)?;
        if n == 0 || text.len() + n > MAX_MOUNTINFO {
            return if n == 0 { Ok(text) } else { Err(rustix::io::Errno::FBIG) };
        }
        text.extend_from_slice(&chunk[..n]);
    }
}

/// Moves `src` (a mount of the runtime's) to `rel` on the view: its
/// mountpoint made there as a directory or an empty file like the mount's
/// root (and its parents as directories), unless the view holds a node
/// at that place (the view's own node of the device stands; the runtime's
/// bind stays covered). Nothing on the way is followed.
fn carry(view: &OwnedFd, src: &OwnedFd, rel: &Path) -> rustix::io::Result<()> {
    let beneath = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let kind = |fd: BorrowedFd<'_>| rustix::fs::fstat(fd).map(|s| FileType::from_raw_mode(s.st_mode));
    let is_dir = kind(src.as_fd())? == FileType::Directory;
    let dir = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut at = rustix::io::fcntl_dupfd_cloexec(view, 0)?;
    let names: Vec<_> = rel.components().map(|c| c.as_os_str().to_owned()).collect();
    let (last, parents) = names.split_last().ok_or(rustix::io::Errno::INVAL)?;
    for name in parents {
        match rustix::fs::mkdirat(&at, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
        at = rustix::fs::openat2(&at, name, dir, Mode::empty(), beneath)?;
    }
    // openat2 takes a mode only with O_CREAT.
    let open = |flags: OFlags| {
        let mode = if flags.contains(OFlags::CREATE) { Mode::from_raw_mode(0o644) } else { Mode::empty() };
        rustix::fs::openat2(&at, last, flags | OFlags::NOFOLLOW | OFlags::CLOEXEC, mode, beneath)
    };
    let dst = match open(OFlags::PATH) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => {
            if is_dir {
                rustix::fs::mkdirat(&at, last, Mode::from_raw_mode(0o755))?;
            } else {
                drop(open(OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL)?);
            }
            open(OFlags::PATH)?
        }
        Err(e) => return Err(e),
    };
    if matches!(kind(dst.as_fd())?, FileType::CharacterDevice | FileType::BlockDevice) {
        return Ok(());
    }
    devns_sys::mount::move_onto(src, &dst)
}
