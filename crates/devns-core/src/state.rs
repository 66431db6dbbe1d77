//! The state that outlives one devns process, as it is written: one record
//! per namespace under devns (its id blocks, the devices it owns, its loop
//! devices and cgroup), in the state directory (`/run/devns/state`, one file per
//! namespace: see `devns::store`); what becomes of a record whose keeper is
//! gone; and why a change is refused. The model that decides is
//! `crate::model`.

use crate::device::{DevId, Identity};
use crate::loopctl::LoopDev;
use crate::registry::{AssignError, NsId};
use crate::subid;
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
    /// What ends with each of those devices (as far as the keeper knew
    /// it), so that one made again with the same numbers while no keeper
    /// watched is not taken for it. Absent in records of devns before
    /// issue 13: their devices are known by numbers alone until the next
    /// save writes what they are then.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub identity: BTreeMap<DevId, Identity>,
    /// Of those, the loop devices it allocated through `loop-control`:
    /// detached and removed when it dies.
    #[serde(default)]
    pub loops: Vec<LoopDev>,
    /// Its device access policy's cgroup (absent in records of devns
    /// before the access layer, and when the policy is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupRecord>,
    /// The OCI container id a runtime's createRuntime hook attached it
    /// for: its poststop hook lets go of this namespace and no other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    const K1: Keeper = Keeper { pid: 10, start_time: 1 };
    const K2: Keeper = Keeper { pid: 11, start_time: 2 };

    #[test]
    fn a_record_is_freed_only_when_nothing_of_its_namespace_is_left() {
        let run = NsRecord {
            id: Some(NsId(5)),
            name: None,
            keeper: Some(K1),
            members: vec![],
            uid_base: Some(100_000),
            gid_base: Some(100_000),
            devices: vec![],
            identity: BTreeMap::new(),
            loops: vec![],
            cgroup: None,
            container: None,
        };
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
    fn records_without_a_cgroup_stay_readable_and_new_ones_round_trip() {
        let old = r#"{"id":5,"name":null,"keeper":null,"members":[],"uid_base":null,"gid_base":null,"devices":["b:7:0"],"loops":[]}"#;
        let r: NsRecord = serde_json::from_str(old).unwrap();
        assert_eq!((r.id, r.cgroup.clone()), (Some(NsId(5)), None));
        assert!(r.identity.is_empty(), "records before identities stay readable");
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("cgroup") && !text.contains("identity"), "{text}");
        let dev: DevId = "b:7:0".parse().unwrap();
        let with = NsRecord {
            cgroup: Some(CgroupRecord { path: "/sys/fs/cgroup/devns-5".into(), created: true, prog_id: Some(9) }),
            identity: BTreeMap::from([(dev, Identity { ino: Some(41), diskseq: Some(3) })]),
            ..r
        };
        let text = serde_json::to_string(&with).unwrap();
        assert!(text.contains(r#""identity":{"b:7:0":{"ino":41,"diskseq":3}}"#), "{text}");
        let back: NsRecord = serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(back, with);
    }
}
