//! A decision's "no" as data: the errno a trapped call is answered with,
//! and why. The decisions behind the seccomp agent — loop-control's
//! ([`crate::loopctl::serve`]), a keeper's ([`crate::agent::Policy`]) —
//! return it; the agent alone logs it (rate-limited: a container cannot
//! flood the host's log) and answers. So a decision depends on no agent.

use rustix::io::Errno;
use std::borrow::Cow;

/// Why a trapped call gets an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub errno: Errno,
    /// The reason devns refused, for the log; `None` for a failure that is
    /// no refusal of devns's (the kernel's own answer, or devns's trouble,
    /// logged where it happened): answered without a line.
    pub why: Option<Cow<'static, str>>,
}

impl Refusal {
    /// A refusal by devns's policy, which the agent logs.
    pub fn new(errno: Errno, why: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal { errno, why: Some(why.into()) }
    }
}

/// A failure answered as it is.
impl From<Errno> for Refusal {
    fn from(errno: Errno) -> Refusal {
        Refusal { errno, why: None }
    }
}
