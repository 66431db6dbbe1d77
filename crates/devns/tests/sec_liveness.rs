//! Issue 17, items 7 and 9: a namespace's ids, record, cgroup and devices
//! are given up only when no process of its user namespace (or of one
//! nested in it) is left, and a container cannot outlive its keeper
//! unnoticed.

mod common;
use common::*;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

/// Whether the process behind `pidfd` is still running (its pidfd is not
/// yet readable).
fn running(pidfd: &OwnedFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(pidfd, rustix::event::PollFlags::IN)];
    rustix::event::poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })).unwrap() == 0
}

fn pidfd(pid: i32) -> Option<OwnedFd> {
    rustix::process::pidfd_open(rustix::process::Pid::from_raw(pid)?, rustix::process::PidfdFlags::empty()).ok()
}

/// SIGKILLs the processes behind `fds` on drop (what a failing test leaves).
struct KillAll(Vec<OwnedFd>);

impl Drop for KillAll {
    fn drop(&mut self) {
        for fd in &self.0 {
            let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
        }
    }
}

/// The `uid_map` of process `pid`, one line.
fn uid_map(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap().split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A container's cgroup (named by its record) that a failing test may
/// leave: its processes killed and it removed on drop.
struct KillCgroup(std::path::PathBuf);

impl Drop for KillCgroup {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
            let _ = devns::cgroup::remove(&self.0, Duration::from_secs(10));
        }
    }
}

/// The processes of cgroup `path` and all below it.
fn cgroup_tree_pids(path: &Path) -> Vec<i32> {
    let mut out = cgroup_pids(path);
    for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(cgroup_tree_pids(&e.path()));
        }
    }
    out
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_container_that_frees_its_init_from_its_keeper_never_shares_its_ids() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let shared = SharedDir::new("ptrace");
    let exe = shared.testbin();
    let mut cmd = env.devns();
    cmd.args(["run", "--name", "tracer", "--"]).arg(&exe).arg("ptrace-init");
    let mut c = Container::spawn(&mut cmd);
    let attack = loop {
        let l = c.line();
        // The helper's report of its attack, wherever it is on the line.
        if let Some(i) = l.find("freed").or_else(|| l.find("refused")) {
            break l[i..].to_owned();
        }
    };
    while !c.line().ends_with("ready") {}
    let rec = record_of(&env, "tracer");
    let cgroup = rec.cgroup.clone().expect("a cgroup").path;
    let _gone = KillCgroup(cgroup.clone().into());
    let pids = cgroup_tree_pids(Path::new(&cgroup));
    let old_map = uid_map(pids[0]);
    let survivors = KillAll(pids.iter().filter_map(|p| pidfd(*p)).collect());
    eprintln!("attack: {attack}; old namespace {old_map}, pids {pids:?}");
    // The keeper dies (SIGKILL), as a killed `devns run` does.
    let _ = c.child.kill();
    let _ = c.child.wait();
    // The next container, with the same state: while it holds a block, no
    // process of the old namespace with that block may live.
    let mut next = env.spawn(&["--", "sh", "-c", "cat /proc/self/uid_map; read x"]);
    let new_map = next.line().split_whitespace().collect::<Vec<_>>().join(" ");
    let alive: Vec<bool> = survivors.0.iter().map(running).collect();
    assert!(
        new_map != old_map || alive.iter().all(|a| !a),
        "a process of the old namespace ({old_map}) still runs while the next container has the same ids ({attack})"
    );
    next.send("\n");
    assert_eq!(next.wait().0, 0);
    eventually("the old container's processes are gone", || survivors.0.iter().all(|p| !running(p)));
    eventually("the old container's cgroup is gone", || !Path::new(&cgroup).exists());
    // Its init is not the container's to trace: the attack has no hold.
    assert!(attack.starts_with("refused"), "the container could ptrace its init: {attack}");
}

/// A process of a container's user namespace that its pid namespace's end
/// does not take: host root joins the namespace of `init` from outside
/// (`nsenter`), and from there a nested one, and sleeps; in `cgroup`, if
/// given. Returns the child (`unshare`, exec'd into `sleep`) and its pidfd.
fn outsider(init: i32, cgroup: Option<&str>, mark: &str) -> (std::process::Child, OwnedFd) {
    let script = "[ -z \"$1\" ] || echo $$ > \"$1/cgroup.procs\" || exit 1; \
                  exec nsenter -U -t \"$2\" -- unshare -U sh -c 'echo in; exec sleep 1000' \"$3\"";
    let mut c = std::process::Command::new("sh")
        .args(["-c", script, "sh", cgroup.unwrap_or(""), &init.to_string(), mark])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(c.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "in", "the outsider joined the container's namespace");
    let fd = pidfd(c.id() as i32).unwrap();
    (c, fd)
}

/// What survives a killed run's keeper (however it got there: here a
/// process host root put in the namespace, as the ptrace of init once
/// did) is killed by the run's watcher, or, when that was killed too, by
/// the next devns command, before the run's ids are handed out again: with
/// its cgroup (`cgroup.kill`), or, with the access layer off, by pidfd;
/// nested user namespaces count as the namespace's.
fn what_outlives_a_killed_run_dies(policy: bool, daemon: bool, watched: bool) {
    let env = Env::new();
    if !policy {
        std::fs::write(env.config(), "device_policy = false\n").unwrap();
    }
    let mark = marker("outsider");
    let mut c = env.spawn(&["--name", "victim", "--", "sh", "-c", "echo ready; while :; do sleep 1; done"]);
    assert_eq!(c.line(), "ready");
    let rec = record_of(&env, "victim");
    let cgroup = rec.cgroup.as_ref().map(|c| c.path.clone());
    assert_eq!(cgroup.is_some(), policy);
    let _gone = cgroup.as_ref().map(|p| KillCgroup(p.into()));
    let init = c.init();
    let old_map = uid_map(init);
    let (mut child, fd) = outsider(init, cgroup.as_deref(), &mark);
    let fd = KillAll(vec![fd]);
    let watcher = watcher_of(c.pid()).expect("the run's watcher");
    if !watched {
        rustix::process::pidfd_send_signal(&watcher, rustix::process::Signal::KILL).unwrap();
        eventually("the watcher is gone", || exited(&watcher));
    }
    let _ = c.child.kill();
    let _ = c.child.wait();
    if watched {
        // No devns command runs: the watcher kills it and frees the run.
        eventually("what outlived the keeper is killed by its watcher", || !running(&fd.0[0]));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        eventually("the run's record is gone", || env.recorded_namespaces() == 0);
        if let Some(p) = cgroup {
            eventually("the old container's cgroup is gone", || !Path::new(&p).exists());
        }
        eventually("the watcher has exited", || exited(&watcher));
        return;
    }
    // The next devns command: a stand-alone run, or a daemon starting up
    // (and then giving ids to a run).
    let _d = daemon.then(|| Daemon::start(&env));
    let mut next = env.spawn(&["--", "sh", "-c", "cat /proc/self/uid_map; read x"]);
    let new_map = next.line().split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        new_map != old_map || !running(&fd.0[0]),
        "a process of the old namespace ({old_map}) still runs while the next container has the same ids"
    );
    assert!(!running(&fd.0[0]), "what outlived the keeper is killed by the next devns command");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    next.send("\n");
    assert_eq!(next.wait().0, 0);
    if let Some(p) = cgroup {
        eventually("the old container's cgroup is gone", || !Path::new(&p).exists());
    }
    if !daemon {
        assert_eq!(env.recorded_namespaces(), 0);
    }
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn what_outlives_a_killed_run_dies_with_its_cgroup_before_its_ids_are_reused() {
    if !privileged() {
        return;
    }
    what_outlives_a_killed_run_dies(true, false, false);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn what_outlives_a_killed_run_without_a_cgroup_is_killed_by_pidfd_before_its_ids_are_reused() {
    if !privileged() {
        return;
    }
    what_outlives_a_killed_run_dies(false, false, false);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn what_outlives_a_killed_run_dies_with_its_cgroup_by_the_run_s_watcher() {
    if !privileged() {
        return;
    }
    what_outlives_a_killed_run_dies(true, false, true);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn what_outlives_a_killed_run_without_a_cgroup_is_killed_by_pidfd_by_the_run_s_watcher() {
    if !privileged() {
        return;
    }
    what_outlives_a_killed_run_dies(false, false, true);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn what_outlives_a_killed_run_dies_when_a_daemon_starts_before_its_ids_are_reused() {
    if !privileged() {
        return;
    }
    what_outlives_a_killed_run_dies(true, true, false);
}

/// The record of namespace `name`, if there is one.
fn try_record_of(env: &Env, name: &str) -> Option<devns_core::state::NsRecord> {
    ["ns", "runs"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(env.state_dir().join(sub)).into_iter().flatten().flatten())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<devns_core::state::NsRecord>(&t).ok())
        .find(|r| r.name.as_deref() == Some(name))
}

/// SIGKILLs processes with `mark` in their command line on drop.
struct KillMarked(String);

impl Drop for KillMarked {
    fn drop(&mut self) {
        for pid in processes_with(&self.0) {
            if let Some(fd) = pidfd(pid) {
                let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
            }
        }
    }
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn an_attached_namespace_lives_while_a_process_nested_in_it_does() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let lp = AddedLoop::new();
    let mark = marker("nested");
    let _cleanup = KillMarked(mark.clone());
    let cg = TestCgroup::new("nested");
    let mut cmd = cg.command("unshare");
    cmd.args(userns_sh("echo ready; while read -r cmd; do eval \"$cmd\"; echo end; done", &mark));
    let mut p = Container::spawn(&mut cmd);
    assert_eq!(p.line(), "ready");
    let pid = p.pid();
    let out = devns_ok(&env, &["attach", "--pid", &pid.to_string(), "--name", "x"]);
    assert!(out.starts_with("id:"), "{out}");
    devns_ok(&env, &["assign", &lp.name(), "--to", "x"]);
    // A child of P moves into a nested user namespace, keeps the device
    // open and goes on opening it.
    let nested = format!(
        "unshare --user sh -c 'exec 3</dev/{0}; echo opened $$; while head -c0 /dev/{0}; do sleep 0.05; done; echo lost' {mark}-n &",
        lp.name()
    );
    let mut lines = p.sh(&nested);
    if lines.is_empty() {
        lines.push(p.line());
    }
    let inner: Vec<i32> = lines.iter().filter_map(|l| l.strip_prefix("opened ")?.parse().ok()).collect();
    assert_eq!(inner.len(), 1, "the nested process opened the device: {lines:?}");
    let inner_fd = KillAll(vec![pidfd(inner[0]).unwrap()]);
    // P ends; its nested child lives on.
    p.send("exit\n");
    let _ = p.child.wait();
    eventually("the daemon watches the nested process (or let go of x)", || {
        try_record_of(&env, "x").is_none_or(|r| r.members.iter().all(|m| m.pid != pid))
    });
    let rec = try_record_of(&env, "x").expect("x is kept while a process nested in it lives");
    assert_eq!(rec.members.iter().map(|m| m.pid).collect::<Vec<_>>(), inner, "the nested process is watched");
    let owned = env.owned();
    let owner = format!("id:{}", rec.id.expect("an id").0);
    assert!(owned.iter().any(|d| d["name"] == lp.name().as_str() && d["owner"] == owner.as_str()), "{owned:?}");
    let policy = policy_of(&env, "x");
    drop(policy);
    assert!(running(&inner_fd.0[0]), "the nested process still opens the device");
    // Once it is gone, so is x.
    let _ = rustix::process::pidfd_send_signal(&inner_fd.0[0], rustix::process::Signal::KILL);
    eventually("x released", || devns_ok(&env, &["ns", "ls", "--json"]).trim() == "[]");
    assert!(env.owned().is_empty());
}

/// A daemon's `devns run` whose init has ended while a process is left,
/// either in a user namespace nested in its own (joined from outside: its
/// pid namespace's end does not take it) or only in its cgroup (under its
/// device policy): the daemon keeps its ids, devices and cgroup until
/// that process is gone too.
fn a_daemon_s_run_lives_while_a_process_is_left(nested: bool) {
    let env = Env::new();
    let _d = Daemon::start(&env);
    let lp = AddedLoop::new();
    let mark = marker("left");
    let mut c = env.spawn(&["--name", "y", "--dev", &lp.name(), "--", "sh", "-c", "echo ready; read x"]);
    assert_eq!(c.line(), "ready");
    let rec = record_of(&env, "y");
    let cgroup = rec.cgroup.clone().expect("a cgroup").path;
    let _gone = KillCgroup(cgroup.clone().into());
    let init = c.init();
    let (mut child, fd) = if nested {
        outsider(init, Some(&cgroup), &mark)
    } else {
        let mut c = std::process::Command::new("sh")
            .args(["-c", "echo $$ > \"$0/cgroup.procs\" && echo in && exec sleep 1000", &cgroup])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(c.stdout.take().unwrap()), &mut line).unwrap();
        assert_eq!(line.trim(), "in");
        let fd = pidfd(c.id() as i32).unwrap();
        (c, fd)
    };
    let left = child.id() as i32;
    let fd = KillAll(vec![fd]);
    c.send("\n");
    assert_eq!(c.wait().0, 0);
    eventually("the daemon watches the process left (or let go of y)", || {
        try_record_of(&env, "y").is_none_or(|r| r.members.iter().all(|m| m.pid != init))
    });
    let r = try_record_of(&env, "y").expect("y is kept while a process of it is left");
    assert_eq!(r.members.iter().map(|m| m.pid).collect::<Vec<_>>(), [left]);
    assert_eq!((r.uid_base, r.gid_base), (rec.uid_base, rec.gid_base), "its ids stay its own");
    let owner = format!("id:{}", r.id.expect("an id").0);
    assert!(env.owned().iter().any(|d| d["name"] == lp.name().as_str() && d["owner"] == owner.as_str()));
    assert!(Path::new(&cgroup).exists());
    let _ = rustix::process::pidfd_send_signal(&fd.0[0], rustix::process::Signal::KILL);
    let _ = child.wait();
    eventually("y released", || devns_ok(&env, &["ns", "ls", "--json"]).trim() == "[]");
    assert!(env.owned().is_empty());
    eventually("y's cgroup is gone", || !Path::new(&cgroup).exists());
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_daemon_s_run_lives_while_a_process_nested_in_its_namespace_does() {
    if !privileged() {
        return;
    }
    a_daemon_s_run_lives_while_a_process_is_left(true);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_daemon_s_run_lives_while_a_process_is_left_in_its_cgroup() {
    if !privileged() {
        return;
    }
    a_daemon_s_run_lives_while_a_process_is_left(false);
}

/// A stand-alone run's watcher keeps nothing of the keeper's alive: it
/// holds the keeper's and the container's pidfds, the run's journal,
/// `/dev/null` as stdin and stdout and the keeper's stderr, in a session of its own; and it ends
/// with a run that ends normally, leaving its records to nobody.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_watcher_holds_only_two_pidfds_and_the_run_s_journal_and_ends_with_its_run() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let lp = Loop::new(false);
    let mut c = env.spawn(&["--dev", &lp.name, "--", "sh", "-c", "echo up; read x"]);
    assert_eq!(c.line(), "up");
    let watcher = watcher_of(c.pid()).expect("the run's watcher");
    let pid = devns::host::pid_of_pidfd(&watcher).expect("running");
    let mut fds = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let what = std::fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default();
        fds.push((e.file_name().to_string_lossy().into_owned(), what));
    }
    fds.sort_by_key(|(fd, _)| fd.parse::<i32>().unwrap());
    let keeper_stderr = std::fs::read_link(format!("/proc/{}/fd/2", c.pid())).unwrap().display().to_string();
    assert_eq!(fds.len(), 6, "{fds:?}");
    assert_eq!(fds[0], ("0".into(), "/dev/null".into()));
    assert_eq!(fds[1], ("1".into(), "/dev/null".into()));
    assert_eq!(fds[2], ("2".into(), keeper_stderr));
    let pidfds = fds[3..].iter().filter(|(_, w)| w == "anon_inode:[pidfd]").count();
    // The run's journal of the loop device made and not recorded yet.
    let journals = fds[3..].iter().filter(|(_, w)| w.starts_with("/memfd:devns-journal")).count();
    assert_eq!((pidfds, journals), (2, 1), "{fds:?}");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    assert_eq!(fields[3], pid.to_string(), "a session of its own: {stat}");
    c.send("\n");
    assert_eq!(c.wait().0, 0);
    assert!(exited(&watcher), "the watcher ended with its run");
    assert!(env.owned().is_empty());
    assert_eq!(env.recorded_namespaces(), 0);
}
