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

/// The well-formed entries of `/etc/subuid`-format `text`: who, and the
/// range. Lines that are not well formed are ignored, as shadow's own
/// tools do.
fn entries(text: &str) -> impl Iterator<Item = (&str, Range)> {
    text.lines().filter_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if f.next().is_some() {
            return None;
        }
        let (start, count) = (start.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
        start.checked_add(count)?;
        Some((who, Range { start, count }))
    })
}

fn is_root(who: &str) -> bool {
    who == "root" || who == "0"
}

/// The ranges that `/etc/subuid`-format `text` gives to root (by name `root`
/// or by uid `0`).
pub fn root_ranges(text: &str) -> Vec<Range> {
    entries(text).filter(|(who, _)| is_root(who)).map(|(_, r)| r).collect()
}

/// The ranges devns allocates root's namespaces' blocks from: root's own,
/// or, when `text` gives root none, the ids from `DEFAULT_START` up that no
/// other entry gives anyone (another user's range is theirs: a container
/// of theirs mapped onto it would share ids with devns's).
pub fn ranges_for_root(text: &str) -> Vec<Range> {
    let own = root_ranges(text);
    if !own.is_empty() {
        return own;
    }
    let mut others: Vec<(u64, u64)> =
        entries(text).map(|(_, r)| (u64::from(r.start), u64::from(r.start) + u64::from(r.count))).collect();
    others.sort_unstable();
    let end = u64::from(u32::MAX);
    let mut at = u64::from(DEFAULT_START);
    let mut out = Vec::new();
    let mut gap = |from: u64, to: u64| {
        if to > from {
            out.push(Range { start: from as u32, count: (to - from) as u32 });
        }
    };
    for (s, e) in others {
        if e <= at {
            continue;
        }
        gap(at, s.min(end));
        at = at.max(e);
    }
    gap(at, end);
    out
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
    fn with_no_range_of_root_s_the_fallback_leaves_every_other_user_s_ranges_out() {
        let text = "alice:100000:65536\nbob:300000:65536\nroot:bad:1\n";
        let r = ranges_for_root(text);
        assert_eq!(r[0], Range { start: 165_536, count: 134_464 });
        assert_eq!(r[1], Range { start: 365_536, count: u32::MAX - 365_536 });
        assert_eq!(allocate(&r, &[]), Some(165_536));
        assert_eq!(allocate(&r, &[165_536]), Some(231_072));
        // Past the gap before bob's: after bob's.
        assert_eq!(allocate(&r, &[165_536, 231_072]), Some(365_536));
        // Root's own ranges are root's, whatever else is there.
        assert_eq!(
            ranges_for_root("alice:100000:65536\nroot:100000:65536\n"),
            [Range { start: 100_000, count: 65_536 }]
        );
        assert_eq!(ranges_for_root(""), [Range { start: DEFAULT_START, count: u32::MAX - DEFAULT_START }]);
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
            let _ = ranges_for_root(&s);
        }

        #[test]
        fn a_fallback_block_never_overlaps_another_user_s_range(
            others in proptest::collection::vec((90_000u32..3_000_000, 1u32..200_000), 0..12),
            used in proptest::collection::vec(100_000u32..3_000_000, 0..10),
        ) {
            let text: String = others.iter().enumerate().map(|(i, (s, c))| format!("u{i}:{s}:{c}\n")).collect();
            let base = allocate(&ranges_for_root(&text), &used).unwrap();
            prop_assert!(base >= DEFAULT_START);
            for (s, c) in others {
                prop_assert!(u64::from(base) + u64::from(BLOCK) <= u64::from(s) || base >= s + c, "{base} in {s}+{c}");
            }
        }
    }
}
