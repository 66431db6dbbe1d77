//! devns as an OCI hook (`devns hook createRuntime|poststop`) under the
//! real runtimes: runc with the hooks in its config, podman with
//! `--hooks-dir`; user-namespaced containers on the tools rootfs.

mod common;

use common::oci::{Bundle, Podman, Runc, crun_wrapper};
use common::{Daemon, Env, Loop, Node, block_numbers, devns_ok, eventually, privileged, sorted};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// What devns's hook wrote on stderr, as runc reports a failed hook
/// (`stderr: TEXT\n"`, Go-quoted): its text up to its first newline, and
/// whether that newline was its only one.
fn hook_stderr(runc_output: &str) -> (&str, bool) {
    let at = runc_output.find("stderr: devns").unwrap_or_else(|| panic!("no hook error: {runc_output}"));
    let rest = &runc_output[at + "stderr: ".len()..];
    let end = rest.find("\"\n").unwrap_or(rest.len());
    let text = &rest[..end];
    (text.strip_suffix("\\n").unwrap_or(text), text.matches("\\n").count() == 1 && text.ends_with("\\n"))
}

fn ns_rows(env: &Env) -> Vec<Value> {
    serde_json::from_str(&devns_ok(env, &["--json", "ns", "ls"])).expect("ns ls json")
}

/// Once the daemon let go of every namespace: no device owned, nothing of
/// devns's mounted on the host (besides what `before` had), no record.
fn nothing_left(env: &Env, before: &[String]) {
    eventually("the namespace is let go", || ns_names(env).is_empty());
    assert!(env.owned().is_empty(), "{:?}", env.owned());
    assert_eq!(env.host_mounts(), before);
    assert_eq!(env.recorded_namespaces(), 0);
}

fn ns_names(env: &Env) -> Vec<String> {
    ns_rows(env).iter().filter_map(|r| r["name"].as_str().map(str::to_owned)).collect()
}

/// The device programs attached to the container's cgroup2 cgroup.
fn programs_of(cgroup: &Path) -> Vec<u32> {
    let Ok(fd) =
        rustix::fs::open(cgroup, rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty())
    else {
        return vec![];
    };
    devns_sys::bpf::prog_query(&fd, devns_sys::bpf::BPF_CGROUP_DEVICE).unwrap_or_default()
}

/// `devns hook [STAGE]` of `env`'s world with `state` on stdin.
fn hook(env: &Env, stage: Option<&str>, state: &[u8]) -> Output {
    let mut c = env.devns();
    c.arg("hook").args(stage).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("devns hook");
    // A hook that stops reading (input too large) closes the pipe early.
    let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), state);
    child.wait_with_output().expect("devns hook")
}

fn state(id: &str, status: &str, pid: Option<i32>, bundle: &Path, annotations: Value) -> Vec<u8> {
    let mut s = json!({ "ociVersion": "1.0.2-dev", "id": id, "status": status, "bundle": bundle,
        "annotations": annotations });
    if let Some(p) = pid {
        s["pid"] = json!(p);
    }
    serde_json::to_vec(&s).unwrap()
}

/// A bundle with devns's hooks and the annotation.
fn devns_bundle(env: &Env, tag: &str) -> Bundle {
    let b = Bundle::new(tag);
    b.hooks(env);
    b.enable_devns();
    b
}

#[test]
fn a_runc_container_s_dev_is_its_view_with_the_runtime_s_mounts_on_it() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let runc = Runc::new(&env);
    let b = devns_bundle(&env, "hookview");
    let mounts_before = env.host_mounts();
    b.script(
        "ls -A /dev; echo ==; echo hi > /dev/shm/x && cat /dev/shm/x; echo ==; \
         awk '$5 ~ /^\\/dev/ { for (i = 7; $i != \"-\"; i++); print $5, $(i + 1), $1, $2 }' /proc/self/mountinfo",
    );
    let out = runc.run(&b);
    let s = text(&out);
    assert!(out.status.success(), "runc run: {s}");
    let parts: Vec<&str> = s.split("==\n").collect();
    let names: Vec<String> = parts[0].lines().map(str::to_owned).collect();
    // The runtime's devpts, shm and mqueue are carried onto the view's own
    // mountpoints for them.
    assert_eq!(sorted(names), common::default_view(), "{s}");
    assert_eq!(parts[1].trim(), "hi", "/dev/shm works: {s}");
    // The last mount at /dev is the view (a tmpfs of devns's), and the
    // runtime's devpts, shm and mqueue are on it.
    let rows: Vec<Vec<&str>> = parts[2].lines().map(|l| l.split(' ').collect()).collect();
    let view = rows.iter().rfind(|r| r[0] == "/dev").unwrap_or_else(|| panic!("{s}"));
    assert_eq!(view[1], "tmpfs", "{s}");
    for (at, fstype) in [("/dev/pts", "devpts"), ("/dev/shm", "tmpfs"), ("/dev/mqueue", "mqueue")] {
        let r = rows.iter().find(|r| r[0] == at).unwrap_or_else(|| panic!("no {at}: {s}"));
        assert_eq!((r[1], r[3]), (fstype, view[2]), "{at} on the view: {s}");
    }
    // runc run deletes the container: the namespace is let go, its view
    // unmounted; nothing of it stays on the host.
    nothing_left(&env, &mounts_before);
}

#[test]
fn assign_reaches_a_running_runc_container_and_delete_frees_everything() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let runc = Runc::new(&env);
    let l = Loop::new(false);
    let b = devns_bundle(&env, "hookassign");
    b.script("sleep 1000");
    let mounts_before = env.host_mounts();
    runc.start(&b);
    assert_eq!(ns_names(&env), std::slice::from_ref(&b.id));
    let rec = common::record_of(&env, &b.id);
    assert_eq!(rec.container.as_deref(), Some(b.id.as_str()));
    let cg = rec.cgroup.expect("a device policy");
    let cgroup = PathBuf::from(&cg.path);
    assert!(!cg.created, "the container's own cgroup");
    assert_eq!(programs_of(&cgroup), [cg.prog_id.unwrap()], "devns's program alone decides");
    // The node appears, and opens: runc's whitelist, which never named
    // it, defers to devns's map.
    let dev = format!("/dev/{}", l.name);
    let out = runc.exec(&b.id, &format!("test -e {dev} && echo there || echo absent"));
    assert_eq!(text(&out).trim(), "absent");
    devns_ok(&env, &["assign", &l.name, "--to", &b.id]);
    let out = runc.exec(&b.id, &format!("ls {dev} && head -c 512 {dev} | wc -c"));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).lines().collect::<Vec<_>>(), [dev.as_str(), "512"]);
    // Stopped: devices back, view gone, program detached.
    let _ = runc.cmd().args(["kill", &b.id, "KILL"]).output();
    eventually("the namespace is let go", || ns_names(&env).is_empty());
    assert!(env.owned().is_empty(), "{:?}", env.owned());
    assert!(!programs_of(&cgroup).contains(&cg.prog_id.unwrap()));
    runc.delete(&b.id);
    nothing_left(&env, &mounts_before);
}

/// With `udev_events = true`, a runtime's container gets
/// `/run/udev/control` (made as its root, so libudev listens on the "udev"
/// group) and a device assigned to it reaches `udevadm monitor --udev`.
#[test]
fn with_udev_events_a_runc_container_s_libudev_sees_a_device_assigned_to_it() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    std::fs::write(env.config(), "udev_events = true\n").unwrap();
    let _d = Daemon::start(&env);
    let runc = Runc::new(&env);
    let l = Loop::new(false);
    let b = devns_bundle(&env, "hookudev");
    b.script("sleep 1000");
    runc.start(&b);
    let out = runc.exec(&b.id, "stat -c '%u %s' /run/udev/control");
    assert_eq!(text(&out).trim(), "0 0", "made by devns, as the container's root: {}", text(&out));
    let out =
        runc.exec(&b.id, "(udevadm monitor --udev --subsystem-match=block </dev/null >/tmp/ev 2>&1 &); sleep 0.5");
    assert!(out.status.success(), "{}", text(&out));
    devns_ok(&env, &["assign", &l.name, "--to", &b.id]);
    let want = format!("/{} (block)", l.name);
    eventually("udevadm monitor --udev sees the device come", || {
        let out = runc.exec(&b.id, "cat /tmp/ev");
        text(&out).lines().any(|l| l.starts_with("UDEV") && l.contains(" add ") && l.ends_with(&want))
    });
    let _ = runc.cmd().args(["kill", &b.id, "KILL"]).output();
    eventually("the namespace is let go", || ns_names(&env).is_empty());
    runc.delete(&b.id);
}

#[test]
fn devices_from_the_annotation_are_the_container_s_while_it_runs() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let runc = Runc::new(&env);
    let (l, m) = (Loop::new(true), Loop::new(false));
    let b = devns_bundle(&env, "hookdevs");
    b.annotate("devns.io/devices", &format!("{}, /dev/{}", l.name, m.name));
    b.annotate("devns.io/name", "hookdevs");
    b.script(&format!("ls /dev/{1} && head -c 512 /dev/{0}p1 | wc -c", l.name, m.name));
    let out = runc.run(&b);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out), format!("/dev/{}\n512\n", m.name));
    eventually("the namespace is let go", || ns_names(&env).is_empty());
    assert!(env.owned().is_empty());
}

#[test]
fn a_container_s_own_device_rules_never_widen_beyond_devns_s_map() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let runc = Runc::new(&env);
    let l = Loop::new(false);
    let (major, minor) = block_numbers(&l.name);
    for annotated in [false, true] {
        let b = Bundle::new("hookrules");
        b.hooks(&env);
        if annotated {
            b.enable_devns();
        }
        // The container's config allows every device, and a node of a host
        // device (not the container's) lies in its rootfs.
        b.edit(|c| c["linux"]["resources"] = json!({ "devices": [{ "allow": true, "access": "rwm" }] }));
        let _node = Node::new(b.rootfs().join("hostloop"), 'b', major, minor);
        b.script(
            "head -c0 /hostloop && echo opened; echo a > /sys/fs/cgroup/devices/devices.allow && echo widened; \
             stat -f -c %T /dev; ls /dev/loop-control",
        );
        let out = runc.run(&b);
        let s = text(&out);
        if annotated {
            // devns's map decides: the host's device stays closed.
            assert!(s.contains("Operation not permitted") && !s.contains("opened"), "{s}");
            assert!(s.contains("/dev/loop-control"), "the view: {s}");
        } else {
            // Untouched: the runtime's own rules, which allow it (so the
            // refusal above is devns's), and the runtime's own /dev.
            assert!(s.contains("opened") && !s.contains("/dev/loop-control\n"), "{s}");
        }
        assert!(!s.contains("widened"), "{s}");
    }
    eventually("the namespace is let go", || ns_names(&env).is_empty());
}

#[test]
fn a_container_that_did_not_ask_is_never_touched() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let runc = Runc::new(&env);
    let mut events = env.devns().arg("events").stdout(Stdio::piped()).spawn().expect("devns events");
    for enable in [None, Some("false"), Some("TRUE"), Some("yes")] {
        let b = Bundle::new("hookuntouched");
        b.hooks(&env);
        if let Some(v) = enable {
            b.annotate("devns.io/enable", v);
        }
        // Also what devns would refuse, were it asked.
        b.annotate("devns.io/devices", ",,");
        b.script("ls -A /dev; cat /sys/fs/cgroup/devices/devices.list");
        let out = runc.run(&b);
        let s = text(&out);
        assert!(out.status.success(), "{enable:?}: {s}");
        assert!(
            !s.contains("loop-control") && !s.contains("a *:* rwm"),
            "{enable:?}: the runtime's /dev and rules: {s}"
        );
    }
    assert!(ns_names(&env).is_empty());
    assert_eq!(env.recorded_namespaces(), 0);
    let _ = events.kill();
    let out = events.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!lines.contains("ns-new"), "{lines}");
}

#[test]
fn without_a_daemon_the_start_fails_with_one_line_naming_devns_and_the_socket() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let runc = Runc::new(&env);
    let b = devns_bundle(&env, "hooknodaemon");
    b.script("echo started");
    let out = runc.run(&b);
    let s = text(&out);
    assert!(!out.status.success() && !s.contains("started"), "{s}");
    let want = format!("devns: no devns daemon at {} (start one with `devns daemon`)", env.socket().display());
    assert_eq!(hook_stderr(&s), (want.as_str(), true), "{s}");
    assert!(runc.pid(&b.id).is_none());
    // The same of the hook by hand.
    let out = hook(&env, None, &state("c", "creating", Some(1), &b.dir, json!({ "devns.io/enable": "true" })));
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1, "{}", text(&out));
}

#[test]
fn a_bad_annotation_fails_the_start_and_changes_nothing() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let runc = Runc::new(&env);
    let mounts_before = env.host_mounts();
    for (key, value, why) in [
        ("devns.io/devices", "loop0,,loop1", "an empty device"),
        ("devns.io/devices", "nosuchdevice", "nosuchdevice"),
        ("devns.io/name", "id:5", "is not a devns namespace name"),
    ] {
        let b = devns_bundle(&env, "hookbad");
        b.annotate(key, value);
        b.script("echo started");
        let out = runc.run(&b);
        let s = text(&out);
        assert!(!out.status.success() && !s.contains("started"), "{value}: {s}");
        let (line, one) = hook_stderr(&s);
        assert!(line.starts_with("devns: ") && line.contains(why) && one, "{value}: {s}");
        assert!(ns_names(&env).is_empty() && env.owned().is_empty(), "{value}");
    }
    nothing_left(&env, &mounts_before);
}

#[test]
fn a_bad_state_or_bundle_gets_one_line_and_changes_nothing() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let dir = env.dir.path().join("bundle");
    std::fs::create_dir(&dir).unwrap();
    let on = json!({ "devns.io/enable": "true" });
    let me = std::process::id() as i32;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{nope".to_vec(), "bad OCI state on stdin"),
        (vec![b' '; 600 * 1024], "larger than"),
        (state("c", "creating", Some(0), &dir, on.clone()), "bad pid 0"),
        (state("c", "creating", None, &dir, on.clone()), "names no pid"),
        (state("c", "running", Some(me), &dir, on.clone()), "no stage devns serves"),
        // No config.json in the bundle, then a bad one.
        (state("c", "creating", Some(me), &dir, on.clone()), "config.json"),
    ];
    for (input, want) in &cases {
        let out = hook(&env, None, input);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(125), "{want}: {}", text(&out));
        assert!(err.starts_with("devns: ") && err.contains(want) && err.lines().count() == 1, "{want}: {err}");
    }
    std::fs::write(dir.join("config.json"), r#"{"root":{"path":""}}"#).unwrap();
    let out = hook(&env, Some("createRuntime"), &state("c", "creating", Some(me), &dir, on.clone()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad root.path"), "{}", text(&out));
    // The test's own process is the host's: refused by the daemon.
    std::fs::write(dir.join("config.json"), r#"{"root":{"path":"rootfs"}}"#).unwrap();
    let out = hook(&env, Some("createRuntime"), &state("c", "creating", Some(me), &dir, on));
    assert!(String::from_utf8_lossy(&out.stderr).contains("host's user namespace"), "{}", text(&out));
    assert!(ns_names(&env).is_empty());
    assert_eq!(env.recorded_namespaces(), 0);
}

#[test]
fn poststop_is_idempotent_and_lets_go_only_of_its_own_container_s_namespace() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let runc = Runc::new(&env);
    let b = devns_bundle(&env, "hookpost");
    b.script("sleep 1000");
    runc.start(&b);
    let on = json!({ "devns.io/enable": "true" });
    let stopped = state(&b.id, "stopped", None, &b.dir, on.clone());
    // While it runs: refused, and kept.
    let out = hook(&env, Some("poststop"), &stopped);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("still has processes"), "{}", text(&out));
    assert_eq!(ns_names(&env), std::slice::from_ref(&b.id));
    // Another container's poststop that names this namespace: left alone.
    let other = state("other", "stopped", None, &b.dir, json!({ "devns.io/enable": "true", "devns.io/name": b.id }));
    let out = hook(&env, None, &other);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(ns_names(&env), std::slice::from_ref(&b.id));
    // A namespace devns attached for no container, of the same name: left
    // alone too.
    runc.delete(&b.id);
    eventually("the namespace is let go", || ns_names(&env).is_empty());
    let cg = common::TestCgroup::new("hookpost");
    let mut sleeper = cg
        .command("unshare")
        .args(common::userns_sh("exec sleep 1000", "x"))
        .stdin(Stdio::null())
        .spawn()
        .expect("unshare");
    let pid = sleeper.id().to_string();
    eventually("the sleeper is in its namespace", || {
        std::fs::read_link(format!("/proc/{pid}/ns/user")).ok() != std::fs::read_link("/proc/self/ns/user").ok()
    });
    devns_ok(&env, &["attach", "--pid", &pid, "--name", &b.id, "--at", "/tmp"]);
    for _ in 0..2 {
        let out = hook(&env, None, &stopped);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(ns_names(&env), std::slice::from_ref(&b.id));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    eventually("the sleeper's namespace is let go", || ns_names(&env).is_empty());
    // After its container: nothing to do, twice.
    for _ in 0..2 {
        let out = hook(&env, Some("poststop"), &stopped);
        assert!(out.status.success() && out.stderr.is_empty(), "{}", text(&out));
    }
}

/// `dev -> /etc` in an image: the view goes where the container's `/dev`
/// leads inside its rootfs (`root` resolved in the process's root, `at`
/// inside that, both with `RESOLVE_IN_ROOT`), never to the host's `/etc`.
/// (runc itself refuses such an image before its hooks run, so the
/// attach is asked for as a hook asks, of a process in a mount namespace
/// of its own.)
#[test]
fn a_dev_symlink_in_the_image_keeps_the_view_inside_the_rootfs() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let rootfs = env.dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::os::unix::fs::symlink("/etc", rootfs.join("dev")).unwrap();
    let mounts_before = env.host_mounts();
    let cg = common::TestCgroup::new("hooksymlink");
    let mut sleeper =
        cg.command("unshare").args(common::userns_sh("exec sleep 1000", "x")).stdin(Stdio::null()).spawn().unwrap();
    let pid = sleeper.id() as i32;
    eventually("the sleeper is in its namespace", || {
        std::fs::read_link(format!("/proc/{pid}/ns/user")).ok() != std::fs::read_link("/proc/self/ns/user").ok()
    });
    let r = common::Api::connect(&env).call(json!({ "op": "attach", "pid": pid, "name": "symlinked",
        "root": rootfs, "at": "/dev", "runtime": true, "container": "c1" }));
    assert_eq!(r["ok"], true, "{r}");
    let in_ns = |path: &Path| {
        let out = Command::new("nsenter").args(["-t", &pid.to_string(), "-m", "ls", "-A"]).arg(path).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(in_ns(&rootfs.join("etc")).contains("loop-control"), "the view at the rootfs's /etc");
    assert!(!in_ns(Path::new("/etc")).contains("loop-control"), "not at the host's /etc");
    // The host's own mounts: only the daemon's mount of the view is new.
    let views = env.state_dir().join("views");
    let new: Vec<String> = env.host_mounts().into_iter().filter(|m| !mounts_before.contains(m)).collect();
    assert!(new.iter().all(|m| m.split(' ').nth(1).is_some_and(|p| Path::new(p).starts_with(&views))), "{new:?}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    eventually("the namespace is let go", || ns_names(&env).is_empty());
}

/// The shipped hooks.d file, pointed at this test's binary and daemon, in
/// a hooks directory of the test's own.
fn hooks_dir(env: &Env) -> PathBuf {
    let shipped: Value =
        serde_json::from_str(include_str!("../../../dist/oci-hooks.d/devns.json")).expect("dist hooks.d json");
    let mut hook = shipped.clone();
    hook["hook"]["path"] = json!(env!("CARGO_BIN_EXE_devns"));
    hook["hook"]["env"] = json!([
        format!("DEVNS_SOCKET={}", env.socket().display()),
        format!("DEVNS_STATE_DIR={}", env.state_dir().display()),
        format!("DEVNS_CONFIG={}", env.config().display()),
    ]);
    let dir = env.dir.path().join("hooks.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("devns.json"), serde_json::to_vec(&hook).unwrap()).unwrap();
    dir
}

#[test]
fn podman_with_the_hooks_dir_and_the_annotation() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let podman = Podman::new(&env);
    let b = Bundle::new("hookpodman");
    let hooks_dir = hooks_dir(&env);
    let mounts_before = env.host_mounts();
    for (name, annotate) in [(format!("{}-on", b.id), true), (format!("{}-off", b.id), false)] {
        let mut cmd = podman.run_args(&name, b.base);
        cmd.args(["--runtime", "runc", "--hooks-dir"]).arg(&hooks_dir);
        if annotate {
            cmd.args(["--annotation", "devns.io/enable=true"]);
        }
        let out = cmd
            .arg("--rootfs")
            .arg(b.rootfs())
            .args(["/bin/sh", "-c", "ls -A /dev; echo hi > /dev/shm/x && cat /dev/shm/x"])
            .output()
            .unwrap();
        let s = text(&out);
        assert!(out.status.success(), "podman run: {s}");
        assert_eq!(s.contains("loop-control"), annotate, "{s}");
        assert!(s.ends_with("hi\n"), "{s}");
        let out = podman.rm(&name);
        assert!(out.status.success(), "podman rm: {}", text(&out));
    }
    nothing_left(&env, &mounts_before);
}

/// A runtime's own device program on the container's cgroup2 cgroup (as
/// crun attaches one, made from the config's rules alone; crun itself
/// cannot load one on this host, whose memlock limit it cannot raise, and
/// podman gives a user-namespaced container no device rules): stood in for
/// by an earlier createRuntime hook. devns's program takes its place, so
/// the container's own devices open; and one that allows every block
/// device opens nothing devns's map does not.
#[test]
fn devns_s_program_stands_in_for_the_runtime_s_own() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let runc = Runc::new(&env);
    let (mine, theirs) = (Loop::new(false), Loop::new(false));
    let (major, minor) = block_numbers(&theirs.name);
    for allow in ["c:1:3", "c:1:3,b:7:4294967295"] {
        let b = devns_bundle(&env, "hookruntimeprog");
        let _node = Node::new(b.rootfs().join("hostloop"), 'b', major, minor);
        b.annotate("devns.io/devices", &mine.name);
        b.edit(|c| {
            let theirs = json!({ "path": common::TESTBIN, "args": ["devns-testbin", "runtime-program"],
                "env": [format!("DEVNS_RUNTIME_ALLOW={allow}")] });
            c["hooks"]["createRuntime"].as_array_mut().unwrap().insert(0, theirs);
        });
        b.script(&format!("head -c 512 /dev/{} | wc -c; head -c0 /hostloop && echo opened", mine.name));
        let out = runc.run(&b);
        let s = text(&out);
        assert!(s.starts_with("512\n"), "{allow}: {s}");
        assert!(s.contains("Operation not permitted") && !s.contains("opened"), "{allow}: {s}");
        eventually("the namespace is let go", || ns_names(&env).is_empty());
    }
}

/// podman with crun (cgroup2 only, through the wrapper) and the hooks
/// dir: the view, the annotation's device, and devns's program the only
/// device rule (podman gives a user-namespaced container none, so crun
/// attaches no program of its own, and its v1 cgroup is conmon's, which
/// allows all: the host's node would open but for devns's map).
#[test]
fn podman_with_crun_and_the_hooks_dir() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let podman = Podman::new(&env);
    let b = Bundle::new("hookcrun");
    let (mine, theirs) = (Loop::new(false), Loop::new(false));
    let (major, minor) = block_numbers(&theirs.name);
    let _node = Node::new(b.rootfs().join("hostloop"), 'b', major, minor);
    let name = format!("{}-crun", b.id);
    let mut cmd = podman.run_args(&name, b.base);
    cmd.arg("--runtime").arg(crun_wrapper(env.dir.path())).args(["--pids-limit", "0", "--hooks-dir"]);
    cmd.arg(hooks_dir(&env)).args(["--annotation", "devns.io/enable=true", "--annotation"]);
    cmd.arg(format!("devns.io/devices={}", mine.name));
    let script = format!("ls -A /dev; head -c 512 /dev/{} | wc -c; head -c0 /hostloop && echo opened", mine.name);
    // crun 1.8 chowns the container's stdio to its root before it joins the
    // user namespace, devices too (crun#1845): given the host's /dev/null
    // (podman's stdin without -i), that is the host's node. A pipe it is.
    cmd.args(["-i"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.arg("--rootfs").arg(b.rootfs()).args(["/bin/sh", "-c", &script]).spawn().unwrap();
    let out = child.wait_with_output().unwrap();
    let s = text(&out);
    assert!(s.contains("loop-control\n") && s.contains("\n512\n"), "{s}");
    assert!(s.contains("Operation not permitted") && !s.contains("opened"), "{s}");
    let out = podman.rm(&name);
    assert!(out.status.success(), "podman rm: {}", text(&out));
    eventually("the namespace is let go", || ns_names(&env).is_empty());
    assert!(env.owned().is_empty());
}

/// A container whose cgroup also holds a process of the host's: the hook
/// is refused (its device program would police the host process), the
/// start fails with the one line, and nothing of devns is left.
#[test]
fn a_container_in_a_cgroup_with_a_host_process_is_refused() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let runc = Runc::new(&env);
    let cg = common::TestCgroup::new("hookhost");
    let mut host = cg.command("sleep").arg("1000").stdin(Stdio::null()).spawn().unwrap();
    let rel = cg.path.strip_prefix(common::cgroup_root()).unwrap().to_owned();
    let b = devns_bundle(&env, "hookhost");
    b.edit(|c| c["linux"]["cgroupsPath"] = json!(Path::new("/").join(&rel)));
    b.script("echo started");
    let mounts_before = env.host_mounts();
    let out = runc.run(&b);
    let s = text(&out);
    assert!(!out.status.success() && !s.contains("started"), "{s}");
    let (line, one) = hook_stderr(&s);
    assert!(line.contains("of the host's user namespace") && one, "{s}");
    nothing_left(&env, &mounts_before);
    let _ = host.kill();
    let _ = host.wait();
    // runc's own cgroups of that path in the v1 hierarchies.
    for d in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(d.path().join(&rel));
    }
}
