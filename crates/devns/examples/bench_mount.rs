//! What a container's mount of its own block device costs (issue 14): a
//! sequential write and read of a 256 MiB file and an untar of a source
//! tree (`/usr/include/linux` and `/usr/include/c++`, about 1,600 files),
//! on one ext4 image on a loop device, mounted three ways in the same run:
//!
//! - `host`: host root's own kernel mount of the image (the baseline);
//! - `fuse`: inside a stand-alone `devns run` container, its own loop
//!   device mounted with `mount`, served by fuse2fs (devns's default);
//! - `kernel`: the same with `mount_kernel = ["ext4"]` in the config: the
//!   kernel's ext4, id-mapped.
//!
//! Each step is timed from the benchmark, around one command sent to a
//! shell on that side (`dd ... conv=fsync`, `dd` to /dev/null after the
//! page cache was dropped, `tar -x` then `sync`); the ways take turns in
//! each round, and the table shows each way's median over the rounds and
//! its ratio to `host`'s median of the same run.
//!
//! Run as host root: `cargo build --release && cargo run --release --example
//! bench_mount` (`DEVNS_BENCH_SAMPLES` rounds, default 3). Needs fuse2fs.
//! Everything runs in a private mount namespace; the work dir
//! (`/var/tmp/devns-bench-mount-PID`) and the loop device are removed on the
//! way out.

mod common;

use anyhow::{Context, Result, bail, ensure};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE_MIB: u64 = 640;
const STEPS: &[&str] = &["write 256 MiB", "read 256 MiB", "untar tree"];
const WAYS: &[&str] = &["host", "fuse", "kernel"];

/// A shell on one side, run one command at a time.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl Shell {
    fn start(mut cmd: Command) -> Result<Shell> {
        cmd.args(["sh", "-c", "echo ready; while read -r c; do eval \"$c\"; echo \"end $?\"; done"]);
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().context("starting a shell")?;
        let (stdin, out) = (child.stdin.take().unwrap(), BufReader::new(child.stdout.take().unwrap()));
        let mut s = Shell { child, stdin, out };
        ensure!(s.line()? == "ready", "the shell did not start");
        Ok(s)
    }

    fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        ensure!(self.out.read_line(&mut l)? > 0, "the shell ended");
        Ok(l.trim_end().to_owned())
    }

    /// Runs `cmd`; how long it took. Its output lines before the end.
    fn run(&mut self, cmd: &str) -> Result<(Duration, Vec<String>)> {
        let t = Instant::now();
        writeln!(self.stdin, "{cmd}")?;
        let mut out = Vec::new();
        loop {
            let l = self.line()?;
            if let Some(rc) = l.strip_prefix("end ") {
                ensure!(rc == "0", "`{cmd}` failed ({rc}): {out:?}");
                return Ok((t.elapsed(), out));
            }
            out.push(l);
        }
    }

    fn end(mut self) -> Result<()> {
        drop(self.stdin);
        ensure!(self.child.wait()?.success(), "the shell failed");
        Ok(())
    }
}

fn drop_caches() -> Result<()> {
    rustix::fs::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache")
}

/// One way's figures for one round: each step's time. The host's loop
/// device is detached however the round ends (a container's goes with it).
fn round(way: &str, work: &Path, img: &Path, tar: &Path, devns: &Path) -> Result<Vec<Duration>> {
    let mut loops = Vec::new();
    let times = timed(way, work, img, tar, devns, &mut loops);
    let m = work.join("host");
    let _ = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH);
    for l in &loops {
        common::detach_loop(l)?;
    }
    times
}

fn timed(
    way: &str,
    work: &Path,
    img: &Path,
    tar: &Path,
    devns: &Path,
    loops: &mut Vec<common::Loop>,
) -> Result<Vec<Duration>> {
    let (mut sh, m) = if way == "host" {
        let dev = common::attach_loop(loops, img, false)?;
        let m = work.join("host");
        std::fs::create_dir_all(&m)?;
        common::sh("mount", &[&format!("/dev/{dev}"), m.to_str().unwrap()], None)?;
        (Shell::start(Command::new("env"))?, m.to_string_lossy().into_owned())
    } else {
        let cfg = work.join(format!("{way}.toml"));
        std::fs::write(&cfg, if way == "kernel" { "mount_kernel = [\"ext4\"]\n" } else { "" })?;
        let mut cmd = Command::new(devns);
        cmd.env("DEVNS_CONFIG", &cfg)
            .env("DEVNS_STATE_DIR", work.join("state"))
            .env("DEVNS_SOCKET", work.join("no-daemon.sock"))
            .args(["run", "--"]);
        let mut sh = Shell::start(cmd)?;
        sh.run(&format!("d=$(losetup -f --show {}) && mkdir -p /tmp/m && mount $d /tmp/m", img.display()))?;
        (sh, "/tmp/m".to_owned())
    };
    let steps = [
        format!("dd if=/dev/zero of={m}/big bs=1M count=256 conv=fsync status=none"),
        format!("dd if={m}/big of=/dev/null bs=1M status=none"),
        format!("mkdir {m}/tree && tar -xf {} -C {m}/tree && sync", tar.display()),
    ];
    let mut times = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if i == 1 {
            drop_caches()?;
        }
        times.push(sh.run(step)?.0);
    }
    sh.run(&format!("rm -rf {m}/big {m}/tree && sync"))?;
    if way == "host" {
        sh.end()?;
        common::sh("umount", &[&m], None)?;
    } else {
        sh.run("umount /tmp/m && losetup -D")?;
        sh.end()?;
    }
    Ok(times)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    ensure!(rustix::process::geteuid().is_root(), "run as root");
    let devns = common::devns_binary()?;
    let rounds = common::samples(3)?;
    common::private_mount_ns()?;
    let work = PathBuf::from(format!("/var/tmp/devns-bench-mount-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = bench(&work, &devns, rounds);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn bench(work: &Path, devns: &Path, rounds: usize) -> Result<()> {
    let img = work.join("disk.img");
    std::fs::File::create(&img)?.set_len(IMAGE_MIB << 20)?;
    common::sh("mkfs.ext4", &["-q", "-E", "root_owner=0:0", img.to_str().unwrap()], None)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o666))?;
    let tar = work.join("tree.tar");
    common::sh("tar", &["-cf", tar.to_str().unwrap(), "-C", "/usr/include", "linux", "c++"], None)?;
    std::fs::set_permissions(&tar, std::fs::Permissions::from_mode(0o644))?;
    let mut all: Vec<Vec<Vec<Duration>>> = vec![vec![Vec::new(); STEPS.len()]; WAYS.len()];
    for r in 0..rounds {
        for k in 0..WAYS.len() {
            let w = (k + r) % WAYS.len();
            let times = round(WAYS[w], work, &img, &tar, devns).with_context(|| format!("round {r}, {}", WAYS[w]))?;
            for (s, t) in times.into_iter().enumerate() {
                all[w][s].push(t);
            }
        }
    }
    if all.iter().any(|w| w.iter().any(Vec::is_empty)) {
        bail!("no samples");
    }
    println!("{rounds} rounds, medians (ms), ratio to host in the same run:");
    println!("{:<16}{:>10}{:>10}{:>8}{:>10}{:>8}", "step", "host", "fuse", "ratio", "kernel", "ratio");
    for (s, name) in STEPS.iter().enumerate() {
        let m: Vec<f64> = (0..WAYS.len()).map(|w| median(all[w][s].clone()).as_secs_f64() * 1e3).collect();
        println!("{name:<16}{:>10.0}{:>10.0}{:>8.2}{:>10.0}{:>8.2}", m[0], m[1], m[1] / m[0], m[2], m[2] / m[0]);
    }
    Ok(())
}
