//! cgroup v2 for the access layer: where the hierarchy is mounted (or a
//! mount of devns's own when there is none), the cgroup a process is in,
//! and a container's cgroup: made below devns's own, its first process
//! moved in, removed (with any sub-cgroups) once it is empty.

use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 hierarchy: none is mounted and mounting one at {path} failed: {source}")]
    Mount { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} has no cgroup2 entry (0::PATH)")]
    NoV2Entry { path: PathBuf },
    #[error("cannot create cgroup {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cannot open cgroup {path}: {source}")]
    Open { path: PathBuf, source: rustix::io::Errno },
    #[error("cannot move process {pid} into cgroup {path}: {source}")]
    Move { pid: i32, path: PathBuf, source: std::io::Error },
    #[error("cannot remove cgroup {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
    #[error("cannot kill the processes of cgroup {path}: {source}")]
    Kill { path: PathBuf, source: std::io::Error },
    #[error("cgroup {path} still has processes after {waited:?}")]
    Busy { path: PathBuf, waited: Duration },
}

/// The mountpoint of a cgroup2 filesystem in `mountinfo` text whose root is
/// the hierarchy's root (a bind of a subtree would not hold every cgroup).
pub fn find_cgroup2(mountinfo: impl AsRef<[u8]>) -> Option<PathBuf> {
    devns_core::mountinfo::mounts(mountinfo.as_ref())
        .find(|m| m.fstype == "cgroup2" && m.root.as_os_str() == "/")
        .map(|m| m.mount_point)
}

/// The cgroup2 path in `/proc/PID/cgroup` text (the `0::PATH` line).
pub fn v2_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(|p| p.trim_end().to_owned())
}

/// The cgroup2 hierarchy, where this process sees it.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    root: PathBuf,
}

impl Hierarchy {
    /// The hierarchy as mounted, or mounted at `STATE_DIR/cgroup2` when
    /// this host has no cgroup2 mount.
    pub fn find_or_mount(state_dir: &Path) -> Result<Hierarchy, CgroupError> {
        let path = PathBuf::from("/proc/self/mountinfo");
        let text = std::fs::read(&path).map_err(|source| CgroupError::Read { path, source })?;
        if let Some(root) = find_cgroup2(&text) {
            return Ok(Hierarchy { root });
        }
        let root = state_dir.join("cgroup2");
        let mounted = std::fs::create_dir_all(&root).and_then(|()| {
            rustix::mount::mount("none", &root, "cgroup2", rustix::mount::MountFlags::empty(), None).map_err(Into::into)
        });
        mounted.map_err(|source| CgroupError::Mount { path: root.clone(), source })?;
        tracing::info!(path = %root.display(), "mounted a cgroup2 hierarchy");
        Ok(Hierarchy { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of the cgroup process `pid` (or `self`) is in.
    pub fn of(&self, pid: &str) -> Result<PathBuf, CgroupError> {
        let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let text = std::fs::read_to_string(&path).map_err(|source| CgroupError::Read { path: path.clone(), source })?;
        let rel = v2_path(&text).ok_or(CgroupError::NoV2Entry { path })?;
        Ok(self.root.join(rel.trim_start_matches('/')))
    }

    /// Where devns puts namespace `id`'s cgroup: beside devns's own processes,
    /// below the cgroup this process is in.
    pub fn for_namespace(&self, id: devns_core::NsId) -> Result<PathBuf, CgroupError> {
        Ok(self.of("self")?.join(format!("devns-{}", id.0)))
    }
}

/// Makes cgroup `path` (its parent exists).
pub fn create(path: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir(path).map_err(|source| CgroupError::Create { path: path.to_owned(), source })
}

/// An fd of the cgroup's directory, as `BPF_PROG_ATTACH` takes it.
pub fn open(path: &Path) -> Result<OwnedFd, CgroupError> {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|source| CgroupError::Open { path: path.to_owned(), source })
}

/// Moves process `pid` (and its threads) into cgroup `path`.
pub fn move_pid(path: &Path, pid: i32) -> Result<(), CgroupError> {
    std::fs::write(path.join("cgroup.procs"), pid.to_string()).map_err(|source| CgroupError::Move {
        pid,
        path: path.to_owned(),
        source,
    })
}

/// The processes in cgroup `path` itself (`cgroup.procs`).
pub fn procs(path: &Path) -> Result<Vec<i32>, CgroupError> {
    let file = path.join("cgroup.procs");
    let text = std::fs::read_to_string(&file).map_err(|source| CgroupError::Read { path: file, source })?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Whether cgroup `path` or one below it has a process (`cgroup.events`).
pub fn populated(path: &Path) -> bool {
    std::fs::read_to_string(path.join("cgroup.events")).is_ok_and(|t| t.lines().any(|l| l == "populated 1"))
}

/// The processes in cgroup `path` and every cgroup below it (a cgroup
/// that vanished meanwhile has none).
pub fn procs_tree(path: &Path) -> Vec<i32> {
    procs_below(path).unwrap_or_default().into_iter().map(|(_, p)| p).collect()
}

/// The processes in cgroup `path` and every cgroup below it, each with
/// the cgroup it is in; an error only when `path` itself cannot be read
/// (one below that vanished meanwhile has none).
pub fn procs_below(path: &Path) -> Result<Vec<(PathBuf, i32)>, CgroupError> {
    let mut out: Vec<(PathBuf, i32)> = procs(path)?.into_iter().map(|p| (path.to_owned(), p)).collect();
    for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(procs_below(&e.path()).unwrap_or_default());
        }
    }
    Ok(out)
}

/// SIGKILLs every process in cgroup `path` and below, at once and with no
/// pid involved (`cgroup.kill`, Linux 5.14): one that forks meanwhile
/// cannot escape it. A cgroup that is gone already has nothing to kill.
pub fn kill(path: &Path) -> Result<(), CgroupError> {
    match std::fs::write(path.join("cgroup.kill"), "1") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !path.exists() => Ok(()),
        Err(source) => Err(CgroupError::Kill { path: path.to_owned(), source }),
    }
}

/// Waits up to `patience` until no process is left in cgroup `path` or
/// below it; whether none is.
pub fn wait_empty(path: &Path, patience: Duration) -> bool {
    let start = Instant::now();
    loop {
        if !path.exists() || !populated(path) {
            return true;
        }
        if start.elapsed() >= patience {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One try at removing cgroup `path` with the cgroups below it, deepest
/// first: `Ok(true)` when it is gone (or never was), `Ok(false)` while a
/// process is still inside.
pub fn try_remove(path: &Path) -> Result<bool, CgroupError> {
    let err = |p: &Path| {
        let p = p.to_owned();
        move |source| CgroupError::Remove { path: p, source }
    };
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(err(path)(e)),
    };
    // A cgroup's only directories are its children (never symlinks).
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) && !try_remove(&e.path())? {
            return Ok(false);
        }
    }
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
        Err(e) => Err(err(path)(e)),
    }
}

/// Removes cgroup `path`, waiting up to `patience` for its last process to
/// be gone (an exited process leaves its cgroup at once; `populated` may
/// lag a moment behind).
pub fn remove(path: &Path, patience: Duration) -> Result<(), CgroupError> {
    let start = Instant::now();
    loop {
        if try_remove(path)? {
            return Ok(());
        }
        if start.elapsed() >= patience {
            return Err(CgroupError::Busy { path: path.to_owned(), waited: start.elapsed() });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_and_skips_the_rest() {
        let mi = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/devices rw,nosuid shared:11 - cgroup cgroup rw,devices
";
        assert_eq!(find_cgroup2(mi), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let bind = "40 22 0:27 /sub /mnt/cg rw - cgroup2 cgroup2 rw\n41 22 0:27 / /a\\040b rw - cgroup2 none rw\n";
        assert_eq!(find_cgroup2(bind), Some(PathBuf::from("/a b")), "a subtree bind is not the hierarchy");
        assert_eq!(find_cgroup2("22 1 0:21 / / rw - ext4 /dev/vda rw\n"), None);
        assert_eq!(find_cgroup2("garbage\n\n - \n"), None);
    }

    #[test]
    fn reads_the_v2_line_of_proc_cgroup() {
        assert_eq!(
            v2_path("12:devices:/x\n0::/system.slice/devns.service\n").as_deref(),
            Some("/system.slice/devns.service")
        );
        assert_eq!(v2_path("0::/\n").as_deref(), Some("/"));
        assert_eq!(v2_path("1:name=systemd:/\n"), None);
    }
}
