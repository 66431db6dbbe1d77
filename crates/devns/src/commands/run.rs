//! `devns run`: a command in new user, mount, pid, uts and ipc namespaces,
//! with its own `/dev` view, a fresh `/proc` and a private `/tmp`.
//!
//! This process stays on the host as the namespace's keeper: it holds the
//! claim on the devices in the state file, forwards signals, and returns the
//! command's exit status. Everything it made is undone on every path out:
//! the claim by `ClaimGuard`, the child by `ChildGuard`, the mounts with the
//! child's mount namespace.

use super::Global;
use crate::client::Client;
use crate::container::{self, ChildPlan, FORWARDED_SIGNALS};
use crate::store::Store;
use crate::{config, discover, host, view};
use anyhow::{Context, Result, anyhow};
use devns_core::idmap::IdMap;
use devns_core::registry::{NsId, Registry};
use devns_core::state::{Claim, Keeper};
use devns_core::subid::BLOCK;
use devns_sys::process::{self as sysproc, Forked};
use devns_sys::signal::SignalFd;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::fd::{AsFd, OwnedFd};
use rustix::mount::MountAttrFlags;
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

/// Removes this run's record from the state file, however the run ends.
struct ClaimGuard<'a> {
    store: &'a Store,
    keeper: Keeper,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.store.update::<_, anyhow::Error>(|s| Ok(s.remove_by_keeper(self.keeper))) {
            tracing::error!(error = %e, "could not release this run's devices in the state file");
        }
    }
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
        return run_with_daemon(daemon, &args);
    }
    let cfg = config::load(&global.config)?;
    let mut registry = Registry::new(discover::host_devices()?, &cfg.global);
    let devs = args.devs.iter().map(|d| discover::resolve(&registry, d)).collect::<Result<Vec<_>>>()?;
    let rootfs = args.rootfs.as_deref().map(container::prepare_rootfs).transpose()?;

    let store = Store::open(&global.state_dir)?;
    let keeper = host::current_keeper()?;
    let (uid_ranges, gid_ranges) = (host::subid_ranges("/etc/subuid"), host::subid_ranges("/etc/subgid"));
    let (uid_base, gid_base) = store.update::<_, anyhow::Error>(|state| {
        state.prune(host::record_alive);
        state.apply(&mut registry);
        let claim = Claim {
            id: None,
            name: args.name.as_deref(),
            keeper: Some(keeper),
            members: vec![],
            devices: &devs,
            allocate_ids: true,
        };
        let r = state.claim(claim, &registry, &uid_ranges, &gid_ranges)?;
        Ok((r.uid_base.expect("allocated"), r.gid_base.expect("allocated")))
    })?;
    let _claim = ClaimGuard { store: &store, keeper };

    let (signals, mine, pid, mut child) = spawn(&args, rootfs.as_ref())?;
    let uids = IdMap::single(uid_base, BLOCK);
    let gids = IdMap::single(gid_base, BLOCK);
    let ns = container::map_ids(pid, &uids, &gids)?;
    let (view, tmp) = build_mounts(&store, keeper, ns, &mut registry, &uids, &gids)?;
    // The container gets a clone; the keeper keeps the view detached, so
    // that the agent can clone it again for `mount -t devtmpfs` (a mount in
    // another namespace cannot be cloned).
    let for_child = rustix::mount::open_tree(
        &view,
        "",
        rustix::mount::OpenTreeFlags::OPEN_TREE_CLONE
            | rustix::mount::OpenTreeFlags::OPEN_TREE_CLOEXEC
            | rustix::mount::OpenTreeFlags::AT_EMPTY_PATH,
    )
    .context("cannot clone the view")?;
    let listener = container::start(&mine, &[for_child.as_fd(), tmp.as_fd()])?;
    // The container's /tmp is the container's alone.
    drop((mine, tmp, for_child));
    let _ = devns_sys::seccomp::set_sync_wakeup(&listener);
    tracing::info!(ns = %ns, pid = pid.as_raw_nonzero().get(), "started");
    let policy = RunPolicy {
        ns,
        visible: registry.view_devices(ns).iter().map(|d| d.id).collect(),
        global: registry.devices().filter(|d| registry.is_global(d.id)).map(|d| d.id).collect(),
        view,
    };
    supervise(&mut child, &signals, Some((listener, &policy)))
}

/// `devns run` with a daemon: the daemon gives the namespace its ids,
/// devices and view, and watches it; this process only starts and waits.
fn run_with_daemon(mut daemon: Client, args: &Args) -> Result<i32> {
    let rootfs = args.rootfs.as_deref().map(container::prepare_rootfs).transpose()?;
    let (signals, mine, pid, mut child) = spawn(args, rootfs.as_ref())?;
    let pidfd = child.pidfd.as_ref().expect("not waited").as_fd();
    let req = serde_json::json!({ "op": "run", "name": args.name, "devices": args.devs });
    let reply = daemon.call(req, &[pidfd])?;
    let view = daemon.take_fds().pop().context("the daemon sent no view")?;
    let base = |k: &str| reply[k].as_u64().and_then(|n| u32::try_from(n).ok()).context("bad reply from the daemon");
    let (u, g) = (base("uid_base")?.to_string(), base("gid_base")?.to_string());
    let tmp = view::tmpfs(&[("mode", "1777"), ("uid", &u), ("gid", &g)], MountAttrFlags::MOUNT_ATTR_NOSUID)
        .context("cannot create /tmp")?;
    let listener = container::start(&mine, &[view.as_fd(), tmp.as_fd()])?;
    drop((mine, tmp, view));
    // The daemon answers the container's trapped calls.
    daemon.call(serde_json::json!({ "op": "listen" }), &[listener.as_fd()])?;
    drop((daemon, listener));
    tracing::info!(ns = reply["id"].as_u64(), pid = pid.as_raw_nonzero().get(), "started through the daemon");
    supervise(&mut child, &signals, None)
}

/// Forks the container's first process into its new namespaces. In the
/// child this never returns; the parent gets the signals to relay, its end
/// of the channel, and the child.
fn spawn(args: &Args, rootfs: Option<&container::RootFs>) -> Result<(SignalFd, OwnedFd, Pid, ChildGuard)> {
    // Blocked before the fork, so no signal is lost or kills devns before
    // the child exists; the child inherits the mask and reads its own.
    let signals = SignalFd::new(FORWARDED_SIGNALS).context("cannot set up signal forwarding")?;
    let (mine, theirs) = container::channel()?;
    let flags = sysproc::CLONE_NEWUSER
        | sysproc::CLONE_NEWNS
        | sysproc::CLONE_NEWPID
        | sysproc::CLONE_NEWUTS
        | sysproc::CLONE_NEWIPC
        | if args.net == "host" { 0 } else { sysproc::CLONE_NEWNET };
    // SAFETY: devns is single-threaded here (no thread was spawned), so the
    // child may run ordinary Rust until it execs or exits.
    match unsafe { sysproc::fork_into(flags) }.map_err(clone_failed)? {
        Forked::Child => {
            drop(mine);
            signals.close_keeping_mask();
            let plan = ChildPlan {
                sock: theirs,
                rootfs,
                hostname: args.name.as_deref(),
                cmd: &args.cmd,
                own_net: args.net != "host",
            };
            // Never return into the parent's frames: their guards are the
            // parent's to run.
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| container::child_main(plan)));
            std::process::exit(code.unwrap_or(125));
        }
        Forked::Parent { pid, pidfd } => Ok((signals, mine, pid, ChildGuard { pidfd: Some(pidfd) })),
    }
}

/// Records the namespace's id and builds its view and `/tmp`.
fn build_mounts(
    store: &Store,
    keeper: Keeper,
    ns: NsId,
    registry: &mut Registry,
    uids: &IdMap,
    gids: &IdMap,
) -> Result<(OwnedFd, OwnedFd)> {
    store.update::<_, anyhow::Error>(|state| {
        let rec = state.by_keeper_mut(keeper).context("this run's record vanished from the state file")?;
        rec.id = Some(ns);
        for d in rec.devices.clone() {
            registry.assign(d, ns)?;
        }
        Ok(())
    })?;
    let overflow = host::overflow_ids();
    let plan = devns_core::view::plan(&registry.view_devices(ns), uids, gids, overflow);
    let view = view::create(&plan).context("cannot create the view")?;
    let (u, g) = (plan.root_uid.to_string(), plan.root_gid.to_string());
    let tmp = view::tmpfs(&[("mode", "1777"), ("uid", &u), ("gid", &g)], MountAttrFlags::MOUNT_ATTR_NOSUID)
        .context("cannot create /tmp")?;
    Ok((view, tmp))
}

/// The agent's policy for a stand-alone run: its namespace may have the
/// devices of its view; any other (nested) namespace only the global ones.
struct RunPolicy {
    ns: NsId,
    visible: std::collections::BTreeSet<devns_core::DevId>,
    global: std::collections::BTreeSet<devns_core::DevId>,
    view: OwnedFd,
}

impl crate::agent::Policy for RunPolicy {
    fn may_have(&self, ns: NsId, dev: devns_core::DevId) -> bool {
        if ns == self.ns { self.visible.contains(&dev) } else { self.global.contains(&dev) }
    }

    fn view(&self, ns: NsId) -> Option<rustix::fd::BorrowedFd<'_>> {
        (ns == self.ns).then(|| self.view.as_fd())
    }
}

/// Forwards signals to the child until it ends, answering its trapped calls
/// meanwhile when this process is its agent; the child's status is ours.
fn supervise(
    child: &mut ChildGuard,
    signals: &SignalFd,
    mut agent: Option<(OwnedFd, &dyn crate::agent::Policy)>,
) -> Result<i32> {
    let pidfd = child.pidfd.as_ref().expect("not yet waited").as_fd();
    loop {
        let mut fds = vec![PollFd::new(&pidfd, PollFlags::IN), PollFd::new(signals, PollFlags::IN)];
        if let Some((l, _)) = &agent {
            fds.push(PollFd::new(l, PollFlags::IN));
        }
        match poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let revents: Vec<PollFlags> = fds.iter().map(|f| f.revents()).collect();
        drop(fds);
        while let Some(si) = signals.read().context("reading signals")? {
            // A terminal's signals reach the command directly (same process
            // group); relaying them too would deliver them twice.
            if !si.from_kernel()
                && let Some(sig) = Signal::from_named_raw(si.signo)
            {
                let _ = rustix::process::pidfd_send_signal(pidfd, sig);
            }
        }
        if let Some(r) = revents.get(2) {
            if r.intersects(PollFlags::HUP | PollFlags::ERR) {
                // No filtered process is left.
                agent = None;
            } else if r.contains(PollFlags::IN) {
                let (l, policy) = agent.as_ref().expect("polled");
                crate::agent::handle(l.as_fd(), *policy);
            }
        }
        if revents[0].contains(PollFlags::IN) {
            return child.wait().context("waiting for the container");
        }
    }
}
