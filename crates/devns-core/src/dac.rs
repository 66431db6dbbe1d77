//! Which of its capabilities the kernel counts for a caller over one
//! inode when its own ids are refused there: the rule of the kernel's
//! `capable_wrt_inode_uidgid` (`kernel/capability.c`), which
//! `generic_permission` (`fs/namei.c`) asks for `CAP_DAC_READ_SEARCH`
//! (a directory's search) and `CAP_DAC_OVERRIDE` (any access to a
//! directory), and `mode_strip_sgid` for `CAP_FSETID` (a new node keeping
//! `S_ISGID` in a setgid directory whose group is not the caller's).
//!
//! A capability counts iff the caller has it effective in its own user
//! namespace and the inode's owner and group are both mapped there. The
//! agent acts from the initial namespace, where every capability would
//! count over every inode, so it raises one only where this says so.

use crate::idmap::IdMap;
use crate::seccomp::Creds;

pub const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_FSETID: u32 = 4;

/// The capabilities that can change a permission answer on the way to
/// and at a `mknod`: a caller with none of them effective needs no look
/// at its id maps.
pub const OVER_INODES: [u32; 3] = [CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FSETID];

/// A set of capabilities, bit N for capability N (as in `CapEff`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps(pub u64);

impl Caps {
    pub fn contains(self, cap: u32) -> bool {
        self.0 & (1 << cap) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Whether the caller has any capability whose counting depends on the
/// inode (so whether its id maps are worth reading).
pub fn may_count(creds: &Creds) -> bool {
    OVER_INODES.iter().any(|c| creds.has_cap(*c))
}

/// The capabilities of [`OVER_INODES`] that the kernel counts for the
/// caller (`creds`, its user namespace's `uid_map` and `gid_map`) over an
/// inode of host owner `uid` and group `gid` (as the initial namespace
/// sees them, through the mount's id mapping).
pub fn over_inode(creds: &Creds, uid_map: &IdMap, gid_map: &IdMap, uid: u32, gid: u32) -> Caps {
    if uid_map.to_inside(uid).is_none() || gid_map.to_inside(gid).is_none() {
        return Caps(0);
    }
    Caps(OVER_INODES.iter().filter(|c| creds.has_cap(**c)).fold(0, |m, c| m | (1 << c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(caps: &[u32]) -> Creds {
        Creds { cap_eff: caps.iter().fold(0, |m, c| m | (1 << c)), ..Creds::default() }
    }

    fn map(outside: u32) -> IdMap {
        IdMap::single(outside, 65536)
    }

    #[test]
    fn counts_only_capabilities_held_over_inodes_whose_ids_are_both_mapped() {
        let all = creds(&[CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FSETID, crate::seccomp::CAP_MKNOD]);
        let (u, g) = (map(100_000), map(100_000));
        let three = Caps((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH) | (1 << CAP_FSETID));
        assert_eq!(over_inode(&all, &u, &g, 101_000, 101_000), three);
        assert_eq!(over_inode(&all, &u, &g, 100_000, 165_535), three);
        // An owner or a group the namespace does not map: nothing counts.
        for (uid, gid) in [(0, 100_000), (100_000, 0), (99_999, 101_000), (101_000, 165_536), (0, 0)] {
            assert!(over_inode(&all, &u, &g, uid, gid).is_empty(), "{uid}:{gid}");
        }
        // Only what is held counts, and only those three.
        let rs = over_inode(&creds(&[CAP_DAC_READ_SEARCH]), &u, &g, 100_000, 100_000);
        assert!(rs.contains(CAP_DAC_READ_SEARCH) && !rs.contains(CAP_DAC_OVERRIDE) && !rs.contains(CAP_FSETID));
        assert!(over_inode(&creds(&[crate::seccomp::CAP_MKNOD]), &u, &g, 100_000, 100_000).is_empty());
        // The maps are the caller's own: a gid map apart from the uid map.
        assert!(over_inode(&all, &u, &map(200_000), 100_000, 100_000).is_empty());
        assert_eq!(over_inode(&all, &u, &map(200_000), 100_000, 200_000), three);
    }

    #[test]
    fn a_caller_without_any_of_them_needs_no_look_at_its_maps() {
        assert!(!may_count(&creds(&[crate::seccomp::CAP_MKNOD, crate::seccomp::CAP_SYS_ADMIN])));
        for c in OVER_INODES {
            assert!(may_count(&creds(&[c])));
        }
    }
}
