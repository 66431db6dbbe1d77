//! systemd's file descriptor store, for a daemon run as a systemd service
//! (`NOTIFY_SOCKET` set): `sd_notify` by hand (one datagram, fds beside it
//! with `SCM_RIGHTS`), no libsystemd. Stored with `FDSTORE=1` and a name,
//! given back at the next start as `LISTEN_FDS`/`LISTEN_FDNAMES` (for this
//! process only: `LISTEN_PID`), removed with `FDSTOREREMOVE=1`. The unit
//! needs `FileDescriptorStoreMax=` above the number of containers.

use anyhow::{Context, Result, anyhow};
use devns_core::keep::Stored;
use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::net::{AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketType};
use std::io::IoSlice;
use std::mem::MaybeUninit;

pub struct FdStore {
    sock: OwnedFd,
    addr: SocketAddrUnix,
}

impl FdStore {
    /// The service manager's socket, when `NOTIFY_SOCKET` names one.
    pub fn from_env() -> Result<Option<FdStore>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(None) };
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddrUnix::new_abstract_name(name),
            None => SocketAddrUnix::new(bytes),
        }
        .map_err(|e| anyhow!("bad NOTIFY_SOCKET {path:?}: {e}"))?;
        let sock =
            rustix::net::socket_with(AddressFamily::UNIX, SocketType::DGRAM, rustix::net::SocketFlags::CLOEXEC, None)
                .context("socket")?;
        Ok(Some(FdStore { sock, addr }))
    }

    /// One `sd_notify` message with `fds`.
    pub fn notify(&self, text: &str, fds: &[BorrowedFd<'_>]) -> Result<()> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(crate::wire::MAX_FDS))];
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(anyhow!("too many fds for one notification"));
        }
        rustix::net::sendmsg_addr(
            &self.sock,
            &self.addr,
            &[IoSlice::new(text.as_bytes())],
            &mut cmsg,
            SendFlags::NOSIGNAL,
        )
        .with_context(|| format!("sd_notify {:?}", text.lines().next().unwrap_or("")))?;
        Ok(())
    }

    pub fn store(&self, what: Stored, fd: BorrowedFd<'_>) -> Result<()> {
        self.notify(&format!("FDSTORE=1\nFDNAME={}", what.name()), &[fd])
    }

    pub fn remove(&self, what: Stored) -> Result<()> {
        self.notify(&format!("FDSTOREREMOVE=1\nFDNAME={}", what.name()), &[])
    }
}

/// The fds the service manager passed to this process, with their names;
/// each taken once (call this once, at start).
pub fn passed() -> Vec<(OwnedFd, String)> {
    let var = |k: &str| std::env::var(k).ok();
    let fds = devns_core::keep::listen_fds(
        std::process::id(),
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
    );
    fds.into_iter()
        .filter_map(|(n, name)| {
            // SAFETY: `LISTEN_FDS` numbers, meant for this process
            // (`LISTEN_PID`), are inherited fds nothing here has opened or
            // taken: `passed` runs once, before the daemon opens anything.
            let fd = unsafe { devns_sys::fds::take_inherited(n) }.ok()?;
            Some((fd, name))
        })
        .collect()
}

/// Takes the socket systemd passed bound at `path` (socket activation:
/// the unit's `ListenStream=`, whatever its name) out of `passed`: a
/// listening unix stream socket, made nonblocking. None passed for it:
/// the daemon binds its own.
pub fn take_socket(passed: &mut Vec<(OwnedFd, String)>, path: &std::path::Path) -> Result<Option<OwnedFd>> {
    use rustix::net::sockopt;
    let bound_at = |fd: &OwnedFd| {
        let Ok(addr) = rustix::net::getsockname(fd) else { return false };
        let Ok(unix) = SocketAddrUnix::try_from(addr) else { return false };
        unix.path_bytes().is_some_and(|p| p == std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
    };
    let Some(i) = passed.iter().position(|(fd, _)| bound_at(fd)) else { return Ok(None) };
    let (fd, name) = passed.remove(i);
    let listening = sockopt::socket_type(&fd).is_ok_and(|t| t == SocketType::STREAM)
        && sockopt::socket_acceptconn(&fd).unwrap_or(false);
    if !listening {
        return Err(anyhow!(
            "the socket systemd passed for {} ({name}) is not a listening stream socket: the socket unit wants ListenStream={}",
            path.display(),
            path.display()
        ));
    }
    let flags = rustix::fs::fcntl_getfl(&fd).context("fcntl")?;
    rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK).context("fcntl")?;
    Ok(Some(fd))
}
