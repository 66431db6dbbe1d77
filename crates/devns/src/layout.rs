//! The default layout on disk ([`devns_core::layout`]): the run directory
//! `/run/devns` (0755: the sockets) and the state directory
//! `/run/devns/state` (0700: everything else), made on first use, and a
//! run directory of an older devns (0700, the state in it) moved into it.
//!
//! Only the default state directory is laid out so: one given with
//! `--state-dir` is used as it is, and so is a socket given with
//! `--socket`.

use devns_core::layout::{self, RUN_DIR, STATE_DIR, Step};
use rustix::fs::{FlockOperation, Mode};
use rustix::io::Errno;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: Errno },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "an older devns daemon still uses {RUN_DIR} (it holds {RUN_DIR}/daemon.lock): stop it, then start this one, \
         which moves its state into {STATE_DIR}"
    )]
    OlderDaemon,
    #[error("cannot move {from} to {to}: {source}")]
    Move { from: PathBuf, to: PathBuf, source: Errno },
    #[error("cannot change the mode of {path}: {source}")]
    Mode { path: PathBuf, source: Errno },
}

fn mkdir(path: &Path, mode: u32) -> Result<(), LayoutError> {
    match rustix::fs::mkdir(path, Mode::from_raw_mode(mode)) {
        // The umask may have taken bits off: the mode is set again.
        Ok(()) => rustix::fs::chmod(path, Mode::from_raw_mode(mode))
            .map_err(|source| LayoutError::Mode { path: path.to_owned(), source }),
        Err(Errno::EXIST) => Ok(()),
        Err(source) => Err(LayoutError::Create { path: path.to_owned(), source }),
    }
}

fn names(dir: &Path) -> Result<Vec<String>, LayoutError> {
    let read = |source| LayoutError::Read { path: dir.to_owned(), source };
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(read)? {
        out.push(e.map_err(read)?.file_name().to_string_lossy().into_owned());
    }
    Ok(out)
}

/// Whether some process holds the lock file `path` (a daemon of an older
/// devns holds its `daemon.lock` for its life).
fn held(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else { return false };
    matches!(rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive), Err(Errno::WOULDBLOCK))
}

/// Lays out the run and state directories when `state_dir` is the
/// default one, moving an older devns's state into it: its records first,
/// into the 0700 state directory, and only then the run directory opened
/// to 0755. Refused while an older daemon still runs there.
pub fn prepare(state_dir: &Path) -> Result<(), LayoutError> {
    if state_dir != Path::new(STATE_DIR) {
        return Ok(());
    }
    let (run, state) = (Path::new(RUN_DIR), Path::new(STATE_DIR));
    mkdir(run, layout::RUN_DIR_MODE)?;
    mkdir(state, layout::STATE_DIR_MODE)?;
    let present = names(run)?;
    let in_state = names(state)?;
    let mode = rustix::fs::stat(run).map_err(|source| LayoutError::Create { path: run.to_owned(), source })?.st_mode;
    let present: Vec<&str> = present.iter().map(String::as_str).collect();
    let in_state: Vec<&str> = in_state.iter().map(String::as_str).collect();
    let steps = layout::migration(mode, &present, &in_state);
    if steps.is_empty() {
        return Ok(());
    }
    if held(&run.join("daemon.lock")) {
        return Err(LayoutError::OlderDaemon);
    }
    tracing::info!(from = RUN_DIR, to = STATE_DIR, found = ?present, "moving an older devns's state");
    for step in steps {
        match step {
            Step::Move(name) => {
                let (from, to) = (run.join(name), state.join(name));
                match rustix::fs::rename(&from, &to) {
                    // Moved meanwhile by another devns process.
                    Ok(()) | Err(Errno::NOENT) => {}
                    // A mount point (an older daemon's views, devns's own
                    // cgroup2 mount): it stays, and is found where it is.
                    Err(Errno::BUSY) => tracing::info!(path = %from.display(), "a mount point: left where it is"),
                    Err(source) => return Err(LayoutError::Move { from, to, source }),
                }
            }
            Step::RemoveLock(name) => {
                let _ = std::fs::remove_file(run.join(name));
            }
            Step::OpenRunDir => rustix::fs::chmod(run, Mode::from_raw_mode(layout::RUN_DIR_MODE))
                .map_err(|source| LayoutError::Mode { path: run.to_owned(), source })?,
        }
    }
    Ok(())
}

/// The views an older daemon mounted in `RUN_DIR/views` (which stayed
/// there: a mount point cannot be renamed), bound into this daemon's
/// `views` directory so that it finds them as its own, and the old mount
/// detached. For the default state directory only.
pub fn adopt_old_views(state_dir: &Path, views: &Path) {
    let old = Path::new(RUN_DIR).join("views");
    if state_dir != Path::new(STATE_DIR) || !old.is_dir() {
        return;
    }
    let Ok(outer) = rustix::fs::stat(&old) else { return };
    for e in std::fs::read_dir(&old).into_iter().flatten().flatten() {
        let (from, to) = (e.path(), views.join(e.file_name()));
        let mounted = rustix::fs::stat(&from).is_ok_and(|s| s.st_dev != outer.st_dev);
        if mounted && !to.exists() {
            let bound = std::fs::create_dir(&to)
                .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))
                .and_then(|()| rustix::mount::mount_bind(&from, &to));
            if let Err(error) = bound {
                tracing::warn!(path = %from.display(), %error, "cannot take over an older daemon's view");
                continue;
            }
        }
    }
    let _ = rustix::mount::unmount(&old, rustix::mount::UnmountFlags::DETACH);
    for e in std::fs::read_dir(&old).into_iter().flatten().flatten() {
        let _ = std::fs::remove_dir(e.path());
    }
    let _ = std::fs::remove_dir(&old);
}
