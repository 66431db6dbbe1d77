//! How long it takes to create and mount a view with the default global set,
//! and how much kernel memory each costs, at 1, 100 and 1,000 concurrent
//! views; against the way runtimes give a user-namespaced container its
//! nodes (a tmpfs, then one empty file and one bind mount per node), measured
//! in the same run because the machine is shared and noisy.
//!
//! Run as host root: `cargo run --release --example bench_views`. Everything
//! is mounted in a private mount namespace, so the host never sees it.

use anyhow::{Context, Result, bail, ensure};
use devns_core::idmap::IdMap;
use devns_core::view::{Entry, ViewPlan};
use rustix::fs::{AtFlags, CWD, Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, MoveMountFlags, UnmountFlags};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// (concurrent views, repetitions): small rounds are repeated more because a
/// single view takes microseconds and one sample is mostly noise.
const ROUNDS: &[(usize, usize)] = &[(1, 51), (100, 11), (1000, 7)];

#[derive(Clone, Copy, PartialEq)]
enum Way {
    Devns,
    BindMounts,
}

/// One measurement of one way at one size.
struct Sample {
    us_per_view: f64,
    used_kib: f64,
    slab_kib: f64,
}

fn main() {
    if let Err(e) = devns::host::require_host_root("bench_views") {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The temp dir, with a tmpfs on it that holds every mountpoint; dropping it
/// detaches that tmpfs (and all below it) and removes the dir, on every path.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, UnmountFlags::DETACH);
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn run() -> Result<()> {
    // SAFETY: only CLONE_NEWNS is unshared, not the fd table (the hazard
    // `unshare_unsafe` warns of), and this process has a single thread.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }.context("unshare(CLONE_NEWNS)")?;
    rustix::mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)
        .context("making / private")?;

    let devs = devns::discover::host_devices()?;
    let registry = devns_core::Registry::new(devs, &devns_core::config::Config::default().global);
    let devices = registry.view_devices(devns_core::NsId(1));
    let ids = IdMap::single(100_000, 65_536);
    let plan = devns_core::view::plan(&devices, &ids, &ids, devns::host::overflow_ids());

    let work = WorkDir(std::env::temp_dir().join(format!("devns-bench-{}", std::process::id())));
    std::fs::create_dir(&work.0).with_context(|| format!("mkdir {}", work.0.display()))?;
    rustix::mount::mount("tmpfs", &work.0, "tmpfs", MountFlags::empty(), None).context("mounting the work tmpfs")?;
    let baseline_opts = CString::new(format!(
        "mode=0755,uid={},gid={},size={},nr_inodes={}",
        plan.root_uid,
        plan.root_gid,
        devns::view::VIEW_SIZE,
        devns::view::VIEW_INODES
    ))?;
    let mounts = mount_count()?;

    check_same_contents(&plan, &work.0, &baseline_opts, mounts)?;

    let release = rustix::system::uname().release().to_string_lossy().into_owned();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output()?;
    println!("date: {}", String::from_utf8_lossy(&date.stdout).trim());
    println!("kernel: {release}, nproc: {nproc}");
    let names: Vec<&str> = plan.entries.iter().filter(|e| matches!(e, Entry::Node { .. })).map(Entry::path).collect();
    println!("view: {} entries; nodes: {}", plan.entries.len(), names.join(" "));
    println!();
    println!(
        "| N | devns µs/view | bind-mount µs/view | ratio | devns KiB/view | baseline KiB/view | devns slab KiB/view | baseline slab KiB/view |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &(n, reps) in ROUNDS {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            // Alternating which way goes first spreads drift over both.
            let order = if rep % 2 == 0 { [Way::Devns, Way::BindMounts] } else { [Way::BindMounts, Way::Devns] };
            for way in order {
                let s = measure(way, n, &plan, &work.0, &baseline_opts, mounts)?;
                if way == Way::Devns { ours.push(s) } else { theirs.push(s) }
            }
        }
        let med = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
        let (a, b) = (med(&ours, |s| s.us_per_view), med(&theirs, |s| s.us_per_view));
        // One view's objects fit in slab pages the kernel already has, so
        // /proc/meminfo (page-granular) cannot see it.
        let kib = |v: &[Sample], f: fn(&Sample) -> f64| if n == 1 { "—".into() } else { format!("{:.1}", med(v, f)) };
        println!(
            "| {n} | {a:.1} | {b:.1} | {:.2} | {} | {} | {} | {} |",
            b / a,
            kib(&ours, |s| s.used_kib),
            kib(&theirs, |s| s.used_kib),
            kib(&ours, |s| s.slab_kib),
            kib(&theirs, |s| s.slab_kib),
        );
    }
    println!();
    println!("µs: median wall time per view; ratio: bind-mount / devns (>1: devns faster).");
    println!("KiB: median change per view of MemTotal-MemAvailable and of Slab; — at N=1: below page granularity.");
    ensure!(mount_count()? == mounts, "mounts leaked");
    Ok(())
}

/// Makes `n` containers' `/dev` the given way below a fresh tmpfs, and
/// returns the time and memory they took; then removes them all.
fn measure(way: Way, n: usize, plan: &ViewPlan, work: &Path, opts: &CString, mounts: usize) -> Result<Sample> {
    let round = work.join("round");
    std::fs::create_dir(&round)?;
    // One tmpfs per round, so one lazy unmount tears every mount below it
    // down, even after an error halfway.
    rustix::mount::mount("tmpfs", &round, "tmpfs", MountFlags::empty(), None)?;
    let result = measure_in(way, n, plan, &round, opts);
    rustix::mount::unmount(&round, UnmountFlags::DETACH)?;
    std::fs::remove_dir(&round)?;
    let left = mount_count()?;
    ensure!(left == mounts, "{left} mounts after teardown, {mounts} before");
    // Freeing superblocks and mounts is partly RCU-deferred; let it finish
    // before the next round reads its starting memory.
    std::thread::sleep(Duration::from_millis(50));
    result
}

fn measure_in(way: Way, n: usize, plan: &ViewPlan, round: &Path, opts: &CString) -> Result<Sample> {
    // The mountpoints exist beforehand, as a container's `/dev` does.
    let dirs: Vec<PathBuf> = (0..n).map(|i| round.join(i.to_string())).collect();
    for d in &dirs {
        std::fs::create_dir(d)?;
    }
    let before = meminfo()?;
    let start = Instant::now();
    for d in &dirs {
        match way {
            Way::Devns => devns_view(plan, d)?,
            Way::BindMounts => bind_view(plan, d, opts)?,
        }
    }
    let elapsed = start.elapsed();
    let after = meminfo()?;
    let per_view = |a: i64, b: i64| (a - b) as f64 / n as f64;
    Ok(Sample {
        us_per_view: elapsed.as_secs_f64() * 1e6 / n as f64,
        used_kib: per_view(after.0, before.0),
        slab_kib: per_view(after.1, before.1),
    })
}

/// What `devns run` does for a container's `/dev`.
fn devns_view(plan: &ViewPlan, dir: &Path) -> Result<()> {
    let view = devns::view::create(plan)?;
    rustix::mount::move_mount(&view, "", CWD, dir, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)?;
    Ok(())
}

/// What runc, crun and youki do in a user namespace, where mknod is denied:
/// a tmpfs, and each node an empty file with the host's node bound over it.
fn bind_view(plan: &ViewPlan, dir: &Path, opts: &CString) -> Result<()> {
    let flags = MountFlags::NOSUID | MountFlags::NOEXEC;
    rustix::mount::mount("tmpfs", dir, "tmpfs", flags, opts.as_c_str())?;
    let root = rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    for e in &plan.entries {
        match e {
            Entry::Node { path, dev, .. } => {
                let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC;
                drop(rustix::fs::openat(&root, path.as_str(), flags, Mode::from_raw_mode(0o644))?);
                // The host's node of the same device: the view's loop-control
                // is a stand-in, the null device, not the host's loop-control.
                let stand_in =
                    path == devns_core::view::LOOP_CONTROL && *dev == devns_core::view::LOOP_CONTROL_STAND_IN;
                let host = if stand_in { Path::new("/dev/null").to_owned() } else { Path::new("/dev").join(path) };
                rustix::mount::mount_bind(host, dir.join(path))?;
            }
            other => devns::view::apply(&root, &[devns_core::view::Op::Create(other.clone())])?,
        }
    }
    Ok(())
}

/// Both ways must give a container the same names, types and devices, or
/// the comparison means nothing.
fn check_same_contents(plan: &ViewPlan, work: &Path, opts: &CString, mounts: usize) -> Result<()> {
    let (a, b) = (work.join("check-devns"), work.join("check-bind"));
    std::fs::create_dir(&a)?;
    std::fs::create_dir(&b)?;
    let made = devns_view(plan, &a).and_then(|()| bind_view(plan, &b, opts));
    let compared = made.and_then(|()| {
        for e in &plan.entries {
            let st = |d: &Path| rustix::fs::statat(CWD, d.join(e.path()), AtFlags::SYMLINK_NOFOLLOW);
            let (x, y) = (st(&a)?, st(&b)?);
            let kind = |m: u32| rustix::fs::FileType::from_raw_mode(m);
            if kind(x.st_mode) != kind(y.st_mode) || x.st_rdev != y.st_rdev {
                bail!("{} differs between the two ways", e.path());
            }
        }
        Ok(())
    });
    for d in [&a, &b] {
        let _ = rustix::mount::unmount(d, UnmountFlags::DETACH);
        std::fs::remove_dir(d)?;
    }
    ensure!(mount_count()? == mounts, "mounts leaked by the contents check");
    compared
}

fn mount_count() -> Result<usize> {
    Ok(std::fs::read_to_string("/proc/self/mountinfo")?.lines().count())
}

/// (MemTotal - MemAvailable, Slab) in KiB.
fn meminfo() -> Result<(i64, i64)> {
    // Per-CPU counter deltas reach /proc/meminfo only every second unless
    // folded in now; without this, small rounds read stale numbers.
    let _ = std::fs::write("/proc/sys/vm/stat_refresh", "1");
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let field = |name: &str| -> Result<i64> {
        let line = text.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name} in /proc/meminfo"))?;
        Ok(line[name.len()..].trim().trim_end_matches("kB").trim().parse()?)
    };
    Ok((field("MemTotal:")? - field("MemAvailable:")?, field("Slab:")?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}
