//! Roles for the holder's tests (`tests/crash.rs`).

use rustix::net::{AddressFamily, SocketAddrUnix, SocketType};

/// As whoever runs it: connects to the holder's socket
/// (`DEVNS_HOLDER_SOCK`), asks for everything it holds, and prints what
/// happened: `connect: ok|ERRNO`, then `reply: TEXT|closed|ERRNO`.
pub fn peer() {
    let path = super::var("DEVNS_HOLDER_SOCK");
    let sock = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
    let addr = SocketAddrUnix::new(path.as_str()).unwrap();
    if let Err(e) = rustix::net::connect(&sock, &addr) {
        println!("connect: {}", e.raw_os_error());
        return;
    }
    println!("connect: ok");
    let _ = rustix::net::send(&sock, b"take", rustix::net::SendFlags::NOSIGNAL);
    let mut buf = [0u8; 256];
    match rustix::net::recv(&sock, &mut buf, rustix::net::RecvFlags::empty()) {
        Ok((0, _)) | Err(rustix::io::Errno::CONNRESET) => println!("reply: closed"),
        Ok((n, _)) => println!("reply: {}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => println!("reply: {}", e.raw_os_error()),
    }
}

/// Installs devns's container filter with a listener, prints `listener FD`
/// and waits for stdin to close: a filtered process outside every
/// namespace devns keeps, whose listener a test takes (`pidfd_getfd`).
pub fn filtered() {
    let _l = install_filter();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// Installs devns's container filter with a listener and prints
/// `listener FD`.
pub fn install_filter() -> rustix::fd::OwnedFd {
    rustix::thread::set_no_new_privs(true).unwrap();
    let l = devns_sys::seccomp::install_with_listener(&devns::agent::filter()).unwrap();
    println!("listener {}", rustix::fd::AsRawFd::as_raw_fd(&l));
    l
}
