//! A daemon killed with SIGKILL leaves its containers' trapped calls
//! waiting, not failing: its seccomp listeners live on in the holder (or
//! systemd's fd store), and the next daemon answers them.

mod common;
use common::*;

/// Whether some process of container `c` (its `devns run` is `c.pid()`)
/// waits in a trapped `mknod`/`mknodat` (`/proc/PID/syscall`).
fn waits_in_mknod(c: &Container) -> bool {
    let nrs = [libc::SYS_mknod, libc::SYS_mknodat].map(|n| n.to_string());
    descendants(c.pid()).iter().any(|pid| {
        let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        s.split(' ').next().is_some_and(|nr| nrs.iter().any(|n| n == nr))
    })
}

/// Every process below `pid`.
fn descendants(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        for t in std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            all.extend(kids.split_whitespace().filter_map(|k| k.parse::<i32>().ok()));
        }
        i += 1;
    }
    all
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn calls_made_while_the_daemon_is_down_wait_and_succeed_after_its_restart() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let (mut d, mut c) = daemon_serving_a(&env);
    d.kill9();
    c.send("for i in 1 2 3 4 5; do mknod /tmp/n$i c 1 3 && echo made$i || echo failed$i; done\n");
    eventually("a mknod waits for the next daemon", || waits_in_mknod(&c));
    let _d = Daemon::start(&env);
    assert_eq!(c.lines_until("end"), ["made1", "made2", "made3", "made4", "made5"]);
    // And the next daemon keeps answering: a refusal is its, not ENOSYS.
    assert_eq!(
        c.sh("mknod /tmp/mem c 1 1 2>&1 || echo refused"),
        ["mknod: /tmp/mem: Operation not permitted", "refused"]
    );
    drop(c);
    drop(_d);
    eventually("the holder exits: nothing held, no daemon attached", || env.holders().is_empty());
}

/// Whether process `pid` is stopped (`T` in `/proc/PID/stat`).
fn stopped(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
}

/// A daemon that stops itself in its first trapped call once it has
/// journaled `at` (`received` or `answered`), killed there; the call is
/// answered by the next daemon, exactly once.
fn killed_in_a_call(at: &str) {
    let env = Env::new();
    let mut d = Daemon::start_wrapped(&env, &["env", &format!("DEVNS_TEST_STOP_IN_CALL={at}")]);
    let mut c = shell_container(&env, &["--name", "a"]);
    c.send("mknod /tmp/n c 1 3 && echo made || echo failed\n");
    eventually("the daemon stopped in the call", || stopped(d.pid()));
    d.kill9();
    let _d = Daemon::start(&env);
    // `answered`: the node was made; handled again, it would be EEXIST.
    assert_eq!(c.lines_until("end"), ["made"]);
    assert_eq!(c.sh("[ -c /tmp/n ] && echo node"), ["node"]);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_call_the_killed_daemon_had_received_but_not_answered_is_handled_by_the_next() {
    if !privileged() {
        return;
    }
    killed_in_a_call("received");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn an_answer_the_killed_daemon_had_decided_but_not_sent_is_sent_by_the_next() {
    if !privileged() {
        return;
    }
    killed_in_a_call("answered");
}

/// A loop device the daemon made for a container's `losetup -f` and was
/// killed before recording is removed by the next daemon, which handles
/// the call again and makes the container a device of its own: nothing
/// leaks, and the container's device goes with it.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_loop_device_made_by_a_daemon_killed_before_recording_it_is_removed_by_the_next() {
    if !privileged() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let imgs = common::images::Images::new("madeloop");
    let img = imgs.make("a.img", false);
    let ours_before: Vec<(String, u64)> = devns_loops();
    let mut d = Daemon::start_wrapped(&env, &["env", "DEVNS_TEST_STOP_IN_CALL=loop-made"]);
    let mut c = shell_container(&env, &["--name", "a"]);
    c.send(&format!("losetup -f --show {img}; echo end\n"));
    eventually("the daemon stopped with the device made", || stopped(d.pid()));
    let made = unbound_since(&ours_before);
    let _leak = Unrecorded(made.clone());
    d.kill9();
    let _d = Daemon::start(&env);
    let got = c.lines_until("end");
    assert_eq!(got.len(), 1, "{got:?}");
    let dev = got[0].trim_start_matches("/dev/").to_owned();
    let disk = imgs.disk(&got[0]);
    for (name, ino) in &made {
        let now = std::fs::metadata(format!("/sys/block/{name}")).map(|m| m.ino()).ok();
        // Removed, or (the same number taken again) another device.
        assert!(now.is_none_or(|i| i != *ino) || *name == dev, "{name} left behind");
        if *name == dev {
            assert_ne!(now, Some(*ino), "the container's device is a new one, not the unrecorded one");
        }
    }
    drop(c);
    eventually("the container's device removed with it", || disk.gone());
}

/// A stand-alone `devns run` (no daemon) killed between making a loop
/// device and recording it: its watcher removes the device, which the
/// run's journal names.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_loop_device_made_by_a_run_killed_before_recording_it_is_removed_by_its_watcher() {
    if !privileged() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let imgs = common::images::Images::new("runloop");
    let img = imgs.make("a.img", false);
    let ours_before: Vec<(String, u64)> = devns_loops();
    let mut cmd = env.devns();
    cmd.env("DEVNS_TEST_STOP_IN_CALL", "loop-made").args(["run", "--name", "a", "--", "sh", "-c"]);
    cmd.arg(format!("echo ready; losetup -f --show {img}; echo end"));
    let mut c = Container::spawn(&mut cmd);
    assert_eq!(c.line(), "ready");
    eventually("the run stopped with the device made", || stopped(c.pid()));
    let made = unbound_since(&ours_before);
    let _leak = Unrecorded(made.clone());
    rustix::process::kill_process(rustix::process::Pid::from_raw(c.pid()).unwrap(), rustix::process::Signal::KILL)
        .unwrap();
    let _ = c.child.wait();
    for (name, ino) in &made {
        let same = || std::fs::metadata(format!("/sys/block/{name}")).map(|m| m.ino()).ok() == Some(*ino);
        eventually(&format!("{name} removed by the watcher"), || !same());
    }
    eventually("the run's namespace freed", || {
        std::fs::read_dir(env.state_dir().join("ns")).is_ok_and(|mut d| d.next().is_none())
    });
}

/// devns's loop devices made since `before` and unbound (other tests make
/// devices of their own meanwhile): the one made before the stop.
fn unbound_since(before: &[(String, u64)]) -> Vec<(String, u64)> {
    let made: Vec<_> = devns_loops()
        .into_iter()
        .filter(|l| !before.contains(l))
        .filter(|(n, _)| !Path::new(&format!("/sys/block/{n}/loop/backing_file")).exists())
        .collect();
    assert!(!made.is_empty(), "a device made before the stop");
    made
}

/// Removes, when the test fails, those of these devices that are still the
/// same ones (by inode) and unbound: what the bug under test leaks.
struct Unrecorded(Vec<(String, u64)>);

impl Drop for Unrecorded {
    fn drop(&mut self) {
        for (name, ino) in &self.0 {
            let still = devns_loops().contains(&(name.clone(), *ino));
            let unbound = !Path::new(&format!("/sys/block/{name}/loop/backing_file")).exists();
            if let (true, true, Some(n)) = (still, unbound, name.strip_prefix("loop").and_then(|n| n.parse().ok())) {
                drop(AddedLoop(n));
            }
        }
    }
}

/// devns's loop devices (`loopN` from `NS_LOOP_BASE` up, below the tests'
/// own added ones) with their sysfs inodes.
fn devns_loops() -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut v: Vec<(String, u64)> = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u32 = name.strip_prefix("loop")?.parse().ok()?;
            if !(devns_core::loopctl::NS_LOOP_BASE..common::ADDED_LOOP_BASE).contains(&n) {
                return None;
            }
            // The device's own directory (the link's target), as below.
            Some((name.clone(), std::fs::metadata(format!("/sys/block/{name}")).ok()?.ino()))
        })
        .collect();
    v.sort();
    v
}

/// Sets a path's mode for the guard's life.
struct Mode(std::path::PathBuf, u32);
impl Mode {
    fn set(path: &Path, mode: u32) -> Mode {
        use std::os::unix::fs::PermissionsExt;
        let old = std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        Mode(path.to_owned(), old)
    }
}
impl Drop for Mode {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(self.1));
    }
}

use std::path::Path;
use std::process::{Command, Stdio};

/// Once the daemon serves `c`'s trapped calls: a container runs before
/// its `devns run` has handed its listener over, and a `devns run` whose
/// `listen` is not acknowledged (the daemon killed first) ends its
/// container.
fn served(c: &mut Container) {
    assert_eq!(c.sh("mknod /tmp/served c 1 3 && rm /tmp/served && echo served"), ["served"]);
}

/// A daemon of `env`'s and a container `a` whose calls it serves.
fn daemon_serving_a(env: &Env) -> (Daemon<'_>, Container) {
    let d = Daemon::start(env);
    let mut c = shell_container(env, &["--name", "a"]);
    served(&mut c);
    (d, c)
}

/// The keys and namespaces the holder of `env` holds, as root sees them.
fn held(env: &Env) -> Vec<(u64, u64)> {
    let c = devns::holder::client::Client::connect(&env.state_dir()).unwrap().expect("a holder runs");
    c.take().unwrap().listeners.iter().map(|(k, ns, _)| (*k, *ns)).collect()
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn only_root_can_use_the_holder_s_socket() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let (_d, _c) = daemon_serving_a(&env);
    let before = held(&env);
    assert_eq!(before.len(), 1);
    let shared = SharedDir::new("holder-peer");
    let bin = shared.testbin();
    let sock = devns::holder::socket_path(&env.state_dir());
    let peer = || {
        let out = Command::new(&bin)
            .arg("holder-peer")
            .env("DEVNS_HOLDER_SOCK", &sock)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    use std::os::unix::process::CommandExt;
    // The holder's directory is root's alone.
    assert_eq!(peer(), format!("connect: {}\n", libc::EACCES));
    {
        // Opened up here, for this check only: SO_PEERCRED still refuses.
        let _modes = [
            Mode::set(env.dir.path(), 0o711),
            Mode::set(&env.state_dir(), 0o711),
            Mode::set(&devns::holder::dir(&env.state_dir()), 0o711),
            Mode::set(&sock, 0o777),
        ];
        assert_eq!(peer(), "connect: ok\nreply: closed\n");
    }
    assert_eq!(held(&env), before);
}

/// Sends one datagram with `fds` on `sock` and returns the reply's text
/// (`None`: the holder closed the connection).
fn exchange(sock: &rustix::fd::OwnedFd, msg: &[u8], fds: &[rustix::fd::BorrowedFd<'_>]) -> Option<String> {
    use rustix::fd::AsFd;
    devns::wire::send_with_fds(sock.as_fd(), msg, fds).ok()?;
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    match devns::wire::recv_with_fds(sock.as_fd(), &mut buf, &mut got) {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
    }
}

fn holder_socket(env: &Env) -> rustix::fd::OwnedFd {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketType};
    let sock = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
    let addr = SocketAddrUnix::new(devns::holder::socket_path(&env.state_dir())).unwrap();
    rustix::net::connect(&sock, &addr).unwrap();
    sock
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn junk_oversized_messages_and_fds_that_are_no_listeners_change_nothing_in_the_holder() {
    if !privileged() {
        return;
    }
    use rustix::fd::AsFd;
    let env = Env::new();
    let (mut d, mut c) = daemon_serving_a(&env);
    let before = held(&env);
    let ns = before[0].1;
    let copy = devns::holder::client::Client::connect(&env.state_dir()).unwrap().unwrap().take().unwrap();
    let listener = copy.listeners[0].2.as_fd();
    let null: rustix::fd::OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
    let unsealed = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let root_dir: rustix::fd::OwnedFd = std::fs::File::open("/proc").unwrap().into();
    let sock = holder_socket(&env);
    let big = vec![b'a'; 64 * 1024];
    let cases: Vec<(&[u8], Vec<rustix::fd::BorrowedFd<'_>>)> = vec![
        (b"\xff\xfe", vec![]),
        (b"put", vec![]),
        (b"put 1 2", vec![listener]),
        (b"put -1", vec![listener]),
        (&big, vec![]),
        (&big, vec![listener]),
        (b"drop 999999", vec![]),
        (b"take", vec![null.as_fd()]),
        (b"put 1", vec![]),
        (b"put 1", vec![null.as_fd()]),
        (b"put 1", vec![pipe_r.as_fd()]),
        (b"put 1", vec![listener, null.as_fd()]),
        (b"journal", vec![null.as_fd()]),
        (b"journal", vec![unsealed.as_fd()]),
        (b"tmp 0", vec![null.as_fd()]),
        (b"tmp 1", vec![root_dir.as_fd()]),
    ];
    for (msg, fds) in &cases {
        let reply = exchange(&sock, msg, fds)
            .unwrap_or_else(|| panic!("the holder hung up on {:?}", &msg[..msg.len().min(20)]));
        assert!(reply.starts_with("err "), "{:?}: {reply}", &msg[..msg.len().min(20)]);
    }
    // An empty message reads as a hang-up: the connection ends, nothing else.
    assert_eq!(exchange(&sock, b"", &[]), None);
    assert_eq!(held(&env), before, "namespace {ns}");
    // And the listeners it holds still carry the container over a crash.
    d.kill9();
    let _d = Daemon::start(&env);
    assert_eq!(c.sh("mknod /tmp/n c 1 3 && echo made"), ["made"]);
}

/// A process of the test's, killed and reaped on drop.

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_listener_whose_namespace_ended_while_the_daemon_was_down_is_dropped_at_restart() {
    if !privileged() {
        return;
    }
    use std::io::BufRead;
    let env = Env::new();
    let (mut d, mut c) = daemon_serving_a(&env);
    let live = held(&env);
    // A filtered process outside every namespace devns keeps, its listener
    // handed to the holder as the listener of a namespace that is gone.
    let mut p =
        Killed(Command::new(TESTBIN).arg("filtered").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap());
    let mut line = String::new();
    std::io::BufReader::new(p.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let n: i32 = line.trim().strip_prefix("listener ").unwrap().parse().unwrap();
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(p.0.id() as i32).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    let stale = rustix::process::pidfd_getfd(&pidfd, n, rustix::process::PidfdGetfdFlags::empty()).unwrap();
    let holder = devns::holder::client::Client::connect(&env.state_dir()).unwrap().unwrap();
    let gone_ns = live[0].1 + 1_000_000;
    let key = holder.put(gone_ns, rustix::fd::AsFd::as_fd(&stale)).unwrap();
    drop((holder, stale));
    assert_eq!(held(&env).len(), 2);
    d.kill9();
    let _d = Daemon::start(&env);
    assert_eq!(held(&env), live, "the stale listener {key} is dropped, the live one kept");
    assert_eq!(c.sh("mknod /tmp/n c 1 3 && echo made"), ["made"]);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_holder_exits_once_it_holds_nothing_and_no_daemon_is_attached() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut d = Daemon::start(&env);
    let first = env.holders();
    assert_eq!(first.len(), 1, "the daemon started a holder");
    let mut c = shell_container(&env, &["--name", "a"]);
    served(&mut c);
    d.kill9();
    // It holds the container's listener: it stays.
    assert_eq!(env.holders(), first);
    let mut d = Daemon::start(&env);
    assert_eq!(env.holders(), first, "the next daemon attached to the same holder");
    drop(c);
    eventually("the container's listener is dropped", || held(&env).is_empty());
    // Empty, but a daemon is attached: it stays.
    assert_eq!(env.holders(), first);
    d.stop();
    eventually("the holder exits", || env.holders().is_empty());
}

/// The next `sd_notify` message on the stand-in notify socket, with fds.
fn notification(sock: &std::os::unix::net::UnixDatagram) -> (String, Vec<rustix::fd::OwnedFd>) {
    let mut buf = [0u8; 4096];
    let mut fds = Vec::new();
    let n = devns::wire::recv_with_fds(rustix::fd::AsFd::as_fd(sock), &mut buf, &mut fds).expect("a notification");
    (String::from_utf8_lossy(&buf[..n]).into_owned(), fds)
}

/// Notifications until one that starts with `what`; the fds stored meanwhile by name.
fn until(
    sock: &std::os::unix::net::UnixDatagram,
    what: &str,
    stored: &mut Vec<(String, rustix::fd::OwnedFd)>,
) -> String {
    loop {
        let (text, mut fds) = notification(sock);
        if let Some(name) = text.strip_prefix("FDSTORE=1\nFDNAME=") {
            assert_eq!(fds.len(), 1, "{text}");
            stored.push((name.to_owned(), fds.remove(0)));
        }
        if text.starts_with(what) {
            return text;
        }
    }
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn under_systemd_listeners_go_to_its_fd_store_and_come_back_as_listen_fds() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let path = env.dir.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let notify = format!("NOTIFY_SOCKET={}", path.display());
    let mut d = Daemon::start_wrapped(&env, &["env", &notify]);
    let mut stored = Vec::new();
    until(&sock, "READY=1", &mut stored);
    let mut c = shell_container(&env, &["--name", "a"]);
    served(&mut c);
    until(&sock, "FDSTORE=1\nFDNAME=devns-tmp-", &mut stored);
    assert!(env.holders().is_empty(), "no holder beside systemd's store");
    let names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[0], "devns-journal");
    assert!(names[1].starts_with("devns-listener-1-"), "{names:?}");
    assert!(devns_sys::seccomp::is_listener(&stored[1].1));

    d.kill9();
    c.send("mknod /tmp/n c 1 3 && echo made || echo failed\n");
    eventually("a mknod waits for the next daemon", || waits_in_mknod(&c));
    // Given back as the service manager does: from fd 3 on, named, for
    // the daemon's pid (the shell's, which execs it).
    let inherit: Vec<i32> = stored
        .iter()
        .map(|(_, fd)| {
            // SAFETY: F_DUPFD makes a new inheritable fd (>= 100) of a live fd.
            unsafe { libc::fcntl(rustix::fd::AsRawFd::as_raw_fd(fd), libc::F_DUPFD, 100) }
        })
        .collect();
    let moves: String = inherit.iter().enumerate().map(|(i, fd)| format!("{}<&{fd} {fd}<&- ", 3 + i)).collect();
    let script = format!("exec {moves}; LISTEN_PID=$$ exec \"$0\" \"$@\"");
    let fds = format!("LISTEN_FDS={}", stored.len());
    let fdnames = format!("LISTEN_FDNAMES={}", names.join(":"));
    let _d = Daemon::start_wrapped(&env, &["env", &notify, &fds, &fdnames, "bash", "-c", &script]);
    for fd in inherit {
        // SAFETY: the copies made above, owned by nothing else, closed once.
        unsafe { libc::close(fd) };
    }
    assert_eq!(c.lines_until("end"), ["made"]);
    let mut again = Vec::new();
    until(&sock, "READY=1", &mut again);
    assert!(again.is_empty(), "nothing stored twice: {:?}", again.iter().map(|a| &a.0).collect::<Vec<_>>());
    // Its container gone, its listener and /tmp leave the store.
    drop(c);
    let removed = until(&sock, "FDSTOREREMOVE=1\nFDNAME=devns-listener-1-", &mut again);
    assert_eq!(removed, format!("FDSTOREREMOVE=1\nFDNAME={}", names[1]));
    assert!(env.holders().is_empty());
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_holder_killed_under_a_running_daemon_is_replaced_and_given_everything_again() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let (mut d, mut c) = daemon_serving_a(&env);
    let first = env.holders();
    assert_eq!(first.len(), 1, "one holder: {first:?}");
    let pid = rustix::process::Pid::from_raw(first[0]).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    // With no container started meanwhile: the daemon notices by itself.
    eventually("another holder holds a's listener", || {
        let now = env.holders();
        let client = devns::holder::client::Client::connect(&env.state_dir()).ok().flatten();
        let listeners = client.and_then(|c| c.take().ok()).map_or(0, |t| t.listeners.len());
        now.len() == 1 && now != first && listeners > 0
    });
    // And it is the one that keeps the calls over the daemon's kill.
    d.kill9();
    c.send("mknod /tmp/n c 1 3 && echo made || echo failed\n");
    eventually("the mknod waits for the next daemon", || waits_in_mknod(&c));
    let _d = Daemon::start(&env);
    assert_eq!(c.lines_until("end"), ["made"]);
    drop(c);
    drop(_d);
    eventually("the holder exits: nothing held, no daemon attached", || env.holders().is_empty());
}
