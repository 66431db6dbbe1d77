//! A daemon killed with SIGKILL leaves its containers' trapped calls
//! waiting, not failing: its seccomp listeners live on in the holder (or
//! systemd's fd store), and the next daemon answers them.

mod common;
use common::*;

/// Whether some process of container `c` (its `devns run` is `c.pid()`)
/// waits in a trapped `mknod`/`mknodat` (`/proc/PID/syscall`).
fn waits_in_mknod(c: &Container) -> bool {
    let nrs = [libc::SYS_mknod, libc::SYS_mknodat].map(|n| n.to_string());
    descendants(c.pid()).iter().any(|pid| {
        let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        s.split(' ').next().is_some_and(|nr| nrs.iter().any(|n| n == nr))
    })
}

/// Every process below `pid`.
fn descendants(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        for t in std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            all.extend(kids.split_whitespace().filter_map(|k| k.parse::<i32>().ok()));
        }
        i += 1;
    }
    all
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn calls_made_while_the_daemon_is_down_wait_and_succeed_after_its_restart() {
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut d = Daemon::start(&env);
    let mut c = shell_container(&env, &["--name", "a"]);
    assert_eq!(c.sh("mknod /tmp/n0 c 1 3 && echo made"), ["made"]);
    d.kill9();
    c.send("for i in 1 2 3 4 5; do mknod /tmp/n$i c 1 3 && echo made$i || echo failed$i; done\n");
    eventually("a mknod waits for the next daemon", || waits_in_mknod(&c));
    let _d = Daemon::start(&env);
    assert_eq!(c.lines_until("end"), ["made1", "made2", "made3", "made4", "made5"]);
    // And the next daemon keeps answering: a refusal is its, not ENOSYS.
    assert_eq!(
        c.sh("mknod /tmp/mem c 1 1 2>&1 || echo refused"),
        ["mknod: /tmp/mem: Operation not permitted", "refused"]
    );
    drop(c);
    drop(_d);
    eventually("the holder exits: nothing held, no daemon attached", || env.holders().is_empty());
}
