//! Where the agent makes device nodes, and what it answers: attacks of a
//! hostile container (issue 17, items 5 and 10 and the smaller ones), each
//! against the native answer.

mod common;
use common::*;
use std::path::Path;

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Names created in `dir` from now on, seen by inotify: a probe that
/// creates and removes a file at once is seen as well.
struct Watch {
    fd: rustix::fd::OwnedFd,
}

impl Watch {
    fn new(dir: &Path) -> Watch {
        use rustix::fs::inotify;
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).expect("inotify");
        inotify::add_watch(&fd, dir, inotify::WatchFlags::CREATE | inotify::WatchFlags::MOVED_TO).expect("watch");
        Watch { fd }
    }

    fn created(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
        let mut r = rustix::fs::inotify::Reader::new(&self.fd, &mut buf);
        while let Ok(ev) = r.next() {
            names.push(ev.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        }
        names
    }
}

/// A path on the host that the test removes on every path.
struct Gone(std::path::PathBuf);

impl Drop for Gone {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A world-writable directory of the host's, as `/var/tmp` is (the
/// container reaches it in the default mode): no node of the container's
/// may stay there after it ends, so none is made there.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn nodes_on_a_filesystem_shared_with_the_host_are_refused_and_none_is_left() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let lp = Loop::new(false);
    let (maj, min) = block_numbers(&lp.name);
    let m = marker("shared-node");
    let (on_loop, on_null) =
        (Gone(Path::new("/var/tmp").join(format!("{m}-loop"))), Gone(Path::new("/var/tmp").join(format!("{m}-null"))));
    let watch = Watch::new(Path::new("/var/tmp"));
    // The native answer of the same place, for a FIFO (never trapped): a
    // device gets it when it is an error, and EPERM otherwise.
    let script = format!(
        "mknod {l} b {maj} {min} 2>&1; echo loop=$?; mknod {n} c 1 3 2>&1; echo null=$?; \
         mkfifo {n}.fifo 2>/dev/null && echo fifo=0 && rm {n}.fifo; \
         mknod /tmp/l b {maj} {min} && blockdev --getsize64 /tmp/l; \
         mknod /dev/l2 b {maj} {min} && blockdev --getsize64 /dev/l2; \
         mknod /tmp/n c 1 3 && echo x > /tmp/n && echo tmp-null-ok; \
         mount -t devtmpfs none /mnt && mknod /mnt/n3 c 1 5 && head -c 3 /mnt/n3 | od -An -tx1",
        l = on_loop.0.display(),
        n = on_null.0.display(),
    );
    let o = env.run(&["--dev", &lp.name, "--", "sh", "-c", &script]);
    let got = out(&o);
    let lines: Vec<&str> = got.lines().collect();
    assert!(!on_loop.0.exists() && !on_null.0.exists(), "a node stayed on the host: {got}");
    // Other tests make their own directories in /var/tmp meanwhile: a name
    // of this test's is the FIFO alone, and no other is devns's.
    let fifo = format!("{m}-null.fifo");
    let created: Vec<String> = watch
        .created()
        .into_iter()
        .filter(|n| if n.starts_with(&m) { *n != fifo } else { !n.starts_with("devns-test-") })
        .collect();
    assert!(created.is_empty(), "devns created something on the host's filesystem: {created:?}");
    let fifo_made = lines.contains(&"fifo=0");
    if fifo_made {
        // Writable: the native answer of a user namespace, EPERM.
        assert!(lines.iter().filter(|l| l.contains("Operation not permitted")).count() == 2, "{got}");
    }
    assert!(lines.contains(&"loop=1") && lines.contains(&"null=1"), "{got}\n{}", err(&o));
    let size = (8u64 << 20).to_string();
    assert_eq!(lines.iter().filter(|l| **l == size).count(), 2, "nodes in /tmp and /dev work: {got}\n{}", err(&o));
    assert!(lines.contains(&"tmp-null-ok"), "{got}");
    assert!(lines.contains(&" 00 00 00"), "a node in a devtmpfs mount of the view works: {got}\n{}", err(&o));
    assert!(err(&o).contains("not a filesystem devns made for the container"), "the refusal says why: {}", err(&o));
}

/// The same through the daemon: its containers' `/tmp` is the daemon's
/// own making, so nodes work there and nowhere on the host's filesystems.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn under_the_daemon_nodes_work_in_tmp_and_the_view_only() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let lp = Loop::new(false);
    let (maj, min) = block_numbers(&lp.name);
    let on_host = Gone(Path::new("/var/tmp").join(marker("daemon-node")));
    let mut a = shell_container(&env, &["--name", "a", "--dev", &lp.name]);
    let mk = |at: &str| format!("mknod {at} b {maj} {min} 2>/dev/null; echo $?");
    assert_eq!(a.sh(&mk(&on_host.0.display().to_string())), ["1"]);
    assert!(!on_host.0.exists(), "a node stayed on the host");
    assert_eq!(a.sh(&mk("/tmp/l")), ["0"]);
    assert_eq!(a.sh("blockdev --getsize64 /tmp/l"), [(8u64 << 20).to_string()]);
    assert_eq!(a.sh(&mk("/dev/l2")), ["0"]);
}

/// A directory of the host's that the container reaches but may not write
/// (root's, 0755, as `/etc`): nothing is ever created there, and the answer
/// is the kernel's own (`EACCES`, before any question of devices).
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn mknod_where_the_caller_may_not_write_creates_nothing_and_answers_natively() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let dir = SharedDir::new("nowrite");
    let watch = Watch::new(&dir.0);
    let d = dir.0.display();
    let script = format!(
        "for i in 1 2 3; do mknod {d}/n$i c 1 3 2>&1; mknod {d}/b$i b 7 0 2>&1; mkfifo {d}/f$i 2>&1; done; \
         cd {d} && mknod rel c 1 3 2>&1; true"
    );
    let o = env.run(&["--", "sh", "-c", &script]);
    let got = out(&o);
    let created = watch.created();
    assert!(created.is_empty(), "created in a directory the caller may not write: {created:?}");
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
    // The native answer: the same identity (root of a user namespace mapped
    // to the container's unprivileged host uid), without devns.
    let native = std::process::Command::new("setpriv")
        .args(["--reuid", "100000", "--regid", "100000", "--clear-groups", "unshare", "-U", "-r", "mknod"])
        .arg(dir.0.join("x"))
        .args(["c", "1", "3"])
        .output()
        .unwrap();
    assert!(err(&native).contains("Permission denied"), "native: {}", err(&native));
    assert_eq!(got.lines().count(), 10, "{got}\n{}", err(&o));
    assert!(got.lines().all(|l| l.contains("Permission denied")), "{got}");
}

/// A trapped `mknod` interrupted by signals (thousands of them, against
/// thousands of calls) answers what a native one does: it made its node
/// (0), never EPERM, never EINTR.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_signal_storm_against_mknod_gets_native_answers() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let shared = SharedDir::new("storm");
    let me = shared.testbin();
    let o = env
        .devns()
        .args(["run", "--"])
        .arg(&me)
        .arg("signal-storm")
        .env("DEVNS_STORM_ITERATIONS", "6000")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let got = out(&o);
    let line = got.lines().find_map(|l| l.split_once("STORM ").map(|(_, r)| r.to_owned()));
    let line = line.unwrap_or_else(|| panic!("no report: {got}\n{}", err(&o)));
    let (json, sent) = line.split_once(' ').unwrap();
    let errnos: std::collections::BTreeMap<i32, usize> = serde_json::from_str(json).unwrap();
    assert!(sent.parse::<u64>().unwrap() > 1000, "the storm was too weak to test anything: {line}");
    assert_eq!(errnos.keys().copied().collect::<Vec<_>>(), [0], "only successes, as natively: {line}");
}

/// Whiteouts (`c 0 0`), which overlayfs makes and the kernel lets anyone
/// who may write the directory make (no device is behind them): native
/// answers, on the container's `/tmp` and on a tmpfs of its own.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn whiteouts_are_made_as_natively() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let script = "mknod /tmp/w c 0 0 && stat -c '%F %t:%T %U' /tmp/w; \
                  mount -t tmpfs none /srv && mknod /srv/w c 0 0 && stat -c '%F %t:%T' /srv/w; \
                  mknod /tmp/w c 0 0 2>&1 | grep -q 'File exists' && echo eexist";
    let o = env.run(&["--", "sh", "-c", script]);
    assert_eq!(
        out(&o).lines().collect::<Vec<_>>(),
        ["character special file 0:0 root", "character special file 0:0", "eexist"],
        "{}",
        err(&o)
    );
    // Natively, in a user namespace of the same kind, on a tmpfs host root
    // made: the same.
    let tmp = tempfile::tempdir().unwrap();
    let native = std::process::Command::new("unshare")
        .args([
            "-U",
            "-r",
            "-m",
            "sh",
            "-c",
            "mount -t tmpfs none \"$0\" && mknod \"$0/w\" c 0 0 && stat -c '%F %t:%T' \"$0/w\"",
        ])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out(&native).trim(), "character special file 0:0", "native: {}", err(&native));
}

/// Names that are not UTF-8 are names like any other: the node is made at
/// exactly that name, in exactly that directory.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn non_utf8_names_are_made_exactly() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let script = "d=$(printf '/tmp/\\377d'); n=$(printf '\\376n'); mkdir \"$d\" && \
                  mknod \"$d/x\" c 1 3 && echo x > \"$d/x\" && echo in-dir; \
                  mknod \"/tmp/$n\" c 1 3 && echo x > \"/tmp/$n\" && echo named; \
                  LC_ALL=C ls /tmp | LC_ALL=C grep -v \"$(printf '\\377')\" | od -An -tx1";
    let o = env.run(&["--", "sh", "-c", script]);
    let got = out(&o);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines, ["in-dir", "named", " fe 6e 0a"], "{}", err(&o));
}

/// Paths through procfs's `self` and `thread-self` and its magic links
/// (`root`, `cwd`, `fd/N`, and `/dev/fd`, which points there) name what
/// the caller's own lookup finds: each `mknod` answers as a FIFO's `mknod`
/// in the same directory does (FIFOs are never trapped: the kernel's own
/// answer), and where that is made, the node is made and works.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn proc_self_paths_answer_as_natively() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let dirs = [
        "/proc/self/root/tmp",
        "/proc/thread-self/root/tmp",
        "/proc/self/cwd",
        "/proc/self/fd/3",
        "/dev/fd/3",
        "/proc/self/root/tmp/../tmp",
        // devns's init is not dumpable (the container may not trace it):
        // natively EACCES even for container root, and so for devns.
        "/proc/1/root/tmp",
        "/proc/self/root/nonexistent",
        "/proc/self/fd/4",
        "/proc/self/fd/99",
        "/proc/self",
    ];
    let mut script = String::from("cd /tmp; exec 3</tmp 4</etc/hostname; ");
    for (i, d) in dirs.iter().enumerate() {
        script.push_str(&format!(
            "mkfifo {d}/f{i} 2>/dev/null; f=$?; mknod {d}/n{i} c 1 3 2>/dev/null; n=$?; \
             [ -c /tmp/n{i} ] && echo x > /tmp/n{i} && w=works || w=-; echo {i} $f $n $w; "
        ));
    }
    let o = env.run(&["--", "sh", "-c", &script]);
    let got = out(&o);
    let lines: Vec<Vec<&str>> = got.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), dirs.len(), "{got}\n{}", err(&o));
    for (l, d) in lines.iter().zip(dirs) {
        assert_eq!(l[1], l[2], "{d}: mkfifo and mknod answer alike: {got}\n{}", err(&o));
    }
    let works: Vec<&str> =
        lines.iter().filter(|l| l[3] == "works").map(|l| dirs[l[0].parse::<usize>().unwrap()]).collect();
    assert_eq!(works, &dirs[..6], "{got}\n{}", err(&o));
    // Another process's magic links, for a caller with CAP_MKNOD alone: of
    // its own user's process as natively (made), of root's as natively
    // (EACCES: it may not trace it).
    let as_user = "setpriv --reuid 1000 --regid 1000 --clear-groups --inh-caps +mknod --ambient-caps +mknod";
    let script = format!(
        "{as_user} sh -c 'sleep 100 & s=$!; for d in /proc/$s/root/tmp /proc/1/root/tmp; do \
         mkfifo $d/f 2>&1; mknod $d/n c 1 3 2>&1; done; kill $s' | sed 's/.*: //'; ls /tmp"
    );
    let o = env.run(&["--", "sh", "-c", &script]);
    assert_eq!(
        out(&o).lines().collect::<Vec<_>>(),
        ["Permission denied", "Permission denied", "f", "n"],
        "{}",
        err(&o)
    );
}

/// The walk through magic links stays inside the caller's root: a
/// directory fd from outside it (inherited), reached as `/proc/self/fd/N`
/// or through a symlink to that, or `..` above the root after a magic
/// link, puts no node outside (`EPERM`, as a dirfd outside the root gets).
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn magic_links_never_lead_a_node_outside_the_root() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let root = busybox_rootfs(env.dir.path());
    let (outside, dirfd) = inherited_dir(&env);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dirfd);
    let script = format!(
        "b=/bin/busybox; for i in $($b seq 200); do $b mknod /proc/self/fd/{fd}/n$i c 1 3 2>/dev/null; echo $?; \
         $b ln -sf /proc/self/fd/{fd} /tmp/l; $b mknod /tmp/l/s$i c 1 3 2>/dev/null; echo $?; \
         $b mknod /proc/self/fd/{fd}/../../../../n$i c 1 3 2>/dev/null; echo $?; \
         $b mknod /proc/self/root/../../../tmp/r$i c 1 3 2>/dev/null && [ -c /tmp/r$i ] && echo in-root; \
         done | $b sort | $b uniq -c"
    );
    let o =
        env.devns().args(["run", "--rootfs", root.to_str().unwrap(), "--", "/bin/sh", "-c", &script]).output().unwrap();
    drop(dirfd);
    let got = out(&o);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "a node appeared outside the root: {got}");
    let counts: Vec<String> = got.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(counts, ["600 1", "200 in-root"], "{got}\n{}", err(&o));
}

/// A user namespace nested in the container's makes global nodes on the
/// container's own filesystems (they end with it, as the nested one's
/// processes do), and on no other.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_nested_namespace_makes_global_nodes_on_the_container_s_filesystems_only() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let on_host = Gone(Path::new("/var/tmp").join(marker("nested-node")));
    let script = format!(
        "unshare -U -r sh -c 'mknod /tmp/n c 1 3 && echo x > /tmp/n && echo tmp-ok; \
         mknod /dev/n c 1 5 && head -c1 /dev/n | od -An -tx1; \
         mknod {} c 1 3 2>&1; echo host=$?'",
        on_host.0.display()
    );
    let o = env.run(&["--", "sh", "-c", &script]);
    let got = out(&o);
    assert!(!on_host.0.exists(), "a node stayed on the host: {got}");
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines[..2], ["tmp-ok", " 00"], "{got}\n{}", err(&o));
    assert!(lines[2].contains("Operation not permitted") && lines[3] == "host=1", "{got}");
}

/// The path is looked up with the caller's permissions: a directory it
/// may write but not reach (below one it may not search) is as closed to
/// its `mknod` as to its `mkfifo`, through every way of naming it.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_path_is_looked_up_with_the_caller_s_permissions() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let as_user = "setpriv --reuid 1000 --regid 1000 --clear-groups --inh-caps +mknod --ambient-caps +mknod";
    let script = format!(
        "mkdir -p /tmp/a/b && chmod 0777 /tmp/a/b && chmod 0700 /tmp/a && ln -s /tmp/a/b /tmp/l; \
         for d in /tmp/a/b /tmp/l /proc/self/root/tmp/a/b; do \
         {as_user} mkfifo $d/f 2>&1; {as_user} mknod $d/n c 1 3 2>&1; done | sed 's/.*: //'; ls /tmp/a/b"
    );
    let o = env.run(&["--", "sh", "-c", &script]);
    assert_eq!(out(&o).lines().collect::<Vec<_>>(), ["Permission denied"; 6], "{}", err(&o));
}

/// The caller's capabilities over the directories on its path count as
/// natively, and only as natively (the kernel's `capable_wrt_inode_uidgid`:
/// held effective in its namespace, over an inode whose owner and group
/// that namespace maps): each identity's `mknod` answers what its `mkfifo`
/// (never trapped) answers in the same directory. `/tmp/a` is container
/// root's and 0700 (with `/tmp/a/b` 0777), `/tmp/o` uid 1000's and 0755,
/// `/tmp/s` uid 1000's and 0700 (with `/tmp/s/t` 0777), `/tmp/g` uid
/// 1000's, 2777; `/tmp/acl` root's, 0700 with an ACL granting uid 1000 rwx,
/// `/tmp/acld` 0777 with one granting it r-x only.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_caller_s_capabilities_count_over_its_path_as_natively() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let user = |caps: &str| {
        format!("setpriv --reuid 1000 --regid 1000 --clear-groups --inh-caps {caps} --ambient-caps {caps}")
    };
    let root_without = |caps: &str| format!("setpriv --inh-caps -all --bounding-set {caps}");
    let cases: Vec<(&str, String, &str, &str)> = vec![
        // (label, identity, directory, what both answer)
        ("user", user("+mknod"), "/tmp/a/b", "Permission denied"),
        ("user+search", user("+mknod,+dac_read_search"), "/tmp/a/b", "ok"),
        ("user+search:write", user("+mknod,+dac_read_search"), "/tmp/a", "Permission denied"),
        ("root", "env".into(), "/tmp/o", "ok"),
        ("root:search", "env".into(), "/tmp/s/t", "ok"),
        ("root:proc", "env".into(), "/proc/self/root/tmp/s/t", "ok"),
        ("root-dac", root_without("-dac_override,-dac_read_search"), "/tmp/o", "Permission denied"),
        ("root-dac:search", root_without("-dac_override,-dac_read_search"), "/tmp/s/t", "Permission denied"),
        ("root-search", root_without("-dac_read_search"), "/tmp/s/t", "ok"),
        ("root-override", root_without("-dac_override"), "/tmp/o", "Permission denied"),
        ("root-override:search", root_without("-dac_override"), "/tmp/s/t", "ok"),
        // Root of a nested namespace that maps container root alone: uid
        // 1000's directories have unmapped ids there.
        ("nested", "unshare -U -r".into(), "/tmp/o", "Permission denied"),
        ("nested:search", "unshare -U -r".into(), "/tmp/s/t", "Permission denied"),
        ("nested:own", "unshare -U -r".into(), "/tmp/a/b", "ok"),
        // POSIX ACLs, the kernel's own: a named-user entry that grants what
        // the mode does not, and one that denies what "other" grants.
        ("user:acl", user("+mknod"), "/tmp/acl", "ok"),
        ("user:acl-deny", user("+mknod"), "/tmp/acld", "Permission denied"),
    ];
    let mut script = String::from(
        "set -u; mkdir -p /tmp/a/b /tmp/o /tmp/s/t /tmp/g && chmod 0777 /tmp/a/b /tmp/s/t && chmod 0700 /tmp/a \
         && chown 1000:1000 /tmp/o /tmp/s /tmp/g && chmod 0755 /tmp/o && chmod 0700 /tmp/s && chmod 2777 /tmp/g \
         && mkdir -m 0700 /tmp/acl && setfacl -m u:1000:rwx /tmp/acl \
         && mkdir -m 0777 /tmp/acld && setfacl -m u:1000:r-x /tmp/acld \
         || exit 9; \
         r() { \"$@\" 2>&1 >/dev/null | sed 's/.*: //' | grep . || echo ok; }; ",
    );
    for (i, (label, who, dir, _)) in cases.iter().enumerate() {
        script.push_str(&format!("echo \"{label}|$(r {who} mkfifo {dir}/f{i})|$(r {who} mknod {dir}/n{i} c 1 3)\"; "));
    }
    // `S_ISGID` in a setgid directory of a group not the caller's: kept
    // where `CAP_FSETID` counts, dropped where it does not.
    for (label, who) in [("sgid", "env"), ("sgid-fsetid", "setpriv --inh-caps -all --bounding-set -fsetid")] {
        script.push_str(&format!(
            "{who} busybox mkfifo -m 2750 /tmp/g/f{label}; {who} busybox mknod -m 2750 /tmp/g/n{label} c 1 3; \
             echo \"{label}|$(stat -c %a /tmp/g/f{label})|$(stat -c %a /tmp/g/n{label})\"; "
        ));
    }
    let o = env.run(&["--", "sh", "-c", &script]);
    let got = out(&o);
    let mut want: Vec<String> = cases.iter().map(|(l, _, _, a)| format!("{l}|{a}|{a}")).collect();
    want.extend(["sgid|2750|2750".into(), "sgid-fsetid|750|750".into()]);
    assert_eq!(got.lines().collect::<Vec<_>>(), want, "{}", err(&o));
}
