//! The device program run in a userspace eBPF interpreter (`rbpf`), without
//! root: a table of cases, and a property test against the model
//! [`devns_core::bpf::allows`] over random maps and requests. The baseline
//! program (`inline_program`, what runtimes generate) is checked the same
//! way, as the benchmark and the tests rely on both giving one verdict.

use devns_core::bpf::{
    ACC_ALL, ACC_MKNOD, ACC_READ, ACC_WRITE, ANY_MINOR, DEV_BLOCK, DEV_CHAR, HELPER_MAP_LOOKUP, Key, allows,
    inline_program, program, to_bytes,
};
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeMap;

/// The map fd the program is built with; the helper checks it is passed.
const MAP_FD: i32 = 42;

thread_local! {
    /// The map the helper answers from, and the slot it returns a pointer
    /// to (a stable address, registered with the interpreter as readable).
    static MAP: RefCell<BTreeMap<Key, u32>> = const { RefCell::new(BTreeMap::new()) };
    static SLOT: Box<u32> = Box::new(0);
    static CALLS: RefCell<Vec<Key>> = const { RefCell::new(Vec::new()) };
}

fn slot_addr() -> u64 {
    SLOT.with(|s| &**s as *const u32 as u64)
}

/// `bpf_map_lookup_elem(map, key)`: a pointer to the value, or 0.
fn map_lookup(map: u64, key: u64, _: u64, _: u64, _: u64) -> u64 {
    assert_eq!(map, MAP_FD as u64, "the program passes its map");
    // SAFETY: the program passes a pointer to its 12-byte key on the
    // interpreter's stack (`r10 - 12`), which is live and unchanged while
    // the helper runs; the interpreter runs on this thread.
    let bytes: [u8; 12] = unsafe { std::ptr::read_unaligned(key as *const [u8; 12]) };
    let k = Key::from_bytes(bytes);
    CALLS.with(|c| c.borrow_mut().push(k));
    match MAP.with(|m| m.borrow().get(&k).copied()) {
        None => 0,
        Some(v) => {
            let addr = slot_addr();
            // SAFETY: `addr` is this thread's boxed u32, alive for the
            // thread's life; nothing else borrows it while the helper runs.
            unsafe { *(addr as *mut u32) = v };
            addr
        }
    }
}

/// Runs `prog` on one request; its return value.
fn run(prog: &[u8], map: &BTreeMap<Key, u32>, ty: u32, access: u32, major: u32, minor: u32) -> u64 {
    MAP.with(|m| *m.borrow_mut() = map.clone());
    CALLS.with(|c| c.borrow_mut().clear());
    let mut vm = rbpf::EbpfVmRaw::new(Some(prog)).expect("the interpreter's verifier takes the program");
    vm.register_helper(HELPER_MAP_LOOKUP as u32, map_lookup).unwrap();
    let a = slot_addr();
    vm.register_allowed_memory(a..a + 4);
    let mut ctx = [0u8; 12];
    ctx[0..4].copy_from_slice(&(access << 16 | ty).to_ne_bytes());
    ctx[4..8].copy_from_slice(&major.to_ne_bytes());
    ctx[8..12].copy_from_slice(&minor.to_ne_bytes());
    vm.execute_program(&mut ctx).expect("runs")
}

fn devns(map: &BTreeMap<Key, u32>, ty: u32, access: u32, major: u32, minor: u32) -> bool {
    let prog = to_bytes(&program(MAP_FD));
    match run(&prog, map, ty, access, major, minor) {
        0 => false,
        1 => true,
        r => panic!("the program returned {r}"),
    }
}

fn baseline(map: &BTreeMap<Key, u32>, ty: u32, access: u32, major: u32, minor: u32) -> bool {
    // Exact rules first: the map prefers an exact key over the wildcard.
    let mut rules: Vec<(Key, u32)> = map.iter().map(|(k, v)| (*k, *v)).collect();
    rules.sort_by_key(|(k, _)| k.minor == ANY_MINOR);
    let prog = to_bytes(&inline_program(&rules));
    run(&prog, map, ty, access, major, minor) == 1
}

fn sample_map() -> BTreeMap<Key, u32> {
    [
        (Key { ty: DEV_CHAR, major: 1, minor: 3 }, ACC_ALL),
        (Key { ty: DEV_CHAR, major: 1, minor: 9 }, ACC_READ),
        (Key { ty: DEV_BLOCK, major: 7, minor: 0 }, ACC_ALL),
        (Key { ty: DEV_CHAR, major: 136, minor: ANY_MINOR }, ACC_ALL),
        (Key { ty: DEV_CHAR, major: 137, minor: 5 }, ACC_READ),
        (Key { ty: DEV_CHAR, major: 137, minor: ANY_MINOR }, ACC_ALL),
    ]
    .into()
}

#[test]
fn a_table_of_cases() {
    let map = sample_map();
    let rw = ACC_READ | ACC_WRITE;
    #[rustfmt::skip]
    let cases: &[(&str, u32, u32, u32, u32, bool)] = &[
        // what, type, access, major, minor, allowed
        ("null, read+write", DEV_CHAR, rw, 1, 3, true),
        ("null, mknod", DEV_CHAR, ACC_MKNOD, 1, 3, true),
        ("null, every access", DEV_CHAR, ACC_ALL, 1, 3, true),
        ("the same numbers as a block device", DEV_BLOCK, ACC_READ, 1, 3, false),
        ("urandom (r only): read", DEV_CHAR, ACC_READ, 1, 9, true),
        ("urandom (r only): write", DEV_CHAR, ACC_WRITE, 1, 9, false),
        ("urandom (r only): read+write", DEV_CHAR, rw, 1, 9, false),
        ("urandom (r only): mknod", DEV_CHAR, ACC_MKNOD, 1, 9, false),
        ("an owned loop device", DEV_BLOCK, rw, 7, 0, true),
        ("another loop device", DEV_BLOCK, rw, 7, 1, false),
        ("a char device with a loop device's numbers", DEV_CHAR, ACC_READ, 7, 0, false),
        ("mem", DEV_CHAR, ACC_READ, 1, 1, false),
        ("a pty slave (wildcard)", DEV_CHAR, rw, 136, 0, true),
        ("a high pty slave (wildcard)", DEV_CHAR, rw, 136, (1 << 20) - 1, true),
        ("wildcard is per type", DEV_BLOCK, ACC_READ, 136, 4, false),
        ("exact entry wins over the wildcard", DEV_CHAR, ACC_WRITE, 137, 5, false),
        ("the wildcard beside an exact entry", DEV_CHAR, ACC_WRITE, 137, 6, true),
        ("unknown major", DEV_CHAR, ACC_READ, 250, 0, false),
        ("no access bit asked", DEV_CHAR, 0, 1, 3, true),
        ("a type the kernel never sends", 3, ACC_READ, 1, 3, false),
    ];
    for &(what, ty, access, major, minor, want) in cases {
        assert_eq!(devns(&map, ty, access, major, minor), want, "devns program: {what}");
        assert_eq!(allows(&map, access << 16 | ty, major, minor), want, "model: {what}");
        assert_eq!(baseline(&map, ty, access, major, minor), want, "baseline program: {what}");
    }
}

#[test]
fn the_wildcard_is_asked_only_when_the_exact_key_is_missing() {
    let map = sample_map();
    devns(&map, DEV_CHAR, ACC_READ, 1, 3);
    assert_eq!(CALLS.with(|c| c.borrow().len()), 1);
    devns(&map, DEV_CHAR, ACC_READ, 136, 12);
    let calls = CALLS.with(|c| c.borrow().clone());
    assert_eq!(
        calls,
        [Key { ty: DEV_CHAR, major: 136, minor: 12 }, Key { ty: DEV_CHAR, major: 136, minor: ANY_MINOR }]
    );
}

#[test]
fn an_empty_map_denies_everything() {
    let map = BTreeMap::new();
    for (ty, major, minor) in [(DEV_CHAR, 1, 3), (DEV_BLOCK, 7, 0), (DEV_CHAR, 136, 0)] {
        assert!(!devns(&map, ty, ACC_READ, major, minor));
        assert!(!baseline(&map, ty, ACC_READ, major, minor));
    }
}

fn key_strategy() -> impl Strategy<Value = Key> {
    (1u32..3, 0u32..5, prop_oneof![3 => 0u32..5, 1 => Just(ANY_MINOR)]).prop_map(|(ty, major, minor)| Key {
        ty,
        major,
        minor,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// The program's verdict is the model's lookup, for random maps and
    /// requests (types, majors and minors drawn small so that they hit).
    #[test]
    fn the_program_decides_as_the_model(
        map in proptest::collection::btree_map(key_strategy(), 0u32..8, 0..16),
        ty in 0u32..4, access in 0u32..8, major in 0u32..5, minor in prop_oneof![0u32..5, Just((1 << 20) - 1)],
    ) {
        let want = allows(&map, access << 16 | ty, major, minor);
        prop_assert_eq!(devns(&map, ty, access, major, minor), want);
        prop_assert_eq!(baseline(&map, ty, access, major, minor), want);
    }
}
