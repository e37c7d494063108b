//! DMA mappings (type1's `struct vfio_dma`) and the tree that holds them.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::external::PinTracker;
use crate::iommu::Prot;

/// One `VFIO_IOMMU_MAP_DMA` mapping.
#[derive(Debug, Clone)]
pub struct Dma {
    pub iova: u64,
    pub size: u64,
    /// The user address the mapping refers to now (may be updated).
    pub vaddr: u64,
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
    /// Pages pinned through the external API (mediated devices), with
    /// their pin counts, by page offset in the mapping.
    pub ext_pins: PinTracker,
}

impl Dma {
    /// Exclusive end of the mapping.
    pub fn end(&self) -> u64 {
        self.iova + self.size
    }
}

/// Mappings by IOVA; they never overlap.
#[derive(Debug, Default)]
pub struct DmaTree {
    map: BTreeMap<u64, Dma>,
}

impl DmaTree {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn insert(&mut self, dma: Dma) {
        self.map.insert(dma.iova, dma);
    }

    pub fn remove(&mut self, iova: u64) -> Option<Dma> {
        self.map.remove(&iova)
    }

    pub fn get(&self, iova: u64) -> Option<&Dma> {
        self.map.get(&iova)
    }

    pub fn get_mut(&mut self, iova: u64) -> Option<&mut Dma> {
        self.map.get_mut(&iova)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Dma> {
        self.map.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Dma> {
        self.map.values_mut()
    }

    pub fn keys(&self) -> Vec<u64> {
        self.map.keys().copied().collect()
    }

    /// type1's `vfio_find_dma(start, size)`: a mapping with
    /// `dma.iova < start + size && start < dma.end`. With `size == 0` that
    /// is a mapping that contains `start` strictly after its first byte.
    pub fn find(&self, start: u64, size: u64) -> Option<&Dma> {
        let limit = u128::from(start) + u128::from(size);
        // The candidate is the mapping with the greatest iova below `limit`
        // (mappings are disjoint, so only it can reach back to `start`).
        let upper = if limit > u128::from(u64::MAX) {
            Bound::Unbounded
        } else {
            Bound::Excluded(limit as u64)
        };
        let (_, dma) = self.map.range((Bound::Unbounded, upper)).next_back()?;
        if u128::from(dma.iova) < limit && start < dma.end() {
            Some(dma)
        } else {
            None
        }
    }

    /// The mapping containing the byte at `iova`, if any.
    pub fn containing(&self, iova: u64) -> Option<&Dma> {
        let (_, dma) = self.map.range(..=iova).next_back()?;
        (iova < dma.end()).then_some(dma)
    }

    /// The first mapping that ends after `start`, if it begins before
    /// `start + size` (`size == 0` means no upper bound check): type1's
    /// `vfio_find_dma_first_node`. Returns its iova.
    pub fn first_from(&self, start: u64, size: u64) -> Option<u64> {
        let found = match self.containing(start) {
            Some(d) => d.iova,
            None => *self.map.range(start..).next()?.0,
        };
        if size != 0 && u128::from(found) >= u128::from(start) + u128::from(size) {
            return None;
        }
        Some(found)
    }

    /// Iovas of mappings from `first` upwards that start below `end`, in
    /// order (bounded: an unmap touches only what it covers).
    pub fn keys_between(&self, first: u64, end: u128) -> impl Iterator<Item = u64> + '_ {
        self.map
            .range(first..)
            .map(|(k, _)| *k)
            .take_while(move |k| u128::from(*k) < end)
    }

    /// Iovas of mappings whose first byte is in `start..start + size`.
    pub fn keys_starting_in(&self, start: u64, size: u64) -> Vec<u64> {
        let end = u128::from(start) + u128::from(size);
        self.map
            .range(start..)
            .take_while(|(k, _)| u128::from(**k) < end)
            .map(|(k, _)| *k)
            .collect()
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
            ext_pins: PinTracker::new(),
        }
    }

    #[test]
    fn find_matches_type1() {
        let mut t = DmaTree::default();
        t.insert(dma(0x1000, 0x3000));
        t.insert(dma(0x8000, 0x1000));
        assert_eq!(t.find(0x0, 0x1000).map(|d| d.iova), None);
        assert_eq!(t.find(0x0, 0x1001).map(|d| d.iova), Some(0x1000));
        assert_eq!(t.find(0x3fff, 1).map(|d| d.iova), Some(0x1000));
        assert_eq!(t.find(0x4000, 0x4000).map(|d| d.iova), None);
        assert_eq!(t.find(0x4000, 0x4001).map(|d| d.iova), Some(0x8000));
        // size 0: strictly inside only
        assert_eq!(t.find(0x1000, 0).map(|d| d.iova), None);
        assert_eq!(t.find(0x1001, 0).map(|d| d.iova), Some(0x1000));
        assert_eq!(t.find(u64::MAX, 1).map(|d| d.iova), None);
    }

    #[test]
    fn first_from_finds_overlapping_or_next() {
        let mut t = DmaTree::default();
        t.insert(dma(0x1000, 0x3000));
        t.insert(dma(0x8000, 0x1000));
        assert_eq!(t.first_from(0x2000, 0x1000), Some(0x1000));
        assert_eq!(t.first_from(0x4000, 0x1000), None);
        assert_eq!(t.first_from(0x4000, 0x5000), Some(0x8000));
        assert_eq!(t.first_from(0, u64::MAX), Some(0x1000));
        assert_eq!(t.first_from(0x9000, 0x1000), None);
    }
}
