//! `devns daemon`: one thread, one event loop over the API socket, its
//! clients, the kernel's uevents, a pidfd per watched process, and signals.
//! Every change (a request, a uevent, a death) updates the state, saves it
//! before anything is acknowledged, and runs the one reconcile step on the
//! views it concerns; startup and restart run the same step on all views.

mod conn;
mod handle;
mod nslife;

use crate::config;
use crate::discover;
use crate::host;
use crate::store::{self, Records, Store};
use anyhow::{Context, Result, anyhow};
use conn::Conn;
use devns_core::api::Event;
use devns_core::config::Config;
use devns_core::idmap::IdMap;
use devns_core::registry::{NsId, Registry};
use devns_core::state::Keeper;
use devns_core::state::State;
use devns_sys::signal::SignalFd;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::fd::OwnedFd;
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
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
}

/// A namespace the daemon manages: its view (mounted on the host below
/// `views/`) and the processes whose pidfds tell it when to let go.
struct Ns {
    view: Option<OwnedFd>,
    uids: IdMap,
    gids: IdMap,
    members: Vec<Member>,
}

pub struct Daemon {
    cfg: Config,
    store: Store,
    /// Held for the daemon's life: one daemon per state directory.
    _daemon_lock: std::fs::File,
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
    /// seccomp listeners whose trapped calls this daemon answers.
    listeners: Vec<OwnedFd>,
}

impl crate::agent::Policy for Daemon {
    fn may_have(&self, ns: NsId, dev: devns_core::DevId) -> bool {
        self.registry.visible_in(dev, ns)
    }

    fn view(&self, ns: NsId) -> Option<rustix::fd::BorrowedFd<'_>> {
        use rustix::fd::AsFd;
        self.nss.get(&ns)?.view.as_ref().map(|v| v.as_fd())
    }
}

/// Largest number of client connections at once; more are closed at once.
const MAX_CONNS: usize = 1024;
/// How long a request may take to arrive once it has begun.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// The kernel's uevents, on a socket bound before the first scan of sysfs
/// so that nothing falls between the two.
fn uevent_socket() -> Result<OwnedFd> {
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
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o111));
    let bound = rustix::net::bind(&fd, &addr);
    rustix::process::umask(old);
    bound.with_context(|| format!("cannot bind {}", path.display()))?;
    rustix::net::listen(&fd, 128).context("listen")?;
    Ok(fd)
}

pub fn run(opts: Options) -> Result<()> {
    host::require_host_root("devns daemon")?;
    let cfg = config::load(&opts.config)?;
    let store = Store::open(&opts.state_dir)?;
    let daemon_lock =
        store.try_hold("daemon.lock")?.ok_or_else(|| anyhow!("another devns daemon uses {}", store.dir().display()))?;
    let (disk, global) = {
        let _l = store.lock_file()?;
        (store.read_records(false)?, store.read_global()?)
    };
    let state = State { namespaces: disk.values().cloned().collect(), global: global.clone(), ..State::default() };
    let signals = SignalFd::new(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]).context("signalfd")?;
    let uevents = uevent_socket()?;
    let views_dir = nslife::prepare_views_dir(store.dir())?;
    let registry = Registry::new(discover::host_devices()?, &cfg.global);
    let host_ns = host::user_ns_of(rustix::process::getpid().as_raw_nonzero().get())?;
    let mut d = Daemon {
        cfg,
        store,
        _daemon_lock: daemon_lock,
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
        listeners: Vec::new(),
    };
    d.startup()?;
    // Only now, ready: the socket starts accepting.
    let listener = listen(&opts.socket)?;
    tracing::info!(socket = %opts.socket.display(), namespaces = d.nss.len(), "devns daemon ready");
    let result = d.serve(&listener, &uevents, &signals);
    let _ = std::fs::remove_file(&opts.socket);
    result
}

/// What one poll slot stands for.
#[derive(Clone, Copy)]
enum Slot {
    Signals,
    Listener,
    Uevents,
    Conn(u64),
    Member(NsId, i32),
    Agent(usize),
}

impl Daemon {
    /// Saves the daemon's records and learns the stand-alone runs' (which
    /// a `devns run` started before the daemon may still add or remove),
    /// under the writers' lock. Only changed records are written.
    fn save(&mut self) -> Result<()> {
        let _lock = self.store.lock_file()?;
        let is_run = |k: &str| k.starts_with("run-");
        let runs = self.store.read_records(true)?;
        let mut after: Records = store::records_of(&self.state).into_iter().filter(|(k, _)| !is_run(k)).collect();
        let runs_changed = runs
            != self.disk.iter().filter(|(k, _)| is_run(k)).map(|(k, r)| (k.clone(), r.clone())).collect::<Records>();
        self.store.write_changes(&self.disk, &after, |k| !is_run(k)).context("cannot save the state")?;
        after.extend(runs);
        if self.state.global != self.global_disk {
            self.store.write_global(&self.state.global).context("cannot save the state")?;
            self.global_disk = self.state.global.clone();
        }
        self.state.namespaces = after.values().cloned().collect();
        self.disk = after;
        if runs_changed {
            // A stand-alone run came or went: its devices' owners changed.
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
            if let Some(k) = r.keeper {
                // A stand-alone run's namespace: its keeper owns its view.
                if !host::keeper_alive(&k) {
                    self.state.remove_id(id);
                }
                continue;
            }
            let members = nslife::reopen_members(&r.members);
            let members = if members.is_empty() { nslife::adopt_from_proc(id, &[]) } else { members };
            if members.is_empty() {
                tracing::info!(ns = %id, "namespace died while the daemon was down: releasing its devices");
                self.forget_ns(id);
                continue;
            }
            let pid = members[0].keeper.pid;
            let (uids, gids) = nslife::read_maps(pid)?;
            self.nss.insert(id, Ns { view: None, uids, gids, members });
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

    /// Applies the registry to one namespace's view.
    fn reconcile(&mut self, id: NsId) {
        let Some(ns) = self.nss.get(&id) else { return };
        let Some(view) = &ns.view else { return };
        let plan = devns_core::view::plan(&self.registry.view_devices(id), &ns.uids, &ns.gids, self.overflow);
        let reg = &self.registry;
        if let Err(e) = crate::view::reconcile(view, &plan, |d| reg.visible_in(d, id)) {
            tracing::warn!(ns = %id, error = %e, "reconcile failed");
        }
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
        for c in self.conns.values_mut().filter(|c| c.subscribed) {
            let visible = c.peer.is_admin() || (ns.is_some() && c.peer.ns.map(|n| n.to_string()) == ns);
            if visible {
                c.queue(&line);
            }
        }
    }

    fn serve(&mut self, listener: &OwnedFd, uevents: &OwnedFd, signals: &SignalFd) -> Result<()> {
        loop {
            let mut slots = vec![Slot::Signals, Slot::Listener, Slot::Uevents];
            let mut fds = vec![
                PollFd::new(signals, PollFlags::IN),
                PollFd::new(listener, PollFlags::IN),
                PollFd::new(uevents, PollFlags::IN),
            ];
            for (id, c) in &self.conns {
                let mut ev = PollFlags::IN;
                if c.wants_write() {
                    ev |= PollFlags::OUT;
                }
                slots.push(Slot::Conn(*id));
                fds.push(PollFd::new(&c.sock, ev));
            }
            for (i, l) in self.listeners.iter().enumerate() {
                slots.push(Slot::Agent(i));
                fds.push(PollFd::new(l, PollFlags::IN));
            }
            for (id, ns) in &self.nss {
                for m in &ns.members {
                    slots.push(Slot::Member(*id, m.keeper.pid));
                    fds.push(PollFd::new(&m.pidfd, PollFlags::IN));
                }
            }
            let now = Instant::now();
            let next_deadline = self.conns.values().filter_map(|c| c.deadline).min();
            let timeout = next_deadline.map(|d| {
                let left = d.saturating_duration_since(now);
                rustix::event::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: left.subsec_nanos() as i64 }
            });
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e).context("poll"),
            }
            let ready: Vec<(Slot, PollFlags)> =
                slots.iter().zip(fds.iter()).map(|(s, f)| (*s, f.revents())).filter(|(_, r)| !r.is_empty()).collect();
            drop(fds);
            let mut done_listeners = Vec::new();
            for (slot, revents) in ready {
                match slot {
                    Slot::Signals => {
                        if let Some(si) = signals.read().context("signalfd")? {
                            tracing::info!(signal = si.signo, "stopping; views stay mounted in their containers");
                            return Ok(());
                        }
                    }
                    Slot::Listener => self.accept(listener),
                    Slot::Uevents => self.drain_uevents(uevents),
                    Slot::Conn(id) => self.on_conn(id, revents),
                    Slot::Member(ns, pid) => self.member_exited(ns, pid),
                    Slot::Agent(i) => {
                        if revents.contains(PollFlags::IN) {
                            crate::agent::handle(rustix::fd::AsFd::as_fd(&self.listeners[i]), &*self);
                        } else {
                            // HUP: no filtered process is left.
                            done_listeners.push(i);
                        }
                    }
                }
            }
            for i in done_listeners.into_iter().rev() {
                self.listeners.remove(i);
            }
            let now = Instant::now();
            let expired: Vec<u64> =
                self.conns.iter().filter(|(_, c)| c.deadline.is_some_and(|d| d <= now)).map(|(i, _)| *i).collect();
            for id in expired {
                tracing::warn!(conn = id, "closing a connection whose request did not end in time");
                self.conns.remove(&id);
            }
        }
    }

    fn accept(&mut self, listener: &OwnedFd) {
        loop {
            let sock = match rustix::net::accept_with(listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
                Ok(s) => s,
                Err(rustix::io::Errno::AGAIN) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNS {
                tracing::warn!("too many connections; closing a new one");
                continue;
            }
            match conn::Peer::of(&sock, self.host_ns) {
                Ok(peer) => {
                    self.next_conn += 1;
                    self.conns.insert(self.next_conn, Conn::new(sock, peer));
                }
                Err(e) => tracing::warn!(error = %e, "cannot identify a client; closing it"),
            }
        }
    }

    fn on_conn(&mut self, id: u64, revents: PollFlags) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if revents.contains(PollFlags::OUT) && !c.flush() {
            self.conns.remove(&id);
            return;
        }
        if !revents.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            return;
        }
        let (lines, keep) = c.read_lines(REQUEST_DEADLINE);
        for line in lines {
            let reply = self.handle_line(id, &line);
            let Some(c) = self.conns.get_mut(&id) else { return };
            c.reply(reply);
        }
        let Some(c) = self.conns.get_mut(&id) else { return };
        if !keep || !c.flush() {
            // Replies already queued are sent before the close when they can be.
            let _ = c.flush();
            self.conns.remove(&id);
        }
    }

    fn drain_uevents(&mut self, sock: &OwnedFd) {
        let mut buf = [0u8; devns_core::uevent::MAX_UEVENT_BYTES + 512];
        loop {
            match rustix::net::recvfrom(sock, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
                Ok((_, len, addr)) => {
                    // Only the kernel (port 0) speaks here; others are ignored.
                    let from_kernel =
                        addr.and_then(|a| SocketAddrNetlink::try_from(a).ok()).is_some_and(|a| a.pid() == 0);
                    if from_kernel && len <= buf.len() {
                        self.on_uevent(&buf[..len]);
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return,
                Err(rustix::io::Errno::NOBUFS) => {
                    tracing::error!("uevent queue overflowed: rescanning sysfs");
                    self.rescan();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "uevent socket");
                    return;
                }
            }
        }
    }

    /// After lost uevents: rebuild the registry from sysfs and reconcile all.
    fn rescan(&mut self) {
        match discover::host_devices() {
            Ok(devs) => {
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
