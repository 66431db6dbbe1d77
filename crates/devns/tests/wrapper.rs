//! `devns oci runtime` / `devns-runtime` and `devns oci profile`: with a
//! recording stand-in runtime (its argv, pid and the bundle's config.json
//! as it found them) for what is passed through, and with the real runc,
//! crun and podman for what they accept.

mod common;

use common::oci::{Bundle, Podman, Runc, crun_wrapper};
use common::{Env, privileged};
use serde_json::{Value, json};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A stand-in runtime that writes `pid PID`, then `arg ARG` per argument,
/// into `dir/record`, and copies `BUNDLE/config.json` (the `--bundle`
/// given, else the cwd's) to `dir/seen.json`.
struct Recorder {
    dir: PathBuf,
}

impl Recorder {
    fn new(env: &Env) -> Recorder {
        let dir = env.dir.path().join("recorder");
        std::fs::create_dir_all(&dir).unwrap();
        let script = format!(
            "#!/bin/sh\n{{ echo \"pid $$\"; for a in \"$@\"; do printf 'arg %s\\n' \"$a\"; done; }} > {d}/record\n\
             b=.; prev=; for a in \"$@\"; do [ \"$prev\" = --bundle ] && b=$a; prev=$a; done\n\
             cp \"$b/config.json\" {d}/seen.json 2>/dev/null\nexit 0\n",
            d = dir.display()
        );
        std::fs::write(dir.join("runtime"), script).unwrap();
        std::fs::set_permissions(dir.join("runtime"), std::fs::Permissions::from_mode(0o755)).unwrap();
        Recorder { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("runtime")
    }

    /// `devns oci runtime --runtime-path STAND-IN -- ARGS` in `cwd`: its
    /// output and its pid.
    fn wrap(&self, env: &Env, cwd: &Path, args: &[&str]) -> (Output, u32) {
        let mut c = env.devns();
        c.args(["oci", "runtime", "--runtime-path"]).arg(self.path()).arg("--").args(args).current_dir(cwd);
        spawn(c)
    }

    /// The pid and arguments the stand-in saw, if it ran.
    fn record(&self) -> Option<(u32, Vec<String>)> {
        let r = std::fs::read_to_string(self.dir.join("record")).ok()?;
        let mut lines = r.lines();
        let pid = lines.next()?.strip_prefix("pid ")?.parse().ok()?;
        Some((pid, lines.map(|l| l.strip_prefix("arg ").unwrap().to_owned()).collect()))
    }

    fn seen(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("seen.json")).expect("the stand-in saw a config")).unwrap()
    }

    fn forget(&self) {
        let _ = std::fs::remove_file(self.dir.join("record"));
        let _ = std::fs::remove_file(self.dir.join("seen.json"));
    }
}

fn spawn(mut c: Command) -> (Output, u32) {
    let child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn devns");
    let pid = child.id();
    (child.wait_with_output().unwrap(), pid)
}

/// A bundle directory of the test's with `config.json` = `bytes`.
fn bundle(env: &Env, bytes: &[u8]) -> PathBuf {
    let dir = env.dir.path().join("bundle");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), bytes).unwrap();
    dir
}

fn asking() -> Value {
    json!({"ociVersion": "1.0.2", "annotations": {"devns.io/enable": "true"}, "process": {"args": ["sh"]}, "linux": {}})
}

const GLOBAL: [&str; 6] = ["--root", "/r", "--log-format=json", "--log", "/l", "--systemd-cgroup"];

#[test]
fn everything_is_passed_through_untouched_in_the_same_process() {
    let env = Env::new();
    let rec = Recorder::new(&env);
    // Not asking for devns, with odd bytes: never rewritten.
    let bytes = b"{ \"annotations\" : {\"devns.io/enable\":\"TRUE \"} ,\n \"x\": 1 }\n";
    let dir = bundle(&env, bytes);
    let ino = std::fs::metadata(dir.join("config.json")).unwrap().ino();
    let b = dir.to_str().unwrap();
    let calls: Vec<Vec<&str>> = vec![
        [&GLOBAL[..], &["create", "--bundle", b, "--pid-file", "/p", "id"]].concat(),
        vec!["run", "-b", b, "id"],
        vec!["start", "id"],
        vec!["kill", "id", "KILL"],
        vec!["delete", "--force", "id"],
        vec!["exec", "--pid-file", "/p", "id", "sh", "-c", "echo --bundle"],
        vec!["--help"],
        vec!["--version"],
        vec![],
    ];
    for args in calls {
        rec.forget();
        let (out, pid) = rec.wrap(&env, &dir, &args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert_eq!(out.stdout, b"", "{args:?}: nothing of devns's own on stdout");
        assert_eq!(rec.record(), Some((pid, args.iter().map(|a| a.to_string()).collect())), "{args:?}");
        assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), bytes, "{args:?}");
        assert_eq!(std::fs::metadata(dir.join("config.json")).unwrap().ino(), ino, "{args:?}");
    }
    // A container that asks is not touched by any other command either.
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&asking()).unwrap()).unwrap();
    let before = std::fs::read(dir.join("config.json")).unwrap();
    for args in [&["start", "id"][..], &["state", "id"], &["delete", "id"], &["--root", "create", "start", "id"]] {
        let (out, _) = rec.wrap(&env, &dir, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), before, "{args:?}");
    }
}

#[test]
fn as_devns_runtime_every_argument_is_the_runtime_s() {
    let env = Env::new();
    let rec = Recorder::new(&env);
    let link = env.dir.path().join("devns-runtime");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_devns"), &link).unwrap();
    let dir = bundle(&env, &serde_json::to_vec(&asking()).unwrap());
    for args in [&["--help"][..], &["--socket", "/x", "oci", "profile"], &["create", "id"]] {
        rec.forget();
        let mut c = Command::new(&link);
        env.devns_env(&mut c).env("DEVNS_RUNTIME_PATH", rec.path()).args(args).current_dir(&dir);
        let (out, pid) = spawn(c);
        assert!(out.status.success() && out.stdout.is_empty(), "{args:?}: {}", text(&out));
        assert_eq!(rec.record(), Some((pid, args.iter().map(|a| a.to_string()).collect())), "{args:?}");
    }
    // The bundle was the cwd: edited there.
    assert_eq!(rec.seen()["linux"]["seccomp"]["listenerPath"], env.dir.path().join("seccomp.sock").to_str().unwrap());
}

#[test]
fn a_container_that_asks_is_edited_in_place_with_its_mode_and_owner() {
    let env = Env::new();
    let rec = Recorder::new(&env);
    let mut c = asking();
    c["linux"]["devices"] = json!([{"path": "/dev/loop7", "type": "b", "major": 7, "minor": 7}]);
    let dir = bundle(&env, &serde_json::to_vec_pretty(&c).unwrap());
    let file = dir.join("config.json");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&file, Some(1234), Some(5678)).unwrap();
    let (out, pid) = rec.wrap(&env, Path::new("/"), &["create", "--bundle", dir.to_str().unwrap(), "id"]);
    assert!(out.status.success() && out.stdout.is_empty(), "{}", text(&out));
    assert_eq!(rec.record().unwrap().0, pid);
    let m = std::fs::metadata(&file).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 1234, 5678));
    // What the runtime read is what is there; nothing else was left.
    let seen = rec.seen();
    assert_eq!(seen, serde_json::from_slice::<Value>(&std::fs::read(&file).unwrap()).unwrap());
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["config.json"]);
    let hook = |stage: &str| {
        json!({"path": std::fs::canonicalize(env!("CARGO_BIN_EXE_devns")).unwrap(), "args": ["devns", "hook", stage],
               "env": [format!("DEVNS_SOCKET={}", env.socket().display()), format!("DEVNS_STATE_DIR={}", env.state_dir().display()),
                       format!("DEVNS_CONFIG={}", env.config().display())]})
    };
    // Attached at its first execve: the poststop hook alone.
    assert_eq!(seen["hooks"], json!({"poststop": [hook("poststop")]}));
    let profile = &seen["linux"]["seccomp"];
    assert_eq!(
        (&profile["defaultAction"], &profile["listenerPath"]),
        (&json!("SCMP_ACT_ALLOW"), &json!(env.dir.path().join("seccomp.sock")))
    );
    assert_eq!(seen["linux"]["devices"], json!([]));
    assert_eq!(seen["annotations"]["devns.io/devices"], "b:7:7");
    assert_eq!(seen["linux"]["resources"]["devices"], json!([{"allow": true, "access": "rwm"}]));
    // DEVNS_SECCOMP_SOCKET names the agent's socket.
    let mut c = env.devns();
    c.args(["oci", "runtime", "--runtime-path"]).arg(rec.path()).args([
        "--",
        "run",
        "--bundle",
        dir.to_str().unwrap(),
        "id",
    ]);
    c.env("DEVNS_SECCOMP_SOCKET", "/srv/s.sock").current_dir("/");
    let (out, _) = spawn(c);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rec.seen()["linux"]["seccomp"]["listenerPath"], "/srv/s.sock");
}

/// Files devns cannot read as they are, or edit as asked: the start fails
/// (exit 125, one line, the runtime never runs) and nothing changes.
#[test]
fn attacks_on_the_bundle_fail_the_start_and_change_nothing() {
    let env = Env::new();
    let rec = Recorder::new(&env);
    let dir = env.dir.path().join("bundle");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.json");
    let target = env.dir.path().join("target.json");
    let asking_bytes = serde_json::to_vec(&asking()).unwrap();
    std::fs::write(&target, &asking_bytes).unwrap();
    let mut bad_seccomp = asking();
    bad_seccomp["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_NOTIFY"});
    let mut huge = asking_bytes.clone();
    huge.splice(1..1, std::iter::repeat_n(b' ', devns_core::ociruntime::MAX_CONFIG_BYTES));
    type Setup<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Setup<'_>, &str)> = vec![
        ("a symlink", Box::new(|f: &Path| std::os::unix::fs::symlink(&target, f).unwrap()), "config.json is a symlink"),
        (
            "a FIFO",
            Box::new(|f: &Path| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    f,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o644),
                    0,
                )
                .unwrap()
            }),
            "not a regular file",
        ),
        ("a directory", Box::new(|f: &Path| std::fs::create_dir(f).unwrap()), "not a regular file"),
        ("huge", Box::new(move |f: &Path| std::fs::write(f, &huge).unwrap()), "config.json too large"),
        (
            "a bad seccomp",
            Box::new(move |f: &Path| std::fs::write(f, serde_json::to_vec(&bad_seccomp).unwrap()).unwrap()),
            "every call to devns",
        ),
    ];
    for (what, setup, want) in cases {
        rec.forget();
        let _ = std::fs::remove_file(&file).or_else(|_| std::fs::remove_dir(&file));
        setup(&file);
        let before = std::fs::symlink_metadata(&file).unwrap();
        let (out, _) = rec.wrap(&env, &dir, &["create", "id"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{what}: {}", text(&out));
        assert!(
            err.starts_with("devns: cannot prepare the container for devns: ") && err.contains(want),
            "{what}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert!(out.stdout.is_empty() && rec.record().is_none(), "{what}: the runtime ran");
        let after = std::fs::symlink_metadata(&file).unwrap();
        assert_eq!(
            (after.ino(), after.mtime_nsec(), after.len()),
            (before.ino(), before.mtime_nsec(), before.len()),
            "{what}"
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "{what}: a file left");
    }
    assert_eq!(std::fs::read(&target).unwrap(), asking_bytes, "the symlink's target");
    // Malformed, or no bundle at all: not devns's to judge, the runtime says.
    for (what, bytes) in
        [("malformed", Some(&b"{\"annotations\":{\"devns.io/enable\":\"true\""[..])), ("missing", None)]
    {
        rec.forget();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(b) = bytes {
            std::fs::write(&file, b).unwrap();
        }
        let (out, _) = rec.wrap(&env, &dir, &["create", "id"]);
        assert!(out.status.success() && rec.record().is_some(), "{what}: {}", text(&out));
        assert_eq!(std::fs::read(&file).ok().as_deref(), bytes, "{what}");
    }
    let (out, _) = rec.wrap(&env, &dir, &["create", "--bundle", "/nonexistent/b", "id"]);
    assert!(out.status.success() && rec.record().is_some(), "{}", text(&out));
}

#[test]
fn a_runtime_that_cannot_run_is_one_line_and_125() {
    let env = Env::new();
    let out = env
        .devns()
        .args(["oci", "runtime", "--runtime-path", "/nonexistent/runc", "--", "state", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("devns: cannot run the runtime /nonexistent/runc: ") && err.lines().count() == 1, "{err}");
    assert!(out.stdout.is_empty());
}

const PODMAN_SECCOMP: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../devns-core/tests/corpus/seccomp/podman-4.3.1-seccomp.json");

#[test]
fn the_profile_is_printed_and_a_bad_base_is_one_line_and_125() {
    let env = Env::new();
    let out = env.devns().args(["oci", "profile", "--base", PODMAN_SECCOMP]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["listenerPath"], env.dir.path().join("seccomp.sock").to_str().unwrap());
    assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
    let out = env.devns().args(["oci", "profile", "--listener", "/s", "--metadata", "m"]).output().unwrap();
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&p["defaultAction"], &p["listenerPath"], &p["listenerMetadata"]),
        (&json!("SCMP_ACT_ALLOW"), &json!("/s"), &json!("m"))
    );
    let bad = env.dir.path().join("bad.json");
    for (bytes, want) in [
        (&b"{"[..], "not valid JSON"),
        (b"{\"defaultAction\":\"SCMP_ACT_NOTIFY\"}", "every call to devns"),
        (b"[1]", "not a JSON object"),
    ] {
        std::fs::write(&bad, bytes).unwrap();
        let out = env.devns().args(["oci", "profile", "--base"]).arg(&bad).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(err.starts_with("devns: bad base profile") && err.contains(want) && err.lines().count() == 1, "{err}");
        assert!(out.stdout.is_empty());
    }
    let out = env.devns().args(["oci", "profile", "--base", "/nonexistent"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("devns: cannot read the base profile /nonexistent"));
}

/// The profile's listener is where the daemon serves: the config's
/// `seccomp_socket` when set (the flag and `DEVNS_SECCOMP_SOCKET` still
/// before it), and a bad config one line, nothing printed.
#[test]
fn the_profile_s_listener_is_the_config_s_seccomp_socket() {
    let env = Env::new();
    let listener = |c: &mut std::process::Command| -> Value {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["listenerPath"].clone()
    };
    std::fs::write(env.config(), "seccomp_socket = \"/run/elsewhere/seccomp.sock\"\n").unwrap();
    assert_eq!(listener(env.devns().args(["oci", "profile"])), "/run/elsewhere/seccomp.sock");
    assert_eq!(listener(env.devns().args(["oci", "profile", "--listener", "/s"])), "/s");
    assert_eq!(listener(env.devns().env("DEVNS_SECCOMP_SOCKET", "/e").args(["oci", "profile"])), "/e");
    std::fs::write(env.config(), "seccomp_socket = 3\n").unwrap();
    let out = env.devns().args(["oci", "profile"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("config.toml") && err.lines().count() == 1 && out.stdout.is_empty(), "{err}");
}

/// A seccomp agent socket that answers every call its listeners trap
/// with `ENOSYS` (what the kernel answers once a listener is closed),
/// which tells a trapped call from one the filter let through, but
/// `execve` and `execveat` (trapped too: devns attaches at the first),
/// which go on. Stops on drop.
struct ClosingAgent {
    path: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

/// Answers `listener`'s calls as [`ClosingAgent`] does until no filtered
/// process is left or `stop`.
fn enosys_but_exec(listener: std::os::fd::OwnedFd, stop: &std::sync::atomic::AtomicBool) {
    use devns_sys::seccomp::{FLAG_CONTINUE, NotifResp};
    use rustix::event::{PollFd, PollFlags, Timespec};
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut p = [PollFd::new(&listener, PollFlags::IN)];
        let t = Timespec { tv_sec: 0, tv_nsec: 50_000_000 };
        if rustix::event::poll(&mut p, Some(&t)).is_err() {
            continue;
        }
        let r = p[0].revents();
        if r.contains(PollFlags::IN) {
            let Ok(n) = devns_sys::seccomp::recv(&listener) else { continue };
            let exec = n.data.arch == 0xc000_003e && matches!(n.data.nr, 59 | 322);
            let resp = if exec {
                NotifResp { id: n.id, val: 0, error: 0, flags: FLAG_CONTINUE }
            } else {
                NotifResp { id: n.id, val: 0, error: -38, flags: 0 }
            };
            let _ = devns_sys::seccomp::send(&listener, &resp);
        } else if r.intersects(PollFlags::HUP | PollFlags::ERR) {
            return;
        }
    }
}

impl ClosingAgent {
    fn new(path: PathBuf) -> ClosingAgent {
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        l.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut got = 0;
            let mut served = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        // Read until the message is whole: runc keeps its end
                        // open until its container has started.
                        let (mut fds, mut msg) = (Vec::new(), Vec::new());
                        let mut buf = vec![0u8; 64 << 10];
                        while let Ok(n) = devns::wire::recv_with_fds(std::os::fd::AsFd::as_fd(&c), &mut buf, &mut fds) {
                            msg.extend_from_slice(&buf[..n]);
                            if n == 0 || devns_core::agentsock::whole(&msg) {
                                break;
                            }
                        }
                        got += 1;
                        for fd in fds {
                            let s = s.clone();
                            served.push(std::thread::spawn(move || enosys_but_exec(fd, &s)));
                        }
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
            for t in served {
                let _ = t.join();
            }
            got
        });
        ClosingAgent { path, stop, thread: Some(thread) }
    }

    /// The listeners it took.
    fn finish(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for ClosingAgent {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// In a container under the profile with a [`ClosingAgent`]: each call's
/// answer, one line each (`mknod`, `mknodat` through coreutils and
/// busybox, FIFOs, the mount, the ioctls on /dev/null).
const PROBE: &str = "for a in 'c 1 3' 'b 7 3' p; do mknod /tmp/n $a 2>&1 || true; rm -f /tmp/n; done; \
    busybox mknod /tmp/m c 1 3 2>&1 || true; mount -t devtmpfs none /mnt 2>&1 || true; \
    DEVNS_LOOP_OPS=file=/dev/null,get_free,add:5,remove:5,0x125f,0x1269,0x5401,0x4c00,0x4c83,0x4c84,0x100004c82 /devns-testbin loop-ioctls";

/// What [`PROBE`] prints when exactly devns's calls are trapped.
fn assert_trapped_exactly(out: &str) {
    let enosys = out.matches("Function not implemented").count();
    // Two mknods of devices, busybox's, the mount.
    assert_eq!(enosys, 4, "{out}");
    for (op, want) in [
        ("get_free", -38),
        ("add:5", -38),
        ("remove:5", -38),
        ("0x125f", -38),
        ("0x1269", -38),
        ("0x5401", -25),
        ("0x4c00", -25),
        // No request, trapped beside loop-control's (one rule for them).
        ("0x4c83", -38),
        ("0x4c84", -25),
        ("0x100004c82", -38),
    ] {
        assert!(out.contains(&format!("op {op}={want}\n")), "{op}: {out}");
    }
}

/// The probe in the tools rootfs (the helper binary and its libgcc).
fn probe_rootfs(b: &Bundle) {
    b.with_testbin();
    b.script(PROBE);
}

/// podman with runc and with crun takes `devns oci profile`'s output (the
/// built-in base and podman's own) as `--security-opt seccomp=FILE`, and
/// the container's calls are trapped exactly as devns's own filter does.
#[test]
fn podman_with_runc_and_crun_takes_the_profile() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let b = Bundle::new("profile");
    probe_rootfs(&b);
    let agent = ClosingAgent::new(b.dir.join("agent.sock"));
    let podman = Podman::new(&env);
    let profile = b.dir.join("profile.json");
    let mut runs = 0;
    for base in [None, Some(PODMAN_SECCOMP)] {
        let mut c = env.devns();
        c.args(["oci", "profile", "--listener"]).arg(&agent.path);
        if let Some(base) = base {
            c.args(["--base", base]);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        std::fs::write(&profile, &out.stdout).unwrap();
        for runtime in [None, Some(crun_wrapper(env.dir.path()))] {
            let name = format!("{}-{runs}", b.id);
            let mut cmd = podman.run_args(&name, b.base);
            match &runtime {
                Some(w) => cmd.arg("--runtime").arg(w).args(["--pids-limit", "0"]),
                None => cmd.args(["--runtime", "runc"]),
            };
            let sec = format!("seccomp={}", profile.display());
            let out = cmd
                .args(["--security-opt", &sec])
                .arg("--rootfs")
                .arg(b.rootfs())
                .args(["/bin/sh", "-c", PROBE])
                .output()
                .unwrap();
            assert!(out.status.success(), "podman run ({base:?}, {runtime:?}): {}", text(&out));
            assert_trapped_exactly(&text(&out));
            assert!(podman.rm(&name).status.success());
            runs += 1;
        }
    }
    assert_eq!(agent.finish(), runs, "a listener per container");
}

/// `devns-runtime` as podman's `--runtime`: a container without the
/// annotation runs as it would with runc itself.
#[test]
fn podman_runs_a_container_that_does_not_ask_through_the_wrapper() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let b = Bundle::new("podwrap");
    let link = b.dir.join("devns-runtime");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_devns"), &link).unwrap();
    let podman = Podman::new(&env);
    let name = format!("{}-plain", b.id);
    let mut cmd = podman.run_args(&name, b.base);
    env.devns_env(&mut cmd);
    let out = cmd
        .arg("--runtime")
        .arg(&link)
        .arg("--rootfs")
        .arg(b.rootfs())
        .args(["/bin/sh", "-c", "cat /proc/self/uid_map; ls /dev"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let s = text(&out);
    assert!(s.split_whitespace().take(2).eq(["0", &b.base.to_string()]), "{s}");
    assert!(s.contains("null") && s.contains("pts"), "runc's own /dev: {s}");
    assert!(podman.rm(&name).status.success());
}

/// The wrapper's edit of a container that asks is what runc 1.1.5 and
/// crun 1.8.1 (through the wrapper of runtimes.md) run:
/// the profile with its NOTIFY rules and listenerPath (a [`ClosingAgent`]),
/// the devices and resources. The devns hook is swapped for `true`
/// here: this test is about what the wrapper writes (the hooks' own tests
/// run them).
#[test]
fn runc_runs_the_edited_config_of_a_container_that_asks() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let rec = Recorder::new(&env);
    let b = Bundle::new("wrapedit");
    probe_rootfs(&b);
    b.enable_devns();
    let agent = ClosingAgent::new(b.dir.join("agent.sock"));
    let mut c = env.devns();
    c.env("DEVNS_SECCOMP_SOCKET", &agent.path).args(["oci", "runtime", "--runtime-path"]).arg(rec.path());
    let out = c.args(["--", "--root", "/unused", "create", "--bundle"]).arg(&b.dir).arg(&b.id).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let edited = b.config();
    assert_eq!(rec.seen(), edited);
    assert_eq!(edited["linux"]["seccomp"]["listenerPath"], agent.path.to_str().unwrap());
    b.edit(|c| {
        c["hooks"]["poststop"][0]["path"] = json!("/bin/true");
    });
    let runc = Runc::new(&env);
    let out = runc.run(&b);
    assert!(out.status.success(), "runc run: {}", text(&out));
    assert_trapped_exactly(&text(&out));
    // crun's `run` deletes the container when it ends.
    let out = common::oci::crun_run(env.dir.path(), &b, &format!("{}-crun", b.id));
    assert!(out.status.success(), "crun run: {}", text(&out));
    assert_trapped_exactly(&text(&out));
    assert_eq!(agent.finish(), 2);
}

/// `--all-containers` (Docker 20.10's runtimeArgs, which has no
/// annotations): every container created through it is edited.
#[test]
fn with_all_containers_a_container_without_the_annotation_is_edited() {
    let env = Env::new();
    let rec = Recorder::new(&env);
    let dir = bundle(&env, br#"{"ociVersion":"1.0.2","process":{"args":["sh"]}}"#);
    let mut c = env.devns();
    c.args(["oci", "runtime", "--all-containers", "--runtime-path"]).arg(rec.path()).arg("--");
    c.args(["create", "--bundle"]).arg(&dir).arg("id");
    let (out, pid) = spawn(c);
    assert!(out.status.success() && out.stdout.is_empty(), "{}", text(&out));
    assert_eq!(rec.record().unwrap().0, pid);
    let seen = rec.seen();
    assert_eq!(seen["linux"]["seccomp"]["listenerPath"], env.dir.path().join("seccomp.sock").to_str().unwrap());
    assert_eq!(seen["hooks"]["poststop"][0]["args"], json!(["devns", "hook", "poststop"]));
}
