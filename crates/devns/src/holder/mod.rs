//! `devns hold`: the holder, which keeps the daemon's seccomp listeners
//! open while no daemon runs, so that the containers' trapped calls wait
//! for the next daemon instead of failing with `ENOSYS`.
//!
//! It has no other job. It never reads a notification (it polls listeners
//! for hang-up only); it keeps what host root hands it over its socket
//! (`<state>/holder/sock`, a directory only root may enter, and every
//! connection's `SO_PEERCRED` checked: root only), tagged with the
//! namespace each serves; it drops a listener on `POLLHUP` (no filtered
//! process left) or when told to; it gives copies of all back on `take`;
//! and it exits once it holds nothing and no daemon is attached.
//! The protocol is `devns_core::keep`'s, one datagram per message.

pub mod client;

use anyhow::{Context, Result};
use devns_core::keep::{MAX_MESSAGE, Reply, Request};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{AddressFamily, RecvFlags, SocketAddrUnix, SocketFlags, SocketType};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Connections at once (a daemon, a test, `devns` looking): more are refused.
const MAX_CLIENTS: usize = 4;
/// Most listeners held: one per container; far above any host's count.
const MAX_HELD: usize = 65_536;
/// A holder started but never attached to exits after this.
const FIRST_ATTACH: Duration = Duration::from_secs(30);

/// The holder's directory below the state dir: root's alone (0700).
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("holder")
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("sock")
}

struct Holder {
    sock: OwnedFd,
    clients: Vec<OwnedFd>,
    held: BTreeMap<u64, (u64, OwnedFd)>,
    journal: Option<OwnedFd>,
    tmps: BTreeMap<u64, OwnedFd>,
    next_key: u64,
    attached_once: bool,
    _lock: std::fs::File,
}

/// Binds the holder's socket (or finds another holder there), forks the
/// holder off into a session of its own, and returns in the parent at
/// once: when it returns, the socket accepts connections.
pub fn start(state_dir: &Path) -> Result<()> {
    crate::host::require_host_root("devns hold")?;
    let dir = dir(state_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Whatever made it: only root may enter, so only root reaches the socket.
    rustix::fs::chmod(&dir, rustix::fs::Mode::from_raw_mode(0o700)).context("chmod the holder's directory")?;
    rustix::fs::chown(&dir, Some(rustix::process::Uid::ROOT), Some(rustix::process::Gid::ROOT))
        .context("chown the holder's directory")?;
    let store = crate::store::Store::open(state_dir)?;
    // Another holder has the lock: one that serves this state dir (its
    // socket takes connections), or one still dying (killed, its socket
    // closed first), which lets go of the lock as it ends.
    let deadline = Instant::now() + Duration::from_secs(2);
    let lock = loop {
        if let Some(lock) = store.try_hold("holder/lock")? {
            break lock;
        }
        if client::Client::connect(state_dir)?.is_some() || Instant::now() >= deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let path = socket_path(state_dir);
    let _ = std::fs::remove_file(&path);
    let sock = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
    let addr = SocketAddrUnix::new(&path).with_context(|| format!("bad socket path {}", path.display()))?;
    rustix::net::bind(&sock, &addr).with_context(|| format!("cannot bind {}", path.display()))?;
    rustix::net::listen(&sock, 16).context("listen")?;
    // SAFETY: `devns hold` has started no thread: the child is a copy of
    // a single-threaded process and may run ordinary Rust.
    match unsafe { devns_sys::process::fork_into(0) }.context("cannot fork the holder")? {
        devns_sys::process::Forked::Parent { .. } => Ok(()),
        devns_sys::process::Forked::Child => {
            let _ = rustix::process::setsid();
            let _ = std::env::set_current_dir("/");
            if let Ok(null) = std::fs::File::options().read(true).write(true).open("/dev/null") {
                let _ = rustix::stdio::dup2_stdin(&null);
                let _ = rustix::stdio::dup2_stdout(&null);
            }
            let mut h = Holder {
                sock,
                clients: Vec::new(),
                held: BTreeMap::new(),
                journal: None,
                tmps: BTreeMap::new(),
                next_key: 0,
                attached_once: false,
                _lock: lock,
            };
            let code = match h.serve() {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "the holder stops");
                    1
                }
            };
            std::process::exit(code);
        }
    }
}

/// A datagram received (`Err` with the reason when it was too long), and
/// the fds that came with it.
type Message = (Result<Vec<u8>, String>, Vec<OwnedFd>);

/// One datagram and its fds; `None` when the peer closed.
fn recv(sock: BorrowedFd<'_>) -> rustix::io::Result<Option<Message>> {
    let mut buf = [0u8; MAX_MESSAGE + 1];
    let mut fds = Vec::new();
    let (bytes, cut) = crate::wire::recv_message(sock, &mut buf, &mut fds, RecvFlags::DONTWAIT)?;
    if bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    if cut || bytes > MAX_MESSAGE {
        return Ok(Some((Err(format!("message longer than {MAX_MESSAGE} bytes or with too many fds")), fds)));
    }
    Ok(Some((Ok(buf[..bytes].to_vec()), fds)))
}

pub(crate) fn send(sock: BorrowedFd<'_>, reply: &Reply, fds: &[BorrowedFd<'_>]) -> rustix::io::Result<()> {
    crate::wire::send_with_fds(sock, reply.to_string().as_bytes(), fds).map(|_| ())
}

impl Holder {
    fn serve(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if self.held.is_empty() && self.clients.is_empty() {
                if self.attached_once {
                    tracing::info!("the holder holds nothing and no daemon is attached: exiting");
                    return Ok(());
                }
                if started.elapsed() >= FIRST_ATTACH {
                    return Ok(());
                }
            }
            let keys: Vec<u64> = self.held.keys().copied().collect();
            let mut fds = vec![PollFd::new(&self.sock, PollFlags::IN)];
            fds.extend(self.clients.iter().map(|c| PollFd::new(c, PollFlags::IN)));
            // No events asked: only POLLHUP/POLLERR wake the holder.
            fds.extend(self.held.values().map(|(_, l)| PollFd::new(l, PollFlags::empty())));
            let timeout = (!self.attached_once).then(|| {
                let left = FIRST_ATTACH.saturating_sub(started.elapsed());
                rustix::event::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: 0 }
            });
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e).context("poll"),
            }
            let revents: Vec<PollFlags> = fds.iter().map(|f| f.revents()).collect();
            drop(fds);
            let nclients = self.clients.len();
            for (i, key) in keys.iter().enumerate() {
                if revents[1 + nclients + i].intersects(PollFlags::HUP | PollFlags::ERR) {
                    self.held.remove(key);
                    tracing::debug!(key, "dropped a listener: no filtered process is left");
                }
            }
            let mut gone = Vec::new();
            for i in 0..nclients {
                let r = revents[1 + i];
                if r.contains(PollFlags::IN) {
                    if !self.on_client(i) {
                        gone.push(i);
                    }
                } else if r.intersects(PollFlags::HUP | PollFlags::ERR) {
                    gone.push(i);
                }
            }
            for i in gone.into_iter().rev() {
                self.clients.remove(i);
            }
            if revents[0].contains(PollFlags::IN) {
                self.accept();
            }
            // A namespace's /tmp is kept only beside a listener of it.
            let held = &self.held;
            self.tmps.retain(|ns, _| held.values().any(|(n, _)| n == ns));
        }
    }

    fn accept(&mut self) {
        let Ok(c) = rustix::net::accept_with(&self.sock, SocketFlags::CLOEXEC) else { return };
        let root = rustix::net::sockopt::socket_peercred(&c).is_ok_and(|cred| cred.uid.is_root());
        if !root {
            tracing::warn!("refused a connection to the holder from a caller that is not root");
            return;
        }
        if self.clients.len() >= MAX_CLIENTS {
            let _ = send(c.as_fd(), &Reply::Err("too many connections".into()), &[]);
            return;
        }
        self.attached_once = true;
        self.clients.push(c);
    }

    /// Serves one message of client `i`; false when it is gone.
    fn on_client(&mut self, i: usize) -> bool {
        let sock = self.clients[i].as_fd();
        let (msg, mut fds) = match recv(sock) {
            Ok(Some(m)) => m,
            Ok(None) => return false,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return true,
            Err(_) => return false,
        };
        let req = msg.and_then(|m| Request::parse(&m));
        let reply = match req {
            Err(why) => Reply::Err(why),
            Ok(r) if fds.len() != r.fds() => Reply::Err(format!("{r} takes {} fd(s), got {}", r.fds(), fds.len())),
            Ok(Request::Put { ns }) => {
                let fd = fds.remove(0);
                if !devns_sys::seccomp::is_listener(&fd) {
                    Reply::Err("not a seccomp listener".into())
                } else if self.held.len() >= MAX_HELD {
                    Reply::Err("holding too many listeners".into())
                } else {
                    self.next_key += 1;
                    self.held.insert(self.next_key, (ns, fd));
                    Reply::Ok(Some(self.next_key))
                }
            }
            Ok(Request::Journal) => {
                let fd = fds.remove(0);
                let sealed = rustix::fs::fcntl_get_seals(&fd)
                    .is_ok_and(|s| s.contains(rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW));
                if sealed {
                    self.journal = Some(fd);
                    Reply::Ok(None)
                } else {
                    Reply::Err("the journal must be a sealed memfd".into())
                }
            }
            Ok(Request::Tmp { ns }) => {
                let fd = fds.remove(0);
                let tmpfs = rustix::fs::fstatfs(&fd).is_ok_and(|s| s.f_type == libc::TMPFS_MAGIC);
                let dir = rustix::fs::fstat(&fd)
                    .is_ok_and(|s| rustix::fs::FileType::from_raw_mode(s.st_mode) == rustix::fs::FileType::Directory);
                if ns == 0 || !tmpfs || !dir {
                    Reply::Err("a namespace's /tmp is a tmpfs directory of a namespace named".into())
                } else if !self.held.values().any(|(n, _)| *n == ns) {
                    Reply::Err(format!("no listener of namespace {ns} is held"))
                } else {
                    self.tmps.insert(ns, fd);
                    Reply::Ok(None)
                }
            }
            Ok(Request::Drop { key }) => match self.held.remove(&key) {
                Some(_) => Reply::Ok(None),
                None => Reply::Err(format!("no listener {key}")),
            },
            Ok(Request::Take) => return self.give_back(i),
        };
        send(sock, &reply, &[]).is_ok()
    }

    /// Copies of everything held, one message each, then `end N`.
    fn give_back(&self, i: usize) -> bool {
        let sock = self.clients[i].as_fd();
        for (key, (ns, fd)) in &self.held {
            if send(sock, &Reply::Held { key: *key, ns: *ns }, &[fd.as_fd()]).is_err() {
                return false;
            }
        }
        if let Some(j) = &self.journal
            && send(sock, &Reply::Journal, &[j.as_fd()]).is_err()
        {
            return false;
        }
        for (ns, fd) in &self.tmps {
            if send(sock, &Reply::Tmp { ns: *ns }, &[fd.as_fd()]).is_err() {
                return false;
            }
        }
        send(sock, &Reply::End(self.held.len()), &[]).is_ok()
    }
}

pub(crate) fn send_request(sock: BorrowedFd<'_>, req: Request, fds: &[BorrowedFd<'_>]) -> rustix::io::Result<()> {
    crate::wire::send_with_fds(sock, req.to_string().as_bytes(), fds).map(|_| ())
}
