//! Compact tracking of externally pinned pages of one mapping (seed 004).
//!
//! The kernel keeps one `struct vfio_pfn` rb-tree node per pinned page
//! (~40-48 bytes). Here a mapping's pins live in chunks of 64 pages keyed by
//! page offset. A chunk is a presence bitmap; only when a page of it is
//! pinned more than once does it get an array of 64 pin counts. So pages
//! pinned once (what a caching device does) cost a 24-byte tree entry per
//! 64-page stretch: well under a byte a page dense, a few tens of bytes a
//! page sparse, and memory follows what is pinned, not the mapping size.
//! Dense with repeated pins it is 4 bytes a page plus the entry.

use std::collections::BTreeMap;

/// Pages per chunk: one presence bit each in a `u64`.
const CHUNK_PAGES: u64 = 64;
/// Estimated B-tree node bytes per entry: a Rust `BTreeMap` leaf holds up
/// to 11 entries plus a 16-byte header and is between half and completely
/// full; we charge its full size spread over 7 entries.
const BTREE_NODE_ENTRIES: usize = 11;
const BTREE_NODE_HEADER: usize = 16;
const BTREE_ENTRIES_PER_NODE_ESTIMATE: usize = 7;

/// Pin counts of up to 64 consecutive pages.
#[derive(Debug, Clone, Default)]
struct Chunk {
    /// Bit n set: page `chunk * 64 + n` is pinned.
    present: u64,
    /// Pin counts by bit, once some page of the chunk is pinned twice;
    /// until then every present page has count 1.
    counts: Option<Box<[u32; CHUNK_PAGES as usize]>>,
}

impl Chunk {
    fn count(&self, bit: usize) -> u32 {
        if self.present & (1 << bit) == 0 {
            return 0;
        }
        match &self.counts {
            Some(c) => c.get(bit).copied().unwrap_or(0),
            None => 1,
        }
    }
}

/// Why a pin could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("pin count of page {page} would overflow")]
pub struct PinCountOverflow {
    pub page: u64,
}

/// Pin counts of a mapping's pages, indexed by page offset in the mapping.
#[derive(Debug, Clone, Default)]
pub struct PinTracker {
    chunks: BTreeMap<u64, Chunk>,
    /// Pages with a count above zero.
    pinned_pages: u64,
    /// Sum of all counts.
    pin_refs: u64,
}

impl PinTracker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.pinned_pages == 0
    }

    /// Pages pinned at least once.
    pub fn pinned_pages(&self) -> u64 {
        self.pinned_pages
    }

    /// Sum of the pin counts.
    pub fn pin_refs(&self) -> u64 {
        self.pin_refs
    }

    /// The pin count of page `page`.
    pub fn count(&self, page: u64) -> u32 {
        self.chunks
            .get(&(page / CHUNK_PAGES))
            .map(|c| c.count((page % CHUNK_PAGES) as usize))
            .unwrap_or(0)
    }

    /// Adds one pin to `page`; returns true if the page was not pinned before.
    pub fn pin(&mut self, page: u64) -> Result<bool, PinCountOverflow> {
        let c = self.chunks.entry(page / CHUNK_PAGES).or_default();
        let bit = (page % CHUNK_PAGES) as usize;
        if c.present & (1 << bit) == 0 {
            c.present |= 1 << bit;
            if let Some(n) = c.counts.as_mut().and_then(|a| a.get_mut(bit)) {
                *n = 1;
            }
            self.pinned_pages += 1;
            self.pin_refs += 1;
            return Ok(true);
        }
        let present = c.present;
        let counts = c.counts.get_or_insert_with(|| {
            // First repeated pin in this chunk: every present page has 1.
            let mut a = Box::new([0u32; CHUNK_PAGES as usize]);
            for (b, n) in a.iter_mut().enumerate() {
                if present & (1 << b) != 0 {
                    *n = 1;
                }
            }
            a
        });
        let n = counts.get_mut(bit).ok_or(PinCountOverflow { page })?;
        *n = n.checked_add(1).ok_or(PinCountOverflow { page })?;
        self.pin_refs += 1;
        Ok(false)
    }

    /// Drops one pin of `page`; returns true if that was its last pin. A
    /// page that is not pinned is left alone (the kernel ignores it too).
    pub fn unpin(&mut self, page: u64) -> bool {
        let key = page / CHUNK_PAGES;
        let Some(c) = self.chunks.get_mut(&key) else {
            return false;
        };
        let bit = (page % CHUNK_PAGES) as usize;
        let count = c.count(bit);
        if count == 0 {
            return false;
        }
        self.pin_refs = self.pin_refs.saturating_sub(1);
        if count > 1 {
            if let Some(a) = c.counts.as_mut() {
                if let Some(n) = a.get_mut(bit) {
                    *n -= 1;
                }
                // Back to "every page once": drop the count array.
                if a.iter().all(|&n| n <= 1) {
                    c.counts = None;
                }
            }
            return false;
        }
        c.present &= !(1 << bit);
        if let Some(n) = c.counts.as_mut().and_then(|a| a.get_mut(bit)) {
            *n = 0;
        }
        self.pinned_pages = self.pinned_pages.saturating_sub(1);
        if c.present == 0 {
            self.chunks.remove(&key);
        }
        true
    }

    /// Pinned pages in `[first, first + npages)`, in order.
    pub fn pages_in(&self, first: u64, npages: u64) -> Vec<u64> {
        let end = first.saturating_add(npages);
        self.chunks
            .range(first / CHUNK_PAGES..)
            .take_while(|(&key, _)| key.saturating_mul(CHUNK_PAGES) < end)
            .flat_map(|(&key, c)| bits_of(key, c.present))
            .filter(|&p| p >= first && p < end)
            .collect()
    }

    /// Every pinned page, in order.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.chunks
            .iter()
            .flat_map(|(&key, c)| bits_of(key, c.present))
    }

    /// Runs of consecutive pinned pages as `(first page, pages)`, in order.
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for page in self.pages() {
            match out.last_mut() {
                Some((start, n)) if *start + *n == page => *n += 1,
                _ => out.push((page, 1)),
            }
        }
        out
    }

    /// Forgets every pin in one pass; returns the pages that were pinned.
    pub fn clear(&mut self) -> u64 {
        let n = self.pinned_pages;
        self.chunks.clear();
        self.pinned_pages = 0;
        self.pin_refs = 0;
        n
    }

    /// Heap bytes the tracker uses: the B-tree's nodes, estimated from its
    /// entry size (a Rust `BTreeMap` does not expose its allocation; the
    /// estimate is checked against a counting allocator in
    /// `tests/external_tracking.rs`), plus the count arrays.
    pub fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<u64>() + std::mem::size_of::<Chunk>();
        let node = BTREE_NODE_HEADER + BTREE_NODE_ENTRIES * entry;
        let tree = (self.chunks.len() * node).div_ceil(BTREE_ENTRIES_PER_NODE_ESTIMATE);
        let arrays = self.chunks.values().filter(|c| c.counts.is_some()).count()
            * std::mem::size_of::<[u32; CHUNK_PAGES as usize]>();
        tree + arrays
    }
}

/// The pages whose bits are set in chunk `key`'s presence map, in order.
fn bits_of(key: u64, present: u64) -> impl Iterator<Item = u64> {
    let base = key * CHUNK_PAGES;
    let mut bits = present;
    std::iter::from_fn(move || {
        if bits == 0 {
            return None;
        }
        let bit = u64::from(bits.trailing_zeros());
        bits &= bits - 1;
        Some(base + bit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_refcounts_and_removal() {
        let mut t = PinTracker::new();
        assert_eq!(t.pin(5), Ok(true));
        assert_eq!(t.pin(5), Ok(false));
        assert_eq!(t.pin(3), Ok(true));
        assert_eq!(t.pin(700), Ok(true));
        assert_eq!(t.count(5), 2);
        assert_eq!(t.count(3), 1);
        assert_eq!(t.count(4), 0);
        assert_eq!((t.pinned_pages(), t.pin_refs()), (3, 4));
        assert!(!t.unpin(5));
        assert!(t.unpin(5));
        assert!(!t.unpin(5));
        assert_eq!(t.count(3), 1);
        assert_eq!(t.pages().collect::<Vec<_>>(), vec![3, 700]);
        assert_eq!(t.pages_in(0, 700), vec![3]);
        assert!(t.unpin(700));
        assert_eq!(t.chunks.len(), 1);
        assert_eq!(t.pin_refs(), 1);
        assert_eq!(t.clear(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn runs_coalesce_across_chunks() {
        let mut t = PinTracker::new();
        for p in 60..70 {
            t.pin(p).unwrap();
        }
        t.pin(100).unwrap();
        assert_eq!(t.runs(), vec![(60, 10), (100, 1)]);
    }

    #[test]
    fn rank_matches_bit_order_for_random_order_inserts() {
        let mut t = PinTracker::new();
        let order = [63u64, 0, 31, 1, 62, 32];
        for (i, p) in order.iter().enumerate() {
            for _ in 0..=i {
                t.pin(*p).unwrap();
            }
        }
        for (i, p) in order.iter().enumerate() {
            assert_eq!(t.count(*p), i as u32 + 1);
        }
    }

    #[test]
    fn repeated_pins_get_a_count_array_and_lose_it() {
        let mut t = PinTracker::new();
        t.pin(1).unwrap();
        t.pin(2).unwrap();
        assert!(t.chunks[&0].counts.is_none());
        t.pin(2).unwrap();
        assert_eq!((t.count(1), t.count(2)), (1, 2));
        assert!(t.chunks[&0].counts.is_some());
        assert!(!t.unpin(2));
        assert!(t.chunks[&0].counts.is_none());
        assert_eq!((t.count(1), t.count(2)), (1, 1));
    }

    #[test]
    fn dense_tracking_stays_under_8_bytes_a_page() {
        let mut t = PinTracker::new();
        let pages = 1u64 << 18;
        for p in 0..pages {
            t.pin(p).unwrap();
            t.pin(p).unwrap();
        }
        let per_page = t.heap_bytes() as f64 / pages as f64;
        assert!(per_page <= 8.0, "{per_page} bytes per page");
    }
}
