//! `devns daemon`: one thread, one event loop over the API socket, its
//! clients, the kernel's uevents, a pidfd per watched process, and signals.
//! Every change (a request, a uevent, a death) updates the state, saves it
//! before anything is acknowledged, and runs the one reconcile step on the
//! views it concerns; startup and restart run the same step on all views.

mod conn;
mod handle;
mod loops;
mod nslife;
mod policy;

use crate::config;
use crate::discover;
use crate::host;
use crate::store::{Records, Store};
use anyhow::{Context, Result, anyhow};
use conn::{Conn, Reply};
use devns_core::api::Event;
use devns_core::api::MAX_REQUEST_BYTES;
use devns_core::config::Config;
use devns_core::idmap::IdMap;
use devns_core::registry::{NsId, Registry};
use devns_core::state::Keeper;
use devns_core::state::State;
use devns_sys::signal::SignalFd;
use rustix::event::epoll::EventFlags;
use rustix::fd::OwnedFd;
use rustix::net::{AddressFamily, SendFlags, SocketAddrUnix, SocketFlags, SocketType};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct Options {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub config: PathBuf,
}

/// A watched process inside a namespace.
struct Member {
    keeper: Keeper,
    pidfd: OwnedFd,
    /// Registered in the daemon's epoll set (each pidfd once).
    watched: bool,
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
}

/// A namespace the daemon manages: its view (mounted on the host below
/// `views/`) and the processes whose pidfds tell it when to let go.
struct Ns {
    view: Option<OwnedFd>,
    /// The private `/tmp` the daemon made for a `devns run` (mounted
    /// nowhere on the host; none for an attached namespace): with the
    /// view, where the agent makes the namespace's nodes.
    tmp: Option<OwnedFd>,
    uids: IdMap,
    gids: IdMap,
    members: Vec<Member>,
    /// A uevent socket in the namespace's network namespace, through which
    /// its devices' events reach it (none when it shares the host's).
    uevents: Option<OwnedFd>,
    /// Its device access policy (none when the layer is off, and for a
    /// runtime's container known only by its listener).
    access: Option<crate::bpf::AccessPolicy>,
}

pub struct Daemon {
    cfg: Config,
    store: Store,
    /// Held for the daemon's life: one daemon per state directory.
    _daemon_lock: std::fs::File,
    /// The writers' lock, held while a loop-control call is served (from
    /// its decision to its record: see `loops.rs`); saves then use it.
    writers_lock: Option<std::fs::File>,
    state: State,
    /// The records as last written or read: saves write only differences.
    disk: Records,
    global_disk: BTreeMap<devns_core::DevId, bool>,
    registry: Registry,
    nss: BTreeMap<NsId, Ns>,
    views_dir: PathBuf,
    overflow: (u32, u32),
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
    conn_log: conn::LogLimit,
    /// Given up to refuse a connection when no fd is left for accept.
    spare_fd: Option<OwnedFd>,
    /// seccomp listeners whose trapped calls this daemon answers, by token.
    listeners: BTreeMap<u64, crate::agent::Listener>,
    /// One epoll set, each fd registered once: a loop iteration costs the
    /// same with 1 view or 1,000.
    ep: OwnedFd,
    targets: std::collections::HashMap<u64, Target>,
    next_token: u64,
    /// The host's loop-control, through which containers get loop devices.
    loop_host: Option<crate::loopctl::LoopHost>,
    /// When dead namespaces' loop devices still open somewhere (pending
    /// removal, in the state directory) are tried next; `None` once none is.
    loop_retry: Option<loops::LoopRetry>,
    /// Devices that left their namespace's view with the kernel's
    /// `remove` event still to come: it is forwarded there.
    departed: BTreeMap<devns_core::DevId, NsId>,
    /// The cgroup2 hierarchy, when the access layer is on.
    cgroups: Option<crate::cgroup::Hierarchy>,
    /// Dead namespaces' cgroups with a process still inside: retried
    /// until the deadline (their maps are empty meanwhile).
    busy_cgroups: Vec<(PathBuf, Instant)>,
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
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let addr = SocketAddrUnix::new(path).with_context(|| format!("bad socket path {}", path.display()))?;
    // Anyone may connect: what they may do is decided per request by
    // SO_PEERCRED, so the socket is world-connectable.
    let umask = devns_sys::procstate::Umask::set(rustix::fs::Mode::from_raw_mode(0o111));
    let bound = rustix::net::bind(&fd, &addr);
    drop(umask);
    bound.with_context(|| format!("cannot bind {}", path.display()))?;
    rustix::net::listen(&fd, 128).context("listen")?;
    Ok(fd)
}

pub fn run(opts: Options) -> Result<()> {
    host::require_host_root("devns daemon")?;
    conn::raise_fd_limit();
    let cfg = config::load(&opts.config)?;
    let store = Store::open(&opts.state_dir)?;
    let daemon_lock =
        store.try_hold("daemon.lock")?.ok_or_else(|| anyhow!("another devns daemon uses {}", store.dir().display()))?;
    let (disk, global) = {
        let _l = store.lock_file()?;
        (store.read_records(false)?, store.read_global()?)
    };
    let state = State { namespaces: disk.values().cloned().collect(), global: global.clone() };
    let signals = SignalFd::new(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]).context("signalfd")?;
    // Bound before the first scan of sysfs, so that nothing falls between.
    let uevents = crate::uevents::socket()?;
    let views_dir = nslife::prepare_views_dir(store.dir())?;
    let registry = Registry::new(discover::host_devices()?, &cfg.global);
    let host_ns = host::user_ns_of(rustix::process::getpid().as_raw_nonzero().get())?;
    // A security layer: missing, the daemon does not start (unless the
    // operator turned it off).
    let cgroups = if cfg.device_policy {
        Some(crate::cgroup::Hierarchy::find_or_mount(store.dir()).context(
            "the device access policy needs a cgroup2 hierarchy (set device_policy = false in the config to run without this security layer)",
        )?)
    } else {
        None
    };
    let mut d = Daemon {
        cfg,
        store,
        _daemon_lock: daemon_lock,
        writers_lock: None,
        state,
        disk,
        global_disk: global,
        registry,
        nss: BTreeMap::new(),
        views_dir,
        overflow: host::overflow_ids(),
        host_ns,
        conns: BTreeMap::new(),
        next_conn: 0,
        users: BTreeMap::new(),
        non_root: 0,
        timeouts: timeouts(),
        ready: std::collections::BTreeSet::new(),
        conn_log: conn::LogLimit::new(),
        spare_fd: None,
        listeners: BTreeMap::new(),
        ep: rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC).context("epoll")?,
        targets: std::collections::HashMap::new(),
        next_token: 0,
        loop_host: crate::loopctl::LoopHost::open(),
        loop_retry: Some(loops::LoopRetry::now()),
        departed: BTreeMap::new(),
        cgroups,
        busy_cgroups: Vec::new(),
    };
    d.startup()?;
    // Only now, ready: the socket starts accepting.
    let listener = listen(&opts.socket)?;
    tracing::info!(socket = %opts.socket.display(), namespaces = d.nss.len(), "devns daemon ready");
    let result = d.serve(&listener, &uevents, &signals);
    let _ = std::fs::remove_file(&opts.socket);
    result
}

impl Daemon {
    /// Saves every record (startup, rescan).
    fn save(&mut self) -> Result<()> {
        let ids: Vec<NsId> = self.state.namespaces.iter().filter(|r| r.keeper.is_none()).filter_map(|r| r.id).collect();
        let gone: Vec<NsId> = self
            .disk
            .values()
            .filter(|r| r.keeper.is_none())
            .filter_map(|r| r.id)
            .filter(|id| self.state.by_id(*id).is_none())
            .collect();
        self.save_ns(&[ids, gone].concat())
    }

    /// Saves the records of `ids` (written if changed, removed if gone) and
    /// the global flags, and learns the stand-alone runs' records (which a
    /// `devns run` started before the daemon may still add or remove), all
    /// under the writers' lock. The cost follows what changed, not how many
    /// namespaces there are.
    fn save_ns(&mut self, ids: &[NsId]) -> Result<()> {
        let _lock = if self.writers_lock.is_some() { None } else { Some(self.store.lock_file()?) };
        let keys: Vec<String> = ids.iter().map(|id| format!("id-{}", id.0)).collect();
        let mut before = Records::new();
        let mut after = Records::new();
        for (k, id) in keys.iter().zip(ids) {
            if let Some(r) = self.disk.get(k) {
                before.insert(k.clone(), r.clone());
            }
            if let Some(r) = self.state.by_id(*id).filter(|r| r.keeper.is_none()) {
                after.insert(k.clone(), r.clone());
            }
        }
        self.store.write_changes(&before, &after, |_| true).context("cannot save the state")?;
        for k in &keys {
            match after.remove(k) {
                Some(r) => self.disk.insert(k.clone(), r),
                None => self.disk.remove(k),
            };
        }
        if self.state.global != self.global_disk {
            self.store.write_global(&self.state.global).context("cannot save the state")?;
            self.global_disk = self.state.global.clone();
        }
        let is_run = |k: &str| k.starts_with("run-");
        let runs = self.store.read_records(true)?;
        let known: Records = self.disk.iter().filter(|(k, _)| is_run(k)).map(|(k, r)| (k.clone(), r.clone())).collect();
        if runs != known {
            // A stand-alone run came or went: its devices' owners changed.
            self.disk.retain(|k, _| !is_run(k));
            self.state.namespaces.retain(|r| r.keeper.is_none());
            self.state.namespaces.extend(runs.values().cloned());
            self.disk.extend(runs);
            self.registry.clear_assignments();
            for d in self.state.apply(&mut self.registry) {
                tracing::debug!(dev = %d, "recorded device not on the host");
            }
            self.reconcile_all();
        }
        Ok(())
    }

    /// Startup and restart: forget the namespaces that died meanwhile,
    /// watch the living, and reconcile every view with the registry.
    fn startup(&mut self) -> Result<()> {
        let records = self.state.namespaces.clone();
        for r in records {
            let Some(id) = r.id else {
                self.state.namespaces.retain(|x| x.id.is_some() || x.keeper != r.keeper);
                continue;
            };
            if r.keeper.is_some() {
                // A stand-alone run's namespace: its keeper owns its view.
                // Once the keeper is gone, what is left of it is killed
                // before its record is let go (else it is kept).
                if host::may_free(&r) {
                    self.state.remove_id(id);
                    self.clean_loops(r.loops.clone());
                    self.close_recorded_policy(id, r.cgroup.as_ref());
                }
                continue;
            }
            let members = nslife::reopen_members(&r.members);
            let cgroup = r.cgroup.as_ref().map(|c| Path::new(&c.path));
            let members = if members.is_empty() { nslife::adopt_from_proc(id, cgroup, &[]) } else { members };
            if members.is_empty() {
                tracing::info!(ns = %id, "namespace died while the daemon was down: releasing its devices");
                self.forget_ns(id);
                continue;
            }
            let pid = members[0].keeper.pid;
            let (uids, gids) = nslife::read_maps(pid)?;
            let uevents = nslife::uevent_sender(pid);
            let access = r.cgroup.as_ref().and_then(|c| self.recover_policy(id, c));
            self.nss.insert(id, Ns { view: None, tmp: None, uids, gids, members, uevents, access });
            self.sync_members(id);
        }
        for d in self.state.apply(&mut self.registry) {
            tracing::info!(dev = %d, "an owned device left the host while the daemon was down");
            self.state.forget_device(d);
        }
        self.save()?;
        nslife::unmount_orphan_views(&self.views_dir, &self.nss.keys().copied().collect::<Vec<_>>());
        let ids: Vec<NsId> = self.nss.keys().copied().collect();
        for id in ids {
            let view = nslife::open_mounted_view(&self.views_dir, id);
            match view {
                Some(v) => self.nss.get_mut(&id).expect("listed").view = Some(v),
                None => {
                    tracing::error!(ns = %id, "its view is no longer mounted on the host; making a new one (the container keeps the old)");
                    if let Err(e) = self.make_view(id) {
                        tracing::error!(ns = %id, error = %e, "cannot make a view");
                    }
                }
            }
            self.reconcile(id);
        }
        Ok(())
    }

    /// Applies the registry to one namespace's view and device map
    /// (failures are logged).
    fn reconcile(&mut self, id: NsId) {
        let _ = self.reconcile_checked(id);
    }

    /// The one reconcile step of a namespace: its view, then its device
    /// map, from the same plan. A failure is logged and returned, so that
    /// a change can be refused rather than left half-applied.
    fn reconcile_checked(&mut self, id: NsId) -> Result<()> {
        self.reconcile_in(id, crate::bpf::Scope::All)
    }

    /// The reconcile step after `dev` (and with it its partitions) became
    /// visible in `id`'s view: only their paths there can be out of date.
    fn reconcile_newly_visible(&mut self, id: NsId, dev: devns_core::DevId) -> Result<()> {
        let names: Vec<String> =
            self.registry.devices().filter(|d| d.id == dev || d.parent == Some(dev)).map(|d| d.name.clone()).collect();
        let paths: Vec<&str> = names.iter().map(String::as_str).collect();
        self.reconcile_in(id, crate::bpf::Scope::Paths(&paths))
    }

    /// The reconcile step where only `scope` of the view can be out of date.
    fn reconcile_in(&mut self, id: NsId, scope: crate::bpf::Scope<'_>) -> Result<()> {
        let Some(ns) = self.nss.get_mut(&id) else { return Ok(()) };
        let plan = devns_core::view::plan(&self.registry.view_devices(id), &ns.uids, &ns.gids, self.overflow);
        let reg = &self.registry;
        let view = ns.view.as_ref().map(rustix::fd::AsFd::as_fd);
        crate::bpf::reconcile_view_and_map(id, view, ns.access.as_mut(), &plan, |d| reg.visible_in(d, id), scope)
    }

    fn reconcile_all(&mut self) {
        let ids: Vec<NsId> = self.nss.keys().copied().collect();
        for id in ids {
            self.reconcile(id);
        }
    }

    /// Records the members of `id` as the state's.
    fn sync_members(&mut self, id: NsId) {
        let keepers: Vec<Keeper> =
            self.nss.get(&id).map(|n| n.members.iter().map(|m| m.keeper).collect()).unwrap_or_default();
        if let Some(r) = self.state.by_id_mut(id) {
            r.members = keepers;
        }
    }

    fn emit(&mut self, ev: Event) {
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

    /// Watches the members of `id` not watched yet (every fd once).
    fn watch_members(&mut self, id: NsId) {
        let Some(ns) = self.nss.get_mut(&id) else { return };
        for m in ns.members.iter_mut().filter(|m| !m.watched) {
            watch_in(&self.ep, &mut self.targets, &mut self.next_token, &m.pidfd, Target::Member(id, m.keeper.pid));
            m.watched = true;
        }
    }

    fn serve(&mut self, listener: &OwnedFd, uevents: &OwnedFd, signals: &SignalFd) -> Result<()> {
        self.watch(signals, Target::Signals);
        self.watch(listener, Target::Listener);
        self.watch(uevents, Target::Uevents);
        let ids: Vec<NsId> = self.nss.keys().copied().collect();
        for id in ids {
            self.watch_members(id);
        }
        self.spare_fd = rustix::fs::open("/dev/null", rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty()).ok();
        let mut events = Vec::with_capacity(256);
        loop {
            let now = Instant::now();
            let retry = self.next_retry(now);
            // Connections with lines left from their turn go on at once.
            let unserved = (!self.ready.is_empty()).then_some(now);
            let next_deadline = self.conns.values().filter_map(|c| c.deadline).chain(retry).chain(unserved).min();
            let timeout = next_deadline.map(|d| {
                let left = d.saturating_duration_since(now);
                rustix::event::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: left.subsec_nanos() as i64 }
            });
            events.clear();
            match rustix::event::epoll::wait(&self.ep, rustix::buffer::spare_capacity(&mut events), timeout.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e).context("epoll_wait"),
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
                    Target::Uevents => self.drain_uevents(uevents),
                    Target::Conn(id) => self.on_conn(id),
                    Target::Member(ns, pid) => {
                        self.targets.remove(&token);
                        self.member_exited(ns, pid);
                    }
                    Target::Agent(key) => {
                        if flags.intersects(EventFlags::HUP | EventFlags::ERR) {
                            // No filtered process is left; a call still
                            // pending came from one that is gone.
                            self.targets.remove(&token);
                            self.listeners.remove(&key);
                        } else if flags.contains(EventFlags::IN)
                            && let Some(mut l) = self.listeners.remove(&key)
                        {
                            l.handle(self);
                            self.listeners.insert(key, l);
                        }
                    }
                }
            }
            for id in std::mem::take(&mut self.ready) {
                self.on_conn(id);
            }
            self.retry_busy_loops();
            let now = Instant::now();
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

    fn drop_conn(&mut self, id: u64) {
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
    fn update_interest(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let want = c.wants_write();
        if want != c.out_watched {
            let flags = if want { EventFlags::OUT } else { EventFlags::IN };
            let data = rustix::event::epoll::EventData::new_u64(c.token);
            let _ = rustix::event::epoll::modify(&self.ep, &c.sock, data, flags);
            c.out_watched = want;
        }
    }

    fn accept(&mut self, listener: &OwnedFd) {
        loop {
            let sock = match rustix::net::accept_with(listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
                Ok(s) => s,
                Err(rustix::io::Errno::AGAIN) => return,
                Err(e @ (rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)) => {
                    // No fd for it: refused through the spare one, or it
                    // would wake the loop again and again.
                    drop(self.spare_fd.take());
                    drop(rustix::net::accept(listener));
                    self.spare_fd =
                        rustix::fs::open("/dev/null", rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty()).ok();
                    if self.conn_log.allow() {
                        tracing::warn!(error = %e, "no fd left for a new connection; refused it");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    return;
                }
            };
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
                open_fds: conn::open_fds(),
                non_root: self.non_root,
                of_uid: uid.and_then(|u| self.users.get(&u).copied()).unwrap_or(0),
            };
            let budget = devns_core::clients::Budget::of_limit(conn::fd_limit());
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
    fn on_conn(&mut self, id: u64) {
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

    fn drain_uevents(&mut self, sock: &OwnedFd) {
        loop {
            match crate::uevents::drain(sock, |buf| self.on_uevent(buf)) {
                crate::uevents::Drained::Empty => return,
                crate::uevents::Drained::Lost => {
                    tracing::error!("uevent queue overflowed: rescanning sysfs");
                    self.rescan();
                }
            }
        }
    }

    /// After lost uevents: rebuild the registry from sysfs and reconcile all.
    fn rescan(&mut self) {
        match discover::host_devices() {
            Ok(devs) => {
                // Events were lost: those awaited may never come.
                self.departed.clear();
                self.registry = Registry::new(devs, &self.cfg.global);
                for d in self.state.apply(&mut self.registry) {
                    self.state.forget_device(d);
                }
                let _ = self.save();
                self.reconcile_all();
            }
            Err(e) => tracing::error!(error = %e, "rescan failed"),
        }
    }
}
