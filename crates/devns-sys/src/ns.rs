//! Namespace identity.

use rustix::fd::AsFd;
use rustix::io;
use rustix::ioctl::{Getter, ioctl, opcode};

/// `NS_GET_ID` (`_IOR(0xb7, 0xd, __u64)`, Linux 6.18's `nsfs.h`): the 64-bit
/// namespace id, never reused while the host is up. rustix has no wrapper.
const NS_GET_ID: rustix::ioctl::Opcode = opcode::read::<u64>(0xb7, 0xd);

/// The id of the namespace `nsfd` (an nsfs file such as `/proc/PID/ns/user`)
/// refers to.
pub fn ns_id(nsfd: impl AsFd) -> io::Result<u64> {
    // SAFETY: NS_GET_ID writes exactly one u64 through its argument pointer,
    // which is what `Getter<NS_GET_ID, u64>` provides.
    unsafe { ioctl(nsfd, Getter::<NS_GET_ID, u64>::new()) }
}

/// `NS_GET_PARENT` (`_IO(0xb7, 0x2)`, `nsfs.h`): the parent of a user (or
/// pid) namespace. rustix has no wrapper.
const NS_GET_PARENT: rustix::ioctl::Opcode = opcode::none(0xb7, 0x2);

/// An nsfs fd for the parent of the user namespace `nsfd`; `EPERM` for the
/// initial one (and for any whose parent is outside the caller's reach).
pub fn ns_parent(nsfd: impl AsFd) -> io::Result<rustix::fd::OwnedFd> {
    new_fd_ioctl(nsfd.as_fd(), NS_GET_PARENT)
}

/// An ioctl that takes no argument and returns a new fd.
fn new_fd_ioctl(fd: rustix::fd::BorrowedFd<'_>, op: rustix::ioctl::Opcode) -> io::Result<rustix::fd::OwnedFd> {
    use rustix::fd::FromRawFd;
    // SAFETY: `op` is one of this module's ioctls that take no argument and
    // return a new fd or -1.
    let ret = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), op as _, 0) };
    if ret < 0 {
        return Err(crate::last_errno());
    }
    // SAFETY: a non-negative return is a new fd that nothing else owns.
    Ok(unsafe { rustix::fd::OwnedFd::from_raw_fd(ret) })
}

/// `PIDFD_GET_USER_NAMESPACE` (`_IO(0xFF, 9)`, `linux/pidfd.h`, Linux 6.11):
/// the user namespace of the process behind a pidfd, without going through
/// a pid. rustix has no wrapper.
const PIDFD_GET_USER_NAMESPACE: rustix::ioctl::Opcode = opcode::none(0xFF, 9);

/// An nsfs fd for the user namespace of the process behind `pidfd`.
pub fn pidfd_user_ns(pidfd: impl AsFd) -> io::Result<rustix::fd::OwnedFd> {
    new_fd_ioctl(pidfd.as_fd(), PIDFD_GET_USER_NAMESPACE)
}

/// `PIDFD_GET_MNT_NAMESPACE` (`_IO(0xFF, 3)`, `linux/pidfd.h`, Linux 6.11):
/// the mount namespace of the process behind a pidfd. rustix has no wrapper.
const PIDFD_GET_MNT_NAMESPACE: rustix::ioctl::Opcode = opcode::none(0xFF, 3);

/// An nsfs fd for the mount namespace of the process behind `pidfd`.
pub fn pidfd_mnt_ns(pidfd: impl AsFd) -> io::Result<rustix::fd::OwnedFd> {
    new_fd_ioctl(pidfd.as_fd(), PIDFD_GET_MNT_NAMESPACE)
}

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd for the process at the other end of
/// a unix socket, taken when it connected. rustix has no wrapper.
pub fn peer_pidfd(sock: impl AsFd) -> io::Result<rustix::fd::OwnedFd> {
    use rustix::fd::FromRawFd;
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    let s = sock.as_fd();
    // SAFETY: `fd` and `len` outlive the call, and `len` is the size of `fd`.
    let ret = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if ret < 0 || fd < 0 {
        return Err(crate::last_errno());
    }
    // SAFETY: getsockopt(SO_PEERPIDFD) stored a new fd that nothing else owns.
    Ok(unsafe { rustix::fd::OwnedFd::from_raw_fd(fd) })
}

/// Moves the calling thread into a new cgroup namespace rooted at the
/// cgroup it is in now (`unshare(CLONE_NEWCGROUP)`).
pub fn unshare_cgroup() -> io::Result<()> {
    // SAFETY: of unshare's flags only CLONE_FILES (absent here) can change
    // what the fds of this process refer to; a new cgroup namespace changes
    // only how cgroup paths are shown to and resolved by this thread.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWCGROUP) }
}

/// Moves the calling thread into a new, empty IPC namespace
/// (`unshare(CLONE_NEWIPC)`), owned by its user namespace; the kernel
/// makes the namespace's mqueue superblock now, its root owned by the
/// caller's fsuid and fsgid.
pub fn unshare_ipc() -> io::Result<()> {
    // SAFETY: of unshare's flags only CLONE_FILES (absent here) can change
    // what the fds of this process refer to; a new IPC namespace changes
    // only which SysV and POSIX message queue objects the thread reaches.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWIPC) }
}

/// Moves the calling thread into a new, empty network namespace
/// (`unshare(CLONE_NEWNET)`): for a thread that ends afterwards, so that
/// the namespace goes with it.
pub fn unshare_net() -> io::Result<()> {
    // SAFETY: of unshare's flags only CLONE_FILES (absent here) can change
    // what the fds of this process refer to; a new network namespace only
    // changes which network this thread's new sockets belong to.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
}
