//! `devns doctor`'s decisions: what devns needs of a host, and what each
//! probe's result means. The shell tries each kernel feature once and
//! hands the results over as [`Findings`]; [`lines`] turns them into one
//! [`Line`] each (ok, warn or missing, with why), and [`exit_code`] says
//! whether devns can run here.

use crate::subid;
use serde::Serialize;

/// The first kernel with every interface devns uses (`NS_GET_ID` on every
/// namespace is the newest).
pub const MIN_KERNEL: (u32, u32) = (6, 18);
/// Exit status when something required is missing.
pub const EXIT_MISSING: i32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Missing,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Missing => "missing",
        }
    }
}

/// One check's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Line {
    pub check: &'static str,
    pub status: Status,
    /// Whether devns cannot work without it (a missing one fails the run).
    pub required: bool,
    pub why: String,
}

/// What trying one kernel operation gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// It worked; what it showed.
    Works(String),
    /// The kernel does not have it (unknown call, flag, ioctl or file).
    Unsupported(String),
    /// Refused for lack of privilege: present or not, this run cannot tell.
    Denied(String),
    /// It failed some other way.
    Failed(String),
}

/// `SECCOMP_GET_NOTIF_SIZES`: the sizes of `seccomp_notif`,
/// `seccomp_notif_resp` and `seccomp_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotifSizes {
    pub notif: u16,
    pub resp: u16,
    pub data: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Daemon {
    /// It answered a request.
    Running {
        socket: String,
        namespaces: usize,
    },
    NotRunning {
        socket: String,
    },
    /// Something is there but did not answer as a daemon.
    Unreachable {
        socket: String,
        why: String,
    },
}

/// Everything the shell found, one field per probe.
#[derive(Clone, Debug)]
pub struct Findings {
    /// `Err(why)` when this is not root of the host's user namespace.
    pub host_root: Result<(), String>,
    /// `uname -r`.
    pub kernel_release: String,
    /// The policy file: `Ok(device_policy)` or why it does not load.
    pub config: Result<bool, String>,
    pub config_path: String,
    /// `/proc/sys/user/max_user_namespaces`.
    pub max_user_namespaces: Option<u64>,
    /// `/proc/sys/kernel/unprivileged_userns_clone` (Debian's, if present).
    pub unprivileged_userns_clone: Option<u64>,
    /// `/proc/sys/kernel/apparmor_restrict_unprivileged_userns` (Ubuntu's).
    pub apparmor_restrict_userns: Option<u64>,
    /// A child cloned into a new user namespace.
    pub userns_create: Probe,
    pub ns_id: Probe,
    pub pidfd_userns: Probe,
    pub pidfd_getfd: Probe,
    pub peer_pidfd: Probe,
    /// The kernel's sizes, or why it would not tell them.
    pub notif_sizes: Result<NotifSizes, Probe>,
    /// The sizes devns's own structs have.
    pub our_notif_sizes: NotifSizes,
    /// A filter with a listener installed on a thread.
    pub seccomp_listener: Probe,
    pub seccomp_wait_killable: Probe,
    pub seccomp_sync_wakeup: Probe,
    pub mount_api: Probe,
    /// Where a cgroup2 hierarchy is mounted, if anywhere.
    pub cgroup2_mount: Option<String>,
    /// `/proc/filesystems`.
    pub filesystems: String,
    pub bpf_device: Probe,
    pub uevent_netns: Probe,
    pub loop_control: Probe,
    /// Each FUSE driver devns runs for containers' mounts of their own
    /// block devices (`crate::blockmount::Driver`), and whether it is
    /// installed.
    pub fuse_drivers: Vec<(crate::blockmount::Driver, bool)>,
    /// `/etc/subuid` and `/etc/subgid`: path and text (`None`: unreadable).
    pub subuid: (String, Option<String>),
    pub subgid: (String, Option<String>),
    pub daemon: Daemon,
}

/// `"6.18.44-fc-v1147"` → `(6, 18)`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The line of a probed feature: missing when required and absent or
/// failing, a warning when optional, never missing for lack of privilege.
fn probed(check: &'static str, required: bool, p: &Probe, absent: &str) -> Line {
    let (status, why) = match p {
        Probe::Works(what) => (Status::Ok, what.clone()),
        Probe::Unsupported(why) if required => (Status::Missing, why.clone()),
        Probe::Unsupported(why) => (Status::Warn, format!("{why}: {absent}")),
        Probe::Failed(why) if required => (Status::Missing, why.clone()),
        Probe::Failed(why) => (Status::Warn, format!("{why}: {absent}")),
        Probe::Denied(why) => (Status::Warn, format!("cannot check: {why} (run devns doctor as root)")),
    };
    Line { check, status, required, why }
}

fn line(check: &'static str, required: bool, status: Status, why: impl Into<String>) -> Line {
    Line { check, status, required, why: why.into() }
}

fn root(f: &Findings) -> Line {
    match &f.host_root {
        Ok(()) => line("root", false, Status::Ok, "root of the host's user namespace"),
        Err(why) => line("root", false, Status::Warn, format!("{why}: checks that need root say so")),
    }
}

fn kernel(f: &Findings) -> Line {
    let (maj, min) = MIN_KERNEL;
    match kernel_version(&f.kernel_release) {
        Some(v) if v >= MIN_KERNEL => line("kernel", false, Status::Ok, f.kernel_release.clone()),
        Some(_) => line(
            "kernel",
            false,
            Status::Warn,
            format!(
                "{} is older than {maj}.{min}, the first with all devns uses: see the lines below",
                f.kernel_release
            ),
        ),
        None => line("kernel", false, Status::Warn, format!("cannot read the version in {:?}", f.kernel_release)),
    }
}

fn config(f: &Findings) -> Line {
    match &f.config {
        Ok(_) => line("config", true, Status::Ok, f.config_path.clone()),
        Err(why) => line("config", true, Status::Missing, why.clone()),
    }
}

fn user_namespaces(f: &Findings) -> Line {
    const CHECK: &str = "userns";
    if f.max_user_namespaces == Some(0) {
        return line(CHECK, true, Status::Missing, "user.max_user_namespaces is 0: no user namespace can be made");
    }
    let l = probed(CHECK, true, &f.userns_create, "");
    if l.status != Status::Ok {
        return l;
    }
    let max = f.max_user_namespaces.map(|m| format!("max_user_namespaces {m}")).unwrap_or_default();
    // Limits on unprivileged users: devns (root) is not bound by them.
    let limit = if f.unprivileged_userns_clone == Some(0) {
        Some("kernel.unprivileged_userns_clone is 0")
    } else if f.apparmor_restrict_userns == Some(1) {
        Some("kernel.apparmor_restrict_unprivileged_userns is 1")
    } else {
        None
    };
    match limit {
        Some(limit) => line(
            CHECK,
            true,
            Status::Warn,
            format!("{limit}: devns (root) can make them, rootless runtimes cannot; {max}"),
        ),
        None => line(CHECK, true, Status::Ok, max),
    }
}

fn seccomp_notify(f: &Findings) -> Line {
    const CHECK: &str = "seccomp-notify";
    let sizes = match &f.notif_sizes {
        Ok(s) => *s,
        Err(p) => return probed(CHECK, true, p, ""),
    };
    let ours = f.our_notif_sizes;
    if sizes.notif != ours.notif || sizes.resp != ours.resp || sizes.data != ours.data {
        return line(
            CHECK,
            true,
            Status::Missing,
            format!(
                "the kernel's notification structs ({}/{}/{} bytes) differ from devns's ({}/{}/{})",
                sizes.notif, sizes.resp, sizes.data, ours.notif, ours.resp, ours.data
            ),
        );
    }
    probed(CHECK, true, &f.seccomp_listener, "")
}

fn cgroup2(f: &Findings, policy: bool) -> Line {
    const CHECK: &str = "cgroup2";
    if !policy {
        return line(CHECK, false, Status::Ok, "not needed: device_policy = false");
    }
    match &f.cgroup2_mount {
        Some(at) => line(CHECK, true, Status::Ok, format!("mounted at {at}")),
        None if has_filesystem(&f.filesystems, "cgroup2") => {
            line(CHECK, true, Status::Warn, "none mounted: devns mounts its own below its state directory")
        }
        None => line(CHECK, true, Status::Missing, "the kernel has no cgroup2 filesystem (needed by device_policy)"),
    }
}

/// Whether `/proc/filesystems` text lists `fs`.
pub fn has_filesystem(filesystems: &str, fs: &str) -> bool {
    filesystems.lines().any(|l| l.split_whitespace().last() == Some(fs))
}

fn subids(check: &'static str, (path, text): &(String, Option<String>)) -> Line {
    let Some(text) = text else {
        return line(
            check,
            false,
            Status::Warn,
            format!("no {path}: devns takes ids from {} up, which may be other users' ranges", subid::DEFAULT_START),
        );
    };
    let ranges = subid::root_ranges(text);
    if ranges.is_empty() {
        return line(
            check,
            false,
            Status::Warn,
            format!(
                "{path} gives root no range: devns takes ids from {} up, leaving other users' ranges out, but not ids in use that no entry names",
                subid::DEFAULT_START
            ),
        );
    }
    let ids: u64 = ranges.iter().map(|r| r.count as u64).sum();
    let blocks: u64 = ranges.iter().map(|r| r.count as u64 / subid::BLOCK as u64).sum();
    if blocks == 0 {
        return line(
            check,
            true,
            Status::Missing,
            format!("{path} gives root {ids} ids, fewer than one namespace's {}", subid::BLOCK),
        );
    }
    line(check, false, Status::Ok, format!("{path}: {ids} ids for root, room for {blocks} namespaces"))
}

fn daemon(f: &Findings) -> Line {
    match &f.daemon {
        Daemon::Running { socket, namespaces } => {
            line("daemon", false, Status::Ok, format!("running at {socket}, {namespaces} namespaces"))
        }
        Daemon::NotRunning { socket } => line(
            "daemon",
            false,
            Status::Warn,
            format!("not running at {socket} (devns run works without it; start it with devns daemon)"),
        ),
        Daemon::Unreachable { socket, why } => line("daemon", false, Status::Warn, format!("{socket}: {why}")),
    }
}

fn fuse_drivers(f: &Findings) -> Line {
    let missing: Vec<String> = f
        .fuse_drivers
        .iter()
        .filter(|(_, found)| !found)
        .map(|(d, _)| format!("{} (package {})", d.program(), d.package()))
        .collect();
    if missing.is_empty() {
        let names: Vec<&str> = f.fuse_drivers.iter().map(|(d, _)| d.program()).collect();
        return line("fuse-drivers", false, Status::Ok, names.join(", "));
    }
    let why = format!(
        "no {}: containers' mounts of their own devices of those types fail (ENODEV) unless mount_kernel lists the type",
        missing.join(", ")
    );
    line("fuse-drivers", false, Status::Warn, why)
}

/// Every check's line, in a fixed order.
pub fn lines(f: &Findings) -> Vec<Line> {
    // A config that does not load: judge by the default (the access layer on).
    let policy = f.config.as_ref().copied().unwrap_or(true);
    vec![
        root(f),
        kernel(f),
        config(f),
        user_namespaces(f),
        probed("ns-id", true, &f.ns_id, ""),
        probed("pidfd-userns", true, &f.pidfd_userns, ""),
        probed("pidfd-getfd", true, &f.pidfd_getfd, ""),
        probed("peer-pidfd", true, &f.peer_pidfd, ""),
        seccomp_notify(f),
        probed(
            "seccomp-wait-killable",
            false,
            &f.seccomp_wait_killable,
            "an interrupted trapped call may be restarted after the agent did it",
        ),
        probed("seccomp-sync-wakeup", false, &f.seccomp_sync_wakeup, "trapped calls take longer"),
        probed("mount-api", true, &f.mount_api, ""),
        cgroup2(f, policy),
        if policy {
            probed("bpf-device", true, &f.bpf_device, "")
        } else {
            line("bpf-device", false, Status::Ok, "not needed: device_policy = false")
        },
        probed("uevent-netns", false, &f.uevent_netns, "containers with their own network get no hotplug events"),
        probed("loop-control", false, &f.loop_control, "containers get no loop devices"),
        fuse_drivers(f),
        subids("subuid", &f.subuid),
        subids("subgid", &f.subgid),
        daemon(f),
    ]
}

/// 0 when devns can run here, [`EXIT_MISSING`] when something required is
/// missing.
pub fn exit_code(lines: &[Line]) -> i32 {
    if lines.iter().any(|l| l.required && l.status == Status::Missing) { EXIT_MISSING } else { 0 }
}

/// `--json`: `{"ok": bool, "checks": [{check, status, required, why}]}`.
pub fn to_json(lines: &[Line]) -> serde_json::Value {
    serde_json::json!({ "ok": exit_code(lines) == 0, "checks": lines })
}

/// One aligned line per check: status, name, why.
pub fn to_text(lines: &[Line]) -> String {
    let width = lines.iter().map(|l| l.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for l in lines {
        let text = format!("{:<7} {:<width$}  {}", l.status.as_str(), l.check, l.why);
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
