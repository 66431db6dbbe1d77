//! The engine's records in the state directory: its own written (only what
//! changed), the other keepers' read, all under the writers' lock.
//!
//! Several keepers share a state directory: one daemon and any number of
//! stand-alone runs. Each writes only its own records; before it decides
//! anything that others' records bear on (a claim, a loop device) it reads
//! theirs again under the lock, and holds the lock until its decision is
//! recorded.

use super::{Engine, Role};
use crate::store::{Records, StoreError, key_of};
use anyhow::Result;
use devns_core::model::Change;
use devns_core::registry::NsId;
use std::collections::BTreeSet;

impl Engine {
    /// Runs `f` under the writers' lock with the other keepers' records
    /// read again first; the lock is held until `f` returns (a decision and
    /// its record are one step for every other keeper).
    pub fn locked<T>(&mut self, f: impl FnOnce(&mut Engine) -> Result<T>) -> Result<T> {
        self.holding(|e| e.refresh().map_err(anyhow::Error::from).and_then(|()| f(e)))
    }

    /// Runs `f` with the writers' lock held by this engine: the one it
    /// holds, or one taken for the call. Everything `f` calls that saves
    /// uses it (a second `flock` of the file would wait for this one).
    pub(super) fn holding<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&mut Engine) -> Result<T, E>,
    ) -> Result<T, E> {
        if self.held {
            return f(self);
        }
        self.store.flock(&self.lock, true)?;
        (self.held, self.fresh) = (true, false);
        let out = f(self);
        self.held = false;
        self.store.flock(&self.lock, false)?;
        out
    }

    /// Runs `f` under the writers' lock: the one this engine holds, or one
    /// taken for the call.
    pub(super) fn with_lock<T>(&mut self, f: impl FnOnce(&Engine) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.holding(|e| f(e))
    }

    /// Saves the records of `ids` that are this engine's (written if
    /// changed, removed if the namespace is gone, whoever's it was) and the
    /// global flags, under the writers' lock; then learns the other
    /// keepers' records. The cost follows what changed, not how many
    /// namespaces there are.
    pub fn save(&mut self, ids: &[NsId]) -> Result<(), StoreError> {
        self.holding(|e| e.save_held(ids))
    }

    fn save_held(&mut self, ids: &[NsId]) -> Result<(), StoreError> {
        let mut before = Records::new();
        let mut after = Records::new();
        for id in ids {
            match self.model.record(*id) {
                Some(r) if self.mine(r.keeper) => {
                    let k = key_of(&r);
                    if let Some(old) = self.disk.get(&k) {
                        before.insert(k.clone(), old.clone());
                    }
                    after.insert(k, r);
                }
                Some(_) => {}
                None => {
                    for (k, r) in self.disk.iter().filter(|(_, r)| r.id == Some(*id)) {
                        before.insert(k.clone(), r.clone());
                    }
                }
            }
        }
        self.store.write_changes(&before, &after, |_| true)?;
        for k in before.keys() {
            self.disk.remove(k);
        }
        self.disk.extend(after);
        if self.role == Role::Daemon && self.model.global_flags() != &self.global_disk {
            self.store.write_global(self.model.global_flags())?;
            self.global_disk = self.model.global_flags().clone();
        }
        self.refresh()
    }

    /// Reads the other keepers' records; when they changed, the model
    /// takes them in and the views this engine keeps follow. The daemon
    /// reads the stand-alone runs' (`runs/`, nearly empty), a run all.
    fn refresh(&mut self) -> Result<(), StoreError> {
        if self.held && self.fresh {
            return Ok(());
        }
        self.fresh = self.held;
        // Nothing written where the others' records live since the last
        // read: they are as read (inotify queues an event within the
        // writer's own call, so before it lets go of the lock).
        if self.others_read && !self.others_written() {
            return Ok(());
        }
        // Read again until a read succeeds.
        self.others_read = false;
        let daemon = self.role == Role::Daemon;
        let read = self.store.read_records(daemon)?;
        let theirs: Records = read.into_iter().filter(|(_, r)| !self.mine(r.keeper)).collect();
        let global = if daemon { None } else { Some(self.store.read_global()?) };
        let global_changed = global.as_ref().is_some_and(|g| g != self.model.global_flags());
        self.others_read = true;
        if theirs == self.others && !global_changed {
            return Ok(());
        }
        let records: Vec<_> = theirs.values().cloned().collect();
        self.others = theirs;
        let except: BTreeSet<NsId> =
            self.model.namespaces().filter(|(_, n)| self.mine(n.keeper)).map(|(id, _)| id).collect();
        self.observe(Change::Records { records, except, global }, None);
        Ok(())
    }
}

/// An inotify watch on where the other keepers' records live (for the
/// daemon `runs/`; for a run also `ns/` and the global flags in the state
/// directory itself), so that a look for them costs one `read` while none
/// was written. `None` (every look reads them) when it cannot be had.
pub(super) fn watch_records(store: &crate::store::Store, role: Role) -> Option<rustix::fd::OwnedFd> {
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).ok()?;
    let what = WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_TO
        | WatchFlags::MOVED_FROM
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::DELETE_SELF;
    let dir = store.dir();
    let dirs = if role == Role::Daemon {
        vec![dir.join("runs")]
    } else {
        vec![dir.join("runs"), dir.join("ns"), dir.to_owned()]
    };
    for d in dirs {
        inotify::add_watch(&fd, &d, what).ok()?;
    }
    Some(fd)
}

impl Engine {
    /// Whether anything was written where the others' records live since
    /// the last look (always, without a watch, or when it cannot tell).
    fn others_written(&self) -> bool {
        let Some(fd) = &self.watch else { return true };
        let mut buf = [0u8; 4096];
        let mut written = false;
        loop {
            match rustix::io::read(fd, &mut buf) {
                Ok(0) | Err(rustix::io::Errno::AGAIN) => return written,
                Ok(_) => written = true,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return true,
            }
        }
    }
}
