//! Shared helpers for the privileged integration tests: each test makes its
//! own state dir, loop devices and containers, and every guard here undoes
//! what it made on drop, also when the test fails.
#![allow(dead_code)]

pub mod docker;
pub mod images;
pub mod oci;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

/// The opt-out for running these tests as non-root (never set by CI).
pub const SKIP_VAR: &str = "DEVNS_TEST_SKIP_PRIVILEGED";

/// Privileged tests never skip silently: as non-root they fail, unless the
/// opt-out variable is set, and then they say that they skipped. Built by
/// non-root with it set, they are also compiled as ignored (`build.rs`),
/// so that the runner counts them as skipped, not passed.
pub fn privileged() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    if std::env::var_os(SKIP_VAR).is_some_and(|v| v == "1") {
        eprintln!("SKIPPED: this test needs root ({SKIP_VAR}=1 is set)");
        return false;
    }
    panic!("this test needs root: run as root, or set {SKIP_VAR}=1 to skip privileged tests");
}

/// A test's own devns world: state dir and config path.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env { dir: tempfile::Builder::new().prefix("devns-test").tempdir().expect("tempdir") }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// This test's daemon socket (nothing listens unless the test starts one).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("devns.sock")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn devns(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_devns"));
        self.devns_env(&mut c);
        c
    }

    /// Points a command (devns, or a wrapper that runs it) at this world.
    pub fn devns_env<'c>(&self, c: &'c mut Command) -> &'c mut Command {
        c.env("DEVNS_STATE_DIR", self.state_dir())
            .env("DEVNS_CONFIG", self.config())
            .env("DEVNS_SOCKET", self.socket())
            .env_remove("DEVNS_LOG")
    }

    /// `devns run ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.devns().arg("run").args(args).stdin(Stdio::null()).output().expect("spawn devns")
    }

    /// Devices some namespace owns, per `devns ls --owned --json`.
    pub fn owned(&self) -> Vec<serde_json::Value> {
        // Ownership does not depend on the policy file, which a test may break.
        let out = self
            .devns()
            .args(["ls", "--owned", "--json"])
            .env("DEVNS_CONFIG", "/nonexistent")
            .output()
            .expect("devns ls");
        assert!(out.status.success(), "devns ls: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("json")
    }

    /// Namespaces recorded in the state directory (one file each).
    pub fn recorded_namespaces(&self) -> usize {
        ["ns", "runs"]
            .iter()
            .filter_map(|d| std::fs::read_dir(self.state_dir().join(d)).ok())
            .flat_map(|d| d.flatten())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count()
    }

    /// The host's mount table without other tests' daemons' view mounts
    /// (they run concurrently, each below its own temp dir).
    pub fn host_mounts(&self) -> Vec<String> {
        let mine = self.dir.path().to_string_lossy().into_owned();
        host_mounts()
            .into_iter()
            .filter(|l| {
                let mountpoint = l.split(' ').nth(1).unwrap_or("");
                // Other tests' worlds, and the default layout's (`/run/devns`,
                // the tests of the default layout and the package), which no
                // `Env` uses.
                let others = mountpoint.starts_with("/tmp/devns-test") || mountpoint.starts_with("/run/devns/");
                !others || mountpoint.starts_with(&mine)
            })
            .collect()
    }

    /// The watchers of this world's stand-alone runs still at work (forks
    /// of `devns run`, named `devns-watcher`, with its environment).
    pub fn watchers(&self) -> Vec<i32> {
        let want = format!("DEVNS_STATE_DIR={}", self.state_dir().display());
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                comm.trim() == devns::watcher::NAME
                    && std::fs::read(format!("/proc/{pid}/environ"))
                        .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == want.as_bytes()))
            })
            .collect()
    }

    /// Pids of this test's holders (`devns --state-dir DIR hold`).
    pub fn holders(&self) -> Vec<i32> {
        let args = format!("--state-dir\0{}\0hold", self.state_dir().display());
        processes_with(&args)
    }

    /// A container that keeps running: stdin and stdout piped.
    pub fn spawn(&self, args: &[&str]) -> Container {
        Container::spawn(self.devns().arg("run").args(args))
    }
}

impl Container {
    /// Starts `cmd` with stdin and stdout piped (stderr kept for errors).
    pub fn spawn(cmd: &mut Command) -> Container {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Container { child, stdin, lines }
    }
}

/// A running `devns run`; killed (by its own pid) and reaped on drop.
pub struct Container {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Container {
    /// The host pid of the container's init: the child of this `devns run`
    /// in a user namespace other than the host's (a stand-alone run's
    /// watcher is a child too, in the host's).
    pub fn init(&self) -> i32 {
        let pid = self.pid();
        let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let host = std::fs::read_link("/proc/self/ns/user").ok();
        kids.split_whitespace()
            .find(|p| std::fs::read_link(format!("/proc/{p}/ns/user")).ok().is_some_and(|ns| Some(ns) != host))
            .expect("devns run has its init")
            .parse()
            .unwrap()
    }

    /// The next line of output; panics after a generous timeout, so a broken
    /// container fails the test instead of hanging it.
    pub fn line(&mut self) -> String {
        match self.lines.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(e) => {
                let _ = self.child.kill();
                let mut err = String::new();
                if let Some(mut s) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut s, &mut err);
                }
                panic!("no output from the container ({e}); stderr: {err}");
            }
        }
    }

    /// The next line of output if one is there already.
    pub fn try_line(&mut self) -> Option<String> {
        self.lines.try_recv().ok()
    }

    /// Lines until (not including) `end`.
    pub fn lines_until(&mut self, end: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let l = self.line();
            if l == end {
                return out;
            }
            out.push(l);
        }
    }

    pub fn send(&mut self, text: &str) {
        let w = self.stdin.as_mut().expect("stdin open");
        w.write_all(text.as_bytes()).and_then(|()| w.flush()).expect("write to container");
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn wait(mut self) -> (i32, String) {
        drop(self.stdin.take());
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().expect("true")).wait_with_output();
        let out = out.expect("wait");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/dev` names from `ls -A` output.
pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

pub fn default_view() -> Vec<String> {
    sorted(
        [
            "full",
            "null",
            "random",
            "tty",
            "urandom",
            "zero",
            "fuse",
            "fd",
            "stdin",
            "stdout",
            "stderr",
            "ptmx",
            "pts",
            "shm",
            "mqueue",
            "loop-control",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
    )
}

/// The host's mount table, to compare before and after.
pub fn host_mounts() -> Vec<String> {
    let t = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut v: Vec<String> = t.lines().map(|l| l.split(' ').skip(3).collect::<Vec<_>>().join(" ")).collect();
    v.sort();
    v
}

/// Pids of processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

/// A unique marker for a test's processes.
pub fn marker(tag: &str) -> String {
    format!("devns-test-{tag}-{}", std::process::id())
}

/// A file of the test's on the host (in `dir`, named by [`marker`]),
/// removed on drop.
pub struct Marker(pub PathBuf);

impl Marker {
    pub fn new(dir: &str, tag: &str) -> Marker {
        let p = Path::new(dir).join(marker(tag));
        std::fs::write(&p, "host").unwrap();
        Marker(p)
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The tests' helper binary (`tests/testbin/`): `devns-testbin ROLE`
/// runs one of the programs the tests start inside containers.
pub const TESTBIN: &str = env!("CARGO_BIN_EXE_devns-testbin");

/// The helper binary copied into `dir` (once), where its containers reach
/// it: the checkout may be below `/tmp`, which a container cannot see.
pub fn copy_testbin_to(dir: &Path) -> PathBuf {
    let to = dir.join("devns-testbin");
    if !to.exists() {
        std::fs::copy(TESTBIN, &to).unwrap_or_else(|e| panic!("cannot copy {TESTBIN} to {}: {e}", to.display()));
    }
    to
}

/// A new directory of this test's that its containers reach at the same
/// path: on the host's root filesystem (where device nodes work), outside
/// `/tmp` (a container's `/tmp` is its own, hiding the host's, and so a
/// checkout below `/tmp` with it). The caller removes it.
pub fn reachable_dir(tag: &str) -> PathBuf {
    let dir = Path::new("/var/tmp").join(marker(tag));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A loop device attached by host root with `losetup`, detached (and, if
/// this test's attach created it, removed) on drop.
pub struct Loop {
    pub name: String,
    created: bool,
    _dir: tempfile::TempDir,
}

fn loop_exists(n: &str) -> bool {
    Path::new("/sys/block").join(n).exists()
}

impl Loop {
    /// A 8 MiB image, with one partition when `partitioned`.
    pub fn new(partitioned: bool) -> Loop {
        let dir = tempfile::Builder::new().prefix("devns-test-img").tempdir().expect("tempdir");
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img).and_then(|f| f.set_len(8 << 20)).expect("image");
        if partitioned {
            let mut c = Command::new("sfdisk");
            c.args(["-q", img.to_str().unwrap()]).stdin(Stdio::piped()).stdout(Stdio::null());
            let mut child = c.spawn().expect("sfdisk");
            child.stdin.take().unwrap().write_all(b"label: dos\n,4MiB,L\n").unwrap();
            assert!(child.wait().unwrap().success(), "sfdisk failed");
        }
        // A device of its own (LOOP_CTL_ADD of any free index): `losetup
        // -f` could take a device a container is just being given, which
        // is free to the kernel until the container attaches it.
        let n = loop_ctl(LOOP_CTL_ADD, u64::MAX);
        assert!(n >= 0, "LOOP_CTL_ADD: {}", std::io::Error::last_os_error());
        let name = format!("loop{n}");
        let mut args = vec![format!("/dev/{name}"), img.to_string_lossy().into_owned()];
        if partitioned {
            args.push("-P".into());
        }
        let l = Loop { name, created: true, _dir: dir };
        sh(Command::new("losetup").args(&args));
        let part = Path::new("/sys/block").join(&l.name).join(l.partition());
        if partitioned && !part.exists() {
            // A kernel without partition table parsers (this VM's has none:
            // CONFIG_MSDOS_PARTITION and CONFIG_EFI_PARTITION are off) still
            // takes partitions from userspace: partx parses, BLKPG adds.
            sh(Command::new("partx").args(["-a", &format!("/dev/{}", l.name)]));
        }
        assert!(!partitioned || part.exists(), "no partition {}", l.partition());
        l
    }

    pub fn partition(&self) -> String {
        format!("{}p1", self.name)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &format!("/dev/{}", self.name)]).status();
        if self.created
            && let Some(n) = self.name.strip_prefix("loop").and_then(|n| n.parse::<u64>().ok())
        {
            loop_ctl(LOOP_CTL_REMOVE, n);
        }
    }
}

pub const LOOP_CTL_ADD: libc::c_ulong = 0x4C80;
pub const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;

/// A loop-control ioctl by host root; its result (-1 on error).
pub fn loop_ctl(op: libc::c_ulong, n: u64) -> i32 {
    let ctl = std::fs::File::open("/dev/loop-control").expect("/dev/loop-control");
    // SAFETY: the loop-control ioctls take the device number by value; `ctl`
    // is open for the duration of the call.
    unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&ctl), op, n) }
}

/// A `devns daemon` of this test's own (socket and state dir in its temp
/// dir). On drop: killed, and its host view mounts removed.
pub struct Daemon<'e> {
    env: &'e Env,
    pub child: Option<Child>,
}

impl<'e> Daemon<'e> {
    pub fn start(env: &'e Env) -> Daemon<'e> {
        let child = env
            .devns()
            .arg("daemon")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn devns daemon");
        let d = Daemon { env, child: Some(child) };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(env.socket()).is_err() {
            assert!(std::time::Instant::now() < deadline, "the daemon did not become ready");
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and its exit status.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        c.wait().ok()?.code()
    }

    /// Open fds of the daemon.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Drop for Env {
    /// Dropped after the test's daemons and containers (it is made first):
    /// the daemons' host mounts of views go with the state dir.
    fn drop(&mut self) {
        // A killed run's watcher frees what it held: let it finish first,
        // or it opens the state directory again after it is removed.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.watchers().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // A test's daemon is killed right after its containers, before it
        // could end what they had (a restarted daemon would): the loop
        // devices and device policies the records still name are ended here,
        // by the cleanup the next devns command does for dead runs.
        clean_records(&self.state_dir());
        // The holder a daemon started outlives it by design: this test's is
        // ended here, by its pid.
        for pid in self.holders() {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
        let views = self.state_dir().join("views");
        if views.exists() {
            let _ = Command::new("umount").args(["-R", "-l"]).arg(&views).stderr(Stdio::null()).status();
        }
    }
}

/// Ends what the records in state directory `state` still name (loop
/// devices, device policies, cgroups), as the next devns command does for
/// dead runs: for a test whose daemon was killed before it could.
pub fn clean_records(state: &Path) {
    let mut dead = Vec::new();
    for sub in ["ns", "runs"] {
        for e in std::fs::read_dir(state.join(sub)).into_iter().flatten().flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
            let Ok(r) = serde_json::from_str::<devns_core::state::NsRecord>(&text) else { continue };
            dead.push(r);
        }
    }
    devns::engine::clean_dead(dead);
}

/// Shell words that start `listener` (a uevent monitor such as `udevadm
/// monitor --kernel` or `busybox uevent`) in the background and wait until
/// its uevent socket is bound to the kernel's group, in the container's
/// network namespace as its `/proc` shows it: no fixed wait, which a busy
/// machine outlasts.
pub fn uevents_listened_by(listener: &str) -> String {
    let bound = "awk '$2 == 15 && $3 != 0 && $4 != \"00000000\" { f = 1 } END { exit !f }' /proc/net/netlink";
    format!("{listener} & until {bound}; do sleep 0.05; done")
}

/// A raw connection to the daemon's socket.
pub struct Api {
    pub stream: std::os::unix::net::UnixStream,
    reader: BufReader<std::os::unix::net::UnixStream>,
}

impl Api {
    pub fn connect(env: &Env) -> Api {
        let stream = std::os::unix::net::UnixStream::connect(env.socket()).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Api { stream, reader }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next reply line, or `None` when the daemon closed the connection.
    pub fn read(&mut self) -> Option<serde_json::Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("reply is JSON")),
        }
    }

    pub fn call(&mut self, req: serde_json::Value) -> serde_json::Value {
        let mut req = req;
        req["v"] = 1.into();
        let mut line = serde_json::to_vec(&req).unwrap();
        line.push(b'\n');
        self.send_raw(&line).expect("send");
        self.read().expect("a reply")
    }
}

/// A daemon of the test's, logging at info to `daemon.log` in its Env.
pub fn logged_daemon<'e>(env: &'e Env, vars: &[&str]) -> Daemon<'e> {
    let redirect = format!("exec \"$@\" 2>>{}", log_path(env).display());
    let mut w = vec!["env", "DEVNS_LOG=info"];
    w.extend(vars);
    w.extend(["sh", "-c", &redirect, "sh"]);
    Daemon::start_wrapped(env, &w)
}

pub fn log_path(env: &Env) -> PathBuf {
    env.dir.path().join("daemon.log")
}

pub fn log_lines(env: &Env, needle: &str) -> Vec<String> {
    let text = std::fs::read_to_string(log_path(env)).unwrap_or_default();
    text.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
}

/// Names in a namespace's view, per the daemon (`devns view NS --json`).
pub fn view_names(env: &Env, ns: &str) -> Vec<String> {
    let out = env.devns().args(["view", ns, "--json"]).output().expect("devns view");
    assert!(out.status.success(), "devns view {ns}: {}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    sorted(rows.iter().map(|r| r["path"].as_str().unwrap().to_owned()).collect())
}

/// A container running a tiny command loop: each line sent is run by its
/// shell, and its output ends with a line `end`.
pub fn shell_container(env: &Env, args: &[&str]) -> Container {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--", "sh", "-c", "echo ready; while read -r cmd; do eval \"$cmd\"; echo end; done"]);
    let mut c = env.spawn(&all);
    assert_eq!(c.line(), "ready");
    c
}

impl Container {
    /// Runs `cmd` in a [`shell_container`] and returns its output lines.
    pub fn sh(&mut self, cmd: &str) -> Vec<String> {
        self.send(&format!("{cmd}\n"));
        self.lines_until("end")
    }
}

/// Runs `devns ARGS` and returns stdout, asserting success.
pub fn devns_ok(env: &Env, args: &[&str]) -> String {
    let out = env.devns().args(args).output().expect("devns");
    assert!(out.status.success(), "devns {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `f` holds (the daemon acts on deaths asynchronously).
pub fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- the access layer ---------------------------------------------------------

/// Where the cgroup2 hierarchy is mounted on this host.
pub fn cgroup_root() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    devns::cgroup::find_cgroup2(&mi).expect("a cgroup2 mount")
}

/// Cgroups named `devns-*` anywhere below `dir`.
pub fn devns_cgroups_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if e.file_name().to_string_lossy().starts_with("devns-") {
                out.push(e.path());
            }
            out.extend(devns_cgroups_below(&e.path()));
        }
    }
    out
}

/// A cgroup of a test's own (below the root), for processes the test
/// starts; on drop its processes are killed and it is removed, with
/// everything below it.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(tag: &str) -> TestCgroup {
        let path = cgroup_root().join(format!("devnstest-{tag}-{}", std::process::id()));
        std::fs::create_dir(&path).expect("create a test cgroup");
        TestCgroup { path }
    }

    /// `cmd ARGS` started inside this cgroup (it moves itself in, then execs).
    pub fn command(&self, cmd: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""]).arg(&self.path).arg(cmd);
        c
    }

    /// The cgroups below this one.
    pub fn children(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.path)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // cgroup.kill takes every process below, as a failing test may
        // leave some; then the tree goes, deepest first.
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        if let Err(e) = devns::cgroup::remove(&self.path, Duration::from_secs(10)) {
            eprintln!("test cgroup left behind: {e}");
        }
    }
}

/// A device node of `kind` ('b' or 'c') MAJ:MIN at `path`, mode 0666, so
/// that only the device policy can refuse an open; removed on drop.
pub struct Node(pub PathBuf);

impl Node {
    pub fn new(path: PathBuf, kind: char, major: u32, minor: u32) -> Node {
        let ft = if kind == 'b' { rustix::fs::FileType::BlockDevice } else { rustix::fs::FileType::CharacterDevice };
        let _ = std::fs::remove_file(&path);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            ft,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        )
        .expect("mknod");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        Node(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A directory on the host's root filesystem, which containers started
/// without `--rootfs` reach as it is (their `/tmp` is their own); removed
/// on drop.
pub struct SharedDir(pub PathBuf);

impl SharedDir {
    pub fn new(tag: &str) -> SharedDir {
        let dir = reachable_dir(tag);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        SharedDir(dir)
    }

    /// The helper binary, copied here once, to run inside containers.
    pub fn testbin(&self) -> PathBuf {
        copy_testbin_to(&self.0)
    }

    /// A node of block or char device `kind:major:minor` here.
    pub fn node(&self, name: &str, kind: char, major: u32, minor: u32) -> Node {
        Node::new(self.0.join(name), kind, major, minor)
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `b`/`c`, major and minor of host block device `name` (sysfs).
pub fn block_numbers(name: &str) -> (u32, u32) {
    let t = std::fs::read_to_string(format!("/sys/class/block/{name}/dev")).expect("a block device");
    let (a, b) = t.trim().split_once(':').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

impl Container {
    /// Opens `path` for reading in the container: `opened`, or the error.
    pub fn open(&mut self, path: &str) -> String {
        let out = self.sh(&format!("( exec 3<{path} ) 2>&1 && echo opened"));
        out.join(" ")
    }
}

/// Whether an [`Container::open`] answer is the device policy's refusal.
pub fn refused(answer: &str) -> bool {
    answer.contains("Operation not permitted")
}

/// The host pids of the processes in cgroup `path`.
pub fn cgroup_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// The state record of namespace `name` (daemon's or a stand-alone run's).
pub fn record_of(env: &Env, name: &str) -> devns_core::state::NsRecord {
    for sub in ["ns", "runs"] {
        for e in std::fs::read_dir(env.state_dir().join(sub)).into_iter().flatten().flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
            let Ok(r) = serde_json::from_str::<devns_core::state::NsRecord>(&text) else { continue };
            if r.name.as_deref() == Some(name) {
                return r;
            }
        }
    }
    panic!("no record of namespace {name}");
}

/// Namespace `name`'s device policy, found in the kernel as devns finds it
/// after a restart (from the cgroup its record names).
pub fn policy_of(env: &Env, name: &str) -> devns::bpf::AccessPolicy {
    let rec = record_of(env, name).cgroup.unwrap_or_else(|| panic!("{name} has no cgroup in its record"));
    devns::bpf::AccessPolicy::recover(&rec).expect("the policy is in the kernel")
}

/// A zram device this test added (`hot_add`); removed on drop.
pub struct Zram(pub u32);

impl Zram {
    pub fn new() -> Zram {
        let n = std::fs::read_to_string("/sys/class/zram-control/hot_add").expect("zram hot_add");
        Zram(n.trim().parse().unwrap())
    }

    pub fn name(&self) -> String {
        format!("zram{}", self.0)
    }
}

impl Drop for Zram {
    fn drop(&mut self) {
        let _ = std::fs::write("/sys/class/zram-control/hot_remove", self.0.to_string());
    }
}

/// A process of the test's own, killed and reaped on drop.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where the tests' own added loop devices are numbered from: above the
/// range devns makes namespaces' devices in (`NS_LOOP_BASE` and 4096 on).
pub const ADDED_LOOP_BASE: u32 = 5000;

/// A loop device added with LOOP_CTL_ADD (no backing file); removed on drop.
pub struct AddedLoop(pub u64);

impl AddedLoop {
    pub fn new() -> AddedLoop {
        // A number nobody uses: high, and different per test process.
        let mut n = u64::from(ADDED_LOOP_BASE) + (std::process::id() as u64 % 400);
        while loop_ctl(LOOP_CTL_ADD, n) < 0 {
            n += 1;
        }
        AddedLoop(n)
    }

    /// Loop device `n` exactly, which must be free.
    pub fn number(n: u64) -> AddedLoop {
        assert!(loop_ctl(LOOP_CTL_ADD, n) >= 0, "loop{n} is taken");
        AddedLoop(n)
    }

    pub fn name(&self) -> String {
        format!("loop{}", self.0)
    }
}

impl Drop for AddedLoop {
    fn drop(&mut self) {
        loop_ctl(LOOP_CTL_REMOVE, self.0);
    }
}

/// A process of the test's own stopped (`SIGSTOP`, and seen stopped) until
/// dropped, when it goes on (`SIGCONT`), also when the test fails.
pub struct Stopped(pub i32);

impl Stopped {
    pub fn new(pid: i32) -> Stopped {
        let p = rustix::process::Pid::from_raw(pid).expect("a pid");
        rustix::process::kill_process(p, rustix::process::Signal::STOP).expect("SIGSTOP");
        let stopped = Stopped(pid);
        eventually("the process stopped", || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
        });
        stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(p) = rustix::process::Pid::from_raw(self.0) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::CONT);
        }
    }
}

/// The inode of a block device's sysfs directory: the device's for its
/// life (a new device at the same index, which a concurrent test may make
/// at once, has another; attaching and detaching keep it, unlike DISKSEQ).
pub fn block_ino(name: &str) -> Option<u64> {
    rustix::fs::stat(format!("/sys/class/block/{name}")).ok().map(|s| s.st_ino)
}

/// A `--rootfs` below `dir` holding busybox (as `/bin/busybox` and
/// `/bin/sh`) and the libraries it links, nothing else.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("bb-rootfs");
    let ldd = Command::new("ldd").arg("/bin/busybox").output().expect("ldd");
    let libs = String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from))
        .collect::<Vec<_>>();
    for f in libs.iter().map(PathBuf::as_path).chain([Path::new("/bin/busybox")]) {
        let to = root.join(f.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("rootfs dir");
        std::fs::copy(f, &to).unwrap_or_else(|e| panic!("cannot copy {}: {e}", f.display()));
    }
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).expect("sh");
    root
}

/// A new directory `outside` in the test's dir, and an fd of it that a
/// container started now inherits (not close-on-exec): what a host
/// process may leave open to a container.
pub fn inherited_dir(env: &Env) -> (PathBuf, rustix::fd::OwnedFd) {
    let outside = env.dir.path().join("outside");
    std::fs::create_dir(&outside).expect("outside");
    let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY;
    let fd = rustix::fs::open(&outside, flags, rustix::fs::Mode::empty()).expect("open outside");
    (outside, fd)
}

impl<'e> Daemon<'e> {
    /// A daemon the test started itself (its pid the daemon's), ended
    /// with the test.
    pub fn adopt(env: &'e Env, child: std::process::Child) -> Daemon<'e> {
        Daemon { env, child: Some(child) }
    }

    /// A daemon of this test's own started through `wrapper` (a command
    /// that execs the rest of its arguments, such as `prlimit
    /// --nofile=N:N` or `env VAR=VALUE`), so that its pid is the daemon's.
    pub fn start_wrapped(env: &'e Env, wrapper: &[&str]) -> Daemon<'e> {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..])
            .arg(env!("CARGO_BIN_EXE_devns"))
            .arg("daemon")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let d = Daemon { env, child: Some(env.devns_env(&mut cmd).spawn().expect("spawn devns daemon")) };
        eventually("the daemon is ready", || std::os::unix::net::UnixStream::connect(env.socket()).is_ok());
        d
    }
}

/// The arguments of `unshare` for `sh -c SCRIPT MARK` as root of a new
/// user namespace with a private mount namespace: a user-namespaced
/// process made by util-linux, not by devns.
pub fn userns_sh<'a>(script: &'a str, mark: &'a str) -> [&'a str; 9] {
    ["--user", "--map-root-user", "--mount", "--propagation", "private", "sh", "-c", script, mark]
}

/// Virtual console N of the host's, allocated by opening `/dev/ttyN` so
/// that the kernel makes its `vcsN`, `vcsaN`, `vcsuN` character devices
/// (`c 7:N` and on): a character device that can be removed
/// (`VT_DISALLOCATE`) and made again. Deallocated on drop.
pub struct Vt(pub u32);

impl Vt {
    /// Allocates VT `n`, which must be free (not allocated yet).
    pub fn new(n: u32) -> Vt {
        assert!(!Path::new(&format!("/sys/dev/char/7:{n}")).exists(), "vt {n} is allocated already");
        let vt = Vt(n);
        vt.allocate();
        vt
    }

    pub fn allocate(&self) {
        let flags = rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY;
        drop(rustix::fs::open(format!("/dev/tty{}", self.0), flags, rustix::fs::Mode::empty()).expect("open the vt"));
        assert!(Path::new(&format!("/sys/dev/char/7:{}", self.0)).exists(), "vcs{} made", self.0);
    }

    /// Deallocates it (its devices go), waiting for the close of the
    /// last opener to be done (the kernel answers `EBUSY` until then).
    pub fn deallocate(&self) -> bool {
        const VT_DISALLOCATE: libc::c_ulong = 0x5608;
        let flags = rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY;
        let Ok(console) = rustix::fs::open("/dev/tty0", flags, rustix::fs::Mode::empty()) else { return false };
        for _ in 0..100 {
            // SAFETY: VT_DISALLOCATE takes its argument by value; `console`
            // is open for the call.
            if unsafe {
                libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&console), VT_DISALLOCATE, self.0 as libc::c_ulong)
            } == 0
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The `vcsN` device's name.
    pub fn vcs(&self) -> String {
        format!("vcs{}", self.0)
    }
}

impl Drop for Vt {
    fn drop(&mut self) {
        self.deallocate();
    }
}

/// A pidfd of the watcher that the stand-alone `devns run` process
/// `keeper` forked (`devns::watcher`), while the keeper lives.
pub fn watcher_of(keeper: i32) -> Option<rustix::fd::OwnedFd> {
    let kids = std::fs::read_to_string(format!("/proc/{keeper}/task/{keeper}/children")).ok()?;
    let pid = kids
        .split_whitespace()
        .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == devns::watcher::NAME))?;
    let pid = rustix::process::Pid::from_raw(pid.parse().ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// Whether the process behind `pidfd` has exited.
pub fn exited(pidfd: &rustix::fd::OwnedFd) -> bool {
    let mut p = [rustix::event::PollFd::new(pidfd, rustix::event::PollFlags::IN)];
    rustix::event::poll(&mut p, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })).unwrap_or(0) == 1
}
