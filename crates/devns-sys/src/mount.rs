//! `mount_setattr(2)`, which rustix does not wrap.

use rustix::fd::{AsFd, AsRawFd};
use rustix::io;

use crate::last_errno;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;

const AT_EMPTY_PATH: libc::c_int = 0x1000;
const AT_RECURSIVE: libc::c_int = 0x8000;

/// Sets `attrs` on the (detached or attached) mount tree `fd`.
pub fn set_attrs(fd: impl AsFd, attrs: u64) -> io::Result<()> {
    setattr(fd, attrs, AT_EMPTY_PATH | AT_RECURSIVE)
}

/// Sets `attrs` on mount `fd` alone, not on the mounts below it.
pub fn set_attrs_top(fd: impl AsFd, attrs: u64) -> io::Result<()> {
    setattr(fd, attrs, AT_EMPTY_PATH)
}

/// `MOUNT_ATTR_IDMAP`.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Makes the detached mount `fd` id-mapped by user namespace `userns`:
/// its files show, to that namespace, the ids they have on disk.
pub fn idmap(fd: impl AsFd, userns: impl AsFd) -> io::Result<()> {
    let fd_no = userns.as_fd().as_raw_fd();
    // An fd number is never negative.
    let a = MountAttr { attr_set: MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: fd_no as u64 };
    call_setattr(fd, &a, AT_EMPTY_PATH)
}

/// `MS_PRIVATE`, as `mount_setattr`'s propagation.
const MS_PRIVATE: u64 = 1 << 18;

/// Makes mount `fd` alone private (no propagation to or from peers): a
/// mount below a shared one cannot be moved (`EINVAL`).
pub fn make_private(fd: impl AsFd) -> io::Result<()> {
    call_setattr(fd, &MountAttr { attr_set: 0, attr_clr: 0, propagation: MS_PRIVATE, userns_fd: 0 }, AT_EMPTY_PATH)
}

fn setattr(fd: impl AsFd, attrs: u64, flags: libc::c_int) -> io::Result<()> {
    call_setattr(fd, &MountAttr { attr_set: attrs, attr_clr: 0, propagation: 0, userns_fd: 0 }, flags)
}

fn call_setattr(fd: impl AsFd, a: &MountAttr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `a` is a valid mount_attr of the size passed and outlives the
    // call; the path is a static empty C string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_fd().as_raw_fd(),
            c"".as_ptr(),
            flags,
            a as *const MountAttr,
            size_of::<MountAttr>(),
        )
    };
    if r < 0 { Err(last_errno()) } else { Ok(()) }
}

/// Moves mount `from` (a detached tree, or the root of an attached mount)
/// onto `to`, both fds (`move_mount(2)` with both `*_EMPTY_PATH`).
pub fn move_onto(from: impl AsFd, to: impl AsFd) -> io::Result<()> {
    use rustix::mount::MoveMountFlags as F;
    rustix::mount::move_mount(from, "", to, "", F::MOVE_MOUNT_F_EMPTY_PATH | F::MOVE_MOUNT_T_EMPTY_PATH)
}
