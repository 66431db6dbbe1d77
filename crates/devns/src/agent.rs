//! The seccomp agent: answers the calls a container's filter traps —
//! `mknod`/`mknodat` of devices, `mount`, `fsopen`, and the `ioctl`s of
//! `loop-control` and of partition editing — by doing them itself after its
//! own checks, one notification at a time, from the loop that owns the
//! listener (no thread or process per call).
//!
//! Each notification: open the caller's /proc files, read its arguments
//! once, check `SECCOMP_IOCTL_NOTIF_ID_VALID` (so those files are the
//! caller's), decide from the registry, act with the caller's credentials
//! on paths resolved inside the caller's root, answer with the errno a
//! native call would give. A call the policy refuses is never continued.

use devns_core::registry::NsId;
use devns_core::seccomp::{
    self, BLKPG, BLKRRPART, CAP_MKNOD, CAP_SYS_ADMIN, Creds, NR_FSOPEN, NR_IOCTL, NR_MKNOD, NR_MKNODAT, NR_MOUNT,
};
use devns_core::{DevId, Kind};
use devns_sys::seccomp::{Notif, NotifResp};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};
use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags};

/// What the agent asks of devns: who may have which node, the views, and
/// the changes loop-control and partition edits make.
pub trait Policy {
    fn may_have(&self, ns: NsId, dev: DevId) -> bool;
    fn view(&self, ns: NsId) -> Option<BorrowedFd<'_>>;
    /// Whether `ns` owns the whole disk `dev`.
    fn owns(&self, ns: NsId, dev: DevId) -> bool;
    /// A `LOOP_CTL_*` call of `ns`'s process `pid`: its value or errno.
    fn loop_control(&mut self, ns: NsId, pid: i32, req: devns_core::loopctl::Request) -> Result<u32, Errno>;
    /// The partitions of `ns`'s disk `dev` changed: registry and view follow.
    fn partitions_changed(&mut self, ns: NsId, dev: DevId);
}

/// Longest path the agent reads from a caller (`PATH_MAX`).
const PATH_MAX: usize = 4096;
const AT_FDCWD: i32 = -100;
const MS_RDONLY: u64 = 1;
const MS_REMOUNT: u64 = 32;
const MS_BIND: u64 = 4096;
const MS_MOVE: u64 = 8192;
const MS_MGC_VAL: u64 = 0xC0ED_0000;
const MS_MGC_MSK: u64 = 0xffff_0000;
const MS_SHARED_ETC: u64 = (1 << 20) | (1 << 19) | (1 << 18) | (1 << 17);

/// The filter for containers, in the kernel's form.
pub fn filter() -> Vec<devns_sys::seccomp::SockFilter> {
    seccomp::filter()
        .into_iter()
        .map(|i| devns_sys::seccomp::SockFilter { code: i.code, jt: i.jt, jf: i.jf, k: i.k })
        .collect()
}

/// The answer to one call.
enum Answer {
    /// Return value 0 or -errno, as the emulated call.
    Done(Result<(), Errno>),
    /// A return value other than 0 (a loop device's index).
    Value(u32),
    /// Not ours: let the kernel run the call as it is.
    Continue,
    /// The caller is gone; nobody to answer.
    Gone,
}

/// Handles one pending notification on `listener`.
pub fn handle(listener: BorrowedFd<'_>, policy: &mut dyn Policy) {
    let n = match devns_sys::seccomp::recv(listener) {
        Ok(n) => n,
        // Interrupted, or the caller died between poll and recv.
        Err(_) => return,
    };
    let answer = match n.data.nr as u32 {
        NR_MKNOD | NR_MKNODAT => mknod(listener, &n, &*policy),
        NR_MOUNT => mount(listener, &n, &*policy),
        NR_FSOPEN => fsopen(&n),
        NR_IOCTL => ioctl(listener, &n, policy),
        _ => Answer::Done(Err(Errno::NOSYS)),
    };
    let resp = match answer {
        Answer::Gone => return,
        Answer::Continue => NotifResp { id: n.id, val: 0, error: 0, flags: devns_sys::seccomp::FLAG_CONTINUE },
        Answer::Done(Ok(())) => NotifResp { id: n.id, val: 0, error: 0, flags: 0 },
        Answer::Value(v) => NotifResp { id: n.id, val: i64::from(v), error: 0, flags: 0 },
        Answer::Done(Err(e)) => NotifResp { id: n.id, val: 0, error: -e.raw_os_error(), flags: 0 },
    };
    // ENOENT: the caller died meanwhile; nothing else can go wrong here.
    let _ = devns_sys::seccomp::send(listener, &resp);
}

/// The caller's /proc files, opened before its id is checked.
struct Caller {
    pid: i32,
    proc_dir: OwnedFd,
    mem: OwnedFd,
}

impl Caller {
    fn open(pid: u32) -> Result<Caller, Errno> {
        let proc_dir = rustix::fs::open(
            format!("/proc/{pid}"),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mem = rustix::fs::openat(&proc_dir, "mem", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Caller { pid: pid as i32, proc_dir, mem })
    }

    fn open_at(&self, what: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
        rustix::fs::openat(&self.proc_dir, what, flags | OFlags::CLOEXEC, Mode::empty())
    }

    fn dir(&self, what: &str) -> Result<OwnedFd, Errno> {
        self.open_at(what, OFlags::PATH | OFlags::DIRECTORY)
    }

    /// The caller's open file `fd` (the same open file description).
    fn fd(&self, fd: i32) -> Result<OwnedFd, Errno> {
        // The caller may be any thread of its process: a thread pidfd
        // (`PIDFD_THREAD`, = `O_EXCL`, Linux 6.9) reaches its fd table.
        let thread = PidfdFlags::from_bits_retain(libc::O_EXCL as _);
        let pidfd = rustix::process::pidfd_open(Pid::from_raw(self.pid).ok_or(Errno::SRCH)?, thread)?;
        // An fd the caller does not have answers EBADF, as natively.
        rustix::process::pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty())
    }

    /// Exactly `len` bytes of the caller's memory at `addr`, read once.
    fn read_bytes(&self, addr: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let mut out = vec![0u8; len];
        match rustix::io::pread(&self.mem, &mut out, addr) {
            Ok(n) if n == len && addr != 0 => Ok(out),
            _ => Err(Errno::FAULT),
        }
    }

    fn user_ns(&self) -> Result<NsId, Errno> {
        let fd = self.open_at("ns/user", OFlags::RDONLY)?;
        Ok(NsId(devns_sys::ns::ns_id(&fd)?))
    }

    fn creds(&self) -> Result<Creds, Errno> {
        let fd = self.open_at("status", OFlags::RDONLY)?;
        let mut buf = vec![0u8; 8192];
        let n = rustix::io::read(&fd, &mut buf)?;
        Creds::parse_status(&String::from_utf8_lossy(&buf[..n])).ok_or(Errno::IO)
    }

    /// A NUL-terminated string from the caller's memory, read once.
    fn read_str(&self, addr: u64, max: usize) -> Result<Vec<u8>, Errno> {
        if addr == 0 {
            return Err(Errno::FAULT);
        }
        let mut out = Vec::new();
        let mut at = addr;
        while out.len() < max {
            // Up to the page end, so a string that ends before an unmapped
            // page is still read.
            let room = (4096 - (at % 4096)) as usize;
            let mut chunk = vec![0u8; room.min(max - out.len())];
            let n = match rustix::io::pread(&self.mem, &mut chunk, at) {
                Ok(0) | Err(_) => return Err(Errno::FAULT),
                Ok(n) => n,
            };
            if let Some(i) = chunk[..n].iter().position(|b| *b == 0) {
                out.extend_from_slice(&chunk[..i]);
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..n]);
            at += n as u64;
        }
        Err(Errno::NAMETOOLONG)
    }
}

/// A refusal as the agent answers it, logged.
fn refuse(pid: i32, ns: Option<NsId>, call: &str, why: &str, errno: Errno) -> Answer {
    Answer::Done(Err(refused(pid, ns, call, why, errno)))
}

/// Rate-limited log of a refusal (a container cannot flood the host's
/// log); returns the errno to answer with.
pub(crate) fn refused(pid: i32, ns: Option<NsId>, call: &str, why: &str, errno: Errno) -> Errno {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LOGGED: AtomicU64 = AtomicU64::new(0);
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if WINDOW.swap(now, Ordering::Relaxed) != now {
        LOGGED.store(0, Ordering::Relaxed);
    }
    if LOGGED.fetch_add(1, Ordering::Relaxed) < 20 {
        let ns = ns.map_or_else(|| "?".to_owned(), |n| n.to_string());
        tracing::warn!(pid, ns = %ns, call, errno = %errno, "refused: {why}");
    }
    errno
}

/// The directory a relative path of the caller starts from.
fn base_dir(c: &Caller, dirfd: i32) -> Result<(OwnedFd, String), Errno> {
    if dirfd == AT_FDCWD {
        return Ok((c.dir("cwd")?, "cwd".into()));
    }
    let fd = c.fd(dirfd)?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Err(Errno::NOTDIR);
    }
    Ok((fd, format!("fd/{dirfd}")))
}

/// Whether directory `dir` lies inside `root` (walking up with `..`). For
/// the host's own root everything does.
fn inside(dir: &OwnedFd, root: &OwnedFd) -> Result<bool, Errno> {
    let r = rustix::fs::fstat(root)?;
    let slash = rustix::fs::stat("/")?;
    if (r.st_dev, r.st_ino) == (slash.st_dev, slash.st_ino) {
        return Ok(true);
    }
    let mut cur = rustix::fs::openat(dir, ".", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    for _ in 0..256 {
        let st = rustix::fs::fstat(&cur)?;
        if (st.st_dev, st.st_ino) == (r.st_dev, r.st_ino) {
            return Ok(true);
        }
        if (st.st_dev, st.st_ino) == (slash.st_dev, slash.st_ino) {
            return Ok(false);
        }
        cur = rustix::fs::openat(&cur, "..", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    }
    Ok(false)
}

/// `openat2`, retried when a concurrent rename or mount anywhere on the
/// host made a `..` walk unverifiable (EAGAIN): a native call never fails so.
fn openat2(dir: impl AsFd, path: &str, flags: OFlags, how: ResolveFlags) -> Result<OwnedFd, Errno> {
    let dir = dir.as_fd();
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, path, flags, Mode::empty(), how) {
            Err(Errno::AGAIN) if tries < 64 => tries += 1,
            r => return r,
        }
    }
}

/// Opens the directory that will hold `path`'s last component, resolving as
/// the caller would but never leaving its root; returns it and the name.
fn resolve_parent(c: &Caller, root: &OwnedFd, dirfd: i32, path: &[u8]) -> Result<(OwnedFd, Vec<u8>), Errno> {
    if path.is_empty() {
        return Err(Errno::NOENT);
    }
    let trimmed = {
        let mut p = path;
        while p.len() > 1 && p.ends_with(b"/") {
            p = &p[..p.len() - 1];
        }
        p
    };
    let (dir_part, name) = match trimmed.iter().rposition(|b| *b == b'/') {
        Some(i) => (&trimmed[..i.max(1)], &trimmed[i + 1..]),
        None => (&b""[..], trimmed),
    };
    if name.is_empty() || name == b"." || name == b".." || trimmed.len() != path.len() {
        // "/", ".", "..", or a trailing slash: what exists is EEXIST.
        return Err(Errno::EXIST);
    }
    let dir_str = std::str::from_utf8(dir_part).map_err(|_| Errno::INVAL)?;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let in_root = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let parent = if path.starts_with(b"/") {
        openat2(root, if dir_str.is_empty() { "." } else { dir_str }, flags, in_root)?
    } else {
        let (base, link) = base_dir(c, dirfd)?;
        if !inside(&base, root)? {
            return Err(Errno::PERM);
        }
        if dir_str.is_empty() {
            base
        } else {
            match openat2(&base, dir_str, flags, ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS) {
                // `..` above the base, or an absolute symlink: resolve the
                // whole path from the caller's root instead.
                Err(Errno::XDEV) => {
                    let base_path = rustix::fs::readlinkat(&c.proc_dir, link.as_str(), Vec::new())?;
                    let root_path = rustix::fs::readlinkat(&c.proc_dir, "root", Vec::new())?;
                    let (b, r) = (base_path.to_bytes(), root_path.to_bytes());
                    let rel = if r == b"/" { b } else { b.strip_prefix(r).ok_or(Errno::PERM)? };
                    let full = format!("{}/{}", String::from_utf8_lossy(rel), dir_str);
                    openat2(root, full.as_str(), flags, in_root)?
                }
                r => r?,
            }
        }
    };
    Ok((parent, name.to_vec()))
}

/// Whether device nodes on the filesystem of `dir` work for the caller:
/// not `nodev`, and not mounted inside a user namespace (whose nodes do not
/// open there, and no interface says so). Found out once per mount with a
/// probe, then remembered.
fn nodes_work_in(dir: &OwnedFd) -> bool {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static SEEN: OnceLock<Mutex<HashMap<(u64, u64), bool>>> = OnceLock::new();
    match rustix::fs::fstatvfs(dir) {
        Ok(s) if s.f_flag.contains(rustix::fs::StatVfsMountFlags::NODEV) => return false,
        Ok(_) => {}
        Err(_) => return false,
    }
    let Ok(sx) = rustix::fs::statx(dir, "", AtFlags::EMPTY_PATH, rustix::fs::StatxFlags::MNT_ID) else { return false };
    let key = (rustix::fs::makedev(sx.stx_dev_major, sx.stx_dev_minor), sx.stx_mnt_id);
    let seen = SEEN.get_or_init(Default::default);
    if let Some(v) = seen.lock().ok().and_then(|m| m.get(&key).copied()) {
        return v;
    }
    let v = probe(dir);
    if let Ok(mut m) = seen.lock() {
        m.insert(key, v);
    }
    v
}

fn probe(dir: &OwnedFd) -> bool {
    // Host root can make an inode only on a filesystem whose owning user
    // namespace maps host root: the host's own. One mounted inside a user
    // namespace answers EOVERFLOW, and its nodes do not open there.
    let name = format!(".devns-probe-{}", std::process::id());
    let null = rustix::fs::makedev(1, 3);
    let usable =
        match rustix::fs::mknodat(dir, name.as_str(), FileType::CharacterDevice, Mode::from_raw_mode(0o600), null) {
            Ok(()) => {
                let _ = rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty());
                true
            }
            Err(Errno::OVERFLOW) => false,
            // Read-only, full, a name in the way: the real mknod reports that.
            Err(_) => true,
        };
    tracing::debug!(usable, "probed a filesystem for device nodes");
    usable
}

/// Takes on a caller's filesystem identity (fsuid, fsgid, groups) while
/// keeping `CAP_MKNOD`, restoring host root's on drop: permission checks,
/// ownership and the `setgid` directory rule are then the kernel's own.
struct AsCaller {
    caps: rustix::thread::CapabilitySet,
}

impl AsCaller {
    fn become_(c: &Creds) -> Result<AsCaller, Errno> {
        let caps = rustix::thread::capabilities(None)?;
        devns_sys::creds::set_groups(&c.groups)?;
        devns_sys::creds::set_fsgid(c.fsgid);
        devns_sys::creds::set_fsuid(c.fsuid);
        let guard = AsCaller { caps: caps.effective };
        // A non-zero fsuid dropped the filesystem capabilities, CAP_MKNOD
        // among them: raise that one again.
        let mut now = rustix::thread::capabilities(None)?;
        now.effective |= rustix::thread::CapabilitySet::MKNOD;
        rustix::thread::set_capabilities(None, now)?;
        Ok(guard)
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        devns_sys::creds::set_fsuid(0);
        devns_sys::creds::set_fsgid(0);
        let _ = devns_sys::creds::set_groups(&[]);
        if let Ok(mut now) = rustix::thread::capabilities(None) {
            now.effective = self.caps;
            let _ = rustix::thread::set_capabilities(None, now);
        }
    }
}

fn mknod(listener: BorrowedFd<'_>, n: &Notif, policy: &dyn Policy) -> Answer {
    let a = n.data.args;
    let (dirfd, path_addr, mode, dev) =
        if n.data.nr as u32 == NR_MKNOD { (AT_FDCWD, a[0], a[1], a[2]) } else { (a[0] as i32, a[1], a[2], a[3]) };
    let mode = mode as u32;
    let kind = match mode & seccomp::S_IFMT {
        seccomp::S_IFCHR => Kind::Char,
        seccomp::S_IFBLK => Kind::Block,
        _ => return Answer::Continue,
    };
    let (major, minor) = seccomp::decode_dev(dev);
    let dev = DevId::new(kind, major, minor);
    let Ok(c) = Caller::open(n.pid) else { return Answer::Gone };
    let path = c.read_str(path_addr, PATH_MAX);
    let (root, ns, creds) = (c.dir("root"), c.user_ns(), c.creds());
    // Everything about the caller is read; now make sure it was the caller.
    if !devns_sys::seccomp::id_valid(listener, n.id) {
        return Answer::Gone;
    }
    let (Ok(root), Ok(ns), Ok(creds)) = (root, ns, creds) else { return Answer::Gone };
    let path = match path {
        Ok(p) => p,
        Err(e) => return Answer::Done(Err(e)),
    };
    if !creds.has_cap(CAP_MKNOD) {
        return refuse(c.pid, Some(ns), "mknod", "no CAP_MKNOD in its namespace", Errno::PERM);
    }
    if !policy.may_have(ns, dev) {
        return refuse(
            c.pid,
            Some(ns),
            "mknod",
            &format!("{dev} is neither global nor owned by the namespace"),
            Errno::PERM,
        );
    }
    let (parent, name) = match resolve_parent(&c, &root, dirfd, &path) {
        Ok(p) => p,
        Err(Errno::PERM) => {
            return refuse(c.pid, Some(ns), "mknod", "its directory lies outside its root", Errno::PERM);
        }
        Err(e) => {
            tracing::debug!(pid = c.pid, errno = %e, dirfd, "mknod: cannot resolve the path");
            return Answer::Done(Err(e));
        }
    };
    let in_view = policy.view(ns).is_some_and(|v| same_fs(v, &parent));
    if !in_view && !nodes_work_in(&parent) {
        return refuse(
            c.pid,
            Some(ns),
            "mknod",
            "device nodes do not work on that filesystem (nodev or mounted in a user namespace)",
            Errno::PERM,
        );
    }
    let guard = match AsCaller::become_(&creds) {
        Ok(g) => g,
        Err(e) => return Answer::Done(Err(e)),
    };
    let ft = if kind == Kind::Char { FileType::CharacterDevice } else { FileType::BlockDevice };
    let perm = Mode::from_raw_mode(mode & 0o7777 & !creds.umask);
    let name = String::from_utf8_lossy(&name).into_owned();
    let r = rustix::fs::mknodat(&parent, name.as_str(), ft, perm, rustix::fs::makedev(major, minor));
    drop(guard);

    Answer::Done(r)
}

const BLKPG_ADD: i32 = 1;
const BLKPG_DEL: i32 = 2;
const BLKPG_RESIZE: i32 = 3;

/// A caller's `BLKPG` arguments, copied out of its memory once.
struct BlkpgCall {
    op: i32,
    flags: i32,
    part: devns_sys::block::BlkpgPartition,
}

fn read_blkpg(c: &Caller, addr: u64) -> Result<BlkpgCall, Errno> {
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
fn ioctl(listener: BorrowedFd<'_>, n: &Notif, policy: &mut dyn Policy) -> Answer {
    let [fd, cmd, arg, ..] = n.data.args;
    let cmd = cmd as u32;
    let Ok(c) = Caller::open(n.pid) else { return Answer::Gone };
    let file = c.fd(fd as i32);
    let ns = c.user_ns();
    // Capabilities matter to partition edits only (loop-control asks for
    // none): the loop-control calls skip reading them.
    let block = cmd == BLKPG || cmd == BLKRRPART;
    let creds = block.then(|| c.creds());
    let blkpg = (cmd == BLKPG).then(|| read_blkpg(&c, arg));
    if !devns_sys::seccomp::id_valid(listener, n.id) {
        return Answer::Gone;
    }
    let Ok(ns) = ns else { return Answer::Gone };
    let creds = match creds {
        Some(Ok(c)) => Some(c),
        Some(Err(_)) => return Answer::Gone,
        None => None,
    };
    let file = match file {
        Ok(f) => f,
        Err(e) => return Answer::Done(Err(e)),
    };
    if let Some(req) = devns_core::loopctl::Request::from_ioctl(cmd, arg) {
        if !crate::loopctl::is_loop_control(&file, policy.view(ns)) {
            return Answer::Done(Err(Errno::NOTTY));
        }
        return match policy.loop_control(ns, c.pid, req) {
            Ok(v) => Answer::Value(v),
            Err(e) => Answer::Done(Err(e)),
        };
    }
    let Ok(st) = rustix::fs::fstat(&file) else { return Answer::Done(Err(Errno::BADF)) };
    if FileType::from_raw_mode(st.st_mode) != FileType::BlockDevice {
        // The kernel answers for other files, with the caller's rights.
        return Answer::Continue;
    }
    let dev = DevId::new(Kind::Block, rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    let call = if cmd == BLKPG { "ioctl(BLKPG)" } else { "ioctl(BLKRRPART)" };
    if !creds.is_some_and(|c| c.has_cap(CAP_SYS_ADMIN)) {
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
    if r.is_ok() {
        policy.partitions_changed(ns, dev);
    }
    Answer::Done(r)
}

fn same_fs(a: BorrowedFd<'_>, b: &OwnedFd) -> bool {
    match (rustix::fs::fstat(a), rustix::fs::fstat(b)) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev,
        _ => false,
    }
}

fn fsopen(n: &Notif) -> Answer {
    let Ok(c) = Caller::open(n.pid) else { return Answer::Gone };
    // Only the name decides, and continuing never grants anything: a
    // devtmpfs asked through the new API falls back to mount(2) on ENOSYS.
    match c.read_str(n.data.args[0], 64) {
        Ok(name) if name == b"devtmpfs" => Answer::Done(Err(Errno::NOSYS)),
        _ => Answer::Continue,
    }
}

/// Puts the calling (single-threaded) process into another mount namespace
/// until dropped, then back, with its working directory.
struct InMountNs {
    home: OwnedFd,
    cwd: OwnedFd,
}

impl InMountNs {
    fn enter(target: &OwnedFd) -> Result<InMountNs, Errno> {
        let home = rustix::fs::open("/proc/self/ns/mnt", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        let cwd = rustix::fs::open(".", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        rustix::thread::move_into_link_name_space(target.as_fd(), Some(rustix::thread::LinkNameSpaceType::Mount))?;
        Ok(InMountNs { home, cwd })
    }
}

impl Drop for InMountNs {
    fn drop(&mut self) {
        if let Err(e) =
            rustix::thread::move_into_link_name_space(self.home.as_fd(), Some(rustix::thread::LinkNameSpaceType::Mount))
        {
            // Staying in a container's mount namespace would be worse than
            // stopping.
            tracing::error!(error = %e, "cannot return to devns's own mount namespace");
            std::process::abort();
        }
        let _ = rustix::process::fchdir(&self.cwd);
    }
}

fn mount(listener: BorrowedFd<'_>, n: &Notif, policy: &dyn Policy) -> Answer {
    let [_source, target_addr, fstype_addr, flags, _data, _] = n.data.args;
    // The legacy magic in the high bits, dropped as the kernel drops it.
    let flags = if flags & MS_MGC_MSK == MS_MGC_VAL { flags & !MS_MGC_MSK } else { flags };
    let Ok(c) = Caller::open(n.pid) else { return Answer::Gone };
    // Not a new devtmpfs: the kernel decides, with the caller's own rights.
    if flags & (MS_REMOUNT | MS_BIND | MS_MOVE | MS_SHARED_ETC) != 0 || fstype_addr == 0 {
        return Answer::Continue;
    }
    match c.read_str(fstype_addr, 64) {
        Ok(t) if t == b"devtmpfs" => {}
        _ => return Answer::Continue,
    }
    let target = c.read_str(target_addr, PATH_MAX);
    let (root, ns, creds, mntns) = (c.dir("root"), c.user_ns(), c.creds(), c.open_at("ns/mnt", OFlags::RDONLY));
    let cwd = c.dir("cwd");
    if !devns_sys::seccomp::id_valid(listener, n.id) {
        return Answer::Gone;
    }
    let (Ok(root), Ok(ns), Ok(creds), Ok(mntns), Ok(cwd)) = (root, ns, creds, mntns, cwd) else { return Answer::Gone };
    let target = match target {
        Ok(t) if !t.is_empty() => t,
        Ok(_) => return Answer::Done(Err(Errno::NOENT)),
        Err(e) => return Answer::Done(Err(e)),
    };
    if !creds.has_cap(CAP_SYS_ADMIN) {
        return refuse(c.pid, Some(ns), "mount devtmpfs", "no CAP_SYS_ADMIN in its namespace", Errno::PERM);
    }
    let Some(view) = policy.view(ns) else {
        return refuse(c.pid, Some(ns), "mount devtmpfs", "devns has no view for this namespace", Errno::PERM);
    };
    let tree = match rustix::mount::open_tree(
        view,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH,
    ) {
        Ok(t) => t,
        Err(e) => return Answer::Done(Err(e)),
    };
    if flags & MS_RDONLY != 0
        && let Err(e) = devns_sys::mount::set_attrs(&tree, devns_sys::mount::MOUNT_ATTR_RDONLY)
    {
        return Answer::Done(Err(e));
    }
    let Ok(text) = std::str::from_utf8(&target) else { return Answer::Done(Err(Errno::INVAL)) };
    let (base, rel) = if text.starts_with('/') { (&root, text) } else { (&cwd, text) };
    let _in_ns = match InMountNs::enter(&mntns) {
        Ok(g) => g,
        Err(e) => return Answer::Done(Err(e)),
    };
    let how = if text.starts_with('/') { ResolveFlags::IN_ROOT } else { ResolveFlags::BENEATH };
    let dir =
        match openat2(base, rel, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, how | ResolveFlags::NO_MAGICLINKS)
        {
            Ok(d) => d,
            Err(e) => return Answer::Done(Err(e)),
        };
    Answer::Done(rustix::mount::move_mount(
        &tree,
        "",
        &dir,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    ))
}
