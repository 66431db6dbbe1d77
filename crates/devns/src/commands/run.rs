//! `devns run`: a command in new user, mount, pid, uts and ipc namespaces,
//! with its own `/dev` view (with a devpts, `/dev/shm` and `/dev/mqueue` of
//! its own on it), a fresh `/proc` and a private `/tmp`.
//!
//! This process stays on the host as the namespace's keeper: without a
//! daemon it serves the namespace itself through the one engine
//! (`crate::engine`, the daemon's, serving one namespace in-process, no
//! socket); with one, the daemon does. Here: the command line, the spawn,
//! and the supervision (signals forwarded, the command's exit status
//! returned). Everything made is undone on every path out: the child by
//! `ChildGuard`, the namespace by the engine's end of a run, and when this
//! process is killed before that, by its watcher (`crate::watcher`).

use super::Global;
use crate::client::Client;
use crate::container::tty::Terminal;
use crate::container::{self, ChildPlan};
use crate::engine::{Engine, Role};
use crate::store::Store;
use crate::watcher::Watcher;
use crate::{config, host};
use anyhow::{Context, Result, anyhow};
use devns_core::devmounts::ShmSize;
use devns_sys::process::{self as sysproc, Forked};
use devns_sys::signal::SignalFd;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::process::{Pid, Signal};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A device the namespace owns while the command runs: a /dev path,
    /// MAJ:MIN (the block device when a char device has the same numbers),
    /// c:MAJ:MIN, b:MAJ:MIN, or a name such as loop3. Repeatable. A whole
    /// disk brings its partitions.
    #[arg(long = "dev", value_name = "DEVICE")]
    pub devs: Vec<String>,
    /// A name for the namespace (also its hostname); unique among running ones.
    #[arg(long, value_parser = parse_name)]
    pub name: Option<String>,
    /// Use DIR as the root filesystem instead of the host's.
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Network: `none` (the default: a network namespace of its own with
    /// only loopback) or `host` (share the host's).
    #[arg(long, value_name = "MODE", default_value = "none", value_parser = ["none", "host"])]
    pub net: String,
    /// The size limit of the container's /dev/shm (a tmpfs of its own):
    /// bytes, or with a unit k, m or g (1024-based), as `podman run
    /// --shm-size` takes it.
    #[arg(long, value_name = "SIZE", default_value = "64m")]
    pub shm_size: ShmSize,
    /// Give the command a terminal (a pty of the container's own devpts as
    /// its stdin, stdout and stderr) even when devns's own are pipes or
    /// files, as `podman run -t` does. Without it, the command gets one
    /// exactly when devns runs on a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !s.starts_with(['-', '.']);
    if ok { Ok(s.to_owned()) } else { Err("a name is 1-64 of [A-Za-z0-9_.-], not starting with - or .".into()) }
}

/// Kills and reaps the child unless it was reaped already.
struct ChildGuard {
    pidfd: Option<OwnedFd>,
}

impl ChildGuard {
    fn wait(&mut self) -> std::io::Result<i32> {
        let pidfd = self.pidfd.take().expect("waited once");
        Ok(sysproc::wait_pidfd(&pidfd)?)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(pidfd) = self.pidfd.take() {
            let _ = rustix::process::pidfd_send_signal(&pidfd, Signal::KILL);
            let _ = sysproc::wait_pidfd(&pidfd);
        }
    }
}

/// Explains a failed clone3: the errors by which the kernel refuses new
/// namespaces (policy, limits, a chroot) say so; the rest are what they are.
fn clone_failed(e: rustix::io::Errno) -> anyhow::Error {
    use rustix::io::Errno;
    if ![Errno::PERM, Errno::INVAL, Errno::NOSPC, Errno::USERS].contains(&e) {
        return anyhow!("cannot create the container's first process: {e}");
    }
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    let hint = if max.trim() == "0" { " (user.max_user_namespaces is 0)" } else { "" };
    anyhow!("user namespaces are unavailable: cannot create one: {e}{hint}")
}

pub fn run(global: &Global, args: Args) -> Result<i32> {
    host::require_host_root("devns run")?;
    if let Some(daemon) = Client::connect_if_running(&global.socket)? {
        // The daemon's policy is the daemon's; udev_events also decides
        // what the container makes for libudev (a bad file: the daemon's
        // refusal is the one that tells).
        let udev = config::load(&global.config).is_ok_and(|c| c.udev_events);
        return run_with_daemon(daemon, &args, udev);
    }
    let cfg = config::load(&global.config)?;
    let store = Store::open(&global.state_dir)?;
    // Whatever happens from here, also a panic, the namespace this run
    // provisions is ended once its child is reaped (`serve_alone` reaps it).
    let engine = Engine::open(Role::Run(host::current_keeper()?), cfg.clone(), store, None)?;
    let mut run = EndsRun { engine, watcher: None };
    let engine = &mut run.engine;
    // What died meanwhile is freed before anything is decided.
    engine.recover()?;
    // Named devices must exist before anything is started.
    for d in &args.devs {
        engine.resolve(d)?;
    }
    let rootfs = args.rootfs.as_deref().map(container::prepare_rootfs).transpose()?;
    // Its disks' partitions and the host's devices come and go (a loop
    // device attached with -P, detached): its view follows them.
    let uevents = crate::uevents::socket()
        .map_err(|e| tracing::warn!(error = %e, "no uevents: partitions appear only through partx"))
        .ok();
    // The loop device made and not recorded yet, where the watcher reads it
    // if this process is killed in between (a daemon's is its journal).
    let made = crate::journal::Journal::create()
        .map_err(|e| tracing::warn!(error = %e, "no journal of loop devices made: one made as this run is killed may be left"))
        .ok();
    if let Some(j) = made.as_ref().and_then(crate::journal::Journal::another) {
        // For the tests (not documented): stop here at `loop-made`.
        let stop = std::env::var("DEVNS_TEST_STOP_IN_CALL").ok().and_then(|v| crate::journal::Stop::parse(&v));
        engine.note_made_loops(j, stop);
    }
    let watcher = &mut run.watcher;
    let watch = |container: BorrowedFd<'_>| {
        // SAFETY: still single-threaded: as at the container's spawn, just
        // before (the terminal's relay starts its threads later).
        *watcher = unsafe { Watcher::start(container, made.as_ref(), &global.state_dir, &cfg) }
            .map_err(|e| tracing::warn!(error = %format!("{e:#}"), "no watcher: if this process is killed, the next devns command cleans up"))
            .ok();
    };
    serve_alone(engine, watch, &args, rootfs.as_ref(), uevents.as_ref())
}

/// A stand-alone run's engine, which ends the run's namespace when
/// dropped, and then its watcher.
struct EndsRun {
    engine: Engine,
    watcher: Option<Watcher>,
}

impl Drop for EndsRun {
    fn drop(&mut self) {
        self.engine.end_run();
        drop(self.watcher.take());
    }
}

/// Spawns the container, has `watch` fork its watcher, has the engine
/// provision its namespace, starts it, and answers its trapped calls until
/// it ends.
fn serve_alone(
    engine: &mut Engine,
    watch: impl FnOnce(BorrowedFd<'_>),
    args: &Args,
    rootfs: Option<&container::RootFs>,
    uevents: Option<&OwnedFd>,
) -> Result<i32> {
    let (signals, mine, pid, mut child, terminal) = spawn(args, rootfs, engine.config().udev_events)?;
    // Before anything is recorded: from its claim on, the namespace has
    // someone to free it if this process is killed.
    watch(child.pidfd.as_ref().expect("not waited").as_fd());
    let pidfd = child.pidfd.as_ref().expect("not waited").try_clone().context("cannot hold the container's pidfd")?;
    let (_, fds) = engine.provision(pidfd, args.name.as_deref(), &args.devs)?;
    let fds: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    let (listener, pty) = container::start(&mine, &fds)?;
    drop(mine);
    let listener = crate::agent::Listener::new(listener).context("cannot serve the container's seccomp listener")?;
    tracing::info!(pid = pid.as_raw_nonzero().get(), "started");
    terminal.relay(pty, || supervise(&mut child, &signals, Some((listener, engine)), uevents))
}

/// `devns run` with a daemon: the daemon gives the namespace its ids,
/// devices and view, and watches it; this process only starts and waits.
fn run_with_daemon(mut daemon: Client, args: &Args, udev: bool) -> Result<i32> {
    let rootfs = args.rootfs.as_deref().map(container::prepare_rootfs).transpose()?;
    let (signals, mine, pid, mut child, terminal) = spawn(args, rootfs.as_ref(), udev)?;
    let pidfd = child.pidfd.as_ref().expect("not waited").as_fd();
    let req = serde_json::json!({ "op": "run", "name": args.name, "devices": args.devs });
    let reply = daemon.call(req, &[pidfd])?;
    // The view and the /tmp the daemon made: the filesystems where it
    // makes the container's nodes.
    let mut fds = daemon.take_fds().into_iter();
    let view = fds.next().context("the daemon sent no view")?;
    let tmp = fds.next().context("the daemon sent no /tmp")?;
    let (listener, pty) = container::start(&mine, &[view.as_fd(), tmp.as_fd()])?;
    drop((mine, tmp, view));
    // The daemon answers the container's trapped calls. If it cannot (it
    // died meanwhile), the container ends before the listener closes: a
    // call it trapped would otherwise come back ENOSYS to a live process.
    if let Err(e) = daemon.call(serde_json::json!({ "op": "listen" }), &[listener.as_fd()]) {
        drop(child);
        return Err(e);
    }
    drop((daemon, listener));
    tracing::info!(ns = reply["id"].as_u64(), pid = pid.as_raw_nonzero().get(), "started through the daemon");
    terminal.relay(pty, || supervise(&mut child, &signals, None, None))
}

/// Forks the container's first process into its new namespaces. In the
/// child this never returns; the parent gets the signals to relay, its end
/// of the channel, the child, and the terminal to relay.
fn spawn(
    args: &Args,
    rootfs: Option<&container::RootFs>,
    udev: bool,
) -> Result<(SignalFd, OwnedFd, Pid, ChildGuard, Terminal)> {
    let terminal = Terminal::probe(args.tty)?;
    // Blocked before the fork, so no signal is lost or kills devns before
    // the child exists; the child inherits the mask and reads its own.
    let signals = SignalFd::new(&terminal.relayed_signals()).context("cannot set up signal forwarding")?;
    let (mine, theirs) = container::channel()?;
    // The IPC namespace the child makes itself, once it is container root
    // (in `container::setup`), so that its root owns `/dev/mqueue`.
    let flags = sysproc::CLONE_NEWUSER
        | sysproc::CLONE_NEWNS
        | sysproc::CLONE_NEWPID
        | sysproc::CLONE_NEWUTS
        | if args.net == "host" { 0 } else { sysproc::CLONE_NEWNET };
    // SAFETY: devns is single-threaded here (no thread was spawned), so the
    // child may run ordinary Rust until it execs or exits.
    match unsafe { sysproc::fork_into(flags) }.map_err(clone_failed)? {
        Forked::Child => {
            drop(mine);
            signals.close_keeping_mask();
            let outer = terminal.into_child();
            let plan = ChildPlan {
                sock: theirs,
                rootfs,
                hostname: args.name.as_deref(),
                cmd: &args.cmd,
                own_net: args.net != "host",
                outer: &outer,
                shm: args.shm_size,
                udev,
            };
            // Never return into the parent's frames: their guards are the
            // parent's to run.
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| container::child_main(plan)));
            std::process::exit(code.unwrap_or(125));
        }
        Forked::Parent { pid, pidfd } => Ok((signals, mine, pid, ChildGuard { pidfd: Some(pidfd) }, terminal)),
    }
}

/// Forwards signals to the child until it ends, answering its trapped calls
/// meanwhile when this process is its agent; the child's status is ours.
fn supervise(
    child: &mut ChildGuard,
    signals: &SignalFd,
    mut agent: Option<(crate::agent::Listener, &mut Engine)>,
    uevents: Option<&OwnedFd>,
) -> Result<i32> {
    let pidfd = child.pidfd.as_ref().expect("not yet waited").as_fd();
    loop {
        let mut fds = vec![PollFd::new(&pidfd, PollFlags::IN), PollFd::new(signals, PollFlags::IN)];
        // The uevents matter only while the agent serves (at 2, then it
        // at 3), as a stand-alone run's views change only through it.
        let uevents = uevents.filter(|_| agent.is_some());
        if let Some(u) = uevents {
            fds.push(PollFd::new(u, PollFlags::IN));
        }
        if let Some((l, _)) = &agent {
            fds.push(PollFd::from_borrowed_fd(l.fd(), PollFlags::IN));
        }
        match poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let revents: Vec<PollFlags> = fds.iter().map(|f| f.revents()).collect();
        drop(fds);
        // Only when there are some: most wake-ups are the agent's.
        while revents[1].contains(PollFlags::IN)
            && let Some(si) = signals.read().context("reading signals")?
        {
            // Also a terminal's: the container is in a session of its own,
            // which they reach only through here.
            if let Some(sig) = Signal::from_named_raw(si.signo) {
                let _ = rustix::process::pidfd_send_signal(pidfd, sig);
            }
        }
        let at = if uevents.is_some() { 3 } else { 2 };
        if let (Some(u), Some((_, engine))) = (uevents, agent.as_mut())
            && revents[2].contains(PollFlags::IN)
        {
            engine.drain_uevents(u);
        }
        if let Some(r) = revents.get(at) {
            if r.intersects(PollFlags::HUP | PollFlags::ERR) {
                // No filtered process is left.
                agent = None;
            } else if r.contains(PollFlags::IN) {
                let (l, engine) = agent.as_mut().expect("polled");
                l.handle(*engine);
            }
        }
        if revents[0].contains(PollFlags::IN) {
            return child.wait().context("waiting for the container");
        }
    }
}
