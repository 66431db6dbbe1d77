//! LXC containers expected to join: `lxc.hook.autodev` runs as the
//! container's root, in its namespaces, so devns takes its `join` only on
//! host root's word given just before (`lxc.hook.pre-start`, an `expect`):
//! the process that ran that hook (LXC's monitor) is recorded, and a join
//! is taken once, from a process whose nearest ancestor outside its user
//! namespace is that monitor, for the name the monitor's hook gave.
//!
//! A host user can make a user namespace of their own, but cannot make
//! host root's monitor its parent's parent: without this word, a join
//! would let any of them take loop devices and a view.

use crate::state::Keeper;
use std::time::{Duration, Instant};

/// How long a monitor's word holds: LXC runs autodev within a second of
/// pre-start; a container that never comes must not leave it open.
pub const EXPECT_FOR: Duration = Duration::from_secs(60);
/// Most containers expected at once (each a `devns hook lxc` of host
/// root's; a bound keeps a loop of them from growing the daemon).
pub const MAX_EXPECTED: usize = 1024;
/// Most ancestors walked from a joining process to its monitor: the hook,
/// a shell LXC may run it under, the container's init, the monitor.
pub const MAX_ANCESTRY: usize = 8;

/// A container host root expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub name: String,
    /// The id its `detach` names (`lxc/NAME`).
    pub container: String,
    pub devices: Vec<String>,
    /// The process that gave the word: LXC's monitor of the container.
    pub monitor: Keeper,
    pub until: Instant,
}

/// One process of a joining process's ancestry, the joining one first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proc {
    pub keeper: Keeper,
    /// Its user namespace's id.
    pub user_ns: u64,
}

/// Where a joining process stands: the process below the monitor (the
/// container's init, whose namespaces and cgroup are the container's),
/// and the monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lineage {
    pub init: Keeper,
    pub monitor: Keeper,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("the joining process is in the host's user namespace: a container joins from its own")]
    HostNamespace,
    #[error("no ancestor of the joining process within {MAX_ANCESTRY} is outside its user namespace")]
    NoMonitor,
    #[error("the joining process's monitor (process {0}) is not in the host's user namespace")]
    NestedMonitor(i32),
    #[error(
        "no LXC container {0:?} is expected from monitor process {1}: its config needs \
         lxc.hook.pre-start = devns hook lxc before autodev (devns lxc config prints the lines)"
    )]
    NotExpected(String, i32),
    #[error("{MAX_EXPECTED} LXC containers are expected already")]
    Full,
}

/// The monitor and init of `chain` (the joining process first, then each
/// parent): the first process outside the joining one's user namespace,
/// which must be the host's, and the one just below it.
pub fn lineage(chain: &[Proc], host_ns: u64) -> Result<Lineage, Refusal> {
    let own = chain.first().ok_or(Refusal::NoMonitor)?;
    if own.user_ns == host_ns {
        return Err(Refusal::HostNamespace);
    }
    let at = chain.iter().take(MAX_ANCESTRY).position(|p| p.user_ns != own.user_ns).ok_or(Refusal::NoMonitor)?;
    let monitor = chain[at];
    if monitor.user_ns != host_ns {
        return Err(Refusal::NestedMonitor(monitor.keeper.pid));
    }
    Ok(Lineage { init: chain[at - 1].keeper, monitor: monitor.keeper })
}

/// The containers expected now.
#[derive(Debug, Default)]
pub struct Expecting {
    entries: Vec<Expected>,
}

impl Expecting {
    /// Records `e`; a word of the same monitor for the same name replaces
    /// the earlier one (LXC ran the hook again).
    pub fn expect(&mut self, e: Expected, now: Instant) -> Result<(), Refusal> {
        self.entries.retain(|x| x.until > now && !(x.monitor == e.monitor && x.name == e.name));
        if self.entries.len() >= MAX_EXPECTED {
            return Err(Refusal::Full);
        }
        self.entries.push(e);
        Ok(())
    }

    /// Takes, once, the word `monitor` gave for `name`.
    pub fn take(&mut self, name: &str, monitor: Keeper, now: Instant) -> Result<Expected, Refusal> {
        self.entries.retain(|x| x.until > now);
        let i = self
            .entries
            .iter()
            .position(|x| x.name == name && x.monitor == monitor)
            .ok_or_else(|| Refusal::NotExpected(name.to_owned(), monitor.pid))?;
        Ok(self.entries.swap_remove(i))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: u64 = 1;
    const CT: u64 = 7;
    const MON: Keeper = Keeper { pid: 100, start_time: 5 };
    const INIT: Keeper = Keeper { pid: 101, start_time: 6 };
    const HOOK: Keeper = Keeper { pid: 102, start_time: 7 };

    fn p(keeper: Keeper, user_ns: u64) -> Proc {
        Proc { keeper, user_ns }
    }

    fn word(name: &str, monitor: Keeper, now: Instant) -> Expected {
        Expected {
            name: name.into(),
            container: format!("lxc/{name}"),
            devices: vec![],
            monitor,
            until: now + EXPECT_FOR,
        }
    }

    #[test]
    fn the_monitor_is_the_first_ancestor_outside_and_init_the_one_below_it() {
        let shell = Keeper { pid: 103, start_time: 8 };
        let chain = [p(shell, CT), p(HOOK, CT), p(INIT, CT), p(MON, HOST), p(Keeper { pid: 1, start_time: 1 }, HOST)];
        assert_eq!(lineage(&chain, HOST), Ok(Lineage { init: INIT, monitor: MON }));
    }

    #[test]
    fn a_lineage_is_refused_from_the_host_a_nested_namespace_or_too_deep() {
        assert_eq!(lineage(&[p(HOOK, HOST), p(MON, HOST)], HOST), Err(Refusal::HostNamespace));
        assert_eq!(lineage(&[], HOST), Err(Refusal::NoMonitor));
        // Its monitor in a user namespace of its own: not host root's.
        assert_eq!(lineage(&[p(HOOK, CT), p(INIT, CT), p(MON, 9)], HOST), Err(Refusal::NestedMonitor(100)));
        let deep: Vec<Proc> = (0..MAX_ANCESTRY as i32).map(|i| p(Keeper { pid: 200 + i, start_time: 1 }, CT)).collect();
        let mut deeper = deep.clone();
        deeper.push(p(MON, HOST));
        assert_eq!(lineage(&deep, HOST), Err(Refusal::NoMonitor));
        assert_eq!(lineage(&deeper, HOST), Err(Refusal::NoMonitor), "past the walk's bound");
    }

    #[test]
    fn a_word_is_taken_once_by_its_monitor_for_its_name() {
        let now = Instant::now();
        let mut x = Expecting::default();
        x.expect(word("web", MON, now), now).unwrap();
        let other = Keeper { pid: 100, start_time: 9 };
        assert_eq!(x.take("web", other, now), Err(Refusal::NotExpected("web".into(), 100)), "a reused pid");
        assert_eq!(x.take("db", MON, now), Err(Refusal::NotExpected("db".into(), 100)));
        assert_eq!(x.take("web", MON, now).unwrap().container, "lxc/web");
        assert!(x.take("web", MON, now).is_err(), "taken once");
        assert!(x.is_empty());
    }

    #[test]
    fn a_word_expires_and_a_repeated_one_replaces_the_first() {
        let now = Instant::now();
        let mut x = Expecting::default();
        x.expect(word("web", MON, now), now).unwrap();
        x.expect(Expected { devices: vec!["loop3".into()], ..word("web", MON, now) }, now).unwrap();
        assert_eq!(x.len(), 1);
        assert_eq!(x.take("web", MON, now).unwrap().devices, ["loop3"]);
        x.expect(word("web", MON, now), now).unwrap();
        assert!(x.take("web", MON, now + EXPECT_FOR).is_err(), "expired");
        assert!(x.is_empty());
    }

    #[test]
    fn the_words_are_bounded() {
        let now = Instant::now();
        let mut x = Expecting::default();
        for i in 0..MAX_EXPECTED {
            x.expect(word(&format!("c{i}"), MON, now), now).unwrap();
        }
        assert_eq!(x.expect(word("one-more", MON, now), now), Err(Refusal::Full));
        // Once the others expired, there is room again.
        let later = now + EXPECT_FOR;
        x.expect(word("one-more", MON, later), later).unwrap();
        assert_eq!(x.len(), 1);
    }
}
