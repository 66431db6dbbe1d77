//! The host's devices, read from sysfs (`/sys/dev/{char,block}`) and the
//! host's own `/dev` nodes (for their live mode and owner).

use anyhow::{Context, Result, bail};
use devns_core::Registry;
use devns_core::device::{DevId, Device, Kind};
use devns_core::spec::DevSpec;
use devns_core::uevent::{self, MAX_UEVENT_BYTES};
use rustix::fs::{FileType, Mode};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("cannot list {path}: {source}")]
    List { path: PathBuf, source: std::io::Error },
}

/// Reads at most `limit` bytes of a small sysfs file; `None` if unreadable.
fn read_small(path: &Path, limit: usize) -> Option<String> {
    let mut buf = Vec::with_capacity(256);
    fs::File::open(path).ok()?.take(limit as u64 + 1).read_to_end(&mut buf).ok()?;
    (buf.len() <= limit).then(|| String::from_utf8_lossy(&buf).into_owned())
}

/// The device id in a sysfs `dev` file (`MAJ:MIN\n`).
fn read_dev_file(path: &Path, kind: Kind) -> Option<DevId> {
    let text = read_small(path, 32)?;
    format!("{}:{}", kind.letter(), text.trim()).parse().ok()
}

/// One device from its sysfs directory. Devices without a node, and records
/// that make no sense, are skipped (with a debug line): the host's sysfs is
/// trusted, but devns must not fall over on a driver's oddity.
pub fn read_device(sys_dir: &Path, kind: Kind, dev_root: &Path) -> Option<Device> {
    let text = read_small(&sys_dir.join("uevent"), MAX_UEVENT_BYTES)?;
    let subsystem = fs::read_link(sys_dir.join("subsystem"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    // A partition's directory sits inside its disk's.
    let parent = read_dev_file(&sys_dir.join("../dev"), kind);
    let mut dev = match uevent::device_from_sysfs(kind, &text, &subsystem, parent) {
        Ok(d) => d?,
        Err(e) => {
            tracing::debug!(dir = %sys_dir.display(), error = %e, "skipping device");
            return None;
        }
    };
    apply_host_node(&mut dev, dev_root);
    dev.ino = rustix::fs::stat(sys_dir).ok().map(|st| st.st_ino);
    Some(dev)
}

/// A device as its `add` or `change` event describes it: the event carries
/// the fields of sysfs's `uevent` file as they were when it was sent (sysfs
/// may show a newer device with the same numbers by the time it is read),
/// so only the host node's mode and owner are looked up, and a partition's
/// disk: by the disk's name in `disk_named` (the registry), else in sysfs.
pub fn device_from_event(
    ev: &uevent::Uevent,
    kind: Kind,
    dev_root: &Path,
    disk_named: impl Fn(&str) -> Option<DevId>,
) -> Option<Device> {
    // A partition's sysfs directory sits in its disk's: `.../loop0/loop0p1`.
    let disk_dir = ev.devpath.rsplit_once('/').map(|(dir, _)| dir)?;
    let parent = || {
        let name = disk_dir.rsplit_once('/').map_or(disk_dir, |(_, n)| n);
        disk_named(name).or_else(|| read_dev_file(&Path::new("/sys").join(&disk_dir[1..]).join("dev"), kind))
    };
    let is_partition = ev.raw.split('\0').any(|f| f == "DEVTYPE=partition");
    let parent = if is_partition { parent() } else { None };
    let mut dev = match uevent::device_from_sysfs(kind, &ev.raw, &ev.subsystem, parent) {
        Ok(d) => d?,
        Err(e) => {
            tracing::debug!(devpath = %ev.devpath, error = %e, "skipping a device's event");
            return None;
        }
    };
    apply_host_node(&mut dev, dev_root);
    // Its sysfs directory as it is now: when a newer device has taken the
    // path meanwhile, that one's (the registry then holds what is there).
    dev.ino = rustix::fs::stat(Path::new("/sys").join(ev.devpath.trim_start_matches('/'))).ok().map(|st| st.st_ino);
    Some(dev)
}

/// Takes mode and owner from the host's node when it is this very device:
/// udev rules may have changed them since the kernel's `DEVMODE`.
fn apply_host_node(dev: &mut Device, dev_root: &Path) {
    let Ok(st) = rustix::fs::lstat(dev_root.join(&dev.name)) else { return };
    let want = match dev.id.kind {
        Kind::Char => FileType::CharacterDevice,
        Kind::Block => FileType::BlockDevice,
    };
    let rdev = st.st_rdev;
    if FileType::from_raw_mode(st.st_mode) == want
        && rustix::fs::major(rdev) == dev.id.major
        && rustix::fs::minor(rdev) == dev.id.minor
    {
        dev.mode = Mode::from_raw_mode(st.st_mode).bits() & 0o7777;
        dev.uid = st.st_uid;
        dev.gid = st.st_gid;
    }
}

/// The partitions sysfs lists below the disk `name` now.
pub fn partitions_of(name: &str) -> Vec<Device> {
    let dir = Path::new("/sys/class/block").join(name);
    let Ok(entries) = fs::read_dir(&dir) else { return vec![] };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(name) && e.path().join("partition").exists())
        .filter_map(|e| read_device(&e.path(), Kind::Block, Path::new("/dev")))
        .collect()
}

/// Brings `registry`'s partitions of `disk` to what sysfs lists now;
/// returns those that went.
pub fn refresh_partitions(registry: &mut Registry, disk: DevId, global_names: &[String]) -> Vec<DevId> {
    let Some(name) = registry.device(disk).map(|d| d.name.clone()) else { return vec![] };
    let now = partitions_of(&name);
    let gone: Vec<DevId> = registry
        .devices()
        .filter(|d| d.parent == Some(disk) && !now.iter().any(|n| n.id == d.id))
        .map(|d| d.id)
        .collect();
    for p in &gone {
        registry.remove_device(*p);
    }
    for d in now {
        registry.add_device(d, global_names);
    }
    gone
}

/// Every device of the host that has a node.
pub fn host_devices() -> Result<Vec<Device>, DiscoverError> {
    devices_under(Path::new("/sys/dev"), Path::new("/dev"))
}

pub fn devices_under(sys_dev: &Path, dev_root: &Path) -> Result<Vec<Device>, DiscoverError> {
    let mut out = Vec::new();
    for (sub, kind) in [("char", Kind::Char), ("block", Kind::Block)] {
        let dir = sys_dev.join(sub);
        let entries = fs::read_dir(&dir).map_err(|source| DiscoverError::List { path: dir.clone(), source })?;
        for e in entries.flatten() {
            // Each entry is a MAJ:MIN symlink to the device's directory.
            if let Some(d) = read_device(&e.path(), kind, dev_root) {
                out.push(d);
            }
        }
    }
    Ok(out)
}

/// Turns what the user typed into a host device.
pub fn resolve(registry: &Registry, text: &str) -> Result<DevId> {
    let spec = DevSpec::parse(text)?;
    let spec = match spec {
        DevSpec::Path(p) => {
            let st = rustix::fs::stat(&p).with_context(|| format!("unknown device {p:?}"))?;
            let kind = match FileType::from_raw_mode(st.st_mode) {
                FileType::CharacterDevice => Kind::Char,
                FileType::BlockDevice => Kind::Block,
                _ => bail!("unknown device {p:?}: not a device node"),
            };
            DevSpec::Id(DevId::new(kind, rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev)))
        }
        s => s,
    };
    Ok(registry.resolve(&spec)?)
}

/// A kernel-style uevent announcing host device `id` (`add` or `remove`),
/// built from its sysfs directory, for a namespace whose ownership of it
/// changed.
pub fn synth_uevent(action: &str, id: DevId) -> Option<Vec<u8>> {
    let kind = match id.kind {
        Kind::Char => "char",
        Kind::Block => "block",
    };
    let sys = fs::canonicalize(format!("/sys/dev/{kind}/{}:{}", id.major, id.minor)).ok()?;
    let devpath = sys.strip_prefix("/sys").ok()?.to_string_lossy().into_owned();
    let text = read_small(&sys.join("uevent"), MAX_UEVENT_BYTES)?;
    let subsystem = fs::read_link(sys.join("subsystem")).ok()?.file_name()?.to_string_lossy().into_owned();
    let seqnum =
        read_small(Path::new("/sys/kernel/uevent_seqnum"), 32).and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    Some(uevent::format(action, &format!("/{devpath}"), &subsystem, &text, seqnum))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sysfs is readable without root: the host's real devices, read the
    /// way `devns run` reads them.
    #[test]
    fn finds_the_hosts_null_and_loop_devices() {
        let devs = host_devices().unwrap();
        let null = devs.iter().find(|d| d.name == "null").expect("/dev/null in sysfs");
        assert_eq!(null.id, DevId::new(Kind::Char, 1, 3));
        assert_eq!(null.subsystem, "mem");
        assert_eq!(null.mode, 0o666);
        // Whole loop devices (other tests may add partitions meanwhile).
        let whole_loop =
            |n: &str| n.strip_prefix("loop").is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()));
        for d in devs.iter().filter(|d| whole_loop(&d.name) && d.id.kind == Kind::Block) {
            assert_eq!(d.devtype, Some(devns_core::DevType::Disk), "{}", d.name);
        }
        assert!(devs.iter().all(|d| devns_core::spec::is_safe_dev_name(&d.name)));
    }

    #[test]
    fn missing_sysfs_is_a_clear_error() {
        let e = devices_under(Path::new("/nonexistent/sys/dev"), Path::new("/dev")).unwrap_err();
        assert!(e.to_string().starts_with("cannot list /nonexistent/sys/dev/char: "), "{e}");
    }
}
