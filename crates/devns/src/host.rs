//! Small facts about the host and this process.

use anyhow::{Context, Result, bail};
use devns_core::NsId;
use devns_core::nstree::NsTree;
use devns_core::state::{Fate, Keeper, NsRecord, Seen};
use rustix::fd::OwnedFd;
use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// devns acts as the host's root: uid 0 in the initial user namespace.
pub fn require_host_root(what: &str) -> Result<()> {
    let uid = rustix::process::geteuid().as_raw();
    if uid != 0 {
        bail!("{what} must run as root on the host; you are uid {uid}");
    }
    let map = fs::read_to_string("/proc/self/uid_map").context("cannot read /proc/self/uid_map")?;
    let initial = map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
    if !initial {
        bail!("{what} must run as root on the host; this is root of a user namespace, not of the host");
    }
    Ok(())
}

/// Fields 3, 4 and 22 of `/proc/PID/stat`: the process's state, its
/// parent and its start time in clock ticks.
fn stat_of(pid: i32) -> Option<(String, i32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parens: skip past its end.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.to_owned();
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid, rest.nth(17)?.parse().ok()?))
}

fn state_and_start(pid: i32) -> Option<(String, u64)> {
    stat_of(pid).map(|(state, _, t)| (state, t))
}

/// `pid` and its ancestors, each with its start time and user namespace,
/// up to `max` of them or the first that cannot be read (pid 1's parent,
/// 0, is none).
pub fn ancestry(pid: i32, max: usize) -> Vec<devns_core::expect::Proc> {
    let mut out = Vec::new();
    let mut p = pid;
    while out.len() < max && p > 0 {
        let Some((_, ppid, t)) = stat_of(p) else { break };
        let Ok(ns) = user_ns_of(p) else { break };
        // Read again: a pid that ended and was reused meanwhile is not
        // taken for the process first read.
        if start_time(p) != Some(t) {
            break;
        }
        out.push(devns_core::expect::Proc { keeper: Keeper { pid: p, start_time: t }, user_ns: ns.0 });
        p = ppid;
    }
    out
}

/// Field 22 of `/proc/PID/stat`: the process's start time in clock ticks.
pub fn start_time(pid: i32) -> Option<u64> {
    state_and_start(pid).map(|(_, t)| t)
}

pub fn current_keeper() -> Result<Keeper> {
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    let start_time = start_time(pid).context("cannot read this process's start time from /proc")?;
    Ok(Keeper { pid, start_time })
}

/// Whether the devns process `k` still runs (same pid, same start time,
/// not a zombie: one that only waits to be reaped holds nothing).
pub fn keeper_alive(k: &Keeper) -> bool {
    state_and_start(k.pid).is_some_and(|(state, t)| t == k.start_time && !ended(&state))
}

/// The pid behind a pidfd, from `/proc/self/fdinfo` (`None` once it died).
pub fn pid_of_pidfd(pidfd: impl rustix::fd::AsFd) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_fd().as_raw_fd())).ok()?;
    let pid: i32 = info.lines().find_map(|l| l.strip_prefix("Pid:"))?.trim().parse().ok()?;
    (pid > 0).then_some(pid)
}

/// The id of the user namespace of process `pid`.
pub fn user_ns_of(pid: i32) -> std::io::Result<devns_core::NsId> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(format!("/proc/{pid}/ns/user"), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    Ok(devns_core::NsId(devns_sys::ns::ns_id(&fd)?))
}

/// User namespaces by nsfs inode (unique among live namespaces), learnt
/// once per scan: most processes share a few namespaces.
#[derive(Default)]
struct NsCache {
    by_ino: HashMap<u64, NsId>,
    tree: NsTree,
}

impl NsCache {
    /// The id of user namespace `nsfd`, its ancestors learnt up to the
    /// first one already known (`NS_GET_PARENT` fails at the initial one).
    fn learn(&mut self, nsfd: OwnedFd) -> Option<NsId> {
        self.learn_at(nsfd, 0)
    }

    fn learn_at(&mut self, nsfd: OwnedFd, depth: usize) -> Option<NsId> {
        let ino = rustix::fs::fstat(&nsfd).ok()?.st_ino;
        if let Some(id) = self.by_ino.get(&ino) {
            return Some(*id);
        }
        let id = NsId(devns_sys::ns::ns_id(&nsfd).ok()?);
        self.by_ino.insert(ino, id);
        let parent = match devns_sys::ns::ns_parent(&nsfd) {
            Ok(p) if depth < devns_core::nstree::MAX_DEPTH => self.learn_at(p, depth + 1),
            _ => None,
        };
        self.tree.insert(id, parent);
        Some(id)
    }
}

fn open_user_ns(pid: i32) -> Option<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(format!("/proc/{pid}/ns/user"), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()
}

/// Whether `/proc/PID` is a zombie (or dead): it runs nothing, holds no
/// file, and waits only to be reaped.
fn is_zombie(pid: i32) -> bool {
    state_and_start(pid).is_none_or(|(s, _)| ended(&s))
}

/// Whether a `/proc/PID/stat` state is a zombie's or a dead process's.
fn ended(state: &str) -> bool {
    state == "Z" || state == "X"
}

/// The pids `/proc` lists.
fn proc_pids() -> impl Iterator<Item = i32> {
    fs::read_dir("/proc").into_iter().flatten().flatten().filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// The live processes of user namespace `id` or of one nested in it, as
/// one pass over `/proc` finds them (lazily: a caller that needs one
/// stops there). Each namespace is learnt once per pass.
pub fn members_of(id: NsId) -> impl Iterator<Item = i32> {
    let mut cache = NsCache::default();
    proc_pids().filter(move |&pid| {
        let ns = open_user_ns(pid).and_then(|fd| cache.learn(fd));
        ns.is_some_and(|ns| cache.tree.within(ns, id)) && !is_zombie(pid)
    })
}

/// Whether the process behind `pidfd` is in user namespace `id` or one
/// nested in it (asked of the pidfd: it cannot name another process).
pub fn pidfd_within(pidfd: impl rustix::fd::AsFd, id: NsId) -> bool {
    let mut cache = NsCache::default();
    let ns = devns_sys::ns::pidfd_user_ns(pidfd).ok().and_then(|fd| cache.learn(fd));
    ns.is_some_and(|ns| cache.tree.within(ns, id))
}

/// A cgroup devns made for the record's namespace (one it did not make
/// holds whatever its owner put there).
fn own_cgroup(r: &NsRecord) -> Option<&Path> {
    r.cgroup.as_ref().filter(|c| c.created).map(|c| Path::new(&c.path))
}

/// What is left of the namespace of `r`.
pub fn seen(r: &NsRecord) -> Seen {
    let keeper_runs = r.keeper.as_ref().is_some_and(keeper_alive);
    let member_runs = r.members.iter().any(keeper_alive);
    let processes_left = !keeper_runs
        && !member_runs
        && (r.cgroup.as_ref().is_some_and(|c| crate::cgroup::populated(Path::new(&c.path)))
            || r.id.is_some_and(|id| members_of(id).next().is_some()));
    Seen { keeper_alive: keeper_runs, member_alive: member_runs, processes_left }
}

/// How long the processes left of a dead run get to die at each look.
const KILL_PATIENCE: Duration = Duration::from_secs(2);

/// Kills what is left of the namespace of `r` (a stand-alone run whose
/// keeper is gone): its cgroup with `cgroup.kill`, then every process of
/// its user namespace or one nested in it by pidfd (never by a bare pid:
/// the pidfd is checked to be in the namespace before the signal), until
/// none is left or `KILL_PATIENCE` is up. Whether none is left.
pub fn kill_leftovers(r: &NsRecord) -> bool {
    let deadline = Instant::now() + KILL_PATIENCE;
    if let Some(cg) = own_cgroup(r) {
        if let Err(e) = crate::cgroup::kill(cg) {
            tracing::warn!(ns = %r.label(), error = %e, "cannot kill a dead run's cgroup");
        }
        crate::cgroup::wait_empty(cg, KILL_PATIENCE);
    }
    let Some(id) = r.id else { return own_cgroup(r).is_none_or(|cg| !crate::cgroup::populated(cg)) };
    // Logged once per look, however many rounds a forking survivor costs.
    tracing::info!(ns = %r.label(), "processes of a run outlived its keeper or its init: killing them");
    loop {
        let left: Vec<i32> = members_of(id).collect();
        let in_cgroup = own_cgroup(r).is_some_and(crate::cgroup::populated);
        if left.is_empty() && !in_cgroup {
            return true;
        }
        if Instant::now() >= deadline {
            tracing::warn!(ns = %r.label(), processes = left.len(), "processes of a dead run survive SIGKILL: its record, ids and cgroup are kept");
            return false;
        }
        let mut fds = Vec::new();
        for pid in left {
            let Some(p) = rustix::process::Pid::from_raw(pid) else { continue };
            let Ok(fd) = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) else { continue };
            if pidfd_within(&fd, id) && rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL).is_ok() {
                fds.push(fd);
            }
        }
        if let Some(cg) = own_cgroup(r) {
            let _ = crate::cgroup::kill(cg);
        }
        wait_exited(&fds, deadline);
    }
}

/// Waits until every pidfd in `fds` is readable (its process exited), or
/// `deadline`.
pub fn wait_exited(fds: &[OwnedFd], deadline: Instant) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    for fd in fds {
        let left = deadline.saturating_duration_since(Instant::now());
        let t = Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
        let mut p = [PollFd::new(fd, PollFlags::IN)];
        let _ = rustix::io::retry_on_intr(|| poll(&mut p, Some(&t)));
    }
    // A killed process may stay a zombie a moment: seen as gone next look.
    std::thread::sleep(Duration::from_millis(2));
}

/// Whether the record `r` may be freed: nothing of its namespace is left,
/// or what was left of a dead run was killed now.
pub fn may_free(r: &NsRecord) -> bool {
    match r.fate(seen(r)) {
        Fate::Keep => false,
        Fate::Free => true,
        Fate::Kill => kill_leftovers(r),
    }
}

/// The id ranges devns allocates from, per `/etc/subuid`-format `file`:
/// root's, or with none of root's, the rest but other users' ranges.
pub fn subid_ranges(file: &str) -> Vec<devns_core::subid::Range> {
    fs::read_to_string(file).map(|t| devns_core::subid::ranges_for_root(&t)).unwrap_or_default()
}

/// The host's overflow uid and gid: what unmapped ids show as.
pub fn overflow_ids() -> (u32, u32) {
    let read = |f: &str| fs::read_to_string(f).ok().and_then(|s| s.trim().parse().ok());
    (
        read("/proc/sys/kernel/overflowuid").unwrap_or(devns_core::view::DEFAULT_OVERFLOW_ID),
        read("/proc/sys/kernel/overflowgid").unwrap_or(devns_core::view::DEFAULT_OVERFLOW_ID),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ancestry_starts_with_this_process_then_its_parent() {
        let me = current_keeper().unwrap();
        let chain = ancestry(me.pid, 2);
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].keeper, me);
        let parent = rustix::process::getppid().unwrap().as_raw_nonzero().get();
        assert_eq!(chain[1].keeper.pid, parent);
        assert_eq!(chain[0].user_ns, user_ns_of(me.pid).unwrap().0);
        assert!(ancestry(i32::MAX, 4).is_empty());
    }

    #[test]
    fn a_keeper_is_alive_only_with_its_own_start_time() {
        let me = current_keeper().unwrap();
        assert!(keeper_alive(&me));
        assert!(!keeper_alive(&Keeper { start_time: me.start_time + 1, ..me }));
        assert!(!keeper_alive(&Keeper { pid: i32::MAX, ..me }));
    }

    #[test]
    fn the_census_finds_this_process_in_its_own_namespace_and_no_other() {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let own = user_ns_of(me).unwrap();
        assert!(members_of(own).any(|p| p == me));
        assert!(!members_of(NsId(u64::MAX)).any(|p| p == me));
        let pidfd =
            rustix::process::pidfd_open(rustix::process::getpid(), rustix::process::PidfdFlags::empty()).unwrap();
        assert!(pidfd_within(&pidfd, own));
        assert!(!pidfd_within(&pidfd, NsId(u64::MAX)));
    }
}
