//! Attacks of a hostile container on the host through what `devns run`
//! hands it: the terminal it was started from, and the host's mounts that
//! its own `/dev`, `/proc` and `/tmp` cover.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

// ---- what the container's umounts uncover ---------------------------------------

/// A file of the test's on the host, removed on drop.
struct Marker(std::path::PathBuf);

impl Marker {
    fn new(dir: &str, tag: &str) -> Marker {
        let p = Path::new(dir).join(marker(tag));
        std::fs::write(&p, "host").unwrap();
        Marker(p)
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// As container root, unmounts `/tmp`, `/dev/pts`, `/dev` and `/proc`
/// until the kernel refuses, then looks for the host's: `/dev` nodes that
/// are not in the view, a file in its `/dev/shm`, one in its `/tmp`, and
/// this test's process in `/proc`. Nothing of it may show.
fn umounts_uncover_nothing_of_the_host(env: &Env, args: &[&str], busybox: &str) {
    let shm = Marker::new("/dev/shm", "shm");
    let tmp = Marker::new("/tmp", "tmp");
    let view = default_view();
    let host_dev: Vec<String> = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !view.contains(n))
        .collect();
    assert!(host_dev.iter().any(|n| n == "mem" || n == "kmsg" || n == "shm"), "{host_dev:?}");
    let mut script = String::new();
    for m in ["/tmp", "/dev/pts", "/dev", "/proc"] {
        script += &format!(
            "i=0; while [ $i -lt 20 ] && {busybox} umount -l {m}; do i=$((i+1)); done; echo umounted {m} $i; "
        );
    }
    for n in &host_dev {
        script += &format!("if [ -e '/dev/{n}' ] || [ -L '/dev/{n}' ]; then echo 'host /dev/{n}'; fi; ");
    }
    script += &format!(
        "[ -e {} ] && echo host-shm; [ -e {} ] && echo host-tmp; [ -e /proc/{} ] && echo host-proc; echo done",
        shm.0.display(),
        tmp.0.display(),
        std::process::id()
    );
    let mut all = args.to_vec();
    all.extend(["--", busybox, "sh", "-c", &script]);
    let o = env.run(&all);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success() && out.ends_with("done\n"), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    // Each of them was a mount of the container's own, which it could undo
    // (stderr has the kernel's refusal that ended each loop).
    for m in ["/tmp", "/dev/pts", "/dev", "/proc"] {
        assert!(out.lines().any(|l| l.starts_with(&format!("umounted {m} ")) && !l.ends_with(" 0")), "{m}: {out}");
    }
    let uncovered: Vec<&str> = out.lines().filter(|l| l.starts_with("host")).collect();
    assert!(
        uncovered.is_empty(),
        "the container's umounts uncovered {} of the host's: {:?} ...",
        uncovered.len(),
        &uncovered[..uncovered.len().min(8)]
    );
}

#[test]
fn without_rootfs_umounts_uncover_nothing_of_the_host() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    umounts_uncover_nothing_of_the_host(&env, &[], "busybox");
}

/// A minimal rootfs: busybox and the libraries it links.
fn busybox_rootfs(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("rootfs");
    let ldd = Command::new("ldd").arg("/bin/busybox").output().unwrap();
    let mut files = vec!["/bin/busybox".to_owned()];
    for l in String::from_utf8_lossy(&ldd.stdout).lines() {
        if let Some(p) = l.split_whitespace().find(|w| w.starts_with('/')) {
            files.push(p.to_owned());
        }
    }
    for f in &files {
        let dst = root.join(f.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(f, &dst).unwrap();
    }
    root
}

#[test]
fn with_rootfs_umounts_uncover_nothing_of_the_host() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let root = busybox_rootfs(env.dir.path());
    umounts_uncover_nothing_of_the_host(&env, &["--rootfs", root.to_str().unwrap()], "/bin/busybox");
}
