//! Roles for the seccomp agent socket's tests (`tests/agentsock.rs`): the
//! container side of a runtime, and a peer that is not host root.

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

/// Connects to `DEVNS_OCI_SOCK` and sends `DEVNS_OCI_MSG`, as whoever runs
/// it; prints `connect: ok|ERRNO`.
pub fn peer() {
    let path = super::var("DEVNS_OCI_SOCK");
    let sock = rustix::net::socket(rustix::net::AddressFamily::UNIX, rustix::net::SocketType::STREAM, None).unwrap();
    let addr = rustix::net::SocketAddrUnix::new(path.as_str()).unwrap();
    if let Err(e) = rustix::net::connect(&sock, &addr) {
        println!("connect: {}", e.raw_os_error());
        return;
    }
    println!("connect: ok");
    let _ = rustix::net::send(&sock, super::var("DEVNS_OCI_MSG").as_bytes(), rustix::net::SendFlags::NOSIGNAL);
}
