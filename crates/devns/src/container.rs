//! Both sides of starting a container: the keeper's (mapping ids, handing
//! over the mounts) and the child's (mounting them inside its namespaces and
//! running the command under a minimal init).
//!
//! The child is pid 1 of its pid namespace, in a cgroup namespace rooted
//! at its own cgroup. It stays there as init: it forwards signals to the
//! command, reaps orphans, and exits with the command's status, which ends
//! every other process of the namespace.

use anyhow::{Context, Result, anyhow, bail};
use devns_core::devmounts::{Attrs, ShmSize};
use devns_core::idmap::IdMap;
use devns_core::registry::NsId;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MountPropagationFlags, UnmountFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketFlags, SocketType,
};
use rustix::process::{Pid, Signal};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};

mod init;
mod root;
pub mod tty;

/// Signals `devns run` relays to the command.
pub const FORWARDED_SIGNALS: &[i32] =
    &[libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH];

const GO: &[u8] = b"go";
const OK: &[u8] = b"ok";
const ERR: &[u8] = b"err:";
/// Largest message on the keeper/child channel.
const MAX_MSG: usize = 4096;

/// The root's directories that hold the container's own mounts alone
/// (its view, `/proc`, `/tmp`): what it unmounts there must uncover
/// nothing of the host's.
const OWN: [&str; 3] = ["dev", "proc", "tmp"];

/// A root filesystem given with `--rootfs`, checked on the host side.
pub struct RootFs {
    pub path: PathBuf,
}

/// Checks `path` and makes sure it has the directories devns mounts on.
/// They are resolved inside the rootfs, so a symlink there cannot point
/// devns at a host directory.
pub fn prepare_rootfs(path: &Path) -> Result<RootFs> {
    let path = std::fs::canonicalize(path).with_context(|| format!("bad --rootfs {}", path.display()))?;
    let dir = rustix::fs::open(&path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .with_context(|| format!("bad --rootfs {}: not a directory", path.display()))?;
    let mountinfo = std::fs::read("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    if let Some(m) = covered_mount(&mountinfo, &path) {
        bail!(
            "bad --rootfs {}: {} is a mount point, which the container would uncover by unmounting its own mount above it",
            path.display(),
            m.display()
        );
    }
    for sub in OWN {
        match open_in(&dir, sub) {
            Ok(_) => {}
            Err(rustix::io::Errno::NOENT) => rustix::fs::mkdirat(&dir, sub, Mode::from_raw_mode(0o755))
                .with_context(|| format!("cannot create {sub} in --rootfs {}", path.display()))?,
            Err(e) => bail!("bad --rootfs {}: {sub}: {e}", path.display()),
        }
    }
    Ok(RootFs { path })
}

/// A mount point in `mountinfo` at or below one of `root`'s [`OWN`]
/// directories: the rootfs's copy of it would lie under the container's own
/// mount there, locked, for it to uncover.
fn covered_mount(mountinfo: impl AsRef<[u8]>, root: &Path) -> Option<PathBuf> {
    devns_core::mountinfo::mounts(mountinfo.as_ref())
        .map(|m| m.mount_point)
        .find(|m| OWN.iter().any(|o| m.starts_with(root.join(o))))
}

/// Opens directory `path` below `root`, resolving it as if `root` were `/`.
fn open_in(root: impl AsFd, path: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        root,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
}

/// The keeper/child channel: a close-on-exec seqpacket pair.
pub fn channel() -> Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
        .context("cannot create the channel to the container")
}

/// Writes the id maps of `pid`'s new user namespace.
pub fn write_maps(pid: i32, uids: &IdMap, gids: &IdMap) -> Result<()> {
    for (file, map) in [("uid_map", uids), ("gid_map", gids)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, map.to_string()).with_context(|| format!("cannot write {path}"))?;
    }
    Ok(())
}

/// Writes the child's id maps and returns its user namespace's id. The pid
/// is the unreaped child's, so it cannot name another process.
pub fn map_ids(pid: Pid, uids: &IdMap, gids: &IdMap) -> Result<NsId> {
    let pid = pid.as_raw_nonzero().get();
    write_maps(pid, uids, gids)?;
    crate::host::user_ns_of(pid).context("cannot read the container's user namespace id")
}

/// Hands the mounts to the child and waits until it has set itself up;
/// returns the listener of the seccomp filter it installed, and the master
/// of its pty when it has one.
pub fn start(sock: &OwnedFd, fds: &[BorrowedFd<'_>]) -> Result<(OwnedFd, Option<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
        bail!("too many fds for the container channel");
    }
    rustix::net::sendmsg(sock, &[IoSlice::new(GO)], &mut cmsg, SendFlags::empty())
        .context("cannot hand the mounts to the container")?;
    let mut buf = [0u8; MAX_MSG];
    let mut got = Vec::new();
    let n = rustix::io::retry_on_intr(|| crate::wire::recv_with_fds(sock.as_fd(), &mut buf, &mut got))
        .context("reading the container's status")?;
    match &buf[..n] {
        OK => {
            let mut got = got.into_iter();
            Ok((got.next().context("the container sent no seccomp listener")?, got.next()))
        }
        m if m.starts_with(ERR) => Err(anyhow!("{}", String::from_utf8_lossy(&m[ERR.len()..]))),
        _ => bail!("the container ended during setup"),
    }
}

/// What the child needs; everything else it leaves alone.
pub struct ChildPlan<'a> {
    pub sock: OwnedFd,
    pub rootfs: Option<&'a RootFs>,
    pub hostname: Option<&'a str>,
    pub cmd: &'a [String],
    /// In a network namespace of its own, whose loopback it brings up.
    pub own_net: bool,
    /// What its stdio is: terminals get a pty of the container's own.
    pub outer: &'a tty::Outer,
    /// The size limit of its `/dev/shm`.
    pub shm: ShmSize,
    /// udev-format events are sent to it (config `udev_events`): its
    /// `/run/udev/control` made, so that libudev listens for them.
    pub udev: bool,
}

/// The child's whole life; returns its exit status.
pub fn child_main(plan: ChildPlan<'_>) -> i32 {
    match setup(&plan).and_then(|pty| {
        // Last, so that nothing of the setup is trapped; CMD and all it
        // starts inherit the filter.
        let filter = devns_sys::seccomp::install_with_listener(&crate::agent::filter());
        Ok((filter.context("cannot install the seccomp filter")?, pty))
    }) {
        Ok((listener, pty)) => {
            let fds: Vec<BorrowedFd<'_>> =
                std::iter::once(listener.as_fd()).chain(pty.as_ref().map(|p| p.as_fd())).collect();
            if crate::wire::send_with_fds(plan.sock.as_fd(), OK, &fds).is_err() {
                return 125;
            }
            drop((listener, pty));
            drop(plan.sock);
            init::init(plan.cmd)
        }
        Err(e) => {
            let mut msg = ERR.to_vec();
            msg.extend_from_slice(format!("{e:#}").as_bytes());
            msg.truncate(MAX_MSG);
            let _ = rustix::net::send(&plan.sock, &msg, SendFlags::empty());
            125
        }
    }
}

/// Receives the view and the `/tmp` mount from the keeper.
fn receive_mounts(sock: &OwnedFd) -> Result<(OwnedFd, OwnedFd)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let mut buf = [0u8; 16];
    let msg = rustix::net::recvmsg(sock, &mut [IoSliceMut::new(&mut buf)], &mut cmsg, RecvFlags::CMSG_CLOEXEC)
        .context("waiting for the keeper")?;
    let mut fds: Vec<OwnedFd> = cmsg
        .drain()
        .filter_map(|m| match m {
            RecvAncillaryMessage::ScmRights(fds) => Some(fds),
            _ => None,
        })
        .flatten()
        .collect();
    if &buf[..msg.bytes] != GO || fds.len() != 2 {
        bail!("the keeper went away");
    }
    let tmp = fds.pop().expect("two fds");
    let view = fds.pop().expect("two fds");
    Ok((view, tmp))
}

/// Moves the detached mount `mnt` onto directory `at` below `root`.
fn attach(mnt: impl AsFd, root: impl AsFd, at: &str) -> Result<()> {
    let target = open_in(root, at).with_context(|| format!("cannot open /{at}"))?;
    devns_sys::mount::move_onto(mnt, &target).with_context(|| format!("cannot mount on /{at}"))
}

/// A new filesystem instance made in the child's namespaces (`proc` needs
/// its pid namespace, `mqueue` its IPC namespace, `devpts` gets its own
/// instance owned by its root).
fn new_fs(fstype: &str, flags: &[&str], opts: &[(&str, &str)], attrs: MountAttrFlags) -> Result<OwnedFd> {
    let ctx = || format!("cannot create a {fstype} instance");
    let fs = rustix::mount::fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).with_context(ctx)?;
    for f in flags {
        rustix::mount::fsconfig_set_flag(&fs, *f).with_context(ctx)?;
    }
    for (k, v) in opts {
        rustix::mount::fsconfig_set_string(&fs, *k, *v).with_context(ctx)?;
    }
    rustix::mount::fsconfig_create(&fs).with_context(ctx)?;
    rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).with_context(ctx)
}

/// Mounts the container's own devpts, `/dev/shm` and `/dev/mqueue` on its
/// view (at `dev` below `root`): made here, in its namespaces, so that its
/// devpts and tmpfs are its own instances, owned by its root, and mqueue is
/// its IPC namespace's; they go with its mount namespace. Returns devpts.
fn dev_mounts(root: impl AsFd, shm: ShmSize) -> Result<OwnedFd> {
    let mut pts = None;
    for m in devns_core::devmounts::dev_mounts(shm) {
        let opts: Vec<(&str, &str)> = m.options.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let fs = new_fs(m.fstype, m.flags, &opts, attrs_of(m.attrs))?;
        attach(&fs, &root, &format!("dev/{}", m.at))?;
        if m.at == devns_core::view::PTS_DIR {
            pts = Some(fs);
        }
    }
    pts.context("no devpts among the container's mounts")
}

fn attrs_of(a: Attrs) -> MountAttrFlags {
    let mut f = MountAttrFlags::empty();
    for (on, flag) in [
        (a.nosuid, MountAttrFlags::MOUNT_ATTR_NOSUID),
        (a.nodev, MountAttrFlags::MOUNT_ATTR_NODEV),
        (a.noexec, MountAttrFlags::MOUNT_ATTR_NOEXEC),
    ] {
        if on {
            f |= flag;
        }
    }
    f
}

/// First thing in the child: a session of its own, so that no terminal of
/// the host's is its controlling one, and none of the keeper's fds (its
/// close-on-exec ones: init never execs, and the container can reach
/// init's) nor any inherited terminal above stdio (stdio's are replaced by
/// [`tty::take_pty`]); the channel `sock` to the keeper stays.
fn leave_keeper(sock: BorrowedFd<'_>) -> Result<()> {
    rustix::process::setsid().context("cannot start a session of the container's own")?;
    // SAFETY: the child never returns into the keeper's frames (it exits
    // in `spawn`), so their owners of these fds are never used or dropped;
    // of the keeper's fds it goes on using only `sock`.
    unsafe { devns_sys::fds::close_inherited(&[sock]) }.context("cannot close the keeper's fds")?;
    Ok(())
}

/// Returns the master of the container's pty, when it has one.
fn setup(plan: &ChildPlan<'_>) -> Result<Option<OwnedFd>> {
    leave_keeper(plan.sock.as_fd())?;
    // The keeper has written our id maps before it sends the mounts.
    let (view, tmp) = receive_mounts(&plan.sock)?;
    devns_sys::procstate::set_ids_for_good(rustix::fs::Uid::ROOT, rustix::fs::Gid::ROOT)
        .context("cannot become root of the new user namespace")?;
    // Only now: a change of credentials clears the parent-death signal. Had
    // the keeper died before this, the final status message finds it gone.
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).context("PR_SET_PDEATHSIG")?;
    // The credential change also made init non-dumpable, and so it stays:
    // its memory belongs to the host's user namespace (devns forked it
    // without an exec), so the container's root can neither ptrace it nor
    // write its /proc/1/mem, and cannot clear this parent-death signal to
    // outlive its keeper. (The cost: /proc/1's files are host root's.)
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .context("PR_SET_DUMPABLE")?;
    // A cgroup namespace of its own, rooted at the cgroup it is in: the
    // keeper (or the daemon) moved it into its namespace's cgroup before
    // it sent the mounts, so the container sees that one as `/` and none
    // of the host's tree above it.
    devns_sys::ns::unshare_cgroup().context("cannot create a cgroup namespace")?;
    // An IPC namespace made only now, as container root: its mqueue
    // instance's root (`/dev/mqueue`) is then container root's, not the
    // unmapped host root's that cloned it.
    devns_sys::ns::unshare_ipc().context("cannot create an IPC namespace")?;
    rustix::mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)
        .context("cannot make the mount namespace private")?;
    let root = match plan.rootfs {
        Some(r) => {
            rustix::mount::mount_bind_recursive(&r.path, &r.path).context("cannot bind the rootfs")?;
            rustix::fs::open(&r.path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .context("cannot open the root")?
        }
        None => root::from_host()?,
    };
    attach(&view, &root, "dev")?;
    let pts = dev_mounts(&root, plan.shm)?;
    let pty = tty::take_pty(&pts, plan.outer)?;
    let proc_fs = new_fs(
        "proc",
        &[],
        &[],
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?;
    attach(&proc_fs, &root, "proc")?;
    attach(&tmp, &root, "tmp")?;
    // Without --rootfs the command starts where devns run was, when that
    // directory is the same in the new root (not below /tmp, /dev, /proc).
    let cwd = if plan.rootfs.is_none() {
        root::seal(&root)?;
        std::env::current_dir().ok()
    } else {
        None
    };
    // The host's tree goes: nothing below the new root leads back to it.
    rustix::process::fchdir(&root).context("cannot enter the new root")?;
    rustix::process::pivot_root(".", ".").context("pivot_root")?;
    rustix::mount::unmount(".", UnmountFlags::DETACH).context("cannot detach the old root")?;
    rustix::process::chdir("/").context("chdir /")?;
    if let Some(dir) = cwd.filter(|d| !root::is_own(d)) {
        let _ = rustix::process::chdir(&dir);
    }
    if let Some(h) = plan.hostname {
        rustix::system::sethostname(h.as_bytes()).context("sethostname")?;
    }
    if plan.own_net {
        devns_sys::net::loopback_up().context("cannot bring up the loopback interface")?;
        if plan.udev {
            let root = rustix::fs::open("/", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
            // A /run that is the host's stays untouched (its root may not
            // write there): where the host runs udevd, its file is seen.
            let _ = crate::uevents::mark_udev_running(root.as_fd());
        }
    }
    Ok(pty)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "27 1 254:0 / / rw - ext4 /dev/vda rw\n\
        40 27 0:6 / /srv/root\\040fs/dev rw - devtmpfs devtmpfs rw\n\
        41 27 0:7 / /srv/other/proc/sub rw - proc proc rw\n\
        42 27 0:8 / /srv/root\\040fs/var rw - tmpfs tmpfs rw\n\
        43 27 0:9 / /srv/root\\040fs/devices rw - tmpfs tmpfs rw\n";

    #[test]
    fn a_mount_at_or_below_the_rootfs_s_own_directories_is_found() {
        assert_eq!(covered_mount(MOUNTINFO, Path::new("/srv/root fs")), Some(PathBuf::from("/srv/root fs/dev")));
        assert_eq!(covered_mount(MOUNTINFO, Path::new("/srv/other")), Some(PathBuf::from("/srv/other/proc/sub")));
    }

    #[test]
    fn mounts_elsewhere_in_the_rootfs_or_beside_it_are_not() {
        let without_dev: String =
            MOUNTINFO.lines().filter(|l| !l.starts_with("40 ")).map(|l| format!("{l}\n")).collect();
        // var is the container's to see; devices is not dev.
        assert_eq!(covered_mount(&without_dev, Path::new("/srv/root fs")), None);
        assert_eq!(covered_mount(MOUNTINFO, Path::new("/srv")), None);
    }
}
