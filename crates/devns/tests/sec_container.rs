//! Attacks of a hostile container on the host through what `devns run`
//! hands it: the terminal it was started from, and the host's mounts that
//! its own `/dev`, `/proc` and `/tmp` cover.

mod common;
use common::*;
use rustix::fd::OwnedFd;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

// ---- a terminal of the test's own -----------------------------------------------

/// A pty pair: the slave stands for the terminal a user starts `devns run`
/// from, the master for the terminal emulator (the test types and reads
/// the screen there).
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

impl Pty {
    fn new(rows: u16, cols: u16) -> Pty {
        use rustix::pty::OpenptFlags;
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
        rustix::pty::grantpt(&master).unwrap();
        rustix::pty::unlockpt(&master).unwrap();
        let flags = rustix::pty::OpenptFlags::RDWR | rustix::pty::OpenptFlags::NOCTTY;
        let slave = rustix::pty::ioctl_tiocgptpeer(&master, flags).unwrap();
        let ws = rustix::termios::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        rustix::termios::tcsetwinsize(&master, ws).unwrap();
        Pty { master, slave }
    }

    /// The slave's identity (`st_dev:st_ino`), which no other terminal has
    /// (device numbers alone repeat across devpts instances).
    fn slave_id(&self) -> String {
        let st = rustix::fs::fstat(&self.slave).unwrap();
        format!("{}:{}", st.st_dev, st.st_ino)
    }

    /// `cmd` as a login shell would run it: a session leader with the
    /// slave as its stdin, stdout, stderr and controlling terminal.
    fn spawn(&self, cmd: &mut Command) -> Child {
        let dup = || Stdio::from(self.slave.try_clone().unwrap());
        cmd.stdin(dup()).stdout(dup()).stderr(dup());
        // SAFETY: the closure runs in the forked child before exec and makes
        // only the setsid and ioctl syscalls, which are async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, || {
                rustix::process::setsid()?;
                rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
                Ok(())
            });
        }
        cmd.spawn().expect("spawn on the pty")
    }

    /// What appears on the terminal, read by a thread of its own.
    fn screen(&self) -> Screen {
        let master = self.master.try_clone().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = rustix::io::read(&master, &mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Screen { rx, text: String::new(), seen: 0 }
    }

    /// Types `text` on the terminal.
    fn type_in(&self, text: &[u8]) {
        let mut m = std::fs::File::from(self.master.try_clone().unwrap());
        m.write_all(text).unwrap();
    }
}

struct Screen {
    rx: Receiver<Vec<u8>>,
    text: String,
    /// How much of `text` earlier waits consumed.
    seen: usize,
}

impl Screen {
    /// Waits until `what` appears after what earlier waits saw; returns
    /// the text up to and including it (carriage returns dropped).
    fn until(&mut self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(i) = self.text[self.seen..].find(what) {
                let end = self.seen + i + what.len();
                let got = self.text[self.seen..end].to_owned();
                self.seen = end;
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(b) => self.text.push_str(&String::from_utf8_lossy(&b).replace('\r', "")),
                Err(_) => panic!("{what:?} never appeared on the terminal; it shows:\n{}", self.text),
            }
        }
    }
}

/// The session of host process `pid`.
fn session_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(") ").unwrap();
    rest.split(' ').nth(3).unwrap().parse().unwrap()
}

/// Host pids of processes whose `argv[0]` is `exe`.
fn processes_of(exe: &Path) -> Vec<i32> {
    let want = exe.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|b| *b == 0).next() == Some(want))
        })
        .collect()
}

/// The container pushes a command into the input of the terminal `devns
/// run` was started from (`TIOCSTI`, allowed here by
/// `dev.tty.legacy_tiocsti=1`), on its stdio, on an extra fd of that
/// terminal and on `/dev/tty`; the host's shell must never run it. The
/// container holds no file of that terminal, and is in a session of its
/// own.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_container_cannot_type_into_the_terminal_devns_run_was_started_from() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let shared = SharedDir::new("tiocsti");
    let exe = shared.testbin();
    let pwned = shared.0.join("pwned");
    let pty = Pty::new(24, 80);
    let mut screen = pty.screen();
    // The host's shell: devns run (with the terminal also on fd 3), then
    // the next line of input, which the user types later, run as root.
    let script = r#""$0" run -- "$1" tiocsti 3<&0; echo devns-done; read -r line; eval "$line"; echo outer-done"#;
    let mut c = Command::new("sh");
    env.devns_env(c.args(["-c", script, env!("CARGO_BIN_EXE_devns")]).arg(&exe))
        .env("DEVNS_TIOCSTI", format!("touch {}\n", pwned.display()))
        .env("DEVNS_OUTER_TTY", pty.slave_id());
    let mut sh = pty.spawn(&mut c);
    screen.until("child-ready");
    let inside = processes_of(&exe);
    assert_eq!(inside.len(), 1, "the container's process: {inside:?}");
    let container_session = session_of(inside[0]);
    pty.type_in(b"go\n");
    let report = screen.until("child-done");
    screen.until("devns-done");
    pty.type_in(b"true\n");
    screen.until("outer-done");
    assert!(sh.wait().unwrap().success());
    assert!(!pwned.exists(), "the container's TIOCSTI made the host's shell run a command:\n{report}");
    let lines: Vec<&str> = report.lines().filter(|l| l.starts_with("fd") || l.starts_with("devtty")).collect();
    assert_eq!(lines.len(), 5, "{report}");
    for l in &lines {
        assert!(!l.contains(" outer"), "the container holds the host's terminal: {l}\n{report}");
    }
    for (fd, l) in lines[..3].iter().enumerate() {
        assert!(l.ends_with(" /dev/pts/0"), "fd {fd} is not the container's own pty: {l}");
    }
    assert_eq!(lines[3], "fd3 closed -", "an extra fd of the host's terminal reached the container");
    assert_eq!(lines[4], "devtty session inside", "/dev/tty is the host's terminal");
    assert_ne!(container_session, sh.id() as i32, "the container is in the session of devns run");
    assert_ne!(container_session, session_of(std::process::id() as i32));
}

/// Under a terminal, `tty` inside names the container's own pty; typed
/// input, output, the window size, a resize and EOF are relayed; the exit
/// status is the command's; the terminal's modes come back as they were.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_terminal_is_relayed_through_a_pty_of_the_container_s_own() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let pty = Pty::new(33, 101);
    let before = rustix::termios::tcgetattr(&pty.slave).unwrap();
    let mut screen = pty.screen();
    let mut c = env.devns();
    c.args(["run", "--", "sh", "-c", "tty; stty size; echo ready; read x; stty size; cat; exit 3"]);
    let mut devns = pty.spawn(&mut c);
    assert_eq!(screen.until("ready").trim().lines().collect::<Vec<_>>(), ["/dev/pts/0", "33 101", "ready"]);
    // A resize of the outer terminal reaches the inner one before the
    // input typed after it.
    let ws = rustix::termios::Winsize { ws_row: 44, ws_col: 120, ws_xpixel: 0, ws_ypixel: 0 };
    rustix::termios::tcsetwinsize(&pty.master, ws).unwrap();
    pty.type_in(b"go\n");
    screen.until("44 120");
    pty.type_in(b"hello relay\n");
    // The inner terminal's echo, then cat's copy.
    screen.until("hello relay\nhello relay\n");
    pty.type_in(b"\x04");
    assert_eq!(devns.wait().unwrap().code(), Some(3));
    let after = rustix::termios::tcgetattr(&pty.slave).unwrap();
    assert_eq!(
        (after.input_modes, after.output_modes, after.local_modes, after.control_modes),
        (before.input_modes, before.output_modes, before.local_modes, before.control_modes),
        "the terminal's modes were not restored"
    );
}

/// Only the terminal fds go through the pty: a pipe on stdout stays the
/// pipe (no carriage returns added), stdin from the terminal is the pty.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn under_a_terminal_pipes_are_still_passed_through() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let pty = Pty::new(24, 80);
    let _screen = pty.screen();
    let mut c = env.devns();
    c.args(["run", "--", "sh", "-c", "tty; readlink /proc/self/fd/1 | cut -c1-5; echo out"]);
    let dup = || Stdio::from(pty.slave.try_clone().unwrap());
    c.stdin(dup()).stderr(dup()).stdout(Stdio::piped());
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "/dev/pts/0\npipe:\nout\n");
}

/// A signal that ends `devns run` while it relays gives the terminal its
/// modes back too.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_terminal_gets_its_modes_back_when_devns_run_is_ended_by_a_signal() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let pty = Pty::new(24, 80);
    let before = rustix::termios::tcgetattr(&pty.slave).unwrap();
    let mut screen = pty.screen();
    let mut c = env.devns();
    c.args(["run", "--", "sh", "-c", "echo ready; exec sleep 1000"]);
    let mut devns = pty.spawn(&mut c);
    screen.until("ready");
    let raw = rustix::termios::tcgetattr(&pty.slave).unwrap();
    assert!(!raw.local_modes.contains(rustix::termios::LocalModes::ICANON), "the terminal is raw while relayed");
    let pid = rustix::process::Pid::from_raw(devns.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert_eq!(devns.wait().unwrap().code(), Some(128 + libc::SIGTERM));
    let after = rustix::termios::tcgetattr(&pty.slave).unwrap();
    assert_eq!((after.local_modes, after.input_modes), (before.local_modes, before.input_modes));
}

/// Through a daemon, too, the container gets a pty of its own.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn with_a_daemon_the_container_gets_a_pty_of_its_own() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let pty = Pty::new(24, 80);
    let mut screen = pty.screen();
    let mut c = env.devns();
    c.args(["run", "--", "sh", "-c", "tty; echo ready; read x; echo got-$x"]);
    let mut devns = pty.spawn(&mut c);
    assert_eq!(screen.until("ready").trim().lines().next(), Some("/dev/pts/0"));
    pty.type_in(b"typed\n");
    screen.until("got-typed");
    assert!(devns.wait().unwrap().success());
}

/// The container's init holds none of the keeper's fds (init never execs,
/// so their close-on-exec flag would not close them, and container root
/// can reach init's fds): only its stdio, its own signalfd and what
/// `devns run` was given to pass on.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_container_s_init_holds_none_of_the_keeper_s_fds() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    // What this process passes on to devns run (no close-on-exec flag).
    let passed: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{n}")).ok()?;
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim().to_owned();
            (u32::from_str_radix(&flags, 8).ok()? & libc::O_CLOEXEC as u32 == 0).then_some(n)
        })
        .collect();
    // Init is not dumpable (the container may not trace it): its fds are
    // read from the host.
    let mut c = env.spawn(&["--", "sh", "-c", "echo up; read x"]);
    assert_eq!(c.line(), "up");
    let init = c.init();
    // Once init waits for signals: its spawn of the command is over, and
    // with it the fds the spawn makes for a moment (the command may print
    // before init is done with them).
    eventually("init waits in poll", || {
        let call = std::fs::read_to_string(format!("/proc/{init}/syscall")).unwrap_or_default();
        let nr = call.split_whitespace().next().unwrap_or_default();
        nr == libc::SYS_poll.to_string() || nr == libc::SYS_ppoll.to_string()
    });
    let mut out = String::new();
    for e in std::fs::read_dir(format!("/proc/{init}/fd")).unwrap().flatten() {
        let what = std::fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default();
        out.push_str(&format!("{} {what}\n", e.file_name().to_string_lossy()));
    }
    c.send("\n");
    let (status, _) = c.wait();
    assert_eq!(status, 0);
    for l in out.lines() {
        let (fd, what) = l.split_once(' ').unwrap();
        // Closed between the listing and readlink: init's own, for a moment
        // (the pipe of its spawn of the command), never one the keeper had.
        let gone = what.is_empty();
        let ok =
            gone || ["0", "1", "2"].contains(&fd) || passed.iter().any(|p| p == fd) || what == "anon_inode:[signalfd]";
        assert!(ok, "init holds fd {fd} ({what}) of the keeper's:\n{out}");
    }
    assert_eq!(out.lines().filter(|l| l.ends_with("anon_inode:[signalfd]")).count(), 1, "{out}");
}

// ---- what the container's umounts uncover ---------------------------------------

/// The container's own mounts, each of which it may undo.
const OWN_MOUNTS: [&str; 6] = ["/tmp", "/dev/pts", "/dev/shm", "/dev/mqueue", "/dev", "/proc"];

/// As container root, unmounts each of [`OWN_MOUNTS`] until the kernel
/// refuses, then looks for the host's: `/dev` nodes that are not in the
/// view, a file in its `/dev/shm`, one in its `/tmp`, and this test's
/// process in `/proc`. Nothing of it may show.
fn umounts_uncover_nothing_of_the_host(env: &Env, args: &[&str], busybox: &str) {
    let shm = Marker::new("/dev/shm", "shm");
    let tmp = Marker::new("/tmp", "tmp");
    let view = default_view();
    let host_dev: Vec<String> = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !view.contains(n))
        .collect();
    assert!(host_dev.iter().any(|n| n == "mem" || n == "kmsg" || n == "shm"), "{host_dev:?}");
    let mut script = String::new();
    for m in OWN_MOUNTS {
        script += &format!(
            "i=0; while [ $i -lt 20 ] && {busybox} umount -l {m}; do i=$((i+1)); done; echo umounted {m} $i; "
        );
    }
    for n in &host_dev {
        script += &format!("if [ -e '/dev/{n}' ] || [ -L '/dev/{n}' ]; then echo 'host /dev/{n}'; fi; ");
    }
    script += &format!(
        "[ -e {} ] && echo host-shm; [ -e {} ] && echo host-tmp; [ -e /proc/{} ] && echo host-proc; echo done",
        shm.0.display(),
        tmp.0.display(),
        std::process::id()
    );
    let mut all = args.to_vec();
    all.extend(["--", busybox, "sh", "-c", &script]);
    let o = env.run(&all);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success() && out.ends_with("done\n"), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    // Each of them was a mount of the container's own, which it could undo
    // (stderr has the kernel's refusal that ended each loop).
    for m in OWN_MOUNTS {
        assert!(out.lines().any(|l| l.starts_with(&format!("umounted {m} ")) && !l.ends_with(" 0")), "{m}: {out}");
    }
    let uncovered: Vec<&str> = out.lines().filter(|l| l.starts_with("host")).collect();
    assert!(
        uncovered.is_empty(),
        "the container's umounts uncovered {} of the host's: {:?} ...",
        uncovered.len(),
        &uncovered[..uncovered.len().min(8)]
    );
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn without_rootfs_umounts_uncover_nothing_of_the_host() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    umounts_uncover_nothing_of_the_host(&env, &[], "busybox");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn with_rootfs_umounts_uncover_nothing_of_the_host() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let root = busybox_rootfs(env.dir.path());
    umounts_uncover_nothing_of_the_host(&env, &["--rootfs", root.to_str().unwrap()], "/bin/busybox");
}

/// A mount of the test's own on the host, unmounted on drop.
struct HostMount(std::path::PathBuf);

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// A rootfs whose `dev` is a mount point (a host's devtmpfs bound there
/// for a chroot, say) is refused: the container's view over it is its own
/// to unmount, and the mount below, locked, would be what it uncovers.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_rootfs_with_a_mount_below_its_dev_is_refused() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let root = busybox_rootfs(env.dir.path());
    let dev = root.join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    rustix::mount::mount("none", &dev, "tmpfs", rustix::mount::MountFlags::empty(), None).unwrap();
    let _m = HostMount(dev.clone());
    let o = env.run(&["--rootfs", root.to_str().unwrap(), "--", "/bin/busybox", "true"]);
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("{} is a mount point", dev.display())), "{err}");
    assert_eq!(env.recorded_namespaces(), 0);
}
