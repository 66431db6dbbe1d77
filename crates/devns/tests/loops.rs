//! Loop devices for unprivileged containers, against the real kernel, as
//! root, with unmodified util-linux and e2fsprogs inside: the mediated
//! `loop-control`, ownership of what a namespace allocates, the limit, and
//! cleanup when a namespace dies (also while the daemon is down).

mod common;
use common::images::*;
use common::*;
use std::path::{Path, PathBuf};

fn exists(name: &str) -> bool {
    Path::new("/sys/class/block").join(name).exists()
}

/// The host's minor of block device `name`.
fn minor_of(name: &str) -> u32 {
    let st = std::fs::read_to_string(format!("/sys/class/block/{name}/dev")).unwrap();
    st.trim().split(':').nth(1).unwrap().parse().unwrap()
}

impl Images {
    /// A shell line that runs loop-control ioctls from inside a container
    /// with the helper binary (its `loop-ioctls`, copied here, where the
    /// container reaches it); prints `op OP=RESULT` lines.
    fn ioctls(&self, ops: &str) -> String {
        let me = copy_testbin_to(&self.dir);
        format!("DEVNS_LOOP_OPS={ops} {} loop-ioctls 2>/dev/null | grep -o 'op [^ ]*'", me.display())
    }
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn util_linux_gets_loop_devices_that_only_its_namespace_sees() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let imgs = Images::new("util");
    let (plain, parted) = (imgs.make("plain.img", false), imgs.make("parted.img", true));
    let mut a = shell_container(&env, &["--name", "a"]);
    let mut b = shell_container(&env, &["--name", "b"]);

    assert_eq!(a.sh("ls -l /dev/loop-control | cut -c1"), ["c"]);
    let d = a.sh(&format!("d=$(losetup -f --show {plain}); echo $d"));
    let dev = d[0].trim_start_matches("/dev/").to_owned();
    assert!(dev.starts_with("loop"), "{d:?}");
    assert_eq!(a.sh("mkfs.ext4 -q $d; echo $?"), ["0"]);
    assert_eq!(a.sh("blkid -o value -s TYPE $d"), ["ext4"]);
    // The kernel here has no partition parsers: partx adds what -P would.
    let p = a.sh(&format!("p=$(losetup -P -f --show {parted}); [ -e ${{p}}p1 ] || partx -a $p; echo $p"));
    let pdev = p[0].trim_start_matches("/dev/").to_owned();
    assert_ne!(pdev, dev);
    let mut want = vec!["loop-control".to_owned(), dev.clone(), pdev.clone(), format!("{pdev}p1")];
    want.sort();
    assert_eq!(sorted(a.sh("ls /dev | grep ^loop")), want);
    assert_eq!(a.sh("sfdisk --dump $p | grep -c start="), ["1"]);
    let listed = a.sh("losetup -a");
    assert_eq!(listed.len(), 2, "only its own: {listed:?}");
    assert!(listed.iter().any(|l| l.contains("plain.img")) && listed.iter().any(|l| l.contains("parted.img")));
    // The host sees them as A's.
    let owned: Vec<(String, String)> = env
        .owned()
        .iter()
        .map(|o| (o["name"].as_str().unwrap().to_owned(), o["owner"].as_str().unwrap_or("").to_owned()))
        .collect();
    for n in [&dev, &pdev, &format!("{pdev}p1")] {
        assert!(owned.iter().any(|(name, _)| name == n), "{n} owned: {owned:?}");
    }

    // B sees none of it, and can neither open, make, reconfigure nor remove A's.
    assert_eq!(b.sh("ls /dev | grep ^loop"), ["loop-control"]);
    assert_eq!(b.sh("losetup -a | wc -l"), ["0"]);
    let (maj_min, n) = (minor_of(&dev), dev.trim_start_matches("loop").to_owned());
    assert_eq!(b.sh(&format!("mknod /tmp/x b 7 {maj_min} 2>/dev/null; echo $?")), ["1"]);
    assert_eq!(b.sh(&format!("losetup -c /dev/{dev} 2>/dev/null; echo $?")), ["1"]);
    assert_eq!(
        b.sh(&imgs.ioctls(&format!("remove:{n},add:{n}"))),
        [format!("op remove:{n}={}", -libc::EPERM), format!("op add:{n}={}", -libc::EEXIST)]
    );
    // B's own device is another one.
    let bd = b.sh("losetup -f");
    assert!(bd.len() == 1 && bd[0] != d[0] && bd[0] != p[0], "{bd:?}");
    assert!(!Disk::of(&dev).gone(), "B's attempts changed nothing");
    assert_eq!(imgs.bound().len(), 2);

    // Partition edits need CAP_SYS_ADMIN in its namespace, as natively.
    let nocaps = "setpriv --bounding-set=-all --inh-caps=-all partx -d $p 2>/dev/null; echo $?";
    assert_eq!(a.sh(nocaps), ["1"]);
    assert!(a.sh("ls /dev").contains(&format!("{pdev}p1")), "nothing changed");
    assert_eq!(a.sh("partx -d $p; echo $?; ls /dev | grep -c ^loop"), ["0", "3"]);

    // A detaches and removes its own; a bound one the kernel keeps (EBUSY).
    let (da, pa, ba) = (imgs.disk(&dev), imgs.disk(&pdev), imgs.disk(&bd[0]));
    assert_eq!(a.sh(&imgs.ioctls(&format!("remove:{n}"))), [format!("op remove:{n}={}", -libc::EBUSY)]);
    assert_eq!(a.sh("losetup -d $d; echo $?; losetup -d $p; echo $?"), ["0", "0"]);
    assert_eq!(a.sh(&imgs.ioctls(&format!("remove:{n}"))), [format!("op remove:{n}=0")]);
    assert!(da.gone(), "removed on the host");
    assert_eq!(a.sh("ls /dev | grep ^loop"), ["loop-control", &pdev]);
    drop((a, b));
    eventually("A's and B's loop devices removed", || pa.gone() && ba.gone());
    assert!(imgs.bound().is_empty());
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_stand_alone_run_gets_loop_devices_and_removes_them_at_its_end() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let imgs = Images::new("alone");
    let parted = imgs.make("parted.img", true);
    let script = format!(
        "p=$(losetup -P -f --show {parted}) || exit 9; [ -e ${{p}}p1 ] || partx -a $p; echo $p; \
         mkfs.ext4 -q ${{p}}p1 && blkid -o value -s TYPE ${{p}}p1; ls /dev | grep ^loop; \
         losetup -d $p; sleep 0.2; ls /dev | grep ^loop; losetup -f --show {parted}; stat -L -c %i /sys/class/block/${{p#/dev/}}"
    );
    let o = env.run(&["--", "sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    let p = lines[0].trim_start_matches("/dev/");
    assert_eq!(lines[1], "ext4");
    assert_eq!(lines[2..5], ["loop-control", p, &format!("{p}p1")]);
    // Detached: the partition left the view with the kernel's event.
    assert_eq!(lines[5..7], ["loop-control", p]);
    // Its own free device again, not a new one.
    assert_eq!(lines[7], lines[0]);
    let ino = lines[8].parse().expect("an inode number");
    assert!(Disk { name: p.to_owned(), ino }.gone(), "removed when the run ended");
    assert!(imgs.bound().is_empty());
    assert_eq!(env.recorded_namespaces(), 0);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn add_of_an_unowned_free_device_is_refused_and_other_files_are_not_loop_control() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let imgs = Images::new("lend");
    // A free device of the host's, at a number nobody else uses; removed at
    // the end, also when the test fails.
    let host_loop = AddedLoop::new();
    let n = host_loop.0;
    let name = host_loop.name();
    let hosts = Disk::of(&name);
    // A number nobody uses, that /dev/null must not make.
    let far = 900_000 + std::process::id() % 100_000;
    let mut a = shell_container(&env, &["--name", "a"]);
    // Not lent (issue 17): the kernel's answer for an existing index.
    assert_eq!(
        a.sh(&imgs.ioctls(&format!("add:{n},file=/dev/null,get_free:0,add:{far}"))),
        [
            format!("op add:{n}={}", -libc::EEXIST),
            format!("op get_free:0={}", -libc::ENOTTY),
            format!("op add:{far}={}", -libc::ENOTTY)
        ]
    );
    assert!(!a.sh("ls /dev").contains(&name));
    assert!(env.owned().is_empty());
    drop(a);
    assert!(!hosts.gone(), "the host's device stays");
    assert!(!exists(&format!("loop{far}")));
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_limit_answers_enospc_and_says_why() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    std::fs::write(env.config(), "loop_limit = 2\n").unwrap();
    let imgs = Images::new("limit");
    let img = imgs.make("a.img", false);
    let script = format!(
        "losetup -f --show {img} >/dev/null && losetup -f --show {img} >/dev/null && echo two; \
         losetup -f --show {img} 2>/dev/null; echo third=$?; {}",
        imgs.ioctls("get_free:0")
    );
    let o = env.run(&["--", "sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["two", "third=1", &format!("op get_free:0={}", -libc::ENOSPC)]);
    assert!(stderr.contains("the limit is 2"), "{stderr}");
    assert!(imgs.bound().is_empty());
}

/// The host's mounts that name `env`'s state dir.
fn state_mounts(env: &Env) -> Vec<String> {
    let state = env.state_dir().to_string_lossy().into_owned();
    host_mounts().into_iter().filter(|l| l.contains(&state)).collect()
}

/// A container script that takes three loop devices (two of a plain image
/// of `imgs`, one of a partitioned one, its partition in the view), prints
/// them and how many the view holds, then `ready`, and waits.
fn three_loops(imgs: &Images) -> String {
    let (plain, parted) = (imgs.make("plain.img", false), imgs.make("parted.img", true));
    format!(
        "for i in 1 2; do losetup -f --show {plain} || exit 1; done; \
         p=$(losetup -P -f --show {parted}) || exit 1; [ -e ${{p}}p1 ] || partx -a $p || exit 1; echo $p; \
         ls /dev | grep -c '^loop[0-9]'; echo ready; sleep 1000"
    )
}

/// Lifecycle `i`: a container running `script` ([`three_loops`]), `args`
/// before the command. Returns it and its devices.
fn with_three_loops(env: &Env, imgs: &Images, script: &str, args: &[&str], i: usize) -> (Container, Vec<Disk>) {
    let mut c = env.spawn(&[args, &["--", "sh", "-c", script]].concat());
    let lines: Vec<String> = c.lines_until("ready");
    assert_eq!(lines.len(), 4, "lifecycle {i}: {lines:?}");
    assert_eq!(lines[3], "4", "three loop devices and a partition in the view: {lines:?}");
    let disks = lines[..3].iter().map(|l| imgs.disk(l)).collect();
    (c, disks)
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn two_hundred_killed_containers_leave_no_loop_device_behind() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let imgs = Images::new("life");
    let script = three_loops(&imgs);
    let mounts = state_mounts(&env);
    let mut taken = std::collections::BTreeSet::new();
    for i in 0..200 {
        let (mut c, disks) = with_three_loops(&env, &imgs, &script, &[], i);
        taken.extend(disks);
        let init = rustix::process::Pid::from_raw(c.init()).unwrap();
        rustix::process::kill_process(init, rustix::process::Signal::KILL).unwrap();
        let _ = c.child.wait();
    }
    eventually("every loop device of the containers removed", || taken.iter().all(Disk::gone));
    assert!(imgs.bound().is_empty(), "bound to a test's file: {:?}", imgs.bound());
    eventually("no leftover mount", || state_mounts(&env) == mounts);
    assert!(env.owned().is_empty());
}

/// Stand-alone keepers SIGKILLed one after the other, each holding three
/// loop devices (one partitioned): each run's devices, cgroup and record
/// are gone, and its watcher with them, before the next devns command
/// (the next run) starts: nothing but the run's own watcher frees them.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn two_hundred_killed_stand_alone_keepers_leave_nothing_without_another_devns_command() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let imgs = Images::new("keepers");
    let script = three_loops(&imgs);
    let mounts = state_mounts(&env);
    for i in 0..200 {
        let name = format!("keeper{i}");
        let (mut c, disks) = with_three_loops(&env, &imgs, &script, &["--name", &name], i);
        let cgroup = PathBuf::from(record_of(&env, &name).cgroup.expect("a cgroup").path);
        let watcher = watcher_of(c.pid());
        let _ = c.child.kill();
        let _ = c.child.wait();
        eventually(&format!("lifecycle {i}: devices, cgroup and record gone"), || {
            disks.iter().all(Disk::gone) && !cgroup.exists() && env.recorded_namespaces() == 0
        });
        let watcher = watcher.expect("the run's watcher");
        eventually(&format!("lifecycle {i}: the watcher has exited"), || exited(&watcher));
    }
    assert!(imgs.bound().is_empty(), "bound to a test's file: {:?}", imgs.bound());
    assert_eq!(state_mounts(&env), mounts, "no leftover mount");
    assert!(env.owned().is_empty());
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn loops_of_a_namespace_that_died_while_the_daemon_was_down_go_at_its_restart() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut d = Daemon::start(&env);
    let imgs = Images::new("down");
    let img = imgs.make("a.img", false);
    let mut a = shell_container(&env, &["--name", "a"]);
    let bound = imgs.disk(&a.sh(&format!("losetup -f --show {img}"))[0]);
    // `losetup -f` alone only asks; A has no free device, so one is made
    // for it on asking, A's all the same.
    let free = imgs.disk(&a.sh("losetup -f")[0]);
    d.kill9();
    let init = rustix::process::Pid::from_raw(a.init()).unwrap();
    rustix::process::kill_process(init, rustix::process::Signal::KILL).unwrap();
    let _ = a.child.wait();
    assert!(!bound.gone(), "nobody cleans while the daemon is down");
    let _d = Daemon::start(&env);
    eventually("removed at restart", || bound.gone() && free.gone());
    assert!(imgs.bound().is_empty());
    assert!(env.owned().is_empty());
    drop(a);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn loop_allocation_is_announced_to_the_owner_like_a_hotplug() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let imgs = Images::new("events");
    let img = imgs.make("a.img", false);
    let mut a = shell_container(&env, &["--name", "a"]);
    let mut b = shell_container(&env, &["--name", "b"]);
    a.sh(&uevents_listened_by("udevadm monitor --kernel >/tmp/ev 2>&1"));
    // B's allocation reaches B alone.
    let bd = b.sh("losetup -f")[0].trim_start_matches("/dev/").to_owned();
    let b_disk = imgs.disk(&bd);
    let d = a.sh(&format!("d=$(losetup -f --show {img}); echo $d; losetup -d $d"));
    let dev = d[0].trim_start_matches("/dev/").to_owned();
    let n = dev.trim_start_matches("loop");
    assert_eq!(a.sh(&imgs.ioctls(&format!("remove:{n}"))), [format!("op remove:{n}=0")]);
    // "KERNEL[ts] ACTION /devices/virtual/block/loopN (block)"
    let actions = |a: &mut Container| -> Vec<(String, String)> {
        a.sh("cat /tmp/ev")
            .iter()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 4 && f[0].starts_with("KERNEL[")).then(|| (f[1].to_owned(), f[2].to_owned()))
            })
            .collect()
    };
    let mut seen = actions(&mut a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !seen.iter().any(|(act, _)| act == "remove") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        seen = actions(&mut a);
    }
    assert!(seen.iter().all(|(_, p)| p.ends_with(&format!("/{dev}"))), "only A's device: {seen:?} (B has {bd})");
    let acts: Vec<&str> = seen.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(acts.first(), Some(&"add"), "{acts:?}");
    assert_eq!(acts.last(), Some(&"remove"), "{acts:?}");
    assert!(acts.iter().filter(|a| **a == "change").count() >= 2, "attach and detach: {acts:?}");
    drop(b);
    eventually("B's device removed with B", || b_disk.gone());
}
