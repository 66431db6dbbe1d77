//! `mknod` attacks on the seccomp agent (tests `agent.rs`, `sec_nodes.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const ITERATIONS: usize = 10_000;

/// `mknod` of 1:3 at `path`: 0, or its errno.
fn mk(path: &CString) -> i32 {
    // SAFETY: `path` is a live NUL-terminated string.
    let r = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
    if r == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap() }
}

/// Inside a rootfs: tries to put a node outside it (`DEVNS_ATTACK_OUTSIDE`,
/// a host directory, and `DEVNS_ATTACK_FD`, an fd of it inherited from the
/// host) every way it can; prints the errnos seen per attack as JSON.
pub fn attack() {
    let outside = super::var("DEVNS_ATTACK_OUTSIDE");
    let host_fd: i32 = super::var("DEVNS_ATTACK_FD").parse().unwrap();
    let mut errnos = BTreeMap::<&str, BTreeSet<i32>>::new();
    // 1. a symlink that points outside the root
    std::os::unix::fs::symlink(&outside, "/tmp/esc").unwrap();
    let p = CString::new("/tmp/esc/n1").unwrap();
    for _ in 0..ITERATIONS {
        errnos.entry("symlink").or_default().insert(mk(&p));
        let _ = std::fs::remove_file("/tmp/esc/n1");
    }
    // 2. `..` escapes
    let p = CString::new(format!("/../../../../../../..{outside}/n2")).unwrap();
    let rel = CString::new(format!("../../../../../../..{outside}/n2")).unwrap();
    std::env::set_current_dir("/tmp").unwrap();
    for _ in 0..ITERATIONS / 2 {
        errnos.entry("dotdot").or_default().insert(mk(&p));
        errnos.entry("dotdot").or_default().insert(mk(&rel));
    }
    // 3. the parent swapped for a symlink while calls are in flight
    std::fs::create_dir("/tmp/real").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let outside2 = outside.clone();
    let flipper = std::thread::spawn(move || {
        while !s2.load(Ordering::Relaxed) {
            let _ = std::fs::remove_file("/tmp/d");
            let _ = std::os::unix::fs::symlink("/tmp/real", "/tmp/d");
            let _ = std::fs::remove_file("/tmp/d");
            let _ = std::os::unix::fs::symlink(&outside2, "/tmp/d");
        }
    });
    let p = CString::new("/tmp/d/n3").unwrap();
    for _ in 0..ITERATIONS {
        errnos.entry("swap").or_default().insert(mk(&p));
        let _ = std::fs::remove_file("/tmp/real/n3");
    }
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
    // 4. a dirfd outside the root (inherited from the host)
    let name = CString::new("n4").unwrap();
    for _ in 0..ITERATIONS {
        // SAFETY: `name` is a live NUL-terminated string.
        let r = unsafe { libc::mknodat(host_fd, name.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
        errnos.entry("dirfd").or_default().insert(if r == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap()
        });
    }
    // 5. garbage pointers
    for addr in [1usize, 4096, usize::MAX - 4095, 0xdead_0000_0000] {
        for _ in 0..ITERATIONS / 4 {
            // SAFETY: the kernel (and the agent) only read through the
            // pointer, and must fail cleanly on a bad one; nothing here
            // dereferences it.
            let r = unsafe { libc::mknod(addr as *const libc::c_char, libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
            errnos.entry("garbage").or_default().insert(if r == 0 {
                0
            } else {
                std::io::Error::last_os_error().raw_os_error().unwrap()
            });
        }
    }
    // 6. callers that die mid-call
    for _ in 0..ITERATIONS / 10 {
        let mut c =
            std::process::Command::new("/bin/busybox").args(["mknod", "/tmp/dying", "c", "1", "3"]).spawn().unwrap();
        let _ = c.kill();
        let _ = c.wait();
        let _ = std::fs::remove_file("/tmp/dying");
    }
    println!("{}", serde_json::to_string(&errnos).unwrap());
}

/// `mknod` in a loop (`DEVNS_STORM_ITERATIONS` calls at most) while
/// another thread sends signals to the looping one without end; prints
/// `STORM ERRNOS SENT`, the errnos seen (`0` for success) as JSON and the
/// number of signals sent.
pub fn signal_storm() {
    let iterations: usize = super::var("DEVNS_STORM_ITERATIONS").parse().unwrap();
    extern "C" fn on_signal(_: libc::c_int) {}
    // SAFETY: a handler that does nothing, installed with SA_RESTART, as
    // most programs' are.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let storm = std::thread::spawn(move || {
        let mut sent = 0u64;
        while !s2.load(Ordering::Relaxed) {
            // SAFETY: a signal to a thread of this process, whose handler
            // is installed above.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) };
            sent += 1;
        }
        sent
    });
    // In /tmp, in the view, and relative to the cwd.
    std::env::set_current_dir("/tmp").unwrap();
    let mut errnos = BTreeMap::<i32, usize>::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for (i, at) in ["/tmp/storm", "/dev/storm", "storm"].iter().cycle().take(iterations).enumerate() {
        *errnos.entry(mk(&CString::new(*at).unwrap())).or_default() += 1;
        let _ = std::fs::remove_file(at);
        if i % 64 == 0 && std::time::Instant::now() > deadline {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let sent = storm.join().unwrap();
    println!("STORM {} {sent}", serde_json::to_string(&errnos).unwrap());
}

/// `mknod(DEVNS_I386_PATH, S_IFCHR|0600, 1:3)` made twice: through the
/// 32-bit x86 system call entry (`int 0x80`, syscall 14, as a 32-bit
/// program makes it) and as a 64-bit call; prints `i386=E x86_64=E`, each
/// 0 or the errno.
pub fn i386() {
    let path = CString::new(super::var("DEVNS_I386_PATH")).unwrap();
    let bytes = path.as_bytes_with_nul();
    // SAFETY: a fresh anonymous private mapping, below 4 GiB (the 32-bit
    // entry takes 32-bit pointers), not aliased by anything.
    let low = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    assert_ne!(low, libc::MAP_FAILED, "mmap below 4 GiB");
    // SAFETY: the mapping is 4096 writable bytes; the path is shorter.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), low.cast::<u8>(), bytes.len().min(4095)) };
    let ret: i32;
    // SAFETY: `int 0x80` is the kernel's 32-bit entry; its mknod reads
    // the NUL-terminated path at `low` and changes no memory of ours. rbx
    // (its first argument) is LLVM's: swapped in and back around the call.
    unsafe {
        std::arch::asm!(
            "xchg {p:r}, rbx",
            "int 0x80",
            "xchg {p:r}, rbx",
            p = inout(reg) low as u64 => _,
            inlateout("eax") 14i32 => ret,
            in("ecx") libc::S_IFCHR | 0o600,
            in("edx") 0x103u32,
        );
    }
    let i386 = if ret < 0 { -ret } else { 0 };
    let _ = std::fs::remove_file(path.to_str().unwrap());
    let x86_64 = mk(&path);
    let _ = std::fs::remove_file(path.to_str().unwrap());
    println!("i386={i386} x86_64={x86_64}");
}
