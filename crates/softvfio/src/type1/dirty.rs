//! Dirty page tracking (`VFIO_IOMMU_DIRTY_PAGES`) and the bitmaps that
//! unmap and GET_BITMAP copy out.

use std::sync::Arc;

use super::state::*;
use crate::container::*;
use crate::dirty::{self};
use crate::dma::Dma;
use crate::error::{Result, VfioError};
use crate::iommu::DomainOps;
use crate::memory::PAGE_SIZE;

impl Container {
    /// `VFIO_IOMMU_DIRTY_PAGES_FLAG_START`. Starting twice is a no-op.
    pub fn dirty_start(&self) -> Result<()> {
        let mut st = self.lock();
        let Some(t) = st.iommu.as_mut() else {
            return Err(VfioError::Invalid("no IOMMU set"));
        };
        if !t.v2 {
            return Err(VfioError::Access("dirty tracking needs type1v2"));
        }
        if t.dirty_tracking {
            return Ok(());
        }
        let pgsize = min_pgsize(t.pgsize_bitmap);
        // Refuse before allocating any bitmap (see dirty::check_bitmap_alloc).
        for dma in t.dmas.iter() {
            dirty::check_bitmap_alloc(dma.size / pgsize)?;
        }
        for dma in t.dmas.iter_mut() {
            // Pages pinned externally count as dirty from the start
            // (type1's `vfio_dma_populate_bitmap`).
            dma.bitmap = Some(pinned_bitmap(dma, pgsize));
            dma.bitmap_touched = !dma.ext_pins.is_empty();
        }
        if self.cfg.precise_dirty {
            // Start from clean IOMMU dirty bits: only later writes count.
            for d in &t.domains {
                for dma in t.dmas.iter() {
                    d.ops.read_and_clear_dirty(dma.iova, dma.size, &mut |_| {});
                }
            }
        }
        t.dirty_tracking = true;
        Ok(())
    }

    /// `VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP`. Stopping twice is a no-op.
    pub fn dirty_stop(&self) -> Result<()> {
        let mut st = self.lock();
        let Some(t) = st.iommu.as_mut() else {
            return Err(VfioError::Invalid("no IOMMU set"));
        };
        if !t.v2 {
            return Err(VfioError::Access("dirty tracking needs type1v2"));
        }
        if t.dirty_tracking {
            t.dirty_tracking = false;
            for dma in t.dmas.iter_mut() {
                dma.bitmap = None;
                dma.bitmap_touched = false;
            }
        }
        Ok(())
    }

    /// `VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP` after the ABI checks: writes
    /// the dirty bits of `[iova, iova + size)` to the user bitmap.
    pub fn dirty_get_bitmap(&self, iova: u64, size: u64, bitmap: UserBitmap) -> Result<()> {
        let mut st = self.lock();
        let Some(t) = st.iommu.as_mut() else {
            return Err(VfioError::Invalid("no IOMMU set"));
        };
        if !t.v2 {
            return Err(VfioError::Access("dirty tracking needs type1v2"));
        }
        let pgsize = min_pgsize(t.pgsize_bitmap);
        if bitmap.pgsize != pgsize {
            return Err(VfioError::Invalid(
                "bitmap pgsize must be the minimum IOMMU page size",
            ));
        }
        if iova & (pgsize - 1) != 0 || size == 0 || size & (pgsize - 1) != 0 {
            return Err(VfioError::Invalid("unaligned range"));
        }
        if !t.dirty_tracking {
            return Err(VfioError::Invalid("dirty tracking not started"));
        }
        let Some(last) = iova.checked_add(size - 1) else {
            return Err(VfioError::Invalid("range wraps"));
        };
        // The range must not bisect a mapping.
        if let Some(d) = t.dmas.containing(iova) {
            if d.iova != iova {
                return Err(VfioError::Invalid("range bisects a mapping"));
            }
        }
        if let Some(d) = t.dmas.containing(last) {
            if d.last() != last {
                return Err(VfioError::Invalid("range bisects a mapping"));
            }
        }
        let pgshift = pgsize.trailing_zeros();
        let all_dirty = t.num_non_pinned_groups > 0;
        let domains: Vec<Arc<dyn DomainOps>> = t.domains.iter().map(|d| d.ops.clone()).collect();
        for key in t.dmas.keys_starting_in(iova, last) {
            let Some(dma) = t.dmas.get_mut(key) else {
                continue;
            };
            let bit_offset = (dma.iova - iova) >> pgshift;
            let res =
                self.copy_dirty_to_user(&domains, dma, pgshift, all_dirty, bitmap.data, bit_offset);
            // Reported pages start clean again, except those still pinned
            // externally, which stay dirty (type1 re-populates them).
            match dma.bitmap.as_mut() {
                Some(bits) if dma.ext_pins.is_empty() => {
                    // In place, and only when something set a bit (pages
                    // are dirtied this way only through the pinning
                    // interfaces): most reports touch no bitmap at all.
                    if dma.bitmap_touched {
                        bits.fill(0);
                        dma.bitmap_touched = false;
                    }
                }
                _ => {
                    dma.bitmap = Some(pinned_bitmap(dma, pgsize));
                    dma.bitmap_touched = !dma.ext_pins.is_empty();
                }
            }
            res?;
        }
        Ok(())
    }

    /// Writes the dirty bits of `dma` (see [`Container::dirty_bits`]) into
    /// the user bitmap at `user_data`, from bit `bit_offset`. Every page
    /// dirty (a group that writes memory directly, not in precise mode) is
    /// written without building the bitmap.
    pub(crate) fn copy_dirty_to_user(
        &self,
        domains: &[Arc<dyn DomainOps>],
        dma: &Dma,
        pgshift: u32,
        direct_writers: bool,
        user_data: u64,
        bit_offset: u64,
    ) -> Result<()> {
        let nbits = dma.size >> pgshift;
        if direct_writers && dma.iommu_mapped && !self.cfg.precise_dirty {
            return dirty::copy_ones_to_user(self.mem.as_ref(), user_data, nbits, bit_offset);
        }
        let bits = self.dirty_bits(domains, dma, pgshift, direct_writers);
        dirty::copy_to_user(self.mem.as_ref(), user_data, &bits, nbits, bit_offset)
    }

    /// The dirty bits to report for `dma`: its own bitmap (pages dirtied
    /// through the pinning interfaces) plus, while a group that can write
    /// memory directly is attached, every mapped page (type1) or, in precise
    /// mode, the pages whose IOMMU dirty bit is set (cleared as read).
    pub(crate) fn dirty_bits(
        &self,
        domains: &[Arc<dyn DomainOps>],
        dma: &Dma,
        pgshift: u32,
        direct_writers: bool,
    ) -> Vec<u64> {
        let nbits = dma.size >> pgshift;
        let mut bits = dma
            .bitmap
            .clone()
            .unwrap_or_else(|| dirty::new_bitmap(nbits));
        if direct_writers && dma.iommu_mapped {
            if self.cfg.precise_dirty {
                for d in domains {
                    d.read_and_clear_dirty(dma.iova, dma.size, &mut |page_iova| {
                        dirty::set_bit(&mut bits, (page_iova - dma.iova) >> pgshift);
                    });
                }
            } else {
                dirty::set_all(&mut bits, nbits);
            }
        }
        bits
    }
}

/// A fresh dirty bitmap of `dma` with its externally pinned pages set.
pub(crate) fn pinned_bitmap(dma: &Dma, pgsize: u64) -> Vec<u64> {
    let mut bits = dirty::new_bitmap(dma.size / pgsize);
    let pgshift = pgsize.trailing_zeros();
    for page in dma.ext_pins.pages() {
        dirty::set_bit(&mut bits, (page * PAGE_SIZE) >> pgshift);
    }
    bits
}
