//! The default layout of devns's files, and how a directory left by an
//! older devns moves into it.
//!
//! `/run/devns` is the run directory, world-traversable (0755), holding
//! the sockets (`devns.sock`, 0666, which every host user and container
//! may reach; `seccomp.sock`, 0600, for runtimes; `lxc.sock`, 0600, for LXC monitors) and nothing
//! else but `state/`, the state directory (0700, root's), holding every
//! record, lock and mount. Before issue 13 the state lived in
//! `/run/devns` itself, made 0700, which left the socket below it
//! unreachable for anyone but root.

/// The run directory, parent of the sockets and the state directory.
pub const RUN_DIR: &str = "/run/devns";
/// The state directory's default (`--state-dir`, `DEVNS_STATE_DIR`).
pub const STATE_DIR: &str = "/run/devns/state";
/// The API socket's default (`--socket`, `DEVNS_SOCKET`).
pub const SOCKET: &str = "/run/devns/devns.sock";
/// The seccomp agent socket's name (`--seccomp-socket`,
/// `DEVNS_SECCOMP_SOCKET`, config `seccomp_socket`), beside the API
/// socket: what runtimes connect to for `linux.seccomp.listenerPath`.
pub const SECCOMP_SOCKET_NAME: &str = "seccomp.sock";

/// LXC's seccomp notify proxy socket (`lxc.seccomp.notify.proxy`):
/// `lxc.sock` beside the API socket (`/run/devns/lxc.sock` by default).
pub fn lxc_socket(api_socket: &std::path::Path) -> std::path::PathBuf {
    api_socket.parent().unwrap_or(std::path::Path::new("/")).join("lxc.sock")
}

/// The seccomp agent socket's default: `seccomp.sock` in the directory of
/// the API socket `api_socket` (`/run/devns/seccomp.sock` by default).
pub fn seccomp_socket(api_socket: &std::path::Path) -> std::path::PathBuf {
    api_socket.parent().unwrap_or(std::path::Path::new("/")).join(SECCOMP_SOCKET_NAME)
}
/// The run directory's mode: anyone may reach the sockets, nobody but
/// root may add, rename or remove anything there.
pub const RUN_DIR_MODE: u32 = 0o755;
/// The state directory's mode.
pub const STATE_DIR_MODE: u32 = 0o700;
/// The mode an older devns gave the run directory, which is changed.
pub const OLD_RUN_DIR_MODE: u32 = 0o700;

/// What an older devns kept in the run directory, by what becomes of it.
/// Moved into the state directory as they are (records keep their
/// names; a directory that is a mount point cannot be renamed and stays).
pub const MOVED: [&str; 6] = ["ns", "runs", "global.json", "pending-loops.json", "views", "cgroup2"];
/// Lock files: made again in the state directory, the old ones removed
/// once nothing holds them.
pub const LOCKS: [&str; 2] = ["lock", "daemon.lock"];

/// One step of moving an older devns's run directory into the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Rename `RUN_DIR/NAME` to `STATE_DIR/NAME`.
    Move(&'static str),
    /// Remove the lock file `RUN_DIR/NAME`.
    RemoveLock(&'static str),
    /// Give the run directory [`RUN_DIR_MODE`]: the last step, once no
    /// state is left in it.
    OpenRunDir,
}

/// The steps for a run directory of mode `mode` holding the entries
/// `present` (names), with `in_state` those the state directory holds
/// already (which are never overwritten: the old one then stays where it
/// is, unused).
pub fn migration(mode: u32, present: &[&str], in_state: &[&str]) -> Vec<Step> {
    let mut steps: Vec<Step> =
        MOVED.iter().filter(|n| present.contains(n) && !in_state.contains(n)).map(|n| Step::Move(n)).collect();
    steps.extend(LOCKS.iter().filter(|n| present.contains(n)).map(|n| Step::RemoveLock(n)));
    if mode & 0o7777 == OLD_RUN_DIR_MODE {
        steps.push(Step::OpenRunDir);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seccomp_socket_is_beside_the_api_socket() {
        assert_eq!(seccomp_socket(SOCKET.as_ref()), std::path::Path::new("/run/devns/seccomp.sock"));
        assert_eq!(seccomp_socket("/tmp/t/devns.sock".as_ref()), std::path::Path::new("/tmp/t/seccomp.sock"));
        assert_eq!(seccomp_socket("devns.sock".as_ref()), std::path::Path::new("seccomp.sock"));
    }

    #[test]
    fn an_older_run_directory_moves_its_state_and_then_opens() {
        let steps = migration(0o700, &["lock", "ns", "runs", "devns.sock", "global.json"], &[]);
        assert_eq!(
            steps,
            [
                Step::Move("ns"),
                Step::Move("runs"),
                Step::Move("global.json"),
                Step::RemoveLock("lock"),
                Step::OpenRunDir
            ]
        );
        assert_eq!(steps.last(), Some(&Step::OpenRunDir), "opened only after the state left it");
    }

    #[test]
    fn the_current_layout_needs_nothing_and_nothing_is_overwritten() {
        assert!(migration(0o755, &["state", "devns.sock"], &[]).is_empty());
        // A mode the operator chose is kept.
        assert!(migration(0o750, &["state"], &[]).is_empty());
        // Already in the state directory: the old one is not moved over it.
        assert_eq!(migration(0o755, &["ns", "state"], &["ns"]), []);
        // Unknown entries (the sockets, others' files) stay where they are.
        assert_eq!(migration(0o700, &["seccomp.sock", "lxc.sock", "other"], &[]), [Step::OpenRunDir]);
    }

    #[test]
    fn the_default_paths_are_the_layout() {
        assert_eq!(std::path::Path::new(STATE_DIR).parent(), Some(std::path::Path::new(RUN_DIR)));
        assert_eq!(std::path::Path::new(SOCKET).parent(), Some(std::path::Path::new(RUN_DIR)));
        assert_eq!(RUN_DIR_MODE & 0o022, 0, "nobody but root writes the run directory");
        assert_eq!(STATE_DIR_MODE & 0o077, 0, "nobody but root reads the state");
    }
}
