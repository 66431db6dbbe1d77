//! The filesystems a container started by `devns run` mounts itself on its
//! view's mountpoints, as OCI runtimes give a container's `/dev`: a devpts
//! instance of its own on `pts`, a private tmpfs on `shm` (POSIX shared
//! memory), and its IPC namespace's mqueue instance on `mqueue`. What each
//! is, where and with which options; the child makes them in its own
//! namespaces (`devns::container`), so they go with its mount namespace.

use crate::view::{MQUEUE_DIR, PTS_DIR, SHM_DIR};
use std::fmt;
use std::str::FromStr;

/// The mount attributes devns sets on one of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attrs {
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

/// `nosuid,nodev,noexec`: what runc and podman give `shm` and `mqueue`.
const SEALED: Attrs = Attrs { nosuid: true, nodev: true, noexec: true };

/// One filesystem instance and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevMount {
    /// Its mountpoint, relative to the view's root (a directory every view
    /// has: see [`crate::view::MOUNTPOINTS`]).
    pub at: &'static str,
    pub fstype: &'static str,
    /// Flag parameters (`fsconfig` `FSCONFIG_SET_FLAG`).
    pub flags: &'static [&'static str],
    /// String parameters (`FSCONFIG_SET_STRING`).
    pub options: Vec<(&'static str, String)>,
    pub attrs: Attrs,
}

/// The container's own mounts below its `/dev`, in the order they are
/// made. devpts keeps its nodes usable (no `nodev`: its ptys are nodes);
/// `shm` is world-writable and sticky like a host's `/dev/shm`, its root
/// owned by whoever mounts it (the container's root), and bounded by
/// `shm` so that it cannot take more of the host's memory.
pub fn dev_mounts(shm: ShmSize) -> [DevMount; 3] {
    [
        DevMount {
            at: PTS_DIR,
            fstype: "devpts",
            flags: &["newinstance"],
            options: vec![("ptmxmode", "0666".into()), ("mode", "0620".into()), ("gid", "5".into())],
            attrs: Attrs { nosuid: true, nodev: false, noexec: true },
        },
        DevMount {
            at: SHM_DIR,
            fstype: "tmpfs",
            flags: &[],
            options: vec![("mode", "1777".into()), ("size", shm.bytes().to_string())],
            attrs: SEALED,
        },
        DevMount { at: MQUEUE_DIR, fstype: "mqueue", flags: &[], options: vec![], attrs: SEALED },
    ]
}

/// The size limit of a container's `/dev/shm`, in bytes: never zero, which
/// would tell tmpfs "unlimited".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmSize(u64);

impl ShmSize {
    /// 64 MiB, podman's and Docker's default (`size=65536k`).
    pub const DEFAULT: ShmSize = ShmSize(64 << 20);

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl Default for ShmSize {
    fn default() -> Self {
        ShmSize::DEFAULT
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShmSizeError {
    #[error("{0:?} is not a size: a number of bytes, or with a unit k, m or g (as 64m)")]
    Syntax(String),
    #[error("a size of 0 would leave /dev/shm unlimited")]
    Zero,
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// As `podman run --shm-size` takes it: `N[b|k|m|g]`, units of 1024,
/// either case.
impl FromStr for ShmSize {
    type Err = ShmSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || ShmSizeError::Syntax(s.chars().take(64).collect());
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(digits);
        let shift = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" => 10,
            "m" => 20,
            "g" => 30,
            _ => return Err(syntax()),
        };
        if num.is_empty() {
            return Err(syntax());
        }
        let too_large = || ShmSizeError::TooLarge(s.chars().take(64).collect());
        let n: u64 = num.parse().map_err(|_| too_large())?;
        let bytes = n.checked_mul(1 << shift).ok_or_else(too_large)?;
        if bytes == 0 {
            return Err(ShmSizeError::Zero);
        }
        Ok(ShmSize(bytes))
    }
}

impl fmt::Display for ShmSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idmap::IdMap;
    use crate::view::{DEFAULT_OVERFLOW, Entry, plan};

    fn of(at: &str) -> DevMount {
        dev_mounts(ShmSize::DEFAULT).into_iter().find(|m| m.at == at).unwrap()
    }

    #[test]
    fn shm_is_a_sealed_sticky_tmpfs_of_64_mib_by_default() {
        let shm = of(SHM_DIR);
        assert_eq!(shm.fstype, "tmpfs");
        assert_eq!(shm.options, [("mode", "1777".to_owned()), ("size", "67108864".to_owned())]);
        assert_eq!(shm.attrs, Attrs { nosuid: true, nodev: true, noexec: true });
        let small = dev_mounts("1m".parse().unwrap());
        assert!(small[1].options.contains(&("size", "1048576".to_owned())));
    }

    #[test]
    fn mqueue_is_sealed_and_devpts_keeps_its_nodes() {
        let mq = of(MQUEUE_DIR);
        assert_eq!((mq.fstype, mq.attrs), ("mqueue", SEALED));
        let pts = of(PTS_DIR);
        assert_eq!(pts.fstype, "devpts");
        assert_eq!(pts.flags, ["newinstance"]);
        assert!(pts.attrs.nosuid && pts.attrs.noexec && !pts.attrs.nodev);
    }

    #[test]
    fn every_mount_has_its_directory_in_every_view() {
        let m = IdMap::single(100_000, 65_536);
        let p = plan(&[], &m, &m, DEFAULT_OVERFLOW);
        for d in dev_mounts(ShmSize::DEFAULT) {
            let e = p.entries.iter().find(|e| e.path() == d.at);
            assert!(matches!(e, Some(Entry::Dir { uid: 100_000, gid: 100_000, .. })), "{}: {e:?}", d.at);
        }
    }

    #[test]
    fn sizes_read_as_podman_s() {
        for (s, bytes) in [
            ("65536k", 64 << 20),
            ("64m", 64 << 20),
            ("64M", 64 << 20),
            ("1g", 1 << 30),
            ("4096", 4096),
            ("4096b", 4096),
            ("1", 1),
        ] {
            assert_eq!(s.parse::<ShmSize>().map(ShmSize::bytes), Ok(bytes), "{s}");
        }
        assert_eq!(ShmSize::default().to_string(), "67108864");
    }

    #[test]
    fn bad_sizes_are_refused_and_zero_is_no_limit_so_refused() {
        for s in ["", "m", "-1", "1.5m", "64mb", "64 m", "1t", " 64m", "0x10"] {
            assert!(matches!(s.parse::<ShmSize>(), Err(ShmSizeError::Syntax(_))), "{s:?}");
        }
        for s in ["0", "0k", "000g"] {
            assert_eq!(s.parse::<ShmSize>(), Err(ShmSizeError::Zero), "{s}");
        }
        for s in ["18446744073709551616", "17179869184g"] {
            assert!(matches!(s.parse::<ShmSize>(), Err(ShmSizeError::TooLarge(_))), "{s}");
        }
    }
}
