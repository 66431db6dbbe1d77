//! The terminal `devns run` was started from never reaches the container.
//!
//! A container holding a file of that terminal could push input into it
//! with `TIOCSTI` (where `dev.tty.legacy_tiocsti` allows it), which the
//! host's shell runs as root once `devns run` returns, or read what is
//! typed on it. So the child starts a session of its own and closes every
//! inherited terminal above stdio; each of stdin, stdout and stderr that is
//! a terminal it replaces by one pty of its own, made the session's
//! controlling terminal. The keeper relays between the pty's master and
//! the real terminal (raw meanwhile, its modes given back however the run
//! ends) and passes resizes on. Pipes and files pass through untouched,
//! unless `devns run --tty` asks for a pty whatever stdio is (as `podman
//! run -t`): then all three are the pty, relayed to stdin and stdout.
//!
//! The pty is the container's devpts instance's, not one of the host's
//! `/dev/ptmx`: `tty` inside names a `/dev/pts/N` that exists there, and no
//! host pty, nor its number, reaches the container.

use super::FORWARDED_SIGNALS;
use anyhow::{Context, Result};
use devns_sys::signal::SignalFd;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::termios::{OptionalActions, OutputModes, Termios, Winsize};
use std::time::Duration;

/// Most typed input held for a container that does not read it.
const MAX_PENDING: usize = 64 << 10;
/// How long the end of a run waits for the container's last output (its
/// pty's other end held by some process outside it).
const DRAIN_PATIENCE: Duration = Duration::from_secs(2);

/// What `devns run`'s stdin, stdout and stderr are, seen before the fork
/// (the child inherits the same fds).
#[derive(Clone)]
pub struct Outer {
    /// Which of fds 0, 1 and 2 are terminals.
    tty: [bool; 3],
    /// A pty for all three, terminals or not (`--tty`).
    forced: bool,
    /// stdin's modes when it is a terminal: the pty starts with them, and
    /// the terminal gets them back after the relay.
    modes: Option<Termios>,
    size: Option<Winsize>,
}

fn stdio() -> [BorrowedFd<'static>; 3] {
    [rustix::stdio::stdin(), rustix::stdio::stdout(), rustix::stdio::stderr()]
}

impl Outer {
    fn probe(forced: bool) -> Outer {
        let tty = stdio().map(rustix::termios::isatty);
        let modes = tty[0].then(|| rustix::termios::tcgetattr(rustix::stdio::stdin()).ok()).flatten();
        let mut o = Outer { tty, forced, modes, size: None };
        o.size = o.first_tty().and_then(|t| rustix::termios::tcgetwinsize(t).ok());
        if o.size.is_none() && forced {
            // No terminal to take it from: a VT's, as runtimes give.
            o.size = Some(Winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 });
        }
        o
    }

    /// Whether the container gets a pty.
    fn any(&self) -> bool {
        self.forced || self.tty.contains(&true)
    }

    /// Whether stdio fd `i` becomes the pty.
    fn replaced(&self, i: usize) -> bool {
        self.forced || self.tty[i]
    }

    /// Whether what is read on stdin is typed into the pty.
    fn typed(&self) -> bool {
        self.replaced(0)
    }

    fn first_tty(&self) -> Option<BorrowedFd<'static>> {
        (0..3).find(|&i| self.tty[i]).map(|i| stdio()[i])
    }

    /// Where the pty's output goes: stdout or stderr when one is a
    /// terminal, else stdin's terminal (the echo of what is typed), else
    /// (`--tty` without one) stdout.
    fn screen(&self) -> BorrowedFd<'static> {
        match [1, 2, 0].into_iter().find(|&i| self.tty[i]) {
            Some(i) => stdio()[i],
            None => rustix::stdio::stdout(),
        }
    }
}

/// The terminal side of a run, made before the fork.
pub struct Terminal {
    outer: Outer,
    /// Resizes, which a pty follows; watched from before the fork, so that
    /// none is lost.
    resizes: Option<SignalFd>,
}

impl Terminal {
    /// `forced`: a pty even when no stdio fd is a terminal (`--tty`).
    pub fn probe(forced: bool) -> Result<Terminal> {
        let outer = Outer::probe(forced);
        let resizes = outer
            .first_tty()
            .is_some()
            .then(|| SignalFd::new(&[libc::SIGWINCH]))
            .transpose()
            .context("cannot watch the terminal's size")?;
        Ok(Terminal { outer, resizes })
    }

    /// The signals the keeper relays to the command itself: all of
    /// [`FORWARDED_SIGNALS`] but a resize, when the pty takes it.
    pub fn relayed_signals(&self) -> Vec<i32> {
        FORWARDED_SIGNALS.iter().copied().filter(|&s| self.resizes.is_none() || s != libc::SIGWINCH).collect()
    }

    /// In the forked child: what it needs to know (the signals stay blocked
    /// until its init reads them).
    pub fn into_child(self) -> Outer {
        if let Some(r) = self.resizes {
            r.close_keeping_mask();
        }
        self.outer
    }

    /// Runs `f` (the container's life) while relaying between the real
    /// terminal and `pty`, the container's master; the terminal is raw
    /// meanwhile, and gets its modes back however `f` ends.
    pub fn relay(self, pty: Option<OwnedFd>, f: impl FnOnce() -> Result<i32>) -> Result<i32> {
        let Some(pty) = pty else { return f() };
        let (stop_rx, stop_tx) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).context("cannot relay the terminal")?;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let _modes = RawMode::set(&self.outer);
        let (outer, resizes) = (self.outer, self.resizes);
        let (left_tx, left_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("terminal".into())
            .spawn(move || {
                // Out of the keeper's `fs_struct` before `f` runs: the
                // agent enters containers' mount namespaces, which the
                // kernel refuses to a thread that shares it, and sets the
                // umask for their nodes.
                let _ = left_tx.send(devns_sys::procstate::leave_shared_fs());
                pump(&outer, &pty, resizes.as_ref(), &stop_rx);
                let _ = done_tx.send(());
            })
            .context("cannot relay the terminal")?;
        match left_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the terminal relay shares the keeper's umask and root"),
            Err(_) => {}
        }
        let status = f();
        drop(stop_tx);
        let _ = done_rx.recv_timeout(DRAIN_PATIENCE);
        status
    }
}

/// stdin's terminal raw while it lives, its modes given back on drop.
struct RawMode(Option<Termios>);

impl RawMode {
    fn set(outer: &Outer) -> RawMode {
        let Some(saved) = outer.modes.clone() else { return RawMode(None) };
        let mut raw = saved.clone();
        raw.make_raw();
        match rustix::termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &raw) {
            Ok(()) => RawMode(Some(saved)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot make the terminal raw: it keeps its modes");
                RawMode(None)
            }
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(m) = self.0.take()
            && let Err(e) = rustix::termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &m)
        {
            tracing::warn!(error = %e, "cannot give the terminal its modes back");
        }
    }
}

/// The relay's loop: typed input to the pty, its output to the screen,
/// resizes to the pty, until the container's side closes or `stop`.
fn pump(outer: &Outer, pty: &OwnedFd, resizes: Option<&SignalFd>, stop: &OwnedFd) {
    // The master's description is this process's alone (never set on the
    // inherited terminal, whose description the user's shell shares).
    if let Err(e) = rustix::fs::fcntl_setfl(pty, OFlags::NONBLOCK) {
        tracing::warn!(error = %e, "cannot relay the terminal");
        return;
    }
    let screen = outer.screen();
    let stdin = rustix::stdio::stdin();
    let mut input = outer.typed();
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let mut want = PollFlags::IN;
        if !pending.is_empty() {
            want |= PollFlags::OUT;
        }
        let mut fds = vec![PollFd::new(stop, PollFlags::IN), PollFd::new(pty, want)];
        if let Some(r) = resizes {
            fds.push(PollFd::new(r, PollFlags::IN));
        }
        let typing = input && pending.len() < MAX_PENDING;
        if typing {
            fds.push(PollFd::new(&stdin, PollFlags::IN));
        }
        match poll(&mut fds, None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => {
                tracing::warn!(error = %e, "terminal relay: poll");
                return;
            }
        }
        let ready: Vec<PollFlags> = fds.iter().map(|f| f.revents()).collect();
        drop(fds);
        let closed = PollFlags::IN | PollFlags::HUP | PollFlags::ERR;
        // A resize first: input typed after it is read after it.
        if let Some(r) = resizes
            && ready[2].contains(PollFlags::IN)
        {
            while let Ok(Some(_)) = r.read() {}
            if let Some(ws) = outer.first_tty().and_then(|t| rustix::termios::tcgetwinsize(t).ok()) {
                let _ = rustix::termios::tcsetwinsize(pty, ws);
            }
        }
        if ready[1].intersects(closed) && !copy_out(pty, screen, &mut buf) {
            return;
        }
        if ready[1].contains(PollFlags::OUT) {
            match rustix::io::write(pty, &pending) {
                Ok(n) => drop(pending.drain(..n)),
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(_) => pending.clear(),
            }
        }
        if typing && ready[ready.len() - 1].intersects(closed) {
            match rustix::io::read(stdin, &mut buf) {
                Ok(0) => {
                    input = false;
                    // The end of a piped stdin (`--tty`) is the
                    // terminal's end-of-file character to the container.
                    if !outer.tty[0] {
                        pending.push(end_of_file(pty));
                    }
                }
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(_) => input = false,
            }
        }
        if ready[0].intersects(closed) {
            // The container is gone: what it wrote last, then the end.
            copy_out(pty, screen, &mut buf);
            return;
        }
    }
}

/// The pty's end-of-file character (`^D` unless the container changed it).
fn end_of_file(pty: &OwnedFd) -> u8 {
    rustix::termios::tcgetattr(pty).map_or(4, |t| t.special_codes[rustix::termios::SpecialCodeIndex::VEOF])
}

/// Copies what the pty holds to the screen; false once its other side is
/// closed (every process of the container that had it is gone).
fn copy_out(pty: &OwnedFd, screen: BorrowedFd<'_>, buf: &mut [u8]) -> bool {
    loop {
        match rustix::io::read(pty, &mut *buf) {
            Ok(0) => return false,
            Ok(n) => write_all(screen, &buf[..n]),
            Err(Errno::AGAIN) => return true,
            Err(Errno::INTR) => {}
            // EIO: no slave left.
            Err(_) => return false,
        }
    }
}

/// Writes all of `bytes`; a screen that is gone drops them.
fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

// ---- the child's side ---------------------------------------------------------

/// Puts one pty of devpts instance `pts` in place of each stdio fd that
/// is a terminal, with the outer terminal's modes and size, and makes it
/// the controlling terminal; returns its master, for the keeper's relay.
pub(super) fn take_pty(pts: impl AsFd, outer: &Outer) -> Result<Option<OwnedFd>> {
    if !outer.any() {
        return Ok(None);
    }
    let ctx = "cannot make the container's terminal";
    let master =
        rustix::fs::openat(pts, "ptmx", OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC, Mode::empty()).context(ctx)?;
    rustix::pty::unlockpt(&master).context(ctx)?;
    use rustix::pty::OpenptFlags;
    let slave = rustix::pty::ioctl_tiocgptpeer(&master, OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .context(ctx)?;
    match &outer.modes {
        Some(m) => rustix::termios::tcsetattr(&slave, OptionalActions::Now, m).context(ctx)?,
        // Output alone is relayed, to a terminal that is not raw and does
        // its own output processing.
        None if outer.first_tty().is_some() => {
            let mut m = rustix::termios::tcgetattr(&slave).context(ctx)?;
            m.output_modes.remove(OutputModes::OPOST);
            rustix::termios::tcsetattr(&slave, OptionalActions::Now, &m).context(ctx)?;
        }
        // No terminal outside (`--tty`): the pty's own modes, a
        // terminal's as a program expects them.
        None => {}
    }
    if let Some(ws) = outer.size {
        rustix::termios::tcsetwinsize(&slave, ws).context(ctx)?;
    }
    let dup2 = [rustix::stdio::dup2_stdin::<&OwnedFd>, rustix::stdio::dup2_stdout, rustix::stdio::dup2_stderr];
    for (i, dup2) in dup2.into_iter().enumerate() {
        if outer.replaced(i) {
            dup2(&slave).context(ctx)?;
        }
    }
    rustix::process::ioctl_tiocsctty(&slave).context(ctx)?;
    Ok(Some(master))
}
