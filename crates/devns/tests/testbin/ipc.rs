//! POSIX shared memory and message queues inside a container (test
//! `run.rs`): what a program does with the `/dev/shm` and `/dev/mqueue`
//! devns gives it.

use std::ffi::CString;
use std::io::Error;

fn fail(what: &str) -> ! {
    println!("{what}: {}", Error::last_os_error());
    std::process::exit(1)
}

/// `shm_open` of `/NAME` (`DEVNS_IPC_NAME`), a page written through a
/// shared mapping and read back through `/dev/shm/NAME`; then `mq_open` of
/// `/NAME`, two messages sent and one received, so that one stays for
/// `/dev/mqueue/NAME` to show. Both are left for the test to look at.
/// Prints `shm ok` and `mq got MESSAGE`, or the step that failed.
pub fn posix_ipc() {
    let name = super::var("DEVNS_IPC_NAME");
    let path = CString::new(format!("/{name}")).expect("no NUL in the name");
    let text = format!("shm of {name}");
    let excl = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR;

    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let fd = unsafe { libc::shm_open(path.as_ptr(), excl, 0o600) };
    if fd < 0 {
        fail("shm_open");
    }
    // SAFETY: `fd` is the open shm object's.
    if unsafe { libc::ftruncate(fd, 4096) } != 0 {
        fail("ftruncate");
    }
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a new shared mapping of 4096 bytes of `fd` (that long now),
    // at an address the kernel picks: it aliases no Rust object.
    let map = unsafe { libc::mmap(std::ptr::null_mut(), 4096, prot, libc::MAP_SHARED, fd, 0) };
    if map == libc::MAP_FAILED {
        fail("mmap");
    }
    // SAFETY: `map` is 4096 writable bytes, `text` is shorter, and the two
    // do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), map.cast::<u8>(), text.len()) };
    // SAFETY: `map` is the 4096-byte mapping made above, used no more.
    unsafe { libc::munmap(map, 4096) };
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    match std::fs::read(format!("/dev/shm/{name}")) {
        Ok(b) if b.starts_with(text.as_bytes()) => println!("shm ok"),
        Ok(_) => println!("shm: /dev/shm/{name} holds something else"),
        Err(e) => println!("shm: /dev/shm/{name}: {e}"),
    }

    // SAFETY: `mq_attr` is plain data; zero is a valid value of each field.
    let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
    attr.mq_maxmsg = 4;
    attr.mq_msgsize = 64;
    // SAFETY: `path` is NUL-terminated; with O_CREAT, mq_open reads a mode
    // and a pointer to `attr`, which outlives the call.
    let mq = unsafe { libc::mq_open(path.as_ptr(), excl, 0o600 as libc::c_uint, &attr as *const libc::mq_attr) };
    if mq < 0 {
        fail("mq_open");
    }
    for msg in [&b"hello"[..], b"again"] {
        // SAFETY: `msg` is `msg.len()` readable bytes.
        if unsafe { libc::mq_send(mq, msg.as_ptr().cast(), msg.len(), 0) } != 0 {
            fail("mq_send");
        }
    }
    let mut buf = [0u8; 64];
    // SAFETY: `buf` is `buf.len()` (the queue's message size) writable bytes.
    let n = unsafe { libc::mq_receive(mq, buf.as_mut_ptr().cast(), buf.len(), std::ptr::null_mut()) };
    if n < 0 {
        fail("mq_receive");
    }
    println!("mq got {}", String::from_utf8_lossy(&buf[..n as usize]));
    // SAFETY: `mq` is ours and closed once.
    unsafe { libc::mq_close(mq) };
}
