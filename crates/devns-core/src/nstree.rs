//! The tree of user namespaces as one pass over `/proc` saw it, and the one
//! question liveness asks of it: is a process's namespace the recorded one
//! or nested in it? A process that moved into a nested user namespace
//! keeps everything the outer one gave it (its view, its files, its ids),
//! so it keeps the outer namespace alive as far as devns is concerned.

use crate::registry::NsId;
use std::collections::HashMap;

/// Deepest chain the kernel allows: 32 nested user namespaces below the
/// initial one. A longer walk is a broken map, never a real chain.
pub const MAX_DEPTH: usize = 33;

/// Each namespace seen, with its parent (`None`: the initial one, or a
/// parent the scan could not see).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NsTree {
    parent: HashMap<NsId, Option<NsId>>,
}

impl NsTree {
    pub fn insert(&mut self, ns: NsId, parent: Option<NsId>) {
        self.parent.insert(ns, parent);
    }

    /// Whether `ns` is `root` or a descendant of it. A chain that ends in
    /// an unknown parent, loops, or is deeper than the kernel allows says
    /// no.
    pub fn within(&self, ns: NsId, root: NsId) -> bool {
        let mut cur = ns;
        for _ in 0..=MAX_DEPTH {
            if cur == root {
                return true;
            }
            match self.parent.get(&cur) {
                Some(Some(p)) => cur = *p,
                _ => return false,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(edges: &[(u64, Option<u64>)]) -> NsTree {
        let mut t = NsTree::default();
        for (n, p) in edges {
            t.insert(NsId(*n), p.map(NsId));
        }
        t
    }

    #[test]
    fn a_namespace_is_within_itself_and_its_ancestors_only() {
        // 1 is the initial namespace; 2 and 5 are containers; 3 is nested
        // in 2, 4 in 3.
        let t = tree(&[(1, None), (2, Some(1)), (3, Some(2)), (4, Some(3)), (5, Some(1))]);
        for (ns, root, want) in [
            (2, 2, true),
            (3, 2, true),
            (4, 2, true),
            (4, 3, true),
            (2, 3, false),
            (5, 2, false),
            (2, 5, false),
            (1, 2, false),
            (4, 1, true),
        ] {
            assert_eq!(t.within(NsId(ns), NsId(root)), want, "{ns} within {root}");
        }
    }

    #[test]
    fn unknown_parents_loops_and_overlong_chains_say_no() {
        let t = tree(&[(3, Some(9)), (7, Some(8)), (8, Some(7))]);
        assert!(!t.within(NsId(3), NsId(2)), "unknown parent");
        assert!(t.within(NsId(3), NsId(9)), "the parent itself need not be known");
        assert!(!t.within(NsId(7), NsId(1)), "a loop ends");
        assert!(!t.within(NsId(42), NsId(1)), "unknown namespace");
        let chain: Vec<(u64, Option<u64>)> = (1..=40).map(|n| (n + 1, Some(n))).collect();
        let t = tree(&chain);
        assert!(t.within(NsId(30), NsId(1)));
        assert!(!t.within(NsId(41), NsId(1)), "deeper than the kernel allows");
    }
}
