//! A container that tries to type into the host's terminal (test
//! `sec_container.rs`).

use std::os::fd::AsRawFd;

/// A file's `st_dev:st_ino`, or `closed`.
fn fd_id(fd: i32) -> String {
    // SAFETY: `st` is plain data that fstat fills in; an fd that is not
    // open only makes fstat fail.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, exclusively borrowed stat buffer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return "closed".into();
    }
    format!("{}:{}", st.st_dev, st.st_ino)
}

/// TIOCSTI of every byte of `text` on `fd`: 0, or the first errno.
fn push(fd: i32, text: &str) -> i32 {
    for b in text.bytes() {
        // SAFETY: TIOCSTI reads one byte through the pointer, which points
        // at a live local.
        if unsafe { libc::ioctl(fd, libc::TIOCSTI, &b as *const u8) } != 0 {
            return std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
        }
    }
    0
}

/// Waits for a line, then reports what its fds and `/dev/tty` are (`outer`
/// for the host's terminal, `DEVNS_OUTER_TTY`, by `st_dev:st_ino`) and
/// pushes `DEVNS_TIOCSTI` into every terminal it holds.
pub fn tiocsti() {
    let payload = super::var("DEVNS_TIOCSTI");
    let outer = super::var("DEVNS_OUTER_TTY");
    println!("child-ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    println!("got {}", line.trim());
    let same = |fd: i32| if fd_id(fd) == outer { "outer" } else { "other" };
    for fd in 0..=3 {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).map(|p| p.display().to_string());
        let (id, link) = (fd_id(fd), link.unwrap_or_else(|_| "-".into()));
        let s = if id == "closed" { "closed" } else { same(fd) };
        println!("fd{fd} {s} {link}");
    }
    match rustix::fs::open("/dev/tty", rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY, rustix::fs::Mode::empty())
    {
        Ok(t) => {
            // Its inode is the view's node: the terminal behind it has a
            // session, of the container's (a leader in its pid namespace,
            // > 0) or of the host's (0: not in it).
            let mut sid: libc::pid_t = -1;
            // SAFETY: TIOCGSID writes one pid_t through the pointer, which
            // points at a live local.
            unsafe { libc::ioctl(t.as_raw_fd(), libc::TIOCGSID, &mut sid as *mut libc::pid_t) };
            println!("devtty session {}", if sid > 0 { "inside" } else { "outside" });
        }
        Err(e) => println!("devtty {e}"),
    }
    let tty =
        rustix::fs::open("/dev/tty", rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY, rustix::fs::Mode::empty());
    for fd in [0, 1, 2, 3].into_iter().chain(tty.as_ref().map(|t| t.as_raw_fd())) {
        push(fd, &payload);
    }
    println!("child-done");
}
