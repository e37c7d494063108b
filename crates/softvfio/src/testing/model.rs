//! A reference model of type1's mapping rules, written from the kernel's
//! rules rather than from the engine: what is mapped where, the sizes
//! returned, the errno of every refusal, `dma_avail`, and the pages pinned
//! and accounted. The differential fuzz target and the fault-injection tests
//! run the same operations on the engine and on this model and compare.
//!
//! The model covers one container with IOMMU-backed groups only (every
//! mapping is pinned at map time), over a fixed user address space described
//! by [`UserRegion`]s and a fixed valid IOVA list.

use std::collections::BTreeMap;

use crate::container::{
    MAP_FLAG_READ, MAP_FLAG_VADDR, MAP_FLAG_WRITE, UNMAP_FLAG_ALL, UNMAP_FLAG_VADDR,
};
use crate::memory::PAGE_SIZE;

const RW: u32 = MAP_FLAG_READ | MAP_FLAG_WRITE;

/// A range of user memory the model knows about: `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRegion {
    /// First user address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Writable (read-only memory refuses write mappings).
    pub writable: bool,
}

/// One mapping as the model keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelMapping {
    /// Size in bytes.
    pub size: u64,
    /// The address DMA reaches: the one pinned at map time, or the new
    /// vaddr of an update when that range could be pinned (issue 13).
    pub vaddr: u64,
    /// Device reads allowed.
    pub read: bool,
    /// Device writes allowed.
    pub write: bool,
    /// Its vaddr was invalidated.
    pub invalid: bool,
}

/// type1 as a list of mappings.
#[derive(Debug, Clone)]
pub struct Type1Model {
    /// v2 unmap semantics.
    pub v2: bool,
    /// `dma_entry_limit`.
    pub limit: u32,
    /// Mappings by IOVA.
    pub maps: BTreeMap<u64, ModelMapping>,
    /// Valid IOVA ranges, inclusive, disjoint, sorted.
    pub valid_iova: Vec<(u64, u64)>,
    /// The user memory that can be pinned.
    pub memory: Vec<UserRegion>,
}

impl Type1Model {
    /// An empty container with the given rules.
    pub fn new(v2: bool, limit: u32, valid_iova: Vec<(u64, u64)>, memory: Vec<UserRegion>) -> Self {
        Type1Model {
            v2,
            limit,
            maps: BTreeMap::new(),
            valid_iova,
            memory,
        }
    }

    /// The valid IOVA list of a 39-bit VT-d with the x86 MSI window
    /// reserved (the reference platform).
    pub fn reference_iova_list() -> Vec<(u64, u64)> {
        vec![(0, 0xfedf_ffff), (0xfef0_0000, (1u64 << 39) - 1)]
    }

    /// `VFIO_IOMMU_GET_INFO`'s `dma_avail`.
    pub fn avail(&self) -> u32 {
        self.limit.saturating_sub(self.maps.len() as u32)
    }

    /// Pages pinned (and accounted) for all mappings.
    pub fn mapped_pages(&self) -> u64 {
        self.maps.values().map(|m| m.size / PAGE_SIZE).sum()
    }

    /// `(iova, size, vaddr_invalid)` of every mapping, in IOVA order.
    pub fn listing(&self) -> Vec<(u64, u64, bool)> {
        self.maps
            .iter()
            .map(|(k, m)| (*k, m.size, m.invalid))
            .collect()
    }

    /// The model mapping covering `iova`, if any.
    pub fn lookup(&self, iova: u64) -> Option<(u64, ModelMapping)> {
        let (k, m) = self.maps.range(..=iova).next_back()?;
        (iova - k < m.size).then_some((*k, *m))
    }

    fn overlapping(&self, iova: u64, size: u64) -> Vec<u64> {
        let end = u128::from(iova) + u128::from(size);
        self.maps
            .iter()
            .filter(|(k, m)| {
                u128::from(**k) < end && u128::from(**k) + u128::from(m.size) > u128::from(iova)
            })
            .map(|(k, _)| *k)
            .collect()
    }

    fn iova_allowed(&self, start: u64, last: u64) -> bool {
        self.valid_iova.is_empty()
            || self
                .valid_iova
                .iter()
                .any(|&(s, e)| start >= s && last <= e)
    }

    /// Can `[vaddr, vaddr + size)` be pinned with `write` access? The
    /// regions are checked page by page (touching regions chain).
    fn memory_ok(&self, vaddr: u64, size: u64, write: bool) -> bool {
        let end = u128::from(vaddr) + u128::from(size);
        let mut cur = u128::from(vaddr);
        while cur < end {
            let Some(r) = self.memory.iter().find(|r| {
                u128::from(r.start) <= cur && cur < u128::from(r.start) + u128::from(r.len)
            }) else {
                return false;
            };
            if write && !r.writable {
                return false;
            }
            cur = u128::from(r.start) + u128::from(r.len);
        }
        true
    }

    /// `VFIO_IOMMU_MAP_DMA` (after the ABI checks): the errno on refusal.
    pub fn map(&mut self, iova: u64, vaddr: u64, size: u64, flags: u32) -> Result<(), i32> {
        let set_vaddr = flags & MAP_FLAG_VADDR != 0;
        let prot = flags & RW != 0;
        if prot == set_vaddr
            || size == 0
            || !size.is_multiple_of(PAGE_SIZE)
            || !iova.is_multiple_of(PAGE_SIZE)
            || !vaddr.is_multiple_of(PAGE_SIZE)
        {
            return Err(libc::EINVAL);
        }
        if iova.checked_add(size - 1).is_none() || vaddr.checked_add(size - 1).is_none() {
            return Err(libc::EINVAL);
        }
        let hits = self.overlapping(iova, size);
        if set_vaddr {
            if hits.is_empty() {
                return Err(libc::ENOENT);
            }
            // The kernel finds one overlapping mapping (any) and compares it.
            let m = self.maps[&hits[0]];
            if hits.len() != 1 || hits[0] != iova || m.size != size || !m.invalid {
                return Err(libc::EINVAL);
            }
            // DMA follows the new vaddr when it can be pinned (live update
            // maps the same memory there); otherwise the old pages stay
            // what DMA reaches, as Linux's pinned pages do.
            let movable = self.memory_ok(vaddr, size, m.write);
            if let Some(m) = self.maps.get_mut(&iova) {
                m.invalid = false;
                if movable {
                    m.vaddr = vaddr;
                }
            }
            return Ok(());
        }
        if !hits.is_empty() {
            return Err(libc::EEXIST);
        }
        if self.maps.len() as u32 >= self.limit {
            return Err(libc::ENOSPC);
        }
        if !self.iova_allowed(iova, iova + (size - 1)) {
            return Err(libc::EINVAL);
        }
        if !self.memory_ok(vaddr, size, flags & MAP_FLAG_WRITE != 0) {
            return Err(libc::EFAULT);
        }
        self.maps.insert(
            iova,
            ModelMapping {
                size,
                vaddr,
                read: flags & MAP_FLAG_READ != 0,
                write: flags & MAP_FLAG_WRITE != 0,
                invalid: false,
            },
        );
        Ok(())
    }

    /// Attaching another IOMMU-backed group replays every mapping into its
    /// new domain, which needs every vaddr valid (EFAULT otherwise, where the
    /// kernel would wait).
    pub fn replay_ok(&self) -> Result<(), i32> {
        if self.maps.values().any(|m| m.invalid) {
            Err(libc::EFAULT)
        } else {
            Ok(())
        }
    }

    /// Would [`Type1Model::map`] succeed (without changing the model)?
    pub fn map_would_succeed(&self, iova: u64, vaddr: u64, size: u64, flags: u32) -> bool {
        self.clone().map(iova, vaddr, size, flags).is_ok()
    }

    /// `VFIO_IOMMU_UNMAP_DMA` with flags 0, `UNMAP_FLAG_ALL` and/or
    /// `UNMAP_FLAG_VADDR`: the bytes unmapped (or invalidated).
    pub fn unmap(&mut self, iova: u64, size: u64, flags: u32) -> Result<u64, i32> {
        let all = flags & UNMAP_FLAG_ALL != 0;
        let invalidate = flags & UNMAP_FLAG_VADDR != 0;
        if !iova.is_multiple_of(PAGE_SIZE) {
            return Err(libc::EINVAL);
        }
        let (iova, size) = if all {
            if iova != 0 || size != 0 {
                return Err(libc::EINVAL);
            }
            (0, u64::MAX)
        } else {
            if size == 0 || !size.is_multiple_of(PAGE_SIZE) || iova.checked_add(size - 1).is_none()
            {
                return Err(libc::EINVAL);
            }
            (iova, size)
        };
        let mut hits = self.overlapping(iova, size);
        if self.v2 && !all {
            let first_bisected = hits.first().is_some_and(|k| *k < iova);
            let last_bisected = hits.last().is_some_and(|k| {
                u128::from(*k) + u128::from(self.maps[k].size) > u128::from(iova) + u128::from(size)
            });
            if first_bisected || last_bisected {
                return Err(libc::EINVAL);
            }
        }
        if !self.v2 && hits.first().is_some_and(|k| *k < iova) {
            // v1: a range starting inside a mapping stops at it: nothing.
            hits.clear();
        }
        let mut total = 0u64;
        if invalidate {
            if hits.iter().any(|k| self.maps[k].invalid) {
                return Err(libc::EINVAL);
            }
            for k in hits {
                if let Some(m) = self.maps.get_mut(&k) {
                    m.invalid = true;
                    total += m.size;
                }
            }
            return Ok(total);
        }
        for k in hits {
            total += self.maps.remove(&k).map(|m| m.size).unwrap_or(0);
        }
        Ok(total)
    }
}
