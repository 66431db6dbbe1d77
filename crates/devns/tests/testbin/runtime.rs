//! Roles for the seccomp agent socket's tests (`tests/agentsock.rs`): the
//! container side of a runtime, and a peer that is not host root.

use rustix::fd::AsFd;
use std::os::unix::process::CommandExt;

/// Installs devns's container filter with a listener, prints `listener
/// FD`, and once a line comes on stdin (the test has taken the listener,
/// `pidfd_getfd`) becomes the shell of `DEVNS_SHELL` (the listener closed
/// on exec, the filter kept): a container whose runtime passes its
/// listener on.
pub fn filtered_shell() {
    let _l = super::holder::install_filter();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    let e = std::process::Command::new("sh").args(["-c", &super::var("DEVNS_SHELL")]).exec();
    panic!("exec sh: {e}");
}

/// Connects to `DEVNS_OCI_SOCK` and sends `DEVNS_OCI_MSG` (with its stdin
/// as the listener when `DEVNS_OCI_STDIN=1`), as whoever runs it; prints
/// `connect: ok|ERRNO`; then waits for the daemon to close the connection,
/// unless `DEVNS_OCI_EXIT=1` (a runtime that exits at once).
pub fn peer() {
    let path = super::var("DEVNS_OCI_SOCK");
    let sock = rustix::net::socket(rustix::net::AddressFamily::UNIX, rustix::net::SocketType::STREAM, None).unwrap();
    let addr = rustix::net::SocketAddrUnix::new(path.as_str()).unwrap();
    if let Err(e) = rustix::net::connect(&sock, &addr) {
        println!("connect: {}", e.raw_os_error());
        return;
    }
    println!("connect: ok");
    let msg = super::var("DEVNS_OCI_MSG");
    let stdin = std::io::stdin();
    let fds: Vec<_> = if is_set("DEVNS_OCI_STDIN") { vec![stdin.as_fd()] } else { vec![] };
    let _ = devns::wire::send_with_fds(sock.as_fd(), msg.as_bytes(), &fds);
    if !is_set("DEVNS_OCI_EXIT") {
        let mut buf = [0u8; 16];
        while let Ok((n, _)) = rustix::net::recv(&sock, &mut buf, rustix::net::RecvFlags::empty()) {
            if n == 0 {
                break;
            }
        }
    }
}

fn is_set(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| v == "1")
}
