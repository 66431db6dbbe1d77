//! The changes devns observes rather than makes: the kernel's uevents, a
//! loop device the kernel removed, edited partitions, a namespace's death,
//! records read from the state directory, a rescan of sysfs. Nothing here
//! is refused: the kernel (or a death) already made the change.

use super::apply::{Announce, Effect, Scope};
use super::{Model, Namespace};
use crate::api::Event;
use crate::device::{DevId, Device, removes_known};
use crate::loopctl::LoopDev;
use crate::registry::{NsId, Owner};
use crate::state::NsRecord;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

impl Model {
    /// Drops `dev` (gone from the host) from whoever owned or flagged it;
    /// whether a saved record or flag changed.
    pub(super) fn forget_device(&mut self, dev: DevId) -> (Option<NsId>, bool) {
        let owner = self.reg.release(dev);
        if let Some(o) = owner {
            self.drop_loop(o, dev);
        }
        (owner, self.global.remove(&dev).is_some())
    }

    pub(super) fn loop_return(&mut self, ns: NsId, l: LoopDev) -> Vec<Effect> {
        let name = self.reg.device(l.dev).map(|d| d.name.clone()).unwrap_or_default();
        self.forget_device(l.dev);
        self.drop_loop(ns, l.dev);
        // Gone from the view now; the kernel's `remove` events (on their
        // way) go to the namespace that had the devices.
        for d in self.reg.remove_disk(l.dev) {
            self.departed.insert(d, ns);
        }
        vec![
            Effect::Save(ns),
            Effect::Reconcile(ns, Scope::All),
            Effect::Emit(Event::device("remove", &name, l.dev, Some(ns.to_string()))),
        ]
    }

    pub(super) fn partitions(&mut self, ns: NsId, disk: DevId, now: Vec<Device>) -> Vec<Effect> {
        if self.reg.device(disk).is_none() {
            return vec![];
        }
        let gone: Vec<DevId> = self
            .reg
            .devices()
            .filter(|d| d.parent == Some(disk) && !now.iter().any(|n| n.id == d.id))
            .map(|d| d.id)
            .collect();
        // The kernel's own events come later: a new partition's `add` is
        // forwarded then, a removed one's `remove` goes to the namespace
        // that had it.
        for p in gone {
            self.reg.remove_device(p);
            self.departed.insert(p, ns);
        }
        for d in now.into_iter().filter(|d| d.parent == Some(disk)) {
            let global = self.effective_global(&d);
            let id = d.id;
            self.reg.add_device(d, &[]);
            self.reg.set_global(id, global);
        }
        vec![Effect::Reconcile(ns, Scope::All)]
    }

    pub(super) fn device_add(&mut self, d: Device) -> Vec<Effect> {
        let dev = d.id;
        // A late event of an older disk with these numbers (removed and made
        // again since, maybe for another namespace) must not describe the
        // newer one: its `remove` would then take it.
        let known_seq = self.reg.device(dev).and_then(|k| k.diskseq);
        if !removes_known(known_seq, d.diskseq) {
            return vec![];
        }
        let name = d.name.clone();
        let known = self.reg.device(dev).is_some();
        let global = self.effective_global(&d);
        self.reg.add_device(d, &[]);
        self.reg.set_global(dev, global);
        // Visible now (or still) at its path: nothing else in those views
        // can have changed with it.
        let holders = self.reg.holders(dev, &self.ids());
        let mut fx: Vec<Effect> =
            holders.into_iter().map(|ns| Effect::Reconcile(ns, Scope::Paths(vec![name.clone()]))).collect();
        // The owner hears of its own device, as it would on a host: the
        // kernel's event as it came (global devices: nobody's).
        let owner = self.reg.owner(dev);
        if let Owner::Ns(n) = owner
            && !global
        {
            fx.push(Effect::Announce(n, Announce::Forward));
        }
        if !known {
            fx.push(Effect::Emit(Event::device("add", &name, dev, owner.ns().map(|n| n.to_string()))));
        }
        fx
    }

    pub(super) fn device_remove(&mut self, dev: DevId, diskseq: Option<u64>) -> Vec<Effect> {
        let mut fx = Vec::new();
        if let Some(ns) = self.departed.remove(&dev) {
            fx.push(Effect::Announce(ns, Announce::Forward));
        }
        // The disk the registry knows by these numbers may be a newer one
        // than the event's (a loop device removed and made again for another
        // namespace before its `remove` came): that one stays. Anything else
        // is what the event says is gone, even if the host made a new device
        // with its numbers meanwhile: that one is the host's, with an `add`
        // of its own to come.
        let Some(known) = self.reg.device(dev) else { return fx };
        if !removes_known(known.diskseq, diskseq) {
            return fx;
        }
        let name = known.name.clone();
        let holders = self.reg.holders(dev, &self.ids());
        let owner = self.reg.owner(dev);
        let was_global = self.reg.is_global(dev);
        let (owned, flagged) = self.forget_device(dev);
        self.reg.remove_device(dev);
        fx.extend(owned.map(Effect::Save));
        if flagged {
            fx.push(Effect::SaveGlobal);
        }
        // As the kernel does: its node goes, then the event. The node at its
        // own path goes first; the owner hears; then the sweep of the rest
        // of each view (for nodes a container made of it elsewhere).
        fx.extend(holders.iter().map(|ns| Effect::Reconcile(*ns, Scope::Paths(vec![name.clone()]))));
        if let Owner::Ns(n) = owner
            && !was_global
        {
            fx.push(Effect::Announce(n, Announce::Forward));
        }
        fx.extend(holders.iter().map(|ns| Effect::Reconcile(*ns, Scope::All)));
        fx.push(Effect::Emit(Event::device("remove", &name, dev, owner.ns().map(|n| n.to_string()))));
        fx
    }

    pub(super) fn death(&mut self, ns: NsId) -> Vec<Effect> {
        let Some(rec) = self.record(ns) else { return vec![] };
        self.nss_mut().remove(&ns);
        let released = self.reg.release_ns(ns);
        self.departed.retain(|_, n| *n != ns);
        let mut fx = vec![Effect::Free(rec), Effect::Save(ns)];
        for d in released {
            let name = self.dev_name(d);
            fx.push(Effect::Emit(Event::device("release", &name, d, Some(ns.to_string()))));
        }
        fx.push(Effect::Emit(Event::ns("ns-gone", ns)));
        fx
    }

    pub(super) fn records(
        &mut self,
        records: Vec<NsRecord>,
        except: &BTreeSet<NsId>,
        global: Option<BTreeMap<DevId, bool>>,
    ) -> Vec<Effect> {
        let gone: Vec<NsId> = self.nss.keys().filter(|id| !except.contains(id)).copied().collect();
        for id in gone {
            self.nss_mut().remove(&id);
            self.reg.release_ns(id);
        }
        self.departed.retain(|_, n| except.contains(n));
        if let Some(g) = global {
            // Flags of devices not on the host now stay: they hold again
            // when the device comes back.
            self.global = g;
            self.refresh_globals();
        }
        let mut fx = Vec::new();
        for r in records {
            // A record without an id is an older devns's, between its claim
            // and its namespace: nothing of it can be seen or kept.
            let Some(id) = r.id.filter(|id| !except.contains(id)) else { continue };
            if self.nss.contains_key(&id) {
                continue;
            }
            for d in &r.devices {
                let now = self.reg.device(*d).map(Device::identity);
                if let (Some(rec), Some(now)) = (r.identity.get(d), now)
                    && rec.ended(&now)
                {
                    fx.push(Effect::Remade { ns: id, dev: *d, recorded: *rec, now });
                    fx.push(Effect::Save(id));
                    continue;
                }
                if self.reg.assign(*d, id).is_err() {
                    fx.push(Effect::Missing(id, *d));
                    fx.push(Effect::Save(id));
                }
            }
            let mut n = Namespace::of_record(&r);
            n.loops.retain(|l| self.reg.owner(l.dev) == Owner::Ns(id));
            self.nss_mut().insert(id, Arc::new(n));
        }
        fx.extend(except.iter().map(|id| Effect::Reconcile(*id, Scope::All)));
        fx
    }

    pub(super) fn rescan(&mut self, devices: Vec<Device>) -> Vec<Effect> {
        let owners: Vec<(NsId, DevId)> =
            self.ids().into_iter().flat_map(|id| self.owned(id).into_iter().map(move |d| (id, d))).collect();
        let mut next = crate::registry::Registry::new(devices, &self.global_names);
        // Events were lost: those awaited may never come.
        self.departed.clear();
        let mut fx = Vec::new();
        for (id, d) in owners {
            // The device sysfs has with these numbers now may be a new one
            // (the old one's `remove` among the lost events): not owned.
            let was = self.reg.device(d).map(Device::identity);
            let now = next.device(d).map(Device::identity);
            if let (Some(recorded), Some(now)) = (was, now)
                && recorded.ended(&now)
            {
                if let Some(n) = self.ns_mut(id) {
                    n.loops.retain(|l| l.dev != d);
                }
                fx.push(Effect::Remade { ns: id, dev: d, recorded, now });
                fx.push(Effect::Save(id));
                continue;
            }
            if next.assign(d, id).is_err() {
                if let Some(n) = self.ns_mut(id) {
                    n.loops.retain(|l| l.dev != d);
                }
                fx.push(Effect::Missing(id, d));
                fx.push(Effect::Save(id));
            }
        }
        self.reg = next;
        let flags = self.global.len();
        self.global.retain(|d, _| self.reg.device(*d).is_some());
        if flags != self.global.len() {
            fx.push(Effect::SaveGlobal);
        }
        self.refresh_globals();
        fx.extend(self.ids().into_iter().map(|id| Effect::Reconcile(id, Scope::All)));
        fx
    }
}
