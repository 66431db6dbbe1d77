//! The access layer as data: the eBPF device program every container's
//! cgroup runs, the map it looks devices up in, and the steps that bring a
//! live map to what a namespace may use.
//!
//! The program never changes: it asks a hash map keyed by `(type, major,
//! minor)` for the access mask allowed, so a change of ownership is a map
//! update, never a program reload. [`map_plan`] derives the desired map
//! from the view's plan (what the namespace sees is what it may open), and
//! [`diff`] gives the updates from what the map holds now.

use crate::device::{DevId, Kind};
use crate::view::{Entry, ViewPlan};
use std::collections::BTreeMap;

/// `BPF_DEVCG_DEV_BLOCK` and `BPF_DEVCG_DEV_CHAR` (`linux/bpf.h`).
pub const DEV_BLOCK: u32 = 1;
pub const DEV_CHAR: u32 = 2;
/// `BPF_DEVCG_ACC_MKNOD`, `_READ`, `_WRITE`.
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;
/// Read, write and mknod: what a namespace may do with its own devices.
pub const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;
/// A minor that matches any minor of its `(type, major)`: the kernel's
/// minors have 20 bits, so this never names a real device.
pub const ANY_MINOR: u32 = u32::MAX;

/// The key and value sizes of the map, as the kernel is told.
pub const KEY_SIZE: u32 = 12;
pub const VALUE_SIZE: u32 = 4;
/// The program's name (`BPF_OBJ_NAME_LEN` is 16, NUL included): how devns
/// tells its own program from a runtime's when it finds one again.
pub const PROG_NAME: &str = "devns";
pub const MAP_NAME: &str = "devns_devices";

/// `/dev/ptmx` of a devpts instance (`pts/ptmx` in a view).
pub const PTMX: DevId = DevId::new(Kind::Char, 5, 2);
/// UNIX98 pty slaves: majors 136 to 143 (`UNIX98_PTY_MAJOR_COUNT` is 8).
pub const PTY_SLAVE_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;

/// A map key: `struct { u32 type; u32 major; u32 minor; }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub ty: u32,
    pub major: u32,
    pub minor: u32,
}

impl Key {
    pub const fn of(dev: DevId) -> Key {
        let ty = match dev.kind {
            Kind::Block => DEV_BLOCK,
            Kind::Char => DEV_CHAR,
        };
        Key { ty, major: dev.major, minor: dev.minor }
    }

    /// Every minor of a character major.
    pub const fn any_char_minor(major: u32) -> Key {
        Key { ty: DEV_CHAR, major, minor: ANY_MINOR }
    }

    /// The key as the kernel map holds it (native byte order).
    pub fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&self.ty.to_ne_bytes());
        b[4..8].copy_from_slice(&self.major.to_ne_bytes());
        b[8..12].copy_from_slice(&self.minor.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: [u8; 12]) -> Key {
        let at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        Key { ty: at(0), major: at(4), minor: at(8) }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = match self.ty {
            DEV_BLOCK => "b",
            DEV_CHAR => "c",
            _ => "?",
        };
        if self.minor == ANY_MINOR {
            write!(f, "{t}:{}:*", self.major)
        } else {
            write!(f, "{t}:{}:{}", self.major, self.minor)
        }
    }
}

/// What the map must hold for a namespace whose view is `plan`: every
/// device node of the view (globals, owned devices and their partitions,
/// the loop-control stand-in), plus the devices its own devpts hands out
/// (`ptmx` and the pty slaves, any minor), all with read, write and mknod.
pub fn map_plan(plan: &ViewPlan) -> BTreeMap<Key, u32> {
    let mut m = BTreeMap::new();
    for e in &plan.entries {
        if let Entry::Node { dev, .. } = e {
            m.insert(Key::of(*dev), ACC_ALL);
        }
    }
    m.insert(Key::of(PTMX), ACC_ALL);
    for major in PTY_SLAVE_MAJORS {
        m.insert(Key::any_char_minor(major), ACC_ALL);
    }
    m
}

/// The steps from the map's contents to the desired ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDelta {
    /// Entries to write (new, or with another mask).
    pub put: Vec<(Key, u32)>,
    /// Keys to remove.
    pub delete: Vec<Key>,
}

impl MapDelta {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.delete.is_empty()
    }

    pub fn len(&self) -> usize {
        self.put.len() + self.delete.len()
    }
}

pub fn diff(actual: &BTreeMap<Key, u32>, desired: &BTreeMap<Key, u32>) -> MapDelta {
    MapDelta {
        put: desired.iter().filter(|(k, v)| actual.get(k) != Some(v)).map(|(k, v)| (*k, *v)).collect(),
        delete: actual.keys().filter(|k| !desired.contains_key(k)).copied().collect(),
    }
}

/// The program's verdict as a plain lookup: the model the program is
/// tested against. `access_type` is the kernel's (`access << 16 | type`).
pub fn allows(map: &BTreeMap<Key, u32>, access_type: u32, major: u32, minor: u32) -> bool {
    let (ty, access) = (access_type & 0xffff, access_type >> 16);
    let exact = map.get(&Key { ty, major, minor });
    let mask = exact.or_else(|| map.get(&Key { ty, major, minor: ANY_MINOR }));
    mask.is_some_and(|m| access & !m == 0)
}

// ---- the program ------------------------------------------------------------

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// The 8 bytes the kernel reads: `code`, `dst_reg:4 | src_reg:4` (dst
    /// in the low nibble, as on little-endian hosts), `off`, `imm`.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.dst & 0xf) | (self.src << 4);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

/// A program as the bytes `BPF_PROG_LOAD` takes.
pub fn to_bytes(prog: &[Insn]) -> Vec<u8> {
    prog.iter().flat_map(|i| i.to_bytes()).collect()
}

/// Registers.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const R10: u8 = 10;

/// `BPF_PSEUDO_MAP_FD`: the `src` of an `LD_IMM64` whose immediate is a map fd.
pub const PSEUDO_MAP_FD: u8 = 1;
/// `BPF_FUNC_map_lookup_elem`.
pub const HELPER_MAP_LOOKUP: i32 = 1;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, dst, src, off, imm }
}

/// `dst = *(u32 *)(src + off)`
fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x61, dst, src, off, 0)
}
/// `*(u32 *)(dst + off) = src`
fn stx_w(dst: u8, off: i16, src: u8) -> Insn {
    insn(0x63, dst, src, off, 0)
}
/// `*(u32 *)(dst + off) = imm`
fn st_w(dst: u8, off: i16, imm: i32) -> Insn {
    insn(0x62, dst, 0, off, imm)
}
fn mov64_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0)
}
fn mov64_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}
fn and64_imm(dst: u8, imm: i32) -> Insn {
    insn(0x57, dst, 0, 0, imm)
}
fn and64_reg(dst: u8, src: u8) -> Insn {
    insn(0x5f, dst, src, 0, 0)
}
fn xor64_imm(dst: u8, imm: i32) -> Insn {
    insn(0xa7, dst, 0, 0, imm)
}
fn rsh64_imm(dst: u8, imm: i32) -> Insn {
    insn(0x77, dst, 0, 0, imm)
}
fn add64_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm)
}
fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x15, dst, 0, off, imm)
}
fn jne_imm(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x55, dst, 0, off, imm)
}
fn jne_reg(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x5d, dst, src, off, 0)
}
fn call(helper: i32) -> Insn {
    insn(0x85, 0, 0, 0, helper)
}
fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0)
}
/// `dst = map` (two instructions: `LD_IMM64` with `BPF_PSEUDO_MAP_FD`).
fn ld_map_fd(dst: u8, fd: i32) -> [Insn; 2] {
    [insn(0x18, dst, PSEUDO_MAP_FD, 0, fd), insn(0, 0, 0, 0, 0)]
}

/// The device program: allow iff the map (the map fd `map_fd` when loaded)
/// has `(type, major, minor)`, or failing that `(type, major, ANY_MINOR)`,
/// with a mask that covers every access bit requested.
///
/// It reads `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32
/// minor; }` (`access_type` is `access << 16 | type`) and builds the key on
/// its stack at `r10 - 12`.
pub fn program(map_fd: i32) -> Vec<Insn> {
    let mut p = vec![
        ldx_w(R6, R1, 0),
        mov64_reg(R2, R6),
        and64_imm(R2, 0xffff),
        // r6: the requested access bits, kept across the helper calls.
        rsh64_imm(R6, 16),
        stx_w(R10, -12, R2),
        ldx_w(R2, R1, 4),
        stx_w(R10, -8, R2),
        ldx_w(R2, R1, 8),
        stx_w(R10, -4, R2),
    ];
    let lookup = |p: &mut Vec<Insn>| {
        p.extend(ld_map_fd(R1, map_fd));
        p.extend([mov64_reg(R2, R10), add64_imm(R2, -12), call(HELPER_MAP_LOOKUP)]);
    };
    lookup(&mut p);
    // Found: skip the wildcard lookup (7 instructions) to the mask check.
    p.push(jne_imm(R0, 0, 7));
    p.push(st_w(R10, -4, ANY_MINOR as i32));
    lookup(&mut p);
    // Not found either: deny (past the check's 6 instructions).
    p.push(jeq_imm(R0, 0, 6));
    p.extend([
        ldx_w(R1, R0, 0),
        // Any requested bit the mask lacks: deny.
        xor64_imm(R1, -1),
        and64_reg(R1, R6),
        jne_imm(R1, 0, 2),
        mov64_imm(R0, 1),
        exit(),
        mov64_imm(R0, 0),
        exit(),
    ]);
    p
}

/// The baseline devns is measured against: what runc, crun and youki
/// generate, one compare-and-jump chain per rule in the program itself
/// (runc's `devicefilter`), so that every change means a new program. The
/// first rule whose device matches decides (a rule's minor [`ANY_MINOR`]
/// matches any minor): exact rules put before wildcards give the map's
/// verdicts. Used by the benchmark and by tests that stand in for a
/// runtime's own program.
pub fn inline_program(rules: &[(Key, u32)]) -> Vec<Insn> {
    let mut p = vec![
        ldx_w(R2, R1, 0),
        and64_imm(R2, 0xffff),
        ldx_w(R3, R1, 0),
        rsh64_imm(R3, 16),
        ldx_w(R4, R1, 4),
        ldx_w(R5, R1, 8),
    ];
    for (key, mask) in rules {
        let mut block = vec![jne_imm(R2, key.ty as i32, 0), jne_imm(R4, key.major as i32, 0)];
        if key.minor != ANY_MINOR {
            block.push(jne_imm(R5, key.minor as i32, 0));
        }
        // The device matches: allow iff the mask covers the request.
        block.extend([
            mov64_reg(R1, R3),
            and64_imm(R1, *mask as i32),
            mov64_imm(R0, 0),
            jne_reg(R1, R3, 1),
            mov64_imm(R0, 1),
            exit(),
        ]);
        // The device comparisons jump to the next rule: this block's end.
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == 0x55 {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.extend([mov64_imm(R0, 0), exit()]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idmap::IdMap;
    use crate::registry::NsId;
    use crate::registry::tests::sample;
    use crate::view::{DEFAULT_OVERFLOW, LOOP_CONTROL_STAND_IN, plan};
    use proptest::prelude::*;

    fn key(kind: Kind, major: u32, minor: u32) -> Key {
        Key::of(DevId::new(kind, major, minor))
    }

    #[test]
    fn the_map_holds_the_view_s_nodes_and_the_ptys() {
        let mut r = sample();
        r.assign(DevId::new(Kind::Block, 7, 0), NsId(1)).unwrap();
        let m = IdMap::single(100_000, 65_536);
        let p = plan(&r.view_devices(NsId(1)), &m, &m, DEFAULT_OVERFLOW);
        let got = map_plan(&p);
        let mut want: BTreeMap<Key, u32> = [
            key(Kind::Char, 1, 3), // null, and the loop-control stand-in
            key(Kind::Char, 1, 5), // zero
            key(Kind::Block, 7, 0),
            key(Kind::Block, 259, 0),
            key(Kind::Block, 259, 1),
            Key::of(PTMX),
        ]
        .into_iter()
        .map(|k| (k, ACC_ALL))
        .collect();
        want.extend((136..=143).map(|m| (Key::any_char_minor(m), ACC_ALL)));
        assert_eq!(got, want);
        // Another namespace: globals and ptys only.
        let other = map_plan(&plan(&r.view_devices(NsId(2)), &m, &m, DEFAULT_OVERFLOW));
        assert!(!other.contains_key(&key(Kind::Block, 7, 0)));
        assert!(!other.contains_key(&key(Kind::Char, 1, 1)), "mem is nobody's");
    }

    #[test]
    fn the_loop_control_stand_in_is_allowed_even_when_null_is_not_global() {
        let m = IdMap::single(100_000, 65_536);
        let got = map_plan(&plan(&[], &m, &m, DEFAULT_OVERFLOW));
        assert_eq!(got.get(&Key::of(LOOP_CONTROL_STAND_IN)), Some(&ACC_ALL));
        assert_eq!(got.len(), 1 + 1 + 8);
    }

    #[test]
    fn diff_puts_what_is_missing_or_different_and_deletes_the_rest() {
        let a = key(Kind::Char, 1, 3);
        let b = key(Kind::Block, 7, 0);
        let c = key(Kind::Block, 7, 1);
        let actual: BTreeMap<Key, u32> = [(a, ACC_ALL), (b, ACC_READ), (c, ACC_ALL)].into();
        let desired: BTreeMap<Key, u32> = [(a, ACC_ALL), (b, ACC_ALL), (Key::of(PTMX), ACC_ALL)].into();
        let d = diff(&actual, &desired);
        assert_eq!(d.put, vec![(b, ACC_ALL), (Key::of(PTMX), ACC_ALL)]);
        assert_eq!(d.delete, vec![c]);
        assert!(diff(&desired, &desired).is_empty());
    }

    #[test]
    fn keys_round_trip_and_print() {
        let k = key(Kind::Block, 259, 7);
        assert_eq!(Key::from_bytes(k.to_bytes()), k);
        assert_eq!(k.to_string(), "b:259:7");
        assert_eq!(Key::any_char_minor(136).to_string(), "c:136:*");
    }

    #[test]
    fn instructions_encode_as_the_kernel_reads_them() {
        let p = program(7);
        // ld_imm64 r1 = map fd 7 takes two slots, src = BPF_PSEUDO_MAP_FD.
        let ld = p.iter().position(|i| i.code == 0x18).unwrap();
        assert_eq!(p[ld].to_bytes(), [0x18, 0x11, 0, 0, 7, 0, 0, 0]);
        assert_eq!(p[ld + 1].to_bytes(), [0; 8]);
        assert_eq!(exit().to_bytes(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(to_bytes(&p).len(), p.len() * 8);
        assert_eq!(p.iter().filter(|i| i.code == 0x85).count(), 2, "two lookups");
        assert_eq!(p.last(), Some(&exit()));
    }

    proptest! {
        #[test]
        fn the_model_denies_what_no_entry_covers(
            entries in proptest::collection::btree_map((1u32..3, 0u32..4, prop_oneof![0u32..4, Just(ANY_MINOR)]), 0u32..8, 0..12),
            ty in 0u32..4, access in 0u32..8, major in 0u32..4, minor in 0u32..4,
        ) {
            let map: BTreeMap<Key, u32> = entries.into_iter().map(|((t, a, b), m)| (Key { ty: t, major: a, minor: b }, m)).collect();
            let v = allows(&map, access << 16 | ty, major, minor);
            let exact = map.get(&Key { ty, major, minor }).copied();
            let wild = map.get(&Key { ty, major, minor: ANY_MINOR }).copied();
            match exact.or(wild) {
                None => prop_assert!(!v),
                Some(m) => prop_assert_eq!(v, access & m == access),
            }
        }
    }
}
