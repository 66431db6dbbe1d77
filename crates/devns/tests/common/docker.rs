//! Docker in the tests: a `dockerd` of the test's own (data root, exec
//! root, pid file and socket in its dir, no iptables, no bridge, vfs
//! storage, user-namespaced with `--userns-remap nobody:nogroup` onto a
//! block of the test's own), the devns wrapper as its runtime `devns`.

use super::Env;
use super::oci::{kill, remove_cgroup_tree, stop, umount_below, wait_serving};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The user dockerd's `--userns-remap` maps containers onto.
const REMAP_USER: &str = "nobody";

/// A line `nobody:BASE:SIZE` of the test's own in `/etc/subuid` and
/// `/etc/subgid`, removed on drop (also when the test fails). Tests edit
/// these files only while holding `flock` on `/etc/subuid`, each adding and
/// removing its own line, so that parallel tests never lose each other's.
pub struct SubIds {
    line: String,
}

impl SubIds {
    pub fn add(base: u32, size: u32) -> SubIds {
        let ids = SubIds { line: format!("{REMAP_USER}:{base}:{size}") };
        ids.edit(|lines| lines.push(ids.line.clone()));
        ids
    }

    /// Rewrites both files in place (the lock is on `/etc/subuid`'s inode)
    /// with `f` applied to their lines, under the lock.
    fn edit(&self, f: impl Fn(&mut Vec<String>)) {
        let lock = std::fs::OpenOptions::new().read(true).open("/etc/subuid").expect("/etc/subuid");
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("flock /etc/subuid");
        for path in ["/etc/subuid", "/etc/subgid"] {
            let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path).expect(path);
            let mut text = String::new();
            file.read_to_string(&mut text).expect(path);
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            f(&mut lines);
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            file.set_len(0).expect(path);
            file.rewind().expect(path);
            file.write_all(text.as_bytes()).expect(path);
        }
    }
}

impl Drop for SubIds {
    fn drop(&mut self) {
        let line = self.line.clone();
        self.edit(|lines| lines.retain(|l| *l != line));
    }
}

/// A dockerd of the test's own, `env`'s world in its environment (its
/// containerd, shims and runtimes inherit it), the runtime `devns` in its
/// daemon.json: this build's `devns oci runtime --all-containers --` (Docker
/// 20.10 sets no annotations: choosing the runtime is the ask). On drop:
/// its containers removed, dockerd stopped by its pid, whatever of its is
/// still running (its containerd, shims: their command lines name its
/// dir) killed by pid, its mounts undone, its cgroup parent removed, the
/// subordinate id lines taken out.
pub struct Docker {
    pub dir: PathBuf,
    /// The host uid and gid of its containers' root.
    pub base: u32,
    /// Its containers' `--cgroup-parent` (of the test's own).
    pub parent: String,
    child: Option<Child>,
    names: std::cell::RefCell<Vec<String>>,
    _ids: SubIds,
}

impl Docker {
    pub fn start(env: &Env) -> Docker {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = env.dir.path().join("docker");
        std::fs::create_dir_all(&dir).expect("docker dir");
        let base = super::oci::id_block();
        let ids = SubIds::add(base, super::oci::BLOCK);
        let parent = format!("/{}", super::marker(&format!("docker{}", N.fetch_add(1, Ordering::Relaxed))));
        let config = serde_json::json!({ "runtimes": { "devns": {
            "path": env!("CARGO_BIN_EXE_devns"),
            "runtimeArgs": ["oci", "runtime", "--all-containers", "--"] } } });
        std::fs::write(dir.join("daemon.json"), config.to_string()).expect("daemon.json");
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("dockerd log");
        let mut cmd = Command::new("dockerd");
        env.devns_env(&mut cmd);
        cmd.arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .args(["--userns-remap", &format!("{REMAP_USER}:nogroup")])
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver", "vfs"])
            .args(["--exec-opt", "native.cgroupdriver=cgroupfs", "--cgroup-parent", &parent]);
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("spawn dockerd");
        let d = Docker { dir, base, parent, child: Some(child), names: Default::default(), _ids: ids };
        wait_serving("dockerd", &d.dir.join("dockerd.log"), || {
            let mut c = d.cmd();
            c.arg("version");
            c
        });
        d
    }

    /// `docker -H unix://SOCKET`.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H").arg(format!("unix://{}", self.dir.join("docker.sock").display())).stdin(Stdio::null());
        c
    }

    /// `docker import` of `rootfs` (owned by the image's root) as image `tag`.
    pub fn import(&self, rootfs: &Path, tag: &str) {
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .args(["--numeric-owner", "--owner=0", "--group=0", "-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let out = self.cmd().args(["import", "-", tag]).stdin(tar.stdout.take().expect("tar's stdout")).output();
        let out = out.expect("docker import");
        assert!(tar.wait().expect("tar").success(), "tar of {}", rootfs.display());
        assert!(out.status.success(), "docker import: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `docker run --name NAME --network none`, before the caller's options,
    /// image and command; removed on drop.
    pub fn run_args(&self, name: &str) -> Command {
        self.names.borrow_mut().push(name.to_owned());
        let mut c = self.cmd();
        c.args(["run", "--name", name, "--network", "none"]);
        c
    }

    /// `docker rm -f NAME`.
    pub fn rm(&self, name: &str) -> Output {
        self.names.borrow_mut().retain(|n| n != name);
        self.cmd().args(["rm", "-f", name]).output().expect("docker rm")
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        for name in self.names.take() {
            let _ = self.cmd().args(["rm", "-f", &name]).output();
        }
        if let Some(child) = self.child.take() {
            stop(child);
        }
        // Its containerd and shims, if they outlived it.
        kill(super::processes_with(&self.dir.display().to_string()));
        umount_below(&self.dir);
        let rel = self.parent.trim_start_matches('/');
        for d in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            remove_cgroup_tree(&d.path().join(rel));
        }
    }
}
