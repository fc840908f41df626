//! Bounded sets of sequence ranges: the receiver's out-of-order map and the
//! sender's SACK scoreboard.
//!
//! Ranges are half-open `[start, end)` in sequence space, sorted, disjoint
//! and not adjacent. All live ranges of a connection lie within one window
//! (well under 2^31), so sequence comparisons are meaningful.

use relay_wire::SeqNumber;

/// At most this many out-of-order ranges are held by a receiver; a segment
/// that would need one more is dropped and not SACKed.
pub const MAX_OOO_RANGES: usize = 32;

/// At most this many SACKed ranges are remembered by a sender; further
/// blocks are ignored (the sender then retransmits a little more than needed).
pub const MAX_SACK_RANGES: usize = 64;

fn span(a: SeqNumber, b: SeqNumber) -> usize {
    usize::try_from((b - a).max(0)).unwrap_or(0)
}

#[derive(Debug, Clone)]
pub(crate) struct RangeSet {
    ranges: Vec<(SeqNumber, SeqNumber)>,
    max: usize,
}

impl RangeSet {
    pub(crate) fn new(max: usize) -> RangeSet {
        RangeSet {
            ranges: Vec::with_capacity(max.min(8)),
            max,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.ranges.clear();
    }

    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = (SeqNumber, SeqNumber)> + '_ {
        self.ranges.iter().copied()
    }

    /// Whether `[start, end)` is inside the set (already held).
    pub(crate) fn covers(&self, start: SeqNumber, end: SeqNumber) -> bool {
        self.ranges.iter().any(|&(s, e)| s <= start && end <= e)
    }

    /// Adds `[start, end)`, merging with overlapping or adjacent ranges.
    /// Returns false, leaving the set unchanged, if that would need more
    /// ranges than the bound.
    pub(crate) fn insert(&mut self, start: SeqNumber, end: SeqNumber) -> bool {
        if start >= end {
            return true;
        }
        let len = self.ranges.len();
        let i = self
            .ranges
            .iter()
            .position(|&(_, e)| e >= start)
            .unwrap_or(len);
        let mut j = i;
        while j < len && self.ranges[j].0 <= end {
            j += 1;
        }
        if i == j {
            if len >= self.max {
                return false;
            }
            self.ranges.insert(i, (start, end));
        } else {
            let new_start = start.min(self.ranges[i].0);
            let new_end = end.max(self.ranges[j - 1].1);
            self.ranges.drain(i + 1..j);
            self.ranges[i] = (new_start, new_end);
        }
        true
    }

    /// Forgets everything before `seq`.
    pub(crate) fn remove_below(&mut self, seq: SeqNumber) {
        self.ranges.retain(|&(_, e)| e > seq);
        if let Some(first) = self.ranges.first_mut()
            && first.0 < seq
        {
            first.0 = seq;
        }
    }

    /// Removes and returns the first range if it starts at or before `seq`.
    pub(crate) fn pop_if_starts_by(&mut self, seq: SeqNumber) -> Option<(SeqNumber, SeqNumber)> {
        match self.ranges.first() {
            Some(&(s, _)) if s <= seq => Some(self.ranges.remove(0)),
            _ => None,
        }
    }

    /// The range containing `seq`, if any.
    pub(crate) fn containing(&self, seq: SeqNumber) -> Option<(SeqNumber, SeqNumber)> {
        self.ranges
            .iter()
            .copied()
            .find(|&(s, e)| s <= seq && seq < e)
    }

    /// The first range ending after `seq` (containing it or above it).
    pub(crate) fn next_after(&self, seq: SeqNumber) -> Option<(SeqNumber, SeqNumber)> {
        self.ranges.iter().copied().find(|&(_, e)| e > seq)
    }

    /// Bytes of the set inside `[a, b)`.
    pub(crate) fn bytes_in(&self, a: SeqNumber, b: SeqNumber) -> usize {
        self.ranges
            .iter()
            .map(|&(s, e)| span(s.max(a), e.min(b)))
            .sum()
    }

    /// Total bytes held.
    pub(crate) fn total(&self) -> usize {
        self.ranges.iter().map(|&(s, e)| span(s, e)).sum()
    }

    /// RFC 6675 (4) `IsLost`, as a boundary: every byte below the returned
    /// point that is not in the set counts as lost, because more than
    /// `(dupthresh - 1) * mss` bytes, or `dupthresh` discontiguous ranges,
    /// are SACKed above it. `None`: nothing is lost yet.
    pub(crate) fn lost_below(&self, mss: usize, dupthresh: usize) -> Option<SeqNumber> {
        let mut bytes = 0usize;
        for (count, &(s, e)) in self.ranges.iter().rev().enumerate() {
            bytes += span(s, e);
            if count + 1 >= dupthresh || bytes > (dupthresh - 1) * mss {
                return Some(s);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u32) -> SeqNumber {
        SeqNumber(n)
    }

    fn ranges(set: &RangeSet) -> Vec<(u32, u32)> {
        set.iter().map(|(a, b)| (a.0, b.0)).collect()
    }

    #[test]
    fn insert_merges_overlaps_and_neighbours() {
        let mut r = RangeSet::new(3);
        assert!(r.insert(s(10), s(20)));
        assert!(r.insert(s(30), s(40)));
        assert!(r.insert(s(50), s(60)));
        // A fourth disjoint range does not fit.
        assert!(!r.insert(s(70), s(80)));
        assert_eq!(ranges(&r), [(10, 20), (30, 40), (50, 60)]);
        // Adjacent on both sides: merges three into one.
        assert!(r.insert(s(20), s(30)));
        assert!(r.insert(s(40), s(50)));
        assert_eq!(ranges(&r), [(10, 60)]);
        assert!(r.insert(s(5), s(70)));
        assert_eq!(ranges(&r), [(5, 70)]);
        // Empty and inverted ranges are no-ops.
        assert!(r.insert(s(100), s(100)));
        assert!(r.insert(s(100), s(90)));
        assert_eq!(r.iter().count(), 1);
        assert!(r.covers(s(6), s(70)));
        assert!(!r.covers(s(6), s(71)));
    }

    #[test]
    fn wraps_around_zero() {
        let mut r = RangeSet::new(4);
        assert!(r.insert(s(u32::MAX - 5), s(5)));
        assert!(r.insert(s(10), s(20)));
        assert_eq!(ranges(&r), [(u32::MAX - 5, 5), (10, 20)]);
        r.remove_below(s(2));
        assert_eq!(ranges(&r), [(2, 5), (10, 20)]);
        assert_eq!(r.total(), 13);
        assert_eq!(r.bytes_in(s(4), s(12)), 3);
        assert_eq!(r.pop_if_starts_by(s(2)), Some((s(2), s(5))));
        assert_eq!(r.pop_if_starts_by(s(2)), None);
    }

    #[test]
    fn lost_boundary() {
        let mut r = RangeSet::new(8);
        r.insert(s(1000), s(1100));
        assert_eq!(r.lost_below(100, 3), None);
        r.insert(s(1200), s(1300));
        assert_eq!(r.lost_below(100, 3), None);
        r.insert(s(1400), s(1500));
        // Three discontiguous ranges above 1000-.
        assert_eq!(r.lost_below(100, 3), Some(s(1000)));
        let mut big = RangeSet::new(8);
        big.insert(s(5000), s(5201));
        assert_eq!(big.lost_below(100, 3), Some(s(5000)));
        assert_eq!(big.next_after(s(10)), Some((s(5000), s(5201))));
        assert_eq!(big.containing(s(5200)), Some((s(5000), s(5201))));
        assert_eq!(big.containing(s(5201)), None);
    }
}
