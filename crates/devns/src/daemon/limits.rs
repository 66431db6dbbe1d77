//! What bounds the daemon's clients: its fd count and limit, and a budget
//! for the log lines callers other than host root can cause.

use std::time::{Duration, Instant};

/// The daemon's open fds (since Linux 6.2 the size of `/proc/self/fd`,
/// a count the kernel keeps; before, by listing it).
pub fn open_fds() -> u64 {
    match rustix::fs::stat("/proc/self/fd") {
        Ok(st) if st.st_size > 0 => st.st_size as u64,
        _ => std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
    }
}

/// The daemon's fd limit (`RLIMIT_NOFILE`, soft).
pub fn fd_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Raises the soft fd limit to the hard one: mediation and connections
/// share it, and the default soft limit (1,024) is far below what the
/// kernel allows root.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::warn!(error = %e, "cannot raise the fd limit to the hard limit");
        }
    }
}

/// A budget for log lines that callers other than host root can cause,
/// so that they cannot flood the host's log.
pub struct LogLimit {
    window: Instant,
    count: u32,
}

impl LogLimit {
    const PER_SECOND: u32 = 20;

    pub fn new() -> LogLimit {
        LogLimit { window: Instant::now(), count: 0 }
    }

    /// Whether one more line may be logged now.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.count = 0;
        }
        self.count += 1;
        self.count <= Self::PER_SECOND
    }
}
