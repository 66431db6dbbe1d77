//! The trapped `ioctl`s: loop-control's three commands, emulated on a
//! view's stand-in for the caller's namespace, and the partition edits a
//! disk's owner may make (`BLKPG`, `BLKRRPART`), done by devns.

use super::caller::Caller;
use super::{Answer, Policy, answer_refusal, refuse};
use devns_core::seccomp::{BLKPG, BLKRRPART, CAP_SYS_ADMIN};
use devns_core::{DevId, Kind};
use devns_sys::seccomp::Notif;
use rustix::fd::BorrowedFd;
use rustix::fs::FileType;
use rustix::io::Errno;

const BLKPG_ADD: i32 = 1;
const BLKPG_DEL: i32 = 2;
const BLKPG_RESIZE: i32 = 3;

/// A caller's `BLKPG` arguments, copied out of its memory once.
struct BlkpgCall {
    op: i32,
    flags: i32,
    part: devns_sys::block::BlkpgPartition,
}

fn read_blkpg(c: &Caller<'_>, addr: u64) -> Result<BlkpgCall, Errno> {
    use devns_sys::block::{BLKPG_ARG_SIZE, BLKPG_PARTITION_SIZE, BlkpgPartition};
    let a = c.read_bytes(addr, BLKPG_ARG_SIZE)?;
    let int = |o: usize| i32::from_ne_bytes(a[o..o + 4].try_into().expect("4 bytes"));
    let data = u64::from_ne_bytes(a[16..24].try_into().expect("8 bytes"));
    let (op, flags) = (int(0), int(4));
    if ![BLKPG_ADD, BLKPG_DEL, BLKPG_RESIZE].contains(&op) {
        return Err(Errno::INVAL);
    }
    let p = c.read_bytes(data, BLKPG_PARTITION_SIZE)?;
    let part = BlkpgPartition::from_bytes(p.as_slice().try_into().expect("exact length"));
    Ok(BlkpgCall { op, flags, part })
}

/// `ioctl` with a trapped command: loop-control's (on the view's stand-in,
/// emulated for the caller's namespace) or a partition edit (`BLKPG`,
/// `BLKRRPART`) on a disk the caller's namespace owns, done by devns with
/// the caller's arguments read once. On anything else the command means
/// nothing devns grants: `ENOTTY` as `/dev/null` answers, or the kernel's
/// own answer (which refuses block ioctls to user namespaces).
pub(super) fn ioctl(listener: BorrowedFd<'_>, n: &Notif, mut c: Caller<'_>, policy: &mut dyn Policy) -> Answer {
    let [fd, cmd, arg, ..] = n.data.args;
    let cmd = cmd as u32;
    let file = c.fd(fd as i32);
    let ns = c.user_ns();
    let blkpg = (cmd == BLKPG).then(|| read_blkpg(&c, arg));
    let ns = match super::confirm(listener, n, ns) {
        Ok(ns) => ns,
        Err(answer) => return answer,
    };
    let file = match file {
        Ok(f) => f,
        Err(e) => return Answer::Done(Err(e)),
    };
    if let Some(req) = devns_core::loopctl::Request::from_ioctl(cmd, arg) {
        if !crate::loopctl::is_loop_control(&file, policy.view(ns)) {
            return Answer::Done(Err(Errno::NOTTY));
        }
        return match policy.loop_control(ns, req) {
            Ok(v) => Answer::Value(v),
            Err(r) => answer_refusal(c.pid, Some(ns), "ioctl(loop-control)", r),
        };
    }
    let Ok(st) = rustix::fs::fstat(&file) else { return Answer::Done(Err(Errno::BADF)) };
    if FileType::from_raw_mode(st.st_mode) != FileType::BlockDevice {
        // The kernel answers for other files, with the caller's rights.
        return Answer::Continue;
    }
    let dev = DevId::new(Kind::Block, rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    let call = if cmd == BLKPG { "ioctl(BLKPG)" } else { "ioctl(BLKRRPART)" };
    if !c.creds.has_cap(CAP_SYS_ADMIN) {
        // What the kernel answers a caller without CAP_SYS_ADMIN.
        return refuse(c.pid, Some(ns), call, "no CAP_SYS_ADMIN in its namespace", Errno::ACCESS);
    }
    if !policy.owns(ns, dev) {
        return refuse(c.pid, Some(ns), call, &format!("{dev} is not a disk the namespace owns"), Errno::PERM);
    }
    let r = match (cmd, blkpg) {
        (BLKRRPART, _) => devns_sys::block::reread_partitions(&file),
        (_, Some(Ok(b))) => devns_sys::block::blkpg(&file, b.op, b.flags, &b.part),
        (_, Some(Err(e))) => Err(e),
        _ => Err(Errno::NOTTY),
    };
    if let Err(e) = r {
        return Answer::Done(Err(e));
    }
    match policy.partitions_changed(ns, dev) {
        Ok(()) => Answer::Done(Ok(())),
        Err(r) => answer_refusal(c.pid, Some(ns), call, r),
    }
}
