//! Namespace identity.

use rustix::fd::AsFd;
use rustix::io;
use rustix::ioctl::{Getter, ioctl, opcode};

/// `NS_GET_ID` (`_IOR(0xb7, 0xd, __u64)`, Linux 6.18's `nsfs.h`): the 64-bit
/// namespace id, never reused while the host is up. rustix has no wrapper.
const NS_GET_ID: rustix::ioctl::Opcode = opcode::read::<u64>(0xb7, 0xd);

/// The id of the namespace `nsfd` (an nsfs file such as `/proc/PID/ns/user`)
/// refers to.
pub fn ns_id(nsfd: impl AsFd) -> io::Result<u64> {
    // SAFETY: NS_GET_ID writes exactly one u64 through its argument pointer,
    // which is what `Getter<NS_GET_ID, u64>` provides.
    unsafe { ioctl(nsfd, Getter::<NS_GET_ID, u64>::new()) }
}
