//! The OCI hooks' decisions (`devns hook createRuntime` and `poststop`):
//! whether a container asked for devns and what it asked for (its
//! annotations), where its rootfs is (its bundle's `config.json`), which
//! of the runtime's mounts below its `/dev` move onto the view, and which
//! lines of `/proc/PID/cgroup` and mountinfo name its cgroups. Pure; the
//! shell is `devns::commands::hook` and the engine's `attach`.

use crate::mountinfo::Mount;
use crate::oci::State;
use std::path::{Path, PathBuf};

/// `true` (exactly) brings a container under devns; anything else, or no
/// such annotation, and devns never touches it.
pub const ENABLE: &str = "devns.io/enable";
/// `DEV[,DEV...]`, each as `devns run --dev` takes it: assigned to the
/// container's namespace.
pub const DEVICES: &str = "devns.io/devices";
/// The namespace's name (else the container's id).
pub const NAME: &str = "devns.io/name";
/// Largest `config.json` devns reads (runtime-spec configs are a few KiB;
/// Kubernetes bounds annotations to 256 KiB).
pub const MAX_CONFIG_BYTES: usize = 4 << 20;
/// Most devices one annotation names.
pub const MAX_DEVICES: usize = 256;
/// Longest device spec in it.
const MAX_DEVICE_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    #[error("container id {0:?} cannot name a devns namespace (1 to 64 bytes, no ':'): set the annotation {NAME}")]
    BadId(String),
    #[error("annotation {NAME}={0:?} is not a devns namespace name (1 to 64 bytes, no ':')")]
    BadName(String),
    #[error("annotation {DEVICES}={value:?}: {why}")]
    BadDevices { value: String, why: &'static str },
    #[error("bundle config.json too large: {0} bytes (at most {MAX_CONFIG_BYTES})")]
    ConfigTooLarge(usize),
    #[error("bundle config.json is not valid: {0}")]
    Config(String),
    #[error("bundle config.json has a bad root.path {0:?}")]
    BadRoot(String),
}

/// The stages devns serves as a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    CreateRuntime,
    Poststop,
}

/// The stage a runtime's state is given at, by its `status`: one hooks.d
/// file serves both (oci-hooks(5) gives every stage of a file the same
/// arguments). createRuntime's is `creating` (runc) or `created` (crun
/// 1.8), poststop's `stopped`.
pub fn stage_of(status: &str) -> Option<Stage> {
    match status {
        "creating" | "created" => Some(Stage::CreateRuntime),
        "stopped" => Some(Stage::Poststop),
        _ => None,
    }
}

/// What a container asked of devns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// Its namespace's name.
    pub name: String,
    /// Device specs to assign to it.
    pub devices: Vec<String>,
}

/// Whether the container of `state` asked for devns (`None`: it did not,
/// and nothing of it may be touched), and what.
pub fn wanted(state: &State) -> Result<Option<Wanted>, HookError> {
    wanted_with(state, &[], false)
}

/// As [`wanted`], with what the hook's own arguments say (a CDI device's
/// hook: `devns hook --device D`, or `--enable` for `loop`): a container
/// that requested a CDI device of devns's asked for devns by that,
/// annotation or not; its devices are the annotation's and `asked`.
pub fn wanted_with(state: &State, asked: &[String], enabled: bool) -> Result<Option<Wanted>, HookError> {
    let a = &state.annotations;
    if a.get(ENABLE).map(String::as_str) != Some("true") && asked.is_empty() && !enabled {
        return Ok(None);
    }
    let name = match a.get(NAME) {
        Some(n) if is_name(n) => n.clone(),
        Some(n) => return Err(HookError::BadName(n.clone())),
        None if is_name(&state.id) => state.id.clone(),
        None => return Err(HookError::BadId(state.id.clone())),
    };
    let mut devices = match a.get(DEVICES) {
        None => vec![],
        Some(v) => devices(v)?,
    };
    for d in asked {
        if !devices.contains(d) {
            devices.push(d.clone());
        }
    }
    Ok(Some(Wanted { name, devices }))
}

/// A name a namespace may have (docs/API.md "Names"): what
/// [`crate::api::NsRef::parse`] reads as a name, not as `id:N` or `pid:N`.
pub fn is_name(s: &str) -> bool {
    matches!(crate::api::NsRef::parse(s), Ok(crate::api::NsRef::Name(_)))
}

/// `DEV[,DEV...]`; spaces around each are dropped; an empty value names
/// none.
fn devices(value: &str) -> Result<Vec<String>, HookError> {
    let bad = |why| HookError::BadDevices { value: value.chars().take(200).collect(), why };
    if value.trim().is_empty() {
        return Ok(vec![]);
    }
    let out: Vec<String> = value.split(',').map(|d| d.trim().to_owned()).collect();
    if out.len() > MAX_DEVICES {
        return Err(bad("too many devices (at most 256)"));
    }
    if out.iter().any(String::is_empty) {
        return Err(bad("an empty device"));
    }
    if out.iter().any(|d| d.len() > MAX_DEVICE_BYTES || d.chars().any(char::is_control)) {
        return Err(bad("a device too long or with a control character"));
    }
    Ok(out)
}

/// The container's rootfs as its runtime has it before `pivot_root`: the
/// bundle's `config.json` `root.path`, a relative one taken from the
/// bundle. A path to resolve inside the container's mount namespace,
/// never to open on the host.
pub fn root_path(config: &[u8], bundle: &str) -> Result<String, HookError> {
    #[derive(serde::Deserialize)]
    struct Config {
        root: Root,
    }
    #[derive(serde::Deserialize)]
    struct Root {
        path: String,
    }
    if config.len() > MAX_CONFIG_BYTES {
        return Err(HookError::ConfigTooLarge(config.len()));
    }
    let c: Config = serde_json::from_slice(config).map_err(|e| HookError::Config(e.to_string()))?;
    let p = c.root.path;
    if p.is_empty() || p.contains('\0') || p.len() > crate::oci::MAX_BUNDLE_BYTES {
        return Err(HookError::BadRoot(p));
    }
    if p.starts_with('/') {
        return Ok(p);
    }
    Ok(format!("{}/{}", bundle.trim_end_matches('/'), p))
}

/// A mount the runtime made below the container's `/dev`, to move onto
/// the view at the same place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Carry {
    /// Its mount id (checked again on the fd opened for it).
    pub id: u32,
    /// Where it is below `/dev`.
    pub rel: PathBuf,
}

/// The mounts of `mounts` (mountinfo of the container's mount namespace)
/// mounted on `dev` (mount `dev_id`, at `dev_path`) below it: runc's and
/// crun's `/dev/pts`, `/dev/shm`, `/dev/mqueue`, and the device nodes
/// they bind there (mounts on those move with them), in mountinfo order.
pub fn carried(mounts: &[Mount], dev_id: u32, dev_path: &Path) -> Vec<Carry> {
    mounts
        .iter()
        .filter(|m| m.parent == dev_id && m.id != dev_id)
        .filter_map(|m| {
            let rel = m.mount_point.strip_prefix(dev_path).ok()?;
            (!rel.as_os_str().is_empty()).then(|| Carry { id: m.id, rel: rel.to_owned() })
        })
        .collect()
}

/// The path of the v1 hierarchy of `controller` in `/proc/PID/cgroup`
/// text (`ID:CTRL[,CTRL]:PATH`), if it is mounted for it.
pub fn v1_path<'a>(proc_cgroup: &'a str, controller: &str) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        ctrls.split(',').any(|c| c == controller).then_some(path)
    })
}

/// Where the v1 hierarchy of `controller` is mounted whole (root `/`) in
/// `mountinfo` text.
pub fn v1_mount(mountinfo: &[u8], controller: &str) -> Option<PathBuf> {
    crate::mountinfo::mounts(mountinfo)
        .find(|m| {
            m.fstype == "cgroup" && m.root.as_os_str() == "/" && m.super_options.split(',').any(|o| o == controller)
        })
        .map(|m| m.mount_point)
}

/// What a runtime's v1 `devices` controller of the container is given
/// once devns's program decides (`devices.allow`): everything, so that
/// devns's map alone says which device may be used.
pub const V1_ALLOW_ALL: &str = "a *:* rwm";

/// Whether a v1 `devices.list` allows every device already (nothing to
/// defer then).
pub fn v1_allows_all(devices_list: &str) -> bool {
    devices_list.lines().any(|l| l.trim() == V1_ALLOW_ALL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn state(id: &str, ann: &[(&str, &str)]) -> State {
        State {
            oci_version: "1.0.2-dev".into(),
            id: id.into(),
            status: "creating".into(),
            pid: Some(7),
            bundle: "/b".into(),
            annotations: ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn the_stage_follows_the_status() {
        assert_eq!(stage_of("creating"), Some(Stage::CreateRuntime));
        assert_eq!(stage_of("created"), Some(Stage::CreateRuntime));
        assert_eq!(stage_of("stopped"), Some(Stage::Poststop));
        for other in ["running", "paused", "", "Stopped"] {
            assert_eq!(stage_of(other), None, "{other}");
        }
    }

    #[test]
    fn only_enable_true_brings_a_container_under_devns() {
        for ann in [&[][..], &[(ENABLE, "false")], &[(ENABLE, "True")], &[(ENABLE, " true")], &[(ENABLE, "1")]] {
            assert_eq!(wanted(&state("c", ann)), Ok(None), "{ann:?}");
        }
        // Nothing else is looked at: a bad name or device list of a
        // container that did not ask is none of devns's business.
        assert_eq!(wanted(&state("a:b", &[(DEVICES, ",,")])), Ok(None));
        let w = wanted(&state("web", &[(ENABLE, "true")])).unwrap().unwrap();
        assert_eq!(w, Wanted { name: "web".into(), devices: vec![] });
    }

    #[test]
    fn the_name_is_the_annotation_s_or_the_id_and_keeps_the_rules() {
        let podman = "3f2a".repeat(16);
        assert_eq!(wanted(&state(&podman, &[(ENABLE, "true")])).unwrap().unwrap().name, podman);
        let named = wanted(&state(&podman, &[(ENABLE, "true"), (NAME, "web")])).unwrap().unwrap();
        assert_eq!(named.name, "web");
        let long = "a".repeat(65);
        assert_eq!(wanted(&state(&long, &[(ENABLE, "true")])), Err(HookError::BadId(long.clone())));
        assert!(wanted(&state(&long, &[(ENABLE, "true"), (NAME, "ok")])).is_ok());
        for bad in ["", "id:5", "pid:1", "a:b", &long] {
            let e = wanted(&state("c", &[(ENABLE, "true"), (NAME, bad)])).unwrap_err();
            assert_eq!(e, HookError::BadName(bad.into()));
        }
    }

    #[test]
    fn devices_are_a_comma_list_of_dev_specs() {
        let w = |v: &str| wanted(&state("c", &[(ENABLE, "true"), (DEVICES, v)])).map(|w| w.unwrap().devices);
        assert_eq!(w("loop3"), Ok(vec!["loop3".into()]));
        assert_eq!(w("loop3, /dev/net/tun ,b:7:4"), Ok(vec!["loop3".into(), "/dev/net/tun".into(), "b:7:4".into()]));
        assert_eq!(w(""), Ok(vec![]));
        assert_eq!(w("  "), Ok(vec![]));
        for (bad, why) in [("a,,b", "an empty device"), ("a,", "an empty device"), ("a\nb", "control")] {
            let e = w(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.starts_with("annotation devns.io/devices="), "{bad}: {e}");
        }
        assert!(w(&vec!["x"; MAX_DEVICES + 1].join(",")).unwrap_err().to_string().contains("too many"));
        assert!(w(&"x".repeat(MAX_DEVICE_BYTES + 1)).unwrap_err().to_string().contains("too long"));
    }

    #[test]
    fn root_path_is_the_config_s_relative_to_the_bundle() {
        let cfg = |p: &str| {
            let p = serde_json::to_string(p).unwrap();
            format!(r#"{{"ociVersion":"1.0.2","root":{{"path":{p},"readonly":true}},"x":[1]}}"#)
        };
        assert_eq!(root_path(cfg("rootfs").as_bytes(), "/run/b"), Ok("/run/b/rootfs".into()));
        assert_eq!(root_path(cfg("rootfs").as_bytes(), "/run/b/"), Ok("/run/b/rootfs".into()));
        assert_eq!(root_path(cfg("/srv/r").as_bytes(), "/run/b"), Ok("/srv/r".into()));
        assert_eq!(root_path(cfg("").as_bytes(), "/b"), Err(HookError::BadRoot(String::new())));
        assert_eq!(root_path(cfg("a\0b").as_bytes(), "/b"), Err(HookError::BadRoot("a\0b".into())));
        for bad in [&b"{}"[..], b"{\"root\":{}}", b"[", b"", br#"{"root":{"path":"a"},"root":{"path":"b"}}"#] {
            assert!(matches!(root_path(bad, "/b"), Err(HookError::Config(_))), "{}", String::from_utf8_lossy(bad));
        }
        let big = vec![b' '; MAX_CONFIG_BYTES + 1];
        assert_eq!(root_path(&big, "/b"), Err(HookError::ConfigTooLarge(MAX_CONFIG_BYTES + 1)));
    }

    /// What runc 1.1.5 had mounted when its createRuntime hook ran
    /// (a user-namespaced container, bundle `/tmp/hk/b`).
    const RUNC_MOUNTINFO: &str = "\
68 47 254:0 /tmp/hk/b/rootfs /tmp/hk/b/rootfs rw,relatime - ext4 /dev/vda rw
69 68 0:41 / /tmp/hk/b/rootfs/proc rw,relatime - proc proc rw
70 68 0:42 / /tmp/hk/b/rootfs/dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755,uid=300000,gid=300000
71 70 0:43 / /tmp/hk/b/rootfs/dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,mode=620,ptmxmode=666
72 70 0:44 / /tmp/hk/b/rootfs/dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
73 70 0:40 / /tmp/hk/b/rootfs/dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
74 68 0:22 / /tmp/hk/b/rootfs/sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs rw
96 70 0:6 /null /tmp/hk/b/rootfs/dev/null rw,relatime - devtmpfs devtmpfs rw,mode=755
102 71 0:6 /null /tmp/hk/b/rootfs/dev/pts/x rw,relatime - devtmpfs devtmpfs rw,mode=755
103 68 0:50 / /tmp/hk/b/rootfs/devices rw - tmpfs tmpfs rw
";

    #[test]
    fn the_runtime_s_mounts_on_dev_are_carried() {
        let m: Vec<Mount> = crate::mountinfo::mounts(RUNC_MOUNTINFO.as_bytes()).collect();
        let got = carried(&m, 70, Path::new("/tmp/hk/b/rootfs/dev"));
        let rels: Vec<(u32, &str)> = got.iter().map(|c| (c.id, c.rel.to_str().unwrap())).collect();
        // pts/x moves with pts; /devices is no mount of /dev's.
        assert_eq!(rels, [(71, "pts"), (72, "shm"), (73, "mqueue"), (96, "null")]);
        // A /dev that is no mount of its own: only what is below it.
        let got = carried(&m, 68, Path::new("/tmp/hk/b/rootfs/dev"));
        assert_eq!(got, vec![]);
        assert_eq!(carried(&m, 68, Path::new("/tmp/hk/b/rootfs/sys")).len(), 0);
        assert_eq!(carried(&m, 74, Path::new("/tmp/hk/b/rootfs/sys")), vec![]);
    }

    #[test]
    fn cgroup_lines_and_v1_mounts() {
        let pc = "9:name=systemd:/hk1\n5:devices:/hk1\n2:cpu,cpuacct:/x/hk1\n0::/hk1\n";
        assert_eq!(v1_path(pc, "devices"), Some("/hk1"));
        assert_eq!(v1_path(pc, "cpuacct"), Some("/x/hk1"));
        assert_eq!(v1_path(pc, "memory"), None);
        assert_eq!(v1_path(pc, ""), Some("/hk1"), "the v2 line has no controllers");
        assert_eq!(v1_path("0::/\n", "devices"), None);
        let mi = "\
30 22 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro
32 30 0:33 / /sys/fs/cgroup/devices rw,nosuid - cgroup cgroup rw,devices
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 22 0:33 /sub /mnt/dv rw - cgroup cgroup rw,devices
35 30 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        assert_eq!(v1_mount(mi.as_bytes(), "devices"), Some(PathBuf::from("/sys/fs/cgroup/devices")));
        assert_eq!(v1_mount(mi.as_bytes(), "cpuacct"), Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")));
        assert_eq!(v1_mount(mi.as_bytes(), "memory"), None);
        assert_eq!(v1_mount(b"34 22 0:33 /sub /mnt/dv rw - cgroup cgroup rw,devices\n", "devices"), None);
        assert!(v1_allows_all("a *:* rwm\n"));
        assert!(!v1_allows_all("c 1:3 rwm\nc *:* m\nb *:* m\n"));
        assert!(!v1_allows_all(""));
    }
}
