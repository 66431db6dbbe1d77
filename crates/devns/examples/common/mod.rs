//! What the benchmark programs share.

use anyhow::{Context, Result};
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
