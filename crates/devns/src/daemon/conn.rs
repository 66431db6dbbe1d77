//! One client connection: bounded input, queued output, the peer's identity.

use crate::wire;
use devns_core::api::{API_VERSION, MAX_REQUEST_BYTES};
use devns_core::registry::NsId;
use rustix::fd::{AsFd, OwnedFd};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Output a slow reader may leave queued before it is dropped.
const MAX_QUEUED: usize = 4 << 20;
/// Fds a client may send ahead of the requests that use them.
const MAX_PENDING_FDS: usize = 8;

/// Who is at the other end: host uid (SO_PEERCRED) and user namespace
/// (from SO_PEERPIDFD), `None` for the host's own.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub uid: u32,
    pub pid: i32,
    pub ns: Option<NsId>,
}

impl Peer {
    pub fn of(sock: &OwnedFd, host_ns: NsId) -> anyhow::Result<Peer> {
        let cred = rustix::net::sockopt::socket_peercred(sock)?;
        let pidfd = devns_sys::ns::peer_pidfd(sock)?;
        let nsfd = devns_sys::ns::pidfd_user_ns(&pidfd)?;
        let ns = NsId(devns_sys::ns::ns_id(&nsfd)?);
        Ok(Peer { uid: cred.uid.as_raw(), pid: cred.pid.as_raw_nonzero().get(), ns: (ns != host_ns).then_some(ns) })
    }

    /// Host root: may change ownership and see everything.
    pub fn is_admin(&self) -> bool {
        self.uid == 0 && self.ns.is_none()
    }
}

/// A reply line, with fds to pass beside it and whether to close after.
pub struct Reply {
    pub value: Value,
    pub fds: Vec<OwnedFd>,
    pub close: bool,
}

impl Reply {
    pub fn ok(result: Value) -> Reply {
        Reply {
            value: serde_json::json!({ "v": API_VERSION, "ok": true, "result": result }),
            fds: vec![],
            close: false,
        }
    }

    pub fn err(msg: impl std::fmt::Display) -> Reply {
        let value = serde_json::json!({ "v": API_VERSION, "ok": false, "error": msg.to_string() });
        Reply { value, fds: vec![], close: false }
    }
}

pub struct Conn {
    pub sock: OwnedFd,
    pub peer: Peer,
    inbuf: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    out: Vec<u8>,
    pub deadline: Option<Instant>,
    pub subscribed: bool,
    closing: bool,
    /// Whether the epoll set asks for this connection's writability.
    pub out_watched: bool,
    /// Its token in the daemon's epoll set.
    pub token: u64,
}

impl Conn {
    pub fn new(sock: OwnedFd, peer: Peer, token: u64) -> Conn {
        Conn {
            sock,
            peer,
            inbuf: Vec::new(),
            fds: Vec::new(),
            out: Vec::new(),
            deadline: None,
            subscribed: false,
            closing: false,
            out_watched: false,
            token,
        }
    }

    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    pub fn queue(&mut self, v: &Value) {
        if self.out.len() > MAX_QUEUED {
            self.closing = true;
            return;
        }
        if let Ok(mut line) = serde_json::to_vec(v) {
            line.push(b'\n');
            self.out.extend_from_slice(&line);
        }
    }

    pub fn reply(&mut self, r: Reply) {
        if r.close {
            self.closing = true;
        }
        if r.fds.is_empty() {
            self.queue(&r.value);
            return;
        }
        // Fds ride with the first byte of their own line: what is queued
        // must be gone first.
        let _ = self.flush();
        let Ok(mut line) = serde_json::to_vec(&r.value) else { return };
        line.push(b'\n');
        if !self.out.is_empty() {
            tracing::warn!(pid = self.peer.pid, "client does not read its replies; closing it");
            self.closing = true;
            return;
        }
        let fds: Vec<_> = r.fds.iter().map(|f| f.as_fd()).collect();
        match wire::send_with_fds(self.sock.as_fd(), &line, &fds) {
            Ok(n) => self.out.extend_from_slice(&line[n..]),
            Err(_) => self.closing = true,
        }
    }

    /// Sends what is queued; false when the connection is finished.
    pub fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            match rustix::net::send(&self.sock, &self.out, rustix::net::SendFlags::NOSIGNAL) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(rustix::io::Errno::AGAIN) => return true,
                Err(_) => return false,
            }
        }
        !self.closing
    }

    /// Reads what arrived; returns complete request lines and whether the
    /// connection stays open (false on close, oversized input, fd flood).
    pub fn read_lines(&mut self, deadline: Duration) -> (Vec<Vec<u8>>, bool) {
        let mut lines = Vec::new();
        loop {
            let mut chunk = [0u8; 16384];
            match wire::recv_with_fds(self.sock.as_fd(), &mut chunk, &mut self.fds) {
                Ok(0) => return (lines, false),
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return (lines, false),
            }
            if self.fds.len() > MAX_PENDING_FDS {
                tracing::warn!(pid = self.peer.pid, "client sent too many fds; closing it");
                return (lines, false);
            }
            while let Some(i) = self.inbuf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.inbuf.drain(..=i).collect();
                lines.push(line);
            }
            if self.inbuf.len() > MAX_REQUEST_BYTES {
                tracing::warn!(pid = self.peer.pid, "request too large; closing the connection");
                self.reply(Reply::err(format!("request larger than {MAX_REQUEST_BYTES} bytes")));
                return (lines, false);
            }
        }
        self.deadline =
            if self.inbuf.is_empty() { None } else { Some(self.deadline.unwrap_or(Instant::now() + deadline)) };
        (lines, true)
    }
}
