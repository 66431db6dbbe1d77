//! The thread behind a notification: what the agent reads of it, read
//! once per call, and the `/proc` files it keeps open while the same
//! thread goes on calling.
//!
//! A container that makes many nodes makes them from one thread, so the
//! agent keeps that thread's `/proc/TID` directory and `status` file open
//! between calls and reads them afresh at every call: only the opening is
//! saved, never a fact about the caller. A cached file belongs to one
//! thread (its `struct pid`): once that thread is gone, reading it fails,
//! and the agent opens the new caller's files instead. While it reads, the
//! caller is blocked in its syscall; `SECCOMP_IOCTL_NOTIF_ID_VALID`, checked
//! after the reads, confirms that the thread with that id was the caller
//! all along.

use devns_core::idmap::IdMap;
use devns_core::registry::NsId;
use devns_core::seccomp::Creds;
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags};

/// Longest `/proc/TID/status` the agent reads (a thread in 65,536 groups
/// has a longer one, and is refused as unreadable).
const STATUS_MAX: usize = 64 * 1024;

/// A calling thread's `/proc` files, kept while it keeps calling.
struct Thread {
    tid: i32,
    dir: OwnedFd,
    status: OwnedFd,
    /// Its user namespace when last looked up: the nsfs inode and the id.
    ns: Option<(u64, NsId)>,
}

impl Thread {
    fn open(tid: i32) -> Result<Thread, Errno> {
        let dir = rustix::fs::open(
            format!("/proc/{tid}"),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let status = rustix::fs::openat(&dir, "status", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Thread { tid, dir, status, ns: None })
    }

    fn read_status(&self, buf: &mut Vec<u8>) -> Result<Creds, Errno> {
        buf.resize(8192, 0);
        loop {
            // At offset 0, proc regenerates the file: the caller's now.
            let n = rustix::io::pread(&self.status, &mut buf[..], 0)?;
            if n < buf.len() {
                return Creds::parse_status_bytes(&buf[..n]).ok_or(Errno::IO);
            }
            if buf.len() >= STATUS_MAX {
                return Err(Errno::IO);
            }
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// The caller of one notification, with its credentials as they are now.
pub struct Caller<'a> {
    pub pid: i32,
    pub creds: Creds,
    t: &'a mut Thread,
}

/// What the agent keeps of its last caller, and a buffer for `status`.
#[derive(Default)]
pub struct Kept {
    thread: Option<Thread>,
    buf: Vec<u8>,
}

impl Kept {
    /// The caller `tid`: its kept files if it called last, else newly
    /// opened ones (which then replace those kept). Fails when it is gone.
    pub fn caller(&mut self, tid: u32) -> Result<Caller<'_>, Errno> {
        let tid = i32::try_from(tid).map_err(|_| Errno::SRCH)?;
        let fresh = match self.thread.as_ref().filter(|t| t.tid == tid) {
            // Fails once the kept thread is gone, whoever has its id now.
            Some(t) => t.read_status(&mut self.buf).ok(),
            None => None,
        };
        let creds = match fresh {
            Some(c) => c,
            None => {
                self.thread = None;
                let t = Thread::open(tid)?;
                let c = t.read_status(&mut self.buf)?;
                self.thread = Some(t);
                c
            }
        };
        let t = self.thread.as_mut().expect("kept above");
        Ok(Caller { pid: tid, creds, t })
    }
}

impl Caller<'_> {
    pub fn open_at(&self, what: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
        rustix::fs::openat(&self.t.dir, what, flags | OFlags::CLOEXEC, Mode::empty())
    }

    pub fn dir(&self, what: &str) -> Result<OwnedFd, Errno> {
        self.open_at(what, OFlags::PATH | OFlags::DIRECTORY)
    }

    /// Where one of its magic links (`cwd`, `root`, `fd/N`) points, as a
    /// path seen from devns's root.
    pub fn link(&self, what: &str) -> Result<std::ffi::CString, Errno> {
        rustix::fs::readlinkat(&self.t.dir, what, Vec::new())
    }

    /// Its open file `fd` (the same open file description).
    pub fn fd(&self, fd: i32) -> Result<OwnedFd, Errno> {
        // The caller may be any thread of its process: a thread pidfd
        // (`PIDFD_THREAD`, = `O_EXCL`, Linux 6.9) reaches its fd table.
        let thread = PidfdFlags::from_bits_retain(libc::O_EXCL as _);
        let pidfd = rustix::process::pidfd_open(Pid::from_raw(self.pid).ok_or(Errno::SRCH)?, thread)?;
        // An fd the caller does not have answers EBADF, as natively.
        rustix::process::pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty())
    }

    /// Its user namespace's id.
    ///
    /// Looked up with `NS_GET_ID` once per thread; later calls only read
    /// the `ns/user` link's inode number and compare. That is sound
    /// although inode numbers, unlike ids, are reused: a thread only ever
    /// moves down the tree of user namespaces (`setns` and `unshare` need
    /// `CAP_SYS_ADMIN` over the target, which only its ancestors give), so
    /// the namespace it was in when looked up is its current one or an
    /// ancestor of it, alive either way, and no other live namespace has
    /// that number.
    pub fn user_ns(&mut self) -> Result<NsId, Errno> {
        let link = rustix::fs::readlinkat(&self.t.dir, "ns/user", Vec::new())?;
        let ino = parse_ns_link(link.to_bytes()).ok_or(Errno::IO)?;
        if let Some((kept, id)) = self.t.ns
            && kept == ino
        {
            return Ok(id);
        }
        let fd = self.open_at("ns/user", OFlags::RDONLY)?;
        let ino = rustix::fs::fstat(&fd)?.st_ino;
        let id = NsId(devns_sys::ns::ns_id(&fd)?);
        self.t.ns = Some((ino, id));
        Ok(id)
    }

    /// Its user namespace's `uid_map` and `gid_map`, as the initial
    /// namespace sees them (host ids outside). Read only where a
    /// capability's counting depends on them ([`devns_core::dac`]).
    pub fn id_maps(&self) -> Result<(IdMap, IdMap), Errno> {
        let map = |what: &str| -> Result<IdMap, Errno> {
            let f = self.open_at(what, OFlags::RDONLY)?;
            // 340 lines of three 10-digit numbers at most.
            let mut text = vec![0u8; 16 * 1024];
            let n = rustix::io::pread(&f, &mut text, 0)?;
            let text = std::str::from_utf8(&text[..n]).map_err(|_| Errno::IO)?;
            IdMap::parse(text).map_err(|_| Errno::IO)
        };
        Ok((map("uid_map")?, map("gid_map")?))
    }

    /// Exactly `len` bytes of its memory at `addr`, read once.
    pub fn read_bytes(&self, addr: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let mut out = vec![0u8; len];
        match devns_sys::process::read_memory(self.pid, addr, &mut out) {
            Ok(n) if n == len && addr != 0 => Ok(out),
            _ => Err(Errno::FAULT),
        }
    }

    /// A NUL-terminated string from its memory, read once: `EFAULT` where
    /// its own syscall would meet an unreadable page, `ENAMETOOLONG` past
    /// `max` bytes.
    pub fn read_str(&self, addr: u64, max: usize) -> Result<Vec<u8>, Errno> {
        if addr == 0 {
            return Err(Errno::FAULT);
        }
        let mut out = Vec::new();
        let mut page = [0u8; 4096];
        let mut at = addr;
        while out.len() < max {
            // Up to the page end, so that a string ending before an
            // unmapped page is still read.
            let room = (4096 - (at % 4096)) as usize;
            let chunk = &mut page[..room.min(max - out.len())];
            let n = match devns_sys::process::read_memory(self.pid, at, chunk) {
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

/// The inode number in an nsfs link's text, `user:[4026531837]`.
fn parse_ns_link(text: &[u8]) -> Option<u64> {
    let inner = text.strip_prefix(b"user:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_inode_of_a_user_namespace_link_only() {
        assert_eq!(parse_ns_link(b"user:[4026531837]"), Some(4_026_531_837));
        for bad in [&b"mnt:[4026531837]"[..], b"user:[]", b"user:[12", b"user:[-1]", b"user:[1]x", b""] {
            assert_eq!(parse_ns_link(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
