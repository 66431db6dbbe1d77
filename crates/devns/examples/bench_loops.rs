//! What a loop device costs a container through devns: allocate-and-attach
//! (`LOOP_CTL_GET_FREE` on `/dev/loop-control`, open `/dev/loopN`,
//! `LOOP_CONFIGURE` with a backing file: what `losetup -f --show IMG` does)
//! from inside a `devns run` container, whose `GET_FREE` devns's agent
//! answers, against the same steps by host root, in the same run; and how
//! long devns takes to detach and remove a killed container's loop devices.
//!
//! Measured, each as a ratio to host root's figure of the same run:
//!
//! - `reuse`: allocate-and-attach, then (untimed) `LOOP_CLR_FD`: the next
//!   allocation gets the same free device again (host root: the kernel's
//!   first free one; a container: its own free one, which devns answers).
//! - `fresh`: the same, then (untimed) `LOOP_CTL_REMOVE` too, so that every
//!   allocation makes a new device: in a container devns makes it
//!   (`LOOP_CTL_ADD`); host root's steps are then `LOOP_CTL_ADD` of any
//!   index instead of `GET_FREE` (what `GET_FREE` does when no device is
//!   free), as the host keeps free devices of its own.
//! - `losetup`: the unmodified tool, `losetup -f --show IMG` as a process
//!   (then `losetup -d`, untimed), spawned the same way on both sides.
//! - cleanup: a container holding two loop devices (one attached) is
//!   killed with SIGKILL (through the daemon: its init; stand-alone: its
//!   keeper, whose watcher then cleans up), in turns; time until both are
//!   gone from the host, against host root detaching and removing two such
//!   devices itself, and stand-alone against the daemon.
//! - start-up: a stand-alone `devns run -- true` from spawn to exit,
//!   against the binary `DEVNS_BENCH_BEFORE_BIN` names (another tree's, in
//!   turns with this one) when it is set.
//!
//! Containers run through a `devns daemon` of the benchmark's own (state
//! dir and socket in its work dir) and stand-alone (no daemon: `devns run`
//! is its own agent), for the first three.
//!
//! Run as host root: `cargo build --release && cargo run --release --example
//! bench_loops`. Everything runs in a private mount namespace; the work dir
//! (`/var/tmp/devns-bench-loops-PID`: a container's `/tmp` is its own) and
//! every loop device the benchmark made are removed on the way out.

mod common;

use anyhow::{Context, Result, anyhow, bail, ensure};
use rustix::fd::{AsRawFd, OwnedFd};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LOOP_CTL_ADD: libc::c_ulong = 0x4C80;
const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;

/// Timed allocations per series, series per variant (alternating sides).
const CALLS: usize = 200;
const ROUNDS: usize = 3;
const LOSETUP_CALLS: usize = 60;
const CLEANUPS: usize = 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("child") => child(&args[1..]),
        Some(other) => Err(anyhow!("unknown role {other:?} (none: the driver; child: started by it)")),
        None => devns::host::require_host_root("bench_loops").and_then(|()| driver()),
    };
    if let Err(e) = r {
        eprintln!("bench_loops: error: {e:#}");
        std::process::exit(1);
    }
}

// ---- the steps, the same on both sides ---------------------------------------

fn ioctl(fd: &impl AsRawFd, cmd: libc::c_ulong, arg: libc::c_ulong) -> Result<i32> {
    // SAFETY: the loop ioctls used with this helper take their argument by
    // value; `fd` is open for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), cmd, arg) };
    if r < 0 { Err(std::io::Error::last_os_error()).context(format!("ioctl {cmd:#x}")) } else { Ok(r) }
}

/// `LOOP_CONFIGURE` of `dev` with backing file `file` (`struct loop_config`:
/// fd, block size, `struct loop_info64`, reserved: 304 bytes, fd first).
fn configure(dev: &OwnedFd, file: &OwnedFd) -> Result<()> {
    let mut cfg = [0u8; 304];
    cfg[0..4].copy_from_slice(&(file.as_raw_fd() as u32).to_ne_bytes());
    // SAFETY: LOOP_CONFIGURE reads 304 bytes from `cfg`, which lives
    // through the call; the fd it names is open.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, cfg.as_ptr()) };
    if r < 0 { Err(std::io::Error::last_os_error()).context("LOOP_CONFIGURE") } else { Ok(()) }
}

fn open(path: &str) -> Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).with_context(|| format!("open {path}"))
}

/// One allocate-and-attach: its index and the open device.
fn allocate(img: &OwnedFd, add: bool) -> Result<(i32, OwnedFd)> {
    let ctl = open("/dev/loop-control")?;
    let n =
        if add { ioctl(&ctl, LOOP_CTL_ADD, u64::MAX as libc::c_ulong)? } else { ioctl(&ctl, LOOP_CTL_GET_FREE, 0)? };
    let dev = open(&format!("/dev/loop{n}"))?;
    configure(&dev, img)?;
    Ok((n, dev))
}

/// `child MODE CALLS IMG`: the timed loop, on either side; prints the
/// latencies (ns) as one JSON array.
fn child(args: &[String]) -> Result<()> {
    let [mode, calls, img] = args else { bail!("child MODE CALLS IMG") };
    let calls: usize = calls.parse()?;
    let mut out = Vec::with_capacity(calls);
    if mode == "losetup" {
        for _ in 0..calls {
            let t = Instant::now();
            let o = Command::new("losetup").args(["-f", "--show", img]).output()?;
            out.push(t.elapsed().as_nanos() as u64);
            ensure!(o.status.success(), "losetup: {}", String::from_utf8_lossy(&o.stderr));
            let dev = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            ensure!(Command::new("losetup").args(["-d", &dev]).status()?.success(), "losetup -d {dev}");
        }
    } else {
        let fresh = mode == "fresh";
        let host_add = mode == "host-fresh";
        let img = open(img)?;
        for _ in 0..calls {
            let t = Instant::now();
            let (n, dev) = allocate(&img, host_add)?;
            out.push(t.elapsed().as_nanos() as u64);
            ioctl(&dev, LOOP_CLR_FD, 0)?;
            drop(dev);
            if fresh || host_add {
                remove(n)?;
            }
        }
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// `LOOP_CTL_REMOVE`, retried while a close or udev's probe still holds it.
fn remove(n: i32) -> Result<()> {
    let ctl = open("/dev/loop-control")?;
    for _ in 0..200 {
        match ioctl(&ctl, LOOP_CTL_REMOVE, n as libc::c_ulong) {
            Ok(_) => return Ok(()),
            Err(_) if std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
    bail!("loop{n} still busy")
}

// ---- the driver ---------------------------------------------------------------

struct Work {
    dir: PathBuf,
    daemon: Option<std::process::Child>,
}

impl Drop for Work {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = rustix::mount::unmount(self.dir.join("state/views"), rustix::mount::UnmountFlags::DETACH);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stats(v: Vec<u64>) -> (f64, f64) {
    common::p50_p99(v)
}

fn run_child(cmd: &mut Command) -> Result<Vec<u64>> {
    let o = cmd.stdin(Stdio::null()).output()?;
    ensure!(o.status.success(), "{:?}: {}", cmd, String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().last().context("no output")?;
    Ok(serde_json::from_str(line)?)
}

fn driver() -> Result<()> {
    common::private_mount_ns()?;
    let devns = common::devns_binary()?;
    let me = std::env::current_exe()?;
    let dir = PathBuf::from(format!("/var/tmp/devns-bench-loops-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut work = Work { dir: dir.clone(), daemon: None };
    let img = dir.join("img");
    std::fs::File::create(&img)?.set_len(16 << 20)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o666))?;
    let img_s = img.to_string_lossy().into_owned();
    let with_env = |c: &mut Command, sock: &str| {
        c.env("DEVNS_STATE_DIR", dir.join("state"))
            .env("DEVNS_SOCKET", dir.join(sock))
            .env("DEVNS_CONFIG", dir.join("none.toml"))
            .env("DEVNS_LOG", "warn");
    };
    let mut d = Command::new(&devns);
    d.arg("daemon").stdout(Stdio::null()).stderr(std::fs::File::create(dir.join("daemon.log"))?);
    with_env(&mut d, "devns.sock");
    work.daemon = Some(d.spawn()?);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(dir.join("devns.sock")).is_err() {
        ensure!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let host =
        |mode: &str, calls: usize| run_child(Command::new(&me).args(["child", mode, &calls.to_string(), &img_s]));
    let inside = |sock: &str, mode: &str, calls: usize| {
        let mut c = Command::new(&devns);
        c.args(["run", "--"]).arg(&me).args(["child", mode, &calls.to_string(), &img_s]);
        with_env(&mut c, sock);
        run_child(&mut c)
    };
    println!(
        "allocate-and-attach, {CALLS} calls x {ROUNDS} rounds per side (losetup: {LOSETUP_CALLS}); p50 / p99 in µs"
    );
    for (label, mode, host_mode, calls) in [
        ("reuse", "reuse", "reuse", CALLS),
        ("fresh", "fresh", "host-fresh", CALLS),
        ("losetup -f --show", "losetup", "losetup", LOSETUP_CALLS),
    ] {
        let (mut h, mut dd, mut sa) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            h.extend(host(host_mode, calls)?);
            dd.extend(inside("devns.sock", mode, calls)?);
            // No daemon listens at this socket: the run is its own agent.
            sa.extend(inside("none.sock", mode, calls)?);
        }
        let (hs, ds, ss) = (stats(h), stats(dd), stats(sa));
        println!(
            "{label:>18}: host root {:>7.1} / {:>7.1}   daemon {:>7.1} / {:>7.1} ({:.2}x / {:.2}x)   stand-alone {:>7.1} / {:>7.1} ({:.2}x / {:.2}x)",
            hs.0,
            hs.1,
            ds.0,
            ds.1,
            ds.0 / hs.0,
            ds.1 / hs.1,
            ss.0,
            ss.1,
            ss.0 / hs.0,
            ss.1 / hs.1
        );
    }
    cleanup_latency(&devns, &img_s, &with_env)?;
    startup(&devns, &with_env)?;
    drop(work);
    Ok(())
}

/// Who is killed in a cleanup sample.
#[derive(Clone, Copy, PartialEq)]
enum Killed {
    /// The container's init, its keeper the daemon.
    InitOfDaemons,
    /// The keeper of a stand-alone run (its container dies with it; its
    /// watcher cleans up).
    StandAloneKeeper,
}

/// A container takes two devices (one attached) and is killed, through the
/// daemon and stand-alone, in turns; the time until both are removed,
/// against host root removing two such devices itself.
fn cleanup_latency(devns: &Path, img: &str, with_env: &dyn Fn(&mut Command, &str)) -> Result<()> {
    let (mut daemon, mut alone, mut ours) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..CLEANUPS {
        daemon.push(cleanup_once(devns, img, with_env, Killed::InitOfDaemons)?);
        alone.push(cleanup_once(devns, img, with_env, Killed::StandAloneKeeper)?);
        ours.push(host_cleanup(img)?);
    }
    let (d, a, o) = (stats(daemon), stats(alone), stats(ours));
    println!(
        "cleanup of a killed container's 2 loop devices (1 attached), {CLEANUPS} times: p50 {:.1} µs, p99 {:.1} µs after SIGKILL; host root doing the same itself: p50 {:.1} µs, p99 {:.1} µs ({:.2}x / {:.2}x)",
        d.0,
        d.1,
        o.0,
        o.1,
        d.0 / o.0,
        d.1 / o.1
    );
    println!(
        "the same, stand-alone, its keeper SIGKILLed (its watcher cleans up): p50 {:.1} µs, p99 {:.1} µs ({:.2}x / {:.2}x host root's, {:.2}x / {:.2}x the daemon's)",
        a.0,
        a.1,
        a.0 / o.0,
        a.1 / o.1,
        a.0 / d.0,
        a.1 / d.1
    );
    Ok(())
}

/// One sample: the time from the SIGKILL until both devices are gone.
fn cleanup_once(devns: &Path, img: &str, with_env: &dyn Fn(&mut Command, &str), killed: Killed) -> Result<u64> {
    // A device's identity for its life: its sysfs directory's inode (a new
    // device at the index has another; a detach, unlike DISKSEQ, keeps it).
    let ino = |n: &str| rustix::fs::stat(format!("/sys/class/block/{n}")).ok().map(|s| s.st_ino);
    let script = format!("losetup -f --show {img}; losetup -f; echo ready; exec sleep 1000");
    let mut c = Command::new(devns);
    c.args(["run", "--", "sh", "-c", &script]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    // No daemon listens at `none.sock`: the run is its own keeper.
    with_env(&mut c, if killed == Killed::InitOfDaemons { "devns.sock" } else { "none.sock" });
    let mut child = c.spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut devs = Vec::new();
    for l in lines.by_ref() {
        let l = l?;
        if l == "ready" {
            break;
        }
        devs.push(l.trim_start_matches("/dev/").to_owned());
    }
    ensure!(devs.len() == 2, "the container printed {devs:?}");
    let inos: Vec<(String, Option<u64>)> = devs.iter().map(|d| (d.clone(), ino(d))).collect();
    let victim = match killed {
        Killed::InitOfDaemons => {
            let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))?;
            kids.split_whitespace().next().context("no container init")?.parse()?
        }
        Killed::StandAloneKeeper => child.id() as i32,
    };
    let t = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(victim).context("pid")?,
        rustix::process::Signal::KILL,
    )?;
    while inos.iter().any(|(d, i)| ino(d) == *i) {
        ensure!(t.elapsed() < Duration::from_secs(10), "the container's devices are still there after 10 s");
        std::thread::sleep(Duration::from_micros(200));
    }
    let took = t.elapsed().as_nanos() as u64;
    let _ = child.wait();
    Ok(took)
}

/// Host root: the same two devices' worth of work, itself.
fn host_cleanup(img: &str) -> Result<u64> {
    let f = open(img)?;
    let (a, da) = allocate(&f, true)?;
    let ctl = open("/dev/loop-control")?;
    let b = ioctl(&ctl, LOOP_CTL_ADD, u64::MAX as libc::c_ulong)?;
    let t = Instant::now();
    ioctl(&da, LOOP_CLR_FD, 0)?;
    drop(da);
    remove(a)?;
    remove(b)?;
    Ok(t.elapsed().as_nanos() as u64)
}

/// Timed stand-alone `devns run -- true` runs per binary.
const STARTS: usize = 100;

/// What a stand-alone `devns run -- true` costs from spawn to exit (its
/// watcher's fork and end included), against `DEVNS_BENCH_BEFORE_BIN` (the
/// binary of the tree before, in turns with this one) when that is set.
fn startup(devns: &Path, with_env: &dyn Fn(&mut Command, &str)) -> Result<()> {
    let before = std::env::var_os("DEVNS_BENCH_BEFORE_BIN").map(PathBuf::from);
    let once = |bin: &Path| -> Result<u64> {
        let mut c = Command::new(bin);
        c.args(["run", "--", "true"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        with_env(&mut c, "none.sock");
        let t = Instant::now();
        let st = c.status()?;
        let took = t.elapsed().as_nanos() as u64;
        ensure!(st.success(), "{} run -- true: {st}", bin.display());
        Ok(took)
    };
    let (mut now, mut then) = (Vec::new(), Vec::new());
    for _ in 0..STARTS {
        now.push(once(devns)?);
        if let Some(b) = &before {
            then.push(once(b)?);
        }
    }
    let n = stats(now);
    match before {
        Some(b) => {
            let t = stats(then);
            println!(
                "stand-alone `devns run -- true`, {STARTS} times: p50 {:.1} µs, p99 {:.1} µs; before ({}): p50 {:.1} µs, p99 {:.1} µs ({:.2}x / {:.2}x)",
                n.0,
                n.1,
                b.display(),
                t.0,
                t.1,
                n.0 / t.0,
                n.1 / t.1
            );
        }
        None => println!("stand-alone `devns run -- true`, {STARTS} times: p50 {:.1} µs, p99 {:.1} µs", n.0, n.1),
    }
    Ok(())
}
