//! Every way `devns run` can be refused: one clear line on stderr, a
//! non-zero exit, and nothing left behind (mounts, records, ownership,
//! processes).

mod common;
use common::*;
use std::os::unix::process::CommandExt;
use std::process::{Output, Stdio};

/// The single stderr line of a failed run.
fn one_error_line(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "expected failure, got {:?}; stderr: {err}", o.status);
    assert_eq!(err.lines().count(), 1, "expected exactly one line on stderr, got: {err:?}");
    err.trim_end().to_owned()
}

/// Runs `f` (given a cgroup to start devns in, as its container's cgroup
/// is made below devns's own) and checks that nothing of it remains
/// afterwards.
fn leaves_nothing(env: &Env, marker: &str, f: impl FnOnce(&TestCgroup) -> Output) -> Output {
    let mounts = env.host_mounts();
    let owned_before = env.owned();
    let cg = TestCgroup::new("errors");
    let o = f(&cg);
    assert_eq!(env.host_mounts(), mounts, "the host's mount table changed");
    assert_eq!(env.owned(), owned_before, "ownership changed");
    assert!(processes_with(marker).is_empty(), "a process of the failed run is still there");
    assert_eq!(cg.children(), Vec::<std::path::PathBuf>::new(), "a cgroup of the failed run is still there");
    o
}

/// `devns run ARGS` to completion, started in cgroup `cg`.
fn run_in(env: &Env, cg: &TestCgroup, args: &[&str]) -> Output {
    let mut c = cg.command(env!("CARGO_BIN_EXE_devns"));
    env.devns_env(&mut c).arg("run").args(args).stdin(Stdio::null()).output().expect("spawn devns")
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn unknown_device() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let m = marker("unknown");
    for (spec, msg) in [
        ("nosuchdev0", "devns: unknown device \"nosuchdev0\": no such device on this host"),
        ("b:250:250", "devns: unknown device \"b:250:250\": no such device on this host"),
        ("/dev/nosuchdev0", "devns: unknown device \"/dev/nosuchdev0\": No such file or directory (os error 2)"),
        ("/etc/passwd", "devns: unknown device \"/etc/passwd\": not a device node"),
        (
            "../etc",
            "devns: invalid device name \"../etc\": expected a /dev path, MAJ:MIN, c:MAJ:MIN, b:MAJ:MIN or a name such as loop3",
        ),
    ] {
        let o = leaves_nothing(&env, &m, |cg| run_in(&env, cg, &["--dev", spec, "--", "sh", "-c", "true", &m]));
        assert_eq!(o.status.code(), Some(125));
        assert_eq!(one_error_line(&o), msg);
    }
    assert_eq!(env.recorded_namespaces(), 0);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn device_owned_by_another_namespace() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let lp = Loop::new(true);
    let mut a = env.spawn(&["--name", "first", "--dev", &lp.name, "--", "sh", "-c", "echo ready; read x"]);
    assert_eq!(a.line(), "ready");
    let m = marker("owned");
    let o = leaves_nothing(&env, &m, |cg| run_in(&env, cg, &["--dev", &lp.name, "--", "sh", "-c", "true", &m]));
    let line = one_error_line(&o);
    assert!(
        line.starts_with(&format!("devns: device {} is already owned by namespace id:", lp.name))
            && line.ends_with("(first)"),
        "{line}"
    );
    // A partition follows its disk and cannot be given on its own.
    let o = leaves_nothing(&env, &m, |cg| run_in(&env, cg, &["--dev", &lp.partition(), "--", "sh", "-c", "true", &m]));
    assert_eq!(
        one_error_line(&o),
        format!(
            "devns: device {} is a partition: partitions follow their disk, assign {} instead",
            lp.partition(),
            lp.name
        )
    );
    assert_eq!(env.recorded_namespaces(), 1, "only A's record");
    a.send("\n");
    assert_eq!(a.wait().0, 0);
    assert_eq!(env.recorded_namespaces(), 0);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn not_root() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let m = marker("notroot");
    let o = leaves_nothing(&env, &m, |_| {
        env.devns().args(["run", "--", "sh", "-c", "true", &m]).uid(65534).gid(65534).output().unwrap()
    });
    assert_eq!(one_error_line(&o), "devns: devns run must run as root on the host; you are uid 65534");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn user_namespaces_unavailable() {
    if !privileged() {
        return;
    }
    // The kernel refuses new user namespaces to a chrooted process: a real
    // "unavailable", made in a private mount namespace of this test's own.
    let env = Env::new();
    let m = marker("nouserns");
    let jail = env.dir.path().join("jail");
    std::fs::create_dir(&jail).unwrap();
    let script = format!(
        "mount --rbind / {jail} && exec chroot {jail} {devns} run -- sh -c true {m}",
        jail = jail.display(),
        devns = env!("CARGO_BIN_EXE_devns"),
    );
    let o = leaves_nothing(&env, &m, |cg| {
        env.devns_env(cg.command("unshare").args(["--mount", "--propagation", "private", "--", "sh", "-c", &script]))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    let line = one_error_line(&o);
    assert!(line.starts_with("devns: user namespaces are unavailable: cannot create one: "), "{line}");
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(env.recorded_namespaces(), 0);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn command_that_cannot_be_executed() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let m = marker("noexec");
    let missing = format!("/nonexistent/{m}");
    let o = leaves_nothing(&env, &m, |cg| run_in(&env, cg, &["--", &missing]));
    assert_eq!(o.status.code(), Some(127));
    assert_eq!(
        one_error_line(&o),
        format!("devns: cannot execute \"{missing}\": No such file or directory (os error 2)")
    );

    // A host file without execute permission (not under /tmp, which is
    // private inside), with the marker as its argument.
    let o = leaves_nothing(&env, &m, |cg| run_in(&env, cg, &["--", "/etc/passwd", &m]));
    assert_eq!(o.status.code(), Some(126));
    assert!(one_error_line(&o).contains("Permission denied"));
    assert_eq!(env.recorded_namespaces(), 0);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn bad_config_names_file_line_and_problem() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    std::fs::write(env.config(), "# devns policy\nglobal = [\"null\",\n   \"zero\" \"full\"]\n").unwrap();
    let m = marker("config");
    let o = leaves_nothing(&env, &m, |cg| run_in(&env, cg, &["--", "sh", "-c", "true", &m]));
    let line = one_error_line(&o);
    let want = format!("devns: bad config file {}: line 3, column ", env.config().display());
    assert!(line.starts_with(&want), "{line}");

    std::fs::write(env.config(), "global = [\"null\", \"tty\"]\n").unwrap();
    let o = env.run(&["--", "ls", "-A", "/dev"]);
    assert!(o.status.success());
    let mut got: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect();
    got.sort();
    assert_eq!(got, ["fd", "loop-control", "mqueue", "null", "ptmx", "pts", "shm", "stderr", "stdin", "stdout", "tty"]);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn bad_rootfs() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let m = marker("rootfs");
    let o = leaves_nothing(&env, &m, |cg| {
        run_in(&env, cg, &["--rootfs", "/nonexistent/rootfs", "--", "sh", "-c", "true", &m])
    });
    assert_eq!(one_error_line(&o), "devns: bad --rootfs /nonexistent/rootfs: No such file or directory (os error 2)");
    let o = leaves_nothing(&env, &m, |cg| run_in(&env, cg, &["--rootfs", "/etc/passwd", "--", "sh", "-c", "true", &m]));
    assert!(one_error_line(&o).starts_with("devns: bad --rootfs /etc/passwd: not a directory"));
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn device_policy_that_cannot_be_attached() {
    if !privileged() {
        return;
    }
    // An ancestor's program attached without BPF_F_ALLOW_MULTI forbids
    // any other below it: the run fails, says why, and leaves nothing.
    let env = Env::new();
    let m = marker("exclusive");
    let o = leaves_nothing(&env, &m, |cg| {
        let allow_all = [
            devns_core::bpf::Insn { code: 0xb7, dst: 0, src: 0, off: 0, imm: 1 },
            devns_core::bpf::Insn { code: 0x95, dst: 0, src: 0, off: 0, imm: 0 },
        ];
        let prog = devns_sys::bpf::prog_load(15, &devns_core::bpf::to_bytes(&allow_all), "GPL", "exclusive").unwrap();
        let fd = devns::cgroup::open(&cg.path).unwrap();
        devns_sys::bpf::prog_attach(&prog, &fd, devns_sys::bpf::BPF_CGROUP_DEVICE, 0).unwrap();
        let o = run_in(&env, cg, &["--", "sh", "-c", "true", &m]);
        devns_sys::bpf::prog_detach(&prog, &fd, devns_sys::bpf::BPF_CGROUP_DEVICE).unwrap();
        o
    });
    let line = one_error_line(&o);
    assert!(line.starts_with("devns: cannot set up the device access policy"), "{line}");
    assert!(line.contains("device_policy = false") && line.contains("cannot attach the device program"), "{line}");
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(env.recorded_namespaces(), 0);

    // Turned off by the operator: the run goes on without the layer.
    std::fs::write(env.config(), "device_policy = false\n").unwrap();
    let o = leaves_nothing(&env, &m, |cg| run_in(&env, cg, &["--", "grep", "^0::", "/proc/self/cgroup"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("/devns-"), "no cgroup of its own");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_host_without_a_cgroup2_mount_gets_one_under_the_state_dir() {
    if !privileged() {
        return;
    }
    // In a private mount namespace with cgroup2 unmounted, devns mounts the
    // hierarchy itself (below its state dir) and the policy works as usual.
    let env = Env::new();
    let m = marker("nocgroup2");
    let root = cgroup_root();
    let shared = SharedDir::new("nocgroup2");
    let mem = shared.node("mem", 'c', 1, 1);
    let script = format!(
        "umount -l {root} && ! grep -q ' - cgroup2 ' /proc/self/mountinfo && exec {devns} run -- sh -c 'grep ^0:: /proc/self/cgroup; head -c1 {mem} 2>&1; echo {m}'",
        root = root.display(),
        devns = env!("CARGO_BIN_EXE_devns"),
        mem = mem.path(),
    );
    let o = leaves_nothing(&env, &m, |cg| {
        env.devns_env(cg.command("unshare").args(["--mount", "--propagation", "private", "--", "sh", "-c", &script]))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out} {}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("/devns-") && out.contains("Operation not permitted"), "{out}");
}

/// A command that prints, its standard output a pipe nobody reads any
/// more (`devns ls | head -1`): it ends as Unix tools do, by `SIGPIPE`,
/// quietly, not with a panic or an error line.
#[test]
fn a_printing_command_ends_quietly_on_a_closed_pipe() {
    use std::os::unix::process::ExitStatusExt;
    for args in [&["generate", "completions", "bash"][..], &["oci", "profile"], &["doctor", "--json"]] {
        let (reader, writer) = rustix::pipe::pipe().expect("pipe");
        drop(reader);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_devns"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .expect("spawn devns");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "devns {args:?}: {:?}, stderr: {err}", out.status);
        assert!(err.is_empty(), "devns {args:?} said: {err}");
    }
}
