//! The root of a container started without `--rootfs`: a tmpfs of its own
//! that holds the host's root directory's entries, each directory bound in
//! with every mount below it, except `dev`, `proc` and `tmp`, which stay
//! empty for the container's own mounts.
//!
//! The mounts the container inherits are locked to their parents (the
//! kernel lets no less privileged namespace take them off), and bind copies
//! keep them so; only the mounts the child makes are its own to unmount.
//! Stacking the view, `/proc` and `/tmp` on the host's inherited `/dev`,
//! `/proc` and `/tmp` would let container root unmount them and uncover the
//! host's; here, what it unmounts uncovers an empty directory of its own.

use anyhow::{Context, Result};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::mount::{MountAttrFlags, MoveMountFlags, OpenTreeFlags};
use std::ffi::OsStr;

use super::OWN;

/// Where the new root is mounted until `pivot_root` makes it `/`: a mount
/// point of the current (the host's) tree that the container never sees.
const STAGE: &str = "/tmp";

/// Builds the root and returns it, attached (as `pivot_root` needs it) at
/// the host's `/tmp` in this mount namespace.
pub(super) fn from_host() -> Result<OwnedFd> {
    let attrs = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV;
    let root = super::new_fs("tmpfs", &[], &[("mode", "0755"), ("size", "1m")], attrs)?;
    rustix::mount::move_mount(&root, "", rustix::fs::CWD, STAGE, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
        .context("cannot mount the new root")?;
    let host = rustix::fs::open("/", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .context("cannot open the host's root")?;
    let dir = Mode::from_raw_mode(0o755);
    for e in std::fs::read_dir("/").context("cannot list the host's root")? {
        let e = e.context("cannot list the host's root")?;
        let name = e.file_name();
        let ctx = || format!("cannot give the container /{}", name.to_string_lossy());
        if OWN.iter().any(|o| OsStr::new(o) == name) {
            continue;
        }
        let ty = e.file_type().with_context(ctx)?;
        use std::os::unix::fs::FileTypeExt;
        if ty.is_symlink() {
            let target = rustix::fs::readlinkat(&host, &name, Vec::new()).with_context(ctx)?;
            rustix::fs::symlinkat(&target, &root, &name).with_context(ctx)?;
        } else if ty.is_dir() {
            rustix::fs::mkdirat(&root, &name, dir).with_context(ctx)?;
            bind(&host, &root, &name).with_context(ctx)?;
        } else if ty.is_block_device() || ty.is_char_device() {
            // Devices are the view's to give.
            tracing::warn!(name = %name.to_string_lossy(), "a device node in the host's root: not given to the container");
        } else {
            let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC;
            drop(rustix::fs::openat(&root, &name, flags, Mode::from_raw_mode(0o644)).with_context(ctx)?);
            bind(&host, &root, &name).with_context(ctx)?;
        }
    }
    for own in OWN {
        rustix::fs::mkdirat(&root, own, dir).with_context(|| format!("cannot create /{own} in the new root"))?;
    }
    Ok(root)
}

/// Whether host path `dir` is below one of the container's own
/// directories, where the same path names something else.
pub(super) fn is_own(dir: &std::path::Path) -> bool {
    OWN.iter().any(|o| dir.starts_with(std::path::Path::new("/").join(o)))
}

/// Binds the host root's entry `name`, with the mounts below it, on the
/// same name in `root`.
fn bind(host: impl AsFd, root: impl AsFd, name: &OsStr) -> rustix::io::Result<()> {
    let tree = rustix::mount::open_tree(
        host,
        name,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE
            | OpenTreeFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    let at = rustix::fs::openat2(
        root,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS,
    )?;
    rustix::mount::move_mount(
        &tree,
        "",
        &at,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
}

/// Makes the new root itself read-only, as the host's is to container root
/// (the directories bound in keep their own modes).
pub(super) fn seal(root: impl AsFd) -> Result<()> {
    devns_sys::mount::set_attrs_top(root, devns_sys::mount::MOUNT_ATTR_RDONLY)
        .context("cannot make the new root read-only")
}
