//! The file descriptors a freshly forked child inherited.

use rustix::fd::{AsRawFd, BorrowedFd};
use rustix::io;

/// The open fds above 2 but `keep`, listed before any is closed (the
/// listing's own fd is gone by then).
fn open_fds(keep: &[BorrowedFd<'_>]) -> io::Result<Vec<i32>> {
    let keep: Vec<i32> = keep.iter().map(|f| f.as_raw_fd()).collect();
    Ok(std::fs::read_dir("/proc/self/fd")
        .map_err(|e| io::Errno::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO)))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2 && !keep.contains(fd))
        .collect())
}

/// Closes every open fd above 2 but `keep` that is close-on-exec (its
/// parent's own, which an exec would have closed) or a terminal; returns
/// how many it closed. What is left are the fds its parent meant to pass on.
///
/// # Safety
/// It closes fds by number: nothing in this process may use or close any
/// of them again (true of a freshly forked child that never returns into
/// its parent's frames and passes this every fd it goes on using).
pub unsafe fn close_inherited(keep: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let mut closed = 0;
    for fd in open_fds(keep)? {
        // SAFETY: F_GETFD and isatty only query `fd` (one that is not open
        // answers -1 and 0).
        let own = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        // SAFETY: as above.
        if (own >= 0 && own & libc::FD_CLOEXEC != 0) || unsafe { libc::isatty(fd) } == 1 {
            // SAFETY: the caller guarantees that nothing in this process uses
            // or closes `fd` again.
            unsafe { libc::close(fd) };
            closed += 1;
        }
    }
    Ok(closed)
}

/// Closes every open fd above 2 but `keep`, whoever meant it for whom;
/// returns how many it closed.
///
/// # Safety
/// As for [`close_inherited`].
pub unsafe fn close_all_but(keep: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let fds = open_fds(keep)?;
    for fd in &fds {
        // SAFETY: the caller guarantees that nothing in this process uses
        // or closes `fd` again.
        unsafe { libc::close(*fd) };
    }
    Ok(fds.len())
}

/// Takes ownership of fd `fd`, inherited from the parent by number (as
/// systemd passes `LISTEN_FDS` from 3 on), and makes it close-on-exec;
/// `BADF` when it is not open.
///
/// # Safety
/// Nothing else in this process may own or close fd `fd`: it must be an
/// inherited fd that this process has not opened, taken, or closed itself
/// (true of `LISTEN_FDS`'s numbers, taken once at start).
pub unsafe fn take_inherited(fd: i32) -> io::Result<rustix::fd::OwnedFd> {
    // SAFETY: F_GETFD only queries `fd`.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Errno::BADF);
    }
    // SAFETY: `fd` is open and, per the caller, owned by nothing else.
    let owned = unsafe { <rustix::fd::OwnedFd as rustix::fd::FromRawFd>::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
    Ok(owned)
}
