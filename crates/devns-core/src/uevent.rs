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
}
