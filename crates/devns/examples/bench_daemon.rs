//! The daemon's hot paths, end to end, at 1, 100 and 1,000 live views (each
//! a user-namespaced process attached to the daemon, its view mounted on its
//! `/dev`):
//!
//! - (a) an `assign` request, written on an open API connection, until the
//!   node is usable in the container: a process that is root in the
//!   container's user and mount namespaces (the prober) finds `/dev/NAME` a
//!   block device of the right number and opens it; and, in separate
//!   samples, until the reply arrives;
//! - (b) a new partition of a disk the container owns (the `BLKPG` ioctl that
//!   `partx -a` makes, then the kernel's uevent) until the prober opens
//!   `/dev/NAMEp1`;
//! - (c) the daemon's resident memory.
//!
//! Each is measured against a baseline in the same run, alternating with it:
//! how a container manager hot-adds a device into a running unprivileged
//! container without devns (as LXD does for a `unix-block` device): host
//! root makes a node of its own for the device, owned by the container's
//! root, and clones it as a detached mount; a forked helper joins the
//! container's user and mount namespaces as their root, creates an empty
//! file and mounts the clone over it. For (b) a listener on the kernel's
//! uevents starts that helper, as a hotplug-aware manager would.
//!
//! Run as host root, after building the daemon binary:
//! `cargo build --release && cargo run --release --example bench_daemon`.
//! It runs `devns daemon` from next to this example's binary
//! (`target/release/examples/../devns`), or `DEVNS_BENCH_BIN`, with its
//! state directory and socket in a temp dir of its own. Its mounts are made
//! in a private mount namespace. Everything it starts (daemon, containers,
//! helpers) is killed, and the loop devices it attached are detached (and
//! removed if it created them), on every exit path, Ctrl-C included.

mod common;

use anyhow::{Context, Result, anyhow, bail, ensure};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags};
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType};
use rustix::process::{Pid, Signal};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Live views at each measured size.
const SIZES: &[usize] = &[1, 100, 1000];
/// Samples per way, per measurement, per size (after the warm-up);
/// `DEVNS_BENCH_SAMPLES` overrides it.
const SAMPLES: usize = 1000;
/// Rounds (one sample of each kind) run and thrown away first at each size.
const WARMUP: usize = 20;
/// Longest any one step may take before the run is declared broken.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// First host uid/gid of the user-namespaced processes' blocks (clear of the
/// 100000 block `devns run` hands out by default).
const ID_BASE: u32 = 200_000;
const ID_BLOCK: u32 = 65_536;
/// The partition (b) adds: 4 MiB at 1 MiB, as the image's table says.
const PART_START: i64 = 1 << 20;
const PART_LEN: i64 = 4 << 20;

fn main() {
    if let Err(e) = devns::host::require_host_root("bench_daemon") {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    let mut env = Env::default();
    let result = run(&mut env);
    let cleaned = env.cleanup();
    if let Err(e) = &result {
        eprintln!("error: {e:#}");
    }
    if let Err(e) = &cleaned {
        eprintln!("cleanup: {e:#}");
    }
    if result.is_err() || cleaned.is_err() {
        std::process::exit(1);
    }
}

/// A user-namespaced process standing in for a container: its own user and
/// mount namespaces, ids mapped to a block of its own, paused until killed.
struct Container {
    pid: i32,
    pidfd: OwnedFd,
}

/// Everything the run set up, torn down by [`Env::cleanup`] (also from
/// `Drop`, so a panic cleans up too).
#[derive(Default)]
struct Env {
    work: Option<PathBuf>,
    work_is_tmpfs: bool,
    containers: Vec<Container>,
    daemon: Option<std::process::Child>,
    loops: Vec<Loop>,
    cleaned: bool,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.cleanup();
    }
}

impl Env {
    fn cleanup(&mut self) -> Result<()> {
        if self.cleaned {
            return Ok(());
        }
        self.cleaned = true;
        let mut problems = Vec::new();
        // The containers first: their namespaces die, and the daemon lets
        // go of their views.
        let views = self.work.as_ref().map(|w| w.join("state/views"));
        let attached = views.as_deref().map_or(0, |v| mounts_below(v).unwrap_or(0));
        let killed = Instant::now();
        for c in &self.containers {
            let _ = rustix::process::pidfd_send_signal(&c.pidfd, Signal::KILL);
        }
        for c in self.containers.drain(..) {
            let _ = devns_sys::process::wait_pidfd(&c.pidfd);
        }
        if let Some(mut d) = self.daemon.take() {
            let pid = Pid::from_raw(d.id() as i32).expect("a child's pid");
            let _ = rustix::process::kill_process(pid, Signal::CONT);
            if let (Some(views), Ok(None)) = (&views, d.try_wait()) {
                // Give the daemon a moment to unmount the dead namespaces' views.
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline && mounts_below(views).unwrap_or(0) > 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let left = mounts_below(views).unwrap_or(0);
                if left > 0 {
                    problems.push(format!("the daemon left {left} views mounted 30 s after their namespaces died"));
                } else {
                    let ms = killed.elapsed().as_secs_f64() * 1e3;
                    eprintln!("teardown: the daemon let go of {attached} namespaces {ms:.0} ms after they were killed");
                }
            }
            let _ = rustix::process::kill_process(pid, Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(d.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(d.try_wait(), Ok(None)) {
                problems.push("the daemon did not stop within 10 s of SIGTERM; killed it".into());
                let _ = d.kill();
            }
            let _ = d.wait();
        }
        common::teardown_work(self.work.take(), self.work_is_tmpfs, &mut self.loops, &mut problems);
        if problems.is_empty() { Ok(()) } else { Err(anyhow!("{}", problems.join("; "))) }
    }
}

fn run(env: &mut Env) -> Result<()> {
    ensure!(threads()? == 1, "the bench must be single-threaded: it forks");
    // Ctrl-C and friends end the run between two samples, through the
    // cleanup (forked children inherit the blocked mask; they are killed
    // with SIGKILL, and the daemon gets a fresh mask from exec).
    let signals = devns_sys::signal::SignalFd::new(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])?;
    let interrupted = || -> Result<()> {
        match signals.read()? {
            Some(si) => bail!("interrupted by signal {}", si.signo),
            None => Ok(()),
        }
    };
    let bin = common::devns_binary()?;
    let samples = common::samples(SAMPLES)?;
    common::private_mount_ns()?;

    // The state directory is a tmpfs, as `/run` is on a usual host (on this
    // VM `/run` is on the root disk); DEVNS_BENCH_STATE_ON_DISK=1 leaves it
    // on the disk under the temp dir, to see what the daemon's fsyncs cost.
    let on_disk = std::env::var_os("DEVNS_BENCH_STATE_ON_DISK").is_some_and(|v| v == "1");
    let work = std::env::temp_dir().join(format!("devns-bench-daemon-{}", std::process::id()));
    std::fs::create_dir(&work).with_context(|| format!("mkdir {}", work.display()))?;
    env.work = Some(work.clone());
    if !on_disk {
        rustix::mount::mount("tmpfs", &work, "tmpfs", MountFlags::empty(), c"mode=0700")
            .context("mounting the work tmpfs")?;
        env.work_is_tmpfs = true;
    }
    let state_dir = work.join("state");
    let socket = work.join("devns.sock");
    let staged = work.join("staged");
    std::fs::create_dir(&staged)?;

    // Every container first, while this process is small and has no other
    // children. Container 0 is the one measured: it gets a tmpfs at /mnt for
    // the baseline's nodes, and a prober, root in its namespaces.
    let max = *SIZES.iter().max().expect("sizes");
    let t = Instant::now();
    for i in 0..max {
        env.containers.push(spawn_container(i as u32, i == 0).with_context(|| format!("container {i}"))?);
    }
    let spawn_ms = t.elapsed().as_secs_f64() * 1e3;
    let epoch = Instant::now();
    let (prober_proc, prober) = spawn_prober(&env.containers[0], epoch)?;
    env.containers.push(prober_proc);
    let c0 = &env.containers[0];

    // (a): one loop device for devns, one for the baseline; (b): a disk
    // with a partition table the kernel does not read itself.
    let backing_a = work.join("a.img");
    let backing_b = work.join("b.img");
    let disk_img = work.join("disk.img");
    for f in [&backing_a, &backing_b] {
        std::fs::File::create(f)?.set_len(1 << 20)?;
    }
    std::fs::File::create(&disk_img)?.set_len(8 << 20)?;
    sh("sfdisk", &["-q", path_str(&disk_img)?], Some("label: dos\nstart=2048, size=8192, type=83\n"))?;
    let dev_a = attach_loop(&mut env.loops, &backing_a, false)?;
    let dev_b = attach_loop(&mut env.loops, &backing_b, false)?;
    let disk = attach_loop(&mut env.loops, &disk_img, true)?;
    let part = format!("{disk}p1");
    let disk_fd = rustix::fs::open(format!("/dev/{disk}"), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    if Path::new("/sys/class/block").join(&part).exists() {
        // This kernel read the table itself: start without the partition.
        blkpg(&disk_fd, BLKPG_DEL_PARTITION, 1, 0, 0).context("BLKPG_DEL_PARTITION")?;
    }
    let rdev_a = rustix::fs::stat(format!("/dev/{dev_a}"))?.st_rdev;
    let rdev_b = rustix::fs::stat(format!("/dev/{dev_b}"))?.st_rdev;

    let log = std::fs::File::create(work.join("daemon.log"))?;
    // The stand-in containers share the bench's cgroup, to which `attach`
    // will not tie a namespace's device policy (it would apply to the
    // bench too): the access layer is off here. Its cost per change is
    // bench_bpf's (about a microsecond).
    let config = work.join("config.toml");
    std::fs::write(&config, "device_policy = false\n")?;
    let mut command = std::process::Command::new(&bin);
    // SAFETY: the closure runs in the forked child before exec and makes one
    // async-signal-safe syscall (prctl), allocating nothing.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            // If the bench dies without its cleanup, so does the daemon.
            rustix::process::set_parent_process_death_signal(Some(Signal::TERM)).map_err(Into::into)
        });
    }
    let daemon = command
        .arg("daemon")
        .env("DEVNS_STATE_DIR", &state_dir)
        .env("DEVNS_SOCKET", &socket)
        .env("DEVNS_CONFIG", &config)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let daemon_pid = daemon.id() as i32;
    env.daemon = Some(daemon);
    let daemon = DaemonCtl { pid: daemon_pid };
    let mut api = wait_for_daemon(env.daemon.as_mut().expect("started"), &socket)?;
    let uevents = uevent_socket()?;
    // What container 0's root sees, looked at from the host.
    let c0_path = |p: &str| PathBuf::from(format!("/proc/{}/root{p}", c0.pid));

    print_header(&bin, spawn_ms, on_disk, samples)?;
    let mut rows: Vec<Row> = Vec::new();
    let mut ns0 = 0u64;
    for &n in SIZES {
        let from = rows.last().map_or(0, |r| r.n);
        let t = Instant::now();
        for c in &env.containers[from..n] {
            interrupted()?;
            let r = api.call(json!({"op": "attach", "pid": c.pid, "at": "/dev"}))?;
            let id = r["id"].as_u64().ok_or_else(|| anyhow!("attach replied {r}"))?;
            if c.pid == c0.pid {
                ns0 = id;
            }
        }
        let attach_ms = t.elapsed().as_secs_f64() * 1e3;
        let listed = api.call(json!({"op": "ns-ls"}))?;
        let count = listed.as_array().map_or(0, Vec::len);
        ensure!(count == n, "ns-ls lists {count} namespaces, not {n}");
        let views = mounts_below(&state_dir.join("views"))?;
        ensure!(views == n, "{views} views mounted on the host, not {n}");
        let rss_before = vm_kib(daemon_pid, "VmRSS:")?;

        // (a), four kinds of sample in rotating order: devns until the node
        // is usable (the prober watching), devns until the reply (no prober:
        // the round trip a client sees), the baseline, and a request the
        // daemon refuses at once (its event loop's own cost). Each starts
        // with the daemon idle (blocked in its wait): nothing left over from
        // the sample before competes for the two CPUs. The baseline runs
        // with the daemon stopped, as on a host without devns.
        let assign = format!("{{\"v\":1,\"op\":\"assign\",\"device\":\"{dev_a}\",\"to\":\"id:{ns0}\"}}\n");
        let release = json!({"op": "release", "device": dev_a});
        let node_a = c0_path(&format!("/dev/{dev_a}"));
        let (mut usable, mut replied, mut base, mut noop) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for k in 0..WARMUP + samples {
            interrupted()?;
            let keep = k >= WARMUP;
            for turn in 0..4 {
                daemon.wait_idle()?;
                match (k + turn) % 4 {
                    0 => {
                        prober.start(&format!("/dev/{dev_a}"), rdev_a)?;
                        let t0 = epoch.elapsed();
                        api.sock.write_all(assign.as_bytes())?;
                        ok_result(api.line()?).context("assign")?;
                        let u = prober.wait().context("the assigned node in the container")? - t0;
                        if keep {
                            usable.push(u);
                        }
                    }
                    1 => {
                        let t0 = epoch.elapsed();
                        api.sock.write_all(assign.as_bytes())?;
                        let reply = api.line();
                        let r = epoch.elapsed() - t0;
                        ok_result(reply?).context("assign")?;
                        ensure!(exists(&node_a), "{} not there when assign replied", node_a.display());
                        if keep {
                            replied.push(r);
                        }
                    }
                    2 => {
                        let t0 = epoch.elapsed();
                        api.sock.write_all(b"{\"v\":1,\"op\":\"bench-noop\"}\n")?;
                        let reply = api.line()?;
                        let r = epoch.elapsed() - t0;
                        ensure!(reply["ok"] == Value::Bool(false), "the daemon accepted op bench-noop: {reply}");
                        if keep {
                            noop.push(r);
                        }
                        continue;
                    }
                    _ => {
                        let _stopped = daemon.stop()?;
                        prober.start(&format!("/mnt/{dev_b}"), rdev_b)?;
                        let t0 = epoch.elapsed();
                        let helper = bind_hot_add(c0, &dev_b, &staged)?;
                        let u = prober.wait().context("the baseline's node in the container");
                        helper.wait().context("the hot-add helper")?;
                        let u = u? - t0;
                        bind_remove(c0, &dev_b, &staged)?;
                        if keep {
                            base.push(u);
                        }
                        continue;
                    }
                }
                api.call(release.clone())?;
                ensure!(!exists(&node_a), "{} still there after release replied", node_a.display());
            }
        }

        // (b), alternating: the disk owned by container 0 for devns; owned
        // by the host (and the daemon stopped) for the baseline.
        let assign_disk = json!({"op": "assign", "device": disk, "to": format!("id:{ns0}")});
        let release_disk = json!({"op": "release", "device": disk});
        let (mut part_devns, mut part_base, mut ioctl, mut from_uevent) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for k in 0..WARMUP + samples {
            interrupted()?;
            let keep = k >= WARMUP;
            for devns_turn in [k % 2 == 0, k % 2 != 0] {
                if devns_turn {
                    api.call(assign_disk.clone())?;
                    daemon.wait_idle()?;
                    drain(&uevents);
                    prober.start(&format!("/dev/{part}"), 0)?;
                    let t0 = epoch.elapsed();
                    blkpg(&disk_fd, BLKPG_ADD_PARTITION, 1, PART_START, PART_LEN).context("BLKPG_ADD_PARTITION")?;
                    let i = epoch.elapsed() - t0;
                    // The host's own receipt of the partition's uevent, on
                    // this bench's netlink socket: what the daemon reacts to.
                    wait_uevent(&uevents, "add", &part)?;
                    let ev = epoch.elapsed() - t0;
                    let u = prober.wait().context("the new partition in the container")? - t0;
                    blkpg(&disk_fd, BLKPG_DEL_PARTITION, 1, 0, 0).context("BLKPG_DEL_PARTITION")?;
                    wait_gone(&c0_path(&format!("/dev/{part}")))?;
                    api.call(release_disk.clone())?;
                    if keep {
                        part_devns.push(u);
                        ioctl.push(i);
                        from_uevent.push(u.saturating_sub(ev));
                    }
                } else {
                    daemon.wait_idle()?;
                    let _stopped = daemon.stop()?;
                    drain(&uevents);
                    prober.start(&format!("/mnt/{part}"), 0)?;
                    let t0 = epoch.elapsed();
                    blkpg(&disk_fd, BLKPG_ADD_PARTITION, 1, PART_START, PART_LEN).context("BLKPG_ADD_PARTITION")?;
                    wait_uevent(&uevents, "add", &part)?;
                    let helper = bind_hot_add(c0, &part, &staged)?;
                    let u = prober.wait().context("the baseline's partition node in the container");
                    helper.wait().context("the hot-add helper")?;
                    let u = u? - t0;
                    bind_remove(c0, &part, &staged)?;
                    blkpg(&disk_fd, BLKPG_DEL_PARTITION, 1, 0, 0).context("BLKPG_DEL_PARTITION")?;
                    wait_uevent(&uevents, "remove", &part)?;
                    if keep {
                        part_base.push(u);
                    }
                }
            }
        }
        let rss_after = vm_kib(daemon_pid, "VmRSS:")?;
        let row = Row {
            n,
            attach_ms_per_view: attach_ms / (n - from) as f64,
            usable: Pct::of(usable),
            replied: Pct::of(replied),
            noop: Pct::of(noop),
            base: Pct::of(base),
            part: Pct::of(part_devns),
            part_base: Pct::of(part_base),
            ioctl: Pct::of(ioctl),
            from_uevent: Pct::of(from_uevent),
            rss_mib: rss_before.max(rss_after) as f64 / 1024.0,
            hwm_mib: vm_kib(daemon_pid, "VmHWM:")? as f64 / 1024.0,
        };
        eprintln!(
            "N={n}: attach {:.2} ms/view; daemon RSS {:.1} MiB before the samples, {:.1} MiB after",
            row.attach_ms_per_view,
            rss_before as f64 / 1024.0,
            rss_after as f64 / 1024.0
        );
        rows.push(row);
    }
    print_table(&rows);
    Ok(())
}

/// One row of the table.
struct Row {
    n: usize,
    attach_ms_per_view: f64,
    usable: Pct,
    replied: Pct,
    /// A request refused at parse time: the event loop's round trip.
    noop: Pct,
    base: Pct,
    part: Pct,
    part_base: Pct,
    /// How long the BLKPG ioctl itself took (devns samples).
    ioctl: Pct,
    /// (b) from the host's receipt of the uevent to usable (0 when the node
    /// was there before this bench saw the event).
    from_uevent: Pct,
    rss_mib: f64,
    /// The daemon's peak RSS so far (attaching included).
    hwm_mib: f64,
}

/// p50 and p99 in µs (nearest rank).
#[derive(Clone, Copy)]
struct Pct {
    p50: f64,
    p99: f64,
}

impl Pct {
    fn of(v: Vec<Duration>) -> Pct {
        let mut us: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let rank = |p: f64| us[((p * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1];
        Pct { p50: rank(0.50), p99: rank(0.99) }
    }
}

fn print_header(bin: &Path, spawn_ms: f64, on_disk: bool, samples: usize) -> Result<()> {
    let release = rustix::system::uname().release().to_string_lossy().into_owned();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output()?;
    println!("date: {}", String::from_utf8_lossy(&date.stdout).trim());
    let tree = match std::env::var_os("DEVNS_BENCH_BIN") {
        Some(_) => "from DEVNS_BENCH_BIN".to_owned(),
        None => std::process::Command::new("git")
            .args(["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"])
            .output()
            .map(|o| format!("tree {}", String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_default(),
    };
    println!("kernel: {release}, nproc: {nproc}, daemon: {} ({tree})", bin.display());
    println!(
        "state dir on: {}; {} containers spawned in {spawn_ms:.0} ms; {samples} samples of each kind per size, after {WARMUP} warm-up rounds",
        if on_disk { "the temp dir's disk" } else { "tmpfs" },
        SIZES.iter().max().expect("sizes"),
    );
    println!();
    Ok(())
}

fn print_table(rows: &[Row]) {
    let pp = |p: Pct| format!("{:.0} / {:.0}", p.p50, p.p99);
    let ratio = |base: Pct, ours: Pct| format!("{:.1} / {:.1}", base.p50 / ours.p50, base.p99 / ours.p99);
    println!(
        "| N | (a) assign→usable µs | (a) baseline µs | (a) ratio | (b) partition→usable µs | (b) baseline µs | (b) ratio | daemon RSS MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            r.n,
            pp(r.usable),
            pp(r.base),
            ratio(r.base, r.usable),
            pp(r.part),
            pp(r.part_base),
            ratio(r.part_base, r.part),
            r.rss_mib,
        );
    }
    println!();
    println!(
        "| N | (a) assign→reply µs | refused request→reply µs | (b) BLKPG ioctl alone µs | (b) host's uevent receipt→usable µs | attach ms/view | daemon peak RSS MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.1} |",
            r.n,
            pp(r.replied),
            pp(r.noop),
            pp(r.ioctl),
            pp(r.from_uevent),
            r.attach_ms_per_view,
            r.hwm_mib
        );
    }
    println!();
    println!("µs: p50 / p99. ratio: baseline ÷ devns at p50 / at p99 (>1: devns faster).");
}

// ---- the daemon and its API ---------------------------------------------

/// One API connection; requests go out as lines, replies come back as lines.
struct Api {
    sock: UnixStream,
    buf: Vec<u8>,
}

impl Api {
    /// The next complete line, if one is there (never blocks).
    fn try_line(&mut self) -> Result<Option<Value>> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(Some(serde_json::from_slice(&line).context("a reply that is not JSON")?));
            }
            let mut chunk = [0u8; 65536];
            match rustix::net::recv(&self.sock, &mut chunk, RecvFlags::DONTWAIT) {
                Ok((0, _)) => bail!("the daemon closed the connection"),
                Ok((n, _)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(rustix::io::Errno::AGAIN) => return Ok(None),
                Err(e) => return Err(e).context("reading from the daemon"),
            }
        }
    }

    fn line(&mut self) -> Result<Value> {
        loop {
            if let Some(v) = self.try_line()? {
                return Ok(v);
            }
            let mut chunk = [0u8; 65536];
            let n = self.sock.read(&mut chunk).context("reading from the daemon")?;
            ensure!(n > 0, "the daemon closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn call(&mut self, mut req: Value) -> Result<Value> {
        req["v"] = 1.into();
        let mut line = serde_json::to_vec(&req)?;
        line.push(b'\n');
        self.sock.write_all(&line)?;
        ok_result(self.line()?).with_context(|| format!("request {req}"))
    }
}

fn ok_result(reply: Value) -> Result<Value> {
    if reply["ok"] == Value::Bool(true) {
        Ok(reply["result"].clone())
    } else {
        bail!("the daemon refused: {}", reply["error"])
    }
}

/// The daemon, for the bench's own control of it between samples.
struct DaemonCtl {
    pid: i32,
}

/// Continues the daemon when dropped.
struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(pid) = Pid::from_raw(self.0) {
            let _ = rustix::process::kill_process(pid, Signal::CONT);
        }
    }
}

impl DaemonCtl {
    /// Waits until the daemon blocks in its event loop's wait (`ppoll` or
    /// `epoll_wait`) with nothing to do.
    fn wait_idle(&self) -> Result<()> {
        let path = format!("/proc/{}/syscall", self.pid);
        let waits = [libc::SYS_ppoll, libc::SYS_epoll_wait, libc::SYS_epoll_pwait, libc::SYS_epoll_pwait2]
            .map(|n| format!("{n} "));
        let t0 = Instant::now();
        loop {
            let now = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            if waits.iter().any(|w| now.starts_with(w.as_str())) {
                return Ok(());
            }
            ensure!(t0.elapsed() < STEP_TIMEOUT, "the daemon was not idle after {STEP_TIMEOUT:?}: {}", now.trim());
            std::thread::yield_now();
        }
    }

    /// Stops the daemon (SIGSTOP) until the value returned is dropped; it
    /// has stopped when this returns (leaving its wait is work too).
    fn stop(&self) -> Result<Stopped> {
        let pid = Pid::from_raw(self.pid).context("bad pid")?;
        rustix::process::kill_process(pid, Signal::STOP)?;
        let stopped = Stopped(self.pid);
        let path = format!("/proc/{}/stat", self.pid);
        let t0 = Instant::now();
        loop {
            let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            // The state follows the command name, which ends at the last ')'.
            if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T')) {
                return Ok(stopped);
            }
            ensure!(t0.elapsed() < STEP_TIMEOUT, "the daemon did not stop after {STEP_TIMEOUT:?}");
            std::thread::yield_now();
        }
    }
}

fn wait_for_daemon(daemon: &mut std::process::Child, socket: &Path) -> Result<Api> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(sock) = UnixStream::connect(socket) {
            return Ok(Api { sock, buf: Vec::new() });
        }
        if let Some(st) = daemon.try_wait()? {
            bail!("the daemon exited ({st}) before it listened; see daemon.log in the work dir");
        }
        ensure!(Instant::now() < deadline, "the daemon did not listen on {} within 20 s", socket.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`).
fn vm_kib(pid: i32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field}"))?;
    Ok(line[field.len()..].trim().trim_end_matches("kB").trim().parse()?)
}

// ---- the prober: root in container 0 ------------------------------------

/// A process that is root in container 0's user and mount namespaces and,
/// on request, polls a path there until it is a block device (of a given
/// number) that opens, then reports when: the container's own view of
/// "usable". It polls from before the clock starts, so it sees the node at
/// once; times are `epoch.elapsed()` in both processes (one clock, as the
/// `Instant` was copied by the fork).
struct Prober {
    cmd: OwnedFd,
    res: OwnedFd,
}

/// A request: the device number (0: any block device), then the path.
const PROBE_REQ: usize = 8 + 256;

impl Prober {
    fn start(&self, path: &str, rdev: u64) -> Result<()> {
        let mut req = [0u8; PROBE_REQ];
        req[..8].copy_from_slice(&rdev.to_ne_bytes());
        ensure!(path.len() < PROBE_REQ - 8, "path too long");
        req[8..8 + path.len()].copy_from_slice(path.as_bytes());
        // One write below PIPE_BUF: it arrives whole.
        ensure!(rustix::io::write(&self.cmd, &req)? == PROBE_REQ, "short write to the prober");
        Ok(())
    }

    /// When (since the epoch) the node became usable.
    fn wait(&self) -> Result<Duration> {
        let (code, nanos) = read_report(&self.res)?;
        ensure!(code == 0, "{}", rustix::io::Errno::from_raw_os_error(code as i32));
        Ok(Duration::from_nanos(nanos))
    }
}

/// A 16-byte report: code (0 or an errno) and nanoseconds since the epoch.
fn write_report(fd: &OwnedFd, code: i64, nanos: u64) {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&code.to_ne_bytes());
    b[8..].copy_from_slice(&nanos.to_ne_bytes());
    let _ = rustix::io::write(fd, &b);
}

fn read_report(fd: &OwnedFd) -> Result<(i64, u64)> {
    let mut b = [0u8; 16];
    let n = rustix::io::read(fd, &mut b)?;
    ensure!(n == 16, "the prober died");
    let word = |i: usize| <[u8; 8]>::try_from(&b[i..i + 8]).expect("8 bytes");
    Ok((i64::from_ne_bytes(word(0)), u64::from_ne_bytes(word(8))))
}

fn spawn_prober(c: &Container, epoch: Instant) -> Result<(Container, Prober)> {
    let (cmd_r, cmd_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let (res_r, res_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // SAFETY: this process is single-threaded (checked at the start); the
    // child only makes syscalls and exits.
    match unsafe { devns_sys::process::fork_into(0) }? {
        devns_sys::process::Forked::Child => {
            drop((cmd_w, res_r));
            if let Err(code) = become_container_root(c) {
                write_report(&res_w, code.into(), 0);
                exit_now(1);
            }
            if rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).is_err() {
                exit_now(1);
            }
            write_report(&res_w, 0, 0);
            let mut req = [0u8; PROBE_REQ];
            loop {
                match rustix::io::read(&cmd_r, &mut req) {
                    Ok(PROBE_REQ) => {}
                    _ => exit_now(0),
                }
                let rdev = u64::from_ne_bytes(req[..8].try_into().expect("8 bytes"));
                let Ok(path) = std::ffi::CStr::from_bytes_until_nul(&req[8..]) else { exit_now(1) };
                let deadline = epoch.elapsed() + STEP_TIMEOUT;
                loop {
                    if is_usable(path, rdev) {
                        write_report(&res_w, 0, epoch.elapsed().as_nanos() as u64);
                        break;
                    }
                    if epoch.elapsed() > deadline {
                        write_report(&res_w, libc::ETIMEDOUT.into(), 0);
                        break;
                    }
                    // Whatever waits for this CPU (the daemon, a kernel
                    // thread, the helper) goes first: on two CPUs a spinning
                    // prober would otherwise delay what it measures.
                    rustix::thread::sched_yield();
                }
            }
        }
        devns_sys::process::Forked::Parent { pid, pidfd } => {
            drop((cmd_r, res_w));
            let proc = Container { pid: pid.as_raw_nonzero().get(), pidfd };
            let prober = Prober { cmd: cmd_w, res: res_r };
            let (code, _) = read_report(&prober.res)?;
            ensure!(code == 0, "the prober cannot become root in container 0: step·1000+errno {code}");
            Ok((proc, prober))
        }
    }
}

/// Joins `c`'s user and mount namespaces and becomes their root (as
/// `nsenter -U -m` does); the error is step·1000 + errno.
fn become_container_root(c: &Container) -> Result<(), i32> {
    let step = |n: i32| move |e: rustix::io::Errno| n * 1000 + e.raw_os_error();
    rustix::thread::move_into_thread_name_spaces(
        c.pidfd.as_fd(),
        rustix::thread::ThreadNameSpaceType::USER | rustix::thread::ThreadNameSpaceType::MOUNT,
    )
    .map_err(step(2))?;
    let root = Some(rustix::fs::Gid::ROOT);
    rustix::thread::set_thread_res_gid(root, root, root).map_err(step(3))?;
    let root = Some(rustix::fs::Uid::ROOT);
    rustix::thread::set_thread_res_uid(root, root, root).map_err(step(3))
}

// ---- the baseline: a hot-added bind mount -------------------------------

/// The baseline, as LXD hot-adds a `unix-block` device to a running
/// unprivileged container: host root makes its own node for the device (the
/// host's number and mode, owner and group shifted into the container's id
/// block, since the host's root-owned node is not usable by the container's
/// root), clones it as a detached mount; a forked helper then joins the
/// container's user and mount namespaces as their root, creates an empty
/// file at `/mnt/NAME` and mounts the clone over it. All of it in the
/// helper, so the clock (started by the caller) covers the fork.
fn bind_hot_add(c: &Container, name: &str, staged: &Path) -> Result<Helper> {
    let host = format!("/dev/{name}");
    let node = staged.join(name);
    let target = format!("/mnt/{name}");
    in_container_helper(
        c,
        || {
            let st = rustix::fs::stat(host.as_str())?;
            rustix::process::umask(Mode::empty());
            let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
            rustix::fs::mknodat(CWD, &node, FileType::BlockDevice, mode, st.st_rdev)?;
            let shift = |id: u32| if id < ID_BLOCK { ID_BASE + id } else { devns_core::view::DEFAULT_OVERFLOW_ID };
            let uid = rustix::fs::Uid::from_raw(shift(st.st_uid));
            let gid = rustix::fs::Gid::from_raw(shift(st.st_gid));
            rustix::fs::chown(&node, Some(uid), Some(gid))?;
            Ok(Some(rustix::mount::open_tree(CWD, &node, OpenTreeFlags::OPEN_TREE_CLONE)?))
        },
        |tree| {
            let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC;
            drop(rustix::fs::open(target.as_str(), flags, Mode::from_raw_mode(0o644))?);
            let tree = tree.expect("cloned");
            rustix::mount::move_mount(&tree, "", CWD, target.as_str(), MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
        },
    )
}

/// Undoes [`bind_hot_add`] (not timed).
fn bind_remove(c: &Container, name: &str, staged: &Path) -> Result<()> {
    let target = format!("/mnt/{name}");
    let helper = in_container_helper(
        c,
        || Ok(None),
        |_| {
            rustix::mount::unmount(target.as_str(), UnmountFlags::empty())?;
            rustix::fs::unlink(target.as_str())
        },
    )?;
    helper.wait().with_context(|| format!("removing {target}"))?;
    std::fs::remove_file(staged.join(name))?;
    Ok(())
}

/// A forked helper, and the pipe on which it reports how it did.
struct Helper {
    pidfd: OwnedFd,
    code: OwnedFd,
}

impl Helper {
    /// Waits for the helper; its error names the step that failed.
    fn wait(self) -> Result<()> {
        let report = read_report(&self.code);
        devns_sys::process::wait_pidfd(&self.pidfd)?;
        let (code, _) = report?;
        let step = ["", "on the host", "joining the namespaces", "becoming root there", "inside"];
        ensure!(
            code == 0,
            "{}: {}",
            step.get((code / 1000) as usize).unwrap_or(&"?"),
            rustix::io::Errno::from_raw_os_error((code % 1000) as i32)
        );
        Ok(())
    }
}

/// Forks a helper that runs `host_side` where it is, then joins `c`'s user
/// and mount namespaces as their root and runs `inside`.
fn in_container_helper(
    c: &Container,
    host_side: impl FnOnce() -> rustix::io::Result<Option<OwnedFd>>,
    inside: impl FnOnce(Option<OwnedFd>) -> rustix::io::Result<()>,
) -> Result<Helper> {
    let (code_r, code_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // SAFETY: this process is single-threaded (checked at the start, and it
    // starts no threads); the child only makes syscalls and exits.
    match unsafe { devns_sys::process::fork_into(0) }? {
        devns_sys::process::Forked::Child => {
            let step = |n: i32| move |e: rustix::io::Errno| n * 1000 + e.raw_os_error();
            let res = (|| -> Result<(), i32> {
                let carried = host_side().map_err(step(1))?;
                become_container_root(c)?;
                inside(carried).map_err(step(4))
            })();
            write_report(&code_w, res.err().unwrap_or(0).into(), 0);
            exit_now(0)
        }
        devns_sys::process::Forked::Parent { pidfd, .. } => Ok(Helper { pidfd, code: code_r }),
    }
}

/// Leaves a forked child at once: no exit handlers, no flushing of buffers
/// that are the parent's.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process without touching any shared state.
    unsafe { libc::_exit(code) }
}

// ---- nodes ---------------------------------------------------------------

/// A block device at `path` (numbered `rdev`, unless 0) that opens.
fn is_usable(path: &std::ffi::CStr, rdev: u64) -> bool {
    let Ok(st) = rustix::fs::statat(CWD, path, AtFlags::empty()) else { return false };
    FileType::from_raw_mode(st.st_mode) == FileType::BlockDevice
        && (rdev == 0 || st.st_rdev == rdev)
        && rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).is_ok()
}

fn exists(path: &Path) -> bool {
    rustix::fs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW).is_ok()
}

fn wait_gone(path: &Path) -> Result<()> {
    let t0 = Instant::now();
    while exists(path) {
        ensure!(t0.elapsed() < STEP_TIMEOUT, "{} still there after {STEP_TIMEOUT:?}", path.display());
        std::thread::yield_now();
    }
    Ok(())
}

/// How many mounts sit below `dir` (not counting `dir` itself).
fn mounts_below(dir: &Path) -> Result<usize> {
    let prefix = format!("{}/", dir.display());
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix))).count())
}

// ---- uevents -------------------------------------------------------------

fn uevent_socket() -> Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::KOBJECT_UEVENT),
    )
    .context("uevent socket")?;
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(&fd, 8 << 20);
    rustix::net::sockopt::set_socket_timeout(&fd, rustix::net::sockopt::Timeout::Recv, Some(STEP_TIMEOUT))?;
    rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 1)).context("binding the uevent socket")?;
    Ok(fd)
}

fn drain(sock: &OwnedFd) {
    let mut buf = [0u8; 8192];
    while rustix::net::recv(sock, &mut buf, RecvFlags::DONTWAIT).is_ok() {}
}

/// Waits for the kernel's `ACTION@…/NAME` uevent.
fn wait_uevent(sock: &OwnedFd, action: &str, name: &str) -> Result<()> {
    let mut buf = [0u8; 8192];
    let (head, tail) = (format!("{action}@"), format!("/{name}"));
    loop {
        let (n, _) = rustix::net::recv(sock, &mut buf, RecvFlags::empty())
            .with_context(|| format!("waiting for the {action} uevent of {name}"))?;
        let first = buf[..n].split(|b| *b == 0).next().unwrap_or_default();
        let first = String::from_utf8_lossy(first);
        if first.starts_with(&head) && first.ends_with(&tail) {
            return Ok(());
        }
    }
}

// ---- block devices ---------------------------------------------------------

use common::{BLKPG_ADD_PARTITION, BLKPG_DEL_PARTITION, Loop, attach_loop, blkpg, sh};

// ---- containers ------------------------------------------------------------

/// Forks container `i`: the child unshares a user and a mount namespace, this
/// process maps its ids (`0 BASE 65536`, BASE = 200000 + i·65536), and the
/// child becomes the namespace's root, makes its mounts private (and, with
/// `mnt_tmpfs`, mounts a tmpfs at `/mnt`, where the baseline puts its
/// nodes), then pauses until it is killed (or the bench dies).
fn spawn_container(i: u32, mnt_tmpfs: bool) -> Result<Container> {
    let (ready_r, ready_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let (go_r, go_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // SAFETY: this process is single-threaded (checked at the start); the
    // child only makes syscalls, then pauses until it is killed.
    match unsafe { devns_sys::process::fork_into(0) }? {
        devns_sys::process::Forked::Child => {
            drop((ready_r, go_w));
            let step = |n: i32, r: rustix::io::Result<()>| r.map_err(|e| n * 1000 + e.raw_os_error());
            let res = (|| -> Result<(), i32> {
                let flags = rustix::thread::UnshareFlags::NEWUSER | rustix::thread::UnshareFlags::NEWNS;
                // SAFETY: the fd table is not unshared, and this process has
                // a single thread.
                step(2, unsafe { rustix::thread::unshare_unsafe(flags) })?;
                step(3, rustix::io::write(&ready_w, &0i32.to_ne_bytes()).map(drop))?;
                let mut b = [0u8; 1];
                step(
                    4,
                    rustix::io::read(&go_r, &mut b)
                        .and_then(|n| if n == 1 { Ok(()) } else { Err(rustix::io::Errno::PIPE) }),
                )?;
                // Root of the namespace, as a container's processes are
                // (until now this process is the host's uid 0, unmapped here).
                let root = Some(rustix::fs::Gid::ROOT);
                step(5, rustix::thread::set_thread_res_gid(root, root, root))?;
                let root = Some(rustix::fs::Uid::ROOT);
                step(5, rustix::thread::set_thread_res_uid(root, root, root))?;
                // Set after the change of ids, which clears it; the bench is
                // alive here (it waits on this process's report).
                step(1, rustix::process::set_parent_process_death_signal(Some(Signal::KILL)))?;
                step(6, rustix::mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC))?;
                if mnt_tmpfs {
                    step(7, rustix::mount::mount("tmpfs", "/mnt", "tmpfs", MountFlags::empty(), c"mode=0755"))?;
                }
                Ok(())
            })();
            let code = res.err().unwrap_or(0);
            let _ = rustix::io::write(&ready_w, &code.to_ne_bytes());
            if code != 0 {
                exit_now(1);
            }
            drop((ready_w, go_r));
            // The fds inherited from the bench (earlier containers' pidfds,
            // the terminal) are not this process's to hold.
            // SAFETY: close_range only closes this process's fds, none of
            // which is used again: the process only pauses from here on.
            unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
            loop {
                rustix::event::pause();
            }
        }
        devns_sys::process::Forked::Parent { pid, pidfd } => {
            drop((ready_w, go_r));
            let c = Container { pid: pid.as_raw_nonzero().get(), pidfd };
            let read_code = || -> Result<i32> {
                let mut b = [0u8; 4];
                let n = rustix::io::read(&ready_r, &mut b)?;
                ensure!(n == 4, "the child died");
                Ok(i32::from_ne_bytes(b))
            };
            let setup = (|| -> Result<()> {
                let code = read_code()?;
                ensure!(code == 0, "child setup failed at step {}: errno {}", code / 1000, code % 1000);
                let base = ID_BASE + i * ID_BLOCK;
                std::fs::write(format!("/proc/{}/uid_map", c.pid), format!("0 {base} {ID_BLOCK}"))?;
                std::fs::write(format!("/proc/{}/gid_map", c.pid), format!("0 {base} {ID_BLOCK}"))?;
                rustix::io::write(&go_w, &[1])?;
                let code = read_code()?;
                ensure!(code == 0, "child setup failed at step {}: errno {}", code / 1000, code % 1000);
                Ok(())
            })();
            if let Err(e) = setup {
                let _ = rustix::process::pidfd_send_signal(&c.pidfd, Signal::KILL);
                let _ = devns_sys::process::wait_pidfd(&c.pidfd);
                return Err(e);
            }
            Ok(c)
        }
    }
}

// ---- small things ----------------------------------------------------------

fn threads() -> Result<usize> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    let line = s.lines().find(|l| l.starts_with("Threads:")).context("no Threads in /proc/self/status")?;
    Ok(line["Threads:".len()..].trim().parse()?)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}
