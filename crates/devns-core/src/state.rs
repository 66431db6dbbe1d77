//! The state that outlives one devns process: which namespaces are under
//! devns, their id blocks and the devices they own. Kept in
//! the state directory (`/run/devns`, one file per namespace: see
//! `devns::store`); this module decides, the shell stores.

use crate::device::DevId;
use crate::loopctl::LoopDev;
use crate::registry::{AssignError, NsId, Registry};
use crate::subid::{self, Range};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest state file (one namespace's record) devns reads.
pub const MAX_STATE_BYTES: usize = 1 << 20;

/// The devns process that keeps a namespace: pid plus its start time (field 22
/// of `/proc/PID/stat`), which together never name another process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keeper {
    pub pid: i32,
    pub start_time: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsRecord {
    /// `None` between claiming devices and the namespace's creation.
    pub id: Option<NsId>,
    pub name: Option<String>,
    /// The stand-alone `devns run` that keeps this namespace: the record
    /// ends with it.
    #[serde(default)]
    pub keeper: Option<Keeper>,
    /// Processes inside the namespace that the daemon watches: the record
    /// ends when the last is gone (and `/proc` confirms no other is left).
    #[serde(default)]
    pub members: Vec<Keeper>,
    /// The id blocks devns gave it; `None` for an attached namespace, whose
    /// maps are its own.
    pub uid_base: Option<u32>,
    pub gid_base: Option<u32>,
    /// Whole devices it owns (partitions follow).
    pub devices: Vec<DevId>,
    /// Of those, the loop devices it allocated through `loop-control`:
    /// detached and removed when it dies.
    #[serde(default)]
    pub loops: Vec<LoopDev>,
    /// Its device access policy's cgroup (absent in records of devns
    /// before the access layer, and when the policy is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupRecord>,
}

/// Where a namespace's device program is attached: so that a namespace
/// that died while its keeper was away still gets its cgroup removed, or
/// (in a cgroup devns did not make) exactly its own program detached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupRecord {
    /// The cgroup's directory on the host.
    pub path: String,
    /// devns made it (and removes it); else it is the process's own.
    pub created: bool,
    /// The id of the program devns attached there, once it is.
    #[serde(default)]
    pub prog_id: Option<u32>,
}

impl NsRecord {
    /// How errors name it: `id:N (name)`.
    pub fn label(&self) -> String {
        match (&self.id, &self.name) {
            (Some(id), Some(n)) => format!("{id} ({n})"),
            (Some(id), None) => id.to_string(),
            (None, Some(n)) => format!("{n} (starting)"),
            (None, None) => "(starting)".to_owned(),
        }
    }
}

/// What the shell saw of a record's namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Its stand-alone keeper still runs.
    pub keeper_alive: bool,
    /// One of its watched members still runs.
    pub member_alive: bool,
    /// Some process is left in its user namespace or one nested in it, or
    /// in the cgroup devns made for it.
    pub processes_left: bool,
}

/// What becomes of a record whose keeper or members may be gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// It lives: its ids, devices and cgroup stay its own.
    Keep,
    /// Its keeper is gone but processes are left: they are killed first,
    /// and the record is freed only once none is (else kept, and tried
    /// again at the next look).
    Kill,
    /// Nothing of it is left: ids, devices, loops and cgroup are freed.
    Free,
}

impl NsRecord {
    /// A record is freed only when nothing of its namespace is left. A
    /// stand-alone run's namespace is devns's own making: what outlives
    /// its keeper is killed. The daemon's (attached, or provisioned and
    /// watched) live on while any of their processes does, whichever it is.
    pub fn fate(&self, seen: Seen) -> Fate {
        if seen.keeper_alive || seen.member_alive {
            Fate::Keep
        } else if !seen.processes_left {
            Fate::Free
        } else if self.keeper.is_some() {
            Fate::Kill
        } else {
            Fate::Keep
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub namespaces: Vec<NsRecord>,
    /// Global flags changed at run time (`devns global`), over the config's.
    #[serde(default)]
    pub global: BTreeMap<DevId, bool>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("device {dev} is already owned by namespace {owner}")]
    Owned { dev: String, owner: String },
    #[error(transparent)]
    Assign(#[from] AssignError),
    #[error("name {0:?} is already used by a running namespace")]
    NameInUse(String),
    #[error("namespace {0} is already under devns")]
    Known(NsId),
    #[error("no free block of {} {kind} ids left in the subordinate ranges", subid::BLOCK)]
    NoIds { kind: &'static str },
    #[error("unknown namespace {0}")]
    UnknownNs(String),
    #[error("device {0} is owned by no namespace")]
    NotOwned(String),
    #[error(
        "{0} cannot be global: without devns mediating its ioctls it lets any container remove other namespaces' loop devices"
    )]
    NeverGlobal(String),
}

/// A namespace coming under devns, with the devices it wants.
pub struct Claim<'a> {
    pub id: Option<NsId>,
    pub name: Option<&'a str>,
    pub keeper: Option<Keeper>,
    pub members: Vec<Keeper>,
    pub devices: &'a [DevId],
    /// Give it id blocks (a namespace devns creates) or not (one attached).
    pub allocate_ids: bool,
}

impl State {
    /// Forgets the namespaces `alive` says are gone; returns them.
    pub fn prune(&mut self, mut alive: impl FnMut(&NsRecord) -> bool) -> Vec<NsRecord> {
        let (live, dead) = std::mem::take(&mut self.namespaces).into_iter().partition(|r| alive(r));
        self.namespaces = live;
        dead
    }

    fn dev_name(registry: &Registry, d: DevId) -> String {
        registry.device(d).map_or_else(|| d.to_string(), |x| x.name.clone())
    }

    /// Whether `devices` may go to a namespace (`to`, when it exists).
    pub fn check_devices(&self, devices: &[DevId], registry: &Registry, to: Option<NsId>) -> Result<(), ClaimError> {
        for d in devices {
            // The records know the owner's name; the registry knows the rest.
            if let Some(r) = self.namespaces.iter().find(|r| r.devices.contains(d))
                && (to.is_none() || r.id != to)
            {
                return Err(ClaimError::Owned { dev: Self::dev_name(registry, *d), owner: r.label() });
            }
            registry.check_assign(*d, to)?;
        }
        Ok(())
    }

    /// Checks `claim` against the live records and the host's devices and, if
    /// nothing conflicts, records it (with fresh id blocks if asked).
    pub fn claim(
        &mut self,
        claim: Claim<'_>,
        registry: &Registry,
        uid_ranges: &[Range],
        gid_ranges: &[Range],
    ) -> Result<&NsRecord, ClaimError> {
        if let Some(n) = claim.name
            && self.namespaces.iter().any(|r| r.name.as_deref() == Some(n))
        {
            return Err(ClaimError::NameInUse(n.to_owned()));
        }
        if let Some(id) = claim.id
            && self.by_id(id).is_some()
        {
            return Err(ClaimError::Known(id));
        }
        self.check_devices(claim.devices, registry, None)?;
        let (uid_base, gid_base) = if claim.allocate_ids {
            let uids: Vec<u32> = self.namespaces.iter().filter_map(|r| r.uid_base).collect();
            let gids: Vec<u32> = self.namespaces.iter().filter_map(|r| r.gid_base).collect();
            (
                Some(subid::allocate(uid_ranges, &uids).ok_or(ClaimError::NoIds { kind: "user" })?),
                Some(subid::allocate(gid_ranges, &gids).ok_or(ClaimError::NoIds { kind: "group" })?),
            )
        } else {
            (None, None)
        };
        let mut devices = claim.devices.to_vec();
        devices.sort();
        devices.dedup();
        self.namespaces.push(NsRecord {
            id: claim.id,
            name: claim.name.map(str::to_owned),
            keeper: claim.keeper,
            members: claim.members,
            uid_base,
            gid_base,
            devices,
            loops: Vec::new(),
            cgroup: None,
        });
        Ok(self.namespaces.last().expect("just pushed"))
    }

    pub fn by_keeper_mut(&mut self, keeper: Keeper) -> Option<&mut NsRecord> {
        self.namespaces.iter_mut().find(|r| r.keeper == Some(keeper))
    }

    pub fn remove_by_keeper(&mut self, keeper: Keeper) -> Option<NsRecord> {
        let i = self.namespaces.iter().position(|r| r.keeper == Some(keeper))?;
        Some(self.namespaces.remove(i))
    }

    pub fn by_id(&self, id: NsId) -> Option<&NsRecord> {
        self.namespaces.iter().find(|r| r.id == Some(id))
    }

    pub fn by_id_mut(&mut self, id: NsId) -> Option<&mut NsRecord> {
        self.namespaces.iter_mut().find(|r| r.id == Some(id))
    }

    pub fn remove_id(&mut self, id: NsId) -> Option<NsRecord> {
        let i = self.namespaces.iter().position(|r| r.id == Some(id))?;
        Some(self.namespaces.remove(i))
    }

    /// Gives `dev` to the recorded namespace `ns`.
    pub fn assign(&mut self, dev: DevId, ns: NsId, registry: &Registry) -> Result<(), ClaimError> {
        self.check_devices(&[dev], registry, Some(ns))?;
        let r = self.by_id_mut(ns).ok_or_else(|| ClaimError::UnknownNs(ns.to_string()))?;
        if !r.devices.contains(&dev) {
            r.devices.push(dev);
            r.devices.sort();
        }
        Ok(())
    }

    /// Returns `dev` to `host`; the namespace that owned it.
    pub fn release(&mut self, dev: DevId, registry: &Registry) -> Result<NsId, ClaimError> {
        let r = self
            .namespaces
            .iter_mut()
            .find(|r| r.devices.contains(&dev))
            .ok_or_else(|| ClaimError::NotOwned(Self::dev_name(registry, dev)))?;
        r.devices.retain(|d| *d != dev);
        r.loops.retain(|l| l.dev != dev);
        r.id.ok_or_else(|| ClaimError::UnknownNs(r.label()))
    }

    /// Records that `ns` allocated loop device `l` (and so owns it).
    pub fn add_loop(&mut self, ns: NsId, l: LoopDev, registry: &Registry) -> Result<(), ClaimError> {
        self.assign(l.dev, ns, registry)?;
        let r = self.by_id_mut(ns).expect("assign found it");
        if !r.loops.iter().any(|x| x.dev == l.dev) {
            r.loops.push(l);
        }
        Ok(())
    }

    /// Forgets `dev` wherever it is owned (the device left the host).
    pub fn forget_device(&mut self, dev: DevId) {
        for r in &mut self.namespaces {
            r.devices.retain(|d| *d != dev);
            r.loops.retain(|l| l.dev != dev);
        }
        self.global.remove(&dev);
    }

    /// Puts the recorded assignments and global flags into `registry`.
    /// Devices that are no longer on the host are skipped and returned.
    pub fn apply(&self, registry: &mut Registry) -> Vec<DevId> {
        for (d, on) in &self.global {
            registry.set_global(*d, *on);
        }
        let mut missing = Vec::new();
        for r in &self.namespaces {
            let Some(id) = r.id else { continue };
            for d in &r.devices {
                if registry.assign(*d, id).is_err() {
                    missing.push(*d);
                }
            }
        }
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Kind;
    use crate::registry::Owner;
    use crate::registry::tests::sample;

    const K1: Keeper = Keeper { pid: 10, start_time: 1 };
    const K2: Keeper = Keeper { pid: 11, start_time: 2 };
    const LOOP0: DevId = DevId::new(Kind::Block, 7, 0);
    const LOOP1: DevId = DevId::new(Kind::Block, 7, 1);

    fn claim<'a>(name: Option<&'a str>, keeper: Keeper, devices: &'a [DevId]) -> Claim<'a> {
        Claim { id: None, name, keeper: Some(keeper), members: vec![], devices, allocate_ids: true }
    }

    #[test]
    fn assign_release_and_forget() {
        let reg = sample();
        let mut s = State::default();
        s.claim(Claim { id: Some(NsId(9)), ..claim(Some("x"), K1, &[]) }, &reg, &[], &[]).unwrap();
        s.claim(Claim { id: Some(NsId(8)), ..claim(None, K2, &[]) }, &reg, &[], &[]).unwrap();
        s.assign(LOOP0, NsId(9), &reg).unwrap();
        s.assign(LOOP0, NsId(9), &reg).unwrap();
        assert_eq!(s.by_id(NsId(9)).unwrap().devices, [LOOP0]);
        let e = s.assign(LOOP0, NsId(8), &reg).unwrap_err();
        assert_eq!(e.to_string(), "device loop0 is already owned by namespace id:9 (x)");
        assert_eq!(s.assign(LOOP1, NsId(7), &reg), Err(ClaimError::UnknownNs("id:7".into())));
        assert_eq!(s.release(LOOP0, &reg), Ok(NsId(9)));
        assert_eq!(s.release(LOOP0, &reg), Err(ClaimError::NotOwned("loop0".into())));
        s.assign(LOOP1, NsId(8), &reg).unwrap();
        s.forget_device(LOOP1);
        assert!(s.by_id(NsId(8)).unwrap().devices.is_empty());
        let e = s.claim(Claim { id: Some(NsId(9)), ..claim(None, K2, &[]) }, &reg, &[], &[]).unwrap_err();
        assert_eq!(e, ClaimError::Known(NsId(9)));
    }

    #[test]
    fn claims_get_distinct_blocks_and_devices() {
        let reg = sample();
        let mut s = State::default();
        let a = s.claim(claim(Some("a"), K1, &[LOOP0]), &reg, &[], &[]).unwrap();
        assert_eq!((a.uid_base, a.gid_base), (Some(100_000), Some(100_000)));
        let b = s.claim(claim(None, K2, &[LOOP1]), &reg, &[], &[]).unwrap();
        assert_eq!(b.uid_base, Some(165_536));
    }

    #[test]
    fn conflicting_claims_change_nothing() {
        let reg = sample();
        let mut s = State::default();
        s.claim(claim(Some("a"), K1, &[LOOP0]), &reg, &[], &[]).unwrap();
        s.by_keeper_mut(K1).unwrap().id = Some(NsId(77));
        let before = s.clone();
        let e = s.claim(claim(None, K2, &[LOOP1, LOOP0]), &reg, &[], &[]).unwrap_err();
        assert_eq!(e.to_string(), "device loop0 is already owned by namespace id:77 (a)");
        let e = s.claim(claim(Some("a"), K2, &[]), &reg, &[], &[]).unwrap_err();
        assert_eq!(e, ClaimError::NameInUse("a".into()));
        let e = s.claim(claim(None, K2, &[DevId::new(Kind::Block, 259, 0)]), &reg, &[], &[]);
        assert!(matches!(e, Err(ClaimError::Assign(AssignError::Partition { .. }))));
        let tiny = [Range { start: 100_000, count: 65_536 }];
        let e = s.claim(claim(None, K2, &[]), &reg, &tiny, &[]).unwrap_err();
        assert_eq!(e, ClaimError::NoIds { kind: "user" });
        assert_eq!(s, before);
    }

    #[test]
    fn prune_and_apply() {
        let mut reg = sample();
        let mut s = State::default();
        s.claim(claim(None, K1, &[LOOP0]), &reg, &[], &[]).unwrap();
        s.claim(claim(None, K2, &[LOOP1]), &reg, &[], &[]).unwrap();
        s.by_keeper_mut(K1).unwrap().id = Some(NsId(5));
        s.by_keeper_mut(K2).unwrap().id = Some(NsId(6));
        let dead = s.prune(|r| r.keeper != Some(K1));
        assert_eq!(dead.len(), 1);
        assert!(s.apply(&mut reg).is_empty());
        assert_eq!(reg.owner(LOOP0), Owner::Host);
        assert_eq!(reg.owner(LOOP1), Owner::Ns(NsId(6)));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<State>(&json).unwrap(), s);
    }

    #[test]
    fn a_record_is_freed_only_when_nothing_of_its_namespace_is_left() {
        let reg = sample();
        let mut s = State::default();
        let run = s.claim(claim(None, K1, &[]), &reg, &[], &[]).unwrap().clone();
        let attached = NsRecord { keeper: None, members: vec![K2], ..run.clone() };
        let seen = |keeper_alive, member_alive, processes_left| Seen { keeper_alive, member_alive, processes_left };
        for r in [&run, &attached] {
            assert_eq!(r.fate(seen(true, false, true)), Fate::Keep);
            assert_eq!(r.fate(seen(false, true, false)), Fate::Keep);
            assert_eq!(r.fate(seen(false, false, false)), Fate::Free);
        }
        // Processes outlived the keeper of a run: killed before anything
        // is freed. A daemon's namespace with processes left lives on.
        assert_eq!(run.fate(seen(false, false, true)), Fate::Kill);
        assert_eq!(attached.fate(seen(false, false, true)), Fate::Keep);
    }

    #[test]
    fn a_kept_record_keeps_its_block_from_the_next_claim() {
        let reg = sample();
        let mut s = State::default();
        s.claim(claim(None, K1, &[]), &reg, &[], &[]).unwrap();
        // Its keeper is gone, but its namespace could not be emptied yet.
        let dead = s.prune(|r| r.fate(Seen { processes_left: true, ..Seen::default() }) != Fate::Free);
        assert!(dead.is_empty());
        let next = s.claim(claim(None, K2, &[]), &reg, &[], &[]).unwrap();
        assert_eq!(next.uid_base, Some(165_536), "the block of a record that is kept is not handed out");
    }

    #[test]
    fn records_without_a_cgroup_stay_readable_and_new_ones_round_trip() {
        let old = r#"{"id":5,"name":null,"keeper":null,"members":[],"uid_base":null,"gid_base":null,"devices":["b:7:0"],"loops":[]}"#;
        let r: NsRecord = serde_json::from_str(old).unwrap();
        assert_eq!((r.id, r.cgroup.clone()), (Some(NsId(5)), None));
        assert!(!serde_json::to_string(&r).unwrap().contains("cgroup"));
        let with = NsRecord {
            cgroup: Some(CgroupRecord { path: "/sys/fs/cgroup/devns-5".into(), created: true, prog_id: Some(9) }),
            ..r
        };
        let back: NsRecord = serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(back, with);
    }
}
