//! User namespace id maps (`/proc/PID/uid_map`, `gid_map`) and what host ids
//! look like from inside.

use std::fmt;

/// One line of an id map: `inside outside count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    extents: Vec<Extent>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdMapError {
    #[error("id map line {line}: expected three numbers \"INSIDE OUTSIDE COUNT\"")]
    Syntax { line: usize },
    #[error("id map line {line}: range overflows 32 bits")]
    Overflow { line: usize },
    #[error("id map has more than 340 lines")]
    TooLong,
}

/// The kernel's limit on id map lines (`UID_GID_MAP_MAX_EXTENTS`).
const MAX_EXTENTS: usize = 340;

impl IdMap {
    /// A map of `count` ids starting at `inside` 0 onto `outside`.
    pub fn single(outside: u32, count: u32) -> Self {
        IdMap { extents: vec![Extent { inside: 0, outside, count }] }
    }

    pub fn parse(text: &str) -> Result<Self, IdMapError> {
        let mut extents = Vec::new();
        for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let line = i + 1;
            let nums: Vec<u32> = l
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| IdMapError::Syntax { line })?;
            let [inside, outside, count] = nums[..] else { return Err(IdMapError::Syntax { line }) };
            if inside.checked_add(count).is_none() || outside.checked_add(count).is_none() {
                return Err(IdMapError::Overflow { line });
            }
            extents.push(Extent { inside, outside, count });
            if extents.len() > MAX_EXTENTS {
                return Err(IdMapError::TooLong);
            }
        }
        Ok(IdMap { extents })
    }

    /// The host id that shows as `inside` in the namespace.
    pub fn to_host(&self, inside: u32) -> Option<u32> {
        self.extents
            .iter()
            .find(|e| inside >= e.inside && inside - e.inside < e.count)
            .map(|e| e.outside + (inside - e.inside))
    }

    /// How host id `outside` shows inside the namespace.
    pub fn to_inside(&self, outside: u32) -> Option<u32> {
        self.extents
            .iter()
            .find(|e| outside >= e.outside && outside - e.outside < e.count)
            .map(|e| e.inside + (outside - e.outside))
    }

    /// A host id that is not mapped into the namespace, so shows there as the
    /// overflow id: the host's `overflow` itself when it is unmapped.
    pub fn unmapped_host_id(&self, overflow: u32) -> u32 {
        let mut cand = overflow;
        // At most 340 extents, each skip moves past one of them.
        for _ in 0..=self.extents.len() {
            match self.extents.iter().find(|e| cand >= e.outside && cand - e.outside < e.count) {
                Some(e) => cand = e.outside.wrapping_add(e.count),
                None => return cand,
            }
        }
        cand
    }

    /// Carries a host node owner into the namespace: host id N becomes the
    /// host id that the namespace sees as N (so `root:tty` stays `root:tty`),
    /// or one that shows as the overflow id when N is not mapped inside.
    pub fn carry(&self, host_id: u32, overflow: u32) -> u32 {
        self.to_host(host_id).unwrap_or_else(|| self.unmapped_host_id(overflow))
    }
}

impl fmt::Display for IdMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.extents {
            writeln!(f, "{} {} {}", e.inside, e.outside, e.count)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn single_map_carries_root_tty() {
        let m = IdMap::single(100_000, 65_536);
        assert_eq!(m.to_string(), "0 100000 65536\n");
        assert_eq!(m.carry(0, 65_534), 100_000);
        assert_eq!(m.carry(5, 65_534), 100_005);
        // Not mapped inside: a host id that shows as the overflow id.
        assert_eq!(m.carry(70_000, 65_534), 65_534);
        assert_eq!(m.to_inside(100_005), Some(5));
        assert_eq!(m.to_inside(65_534), None);
    }

    #[test]
    fn unmapped_host_id_skips_mapped_ranges() {
        let m = IdMap::parse("0 65000 1000\n1000 66000 10\n").unwrap();
        let id = m.unmapped_host_id(65_534);
        assert_eq!(id, 66_010);
        assert_eq!(m.to_inside(id), None);
    }

    #[test]
    fn parse_rejects_garbage() {
        assert_eq!(IdMap::parse("0 1"), Err(IdMapError::Syntax { line: 1 }));
        assert_eq!(IdMap::parse("0 1 2\nx y z"), Err(IdMapError::Syntax { line: 2 }));
        assert_eq!(IdMap::parse("0 4294967295 2"), Err(IdMapError::Overflow { line: 1 }));
        assert_eq!(IdMap::parse("         0          0 4294967295\n").unwrap().to_host(7), Some(7));
    }

    proptest! {
        #[test]
        fn carry_result_maps_back_or_is_unmapped(base in 1u32..4_000_000_000, n in any::<u32>()) {
            let m = IdMap::single(base, 65_536);
            let host = m.carry(n, 65_534);
            match m.to_inside(host) {
                Some(inside) => prop_assert_eq!(inside, n),
                None => prop_assert!(n >= 65_536),
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = IdMap::parse(&s);
        }
    }
}
