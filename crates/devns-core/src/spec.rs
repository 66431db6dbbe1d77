//! What a user may type to name a device: a `/dev` path, `MAJ:MIN`,
//! `c:MAJ:MIN`/`b:MAJ:MIN`, or a `DEVNAME` such as `loop3` or `net/tun`.

use crate::device::{DevId, parse_num};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevSpec {
    /// An absolute path; the shell turns it into an `Id` by `stat`ing it.
    Path(String),
    Id(DevId),
    Number {
        major: u32,
        minor: u32,
    },
    Name(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("empty device name")]
    Empty,
    #[error("invalid device name {0:?}: expected a /dev path, MAJ:MIN, c:MAJ:MIN, b:MAJ:MIN or a name such as loop3")]
    Invalid(String),
}

impl DevSpec {
    pub fn parse(s: &str) -> Result<DevSpec, SpecError> {
        if s.is_empty() {
            return Err(SpecError::Empty);
        }
        if s.starts_with('/') {
            return Ok(DevSpec::Path(s.to_owned()));
        }
        if let Ok(id) = s.parse::<DevId>() {
            return Ok(DevSpec::Id(id));
        }
        if s.contains(':') {
            let mut it = s.split(':');
            return match (parse_num(it.next()), parse_num(it.next()), it.next()) {
                (Some(major), Some(minor), None) => Ok(DevSpec::Number { major, minor }),
                _ => Err(SpecError::Invalid(s.to_owned())),
            };
        }
        if !is_safe_dev_name(s) {
            return Err(SpecError::Invalid(s.to_owned()));
        }
        Ok(DevSpec::Name(s.to_owned()))
    }
}

impl fmt::Display for DevSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevSpec::Path(p) => f.write_str(p),
            DevSpec::Id(id) => id.fmt(f),
            DevSpec::Number { major, minor } => write!(f, "{major}:{minor}"),
            DevSpec::Name(n) => f.write_str(n),
        }
    }
}

/// A `DEVNAME` that can safely become a path below a view's root: relative,
/// no empty, `.` or `..` components, no NUL, bounded length.
pub fn is_safe_dev_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.contains('\0')
        && name.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Kind;
    use proptest::prelude::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(DevSpec::parse("/dev/loop3"), Ok(DevSpec::Path("/dev/loop3".into())));
        assert_eq!(DevSpec::parse("7:3"), Ok(DevSpec::Number { major: 7, minor: 3 }));
        assert_eq!(DevSpec::parse("b:7:3"), Ok(DevSpec::Id(DevId::new(Kind::Block, 7, 3))));
        assert_eq!(DevSpec::parse("loop3"), Ok(DevSpec::Name("loop3".into())));
        assert_eq!(DevSpec::parse("net/tun"), Ok(DevSpec::Name("net/tun".into())));
    }

    #[test]
    fn rejects_bad_forms() {
        for s in ["", "7:", ":3", "7:3:1", "x:7:3", "../etc", "a//b", "a/./b", "a\0b"] {
            assert!(DevSpec::parse(s).is_err(), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,64}") {
            let _ = DevSpec::parse(&s);
        }

        #[test]
        fn accepted_names_are_safe(s in "[a-z0-9./]{1,20}") {
            if let Ok(DevSpec::Name(n)) = DevSpec::parse(&s) {
                prop_assert!(!n.split('/').any(|c| c == ".." || c.is_empty()));
            }
        }
    }
}
