//! A domain: one second-level I/O page table, shared by the devices attached
//! to it, and the memory its translations reach.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::config::{AddressWidth, SIZE_1G, SIZE_2M};
use crate::error::Error;
use crate::memory::PhysMemory;
use crate::pte::{
    entry_table, is_leaf, is_present, level_index, level_size, table_entry, TableArena,
    PTE_ACCESSED, PTE_ADDR_MASK, PTE_DIRTY, PTE_PAGE_SIZE, PTE_READ, PTE_SNOOP, PTE_WRITE,
};
use crate::unit::Iommu;

/// The root table is the first table of the arena.
const ROOT_TABLE: u64 = 0;
const PAGE_MASK: u64 = 0xfff;
/// Physical addresses must fit bits 51:12.
const MAX_PHYS: u64 = (1u64 << 52) - 1;

/// Access rights of a mapping, from the device's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Prot {
    /// Devices may read.
    pub read: bool,
    /// Devices may write.
    pub write: bool,
}

impl Prot {
    /// Read only.
    pub const READ: Prot = Prot {
        read: true,
        write: false,
    };
    /// Write only.
    pub const WRITE: Prot = Prot {
        read: false,
        write: true,
    };
    /// Read and write.
    pub const RW: Prot = Prot {
        read: true,
        write: true,
    };
}

/// One page-table entry as [`Domain::decode`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PteInfo {
    /// Table level: 1 holds 4 KiB leaves, 2 holds 2 MiB leaves or level-1
    /// tables, 3 holds 1 GiB leaves or level-2 tables, 4 is the 48-bit root.
    pub level: u32,
    /// IOMMU-private address of the table holding the entry.
    pub table: u64,
    /// Index of the entry in its table (0..512).
    pub index: u16,
    /// First IOVA the entry covers.
    pub iova: u64,
    /// Bytes the entry covers.
    pub size: u64,
    /// The raw 64-bit entry.
    pub raw: u64,
    /// R bit.
    pub read: bool,
    /// W bit.
    pub write: bool,
    /// PS bit: a super-page leaf.
    pub page_size: bool,
    /// A (accessed) bit.
    pub accessed: bool,
    /// D (dirty) bit.
    pub dirty: bool,
    /// SNP (snoop) bit.
    pub snoop: bool,
    /// Bits 51:12: page frame (leaf) or next table address.
    pub addr: u64,
    /// Leaf (translates to memory) rather than a pointer to a table.
    pub leaf: bool,
}

impl fmt::Display for PteInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |set: bool, c: char| if set { c } else { '-' };
        write!(
            f,
            "L{} {:#014x}[{:3}] iova {:#014x} {} {}{}{}{}{}{} {:#018x} -> {:#x}",
            self.level,
            self.table,
            self.index,
            self.iova,
            if self.leaf {
                match self.size {
                    SIZE_1G => "1G  ",
                    SIZE_2M => "2M  ",
                    _ => "4K  ",
                }
            } else {
                "tbl "
            },
            flag(self.read, 'R'),
            flag(self.write, 'W'),
            flag(self.page_size, 'P'),
            flag(self.accessed, 'A'),
            flag(self.dirty, 'D'),
            flag(self.snoop, 'S'),
            self.raw,
            self.addr
        )
    }
}

/// Page-table memory of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableStats {
    /// Tables handed out (in use, free or retired).
    pub allocated: u64,
    /// Tables ready for reuse.
    pub free: u64,
    /// Tables replaced by a super page, reusable after the next flush.
    pub retired: u64,
    /// Bytes of table memory the arena holds.
    pub arena_bytes: u64,
}

/// State only map/unmap and the other writers touch, under the domain lock.
struct Writer {
    next_table: u64,
    free: Vec<u64>,
    retired: Vec<u64>,
    leaves: [u64; 3],
}

/// A leaf found by a page walk.
pub(crate) struct Leaf<'a> {
    pub(crate) entry: &'a AtomicU64,
    pub(crate) value: u64,
    pub(crate) level: u32,
}

static NEXT_DOMAIN_ID: AtomicU32 = AtomicU32::new(1);

/// An I/O page table and the memory its translations reach.
///
/// Writers (`map`, `unmap`, `read_and_clear_dirty`, `decode`) serialize on a
/// per-domain lock; device page walks take no lock (see the crate docs).
pub struct Domain {
    id: u32,
    width: AddressWidth,
    levels: u32,
    pgsizes: u64,
    snoop: bool,
    mem: Arc<dyn PhysMemory>,
    arena: TableArena,
    writer: Mutex<Writer>,
    /// Tables waiting in `Writer::retired` (read without the lock by flush).
    retired_tables: AtomicUsize,
    /// Units that may cache this domain's translations: the creator, and
    /// every other unit a device attached it on.
    owner: Weak<Iommu>,
    others: Mutex<Vec<Weak<Iommu>>>,
    has_others: AtomicBool,
    /// Size codes (bit n = code n: 4K, 2M, 1G) of every leaf size this
    /// domain has ever written. Only those can be in an IOTLB for it, so a
    /// range flush probes those sizes only (a 4 KiB unmap in a domain of 4 KiB
    /// leaves probes one set, not three). Never cleared: an entry may outlive
    /// its leaf until the flush that follows the unmap.
    leaf_codes: AtomicU32,
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Domain")
            .field("id", &self.id)
            .field("width", &self.width)
            .field("pgsizes", &format_args!("{:#x}", self.pgsizes))
            .field("snoop", &self.snoop)
            .finish_non_exhaustive()
    }
}

impl Domain {
    pub(crate) fn new(
        width: AddressWidth,
        pgsizes: u64,
        snoop: bool,
        mem: Arc<dyn PhysMemory>,
        owner: Weak<Iommu>,
    ) -> Result<Self, Error> {
        let id = NEXT_DOMAIN_ID
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |id| id.checked_add(1))
            .map_err(|_| Error::NoMem)?;
        let arena = TableArena::new();
        arena.get_or_alloc(ROOT_TABLE).ok_or(Error::NoMem)?;
        Ok(Domain {
            id,
            width,
            levels: width.levels(),
            pgsizes,
            snoop,
            mem,
            arena,
            writer: Mutex::new(Writer {
                next_table: ROOT_TABLE + 1,
                free: Vec::new(),
                retired: Vec::new(),
                leaves: [0; 3],
            }),
            retired_tables: AtomicUsize::new(0),
            owner,
            others: Mutex::new(Vec::new()),
            has_others: AtomicBool::new(false),
            leaf_codes: AtomicU32::new(1),
        })
    }

    /// Domain id (the VT-d DID that tags IOTLB entries), unique in the process.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The domain's address width.
    pub fn address_width(&self) -> AddressWidth {
        self.width
    }

    /// Page sizes this domain maps (bit n = 2^n bytes).
    pub fn pgsize_bitmap(&self) -> u64 {
        self.pgsizes
    }

    /// Inclusive aperture `(0, 2^width - 1)`.
    pub fn aperture(&self) -> (u64, u64) {
        (0, self.width.max_iova())
    }

    /// Leaves carry SNP: no-snoop DMA is blocked (VFIO_DMA_CC_IOMMU).
    pub fn enforce_cache_coherency(&self) -> bool {
        self.snoop
    }

    /// The memory translated DMA reaches.
    pub fn memory(&self) -> &Arc<dyn PhysMemory> {
        &self.mem
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Can `level` hold leaves?
    fn leaf_level(&self, level: u32) -> bool {
        match level {
            1 => true,
            2 => self.pgsizes & SIZE_2M != 0,
            3 => self.pgsizes & SIZE_1G != 0,
            _ => false,
        }
    }

    /// IOTLB page-size codes this domain may hold (bit n = level n + 1).
    pub(crate) fn size_codes(&self) -> u32 {
        1 | u32::from(self.pgsizes & SIZE_2M != 0) << 1
            | u32::from(self.pgsizes & SIZE_1G != 0) << 2
    }

    pub(crate) fn add_unit(&self, unit: Weak<Iommu>) {
        if unit.ptr_eq(&self.owner) {
            return;
        }
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        others.retain(|u| u.strong_count() > 0);
        if !others.iter().any(|u| u.ptr_eq(&unit)) {
            others.push(unit);
        }
        self.has_others.store(true, Ordering::Release);
    }

    /// Calls `f` on every live unit that may cache this domain.
    fn for_each_unit(&self, mut f: impl FnMut(&Iommu)) {
        if let Some(owner) = self.owner.upgrade() {
            f(&owner);
        }
        if self.has_others.load(Ordering::Acquire) {
            let others: Vec<Arc<Iommu>> = {
                let others = self.others.lock().unwrap_or_else(|e| e.into_inner());
                others.iter().filter_map(Weak::upgrade).collect()
            };
            for unit in &others {
                f(unit);
            }
        }
    }

    // ---- map -------------------------------------------------------------

    /// Maps `[iova, iova + size)` to `[phys, phys + size)`, each step with the
    /// largest page (1G, 2M, 4K) that the alignment of `iova` and `phys` and
    /// the remaining size allow. Fails without changing anything if any part
    /// is already mapped.
    pub fn map(&self, iova: u64, phys: u64, size: u64, prot: Prot) -> Result<(), Error> {
        self.map_capped(iova, phys, size, prot, u64::MAX)
    }

    /// [`Domain::map`] with no page larger than `max_page`: one call maps
    /// a stretch of pages of one size (a pin's runs of 2M pages, or of 4K
    /// pages that are not physically contiguous) with the leaves that one
    /// call per page would give, under one lock.
    pub fn map_capped(
        &self,
        iova: u64,
        phys: u64,
        size: u64,
        prot: Prot,
        max_page: u64,
    ) -> Result<(), Error> {
        if (iova | phys | size) & PAGE_MASK != 0 {
            return Err(Error::Misaligned { iova, phys, size });
        }
        if size == 0 {
            return Ok(());
        }
        if !prot.read && !prot.write {
            return Err(Error::NoAccess);
        }
        let max_iova = self.width.max_iova();
        match iova.checked_add(size - 1) {
            Some(last) if last <= max_iova => {}
            _ => {
                return Err(Error::OutOfRange {
                    iova,
                    size,
                    max_iova,
                })
            }
        }
        match phys.checked_add(size - 1) {
            Some(last) if last <= MAX_PHYS => {}
            _ => return Err(Error::PhysTooLarge { phys }),
        }
        let mut bits = 0;
        if prot.read {
            bits |= PTE_READ;
        }
        if prot.write {
            bits |= PTE_WRITE;
        }
        if self.snoop {
            bits |= PTE_SNOOP;
        }
        let end = iova + size;
        let mut cur_iova = iova;
        let mut cur_phys = phys;
        let mut st = self.lock();
        let result = self.map_level(
            &mut st,
            ROOT_TABLE,
            self.levels,
            &mut cur_iova,
            &mut cur_phys,
            end,
            (bits, max_page),
        );
        if result.is_err() && cur_iova > iova {
            // Undo: everything in [iova, cur_iova) was installed by this call.
            let mut undo = iova;
            let mut removed = 0;
            self.unmap_level(
                &mut st,
                ROOT_TABLE,
                self.levels,
                &mut undo,
                cur_iova,
                &mut removed,
            );
            drop(st);
            // A device may have used the partial mapping already.
            self.flush_range(iova, cur_iova - iova);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn map_level(
        &self,
        st: &mut Writer,
        table: u64,
        level: u32,
        iova: &mut u64,
        phys: &mut u64,
        end: u64,
        (bits, max_page): (u64, u64),
    ) -> Result<(), Error> {
        let t = self.arena.get(table).ok_or(Error::NoMem)?;
        let size = level_size(level);
        let leaf_here = self.leaf_level(level) && size <= max_page;
        while *iova < end {
            let entry = t.entry(level_index(*iova, level));
            let cur = entry.load(Ordering::Acquire);
            if leaf_here && (*iova | *phys) & (size - 1) == 0 && end - *iova >= size {
                if is_present(cur) {
                    if is_leaf(cur, level) || !self.subtree_empty(entry_table(cur), level - 1) {
                        return Err(Error::AlreadyMapped { iova: *iova });
                    }
                    // Old small-page tables make room for the super page
                    // (as intel-iommu does); walkers may still be inside them.
                    self.retire_subtree(st, entry_table(cur), level - 1);
                    self.retired_tables
                        .store(st.retired.len(), Ordering::Relaxed);
                }
                let ps = if level > 1 { PTE_PAGE_SIZE } else { 0 };
                // Before the leaf is visible, so that a flush that may meet
                // an IOTLB entry of this size probes for it. A plain load
                // first: the bit is almost always set already, and a locked
                // RMW per leaf costs a 1 TiB map of 2M pages milliseconds.
                let code = 1 << (level - 1);
                if self.leaf_codes.load(Ordering::Relaxed) & code == 0 {
                    self.leaf_codes.fetch_or(code, Ordering::Release);
                }
                entry.store((*phys & PTE_ADDR_MASK) | bits | ps, Ordering::Release);
                if let Some(count) = st.leaves.get_mut((level - 1) as usize) {
                    *count += 1;
                }
                *iova += size;
                *phys += size;
            } else {
                if level == 1 {
                    // Unreachable: 4 KiB alignment was checked by map().
                    return Err(Error::Misaligned {
                        iova: *iova,
                        phys: *phys,
                        size: end - *iova,
                    });
                }
                let child = if is_present(cur) {
                    if is_leaf(cur, level) {
                        return Err(Error::AlreadyMapped { iova: *iova });
                    }
                    entry_table(cur)
                } else {
                    let child = self.alloc_table(st)?;
                    entry.store(table_entry(child), Ordering::Release);
                    child
                };
                let span_end = (*iova & !(size - 1)) + size;
                self.map_level(
                    st,
                    child,
                    level - 1,
                    iova,
                    phys,
                    end.min(span_end),
                    (bits, max_page),
                )?;
            }
        }
        Ok(())
    }

    fn alloc_table(&self, st: &mut Writer) -> Result<u64, Error> {
        if let Some(index) = st.free.pop() {
            if let Some(t) = self.arena.get(index) {
                t.clear();
                return Ok(index);
            }
        }
        let index = st.next_table;
        self.arena.get_or_alloc(index).ok_or(Error::NoMem)?;
        st.next_table += 1;
        Ok(index)
    }

    /// Does the table at `level` (and everything below it) map nothing?
    fn subtree_empty(&self, table: u64, level: u32) -> bool {
        let Some(t) = self.arena.get(table) else {
            return true;
        };
        t.entries.iter().all(|e| {
            let v = e.load(Ordering::Acquire);
            !is_present(v) || (!is_leaf(v, level) && self.subtree_empty(entry_table(v), level - 1))
        })
    }

    fn retire_subtree(&self, st: &mut Writer, table: u64, level: u32) {
        if level > 1 {
            if let Some(t) = self.arena.get(table) {
                for e in &t.entries {
                    let v = e.load(Ordering::Acquire);
                    if is_present(v) && !is_leaf(v, level) {
                        self.retire_subtree(st, entry_table(v), level - 1);
                    }
                }
            }
        }
        st.retired.push(table);
    }

    // ---- unmap -----------------------------------------------------------

    /// Removes leaves starting at `iova`, with Linux `iommu_unmap`'s contract:
    /// a super page that is hit is removed whole (so the count may exceed
    /// `size`), and the walk stops at the first hole. Returns the bytes
    /// unmapped; 0 when `iova` or `size` is not 4 KiB aligned. Does not
    /// invalidate the IOTLB: call [`Domain::flush_range`] before reusing the
    /// memory.
    pub fn unmap(&self, iova: u64, size: u64) -> u64 {
        let max_iova = self.width.max_iova();
        if (iova | size) & PAGE_MASK != 0 || size == 0 || iova > max_iova {
            return 0;
        }
        let end = iova.saturating_add(size).min(max_iova + 1);
        let mut cur = iova;
        let mut unmapped = 0;
        let mut st = self.lock();
        self.unmap_level(
            &mut st,
            ROOT_TABLE,
            self.levels,
            &mut cur,
            end,
            &mut unmapped,
        );
        unmapped
    }

    /// Returns false when it stopped at a hole.
    fn unmap_level(
        &self,
        st: &mut Writer,
        table: u64,
        level: u32,
        iova: &mut u64,
        end: u64,
        unmapped: &mut u64,
    ) -> bool {
        let Some(t) = self.arena.get(table) else {
            return false;
        };
        let size = level_size(level);
        while *iova < end {
            let entry = t.entry(level_index(*iova, level));
            let cur = entry.load(Ordering::Acquire);
            if !is_present(cur) {
                return false;
            }
            let base = *iova & !(size - 1);
            if is_leaf(cur, level) {
                entry.store(0, Ordering::Release);
                if let Some(count) = st.leaves.get_mut((level - 1) as usize) {
                    *count = count.saturating_sub(1);
                }
                *unmapped += size;
                *iova = base + size;
            } else if !self.unmap_level(
                st,
                entry_table(cur),
                level - 1,
                iova,
                end.min(base + size),
                unmapped,
            ) {
                return false;
            }
        }
        true
    }

    // ---- flush -----------------------------------------------------------

    /// Invalidates this domain's IOTLB entries that overlap
    /// `[iova, iova + size)` on every unit that may cache them, and returns
    /// when no DMA that translated through them is still in flight.
    pub fn flush_range(&self, iova: u64, size: u64) {
        let end = iova.saturating_add(size);
        let codes = self.size_codes() & self.leaf_codes.load(Ordering::Acquire);
        self.flush(|unit| unit.invalidate_range_nowait(self.id, iova, end, codes));
    }

    /// Domain-selective invalidation, then waits for in-flight DMA.
    pub fn flush_all(&self) {
        self.flush(|unit| unit.invalidate_domain_nowait(self.id));
    }

    fn flush(&self, invalidate: impl Fn(&Iommu)) {
        // Tables retired before this point are reusable once every walker
        // that may have entered them is done, i.e. after the wait below.
        // (Tables retired after the check wait for the next flush.)
        let retired = if self.retired_tables.load(Ordering::Relaxed) > 0 {
            let mut st = self.lock();
            self.retired_tables.store(0, Ordering::Relaxed);
            std::mem::take(&mut st.retired)
        } else {
            Vec::new()
        };
        self.for_each_unit(&invalidate);
        self.for_each_unit(|unit| unit.synchronize());
        if !retired.is_empty() {
            self.lock().free.extend(retired);
        }
    }

    // ---- queries -----------------------------------------------------------

    /// Page walk. With `set_accessed`, sets A on the non-leaf entries used
    /// (what the hardware does); the leaf's A/D are the caller's business.
    #[inline]
    pub(crate) fn walk(&self, iova: u64, set_accessed: bool) -> Option<Leaf<'_>> {
        let mut table = self.arena.get(ROOT_TABLE)?;
        let mut level = self.levels;
        loop {
            let entry = table.entry(level_index(iova, level));
            let value = entry.load(Ordering::Acquire);
            if !is_present(value) {
                return None;
            }
            if is_leaf(value, level) {
                if level > 3 || !self.leaf_level(level) {
                    return None;
                }
                return Some(Leaf {
                    entry,
                    value,
                    level,
                });
            }
            if set_accessed && value & PTE_ACCESSED == 0 {
                // CAS, not fetch_or: never set bits in an entry that changed.
                let _ = entry.compare_exchange(
                    value,
                    value | PTE_ACCESSED,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            table = self.arena.get(entry_table(value))?;
            level -= 1;
        }
    }

    /// Current translation of `iova` by a page walk (no IOTLB, no A/D).
    pub fn iova_to_phys(&self, iova: u64) -> Option<u64> {
        if iova > self.width.max_iova() {
            return None;
        }
        let leaf = self.walk(iova, false)?;
        let size = level_size(leaf.level);
        Some((leaf.value & PTE_ADDR_MASK & !(size - 1)) | (iova & (size - 1)))
    }

    /// Leaf entries per page size: `(4K, 2M, 1G)`.
    pub fn leaf_counts(&self) -> (u64, u64, u64) {
        let st = self.lock();
        (st.leaves[0], st.leaves[1], st.leaves[2])
    }

    /// Bytes mapped (sum of leaf sizes).
    pub fn mapped_bytes(&self) -> u64 {
        let (a, b, c) = self.leaf_counts();
        a * level_size(1) + b * level_size(2) + c * level_size(3)
    }

    /// Page-table counts, for tests and `inspect`.
    pub fn table_stats(&self) -> TableStats {
        let st = self.lock();
        TableStats {
            allocated: st.next_table,
            free: st.free.len() as u64,
            retired: st.retired.len() as u64,
            arena_bytes: self.arena.allocated_bytes(),
        }
    }

    /// Every present entry, table by table in IOVA order (a table's entry
    /// comes before the entries of the table it points to).
    pub fn decode(&self) -> Vec<PteInfo> {
        self.decode_range(0, u64::MAX)
    }

    /// The entries of [`Domain::decode`] that cover any of `[iova, iova + size)`.
    pub fn decode_range(&self, iova: u64, size: u64) -> Vec<PteInfo> {
        let end = iova.saturating_add(size);
        let _st = self.lock();
        let mut out = Vec::new();
        if size > 0 {
            self.decode_table(ROOT_TABLE, self.levels, 0, (iova, end), &mut out);
        }
        out
    }

    fn decode_table(
        &self,
        table: u64,
        level: u32,
        base: u64,
        (start, end): (u64, u64),
        out: &mut Vec<PteInfo>,
    ) {
        let Some(t) = self.arena.get(table) else {
            return;
        };
        let size = level_size(level);
        for (index, e) in t.entries.iter().enumerate() {
            let iova = base + index as u64 * size;
            if iova >= end || iova + size <= start {
                continue;
            }
            let raw = e.load(Ordering::Acquire);
            if !is_present(raw) {
                continue;
            }
            let leaf = is_leaf(raw, level);
            out.push(PteInfo {
                level,
                table: table << 12,
                index: index as u16,
                iova,
                size,
                raw,
                read: raw & PTE_READ != 0,
                write: raw & PTE_WRITE != 0,
                page_size: raw & PTE_PAGE_SIZE != 0,
                accessed: raw & PTE_ACCESSED != 0,
                dirty: raw & PTE_DIRTY != 0,
                snoop: raw & PTE_SNOOP != 0,
                addr: raw & PTE_ADDR_MASK,
                leaf,
            });
            if !leaf {
                self.decode_table(entry_table(raw), level - 1, iova, (start, end), out);
            }
        }
    }

    /// Dump of [`Domain::decode`], one entry a line.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for pte in self.decode() {
            s.push_str(&pte.to_string());
            s.push('\n');
        }
        s
    }

    // ---- dirty tracking ----------------------------------------------------

    /// Clears the D bit of every leaf in `[iova, iova + size)` and calls
    /// `dirty` with the IOVA of each 4 KiB page of each leaf that was dirty (a
    /// dirty super page reports all its pages, also those outside the range).
    /// Then invalidates the affected IOTLB entries, so the next write sets D
    /// again, and waits for in-flight DMA, so a write that raced with the
    /// clearing has landed (and was reported) when this returns.
    ///
    /// `dirty` runs under the domain lock: it must not call back into the domain.
    pub fn read_and_clear_dirty(&self, iova: u64, size: u64, dirty: &mut dyn FnMut(u64)) {
        let max_iova = self.width.max_iova();
        if size == 0 || iova > max_iova {
            return;
        }
        let start = iova & !PAGE_MASK;
        let end = iova.saturating_add(size).min(max_iova + 1);
        let mut cleared: Option<(u64, u64)> = None;
        {
            let _st = self.lock();
            self.dirty_table(ROOT_TABLE, self.levels, start, end, dirty, &mut cleared);
        }
        if let Some((lo, hi)) = cleared {
            self.flush_range(lo, hi - lo);
        }
    }

    fn dirty_table(
        &self,
        table: u64,
        level: u32,
        start: u64,
        end: u64,
        dirty: &mut dyn FnMut(u64),
        cleared: &mut Option<(u64, u64)>,
    ) {
        let Some(t) = self.arena.get(table) else {
            return;
        };
        let size = level_size(level);
        let mut iova = start;
        while iova < end {
            let base = iova & !(size - 1);
            let entry = t.entry(level_index(iova, level));
            let v = entry.load(Ordering::Acquire);
            if is_present(v) {
                if is_leaf(v, level) {
                    if v & PTE_DIRTY != 0 {
                        let old = entry.fetch_and(!PTE_DIRTY, Ordering::SeqCst);
                        if old & PTE_DIRTY != 0 {
                            let mut page = base;
                            while page < base + size {
                                dirty(page);
                                page += level_size(1);
                            }
                            let (lo, hi) = cleared.get_or_insert((base, base + size));
                            *lo = (*lo).min(base);
                            *hi = (*hi).max(base + size);
                        }
                    }
                } else {
                    self.dirty_table(
                        entry_table(v),
                        level - 1,
                        iova,
                        end.min(base + size),
                        dirty,
                        cleared,
                    );
                }
            }
            iova = base + size;
        }
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        // Nobody can translate through this domain any more; free the IOTLB
        // capacity its entries hold.
        let id = self.id;
        self.for_each_unit(|unit| unit.drop_domain_entries(id));
    }
}
