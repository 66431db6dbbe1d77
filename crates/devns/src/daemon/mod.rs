//! `devns daemon`: one thread, one event loop (`serve`) over the API
//! socket, its clients, the kernel's uevents, a pidfd per watched process,
//! and signals. Every change (a request, a uevent, a death) goes to the
//! engine, which keeps the namespaces (see `crate::engine`); the daemon
//! adds the socket, its clients and their events.

mod agentsock;
mod conn;
mod handle;
mod limits;
mod lxcsock;
mod outlive;
mod serve;

use crate::config;
use crate::engine::{Engine, Role};
use crate::host;
use crate::store::Store;
use anyhow::{Context, Result, anyhow};
use conn::Conn;
use devns_core::api::Event;
use devns_core::registry::NsId;
use devns_sys::signal::SignalFd;
use rustix::fd::OwnedFd;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Options {
    pub socket: PathBuf,
    /// The seccomp agent socket; `None`: the config's, else beside `socket`.
    pub seccomp_socket: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub config: PathBuf,
}

/// What an epoll token stands for.
#[derive(Clone, Copy)]
enum Target {
    Signals,
    Listener,
    Uevents,
    Conn(u64),
    Member(NsId, i32),
    Agent(u64),
    /// The seccomp agent socket (`agentsock`), and a connection to it.
    AgentSock,
    AgentConn(u64),
    /// The connection to the holder of the listeners (`outlive`).
    Holder,
    /// LXC's seccomp proxy socket (`lxcsock`), and a monitor's connection.
    LxcSock,
    LxcConn(u64),
}

pub struct Daemon {
    engine: Engine,
    /// Held for the daemon's life: one daemon per state directory.
    _daemon_lock: std::fs::File,
    host_ns: NsId,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    /// Connections of callers other than host root, by host uid, and all
    /// of them together: what `devns_core::clients` limits.
    users: BTreeMap<u32, usize>,
    non_root: usize,
    timeouts: devns_core::clients::Timeouts,
    /// Connections with complete lines left unserved in their turn.
    ready: std::collections::BTreeSet<u64>,
    /// Log lines about connections: callers other than root cause them.
    conn_log: limits::LogLimit,
    /// Given up to refuse a connection when no fd is left for accept.
    spare_fd: Option<OwnedFd>,
    /// seccomp listeners whose trapped calls this daemon answers, by token.
    listeners: BTreeMap<u64, outlive::Served>,
    /// Where the listeners outlive the daemon, and the call in flight.
    outlive: outlive::Outlive,
    /// Where runtimes pass their listeners (`linux.seccomp.listenerPath`).
    agent: agentsock::AgentSock,
    /// Log lines about the agent socket's refusals.
    agent_log: limits::LogLimit,
    journal: Option<crate::journal::Journal>,
    /// For the tests of the journal (`DEVNS_TEST_STOP_IN_CALL`, not
    /// documented): the daemon stops itself (SIGSTOP) in its first trapped
    /// call, once it has journaled its receipt or its answer, so that a
    /// test can kill it exactly there.
    stop_in_call: Option<crate::journal::Stop>,
    /// One epoll set, each fd registered once: a loop iteration costs the
    /// same with 1 view or 1,000.
    ep: OwnedFd,
    targets: std::collections::HashMap<u64, Target>,
    next_token: u64,
    /// The namespace count the service manager's status last said.
    status_said: usize,
    /// The API socket, which the CDI spec's hooks name.
    socket: PathBuf,
    /// A device came or went since the CDI spec was last written.
    cdi_stale: bool,
    lxc: lxcsock::LxcSock,
    /// LXC containers whose autodev `join` host root's pre-start expects.
    expecting: devns_core::expect::Expecting,
}

/// Registers `fd` in the epoll set `ep` as `target`; returns its token.
fn watch_in(
    ep: &OwnedFd,
    targets: &mut std::collections::HashMap<u64, Target>,
    next_token: &mut u64,
    fd: impl rustix::fd::AsFd,
    target: Target,
) -> u64 {
    *next_token += 1;
    let token = *next_token;
    let data = rustix::event::epoll::EventData::new_u64(token);
    if let Err(e) = rustix::event::epoll::add(ep, fd, data, rustix::event::epoll::EventFlags::IN) {
        tracing::error!(error = %e, "cannot watch an fd");
    }
    targets.insert(token, target);
    token
}

/// Request lines one connection gets served before others get their turn.
const LINES_PER_TURN: usize = 32;

/// The connections' deadlines; `DEVNS_TEST_IDLE_MS` (for tests, not
/// documented) sets both the idle and the request deadline.
fn timeouts() -> devns_core::clients::Timeouts {
    let t = devns_core::clients::Timeouts::default();
    match std::env::var("DEVNS_TEST_IDLE_MS").ok().and_then(|v| v.parse().ok()) {
        Some(ms) => {
            devns_core::clients::Timeouts { request: Duration::from_millis(ms), idle: Duration::from_millis(ms) }
        }
        None => t,
    }
}

fn listen(path: &Path) -> Result<OwnedFd> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A socket file nobody listens on is a leftover of a daemon that died.
    if crate::client::Client::connect_if_running(path)?.is_some() {
        return Err(anyhow!("a devns daemon already listens on {}", path.display()));
    }
    let _ = std::fs::remove_file(path);
    // Anyone may connect: what they may do is decided per request by
    // SO_PEERCRED, so the socket is world-connectable.
    bind_stream(path, 0o111)
}

/// Makes way at `path` for a socket of type `kind` root's daemon binds:
/// its directory made; an existing socket file nobody listens on (a dead
/// daemon's) removed; anything else there refused, saying what it is.
fn clear_stale_socket(path: &Path, kind: SocketType, what: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let Ok(m) = std::fs::symlink_metadata(path) else { return Ok(()) };
    if !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) {
        return Err(anyhow!("{} exists and is not a socket", path.display()));
    }
    let probe = rustix::net::socket_with(AddressFamily::UNIX, kind, SocketFlags::CLOEXEC, None)?;
    let addr = SocketAddrUnix::new(path).with_context(|| format!("bad socket path {}", path.display()))?;
    if rustix::net::connect(&probe, &addr).is_ok() {
        return Err(anyhow!("something listens on the {what} {} already", path.display()));
    }
    std::fs::remove_file(path).with_context(|| format!("cannot remove the stale {}", path.display()))
}

/// A listening unix stream socket (nonblocking) bound at `path` under
/// `umask`, which decides who may connect.
fn bind_stream(path: &Path, umask: u32) -> Result<OwnedFd> {
    bind_listening(path, umask, SocketType::STREAM)
}

/// A listening unix socket of type `kind` (nonblocking) bound at `path`
/// under `umask`.
fn bind_listening(path: &Path, umask: u32, kind: SocketType) -> Result<OwnedFd> {
    let fd = rustix::net::socket_with(AddressFamily::UNIX, kind, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK, None)?;
    let addr = SocketAddrUnix::new(path).with_context(|| format!("bad socket path {}", path.display()))?;
    let umask = devns_sys::procstate::Umask::set(rustix::fs::Mode::from_raw_mode(umask));
    let bound = rustix::net::bind(&fd, &addr);
    drop(umask);
    bound.with_context(|| format!("cannot bind {}", path.display()))?;
    rustix::net::listen(&fd, 128).context("listen")?;
    Ok(fd)
}

pub fn run(opts: Options) -> Result<()> {
    // First: the fds a service manager passed, by number, before anything
    // else is opened.
    let mut passed = crate::fdstore::passed();
    // Socket activation: the sockets a socket unit made, bound already.
    host::require_host_root("devns daemon")?;
    limits::raise_fd_limit();
    let cfg = config::load(&opts.config)?;
    let seccomp_socket = cfg.agent_socket(&opts.socket, opts.seccomp_socket.clone());
    let activated_api = crate::fdstore::take_socket(&mut passed, &opts.socket)?;
    let activated_agent = crate::fdstore::take_socket(&mut passed, &seccomp_socket)?;
    let activated = (activated_api.is_some(), activated_agent.is_some());
    let store = Store::open(&opts.state_dir)?;
    let daemon_lock =
        store.try_hold("daemon.lock")?.ok_or_else(|| anyhow!("another devns daemon uses {}", store.dir().display()))?;
    let signals = SignalFd::new(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]).context("signalfd")?;
    // Bound before the first scan of sysfs, so that nothing falls between.
    let uevents = crate::uevents::socket()?;
    let views_dir = crate::engine::prepare_views_dir(store.dir())?;
    crate::layout::adopt_old_views(store.dir(), &views_dir);
    let mut engine = Engine::open(Role::Daemon, cfg, store, Some(views_dir))?;
    engine.recover()?;
    let (outlive, given) = outlive::Outlive::open(&opts.state_dir, passed);
    let host_ns = engine.host_ns();
    let lxc_socket = devns_core::layout::lxc_socket(&opts.socket);
    let lxc = lxcsock::bind(&lxc_socket)?;
    let agent = match activated_agent {
        Some(fd) => agentsock::AgentSock::activated(fd),
        None => agentsock::bind(&seccomp_socket)?,
    };
    let mut d = Daemon {
        engine,
        _daemon_lock: daemon_lock,
        host_ns,
        conns: BTreeMap::new(),
        next_conn: 0,
        users: BTreeMap::new(),
        non_root: 0,
        timeouts: timeouts(),
        ready: std::collections::BTreeSet::new(),
        conn_log: limits::LogLimit::new(),
        spare_fd: None,
        listeners: BTreeMap::new(),
        outlive,
        agent,
        agent_log: limits::LogLimit::new(),
        journal: None,
        stop_in_call: std::env::var("DEVNS_TEST_STOP_IN_CALL").ok().and_then(|v| crate::journal::Stop::parse(&v)),
        ep: rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC).context("epoll")?,
        targets: std::collections::HashMap::new(),
        next_token: 0,
        status_said: 0,
        socket: opts.socket.clone(),
        cdi_stale: false,
        lxc,
        expecting: Default::default(),
    };
    d.adopt(given);
    // Only now, ready: the socket starts accepting.
    let listener = match activated_api {
        Some(fd) => fd,
        None => listen(&opts.socket).inspect_err(|_| {
            if !activated.1 {
                let _ = std::fs::remove_file(&seccomp_socket);
            }
        })?,
    };
    let ready = format!("READY=1\nSTATUS={}", d.status());
    d.notify(&ready);
    tracing::info!(socket = %opts.socket.display(), seccomp_socket = %seccomp_socket.display(),
        namespaces = d.engine.kept_ids().len(), "devns daemon ready");
    let result = d.serve(&listener, &uevents, &signals);
    d.notify("STOPPING=1\nSTATUS=stopping; views stay mounted in their containers");
    // A socket unit's files are systemd's: they stay, for the next start.
    if !activated.0 {
        let _ = std::fs::remove_file(&opts.socket);
    }
    if !activated.1 {
        let _ = std::fs::remove_file(&seccomp_socket);
    }
    let _ = std::fs::remove_file(&lxc_socket);
    result
}
impl Daemon {
    /// One `sd_notify` message, when a service manager runs the daemon.
    fn notify(&self, text: &str) {
        if let outlive::Outlive::Systemd { store, .. } = &self.outlive
            && let Err(e) = store.notify(text, &[])
        {
            tracing::warn!(error = %format!("{e:#}"), "cannot tell the service manager");
        }
    }

    /// What `systemctl status` shows: the namespaces served.
    fn status(&mut self) -> String {
        self.status_said = self.engine.kept_count();
        match self.status_said {
            1 => "serving 1 user namespace".to_owned(),
            n => format!("serving {n} user namespaces"),
        }
    }

    /// A new status when the count changed (one compare per turn).
    fn update_status(&mut self) {
        if self.engine.kept_count() != self.status_said {
            let status = format!("STATUS={}", self.status());
            self.notify(&status);
        }
    }

    /// Sends the engine's events to their subscribers.
    fn flush_events(&mut self) {
        for ev in self.engine.take_events() {
            self.emit(ev);
        }
    }

    /// Rewrites devns's CDI spec after devices came or went, when `devns
    /// cdi generate` has written one (of the kind it has).
    fn refresh_cdi(&mut self) {
        if !std::mem::take(&mut self.cdi_stale) {
            return;
        }
        let path = &self.engine.config().cdi_spec;
        let Some(kind) = crate::cdi::written_kind(path) else { return };
        let reg = self.engine.model().registry();
        let names = crate::cdi::assignable(reg.devices().map(|d| (d.name.as_str(), reg.is_global(d.id))));
        if let Err(e) = crate::cdi::write(path, &kind, &names, &self.socket) {
            tracing::warn!(error = %format!("{e:#}"), "cannot keep the CDI spec up to date");
        }
    }

    fn emit(&mut self, ev: Event) {
        if matches!(ev.event.as_str(), "add" | "remove" | "global") {
            self.cdi_stale = true;
        }
        let ns = ev.ns.clone();
        let line = serde_json::json!({ "v": devns_core::api::API_VERSION, "event": ev });
        let mut gone = Vec::new();
        let mut pending = Vec::new();
        for (id, c) in self.conns.iter_mut().filter(|(_, c)| c.subscribed) {
            let visible = c.peer.is_admin() || (ns.is_some() && c.peer.ns.map(|n| n.to_string()) == ns);
            if visible {
                c.queue(&line);
                // Sent now if the socket takes it; the rest when it can.
                if !c.flush() {
                    gone.push(*id);
                } else if c.wants_write() {
                    pending.push(*id);
                }
                c.refresh_deadline(&self.timeouts);
            }
        }
        for id in gone {
            self.drop_conn(id);
        }
        for id in pending {
            self.update_interest(id);
        }
    }

    /// Registers `fd` in the epoll set as `target`; returns its token.
    fn watch(&mut self, fd: impl rustix::fd::AsFd, target: Target) -> u64 {
        watch_in(&self.ep, &mut self.targets, &mut self.next_token, fd, target)
    }

    /// Stops watching the members of `id`, which is let go.
    fn forget_members(&mut self, id: NsId) {
        self.targets.retain(|_, t| !matches!(t, Target::Member(n, _) if *n == id));
    }

    /// Watches the members of `id` not watched yet (every fd once).
    pub(super) fn watch_members(&mut self, id: NsId) {
        let Some(ns) = self.engine.kept_mut(id) else { return };
        for m in ns.members.iter_mut().filter(|m| !m.watched) {
            watch_in(&self.ep, &mut self.targets, &mut self.next_token, &m.pidfd, Target::Member(id, m.keeper.pid));
            m.watched = true;
        }
    }
}
