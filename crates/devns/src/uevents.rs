//! The kernel's uevents, as devns receives them: one netlink socket, read
//! until empty, kernel senders only.

use anyhow::{Context, Result};
use rustix::fd::OwnedFd;
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
