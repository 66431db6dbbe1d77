//! The kernel's uevents, as devns receives them: one netlink socket, read
//! until empty, kernel senders only.

use anyhow::{Context, Result};
use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// A socket for the kernel's uevents, bound (so receiving from now on).
pub fn socket() -> Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        Some(netlink::KOBJECT_UEVENT),
    )
    .context("cannot open the uevent socket")?;
    // A burst of hotplug must not overflow the queue while a request runs.
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(&fd, 8 << 20);
    rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 1)).context("cannot bind the uevent socket")?;
    Ok(fd)
}

/// Has the kernel broadcast `event` (a kernel-format uevent) in the network
/// namespace of `sock`, a `NETLINK_KOBJECT_UEVENT` socket there, as its own
/// (UEVENT_SEND: sender port 0, a fresh SEQNUM), the request sent with
/// credentials `uid`/`gid` (host root may state any; udev wants root's as
/// it sees them), stated for this one message rather than taken on.
pub fn send_as_kernel(sock: &OwnedFd, event: &[u8], uid: u32, gid: u32) -> rustix::io::Result<()> {
    let req = devns_core::uevent::kernel_send_request(event);
    send_with_creds(sock, &SocketAddrNetlink::new(0, 0), &req, uid, gid)
}

/// Multicasts `msg` (libudev's format) to the "udev" group of the network
/// namespace of `sock`, as udevd does, with credentials `uid`/`gid`
/// (libudev drops a message whose sender is not root as it sees it). Host
/// root may send there: it holds `CAP_NET_ADMIN` over every network
/// namespace.
pub fn send_to_udev_group(sock: &OwnedFd, msg: &[u8], uid: u32, gid: u32) -> rustix::io::Result<()> {
    send_with_creds(sock, &SocketAddrNetlink::new(0, devns_core::uevent::UDEV_GROUP), msg, uid, gid)
}

fn send_with_creds(sock: &OwnedFd, to: &SocketAddrNetlink, msg: &[u8], uid: u32, gid: u32) -> rustix::io::Result<()> {
    let creds = rustix::net::UCred {
        pid: rustix::process::getpid(),
        uid: rustix::process::Uid::from_raw(uid),
        gid: rustix::process::Gid::from_raw(gid),
    };
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
    let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !cmsg.push(rustix::net::SendAncillaryMessage::ScmCredentials(creds)) {
        return Err(rustix::io::Errno::NOBUFS);
    }
    rustix::net::sendmsg_addr(sock, to, &[std::io::IoSlice::new(msg)], &mut cmsg, rustix::net::SendFlags::DONTWAIT)
        .map(|_| ())
}

/// What draining found beyond the events.
pub enum Drained {
    Empty,
    /// The queue overflowed: events were lost.
    Lost,
}

/// Hands every queued kernel event to `on`, until the queue is empty or an
/// overflow is reported.
pub fn drain(sock: &OwnedFd, mut on: impl FnMut(&[u8])) -> Drained {
    let mut buf = [0u8; devns_core::uevent::MAX_UEVENT_BYTES + 512];
    loop {
        match rustix::net::recvfrom(sock, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((_, len, addr)) => {
                // Only the kernel (port 0) speaks here; others are ignored.
                let from_kernel = addr.and_then(|a| SocketAddrNetlink::try_from(a).ok()).is_some_and(|a| a.pid() == 0);
                if from_kernel && len <= buf.len() {
                    on(&buf[..len]);
                }
            }
            Err(rustix::io::Errno::AGAIN) => return Drained::Empty,
            Err(rustix::io::Errno::NOBUFS) => return Drained::Lost,
            Err(e) => {
                tracing::warn!(error = %e, "uevent socket");
                return Drained::Empty;
            }
        }
    }
}

/// Makes `run/udev/control` below `root` (a container's root) as the
/// calling thread's identity, where it may: libudev listens on the "udev"
/// group only where udevd seems to run (that file exists) or `/dev` is a
/// devtmpfs, and a view is not. An empty file: nothing listens on it, and
/// `udevadm settle` then waits for no queue. Where the container's root
/// may not write (a `/run` of the host's), nothing is made: `Ok(false)`.
pub fn mark_udev_running(root: BorrowedFd<'_>) -> rustix::io::Result<bool> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use rustix::io::Errno;
    let dir = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let in_root = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let run = rustix::fs::openat2(root, "run", dir, Mode::empty(), in_root)?;
    let mode = |m| Mode::from_raw_mode(m);
    match rustix::fs::mkdirat(&run, "udev", mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(Errno::ACCESS | Errno::PERM | Errno::ROFS) => return Ok(false),
        Err(e) => return Err(e),
    }
    let udev = rustix::fs::openat2(&run, "udev", dir, Mode::empty(), in_root)?;
    let made = rustix::fs::openat(
        &udev,
        "control",
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        mode(0o644),
    );
    match made {
        Ok(_) | Err(Errno::EXIST) => Ok(true),
        Err(Errno::ACCESS | Errno::PERM | Errno::ROFS) => Ok(false),
        Err(e) => Err(e),
    }
}
