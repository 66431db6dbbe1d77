//! The host side of `loop-control` mediation: the host's loop-control (and
//! loop devices) opened through devns's own scratch nodes, the facts the
//! decisions need from sysfs, carrying a decision of
//! `devns_core::loopctl` out, and the cleanup of a dead namespace's loops.
//!
//! The engine (for the daemon and a stand-alone `devns run` alike)
//! implements [`Ledger`]: how a loop device becomes a namespace's, and stops
//! being so. `scratch` opens devices by number; `pending` keeps dead
//! namespaces' devices that are still open.

use crate::refusal::Refusal;
use devns_core::device::{DevId, Device, Kind};
use devns_core::loopctl::{self, Facts, LoopDev, Request, Step};
use devns_core::registry::{NsId, Registry};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, OFlags};
use rustix::io::Errno;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod pending;
mod scratch;

pub use pending::{pend, retry_pending};
pub use scratch::Scratch;

/// `loop-control`'s numbers.
pub const LOOP_CONTROL: DevId = DevId::new(Kind::Char, 10, 237);

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

    /// The inode of loopN's sysfs directory: the device's for its life.
    pub fn ino_of(&self, index: u32) -> Option<u64> {
        rustix::fs::stat(self.dir(index)).ok().map(|st| st.st_ino)
    }

    /// Whether `l` is still at its index (not gone, nor replaced).
    fn still(&self, l: LoopDev) -> bool {
        l.is(self.dev_of(l.index), self.ino_of(l.index))
    }

    /// Makes loopN, or (`None`) a device at the lowest free index from
    /// [`loopctl::NS_LOOP_BASE`] up, where the host's `GET_FREE` comes
    /// after its own free devices; the kernel's choice should that range
    /// be out of its reach.
    fn create(&self, index: Option<u32>) -> Result<u32, Errno> {
        if let Some(n) = index {
            return devns_sys::block::add(&self.ctl, Some(n));
        }
        for n in loopctl::NS_LOOP_BASE..loopctl::NS_LOOP_BASE + 4096 {
            if self.dev_of(n).is_none() {
                match devns_sys::block::add(&self.ctl, Some(n)) {
                    Ok(n) => return Ok(n),
                    // Made by someone else meanwhile.
                    Err(Errno::EXIST) => {}
                    // Beyond the minors the driver has.
                    Err(Errno::INVAL) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        devns_sys::block::add(&self.ctl, None)
    }

    /// Removes loopN (`LOOP_CTL_REMOVE`: refused while it is bound or open).
    pub fn remove(&self, index: u32) -> Result<(), Errno> {
        devns_sys::block::remove(&self.ctl, index)
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

    /// One try at detaching and removing a dead namespace's loop device.
    /// `BUSY` while something still has it open: its detach is then left
    /// to the kernel at the last close (`LOOP_CLR_FD` of an open device
    /// sets autoclear), and only [`LoopHost::remove_pending`] is tried
    /// after: a second `LOOP_CLR_FD` could detach what the host attached
    /// to it once it was free.
    pub fn detach_and_remove(&self, l: LoopDev) -> Result<(), Errno> {
        if !l.ours() {
            // The host's device, lent by an older devns: the host's
            // alone, whatever is attached to it now. Dropped, untouched.
            tracing::info!(dev = %l.dev, "a lent device in an old record: left to the host untouched");
            return Ok(());
        }
        // Gone, or loopN is now another device: nothing of ours is left.
        if !self.still(l) {
            return Ok(());
        }
        if let Ok(fd) = self.scratch.open(l.dev, OFlags::RDONLY) {
            match devns_sys::block::clear(&fd) {
                Ok(()) | Err(Errno::NXIO) => {}
                Err(e) => tracing::debug!(dev = %l.dev, error = %e, "LOOP_CLR_FD"),
            }
        }
        let removed = self.remove_pending(l);
        if removed == Err(Errno::BUSY) {
            self.plug(l);
        }
        removed
    }

    /// A dead namespace's device that is open somewhere with nothing
    /// attached: attached to an empty, read-only placeholder that detaches
    /// at its last close. The kernel's `GET_FREE` (the host's `losetup -f`)
    /// answers devices that are free, open or not: the host would attach
    /// its file to a device whose holder reads it.
    fn plug(&self, l: LoopDev) {
        if self.dir(l.index).join("loop/backing_file").exists() {
            // Attached: detached at its last close (LOOP_CLR_FD set that).
            return;
        }
        let plugged = self.scratch.open(l.dev, OFlags::RDONLY).and_then(|dev| {
            let empty = rustix::fs::memfd_create("devns-placeholder", rustix::fs::MemfdFlags::CLOEXEC)?;
            use devns_sys::block::{LO_FLAGS_AUTOCLEAR, LO_FLAGS_READ_ONLY};
            devns_sys::block::configure(&dev, &empty, LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR)
        });
        match plugged {
            Ok(()) => {
                tracing::info!(dev = %l.dev, "a dead namespace's free loop device still open: plugged until its last close")
            }
            // Attached meanwhile, or gone: not ours to plug.
            Err(e) => tracing::debug!(dev = %l.dev, error = %e, "cannot plug a loop device"),
        }
    }

    /// One try at removing a dead namespace's device that was detached
    /// (or set to detach at its last close) already.
    pub fn remove_pending(&self, l: LoopDev) -> Result<(), Errno> {
        if !l.ours() || !self.still(l) {
            return Ok(());
        }
        match devns_sys::block::remove(&self.ctl, l.index) {
            Ok(()) | Err(Errno::NODEV) | Err(Errno::NXIO) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Detaches and removes `loops`, retrying busy ones until `patience`
    /// runs out; returns those still busy then (to be recorded as pending,
    /// see [`pend`]).
    pub fn cleanup(&self, loops: &[LoopDev], patience: Duration) -> Vec<LoopDev> {
        let until = Instant::now() + patience;
        let mut left: Vec<LoopDev> = loops.to_vec();
        let mut first = true;
        loop {
            let once = |l: LoopDev| if first { self.detach_and_remove(l) } else { self.remove_pending(l) };
            left.retain(|l| match once(*l) {
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
            first = false;
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
    /// Dead namespaces' devices pending removal ([`pend`]).
    fn pending(&self) -> usize;
    /// Makes loop device `l` (described by `dev`) `ns`'s: registry, saved
    /// state, view (and the node usable) before the caller's ioctl returns.
    fn take(&mut self, ns: NsId, l: LoopDev, dev: Device) -> Result<(), String>;
    /// Forgets `l`, which the kernel removed at `ns`'s request.
    fn forget(&mut self, ns: NsId, l: LoopDev);
    /// Loop device `index` was made and is not recorded yet (`Some`), or
    /// is now (`None`): where a keeper that can die in between notes it
    /// (the daemon's journal, a run's), for whoever comes next to remove it.
    fn made(&mut self, _index: Option<u32>) {}
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

/// Carries out `req` from `ns`: the ioctl's return value, or a refusal
/// (which the agent logs when it says why).
pub fn serve(ledger: &mut dyn Ledger, ns: NsId, req: Request) -> Result<u32, Refusal> {
    let Some(host) = ledger.loop_host() else { return Err(Errno::NOTTY.into()) };
    let reg = ledger.registry();
    let owned = loopctl::owned_loops(reg, ns);
    let own_free = owned.iter().filter_map(|(_, n)| *n).filter(|n| !host.facts(*n, reg).bound).min();
    let caller =
        loopctl::Caller { ns, have: owned.len(), limit: ledger.loop_limit(), own_free, pending: ledger.pending() };
    let step = loopctl::decide(req, caller, |n| host.facts(n, reg));
    let n = match step {
        Step::Refuse(e, why) => return Err(Refusal::new(errno(e), why)),
        Step::Answer(n) => return Ok(n),
        Step::Remove(n) => {
            let dev = host.dev_of(n).ok_or(Errno::NODEV)?;
            devns_sys::block::remove(&host.ctl, n)?;
            ledger.forget(ns, LoopDev { index: n, dev, created: true, ino: None });
            return Ok(0);
        }
        Step::Create(ix) => {
            let n = host.create(ix)?;
            ledger.made(Some(n));
            n
        }
    };
    let host = ledger.loop_host().expect("checked");
    // Made just now, by this agent: the keeper serialises its calls with
    // the other keepers' (a stand-alone run holds the writers' lock from
    // its decision to its record), so nobody else has it recorded.
    let (ino, dev) = (host.ino_of(n), host.device(n).filter(|d| loopctl::is_loop(d.id)));
    let Some(dev) = dev else {
        // Made, but not readable as a loop device: not left behind.
        tracing::warn!(index = n, "a loop device made for a namespace cannot be read back; removing it");
        let _ = host.remove(n);
        ledger.made(None);
        return Err(Errno::NODEV.into());
    };
    let l = LoopDev { index: n, dev: dev.id, created: true, ino };
    let taken = ledger.take(ns, l, dev);
    if let Err(e) = &taken {
        tracing::error!(ns = %ns, dev = %l.dev, error = %e, "cannot give a loop device");
        if let Some(h) = ledger.loop_host() {
            let _ = h.remove(n);
        }
    }
    ledger.made(None);
    taken.map(|()| n).map_err(|_| Errno::IO.into())
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
