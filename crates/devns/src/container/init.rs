//! The container's init: pid 1 of its pid namespace, which runs the
//! command, relays signals to it, reaps orphans, and exits with the
//! command's status (which ends every other process of the namespace).

use super::FORWARDED_SIGNALS;
use devns_sys::signal::SignalFd;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, Signal, WaitOptions};

/// pid 1: runs the command, relays signals to it, reaps every child, and
/// returns the command's status (128 + signal when a signal ended it).
pub(super) fn init(cmd: &[String]) -> i32 {
    let mut signals: Vec<i32> = FORWARDED_SIGNALS.to_vec();
    signals.push(libc::SIGCHLD);
    let sigfd = match SignalFd::new(&signals) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("devns: init: cannot watch signals: {e}");
            return 125;
        }
    };
    let mut command = std::process::Command::new(&cmd[0]);
    command.args(&cmd[1..]);
    // The command starts with no signal blocked: init (and devns before it)
    // blocked the relayed ones for its signalfd, and a mask survives exec.
    // SAFETY: the closure runs in the forked child before exec and calls
    // only sigprocmask, which is async-signal-safe, on a local empty set.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("devns: cannot execute {:?}: {e}", cmd[0]);
            return if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
        }
    };
    let Some(cmd_pid) = Pid::from_raw(child.id() as i32) else { return 125 };
    loop {
        let mut fds = [PollFd::new(&sigfd, PollFlags::IN)];
        let _ = poll(&mut fds, None);
        loop {
            let si = match sigfd.read() {
                Ok(Some(si)) => si,
                Ok(None) => break,
                Err(_) => return 125,
            };
            if si.signo == libc::SIGCHLD {
                // Any child: `waitpid(None)` would only see our own process
                // group, and a shell with job control leaves it.
                while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
                    if pid == cmd_pid {
                        return match (status.exit_status(), status.terminating_signal()) {
                            (Some(code), _) => code,
                            (None, Some(sig)) => 128 + sig,
                            _ => 128,
                        };
                    }
                }
            } else if !si.from_kernel()
                && let Some(sig) = Signal::from_named_raw(si.signo)
            {
                let _ = rustix::process::kill_process(cmd_pid, sig);
            }
        }
    }
}
