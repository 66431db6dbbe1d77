//! The one model of what devns keeps: the host's devices, which are global,
//! the namespaces under devns (their id blocks, watched processes, loop
//! allocations and cgroups) and who owns which device — each held once.
//!
//! Ownership lives in the registry's assignments alone; a namespace's
//! on-disk record ([`NsRecord`]) is made from the model when it is saved
//! ([`Model::record`]) and taken apart when it is read ([`Change::Records`]).
//! Every decision is [`Model::apply`]: a [`Change`] in, the [`Effect`]s the
//! keeper must carry out (views and maps to reconcile, records to save,
//! uevents to announce, API events to emit) out. A refused change leaves
//! the model as it was; undoing an applied one is keeping the old value
//! (the model is a plain value: the keeper holds the old one until the
//! kernel holds the new).

mod apply;
mod observe;
#[cfg(test)]
mod tests;

pub use apply::{Announce, Change, Effect, Ids, Scope};

use crate::device::{DevId, Device};
use crate::loopctl::LoopDev;
use crate::registry::{NsId, Registry};
use crate::state::{CgroupRecord, Keeper, NsRecord};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A namespace under devns, as the model holds it: everything of its record
/// but its devices (the registry's assignments say which are its own).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespace {
    pub name: Option<String>,
    /// The stand-alone `devns run` that keeps it: it ends with that keeper.
    pub keeper: Option<Keeper>,
    /// Processes inside it that the daemon watches.
    pub members: Vec<Keeper>,
    /// Its id blocks (`None` for an attached namespace, whose maps are its own).
    pub uid_base: Option<u32>,
    pub gid_base: Option<u32>,
    /// The loop devices it allocated through `loop-control` (owned, too).
    pub loops: Vec<LoopDev>,
    pub cgroup: Option<CgroupRecord>,
    /// The OCI container a runtime's hook attached it for.
    pub container: Option<String>,
}

impl Namespace {
    pub(super) fn of_record(r: &NsRecord) -> Namespace {
        Namespace {
            name: r.name.clone(),
            keeper: r.keeper,
            members: r.members.clone(),
            uid_base: r.uid_base,
            gid_base: r.gid_base,
            loops: r.loops.clone(),
            cgroup: r.cgroup.clone(),
            container: r.container.clone(),
        }
    }
}

/// How errors name a namespace: `id:N (name)`.
pub fn label(id: NsId, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("{id} ({n})"),
        None => id.to_string(),
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    reg: Registry,
    /// Global flags changed at run time (`devns global`), over the config's.
    global: BTreeMap<DevId, bool>,
    /// The config's global device names.
    global_names: Vec<String>,
    /// Shared with the copies of this model, so that keeping the old model
    /// while a change is carried out copies nothing (a change that edits a
    /// namespace copies the table and that one namespace).
    nss: Arc<BTreeMap<NsId, Arc<Namespace>>>,
    /// Devices that left a namespace's view with the kernel's `remove`
    /// event still to come: it goes to that namespace.
    departed: BTreeMap<DevId, NsId>,
}

impl Model {
    /// The host's `devices`, of which those named in `global_names` are
    /// global; no namespace yet.
    pub fn new(devices: Vec<Device>, global_names: Vec<String>) -> Model {
        let reg = Registry::new(devices, &global_names);
        Model { reg, global_names, ..Model::default() }
    }

    pub fn registry(&self) -> &Registry {
        &self.reg
    }

    pub fn global_names(&self) -> &[String] {
        &self.global_names
    }

    pub fn global_flags(&self) -> &BTreeMap<DevId, bool> {
        &self.global
    }

    pub fn namespace(&self, id: NsId) -> Option<&Namespace> {
        self.nss.get(&id).map(|n| &**n)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = (NsId, &Namespace)> {
        self.nss.iter().map(|(id, n)| (*id, &**n))
    }

    /// Every namespace's id, sorted.
    pub fn ids(&self) -> Vec<NsId> {
        self.nss.keys().copied().collect()
    }

    pub fn by_name(&self, name: &str) -> Option<NsId> {
        self.nss.iter().find(|(_, n)| n.name.as_deref() == Some(name)).map(|(id, _)| *id)
    }

    pub fn by_keeper(&self, keeper: Keeper) -> Option<NsId> {
        self.nss.iter().find(|(_, n)| n.keeper == Some(keeper)).map(|(id, _)| *id)
    }

    pub fn label(&self, id: NsId) -> String {
        label(id, self.nss.get(&id).and_then(|n| n.name.as_deref()))
    }

    /// The whole devices `id` owns, sorted.
    pub fn owned(&self, id: NsId) -> Vec<DevId> {
        self.reg.owned_by(id)
    }

    /// `id`'s record as it is saved.
    pub fn record(&self, id: NsId) -> Option<NsRecord> {
        let n = self.nss.get(&id)?;
        Some(NsRecord {
            id: Some(id),
            name: n.name.clone(),
            keeper: n.keeper,
            members: n.members.clone(),
            uid_base: n.uid_base,
            gid_base: n.gid_base,
            identity: self
                .owned(id)
                .into_iter()
                .filter_map(|d| self.reg.device(d).map(|dev| (d, dev.identity())))
                .filter(|(_, i)| i.ino.is_some())
                .collect(),
            devices: self.owned(id),
            loops: n.loops.clone(),
            cgroup: n.cgroup.clone(),
            container: n.container.clone(),
        })
    }

    /// The devices of `id`'s view.
    pub fn view_devices(&self, id: NsId) -> Vec<&Device> {
        self.reg.view_devices(id)
    }

    /// The names of `dev` and of its partitions: the paths a view gains
    /// when the disk becomes visible there.
    pub fn names_with_partitions(&self, dev: DevId) -> Vec<String> {
        self.reg.devices().filter(|d| d.id == dev || d.parent == Some(dev)).map(|d| d.name.clone()).collect()
    }

    /// `dev` then its partitions (`add`), or its partitions then `dev`
    /// (`remove`): the order the kernel announces them in.
    fn announce_order(&self, dev: DevId, add: bool) -> Vec<DevId> {
        let parts = self.reg.devices().filter(|d| d.is_partition() && d.parent == Some(dev)).map(|d| d.id);
        if add { std::iter::once(dev).chain(parts).collect() } else { parts.chain([dev]).collect() }
    }

    /// The namespaces for editing (the table copied if it is shared).
    fn nss_mut(&mut self) -> &mut BTreeMap<NsId, Arc<Namespace>> {
        Arc::make_mut(&mut self.nss)
    }

    /// One namespace for editing (copied if it is shared).
    fn ns_mut(&mut self, id: NsId) -> Option<&mut Namespace> {
        self.nss_mut().get_mut(&id).map(Arc::make_mut)
    }

    /// Drops `dev` from `id`'s loop devices, when it is one (nothing is
    /// copied otherwise).
    fn drop_loop(&mut self, id: NsId, dev: DevId) {
        if self.nss.get(&id).is_some_and(|n| n.loops.iter().any(|l| l.dev == dev))
            && let Some(n) = self.ns_mut(id)
        {
            n.loops.retain(|l| l.dev != dev);
        }
    }

    /// Whether `dev` is global now: its run-time flag, else the config's name.
    fn effective_global(&self, d: &Device) -> bool {
        self.global.get(&d.id).copied().unwrap_or_else(|| self.global_names.contains(&d.name))
    }

    /// Puts every device's global flag to what flags and names say.
    fn refresh_globals(&mut self) {
        let all: Vec<(DevId, bool)> = self.reg.devices().map(|d| (d.id, self.effective_global(d))).collect();
        for (id, on) in all {
            self.reg.set_global(id, on);
        }
    }
}
