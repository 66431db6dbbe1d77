//! Real OCI runtimes in the tests: a rootfs of busybox and the host's own
//! tools, a runc bundle whose container is user-namespaced onto a block of
//! its own, and runc, crun and podman driven as a user would, each guard
//! undoing what it started on drop (also when the test fails).
//!
//! Facts these follow are in `shared/runtimes.md`: hybrid cgroups here, so
//! crun runs with cgroup2 mounted at `/sys/fs/cgroup` in a private mount
//! namespace; podman as root with the cgroupfs manager and explicit rlimits.

use super::{Env, reachable_dir};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The host tools a container gets beside busybox, as the containers'
/// users run them: util-linux, e2fsprogs, coreutils' mknod, udev.
pub const TOOLS: &[&str] = &[
    "/usr/sbin/losetup",
    "/usr/sbin/blkid",
    "/usr/sbin/mke2fs",
    "/usr/bin/mknod",
    "/usr/bin/mount",
    "/usr/bin/umount",
    "/usr/bin/udevadm",
];

/// Size of a container's id block.
pub const BLOCK: u32 = 65_536;

/// A uid/gid block no other test of this run uses, and far from the blocks
/// devns allocates itself (from 100000 up): tests run in parallel, and ids
/// shared between containers would hide holes.
pub fn id_block() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 64;
    // 0x4000_0000 + (pid mod 512, 64 blocks each) blocks: below 2^32.
    0x4000_0000 + ((std::process::id() % 512) * 64 + n) * BLOCK
}

/// Copies `file` (and the libraries it links) into `root` at the same path.
pub fn copy_with_libs(root: &Path, file: &Path, to: &Path) {
    let ldd = Command::new("ldd").arg(file).output().expect("ldd");
    let libs = String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from))
        .collect::<Vec<_>>();
    for lib in &libs {
        let dest = root.join(lib.strip_prefix("/").expect("absolute"));
        if !dest.exists() {
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("lib dir");
            std::fs::copy(lib, &dest).unwrap_or_else(|e| panic!("cannot copy {}: {e}", lib.display()));
        }
    }
    let dest = root.join(to.strip_prefix("/").expect("absolute"));
    std::fs::create_dir_all(dest.parent().expect("parent")).expect("bin dir");
    std::fs::copy(file, &dest).unwrap_or_else(|e| panic!("cannot copy {}: {e}", file.display()));
}

/// A rootfs at `dir/rootfs`: busybox with every applet linked in `/bin`,
/// the host's [`TOOLS`] (their own names win over busybox's), `mkfs.ext4`,
/// and the empty directories a runtime mounts on.
pub fn tools_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    copy_with_libs(&root, Path::new("/bin/busybox"), Path::new("/bin/busybox"));
    for tool in TOOLS {
        let name = Path::new(tool).file_name().expect("name");
        copy_with_libs(&root, Path::new(tool), &Path::new("/bin").join(name));
    }
    std::os::unix::fs::symlink("mke2fs", root.join("bin/mkfs.ext4")).expect("mkfs.ext4");
    let list = Command::new("/bin/busybox").arg("--list").output().expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join("bin").join(applet);
        if !link.exists() && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", link).expect("applet");
        }
    }
    for d in ["proc", "sys", "dev", "tmp", "run", "mnt", "etc"] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs dir");
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    root
}

/// A runc bundle in a directory of its own that a container's root reaches
/// (outside `/tmp`): `config.json` from `runc spec --rootless`, made
/// user-namespaced (0 → [`id_block`], size [`BLOCK`]) with a network
/// namespace of its own, no terminal, a writable `/tmp` and `/run`.
/// Removed on drop.
pub struct Bundle {
    pub dir: PathBuf,
    /// The container id (unique to this bundle).
    pub id: String,
    /// The host uid and gid of the container's root.
    pub base: u32,
}

impl Bundle {
    pub fn new(tag: &str) -> Bundle {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = reachable_dir(&format!("{tag}-{n}"));
        let id = format!("devns-test-{tag}-{}-{n}", std::process::id());
        let base = id_block();
        // Removed on drop from here on, also when a step below fails.
        let b = Bundle { dir, id, base };
        let dir = &b.dir;
        let root = tools_rootfs(dir);
        // The container's root owns its rootfs, as an image unpacked for its
        // id mapping is: runtimes make mountpoints in it.
        let out =
            Command::new("chown").args(["-R", "-h", &format!("{base}:{base}")]).arg(&root).output().expect("chown");
        assert!(out.status.success(), "chown: {}", String::from_utf8_lossy(&out.stderr));
        let out = Command::new("runc").args(["spec", "--rootless", "--bundle"]).arg(dir).output().expect("runc spec");
        assert!(out.status.success(), "runc spec: {}", String::from_utf8_lossy(&out.stderr));
        b.edit(|c| {
            let map = json!([{ "containerID": 0, "hostID": base, "size": BLOCK }]);
            c["linux"]["uidMappings"] = map.clone();
            c["linux"]["gidMappings"] = map;
            c["linux"]["namespaces"].as_array_mut().expect("namespaces").push(json!({ "type": "network" }));
            c["process"]["terminal"] = json!(false);
            c["root"]["readonly"] = json!(false);
            let mounts = c["mounts"].as_array_mut().expect("mounts");
            for at in ["/tmp", "/run"] {
                mounts.push(json!({ "destination": at, "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "nodev", "mode=1777"] }));
            }
        });
        b
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    pub fn config(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.config_path()).expect("config.json")).expect("config.json is JSON")
    }

    pub fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut c = self.config();
        f(&mut c);
        std::fs::write(self.config_path(), serde_json::to_vec_pretty(&c).expect("json")).expect("write config.json");
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The test helper binary at the rootfs's `/devns-testbin`, with the
    /// libgcc it links, owned by the container's root; its host path.
    pub fn with_testbin(&self) -> PathBuf {
        let to = super::copy_testbin_to(&self.rootfs());
        let lib = Path::new("/lib/x86_64-linux-gnu/libgcc_s.so.1");
        std::fs::copy(lib, self.rootfs().join(lib.strip_prefix("/").expect("absolute"))).expect("libgcc");
        std::os::unix::fs::chown(&to, Some(self.base), Some(self.base)).expect("chown the helper");
        to
    }

    /// The container's command.
    pub fn args(&self, args: &[&str]) {
        self.edit(|c| c["process"]["args"] = json!(args));
    }

    /// `sh -c SCRIPT` as the container's command.
    pub fn script(&self, script: &str) {
        self.args(&["/bin/sh", "-c", script]);
    }

    pub fn annotate(&self, key: &str, value: &str) {
        self.edit(|c| c["annotations"][key] = json!(value));
    }

    /// Asks for devns (`devns.io/enable=true`).
    pub fn enable_devns(&self) {
        self.annotate("devns.io/enable", "true");
    }

    /// The devns hooks (createRuntime, poststop) of `env`'s world in the
    /// config, as the wrapper and hooks.d add them.
    pub fn hooks(&self, env: &Env) {
        let hook = |stage: &str| {
            json!([{
                "path": env!("CARGO_BIN_EXE_devns"),
                "args": ["devns", "hook", stage],
                "env": [format!("DEVNS_SOCKET={}", env.socket().display()),
                        format!("DEVNS_STATE_DIR={}", env.state_dir().display()),
                        format!("DEVNS_CONFIG={}", env.config().display())],
            }])
        };
        self.edit(|c| {
            c["hooks"]["createRuntime"] = hook("createRuntime");
            c["hooks"]["poststop"] = hook("poststop");
        });
    }

    /// Gives the container's process capabilities `caps` (`CAP_MKNOD`, ...)
    /// beside `runc spec --rootless`'s few, in every set.
    pub fn add_caps(&self, caps: &[&str]) {
        self.edit(|c| {
            for set in ["bounding", "effective", "permitted"] {
                let v = c["process"]["capabilities"][set].as_array_mut().expect("a capability set");
                v.extend(caps.iter().map(|c| json!(c)));
            }
        });
    }

    /// `linux.seccomp`: the given profile.
    pub fn seccomp(&self, profile: Value) {
        self.edit(|c| c["linux"]["seccomp"] = profile);
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// runc with a state root of the test's own; every container it created is
/// killed and deleted on drop.
pub struct Runc {
    pub root: PathBuf,
    ids: std::cell::RefCell<Vec<String>>,
}

impl Runc {
    pub fn new(env: &Env) -> Runc {
        Runc { root: env.dir.path().join("runc"), ids: Default::default() }
    }

    /// `runc --root ROOT`.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&self.root);
        c
    }

    fn track(&self, id: &str) {
        let mut ids = self.ids.borrow_mut();
        if !ids.iter().any(|i| i == id) {
            ids.push(id.to_owned());
        }
    }

    /// `runc run`: the container's command to its end, its output.
    pub fn run(&self, b: &Bundle) -> Output {
        self.track(&b.id);
        self.cmd().args(["run", "--bundle"]).arg(&b.dir).arg(&b.id).stdin(Stdio::null()).output().expect("runc run")
    }

    /// `runc create`: its output. The container's stdio goes nowhere and
    /// runc's stderr to a file: a container keeps the stdio runc had, and
    /// one that held a pipe of ours would hang the test.
    pub fn create(&self, b: &Bundle) -> Output {
        self.track(&b.id);
        let log = b.dir.join("runc-create.err");
        let err = std::fs::File::create(&log).expect("stderr file");
        let mut out = self
            .cmd()
            .args(["create", "--bundle"])
            .arg(&b.dir)
            .arg(&b.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .output()
            .expect("runc create");
        out.stderr = std::fs::read(&log).unwrap_or_default();
        out
    }

    /// `runc create` + `runc start` of a container that stays up (its
    /// command such as `sleep 1000`); panics unless both succeed.
    pub fn start(&self, b: &Bundle) {
        let out = self.create(b);
        assert!(out.status.success(), "runc create: {}", String::from_utf8_lossy(&out.stderr));
        let out = self.cmd().args(["start", &b.id]).output().expect("runc start");
        assert!(out.status.success(), "runc start: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `runc exec ID sh -c SCRIPT`: its output.
    pub fn exec(&self, id: &str, script: &str) -> Output {
        self.cmd().args(["exec", id, "/bin/sh", "-c", script]).stdin(Stdio::null()).output().expect("runc exec")
    }

    /// The container's init, as runc states it.
    pub fn pid(&self, id: &str) -> Option<i32> {
        let out = self.cmd().args(["state", id]).output().ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["pid"].as_i64().filter(|&p| p > 0).map(|p| p as i32)
    }

    /// `runc kill ID KILL` and `runc delete --force ID`.
    pub fn delete(&self, id: &str) {
        let _ = self.cmd().args(["kill", id, "KILL"]).output();
        let out = self.cmd().args(["delete", "--force", id]).output().expect("runc delete");
        assert!(out.status.success(), "runc delete: {}", String::from_utf8_lossy(&out.stderr));
        self.ids.borrow_mut().retain(|i| i != id);
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        for id in self.ids.take() {
            let _ = self.cmd().args(["kill", &id, "KILL"]).output();
            let _ = self.cmd().args(["delete", "--force", &id]).output();
        }
    }
}

/// The crun wrapper of `runtimes.md`: every crun command in a private mount
/// namespace where cgroup2 is mounted at `/sys/fs/cgroup` (crun refuses this
/// host's hybrid cgroups). Written once into `dir`; its path.
///
/// crun 1.8.1 chowns its stdio to the container's root, the host's
/// `/dev/null` too (crun#1845), and podman's conmon gives it that node
/// (a container's stdin without `-i`, an exec's). The wrapper never hands
/// crun the host's `/dev/null`: such an fd 0 becomes an empty file, fd 1
/// and 2 a file that takes the output, both in `dir`.
pub fn crun_wrapper(dir: &Path) -> PathBuf {
    let path = dir.join("crun-unified");
    if !path.exists() {
        let (input, output) = (dir.join("crun-null-in"), dir.join("crun-null-out"));
        std::fs::write(&input, "").expect("crun wrapper's empty input");
        let script = format!(
            "#!/bin/sh\n\
             null() {{ [ \"$(stat -L -c '%F %t:%T' /proc/$$/fd/$1 2>&-)\" = 'character special file 1:3' ]; }}\n\
             null 0 && exec 0<'{i}'\n\
             null 1 && exec 1>>'{o}'\n\
             null 2 && exec 2>>'{o}'\n\
             exec unshare -m sh -c 'mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup && exec crun \"$@\"' crun \"$@\"\n",
            i = input.display(),
            o = output.display(),
        );
        std::fs::write(&path, script).expect("crun wrapper");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    }
    path
}

/// `crun run` of bundle `b` as container `id` through [`crun_wrapper`],
/// with its state below `dir`, to its end: its output. Its stdin is an
/// empty file of the test's: crun 1.8.1 chowns its stdio to the container's
/// root, and so would chown the host's `/dev/null` (crun#1845).
pub fn crun_run(dir: &Path, b: &Bundle, id: &str) -> Output {
    let empty = dir.join("crun-stdin");
    std::fs::write(&empty, "").expect("an empty stdin");
    let out = Command::new(crun_wrapper(dir))
        .arg("--root")
        .arg(dir.join("crun"))
        .args(["run", "--bundle"])
        .arg(&b.dir)
        .arg(id)
        .stdin(std::fs::File::open(&empty).expect("stdin"))
        .output()
        .expect("crun run");
    let null = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/dev/null").expect("/dev/null"));
    assert_eq!(null, 0, "the host's /dev/null was chowned while crun ran");
    out
}

/// podman as root with storage, run and tmp directories of the test's own
/// (`env`'s), the cgroupfs manager and file events (no systemd here); every
/// container named through [`Podman::run_args`] is removed on drop.
pub struct Podman {
    dir: PathBuf,
    /// The test's own `--cgroup-parent` (podman's default one would stay).
    pub parent: String,
    names: std::cell::RefCell<Vec<String>>,
}

impl Podman {
    pub fn new(env: &Env) -> Podman {
        static N: AtomicU32 = AtomicU32::new(0);
        let parent = format!("/{}", super::marker(&format!("podman{}", N.fetch_add(1, Ordering::Relaxed))));
        Podman { dir: env.dir.path().join("podman"), parent, names: Default::default() }
    }

    /// `podman` with the global flags.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--storage-driver", "vfs", "--cgroup-manager=cgroupfs", "--events-backend=file"]);
        c
    }

    /// `podman run --name NAME` of `rootfs`, user-namespaced onto `base`,
    /// with the flags this host needs (runtimes.md), before the caller's
    /// options, image and command.
    pub fn run_args(&self, name: &str, base: u32) -> Command {
        self.names.borrow_mut().push(name.to_owned());
        let mut c = self.cmd();
        let map = format!("0:{base}:{BLOCK}");
        // `-i`: the container's stdin a pipe of conmon's. Without it podman
        // gives the container the host's /dev/null, which crun 1.8.1 then
        // chowns to the container's root (crun#1845).
        c.args(["run", "-i", "--name", name, "--network", "none", "--uidmap", &map, "--gidmap", &map])
            .args(["--cgroup-parent", &self.parent])
            .args(["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]);
        c
    }

    /// `podman rm -f NAME`.
    pub fn rm(&self, name: &str) -> Output {
        self.names.borrow_mut().retain(|n| n != name);
        self.cmd().args(["rm", "-f", "-t", "0", name]).output().expect("podman rm")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in self.names.take() {
            let _ = self.cmd().args(["rm", "-f", "-t", "0", &name]).output();
        }
        // The parent cgroup in every hierarchy (empty once its containers
        // are), with the `conmon` cgroup podman makes below it.
        let rel = self.parent.trim_start_matches('/');
        for d in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            remove_cgroup_tree(&d.path().join(rel));
        }
        // Whatever its storage left mounted below the test's dir.
        let _ = Command::new("umount").arg("-R").arg(self.dir.join("root")).stderr(Stdio::null()).status();
        let _ = Command::new("umount").arg("-R").arg(self.dir.join("runroot")).stderr(Stdio::null()).status();
    }
}

/// Waits until `probe` (a client command of an engine just started)
/// succeeds; panics with the engine's `log` if it never does.
pub fn wait_serving(what: &str, log: &Path, mut probe: impl FnMut() -> Command) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !probe().stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert!(std::time::Instant::now() < deadline, "{what} did not become ready: {log}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Stops an engine of the test's: SIGTERM by its pid, time to end, then
/// SIGKILL; reaped.
pub fn stop(mut child: std::process::Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGKILL to each of `pids` (the test's own, found by their command line).
pub fn kill(pids: Vec<i32>) {
    for p in pids.into_iter().filter_map(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// Unmounts (lazily, deepest first) whatever is mounted below `dir`.
pub fn umount_below(dir: &Path) {
    let mine = dir.display().to_string();
    let mut below: Vec<String> = super::host_mounts()
        .iter()
        .filter_map(|m| m.split(' ').nth(1).map(str::to_owned))
        .filter(|at| at.starts_with(&mine))
        .collect();
    below.sort_by_key(|at| std::cmp::Reverse(at.len()));
    for at in below {
        let _ = Command::new("umount").args(["-l", &at]).stderr(Stdio::null()).status();
    }
}

/// Removes an empty cgroup and the empty cgroups below it, deepest first.
pub fn remove_cgroup_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    // A process still on its way out (podman's conmon, just after `podman
    // rm`) keeps its cgroup busy for a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while let Err(e) = std::fs::remove_dir(dir) {
        if e.raw_os_error() != Some(rustix::io::Errno::BUSY.raw_os_error()) || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A wrapper script for runtimes that pass the runtime nothing of their
/// environment (podman): exports `env`'s world (`DEVNS_SOCKET`,
/// `DEVNS_STATE_DIR`, `DEVNS_CONFIG`), then execs this build's
/// `devns oci runtime --runtime-path RUNTIME -- ARGS`, as an admin would
/// point a runtime at a daemon that is not at the default paths. Written
/// into `env`'s dir; its path.
pub fn runtime_wrapper(env: &Env, name: &str, runtime: &Path) -> PathBuf {
    let path = env.dir.path().join(name);
    let script = format!(
        "#!/bin/sh\nexport DEVNS_SOCKET='{}' DEVNS_STATE_DIR='{}' DEVNS_CONFIG='{}'\n\
         exec '{}' oci runtime --runtime-path '{}' -- \"$@\"\n",
        env.socket().display(),
        env.state_dir().display(),
        env.config().display(),
        env!("CARGO_BIN_EXE_devns"),
        runtime.display()
    );
    std::fs::write(&path, script).expect("runtime wrapper");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    path
}

/// A containerd of the test's own: config, root, state, sockets and runc
/// root in `env`'s dir, the CRI plugin off, a containerd namespace of the
/// test's own, and `env`'s world in its environment (which its shims and
/// their runtime inherit). On drop: its containers' tasks killed and
/// deleted, the containers removed, containerd stopped by its pid, its
/// shims (of its namespace) ended by their pids, whatever is mounted below
/// its dir unmounted.
pub struct Containerd {
    pub dir: PathBuf,
    /// The containerd namespace (`ctr -n`).
    pub namespace: String,
    child: Option<std::process::Child>,
    ids: std::cell::RefCell<Vec<String>>,
    execs: AtomicU32,
}

impl Containerd {
    pub fn start(env: &Env) -> Containerd {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = env.dir.path().join("containerd");
        std::fs::create_dir_all(dir.join("fifo")).expect("containerd dir");
        let d = |s: &str| dir.join(s).display().to_string();
        let config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}\"\n[debug]\n  address = \"{}\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{}\"\n",
            d("root"),
            d("state"),
            d("containerd.sock"),
            d("containerd.sock.ttrpc"),
            d("debug.sock"),
            d("opt"),
        );
        std::fs::write(dir.join("config.toml"), config).expect("containerd config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("containerd log");
        let mut cmd = Command::new("containerd");
        env.devns_env(&mut cmd);
        let child = cmd
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let namespace = super::marker(&format!("ctrd{}", N.fetch_add(1, Ordering::Relaxed)));
        let c = Containerd { dir, namespace, child: Some(child), ids: Default::default(), execs: AtomicU32::new(0) };
        wait_serving("containerd", &c.dir.join("containerd.log"), || {
            let mut v = c.ctr();
            v.arg("version");
            v
        });
        c
    }

    /// `ctr --address SOCKET -n NAMESPACE`.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(self.dir.join("containerd.sock")).args(["-n", &self.namespace]);
        c.stdin(Stdio::null());
        c
    }

    /// `ctr run` of `b`'s config as the spec (its `root.path` made
    /// absolute: containerd's bundle is not `b`'s) with `runtime` as the
    /// runc binary and a runc root in the test's dir, before the caller's
    /// options (`-d`, `--rm`) and the id: the command.
    pub fn run(&self, b: &Bundle, runtime: &Path, opts: &[&str]) -> Command {
        let mut ids = self.ids.borrow_mut();
        if !ids.contains(&b.id) {
            ids.push(b.id.clone());
        }
        let mut spec = b.config();
        spec["root"]["path"] = json!(b.rootfs());
        let path = self.dir.join(format!("{}.json", b.id));
        std::fs::write(&path, serde_json::to_vec_pretty(&spec).expect("json")).expect("spec.json");
        let mut c = self.ctr();
        c.arg("run")
            .arg("--runc-binary")
            .arg(runtime)
            .arg("--runc-root")
            .arg(self.dir.join("runc"))
            .arg("--fifo-dir")
            .arg(self.dir.join("fifo"))
            .arg("--config")
            .arg(path)
            .args(opts)
            .arg(&b.id);
        c
    }

    /// `ctr task exec ID sh -c SCRIPT` (an exec id of its own): its output.
    pub fn exec(&self, id: &str, script: &str) -> Output {
        let exec_id = format!("x{}", self.execs.fetch_add(1, Ordering::Relaxed));
        self.ctr()
            .args(["task", "exec", "--exec-id", &exec_id, "--fifo-dir"])
            .arg(self.dir.join("fifo"))
            .args([id, "/bin/sh", "-c", script])
            .output()
            .expect("ctr task exec")
    }

    /// `ctr task kill -s KILL`, `ctr task rm` (once the task stopped) and
    /// `ctr container rm`; panics unless the task and container went.
    pub fn remove(&self, id: &str) {
        let _ = self.ctr().args(["task", "kill", "-s", "KILL", id]).output();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let out = self.ctr().args(["task", "rm", id]).output().expect("ctr task rm");
            if out.status.success() {
                break;
            }
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(std::time::Instant::now() < deadline, "ctr task rm: {err}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = self.ctr().args(["container", "rm", id]).output().expect("ctr container rm");
        assert!(out.status.success(), "ctr container rm: {}", String::from_utf8_lossy(&out.stderr));
        self.ids.borrow_mut().retain(|i| i != id);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in self.ids.take() {
            let _ = self.ctr().args(["task", "rm", "-f", id.as_str()]).output();
            let _ = self.ctr().args(["container", "rm", id.as_str()]).output();
        }
        if let Some(child) = self.child.take() {
            stop(child);
        }
        // Shims of its namespace that outlived it (their command line names
        // it), and the containers their runc root still has.
        kill(super::processes_with(&format!("-namespace\0{}\0", self.namespace)));
        let root = self.dir.join("runc").join(&self.namespace);
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let id = e.file_name();
            let _ = Command::new("runc").arg("--root").arg(&root).arg("delete").arg("--force").arg(&id).output();
        }
        let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
        umount_below(&self.dir);
    }
}
