//! The runtime-spec seccomp agent socket (`linux.seccomp.listenerPath`):
//! a runtime connects, sends its container process state with the
//! listener fd, and closes; the daemon serves that listener as it serves
//! one passed with `listen`. Read without blocking the loop, bounded in
//! bytes, fds and time; what is taken is decided by
//! `devns_core::agentsock`.

use super::{Daemon, Target, conn::Peer};
use anyhow::Result;
use devns_core::agentsock::{self as decide, Facts, Refusal, Served};
use rustix::fd::{AsFd, OwnedFd};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// What is due at the first call a runtime's listener traps (its
/// container's first `execve`).
pub(super) enum Due {
    /// The container asked for devns and is not under it yet: attached.
    Attach(devns_core::hook::Wanted),
    /// It was attached as its listener came, while its runtime was still
    /// at work: the runtime's device rules of process `pid` deferred to
    /// devns's program again, in case it wrote some since.
    Defer { pid: i32 },
}

impl Due {
    /// As noted for a restarted daemon.
    pub(super) fn note(&self) -> devns_core::keep::DueNote {
        match self {
            Due::Attach(w) => devns_core::keep::DueNote::Attach { name: w.name.clone(), devices: w.devices.clone() },
            Due::Defer { pid } => devns_core::keep::DueNote::Defer { pid: *pid },
        }
    }

    pub(super) fn from_note(n: devns_core::keep::DueNote) -> Due {
        match n {
            devns_core::keep::DueNote::Attach { name, devices } => {
                Due::Attach(devns_core::hook::Wanted { name, devices })
            }
            devns_core::keep::DueNote::Defer { pid } => Due::Defer { pid },
        }
    }
}

/// What became of what a listener's first call was to do.
pub(super) enum FirstCall {
    /// Done (or done before, by a hook): the call is answered as any.
    Done,
    /// It failed: the call fails with this errno.
    Failed(rustix::io::Errno),
    /// The call was interrupted before: nothing to answer, and the next
    /// call does it.
    Gone(Due),
}

/// The socket and its unfinished connections.
pub struct AgentSock {
    pub fd: OwnedFd,
    pending: BTreeMap<u64, Pending>,
    next: u64,
}

/// A connection whose message has not ended yet.
struct Pending {
    sock: OwnedFd,
    token: u64,
    peer_pid: i32,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
    deadline: Instant,
}

/// Binds the socket at `path`, root's alone (0600): only host root's
/// runtimes connect. A socket file nobody listens on is a leftover of a
/// daemon that died, and replaced.
pub fn bind(path: &Path) -> Result<AgentSock> {
    super::clear_stale_socket(path, rustix::net::SocketType::STREAM, "seccomp agent socket")?;
    let fd = super::bind_stream(path, 0o177)?;
    Ok(AgentSock::activated(fd))
}

impl AgentSock {
    /// Serving `fd`, a listening socket (a socket unit's, or bound here).
    pub fn activated(fd: OwnedFd) -> AgentSock {
        AgentSock { fd, pending: BTreeMap::new(), next: 0 }
    }

    /// The earliest deadline of an unfinished connection.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }
}

impl Daemon {
    /// One log line. Only host root reaches the socket (its mode), so only
    /// lines about other peers (a mode opened up) are rate-limited.
    fn refuse(&mut self, why: &Refusal, id: Option<&str>, pid: i32) {
        if matches!(why, Refusal::NotHostRoot { .. }) && !self.agent_log.allow() {
            return;
        }
        tracing::warn!(container = id.unwrap_or("?"), pid, "refused a runtime's seccomp listener: {why}");
    }

    /// New connections to the agent socket.
    pub(super) fn agent_accept(&mut self) {
        while let Some(sock) = super::serve::accept_next(
            &self.agent.fd,
            &mut self.spare_fd,
            &mut self.agent_log,
            "the seccomp agent socket",
        ) {
            let (uid, pid, host_ns) = match peer_of(&sock, self.host_ns) {
                Ok(p) => p,
                Err(e) => {
                    if self.agent_log.allow() {
                        tracing::warn!(error = %e, "cannot identify a peer of the seccomp agent socket; closing it");
                    }
                    continue;
                }
            };
            if let Err(why) = decide::admit(uid, host_ns, self.agent.pending.len()) {
                self.refuse(&why, None, pid);
                continue;
            }
            self.agent.next += 1;
            let id = self.agent.next;
            let token = self.watch(&sock, Target::AgentConn(id));
            let p = Pending {
                sock,
                token,
                peer_pid: pid,
                buf: Vec::new(),
                fds: Vec::new(),
                deadline: Instant::now() + self.timeouts.request,
            };
            self.agent.pending.insert(id, p);
        }
    }

    /// What a connection sent; once it is a whole message (or at its end
    /// of file), the message decided and the connection closed.
    pub(super) fn agent_read(&mut self, id: u64) {
        let Some(p) = self.agent.pending.get_mut(&id) else { return };
        let mut chunk = vec![0u8; 64 << 10];
        let end = loop {
            let room = decide::MAX_READ - p.buf.len();
            if room == 0 {
                break Err(Refusal::TooLarge);
            }
            let n = chunk.len().min(room);
            match crate::wire::recv_with_fds(p.sock.as_fd(), &mut chunk[..n], &mut p.fds) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    p.buf.extend_from_slice(&chunk[..n]);
                    if p.fds.len() > decide::MAX_FDS {
                        break Err(Refusal::TooManyFds);
                    }
                    if decide::whole(&p.buf) {
                        break Ok(());
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return,
                Err(rustix::io::Errno::INTR) => {}
                // A reset before its end: what it sent is not whole.
                Err(e) => {
                    let pid = p.peer_pid;
                    self.drop_agent_conn(id);
                    tracing::warn!(pid, error = %e, "refused a runtime's seccomp listener: cannot read its message");
                    return;
                }
            }
        };
        let Some(p) = self.agent.pending.remove(&id) else { return };
        self.targets.remove(&p.token);
        match end {
            Ok(()) => self.agent_message(p),
            Err(why) => self.refuse(&why, None, p.peer_pid),
        }
    }

    /// Connections past their deadline, dropped.
    pub(super) fn agent_expire(&mut self, now: Instant) {
        let late: Vec<u64> = self.agent.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(i, _)| *i).collect();
        for id in late {
            if let Some(pid) = self.agent.pending.get(&id).map(|p| p.peer_pid) {
                self.drop_agent_conn(id);
                self.refuse(&Refusal::TooSlow, None, pid);
            }
        }
    }

    fn drop_agent_conn(&mut self, id: u64) {
        if let Some(p) = self.agent.pending.remove(&id) {
            self.targets.remove(&p.token);
        }
    }

    /// A whole message: its listener served, or refused (its fds closed).
    fn agent_message(&mut self, p: Pending) {
        let Pending { buf, mut fds, peer_pid, .. } = p;
        let started = Instant::now();
        let m = match devns_core::oci::parse_process_state(&buf) {
            Ok(m) => m,
            Err(e) => return self.refuse(&e.into(), None, peer_pid),
        };
        let pid = m.state.pid;
        let facts = Facts {
            fds: fds.len(),
            is_listener: fds.get(m.seccomp_fd).is_some_and(devns_sys::seccomp::is_listener),
            pid_ns: if pid > 0 { user_ns_of(pid) } else { None },
        };
        let served = self.served();
        let id = m.state.state.id.as_str();
        let taken = match decide::take(&m, &facts, self.host_ns.0, &served) {
            Ok(t) => t,
            Err(why) => return self.refuse(&why, Some(id), pid),
        };
        let l = match crate::agent::Listener::new(fds.swap_remove(m.seccomp_fd)) {
            Ok(l) => l,
            Err(e) => {
                return tracing::warn!(container = id, pid, error = %e, "cannot serve a runtime's seccomp listener");
            }
        };
        let when = match taken.attach {
            Some(_) => decide::when(dir_id(&format!("/proc/{pid}/root")), rootfs_of(&m.state.state.bundle)),
            None => decide::When::FirstCall,
        };
        tracing::info!(
            container = id,
            pid,
            ns = taken.ns,
            attach = taken.attach.is_some(),
            ?when,
            "serving a runtime's seccomp listener"
        );
        let (ns, container) = (taken.ns, taken.container.clone());
        let key = self.serve_listener(l, taken.ns, Some(taken.container), taken.attach.map(Due::Attach));
        if when == decide::When::Now {
            self.attach_on_arrival(key, ns, &container, pid, started);
        }
    }

    /// A container whose runtime is past `pivot_root` (so done with its
    /// rootfs) attached as its listener comes, while the runtime finishes
    /// (`runc create` returns, `runc start` comes): off the container's
    /// start unless it `execve`s at once. Its first call then waits for
    /// this, and defers the runtime's device rules again. A failure leaves
    /// the attach to that call, which fails the container if it fails
    /// again.
    fn attach_on_arrival(&mut self, key: u64, ns: u64, container: &str, pid: i32, started: Instant) {
        let Some(s) = self.listeners.get_mut(&key) else { return };
        let Some(Due::Attach(w)) = s.due.take() else { return };
        let due = match self.bring_under(ns, container, pid, &w) {
            Ok(()) => {
                tracing::info!(
                    container,
                    pid,
                    ns,
                    name = w.name,
                    took_us = started.elapsed().as_micros() as u64,
                    "container brought under devns as its runtime passed its listener"
                );
                Due::Defer { pid }
            }
            Err(e) => {
                tracing::info!(container, pid, ns, "not attached as its listener came, so at its first execve: {e:#}");
                Due::Attach(w)
            }
        };
        if let Some(s) = self.listeners.get_mut(&key) {
            s.due = Some(due);
        }
        self.note(key);
    }

    /// Process `pid` of namespace `ns` (container `container`'s) brought
    /// under devns, as its createRuntime hook would (unless one did): its
    /// view at `/dev` of its root, its device program, its devices.
    fn bring_under(&mut self, ns: u64, container: &str, pid: i32, w: &devns_core::hook::Wanted) -> Result<()> {
        let spec = crate::engine::Attach {
            pid,
            name: Some(&w.name),
            at: "/dev",
            root: None,
            devices: &w.devices,
            runtime: true,
            container: Some(container),
            ns: Some(devns_core::NsId(ns)),
            keep_covered: false,
        };
        self.engine.attach(&spec)?;
        self.watch_members(devns_core::NsId(ns));
        Ok(())
    }

    /// What is due at the first call listener `key` trapped.
    pub(super) fn at_first_call(&mut self, key: u64, n: &devns_sys::seccomp::Notif, due: Due) -> FirstCall {
        match due {
            Due::Attach(w) => self.attach_at_first_call(key, n, w),
            Due::Defer { pid } => {
                let Some(s) = self.listeners.get(&key) else { return FirstCall::Done };
                if !devns_sys::seccomp::id_valid(s.listener.fd(), n.id) {
                    return FirstCall::Gone(Due::Defer { pid });
                }
                let ns = s.ns;
                match self.engine.defer_runtime_devices(devns_core::NsId(ns), pid) {
                    Ok(()) => FirstCall::Done,
                    Err(e) => {
                        tracing::error!(
                            ns,
                            pid,
                            "cannot make the runtime's device rules defer to devns's, so the container does not start: {e:#}"
                        );
                        FirstCall::Failed(rustix::io::Errno::PERM)
                    }
                }
            }
        }
    }

    /// The first call listener `key` trapped (its container's first
    /// `execve`, by the runtime's init, after `pivot_root`): the
    /// container asked for devns (`w`), so its user namespace is brought
    /// under devns as a createRuntime hook would, unless one did. The
    /// view goes at `/dev` of the caller's root, which is the container's
    /// now. A failure is the call's errno: the container does not start
    /// without what it asked for.
    fn attach_at_first_call(
        &mut self,
        key: u64,
        n: &devns_sys::seccomp::Notif,
        w: devns_core::hook::Wanted,
    ) -> FirstCall {
        let Some(s) = self.listeners.get(&key) else { return FirstCall::Done };
        let (ns, container) = (s.ns, s.container.clone().unwrap_or_default());
        if self.engine.kept(devns_core::NsId(ns)).is_some() {
            return FirstCall::Done;
        }
        // While the kernel still waits for this answer, `n.pid` is the
        // caller's thread, and its namespace the listener's. Its process
        // is what is attached.
        let status = std::fs::read(format!("/proc/{}/status", n.pid)).unwrap_or_default();
        let pid = decide::thread_group(&status).unwrap_or(n.pid as i32);
        let caller_ns = user_ns_of(pid);
        if !devns_sys::seccomp::id_valid(s.listener.fd(), n.id) {
            // Interrupted (runc's Go init is signalled by its runtime all
            // the time), and made again: the attach waits for that one.
            return FirstCall::Gone(Due::Attach(w));
        }
        if caller_ns != Some(ns) {
            tracing::error!(
                container,
                pid,
                ns,
                "the first call of a container's listener came from another user namespace: not attached"
            );
            return FirstCall::Failed(rustix::io::Errno::PERM);
        }
        match self.bring_under(ns, &container, pid, &w) {
            Ok(()) => {
                tracing::info!(container, pid, ns, name = w.name, "container brought under devns at its first execve");
                FirstCall::Done
            }
            Err(e) => {
                tracing::error!(
                    container,
                    pid,
                    ns,
                    "cannot bring the container under devns, so it does not start: {e:#}"
                );
                FirstCall::Failed(rustix::io::Errno::PERM)
            }
        }
    }

    /// What the daemon's listeners serve now.
    fn served(&self) -> Served {
        let mut s = Served::default();
        for l in self.listeners.values() {
            if l.ns != 0 {
                *s.namespaces.entry(l.ns).or_default() += 1;
            }
            if let Some(c) = &l.container {
                s.containers.insert(c.clone(), l.ns);
            }
        }
        s
    }
}

/// The peer's host uid and pid (`SO_PEERCRED`, as it connected), and
/// whether it is in the host's user namespace (`None`: it is gone, so that
/// cannot be asked).
fn peer_of(sock: &OwnedFd, host: devns_core::NsId) -> rustix::io::Result<(u32, i32, Option<bool>)> {
    let cred = rustix::net::sockopt::socket_peercred(sock)?;
    let ns = match Peer::of(sock, host) {
        Ok(p) => Some(p.ns.is_none()),
        Err(_) => None,
    };
    Ok((cred.uid.as_raw(), cred.pid.as_raw_nonzero().get(), ns))
}

/// The device and inode of the directory at `path` (followed).
fn dir_id(path: &str) -> Option<decide::DirId> {
    rustix::fs::stat(path).ok().map(|s| (s.st_dev, s.st_ino))
}

/// The device and inode of the rootfs of the bundle at `bundle` (its
/// `config.json`'s `root.path`), as this daemon sees it; `None` when that
/// cannot be read.
fn rootfs_of(bundle: &str) -> Option<decide::DirId> {
    use std::io::Read;
    let file = Path::new(bundle).join("config.json");
    let mut config = Vec::new();
    let f = std::fs::File::open(&file).ok()?;
    f.take(devns_core::hook::MAX_CONFIG_BYTES as u64 + 1).read_to_end(&mut config).ok()?;
    let root = devns_core::hook::root_path(&config, bundle).ok()?;
    dir_id(&root)
}

/// The user namespace of process `pid`, asked of a pidfd; `None` if there
/// is no such process (or it cannot be asked).
fn user_ns_of(pid: i32) -> Option<u64> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
    let nsfd = devns_sys::ns::pidfd_user_ns(&pidfd).ok()?;
    devns_sys::ns::ns_id(&nsfd).ok()
}
