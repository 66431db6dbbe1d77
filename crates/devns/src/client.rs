//! The CLI's side of the daemon's socket API.

use crate::wire;
use anyhow::{Context, Result, anyhow, bail};
use devns_core::api::{API_VERSION, MAX_REQUEST_BYTES};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use serde_json::Value;
use std::path::Path;

pub struct Client {
    sock: OwnedFd,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Client {
    /// Connects to the daemon at `path`; `None` when no daemon listens there.
    pub fn connect_if_running(path: &Path) -> Result<Option<Client>> {
        let sock = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
            .context("socket")?;
        let addr = SocketAddrUnix::new(path).with_context(|| format!("bad socket path {}", path.display()))?;
        match rustix::net::connect(&sock, &addr) {
            Ok(()) => Ok(Some(Client { sock, buf: Vec::new(), fds: Vec::new() })),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::CONNREFUSED) => Ok(None),
            Err(e) => Err(anyhow!("cannot connect to the devns daemon at {}: {e}", path.display())),
        }
    }

    pub fn connect(path: &Path) -> Result<Client> {
        Client::connect_if_running(path)?
            .ok_or_else(|| anyhow!("no devns daemon at {} (start one with `devns daemon`)", path.display()))
    }

    /// Sends one request (an object without `v`) with `fds`.
    pub fn send(&mut self, mut req: Value, fds: &[BorrowedFd<'_>]) -> Result<()> {
        req["v"] = API_VERSION.into();
        let mut line = serde_json::to_vec(&req)?;
        line.push(b'\n');
        let mut sent = wire::send_with_fds(self.sock.as_fd(), &line, fds).context("sending to the daemon")?;
        while sent < line.len() {
            sent += rustix::net::send(&self.sock, &line[sent..], rustix::net::SendFlags::NOSIGNAL)
                .context("sending to the daemon")?;
        }
        Ok(())
    }

    /// The next line from the daemon (`None` when it closed), with fds.
    pub fn next_line(&mut self) -> Result<Option<Value>> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(Some(serde_json::from_slice(&line).context("bad reply from the daemon")?));
            }
            if self.buf.len() > 16 * MAX_REQUEST_BYTES {
                bail!("reply from the daemon too long");
            }
            let mut chunk = [0u8; 8192];
            let n =
                wire::recv_with_fds(self.sock.as_fd(), &mut chunk, &mut self.fds).context("reading from the daemon")?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One request, one reply: its `result`, or the daemon's error.
    pub fn call(&mut self, req: Value, fds: &[BorrowedFd<'_>]) -> Result<Value> {
        let sent = self.send(req, fds);
        // A daemon that refused the connection said why before it closed
        // it, maybe before the request could go.
        let reply = match (self.next_line(), sent) {
            (Ok(Some(reply)), _) => reply,
            (_, Err(e)) => return Err(e),
            (Ok(None), Ok(())) => bail!("the daemon closed the connection"),
            (Err(e), Ok(())) => return Err(e),
        };
        if reply["ok"] == Value::Bool(true) {
            Ok(reply["result"].clone())
        } else {
            Err(anyhow!("{}", reply["error"].as_str().unwrap_or("the daemon refused without a reason")))
        }
    }

    /// The fds that came with replies so far.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }
}
