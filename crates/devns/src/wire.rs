//! The socket API's framing, shared by the daemon and the CLI: one JSON
//! object per line, with file descriptors passed beside a line
//! (`SCM_RIGHTS`) where a request or reply carries them.

use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::io;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;

/// Most fds one message may carry.
pub const MAX_FDS: usize = 4;

/// Sends `bytes`, the first part with `fds` attached; returns how many bytes
/// went (the rest is the caller's to send, fds are never sent twice).
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Errno::TOOMANYREFS);
    }
    rustix::net::sendmsg(sock, &[IoSlice::new(bytes)], &mut cmsg, SendFlags::NOSIGNAL)
}

/// Receives what is there (at most `buf.len()` bytes) with any fds;
/// 0 bytes means the peer closed.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    recv_message(sock, buf, fds, RecvFlags::empty()).map(|(n, _)| n)
}

/// One message (at most `buf.len()` bytes) with any fds, received with
/// `flags` (fds close-on-exec): its length, and whether it or its fds were
/// cut short (`MSG_TRUNC`/`MSG_CTRUNC`, for datagram sockets).
pub fn recv_message(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    flags: RecvFlags,
) -> io::Result<(usize, bool)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut cmsg, flags | RecvFlags::CMSG_CLOEXEC)?;
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(got) = m {
            fds.extend(got);
        }
    }
    let cut = msg.flags.intersects(rustix::net::ReturnFlags::TRUNC | rustix::net::ReturnFlags::CTRUNC);
    Ok((msg.bytes, cut))
}
