//! One client connection: bounded input, queued output, the peer's identity.

use crate::wire;
use devns_core::api::{API_VERSION, MAX_REQUEST_BYTES};
use devns_core::clients::{self, Activity, Caller, Timeouts};
use devns_core::registry::NsId;
use rustix::fd::{AsFd, OwnedFd};
use serde_json::Value;
use std::time::Instant;

/// Fds a client may send ahead of the requests that use them.
const MAX_PENDING_FDS: usize = 8;
/// Buffer capacity an idle connection keeps (larger is given back).
const KEPT_CAPACITY: usize = 16 << 10;

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

    /// The caller, as connection limits see it.
    pub fn caller(&self) -> Caller {
        if self.is_admin() { Caller::Root } else { Caller::User(self.uid) }
    }
}

/// A reply line, with fds to pass beside it.
pub struct Reply {
    pub value: Value,
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    pub fn ok(result: Value) -> Reply {
        Reply { value: serde_json::json!({ "v": API_VERSION, "ok": true, "result": result }), fds: vec![] }
    }

    pub fn err(msg: impl std::fmt::Display) -> Reply {
        let value = serde_json::json!({ "v": API_VERSION, "ok": false, "error": msg.to_string() });
        Reply { value, fds: vec![] }
    }
}

/// What a connection's input holds next.
pub enum Input {
    /// A complete request line (its newline included).
    Line(Vec<u8>),
    /// Nothing complete yet.
    Wait,
    /// The peer closed (or broke) its end, or sent too many fds.
    Closed,
    /// A line longer than `MAX_REQUEST_BYTES` (its newline not counted).
    TooLong,
}

/// `v` as a line of the API.
pub fn line(v: &Value) -> Vec<u8> {
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    line
}

pub struct Conn {
    pub sock: OwnedFd,
    pub peer: Peer,
    /// Received bytes; those before `start` are lines already taken. At
    /// most one line's limit (and its newline) is ever buffered.
    inbuf: Vec<u8>,
    start: usize,
    pub fds: Vec<OwnedFd>,
    out: Vec<u8>,
    pub deadline: Option<Instant>,
    pub subscribed: bool,
    /// Nothing more is read; closed once what is queued is sent.
    closing: bool,
    /// Why it is being closed, for the daemon's log.
    pub why: Option<&'static str>,
    /// Whether the epoll set waits for this connection's writability
    /// (and then not for its input: replies go out before more is read).
    pub out_watched: bool,
    /// Its token in the daemon's epoll set.
    pub token: u64,
    /// The namespace its `run` provisioned (0: none), which a `listen`
    /// on it serves.
    pub ran: u64,
    partial_since: Option<Instant>,
    last_progress: Instant,
}

impl Conn {
    pub fn new(sock: OwnedFd, peer: Peer, token: u64) -> Conn {
        Conn {
            sock,
            peer,
            inbuf: Vec::new(),
            start: 0,
            fds: Vec::new(),
            out: Vec::new(),
            deadline: None,
            subscribed: false,
            closing: false,
            why: None,
            out_watched: false,
            token,
            ran: 0,
            partial_since: None,
            last_progress: Instant::now(),
        }
    }

    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Closes the connection once what is queued is sent.
    pub fn close(&mut self, why: &'static str) {
        self.closing = true;
        self.why.get_or_insert(why);
    }

    /// Reads nothing more (the peer closed its end); closed once what is
    /// queued is sent.
    pub fn stop_reading(&mut self) {
        self.closing = true;
    }

    /// Whether nothing is left to do with it.
    pub fn finished(&self) -> bool {
        self.closing && self.out.is_empty()
    }

    /// Queues a line; a connection whose queue would pass its caller's
    /// bound is closed instead (one line always fits an empty queue), and
    /// `flush` says it is finished.
    pub fn queue(&mut self, v: &Value) {
        let line = line(v);
        if !self.out.is_empty() && self.out.len() + line.len() > self.peer.caller().max_queued() {
            // Closed at once: what it left unread is dropped with it.
            self.out.clear();
            self.close("it does not read what is sent to it");
            return;
        }
        self.out.extend_from_slice(&line);
    }

    pub fn reply(&mut self, r: Reply) {
        if r.fds.is_empty() {
            self.queue(&r.value);
            return;
        }
        // Fds ride with the first byte of their own line: what is queued
        // must be gone first.
        let _ = self.flush();
        let line = line(&r.value);
        if !self.out.is_empty() {
            self.close("it does not read its replies");
            return;
        }
        let fds: Vec<_> = r.fds.iter().map(|f| f.as_fd()).collect();
        match wire::send_with_fds(self.sock.as_fd(), &line, &fds) {
            Ok(n) => {
                self.last_progress = Instant::now();
                self.out.extend_from_slice(&line[n..]);
            }
            Err(_) => self.closing = true,
        }
    }

    /// Sends what is queued; false when the connection is finished.
    pub fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            match rustix::net::send(&self.sock, &self.out, rustix::net::SendFlags::NOSIGNAL) {
                Ok(n) => {
                    self.out.drain(..n);
                    self.last_progress = Instant::now();
                }
                Err(rustix::io::Errno::AGAIN) => return true,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return false,
            }
        }
        if self.out.capacity() > KEPT_CAPACITY {
            self.out = Vec::new();
        }
        !self.closing
    }

    /// The next complete request line, read from the socket only as far
    /// as one line's limit: a line longer than that is refused however it
    /// ends, and no more than it is ever buffered.
    pub fn next_input(&mut self) -> Input {
        if self.closing {
            return Input::Wait;
        }
        loop {
            if let Some(i) = self.inbuf[self.start..].iter().position(|b| *b == b'\n') {
                let end = self.start + i + 1;
                let line = self.inbuf[self.start..end].to_vec();
                self.start = end;
                if self.start == self.inbuf.len() {
                    self.inbuf.clear();
                    self.start = 0;
                    self.partial_since = None;
                } else {
                    self.partial_since = Some(Instant::now());
                }
                return Input::Line(line);
            }
            // What is buffered is part of one line: keep only it.
            self.inbuf.drain(..self.start);
            self.start = 0;
            if self.inbuf.len() > MAX_REQUEST_BYTES {
                return Input::TooLong;
            }
            let mut chunk = [0u8; 16384];
            let room = (MAX_REQUEST_BYTES + 1 - self.inbuf.len()).min(chunk.len());
            match wire::recv_with_fds(self.sock.as_fd(), &mut chunk[..room], &mut self.fds) {
                Ok(0) => return Input::Closed,
                Ok(n) => {
                    let now = Instant::now();
                    if self.inbuf.is_empty() {
                        self.partial_since = Some(now);
                    }
                    self.last_progress = now;
                    self.inbuf.reserve_exact(n);
                    self.inbuf.extend_from_slice(&chunk[..n]);
                }
                Err(rustix::io::Errno::AGAIN) => {
                    if self.inbuf.is_empty() && self.inbuf.capacity() > KEPT_CAPACITY {
                        self.inbuf = Vec::new();
                    }
                    return Input::Wait;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return Input::Closed,
            }
            if self.fds.len() > MAX_PENDING_FDS {
                self.why = Some("it sent too many fds");
                return Input::Closed;
            }
        }
    }

    /// Sets `deadline` from what the connection is doing now.
    pub fn refresh_deadline(&mut self, t: &Timeouts) {
        let a = Activity {
            caller: self.peer.caller(),
            subscribed: self.subscribed,
            partial_since: self.partial_since,
            last_progress: self.last_progress,
            output_queued: self.wants_write(),
        };
        self.deadline = clients::deadline(&a, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    /// A connection of host uid `uid` (0: host root) and the client's end.
    fn pair(uid: u32) -> (Conn, UnixStream) {
        let (daemon, client) = UnixStream::pair().unwrap();
        daemon.set_nonblocking(true).unwrap();
        let peer = Peer { uid, pid: 1, ns: None };
        (Conn::new(OwnedFd::from(daemon), peer, 1), client)
    }

    fn lines(c: &mut Conn) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        while let Input::Line(l) = c.next_input() {
            v.push(l);
        }
        v
    }

    #[test]
    fn a_line_of_the_limit_is_read_and_one_byte_more_is_refused_unbuffered() {
        let (mut c, mut client) = pair(0);
        let mut at_limit = vec![b' '; MAX_REQUEST_BYTES];
        at_limit.push(b'\n');
        // The writer's last lines find the connection closed.
        std::thread::spawn(move || {
            let _ = client.write_all(&at_limit);
            let _ = client.write_all(b"a\nb\n");
            let _ = client.write_all(&vec![b'x'; 3 * MAX_REQUEST_BYTES]);
            let _ = client.write_all(b"\n");
        });
        let mut got = Vec::new();
        loop {
            match c.next_input() {
                Input::Line(l) => got.push(l.len()),
                Input::Wait => std::thread::yield_now(),
                Input::TooLong => break,
                Input::Closed => panic!("closed"),
            }
            assert!(c.inbuf.len() <= MAX_REQUEST_BYTES + 1, "buffered {}", c.inbuf.len());
        }
        assert_eq!(got, [MAX_REQUEST_BYTES + 1, 2, 2]);
        assert!(c.inbuf.len() <= MAX_REQUEST_BYTES + 1);
    }

    #[test]
    fn lines_end_where_their_newline_is_and_a_partial_one_waits() {
        let (mut c, mut client) = pair(0);
        client.write_all(b"one\ntwo\nthr").unwrap();
        assert_eq!(lines(&mut c), [b"one\n".to_vec(), b"two\n".to_vec()]);
        assert!(c.partial_since.is_some(), "a request has begun");
        client.write_all(b"ee\n").unwrap();
        assert_eq!(lines(&mut c), [b"three\n".to_vec()]);
        assert!(c.partial_since.is_none());
        drop(client);
        assert!(matches!(c.next_input(), Input::Closed));
    }

    #[test]
    fn output_past_the_bound_closes_the_connection() {
        for (uid, bound) in [(65534, clients::USER_QUEUED), (0, clients::ROOT_QUEUED)] {
            let (mut c, _client) = pair(uid);
            let big = Value::String("x".repeat(1000));
            // One line always fits an empty queue, however long.
            c.queue(&Value::String("y".repeat(2 * bound)));
            assert!(c.flush(), "not finished while the client may still read");
            let mut queued = 0;
            while c.flush() && queued < 2 * bound / 1000 + 10_000 {
                c.queue(&big);
                queued += 1;
            }
            assert!(c.finished(), "uid {uid}: closed once its queue passed {bound}");
            assert!(!c.wants_write(), "what it left unread is dropped");
        }
    }
}
