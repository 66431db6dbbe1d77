//! The access layer against the real kernel, as root: a container's cgroup
//! program refuses every device node its namespace may not have, however
//! the node got in (a bind mount from outside, a node on a shared host
//! filesystem), follows ownership live (assign, release, loop-control,
//! new partitions, a daemon restart), coexists with a runtime's own
//! program, resists the container, and is gone with the container.

mod common;
use common::*;
use devns_core::bpf::{ACC_ALL, Key};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bind-mounts host path `src` over file `dst` in the mount namespace of
/// process `pid`, from outside devns (what a runtime or an admin might do).
fn bind_into(pid: i32, src: &str, dst: &str) {
    let st = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--", "mount", "--bind", src, dst])
        .status()
        .unwrap();
    assert!(st.success(), "nsenter mount --bind {src} {dst}");
}

/// What the map must hold: the default global set (numbers from the
/// host's own nodes), the loop-control stand-in (null), devpts's ptmx and
/// pty slaves, and `owned`.
fn expected_map(owned: &[(u32, u32, u32)]) -> BTreeMap<Key, u32> {
    let mut m = BTreeMap::new();
    for name in devns_core::config::DEFAULT_GLOBAL {
        let st = rustix::fs::stat(format!("/dev/{name}")).unwrap();
        m.insert(Key { ty: 2, major: rustix::fs::major(st.st_rdev), minor: rustix::fs::minor(st.st_rdev) }, ACC_ALL);
    }
    m.insert(Key { ty: 2, major: 5, minor: 2 }, ACC_ALL);
    for major in 136..=143 {
        m.insert(Key::any_char_minor(major), ACC_ALL);
    }
    for (ty, major, minor) in owned {
        m.insert(Key { ty: *ty, major: *major, minor: *minor }, ACC_ALL);
    }
    m
}

/// A new loop device the daemon knows, and a node of it (mode 0666) on a
/// filesystem containers share with the host (`shared`, named `tag`).
fn loop_with_node(env: &Env, tag: &str) -> (AddedLoop, SharedDir, Node) {
    let l = AddedLoop::new();
    eventually("loop known to the daemon", || devns_ok(env, &["ls"]).contains(&l.name()));
    let (major, minor) = block_numbers(&l.name());
    let shared = SharedDir::new(tag);
    let node = shared.node("disk", 'b', major, minor);
    (l, shared, node)
}

/// Namespace `name`'s recorded cgroup, and its program's and map's ids.
fn cgroup_and_ids(env: &Env, name: &str) -> (devns_core::state::CgroupRecord, (u32, u32)) {
    let rec = record_of(env, name).cgroup.expect("a cgroup in the record");
    (rec, policy_of(env, name).ids())
}

/// Waits (bounded: the kernel frees programs and maps asynchronously)
/// until program and map `ids` are gone from the kernel.
fn gone_from_the_kernel((prog, map): (u32, u32)) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = devns_sys::bpf::prog_fd_by_id(prog).err().and_then(|e| e.errno());
        let m = devns_sys::bpf::map_fd_by_id(map).err().and_then(|e| e.errno());
        if p == Some(rustix::io::Errno::NOENT) && m == Some(rustix::io::Errno::NOENT) {
            return;
        }
        assert!(Instant::now() < deadline, "program {prog} ({p:?}) or map {map} ({m:?}) still in the kernel");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_host_node_bind_mounted_from_outside_opens_only_while_assigned() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let mut a = shell_container(&env, &["--name", "a"]);
    // A loop device (numbered per test process): zram numbers are shared
    // by concurrent tests, and a reused number can hide a device's events.
    let (l, _shared, node) = loop_with_node(&env, "bind");
    let (major, minor) = block_numbers(&l.name());
    a.sh("touch /tmp/bound");
    bind_into(a.init(), node.path(), "/tmp/bound");
    assert_eq!(a.sh("stat -c %t:%T /tmp/bound"), [format!("{major:x}:{minor:x}")], "the node is there");
    assert!(refused(&a.open("/tmp/bound")), "not assigned: EPERM");

    devns_ok(&env, &["assign", &l.name(), "--to", "a"]);
    assert_eq!(a.open("/tmp/bound"), "opened", "assigned: opens, nothing restarted");
    devns_ok(&env, &["release", &l.name()]);
    assert!(refused(&a.open("/tmp/bound")), "released: EPERM again");
    let _ = Command::new("nsenter").args(["-t", &a.init().to_string(), "-m", "--", "umount", "/tmp/bound"]).status();
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_node_on_a_shared_host_filesystem_follows_the_same_rule() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let mut a = shell_container(&env, &["--name", "a"]);
    let (l, shared, node) = loop_with_node(&env, "shared");
    let mem = shared.node("mem", 'c', 1, 1);
    assert!(a.sh("ls /dev").iter().all(|n| *n != l.name()), "not in the view");
    assert!(refused(&a.open(node.path())), "not assigned: EPERM");
    assert!(refused(&a.open(mem.path())), "never anyone's: EPERM");
    devns_ok(&env, &["assign", &l.name(), "--to", "a"]);
    assert_eq!(a.open(node.path()), "opened");
    assert_eq!(a.open(&format!("/dev/{}", l.name())), "opened");
    devns_ok(&env, &["release", &l.name()]);
    assert!(refused(&a.open(node.path())));
    // The host itself is not under the policy.
    assert!(std::fs::File::open(node.path()).is_ok());
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_thousand_assign_release_cycles_leave_exactly_the_expected_map() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let _a = shell_container(&env, &["--name", "a"]);
    let loops = [AddedLoop::new(), AddedLoop::new()];
    for l in &loops {
        eventually("loop known to the daemon", || devns_ok(&env, &["ls"]).contains(&l.name()));
    }
    let nums: Vec<(u32, u32)> = loops.iter().map(|l| block_numbers(&l.name())).collect();
    let before = policy_of(&env, "a");
    assert_eq!(before.read().unwrap(), expected_map(&[]), "a fresh container's map");
    let mut api = Api::connect(&env);
    for i in 0..1000 {
        let dev = loops[i % 2].name();
        let r = api.call(json!({"op": "assign", "device": dev, "to": "a"}));
        assert_eq!(r["ok"], true, "{r}");
        // The last cycle leaves loops[1] assigned.
        if i < 999 {
            let r = api.call(json!({"op": "release", "device": dev}));
            assert_eq!(r["ok"], true, "{r}");
        }
    }
    let after = policy_of(&env, "a");
    assert_eq!(after.ids(), before.ids(), "the same program and map throughout: no reload");
    let got = after.read().unwrap();
    assert_eq!(got, expected_map(&[(1, nums[1].0, nums[1].1)]), "exactly the expected entries");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn program_map_and_cgroup_are_gone_when_the_container_dies() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    // Stand-alone: devns run is its own keeper.
    let mut c = shell_container(&env, &["--name", "solo"]);
    let (rec, ids) = cgroup_and_ids(&env, "solo");
    assert!(rec.created && Path::new(&rec.path).is_dir());
    assert!(cgroup_pids(Path::new(&rec.path)).contains(&c.init()), "its init is in it");
    c.send("exit\n");
    let _ = c.wait();
    assert!(!Path::new(&rec.path).exists(), "the cgroup is removed when the run ends");
    gone_from_the_kernel(ids);

    // Through the daemon, and killed.
    let _d = Daemon::start(&env);
    let c = shell_container(&env, &["--name", "managed"]);
    let (rec, ids) = cgroup_and_ids(&env, "managed");
    drop(c);
    eventually("the daemon removed the cgroup", || !Path::new(&rec.path).exists());
    gone_from_the_kernel(ids);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_killed_stand_alone_run_s_cgroup_goes_with_the_next_devns_command() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut c = shell_container(&env, &["--name", "killed"]);
    let (rec, ids) = cgroup_and_ids(&env, "killed");
    // Its watcher killed first (as a kill of its whole process group or
    // cgroup may), then the keeper, with SIGKILL: no cleanup of its own;
    // its container dies with it.
    let watcher = watcher_of(c.pid()).expect("the run's watcher");
    rustix::process::pidfd_send_signal(&watcher, rustix::process::Signal::KILL).unwrap();
    eventually("the watcher is gone", || exited(&watcher));
    let _ = c.child.kill();
    let _ = c.child.wait();
    eventually("the container is gone", || cgroup_pids(Path::new(&rec.path)).is_empty());
    assert!(Path::new(&rec.path).exists(), "nobody removed it yet");
    devns_ok(&env, &["ls"]);
    assert!(!Path::new(&rec.path).exists(), "the next devns command removed it");
    gone_from_the_kernel(ids);
    assert_eq!(env.recorded_namespaces(), 0);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_container_can_neither_change_nor_leave_its_policy() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    // devns runs in a cgroup below the root, so the container's cgroup has
    // a parent that is not the root: both are tried.
    let outer = TestCgroup::new("attack");
    let mut cmd = outer.command(env!("CARGO_BIN_EXE_devns"));
    env.devns_env(&mut cmd);
    let script = "echo ready; while read -r cmd; do eval \"$cmd\"; echo end; done";
    let mut c = Container::spawn(cmd.args(["run", "--name", "c", "--", "sh", "-c", script]));
    assert_eq!(c.line(), "ready");
    let rec = record_of(&env, "c").cgroup.unwrap();
    let mine = Path::new(&rec.path);
    assert_eq!(mine.parent(), Some(outer.path.as_path()), "the container's cgroup is a child of devns's");
    let shared = SharedDir::new("attack");
    let mem = shared.node("mem", 'c', 1, 1);
    let root = cgroup_root();

    // It cannot move itself out: not to the parent, not to the root.
    for to in [outer.path.as_path(), root.as_path()] {
        let out = c.sh(&format!("echo $$ > {}/cgroup.procs 2>&1 && echo moved", to.display()));
        assert!(!out.iter().any(|l| l == "moved"), "moved into {}: {out:?}", to.display());
    }
    // Nor make a cgroup of its own, nor turn the controller off.
    let out = c.sh(&format!("mkdir {}/escape 2>&1 && echo made", mine.display()));
    assert!(!out.iter().any(|l| l == "made"), "{out:?}");
    assert!(cgroup_pids(mine).len() >= 2, "still in its cgroup");
    // bpf(2) is the host's: a user namespace gets EPERM for every command.
    let (prog, map) = policy_of(&env, "c").ids();
    let me = shared.testbin();
    let out = c.sh(&format!(
        "DEVNS_BPF_CHILD={prog}:{map}:{} {} bpf 2>/dev/null | grep -o 'bpf [^ ]*'",
        mine.display(),
        me.display()
    ));
    assert_eq!(out.len(), 5, "{out:?}");
    for l in &out {
        assert!(l.ends_with("=EPERM"), "{l}");
    }
    assert!(refused(&c.open(mem.path())));

    // A cgroup below its own (made by the host here, as a delegated
    // container could make one) is still under the policy: the programs
    // of its ancestors run for it.
    let sub = mine.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let shell = *cgroup_pids(mine).iter().find(|p| **p != c.init()).expect("the shell");
    std::fs::write(sub.join("cgroup.procs"), shell.to_string()).unwrap();
    assert!(refused(&c.open(mem.path())), "below its cgroup: still refused");
    assert_eq!(c.open("/dev/null"), "opened");
    c.send("exit\n");
    let (code, err) = c.wait();
    assert_eq!(code, 0, "{err}");
    assert!(!mine.exists(), "its cgroup is removed, the one below it too");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_runtime_s_own_program_still_decides_and_is_never_detached() {
    if !privileged() {
        return;
    }
    use devns_core::bpf::Insn;
    let env = Env::new();
    let _d = Daemon::start(&env);
    let cg = TestCgroup::new("runtime");
    // The runtime's own program, attached first: every device but 1:5.
    let i = |code, dst, src, off, imm| Insn { code, dst, src, off, imm };
    let deny_zero = [
        i(0x61, 2, 1, 4, 0), // r2 = ctx->major
        i(0x55, 2, 0, 4, 1), // if r2 != 1 goto allow
        i(0x61, 2, 1, 8, 0), // r2 = ctx->minor
        i(0x55, 2, 0, 2, 5), // if r2 != 5 goto allow
        i(0xb7, 0, 0, 0, 0), // r0 = 0
        i(0x95, 0, 0, 0, 0), // exit
        i(0xb7, 0, 0, 0, 1), // allow: r0 = 1
        i(0x95, 0, 0, 0, 0), // exit
    ];
    let theirs = devns_sys::bpf::prog_load(15, &devns_core::bpf::to_bytes(&deny_zero), "GPL", "runtime").unwrap();
    let theirs_id = devns_sys::bpf::prog_info(&theirs).unwrap().id;
    let cgfd = devns::cgroup::open(&cg.path).unwrap();
    devns_sys::bpf::prog_attach(&theirs, &cgfd, devns_sys::bpf::BPF_CGROUP_DEVICE, devns_sys::bpf::BPF_F_ALLOW_MULTI)
        .unwrap();
    let mark = marker("runtime");
    let script = "echo ready; while read -r cmd; do eval \"$cmd\"; echo end; done";
    let mut p = Container::spawn(cg.command("unshare").args(userns_sh(script, &mark)));
    assert_eq!(p.line(), "ready");
    let pid = p.pid();
    devns_ok(&env, &["attach", "--pid", &pid.to_string(), "--name", "ext"]);
    let attached = devns_sys::bpf::prog_query(&cgfd, devns_sys::bpf::BPF_CGROUP_DEVICE).unwrap();
    assert_eq!(attached.len(), 2, "the runtime's and devns's: {attached:?}");
    assert!(attached.contains(&theirs_id));
    // Both must allow: null (both do), zero (devns does, the runtime not),
    // a loop device (the runtime does, devns not).
    let (_l, _shared, disk) = loop_with_node(&env, "runtime");
    assert_eq!(p.open("/dev/null"), "opened");
    assert!(refused(&p.open("/dev/zero")), "the runtime's program still decides");
    assert!(refused(&p.open(disk.path())), "devns's program decides");
    assert_eq!(p.sh("head -c 3 /dev/urandom | wc -c"), ["3"]);
    // Its death: devns detaches exactly its own program.
    p.send("exit\n");
    let _ = p.wait();
    eventually("devns detached its program", || {
        devns_sys::bpf::prog_query(&cgfd, devns_sys::bpf::BPF_CGROUP_DEVICE).unwrap() == [theirs_id]
    });
    devns_sys::bpf::prog_detach(&theirs, &cgfd, devns_sys::bpf::BPF_CGROUP_DEVICE).unwrap();
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn attach_refuses_a_cgroup_that_holds_devns_or_a_host_process() {
    if !privileged() {
        return;
    }
    // The processes attach is asked about have mount namespaces of their
    // own: should it wrongly succeed, the view it mounts at their /dev
    // covers no /dev of the host's.
    let env = Env::new();
    let _d = Daemon::start(&env);
    let mark = marker("hostcg");
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--mount", "sh", "-c", "while :; do sleep 0.2; done", &mark]);
    let mut p = in_its_user_namespace(cmd);
    let pid = p.id();
    let out = env.devns().args(["attach", "--pid", &pid.to_string()]).output().unwrap();
    let _ = p.kill();
    let _ = p.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("which holds devns itself"), "{err}");
    assert_eq!(devns_ok(&env, &["ns", "ls", "--json"]).trim(), "[]", "nothing recorded");

    // A cgroup of its own that also holds a host process: refused too.
    let cg = TestCgroup::new("mixed");
    let err = attach_beside_a_host_process(&env, &cg, &cg, &mark);
    assert!(err.contains("of the host's user namespace"), "{err}");
}

/// `devns attach` of a user-namespaced process in `cg` (in a mount
/// namespace of its own: should attach wrongly succeed, the view it mounts
/// at its /dev covers no /dev of the host's) while a host process runs in
/// `host_in` (`cg` or a cgroup below it): refused, nothing recorded, no
/// program attached. Returns the error.
fn attach_beside_a_host_process(env: &Env, cg: &TestCgroup, host_in: &TestCgroup, mark: &str) -> String {
    let mut host = host_in.command("sh").args(["-c", "sleep 1000", mark]).spawn().unwrap();
    let mut cmd = cg.command("unshare");
    cmd.args(["--user", "--map-root-user", "--mount", "sh", "-c", "sleep 1000", mark]);
    let mut p = in_its_user_namespace(cmd);
    let pid = p.id();
    eventually("the host process is in its cgroup", || !cgroup_pids(&host_in.path).is_empty());
    let out = env.devns().args(["attach", "--pid", &pid.to_string()]).output().unwrap();
    for c in [&mut host, &mut p] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "attach succeeded: {err}");
    assert_eq!(devns_ok(env, &["ns", "ls", "--json"]).trim(), "[]", "nothing recorded");
    assert_eq!(devns_sys::bpf::prog_query(devns::cgroup::open(&cg.path).unwrap(), 6).unwrap(), Vec::<u32>::new());
    err
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn attach_refuses_a_cgroup_with_a_host_process_in_a_cgroup_below_it() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let cg = TestCgroup::new("below");
    // Dropped before `cg` (declared after it), as a cgroup goes before its
    // parent.
    let sub = TestCgroup { path: cg.path.join("host") };
    std::fs::create_dir(&sub.path).unwrap();
    let err = attach_beside_a_host_process(&env, &cg, &sub, &marker("hostbelow"));
    assert!(err.contains(&format!("(in {} below it) of the host's user namespace", sub.path.display())), "{err}");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn loop_devices_from_loop_control_open_for_their_owner_only() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let shared = SharedDir::new("loopctl");
    let img = shared.0.join("disk.img");
    std::fs::File::create(&img).and_then(|f| f.set_len(4 << 20)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut a = shell_container(&env, &["--name", "a"]);
    let mut b = shell_container(&env, &["--name", "b"]);
    let dev = a.sh(&format!("losetup -f --show {}", img.display()));
    let name = dev[0].trim_start_matches("/dev/").to_owned();
    assert!(name.starts_with("loop"), "{dev:?}");
    let _guard = DetachOnDrop(name.clone());
    let this = block_ino(&name);
    assert_eq!(a.open(&dev[0]), "opened", "its own loop device opens");
    let (major, minor) = block_numbers(&name);
    let node = shared.node("theirs", 'b', major, minor);
    assert_eq!(a.open(node.path()), "opened");
    assert!(refused(&b.open(node.path())), "another container's loop device does not");
    a.sh(&format!("losetup -d {}", dev[0]));
    drop((a, b));
    eventually("A's loop device removed with A", || block_ino(&name) != this);
}

/// Detaches and removes a loop device a container took, should the test
/// fail before its namespace's death does it.
struct DetachOnDrop(String);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        if Path::new("/sys/class/block").join(&self.0).exists() {
            let _ = Command::new("losetup").args(["-d", &format!("/dev/{}", self.0)]).stderr(Stdio::null()).status();
            if let Some(n) = self.0.strip_prefix("loop").and_then(|n| n.parse::<u64>().ok()) {
                loop_ctl(LOOP_CTL_REMOVE, n);
            }
        }
    }
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_new_partition_of_an_owned_disk_opens() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let lp = Loop::new(true);
    let mut a = shell_container(&env, &["--name", "a"]);
    let mut b = shell_container(&env, &["--name", "b"]);
    devns_ok(&env, &["assign", &lp.name, "--to", "a"]);
    let disk = format!("/dev/{}", lp.name);
    assert!(Command::new("partx").args(["-d", &disk]).status().unwrap().success());
    eventually("the partition is gone", || !view_names(&env, "a").contains(&lp.partition()));
    assert!(Command::new("partx").args(["-a", &disk]).status().unwrap().success());
    eventually("the new partition is in a's view", || view_names(&env, "a").contains(&lp.partition()));
    assert_eq!(a.open(&format!("/dev/{}", lp.partition())), "opened");
    let (major, minor) = block_numbers(&lp.partition());
    let shared = SharedDir::new("part");
    let node = shared.node("p1", 'b', major, minor);
    assert_eq!(a.open(node.path()), "opened");
    assert!(refused(&b.open(node.path())));
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_daemon_killed_and_restarted_keeps_enforcing_and_updates_the_same_map() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut d = Daemon::start(&env);
    let mut a = shell_container(&env, &["--name", "a"]);
    let (l, shared, node) = loop_with_node(&env, "restart");
    devns_ok(&env, &["assign", &l.name(), "--to", "a"]);
    let ids = policy_of(&env, "a").ids();
    assert_eq!(a.open(node.path()), "opened");

    d.kill9();
    // Without a daemon the kernel still enforces the map as it was.
    assert_eq!(a.open(node.path()), "opened");
    let mem = shared.node("mem", 'c', 1, 1);
    assert!(refused(&a.open(mem.path())));
    let _d = Daemon::start(&env);
    devns_ok(&env, &["release", &l.name()]);
    assert!(refused(&a.open(node.path())), "the restarted daemon updates the map");
    assert_eq!(policy_of(&env, "a").ids(), ids, "the same program and map");
    devns_ok(&env, &["assign", &l.name(), "--to", "a"]);
    assert_eq!(a.open(node.path()), "opened");
    let (major, minor) = block_numbers(&l.name());
    assert_eq!(policy_of(&env, "a").read().unwrap(), expected_map(&[(1, major, minor)]));
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_daemon_restarted_with_the_layer_off_detaches_its_programs_and_still_removes_its_cgroups() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut d = Daemon::start(&env);
    let mut a = shell_container(&env, &["--name", "a"]);
    let (_l, _shared, node) = loop_with_node(&env, "off");
    assert!(refused(&a.open(node.path())));
    let rec = record_of(&env, "a").cgroup.unwrap();
    let cg = devns::cgroup::open(Path::new(&rec.path)).unwrap();
    d.kill9();
    std::fs::write(env.config(), "device_policy = false\n").unwrap();
    let _d = Daemon::start(&env);
    // A map nobody would update any more decides nothing.
    assert_eq!(devns_sys::bpf::prog_query(&cg, devns_sys::bpf::BPF_CGROUP_DEVICE).unwrap(), Vec::<u32>::new());
    assert_eq!(a.open(node.path()), "opened");
    a.send("exit\n");
    let _ = a.wait();
    eventually("its cgroup is removed at its death", || !Path::new(&rec.path).exists());
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_program_the_verifier_refuses_says_why() {
    if !privileged() {
        return;
    }
    use devns_core::bpf::Insn;
    // Reads past the end of `struct bpf_cgroup_dev_ctx` (12 bytes).
    let bad =
        [Insn { code: 0x61, dst: 0, src: 1, off: 12, imm: 0 }, Insn { code: 0x95, dst: 0, src: 0, off: 0, imm: 0 }];
    let e = devns_sys::bpf::prog_load(15, &devns_core::bpf::to_bytes(&bad), "GPL", "bad").unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, devns_sys::bpf::BpfError::Verifier { .. }), "{text}");
    assert!(text.contains("invalid bpf_context access"), "the verifier's own words: {text}");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn attach_refuses_a_process_that_shares_devns_s_own_mount_namespace() {
    if !privileged() {
        return;
    }
    // The whole test in a mount namespace of its own (this thread's, and so
    // its children's, the daemon's too): should attach wrongly succeed, the
    // view covers that namespace's `/dev`, never the host's.
    // SAFETY: unshare(CLONE_NEWNS) changes only the calling thread's mount
    // namespace and filesystem context; no memory is involved.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNS) }, 0, "unshare the test's mount namespace");
    let private = Command::new("mount").args(["--make-rprivate", "/"]).status().unwrap();
    assert!(private.success(), "mount --make-rprivate /");
    let dev_before = std::fs::metadata("/dev").map(|m| std::os::unix::fs::MetadataExt::dev(&m)).unwrap();
    let env = Env::new();
    let _d = Daemon::start(&env);
    let cg = TestCgroup::new("samemnt");
    let mark = marker("samemnt");
    // A user namespace of its own, but no mount namespace: devns's.
    let mut cmd = cg.command("unshare");
    cmd.args(["--user", "--map-root-user", "sh", "-c", "sleep 1000", &mark]);
    let mut p = in_its_user_namespace(cmd);
    let pid = p.id();
    let out = env.devns().args(["attach", "--pid", &pid.to_string()]).output().unwrap();
    let _ = p.kill();
    let _ = p.wait();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "attach succeeded: {err}");
    assert!(err.contains("shares devns's own mount namespace"), "{err}");
    let dev_after = std::fs::metadata("/dev").map(|m| std::os::unix::fs::MetadataExt::dev(&m)).unwrap();
    assert_eq!(dev_before, dev_after, "nothing mounted over /dev");
    assert_eq!(devns_ok(&env, &["ns", "ls", "--json"]).trim(), "[]", "nothing recorded");
    assert_eq!(devns_sys::bpf::prog_query(devns::cgroup::open(&cg.path).unwrap(), 6).unwrap(), Vec::<u32>::new());
}

/// `cmd` (an `unshare --user ...`) spawned, once it is in a user namespace
/// of its own.
fn in_its_user_namespace(mut cmd: Command) -> std::process::Child {
    let p = cmd.spawn().unwrap();
    let pid = p.id();
    eventually("the process is in its user namespace", || {
        std::fs::read_link(format!("/proc/{pid}/ns/user")).ok() != std::fs::read_link("/proc/self/ns/user").ok()
    });
    p
}
