//! The state of its own process that devns changes for a moment — the
//! umask, the mount or network namespace, the filesystem identity — each
//! behind a guard that puts it back on drop, on every path; and the
//! one-way changes a child makes before it execs or exits.
//!
//! What each change reaches, which decides where it may be made:
//! - the umask and the mount namespace (with root and working directory)
//!   belong to the `fs_struct` a process's threads share: a change is seen
//!   by every thread, and `setns` into a mount namespace is refused
//!   (`EINVAL`) while another thread shares it. A helper thread leaves it
//!   first ([`leave_shared_fs`]); [`debug_assert_alone`] goes before each
//!   such change;
//! - the network namespace, and (with the raw calls used here, not glibc's
//!   wrappers, which change every thread) fsuid, fsgid, supplementary
//!   groups, capabilities and the real/effective/saved ids belong to the
//!   calling thread alone.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{Gid, Mode, OFlags, Uid};
use rustix::io;
use rustix::thread::{CapabilitySet, CapabilitySets, LinkNameSpaceType};

/// The threads that left the `fs_struct` they shared ([`leave_shared_fs`]).
static LEFT: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Gives the calling thread an `fs_struct` of its own (`unshare(CLONE_FS)`):
/// for a helper thread (`devns run`'s terminal relay), so that it neither
/// sees the umask and namespace changes of the thread that keeps
/// namespaces nor keeps that thread from entering a mount namespace.
pub fn leave_shared_fs() -> io::Result<()> {
    // SAFETY: only CLONE_FS is unshared, not the fd table (the hazard
    // `unshare_unsafe` warns of): fds stay valid for every thread.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }?;
    let tid = rustix::thread::gettid().as_raw_nonzero().get();
    LEFT.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(tid);
    Ok(())
}

/// Runs `f` on a thread of its own that first leaves the process's
/// `fs_struct` ([`leave_shared_fs`]), and joins it: for work in another
/// mount namespace (which `f` may enter for good, see [`enter_for_good`])
/// without a child process. The thread, and the namespace, root and
/// working directory it took on, end with `f`. An error when no thread
/// could be started or it could not leave, or when `f` panicked.
pub fn on_own_fs_thread<T: Send>(f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    on_own_fs_thread_beside(f, || ()).0
}

/// [`on_own_fs_thread`], with `meanwhile` run on the calling thread while
/// `f` runs, once the thread has left the shared `fs_struct` (a umask or
/// directory `meanwhile` sets is not the thread's); both joined.
/// `meanwhile`'s result, also when the thread could not be started or
/// leave (then it runs alone).
pub fn on_own_fs_thread_beside<T: Send, U>(
    f: impl FnOnce() -> T + Send,
    meanwhile: impl FnOnce() -> U,
) -> (std::io::Result<T>, U) {
    /// Takes a thread that left off [`LEFT`] when it ends, also by a panic.
    struct Forget(i32);
    impl Drop for Forget {
        fn drop(&mut self) {
            LEFT.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|t| *t != self.0);
        }
    }
    std::thread::scope(|s| {
        let (left, has_left) = std::sync::mpsc::sync_channel::<()>(1);
        let worker =
            std::thread::Builder::new().name("devns-own-fs".into()).spawn_scoped(s, || -> std::io::Result<T> {
                // Dropped unsent when it cannot leave: the caller goes on.
                let left = left;
                leave_shared_fs()?;
                let _forget = Forget(rustix::thread::gettid().as_raw_nonzero().get());
                let _ = left.send(());
                drop(left);
                Ok(f())
            });
        if worker.is_ok() {
            let _ = has_left.recv();
        }
        let beside = meanwhile();
        let done = match worker {
            Ok(w) => w.join().unwrap_or_else(|_| Err(std::io::Error::other("the thread panicked"))),
            Err(e) => Err(e),
        };
        (done, beside)
    })
}

/// How many of this process's threads share an `fs_struct` with the
/// calling one, itself included: all those in `/proc/self/task` but the
/// ones that left ([`leave_shared_fs`]). `None` when that cannot be read.
pub fn threads_sharing_fs() -> Option<usize> {
    let left = LEFT.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let tids = tasks.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok());
    Some(tids.filter(|t| !left.contains(t)).count())
}

/// In debug builds, panics unless the calling thread is alone in its
/// `fs_struct` (single-threaded, or every other thread left it): to be
/// called before a change that each of those threads would see (`what`
/// names it). An unreadable `/proc` proves nothing and passes.
pub fn debug_assert_alone(what: &str) {
    if cfg!(debug_assertions) {
        let n = threads_sharing_fs();
        debug_assert!(n.is_none_or(|n| n == 1), "{what} reaches {n:?} threads");
    }
}

/// The process's umask set to a value for as long as this lives, the old
/// one back on drop.
#[must_use = "the umask is restored when the guard drops"]
pub struct Umask(Mode);

impl Umask {
    #[inline]
    pub fn set(mask: Mode) -> Umask {
        debug_assert_alone("the umask");
        Umask(rustix::process::umask(mask))
    }
}

impl Drop for Umask {
    #[inline]
    fn drop(&mut self) {
        rustix::process::umask(self.0);
    }
}

/// A namespace devns enters for a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Namespace {
    /// Process-wide: the thread must not share its `fs_struct`.
    Mount,
    /// Per thread.
    Network,
}

impl Namespace {
    fn link(self) -> &'static str {
        match self {
            Namespace::Mount => "/proc/thread-self/ns/mnt",
            Namespace::Network => "/proc/thread-self/ns/net",
        }
    }

    fn kind(self) -> LinkNameSpaceType {
        match self {
            Namespace::Mount => LinkNameSpaceType::Mount,
            Namespace::Network => LinkNameSpaceType::Network,
        }
    }
}

/// The calling thread in another mount or network namespace (entered by
/// fd) for as long as this lives, back in its own on drop, and for a mount
/// namespace in its own working directory too. Should the way back fail,
/// the process aborts: it would otherwise go on in a container's
/// namespace.
#[must_use = "the thread returns to its own namespace when the guard drops"]
pub struct InNamespace {
    ns: Namespace,
    home: OwnedFd,
    cwd: Option<OwnedFd>,
}

impl InNamespace {
    pub fn enter(target: BorrowedFd<'_>, ns: Namespace) -> io::Result<InNamespace> {
        if ns == Namespace::Mount {
            debug_assert_alone("entering a mount namespace");
        }
        let home = rustix::fs::open(ns.link(), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        // `setns` into a mount namespace moves root and cwd to its root.
        let cwd = match ns {
            Namespace::Mount => {
                Some(rustix::fs::open(".", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?)
            }
            Namespace::Network => None,
        };
        rustix::thread::move_into_link_name_space(target, Some(ns.kind()))?;
        Ok(InNamespace { ns, home, cwd })
    }
}

impl Drop for InNamespace {
    fn drop(&mut self) {
        if let Err(e) = rustix::thread::move_into_link_name_space(self.home.as_fd(), Some(self.ns.kind())) {
            // No logger here: stderr is where a dying process speaks.
            eprintln!("devns: cannot return to its own {:?} namespace ({e}): aborting", self.ns);
            std::process::abort();
        }
        if let Some(cwd) = &self.cwd {
            let _ = rustix::process::fchdir(cwd);
        }
    }
}

/// Moves the calling thread into namespace `target` for good: for a child
/// that exits (or execs) afterwards, never for devns's own process.
pub fn enter_for_good(target: impl AsFd, ns: Namespace) -> io::Result<()> {
    if ns == Namespace::Mount {
        debug_assert_alone("entering a mount namespace");
    }
    rustix::thread::move_into_link_name_space(target.as_fd(), Some(ns.kind()))
}

/// Makes the calling thread `uid`/`gid` (real, effective and saved) with no
/// supplementary groups, for good: for a child before it execs.
pub fn set_ids_for_good(uid: Uid, gid: Gid) -> io::Result<()> {
    // The gid while the thread may still set any.
    rustix::thread::set_thread_res_gid(gid, gid, gid)?;
    rustix::thread::set_thread_groups(&[])?;
    rustix::thread::set_thread_res_uid(uid, uid, uid)
}

/// The capabilities that a filesystem uid of 0 stands for, which the
/// kernel drops from the effective set when the fsuid leaves 0 and raises
/// again (from the permitted set) when it returns (`CAP_FS_MASK`).
pub const FS_CAPS: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::MKNOD)
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::DAC_READ_SEARCH)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::MAC_OVERRIDE);

/// A thread's own identity (host root, fsuid and fsgid 0), read once:
/// what it goes back to after each [`AsFsIdentity`].
pub struct OwnIdentity {
    caps: CapabilitySets,
    /// Whether giving the fsuid back restores exactly `caps` by itself.
    restored_by_fsuid: bool,
}

impl OwnIdentity {
    /// The calling thread's identity, which from now on carries no
    /// supplementary groups (host root needs none, and those it takes on
    /// mostly have none, so that most switches need no `setgroups` at all).
    pub fn of_this_thread() -> io::Result<OwnIdentity> {
        crate::creds::set_groups(&[])?;
        let caps = rustix::thread::capabilities(None)?;
        let restored_by_fsuid = caps.effective & FS_CAPS == caps.permitted & FS_CAPS;
        Ok(OwnIdentity { caps, restored_by_fsuid })
    }
}

/// A filesystem identity to take on.
pub struct FsIdentity<'a> {
    pub fsuid: u32,
    pub fsgid: u32,
    pub groups: &'a [u32],
    /// The low nine bits count.
    pub umask: u32,
}

/// The calling thread with another filesystem identity (fsuid, fsgid,
/// groups) and the process with its umask, keeping `CAP_MKNOD` of all the
/// filesystem capabilities, for as long as this lives; the thread's own
/// (an [`OwnIdentity`]) back on drop. Five syscalls for an identity
/// without supplementary groups, each kept because the kernel needs it:
/// fsgid and fsuid (in that order, while the thread may still set any
/// gid), the capability set, and both back; and the umask both ways.
///
/// fsuid, fsgid, groups and capabilities are the thread's; the umask is
/// the `fs_struct`'s (the kernel applies it, or a default ACL instead, to
/// what is made meanwhile), which the thread must have to itself.
#[must_use = "the thread's own identity returns when the guard drops"]
pub struct AsFsIdentity<'a> {
    own: &'a OwnIdentity,
    /// The capabilities while it lives: the own ones but the filesystem
    /// ones, `CAP_MKNOD` kept.
    caps: CapabilitySets,
    groups: bool,
    /// Whether the fsuid taken on was 0 (a caller mapped to host root):
    /// then no change of the fsuid gives the capabilities back by itself.
    fsuid_zero: bool,
    _umask: Umask,
}

impl AsFsIdentity<'_> {
    #[inline]
    pub fn take<'a>(id: &FsIdentity<'_>, own: &'a OwnIdentity) -> io::Result<AsFsIdentity<'a>> {
        let umask = Umask::set(Mode::from_raw_mode(id.umask & 0o777));
        let groups = !id.groups.is_empty();
        if groups {
            crate::creds::set_groups(id.groups)?;
        }
        crate::creds::set_fsgid(id.fsgid);
        crate::creds::set_fsuid(id.fsuid);
        let mut caps = own.caps;
        caps.effective = (caps.effective - FS_CAPS) | CapabilitySet::MKNOD;
        let guard = AsFsIdentity { own, caps, groups, fsuid_zero: id.fsuid == 0, _umask: umask };
        // After the fsuid: a change of it away from 0 drops the filesystem
        // capabilities from the effective set (`cap_task_fix_setuid`), so
        // only what is raised after it stays.
        rustix::thread::set_capabilities(None, caps)?;
        Ok(guard)
    }

    /// The filesystem capabilities `extra` (those of them the thread's
    /// own permitted set has) raised as well while the returned guard
    /// lives: for one operation that the caller's capability would be
    /// counted for. The fsuid stays the caller's.
    pub fn raise(&self, extra: CapabilitySet) -> io::Result<Raised<'_>> {
        let mut caps = self.caps;
        caps.effective |= extra & FS_CAPS & caps.permitted;
        rustix::thread::set_capabilities(None, caps)?;
        Ok(Raised { lowered: &self.caps })
    }
}

/// Capabilities raised over an [`AsFsIdentity`] ([`AsFsIdentity::raise`]),
/// lowered again on drop.
#[must_use = "the capabilities are lowered when the guard drops"]
pub struct Raised<'g> {
    lowered: &'g CapabilitySets,
}

impl Drop for Raised<'_> {
    #[inline]
    fn drop(&mut self) {
        if rustix::thread::set_capabilities(None, *self.lowered).is_err() {
            // The thread would go on acting for a caller with capabilities
            // the caller's check did not count.
            eprintln!("devns: cannot lower the capabilities raised for a caller: aborting");
            std::process::abort();
        }
    }
}

impl Drop for AsFsIdentity<'_> {
    #[inline]
    fn drop(&mut self) {
        // fsuid 0 raises the filesystem capabilities again from the
        // permitted set: the effective set is the thread's own again.
        crate::creds::set_fsuid(0);
        crate::creds::set_fsgid(0);
        if self.groups {
            let _ = crate::creds::set_groups(&[]);
        }
        if !self.own.restored_by_fsuid || self.fsuid_zero {
            let _ = rustix::thread::set_capabilities(None, self.own.caps);
        }
        // The umask comes back as the field drops.
    }
}

#[cfg(test)]
mod tests;
