//! seccomp user notification: installing a filter with a listener, and the
//! listener's ioctls. A handful of constants and ioctls over libc: no C
//! library (libseccomp would need libseccomp-dev on every machine).

use rustix::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use rustix::io;

use crate::last_errno;

/// `struct sock_filter`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_uint = 1 << 3;
/// Once the agent has received a notification, only a fatal signal ends
/// the caller's wait (Linux 5.19): a call the agent has begun to do is
/// answered, as a native call that cannot be interrupted would be, instead
/// of being interrupted and restarted after the agent did it.
const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: libc::c_uint = 1 << 5;

/// Installs `prog` on the calling thread (and its future children) and
/// returns the listener fd. The caller needs `CAP_SYS_ADMIN` in its user
/// namespace, or no_new_privs.
pub fn install_with_listener(prog: &[SockFilter]) -> io::Result<OwnedFd> {
    let fprog = SockFprog { len: prog.len() as u16, filter: prog.as_ptr() };
    let install = |flags: libc::c_uint| {
        // SAFETY: `fprog` points at `prog`, which outlives the call; the
        // kernel copies the program before returning.
        unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &fprog as *const SockFprog) }
    };
    let mut fd = install(SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV);
    if fd < 0 && last_errno() == io::Errno::INVAL {
        // A kernel before 5.19: interrupted calls may then be restarted.
        fd = install(SECCOMP_FILTER_FLAG_NEW_LISTENER);
    }
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: with NEW_LISTENER a successful call returns a new fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

const SECCOMP_GET_NOTIF_SIZES: libc::c_uint = 3;

/// `struct seccomp_notif_sizes`: the kernel's sizes of `seccomp_notif`,
/// `seccomp_notif_resp` and `seccomp_data` (Linux 5.0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NotifSizes {
    pub notif: u16,
    pub resp: u16,
    pub data: u16,
}

/// The kernel's notification struct sizes (`SECCOMP_GET_NOTIF_SIZES`);
/// `EINVAL` before user notification existed.
pub fn notif_sizes() -> io::Result<NotifSizes> {
    let mut sizes = NotifSizes::default();
    // SAFETY: GET_NOTIF_SIZES writes one `struct seccomp_notif_sizes` into
    // `sizes`, which lives through the call; it changes no filter.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &mut sizes as *mut NotifSizes) };
    if r < 0 { Err(last_errno()) } else { Ok(sizes) }
}

/// Whether this kernel knows `WAIT_KILLABLE_RECV`, asked without
/// installing anything: a filter call with known flags and no program
/// fails with `EFAULT` (copying the program), unknown flags with `EINVAL`.
pub fn knows_wait_killable_recv() -> io::Result<bool> {
    let flags = SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
    // SAFETY: a null program: the kernel checks the flags, then fails to
    // copy the program; nothing is installed and no memory is touched.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, std::ptr::null::<SockFprog>()) };
    match (r, last_errno()) {
        (0.., _) => Err(io::Errno::NOTSUP),
        (_, io::Errno::FAULT) => Ok(true),
        (_, io::Errno::INVAL) => Ok(false),
        (_, e) => Err(e),
    }
}

/// `struct seccomp_data`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SeccompData {
    pub nr: i32,
    pub arch: u32,
    pub instruction_pointer: u64,
    pub args: [u64; 6],
}

/// `struct seccomp_notif`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Notif {
    pub id: u64,
    pub pid: u32,
    pub flags: u32,
    pub data: SeccompData,
}

/// `struct seccomp_notif_resp`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NotifResp {
    pub id: u64,
    pub val: i64,
    pub error: i32,
    pub flags: u32,
}

pub const FLAG_CONTINUE: u32 = 1;

// linux/seccomp.h: SECCOMP_IOC_MAGIC '!'.
const NOTIF_RECV: libc::c_ulong = ioc(3, 0, size_of::<Notif>());
const NOTIF_SEND: libc::c_ulong = ioc(3, 1, size_of::<NotifResp>());
const NOTIF_ID_VALID: libc::c_ulong = ioc(1, 2, 8);
const NOTIF_SET_FLAGS: libc::c_ulong = ioc(1, 4, 8);
const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

/// `_IOC(dir, '!', nr, size)`; dir 1 = write, 2 = read, 3 = both.
const fn ioc(dir: u64, nr: u64, size: usize) -> libc::c_ulong {
    ((dir << 30) | ((size as u64) << 16) | ((b'!' as u64) << 8) | nr) as libc::c_ulong
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 { Err(last_errno()) } else { Ok(()) }
}

/// The next notification (blocks unless the fd is ready).
pub fn recv(listener: impl AsFd) -> io::Result<Notif> {
    let mut n = Notif::default();
    // SAFETY: NOTIF_RECV fills exactly one zeroed `struct seccomp_notif`.
    check(unsafe { libc::ioctl(listener.as_fd().as_raw_fd(), NOTIF_RECV, &mut n as *mut Notif) })?;
    Ok(n)
}

/// Answers a notification.
pub fn send(listener: impl AsFd, resp: &NotifResp) -> io::Result<()> {
    // SAFETY: NOTIF_SEND reads one `struct seccomp_notif_resp` that lives
    // through the call.
    check(unsafe { libc::ioctl(listener.as_fd().as_raw_fd(), NOTIF_SEND, resp as *const NotifResp) })
}

/// Whether notification `id` is still pending (its caller alive and
/// waiting): checked after opening the caller's /proc files, so those are
/// known to be the caller's.
pub fn id_valid(listener: impl AsFd, id: u64) -> bool {
    // SAFETY: NOTIF_ID_VALID reads one u64 that lives through the call.
    unsafe { libc::ioctl(listener.as_fd().as_raw_fd(), NOTIF_ID_VALID, &id as *const u64) == 0 }
}

/// Wakes the agent on the caller's CPU (kernel 6.6+): the trapped call's
/// latency drops by half; older kernels refuse and nothing changes.
pub fn set_sync_wakeup(listener: impl AsFd) -> io::Result<()> {
    let flags = SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP;
    // SAFETY: NOTIF_SET_FLAGS takes the flags by value.
    check(unsafe { libc::ioctl(listener.as_fd().as_raw_fd(), NOTIF_SET_FLAGS, flags) })
}

/// Whether `fd` is a seccomp listener: only a listener answers
/// `NOTIF_ID_VALID` for an unknown id with ENOENT.
pub fn is_listener(fd: impl AsFd) -> bool {
    let id: u64 = 0;
    // SAFETY: NOTIF_ID_VALID reads one u64 that lives through the call; on
    // any other kind of fd the ioctl fails without touching memory.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), NOTIF_ID_VALID, &id as *const u64) };
    r < 0 && last_errno() == io::Errno::NOENT
}

/// Words of a `struct seccomp_notif`.
pub const NOTIF_WORDS: usize = size_of::<Notif>() / 8;

/// Like [`recv`], with the kernel writing the notification straight into
/// `into` (zeroed first), memory shared with another process: once the
/// ioctl has taken a notification off the queue, it is there, even if this
/// process is killed before it returns.
pub fn recv_into(listener: impl AsFd, into: &[std::sync::atomic::AtomicU64]) -> io::Result<()> {
    let into = into.get(..NOTIF_WORDS).ok_or(io::Errno::INVAL)?;
    for w in into {
        w.store(0, std::sync::atomic::Ordering::Relaxed);
    }
    let ptr = into.as_ptr() as *mut Notif;
    // SAFETY: `into` is NOTIF_WORDS u64s, 8-byte aligned: room for one
    // `struct seccomp_notif`, zeroed as NOTIF_RECV requires. It is made of
    // atomics, so memory that changes behind Rust's back (here: the
    // kernel's write) is allowed, and no non-atomic reference to it exists.
    check(unsafe { libc::ioctl(listener.as_fd().as_raw_fd(), NOTIF_RECV, ptr) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// devns's structs are the kernel's (any user may ask; nothing changes).
    #[test]
    fn the_kernel_s_notification_sizes_are_devns_s() {
        let s = notif_sizes().expect("SECCOMP_GET_NOTIF_SIZES");
        assert_eq!(
            (s.notif as usize, s.resp as usize, s.data as usize),
            (size_of::<Notif>(), size_of::<NotifResp>(), size_of::<SeccompData>())
        );
    }

    /// This kernel (6.18) knows the flag, and asking installs no filter.
    #[test]
    fn wait_killable_recv_is_known_and_asking_installs_nothing() {
        let filters = || {
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            status.lines().find(|l| l.starts_with("Seccomp_filters:")).map(str::to_owned)
        };
        let before = filters();
        assert_eq!(knows_wait_killable_recv(), Ok(true));
        assert_eq!(filters(), before);
    }
}
