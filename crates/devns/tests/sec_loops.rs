//! Attacks on loop devices (issue 17, items 3, 4 and 8), against the real
//! kernel, as root: a container taking over the host's free devices, two
//! stand-alone agents racing for one device, and busy devices of dead
//! namespaces leaking past every limit.

mod common;
use common::*;
use std::path::PathBuf;

/// A directory containers reach, with the helper binary in it; removed on drop.
struct Reach(PathBuf);

impl Reach {
    fn new(tag: &str) -> Reach {
        let dir = reachable_dir(tag);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Reach(dir)
    }

    /// A shell line running `role` of the helper binary inside with
    /// `var=value`.
    fn child(&self, role: &str, var: &str, value: &str) -> String {
        let me = copy_testbin_to(&self.0);
        format!("{var}={value} {} {role} 2>/dev/null | grep -oE '(op|race) .*'", me.display())
    }

    /// An 8 MiB file, writable by anyone.
    fn image(&self, name: &str) -> String {
        let img = self.0.join(name);
        std::fs::File::create(&img).and_then(|f| f.set_len(8 << 20)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o666)).unwrap();
        img.to_string_lossy().into_owned()
    }
}

impl Drop for Reach {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn backing_file(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/block/{name}/loop/backing_file")).ok().map(|s| s.trim().to_owned())
}

/// The host's own attachment of `file` to loop device `name` (by host
/// root, with losetup); detached on drop.
struct HostAttach(String);

impl HostAttach {
    fn new(name: &str, file: &str) -> HostAttach {
        let st = std::process::Command::new("losetup").args([&format!("/dev/{name}"), file]).status().unwrap();
        assert!(st.success(), "losetup /dev/{name} {file}");
        HostAttach(name.to_owned())
    }
}

impl Drop for HostAttach {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").args(["-d", &format!("/dev/{}", self.0)]).status();
    }
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn add_of_a_free_host_device_is_refused_and_it_stays_the_host_s() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let reach = Reach::new("sec-add");
    let host_loop = AddedLoop::new();
    let (n, name) = (host_loop.0, host_loop.name());
    let ino = block_ino(&name);
    let mut a = shell_container(&env, &["--name", "a"]);
    // What the kernel answers for an existing index.
    assert_eq!(
        a.sh(&reach.child("loop-ops", "DEVNS_SEC_OPS", &format!("add:{n}"))),
        [format!("op add:{n}={}", -libc::EEXIST)]
    );
    assert!(!a.sh("ls /dev").contains(&name), "not in the container's view");
    assert!(env.owned().is_empty(), "still the host's: {:?}", env.owned());
    assert_eq!(block_ino(&name), ino, "the same device");
    assert_eq!(backing_file(&name), None, "unattached");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn remove_of_a_host_device_is_refused_and_it_stays() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let reach = Reach::new("sec-remove");
    let host_loop = AddedLoop::new();
    let (n, name) = (host_loop.0, host_loop.name());
    let ino = block_ino(&name);
    let mut a = shell_container(&env, &["--name", "a"]);
    let ops = format!("remove:{n},add:{n},remove:{n}");
    assert_eq!(
        a.sh(&reach.child("loop-ops", "DEVNS_SEC_OPS", &ops)),
        [
            format!("op remove:{n}={}", -libc::EPERM),
            format!("op add:{n}={}", -libc::EEXIST),
            format!("op remove:{n}={}", -libc::EPERM)
        ]
    );
    assert_eq!(block_ino(&name), ino, "the host's device is still there");
    drop(a);
    assert_eq!(block_ino(&name), ino, "and stays after the container");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_host_s_attachment_to_a_formerly_lendable_device_survives_the_container() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let reach = Reach::new("sec-attach");
    let secret = reach.image("host.img");
    let host_loop = AddedLoop::new();
    let (n, name) = (host_loop.0, host_loop.name());
    let mut a = shell_container(&env, &["--name", "a"]);
    // Free, detached, the host's: what devns lent before.
    let answer = a.sh(&reach.child("loop-ops", "DEVNS_SEC_OPS", &format!("add:{n}")));
    // The host attaches its own file later.
    let _attached = HostAttach::new(&name, &secret);
    assert_eq!(answer, [format!("op add:{n}={}", -libc::EEXIST)]);
    // The container can neither see nor open it.
    assert!(!a.sh("ls /dev").contains(&name));
    let (_, minor) = block_numbers(&name);
    assert_eq!(a.sh(&format!("mknod /tmp/x b 7 {minor} 2>/dev/null; echo $?")), ["1"]);
    drop(a);
    eventually("the container's record gone", || env.recorded_namespaces() == 0);
    // A namespace's death is handled in the daemon's next turn: ask it
    // something, so that anything it did at the death is done.
    let _ = env.owned();
    assert_eq!(backing_file(&name).as_deref(), Some(secret.as_str()), "the host's attachment stays");
}

/// The state dir's loop devices pending removal (dead namespaces' that
/// were still open).
fn pending(env: &Env) -> Vec<devns_core::loopctl::LoopDev> {
    let path = env.state_dir().join("pending-loops.json");
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        Err(_) => Vec::new(),
    }
}

/// Host-side fds on loop devices (what a process the container passed its
/// fds to would hold); closed on drop, and then the devices that are
/// still there (a failing test's) detached and removed, by this very
/// device's identity.
struct Holders(Vec<(String, Option<u64>, Option<std::fs::File>)>);

impl Holders {
    fn hold(&mut self, dev: &str) {
        let name = dev.trim_start_matches("/dev/").to_owned();
        let f = std::fs::File::open(format!("/dev/{name}")).unwrap_or_else(|e| panic!("open {name}: {e}"));
        self.0.push((name.clone(), block_ino(&name), Some(f)));
    }

    fn close(&mut self) {
        for h in &mut self.0 {
            h.2 = None;
        }
    }

    fn gone(&self) -> bool {
        self.0.iter().all(|(n, ino, _)| block_ino(n) != *ino)
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        self.close();
        for (n, ino, _) in &self.0 {
            if block_ino(n) == *ino && ino.is_some() {
                let _ = std::process::Command::new("losetup").args(["-d", &format!("/dev/{n}")]).status();
                if let Some(i) = n.strip_prefix("loop").and_then(|i| i.parse().ok()) {
                    loop_ctl(LOOP_CTL_REMOVE, i);
                }
            }
        }
    }
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn two_stand_alone_runs_racing_for_one_device_never_hold_or_remove_each_other_s() {
    if !privileged() {
        return;
    }
    race_for_one_device(false, 30);
}

/// The same race through one daemon (one agent for both): a late event of
/// the other's device must not take one's own from its record.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn two_containers_of_a_daemon_racing_for_one_device_never_hold_or_remove_each_other_s() {
    if !privileged() {
        return;
    }
    race_for_one_device(true, 15);
}

/// Two containers, each racing for loopINDEX (an index of this test's) for
/// `secs` seconds, and allocating devices of their own.
fn race_for_one_device(daemon: bool, secs: u64) {
    let env = Env::new();
    let _d = daemon.then(|| Daemon::start(&env));
    let reach = Reach::new(if daemon { "sec-race-d" } else { "sec-race" });
    // An index of this test's alone: high, free, per process.
    let mut index = 5000 + std::process::id() % 1000;
    while block_ino(&format!("loop{index}")).is_some() {
        index += 1;
    }
    // Removed at the end, should a failing round leave it.
    struct Gone(u32);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup").args(["-d", &format!("/dev/loop{}", self.0)]).status();
            loop_ctl(LOOP_CTL_REMOVE, self.0.into());
        }
    }
    let _gone = Gone(index);
    let line = reach.child("loop-race", "DEVNS_RACE", &format!("{index}:3000:{secs}"));
    // Run to completion, each in a thread (their logs are read too).
    let run = |name: &str| {
        let o = env.run(&["--name", name, "--", "sh", "-c", &line]);
        String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect::<Vec<_>>()
    };
    let (ra, rb) = std::thread::scope(|s| {
        let a = s.spawn(|| run("a"));
        let b = s.spawn(|| run("b"));
        (a.join().unwrap(), b.join().unwrap())
    });
    eprintln!("{ra:?} {rb:?}");
    for r in [&ra, &rb] {
        assert!(
            r.len() == 1 && r[0].ends_with("bad(0)=[]"),
            "a device one's own, not answered as natively: {ra:?} {rb:?}"
        );
    }
    let count = |r: &[String], k: &str| -> u64 {
        let f = r[0].split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap();
        f.parse().unwrap()
    };
    // The race happened: both got the device at times, and met the other's.
    assert!(count(&ra, "got=") > 0 && count(&rb, "got=") > 0, "{ra:?} {rb:?}");
    assert!(count(&ra, "exist=") + count(&rb, "exist=") > 0, "{ra:?} {rb:?}");
    eventually("both records gone", || env.recorded_namespaces() == 0);
    assert!(block_ino(&format!("loop{index}")).is_none(), "nothing left");
    assert!(pending(&env).is_empty());
}

/// A `devns run` that takes `count` loop devices (four attached to
/// `img`, the others made with `LOOP_CTL_ADD -1`), while the test holds
/// each open, and ends: the devices it got, and its stderr.
fn round(env: &Env, reach: &Reach, img: &str, count: usize, holders: &mut Holders) -> (Vec<String>, String) {
    let adds = vec!["add:-1"; count - 4].join(",");
    let script = format!(
        "for i in 1 2 3 4; do losetup -f --show {img} || break; done; {}; echo ready; read x",
        reach.child("loop-ops", "DEVNS_SEC_OPS", &adds)
    );
    let mut c = env.spawn(&["--", "sh", "-c", &script]);
    let mut devs = Vec::new();
    for l in c.lines_until("ready") {
        match l.strip_prefix("op add:-1=") {
            Some(n) if !n.starts_with('-') => devs.push(format!("/dev/loop{n}")),
            Some(_) => {}
            None => devs.push(l),
        }
    }
    for d in &devs {
        holders.hold(d);
    }
    c.send("x\n");
    let (_, stderr) = c.wait();
    (devs, stderr)
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn busy_loop_devices_of_dead_runs_stay_charged_until_removed_and_are_bounded() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let reach = Reach::new("sec-busy");
    let img = reach.image("a.img");
    let mut holders = Holders(Vec::new());
    let bound = devns_core::loopctl::MAX_PENDING;
    let mut seen = 0;
    let mut refused = None;
    for i in 0..(bound / 16 + 2) {
        let (devs, stderr) = round(&env, &reach, &img, 16, &mut holders);
        let p = pending(&env);
        assert!(p.len() <= bound, "round {i}: {} pending", p.len());
        assert_eq!(env.recorded_namespaces(), 0, "round {i}: the run's record is gone");
        assert!(env.owned().is_empty(), "round {i}: nobody owns them: {:?}", env.owned());
        for d in &devs {
            let name = d.trim_start_matches("/dev/");
            assert!(block_ino(name).is_some(), "round {i}: {name} is still there (held)");
            // Never free to the host's `losetup -f` while held: attached
            // (until its last close), or plugged with an empty placeholder.
            assert!(backing_file(name).is_some(), "round {i}: {name} is attached or plugged");
            assert!(p.iter().any(|l| format!("loop{}", l.index) == name), "round {i}: {name} pending: {p:?}");
        }
        seen += devs.len();
        if devs.len() < 8 {
            refused = Some((i, devs.len(), stderr));
            break;
        }
    }
    let (round_no, got, stderr) = refused.expect("the bound was reached");
    assert!(seen <= bound + 16, "{seen} devices made, bound {bound}");
    assert!(stderr.contains("still open"), "round {round_no} ({got} devices) says why: {stderr}");
    // Not visible to anyone: a new container sees none of them.
    let mut c = shell_container(&env, &[]);
    assert_eq!(c.sh("ls /dev | grep -c '^loop[0-9]'"), ["0"]);
    drop(c);
    // Closed: the next devns command removes them.
    holders.close();
    eventually("every pending device removed", || {
        let _ = env.owned();
        holders.gone()
    });
    assert!(pending(&env).is_empty());
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn busy_loop_devices_of_a_daemon_s_dead_namespace_stay_pending_across_a_restart() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut d = Daemon::start(&env);
    let reach = Reach::new("sec-busyd");
    let img = reach.image("a.img");
    let mut holders = Holders(Vec::new());
    let mut a = shell_container(&env, &["--name", "a"]);
    let bound_dev = a.sh(&format!("losetup -f --show {img}"))[0].clone();
    let free_dev = a.sh("losetup -f")[0].clone();
    holders.hold(&bound_dev);
    holders.hold(&free_dev);
    drop(a);
    eventually("pending, the record gone", || pending(&env).len() == 2 && env.recorded_namespaces() == 0);
    assert!(env.owned().is_empty());
    // The free one is plugged while held: the host's `losetup -f` skips it,
    // and its holder reads nothing the host could have attached.
    let free_name = free_dev.trim_start_matches("/dev/");
    let plug = backing_file(free_name).unwrap_or_default();
    assert!(plug.contains("devns-placeholder"), "{free_name} plugged: {plug:?}");
    // Attached inside the container, whose root binds the host's /var in:
    // the kernel names the file from that mount's root (/tmp/... for
    // /var/tmp/...).
    let bound = backing_file(bound_dev.trim_start_matches("/dev/")).unwrap_or_default();
    assert!(!bound.is_empty() && img.ends_with(&bound), "detached at its last close: {bound:?} is not {img}");
    assert!(!holders.gone());
    // Pending survives the daemon.
    d.kill9();
    let _d = Daemon::start(&env);
    assert_eq!(pending(&env).len(), 2);
    let mut b = shell_container(&env, &["--name", "b"]);
    assert_eq!(b.sh("ls /dev | grep -c '^loop[0-9]'"), ["0"], "not in another's view");
    holders.close();
    eventually("removed once closed", || holders.gone() && pending(&env).is_empty());
    drop(b);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_lent_device_in_an_old_record_is_dropped_at_death_untouched() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let reach = Reach::new("sec-old");
    let secret = reach.image("host.img");
    let host_loop = AddedLoop::new();
    let (n, name) = (host_loop.0, host_loop.name());
    let ino = block_ino(&name);
    let _attached = HostAttach::new(&name, &secret);
    // A record of an older devns whose run is gone, with the host's loopN
    // lent to it (`created: false`); the host has attached its own file
    // since.
    let runs = env.state_dir().join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let (_, minor) = block_numbers(&name);
    let record = format!(
        r#"{{"id":4000000001,"name":"old","keeper":{{"pid":{},"start_time":1}},"members":[],"uid_base":null,"gid_base":null,"devices":["b:7:{minor}"],"loops":[{{"index":{n},"dev":"b:7:{minor}","created":false}}]}}"#,
        std::process::id()
    );
    std::fs::write(runs.join(format!("run-{}-1.json", std::process::id())), record).unwrap();
    assert_eq!(env.recorded_namespaces(), 1);
    // The next devns command finds the run gone.
    assert!(env.owned().is_empty());
    assert_eq!(env.recorded_namespaces(), 0, "the old record is dropped");
    assert_eq!(block_ino(&name), ino, "the host's device is not removed");
    assert_eq!(backing_file(&name).as_deref(), Some(secret.as_str()), "nor is the host's attachment detached");
    assert!(pending(&env).is_empty(), "nor kept pending");
}
