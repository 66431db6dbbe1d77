//! What an intercepted `mknod` costs a container: the per-call latency of
//! `mknodat` of a character device (`/dev/null`'s 1:3, mode 0600) that the
//! seccomp filter of `devns run` traps and its agent performs, against the
//! same call made natively by host root on a tmpfs, measured in the same run
//! and alternating with it; and the throughput of 8 containers calling at
//! once against 8 native threads.
//!
//! Every loop is the same: `mknodat(AT_FDCWD, "<dir>/bench-node", ...)`,
//! then `unlink`, over and over, and only the `mknodat` is timed (one
//! `Instant` pair per call). In a container `<dir>` is its `/tmp`, the
//! private tmpfs that `devns run` mounts there (host-made, so the node is
//! made and works); natively it is a fresh tmpfs of its own.
//!
//! To tell where the time goes, the same loop also runs as controls:
//!
//! - in a container, making a FIFO, which the filter lets through: the cost
//!   of the filter and of the user namespace alone;
//! - in a container, making 1:1 (`/dev/mem`), which devns's agent refuses
//!   after reading the caller's `/proc` files: the notification round trip
//!   plus devns's inspection of the caller, without the path resolution,
//!   the credential switch and the `mknod` itself;
//! - under a minimal agent in this program (a host-root helper process with
//!   the same filter, whose listener this program takes with `pidfd_getfd`
//!   and serves with `poll` + `RECV` + `SEND`): answering at once without
//!   doing anything (the bare round trip), and answering "continue" (the
//!   kernel then makes the node itself: the cheapest possible agent), with
//!   and without `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`;
//! - and the syscalls devns's agent makes for one such call, replayed one
//!   step at a time by host root against a container's waiting process.
//!
//! Run as host root, after building the binary it starts:
//! `cargo build --release && cargo run --release --example bench_mknod`.
//! Containers are started with `devns` from the directory above this
//! example's binary (`target/release/examples/../devns`), or
//! `DEVNS_BENCH_BIN`, as `devns run -- <this binary> child N MAKE`, with a
//! state directory and socket of their own (nothing listens there, so each
//! `devns run` is its own agent) and no config file. Everything runs in a
//! private mount namespace, so no mount of it reaches the host; its temp
//! dir is removed and every process it started is killed on the way out
//! (after Ctrl-C only the empty mountpoint `/tmp/devns-bench-mknod-PID` can
//! remain).
//! About 25 s on a 2-CPU VM.

mod common;

use anyhow::{Context, Result, anyhow, bail, ensure};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::fs::{AtFlags, CWD, FileType, Mode};
use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

/// Calls per loop with one caller, and per caller with `WAYS` at once.
const CALLS_ONE: usize = 20_000;
const CALLS_EACH: usize = 5_000;
const WAYS: usize = 8;
/// Rounds of every single-caller variant, and of the two `WAYS` variants.
const ROUNDS_ONE: usize = 5;
const ROUNDS_MANY: usize = 3;
/// Untimed calls before each timed loop (the agent probes a filesystem on
/// its first node there; caches warm up).
const WARMUP: usize = 200;
const NODE: &str = "bench-node";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("child") => child(&args[1..]),
        Some("floor") => floor(&args[1..]),
        Some(other) => Err(anyhow!("unknown role {other:?} (none: the driver; child, floor: started by it)")),
        None => devns::host::require_host_root("bench_mknod").and_then(|()| driver()),
    };
    if let Err(e) = r {
        eprintln!("bench_mknod: error: {e:#}");
        std::process::exit(1);
    }
}

// ---- the loop, the same in every role ---------------------------------------

/// What each call makes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Make {
    /// `c 1:3`: global, so devns's agent makes it.
    Null,
    /// `c 1:1`: neither global nor owned, so devns's agent refuses it.
    Mem,
    /// A FIFO: not trapped at all.
    Fifo,
}

impl Make {
    fn parse(s: &str) -> Result<Make> {
        Ok(match s {
            "null" => Make::Null,
            "mem" => Make::Mem,
            "fifo" => Make::Fifo,
            _ => bail!("unknown node kind {s:?}"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Make::Null => "null",
            Make::Mem => "mem",
            Make::Fifo => "fifo",
        }
    }

    fn file_type(self) -> FileType {
        if self == Make::Fifo { FileType::Fifo } else { FileType::CharacterDevice }
    }

    fn dev(self) -> u64 {
        match self {
            Make::Null => rustix::fs::makedev(1, 3),
            Make::Mem => rustix::fs::makedev(1, 1),
            Make::Fifo => 0,
        }
    }
}

/// One timed loop: every call's latency, in call order, and its outcomes.
#[derive(Serialize, Deserialize, Default)]
struct Run {
    samples: Vec<u32>,
    ok: usize,
    eperm: usize,
    other: usize,
    /// The first errno other than EPERM, or 0.
    other_errno: i32,
    /// `CLOCK_MONOTONIC` (the same in every namespace here) around the loop.
    start_ns: u64,
    end_ns: u64,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which lives through the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn mknod_loop(path: &Path, make: Make, calls: usize) -> Run {
    let (ft, dev, mode) = (make.file_type(), make.dev(), Mode::from_raw_mode(0o600));
    let mut run = Run { samples: Vec::with_capacity(calls), ..Run::default() };
    run.start_ns = monotonic_ns();
    for _ in 0..calls {
        let t = Instant::now();
        let r = rustix::fs::mknodat(CWD, path, ft, mode, dev);
        let dt = t.elapsed();
        let _ = rustix::fs::unlinkat(CWD, path, AtFlags::empty());
        run.samples.push(u32::try_from(dt.as_nanos()).unwrap_or(u32::MAX));
        match r {
            Ok(()) => run.ok += 1,
            Err(Errno::PERM) => run.eperm += 1,
            Err(e) => {
                run.other += 1;
                if run.other_errno == 0 {
                    run.other_errno = e.raw_os_error();
                }
            }
        }
    }
    run.end_ns = monotonic_ns();
    run
}

/// Makes the node once and checks that it is what was asked for (a refused
/// one must be refused with EPERM).
fn check_node(path: &Path, make: Make) -> Result<()> {
    let r = rustix::fs::mknodat(CWD, path, make.file_type(), Mode::from_raw_mode(0o600), make.dev());
    if make == Make::Mem {
        ensure!(r == Err(Errno::PERM), "mknod of 1:1 at {} gave {r:?}, not EPERM", path.display());
        return Ok(());
    }
    r.with_context(|| format!("mknod {}", path.display()))?;
    let st = rustix::fs::stat(path).with_context(|| format!("stat {}", path.display()));
    let _ = rustix::fs::unlinkat(CWD, path, AtFlags::empty());
    let st = st?;
    ensure!(
        FileType::from_raw_mode(st.st_mode) == make.file_type() && (make == Make::Fifo || st.st_rdev == make.dev()),
        "{} is not the node asked for (mode {:o}, rdev {:#x})",
        path.display(),
        st.st_mode,
        st.st_rdev
    );
    Ok(())
}

fn wait_for_go() -> Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading stdin")?;
    ensure!(line.trim() == "go", "expected \"go\" on stdin, got {line:?}");
    Ok(())
}

fn print_run(run: &Run) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let sorted = sorted(&run.samples);
    // The summary first; the samples are for the driver's percentiles across
    // loops.
    let total: u64 = run.samples.iter().map(|&s| u64::from(s)).sum();
    let summary = serde_json::json!({
        "count": run.samples.len(),
        "total_ns": total,
        "p50_ns": percentile(&sorted, 0.50),
        "p99_ns": percentile(&sorted, 0.99),
    });
    writeln!(out, "{summary}")?;
    writeln!(out, "{}", serde_json::to_string(run)?)?;
    out.flush()?;
    Ok(())
}

/// In a container: `child CALLS MAKE [DIR]` (DIR defaults to `/tmp`). Warms
/// up, says `ready`, waits for `go` on stdin, loops, prints the outcome.
fn child(args: &[String]) -> Result<()> {
    let [calls, make, rest @ ..] = args else { bail!("usage: child CALLS null|mem|fifo [DIR]") };
    let (calls, make): (usize, _) = (calls.parse()?, Make::parse(make)?);
    let path = Path::new(rest.first().map_or("/tmp", String::as_str)).join(NODE);
    check_node(&path, make)?;
    mknod_loop(&path, make, WARMUP);
    println!("ready");
    std::io::stdout().flush()?;
    wait_for_go()?;
    print_run(&mknod_loop(&path, make, calls))
}

/// Under the driver's minimal agent: `floor CALLS DIR`. Installs devns's
/// filter with a listener, says which fd that is, waits for `go` (the driver
/// has taken the listener then), warms up, loops, prints the outcome.
fn floor(args: &[String]) -> Result<()> {
    let [calls, dir] = args else { bail!("usage: floor CALLS DIR") };
    let calls: usize = calls.parse()?;
    let listener =
        devns_sys::seccomp::install_with_listener(&devns::agent::filter()).context("installing the filter")?;
    println!("listener {}", std::os::fd::AsRawFd::as_raw_fd(&listener));
    std::io::stdout().flush()?;
    wait_for_go()?;
    let path = Path::new(dir).join(NODE);
    mknod_loop(&path, Make::Null, WARMUP);
    print_run(&mknod_loop(&path, Make::Null, calls))
}

// ---- statistics ---------------------------------------------------------------

fn sorted(samples: &[u32]) -> Vec<u32> {
    let mut v = samples.to_vec();
    v.sort_unstable();
    v
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    f64::from(sorted[((sorted.len() - 1) as f64 * q).round() as usize])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

#[derive(Clone, Copy)]
struct Stats {
    p50: f64,
    p99: f64,
    mean: f64,
}

fn stats(samples: &[u32]) -> Stats {
    let s = sorted(samples);
    let mean = s.iter().map(|&x| f64::from(x)).sum::<f64>() / s.len().max(1) as f64;
    Stats { p50: percentile(&s, 0.50), p99: percentile(&s, 0.99), mean }
}

/// Several callers at once: every call's latency pooled, and the calls per
/// second from the first caller's start to the last one's end.
struct Many {
    stats: Stats,
    calls_per_s: f64,
}

fn many(runs: &[Run]) -> Many {
    let all: Vec<u32> = runs.iter().flat_map(|r| r.samples.iter().copied()).collect();
    let start = runs.iter().map(|r| r.start_ns).min().unwrap_or(0);
    let end = runs.iter().map(|r| r.end_ns).max().unwrap_or(0);
    Many { stats: stats(&all), calls_per_s: all.len() as f64 / ((end - start) as f64 / 1e9) }
}

// ---- the driver ---------------------------------------------------------------

/// The temp dir, with a tmpfs on it (in this process's private mount
/// namespace) holding everything; dropping it detaches that tmpfs and all
/// below it and removes the dir.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, UnmountFlags::DETACH);
        let _ = std::fs::remove_dir(&self.0);
    }
}

struct Env {
    exe: PathBuf,
    devns: PathBuf,
    work: PathBuf,
}

impl Env {
    fn dir(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }
}

/// A process this program started, with its stdin and stdout; killed and
/// reaped on drop unless it was waited for.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    what: String,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Killing `devns run` kills its container (PDEATHSIG of its init).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn spawn(mut cmd: Command, what: String, log: PathBuf) -> Result<Proc> {
        let err = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Proc { child, stdin, stdout, what, log })
    }

    fn failed(&self, why: &str) -> anyhow::Error {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail = &log[log.len().saturating_sub(2000)..];
        anyhow!("{}: {why}; its stderr:\n{}", self.what, tail.trim_end())
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err(self.failed("ended early")),
            Ok(_) => Ok(line.trim_end().to_owned()),
            Err(e) => Err(self.failed(&format!("reading its output: {e}"))),
        }
    }

    fn expect_ready(&mut self) -> Result<()> {
        let l = self.line()?;
        if l != "ready" {
            return Err(self.failed(&format!("said {l:?}, not ready")));
        }
        Ok(())
    }

    fn go(&mut self) -> Result<()> {
        let mut stdin = self.stdin.take().context("go twice")?;
        stdin.write_all(b"go\n").map_err(|e| self.failed(&format!("cannot say go: {e}")))
    }

    /// Reads the outcome, and waits for a clean exit.
    fn finish(mut self) -> Result<Run> {
        let _summary = self.line()?;
        let run: Run = serde_json::from_str(&self.line()?).map_err(|e| self.failed(&format!("bad output: {e}")))?;
        let status = self.child.wait()?;
        if !status.success() {
            return Err(self.failed(&format!("exited with {status}")));
        }
        Ok(run)
    }
}

fn log_path(env: &Env, what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    env.dir("logs").join(format!("{}-{what}.log", NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// `devns run -- <this binary> child CALLS MAKE`, not yet told to go.
fn container(env: &Env, calls: usize, make: Make) -> Result<Proc> {
    let mut cmd = Command::new(&env.devns);
    cmd.args(["run", "--"])
        .arg(&env.exe)
        .args(["child", &calls.to_string(), make.name()])
        .env("DEVNS_STATE_DIR", env.dir("state"))
        .env("DEVNS_SOCKET", env.dir("sock"))
        .env("DEVNS_CONFIG", "/nonexistent")
        .env_remove("DEVNS_LOG");
    let what = format!("devns run (child {calls} {})", make.name());
    let mut p = Proc::spawn(cmd, what, log_path(env, make.name()))?;
    p.expect_ready()?;
    Ok(p)
}

fn one_container(env: &Env, make: Make) -> Result<Run> {
    let mut p = container(env, CALLS_ONE, make)?;
    p.go()?;
    let log = p.log.clone();
    let run = p.finish()?;
    if make == Make::Mem {
        // The EPERMs were the agent's refusals, not the kernel's.
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        ensure!(text.contains("refused"), "devns's agent logged no refusal of 1:1:\n{text}");
    }
    Ok(run)
}

fn native(dir: &Path, calls: usize) -> Run {
    let path = dir.join(NODE);
    mknod_loop(&path, Make::Null, WARMUP);
    mknod_loop(&path, Make::Null, calls)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// Success, having done nothing.
    Zero,
    /// `SECCOMP_USER_NOTIF_FLAG_CONTINUE`: the kernel runs the call.
    Continue,
}

/// The cheapest agent: a host-root helper under devns's filter, served by
/// this process with `poll` + `RECV` + `SEND` and nothing else.
fn minimal_agent(env: &Env, reply: Reply, sync: bool) -> Result<Run> {
    let mut cmd = Command::new(&env.exe);
    cmd.args(["floor", &CALLS_ONE.to_string()]).arg(env.dir("floor"));
    let mut p = Proc::spawn(cmd, "the minimal agent's caller".into(), log_path(env, "floor"))?;
    let line = p.line()?;
    let fd: i32 = line.strip_prefix("listener ").and_then(|n| n.parse().ok()).context("no listener fd")?;
    let pid = Pid::from_raw(p.child.id() as i32).context("no pid")?;
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).context("pidfd_open")?;
    let listener = rustix::process::pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()).context("pidfd_getfd")?;
    if sync {
        devns_sys::seccomp::set_sync_wakeup(&listener).context("SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP")?;
    }
    p.go()?;
    let flags = if reply == Reply::Continue { devns_sys::seccomp::FLAG_CONTINUE } else { 0 };
    loop {
        let mut fds = [PollFd::new(&listener, PollFlags::IN), PollFd::new(p.stdout.get_ref(), PollFlags::IN)];
        match poll(&mut fds, None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let (l, out) = (fds[0].revents(), fds[1].revents());
        if l.contains(PollFlags::IN)
            && let Ok(n) = devns_sys::seccomp::recv(&listener)
        {
            let resp = devns_sys::seccomp::NotifResp { id: n.id, val: 0, error: 0, flags };
            let _ = devns_sys::seccomp::send(&listener, &resp);
        }
        // Output means the loop is over (nothing after it is trapped).
        if out.intersects(PollFlags::IN | PollFlags::HUP) || l.intersects(PollFlags::HUP | PollFlags::ERR) {
            break;
        }
    }
    p.finish()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Native,
    Devns,
    DevnsRefused,
    ContainerFifo,
    AgentZero,
    AgentContinue,
    AgentContinueAsync,
}

const VARIANTS: [Variant; 7] = [
    Variant::Native,
    Variant::Devns,
    Variant::DevnsRefused,
    Variant::ContainerFifo,
    Variant::AgentZero,
    Variant::AgentContinue,
    Variant::AgentContinueAsync,
];

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Native => "native: host root, `c 1:3` on a tmpfs (the baseline)",
            Variant::Devns => "**devns: container, `c 1:3`, made by devns's agent**",
            Variant::DevnsRefused => "devns: container, `c 1:1`, refused by devns's agent after reading /proc",
            Variant::ContainerFifo => "container, FIFO (not trapped: filter + user ns only)",
            Variant::AgentZero => "minimal agent, sync wake-up, answers 0 at once (bare round trip, no node)",
            Variant::AgentContinue => "minimal agent, sync wake-up, answers CONTINUE (round trip + kernel's mknod)",
            Variant::AgentContinueAsync => "minimal agent, no sync wake-up, answers CONTINUE",
        }
    }

    fn run(self, env: &Env) -> Result<Run> {
        let run = match self {
            Variant::Native => native(&env.dir("native"), CALLS_ONE),
            Variant::Devns => one_container(env, Make::Null)?,
            Variant::DevnsRefused => one_container(env, Make::Mem)?,
            Variant::ContainerFifo => one_container(env, Make::Fifo)?,
            Variant::AgentZero => minimal_agent(env, Reply::Zero, true)?,
            Variant::AgentContinue => minimal_agent(env, Reply::Continue, true)?,
            Variant::AgentContinueAsync => minimal_agent(env, Reply::Continue, false)?,
        };
        let want = if self == Variant::DevnsRefused { run.eperm } else { run.ok };
        ensure!(
            want == CALLS_ONE && run.samples.len() == CALLS_ONE,
            "{}: {} calls, {} ok, {} EPERM, {} other (first errno {})",
            self.label(),
            run.samples.len(),
            run.ok,
            run.eperm,
            run.other,
            run.other_errno
        );
        Ok(run)
    }
}

fn native_many(env: &Env) -> Vec<Run> {
    let barrier = std::sync::Barrier::new(WAYS);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..WAYS)
            .map(|i| {
                let (dir, barrier) = (env.dir(&format!("n{i}")), &barrier);
                s.spawn(move || {
                    let path = dir.join(NODE);
                    mknod_loop(&path, Make::Null, WARMUP);
                    barrier.wait();
                    mknod_loop(&path, Make::Null, CALLS_EACH)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a native thread panicked")).collect()
    })
}

fn devns_many(env: &Env) -> Result<Vec<Run>> {
    // All started and warmed up before any is told to go.
    let mut ps = (0..WAYS).map(|_| container(env, CALLS_EACH, Make::Null)).collect::<Result<Vec<_>>>()?;
    for p in &mut ps {
        p.go()?;
    }
    ps.into_iter().map(Proc::finish).collect()
}

fn check_many(runs: &[Run], what: &str) -> Result<()> {
    for r in runs {
        ensure!(r.ok == CALLS_EACH, "{what}: {} of {CALLS_EACH} calls ok (first errno {})", r.ok, r.other_errno);
    }
    Ok(())
}

// ---- devns's agent's steps, replayed ---------------------------------------

/// Iterations of each replayed step.
const REPLAY: usize = 5_000;

/// The pid of a child of `ppid` (from `/proc/*/stat`).
fn child_of(ppid: i32) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let rest = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        if rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(ppid) {
            return Some(pid);
        }
    }
    None
}

fn time_step(mut f: impl FnMut() -> Result<()>) -> Result<Stats> {
    let mut samples = Vec::with_capacity(REPLAY);
    for i in 0..REPLAY + WARMUP {
        let t = Instant::now();
        f()?;
        if i >= WARMUP {
            samples.push(u32::try_from(t.elapsed().as_nanos()).unwrap_or(u32::MAX));
        }
    }
    Ok(stats(&samples))
}

/// The steps devns's agent takes for one trapped `mknod` of `c 1:3`
/// (`crates/devns/src/agent/`), made by this process with the agent's own
/// code, one step at a time, against a container's process that waits on
/// its stdin: where the agent's time goes when nothing else is going on.
/// (Closing fds and the `SECCOMP_IOCTL_NOTIF_ID_VALID` ioctl are left out.)
fn replay(env: &Env) -> Result<Vec<(&'static str, Stats)>> {
    use devns::agent::{AsCaller, Base, Kept};
    use rustix::fs::{OFlags, ResolveFlags};
    let mut p = container(env, 1, Make::Null)?;
    let init = child_of(p.child.id() as i32).context("no container init under devns run")?;
    let pid = child_of(init).context("no command under the container's init")?;
    let tid = u32::try_from(pid)?;
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    // A path somewhere in the middle of a page of its stack: the agent reads
    // to the end of the page.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let stack = maps.lines().find(|l| l.ends_with("[stack]")).context("no [stack] in its maps")?;
    let end = stack.split(['-', ' ']).nth(1).and_then(|h| u64::from_str_radix(h, 16).ok()).context("bad maps")?;
    let addr = end - 4096 + 2048;
    let mut kept = Kept::default();
    let creds = kept.caller(tid)?.creds;
    let root = kept.caller(tid)?.dir("root")?;
    let parent = rustix::fs::openat2(&root, "/tmp", dir_flags, Mode::empty(), ResolveFlags::IN_ROOT)?;
    // The agent's thread's identity (this thread's, without groups now).
    let base = Base::of_this_thread()?;
    let mut steps: Vec<(&'static str, Stats)> = Vec::new();
    steps.push((
        "its credentials: the kept `status` read afresh (`pread`) and parsed",
        time_step(|| kept.caller(tid).map(drop).map_err(Into::into))?,
    ));
    // The rest on the caller as the agent has it once its credentials are
    // read: each step timed alone.
    let mut c = kept.caller(tid)?;
    steps.push((
        "read the path from its memory (`process_vm_readv`, 2 KiB)",
        time_step(|| {
            let _ = c.read_str(addr, 4096);
            Ok(())
        })?,
    ));
    steps.push((
        "its user namespace (`readlinkat` of the kept `ns/user`, compared)",
        time_step(|| {
            c.user_ns()?;
            Ok(())
        })?,
    ));
    steps.push((
        "open its `root` (from the kept `/proc/TID`)",
        time_step(|| {
            c.dir("root")?;
            Ok(())
        })?,
    ));
    steps.push((
        "resolve `/tmp` in its root (`openat2`, `RESOLVE_IN_ROOT`)",
        time_step(|| {
            rustix::fs::openat2(
                &root,
                "/tmp",
                dir_flags,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            )?;
            Ok(())
        })?,
    ));
    steps.push((
        "checks on that directory (`fstat` of it and of the view and `/tmp`, `fstatvfs`)",
        time_step(|| {
            // The calls `place_of` makes for a node in /tmp (the view's
            // and /tmp's own stand-ins: the root and /tmp again).
            let at = rustix::fs::fstat(&parent)?;
            let _view = rustix::fs::fstat(&root)?;
            let _tmp = rustix::fs::fstat(&parent)?;
            ensure!(!rustix::fs::fstatvfs(&parent)?.f_flag.contains(rustix::fs::StatVfsMountFlags::NODEV), "nodev");
            std::hint::black_box(at);
            Ok(())
        })?,
    ));
    steps.push((
        "take on its identity and back (`setfsgid`, `setfsuid`, `capset`, `umask`, and back)",
        time_step(|| AsCaller::become_(&creds, &base).map(drop).map_err(Into::into))?,
    ));
    let node = rustix::fs::makedev(1, 3);
    let mode = Mode::from_raw_mode(0o600);
    let mut samples = Vec::with_capacity(REPLAY);
    for i in 0..REPLAY + WARMUP {
        let guard = AsCaller::become_(&creds, &base)?;
        let t = Instant::now();
        rustix::fs::mknodat(&parent, NODE, FileType::CharacterDevice, mode, node)?;
        let dt = t.elapsed();
        drop(guard);
        rustix::fs::unlinkat(&parent, NODE, AtFlags::empty())?;
        if i >= WARMUP {
            samples.push(u32::try_from(dt.as_nanos()).unwrap_or(u32::MAX));
        }
    }
    steps.push(("`mknodat` in its `/tmp`, as it", stats(&samples)));
    // What the daemon adds per call so that a call in flight survives its
    // death (`crates/devns/src/journal.rs`): the notification written into
    // shared memory (10 words zeroed for the kernel's copy), the answer
    // recorded before it is sent, the record cleared.
    let journal = devns::journal::Journal::create()?;
    let n = devns_sys::seccomp::Notif { id: 1, pid: tid, ..Default::default() };
    let r = devns_sys::seccomp::NotifResp { id: 1, ..Default::default() };
    steps.push((
        "the daemon's journal of the call in flight (receipt, answer, done: stores to a shared memfd)",
        time_step(|| {
            journal.received(1, std::hint::black_box(&n));
            journal.answered(std::hint::black_box(&r));
            journal.done();
            Ok(())
        })?,
    ));
    p.go()?;
    p.finish()?;
    Ok(steps)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn driver() -> Result<()> {
    // SAFETY: only CLONE_NEWNS is unshared, not the fd table (the hazard
    // `unshare_unsafe` warns of), and this process has a single thread yet.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }.context("unshare(CLONE_NEWNS)")?;
    rustix::mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)
        .context("making / private")?;

    let devns = common::devns_binary()?;
    let exe = std::env::current_exe()?;
    let work = WorkDir(std::env::temp_dir().join(format!("devns-bench-mknod-{}", std::process::id())));
    std::fs::create_dir(&work.0).with_context(|| format!("mkdir {}", work.0.display()))?;
    rustix::mount::mount("tmpfs", &work.0, "tmpfs", MountFlags::empty(), None).context("mounting the work tmpfs")?;
    let env = Env { exe, devns, work: work.0.clone() };
    for d in ["state", "logs"] {
        std::fs::create_dir(env.dir(d))?;
    }
    // A fresh tmpfs for each native caller and for the minimal agent's, as
    // each container has its own /tmp.
    let tmpfs_dirs = ["native".to_owned(), "floor".to_owned()].into_iter().chain((0..WAYS).map(|i| format!("n{i}")));
    for d in tmpfs_dirs {
        std::fs::create_dir(env.dir(&d))?;
        rustix::mount::mount("tmpfs", env.dir(&d), "tmpfs", MountFlags::empty(), None)
            .with_context(|| format!("mounting a tmpfs on {d}"))?;
    }

    let release = rustix::system::uname().release().to_string_lossy().into_owned();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output()?;
    println!("date: {}", String::from_utf8_lossy(&date.stdout).trim());
    println!("kernel: {release}, nproc: {nproc}, loadavg: {}", loadavg());
    println!("devns: {}", env.devns.display());
    println!();

    // Single caller: every variant once per round, the order rotated from
    // round to round so that drift lands on all of them.
    let mut one: Vec<Vec<Stats>> = vec![Vec::new(); VARIANTS.len()];
    for round in 0..ROUNDS_ONE {
        for k in 0..VARIANTS.len() {
            let i = (k + round) % VARIANTS.len();
            one[i].push(stats(&VARIANTS[i].run(&env)?.samples));
        }
        let (n, d) = (one[0][round], one[1][round]);
        println!(
            "round {}/{ROUNDS_ONE}: native p50 {:.0} ns p99 {:.0} ns; devns p50 {:.0} ns p99 {:.0} ns; ratio {:.2} / {:.2}",
            round + 1,
            n.p50,
            n.p99,
            d.p50,
            d.p99,
            d.p50 / n.p50,
            d.p99 / n.p99
        );
    }

    // WAYS callers at once, alternating which goes first.
    let (mut nat, mut dev) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS_MANY {
        for first in [round % 2 == 0, round % 2 == 1] {
            if first {
                let runs = native_many(&env);
                check_many(&runs, "native")?;
                nat.push(many(&runs));
            } else {
                let runs = devns_many(&env)?;
                check_many(&runs, "devns")?;
                dev.push(many(&runs));
            }
        }
        let (n, d) = (&nat[round], &dev[round]);
        println!(
            "{WAYS} at once, round {}/{ROUNDS_MANY}: native {:.0} calls/s, devns {:.0} calls/s ({:.2}×)",
            round + 1,
            n.calls_per_s,
            d.calls_per_s,
            d.calls_per_s / n.calls_per_s
        );
    }
    let steps = replay(&env)?;
    println!("loadavg after: {}", loadavg());
    println!();

    // Medians over rounds; ratios are taken within a round, then the median.
    let med = |v: &[Stats], f: fn(&Stats) -> f64| median(v.iter().map(f).collect());
    let ratio = |v: &[Stats], f: fn(&Stats) -> f64| median(v.iter().zip(&one[0]).map(|(a, b)| f(a) / f(b)).collect());
    let mmed = |v: &[Many], f: fn(&Many) -> f64| median(v.iter().map(f).collect());
    let mratio = |f: fn(&Many) -> f64| median(dev.iter().zip(&nat).map(|(d, n)| f(d) / f(n)).collect());
    let range = |v: &[Stats], f: fn(&Stats) -> f64| {
        let r: Vec<f64> = v.iter().zip(&one[0]).map(|(a, b)| f(a) / f(b)).collect();
        (r.iter().copied().fold(f64::INFINITY, f64::min), r.iter().copied().fold(0.0, f64::max))
    };

    println!(
        "Single caller: {CALLS_ONE} calls per loop, medians of {ROUNDS_ONE} rounds. {WAYS} at once: {CALLS_EACH} calls \
         each, every call pooled, medians of {ROUNDS_MANY} rounds. Ratio: devns ÷ native, taken within each round."
    );
    println!();
    println!("| | native (host root, tmpfs) | devns (container, intercepted) | ratio |");
    println!("|---|---:|---:|---:|");
    let (ls, d) = (&one[0], &one[1]);
    let (lo50, hi50) = range(d, |s| s.p50);
    let (lo99, hi99) = range(d, |s| s.p99);
    println!(
        "| one caller: p50 ns per mknod | {:.0} | {:.0} | **{:.2}** ({lo50:.2}–{hi50:.2}) |",
        med(ls, |s| s.p50),
        med(d, |s| s.p50),
        ratio(d, |s| s.p50)
    );
    println!(
        "| one caller: p99 ns per mknod | {:.0} | {:.0} | **{:.2}** ({lo99:.2}–{hi99:.2}) |",
        med(ls, |s| s.p99),
        med(d, |s| s.p99),
        ratio(d, |s| s.p99)
    );
    println!(
        "| one caller: mean ns per mknod | {:.0} | {:.0} | {:.2} |",
        med(ls, |s| s.mean),
        med(d, |s| s.mean),
        ratio(d, |s| s.mean)
    );
    println!(
        "| {WAYS} at once: calls/s, all together | {:.0} | {:.0} | {:.2} |",
        mmed(&nat, |m| m.calls_per_s),
        mmed(&dev, |m| m.calls_per_s),
        mratio(|m| m.calls_per_s)
    );
    println!(
        "| {WAYS} at once: p50 ns per mknod | {:.0} | {:.0} | {:.2} |",
        mmed(&nat, |m| m.stats.p50),
        mmed(&dev, |m| m.stats.p50),
        mratio(|m| m.stats.p50)
    );
    println!(
        "| {WAYS} at once: p99 ns per mknod | {:.0} | {:.0} | {:.2} |",
        mmed(&nat, |m| m.stats.p99),
        mmed(&dev, |m| m.stats.p99),
        mratio(|m| m.stats.p99)
    );
    println!();
    println!("Where the time goes (one caller, medians; ratio: ÷ native p50 in the same round):");
    println!();
    println!("| variant | p50 ns | p99 ns | mean ns | p50 ÷ native |");
    println!("|---|---:|---:|---:|---:|");
    let order = [
        Variant::Native,
        Variant::ContainerFifo,
        Variant::AgentZero,
        Variant::AgentContinue,
        Variant::AgentContinueAsync,
        Variant::DevnsRefused,
        Variant::Devns,
    ];
    for v in order {
        let s = &one[VARIANTS.iter().position(|x| *x == v).expect("listed")];
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.2} |",
            v.label(),
            med(s, |s| s.p50),
            med(s, |s| s.p99),
            med(s, |s| s.mean),
            ratio(s, |s| s.p50)
        );
    }
    println!();
    println!(
        "devns's agent's syscalls for one `c 1:3`, replayed by host root against a waiting container process, \
         {REPLAY} times each:"
    );
    println!();
    println!("| step | p50 ns | mean ns |");
    println!("|---|---:|---:|");
    for (what, s) in &steps {
        println!("| {what} | {:.0} | {:.0} |", s.p50, s.mean);
    }
    let (sum50, summean) = steps.iter().fold((0.0, 0.0), |(a, b), (_, s)| (a + s.p50, b + s.mean));
    println!("| sum | {sum50:.0} | {summean:.0} |");
    Ok(())
}
