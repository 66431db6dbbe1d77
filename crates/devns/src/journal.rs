//! The journal of the call in flight: a memfd of a few words that the
//! daemon writes around each trapped call and that outlives it (the holder
//! or systemd's fd store keeps it beside the listeners).
//!
//! Why: a notification the daemon has received (`NOTIF_RECV`) is in the
//! kernel's `SENT` state; it is never delivered again, and if the daemon
//! dies before answering, its caller waits forever (the listener lives on
//! in the holder). So the daemon records the notification on receipt and
//! the answer before sending it; the next daemon sends an answer left
//! there, or handles a call received but unanswered again, if the kernel
//! still waits for it (`NOTIF_ID_VALID`): `devns_core::keep::resume`.
//! The daemon answers one call at a time, so one record is all there is.
//! Three stores to shared memory per call, no syscall.
//!
//! Also the loop device a call made and has not recorded yet (made with
//! `LOOP_CTL_ADD`, not yet in its namespace's record): a daemon killed in
//! between leaves its number here, and the next removes that device
//! unless a record has it, so that no device leaks. A stand-alone `devns
//! run` keeps one too, for this alone: its watcher reads it once the run
//! is killed.

use devns_core::keep::InFlight;
use devns_sys::seccomp::{Notif, NotifResp, SeccompData};
use devns_sys::shm::Words;
use rustix::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

// Version 2 (17 words): an older daemon's journal is not taken, its call
// in flight lost once, at the upgrade.
const MAGIC: u64 = 0x6465_766e_736a_0002; // "devnsj", version 2
const WORDS: usize = 17;
// Layout: magic, state, key, the notification (10 words), the answer (3),
// the loop device made and not recorded (its index + 1, or 0).
const STATE: usize = 1;
const KEY: usize = 2;
const NOTIF: usize = 3;
const RESP: usize = 13;
const MADE_LOOP: usize = 16;
const IDLE: u64 = 0;
const RECEIVED: u64 = 1;
const ANSWERED: u64 = 2;
/// In `NOTIF_RECV`, which writes the notification into the journal.
const RECEIVING: u64 = 3;

pub struct Journal {
    w: Words,
}

impl Journal {
    pub fn create() -> rustix::io::Result<Journal> {
        let w = Words::create("devns-journal", WORDS)?;
        w.words()[0].store(MAGIC, Release);
        Ok(Journal { w })
    }

    /// A journal handed back; `None` if it is not one of ours.
    pub fn open(fd: OwnedFd) -> Option<Journal> {
        let w = Words::open(fd, WORDS).ok()?;
        (w.words()[0].load(Acquire) == MAGIC).then_some(Journal { w })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.w.fd()
    }

    /// The next notification of listener `key`, received by the kernel
    /// straight into the journal: a daemon killed at the end of the ioctl
    /// (where a pending SIGKILL strikes) leaves it there, not lost.
    pub fn recv(&self, key: u64, listener: BorrowedFd<'_>) -> Option<Notif> {
        let w = self.w.words();
        w[KEY].store(key, Relaxed);
        w[STATE].store(RECEIVING, Release);
        let got = devns_sys::seccomp::recv_into(listener, &w[NOTIF..RESP]);
        if got.is_err() {
            w[STATE].store(IDLE, Release);
            return None;
        }
        w[STATE].store(RECEIVED, Release);
        Some(self.notif())
    }

    /// Notification `n` from listener `key` is being handled (one not
    /// received through [`Journal::recv`]).
    pub fn received(&self, key: u64, n: &Notif) {
        let w = self.w.words();
        w[KEY].store(key, Relaxed);
        let d = &n.data;
        let mut b = [0u8; 8 * devns_sys::seccomp::NOTIF_WORDS];
        b[0..8].copy_from_slice(&n.id.to_ne_bytes());
        b[8..12].copy_from_slice(&n.pid.to_ne_bytes());
        b[12..16].copy_from_slice(&n.flags.to_ne_bytes());
        b[16..20].copy_from_slice(&d.nr.to_ne_bytes());
        b[20..24].copy_from_slice(&d.arch.to_ne_bytes());
        b[24..32].copy_from_slice(&d.instruction_pointer.to_ne_bytes());
        for (i, a) in d.args.iter().enumerate() {
            b[32 + 8 * i..40 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        for (i, c) in b.chunks_exact(8).enumerate() {
            w[NOTIF + i].store(u64::from_ne_bytes(c.try_into().expect("8 bytes")), Relaxed);
        }
        // Everything above is seen by whoever sees the state.
        w[STATE].store(RECEIVED, Release);
    }

    /// The notification recorded, in the kernel's layout.
    fn notif(&self) -> Notif {
        let w = self.w.words();
        let b: Vec<u8> = (NOTIF..RESP).flat_map(|i| w[i].load(Relaxed).to_ne_bytes()).collect();
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let mut args = [0; 6];
        for (i, a) in args.iter_mut().enumerate() {
            *a = u64_at(32 + 8 * i);
        }
        Notif {
            id: u64_at(0),
            pid: u32_at(8),
            flags: u32_at(12),
            data: SeccompData { nr: u32_at(16) as i32, arch: u32_at(20), instruction_pointer: u64_at(24), args },
        }
    }

    /// Its answer `r` is about to be sent.
    pub fn answered(&self, r: &NotifResp) {
        let w = self.w.words();
        w[RESP].store(r.id, Relaxed);
        w[RESP + 1].store(r.val as u64, Relaxed);
        w[RESP + 2].store(r.error as u32 as u64 | u64::from(r.flags) << 32, Relaxed);
        w[STATE].store(ANSWERED, Release);
    }

    /// Sent (or nobody to send it to).
    pub fn done(&self) {
        self.w.words()[STATE].store(IDLE, Release);
    }

    /// Loop device `index` was made and is not recorded yet (`Some`), or
    /// is now (`None`).
    pub fn made_loop(&self, index: Option<u32>) {
        self.w.words()[MADE_LOOP].store(index.map_or(0, |n| u64::from(n) + 1), Release);
    }

    /// The loop device the last writer made and may not have recorded.
    pub fn unrecorded_loop(&self) -> Option<u32> {
        let v = self.w.words()[MADE_LOOP].load(Acquire);
        v.checked_sub(1).and_then(|n| u32::try_from(n).ok())
    }

    /// Another mapping of the same journal (for the engine's loop-control).
    pub fn another(&self) -> Option<Journal> {
        Journal::open(self.w.fd().try_clone_to_owned().ok()?)
    }

    /// The call in flight when the last writer stopped.
    pub fn in_flight(&self) -> (InFlight, Notif, NotifResp) {
        let w = self.w.words();
        let state = w[STATE].load(Acquire);
        let key = w[KEY].load(Relaxed);
        let at = |i: usize| w[i].load(Relaxed);
        let n = self.notif();
        let r = NotifResp {
            id: at(RESP),
            val: at(RESP + 1) as i64,
            error: at(RESP + 2) as u32 as i32,
            flags: (at(RESP + 2) >> 32) as u32,
        };
        let f = match state {
            RECEIVED => InFlight::Received { key },
            // Killed in the ioctl: received iff the kernel wrote one.
            RECEIVING if n.id != 0 || n.pid != 0 => InFlight::Received { key },
            ANSWERED if r.id == n.id => InFlight::Answered { key },
            _ => InFlight::Idle,
        };
        (f, n, r)
    }
}

/// Where a daemon under test stops itself in a call (see the daemon's
/// `stop_in_call`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Received,
    Answered,
    /// A loop device made, before it is recorded.
    LoopMade,
}

impl Stop {
    pub fn parse(s: &str) -> Option<Stop> {
        match s {
            "received" => Some(Stop::Received),
            "answered" => Some(Stop::Answered),
            "loop-made" => Some(Stop::LoopMade),
            _ => None,
        }
    }

    /// Stops this process if `armed` is `self`, once.
    pub fn here(self, armed: &mut Option<Stop>) {
        if *armed == Some(self) {
            *armed = None;
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_through_another_mapping() {
        let j = Journal::create().unwrap();
        let n = Notif {
            id: 0xdead_beef_1234,
            pid: 77,
            flags: 0,
            data: SeccompData { nr: 259, arch: 0xc000_003e, instruction_pointer: 9, args: [1, 2, 3, 4, 5, u64::MAX] },
        };
        j.received(5, &n);
        let again = Journal::open(j.fd().try_clone_to_owned().unwrap()).unwrap();
        let (f, got, _) = again.in_flight();
        assert_eq!(f, InFlight::Received { key: 5 });
        assert_eq!(
            (got.id, got.pid, got.data.nr, got.data.arch, got.data.args),
            (n.id, 77, 259, 0xc000_003e, n.data.args)
        );
        let r = NotifResp { id: n.id, val: -1, error: -1, flags: 1 };
        j.answered(&r);
        let (f, _, rr) = again.in_flight();
        assert_eq!(f, InFlight::Answered { key: 5 });
        assert_eq!((rr.id, rr.val, rr.error, rr.flags), (r.id, -1, -1, 1));
        j.done();
        assert_eq!(again.in_flight().0, InFlight::Idle);
    }

    #[test]
    fn a_memfd_that_is_not_a_journal_is_refused() {
        let w = Words::create("x", WORDS).unwrap();
        assert!(Journal::open(w.fd().try_clone_to_owned().unwrap()).is_none());
    }
}
