//! Where the agent makes a device node for a container, and what a call
//! it does not make answers.
//!
//! Nodes are made only on the filesystems devns made for the caller's
//! namespace: its view (also through `mount -t devtmpfs`, which mounts the
//! same superblock) and the private `/tmp` of `devns run`. Both die with
//! the namespace, so no node of the container's outlives it. Any other
//! filesystem where a node would work is the host's (the container's own
//! mounts are `SB_I_NODEV`, their nodes never open): a node left there
//! would outlive the namespace and its ownership, and host processes are
//! under no device policy. The allowed set is known exactly, so nothing is
//! ever created to find out whether nodes work somewhere.
//!
//! A call that is not made answers what a native `mknod` in a user
//! namespace answers: the kernel's checks that come before the capability
//! (the name exists, the mount is read-only, the caller may not write the
//! directory), in the kernel's order, else `EPERM`.

use crate::DevId;

/// The filesystem that would hold a node, as the shell found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The namespace's view (one superblock, however often mounted).
    View,
    /// The private `/tmp` devns made for the namespace.
    Tmp,
    /// Anything else: the host's, or one the container mounted.
    Other,
}

/// What the agent knows of one trapped `mknod` of a device.
#[derive(Clone, Copy, Debug)]
pub struct Facts {
    pub dev: DevId,
    /// The caller has `CAP_MKNOD` in its user namespace.
    pub cap_mknod: bool,
    /// The device is global or owned by the caller's namespace.
    pub may_have: bool,
    pub place: Place,
    /// The mount that holds the directory is `nodev`.
    pub nodev: bool,
}

/// Why a node is not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NoCapMknod,
    NotItsDevice(DevId),
    NotItsFilesystem,
    Nodev,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NoCapMknod => f.write_str("no CAP_MKNOD in its namespace"),
            Refusal::NotItsDevice(d) => write!(f, "{d} is neither global nor owned by the namespace"),
            Refusal::NotItsFilesystem => f.write_str(
                "not a filesystem devns made for the container (only its view and its /tmp hold its nodes: \
                 a node elsewhere would outlive the namespace)",
            ),
            Refusal::Nodev => f.write_str("the mount is nodev: a node there would not open"),
        }
    }
}

/// Whether the node is made: `Ok` to make it (as the caller, who then
/// meets the kernel's own checks), else why not.
pub fn decide(f: &Facts) -> Result<(), Refusal> {
    if !f.cap_mknod {
        return Err(Refusal::NoCapMknod);
    }
    if !f.may_have {
        return Err(Refusal::NotItsDevice(f.dev));
    }
    match (f.place, f.nodev) {
        (Place::Other, _) => Err(Refusal::NotItsFilesystem),
        (_, true) => Err(Refusal::Nodev),
        (Place::View | Place::Tmp, false) => Ok(()),
    }
}

/// What the kernel checks before it asks for the capability to make a
/// device, as found out without creating anything.
#[derive(Clone, Copy, Debug)]
pub struct Before {
    /// Something (anything, a dangling symlink too) has the name.
    pub exists: bool,
    /// The mount or the filesystem is read-only.
    pub read_only: bool,
    /// The caller's own access check for write and search on the
    /// directory: `Err(errno)` when it fails.
    pub may_write: Result<(), i32>,
}

/// The errno a native `mknod` of a device answers the caller, in a user
/// namespace (which has no `CAP_MKNOD` of the host's): the first failing
/// check in the kernel's order (`filename_create`, then `may_create`),
/// else `EPERM`.
pub fn native_refusal(b: &Before) -> i32 {
    const EPERM: i32 = 1;
    const EEXIST: i32 = 17;
    const EROFS: i32 = 30;
    if b.exists {
        EEXIST
    } else if b.read_only {
        EROFS
    } else if let Err(e) = b.may_write {
        e
    } else {
        EPERM
    }
}

/// A whiteout (`c 0 0`, what overlayfs makes for a removed name): the
/// kernel lets anyone who may write the directory make one, with no
/// capability and no device check, so the kernel's answer is the native
/// one and the agent leaves the call to it.
pub fn is_whiteout(dev: DevId) -> bool {
    dev.kind == crate::Kind::Char && dev.major == 0 && dev.minor == 0
}

/// The caller's pid and thread id as a procfs of one of its pid
/// namespaces shows them (what that procfs's `self` and `thread-self`
/// name for it): `depth` namespaces up from its own, read from its
/// `/proc/TID/status` (`NStgid:` and `NSpid:` list them outermost first).
pub fn ids_in_pid_ns(status: &[u8], depth: usize) -> Option<(u32, u32)> {
    let (tgids, pids) = (numbers(status, b"NStgid:")?, numbers(status, b"NSpid:")?);
    let at = |v: &[u32]| v.len().checked_sub(depth + 1).and_then(|i| v.get(i).copied());
    Some((at(&tgids)?, at(&pids)?))
}

/// Whether a process whose `/proc/PID/status` is `status` has real,
/// effective and saved uid `fsuid` and gids `fsgid`: the kernel then lets
/// a caller with that fsuid and fsgid follow its magic links without
/// `CAP_SYS_PTRACE` (`__ptrace_may_access`, `PTRACE_MODE_FSCREDS`).
pub fn ids_match(status: &[u8], fsuid: u32, fsgid: u32) -> bool {
    let all = |key: &[u8], id: u32| {
        numbers(status, key).is_some_and(|ids| ids.len() >= 3 && ids[..3].iter().all(|i| *i == id))
    };
    all(b"Uid:", fsuid) && all(b"Gid:", fsgid)
}

/// Whether the process whose `/proc/PID/status` is `status` is dumpable,
/// told from the owner of a file in its `/proc/PID` (`status`): the kernel
/// shows a dumpable process's as its effective ids and a non-dumpable one's as
/// root of the user namespace of its memory (`task_dump_owner`). Only a
/// dumpable process's magic links are followed for a container: following
/// a non-dumpable one's needs `CAP_SYS_PTRACE` over the user namespace of
/// its memory, which for devns's init is the host's.
pub fn dumpable(status: &[u8], owner_uid: u32, owner_gid: u32) -> bool {
    let effective = |key: &[u8]| numbers(status, key).and_then(|ids| ids.get(1).copied());
    effective(b"Uid:") == Some(owner_uid) && effective(b"Gid:") == Some(owner_gid)
}

/// The numbers of the first `/proc/PID/status` line that starts with
/// `key` (`Uid:`, `NSpid:`, ...); `None` without it or when one is not a
/// number.
fn numbers(status: &[u8], key: &[u8]) -> Option<Vec<u32>> {
    let line = status.split(|b| *b == b'\n').find_map(|l| l.strip_prefix(key))?;
    std::str::from_utf8(line).ok()?.split_ascii_whitespace().map(|n| n.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;

    fn facts(place: Place) -> Facts {
        Facts { dev: DevId::new(Kind::Block, 7, 3), cap_mknod: true, may_have: true, place, nodev: false }
    }

    #[test]
    fn a_process_is_dumpable_when_its_proc_dir_has_its_effective_ids() {
        let status = b"Name:\tinit\nUid:\t100000\t100001\t100000\t100000\nGid:\t100005\t100006\t100005\t100005\n";
        assert!(dumpable(status, 100001, 100006));
        assert!(!dumpable(status, 0, 0), "owned by host root: non-dumpable, memory of the host's namespace");
        assert!(!dumpable(status, 100001, 0));
        assert!(!dumpable(b"Name:\tx\n", 0, 0));
    }

    #[test]
    fn nodes_go_only_on_the_namespace_s_own_filesystems() {
        assert_eq!(decide(&facts(Place::View)), Ok(()));
        assert_eq!(decide(&facts(Place::Tmp)), Ok(()));
        assert_eq!(decide(&facts(Place::Other)), Err(Refusal::NotItsFilesystem));
        // A global device too: the host's filesystems are the host's.
        let null = Facts { dev: DevId::new(Kind::Char, 1, 3), ..facts(Place::Other) };
        assert_eq!(decide(&null), Err(Refusal::NotItsFilesystem));
        assert_eq!(decide(&Facts { nodev: true, ..facts(Place::Tmp) }), Err(Refusal::Nodev));
    }

    #[test]
    fn capability_then_device_then_filesystem() {
        let f = Facts { cap_mknod: false, may_have: false, ..facts(Place::Other) };
        assert_eq!(decide(&f), Err(Refusal::NoCapMknod));
        let f = Facts { may_have: false, ..facts(Place::Other) };
        assert_eq!(decide(&f), Err(Refusal::NotItsDevice(f.dev)));
        assert!(Refusal::NotItsDevice(f.dev).to_string().contains("neither global nor owned"));
    }

    #[test]
    fn a_refusal_answers_the_kernel_s_earlier_checks_in_its_order() {
        let b = |exists, read_only, may_write| native_refusal(&Before { exists, read_only, may_write });
        assert_eq!(b(true, true, Err(13)), 17, "EEXIST before EROFS and EACCES");
        assert_eq!(b(false, true, Err(13)), 30, "EROFS before EACCES");
        assert_eq!(b(false, false, Err(13)), 13);
        assert_eq!(b(false, false, Ok(())), 1, "else EPERM");
    }

    #[test]
    fn only_c_0_0_is_a_whiteout() {
        assert!(is_whiteout(DevId::new(Kind::Char, 0, 0)));
        for d in [DevId::new(Kind::Block, 0, 0), DevId::new(Kind::Char, 0, 1), DevId::new(Kind::Char, 1, 0)] {
            assert!(!is_whiteout(d), "{d}");
        }
    }

    #[test]
    fn the_caller_s_ids_in_each_of_its_pid_namespaces() {
        let status = b"Name:\tsh\nTgid:\t900\nNStgid:\t900\t12\t1\nPid:\t901\nNSpid:\t901\t13\t2\nNSpgid:\t900\n";
        assert_eq!(ids_in_pid_ns(status, 0), Some((1, 2)), "its own namespace");
        assert_eq!(ids_in_pid_ns(status, 1), Some((12, 13)));
        assert_eq!(ids_in_pid_ns(status, 2), Some((900, 901)), "the host's");
        assert_eq!(ids_in_pid_ns(status, 3), None, "above the host's");
        assert_eq!(ids_in_pid_ns(b"NStgid:\t1\n", 0), None, "no NSpid");
        assert_eq!(ids_in_pid_ns(b"NStgid:\tx\nNSpid:\t1\n", 0), None);
    }

    #[test]
    fn ids_match_only_when_real_effective_and_saved_all_do() {
        let st = |u: &str, g: &str| format!("Name:\tsh\nUid:\t{u}\nGid:\t{g}\n").into_bytes();
        assert!(ids_match(&st("5\t5\t5\t5", "6\t6\t6\t6"), 5, 6));
        assert!(ids_match(&st("5\t5\t5\t0", "6\t6\t6\t1"), 5, 6), "the target's fs ids do not count");
        assert!(!ids_match(&st("5\t0\t5\t5", "6\t6\t6\t6"), 5, 6));
        assert!(!ids_match(&st("5\t5\t5\t5", "6\t6\t7\t6"), 5, 6));
        assert!(!ids_match(b"Uid:\t5\t5\t5\t5\n", 5, 6), "no Gid line");
        assert!(!ids_match(&st("5\t5", "6\t6"), 5, 6));
    }
}
