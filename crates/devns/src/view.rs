//! Views as the kernel holds them: one tmpfs superblock per namespace,
//! made by host root with the new mount API (so its nodes work once mounted
//! inside a user namespace), filled from a [`ViewPlan`].

use devns_core::view::{Entry, ViewPlan};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Gid, Mode, Uid};
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

/// Sets the process umask for as long as it lives, restoring it on drop, so
/// that the modes in a plan land exactly. devns is single-threaded here.
struct UmaskGuard(Mode);

impl UmaskGuard {
    fn set(m: Mode) -> Self {
        UmaskGuard(rustix::process::umask(m))
    }
}

impl Drop for UmaskGuard {
    fn drop(&mut self) {
        rustix::process::umask(self.0);
    }
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
    apply(&mnt, &plan.entries)?;
    Ok(mnt)
}

/// Creates `entries` below the directory `root`.
pub fn apply(root: impl AsFd, entries: &[Entry]) -> Result<(), ViewError> {
    let root = root.as_fd();
    let _umask = UmaskGuard::set(Mode::empty());
    for e in entries {
        let path = e.path();
        let err = |step| move |source| ViewError::Entry { path: path.to_owned(), step, source };
        let (uid, gid) = match e {
            Entry::Dir { mode, uid, gid, .. } => {
                rustix::fs::mkdirat(root, path, Mode::from_raw_mode(*mode)).map_err(err("mkdir"))?;
                (uid, gid)
            }
            Entry::Node { dev, mode, uid, gid, .. } => {
                let ft = match dev.kind {
                    devns_core::Kind::Char => FileType::CharacterDevice,
                    devns_core::Kind::Block => FileType::BlockDevice,
                };
                let rdev = rustix::fs::makedev(dev.major, dev.minor);
                rustix::fs::mknodat(root, path, ft, Mode::from_raw_mode(*mode), rdev).map_err(err("mknod"))?;
                (uid, gid)
            }
            Entry::Symlink { target, uid, gid, .. } => {
                rustix::fs::symlinkat(target.as_str(), root, path).map_err(err("symlink"))?;
                (uid, gid)
            }
        };
        let (u, g) = (Uid::from_raw(*uid), Gid::from_raw(*gid));
        rustix::fs::chownat(root, path, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW).map_err(err("chown"))?;
    }
    Ok(())
}
