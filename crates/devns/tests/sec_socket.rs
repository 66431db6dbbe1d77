//! The daemon's socket is world-connectable (mode 0666): what host users
//! who are not root (and containers, where the socket is reachable) do with
//! it must never decide whether host root's requests are served or whether
//! containers' trapped calls are mediated. Floods of idle connections,
//! of requests never read, of partial lines, an fd limit of 1,024; the
//! line limit on complete lines; what error replies tell a caller that is
//! not host root.

mod common;
use common::*;
use serde_json::{Value, json};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

/// Host uids of the flooding users (none of them need exist).
const FIRST_UID: u32 = 300_000;
/// As many connections as the per-user limit lets each user keep.
const PER_USER: usize = 16;

/// Runs the daemon with idle deadlines longer than any test, for tests
/// whose idle connections must stay while they look (under load too).
const LONG_IDLE: &[&str] = &["env", "DEVNS_TEST_IDLE_MS=600000"];

/// Lets this test process hold a few thousand sockets.
fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    setrlimit(Resource::Nofile, l).expect("setrlimit");
}

/// Sets the effective uid of the calling thread alone: the raw syscall,
/// unlike libc's wrapper, leaves the process's other threads as they are
/// (Linux credentials are per thread).
fn set_thread_euid(uid: u32) {
    // SAFETY: setresuid takes three ids by value; -1 leaves the real and
    // saved ids unchanged.
    let r = unsafe { libc::syscall(libc::SYS_setresuid, libc::uid_t::MAX, uid, libc::uid_t::MAX) };
    assert_eq!(r, 0, "setresuid: {}", std::io::Error::last_os_error());
}

/// A non-blocking connect, retried while the listen queue is full (a
/// daemon that stopped accepting must fail the test, not hang it);
/// `None` if it never got through.
fn connect_now(socket: &Path, until: Instant) -> Option<UnixStream> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let addr = SocketAddrUnix::new(socket).expect("socket path");
    loop {
        let s = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .expect("socket");
        match rustix::net::connect(&s, &addr) {
            Ok(()) => {
                let s = UnixStream::from(s);
                s.set_nonblocking(false).unwrap();
                return Some(s);
            }
            Err(rustix::io::Errno::AGAIN) if Instant::now() < until => std::thread::sleep(Duration::from_millis(1)),
            Err(e) if Instant::now() < until => panic!("connect: {e}"),
            Err(_) => return None,
        }
    }
}

/// `n` connections of host uid `uid` (not root). SO_PEERCRED records the
/// credentials of the connecting thread, so a thread of this test takes
/// that uid for the connects; the sockets stay with the (root) test.
fn connect_as(socket: &Path, uid: u32, n: usize) -> Vec<UnixStream> {
    connect_as_until(socket, uid, n, Instant::now() + Duration::from_secs(30))
}

fn connect_as_until(socket: &Path, uid: u32, n: usize, until: Instant) -> Vec<UnixStream> {
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        set_thread_euid(uid);
        (0..n).map_while(|_| connect_now(&socket, until)).collect()
    })
    .join()
    .expect("connecting thread")
}

/// `users` host users each open `per_user` connections.
fn flood(socket: &Path, users: u32, per_user: usize) -> Vec<UnixStream> {
    let until = Instant::now() + Duration::from_secs(30);
    (0..users).flat_map(|i| connect_as_until(socket, FIRST_UID + i, per_user, until)).collect()
}

/// The next line on `s` within `wait`: `Ok(None)` when the daemon closed
/// the connection, `Err` when nothing came.
fn line_within(s: &UnixStream, wait: Duration) -> Result<Option<Value>, String> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8];
    loop {
        match (&*s).read(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) if byte[0] == b'\n' => return Ok(Some(serde_json::from_slice(&line).expect("a JSON line"))),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(format!("nothing from the daemon within {wait:?}: {e}")),
        }
    }
}

/// Sends `req` on `s` and returns the reply, `None` if the connection was
/// refused or closed.
fn ask(s: &UnixStream, req: Value) -> Option<Value> {
    let mut req = req;
    req["v"] = 1.into();
    let mut line = serde_json::to_vec(&req).unwrap();
    line.push(b'\n');
    if (&*s).write_all(&line).is_err() {
        return None;
    }
    loop {
        match line_within(s, Duration::from_secs(30)).expect("a reply or a close") {
            // A refused connection gets the reason, then the close.
            Some(r) if r["ok"] == false && r["error"].as_str().is_some_and(|e| e.contains("connections")) => {
                assert_eq!(line_within(s, Duration::from_secs(30)), Ok(None), "closed after the refusal");
                return None;
            }
            Some(r) if r.get("event").is_some() => continue,
            other => return other,
        }
    }
}

/// `devns ARGS` as host root: it must succeed.
fn root_ok(env: &Env, args: &[&str]) -> String {
    let o = env.devns().args(args).stdin(std::process::Stdio::null()).output().expect("devns");
    assert!(o.status.success(), "host root's devns {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn idle_connections_of_host_users_do_not_lock_out_root() {
    if !privileged() {
        return;
    }
    raise_nofile();
    let env = Env::new();
    let _d = Daemon::start_wrapped(&env, LONG_IDLE);
    // 70 users, 1,120 connections that send nothing.
    let held = flood(&env.socket(), 70, PER_USER);
    assert!(held.len() > 1_100, "only {} connections got through", held.len());
    assert_eq!(root_ok(&env, &["ns", "ls", "--json"]).trim(), "[]");
    let o = env.run(&["--name", "under-flood", "--", "sh", "-c", "echo in"]);
    assert!(o.status.success(), "host root's devns run failed: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "in\n");
    // A further host user is refused with the reason, then closed.
    let late = connect_as(&env.socket(), 65534, 1);
    let r = line_within(&late[0], Duration::from_secs(30)).unwrap().expect("a refusal");
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("too many connections"), "{r}");
    let refused = stderr(&as_nobody(&env, &["ns", "ls"]));
    assert!(refused.starts_with("devns: too many connections from users other than root"), "{refused}");
    drop(held);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn one_host_user_keeps_at_most_16_connections() {
    if !privileged() {
        return;
    }
    raise_nofile();
    let env = Env::new();
    let _d = Daemon::start_wrapped(&env, LONG_IDLE);
    let mine = connect_as(&env.socket(), 65534, 40);
    let answered = mine.iter().filter(|s| ask(s, json!({"op": "ns-ls"})).is_some()).count();
    assert_eq!(answered, PER_USER, "connections of one host user that the daemon served");
    // Another user is not limited by the first one's connections.
    let other = connect_as(&env.socket(), 65533, 1);
    assert!(ask(&other[0], json!({"op": "ns-ls"})).is_some());
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_daemon_raises_its_fd_limit_to_the_hard_limit() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let d = Daemon::start_wrapped(&env, &["prlimit", "--nofile=512:4096"]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, ["4096", "4096"], "{line}");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_flood_at_an_fd_limit_of_1024_leaves_containers_their_mediation() {
    if !privileged() {
        return;
    }
    raise_nofile();
    let env = Env::new();
    let _d = Daemon::start_wrapped(&env, &[LONG_IDLE, &["prlimit", "--nofile=1024:1024"]].concat());
    let mut c = shell_container(&env, &["--name", "low-fds"]);
    let held = flood(&env.socket(), 70, PER_USER);
    assert!(held.len() > 1_000, "only {} connections got through", held.len());
    // LOOP_CTL_GET_FREE through the agent: a device made for the container.
    let out = c.sh("losetup -f 2>&1; echo status=$?");
    assert_eq!(out.last().map(String::as_str), Some("status=0"), "losetup -f in the container: {out:?}");
    assert!(out[0].starts_with("/dev/loop"), "{out:?}");
    assert!(root_ok(&env, &["ns", "ls", "--json"]).contains("low-fds"));
    drop(held);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn near_the_fd_limit_others_are_refused_before_host_root_and_mediation() {
    if !privileged() {
        return;
    }
    raise_nofile();
    let env = Env::new();
    // At 256 fds: others get none past 112 open, root none past 224.
    let _d = Daemon::start_wrapped(&env, &[LONG_IDLE, &["prlimit", "--nofile=256:256"]].concat());
    let mut c = shell_container(&env, &["--name", "few-fds"]);
    let roots: Vec<UnixStream> = (0..110).map(|_| UnixStream::connect(env.socket()).unwrap()).collect();
    let late = connect_as(&env.socket(), 65534, 1);
    let r = line_within(&late[0], Duration::from_secs(30)).unwrap().expect("a refusal");
    assert!(r["error"].as_str().unwrap().contains("keeps its remaining file descriptors"), "{r}");
    assert!(roots.iter().all(|s| ask(s, json!({"op": "ns-ls"})).is_some()), "host root's connections are served");
    assert!(root_ok(&env, &["ns", "ls", "--json"]).contains("few-fds"));
    let out = c.sh("losetup -f 2>&1; echo status=$?");
    assert_eq!(out.last().map(String::as_str), Some("status=0"), "losetup -f in the container: {out:?}");
}

/// The daemon's resident memory, in bytes.
fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn bad_lines_from_clients_that_never_read_cost_bounded_memory() {
    if !privileged() {
        return;
    }
    raise_nofile();
    let env = Env::new();
    let d = Daemon::start(&env);
    let before = rss(d.pid());
    // 1,008 connections write bad lines (each answered by an error reply
    // 40 times its size) and never read.
    let conns = flood(&env.socket(), 63, PER_USER);
    assert!(conns.len() >= 1_000);
    for s in &conns {
        s.set_nonblocking(true).unwrap();
    }
    let chunk = b"x\n".repeat(4096);
    let mut written = vec![0usize; conns.len()];
    let mut done = vec![false; conns.len()];
    // Each writes 16 KiB of them, as fast as the daemon takes them (a
    // daemon that stops reading ends the flood at the time bound).
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && done.iter().any(|d| !d) {
        for (i, mut s) in conns.iter().enumerate() {
            if done[i] {
                continue;
            }
            match s.write(&chunk) {
                Ok(n) => written[i] += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => done[i] = true,
            }
            done[i] |= written[i] >= 16 * 1024;
        }
        std::thread::yield_now();
    }
    // Host root is served; by then the daemon has taken what the socket
    // buffers held.
    assert_eq!(root_ok(&env, &["ns", "ls", "--json"]).trim(), "[]");
    let grown = rss(d.pid()).saturating_sub(before);
    assert!(grown < 64 << 20, "the daemon grew by {} MiB", grown >> 20);
    drop(conns);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn idle_and_unfinished_connections_of_host_users_are_closed() {
    if !privileged() {
        return;
    }
    raise_nofile();
    let env = Env::new();
    let _d = Daemon::start_wrapped(&env, &["env", "DEVNS_TEST_IDLE_MS=300"]);
    let root = UnixStream::connect(env.socket()).unwrap();
    let subscriber = connect_as(&env.socket(), 65534, 1).remove(0);
    assert_eq!(ask(&subscriber, json!({"op": "events"})).unwrap()["result"], "subscribed");
    let mut users = connect_as(&env.socket(), 65534, 2);
    let (idle, partial) = (users.remove(0), users.remove(0));
    (&partial).write_all(b"{\"v\":1,\"op\":").unwrap();
    let wait = Duration::from_secs(10);
    assert_eq!(line_within(&idle, wait), Ok(None), "a host user's connection that sends nothing is closed");
    assert_eq!(line_within(&partial, wait), Ok(None), "a host user's unfinished request is closed");
    // A user who sends requests and never reads the replies is closed
    // too: its connections' slots come free.
    let stalled = connect_as(&env.socket(), 65532, PER_USER);
    for s in &stalled {
        s.set_nonblocking(true).unwrap();
        let lines = b"x\n".repeat(4096);
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end && (&*s).write(&lines).is_ok() {}
    }
    eventually("a stalled user's slots come free", || {
        connect_as(&env.socket(), 65532, 1).first().is_some_and(|s| ask(s, json!({"op": "ns-ls"})).is_some())
    });
    // Host root's idle connection and a host user's subscription stay.
    assert_eq!(ask(&root, json!({"op": "ns-ls"})).expect("root's connection is open")["ok"], true);
    assert_eq!(ask(&subscriber, json!({"op": "ns-ls"})).expect("the subscription is open")["ok"], true);
    drop(stalled);
}

/// A request line of exactly `len` bytes (newline not counted).
fn padded(req: Value, len: usize) -> Vec<u8> {
    let mut req = req;
    req["v"] = 1.into();
    let mut line = serde_json::to_vec(&req).unwrap();
    line.pop(); // the closing brace
    line.resize(len - 1, b' ');
    line.extend_from_slice(b"}\n");
    line
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_request_line_longer_than_the_limit_is_refused_even_when_complete() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let at_limit = UnixStream::connect(env.socket()).unwrap();
    (&at_limit).write_all(&padded(json!({"op": "ns-ls"}), 65_536)).unwrap();
    let r = line_within(&at_limit, Duration::from_secs(30)).unwrap().expect("a reply");
    assert_eq!(r["ok"], true, "a line of 65,536 bytes is a request: {r}");

    let over = UnixStream::connect(env.socket()).unwrap();
    (&over).write_all(&padded(json!({"op": "ns-ls"}), 65_537)).unwrap();
    let r = line_within(&over, Duration::from_secs(30)).unwrap().expect("a reply");
    assert_eq!(r["ok"], false, "a line of 65,537 bytes is refused: {r}");
    assert!(r["error"].as_str().unwrap().contains("larger than 65536 bytes"), "{r}");
    assert_eq!(line_within(&over, Duration::from_secs(30)), Ok(None), "and the connection closed");

    // A complete 70 KB change: refused, and nothing changed.
    let global_null = || {
        let rows: Vec<Value> = serde_json::from_str(&root_ok(&env, &["ls", "--json"])).unwrap();
        rows.iter().find(|r| r["name"] == "null").expect("null")["global"].clone()
    };
    assert_eq!(global_null(), true);
    let big = UnixStream::connect(env.socket()).unwrap();
    (&big).write_all(&padded(json!({"op": "global", "device": "null", "on": false}), 70 * 1024)).unwrap();
    let r = line_within(&big, Duration::from_secs(30)).unwrap().expect("a reply");
    assert!(r["error"].as_str().is_some_and(|e| e.contains("larger than")), "{r}");
    assert_eq!(global_null(), true, "the oversized request changed nothing");
}

/// `devns ARGS` as host uid 65534.
fn as_nobody(env: &Env, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_devns")]).args(args);
    env.devns_env(&mut cmd).output().expect("setpriv")
}

fn stderr(o: &Output) -> String {
    assert!(!o.status.success(), "expected a refusal: {o:?}");
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn error_replies_tell_callers_that_are_not_root_nothing_of_other_namespaces() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let shared = SharedDir::new("sec-socket");
    let devns = shared.0.join("devns");
    std::fs::copy(env!("CARGO_BIN_EXE_devns"), &devns).unwrap();
    // The socket, where containers reach it.
    let sock = shared.0.join("devns.sock");
    std::fs::hard_link(env.socket(), &sock).unwrap();
    let _a = shell_container(&env, &["--name", "secret-a"]);
    let mut b = shell_container(&env, &["--name", "b"]);
    let rows: Vec<Value> = serde_json::from_str(&root_ok(&env, &["ns", "ls", "--json"])).unwrap();
    let id_of = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap()["id"].as_str().unwrap().to_owned();
    let (a_id, b_id) = (id_of("secret-a"), id_of("b"));
    let a_pid = format!("pid:{}", rows.iter().find(|r| r["name"] == "secret-a").unwrap()["pids"][0]);

    // A host user: a name, an id or a pid of someone else's namespace gets
    // the answer a namespace that does not exist gets.
    for ns in ["secret-a", "nosuch", a_id.as_str(), "id:1", a_pid.as_str(), "pid:1", b_id.as_str()] {
        let err = stderr(&as_nobody(&env, &["view", ns]));
        assert_eq!(err, format!("devns: no such namespace {ns:?}"), "view {ns} as uid 65534");
    }
    let to_a = stderr(&as_nobody(&env, &["assign", "null", "--to", "secret-a"]));
    let to_none = stderr(&as_nobody(&env, &["assign", "null", "--to", "nosuch"]));
    assert_eq!(to_a, to_none);
    assert_eq!(to_a, "devns: permission denied: only host root may change devns's state");

    // Root of container b: its own view, nobody else's.
    let inside =
        |ns: &str| format!("DEVNS_SOCKET={} {} view {ns} 2>&1 >/dev/null; echo $?", sock.display(), devns.display());
    assert_eq!(b.sh(&inside("b")), ["0"], "b looks at its own view");
    assert_eq!(b.sh(&inside(&b_id)), ["0"]);
    for ns in ["secret-a", "nosuch", a_id.as_str(), "pid:1"] {
        assert_eq!(b.sh(&inside(ns)), [format!("devns: no such namespace {ns:?}"), "125".into()], "view {ns} from b");
    }
}
