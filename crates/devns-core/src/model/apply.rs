//! [`Model::apply`]: every change devns makes or observes, as data.

use super::{Model, Namespace};
use crate::api::Event;
use crate::device::{DevId, Device, removes_known};
use crate::loopctl::LoopDev;
use crate::registry::{NsId, Owner};
use crate::state::{CgroupRecord, ClaimError, Keeper, NsRecord};
use crate::subid::{self, Range};
use std::collections::{BTreeMap, BTreeSet};

/// Where a reconcile step has to look in a view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything (startup, a release, a removal: a node of a device the
    /// namespace may no longer have can be anywhere in its view).
    All,
    /// Only these paths can differ from the plan: a device has just become
    /// visible there.
    Paths(Vec<String>),
}

/// A uevent a namespace is to hear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Announce {
    /// The kernel's event being handled, as it came.
    Forward,
    /// Events devns makes (`add` or `remove`) for these devices, in order:
    /// the device changed hands, so the kernel sends none.
    Synth { add: bool, devs: Vec<DevId> },
}

/// What the keeper carries out for an applied change, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Bring `ns`'s view and device map to the model (`scope` of the view).
    Reconcile(NsId, Scope),
    /// Write `ns`'s record (or remove it, when the namespace is gone).
    Save(NsId),
    /// Write the run-time global flags.
    SaveGlobal,
    Announce(NsId, Announce),
    Emit(Event),
    /// A namespace is gone: undo what its record holds on the host (its
    /// loop devices, its cgroup and program, its view).
    Free(NsRecord),
    /// A recorded device is no longer on the host: dropped from its owner.
    Missing(NsId, DevId),
}

/// Whether a namespace coming under devns gets id blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ids {
    /// One block each from the subordinate ranges (a namespace devns makes).
    Allocate { uids: Vec<Range>, gids: Vec<Range> },
    /// None: an attached namespace's maps are its own.
    Own,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A namespace comes under devns with the devices it wants.
    Claim { id: NsId, name: Option<String>, keeper: Option<Keeper>, members: Vec<Keeper>, devices: Vec<DevId>, ids: Ids },
    Assign { dev: DevId, to: NsId },
    Release { dev: DevId },
    Global { dev: DevId, on: bool },
    /// `ns` allocated loop device `l` (described by `dev`) through loop-control.
    LoopTake { ns: NsId, l: LoopDev, dev: Device },
    /// The kernel removed `ns`'s loop device `l` at its request.
    LoopReturn { ns: NsId, l: LoopDev },
    /// `ns` edited `disk`'s partitions: `now` is what sysfs has.
    Partitions { ns: NsId, disk: DevId, now: Vec<Device> },
    /// The kernel's `add` or `change` of `dev`.
    DeviceAdd { dev: Device },
    /// The kernel's `remove` of `dev` (with the event's `DISKSEQ`).
    DeviceRemove { dev: DevId, diskseq: Option<u64> },
    /// Nothing of the namespace is left.
    Death { ns: NsId },
    Members { ns: NsId, members: Vec<Keeper> },
    Cgroup { ns: NsId, rec: Option<CgroupRecord> },
    /// Records read from the state directory replace every namespace but
    /// those in `except` (the keeper's own, which it knows better); the
    /// flags replace the run-time global flags when given.
    Records { records: Vec<NsRecord>, except: BTreeSet<NsId>, global: Option<BTreeMap<DevId, bool>> },
    /// After lost uevents: the host's devices as sysfs has them now.
    Rescan { devices: Vec<Device> },
}

/// The name of the one device that may never be global: without devns
/// mediating its ioctls it lets any container remove others' loop devices.
const NEVER_GLOBAL: &str = "loop-control";

impl Model {
    /// Applies `change`: the effects to carry out, or why it is refused
    /// (and then nothing changed).
    pub fn apply(&mut self, change: Change) -> Result<Vec<Effect>, ClaimError> {
        match change {
            Change::Claim { id, name, keeper, members, devices, ids } => {
                self.claim(id, name, keeper, members, devices, ids)
            }
            Change::Assign { dev, to } => self.assign(dev, to),
            Change::Release { dev } => self.release(dev),
            Change::Global { dev, on } => self.global(dev, on),
            Change::LoopTake { ns, l, dev } => self.loop_take(ns, l, dev),
            Change::LoopReturn { ns, l } => Ok(self.loop_return(ns, l)),
            Change::Partitions { ns, disk, now } => Ok(self.partitions(ns, disk, now)),
            Change::DeviceAdd { dev } => Ok(self.device_add(dev)),
            Change::DeviceRemove { dev, diskseq } => Ok(self.device_remove(dev, diskseq)),
            Change::Death { ns } => Ok(self.death(ns)),
            Change::Members { ns, members } => self.edit(ns, |n| n.members = members),
            Change::Cgroup { ns, rec } => self.edit(ns, |n| n.cgroup = rec),
            Change::Records { records, except, global } => Ok(self.records(records, &except, global)),
            Change::Rescan { devices } => Ok(self.rescan(devices)),
        }
    }

    fn dev_name(&self, d: DevId) -> String {
        self.reg.device(d).map_or_else(|| d.to_string(), |x| x.name.clone())
    }

    fn known(&self, ns: NsId) -> Result<(), ClaimError> {
        if self.nss.contains_key(&ns) { Ok(()) } else { Err(ClaimError::UnknownNs(ns.to_string())) }
    }

    /// Whether `dev` may become `to`'s (`None`: a namespace to come).
    fn check_device(&self, dev: DevId, to: Option<NsId>) -> Result<(), ClaimError> {
        // A partition's owner is its disk's: the registry says why it is
        // refused (it is a partition), whoever owns the disk.
        if let Owner::Ns(o) = self.reg.owner(dev)
            && Some(o) != to
            && !self.reg.device(dev).is_some_and(Device::is_partition)
        {
            return Err(ClaimError::Owned { dev: self.dev_name(dev), owner: self.label(o) });
        }
        Ok(self.reg.check_assign(dev, to)?)
    }

    fn claim(
        &mut self,
        id: NsId,
        name: Option<String>,
        keeper: Option<Keeper>,
        members: Vec<Keeper>,
        mut devices: Vec<DevId>,
        ids: Ids,
    ) -> Result<Vec<Effect>, ClaimError> {
        if let Some(n) = &name
            && self.by_name(n).is_some()
        {
            return Err(ClaimError::NameInUse(n.clone()));
        }
        if self.nss.contains_key(&id) {
            return Err(ClaimError::Known(id));
        }
        for d in &devices {
            self.check_device(*d, None)?;
        }
        let (uid_base, gid_base) = match ids {
            Ids::Allocate { uids, gids } => {
                let taken = |f: fn(&Namespace) -> Option<u32>| -> Vec<u32> { self.nss.values().filter_map(f).collect() };
                let u = subid::allocate(&uids, &taken(|n| n.uid_base)).ok_or(ClaimError::NoIds { kind: "user" })?;
                let g = subid::allocate(&gids, &taken(|n| n.gid_base)).ok_or(ClaimError::NoIds { kind: "group" })?;
                (Some(u), Some(g))
            }
            Ids::Own => (None, None),
        };
        devices.sort();
        devices.dedup();
        for d in devices {
            self.reg.assign(d, id).expect("checked");
        }
        let ns = Namespace { name, keeper, members, uid_base, gid_base, ..Namespace::default() };
        self.nss.insert(id, ns);
        Ok(vec![Effect::Save(id)])
    }

    fn assign(&mut self, dev: DevId, to: NsId) -> Result<Vec<Effect>, ClaimError> {
        self.known(to)?;
        self.check_device(dev, Some(to))?;
        self.reg.assign(dev, to)?;
        let name = self.dev_name(dev);
        Ok(vec![
            Effect::Reconcile(to, Scope::Paths(self.names_with_partitions(dev))),
            Effect::Save(to),
            Effect::Announce(to, Announce::Synth { add: true, devs: self.announce_order(dev, true) }),
            Effect::Emit(Event::device("assign", &name, dev, Some(to.to_string()))),
        ])
    }

    fn release(&mut self, dev: DevId) -> Result<Vec<Effect>, ClaimError> {
        // A partition is nobody's own: it follows its disk.
        let Some(ns) = self.reg.release(dev) else {
            return Err(ClaimError::NotOwned(self.dev_name(dev)));
        };
        if let Some(n) = self.nss.get_mut(&ns) {
            n.loops.retain(|l| l.dev != dev);
        }
        let name = self.dev_name(dev);
        Ok(vec![
            Effect::Reconcile(ns, Scope::All),
            Effect::Save(ns),
            Effect::Announce(ns, Announce::Synth { add: false, devs: self.announce_order(dev, false) }),
            Effect::Emit(Event::device("release", &name, dev, Some(ns.to_string()))),
        ])
    }

    fn global(&mut self, dev: DevId, on: bool) -> Result<Vec<Effect>, ClaimError> {
        let name = self.dev_name(dev);
        if on && name == NEVER_GLOBAL {
            return Err(ClaimError::NeverGlobal(name));
        }
        self.global.insert(dev, on);
        self.reg.set_global(dev, on);
        let mut fx: Vec<Effect> = self.ids().into_iter().map(|id| Effect::Reconcile(id, Scope::All)).collect();
        fx.push(Effect::SaveGlobal);
        fx.push(Effect::Emit(Event {
            event: "global".into(),
            device: Some(name),
            dev: Some(dev.to_string()),
            ns: None,
            global: Some(on),
        }));
        Ok(fx)
    }

    fn loop_take(&mut self, ns: NsId, l: LoopDev, dev: Device) -> Result<Vec<Effect>, ClaimError> {
        self.known(ns)?;
        let known = self.reg.device(l.dev).is_some();
        let before = self.reg.device(l.dev).cloned();
        let name = dev.name.clone();
        self.reg.add_device(dev, &self.global_names);
        if let Err(e) = self.check_device(l.dev, Some(ns)) {
            // As it was: the registry's description too.
            match before {
                Some(b) => self.reg.add_device(b, &[]),
                None => drop(self.reg.remove_device(l.dev)),
            }
            return Err(e);
        }
        self.reg.assign(l.dev, ns)?;
        let n = self.nss.get_mut(&ns).expect("known");
        if !n.loops.iter().any(|x| x.dev == l.dev) {
            n.loops.push(l);
        }
        let mut fx = vec![Effect::Reconcile(ns, Scope::Paths(self.names_with_partitions(l.dev))), Effect::Save(ns)];
        // A device the registry knew gets no kernel event now: announced.
        // A new one's `add` is on its way from the kernel and is forwarded.
        if known {
            fx.push(Effect::Announce(ns, Announce::Synth { add: true, devs: self.announce_order(l.dev, true) }));
        }
        fx.push(Effect::Emit(Event::device("assign", &name, l.dev, Some(ns.to_string()))));
        Ok(fx)
    }

    /// Drops `dev` (gone from the host) from whoever owned or flagged it;
    /// whether a saved record or flag changed.
    fn forget_device(&mut self, dev: DevId) -> (Option<NsId>, bool) {
        let owner = self.reg.release(dev);
        if let Some(n) = owner.and_then(|o| self.nss.get_mut(&o)) {
            n.loops.retain(|l| l.dev != dev);
        }
        (owner, self.global.remove(&dev).is_some())
    }

    fn loop_return(&mut self, ns: NsId, l: LoopDev) -> Vec<Effect> {
        let name = self.reg.device(l.dev).map(|d| d.name.clone()).unwrap_or_default();
        self.forget_device(l.dev);
        if let Some(n) = self.nss.get_mut(&ns) {
            n.loops.retain(|x| x.dev != l.dev);
        }
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

    fn partitions(&mut self, ns: NsId, disk: DevId, now: Vec<Device>) -> Vec<Effect> {
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

    fn device_add(&mut self, d: Device) -> Vec<Effect> {
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

    fn device_remove(&mut self, dev: DevId, diskseq: Option<u64>) -> Vec<Effect> {
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

    fn death(&mut self, ns: NsId) -> Vec<Effect> {
        let Some(rec) = self.record(ns) else { return vec![] };
        self.nss.remove(&ns);
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

    fn edit(&mut self, ns: NsId, f: impl FnOnce(&mut Namespace)) -> Result<Vec<Effect>, ClaimError> {
        let n = self.nss.get_mut(&ns).ok_or_else(|| ClaimError::UnknownNs(ns.to_string()))?;
        f(n);
        Ok(vec![Effect::Save(ns)])
    }

    fn records(
        &mut self,
        records: Vec<NsRecord>,
        except: &BTreeSet<NsId>,
        global: Option<BTreeMap<DevId, bool>>,
    ) -> Vec<Effect> {
        let gone: Vec<NsId> = self.nss.keys().filter(|id| !except.contains(id)).copied().collect();
        for id in gone {
            self.nss.remove(&id);
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
                if self.reg.assign(*d, id).is_err() {
                    fx.push(Effect::Missing(id, *d));
                    fx.push(Effect::Save(id));
                }
            }
            let mut n = Namespace::of_record(&r);
            n.loops.retain(|l| self.reg.owner(l.dev) == Owner::Ns(id));
            self.nss.insert(id, n);
        }
        fx.extend(except.iter().map(|id| Effect::Reconcile(*id, Scope::All)));
        fx
    }

    fn rescan(&mut self, devices: Vec<Device>) -> Vec<Effect> {
        let owners: Vec<(NsId, DevId)> = self.ids().into_iter().flat_map(|id| self.owned(id).into_iter().map(move |d| (id, d))).collect();
        let mut next = crate::registry::Registry::new(devices, &self.global_names);
        // Events were lost: those awaited may never come.
        self.departed.clear();
        let mut fx = Vec::new();
        for (id, d) in owners {
            if next.assign(d, id).is_err() {
                if let Some(n) = self.nss.get_mut(&id) {
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
