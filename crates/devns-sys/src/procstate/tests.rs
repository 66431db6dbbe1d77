use super::*;
use crate::process::{Forked, fork_into, wait_pidfd};

/// Whether a test that needs root may run; without root it fails unless
/// the opt-out is set.
fn root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("DEVNS_TEST_SKIP_PRIVILEGED").is_some_and(|v| v == "1"),
        "this test needs root: run as root, or set DEVNS_TEST_SKIP_PRIVILEGED=1"
    );
    eprintln!("SKIPPED: this test needs root");
    false
}

/// Runs `check` in a forked child, which is single-threaded (unlike the
/// test runner); the child's exit status, 0 when `check` held.
fn in_child(check: impl FnOnce() -> bool) -> i32 {
    // SAFETY: the child runs `check` (syscalls, and allocations that glibc's
    // fork handlers make safe) and leaves by `_exit`, never returning into
    // the runner's frames.
    match unsafe { fork_into(0) }.expect("fork") {
        Forked::Child => {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)).unwrap_or(false);
            // SAFETY: ends this child without running anything of the runner's.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        Forked::Parent { pidfd, .. } => wait_pidfd(&pidfd).expect("wait"),
    }
}

/// A child in namespaces of its own (`CLONE_NEW*` `flags`) that waits
/// until dropped.
struct Holder {
    pid: i32,
    pidfd: OwnedFd,
    release: Option<OwnedFd>,
}

impl Holder {
    fn new(flags: i32) -> Holder {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
        // SAFETY: the child only reads the pipe and `_exit`s, both
        // async-signal-safe.
        match unsafe { fork_into(flags) }.expect("fork") {
            Forked::Child => {
                drop(w);
                let _ = rustix::io::read(&r, &mut [0u8; 1]);
                // SAFETY: ends this child without running anything of the runner's.
                unsafe { libc::_exit(0) }
            }
            Forked::Parent { pid, pidfd } => Holder { pid: pid.as_raw_nonzero().get(), pidfd, release: Some(w) },
        }
    }

    /// Its namespace `name` (`net`, `mnt`), and that namespace's inode.
    fn ns(&self, name: &str) -> (OwnedFd, u64) {
        let fd =
            rustix::fs::open(format!("/proc/{}/ns/{name}", self.pid), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .expect("its namespace");
        let ino = rustix::fs::fstat(&fd).expect("fstat").st_ino;
        (fd, ino)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.release = None;
        let _ = wait_pidfd(&self.pidfd);
    }
}

fn ino(path: &str) -> u64 {
    rustix::fs::stat(path).expect("stat").st_ino
}

/// The umask is the process's: a forked child has it to itself.
#[test]
fn the_umask_guard_gives_the_old_umask_back() {
    let status = in_child(|| {
        rustix::process::umask(Mode::from_raw_mode(0o027));
        let inside = {
            let _g = Umask::set(Mode::from_raw_mode(0o077));
            rustix::process::umask(Mode::from_raw_mode(0o077)).bits() == 0o077
        };
        inside && rustix::process::umask(Mode::from_raw_mode(0o022)).bits() == 0o027
    });
    assert_eq!(status, 0);
}

fn passes_the_assertion() -> bool {
    std::panic::catch_unwind(|| debug_assert_alone("test")).is_ok()
}

/// A thread sharing the `fs_struct` fails the assertion (in debug builds);
/// one that left it does not count.
#[test]
fn threads_sharing_the_fs_struct_are_counted_and_fail_the_debug_assertion() {
    let status = in_child(|| {
        if threads_sharing_fs() != Some(1) || !passes_the_assertion() {
            return false;
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (left_tx, left_rx) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            let left = leave_shared_fs().is_ok();
            // Its own umask now: the child's stays.
            rustix::process::umask(Mode::from_raw_mode(0o077));
            let _ = left_tx.send(left);
            rx.recv()
        });
        let left = left_rx.recv() == Ok(true);
        let ok = left && threads_sharing_fs() == Some(1) && passes_the_assertion() && {
            let m = rustix::process::umask(Mode::from_raw_mode(0o022));
            m.bits() != 0o077
        };
        drop(tx);
        let _ = other.join();
        ok
    });
    assert_eq!(status, 0);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || rx.recv());
    assert!(threads_sharing_fs().is_some_and(|n| n >= 2));
    assert_eq!(passes_the_assertion(), !cfg!(debug_assertions));
    drop(tx);
    let _ = other.join();
}

/// Needs root. Network namespaces are per thread: the test's own thread
/// enters and comes back.
#[test]
fn a_network_namespace_is_entered_and_left() {
    if !root() {
        return;
    }
    let holder = Holder::new(libc::CLONE_NEWNET);
    let (theirs, target) = holder.ns("net");
    let own = ino("/proc/thread-self/ns/net");
    assert_ne!(own, target);
    {
        let _in = InNamespace::enter(theirs.as_fd(), Namespace::Network).expect("enter");
        assert_eq!(ino("/proc/thread-self/ns/net"), target);
    }
    assert_eq!(ino("/proc/thread-self/ns/net"), own);
}

/// Needs root. A mount namespace is entered by a single-threaded process
/// only: a forked child enters and comes back, to its working directory.
#[test]
fn a_mount_namespace_is_entered_and_left_with_the_working_directory() {
    if !root() {
        return;
    }
    let holder = Holder::new(libc::CLONE_NEWNS);
    let (theirs, target) = holder.ns("mnt");
    let status = in_child(|| {
        let own = ino("/proc/thread-self/ns/mnt");
        if rustix::process::chdir("/proc/self").is_err() || own == target {
            return false;
        }
        let cwd = rustix::fs::stat(".").expect("cwd");
        let inside = {
            let _in = InNamespace::enter(theirs.as_fd(), Namespace::Mount).expect("enter");
            ino("/proc/thread-self/ns/mnt") == target
        };
        let back = rustix::fs::stat(".").expect("cwd");
        inside && ino("/proc/thread-self/ns/mnt") == own && (back.st_dev, back.st_ino) == (cwd.st_dev, cwd.st_ino)
    });
    assert_eq!(status, 0);
}

/// A way back that fails (its saved namespace is no namespace) ends the
/// process with `SIGABRT`: a child shows it.
#[test]
fn a_failed_return_aborts_the_process() {
    let status = in_child(|| {
        // No core file of an abort that is meant.
        let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
        let home = rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).expect("/dev/null");
        drop(InNamespace { ns: Namespace::Network, home, cwd: None });
        true
    });
    assert_eq!(status, 128 + libc::SIGABRT);
}

fn fs_ids() -> (u32, u32) {
    // Setting an invalid id changes nothing and returns the current one.
    (crate::creds::set_fsuid(u32::MAX), crate::creds::set_fsgid(u32::MAX))
}

/// Needs root: runs in a forked child, whose credentials and umask no
/// other test shares.
#[test]
fn a_filesystem_identity_is_taken_on_and_given_back_exactly() {
    if !root() {
        return;
    }
    let status = in_child(|| {
        let own = OwnIdentity::of_this_thread().expect("own identity");
        let before = rustix::thread::capabilities(None).expect("caps");
        let umask_before = rustix::process::umask(Mode::from_raw_mode(0o022));
        rustix::process::umask(umask_before);
        for groups in [vec![], vec![100_005, 100_010]] {
            let id = FsIdentity { fsuid: 100_001, fsgid: 100_002, groups: &groups, umask: 0o007 };
            {
                let _g = AsFsIdentity::take(&id, &own).expect("take");
                assert_eq!(fs_ids(), (100_001, 100_002));
                let now = rustix::thread::capabilities(None).expect("caps");
                assert_eq!(now.effective & FS_CAPS, CapabilitySet::MKNOD, "only CAP_MKNOD of the fs caps");
                assert_eq!(now.effective - FS_CAPS, before.effective - FS_CAPS, "other caps untouched");
                assert_eq!(rustix::process::getgroups().expect("groups").len(), groups.len());
                let m = rustix::process::umask(Mode::from_raw_mode(0o007));
                assert_eq!(m.bits(), 0o007);
            }
            assert_eq!(fs_ids(), (0, 0));
            assert_eq!(rustix::thread::capabilities(None).expect("caps"), before);
            assert!(rustix::process::getgroups().expect("groups").is_empty());
            let m = rustix::process::umask(umask_before);
            assert_eq!(m, umask_before);
        }
        true
    });
    assert_eq!(status, 0);
}

/// A capability raised for one operation over a caller's identity counts
/// (a directory the fsuid may not search is searched), is only a
/// filesystem one, and is lowered again when its guard drops, the
/// caller's fsuid kept throughout.
#[test]
fn a_raised_capability_counts_while_its_guard_lives_only() {
    if !root() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("devns-raise-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("in")).expect("mkdir");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    let status = in_child(|| {
        let own = OwnIdentity::of_this_thread().expect("own identity");
        let id = FsIdentity { fsuid: 100_001, fsgid: 100_002, groups: &[], umask: 0o022 };
        let g = AsFsIdentity::take(&id, &own).expect("take");
        let search = || rustix::fs::open(dir.join("in"), OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).map(drop);
        assert_eq!(search(), Err(io::Errno::ACCESS));
        let lowered = rustix::thread::capabilities(None).expect("caps");
        {
            let _r = g.raise(CapabilitySet::DAC_READ_SEARCH | CapabilitySet::SYS_ADMIN).expect("raise");
            assert_eq!(search(), Ok(()));
            assert_eq!(fs_ids(), (100_001, 100_002));
            let now = rustix::thread::capabilities(None).expect("caps");
            assert_eq!(now.effective, lowered.effective | CapabilitySet::DAC_READ_SEARCH, "a filesystem cap only");
        }
        assert_eq!(rustix::thread::capabilities(None).expect("caps"), lowered);
        assert_eq!(search(), Err(io::Errno::ACCESS));
        drop(g);
        // A caller whose fsuid is host root's: giving the fsuid back
        // changes nothing, so the capabilities are given back as such.
        let before = rustix::thread::capabilities(None).expect("caps");
        let root = FsIdentity { fsuid: 0, fsgid: 0, groups: &[], umask: 0o022 };
        {
            let g = AsFsIdentity::take(&root, &own).expect("take");
            assert_eq!(rustix::thread::capabilities(None).expect("caps").effective & FS_CAPS, CapabilitySet::MKNOD);
            let _r = g.raise(CapabilitySet::DAC_OVERRIDE).expect("raise");
        }
        assert_eq!(rustix::thread::capabilities(None).expect("caps"), before);
        true
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status, 0);
}

/// A thread of its own enters another mount namespace for good; the
/// process stays in its own, is alone in its `fs_struct` again once the
/// thread is joined, and a panic of the work is an error, not the
/// caller's panic.
#[test]
fn work_on_an_own_fs_thread_enters_a_mount_namespace_and_leaves_the_process_where_it_was() {
    if !root() {
        return;
    }
    let holder = Holder::new(libc::CLONE_NEWNS);
    let (mnt, theirs) = holder.ns("mnt");
    let status = in_child(|| {
        let ours = ino("/proc/self/ns/mnt");
        let seen = on_own_fs_thread(|| {
            enter_for_good(&mnt, Namespace::Mount).is_ok().then(|| ino("/proc/thread-self/ns/mnt"))
        });
        let panicked = on_own_fs_thread(|| panic!("in the work"));
        seen.ok().flatten() == Some(theirs)
            && ino("/proc/self/ns/mnt") == ours
            && panicked.is_err()
            && threads_sharing_fs() == Some(1)
            && LEFT.lock().unwrap().is_empty()
    });
    assert_eq!(status, 0);
}

/// What runs beside the thread of its own runs once that thread has left
/// the shared `fs_struct`: a umask set there is not the thread's, and the
/// caller passes the assertion.
#[test]
fn beside_an_own_fs_thread_the_caller_is_alone_in_its_fs_struct() {
    let status = in_child(|| {
        let old = rustix::process::umask(Mode::from_raw_mode(0o022));
        let (theirs, alone) = on_own_fs_thread_beside(
            || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                let m = rustix::process::umask(Mode::from_raw_mode(0o022));
                rustix::process::umask(m);
                m.bits()
            },
            || {
                let alone = passes_the_assertion();
                rustix::process::umask(Mode::from_raw_mode(0o077));
                alone
            },
        );
        rustix::process::umask(old);
        alone && theirs.ok() == Some(0o022)
    });
    assert_eq!(status, 0);
}
