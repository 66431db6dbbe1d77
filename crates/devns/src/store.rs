//! The state under the state directory (`/run/devns/state` by default, see
//! `crate::layout`): one file per namespace record (`ns/KEY.json`) and one
//! for run-time global flags
//! (`global.json`), each written atomically (temp file, fsync, rename, fsync
//! of the directory) so a crash at any moment leaves the old version or the
//! new. A save writes only what changed: with a thousand namespaces, an
//! assignment still writes one small file. Writers serialise on `lock`.

use devns_core::DevId;
use devns_core::state::{MAX_STATE_BYTES, NsRecord};
use rustix::fs::{FlockOperation, flock};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("corrupt state file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutError),
}

/// The file of dead namespaces' loop devices pending removal.
const LISTENERS: &str = "listeners";
const PENDING: &str = "pending-loops.json";

pub struct Store {
    dir: PathBuf,
}

/// Records by file key, as on disk.
pub type Records = BTreeMap<String, NsRecord>;

/// The file key of a record: a stand-alone run's by its keeper (its id comes
/// later), the daemon's by namespace id.
pub fn key_of(r: &NsRecord) -> String {
    match (r.keeper, r.id) {
        (Some(k), _) => format!("run-{}-{}", k.pid, k.start_time),
        (None, Some(id)) => format!("id-{}", id.0),
        (None, None) => "id-none".to_owned(),
    }
}

fn open_lock(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| StoreError::Lock { path: path.to_owned(), source })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let read_err = |source| StoreError::Read { path: path.to_owned(), source };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut buf = Vec::new();
    file.take(MAX_STATE_BYTES as u64 + 1).read_to_end(&mut buf).map_err(read_err)?;
    let corrupt = |reason: String| StoreError::Corrupt { path: path.to_owned(), reason };
    if buf.len() > MAX_STATE_BYTES {
        return Err(corrupt(format!("larger than {MAX_STATE_BYTES} bytes")));
    }
    serde_json::from_slice(&buf).map(Some).map_err(|e| corrupt(e.to_string()))
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    write_whole(path, &serde_json::to_vec(value).expect("state serialises"), true)
}

/// `bytes` at `path`, whole: written beside it, synced when `sync`, then
/// renamed onto it.
fn write_whole(path: &Path, bytes: &[u8], sync: bool) -> Result<(), StoreError> {
    let write_err = |p: &Path, source| StoreError::Write { path: p.to_owned(), source };
    let tmp = path.with_extension("json.tmp");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| write_err(&tmp, e))?;
    f.write_all(bytes).and_then(|()| if sync { f.sync_all() } else { Ok(()) }).map_err(|e| write_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| write_err(path, e))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| StoreError::Write { path: dir.to_owned(), source })
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        crate::layout::prepare(dir)?;
        for sub in ["ns", "runs"] {
            let path = dir.join(sub);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(|source| StoreError::CreateDir { path: path.clone(), source })?;
        }
        Ok(Store { dir: dir.to_owned() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon's records live in `ns/`, stand-alone runs' in `runs/`,
    /// so that the daemon's look for runs reads a (nearly) empty directory.
    fn dir_for(&self, key: &str) -> PathBuf {
        self.dir.join(if key.starts_with("run-") { "runs" } else { "ns" })
    }

    /// The writers' lock file, open but not locked: for a keeper that takes
    /// and lets go of the lock often ([`Store::flock`]).
    pub fn lock_handle(&self) -> Result<File, StoreError> {
        open_lock(&self.dir.join("lock"))
    }

    /// Takes (blocking) or lets go of the writers' lock on `handle`.
    pub fn flock(&self, handle: &File, take: bool) -> Result<(), StoreError> {
        let op = if take { FlockOperation::LockExclusive } else { FlockOperation::Unlock };
        flock(handle, op).map_err(|e| StoreError::Lock { path: self.dir.join("lock"), source: e.into() })
    }

    /// Takes `NAME` as a lock for as long as the file lives; `None` if
    /// another process holds it.
    pub fn try_hold(&self, name: &str) -> Result<Option<File>, StoreError> {
        let path = self.dir.join(name);
        let f = open_lock(&path)?;
        match flock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(f)),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(StoreError::Lock { path, source: e.into() }),
        }
    }

    /// The records of stand-alone runs only (`runs/`), or all.
    pub fn read_records(&self, runs_only: bool) -> Result<Records, StoreError> {
        let mut out = Records::new();
        let subs: &[&str] = if runs_only { &["runs"] } else { &["runs", "ns"] };
        for sub in subs {
            let dir = self.dir.join(sub);
            let entries = fs::read_dir(&dir).map_err(|source| StoreError::Read { path: dir.clone(), source })?;
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
                if let Some(r) = read_json::<NsRecord>(&e.path())? {
                    out.insert(key.to_owned(), r);
                }
            }
        }
        Ok(out)
    }

    pub fn read_global(&self) -> Result<BTreeMap<DevId, bool>, StoreError> {
        Ok(read_json(&self.dir.join("global.json"))?.unwrap_or_default())
    }

    /// Writes the records that differ between `before` and `after` (among
    /// the keys `mine` accepts) and removes those gone; one directory fsync.
    pub fn write_changes(
        &self,
        before: &Records,
        after: &Records,
        mine: impl Fn(&str) -> bool,
    ) -> Result<bool, StoreError> {
        let mut changed: Vec<PathBuf> = Vec::new();
        for (k, r) in after.iter().filter(|(k, _)| mine(k)) {
            if before.get(k) != Some(r) {
                write_json(&self.dir_for(k).join(format!("{k}.json")), r)?;
                changed.push(self.dir_for(k));
            }
        }
        for k in before.keys().filter(|k| mine(k) && !after.contains_key(*k)) {
            let path = self.dir_for(k).join(format!("{k}.json"));
            match fs::remove_file(&path) {
                Ok(()) => changed.push(self.dir_for(k)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Write { path, source }),
            }
        }
        changed.sort();
        changed.dedup();
        for dir in &changed {
            sync_dir(dir)?;
        }
        Ok(!changed.is_empty())
    }

    pub fn write_global(&self, g: &BTreeMap<DevId, bool>) -> Result<(), StoreError> {
        write_json(&self.dir.join("global.json"), g)?;
        sync_dir(&self.dir)
    }

    /// Dead namespaces' loop devices pending removal (`pending-loops.json`:
    /// see `crate::loopctl::pend`); read and written under the lock.
    pub fn read_pending(&self) -> Result<Vec<devns_core::loopctl::LoopDev>, StoreError> {
        Ok(read_json(&self.dir.join(PENDING))?.unwrap_or_default())
    }

    pub fn write_pending(&self, p: &[devns_core::loopctl::LoopDev]) -> Result<(), StoreError> {
        write_json(&self.dir.join(PENDING), &p)?;
        sync_dir(&self.dir)
    }

    fn note_path(&self, key: u64) -> PathBuf {
        self.dir.join(LISTENERS).join(format!("{key}.json"))
    }

    /// Notes what a restarted daemon must know of the listener kept as
    /// `key` (`listeners/KEY.json`). Written whole (a rename), not synced:
    /// it is for a daemon that dies, not a host that does, whose containers
    /// die with it.
    pub fn write_note(&self, key: u64, note: &devns_core::keep::ListenerNote) -> Result<(), StoreError> {
        let dir = self.dir.join(LISTENERS);
        let write_err = |p: &Path, source| StoreError::Write { path: p.to_owned(), source };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| write_err(&dir, e))?;
        write_whole(&self.note_path(key), &serde_json::to_vec(note).expect("a note serialises"), false)
    }

    /// The note of listener `key`: `None` if there is none, `Some(Err)`
    /// with the reason if it is not one devns wrote.
    pub fn read_note(&self, key: u64) -> Option<Result<devns_core::keep::ListenerNote, String>> {
        let f = File::open(self.note_path(key)).ok()?;
        let mut buf = Vec::new();
        if let Err(e) = f.take(devns_core::keep::MAX_NOTE_BYTES as u64 + 1).read_to_end(&mut buf) {
            return Some(Err(e.to_string()));
        }
        Some(devns_core::keep::parse_note(&buf))
    }

    pub fn remove_note(&self, key: u64) {
        let _ = fs::remove_file(self.note_path(key));
    }

    /// The keys of every note there.
    pub fn note_keys(&self) -> Vec<u64> {
        let Ok(entries) = fs::read_dir(self.dir.join(LISTENERS)) else { return vec![] };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).and_then(|k| k.parse().ok()))
            .collect()
    }
}
