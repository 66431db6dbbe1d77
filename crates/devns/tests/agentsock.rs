//! The seccomp agent socket (`linux.seccomp.listenerPath`): a runtime
//! passes its container's listener with the container process state, and
//! the daemon answers the container's trapped calls. The runtime here is
//! the test: its container a user-namespaced, filtered shell
//! (`devns-testbin filtered-shell`) whose listener it takes.
mod common;

use common::*;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TESTBIN: &str = env!("CARGO_BIN_EXE_devns-testbin");
/// What runc 1.1.5 and crun 1.8.1 sent, as received (pid and id replaced).
const RUNC: &str = include_str!("../../devns-core/tests/corpus/oci/runc-1.1.5-run.json");
const CRUN: &str = include_str!("../../devns-core/tests/corpus/oci/crun-1.8.1-run.json");
const SHELL: &str = "echo ready; while read -r cmd; do eval \"$cmd\"; echo end; done";
const REFUSED: &str = "refused a runtime's seccomp listener";

fn runc_message(pid: i32, id: &str) -> String {
    RUNC.replace("2585", &pid.to_string()).replace("devnsfuzz", id)
}

fn crun_message(pid: i32, id: &str) -> String {
    CRUN.replace("2740", &pid.to_string()).replace("devnsfuzz2", id)
}

fn seccomp_sock(env: &Env) -> PathBuf {
    env.dir.path().join("seccomp.sock")
}

/// Sends `msg` with `fds` to the socket at `path` as one runtime does, and
/// closes.
fn send_to(path: &Path, msg: &[u8], fds: &[BorrowedFd<'_>]) {
    let s = UnixStream::connect(path).expect("connect to the seccomp agent socket");
    let n = devns::wire::send_with_fds(s.as_fd(), msg, fds).expect("sendmsg");
    let _ = std::io::Write::write_all(&mut &s, &msg[n..]);
}

/// A container of the test's: its own user and mount namespaces and
/// cgroup, filtered, its listener taken; a shell reading commands.
struct Fake {
    c: Container,
    listener: OwnedFd,
    _cg: TestCgroup,
}

impl Fake {
    fn new(tag: &str) -> Fake {
        Fake::start(tag, false)
    }

    /// With a `/dev` of its own (an empty tmpfs, mounted before its
    /// filter), as a runtime's container has: not the host's, whose stacked
    /// mounts devns refuses to carry.
    fn with_own_dev(tag: &str) -> Fake {
        Fake::start(tag, true)
    }

    fn start(tag: &str, own_dev: bool) -> Fake {
        let cg = TestCgroup::new(tag);
        let mut cmd = cg.command("unshare");
        cmd.args(["--user", "--map-root-user", "--mount", "--propagation", "private"]);
        if own_dev {
            cmd.args(["sh", "-c", "mount -t tmpfs tmpfs /dev && exec \"$0\" filtered-shell", TESTBIN]);
        } else {
            cmd.args([TESTBIN, "filtered-shell"]);
        }
        let mut c = Container::spawn(cmd.env("DEVNS_SHELL", SHELL));
        let line = c.line();
        let n: i32 = line.strip_prefix("listener ").expect("listener N").parse().unwrap();
        let listener = take_fd(c.pid(), n);
        c.send("go\n");
        assert_eq!(c.line(), "ready");
        Fake { c, listener, _cg: cg }
    }

    fn pid(&self) -> i32 {
        self.c.pid()
    }

    fn attach(&self, env: &Env, name: &str) {
        let out = devns_ok(env, &["attach", "--pid", &self.pid().to_string(), "--name", name]);
        assert!(out.starts_with("id:"), "{out}");
    }
}

/// Fd `n` of process `pid`, copied (`pidfd_getfd`).
fn take_fd(pid: i32, n: i32) -> OwnedFd {
    let pidfd =
        rustix::process::pidfd_open(rustix::process::Pid::from_raw(pid).unwrap(), rustix::process::PidfdFlags::empty())
            .unwrap();
    rustix::process::pidfd_getfd(&pidfd, n, rustix::process::PidfdGetfdFlags::empty()).unwrap()
}

/// The daemon's fds once the connections of its start (the readiness
/// probe's) are gone.
fn settled_fds(env: &Env, d: &Daemon<'_>) -> usize {
    let mut api = Api::connect(env);
    assert_eq!(api.call(serde_json::json!({ "op": "ns-ls" }))["ok"], true);
    drop(api);
    let mut last = d.fd_count();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = d.fd_count();
        if now == last {
            return now;
        }
        last = now;
    }
}

fn served(env: &Env) -> usize {
    log_lines(env, "serving a runtime's seccomp listener").len()
}

/// Passes `f`'s listener in `msg` and waits until the daemon serves it.
fn pass(env: &Env, f: &Fake, msg: &str) {
    let before = served(env);
    send_to(&seccomp_sock(env), msg.as_bytes(), &[f.listener.as_fd()]);
    eventually("the daemon serves the listener", || served(env) > before);
}

/// A `mknod` in the view, which only the agent can make succeed (natively,
/// it fails in a user namespace).
fn mknod_in_view(f: &mut Fake, name: &str) -> Vec<String> {
    f.c.sh(&format!("mknod /dev/{name} c 1 3 && echo made; ls /dev/{name} 2>&1"))
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_runc_shaped_listener_passed_after_its_hooks_is_served() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = logged_daemon(&env, &[]);
    let st = std::fs::metadata(seccomp_sock(&env)).expect("the socket is beside the API socket");
    assert_eq!(
        (std::os::unix::fs::MetadataExt::mode(&st) & 0o777, std::os::unix::fs::MetadataExt::uid(&st)),
        (0o600, 0)
    );
    let mut f = Fake::new("runc");
    // runc: the hooks bring the namespace in first, then the listener comes.
    f.attach(&env, "runc1");
    pass(&env, &f, &runc_message(f.pid(), "runc1"));
    assert_eq!(mknod_in_view(&mut f, "null2"), ["made", "/dev/null2"]);
    let line = &log_lines(&env, "serving a runtime's seccomp listener")[0];
    assert!(line.contains("runc1") && line.contains(&f.pid().to_string()), "{line}");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_crun_shaped_listener_passed_before_its_hooks_is_served() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = logged_daemon(&env, &[]);
    let mut f = Fake::new("crun");
    let msg = crun_message(f.pid(), "crun1");
    assert!(msg.starts_with("{\n    \"ociVersion\": \"0.2.0\""), "pretty-printed, 0.2.0");
    // crun: the listener first, the hooks after.
    pass(&env, &f, &msg);
    f.attach(&env, "crun1");
    assert_eq!(mknod_in_view(&mut f, "null2"), ["made", "/dev/null2"]);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn bad_messages_and_listeners_are_refused_each_with_a_log_line_and_change_nothing() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let d = logged_daemon(&env, &[]);
    let mut f = Fake::new("bad");
    f.attach(&env, "good");
    pass(&env, &f, &runc_message(f.pid(), "good"));
    let mut other = Fake::new("bad2");
    // A filtered process in the host's user namespace.
    let mut host = Command::new(TESTBIN).arg("filtered").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(host.stdout.take().unwrap()), &mut line).unwrap();
    let n: i32 = line.trim().strip_prefix("listener ").unwrap().parse().unwrap();
    let host_listener = take_fd(host.id() as i32, n);
    let null = std::fs::File::open("/dev/null").unwrap();
    let baseline = settled_fds(&env, &d);
    let sock = seccomp_sock(&env);
    let l = f.listener.as_fd();
    let nine: Vec<BorrowedFd<'_>> = std::iter::repeat_n(null.as_fd(), 3).collect();
    let cases: Vec<(String, Vec<BorrowedFd<'_>>, &str)> = vec![
        ("{\"ociVersion\":".into(), vec![l], "container process state is not valid"),
        ("not json at all".into(), vec![], "container process state is not valid"),
        (runc_message(f.pid(), "x1").replace("seccompFd", "other"), vec![l], "names no seccompFd"),
        (runc_message(other.pid(), "x2"), vec![], "it passed 0 fds"),
        (runc_message(other.pid(), "x3"), vec![null.as_fd()], "its seccompFd is not a seccomp listener"),
        (runc_message(host.id() as i32, "x4"), vec![host_listener.as_fd()], "in the host's user namespace"),
        (runc_message(i32::MAX, "x5"), vec![other.listener.as_fd()], "no process 2147483647"),
        (runc_message(f.pid(), "x6"), vec![l], "a listener of its user namespace"),
        (runc_message(other.pid(), "good"), vec![other.listener.as_fd()], "a listener of container \"good\""),
    ];
    for (i, (msg, fds, want)) in cases.iter().enumerate() {
        send_to(&sock, msg.as_bytes(), fds);
        eventually(want, || log_lines(&env, REFUSED).len() > i);
        let got = &log_lines(&env, REFUSED)[i];
        assert!(got.contains(want), "{want}: {got}");
    }
    // Too large: refused once past the limit, however much more comes.
    let big = vec![b' '; 4 * devns_core::oci::MAX_PROCESS_STATE_BYTES];
    let s = UnixStream::connect(&sock).unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut &s, &big).is_err());
    eventually("too large", || log_lines(&env, "it sent more than").len() == 1);
    assert!(writer.join().unwrap(), "the daemon closed the connection");
    // Too many fds, over several parts.
    let s = UnixStream::connect(&sock).unwrap();
    for _ in 0..3 {
        devns::wire::send_with_fds(s.as_fd(), b" ", &nine).unwrap();
    }
    drop(s);
    eventually("too many fds", || log_lines(&env, "it passed more than 8 fds").len() == 1);
    // Nothing changed: the good container is served, the other is not.
    eventually("every fd passed is closed", || d.fd_count() <= baseline);
    assert_eq!(served(&env), 1);
    assert_eq!(mknod_in_view(&mut f, "null3"), ["made", "/dev/null3"]);
    let msg = runc_message(other.pid(), "other");
    pass(&env, &other, &msg);
    assert!(!log_lines(&env, "panicked").iter().any(|_| true));
    let _ = other.c.sh("true");
    let _ = host.kill();
    let _ = host.wait();
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_listener_whose_runtime_exited_before_the_daemon_accepted_it_is_served() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let d = logged_daemon(&env, &[]);
    let mut f = Fake::new("gone");
    f.attach(&env, "gone");
    // `runc create` sends and exits; the daemon may come to it only later.
    let stopped = Stopped::new(d.pid());
    let listener = f.listener.try_clone().unwrap();
    let out = Command::new(TESTBIN)
        .arg("oci-peer")
        .env("DEVNS_OCI_SOCK", seccomp_sock(&env))
        .env("DEVNS_OCI_MSG", runc_message(f.pid(), "gone"))
        .env("DEVNS_OCI_STDIN", "1")
        .env("DEVNS_OCI_EXIT", "1")
        .stdin(Stdio::from(listener))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "connect: ok");
    drop(stopped);
    eventually("served", || served(&env) == 1);
    assert_eq!(mknod_in_view(&mut f, "null2"), ["made", "/dev/null2"]);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn peers_other_than_host_root_are_refused() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = logged_daemon(&env, &[]);
    let sock = seccomp_sock(&env);
    let shared = SharedDir::new("oci-peer");
    let bin = shared.testbin();
    let peer = |uid: Option<u32>| {
        let mut cmd = match uid {
            Some(u) => {
                let mut c = Command::new(&bin);
                std::os::unix::process::CommandExt::uid(&mut c, u);
                std::os::unix::process::CommandExt::gid(&mut c, u);
                c
            }
            // Root of another user namespace (mapped to host root).
            None => {
                let mut c = Command::new("unshare");
                c.args(["--user", "--map-root-user"]).arg(&bin);
                c
            }
        };
        let out = cmd.arg("oci-peer").env("DEVNS_OCI_SOCK", &sock).env("DEVNS_OCI_MSG", runc_message(1, "p")).output();
        String::from_utf8_lossy(&out.unwrap().stdout).trim().to_owned()
    };
    // The directory is reachable; the socket is root's alone.
    std::fs::set_permissions(env.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    // The socket's mode keeps others out.
    assert_eq!(peer(Some(65534)), format!("connect: {}", libc::EACCES));
    // With the mode opened, SO_PEERCRED still does.
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    assert_eq!(peer(Some(65534)), "connect: ok");
    eventually(&format!("refused: {:?}", log_lines(&env, "")), || log_lines(&env, REFUSED).len() == 1);
    assert!(log_lines(&env, REFUSED)[0].contains("the peer is not host root (uid 65534)"));
    assert_eq!(peer(None), "connect: ok");
    eventually("refused", || log_lines(&env, REFUSED).len() == 2);
    assert!(log_lines(&env, REFUSED)[1].contains("uid 0 in another user namespace"), "{:?}", log_lines(&env, REFUSED));
    assert_eq!(served(&env), 0);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn clients_that_never_finish_are_dropped_while_the_api_serves() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    // The request deadline, 5 s, shortened for the test.
    let d = logged_daemon(&env, &["DEVNS_TEST_IDLE_MS=1000"]);
    let baseline = settled_fds(&env, &d);
    let sock = seccomp_sock(&env);
    // Silent, and half a message: both held open.
    let silent = UnixStream::connect(&sock).unwrap();
    let half = UnixStream::connect(&sock).unwrap();
    std::io::Write::write_all(&mut &half, &RUNC.as_bytes()[..40]).unwrap();
    // Many: past the bound, refused at once.
    let many: Vec<UnixStream> = (0..100).map(|_| UnixStream::connect(&sock).unwrap()).collect();
    eventually("the excess is refused", || {
        log_lines(&env, "too many connections are unfinished").len() >= 100 + 2 - devns_core::agentsock::MAX_PENDING
    });
    // The API serves meanwhile.
    let mut api = Api::connect(&env);
    assert_eq!(api.call(serde_json::json!({ "op": "ns-ls" }))["ok"], true);
    drop(api);
    eventually("the slow ones are dropped at their deadline", || {
        log_lines(&env, "did not send its whole message and close in time").len() == 2 + 62
    });
    for s in [&silent, &half] {
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &*s, &mut buf).unwrap_or(0), 0, "closed by the daemon");
    }
    drop((silent, half, many));
    eventually("no fd is left of them", || d.fd_count() <= baseline);
    assert_eq!(served(&env), 0);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_runtime_s_listener_outlives_a_daemon_kill_before_its_namespace_is_kept() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut d = logged_daemon(&env, &[]);
    let mut f = Fake::new("outlive");
    // crun's order: the daemon is killed before the hooks ran.
    pass(&env, &f, &crun_message(f.pid(), "outlive"));
    d.kill9();
    let _d = logged_daemon(&env, &[]);
    assert!(log_lines(&env, "dropping a listener given back").is_empty(), "{:?}", log_lines(&env, "dropping"));
    f.attach(&env, "outlive");
    assert_eq!(mknod_in_view(&mut f, "null2"), ["made", "/dev/null2"]);
}

/// crun passes its listener before its hooks, so a container that asked
/// for devns is brought in at its first trapped call. A daemon killed in
/// between: the next one knows the container and what is due from the
/// last one's note, and brings it in at that call; crun's exec listeners,
/// which name the container only, are served too.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_crun_container_s_pending_attach_and_its_exec_listeners_outlive_a_daemon_kill() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut d = logged_daemon(&env, &[]);
    let mut f = Fake::with_own_dev("pending");
    let msg = crun_message(f.pid(), "pending").replace(",\n            \"devns.io/devices\": \"loop\"", "");
    assert!(msg.contains("devns.io/enable") && !msg.contains("devns.io/devices"), "{msg}");
    pass(&env, &f, &msg);
    assert_eq!(devns_ok(&env, &["ns", "ls", "--json"]).trim(), "[]", "not attached before its first call");
    d.kill9();
    let _d = logged_daemon(&env, &[]);
    // Its first call: brought in by the restarted daemon, named as asked.
    let got = mknod_in_view(&mut f, "null2");
    let log = std::fs::read_to_string(log_path(&env)).unwrap_or_default();
    assert_eq!(got, ["made", "/dev/null2"], "{log}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&devns_ok(&env, &["ns", "ls", "--json"])).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["name"], "pending");
    // crun's exec shape (no pid, the bundle "."), naming the container.
    let exec = Fake::new("pending-exec");
    let msg = crun_message(0, "pending")
        .replace("\"status\": \"creating\"", "\"status\": \"running\"")
        .replace("\"bundle\": \"/tmp/fz/ctr\"", "\"bundle\": \".\"");
    let before = served(&env);
    send_to(&seccomp_sock(&env), msg.as_bytes(), &[exec.listener.as_fd()]);
    eventually("the exec listener served", || served(&env) > before);
    assert!(log_lines(&env, REFUSED).is_empty(), "{:?}", log_lines(&env, REFUSED));
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_socket_is_where_the_flag_env_or_config_says_and_a_stale_one_is_replaced() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    // A stale socket file at the default place.
    drop(std::os::unix::net::UnixListener::bind(seccomp_sock(&env)).unwrap());
    let mut d = logged_daemon(&env, &[]);
    assert!(UnixStream::connect(seccomp_sock(&env)).is_ok(), "replaced");
    d.stop();
    assert!(!seccomp_sock(&env).exists(), "removed at exit");
    let conf = env.dir.path().join("conf.sock");
    std::fs::write(env.config(), format!("seccomp_socket = \"{}\"\n", conf.display())).unwrap();
    let mut d = logged_daemon(&env, &[]);
    assert!(conf.exists() && !seccomp_sock(&env).exists(), "the config's");
    d.stop();
    let by_env = env.dir.path().join("env.sock");
    let var = format!("DEVNS_SECCOMP_SOCKET={}", by_env.display());
    let mut d = logged_daemon(&env, &[&var]);
    assert!(by_env.exists() && !conf.exists(), "the environment's over the config's");
    d.stop();
    // Something that is not a socket is left alone, and the daemon says so.
    std::fs::write(&by_env, "x").unwrap();
    let out = env.devns().args(["daemon", "--seccomp-socket"]).arg(&by_env).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&by_env).unwrap(), "x");
}

/// `linux.seccomp` as a user writes it for devns: allow all, but have the
/// agent at `listener` answer `mknod`/`mknodat`.
fn notify_profile(listener: &Path) -> serde_json::Value {
    serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": listener,
        "syscalls": [{ "names": ["mknod", "mknodat"], "action": "SCMP_ACT_NOTIFY" }],
    })
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn runc_passes_its_container_s_listener_and_the_daemon_answers_its_mknod() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = logged_daemon(&env, &[]);
    let runc = common::oci::Runc::new(&env);
    let b = common::oci::Bundle::new("agentsock");
    b.seccomp(notify_profile(&seccomp_sock(&env)));
    // runc's own /dev: no filesystem devns made, so the agent refuses the
    // node (natively, the kernel would refuse it too: the log tells them
    // apart).
    b.script("mknod /dev/x c 1 3 2>&1; echo rc=$?; mkfifo /tmp/f && echo fifo");
    let text = answered_by_the_agent(&env, &b.id, runc.run(&b));
    assert!(text.contains("fifo"), "a FIFO is the kernel's: {text}");
}

/// A 32-bit x86 call (the profiles name that architecture too, as
/// podman's and moby's do) goes to the kernel as it would without devns:
/// the agent serves x86_64's calls, and another ABI's numbers are other
/// calls. Its mknod gets the kernel's EPERM (no ENOSYS, no log line);
/// the same process's 64-bit one is the agent's.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_32_bit_call_goes_to_the_kernel_as_without_devns() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = logged_daemon(&env, &[]);
    let runc = common::oci::Runc::new(&env);
    let b = common::oci::Bundle::new("agentsock-i386");
    let out = env.devns().args(["oci", "profile", "--listener"]).arg(seccomp_sock(&env)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let profile: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(profile["architectures"].as_array().unwrap().iter().any(|a| a == "SCMP_ARCH_X86"), "{profile}");
    b.seccomp(profile);
    common::oci::copy_with_libs(&b.rootfs(), Path::new(TESTBIN), Path::new("/bin/devns-testbin"));
    b.edit(|c| c["process"]["env"].as_array_mut().unwrap().push(serde_json::json!("DEVNS_I386_PATH=/tmp/node")));
    b.args(&["/bin/devns-testbin", "i386-mknod"]);
    let out = runc.run(&b);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("i386=1 x86_64=1"), "both EPERM, the first the kernel's: {text}");
    common::eventually("the agent answered the 64-bit mknod", || log_lines(&env, "devns::agent").len() == 1);
    let agent = log_lines(&env, "devns::agent");
    assert!(agent[0].contains("mknod"), "{agent:?}");
}

/// `runc exec` gives each process it starts the container's filter anew
/// and passes that listener too: its calls are the agent's as well (one
/// more listener of the same namespace), while a second one claiming to be
/// the container's init is still refused.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_processes_runc_exec_starts_in_a_served_container_are_served_too() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = logged_daemon(&env, &[]);
    let runc = common::oci::Runc::new(&env);
    let b = common::oci::Bundle::new("agentsock-exec");
    b.seccomp(notify_profile(&seccomp_sock(&env)));
    b.args(&["sleep", "1000"]);
    runc.start(&b);
    for n in 1..=2 {
        let out = runc.exec(&b.id, "mknod /dev/x c 1 3 2>&1; echo rc=$?");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("Operation not permitted") && text.contains("rc=1"), "exec {n}: {text}");
        common::eventually("the agent answered the exec'd mknod", || log_lines(&env, "devns::agent").len() == n);
    }
    let served = log_lines(&env, "serving a runtime's seccomp listener");
    assert_eq!(served.len(), 3, "the init's and two exec'd processes' listeners: {served:?}");
    runc.delete(&b.id);
}

/// The output of a container whose `mknod` the agent refused (the runtimes
/// give their containers no `CAP_MKNOD`): its listener served, its `EPERM`
/// the agent's (its log line), not the kernel's.
fn answered_by_the_agent(env: &Env, id: &str, out: std::process::Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the runtime: {text}");
    assert!(text.contains("Operation not permitted") && text.contains("rc=1"), "{text}");
    let served = log_lines(env, "serving a runtime's seccomp listener");
    assert!(served.len() == 1 && served[0].contains(id), "{served:?}");
    let refused = log_lines(env, "devns::agent");
    let all = log_lines(env, "");
    assert!(refused.len() == 1 && refused[0].contains("refused: ") && refused[0].contains("mknod"), "{all:?}");
    text
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn runc_fails_to_start_a_container_when_no_daemon_listens() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let runc = common::oci::Runc::new(&env);
    let b = common::oci::Bundle::new("agentsock-none");
    b.seccomp(notify_profile(&seccomp_sock(&env)));
    b.script("echo started");
    let out = runc.run(&b);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(!text.contains("started"), "{text}");
    let path = seccomp_sock(&env).display().to_string();
    assert!(text.contains("seccomp agent") && text.contains(&path), "names the socket: {text}");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn crun_passes_its_container_s_listener_and_the_daemon_answers_its_mknod() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = logged_daemon(&env, &[]);
    let b = common::oci::Bundle::new("agentsock-crun");
    b.seccomp(notify_profile(&seccomp_sock(&env)));
    b.script("mknod /dev/x c 1 3 2>&1; echo rc=$?");
    let out = common::oci::crun_run(env.dir.path(), &b, &b.id);
    let _ = Command::new(common::oci::crun_wrapper(env.dir.path()))
        .arg("--root")
        .arg(env.dir.path().join("crun"))
        .args(["delete", "--force", &b.id])
        .output();
    answered_by_the_agent(&env, &b.id, out);
}

/// `devns oci profile` for the test's daemon, in the bundle.
fn devns_profile(env: &Env, b: &common::oci::Bundle) {
    let out = env.devns().args(["oci", "profile", "--listener"]).arg(seccomp_sock(env)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    b.seccomp(serde_json::from_slice(&out.stdout).unwrap());
}

/// A container asking for devns with the profile alone, whose attach at
/// its first execve fails (a device that does not exist): the execve
/// fails, so the container never starts; the daemon says why; nothing
/// of it is kept.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_container_devns_cannot_attach_at_its_first_execve_does_not_start() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = logged_daemon(&env, &[]);
    let runc = common::oci::Runc::new(&env);
    let b = common::oci::Bundle::new("agentsock-noattach");
    devns_profile(&env, &b);
    b.enable_devns();
    b.annotate("devns.io/devices", "no-such-device-here");
    b.script("echo started");
    let out = runc.run(&b);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && !text.contains("started"), "{text}");
    assert!(text.contains("operation not permitted"), "the execve's error: {text}");
    let why = log_lines(&env, "cannot bring the container under devns");
    assert!(why.len() == 1 && why[0].contains(&b.id) && why[0].contains("no-such-device-here"), "{why:?}");
    let out = env.devns().args(["ns", "ls", "--json"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]", "a namespace was kept");
    assert_eq!(env.recorded_namespaces(), 0);
}

/// The profile without the annotation: the listener is served (its calls
/// the agent's), the container is never attached: its `/dev` is the
/// runtime's, no namespace is kept.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_container_with_the_profile_that_never_asked_is_never_attached() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = logged_daemon(&env, &[]);
    let runc = common::oci::Runc::new(&env);
    let b = common::oci::Bundle::new("agentsock-notasked");
    devns_profile(&env, &b);
    b.script("test -e /dev/loop-control || echo runtime-dev; /bin/true && echo started");
    let out = runc.run(&b);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("runtime-dev") && text.contains("started"), "{text}");
    let served = log_lines(&env, "serving a runtime's seccomp listener");
    assert!(served.len() == 1 && plain(&served[0]).contains("attach=false"), "{served:?}");
    assert!(log_lines(&env, "brought under devns").is_empty());
    let out = env.devns().args(["ns", "ls", "--json"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]", "a namespace was kept");
}

/// A log line without its colours.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find('\u{1b}') {
        out.push_str(&rest[..i]);
        rest = rest[i..].find('m').map_or("", |m| &rest[i + m + 1..]);
    }
    out + rest
}

/// The v1 `devices` cgroup directory of process `pid`, where this host
/// mounts that hierarchy (runc's rules for its containers are there).
fn v1_devices_dir(pid: i32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
        ctrl.split(',').any(|c| c == "devices").then(|| path.trim_start_matches('/').to_owned())
    })?;
    let dir = Path::new("/sys/fs/cgroup/devices").join(rel);
    dir.join("devices.list").exists().then_some(dir)
}

/// runc passes the listener after `pivot_root` and its device rules: the
/// container is brought under devns then, as `runc create` ends, before
/// any of its code runs (it is only `created`). Device rules its runtime
/// writes after that (here the test, as a runtime might: deny all in the
/// v1 controller) are deferred again at its first execve: once started,
/// its loop device works.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_runc_container_is_attached_as_its_listener_comes_and_its_first_execve_defers_late_rules() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = logged_daemon(&env, &[]);
    let runc = common::oci::Runc::new(&env);
    let b = common::oci::Bundle::new("agentsock-early");
    devns_profile(&env, &b);
    b.enable_devns();
    b.args(&["/bin/sleep", "1000"]);
    let out = runc.create(&b);
    assert!(out.status.success(), "runc create: {}", String::from_utf8_lossy(&out.stderr));
    let state = runc.cmd().args(["state", &b.id]).output().unwrap();
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(state["status"], "created", "{state}");
    // runc does not wait for the daemon: the attach ends soon after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log_lines(&env, "as its runtime passed its listener").is_empty() {
        let log = std::fs::read_to_string(log_path(&env)).unwrap_or_default();
        assert!(std::time::Instant::now() < deadline, "not attached before its start: {log}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let early = log_lines(&env, "as its runtime passed its listener");
    assert!(early.len() == 1 && early[0].contains(&b.id), "{early:?}");
    let out = env.devns().args(["ns", "ls", "--json"]).output().unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rows.iter().any(|r| r["name"] == b.id.as_str()), "not kept before its start: {rows:?}");
    let pid = runc.pid(&b.id).expect("the container's init");
    let dir = v1_devices_dir(pid);
    if dir.is_none() {
        eprintln!("no v1 devices controller on this host: the late rules part is not tried");
    }
    if let Some(dir) = &dir {
        assert_eq!(std::fs::read_to_string(dir.join("devices.list")).unwrap().trim(), "a *:* rwm");
        std::fs::write(dir.join("devices.deny"), "a").unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("devices.list")).unwrap().trim(), "");
    }
    let out = runc.cmd().args(["start", &b.id]).output().unwrap();
    assert!(out.status.success(), "runc start: {}", String::from_utf8_lossy(&out.stderr));
    if let Some(dir) = &dir {
        eventually("the late rules deferred", || {
            std::fs::read_to_string(dir.join("devices.list")).is_ok_and(|l| l.trim() == "a *:* rwm")
        });
    }
    let out = runc.exec(&b.id, "echo x > /dev/null && l=$(losetup -f) && test -b $l && echo loop=$l");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("loop=/dev/loop"), "{text}");
    assert!(log_lines(&env, "at its first execve").is_empty(), "attached twice");
    runc.delete(&b.id);
    eventually("the namespace let go", || env.recorded_namespaces() == 0);
}
