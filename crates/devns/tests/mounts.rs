//! `mount` of a container's own block devices inside it, against the real
//! kernel, as root, with unmodified util-linux `mount`/`umount`, e2fsprogs
//! and fuse2fs inside: the kernel way (opt-in per type), the FUSE way (the
//! default), and the refusals.

mod common;
use common::images::*;
use common::*;

/// A daemon whose config serves `kernel` types by the kernel, logging to
/// [`log_path`].
fn daemon_with<'e>(env: &'e Env, kernel: &[&str]) -> Daemon<'e> {
    let list: Vec<String> = kernel.iter().map(|t| format!("\"{t}\"")).collect();
    std::fs::write(env.config(), format!("mount_kernel = [{}]\n", list.join(", "))).unwrap();
    logged_daemon(env, &[])
}

/// The mount at `dir` as the container's mountinfo shows it: its mount
/// options and its superblock's, one string.
fn mount_line(c: &mut Container, dir: &str) -> String {
    let lines = c.sh(&format!("grep ' {dir} ' /proc/self/mountinfo"));
    assert_eq!(lines.len(), 1, "one mount at {dir}: {lines:?}");
    lines[0].clone()
}

/// Namespace `name`'s mounts of its own devices, per `devns ns ls`, in its
/// order (by target).
fn listed_mounts(env: &Env, name: &str) -> Vec<(String, String, &'static str, &'static str, bool)> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(&devns_ok(env, &["ns", "ls", "--json"])).unwrap();
    let row = rows.iter().find(|r| r["name"] == name).expect("the namespace listed");
    row["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap().to_owned();
            let fs: &'static str = if s("fstype") == "ext4" { "ext4" } else { "other" };
            let way: &'static str = if s("way") == "kernel" { "kernel" } else { "fuse" };
            (s("device"), s("target"), fs, way, m["read_only"].as_bool().unwrap())
        })
        .collect()
}

/// A file's owner in an ext4 image, as e2fsprogs reads it on the host.
fn owner_on_disk(img: &str, path: &str) -> String {
    let out = std::process::Command::new("debugfs").args(["-R", &format!("stat {path}"), img]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains("User:")).unwrap_or_else(|| panic!("{text}"));
    line.split_whitespace().take(4).collect::<Vec<_>>().join(" ")
}

/// Writes as container root and as a mapped user at `m` (an ext4 just
/// made), then `umount`, and mounts again `-o ro` to read it back.
fn write_umount_and_read_back(c: &mut Container, dev: &str, m: &str) {
    assert_eq!(c.sh(&format!("echo hi > {m}/f; stat -c '%u %g' {m}/f")), ["0 0"]);
    let user = "setpriv --reuid=1000 --regid=1000 --clear-groups";
    let as_user = c.sh(&format!(
        "mkdir {m}/u && chown 1000:1000 {m}/u && {user} sh -c 'echo u > {m}/u/g; echo $?'; \
         {user} sh -c 'echo x > {m}/f' 2>/dev/null || echo denied; stat -c '%u %g' {m}/u/g"
    ));
    assert_eq!(as_user, ["0", "denied", "1000 1000"], "the user writes its own directory, not root's file");
    assert_eq!(c.sh(&format!("umount {m}; echo $?; grep -c ' {m} ' /proc/self/mountinfo")), ["0", "0"]);
    let ro = c.sh(&format!("mount -o ro {dev} {m}; echo $?; cat {m}/f {m}/u/g; touch {m}/new 2>/dev/null; echo $?"));
    assert_eq!(ro, ["0", "hi", "u", "1"]);
    assert!(mount_line(c, m).contains(" ro,"), "{}", mount_line(c, m));
    assert_eq!(c.sh(&format!("umount {m}; echo $?")), ["0"]);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_kernel_mounts_a_configured_type_of_the_container_s_own_device_id_mapped_nosuid_nodev() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = daemon_with(&env, &["ext4"]);
    let imgs = Images::new("kmount");
    let (plain, parted) = (imgs.make("plain.img", false), imgs.make("parted.img", true));
    let mut a = shell_container(&env, &["--name", "a"]);

    let d = a.sh(&format!("d=$(losetup -f --show {plain}); mkfs.ext4 -q $d; mkdir -p /tmp/m; echo $d"))[0].clone();
    let disk = imgs.disk(&d);
    assert_eq!(a.sh("mount $d /tmp/m; echo $?"), ["0"]);
    let line = mount_line(&mut a, "/tmp/m");
    for opt in ["nosuid", "nodev", "idmapped"] {
        assert!(line.split([' ', ',']).any(|o| o == opt), "{opt} in {line}");
    }
    assert!(line.contains(" - ext4 ") && line.contains("errors=remount-ro"), "{line}");
    write_umount_and_read_back(&mut a, &d, "/tmp/m");
    // On the disk: the container's own ids, as a native mount there writes.
    assert_eq!(owner_on_disk(&plain, "/f"), "User: 0 Group: 0");
    assert_eq!(owner_on_disk(&plain, "/u/g"), "User: 1000 Group: 1000");

    // A partition of its own, by the new mount API's fallback too.
    let p = a.sh(&format!("p=$(losetup -P -f --show {parted}); [ -e ${{p}}p1 ] || partx -a $p; echo $p"))[0].clone();
    let pdisk = imgs.disk(&p);
    assert_eq!(a.sh("mkfs.ext4 -q ${p}p1 && mkdir -p /tmp/p && mount ${p}p1 /tmp/p; echo $?"), ["0"]);
    assert_eq!(a.sh("echo p > /tmp/p/x && cat /tmp/p/x"), ["p"]);
    assert_eq!(a.sh("mount -o ro $d /tmp/m; echo $?"), ["0"]);
    let want = [
        (disk.name.clone(), "/tmp/m".to_owned(), "ext4", "kernel", true),
        (format!("{}p1", pdisk.name), "/tmp/p".to_owned(), "ext4", "kernel", false),
    ];
    assert_eq!(listed_mounts(&env, "a"), want, "devns ns ls shows them");

    // Dies with both mounted: mounts and loop devices go with it.
    drop(a);
    eventually("the dead container's loop devices removed", || disk.gone() && pdisk.gone());
    assert!(imgs.bound().is_empty());
    assert!(!host_mounts().iter().any(|m| m.contains(&disk.name) || m.contains(&pdisk.name)));
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_device_not_the_namespace_s_own_bad_options_and_bad_images_are_refused_and_change_nothing() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let d = daemon_with(&env, &["ext4"]);
    let imgs = Images::new("krefuse");
    let (mine, garbage) = (imgs.make("mine.img", false), imgs.make("garbage.img", false));
    std::fs::write(&garbage, vec![0x5a; 2 << 20]).unwrap();
    let host = Loop::new(false);
    assert!(
        std::process::Command::new("mkfs.ext4")
            .args(["-q", &format!("/dev/{}", host.name)])
            .status()
            .unwrap()
            .success()
    );
    let shared = SharedDir::new("krefuse-nodes");
    let (maj, min) = block_numbers(&host.name);
    let host_node = shared.node("host-disk", 'b', maj, min);
    let mut a = shell_container(&env, &["--name", "a"]);
    let mut b = shell_container(&env, &["--name", "b"]);
    let ad = a.sh(&format!("d=$(losetup -f --show {mine}); mkfs.ext4 -q $d; mkdir -p /tmp/m; echo $d"))[0].clone();
    imgs.disk(&ad);
    let (amaj, amin) = block_numbers(ad.trim_start_matches("/dev/"));
    let a_node = shared.node("a-disk", 'b', amaj, amin);
    b.sh("mkdir -p /tmp/m");

    // The host's disk and A's, through nodes host root made: EPERM, for
    // A too for the host's, and B for A's.
    let mount = |c: &mut Container, src: &str, opts: &str| {
        c.sh(&format!("mount -t ext4 {opts} {src} /tmp/m 2>&1 >/dev/null | grep -o 'permission denied' ; echo $?"))
    };
    assert_eq!(mount(&mut a, host_node.path(), ""), ["permission denied", "0"]);
    assert_eq!(mount(&mut b, a_node.path(), ""), ["permission denied", "0"]);
    assert_eq!(b.sh(&format!("mount -t ext4 {} /tmp/m 2>/dev/null; echo $?", a_node.path())), ["32"]);
    let not_own = log_lines(&env, "is not a block device of this namespace's");
    assert_eq!(not_own.len(), 3, "each refusal said why: {not_own:?}");
    assert!(not_own[0].contains(host_node.path()) && not_own[0].contains("mount ext4"), "{not_own:?}");
    // Options that would reach past its device, or stop the host.
    for opts in ["-o errors=panic", "-o journal_path=/dev/sda", "-o journal_dev=2049"] {
        assert_eq!(mount(&mut a, &ad, opts), ["permission denied", "0"], "{opts}");
    }
    assert_eq!(log_lines(&env, "names another device or a host path").len(), 2);
    assert_eq!(log_lines(&env, "errors=panic would let").len(), 1);
    // What a native mount answers: no source, not a block device, a bad
    // superblock (and the daemon unharmed).
    assert_eq!(a.sh("mount -t ext4 /nonexistent /tmp/m 2>&1 | grep -c 'does not exist'"), ["1"]);
    assert_eq!(a.sh("mount -t ext4 /dev/null /tmp/m 2>&1 | grep -c 'not a block device'"), ["1"]);
    let g = a.sh(&format!("g=$(losetup -f --show {garbage}); echo $g"))[0].clone();
    imgs.disk(&g);
    assert_eq!(a.sh("mount -t ext4 $g /tmp/m 2>/dev/null; echo $?"), ["32"]);
    assert_eq!(a.sh("grep -c ' /tmp/m ' /proc/self/mountinfo"), ["0"], "nothing mounted by any refusal");
    assert!(d.pid() > 0 && std::path::Path::new(&format!("/proc/{}", d.pid())).exists(), "the daemon lives");
    // Without CAP_SYS_ADMIN: as natively, EPERM.
    let nocaps = "setpriv --bounding-set=-all --inh-caps=-all mount $d /tmp/m 2>/dev/null; echo $?";
    assert_eq!(a.sh(nocaps), ["32"]);
    assert_eq!(log_lines(&env, "no CAP_SYS_ADMIN in its namespace").len(), 1);
    // Its own device still mounts.
    assert_eq!(a.sh("mount $d /tmp/m; echo $?; umount /tmp/m; echo $?"), ["0", "0"]);
    // Other filesystems are the kernel's, unchanged.
    assert_eq!(a.sh("mkdir -p /tmp/t && mount -t tmpfs none /tmp/t; echo $?; umount /tmp/t"), ["0"]);
    drop((a, b));
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn by_default_fuse2fs_serves_the_container_s_own_ext4_as_its_root_and_ends_with_it() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = daemon_with(&env, &[]);
    let imgs = Images::new("fmount");
    let (plain, parted, garbage) =
        (imgs.make("plain.img", false), imgs.make("parted.img", true), imgs.make("g.img", false));
    std::fs::write(&garbage, vec![0x5a; 2 << 20]).unwrap();
    let mut a = shell_container(&env, &["--name", "a"]);

    let d =
        a.sh(&format!("d=$(losetup -f --show {plain}); mkfs.ext4 -q $d; mkdir -p /tmp/m /tmp/m2; echo $d"))[0].clone();
    let disk = imgs.disk(&d);
    assert_eq!(a.sh("mount $d /tmp/m; echo $?"), ["0"]);
    let line = mount_line(&mut a, "/tmp/m");
    assert!(line.contains(&format!(" - fuse.ext4 {d} ")), "{line}");
    for opt in ["nosuid", "nodev"] {
        assert!(line.split([' ', ',']).any(|o| o == opt), "{opt} in {line}");
    }
    write_umount_and_read_back(&mut a, &d, "/tmp/m");
    assert_eq!(a.sh("mount $d /tmp/m; echo $?"), ["0"]);
    assert_eq!(listed_mounts(&env, "a"), [(disk.name.clone(), "/tmp/m".to_owned(), "ext4", "fuse", false)]);
    // One driver per device, as one kernel mount per block device holder.
    assert_eq!(a.sh("mount $d /tmp/m2 2>/dev/null; echo $?"), ["32"]);

    // A partition of its own; a bad image fails its mount, nothing attached.
    let p = a.sh(&format!("p=$(losetup -P -f --show {parted}); [ -e ${{p}}p1 ] || partx -a $p; echo $p"))[0].clone();
    let pdisk = imgs.disk(&p);
    assert_eq!(a.sh("mkfs.ext4 -q ${p}p1 && mkdir -p /tmp/p && mount ${p}p1 /tmp/p; echo $?"), ["0"]);
    assert_eq!(a.sh("echo p > /tmp/p/x && cat /tmp/p/x"), ["p"]);
    // The data options fuse2fs has are passed on (noload: no journal
    // replay, so read-only), the kernel's alone dropped.
    assert_eq!(
        a.sh("umount /tmp/p && mount -o noload,nodelalloc ${p}p1 /tmp/p; echo $?; cat /tmp/p/x; touch /tmp/p/y 2>/dev/null; echo $?"),
        ["0", "p", "1"]
    );
    let g = a.sh(&format!("g=$(losetup -f --show {garbage}); echo $g"))[0].clone();
    let gdisk = imgs.disk(&g);
    assert_eq!(
        a.sh("mkdir -p /tmp/g; mount -t ext4 $g /tmp/g 2>/dev/null; echo $?; grep -c ' /tmp/g ' /proc/self/mountinfo"),
        ["32", "0"]
    );

    // Dies with both mounted: drivers end, writing out, and loop devices go.
    drop(a);
    eventually("the dead container's loop devices removed", || disk.gone() && pdisk.gone() && gdisk.gone());
    assert!(imgs.bound().is_empty());
    assert_eq!(owner_on_disk(&plain, "/f"), "User: 0 Group: 0");
    assert_eq!(owner_on_disk(&plain, "/u/g"), "User: 1000 Group: 1000");
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn squashfuse_serves_a_squashfs_image_of_the_container_s_own() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = daemon_with(&env, &[]);
    let imgs = Images::new("sqmount");
    let src = imgs.dir.join("tree");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hello"), "squashed\n").unwrap();
    let img = imgs.dir.join("tree.squashfs");
    let made = std::process::Command::new("mksquashfs")
        .args([src.as_os_str(), img.as_os_str()])
        .args(["-quiet", "-noappend", "-all-root"])
        .status()
        .unwrap();
    assert!(made.success());
    let mut a = shell_container(&env, &["--name", "a"]);
    let d = a.sh(&format!("d=$(losetup -r -f --show {}); mkdir -p /tmp/s; echo $d", img.display()))[0].clone();
    let disk = imgs.disk(&d);
    assert_eq!(
        a.sh("mount -t squashfs -o ro $d /tmp/s; echo $?; cat /tmp/s/etc/hello; stat -c %u /tmp/s/etc/hello"),
        ["0", "squashed", "0"]
    );
    assert!(mount_line(&mut a, "/tmp/s").contains(" - fuse.squashfs "), "{}", mount_line(&mut a, "/tmp/s"));
    assert_eq!(a.sh("umount /tmp/s; echo $?"), ["0"]);
    // /dev/fuse is in the view: the container's own FUSE filesystems work
    // (a FUSE mount is the kernel's, as without devns).
    let own = format!(
        "mkdir -p /tmp/own && squashfuse {} /tmp/own; echo $?; cat /tmp/own/etc/hello; umount /tmp/own; echo $?",
        img.display()
    );
    assert_eq!(a.sh(&own), ["0", "squashed", "0"]);
    drop(a);
    eventually("the loop device removed", || disk.gone());
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_fuse_mount_outlives_a_daemon_crash_and_goes_with_its_namespace_after_the_restart() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut d = daemon_with(&env, &[]);
    let imgs = Images::new("fcrash");
    let img = imgs.make("plain.img", false);
    let mut a = shell_container(&env, &["--name", "a"]);
    let dev = a
        .sh(&format!("d=$(losetup -f --show {img}); mkfs.ext4 -q $d; mkdir -p /tmp/m; mount $d /tmp/m; echo $d"))[0]
        .clone();
    let disk = imgs.disk(&dev);
    assert_eq!(a.sh("echo before > /tmp/m/f; cat /tmp/m/f"), ["before"]);
    d.kill9();
    // The driver is no part of the daemon: the filesystem goes on.
    assert_eq!(a.sh("echo after >> /tmp/m/f; cat /tmp/m/f"), ["before", "after"]);
    let _d = daemon_with(&env, &[]);
    assert_eq!(listed_mounts(&env, "a"), [(disk.name.clone(), "/tmp/m".to_owned(), "ext4", "fuse", false)]);
    drop(a);
    // The driver ends with the mount (the restarted daemon never knew it),
    // having written out; then the device is removed.
    eventually("the dead container's loop device removed", || disk.gone());
    let out = std::process::Command::new("debugfs").args(["-R", "cat /f", &img]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "before\nafter\n");
}
