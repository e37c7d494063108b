//! `VFIO_IOMMU_MAP_DMA` and `VFIO_IOMMU_UNMAP_DMA`: pin, map into every
//! domain, and the reverse (unmap, flush, unpin, unaccount).

use std::sync::Arc;

use super::state::*;
use crate::container::*;
use crate::dirty::{self};
use crate::dma::Dma;
use crate::error::{Result, VfioError};
use crate::external::{DmaUnmapFn, PinTracker, UNMAP_NOTIFY_RETRIES};
use crate::iommu::{DomainOps, Prot};
use crate::memory::spaces::{is_same, Space, TAG_SHIFT};
use crate::memory::{LockPolicy, MemError, PinnedRun, UserMemory, PAGE_SIZE};

impl Container {
    // ---- map / unmap ------------------------------------------------------

    /// The memory `dma` pins: its own space, or the container's.
    pub(crate) fn mem_of<'a>(&'a self, dma: &'a Dma) -> &'a Arc<dyn UserMemory> {
        dma.space.as_ref().map_or(&self.mem, |s| &s.mem)
    }

    /// The address the IOMMU maps for `vaddr` of `dma`'s address space.
    pub(crate) fn phys_of(dma: &Dma, vaddr: u64) -> u64 {
        dma.space.as_ref().map_or(vaddr, |s| s.phys(vaddr))
    }

    /// The space a mapping of `[vaddr, vaddr + size)` made by `caller`
    /// pins: `None` for the container's own memory (or a caller that
    /// cannot be told apart from it), else `caller`'s space
    /// (memory/spaces.rs).
    fn space_for(
        &self,
        caller: Option<&Arc<dyn UserMemory>>,
        vaddr: u64,
        size: u64,
    ) -> Result<Option<Arc<Space>>> {
        let Some(mem) = caller.filter(|m| !is_same(m, &self.mem)) else {
            return Ok(None);
        };
        if vaddr
            .checked_add(size)
            .is_none_or(|end| end > 1 << TAG_SHIFT)
        {
            // Above 4-level user addresses: no room for the tag.
            return Err(VfioError::Memory(MemError::Fault));
        }
        self.spaces
            .attach(mem)
            .map(Some)
            .ok_or(VfioError::Memory(MemError::NoMem))
    }

    /// `VFIO_IOMMU_MAP_DMA`, decoded: a new mapping, or a vaddr update.
    /// `caller`: the address space of the calling program, when the
    /// backend can tell (see [`UserMemory::shared`]).
    pub(crate) fn map_dma(
        &self,
        iova: u64,
        vaddr: u64,
        size: u64,
        op: MapOp,
        caller: Option<&Arc<dyn UserMemory>>,
    ) -> Result<()> {
        let mut st = self.lock();
        let Some(t) = st.iommu.as_mut() else {
            return Err(VfioError::Invalid("no IOMMU set"));
        };
        let (set_vaddr, prot) = match op {
            MapOp::Map(prot) if prot.read || prot.write => (false, prot),
            MapOp::Map(_) => return Err(VfioError::Invalid("a mapping needs read or write")),
            MapOp::UpdateVaddr => (true, Prot::default()),
        };
        let pgsize = min_pgsize(t.pgsize_bitmap);
        if size == 0 || (size | iova | vaddr) & (pgsize - 1) != 0 {
            return Err(VfioError::Invalid("size zero or not page aligned"));
        }
        // 6.1's EINVAL (the conformance probe's `map_iova_wrap` and
        // `map_vaddr_wrap`); upstream answers EOVERFLOW since its fix for
        // mappings up to the addressable limit (docs/DESIGN.md).
        let (Some(last), Some(_)) = (iova.checked_add(size - 1), vaddr.checked_add(size - 1))
        else {
            return Err(VfioError::Invalid("address wraps"));
        };

        if set_vaddr {
            let Some(dma) = t.dmas.any_overlapping(iova, last) else {
                return Err(VfioError::NoEntry);
            };
            if !dma.vaddr_invalid || dma.iova != iova || dma.size != size {
                return Err(VfioError::Invalid(
                    "vaddr update must match an invalidated mapping",
                ));
            }
            let space = self.space_for(caller, vaddr, size)?;
            let domains: Vec<Arc<dyn DomainOps>> =
                t.domains.iter().map(|d| d.ops.clone()).collect();
            if let Some(dma) = t.dmas.get_mut(iova) {
                self.move_pins(dma, &domains, vaddr, space);
                dma.vaddr = vaddr;
                dma.vaddr_invalid = false;
                let slot = dma.history;
                if let Some(h) = self.history_in(&mut t.history) {
                    h.record_update_vaddr_at(slot, self.id, iova, vaddr);
                }
            }
            t.vaddr_invalid_count = t.vaddr_invalid_count.saturating_sub(1);
            self.vaddr_valid.notify_all();
            return Ok(());
        }
        let Ok(vacancy) = t.dmas.vacancy(iova, last) else {
            return Err(VfioError::Exists);
        };
        if t.dma_avail == 0 {
            return Err(VfioError::NoSpace);
        }
        if !t.iova_list.allows(iova, last) {
            return Err(VfioError::Invalid("IOVA outside the valid ranges"));
        }

        let space = self.space_for(caller, vaddr, size)?;
        // CAP_IPC_LOCK is sampled once, at map time, and kept per mapping.
        let policy = space.as_ref().map_or(&self.mem, |s| &s.mem).lock_policy();
        let mut dma = Dma {
            iova,
            size,
            vaddr,
            prot,
            vaddr_invalid: false,
            lock_cap: policy.cap_ipc_lock,
            iommu_mapped: false,
            pinned_vaddr: vaddr,
            locked_pages: 0,
            bitmap: None,
            bitmap_touched: false,
            ext_pins: PinTracker::new(),
            space,
            history: Default::default(),
        };
        if t.dirty_tracking {
            // Before pinning: nothing to undo (see dirty::check_bitmap_alloc).
            dirty::check_bitmap_alloc(size / pgsize)?;
        }
        // Without an IOMMU-backed domain nothing is pinned until a device asks.
        if !t.domains.is_empty() {
            dma.locked_pages = self.pin_and_map(&dma, &t.domains, policy)?;
            dma.iommu_mapped = true;
        }
        if t.dirty_tracking {
            dma.bitmap = Some(dirty::new_bitmap(size / pgsize));
        }
        // Recorded before the mapping goes into the tree, so that it
        // carries its history's slot (its unmap then skips a lookup).
        if let Some(h) = self.history_in(&mut t.history) {
            dma.history = h.record_map(self.id, iova, vaddr, size, prot);
        }
        // Checked above under the same lock, so the tree accepts it; should
        // it refuse, undo the pins rather than lose a mapping or a slot.
        if let Err(refused) = t.dmas.insert_vacant(vacancy, dma) {
            let dma = self.release_dma(t, *refused.0);
            if let Some(h) = self.history_in(&mut t.history) {
                h.record_unmap_at(dma.history, self.id, iova);
            }
            return Err(VfioError::Exists);
        }
        t.dma_avail -= 1;
        Ok(())
    }

    /// Charges, pins and maps `dma` into `domains`; returns the pages
    /// charged. All or nothing.
    pub(crate) fn pin_and_map<D: AsRef<dyn DomainOps>>(
        &self,
        dma: &Dma,
        domains: &[D],
        policy: LockPolicy,
    ) -> Result<u64> {
        // Pages already accounted for external pins (no IOMMU domain existed
        // when they were pinned) are not counted twice (type1 skips pages
        // on the vpfn list).
        // Device registers (a BAR mapping, peer to peer) are not charged,
        // as type1 charges no VM_PFNMAP page.
        let mem = self.mem_of(dma);
        let pages = page_pages(dma.size - mem.device_bytes(dma.vaddr, dma.size))
            .saturating_sub(dma.locked_pages);
        pin_and_map_pages(
            mem.as_ref(),
            PinRequest {
                iova: dma.iova,
                vaddr: dma.vaddr,
                size: dma.size,
                prot: dma.prot,
                charge: pages,
                small_pages: false,
            },
            &|vaddr| Self::phys_of(dma, vaddr),
            domains,
            policy,
        )
    }

    /// A vaddr update (`VFIO_DMA_MAP_FLAG_VADDR`) of a mapping in the
    /// domains: Linux's pinned pages stay where they are and the new vaddr
    /// maps the same memory (QEMU's live update maps the same memfd again,
    /// possibly in the new image after exec). Here the IOMMU points at user
    /// addresses, so the pins move: the new range is pinned in `space` (the
    /// caller's), the domains are pointed at it, and the old pins are
    /// dropped; the accounting moves with them (as 6.2's
    /// `vfio_change_dma_owner` moves `locked_vm`). When the new range cannot
    /// be pinned (not mapped yet), the mapping keeps reaching the old pages,
    /// as Linux's does.
    fn move_pins(
        &self,
        dma: &mut Dma,
        domains: &[Arc<dyn DomainOps>],
        vaddr: u64,
        space: Option<Arc<Space>>,
    ) {
        if !dma.iommu_mapped || domains.is_empty() {
            // Nothing pinned for the domains: later pins use the new place.
            if dma.locked_pages == 0 {
                dma.space = space;
                dma.pinned_vaddr = vaddr;
            }
            return;
        }
        let new_mem = space.as_ref().map_or(&self.mem, |s| &s.mem).clone();
        let mut runs = Vec::new();
        if let Err(e) = new_mem.pin(vaddr, dma.size, dma.prot.write, &mut |run| {
            runs.push(run);
            Ok(())
        }) {
            tracing::debug!(
                iova = dma.iova,
                vaddr,
                "vaddr update: new range not pinnable ({e}); DMA keeps the old pages"
            );
            return;
        }
        for d in domains {
            unmap_all_of(d.as_ref(), dma.iova, dma.size);
            d.flush(dma.iova, dma.size);
        }
        let phys = |v: u64| space.as_ref().map_or(v, |s| s.phys(v));
        for run in &runs {
            let iova = dma.iova + (run.vaddr - vaddr);
            for d in domains {
                if let Err(e) = map_run_pages(d.as_ref(), iova, run, &phys, dma.prot, false) {
                    tracing::warn!(iova, "vaddr update: remap failed: {e:?}");
                }
            }
        }
        let old_mem = self.mem_of(dma).clone();
        old_mem.unpin(dma.pinned_vaddr, dma.size);
        if !Arc::ptr_eq(old_mem.account(), new_mem.account()) {
            new_mem.account().charge_unchecked(dma.locked_pages);
            old_mem.account().uncharge(dma.locked_pages);
        }
        dma.space = space;
        dma.pinned_vaddr = vaddr;
    }

    /// Unmaps, flushes (waiting out in-flight DMA), unpins and unaccounts a
    /// mapping, and removes it. Order matters: after this returns no device
    /// can reach the pages.
    pub(crate) fn remove_dma(&self, t: &mut Type1, iova: u64) -> Option<Dma> {
        let dma = t.dmas.remove(iova)?;
        Some(self.forget_dma(t, dma))
    }

    /// [`Container::remove_dma`] of a mapping already taken out of the tree.
    fn forget_dma(&self, t: &mut Type1, dma: Dma) -> Dma {
        let dma = self.release_dma(t, dma);
        if dma.vaddr_invalid {
            t.vaddr_invalid_count = t.vaddr_invalid_count.saturating_sub(1);
        }
        t.dma_avail = t.dma_avail.saturating_add(1);
        dma
    }

    /// Unmaps, flushes, unpins and unaccounts a mapping that is no longer
    /// (or never was) in the tree. Flush before unpin: once the pages are
    /// unpinned no IOTLB entry may still reach them.
    pub(crate) fn release_dma(&self, t: &Type1, mut dma: Dma) -> Dma {
        if dma.iommu_mapped {
            for d in &t.domains {
                unmap_all_of(d.ops.as_ref(), dma.iova, dma.size);
            }
            for d in &t.domains {
                d.ops.flush(dma.iova, dma.size);
            }
            self.mem_of(&dma).unpin(dma.pinned_vaddr, dma.size);
        }
        // External pins a device left behind (only on release paths: an
        // unmap notifies the devices first and fails if they keep pins):
        // one pass over the tracker, memory unpinned in runs.
        if !dma.ext_pins.is_empty() {
            for (page, n) in dma.ext_pins.runs() {
                self.mem_of(&dma)
                    .unpin(dma.vaddr + page * PAGE_SIZE, n * PAGE_SIZE);
            }
            dma.ext_pins.clear();
        }
        // One accounting update for the mapping and its external pins.
        self.mem_of(&dma).account().uncharge(dma.locked_pages);
        dma.locked_pages = 0;
        dma
    }

    /// `VFIO_IOMMU_UNMAP_DMA` after the ABI checks. Returns the bytes
    /// unmapped (or invalidated); on error nothing is written back.
    ///
    /// Mappings in the range that devices still pin externally are first
    /// announced to every registered device's `dma_unmap` callback with the
    /// container lock released (the devices unpin, which takes the lock),
    /// and the whole request is checked again, as type1's `goto again`
    /// does. A device that keeps its pins after [`UNMAP_NOTIFY_RETRIES`]
    /// further notifications makes the unmap fail with EBUSY with nothing
    /// removed (the kernel `BUG()`s there).
    pub fn unmap_dma(&self, range: UnmapRange, op: UnmapOp) -> Result<u64> {
        let mut last_notified: Option<u64> = None;
        let mut retries = 0u32;
        loop {
            let mut st = self.lock();
            match self.unmap_dma_locked(&mut st, range, op)? {
                UnmapStep::Done(unmapped) => return Ok(unmapped),
                UnmapStep::Notify(dma_iova, dma_size) => {
                    if last_notified == Some(dma_iova) {
                        retries += 1;
                        if retries > UNMAP_NOTIFY_RETRIES {
                            tracing::warn!(
                                iova = dma_iova,
                                size = dma_size,
                                "a device keeps external pins after {UNMAP_NOTIFY_RETRIES} unmap notifications"
                            );
                            return Err(VfioError::Busy(
                                "a device did not unpin the pages it pins in the range",
                            ));
                        }
                    } else {
                        last_notified = Some(dma_iova);
                        retries = 0;
                    }
                    let callbacks: Vec<DmaUnmapFn> = st
                        .external_devices
                        .iter()
                        .filter_map(|d| d.dma_unmap().cloned())
                        .collect();
                    drop(st);
                    for notify in callbacks {
                        notify(dma_iova, dma_size);
                    }
                }
            }
        }
    }

    /// One pass of [`Container::unmap_dma`] under the lock.
    pub(crate) fn unmap_dma_locked(
        &self,
        st: &mut State,
        range: UnmapRange,
        op: UnmapOp,
    ) -> Result<UnmapStep> {
        let Some(t) = st.iommu.as_mut() else {
            return Err(VfioError::Invalid("no IOMMU set"));
        };
        let (unmap_all, iova, size) = match range {
            UnmapRange::All => (true, 0, 0),
            UnmapRange::Range { iova, size } => (false, iova, size),
        };
        let invalidate_vaddr = op == UnmapOp::InvalidateVaddr;
        // Mediated devices cannot pin or rw safely while a vaddr is being
        // updated: Linux 6.1 (stable) refuses with EBUSY before any other
        // check of the request (measured with medu: every invalidation,
        // unaligned ones included, tests-oracle/MEDU-DIFFS.md cause A).
        if invalidate_vaddr && !t.emulated_groups.is_empty() {
            return Err(VfioError::Busy("vaddr invalidation with mediated devices"));
        }
        let pgsize = min_pgsize(t.pgsize_bitmap);

        if iova & (pgsize - 1) != 0 {
            return Err(VfioError::Invalid("unaligned iova"));
        }
        // The inclusive last byte of the range.
        let last = if unmap_all {
            u64::MAX
        } else {
            if size == 0 || size & (pgsize - 1) != 0 {
                return Err(VfioError::Invalid("bad size"));
            }
            // 6.1's EINVAL (the probe's `unmap_wrap`); upstream: EOVERFLOW.
            iova.checked_add(size - 1)
                .ok_or(VfioError::Invalid("range wraps"))?
        };
        let bitmap = match op {
            UnmapOp::UnmapGetDirty(b) if t.dirty_tracking && b.pgsize == pgsize => Some(b),
            UnmapOp::UnmapGetDirty(_) => {
                return Err(VfioError::Invalid(
                    "dirty bitmap needs tracking and min pgsize",
                ))
            }
            UnmapOp::Unmap | UnmapOp::InvalidateVaddr => None,
        };

        // A plain unmap of exactly one whole mapping (the common request):
        // found and taken out with one tree search; it is the only mapping
        // in the range and bisects nothing. One pinned externally goes the
        // general way (the devices are notified first).
        if op == UnmapOp::Unmap && !unmap_all {
            if let Some(dma) = t
                .dmas
                .remove_if(iova, |d| d.last() == last && d.ext_pins.is_empty())
            {
                let size = dma.size;
                let history = self.forget_dma(t, dma).history;
                if let Some(h) = self.history_in(&mut t.history) {
                    h.record_unmap_at(history, self.id, iova);
                }
                return Ok(UnmapStep::Done(size));
            }
        }
        // The common request names exactly one whole mapping: the one
        // search that finds it answers the bisect checks (it starts at
        // `iova` and ends at `last`), is the first mapping in the range, and,
        // as mappings are disjoint, the only one. The general path below
        // gives the same answer with five or more tree searches.
        let exact = if unmap_all {
            None
        } else {
            t.dmas
                .any_overlapping(iova, last)
                .filter(|d| d.iova == iova && d.last() == last)
                .map(|d| (d.iova, d.size, !d.ext_pins.is_empty()))
        };
        if let Some((key, size, ext_pinned)) = exact {
            if invalidate_vaddr {
                return self.invalidate_vaddrs(t, &[key]);
            }
            // Devices must let go of what they pin before anything is removed.
            if ext_pinned {
                return Ok(UnmapStep::Notify(key, size));
            }
            return self.unmap_keys(t, &[key], iova, bitmap, pgsize);
        }

        // v2 never bisects a mapping: the range must cover whole mappings.
        if t.v2 && !unmap_all {
            if let Some(d) = t.dmas.containing(iova) {
                if d.iova != iova {
                    return Err(VfioError::Invalid("unmap would bisect a mapping"));
                }
            }
            if let Some(d) = t.dmas.containing(last) {
                if d.last() != last {
                    return Err(VfioError::Invalid("unmap would bisect a mapping"));
                }
            }
        }

        let Some(first) = t.dmas.first_overlapping(iova, last) else {
            return Ok(UnmapStep::Done(0));
        };
        // The mappings this request covers (v1 stops at one starting before
        // the range).
        let keys: Vec<u64> = t
            .dmas
            .keys_between(first, last)
            .take_while(|k| t.v2 || iova <= *k)
            .collect();

        if invalidate_vaddr {
            return self.invalidate_vaddrs(t, &keys);
        }

        // Devices must let go of what they pin before anything is removed.
        if let Some(d) = keys
            .iter()
            .filter_map(|k| t.dmas.get(*k))
            .find(|d| !d.ext_pins.is_empty())
        {
            return Ok(UnmapStep::Notify(d.iova, d.size));
        }
        self.unmap_keys(t, &keys, iova, bitmap, pgsize)
    }

    /// `VFIO_DMA_UNMAP_FLAG_VADDR` of the mappings at `keys`: all or none
    /// (a mapping already invalid, or pinned externally, rolls back what
    /// this call invalidated).
    fn invalidate_vaddrs(&self, t: &mut Type1, keys: &[u64]) -> Result<UnmapStep> {
        // Sums of mapping sizes wrap as the kernel's `size_t` does: only
        // mappings that together cover all 2^64 bytes can reach it.
        let mut unmapped: u64 = 0;
        let mut touched = Vec::new();
        for &key in keys {
            let Some(dma) = t.dmas.get_mut(key) else {
                break;
            };
            // Beyond the kernel: external pins were taken at the old
            // address, so their mapping keeps it.
            let pinned = !dma.ext_pins.is_empty();
            if dma.vaddr_invalid || pinned {
                // Roll back what this call invalidated.
                for k in touched {
                    if let Some(d) = t.dmas.get_mut(k) {
                        d.vaddr_invalid = false;
                        t.vaddr_invalid_count -= 1;
                    }
                }
                return Err(if pinned {
                    VfioError::Busy("mapping has external pins")
                } else {
                    VfioError::Invalid("vaddr already invalid")
                });
            }
            dma.vaddr_invalid = true;
            t.vaddr_invalid_count += 1;
            if let Some(h) = self.history_in(&mut t.history) {
                h.record_invalidate_vaddr_at(dma.history, self.id, key);
            }
            unmapped = unmapped.wrapping_add(dma.size);
            touched.push(key);
        }
        Ok(UnmapStep::Done(unmapped))
    }

    /// Removes the mappings at `keys` (none pinned externally), in order,
    /// first copying each one's dirty bits into `bitmap` (whose first bit is
    /// `iova`) when asked. A failed copy stops there: the mappings before it
    /// stay removed, as in type1.
    fn unmap_keys(
        &self,
        t: &mut Type1,
        keys: &[u64],
        iova: u64,
        bitmap: Option<UserBitmap>,
        pgsize: u64,
    ) -> Result<UnmapStep> {
        // Sums of mapping sizes wrap as the kernel's `size_t` does: only
        // mappings that together cover all 2^64 bytes can reach it.
        let mut unmapped: u64 = 0;
        let pinned_dirty_all = t.num_non_pinned_groups > 0;
        let pgshift = pgsize.trailing_zeros();
        // Only the dirty bitmap needs the domains (no allocation otherwise).
        let domains: Vec<Arc<dyn DomainOps>> = if bitmap.is_some() {
            t.domains.iter().map(|d| d.ops.clone()).collect()
        } else {
            Vec::new()
        };
        for &key in keys {
            if let Some(b) = bitmap {
                let Some(dma) = t.dmas.get(key) else { break };
                let bit_offset = (dma.iova - iova) >> pgshift;
                self.copy_dirty_to_user(
                    &domains,
                    dma,
                    pgshift,
                    pinned_dirty_all,
                    b.data,
                    bit_offset,
                )?;
            }
            let Some(dma) = self.remove_dma(t, key) else {
                break;
            };
            unmapped = unmapped.wrapping_add(dma.size);
            if let Some(h) = self.history_in(&mut t.history) {
                h.record_unmap_at(dma.history, self.id, key);
            }
        }
        Ok(UnmapStep::Done(unmapped))
    }
}

/// A `VFIO_IOMMU_MAP_DMA`, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapOp {
    /// A new mapping that devices may access with this protection.
    Map(Prot),
    /// A new user address for an invalidated mapping.
    UpdateVaddr,
}

/// What one locked pass of an unmap decided.
pub(crate) enum UnmapStep {
    /// Finished: the bytes unmapped (or invalidated).
    Done(u64),
    /// The mapping `(iova, size)` is pinned externally: notify the devices
    /// and try again.
    Notify(u64, u64),
}

/// What [`pin_and_map_pages`] pins and maps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PinRequest {
    /// First IOVA.
    pub(crate) iova: u64,
    /// User address of the first byte (page aligned).
    pub(crate) vaddr: u64,
    /// Bytes (page aligned, not zero).
    pub(crate) size: u64,
    /// What devices may do.
    pub(crate) prot: Prot,
    /// Pages to charge against RLIMIT_MEMLOCK.
    pub(crate) charge: u64,
    /// Map 4 KiB pages only, so that any later unmap of part of the range
    /// removes exactly that part (iommufd's `HUGE_PAGES` 0).
    pub(crate) small_pages: bool,
}

/// Charges `req.charge` pages, pins `[req.vaddr, +req.size)` and maps it at
/// `req.iova` into every domain (each pinned address `v` as `phys_of(v)`,
/// the address the IOMMU model resolves in the right address space); returns the pages charged. All or nothing:
/// on error nothing stays charged, pinned or mapped. Shared by type1's
/// mappings and iommufd's areas (one pinning and accounting path).
pub(crate) fn pin_and_map_pages<D: AsRef<dyn DomainOps>>(
    mem: &dyn crate::memory::UserMemory,
    req: PinRequest,
    phys_of: &dyn Fn(u64) -> u64,
    domains: &[D],
    policy: LockPolicy,
) -> Result<u64> {
    let pages = req.charge;
    // One accounting update for the whole mapping (seed 000), made before
    // pinning so that concurrent maps cannot both pass the limit.
    mem.account().charge(pages, policy).map_err(over_limit)?;
    // Bytes mapped from `req.iova` (not an end address: a mapping may end
    // at 2^64).
    let mut mapped: u64 = 0;
    let mut iommu_error: Option<VfioError> = None;
    // Touching runs whose pages are of one size go to the domains in one
    // call, capped at that size (the leaves one call per run would give).
    let mut batch = RunBatch::default();
    let mut map_batch = |batch: &mut RunBatch| -> Result<()> {
        if batch.len == 0 {
            return Ok(());
        }
        let iova = req.iova + (batch.vaddr - req.vaddr);
        for (i, d) in domains.iter().enumerate() {
            if let Err(e) = batch.map_into(d.as_ref(), iova, phys_of, req.prot, req.small_pages) {
                for undo in &domains[..i] {
                    unmap_all_of(undo.as_ref(), iova, batch.len);
                }
                return Err(e);
            }
        }
        mapped = (iova - req.iova) + batch.len;
        batch.clear();
        Ok(())
    };
    let pin_result = mem.pin(
        req.vaddr,
        req.size,
        req.prot.write,
        &mut |run: PinnedRun| {
            let cap = page_cap(&run, req.small_pages);
            if !batch.extends(&run, cap) {
                if let Err(e) = map_batch(&mut batch) {
                    iommu_error = Some(e);
                    return Err(MemError::Unreachable);
                }
            }
            batch.push(run, cap);
            Ok(())
        },
    );
    let pin_result = pin_result.map_err(|e| iommu_error.take().unwrap_or(VfioError::Memory(e)));
    // The last batch, after the pin: a failure there unpins it all here.
    let result = pin_result
        .and_then(|()| map_batch(&mut batch).inspect_err(|_| mem.unpin(req.vaddr, req.size)));
    if let Err(e) = result {
        if mapped > 0 {
            for d in domains {
                unmap_all_of(d.as_ref(), req.iova, mapped);
                d.as_ref().flush(req.iova, mapped);
            }
        }
        mem.account().uncharge(pages);
        return Err(e);
    }
    Ok(pages)
}

/// The largest page a run may be mapped with when it is batched with its
/// neighbours, or `None` when it must be mapped alone: a run of 4K pages
/// of 2 MiB or more (physically contiguous) may take larger pages.
fn page_cap(run: &PinnedRun, small_pages: bool) -> Option<u64> {
    if small_pages {
        Some(PAGE_SIZE)
    } else if run.page_size > PAGE_SIZE {
        Some(run.page_size)
    } else if run.len < 2 << 20 {
        // Too short for any page above 4K.
        Some(PAGE_SIZE)
    } else {
        None
    }
}

/// Touching pinned runs that map with one page-size cap.
#[derive(Default)]
struct RunBatch {
    vaddr: u64,
    len: u64,
    cap: Option<u64>,
    /// The runs, for domains that cannot map a batch in one call.
    runs: Vec<PinnedRun>,
}

impl RunBatch {
    /// Whether `run` (of cap `cap`) can join this batch.
    fn extends(&self, run: &PinnedRun, cap: Option<u64>) -> bool {
        self.len == 0 || (cap.is_some() && cap == self.cap && self.vaddr + self.len == run.vaddr)
    }

    fn push(&mut self, run: PinnedRun, cap: Option<u64>) {
        if self.len == 0 {
            self.vaddr = run.vaddr;
            self.cap = cap;
        }
        self.len += run.len;
        self.runs.push(run);
    }

    fn clear(&mut self) {
        self.len = 0;
        self.runs.clear();
    }

    /// Maps the batch at `iova` into `d`; all or nothing.
    fn map_into(
        &self,
        d: &dyn DomainOps,
        iova: u64,
        phys_of: &dyn Fn(u64) -> u64,
        prot: Prot,
        small_pages: bool,
    ) -> Result<()> {
        if let Some(cap) = self.cap {
            if let Some(r) = d.map_capped(iova, phys_of(self.vaddr), self.len, prot, cap) {
                return r.map_err(VfioError::from);
            }
        }
        // Run by run, a run of huge pages page by page, as before batches.
        let mut done = 0u64;
        for run in &self.runs {
            let at = iova + (run.vaddr - self.vaddr);
            if let Err(e) = map_run_pages(d, at, run, phys_of, prot, small_pages) {
                if done > 0 {
                    unmap_all_of(d, iova, done);
                }
                return Err(e);
            }
            done += run.len;
        }
        Ok(())
    }
}

/// Maps one pinned run at `iova` into `d` with one map call per huge page
/// of the run (a backend may report touching huge pages as one run; the
/// leaves stay those of their pages), in 4 KiB pages when `small_pages`;
/// all or nothing.
fn map_run_pages(
    d: &dyn DomainOps,
    iova: u64,
    run: &PinnedRun,
    phys_of: &dyn Fn(u64) -> u64,
    prot: Prot,
    small_pages: bool,
) -> Result<()> {
    if small_pages || run.page_size <= PAGE_SIZE {
        return map_run(d, iova, phys_of(run.vaddr), run.len, prot, small_pages);
    }
    let ps = run.page_size;
    let end = run.vaddr + run.len;
    let mut v = run.vaddr;
    while v < end {
        let piece_end = (v - v % ps).saturating_add(ps).min(end);
        if let Err(e) = d.map(iova + (v - run.vaddr), phys_of(v), piece_end - v, prot) {
            if v > run.vaddr {
                unmap_all_of(d, iova, v - run.vaddr);
            }
            return Err(e.into());
        }
        v = piece_end;
    }
    Ok(())
}

/// Maps one run into one domain, in 4 KiB pages when `small_pages`; all or
/// nothing.
pub(crate) fn map_run(
    d: &dyn DomainOps,
    iova: u64,
    vaddr: u64,
    len: u64,
    prot: Prot,
    small_pages: bool,
) -> Result<()> {
    if !small_pages {
        return d.map(iova, vaddr, len, prot).map_err(VfioError::from);
    }
    let mut done = 0u64;
    while done < len {
        if let Err(e) = d.map(iova + done, vaddr + done, PAGE_SIZE, prot) {
            if done > 0 {
                unmap_all_of(d, iova, done);
            }
            return Err(e.into());
        }
        done += PAGE_SIZE;
    }
    Ok(())
}

/// The reverse of [`pin_and_map_pages`]: unmaps `[iova, +size)` from every
/// domain, flushes the IOTLBs (waiting out in-flight translations), then
/// unpins and uncharges `charged` pages. Flush before unpin: once the pages
/// are unpinned no cached translation can reach them.
pub(crate) fn unmap_unpin_pages(
    mem: &dyn crate::memory::UserMemory,
    domains: &[Arc<dyn DomainOps>],
    iova: u64,
    vaddr: u64,
    size: u64,
    charged: u64,
) {
    for d in domains {
        unmap_all_of(d.as_ref(), iova, size);
    }
    for d in domains {
        d.flush(iova, size);
    }
    mem.unpin(vaddr, size);
    mem.account().uncharge(charged);
}
