//! Per-thread filesystem credentials, so that a node devns makes for a
//! container is checked and owned as if the container had made it.
//! glibc's wrappers change every thread; these raw calls change only the
//! calling one, which is what an emulating agent needs.

use rustix::io;

use crate::last_errno;

fn raw(nr: libc::c_long, a: libc::c_long) -> libc::c_long {
    // SAFETY: setfsuid/setfsgid take one integer and touch no memory.
    unsafe { libc::syscall(nr, a) }
}

/// Sets the thread's fsuid; returns the previous one. (The call cannot
/// report failure; the caller checks by setting again.)
pub fn set_fsuid(uid: u32) -> u32 {
    raw(libc::SYS_setfsuid, uid as libc::c_long) as u32
}

pub fn set_fsgid(gid: u32) -> u32 {
    raw(libc::SYS_setfsgid, gid as libc::c_long) as u32
}

/// The thread's supplementary groups.
pub fn set_groups(groups: &[u32]) -> io::Result<()> {
    // SAFETY: `groups` is a live slice of gid_t-sized values of that length.
    let r = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if r < 0 { Err(last_errno()) } else { Ok(()) }
}
