//! The type1 state of a container (type1's `struct vfio_iommu`), the
//! helpers every operation shares, and the invariant check (the relations
//! are listed in the [module header](super)).

use std::sync::Arc;

use crate::account::OverLimit;
use crate::container::*;
use crate::dma::DmaTree;
use crate::error::VfioError;
use crate::external::ExternalDevice;
use crate::iommu::{DomainOps, IommuUnit};
use crate::iova::IovaList;
use crate::memory::PAGE_SIZE;
use crate::platform::Group;

/// A group as attached to a type1 IOMMU.
pub(crate) struct AttachedGroup {
    pub(crate) group: Arc<Group>,
    /// The group only dirties memory through the pinning interface.
    pub(crate) pinned_page_dirty_scope: bool,
}

/// One IOMMU domain of the container.
pub(crate) struct DomainEntry {
    pub(crate) ops: Arc<dyn DomainOps>,
    pub(crate) unit: Arc<dyn IommuUnit>,
    pub(crate) groups: Vec<AttachedGroup>,
    pub(crate) enforce_cache_coherency: bool,
}

/// The domain itself, so that the pinning path can take `&[DomainEntry]`
/// as it takes `&[Arc<dyn DomainOps>]` (no list built per map call).
impl AsRef<dyn DomainOps> for DomainEntry {
    fn as_ref(&self) -> &(dyn DomainOps + 'static) {
        self.ops.as_ref()
    }
}

/// type1's `struct vfio_iommu`.
pub(crate) struct Type1 {
    pub(super) v2: bool,
    pub(super) nesting: bool,
    pub(super) dmas: DmaTree,
    pub(super) domains: Vec<DomainEntry>,
    pub(super) emulated_groups: Vec<AttachedGroup>,
    pub(super) iova_list: IovaList,
    pub(super) pgsize_bitmap: u64,
    pub(super) dma_avail: u32,
    pub(super) dirty_tracking: bool,
    pub(super) num_non_pinned_groups: u32,
    pub(super) vaddr_invalid_count: u32,
    /// The DMA sanitizer's history of this container, recorded under its
    /// lock (made on the first event once a sanitizer is set).
    pub(super) history: Option<crate::sanitizer::Recorder>,
}

pub(crate) struct State {
    /// Groups attached to the container (`container->group_list`).
    pub(crate) groups: Vec<Arc<Group>>,
    /// The IOMMU driver data once `VFIO_SET_IOMMU` succeeded.
    pub(crate) iommu: Option<Type1>,
    /// Set when the container is released; wakes vaddr waiters.
    pub(crate) closed: bool,
    /// Devices registered for external pinning (type1's `device_list`):
    /// their `dma_unmap` callbacks are the unmap notifier.
    pub(crate) external_devices: Vec<Arc<ExternalDevice>>,
}

impl State {
    /// The sanitizer's recorder of this container, if one was made.
    pub(crate) fn history(&self) -> Option<&crate::sanitizer::Recorder> {
        self.iommu.as_ref().and_then(|t| t.history.as_ref())
    }

    /// The same, to record into.
    pub(crate) fn history_mut(&mut self) -> Option<&mut crate::sanitizer::Recorder> {
        self.iommu.as_mut().and_then(|t| t.history.as_mut())
    }
}

impl Type1 {
    /// `VFIO_IOMMU_GET_INFO` of this state.
    pub(crate) fn info(&self) -> Type1Info {
        Type1Info {
            pgsize_bitmap: self.pgsize_bitmap,
            dma_avail: self.dma_avail,
            iova_ranges: self.iova_list.ranges().to_vec(),
            migration_pgsize_bitmap: min_pgsize(self.pgsize_bitmap),
            max_dirty_bitmap_size: crate::dirty::DIRTY_BITMAP_SIZE_MAX,
        }
    }

    /// The extensions that depend on the state (the type1 ones always hold).
    pub(crate) fn has_extension(&self, ext: Extension) -> bool {
        match ext {
            // Disabled with mdevs present: they cannot pin or rw safely
            // while a vaddr is being updated.
            Extension::UpdateVaddr => self.emulated_groups.is_empty(),
            Extension::DmaCacheCoherency => self.domains.iter().all(|d| d.enforce_cache_coherency),
            _ => false,
        }
    }
}

pub(crate) fn page_pages(size: u64) -> u64 {
    size / PAGE_SIZE
}

pub(crate) fn min_pgsize(bitmap: u64) -> u64 {
    if bitmap == 0 {
        PAGE_SIZE
    } else {
        1u64 << bitmap.trailing_zeros()
    }
}

pub(crate) fn over_limit(e: OverLimit) -> VfioError {
    VfioError::NoMem(e.to_string())
}

/// Removes every translation of `[iova, iova + size)`, looping over
/// `iommu_unmap`'s partial results.
pub(crate) fn unmap_all_of(domain: &dyn DomainOps, iova: u64, size: u64) {
    let mut done = 0u64;
    while done < size {
        let n = domain.unmap(iova + done, size - done);
        if n == 0 {
            // A hole: skip a page and keep going (mapped pieces may follow).
            done += PAGE_SIZE;
        } else {
            done += n;
        }
    }
}

impl Container {
    /// Checks the relations listed in this module's "Invariants" and
    /// describes the first one broken. Costs a walk over every mapping (and
    /// its external pins): for tests, fuzzers and debugging, not hot paths.
    pub fn check_invariants(&self) -> std::result::Result<(), BrokenInvariant> {
        let st = self.lock();
        let broken = |what: String| Err(BrokenInvariant(what));
        let Some(t) = st.iommu.as_ref() else {
            return Ok(());
        };
        if st.groups.is_empty() {
            return broken("an IOMMU is set on a container with no group".into());
        }
        let limit = self.cfg.dma_entry_limit;
        if u64::from(t.dma_avail) + t.dmas.len() as u64 != u64::from(limit) {
            return broken(format!(
                "dma_avail {} + {} mappings != dma_entry_limit {limit}",
                t.dma_avail,
                t.dmas.len()
            ));
        }
        let mut prev_last: Option<u64> = None;
        let mut invalid = 0u32;
        for d in t.dmas.iter() {
            let at = d.iova;
            if d.size == 0 || (d.iova | d.size) & (PAGE_SIZE - 1) != 0 {
                return broken(format!(
                    "mapping {at:#x} size {:#x} empty or unaligned",
                    d.size
                ));
            }
            let Some(last) = d.iova.checked_add(d.size - 1) else {
                return broken(format!("mapping {at:#x} size {:#x} wraps", d.size));
            };
            if prev_last.is_some_and(|p| p >= d.iova) {
                return broken(format!("mapping {at:#x} overlaps the one before"));
            }
            prev_last = Some(last);
            if !t.iova_list.allows(d.iova, last) {
                return broken(format!("mapping {at:#x}..={last:#x} outside the IOVA list"));
            }
            if d.vaddr_invalid {
                invalid += 1;
                if !d.ext_pins.is_empty() {
                    return broken(format!(
                        "mapping {at:#x} has external pins and an invalid vaddr"
                    ));
                }
            }
            if d.iommu_mapped == t.domains.is_empty() {
                return broken(format!(
                    "mapping {at:#x} iommu_mapped={} with {} domains",
                    d.iommu_mapped,
                    t.domains.len()
                ));
            }
            let want_locked = if d.iommu_mapped {
                d.size / PAGE_SIZE
            } else {
                d.ext_pins.pinned_pages()
            };
            if d.locked_pages != want_locked {
                return broken(format!(
                    "mapping {at:#x} accounts {} locked pages, expected {want_locked}",
                    d.locked_pages
                ));
            }
            if !d.bitmap_touched && d.bitmap.as_ref().is_some_and(|b| b.iter().any(|&w| w != 0)) {
                return broken(format!(
                    "mapping {at:#x} has dirty bits set but is marked untouched"
                ));
            }
            if d.bitmap.is_some() != t.dirty_tracking {
                return broken(format!(
                    "mapping {at:#x} has a dirty bitmap: {}, tracking: {}",
                    d.bitmap.is_some(),
                    t.dirty_tracking
                ));
            }
        }
        if invalid != t.vaddr_invalid_count {
            return broken(format!(
                "vaddr_invalid_count {} but {invalid} mappings have an invalid vaddr",
                t.vaddr_invalid_count
            ));
        }
        let attached: Vec<&AttachedGroup> = t
            .domains
            .iter()
            .flat_map(|d| d.groups.iter())
            .chain(t.emulated_groups.iter())
            .collect();
        let non_pinned = attached
            .iter()
            .filter(|g| !g.pinned_page_dirty_scope)
            .count() as u64;
        if non_pinned != u64::from(t.num_non_pinned_groups) {
            return broken(format!(
                "num_non_pinned_groups {} but {non_pinned} groups lack the pinned-page scope",
                t.num_non_pinned_groups
            ));
        }
        if t.domains.iter().any(|d| d.groups.is_empty()) {
            return broken("a domain without groups".into());
        }
        let mut in_type1: Vec<u32> = attached.iter().map(|g| g.group.id).collect();
        let mut in_container: Vec<u32> = st.groups.iter().map(|g| g.id).collect();
        in_type1.sort_unstable();
        in_container.sort_unstable();
        if in_type1 != in_container {
            return broken(format!(
                "groups attached to type1 {in_type1:?} != the container's {in_container:?}"
            ));
        }
        Ok(())
    }
}

/// A relation of the type1 state that does not hold, as
/// [`Container::check_invariants`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenInvariant(pub String);

impl std::fmt::Display for BrokenInvariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "broken type1 invariant: {}", self.0)
    }
}

impl std::error::Error for BrokenInvariant {}
