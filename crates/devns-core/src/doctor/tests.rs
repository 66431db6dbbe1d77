use super::*;

/// A change that breaks one thing of a healthy host.
type Break = Box<dyn Fn(&mut Findings)>;

const SIZES: NotifSizes = NotifSizes { notif: 80, resp: 24, data: 64 };

/// A host where everything works.
fn healthy() -> Findings {
    let works = || Probe::Works("works".into());
    Findings {
        host_root: Ok(()),
        kernel_release: "6.18.44-fc-v1147".into(),
        config: Ok(true),
        config_path: "/etc/devns/config.toml".into(),
        max_user_namespaces: Some(96362),
        unprivileged_userns_clone: None,
        apparmor_restrict_userns: None,
        userns_create: works(),
        ns_id: works(),
        pidfd_userns: works(),
        pidfd_getfd: works(),
        peer_pidfd: works(),
        notif_sizes: Ok(SIZES),
        our_notif_sizes: SIZES,
        seccomp_listener: works(),
        seccomp_wait_killable: works(),
        seccomp_sync_wakeup: works(),
        mount_api: works(),
        cgroup2_mount: Some("/sys/fs/cgroup".into()),
        filesystems: "nodev\ttmpfs\nnodev\tcgroup2\n".into(),
        bpf_device: works(),
        uevent_netns: works(),
        loop_control: works(),
        fuse_drivers: crate::blockmount::Driver::ALL.iter().map(|d| (*d, true)).collect(),
        subuid: ("/etc/subuid".into(), Some("root:100000:655360\n".into())),
        subgid: ("/etc/subgid".into(), Some("root:100000:655360\n".into())),
        daemon: Daemon::Running { socket: "/run/devns/devns.sock".into(), namespaces: 2 },
    }
}

fn the<'a>(lines: &'a [Line], check: &str) -> &'a Line {
    lines.iter().find(|l| l.check == check).unwrap_or_else(|| panic!("no line {check}"))
}

/// The one line that is not ok, and the exit code.
fn only_problem(f: &Findings) -> (Line, i32) {
    let lines = lines(f);
    let bad: Vec<&Line> = lines.iter().filter(|l| l.status != Status::Ok).collect();
    assert_eq!(bad.len(), 1, "expected exactly one line not ok: {bad:?}");
    (bad[0].clone(), exit_code(&lines))
}

#[test]
fn a_healthy_host_is_all_ok_and_exits_0() {
    let lines = lines(&healthy());
    assert!(lines.iter().all(|l| l.status == Status::Ok), "{lines:?}");
    assert_eq!(exit_code(&lines), 0);
    let names: Vec<&str> = lines.iter().map(|l| l.check).collect();
    assert_eq!(
        names,
        [
            "root",
            "kernel",
            "config",
            "userns",
            "ns-id",
            "pidfd-userns",
            "pidfd-getfd",
            "peer-pidfd",
            "seccomp-notify",
            "seccomp-wait-killable",
            "seccomp-sync-wakeup",
            "mount-api",
            "cgroup2",
            "bpf-device",
            "uevent-netns",
            "loop-control",
            "fuse-drivers",
            "subuid",
            "subgid",
            "daemon"
        ]
    );
    assert_eq!(the(&lines, "subuid").why, "/etc/subuid: 655360 ids for root, room for 10 namespaces");
}

#[test]
fn each_required_feature_missing_fails_the_run() {
    let gone = || Probe::Unsupported("ENOSYS".into());
    let cases: Vec<(&str, Break)> = vec![
        ("userns", Box::new(|f| f.max_user_namespaces = Some(0))),
        ("userns", Box::new(move |f| f.userns_create = Probe::Failed("EPERM in clone".into()))),
        ("ns-id", Box::new(move |f| f.ns_id = gone())),
        ("pidfd-userns", Box::new(move |f| f.pidfd_userns = gone())),
        ("pidfd-getfd", Box::new(move |f| f.pidfd_getfd = gone())),
        ("peer-pidfd", Box::new(move |f| f.peer_pidfd = gone())),
        ("seccomp-notify", Box::new(move |f| f.notif_sizes = Err(gone()))),
        ("seccomp-notify", Box::new(|f| f.notif_sizes = Ok(NotifSizes { notif: 88, ..SIZES }))),
        ("seccomp-notify", Box::new(move |f| f.seccomp_listener = gone())),
        ("mount-api", Box::new(move |f| f.mount_api = gone())),
        ("cgroup2", Box::new(|f| (f.cgroup2_mount, f.filesystems) = (None, "nodev\ttmpfs\n".into()))),
        ("bpf-device", Box::new(move |f| f.bpf_device = Probe::Failed("verifier: EINVAL".into()))),
        ("config", Box::new(|f| f.config = Err("bad line 3".into()))),
        ("subuid", Box::new(|f| f.subuid.1 = Some("root:100000:1000\n".into()))),
    ];
    for (check, break_it) in cases {
        let mut f = healthy();
        break_it(&mut f);
        let (l, code) = only_problem(&f);
        assert_eq!((l.check, l.status, l.required), (check, Status::Missing, true), "{l:?}");
        assert_eq!(code, EXIT_MISSING, "{check}");
    }
}

#[test]
fn optional_features_missing_only_warn() {
    let gone = || Probe::Unsupported("EINVAL".into());
    let cases: Vec<(&str, Break, &str)> = vec![
        ("seccomp-wait-killable", Box::new(move |f| f.seccomp_wait_killable = gone()), "restarted"),
        ("seccomp-sync-wakeup", Box::new(move |f| f.seccomp_sync_wakeup = gone()), "longer"),
        ("uevent-netns", Box::new(move |f| f.uevent_netns = gone()), "hotplug"),
        ("loop-control", Box::new(|f| f.loop_control = Probe::Unsupported("no /dev/loop-control".into())), "loop"),
        ("fuse-drivers", Box::new(|f| f.fuse_drivers[0].1 = false), "no fuse2fs (package fuse2fs)"),
        ("kernel", Box::new(|f| f.kernel_release = "5.15.0-91-generic".into()), "older than 6.18"),
        ("kernel", Box::new(|f| f.kernel_release = "weird".into()), "cannot read"),
        ("root", Box::new(|f| f.host_root = Err("you are uid 1000".into())), "uid 1000"),
        ("subuid", Box::new(|f| f.subuid.1 = None), "no /etc/subuid"),
        ("subgid", Box::new(|f| f.subgid.1 = Some("alice:100000:65536\n".into())), "gives root no range"),
        ("cgroup2", Box::new(|f| f.cgroup2_mount = None), "devns mounts its own"),
        ("userns", Box::new(|f| f.unprivileged_userns_clone = Some(0)), "rootless runtimes cannot"),
        ("userns", Box::new(|f| f.apparmor_restrict_userns = Some(1)), "apparmor_restrict"),
        (
            "daemon",
            Box::new(|f| f.daemon = Daemon::NotRunning { socket: "/run/devns/devns.sock".into() }),
            "not running",
        ),
        (
            "daemon",
            Box::new(|f| f.daemon = Daemon::Unreachable { socket: "/s".into(), why: "permission denied".into() }),
            "permission denied",
        ),
    ];
    for (check, break_it, why) in cases {
        let mut f = healthy();
        break_it(&mut f);
        let (l, code) = only_problem(&f);
        assert_eq!((l.check, l.status), (check, Status::Warn), "{l:?}");
        assert!(l.why.contains(why), "{check}: {:?} lacks {why:?}", l.why);
        assert_eq!(code, 0, "{check}");
    }
}

#[test]
fn a_probe_denied_for_lack_of_root_is_a_warning_not_a_missing_feature() {
    let mut f = healthy();
    f.host_root = Err("you are uid 1000".into());
    f.bpf_device = Probe::Denied("EPERM".into());
    f.mount_api = Probe::Denied("EPERM".into());
    let lines = lines(&f);
    for c in ["bpf-device", "mount-api"] {
        assert_eq!(the(&lines, c).status, Status::Warn);
        assert!(the(&lines, c).why.contains("run devns doctor as root"));
    }
    assert_eq!(exit_code(&lines), 0);
}

#[test]
fn without_the_device_policy_cgroups_and_bpf_are_not_needed() {
    let mut f = healthy();
    f.config = Ok(false);
    f.cgroup2_mount = None;
    f.filesystems = String::new();
    f.bpf_device = Probe::Unsupported("ENOSYS".into());
    let lines = lines(&f);
    assert!(lines.iter().all(|l| l.status == Status::Ok), "{lines:?}");
    assert!(!the(&lines, "bpf-device").required);
}

#[test]
fn the_json_shape_is_stable() {
    let mut f = healthy();
    f.ns_id = Probe::Unsupported("NS_GET_ID: ENOTTY".into());
    let v = to_json(&lines(&f));
    assert_eq!(v["ok"], false);
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 20);
    assert_eq!(
        checks[4],
        serde_json::json!({"check": "ns-id", "status": "missing", "required": true, "why": "NS_GET_ID: ENOTTY"})
    );
    for c in checks {
        let keys: Vec<&String> = c.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["check", "required", "status", "why"]);
    }
}

#[test]
fn the_text_is_one_aligned_line_per_check() {
    let text = to_text(&lines(&healthy()));
    assert_eq!(text.lines().count(), 20);
    let col = |l: &str| l.find("works").or_else(|| l.find('/')).unwrap_or(0);
    let first = text.lines().find(|l| l.starts_with("ok      ns-id ")).unwrap();
    let other = text.lines().find(|l| l.starts_with("ok      pidfd-getfd ")).unwrap();
    assert_eq!(col(first), col(other), "{text}");
    assert!(text.lines().all(|l| l == l.trim_end()));
}

#[test]
fn kernel_versions_parse() {
    assert_eq!(kernel_version("6.18.44-fc-v1147"), Some((6, 18)));
    assert_eq!(kernel_version("6.6"), Some((6, 6)));
    assert_eq!(kernel_version("5.10.0-28-amd64"), Some((5, 10)));
    assert_eq!(kernel_version(""), None);
    assert_eq!(kernel_version("linux"), None);
    assert!(kernel_version("6.6").unwrap() < MIN_KERNEL && kernel_version("7.0").unwrap() > MIN_KERNEL);
}
