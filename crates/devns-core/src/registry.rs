//! Who owns which device, and which devices a namespace's view holds.
//!
//! Behaviour 1 and 2 of DESIGN.md live here: a device appears in a view iff it
//! is global or owned by that namespace, and a partition has no owner of its
//! own: it follows its whole disk, whenever it appears.

use crate::device::{DevId, Device, Kind};
use crate::spec::DevSpec;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// A user namespace, by its kernel id (`NS_GET_ID`): 64-bit and never reused
/// while the host is up, so holding it never keeps the namespace alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NsId(pub u64);

impl fmt::Display for NsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "id:{}", self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Host,
    Ns(NsId),
}

impl Owner {
    /// The owning namespace, `None` for `host`.
    pub fn ns(self) -> Option<NsId> {
        match self {
            Owner::Host => None,
            Owner::Ns(n) => Some(n),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Host => f.write_str("host"),
            Owner::Ns(id) => id.fmt(f),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("unknown device {0:?}: no such device on this host")]
    Unknown(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssignError {
    #[error("unknown device {0}")]
    Unknown(DevId),
    #[error("device {part} is a partition: partitions follow their disk, assign {disk} instead")]
    Partition { part: String, disk: String },
    #[error("device {dev} is already owned by namespace {owner}")]
    OwnedByOther { dev: String, owner: NsId },
}

/// The host's devices, the global set and the assignments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    /// Shared with the copies of this registry (a keeper keeps the old model
    /// while a change is carried out): copying a registry copies no device,
    /// and a change copies the table only when it adds or removes one.
    devices: Arc<BTreeMap<DevId, Arc<Device>>>,
    global: BTreeSet<DevId>,
    /// Whole devices only: a partition's owner is derived from its disk.
    assigned: BTreeMap<DevId, NsId>,
}

impl Registry {
    /// A registry of `devices`, where those named in `global_names` are global.
    /// Names that match no device are ignored: such a device may appear later.
    pub fn new(devices: impl IntoIterator<Item = Device>, global_names: &[String]) -> Self {
        let devices: Arc<BTreeMap<DevId, Arc<Device>>> =
            Arc::new(devices.into_iter().map(|d| (d.id, Arc::new(d))).collect());
        let global = devices.values().filter(|d| global_names.contains(&d.name)).map(|d| d.id).collect();
        Registry { devices, global, assigned: BTreeMap::new() }
    }

    /// Adds (or refreshes) a device that appeared on the host; it is global
    /// when its name is in `global_names` (a run-time flag may override).
    pub fn add_device(&mut self, dev: Device, global_names: &[String]) {
        if global_names.contains(&dev.name) {
            self.global.insert(dev.id);
        }
        Arc::make_mut(&mut self.devices).insert(dev.id, Arc::new(dev));
    }

    /// Removes a device that left the host, with its assignment and flag.
    pub fn remove_device(&mut self, id: DevId) -> Option<Device> {
        self.assigned.remove(&id);
        self.global.remove(&id);
        if !self.devices.contains_key(&id) {
            return None;
        }
        Arc::make_mut(&mut self.devices).remove(&id).map(Arc::unwrap_or_clone)
    }

    /// Removes a disk that left the host with its partitions; the ids gone.
    pub fn remove_disk(&mut self, disk: DevId) -> Vec<DevId> {
        let gone: Vec<DevId> =
            self.devices.values().filter(|d| d.parent == Some(disk)).map(|d| d.id).chain([disk]).collect();
        for d in &gone {
            self.remove_device(*d);
        }
        gone
    }

    pub fn set_global(&mut self, id: DevId, on: bool) {
        if on && self.devices.contains_key(&id) {
            self.global.insert(id);
        } else if !on {
            self.global.remove(&id);
        }
    }

    /// The namespaces whose views hold `id` now, of those in `all`: every
    /// one for a global device, else its owner alone (without a look at
    /// the others, so a hotplug costs the same with 1,000 views as with 1).
    pub fn holders(&self, id: DevId, all: &[NsId]) -> Vec<NsId> {
        if self.is_global(id) {
            return all.to_vec();
        }
        match self.owner(id) {
            Owner::Ns(ns) if all.binary_search(&ns).is_ok() => vec![ns],
            _ => vec![],
        }
    }

    pub fn device(&self, id: DevId) -> Option<&Device> {
        self.devices.get(&id).map(|d| &**d)
    }

    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.devices.values().map(|d| &**d)
    }

    pub fn is_global(&self, id: DevId) -> bool {
        self.global.contains(&id)
    }

    /// The device that carries ownership for `id`: its disk for a partition.
    fn ownership_root(&self, id: DevId) -> DevId {
        match self.devices.get(&id) {
            Some(d) if d.is_partition() => d.parent.unwrap_or(id),
            _ => id,
        }
    }

    pub fn owner(&self, id: DevId) -> Owner {
        match self.assigned.get(&self.ownership_root(id)) {
            Some(ns) => Owner::Ns(*ns),
            None => Owner::Host,
        }
    }

    /// Whether `id` may be assigned to `ns` (nothing changes).
    pub fn check_assign(&self, id: DevId, ns: Option<NsId>) -> Result<(), AssignError> {
        let dev = self.devices.get(&id).ok_or(AssignError::Unknown(id))?;
        if dev.is_partition() {
            let disk = dev.parent.and_then(|p| self.devices.get(&p));
            return Err(AssignError::Partition {
                part: dev.name.clone(),
                disk: disk.map_or_else(|| "its disk".to_owned(), |d| d.name.clone()),
            });
        }
        match self.assigned.get(&id) {
            Some(owner) if Some(*owner) != ns => {
                Err(AssignError::OwnedByOther { dev: dev.name.clone(), owner: *owner })
            }
            _ => Ok(()),
        }
    }

    pub fn assign(&mut self, id: DevId, ns: NsId) -> Result<(), AssignError> {
        self.check_assign(id, Some(ns))?;
        self.assigned.insert(id, ns);
        Ok(())
    }

    /// Returns every device to `host` (before applying recorded state anew).
    pub fn clear_assignments(&mut self) {
        self.assigned.clear();
    }

    /// Returns the device to `host`; the previous owner, if any.
    pub fn release(&mut self, id: DevId) -> Option<NsId> {
        self.assigned.remove(&id)
    }

    /// Returns every device of `ns` to `host`; the devices released.
    pub fn release_ns(&mut self, ns: NsId) -> Vec<DevId> {
        let gone: Vec<DevId> = self.assigned.iter().filter(|(_, o)| **o == ns).map(|(d, _)| *d).collect();
        for d in &gone {
            self.assigned.remove(d);
        }
        gone
    }

    /// The whole devices `ns` owns, sorted.
    pub fn owned_by(&self, ns: NsId) -> Vec<DevId> {
        self.assigned.iter().filter(|(_, o)| **o == ns).map(|(d, _)| *d).collect()
    }

    /// Behaviour 1: a device is in a view iff it is global or owned by it.
    pub fn visible_in(&self, id: DevId, ns: NsId) -> bool {
        self.is_global(id) || self.owner(id) == Owner::Ns(ns)
    }

    /// The devices `ns`'s view must hold, in a stable order.
    pub fn view_devices(&self, ns: NsId) -> Vec<&Device> {
        self.devices().filter(|d| self.visible_in(d.id, ns)).collect()
    }

    /// Turns what a user typed into a device of this host.
    pub fn resolve(&self, spec: &DevSpec) -> Result<DevId, ResolveError> {
        let unknown = || ResolveError::Unknown(spec.to_string());
        match spec {
            DevSpec::Id(id) => self.devices.get(id).map(|d| d.id).ok_or_else(unknown),
            DevSpec::Number { major, minor } => {
                let c = DevId::new(Kind::Char, *major, *minor);
                let b = DevId::new(Kind::Block, *major, *minor);
                // `MAJ:MIN` is how lsblk and losetup print block devices, and
                // majors are shared (7 is loop and vcs): the block device wins,
                // `c:MAJ:MIN` names the other.
                match (self.devices.contains_key(&b), self.devices.contains_key(&c)) {
                    (true, _) => Ok(b),
                    (false, true) => Ok(c),
                    (false, false) => Err(unknown()),
                }
            }
            DevSpec::Name(name) => self.devices.values().find(|d| d.name == *name).map(|d| d.id).ok_or_else(unknown),
            DevSpec::Path(_) => Err(unknown()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::device::DevType;
    use proptest::prelude::*;

    pub fn dev(kind: Kind, major: u32, minor: u32, name: &str) -> Device {
        Device {
            id: DevId::new(kind, major, minor),
            name: name.into(),
            subsystem: String::new(),
            devtype: None,
            parent: None,
            mode: 0o600,
            uid: 0,
            gid: 0,
            diskseq: None,
            ino: None,
        }
    }

    pub fn disk(minor: u32, name: &str) -> Device {
        Device { devtype: Some(DevType::Disk), ..dev(Kind::Block, 7, minor, name) }
    }

    pub fn part(minor: u32, name: &str, disk: u32) -> Device {
        Device {
            devtype: Some(DevType::Partition),
            parent: Some(DevId::new(Kind::Block, 7, disk)),
            ..dev(Kind::Block, 259, minor, name)
        }
    }

    pub fn sample() -> Registry {
        let devs = vec![
            dev(Kind::Char, 1, 3, "null"),
            dev(Kind::Char, 1, 5, "zero"),
            dev(Kind::Char, 1, 1, "mem"),
            dev(Kind::Char, 10, 200, "net/tun"),
            disk(0, "loop0"),
            disk(1, "loop1"),
            part(0, "loop0p1", 0),
            part(1, "loop0p2", 0),
            dev(Kind::Block, 1, 3, "ram3"),
        ];
        Registry::new(devs, &["null".into(), "zero".into(), "absent".into()])
    }

    const A: NsId = NsId(100);
    const B: NsId = NsId(200);

    fn names(r: &Registry, ns: NsId) -> Vec<String> {
        let mut v: Vec<String> = r.view_devices(ns).iter().map(|d| d.name.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn default_owner_is_host_and_views_hold_only_globals() {
        let r = sample();
        assert_eq!(r.owner(DevId::new(Kind::Block, 7, 0)), Owner::Host);
        assert_eq!(names(&r, A), ["null", "zero"]);
    }

    #[test]
    fn assigned_disk_brings_its_partitions_and_only_to_its_owner() {
        let mut r = sample();
        r.assign(DevId::new(Kind::Block, 7, 0), A).unwrap();
        assert_eq!(names(&r, A), ["loop0", "loop0p1", "loop0p2", "null", "zero"]);
        assert_eq!(names(&r, B), ["null", "zero"]);
        assert_eq!(r.owner(DevId::new(Kind::Block, 259, 1)), Owner::Ns(A));
        assert_eq!(r.holders(DevId::new(Kind::Block, 259, 1), &[A, B]), [A]);
        assert_eq!(r.holders(DevId::new(Kind::Char, 1, 3), &[A, B]), [A, B]);
        assert_eq!(r.holders(DevId::new(Kind::Block, 7, 1), &[A, B]), []);
        assert_eq!(r.release(DevId::new(Kind::Block, 7, 0)), Some(A));
        assert_eq!(names(&r, A), ["null", "zero"]);
    }

    #[test]
    fn assign_refuses_partitions_unknown_and_other_owners() {
        let mut r = sample();
        assert_eq!(
            r.assign(DevId::new(Kind::Block, 259, 0), A),
            Err(AssignError::Partition { part: "loop0p1".into(), disk: "loop0".into() })
        );
        assert_eq!(
            r.assign(DevId::new(Kind::Block, 9, 9), A),
            Err(AssignError::Unknown(DevId::new(Kind::Block, 9, 9)))
        );
        r.assign(DevId::new(Kind::Block, 7, 1), A).unwrap();
        let e = r.assign(DevId::new(Kind::Block, 7, 1), B).unwrap_err();
        assert_eq!(e.to_string(), "device loop1 is already owned by namespace id:100");
        // Assigning again to the same owner is a no-op, not an error.
        r.assign(DevId::new(Kind::Block, 7, 1), A).unwrap();
        assert_eq!(r.release_ns(A), vec![DevId::new(Kind::Block, 7, 1)]);
        assert_eq!(r.owner(DevId::new(Kind::Block, 7, 1)), Owner::Host);
    }

    #[test]
    fn resolve_by_name_number_and_id() {
        let r = sample();
        assert_eq!(r.resolve(&DevSpec::parse("loop1").unwrap()), Ok(DevId::new(Kind::Block, 7, 1)));
        assert_eq!(r.resolve(&DevSpec::parse("net/tun").unwrap()), Ok(DevId::new(Kind::Char, 10, 200)));
        assert_eq!(r.resolve(&DevSpec::parse("7:1").unwrap()), Ok(DevId::new(Kind::Block, 7, 1)));
        assert_eq!(r.resolve(&DevSpec::parse("c:1:3").unwrap()), Ok(DevId::new(Kind::Char, 1, 3)));
        assert_eq!(r.resolve(&DevSpec::parse("1:3").unwrap()), Ok(DevId::new(Kind::Block, 1, 3)));
        assert_eq!(r.resolve(&DevSpec::parse("1:5").unwrap()), Ok(DevId::new(Kind::Char, 1, 5)));
        assert_eq!(
            r.resolve(&DevSpec::parse("nosuch").unwrap()).unwrap_err().to_string(),
            "unknown device \"nosuch\": no such device on this host"
        );
    }

    proptest! {
        /// Whatever is assigned, views of different namespaces share only the
        /// global devices, and every device is in the view of its owner.
        #[test]
        fn views_are_disjoint_but_for_globals(ops in proptest::collection::vec((0u32..3, any::<bool>(), any::<bool>()), 0..20)) {
            let mut r = sample();
            for (minor, to_a, release) in ops {
                let id = DevId::new(Kind::Block, 7, minor);
                if release { r.release(id); } else { let _ = r.assign(id, if to_a { A } else { B }); }
            }
            for d in r.devices() {
                let (a, b) = (r.visible_in(d.id, A), r.visible_in(d.id, B));
                if a && b { prop_assert!(r.is_global(d.id)); }
                if let Owner::Ns(o) = r.owner(d.id) { prop_assert!(r.visible_in(d.id, o)); }
                if d.is_partition() {
                    prop_assert_eq!(r.owner(d.id), r.owner(d.parent.unwrap()));
                }
            }
        }
    }
}
