//! The helper binary the other tests run inside containers
//! (`tests/testbin/`): a role started without its input refuses, clearly
//! and with status 2, instead of doing nothing (no root needed).

use std::process::Command;

const TESTBIN: &str = env!("CARGO_BIN_EXE_devns-testbin");

/// `devns-testbin ARGS` with none of the roles' variables set: its status
/// (`None` when killed) and stderr.
fn refusal(args: &[&str]) -> (Option<i32>, String) {
    let mut c = Command::new(TESTBIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DEVNS_") {
            c.env_remove(k);
        }
    }
    let o = c.args(args).output().expect("spawn devns-testbin");
    assert!(o.stdout.is_empty(), "it did something: {}", String::from_utf8_lossy(&o.stdout));
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Role `role` refuses to run without `var`.
fn needs(role: &str, var: &str) {
    let (code, err) = refusal(&[role]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err, format!("devns-testbin {role}: {var} is not set (the test that runs it sets it)\n"));
}

#[test]
fn without_a_role_it_says_how_it_is_used() {
    for args in [&[][..], &["attack", "bpf"]] {
        let (code, err) = refusal(args);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.starts_with("usage: devns-testbin ROLE (one of attack, bpf, "), "{err}");
    }
}

#[test]
fn an_unknown_role_is_refused() {
    let (code, err) = refusal(&["attack_child"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.starts_with("devns-testbin: unknown role \"attack_child\" (one of attack, "), "{err}");
}

#[test]
fn attack_needs_the_directory_outside_the_root() {
    needs("attack", "DEVNS_ATTACK_OUTSIDE");
}

#[test]
fn bpf_needs_the_policy_s_ids_and_cgroup() {
    needs("bpf", "DEVNS_BPF_CHILD");
}

#[test]
fn loop_ioctls_needs_its_ops() {
    needs("loop-ioctls", "DEVNS_LOOP_OPS");
}

#[test]
fn loop_ops_needs_its_ops() {
    needs("loop-ops", "DEVNS_SEC_OPS");
}

#[test]
fn loop_race_needs_what_to_race_for() {
    needs("loop-race", "DEVNS_RACE");
}

#[test]
fn posix_ipc_needs_the_objects_name() {
    needs("posix-ipc", "DEVNS_IPC_NAME");
}

#[test]
fn signal_storm_needs_its_iterations() {
    needs("signal-storm", "DEVNS_STORM_ITERATIONS");
}

#[test]
fn tiocsti_needs_its_payload() {
    needs("tiocsti", "DEVNS_TIOCSTI");
}
