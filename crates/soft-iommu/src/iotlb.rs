//! The IOTLB: a bounded, set-associative cache of leaf translations keyed by
//! (domain id, IOVA page, page size), like the hardware's, with lock-free
//! lookups.
//!
//! Every way is a seqlock: a reader loads the sequence, the fields and the
//! sequence again and uses the fields only when nothing changed; a writer
//! (fill or invalidation) makes the sequence odd with a CAS, writes, and makes
//! it even again. Lookups therefore never write shared memory.

use std::cell::Cell;
use std::sync::atomic::{fence, AtomicU64, Ordering};

/// Ways per set.
pub(crate) const WAYS: usize = 4;

const TAG_VALID: u64 = 1 << 2;
const TAG_CODE_MASK: u64 = 0b11;
const TAG_BASE_MASK: u64 = !0xfff;

pub(crate) const DATA_READ: u64 = 1 << 0;
pub(crate) const DATA_WRITE: u64 = 1 << 1;
pub(crate) const DATA_DIRTY: u64 = 1 << 2;
pub(crate) const DATA_SNOOP: u64 = 1 << 3;
const DATA_ADDR_MASK: u64 = !0xfff;

/// Page size code: 0 = 4 KiB, 1 = 2 MiB, 2 = 1 GiB (level - 1).
#[inline]
pub(crate) const fn code_size(code: u32) -> u64 {
    1u64 << (12 + 9 * code)
}

/// A cached translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cached {
    pub(crate) phys_base: u64,
    pub(crate) flags: u64,
}

impl Cached {
    pub(crate) fn encode(phys_base: u64, flags: u64) -> u64 {
        (phys_base & DATA_ADDR_MASK) | (flags & 0xfff)
    }

    fn decode(data: u64) -> Self {
        Cached {
            phys_base: data & DATA_ADDR_MASK,
            flags: data & 0xfff,
        }
    }
}

/// One IOTLB entry as [`Iommu::iotlb_entries`](crate::Iommu::iotlb_entries) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IotlbEntry {
    /// Domain id (DID) the entry is tagged with.
    pub domain: u32,
    /// For a nested (PASID-tagged) entry: the PASID; `iova` is then the
    /// guest virtual address and `phys` the host address.
    pub pasid: Option<u32>,
    /// First IOVA the entry covers.
    pub iova: u64,
    /// Bytes it covers.
    pub page_size: u64,
    /// Physical address of its first byte.
    pub phys: u64,
    /// Reads allowed.
    pub read: bool,
    /// Writes allowed.
    pub write: bool,
    /// Dirty bit seen.
    pub dirty: bool,
    /// Snoop bit.
    pub snoop: bool,
}

#[repr(align(32))]
#[derive(Default)]
struct Way {
    seq: AtomicU64,
    /// IOVA base | VALID | size code; 0 = invalid.
    tag: AtomicU64,
    did: AtomicU64,
    data: AtomicU64,
}

impl Way {
    /// Consistent snapshot `(tag, did, data)`, or `None` while a writer holds it.
    #[inline]
    fn read(&self) -> Option<(u64, u64, u64)> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            return None;
        }
        let tag = self.tag.load(Ordering::Relaxed);
        let did = self.did.load(Ordering::Relaxed);
        let data = self.data.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != s1 {
            return None;
        }
        Some((tag, did, data))
    }

    fn lock(&self) -> u64 {
        let mut spins = 0u32;
        loop {
            let s = self.seq.load(Ordering::Relaxed);
            if s & 1 == 0
                && self
                    .seq
                    .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                fence(Ordering::Release);
                return s + 1;
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    fn unlock(&self, odd: u64) {
        self.seq.store(odd + 1, Ordering::Release);
    }

    /// Clears the way if `pred(tag, did)` holds (checked again under the lock).
    fn invalidate_if(&self, pred: &impl Fn(u64, u64) -> bool) -> bool {
        let tag = self.tag.load(Ordering::Acquire);
        if tag == 0 || !pred(tag, self.did.load(Ordering::Acquire)) {
            // A writer may be filling this way right now; see the fill
            // protocol in the crate docs for why skipping it is safe.
            return false;
        }
        let odd = self.lock();
        let tag = self.tag.load(Ordering::Relaxed);
        let hit = tag != 0 && pred(tag, self.did.load(Ordering::Relaxed));
        if hit {
            self.tag.store(0, Ordering::Relaxed);
        }
        self.unlock(odd);
        hit
    }
}

struct Set {
    ways: [Way; WAYS],
}

thread_local! {
    static VICTIM_RNG: Cell<u32> = const { Cell::new(0x9e37_79b9) };
}

fn random_way() -> usize {
    VICTIM_RNG.with(|rng| {
        let mut x = rng.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        rng.set(x);
        x as usize % WAYS
    })
}

/// Counters of the IOTLB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IotlbStats {
    /// Entries the IOTLB can hold.
    pub capacity: usize,
    /// Valid entries now.
    pub valid: usize,
    /// Entries filled after a page walk.
    pub fills: u64,
    /// Valid entries replaced by a fill of another key.
    pub evictions: u64,
    /// Entries removed by invalidations.
    pub invalidated: u64,
}

pub(crate) struct Iotlb {
    sets: Box<[Set]>,
    mask: usize,
    /// log2 of the number of sets.
    bits: u32,
    fills: AtomicU64,
    evictions: AtomicU64,
    invalidated: AtomicU64,
}

impl Iotlb {
    /// An IOTLB with at most `max(capacity, WAYS)` entries (sets rounded down
    /// to a power of two).
    pub(crate) fn new(capacity: usize) -> Self {
        let sets = (capacity / WAYS).max(1);
        let sets = 1usize << (usize::BITS - 1 - sets.leading_zeros());
        Iotlb {
            sets: (0..sets)
                .map(|_| Set {
                    ways: Default::default(),
                })
                .collect(),
            mask: sets - 1,
            bits: sets.trailing_zeros(),
            fills: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            invalidated: AtomicU64::new(0),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    #[inline]
    fn set_index(&self, key: u64, base: u64) -> usize {
        let h = ((base >> 12) ^ (key << 40) ^ (key >> 24)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // Fibonacci hashing: the top bits of the product are the well-mixed
        // ones (middle bits put 1024 consecutive 4K pages in only 306 of
        // 1024 sets, so a quarter of a small working set missed).
        h.rotate_left(self.bits) as usize & self.mask
    }

    #[inline]
    fn set(&self, key: u64, base: u64) -> Option<&Set> {
        self.sets.get(self.set_index(key, base))
    }

    /// The cached translation of `iova` with page size `code`, if any.
    #[inline]
    pub(crate) fn lookup(&self, did: u32, iova: u64, code: u32) -> Option<Cached> {
        self.lookup_key(u64::from(did), iova, code)
    }

    /// [`Iotlb::lookup`] for any key: a domain id, or a nested (PASID)
    /// key of `pasid::nested_key` (bit 63 set).
    #[inline]
    pub(crate) fn lookup_key(&self, key: u64, iova: u64, code: u32) -> Option<Cached> {
        let base = iova & !(code_size(code) - 1);
        let want = base | TAG_VALID | u64::from(code);
        let set = self.set(key, base)?;
        for way in &set.ways {
            if way.tag.load(Ordering::Relaxed) != want {
                continue;
            }
            if let Some((tag, d, data)) = way.read() {
                if tag == want && d == key {
                    return Some(Cached::decode(data));
                }
            }
        }
        None
    }

    /// Caches a translation of the page at `base` (aligned to `code`'s size).
    pub(crate) fn insert(&self, did: u32, base: u64, code: u32, data: u64) {
        self.insert_key(u64::from(did), base, code, data);
    }

    /// [`Iotlb::insert`] for any key.
    pub(crate) fn insert_key(&self, key: u64, base: u64, code: u32, data: u64) {
        let did = key;
        let want = base | TAG_VALID | u64::from(code);
        let Some(set) = self.set(did, base) else {
            return;
        };
        let mut same = None;
        let mut free = None;
        for (i, way) in set.ways.iter().enumerate() {
            let tag = way.tag.load(Ordering::Relaxed);
            if tag == want && way.did.load(Ordering::Relaxed) == did {
                same = Some(i);
                break;
            }
            if tag == 0 && free.is_none() {
                free = Some(i);
            }
        }
        let index = same.or(free).unwrap_or_else(random_way);
        let Some(way) = set.ways.get(index) else {
            return;
        };
        let odd = way.lock();
        let old = way.tag.load(Ordering::Relaxed);
        if old != 0 && !(old == want && way.did.load(Ordering::Relaxed) == did) {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        way.tag.store(want, Ordering::Relaxed);
        way.did.store(did, Ordering::Relaxed);
        way.data.store(data, Ordering::Relaxed);
        way.unlock(odd);
        self.fills.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self, removed: usize) {
        if removed > 0 {
            self.invalidated
                .fetch_add(removed as u64, Ordering::Relaxed);
        }
    }

    /// Removes the entry for exactly this page.
    pub(crate) fn invalidate_page(&self, did: u32, base: u64, code: u32) {
        self.invalidate_page_key(u64::from(did), base, code);
    }

    /// [`Iotlb::invalidate_page`] for any key.
    pub(crate) fn invalidate_page_key(&self, key: u64, base: u64, code: u32) {
        let want = base | TAG_VALID | u64::from(code);
        let Some(set) = self.set(key, base) else {
            return;
        };
        let pred = |tag: u64, d: u64| tag == want && d == key;
        let removed = set.ways.iter().filter(|w| w.invalidate_if(&pred)).count();
        self.count(removed);
    }

    /// Removes every entry of `did` that overlaps `[start, end)`, for the
    /// page sizes in `codes` (bit n = code n). Probes the sets of each page
    /// when that is cheaper than scanning the whole IOTLB.
    pub(crate) fn invalidate_range(&self, did: u32, start: u64, end: u64, codes: u32) {
        self.invalidate_range_key(u64::from(did), start, end, codes);
    }

    /// Removes every entry whose key satisfies `pred` (a full scan).
    pub(crate) fn invalidate_keys(&self, pred: impl Fn(u64) -> bool) {
        self.scan(&|_tag, d| pred(d));
    }

    /// [`Iotlb::invalidate_range`] for any key.
    pub(crate) fn invalidate_range_key(&self, did: u64, start: u64, end: u64, codes: u32) {
        if end <= start {
            return;
        }
        let mut probes: u64 = 0;
        for code in 0..3 {
            if codes & (1 << code) != 0 {
                let size = code_size(code);
                let first = start & !(size - 1);
                probes = probes.saturating_add((end - first).div_ceil(size));
            }
        }
        if probes > self.sets.len() as u64 {
            let pred = |tag: u64, d: u64| {
                let size = code_size((tag & TAG_CODE_MASK) as u32);
                let base = tag & TAG_BASE_MASK;
                d == did && base < end && base.saturating_add(size) > start
            };
            self.scan(&pred);
            return;
        }
        for code in 0..3 {
            if codes & (1 << code) == 0 {
                continue;
            }
            let size = code_size(code);
            let mut base = start & !(size - 1);
            while base < end {
                self.invalidate_page_key(did, base, code);
                match base.checked_add(size) {
                    Some(next) => base = next,
                    None => break,
                }
            }
        }
    }

    /// Domain-selective invalidation.
    pub(crate) fn invalidate_domain(&self, did: u32) {
        self.scan(&|_tag, d| d == u64::from(did));
    }

    /// Global invalidation.
    pub(crate) fn invalidate_all(&self) {
        self.scan(&|_tag, _d| true);
    }

    fn scan(&self, pred: &impl Fn(u64, u64) -> bool) {
        let mut removed = 0;
        for set in self.sets.iter() {
            removed += set.ways.iter().filter(|w| w.invalidate_if(pred)).count();
        }
        self.count(removed);
    }

    /// A snapshot of the valid entries.
    pub(crate) fn entries(&self) -> Vec<IotlbEntry> {
        let mut out = Vec::new();
        for set in self.sets.iter() {
            for way in &set.ways {
                if let Some((tag, did, data)) = way.read() {
                    if tag & TAG_VALID == 0 {
                        continue;
                    }
                    let c = Cached::decode(data);
                    let (domain, pasid) = crate::pasid::split_key(did);
                    out.push(IotlbEntry {
                        domain,
                        pasid,
                        iova: tag & TAG_BASE_MASK,
                        page_size: code_size((tag & TAG_CODE_MASK) as u32),
                        phys: c.phys_base,
                        read: c.flags & DATA_READ != 0,
                        write: c.flags & DATA_WRITE != 0,
                        dirty: c.flags & DATA_DIRTY != 0,
                        snoop: c.flags & DATA_SNOOP != 0,
                    });
                }
            }
        }
        out
    }

    pub(crate) fn stats(&self) -> IotlbStats {
        let valid = self
            .sets
            .iter()
            .flat_map(|s| s.ways.iter())
            .filter(|w| w.tag.load(Ordering::Relaxed) != 0)
            .count();
        IotlbStats {
            capacity: self.capacity(),
            valid,
            fills: self.fills.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            invalidated: self.invalidated.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_rounds_down_to_sets() {
        assert_eq!(Iotlb::new(4096).capacity(), 4096);
        assert_eq!(Iotlb::new(5000).capacity(), 4096);
        assert_eq!(Iotlb::new(0).capacity(), WAYS);
        assert_eq!(Iotlb::new(7).capacity(), WAYS);
    }

    #[test]
    fn insert_lookup_invalidate() {
        let tlb = Iotlb::new(64);
        tlb.insert(1, 0x20_0000, 1, Cached::encode(0x4000_0000, DATA_READ));
        tlb.insert(1, 0x1000, 0, Cached::encode(0x9000, DATA_READ | DATA_WRITE));
        tlb.insert(2, 0x1000, 0, Cached::encode(0xa000, DATA_READ));
        let hit = tlb.lookup(1, 0x2f_f123, 1).unwrap();
        assert_eq!(hit.phys_base, 0x4000_0000);
        assert_eq!(tlb.lookup(1, 0x1fff, 0).unwrap().phys_base, 0x9000);
        assert_eq!(tlb.lookup(2, 0x1000, 0).unwrap().phys_base, 0xa000);
        assert!(tlb.lookup(1, 0x2000, 0).is_none());
        // A 4K range inside the 2M page removes the 2M entry.
        tlb.invalidate_range(1, 0x30_0000, 0x30_1000, 0b111);
        assert!(tlb.lookup(1, 0x20_0000, 1).is_none());
        assert!(tlb.lookup(1, 0x1000, 0).is_some());
        tlb.invalidate_domain(1);
        assert!(tlb.lookup(1, 0x1000, 0).is_none());
        assert!(tlb.lookup(2, 0x1000, 0).is_some());
        tlb.invalidate_all();
        assert_eq!(tlb.stats().valid, 0);
        assert_eq!(tlb.stats().invalidated, 3);
    }

    #[test]
    fn large_range_uses_a_scan() {
        let tlb = Iotlb::new(16);
        for i in 0..8u64 {
            tlb.insert(3, i << 12, 0, Cached::encode(i << 12, DATA_READ));
        }
        let before = tlb.stats().valid;
        assert!(before > 0 && before <= 16);
        tlb.invalidate_range(3, 0, 1 << 30, 0b111);
        assert_eq!(tlb.stats().valid, 0);
    }

    #[test]
    fn capacity_is_a_bound() {
        let tlb = Iotlb::new(64);
        for i in 0..10_000u64 {
            tlb.insert(
                (i % 3) as u32,
                i << 12,
                0,
                Cached::encode(i << 12, DATA_READ),
            );
            assert!(tlb.stats().valid <= 64);
        }
        assert_eq!(tlb.stats().fills, 10_000);
        assert!(tlb.stats().evictions >= 10_000 - 64);
    }
}
