//! The default layout where it is: the real `/run/devns`, default flags,
//! no `DEVNS_STATE_DIR`, `DEVNS_SOCKET` or `DEVNS_CONFIG`. Tests here run
//! one at a time (the nextest group `default-layout`, for every test named
//! `default_layout`), refuse to run while a devns daemon uses
//! `/run/devns`, and leave it as they found it: what they made removed,
//! what an older devns had there moved back.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const RUN: &str = "/run/devns";
/// A host uid nobody uses (checked).
const USER: u32 = 64_123;

fn names(dir: &Path) -> Option<BTreeSet<String>> {
    let rd = std::fs::read_dir(dir).ok()?;
    Some(rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
}

fn mounts_below_run() -> Vec<String> {
    let text = std::fs::read("/proc/self/mountinfo").unwrap();
    let mut v: Vec<String> = devns_core::mountinfo::mounts(&text)
        .map(|m| m.mount_point.to_string_lossy().into_owned())
        .filter(|p| p == RUN || p.starts_with("/run/devns/"))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn held(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else { return false };
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) == Err(rustix::io::Errno::WOULDBLOCK)
}

fn mode(path: &str) -> u32 {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path}: {e}")).permissions().mode() & 0o7777
}

/// Every path below `dir` (relative to it), not below mount points.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, dev: u64, out: &mut BTreeSet<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            out.insert(p.strip_prefix(root).unwrap().to_owned());
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            if m.is_dir() && m.dev() == dev {
                walk(root, &p, dev, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    if let Ok(m) = std::fs::metadata(dir) {
        walk(dir, dir, m.dev(), &mut out);
    }
    out
}

/// `/run/devns` for one test, as it was found, back on drop.
struct RealRunDir {
    /// Its mode and every path below it, if it existed.
    before: Option<(u32, BTreeSet<PathBuf>)>,
    mounts: Vec<String>,
}

impl RealRunDir {
    /// Fails (before changing anything) while a daemon uses `/run/devns`
    /// or a record of devns's lies in it.
    fn take() -> RealRunDir {
        let sock = Path::new(RUN).join("devns.sock");
        assert!(
            std::os::unix::net::UnixStream::connect(&sock).is_err(),
            "a devns daemon listens on {}: this test needs {RUN} to itself; stop that daemon, or run the test elsewhere",
            sock.display()
        );
        for lock in ["daemon.lock", "state/daemon.lock"] {
            let p = Path::new(RUN).join(lock);
            assert!(!held(&p), "a devns daemon holds {}: this test needs {RUN} to itself", p.display());
        }
        let before = names(Path::new(RUN)).map(|_| (mode(RUN), tree(Path::new(RUN))));
        let records: Vec<&PathBuf> = before
            .iter()
            .flat_map(|(_, t)| t.iter())
            .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("global.json"))
            .collect();
        assert!(records.is_empty(), "{RUN} holds devns records ({records:?}): this test needs it to itself");
        RealRunDir { before, mounts: mounts_below_run() }
    }

    fn path(name: &str) -> PathBuf {
        Path::new(RUN).join(name)
    }
}

impl Drop for RealRunDir {
    fn drop(&mut self) {
        // Dropped after the test's daemons and containers: what their
        // records still name ends before the records go.
        clean_records(&Path::new(RUN).join("state"));
        clean_records(Path::new(RUN));
        let mut made: Vec<String> = mounts_below_run().into_iter().filter(|m| !self.mounts.contains(m)).collect();
        made.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in made {
            let _ = Command::new("umount").args(["-l", &m]).stderr(Stdio::null()).status();
        }
        let Some((mode, before)) = &self.before else {
            let _ = std::fs::remove_dir_all(RUN);
            return;
        };
        // What the layout moved into `state/`, back where it was.
        for top in before.iter().filter(|p| p.components().count() == 1) {
            let (here, moved) = (Path::new(RUN).join(top), Path::new(RUN).join("state").join(top));
            if !here.exists() && moved.exists() && !before.contains(&Path::new("state").join(top)) {
                let _ = std::fs::rename(&moved, &here);
            }
            if !here.exists() && top.to_string_lossy().ends_with("lock") {
                let _ = std::fs::write(&here, b"");
                let _ = std::fs::set_permissions(&here, std::fs::Permissions::from_mode(0o600));
            }
        }
        // Then whatever was not there, deepest first.
        for p in tree(Path::new(RUN)).iter().rev().filter(|p| !before.contains(*p)) {
            let p = Path::new(RUN).join(p);
            let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
        }
        let _ = std::fs::set_permissions(RUN, std::fs::Permissions::from_mode(*mode));
    }
}

/// `/run/devns` moved aside, when it exists, for a test that lays it out
/// as an older devns would have from nothing (a machine where this devns
/// already ran has it in the new layout); moved back on drop, after the
/// test's [`RealRunDir`] (declared after this) removed what it made.
struct Aside(Option<PathBuf>);

impl Aside {
    fn take() -> Aside {
        // Its checks alone: no daemon uses it, no record lies in it.
        drop(RealRunDir::take());
        assert!(mounts_below_run().is_empty(), "mounts below {RUN}: this test needs it to itself");
        if !Path::new(RUN).exists() {
            return Aside(None);
        }
        let to = PathBuf::from(format!("{RUN}.aside-{}", std::process::id()));
        std::fs::rename(RUN, &to).unwrap_or_else(|e| panic!("cannot move {RUN} aside: {e}"));
        Aside(Some(to))
    }
}

impl Drop for Aside {
    fn drop(&mut self) {
        if let Some(to) = &self.0 {
            let _ = std::fs::remove_dir_all(RUN);
            let _ = std::fs::rename(to, RUN);
        }
    }
}

/// `program`, with devns's defaults alone (none of its variables).
fn defaults(program: &str) -> Command {
    let mut c = Command::new(program);
    for v in ["DEVNS_STATE_DIR", "DEVNS_SOCKET", "DEVNS_CONFIG", "DEVNS_LOG"] {
        c.env_remove(v);
    }
    c
}

/// `devns` with the defaults alone.
fn devns() -> Command {
    defaults(env!("CARGO_BIN_EXE_devns"))
}

/// `CMD ARGS` as host uid [`USER`], without capabilities or groups.
fn as_user(cmd: &str, args: &[&str]) -> Output {
    let user = USER.to_string();
    let mut c = defaults("setpriv");
    c.args([format!("--reuid={user}"), format!("--regid={user}"), "--clear-groups".into()]).arg(cmd).args(args);
    c.stdin(Stdio::null()).output().expect("setpriv")
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.0.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.0.wait();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_owned()
}

/// In the default layout a user who is not root reaches the daemon and
/// its read-only API, as `docs/API.md` says, and nothing else: not the
/// state, not a change, not the run directory. A run directory of an
/// older devns (0700, its state in it: made here when there is none) is
/// moved into the layout.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_default_layout_serves_users_the_read_only_api_and_keeps_the_state_root_s() {
    if !privileged() {
        return;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    assert!(!passwd.lines().any(|l| l.split(':').nth(2) == Some(&USER.to_string())), "uid {USER} is in use");
    let _run = RealRunDir::take();
    // An older devns's run directory, with a global flag of its state
    // (`full` off) that must survive the move.
    let older = !Path::new(RUN).exists() || Path::new(RUN).join("ns").exists();
    if !Path::new(RUN).exists() {
        std::fs::create_dir(RUN).unwrap();
        std::fs::set_permissions(RUN, std::fs::Permissions::from_mode(0o700)).unwrap();
        for d in ["ns", "runs"] {
            std::fs::create_dir(RealRunDir::path(d)).unwrap();
        }
        std::fs::write(RealRunDir::path("lock"), b"").unwrap();
    }
    let full_off = older && !RealRunDir::path("global.json").exists() && !RealRunDir::path("state").exists();
    if full_off {
        let g = std::collections::BTreeMap::from([(devns_core::DevId::new(devns_core::Kind::Char, 1, 7), false)]);
        std::fs::write(RealRunDir::path("global.json"), serde_json::to_vec(&g).unwrap()).unwrap();
    }

    let daemon = devns().arg("daemon").stdin(Stdio::null()).stdout(Stdio::null()).spawn().expect("devns daemon");
    let _daemon = Running(daemon);
    let sock = RealRunDir::path("devns.sock");
    eventually("the daemon listens on /run/devns/devns.sock", || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });

    // The read-only API, for a user: what its namespace (the host's, for
    // a host user) owns of devns's, which is nothing.
    let devns_bin = env!("CARGO_BIN_EXE_devns");
    let ls = as_user(devns_bin, &["ls", "--json"]);
    assert!(ls.status.success(), "devns ls as uid {USER}: {}", text(&ls.stderr));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&ls.stdout).unwrap(), serde_json::json!([]));
    let root_ls = || -> Vec<serde_json::Value> {
        let o = devns().args(["ls", "--json"]).output().unwrap();
        assert!(o.status.success(), "devns ls as root: {}", text(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let rows = root_ls();
    let global = |name: &str| rows.iter().find(|r| r["name"] == name).map(|r| r["global"].clone());
    assert_eq!(global("null"), Some(true.into()), "{rows:?}");
    if full_off {
        assert_eq!(global("full"), Some(false.into()), "the older state's global flag survived the move");
    }
    // The layout: sockets in a directory anyone may pass, the state in
    // one of root's own.
    assert_eq!((mode(RUN), mode("/run/devns/state"), mode("/run/devns/devns.sock")), (0o755, 0o700, 0o777 & !0o111));
    assert_eq!(mode("/run/devns/seccomp.sock"), 0o600, "the seccomp agent socket is root's alone");
    let top = names(Path::new(RUN)).unwrap();
    for old in ["ns", "runs", "global.json", "lock", "daemon.lock", "pending-loops.json", "views"] {
        assert!(!top.contains(old), "{old} is left in {RUN}: {top:?}");
    }
    if older {
        assert!(RealRunDir::path("state/ns").is_dir() && RealRunDir::path("state/runs").is_dir(), "moved");
    }

    let ns = as_user(devns_bin, &["ns", "ls", "--json"]);
    assert!(ns.status.success(), "devns ns ls as uid {USER}: {}", text(&ns.stderr));

    // The documented errors: someone else's (or no) namespace, and changes.
    let view = as_user(devns_bin, &["view", "nosuch"]);
    assert_eq!((view.status.code(), text(&view.stderr)), (Some(125), "devns: no such namespace \"nosuch\"".into()));
    for change in [&["assign", "null", "--to", "nosuch"][..], &["release", "null"], &["global", "full", "on"]] {
        let o = as_user(devns_bin, change);
        assert_eq!(
            (o.status.code(), text(&o.stderr)),
            (Some(125), "devns: permission denied: only host root may change devns's state".into()),
            "{change:?}"
        );
    }
    // Nor through the files: the state is unreadable, the run directory
    // and its socket unchangeable.
    let files = as_user(
        "sh",
        &[
            "-c",
            "ls /run/devns/state; cat /run/devns/state/lock; touch /run/devns/x; rm -f /run/devns/devns.sock; \
             mv /run/devns/state /run/devns/s; rm -f /run/devns/seccomp.sock; ls /run/devns",
        ],
    );
    let said = text(&files.stderr);
    assert_eq!(said.lines().filter(|l| l.contains("Permission denied")).count(), 6, "{said}");
    let shown: BTreeSet<String> = text(&files.stdout).lines().map(str::to_owned).collect();
    assert_eq!(shown, top, "the user's attempts changed nothing in {RUN}");
    // (Only the devices no other test makes or removes meanwhile.)
    let stable = |rows: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        let names = ["null", "zero", "full", "random", "urandom", "tty", "loop-control", "net/tun", "fuse"];
        rows.into_iter().filter(|r| names.iter().any(|n| r["name"] == *n)).collect()
    };
    assert_eq!(stable(root_ls()), stable(rows.clone()), "the user's attempts changed nothing");
}

/// An upgrade with a container running: a daemon laid out as devns before
/// issue 13 (its state in a 0700 `/run/devns` itself) is killed, and one
/// started with the defaults moves the records into the state directory,
/// takes over the container's view (which an older daemon's mount kept
/// where it was) and serves it: a device assigned now appears in the
/// container's `/dev`.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn an_older_layout_with_a_running_container_moves_into_the_default_layout() {
    if !privileged() {
        return;
    }
    let _aside = Aside::take();
    let _run = RealRunDir::take();
    let lo = Loop::new(false);
    let old = ["--state-dir", RUN, "--socket", "/run/devns/devns.sock"];
    let sock = RealRunDir::path("devns.sock");
    let listening = || std::os::unix::net::UnixStream::connect(&sock).is_ok();
    let mut older =
        Running(devns().args(old).arg("daemon").stdin(Stdio::null()).stdout(Stdio::null()).spawn().unwrap());
    eventually("the older daemon listens", listening);
    assert_eq!(mode(RUN), 0o700, "laid out as an older devns laid it out");
    let script = "echo ready; while read -r cmd; do eval \"$cmd\"; echo end; done";
    let mut c = Container::spawn(devns().args(old).args(["run", "--name", "kept", "--", "sh", "-c", script]));
    assert_eq!(c.line(), "ready");
    // Served by the older daemon (its agent answers a trapped call), not
    // still being set up.
    assert_eq!(c.sh("mknod /tmp/probe c 1 3 && echo made"), ["made"]);
    assert!(RealRunDir::path("views").is_dir());
    older.0.kill().unwrap();
    older.0.wait().unwrap();
    drop(older);

    let _new = Running(devns().arg("daemon").stdin(Stdio::null()).stdout(Stdio::null()).spawn().unwrap());
    eventually("the daemon listens", listening);
    assert_eq!((mode(RUN), mode("/run/devns/state")), (0o755, 0o700));
    assert!(!RealRunDir::path("views").exists(), "the older daemon's views are taken over");
    let ns = devns().args(["ns", "ls", "--json"]).output().unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&ns.stdout).unwrap();
    assert_eq!(rows.iter().filter(|r| r["name"] == "kept").count(), 1, "{rows:?}");
    let name = lo.name.clone();
    let assign = devns().args(["assign", &name, "--to", "kept"]).output().unwrap();
    assert!(assign.status.success(), "{}", text(&assign.stderr));
    assert_eq!(c.sh(&format!("ls /dev/{name}")), [format!("/dev/{name}")], "the container's own view is served");
}
