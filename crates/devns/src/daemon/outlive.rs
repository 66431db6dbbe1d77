//! Where the daemon's seccomp listeners outlive it: systemd's fd store
//! when it runs as a service (`NOTIFY_SOCKET`), else devns's own holder
//! (`crate::holder`), started when none runs for the state dir. Each
//! listener is handed over as it is accepted, with the namespace it
//! serves; at start the daemon takes them all back, serves those whose
//! namespace lives on, drops the stale ones, and finishes the call its
//! predecessor had in flight (`crate::journal`).

use super::{Daemon, Target};
use crate::agent::Listener;
use crate::fdstore::FdStore;
use crate::holder::client::Client;
use crate::journal::Journal;
use devns_core::keep::{self, Recovered, Resume, Stored};
use devns_core::registry::NsId;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

pub enum Outlive {
    Holder(Client, PathBuf),
    Systemd {
        store: FdStore,
        next_key: u64,
    },
    /// Neither could be had: listeners die with the daemon (logged).
    Nowhere,
}

/// A listener the daemon serves, with its key in the store.
pub struct Served {
    pub listener: Listener,
    pub key: Option<u64>,
    pub ns: u64,
    /// The container whose runtime passed it (the agent socket), while
    /// this daemon serves it.
    pub container: Option<String>,
    /// What is still to be done for that container at the first call
    /// trapped (its first `execve`).
    pub due: Option<super::agentsock::Due>,
}

/// What the store gave back at start.
#[derive(Default)]
pub struct Given {
    listeners: Vec<(u64, u64, OwnedFd)>,
    journal: Option<OwnedFd>,
    tmps: Vec<(u64, OwnedFd)>,
}

impl Outlive {
    /// The store for this daemon, and what it holds from the last one.
    /// `passed` are the fds systemd passed at start.
    pub fn open(state_dir: &Path, passed: Vec<(OwnedFd, String)>) -> (Outlive, Given) {
        match FdStore::from_env() {
            Ok(Some(store)) => {
                let mut given = Given::default();
                for (fd, name) in passed {
                    match Stored::parse(&name) {
                        Some(Stored::Listener { key, ns }) => given.listeners.push((key, ns, fd)),
                        Some(Stored::Journal) => given.journal = Some(fd),
                        Some(Stored::Tmp { ns }) => given.tmps.push((ns, fd)),
                        None => tracing::warn!(name, "closing an fd passed by the service manager that is not devns's"),
                    }
                }
                let next_key = given.listeners.iter().map(|l| l.0).max().unwrap_or(0) + 1;
                return (Outlive::Systemd { store, next_key }, given);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "not using the service manager's fd store"),
        }
        let taken = Client::connect_or_start(state_dir).and_then(|c| Ok((c.take()?, c)));
        match taken {
            Ok((t, c)) => (
                Outlive::Holder(c, state_dir.to_owned()),
                Given { listeners: t.listeners, journal: t.journal, tmps: t.tmps },
            ),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"),
                    "no holder for the seccomp listeners: a daemon that dies leaves its containers' trapped calls failing");
                (Outlive::Nowhere, Given::default())
            }
        }
    }

    /// Keeps `fd` (a listener of `ns`, or the journal); its key.
    fn put(&mut self, what: Option<u64>, fd: BorrowedFd<'_>) -> anyhow::Result<Option<u64>> {
        match (self, what) {
            (Outlive::Holder(c, _), Some(ns)) => c.put(ns, fd).map(Some),
            (Outlive::Holder(c, _), None) => c.journal(fd).map(|()| None),
            (Outlive::Systemd { store, next_key }, Some(ns)) => {
                let key = *next_key;
                *next_key += 1;
                store.store(Stored::Listener { key, ns }, fd).map(|()| Some(key))
            }
            (Outlive::Systemd { store, .. }, None) => store.store(Stored::Journal, fd).map(|()| None),
            (Outlive::Nowhere, _) => Ok(None),
        }
    }

    /// Keeps namespace `ns`'s `/tmp` beside its listener.
    fn put_tmp(&mut self, ns: u64, dir: BorrowedFd<'_>) {
        let r = match self {
            Outlive::Holder(c, _) => c.tmp(ns, dir),
            Outlive::Systemd { store, .. } => store.store(Stored::Tmp { ns }, dir),
            Outlive::Nowhere => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!(ns, error = %format!("{e:#}"), "cannot keep a namespace's /tmp past the daemon");
        }
    }

    /// The store has no more use for listener `key` (nor, when it was
    /// `ns`'s `last`, for the namespace's `/tmp`).
    pub fn forget(&mut self, key: u64, ns: u64, last: bool) {
        let r = match self {
            Outlive::Holder(c, _) => c.drop_key(key),
            Outlive::Systemd { store, .. } => store
                .remove(Stored::Listener { key, ns })
                .and_then(|()| if last { store.remove(Stored::Tmp { ns }) } else { Ok(()) }),
            Outlive::Nowhere => Ok(()),
        };
        if let Err(e) = r {
            tracing::debug!(key, error = %format!("{e:#}"), "the store did not drop a listener");
        }
    }
}

impl Daemon {
    /// Hands `l` (serving `ns`, 0 if not known; passed by the runtime of
    /// `container`) to the store and serves it.
    pub(super) fn serve_listener(
        &mut self,
        l: Listener,
        ns: u64,
        container: Option<String>,
        due: Option<super::agentsock::Due>,
    ) -> u64 {
        let key = self.keep(Some(ns), l.fd());
        self.keep_tmp(ns);
        let token = self.add_served(Served { listener: l, key, ns, container, due });
        self.note(token);
        token
    }

    /// Notes listener `token`'s container and due work where a restarted
    /// daemon reads them back (`Store::write_note`); a listener of no
    /// container, or kept nowhere, needs none.
    pub(super) fn note(&self, token: u64) {
        let Some(s) = self.listeners.get(&token) else { return };
        let (Some(key), Some(container)) = (s.key, s.container.clone()) else { return };
        let due = s.due.as_ref().map(super::agentsock::Due::note);
        let note = devns_core::keep::ListenerNote { container, due };
        if let Err(e) = self.engine.store().write_note(key, &note) {
            tracing::warn!(key, error = %e, "cannot note a runtime's listener: a restarted daemon would not know its container");
        }
    }

    fn keep_tmp(&mut self, ns: u64) {
        if let Some(tmp) = self.engine.kept(NsId(ns)).and_then(|k| k.tmp.as_ref()) {
            self.outlive.put_tmp(ns, tmp.as_fd());
        }
    }

    /// Keeps an fd in the store; a holder that died is started again and
    /// given everything again.
    fn keep(&mut self, ns: Option<u64>, fd: BorrowedFd<'_>) -> Option<u64> {
        match self.outlive.put(ns, fd) {
            Ok(key) => return key,
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "the holder is gone; starting another"),
        }
        if !self.rehold() {
            return None;
        }
        self.outlive.put(ns, fd).ok().flatten()
    }

    /// Watches the connection to the holder, if the listeners are in one.
    pub(super) fn watch_holder(&mut self) {
        if let Outlive::Holder(c, _) = &self.outlive {
            super::watch_in(&self.ep, &mut self.targets, &mut self.next_token, c.fd(), Target::Holder);
        }
    }

    /// Whether the holder's connection, readable, is at its end. The
    /// holder speaks only to answer a request (read there and then), so
    /// anything else is discarded, lest it wake the loop again and again.
    pub(super) fn holder_gone(&self) -> bool {
        let Outlive::Holder(c, _) = &self.outlive else { return false };
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 256];
        match rustix::net::recv(c.fd(), &mut buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((_, 0)) => true,
            Ok(_) | Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => false,
            Err(_) => true,
        }
    }

    /// A holder that died started again (or found) and given everything
    /// this daemon serves again: so that a kill of the daemon after it
    /// still loses nothing. Whether one holds them now.
    pub(super) fn rehold(&mut self) -> bool {
        let Outlive::Holder(_, dir) = &self.outlive else { return false };
        let dir = dir.clone();
        self.targets.retain(|_, t| !matches!(t, Target::Holder));
        match Client::connect_or_start(&dir) {
            Ok(c) => self.outlive = Outlive::Holder(c, dir),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "no holder for the seccomp listeners");
                self.outlive = Outlive::Nowhere;
                return false;
            }
        }
        self.watch_holder();
        if let Some(j) = &self.journal {
            let _ = self.outlive.put(None, j.fd());
        }
        for s in self.listeners.values_mut() {
            s.key = self.outlive.put(Some(s.ns), s.listener.fd()).ok().flatten();
        }
        let nss: Vec<u64> = self.listeners.values().map(|s| s.ns).collect();
        for n in nss {
            self.keep_tmp(n);
        }
        true
    }

    /// No filtered process of listener `key` is left (a call still
    /// pending came from one that is gone): neither it nor the store
    /// keeps it.
    pub(super) fn listener_hung_up(&mut self, key: u64) {
        if let Some(s) = self.listeners.remove(&key)
            && let Some(k) = s.key
        {
            let last = !self.listeners.values().any(|o| o.ns == s.ns);
            self.outlive.forget(k, s.ns, last);
            self.engine.store().remove_note(k);
        }
    }

    /// Answers one call trapped by listener `key`, journaled (received,
    /// then answered, then done), so that a daemon killed meanwhile leaves
    /// the call to the next one.
    pub(super) fn answer_call(&mut self, key: u64) {
        let Some(s) = self.listeners.get_mut(&key) else { return };
        let j = self.journal.as_ref();
        let n = match j {
            Some(j) => j.recv(s.key.unwrap_or(0), s.listener.fd()),
            None => s.listener.recv(),
        };
        let Some(n) = n else { return };
        crate::journal::Stop::Received.here(&mut self.stop_in_call);
        let had_due = s.due.is_some();
        let first = match s.due.take() {
            Some(due) => self.at_first_call(key, &n, due),
            None => super::agentsock::FirstCall::Done,
        };
        let Some(s) = self.listeners.get_mut(&key) else { return };
        let j = self.journal.as_ref();
        let answer = match first {
            super::agentsock::FirstCall::Done => s.listener.answer(&n, &mut self.engine),
            super::agentsock::FirstCall::Failed(e) => {
                Some(devns_sys::seccomp::NotifResp { id: n.id, val: 0, error: -e.raw_os_error(), flags: 0 })
            }
            super::agentsock::FirstCall::Gone(due) => {
                s.due = Some(due);
                None
            }
        };
        if let Some(r) = answer {
            if let Some(j) = j {
                j.answered(&r);
            }
            crate::journal::Stop::Answered.here(&mut self.stop_in_call);
            s.listener.send(&r);
        }
        if let Some(j) = j {
            j.done();
        }
        // After the answer, off the call's way: a daemon killed before
        // this finds the due work still noted, which is done again
        // harmlessly (an attach of a namespace kept already is nothing; a
        // deferral again changes nothing).
        if had_due && self.listeners.get(&key).is_some_and(|s| s.due.is_none()) {
            self.note(key);
        }
    }

    /// Serves `s`; its key.
    fn add_served(&mut self, s: Served) -> u64 {
        let token = self.watch(s.listener.fd(), Target::Agent(0));
        self.targets.insert(token, Target::Agent(token));
        self.listeners.insert(token, s);
        token
    }

    /// At start: the journal and the listeners the store gave back.
    pub(super) fn adopt(&mut self, given: Given) {
        let journal = given.journal.and_then(Journal::open);
        let resumed = journal.is_some();
        self.journal = journal.or_else(|| Journal::create().ok());
        if !resumed && let Some(j) = self.journal.take() {
            self.keep(None, j.fd());
            self.journal = Some(j);
        }
        if let Some(j) = &self.journal {
            // A loop device the last daemon made and may not have recorded.
            if let Some(n) = j.unrecorded_loop() {
                self.engine.drop_unrecorded_loop(n);
                j.made_loop(None);
            }
            if let Some(another) = j.another() {
                self.engine.note_made_loops(another, self.stop_in_call);
            }
        }
        let kept = self.engine.kept_ids();
        for (key, ns, fd) in given.listeners {
            let alive = |n| crate::host::members_of(NsId(n)).next().is_some();
            match keep::recovered(ns, hung_up(fd.as_fd()), |n| kept.contains(&NsId(n)), alive) {
                Recovered::Serve => match Listener::new(fd) {
                    Ok(l) => {
                        // What the last daemon noted of it: its container
                        // (crun's exec listeners name it) and due work.
                        let (container, due) = match self.engine.store().read_note(key) {
                            Some(Ok(n)) => (Some(n.container), n.due.map(super::agentsock::Due::from_note)),
                            Some(Err(why)) => {
                                tracing::warn!(key, "a listener's note is not devns's, so nothing is due: {why}");
                                (None, None)
                            }
                            None => (None, None),
                        };
                        self.add_served(Served { listener: l, key: Some(key), ns, container, due });
                    }
                    Err(e) => tracing::warn!(key, error = %e, "cannot serve a listener given back"),
                },
                Recovered::Stale(why) => {
                    tracing::info!(key, ns, "dropping a listener given back: {why}");
                    let last = !self.listeners.values().any(|o| o.ns == ns);
                    self.outlive.forget(key, ns, last);
                }
            }
        }
        // The /tmp devns made for each: where it makes their nodes again.
        for (ns, dir) in given.tmps {
            if let Some(k) = self.engine.kept_mut(NsId(ns))
                && k.tmp.is_none()
            {
                k.tmp = Some(dir);
            }
        }
        // Notes of listeners not given back (hung up, or dropped as stale).
        let served: std::collections::BTreeSet<u64> = self.listeners.values().filter_map(|s| s.key).collect();
        for key in self.engine.store().note_keys() {
            if !served.contains(&key) {
                self.engine.store().remove_note(key);
            }
        }
        tracing::info!(listeners = self.listeners.len(), "seccomp listeners taken back");
        self.resume_in_flight();
    }

    /// The call the last daemon had received but not answered, if the
    /// kernel still waits for it.
    fn resume_in_flight(&mut self) {
        let Some(j) = &self.journal else { return };
        let (f, n, resp) = j.in_flight();
        let key = match f {
            keep::InFlight::Idle => return,
            keep::InFlight::Received { key } | keep::InFlight::Answered { key } => key,
        };
        let Some(s) = self.listeners.values_mut().find(|s| s.key == Some(key)) else {
            j.done();
            return;
        };
        match keep::resume(f, devns_sys::seccomp::id_valid(s.listener.fd(), n.id)) {
            Resume::Nothing => {}
            Resume::SendAnswer { .. } => s.listener.send(&resp),
            Resume::HandleAgain { .. } => {
                if let Some(r) = s.listener.answer(&n, &mut self.engine) {
                    j.answered(&r);
                    s.listener.send(&r);
                }
            }
        }
        tracing::info!(id = n.id, ?f, "the call in flight at the last daemon's death is answered");
        j.done();
    }
}

/// Whether no filtered process is left on `fd` (`POLLHUP` now).
fn hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut p = [rustix::event::PollFd::from_borrowed_fd(fd, rustix::event::PollFlags::empty())];
    let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    rustix::event::poll(&mut p, Some(&zero)).is_ok()
        && p[0].revents().intersects(rustix::event::PollFlags::HUP | rustix::event::PollFlags::ERR)
}
