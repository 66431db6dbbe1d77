//! Small facts about the host and this process.

use anyhow::{Context, Result, bail};
use devns_core::state::Keeper;
use std::fs;

/// devns acts as the host's root: uid 0 in the initial user namespace.
pub fn require_host_root(what: &str) -> Result<()> {
    let uid = rustix::process::geteuid().as_raw();
    if uid != 0 {
        bail!("{what} must run as root on the host; you are uid {uid}");
    }
    let map = fs::read_to_string("/proc/self/uid_map").context("cannot read /proc/self/uid_map")?;
    let initial = map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
    if !initial {
        bail!("{what} must run as root on the host; this is root of a user namespace, not of the host");
    }
    Ok(())
}

/// Field 22 of `/proc/PID/stat`: the process's start time in clock ticks.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parens: skip past its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn current_keeper() -> Result<Keeper> {
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    let start_time = start_time(pid).context("cannot read this process's start time from /proc")?;
    Ok(Keeper { pid, start_time })
}

/// Whether the devns process `k` still runs (same pid, same start time).
pub fn keeper_alive(k: &Keeper) -> bool {
    start_time(k.pid) == Some(k.start_time)
}

/// Whether a recorded namespace may still be alive: its keeper runs, or one
/// of its watched members does. (The daemon confirms a "no" against /proc.)
pub fn record_alive(r: &devns_core::state::NsRecord) -> bool {
    r.keeper.as_ref().is_some_and(keeper_alive) || r.members.iter().any(keeper_alive)
}

/// The pid behind a pidfd, from `/proc/self/fdinfo` (`None` once it died).
pub fn pid_of_pidfd(pidfd: impl rustix::fd::AsFd) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_fd().as_raw_fd())).ok()?;
    let pid: i32 = info.lines().find_map(|l| l.strip_prefix("Pid:"))?.trim().parse().ok()?;
    (pid > 0).then_some(pid)
}

/// The id of the user namespace of process `pid`.
pub fn user_ns_of(pid: i32) -> std::io::Result<devns_core::NsId> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(format!("/proc/{pid}/ns/user"), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    Ok(devns_core::NsId(devns_sys::ns::ns_id(&fd)?))
}

/// A process, other than those in `skip`, whose user namespace is `id`:
/// how the daemon confirms against /proc that a namespace is really gone.
pub fn find_ns_member(id: devns_core::NsId, skip: &[i32]) -> Option<i32> {
    let dir = fs::read_dir("/proc").ok()?;
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| !skip.contains(pid))
        .find(|pid| user_ns_of(*pid).is_ok_and(|ns| ns == id))
}

/// Root's subordinate id ranges in `/etc/subuid`-format `file`.
pub fn subid_ranges(file: &str) -> Vec<devns_core::subid::Range> {
    fs::read_to_string(file).map(|t| devns_core::subid::root_ranges(&t)).unwrap_or_default()
}

/// The host's overflow uid and gid: what unmapped ids show as.
pub fn overflow_ids() -> (u32, u32) {
    let read = |f: &str| fs::read_to_string(f).ok().and_then(|s| s.trim().parse().ok());
    (
        read("/proc/sys/kernel/overflowuid").unwrap_or(devns_core::view::DEFAULT_OVERFLOW_ID),
        read("/proc/sys/kernel/overflowgid").unwrap_or(devns_core::view::DEFAULT_OVERFLOW_ID),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keeper_is_alive_only_with_its_own_start_time() {
        let me = current_keeper().unwrap();
        assert!(keeper_alive(&me));
        assert!(!keeper_alive(&Keeper { start_time: me.start_time + 1, ..me }));
        assert!(!keeper_alive(&Keeper { pid: i32::MAX, ..me }));
    }
}
