//! `devns fuse-driver` (hidden; started by the agent, never by hand): the
//! FUSE driver of a container's mount of its own block device, as the
//! container's root in its user namespace, replaced by the driver program
//! (`fuse2fs`, `squashfuse`).
//!
//! It starts with, from the agent, fd 3 the container's user namespace and
//! fd 4 devns's node of the device (owned by the container's root). In the
//! user namespace, as its root, it makes a mount namespace of its own
//! (owned by that user namespace, so the driver may mount there and
//! nowhere else), a private tmpfs on `/tmp` there with an empty `fs`
//! directory, and execs the driver on the device (`/proc/self/fd/4`) with
//! that directory as its mount point. The driver mounts its filesystem
//! there itself (libfuse 2 and 3 alike, as root of a user namespace, mount
//! directly); the agent clones that mount into the caller's mount
//! namespace at the caller's target and detaches the driver's own, so the
//! container's `umount` ends the driver.
//!
//! The driver keeps the host's root (its program and libraries are the
//! host's) in the host's pid namespace, with capabilities in the
//! container's user namespace only: the container, in a pid namespace of
//! its own, cannot reach the process.

use crate::commands::Global;
use anyhow::{Context, Result, bail};
use rustix::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// The fds the agent passes.
pub const USERNS_FD: i32 = 3;
pub const DEVICE_FD: i32 = 4;
/// The driver's mount point, in its own mount namespace.
pub const MOUNT_POINT: &str = "/tmp/fs";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The driver program (an absolute path on the host).
    #[arg(long)]
    pub program: PathBuf,
    /// The driver's arguments after the device and the mount point.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(_global: &Global, args: Args) -> Result<i32> {
    // SAFETY: the agent started this process with these fds open and for
    // it alone; each is taken once.
    let (userns, device) = unsafe { (OwnedFd::from_raw_fd(USERNS_FD), OwnedFd::from_raw_fd(DEVICE_FD)) };
    rustix::io::fcntl_setfd(&userns, rustix::io::FdFlags::CLOEXEC).context("cannot mark an fd close-on-exec")?;
    enter(&userns)?;
    drop(userns);
    let e = std::process::Command::new(&args.program)
        .arg(format!("/proc/self/fd/{DEVICE_FD}"))
        .arg(MOUNT_POINT)
        .args(&args.args)
        .exec();
    drop(device);
    bail!("cannot run {}: {e}", args.program.display())
}

/// Into the container's user namespace as its root, and a mount
/// namespace of the driver's own with its mount point.
fn enter(userns: &OwnedFd) -> Result<()> {
    use rustix::mount::{MountFlags, MountPropagationFlags};
    use rustix::thread::{LinkNameSpaceType, UnshareFlags};
    rustix::thread::move_into_link_name_space(userns.as_fd(), Some(LinkNameSpaceType::User))
        .context("cannot enter the container's user namespace")?;
    let (uid, gid) = (rustix::process::Uid::ROOT, rustix::process::Gid::ROOT);
    rustix::thread::set_thread_res_gid(gid, gid, gid).context("cannot become the container's root group")?;
    // Refused where the namespace denies setgroups: then it has none to drop.
    let _ = rustix::thread::set_thread_groups(&[]);
    rustix::thread::set_thread_res_uid(uid, uid, uid).context("cannot become the container's root")?;
    // SAFETY: this process is single-threaded here (clap parsed, nothing
    // spawned), as unshare of the mount namespace asks.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS) }.context("cannot make a mount namespace")?;
    rustix::mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)
        .context("cannot make its mounts private")?;
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    rustix::mount::mount("devns", "/tmp", "tmpfs", flags, c"mode=0700,size=64k").context("cannot mount its tmpfs")?;
    std::fs::create_dir(MOUNT_POINT).with_context(|| format!("cannot make {MOUNT_POINT}"))?;
    Ok(())
}
