//! Signals as file descriptors, so an event loop can wait for them beside
//! pidfds and sockets. rustix does not offer `signalfd`.

use rustix::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use rustix::io;

/// A set of signals, blocked for the calling thread while this value lives
/// and readable from the fd.
pub struct SignalFd {
    fd: OwnedFd,
    old_mask: libc::sigset_t,
}

/// One signal read from a [`SignalFd`].
#[derive(Clone, Copy, Debug)]
pub struct SigInfo {
    pub signo: i32,
    /// `si_code`: `SI_USER`, `SI_KERNEL`, …
    pub code: i32,
    /// Sender's pid as seen from the receiver (0 when not visible).
    pub pid: u32,
}

impl SigInfo {
    /// Sent by the kernel on behalf of a terminal (or another kernel source),
    /// not by a process.
    pub fn from_kernel(&self) -> bool {
        self.code == libc::SI_KERNEL
    }
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it fully.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: as above; an invalid signal number only makes sigaddset fail.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

impl SignalFd {
    /// Blocks `signals` for this thread and opens a close-on-exec,
    /// non-blocking signalfd for them.
    pub fn new(signals: &[i32]) -> io::Result<SignalFd> {
        let set = sigset(signals);
        // SAFETY: sigset_t is plain data, filled in by pthread_sigmask below.
        let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers refer to live, initialised sigset_t values.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old_mask) };
        if rc != 0 {
            return Err(io::Errno::from_raw_os_error(rc));
        }
        // SAFETY: `set` is initialised; -1 asks for a new fd.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            let e = crate::last_errno();
            // SAFETY: restores the mask saved above from a valid sigset_t.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut()) };
            return Err(e);
        }
        // SAFETY: signalfd returned a new fd that nothing else owns.
        Ok(SignalFd { fd: unsafe { OwnedFd::from_raw_fd(fd) }, old_mask })
    }

    /// The next pending signal, or `None` when none is pending.
    pub fn read(&self) -> io::Result<Option<SigInfo>> {
        let mut buf = [0u8; size_of::<libc::signalfd_siginfo>()];
        match rustix::io::read(&self.fd, &mut buf) {
            Ok(n) if n == buf.len() => {
                // SAFETY: the kernel wrote a whole signalfd_siginfo into `buf`,
                // and read_unaligned copes with `buf`'s alignment.
                let si: libc::signalfd_siginfo = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
                Ok(Some(SigInfo { signo: si.ssi_signo as i32, code: si.ssi_code, pid: si.ssi_pid }))
            }
            Ok(_) => Err(io::Errno::IO),
            Err(io::Errno::AGAIN) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl SignalFd {
    /// Closes the fd but leaves the signals blocked: for a forked child that
    /// takes over signal handling with its own `SignalFd` and must not let a
    /// signal through in between.
    pub fn close_keeping_mask(self) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so the fd is read
        // out exactly once and closed by the OwnedFd's drop.
        drop(unsafe { std::ptr::read(&this.fd) });
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SignalFd {
    fn drop(&mut self) {
        // SAFETY: `old_mask` was filled in by pthread_sigmask in `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut()) };
    }
}

/// Restores `SIGPIPE`'s default action (the Rust runtime ignores it): a
/// command whose standard output is a pipe closed early (`devns ls | head
/// -1`) then ends as other Unix tools do, quietly, instead of failing on
/// its next write. Sockets are written with `MSG_NOSIGNAL`, so they still
/// give `EPIPE`. Not for long-lived processes that must clean up.
pub fn default_sigpipe() -> io::Result<()> {
    // SAFETY: SIG_DFL is a valid disposition for SIGPIPE, and setting it
    // touches no memory of this process; no handler of ours is replaced.
    let old = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    if old == libc::SIG_ERR {
        return Err(crate::last_errno());
    }
    Ok(())
}
