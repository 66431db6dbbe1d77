//! `mount(2)` of a block device the caller's namespace owns (a loop device
//! of its own, or a partition of one), for the types devns serves
//! ([`devns_core::blockmount`]): by the kernel, where the operator trusts
//! the images of that type, or by a FUSE driver with the container's
//! credentials ([`super::fuse`]). A source of a type devns serves that is a
//! device of anyone else's is refused with `EPERM`; one that is no block
//! device gets what the kernel would answer.

use super::caller::Caller;
use super::mount::{Place, path_arg};
use super::{Answer, PATH_MAX, Policy, refuse};
use devns_core::blockmount::{self, Param, Plan, Way};
use devns_core::registry::NsId;
use devns_core::seccomp::CAP_SYS_ADMIN;
use devns_core::{DevId, Kind};
use devns_sys::seccomp::Notif;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};

/// One mount the agent serves: what it read of the caller, checked.
pub(super) struct Request {
    pub pid: i32,
    pub ns: NsId,
    pub dev: DevId,
    /// The device's name (`DEVNAME`).
    pub name: String,
    pub fstype: String,
    pub target: String,
    pub plan: Plan,
    pub place: Place,
    /// The caller's user namespace.
    pub userns: OwnedFd,
    /// The host ids of its user namespace's root, when it maps one.
    pub root: Option<(u32, u32)>,
}

pub(super) fn mount(
    listener: BorrowedFd<'_>,
    n: &Notif,
    mut c: Caller<'_>,
    policy: &dyn Policy,
    fstype: &str,
    way: Way,
) -> Answer {
    let [source_addr, target_addr, _fstype, flags, data_addr, _] = n.data.args;
    let source = c.read_str(source_addr, PATH_MAX);
    let target = c.read_str(target_addr, PATH_MAX);
    let data = (data_addr != 0).then(|| c.read_str(data_addr, blockmount::MAX_DATA + 1));
    let (place, ns, userns) = (Place::of(&c), c.user_ns(), c.open_at("ns/user", OFlags::RDONLY));
    let maps = c.id_maps();
    if !devns_sys::seccomp::id_valid(listener, n.id) {
        return Answer::Gone;
    }
    let (place, ns, userns, (uids, gids)) = match (place, ns, userns, maps) {
        (Ok(p), Ok(ns), Ok(u), Ok(m)) => (p, ns, u, m),
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => {
            return super::unreadable(listener, n.id, n.pid, e);
        }
    };
    let call = format!("mount {fstype}");
    // The kernel's own answers to a bad source or target come first.
    let source = match source_addr {
        0 => return Answer::Done(Err(Errno::INVAL)),
        _ => match path_arg(source) {
            Ok(s) => s,
            Err(e) => return Answer::Done(Err(e)),
        },
    };
    let target = match path_arg(target) {
        Ok(t) => t,
        Err(e) => return Answer::Done(Err(e)),
    };
    let data = match data {
        None => None,
        Some(Ok(d)) => match String::from_utf8(d) {
            Ok(d) => Some(d),
            Err(_) => return refuse(c.pid, Some(ns), &call, "mount data that is not text", Errno::INVAL),
        },
        Some(Err(Errno::NAMETOOLONG)) => {
            return refuse(c.pid, Some(ns), &call, "mount data longer than a page", Errno::INVAL);
        }
        Some(Err(e)) => return Answer::Done(Err(e)),
    };
    let dev = match block_device(&place, &source) {
        Ok(d) => d,
        Err(e) => return Answer::Done(Err(e)),
    };
    // A target that is no directory fails before any driver starts.
    if let Err(e) = place.resolve(&target, OFlags::PATH | OFlags::DIRECTORY) {
        return Answer::Done(Err(e));
    }
    if !c.creds.has_cap(CAP_SYS_ADMIN) {
        return refuse(c.pid, Some(ns), &call, "no CAP_SYS_ADMIN in its namespace", Errno::PERM);
    }
    if !policy.owns(ns, dev) {
        let why = format!("{source} ({dev}) is not a block device of this namespace's");
        return refuse(c.pid, Some(ns), &call, &why, Errno::PERM);
    }
    let plan = match blockmount::plan(fstype, flags, data.as_deref()) {
        Ok(p) => p,
        Err(r) => {
            let errno = match r.errno {
                blockmount::Errno::Inval => Errno::INVAL,
                blockmount::Errno::Perm => Errno::PERM,
            };
            return refuse(c.pid, Some(ns), &call, &r.why, errno);
        }
    };
    let root = uids.to_host(0).zip(gids.to_host(0));
    let name = policy.device_name(dev).unwrap_or_else(|| dev.to_string());
    let req = Request { pid: c.pid, ns, dev, name, fstype: fstype.to_owned(), target, plan, place, userns, root };
    let done = match way {
        Way::Kernel => kernel(&req),
        Way::Fuse(driver) => super::fuse::mount(&req, driver),
    };
    match done {
        Ok(()) => {
            tracing::info!(pid = req.pid, ns = %ns, dev = %dev, fstype, target = %req.target, way = ?way, "mounted a device of the namespace's own");
            Answer::Done(Ok(()))
        }
        Err(e) => Answer::Done(Err(e)),
    }
}

/// The block device `source` names in the caller's root: `ENOENT`,
/// `ENOTBLK` and the like as the kernel's lookup would answer.
fn block_device(place: &Place, source: &str) -> Result<DevId, Errno> {
    let node = place.resolve(source, OFlags::PATH)?;
    let st = rustix::fs::fstat(&node)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::BlockDevice {
        return Err(Errno::NOTBLK);
    }
    Ok(DevId::new(Kind::Block, rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev)))
}

/// devns's own node of block device `dev` (on a private tmpfs mounted
/// nowhere), as an `O_PATH` fd: the kernel and the drivers are given the
/// device by it, never by a path of the container's, which it could
/// change after the check.
pub(super) fn node(dev: DevId) -> Result<OwnedFd, Errno> {
    static SCRATCH: std::sync::OnceLock<Result<crate::loopctl::Scratch, String>> = std::sync::OnceLock::new();
    match SCRATCH.get_or_init(|| crate::loopctl::Scratch::new().map_err(|e| e.to_string())) {
        Ok(s) => s.open(dev, OFlags::PATH),
        Err(e) => {
            tracing::error!(error = %e, "no tmpfs for devns's own device nodes");
            Err(Errno::NOMEM)
        }
    }
}

/// The kernel mount: made by devns on the host side from its own node of
/// the device, `nosuid,nodev`, id-mapped to the caller's user namespace
/// (files show the container's ids), then attached at the target.
fn kernel(req: &Request) -> Result<(), Errno> {
    let node = node(req.dev)?;
    let fs = rustix::mount::fsopen(req.fstype.as_str(), FsOpenFlags::FSOPEN_CLOEXEC)?;
    let source = format!("/proc/self/fd/{}", node.as_raw_fd());
    let configured = (|| {
        rustix::mount::fsconfig_set_string(&fs, "source", source.as_str())?;
        for p in &req.plan.params {
            match p {
                Param::Flag(k) => rustix::mount::fsconfig_set_flag(&fs, k.as_str())?,
                Param::Value(k, v) => rustix::mount::fsconfig_set_string(&fs, k.as_str(), v.as_str())?,
            }
        }
        rustix::mount::fsconfig_create(&fs)
    })();
    if let Err(e) = configured {
        tracing::info!(ns = %req.ns, dev = %req.dev, fstype = req.fstype, errno = %e, kernel = %fs_log(&fs), "the kernel refused the mount");
        return Err(e);
    }
    let attrs = MountAttrFlags::from_bits_retain(req.plan.attrs as u32);
    let tree = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?;
    devns_sys::mount::idmap(&tree, req.userns.as_fd())?;
    req.place.attach(&tree, &req.target)
}

/// What the kernel said about a filesystem context, its message lines
/// (`e ext4: ...`) joined.
fn fs_log(fs: &OwnedFd) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    // At most the kernel's 8 kept messages.
    for _ in 0..8 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            _ => break,
        }
    }
    out.join("; ")
}
