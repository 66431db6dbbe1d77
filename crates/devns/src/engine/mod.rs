//! The one keeper of namespaces: the daemon's event loop and a stand-alone
//! `devns run` both serve their namespaces through an [`Engine`], which
//! holds the [`Model`] and the kernel objects of each namespace it keeps,
//! asks the model what a change means ([`Model::apply`]), and carries the
//! effects out on the kernel and the state directory.
//!
//! A change made on someone's behalf (a request, a loop device taken) is
//! [`Engine::commit`]ted: acknowledged only once every view and device map
//! it concerns holds it and its records are saved, else undone (the old
//! model is kept and put back) and refused. A change observed (a uevent, a
//! death) is [`Engine::observe`]d: the kernel already made it, so each
//! effect is carried out as far as it goes, failures logged.
//!
//! The parts: `persist` (records saved and read under the writers' lock),
//! `recover` (startup and restart), `life` (a namespace coming under devns
//! and leaving it), `access` (device policies), `loops` (the agent's
//! policy and loop-control), `uevents` (the kernel's events), `kernel`
//! (mounts, maps, members).

mod access;
mod kernel;
mod life;
mod loops;
mod persist;
mod place;
mod recover;
mod runtime;
mod uevents;

pub use kernel::prepare_views_dir;
pub use loops::clean_dead;

use crate::bpf::AccessPolicy;
use crate::store::{Records, Store};
use anyhow::{Context, Result};
use devns_core::DevId;
use devns_core::api::Event;
use devns_core::config::Config;
use devns_core::idmap::IdMap;
use devns_core::model::{Announce, Change, Effect, Model, Scope};
use devns_core::registry::NsId;
use devns_core::state::Keeper;
use rustix::fd::{AsFd, OwnedFd};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// Whom an engine serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The daemon: every namespace it provisions or attaches, each view
    /// mounted below `STATE_DIR/views` so that it outlives a restart.
    Daemon,
    /// A stand-alone `devns run` (this process, its keeper): the one
    /// namespace it starts, which ends with it.
    Run(Keeper),
    /// A command that only looks (`devns ls` without a daemon): it frees
    /// what died, as every keeper does, and keeps nothing.
    Look,
}

/// What [`Engine::attach`] is asked (the API's `attach`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Attach<'a> {
    pub pid: i32,
    pub name: Option<&'a str>,
    /// Where the view goes, inside `root` when given, else inside the
    /// process's root.
    pub at: &'a str,
    pub root: Option<&'a str>,
    pub devices: &'a [String],
    /// An OCI runtime's container before `pivot_root`: its mounts below
    /// `at` carried onto the view, its device controller deferring to
    /// devns's program.
    pub runtime: bool,
    /// The OCI container id, recorded for its `detach`.
    pub container: Option<&'a str>,
    /// The user namespace the process must be in (asked of its pidfd, so
    /// that a pid used again by another process is refused).
    pub ns: Option<NsId>,
    /// Keep the `/dev` the view covers, for a later attach of the same
    /// container to carry what was mounted on it since (LXC's autodev).
    pub keep_covered: bool,
}

/// A watched process inside a namespace.
pub struct Member {
    pub keeper: Keeper,
    pub pidfd: OwnedFd,
    /// Registered in the daemon's epoll set (each pidfd once).
    pub watched: bool,
}

/// The kernel objects of a namespace this engine keeps.
pub struct Kept {
    pub view: Option<OwnedFd>,
    /// The private `/tmp` devns made for a `devns run` (mounted nowhere on
    /// the host; none for an attached namespace): with the view, where the
    /// agent makes the namespace's nodes.
    pub tmp: Option<OwnedFd>,
    pub uids: IdMap,
    pub gids: IdMap,
    pub members: Vec<Member>,
    /// A uevent socket in the namespace's network namespace, through which
    /// its devices' events reach it (none when it shares the host's).
    pub uevents: Option<OwnedFd>,
    /// Its device access policy (none when the layer is off).
    pub access: Option<AccessPolicy>,
    /// The `/dev` an LXC container's autodev join covered with the view:
    /// LXC goes on filling it (devpts, ttys, console) through a directory
    /// fd it opened before the hook, and its start-host hook has those
    /// mounts carried onto the view.
    pub covered: Option<OwnedFd>,
}

pub struct Engine {
    role: Role,
    cfg: Config,
    store: Store,
    model: Model,
    kept: BTreeMap<NsId, Kept>,
    /// This engine's records as last written or read: saves write only
    /// differences.
    disk: Records,
    /// The other keepers' records as last read, and whether they were.
    others: Records,
    others_read: bool,
    /// Tells whether they may have changed since (see `persist`).
    watch: Option<OwnedFd>,
    global_disk: BTreeMap<DevId, bool>,
    /// The state dir's writers' lock, open for the engine's life and held
    /// (`flock`) across a decision and its record.
    lock: std::fs::File,
    /// Whether this engine holds it now, and has read the other keepers'
    /// records since it took it (they cannot change while it holds it).
    held: bool,
    fresh: bool,
    /// Where the daemon mounts its views (`None` for a stand-alone run,
    /// whose one view stays detached in this process).
    views_dir: Option<PathBuf>,
    overflow: (u32, u32),
    host_ns: NsId,
    loop_host: Option<crate::loopctl::LoopHost>,
    /// Where each loop device made is noted until it is recorded (the
    /// daemon's journal), and whether a daemon under test stops there.
    made_loops: Option<crate::journal::Journal>,
    stop_at_made: Option<crate::journal::Stop>,
    /// When dead namespaces' loop devices still open somewhere are tried
    /// next; `None` once none is.
    loop_retry: Option<loops::LoopRetry>,
    cgroups: Option<crate::cgroup::Hierarchy>,
    /// Dead namespaces' cgroups with a process still inside: retried until
    /// the deadline (their maps are empty meanwhile).
    busy_cgroups: Vec<(PathBuf, Instant)>,
    /// A device map and program loaded ahead for the next namespace
    /// ([`Engine::prepare`]), and whether to keep loading one (not after
    /// a load failed: the namespace's own load then tells why).
    spare: Option<crate::bpf::Prepared>,
    keep_spare: bool,
    /// API events not yet taken by the daemon's subscribers.
    events: Vec<Event>,
}

/// What a failure of the access layer's setup says besides its cause.
pub const POLICY_HINT: &str = "cannot set up the device access policy (a cgroup v2 and a BPF device program: set device_policy = false in the config to run without this security layer)";

impl Engine {
    /// An engine over the state in `store`, with the host's devices as
    /// sysfs has them; nothing recovered yet ([`Engine::recover`]).
    pub fn open(role: Role, cfg: Config, store: Store, views_dir: Option<PathBuf>) -> Result<Engine> {
        let model = Model::new(crate::discover::host_devices()?, cfg.global.clone());
        let lock = store.lock_handle()?;
        // Made before anything is read, so that no write falls between.
        let watch = persist::watch_records(&store, role);
        let host_ns = crate::host::user_ns_of(rustix::process::getpid().as_raw_nonzero().get())?;
        // A security layer: missing, nothing starts (unless the operator
        // turned it off).
        let cgroups = if cfg.device_policy && role != Role::Look {
            Some(crate::cgroup::Hierarchy::find_or_mount(store.dir()).context(POLICY_HINT)?)
        } else {
            None
        };
        Ok(Engine {
            role,
            cfg,
            store,
            model,
            kept: BTreeMap::new(),
            disk: Records::new(),
            others: Records::new(),
            others_read: false,
            watch,
            global_disk: BTreeMap::new(),
            lock,
            held: false,
            fresh: false,
            views_dir,
            overflow: crate::host::overflow_ids(),
            host_ns,
            loop_host: crate::loopctl::LoopHost::open(),
            made_loops: None,
            stop_at_made: None,
            loop_retry: Some(loops::LoopRetry::now()),
            cgroups,
            busy_cgroups: Vec::new(),
            spare: None,
            keep_spare: true,
            events: Vec::new(),
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn host_ns(&self) -> NsId {
        self.host_ns
    }

    pub fn kept(&self, id: NsId) -> Option<&Kept> {
        self.kept.get(&id)
    }

    pub fn kept_mut(&mut self, id: NsId) -> Option<&mut Kept> {
        self.kept.get_mut(&id)
    }

    /// The policy it runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// How many namespaces are kept.
    pub fn kept_count(&self) -> usize {
        self.kept.len()
    }

    /// The namespaces this engine keeps.
    pub fn kept_ids(&self) -> Vec<NsId> {
        self.kept.keys().copied().collect()
    }

    /// The events made since the last call, for the API's subscribers.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Queues an API event for the daemon's subscribers (a stand-alone run
    /// has none: nothing is kept).
    fn emit(&mut self, ev: Event) {
        if self.role == Role::Daemon {
            self.events.push(ev);
        }
    }

    /// Whether `id`'s record is this engine's to write.
    fn mine(&self, keeper: Option<Keeper>) -> bool {
        match self.role {
            Role::Daemon => keeper.is_none(),
            Role::Run(k) => keeper == Some(k),
            Role::Look => false,
        }
    }

    /// Makes a change on someone's behalf: applied to the model, then to
    /// every view and map it concerns, then saved; only then are its
    /// uevents announced and its events emitted. When the model refuses
    /// it, or a view, map or save cannot follow, the old model is put back,
    /// the views and maps are brought back to it, and the error returned.
    pub fn commit(&mut self, change: Change) -> Result<()> {
        let old = self.model.clone();
        let effects = self.model.apply(change)?;
        let (checked, after): (Vec<Effect>, Vec<Effect>) = effects
            .into_iter()
            .partition(|e| matches!(e, Effect::Reconcile(..) | Effect::Save(_) | Effect::SaveGlobal));
        if let Err(e) = self.carry_checked(&checked) {
            self.model = old;
            for fx in &checked {
                if let Effect::Reconcile(id, _) = fx {
                    let _ = self.reconcile(*id, &Scope::All);
                }
            }
            return Err(e);
        }
        self.carry(after, None);
        Ok(())
    }

    fn carry_checked(&mut self, effects: &[Effect]) -> Result<()> {
        let mut saves = Vec::new();
        let mut global = false;
        for fx in effects {
            match fx {
                Effect::Reconcile(id, scope) => self.reconcile(*id, scope)?,
                Effect::Save(id) => saves.push(*id),
                Effect::SaveGlobal => global = true,
                _ => {}
            }
        }
        if !saves.is_empty() || global {
            self.save(&saves).context("cannot save the state")?;
        }
        Ok(())
    }

    /// Takes in a change the kernel (or a process's death) already made:
    /// each effect carried out as far as it goes, failures logged.
    /// `uevent` is the kernel's event being handled, for those to hear it.
    pub fn observe(&mut self, change: Change, uevent: Option<&[u8]>) {
        match self.model.apply(change) {
            Ok(effects) => self.carry(effects, uevent),
            Err(e) => tracing::error!(error = %e, "cannot take in a change"),
        }
    }

    fn carry(&mut self, effects: Vec<Effect>, uevent: Option<&[u8]>) {
        let mut saves = Vec::new();
        let mut global = false;
        for fx in effects {
            match fx {
                Effect::Reconcile(id, scope) => {
                    let _ = self.reconcile(id, &scope);
                }
                Effect::Save(id) => saves.push(id),
                Effect::SaveGlobal => global = true,
                Effect::Announce(id, Announce::Forward) => {
                    if let Some(buf) = uevent {
                        self.announce(id, buf);
                    }
                }
                Effect::Announce(id, Announce::Synth { add, devs }) => {
                    let action = if add { "add" } else { "remove" };
                    for d in devs {
                        if let Some(msg) = crate::discover::synth_uevent(action, d) {
                            self.announce(id, &msg);
                        }
                    }
                }
                Effect::Emit(ev) => self.emit(ev),
                Effect::Free(rec) => self.free(rec),
                Effect::Missing(id, dev) => {
                    tracing::info!(ns = %id, dev = %dev, "an owned device is no longer on the host: dropped from its owner");
                }
                Effect::Remade { ns, dev, recorded, now } => {
                    tracing::warn!(
                        ns = %ns, dev = %dev, recorded_ino = ?recorded.ino, ino = ?now.ino,
                        recorded_diskseq = ?recorded.diskseq, diskseq = ?now.diskseq,
                        "an owned device was removed and made again while devns did not watch: the new one is the host's"
                    );
                }
            }
        }
        // Saved last, once, whatever else failed: what the model now says.
        if (!saves.is_empty() || global)
            && let Err(e) = self.save(&saves)
        {
            tracing::error!(error = %format!("{e:#}"), "cannot save the state");
        }
    }

    /// The one reconcile step of a namespace this engine keeps: its view
    /// (within `scope`), then its device map, from the same plan.
    pub fn reconcile(&mut self, id: NsId, scope: &Scope) -> Result<()> {
        let Some(k) = self.kept.get_mut(&id) else { return Ok(()) };
        let plan = devns_core::view::plan(&self.model.view_devices(id), &k.uids, &k.gids, self.overflow);
        let reg = self.model.registry();
        let view = k.view.as_ref().map(AsFd::as_fd);
        crate::reconcile::view_and_map(id, view, k.access.as_mut(), &plan, |d| reg.visible_in(d, id), scope)
    }

    /// Every kept namespace's reconcile step (failures logged).
    pub fn reconcile_all(&mut self) {
        for id in self.kept_ids() {
            let _ = self.reconcile(id, &Scope::All);
        }
    }

    /// Sends `payload` (a kernel-format uevent) to namespace `id`'s own
    /// listeners. A namespace that died meanwhile is skipped quietly.
    fn announce(&self, id: NsId, payload: &[u8]) {
        let Some(k) = self.kept.get(&id) else { return };
        let Some(sock) = k.uevents.as_ref() else { return };
        kernel::send_uevent(sock, payload, &k.uids, &k.gids, self.overflow, id);
        if self.cfg.udev_events {
            kernel::send_udev_event(sock, payload, &k.uids, &k.gids, self.overflow, id);
        }
    }

    /// Works out a device a user named.
    pub fn resolve(&self, text: &str) -> Result<DevId> {
        crate::discover::resolve(self.model.registry(), text)
    }
}
