//! VT-d second-level page-table entries and the arena the tables live in.
//!
//! Entry format (VT-d spec, "Second-Level Paging Entries"; the kernel's
//! `DMA_PTE_*` bits): bit 0 R, bit 1 W, bit 7 PS (super page at level 2 =
//! 2 MiB, level 3 = 1 GiB), bit 8 A, bit 9 D, bit 11 SNP, bits 51:12 the
//! address of the next-level table or of the page frame. An entry is present
//! when R or W is set; like intel-iommu, non-leaf entries carry R|W.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Read permission.
pub const PTE_READ: u64 = 1 << 0;
/// Write permission.
pub const PTE_WRITE: u64 = 1 << 1;
/// Page size: this level-2/3 entry maps a 2 MiB / 1 GiB page.
pub const PTE_PAGE_SIZE: u64 = 1 << 7;
/// Accessed: set by the IOMMU when a translation uses the entry.
pub const PTE_ACCESSED: u64 = 1 << 8;
/// Dirty: set by the IOMMU when a write request uses the leaf entry.
pub const PTE_DIRTY: u64 = 1 << 9;
/// Snoop: force snooping (cache-coherent) DMA through this leaf.
pub const PTE_SNOOP: u64 = 1 << 11;
/// Bits 51:12: next-level table or page frame address.
pub const PTE_ADDR_MASK: u64 = ((1u64 << 52) - 1) & !0xfff;

/// Entries per table (one 4 KiB page of 64-bit entries).
pub const ENTRIES_PER_TABLE: usize = 512;

/// Bits that identify what a present entry translates to; A and D may change
/// under a cached translation without changing what it means.
pub(crate) const PTE_IDENTITY_MASK: u64 =
    PTE_ADDR_MASK | PTE_READ | PTE_WRITE | PTE_PAGE_SIZE | PTE_SNOOP;

#[inline]
pub(crate) fn is_present(pte: u64) -> bool {
    pte & (PTE_READ | PTE_WRITE) != 0
}

/// Is a present entry at `level` a leaf (level 1, or PS set)?
#[inline]
pub(crate) fn is_leaf(pte: u64, level: u32) -> bool {
    level == 1 || pte & PTE_PAGE_SIZE != 0
}

/// Bytes covered by one entry at `level` (1 = 4 KiB, 2 = 2 MiB, ...).
#[inline]
pub(crate) const fn level_size(level: u32) -> u64 {
    1u64 << level_shift(level)
}

#[inline]
pub(crate) const fn level_shift(level: u32) -> u32 {
    12 + 9 * (level - 1)
}

/// Index of `iova` in a table at `level`.
#[inline]
pub(crate) fn level_index(iova: u64, level: u32) -> usize {
    ((iova >> level_shift(level)) as usize) & (ENTRIES_PER_TABLE - 1)
}

/// A non-leaf entry pointing at table `table` (an arena index).
#[inline]
pub(crate) fn table_entry(table: u64) -> u64 {
    ((table << 12) & PTE_ADDR_MASK) | PTE_READ | PTE_WRITE
}

/// The arena index a non-leaf entry points at.
#[inline]
pub(crate) fn entry_table(pte: u64) -> u64 {
    (pte & PTE_ADDR_MASK) >> 12
}

/// One 4 KiB table of 512 entries.
pub(crate) struct Table {
    pub(crate) entries: [AtomicU64; ENTRIES_PER_TABLE],
}

impl Table {
    fn new() -> Self {
        Table {
            entries: [const { AtomicU64::new(0) }; ENTRIES_PER_TABLE],
        }
    }

    #[inline]
    pub(crate) fn entry(&self, index: usize) -> &AtomicU64 {
        &self.entries[index & (ENTRIES_PER_TABLE - 1)]
    }

    pub(crate) fn clear(&self) {
        for e in &self.entries {
            e.store(0, Ordering::Relaxed);
        }
    }
}

/// Tables in segment 0; segment `s` holds `FIRST_SEGMENT << s` tables.
const FIRST_SEGMENT: u64 = 16;
/// 16 * (2^30 - 1) tables: ~64 TiB of tables, far beyond any real use.
const SEGMENTS: usize = 30;

/// IOMMU-private memory for page tables: table `i` lives at "address"
/// `i << 12`, which is what non-leaf entries hold.
///
/// Segments double in size and never move once allocated, so a lock-free
/// walker can hold `&Table` while a writer allocates more tables. Allocation
/// is done by the domain's writer (under its lock); readers only look up.
pub(crate) struct TableArena {
    segments: [OnceLock<Box<[Table]>>; SEGMENTS],
}

/// (segment, offset in segment) of table `index`. Only meaningful for
/// indices below [`TableArena::CAPACITY`]; larger ones give a segment
/// number past the end, which lookups treat as absent.
#[inline]
fn locate(index: u64) -> (usize, usize) {
    let q = index / FIRST_SEGMENT + 1;
    let segment = 63 - q.leading_zeros();
    let first = FIRST_SEGMENT.wrapping_mul((1u64 << segment) - 1);
    (segment as usize, index.wrapping_sub(first) as usize)
}

impl TableArena {
    pub(crate) fn new() -> Self {
        TableArena {
            segments: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Number of table slots the arena can ever hold.
    pub(crate) const CAPACITY: u64 = FIRST_SEGMENT * ((1u64 << SEGMENTS) - 1);

    /// The table at `index`, if its segment exists.
    #[inline]
    pub(crate) fn get(&self, index: u64) -> Option<&Table> {
        let (segment, offset) = locate(index);
        self.segments.get(segment)?.get()?.get(offset)
    }

    /// The table at `index`, allocating its segment if needed. `None` when
    /// `index` is beyond the arena.
    pub(crate) fn get_or_alloc(&self, index: u64) -> Option<&Table> {
        if index >= Self::CAPACITY {
            return None;
        }
        let (segment, offset) = locate(index);
        let len = (FIRST_SEGMENT << segment) as usize;
        self.segments
            .get(segment)?
            .get_or_init(|| std::iter::repeat_with(Table::new).take(len).collect())
            .get(offset)
    }

    /// Bytes of table memory allocated.
    pub(crate) fn allocated_bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter_map(|s| s.get())
            .map(|s| s.len() as u64 * 4096)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_covers_indices_contiguously() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(15), (0, 15));
        assert_eq!(locate(16), (1, 0));
        assert_eq!(locate(47), (1, 31));
        assert_eq!(locate(48), (2, 0));
        let mut expect = (0usize, 0usize);
        for i in 0..10_000u64 {
            let got = locate(i);
            assert_eq!(got, expect, "index {i}");
            expect.1 += 1;
            if expect.1 as u64 == FIRST_SEGMENT << expect.0 {
                expect = (expect.0 + 1, 0);
            }
        }
    }

    #[test]
    fn arena_allocates_and_finds() {
        let arena = TableArena::new();
        assert!(arena.get(0).is_none());
        assert!(arena.get_or_alloc(20).is_some());
        assert!(arena.get(20).is_some());
        assert!(arena.get(0).is_none());
        assert!(arena.get_or_alloc(TableArena::CAPACITY).is_none());
        assert!(arena.get(TableArena::CAPACITY).is_none());
        assert!(arena.get(u64::MAX).is_none());
        assert_eq!(arena.allocated_bytes(), 32 * 4096);
    }

    #[test]
    fn entry_helpers() {
        assert_eq!(level_size(1), 4096);
        assert_eq!(level_size(2), 2 << 20);
        assert_eq!(level_size(3), 1 << 30);
        assert_eq!(level_index(0x4020_3000, 1), 3);
        assert_eq!(level_index(0x4020_3000, 2), 1);
        assert_eq!(level_index(0x4020_3000, 3), 1);
        let e = table_entry(5);
        assert!(is_present(e));
        assert_eq!(entry_table(e), 5);
    }
}
