//! The FUSE way of mounting a namespace's own block device (the default):
//! the filesystem is served by a userspace driver (`fuse2fs`) with the
//! credentials of the container's root in its user namespace, so a
//! hostile image meets a process no stronger than the container, not the
//! host's kernel filesystem code.
//!
//! The agent starts `devns fuse-driver` ([`crate::commands::fuse_driver`])
//! with the container's user namespace and devns's own node of the device;
//! it becomes the driver, which mounts its filesystem in a mount namespace
//! of its own. Once that mount is there, the agent clones it (`nosuid`,
//! `nodev` and the caller's flags) to the caller's target and detaches the
//! driver's own, so the container's `umount` ends the driver. A driver that
//! ends before it mounts (an image it cannot read) fails the call with
//! `EINVAL`, nothing attached.
//!
//! Drivers are devns's children, kept with the namespace and device they
//! serve: a device whose driver still runs is busy (`EBUSY`, after a short
//! wait for one that is ending: a driver writes out after its umount), and
//! a namespace's drivers are ended (`SIGTERM`, on which they write out and
//! close the device) when it dies, before its loop devices go.

use super::blockdev::{Request, node};
use crate::commands::fuse_driver;
use devns_core::DevId;
use devns_core::blockmount::Driver;
use devns_core::registry::NsId;
use devns_sys::procstate::{InNamespace, Namespace};
use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use rustix::fs::OFlags;
use rustix::io::Errno;
use rustix::mount::{OpenTreeFlags, UnmountFlags};
use std::os::unix::process::CommandExt;
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a driver may take to mount its filesystem.
const START_PATIENCE: Duration = Duration::from_secs(10);
/// How long a mount waits for the ending driver of the same device.
const BUSY_PATIENCE: Duration = Duration::from_secs(2);
/// How long a dead namespace's drivers get to write out and end.
const END_PATIENCE: Duration = Duration::from_secs(2);

/// A running driver: whose, of which device.
struct Running {
    ns: NsId,
    dev: DevId,
    child: Child,
}

static RUNNING: Mutex<Vec<Running>> = Mutex::new(Vec::new());

fn running() -> std::sync::MutexGuard<'static, Vec<Running>> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the driver has ended (and is reaped).
fn ended(child: &mut Child) -> bool {
    !matches!(child.try_wait(), Ok(None))
}

/// Forgets drivers that ended; whether one of `dev`'s still runs after
/// up to `patience`.
fn busy(dev: DevId, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        let mut all = running();
        all.retain_mut(|r| !ended(&mut r.child));
        if !all.iter().any(|r| r.dev == dev) {
            return false;
        }
        drop(all);
        if Instant::now() >= deadline {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    // An unreaped child: its pid is still its own.
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Ends namespace `ns`'s drivers: `SIGTERM` (they write out and close
/// their devices), `SIGKILL` for those still there after [`END_PATIENCE`].
pub fn end_namespace(ns: NsId) {
    let mut mine: Vec<Running> = {
        let mut all = running();
        let (mine, others) = std::mem::take(&mut *all).into_iter().partition(|r| r.ns == ns);
        *all = others;
        mine
    };
    for r in &mine {
        signal(&r.child, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + END_PATIENCE;
    while Instant::now() < deadline && mine.iter_mut().any(|r| !ended(&mut r.child)) {
        std::thread::sleep(Duration::from_millis(5));
    }
    for r in &mut mine {
        if ended(&mut r.child) {
            continue;
        }
        tracing::warn!(ns = %ns, dev = %r.dev, "a FUSE driver did not end in time: killed");
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
}

/// The driver program on this host.
pub fn program(driver: Driver) -> Option<std::path::PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin", "/usr/local/sbin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(driver.program()))
        .find(|p| p.is_file())
}

pub(super) fn mount(req: &Request, driver: Driver) -> Result<(), Errno> {
    let refuse = |why: &str, errno| {
        super::log_refusal(req.pid, Some(req.ns), &format!("mount {}", req.fstype), why, errno);
        Err(errno)
    };
    let Some(program) = program(driver) else {
        let why = format!(
            "{} is not installed (Debian package {}); or list {} in mount_kernel",
            driver.program(),
            driver.package(),
            req.fstype
        );
        return refuse(&why, Errno::NODEV);
    };
    let Some((uid, gid)) = req.root else { return refuse("its user namespace maps no root", Errno::PERM) };
    let options = driver.options(&req.plan.params);
    if !options.ignored.is_empty() {
        tracing::info!(pid = req.pid, ns = %req.ns, "{} has no counterpart of the kernel's data options {}: ignored", driver.program(), options.ignored.join(","));
    }
    if busy(req.dev, BUSY_PATIENCE) {
        return Err(Errno::BUSY);
    }
    let device = node(req.dev)?;
    // The driver opens it as the container's root.
    rustix::fs::chownat(
        &device,
        "",
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        rustix::fs::AtFlags::EMPTY_PATH,
    )?;
    let args = driver.args(&req.name, &req.fstype, req.plan.read_only, &options.taken);
    let mut child = spawn(req, &program, &args, &device)?;
    let ready = mounted(&mut child, &program).and_then(|mntns| clone_mount(&mntns));
    let attached = ready.and_then(|tree| {
        devns_sys::mount::set_attrs(&tree, req.plan.attrs)?;
        req.place.attach(&tree, &req.target)
    });
    if let Err(e) = attached {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    running().push(Running { ns: req.ns, dev: req.dev, child });
    Ok(())
}

/// `devns fuse-driver`, becoming `program` on `device`.
fn spawn(req: &Request, program: &std::path::Path, args: &[String], device: &OwnedFd) -> Result<Child, Errno> {
    // In the child at fuse_driver's numbers, in this order; made above
    // them here, so that placing one overwrites none still to come.
    let passed = [req.userns.as_fd(), device.as_fd()]
        .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 10))
        .into_iter()
        .collect::<Result<Vec<OwnedFd>, Errno>>()?;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg("fuse-driver")
        .arg("--program")
        .arg(program)
        .arg("--")
        .args(args)
        .env_clear()
        .stdin(std::process::Stdio::null());
    // The driver's messages (fuse2fs prints to stdout) go to devns's log.
    if let Ok(err) = std::io::stderr().as_fd().try_clone_to_owned() {
        cmd.stdout(err);
    }
    let raw: Vec<i32> = passed.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: between fork and exec only dup2, which is async-signal-safe;
    // `raw` was made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, fuse_driver::USERNS_FD + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| {
        tracing::error!(error = %e, "cannot start devns fuse-driver");
        Errno::NOMEM
    })
}

/// Waits until the driver has mounted its filesystem; its mount
/// namespace. A driver that ends first could not read the filesystem.
fn mounted(child: &mut Child, program: &std::path::Path) -> Result<OwnedFd, Errno> {
    let deadline = Instant::now() + START_PATIENCE;
    let proc = format!("/proc/{}", child.id());
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            tracing::info!("{} ended ({status}) before it mounted: the filesystem cannot be served", program.display());
            return Err(Errno::INVAL);
        }
        if let Ok(text) = std::fs::read(format!("{proc}/mountinfo"))
            && devns_core::mountinfo::mounts(&text).any(|m| {
                m.mount_point == std::path::Path::new(fuse_driver::MOUNT_POINT) && m.fstype.starts_with("fuse")
            })
        {
            return rustix::fs::open(
                format!("{proc}/ns/mnt"),
                OFlags::RDONLY | OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            );
        }
        if Instant::now() >= deadline {
            tracing::warn!("{} did not mount in {START_PATIENCE:?}: killed", program.display());
            return Err(Errno::IO);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A clone of the driver's mount, its own detached: the clone is then the
/// filesystem's only mount.
fn clone_mount(mntns: &OwnedFd) -> Result<OwnedFd, Errno> {
    let _in_ns = InNamespace::enter(mntns.as_fd(), Namespace::Mount)?;
    let flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    let tree = rustix::mount::open_tree(rustix::fs::CWD, fuse_driver::MOUNT_POINT, flags)?;
    rustix::mount::unmount(fuse_driver::MOUNT_POINT, UnmountFlags::DETACH)?;
    Ok(tree)
}
