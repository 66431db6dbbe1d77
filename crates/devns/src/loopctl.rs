//! The host side of `loop-control` mediation: the host's loop-control (and
//! loop devices) opened through devns's own scratch nodes, the facts the
//! decisions need from sysfs, carrying a decision of
//! `devns_core::loopctl` out, and the cleanup of a dead namespace's loops.
//!
//! Both keepers of namespaces — the daemon and a stand-alone `devns run` —
//! implement [`Ledger`]: how a loop device becomes a namespace's, and stops
//! being so.

use devns_core::device::{DevId, Device, Kind};
use devns_core::loopctl::{self, Facts, LoopDev, Request, Step};
use devns_core::registry::{NsId, Registry};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::MountAttrFlags;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `loop-control`'s numbers.
pub const LOOP_CONTROL: DevId = DevId::new(Kind::Char, 10, 237);

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

/// The host's loop-control, and what sysfs says of loop devices.
pub struct LoopHost {
    scratch: Scratch,
    ctl: OwnedFd,
    sys: PathBuf,
}

fn sys_block() -> PathBuf {
    PathBuf::from("/sys/class/block")
}

impl LoopHost {
    /// `None` (with a log line) on a host without loop support.
    pub fn open() -> Option<LoopHost> {
        let opened = Scratch::new()
            .map_err(|e| e.to_string())
            .and_then(|s| s.open(LOOP_CONTROL, OFlags::RDWR).map(|ctl| (s, ctl)).map_err(|e| e.to_string()));
        match opened {
            Ok((scratch, ctl)) => Some(LoopHost { scratch, ctl, sys: sys_block() }),
            Err(e) => {
                tracing::warn!(error = %e, "no loop-control on this host: containers get no loop devices");
                None
            }
        }
    }

    fn dir(&self, index: u32) -> PathBuf {
        self.sys.join(format!("loop{index}"))
    }

    /// loopN as sysfs describes it now.
    pub fn device(&self, index: u32) -> Option<Device> {
        crate::discover::read_device(&self.dir(index), Kind::Block, std::path::Path::new("/dev"))
    }

    /// loopN's number, when it exists.
    pub fn dev_of(&self, index: u32) -> Option<DevId> {
        let text = std::fs::read_to_string(self.dir(index).join("dev")).ok()?;
        format!("b:{}", text.trim()).parse().ok()
    }

    pub fn facts(&self, index: u32, registry: &Registry) -> Facts {
        match self.dev_of(index) {
            None => Facts { exists: false, bound: false, owner: devns_core::Owner::Host },
            Some(dev) => Facts {
                exists: true,
                bound: self.dir(index).join("loop/backing_file").exists(),
                owner: registry.owner(dev),
            },
        }
    }

    /// One try at detaching and (when devns made it) removing a namespace's
    /// loop device. `BUSY`
    /// while something still has it open (it is detached at the last close
    /// then): try again later.
    pub fn detach_and_remove(&self, l: LoopDev) -> Result<(), Errno> {
        // Gone, or loopN is now another device: nothing of ours is left.
        if self.dev_of(l.index) != Some(l.dev) {
            return Ok(());
        }
        if let Ok(fd) = self.scratch.open(l.dev, OFlags::RDONLY) {
            match devns_sys::block::clear(&fd) {
                Ok(()) | Err(Errno::NXIO) => {}
                Err(e) => tracing::debug!(dev = %l.dev, error = %e, "LOOP_CLR_FD"),
            }
        }
        if !l.created {
            // The host's device, lent: back to the host detached.
            return Ok(());
        }
        match devns_sys::block::remove(&self.ctl, l.index) {
            Ok(()) | Err(Errno::NODEV) | Err(Errno::NXIO) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Detaches and removes `loops`, retrying busy ones until `patience`
    /// runs out; returns those still busy then.
    pub fn cleanup(&self, loops: &[LoopDev], patience: Duration) -> Vec<LoopDev> {
        let until = Instant::now() + patience;
        let mut left: Vec<LoopDev> = loops.to_vec();
        loop {
            left.retain(|l| match self.detach_and_remove(*l) {
                Ok(()) => false,
                Err(Errno::BUSY) => true,
                Err(e) => {
                    tracing::warn!(dev = %l.dev, error = %e, "cannot remove a dead namespace's loop device");
                    false
                }
            });
            if left.is_empty() || Instant::now() >= until {
                return left;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// What a keeper of namespaces does when a loop device becomes a
/// namespace's or stops being so.
pub trait Ledger {
    fn registry(&self) -> &Registry;
    fn loop_limit(&self) -> usize;
    fn loop_host(&self) -> Option<&LoopHost>;
    /// Makes loop device `l` (described by `dev`) `ns`'s: registry, saved
    /// state, view (and the node usable) before the caller's ioctl returns.
    fn take(&mut self, ns: NsId, l: LoopDev, dev: Device) -> Result<(), String>;
    /// Forgets `l`, which the kernel removed at `ns`'s request.
    fn forget(&mut self, ns: NsId, l: LoopDev);
}

fn errno(e: loopctl::Errno) -> Errno {
    match e {
        loopctl::Errno::Perm => Errno::PERM,
        loopctl::Errno::NoSpc => Errno::NOSPC,
        loopctl::Errno::Exist => Errno::EXIST,
        loopctl::Errno::NoDev => Errno::NODEV,
        loopctl::Errno::Inval => Errno::INVAL,
    }
}

/// Carries out `req` from `ns` (process `pid`): the ioctl's return value,
/// or its errno. Refusals are logged by the agent's rule.
pub fn serve(ledger: &mut dyn Ledger, ns: NsId, pid: i32, req: Request) -> Result<u32, Errno> {
    let Some(host) = ledger.loop_host() else { return Err(Errno::NOTTY) };
    let reg = ledger.registry();
    let owned = loopctl::owned_loops(reg, ns);
    let own_free = owned.iter().filter_map(|(_, n)| *n).filter(|n| !host.facts(*n, reg).bound).min();
    let caller = loopctl::Caller { ns, have: owned.len(), limit: ledger.loop_limit(), own_free };
    let step = loopctl::decide(req, caller, |n| host.facts(n, reg));
    let n = match step {
        Step::Refuse(e, why) => {
            return Err(crate::agent::refused(pid, Some(ns), "ioctl(loop-control)", &why, errno(e)));
        }
        Step::Answer(n) => return Ok(n),
        Step::Remove(n) => {
            let dev = host.dev_of(n).ok_or(Errno::NODEV)?;
            devns_sys::block::remove(&host.ctl, n)?;
            ledger.forget(ns, LoopDev { index: n, dev, created: true });
            return Ok(0);
        }
        Step::Create(ix) => devns_sys::block::add(&host.ctl, ix)?,
        Step::Take(n) => n,
    };
    let created = !matches!(step, Step::Take(_));
    let Some(dev) = host.device(n).filter(|d| loopctl::is_loop(d.id)) else {
        tracing::warn!(index = n, "a loop device vanished before it could be given");
        return Err(Errno::NODEV);
    };
    let l = LoopDev { index: n, dev: dev.id, created };
    if let Err(e) = ledger.take(ns, l, dev) {
        tracing::error!(ns = %ns, dev = %l.dev, error = %e, "cannot give a loop device");
        if created {
            let _ = devns_sys::block::remove(&ledger.loop_host().expect("checked").ctl, n);
        }
        return Err(Errno::IO);
    }
    Ok(n)
}

/// Whether `fd` (a caller's, fetched) is a loop-control to mediate: the
/// view's stand-in (`view`, when the caller's namespace has one), or the
/// host's own device, should one have been passed in.
pub fn is_loop_control(fd: impl AsFd, view: Option<rustix::fd::BorrowedFd<'_>>) -> bool {
    let Ok(st) = rustix::fs::fstat(fd) else { return false };
    if FileType::from_raw_mode(st.st_mode) != FileType::CharacterDevice {
        return false;
    }
    let rdev = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    if rdev == (LOOP_CONTROL.major, LOOP_CONTROL.minor) {
        return true;
    }
    let stand_in = devns_core::view::LOOP_CONTROL_STAND_IN;
    view.and_then(|v| rustix::fs::statat(v, devns_core::view::LOOP_CONTROL, AtFlags::SYMLINK_NOFOLLOW).ok())
        .is_some_and(|s| (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino) && rdev == (stand_in.major, stand_in.minor))
}
