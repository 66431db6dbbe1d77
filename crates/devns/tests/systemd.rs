//! devns under systemd: the unit files systemd itself checks, and the
//! protocols a service manager speaks with the daemon, each against a
//! stand-in of systemd's side (no systemd runs as PID 1 here): `sd_notify`
//! (READY, STATUS, STOPPING), socket activation (`LISTEN_FDS`), and the
//! journal's native protocol (`JOURNAL_STREAM`).

mod common;

use common::*;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const UNITS: [&str; 3] = ["devns.service", "devns.socket", "devns-seccomp.socket"];

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/systemd")
}

/// `systemd-analyze verify` finds nothing to say of the units (unknown
/// keys, bad values, a missing binary are all said on stderr), with the
/// binary where the package puts it replaced by this build's.
#[test]
fn systemd_verifies_the_units_without_a_word() {
    let dir = tempfile::tempdir().unwrap();
    for u in UNITS {
        let text = std::fs::read_to_string(dist().join(u)).unwrap();
        assert!(u != "devns.service" || text.contains("ExecStart=/usr/bin/devns daemon"), "{text}");
        std::fs::write(dir.path().join(u), text.replace("/usr/bin/devns", env!("CARGO_BIN_EXE_devns"))).unwrap();
    }
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(UNITS.map(|u| dir.path().join(u)))
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && said.trim().is_empty(), "{said}");
    // A unit systemd finds fault with is seen so: the check can fail.
    std::fs::write(dir.path().join("devns.service"), "[Service]\nType=notify\nExecStart=/nonexistent/devns\nBogus=1\n")
        .unwrap();
    let o = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(dir.path().join("devns.service")).output();
    assert!(!String::from_utf8_lossy(&o.unwrap().stderr).trim().is_empty());
}

/// The units' paths are devns's defaults.
#[test]
fn the_socket_units_listen_where_the_daemon_and_runtimes_look() {
    let read = |u: &str| std::fs::read_to_string(dist().join(u)).unwrap();
    assert!(read("devns.socket").contains(&format!("ListenStream={}\n", devns_core::layout::SOCKET)));
    let seccomp = devns_core::layout::seccomp_socket(Path::new(devns_core::layout::SOCKET));
    assert!(read("devns-seccomp.socket").contains(&format!("ListenStream={}\n", seccomp.display())));
    let service = read("devns.service");
    for want in ["Type=notify", "FileDescriptorStoreMax=", "KillMode=process", "Restart=on-failure"] {
        assert!(service.contains(want), "{want}");
    }
}

/// systemd's notification socket, stood in for by a datagram socket.
struct Notify {
    sock: UnixDatagram,
    var: String,
}

impl Notify {
    fn new(env: &Env) -> Notify {
        let path = env.dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Notify { sock, var: format!("NOTIFY_SOCKET={}", path.display()) }
    }

    /// Messages until one that has the line `line`; that one.
    fn until(&self, line: &str) -> String {
        let mut buf = vec![0u8; 8192];
        loop {
            let n = self.sock.recv(&mut buf).unwrap_or_else(|e| panic!("no notification with {line:?}: {e}"));
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.lines().any(|l| l == line) {
                return text;
            }
        }
    }
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn under_systemd_the_daemon_says_ready_its_status_and_stopping() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let notify = Notify::new(&env);
    let mut d = Daemon::start_wrapped(&env, &["env", &notify.var]);
    notify.until("READY=1");
    let mut c = shell_container(&env, &["--name", "a"]);
    assert_eq!(c.sh("echo in"), ["in"]);
    notify.until("STATUS=serving 1 user namespace");
    drop(c);
    notify.until("STATUS=serving 0 user namespaces");
    assert_eq!(d.stop(), Some(0));
    let last = notify.until("STOPPING=1");
    assert!(last.contains("STATUS=stopping"), "{last}");
}

/// A listening socket bound at `path`, as a socket unit makes it.
fn unit_socket(path: &Path) -> OwnedFd {
    UnixListener::bind(path).unwrap().into()
}

/// The daemon started as systemd starts a socket-activated service: `fds`
/// from fd 3 on, `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` (the
/// shell's, which execs it).
fn spawn_activated(env: &Env, fds: &[&OwnedFd], names: &str, extra: &[&str], stderr: Stdio) -> std::process::Child {
    // Inheritable copies above the numbers they go to, moved there by the
    // shell (and closed) before it execs the daemon.
    let copies: Vec<i32> = fds
        .iter()
        .map(|fd| {
            // SAFETY: F_DUPFD makes a new inheritable fd (>= 100) of a live fd.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, 100) }
        })
        .collect();
    let moves: String = copies.iter().enumerate().map(|(i, fd)| format!("{}<&{fd} {fd}<&- ", 3 + i)).collect();
    let script = format!("exec {moves}; LISTEN_PID=$$ exec \"$0\" daemon");
    let mut c = Command::new("env");
    c.args(extra)
        .arg(format!("LISTEN_FDS={}", fds.len()))
        .arg(format!("LISTEN_FDNAMES={names}"))
        .args(["bash", "-c", &script, env!("CARGO_BIN_EXE_devns")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let child = env.devns_env(&mut c).spawn().unwrap();
    for fd in copies {
        // SAFETY: the copies made above, owned by nothing else, closed once.
        unsafe { libc::close(fd) };
    }
    child
}

/// The sockets a socket unit made are the ones served, known by their
/// paths whatever their names: a client that connected before the daemon
/// started is answered, a runtime's listener socket is the unit's, and
/// when the daemon stops the files stay (systemd's, for the next start).
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn socket_activation_serves_the_unit_s_sockets_and_leaves_them() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let seccomp = devns_core::layout::seccomp_socket(&env.socket());
    let (api, agent) = (unit_socket(&env.socket()), unit_socket(&seccomp));
    let (api_ino, agent_ino) = (ino(&env.socket()), ino(&seccomp));
    // Queued before there is a daemon: a request already written.
    let mut early = UnixStream::connect(env.socket()).unwrap();
    std::io::Write::write_all(&mut early, b"{\"v\":1,\"op\":\"ls\"}\n").unwrap();
    let notify = Notify::new(&env);
    let child =
        spawn_activated(&env, &[&agent, &api], "devns-seccomp.socket:devns.socket", &[&notify.var], Stdio::inherit());
    drop((api, agent));
    let mut d = Daemon::adopt(&env, child);
    notify.until("READY=1");
    early.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&early), &mut answer).unwrap();
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("one JSON answer");
    assert!(answer["ok"] == true && answer["result"].is_array(), "the queued request's answer: {answer}");
    let o = env.devns().args(["ls", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Neither file was bound again.
    assert_eq!((ino(&env.socket()), ino(&seccomp)), (api_ino, agent_ino));
    assert_eq!(d.stop(), Some(0));
    assert_eq!((ino(&env.socket()), ino(&seccomp)), (api_ino, agent_ino), "the unit's files stay");
}

fn ino(p: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(p).unwrap())
}

/// A unit whose passed fd at the API socket's path is no listening stream
/// socket is a unit's mistake: the daemon says so and does not start.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_passed_socket_that_does_not_listen_is_refused_with_the_reason() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let dgram: OwnedFd = UnixDatagram::bind(env.socket()).unwrap().into();
    let o = spawn_activated(&env, &[&dgram], "devns.socket", &[], Stdio::piped()).wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{said}");
    assert!(said.contains("not a listening stream socket") && said.contains("ListenStream="), "{said}");
}

/// Under systemd, with stderr the journal's stream, log events go to the
/// journal's socket in its native protocol, their fields kept as fields;
/// stderr stays quiet. The socket is a stand-in bound where journald's is,
/// in a mount namespace of the daemon's own.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn with_stderr_the_journal_s_stream_events_go_to_the_journal_with_their_fields() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let dir = env.dir.path().join("journal");
    std::fs::create_dir(&dir).unwrap();
    let journal = UnixDatagram::bind(dir.join("socket")).unwrap();
    journal.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let stream_path = env.dir.path().join("stderr");
    let stream = std::fs::File::create(&stream_path).unwrap();
    let st = rustix::fs::fstat(&stream).unwrap();
    let script = format!(
        "mount -t tmpfs devns-test /run && mkdir -p /run/systemd/journal && mount --bind {} /run/systemd/journal && exec \"$0\" daemon",
        dir.display()
    );
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", &script, env!("CARGO_BIN_EXE_devns")])
        .env("JOURNAL_STREAM", format!("{}:{}", st.st_dev, st.st_ino))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stream);
    env.devns_env(&mut c).env("DEVNS_LOG", "info");
    let child = c.spawn().unwrap();
    let mut d = Daemon::adopt(&env, child);
    let mut buf = vec![0u8; 65536];
    let fields = loop {
        let n = journal.recv(&mut buf).expect("a journal entry");
        let fields = journal_fields(&buf[..n]);
        if fields.iter().any(|(k, v)| k == "MESSAGE" && v == "devns daemon ready") {
            break fields;
        }
    };
    let has = |k: &str, v: &str| fields.iter().any(|f| f.0 == k && f.1 == v);
    for (k, v) in [("PRIORITY", "5"), ("SYSLOG_IDENTIFIER", "devns"), ("DEVNS_NAMESPACES", "0")] {
        assert!(has(k, v), "{k}={v} in {fields:?}");
    }
    assert!(has("DEVNS_SOCKET", &env.socket().display().to_string()), "{fields:?}");
    assert_eq!(d.stop(), Some(0));
    assert_eq!(std::fs::read_to_string(&stream_path).unwrap(), "", "stderr is quiet");
}

/// The fields of one entry of the journal's native protocol: `KEY=value`
/// lines, or `KEY`, a newline, the value's length (64-bit little-endian),
/// the value and a newline.
fn journal_fields(mut data: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let end = data.iter().position(|&b| b == b'\n' || b == b'=').expect("a field's end");
        let key = String::from_utf8_lossy(&data[..end]).into_owned();
        if data[end] == b'=' {
            let nl = data[end..].iter().position(|&b| b == b'\n').expect("a line's end") + end;
            out.push((key, String::from_utf8_lossy(&data[end + 1..nl]).into_owned()));
            data = &data[nl + 1..];
        } else {
            let len = u64::from_le_bytes(data[end + 1..end + 9].try_into().unwrap()) as usize;
            let value = &data[end + 9..end + 9 + len];
            assert_eq!(data[end + 9 + len], b'\n', "a binary field's end");
            out.push((key, String::from_utf8_lossy(value).into_owned()));
            data = &data[end + 10 + len..];
        }
    }
    out
}
