//! `devns oci runtime [--runtime-path PATH] -- ARGS...`, also run as
//! `devns-runtime ARGS...` (a symlink to devns): for `create` and `run` of
//! a container that asks for devns (annotation `devns.io/enable=true`),
//! edits its bundle's config.json (`devns_core::ociruntime::edit`), then
//! execs the real runtime with the same arguments, in the same process.
//! Prints nothing on stdout; an error is one line on stderr and exit 125
//! (the start fails: a container that asked for devns never runs without it).

use super::Global;
use anyhow::{Context, Result, bail};
use devns_core::ociruntime::{self, Edit, Invocation, MAX_CONFIG_BYTES};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The name under which devns is the wrapper alone.
pub const ARGV0: &str = "devns-runtime";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The real runtime (a path, or a name looked up in PATH).
    #[arg(long, value_name = "PATH", default_value = "runc", env = "DEVNS_RUNTIME_PATH")]
    pub runtime_path: OsString,
    /// Every container asks for devns, whatever its annotations (for Docker
    /// 20.10, which cannot set one: choosing this runtime is the ask).
    #[arg(long)]
    pub all_containers: bool,
    /// The runtime's arguments, as the caller gave them.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "RUNTIME-ARGS")]
    pub args: Vec<OsString>,
}

/// devns's own command line for `devns-runtime ARGS...`: the runtime's
/// arguments untouched, everything else from the environment.
pub fn argv_of_wrapper(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    ["devns", "oci", "runtime", "--"].into_iter().map(OsString::from).chain(args).collect()
}

pub fn run(global: &Global, args: Args) -> Result<i32> {
    if let Invocation::Create { bundle } = ociruntime::invocation(&args.args) {
        prepare(global, bundle.unwrap_or(OsStr::new(".")), args.all_containers)
            .context("cannot prepare the container for devns")?;
    }
    let e = std::process::Command::new(&args.runtime_path).args(&args.args).exec();
    bail!("cannot run the runtime {}: {e}", Path::new(&args.runtime_path).display())
}

/// Edits `bundle/config.json` when it asks for devns; leaves it alone
/// (not even rewritten) otherwise, and when it is not there (the runtime
/// says so itself).
fn prepare(global: &Global, bundle: &OsStr, all: bool) -> Result<()> {
    let dir = rustix::fs::open(bundle, OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::PATH, Mode::empty());
    let dir = match dir {
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        r => r.with_context(|| format!("bundle {}", Path::new(bundle).display()))?,
    };
    // Never through a symlink, never blocking on a FIFO: a file devns
    // cannot read as it is fails the start.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(&dir, "config.json", flags, Mode::empty()) {
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(rustix::io::Errno::LOOP) => bail!("config.json is a symlink"),
        r => r.context("config.json")?,
    };
    let st = rustix::fs::fstat(&fd).context("config.json")?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        bail!("config.json is not a regular file");
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd).take(MAX_CONFIG_BYTES as u64 + 1).read_to_end(&mut bytes).context("config.json")?;
    let asks = serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|c| ociruntime::asks_for_devns(&c));
    if !all && !asks && bytes.len() <= MAX_CONFIG_BYTES {
        return Ok(());
    }
    let policy = crate::config::load(&global.config)?;
    let devns = std::env::current_exe().context("devns's own path (/proc/self/exe)")?;
    let socket = absolute(&global.socket)?;
    let listener = policy.agent_socket(&socket, std::env::var_os("DEVNS_SECCOMP_SOCKET").map(PathBuf::from));
    let utf8 = |p: &Path| p.to_str().map(str::to_owned).with_context(|| format!("{} is not UTF-8", p.display()));
    let (devns, socket, listener) = (utf8(&devns)?, utf8(&socket)?, utf8(&absolute(&listener)?)?);
    let (state_dir, config) = (utf8(&absolute(&global.state_dir)?)?, utf8(&absolute(&global.config)?)?);
    let edit = Edit {
        devns: &devns,
        socket: &socket,
        state_dir: &state_dir,
        config: &config,
        listener: &listener,
        device_policy: policy.device_policy,
        all,
    };
    let Some(new) = ociruntime::edit(&bytes, &edit)? else { return Ok(()) };
    replace(&dir, &new, &st).context("cannot write config.json")
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() { p.to_owned() } else { std::env::current_dir()?.join(p) })
}

/// Writes `config.json` anew (a temporary file, then a rename over it),
/// with the old one's mode and owner.
fn replace(dir: &impl rustix::fd::AsFd, bytes: &[u8], old: &rustix::fs::Stat) -> Result<()> {
    let tmp = format!(".config.json.devns-{}", std::process::id());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, &tmp, flags, Mode::from_raw_mode(0o600))?;
    let written = (|| -> Result<()> {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(old.st_uid)),
            Some(rustix::fs::Gid::from_raw(old.st_gid)),
        )?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(old.st_mode & 0o7777))?;
        let mut f = std::fs::File::from(fd);
        f.write_all(bytes)?;
        f.sync_all()?;
        rustix::fs::renameat(dir, &tmp, dir, "config.json")?;
        Ok(())
    })();
    if written.is_err() {
        let _ = rustix::fs::unlinkat(dir, &tmp, AtFlags::empty());
    }
    written?;
    // The rename is durable once the directory is.
    let d = rustix::fs::openat(dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    rustix::fs::fsync(&d)?;
    Ok(())
}
