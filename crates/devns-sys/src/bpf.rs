//! The `bpf(2)` commands devns uses, one small function each: a hash map of
//! device keys, a `BPF_PROG_TYPE_CGROUP_DEVICE` program, attaching it to a
//! cgroup (`BPF_F_ALLOW_MULTI`) and finding it again after a restart
//! without bpffs (query, get fd by id, object info). Neither rustix nor
//! libc wraps `bpf(2)`; the attr structs are `repr(C)` copies of the parts
//! of `union bpf_attr` (`linux/bpf.h`) each command reads.

use rustix::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use rustix::io::Errno;

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_int = 4;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_MAP_GET_FD_BY_ID: libc::c_int = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_PROG_QUERY: libc::c_int = 16;

pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
pub const BPF_CGROUP_DEVICE: u32 = 6;
pub const BPF_F_ALLOW_MULTI: u32 = 2;
/// Map elements are allocated when written, not all at creation.
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// `BPF_ANY` for an update: create or replace.
const BPF_ANY: u64 = 0;
const BPF_OBJ_NAME_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("bpf({cmd}): {source}")]
    Call { cmd: &'static str, source: Errno },
    #[error("the kernel's verifier refused the program: {source}; its log:\n{log}")]
    Verifier { source: Errno, log: String },
    #[error("bad argument to bpf({cmd}): {what}")]
    Arg { cmd: &'static str, what: &'static str },
    #[error("map {id} is not the map expected: {found}, not {want}")]
    Mismatch { id: u32, found: String, want: String },
}

impl BpfError {
    /// The kernel's errno, when the kernel answered.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            BpfError::Call { source, .. } | BpfError::Verifier { source, .. } => Some(*source),
            BpfError::Arg { .. } | BpfError::Mismatch { .. } => None,
        }
    }
}

/// One `bpf(2)` call with `attr` (`size_of::<A>()` bytes); the return value.
///
/// # Safety
/// `attr` must be the attr of command `cmd` as the kernel reads it: every
/// pointer it holds (as a `u64`) valid for what `cmd` reads or writes
/// through it, for the length the attr gives, for the call's duration.
unsafe fn sys_bpf<A>(cmd: libc::c_int, name: &'static str, attr: &mut A) -> Result<i64, BpfError> {
    // SAFETY: `attr` is a live, exclusively borrowed value of the size
    // passed; the caller vouches for the pointers inside it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>() as libc::c_uint) };
    if r < 0 { Err(BpfError::Call { cmd: name, source: crate::last_errno() }) } else { Ok(r) }
}

/// A new fd the kernel returned: nothing else owns it.
fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the bpf commands that create or open an object return a new
    // file descriptor on success, which nothing else owns yet.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// The number of `fd`, which the caller keeps open (borrowed, not taken:
/// an owned fd passed to a wrapper by value lives until the wrapper returns).
fn raw<F: AsFd>(fd: &F) -> u32 {
    fd.as_fd().as_raw_fd() as u32
}

fn name_bytes(name: &str) -> [u8; BPF_OBJ_NAME_LEN] {
    let mut b = [0u8; BPF_OBJ_NAME_LEN];
    let n = name.len().min(BPF_OBJ_NAME_LEN - 1);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    b
}

/// `bpf_attr` for `BPF_MAP_CREATE`, up to `map_name`.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; BPF_OBJ_NAME_LEN],
}

/// A hash map with keys of `K` bytes and values of `V` bytes, as the kernel
/// holds it: made with those sizes, or found by id and checked to have
/// them. The element calls take buffers of exactly `K` and `V` bytes, so
/// the kernel never reads or writes past one (it goes by the map's sizes).
pub struct Map<const K: usize, const V: usize> {
    fd: OwnedFd,
}

impl<const K: usize, const V: usize> AsFd for Map<K, V> {
    fn as_fd(&self) -> rustix::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl<const K: usize, const V: usize> Map<K, V> {
    /// A new hash map of at most `max_entries` elements.
    pub fn create_hash(max_entries: u32, flags: u32, name: &str) -> Result<Self, BpfError> {
        let mut a = MapCreateAttr {
            map_type: BPF_MAP_TYPE_HASH,
            key_size: K as u32,
            value_size: V as u32,
            max_entries,
            map_flags: flags,
            map_name: name_bytes(name),
            ..Default::default()
        };
        // SAFETY: MAP_CREATE holds no pointer.
        let fd = unsafe { sys_bpf(BPF_MAP_CREATE, "BPF_MAP_CREATE", &mut a) }.map(owned)?;
        Ok(Map { fd })
    }

    /// The map with id `id`, if it is a hash map of these sizes; with what
    /// the kernel says of it.
    pub fn by_id(id: u32) -> Result<(Self, MapInfo), BpfError> {
        let fd = map_fd_by_id(id)?;
        let info = map_info(&fd)?;
        if (info.map_type, info.key_size, info.value_size) != (BPF_MAP_TYPE_HASH, K as u32, V as u32) {
            return Err(BpfError::Mismatch {
                id,
                found: format!("type {}, key {} B, value {} B", info.map_type, info.key_size, info.value_size),
                want: format!("a hash map, key {K} B, value {V} B"),
            });
        }
        Ok((Map { fd }, info))
    }

    pub fn info(&self) -> Result<MapInfo, BpfError> {
        map_info(&self.fd)
    }

    fn elem(&self, key: *const u8, value: u64, flags: u64) -> ElemAttr {
        ElemAttr { map_fd: raw(&self.fd), key: key as u64, value, flags, ..Default::default() }
    }

    /// Writes `value` at `key` (created or replaced).
    pub fn update(&self, key: &[u8; K], value: &[u8; V]) -> Result<(), BpfError> {
        let mut a = self.elem(key.as_ptr(), value.as_ptr() as u64, BPF_ANY);
        // SAFETY: the kernel reads the map's key size (K) at `key` and its
        // value size (V) at `value`, buffers of exactly those lengths that
        // outlive the call.
        unsafe { sys_bpf(BPF_MAP_UPDATE_ELEM, "BPF_MAP_UPDATE_ELEM", &mut a) }.map(drop)
    }

    /// Removes `key`; `Ok(false)` when it was not there.
    pub fn delete(&self, key: &[u8; K]) -> Result<bool, BpfError> {
        let mut a = self.elem(key.as_ptr(), 0, 0);
        // SAFETY: the kernel reads K bytes at `key`, which outlives the call.
        found(unsafe { sys_bpf(BPF_MAP_DELETE_ELEM, "BPF_MAP_DELETE_ELEM", &mut a) })
    }

    /// The value at `key`, if there is one.
    pub fn lookup(&self, key: &[u8; K]) -> Result<Option<[u8; V]>, BpfError> {
        let mut value = [0u8; V];
        let mut a = self.elem(key.as_ptr(), value.as_mut_ptr() as u64, 0);
        // SAFETY: the kernel reads K bytes at `key` and writes V bytes at
        // `value`, buffers of those lengths that outlive the call.
        let there = found(unsafe { sys_bpf(BPF_MAP_LOOKUP_ELEM, "BPF_MAP_LOOKUP_ELEM", &mut a) })?;
        Ok(there.then_some(value))
    }

    /// The key after `key` (the first one for `None`); `None` after the last.
    pub fn next_key(&self, key: Option<&[u8; K]>) -> Result<Option<[u8; K]>, BpfError> {
        let mut next = [0u8; K];
        let mut a = self.elem(key.map_or(std::ptr::null(), |k| k.as_ptr()), next.as_mut_ptr() as u64, 0);
        // SAFETY: the kernel reads K bytes at `key` (none for NULL) and
        // writes K bytes at `next`, buffers of that length that outlive
        // the call.
        let there = found(unsafe { sys_bpf(BPF_MAP_GET_NEXT_KEY, "BPF_MAP_GET_NEXT_KEY", &mut a) })?;
        Ok(there.then_some(next))
    }
}

/// An element call's answer, with `ENOENT` (no such key) as `false`.
fn found(r: Result<i64, BpfError>) -> Result<bool, BpfError> {
    match r {
        Ok(_) => Ok(true),
        Err(BpfError::Call { source: Errno::NOENT, .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `bpf_attr` for the element commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value` or `next_key`.
    value: u64,
    flags: u64,
}

/// `bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; BPF_OBJ_NAME_LEN],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Size of the verifier log asked for when a load fails.
const LOG_SIZE: usize = 64 * 1024;

/// Loads a program of `prog_type` from `insns` (8 bytes each). On a
/// refusal the load is retried with the verifier's log, which the error
/// carries.
pub fn prog_load(prog_type: u32, insns: &[u8], license: &str, name: &str) -> Result<OwnedFd, BpfError> {
    if insns.is_empty() || !insns.len().is_multiple_of(8) {
        return Err(BpfError::Arg { cmd: "BPF_PROG_LOAD", what: "instructions are 8 bytes each" });
    }
    let license: Vec<u8> = license.bytes().chain([0]).collect();
    let attr = |log: &mut [u8]| ProgLoadAttr {
        prog_type,
        insn_cnt: (insns.len() / 8) as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: if log.is_empty() { 0 } else { 1 },
        log_size: log.len() as u32,
        log_buf: if log.is_empty() { 0 } else { log.as_mut_ptr() as u64 },
        prog_name: name_bytes(name),
        ..Default::default()
    };
    let mut a = attr(&mut []);
    // SAFETY: the kernel reads insn_cnt * 8 bytes at `insns` and the
    // NUL-terminated `license`; both outlive the call; no log is asked for.
    match unsafe { sys_bpf(BPF_PROG_LOAD, "BPF_PROG_LOAD", &mut a) } {
        Ok(fd) => Ok(owned(fd)),
        Err(BpfError::Call { source, .. }) if [Errno::ACCESS, Errno::INVAL].contains(&source) => {
            let mut log = vec![0u8; LOG_SIZE];
            let mut a = attr(&mut log);
            // SAFETY: as above, and the kernel writes at most log_size
            // bytes into `log`, which outlives the call.
            match unsafe { sys_bpf(BPF_PROG_LOAD, "BPF_PROG_LOAD", &mut a) } {
                Ok(fd) => Ok(owned(fd)),
                Err(e) => {
                    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                    let text = String::from_utf8_lossy(&log[..end]).trim_end().to_owned();
                    let source = e.errno().unwrap_or(source);
                    Err(if text.is_empty() { e } else { BpfError::Verifier { source, log: text } })
                }
            }
        }
        Err(e) => Err(e),
    }
}

/// `bpf_attr` for `BPF_PROG_ATTACH` / `BPF_PROG_DETACH`.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Attaches `prog` to the cgroup open at `cgroup` (a directory fd).
pub fn prog_attach(prog: impl AsFd, cgroup: impl AsFd, attach_type: u32, flags: u32) -> Result<(), BpfError> {
    let mut a = AttachAttr {
        target_fd: raw(&cgroup),
        attach_bpf_fd: raw(&prog),
        attach_type,
        attach_flags: flags,
        ..Default::default()
    };
    // SAFETY: PROG_ATTACH holds fds, no pointer.
    unsafe { sys_bpf(BPF_PROG_ATTACH, "BPF_PROG_ATTACH", &mut a) }.map(drop)
}

/// Detaches exactly `prog` from the cgroup open at `cgroup`.
pub fn prog_detach(prog: impl AsFd, cgroup: impl AsFd, attach_type: u32) -> Result<(), BpfError> {
    let mut a = AttachAttr { target_fd: raw(&cgroup), attach_bpf_fd: raw(&prog), attach_type, ..Default::default() };
    // SAFETY: PROG_DETACH holds fds, no pointer.
    unsafe { sys_bpf(BPF_PROG_DETACH, "BPF_PROG_DETACH", &mut a) }.map(drop)
}

/// `bpf_attr` for `BPF_PROG_QUERY`, up to `prog_cnt`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// Most programs a query reads from one cgroup (the kernel allows 64 per
/// attach type: `BPF_CGROUP_MAX_PROGS`).
pub const MAX_QUERY: usize = 64;

/// The ids of the programs attached to the cgroup at `cgroup` itself (not
/// its ancestors') for `attach_type`.
pub fn prog_query(cgroup: impl AsFd, attach_type: u32) -> Result<Vec<u32>, BpfError> {
    let mut ids = vec![0u32; MAX_QUERY];
    let mut a = QueryAttr {
        target_fd: raw(&cgroup),
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: the kernel writes at most prog_cnt u32s at `prog_ids`, the
    // buffer of that length above, which outlives the call.
    unsafe { sys_bpf(BPF_PROG_QUERY, "BPF_PROG_QUERY", &mut a) }?;
    ids.truncate((a.prog_cnt as usize).min(MAX_QUERY));
    Ok(ids)
}

/// `bpf_attr` for the `GET_FD_BY_ID` commands.
#[repr(C)]
#[derive(Default)]
struct GetIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// A program by its id (`ENOENT` once it is freed).
pub fn prog_fd_by_id(id: u32) -> Result<OwnedFd, BpfError> {
    let mut a = GetIdAttr { id, ..Default::default() };
    // SAFETY: the attr holds no pointer.
    unsafe { sys_bpf(BPF_PROG_GET_FD_BY_ID, "BPF_PROG_GET_FD_BY_ID", &mut a) }.map(owned)
}

/// A map by its id (`ENOENT` once it is freed).
pub fn map_fd_by_id(id: u32) -> Result<OwnedFd, BpfError> {
    let mut a = GetIdAttr { id, ..Default::default() };
    // SAFETY: the attr holds no pointer.
    unsafe { sys_bpf(BPF_MAP_GET_FD_BY_ID, "BPF_MAP_GET_FD_BY_ID", &mut a) }.map(owned)
}

/// `bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_prog_info`, up to `name`.
#[repr(C)]
#[derive(Default)]
struct ProgInfoRaw {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; BPF_OBJ_NAME_LEN],
}

/// `struct bpf_map_info`, up to `name`.
#[repr(C)]
#[derive(Default)]
struct MapInfoRaw {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: [u8; BPF_OBJ_NAME_LEN],
}

fn name_of(b: &[u8; BPF_OBJ_NAME_LEN]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// What devns needs to know of a program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgInfo {
    pub prog_type: u32,
    pub id: u32,
    pub name: String,
    /// The maps it uses (the first `MAX_MAPS`).
    pub map_ids: Vec<u32>,
}

/// What devns needs to know of a map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapInfo {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub name: String,
}

const MAX_MAPS: usize = 8;

/// Type, id, name and maps of the program `prog`.
pub fn prog_info(prog: impl AsFd) -> Result<ProgInfo, BpfError> {
    let mut maps = [0u32; MAX_MAPS];
    let mut info = ProgInfoRaw { nr_map_ids: MAX_MAPS as u32, map_ids: maps.as_mut_ptr() as u64, ..Default::default() };
    let mut a = InfoAttr {
        bpf_fd: raw(&prog),
        info_len: size_of::<ProgInfoRaw>() as u32,
        info: &mut info as *mut ProgInfoRaw as u64,
    };
    // SAFETY: the kernel writes at most info_len bytes at `info`, and at
    // most nr_map_ids u32s at `map_ids`; both live on this frame through
    // the call. (It reads the bytes of `info` beyond what it fills: zeros.)
    unsafe { sys_bpf(BPF_OBJ_GET_INFO_BY_FD, "BPF_OBJ_GET_INFO_BY_FD", &mut a) }?;
    let n = (info.nr_map_ids as usize).min(MAX_MAPS);
    Ok(ProgInfo { prog_type: info.prog_type, id: info.id, name: name_of(&info.name), map_ids: maps[..n].to_vec() })
}

/// Type, id, sizes and name of the map `map`.
pub fn map_info(map: impl AsFd) -> Result<MapInfo, BpfError> {
    let mut info = MapInfoRaw::default();
    let mut a = InfoAttr {
        bpf_fd: raw(&map),
        info_len: size_of::<MapInfoRaw>() as u32,
        info: &mut info as *mut MapInfoRaw as u64,
    };
    // SAFETY: the kernel writes at most info_len bytes at `info`, which
    // lives on this frame through the call.
    unsafe { sys_bpf(BPF_OBJ_GET_INFO_BY_FD, "BPF_OBJ_GET_INFO_BY_FD", &mut a) }?;
    Ok(MapInfo {
        map_type: info.map_type,
        id: info.id,
        key_size: info.key_size,
        value_size: info.value_size,
        max_entries: info.max_entries,
        name: name_of(&info.name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn attrs_match_the_kernel_uapi() {
        // linux/bpf.h, union bpf_attr and the info structs, x86_64.
        assert_eq!(offset_of!(MapCreateAttr, map_flags), 16);
        assert_eq!(offset_of!(MapCreateAttr, map_name), 28);
        assert_eq!(size_of::<MapCreateAttr>(), 44);
        assert_eq!(offset_of!(ElemAttr, key), 8);
        assert_eq!(offset_of!(ElemAttr, value), 16);
        assert_eq!(offset_of!(ElemAttr, flags), 24);
        assert_eq!(size_of::<ElemAttr>(), 32);
        assert_eq!(offset_of!(ProgLoadAttr, insns), 8);
        assert_eq!(offset_of!(ProgLoadAttr, license), 16);
        assert_eq!(offset_of!(ProgLoadAttr, log_level), 24);
        assert_eq!(offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(offset_of!(ProgLoadAttr, kern_version), 40);
        assert_eq!(offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(size_of::<ProgLoadAttr>(), 72);
        assert_eq!(size_of::<AttachAttr>(), 20);
        assert_eq!(offset_of!(QueryAttr, prog_ids), 16);
        assert_eq!(offset_of!(QueryAttr, prog_cnt), 24);
        assert_eq!(size_of::<QueryAttr>(), 32);
        assert_eq!(size_of::<GetIdAttr>(), 12);
        assert_eq!(offset_of!(InfoAttr, info), 8);
        assert_eq!(size_of::<InfoAttr>(), 16);
        assert_eq!(offset_of!(ProgInfoRaw, load_time), 40);
        assert_eq!(offset_of!(ProgInfoRaw, nr_map_ids), 52);
        assert_eq!(offset_of!(ProgInfoRaw, map_ids), 56);
        assert_eq!(offset_of!(ProgInfoRaw, name), 64);
        assert_eq!(offset_of!(MapInfoRaw, max_entries), 16);
        assert_eq!(offset_of!(MapInfoRaw, name), 24);
    }

    #[test]
    fn names_are_cut_to_fit_with_their_nul() {
        assert_eq!(&name_bytes("devns")[..6], b"devns\0");
        let long = name_bytes("a-name-longer-than-sixteen");
        assert_eq!((long[14], long[15]), (b't', 0));
        assert_eq!(name_of(&long), "a-name-longer-t");
    }

    #[test]
    fn a_load_of_no_instructions_is_refused_before_the_kernel() {
        let e = prog_load(BPF_PROG_TYPE_CGROUP_DEVICE, &[0; 7], "GPL", "x").unwrap_err();
        assert!(matches!(e, BpfError::Arg { .. }), "{e}");
    }
}
