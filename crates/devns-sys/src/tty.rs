//! Terminal file descriptors a process inherited.

use rustix::io;

/// Closes every open fd above 2 that is a terminal; returns how many.
///
/// # Safety
/// It closes fds by number: no `OwnedFd`, `File` or other owner in this
/// process may hold a terminal above fd 2 (true of a freshly forked child
/// whose parent opened none).
pub unsafe fn close_terminals_above_stdio() -> io::Result<usize> {
    // Listed first, closed after: the listing's own fd is gone by then.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| io::Errno::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO)))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    let mut closed = 0;
    for fd in fds {
        // SAFETY: isatty only queries `fd` (a closed one answers 0).
        if unsafe { libc::isatty(fd) } == 1 {
            // SAFETY: the caller guarantees nothing in this process owns a
            // terminal fd above 2, so nothing else closes or uses it.
            unsafe { libc::close(fd) };
            closed += 1;
        }
    }
    Ok(closed)
}
