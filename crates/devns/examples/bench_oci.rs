//! Container start to first command, with and without devns, for the real
//! runtimes: `runc run` of a bundle, and `podman run` (runc) of a rootfs,
//! each user-namespaced onto a block of its own. With devns the container
//! asks for it (`devns.io/enable=true`) and has devns's seccomp profile:
//! its listener goes to the daemon's agent socket, and the daemon brings
//! it in (its view on `/dev`, its device program, its devices) as the
//! listener comes, the runtime being past `pivot_root`, or else at its
//! first execve; for runc, the poststop hook beside, as the runtime
//! wrapper writes it. Without, the same container as the runtime starts
//! it alone. A third way is devns by its createRuntime hook (and the
//! profile), as hooks.d users have it; a fourth devns's profile without
//! asking for devns (the listener served, never attached), what the
//! runtime pays for a notifying profile. The ways take turns, in one run,
//! each round in a shuffled order (the same in every run), so that the
//! machine's drift falls on all and no way always follows the same one.
//!
//! Each sample is the time from spawning the runtime until the container's
//! first command (`echo ready`) has written its line; the container's end
//! and removal are not timed, nor the daemon's release of it, which the
//! next sample waits for.
//!
//! Run as host root, after building the daemon binary:
//! `cargo build --release && cargo run --release --example bench_oci`.
//! Samples per way per runtime: 60 (`DEVNS_BENCH_SAMPLES`). It runs `devns
//! daemon` from next to this example (or `DEVNS_BENCH_BIN`) with its state,
//! sockets and bundles in a directory of its own below `/var/tmp`, removed
//! at the end with everything it started (containers, daemon, cgroups).

mod common;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SAMPLES: usize = 60;
/// podman's default seccomp profile (containers-common).
const PODMAN_PROFILE: &str = "/usr/share/containers/seccomp.json";
const WARMUP: usize = 3;
/// The containers' host uid/gid block (clear of devns's own from 100000).
const BASE: u32 = 0x5000_0000;
const BLOCK: u32 = 65_536;

/// The daemon's state directory, sockets and config, below `/run` as the
/// default `/run/devns` is; on a tmpfs of its own (what `/run` is on a
/// systemd host; this VM's `/run` is on its ext4 root, where each synced
/// state write is a disk flush) unless `DEVNS_BENCH_STATE=disk`.
fn rundir() -> PathBuf {
    PathBuf::from(format!("/run/devns-bench-oci-{}", std::process::id()))
}

fn main() -> Result<()> {
    ensure!(rustix::process::geteuid().is_root(), "run as host root");
    let samples = common::samples(SAMPLES)?;
    // Its mounts (the state's tmpfs, the daemon's views) go with it.
    common::private_mount_ns()?;
    let bin = common::devns_binary()?;
    let work = PathBuf::from(format!("/var/tmp/devns-bench-oci-{}", std::process::id()));
    let mut daemon = None;
    let result = (|| -> Result<()> {
        setup(&work)?;
        daemon = Some(start_daemon(&bin, &work)?);
        bench(&bin, &work, samples)
    })();
    if let Some(mut d) = daemon {
        let _ = d.kill();
        let _ = d.wait();
    }
    teardown(&work);
    result
}

/// The rootfs (busybox and its libraries, owned by the containers' root),
/// the bundle, the daemon's world.
fn setup(work: &Path) -> Result<()> {
    let root = work.join("rootfs");
    std::fs::create_dir_all(&root)?;
    std::fs::create_dir_all(rundir())?;
    if std::env::var("DEVNS_BENCH_STATE").as_deref() != Ok("disk") {
        common::sh("mount", &["-t", "tmpfs", "-o", "mode=0755", "tmpfs", rundir().to_str().context("utf-8")?], None)?;
    }
    std::fs::set_permissions(work, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let ldd = common::sh("ldd", &["/bin/busybox"], None).unwrap_or_default();
    let libs = ldd.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/'))).map(PathBuf::from);
    for f in libs.chain([PathBuf::from("/bin/busybox")]) {
        let to = root.join(f.strip_prefix("/")?);
        std::fs::create_dir_all(to.parent().context("parent")?)?;
        std::fs::copy(&f, &to).with_context(|| format!("copying {}", f.display()))?;
    }
    for applet in ["sh", "echo", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    for d in ["proc", "sys", "dev", "tmp", "etc", "run"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    common::sh("chown", &["-R", "-h", &format!("{BASE}:{BASE}"), root.to_str().context("utf-8")?], None)?;
    common::sh("runc", &["spec", "--rootless", "--bundle", work.to_str().context("utf-8")?], None)?;
    Ok(())
}

fn start_daemon(bin: &Path, work: &Path) -> Result<Child> {
    let mut c = Command::new(bin);
    world(&mut c);
    // As a service runs: a developer's RUST_BACKTRACE would have every
    // error made on the way (also those handled) capture a backtrace.
    c.env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
    let d = c
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("daemon.log"))?)
        .spawn()
        .context("starting devns daemon")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(rundir().join("devns.sock")).is_err() {
        ensure!(Instant::now() < deadline, "the daemon did not become ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(d)
}

/// Points a devns command at the benchmark's own daemon.
fn world(c: &mut Command) {
    c.env("DEVNS_STATE_DIR", rundir().join("state"))
        .env("DEVNS_SOCKET", rundir().join("devns.sock"))
        .env("DEVNS_CONFIG", rundir().join("config.toml"));
}

/// The four ways a container starts: alone; under devns by its
/// createRuntime hook; under devns by the profile alone (attached as its
/// listener comes, or at its first execve); with devns's profile but not
/// asking for devns (its listener served, never attached): what the
/// runtime pays for a notifying profile, devns's attach aside.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    Without,
    Hooks,
    With,
    Listener,
}

const WAYS: [Way; 4] = [Way::Without, Way::Hooks, Way::With, Way::Listener];

fn hook(bin: &Path, stage: &str) -> Value {
    json!({
        "path": bin,
        "args": ["devns", "hook", stage],
        "env": [format!("DEVNS_SOCKET={}", rundir().join("devns.sock").display()),
                format!("DEVNS_STATE_DIR={}", rundir().join("state").display()),
                format!("DEVNS_CONFIG={}", rundir().join("config.toml").display())],
    })
}

/// The bundle's config for one way.
fn config(bin: &Path, work: &Path, way: Way, profile: &Value) -> Result<Value> {
    let mut c: Value = serde_json::from_slice(&std::fs::read(work.join("config.json"))?)?;
    let map = json!([{ "containerID": 0, "hostID": BASE, "size": BLOCK }]);
    c["linux"]["uidMappings"] = map.clone();
    c["linux"]["gidMappings"] = map;
    c["linux"]["namespaces"].as_array_mut().context("namespaces")?.push(json!({ "type": "network" }));
    c["process"]["terminal"] = json!(false);
    c["process"]["args"] = json!(["/bin/echo", "ready"]);
    c["root"] = json!({ "path": work.join("rootfs"), "readonly": true });
    match way {
        Way::Without => {}
        Way::Hooks => {
            c["annotations"]["devns.io/enable"] = json!("true");
            c["hooks"]["createRuntime"] = json!([hook(bin, "createRuntime")]);
            c["hooks"]["poststop"] = json!([hook(bin, "poststop")]);
            c["linux"]["seccomp"] = profile.clone();
        }
        Way::With => {
            c["annotations"]["devns.io/enable"] = json!("true");
            c["hooks"]["poststop"] = json!([hook(bin, "poststop")]);
            c["linux"]["seccomp"] = profile.clone();
        }
        Way::Listener => c["linux"]["seccomp"] = profile.clone(),
    }
    Ok(c)
}

/// Spawns `cmd` and times it until the container's first line; then waits
/// for its end (untimed). Nanoseconds.
fn time_to_ready(mut cmd: Command) -> Result<u64> {
    let t0 = Instant::now();
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let elapsed = t0.elapsed().as_nanos() as u64;
    let out = child.wait_with_output()?;
    if line.trim() != "ready" || !out.status.success() {
        bail!("{cmd:?}: {} {line:?} {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(elapsed)
}

fn runc(work: &Path) -> Command {
    let mut c = Command::new("runc");
    c.arg("--root").arg(work.join("runc"));
    c
}

fn podman(work: &Path) -> Command {
    let p = work.join("podman");
    let mut c = Command::new("podman");
    c.arg("--root").arg(p.join("root")).arg("--runroot").arg(p.join("runroot")).arg("--tmpdir").arg(p.join("tmp"));
    c.args(["--storage-driver", "vfs", "--cgroup-manager=cgroupfs", "--events-backend=file"]);
    c
}

fn bench(bin: &Path, work: &Path, samples: usize) -> Result<()> {
    let mut p = Command::new(bin);
    world(&mut p);
    let out = p.args(["oci", "profile", "--listener"]).arg(rundir().join("seccomp.sock")).output()?;
    ensure!(out.status.success(), "devns oci profile: {}", String::from_utf8_lossy(&out.stderr));
    // runc's bundle has no seccomp profile without devns: devns's alone.
    let profile: Value = serde_json::from_slice(&out.stdout)?;
    // podman without devns applies its default profile: with devns, that
    // same profile as the base (as the README has it), so that both ways
    // compile the same rules but for devns's.
    let mut p = Command::new(bin);
    world(&mut p);
    let out = p
        .args(["oci", "profile", "--base", PODMAN_PROFILE, "--listener"])
        .arg(rundir().join("seccomp.sock"))
        .output()?;
    ensure!(out.status.success(), "devns oci profile --base: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(work.join("profile.json"), &out.stdout)?;
    // The devns hooks, as hooks.d files, for the hooks way.
    let hooks = work.join("hooks.d");
    std::fs::create_dir_all(&hooks)?;
    for stage in ["createRuntime", "poststop"] {
        let h = json!({ "version": "1.0.0", "hook": hook(bin, stage),
            "when": { "annotations": { "^devns\\.io/enable$": "^true$" } }, "stages": [stage] });
        std::fs::write(hooks.join(format!("devns-{stage}.json")), serde_json::to_vec(&h)?)?;
    }
    let bundles: Vec<PathBuf> = WAYS
        .iter()
        .enumerate()
        .map(|(k, &way)| -> Result<PathBuf> {
            let dir = work.join(format!("way{k}"));
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config(bin, work, way, &profile)?)?)?;
            Ok(dir)
        })
        .collect::<Result<_>>()?;
    let map = format!("0:{BASE}:{BLOCK}");
    let parent = format!("/devns-bench-oci-{}", std::process::id());
    let mut rows = Vec::new();
    for runtime in ["runc run", "podman run (runc)"] {
        let mut times = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        // The same orders in every run of the benchmark.
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        for i in 0..WARMUP + samples {
            // Each round in an order of its own: a rotation would have each
            // way always follow the same one, and pay for what that one
            // left the machine doing (its release, the kernel's teardown of
            // its namespaces), which the rest of the rounds cannot cancel.
            for k in order(&mut seed, WAYS.len()) {
                let way = WAYS[k];
                let cmd = if runtime.starts_with("runc") {
                    let mut c = runc(work);
                    c.args(["run", "--bundle"]).arg(&bundles[k]).arg(format!("bench-{i}-{k}"));
                    c
                } else {
                    let mut c = podman(work);
                    c.args([
                        "run",
                        "--rm",
                        "--network",
                        "none",
                        "--runtime",
                        "runc",
                        "--uidmap",
                        &map,
                        "--gidmap",
                        &map,
                    ]);
                    c.args([
                        "--ulimit",
                        "nofile=20000:20000",
                        "--ulimit",
                        "nproc=32768:32768",
                        "--cgroup-parent",
                        &parent,
                    ]);
                    if way == Way::Hooks {
                        c.arg("--hooks-dir").arg(&hooks);
                    }
                    if way == Way::Hooks || way == Way::With {
                        c.args(["--annotation", "devns.io/enable=true"]);
                    }
                    if way != Way::Without {
                        c.arg("--security-opt").arg(format!("seccomp={}", work.join("profile.json").display()));
                    }
                    c.arg("--rootfs").arg(work.join("rootfs")).args(["/bin/echo", "ready"]);
                    c
                };
                let t = time_to_ready(cmd).with_context(|| format!("{runtime}, way {k}, sample {i}"))?;
                settle(bin)?;
                if i >= WARMUP {
                    times[k].push(t);
                }
            }
        }
        let [without, hooked, with, listener] = times.map(common::p50_p99);
        rows.push((runtime, without, hooked, with, listener));
    }
    println!(
        "{samples} starts per way per runtime, in shuffled turns (µs; with devns: the profile alone, attached as its listener comes or at its first execve; hooks: by the createRuntime hook; profile only: devns's profile, not asking for devns):"
    );
    println!(
        "| runtime | p50 without | p50 with devns | ratio | + ms | p99 without | p99 with devns | ratio | p50 hooks | hooks ratio | hooks + ms | p50 profile only | + ms |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (rt, (a50, a99), (h50, _), (b50, b99), (l50, _)) in rows {
        println!(
            "| {rt} | {a50:.0} | {b50:.0} | {:.3} | {:.2} | {a99:.0} | {b99:.0} | {:.3} | {h50:.0} | {:.3} | {:.2} | {l50:.0} | {:.2} |",
            b50 / a50,
            (b50 - a50) / 1000.0,
            b99 / a99,
            h50 / a50,
            (h50 - a50) / 1000.0,
            (l50 - a50) / 1000.0,
        );
    }
    Ok(())
}

/// Waits, untimed, until the daemon has let go of every namespace (a
/// container's end is followed by its release: view, program, records)
/// and a little more (its spare program loaded): so that no way's
/// sample pays for the one before.
fn settle(bin: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Command::new(bin);
        world(&mut c);
        let out = c.args(["ns", "ls", "--json"]).output()?;
        let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if out.status.success() && rows.is_empty() {
            break;
        }
        ensure!(Instant::now() < deadline, "the daemon kept a namespace: {rows:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(20));
    Ok(())
}

/// `0..n` shuffled (Fisher-Yates, xorshift64 from `seed`): a round's order.
fn order(seed: &mut u64, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        v.swap(i, (*seed % (i as u64 + 1)) as usize);
    }
    v
}

/// Every container, cgroup, mount and file the benchmark made.
fn teardown(work: &Path) {
    if let Ok(list) = runc(work).args(["list", "-q"]).output() {
        for id in String::from_utf8_lossy(&list.stdout).lines() {
            let _ = runc(work).args(["delete", "--force", id]).output();
        }
    }
    let _ = podman(work).args(["rm", "-a", "-f", "-t", "0"]).output();
    let parent = format!("devns-bench-oci-{}", std::process::id());
    for h in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let p = h.path().join(&parent);
        let _ = std::fs::remove_dir(p.join("conmon"));
        let _ = std::fs::remove_dir(&p);
    }
    let _ = rustix::mount::unmount(rundir().join("state/views"), rustix::mount::UnmountFlags::DETACH);
    let log = std::fs::read_to_string(work.join("daemon.log")).unwrap_or_default();
    if !log.trim().is_empty() {
        eprintln!("the daemon logged {} lines; the first ones:", log.lines().count());
        for l in log.lines().take(10) {
            eprintln!("  {l}");
        }
    }
    let _ = Command::new("umount").arg("-R").arg(work.join("podman")).stderr(Stdio::null()).status();
    let _ = rustix::mount::unmount(rundir(), rustix::mount::UnmountFlags::DETACH);
    let _ = std::fs::remove_dir_all(rundir());
    if let Err(e) = std::fs::remove_dir_all(work) {
        eprintln!("removing {}: {e}", work.display());
    }
}
