//! LXC's seccomp notify proxy messages (`lxc.seccomp.notify.proxy`), as
//! LXC 5.0's monitor sends them over a `SOCK_SEQPACKET` connection, one per
//! trapped call: a 32-byte header (`u64` reserved, the monitor's and the
//! container init's pids, the kernel's `struct seccomp_notif_sizes`,
//! padding, the cookie's length), then `struct seccomp_notif`, a `struct
//! seccomp_notif_resp` (its id filled in) and the cookie; with three fds
//! (the caller's `/proc/PID`, its `mem`, the notify fd). The reply is the
//! header, the notification and the answer, no cookie: LXC takes exactly
//! that many bytes and answers the kernel itself. Untrusted input: every
//! size is checked against the kernel's and the message's own length.

/// The header's size.
pub const HEADER: usize = 32;
/// The longest cookie taken (LXC's is a config string).
pub const MAX_COOKIE: usize = 4096;
/// Room for the longest message devns takes.
pub const MAX_MESSAGE: usize = HEADER + 512 + MAX_COOKIE;

/// The kernel's structure sizes (`SECCOMP_GET_NOTIF_SIZES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub notif: u16,
    pub resp: u16,
    pub data: u16,
}

/// One trapped call as the message carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub monitor_pid: i32,
    pub init_pid: i32,
    pub id: u64,
    pub pid: u32,
    pub flags: u32,
    pub nr: i32,
    pub arch: u32,
    pub instruction_pointer: u64,
    pub args: [u64; 6],
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Reads one message, for a kernel of `sizes` (this devns knows the
/// layouts of 80-byte notifications, 24-byte answers, 64-byte data);
/// every refusal says what is wrong.
pub fn parse(msg: &[u8], sizes: Sizes) -> Result<Call, String> {
    if msg.len() < HEADER {
        return Err(format!("a message of {} bytes, shorter than its {HEADER}-byte header", msg.len()));
    }
    if u64_at(msg, 0) != 0 {
        return Err("the header's reserved word is not 0".into());
    }
    let theirs = Sizes { notif: u16_at(msg, 16), resp: u16_at(msg, 18), data: u16_at(msg, 20) };
    if theirs != sizes || sizes != (Sizes { notif: 80, resp: 24, data: 64 }) {
        return Err(format!("structure sizes {theirs:?}, not the kernel's {sizes:?} that devns reads"));
    }
    let cookie = u64_at(msg, 24);
    if cookie > MAX_COOKIE as u64 {
        return Err(format!("a cookie of {cookie} bytes, the most is {MAX_COOKIE}"));
    }
    let want = HEADER + usize::from(sizes.notif) + usize::from(sizes.resp) + cookie as usize;
    if msg.len() != want {
        return Err(format!("{} bytes, not the {want} its header announces", msg.len()));
    }
    let n = &msg[HEADER..HEADER + 80];
    let mut args = [0; 6];
    for (i, a) in args.iter_mut().enumerate() {
        *a = u64_at(n, 32 + 8 * i);
    }
    Ok(Call {
        monitor_pid: u32_at(msg, 8) as i32,
        init_pid: u32_at(msg, 12) as i32,
        id: u64_at(n, 0),
        pid: u32_at(n, 8),
        flags: u32_at(n, 12),
        nr: u32_at(n, 16) as i32,
        arch: u32_at(n, 20),
        instruction_pointer: u64_at(n, 24),
        args,
    })
}

/// The reply to `msg` (taken by [`parse`]): its header (the cookie's
/// length 0) and notification as they came, then the answer.
pub fn reply(msg: &[u8], id: u64, val: i64, error: i32, flags: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 80 + 24);
    out.extend_from_slice(&msg[..24]);
    out.extend_from_slice(&0u64.to_ne_bytes());
    out.extend_from_slice(&msg[HEADER..HEADER + 80]);
    out.extend_from_slice(&id.to_ne_bytes());
    out.extend_from_slice(&val.to_ne_bytes());
    out.extend_from_slice(&error.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL: Sizes = Sizes { notif: 80, resp: 24, data: 64 };

    fn message(cookie: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; HEADER];
        m[8..12].copy_from_slice(&100i32.to_ne_bytes());
        m[12..16].copy_from_slice(&200i32.to_ne_bytes());
        m[16..18].copy_from_slice(&80u16.to_ne_bytes());
        m[18..20].copy_from_slice(&24u16.to_ne_bytes());
        m[20..22].copy_from_slice(&64u16.to_ne_bytes());
        m[24..32].copy_from_slice(&(cookie.len() as u64).to_ne_bytes());
        let mut n = vec![0u8; 80];
        n[0..8].copy_from_slice(&77u64.to_ne_bytes());
        n[8..12].copy_from_slice(&4242u32.to_ne_bytes());
        n[16..20].copy_from_slice(&133i32.to_ne_bytes());
        n[20..24].copy_from_slice(&0xc000_003eu32.to_ne_bytes());
        n[32..40].copy_from_slice(&0x1234u64.to_ne_bytes());
        n[40..48].copy_from_slice(&0o20600u64.to_ne_bytes());
        m.extend(n);
        let mut r = vec![0u8; 24];
        r[0..8].copy_from_slice(&77u64.to_ne_bytes());
        m.extend(r);
        m.extend_from_slice(cookie);
        m
    }

    #[test]
    fn a_message_reads_as_its_call() {
        for cookie in [&b""[..], b"a-cookie"] {
            let c = parse(&message(cookie), KERNEL).unwrap();
            assert_eq!((c.monitor_pid, c.init_pid, c.id, c.pid, c.nr), (100, 200, 77, 4242, 133));
            assert_eq!((c.arch, c.args[0], c.args[1]), (0xc000_003e, 0x1234, 0o20600));
        }
    }

    #[test]
    fn bad_messages_are_refused_with_the_reason() {
        let good = message(b"");
        let mut reserved = good.clone();
        reserved[0] = 1;
        let mut sizes = good.clone();
        sizes[16] = 81;
        let mut cookie = good.clone();
        cookie[24..32].copy_from_slice(&5000u64.to_ne_bytes());
        let mut long = good.clone();
        long.push(0);
        for (m, why) in [
            (&good[..31], "shorter than"),
            (&reserved[..], "reserved"),
            (&sizes[..], "structure sizes"),
            (&cookie[..], "cookie of 5000"),
            (&long[..], "not the 136"),
        ] {
            let e = parse(m, KERNEL).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
        assert!(parse(&good, Sizes { notif: 88, resp: 24, data: 64 }).unwrap_err().contains("structure sizes"));
    }

    #[test]
    fn the_reply_is_header_notification_and_answer_without_the_cookie() {
        let m = message(b"cookie");
        let r = reply(&m, 77, 3, -1, 1);
        assert_eq!(r.len(), HEADER + 80 + 24);
        assert_eq!(&r[..24], &m[..24]);
        assert_eq!(u64::from_ne_bytes(r[24..32].try_into().unwrap()), 0, "no cookie in the reply");
        assert_eq!(&r[HEADER..HEADER + 80], &m[HEADER..HEADER + 80]);
        assert_eq!(u64::from_ne_bytes(r[112..120].try_into().unwrap()), 77);
        assert_eq!(i64::from_ne_bytes(r[120..128].try_into().unwrap()), 3);
        assert_eq!(i32::from_ne_bytes(r[128..132].try_into().unwrap()), -1);
        assert_eq!(u32::from_ne_bytes(r[132..136].try_into().unwrap()), 1);
    }
}
