//! `loop-control` for namespaces: what devns does with a container's
//! `LOOP_CTL_*` ioctl (behaviour 3 of DESIGN.md). The agent gathers the
//! facts (the kernel's, the registry's), this module decides, the agent
//! carries the decision out with the host's loop-control.

use crate::device::{DevId, Kind};
use crate::registry::{NsId, Owner, Registry};
use crate::seccomp::{LOOP_CTL_ADD, LOOP_CTL_GET_FREE, LOOP_CTL_REMOVE};
use serde::{Deserialize, Serialize};

/// The block major of loop devices.
pub const LOOP_MAJOR: u32 = 7;

/// Default for `loop_limit` in the config: loop devices per namespace.
pub const DEFAULT_LOOP_LIMIT: usize = 16;

/// Loop devices of dead namespaces that may wait for their removal (still
/// open somewhere: a process outside holds an fd) before devns makes no
/// new one for anybody. A device devns made is charged to its namespace
/// while that lives, then to this bound until it is removed.
pub const MAX_PENDING: usize = 64;

/// The first index devns tries for a device it makes for a namespace.
/// The kernel's `GET_FREE` (the host's `losetup -f`) answers the lowest
/// free device: numbered above the host's, a namespace's device (free to
/// the kernel until the namespace attaches it) comes after every free
/// device of the host's. Below 1024: busybox's `losetup -f` (Alpine's,
/// and LXC's busybox containers') takes `GET_FREE`'s answer only up to
/// loop1023.
pub const NS_LOOP_BASE: u32 = 512;

/// A loop device devns made for a namespace through `loop-control`:
/// detached and removed when the namespace dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LoopDev {
    /// N of `loopN`, as `LOOP_CTL_*` name it.
    pub index: u32,
    pub dev: DevId,
    /// Made by devns for the namespace: always, since devns lends no
    /// device of the host's. `false` only in records of an older devns,
    /// where it meant the host's device, lent: such a one is the host's,
    /// and is dropped from the record at death, never detached or removed.
    #[serde(default)]
    pub created: bool,
    /// The inode of its sysfs directory when devns made it: the device's
    /// for its life, so that a new device at the same index (same numbers)
    /// is never taken for it. Absent in older records (numbers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
}

impl LoopDev {
    /// Whether devns may detach and remove it: it made it.
    pub fn ours(&self) -> bool {
        self.created
    }

    /// Whether `dev` and `ino` (what is at its index now) are this device.
    pub fn is(&self, dev: Option<DevId>, ino: Option<u64>) -> bool {
        dev == Some(self.dev) && (self.ino.is_none() || ino == self.ino)
    }
}

/// `pending` with `more` added (each device once).
pub fn add_pending(pending: &mut Vec<LoopDev>, more: &[LoopDev]) {
    for l in more {
        if !pending.contains(l) {
            pending.push(*l);
        }
    }
}

/// One `LOOP_CTL_*` call, its argument read as the kernel reads it (an
/// `int` taken from the `unsigned long`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    GetFree,
    /// `None`: any index (a negative argument), as the kernel allows.
    Add(Option<u32>),
    Remove(i32),
}

impl Request {
    pub fn from_ioctl(cmd: u32, arg: u64) -> Option<Request> {
        let n = arg as u32 as i32;
        match cmd {
            LOOP_CTL_GET_FREE => Some(Request::GetFree),
            LOOP_CTL_ADD => Some(Request::Add(u32::try_from(n).ok())),
            LOOP_CTL_REMOVE => Some(Request::Remove(n)),
            _ => None,
        }
    }
}

/// What is known of `loopN` when a call names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    pub exists: bool,
    /// Attached to a backing file.
    pub bound: bool,
    pub owner: Owner,
}

/// The errno a refusal answers with (the native call's, where it has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errno {
    Perm,
    NoSpc,
    Exist,
    NoDev,
    Inval,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Make a new device (`LOOP_CTL_ADD`): loopN, or any free index.
    Create(Option<u32>),
    /// loopN is the caller's already, and free: answer N, change nothing.
    Answer(u32),
    /// `LOOP_CTL_REMOVE` N through the kernel (which answers `EBUSY` for a
    /// device in use), then forget it.
    Remove(u32),
    Refuse(Errno, String),
}

/// The loop devices (whole disks) `ns` owns, with their index (N of
/// `loopN`, when the name says).
pub fn owned_loops(registry: &Registry, ns: NsId) -> Vec<(DevId, Option<u32>)> {
    registry
        .devices()
        .filter(|d| is_loop(d.id) && !d.is_partition() && registry.owner(d.id) == Owner::Ns(ns))
        .map(|d| (d.id, d.name.strip_prefix("loop").and_then(|n| n.parse().ok())))
        .collect()
}

pub fn is_loop(dev: DevId) -> bool {
    dev.kind == Kind::Block && dev.major == LOOP_MAJOR
}

/// The calling namespace, as far as loop devices go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub ns: NsId,
    /// Loop devices it owns, and how many it may.
    pub have: usize,
    pub limit: usize,
    /// The lowest-numbered of its own devices that is detached.
    pub own_free: Option<u32>,
    /// Dead namespaces' devices still waiting for their removal.
    pub pending: usize,
}

/// The first step for `req` from `caller`; `facts(N)` tells of loopN.
pub fn decide(req: Request, caller: Caller, facts: impl Fn(u32) -> Facts) -> Step {
    let Caller { ns, have, limit, own_free, pending } = caller;
    let full = || Step::Refuse(Errno::NoSpc, format!("the namespace has {have} loop devices, the limit is {limit}"));
    let leaked = || {
        let why =
            format!("{pending} loop devices of dead namespaces are still open somewhere, the bound is {MAX_PENDING}");
        Step::Refuse(Errno::NoSpc, why)
    };
    match req {
        // Its own free device first: asking again gives the same answer,
        // as it does natively, and costs nothing against the limit. Else a
        // device made for it, never one of the host's free ones: a host
        // tool could attach that one (free to the kernel) while the
        // namespace prepares it, and the namespace would own the host's
        // file. The host's free devices stay the host's.
        Request::GetFree if own_free.is_some() => Step::Answer(own_free.expect("checked")),
        Request::GetFree if have >= limit => full(),
        Request::GetFree if pending >= MAX_PENDING => leaked(),
        Request::GetFree => Step::Create(None),
        Request::Add(_) if have >= limit => full(),
        // An existing device is never given, as the kernel answers for an
        // existing index: the host's (free or not) stays the host's, and
        // one another agent has just made is that agent's.
        Request::Add(Some(n)) => match facts(n) {
            f if !f.exists && pending >= MAX_PENDING => leaked(),
            f if !f.exists => Step::Create(Some(n)),
            f => {
                let why = match f.owner {
                    Owner::Ns(o) if o == ns => format!("loop{n} is already its own"),
                    Owner::Ns(o) => format!("loop{n} is owned by namespace {o}"),
                    Owner::Host => format!("loop{n} exists and is not the namespace's"),
                };
                Step::Refuse(Errno::Exist, why)
            }
        },
        Request::Add(None) if pending >= MAX_PENDING => leaked(),
        Request::Add(None) => Step::Create(None),
        Request::Remove(n) => {
            let Ok(n) = u32::try_from(n) else {
                return Step::Refuse(Errno::Inval, "removing an unspecified loop device".into());
            };
            let f = facts(n);
            match f.owner {
                _ if !f.exists => Step::Refuse(Errno::NoDev, format!("there is no loop{n}")),
                Owner::Ns(o) if o == ns => Step::Remove(n),
                Owner::Ns(o) => Step::Refuse(Errno::Perm, format!("loop{n} is owned by namespace {o}")),
                Owner::Host => Step::Refuse(Errno::Perm, format!("loop{n} is not the namespace's")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: NsId = NsId(10);
    const OTHER: NsId = NsId(11);

    fn facts(exists: bool, bound: bool, owner: Owner) -> Facts {
        Facts { exists, bound, owner }
    }

    fn me(have: usize, limit: usize) -> Caller {
        Caller { ns: ME, have, limit, own_free: None, pending: 0 }
    }

    #[test]
    fn reads_the_argument_as_the_kernel_does() {
        assert_eq!(Request::from_ioctl(LOOP_CTL_GET_FREE, 99), Some(Request::GetFree));
        assert_eq!(Request::from_ioctl(LOOP_CTL_ADD, 5), Some(Request::Add(Some(5))));
        assert_eq!(Request::from_ioctl(LOOP_CTL_ADD, u64::MAX), Some(Request::Add(None)));
        // The high half of the unsigned long is dropped.
        assert_eq!(Request::from_ioctl(LOOP_CTL_ADD, (7u64 << 32) | 3), Some(Request::Add(Some(3))));
        assert_eq!(Request::from_ioctl(LOOP_CTL_REMOVE, 0xffff_fffe), Some(Request::Remove(-2)));
        assert_eq!(Request::from_ioctl(0x4C00, 0), None);
    }

    #[test]
    fn get_free_gives_its_own_free_device_or_a_new_one_below_the_limit() {
        let none = |_| panic!("no facts needed");
        assert_eq!(decide(Request::GetFree, me(0, 16), none), Step::Create(None));
        assert!(matches!(decide(Request::GetFree, me(16, 16), none), Step::Refuse(Errno::NoSpc, _)));
        assert!(matches!(decide(Request::Add(Some(3)), me(2, 2), none), Step::Refuse(Errno::NoSpc, _)));
        // At the limit, its own free device is still the answer.
        let at_limit = Caller { own_free: Some(9), ..me(16, 16) };
        assert_eq!(decide(Request::GetFree, at_limit, none), Step::Answer(9));
    }

    #[test]
    fn add_makes_only_what_does_not_exist_and_never_lends_the_host_s() {
        let d = |f: Facts| decide(Request::Add(Some(7)), me(0, 16), move |_| f);
        assert_eq!(d(facts(false, false, Owner::Host)), Step::Create(Some(7)));
        // Free and detached, the host's: the kernel's answer for an
        // existing index (issue 17: it was lent, and then removable).
        assert!(matches!(d(facts(true, false, Owner::Host)), Step::Refuse(Errno::Exist, _)));
        assert!(matches!(d(facts(true, true, Owner::Host)), Step::Refuse(Errno::Exist, _)));
        assert!(matches!(d(facts(true, false, Owner::Ns(OTHER))), Step::Refuse(Errno::Exist, _)));
        assert!(matches!(d(facts(true, false, Owner::Ns(ME))), Step::Refuse(Errno::Exist, _)));
        assert_eq!(decide(Request::Add(None), me(0, 16), |_| unreachable!()), Step::Create(None));
    }

    #[test]
    fn dead_namespaces_devices_still_open_bound_what_is_made_for_anybody() {
        let none = |_| facts(false, false, Owner::Host);
        let full = Caller { pending: MAX_PENDING, ..me(0, 16) };
        for req in [Request::GetFree, Request::Add(None), Request::Add(Some(3))] {
            let s = decide(req, full, none);
            assert!(matches!(&s, Step::Refuse(Errno::NoSpc, why) if why.contains("still open")), "{s:?}");
            assert!(matches!(decide(req, Caller { pending: MAX_PENDING - 1, ..full }, none), Step::Create(_)));
        }
        // Its own free device is no new one; removal frees.
        assert_eq!(decide(Request::GetFree, Caller { own_free: Some(4), ..full }, none), Step::Answer(4));
        let own = |_| facts(true, false, Owner::Ns(ME));
        assert_eq!(decide(Request::Remove(4), Caller { have: 1, ..full }, own), Step::Remove(4));
    }

    #[test]
    fn a_device_is_known_by_numbers_and_sysfs_inode_and_old_lent_ones_are_not_ours() {
        let dev = DevId::new(Kind::Block, 7, 1024);
        let l = LoopDev { index: 1024, dev, created: true, ino: Some(77) };
        assert!(l.is(Some(dev), Some(77)));
        assert!(!l.is(Some(dev), Some(78)), "a new device at the same index");
        assert!(!l.is(None, None));
        assert!(LoopDev { ino: None, ..l }.is(Some(dev), Some(5)), "an older record: numbers only");
        // Records of an older devns still load; a lent device is not ours.
        let old: LoopDev = serde_json::from_str(r#"{"index":3,"dev":"b:7:3","created":false}"#).unwrap();
        assert!(!old.ours());
        assert_eq!(old.ino, None);
        let back: LoopDev = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back, l);
        let mut p = vec![l];
        add_pending(&mut p, &[l, old]);
        assert_eq!(p, [l, old]);
    }

    #[test]
    fn remove_is_the_owners_alone() {
        let d = |f: Facts| decide(Request::Remove(7), me(1, 16), move |_| f);
        assert_eq!(d(facts(true, false, Owner::Ns(ME))), Step::Remove(7));
        // Bound: the kernel answers EBUSY itself.
        assert_eq!(d(facts(true, true, Owner::Ns(ME))), Step::Remove(7));
        assert!(matches!(d(facts(true, false, Owner::Ns(OTHER))), Step::Refuse(Errno::Perm, _)));
        assert!(matches!(d(facts(true, false, Owner::Host)), Step::Refuse(Errno::Perm, _)));
        assert!(matches!(d(facts(false, false, Owner::Host)), Step::Refuse(Errno::NoDev, _)));
        assert!(matches!(decide(Request::Remove(-1), me(1, 16), |_| unreachable!()), Step::Refuse(Errno::Inval, _)));
        // Removal is allowed at the limit: it lowers the count.
        assert_eq!(decide(Request::Remove(7), me(16, 16), |_| facts(true, false, Owner::Ns(ME))), Step::Remove(7));
    }

    #[test]
    fn counts_whole_loop_disks_only() {
        use crate::registry::tests::{disk, part};
        let mut r = Registry::new([disk(0, "loop0"), part(1, "loop0p1", 0), disk(1, "loop1")], &[]);
        r.assign(DevId::new(Kind::Block, 7, 0), ME).unwrap();
        assert_eq!(owned_loops(&r, ME), [(DevId::new(Kind::Block, 7, 0), Some(0))]);
        assert_eq!(owned_loops(&r, OTHER), []);
    }
}
