//! `devns doctor`: what devns needs of this host, one line per check (ok,
//! warn or missing, and why); `--json` for `{ok, checks}`. Exits 1 when
//! something required is missing. The probes are `crate::probes`; what
//! their results mean is `devns_core::doctor`'s.

use super::Global;
use crate::probes;
use anyhow::Result;
use devns_core::doctor::{self, Findings};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(global: &Global, _args: Args) -> Result<i32> {
    let lines = doctor::lines(&findings(global));
    let text = if global.json { format!("{}\n", doctor::to_json(&lines)) } else { doctor::to_text(&lines) };
    // A reader that went away (`| head`) is no reason to panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
    Ok(doctor::exit_code(&lines))
}

fn findings(global: &Global) -> Findings {
    // First, while this process has one thread: it forks.
    let userns_create = probes::userns_create();
    let (notif_sizes, our_notif_sizes) = probes::notif_sizes();
    let (seccomp_listener, seccomp_sync_wakeup) = probes::seccomp_listener();
    let (cgroup2_mount, filesystems) = probes::cgroup2();
    Findings {
        host_root: crate::host::require_host_root("devns").map_err(|e| e.to_string()),
        kernel_release: probes::kernel_release(),
        config: crate::config::load(&global.config).map(|c| c.device_policy).map_err(|e| e.to_string()),
        config_path: match global.config.exists() {
            true => global.config.display().to_string(),
            false => format!("the defaults (no {})", global.config.display()),
        },
        max_user_namespaces: probes::sysctl("/proc/sys/user/max_user_namespaces"),
        unprivileged_userns_clone: probes::sysctl("/proc/sys/kernel/unprivileged_userns_clone"),
        apparmor_restrict_userns: probes::sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
        userns_create,
        ns_id: probes::ns_id(),
        pidfd_userns: probes::pidfd_userns(),
        pidfd_getfd: probes::pidfd_getfd(),
        peer_pidfd: probes::peer_pidfd(),
        notif_sizes,
        our_notif_sizes,
        seccomp_listener,
        seccomp_wait_killable: probes::seccomp_wait_killable(),
        seccomp_sync_wakeup,
        mount_api: probes::mount_api(),
        cgroup2_mount,
        filesystems,
        bpf_device: probes::bpf_device(),
        uevent_netns: probes::uevent_netns(),
        loop_control: probes::loop_control(),
        fuse_drivers: devns_core::blockmount::Driver::ALL
            .iter()
            .map(|d| (*d, crate::agent::fuse::program(*d).is_some()))
            .collect(),
        subuid: probes::subids("/etc/subuid"),
        subgid: probes::subids("/etc/subgid"),
        daemon: probes::daemon(&global.socket),
    }
}
