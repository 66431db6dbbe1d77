//! The caller's identity, taken on by the agent's thread for the moment it
//! acts for the caller: its fsuid, fsgid, supplementary groups and umask,
//! with `CAP_MKNOD` kept of all the filesystem capabilities, so that
//! permission checks, ownership, the `setgid` directory rule and default
//! ACLs are the kernel's own. The switch itself is
//! [`devns_sys::procstate::AsFsIdentity`]: fsuid, fsgid, groups and
//! capabilities are the agent thread's; the umask is the process's, and the
//! agent's thread has it to itself (`devns run`'s terminal relay, the one
//! other thread devns has, leaves the `fs_struct` it would share).

use devns_core::seccomp::Creds;
use devns_sys::procstate::{AsFsIdentity, FsIdentity, OwnIdentity};
use rustix::io::Errno;

/// The agent thread's own identity, read once (which leaves it without
/// supplementary groups): what it goes back to after each call made as a
/// caller.
pub type Base = OwnIdentity;

/// The agent's thread as the caller `c` while this lives; its own
/// identity (`base`) back on drop.
pub struct AsCaller<'a> {
    _as: AsFsIdentity<'a>,
}

impl AsCaller<'_> {
    #[inline]
    pub fn become_<'a>(c: &Creds, base: &'a Base) -> Result<AsCaller<'a>, Errno> {
        let id = FsIdentity { fsuid: c.fsuid, fsgid: c.fsgid, groups: &c.groups, umask: c.umask };
        Ok(AsCaller { _as: AsFsIdentity::take(&id, base)? })
    }
}
