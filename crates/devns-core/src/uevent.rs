//! `KEY=VALUE` records as the kernel writes them: sysfs `uevent` files, and
//! (later) netlink uevent messages. Untrusted size, so bounded.

use crate::device::{DevId, DevType, Device, Kind, parse_num};
use crate::spec::is_safe_dev_name;
use std::collections::BTreeMap;

/// The kernel's own limit on a uevent's environment (`UEVENT_BUFFER_SIZE`).
pub const MAX_UEVENT_BYTES: usize = 2048;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UeventError {
    #[error("uevent larger than {MAX_UEVENT_BYTES} bytes")]
    TooLarge,
    #[error("uevent has no valid {0}")]
    Missing(&'static str),
    #[error("uevent has an unsafe DEVNAME {0:?}")]
    BadName(String),
    #[error("uevent has an invalid DEVMODE {0:?}")]
    BadMode(String),
}

/// The fields of one record. Lines without `=` are ignored.
pub fn parse_fields(text: &str) -> Result<BTreeMap<&str, &str>, UeventError> {
    if text.len() > MAX_UEVENT_BYTES {
        return Err(UeventError::TooLarge);
    }
    Ok(text.split(['\n', '\0']).filter_map(|l| l.split_once('=')).collect())
}

/// What a sysfs device directory says about a device: its `uevent` text, the
/// basename of its `subsystem` link, and, for a partition, its disk's id.
/// `Ok(None)` for a device without a node (no `DEVNAME`).
pub fn device_from_sysfs(
    kind: Kind,
    uevent: &str,
    subsystem: &str,
    parent: Option<DevId>,
) -> Result<Option<Device>, UeventError> {
    let f = parse_fields(uevent)?;
    let Some(name) = f.get("DEVNAME") else { return Ok(None) };
    if !is_safe_dev_name(name) {
        return Err(UeventError::BadName((*name).to_owned()));
    }
    let major = parse_num(f.get("MAJOR").copied()).ok_or(UeventError::Missing("MAJOR"))?;
    let minor = parse_num(f.get("MINOR").copied()).ok_or(UeventError::Missing("MINOR"))?;
    let mode = match f.get("DEVMODE") {
        Some(m) => u32::from_str_radix(m, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| UeventError::BadMode((*m).to_owned()))?,
        None => 0o600,
    };
    let devtype = match f.get("DEVTYPE").copied() {
        Some("disk") => Some(DevType::Disk),
        Some("partition") => Some(DevType::Partition),
        _ => None,
    };
    Ok(Some(Device {
        id: DevId::new(kind, major, minor),
        name: (*name).to_owned(),
        subsystem: subsystem.to_owned(),
        devtype,
        parent: if devtype == Some(DevType::Partition) { parent } else { None },
        mode,
        uid: 0,
        gid: 0,
        diskseq: diskseq(&f)?,
        ino: None,
    }))
}

/// `DISKSEQ`, when the fields have one; a malformed one is an error.
fn diskseq(f: &BTreeMap<&str, &str>) -> Result<Option<u64>, UeventError> {
    match f.get("DISKSEQ") {
        None => Ok(None),
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            v.parse().map(Some).map_err(|_| UeventError::Missing("DISKSEQ"))
        }
        Some(_) => Err(UeventError::Missing("DISKSEQ")),
    }
}

/// What happened to a device, per a kernel uevent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Add,
    Remove,
    Change,
    /// move, bind, unbind, online, offline: nothing for devns to do.
    Other,
}

/// A kernel uevent as it arrives on `NETLINK_KOBJECT_UEVENT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uevent {
    pub action: Action,
    /// Below `/sys`, starting with `/devices/`.
    pub devpath: String,
    pub subsystem: String,
    /// The device, when the event names one (`MAJOR`/`MINOR`).
    pub dev: Option<DevId>,
    pub devname: Option<String>,
    /// A block device's `DISKSEQ` at the time of the event.
    pub diskseq: Option<u64>,
    pub raw: String,
}

/// Parses one kernel uevent datagram: `ACTION@DEVPATH\0KEY=VALUE\0...`.
/// udev's own re-broadcasts (`libudev` magic) and anything malformed are
/// refused: the daemon reads only the kernel's.
pub fn parse_netlink(buf: &[u8]) -> Result<Uevent, UeventError> {
    if buf.len() > MAX_UEVENT_BYTES + 512 {
        return Err(UeventError::TooLarge);
    }
    let text = std::str::from_utf8(buf).map_err(|_| UeventError::Missing("UTF-8 text"))?;
    let (header, rest) = text.split_once('\0').ok_or(UeventError::Missing("header"))?;
    if !header.contains('@') {
        return Err(UeventError::Missing("ACTION@DEVPATH header"));
    }
    let f = parse_fields(rest).map_err(|_| UeventError::TooLarge)?;
    let action = match f.get("ACTION").copied() {
        Some("add") => Action::Add,
        Some("remove") => Action::Remove,
        Some("change") => Action::Change,
        Some(_) => Action::Other,
        None => return Err(UeventError::Missing("ACTION")),
    };
    let devpath = f.get("DEVPATH").copied().ok_or(UeventError::Missing("DEVPATH"))?;
    if !devpath.starts_with("/devices/") || devpath.split('/').any(|c| c == ".." || c == ".") {
        return Err(UeventError::Missing("safe DEVPATH"));
    }
    let subsystem = f.get("SUBSYSTEM").copied().unwrap_or_default().to_owned();
    let kind = if subsystem == "block" { Kind::Block } else { Kind::Char };
    let dev = match (parse_num(f.get("MAJOR").copied()), parse_num(f.get("MINOR").copied())) {
        (Some(major), Some(minor)) => Some(DevId::new(kind, major, minor)),
        _ => None,
    };
    let devname = match f.get("DEVNAME") {
        Some(n) if is_safe_dev_name(n) => Some((*n).to_owned()),
        Some(n) => return Err(UeventError::BadName((*n).to_owned())),
        None => None,
    };
    let diskseq = diskseq(&f)?;
    Ok(Uevent { action, devpath: devpath.to_owned(), subsystem, dev, devname, diskseq, raw: rest.to_owned() })
}

/// A uevent datagram as the kernel writes one, for announcing a device to
/// its new owner (`add`) or old owner (`remove`) when ownership changes:
/// `ACTION@DEVPATH`, then `ACTION`, `DEVPATH`, `SUBSYSTEM`, the device's own
/// sysfs `uevent` lines, and `SEQNUM`.
pub fn format(action: &str, devpath: &str, subsystem: &str, uevent_text: &str, seqnum: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut push = |s: &str| {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    };
    push(&format!("{action}@{devpath}"));
    push(&format!("ACTION={action}"));
    push(&format!("DEVPATH={devpath}"));
    push(&format!("SUBSYSTEM={subsystem}"));
    for l in uevent_text.lines().filter(|l| l.contains('=')) {
        push(l);
    }
    push(&format!("SEQNUM={seqnum}"));
    out
}

/// The request that has the kernel broadcast `event` (a kernel-format
/// uevent) in the network namespace of the sending socket, as its own:
/// sender port 0, a fresh `SEQNUM` (so the event's own is dropped). A
/// netlink header (type >= `NLMSG_MIN_TYPE`, `NLM_F_REQUEST`) and the event.
pub fn kernel_send_request(event: &[u8]) -> Vec<u8> {
    let mut body: Vec<u8> = Vec::with_capacity(event.len());
    for field in event.split(|b| *b == 0).filter(|f| !f.is_empty() && !f.starts_with(b"SEQNUM=")) {
        body.extend_from_slice(field);
        body.push(0);
    }
    let len = 16 + body.len() as u32;
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&16u16.to_ne_bytes()); // nlmsg_type: NLMSG_MIN_TYPE
    out.extend_from_slice(&1u16.to_ne_bytes()); // nlmsg_flags: NLM_F_REQUEST
    out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq
    out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
    out.extend_from_slice(&body);
    out
}

/// libudev's monitor header magic (`UDEV_MONITOR_MAGIC`).
const UDEV_MAGIC: u32 = 0xfeed_cafe;
/// The size of libudev's monitor header (`struct monitor_netlink_header`).
const UDEV_HEADER: usize = 40;
/// The netlink multicast group udev sends on (`MONITOR_GROUP_UDEV`), as a
/// group mask.
pub const UDEV_GROUP: u32 = 2;

/// `event` (a kernel-format uevent) as udev re-broadcasts it on the "udev"
/// group, for libudev monitors in a container that runs no udevd: the
/// `libudev` header (magic, the offsets, the subsystem and devtype hashes
/// and tag bloom its socket filter matches) then `KEY=VALUE\0`
/// properties. `None` for an event libudev would drop (no ACTION,
/// DEVPATH, SUBSYSTEM or SEQNUM).
pub fn udev_message(event: &[u8]) -> Option<Vec<u8>> {
    let fields: Vec<&[u8]> = event.split(|b| *b == 0).skip(1).filter(|f| f.contains(&b'=')).collect();
    let value = |key: &[u8]| fields.iter().find_map(|f| f.strip_prefix(key).and_then(|r| r.strip_prefix(b"=")));
    for required in [&b"ACTION"[..], b"DEVPATH", b"SUBSYSTEM"] {
        value(required).filter(|v| !v.is_empty())?;
    }
    value(b"SEQNUM").filter(|v| !v.is_empty() && v.iter().all(u8::is_ascii_digit) && v.iter().any(|&d| d != b'0'))?;
    let mut props = Vec::with_capacity(event.len());
    for f in &fields {
        props.extend_from_slice(f);
        props.push(0);
    }
    let subsystem = value(b"SUBSYSTEM").map_or(0, |v| murmur2(v, 0));
    let devtype = value(b"DEVTYPE").map_or(0, |v| murmur2(v, 0));
    let bloom = value(b"TAGS")
        .map_or(0, |tags| tags.split(|b| *b == b':').filter(|t| !t.is_empty()).fold(0u64, |acc, t| acc | tag_bloom(t)));
    let mut out = Vec::with_capacity(UDEV_HEADER + props.len());
    out.extend_from_slice(b"libudev\0");
    out.extend_from_slice(&UDEV_MAGIC.to_be_bytes());
    out.extend_from_slice(&(UDEV_HEADER as u32).to_ne_bytes());
    out.extend_from_slice(&(UDEV_HEADER as u32).to_ne_bytes());
    out.extend_from_slice(&(props.len() as u32).to_ne_bytes());
    out.extend_from_slice(&subsystem.to_be_bytes());
    out.extend_from_slice(&devtype.to_be_bytes());
    out.extend_from_slice(&((bloom >> 32) as u32).to_be_bytes());
    out.extend_from_slice(&(bloom as u32).to_be_bytes());
    out.extend_from_slice(&props);
    Some(out)
}

/// The four bits of a tag in libudev's 64-bit tag bloom filter.
fn tag_bloom(tag: &[u8]) -> u64 {
    let h = murmur2(tag, 0);
    [0, 6, 12, 18].iter().fold(0, |acc, shift| acc | 1u64 << ((h >> shift) & 63))
}

/// MurmurHash2 (32-bit, Austin Appleby's), the hash libudev filters by
/// (`string_hash32`). By hand: a dozen lines, and the crates that have it
/// are unmaintained or pull in a family of hashes.
pub fn murmur2(data: &[u8], seed: u32) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h = seed ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_a_partition() {
        let text = "MAJOR=259\nMINOR=0\nDEVNAME=loop0p1\nDEVTYPE=partition\nDISKSEQ=9\nPARTN=1\n";
        let d = device_from_sysfs(Kind::Block, text, "block", Some(DevId::new(Kind::Block, 7, 0))).unwrap().unwrap();
        assert_eq!(d.id, DevId::new(Kind::Block, 259, 0));
        assert_eq!(d.name, "loop0p1");
        assert!(d.is_partition());
        assert_eq!(d.parent, Some(DevId::new(Kind::Block, 7, 0)));
        assert_eq!(d.mode, 0o600);
        assert_eq!(d.diskseq, Some(9));
    }

    #[test]
    fn reads_devmode_and_skips_nodeless() {
        let d = device_from_sysfs(Kind::Char, "MAJOR=1\nMINOR=3\nDEVNAME=null\nDEVMODE=0666\n", "mem", None)
            .unwrap()
            .unwrap();
        assert_eq!((d.mode, d.subsystem.as_str()), (0o666, "mem"));
        assert_eq!(device_from_sysfs(Kind::Char, "MAJOR=4\nMINOR=64\n", "tty", None), Ok(None));
    }

    #[test]
    fn rejects_bad_records() {
        let bad = device_from_sysfs(Kind::Char, "MAJOR=1\nMINOR=3\nDEVNAME=../../etc/x\n", "", None);
        assert_eq!(bad, Err(UeventError::BadName("../../etc/x".into())));
        assert_eq!(device_from_sysfs(Kind::Char, "MINOR=3\nDEVNAME=x\n", "", None), Err(UeventError::Missing("MAJOR")));
        assert!(matches!(
            device_from_sysfs(Kind::Char, "MAJOR=1\nMINOR=3\nDEVNAME=x\nDEVMODE=999\n", "", None),
            Err(UeventError::BadMode(_))
        ));
        assert_eq!(parse_fields(&"A=b\n".repeat(1000)), Err(UeventError::TooLarge));
        for seq in ["", "-1", "x", "1 ", "99999999999999999999999"] {
            let text = format!("MAJOR=7\nMINOR=3\nDEVNAME=loop3\nDISKSEQ={seq}\n");
            assert_eq!(
                device_from_sysfs(Kind::Block, &text, "", None),
                Err(UeventError::Missing("DISKSEQ")),
                "{seq:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = device_from_sysfs(Kind::Block, &s, "block", None);
        }
    }

    #[test]
    fn parses_kernel_netlink_events() {
        let msg = b"add@/devices/virtual/block/loop8\0ACTION=add\0DEVPATH=/devices/virtual/block/loop8\0SUBSYSTEM=block\0MAJOR=7\0MINOR=8\0DEVNAME=loop8\0DEVTYPE=disk\0SEQNUM=4242\0";
        let ev = parse_netlink(msg).unwrap();
        assert_eq!(ev.action, Action::Add);
        assert_eq!(ev.dev, Some(DevId::new(Kind::Block, 7, 8)));
        assert_eq!(ev.devname.as_deref(), Some("loop8"));
        assert_eq!(ev.devpath, "/devices/virtual/block/loop8");
        assert_eq!(ev.diskseq, None);
        let zram = b"remove@/devices/virtual/block/zram1\0ACTION=remove\0DEVPATH=/devices/virtual/block/zram1\0SUBSYSTEM=block\0MAJOR=253\0MINOR=1\0DEVNAME=zram1\0DISKSEQ=31\0";
        let ev = parse_netlink(zram).unwrap();
        assert_eq!((ev.action, ev.diskseq), (Action::Remove, Some(31)));
        let bad =
            b"remove@/devices/virtual/block/zram1\0ACTION=remove\0DEVPATH=/devices/virtual/block/zram1\0DISKSEQ=3x\0";
        assert_eq!(parse_netlink(bad), Err(UeventError::Missing("DISKSEQ")));
    }

    #[test]
    fn refuses_udev_and_malformed_events() {
        assert!(parse_netlink(b"libudev\0\xfe\xed\xca\xfe").is_err());
        assert!(parse_netlink(b"add@/x\0ACTION=add\0DEVPATH=/devices/../../etc\0").is_err());
        assert!(parse_netlink(b"add@/x\0DEVPATH=/devices/a\0").is_err());
        assert!(parse_netlink(b"add@/devices/a\0ACTION=add\0DEVPATH=/devices/a\0DEVNAME=../x\0").is_err());
        assert!(parse_netlink(&[b'a'; 5000]).is_err());
    }

    proptest! {
        #[test]
        fn netlink_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_netlink(&b);
        }
    }

    #[test]
    fn formatted_events_parse_back() {
        let text = "MAJOR=7\nMINOR=3\nDEVNAME=loop3\nDEVTYPE=disk\nDISKSEQ=12\n";
        let msg = format("add", "/devices/virtual/block/loop3", "block", text, 77);
        let ev = parse_netlink(&msg).unwrap();
        assert_eq!(ev.action, Action::Add);
        assert_eq!(ev.dev, Some(DevId::new(Kind::Block, 7, 3)));
        assert_eq!(ev.devname.as_deref(), Some("loop3"));
        assert!(msg.ends_with(b"SEQNUM=77\0"));
        assert!(msg.starts_with(b"add@/devices/virtual/block/loop3\0ACTION=add\0"));
    }

    #[test]
    fn kernel_send_request_drops_seqnum_and_has_a_header() {
        let ev = format("add", "/devices/virtual/block/loop3", "block", "MAJOR=7\nMINOR=3\n", 9);
        let req = kernel_send_request(&ev);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize, req.len());
        assert_eq!(u16::from_ne_bytes(req[4..6].try_into().unwrap()), 16);
        let body = &req[16..];
        assert!(body.starts_with(b"add@/devices/virtual/block/loop3\0ACTION=add\0"));
        assert!(!body.windows(7).any(|w| w == b"SEQNUM="));
        assert!(body.ends_with(b"MINOR=3\0"));
    }

    #[test]
    fn a_udev_message_is_libudev_s_header_then_the_kernel_s_properties() {
        let ev = format(
            "add",
            "/devices/virtual/block/loop3",
            "block",
            "MAJOR=7\nMINOR=3\nDEVNAME=loop3\nDEVTYPE=disk\n",
            42,
        );
        let m = udev_message(&ev).unwrap();
        assert_eq!(&m[..8], b"libudev\0");
        assert_eq!(&m[8..12], &0xfeed_cafe_u32.to_be_bytes());
        let ne = |i: usize| u32::from_ne_bytes(m[i..i + 4].try_into().unwrap());
        let be = |i: usize| u32::from_be_bytes(m[i..i + 4].try_into().unwrap());
        assert_eq!((ne(12), ne(16), ne(20) as usize), (40, 40, m.len() - 40));
        assert_eq!((be(24), be(28), be(32), be(36)), (murmur2(b"block", 0), murmur2(b"disk", 0), 0, 0));
        // The properties, without the kernel's ACTION@DEVPATH line.
        let props: Vec<&[u8]> = m[40..].split(|b| *b == 0).filter(|p| !p.is_empty()).collect();
        assert_eq!(props[0], b"ACTION=add");
        assert!(props.contains(&&b"SEQNUM=42"[..]) && props.contains(&&b"DEVNAME=loop3"[..]), "{props:?}");
        assert!(!props.iter().any(|p| p.contains(&b'@')));
        assert_eq!(*m.last().unwrap(), 0);
    }

    #[test]
    fn tags_set_four_bits_each_and_incomplete_events_make_no_message() {
        let with_tags =
            b"add@/devices/x\0ACTION=add\0DEVPATH=/devices/x\0SUBSYSTEM=input\0SEQNUM=7\0TAGS=:seat:uaccess:\0";
        let m = udev_message(with_tags).unwrap();
        let bloom = u64::from(u32::from_be_bytes(m[32..36].try_into().unwrap())) << 32
            | u64::from(u32::from_be_bytes(m[36..40].try_into().unwrap()));
        assert_eq!(bloom, tag_bloom(b"seat") | tag_bloom(b"uaccess"));
        assert!((1..=4).contains(&tag_bloom(b"seat").count_ones()));
        for bad in [
            &b"add@/devices/x\0DEVPATH=/devices/x\0SUBSYSTEM=block\0SEQNUM=1\0"[..],
            b"add@/devices/x\0ACTION=add\0SUBSYSTEM=block\0SEQNUM=1\0",
            b"add@/devices/x\0ACTION=add\0DEVPATH=/devices/x\0SEQNUM=1\0",
            b"add@/devices/x\0ACTION=add\0DEVPATH=/devices/x\0SUBSYSTEM=block\0",
            b"add@/devices/x\0ACTION=add\0DEVPATH=/devices/x\0SUBSYSTEM=block\0SEQNUM=0\0",
            b"",
        ] {
            assert_eq!(udev_message(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hashes_and_bloom_are_libudev_s() {
        // The constants Debian's libudev 252 puts in a monitor's socket
        // filter for these matches (read back with SO_GET_FILTER).
        assert_eq!(murmur2(b"a", 0), 0x9268_5f5e);
        assert_eq!(murmur2(b"abcd", 0), 0x2687_3021);
        assert_eq!(murmur2(b"block", 0), 0xf003_1db7);
        assert_eq!(murmur2(b"disk", 0), 0x7bcb_c5ee);
        assert_eq!(tag_bloom(b"seat"), 0x0208_0000_0040_0001);
    }
}
