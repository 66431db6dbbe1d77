//! `devns run` against the real kernel, as root: views, devices, isolation
//! between views, exit statuses and signals.

mod common;
use common::*;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_ok(o: &std::process::Output) {
    assert!(o.status.success(), "status {:?}, stderr: {}", o.status, String::from_utf8_lossy(&o.stderr));
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn default_view_holds_exactly_the_global_set_symlinks_and_mountpoints() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mounts = env.host_mounts();
    let o = env.run(&["--", "ls", "-A", "/dev"]);
    assert_ok(&o);
    assert_eq!(sorted(stdout(&o).lines().map(str::to_owned).collect()), default_view());
    assert_eq!(env.host_mounts(), mounts, "devns run changed the host's mount table");
    assert_eq!(env.recorded_namespaces(), 0, "the run's record outlived it");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn null_takes_writes_zero_gives_zeros_and_root_is_unprivileged_on_the_host() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let script = "echo data > /dev/null && echo null-ok; head -c 8 /dev/zero | od -An -tx1; \
                  id -u; cat /proc/self/uid_map; readlink /dev/stdin; stat -c '%F %a %U' /dev/null /dev/pts";
    let o = env.run(&["--", "sh", "-c", script]);
    assert_ok(&o);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "null-ok");
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["00"; 8]);
    assert_eq!(lines[2], "0", "CMD runs as root of its namespace");
    let map: Vec<u64> = lines[3].split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(map[0], 0);
    assert!(map[1] >= 65_536, "container root must be an unprivileged host uid, got {}", map[1]);
    assert_eq!(map[2], 65_536);
    assert_eq!(lines[4], "/proc/self/fd/0");
    let host = rustix::fs::stat("/dev/null").unwrap();
    assert_eq!(lines[5], format!("character special file {:o} root", host.st_mode & 0o7777));
    assert_eq!(lines[6], "directory 755 root");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn ptys_work_inside() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    // util-linux `script` allocates a pty from the namespace's own devpts.
    let o = env.run(&["--", "script", "-qec", "tty", "/dev/null"]);
    assert_ok(&o);
    assert!(stdout(&o).trim().starts_with("/dev/pts/"), "tty said {:?}", stdout(&o));
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn loop_device_is_owned_by_a_with_its_partition_and_absent_from_b() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let lp = Loop::new(true);
    let mut b = env.spawn(&["--", "sh", "-c", "echo ready; read x; ls -A /dev; echo end"]);
    assert_eq!(b.line(), "ready");

    let script = format!("blockdev --getsize64 /dev/{0}; ls -A /dev; echo end", lp.name);
    let mut a = env.spawn(&["--dev", &lp.name, "--", "sh", "-c", &format!("{script}; read x")]);
    let size = a.line();
    assert_eq!(size, (8u64 << 20).to_string(), "blockdev in A");
    let in_a = a.lines_until("end");
    assert!(in_a.contains(&lp.name) && in_a.contains(&lp.partition()), "A's /dev: {in_a:?}");
    let mut want = default_view();
    want.extend([lp.name.clone(), lp.partition()]);
    assert_eq!(sorted(in_a), sorted(want));

    // While A runs, the device is A's.
    let owned = env.owned();
    let names: Vec<&str> = owned.iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(sorted(names.iter().map(|s| s.to_string()).collect()), sorted(vec![lp.name.clone(), lp.partition()]));

    b.send("go\n");
    assert_eq!(sorted(b.lines_until("end")), default_view(), "B sees only the global set");
    assert_eq!(b.wait().0, 0);

    a.send("go\n");
    assert_eq!(a.wait().0, 0);
    assert!(env.owned().is_empty(), "the device returns to host when the run ends");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn dev_accepts_path_number_and_name() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let lp = Loop::new(false);
    let st = rustix::fs::stat(format!("/dev/{}", lp.name)).unwrap();
    let num = format!("{}:{}", rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    for spec in [format!("/dev/{}", lp.name), num.clone(), format!("b:{num}"), lp.name.clone()] {
        let o = env.run(&["--dev", &spec, "--", "ls", "-A", "/dev"]);
        assert_ok(&o);
        assert!(stdout(&o).lines().any(|l| l == lp.name), "--dev {spec}: {}", stdout(&o));
    }
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn changes_in_one_view_reach_neither_another_view_nor_the_host() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let host_null = rustix::fs::stat("/dev/null").unwrap();
    let host_zero = rustix::fs::stat("/dev/zero").unwrap();
    let mut a = env.spawn(&[
        "--",
        "sh",
        "-c",
        "echo ready; read x; rm /dev/null && ln -s /etc /dev/evil && chmod 600 /dev/zero && echo done; \
         ls -A /dev; echo end; read y",
    ]);
    let mut b = env.spawn(&["--", "sh", "-c", "echo ready; read x; ls -A /dev; stat -c %a /dev/zero; echo end"]);
    assert_eq!(a.line(), "ready");
    assert_eq!(b.line(), "ready");
    a.send("go\n");
    assert_eq!(a.line(), "done");
    let in_a = a.lines_until("end");
    assert!(!in_a.contains(&"null".to_owned()) && in_a.contains(&"evil".to_owned()), "A: {in_a:?}");

    b.send("go\n");
    let mut in_b = b.lines_until("end");
    let zero_mode = in_b.pop().unwrap();
    assert_eq!(sorted(in_b), default_view());
    assert_eq!(zero_mode, format!("{:o}", host_zero.st_mode & 0o777));

    let now_null = rustix::fs::stat("/dev/null").unwrap();
    assert_eq!((now_null.st_mode, now_null.st_rdev), (host_null.st_mode, host_null.st_rdev));
    assert_eq!(rustix::fs::stat("/dev/zero").unwrap().st_mode, host_zero.st_mode);
    assert!(std::fs::symlink_metadata("/dev/evil").is_err(), "A's symlink reached the host");
    a.send("go\n");
    assert_eq!(a.wait().0, 0);
    assert_eq!(b.wait().0, 0);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn exit_status_is_the_commands() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    assert_eq!(env.run(&["--", "sh", "-c", "exit 7"]).status.code(), Some(7));
    assert_eq!(env.run(&["--", "true"]).status.code(), Some(0));
    // A command that leaves init's process group (as a shell with job
    // control does) is still reaped, with its orphans.
    assert_eq!(env.run(&["--", "setsid", "sh", "-c", "sleep 30 & exit 5"]).status.code(), Some(5));
    // Killed by a signal: 128 + its number, as shells and runtimes report it.
    assert_eq!(env.run(&["--", "sh", "-c", "kill -9 $$"]).status.code(), Some(137));
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn signals_reach_the_command() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut c =
        env.spawn(&["--", "sh", "-c", "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done"]);
    assert_eq!(c.line(), "ready");
    rustix::process::kill_process(rustix::process::Pid::from_raw(c.pid()).unwrap(), rustix::process::Signal::TERM)
        .unwrap();
    assert_eq!(c.line(), "got-term");
    assert_eq!(c.wait().0, 42);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_command_starts_with_no_signal_blocked_and_sigterm_ends_it() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let o = env.run(&["--", "grep", "SigBlk", "/proc/self/status"]);
    assert_ok(&o);
    assert_eq!(stdout(&o).split_whitespace().nth(1), Some("0000000000000000"));
    // A command that keeps the default handling of SIGTERM dies of it.
    let mut c = env.spawn(&["--", "sh", "-c", "echo ready; exec sleep 1000"]);
    assert_eq!(c.line(), "ready");
    rustix::process::kill_process(rustix::process::Pid::from_raw(c.pid()).unwrap(), rustix::process::Signal::TERM)
        .unwrap();
    assert_eq!(c.wait().0, 128 + libc::SIGTERM);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn killing_devns_ends_the_container_and_frees_its_devices() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let lp = Loop::new(false);
    let m = marker("kill");
    // The marker is the shell's $0, so it shows in its command line.
    let mut c = env.spawn(&["--dev", &lp.name, "--", "sh", "-c", "echo ready; while :; do sleep 1; done", &m]);
    assert_eq!(c.line(), "ready");
    assert_eq!(env.owned().len(), 1);
    drop(c); // SIGKILL to devns itself
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !processes_with(&m).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(processes_with(&m).is_empty(), "container processes outlived devns");
    assert!(env.owned().is_empty(), "a dead run's devices must return to host");
    assert_eq!(env.recorded_namespaces(), 0);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn name_sets_the_hostname_and_must_be_unique() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut a = env.spawn(&["--name", "web1", "--", "sh", "-c", "hostname; read x"]);
    assert_eq!(a.line(), "web1");
    let o = env.run(&["--name", "web1", "--", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        "devns: name \"web1\" is already used by a running namespace"
    );
    a.send("\n");
    assert_eq!(a.wait().0, 0);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn rootfs_is_used_as_root() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let root = busybox_rootfs(env.dir.path());
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/marker"), "inside-rootfs\n").unwrap();
    let o = env.run(&[
        "--rootfs",
        root.to_str().unwrap(),
        "--",
        "/bin/busybox",
        "sh",
        "-c",
        "/bin/busybox cat /etc/marker; /bin/busybox ls -A /dev; /bin/busybox ls /proc/self/ns >/dev/null && echo proc-ok; \
         /bin/busybox grep -E ' /dev/(shm|mqueue) .* - (tmpfs|mqueue) ' /proc/self/mountinfo | /bin/busybox wc -l",
    ]);
    assert_ok(&o);
    let out = stdout(&o);
    let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(lines.remove(0), "inside-rootfs");
    assert_eq!(lines.pop().map(|l| l.trim().to_owned()).as_deref(), Some("2"), "its own shm and mqueue: {out}");
    assert_eq!(lines.pop().as_deref(), Some("proc-ok"));
    assert_eq!(sorted(lines), default_view());
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn network_is_loopback_only_unless_host() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    // /proc/net/dev lists the interfaces of the reader's network namespace.
    let ifaces = |o: &std::process::Output| -> Vec<String> {
        sorted(stdout(o).lines().skip(2).filter_map(|l| l.split(':').next()).map(|n| n.trim().to_owned()).collect())
    };
    let own = env.run(&["--", "sh", "-c", "cat /proc/net/dev; grep -q . /sys/class/net/lo/flags"]);
    assert_ok(&own);
    assert_eq!(ifaces(&own), ["lo"]);
    // Loopback is up: a TCP listener on 127.0.0.1 accepts a connection.
    let lo = env.run(&["--", "busybox", "sh", "-c", "busybox nc -l -p 4711 -e true & for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do busybox nc 127.0.0.1 4711 </dev/null 2>/dev/null && echo connected && break; sleep 0.1; done"]);
    assert!(stdout(&lo).contains("connected"), "{}", String::from_utf8_lossy(&lo.stderr));
    let host = env.run(&["--net", "host", "--", "cat", "/proc/net/dev"]);
    assert_ok(&host);
    let on_host = std::fs::read_to_string("/proc/net/dev").unwrap();
    assert_eq!(ifaces(&host).len(), on_host.lines().skip(2).count());
    let bad = env.run(&["--net", "bridge", "--", "true"]);
    assert!(!bad.status.success());
}

/// A stand-alone run's disk that leaves the host is no longer its own: a
/// disk the host makes with the same numbers (here while the run's keeper,
/// its agent, is stopped, so that it reads the `remove` late) is not in
/// its view nor its claim.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_disk_made_again_with_the_numbers_of_a_run_s_own_is_not_the_run_s() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let l = AddedLoop::new();
    let name = l.name();
    let mut c = shell_container(&env, &["--dev", &name]);
    assert_eq!(c.sh(&format!("[ -b /dev/{name} ] && echo there")), ["there"]);
    assert!(env.owned().iter().any(|o| o["name"] == name.as_str()));
    {
        let _stopped = Stopped::new(c.pid());
        assert!(loop_ctl(LOOP_CTL_REMOVE, l.0) >= 0, "remove {name}");
        assert!(loop_ctl(LOOP_CTL_ADD, l.0) >= 0, "make {name} again");
    }
    eventually("the new disk is nobody's", || !env.owned().iter().any(|o| o["name"] == name.as_str()));
    assert_eq!(c.sh(&format!("[ -e /dev/{name} ] || echo gone")), ["gone"]);
}

/// Without a daemon too, each device's uevents reach its owner and nobody
/// else: a stand-alone run serves its namespace through the same engine.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_stand_alone_run_hears_its_own_devices_uevents_and_no_others() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let (la, lb) = (Loop::new(true), Loop::new(true));
    let listen = |name: &str, dev: &str| {
        let script =
            format!("{}; echo ready; wait", uevents_listened_by("busybox uevent sh -c 'echo \"$ACTION $DEVNAME\"'"));
        let mut c = env.spawn(&["--name", name, "--dev", dev, "--", "sh", "-c", &script]);
        assert_eq!(c.line(), "ready");
        c
    };
    let mut a = listen("a", &la.name);
    let mut b = listen("b", &lb.name);
    let partx = |op: &str, disk: &str| {
        let ok = std::process::Command::new("partx").args([op, &format!("/dev/{disk}")]).status().unwrap();
        assert!(ok.success(), "partx {op} {disk}");
    };
    partx("-d", &la.name);
    assert_eq!(a.line(), format!("remove {}", la.partition()));
    partx("-a", &la.name);
    assert_eq!(a.line(), format!("add {}", la.partition()));
    // b's own events are the very next b hears: nothing of a's came first.
    partx("-d", &lb.name);
    assert_eq!(b.line(), format!("remove {}", lb.partition()), "b heard something it does not own");
    partx("-a", &lb.name);
    assert_eq!(b.line(), format!("add {}", lb.partition()));
    partx("-d", &la.name);
    assert_eq!(a.line(), format!("remove {}", la.partition()), "a heard something it does not own");
    partx("-a", &la.name);
}

/// The container sees its own cgroup as the root of a cgroup namespace of
/// its own, which on the host is the cgroup devns made for it.
fn the_container_s_cgroup_is_the_root_of_its_cgroup_namespace(env: &Env, name: &str) {
    let script = "cat /proc/self/cgroup; echo init; cat /proc/1/cgroup; echo ready; read x";
    let mut c = env.spawn(&["--name", name, "--", "sh", "-c", script]);
    let lines = c.lines_until("ready");
    // The v2 line, and the v1 hierarchies a hybrid host has: every one
    // rooted where the container is.
    assert_eq!(
        lines.iter().filter(|l| *l == "0::/").count(),
        2,
        "the container names no cgroup of the host's: {lines:?}"
    );
    assert!(lines.iter().all(|l| l == "init" || l.ends_with(":/")), "{lines:?}");
    let cgroup = record_of(env, name).cgroup.expect("a cgroup of its own").path;
    assert!(cgroup.ends_with(&format!("/devns-{}", record_of(env, name).id.expect("an id").0)), "{cgroup}");
    let init = c.init();
    let own = std::fs::read_link(format!("/proc/{init}/ns/cgroup")).unwrap();
    assert_ne!(own, std::fs::read_link("/proc/self/ns/cgroup").unwrap(), "a cgroup namespace of its own");
    let seen = devns::cgroup::v2_path(&std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap()).unwrap();
    assert!(cgroup.ends_with(&seen), "host sees {seen:?}, the record says {cgroup}");
    c.send("\n");
    assert_eq!(c.wait().0, 0);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_stand_alone_run_has_a_cgroup_namespace_rooted_at_its_cgroup() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    the_container_s_cgroup_is_the_root_of_its_cgroup_namespace(&env, "cgns");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_run_through_the_daemon_has_a_cgroup_namespace_rooted_at_its_cgroup() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    the_container_s_cgroup_is_the_root_of_its_cgroup_namespace(&env, "cgns");
}

/// The mountinfo line (read inside) of the mount at `at`: its mount
/// options, filesystem type and superblock options.
fn mount_at<'a>(mountinfo: &'a [String], at: &str) -> (Vec<&'a str>, &'a str, Vec<&'a str>) {
    let line = mountinfo
        .iter()
        .rfind(|l| l.split(' ').nth(4) == Some(at))
        .unwrap_or_else(|| panic!("nothing mounted at {at}: {mountinfo:?}"));
    let (mine, fs) = line.split_once(" - ").unwrap();
    let fs: Vec<&str> = fs.split(' ').collect();
    (mine.split(' ').nth(5).unwrap().split(',').collect(), fs[0], fs[2].split(',').collect())
}

const AS_USER: &str = "setpriv --reuid 1000 --regid 1000 --clear-groups";

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn dev_shm_and_mqueue_are_the_container_s_own_and_go_with_it() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let shared = SharedDir::new("ipc");
    let bin = shared.testbin();
    let bin = bin.display();
    let host_shm = Marker::new("/dev/shm", "ipc-host");
    let m = marker("ipc");
    let mounts = env.host_mounts();
    let script = format!(
        "grep -E ' /dev/(shm|mqueue) ' /proc/self/mountinfo; echo ==; \
         stat -c '%n %a %u %g' /dev/shm /dev/mqueue; echo ==; \
         echo by-root > /dev/shm/{m}-root-file && {AS_USER} sh -c 'echo by-user > /dev/shm/{m}-user-file'; \
         stat -c '%n %u %g' /dev/shm/{m}-root-file /dev/shm/{m}-user-file; echo ==; \
         DEVNS_IPC_NAME={m}-r {bin} posix-ipc; DEVNS_IPC_NAME={m}-u {AS_USER} {bin} posix-ipc; echo ==; \
         stat -c '%n %u %a' /dev/mqueue/{m}-r /dev/mqueue/{m}-u /dev/shm/{m}-u; head -c 7 /dev/mqueue/{m}-u; echo; \
         [ -e /dev/shm/{} ] && echo host-shm-seen; echo ready; read x",
        host_shm.0.file_name().unwrap().to_string_lossy()
    );
    let mut c = env.spawn(&["--", "sh", "-c", &script]);
    let out = c.lines_until("ready");
    let parts: Vec<&[String]> = out.split(|l| l == "==").collect();
    assert_eq!(parts.len(), 5, "{out:?}");
    for (at, fstype) in [("/dev/shm", "tmpfs"), ("/dev/mqueue", "mqueue")] {
        let (opts, fs, sopts) = mount_at(parts[0], at);
        assert_eq!(fs, fstype, "{at}: {out:?}");
        for o in ["nosuid", "nodev", "noexec"] {
            assert!(opts.contains(&o), "{at} is not {o}: {out:?}");
        }
        if at == "/dev/shm" {
            assert!(sopts.contains(&"size=65536k"), "64 MiB by default: {out:?}");
        }
    }
    // Sticky, world-writable, container root's.
    assert_eq!(parts[1], ["/dev/shm 1777 0 0", "/dev/mqueue 1777 0 0"]);
    assert_eq!(parts[2], [format!("/dev/shm/{m}-root-file 0 0"), format!("/dev/shm/{m}-user-file 1000 1000")]);
    assert_eq!(parts[3], ["shm ok", "mq got hello", "shm ok", "mq got hello"], "{out:?}");
    let rest = parts[4];
    assert_eq!(
        rest[..3],
        [format!("/dev/mqueue/{m}-r 0 600"), format!("/dev/mqueue/{m}-u 1000 600"), format!("/dev/shm/{m}-u 1000 600")]
    );
    assert_eq!(rest[3], "QSIZE:5", "one message is left in the queue: {out:?}");
    assert_eq!(rest.len(), 4, "the host's /dev/shm is not the container's: {out:?}");
    // Its mounts are in its own mount namespace alone: the host's table
    // and the host's /dev/shm stay as they were.
    assert_eq!(env.host_mounts(), mounts, "the container's mounts reached the host");
    let on_host: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&m))
        .collect();
    assert!(on_host.is_empty(), "{on_host:?}");
    c.send("\n");
    assert_eq!(c.wait().0, 0);
    assert_eq!(env.host_mounts(), mounts, "something of the container's stayed mounted");
    assert!(std::path::Path::new(&host_shm.0).exists(), "the host's /dev/shm was touched");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn two_containers_share_no_shm_file_and_no_queue() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let shared = SharedDir::new("ipc2");
    let bin = shared.testbin();
    let mut a = shell_container(&env, &[]);
    let mut b = shell_container(&env, &[]);
    let made = a.sh(&format!("echo a > /dev/shm/only-a; DEVNS_IPC_NAME=qa {} posix-ipc", bin.display()));
    assert_eq!(made, ["shm ok", "mq got hello"]);
    assert_eq!(a.sh("ls -A /dev/shm /dev/mqueue"), ["/dev/mqueue:", "qa", "", "/dev/shm:", "only-a", "qa"]);
    assert_eq!(b.sh("ls -A /dev/shm /dev/mqueue"), ["/dev/mqueue:", "", "/dev/shm:"], "B sees A's");
    // Nor does B reach A's objects by name: its own of the same name are
    // new (the role makes them with O_EXCL).
    assert_eq!(b.sh(&format!("DEVNS_IPC_NAME=qa {} posix-ipc", bin.display())), ["shm ok", "mq got hello"]);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn shm_size_bounds_dev_shm() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let script = "grep ' /dev/shm ' /proc/self/mountinfo; \
                  dd if=/dev/zero of=/dev/shm/big bs=1024 count=2048 2>/dev/null || echo full";
    let o = env.run(&["--shm-size", "1m", "--", "sh", "-c", script]);
    assert_ok(&o);
    let lines: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    assert!(mount_at(&lines[..1], "/dev/shm").2.contains(&"size=1024k"), "{lines:?}");
    assert_eq!(lines[1], "full");
    let o = env.run(&["--shm-size", "0", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("a size of 0 would leave /dev/shm unlimited"));
}

/// Through a daemon, the container makes them itself too.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_run_through_the_daemon_has_its_own_shm_and_mqueue() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let mounts = env.host_mounts();
    let o = env.run(&["--", "sh", "-c", "grep -E ' /dev/(shm|mqueue) ' /proc/self/mountinfo"]);
    assert_ok(&o);
    let lines: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    assert_eq!(mount_at(&lines, "/dev/shm").1, "tmpfs", "{lines:?}");
    assert_eq!(mount_at(&lines, "/dev/mqueue").1, "mqueue", "{lines:?}");
    eventually("the namespace is let go", || env.recorded_namespaces() == 0);
    assert_eq!(env.host_mounts(), mounts);
}
