//! A device as devns sees it: `(kind, major, minor)` plus what sysfs says of it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Character or block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "c")]
    Char,
    #[serde(rename = "b")]
    Block,
}

impl Kind {
    pub fn letter(self) -> char {
        match self {
            Kind::Char => 'c',
            Kind::Block => 'b',
        }
    }
}

/// The kernel's identity of a device. Printed and parsed as `c:1:3` / `b:7:0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevId {
    pub kind: Kind,
    pub major: u32,
    pub minor: u32,
}

impl DevId {
    pub const fn new(kind: Kind, major: u32, minor: u32) -> Self {
        DevId { kind, major, minor }
    }
}

impl fmt::Display for DevId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind.letter(), self.major, self.minor)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid device id {0:?}: expected c:MAJOR:MINOR or b:MAJOR:MINOR")]
pub struct DevIdParseError(pub String);

impl FromStr for DevId {
    type Err = DevIdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DevIdParseError(s.to_owned());
        let mut it = s.splitn(3, ':');
        let kind = match it.next() {
            Some("c") => Kind::Char,
            Some("b") => Kind::Block,
            _ => return Err(err()),
        };
        let major = parse_num(it.next()).ok_or_else(err)?;
        let minor = parse_num(it.next()).ok_or_else(err)?;
        Ok(DevId { kind, major, minor })
    }
}

/// Parses a decimal device number without sign, spaces or leading `+`.
pub(crate) fn parse_num(s: Option<&str>) -> Option<u32> {
    let s = s?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

// DevId is a map key in the state file, so it serialises as its string form.
impl Serialize for DevId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DevId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `DEVTYPE` of a block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DevType {
    Disk,
    Partition,
}

/// Everything devns knows about one host device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: DevId,
    /// `DEVNAME`: the node's path below `/dev`, e.g. `loop0`, `net/tun`.
    pub name: String,
    /// sysfs subsystem (`mem`, `block`, `tty`, …); empty when unknown.
    pub subsystem: String,
    pub devtype: Option<DevType>,
    /// For a partition: its whole disk.
    pub parent: Option<DevId>,
    /// Permission bits of the node (`DEVMODE`, or the host node's mode).
    pub mode: u32,
    /// Owner and group of the host's node, as host ids.
    pub uid: u32,
    pub gid: u32,
    /// A block device's `DISKSEQ`: the kernel's number for what the disk
    /// holds now, never reused while the host is up (a new disk, and each
    /// new medium of a disk, such as every attach of a loop device, gets a
    /// new one). It tells a late event of a gone disk from the disk that
    /// has its numbers now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diskseq: Option<u64>,
    /// The inode of its sysfs directory: the kernfs node's id, which ends
    /// with the device (one made again with the same numbers, even at the
    /// same path, gets a new one) and, on 64-bit hosts, only grows. Attach,
    /// detach and media changes keep it, unlike `DISKSEQ`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
}

impl Device {
    pub fn is_partition(&self) -> bool {
        self.devtype == Some(DevType::Partition)
    }

    /// What a record keeps of it to know it again.
    pub fn identity(&self) -> Identity {
        Identity { ino: self.ino, diskseq: self.diskseq }
    }
}

/// What a saved record keeps of an owned device besides its numbers, so
/// that ownership ends with the device: its sysfs directory's inode and,
/// for a block device, its `DISKSEQ` (kept for the log; it cannot decide,
/// as a loop device's grows with every attach).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diskseq: Option<u64>,
}

impl Identity {
    /// Whether the device a record knew as `self` has ended, given the
    /// device that has its numbers `now`: only when both inodes are known
    /// and the present one is newer (kernfs numbers only grow). A smaller
    /// one is a reader that has not yet learnt the newer device the record
    /// describes (another keeper's record, read before its uevents): the
    /// record stands. Without an inode on either side (a record of devns
    /// before identities) nothing can be told, and the record stands, as
    /// it did before.
    pub fn ended(&self, now: &Identity) -> bool {
        matches!((self.ino, now.ino), (Some(rec), Some(now)) if now > rec)
    }
}

/// Whether a `remove` event carrying `DISKSEQ` `event` is of the disk the
/// registry knows with `known`. Sequence numbers only grow (a disk's own
/// media changes, such as a loop device's detach, give it larger ones),
/// so the known disk's removal carries at least the number it was known
/// with; a smaller one is a late event of an older disk that had the same
/// device numbers. Without numbers to compare (character devices), it is.
pub fn removes_known(known: Option<u64>, event: Option<u64>) -> bool {
    match (known, event) {
        (Some(k), Some(e)) => e >= k,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn devid_round_trip() {
        let id = DevId::new(Kind::Block, 7, 3);
        assert_eq!(id.to_string(), "b:7:3");
        assert_eq!("b:7:3".parse::<DevId>(), Ok(id));
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"b:7:3\"");
    }

    #[test]
    fn a_remove_is_of_the_known_disk_unless_it_is_older() {
        assert!(removes_known(Some(7), Some(7)));
        // Detached since it was known: a larger number, the same disk.
        assert!(removes_known(Some(7), Some(9)));
        // A late event of the disk that had these numbers before.
        assert!(!removes_known(Some(7), Some(6)));
        // Nothing to compare: the known device.
        assert!(removes_known(None, Some(8)) && removes_known(Some(7), None) && removes_known(None, None));
    }

    #[test]
    fn ownership_ends_only_with_a_newer_device() {
        let id = |ino, diskseq| Identity { ino, diskseq };
        let rec = id(Some(100), Some(7));
        // The same device, attached again since (a loop device's DISKSEQ grows).
        assert!(!rec.ended(&id(Some(100), Some(9))));
        // Made again with the same numbers: a newer kernfs node.
        assert!(rec.ended(&id(Some(250), Some(12))));
        // A reader that knows an older device than the record's: it stands.
        assert!(!rec.ended(&id(Some(40), Some(3))));
        // Nothing to compare (old records, a stat that failed): it stands.
        assert!(!id(None, None).ended(&id(Some(250), Some(12))));
        assert!(!rec.ended(&id(None, Some(12))));
    }

    #[test]
    fn devid_rejects_garbage() {
        for s in ["", "x:1:2", "c:1", "c:1:", "c:-1:2", "c:1:2:3", "c: 1:2", "c:+1:2", "c:99999999999:1"] {
            assert!(s.parse::<DevId>().is_err(), "{s}");
        }
    }

    proptest! {
        #[test]
        fn devid_parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<DevId>();
        }

        #[test]
        fn devid_display_parses_back(b in any::<bool>(), ma in any::<u32>(), mi in any::<u32>()) {
            let id = DevId::new(if b { Kind::Char } else { Kind::Block }, ma, mi);
            prop_assert_eq!(id.to_string().parse::<DevId>(), Ok(id));
        }
    }
}
