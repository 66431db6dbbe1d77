//! The daemon's event loop: signals, the API socket and its clients, the
//! kernel's uevents, watched processes and seccomp listeners, each fd in one
//! epoll set; every event goes to the engine or to a connection.

use super::conn::{self, Conn, Reply};
use super::{Daemon, LINES_PER_TURN, Target};
use anyhow::{Context, Result};
use devns_core::api::MAX_REQUEST_BYTES;
use devns_sys::signal::SignalFd;
use rustix::event::epoll::EventFlags;
use rustix::fd::OwnedFd;
use rustix::net::{SendFlags, SocketFlags};
use std::time::Instant;

impl Daemon {
    pub(super) fn serve(&mut self, listener: &OwnedFd, uevents: &OwnedFd, signals: &SignalFd) -> Result<()> {
        self.watch(signals, Target::Signals);
        self.watch(listener, Target::Listener);
        self.watch(uevents, Target::Uevents);
        super::watch_in(&self.ep, &mut self.targets, &mut self.next_token, &self.agent.fd, Target::AgentSock);
        super::watch_in(&self.ep, &mut self.targets, &mut self.next_token, &self.lxc.fd, Target::LxcSock);
        self.watch_holder();
        for id in self.engine.kept_ids() {
            self.watch_members(id);
        }
        self.spare_fd = rustix::fs::open("/dev/null", rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty()).ok();
        let mut events = Vec::with_capacity(256);
        self.engine.prepare();
        loop {
            let now = Instant::now();
            let retry = self.engine.next_retry(now);
            // Connections with lines left from their turn go on at once.
            let unserved = (!self.ready.is_empty()).then_some(now);
            let agent_deadline = self.agent.next_deadline();
            let next_deadline =
                self.conns.values().filter_map(|c| c.deadline).chain(retry).chain(unserved).chain(agent_deadline).min();
            let timeout = next_deadline.map(|d| {
                let left = d.saturating_duration_since(now);
                rustix::event::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: left.subsec_nanos() as i64 }
            });
            events.clear();
            // The next namespace's device program is loaded ahead only when
            // nothing waits: a container's call trapped meanwhile (its
            // first execve, as its attach ends) goes first.
            let spare = self.engine.wants_spare();
            let now = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
            let n = wait(&self.ep, &mut events, if spare { Some(&now) } else { timeout.as_ref() })?;
            if spare && n == 0 {
                self.engine.prepare();
                wait(&self.ep, &mut events, timeout.as_ref())?;
            }
            for ev in events.iter().copied() {
                let (token, flags) = (ev.data.u64(), ev.flags);
                // An fd closed meanwhile left the set; its token is stale.
                let Some(target) = self.targets.get(&token).copied() else { continue };
                match target {
                    Target::Signals => {
                        if let Some(si) = signals.read().context("signalfd")? {
                            tracing::info!(signal = si.signo, "stopping; views stay mounted in their containers");
                            return Ok(());
                        }
                    }
                    Target::Listener => self.accept(listener),
                    Target::Uevents => self.engine.drain_uevents(uevents),
                    Target::Conn(id) => self.on_conn(id),
                    Target::AgentSock => self.agent_accept(),
                    Target::AgentConn(id) => self.agent_read(id),
                    Target::LxcSock => self.lxc_accept(),
                    Target::LxcConn(id) => self.lxc_read(id),
                    Target::Member(ns, pid) => {
                        self.targets.remove(&token);
                        if self.engine.member_exited(ns, pid) {
                            self.watch_members(ns);
                        } else {
                            self.targets.retain(|_, t| !matches!(t, Target::Member(n, _) if *n == ns));
                        }
                    }
                    Target::Holder => {
                        if self.holder_gone() {
                            tracing::warn!("the holder of the seccomp listeners is gone; starting another");
                            self.rehold();
                        }
                    }
                    Target::Agent(key) => {
                        if flags.intersects(EventFlags::HUP | EventFlags::ERR) {
                            self.targets.remove(&token);
                            self.listener_hung_up(key);
                        } else if flags.contains(EventFlags::IN) {
                            self.answer_call(key);
                        }
                    }
                }
            }
            self.flush_events();
            self.update_status();
            self.refresh_cdi();
            for id in std::mem::take(&mut self.ready) {
                self.on_conn(id);
            }
            self.engine.retry_busy();
            let now = Instant::now();
            self.agent_expire(now);
            let expired: Vec<u64> =
                self.conns.iter().filter(|(_, c)| c.deadline.is_some_and(|d| d <= now)).map(|(i, _)| *i).collect();
            for id in expired {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.why = Some("it made no progress in time (an unfinished request, idle, or not reading)");
                }
                self.drop_conn(id);
            }
        }
    }

    pub(super) fn drop_conn(&mut self, id: u64) {
        let Some(c) = self.conns.remove(&id) else { return };
        self.targets.remove(&c.token);
        self.ready.remove(&id);
        if let devns_core::clients::Caller::User(uid) = c.peer.caller() {
            self.non_root -= 1;
            if let Some(n) = self.users.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    self.users.remove(&uid);
                }
            }
        }
        if let Some(why) = c.why
            && self.conn_log.allow()
        {
            tracing::warn!(uid = c.peer.uid, pid = c.peer.pid, "closing a connection: {why}");
        }
    }

    /// While output is queued, a connection is watched for writability
    /// only: nothing more of it is read before it takes its replies.
    pub(super) fn update_interest(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let want = c.wants_write();
        if want != c.out_watched {
            let flags = if want { EventFlags::OUT } else { EventFlags::IN };
            let data = rustix::event::epoll::EventData::new_u64(c.token);
            let _ = rustix::event::epoll::modify(&self.ep, &c.sock, data, flags);
            c.out_watched = want;
        }
    }

    pub(super) fn accept(&mut self, listener: &OwnedFd) {
        while let Some(sock) = accept_next(listener, &mut self.spare_fd, &mut self.conn_log, "the API socket") {
            let peer = match conn::Peer::of(&sock, self.host_ns) {
                Ok(peer) => peer,
                Err(e) => {
                    if self.conn_log.allow() {
                        tracing::warn!(error = %e, "cannot identify a client; closing it");
                    }
                    continue;
                }
            };
            let caller = peer.caller();
            let uid = match caller {
                devns_core::clients::Caller::User(uid) => Some(uid),
                devns_core::clients::Caller::Root => None,
            };
            let load = devns_core::clients::Load {
                open_fds: super::limits::open_fds(),
                non_root: self.non_root,
                of_uid: uid.and_then(|u| self.users.get(&u).copied()).unwrap_or(0),
            };
            let budget = devns_core::clients::Budget::of_limit(super::limits::fd_limit());
            if let Err(why) = devns_core::clients::admit(caller, &load, &budget) {
                if self.conn_log.allow() {
                    tracing::warn!(uid = peer.uid, pid = peer.pid, "refused a connection: {why}");
                }
                // The reason, if the socket takes it; then the close.
                let line = conn::line(&Reply::err(&why).value);
                let _ = rustix::net::send(&sock, &line, SendFlags::NOSIGNAL | SendFlags::DONTWAIT);
                continue;
            }
            if let Some(u) = uid {
                *self.users.entry(u).or_default() += 1;
                self.non_root += 1;
            }
            self.next_conn += 1;
            let id = self.next_conn;
            let token = self.watch(&sock, Target::Conn(id));
            let mut c = Conn::new(sock, peer, token);
            c.refresh_deadline(&self.timeouts);
            self.conns.insert(id, c);
        }
    }

    /// A connection's turn: what is queued goes out, then its requests
    /// are served one by one while their replies are taken (at most
    /// `LINES_PER_TURN` of them, so that one client cannot hold the loop).
    pub(super) fn on_conn(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if !c.flush() {
            self.drop_conn(id);
            return;
        }
        let mut served = 0;
        loop {
            let Some(c) = self.conns.get_mut(&id) else { return };
            if c.wants_write() {
                break;
            }
            if served == LINES_PER_TURN {
                self.ready.insert(id);
                break;
            }
            match c.next_input() {
                conn::Input::Line(line) => {
                    served += 1;
                    let reply = self.handle_line(id, &line);
                    // What the request changed is heard before its reply.
                    self.flush_events();
                    let Some(c) = self.conns.get_mut(&id) else { return };
                    c.reply(reply);
                    if !c.flush() {
                        break;
                    }
                }
                conn::Input::Wait => break,
                conn::Input::Closed => {
                    c.stop_reading();
                    break;
                }
                conn::Input::TooLong => {
                    c.reply(Reply::err(format!(
                        "request larger than {MAX_REQUEST_BYTES} bytes (the limit of a line, its newline not counted)"
                    )));
                    c.close("its request was too large");
                    let _ = c.flush();
                    break;
                }
            }
        }
        let Some(c) = self.conns.get_mut(&id) else { return };
        if c.finished() || !c.flush() {
            self.drop_conn(id);
            return;
        }
        c.refresh_deadline(&self.timeouts);
        self.update_interest(id);
    }
}

/// One `epoll_wait` into `events` (an interrupted one: none); how many.
fn wait(
    ep: &OwnedFd,
    events: &mut Vec<rustix::event::epoll::Event>,
    timeout: Option<&rustix::event::Timespec>,
) -> Result<usize> {
    match rustix::event::epoll::wait(ep, rustix::buffer::spare_capacity(events), timeout) {
        Ok(n) => Ok(n),
        Err(rustix::io::Errno::INTR) => Ok(0),
        Err(e) => Err(e).context("epoll_wait"),
    }
}

/// The next connection waiting on `listener` (nonblocking, close-on-exec);
/// `None` once none waits, or when none can be taken: one there is no fd
/// for is refused through the spare fd ([`shed`]), and every failure is
/// logged (rate-limited by `log`) naming `what`.
pub(super) fn accept_next(
    listener: &OwnedFd,
    spare: &mut Option<OwnedFd>,
    log: &mut super::limits::LogLimit,
    what: &str,
) -> Option<OwnedFd> {
    loop {
        match rustix::net::accept_with(listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
            Ok(s) => return Some(s),
            Err(rustix::io::Errno::AGAIN) => return None,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                let no_fd = matches!(e, rustix::io::Errno::MFILE | rustix::io::Errno::NFILE);
                if no_fd {
                    shed(spare, listener);
                }
                if log.allow() {
                    let why = if no_fd { "no fd left for a new connection; refused it" } else { "cannot accept" };
                    tracing::warn!(error = %e, "{why} on {what}");
                }
                return None;
            }
        }
    }
}

/// A connection there is no fd for, refused through the spare fd: left in
/// the backlog, it would wake the loop again and again.
pub(super) fn shed(spare: &mut Option<OwnedFd>, listener: &OwnedFd) {
    drop(spare.take());
    drop(rustix::net::accept(listener));
    *spare = rustix::fs::open("/dev/null", rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty()).ok();
}
