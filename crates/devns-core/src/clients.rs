//! Who may hold a connection to the daemon's socket, for how long, and how
//! much it may leave unread. The socket is world-connectable (what a caller
//! may do is decided per request), so these rules make sure that nothing
//! callers other than host root do with it (idle connections, requests
//! never finished, replies never read) decides whether host root is served
//! or whether containers' trapped calls get the file descriptors they need.

use std::time::{Duration, Instant};

/// Connections one host uid other than host root may hold at once.
pub const PER_UID: usize = 16;
/// Connections all callers other than host root may hold together.
pub const NON_ROOT: usize = 256;
/// How long a request may take to arrive once it has begun (anyone).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long a connection of a caller other than host root may make no
/// progress (send nothing, or take none of what is queued for it).
pub const IDLE_DEADLINE: Duration = Duration::from_secs(10);
/// Replies and events queued for host root's connection, at most.
pub const ROOT_QUEUED: usize = 4 << 20;
/// Replies and events queued for anyone else's, at most.
pub const USER_QUEUED: usize = 64 << 10;

/// A connection's caller, as its limits see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Caller {
    /// Host root: uid 0 in the initial user namespace.
    Root,
    /// Anyone else, by host uid (a container's processes included, also
    /// one whose root is host uid 0).
    User(u32),
}

impl Caller {
    /// Queued output past which the connection is closed (one reply or
    /// event always fits an empty queue).
    pub fn max_queued(self) -> usize {
        match self {
            Caller::Root => ROOT_QUEUED,
            Caller::User(_) => USER_QUEUED,
        }
    }
}

/// How the daemon's fds are shared, from its `RLIMIT_NOFILE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Open fds from which no caller but host root gets a new connection:
    /// half of what is not the reserve, so others never hold what root
    /// needs.
    pub user_fds: u64,
    /// Open fds from which nobody gets one: the rest is kept for the
    /// mediation of containers' trapped calls (their `/proc` files, the
    /// fds fetched from them, loop-control) and for new containers.
    pub any_fds: u64,
    /// Connections all callers other than host root may hold together.
    pub non_root: usize,
}

impl Budget {
    pub fn of_limit(fd_limit: u64) -> Budget {
        let any_fds = fd_limit.saturating_sub((fd_limit / 8).max(32));
        Budget {
            user_fds: any_fds / 2,
            any_fds,
            non_root: NON_ROOT.min(usize::try_from(fd_limit / 4).unwrap_or(usize::MAX)),
        }
    }
}

/// What holds the slots when a connection arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// The daemon's open fds, the new connection's included.
    pub open_fds: u64,
    /// Connections of callers other than host root.
    pub non_root: usize,
    /// Connections of the new one's uid (if it is not host root).
    pub of_uid: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many connections from uid {0} (at most {PER_UID} at once)")]
    PerUid(u32),
    #[error("too many connections from users other than root (at most {0} at once)")]
    NonRoot(usize),
    #[error("too many connections: the daemon keeps its remaining file descriptors for {0}")]
    Fds(&'static str),
}

/// Whether a new connection of `caller` is kept.
pub fn admit(caller: Caller, load: &Load, budget: &Budget) -> Result<(), Refusal> {
    match caller {
        Caller::Root if load.open_fds > budget.any_fds => Err(Refusal::Fds("containers' trapped calls")),
        Caller::Root => Ok(()),
        Caller::User(uid) if load.of_uid >= PER_UID => Err(Refusal::PerUid(uid)),
        Caller::User(_) if load.non_root >= budget.non_root => Err(Refusal::NonRoot(budget.non_root)),
        Caller::User(_) if load.open_fds > budget.user_fds => Err(Refusal::Fds("host root and containers")),
        Caller::User(_) => Ok(()),
    }
}

/// The deadlines a connection is under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts { request: REQUEST_DEADLINE, idle: IDLE_DEADLINE }
    }
}

/// What a connection is doing, as far as its deadline goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    pub caller: Caller,
    /// It asked for the event stream (long-lived by design).
    pub subscribed: bool,
    /// When the request it has begun (a partial line) began.
    pub partial_since: Option<Instant>,
    /// When it last sent something or took something queued for it.
    pub last_progress: Instant,
    /// Output is queued for it (and, until it reads, nothing more of its
    /// own is read).
    pub output_queued: bool,
}

/// When the connection is closed unless something happens first. A
/// partial line has the request deadline, whoever sent it. Host root's
/// connections may otherwise stay (root can stop the daemon anyway);
/// anyone else's close after the idle deadline without progress, except
/// an event subscription that keeps up with its events.
pub fn deadline(a: &Activity, t: &Timeouts) -> Option<Instant> {
    let partial = a.partial_since.map(|since| since + t.request);
    let idle = match a.caller {
        Caller::Root => None,
        Caller::User(_) if a.subscribed && !a.output_queued => None,
        Caller::User(_) => Some(a.last_progress + t.idle),
    };
    partial.into_iter().chain(idle).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: Load = Load { open_fds: 20, non_root: 0, of_uid: 0 };

    #[test]
    fn a_user_gets_its_share_and_no_more() {
        let b = Budget::of_limit(20_000);
        assert_eq!(admit(Caller::User(7), &Load { of_uid: PER_UID - 1, ..ROOM }, &b), Ok(()));
        assert_eq!(admit(Caller::User(7), &Load { of_uid: PER_UID, ..ROOM }, &b), Err(Refusal::PerUid(7)));
        let all = Load { non_root: NON_ROOT, ..ROOM };
        assert_eq!(admit(Caller::User(8), &all, &b), Err(Refusal::NonRoot(NON_ROOT)));
    }

    #[test]
    fn root_is_never_refused_for_what_others_hold() {
        for limit in [64, 1024, 4096, 20_000, 1 << 20] {
            let b = Budget::of_limit(limit);
            // Whatever others hold, they are refused before root would be.
            let others_full = Load { open_fds: b.user_fds + 1, non_root: b.non_root, of_uid: PER_UID };
            assert!(admit(Caller::User(1), &others_full, &b).is_err());
            assert!(b.user_fds < b.any_fds, "{limit}: root keeps room above the others' share");
            assert_eq!(admit(Caller::Root, &others_full, &b), Ok(()), "{limit}");
            // Mediation keeps a reserve even from root.
            assert!(b.any_fds + 32 <= limit, "{limit}");
            let root_full = Load { open_fds: b.any_fds + 1, ..ROOM };
            assert!(matches!(admit(Caller::Root, &root_full, &b), Err(Refusal::Fds(_))));
        }
    }

    #[test]
    fn at_1024_fds_others_hold_at_most_a_quarter_in_connections() {
        let b = Budget::of_limit(1024);
        assert_eq!(b.non_root, 256);
        assert_eq!(b.user_fds, 448);
        assert_eq!(b.any_fds, 896);
        let near = Load { open_fds: 449, ..ROOM };
        assert!(matches!(admit(Caller::User(3), &near, &b), Err(Refusal::Fds(_))));
        assert_eq!(admit(Caller::Root, &near, &b), Ok(()));
    }

    #[test]
    fn deadlines() {
        let t = Timeouts::default();
        let now = Instant::now();
        let a = Activity {
            caller: Caller::User(5),
            subscribed: false,
            partial_since: None,
            last_progress: now,
            output_queued: false,
        };
        assert_eq!(deadline(&a, &t), Some(now + IDLE_DEADLINE));
        let partial = Activity { partial_since: Some(now), ..a };
        assert_eq!(deadline(&partial, &t), Some(now + REQUEST_DEADLINE));
        let sub = Activity { subscribed: true, ..a };
        assert_eq!(deadline(&sub, &t), None, "a subscription that keeps up stays");
        let stalled = Activity { output_queued: true, ..sub };
        assert_eq!(deadline(&stalled, &t), Some(now + IDLE_DEADLINE), "one that does not read is closed");
        let root = Activity { caller: Caller::Root, output_queued: true, ..a };
        assert_eq!(deadline(&root, &t), None);
        assert_eq!(deadline(&Activity { partial_since: Some(now), ..root }, &t), Some(now + REQUEST_DEADLINE));
    }

    #[test]
    fn output_bounds() {
        assert!(Caller::User(1).max_queued() < Caller::Root.max_queued());
    }
}
