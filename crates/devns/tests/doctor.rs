//! `devns doctor` on this host, the built binary end to end: every check
//! ok here, with a daemon of the test's own, in text and JSON alike; the
//! answers when something is missing are `devns_core::doctor`'s unit
//! tests. And `devns generate`: completions that their shells parse.

mod common;
use common::*;
use std::process::{Command, Output};

/// Checks this machine cannot pass through no fault of devns: a subid file
/// that gives root no range (devns then allocates from 100000 up). Only
/// these may warn, and only then.
fn may_warn(check: &str) -> bool {
    let root_has_range =
        |f: &str| std::fs::read_to_string(f).is_ok_and(|t| !devns_core::subid::root_ranges(&t).is_empty());
    match check {
        "subuid" => !root_has_range("/etc/subuid"),
        "subgid" => !root_has_range("/etc/subgid"),
        _ => false,
    }
}

fn doctor(env: &Env, json: bool) -> Output {
    let mut c = env.devns();
    c.arg("doctor");
    if json {
        c.arg("--json");
    }
    c.output().expect("devns doctor")
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn every_check_is_ok_on_this_host() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let _daemon = Daemon::start(&env);

    let o = doctor(&env, false);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(text.lines().count(), 20, "{text}");
    for l in text.lines() {
        let (status, rest) = l.split_once(' ').expect("status column");
        let check = rest.trim_start().split(' ').next().unwrap();
        assert!(status == "ok" || (status == "warn" && may_warn(check)), "not ok: {l}\n{text}");
    }
    assert!(text.contains("running at"), "the test's daemon is seen: {text}");

    let o = doctor(&env, true);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["ok"], true);
    let checks = v["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 20);
    for c in checks {
        let name = c["check"].as_str().unwrap();
        assert!(c["status"] == "ok" || (c["status"] == "warn" && may_warn(name)), "{c}");
        assert!(c["required"].is_boolean() && c["why"].is_string(), "{c}");
    }
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn no_daemon_is_a_warning_and_a_bad_config_fails() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let o = doctor(&env, true);
    assert_eq!(o.status.code(), Some(0), "no daemon is not a failure");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let daemon = v["checks"].as_array().unwrap().iter().find(|c| c["check"] == "daemon").unwrap().clone();
    assert_eq!(daemon["status"], "warn");
    assert!(daemon["why"].as_str().unwrap().contains("not running"), "{daemon}");

    std::fs::write(env.config(), "loop_limit = \"many\"\n").unwrap();
    let o = doctor(&env, false);
    assert_eq!(o.status.code(), Some(1), "a config that does not load is a required check missing");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.lines().any(|l| l.starts_with("missing config ")), "{text}");
}

/// Run by another user, the checks that need root are warnings that say
/// so, not missing features.
#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn as_another_user_what_needs_root_only_warns() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_devns"), "doctor"]);
    let o = env.devns_env(&mut c).output().expect("setpriv devns doctor");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.lines().next().is_some_and(|l| l.starts_with("warn    root ")), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("missing")), "{text}");
    for check in ["mount-api", "bpf-device"] {
        let l = text.lines().find(|l| l.split_whitespace().nth(1) == Some(check)).expect(check);
        assert!(l.starts_with("warn") && l.ends_with("(run devns doctor as root)"), "{l}");
    }
}

/// `devns generate completions SHELL`, checked by SHELL's own parser.
fn completions_parse(shell: &str, check: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_devns")).args(["generate", "completions", shell]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    for sub in ["run", "doctor", "generate", "oci"] {
        assert!(text.contains(sub), "{shell} completions lack {sub}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("devns.{shell}"));
    std::fs::write(&file, &text).unwrap();
    let parsed =
        Command::new(check[0]).args(&check[1..]).arg(&file).output().unwrap_or_else(|e| {
            panic!("{} is needed to check {shell} completions (.ci/run installs it): {e}", check[0])
        });
    assert!(parsed.status.success(), "{shell} does not parse them: {}", String::from_utf8_lossy(&parsed.stderr));
}

#[test]
fn bash_completions_parse() {
    completions_parse("bash", &["bash", "-n"]);
}

#[test]
fn zsh_completions_parse() {
    completions_parse("zsh", &["zsh", "-n"]);
}

#[test]
fn fish_completions_parse() {
    completions_parse("fish", &["fish", "--no-execute"]);
}

#[test]
fn man_pages_are_written_for_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_devns")).args(["generate", "man"]).arg(dir.path()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listed = String::from_utf8(o.stdout).unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(listed.lines().count(), names.len(), "each page written is listed");
    for want in ["devns.1", "devns-run.1", "devns-doctor.1", "devns-daemon.1", "devns-oci-runtime.1"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
}
