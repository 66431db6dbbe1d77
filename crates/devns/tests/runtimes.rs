//! Real OCI runtimes under devns: runc, podman with runc, podman with crun,
//! user-namespaced, on a busybox rootfs with the host's own tools.

mod common;

use common::oci::{BLOCK, Bundle, Podman, Runc, crun_wrapper};
use common::{Env, privileged};

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The harness itself: each runtime starts a user-namespaced container on
/// the tools rootfs, its root mapped onto the bundle's block.
#[test]
fn the_runtimes_run_a_user_namespaced_container_here() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let runc = Runc::new(&env);
    let b = Bundle::new("harness");
    b.script("cat /proc/self/uid_map; id -u; mkfs.ext4 -V 2>&1 | head -1; losetup --version");
    let out = runc.run(&b);
    assert!(out.status.success(), "runc run: {}", text(&out));
    let s = text(&out);
    assert!(s.split_whitespace().take(3).eq(["0", &b.base.to_string(), &BLOCK.to_string()]), "{s}");
    assert!(s.contains("mke2fs") && s.contains("util-linux"), "{s}");

    let podman = Podman::new(&env);
    for runtime in [None, Some(crun_wrapper(env.dir.path()))] {
        let name = format!("{}-{}", b.id, if runtime.is_some() { "crun" } else { "runc" });
        let mut cmd = podman.run_args(&name, b.base);
        match &runtime {
            Some(w) => cmd.arg("--runtime").arg(w).args(["--pids-limit", "0"]),
            None => cmd.args(["--runtime", "runc"]),
        };
        let out =
            cmd.arg("--rootfs").arg(b.rootfs()).args(["/bin/sh", "-c", "cat /proc/self/uid_map"]).output().unwrap();
        assert!(out.status.success(), "podman run ({runtime:?}): {}", text(&out));
        assert!(text(&out).split_whitespace().take(2).eq(["0", &b.base.to_string()]), "{}", text(&out));
        let out = podman.rm(&name);
        assert!(out.status.success(), "podman rm: {}", text(&out));
    }
}
