//! `mount(2)` of a block device a namespace owns, decided without the
//! kernel: whether devns serves the filesystem type at all and which way
//! (a FUSE driver with the container's credentials, or the kernel with an
//! id-mapped mount where the operator trusts the images), and what the
//! caller's flags and data become for the new mount API.
//!
//! A kernel mount is made by devns as host root, so the caller's data must
//! not reach what it could not reach itself: options naming other devices
//! or host paths are refused, and `errors=panic` (an image's error would
//! stop the host) is refused, with `errors=remount-ro` the default where
//! the type has it (ext2/3/4's superblock may ask for panic otherwise).

use std::fmt;

pub const MS_RDONLY: u64 = 1;
pub const MS_NOSUID: u64 = 2;
pub const MS_NODEV: u64 = 4;
pub const MS_NOEXEC: u64 = 8;
pub const MS_SYNCHRONOUS: u64 = 16;
pub const MS_REMOUNT: u64 = 32;
pub const MS_DIRSYNC: u64 = 128;
pub const MS_NOSYMFOLLOW: u64 = 256;
pub const MS_NOATIME: u64 = 1024;
pub const MS_NODIRATIME: u64 = 2048;
pub const MS_BIND: u64 = 4096;
pub const MS_MOVE: u64 = 8192;
pub const MS_STRICTATIME: u64 = 1 << 24;
pub const MS_LAZYTIME: u64 = 1 << 25;
/// The propagation changes (`MS_UNBINDABLE`, `MS_PRIVATE`, `MS_SLAVE`,
/// `MS_SHARED`): no new mount either.
pub const MS_PROPAGATION: u64 = (1 << 17) | (1 << 18) | (1 << 19) | (1 << 20);
/// The legacy magic some callers put in the high bits, dropped as the
/// kernel drops it.
const MS_MGC_VAL: u64 = 0xC0ED_0000;
const MS_MGC_MSK: u64 = 0xffff_0000;

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
pub const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;

/// Longest data string devns reads from a caller (the kernel copies one
/// page).
pub const MAX_DATA: usize = 4096;

/// The FUSE drivers devns runs, by filesystem type: Debian's packages
/// built on libfuse 3, which serves a connection devns made (its
/// `/dev/fd/N` mount point). Debian's `fusefat` is built on libfuse 2,
/// which cannot: vfat is served only by the kernel (`mount_kernel`).
const DRIVERS: &[(&str, Driver)] = &[
    ("ext2", Driver::Fuse2fs),
    ("ext3", Driver::Fuse2fs),
    ("ext4", Driver::Fuse2fs),
    ("squashfs", Driver::Squashfuse),
];

/// Data keys that name another device or a path (resolved as devns, on
/// the host), or the source itself: never from a container.
const FOREIGN_KEYS: &[&str] = &["source", "journal_path", "journal_dev", "logdev", "rtdev", "device"];

/// Types whose `errors=` devns sets to `remount-ro` unless the caller
/// chose `continue` or `remount-ro`.
const ERRORS_REMOUNT_RO: &[&str] = &["ext2", "ext3", "ext4"];

/// A userspace filesystem driver devns can run for a type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Fuse2fs,
    Squashfuse,
}

impl Driver {
    /// Every driver devns runs.
    pub const ALL: [Driver; 2] = [Driver::Fuse2fs, Driver::Squashfuse];

    /// Its program, as Debian installs it.
    pub fn program(self) -> &'static str {
        match self {
            Driver::Fuse2fs => "fuse2fs",
            Driver::Squashfuse => "squashfuse",
        }
    }

    /// The Debian package that has it.
    pub fn package(self) -> &'static str {
        self.program()
    }

    /// Its arguments after the device and the mount point: in the
    /// foreground, others of the container's namespace may use the files
    /// (`allow_other`) with the kernel checking their modes, and the
    /// mount's source the device's `/dev` name ([`fuse_source`]).
    pub fn args(self, name: &str, fstype: &str, read_only: bool, taken: &[String]) -> Vec<String> {
        let source = fuse_source(name);
        let mut opts = match self {
            // fuse2fs's own defaults, its fsname (the device path it was
            // given) replaced.
            Driver::Fuse2fs => format!(
                "no_default_opts,kernel_cache,use_ino,attr_timeout=0,big_writes,subtype={fstype},fsname={source}"
            ),
            Driver::Squashfuse => format!("subtype={fstype},fsname={source}"),
        };
        opts.push_str(",allow_other,default_permissions");
        if read_only {
            opts.push_str(",ro");
        }
        for t in taken {
            opts.push(',');
            opts.push_str(t);
        }
        vec!["-f".into(), "-o".into(), opts]
    }

    /// The caller's parameters as this driver takes them: the options to
    /// pass on ([`Driver::args`]'s `taken`), and those it has no
    /// counterpart for (the kernel's own, logged and dropped). The mount
    /// flags' parameters are taken by the mount's attributes and `ro`;
    /// `errors=remount-ro` and `bsddf` are ext's defaults that fuse2fs
    /// has no switch for.
    pub fn options(self, params: &[Param]) -> Options {
        let mut out = Options::default();
        for p in params {
            let passed = match (self, p) {
                (_, Param::Flag(k)) if ["ro", "sync", "dirsync", "lazytime"].contains(&k.as_str()) => None,
                (Driver::Fuse2fs, Param::Value(k, v)) if k == "errors" && (v == "remount-ro" || v == "continue") => {
                    None
                }
                (Driver::Fuse2fs, Param::Flag(k)) if k == "bsddf" => None,
                (Driver::Fuse2fs, Param::Flag(k)) if k == "norecovery" || k == "noload" => Some("norecovery"),
                (Driver::Fuse2fs, Param::Flag(k)) if k == "minixdf" => Some("minixdf"),
                (_, Param::Flag(k)) => {
                    out.ignored.push(k.clone());
                    continue;
                }
                (_, Param::Value(k, v)) => {
                    out.ignored.push(format!("{k}={v}"));
                    continue;
                }
            };
            if let Some(o) = passed
                && !out.taken.iter().any(|t| t == o)
            {
                out.taken.push(o.to_owned());
            }
        }
        out
    }
}

/// A driver's reading of the caller's data options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Passed on to the driver, in its spelling.
    pub taken: Vec<String>,
    /// The kernel's alone: dropped, with a log line.
    pub ignored: Vec<String>,
}

/// How a type's mounts are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// By the kernel, made by devns and id-mapped to the container.
    Kernel,
    /// By a userspace driver with the container's credentials.
    Fuse(Driver),
}

/// How devns serves mounts of `fstype`: the kernel where the operator
/// listed the type (`mount_kernel`), else its FUSE driver; `None` for a
/// type devns does not serve (the call goes to the kernel unchanged).
pub fn way(fstype: &str, kernel: &[String]) -> Option<Way> {
    if kernel.iter().any(|k| k == fstype) {
        return Some(Way::Kernel);
    }
    DRIVERS.iter().find(|(t, _)| *t == fstype).map(|(_, d)| Way::Fuse(*d))
}

/// Whether `name` may be listed in `mount_kernel`: a filesystem type's
/// name, and one that mounts a block device (not a pseudo filesystem
/// whose kernel mount as root would mean something else).
pub fn kernel_type_ok(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 32 || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(format!("{name:?} is not a filesystem type name (lowercase letters and digits)"));
    }
    const NOT_BLOCK: &[&str] = &[
        "devtmpfs",
        "tmpfs",
        "proc",
        "sysfs",
        "cgroup",
        "cgroup2",
        "overlay",
        "fuse",
        "fuseblk",
        "bpf",
        "debugfs",
        "tracefs",
        "securityfs",
        "configfs",
        "devpts",
        "mqueue",
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "ramfs",
        "hugetlbfs",
    ];
    if NOT_BLOCK.contains(&name) {
        return Err(format!("{name} is not a filesystem on a block device"));
    }
    Ok(())
}

/// Whether a `mount(2)` with these flags makes a new mount from a source
/// (rather than a remount, bind, move or propagation change).
pub fn is_new_mount(flags: u64) -> bool {
    flags_of(flags) & (MS_REMOUNT | MS_BIND | MS_MOVE | MS_PROPAGATION) == 0
}

fn flags_of(flags: u64) -> u64 {
    if flags & MS_MGC_MSK == MS_MGC_VAL { flags & !MS_MGC_MSK } else { flags }
}

/// One filesystem parameter, for `fsconfig`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Param {
    Flag(String),
    Value(String, String),
}

/// A mount as devns makes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The superblock read-only (the driver or the kernel opens the device
    /// read-only).
    pub read_only: bool,
    /// `MOUNT_ATTR_*` of the new mount: `nosuid` and `nodev` always.
    pub attrs: u64,
    /// The filesystem's parameters, in the caller's order.
    pub params: Vec<Param>,
}

/// Why a mount is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub errno: Errno,
    pub why: String,
}

/// The errno of a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errno {
    Inval,
    Perm,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.why)
    }
}

fn refused(errno: Errno, why: String) -> Refused {
    Refused { errno, why }
}

/// What the caller's `flags` and `data` (its options string, when it gave
/// one) make of a new mount of type `fstype`.
pub fn plan(fstype: &str, flags: u64, data: Option<&str>) -> Result<Plan, Refused> {
    let flags = flags_of(flags);
    let read_only = flags & MS_RDONLY != 0;
    let mut attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    for (ms, attr) in [
        (MS_RDONLY, MOUNT_ATTR_RDONLY),
        (MS_NOEXEC, MOUNT_ATTR_NOEXEC),
        (MS_NOATIME, MOUNT_ATTR_NOATIME),
        (MS_NODIRATIME, MOUNT_ATTR_NODIRATIME),
        (MS_NOSYMFOLLOW, MOUNT_ATTR_NOSYMFOLLOW),
    ] {
        if flags & ms != 0 {
            attrs |= attr;
        }
    }
    if flags & MS_STRICTATIME != 0 && flags & MS_NOATIME == 0 {
        attrs |= MOUNT_ATTR_STRICTATIME;
    }
    let mut params = Vec::new();
    for (ms, key) in [(MS_RDONLY, "ro"), (MS_SYNCHRONOUS, "sync"), (MS_DIRSYNC, "dirsync"), (MS_LAZYTIME, "lazytime")] {
        if flags & ms != 0 {
            params.push(Param::Flag(key.to_owned()));
        }
    }
    for opt in split_options(data.unwrap_or(""))? {
        params.push(param(opt)?);
    }
    let has_errors = params.iter().any(|p| matches!(p, Param::Value(k, _) if k == "errors"));
    if ERRORS_REMOUNT_RO.contains(&fstype) && !has_errors {
        params.push(Param::Value("errors".into(), "remount-ro".into()));
    }
    Ok(Plan { read_only, attrs, params })
}

/// The comma-separated options of a data string, a comma inside double
/// quotes kept (as libmount and the kernel's monolithic parser do).
fn split_options(data: &str) -> Result<Vec<&str>, Refused> {
    if data.len() > MAX_DATA {
        return Err(refused(Errno::Inval, format!("mount data of {} bytes, the most is {MAX_DATA}", data.len())));
    }
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, b) in data.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                out.push(&data[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err(refused(Errno::Inval, "mount data with an unclosed quote".into()));
    }
    out.push(&data[start..]);
    Ok(out.into_iter().filter(|o| !o.is_empty()).collect())
}

fn param(opt: &str) -> Result<Param, Refused> {
    let (key, value) = match opt.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (opt, None),
    };
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(refused(Errno::Inval, format!("mount option {opt:?} is not key or key=value")));
    }
    if FOREIGN_KEYS.contains(&key) {
        return Err(refused(Errno::Perm, format!("mount option {key} names another device or a host path")));
    }
    match value {
        Some("panic") if key == "errors" => {
            Err(refused(Errno::Perm, "errors=panic would let an image's error stop the host".into()))
        }
        Some(v) => Ok(Param::Value(key.to_owned(), v.to_owned())),
        None => Ok(Param::Flag(key.to_owned())),
    }
}

/// The source devns gives a FUSE mount of device `name`: what mountinfo
/// shows, and how [`own_mounts`] knows it.
pub fn fuse_source(name: &str) -> String {
    format!("/dev/{name}")
}

/// The mounts of a namespace's own block devices among `mounts` (its
/// mountinfo): kernel mounts by their device number, FUSE mounts by the
/// source devns gave them, sorted by target. `owned` are the block devices
/// it owns.
pub fn own_mounts(
    mounts: impl Iterator<Item = crate::mountinfo::Mount>,
    owned: &[&crate::Device],
) -> Vec<crate::api::MountRow> {
    let mut rows: Vec<crate::api::MountRow> = mounts
        .filter_map(|m| {
            let (dev, way) = if m.fstype.starts_with("fuse.") {
                (owned.iter().find(|d| fuse_source(&d.name) == m.source)?, "fuse")
            } else {
                (owned.iter().find(|d| (d.id.major, d.id.minor) == (m.major, m.minor))?, "kernel")
            };
            Some(crate::api::MountRow {
                device: dev.name.clone(),
                target: m.mount_point.to_string_lossy().into_owned(),
                fstype: m.fstype.trim_start_matches("fuse.").to_owned(),
                way: way.to_owned(),
                read_only: m.options.split(',').any(|o| o == "ro"),
            })
        })
        .collect();
    // By target: the kernel's order of mountinfo lines is not one to show.
    rows.sort_by(|a, b| (&a.target, &a.device).cmp(&(&b.target, &b.device)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_s_mounts_of_its_own_devices_are_found_by_number_or_fuse_source() {
        let dev = |name: &str, minor| crate::registry::tests::disk(minor, name);
        let (l3, l4) = (dev("loop3", 3), dev("loop4", 4));
        let info = b"36 25 7:3 / /mnt/k rw,nosuid,nodev,relatime,idmapped shared:1 - ext4 /dev/loop3 rw\n\
                     37 25 0:52 / /mnt/f ro,nosuid,nodev - fuse.ext4 /dev/loop4 ro,user_id=0\n\
                     38 25 0:53 / /mnt/x rw - fuse.sshfs /dev/loop9 rw\n\
                     39 25 7:9 / /mnt/y rw - ext4 /dev/loop9 rw\n\
                     40 25 0:22 / /tmp rw - tmpfs none rw\n";
        let rows = own_mounts(crate::mountinfo::mounts(info), &[&l3, &l4]);
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.device.as_str(), r.target.as_str(), r.fstype.as_str(), r.way.as_str(), r.read_only))
            .collect();
        // Sorted by target, whatever the kernel's order.
        assert_eq!(got, [("loop4", "/mnt/f", "ext4", "fuse", true), ("loop3", "/mnt/k", "ext4", "kernel", false)]);
    }

    fn flag(k: &str) -> Param {
        Param::Flag(k.into())
    }
    fn value(k: &str, v: &str) -> Param {
        Param::Value(k.into(), v.into())
    }

    #[test]
    fn the_operator_s_kernel_types_go_to_the_kernel_others_to_their_driver_or_not_served() {
        let kernel = vec!["ext4".to_owned(), "xfs".to_owned()];
        assert_eq!(way("ext4", &kernel), Some(Way::Kernel));
        assert_eq!(way("xfs", &kernel), Some(Way::Kernel));
        assert_eq!(way("ext4", &[]), Some(Way::Fuse(Driver::Fuse2fs)));
        assert_eq!(way("ext2", &[]), Some(Way::Fuse(Driver::Fuse2fs)));
        assert_eq!(way("squashfs", &[]), Some(Way::Fuse(Driver::Squashfuse)));
        for other in ["xfs", "btrfs", "vfat", "tmpfs", "proc", "devtmpfs", "overlay", ""] {
            assert_eq!(way(other, &[]), None, "{other}");
        }
    }

    #[test]
    fn drivers_run_in_the_foreground_for_everyone_in_the_namespace_named_by_the_device() {
        assert_eq!(
            Driver::Fuse2fs.args("loop3", "ext4", true, &[]),
            [
                "-f",
                "-o",
                "no_default_opts,kernel_cache,use_ino,attr_timeout=0,big_writes,subtype=ext4,fsname=/dev/loop3,allow_other,default_permissions,ro"
            ]
        );
        assert_eq!(
            Driver::Squashfuse.args("loop4p1", "squashfs", false, &[]),
            ["-f", "-o", "subtype=squashfs,fsname=/dev/loop4p1,allow_other,default_permissions"]
        );
        assert_eq!(
            Driver::Fuse2fs.args("loop3", "ext4", false, &["norecovery".into()])[2],
            "no_default_opts,kernel_cache,use_ino,attr_timeout=0,big_writes,subtype=ext4,fsname=/dev/loop3,allow_other,default_permissions,norecovery"
        );
    }

    #[test]
    fn only_block_filesystem_names_may_be_kernel_types() {
        for ok in ["ext4", "xfs", "btrfs", "vfat", "iso9660", "f2fs"] {
            assert_eq!(kernel_type_ok(ok), Ok(()), "{ok}");
        }
        for bad in ["", "EXT4", "ext4,xfs", "../x", "tmpfs", "proc", "devtmpfs", "overlay", "fuse", "nfs"] {
            assert!(kernel_type_ok(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn remounts_binds_moves_and_propagation_changes_are_no_new_mounts() {
        assert!(is_new_mount(0));
        assert!(is_new_mount(MS_RDONLY | MS_NOEXEC));
        assert!(is_new_mount(MS_MGC_VAL | MS_RDONLY));
        for f in [MS_REMOUNT, MS_BIND, MS_MOVE, 1 << 18, 1 << 20, MS_REMOUNT | MS_BIND, MS_MGC_VAL | MS_BIND] {
            assert!(!is_new_mount(f), "{f:#x}");
        }
    }

    #[test]
    fn nosuid_and_nodev_are_forced_and_the_caller_s_flags_kept() {
        let p = plan("xfs", 0, None).unwrap();
        assert_eq!(p, Plan { read_only: false, attrs: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, params: vec![] });
        let p = plan("xfs", MS_MGC_VAL | MS_RDONLY | MS_NOEXEC | MS_NOATIME | MS_SYNCHRONOUS, None).unwrap();
        assert!(p.read_only);
        assert_eq!(
            p.attrs,
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOEXEC | MOUNT_ATTR_NOATIME
        );
        assert_eq!(p.params, [flag("ro"), flag("sync")]);
        // The caller's own nosuid/nodev change nothing: they are there.
        assert_eq!(plan("xfs", MS_NOSUID | MS_NODEV, None).unwrap().attrs, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
        let strict = plan("xfs", MS_STRICTATIME | MS_NODIRATIME | MS_NOSYMFOLLOW, None).unwrap().attrs;
        assert_eq!(strict & !(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV), 0x20 | 0x80 | 0x0020_0000);
    }

    #[test]
    fn data_becomes_parameters_in_order_with_quoted_commas_kept() {
        let p = plan("xfs", 0, Some("noquota,logbsize=64k,,label=\"a,b\"")).unwrap();
        assert_eq!(p.params, [flag("noquota"), value("logbsize", "64k"), value("label", "\"a,b\"")]);
        assert_eq!(plan("xfs", 0, Some("")).unwrap().params, []);
    }

    #[test]
    fn a_fuse_driver_takes_the_data_options_it_has_and_names_those_it_has_not() {
        let p = plan("ext4", MS_RDONLY | MS_SYNCHRONOUS, Some("data=journal,noload,nodelalloc,minixdf,norecovery"))
            .unwrap();
        let o = Driver::Fuse2fs.options(&p.params);
        assert_eq!(o.taken, ["norecovery", "minixdf"]);
        assert_eq!(o.ignored, ["data=journal", "nodelalloc"]);
        let defaults = plan("ext4", MS_RDONLY, Some("bsddf,errors=continue")).unwrap();
        assert_eq!(Driver::Fuse2fs.options(&defaults.params), Options::default());
        assert_eq!(Driver::Fuse2fs.options(&plan("ext4", 0, None).unwrap().params), Options::default());
        // squashfuse has none of them.
        let o = Driver::Squashfuse.options(&plan("squashfs", 0, Some("norecovery")).unwrap().params);
        assert_eq!(o, Options { taken: vec![], ignored: vec!["norecovery".into()] });
    }

    #[test]
    fn ext_filesystems_remount_read_only_on_errors_unless_the_caller_chose() {
        assert_eq!(plan("ext4", 0, None).unwrap().params, [value("errors", "remount-ro")]);
        assert_eq!(plan("ext2", 0, Some("errors=continue")).unwrap().params, [value("errors", "continue")]);
        assert_eq!(plan("xfs", 0, None).unwrap().params, []);
    }

    #[test]
    fn options_naming_other_devices_or_host_paths_and_errors_panic_are_refused() {
        for bad in [
            "journal_path=/dev/sda",
            "journal_dev=2049",
            "noatime,logdev=/dev/sdb",
            "rtdev=/dev/sdc",
            "device=/dev/sdd",
            "source=/dev/sda",
            "errors=panic",
        ] {
            let r = plan("ext4", 0, Some(bad)).unwrap_err();
            assert_eq!(r.errno, Errno::Perm, "{bad}");
            assert!(!r.why.is_empty());
        }
        for bad in ["=x", "a b", "x\ny", "\"open", "k;v=1"] {
            assert_eq!(plan("ext4", 0, Some(bad)).unwrap_err().errno, Errno::Inval, "{bad:?}");
        }
        assert_eq!(plan("ext4", 0, Some(&"a".repeat(MAX_DATA + 1))).unwrap_err().errno, Errno::Inval);
    }
}
