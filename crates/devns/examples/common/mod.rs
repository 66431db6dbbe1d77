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
