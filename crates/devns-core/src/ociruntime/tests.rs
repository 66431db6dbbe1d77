use super::*;
use proptest::prelude::*;

fn args(a: &[&str]) -> Vec<OsString> {
    a.iter().map(OsString::from).collect()
}

fn bundle_of(a: &[&str]) -> Option<Option<String>> {
    match invocation(&args(a)) {
        Invocation::Create { bundle } => Some(bundle.map(|b| b.to_str().unwrap().to_owned())),
        Invocation::Other => None,
    }
}

#[test]
fn the_command_is_found_among_the_global_flags() {
    let b = |s: &str| Some(Some(s.to_owned()));
    // podman's calls (runtimes.md).
    assert_eq!(
        bundle_of(&["--log-format=json", "--log", "/l", "create", "--bundle", "/b", "--pid-file", "/p", "id"]),
        b("/b")
    );
    assert_eq!(bundle_of(&["create", "--bundle", "/b", "--pid-file", "/p", "id"]), b("/b"));
    assert_eq!(bundle_of(&["--root", "/r", "--systemd-cgroup", "--debug", "run", "-b", "/x", "id"]), b("/x"));
    assert_eq!(bundle_of(&["--root=/r", "--cgroup-manager", "cgroupfs", "run", "-b=/x", "id"]), b("/x"));
    assert_eq!(
        bundle_of(&["-root", "/r", "--rootless", "true", "--criu", "c", "create", "-bundle", "/y", "id"]),
        b("/y")
    );
    // The bundle after the id, the last one given, and none: the cwd.
    assert_eq!(bundle_of(&["create", "id", "--bundle=/z"]), b("/z"));
    assert_eq!(bundle_of(&["create", "-b", "/1", "id", "-b", "/2"]), b("/2"));
    assert_eq!(bundle_of(&["create", "--pid-file", "--bundle", "id"]), Some(None));
    assert_eq!(bundle_of(&["create", "--console-socket", "/s", "-d", "id"]), Some(None));
    assert_eq!(bundle_of(&["create", "id", "--", "--bundle", "/w"]), Some(None));
    assert_eq!(bundle_of(&["--", "run", "id"]), Some(None));
    // A flag's value is no command.
    assert_eq!(bundle_of(&["--root", "create", "start", "id"]), None);
    assert_eq!(bundle_of(&["--log", "run", "delete", "id"]), None);
    for other in [
        &["start", "id"][..],
        &["delete", "--force", "id"],
        &["kill", "id", "TERM"],
        &["exec", "id", "create"],
        &["--version"],
        &[],
        &["--root"],
        &["state", "run"],
    ] {
        assert_eq!(invocation(&args(other)), Invocation::Other, "{other:?}");
    }
}

fn edit_params() -> Edit<'static> {
    Edit::DEFAULT
}

fn config(annotation: Option<&str>) -> Value {
    let mut c = json!({
        "ociVersion": "1.0.2-dev",
        "process": {"args": ["sh"]},
        "root": {"path": "rootfs"},
        "hooks": {"createRuntime": [{"path": "/other", "args": ["other"]}]},
        "linux": {
            "devices": [
                {"path": "/dev/loop3", "type": "b", "major": 7, "minor": 3},
                {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229},
                {"path": "/dev/fifo", "type": "p"},
                {"path": "/srv/kept", "type": "c", "major": 1, "minor": 3},
            ],
            "resources": {"devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "b", "major": 7, "minor": 3, "access": "rwm"}], "pids": {"limit": 9}},
        },
    });
    if let Some(a) = annotation {
        c["annotations"] = json!({ ENABLE: a, "other": "x" });
    }
    c
}

fn edited(c: &Value, e: &Edit) -> Option<Value> {
    edit(&serde_json::to_vec(c).unwrap(), e).unwrap().map(|b| serde_json::from_slice(&b).unwrap())
}

#[test]
fn a_container_that_asks_gets_hooks_rules_and_the_view_s_devices() {
    let c = edited(&config(Some("true")), &edit_params()).unwrap();
    let env = [
        "DEVNS_SOCKET=/run/devns/devns.sock",
        "DEVNS_STATE_DIR=/run/devns/state",
        "DEVNS_CONFIG=/etc/devns/config.toml",
    ];
    let hook = |s: &str| json!({"path": "/usr/bin/devns", "args": ["devns", "hook", s], "env": env});
    // The container's own hooks stay; no createRuntime hook of devns's.
    assert_eq!(c["hooks"]["createRuntime"], json!([{"path": "/other", "args": ["other"]}]));
    assert_eq!(c["hooks"]["poststop"], json!([hook("poststop")]));
    // No seccomp of its own: the allow-all one with devns's rules.
    assert_eq!(c["linux"]["seccomp"], ociprofile::build(None, "/run/devns/seccomp.sock", None).unwrap());
    assert_eq!(c["linux"]["devices"], json!([{"path": "/srv/kept", "type": "c", "major": 1, "minor": 3}]));
    assert_eq!(c["annotations"][DEVICES], "b:7:3,c:10:229");
    assert_eq!(c["linux"]["resources"]["devices"], json!([{"allow": true, "access": "rwm"}]));
    assert_eq!(c["linux"]["resources"]["pids"], json!({"limit": 9}));
    // Everything else as it was.
    for k in ["ociVersion", "process", "root"] {
        assert_eq!(c[k], config(None)[k]);
    }
    assert_eq!(c["annotations"]["other"], "x");
}

#[test]
fn the_container_s_own_seccomp_is_the_base_and_an_edit_twice_is_one() {
    let mut c = config(Some("true"));
    c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": [{"names": ["read", "ioctl"], "action": "SCMP_ACT_ALLOW"}]});
    c["annotations"][DEVICES] = json!("loop7,b:7:3");
    let once = edited(&c, &edit_params()).unwrap();
    assert_eq!(
        once["linux"]["seccomp"],
        ociprofile::build(Some(c["linux"]["seccomp"].clone()), "/run/devns/seccomp.sock", None).unwrap()
    );
    assert_eq!(once["annotations"][DEVICES], "loop7,b:7:3,c:10:229");
    assert_eq!(edited(&once, &edit_params()).unwrap(), once);
}

#[test]
fn without_devns_s_device_program_the_runtime_s_device_rules_stay() {
    let c = edited(&config(Some("true")), &Edit { device_policy: false, ..edit_params() }).unwrap();
    assert_eq!(c["linux"]["resources"]["devices"], config(None)["linux"]["resources"]["devices"]);
}

#[test]
fn only_the_exact_annotation_counts() {
    for a in [None, Some("TRUE"), Some("true "), Some(" true"), Some("True"), Some("1"), Some("yes"), Some("")] {
        let bytes = serde_json::to_vec(&config(a)).unwrap();
        assert_eq!(edit(&bytes, &edit_params()), Ok(None), "{a:?}");
    }
    // Not a string, or not in annotations.
    for c in [
        json!({"annotations": {ENABLE: true}}),
        json!({ENABLE: "true"}),
        json!({"annotations": [ENABLE]}),
        json!({"process": {"env": ["devns.io/enable=true"]}}),
    ] {
        assert_eq!(edit(&serde_json::to_vec(&c).unwrap(), &edit_params()), Ok(None), "{c}");
    }
    // A key given twice: the last counts, as for runc's and crun's parsers.
    let twice = br#"{"annotations":{"devns.io/enable":"true","devns.io/enable":"false"}}"#;
    assert_eq!(edit(twice, &edit_params()), Ok(None));
    let twice = br#"{"annotations":{"devns.io/enable":"false","devns.io/enable":"true"}}"#;
    assert!(edit(twice, &edit_params()).unwrap().is_some());
}

#[test]
fn with_all_every_container_asks() {
    let all = Edit { all: true, ..edit_params() };
    for a in [None, Some("false"), Some("TRUE ")] {
        let c = edited(&config(a), &all).unwrap();
        let asked = edited(&config(Some("true")), &edit_params()).unwrap();
        assert_eq!((&c["linux"], &c["hooks"]), (&asked["linux"], &asked["hooks"]), "{a:?}");
        // The ask is written down: the hooks serve a container by its
        // state's annotations, which the runtime takes from the config.
        assert!(asks_for_devns(&c), "{a:?}: {}", c["annotations"]);
        if a.is_some() {
            assert_eq!(c["annotations"]["other"], "x", "{a:?}: its other annotations kept");
        }
    }
    assert_eq!(edit(b"[]", &all), Ok(None));
}

#[test]
fn malformed_and_huge_files_are_not_edited() {
    for b in
        [&b""[..], b"{", b"[]", b"null", b"\"true\"", b"{\"annotations\":{\"devns.io/enable\":\"true\"}", b"\xff\xfe"]
    {
        assert_eq!(edit(b, &edit_params()), Ok(None), "{}", String::from_utf8_lossy(b));
    }
    let huge = vec![b' '; MAX_CONFIG_BYTES + 1];
    assert_eq!(edit(&huge, &edit_params()), Err(EditError::TooLarge(MAX_CONFIG_BYTES + 1)));
    // Asking for devns with parts of the wrong shape: refused (the start fails).
    let bad = [
        (json!({"annotations": {ENABLE: "true"}, "hooks": []}), "hooks is not an object"),
        (json!({"annotations": {ENABLE: "true"}, "linux": 1}), "linux is not an object"),
        (
            json!({"annotations": {ENABLE: "true"}, "linux": {"seccomp": {"defaultAction": 3}}}),
            "linux.seccomp: seccomp profile is not valid",
        ),
        (json!({"annotations": {ENABLE: "true"}, "linux": {"devices": {}}}), "linux.devices"),
        (
            json!({"annotations": {ENABLE: "true"}, "linux": {"devices": [{"path": "/dev/x", "type": "c"}]}}),
            "bad linux.devices entry",
        ),
        (json!({"annotations": {ENABLE: "true"}, "linux": {"devices": [{"type": "c"}]}}), "bad linux.devices entry"),
        (json!({"annotations": {ENABLE: "true"}, "linux": {"resources": []}}), "resources is not an object"),
    ];
    for (c, want) in bad {
        let e = edit(&serde_json::to_vec(&c).unwrap(), &edit_params()).unwrap_err().to_string();
        assert!(e.starts_with("config.json") && e.contains(want), "{c}: {e}");
    }
}

proptest! {
    #[test]
    fn the_finder_never_panics_and_only_create_and_run_edit(a in proptest::collection::vec("(-{0,2}[a-z=/-]{0,8}|create|run|--bundle|-b)", 0..8)) {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        if let Invocation::Create { .. } = invocation(&args(&a)) {
            prop_assert!(a.contains(&"create") || a.contains(&"run"));
        }
    }

    #[test]
    fn a_file_that_does_not_ask_is_never_edited(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if !String::from_utf8_lossy(&bytes).contains("\"true\"") {
            prop_assert_eq!(edit(&bytes, &edit_params()), Ok(None));
        }
    }
}
