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
use crate::container::tty::Terminal;
use crate::container::{self, ChildPlan};
use crate::loopctl::{Ledger, LoopHost};
use crate::store::Store;
use crate::{config, discover, host, view};
use anyhow::{Context, Result, anyhow};
use devns_core::idmap::IdMap;
use devns_core::loopctl::{LoopDev, Request};
use devns_core::registry::{NsId, Registry};
use devns_core::state::{Claim, Keeper};
use devns_core::subid::BLOCK;
use devns_sys::process::{self as sysproc, Forked};
use devns_sys::signal::SignalFd;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::fd::{AsFd, OwnedFd};
use rustix::mount::MountAttrFlags;
use rustix::process::{Pid, Signal};
use std::path::{Path, PathBuf};

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

/// Removes this run's record from the state file, and the loop devices
/// its namespace allocated from the host, however the run ends.
struct ClaimGuard<'a> {
    store: &'a Store,
    keeper: Keeper,
    loop_host: Option<LoopHost>,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        // Its ids and devices are freed only once nothing of its namespace
        // is left (a process that joined it from outside survives the pid
        // namespace): what is left is killed first, and if something
        // survives even that, the record stays for the next command.
        let ended = |s: &mut devns_core::state::State| {
            let held = s.by_keeper_mut(self.keeper).is_some_and(|r| {
                // This run is over: its keeper no longer counts.
                let over = devns_core::state::NsRecord { keeper: None, members: vec![], ..r.clone() };
                host::seen(&over).processes_left && !host::kill_leftovers(r)
            });
            Ok(if held { None } else { s.remove_by_keeper(self.keeper) })
        };
        match self.store.update::<_, anyhow::Error>(ended) {
            Ok(Some(r)) => end_dead(self.store, self.loop_host.as_ref(), vec![r]),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "could not release this run's devices in the state file"),
        }
    }
}

/// How long the end of a run waits for its cgroup to empty.
const CGROUP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Undoes what records of namespaces that are gone still hold: their
/// loop devices are detached and removed, their device policies ended
/// (cgroup removed, or devns's program detached). `host` is opened here
/// when `None` and a record needs it. Loop devices still open are only
/// logged: [`end_dead`] keeps them pending in the state directory.
pub fn clean_dead(host: Option<&LoopHost>, dead: Vec<devns_core::state::NsRecord>) {
    end(None, host, dead);
}

/// [`clean_dead`] for `store`'s records: first another try at the loop
/// devices pending removal there, then the dead records' devices, those
/// still open added to the pending ones (charged there until removed).
pub fn end_dead(store: &Store, host: Option<&LoopHost>, dead: Vec<devns_core::state::NsRecord>) {
    end(Some(store), host, dead);
}

fn end(store: Option<&Store>, host: Option<&LoopHost>, dead: Vec<devns_core::state::NsRecord>) {
    let pending = store.is_some_and(|s| s.read_pending().is_ok_and(|p| !p.is_empty()));
    let opened;
    let host = match host {
        Some(h) => Some(h),
        None if pending || dead.iter().any(|r| !r.loops.is_empty()) => {
            opened = LoopHost::open();
            opened.as_ref()
        }
        None => None,
    };
    if let (Some(store), true) = (store, pending)
        && let Err(e) = crate::loopctl::retry_pending(store, host)
    {
        tracing::error!(error = %e, "cannot retry the loop devices pending removal");
    }
    for r in dead {
        if let (Some(host), false) = (host, r.loops.is_empty()) {
            let busy = host.cleanup(&r.loops, std::time::Duration::from_secs(1));
            match store.map(|s| crate::loopctl::pend(s, &busy)) {
                Some(Ok(())) => {}
                Some(Err(e)) => tracing::error!(error = %e, "cannot record loop devices pending removal"),
                None => {
                    for l in busy {
                        tracing::warn!(dev = %l.dev, "a loop device is still in use: left to detach at its last close");
                    }
                }
            }
        }
        if let Some(c) = &r.cgroup
            && let Some(busy) = crate::bpf::log_close(r.label(), crate::bpf::close_recorded(c, CGROUP_PATIENCE))
        {
            tracing::warn!(cgroup = %busy.display(), "a dead namespace's cgroup still has processes: left (its map is empty: they may open no device)");
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
    // The access layer is a security boundary: without cgroup2 (or BPF,
    // found when the program is loaded) the run fails, unless the
    // operator turned the layer off.
    let cgroups = if cfg.device_policy {
        Some(crate::cgroup::Hierarchy::find_or_mount(&global.state_dir).context(POLICY_HINT)?)
    } else {
        None
    };
    let keeper = host::current_keeper()?;
    let (uid_ranges, gid_ranges) = (host::subid_ranges("/etc/subuid"), host::subid_ranges("/etc/subgid"));
    let loop_host = LoopHost::open();
    // Partitions of its disks come and go (a loop device attached with -P,
    // detached): its view follows them.
    let uevents = crate::uevents::socket()
        .map_err(|e| tracing::warn!(error = %e, "no uevents: partitions appear only through partx"))
        .ok();
    let mut dead = Vec::new();
    let ids = store.update::<_, anyhow::Error>(|state| {
        dead = host::settle(state);
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
    });
    end_dead(&store, loop_host.as_ref(), dead);
    let (uid_base, gid_base) = ids?;
    let claim = ClaimGuard { store: &store, keeper, loop_host };
    // Declared before the child, so dropped after it is gone: its cgroup
    // can be removed only once it is empty.
    let mut access = AccessGuard(None);

    let (signals, mine, pid, mut child, terminal) = spawn(&args, rootfs.as_ref())?;
    let uids = IdMap::single(uid_base, BLOCK);
    let gids = IdMap::single(gid_base, BLOCK);
    let ns = container::map_ids(pid, &uids, &gids)?;
    let cgroup = cgroups.as_ref().map(|h| h.for_namespace(ns)).transpose().context(POLICY_HINT)?;
    let (view, tmp) = build_mounts(&store, keeper, ns, &mut registry, &uids, &gids, cgroup.as_deref())?;
    if let Some(path) = &cgroup {
        let plan = devns_core::view::plan(&registry.view_devices(ns), &uids, &gids, host::overflow_ids());
        access.0 = Some(start_policy(path, &plan, pid).context(POLICY_HINT)?);
        let rec = access.0.as_ref().map(|a| a.record());
        store.update::<_, anyhow::Error>(|state| {
            state.by_keeper_mut(keeper).context("this run's record vanished from the state file")?.cgroup = rec;
            Ok(())
        })?;
    }
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
    let (listener, pty) = container::start(&mine, &[for_child.as_fd(), tmp.as_fd()])?;
    // The keeper keeps /tmp open (mounted nowhere on the host): the agent
    // makes nodes there and on the view only.
    drop((mine, for_child));
    let listener = crate::agent::Listener::new(listener).context("cannot serve the container's seccomp listener")?;
    tracing::info!(ns = %ns, pid = pid.as_raw_nonzero().get(), "started");
    let mut policy = RunPolicy {
        ns,
        registry,
        view,
        tmp,
        uids,
        gids,
        overflow: host::overflow_ids(),
        global_names: cfg.global.clone(),
        loop_limit: cfg.loop_limit,
        store: &store,
        keeper,
        loop_host: claim.loop_host.as_ref(),
        access: access.0.as_mut(),
        locked: None,
    };
    terminal.relay(pty, || supervise(&mut child, &signals, Some((listener, &mut policy)), uevents.as_ref()))
}

/// What a failure of the access layer's setup says besides its cause.
const POLICY_HINT: &str = "cannot set up the device access policy (a cgroup v2 and a BPF device program: set device_policy = false in the config to run without this security layer)";

/// A run's device policy, ended when the run ends (after its child).
struct AccessGuard(Option<crate::bpf::AccessPolicy>);

impl Drop for AccessGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let path = p.cgroup().to_owned();
            // The container's init is reaped: whatever is still in its
            // cgroup outlived it, and goes with the run.
            if let Err(e) = crate::cgroup::kill(&path) {
                tracing::warn!(error = %e, "cannot kill what is left in the run's cgroup");
            }
            if let Some(busy) = crate::bpf::log_close(path.display(), p.close(CGROUP_PATIENCE)) {
                tracing::warn!(cgroup = %busy.display(), "the run's cgroup still has processes: left (its map is empty)");
            }
        }
    }
}

/// Makes the container's cgroup at `path`, its map (filled from the
/// view's `plan`) and program, attaches the program, and moves the
/// container's first process (waiting on its channel) in. Undone on drop
/// of the result, or here when a step fails.
fn start_policy(
    path: &std::path::Path,
    plan: &devns_core::view::ViewPlan,
    pid: Pid,
) -> Result<crate::bpf::AccessPolicy> {
    crate::cgroup::create(path)?;
    let made = (|| {
        let mut p = crate::bpf::AccessPolicy::new(path, true)?;
        p.reconcile(plan)?;
        p.attach()?;
        crate::cgroup::move_pid(path, pid.as_raw_nonzero().get())?;
        Ok::<_, crate::bpf::PolicyError>(p)
    })();
    made.map_err(|e| {
        // The child is not in it: nothing to wait for.
        let _ = crate::cgroup::remove(path, std::time::Duration::ZERO);
        e.into()
    })
}

/// `devns run` with a daemon: the daemon gives the namespace its ids,
/// devices and view, and watches it; this process only starts and waits.
fn run_with_daemon(mut daemon: Client, args: &Args) -> Result<i32> {
    let rootfs = args.rootfs.as_deref().map(container::prepare_rootfs).transpose()?;
    let (signals, mine, pid, mut child, terminal) = spawn(args, rootfs.as_ref())?;
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
    // The daemon answers the container's trapped calls.
    daemon.call(serde_json::json!({ "op": "listen" }), &[listener.as_fd()])?;
    drop((daemon, listener));
    tracing::info!(ns = reply["id"].as_u64(), pid = pid.as_raw_nonzero().get(), "started through the daemon");
    terminal.relay(pty, || supervise(&mut child, &signals, None, None))
}

/// Forks the container's first process into its new namespaces. In the
/// child this never returns; the parent gets the signals to relay, its end
/// of the channel, the child, and the terminal to relay.
fn spawn(args: &Args, rootfs: Option<&container::RootFs>) -> Result<(SignalFd, OwnedFd, Pid, ChildGuard, Terminal)> {
    let terminal = Terminal::probe()?;
    // Blocked before the fork, so no signal is lost or kills devns before
    // the child exists; the child inherits the mask and reads its own.
    let signals = SignalFd::new(&terminal.relayed_signals()).context("cannot set up signal forwarding")?;
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
            let outer = terminal.into_child();
            let plan = ChildPlan {
                sock: theirs,
                rootfs,
                hostname: args.name.as_deref(),
                cmd: &args.cmd,
                own_net: args.net != "host",
                outer: &outer,
            };
            // Never return into the parent's frames: their guards are the
            // parent's to run.
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| container::child_main(plan)));
            std::process::exit(code.unwrap_or(125));
        }
        Forked::Parent { pid, pidfd } => Ok((signals, mine, pid, ChildGuard { pidfd: Some(pidfd) }, terminal)),
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
    cgroup: Option<&std::path::Path>,
) -> Result<(OwnedFd, OwnedFd)> {
    store.update::<_, anyhow::Error>(|state| {
        let rec = state.by_keeper_mut(keeper).context("this run's record vanished from the state file")?;
        rec.id = Some(ns);
        // Recorded before it exists, so that it is removed however this
        // run ends from here on.
        rec.cgroup = cgroup.map(|p| devns_core::state::CgroupRecord {
            path: p.to_string_lossy().into_owned(),
            created: true,
            prog_id: None,
        });
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
/// Loop devices it allocates are recorded in its state file record.
struct RunPolicy<'a> {
    ns: NsId,
    registry: Registry,
    view: OwnedFd,
    /// Its private `/tmp`, held so that its superblock is known.
    tmp: OwnedFd,
    uids: IdMap,
    gids: IdMap,
    overflow: (u32, u32),
    global_names: Vec<String>,
    loop_limit: usize,
    store: &'a Store,
    keeper: Keeper,
    loop_host: Option<&'a LoopHost>,
    access: Option<&'a mut crate::bpf::AccessPolicy>,
    /// The state under the writers' lock while a loop-control call is
    /// served: other keepers wait from its decision to its record.
    locked: Option<crate::store::Locked>,
}

/// Runs `f` on the state and saves it: under `locked` when it is held,
/// else under the lock taken for the call.
fn with_state<T>(
    locked: &mut Option<crate::store::Locked>,
    store: &Store,
    f: impl FnOnce(&mut devns_core::state::State) -> Result<T>,
) -> Result<T> {
    match locked {
        Some(l) => {
            let out = f(&mut l.state)?;
            l.save()?;
            Ok(out)
        }
        None => store.update(f),
    }
}

impl RunPolicy<'_> {
    /// The one reconcile step: the view, then the device map, from the
    /// same plan. A failure is logged and returned.
    fn reconcile(&mut self) -> Result<()> {
        let plan = devns_core::view::plan(&self.registry.view_devices(self.ns), &self.uids, &self.gids, self.overflow);
        let (registry, ns) = (&self.registry, self.ns);
        let view = Some(self.view.as_fd());
        let visible = |d| registry.visible_in(d, ns);
        crate::bpf::reconcile_view_and_map(ns, view, self.access.as_deref_mut(), &plan, visible, crate::bpf::Scope::All)
    }
}

impl RunPolicy<'_> {
    /// The kernel's events: partitions of the namespace's disks appearing
    /// and going (the kernel's own partition scan, a detach).
    fn drain_uevents(&mut self, sock: &OwnedFd) {
        use crate::agent::Policy;
        let mut disks = std::collections::BTreeSet::new();
        let mut gone = Vec::new();
        let lost = crate::uevents::drain(sock, |buf| {
            let Ok(ev) = devns_core::uevent::parse_netlink(buf) else { return };
            let Some(id) = ev.dev.filter(|d| d.kind == devns_core::Kind::Block) else { return };
            // One of its disks left the host (not a newer disk that has its
            // numbers now): it is no longer the namespace's, whatever the
            // host makes with those numbers next.
            if ev.action == devns_core::uevent::Action::Remove
                && self.registry.owner(id) == devns_core::Owner::Ns(self.ns)
                && self
                    .registry
                    .device(id)
                    .is_some_and(|d| !d.is_partition() && devns_core::device::removes_known(d.diskseq, ev.diskseq))
            {
                // Out of the registry at once, so that a new disk with its
                // numbers later in this batch is the host's.
                self.registry.remove_disk(id);
                gone.push(id);
                return;
            }
            // Its disk as the event has it: a new medium (each attach of a
            // loop device) brings a new DISKSEQ. Not so a late event of an
            // older disk with its numbers (another namespace's, removed
            // since): that one's `remove` would then take this disk from
            // the namespace.
            if ev.action != devns_core::uevent::Action::Remove
                && self
                    .registry
                    .device(id)
                    .is_some_and(|d| !d.is_partition() && devns_core::device::removes_known(d.diskseq, ev.diskseq))
                && let Some(d) = discover::device_from_event(&ev, devns_core::Kind::Block, Path::new("/dev"), |_| None)
                && d.id == id
            {
                self.registry.add_device(d, &self.global_names);
            }
            let disk = match self.registry.device(id) {
                Some(d) => d.parent.unwrap_or(id),
                None => {
                    let sys = std::path::Path::new("/sys").join(ev.devpath.trim_start_matches('/'));
                    match discover::read_device(&sys, devns_core::Kind::Block, std::path::Path::new("/dev")) {
                        Some(d) => d.parent.unwrap_or(id),
                        None => return,
                    }
                }
            };
            disks.insert(disk);
        });
        if matches!(lost, crate::uevents::Drained::Lost) {
            disks.extend(self.registry.devices().filter(|d| !d.is_partition()).map(|d| d.id));
        }
        for disk in gone {
            tracing::info!(dev = %disk, "an owned disk left the host: no longer the namespace's");
            disks.remove(&disk);
            self.drop_disk(disk);
        }
        for disk in disks {
            if self.owns(self.ns, disk) {
                self.partitions_changed(self.ns, disk);
            }
        }
    }
}

impl crate::agent::Policy for RunPolicy<'_> {
    fn may_have(&self, ns: NsId, dev: devns_core::DevId) -> bool {
        if ns == self.ns { self.registry.visible_in(dev, ns) } else { self.registry.is_global(dev) }
    }

    fn view(&self, ns: NsId) -> Option<rustix::fd::BorrowedFd<'_>> {
        (ns == self.ns).then(|| self.view.as_fd())
    }

    fn tmp(&self, ns: NsId) -> Option<rustix::fd::BorrowedFd<'_>> {
        (ns == self.ns).then(|| self.tmp.as_fd())
    }

    fn owns(&self, ns: NsId, dev: devns_core::DevId) -> bool {
        ns == self.ns && self.registry.owner(dev) == devns_core::Owner::Ns(ns)
    }

    fn loop_control(&mut self, ns: NsId, req: Request) -> Result<u32, crate::refusal::Refusal> {
        if ns != self.ns {
            let why = "a nested namespace devns does not keep";
            return Err(crate::refusal::Refusal::new(rustix::io::Errno::PERM, why));
        }
        // Other runs and a daemon may have taken loop devices meanwhile;
        // the lock is held until the call is answered, so that a device
        // made here is recorded before any other keeper decides (and no
        // keeper but this one ever removes it).
        let locked = match self.store.lock() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the state");
                return Err(rustix::io::Errno::IO.into());
            }
        };
        self.registry.clear_assignments();
        locked.state.apply(&mut self.registry);
        self.locked = Some(locked);
        let answer = crate::loopctl::serve(self, ns, req);
        self.locked = None;
        answer
    }

    fn partitions_changed(&mut self, _ns: NsId, disk: devns_core::DevId) {
        discover::refresh_partitions(&mut self.registry, disk, &self.global_names);
        let _ = self.reconcile();
    }
}

impl Ledger for RunPolicy<'_> {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn loop_limit(&self) -> usize {
        self.loop_limit
    }

    fn loop_host(&self) -> Option<&LoopHost> {
        self.loop_host
    }

    fn pending(&self) -> usize {
        self.store.read_pending().map_or(devns_core::loopctl::MAX_PENDING, |p| p.len())
    }

    fn take(&mut self, ns: NsId, l: LoopDev, dev: devns_core::Device) -> Result<(), String> {
        self.registry.add_device(dev, &self.global_names);
        let (registry, keeper) = (&self.registry, self.keeper);
        with_state(&mut self.locked, self.store, |s| {
            s.by_keeper_mut(keeper).context("this run's record vanished from the state file")?;
            Ok(s.add_loop(ns, l, registry)?)
        })
        .map_err(|e| e.to_string())?;
        self.registry.assign(l.dev, ns).map_err(|e| e.to_string())?;
        if let Err(e) = self.reconcile() {
            // Not given: view and map go back to what they were.
            self.forget(ns, l);
            return Err(format!("{e:#}"));
        }
        Ok(())
    }

    fn forget(&mut self, _ns: NsId, l: LoopDev) {
        self.drop_disk(l.dev);
    }
}

impl RunPolicy<'_> {
    /// A disk of the namespace's that is gone from the host: out of its
    /// claim, the registry, the view and the device map.
    fn drop_disk(&mut self, disk: devns_core::DevId) {
        if let Err(e) = with_state(&mut self.locked, self.store, |s| {
            s.forget_device(disk);
            Ok(())
        }) {
            tracing::error!(error = %e, dev = %disk, "cannot save after a disk of the namespace was removed");
        }
        self.registry.remove_disk(disk);
        let _ = self.reconcile();
    }
}

/// Forwards signals to the child until it ends, answering its trapped calls
/// meanwhile when this process is its agent; the child's status is ours.
fn supervise(
    child: &mut ChildGuard,
    signals: &SignalFd,
    mut agent: Option<(crate::agent::Listener, &mut RunPolicy<'_>)>,
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
        if let (Some(u), Some((_, policy))) = (uevents, agent.as_mut())
            && revents[2].contains(PollFlags::IN)
        {
            policy.drain_uevents(u);
        }
        if let Some(r) = revents.get(at) {
            if r.intersects(PollFlags::HUP | PollFlags::ERR) {
                // No filtered process is left.
                agent = None;
            } else if r.contains(PollFlags::IN) {
                let (l, policy) = agent.as_mut().expect("polled");
                l.handle(*policy);
            }
        }
        if revents[0].contains(PollFlags::IN) {
            return child.wait().context("waiting for the container");
        }
    }
}
