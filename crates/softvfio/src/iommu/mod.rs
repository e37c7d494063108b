//! What the engine needs from IOMMU hardware, as traits.
//!
//! The engine allocates domains on IOMMU units, attaches the devices of a
//! group to a domain, and maps/unmaps through it. [`vtd`] implements these
//! traits over the software VT-d model of the `soft-iommu` crate.

use std::any::Any;
use std::sync::Arc;

use thiserror::Error;

use crate::memory::UserMemory;

pub mod vtd;

/// Access rights of a mapping, from the device's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
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

    /// Does `self` allow everything `other` asks for?
    pub fn allows(self, other: Prot) -> bool {
        (self.read || !other.read) && (self.write || !other.write)
    }
}

/// Kind of a reserved IOVA region (Linux `enum iommu_resv_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResvKind {
    /// Identity-mapped, cannot be released (RMRR).
    Direct,
    /// Identity-mapped but may be released for device assignment; type1 does
    /// not exclude these from the IOVA list.
    DirectRelaxable,
    /// Must not be mapped at all.
    Reserved,
    /// Hardware MSI doorbell window (x86 0xfee00000-0xfeefffff).
    Msi,
    /// Software-managed MSI window (ARM).
    SwMsi,
}

/// A reserved IOVA range of a group, `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResvRegion {
    /// First IOVA of the region.
    pub start: u64,
    /// Last IOVA of the region (inclusive).
    pub end: u64,
    /// What the region is reserved for.
    pub kind: ResvKind,
}

/// Errors from IOMMU operations, with the errno the kernel's IOMMU layer uses.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IommuError {
    #[error("IOVA range already mapped")]
    /// Part of the range is mapped already.
    AlreadyMapped,
    #[error("IOVA range outside the domain's aperture")]
    /// The range is outside the domain's aperture.
    OutOfRange,
    #[error("misaligned address or size")]
    /// The range or address is not aligned to a supported page size.
    Misaligned,
    #[error("out of page-table memory")]
    /// No memory for page tables.
    NoMem,
    #[error("device cannot be attached to this domain: {0}")]
    /// The domain cannot take this device (another unit, other capabilities).
    Incompatible(String),
    #[error("no such device behind this IOMMU: {0:#06x}")]
    /// No such device (requester id) behind the unit.
    NoDevice(u16),
    #[error("injected failure")]
    /// A failure injected by a test.
    Injected,
}

impl IommuError {
    /// The errno type1 returns for it.
    pub fn errno(&self) -> i32 {
        match self {
            IommuError::AlreadyMapped => libc::EEXIST,
            IommuError::OutOfRange | IommuError::Misaligned => libc::EINVAL,
            IommuError::NoMem | IommuError::Injected => libc::ENOMEM,
            IommuError::Incompatible(_) => libc::EINVAL,
            IommuError::NoDevice(_) => libc::ENODEV,
        }
    }
}

/// An IOMMU domain: one I/O page table shared by the devices attached to it.
pub trait DomainOps: Send + Sync {
    /// Domain id, unique per IOMMU model instance.
    fn id(&self) -> u32;
    /// Maps `[iova, iova + size)` to `[phys, phys + size)` using the largest
    /// pages alignment allows. `size` and both addresses are aligned to the
    /// smallest page size.
    fn map(&self, iova: u64, phys: u64, size: u64, prot: Prot) -> Result<(), IommuError>;
    /// [`DomainOps::map`] with no page larger than `max_page`, in one call:
    /// the leaves one `map` per `max_page`-aligned piece would give. `None`
    /// when the domain cannot (the caller then maps piece by piece).
    fn map_capped(
        &self,
        iova: u64,
        phys: u64,
        size: u64,
        prot: Prot,
        max_page: u64,
    ) -> Option<Result<(), IommuError>> {
        let _ = (iova, phys, size, prot, max_page);
        None
    }
    /// Removes translations starting at `iova`, following Linux's
    /// `iommu_unmap` contract: returns the bytes unmapped (a super page is
    /// removed whole), stops at the first hole. Does not flush the IOTLB.
    fn unmap(&self, iova: u64, size: u64) -> u64;
    /// Invalidates the IOTLB for `[iova, iova + size)` and returns only when
    /// no DMA that translated through a removed entry is still in flight.
    fn flush(&self, iova: u64, size: u64);
    /// Current translation of `iova` (page-table walk, no IOTLB).
    fn iova_to_phys(&self, iova: u64) -> Option<u64>;
    /// Page sizes the domain can map (bit n set = 2^n bytes).
    fn pgsize_bitmap(&self) -> u64;
    /// Inclusive aperture `(start, end)`.
    fn aperture(&self) -> (u64, u64);
    /// Can the domain block non-coherent (no-snoop) DMA? (VFIO_DMA_CC_IOMMU)
    fn enforce_cache_coherency(&self) -> bool;
    /// Precise dirty tracking: clears the dirty bits of the leaf entries in
    /// `[iova, iova + size)` and calls `dirty` with the IOVA of every dirty
    /// base page (4 KiB granularity; a dirty super page reports all its pages).
    fn read_and_clear_dirty(&self, iova: u64, size: u64, dirty: &mut dyn FnMut(u64));
    /// Number of leaf entries per page size, for tests and `inspect`:
    /// `(4K entries, 2M entries, 1G entries)`.
    fn leaf_counts(&self) -> (u64, u64, u64);
    /// The domain as `Any`, for tests that reach the model behind it.
    fn as_any(&self) -> &dyn Any;
}

/// A unit's registers as iommufd's `IOMMU_GET_HW_INFO` shows them
/// (`struct iommu_hw_info_vtd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HwInfo {
    /// `IOMMU_HW_INFO_VTD_*` flags.
    pub flags: u32,
    /// The capability register.
    pub cap_reg: u64,
    /// The extended capability register.
    pub ecap_reg: u64,
}

/// One IOMMU unit (a VT-d DMAR unit) with the devices behind it.
pub trait IommuUnit: Send + Sync {
    /// The unit's name, for `inspect`.
    fn name(&self) -> String;
    /// Allocates an empty domain on this unit; DMA through it reaches `mem`.
    fn alloc_domain(&self, mem: Arc<dyn UserMemory>) -> Result<Arc<dyn DomainOps>, IommuError>;
    /// Points the device with requester id `rid` at `domain`. Fails when the
    /// domain cannot be used by this unit (e.g. wider address width), so the
    /// engine allocates a new domain instead, as Linux does.
    fn attach_device(&self, rid: u16, domain: &Arc<dyn DomainOps>) -> Result<(), IommuError>;
    /// Returns the device to blocking (no translation: all DMA faults).
    fn detach_device(&self, rid: u16);
    /// Reserved regions of the device (the MSI window on x86).
    fn reserved_regions(&self, rid: u16) -> Vec<ResvRegion>;
    /// What `IOMMU_GET_HW_INFO` reports for this unit (`None`: type NONE).
    fn hw_info(&self) -> Option<HwInfo> {
        None
    }

    // ---- shared virtual memory (see crate::pasid and docs/SVM.md) ------------
    // Units without PASID support keep the defaults: ENODEV.

    /// Can the unit translate requests with PASID (bind, nested)?
    fn supports_pasid(&self) -> bool {
        false
    }
    /// Binds the process address space `mem` to device `rid`; returns the
    /// PASID (20 bits, lowest free first).
    fn bind_pasid(&self, _rid: u16, _mem: Arc<dyn UserMemory>) -> crate::Result<u32> {
        Err(crate::VfioError::NoDevice)
    }
    /// Ends a bond; `release` says whether the PASID may be reused.
    fn unbind_pasid(
        &self,
        _rid: u16,
        _pasid: u32,
        _release: crate::pasid::SvmRelease,
    ) -> crate::Result<()> {
        Err(crate::VfioError::NoDevice)
    }
    /// Binds a guest PASID table: `size` entries at IOVA `ptr` of the
    /// device's domain.
    fn bind_pasid_table(&self, _rid: u16, _ptr: u64, _size: u32) -> crate::Result<()> {
        Err(crate::VfioError::NoDevice)
    }
    /// Unbinds the device's guest PASID table.
    fn unbind_pasid_table(&self, _rid: u16) -> crate::Result<()> {
        Err(crate::VfioError::NoDevice)
    }
    /// A guest invalidation passed down.
    fn invalidate(&self, _rid: u16, _inv: crate::pasid::SvmInvalidate) -> crate::Result<()> {
        Err(crate::VfioError::NoDevice)
    }
    /// The device fd closed: every bond and guest table of `rid` ends.
    fn release_pasids(&self, _rid: u16) {}
}
