//! Ownership ends with the device, against the real kernel, as root: a
//! device removed and made again with the same numbers while no keeper
//! watched (the daemon killed) is the host's when devns starts again, in
//! the model, the view, the device map and the saved record.

mod common;
use common::*;
use devns_core::bpf::Key;

/// Whether `name` is in namespace `ns`'s registry, view, device map
/// (under `key`) and saved record: all four must agree.
fn held_by(env: &Env, ns: &str, name: &str, key: Key) -> [bool; 4] {
    let owned = env.owned().iter().any(|o| o["name"] == name && o["owner"] != "host");
    let in_view = view_names(env, ns).contains(&name.to_owned());
    let in_map = policy_of(env, ns).read().expect("the map").contains_key(&key);
    let rec = record_of(env, ns);
    let dev: devns_core::DevId =
        format!("{}:{}:{}", if key.ty == 1 { 'b' } else { 'c' }, key.major, key.minor).parse().unwrap();
    [owned, in_view, in_map, rec.devices.contains(&dev)]
}

/// A daemon of the test's own, with a container `a` under it.
fn daemon_with_a(env: &Env) -> (Daemon<'_>, Container) {
    let d = Daemon::start(env);
    (d, shell_container(env, &["--name", "a"]))
}

/// Waits until the daemon knows device `name`, then assigns it to `a`.
fn assign_to_a(env: &Env, name: &str) {
    eventually("device known to the daemon", || devns_ok(env, &["ls"]).contains(name));
    devns_ok(env, &["assign", name, "--to", "a"]);
}

/// Removes loop device `l` and makes it again: the same numbers, a new device.
fn remake(l: &AddedLoop) {
    assert!(loop_ctl(LOOP_CTL_REMOVE, l.0) >= 0, "remove {}", l.name());
    assert!(loop_ctl(LOOP_CTL_ADD, l.0) >= 0, "make {} again", l.name());
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_disk_made_again_while_the_daemon_was_killed_is_the_host_s_at_its_restart() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let (mut d, mut a) = daemon_with_a(&env);
    let l = AddedLoop::new();
    let name = l.name();
    assign_to_a(&env, &name);
    let (major, minor) = block_numbers(&name);
    let key = Key { ty: 1, major, minor };
    assert_eq!(held_by(&env, "a", &name, key), [true; 4]);
    let rec = record_of(&env, "a");
    let dev = rec.devices.iter().find(|d| d.major == major && d.minor == minor).copied().expect("recorded");
    assert_eq!(rec.identity[&dev].ino, block_ino(&name), "the record knows the disk by its sysfs inode");
    assert!(rec.identity[&dev].diskseq.is_some(), "and its DISKSEQ");

    d.kill9();
    remake(&l);
    let _d = Daemon::start(&env);
    // Ready means reconciled: the new disk is the host's everywhere.
    assert_eq!(held_by(&env, "a", &name, key), [false; 4], "registry, view, map, record");
    assert_eq!(a.sh(&format!("[ -e /dev/{name} ] || echo gone")), ["gone"]);
    assert!(devns_ok(&env, &["ls"]).contains(&name), "the host has the new one");
    // And it can be given again, to whoever asks.
    devns_ok(&env, &["assign", &name, "--to", "a"]);
    assert_eq!(held_by(&env, "a", &name, key), [true; 4]);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_same_disk_attached_again_while_the_daemon_was_killed_stays_its_owner_s() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let (mut d, _a) = daemon_with_a(&env);
    let l = AddedLoop::new();
    let name = l.name();
    assign_to_a(&env, &name);
    let (major, minor) = block_numbers(&name);
    let key = Key { ty: 1, major, minor };
    d.kill9();
    // A new medium (attach, detach: a new DISKSEQ), the same device.
    let img = env.dir.path().join("img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let dev = format!("/dev/{name}");
    let st = std::process::Command::new("losetup").arg(&dev).arg(&img).status().unwrap();
    assert!(st.success(), "losetup {dev}");
    assert!(std::process::Command::new("losetup").args(["-d", &dev]).status().unwrap().success());
    let _d = Daemon::start(&env);
    assert_eq!(held_by(&env, "a", &name, key), [true; 4], "registry, view, map, record");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_character_device_made_again_while_the_daemon_was_killed_is_the_host_s_at_its_restart() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let (mut d, _a) = daemon_with_a(&env);
    // VT 47: no other test allocates virtual consoles.
    let vt = Vt::new(47);
    let name = vt.vcs();
    assign_to_a(&env, &name);
    let key = Key { ty: 2, major: 7, minor: vt.0 };
    assert_eq!(held_by(&env, "a", &name, key), [true; 4]);

    d.kill9();
    assert!(vt.deallocate(), "VT_DISALLOCATE");
    vt.allocate();
    let _d = Daemon::start(&env);
    assert_eq!(held_by(&env, "a", &name, key), [false; 4], "registry, view, map, record");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_stand_alone_run_takes_a_disk_made_again_since_a_killed_daemon_s_record() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let (mut d, _a) = daemon_with_a(&env);
    let l = AddedLoop::new();
    let name = l.name();
    assign_to_a(&env, &name);
    d.kill9();
    // With the daemon's record saying `a` has it, a run may not.
    let out = env.run(&["--dev", &name, "--", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already owned by namespace"), "{out:?}");
    remake(&l);
    // The stand-alone keeper reads the record and knows the new disk for
    // the host's.
    let out = env.run(&["--dev", &name, "--", "sh", "-c", &format!("[ -b /dev/{name} ] && echo there")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "there", "{out:?}");
}
