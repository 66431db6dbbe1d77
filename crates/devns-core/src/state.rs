//! The state that outlives one devns process: which namespaces are under
//! devns, their id blocks and the devices they own. Kept in
//! `/run/devns/state.json`; this module decides, the shell stores.

use crate::device::DevId;
use crate::registry::{AssignError, NsId, Registry};
use crate::subid::{self, Range};
use serde::{Deserialize, Serialize};

pub const STATE_VERSION: u32 = 1;
/// Largest state file devns reads.
pub const MAX_STATE_BYTES: usize = 16 << 20;

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
    pub keeper: Keeper,
    pub uid_base: u32,
    pub gid_base: u32,
    /// Whole devices it owns (partitions follow).
    pub devices: Vec<DevId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub namespaces: Vec<NsRecord>,
}

impl Default for State {
    fn default() -> Self {
        State { version: STATE_VERSION, namespaces: Vec::new() }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("device {dev} is already owned by namespace {owner}")]
    Owned { dev: String, owner: String },
    #[error(transparent)]
    Assign(#[from] AssignError),
    #[error("name {0:?} is already used by a running namespace")]
    NameInUse(String),
    #[error("no free block of {} {kind} ids left in the subordinate ranges", subid::BLOCK)]
    NoIds { kind: &'static str },
}

/// A namespace that wants devices and an id block.
pub struct Claim<'a> {
    pub name: Option<&'a str>,
    pub keeper: Keeper,
    pub devices: &'a [DevId],
}

impl State {
    /// Forgets the namespaces whose keeper is gone; returns them.
    pub fn prune(&mut self, alive: impl Fn(&Keeper) -> bool) -> Vec<NsRecord> {
        let (live, dead) = std::mem::take(&mut self.namespaces).into_iter().partition(|r| alive(&r.keeper));
        self.namespaces = live;
        dead
    }

    fn label(r: &NsRecord) -> String {
        match (&r.id, &r.name) {
            (Some(id), Some(n)) => format!("{id} ({n})"),
            (Some(id), None) => id.to_string(),
            (None, Some(n)) => format!("{n} (starting)"),
            (None, None) => format!("of devns process {} (starting)", r.keeper.pid),
        }
    }

    /// Checks `claim` against the live records and the host's devices and, if
    /// nothing conflicts, records it with freshly allocated id blocks.
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
        for d in claim.devices {
            // The records know the owner's name; the registry knows the rest.
            if let Some(r) = self.namespaces.iter().find(|r| r.devices.contains(d)) {
                let dev = registry.device(*d).map_or_else(|| d.to_string(), |x| x.name.clone());
                return Err(ClaimError::Owned { dev, owner: Self::label(r) });
            }
            registry.check_assign(*d, None)?;
        }
        let uids: Vec<u32> = self.namespaces.iter().map(|r| r.uid_base).collect();
        let gids: Vec<u32> = self.namespaces.iter().map(|r| r.gid_base).collect();
        let uid_base = subid::allocate(uid_ranges, &uids).ok_or(ClaimError::NoIds { kind: "user" })?;
        let gid_base = subid::allocate(gid_ranges, &gids).ok_or(ClaimError::NoIds { kind: "group" })?;
        let mut devices = claim.devices.to_vec();
        devices.sort();
        devices.dedup();
        self.namespaces.push(NsRecord {
            id: None,
            name: claim.name.map(str::to_owned),
            keeper: claim.keeper,
            uid_base,
            gid_base,
            devices,
        });
        Ok(self.namespaces.last().expect("just pushed"))
    }

    pub fn find_mut(&mut self, keeper: Keeper) -> Option<&mut NsRecord> {
        self.namespaces.iter_mut().find(|r| r.keeper == keeper)
    }

    pub fn remove(&mut self, keeper: Keeper) -> Option<NsRecord> {
        let i = self.namespaces.iter().position(|r| r.keeper == keeper)?;
        Some(self.namespaces.remove(i))
    }

    /// Puts the recorded assignments into `registry`. Devices that are no
    /// longer on the host are skipped and returned.
    pub fn apply(&self, registry: &mut Registry) -> Vec<DevId> {
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

    #[test]
    fn claims_get_distinct_blocks_and_devices() {
        let reg = sample();
        let mut s = State::default();
        let a = s.claim(Claim { name: Some("a"), keeper: K1, devices: &[LOOP0] }, &reg, &[], &[]).unwrap();
        assert_eq!((a.uid_base, a.gid_base), (100_000, 100_000));
        let b = s.claim(Claim { name: None, keeper: K2, devices: &[LOOP1] }, &reg, &[], &[]).unwrap();
        assert_eq!(b.uid_base, 165_536);
    }

    #[test]
    fn conflicting_claims_change_nothing() {
        let reg = sample();
        let mut s = State::default();
        s.claim(Claim { name: Some("a"), keeper: K1, devices: &[LOOP0] }, &reg, &[], &[]).unwrap();
        s.find_mut(K1).unwrap().id = Some(NsId(77));
        let before = s.clone();
        let e = s.claim(Claim { name: None, keeper: K2, devices: &[LOOP1, LOOP0] }, &reg, &[], &[]).unwrap_err();
        assert_eq!(e.to_string(), "device loop0 is already owned by namespace id:77 (a)");
        let e = s.claim(Claim { name: Some("a"), keeper: K2, devices: &[] }, &reg, &[], &[]).unwrap_err();
        assert_eq!(e, ClaimError::NameInUse("a".into()));
        let e = s.claim(Claim { name: None, keeper: K2, devices: &[DevId::new(Kind::Block, 259, 0)] }, &reg, &[], &[]);
        assert!(matches!(e, Err(ClaimError::Assign(AssignError::Partition { .. }))));
        let tiny = [Range { start: 100_000, count: 65_536 }];
        let e = s.claim(Claim { name: None, keeper: K2, devices: &[] }, &reg, &tiny, &[]).unwrap_err();
        assert_eq!(e, ClaimError::NoIds { kind: "user" });
        assert_eq!(s, before);
    }

    #[test]
    fn prune_and_apply() {
        let mut reg = sample();
        let mut s = State::default();
        s.claim(Claim { name: None, keeper: K1, devices: &[LOOP0] }, &reg, &[], &[]).unwrap();
        s.claim(Claim { name: None, keeper: K2, devices: &[LOOP1] }, &reg, &[], &[]).unwrap();
        s.find_mut(K1).unwrap().id = Some(NsId(5));
        s.find_mut(K2).unwrap().id = Some(NsId(6));
        let dead = s.prune(|k| *k != K1);
        assert_eq!(dead.len(), 1);
        assert!(s.apply(&mut reg).is_empty());
        assert_eq!(reg.owner(LOOP0), Owner::Host);
        assert_eq!(reg.owner(LOOP1), Owner::Ns(NsId(6)));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<State>(&json).unwrap(), s);
    }
}
