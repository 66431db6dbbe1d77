//! A small shared memory area that outlives the process that writes it: a
//! memfd mapped shared, seen as words that may change under us (another
//! mapping of the same memfd, or a process that died mid-write), hence
//! atomics, never plain references.

use rustix::fd::{AsFd, OwnedFd};
use rustix::io;
use rustix::mm::{MapFlags, ProtFlags};
use std::sync::atomic::AtomicU64;

/// A shared mapping of a memfd of `words` 64-bit words.
pub struct Words {
    ptr: *mut AtomicU64,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is only ever accessed through `AtomicU64`s, which
// are `Sync`; the pointer is owned by `Words` and unmapped once, on drop.
unsafe impl Send for Words {}

impl Words {
    /// A new memfd named `name` of `words` zeroed words, mapped.
    pub fn create(name: &str, words: usize) -> io::Result<Words> {
        let fd =
            rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, (words * 8) as u64)?;
        // No one may shrink it under a mapping (a SIGBUS), nor grow it.
        rustix::fs::fcntl_add_seals(&fd, rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW)?;
        Words::map(fd, words)
    }

    /// Maps an existing memfd (one handed back after a restart); it must
    /// be a sealed memfd of exactly `words` words, or `INVAL`.
    pub fn open(fd: OwnedFd, words: usize) -> io::Result<Words> {
        let seals = rustix::fs::fcntl_get_seals(&fd)?;
        let size = rustix::fs::fstat(&fd)?.st_size;
        if !seals.contains(rustix::fs::SealFlags::SHRINK) || size != (words * 8) as i64 {
            return Err(io::Errno::INVAL);
        }
        Words::map(fd, words)
    }

    fn map(fd: OwnedFd, words: usize) -> io::Result<Words> {
        let len = words * 8;
        // SAFETY: a new mapping at an address the kernel picks, of `len`
        // bytes of `fd`, which is (sealed) at least that long: it aliases
        // no Rust object, and is unmapped once, in `drop`.
        let ptr = unsafe {
            rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, &fd, 0)
        }?;
        Ok(Words { ptr: ptr.cast(), len: words, fd })
    }

    /// The words; each may change at any moment through another mapping.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` is a live, page-aligned mapping of `len` u64s for
        // as long as `self`; `AtomicU64` has u64's layout, and every access
        // to the shared memory is atomic.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn fd(&self) -> rustix::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Words {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping made in `map`, unmapped only
        // here; no reference from `words()` outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len * 8) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn two_mappings_of_one_memfd_see_each_other() {
        let a = Words::create("t", 16).unwrap();
        a.words()[3].store(42, Ordering::Release);
        let fd = a.fd().try_clone_to_owned().unwrap();
        let b = Words::open(fd, 16).unwrap();
        assert_eq!(b.words()[3].load(Ordering::Acquire), 42);
        drop(a);
        b.words()[4].store(7, Ordering::Release);
        assert_eq!(b.words()[4].load(Ordering::Acquire), 7);
    }

    #[test]
    fn a_file_of_another_size_or_kind_is_refused() {
        let a = Words::create("t", 16).unwrap();
        assert!(Words::open(a.fd().try_clone_to_owned().unwrap(), 8).is_err());
        let f: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(Words::open(f, 16).is_err());
    }
}
