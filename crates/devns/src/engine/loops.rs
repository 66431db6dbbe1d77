//! The engine as the agent's policy: who may have which node, loop devices
//! and partitions changing hands through the mediated calls, and the loop
//! devices of namespaces that are gone.

use super::{Engine, Role};
use crate::loopctl::{Ledger, LoopHost};
use crate::refusal::Refusal;
use devns_core::loopctl::{LoopDev, Request};
use devns_core::model::Change;
use devns_core::registry::{NsId, Owner, Registry};
use devns_core::{DevId, Device};
use rustix::io::Errno;
use std::time::{Duration, Instant};

/// How often busy loop devices of dead namespaces are tried again: often
/// for a while after a death, then slowly for as long as they are pending.
const RETRY: Duration = Duration::from_millis(10);
const PATIENCE: Duration = Duration::from_secs(10);
const SLOW_RETRY: Duration = Duration::from_secs(1);

/// When the loop devices pending removal (in the state directory) are
/// tried next.
#[derive(Clone, Copy, Debug)]
pub(super) struct LoopRetry {
    next: Instant,
    fast_until: Instant,
}

impl LoopRetry {
    /// A try at once, then slow ones (startup: devices a previous daemon
    /// or a stand-alone run left pending).
    pub(super) fn now() -> LoopRetry {
        let now = Instant::now();
        LoopRetry { next: now, fast_until: now }
    }
}

impl crate::agent::Policy for Engine {
    fn may_have(&self, ns: NsId, dev: DevId) -> bool {
        self.model.registry().visible_in(dev, ns)
    }

    fn view(&self, ns: NsId) -> Option<rustix::fd::BorrowedFd<'_>> {
        use rustix::fd::AsFd;
        self.kept.get(&ns)?.view.as_ref().map(|v| v.as_fd())
    }

    fn tmp(&self, ns: NsId) -> Option<rustix::fd::BorrowedFd<'_>> {
        use rustix::fd::AsFd;
        self.kept.get(&ns)?.tmp.as_ref().map(|t| t.as_fd())
    }

    fn owns(&self, ns: NsId, dev: DevId) -> bool {
        self.kept.contains_key(&ns) && self.model.registry().owner(dev) == Owner::Ns(ns)
    }

    fn loop_control(&mut self, ns: NsId, req: Request) -> Result<u32, Refusal> {
        if !self.kept.contains_key(&ns) {
            // A namespace nested in a container's: not one devns keeps.
            return Err(Refusal::new(Errno::PERM, "not a namespace devns keeps"));
        }
        // No other keeper decides between this call's decision and its
        // record: a device made here is recorded (and so nobody else's)
        // before another keeper looks at the records, and the others'
        // devices are read again first.
        let answer = self.locked(|e| Ok(crate::loopctl::serve(e, ns, req)));
        answer.unwrap_or_else(|e| {
            tracing::error!(error = %format!("{e:#}"), "cannot read the state");
            Err(Errno::IO.into())
        })
    }

    fn mount_kernel(&self) -> &[String] {
        &self.cfg.mount_kernel
    }

    fn device_name(&self, dev: DevId) -> Option<String> {
        self.model.registry().device(dev).map(|d| d.name.clone())
    }

    fn partitions_changed(&mut self, ns: NsId, disk: DevId) -> Result<(), Refusal> {
        let Some(name) = self.model.registry().device(disk).map(|d| d.name.clone()) else { return Ok(()) };
        let now = crate::discover::partitions_of(&name);
        // Acknowledged only once the view and the map hold the new table.
        self.commit(Change::Partitions { ns, disk, now }).map_err(|e| {
            let why = format!("the partition table of {disk} changed, but the view or device map cannot follow: {e:#}");
            Refusal::new(Errno::IO, why)
        })
    }
}

impl Ledger for Engine {
    fn registry(&self) -> &Registry {
        self.model.registry()
    }

    fn loop_limit(&self) -> usize {
        self.cfg.loop_limit
    }

    fn loop_host(&self) -> Option<&LoopHost> {
        self.loop_host.as_ref()
    }

    fn pending(&self) -> usize {
        self.store.read_pending().map_or(devns_core::loopctl::MAX_PENDING, |p| p.len())
    }

    fn take(&mut self, ns: NsId, l: LoopDev, dev: Device) -> Result<(), String> {
        self.commit(Change::LoopTake { ns, l, dev }).map_err(|e| format!("{e:#}"))
    }

    fn forget(&mut self, ns: NsId, l: LoopDev) {
        self.observe(Change::LoopReturn { ns, l }, None);
    }

    fn made(&mut self, index: Option<u32>) {
        if let Some(j) = &self.made_loops {
            j.made_loop(index);
        }
        if index.is_some() {
            crate::journal::Stop::LoopMade.here(&mut self.stop_at_made);
        }
    }
}

impl Engine {
    /// Notes each loop device made until it is recorded in `journal` (the
    /// daemon's, which outlives it); `stop`: a daemon under test stops
    /// itself there.
    pub fn note_made_loops(&mut self, journal: crate::journal::Journal, stop: Option<crate::journal::Stop>) {
        self.made_loops = Some(journal);
        self.stop_at_made = stop.filter(|s| *s == crate::journal::Stop::LoopMade);
    }

    /// At a daemon's start (or by a killed run's watcher): removes loop
    /// device `index`, which the last daemon (or the run) made and may have
    /// died before recording, unless a record has it (then it was recorded
    /// after all).
    pub fn drop_unrecorded_loop(&mut self, index: u32) {
        // Under the writers' lock: no other keeper is between making a
        // device and recording it meanwhile.
        let removed = self.with_lock(|e| {
            let pending = e.store.read_pending().unwrap_or_default();
            let recorded = e.model.namespaces().any(|(_, n)| n.loops.iter().any(|l| l.index == index))
                || pending.iter().any(|l| l.index == index);
            Ok(if recorded { None } else { e.loop_host.as_ref().map(|h| h.remove(index)) })
        });
        match removed {
            Ok(Some(Ok(()))) => {
                tracing::warn!(index, "removed loop{index}: made by a daemon that died before recording it")
            }
            Ok(Some(Err(rustix::io::Errno::NODEV | rustix::io::Errno::NXIO))) | Ok(None) => {}
            Ok(Some(Err(e))) => {
                tracing::warn!(index, error = %e, "cannot remove loop{index}, made and not recorded by a daemon that died")
            }
            Err(e) => tracing::warn!(index, error = %e, "cannot check the records for loop{index}"),
        }
    }
}

impl Engine {
    /// Detaches and removes a dead namespace's loop devices; those still
    /// open somewhere are recorded as pending removal (so a restart goes
    /// on with them) and retried: from the daemon's event loop until
    /// removed; by a stand-alone run for a second, then by the next
    /// devns command.
    pub(super) fn clean_loops(&mut self, loops: Vec<LoopDev>) {
        if self.role != Role::Daemon {
            let retried = self.with_lock(|e| crate::loopctl::retry_pending(&e.store, e.loop_host.as_ref()));
            if let Err(e) = retried {
                tracing::error!(error = %e, "cannot retry the loop devices pending removal");
            }
        }
        if loops.is_empty() {
            return;
        }
        let Some(host) = self.loop_host.as_ref() else { return };
        let patience = if self.role == Role::Daemon { Duration::ZERO } else { RUN_PATIENCE };
        let busy = host.cleanup(&loops, patience);
        if busy.is_empty() {
            return;
        }
        if let Err(e) = self.with_lock(|e| crate::loopctl::pend(&e.store, &busy)) {
            tracing::error!(error = %e, "cannot record loop devices pending removal");
        }
        let now = Instant::now();
        self.loop_retry = Some(LoopRetry { next: now + RETRY, fast_until: now + PATIENCE });
    }

    /// The dead namespaces' loop devices and cgroups tried again, when due.
    pub fn retry_busy(&mut self) {
        self.retry_busy_cgroups();
        let Some(mut r) = self.loop_retry else { return };
        let now = Instant::now();
        if now < r.next {
            return;
        }
        match self.with_lock(|e| crate::loopctl::retry_pending(&e.store, e.loop_host.as_ref())) {
            Ok(0) => {
                self.loop_retry = None;
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot retry the loop devices pending removal"),
        }
        r.next = now + if now < r.fast_until { RETRY } else { SLOW_RETRY };
        self.loop_retry = Some(r);
    }

    /// When the event loop must wake at the latest for a retry.
    pub fn next_retry(&self, now: Instant) -> Option<Instant> {
        let cgroups = (!self.busy_cgroups.is_empty()).then(|| now + RETRY);
        cgroups.into_iter().chain(self.loop_retry.map(|r| r.next)).min()
    }
}

/// How long a stand-alone run's end waits for a busy loop device.
const RUN_PATIENCE: Duration = Duration::from_secs(1);

/// Undoes what records of namespaces that are gone still hold, outside any
/// keeper (a test's cleanup): their loop devices detached and removed,
/// their device policies ended. Loop devices still open are only logged.
pub fn clean_dead(dead: Vec<devns_core::state::NsRecord>) {
    let host = if dead.iter().any(|r| !r.loops.is_empty()) { LoopHost::open() } else { None };
    for r in dead {
        if let Some(host) = &host {
            for l in host.cleanup(&r.loops, Duration::from_secs(1)) {
                tracing::warn!(dev = %l.dev, "a loop device is still in use: left to detach at its last close");
            }
        }
        if let Some(c) = &r.cgroup
            && let Some(busy) =
                crate::bpf::log_close(r.label(), crate::bpf::close_recorded(c, super::access::RUN_PATIENCE))
        {
            tracing::warn!(cgroup = %busy.display(), "a dead namespace's cgroup still has processes: left (its map is empty: they may open no device)");
        }
    }
}
