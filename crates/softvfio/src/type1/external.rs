//! The type1 side of the mediated-device pinning API (`crate::external`):
//! what a pin, an unpin or a `dma_rw` changes in the type1 state, as
//! methods of [`Type1`], so that the pinning code never edits the state's
//! fields and the counters keep their relations (module header).

use crate::dirty;
use crate::dma::DmaTree;
use crate::memory::PAGE_SIZE;

use super::state::{min_pgsize, Type1};

/// One page a pin call takes a reference on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExternalPin {
    /// The mapping (its first IOVA).
    pub(crate) dma_iova: u64,
    /// The page's index in the mapping.
    pub(crate) page: u64,
    /// Not pinned before this call: its memory was pinned for it.
    pub(crate) new: bool,
}

/// What [`Type1::drop_external_pins`] released.
#[derive(Debug, Default)]
pub(crate) struct ReleasedPins {
    /// IOVAs looked at (the caller reports how far it got).
    pub(crate) processed: usize,
    /// User memory whose last external pin went: `(vaddr, len)` runs.
    pub(crate) runs: Vec<(u64, u64)>,
    /// Pages to unaccount.
    pub(crate) unaccount: u64,
}

impl Type1 {
    /// The mappings, read only.
    pub(crate) fn dmas(&self) -> &DmaTree {
        &self.dmas
    }

    /// Type1 v2 (or nesting)? External pinning needs it.
    pub(crate) fn is_v2(&self) -> bool {
        self.v2
    }

    /// Mappings whose vaddr is invalid, waiting for an update.
    pub(crate) fn vaddr_invalid_count(&self) -> u32 {
        self.vaddr_invalid_count
    }

    /// External pins are accounted only while no IOMMU domain pinned the
    /// whole mappings already.
    pub(crate) fn accounts_external_pins(&self) -> bool {
        self.domains.is_empty()
    }

    /// Takes the planned references: pin counts, locked pages (when
    /// `account`), and the dirty bits of tracking. Returns the pins that
    /// could not be recorded (a count overflow the plan should have caught).
    pub(crate) fn record_external_pins(&mut self, pins: &[ExternalPin], account: bool) -> usize {
        let pgshift = min_pgsize(self.pgsize_bitmap).trailing_zeros();
        let mut failed = 0;
        for p in pins {
            let Some(dma) = self.dmas.get_mut(p.dma_iova) else {
                failed += 1;
                continue;
            };
            if dma.ext_pins.pin(p.page).is_err() {
                failed += 1;
                continue;
            }
            if p.new && account {
                dma.locked_pages += 1;
            }
            if let Some(bm) = dma.bitmap.as_mut() {
                dirty::set_bit(bm, (p.page * PAGE_SIZE) >> pgshift);
                dma.bitmap_touched = true;
            }
        }
        failed
    }

    /// Drops one external reference on the page of each IOVA, in order:
    /// an IOVA that no mapping holds is skipped, or ends the walk when
    /// `stop_at_hole`. Pages whose last reference goes are returned as user
    /// memory runs to unpin, and unaccounted when external pins are.
    pub(crate) fn drop_external_pins(
        &mut self,
        iovas: impl Iterator<Item = u64>,
        stop_at_hole: bool,
    ) -> ReleasedPins {
        let account = self.accounts_external_pins();
        let mut out = ReleasedPins::default();
        let mut cur_key: Option<u64> = None;
        for iova in iovas {
            let page_iova = iova & !(PAGE_SIZE - 1);
            let key = match cur_key.and_then(|k| self.dmas.get(k)) {
                Some(d) if d.contains(page_iova) => d.iova,
                _ => match self.dmas.containing(page_iova) {
                    Some(d) => d.iova,
                    None if stop_at_hole => break,
                    None => {
                        out.processed += 1;
                        continue;
                    }
                },
            };
            cur_key = Some(key);
            out.processed += 1;
            let Some(dma) = self.dmas.get_mut(key) else {
                continue;
            };
            let page = (page_iova - dma.iova) / PAGE_SIZE;
            if dma.ext_pins.unpin(page) {
                let vaddr = dma.vaddr + page * PAGE_SIZE;
                match out.runs.last_mut() {
                    Some((start, len)) if *start + *len == vaddr => *len += PAGE_SIZE,
                    _ => out.runs.push((vaddr, PAGE_SIZE)),
                }
                if account {
                    dma.locked_pages = dma.locked_pages.saturating_sub(1);
                    out.unaccount += 1;
                }
            }
        }
        out
    }

    /// A `dma_rw` wrote `len` bytes at `offset` into the mapping at
    /// `dma_iova`: their pages are dirty while tracking is on.
    pub(crate) fn mark_written(&mut self, dma_iova: u64, offset: u64, len: u64) {
        if !self.dirty_tracking || len == 0 {
            return;
        }
        let pgshift = min_pgsize(self.pgsize_bitmap).trailing_zeros();
        if let Some(d) = self.dmas.get_mut(dma_iova) {
            if let Some(bm) = d.bitmap.as_mut() {
                for bit in (offset >> pgshift)..=((offset + len - 1) >> pgshift) {
                    dirty::set_bit(bm, bit);
                }
                d.bitmap_touched = true;
            }
        }
    }

    /// The group of a pinning device dirties memory only through its pins
    /// (type1's `update_pinned_page_dirty_scope`).
    pub(crate) fn set_pinned_page_dirty_scope(&mut self, group_id: u32) {
        let group = self
            .domains
            .iter_mut()
            .flat_map(|d| d.groups.iter_mut())
            .chain(self.emulated_groups.iter_mut())
            .find(|g| g.group.id == group_id);
        if let Some(g) = group {
            if !g.pinned_page_dirty_scope {
                g.pinned_page_dirty_scope = true;
                self.num_non_pinned_groups = self.num_non_pinned_groups.saturating_sub(1);
            }
        }
    }
}
