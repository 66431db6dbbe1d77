//! Devices opened by number, with no `/dev` of the host's.

use devns_core::device::{DevId, Kind};
use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::MountAttrFlags;

/// Opens devices by number, through nodes devns makes for the moment on a
/// private tmpfs that is mounted nowhere: it needs neither the host's
/// `/dev` nor a filesystem that allows device nodes.
pub struct Scratch {
    dir: OwnedFd,
}

impl Scratch {
    pub fn new() -> Result<Scratch, crate::view::ViewError> {
        let attrs = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC;
        Ok(Scratch { dir: crate::view::tmpfs(&[("mode", "0700"), ("size", "64k")], attrs)? })
    }

    pub fn open(&self, dev: DevId, flags: OFlags) -> Result<OwnedFd, Errno> {
        let name = format!("{}-{}-{}", dev.kind.letter(), dev.major, dev.minor);
        let ft = if dev.kind == Kind::Char { FileType::CharacterDevice } else { FileType::BlockDevice };
        let rdev = rustix::fs::makedev(dev.major, dev.minor);
        match rustix::fs::mknodat(&self.dir, name.as_str(), ft, Mode::from_raw_mode(0o600), rdev) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
        let fd = rustix::fs::openat(&self.dir, name.as_str(), flags | OFlags::CLOEXEC, Mode::empty());
        let _ = rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::empty());
        fd
    }
}
