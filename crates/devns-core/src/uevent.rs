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
    }))
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
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = device_from_sysfs(Kind::Block, &s, "block", None);
        }
    }
}
