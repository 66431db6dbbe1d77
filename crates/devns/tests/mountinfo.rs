//! `/proc/self/mountinfo` is read as the kernel writes it, as root against
//! the real kernel: a mount point whose name is not UTF-8 (which any user
//! with `fusermount` can make) stops no devns command.

mod common;
use common::*;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn a_mount_point_whose_name_is_not_utf8_stops_no_run() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let odd = env.dir.path().join(std::ffi::OsStr::from_bytes(b"odd \xff name"));
    std::fs::create_dir(&odd).unwrap();
    let root = busybox_rootfs(env.dir.path());
    // In a mount namespace of the test's own (private: nothing reaches the
    // host's), gone with it.
    let script = r#"mount -t tmpfs none "$1" && exec "$2" run --rootfs "$3" -- /bin/sh -c 'echo ran'"#;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(&odd)
        .arg(env!("CARGO_BIN_EXE_devns"))
        .arg(&root)
        .stdin(Stdio::null());
    let out = env.devns_env(&mut cmd).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ran", "{out:?}");
}
