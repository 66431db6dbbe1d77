//! The state file under the state directory (`/run/devns` by default):
//! read under an exclusive lock, written atomically (temp file, fsync,
//! rename, fsync of the directory), so a crash at any moment leaves either
//! the old state or the new one.

use devns_core::state::{MAX_STATE_BYTES, STATE_VERSION, State};
use rustix::fs::{FlockOperation, flock};
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
}

pub struct Store {
    dir: PathBuf,
}

/// The state, held under the lock until this value is dropped.
pub struct Locked {
    _lock: File,
    path: PathBuf,
    pub state: State,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::CreateDir { path: dir.to_owned(), source })?;
        Ok(Store { dir: dir.to_owned() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the lock and reads the state.
    pub fn lock(&self) -> Result<Locked, StoreError> {
        Ok(self.lock_with(FlockOperation::LockExclusive)?.expect("a blocking lock is always taken"))
    }

    /// Takes the lock if nobody holds it (`None` if somebody does).
    pub fn try_lock(&self) -> Result<Option<Locked>, StoreError> {
        self.lock_with(FlockOperation::NonBlockingLockExclusive)
    }

    fn lock_with(&self, op: FlockOperation) -> Result<Option<Locked>, StoreError> {
        let lock_path = self.dir.join("lock");
        let lock_err = |source| StoreError::Lock { path: lock_path.clone(), source };
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(lock_err)?;
        match flock(&lock, op) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
            Err(e) => return Err(lock_err(e.into())),
        }
        let path = self.dir.join("state.json");
        let state = read_state(&path)?;
        Ok(Some(Locked { _lock: lock, path, state }))
    }

    /// Runs `f` on the locked state and saves it if `f` succeeds.
    pub fn update<T, E: From<StoreError>>(&self, f: impl FnOnce(&mut State) -> Result<T, E>) -> Result<T, E> {
        let mut l = self.lock()?;
        let out = f(&mut l.state)?;
        l.save()?;
        Ok(out)
    }
}

fn read_state(path: &Path) -> Result<State, StoreError> {
    let read_err = |source| StoreError::Read { path: path.to_owned(), source };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(read_err(e)),
    };
    let mut buf = Vec::new();
    file.take(MAX_STATE_BYTES as u64 + 1).read_to_end(&mut buf).map_err(read_err)?;
    let corrupt = |reason: String| StoreError::Corrupt { path: path.to_owned(), reason };
    if buf.len() > MAX_STATE_BYTES {
        return Err(corrupt(format!("larger than {MAX_STATE_BYTES} bytes")));
    }
    let state: State = serde_json::from_slice(&buf).map_err(|e| corrupt(e.to_string()))?;
    if state.version != STATE_VERSION {
        return Err(corrupt(format!("version {} (this devns reads version {STATE_VERSION})", state.version)));
    }
    Ok(state)
}

impl Locked {
    pub fn save(&mut self) -> Result<(), StoreError> {
        let tmp = self.path.with_extension("json.tmp");
        let write_err = |p: &Path, source| StoreError::Write { path: p.to_owned(), source };
        let bytes = serde_json::to_vec_pretty(&self.state).expect("state serialises");
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| write_err(&tmp, e))?;
        f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(|e| write_err(&tmp, e))?;
        fs::rename(&tmp, &self.path).map_err(|e| write_err(&self.path, e))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| write_err(dir, e))
    }
}
