//! Loop-control and block-device ioctls: `LOOP_CTL_*`, `LOOP_CLR_FD`,
//! `BLKPG` and `BLKRRPART` (rustix wraps none of them).

use crate::last_errno;
use rustix::fd::{AsFd, AsRawFd};
use rustix::io;

const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_ADD: libc::c_ulong = 0x4C80;
const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;
const BLKRRPART: libc::c_ulong = 0x125F;
const BLKPG: libc::c_ulong = 0x1269;

/// An ioctl whose argument is an integer (or none).
fn ioctl_int(fd: impl AsFd, cmd: libc::c_ulong, arg: libc::c_ulong) -> io::Result<u32> {
    // SAFETY: these commands take their argument by value (no pointer is
    // read or written), and `fd` is open for the call.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), cmd, arg) };
    if r < 0 { Err(last_errno()) } else { Ok(r as u32) }
}

/// `LOOP_CTL_ADD`: makes loopN (`None`: the lowest free index); its index.
pub fn add(ctl: impl AsFd, index: Option<u32>) -> io::Result<u32> {
    let arg = index.map_or(-1, |n| n as i32);
    ioctl_int(ctl, LOOP_CTL_ADD, arg as libc::c_ulong)
}

/// `LOOP_CTL_REMOVE`: removes detached, unopened loopN.
pub fn remove(ctl: impl AsFd, index: u32) -> io::Result<()> {
    ioctl_int(ctl, LOOP_CTL_REMOVE, index as libc::c_ulong).map(drop)
}

/// `LOOP_CLR_FD` on a loop device: detaches its backing file (at its last
/// close when it is open elsewhere).
pub fn clear(dev: impl AsFd) -> io::Result<()> {
    ioctl_int(dev, LOOP_CLR_FD, 0).map(drop)
}

/// `lo_flags` of `struct loop_info64`: read-only, and detached at the last close.
pub const LO_FLAGS_READ_ONLY: u32 = 1;
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_config` (linux/loop.h): `fd`, `block_size`, a `struct
/// loop_info64` (whose `lo_flags` is at 52), 64 reserved bytes.
const LOOP_CONFIG_SIZE: usize = 304;
const LOOP_CONFIG_FLAGS_AT: usize = 8 + 52;

/// `LOOP_CONFIGURE`: attaches `backing` to the loop device `dev` with
/// `flags` (`LO_FLAGS_*`) in one call; `EBUSY` when it is attached already.
pub fn configure(dev: impl AsFd, backing: impl AsFd, flags: u32) -> io::Result<()> {
    let mut cfg = [0u8; LOOP_CONFIG_SIZE];
    cfg[0..4].copy_from_slice(&(backing.as_fd().as_raw_fd() as u32).to_ne_bytes());
    cfg[LOOP_CONFIG_FLAGS_AT..LOOP_CONFIG_FLAGS_AT + 4].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config` (LOOP_CONFIG_SIZE
    // bytes, no alignment needed: it is copied in) from the pointer; `cfg`
    // lives on this frame through the call, and `dev` and `backing` are open.
    let r = unsafe { libc::ioctl(dev.as_fd().as_raw_fd(), LOOP_CONFIGURE, cfg.as_ptr()) };
    if r < 0 { Err(last_errno()) } else { Ok(()) }
}

/// `BLKRRPART`: re-reads a disk's partition table.
pub fn reread_partitions(disk: impl AsFd) -> io::Result<()> {
    ioctl_int(disk, BLKRRPART, 0).map(drop)
}

/// `struct blkpg_partition`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlkpgPartition {
    pub start: i64,
    pub length: i64,
    pub pno: i32,
    pub devname: [u8; 64],
    pub volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg`.
#[repr(C)]
struct BlkpgArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

/// Size of `struct blkpg_ioctl_arg` as a caller passes it.
pub const BLKPG_ARG_SIZE: usize = std::mem::size_of::<BlkpgArg>();
pub const BLKPG_PARTITION_SIZE: usize = std::mem::size_of::<BlkpgPartition>();

impl BlkpgPartition {
    /// From the bytes of a caller's `struct blkpg_partition`.
    pub fn from_bytes(b: &[u8; BLKPG_PARTITION_SIZE]) -> BlkpgPartition {
        let i64_at = |o: usize| i64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let mut p = BlkpgPartition {
            start: i64_at(0),
            length: i64_at(8),
            pno: i32::from_ne_bytes(b[16..20].try_into().expect("4 bytes")),
            devname: [0; 64],
            volname: [0; 64],
        };
        p.devname.copy_from_slice(&b[20..84]);
        p.volname.copy_from_slice(&b[84..148]);
        p
    }
}

/// `BLKPG` with operation `op` (add, delete, resize) on a whole disk.
pub fn blkpg(disk: impl AsFd, op: i32, flags: i32, part: &BlkpgPartition) -> io::Result<()> {
    let mut copy = *part;
    let arg = BlkpgArg { op, flags, datalen: BLKPG_PARTITION_SIZE as i32, data: &mut copy };
    // SAFETY: BLKPG reads `arg` and the partition it points to (datalen
    // bytes); both live on this frame through the call.
    let r = unsafe { libc::ioctl(disk.as_fd().as_raw_fd(), BLKPG, &arg as *const BlkpgArg) };
    if r < 0 { Err(last_errno()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel_uapi() {
        // linux/blkpg.h on x86_64.
        assert_eq!(BLKPG_ARG_SIZE, 24);
        assert_eq!(BLKPG_PARTITION_SIZE, 152);
        let mut b = [0u8; BLKPG_PARTITION_SIZE];
        b[0..8].copy_from_slice(&512i64.to_ne_bytes());
        b[8..16].copy_from_slice(&1024i64.to_ne_bytes());
        b[16..20].copy_from_slice(&2i32.to_ne_bytes());
        b[20] = b'x';
        let p = BlkpgPartition::from_bytes(&b);
        assert_eq!((p.start, p.length, p.pno, p.devname[0]), (512, 1024, 2, b'x'));
    }
}
