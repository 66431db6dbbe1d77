//! The seccomp agent against the real kernel, as root, with unmodified
//! tools inside containers: coreutils and busybox `mknod`, util-linux and
//! busybox `mount`; and attacks from a program of our own inside a rootfs.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn mknod_of_visible_devices_works_and_of_others_is_refused() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let lp = Loop::new(false);
    let other = Loop::new(false);
    let mut b = shell_container(&env, &["--name", "b", "--dev", &other.name]);
    let st = rustix::fs::stat(format!("/dev/{}", lp.name)).unwrap();
    let (maj, min) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    let ost = rustix::fs::stat(format!("/dev/{}", other.name)).unwrap();
    let root_disk = rustix::fs::stat("/").unwrap().st_dev;
    let script = format!(
        "mknod /dev/null2 c 1 3 && echo data > /dev/null2 && echo null2-ok; \
         busybox mknod /tmp/n c 1 3 && echo data > /tmp/n && echo tmp-ok; \
         mknod /tmp/l b {maj} {min} && blockdev --getsize64 /tmp/l; \
         mknod /tmp/mem c 1 1 2>/dev/null; echo mem=$?; \
         mknod /tmp/root b {rmaj} {rmin} 2>/dev/null; echo root=$?; \
         mknod /tmp/other b {omaj} {omin} 2>/dev/null; echo other=$?; \
         mkfifo /tmp/f1 && mknod /tmp/f2 p && [ -p /tmp/f1 ] && [ -p /tmp/f2 ] && echo fifo-ok; \
         umask 077; mknod /tmp/u c 1 5 && stat -c '%a %U' /tmp/u",
        rmaj = rustix::fs::major(root_disk),
        rmin = rustix::fs::minor(root_disk),
        omaj = rustix::fs::major(ost.st_rdev),
        omin = rustix::fs::minor(ost.st_rdev),
    );
    let o = env.run(&["--dev", &lp.name, "--", "sh", "-c", &script]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<String> = out(&o).lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        ["null2-ok", "tmp-ok", &(8u64 << 20).to_string(), "mem=1", "root=1", "other=1", "fifo-ok", "600 root"],
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The refusals say why, in devns's log.
    assert!(String::from_utf8_lossy(&o.stderr).contains("neither global nor owned"));
    assert!(b.sh("ls /dev").contains(&other.name), "B keeps its device");
}

/// The node is checked and owned as the caller's own would be: its fsuid,
/// fsgid and supplementary groups against the directory's permissions and
/// `setgid` bit, and its umask alone (not devns's) on the mode.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn mknod_is_checked_and_owned_as_the_caller_with_its_groups_and_umask() {
    if !privileged() {
        return;
    }
    // devns's own umask must not reach the container's nodes: make it one
    // that would show (this test runs in a process of its own).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o027));
    let env = Env::new();
    let as_user = "setpriv --reuid 1000 --regid 1000 --inh-caps +mknod --ambient-caps +mknod";
    let script = format!(
        "mkdir /tmp/g && chown 0:1234 /tmp/g && chmod 2770 /tmp/g; \
         umask 022; {as_user} --groups 1234 mknod /tmp/g/n c 1 3 && stat -c '%u %g %a' /tmp/g/n; \
         {as_user} --clear-groups mknod /tmp/g/m c 1 3 2>&1 | grep -q 'Permission denied' && echo no-group-eacces; \
         [ -e /tmp/g/m ] || echo nothing-made; \
         umask 0; mknod /tmp/z c 1 5 && stat -c '%a %u %g' /tmp/z; \
         umask 0; mknod -m 0604 /tmp/w c 1 5 && stat -c '%a' /tmp/w"
    );
    let o = env.run(&["--", "sh", "-c", &script]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<String> = out(&o).lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        ["1000 1234 644", "no-group-eacces", "nothing-made", "666 0 0", "604"],
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn mknod_where_nodes_cannot_work_is_refused_and_errors_are_native() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let script = "mount -t tmpfs none /srv && mknod /srv/n c 1 3 2>/dev/null; echo userns-tmpfs=$?; \
                  mknod /dev/null 2>&1 c 1 3 | grep -q 'File exists' && echo eexist; \
                  mknod /nonexistent/x c 1 3 2>&1 | grep -q 'No such file' && echo enoent; \
                  touch /tmp/file; mknod /tmp/file/x c 1 3 2>&1 | grep -q 'Not a directory' && echo enotdir; \
                  mount -o remount,ro /tmp 2>/dev/null; mount -t tmpfs -o ro none /mnt; mknod /mnt/x c 1 3 2>/dev/null; echo ro=$?";
    let o = env.run(&["--", "sh", "-c", script]);
    let got = out(&o);
    assert!(got.contains("userns-tmpfs=1"), "{got}");
    for want in ["eexist", "enoent", "enotdir", "ro=1"] {
        assert!(got.lines().any(|l| l == want), "missing {want}: {got} / {}", String::from_utf8_lossy(&o.stderr));
    }
}

/// From a terminal, `devns run` has a second thread, its terminal relay:
/// the agent still enters the caller's mount namespace for a devtmpfs
/// (the kernel refuses that to a thread that shares its `fs_struct`) and
/// makes nodes with the caller's umask.
#[test]
fn under_a_terminal_mount_devtmpfs_and_mknod_work() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let inner =
        "mount -t devtmpfs none /mnt && ls /mnt/null && umask 077 && mknod /tmp/n c 1 3 && stat -c 'mode=%a' /tmp/n";
    let line = format!("{} run -- sh -c \"{inner}\"", env!("CARGO_BIN_EXE_devns"));
    let mut script = std::process::Command::new("script");
    script.args(["-qec", &line, "/dev/null"]).stdin(std::process::Stdio::null());
    let o = env.devns_env(&mut script).output().expect("script");
    let got = out(&o);
    assert!(got.contains("/mnt/null") && got.contains("mode=600"), "{got} / {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn mount_devtmpfs_shows_the_callers_own_view() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let lp = Loop::new(false);
    let mut a = shell_container(&env, &["--name", "a", "--dev", &lp.name]);
    let mut b = shell_container(&env, &["--name", "b"]);
    assert!(a.sh("mount -t devtmpfs none /mnt && ls /mnt").contains(&lp.name), "util-linux mount in A");
    let in_b = b.sh("busybox mount -t devtmpfs none /mnt && ls /mnt");
    assert_eq!(sorted(in_b), default_view(), "busybox mount in B shows B's view");
    // One superblock per namespace: a node made in A's mount is at A's /dev.
    assert_eq!(a.sh("mknod /mnt/extra c 1 3 && ls /dev/extra"), ["/dev/extra"]);
    assert!(!b.sh("ls /dev /mnt").contains(&"extra".to_owned()));
    assert_eq!(a.sh("mount -o ro -t devtmpfs none /media && touch /media/x 2>/dev/null; echo $?"), ["1"]);
    // Other mounts go to the kernel untouched.
    assert_eq!(a.sh("mount -t tmpfs none /srv && echo ok"), ["ok"]);
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_daemon_is_the_agent_when_it_runs() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let lp = Loop::new(false);
    let mut a = shell_container(&env, &["--name", "a"]);
    let st = rustix::fs::stat(format!("/dev/{}", lp.name)).unwrap();
    let mk = format!(
        "mknod /tmp/l b {} {} 2>/dev/null; echo $?",
        rustix::fs::major(st.st_rdev),
        rustix::fs::minor(st.st_rdev)
    );
    assert_eq!(a.sh(&mk), ["1"], "not owned yet");
    devns_ok(&env, &["assign", &lp.name, "--to", "a"]);
    assert_eq!(a.sh(&mk), ["0"], "owned now: the daemon's policy follows live ownership");
    assert!(a.sh("mount -t devtmpfs none /mnt && ls /mnt").contains(&lp.name));
}

/// A minimal rootfs: busybox, the helper binary (in `/bin`: the
/// container's `/tmp` is a fresh tmpfs, so nothing may live there), and
/// their libraries.
fn make_rootfs(dir: &Path) -> PathBuf {
    let me = Path::new(TESTBIN);
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(me, root.join("bin/devns-testbin")).unwrap();
    for bin in [Path::new("/bin/busybox"), me] {
        let ldd = std::process::Command::new("ldd").arg(bin).output().unwrap();
        let mut files = vec![bin.to_path_buf()];
        for l in String::from_utf8_lossy(&ldd.stdout).lines() {
            if let Some(p) = l.split_whitespace().find(|w| w.starts_with('/')) {
                files.push(PathBuf::from(p));
            }
        }
        for f in files.into_iter().filter(|f| f != me) {
            let dst = root.join(f.strip_prefix("/").unwrap());
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(&f, &dst).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    root
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn attacks_never_put_a_node_outside_the_root() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let root = make_rootfs(env.dir.path());
    let outside = env.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    // A host directory fd the container inherits: not close-on-exec.
    let dirfd = rustix::fs::open(
        &outside,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&dirfd);
    let o = env
        .devns()
        .args(["run", "--rootfs", root.to_str().unwrap(), "--"])
        .args(["/bin/devns-testbin", "attack"])
        .env("DEVNS_ATTACK_OUTSIDE", &outside)
        .env("DEVNS_ATTACK_FD", raw.to_string())
        .output()
        .unwrap();
    drop(dirfd);
    let stdout = out(&o);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    let json = stdout
        .lines()
        .find_map(|l| l.find('{').map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no report: {stdout}\n{}", String::from_utf8_lossy(&o.stderr)));
    let errnos: std::collections::BTreeMap<String, Vec<i32>> = serde_json::from_str(json).unwrap();
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "a node appeared outside the root: {errnos:?}");
    assert_eq!(errnos["dirfd"], [libc::EPERM], "a dirfd outside the root is refused");
    assert_eq!(errnos["garbage"], [libc::EFAULT]);
    // Resolved inside the root, where those directories do not exist.
    assert_eq!(errnos["symlink"], [libc::ENOENT]);
    assert_eq!(errnos["dotdot"], [libc::ENOENT]);
    assert!(errnos["swap"].iter().all(|e| [0, libc::ENOENT].contains(e)), "{errnos:?}");
}
