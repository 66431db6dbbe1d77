//! LXC's seccomp notify proxy (`lxc.seccomp.notify.proxy =
//! unix:/run/devns/lxc.sock`): a container's monitor, host root, connects
//! at the container's start (`SOCK_SEQPACKET`) and forwards each call its
//! container's filter traps, with the notify fd; devns's agent decides it
//! as it decides its own listeners' calls, and the answer goes back in the
//! reply, which LXC hands to the kernel. The messages are
//! `devns_core::lxcproxy`'s.

use super::{Daemon, Target};
use anyhow::Result;
use devns_core::lxcproxy::{self, Sizes};
use rustix::fd::{AsFd, OwnedFd};
use rustix::net::SocketType;
use std::collections::BTreeMap;
use std::path::Path;

/// Most monitors connected at once (one per running LXC container).
const MAX_CONNS: usize = 4096;

pub struct LxcSock {
    pub fd: OwnedFd,
    conns: BTreeMap<u64, (OwnedFd, u64)>,
    next: u64,
    sizes: Option<Sizes>,
}

/// Binds the socket at `path`, root's alone (0600); a stale file (nobody
/// listening) is replaced, a live one refused.
pub fn bind(path: &Path) -> Result<LxcSock> {
    super::clear_stale_socket(path, SocketType::SEQPACKET, "LXC proxy socket")?;
    let fd = super::bind_listening(path, 0o177, SocketType::SEQPACKET)?;
    let sizes = devns_sys::seccomp::notif_sizes().ok().map(|s| Sizes { notif: s.notif, resp: s.resp, data: s.data });
    Ok(LxcSock { fd, conns: BTreeMap::new(), next: 0, sizes })
}

impl Daemon {
    pub(super) fn lxc_accept(&mut self) {
        while let Some(sock) =
            super::serve::accept_next(&self.lxc.fd, &mut self.spare_fd, &mut self.agent_log, "the LXC proxy socket")
        {
            // The file is 0600; the peer is checked too: host root only.
            let root = super::conn::Peer::of(&sock, self.host_ns).is_ok_and(|p| p.is_admin());
            if !root || self.lxc.conns.len() >= MAX_CONNS {
                if self.agent_log.allow() {
                    tracing::warn!("refused a connection to the LXC proxy socket: not host root, or too many");
                }
                continue;
            }
            let id = self.lxc.next;
            self.lxc.next += 1;
            let token = super::watch_in(&self.ep, &mut self.targets, &mut self.next_token, &sock, Target::LxcConn(id));
            self.lxc.conns.insert(id, (sock, token));
        }
    }

    fn drop_lxc_conn(&mut self, id: u64) {
        if let Some((_, token)) = self.lxc.conns.remove(&id) {
            self.targets.remove(&token);
        }
    }

    /// One forwarded call: decided, and the answer sent back. A message
    /// devns cannot read ends the connection, with a log line (LXC then
    /// answers the call `ENOSYS` itself and connects again).
    pub(super) fn lxc_read(&mut self, id: u64) {
        loop {
            let Some((sock, _)) = self.lxc.conns.get(&id) else { return };
            let mut buf = vec![0u8; lxcproxy::MAX_MESSAGE];
            let mut fds = Vec::new();
            let got = crate::wire::recv_message(sock.as_fd(), &mut buf, &mut fds, rustix::net::RecvFlags::DONTWAIT);
            let (n, cut) = match got {
                Ok((0, _)) => return self.drop_lxc_conn(id),
                Ok(r) => r,
                Err(rustix::io::Errno::AGAIN) => return,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return self.drop_lxc_conn(id),
            };
            let refuse = |why: String| {
                tracing::warn!("closing an LXC proxy connection: {why}");
            };
            if cut {
                refuse("a message longer than any devns takes".into());
                return self.drop_lxc_conn(id);
            }
            let Some(sizes) = self.lxc.sizes else {
                refuse("the kernel's seccomp structure sizes are unknown".into());
                return self.drop_lxc_conn(id);
            };
            let call = match lxcproxy::parse(&buf[..n], sizes) {
                Ok(c) => c,
                Err(why) => {
                    refuse(why);
                    return self.drop_lxc_conn(id);
                }
            };
            if fds.len() != 3 {
                refuse(format!("{} fds with a call, not /proc/PID, its mem and the notify fd", fds.len()));
                return self.drop_lxc_conn(id);
            }
            let notify = fds.pop().expect("three");
            let notif = devns_sys::seccomp::Notif {
                id: call.id,
                pid: call.pid,
                flags: call.flags,
                data: devns_sys::seccomp::SeccompData {
                    nr: call.nr,
                    arch: call.arch,
                    instruction_pointer: call.instruction_pointer,
                    args: call.args,
                },
            };
            let resp = match crate::agent::Listener::lent(notify) {
                Ok(mut l) => l.answer(&notif, &mut self.engine),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take on an LXC call");
                    None
                }
            };
            // A caller gone meanwhile: any answer, which the kernel drops.
            let r = resp.unwrap_or(devns_sys::seccomp::NotifResp {
                id: call.id,
                val: 0,
                error: -(rustix::io::Errno::NOENT.raw_os_error()),
                flags: 0,
            });
            let reply = lxcproxy::reply(&buf[..n], r.id, r.val, r.error, r.flags);
            let Some((sock, _)) = self.lxc.conns.get(&id) else { return };
            if rustix::net::send(sock, &reply, rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT)
                .is_err()
            {
                return self.drop_lxc_conn(id);
            }
        }
    }
}
