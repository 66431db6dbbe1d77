//! The seccomp agent: answers the calls a container's filter traps —
//! `mknod`/`mknodat` of devices, `mount`, `fsopen`, and the `ioctl`s of
//! `loop-control` and of partition editing — by doing them itself after its
//! own checks, one notification at a time, from the loop that owns the
//! listener (no thread or process per call).
//!
//! Each notification: read what the call needs of the caller once (its
//! credentials, namespace, arguments), check `SECCOMP_IOCTL_NOTIF_ID_VALID`
//! (so what was read was the caller's), decide from the registry, act with
//! the caller's credentials on paths resolved inside the caller's root,
//! answer with the errno a native call would give. A call the policy
//! refuses is never continued.

mod blockdev;
mod caller;
pub mod fuse;
mod identity;
mod ioctl;
mod mknod;
mod mount;
mod resolve;
mod walk;

// For bench_mknod's replay of one call, step by step: the real code.
pub use caller::{Caller, Kept};
pub use identity::{AsCaller, Base};

use crate::refusal::Refusal;
use devns_core::DevId;
use devns_core::registry::NsId;
use devns_core::seccomp::{
    NR_EXECVE, NR_EXECVEAT, NR_FSOPEN, NR_IOCTL, NR_MKNOD, NR_MKNODAT, NR_MOUNT, TRAPPED_IOCTLS,
};
use devns_sys::seccomp::NotifResp;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;

/// What the agent asks of devns: who may have which node, the views, and
/// the changes loop-control and partition edits make.
pub trait Policy {
    fn may_have(&self, ns: NsId, dev: DevId) -> bool;
    fn view(&self, ns: NsId) -> Option<BorrowedFd<'_>>;
    /// The private `/tmp` devns made for `ns`, if it made one: with the
    /// view, the only filesystem where the agent makes `ns`'s nodes.
    fn tmp(&self, ns: NsId) -> Option<BorrowedFd<'_>>;
    /// Whether `ns` owns the whole disk `dev`.
    fn owns(&self, ns: NsId, dev: DevId) -> bool;
    /// A `LOOP_CTL_*` call of `ns`'s: its value, or the refusal to answer.
    fn loop_control(&mut self, ns: NsId, req: devns_core::loopctl::Request) -> Result<u32, Refusal>;
    /// The partitions of `ns`'s disk `dev` changed: registry, view and map
    /// follow, or the call fails: it is acknowledged only once they do.
    fn partitions_changed(&mut self, ns: NsId, dev: DevId) -> Result<(), Refusal>;
    /// The filesystem types whose mounts of a namespace's own block
    /// devices the kernel serves (the config's `mount_kernel`).
    fn mount_kernel(&self) -> &[String];
    /// Device `dev`'s name (`DEVNAME`), when devns knows it.
    fn device_name(&self, dev: DevId) -> Option<String>;
}

/// Longest path the agent reads from a caller (`PATH_MAX`).
const PATH_MAX: usize = 4096;

/// The filter for containers, in the kernel's form.
pub fn filter() -> Vec<devns_sys::seccomp::SockFilter> {
    devns_core::seccomp::filter()
        .into_iter()
        .map(|i| devns_sys::seccomp::SockFilter { code: i.code, jt: i.jt, jf: i.jf, k: i.k })
        .collect()
}

/// The answer to one call.
enum Answer {
    /// Return value 0 or -errno, as the emulated call.
    Done(Result<(), Errno>),
    /// A return value other than 0 (a loop device's index).
    Value(u32),
    /// Not ours: let the kernel run the call as it is.
    Continue,
    /// The caller is gone; nobody to answer.
    Gone,
}

/// A seccomp listener the agent answers, with what it keeps between calls:
/// the `/proc` files of the thread that called last, and the identity of
/// the agent's own thread that each call made as a caller returns to.
pub struct Listener {
    fd: OwnedFd,
    last: Kept,
    base: Base,
}

impl Listener {
    /// Serves `fd` from the calling thread, which must be the thread that
    /// calls [`Listener::handle`]: it takes on callers' credentials for
    /// their `mknod`s, and from now on carries no supplementary groups.
    pub fn new(fd: OwnedFd) -> Result<Listener, Errno> {
        let _ = devns_sys::seccomp::set_sync_wakeup(&fd);
        Ok(Listener { fd, last: Kept::default(), base: Base::of_this_thread()? })
    }

    /// Serves a listener that is another's (LXC's monitor's, which
    /// receives and answers the calls itself and forwards them): its
    /// flags are left as they are.
    pub fn lent(fd: OwnedFd) -> Result<Listener, Errno> {
        Ok(Listener { fd, last: Kept::default(), base: Base::of_this_thread()? })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Handles one pending notification.
    pub fn handle(&mut self, policy: &mut dyn Policy) {
        let Some(n) = self.recv() else { return };
        if let Some(resp) = self.answer(&n, policy) {
            self.send(&resp);
        }
    }

    /// The next notification; `None` when interrupted, or when the caller
    /// died between poll and recv.
    pub fn recv(&self) -> Option<devns_sys::seccomp::Notif> {
        devns_sys::seccomp::recv(self.fd.as_fd()).ok()
    }

    /// Does call `n` (after the agent's checks) and decides its answer;
    /// `None` when its caller is gone. Also for a call received by a
    /// daemon that died before it answered: everything is read again.
    pub fn answer(&mut self, n: &devns_sys::seccomp::Notif, policy: &mut dyn Policy) -> Option<NotifResp> {
        let listener = self.fd.as_fd();
        let nr = n.data.nr as u32;
        let served = devns_core::seccomp::served_abi(n.data.arch, nr);
        // To the kernel as without devns, with no read of the caller:
        // another ABI's call (a profile names x86 and x32 too; its numbers
        // are other calls), every execve a runtime's profile traps (the
        // daemon attaches its container at the first, before this), and
        // an ioctl devns does not mediate that a runtime's profile traps
        // beside those it does (`0x4C83`, see `devns_core::ociprofile`).
        let unmediated_ioctl = nr == NR_IOCTL && !TRAPPED_IOCTLS.contains(&(n.data.args[1] as u32));
        if !served || nr == NR_EXECVE || nr == NR_EXECVEAT || unmediated_ioctl {
            return Some(NotifResp { id: n.id, val: 0, error: 0, flags: devns_sys::seccomp::FLAG_CONTINUE });
        }
        let device = if nr == NR_MKNOD || nr == NR_MKNODAT { mknod::device_of(n) } else { None };
        let answer = match (nr, device, self.last.caller(n.pid)) {
            // A FIFO, socket or file: the kernel's, whoever asks.
            (NR_MKNOD | NR_MKNODAT, None, _) => Answer::Continue,
            (_, _, Err(e)) => unreadable(listener, n.id, n.pid, e),
            (_, Some(dev), Ok(c)) => mknod::mknod(listener, n, c, dev, &*policy, &self.base),
            (NR_MOUNT, _, Ok(c)) => mount::mount(listener, n, c, &*policy),
            (NR_FSOPEN, _, Ok(c)) => mount::fsopen(n, c, &*policy),
            (NR_IOCTL, _, Ok(c)) => ioctl::ioctl(listener, n, c, policy),
            _ => Answer::Done(Err(Errno::NOSYS)),
        };
        Some(match answer {
            Answer::Gone => return None,
            Answer::Continue => NotifResp { id: n.id, val: 0, error: 0, flags: devns_sys::seccomp::FLAG_CONTINUE },
            Answer::Done(Ok(())) => NotifResp { id: n.id, val: 0, error: 0, flags: 0 },
            Answer::Value(v) => NotifResp { id: n.id, val: i64::from(v), error: 0, flags: 0 },
            Answer::Done(Err(e)) => NotifResp { id: n.id, val: 0, error: -e.raw_os_error(), flags: 0 },
        })
    }

    /// Sends an answer. ENOENT: the caller died meanwhile (or the call
    /// was answered already); nothing else can go wrong here.
    pub fn send(&self, resp: &NotifResp) {
        let _ = devns_sys::seccomp::send(self.fd.as_fd(), resp);
    }
}

/// After the reads: the caller's namespace when the thread read was the
/// caller all along (`SECCOMP_IOCTL_NOTIF_ID_VALID`), else what to answer.
fn confirm(listener: BorrowedFd<'_>, n: &devns_sys::seccomp::Notif, ns: Result<NsId, Errno>) -> Result<NsId, Answer> {
    if !devns_sys::seccomp::id_valid(listener, n.id) {
        return Err(Answer::Gone);
    }
    ns.map_err(|e| unreadable(listener, n.id, n.pid, e))
}

/// What a call gets whose caller's `/proc` files could not be read: none
/// when it is gone, else a refusal (it must not wait forever).
fn unreadable(listener: BorrowedFd<'_>, id: u64, pid: u32, e: Errno) -> Answer {
    if !devns_sys::seccomp::id_valid(listener, id) {
        return Answer::Gone;
    }
    let why = format!("cannot read the caller's /proc files: {e}");
    refuse(pid as i32, None, "trapped call", &why, Errno::PERM)
}

/// A refusal as the agent answers it, logged.
fn refuse(pid: i32, ns: Option<NsId>, call: &str, why: &str, errno: Errno) -> Answer {
    log_refusal(pid, ns, call, why, errno);
    Answer::Done(Err(errno))
}

/// A decision's refusal (the policy's) as the agent answers it: logged
/// when it says why.
fn answer_refusal(pid: i32, ns: Option<NsId>, call: &str, r: Refusal) -> Answer {
    if let Some(why) = &r.why {
        log_refusal(pid, ns, call, why, r.errno);
    }
    Answer::Done(Err(r.errno))
}

/// Rate-limited log of a refusal: a container cannot flood the host's log.
fn log_refusal(pid: i32, ns: Option<NsId>, call: &str, why: &str, errno: Errno) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LOGGED: AtomicU64 = AtomicU64::new(0);
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if WINDOW.swap(now, Ordering::Relaxed) != now {
        LOGGED.store(0, Ordering::Relaxed);
    }
    if LOGGED.fetch_add(1, Ordering::Relaxed) < 20 {
        let ns = ns.map_or_else(|| "?".to_owned(), |n| n.to_string());
        tracing::warn!(pid, ns = %ns, call, errno = %errno, "refused: {why}");
    }
}
