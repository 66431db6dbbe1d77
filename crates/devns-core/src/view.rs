//! What a namespace's view must contain: the plan the shell applies to the
//! view's tmpfs.

use crate::device::{DevId, Device};
use crate::idmap::IdMap;
use crate::spec::is_safe_dev_name;
use std::collections::BTreeMap;

/// The symlinks every view has, as devtmpfs-based `/dev`s do.
pub const SYMLINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// The mountpoint for the namespace's own devpts instance.
pub const PTS_DIR: &str = "pts";
/// The mountpoint for a container's own POSIX shared memory (a tmpfs).
pub const SHM_DIR: &str = "shm";
/// The mountpoint for its IPC namespace's mqueue instance.
pub const MQUEUE_DIR: &str = "mqueue";
/// The directories every view has for the filesystems a container mounts
/// on it (see [`crate::devmounts`]), or its runtime carries onto it.
pub const MOUNTPOINTS: [&str; 3] = [PTS_DIR, SHM_DIR, MQUEUE_DIR];

/// `/dev/loop-control` in a view is a stand-in, never the kernel's device:
/// a node of the null device (numbers 1:3), on which every `LOOP_CTL_*`
/// ioctl is answered by devns's agent (see `loopctl`). A container thus
/// never holds a loop-control fd that could bypass the mediation (passed
/// to an unfiltered process, say); without the agent, the ioctls on it
/// fail as on `/dev/null`.
pub const LOOP_CONTROL: &str = "loop-control";
pub const LOOP_CONTROL_STAND_IN: DevId = DevId::new(crate::device::Kind::Char, 1, 3);

/// One thing in a view. Paths are relative to the view's root and safe (see
/// [`is_safe_dev_name`]); uids and gids are host ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir { path: String, mode: u32, uid: u32, gid: u32 },
    Node { path: String, dev: DevId, mode: u32, uid: u32, gid: u32 },
    Symlink { path: String, target: String, uid: u32, gid: u32 },
}

impl Entry {
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::Node { path, .. } | Entry::Symlink { path, .. } => path,
        }
    }
}

/// The view's root directory and its entries, parents before children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewPlan {
    pub root_uid: u32,
    pub root_gid: u32,
    pub entries: Vec<Entry>,
}

/// The host's overflow id (`/proc/sys/kernel/overflow{u,g}id`), what unmapped
/// ids show as; the shell passes the live values, this is the kernel's default.
pub const DEFAULT_OVERFLOW_ID: u32 = 65_534;
pub const DEFAULT_OVERFLOW: (u32, u32) = (DEFAULT_OVERFLOW_ID, DEFAULT_OVERFLOW_ID);

/// The plan for a view that holds `devices`, for a namespace with these maps.
/// Device owners are carried into the namespace (see [`IdMap::carry`]);
/// directories, symlinks and the root belong to the namespace's root.
pub fn plan(devices: &[&Device], uids: &IdMap, gids: &IdMap, overflow: (u32, u32)) -> ViewPlan {
    let (overflow_uid, overflow_gid) = overflow;
    let root_uid = uids.carry(0, overflow_uid);
    let root_gid = gids.carry(0, overflow_gid);
    let mut entries = Vec::with_capacity(devices.len() + SYMLINKS.len() + MOUNTPOINTS.len() + 1);
    // Every path in the plan, and whether it is a directory.
    let mut taken: BTreeMap<String, bool> = BTreeMap::new();
    // Only the namespace's root may write there: with nothing mounted on
    // them (a view mounted with `mount -t devtmpfs`), what is put there
    // takes the view's space, which its nodes need.
    for dir in MOUNTPOINTS {
        entries.push(Entry::Dir { path: dir.into(), mode: 0o755, uid: root_uid, gid: root_gid });
        taken.insert(dir.into(), true);
    }
    for (path, target) in SYMLINKS {
        entries.push(Entry::Symlink { path: (*path).into(), target: (*target).into(), uid: root_uid, gid: root_gid });
        taken.insert((*path).into(), false);
    }
    entries.push(Entry::Node {
        path: LOOP_CONTROL.into(),
        dev: LOOP_CONTROL_STAND_IN,
        mode: 0o600,
        uid: root_uid,
        gid: root_gid,
    });
    taken.insert(LOOP_CONTROL.into(), false);
    for d in devices {
        // A name that would escape, or collide with a fixed entry or with a
        // directory another device needs, is left out rather than guessed at;
        // so is one below a mountpoint, which the container's mount covers.
        if !is_safe_dev_name(&d.name) || taken.contains_key(&d.name) || below_mountpoint(&d.name) {
            continue;
        }
        let comps: Vec<&str> = d.name.split('/').collect();
        let dirs: Vec<String> = (1..comps.len()).map(|i| comps[..i].join("/")).collect();
        if dirs.iter().any(|p| taken.get(p) == Some(&false)) {
            continue;
        }
        for p in dirs {
            if taken.insert(p.clone(), true).is_none() {
                entries.push(Entry::Dir { path: p, mode: 0o755, uid: root_uid, gid: root_gid });
            }
        }
        taken.insert(d.name.clone(), false);
        entries.push(Entry::Node {
            path: d.name.clone(),
            dev: d.id,
            mode: d.mode & 0o7777,
            uid: uids.carry(d.uid, overflow_uid),
            gid: gids.carry(d.gid, overflow_gid),
        });
    }
    ViewPlan { root_uid, root_gid, entries }
}

fn below_mountpoint(name: &str) -> bool {
    MOUNTPOINTS.iter().any(|m| name.strip_prefix(m).is_some_and(|rest| rest.starts_with('/')))
}

/// What the shell found at a path of a live view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    Dir,
    Node(DevId),
    /// A symlink, regular file, FIFO or socket: the container's business.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actual {
    pub path: String,
    pub found: Found,
}

/// `paths` with every parent directory of each (`net/tun` brings `net`),
/// parents first.
pub fn with_parents<'p>(paths: &[&'p str]) -> std::collections::BTreeSet<&'p str> {
    let mut all = std::collections::BTreeSet::new();
    for p in paths {
        let mut at = 0;
        while let Some(i) = p[at..].find('/') {
            all.insert(&p[..at + i]);
            at += i + 1;
        }
        all.insert(*p);
    }
    all
}

/// One step that brings a live view to its plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create a directory or node entry of the plan.
    Create(Entry),
    /// Remove the node at a path.
    Remove(String),
}

/// The steps from `actual` to `plan`, removals first.
///
/// Device nodes are devns's: a desired node that is missing is made, a node
/// of a device the namespace may no longer see is removed (whatever its
/// path: nodes a container made of its own devices stay), and a node at a
/// desired path that is another device is replaced. Everything else a
/// container put in its view (files, symlinks, directories, chmods) is left
/// as it is; symlinks are made only with the view.
pub fn diff(plan: &ViewPlan, actual: &[Actual], visible: impl Fn(DevId) -> bool) -> Vec<Op> {
    let found: BTreeMap<&str, &Found> = actual.iter().map(|a| (a.path.as_str(), &a.found)).collect();
    let mut removes = Vec::new();
    let mut creates = Vec::new();
    for a in actual {
        if let Found::Node(dev) = a.found
            && !visible(dev)
            && !(a.path == LOOP_CONTROL && dev == LOOP_CONTROL_STAND_IN)
        {
            removes.push(Op::Remove(a.path.clone()));
        }
    }
    for e in &plan.entries {
        match (e, found.get(e.path())) {
            (Entry::Dir { .. } | Entry::Node { .. }, None) => creates.push(Op::Create(e.clone())),
            (Entry::Node { dev, .. }, Some(Found::Node(have))) if have != dev => {
                if visible(*have) {
                    removes.push(Op::Remove(e.path().to_owned()));
                }
                creates.push(Op::Create(e.clone()));
            }
            _ => {}
        }
    }
    removes.extend(creates);
    removes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Kind;
    use crate::registry::NsId;
    use crate::registry::tests::{dev, sample};

    fn top_names(p: &ViewPlan) -> Vec<&str> {
        let mut v: Vec<&str> = p.entries.iter().map(Entry::path).filter(|p| !p.contains('/')).collect();
        v.sort();
        v
    }

    #[test]
    fn a_path_brings_its_parent_directories() {
        let got: Vec<&str> = with_parents(&["net/tun", "loop3", "a/b/c"]).into_iter().collect();
        assert_eq!(got, ["a", "a/b", "a/b/c", "loop3", "net", "net/tun"]);
    }

    #[test]
    fn default_view_is_globals_symlinks_and_mountpoints() {
        let r = sample();
        let m = IdMap::single(100_000, 65_536);
        let p = plan(&r.view_devices(NsId(1)), &m, &m, DEFAULT_OVERFLOW);
        assert_eq!(
            top_names(&p),
            ["fd", "loop-control", "mqueue", "null", "ptmx", "pts", "shm", "stderr", "stdin", "stdout", "zero"]
        );
        assert_eq!((p.root_uid, p.root_gid), (100_000, 100_000));
    }

    #[test]
    fn owners_are_carried_into_the_namespace() {
        let tty = crate::Device { uid: 0, gid: 5, mode: 0o20666, ..dev(Kind::Char, 5, 0, "tty") };
        let odd = crate::Device { uid: 70_000, gid: 70_000, ..dev(Kind::Char, 1, 3, "null") };
        let m = IdMap::single(100_000, 65_536);
        let p = plan(&[&tty, &odd], &m, &m, DEFAULT_OVERFLOW);
        let node = |n: &str| p.entries.iter().find(|e| e.path() == n).cloned().unwrap();
        assert_eq!(
            node("tty"),
            Entry::Node { path: "tty".into(), dev: tty.id, mode: 0o666, uid: 100_000, gid: 100_005 }
        );
        assert!(matches!(node("null"), Entry::Node { uid: 65_534, gid: 65_534, .. }));
    }

    #[test]
    fn nested_names_get_parent_dirs_first_and_collisions_are_dropped() {
        let devs = [
            dev(Kind::Char, 10, 200, "net/tun"),
            dev(Kind::Char, 13, 64, "input/event0"),
            dev(Kind::Char, 13, 65, "input/event1"),
            dev(Kind::Char, 99, 0, "fd"),
            dev(Kind::Char, 99, 1, "stdin/x"),
            dev(Kind::Char, 99, 2, "net"),
            dev(Kind::Char, 99, 3, "shm"),
            dev(Kind::Char, 99, 4, "mqueue/q"),
        ];
        let refs: Vec<&crate::Device> = devs.iter().collect();
        let m = IdMap::single(1000, 65_536);
        let p = plan(&refs, &m, &m, DEFAULT_OVERFLOW);
        let paths: Vec<&str> = p.entries.iter().map(Entry::path).collect();
        let pos = |n: &str| paths.iter().position(|p| *p == n).unwrap();
        assert!(pos("net") < pos("net/tun"));
        assert!(pos("input") < pos("input/event0"));
        assert_eq!(paths.iter().filter(|p| **p == "input").count(), 1);
        assert_eq!(paths.iter().filter(|p| **p == "fd").count(), 1);
        assert!(!paths.contains(&"stdin/x"));
        // The mountpoints stay directories: devices named there are left out.
        assert_eq!(paths.iter().filter(|p| **p == "shm").count(), 1);
        assert!(matches!(p.entries[pos("shm")], Entry::Dir { .. }));
        assert!(!paths.contains(&"mqueue/q"));
        assert!(matches!(p.entries[pos("net")], Entry::Dir { .. }));
    }

    #[test]
    fn diff_makes_missing_removes_invisible_and_leaves_the_rest() {
        let r = sample();
        let m = IdMap::single(100_000, 65_536);
        let p = plan(&r.view_devices(NsId(1)), &m, &m, DEFAULT_OVERFLOW);
        let null = DevId::new(Kind::Char, 1, 3);
        let loop0 = DevId::new(Kind::Block, 7, 0);
        let actual = vec![
            Actual { path: "pts".into(), found: Found::Dir },
            Actual { path: "shm".into(), found: Found::Dir },
            Actual { path: "mqueue".into(), found: Found::Dir },
            Actual { path: LOOP_CONTROL.into(), found: Found::Node(null) },
            Actual { path: "zero".into(), found: Found::Other },
            Actual { path: "null2".into(), found: Found::Node(null) },
            Actual { path: "loop0".into(), found: Found::Node(loop0) },
            Actual { path: "null".into(), found: Found::Node(loop0) },
        ];
        let ops = diff(&p, &actual, |d| r.visible_in(d, NsId(1)));
        let want_null = p.entries.iter().find(|e| e.path() == "null").unwrap().clone();
        assert_eq!(ops, vec![Op::Remove("loop0".into()), Op::Remove("null".into()), Op::Create(want_null)]);
        // A view that matches its plan needs nothing.
        let full: Vec<Actual> = p
            .entries
            .iter()
            .map(|e| Actual {
                path: e.path().into(),
                found: match e {
                    Entry::Dir { .. } => Found::Dir,
                    Entry::Node { dev, .. } => Found::Node(*dev),
                    Entry::Symlink { .. } => Found::Other,
                },
            })
            .collect();
        assert!(diff(&p, &full, |d| r.visible_in(d, NsId(1))).is_empty());
    }

    #[test]
    fn loop_control_is_a_stand_in_that_stays_when_null_is_not_global() {
        let real = dev(Kind::Char, 10, 237, "loop-control");
        let m = IdMap::single(100_000, 65_536);
        let p = plan(&[&real], &m, &m, DEFAULT_OVERFLOW);
        let ctl: Vec<&Entry> = p.entries.iter().filter(|e| e.path() == LOOP_CONTROL).collect();
        assert_eq!(
            ctl,
            [&Entry::Node {
                path: LOOP_CONTROL.into(),
                dev: LOOP_CONTROL_STAND_IN,
                mode: 0o600,
                uid: 100_000,
                gid: 100_000
            }]
        );
        let actual = vec![
            Actual { path: PTS_DIR.into(), found: Found::Dir },
            Actual { path: SHM_DIR.into(), found: Found::Dir },
            Actual { path: MQUEUE_DIR.into(), found: Found::Dir },
            Actual { path: LOOP_CONTROL.into(), found: Found::Node(LOOP_CONTROL_STAND_IN) },
            Actual { path: "null".into(), found: Found::Node(LOOP_CONTROL_STAND_IN) },
        ];
        // Nothing is visible: the null node goes, the stand-in stays.
        assert_eq!(diff(&p, &actual, |_| false), vec![Op::Remove("null".into())]);
    }
}
