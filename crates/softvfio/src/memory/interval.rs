//! Pin counts per page, kept as a compact interval map.
//!
//! One entry per maximal stretch of addresses that share a pin count and a
//! backing page size, not one node per page: pinning 1 TiB once is one entry.
//! Both memory backends keep their counts here; the units are bytes (every
//! boundary the backends use is page aligned).
//!
//! Invariant: no two touching segments have the same count and page size
//! (they are merged), and no segment has a count of zero (it is removed).

use std::collections::BTreeMap;

/// A stretch `[start, end)` pinned `count` times, backed by pages of
/// `page_size` bytes (as the pin that last covered it saw them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Pin count of every page in it.
    pub count: u64,
    /// Size of the pages backing it.
    pub page_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Val {
    end: u64,
    count: u64,
    page_size: u64,
}

/// Pin counts over an address space.
#[derive(Debug, Default, Clone)]
pub struct PinCounts {
    map: BTreeMap<u64, Val>,
    /// Bytes with a count above zero.
    pinned: u64,
    /// Sum of count times length over all segments.
    refs: u64,
}

impl PinCounts {
    /// No pins.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes with a pin count above zero.
    pub fn pinned(&self) -> u64 {
        self.pinned
    }

    /// Sum over every byte of its pin count.
    pub fn refs(&self) -> u64 {
        self.refs
    }

    /// Number of segments kept (the tracking cost).
    pub fn segments(&self) -> usize {
        self.map.len()
    }

    /// No pinned page?
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All segments in address order.
    pub fn iter(&self) -> impl Iterator<Item = Segment> + '_ {
        self.map.iter().map(|(&start, v)| Segment {
            start,
            end: v.end,
            count: v.count,
            page_size: v.page_size,
        })
    }

    /// The segment containing `addr`, if `addr` is pinned.
    pub fn segment_at(&self, addr: u64) -> Option<Segment> {
        let (&start, v) = self.map.range(..=addr).next_back()?;
        (v.end > addr).then_some(Segment {
            start,
            end: v.end,
            count: v.count,
            page_size: v.page_size,
        })
    }

    /// Pin count of the unit at `addr`.
    pub fn count_at(&self, addr: u64) -> u64 {
        self.segment_at(addr).map_or(0, |s| s.count)
    }

    /// Start of the first segment that begins at or after `addr`.
    pub fn next_start(&self, addr: u64) -> Option<u64> {
        self.map.range(addr..).next().map(|(&k, _)| k)
    }

    /// End of the stretch of touching segments of `page_size` that starts
    /// with the segment containing `addr`, capped at `limit`; `addr` itself
    /// when `addr` is not pinned with that page size.
    pub fn stretch_end(&self, addr: u64, limit: u64, page_size: u64) -> u64 {
        let mut end = addr;
        let Some(first) = self.segment_at(addr) else {
            return addr;
        };
        if first.page_size != page_size {
            return addr;
        }
        for (&start, v) in self.map.range(first.start..) {
            if start != end && start != first.start {
                break;
            }
            if v.page_size != page_size {
                break;
            }
            end = v.end;
            if end >= limit {
                return limit;
            }
        }
        end.min(limit)
    }

    /// Does any unit of `[start, end)` have a pin?
    pub fn any_in(&self, start: u64, end: u64) -> bool {
        self.segment_at(start).is_some() || self.next_start(start).is_some_and(|s| s < end)
    }

    /// Calls `f` for every sub-range of `[start, end)` whose count is zero,
    /// in address order.
    pub fn gaps<F: FnMut(u64, u64)>(&self, start: u64, end: u64, mut f: F) {
        let mut cur = start;
        if let Some(s) = self.segment_at(start) {
            cur = s.end;
        }
        // A pinned segment may run past `end` (a range inside a larger pin).
        if cur >= end {
            return;
        }
        for (&k, v) in self.map.range(cur..end) {
            if k > cur {
                f(cur, k);
            }
            cur = v.end;
        }
        if cur < end {
            f(cur, end);
        }
    }

    /// Adds one pin to every unit of `[start, end)`, recording `page_size`.
    /// Calls `fresh` for every sub-range whose count went from zero to one.
    pub fn add<F: FnMut(u64, u64)>(&mut self, start: u64, end: u64, page_size: u64, mut fresh: F) {
        if start >= end {
            return;
        }
        if self.add_to_gap(start, end, page_size) {
            fresh(start, end);
            return;
        }
        self.split_at(start);
        self.split_at(end);
        let mut cur = start;
        while cur < end {
            // Either the segment starting at `cur` (bump it) or a gap up to
            // the next segment (fill it with a count of one).
            let next = match self.map.range_mut(cur..end).next() {
                Some((&k, v)) if k == cur => {
                    v.count += 1;
                    v.page_size = page_size;
                    self.refs = self.refs.saturating_add(v.end - k);
                    cur = v.end;
                    continue;
                }
                Some((&k, _)) => k,
                None => end,
            };
            self.map.insert(
                cur,
                Val {
                    end: next,
                    count: 1,
                    page_size,
                },
            );
            self.pinned += next - cur;
            self.refs = self.refs.saturating_add(next - cur);
            fresh(cur, next);
            cur = next;
        }
        self.coalesce(start, end);
    }

    /// Drops one pin from every unit of `[start, end)`. Calls `freed` for
    /// every sub-range whose count went to zero and `missing` for every
    /// sub-range that was not pinned at all (left as it is).
    pub fn remove<F: FnMut(u64, u64), G: FnMut(u64, u64)>(
        &mut self,
        start: u64,
        end: u64,
        mut freed: F,
        mut missing: G,
    ) {
        if start >= end {
            return;
        }
        self.split_at(start);
        self.split_at(end);
        let mut cur = start;
        while cur < end {
            let found = self.map.range(cur..end).next().map(|(&k, &v)| (k, v));
            match found {
                Some((k, v)) if k == cur => {
                    let len = v.end - k;
                    self.refs = self.refs.saturating_sub(len);
                    if v.count <= 1 {
                        self.map.remove(&k);
                        self.pinned -= len;
                        freed(k, v.end);
                    } else if let Some(m) = self.map.get_mut(&k) {
                        m.count -= 1;
                    }
                    cur = v.end;
                }
                Some((k, _)) => {
                    missing(cur, k);
                    cur = k;
                }
                None => {
                    missing(cur, end);
                    cur = end;
                }
            }
        }
        self.coalesce(start, end);
    }

    /// Drops one pin from every unit of `[start, end)` with the same
    /// granularity pins are taken: each step decides at its head, from the
    /// page size recorded for its first unit, how far it goes (to the end of
    /// that huge page, or over the whole stretch of base pages). Returns the
    /// number of steps (unpin operations). `freed` gets each sub-range whose
    /// count went to zero with the page size of its step; `missing` is as for
    /// [`PinCounts::remove`].
    pub fn unpin_runs<F: FnMut(u64, u64, u64), G: FnMut(u64, u64)>(
        &mut self,
        start: u64,
        end: u64,
        base_page: u64,
        mut freed: F,
        mut missing: G,
    ) -> u64 {
        if start < end {
            if let Some(ps) = self.remove_whole_segment(start, end, base_page) {
                freed(start, end, ps);
                return 1;
            }
        }
        let mut ops = 0;
        let mut cur = start;
        while cur < end {
            let Some(seg) = self.segment_at(cur) else {
                let next = self.next_start(cur).map_or(end, |n| n.min(end));
                missing(cur, next);
                cur = next;
                continue;
            };
            let run_end = if seg.page_size > base_page {
                let ps = seg.page_size;
                // Every huge page wholly inside this segment and the range
                // is a step of its own, but they all go with one update:
                // stepping page by page split the segment once a page.
                let whole = seg.end.min(end) / ps * ps;
                if whole > cur + ps - cur % ps {
                    let steps = (whole - (cur - cur % ps)) / ps;
                    self.remove(cur, whole, |a, b| freed(a, b, ps), &mut missing);
                    ops += steps;
                    cur = whole;
                    continue;
                }
                (cur - cur % seg.page_size + seg.page_size).min(end)
            } else {
                self.stretch_end(cur, end, base_page)
            };
            let ps = seg.page_size;
            self.remove(cur, run_end, |a, b| freed(a, b, ps), &mut missing);
            ops += 1;
            cur = run_end;
        }
        ops
    }

    /// Fast path of [`PinCounts::add`] for `[start, end)` wholly unpinned
    /// with no segment starting at `end` (nothing to split, bump or merge
    /// on the right), found with one tree search: the last segment starting
    /// at or below `end`. When it ends before `start` the range becomes a
    /// segment of its own (a 4 KiB map among others); when it ends at
    /// `start` with a count of one and the same page size it grows (a pin
    /// loop walking forward). Anything else is left to the general path.
    fn add_to_gap(&mut self, start: u64, end: u64, page_size: u64) -> bool {
        match self.map.range_mut(..=end).next_back() {
            Some((&k, _)) if k >= start => return false,
            Some((_, v)) if v.end > start => return false,
            Some((_, v)) if v.end == start => {
                if v.count != 1 || v.page_size != page_size {
                    return false;
                }
                v.end = end;
            }
            _ => {
                self.map.insert(
                    start,
                    Val {
                        end,
                        count: 1,
                        page_size,
                    },
                );
            }
        }
        self.pinned += end - start;
        self.refs = self.refs.saturating_add(end - start);
        true
    }

    /// Fast path of [`PinCounts::unpin_runs`] (and of `remove`) for a range
    /// that is exactly one segment of base pages pinned once: the segment
    /// goes, and as touching segments never share count and page size, its
    /// neighbours need no merge. One tree search finds and removes it.
    fn remove_whole_segment(&mut self, start: u64, end: u64, base_page: u64) -> Option<u64> {
        let std::collections::btree_map::Entry::Occupied(e) = self.map.entry(start) else {
            return None;
        };
        let v = *e.get();
        if v.end != end || v.count != 1 || v.page_size > base_page {
            return None;
        }
        let page_size = v.page_size;
        e.remove();
        self.pinned -= end - start;
        self.refs = self.refs.saturating_sub(end - start);
        Some(page_size)
    }

    /// Splits the segment that strictly contains `at` into two.
    fn split_at(&mut self, at: u64) {
        let tail = match self.map.range_mut(..at).next_back() {
            Some((_, v)) if v.end > at => {
                let tail = Val { end: v.end, ..*v };
                v.end = at;
                tail
            }
            _ => return,
        };
        self.map.insert(at, tail);
    }

    /// Merges touching equal segments from the one ending at `from` up to the
    /// one starting at `to` (the only places an update can break the
    /// invariant).
    fn coalesce(&mut self, from: u64, to: u64) {
        let mut key = match self.map.range(..from).next_back() {
            Some((&k, v)) if v.end == from => k,
            _ => match self.map.range(from..).next() {
                Some((&k, _)) => k,
                None => return,
            },
        };
        while key < to {
            let Some(&v) = self.map.get(&key) else {
                return;
            };
            match self.map.get(&v.end).copied() {
                Some(n) if n.count == v.count && n.page_size == v.page_size => {
                    self.map.remove(&v.end);
                    if let Some(m) = self.map.get_mut(&key) {
                        m.end = n.end;
                    }
                }
                Some(_) => key = v.end,
                None => match self.map.range(v.end..).next() {
                    Some((&k, _)) => key = k,
                    None => return,
                },
            }
        }
    }
}

/// A set of disjoint half-open ranges, merged where they touch; inserting
/// or removing a range costs a few tree operations however long it is.
#[derive(Debug, Default, Clone)]
pub struct RangeSet {
    /// start → end
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// No range?
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The ranges, in address order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(a, b)| (*a, *b))
    }

    /// Adds `[start, end)`; returns the bytes that were not in the set.
    pub fn insert(&mut self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let (mut lo, mut hi) = (start, end);
        let mut covered = 0;
        // Ranges that overlap or touch [start, end): the one starting at or
        // before `start`, and those starting up to `end`.
        let first = self
            .map
            .range(..=start)
            .next_back()
            .filter(|(_, e)| **e >= start)
            .map(|(s, _)| *s)
            .unwrap_or(start);
        let touching: Vec<(u64, u64)> =
            self.map.range(first..=end).map(|(a, b)| (*a, *b)).collect();
        for (a, b) in touching {
            covered += b.min(end).saturating_sub(a.max(start));
            lo = lo.min(a);
            hi = hi.max(b);
            self.map.remove(&a);
        }
        self.map.insert(lo, hi);
        (end - start) - covered
    }

    /// Removes `[start, end)`; returns the bytes that were in the set.
    pub fn remove(&mut self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let first = self
            .map
            .range(..=start)
            .next_back()
            .filter(|(_, e)| **e > start)
            .map(|(s, _)| *s)
            .unwrap_or(start);
        let hit: Vec<(u64, u64)> = self.map.range(first..end).map(|(a, b)| (*a, *b)).collect();
        let mut removed = 0;
        for (a, b) in hit {
            removed += b.min(end).saturating_sub(a.max(start));
            self.map.remove(&a);
            if a < start {
                self.map.insert(a, start);
            }
            if b > end {
                self.map.insert(end, b);
            }
        }
        removed
    }
}

/// Collects ranges given in address order, merging touching ones, so that a
/// batch of system calls covers each stretch with one call.
#[derive(Debug, Default, Clone)]
pub struct RangeList {
    ranges: Vec<(u64, u64)>,
}

impl RangeList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `[start, end)`, merging it with the last range when they touch.
    pub fn push(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if let Some(last) = self.ranges.last_mut() {
            if last.1 >= start {
                last.1 = last.1.max(end);
                return;
            }
        }
        self.ranges.push((start, end));
    }

    /// No range?
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, `[start, end)` each.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Total bytes covered.
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|r| r.1 - r.0).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 4096;
    const M2: u64 = 2 << 20;

    fn segs(c: &PinCounts) -> Vec<(u64, u64, u64)> {
        c.iter().map(|s| (s.start, s.end, s.count)).collect()
    }

    fn add(c: &mut PinCounts, a: u64, b: u64) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        c.add(a, b, K, |x, y| v.push((x, y)));
        v
    }

    type Ranges = Vec<(u64, u64)>;

    fn remove(c: &mut PinCounts, a: u64, b: u64) -> (Ranges, Ranges) {
        let (mut f, mut m) = (Vec::new(), Vec::new());
        c.remove(a, b, |x, y| f.push((x, y)), |x, y| m.push((x, y)));
        (f, m)
    }

    /// Recomputes totals and checks the invariant.
    fn check(c: &PinCounts) {
        let mut pinned = 0;
        let mut refs = 0;
        let mut prev: Option<Segment> = None;
        for s in c.iter() {
            assert!(s.start < s.end, "empty segment {s:?}");
            assert!(s.count > 0, "zero count {s:?}");
            if let Some(p) = prev {
                assert!(p.end <= s.start, "overlap {p:?} {s:?}");
                assert!(
                    !(p.end == s.start && p.count == s.count && p.page_size == s.page_size),
                    "unmerged {p:?} {s:?}"
                );
            }
            pinned += s.end - s.start;
            refs += (s.end - s.start) * s.count;
            prev = Some(s);
        }
        assert_eq!(c.pinned(), pinned);
        assert_eq!(c.refs(), refs);
    }

    /// The one-search paths (a pin into a gap, an unpin of exactly one
    /// segment) against a count per page, over random pins and unpins of
    /// 1-3 pages in a 16-page space with two page sizes: every freed and
    /// fresh range, the segments' invariant and the totals agree.
    #[test]
    fn fast_paths_agree_with_a_count_per_page() {
        const PAGES: usize = 16;
        let mut c = PinCounts::new();
        let mut model = [(0u64, 0u64); PAGES];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..20_000 {
            let first = next(PAGES as u64 - 2);
            let len = 1 + next(3);
            let (a, b) = (first * K, (first + len) * K);
            let pages = first as usize..(first + len) as usize;
            if next(2) == 0 {
                let ps = if next(4) == 0 { 2 * K } else { K };
                let mut fresh = Vec::new();
                c.add(a, b, ps, |x, y| fresh.push((x, y)));
                let mut want: Vec<(u64, u64)> = Vec::new();
                for p in pages {
                    if model[p].0 == 0 {
                        let (s, e) = (p as u64 * K, (p as u64 + 1) * K);
                        match want.last_mut() {
                            Some(l) if l.1 == s => l.1 = e,
                            _ => want.push((s, e)),
                        }
                    }
                    model[p] = (model[p].0 + 1, ps);
                }
                let mut got: Vec<(u64, u64)> = Vec::new();
                for (s, e) in fresh {
                    match got.last_mut() {
                        Some(l) if l.1 == s => l.1 = e,
                        _ => got.push((s, e)),
                    }
                }
                assert_eq!(got, want, "fresh ranges of add {a:#x}..{b:#x}");
            } else {
                let mut freed = 0;
                let mut missing = 0;
                c.unpin_runs(a, b, K, |x, y, _| freed += y - x, |x, y| missing += y - x);
                let (mut want_freed, mut want_missing) = (0, 0);
                for p in pages {
                    match model[p].0 {
                        0 => want_missing += K,
                        1 => {
                            want_freed += K;
                            model[p] = (0, 0);
                        }
                        n => model[p].0 = n - 1,
                    }
                }
                assert_eq!((freed, missing), (want_freed, want_missing));
            }
            check(&c);
            for (p, &(count, ps)) in model.iter().enumerate() {
                let seg = c.segment_at(p as u64 * K);
                assert_eq!(seg.map_or(0, |s| s.count), count, "page {p}");
                if count > 0 {
                    assert_eq!(seg.map(|s| s.page_size), Some(ps), "page {p}");
                }
            }
        }
    }

    #[test]
    fn add_then_remove_single() {
        let mut c = PinCounts::new();
        assert_eq!(add(&mut c, 0, 8), vec![(0, 8)]);
        assert_eq!(segs(&c), vec![(0, 8, 1)]);
        assert_eq!(remove(&mut c, 0, 8), (vec![(0, 8)], vec![]));
        assert!(c.is_empty());
        check(&c);
    }

    #[test]
    fn overlapping_pins_split_and_merge() {
        let mut c = PinCounts::new();
        add(&mut c, 0, 8);
        // Overlap on the right: only [8,12) is fresh.
        assert_eq!(add(&mut c, 4, 12), vec![(8, 12)]);
        assert_eq!(segs(&c), vec![(0, 4, 1), (4, 8, 2), (8, 12, 1)]);
        check(&c);
        // Cover everything: [12,16) fresh, interior bumped.
        assert_eq!(add(&mut c, 0, 16), vec![(12, 16)]);
        assert_eq!(
            segs(&c),
            vec![(0, 4, 2), (4, 8, 3), (8, 12, 2), (12, 16, 1)]
        );
        check(&c);
        // Unpin the first pin: nothing reaches zero.
        assert_eq!(remove(&mut c, 0, 8), (vec![], vec![]));
        assert_eq!(segs(&c), vec![(0, 4, 1), (4, 12, 2), (12, 16, 1)]);
        check(&c);
        assert_eq!(remove(&mut c, 4, 12), (vec![], vec![]));
        assert_eq!(segs(&c), vec![(0, 16, 1)]);
        check(&c);
        assert_eq!(remove(&mut c, 0, 16), (vec![(0, 16)], vec![]));
        assert!(c.is_empty());
        check(&c);
    }

    #[test]
    fn adjacent_pins_merge() {
        let mut c = PinCounts::new();
        add(&mut c, 8, 12);
        add(&mut c, 0, 4);
        add(&mut c, 4, 8);
        assert_eq!(segs(&c), vec![(0, 12, 1)]);
        check(&c);
        // Unpin the middle: splits into two.
        assert_eq!(remove(&mut c, 4, 8), (vec![(4, 8)], vec![]));
        assert_eq!(segs(&c), vec![(0, 4, 1), (8, 12, 1)]);
        check(&c);
    }

    #[test]
    fn range_set_inserts_and_removes_with_byte_counts() {
        let mut r = RangeSet::new();
        assert_eq!(r.insert(10, 20), 10);
        assert_eq!(r.insert(30, 40), 10);
        assert_eq!(r.insert(15, 35), 10, "only 20..30 is new");
        assert_eq!(r.ranges().collect::<Vec<_>>(), vec![(10, 40)]);
        assert_eq!(r.insert(40, 50), 10, "touching ranges merge");
        assert_eq!(r.ranges().collect::<Vec<_>>(), vec![(10, 50)]);
        assert_eq!(r.remove(20, 30), 10);
        assert_eq!(r.ranges().collect::<Vec<_>>(), vec![(10, 20), (30, 50)]);
        assert_eq!(r.remove(0, 15), 5);
        assert_eq!(r.remove(18, 35), 7);
        assert_eq!(r.ranges().collect::<Vec<_>>(), vec![(15, 18), (35, 50)]);
        assert_eq!(r.remove(60, 70), 0);
        assert_eq!(r.remove(0, 100), 18);
        assert!(r.is_empty());
    }

    #[test]
    fn gaps_are_filled_and_reported() {
        let mut c = PinCounts::new();
        add(&mut c, 2, 3);
        add(&mut c, 5, 6);
        assert_eq!(add(&mut c, 0, 8), vec![(0, 2), (3, 5), (6, 8)]);
        assert_eq!(
            segs(&c),
            vec![(0, 2, 1), (2, 3, 2), (3, 5, 1), (5, 6, 2), (6, 8, 1)]
        );
        let mut g = Vec::new();
        c.gaps(0, 10, |a, b| g.push((a, b)));
        assert_eq!(g, vec![(8, 10)]);
        // Inside one pinned segment: no gap (and no panic).
        g.clear();
        c.gaps(3, 4, |a, b| g.push((a, b)));
        c.gaps(7, 8, |a, b| g.push((a, b)));
        assert!(g.is_empty());
        check(&c);
    }

    #[test]
    fn unpin_of_unpinned_reports_missing() {
        let mut c = PinCounts::new();
        add(&mut c, 4, 8);
        let (f, m) = remove(&mut c, 0, 12);
        assert_eq!(f, vec![(4, 8)]);
        assert_eq!(m, vec![(0, 4), (8, 12)]);
        assert!(c.is_empty());
        let (f, m) = remove(&mut c, 0, 4);
        assert!(f.is_empty());
        assert_eq!(m, vec![(0, 4)]);
        check(&c);
    }

    #[test]
    fn page_size_keeps_segments_apart() {
        let mut c = PinCounts::new();
        c.add(0, M2, M2, |_, _| {});
        c.add(M2, M2 + 4 * K, K, |_, _| {});
        assert_eq!(c.segments(), 2);
        assert_eq!(c.stretch_end(0, u64::MAX, M2), M2);
        assert_eq!(c.stretch_end(M2, u64::MAX, K), M2 + 4 * K);
        assert_eq!(c.stretch_end(M2, M2 + K, K), M2 + K);
        assert_eq!(c.stretch_end(M2, u64::MAX, M2), M2);
        check(&c);
    }

    #[test]
    fn stretch_spans_different_counts() {
        let mut c = PinCounts::new();
        add(&mut c, 0, 8 * K);
        add(&mut c, 4 * K, 12 * K);
        assert_eq!(c.segments(), 3);
        assert_eq!(c.stretch_end(0, u64::MAX, K), 12 * K);
        assert_eq!(c.stretch_end(5 * K, u64::MAX, K), 12 * K);
        assert_eq!(c.stretch_end(12 * K, u64::MAX, K), 12 * K);
    }

    #[test]
    fn tib_is_one_segment() {
        let mut c = PinCounts::new();
        let g = 1u64 << 30;
        for i in 0..4096 {
            c.add(i * g, (i + 1) * g, g, |_, _| {});
        }
        assert_eq!(c.segments(), 1);
        assert_eq!(c.pinned(), 4096 * g);
        for i in 0..4096 {
            c.remove(i * g, (i + 1) * g, |_, _| {}, |_, _| panic!("missing"));
        }
        assert!(c.is_empty());
        check(&c);
    }

    #[test]
    fn unpin_runs_one_step_per_huge_page() {
        let mut c = PinCounts::new();
        // Four 2M pages pinned with one add each, then a sub-range again.
        for i in 0..4 {
            c.add(i * M2, (i + 1) * M2, M2, |_, _| {});
        }
        c.add(M2 / 2, M2 + M2 / 2, M2, |_, _| {});
        assert_eq!(c.segments(), 3);
        let mut freed = RangeList::new();
        let ops = c.unpin_runs(0, 4 * M2, K, |a, b, _| freed.push(a, b), |_, _| panic!());
        assert_eq!(ops, 4);
        assert_eq!(freed.ranges(), &[(0, M2 / 2), (M2 + M2 / 2, 4 * M2)]);
        // The second pin goes in two steps: the two huge pages it touches.
        let ops = c.unpin_runs(M2 / 2, M2 + M2 / 2, K, |_, _, _| {}, |_, _| panic!());
        assert_eq!(ops, 2);
        assert!(c.is_empty());
        // Base pages: one step for the whole stretch.
        add(&mut c, 0, 64 * K);
        add(&mut c, 8 * K, 16 * K);
        let ops = c.unpin_runs(0, 64 * K, K, |_, _, _| {}, |_, _| panic!());
        assert_eq!(ops, 1);
        assert_eq!(segs(&c), vec![(8 * K, 16 * K, 1)]);
        let mut missing = Vec::new();
        let ops = c.unpin_runs(0, 32 * K, K, |_, _, _| {}, |a, b| missing.push((a, b)));
        assert_eq!(ops, 1);
        assert_eq!(missing, vec![(0, 8 * K), (16 * K, 32 * K)]);
        check(&c);
    }

    #[test]
    fn range_list_merges_touching() {
        let mut r = RangeList::new();
        r.push(0, 4);
        r.push(4, 8);
        r.push(10, 12);
        r.push(12, 12);
        r.push(11, 14);
        assert_eq!(r.ranges(), &[(0, 8), (10, 14)]);
        assert_eq!(r.total(), 12);
    }

    /// A naive per-unit model, for randomized comparison.
    #[test]
    fn matches_per_unit_model() {
        use proptest::prelude::*;
        let ops = proptest::collection::vec((any::<bool>(), 0u64..64, 1u64..16), 1..80);
        proptest!(|(ops in ops)| {
            let mut c = PinCounts::new();
            let mut model = [0u64; 80];
            // Only unpin what the model has pinned over the whole range, as
            // the trait requires.
            for (pin, a, n) in ops {
                let b = a + n;
                if pin {
                    let mut fresh = Vec::new();
                    c.add(a, b, K, |x, y| fresh.push((x, y)));
                    let want: Vec<u64> = (a..b).filter(|&i| model[i as usize] == 0).collect();
                    let got: Vec<u64> = fresh.iter().flat_map(|&(x, y)| x..y).collect();
                    prop_assert_eq!(got, want);
                    for i in a..b { model[i as usize] += 1; }
                } else if (a..b).all(|i| model[i as usize] > 0) {
                    let mut freed = Vec::new();
                    c.remove(a, b, |x, y| freed.push((x, y)), |_, _| panic!("missing"));
                    for i in a..b { model[i as usize] -= 1; }
                    let want: Vec<u64> = (a..b).filter(|&i| model[i as usize] == 0).collect();
                    let got: Vec<u64> = freed.iter().flat_map(|&(x, y)| x..y).collect();
                    prop_assert_eq!(got, want);
                }
                check(&c);
                for i in 0..80u64 {
                    prop_assert_eq!(c.count_at(i), model[i as usize]);
                }
            }
        });
    }
}
