//! Views as the kernel holds them: one tmpfs superblock per namespace,
//! made by host root with the new mount API (so its nodes work once mounted
//! inside a user namespace), filled from a [`ViewPlan`].

use devns_core::DevId;
use devns_core::view::{Actual, Entry, Found, Op, ViewPlan, diff};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Uid};
use rustix::io;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("cannot create tmpfs ({step}): {source}")]
    Tmpfs { step: &'static str, source: io::Errno },
    #[error("cannot create {path} in the view ({step}): {source}")]
    Entry { path: String, step: &'static str, source: io::Errno },
}

/// Size limits of a view: it holds nodes, symlinks and what the container
/// writes there itself, so it is kept small (tmpfs memory is host memory).
pub const VIEW_SIZE: &str = "1m";
pub const VIEW_INODES: &str = "16384";

/// A detached tmpfs mount made by this (host root) process.
pub fn tmpfs(options: &[(&str, &str)], attrs: MountAttrFlags) -> Result<OwnedFd, ViewError> {
    let err = |step| move |source| ViewError::Tmpfs { step, source };
    let fs = rustix::mount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("fsopen"))?;
    for (k, v) in options {
        rustix::mount::fsconfig_set_string(&fs, *k, *v).map_err(err("fsconfig"))?;
    }
    rustix::mount::fsconfig_create(&fs).map_err(err("fsconfig create"))?;
    rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(err("fsmount"))
}

/// Makes a new view holding `plan`, as a detached mount.
pub fn create(plan: &ViewPlan) -> Result<OwnedFd, ViewError> {
    let (uid, gid) = (plan.root_uid.to_string(), plan.root_gid.to_string());
    let opts = [
        ("mode", "0755"),
        ("uid", uid.as_str()),
        ("gid", gid.as_str()),
        ("size", VIEW_SIZE),
        ("nr_inodes", VIEW_INODES),
    ];
    let mnt = tmpfs(&opts, MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC)?;
    let ops: Vec<Op> = plan.entries.iter().cloned().map(Op::Create).collect();
    apply(&mnt, &ops)?;
    Ok(mnt)
}

/// Brings a live view to `plan`: the one reconcile step that creation,
/// daemon start, restart and every event share. Returns how many steps it
/// took.
pub fn reconcile(root: impl AsFd, plan: &ViewPlan, visible: impl Fn(DevId) -> bool) -> Result<usize, ViewError> {
    let actual = scan(&root, false)?.into_iter().map(|e| e.actual).collect::<Vec<_>>();
    let ops = diff(plan, &actual, visible);
    apply(&root, &ops)?;
    Ok(ops.len())
}

/// The reconcile step for a view in which only the entries at `paths` can
/// differ from `plan` (a device that has just become visible): the same
/// diff, over what is at those paths and their parent directories, without
/// reading the rest of the view. Returns how many steps it took.
pub fn reconcile_paths(
    root: impl AsFd,
    plan: &ViewPlan,
    visible: impl Fn(DevId) -> bool,
    paths: &[&str],
) -> Result<usize, ViewError> {
    let root = root.as_fd();
    let wanted = devns_core::view::with_parents(paths);
    let scoped = ViewPlan {
        root_uid: plan.root_uid,
        root_gid: plan.root_gid,
        entries: plan.entries.iter().filter(|e| wanted.contains(e.path())).cloned().collect(),
    };
    let mut actual = Vec::with_capacity(wanted.len());
    for path in &wanted {
        let err = |step| move |source| ViewError::Entry { path: (*path).to_owned(), step, source };
        let (parent, name) = match parent_of(root, path) {
            Ok(p) => p,
            // Its directory is not there (or is no directory): neither is it.
            Err(io::Errno::NOENT | io::Errno::NOTDIR) => continue,
            Err(e) => return Err(err("open parent")(e)),
        };
        let dir = parent.as_ref().map_or(root, |p| p.as_fd());
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(io::Errno::NOENT) => continue,
            Err(e) => return Err(err("stat")(e)),
        };
        actual.push(Actual { path: (*path).to_owned(), found: found_of(&st) });
    }
    let ops = diff(&scoped, &actual, visible);
    apply(root, &ops)?;
    Ok(ops.len())
}

/// What a stat of a view's entry shows, as the diff sees it.
fn found_of(st: &rustix::fs::Stat) -> Found {
    let dev = |k| DevId::new(k, rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => Found::Dir,
        FileType::CharacterDevice => Found::Node(dev(devns_core::Kind::Char)),
        FileType::BlockDevice => Found::Node(dev(devns_core::Kind::Block)),
        _ => Found::Other,
    }
}

/// The parent directory of `path` below `root`, and its last component. The
/// view is the container's to change, so the walk follows no symlink and
/// never leaves the view's filesystem.
fn parent_of<'p>(root: BorrowedFd<'_>, path: &'p str) -> io::Result<(Option<OwnedFd>, &'p str)> {
    match path.rsplit_once('/') {
        None => Ok((None, path)),
        Some((dir, name)) => {
            let fd = rustix::fs::openat2(
                root,
                dir,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV | ResolveFlags::NO_MAGICLINKS,
            )?;
            Ok((Some(fd), name))
        }
    }
}

/// Applies `ops` below the directory `root`.
pub fn apply(root: impl AsFd, ops: &[Op]) -> Result<(), ViewError> {
    let root = root.as_fd();
    // The process's umask, so that the modes in a plan land exactly.
    let _umask = devns_sys::procstate::Umask::set(Mode::empty());
    for op in ops {
        let path = match op {
            Op::Create(e) => e.path(),
            Op::Remove(p) => p.as_str(),
        };
        let err = |step| move |source| ViewError::Entry { path: path.to_owned(), step, source };
        let (parent, name) = parent_of(root, path).map_err(err("open parent"))?;
        let dir = parent.as_ref().map_or(root, |p| p.as_fd());
        let Op::Create(e) = op else {
            match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) | Err(io::Errno::NOENT) => continue,
                Err(e) => return Err(err("unlink")(e)),
            }
        };
        let (uid, gid) = match e {
            Entry::Dir { mode, uid, gid, .. } => {
                rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(*mode)).map_err(err("mkdir"))?;
                (uid, gid)
            }
            Entry::Node { dev, mode, uid, gid, .. } => {
                let ft = match dev.kind {
                    devns_core::Kind::Char => FileType::CharacterDevice,
                    devns_core::Kind::Block => FileType::BlockDevice,
                };
                let rdev = rustix::fs::makedev(dev.major, dev.minor);
                rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(*mode), rdev).map_err(err("mknod"))?;
                (uid, gid)
            }
            Entry::Symlink { target, uid, gid, .. } => {
                rustix::fs::symlinkat(target.as_str(), dir, name).map_err(err("symlink"))?;
                (uid, gid)
            }
        };
        let (u, g) = (Uid::from_raw(*uid), Gid::from_raw(*gid));
        rustix::fs::chownat(dir, name, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW).map_err(err("chown"))?;
    }
    Ok(())
}

/// One entry of a live view, with what `devns view` shows of it (`stat`
/// and `target` only in a full scan).
pub struct Scanned {
    pub actual: Actual,
    pub stat: Option<rustix::fs::Stat>,
    pub target: Option<String>,
}

/// Most entries and depth a scan reads: a container can fill its own view,
/// but not make devns walk without end.
const SCAN_MAX_ENTRIES: usize = 20_000;
const SCAN_MAX_DEPTH: usize = 16;

/// Everything in a view, read without following symlinks. A `full` scan
/// also stats every entry and reads symlinks (for `devns view`); the
/// reconcile step needs only the device numbers of nodes, so it stats just
/// those, which keeps a hotplug's work small.
pub fn scan(root: impl AsFd, full: bool) -> Result<Vec<Scanned>, ViewError> {
    let mut out = Vec::new();
    let root = root.as_fd();
    let dir = rustix::fs::openat(root, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|source| ViewError::Entry { path: ".".into(), step: "open", source })?;
    scan_dir(dir, "", 0, full, &mut out)?;
    Ok(out)
}

fn scan_dir(dir: OwnedFd, prefix: &str, depth: usize, full: bool, out: &mut Vec<Scanned>) -> Result<(), ViewError> {
    let err = |path: &str, step| {
        let path = path.to_owned();
        move |source| ViewError::Entry { path, step, source }
    };
    let d = rustix::fs::Dir::read_from(&dir).map_err(err(prefix, "readdir"))?;
    for ent in d {
        let ent = ent.map_err(err(prefix, "readdir"))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        if out.len() >= SCAN_MAX_ENTRIES {
            return Ok(());
        }
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        // The directory entry's type decides what needs a stat.
        let dtype = ent.file_type();
        let needs_stat = full || matches!(dtype, FileType::CharacterDevice | FileType::BlockDevice | FileType::Unknown);
        let stat = if needs_stat {
            match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(s) => Some(s),
                Err(io::Errno::NOENT) => continue,
                Err(e) => return Err(err(&path, "stat")(e)),
            }
        } else {
            None
        };
        let (found, target) = match (&stat, dtype) {
            (Some(st), _) => {
                let found = found_of(st);
                let symlink = FileType::from_raw_mode(st.st_mode) == FileType::Symlink;
                let target = (full && symlink)
                    .then(|| rustix::fs::readlinkat(&dir, name.as_str(), Vec::new()).ok())
                    .flatten()
                    .map(|t| t.to_string_lossy().into_owned());
                (found, target)
            }
            (None, FileType::Directory) => (Found::Dir, None),
            (None, _) => (Found::Other, None),
        };
        let is_dir = found == Found::Dir;
        out.push(Scanned { actual: Actual { path: path.clone(), found }, stat, target });
        if is_dir && depth < SCAN_MAX_DEPTH {
            let sub = rustix::fs::openat(
                &dir,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            );
            // A directory swapped for something else meanwhile is skipped.
            if let Ok(sub) = sub {
                scan_dir(sub, &path, depth + 1, full, out)?;
            }
        }
    }
    Ok(())
}
