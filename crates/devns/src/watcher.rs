//! The watcher of a stand-alone `devns run`: a process the keeper forks
//! once its container exists, which outlives the keeper. A keeper that
//! ends its run undoes the namespace itself, then kills the watcher. One
//! that dies without ending it (SIGKILL, the OOM killer) takes its
//! container with it (init's parent-death signal), but not what the
//! namespace held on the host: then the watcher waits for the container to
//! be gone and frees what is left through the engine's own cleanup of dead
//! records, as the next devns command would ([`Engine::recover`]), and
//! exits. If the watcher is killed too, the next devns command still does.
//!
//! It holds the keeper's and the container's pidfds, and the keeper's
//! journal of the loop device it made and has not recorded yet (whose
//! device it removes too), and nothing else of the keeper's: no lock, view, listener, channel or terminal (stderr
//! stays, for its log), so it keeps no kernel object alive. It runs in a
//! session of its own, named `devns-watcher`, with the keeper's signals
//! still blocked: a terminal's hangup or a stray SIGTERM cannot cost the
//! cleanup.

use crate::engine::{Engine, Role};
use crate::journal::Journal;
use crate::store::Store;
use anyhow::{Context, Result};
use devns_core::config::Config;
use devns_sys::process::{self as sysproc, Forked};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::process::{PidfdFlags, Signal};
use std::path::Path;
use std::time::{Duration, Instant};

/// The name the watcher goes by (`comm`), for `ps` and for tests.
pub const NAME: &str = "devns-watcher";

/// How long the watcher waits for the container's init once the keeper is
/// gone (its parent-death signal ends it at once); past that the cleanup
/// kills what is left, as for any dead run.
const INIT_PATIENCE: Duration = Duration::from_secs(2);

/// The keeper's handle on its watcher: killed and reaped when dropped,
/// which the keeper does once it has ended the run itself.
pub struct Watcher {
    pidfd: OwnedFd,
}

impl Watcher {
    /// Forks the watcher of the run whose container is behind `container`.
    ///
    /// # Safety
    /// As for `fork(2)`: this process must be single-threaded (the watcher
    /// runs ordinary Rust, the engine's cleanup, without an exec).
    pub unsafe fn start(
        container: BorrowedFd<'_>,
        made: Option<&Journal>,
        state_dir: &Path,
        cfg: &Config,
    ) -> Result<Watcher> {
        let keeper = rustix::process::pidfd_open(rustix::process::getpid(), PidfdFlags::empty())
            .context("cannot open a pidfd of this process")?;
        let container = container.try_clone_to_owned().context("cannot hold the container's pidfd")?;
        let made = made.and_then(Journal::another);
        // SAFETY: the caller guarantees a single thread; the child never
        // returns into this process's frames (it exits below).
        match unsafe { sysproc::fork_into(0) }.context("cannot fork the run's watcher")? {
            Forked::Child => {
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    watch(keeper, container, made, state_dir, cfg)
                }));
                std::process::exit(code.unwrap_or(125));
            }
            Forked::Parent { pidfd, .. } => Ok(Watcher { pidfd }),
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL);
        let _ = sysproc::wait_pidfd(&self.pidfd);
    }
}

/// The watcher's whole life; returns its exit status.
fn watch(keeper: OwnedFd, container: OwnedFd, made: Option<Journal>, state_dir: &Path, cfg: &Config) -> i32 {
    let mut keep = vec![keeper.as_fd(), container.as_fd()];
    keep.extend(made.as_ref().map(Journal::fd));
    if let Err(e) = let_go_of_the_keeper(&keep) {
        tracing::warn!(error = %format!("{e:#}"), "the run's watcher cannot set itself up: a killed run is cleaned by the next devns command");
        return 125;
    }
    // Readable once the keeper has exited, however.
    let mut fds = [PollFd::new(&keeper, PollFlags::IN)];
    if let Err(e) = rustix::io::retry_on_intr(|| poll(&mut fds, None)) {
        tracing::warn!(error = %e, "the run's watcher cannot watch its keeper");
        return 125;
    }
    drop(keeper);
    // The keeper did not end the run: its container dies with it.
    crate::host::wait_exited(&[container], Instant::now() + INIT_PATIENCE);
    // A state directory removed meanwhile holds nothing of this run to
    // free; opening it would make it again.
    if !state_dir.is_dir() {
        tracing::info!(dir = %state_dir.display(), "the run's state directory is gone: nothing to free");
        return 0;
    }
    let swept = Store::open(state_dir)
        .map_err(anyhow::Error::from)
        .and_then(|store| Engine::open(Role::Look, cfg.clone(), store, None))
        .and_then(|mut engine| {
            engine.recover()?;
            // A loop device the keeper made and was killed before recording.
            if let Some(index) = made.as_ref().and_then(Journal::unrecorded_loop) {
                engine.drop_unrecorded_loop(index);
            }
            Ok(())
        });
    match swept {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the run's keeper died, and its watcher cannot free what it held: the next devns command will");
            1
        }
    }
}

/// Leaves the keeper's session and closes every fd but `keep` and stderr
/// (stdin and stdout become `/dev/null`, so no fd number is left free for
/// a stray write to land in a file).
fn let_go_of_the_keeper(keep: &[BorrowedFd<'_>]) -> Result<()> {
    rustix::process::setsid().context("setsid")?;
    let name = std::ffi::CString::new(NAME).expect("no NUL");
    rustix::thread::set_name(&name).context("PR_SET_NAME")?;
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .context("cannot open /dev/null")?;
    rustix::stdio::dup2_stdin(&null).context("cannot close stdin")?;
    rustix::stdio::dup2_stdout(&null).context("cannot close stdout")?;
    drop(null);
    // SAFETY: this is the freshly forked watcher, which never returns into
    // the keeper's frames (`Watcher::start` exits): their owners of these
    // fds are never used or dropped; it goes on using only `keep`.
    unsafe { devns_sys::fds::close_all_but(keep) }.context("cannot close the keeper's fds")?;
    Ok(())
}
