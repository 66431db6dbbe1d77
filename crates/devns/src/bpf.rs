//! The access layer as the kernel holds it: one hash map and one device
//! program per namespace, attached to its cgroup with `BPF_F_ALLOW_MULTI`
//! (a runtime's own program still runs: every program must allow). A
//! change of ownership is a map update made by the reconcile step, before
//! the change is acknowledged; the program is never reloaded.
//!
//! After a restart the map is found again without bpffs: the programs
//! attached to the cgroup (`BPF_PROG_QUERY`), devns's own by its id and
//! name, its map by the id the program reports.

use crate::cgroup::{self, CgroupError};
use devns_core::bpf::{self as core, Key, MapDelta};
use devns_core::state::CgroupRecord;
use devns_core::view::ViewPlan;
use devns_sys::bpf::{self as sys, BpfError};
use rustix::fd::OwnedFd;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most entries a namespace's map holds. Its entries are the devices of
/// its view plus 9 for ptys, and a view holds at most
/// [`crate::view::VIEW_INODES`] inodes, its directories and symlinks among
/// them. The elements are not preallocated (`BPF_F_NO_PREALLOC`), but the
/// kernel allocates and zeroes the hash's buckets at once, 16 bytes for
/// each entry of the bound: 256 KiB per namespace here (it was 1 MiB at
/// 65,536, a millisecond of every container's start; see PERFORMANCE.md).
pub const MAX_ENTRIES: u32 = 16_384;
/// The program's license string (no GPL-only helper is used).
const LICENSE: &str = "Apache-2.0";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot create the device map for {cgroup}: {source}")]
    Map { cgroup: PathBuf, source: BpfError },
    #[error("cannot load the device program for {cgroup}: {source}")]
    Load { cgroup: PathBuf, source: BpfError },
    #[error("cannot attach the device program to {cgroup}: {source}")]
    Attach { cgroup: PathBuf, source: BpfError },
    #[error("cannot detach devns's device program (id {prog}) from {cgroup}: {source}")]
    Detach { cgroup: PathBuf, prog: u32, source: BpfError },
    #[error("cannot read the device programs of {cgroup}: {source}")]
    Query { cgroup: PathBuf, source: BpfError },
    #[error("cgroup {cgroup} has no device program of devns's{}", .prog.map(|p| format!(" (id {p})")).unwrap_or_default())]
    NotFound { cgroup: PathBuf, prog: Option<u32> },
    #[error("the map (id {map}) of {cgroup}'s device program is not devns's: {why}")]
    Foreign { cgroup: PathBuf, map: u32, why: String },
    #[error("cannot {op} {key} in the device map (id {map}) of {cgroup}: {source}")]
    Update { cgroup: PathBuf, map: u32, op: &'static str, key: Key, source: BpfError },
    #[error("cannot read the device map (id {map}) of {cgroup}: {source}")]
    Read { cgroup: PathBuf, map: u32, source: BpfError },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// A namespace's device policy: its cgroup, program and map, and a shadow
/// of what the map holds (what devns wrote, or read back at a restart).
pub struct AccessPolicy {
    cgroup: PathBuf,
    created: bool,
    cgroup_fd: OwnedFd,
    prog: OwnedFd,
    prog_id: u32,
    map: DeviceMap,
    map_id: u32,
    attached: bool,
    shadow: BTreeMap<Key, u32>,
}

/// A device map: `(type, major, minor)` keys, access-mask values.
pub type DeviceMap = sys::Map<{ core::KEY_SIZE as usize }, { core::VALUE_SIZE as usize }>;

/// A new, empty device map.
pub fn new_map(cgroup: &Path) -> Result<DeviceMap, PolicyError> {
    DeviceMap::create_hash(MAX_ENTRIES, sys::BPF_F_NO_PREALLOC, core::MAP_NAME)
        .map_err(|source| PolicyError::Map { cgroup: cgroup.to_owned(), source })
}

/// Loads devns's device program over `map`.
pub fn load_program(cgroup: &Path, map: &DeviceMap) -> Result<OwnedFd, PolicyError> {
    let insns = core::to_bytes(&core::program(rustix::fd::AsRawFd::as_raw_fd(&rustix::fd::AsFd::as_fd(map))));
    sys::prog_load(sys::BPF_PROG_TYPE_CGROUP_DEVICE, &insns, LICENSE, core::PROG_NAME)
        .map_err(|source| PolicyError::Load { cgroup: cgroup.to_owned(), source })
}

/// Everything `map` holds.
pub fn read_map(map: &DeviceMap) -> Result<BTreeMap<Key, u32>, BpfError> {
    let mut out = BTreeMap::new();
    let mut prev = None;
    // Bounded: a map never holds more than its max_entries.
    for _ in 0..=MAX_ENTRIES {
        let Some(key) = map.next_key(prev.as_ref())? else { break };
        // A key deleted between the two calls is skipped.
        if let Some(v) = map.lookup(&key)? {
            out.insert(Key::from_bytes(key), u32::from_ne_bytes(v));
        }
        prev = Some(key);
    }
    Ok(out)
}

fn ids(prog: &OwnedFd, map: &DeviceMap) -> Result<(u32, u32), BpfError> {
    Ok((sys::prog_info(prog)?.id, map.info()?.id))
}

/// An empty map and the program over it, loaded ahead of the namespace
/// they will serve (the daemon keeps one spare between requests, so that
/// a container's start does not wait for the map's allocation and the
/// verifier). Attached to nothing: dropped, it is gone from the kernel.
pub struct Prepared {
    prog: OwnedFd,
    prog_id: u32,
    map: DeviceMap,
    map_id: u32,
}

impl Prepared {
    /// Its errors name `cgroup`, the one it is loaded for.
    pub fn new(cgroup: &Path) -> Result<Prepared, PolicyError> {
        let map = new_map(cgroup)?;
        let prog = load_program(cgroup, &map)?;
        let (prog_id, map_id) =
            ids(&prog, &map).map_err(|source| PolicyError::Query { cgroup: cgroup.to_owned(), source })?;
        Ok(Prepared { prog, prog_id, map, map_id })
    }
}

impl AccessPolicy {
    /// A new map and program for cgroup `cgroup` (made by devns when
    /// `created`), not attached yet: fill the map first.
    pub fn new(cgroup: &Path, created: bool) -> Result<AccessPolicy, PolicyError> {
        AccessPolicy::with(cgroup, created, Prepared::new(cgroup)?)
    }

    /// [`AccessPolicy::new`] with a map and program loaded before.
    pub fn with(cgroup: &Path, created: bool, prepared: Prepared) -> Result<AccessPolicy, PolicyError> {
        let cgroup_fd = cgroup::open(cgroup)?;
        let Prepared { prog, prog_id, map, map_id } = prepared;
        Ok(AccessPolicy {
            cgroup: cgroup.to_owned(),
            created,
            cgroup_fd,
            prog,
            prog_id,
            map,
            map_id,
            attached: false,
            shadow: BTreeMap::new(),
        })
    }

    /// Attaches the program to the cgroup (`BPF_F_ALLOW_MULTI`, so that
    /// programs already there, and those of the cgroup's ancestors, still
    /// decide too).
    pub fn attach(&mut self) -> Result<(), PolicyError> {
        sys::prog_attach(&self.prog, &self.cgroup_fd, sys::BPF_CGROUP_DEVICE, sys::BPF_F_ALLOW_MULTI)
            .map_err(|source| PolicyError::Attach { cgroup: self.cgroup.clone(), source })?;
        self.attached = true;
        Ok(())
    }

    /// devns's program on `rec`'s cgroup, found again (after a restart):
    /// the program whose id the record names (or, in a record written
    /// before it knew the id, the one named `devns`), and its map, whose
    /// contents become the shadow.
    pub fn recover(rec: &CgroupRecord) -> Result<AccessPolicy, PolicyError> {
        let cgroup = PathBuf::from(&rec.path);
        let cgroup_fd = cgroup::open(&cgroup)?;
        let query = |source| PolicyError::Query { cgroup: cgroup.clone(), source };
        let not_found = || PolicyError::NotFound { cgroup: cgroup.clone(), prog: rec.prog_id };
        let mut found = None;
        for id in sys::prog_query(&cgroup_fd, sys::BPF_CGROUP_DEVICE).map_err(query)? {
            if rec.prog_id.is_some_and(|p| p != id) {
                continue;
            }
            let Ok(fd) = sys::prog_fd_by_id(id) else { continue };
            let info = sys::prog_info(&fd).map_err(query)?;
            if info.name == core::PROG_NAME && info.prog_type == sys::BPF_PROG_TYPE_CGROUP_DEVICE {
                found = Some((fd, info));
                break;
            }
        }
        let (prog, info) = found.ok_or_else(not_found)?;
        let map_id = *info.map_ids.first().ok_or_else(not_found)?;
        let (map, m) = match DeviceMap::by_id(map_id) {
            Ok(found) => found,
            Err(e @ BpfError::Mismatch { .. }) => {
                return Err(PolicyError::Foreign { cgroup, map: map_id, why: e.to_string() });
            }
            Err(e) => return Err(query(e)),
        };
        if m.name != core::MAP_NAME {
            let why = format!("it is named {:?}", m.name);
            return Err(PolicyError::Foreign { cgroup, map: map_id, why });
        }
        let shadow =
            read_map(&map).map_err(|source| PolicyError::Read { cgroup: cgroup.clone(), map: map_id, source })?;
        Ok(AccessPolicy {
            cgroup,
            created: rec.created,
            cgroup_fd,
            prog,
            prog_id: info.id,
            map,
            map_id,
            attached: true,
            shadow,
        })
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The program's and the map's ids.
    pub fn ids(&self) -> (u32, u32) {
        (self.prog_id, self.map_id)
    }

    /// What the namespace's state record keeps of it.
    pub fn record(&self) -> CgroupRecord {
        CgroupRecord {
            path: self.cgroup.to_string_lossy().into_owned(),
            created: self.created,
            prog_id: Some(self.prog_id),
        }
    }

    /// What the map holds, as devns wrote it.
    pub fn entries(&self) -> &BTreeMap<Key, u32> {
        &self.shadow
    }

    /// The map as the kernel holds it now.
    pub fn read(&self) -> Result<BTreeMap<Key, u32>, PolicyError> {
        read_map(&self.map).map_err(|source| PolicyError::Read {
            cgroup: self.cgroup.clone(),
            map: self.map_id,
            source,
        })
    }

    /// Brings the map to what the view `plan` allows; the number of
    /// entries written or removed. Removals go first, so that a failure
    /// half-way never leaves more allowed than either state.
    pub fn reconcile(&mut self, plan: &ViewPlan) -> Result<usize, PolicyError> {
        self.apply_desired(&core::map_plan(plan))
    }

    /// Brings the map to `desired`.
    pub fn apply_desired(&mut self, desired: &BTreeMap<Key, u32>) -> Result<usize, PolicyError> {
        let delta = core::diff(&self.shadow, desired);
        self.apply(&delta)?;
        Ok(delta.len())
    }

    fn apply(&mut self, delta: &MapDelta) -> Result<(), PolicyError> {
        let err =
            |op, key, source| PolicyError::Update { cgroup: self.cgroup.clone(), map: self.map_id, op, key, source };
        for k in &delta.delete {
            self.map.delete(&k.to_bytes()).map_err(|e| err("remove", *k, e))?;
            self.shadow.remove(k);
        }
        for (k, v) in &delta.put {
            self.map.update(&k.to_bytes(), &v.to_ne_bytes()).map_err(|e| err("write", *k, e))?;
            self.shadow.insert(*k, *v);
        }
        Ok(())
    }

    /// Detaches every other device program from the cgroup (a runtime's
    /// own, made for this container alone), so that devns's, attached
    /// already, decides alone; their ids. One gone meanwhile is skipped.
    pub fn detach_others(&self) -> Result<Vec<u32>, PolicyError> {
        let query = |source| PolicyError::Query { cgroup: self.cgroup.clone(), source };
        let mut gone = Vec::new();
        for id in sys::prog_query(&self.cgroup_fd, sys::BPF_CGROUP_DEVICE).map_err(query)? {
            if id == self.prog_id {
                continue;
            }
            let detached =
                sys::prog_fd_by_id(id).and_then(|fd| sys::prog_detach(&fd, &self.cgroup_fd, sys::BPF_CGROUP_DEVICE));
            match detached {
                Ok(()) => gone.push(id),
                Err(e) if e.errno() == Some(rustix::io::Errno::NOENT) => {}
                Err(source) => return Err(PolicyError::Detach { cgroup: self.cgroup.clone(), prog: id, source }),
            }
        }
        Ok(gone)
    }

    /// Takes devns's program off its cgroup, which stays (the operator
    /// turned the layer off while the namespace lives).
    pub fn detach(self) -> Result<(), PolicyError> {
        sys::prog_detach(&self.prog, &self.cgroup_fd, sys::BPF_CGROUP_DEVICE).map_err(|source| PolicyError::Detach {
            cgroup: self.cgroup.clone(),
            prog: self.prog_id,
            source,
        })
    }

    /// Ends the policy of a namespace that is gone. The map is emptied
    /// first (so that a process still in the cgroup, or a cgroup that
    /// cannot be removed yet, is denied every device); then a cgroup devns
    /// made is removed (which frees program and map once devns's fds are
    /// closed), or, in a cgroup devns did not make, exactly its own program
    /// is detached. Returns the cgroup still to remove when a process is
    /// still inside after `patience`. Every step runs; errors are returned
    /// together.
    pub fn close(mut self, patience: Duration) -> (Option<PathBuf>, Vec<PolicyError>) {
        let mut errors = Vec::new();
        if let Err(e) = self.apply_desired(&BTreeMap::new()) {
            errors.push(e);
        }
        let mut busy = None;
        if self.created {
            match cgroup::remove(&self.cgroup, patience) {
                Ok(()) => {}
                Err(CgroupError::Busy { .. }) => busy = Some(self.cgroup.clone()),
                Err(e) => errors.push(e.into()),
            }
        } else if self.attached {
            match sys::prog_detach(&self.prog, &self.cgroup_fd, sys::BPF_CGROUP_DEVICE) {
                // Gone with its cgroup already.
                Ok(()) | Err(BpfError::Call { source: rustix::io::Errno::NOENT, .. }) => {}
                Err(source) => {
                    errors.push(PolicyError::Detach { cgroup: self.cgroup.clone(), prog: self.prog_id, source })
                }
            }
        }
        (busy, errors)
    }
}

/// Ends the policy of a namespace whose keeper died: what its record
/// names, found again (see [`AccessPolicy::recover`]) and closed. A cgroup
/// that is gone already needs nothing; one devns made is removed even if
/// its program cannot be found.
pub fn close_recorded(rec: &CgroupRecord, patience: Duration) -> (Option<PathBuf>, Vec<PolicyError>) {
    let path = Path::new(&rec.path);
    if !path.exists() {
        return (None, vec![]);
    }
    match AccessPolicy::recover(rec) {
        Ok(p) => p.close(patience),
        Err(e) if rec.created => match cgroup::remove(path, patience) {
            Ok(()) => (None, vec![]),
            Err(CgroupError::Busy { .. }) => (Some(path.to_owned()), vec![e]),
            Err(e2) => (None, vec![e, e2.into()]),
        },
        // Not ours to remove, and no program of ours there.
        Err(PolicyError::NotFound { .. }) => (None, vec![]),
        Err(e) => (None, vec![e]),
    }
}

/// Logs what [`AccessPolicy::close`] or [`close_recorded`] could not do.
pub fn log_close(ns: impl std::fmt::Display, (busy, errors): (Option<PathBuf>, Vec<PolicyError>)) -> Option<PathBuf> {
    for e in errors {
        tracing::error!(ns = %ns, error = %e, "device policy teardown");
    }
    busy
}
