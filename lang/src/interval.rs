//! Sets of `u128` values as sorted, disjoint, non-adjacent inclusive intervals.
//!
//! Every field comparison of a policy is lowered to "the field's value lies in this set"
//! (`tcp.dport in {80, 443, 8000..8100}`, `ip.src != 10.0.0.1`, `vlan.id < 10`): one
//! representation that the checker uses to prove shadowing and that the compiler turns into
//! range checks. The invariant (sorted, disjoint, merged) is kept by every constructor.

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct IntervalSet {
    ranges: Vec<(u128, u128)>,
}

impl IntervalSet {
    pub fn empty() -> IntervalSet {
        IntervalSet { ranges: Vec::new() }
    }

    pub fn single(v: u128) -> IntervalSet {
        IntervalSet {
            ranges: vec![(v, v)],
        }
    }

    /// `lo..=hi`; empty when `lo > hi`.
    pub fn range(lo: u128, hi: u128) -> IntervalSet {
        if lo > hi {
            return IntervalSet::empty();
        }
        IntervalSet {
            ranges: vec![(lo, hi)],
        }
    }

    /// Every value of a type whose largest value is `max`.
    pub fn full(max: u128) -> IntervalSet {
        IntervalSet::range(0, max)
    }

    /// Builds from any intervals (unsorted, overlapping, `lo > hi` ones ignored).
    pub fn from_ranges(mut ranges: Vec<(u128, u128)>) -> IntervalSet {
        ranges.retain(|(lo, hi)| lo <= hi);
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        IntervalSet { ranges: merged }
    }

    pub fn ranges(&self) -> &[(u128, u128)] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, v: u128) -> bool {
        match self.ranges.binary_search_by(|&(lo, _)| lo.cmp(&v)) {
            Ok(_) => true,
            Err(0) => false,
            Err(i) => self.ranges[i - 1].1 >= v,
        }
    }

    pub fn union(&self, other: &IntervalSet) -> IntervalSet {
        let mut all = self.ranges.clone();
        all.extend_from_slice(&other.ranges);
        IntervalSet::from_ranges(all)
    }

    pub fn intersect(&self, other: &IntervalSet) -> IntervalSet {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a_lo, a_hi) = self.ranges[i];
            let (b_lo, b_hi) = other.ranges[j];
            let lo = a_lo.max(b_lo);
            let hi = a_hi.min(b_hi);
            if lo <= hi {
                out.push((lo, hi));
            }
            if a_hi < b_hi {
                i += 1;
            } else {
                j += 1;
            }
        }
        IntervalSet { ranges: out }
    }

    /// The values in `0..=max` not in this set.
    pub fn complement(&self, max: u128) -> IntervalSet {
        let mut out = Vec::new();
        let mut next = 0u128;
        let mut done = false;
        for &(lo, hi) in &self.ranges {
            if lo > max {
                break;
            }
            if lo > next {
                out.push((next, lo - 1));
            }
            if hi >= max {
                done = true;
                break;
            }
            next = hi + 1;
        }
        if !done {
            out.push((next, max));
        }
        IntervalSet { ranges: out }
    }

    /// Whether every value of `self` is in `other`.
    pub fn is_subset(&self, other: &IntervalSet) -> bool {
        let mut j = 0;
        for &(lo, hi) in &self.ranges {
            while j < other.ranges.len() && other.ranges[j].1 < lo {
                j += 1;
            }
            match other.ranges.get(j) {
                Some(&(olo, ohi)) if olo <= lo && hi <= ohi => {}
                _ => return false,
            }
        }
        true
    }

    /// The smallest and largest value, if any.
    pub fn hull(&self) -> Option<(u128, u128)> {
        Some((self.ranges.first()?.0, self.ranges.last()?.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small_set() -> impl Strategy<Value = IntervalSet> {
        prop::collection::vec((0u128..64, 0u128..8), 0..5).prop_map(|v| {
            IntervalSet::from_ranges(v.into_iter().map(|(lo, w)| (lo, lo + w)).collect())
        })
    }

    #[test]
    fn ranges_merge_when_adjacent_or_overlapping() {
        let s = IntervalSet::from_ranges(vec![(5, 9), (1, 3), (4, 4), (20, 30), (25, 40)]);
        assert_eq!(s.ranges(), &[(1, 9), (20, 40)]);
    }

    #[test]
    fn complement_covers_the_rest_of_the_domain() {
        let s = IntervalSet::from_ranges(vec![(0, 0), (10, 20)]);
        assert_eq!(s.complement(100).ranges(), &[(1, 9), (21, 100)]);
        assert_eq!(
            IntervalSet::full(u128::MAX).complement(u128::MAX),
            IntervalSet::empty()
        );
        assert_eq!(IntervalSet::empty().complement(7).ranges(), &[(0, 7)]);
    }

    proptest! {
        #[test]
        fn operations_agree_with_membership(a in small_set(), b in small_set(), v in 0u128..80) {
            prop_assert_eq!(a.union(&b).contains(v), a.contains(v) || b.contains(v));
            prop_assert_eq!(a.intersect(&b).contains(v), a.contains(v) && b.contains(v));
            prop_assert_eq!(a.complement(79).contains(v), !a.contains(v) && v <= 79);
            if a.is_subset(&b) && a.contains(v) {
                prop_assert!(b.contains(v));
            }
            prop_assert_eq!(a.intersect(&b).is_subset(&a), true);
        }
    }
}
