use super::*;
use crate::api::Event;
use crate::device::{Identity, Kind};
use crate::registry::tests::{dev, disk, part, sample};
use crate::registry::{AssignError, Owner};
use crate::state::ClaimError;
use crate::subid::Range;
use proptest::prelude::*;
use std::collections::BTreeSet;

const K1: Keeper = Keeper { pid: 10, start_time: 1 };
const K2: Keeper = Keeper { pid: 11, start_time: 2 };
const NULL: DevId = DevId::new(Kind::Char, 1, 3);
const TUN: DevId = DevId::new(Kind::Char, 10, 200);
const LOOP_CONTROL: DevId = DevId::new(Kind::Char, 10, 237);
const LOOP0: DevId = DevId::new(Kind::Block, 7, 0);
const LOOP1: DevId = DevId::new(Kind::Block, 7, 1);
const LOOP2: DevId = DevId::new(Kind::Block, 7, 2);
const P1: DevId = DevId::new(Kind::Block, 259, 0);
const P2: DevId = DevId::new(Kind::Block, 259, 1);
const A: NsId = NsId(9);
const B: NsId = NsId(8);

/// The registry tests' sample host, with `loop-control`.
fn devices() -> Vec<Device> {
    sample().devices().cloned().chain([dev(Kind::Char, 10, 237, "loop-control")]).collect()
}

fn host() -> Model {
    Model::new(devices(), vec!["null".into(), "zero".into(), "absent".into()])
}

fn claim(id: NsId, name: Option<&str>, keeper: Keeper, devices: &[DevId]) -> Change {
    Change::Claim {
        id,
        name: name.map(str::to_owned),
        keeper: Some(keeper),
        members: vec![],
        devices: devices.to_vec(),
        ids: Ids::Allocate { uids: vec![], gids: vec![] },
        container: None,
    }
}

/// The host with namespace `A` ("x") and `B`, owning nothing.
fn two() -> Model {
    let mut m = host();
    m.apply(claim(A, Some("x"), K1, &[])).unwrap();
    m.apply(claim(B, None, K2, &[])).unwrap();
    m
}

/// Applies a change that must be refused, and checks that nothing changed.
fn refused(m: &mut Model, c: Change) -> ClaimError {
    let before = m.clone();
    let e = m.apply(c).unwrap_err();
    assert_eq!(*m, before, "a refused change changed the model");
    e
}

fn names(m: &Model, ns: NsId) -> Vec<String> {
    let mut v: Vec<String> = m.view_devices(ns).iter().map(|d| d.name.clone()).collect();
    v.sort();
    v
}

fn lo(minor: u32) -> LoopDev {
    LoopDev { index: minor, dev: DevId::new(Kind::Block, 7, minor), created: true, ino: None }
}

fn loop_dev(minor: u32, seq: u64) -> Device {
    Device { diskseq: Some(seq), ..disk(minor, &format!("loop{minor}")) }
}

fn take(ns: NsId, minor: u32, seq: u64) -> Change {
    Change::LoopTake { ns, l: lo(minor), dev: loop_dev(minor, seq) }
}

fn ev(event: &str, name: &str, dev: DevId, ns: Option<NsId>) -> Effect {
    Effect::Emit(Event::device(event, name, dev, ns.map(|n| n.to_string())))
}

fn paths(p: &[&str]) -> Scope {
    Scope::Paths(p.iter().map(|s| (*s).to_owned()).collect())
}

// Claim

#[test]
fn claims_get_distinct_blocks_and_devices() {
    let mut m = host();
    assert_eq!(m.apply(claim(A, Some("a"), K1, &[LOOP0])), Ok(vec![Effect::Save(A)]));
    let a = m.record(A).unwrap();
    assert_eq!((a.uid_base, a.gid_base), (Some(100_000), Some(100_000)));
    assert_eq!(a.devices, [LOOP0]);
    assert_eq!(m.apply(claim(B, None, K2, &[LOOP1, LOOP1])), Ok(vec![Effect::Save(B)]));
    let b = m.record(B).unwrap();
    assert_eq!((b.uid_base, b.gid_base), (Some(165_536), Some(165_536)));
    assert_eq!(b.devices, [LOOP1]);
    assert_eq!(names(&m, A), ["loop0", "loop0p1", "loop0p2", "null", "zero"]);
    assert_eq!(names(&m, B), ["loop1", "null", "zero"]);
    assert_eq!(m.by_name("a"), Some(A));
    assert_eq!(m.by_keeper(K2), Some(B));
}

#[test]
fn an_attached_namespace_takes_no_block() {
    let mut m = host();
    let c = Change::Claim {
        id: A,
        name: None,
        keeper: None,
        members: vec![K1],
        devices: vec![LOOP1, LOOP0],
        ids: Ids::Own,
        container: None,
    };
    assert_eq!(m.apply(c), Ok(vec![Effect::Save(A)]));
    let r = m.record(A).unwrap();
    assert_eq!((r.uid_base, r.gid_base, r.members, r.devices), (None, None, vec![K1], vec![LOOP0, LOOP1]));
    m.apply(claim(B, None, K2, &[])).unwrap();
    assert_eq!(m.record(B).unwrap().uid_base, Some(100_000));
}

#[test]
fn conflicting_claims_change_nothing() {
    let mut m = host();
    m.apply(claim(NsId(77), Some("a"), K1, &[LOOP0])).unwrap();
    let e = refused(&mut m, claim(B, None, K2, &[LOOP1, LOOP0]));
    assert_eq!(e.to_string(), "device loop0 is already owned by namespace id:77 (a)");
    assert_eq!(refused(&mut m, claim(B, Some("a"), K2, &[])), ClaimError::NameInUse("a".into()));
    assert_eq!(refused(&mut m, claim(NsId(77), Some("b"), K2, &[])), ClaimError::Known(NsId(77)));
    let e = refused(&mut m, claim(B, None, K2, &[P1]));
    assert!(matches!(e, ClaimError::Assign(AssignError::Partition { .. })));
    // Its disk's owner does not matter: a partition is never claimed.
    assert_eq!(e.to_string(), "device loop0p1 is a partition: partitions follow their disk, assign loop0 instead");
    let absent = DevId::new(Kind::Block, 9, 9);
    assert_eq!(refused(&mut m, claim(B, None, K2, &[absent])), ClaimError::Assign(AssignError::Unknown(absent)));
    let tiny = vec![Range { start: 100_000, count: 65_536 }];
    let with = |uids: Vec<Range>, gids: Vec<Range>| Change::Claim {
        id: B,
        name: None,
        keeper: Some(K2),
        members: vec![],
        devices: vec![LOOP1],
        ids: Ids::Allocate { uids, gids },
        container: None,
    };
    assert_eq!(refused(&mut m, with(tiny.clone(), vec![])), ClaimError::NoIds { kind: "user" });
    assert_eq!(refused(&mut m, with(vec![], tiny)), ClaimError::NoIds { kind: "group" });
    assert_eq!(m.ids(), [NsId(77)]);
}

// Assign, Release

#[test]
fn assign_release_and_forget() {
    let mut m = two();
    m.apply(Change::Assign { dev: LOOP0, to: A }).unwrap();
    m.apply(Change::Assign { dev: LOOP0, to: A }).unwrap();
    assert_eq!(m.record(A).unwrap().devices, [LOOP0]);
    let e = refused(&mut m, Change::Assign { dev: LOOP0, to: B });
    assert_eq!(e.to_string(), "device loop0 is already owned by namespace id:9 (x)");
    assert_eq!(refused(&mut m, Change::Assign { dev: LOOP1, to: NsId(7) }), ClaimError::UnknownNs("id:7".into()));
    m.apply(Change::Release { dev: LOOP0 }).unwrap();
    assert_eq!(refused(&mut m, Change::Release { dev: LOOP0 }), ClaimError::NotOwned("loop0".into()));
    m.apply(Change::Assign { dev: LOOP1, to: B }).unwrap();
    m.apply(Change::DeviceRemove { dev: LOOP1, diskseq: None }).unwrap();
    assert!(m.record(B).unwrap().devices.is_empty());
    assert_eq!(refused(&mut m, claim(A, None, K2, &[])), ClaimError::Known(A));
}

#[test]
fn assign_shows_the_disk_with_its_partitions_and_announces_them() {
    let mut m = two();
    let fx = m.apply(Change::Assign { dev: LOOP0, to: A }).unwrap();
    assert_eq!(
        fx,
        [
            Effect::Reconcile(A, paths(&["loop0", "loop0p1", "loop0p2"])),
            Effect::Save(A),
            Effect::Announce(A, Announce::Synth { add: true, devs: vec![LOOP0, P1, P2] }),
            ev("assign", "loop0", LOOP0, Some(A)),
        ]
    );
    assert_eq!(m.owned(A), [LOOP0]);
    assert_eq!(m.registry().owner(P2), Owner::Ns(A));
    assert_eq!(names(&m, A), ["loop0", "loop0p1", "loop0p2", "null", "zero"]);
    assert_eq!(names(&m, B), ["null", "zero"]);
}

#[test]
fn assign_refuses_partitions_and_unknown_devices() {
    let mut m = two();
    let e = refused(&mut m, Change::Assign { dev: P1, to: A });
    assert_eq!(e.to_string(), "device loop0p1 is a partition: partitions follow their disk, assign loop0 instead");
    m.apply(Change::Assign { dev: LOOP0, to: A }).unwrap();
    // Its disk another's, or its own: still a partition.
    let e = refused(&mut m, Change::Assign { dev: P1, to: B });
    assert_eq!(e.to_string(), "device loop0p1 is a partition: partitions follow their disk, assign loop0 instead");
    assert!(matches!(
        refused(&mut m, Change::Assign { dev: P2, to: A }),
        ClaimError::Assign(AssignError::Partition { .. })
    ));
    let absent = DevId::new(Kind::Block, 9, 9);
    assert_eq!(
        refused(&mut m, Change::Assign { dev: absent, to: A }),
        ClaimError::Assign(AssignError::Unknown(absent))
    );
}

#[test]
fn release_hides_the_disk_and_announces_partitions_first() {
    let mut m = two();
    m.apply(Change::Assign { dev: LOOP0, to: A }).unwrap();
    let fx = m.apply(Change::Release { dev: LOOP0 }).unwrap();
    assert_eq!(
        fx,
        [
            Effect::Reconcile(A, Scope::All),
            Effect::Save(A),
            Effect::Announce(A, Announce::Synth { add: false, devs: vec![P1, P2, LOOP0] }),
            ev("release", "loop0", LOOP0, Some(A)),
        ]
    );
    assert_eq!(m.registry().owner(LOOP0), Owner::Host);
    assert_eq!(names(&m, A), ["null", "zero"]);
}

#[test]
fn release_refuses_partitions_and_unowned_devices() {
    let mut m = two();
    m.apply(Change::Assign { dev: LOOP0, to: A }).unwrap();
    assert_eq!(refused(&mut m, Change::Release { dev: P1 }), ClaimError::NotOwned("loop0p1".into()));
    assert_eq!(refused(&mut m, Change::Release { dev: LOOP1 }), ClaimError::NotOwned("loop1".into()));
    assert_eq!(refused(&mut m, Change::Release { dev: NULL }), ClaimError::NotOwned("null".into()));
}

#[test]
fn a_released_loop_device_leaves_the_loops_too() {
    let mut m = two();
    m.apply(take(A, 1, 3)).unwrap();
    assert_eq!(m.namespace(A).unwrap().loops, [lo(1)]);
    m.apply(Change::Release { dev: LOOP1 }).unwrap();
    assert!(m.namespace(A).unwrap().loops.is_empty());
}

// Global

#[test]
fn global_shows_a_device_in_every_view() {
    let mut m = two();
    let fx = m.apply(Change::Global { dev: TUN, on: true }).unwrap();
    assert_eq!(
        fx,
        [
            Effect::Reconcile(B, Scope::All),
            Effect::Reconcile(A, Scope::All),
            Effect::SaveGlobal,
            Effect::Emit(Event {
                event: "global".into(),
                device: Some("net/tun".into()),
                dev: Some("c:10:200".into()),
                ns: None,
                global: Some(true),
            }),
        ]
    );
    assert_eq!(m.global_flags(), &BTreeMap::from([(TUN, true)]));
    assert_eq!(names(&m, A), ["net/tun", "null", "zero"]);
    assert_eq!(names(&m, B), ["net/tun", "null", "zero"]);
    // A configured global device turned off, in the flags too.
    m.apply(Change::Global { dev: NULL, on: false }).unwrap();
    assert_eq!(names(&m, A), ["net/tun", "zero"]);
    assert_eq!(m.global_flags(), &BTreeMap::from([(NULL, false), (TUN, true)]));
}

#[test]
fn loop_control_is_never_global() {
    let mut m = two();
    let e = refused(&mut m, Change::Global { dev: LOOP_CONTROL, on: true });
    assert_eq!(
        e.to_string(),
        "loop-control cannot be global: without devns mediating its ioctls it lets any container remove other namespaces' loop devices"
    );
    // Turning it off is allowed (and it stays out of every view).
    m.apply(Change::Global { dev: LOOP_CONTROL, on: false }).unwrap();
    assert!(!m.registry().is_global(LOOP_CONTROL));
}

// LoopTake, LoopReturn

#[test]
fn a_new_loop_device_is_taken_and_its_kernel_add_forwarded() {
    let mut m = two();
    let fx = m.apply(take(A, 2, 4)).unwrap();
    // No synthetic add: the kernel's is on its way.
    assert_eq!(fx, [Effect::Reconcile(A, paths(&["loop2"])), Effect::Save(A), ev("assign", "loop2", LOOP2, Some(A))]);
    assert_eq!(m.record(A).unwrap().devices, [LOOP2]);
    assert_eq!(m.namespace(A).unwrap().loops, [lo(2)]);
    assert_eq!(m.registry().device(LOOP2).unwrap().diskseq, Some(4));
    let fx = m.apply(Change::DeviceAdd { dev: loop_dev(2, 4) }).unwrap();
    assert_eq!(fx, [Effect::Reconcile(A, paths(&["loop2"])), Effect::Announce(A, Announce::Forward)]);
}

#[test]
fn a_known_loop_device_taken_is_announced() {
    let mut m = two();
    let fx = m.apply(take(A, 1, 3)).unwrap();
    assert_eq!(
        fx,
        [
            Effect::Reconcile(A, paths(&["loop1"])),
            Effect::Save(A),
            Effect::Announce(A, Announce::Synth { add: true, devs: vec![LOOP1] }),
            ev("assign", "loop1", LOOP1, Some(A)),
        ]
    );
    // Taken twice: recorded once.
    m.apply(take(A, 1, 3)).unwrap();
    assert_eq!(m.namespace(A).unwrap().loops, [lo(1)]);
}

#[test]
fn a_loop_device_of_another_or_of_nobody_known_is_refused() {
    let mut m = two();
    m.apply(take(A, 1, 3)).unwrap();
    // Even the newer description it came with is not kept.
    let e = refused(&mut m, take(B, 1, 9));
    assert_eq!(e.to_string(), "device loop1 is already owned by namespace id:9 (x)");
    assert_eq!(refused(&mut m, take(NsId(7), 2, 1)), ClaimError::UnknownNs("id:7".into()));
    assert!(m.registry().device(LOOP2).is_none());
}

#[test]
fn a_returned_loop_device_leaves_and_its_removes_go_to_the_old_owner() {
    let mut m = two();
    m.apply(take(A, 0, 3)).unwrap();
    let fx = m.apply(Change::LoopReturn { ns: A, l: lo(0) }).unwrap();
    assert_eq!(fx, [Effect::Save(A), Effect::Reconcile(A, Scope::All), ev("remove", "loop0", LOOP0, Some(A))]);
    assert!(m.registry().device(LOOP0).is_none() && m.registry().device(P1).is_none());
    assert!(m.owned(A).is_empty() && m.namespace(A).unwrap().loops.is_empty());
    assert_eq!(names(&m, A), ["null", "zero"]);
    // The kernel's events, partitions first: each forwarded to A, once.
    for d in [P1, P2, LOOP0] {
        assert_eq!(
            m.apply(Change::DeviceRemove { dev: d, diskseq: Some(3) }),
            Ok(vec![Effect::Announce(A, Announce::Forward)])
        );
    }
    assert_eq!(m.apply(Change::DeviceRemove { dev: LOOP0, diskseq: Some(3) }), Ok(vec![]));
}

#[test]
fn a_late_remove_of_a_returned_loop_device_spares_the_next_owner() {
    let mut m = two();
    m.apply(take(A, 1, 3)).unwrap();
    m.apply(Change::LoopReturn { ns: A, l: lo(1) }).unwrap();
    // Made again at the same index for B before A's remove came.
    m.apply(take(B, 1, 4)).unwrap();
    let fx = m.apply(Change::DeviceRemove { dev: LOOP1, diskseq: Some(3) }).unwrap();
    assert_eq!(fx, [Effect::Announce(A, Announce::Forward)]);
    assert_eq!(m.owned(B), [LOOP1]);
    assert_eq!(m.registry().device(LOOP1).unwrap().diskseq, Some(4));
}

// Partitions

#[test]
fn edited_partitions_change_the_view_and_their_events_follow() {
    let mut m = two();
    m.apply(Change::Assign { dev: LOOP0, to: A }).unwrap();
    let p3 = part(2, "loop0p3", 0);
    let fx = m.apply(Change::Partitions { ns: A, disk: LOOP0, now: vec![part(1, "loop0p2", 0), p3.clone()] }).unwrap();
    assert_eq!(fx, [Effect::Reconcile(A, Scope::All)]);
    assert!(m.registry().device(P1).is_none());
    assert_eq!(m.registry().owner(p3.id), Owner::Ns(A));
    assert_eq!(names(&m, A), ["loop0", "loop0p2", "loop0p3", "null", "zero"]);
    assert_eq!(names(&m, B), ["null", "zero"]);
    // The kernel's remove of the gone one goes to A; the new one's add is
    // the owner's, as any of its devices' events.
    assert_eq!(
        m.apply(Change::DeviceRemove { dev: P1, diskseq: None }),
        Ok(vec![Effect::Announce(A, Announce::Forward)])
    );
    assert_eq!(m.apply(Change::DeviceRemove { dev: P1, diskseq: None }), Ok(vec![]));
    assert_eq!(
        m.apply(Change::DeviceAdd { dev: p3 }),
        Ok(vec![Effect::Reconcile(A, paths(&["loop0p3"])), Effect::Announce(A, Announce::Forward)])
    );
}

#[test]
fn partitions_of_an_unknown_disk_change_nothing() {
    let mut m = two();
    let before = m.clone();
    let now = vec![part(7, "loop5p1", 5)];
    assert_eq!(m.apply(Change::Partitions { ns: A, disk: DevId::new(Kind::Block, 7, 5), now }), Ok(vec![]));
    assert_eq!(m, before);
}

// DeviceAdd, DeviceRemove

#[test]
fn an_added_device_goes_to_whoever_may_see_it() {
    let mut m = two();
    let fuse = dev(Kind::Char, 10, 229, "fuse");
    assert_eq!(m.apply(Change::DeviceAdd { dev: fuse.clone() }), Ok(vec![ev("add", "fuse", fuse.id, None)]));
    assert_eq!(m.registry().owner(fuse.id), Owner::Host);
    // Named global in the config: in every view, nobody's to hear.
    let absent = dev(Kind::Char, 10, 230, "absent");
    assert_eq!(
        m.apply(Change::DeviceAdd { dev: absent.clone() }),
        Ok(vec![
            Effect::Reconcile(B, paths(&["absent"])),
            Effect::Reconcile(A, paths(&["absent"])),
            ev("add", "absent", absent.id, None),
        ])
    );
    assert_eq!(names(&m, A), ["absent", "null", "zero"]);
    // A change of a known global device: reconciled, announced to nobody.
    assert_eq!(
        m.apply(Change::DeviceAdd { dev: dev(Kind::Char, 1, 3, "null") }),
        Ok(vec![Effect::Reconcile(B, paths(&["null"])), Effect::Reconcile(A, paths(&["null"]))])
    );
    // A change of an owned one: the owner hears the kernel's event.
    m.apply(Change::Assign { dev: LOOP1, to: A }).unwrap();
    assert_eq!(
        m.apply(Change::DeviceAdd { dev: disk(1, "loop1") }),
        Ok(vec![Effect::Reconcile(A, paths(&["loop1"])), Effect::Announce(A, Announce::Forward)])
    );
    // Owned and made global: everyone's view, nobody's event.
    m.apply(Change::Global { dev: LOOP1, on: true }).unwrap();
    assert_eq!(
        m.apply(Change::DeviceAdd { dev: disk(1, "loop1") }),
        Ok(vec![Effect::Reconcile(B, paths(&["loop1"])), Effect::Reconcile(A, paths(&["loop1"]))])
    );
}

#[test]
fn a_run_time_flag_outlives_the_config_name_on_add() {
    let mut m = two();
    m.apply(Change::Global { dev: NULL, on: false }).unwrap();
    assert_eq!(m.apply(Change::DeviceAdd { dev: dev(Kind::Char, 1, 3, "null") }), Ok(vec![]));
    assert!(!m.registry().is_global(NULL));
}

#[test]
fn a_late_add_of_an_older_disk_changes_nothing() {
    let mut m = two();
    m.apply(take(A, 1, 5)).unwrap();
    let before = m.clone();
    assert_eq!(m.apply(Change::DeviceAdd { dev: loop_dev(1, 4) }), Ok(vec![]));
    assert_eq!(m, before);
}

#[test]
fn a_removed_owned_device_leaves_its_owner() {
    let mut m = two();
    m.apply(take(A, 1, 5)).unwrap();
    // A late event of an older disk with these numbers.
    let before = m.clone();
    assert_eq!(m.apply(Change::DeviceRemove { dev: LOOP1, diskseq: Some(4) }), Ok(vec![]));
    assert_eq!(m, before);
    let fx = m.apply(Change::DeviceRemove { dev: LOOP1, diskseq: Some(5) }).unwrap();
    assert_eq!(
        fx,
        [
            Effect::Save(A),
            Effect::Reconcile(A, paths(&["loop1"])),
            Effect::Announce(A, Announce::Forward),
            Effect::Reconcile(A, Scope::All),
            ev("remove", "loop1", LOOP1, Some(A)),
        ]
    );
    assert!(m.owned(A).is_empty() && m.namespace(A).unwrap().loops.is_empty());
    assert!(m.registry().device(LOOP1).is_none());
}

#[test]
fn a_newer_disk_with_reused_numbers_is_the_hosts() {
    let mut m = two();
    m.apply(take(A, 1, 5)).unwrap();
    // The remove carries a newer number than A's disk was known with: A's
    // disk is what is gone (detached since), the next one is the host's.
    m.apply(Change::DeviceRemove { dev: LOOP1, diskseq: Some(7) }).unwrap();
    let fx = m.apply(Change::DeviceAdd { dev: loop_dev(1, 7) }).unwrap();
    assert_eq!(fx, [ev("add", "loop1", LOOP1, None)]);
    assert_eq!(m.registry().owner(LOOP1), Owner::Host);
    assert_eq!(names(&m, A), ["null", "zero"]);
}

#[test]
fn a_removed_global_device_leaves_every_view_and_its_flag() {
    let mut m = two();
    let fx = m.apply(Change::DeviceRemove { dev: NULL, diskseq: None }).unwrap();
    assert_eq!(
        fx,
        [
            Effect::Reconcile(B, paths(&["null"])),
            Effect::Reconcile(A, paths(&["null"])),
            Effect::Reconcile(B, Scope::All),
            Effect::Reconcile(A, Scope::All),
            ev("remove", "null", NULL, None),
        ]
    );
    assert_eq!(names(&m, A), ["zero"]);
    m.apply(Change::Global { dev: TUN, on: true }).unwrap();
    let fx = m.apply(Change::DeviceRemove { dev: TUN, diskseq: None }).unwrap();
    assert_eq!(fx[0], Effect::SaveGlobal);
    assert!(m.global_flags().is_empty());
    assert_eq!(m.apply(Change::DeviceRemove { dev: TUN, diskseq: None }), Ok(vec![]));
}

// Death

#[test]
fn death_frees_the_whole_record_and_releases_its_devices() {
    let mut m = two();
    m.apply(take(A, 0, 3)).unwrap();
    m.apply(Change::Assign { dev: LOOP1, to: A }).unwrap();
    let cg = CgroupRecord { path: "/sys/fs/cgroup/devns-9".into(), created: true, prog_id: Some(4) };
    m.apply(Change::Cgroup { ns: A, rec: Some(cg.clone()) }).unwrap();
    m.apply(Change::Members { ns: A, members: vec![K2] }).unwrap();
    let rec = m.record(A).unwrap();
    assert_eq!(
        (rec.devices.clone(), rec.loops.clone(), rec.cgroup.clone()),
        (vec![LOOP0, LOOP1], vec![lo(0)], Some(cg))
    );
    let fx = m.apply(Change::Death { ns: A }).unwrap();
    assert_eq!(
        fx,
        [
            Effect::Free(rec),
            Effect::Save(A),
            ev("release", "loop0", LOOP0, Some(A)),
            ev("release", "loop1", LOOP1, Some(A)),
            Effect::Emit(Event::ns("ns-gone", A)),
        ]
    );
    assert!(m.namespace(A).is_none() && m.record(A).is_none());
    assert_eq!(m.ids(), [B]);
    assert_eq!(m.registry().owner(LOOP0), Owner::Host);
    assert_eq!(m.by_name("x"), None);
    // Its block and name are free again.
    m.apply(claim(NsId(5), Some("x"), K1, &[LOOP0])).unwrap();
    assert_eq!(m.record(NsId(5)).unwrap().uid_base, Some(100_000));
}

#[test]
fn a_dead_namespace_hears_nothing_more() {
    let mut m = two();
    m.apply(take(A, 1, 3)).unwrap();
    m.apply(Change::LoopReturn { ns: A, l: lo(1) }).unwrap();
    m.apply(Change::Death { ns: A }).unwrap();
    assert_eq!(m.apply(Change::DeviceRemove { dev: LOOP1, diskseq: Some(3) }), Ok(vec![]));
    let before = m.clone();
    assert_eq!(m.apply(Change::Death { ns: A }), Ok(vec![]));
    assert_eq!(m, before);
}

// Members, Cgroup

#[test]
fn members_and_cgroup_are_saved() {
    let mut m = two();
    assert_eq!(m.apply(Change::Members { ns: A, members: vec![K1, K2] }), Ok(vec![Effect::Save(A)]));
    assert_eq!(m.record(A).unwrap().members, [K1, K2]);
    let cg = CgroupRecord { path: "/sys/fs/cgroup/x".into(), created: false, prog_id: None };
    assert_eq!(m.apply(Change::Cgroup { ns: A, rec: Some(cg.clone()) }), Ok(vec![Effect::Save(A)]));
    assert_eq!(m.record(A).unwrap().cgroup, Some(cg));
    assert_eq!(m.apply(Change::Cgroup { ns: A, rec: None }), Ok(vec![Effect::Save(A)]));
    assert_eq!(m.record(A).unwrap().cgroup, None);
    let unknown = ClaimError::UnknownNs("id:7".into());
    assert_eq!(refused(&mut m, Change::Members { ns: NsId(7), members: vec![K1] }), unknown);
    assert_eq!(refused(&mut m, Change::Cgroup { ns: NsId(7), rec: None }), unknown);
}

// Records

fn record(id: Option<NsId>, name: Option<&str>, devices: Vec<DevId>, loops: Vec<LoopDev>) -> NsRecord {
    NsRecord {
        id,
        name: name.map(str::to_owned),
        keeper: None,
        members: vec![K1],
        uid_base: Some(165_536),
        gid_base: Some(165_536),
        devices,
        identity: BTreeMap::new(),
        loops,
        cgroup: None,
        container: None,
    }
}

#[test]
fn records_read_at_restart_come_back_as_they_were() {
    let mut m = host();
    let r = record(Some(A), Some("x"), vec![LOOP0, LOOP1], vec![lo(1)]);
    let fx = m.apply(Change::Records { records: vec![r.clone()], except: BTreeSet::new(), global: None }).unwrap();
    assert_eq!(fx, []);
    assert_eq!(m.record(A), Some(r));
    assert_eq!(m.by_name("x"), Some(A));
    assert_eq!(names(&m, A), ["loop0", "loop0p1", "loop0p2", "loop1", "null", "zero"]);
}

#[test]
fn a_kept_record_keeps_its_block_from_the_next_claim() {
    // A run's record whose keeper is gone but whose namespace could not be
    // emptied yet stays; its block is not handed out again.
    let mut m = host();
    let mut r = record(Some(A), None, vec![], vec![]);
    r.uid_base = Some(100_000);
    r.gid_base = Some(100_000);
    m.apply(Change::Records { records: vec![r], except: BTreeSet::new(), global: None }).unwrap();
    m.apply(claim(B, None, K2, &[])).unwrap();
    let next = m.namespace(B).unwrap();
    assert_eq!((next.uid_base, next.gid_base), (Some(165_536), Some(165_536)));
}

#[test]
fn records_replace_all_but_the_keepers_own() {
    let mut m = two();
    m.apply(Change::Assign { dev: LOOP0, to: A }).unwrap();
    m.apply(Change::Assign { dev: LOOP1, to: B }).unwrap();
    let c = NsId(5);
    let gone = DevId::new(Kind::Block, 7, 9);
    let records = vec![
        record(Some(c), Some("c"), vec![LOOP1, gone], vec![lo(1), lo(9)]),
        // An older devns's, between its claim and its namespace.
        record(None, Some("starting"), vec![], vec![]),
        // The keeper's own, which it knows better.
        record(Some(A), Some("stale"), vec![], vec![]),
    ];
    let global = BTreeMap::from([(TUN, true), (NULL, false)]);
    let fx = m.apply(Change::Records { records, except: BTreeSet::from([A]), global: Some(global) }).unwrap();
    assert_eq!(fx, [Effect::Missing(c, gone), Effect::Save(c), Effect::Reconcile(A, Scope::All)]);
    assert_eq!(m.ids(), [c, A]);
    assert_eq!(m.by_name("starting"), None);
    assert_eq!(m.namespace(A).unwrap().name.as_deref(), Some("x"));
    assert_eq!(m.owned(A), [LOOP0]);
    let rc = m.record(c).unwrap();
    assert_eq!((rc.devices, rc.loops), (vec![LOOP1], vec![lo(1)]));
    assert!(m.registry().is_global(TUN) && !m.registry().is_global(NULL));
    assert_eq!(m.global_flags().get(&TUN), Some(&true));
    assert_eq!(names(&m, A), ["loop0", "loop0p1", "loop0p2", "net/tun", "zero"]);
    // Without flags, the run-time ones stay.
    m.apply(Change::Records { records: vec![], except: BTreeSet::from([A]), global: None }).unwrap();
    assert!(m.registry().is_global(TUN) && !m.registry().is_global(NULL));
    assert_eq!(m.ids(), [A]);
    assert_eq!(m.registry().owner(LOOP1), Owner::Host);
}

/// The sample host with `loop1` and `net/tun` known by their sysfs
/// directories' inodes, `loop1` with a `DISKSEQ`.
fn host_with_inodes(loop1: u64, tun: u64) -> Model {
    let devs = devices()
        .into_iter()
        .map(|d| match d.id {
            LOOP1 => Device { ino: Some(loop1), diskseq: Some(20), ..d },
            TUN => Device { ino: Some(tun), ..d },
            _ => d,
        })
        .collect();
    Model::new(devs, vec!["null".into(), "zero".into()])
}

#[test]
fn a_saved_record_knows_its_devices_by_what_ends_with_them() {
    let mut m = host_with_inodes(500, 600);
    m.apply(claim(A, None, K1, &[LOOP0, LOOP1, TUN])).unwrap();
    let r = m.record(A).unwrap();
    // loop0's inode is not known: it is known by its numbers alone.
    assert_eq!(
        r.identity,
        BTreeMap::from([
            (LOOP1, Identity { ino: Some(500), diskseq: Some(20) }),
            (TUN, Identity { ino: Some(600), diskseq: None }),
        ])
    );
}

#[test]
fn at_restart_a_device_made_again_since_its_record_is_the_host_s() {
    let mut old = host_with_inodes(500, 600);
    old.apply(claim(A, None, K1, &[LOOP0, LOOP1, TUN])).unwrap();
    let mut r = old.record(A).unwrap();
    r.loops = vec![lo(1)];
    // Restarted: loop1 and tun were removed and made again meanwhile
    // (newer kernfs nodes); loop1 was attached again (a newer DISKSEQ).
    let mut m = host_with_inodes(900, 901);
    let fx = m.apply(Change::Records { records: vec![r.clone()], except: BTreeSet::new(), global: None }).unwrap();
    let remade = |dev, rec: u64, now: u64, seq| Effect::Remade {
        ns: A,
        dev,
        recorded: Identity { ino: Some(rec), diskseq: seq },
        now: Identity { ino: Some(now), diskseq: seq },
    };
    assert_eq!(fx, [remade(TUN, 600, 901, None), Effect::Save(A), remade(LOOP1, 500, 900, Some(20)), Effect::Save(A)]);
    assert_eq!(m.owned(A), [LOOP0]);
    assert_eq!(m.registry().owner(LOOP1), Owner::Host);
    assert_eq!(m.registry().owner(TUN), Owner::Host);
    // Not its loop device either: never detached or removed at its death.
    assert_eq!(m.namespace(A).unwrap().loops, []);
    assert_eq!(names(&m, A), ["loop0", "loop0p1", "loop0p2", "null", "zero"]);
    // Saved with what it owns now.
    assert_eq!(m.record(A).unwrap().devices, [LOOP0]);

    // The same devices (attached again since: DISKSEQ grew): still its own.
    let mut same = host_with_inodes(500, 600);
    let fx = same.apply(Change::Records { records: vec![r.clone()], except: BTreeSet::new(), global: None }).unwrap();
    assert_eq!(fx, []);
    assert_eq!(same.owned(A), [TUN, LOOP0, LOOP1]);
    // A reader that has not yet learnt the newer devices the record
    // describes (older inodes): the record stands.
    let mut behind = host_with_inodes(100, 200);
    behind.apply(Change::Records { records: vec![r.clone()], except: BTreeSet::new(), global: None }).unwrap();
    assert_eq!(behind.owned(A), [TUN, LOOP0, LOOP1]);
    // A record of devns before identities: known by numbers, as before.
    let mut older = host_with_inodes(900, 901);
    let bare = NsRecord { identity: BTreeMap::new(), ..r };
    older.apply(Change::Records { records: vec![bare], except: BTreeSet::new(), global: None }).unwrap();
    assert_eq!(older.owned(A), [TUN, LOOP0, LOOP1]);
    // ... and its next save writes what they are now.
    assert_eq!(older.record(A).unwrap().identity[&LOOP1].ino, Some(900));
}

// Rescan

#[test]
fn a_rescan_finds_an_owned_device_made_again_the_host_s() {
    let mut m = host_with_inodes(500, 600);
    m.apply(claim(A, None, K1, &[LOOP1, TUN])).unwrap();
    let now: Vec<Device> = host_with_inodes(900, 600).registry().devices().cloned().collect();
    let fx = m.apply(Change::Rescan { devices: now }).unwrap();
    let recorded = Identity { ino: Some(500), diskseq: Some(20) };
    let new = Identity { ino: Some(900), diskseq: Some(20) };
    assert_eq!(
        fx,
        [Effect::Remade { ns: A, dev: LOOP1, recorded, now: new }, Effect::Save(A), Effect::Reconcile(A, Scope::All)]
    );
    assert_eq!(m.owned(A), [TUN]);
}

#[test]
fn rescan_drops_what_left_the_host_meanwhile() {
    let mut m = two();
    m.apply(take(A, 0, 3)).unwrap();
    m.apply(take(A, 1, 3)).unwrap();
    m.apply(Change::Global { dev: TUN, on: true }).unwrap();
    m.apply(take(B, 2, 3)).unwrap();
    m.apply(Change::LoopReturn { ns: B, l: lo(2) }).unwrap();
    let now: Vec<Device> = devices().into_iter().filter(|d| d.id != LOOP1 && d.id != TUN).collect();
    let fx = m.apply(Change::Rescan { devices: now }).unwrap();
    assert_eq!(
        fx,
        [
            Effect::Missing(A, LOOP1),
            Effect::Save(A),
            Effect::SaveGlobal,
            Effect::Reconcile(B, Scope::All),
            Effect::Reconcile(A, Scope::All),
        ]
    );
    assert_eq!(m.owned(A), [LOOP0]);
    assert_eq!(m.namespace(A).unwrap().loops, [lo(0)]);
    assert!(m.global_flags().is_empty());
    assert_eq!(names(&m, A), ["loop0", "loop0p1", "loop0p2", "null", "zero"]);
    // Events awaited before may never come: none is awaited now.
    assert_eq!(m.apply(Change::DeviceRemove { dev: LOOP2, diskseq: Some(3) }), Ok(vec![]));
}

#[test]
fn rescan_finds_configured_globals_and_keeps_flags() {
    let mut m = two();
    m.apply(Change::Global { dev: NULL, on: false }).unwrap();
    let mut now = devices();
    now.push(dev(Kind::Char, 10, 230, "absent"));
    let fx = m.apply(Change::Rescan { devices: now }).unwrap();
    assert_eq!(fx, [Effect::Reconcile(B, Scope::All), Effect::Reconcile(A, Scope::All)]);
    assert_eq!(names(&m, A), ["absent", "zero"]);
}

// Undo

#[test]
fn undo_is_keeping_the_old_value() {
    let mut m = two();
    m.apply(take(A, 0, 3)).unwrap();
    let changes = vec![
        Change::Assign { dev: LOOP1, to: B },
        Change::Release { dev: LOOP0 },
        Change::Global { dev: TUN, on: true },
        take(B, 2, 4),
        Change::LoopReturn { ns: A, l: lo(0) },
        Change::Partitions { ns: A, disk: LOOP0, now: vec![] },
        Change::DeviceAdd { dev: dev(Kind::Char, 10, 230, "absent") },
        Change::DeviceRemove { dev: NULL, diskseq: None },
        Change::Death { ns: A },
        Change::Members { ns: B, members: vec![K1] },
        Change::Cgroup { ns: B, rec: Some(CgroupRecord { path: "/c".into(), created: true, prog_id: None }) },
        Change::Records { records: vec![], except: BTreeSet::new(), global: Some(BTreeMap::new()) },
        Change::Rescan { devices: vec![] },
    ];
    let seen = |m: &Model| -> Vec<(Vec<Device>, Option<NsRecord>)> {
        [A, B].iter().map(|id| (m.view_devices(*id).into_iter().cloned().collect(), m.record(*id))).collect()
    };
    let was = seen(&m);
    for c in changes {
        let kept = m.clone();
        let mut next = m.clone();
        next.apply(c.clone()).unwrap();
        assert_ne!(next, kept, "{c:?} changed nothing");
        // The kernel would not take it: the keeper keeps the old value.
        assert_eq!(seen(&kept), was, "{c:?}");
        m = kept;
    }
    assert_eq!(seen(&m), was);
}

// Whatever happens, ownership is held once.

#[derive(Clone, Debug)]
enum Op {
    Assign(u32, usize),
    Release(u32),
    LoopTake(usize, u32, u64),
    DeviceRemove(u32, Option<u64>),
    DeviceAdd(u32, u64),
    Death(usize),
    Claim(usize),
}

const NSS: [NsId; 3] = [NsId(1), NsId(2), NsId(3)];

fn op() -> impl Strategy<Value = Op> {
    let seq = proptest::option::of(0u64..4);
    prop_oneof![
        (0u32..4, 0usize..3).prop_map(|(d, n)| Op::Assign(d, n)),
        (0u32..4).prop_map(Op::Release),
        (0usize..3, 0u32..4, 0u64..4).prop_map(|(n, d, s)| Op::LoopTake(n, d, s)),
        (0u32..4, seq).prop_map(|(d, s)| Op::DeviceRemove(d, s)),
        (0u32..4, 0u64..4).prop_map(|(d, s)| Op::DeviceAdd(d, s)),
        (0usize..3).prop_map(Op::Death),
        (0usize..3).prop_map(Op::Claim),
    ]
}

/// Block devices 7:0..4; 259:0 and 259:1 are partitions of 7:0.
fn dev_of(minor: u32) -> DevId {
    DevId::new(Kind::Block, 7, minor)
}

fn change(o: Op) -> Change {
    match o {
        Op::Assign(d, n) => Change::Assign { dev: dev_of(d), to: NSS[n] },
        Op::Release(d) => Change::Release { dev: dev_of(d) },
        Op::LoopTake(n, d, s) => Change::LoopTake { ns: NSS[n], l: lo(d), dev: loop_dev(d, s) },
        Op::DeviceRemove(d, s) => Change::DeviceRemove { dev: dev_of(d), diskseq: s },
        Op::DeviceAdd(d, s) => Change::DeviceAdd { dev: loop_dev(d, s) },
        Op::Death(n) => Change::Death { ns: NSS[n] },
        Op::Claim(n) => Change::Claim {
            id: NSS[n],
            name: None,
            keeper: None,
            members: vec![],
            devices: vec![],
            ids: Ids::Allocate { uids: vec![], gids: vec![] },
            container: None,
        },
    }
}

proptest! {
    #[test]
    fn ownership_is_held_once(ops in proptest::collection::vec(op(), 0..40)) {
        let mut m = host();
        for id in NSS {
            m.apply(change(Op::Claim(id.0 as usize - 1))).unwrap();
        }
        for o in ops {
            let before = m.clone();
            if m.apply(change(o)).is_err() {
                prop_assert_eq!(&m, &before);
            }
        }
        let ids = m.ids();
        let reg = m.registry();
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                for d in m.view_devices(*a) {
                    if m.view_devices(*b).iter().any(|x| x.id == d.id) {
                        prop_assert!(reg.is_global(d.id), "{} in two views", d.name);
                    }
                }
            }
            let r = m.record(*a).unwrap();
            for d in &r.devices {
                prop_assert_eq!(reg.owner(*d), Owner::Ns(*a));
                prop_assert!(reg.device(*d).is_some_and(|x| !x.is_partition()));
            }
            for l in &r.loops {
                prop_assert!(r.devices.contains(&l.dev), "loop {} not owned", l.dev);
            }
        }
        for d in reg.devices() {
            match reg.owner(d.id) {
                Owner::Ns(o) => {
                    prop_assert!(ids.contains(&o), "{} owned by a gone namespace", d.name);
                    let root = if d.is_partition() { d.parent.unwrap() } else { d.id };
                    prop_assert!(m.record(o).unwrap().devices.contains(&root));
                    prop_assert!(m.view_devices(o).iter().any(|x| x.id == d.id));
                }
                Owner::Host => {
                    for id in &ids {
                        prop_assert!(!m.record(*id).unwrap().devices.contains(&d.id));
                    }
                }
            }
        }
    }
}
