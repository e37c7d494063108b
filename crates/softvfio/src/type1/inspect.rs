//! Serialisable views of a container for `softvfio inspect` and tests.

use crate::container::*;
use crate::iova::IovaRange;

impl Container {
    // ---- introspection ----------------------------------------------------

    /// A serialisable view of the container for `inspect` and tests.
    pub fn snapshot(&self) -> ContainerSnapshot {
        let st = self.lock();
        let groups = st.groups.iter().map(|g| g.id).collect();
        let Some(t) = st.iommu.as_ref() else {
            return ContainerSnapshot {
                id: self.id,
                iommu: None,
                groups,
                mappings: Vec::new(),
                domains: Vec::new(),
                iova_ranges: Vec::new(),
                dma_avail: 0,
                dirty_tracking: false,
                locked_pages: self.mem.account().locked_pages(),
                pins: self.mem.stats(),
            };
        };
        ContainerSnapshot {
            id: self.id,
            iommu: Some(if t.nesting {
                "type1-nesting"
            } else if t.v2 {
                "type1v2"
            } else {
                "type1"
            }),
            groups,
            mappings: t
                .dmas
                .iter()
                .map(|d| MappingView {
                    iova: d.iova,
                    size: d.size,
                    vaddr: d.vaddr,
                    read: d.prot.read,
                    write: d.prot.write,
                    vaddr_invalid: d.vaddr_invalid,
                    iommu_mapped: d.iommu_mapped,
                    locked_pages: d.locked_pages,
                    external_pinned_pages: d.ext_pins.pinned_pages(),
                })
                .collect(),
            domains: t
                .domains
                .iter()
                .map(|d| {
                    let (n4k, n2m, n1g) = d.ops.leaf_counts();
                    DomainView {
                        id: d.ops.id(),
                        unit: d.unit.name(),
                        groups: d.groups.iter().map(|g| g.group.id).collect(),
                        enforce_cache_coherency: d.enforce_cache_coherency,
                        pgsize_bitmap: d.ops.pgsize_bitmap(),
                        leaf_entries_4k: n4k,
                        leaf_entries_2m: n2m,
                        leaf_entries_1g: n1g,
                    }
                })
                .collect(),
            iova_ranges: t.iova_list.ranges().to_vec(),
            dma_avail: t.dma_avail,
            dirty_tracking: t.dirty_tracking,
            locked_pages: self.mem.account().locked_pages(),
            pins: self.mem.stats(),
        }
    }
}

/// A mapping as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MappingView {
    /// First IOVA of the mapping.
    pub iova: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The user address it refers to now.
    pub vaddr: u64,
    /// Devices may read through it.
    pub read: bool,
    /// Devices may write through it.
    pub write: bool,
    /// Invalidated by `VFIO_DMA_UNMAP_FLAG_VADDR`, waiting for an update.
    pub vaddr_invalid: bool,
    /// Pinned and written to the IOMMU domains.
    pub iommu_mapped: bool,
    /// Pages it accounts against `RLIMIT_MEMLOCK`.
    pub locked_pages: u64,
    /// Pages pinned through the external API (mediated devices).
    pub external_pinned_pages: u64,
}

/// A domain as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DomainView {
    /// The IOMMU's domain id.
    pub id: u32,
    /// The IOMMU unit the domain was made on.
    pub unit: String,
    /// Ids of the groups attached to it.
    pub groups: Vec<u32>,
    /// The domain enforces cache coherency (`VFIO_DMA_CC_IOMMU`).
    pub enforce_cache_coherency: bool,
    /// Page sizes the domain maps.
    pub pgsize_bitmap: u64,
    /// Leaf page-table entries of 4 KiB.
    pub leaf_entries_4k: u64,
    /// Leaf page-table entries of 2 MiB.
    pub leaf_entries_2m: u64,
    /// Leaf page-table entries of 1 GiB.
    pub leaf_entries_1g: u64,
}

/// The state of a container.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContainerSnapshot {
    /// The container's id (unique in this process).
    pub id: u64,
    /// The IOMMU backend set: "type1", "type1v2", "type1-nesting", or none.
    pub iommu: Option<&'static str>,
    /// Ids of the groups in the container.
    pub groups: Vec<u32>,
    /// The DMA mappings, by IOVA.
    pub mappings: Vec<MappingView>,
    /// The IOMMU domains.
    pub domains: Vec<DomainView>,
    /// The valid IOVA ranges (`GET_INFO`'s IOVA_RANGE capability).
    pub iova_ranges: Vec<IovaRange>,
    /// Mappings that may still be made (`dma_avail`).
    pub dma_avail: u32,
    /// Dirty page tracking is on.
    pub dirty_tracking: bool,
    /// Pages accounted against the address space's `RLIMIT_MEMLOCK`.
    pub locked_pages: u64,
    /// The memory backend's pin statistics.
    pub pins: crate::memory::PinStats,
}
