//! Subordinate id ranges (`/etc/subuid`, `/etc/subgid`) and the allocation of
//! one 65,536-id block per concurrent namespace.

/// The size of each namespace's id block.
pub const BLOCK: u32 = 65_536;
/// Where blocks start when `/etc/subuid` has no entry for root.
pub const DEFAULT_START: u32 = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: u32,
    pub count: u32,
}

/// The ranges that `/etc/subuid`-format `text` gives to root (by name `root`
/// or by uid `0`). Lines that are not well formed are ignored, as shadow's
/// own tools do.
pub fn root_ranges(text: &str) -> Vec<Range> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            if f.next().is_some() || (who != "root" && who != "0") {
                return None;
            }
            let (start, count) = (start.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
            start.checked_add(count)?;
            Some(Range { start, count })
        })
        .collect()
}

/// The first block of `BLOCK` ids inside `ranges` (or from `DEFAULT_START`
/// upward when there are none) that overlaps no block starting at a base in
/// `used`.
pub fn allocate(ranges: &[Range], used: &[u32]) -> Option<u32> {
    let default = [Range { start: DEFAULT_START, count: u32::MAX - DEFAULT_START }];
    let ranges = if ranges.is_empty() { &default[..] } else { ranges };
    // The highest-starting used block that overlaps a block at `base`.
    let in_the_way = |base: u32| {
        used.iter().copied().filter(|&u| base < u.saturating_add(BLOCK) && u < base.saturating_add(BLOCK)).max()
    };
    for r in ranges {
        let end = r.start as u64 + r.count as u64;
        let mut base = r.start;
        while base as u64 + BLOCK as u64 <= end {
            match in_the_way(base) {
                // Jump past the block in the way rather than stepping by one.
                Some(u) => match u.checked_add(BLOCK) {
                    Some(next) => base = next,
                    None => break,
                },
                None => return Some(base),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_root_entries_only() {
        let text = "alice:100000:65536\nroot:200000:131072\n0:500000:65536\nroot:bad:1\nroot:1:2:3\n";
        assert_eq!(
            root_ranges(text),
            vec![Range { start: 200_000, count: 131_072 }, Range { start: 500_000, count: 65_536 }]
        );
    }

    #[test]
    fn allocates_distinct_blocks() {
        let r = [Range { start: 200_000, count: 131_072 }];
        assert_eq!(allocate(&r, &[]), Some(200_000));
        assert_eq!(allocate(&r, &[200_000]), Some(265_536));
        assert_eq!(allocate(&r, &[200_000, 265_536]), None);
        assert_eq!(allocate(&[], &[]), Some(100_000));
        assert_eq!(allocate(&[], &[100_000, 165_536]), Some(231_072));
        // A foreign block not aligned to ours is skipped past.
        assert_eq!(allocate(&[], &[150_000]), Some(215_536));
    }

    proptest! {
        #[test]
        fn allocated_block_never_overlaps(used in proptest::collection::vec(100_000u32..2_000_000, 0..30)) {
            let base = allocate(&[], &used).unwrap();
            prop_assert!(base >= DEFAULT_START);
            for u in used {
                prop_assert!(base >= u + BLOCK || u >= base + BLOCK);
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,100}") {
            let _ = root_ranges(&s);
        }
    }
}
