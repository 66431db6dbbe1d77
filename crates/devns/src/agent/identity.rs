//! The caller's identity, taken on by the agent's thread for the moment it
//! acts for the caller: its fsuid, fsgid, supplementary groups and umask,
//! with `CAP_MKNOD` kept of all the filesystem capabilities, so that
//! permission checks, ownership, the `setgid` directory rule and default
//! ACLs are the kernel's own. The switch itself is
//! [`devns_sys::procstate::AsFsIdentity`]: fsuid, fsgid, groups and
//! capabilities are the agent thread's; the umask is the process's, and the
//! agent's thread has it to itself (`devns run`'s terminal relay, the one
//! other thread devns has, leaves the `fs_struct` it would share).
//!
//! The caller's capabilities over inodes (`CAP_DAC_OVERRIDE`,
//! `CAP_DAC_READ_SEARCH`, `CAP_FSETID`) count only over inodes whose owner
//! and group its namespace maps ([`devns_core::dac`]); the agent, in the
//! initial namespace, would have them count everywhere. So the kernel
//! first checks each step with the caller's ids alone; only where that is
//! refused, and only for a step that checks one inode, is the step tried
//! again with those of the caller's capabilities raised that count over
//! that inode ([`AsCaller::over`]).

use super::caller::Caller;
use devns_core::dac;
use devns_core::seccomp::Creds;
use devns_sys::procstate::{AsFsIdentity, FsIdentity, OwnIdentity};
use rustix::fd::AsFd;
use rustix::io::Errno;
use rustix::thread::CapabilitySet;

/// The agent thread's own identity, read once (which leaves it without
/// supplementary groups): what it goes back to after each call made as a
/// caller.
pub type Base = OwnIdentity;

/// The agent's thread as the caller `c` while this lives; its own
/// identity (`base`) back on drop.
pub struct AsCaller<'a> {
    as_: AsFsIdentity<'a>,
    /// Whether the caller has any capability that can count over an inode.
    may_count: bool,
}

impl AsCaller<'_> {
    #[inline]
    pub fn become_<'a>(c: &Creds, base: &'a Base) -> Result<AsCaller<'a>, Errno> {
        let id = FsIdentity { fsuid: c.fsuid, fsgid: c.fsgid, groups: &c.groups, umask: c.umask };
        Ok(AsCaller { as_: AsFsIdentity::take(&id, base)?, may_count: dac::may_count(c) })
    }

    /// `op`, an operation whose permission checks are on `inode` alone
    /// (a lookup of one name in it, `mknodat` in it, `faccessat` of it), as
    /// the caller: first with its ids alone, and where refused (`EACCES`)
    /// once more with the capabilities the kernel counts for it over
    /// `inode`, if any. Capabilities only ever grant, so an operation
    /// allowed without them is allowed with them.
    pub fn over<T>(
        &self,
        c: &Caller<'_>,
        inode: impl AsFd,
        mut op: impl FnMut() -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        match op() {
            // Unreadable maps (the caller gone): refused as without them.
            Err(Errno::ACCESS) if self.may_count => match self.counted(c, inode).ok().flatten() {
                None => Err(Errno::ACCESS),
                Some(caps) => {
                    let _raised = self.as_.raise(caps)?;
                    op()
                }
            },
            r => r,
        }
    }

    /// `op` with the capabilities counted over `inode` raised from the
    /// start: for one whose outcome they change without a refusal
    /// (`CAP_FSETID` keeping a new node's `S_ISGID`).
    pub fn over_eagerly<T>(
        &self,
        c: &Caller<'_>,
        inode: impl AsFd,
        op: impl FnOnce() -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        if !self.may_count {
            return op();
        }
        match self.counted(c, inode)? {
            Some(caps) => {
                let _raised = self.as_.raise(caps)?;
                op()
            }
            _ => op(),
        }
    }

    /// The capabilities the kernel counts for caller `c` over `inode`.
    fn counted(&self, c: &Caller<'_>, inode: impl AsFd) -> Result<Option<CapabilitySet>, Errno> {
        let st = rustix::fs::fstat(inode)?;
        let (uid_map, gid_map) = c.id_maps()?;
        let caps = dac::over_inode(&c.creds, &uid_map, &gid_map, st.st_uid, st.st_gid);
        let set = [
            (dac::CAP_DAC_OVERRIDE, CapabilitySet::DAC_OVERRIDE),
            (dac::CAP_DAC_READ_SEARCH, CapabilitySet::DAC_READ_SEARCH),
            (dac::CAP_FSETID, CapabilitySet::FSETID),
        ]
        .into_iter()
        .filter(|(n, _)| caps.contains(*n))
        .fold(CapabilitySet::empty(), |s, (_, c)| s | c);
        Ok((!set.is_empty()).then_some(set))
    }
}
