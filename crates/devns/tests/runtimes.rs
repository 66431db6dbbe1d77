//! Real OCI runtimes under devns: runc, podman with runc, podman with crun,
//! user-namespaced, on a busybox rootfs with the host's own tools.

mod common;

use common::docker::Docker;
use common::oci::{BLOCK, Bundle, Containerd, Podman, Runc, crun_wrapper, runtime_wrapper};
use common::{Env, privileged};

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The harness itself: each runtime starts a user-namespaced container on
/// the tools rootfs, its root mapped onto the bundle's block.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_runtimes_run_a_user_namespaced_container_here() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let runc = Runc::new(&env);
    let b = Bundle::new("harness");
    b.script("cat /proc/self/uid_map; id -u; mkfs.ext4 -V 2>&1 | head -1; losetup --version");
    let out = runc.run(&b);
    assert!(out.status.success(), "runc run: {}", text(&out));
    let s = text(&out);
    assert!(s.split_whitespace().take(3).eq(["0", &b.base.to_string(), &BLOCK.to_string()]), "{s}");
    assert!(s.contains("mke2fs") && s.contains("util-linux"), "{s}");

    let podman = Podman::new(&env);
    for runtime in [None, Some(crun_wrapper(env.dir.path()))] {
        let name = format!("{}-{}", b.id, if runtime.is_some() { "crun" } else { "runc" });
        let mut cmd = podman.run_args(&name, b.base);
        match &runtime {
            Some(w) => cmd.arg("--runtime").arg(w).args(["--pids-limit", "0"]),
            None => cmd.args(["--runtime", "runc"]),
        };
        let out =
            cmd.arg("--rootfs").arg(b.rootfs()).args(["/bin/sh", "-c", "cat /proc/self/uid_map"]).output().unwrap();
        assert!(out.status.success(), "podman run ({runtime:?}): {}", text(&out));
        assert!(text(&out).split_whitespace().take(2).eq(["0", &b.base.to_string()]), "{}", text(&out));
        let out = podman.rm(&name);
        assert!(out.status.success(), "podman rm: {}", text(&out));
    }
}

/// The harness's crun wrapper hands crun no fd on the host's `/dev/null`
/// (crun 1.8.1 would chown it, crun#1845): checked with `crun --version`,
/// which chowns nothing, its stdio the host's `/dev/null`.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_crun_wrapper_never_hands_crun_the_host_s_dev_null() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let null = || std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").unwrap();
    let status = std::process::Command::new(crun_wrapper(env.dir.path()))
        .arg("--version")
        .stdin(null())
        .stdout(null())
        .stderr(null())
        .status()
        .unwrap();
    assert!(status.success());
    let out = std::fs::read_to_string(env.dir.path().join("crun-null-out")).unwrap();
    assert!(out.starts_with("crun version"), "{out:?}");
    // Its own stdio, when not /dev/null, is left as it is.
    let out = std::process::Command::new(crun_wrapper(env.dir.path())).arg("--version").output().unwrap();
    assert!(text(&out).starts_with("crun version"), "{}", text(&out));
}

/// How a test reaches into its running container: `sh -c SCRIPT` there.
type Exec<'a> = &'a dyn Fn(&str) -> std::process::Output;

fn ok(exec: Exec, script: &str) -> String {
    let out = exec(script);
    assert!(out.status.success(), "{script}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The namespace the daemon keeps under `name`: its `id:N`.
fn ns_of(env: &Env, name: &str) -> Option<String> {
    let out = env.devns().args(["ns", "ls", "--json"]).output().expect("devns ns ls");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    rows.iter().find(|r| r["name"] == name).map(|r| match r["id"].as_str() {
        Some(id) => id.to_owned(),
        None => format!("id:{}", r["id"]),
    })
}

/// Owner of device DEVNAME per `devns ls`.
fn owner_of(env: &Env, devname: &str) -> Option<String> {
    let out = env.devns().args(["ls", "--json"]).output().expect("devns ls");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    rows.iter().find(|r| r["name"] == devname).and_then(|r| r["owner"].as_str().map(str::to_owned))
}

/// What every runtime's container under devns must show, from inside:
/// `/dev` is its view (and follows `devns assign`), `mknod` of a global
/// works and of `/dev/mem` is refused, `losetup -f` + `mkfs.ext4` +
/// `blkid` work on a loop device its namespace owns, `udevadm monitor
/// --kernel` hears that loop's events, and a host node mounted in
/// (`/mnt/hostdisk`, a node of `host_disk`) cannot be opened. Returns the
/// loop device the container made.
fn a_container_under_devns(env: &Env, exec: Exec, name: &str, host_disk: &str) -> String {
    // Brought in by a hook before the runtime returns, or at the first
    // execve, which `runc start` does not wait for.
    common::eventually("the container's namespace under the daemon", || ns_of(env, name).is_some());
    let ns = ns_of(env, name).expect("the container's namespace is under the daemon");
    // /dev is the view: its names are the view's, and the runtime's own
    // mounts below /dev were carried onto it; so it was for the
    // container's first command ([`FIRST`]) already.
    let view = common::view_names(env, &ns);
    for (what, script) in [("/dev", "ls -a /dev"), ("/dev at the start", "cat /tmp/first-dev")] {
        let in_dev: Vec<String> = ok(exec, script).split_whitespace().map(str::to_owned).collect();
        for n in view.iter().filter(|n| !n.contains('/')) {
            assert!(in_dev.contains(n), "{n} of the view missing in {what}: {in_dev:?}");
        }
    }
    ok(exec, "test -c /dev/null && : > /dev/null && echo x > /dev/shm/x && ls /dev/pts/ptmx");
    // mknod of a global works, of /dev/mem is refused.
    ok(exec, "mknod /dev/mynull c 1 3 && echo hi > /dev/mynull");
    let out = exec("mknod /dev/mymem c 1 1");
    assert!(!out.status.success() && text(&out).contains("not permitted"), "{}", text(&out));
    // Its own loop device, heard by its own udevadm.
    ok(exec, "(udevadm monitor --kernel --subsystem-match=block > /tmp/events 2>&1 &) ; sleep 0.5");
    let dev = ok(
        exec,
        "truncate -s 32M /tmp/img && L=$(losetup -f --show /tmp/img) && mkfs.ext4 -q $L && blkid $L && echo $L",
    );
    assert!(dev.contains("TYPE=\"ext4\""), "{dev}");
    let loopdev = dev.lines().last().unwrap().trim().to_owned();
    let devname = loopdev.trim_start_matches("/dev/").to_owned();
    assert_eq!(owner_of(env, &devname).as_deref(), Some(ns.as_str()), "{devname} is the container's");
    common::eventually("udevadm inside hears its loop", || {
        exec("cat /tmp/events").stdout.windows(devname.len()).any(|w| w == devname.as_bytes())
    });
    // devns assign while it runs: the node appears.
    let disk = common::Loop::new(false);
    common::devns_ok(env, &["assign", &disk.name, "--to", &ns]);
    let out = exec(&format!("test -b /dev/{}", disk.name));
    assert!(out.status.success(), "assigned {} not in /dev", disk.name);
    common::devns_ok(env, &["release", &disk.name]);
    // A host node mounted in cannot be opened.
    let out = exec("head -c 1 /mnt/hostdisk");
    assert!(!out.status.success() && text(&out).contains("not permitted"), "host {host_disk}: {}", text(&out));
    loopdev
}

/// The command of every container under devns here: what its first
/// command saw in `/dev`, kept for [`a_container_under_devns`].
const FIRST: [&str; 3] = ["/bin/sh", "-c", "ls -a /dev > /tmp/first-dev; exec sleep 1000"];

/// Nothing of the container is left: its namespace, its loop device, the
/// view's host mount, the daemon's fds (as many as before it started).
fn nothing_left(env: &Env, daemon: &common::Daemon, name: &str, loopdev: &str, fds_before: usize) {
    let devname = loopdev.trim_start_matches("/dev/").to_owned();
    common::eventually("the namespace let go", || ns_of(env, name).is_none());
    common::eventually("its loop device removed", || !std::path::Path::new("/sys/block").join(&devname).exists());
    assert_eq!(env.recorded_namespaces(), 0, "records left");
    let views = env.state_dir().join("views").to_string_lossy().into_owned();
    common::eventually("its view unmounted", || {
        env.host_mounts().iter().all(|m| !m.split(' ').nth(1).is_some_and(|at| at.starts_with(&views) && at != views))
    });
    common::eventually("the daemon's fds back", || daemon.fd_count() <= fds_before);
}

/// `devns oci profile` for `env`'s daemon: the seccomp profile a runtime
/// gets (allow-all + devns's notify rules + listenerPath).
fn profile(env: &Env) -> serde_json::Value {
    let listener = env.dir.path().join("seccomp.sock");
    let out = env.devns().args(["oci", "profile", "--listener"]).arg(&listener).output().expect("devns oci profile");
    assert!(out.status.success(), "devns oci profile: {}", text(&out));
    serde_json::from_slice(&out.stdout).expect("a JSON profile")
}

/// A host block device (a loop of the test's) and its node in a directory
/// containers reach, to mount into one.
struct HostDisk {
    node: common::Node,
    disk: common::Loop,
    _dir: common::SharedDir,
}

fn host_disk(tag: &str) -> HostDisk {
    let dir = common::SharedDir::new(tag);
    let disk = common::Loop::new(false);
    let (maj, min) = common::block_numbers(&disk.name);
    let node = dir.node("hostdisk", 'b', maj, min);
    HostDisk { node, disk, _dir: dir }
}

/// A runc container asking for devns, with devns's hooks (`hooks`) or
/// with the profile alone (attached at its first execve), through the
/// whole scenario; `runc delete` leaves nothing.
fn runc_e2e(tag: &str, hooks: bool) {
    let env = Env::new();
    let daemon = common::Daemon::start(&env);
    let host = host_disk(tag);
    let b = Bundle::new(tag);
    b.args(&FIRST);
    b.enable_devns();
    if hooks {
        b.hooks(&env);
    }
    b.add_caps(&["CAP_MKNOD"]);
    b.seccomp(profile(&env));
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/mnt/hostdisk", "type": "bind", "source": host.node.path(), "options": ["bind"] }));
    });
    let testbin = b.with_testbin();
    let fds = daemon.fd_count();
    let runc = Runc::new(&env);
    runc.start(&b);
    let exec = |s: &str| runc.exec(&b.id, s);
    let loopdev = a_container_under_devns(&env, &exec, &b.id, &host.disk.name);
    // 0x4C83 is no request, trapped beside loop-control's by the profile:
    // the kernel answers it, also on a disk the container owns (where the
    // agent's partition requests are served).
    let probe = |file: &str| format!("DEVNS_LOOP_OPS=file={file},0x4c83 /devns-testbin loop-ioctls");
    let native = std::process::Command::new(&testbin)
        .arg("loop-ioctls")
        .env("DEVNS_LOOP_OPS", format!("file={loopdev},0x4c83"))
        .output()
        .unwrap();
    let native = text(&native);
    assert!(native.starts_with("op 0x4c83=-"), "{native}");
    assert_eq!(ok(&exec, &probe(&loopdev)), native, "on its own loop device");
    assert_eq!(ok(&exec, &probe("/dev/null")).trim(), "op 0x4c83=-25", "on /dev/null");
    // `runc update` (so `podman update`) writes the runtime's device rules
    // again: devns's decide again, and its own loop device stays usable.
    let read = format!("head -c 512 {loopdev} | wc -c");
    assert_eq!(ok(&exec, &read).trim(), "512");
    let out = runc.cmd().args(["update", "--memory", "512M", &b.id]).output().unwrap();
    assert!(out.status.success(), "runc update: {}", text(&out));
    common::eventually("its loop device usable after runc update", || {
        let out = exec(&read);
        out.status.success() && text(&out).trim() == "512"
    });
    runc.delete(&b.id);
    nothing_left(&env, &daemon, &b.id, &loopdev, fds);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_runc_container_asking_for_devns_gets_its_view_devices_and_loops() {
    if !privileged() {
        return;
    }
    runc_e2e("runc-e2e", true);
}

/// No hook at all: the profile's listener, passed by runc, and the
/// container's first execve are where devns brings it in.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_runc_container_with_devns_s_profile_alone_is_attached_at_its_first_execve() {
    if !privileged() {
        return;
    }
    runc_e2e("runc-exec", false);
}

/// oci-hooks(5) files for `env`'s world in `dir` (as the shipped one in
/// `dist/`, pointed at this build and the test's daemon): `--hooks-dir`.
fn hooks_dir(env: &Env) -> std::path::PathBuf {
    let dir = env.dir.path().join("hooks.d");
    std::fs::create_dir_all(&dir).unwrap();
    for stage in ["createRuntime", "poststop"] {
        let h = serde_json::json!({
            "version": "1.0.0",
            "hook": {
                "path": env!("CARGO_BIN_EXE_devns"),
                "args": ["devns", "hook", stage],
                "env": [format!("DEVNS_SOCKET={}", env.socket().display()),
                        format!("DEVNS_STATE_DIR={}", env.state_dir().display()),
                        format!("DEVNS_CONFIG={}", env.config().display())],
            },
            "when": { "annotations": { "^devns\\.io/enable$": "^true$" } },
            "stages": [stage],
        });
        std::fs::write(dir.join(format!("devns-{stage}.json")), serde_json::to_vec_pretty(&h).unwrap()).unwrap();
    }
    dir
}

/// How a podman container is brought under devns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// hooks.d ([`hooks_dir`]) and the profile (`--security-opt seccomp=`).
    Hooks,
    /// The profile alone: attached at its first execve.
    Profile,
    /// podman's `--runtime` the devns wrapper ([`runtime_wrapper`], the
    /// real runtime behind it): no hooks dir, no profile.
    Wrapper,
}

/// `podman run -d` of a container asking for devns, `way`, with the host
/// disk's node mounted in; `runtime` is podman's `--runtime` and its flags.
fn podman_under_devns(env: &Env, podman: &Podman, b: &Bundle, host: &HostDisk, runtime: &[&str], way: Way) {
    let mut c = podman.run_args(&b.id, b.base);
    c.args(runtime).args(["-d", "--cap-add", "MKNOD", "--annotation", "devns.io/enable=true"]);
    if way == Way::Hooks {
        c.arg("--hooks-dir").arg(hooks_dir(env));
    }
    if way != Way::Wrapper {
        let prof = env.dir.path().join("profile.json");
        std::fs::write(&prof, serde_json::to_vec(&profile(env)).unwrap()).unwrap();
        c.arg("--security-opt").arg(format!("seccomp={}", prof.display()));
    }
    c.arg("-v").arg(format!("{}:/mnt/hostdisk", host.node.path()));
    let out = c.arg("--rootfs").arg(b.rootfs()).args(FIRST).output().unwrap();
    assert!(out.status.success(), "podman run: {}", text(&out));
}

/// The scenario under podman, with runc or crun, `way`.
fn podman_e2e(tag: &str, crun: bool, way: Way) {
    let env = Env::new();
    let daemon = common::Daemon::start(&env);
    let host = host_disk(tag);
    let b = Bundle::new(tag);
    let podman = Podman::new(&env);
    let crun_unified = crun_wrapper(env.dir.path());
    let real = if crun { crun_unified.clone() } else { "runc".into() };
    let wrapper = runtime_wrapper(&env, "devns-runtime-test", &real);
    let runtime = if way == Way::Wrapper { wrapper.to_str().unwrap() } else { real.to_str().unwrap() };
    let mut runtime = vec!["--runtime", runtime];
    if crun {
        runtime.extend(["--pids-limit", "0"]);
    }
    let fds = daemon.fd_count();
    let name = b.id.clone();
    podman_under_devns(&env, &podman, &b, &host, &runtime, way);
    // `-i`: a pipe as its stdin, never the host's /dev/null (crun chowns it).
    let exec = |s: &str| podman.cmd().args(["exec", "-i", &name, "/bin/sh", "-c", s]).output().unwrap();
    // podman names the runtime's container by its own 64-hex id.
    let id =
        String::from_utf8_lossy(&podman.cmd().args(["inspect", "--format", "{{.Id}}", &name]).output().unwrap().stdout)
            .trim()
            .to_owned();
    let loopdev = a_container_under_devns(&env, &exec, &id, &host.disk.name);
    // `podman update` has the runtime write its resources again: devns's
    // device rules still decide, and its own loop device stays usable.
    // (Not with crun here: its cgroup2, mounted by the wrapper, has no
    // controller `podman update` sets.)
    if !crun {
        let read = format!("head -c 512 {loopdev} | wc -c");
        assert_eq!(String::from_utf8_lossy(&exec(&read).stdout).trim(), "512");
        let out = podman.cmd().args(["update", "--memory", "512m", &name]).output().unwrap();
        assert!(out.status.success(), "podman update: {}", text(&out));
        common::eventually("its loop device usable after podman update", || {
            let out = exec(&read);
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "512"
        });
    }
    let out = podman.rm(&name);
    assert!(out.status.success(), "podman rm: {}", text(&out));
    nothing_left(&env, &daemon, &id, &loopdev, fds);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_podman_runc_container_asking_for_devns_gets_its_view_devices_and_loops() {
    if !privileged() {
        return;
    }
    podman_e2e("podman-runc", false, Way::Hooks);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_podman_crun_container_asking_for_devns_gets_its_view_devices_and_loops() {
    if !privileged() {
        return;
    }
    podman_e2e("podman-crun", true, Way::Hooks);
}

/// `--security-opt seccomp=` devns's profile and the annotation: no hooks.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_podman_runc_container_with_devns_s_profile_alone_gets_its_view_devices_and_loops() {
    if !privileged() {
        return;
    }
    podman_e2e("podprof-runc", false, Way::Profile);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_podman_crun_container_with_devns_s_profile_alone_gets_its_view_devices_and_loops() {
    if !privileged() {
        return;
    }
    podman_e2e("podprof-crun", true, Way::Profile);
}

/// A container that does not ask for devns, with the hooks installed and
/// the daemon up: devns never touches it (no namespace, the runtime's own
/// `/dev`).
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_podman_container_that_never_asked_is_never_touched() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _daemon = common::Daemon::start(&env);
    let b = Bundle::new("untouched");
    let podman = Podman::new(&env);
    let out = podman
        .run_args(&b.id, b.base)
        .args(["--rm", "--runtime", "runc", "--hooks-dir"])
        .arg(hooks_dir(&env))
        .arg("--rootfs")
        .arg(b.rootfs())
        .args(["/bin/sh", "-c", "test -e /dev/loop-control || echo runtime-dev"])
        .output()
        .unwrap();
    assert!(out.status.success(), "podman run: {}", text(&out));
    assert!(text(&out).contains("runtime-dev"), "{}", text(&out));
    let out = env.devns().args(["ns", "ls", "--json"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]", "a namespace was made");
}

/// The daemon not running: a container asking for devns fails to start,
/// with a line naming devns.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn without_the_daemon_a_container_asking_for_devns_does_not_start() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let b = Bundle::new("nodaemon");
    let podman = Podman::new(&env);
    let out = podman
        .run_args(&b.id, b.base)
        .args(["--rm", "--runtime", "runc", "--annotation", "devns.io/enable=true", "--hooks-dir"])
        .arg(hooks_dir(&env))
        .arg("--rootfs")
        .arg(b.rootfs())
        .args(["/bin/echo", "started"])
        .output()
        .unwrap();
    assert!(!out.status.success() && !text(&out).contains("started"), "{}", text(&out));
    assert!(text(&out).contains("devns"), "no line naming devns: {}", text(&out));
}

/// podman with `--runtime` = the devns wrapper (a script pointing it at
/// the test's daemon: podman passes the runtime none of its environment),
/// runc behind it.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_podman_runc_container_through_the_wrapper_gets_its_view_devices_and_loops() {
    if !privileged() {
        return;
    }
    podman_e2e("podwrap-runc", false, Way::Wrapper);
}

/// The same with crun (the cgroup2 wrapper of the harness) behind it.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_podman_crun_container_through_the_wrapper_gets_its_view_devices_and_loops() {
    if !privileged() {
        return;
    }
    podman_e2e("podwrap-crun", true, Way::Wrapper);
}

/// `devns-runtime` (a symlink to this build) as containerd's runc binary:
/// it finds the test's daemon by containerd's environment, which the
/// shims and their runtime inherit.
fn devns_runtime_link(env: &Env) -> std::path::PathBuf {
    let link = env.dir.path().join("devns-runtime");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_devns"), &link).unwrap();
    link
}

/// containerd (`ctr run -d --runc-binary devns-runtime`) of a container
/// asking for devns by its spec's annotation: the scenario in it through
/// `ctr task exec`, and after `ctr task kill`, `ctr task rm`, `ctr c rm`
/// nothing is left.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_containerd_container_through_the_wrapper_gets_its_view_devices_and_loops() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let daemon = common::Daemon::start(&env);
    let host = host_disk("ctrd-e2e");
    let b = Bundle::new("ctrd-e2e");
    b.args(&FIRST);
    b.enable_devns();
    b.add_caps(&["CAP_MKNOD"]);
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/mnt/hostdisk", "type": "bind", "source": host.node.path(), "options": ["bind"] }));
    });
    let ctrd = Containerd::start(&env);
    let link = devns_runtime_link(&env);
    let fds = daemon.fd_count();
    let out = ctrd.run(&b, &link, &["-d", "--null-io"]).output().unwrap();
    assert!(out.status.success(), "ctr run: {}", text(&out));
    let exec = |s: &str| ctrd.exec(&b.id, s);
    let loopdev = a_container_under_devns(&env, &exec, &b.id, &host.disk.name);
    ctrd.remove(&b.id);
    nothing_left(&env, &daemon, &b.id, &loopdev, fds);
}

/// The same container without the annotation, through the wrapper under
/// containerd, the daemon up: devns never touches it.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_containerd_container_that_never_asked_is_never_touched_by_the_wrapper() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _daemon = common::Daemon::start(&env);
    let b = Bundle::new("ctrd-untouched");
    b.args(&["sleep", "1000"]);
    let ctrd = Containerd::start(&env);
    let link = devns_runtime_link(&env);
    let out = ctrd.run(&b, &link, &["-d", "--null-io"]).output().unwrap();
    assert!(out.status.success(), "ctr run: {}", text(&out));
    let out = ctrd.exec(&b.id, "test -e /dev/loop-control || echo runtime-dev; ls /dev");
    assert!(out.status.success(), "ctr task exec: {}", text(&out));
    assert!(text(&out).contains("runtime-dev") && text(&out).contains("pts"), "runc's own /dev: {}", text(&out));
    let out = env.devns().args(["ns", "ls", "--json"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]", "a namespace was made");
    ctrd.remove(&b.id);
}

/// Docker 20.10 (no annotations) with the runtime `devns` of its
/// daemon.json (`--all-containers`), user-namespaced by `--userns-remap`:
/// a container of the default runtime is never touched; one run with
/// `--runtime devns` gets the scenario, and after `docker rm -f` nothing is
/// left.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_docker_container_through_the_wrapper_gets_its_view_devices_and_loops() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let daemon = common::Daemon::start(&env);
    let host = host_disk("docker-e2e");
    let b = Bundle::new("docker-e2e");
    let docker = Docker::start(&env);
    let image = b.id.clone();
    docker.import(&b.rootfs(), &image);
    let plain = format!("{}-plain", b.id);
    let out = docker
        .run_args(&plain)
        .args([
            "--rm",
            &image,
            "/bin/sh",
            "-c",
            "cat /proc/self/uid_map; test -e /dev/loop-control || echo runtime-dev",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker run: {}", text(&out));
    let s = text(&out);
    assert!(s.split_whitespace().take(2).eq(["0", &docker.base.to_string()]) && s.contains("runtime-dev"), "{s}");
    let out = env.devns().args(["ns", "ls", "--json"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]", "a namespace was made");
    let fds = daemon.fd_count();
    let name = b.id.clone();
    let out = docker
        .run_args(&name)
        .args(["-d", "--runtime", "devns", "--cap-add", "MKNOD", "-v"])
        .arg(format!("{}:/mnt/hostdisk", host.node.path()))
        .arg(&image)
        .args(FIRST)
        .output()
        .unwrap();
    assert!(out.status.success(), "docker run: {}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let exec = |s: &str| docker.cmd().args(["exec", &name, "/bin/sh", "-c", s]).output().unwrap();
    let loopdev = a_container_under_devns(&env, &exec, &id, &host.disk.name);
    let out = docker.rm(&name);
    assert!(out.status.success(), "docker rm: {}", text(&out));
    nothing_left(&env, &daemon, &id, &loopdev, fds);
}
