//! `/etc/devns/config.toml`: the policy an operator can change.

use crate::spec::is_safe_dev_name;
use serde::Deserialize;
use std::fmt;

/// The devices every view holds: DESIGN.md's default global set, and
/// `fuse`, which a user namespace may use on its own (FUSE mounts are
/// allowed there) and which containers' FUSE filesystems need
/// (fuse-overlayfs, squashfuse), as runtimes give it.
pub const DEFAULT_GLOBAL: &[&str] = &["null", "zero", "full", "random", "urandom", "tty", "fuse"];

/// Devices that must never be global, and why.
const NEVER_GLOBAL: &[(&str, &str)] = &[(
    "loop-control",
    "every view has devns's mediated loop-control already; the host's own would let any container remove other namespaces' loop devices",
)];

/// Largest config file devns reads; a bigger one is an error, not a hang.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Device names (`DEVNAME`) that appear in every view.
    #[serde(default = "default_global")]
    pub global: Vec<String>,
    /// Loop devices a namespace may allocate through `loop-control`.
    #[serde(default = "default_loop_limit")]
    pub loop_limit: usize,
    /// The access layer: a cgroup and a device program per container.
    /// Off only by the operator's explicit choice; when on, a host without
    /// cgroup2 or BPF makes `devns run` fail rather than run without it.
    #[serde(default = "default_device_policy")]
    pub device_policy: bool,
    /// The seccomp agent socket (`linux.seccomp.listenerPath`); `None`:
    /// `seccomp.sock` beside the API socket (`crate::layout`).
    #[serde(default)]
    pub seccomp_socket: Option<std::path::PathBuf>,
    /// Filesystem types whose mounts of a namespace's own block devices
    /// the kernel serves (devns mounts them, id-mapped to the container),
    /// for hosts whose images are trusted; the others go to a FUSE driver
    /// (`crate::blockmount`).
    #[serde(default)]
    pub mount_kernel: Vec<String>,
    /// Each event announced to a namespace with a network namespace of its
    /// own is also sent as udev sends it (the "udev" netlink group, libudev's
    /// format), for containers that run no udevd: their libudev monitors
    /// (`udevadm monitor --udev`, and every program that uses libudev) see
    /// hotplug. Off by default: a container that runs udevd would see each
    /// event twice.
    #[serde(default)]
    pub udev_events: bool,
    /// devns's CDI spec (`devns cdi generate`), which the daemon keeps up
    /// to date while it is there.
    #[serde(default = "default_cdi_spec")]
    pub cdi_spec: std::path::PathBuf,
}

fn default_cdi_spec() -> std::path::PathBuf {
    crate::cdi::SPEC_PATH.into()
}

fn default_device_policy() -> bool {
    true
}

fn default_loop_limit() -> usize {
    crate::loopctl::DEFAULT_LOOP_LIMIT
}

fn default_global() -> Vec<String> {
    DEFAULT_GLOBAL.iter().map(|s| (*s).to_owned()).collect()
}

impl Config {
    /// Where the daemon serves its seccomp agent: `given` (a flag or
    /// `DEVNS_SECCOMP_SOCKET`), else `seccomp_socket`, else `seccomp.sock`
    /// beside `api_socket`. The daemon, `devns oci profile` and the
    /// runtime wrapper all find it so.
    pub fn agent_socket(&self, api_socket: &std::path::Path, given: Option<std::path::PathBuf>) -> std::path::PathBuf {
        given.or_else(|| self.seccomp_socket.clone()).unwrap_or_else(|| crate::layout::seccomp_socket(api_socket))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            global: default_global(),
            loop_limit: default_loop_limit(),
            device_policy: true,
            seccomp_socket: None,
            mount_kernel: Vec::new(),
            udev_events: false,
            cdi_spec: default_cdi_spec(),
        }
    }
}

/// A bad config file: which file, where, and what is wrong.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub path: String,
    /// 1-based line and column, when the problem has a place.
    pub line: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some((l, c)) => write!(f, "bad config file {}: line {l}, column {c}: {}", self.path, self.message),
            None => write!(f, "bad config file {}: {}", self.path, self.message),
        }
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, col)
}

impl Config {
    /// Parses and checks `text`, read from `path` (used in errors only).
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let err = |line, message: String| ConfigError { path: path.to_owned(), line, message };
        if text.len() > MAX_CONFIG_BYTES {
            return Err(err(None, format!("larger than {MAX_CONFIG_BYTES} bytes")));
        }
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let place = e.span().map(|s| line_col(text, s.start));
            err(place, e.message().trim().to_owned())
        })?;
        // Point semantic errors at the line of the offending value.
        let place_of = |needle: &str| text.find(&format!("\"{needle}\"")).map(|o| line_col(text, o));
        for name in &cfg.global {
            if !is_safe_dev_name(name) {
                return Err(err(
                    place_of(name),
                    format!(
                        "global: {name:?} is not a device name (DEVNAME below /dev, such as \"null\" or \"net/tun\")"
                    ),
                ));
            }
            if let Some((_, why)) = NEVER_GLOBAL.iter().find(|(n, _)| n == name) {
                return Err(err(place_of(name), format!("global: {name:?} cannot be global: {why}")));
            }
        }
        if let Some(p) = &cfg.seccomp_socket {
            // A unix socket's path: absolute, and within `sun_path` (108
            // bytes with its NUL).
            let bytes = p.as_os_str().len();
            if !p.is_absolute() || bytes >= 108 {
                let shown = p.display();
                return Err(err(
                    place_of(&shown.to_string()),
                    format!("seccomp_socket: {shown:?} is not an absolute path of at most 107 bytes"),
                ));
            }
        }
        for t in &cfg.mount_kernel {
            if let Err(why) = crate::blockmount::kernel_type_ok(t) {
                return Err(err(place_of(t), format!("mount_kernel: {why}")));
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(Config::parse("", "c.toml"), Ok(Config::default()));
        assert_eq!(Config::default().global, ["null", "zero", "full", "random", "urandom", "tty", "fuse"]);
    }

    #[test]
    fn global_set_can_be_changed() {
        let c = Config::parse("global = [\"null\", \"net/tun\"]\n", "c.toml").unwrap();
        assert_eq!(c.global, ["null", "net/tun"]);
        assert_eq!(c.loop_limit, 16);
        assert_eq!(Config::parse("loop_limit = 2\n", "c.toml").unwrap().loop_limit, 2);
        assert!(c.device_policy, "the access layer is on unless turned off");
        assert!(!Config::parse("device_policy = false\n", "c.toml").unwrap().device_policy);
        assert!(Config::parse("device_policy = \"no\"\n", "c.toml").is_err());
        assert_eq!(Config::parse("", "c.toml").unwrap().seccomp_socket, None);
        let c = Config::parse("seccomp_socket = \"/run/s.sock\"\n", "c.toml").unwrap();
        assert_eq!(c.seccomp_socket.as_deref(), Some(std::path::Path::new("/run/s.sock")));
        let api = std::path::Path::new("/run/devns/devns.sock");
        assert_eq!(c.agent_socket(api, None), std::path::Path::new("/run/s.sock"));
        assert_eq!(c.agent_socket(api, Some("/g".into())), std::path::Path::new("/g"));
        assert_eq!(Config::default().agent_socket(api, None), std::path::Path::new("/run/devns/seccomp.sock"));
        for bad in ["rel.sock".to_owned(), format!("/{}", "x".repeat(107))] {
            let e = Config::parse(&format!("\nseccomp_socket = \"{bad}\"\n"), "c.toml").unwrap_err();
            assert_eq!(e.line.map(|l| l.0), Some(2), "{e}");
            assert!(e.message.contains("not an absolute path"), "{e}");
        }
        let e = Config::parse("loop_limit = -1\n", "c.toml").unwrap_err();
        assert_eq!(e.line.map(|l| l.0), Some(1), "{e}");
    }

    #[test]
    fn kernel_mount_types_are_block_filesystem_names() {
        assert!(Config::default().mount_kernel.is_empty(), "FUSE for every type unless the operator says");
        let c = Config::parse("mount_kernel = [\"ext4\", \"xfs\"]\n", "c.toml").unwrap();
        assert_eq!(c.mount_kernel, ["ext4", "xfs"]);
        for bad in ["tmpfs", "Ext4", "../x"] {
            let e = Config::parse(&format!("\nmount_kernel = [\"{bad}\"]\n"), "c.toml").unwrap_err();
            assert_eq!(e.line.map(|l| l.0), Some(2), "{e}");
            assert!(e.message.starts_with("mount_kernel: "), "{e}");
        }
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let e = Config::parse("# policy\nglobal = [\"null\",\n  3]\n", "/etc/devns/config.toml").unwrap_err();
        assert_eq!(e.line.map(|l| l.0), Some(3), "{e}");
        assert!(e.to_string().starts_with("bad config file /etc/devns/config.toml: line 3, column "), "{e}");

        let e = Config::parse("\nglobl = []\n", "c.toml").unwrap_err();
        assert_eq!(e.line.map(|l| l.0), Some(2));
        assert!(e.message.contains("unknown field `globl`"), "{e}");

        let e = Config::parse("global = [\n \"null\",\n \"../etc/passwd\"]", "c.toml").unwrap_err();
        assert_eq!(e.line, Some((3, 2)), "{e}");
        assert!(e.message.contains("not a device name"), "{e}");

        let e = Config::parse("global = [\"loop-control\"]", "c.toml").unwrap_err();
        assert!(e.to_string().contains("cannot be global"), "{e}");

        let e = Config::parse("global = ", "c.toml").unwrap_err();
        assert_eq!(e.line.map(|l| l.0), Some(1), "{e}");
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = Config::parse(&s, "fuzz.toml");
        }
    }
}
