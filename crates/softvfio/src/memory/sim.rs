//! A simulated address space, for tests at TiB scale.
//!
//! Regions of 4K, 2M or 1G pages are declared with [`SimMemory::add_region`];
//! nothing backs them until bytes are written (a sparse page store, zero when
//! never written). Memory use is proportional to the number of regions,
//! pinned intervals and written pages, never to the size of the space, so a
//! test can map several TiB.
//!
//! Pinning follows the same rules as the host backend: the access asked for
//! must be allowed (else [`MemError::Fault`]) and there is one pin operation
//! per huge page. Simulated memory is physically contiguous wherever it is
//! virtually contiguous, so touching pages of one size that allow the access
//! are reported as one run (base pages over touching regions, huge pages of
//! one size over touching regions of that size): a TiB of 2M pages is one
//! run, not half a million. [`SimMemory::fail_nth_pin`] injects a failure at
//! a chosen pin operation to exercise rollback.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use thiserror::Error;

use super::interval::PinCounts;
use super::{LockPolicy, MemError, PinStats, PinnedRun, UserMemory, PAGE_SHIFT, PAGE_SIZE};
use crate::account::MmAccount;
use crate::iommu::Prot;

/// Page sizes a region may use.
pub const SIZE_4K: u64 = 4 << 10;
/// A 2 MiB page.
pub const SIZE_2M: u64 = 2 << 20;
/// A 1 GiB page.
pub const SIZE_1G: u64 = 1 << 30;

const PAGE: usize = PAGE_SIZE as usize;

/// Why a region could not be added or removed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RegionError {
    #[error("page size {0:#x} is not 4K, 2M or 1G")]
    /// The page size is not 4K, 2M or 1G.
    BadPageSize(u64),
    #[error("start or length is not aligned to the page size, or is empty")]
    /// Start or length not aligned to the page size, or empty.
    Misaligned,
    #[error("the region overlaps an existing one or wraps the address space")]
    /// Overlaps a region or wraps the address space.
    Overlap,
}

#[derive(Debug, Clone, Copy)]
struct Region {
    end: u64,
    page_size: u64,
    prot: Prot,
}

/// A region as reported by [`SimMemory::regions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimRegion {
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Size of its pages.
    pub page_size: u64,
    /// What user accesses it allows.
    pub prot: Prot,
}

#[derive(Debug)]
struct State {
    regions: BTreeMap<u64, Region>,
    counts: PinCounts,
    /// Written pages, by page number.
    store: BTreeMap<u64, Box<[u8; PAGE]>>,
    /// Pin operations still to succeed before the injected failure.
    fail_after: Option<u64>,
    pin_ops: u64,
    unpin_ops: u64,
    policy: LockPolicy,
}

/// Simulated user memory. See the module documentation.
#[derive(Debug)]
pub struct SimMemory {
    state: Mutex<State>,
    account: Arc<MmAccount>,
}

impl Default for SimMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl SimMemory {
    /// An empty address space; the caller has CAP_IPC_LOCK and no limit.
    pub fn new() -> Self {
        SimMemory {
            state: Mutex::new(State {
                regions: BTreeMap::new(),
                counts: PinCounts::new(),
                store: BTreeMap::new(),
                fail_after: None,
                pin_ops: 0,
                unpin_ops: 0,
                policy: LockPolicy {
                    cap_ipc_lock: true,
                    limit_pages: u64::MAX,
                },
            }),
            account: Arc::new(MmAccount::new()),
        }
    }

    /// Shares `account` (several simulated spaces standing for one mm).
    pub fn with_account(mut self, account: Arc<MmAccount>) -> Self {
        self.account = account;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in another thread cannot leave the state half-updated in a
        // way that matters more than losing the whole backend would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Maps `[start, start + len)` with pages of `page_size` (4K, 2M or 1G)
    /// and access `prot` (no read and no write stands for PROT_NONE).
    pub fn add_region(
        &self,
        start: u64,
        len: u64,
        page_size: u64,
        prot: Prot,
    ) -> Result<(), RegionError> {
        if ![SIZE_4K, SIZE_2M, SIZE_1G].contains(&page_size) {
            return Err(RegionError::BadPageSize(page_size));
        }
        if len == 0 || !start.is_multiple_of(page_size) || !len.is_multiple_of(page_size) {
            return Err(RegionError::Misaligned);
        }
        let end = start.checked_add(len).ok_or(RegionError::Overlap)?;
        let mut st = self.lock();
        let before = st.regions.range(..end).next_back();
        if matches!(before, Some((_, r)) if r.end > start) {
            return Err(RegionError::Overlap);
        }
        st.regions.insert(
            start,
            Region {
                end,
                page_size,
                prot,
            },
        );
        Ok(())
    }

    /// Unmaps `[start, start + len)` as munmap would: regions are cut or
    /// removed and their bytes dropped; later pins, reads and writes there
    /// fault. Pins already taken stay counted until unpinned. Huge-page
    /// regions can only be cut at their page boundaries.
    pub fn remove_region(&self, start: u64, len: u64) -> Result<(), RegionError> {
        if len == 0 || !start.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(RegionError::Misaligned);
        }
        let end = start.checked_add(len).ok_or(RegionError::Overlap)?;
        let mut st = self.lock();
        let hit: Vec<(u64, Region)> = overlapping(&st.regions, start, end);
        if hit.iter().any(|&(s, r)| {
            (start > s && !start.is_multiple_of(r.page_size))
                || (end < r.end && !end.is_multiple_of(r.page_size))
        }) {
            return Err(RegionError::Misaligned);
        }
        for (s, r) in hit {
            st.regions.remove(&s);
            if s < start {
                st.regions.insert(s, Region { end: start, ..r });
            }
            if r.end > end {
                st.regions.insert(end, r);
            }
        }
        let pages: Vec<u64> = st
            .store
            .range(start >> PAGE_SHIFT..end >> PAGE_SHIFT)
            .map(|(&p, _)| p)
            .collect();
        for p in pages {
            st.store.remove(&p);
        }
        Ok(())
    }

    /// The regions, in address order.
    pub fn regions(&self) -> Vec<SimRegion> {
        self.lock()
            .regions
            .iter()
            .map(|(&start, r)| SimRegion {
                start,
                len: r.end - start,
                page_size: r.page_size,
                prot: r.prot,
            })
            .collect()
    }

    /// Makes the `n`-th pin operation from now (1 = the next one) fail with
    /// [`MemError::Injected`]; it fires once. `n == 0` cancels.
    pub fn fail_nth_pin(&self, n: u64) {
        self.lock().fail_after = n.checked_sub(1);
    }

    /// Sets what [`UserMemory::lock_policy`] reports.
    pub fn set_lock_policy(&self, policy: LockPolicy) {
        self.lock().policy = policy;
    }

    /// Pin count of the base page holding `addr`.
    pub fn pin_count(&self, addr: u64) -> u64 {
        self.lock().counts.count_at(addr - addr % PAGE_SIZE)
    }

    /// Entries in the pin-count map (tracking cost).
    pub fn tracked_segments(&self) -> usize {
        self.lock().counts.segments()
    }

    /// Pages the byte store holds (written pages).
    pub fn stored_pages(&self) -> usize {
        self.lock().store.len()
    }
}

fn overlapping(regions: &BTreeMap<u64, Region>, start: u64, end: u64) -> Vec<(u64, Region)> {
    let first = match regions.range(..=start).next_back() {
        Some((&s, r)) if r.end > start => s,
        _ => start,
    };
    regions.range(first..end).map(|(&s, &r)| (s, r)).collect()
}

fn allows(prot: Prot, write: bool) -> bool {
    if write {
        prot.write
    } else {
        prot.read
    }
}

/// `vaddr + len` for a page-aligned, non-empty range that does not wrap.
fn range_end(vaddr: u64, len: u64) -> Option<u64> {
    if len == 0 || !vaddr.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
        return None;
    }
    vaddr.checked_add(len)
}

/// The runs of one pin, the first kept inline: most pins are one run, and
/// a Vec would cost an allocation per 4 KiB map.
#[derive(Default)]
struct Runs {
    first: Option<PinnedRun>,
    rest: Vec<PinnedRun>,
}

impl Runs {
    fn push(&mut self, run: PinnedRun) {
        if self.first.is_none() {
            self.first = Some(run);
        } else {
            self.rest.push(run);
        }
    }

    fn into_iter(self) -> impl Iterator<Item = PinnedRun> {
        self.first.into_iter().chain(self.rest)
    }
}

impl State {
    fn region_at(&self, addr: u64) -> Option<(u64, Region)> {
        let (&s, &r) = self.regions.range(..=addr).next_back()?;
        (r.end > addr).then_some((s, r))
    }

    /// Decides at the head, from the first page, how far the run starting at
    /// `cur` goes: over every touching region of the same page size that
    /// allows the access (as if physically contiguous).
    fn run_at(&self, cur: u64, end: u64, write: bool) -> Result<PinnedRun, MemError> {
        let (_, r) = self.region_at(cur).ok_or(MemError::Fault)?;
        if !allows(r.prot, write) {
            return Err(MemError::Fault);
        }
        let mut e = r.end;
        while e < end {
            match self.regions.get(&e) {
                Some(n) if n.page_size == r.page_size && allows(n.prot, write) => e = n.end,
                _ => break,
            }
        }
        Ok(PinnedRun {
            vaddr: cur,
            len: e.min(end) - cur,
            page_size: r.page_size,
            pfn: None,
        })
    }

    /// Counts `ops` pin operations against an injected failure: how many of
    /// them succeed before it fires (`ops` when it does not fire in them).
    fn ops_before_injection(&mut self, ops: u64) -> u64 {
        match self.fail_after {
            Some(n) if n < ops => {
                self.fail_after = None;
                n
            }
            Some(n) => {
                self.fail_after = Some(n - ops);
                ops
            }
            None => ops,
        }
    }

    /// Pins run by run, one pin operation per huge page (per run of base
    /// pages); on failure unpins what this call pinned.
    fn pin_runs(&mut self, vaddr: u64, end: u64, write: bool) -> Result<Runs, MemError> {
        let mut runs = Runs::default();
        let mut cur = vaddr;
        while cur < end {
            let run = self
                .run_at(cur, end, write)
                .inspect_err(|_| self.release(vaddr, cur))?;
            let run_end = run.vaddr + run.len;
            let ops = if run.page_size > PAGE_SIZE {
                // Huge pages touched, partial ones at the edges included.
                (run_end - 1) / run.page_size - cur / run.page_size + 1
            } else {
                1
            };
            let done = self.ops_before_injection(ops);
            if done < ops {
                // The operations before the failing one ran: pin their
                // pages, then roll the whole call back.
                let ps = run.page_size;
                let upto = (cur - cur % ps + done * ps).clamp(cur, run_end);
                self.counts.add(cur, upto, ps, |_, _| {});
                self.pin_ops += done;
                self.release(vaddr, upto);
                return Err(MemError::Injected);
            }
            self.counts.add(cur, run_end, run.page_size, |_, _| {});
            self.pin_ops += ops;
            runs.push(run);
            cur = run_end;
        }
        Ok(runs)
    }

    fn release(&mut self, vaddr: u64, end: u64) {
        let ops = self.counts.unpin_runs(
            vaddr,
            end,
            PAGE_SIZE,
            |_, _, _| {},
            |a, b| tracing::warn!("sim: unpin of {a:#x}..{b:#x}, which is not pinned; ignored"),
        );
        self.unpin_ops += ops;
    }

    /// Checks that every byte of `[vaddr, vaddr + len)` is mapped with the
    /// access asked for.
    fn check_access(&self, vaddr: u64, len: u64, write: bool) -> Result<(), MemError> {
        let end = vaddr.checked_add(len).ok_or(MemError::Fault)?;
        let mut cur = vaddr;
        while cur < end {
            let (_, r) = self.region_at(cur).ok_or(MemError::Fault)?;
            if !allows(r.prot, write) {
                return Err(MemError::Fault);
            }
            cur = r.end;
        }
        Ok(())
    }
}

impl UserMemory for SimMemory {
    fn pin(
        &self,
        vaddr: u64,
        len: u64,
        write: bool,
        on_run: &mut dyn FnMut(PinnedRun) -> Result<(), MemError>,
    ) -> Result<(), MemError> {
        let end = range_end(vaddr, len).ok_or(MemError::Fault)?;
        let runs = self.lock().pin_runs(vaddr, end, write)?;
        // Report without holding the lock, so that `on_run` may use this
        // backend (read, stats).
        for run in runs.into_iter() {
            if let Err(e) = on_run(run) {
                self.unpin(vaddr, len);
                return Err(e);
            }
        }
        Ok(())
    }

    fn unpin(&self, vaddr: u64, len: u64) {
        let Some(end) = range_end(vaddr, len) else {
            tracing::warn!("sim: unpin of a bad range {vaddr:#x}+{len:#x}; ignored");
            return;
        };
        self.lock().release(vaddr, end);
    }

    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let st = self.lock();
        st.check_access(vaddr, buf.len() as u64, false)?;
        let mut addr = vaddr;
        for chunk in chunks(vaddr, buf) {
            let (page, off) = (addr >> PAGE_SHIFT, (addr % PAGE_SIZE) as usize);
            match st.store.get(&page) {
                Some(p) => chunk.copy_from_slice(&p[off..off + chunk.len()]),
                None => chunk.fill(0),
            }
            addr += chunk.len() as u64;
        }
        Ok(())
    }

    fn write(&self, vaddr: u64, data: &[u8]) -> Result<(), MemError> {
        let mut st = self.lock();
        st.check_access(vaddr, data.len() as u64, true)?;
        let mut addr = vaddr;
        let mut rest = data;
        while !rest.is_empty() {
            let (page, off) = (addr >> PAGE_SHIFT, (addr % PAGE_SIZE) as usize);
            let n = rest.len().min(PAGE - off);
            let p = st
                .store
                .entry(page)
                .or_insert_with(|| Box::new([0u8; PAGE]));
            p[off..off + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            addr += n as u64;
        }
        Ok(())
    }

    fn lock_policy(&self) -> LockPolicy {
        self.lock().policy
    }

    fn account(&self) -> &Arc<MmAccount> {
        &self.account
    }

    fn stats(&self) -> PinStats {
        let st = self.lock();
        PinStats {
            pinned_pages: st.counts.pinned() / PAGE_SIZE,
            pin_refs: st.counts.refs() / PAGE_SIZE,
            pin_ops: st.pin_ops,
            unpin_ops: st.unpin_ops,
            locked_bytes: st.counts.pinned(),
        }
    }

    fn describe(&self) -> String {
        "sim".to_string()
    }
}

/// Splits `buf` (standing for memory at `vaddr`) at page boundaries.
fn chunks(vaddr: u64, buf: &mut [u8]) -> impl Iterator<Item = &mut [u8]> {
    let first = (PAGE - (vaddr % PAGE_SIZE) as usize).min(buf.len());
    let (head, tail) = buf.split_at_mut(first);
    std::iter::once(head)
        .filter(|h| !h.is_empty())
        .chain(tail.chunks_mut(PAGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = SIZE_1G;

    fn collect(
        m: &SimMemory,
        vaddr: u64,
        len: u64,
        write: bool,
    ) -> Result<Vec<PinnedRun>, MemError> {
        let mut runs = Vec::new();
        m.pin(vaddr, len, write, &mut |r| {
            runs.push(r);
            Ok(())
        })?;
        Ok(runs)
    }

    #[test]
    fn touching_base_pages_are_one_run() {
        let m = SimMemory::new();
        m.add_region(0x10000, 0x10000, SIZE_4K, Prot::RW).unwrap();
        m.add_region(0x20000, 0x4000, SIZE_4K, Prot::RW).unwrap();
        m.add_region(0x24000, 0x4000, SIZE_4K, Prot::READ).unwrap();
        m.add_region(0x30000, 0x4000, SIZE_4K, Prot::RW).unwrap();
        let run = |vaddr, len| PinnedRun {
            vaddr,
            len,
            page_size: SIZE_4K,
            pfn: None,
        };
        let runs = collect(&m, 0x10000, 0x18000, false).unwrap();
        assert_eq!(runs, vec![run(0x10000, 0x18000)]);
        assert_eq!(m.stats().pin_ops, 1);
        assert_eq!(m.stats().pinned_pages, 0x18);
        m.unpin(0x10000, 0x18000);
        assert_eq!(m.stats().unpin_ops, 1);
        // Different access ends a run only when the access asked for needs it.
        m.add_region(0x28000, 0x8000, SIZE_4K, Prot::RW).unwrap();
        let runs = collect(&m, 0x20000, 0x14000, false).unwrap();
        assert_eq!(runs, vec![run(0x20000, 0x14000)]);
        m.unpin(0x20000, 0x14000);
        let runs = collect(&m, 0x28000, 0xc000, true).unwrap();
        assert_eq!(runs, vec![run(0x28000, 0xc000)]);
        m.unpin(0x28000, 0xc000);
        assert_eq!(collect(&m, 0x20000, 0x14000, true), Err(MemError::Fault));
        assert_eq!(m.stats().pinned_pages, 0);
    }

    #[test]
    fn huge_pages_one_run_one_op_each_partial_at_edges() {
        let m = SimMemory::new();
        m.add_region(0, 8 * SIZE_2M, SIZE_2M, Prot::RW).unwrap();
        let runs = collect(&m, SIZE_2M / 2, 3 * SIZE_2M, false).unwrap();
        assert_eq!(
            runs,
            vec![PinnedRun {
                vaddr: SIZE_2M / 2,
                len: 3 * SIZE_2M,
                page_size: SIZE_2M,
                pfn: None
            }]
        );
        m.unpin(SIZE_2M / 2, 3 * SIZE_2M);
        let s = m.stats();
        assert_eq!(
            (s.pin_ops, s.unpin_ops, s.pinned_pages, s.pin_refs),
            (4, 4, 0, 0)
        );
    }

    #[test]
    fn access_is_checked() {
        let m = SimMemory::new();
        m.add_region(0, 0x4000, SIZE_4K, Prot::READ).unwrap();
        m.add_region(0x4000, 0x4000, SIZE_4K, Prot::default())
            .unwrap();
        assert_eq!(collect(&m, 0, 0x4000, true), Err(MemError::Fault));
        assert!(collect(&m, 0, 0x4000, false).is_ok());
        assert_eq!(collect(&m, 0x4000, 0x1000, false), Err(MemError::Fault));
        assert_eq!(collect(&m, 0x8000, 0x1000, false), Err(MemError::Fault));
        // Half mapped: the first run is rolled back.
        assert_eq!(collect(&m, 0, 0x8000, false), Err(MemError::Fault));
        m.unpin(0, 0x4000);
        assert_eq!(m.stats().pinned_pages, 0);
        assert_eq!(m.write(0, &[1]), Err(MemError::Fault));
        let mut b = [0u8; 1];
        assert_eq!(m.read(0x4000, &mut b), Err(MemError::Fault));
    }

    #[test]
    fn bad_regions_refused() {
        let m = SimMemory::new();
        assert_eq!(
            m.add_region(0, G, 8192, Prot::RW),
            Err(RegionError::BadPageSize(8192))
        );
        assert_eq!(
            m.add_region(SIZE_2M / 2, SIZE_2M, SIZE_2M, Prot::RW),
            Err(RegionError::Misaligned)
        );
        m.add_region(G, G, SIZE_1G, Prot::RW).unwrap();
        assert_eq!(
            m.add_region(G + G / 2, 0x1000, SIZE_4K, Prot::RW),
            Err(RegionError::Overlap)
        );
        assert_eq!(
            m.add_region(0, G + 0x1000, SIZE_4K, Prot::RW),
            Err(RegionError::Overlap)
        );
        assert_eq!(m.remove_region(G, 0x1000), Err(RegionError::Misaligned));
        m.add_region(0, G, SIZE_4K, Prot::RW).unwrap();
    }

    #[test]
    fn sparse_store_reads_back_and_drops_on_unmap() {
        let m = SimMemory::new();
        m.add_region(0, 1 << 40, SIZE_1G, Prot::RW).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        m.write(0x7ff0, &data).unwrap();
        let mut back = vec![0xffu8; data.len() + 32];
        m.read(0x7ff0 - 16, &mut back).unwrap();
        assert_eq!(&back[..16], &[0u8; 16]);
        assert_eq!(&back[16..16 + data.len()], &data[..]);
        assert_eq!(&back[16 + data.len()..], &[0u8; 16]);
        assert_eq!(m.stored_pages(), 4);
        // Unmap the first GiB: bytes gone, access faults, the rest stays.
        m.remove_region(0, G).unwrap();
        assert_eq!(m.stored_pages(), 0);
        assert_eq!(m.read(0x7ff0, &mut back), Err(MemError::Fault));
        assert_eq!(m.regions().len(), 1);
        assert_eq!(m.regions()[0].start, G);
        m.write(G, &[7]).unwrap();
    }

    #[test]
    fn unmap_while_pinned_then_unpin() {
        let m = SimMemory::new();
        m.add_region(0, 4 * SIZE_2M, SIZE_2M, Prot::RW).unwrap();
        collect(&m, 0, 4 * SIZE_2M, true).unwrap();
        m.remove_region(SIZE_2M, SIZE_2M).unwrap();
        assert_eq!(m.regions().len(), 2);
        assert_eq!(m.write(SIZE_2M, &[1]), Err(MemError::Fault));
        m.unpin(0, 4 * SIZE_2M);
        assert_eq!(m.stats().pinned_pages, 0);
        assert_eq!(m.stats().unpin_ops, 4);
    }

    #[test]
    fn on_run_error_rolls_back() {
        let m = SimMemory::new();
        // Three runs: page sizes alternate.
        m.add_region(0, 2 * SIZE_2M, SIZE_2M, Prot::RW).unwrap();
        m.add_region(2 * SIZE_2M, SIZE_2M, SIZE_4K, Prot::RW)
            .unwrap();
        m.add_region(3 * SIZE_2M, SIZE_2M, SIZE_2M, Prot::RW)
            .unwrap();
        let mut n = 0;
        let r = m.pin(0, 4 * SIZE_2M, true, &mut |_| {
            n += 1;
            if n == 3 {
                Err(MemError::NoMem)
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err(MemError::NoMem));
        let s = m.stats();
        assert_eq!((s.pinned_pages, s.pin_refs, s.locked_bytes), (0, 0, 0));
        assert_eq!(m.tracked_segments(), 0);
    }

    #[test]
    fn unpin_of_unpinned_is_ignored() {
        let m = SimMemory::new();
        m.add_region(0, G, SIZE_4K, Prot::RW).unwrap();
        m.unpin(0, 0x1000);
        m.unpin(1, 0x1000);
        collect(&m, 0, 0x2000, true).unwrap();
        m.unpin(0, 0x4000);
        assert_eq!(m.stats().pinned_pages, 0);
    }
}
