//! A container that frees its init from its keeper (test
//! `sec_liveness.rs`).

/// Frees the container's init from its keeper, as the issue saw it done:
/// `PTRACE_SEIZE` of pid 1, and `prctl(PR_SET_PDEATHSIG, 0)` injected at
/// the `syscall` instruction init sleeps in. Prints `freed` or `refused
/// ERRNO`, then `ready`, and sleeps.
pub fn ptrace_init() {
    match free_init() {
        Ok(()) => println!("freed"),
        Err(e) => println!("refused {e}"),
    }
    println!("ready");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[cfg(target_arch = "x86_64")]
fn free_init() -> Result<(), i32> {
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let pid = 1;
    let wait = || {
        let mut st = 0;
        // SAFETY: `st` outlives the call.
        unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
    };
    // SAFETY: plain ptrace requests on pid 1; every pointer passed is to a
    // local `user_regs_struct` that outlives the call.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) != 0 {
            return Err(errno());
        }
        libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0);
        wait();
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs);
        let saved = regs;
        let text = libc::ptrace(libc::PTRACE_PEEKTEXT, pid, regs.rip - 2, 0);
        if text & 0xffff != 0x050f {
            libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
            return Err(-1);
        }
        regs.rip -= 2;
        regs.rax = libc::SYS_prctl as u64;
        regs.rdi = libc::PR_SET_PDEATHSIG as u64;
        regs.rsi = 0;
        regs.orig_rax = u64::MAX;
        libc::ptrace(libc::PTRACE_SETREGS, pid, 0, &regs);
        libc::ptrace(libc::PTRACE_SINGLESTEP, pid, 0, 0);
        wait();
        libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs);
        let done = regs.rax;
        // Back where it was; its poll returns EINTR, which init ignores.
        let mut back = saved;
        back.rax = (-libc::EINTR) as u64;
        back.orig_rax = u64::MAX;
        libc::ptrace(libc::PTRACE_SETREGS, pid, 0, &back);
        libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
        if done != 0 {
            return Err(-2);
        }
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn free_init() -> Result<(), i32> {
    Err(-3)
}
