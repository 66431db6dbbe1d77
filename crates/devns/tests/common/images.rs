//! Images and the loop devices containers attach to them: backing files
//! a container reaches, and the loop devices a test saw containers take,
//! removed should a failing test leave them.

use super::{LOOP_CTL_REMOVE, block_ino, loop_ctl, reachable_dir};
use std::path::PathBuf;

/// Backing files a container can reach (see [`reachable_dir`]),
/// writable by its root; removed on drop,
/// with the loop devices the test saw containers take, should a failing
/// test leave them (its daemon may be gone before it could clean up).
pub struct Images {
    pub dir: PathBuf,
    seen: std::cell::RefCell<Vec<Disk>>,
}

impl Images {
    pub fn new(tag: &str) -> Images {
        Images { dir: reachable_dir(tag), seen: Default::default() }
    }

    /// A container's device, as it is now (see [`Disk`]); remembered.
    pub fn disk(&self, path: &str) -> Disk {
        let d = Disk::of(path);
        self.seen.borrow_mut().push(d.clone());
        d
    }

    /// An 8 MiB image (with one partition when `partitioned`).
    pub fn make(&self, name: &str, partitioned: bool) -> String {
        let img = self.dir.join(name);
        std::fs::File::create(&img).and_then(|f| f.set_len(8 << 20)).unwrap();
        if partitioned {
            let mut c = std::process::Command::new("sfdisk");
            c.args(["-q", img.to_str().unwrap()])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null());
            let mut child = c.spawn().expect("sfdisk");
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"label: dos\n,4MiB,L\n").unwrap();
            assert!(child.wait().unwrap().success());
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o666)).unwrap();
        img.to_string_lossy().into_owned()
    }

    /// Loop devices on the host bound to one of these files.
    pub fn bound(&self) -> Vec<String> {
        let mine = self.dir.to_string_lossy().into_owned();
        host_loops()
            .into_iter()
            .filter(|n| {
                std::fs::read_to_string(format!("/sys/class/block/{n}/loop/backing_file"))
                    .is_ok_and(|f| f.starts_with(&mine))
            })
            .collect()
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        // Still there only when the test failed: this very device (same
        // sequence number), detached and removed; then any device still
        // bound to one of these files.
        for d in self.seen.borrow().iter().filter(|d| !d.gone()) {
            let _ = std::process::Command::new("losetup").args(["-d", &format!("/dev/{}", d.name)]).status();
            if let Some(n) = d.name.strip_prefix("loop").and_then(|n| n.parse().ok()) {
                loop_ctl(LOOP_CTL_REMOVE, n);
            }
        }
        for n in self.bound() {
            let _ = std::process::Command::new("losetup").args(["-d", &format!("/dev/{n}")]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The host's loop devices (whole disks).
pub fn host_loops() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/block")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.strip_prefix("loop").is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit())))
        .collect();
    v.sort();
    v
}

/// One loop device: its name and the inode of its sysfs directory, which
/// is the device's for its life (a new device at the same index, which a
/// concurrent test may make at once, has another; attaching and detaching
/// keep it, unlike the disk's sequence number).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Disk {
    pub name: String,
    pub ino: u64,
}

impl Disk {
    pub fn of(path: &str) -> Disk {
        let name = path.trim_start_matches("/dev/").to_owned();
        let ino = block_ino(&name).expect("a loop device");
        Disk { name, ino }
    }

    /// This very device is gone from the host (not merely detached).
    pub fn gone(&self) -> bool {
        block_ino(&self.name) != Some(self.ino)
    }
}
