//! [`Model::apply`]: every change devns makes or observes, as data.

use super::{Model, Namespace};
use crate::api::Event;
use crate::device::{DevId, Device, Identity};
use crate::loopctl::LoopDev;
use crate::registry::{NsId, Owner};
use crate::state::{CgroupRecord, ClaimError, Keeper, NsRecord};
use crate::subid::{self, Range};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

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
    /// A recorded device was made again since its record was written
    /// (removed and made anew with its numbers while nobody watched): the
    /// device that has the numbers now is the host's. With what the record
    /// knew of the old one and what the new one is, for the log.
    Remade {
        ns: NsId,
        dev: DevId,
        recorded: Identity,
        now: Identity,
    },
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
    Claim {
        id: NsId,
        name: Option<String>,
        keeper: Option<Keeper>,
        members: Vec<Keeper>,
        devices: Vec<DevId>,
        ids: Ids,
        /// The OCI container a runtime's hook attached it for.
        container: Option<String>,
    },
    Assign {
        dev: DevId,
        to: NsId,
    },
    Release {
        dev: DevId,
    },
    Global {
        dev: DevId,
        on: bool,
    },
    /// `ns` allocated loop device `l` (described by `dev`) through loop-control.
    LoopTake {
        ns: NsId,
        l: LoopDev,
        dev: Device,
    },
    /// The kernel removed `ns`'s loop device `l` at its request.
    LoopReturn {
        ns: NsId,
        l: LoopDev,
    },
    /// `ns` edited `disk`'s partitions: `now` is what sysfs has.
    Partitions {
        ns: NsId,
        disk: DevId,
        now: Vec<Device>,
    },
    /// The kernel's `add` or `change` of `dev`.
    DeviceAdd {
        dev: Device,
    },
    /// The kernel's `remove` of `dev` (with the event's `DISKSEQ`).
    DeviceRemove {
        dev: DevId,
        diskseq: Option<u64>,
    },
    /// Nothing of the namespace is left.
    Death {
        ns: NsId,
    },
    Members {
        ns: NsId,
        members: Vec<Keeper>,
    },
    Cgroup {
        ns: NsId,
        rec: Option<CgroupRecord>,
    },
    /// Records read from the state directory replace every namespace but
    /// those in `except` (the keeper's own, which it knows better); the
    /// flags replace the run-time global flags when given.
    Records {
        records: Vec<NsRecord>,
        except: BTreeSet<NsId>,
        global: Option<BTreeMap<DevId, bool>>,
    },
    /// After lost uevents: the host's devices as sysfs has them now.
    Rescan {
        devices: Vec<Device>,
    },
}

/// The name of the one device that may never be global: without devns
/// mediating its ioctls it lets any container remove others' loop devices.
const NEVER_GLOBAL: &str = "loop-control";

impl Model {
    /// Applies `change`: the effects to carry out, or why it is refused
    /// (and then nothing changed).
    pub fn apply(&mut self, change: Change) -> Result<Vec<Effect>, ClaimError> {
        match change {
            Change::Claim { id, name, keeper, members, devices, ids, container } => {
                let fx = self.claim(id, name, keeper, members, devices, ids)?;
                self.ns_mut(id).expect("claimed").container = container;
                Ok(fx)
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

    pub(super) fn dev_name(&self, d: DevId) -> String {
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
                let taken =
                    |f: fn(&Namespace) -> Option<u32>| -> Vec<u32> { self.nss.values().filter_map(|n| f(n)).collect() };
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
        self.nss_mut().insert(id, Arc::new(ns));
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
        self.drop_loop(ns, dev);
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
        let n = self.ns_mut(ns).expect("known");
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

    fn edit(&mut self, ns: NsId, f: impl FnOnce(&mut Namespace)) -> Result<Vec<Effect>, ClaimError> {
        let n = self.ns_mut(ns).ok_or_else(|| ClaimError::UnknownNs(ns.to_string()))?;
        f(n);
        Ok(vec![Effect::Save(ns)])
    }
}
