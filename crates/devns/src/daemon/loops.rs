//! The daemon as the agent's policy: who may have which node, and loop
//! devices and partitions changing hands through the mediated calls.

use super::Daemon;
use crate::loopctl::{Ledger, LoopHost};
use devns_core::api::Event;
use devns_core::loopctl::{LoopDev, Request};
use devns_core::registry::{NsId, Owner, Registry};
use devns_core::{DevId, Device};
use rustix::io::Errno;
use std::time::{Duration, Instant};

/// How often busy loop devices of dead namespaces are tried again, and for
/// how long.
pub(super) const RETRY: Duration = Duration::from_millis(10);
const PATIENCE: Duration = Duration::from_secs(10);

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

    fn loop_control(&mut self, ns: NsId, pid: i32, req: Request) -> Result<u32, Errno> {
        if !self.nss.contains_key(&ns) {
            // A namespace nested in a container's: not one devns keeps.
            return Err(crate::agent::refused(
                pid,
                Some(ns),
                "ioctl(loop-control)",
                "not a namespace devns keeps",
                Errno::PERM,
            ));
        }
        crate::loopctl::serve(self, ns, pid, req)
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
    /// open somewhere are retried from the event loop.
    pub(super) fn clean_loops(&mut self, loops: Vec<LoopDev>) {
        if loops.is_empty() {
            return;
        }
        let Some(host) = self.loop_host.as_ref() else { return };
        let deadline = Instant::now() + PATIENCE;
        for l in host.cleanup(&loops, Duration::ZERO) {
            tracing::debug!(dev = %l.dev, "a dead namespace's loop device is busy; retrying");
            self.busy_loops.push((l, deadline));
        }
    }

    pub(super) fn retry_busy_loops(&mut self) {
        self.retry_busy_cgroups();
        if self.busy_loops.is_empty() {
            return;
        }
        let Some(host) = self.loop_host.as_ref() else { return };
        let now = Instant::now();
        let left: Vec<LoopDev> =
            host.cleanup(&self.busy_loops.iter().map(|(l, _)| *l).collect::<Vec<_>>(), Duration::ZERO);
        self.busy_loops.retain(|(l, deadline)| {
            let busy = left.contains(l);
            if busy && *deadline <= now {
                tracing::warn!(dev = %l.dev, "a dead namespace's loop device is still in use: left to detach at its last close");
                return false;
            }
            busy
        });
    }
}
