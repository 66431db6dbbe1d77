use super::*;
use crate::seccomp::{S_IFBLK, S_IFMT, TRAPPED_IOCTLS};
use proptest::prelude::*;

const PODMAN: &[u8] = include_bytes!("../../tests/corpus/seccomp/podman-4.3.1-seccomp.json");

fn rules(p: &Value) -> &Vec<Value> {
    p["syscalls"].as_array().unwrap()
}

fn names(r: &Value) -> Vec<&str> {
    r["names"].as_array().map(|n| n.iter().map(|n| n.as_str().unwrap()).collect()).unwrap_or_default()
}

/// The rules that name `call`, as (action, args).
fn of<'a>(p: &'a Value, call: &str) -> Vec<(&'a str, &'a Value)> {
    rules(p).iter().filter(|r| names(r).contains(&call)).map(|r| (r["action"].as_str().unwrap(), &r["args"])).collect()
}

/// Whether `call` with `args` matches one of `p`'s NOTIFY rules (every
/// condition of the rules devns writes is a `SCMP_CMP_MASKED_EQ`, which
/// libseccomp compares on all 64 bits: `arg & mask == value`).
fn traps(p: &Value, call: &str, args: &[u64]) -> bool {
    rules(p).iter().filter(|r| r["action"] == NOTIFY && names(r).contains(&call)).any(|r| {
        r["args"].as_array().unwrap().iter().all(|a| {
            assert_eq!(a["op"], "SCMP_CMP_MASKED_EQ");
            let i = a["index"].as_u64().unwrap() as usize;
            args.get(i).copied().unwrap_or(0) & a["value"].as_u64().unwrap() == a["valueTwo"].as_u64().unwrap()
        })
    })
}

#[test]
fn the_built_in_base_allows_all_and_traps_exactly_devns_s_calls() {
    let p = build(None, "/run/devns/seccomp.sock", None).unwrap();
    assert_eq!(p["defaultAction"], "SCMP_ACT_ALLOW");
    assert_eq!(p["listenerPath"], "/run/devns/seccomp.sock");
    assert!(p.get("listenerMetadata").is_none());
    assert_eq!(rules(&p), &notify_rules());
    assert!(rules(&p).iter().all(|r| r["action"] == NOTIFY));
    // mknod and mknodat: the device kinds only, by the mode argument;
    // ioctl: the five requests (and 0x4C83), on their low 32 bits.
    let mode = |m: u32| u64::from(m) | (0xdead_u64 << 32);
    for kind in 0..16u32 {
        let m = (kind << 12) | 0o644;
        let device = m & S_IFMT == S_IFCHR || m & S_IFMT == S_IFBLK;
        assert_eq!(traps(&p, "mknod", &[0, mode(m)]), device, "mknod {m:o}");
        assert_eq!(traps(&p, "mknodat", &[0, 0, mode(m)]), device, "mknodat {m:o}");
        assert!(!traps(&p, "mknodat", &[0, mode(m), 0]), "mknodat's mode is its third");
    }
    for cmd in (0..0x2000u32).chain(0x4C00..0x4D00).chain([0x5401, 0xC004_4C80, u32::MAX]) {
        let trapped = TRAPPED_IOCTLS.contains(&cmd) || cmd == 0x4C83;
        for hi in [0, 1u64 << 32] {
            assert_eq!(traps(&p, "ioctl", &[3, hi | u64::from(cmd)]), trapped, "ioctl {cmd:#x}");
        }
    }
    for call in WHOLE.iter().chain(&EXEC) {
        assert_eq!(of(&p, call), [(NOTIFY, &json!([]))], "{call}");
    }
    let p = build(None, "/l", Some("devns")).unwrap();
    assert_eq!(p["listenerMetadata"], "devns");
}

#[test]
fn podman_s_default_keeps_its_rules_and_devns_s_calls_win() {
    let base = parse_base(PODMAN).unwrap().unwrap();
    let p = build(Some(base.clone()), "/l", None).unwrap();
    // Everything of the base but its rules is as it was.
    for (k, v) in base.as_object().unwrap() {
        if k != "syscalls" {
            assert_eq!(&p[k], v, "{k}");
        }
    }
    assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
    // podman allows ioctl, mknod and mknodat unconditionally: still for
    // everything devns does not serve, on an always-true arg0 condition.
    for call in CONDITIONAL {
        let had = of(&base, call);
        assert_eq!(had, [("SCMP_ACT_ALLOW", &json!([]))], "{call}");
        let now = of(&p, call);
        assert_eq!(now[0], ("SCMP_ACT_ALLOW", &json!([arg0_any()])), "{call}");
        assert!(now[1..].iter().all(|(a, _)| *a == NOTIFY), "{call}");
    }
    // mount is allowed there only with CAP_SYS_ADMIN: now trapped for all.
    assert!(of(&base, "mount").iter().all(|(a, _)| *a == "SCMP_ACT_ALLOW"));
    assert_eq!(of(&p, "mount"), [(NOTIFY, &json!([]))]);
    // Every other call's rules: the same, in the same order.
    let others = |p: &Value| -> Vec<Value> {
        rules(p)
            .iter()
            .filter_map(|r| {
                let n: Vec<&str> = names(r).into_iter().filter(|n| !trapped(n)).collect();
                (!n.is_empty()).then(|| json!([n, r["action"], r["args"], r["includes"], r["excludes"]]))
            })
            .collect()
    };
    assert_eq!(others(&p), others(&base));
    // execve and execveat: allowed there, trapped (and let through) now.
    for call in EXEC {
        assert_eq!(of(&base, call).iter().map(|(a, _)| *a).collect::<Vec<_>>(), ["SCMP_ACT_ALLOW"], "{call}");
        assert_eq!(of(&p, call), [(NOTIFY, &json!([]))], "{call}");
    }
}

/// Whether devns's rules trap `call` (on a condition or whole).
fn trapped(call: &str) -> bool {
    CONDITIONAL.contains(&call) || WHOLE.contains(&call) || EXEC.contains(&call)
}

#[test]
fn a_base_that_decides_execve_otherwise_than_allow_is_refused() {
    for (call, action) in [("execve", "SCMP_ACT_ERRNO"), ("execveat", "SCMP_ACT_KILL"), ("execveat", "SCMP_ACT_LOG")] {
        let base = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["open", call], "action": action},
        ]});
        let e = build(Some(base), "/l", None).unwrap_err().to_string();
        assert!(e.contains(&format!("syscalls[1]: {call:?} is decided by the base ({action})")), "{e}");
        assert!(e.contains("lets every"), "{e}");
    }
    // Allowed, with a condition or not: devns's rule takes its place.
    let base = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["execve", "read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["execveat"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 4, "value": 0, "op": "SCMP_CMP_EQ"}]},
    ]});
    let p = build(Some(base), "/l", None).unwrap();
    assert_eq!(rules(&p)[0], json!({"names": ["read"], "action": "SCMP_ACT_ALLOW"}));
    assert_eq!(of(&p, "execve"), [(NOTIFY, &json!([]))]);
    assert_eq!(of(&p, "execveat"), [(NOTIFY, &json!([]))]);
}

#[test]
fn a_config_json_gives_its_linux_seccomp() {
    let base = br#"{"ociVersion":"1.0.2","linux":{"seccomp":{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}}}"#;
    let b = parse_base(base).unwrap().unwrap();
    assert_eq!(b["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(parse_base(br#"{"linux":{}}"#).unwrap(), None);
    assert_eq!(parse_base(br#"{"linux":{"seccomp":null}}"#).unwrap(), None);
}

#[test]
fn bad_bases_are_refused_with_the_reason() {
    let bad: &[(&[u8], &str)] = &[
        (b"", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b"{\"defaultAction\":\"SCMP_ACT_ALLOW\"", "not valid JSON"),
        (b"{\"syscalls\":[]}", "neither a profile"),
        (b"{\"linux\":3}", "neither a profile"),
    ];
    for (b, want) in bad {
        let e = parse_base(b).unwrap_err().to_string();
        assert!(e.contains(want), "{}: {e}", String::from_utf8_lossy(b));
    }
    assert_eq!(parse_base(&vec![b' '; MAX_PROFILE_BYTES + 1]), Err(ProfileError::TooLarge(MAX_PROFILE_BYTES + 1)));
    let shapes = [
        (json!({"defaultAction": 1}), "defaultAction is missing"),
        (json!({"syscalls": []}), "defaultAction is missing"),
        (json!({"defaultAction": NOTIFY}), "every call to devns"),
        (json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}), "syscalls is not an array"),
        (json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [1]}), "syscalls[0]: not an object"),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [1], "action": "SCMP_ACT_ALLOW"}]}),
            "not a string",
        ),
        (json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"]}]}), "action is missing"),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": 3}]}),
            "args is not an array",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mount", "read"], "action": NOTIFY}]}),
            "\"read\" goes to a listener",
        ),
    ];
    for (b, want) in shapes {
        let e = build(Some(b.clone()), "/l", None).unwrap_err().to_string();
        assert!(e.starts_with("seccomp profile is not valid: ") && e.contains(want), "{b}: {e}");
    }
}

#[test]
fn a_base_rule_of_a_served_call_keeps_its_conditions_and_its_other_names() {
    let args = json!([{"index": 1, "value": 0x5401, "op": "SCMP_CMP_EQ"}]);
    let base = json!({"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/other", "listenerMetadata": "m", "syscalls": [
        {"names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "args": args},
        {"name": "mknod", "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "comment": "x"},
        {"names": ["mount", "umount2", "fsopen"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"action": "SCMP_ACT_LOG"},
    ]});
    let p = build(Some(base), "/l", None).unwrap();
    // The listener is devns's; the metadata stays when none is given.
    assert_eq!((&p["listenerPath"], &p["listenerMetadata"]), (&json!("/l"), &json!("m")));
    let r = rules(&p);
    assert_eq!(r[0], json!({"names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "args": args}));
    assert_eq!(
        r[1],
        json!({"names": ["mknod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "comment": "x", "args": [arg0_any()]})
    );
    assert_eq!(
        r[2],
        json!({"names": ["umount2"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}})
    );
    assert_eq!(r[3], json!({"action": "SCMP_ACT_LOG"}));
    assert_eq!(r[4..], notify_rules()[..]);
}

const NAMES: [&str; 9] = ["mknod", "mknodat", "ioctl", "mount", "fsopen", "execve", "read", "chmod", "umount2"];
const ACTIONS: [&str; 4] = ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_LOG", NOTIFY];

fn rule() -> impl Strategy<Value = Value> {
    (proptest::sample::subsequence(NAMES.to_vec(), 0..4), 0..ACTIONS.len(), any::<bool>(), any::<u8>()).prop_map(
        |(names, action, args, n)| {
            let mut r = json!({"names": names, "action": ACTIONS[action]});
            if args {
                r["args"] = json!([{"index": n % 6, "value": n, "op": "SCMP_CMP_EQ"}]);
            }
            r
        },
    )
}

proptest! {
    #[test]
    fn devns_s_rules_win_and_the_rest_is_the_base_s(
        base in proptest::collection::vec(rule(), 0..8),
        default in 0..3usize,
    ) {
        let base = json!({"defaultAction": ACTIONS[default], "architectures": ["SCMP_ARCH_X86_64"], "syscalls": base});
        let unserved_notify = rules(&base).iter()
            .any(|r| r["action"] == NOTIFY && names(r).iter().any(|n| !trapped(n)));
        let exec_decided = rules(&base).iter()
            .any(|r| r["action"] != NOTIFY && r["action"] != "SCMP_ACT_ALLOW" && names(r).iter().any(|n| EXEC.contains(n)));
        let built = build(Some(base.clone()), "/l", None);
        prop_assert_eq!(built.is_err(), unserved_notify || exec_decided);
        let Ok(p) = built else { return Ok(()) };
        prop_assert_eq!(&p["architectures"], &base["architectures"]);
        prop_assert_eq!(&p["defaultAction"], &base["defaultAction"]);
        prop_assert_eq!(&p["listenerPath"], "/l");
        // devns's rules, last, and no other NOTIFY.
        let r = rules(&p);
        let n = notify_rules().len();
        prop_assert_eq!(&r[r.len() - n..], &notify_rules()[..]);
        prop_assert!(r[..r.len() - n].iter().all(|r| r["action"] != NOTIFY));
        for x in &r[..r.len() - n] {
            let xs = names(x);
            // Trapped whole: no rule of the base's left.
            prop_assert!(!xs.iter().any(|c| WHOLE.contains(c) || EXEC.contains(c)));
            // Trapped on a condition: alone in its rule, and conditional.
            if xs.iter().any(|c| CONDITIONAL.contains(c)) {
                prop_assert_eq!(xs.len(), 1);
                prop_assert!(!x["args"].as_array().unwrap().is_empty());
            }
        }
        // Every other call: the same rules in the same order.
        let others = |p: &Value| -> Vec<(String, Value, Value)> {
            rules(p).iter().flat_map(|r| names(r).into_iter()
                .filter(|c| !trapped(c))
                .map(|c| (c.to_owned(), r["action"].clone(), r["args"].clone())).collect::<Vec<_>>()).collect()
        };
        prop_assert_eq!(others(&p), others(&base));
        // The conditional calls keep every non-NOTIFY action the base had.
        for c in CONDITIONAL {
            let had: Vec<Value> = rules(&base).iter().filter(|r| r["action"] != NOTIFY && names(r).contains(&c)).map(|r| r["action"].clone()).collect();
            let now: Vec<Value> = rules(&p).iter().filter(|r| r["action"] != NOTIFY && names(r).contains(&c)).map(|r| r["action"].clone()).collect();
            prop_assert_eq!(had, now);
        }
        // Building again changes nothing: the wrapper may meet its own work.
        prop_assert_eq!(build(Some(p.clone()), "/l", None).unwrap(), p);
    }

    #[test]
    fn no_input_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(b) = parse_base(&bytes) {
            let _ = build(b, "/l", None);
        }
    }
}
