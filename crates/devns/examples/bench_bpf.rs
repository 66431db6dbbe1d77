//! What one change of a container's device policy costs: devns's way, one
//! `BPF_MAP_UPDATE_ELEM` (allow a device) or `BPF_MAP_DELETE_ELEM` (take it
//! back) on the map of a program attached to a real cgroup, against what
//! runc, crun and youki do, in the same run: generate a program with every
//! rule inline (a compare-and-jump chain per rule, as runc's
//! `devicefilter`), `BPF_PROG_LOAD` it (the verifier included), attach it
//! with `BPF_F_ALLOW_MULTI` and detach the one it replaces.
//!
//! For N = 10, 100 and 1,000 allowed devices. Each sample is one change:
//! allowing one more device (N → N + 1), or taking it back (N + 1 → N);
//! the two ways and both directions alternate, their order rotating.
//! Before any timing, a process in each cgroup opens a node of the
//! changing device (`c 1:3`, mode 0666): both ways must allow it after the
//! change and refuse it (`EPERM`) after the change back.
//!
//! Run as host root: `cargo run --release --example bench_bpf`. The
//! cgroups (below the bench's own: `devns-bench-bpf-PID/{devns,baseline}`),
//! the probing processes and the node's directory are removed on every
//! exit path, Ctrl-C included (SIGINT, SIGTERM and SIGHUP are taken by a
//! signalfd and checked between samples).

mod common;

use anyhow::{Context, Result, anyhow, bail, ensure};
use devns_core::bpf::{ACC_ALL, Key, inline_program, to_bytes};
use devns_sys::bpf as sys;
use rustix::fd::OwnedFd;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

const SIZES: [usize; 3] = [10, 100, 1000];
/// Changes timed per way, direction and size, after `WARMUP` untimed.
const SAMPLES: usize = 200;
const WARMUP: usize = 10;
/// The device whose access changes (null: harmless to open).
const CHANGING: Key = Key { ty: 2, major: 1, minor: 3 };

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("probe") => probe(),
        Some(other) => Err(anyhow!("unknown role {other:?} (none: the driver; probe: started by it)")),
        None => devns::host::require_host_root("bench_bpf").and_then(|()| driver()),
    };
    if let Err(e) = r {
        eprintln!("bench_bpf: error: {e:#}");
        std::process::exit(1);
    }
}

/// `probe`: for each path read on stdin, opens it and answers `ok` or the
/// errno's name. Runs inside a cgroup under test.
fn probe() -> Result<()> {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let path = line?;
        let answer = match std::fs::File::open(&path) {
            Ok(_) => "ok".to_owned(),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => "EPERM".to_owned(),
            Err(e) => e.to_string(),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}

/// A probe process, in a cgroup.
struct Prober {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Prober {
    fn start(cgroup: &Path) -> Result<Prober> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("probe")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a probe")?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let p = Prober { child, stdin, stdout };
        // It opens nothing before it is asked, so it is in the cgroup first.
        devns::cgroup::move_pid(cgroup, p.child.id() as i32)?;
        Ok(p)
    }

    fn open(&mut self, path: &Path) -> Result<String> {
        writeln!(self.stdin, "{}", path.display())?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(line.trim().to_owned())
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything the bench made; undone on drop, whatever happened.
struct Work {
    top: PathBuf,
    dir: PathBuf,
    probers: Vec<Prober>,
    /// The baseline's cgroup, and its program attached there now.
    base_cg: Option<OwnedFd>,
    base_prog: Option<OwnedFd>,
}

impl Drop for Work {
    fn drop(&mut self) {
        self.probers.clear();
        if let (Some(prog), Some(cg)) = (self.base_prog.take(), self.base_cg.as_ref()) {
            let _ = sys::prog_detach(&prog, cg, sys::BPF_CGROUP_DEVICE);
        }
        if let Err(e) = devns::cgroup::remove(&self.top, std::time::Duration::from_secs(5)) {
            eprintln!("bench_bpf: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// N devices to allow besides the changing one (made-up numbers: the map
/// and the rules do not care whether a device exists).
fn fillers(n: usize) -> Vec<(Key, u32)> {
    (0..n).map(|i| (Key { ty: 1, major: 300 + (i / 256) as u32, minor: (i % 256) as u32 }, ACC_ALL)).collect()
}

/// The baseline's change: a program of `rules` generated, loaded,
/// attached, and the previous one detached. Returns the load's own time.
fn swap_program(cg: &OwnedFd, current: &mut Option<OwnedFd>, rules: &[(Key, u32)]) -> Result<u64> {
    let insns = to_bytes(&inline_program(rules));
    let t = Instant::now();
    let prog = sys::prog_load(sys::BPF_PROG_TYPE_CGROUP_DEVICE, &insns, "GPL", "baseline")?;
    let load = t.elapsed().as_nanos() as u64;
    sys::prog_attach(&prog, cg, sys::BPF_CGROUP_DEVICE, sys::BPF_F_ALLOW_MULTI)?;
    if let Some(old) = current.replace(prog) {
        sys::prog_detach(&old, cg, sys::BPF_CGROUP_DEVICE)?;
    }
    Ok(load)
}

/// devns's change and its change back: allowing the changing device in
/// the map, then removing it; the two times in ns.
fn map_change(map: &devns::bpf::DeviceMap) -> Result<(u64, u64)> {
    let (k, v) = (CHANGING.to_bytes(), ACC_ALL.to_ne_bytes());
    let t = Instant::now();
    map.update(&k, &v)?;
    let allow = t.elapsed().as_nanos() as u64;
    let t = Instant::now();
    map.delete(&k)?;
    Ok((allow, t.elapsed().as_nanos() as u64))
}

struct Row {
    n: usize,
    devns_allow: (f64, f64),
    devns_revoke: (f64, f64),
    base_allow: (f64, f64),
    base_revoke: (f64, f64),
    base_load: (f64, f64),
    alone_allow: (f64, f64),
    alone_revoke: (f64, f64),
}

fn driver() -> Result<()> {
    let signals = devns_sys::signal::SignalFd::new(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])?;
    let interrupted = || -> Result<()> {
        if signals.read()?.is_some() {
            bail!("interrupted");
        }
        Ok(())
    };
    // A cgroup2 mount devns might make (on a host without one) goes with it.
    common::private_mount_ns()?;
    let h = devns::cgroup::Hierarchy::find_or_mount(Path::new("/run/devns/state"))?;
    let top = h.of("self")?.join(format!("devns-bench-bpf-{}", std::process::id()));
    let dir = PathBuf::from(format!("/var/tmp/devns-bench-bpf-{}", std::process::id()));
    devns::cgroup::create(&top)?;
    let mut work = Work { top: top.clone(), dir: dir.clone(), probers: Vec::new(), base_cg: None, base_prog: None };
    std::fs::create_dir_all(&dir)?;
    let node = dir.join("null");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &node,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(CHANGING.major, CHANGING.minor),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666))?;
    let (cg_devns, cg_base) = (top.join("devns"), top.join("baseline"));
    devns::cgroup::create(&cg_devns)?;
    devns::cgroup::create(&cg_base)?;
    work.base_cg = Some(devns::cgroup::open(&cg_base)?);

    // devns's way: its own program and map, on a cgroup of their own.
    let mut policy = devns::bpf::AccessPolicy::new(&cg_devns, true)?;
    policy.attach()?;
    work.probers.push(Prober::start(&cg_devns)?);
    work.probers.push(Prober::start(&cg_base)?);
    let (map, _) = devns::bpf::DeviceMap::by_id(policy.ids().1)?;
    let (k, v) = (CHANGING.to_bytes(), ACC_ALL.to_ne_bytes());
    println!("one change of a device policy, {SAMPLES} samples per way, direction and N; p50 / p99 in µs");
    let mut rows = Vec::new();
    for n in SIZES {
        interrupted()?;
        let fill: std::collections::BTreeMap<Key, u32> = fillers(n).into_iter().collect();
        policy.apply_desired(&fill)?;
        let (mut da, mut dr, mut ba, mut br, mut bl) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut ca, mut cr) = (vec![], vec![]);
        let with: Vec<(Key, u32)> = fill.iter().map(|(k, v)| (*k, *v)).chain([(CHANGING, ACC_ALL)]).collect();
        let without: Vec<(Key, u32)> = fill.iter().map(|(k, v)| (*k, *v)).collect();
        let base_cg = work.base_cg.take().expect("opened");
        let result = (|| -> Result<()> {
            swap_program(&base_cg, &mut work.base_prog, &without)?;
            // Same verdicts both ways, before anything is timed.
            let [pd, pb] = &mut work.probers[..] else { unreachable!() };
            let refused = |pd: &mut Prober, pb: &mut Prober| -> Result<bool> {
                Ok(pd.open(&node)? == "EPERM" && pb.open(&node)? == "EPERM")
            };
            ensure!(refused(pd, pb)?, "N={n}: not refused before the change");
            map.update(&k, &v)?;
            swap_program(&base_cg, &mut work.base_prog, &with)?;
            let (d, b) = (pd.open(&node)?, pb.open(&node)?);
            ensure!(d == "ok" && b == "ok", "N={n}: after the change devns says {d}, the baseline {b}");
            map.delete(&k)?;
            swap_program(&base_cg, &mut work.base_prog, &without)?;
            ensure!(refused(pd, pb)?, "N={n}: not refused after the change back");

            for i in 0..WARMUP + SAMPLES {
                interrupted()?;
                let keep = i >= WARMUP;
                for step in 0..2 {
                    // Rotate which way goes first.
                    if (i + step) % 2 == 0 {
                        let (a, r) = map_change(&map)?;
                        if keep {
                            da.push(a);
                            dr.push(r);
                        }
                    } else {
                        let t = Instant::now();
                        let la = swap_program(&base_cg, &mut work.base_prog, &with)?;
                        let a = t.elapsed().as_nanos() as u64;
                        let t = Instant::now();
                        let lr = swap_program(&base_cg, &mut work.base_prog, &without)?;
                        let r = t.elapsed().as_nanos() as u64;
                        if keep {
                            ba.push(a);
                            br.push(r);
                            bl.extend([la, lr]);
                        }
                    }
                }
            }
            // Control: devns's changes alone, without the baseline's
            // program loads between them (which leave caches cold).
            for i in 0..WARMUP + SAMPLES {
                interrupted()?;
                let (a, r) = map_change(&map)?;
                if i >= WARMUP {
                    ca.push(a);
                    cr.push(r);
                }
            }
            Ok(())
        })();
        work.base_cg = Some(base_cg);
        result?;
        let row = Row {
            n,
            devns_allow: common::p50_p99(da),
            devns_revoke: common::p50_p99(dr),
            base_allow: common::p50_p99(ba),
            base_revoke: common::p50_p99(br),
            base_load: common::p50_p99(bl),
            alone_allow: common::p50_p99(ca),
            alone_revoke: common::p50_p99(cr),
        };
        println!(
            "N={n:>4}: devns allow {:.1} / {:.1}, revoke {:.1} / {:.1} (alone: {:.1} / {:.1}, {:.1} / {:.1}); baseline allow {:.0} / {:.0}, revoke {:.0} / {:.0} (load alone {:.0} / {:.0})",
            row.devns_allow.0,
            row.devns_allow.1,
            row.devns_revoke.0,
            row.devns_revoke.1,
            row.alone_allow.0,
            row.alone_allow.1,
            row.alone_revoke.0,
            row.alone_revoke.1,
            row.base_allow.0,
            row.base_allow.1,
            row.base_revoke.0,
            row.base_revoke.1,
            row.base_load.0,
            row.base_load.1
        );
        rows.push(row);
    }
    println!();
    println!(
        "| N | devns: allow µs | devns: revoke µs | baseline: allow µs | baseline: revoke µs | ratio allow | ratio revoke | baseline: load alone µs | devns alone: allow / revoke µs |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.1} / {:.1} |",
            r.n,
            r.devns_allow.0,
            r.devns_allow.1,
            r.devns_revoke.0,
            r.devns_revoke.1,
            r.base_allow.0,
            r.base_allow.1,
            r.base_revoke.0,
            r.base_revoke.1,
            r.base_allow.0 / r.devns_allow.0,
            r.base_allow.1 / r.devns_allow.1,
            r.base_revoke.0 / r.devns_revoke.0,
            r.base_revoke.1 / r.devns_revoke.1,
            r.base_load.0,
            r.base_load.1,
            r.alone_allow.0,
            r.alone_revoke.0,
        );
    }
    drop(policy);
    drop(work);
    Ok(())
}
