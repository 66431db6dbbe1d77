//! The daemon's side of the holder: connect (starting a holder when none
//! runs for the state dir), hand it listeners, drop them, take them back.

use anyhow::{Context, Result, anyhow, bail};
use devns_core::keep::{Reply, Request};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::path::Path;
use std::time::Duration;

/// A holder that answers nothing in this long is taken for gone.
const REPLY_WAIT: Duration = Duration::from_secs(5);

pub struct Client {
    sock: OwnedFd,
}

/// What the holder gave back: listeners by key with their namespace, and
/// the journal.
#[derive(Default)]
pub struct Taken {
    pub listeners: Vec<(u64, u64, OwnedFd)>,
    pub journal: Option<OwnedFd>,
    pub tmps: Vec<(u64, OwnedFd)>,
}

impl Client {
    /// The holder of `state_dir`, if one runs.
    pub fn connect(state_dir: &Path) -> Result<Option<Client>> {
        let path = super::socket_path(state_dir);
        let sock = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
        let addr = SocketAddrUnix::new(&path).with_context(|| format!("bad socket path {}", path.display()))?;
        match rustix::net::connect(&sock, &addr) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::CONNREFUSED) => return Ok(None),
            Err(e) => bail!("cannot connect to the holder at {}: {e}", path.display()),
        }
        rustix::net::sockopt::set_socket_timeout(&sock, rustix::net::sockopt::Timeout::Recv, Some(REPLY_WAIT))?;
        rustix::net::sockopt::set_socket_timeout(&sock, rustix::net::sockopt::Timeout::Send, Some(REPLY_WAIT))?;
        Ok(Some(Client { sock }))
    }

    /// The holder of `state_dir`, started (detached: it outlives this
    /// process) when none runs.
    pub fn connect_or_start(state_dir: &Path) -> Result<Client> {
        if let Some(c) = Client::connect(state_dir)? {
            return Ok(c);
        }
        let exe = std::env::current_exe().context("cannot find devns's own binary")?;
        // `devns hold` returns once its socket listens, the holder forked off.
        let status = std::process::Command::new(exe)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("hold")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .context("cannot start the holder")?;
        if !status.success() {
            bail!("the holder failed to start ({status})");
        }
        Client::connect(state_dir)?.ok_or_else(|| anyhow!("the holder started but does not listen"))
    }

    /// The connection, for the daemon to watch: it hangs up when the
    /// holder dies.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn call(&self, req: Request, fds: &[BorrowedFd<'_>]) -> Result<Option<u64>> {
        super::send_request(self.sock.as_fd(), req, fds).context("cannot reach the holder")?;
        match self.reply()?.0 {
            Reply::Ok(k) => Ok(k),
            Reply::Err(why) => bail!("the holder refused {req}: {why}"),
            other => bail!("unexpected reply from the holder: {other}"),
        }
    }

    fn reply(&self) -> Result<(Reply, Vec<OwnedFd>)> {
        let mut buf = [0u8; devns_core::keep::MAX_MESSAGE];
        let mut fds = Vec::new();
        let n =
            crate::wire::recv_with_fds(self.sock.as_fd(), &mut buf, &mut fds).context("no reply from the holder")?;
        if n == 0 {
            bail!("the holder closed the connection");
        }
        Ok((Reply::parse(&buf[..n]).map_err(|e| anyhow!("bad reply from the holder: {e}"))?, fds))
    }

    /// Hands over (a copy of) `listener`, serving `ns`; its key.
    pub fn put(&self, ns: u64, listener: BorrowedFd<'_>) -> Result<u64> {
        self.call(Request::Put { ns }, &[listener])?.ok_or_else(|| anyhow!("the holder gave no key"))
    }

    pub fn journal(&self, memfd: BorrowedFd<'_>) -> Result<()> {
        self.call(Request::Journal, &[memfd]).map(|_| ())
    }

    pub fn tmp(&self, ns: u64, dir: BorrowedFd<'_>) -> Result<()> {
        self.call(Request::Tmp { ns }, &[dir]).map(|_| ())
    }

    pub fn drop_key(&self, key: u64) -> Result<()> {
        self.call(Request::Drop { key }, &[]).map(|_| ())
    }

    /// Copies of everything held (the holder keeps its own).
    pub fn take(&self) -> Result<Taken> {
        super::send_request(self.sock.as_fd(), Request::Take, &[]).context("cannot reach the holder")?;
        let mut t = Taken::default();
        loop {
            let (reply, mut fds) = self.reply()?;
            match (reply, fds.pop()) {
                (Reply::Held { key, ns }, Some(fd)) => t.listeners.push((key, ns, fd)),
                (Reply::Journal, Some(fd)) => t.journal = Some(fd),
                (Reply::Tmp { ns }, Some(fd)) => t.tmps.push((ns, fd)),
                (Reply::End(_), None) => return Ok(t),
                (other, _) => bail!("unexpected reply from the holder: {other}"),
            }
        }
    }
}
