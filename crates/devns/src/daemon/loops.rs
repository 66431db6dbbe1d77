//! The daemon as the agent's policy: who may have which node, and loop
//! devices and partitions changing hands through the mediated calls.

use super::Daemon;
use crate::loopctl::{Ledger, LoopHost};
use crate::refusal::Refusal;
use devns_core::api::Event;
use devns_core::loopctl::{LoopDev, Request};
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

impl crate::agent::Policy for Daemon {
    fn may_have(&self, ns: NsId, dev: DevId) -> bool {
        self.registry.visible_in(dev, ns)
    }

    fn view(&self, ns: NsId) -> Option<rustix::fd::BorrowedFd<'_>> {
        use rustix::fd::AsFd;
        self.nss.get(&ns)?.view.as_ref().map(|v| v.as_fd())
    }

    fn tmp(&self, ns: NsId) -> Option<rustix::fd::BorrowedFd<'_>> {
        use rustix::fd::AsFd;
        self.nss.get(&ns)?.tmp.as_ref().map(|t| t.as_fd())
    }

    fn owns(&self, ns: NsId, dev: DevId) -> bool {
        self.registry.owner(dev) == Owner::Ns(ns)
    }

    fn loop_control(&mut self, ns: NsId, req: Request) -> Result<u32, Refusal> {
        if !self.nss.contains_key(&ns) {
            // A namespace nested in a container's: not one devns keeps.
            return Err(Refusal::new(Errno::PERM, "not a namespace devns keeps"));
        }
        // No other keeper decides between this call's decision and its
        // record: a device made here is recorded (and so nobody else's)
        // before a stand-alone run or a claim looks at the records.
        match self.store.lock_file() {
            Ok(l) => self.writers_lock = Some(l),
            Err(e) => {
                tracing::error!(error = %e, "cannot lock the state");
                return Err(Errno::IO.into());
            }
        }
        let answer = crate::loopctl::serve(self, ns, req);
        self.writers_lock = None;
        answer
    }

    fn partitions_changed(&mut self, ns: NsId, disk: DevId) {
        // The kernel's own events come later: a new partition's `add` is
        // forwarded then (the registry knows its owner by that time), a
        // removed one's `remove` goes to the namespace that had it.
        for p in crate::discover::refresh_partitions(&mut self.registry, disk, &self.cfg.global) {
            self.departed.insert(p, ns);
        }
        self.reconcile(ns);
    }
}

impl Ledger for Daemon {
    fn registry(&self) -> &Registry {
        &self.registry
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
        let known = self.registry.device(l.dev).is_some();
        let name = dev.name.clone();
        self.registry.add_device(dev, &self.cfg.global);
        self.state.add_loop(ns, l, &self.registry).map_err(|e| e.to_string())?;
        self.registry.assign(l.dev, ns).map_err(|e| e.to_string())?;
        let undo = move |d: &mut Self| {
            let _ = d.state.release(l.dev, &d.registry);
            d.registry.release(l.dev);
            d.reconcile(ns);
        };
        if let Err(e) = self.reconcile_newly_visible(ns, l.dev) {
            undo(self);
            return Err(format!("{e:#}"));
        }
        self.commit(&[ns], undo).map_err(|e| e.to_string())?;
        // A device the registry knew gets no kernel event now: announce it.
        // A new one's `add` is on its way from the kernel and is forwarded.
        if known {
            self.announce_device(ns, l.dev, "add");
        }
        self.emit(Event::device("assign", &name, l.dev, Some(ns.to_string())));
        Ok(())
    }

    fn forget(&mut self, ns: NsId, l: LoopDev) {
        let name = self.registry.device(l.dev).map(|d| d.name.clone()).unwrap_or_default();
        // Gone from the view now; the kernel's `remove` events (on their
        // way) go to the namespace that had the devices.
        for d in self.registry.remove_disk(l.dev) {
            self.departed.insert(d, ns);
        }
        self.state.forget_device(l.dev);
        if let Err(e) = self.save_ns(&[ns]) {
            tracing::error!(ns = %ns, error = %e, "cannot save after a loop device was removed");
        }
        self.reconcile(ns);
        self.emit(Event::device("remove", &name, l.dev, Some(ns.to_string())));
    }
}

impl Daemon {
    /// Detaches and removes a dead namespace's loop devices; those still
    /// open somewhere are recorded as pending removal (so a restart goes
    /// on with them) and retried from the event loop until removed.
    pub(super) fn clean_loops(&mut self, loops: Vec<LoopDev>) {
        if loops.is_empty() {
            return;
        }
        let Some(host) = self.loop_host.as_ref() else { return };
        let busy = host.cleanup(&loops, Duration::ZERO);
        if busy.is_empty() {
            return;
        }
        if let Err(e) = crate::loopctl::pend(&self.store, &busy) {
            tracing::error!(error = %e, "cannot record loop devices pending removal");
        }
        let now = Instant::now();
        self.loop_retry = Some(LoopRetry { next: now + RETRY, fast_until: now + PATIENCE });
    }

    pub(super) fn retry_busy_loops(&mut self) {
        self.retry_busy_cgroups();
        let Some(mut r) = self.loop_retry else { return };
        let now = Instant::now();
        if now < r.next {
            return;
        }
        match crate::loopctl::retry_pending(&self.store, self.loop_host.as_ref()) {
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
    pub(super) fn next_retry(&self, now: Instant) -> Option<Instant> {
        let cgroups = (!self.busy_cgroups.is_empty()).then(|| now + RETRY);
        cgroups.into_iter().chain(self.loop_retry.map(|r| r.next)).min()
    }
}
