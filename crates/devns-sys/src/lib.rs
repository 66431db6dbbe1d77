//! The kernel operations rustix does not wrap (or wraps only unsafely), each
//! as one small safe function. Every `unsafe` block states the invariant it
//! relies on; nothing here makes a decision.

pub mod block;
pub mod bpf;
pub mod creds;
pub mod fds;
pub mod mount;
pub mod net;
pub mod ns;
pub mod process;
pub mod procstate;
pub mod seccomp;
pub mod shm;
pub mod signal;

/// The calling thread's errno as a rustix error.
pub(crate) fn last_errno() -> rustix::io::Errno {
    rustix::io::Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}
