//! `devns daemon` against the real kernel, as root: live ownership seen from
//! inside containers, hotplug, namespace lifetime, crash safety, bad input.

mod common;
use common::*;
use serde_json::json;
use std::path::Path;

/// Kills this test's processes, found by their marker.
fn kill_marked(mark: &str) {
    for pid in processes_with(mark) {
        if let Some(p) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

struct KillMarked(String);
impl Drop for KillMarked {
    fn drop(&mut self) {
        kill_marked(&self.0);
    }
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn hotplug_reaches_exactly_the_right_views() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let mut a = shell_container(&env, &["--name", "a"]);
    let _b = shell_container(&env, &["--name", "b"]);

    // A host-owned zram device: in no view; assigned: in a's only; removed: gone.
    let z = Zram::new();
    let zname = format!("zram{}", z.0);
    eventually("zram known to the daemon", || devns_ok(&env, &["ls"]).contains(&zname));
    assert!(!view_names(&env, "a").contains(&zname) && !view_names(&env, "b").contains(&zname));
    devns_ok(&env, &["assign", &zname, "--to", "a"]);
    assert!(view_names(&env, "a").contains(&zname));
    assert!(!view_names(&env, "b").contains(&zname));
    assert!(a.sh(&format!("ls /dev/{zname}")).contains(&format!("/dev/{zname}")), "a sees it inside");
    drop(z);
    eventually("zram gone from a's view", || !view_names(&env, "a").contains(&zname));
    assert!(a.sh("ls /dev").iter().all(|n| *n != zname));

    // A loop device made global: in every view; removed: in none.
    let l = AddedLoop::new();
    let lname = l.name();
    eventually("loop known to the daemon", || devns_ok(&env, &["ls"]).contains(&lname));
    assert!(!view_names(&env, "a").contains(&lname));
    devns_ok(&env, &["global", &lname, "on"]);
    assert!(view_names(&env, "a").contains(&lname) && view_names(&env, "b").contains(&lname));
    drop(l);
    eventually("loop gone from every view", || {
        !view_names(&env, "a").contains(&lname) && !view_names(&env, "b").contains(&lname)
    });
}

/// A disk removed and made again with the same numbers before the daemon
/// has read its `remove` (here: while the daemon is stopped) is a new disk:
/// the host's, not the old one's owner's; the owner's view and device map
/// lose it with the `remove`, whatever sysfs shows by then.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_disk_made_again_with_the_numbers_of_an_assigned_one_is_the_host_s() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let d = Daemon::start(&env);
    let mut a = shell_container(&env, &["--name", "a"]);
    let l = AddedLoop::new();
    let name = l.name();
    eventually("loop known to the daemon", || devns_ok(&env, &["ls"]).contains(&name));
    devns_ok(&env, &["assign", &name, "--to", "a"]);
    assert_eq!(a.sh(&format!("[ -b /dev/{name} ] && echo there")), ["there"]);
    {
        let _stopped = Stopped::new(d.pid());
        assert!(loop_ctl(LOOP_CTL_REMOVE, l.0) >= 0, "remove {name}");
        assert!(loop_ctl(LOOP_CTL_ADD, l.0) >= 0, "make {name} again");
    }
    let owned_by_a = || env.owned().iter().any(|o| o["name"] == name.as_str());
    eventually("the new disk is nobody's", || !owned_by_a());
    eventually("gone from a's view", || !view_names(&env, "a").contains(&name));
    assert_eq!(a.sh(&format!("[ -e /dev/{name} ] || echo gone")), ["gone"]);
    assert!(devns_ok(&env, &["ls"]).contains(&name), "the host has the new one");
    // And it stays the host's: the new disk's own events give it no owner.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!owned_by_a());
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn assign_and_release_are_seen_inside_with_partitions_and_hotplugged_partitions() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let mut a = shell_container(&env, &["--name", "a"]);
    let mut b = shell_container(&env, &["--name", "b"]);
    let lp = Loop::new(true);
    let (disk, part) = (lp.name.clone(), lp.partition());

    devns_ok(&env, &["assign", &disk, "--to", "a"]);
    let in_a = a.sh("ls /dev");
    assert!(in_a.contains(&disk) && in_a.contains(&part), "{in_a:?}");
    assert_eq!(a.sh(&format!("blockdev --getsize64 /dev/{disk}")), [(8u64 << 20).to_string()]);
    assert!(!b.sh("ls /dev").contains(&disk));
    let taken = env.devns().args(["assign", &disk, "--to", "b"]).output().unwrap();
    assert!(String::from_utf8_lossy(&taken.stderr).contains("already owned by namespace"), "{taken:?}");

    // A partition added later follows its disk (host uevent → a's view).
    let _ = std::process::Command::new("partx").args(["-d", &format!("/dev/{disk}")]).status();
    eventually("partition gone", || !view_names(&env, "a").contains(&part));
    assert!(std::process::Command::new("partx").args(["-a", &format!("/dev/{disk}")]).status().unwrap().success());
    eventually("new partition in a's view", || view_names(&env, "a").contains(&part));
    assert!(!view_names(&env, "b").contains(&part));

    devns_ok(&env, &["release", &disk]);
    let in_a = a.sh("ls /dev");
    assert!(!in_a.contains(&disk) && !in_a.contains(&part), "{in_a:?}");
    devns_ok(&env, &["assign", &disk, "--to", "b"]);
    assert!(b.sh("ls /dev").contains(&part));
    assert!(!a.sh("ls /dev").contains(&disk));
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn kill_9_amid_a_burst_loses_no_acknowledged_operation() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut d = Daemon::start(&env);
    let _a = shell_container(&env, &["--name", "a"]);
    let loops = [Loop::new(false), Loop::new(false)];
    let names: Vec<String> = loops.iter().map(|l| l.name.clone()).collect();
    let mut api = Api::connect(&env);
    // The expected owner of each device after every acknowledged operation,
    // and the operation in flight when the daemon died.
    let mut acked: [bool; 2] = [false, false];
    let mut in_flight: Option<(usize, bool)> = None;
    let total = 1000;
    let kill_at = 400;
    let mut done = 0;
    while done < total {
        let i = done % 2;
        let assign = !acked[i];
        if done == kill_at {
            // Send the request and kill the daemon while it may be mid-way.
            let req = if assign {
                json!({"v": 1, "op": "assign", "device": names[i], "to": "a"})
            } else {
                json!({"v": 1, "op": "release", "device": names[i]})
            };
            let mut line = serde_json::to_vec(&req).unwrap();
            line.push(b'\n');
            api.send_raw(&line).unwrap();
            in_flight = Some((i, assign));
            d.kill9();
            d = Daemon::start(&env);
            api = Api::connect(&env);
            done += 1;
            continue;
        }
        let r = if assign {
            api.call(json!({"op": "assign", "device": names[i], "to": "a"}))
        } else {
            api.call(json!({"op": "release", "device": names[i]}))
        };
        if r["ok"] == true {
            acked[i] = assign;
        } else {
            // After the restart an in-flight op may have landed: then the
            // next op finds the device already in that state.
            let (fi, fa) = in_flight.take().expect("only the op after the crash may be refused");
            assert_eq!(fi, i, "{r}");
            acked[i] = fa;
            continue;
        }
        done += 1;
    }
    // Registry, state and view agree with the acknowledged history.
    let owned: Vec<String> = env.owned().iter().map(|d| d["name"].as_str().unwrap().to_owned()).collect();
    let view = view_names(&env, "a");
    for (i, n) in names.iter().enumerate() {
        assert_eq!(owned.contains(n), acked[i], "registry for {n}");
        assert_eq!(view.contains(n), acked[i], "view for {n}");
    }
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn lifecycles_leave_nothing_and_the_daemon_holds_no_extra_fds() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let d = Daemon::start(&env);
    let lp = Loop::new(false);
    let mark = marker("life");
    let baseline = {
        // One lifecycle first, so lazily opened fds are counted.
        let o = env.run(&["--dev", &lp.name, "--", "true"]);
        assert!(o.status.success());
        eventually("first lifecycle released", || env.owned().is_empty());
        // Its namespace (with the fds it holds: view, /tmp, listener) is
        // gone only after its devices are released.
        eventually("first namespace gone", || devns_ok(&env, &["ns", "ls", "--json"]).trim() == "[]");
        // The fewest over a moment: a client's connection (and with it a
        // listener) closes asynchronously, and would count as the daemon's.
        (0..50)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                d.fd_count()
            })
            .min()
            .expect("sampled")
    };
    for i in 0..100 {
        if i % 3 == 0 {
            let mut c = env.spawn(&["--dev", &lp.name, "--", "sh", "-c", "echo ready; sleep 1000", &mark]);
            assert_eq!(c.line(), "ready");
            drop(c); // SIGKILL to devns run: its container dies with it
        } else {
            let o = env.run(&["--dev", &lp.name, "--", "sh", "-c", "ls /dev >/dev/null", &mark]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        eventually("the device returns to host", || env.owned().is_empty());
    }
    eventually("no namespace left", || devns_ok(&env, &["ns", "ls", "--json"]).trim() == "[]");
    assert!(processes_with(&mark).is_empty());
    let views: Vec<_> = std::fs::read_dir(env.state_dir().join("views")).unwrap().collect();
    assert!(views.is_empty(), "views left: {views:?}");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let state = env.state_dir().join("views").canonicalize().unwrap();
    assert_eq!(mountinfo.lines().filter(|l| l.contains(&*state.to_string_lossy())).count(), 1, "only the views bind");
    assert_eq!(env.recorded_namespaces(), 0);
    // Connections and listeners of the last containers close asynchronously.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while d.fd_count() > baseline && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .flatten()
        .map(|e| format!("{} -> {:?}", e.file_name().to_string_lossy(), std::fs::read_link(e.path())))
        .collect();
    assert!(d.fd_count() <= baseline, "the daemon's fd count grew from {baseline}: {fds:#?}");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn bad_input_changes_nothing_and_the_daemon_keeps_serving() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let d = Daemon::start(&env);
    let _a = shell_container(&env, &["--name", "a"]);
    let _b = shell_container(&env, &["--name", "b"]);
    let lp = Loop::new(false);
    devns_ok(&env, &["assign", &lp.name, "--to", "a"]);
    // Other tests hot-plug devices meanwhile: compare what this daemon owns.
    let before = (devns_ok(&env, &["ls", "--owned", "--json"]), devns_ok(&env, &["ns", "ls", "--json"]));

    let mut api = Api::connect(&env);
    api.send_raw(b"{not json\n").unwrap();
    let r = api.read().unwrap();
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().starts_with("request is not valid JSON"), "{r}");
    for (req, want) in [
        (json!({"op": "assign", "device": "nosuchdev0", "to": "a"}), "unknown device \"nosuchdev0\""),
        (json!({"op": "assign", "device": lp.name, "to": "nosuchns"}), "unknown namespace \"nosuchns\""),
        (json!({"op": "assign", "device": lp.name, "to": "b"}), "is already owned by namespace id:"),
        (json!({"op": "release", "device": "null"}), "device null is owned by no namespace"),
        (json!({"op": "explode"}), "unknown variant `explode`"),
        (json!({"op": "global", "device": "loop-control", "on": true}), "cannot be global"),
    ] {
        let r = api.call(req.clone());
        assert_eq!(r["ok"], false, "{req}");
        assert!(r["error"].as_str().unwrap().contains(want), "{req}: {r}");
    }
    api.send_raw(b"{\"v\":7,\"op\":\"ls\"}\n").unwrap();
    let r = api.read().unwrap();
    assert!(r["error"].as_str().unwrap().contains("unsupported API version"), "{r}");

    // Oversized: an error, then the connection is closed.
    let mut big = Api::connect(&env);
    let _ = big.send_raw(&vec![b'x'; 70 * 1024]);
    let r = big.read().expect("an error reply before the close");
    assert!(r["error"].as_str().unwrap().contains("larger than"), "{r}");
    assert!(big.read().is_none(), "connection closed");

    // A request that never ends is closed after the deadline; one whose
    // client vanishes mid-way costs nothing.
    let mut slow = Api::connect(&env);
    slow.send_raw(b"{\"v\":1,\"op\":").unwrap();
    let mut gone = Api::connect(&env);
    gone.send_raw(b"{\"v\":1,\"op\":\"assign\",\"dev").unwrap();
    drop(gone);
    assert!(slow.read().is_none(), "a never-ending request is cut off");

    // Not host root: may not change anything, sees only its own.
    use std::os::unix::process::CommandExt;
    let out = env.devns().args(["release", &lp.name]).uid(65534).gid(65534).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied: only host root"), "{out:?}");
    let out = env.devns().args(["ls", "--json"]).uid(65534).gid(65534).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]", "a host user owns nothing");

    assert_eq!((devns_ok(&env, &["ls", "--owned", "--json"]), devns_ok(&env, &["ns", "ls", "--json"])), before);
    assert!(Path::new(&format!("/proc/{}", d.pid())).exists(), "the daemon is alive");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn sigterm_stops_cleanly_and_views_stay_in_their_containers() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut d = Daemon::start(&env);
    let mut a = shell_container(&env, &["--name", "a"]);
    let lp = Loop::new(false);
    devns_ok(&env, &["assign", &lp.name, "--to", "a"]);
    assert_eq!(d.stop(), Some(0));
    assert!(!env.socket().exists(), "the socket file is removed");
    let in_a = a.sh("ls /dev");
    assert!(in_a.contains(&lp.name), "{in_a:?}");
    // A restart picks the namespace up again.
    let _d = Daemon::start(&env);
    assert!(view_names(&env, "a").contains(&lp.name));
    devns_ok(&env, &["release", &lp.name]);
    assert!(!a.sh("ls /dev").contains(&lp.name));
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn attach_brings_an_existing_namespace_under_devns() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let mark = marker("attach");
    // Its own cgroup (made by the runtime, here the test), where devns
    // attaches its device program.
    let cg = TestCgroup::new("attach");
    // A user-namespaced process made by util-linux, not by devns.
    let mut p = cg.command("unshare").args(userns_sh("while :; do sleep 0.2; done", &mark)).spawn().unwrap();
    let pid = p.id();
    let _cleanup = KillMarked(mark.clone());
    eventually("the process is in its user namespace", || {
        std::fs::read_link(format!("/proc/{pid}/ns/user")).ok() != std::fs::read_link("/proc/self/ns/user").ok()
    });
    eventually("the process is in its cgroup", || cgroup_pids(&cg.path).contains(&(pid as i32)));
    let out = devns_ok(&env, &["attach", "--pid", &pid.to_string(), "--name", "ext"]);
    assert!(out.starts_with("id:"), "{out}");
    let dev: Vec<String> = sorted(
        std::fs::read_dir(format!("/proc/{pid}/root/dev"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
    );
    assert_eq!(dev, default_view(), "its /dev is now its view");
    assert!(!Path::new("/dev/stdout").exists() || std::fs::read_link("/dev/stdout").is_ok(), "host /dev untouched");
    kill_marked(&mark);
    let _ = p.wait();
    eventually("namespace released", || devns_ok(&env, &["ns", "ls", "--json"]).trim() == "[]");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn events_stream_ownership_hotplug_and_namespaces() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let mut ev = std::process::Command::new(env!("CARGO_BIN_EXE_devns"));
    env.devns_env(&mut ev);
    let mut ev = ev.args(["events", "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = ev.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            let Ok(e) = serde_json::from_str::<serde_json::Value>(&l) else { continue };
            if tx.send(e).is_err() {
                return;
            }
        }
    });
    // Other tests hot-plug devices meanwhile: skip events of theirs. An
    // event that never comes fails the test instead of hanging it.
    let next_within = |want: &dyn Fn(&serde_json::Value) -> bool, wait: std::time::Duration| {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(e) if want(&e) => return Some(e),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    };
    let next = |want: &dyn Fn(&serde_json::Value) -> bool| {
        next_within(want, std::time::Duration::from_secs(10)).expect("an awaited event within 10 s")
    };
    let lp = Loop::new(false);
    let name = lp.name.clone();
    eventually("loop known to the daemon", || devns_ok(&env, &["ls"]).contains(&name));
    // The subscription takes effect some time after `devns events` starts:
    // it is in place once one of the events it keeps asking for arrives.
    let is_global_off = |e: &serde_json::Value| e["event"] == "global" && e["device"] == name.as_str();
    let subscribed = (0..100).any(|_| {
        devns_ok(&env, &["global", &name, "off"]);
        next_within(&is_global_off, std::time::Duration::from_millis(100)).is_some()
    });
    assert!(subscribed, "the events stream never showed a global flag change");
    let mut a = shell_container(&env, &["--name", "a"]);
    let first = next(&|e| e["event"] == "ns-new");
    let ns = first["ns"].as_str().unwrap().to_owned();
    // A loop device that existed before is not "added"; assign is ours.
    devns_ok(&env, &["assign", &lp.name, "--to", "a"]);
    let e = next(&|e| e["device"] == name.as_str() && e["event"] != "add");
    assert_eq!((e["event"].as_str(), e["ns"].as_str()), (Some("assign"), Some(ns.as_str())), "{e}");
    devns_ok(&env, &["release", &lp.name]);
    assert_eq!(next(&|e| e["device"] == name.as_str() && e["event"] != "add")["event"], "release");
    let z = Zram::new();
    let zname = format!("zram{}", z.0);
    assert_eq!(next(&|e| e["device"] == zname.as_str())["event"], "add");
    drop(z);
    assert_eq!(next(&|e| e["device"] == zname.as_str())["event"], "remove");
    a.send("exit\n");
    let _ = a.wait();
    assert_eq!(next(&|e| e["ns"] == ns.as_str() && e["event"] != "release")["event"], "ns-gone");
    let _ = ev.kill();
    let _ = ev.wait();
}

/// A container whose busybox `uevent` prints "ACTION DEVNAME" per event.
fn uevent_listener(env: &Env, name: &str) -> Container {
    let script =
        format!("{}; echo ready; wait", uevents_listened_by("busybox uevent sh -c 'echo \"$ACTION $DEVNAME\"'"));
    let mut c = env.spawn(&["--name", name, "--", "sh", "-c", &script]);
    assert_eq!(c.line(), "ready");
    c
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn each_device_s_uevents_reach_its_owner_and_nobody_else() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let mut a = uevent_listener(&env, "a");
    let mut b = uevent_listener(&env, "b");
    let la = Loop::new(true);
    let lb = Loop::new(false);
    let (disk, part) = (la.name.clone(), la.partition());
    // Assigning announces the device and its partitions to the new owner.
    devns_ok(&env, &["assign", &disk, "--to", "a"]);
    assert_eq!(a.line(), format!("add {disk}"));
    assert_eq!(a.line(), format!("add {part}"));
    devns_ok(&env, &["assign", &lb.name, "--to", "b"]);
    assert_eq!(b.line(), format!("add {}", lb.name));
    // A host event of a's device (its partition going and coming back)
    // reaches a as the kernel sent it; a host device's (zram) reaches nobody.
    let z = Zram::new();
    drop(z);
    assert!(std::process::Command::new("partx").args(["-d", &format!("/dev/{disk}")]).status().unwrap().success());
    assert_eq!(a.line(), format!("remove {part}"));
    assert!(std::process::Command::new("partx").args(["-a", &format!("/dev/{disk}")]).status().unwrap().success());
    assert_eq!(a.line(), format!("add {part}"));
    // Releasing announces the removal, partitions first.
    devns_ok(&env, &["release", &disk]);
    assert_eq!(a.line(), format!("remove {part}"));
    assert_eq!(a.line(), format!("remove {disk}"));
    devns_ok(&env, &["release", &lb.name]);
    assert_eq!(b.line(), format!("remove {}", lb.name));
    // Nothing else arrived at either: a marker event of each one's own ends
    // the stream, and must be the very next line.
    devns_ok(&env, &["assign", &lb.name, "--to", "a"]);
    assert_eq!(a.line(), format!("add {}", lb.name), "a heard something it does not own");
    devns_ok(&env, &["release", &lb.name]);
    assert_eq!(a.line(), format!("remove {}", lb.name));
    devns_ok(&env, &["assign", &disk, "--to", "b"]);
    assert_eq!(b.line(), format!("add {disk}"), "b heard something it does not own");
}

/// Gives namespace `to` a new loop device, attaches an image to it (and
/// resizes that when `resize`), detaches it and takes the device back:
/// its owner hears an add, changes and a remove. The device stays until
/// the returned guard drops.
fn hotplug_an_owned_loop(env: &Env, to: &str, resize: bool) -> AddedLoop {
    let l = AddedLoop::new();
    let name = l.name();
    let img = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.img", marker("hotplug")));
    std::fs::File::create(&img).and_then(|f| f.set_len(4 << 20)).unwrap();
    let dev = format!("/dev/{name}");
    devns_ok(env, &["assign", &name, "--to", to]);
    let run = |args: &[&str]| assert!(std::process::Command::new("losetup").args(args).status().unwrap().success());
    run(&[&dev, img.to_str().unwrap()]);
    if resize {
        std::fs::File::options().write(true).open(&img).and_then(|f| f.set_len(8 << 20)).unwrap();
        run(&["-c", &dev]);
    }
    run(&["-d", &dev]);
    devns_ok(env, &["release", &name]);
    let _ = std::fs::remove_file(&img);
    l
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn udevadm_monitor_inside_sees_attach_resize_and_detach_of_its_loop_device() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    // Debian's udevadm (systemd's device monitor) takes only kernel events
    // from port 0 with root's credentials: what the kernel broadcasts for devns.
    let script = format!("{}; echo ready; wait", uevents_listened_by("udevadm monitor --kernel"));
    let mut a = env.spawn(&["--name", "a", "--", "sh", "-c", &script]);
    let mut mark = a.line();
    while mark != "ready" {
        mark = a.line();
    }
    let l = hotplug_an_owned_loop(&env, "a", true);
    let name = l.name();
    // "KERNEL[ts] ACTION /devices/virtual/block/loopN (block)"
    let mut actions = Vec::new();
    while actions.last().map(String::as_str) != Some("remove") {
        let l = a.line();
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 4 && f[0].starts_with("KERNEL[") {
            assert!(f[2].ends_with(&format!("/{name}")), "an event of another device: {l}");
            actions.push(f[1].to_owned());
        }
    }
    assert_eq!(actions.first().map(String::as_str), Some("add"));
    assert!(actions.iter().filter(|a| *a == "change").count() >= 3, "attach, resize, detach: {actions:?}");
}

/// With `udev_events = true`, the same events reach libudev monitors
/// inside as udevd would send them (the "udev" group, libudev's format,
/// from root as the container sees it): `udevadm monitor --udev` with a
/// subsystem/devtype match (libudev's socket filter, by hash) sees its own
/// loop device's add, changes and remove; one matching another subsystem
/// sees none; and with the option off (the default) nothing is sent there.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn with_udev_events_libudev_monitors_inside_see_hotplug_of_their_own_devices() {
    if !privileged() {
        return;
    }
    for on in [true, false] {
        let env = Env::new();
        std::fs::write(env.config(), format!("udev_events = {on}\n")).unwrap();
        let _d = Daemon::start(&env);
        // A rootfs whose /run the container's root may write, as an image's.
        let root = common::oci::tools_rootfs(env.dir.path());
        std::fs::set_permissions(root.join("run"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
        let control = root.join("run/udev/control");
        if !on {
            // As if it ran udevd: libudev listens, and nothing comes.
            std::fs::create_dir(root.join("run/udev")).unwrap();
            std::fs::write(&control, "").unwrap();
        }
        let script = format!(
            "{}; {}; echo ready; wait",
            uevents_listened_by("udevadm monitor --udev --subsystem-match=block/disk"),
            uevents_listened_by("udevadm monitor --udev --subsystem-match=net | sed 's/^/net: /'"),
        );
        let mut a = env.spawn(&["--name", "a", "--rootfs", root.to_str().unwrap(), "--", "sh", "-c", &script]);
        while a.line() != "ready" {}
        // Made for libudev, as the container's root.
        let st = std::fs::metadata(&control).expect("the container's /run/udev/control");
        assert_eq!(on, std::os::unix::fs::MetadataExt::uid(&st) != 0, "made by devns as the container's root: {on}");
        let l = hotplug_an_owned_loop(&env, "a", false);
        let name = l.name();
        let late = |a: &mut Container| {
            std::thread::sleep(std::time::Duration::from_secs(1));
            std::iter::from_fn(|| a.try_line()).collect::<Vec<_>>()
        };
        if !on {
            // The kernel's events alone: a second that shows nothing more.
            let got = late(&mut a);
            assert!(!got.iter().any(|l| l.contains("UDEV")), "udev events with the option off: {got:?}");
            continue;
        }
        // "UDEV  [ts] ACTION /devices/virtual/block/loopN (block)"
        let mut actions = Vec::new();
        while actions.last().map(String::as_str) != Some("remove") {
            let l = a.line();
            assert!(!l.starts_with("net: UDEV"), "a net match saw a block event: {l}");
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() == 5 && f[0] == "UDEV" {
                assert!(f[4] == "(block)" && f[3].ends_with(&format!("/{name}")), "an event of another device: {l}");
                actions.push(f[2].to_owned());
            }
        }
        assert_eq!(actions.first().map(String::as_str), Some("add"));
        assert!(actions.iter().filter(|a| *a == "change").count() >= 2, "attach, detach: {actions:?}");
        let net = late(&mut a);
        assert!(!net.iter().any(|l| l.starts_with("net: UDEV")), "a net match saw block events: {net:?}");
    }
}

/// `chattr +i` on a directory for as long as this lives: nothing can be
/// created or renamed in it, not even by root.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn new(dir: &std::path::Path) -> Immutable {
        let ok = std::process::Command::new("chattr").arg("+i").arg(dir).status().expect("chattr");
        assert!(ok.success(), "chattr +i {}", dir.display());
        Immutable(dir.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// A change is acknowledged only once its views, maps and record hold it:
/// when the record (or the global flags) cannot be written, `assign`,
/// `release` and `global` are refused, and every view is as it was.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_change_that_cannot_be_saved_is_refused_and_undone() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let mut a = shell_container(&env, &["--name", "a"]);
    let lp = Loop::new(false);
    let refused = |args: &[&str]| {
        let o = env.devns().args(args).output().unwrap();
        assert!(!o.status.success(), "devns {args:?} was acknowledged");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(err.contains("cannot save the state"), "devns {args:?}: {err}");
    };
    let frozen = Immutable::new(&env.state_dir().join("ns"));
    refused(&["assign", &lp.name, "--to", "a"]);
    assert!(!a.sh("ls /dev").contains(&lp.name), "an unsaved assignment is undone in the view");
    assert!(env.owned().is_empty(), "and in the model: {:?}", env.owned());
    drop(frozen);
    devns_ok(&env, &["assign", &lp.name, "--to", "a"]);
    assert!(a.sh("ls /dev").contains(&lp.name));

    let frozen = Immutable::new(&env.state_dir().join("ns"));
    refused(&["release", &lp.name]);
    assert!(a.sh("ls /dev").contains(&lp.name), "an unsaved release is undone in the view");
    assert_eq!(env.owned().len(), 1, "{:?}", env.owned());
    drop(frozen);
    devns_ok(&env, &["release", &lp.name]);

    let frozen = Immutable::new(&env.state_dir());
    refused(&["global", &lp.name, "on"]);
    assert!(!a.sh("ls /dev").contains(&lp.name), "an unsaved global flag is undone in every view");
    drop(frozen);
    devns_ok(&env, &["global", &lp.name, "on"]);
    assert!(a.sh("ls /dev").contains(&lp.name));
    devns_ok(&env, &["global", &lp.name, "off"]);
}

/// A global flag is acknowledged only once every view holds it: when one
/// view cannot take the node (its container filled it), the flag is
/// refused and no other view keeps the device either.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_global_flag_one_view_cannot_hold_is_refused_everywhere() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let mut a = shell_container(&env, &["--name", "a"]);
    let mut b = shell_container(&env, &["--name", "b"]);
    let lp = Loop::new(false);
    // Every inode of a's view taken (it may write its own /dev).
    a.sh("mkdir /dev/fill && cd /dev/fill && seq 1 20000 | xargs touch 2>/dev/null; echo filled");
    let o = env.devns().args(["global", &lp.name, "on"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a flag view a cannot hold was acknowledged");
    assert!(err.contains("reconcile") || err.contains("No space") || err.contains("space"), "{err}");
    assert!(!b.sh("ls /dev").contains(&lp.name), "b does not keep what was refused");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&devns_ok(&env, &["ls", "--json"])).unwrap();
    let row = rows.iter().find(|r| r["name"] == lp.name.as_str()).expect("listed");
    assert_eq!(row["global"], false, "the refused flag is not kept: {row}");
    a.sh("rm -rf /dev/fill; echo emptied");
    devns_ok(&env, &["global", &lp.name, "on"]);
    assert!(a.sh("ls /dev").contains(&lp.name) && b.sh("ls /dev").contains(&lp.name));
    devns_ok(&env, &["global", &lp.name, "off"]);
}
