//! DMA mappings (type1's `struct vfio_dma`) and the tree that holds them.

use std::collections::BTreeMap;

use std::sync::Arc;

use crate::external::PinTracker;
use crate::iommu::Prot;
use crate::memory::spaces::Space;

/// One `VFIO_IOMMU_MAP_DMA` mapping.
#[derive(Debug, Clone)]
pub struct Dma {
    /// First IOVA.
    pub iova: u64,
    /// Size in bytes (never 0).
    pub size: u64,
    /// The user address the mapping refers to now (may be updated).
    pub vaddr: u64,
    /// What devices may do through it.
    pub prot: Prot,
    /// Invalidated by `VFIO_DMA_UNMAP_FLAG_VADDR`, waiting for an update.
    pub vaddr_invalid: bool,
    /// CAP_IPC_LOCK of the caller at map time (type1 keeps it per mapping).
    pub lock_cap: bool,
    /// Pinned and written to the IOMMU domains.
    pub iommu_mapped: bool,
    /// Where the pinned pages are in the user address space (what the IOMMU
    /// points at); `vaddr` may differ after a vaddr update.
    pub pinned_vaddr: u64,
    /// Pages accounted against RLIMIT_MEMLOCK for this mapping: all of
    /// them while `iommu_mapped`, else those pinned externally.
    pub locked_pages: u64,
    /// Dirty bitmap (one bit per smallest IOMMU page) while tracking is on.
    pub bitmap: Option<Vec<u64>>,
    /// A bit of `bitmap` may be set (false: every bit is clear), so that a
    /// report of a mapping nothing dirtied this way clears nothing.
    pub bitmap_touched: bool,
    /// Pages pinned through the external API (mediated devices), with
    /// their pin counts, by page offset in the mapping.
    pub ext_pins: PinTracker,
    /// The address space the mapping pins when it is not the container's
    /// own (made by a forked child, or by the new image after exec).
    pub(crate) space: Option<Arc<Space>>,
    /// Where the DMA sanitizer keeps this mapping's history, if one runs.
    pub(crate) history: crate::sanitizer::HistorySlot,
}

impl Dma {
    /// The last byte of the mapping (inclusive, so a mapping that ends at
    /// the top of the IOVA space has `last() == u64::MAX`). Map refuses a
    /// size of 0 and a range that wraps, so this never saturates for a
    /// mapping in a [`DmaTree`].
    pub fn last(&self) -> u64 {
        self.iova.saturating_add(self.size.saturating_sub(1))
    }

    /// Does the mapping hold the byte at `iova`?
    pub fn contains(&self, iova: u64) -> bool {
        self.iova <= iova && iova <= self.last()
    }
}

/// A mapping that [`DmaTree::insert`] refused, given back to the caller
/// (who still owns its pins).
#[derive(Debug)]
pub struct Refused(pub Box<Dma>);

/// Proof from [`DmaTree::vacancy`] that `[first, last]` was free when the
/// tree was at `generation`: [`DmaTree::insert_vacant`] then skips the
/// overlap search (map checks for EEXIST before pinning and inserts after,
/// under the same lock; the token saves the second search).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vacancy {
    first: u64,
    last: u64,
    generation: u64,
}

/// Mappings by IOVA. Invariant: every mapping has `size > 0`, does not
/// wrap (`iova + size - 1 <= u64::MAX`), and no two overlap. Ranges are
/// `[first, last]` with an inclusive `last`, as iommufd writes them: an IOVA
/// can go all the way up to `u64::MAX`, and no end is ever computed as
/// `iova + size` (which wraps to 0 there).
///
/// Mappings are boxed: a B-tree node shifts its values on every insert and
/// remove, and a `Dma` is over a hundred bytes (the 4 KiB churn benchmark
/// spent 6% of its time in that memmove). `generation` changes with every
/// access that can change a mapping's range, so that a [`Vacancy`] is only
/// trusted while the tree is as it was checked.
#[derive(Debug, Default)]
pub struct DmaTree {
    map: BTreeMap<u64, Box<Dma>>,
    generation: u64,
}

impl DmaTree {
    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No mapping at all?
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Adds `dma`. Refuses (and hands it back) an empty or wrapping
    /// mapping, or one that overlaps a mapping already in the tree: the
    /// tree never replaces a mapping.
    pub fn insert(&mut self, dma: Dma) -> std::result::Result<(), Refused> {
        if dma.size == 0
            || dma.iova.checked_add(dma.size - 1).is_none()
            || self.any_overlapping(dma.iova, dma.last()).is_some()
        {
            return Err(Refused(Box::new(dma)));
        }
        self.generation = self.generation.wrapping_add(1);
        self.map.insert(dma.iova, Box::new(dma));
        Ok(())
    }

    /// `Ok` with a token when no mapping holds a byte of `[first, last]`,
    /// else the mapping [`DmaTree::any_overlapping`] finds.
    pub fn vacancy(&self, first: u64, last: u64) -> std::result::Result<Vacancy, &Dma> {
        match self.any_overlapping(first, last) {
            Some(dma) => Err(dma),
            None => Ok(Vacancy {
                first,
                last,
                generation: self.generation,
            }),
        }
    }

    /// [`DmaTree::insert`] of a mapping whose range `vacancy` found free:
    /// one tree search instead of two when the tree has not changed since
    /// and the range is the one checked; else the full check.
    pub fn insert_vacant(
        &mut self,
        vacancy: Vacancy,
        dma: Dma,
    ) -> std::result::Result<(), Refused> {
        let same = vacancy.generation == self.generation
            && dma.size != 0
            && vacancy.first == dma.iova
            && dma.iova.checked_add(dma.size - 1) == Some(vacancy.last);
        if !same {
            return self.insert(dma);
        }
        self.generation = self.generation.wrapping_add(1);
        self.map.insert(dma.iova, Box::new(dma));
        Ok(())
    }

    /// Takes out the mapping that starts at `iova` when `take` accepts it:
    /// one tree search (an unmap of exactly one mapping).
    pub fn remove_if(&mut self, iova: u64, take: impl FnOnce(&Dma) -> bool) -> Option<Dma> {
        match self.map.entry(iova) {
            std::collections::btree_map::Entry::Occupied(e) if take(e.get()) => {
                self.generation = self.generation.wrapping_add(1);
                Some(*e.remove())
            }
            _ => None,
        }
    }

    /// Takes out the mapping that starts at `iova`.
    pub fn remove(&mut self, iova: u64) -> Option<Dma> {
        self.generation = self.generation.wrapping_add(1);
        self.map.remove(&iova).map(|b| *b)
    }

    /// The mapping that starts at `iova`.
    pub fn get(&self, iova: u64) -> Option<&Dma> {
        self.map.get(&iova).map(|b| &**b)
    }

    /// The mapping that starts at `iova`, to change it.
    pub fn get_mut(&mut self, iova: u64) -> Option<&mut Dma> {
        self.generation = self.generation.wrapping_add(1);
        self.map.get_mut(&iova).map(|b| &mut **b)
    }

    /// Every mapping, by ascending IOVA.
    pub fn iter(&self) -> impl Iterator<Item = &Dma> {
        self.map.values().map(|b| &**b)
    }

    /// Every mapping, by ascending IOVA, to change them.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Dma> {
        self.generation = self.generation.wrapping_add(1);
        self.map.values_mut().map(|b| &mut **b)
    }

    /// The IOVAs of every mapping, ascending.
    pub fn keys(&self) -> Vec<u64> {
        self.map.keys().copied().collect()
    }

    /// The lowest mapping that holds a byte of `[first, last]` (type1's
    /// `vfio_find_dma` for a range of at least one byte).
    pub fn overlapping(&self, first: u64, last: u64) -> Option<&Dma> {
        if first > last {
            return None;
        }
        if let Some(dma) = self.containing(first) {
            return Some(dma);
        }
        self.map.range(first..=last).next().map(|(_, d)| &**d)
    }

    /// Some mapping that holds a byte of `[first, last]` (the highest): one
    /// tree lookup, for the checks that only ask whether any does (map,
    /// insert, attach conflicts).
    pub fn any_overlapping(&self, first: u64, last: u64) -> Option<&Dma> {
        if first > last {
            return None;
        }
        // Mappings are disjoint: if the last one starting at or below `last`
        // ends before `first`, every earlier one does too.
        let (_, dma) = self.map.range(..=last).next_back()?;
        (dma.last() >= first).then_some(&**dma)
    }

    /// The mapping containing the byte at `iova`, if any.
    pub fn containing(&self, iova: u64) -> Option<&Dma> {
        let (_, dma) = self.map.range(..=iova).next_back()?;
        dma.contains(iova).then_some(&**dma)
    }

    /// The IOVA of the lowest mapping that holds a byte of
    /// `[first, last]` (type1's `vfio_find_dma_first_node`).
    pub fn first_overlapping(&self, first: u64, last: u64) -> Option<u64> {
        self.overlapping(first, last).map(|d| d.iova)
    }

    /// IOVAs of the mappings from `from` upwards that start at or below
    /// `last`, in order (bounded: an unmap touches only what it covers).
    pub fn keys_between(&self, from: u64, last: u64) -> impl Iterator<Item = u64> + '_ {
        // Nothing when `from > last` (BTreeMap::range panics on that).
        (from <= last)
            .then_some(from..=last)
            .into_iter()
            .flat_map(move |r| self.map.range(r).map(|(k, _)| *k))
    }

    /// IOVAs of the mappings whose first byte is in `[first, last]`.
    pub fn keys_starting_in(&self, first: u64, last: u64) -> Vec<u64> {
        self.keys_between(first, last).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dma(iova: u64, size: u64) -> Dma {
        Dma {
            iova,
            size,
            vaddr: 0,
            prot: Prot::RW,
            vaddr_invalid: false,
            lock_cap: true,
            iommu_mapped: false,
            pinned_vaddr: 0,
            locked_pages: 0,
            bitmap: None,
            bitmap_touched: false,
            ext_pins: PinTracker::new(),
            space: None,
            history: Default::default(),
        }
    }

    #[test]
    fn overlapping_matches_type1_find() {
        let mut t = DmaTree::default();
        t.insert(dma(0x1000, 0x3000)).unwrap();
        t.insert(dma(0x8000, 0x1000)).unwrap();
        let found = |first, last| t.overlapping(first, last).map(|d| d.iova);
        assert_eq!(found(0x0, 0xfff), None);
        assert_eq!(found(0x0, 0x1000), Some(0x1000));
        assert_eq!(found(0x3fff, 0x3fff), Some(0x1000));
        assert_eq!(found(0x4000, 0x7fff), None);
        assert_eq!(found(0x4000, 0x8000), Some(0x8000));
        assert_eq!(found(0x0, u64::MAX), Some(0x1000));
        assert_eq!(found(u64::MAX, u64::MAX), None);
        assert_eq!(found(0x2000, 0x1000), None);
        assert_eq!(t.containing(0x1000).map(|d| d.iova), Some(0x1000));
        let any = |first, last| t.any_overlapping(first, last).map(|d| d.iova);
        assert_eq!(any(0x0, 0xfff), None);
        assert_eq!(any(0x0, 0x1000), Some(0x1000));
        assert_eq!(any(0x4000, 0x7fff), None);
        assert_eq!(any(0x0, u64::MAX), Some(0x8000));
        assert_eq!(any(0x3fff, 0x3fff), Some(0x1000));
        assert_eq!(any(0x2000, 0x1000), None);
        assert_eq!(t.containing(0x4000).map(|d| d.iova), None);
    }

    /// A vacancy token saves the second overlap search only while the tree
    /// is unchanged and for the range it was made for.
    #[test]
    fn vacancy_is_trusted_only_for_its_range_and_generation() {
        let mut t = DmaTree::default();
        t.insert(dma(0x1000, 0x1000)).unwrap();
        assert_eq!(t.vacancy(0x0, 0x1000).map(|_| ()).unwrap_err().iova, 0x1000);
        let v = t.vacancy(0x4000, 0x4fff).unwrap();
        // A change in between: the full check refuses the overlap.
        t.insert(dma(0x4000, 0x1000)).unwrap();
        let refused = t.insert_vacant(v, dma(0x4000, 0x1000)).unwrap_err();
        assert_eq!(refused.0.iova, 0x4000);
        // Another range than the one checked: checked again.
        let v = t.vacancy(0x8000, 0x8fff).unwrap();
        assert!(t.insert_vacant(v, dma(0x1000, 0x8000)).is_err());
        let v = t.vacancy(0x8000, 0x8fff).unwrap();
        t.insert_vacant(v, dma(0x8000, 0x1000)).unwrap();
        assert_eq!(t.keys(), vec![0x1000, 0x4000, 0x8000]);
        assert!(t.remove_if(0x4000, |d| d.size == 0x2000).is_none());
        assert!(t.remove_if(0x5000, |_| true).is_none());
        assert_eq!(
            t.remove_if(0x4000, |d| d.size == 0x1000).map(|d| d.iova),
            Some(0x4000)
        );
        t.insert(dma(0x4000, 0x1000)).unwrap();
        // get_mut may change a range: tokens made before it are not trusted.
        let v = t.vacancy(0x2000, 0x2fff).unwrap();
        if let Some(d) = t.get_mut(0x1000) {
            d.size = 0x2000;
        }
        assert!(t.insert_vacant(v, dma(0x2000, 0x1000)).is_err());
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn first_overlapping_finds_overlapping_or_next() {
        let mut t = DmaTree::default();
        t.insert(dma(0x1000, 0x3000)).unwrap();
        t.insert(dma(0x8000, 0x1000)).unwrap();
        assert_eq!(t.first_overlapping(0x2000, 0x2fff), Some(0x1000));
        assert_eq!(t.first_overlapping(0x4000, 0x4fff), None);
        assert_eq!(t.first_overlapping(0x4000, 0x8fff), Some(0x8000));
        assert_eq!(t.first_overlapping(0, u64::MAX), Some(0x1000));
        assert_eq!(t.first_overlapping(0x9000, 0x9fff), None);
        assert_eq!(
            t.keys_between(0x1000, u64::MAX).collect::<Vec<_>>(),
            vec![0x1000, 0x8000]
        );
        assert_eq!(
            t.keys_between(0x1000, 0x7fff).collect::<Vec<_>>(),
            vec![0x1000]
        );
        assert_eq!(t.keys_between(0x9000, 0x1000).count(), 0);
    }

    /// A mapping whose last byte is `u64::MAX` is found like any other, and
    /// the tree never replaces a mapping (issue 16: `iova + size` wrapped to
    /// 0 there, and a second insert at the same IOVA replaced the first).
    #[test]
    fn top_of_the_space_and_no_replacement() {
        let top = u64::MAX - 0xfff;
        let mut t = DmaTree::default();
        t.insert(dma(top, 0x1000)).unwrap();
        assert_eq!(t.get(top).map(Dma::last), Some(u64::MAX));
        assert_eq!(t.containing(u64::MAX).map(|d| d.iova), Some(top));
        assert_eq!(t.overlapping(top - 0x1000, top).map(|d| d.iova), Some(top));
        let refused = t.insert(dma(top, 0x1000)).unwrap_err();
        assert_eq!((refused.0.iova, refused.0.size), (top, 0x1000));
        assert!(t.insert(dma(top - 0x1000, 0x2000)).is_err());
        assert!(t.insert(dma(top - 0x1000, 0)).is_err());
        assert!(t.insert(dma(top, 0x2000)).is_err());
        assert_eq!(t.len(), 1);
        t.insert(dma(top - 0x1000, 0x1000)).unwrap();
        assert_eq!(t.keys(), vec![top - 0x1000, top]);
        assert_eq!(t.keys_starting_in(top, u64::MAX), vec![top]);
    }
}
