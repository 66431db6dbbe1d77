//! Creating processes in new namespaces.

use rustix::fd::{FromRawFd, OwnedFd};
use rustix::io;
use rustix::process::Pid;

pub use libc::{CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, CLONE_NEWUTS};

/// The two sides of a successful [`fork_into`].
pub enum Forked {
    Child,
    Parent { pid: Pid, pidfd: OwnedFd },
}

/// The kernel's `struct clone_args` (`linux/sched.h`), up to `cgroup`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Forks like `fork(2)`, with the child in the new namespaces that
/// `ns_flags` (`CLONE_NEW*`) name, and returns a pidfd for it, obtained
/// atomically with `CLONE_PIDFD` so the child is never known by a bare pid.
/// Neither rustix nor libc wraps `clone3`.
///
/// # Safety
/// As for `fork(2)`: the caller must be single-threaded, or the child must
/// call only async-signal-safe functions until it execs or exits.
pub unsafe fn fork_into(ns_flags: i32) -> io::Result<Forked> {
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: ns_flags as u64 | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed; a zero stack
    // makes clone3 behave like fork (the child continues on a copy of this
    // stack); `pidfd` outlives the call. The caller upholds fork's contract.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, size_of::<CloneArgs>()) };
    match ret {
        -1 => Err(crate::last_errno()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            pid: Pid::from_raw(pid as i32).ok_or(io::Errno::INVAL)?,
            // SAFETY: with CLONE_PIDFD and a successful clone3 the kernel has
            // stored a new pidfd that nothing else owns.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

/// The exit status of the process behind `pidfd`, once it has ended
/// (blocks until then). Returns the `waitid` status as a shell would
/// report it: the exit code, or 128 + the signal number.
pub fn wait_pidfd(pidfd: &OwnedFd) -> io::Result<i32> {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    loop {
        match waitid(WaitId::PidFd(rustix::fd::AsFd::as_fd(pidfd)), WaitIdOptions::EXITED) {
            Ok(Some(st)) => {
                return Ok(match (st.exit_status(), st.terminating_signal()) {
                    (Some(code), _) => code,
                    (None, Some(sig)) => 128 + sig,
                    _ => 128,
                });
            }
            Ok(None) => continue,
            Err(io::Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Copies `buf.len()` bytes of thread `tid`'s memory at `addr` into `buf`
/// (`process_vm_readv`, which rustix lacks); returns how many were read,
/// fewer when the range runs into an unmapped or unreadable page. Reads the
/// thread's current address space, with the page protections a syscall of
/// its own would meet (unlike `/proc/PID/mem`, which forces its way in).
pub fn read_memory(tid: i32, addr: u64, buf: &mut [u8]) -> rustix::io::Result<usize> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as usize as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: `local` describes `buf`, writable for its whole length through
    // the call; `remote` is only an address in the other process, which the
    // kernel checks itself; one iovec each.
    let n = unsafe { libc::process_vm_readv(tid, &local, 1, &remote, 1, 0) };
    if n < 0 { Err(crate::last_errno()) } else { Ok(n as usize) }
}
