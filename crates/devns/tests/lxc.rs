//! LXC 5.0 from Debian with devns's config lines (`devns lxc config`): an
//! unprivileged busybox container (`lxc-create -t busybox`) whose `/dev`
//! is its view, its `mknod`, mount and loop-control calls served through
//! LXC's seccomp notify proxy (devns's `lxc.sock`), and nothing left after
//! `lxc-stop`.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// An LXC container of the test's own in a directory of its own (`-P`),
/// stopped and destroyed on drop, with the cgroups LXC leaves.
struct Lxc {
    dir: PathBuf,
    name: String,
}

impl Lxc {
    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.arg("-P").arg(&self.dir).args(["-n", &self.name]);
        c
    }

    /// `lxc-start -d`, with no newuidmap on its path (`/etc/subuid` here
    /// gives root nothing, and as root LXC writes the maps itself), logging
    /// to `start.log`.
    fn start(&self, env: &Env) -> Output {
        let mut c = self.cmd("/usr/bin/lxc-start");
        c.args(["-d", "-l", "DEBUG", "-o"]).arg(self.log()).env("PATH", "/usr/sbin:/sbin");
        env.devns_env(&mut c).output().expect("lxc-start")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("start.log")
    }

    /// `sh -c SCRIPT` in the container; its output and errors together.
    fn sh(&self, script: &str) -> String {
        let o = self.cmd("lxc-attach").args(["--clear-env", "--", "/bin/sh", "-c", script]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    }

    fn stop(&self) {
        let _ = self.cmd("lxc-stop").arg("-k").stderr(Stdio::null()).status();
    }
}

impl Drop for Lxc {
    fn drop(&mut self) {
        self.stop();
        let _ = self.cmd("lxc-destroy").stdout(Stdio::null()).stderr(Stdio::null()).status();
        for d in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            for c in [format!("lxc.payload.{}", self.name), format!("lxc.monitor.{}", self.name), "lxc.pivot".into()] {
                // Only when empty: lxc.pivot is every container's.
                let _ = std::fs::remove_dir(d.path().join(c));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The busybox container, configured with `devns lxc config`'s lines and
/// `devns lxc policy`'s file, with util-linux `losetup` and e2fsprogs'
/// `mke2fs` beside busybox.
fn container(env: &Env) -> Lxc {
    let lxc = Lxc { dir: reachable_dir("lxc"), name: format!("devns-lxc-{}", std::process::id()) };
    let policy = lxc.dir.join("devns.seccomp");
    std::fs::write(&policy, devns_ok(env, &["lxc", "policy"])).unwrap();
    let lines = devns_ok(env, &["lxc", "config", "--policy", policy.to_str().unwrap()]);
    let base = common::oci::id_block();
    let conf = format!(
        "lxc.idmap = u 0 {base} 65536\nlxc.idmap = g 0 {base} 65536\nlxc.net.0.type = empty\n\
         lxc.apparmor.profile = unconfined\n{lines}"
    );
    let file = lxc.dir.join("lxc.conf");
    std::fs::write(&file, conf).unwrap();
    let o = lxc.cmd("lxc-create").args(["-t", "busybox", "-f"]).arg(&file).output().expect("lxc-create");
    assert!(o.status.success(), "lxc-create: {}", String::from_utf8_lossy(&o.stderr));
    let root = lxc.dir.join(&lxc.name).join("rootfs");
    for tool in ["/usr/sbin/losetup", "/usr/sbin/mke2fs"] {
        // busybox's applet link of the same name goes first: copying onto
        // it would overwrite busybox.
        let name = Path::new(tool).file_name().unwrap();
        let _ = std::fs::remove_file(root.join("bin").join(name));
        common::oci::copy_with_libs(&root, Path::new(tool), &Path::new("/bin").join(name));
    }
    lxc
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn an_unprivileged_lxc_container_gets_its_view_mknod_and_loop_devices_and_leaves_nothing() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut d = Daemon::start(&env);
    let lxc = container(&env);
    let mounts_before = env.host_mounts();
    let o = lxc.start(&env);
    assert!(o.status.success(), "lxc-start: {}\n{}", String::from_utf8_lossy(&o.stderr), log_tail(&lxc));

    // Its /dev is the view, with LXC's own mounts (devpts, shm, mqueue,
    // its ttys and console) carried onto it.
    let listing = lxc.sh("ls /dev");
    let names: Vec<&str> = listing.lines().collect();
    for want in ["null", "zero", "fuse", "loop-control", "pts", "shm", "console"] {
        assert!(names.contains(&want), "{want} in the container's /dev:\n{listing}");
    }
    assert!(!names.contains(&"mem") && !names.contains(&"kmsg"), "a host device in the view:\n{listing}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&devns_ok(&env, &["ns", "ls", "--json"])).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["name"], lxc.name.as_str());

    // mknod of a global works, of /dev/mem is refused: through LXC's proxy.
    let got = lxc.sh("mknod /dev/n c 1 3 && echo x > /dev/n && echo made; mknod /dev/m c 1 1 || echo refused");
    assert!(got.contains("made") && got.contains("refused") && got.contains("Operation not permitted"), "{got}");

    // busybox's losetup takes loop-control's answer (it stops at loop1023).
    let got = lxc.sh("busybox losetup -f");
    assert!(got.trim().starts_with("/dev/loop"), "busybox losetup -f: {got}");
    // A loop device of its own through its loop-control, and a filesystem.
    let got = lxc
        .sh("dd if=/dev/zero of=/tmp/img bs=1M count=8 2>/dev/null; d=$(losetup -f --show /tmp/img); echo $d; \
         mke2fs -t ext4 -q $d && echo mkfs-ok; losetup -d $d");
    let dev = got.lines().next().unwrap_or_default().trim_start_matches("/dev/").to_owned();
    assert!(dev.starts_with("loop") && got.contains("mkfs-ok"), "{got}");
    let owned = env.owned();
    assert!(owned.iter().any(|o| o["name"] == dev.as_str()), "{dev} the container's: {owned:?}");

    // Stopped: the namespace is let go, its loop device and view gone.
    lxc.stop();
    eventually("the namespace let go", || {
        devns_ok(&env, &["ns", "ls", "--json"]).trim() == "[]" && !Path::new(&format!("/sys/block/{dev}")).exists()
    });
    assert!(env.owned().is_empty());
    assert_eq!(env.host_mounts(), mounts_before, "a mount left after lxc-stop");

    // With no daemon, the container does not start, and its log says why.
    d.stop();
    let o = lxc.start(&env);
    assert!(!o.status.success(), "started without a daemon");
    let log = std::fs::read_to_string(lxc.log()).unwrap_or_default();
    assert!(log.contains("no devns daemon at"), "the reason in LXC's log:\n{}", log_tail(&lxc));
}

/// The last lines of the container's start log, for a failure's message.
fn log_tail(lxc: &Lxc) -> String {
    let log = std::fs::read_to_string(lxc.log()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("ERROR") || l.contains("produced output")).collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

/// The proxy socket: root's alone (its mode), and a message devns cannot
/// read (short, sizes not the kernel's, no fds) ends that connection with
/// a log line and changes nothing; the daemon goes on.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn bad_proxy_messages_end_their_connection_and_change_nothing() {
    if !privileged() {
        return;
    }
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketType};
    let env = Env::new();
    let _d = logged_daemon(&env, &[]);
    let path = devns_core::layout::lxc_socket(&env.socket());
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "root's alone");
    let header_only = {
        let mut m = vec![0u8; 32];
        m[16..18].copy_from_slice(&80u16.to_ne_bytes());
        m[18..20].copy_from_slice(&24u16.to_ne_bytes());
        m[20..22].copy_from_slice(&64u16.to_ne_bytes());
        m
    };
    let wrong_sizes = {
        let mut m = vec![0u8; 32 + 88 + 24];
        m[16..18].copy_from_slice(&88u16.to_ne_bytes());
        m[18..20].copy_from_slice(&24u16.to_ne_bytes());
        m[20..22].copy_from_slice(&64u16.to_ne_bytes());
        m
    };
    let no_fds = {
        let mut m = header_only.clone();
        m.resize(32 + 80 + 24, 0);
        m
    };
    for (msg, why) in [(vec![1u8; 10], "shorter than"), (wrong_sizes, "structure sizes"), (no_fds, "0 fds")] {
        let s = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
        rustix::net::connect(&s, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        rustix::net::send(&s, &msg, SendFlags::empty()).unwrap();
        let mut buf = [0u8; 256];
        // Closed by the daemon: end of file, no reply.
        assert_eq!(rustix::net::recv(&s, &mut buf, RecvFlags::empty()).unwrap().0, 0, "{why}");
        eventually("the refusal logged", || {
            log_lines(&env, "closing an LXC proxy connection").iter().any(|l| l.contains(why))
        });
    }
    assert!(devns_ok(&env, &["ls"]).contains("null"), "the daemon goes on");
}

/// A live socket at the LXC proxy's path (another daemon's) is not taken
/// over: the daemon does not start, and says why.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_daemon_does_not_take_over_a_live_lxc_proxy_socket() {
    if !privileged() {
        return;
    }
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketType};
    let env = Env::new();
    let path = devns_core::layout::lxc_socket(&env.socket());
    let live = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
    rustix::net::bind(&live, &SocketAddrUnix::new(&path).unwrap()).unwrap();
    rustix::net::listen(&live, 1).unwrap();
    let o = env.devns().arg("daemon").stdin(Stdio::null()).output().unwrap();
    let said = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{said}");
    assert!(said.contains("something listens on the LXC proxy socket"), "{said}");
    assert!(path.exists(), "the live socket's file stays");
}

/// `devns hook lxc` as LXC runs it at `TYPE` for container `name`, its
/// root `root`: a command line for `sh -c`, the socket from the world.
fn hook_line(env: &Env, kind: &str, name: &str, root: &Path) -> String {
    format!(
        "env LXC_HOOK_TYPE={kind} LXC_NAME={name} LXC_ROOTFS_MOUNT={} {} --socket {} hook lxc",
        root.display(),
        env!("CARGO_BIN_EXE_devns"),
        env.socket().display()
    )
}

/// An autodev `join` comes from the container's root, so it is taken on
/// host root's word alone (the pre-start hook's `expect`), from a process
/// whose nearest ancestor outside its user namespace is the process that
/// gave the word (LXC's monitor; this test here), for that name, once.
/// Every refusal says why and brings nothing in.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn an_autodev_join_is_taken_only_on_the_monitors_word_for_its_container_once() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _d = Daemon::start(&env);
    let dir = SharedDir::new("join");
    let root = dir.0.clone();
    std::fs::create_dir(root.join("dev")).unwrap();
    let cg = TestCgroup::new("join");
    let me = std::process::id();
    // `script` as root of a user namespace of its own, in a mount
    // namespace of its own, a child of this test's (in the test's cgroup):
    // an LXC container's init, whose autodev hook the script runs.
    let container = |script: &str| {
        let o = cg.command("unshare").args(userns_sh(script, "init")).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    let none_in = |what: &str| assert_eq!(devns_ok(&env, &["ns", "ls", "--json"]).trim(), "[]", "{what}");

    // No word given: refused.
    let got = container(&format!("{} || echo refused", hook_line(&env, "autodev", "j", &root)));
    assert!(
        got.contains("refused")
            && got.contains(&format!("no LXC container \"j\" is expected from monitor process {me}")),
        "{got}"
    );
    none_in("after a join with no word");

    // Host root's word, as LXC's pre-start hook gives it (its parent the monitor).
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {}", hook_line(&env, "pre-start", "j", &root)))
        .output()
        .unwrap();
    assert!(o.status.success(), "pre-start: {}", String::from_utf8_lossy(&o.stderr));

    // From the host's own user namespace: refused.
    let o = Command::new("sh").arg("-c").arg(hook_line(&env, "autodev", "j", &root)).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("in the host's user namespace"), "{err}");
    // A host user's own user namespace, below a process of theirs (not the
    // monitor): refused, naming that process.
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"])
        .arg(format!(
            "unshare --user --map-root-user sh -c '{}'; echo shell $$",
            hook_line(&env, "autodev", "j", &root)
        ))
        .output()
        .unwrap();
    let got = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let shell = got.lines().find_map(|l| l.strip_prefix("shell ")).unwrap_or("?");
    assert!(got.contains(&format!("is expected from monitor process {shell}")), "{got}");
    // Another name than the word's: refused.
    let got = container(&format!("{} || echo refused", hook_line(&env, "autodev", "other", &root)));
    assert!(got.contains("refused") && got.contains("no LXC container \"other\" is expected"), "{got}");
    none_in("after the refused joins");

    // The container the word was for: its /dev is the view; a second join
    // on the same word is refused.
    let hook = hook_line(&env, "autodev", "j", &root);
    let got = container(&format!(
        "{hook} && echo joined; ls {dev}; {hook} || echo again-refused",
        dev = root.join("dev").display()
    ));
    assert!(got.contains("joined") && got.contains("loop-control") && got.contains("null"), "{got}");
    assert!(got.contains("again-refused") && got.contains("no LXC container \"j\" is expected"), "{got}");
    // Its init ended: the namespace is let go.
    eventually("the joined namespace let go", || devns_ok(&env, &["ns", "ls", "--json"]).trim() == "[]");
    assert!(
        std::fs::read_dir(root.join("dev")).unwrap().next().is_none(),
        "the view was in the container's mount namespace only"
    );
    let _ = std::fs::remove_dir_all(&root);
}
