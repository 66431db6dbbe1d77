//! Uevent delivery to the owner: a host uevent of a device that a container
//! owns, from the host's own receipt until the receipt inside that
//! container, with 1 and with 100 containers running.
//!
//! Run as host root, after building the daemon binary:
//! `cargo build --release && cargo run --release --example bench_uevents`.
//!
//! It starts `devns daemon` (next to this example's binary, or
//! `DEVNS_BENCH_BIN`) with its state directory and socket on a tmpfs in a
//! temp dir of its own, in a private mount namespace. Containers are real
//! `devns run --name cN -- THIS_BINARY listen` runs (own user, mount, pid and
//! network namespaces). The `listen` role opens a `NETLINK_KOBJECT_UEVENT`
//! socket bound to group 1, prints `ready`, then prints one line per
//! datagram: its `CLOCK_MONOTONIC` time of receipt (ns), `ACTION`, `DEVNAME`
//! and `SEQNUM`. The same role, started directly on the host, is the
//! baseline: the host's own receipt of the same event, by the same code,
//! blocked in `recv` as the container's listener is.
//!
//! Container 0 owns a partition-scannable loop disk (`devns run --dev`); the
//! bench adds and deletes its partition 1 with `BLKPG` ioctls (what
//! `partx -a`/`-d` do), so each ioctl makes one `add` or `remove` uevent of
//! `loopNp1`. Containers 1..99 run the same listener and own nothing; they
//! must receive nothing.
//!
//! Everything it starts is stopped (by pid), the views unmounted, the loop
//! device detached (and removed if it created it), the temp dir and any
//! copied binary removed, on every exit path, Ctrl-C included.

mod common;

use anyhow::{Context, Result, anyhow, bail, ensure};
use rustix::event::{PollFd, PollFlags};
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use rustix::mount::MountFlags;
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType};
use rustix::process::{Pid, Signal};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Containers running at each measured size.
const SIZES: &[usize] = &[1, 100];
/// Events (half `add`, half `remove`) per size after the warm-up;
/// `DEVNS_BENCH_SAMPLES` overrides it.
const SAMPLES: usize = 500;
/// Events run and thrown away first at each size.
const WARMUP: usize = 20;
/// Longest any one wait may take before the run is declared broken.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// The target: container receipt at most this long after the host's (p99).
const TARGET_US: f64 = 250.0;
/// The partition the bench adds: 4 MiB at 1 MiB.
const PART_START: i64 = 1 << 20;
const PART_LEN: i64 = 4 << 20;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("listen") {
        if let Err(e) = listen() {
            eprintln!("listen: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = devns::host::require_host_root("bench_uevents") {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    // Ctrl-C and friends end the run at its next wait, through the cleanup;
    // they stay blocked until the cleanup is done.
    let signals = match devns_sys::signal::SignalFd::new(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: signalfd: {e}");
            std::process::exit(1);
        }
    };
    let mut env = Env::default();
    let result = run(&mut env, &signals);
    let cleaned = env.cleanup();
    drop(signals);
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

// ---- the listener (inside a container, or on the host) ---------------------

fn now_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which `t` is.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Prints `ready`, then `NS ACTION DEVNAME SEQNUM` per uevent datagram, each
/// line written at once; ends when stdout goes away.
fn listen() -> Result<()> {
    // `devns run` starts its command with the signals it relays still
    // blocked; unblocked here, so that SIGTERM ends the listener.
    // SAFETY: sigemptyset fills the set; sigprocmask only changes this
    // (single-threaded) process's mask.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    let sock = uevent_socket()?;
    let mut out = std::io::stdout().lock();
    out.write_all(b"ready\n")?;
    out.flush()?;
    let mut buf = vec![0u8; 16384];
    loop {
        let (n, _) = match rustix::net::recv(&sock, &mut buf, RecvFlags::empty()) {
            Ok(r) => r,
            Err(rustix::io::Errno::INTR) => continue,
            // Dropped datagrams are reported, not hidden.
            Err(rustix::io::Errno::NOBUFS) => {
                writeln!(out, "{} overrun - 0", now_ns())?;
                out.flush()?;
                continue;
            }
            Err(e) => return Err(e).context("recv"),
        };
        let t = now_ns();
        let (mut action, mut devname, mut seqnum) = ("-", "-", "0");
        let mut fields = buf[..n].split(|b| *b == 0);
        if fields.next().is_some_and(|h| h.starts_with(b"libudev")) {
            continue;
        }
        for f in fields {
            let f = std::str::from_utf8(f).unwrap_or("");
            if let Some(v) = f.strip_prefix("ACTION=") {
                action = v;
            } else if let Some(v) = f.strip_prefix("DEVNAME=") {
                devname = v;
            } else if let Some(v) = f.strip_prefix("SEQNUM=") {
                seqnum = v;
            }
        }
        writeln!(out, "{t} {action} {devname} {seqnum}")?;
        out.flush()?;
    }
}

fn uevent_socket() -> Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::KOBJECT_UEVENT),
    )
    .context("uevent socket")?;
    // Force needs CAP_NET_ADMIN over the network namespace (a container's
    // root has it); the plain size is the fallback.
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(&fd, 4 << 20).is_err() {
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, 4 << 20);
    }
    rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 1)).context("binding the uevent socket")?;
    Ok(fd)
}

// ---- the driver ------------------------------------------------------------

/// A listener's stdout, read line by line.
struct Lines {
    fd: OwnedFd,
    buf: Vec<u8>,
}

/// One line of a listener.
#[derive(Debug)]
struct Receipt {
    ns: u64,
    action: String,
    devname: String,
    seqnum: u64,
}

impl Lines {
    fn new(fd: OwnedFd) -> Result<Lines> {
        rustix::fs::fcntl_setfl(&fd, OFlags::NONBLOCK)?;
        Ok(Lines { fd, buf: Vec::new() })
    }

    /// A complete line already read, if any.
    fn take_line(&mut self) -> Option<String> {
        let i = self.buf.iter().position(|b| *b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=i).collect();
        Some(String::from_utf8_lossy(&line[..i]).into_owned())
    }

    /// Reads what is there without waiting; false at end of file.
    fn fill(&mut self) -> Result<bool> {
        let mut chunk = [0u8; 8192];
        loop {
            match rustix::io::read(&self.fd, &mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(rustix::io::Errno::AGAIN) => return Ok(true),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next line, blocking in `poll` (on this pipe and the signalfd)
    /// until `deadline`.
    fn line(&mut self, deadline: Instant, signals: &devns_sys::signal::SignalFd) -> Result<String> {
        loop {
            if let Some(l) = self.take_line() {
                return Ok(l);
            }
            let left = deadline.checked_duration_since(Instant::now()).context("timed out")?;
            let ts = rustix::event::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: left.subsec_nanos() as i64 };
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN), PollFd::new(signals, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(si) = signals.read()? {
                bail!("interrupted by signal {}", si.signo);
            }
            ensure!(self.fill()?, "the listener ended");
        }
    }

    /// The receipt of event `seqnum` (`action` of `devname`), skipping others.
    fn receipt(
        &mut self,
        action: &str,
        devname: &str,
        seqnum: Option<u64>,
        signals: &devns_sys::signal::SignalFd,
    ) -> Result<Receipt> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let line = self.line(deadline, signals).with_context(|| format!("waiting for {action} of {devname}"))?;
            let r = parse_receipt(&line)?;
            ensure!(r.action != "overrun", "the listener's socket overran");
            if r.action == action && r.devname == devname && seqnum.is_none_or(|s| s == r.seqnum) {
                return Ok(r);
            }
        }
    }
}

fn parse_receipt(line: &str) -> Result<Receipt> {
    let mut it = line.split(' ');
    let mut next = || it.next().with_context(|| format!("bad listener line {line:?}"));
    Ok(Receipt {
        ns: next()?.parse()?,
        action: next()?.to_owned(),
        devname: next()?.to_owned(),
        seqnum: next()?.parse()?,
    })
}

/// A listener this run started: `devns run` (a container) or, for the
/// baseline, directly on the host.
struct Listener {
    child: Child,
    out: Lines,
}

/// Everything the run set up, torn down by [`Env::cleanup`].
#[derive(Default)]
struct Env {
    work: Option<PathBuf>,
    work_is_tmpfs: bool,
    copied_dir: Option<PathBuf>,
    listeners: Vec<Listener>,
    daemon: Option<Child>,
    loops: Vec<Loop>,
    cleaned: bool,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.cleanup();
    }
}

/// SIGTERM, then up to `grace` for it to end, then SIGKILL; always reaped.
fn stop(child: &mut Child, grace: Duration) -> bool {
    let pid = Pid::from_raw(child.id() as i32).expect("a child's pid");
    if matches!(child.try_wait(), Ok(None)) {
        let _ = rustix::process::kill_process(pid, Signal::TERM);
    }
    stop_by(child, Instant::now() + grace)
}

/// Waits until `deadline` for `child` to end, then SIGKILLs it; reaped.
fn stop_by(child: &mut Child, deadline: Instant) -> bool {
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let clean = !matches!(child.try_wait(), Ok(None));
    if !clean {
        let _ = child.kill();
    }
    let _ = child.wait();
    clean
}

impl Env {
    fn cleanup(&mut self) -> Result<()> {
        if self.cleaned {
            return Ok(());
        }
        self.cleaned = true;
        let mut problems = Vec::new();
        // The containers first (`devns run` relays SIGTERM to its command,
        // and its container ends with it), then the daemon.
        for l in &self.listeners {
            let pid = Pid::from_raw(l.child.id() as i32).expect("a child's pid");
            let _ = rustix::process::kill_process(pid, Signal::TERM);
        }
        let mut forced = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        for mut l in self.listeners.drain(..) {
            if !stop_by(&mut l.child, deadline) {
                forced += 1;
            }
        }
        if forced > 0 {
            problems.push(format!("{forced} listeners did not end within 5 s of SIGTERM; killed them"));
        }
        if let Some(mut d) = self.daemon.take()
            && !stop(&mut d, Duration::from_secs(10))
        {
            problems.push("the daemon did not stop within 10 s of SIGTERM; killed it".into());
        }
        common::teardown_work(self.work.take(), self.work_is_tmpfs, &mut self.loops, &mut problems);
        if problems.is_empty() { Ok(()) } else { Err(anyhow!("{}", problems.join("; "))) }
    }
}

/// Latencies of one size, in ns.
#[derive(Default)]
struct Samples {
    /// Start of the ioctl → the host listener's receipt.
    ioctl_to_host: Vec<u64>,
    /// The host listener's receipt → container 0's (the measured one).
    host_to_owner: Vec<u64>,
    /// Start of the ioctl → container 0's receipt.
    ioctl_to_owner: Vec<u64>,
    /// How long the ioctl itself took.
    ioctl: Vec<u64>,
    /// Container receipts that came before the host's (clock sanity).
    owner_first: usize,
}

fn run(env: &mut Env, signals: &devns_sys::signal::SignalFd) -> Result<()> {
    let bin = common::devns_binary()?;
    let samples = common::samples(SAMPLES)?;
    common::private_mount_ns()?;

    let work = std::env::temp_dir().join(format!("devns-bench-uevents-{}", std::process::id()));
    std::fs::create_dir(&work).with_context(|| format!("mkdir {}", work.display()))?;
    env.work = Some(work.clone());
    rustix::mount::mount("tmpfs", &work, "tmpfs", MountFlags::empty(), c"mode=0700")
        .context("mounting the work tmpfs")?;
    env.work_is_tmpfs = true;
    let state_dir = work.join("state");
    let socket = work.join("devns.sock");

    // The listener runs inside the containers, whose /tmp is their own: the
    // binary must be somewhere else on the host's root, readable by the
    // containers' unprivileged ids.
    let exe = std::env::current_exe()?;
    let listener_bin = if exe.starts_with("/tmp") || exe.starts_with(std::env::temp_dir()) {
        let dir = PathBuf::from(format!("/var/tmp/devns-bench-uevents-{}", std::process::id()));
        std::fs::create_dir(&dir)?;
        env.copied_dir = Some(dir.clone());
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let to = dir.join("bench_uevents");
        std::fs::copy(&exe, &to)?;
        to
    } else {
        exe
    };

    // The owned disk: an attached loop device that scans partitions (so
    // that BLKPG works) on an 8 MiB file with no table.
    let disk_img = work.join("disk.img");
    std::fs::File::create(&disk_img)?.set_len(8 << 20)?;
    let disk = attach_loop(&mut env.loops, &disk_img, true)?;
    let part = format!("{disk}p1");
    let disk_fd = rustix::fs::open(format!("/dev/{disk}"), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    if Path::new("/sys/class/block").join(&part).exists() {
        blkpg(&disk_fd, BLKPG_DEL_PARTITION, 1, 0, 0).context("BLKPG_DEL_PARTITION")?;
    }

    let log = std::fs::File::create(work.join("daemon.log"))?;
    let mut command = Command::new(&bin);
    // SAFETY: the closure runs in the forked child before exec and makes one
    // async-signal-safe syscall (prctl), allocating nothing.
    unsafe {
        command.pre_exec(|| rustix::process::set_parent_process_death_signal(Some(Signal::TERM)).map_err(Into::into));
    }
    let daemon = command
        .arg("daemon")
        .env("DEVNS_STATE_DIR", &state_dir)
        .env("DEVNS_SOCKET", &socket)
        .env("DEVNS_CONFIG", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let daemon_pid = daemon.id();
    env.daemon = Some(daemon);
    wait_for_daemon(env.daemon.as_mut().expect("started"), &socket)?;

    let run_log = std::fs::File::create(work.join("run.log"))?;
    let spawn = |args: &[&str]| -> Result<Listener> {
        let mut c = Command::new(&bin);
        // SAFETY: as for the daemon: one prctl in the child before exec.
        unsafe {
            c.pre_exec(|| rustix::process::set_parent_process_death_signal(Some(Signal::TERM)).map_err(Into::into));
        }
        c.arg("run").args(args).arg("--").arg(&listener_bin).arg("listen");
        c.env("DEVNS_SOCKET", &socket).env("DEVNS_CONFIG", "/nonexistent");
        listener(c, run_log.try_clone()?, signals)
    };

    // The baseline: the same listener, on the host.
    let mut host_cmd = Command::new(&listener_bin);
    host_cmd.arg("listen");
    // SAFETY: as above.
    unsafe {
        host_cmd.pre_exec(|| rustix::process::set_parent_process_death_signal(Some(Signal::TERM)).map_err(Into::into));
    }
    let host = listener(host_cmd, run_log.try_clone()?, signals).context("the host's listener")?;
    env.listeners.push(host);
    let t = Instant::now();
    let c0 = spawn(&["--name", "c0", "--dev", &disk]).context("container c0")?;
    env.listeners.push(c0);
    let c0_ms = t.elapsed().as_secs_f64() * 1e3;

    print_header(&bin, samples)?;
    println!("container c0 (owns {disk}) started in {c0_ms:.0} ms; host listener pid {}", env.listeners[0].child.id());
    let mut rows = Vec::new();
    for &n in SIZES {
        let have = env.listeners.len() - 1;
        let t = Instant::now();
        for i in have..n {
            let l = spawn(&["--name", &format!("c{i}")]).with_context(|| format!("container c{i}"))?;
            env.listeners.push(l);
        }
        if n > have {
            let ms = t.elapsed().as_secs_f64() * 1e3;
            eprintln!("started {} more containers in {ms:.0} ms ({:.1} ms each)", n - have, ms / (n - have) as f64);
        }
        let rss_kib = vm_kib(daemon_pid, "VmRSS:")?;
        let s = measure(env, &disk_fd, &disk, &part, samples, signals)?;
        // The containers that own nothing must have heard nothing.
        let mut strays = 0;
        for l in &mut env.listeners[2..] {
            l.out.fill()?;
            while let Some(line) = l.out.take_line() {
                strays += 1;
                eprintln!("a non-owner got: {line}");
            }
        }
        rows.push((n, s, strays, rss_kib));
    }
    print_table(&rows);
    Ok(())
}

/// Starts `cmd` with its stdout on a pipe, and waits for its `ready`.
fn listener(mut cmd: Command, stderr: std::fs::File, signals: &devns_sys::signal::SignalFd) -> Result<Listener> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr).spawn()?;
    let out: OwnedFd = child.stdout.take().expect("piped").into();
    let mut l = Listener { child, out: Lines::new(out)? };
    let ready = l.out.line(Instant::now() + Duration::from_secs(10), signals);
    match ready {
        Ok(line) if line == "ready" => Ok(l),
        other => {
            stop(&mut l.child, Duration::from_secs(2));
            bail!("no ready from the listener: {other:?} (see run.log in the temp dir)")
        }
    }
}

/// `WARMUP + samples` events (partition 1 of `disk` added, then deleted,
/// in turn), each timed at the host listener and at container 0.
fn measure(
    env: &mut Env,
    disk_fd: &OwnedFd,
    disk: &str,
    part: &str,
    samples: usize,
    signals: &devns_sys::signal::SignalFd,
) -> Result<Samples> {
    let mut s = Samples::default();
    let [host, owner, ..] = &mut env.listeners[..] else { bail!("no listeners") };
    for k in 0..WARMUP + samples {
        let add = k % 2 == 0;
        let t0 = now_ns();
        if add {
            blkpg(disk_fd, BLKPG_ADD_PARTITION, 1, PART_START, PART_LEN).context("BLKPG_ADD_PARTITION")?;
        } else {
            blkpg(disk_fd, BLKPG_DEL_PARTITION, 1, 0, 0).context("BLKPG_DEL_PARTITION")?;
        }
        let t1 = now_ns();
        let action = if add { "add" } else { "remove" };
        let h = host.out.receipt(action, part, None, signals).context("the host's listener")?;
        // The kernel rebroadcasts the daemon's copy with a SEQNUM of the
        // container's own, so it is matched by ACTION and DEVNAME (the
        // events alternate, and each is awaited before the next ioctl).
        let o = owner.out.receipt(action, part, None, signals).with_context(|| {
            format!("container c0 (owner of {disk}) never got {action} of {part} (host SEQNUM {})", h.seqnum)
        })?;
        if k < WARMUP {
            continue;
        }
        s.ioctl.push(t1 - t0);
        s.ioctl_to_host.push(h.ns.saturating_sub(t0));
        s.ioctl_to_owner.push(o.ns.saturating_sub(t0));
        if o.ns < h.ns {
            s.owner_first += 1;
        }
        s.host_to_owner.push(o.ns.saturating_sub(h.ns));
    }
    Ok(s)
}

/// p50, p99 and max in µs (nearest rank).
fn pct(v: &[u64]) -> (f64, f64, f64) {
    let mut us: Vec<f64> = v.iter().map(|n| *n as f64 / 1e3).collect();
    us.sort_by(f64::total_cmp);
    let rank = |p: f64| us[((p * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1];
    (rank(0.50), rank(0.99), *us.last().expect("samples"))
}

fn print_header(bin: &Path, samples: usize) -> Result<()> {
    let release = rustix::system::uname().release().to_string_lossy().into_owned();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output()?;
    println!("date: {}", String::from_utf8_lossy(&date.stdout).trim());
    let tree = match std::env::var_os("DEVNS_BENCH_BIN") {
        Some(_) => "from DEVNS_BENCH_BIN".to_owned(),
        None => Command::new("git")
            .args(["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"])
            .output()
            .map(|o| format!("tree {}", String::from_utf8_lossy(&o.stdout).trim()))
            .unwrap_or_default(),
    };
    println!("kernel: {release}, nproc: {nproc}, daemon: {} ({tree})", bin.display());
    println!("{samples} events per size (half add, half remove), after {WARMUP} warm-up events");
    Ok(())
}

fn print_table(rows: &[(usize, Samples, usize, u64)]) {
    let f = |(a, b, _): (f64, f64, f64)| format!("{a:.0} / {b:.0}");
    println!();
    println!(
        "| containers | events | ioctl → host receipt µs | host receipt → owner's receipt µs | max µs | ioctl → owner's receipt µs | BLKPG ioctl alone µs | p99 under {TARGET_US:.0} µs | non-owners' receipts | daemon RSS MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|");
    for (n, s, strays, rss) in rows {
        let d = pct(&s.host_to_owner);
        println!(
            "| {n} | {} | {} | {} | {:.0} | {} | {} | {} | {strays} | {:.1} |",
            s.host_to_owner.len(),
            f(pct(&s.ioctl_to_host)),
            f(d),
            d.2,
            f(pct(&s.ioctl_to_owner)),
            f(pct(&s.ioctl)),
            if d.1 < TARGET_US { "yes" } else { "no" },
            *rss as f64 / 1024.0,
        );
    }
    for (n, s, _, _) in rows {
        if s.owner_first > 0 {
            println!("N={n}: the owner's receipt came before the host listener's in {} events", s.owner_first);
        }
    }
}

fn vm_kib(pid: u32, key: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s.lines().find(|l| l.starts_with(key)).with_context(|| format!("no {key}"))?;
    Ok(line[key.len()..].trim().trim_end_matches("kB").trim().parse()?)
}

/// Waits until the daemon accepts connections on `socket`.
fn wait_for_daemon(daemon: &mut Child, socket: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if let Some(st) = daemon.try_wait()? {
            bail!("the daemon exited: {st} (see daemon.log in the temp dir)");
        }
        ensure!(Instant::now() < deadline, "the daemon did not listen within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- block devices ---------------------------------------------------------

use common::{BLKPG_ADD_PARTITION, BLKPG_DEL_PARTITION, Loop, attach_loop, blkpg};
