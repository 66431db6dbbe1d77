//! The host's kernel features, each tried once the way devns uses it, for
//! `devns doctor`: thin, through devns's own wrappers, changing nothing
//! that outlives the probe (what changes a thread's state runs in a thread
//! that ends, or a child). What a result means is
//! `devns_core::doctor`'s to say.

use devns_core::doctor::{Daemon, NotifSizes, Probe};
use devns_sys::seccomp::{self, SockFilter};
use rustix::fd::{AsRawFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::path::Path;
use std::time::Duration;

/// What an errno from `what` says of the feature: not in this kernel,
/// refused for want of privilege (to root: by something else), or broken.
fn classify(what: &str, e: Errno) -> Probe {
    let why = format!("{what}: {e}");
    match e {
        Errno::NOSYS | Errno::NOTTY | Errno::NOTSUP | Errno::INVAL | Errno::NOENT => Probe::Unsupported(why),
        Errno::PERM | Errno::ACCESS if !is_root() => Probe::Denied(why),
        Errno::PERM | Errno::ACCESS => {
            Probe::Failed(format!("{why}, refused to root (a security module, lockdown, or a container's seccomp?)"))
        }
        _ => Probe::Failed(why),
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn open(path: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
}

/// A sysctl's number, if the file exists.
pub fn sysctl(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A child cloned into a new user namespace, which exits at once.
pub fn userns_create() -> Probe {
    use devns_sys::process::{CLONE_NEWUSER, Forked, fork_into, wait_pidfd};
    // SAFETY: the child calls only `_exit`, which is async-signal-safe, so
    // fork's contract holds even if this process has other threads.
    match unsafe { fork_into(CLONE_NEWUSER) } {
        Ok(Forked::Child) => {
            // SAFETY: `_exit` ends the child without running this
            // process's destructors or atexit handlers.
            unsafe { libc::_exit(0) }
        }
        Ok(Forked::Parent { pidfd, .. }) => match wait_pidfd(&pidfd) {
            Ok(0) => Probe::Works("a child cloned into a new user namespace".into()),
            Ok(st) => Probe::Failed(format!("the child in a new user namespace ended with {st}")),
            Err(e) => Probe::Failed(format!("waiting for the child: {e}")),
        },
        Err(e) => classify("clone3(CLONE_NEWUSER)", e),
    }
}

/// `NS_GET_ID` on this process's user namespace.
pub fn ns_id() -> Probe {
    match open("/proc/self/ns/user").and_then(devns_sys::ns::ns_id) {
        Ok(id) => Probe::Works(format!("NS_GET_ID: this user namespace is id {id}")),
        Err(e) => classify("NS_GET_ID", e),
    }
}

fn own_pidfd() -> rustix::io::Result<OwnedFd> {
    rustix::process::pidfd_open(rustix::process::getpid(), rustix::process::PidfdFlags::empty())
}

/// `PIDFD_GET_USER_NAMESPACE` on a pidfd of this process: its own namespace.
pub fn pidfd_userns() -> Probe {
    let got = own_pidfd().and_then(devns_sys::ns::pidfd_user_ns).and_then(devns_sys::ns::ns_id);
    let own = open("/proc/self/ns/user").and_then(devns_sys::ns::ns_id);
    match (got, own) {
        (Ok(a), Ok(b)) if a == b => Probe::Works("PIDFD_GET_USER_NAMESPACE".into()),
        (Ok(a), Ok(b)) => Probe::Failed(format!("PIDFD_GET_USER_NAMESPACE gave namespace {a}, not {b}")),
        (Err(e), _) | (_, Err(e)) => classify("PIDFD_GET_USER_NAMESPACE", e),
    }
}

/// `pidfd_getfd` of one of this process's own fds: the same file.
pub fn pidfd_getfd() -> Probe {
    let got = own_pidfd().and_then(|p| {
        let copy = rustix::process::pidfd_getfd(&p, p.as_raw_fd(), rustix::process::PidfdGetfdFlags::empty())?;
        Ok((rustix::fs::fstat(&p)?.st_ino, rustix::fs::fstat(&copy)?.st_ino))
    });
    match got {
        Ok((a, b)) if a == b => Probe::Works("pidfd_getfd".into()),
        Ok(_) => Probe::Failed("pidfd_getfd gave another file".into()),
        Err(e) => classify("pidfd_getfd", e),
    }
}

/// `SO_PEERPIDFD` on a socket pair: a pidfd of this process.
pub fn peer_pidfd() -> Probe {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let got = rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
        .and_then(|(a, _b)| devns_sys::ns::peer_pidfd(&a));
    match got {
        Ok(p) if crate::host::pid_of_pidfd(&p) == Some(rustix::process::getpid().as_raw_nonzero().get()) => {
            Probe::Works("SO_PEERPIDFD".into())
        }
        Ok(_) => Probe::Failed("SO_PEERPIDFD gave another process".into()),
        Err(e) => classify("SO_PEERPIDFD", e),
    }
}

/// `SECCOMP_GET_NOTIF_SIZES`, and the sizes of devns's own structs.
pub fn notif_sizes() -> (Result<NotifSizes, Probe>, NotifSizes) {
    let ours = NotifSizes {
        notif: size_of::<seccomp::Notif>() as u16,
        resp: size_of::<seccomp::NotifResp>() as u16,
        data: size_of::<seccomp::SeccompData>() as u16,
    };
    let kernel = seccomp::notif_sizes()
        .map(|s| NotifSizes { notif: s.notif, resp: s.resp, data: s.data })
        .map_err(|e| classify("SECCOMP_GET_NOTIF_SIZES", e));
    (kernel, ours)
}

/// A filter that allows everything, with a listener, installed on a
/// thread that ends at once (no_new_privs set on that thread alone, so
/// this works without root too); then `SYNC_WAKE_UP` set on the listener.
/// Returns the listener's and the wake-up's results.
pub fn seccomp_listener() -> (Probe, Probe) {
    // BPF_RET | BPF_K, SECCOMP_RET_ALLOW.
    const ALLOW: SockFilter = SockFilter { code: 0x06, jt: 0, jf: 0, k: 0x7fff_0000 };
    let installed = std::thread::spawn(|| {
        rustix::thread::set_no_new_privs(true)?;
        seccomp::install_with_listener(&[ALLOW])
    })
    .join()
    .unwrap_or(Err(Errno::IO));
    match installed {
        Ok(listener) if seccomp::is_listener(&listener) => {
            let wakeup = match seccomp::set_sync_wakeup(&listener) {
                Ok(()) => Probe::Works("SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP".into()),
                Err(e) => classify("SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP", e),
            };
            (Probe::Works("a filter with a user-notification listener".into()), wakeup)
        }
        Ok(_) => (Probe::Failed("the filter's fd is no listener".into()), Probe::Failed("no listener".into())),
        Err(e) => {
            let p = classify("seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER)", e);
            (p.clone(), p)
        }
    }
}

/// Whether the kernel knows `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`.
pub fn seccomp_wait_killable() -> Probe {
    match seccomp::knows_wait_killable_recv() {
        Ok(true) => Probe::Works("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV".into()),
        Ok(false) => Probe::Unsupported("no SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV".into()),
        Err(e) => classify("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", e),
    }
}

/// A detached tmpfs as views are made (fsopen, fsconfig, fsmount), made
/// read-only with `mount_setattr`, then dropped.
pub fn mount_api() -> Probe {
    let fs = match crate::view::tmpfs(&[("size", "4k")], rustix::mount::MountAttrFlags::empty()) {
        Ok(fs) => fs,
        Err(crate::view::ViewError::Tmpfs { step, source }) => return classify(step, source),
        Err(e) => return Probe::Failed(e.to_string()),
    };
    match devns_sys::mount::set_attrs(&fs, devns_sys::mount::MOUNT_ATTR_RDONLY) {
        Ok(()) => Probe::Works("fsopen tmpfs, fsmount, mount_setattr".into()),
        Err(e) => classify("mount_setattr", e),
    }
}

/// Where a cgroup2 hierarchy is mounted, and `/proc/filesystems`.
pub fn cgroup2() -> (Option<String>, String) {
    let mount = std::fs::read("/proc/self/mountinfo")
        .ok()
        .and_then(crate::cgroup::find_cgroup2)
        .map(|p| p.display().to_string());
    (mount, std::fs::read_to_string("/proc/filesystems").unwrap_or_default())
}

/// devns's own device program loaded over a new map (not attached).
pub fn bpf_device() -> Probe {
    use crate::bpf::PolicyError;
    let none = Path::new("(doctor)");
    let loaded = crate::bpf::new_map(none).and_then(|map| crate::bpf::load_program(none, &map));
    match loaded {
        Ok(_) => Probe::Works("devns's BPF_PROG_TYPE_CGROUP_DEVICE program loads".into()),
        Err(PolicyError::Map { source, .. }) => match source.errno() {
            Some(e) => classify("BPF_MAP_CREATE", e),
            None => Probe::Failed(source.to_string()),
        },
        Err(PolicyError::Load { source, .. }) => match source.errno() {
            Some(e @ (Errno::PERM | Errno::ACCESS | Errno::NOSYS)) => classify("BPF_PROG_LOAD", e),
            _ => Probe::Failed(format!("BPF_PROG_LOAD: {source}")),
        },
        Err(e) => Probe::Failed(e.to_string()),
    }
}

/// An event sent with UEVENT_SEND in a fresh network namespace (a thread's
/// own, gone with it) comes back from the kernel on a listener there.
pub fn uevent_netns() -> Probe {
    std::thread::spawn(uevent_in_new_netns).join().unwrap_or_else(|_| Probe::Failed("the probe's thread died".into()))
}

fn uevent_in_new_netns() -> Probe {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, netlink};
    const DEVPATH: &str = "/devices/virtual/devns-doctor";
    if let Err(e) = devns_sys::ns::unshare_net() {
        return classify("unshare(CLONE_NEWNET)", e);
    }
    let rx = match crate::uevents::socket() {
        Ok(s) => s,
        Err(e) => return Probe::Failed(format!("{e:#}")),
    };
    let tx = match rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::KOBJECT_UEVENT),
    ) {
        Ok(s) => s,
        Err(e) => return classify("a uevent socket", e),
    };
    let event = devns_core::uevent::format("change", DEVPATH, "devns-doctor", "", 0);
    let (uid, gid) = (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw());
    if let Err(e) = crate::uevents::send_as_kernel(&tx, &event, uid, gid) {
        return classify("UEVENT_SEND", e);
    }
    let mut fds = [rustix::event::PollFd::new(&rx, rustix::event::PollFlags::IN)];
    let timeout = rustix::event::Timespec::try_from(Duration::from_secs(2)).ok();
    if !matches!(rustix::event::poll(&mut fds, timeout.as_ref()), Ok(n) if n > 0) {
        return Probe::Failed("UEVENT_SEND: the kernel broadcast nothing within 2 s".into());
    }
    let mut seen = false;
    crate::uevents::drain(&rx, |msg| {
        seen |= devns_core::uevent::parse_netlink(msg).is_ok_and(|u| u.devpath == DEVPATH);
    });
    if seen {
        Probe::Works("UEVENT_SEND in a new network namespace".into())
    } else {
        Probe::Failed("UEVENT_SEND: what came back was not the event sent".into())
    }
}

/// The host's loop-control, opened by number as devns opens it.
pub fn loop_control() -> Probe {
    let scratch = match crate::loopctl::Scratch::new() {
        Ok(s) => s,
        Err(crate::view::ViewError::Tmpfs { step, source }) => return classify(step, source),
        Err(e) => return Probe::Failed(e.to_string()),
    };
    match scratch.open(crate::loopctl::LOOP_CONTROL, OFlags::RDWR) {
        Ok(_) => Probe::Works("loop-control (10:237)".into()),
        Err(e @ (Errno::NXIO | Errno::NODEV)) => {
            Probe::Unsupported(format!("loop-control (10:237): {e}: no loop driver (modprobe loop)"))
        }
        Err(e) => classify("loop-control (10:237)", e),
    }
}

/// The path and text of an `/etc/subuid`-format file, if readable.
pub fn subids(path: &str) -> (String, Option<String>) {
    (path.to_owned(), std::fs::read_to_string(path).ok())
}

/// Whether a daemon answers at `socket` (a read-only request).
pub fn daemon(socket: &Path) -> Daemon {
    let shown = socket.display().to_string();
    let answered = crate::client::Client::connect_if_running(socket)
        .and_then(|c| c.map(|mut c| c.call(serde_json::json!({ "op": "ns-ls" }), &[])).transpose());
    match answered {
        Ok(Some(v)) => Daemon::Running { socket: shown, namespaces: v.as_array().map_or(0, Vec::len) },
        Ok(None) => Daemon::NotRunning { socket: shown },
        Err(e) => Daemon::Unreachable { socket: shown, why: format!("{e:#}") },
    }
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    rustix::system::uname().release().to_string_lossy().into_owned()
}
