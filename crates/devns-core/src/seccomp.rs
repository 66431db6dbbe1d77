//! The seccomp filter devns gives containers, as classic BPF built from
//! plain data, and the decoding of trapped calls' arguments. The shell
//! installs the filter and answers the notifications.
//!
//! The filter is no security boundary: a call it lets through reaches the
//! kernel, which refuses device nodes and devtmpfs mounts to user
//! namespaces anyway. It only routes the few calls devns emulates to its
//! agent, and lets everything else run untouched.

/// `struct sock_filter`: one classic BPF instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Classic BPF opcodes (linux/bpf_common.h) and seccomp's (linux/seccomp.h).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;
const JA: u16 = 0x05;
pub const RET_ALLOW: u32 = 0x7fff_0000;
pub const RET_USER_NOTIF: u32 = 0x7fc0_0000;
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// The x32 ABI's calls: x86_64's architecture, this bit in the number.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Whether the agent serves a notified call `nr` of architecture `arch`:
/// only x86_64's own ABI (its numbers are the ones the agent knows). A
/// runtime's profile notifies x86 and x32 calls too; those go to the
/// kernel (`CONTINUE`), as they would without devns, never read as
/// x86_64's.
pub fn served_abi(arch: u32, nr: u32) -> bool {
    arch == AUDIT_ARCH_X86_64 && nr & X32_SYSCALL_BIT == 0
}

/// x86_64 syscall numbers of the calls devns traps.
pub const NR_IOCTL: u32 = 16;
pub const NR_MKNOD: u32 = 133;
pub const NR_MOUNT: u32 = 165;
pub const NR_MKNODAT: u32 = 259;
pub const NR_FSOPEN: u32 = 430;
/// Trapped by the runtimes' profile (`crate::ociprofile`), never by
/// devns's own filter: a runtime's container is attached at its first
/// `execve`, and every one goes on to the kernel.
pub const NR_EXECVE: u32 = 59;
pub const NR_EXECVEAT: u32 = 322;

// Offsets in `struct seccomp_data`: nr, arch, instruction_pointer, args[6].
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

/// The `ioctl` commands devns mediates: `loop-control`'s three, and the
/// two by which a disk's owner edits its partitions.
pub const LOOP_CTL_ADD: u32 = 0x4C80;
pub const LOOP_CTL_REMOVE: u32 = 0x4C81;
pub const LOOP_CTL_GET_FREE: u32 = 0x4C82;
pub const BLKRRPART: u32 = 0x125F;
pub const BLKPG: u32 = 0x1269;
pub const TRAPPED_IOCTLS: [u32; 5] = [LOOP_CTL_ADD, LOOP_CTL_REMOVE, LOOP_CTL_GET_FREE, BLKRRPART, BLKPG];
/// The loop-control requests (`0x4C80`–`0x4C82`) and `0x4C83`, which is
/// no request, are those with `cmd & LOOP_CTL_MASK == LOOP_CTL_ADD`.
pub const LOOP_CTL_MASK: u32 = !0b11;

pub const S_IFMT: u32 = 0o170000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;
/// A mode's type is a device's (`S_IFCHR` or `S_IFBLK`, no other) exactly
/// when `mode & DEVICE_KIND_MASK == S_IFCHR`: the bit that sets them apart
/// (`0o040000`) left out.
pub const DEVICE_KIND_MASK: u32 = 0o130000;

const fn ins(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// The filter: `mknod`/`mknodat` of character or block devices, `mount`,
/// `fsopen`, and `ioctl` with one of [`TRAPPED_IOCTLS`] go to the agent;
/// everything else (other architectures too) is allowed.
pub fn filter() -> Vec<Insn> {
    // Jump offsets count from the next instruction: target - (index + 1).
    const ALLOW: usize = 20;
    const NOTIFY: usize = 21;
    let to = |from: usize, target: usize| (target - from - 1) as u8;
    vec![
        /* 0 */ ins(LD_W_ABS, 0, 0, OFF_ARCH),
        /* 1 */ ins(JEQ_K, 0, to(1, ALLOW), AUDIT_ARCH_X86_64),
        /* 2 */ ins(LD_W_ABS, 0, 0, OFF_NR),
        /* 3 */ ins(JEQ_K, 0, to(3, 10), NR_IOCTL),
        // ioctl(fd, cmd, arg): the kernel reads cmd as 32 bits, so do we.
        /* 4 */
        ins(LD_W_ABS, 0, 0, off_arg_lo(1)),
        /* 5 */ ins(JEQ_K, to(5, NOTIFY), 0, LOOP_CTL_ADD),
        /* 6 */ ins(JEQ_K, to(6, NOTIFY), 0, LOOP_CTL_REMOVE),
        /* 7 */ ins(JEQ_K, to(7, NOTIFY), 0, LOOP_CTL_GET_FREE),
        /* 8 */ ins(JEQ_K, to(8, NOTIFY), 0, BLKRRPART),
        /* 9 */ ins(JEQ_K, to(9, NOTIFY), to(9, ALLOW), BLKPG),
        /* 10 */ ins(JEQ_K, to(10, NOTIFY), 0, NR_MOUNT),
        /* 11 */ ins(JEQ_K, to(11, NOTIFY), 0, NR_FSOPEN),
        /* 12 */ ins(JEQ_K, 0, to(12, 15), NR_MKNOD),
        /* 13 */ ins(LD_W_ABS, 0, 0, off_arg_lo(1)), // mknod(path, mode, dev)
        /* 14 */ ins(JA, 0, 0, to(14, 17) as u32),
        /* 15 */ ins(JEQ_K, 0, to(15, ALLOW), NR_MKNODAT),
        /* 16 */ ins(LD_W_ABS, 0, 0, off_arg_lo(2)), // mknodat(dirfd, path, mode, dev)
        /* 17 */ ins(AND_K, 0, 0, S_IFMT),
        /* 18 */ ins(JEQ_K, to(18, NOTIFY), 0, S_IFCHR),
        /* 19 */ ins(JEQ_K, to(19, NOTIFY), to(19, ALLOW), S_IFBLK),
        /* 20 */ ins(RET_K, 0, 0, RET_ALLOW),
        /* 21 */ ins(RET_K, 0, 0, RET_USER_NOTIF),
    ]
}

/// `new_decode_dev`: the kernel's split of mknod's 32-bit device number.
pub fn decode_dev(dev: u64) -> (u32, u32) {
    let dev = dev as u32;
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    (major, minor)
}

/// Runs `prog` over a `seccomp_data` the way the kernel does; for tests and
/// for checking the filter without installing it.
pub fn run(prog: &[Insn], nr: u32, arch: u32, args: [u64; 6]) -> Option<u32> {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
    }
    let (mut acc, mut pc) = (0u32, 0usize);
    for _ in 0..prog.len() + 1 {
        let i = prog.get(pc)?;
        pc += 1;
        match i.code {
            LD_W_ABS => {
                let o = i.k as usize;
                acc = u32::from_ne_bytes(data.get(o..o + 4)?.try_into().ok()?);
            }
            AND_K => acc &= i.k,
            JEQ_K => pc += if acc == i.k { i.jt } else { i.jf } as usize,
            JA => pc += i.k as usize,
            RET_K => return Some(i.k),
            _ => return None,
        }
    }
    None
}

/// What `/proc/PID/status` says of a caller's credentials (host ids, as
/// the agent reads them from the initial namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Creds {
    pub fsuid: u32,
    pub fsgid: u32,
    pub groups: Vec<u32>,
    pub umask: u32,
    pub cap_eff: u64,
}

pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_MKNOD: u32 = 27;

impl Creds {
    pub fn has_cap(&self, cap: u32) -> bool {
        self.cap_eff & (1 << cap) != 0
    }

    /// Parses `/proc/PID/status`; `None` if a needed line is missing or
    /// malformed, or a group is not a number.
    pub fn parse_status(text: &str) -> Option<Creds> {
        Creds::parse_status_bytes(text.as_bytes())
    }

    /// [`Creds::parse_status`] on the bytes as read: one pass that looks
    /// only at the lines that can matter (by their first byte) and stops
    /// after `CapEff`, since the agent parses this at every call.
    pub fn parse_status_bytes(text: &[u8]) -> Option<Creds> {
        // Uid:/Gid: are real, effective, saved, filesystem.
        let fs = |v: &[u8]| u32::try_from(number(fields(v).nth(3)?, 10)?).ok();
        let (mut fsuid, mut fsgid, mut groups, mut umask, mut cap_eff) = (None, None, None, None, None);
        for line in text.split(|b| *b == b'\n') {
            if !matches!(line.first(), Some(b'U' | b'G' | b'C')) {
                continue;
            }
            // A key's first line counts (the kernel writes each once).
            if let Some(v) = line.strip_prefix(b"Umask:").filter(|_| umask.is_none()) {
                umask = Some(u32::try_from(number(trim(v), 8)?).ok()?);
            } else if let Some(v) = line.strip_prefix(b"Uid:").filter(|_| fsuid.is_none()) {
                fsuid = Some(fs(v)?);
            } else if let Some(v) = line.strip_prefix(b"Gid:").filter(|_| fsgid.is_none()) {
                fsgid = Some(fs(v)?);
            } else if let Some(v) = line.strip_prefix(b"Groups:").filter(|_| groups.is_none()) {
                let g: Option<Vec<u32>> = fields(v).map(|g| u32::try_from(number(g, 10)?).ok()).collect();
                groups = Some(g?);
            } else if let Some(v) = line.strip_prefix(b"CapEff:") {
                cap_eff = Some(number(trim(v), 16)?);
                // The last one needed: what follows is of no interest.
                break;
            }
        }
        Some(Creds { fsuid: fsuid?, fsgid: fsgid?, groups: groups?, umask: umask?, cap_eff: cap_eff? })
    }
}

/// The whitespace-separated fields of a `status` value.
fn fields(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b' ' || *b == b'\t').filter(|f| !f.is_empty())
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// An unsigned number of `radix` digits only, no sign, no overflow.
fn number(v: &[u8], radix: u32) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, b| {
        let d = char::from(*b).to_digit(radix)?;
        n.checked_mul(u64::from(radix))?.checked_add(u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const X86: u32 = AUDIT_ARCH_X86_64;

    #[test]
    fn only_x86_64_s_own_abi_is_served() {
        assert!(served_abi(X86, NR_MKNOD));
        // i386's mknod (14), and x32's (x86_64's number with the x32 bit).
        assert!(!served_abi(0x4000_0003, 14));
        assert!(!served_abi(0x4000_0003, NR_MKNOD));
        assert!(!served_abi(X86, NR_MKNOD | X32_SYSCALL_BIT));
    }

    #[test]
    fn traps_exactly_device_mknods_mount_and_fsopen() {
        let f = filter();
        let notify = Some(RET_USER_NOTIF);
        let allow = Some(RET_ALLOW);
        assert_eq!(run(&f, NR_MKNOD, X86, [0, (S_IFCHR | 0o666) as u64, 0, 0, 0, 0]), notify);
        assert_eq!(run(&f, NR_MKNOD, X86, [0, (S_IFBLK | 0o600) as u64, 0, 0, 0, 0]), notify);
        assert_eq!(run(&f, NR_MKNODAT, X86, [u64::MAX - 99, 0, (S_IFCHR | 0o600) as u64, 0, 0, 0]), notify);
        assert_eq!(run(&f, NR_MKNODAT, X86, [0, 0, (S_IFBLK) as u64, 0, 0, 0]), notify);
        for fmt in [0o010000u32, 0o140000, 0o100000, 0] {
            // FIFO, socket, regular file, plain mode: never trapped.
            assert_eq!(run(&f, NR_MKNOD, X86, [0, (fmt | 0o644) as u64, 0, 0, 0, 0]), allow, "{fmt:o}");
            assert_eq!(run(&f, NR_MKNODAT, X86, [0, 0, (fmt | 0o644) as u64, 0, 0, 0]), allow, "{fmt:o}");
        }
        assert_eq!(run(&f, NR_MOUNT, X86, [0; 6]), notify);
        assert_eq!(run(&f, NR_FSOPEN, X86, [0; 6]), notify);
        for cmd in TRAPPED_IOCTLS {
            assert_eq!(run(&f, NR_IOCTL, X86, [3, cmd as u64, 0, 0, 0, 0]), notify, "{cmd:#x}");
            // The kernel truncates cmd to 32 bits: so does the filter.
            assert_eq!(run(&f, NR_IOCTL, X86, [3, (1u64 << 32) | cmd as u64, 0, 0, 0, 0]), notify);
        }
        // Every other ioctl (loop devices' own, terminals', ...) runs untouched.
        for cmd in [0x4C00u32, 0x4C01, 0x4C0A, 0x5401, 0x1260, 0x4C83, 0x4C7F, 0] {
            assert_eq!(run(&f, NR_IOCTL, X86, [3, cmd as u64, 0, 0, 0, 0]), allow, "{cmd:#x}");
        }
        for nr in [0u32, 1, 2, 59, 134, 257, 258, 260, 429, 431] {
            assert_eq!(run(&f, nr, X86, [0, S_IFCHR as u64, S_IFCHR as u64, 0, 0, 0]), allow, "nr {nr}");
        }
        // Another architecture's calls go to the kernel untouched.
        assert_eq!(run(&f, NR_MKNOD, 0x4000_0003, [0, S_IFCHR as u64, 0, 0, 0, 0]), allow);
    }

    #[test]
    fn decodes_device_numbers_like_the_kernel() {
        assert_eq!(decode_dev(0x0103), (1, 3));
        assert_eq!(decode_dev(0x0700), (7, 0));
        // major 259, minor 300: new_encode_dev = (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)
        let enc = (300u64 & 0xff) | (259 << 8) | ((300u64 & !0xff) << 12);
        assert_eq!(decode_dev(enc), (259, 300));
    }

    proptest! {
        #[test]
        fn every_input_ends_in_allow_or_notify(nr in any::<u32>(), arch in any::<u32>(), args in any::<[u64; 6]>()) {
            let r = run(&filter(), nr, arch, args);
            prop_assert!(r == Some(RET_ALLOW) || r == Some(RET_USER_NOTIF));
        }
    }

    /// The straightforward parse, as a model for the fast one.
    fn model(text: &str) -> Option<Creds> {
        let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        let fs = |name: &str| field(name)?.split_whitespace().nth(3)?.parse().ok();
        let hex_or_oct = |name: &str, radix| {
            let v = field(name)?;
            (!v.is_empty() && v.chars().all(|c| c.is_digit(radix))).then_some(())?;
            u64::from_str_radix(v, radix).ok()
        };
        Some(Creds {
            fsuid: fs("Uid:")?,
            fsgid: fs("Gid:")?,
            groups: field("Groups:")?.split_whitespace().map(str::parse).collect::<Result<_, _>>().ok()?,
            umask: u32::try_from(hex_or_oct("Umask:", 8)?).ok()?,
            cap_eff: hex_or_oct("CapEff:", 16)?,
        })
    }

    proptest! {
        #[test]
        fn the_fast_parse_agrees_with_the_model(
            uids in proptest::collection::vec(any::<u32>(), 4),
            groups in proptest::collection::vec(any::<u32>(), 0..6),
            umask in 0u32..0o1000,
            cap in any::<u64>(),
            junk in "[A-Za-z]{1,8}:\\t[ -~]{0,20}",
            mangle in 0usize..6,
        ) {
            let g: Vec<String> = groups.iter().map(u32::to_string).collect();
            let u: Vec<String> = uids.iter().map(u32::to_string).collect();
            let mut lines = vec![
                "Name:\tsh".to_owned(),
                format!("Umask:\t{umask:04o}"),
                "State:\tS (sleeping)".to_owned(),
                format!("Uid:\t{}", u.join("\t")),
                format!("Gid:\t{}", u.join("\t")),
                junk,
                format!("Groups:\t{} ", g.join(" ")),
                "CapPrm:\t000001ffffffffff".to_owned(),
                format!("CapEff:\t{cap:016x}"),
                "Seccomp:\t2".to_owned(),
            ];
            // Sometimes a needed line is missing or broken.
            match mangle {
                1 => { lines.remove(1); }
                2 => lines[3] = "Uid:\t1\t2".to_owned(),
                3 => lines[6] = "Groups:\t1 x".to_owned(),
                4 => lines[8] = "CapEff:\tzz".to_owned(),
                _ => {}
            }
            let text = lines.join("\n");
            prop_assert_eq!(Creds::parse_status(&text), model(&text));
        }

        #[test]
        fn the_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Creds::parse_status_bytes(&bytes);
        }
    }

    #[test]
    fn reads_credentials_from_proc_status() {
        let text = "Name:\tsh\nUmask:\t0022\nState:\tS\nUid:\t100000\t100000\t100000\t100005\nGid:\t100000\t100000\t100000\t100006\nGroups:\t100000 100010 \nCapEff:\t000001ffffffffff\n";
        let c = Creds::parse_status(text).unwrap();
        assert_eq!((c.fsuid, c.fsgid, c.umask), (100_005, 100_006, 0o022));
        assert_eq!(c.groups, [100_000, 100_010]);
        assert!(c.has_cap(CAP_MKNOD) && c.has_cap(CAP_SYS_ADMIN));
        assert!(!Creds { cap_eff: 0, ..c }.has_cap(CAP_MKNOD));
        assert_eq!(Creds::parse_status("Uid:\t1\n"), None);
    }
}
