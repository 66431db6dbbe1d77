//! Bounded fuzzing of every parser of untrusted input, run with the test
//! suite (so in CI): each target draws its inputs from structure-aware
//! generation and from mutations of a corpus of real inputs
//! (`tests/corpus/`: uevents captured on a host, runc's and crun's
//! messages, `/proc/PID/status` and mountinfo; this process's own are read
//! too), for at most `DEVNS_FUZZ_CASES` executions (default 20,000) and
//! `DEVNS_FUZZ_SECS` seconds (default 3). A panic or a broken property is
//! a failing test, with the smallest input proptest finds. The properties
//! are in `fuzz/targets.rs`, shared with the cargo-fuzz targets.

#[path = "fuzz/targets.rs"]
mod targets;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use std::path::Path;
use std::time::{Duration, Instant};

fn env_or(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `target` on inputs from `inputs` until the case count or the time
/// cap is reached, and prints what it ran. A failing input is shrunk (as
/// proptest does: simplified while it still fails) and reported.
fn fuzz(name: &str, inputs: impl Strategy<Value = Vec<u8>>, target: fn(&[u8])) {
    let cases = env_or("DEVNS_FUZZ_CASES", 20_000);
    let cap = Duration::from_secs(env_or("DEVNS_FUZZ_SECS", 3));
    let mut runner = TestRunner::new(Config { failure_persistence: None, ..Config::default() });
    // A failing input's panic message is kept, not printed, until the
    // smallest is known.
    static LAST: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| *LAST.lock().unwrap_or_else(|e| e.into_inner()) = info.to_string()));
    let fails = |data: &[u8]| std::panic::catch_unwind(|| target(data)).is_err();
    let start = Instant::now();
    let mut runs = 0u64;
    while runs < cases && start.elapsed() < cap {
        let mut tree = inputs.new_tree(&mut runner).expect("an input");
        runs += 1;
        if !fails(&tree.current()) {
            continue;
        }
        let mut smallest = tree.current();
        let shrink_until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < shrink_until {
            if fails(&tree.current()) {
                smallest = tree.current();
                if !tree.simplify() {
                    break;
                }
            } else if !tree.complicate() {
                break;
            }
        }
        let why = if fails(&smallest) { LAST.lock().unwrap_or_else(|e| e.into_inner()).clone() } else { String::new() };
        std::panic::set_hook(quiet);
        panic!(
            "fuzz {name}: crash or broken property after {runs} executions: {why}\nsmallest input found: {:?}",
            String::from_utf8_lossy(&smallest)
        );
    }
    std::panic::set_hook(quiet);
    eprintln!("fuzz {name}: {runs} executions in {:.1} s", start.elapsed().as_secs_f64());
}

/// The corpus files of `kind`, plus `extra`.
fn corpus(kind: &str, extra: &[&str]) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(kind);
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("corpus").flatten().map(|e| e.path()).collect();
    files.sort();
    let mut out: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).expect("corpus file")).collect();
    out.extend(extra.iter().filter_map(|f| std::fs::read(f).ok()));
    assert!(!out.is_empty(), "no corpus for {kind}");
    out
}

/// One edit of a seed.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    /// Copies a range of the input over another place.
    Copy(usize, usize, usize),
}

fn edit(tokens: &'static [&'static [u8]]) -> impl Strategy<Value = Edit> {
    let token = prop_oneof![
        proptest::sample::select(tokens).prop_map(<[u8]>::to_vec),
        proptest::collection::vec(any::<u8>(), 1..8),
    ];
    prop_oneof![
        (any::<usize>(), 0..8u8).prop_map(|(p, b)| Edit::Flip(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Set(p, b)),
        (any::<usize>(), token).prop_map(|(p, t)| Edit::Insert(p, t)),
        (any::<usize>(), 1..64usize).prop_map(|(p, n)| Edit::Delete(p, n)),
        (any::<usize>(), any::<usize>(), 1..64usize).prop_map(|(a, b, n)| Edit::Copy(a, b, n)),
    ]
}

fn apply(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = |p: usize, v: &Vec<u8>| if v.is_empty() { 0 } else { p % (v.len() + 1) };
        match e {
            Edit::Flip(p, bit) if !v.is_empty() => {
                let i = p % v.len();
                v[i] ^= 1 << bit;
            }
            Edit::Set(p, b) if !v.is_empty() => {
                let i = p % v.len();
                v[i] = *b;
            }
            Edit::Insert(p, t) => {
                let i = at(*p, &v);
                v.splice(i..i, t.iter().copied());
            }
            Edit::Delete(p, n) => {
                let i = at(*p, &v);
                let end = (i + n).min(v.len());
                v.drain(i..end);
            }
            Edit::Copy(a, b, n) if !v.is_empty() => {
                let (from, to) = (a % v.len(), b % v.len());
                let piece: Vec<u8> = v[from..(from + n).min(v.len())].to_vec();
                let end = (to + piece.len()).min(v.len());
                v.splice(to..end, piece);
            }
            _ => {}
        }
    }
    v
}

/// A seed of `seeds`, mutated by 0 to 16 edits.
fn mutated(seeds: Vec<Vec<u8>>, tokens: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
    (proptest::sample::select(seeds), proptest::collection::vec(edit(tokens), 0..16)).prop_map(|(s, e)| apply(s, &e))
}

/// Generated and mutated inputs, and now and then plain random bytes.
fn inputs(
    generated: impl Strategy<Value = Vec<u8>> + 'static,
    seeds: Vec<Vec<u8>>,
    tokens: &'static [&'static [u8]],
) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => generated.prop_flat_map(move |g| {
            proptest::collection::vec(edit(tokens), 0..3).prop_map(move |e| apply(g.clone(), &e))
        }),
        4 => mutated(seeds, tokens),
        1 => proptest::collection::vec(any::<u8>(), 0..512),
    ]
}

const JSON_TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e309",
    b"18446744073709551616",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"\"v\":1,",
    b"\"op\":",
    b"\xff",
    b"\n",
];

// ---- the API request line

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof!["[a-z0-9:/._-]{0,20}", ".{0,12}", Just("pid:1".to_owned()), Just("id:4026531837".to_owned())]
            .prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn api_line() -> impl Strategy<Value = Vec<u8>> {
    const OPS: &[&str] =
        &["ls", "ns-ls", "view", "assign", "release", "global", "attach", "events", "listen", "run", "x"];
    const FIELDS: &[&str] = &["ns", "device", "to", "on", "pid", "name", "at", "devices", "v", "op", "extra"];
    let v = prop_oneof![4 => Just(serde_json::json!(1)), 1 => json_value()];
    let fields = proptest::collection::vec((proptest::sample::select(FIELDS), json_value()), 0..5);
    (v, proptest::sample::select(OPS), fields, any::<bool>()).prop_map(|(v, op, fields, dup)| {
        // Written by hand, so that a key may come twice.
        let mut parts = vec![format!("\"v\":{v}"), format!("\"op\":\"{op}\"")];
        parts.extend(fields.iter().map(|(k, v)| format!("\"{k}\":{v}")));
        if dup && let Some(last) = parts.last().cloned() {
            parts.push(last);
        }
        format!("{{{}}}", parts.join(",")).into_bytes()
    })
}

#[test]
fn fuzz_api_request_line() {
    let seeds =
        corpus("api", &[]).into_iter().flat_map(|f| f.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect::<Vec<_>>());
    fuzz(
        "api request line",
        inputs(api_line(), seeds.filter(|l| !l.is_empty()).collect(), JSON_TOKENS),
        targets::api_request,
    );
}

// ---- the config file

fn config_text() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        Just("null".to_owned()),
        Just("net/tun".to_owned()),
        Just("loop-control".to_owned()),
        Just("../mem".to_owned()),
        "[a-z/.]{0,12}",
    ];
    let value = prop_oneof![
        proptest::collection::vec(name, 0..4).prop_map(|v| format!("{v:?}")),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "\"[^\"\\\\]{0,8}\"",
        Just("{ a = 1 }".to_owned()),
        Just("[[1], \"x\"]".to_owned()),
    ];
    let key = prop_oneof![Just("global"), Just("loop_limit"), Just("device_policy"), Just("globl"), Just("[table]")];
    proptest::collection::vec((key, value, prop_oneof![Just(""), Just("# note"), Just("\n")]), 0..5)
        .prop_map(|lines| lines.iter().map(|(k, v, c)| format!("{k} = {v} {c}\n")).collect::<String>().into_bytes())
}

#[test]
fn fuzz_config_file() {
    const TOKENS: &[&[u8]] =
        &[b"=", b"\"", b"[", b"]", b"\n", b"#", b"'''", b"\"\"\"", b"global", b"loop_limit", b"\\u0000", b"-"];
    fuzz("config file", inputs(config_text(), corpus("config", &[]), TOKENS), targets::config);
}

// ---- uevents

fn uevent_message() -> impl Strategy<Value = Vec<u8>> {
    let action = prop_oneof![Just("add"), Just("remove"), Just("change"), Just("move"), Just("bind"), Just("")];
    let devpath = prop_oneof![
        Just("/devices/virtual/block/loop7".to_owned()),
        Just("/devices/virtual/block/loop7/loop7p1".to_owned()),
        Just("/devices/virtual/vc/vcs3".to_owned()),
        Just("/devices/../etc".to_owned()),
        "/devices(/[a-z0-9.]{1,8}){0,4}",
        "[a-z/]{0,12}",
    ];
    let subsystem = prop_oneof![Just("block"), Just("vc"), Just("mem"), Just("misc"), Just("")];
    let num = prop_oneof![
        (0u32..300).prop_map(|n| n.to_string()),
        Just("-1".to_owned()),
        Just("4294967296".to_owned()),
        "[0-9a-z+]{0,6}"
    ];
    let devname = prop_oneof![
        Just("loop7".to_owned()),
        Just("loop7p1".to_owned()),
        Just("net/tun".to_owned()),
        Just("../x".to_owned()),
        Just("".to_owned()),
        "[a-z/.]{1,10}"
    ];
    let extra = proptest::collection::vec(
        (
            prop_oneof![
                Just("DEVTYPE"),
                Just("DISKSEQ"),
                Just("DEVMODE"),
                Just("PARTN"),
                Just("SEQNUM"),
                Just("ACTION"),
                Just("DEVNAME"),
                Just("MAJOR")
            ],
            prop_oneof![
                Just("disk".to_owned()),
                Just("partition".to_owned()),
                Just("0666".to_owned()),
                Just("99999".to_owned()),
                num.clone()
            ],
        ),
        0..4,
    );
    (action, devpath, subsystem, num.clone(), num, devname, extra, any::<bool>()).prop_map(
        |(action, devpath, subsystem, major, minor, devname, extra, libudev)| {
            let mut fields = vec![
                format!("ACTION={action}"),
                format!("DEVPATH={devpath}"),
                format!("SUBSYSTEM={subsystem}"),
                format!("MAJOR={major}"),
                format!("MINOR={minor}"),
                format!("DEVNAME={devname}"),
            ];
            fields.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
            let header = if libudev { "libudev".to_owned() } else { format!("{action}@{devpath}") };
            let mut out = Vec::new();
            for f in std::iter::once(header).chain(fields) {
                out.extend_from_slice(f.as_bytes());
                out.push(0);
            }
            out
        },
    )
}

#[test]
fn fuzz_uevent_messages() {
    const TOKENS: &[&[u8]] =
        &[b"\0", b"=", b"@", b"/", b"..", b"DEVNAME=", b"MAJOR=", b"DISKSEQ=", b"DEVTYPE=partition\0", b"\n", b"\xff"];
    fuzz("uevent", inputs(uevent_message(), corpus("uevent", &[]), TOKENS), targets::uevent);
}

// ---- /proc/PID/status

fn status_text() -> impl Strategy<Value = Vec<u8>> {
    let id = prop_oneof![
        any::<u32>().prop_map(|n| n.to_string()),
        Just("4294967296".to_owned()),
        Just("-1".to_owned()),
        "[0-9a-f ]{0,6}"
    ];
    let ids = proptest::collection::vec(id, 0..6).prop_map(|v| v.join("\t"));
    let key = prop_oneof![
        Just("Uid:"),
        Just("Gid:"),
        Just("Groups:"),
        Just("Umask:"),
        Just("CapEff:"),
        Just("NSpid:"),
        Just("NStgid:"),
        Just("Name:"),
        Just("CapPrm:"),
        Just("State:"),
    ];
    proptest::collection::vec((key, ids), 0..12)
        .prop_map(|lines| lines.iter().map(|(k, v)| format!("{k}\t{v}\n")).collect::<String>().into_bytes())
}

#[test]
fn fuzz_proc_status() {
    const TOKENS: &[&[u8]] =
        &[b"\t", b" ", b"\n", b"Uid:", b"Gid:", b"CapEff:\t", b"NSpid:\t1\t2", b"Umask:\t0777", b"ffffffffffffffffff"];
    let mine = ["/proc/self/status", "/proc/1/status", "/proc/thread-self/status"];
    fuzz("/proc/PID/status", inputs(status_text(), corpus("status", &mine), TOKENS), targets::status);
}

// ---- mountinfo

fn mountinfo_text() -> impl Strategy<Value = Vec<u8>> {
    let path = proptest::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 1..24)
        .prop_map(|p| devns_core::mountinfo::escape(&[b"/".as_slice(), &p].concat()));
    let word = "[a-z0-9:=,]{0,10}";
    let line = (
        any::<u32>(),
        any::<u32>(),
        0u32..300,
        0u32..300,
        path.clone(),
        path,
        word,
        proptest::collection::vec("(shared|master):[0-9]{1,3}", 0..3),
        "[a-z0-9]{1,8}",
        word,
        word,
    );
    proptest::collection::vec(line, 1..6).prop_map(|lines| {
        let mut out = Vec::new();
        for (id, parent, major, minor, root, mp, opts, optional, fstype, source, sup) in lines {
            out.extend_from_slice(format!("{id} {parent} {major}:{minor} ").as_bytes());
            out.extend_from_slice(&root);
            out.push(b' ');
            out.extend_from_slice(&mp);
            let mut rest = format!(" {opts}");
            for o in optional {
                rest.push(' ');
                rest.push_str(&o);
            }
            rest.push_str(&format!(" - {fstype} {source} {sup}\n"));
            out.extend_from_slice(rest.as_bytes());
        }
        out
    })
}

#[test]
fn fuzz_mountinfo() {
    const TOKENS: &[&[u8]] = &[b" ", b" - ", b"\\040", b"\\", b"\\777", b"\n", b":", b"shared:1 "];
    let mine = ["/proc/self/mountinfo", "/proc/1/mountinfo"];
    fuzz("mountinfo", inputs(mountinfo_text(), corpus("mountinfo", &mine), TOKENS), targets::mountinfo);
}

#[test]
fn generated_mountinfo_reads_back_exactly() {
    // The generator's lines are well formed: every one parses.
    let mut runner = TestRunner::new(Config { cases: 500, failure_persistence: None, ..Config::default() });
    runner
        .run(&mountinfo_text(), |text| {
            prop_assert!(devns_core::mountinfo::parse(&text).all(|r| r.is_ok()));
            Ok(())
        })
        .unwrap();
}

// ---- the runtime-spec seccomp agent message

fn process_state() -> impl Strategy<Value = Vec<u8>> {
    use devns_core::oci::{ProcessState, State};
    let text = prop_oneof![Just("1.0.2-dev".to_owned()), Just("0.2.0".to_owned()), Just(String::new()), ".{0,12}"];
    let fds = proptest::collection::vec(prop_oneof![Just("seccompFd".to_owned()), "[a-zA-Z]{0,9}"], 0..3);
    let pid = prop_oneof![1i32..100_000, Just(0), Just(-1), any::<i32>()];
    let bundle = prop_oneof![Just("/run/b".to_owned()), Just("rel".to_owned()), "/[a-z/\\x00]{0,12}"];
    let annotations = proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..3);
    let state = (text.clone(), text.clone(), proptest::option::of(pid.clone()), bundle, annotations).prop_map(
        |(oci_version, id, pid, bundle, annotations)| State {
            oci_version,
            id,
            status: "creating".into(),
            pid,
            bundle,
            annotations,
        },
    );
    (text.clone(), fds, pid, proptest::option::of(text), state, any::<bool>()).prop_map(
        |(oci_version, fds, pid, metadata, state, pretty)| {
            let s = ProcessState { oci_version, fds, pid, metadata, state };
            if pretty { serde_json::to_vec_pretty(&s).unwrap() } else { serde_json::to_vec(&s).unwrap() }
        },
    )
}

#[test]
fn fuzz_runtime_spec_listener_message() {
    fuzz("runtime-spec listener message", inputs(process_state(), corpus("oci", &[]), JSON_TOKENS), targets::oci_state);
}

fn hook_state() -> impl Strategy<Value = Vec<u8>> {
    use devns_core::oci::State;
    let status = prop_oneof![Just("creating".to_owned()), Just("stopped".to_owned()), ".{0,8}"];
    let key = prop_oneof![
        Just("devns.io/enable".to_owned()),
        Just("devns.io/devices".to_owned()),
        Just("devns.io/name".to_owned()),
        ".{0,6}"
    ];
    let value =
        prop_oneof![Just("true".to_owned()), Just("loop3, /dev/net/tun".to_owned()), Just(",,".to_owned()), ".{0,8}"];
    let annotations = proptest::collection::btree_map(key, value, 0..4);
    let id = prop_oneof![Just("c1".to_owned()), "[a-f0-9]{64,66}", ".{0,8}"];
    let pid = prop_oneof![1i32..100_000, Just(0), any::<i32>()];
    (id, status, proptest::option::of(pid), annotations).prop_map(|(id, status, pid, annotations)| {
        let s = State { oci_version: "1.0.2-dev".into(), id, status, pid, bundle: "/b".into(), annotations };
        serde_json::to_vec(&s).unwrap()
    })
}

#[test]
fn fuzz_oci_hook_state() {
    fuzz("OCI hook state", inputs(hook_state(), corpus("oci-hook", &[]), JSON_TOKENS), targets::oci_hook);
}

/// The real messages of the corpus are taken, as they are.
#[test]
fn the_real_runc_and_crun_messages_are_taken() {
    for m in corpus("oci", &[]) {
        let l =
            devns_core::oci::parse_process_state(&m).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&m)));
        assert_eq!((l.seccomp_fd, l.state.state.bundle.as_str()), (0, "/tmp/fz/ctr"));
    }
}

// ---- the runtime wrapper: seccomp profiles and config.json

#[test]
fn fuzz_seccomp_profile() {
    let seeds = corpus("seccomp", &[]);
    let generated = proptest::sample::select(seeds.clone());
    fuzz("seccomp profile", inputs(generated, seeds, JSON_TOKENS), targets::seccomp_profile);
}

#[test]
fn fuzz_oci_config() {
    let seeds = corpus("runtime-config", &[]);
    let generated = proptest::sample::select(seeds.clone());
    fuzz("runtime config.json", inputs(generated, seeds, JSON_TOKENS), targets::oci_config);
}
