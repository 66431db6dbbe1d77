//! What the benchmark programs share.
// Each benchmark uses part of this.
#![allow(dead_code)]

use anyhow::{Context, Result};
use rustix::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// `DEVNS_BENCH_BIN`, else `devns` in the directory above the example's
/// own (`target/release/examples/X` → `target/release/devns`), which should
/// be this tree's: a warning says when the sources are newer.
pub fn devns_binary() -> Result<PathBuf> {
    if let Some(b) = std::env::var_os("DEVNS_BENCH_BIN") {
        return Ok(PathBuf::from(b));
    }
    let exe = std::env::current_exe()?;
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join("devns")).context("no directory above the example")?;
    let built = std::fs::metadata(&bin)
        .with_context(|| format!("no devns binary at {} (run `cargo build --release` first)", bin.display()))?
        .modified()?;
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest =
        ["devns/src", "devns-core/src", "devns-sys/src"].iter().filter_map(|d| newest_mtime(&crates.join(d))).max();
    if newest.is_some_and(|n| n > built) {
        eprintln!("warning: {} is older than the sources; run `cargo build --release` first", bin.display());
    }
    Ok(bin)
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let m = e.metadata().ok()?;
        let t = if m.is_dir() { newest_mtime(&e.path()) } else { m.modified().ok() };
        newest = newest.max(t);
    }
    newest
}

// ---- block devices ---------------------------------------------------------

const BLKPG: libc::c_ulong = 0x1269;
pub const BLKPG_ADD_PARTITION: libc::c_int = 1;
pub const BLKPG_DEL_PARTITION: libc::c_int = 2;
pub const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;

/// `struct blkpg_partition` (`linux/blkpg.h`).
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: libc::c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg` (`linux/blkpg.h`).
#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// Adds or deletes partition `pno` of the disk open at `disk` (what
/// `partx -a`/`-d` do), in bytes.
pub fn blkpg(disk: &OwnedFd, op: libc::c_int, pno: i32, start: i64, length: i64) -> Result<()> {
    let mut part = BlkpgPartition { start, length, pno, devname: [0; 64], volname: [0; 64] };
    let mut arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: BLKPG reads one blkpg_ioctl_arg, whose `data` points at a
    // blkpg_partition of `datalen` bytes; both are repr(C) copies of the
    // kernel's structs and outlive the call.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(disk), BLKPG, &mut arg as *mut BlkpgIoctlArg) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

pub fn loop_names() -> Vec<String> {
    std::fs::read_dir("/sys/block")
        .map(|d| {
            d.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| n.starts_with("loop")).collect()
        })
        .unwrap_or_default()
}

/// A loop device a benchmark attached; `created` when attaching made it.
pub struct Loop {
    pub name: String,
    pub created: bool,
}

/// `losetup -f --show [-P] FILE`, remembered in `loops` for the cleanup.
pub fn attach_loop(loops: &mut Vec<Loop>, file: &Path, partscan: bool) -> Result<String> {
    let before = loop_names();
    let file = file.to_str().with_context(|| format!("{} is not UTF-8", file.display()))?;
    let mut args = vec!["-f", "--show"];
    if partscan {
        args.push("-P");
    }
    args.push(file);
    let out = sh("losetup", &args, None)?;
    let dev = out.trim().strip_prefix("/dev/").with_context(|| format!("losetup printed {out:?}"))?.to_owned();
    loops.push(Loop { created: !before.contains(&dev), name: dev.clone() });
    Ok(dev)
}

/// `losetup -d`, then `LOOP_CTL_REMOVE` if this run created the device.
pub fn detach_loop(l: &Loop) -> Result<()> {
    use rustix::fd::AsRawFd;
    sh("losetup", &["-d", &format!("/dev/{}", l.name)], None)?;
    if !l.created {
        return Ok(());
    }
    let index: libc::c_ulong = l.name.trim_start_matches("loop").parse()?;
    let ctl = rustix::fs::open(
        "/dev/loop-control",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    // The detach may finish asynchronously; the device is busy until then.
    for _ in 0..100 {
        // SAFETY: LOOP_CTL_REMOVE takes the device index by value.
        let rc = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_REMOVE, index) };
        if rc >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e).context("LOOP_CTL_REMOVE");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    anyhow::bail!("LOOP_CTL_REMOVE: still busy after 1 s")
}

/// Runs `cmd ARGS` (with `stdin` piped in, if any) and returns its stdout.
pub fn sh(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut c = std::process::Command::new(cmd);
    c.args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    c.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
    let mut child = c.spawn().with_context(|| format!("running {cmd}"))?;
    if let Some(input) = stdin {
        child.stdin.take().expect("piped").write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd} {}: {} {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The end of a daemon benchmark's teardown: unmount the daemon's view
/// mounts, show what it logged, detach the loop devices, remove the work
/// directory (a tmpfs of its own when `work_is_tmpfs`). Collects problems
/// and goes on.
pub fn teardown_work(work: Option<PathBuf>, work_is_tmpfs: bool, loops: &mut Vec<Loop>, problems: &mut Vec<String>) {
    use rustix::mount::UnmountFlags;
    if let Some(work) = &work {
        // MNT_DETACH takes the whole tree below it.
        let _ = rustix::mount::unmount(work.join("state/views"), UnmountFlags::DETACH);
        // Anything the daemon logged (at its default level: warnings).
        let log = std::fs::read_to_string(work.join("daemon.log")).unwrap_or_default();
        if !log.trim().is_empty() {
            eprintln!("the daemon logged {} lines; the first ones:", log.lines().count());
            for l in log.lines().take(10) {
                eprintln!("  {l}");
            }
        }
    }
    for l in loops.drain(..) {
        if let Err(e) = detach_loop(&l) {
            problems.push(format!("{}: {e:#}", l.name));
        }
    }
    if let Some(work) = work {
        if work_is_tmpfs {
            let _ = rustix::mount::unmount(&work, UnmountFlags::DETACH);
        }
        if let Err(e) = std::fs::remove_dir_all(&work) {
            problems.push(format!("removing {}: {e}", work.display()));
        }
    }
}

/// Samples per size: `DEVNS_BENCH_SAMPLES`, else `default`.
pub fn samples(default: usize) -> Result<usize> {
    match std::env::var("DEVNS_BENCH_SAMPLES") {
        Ok(v) => v.parse().ok().filter(|n| *n > 0).context("DEVNS_BENCH_SAMPLES: a positive number"),
        Err(_) => Ok(default),
    }
}

/// Moves the benchmark into a private mount namespace, so none of its
/// mounts reach the host and all of them go when it exits.
pub fn private_mount_ns() -> Result<()> {
    use rustix::mount::MountPropagationFlags;
    // SAFETY: only CLONE_NEWNS is unshared, not the fd table (the hazard
    // `unshare_unsafe` warns of), and the benchmark is single-threaded here.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }.context("unshare(CLONE_NEWNS)")?;
    rustix::mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)
        .context("making / private")
}

/// p50 and p99 (nearest rank) of nanosecond samples, in µs (NaN for none).
pub fn p50_p99(mut v: Vec<u64>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
    (at(0.5), at(0.99))
}
