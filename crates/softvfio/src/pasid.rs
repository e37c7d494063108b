//! Shared virtual memory on VFIO device fds: the ABI of the SVM RFC
//! (`VFIO_DEVICE_BIND_TASK`/`UNBIND_TASK`) and of the virtual-SVM reply
//! (`VFIO_DEVICE_SVM`: guest PASID table bind, invalidation passdown,
//! release), with the numbers fixed by issue 7. See `docs/SVM.md`.
//!
//! Every struct is laid out as the C compiler lays out the thread's
//! definition (x86-64 SysV); the layouts are `#[repr(C)]` and the offsets
//! are checked at compile time below.

#![allow(non_camel_case_types)]

use std::mem::{offset_of, size_of};

use crate::error::{Result, VfioError};

/// `_IO(VFIO_TYPE, VFIO_BASE + 22)`.
pub const VFIO_DEVICE_BIND_TASK: u64 = crate::uapi::vfio_io(22);
/// `_IO(VFIO_TYPE, VFIO_BASE + 23)`.
pub const VFIO_DEVICE_UNBIND_TASK: u64 = crate::uapi::vfio_io(23);
/// `_IO(VFIO_TYPE, VFIO_BASE + 24)`.
pub const VFIO_DEVICE_SVM: u64 = crate::uapi::vfio_io(24);

/// `VFIO_DEVICE_GET_INFO` flag: the device supports bind/unbind. (The RFC's
/// `1 << 4` is `VFIO_DEVICE_FLAGS_CCW` in today's kernel.)
pub const VFIO_DEVICE_FLAGS_SVM: u32 = 1 << 30;

/// `struct vfio_device_svm` flags of `VFIO_DEVICE_UNBIND_TASK`.
pub const VFIO_SVM_PASID_RELEASE_FLUSHED: u32 = 1 << 0;
/// UNBIND_TASK flag: the PASID is clean, reuse it at once.
pub const VFIO_SVM_PASID_RELEASE_CLEAN: u32 = 1 << 1;

/// Flags of `VFIO_DEVICE_SVM`.
pub const VFIO_SVM_BIND_PASIDTP: u32 = 1 << 0;
/// `VFIO_DEVICE_SVM`: pass a guest IOTLB/PASID-cache invalidation down.
pub const VFIO_SVM_PASSDOWN_INVALIDATE: u32 = 1 << 1;
/// `VFIO_DEVICE_SVM`: release the guest PASID table; its PASIDs are flushed.
pub const VFIO_SVM_DEV_PASID_RELEASE_FLUSHED: u32 = 1 << 2;
/// `VFIO_DEVICE_SVM`: release the guest PASID table; its PASIDs are clean.
pub const VFIO_SVM_DEV_PASID_RELEASE_CLEAN: u32 = 1 << 3;

/// `inv_type` bits of `struct iommu_svm_tlb_invalidate_info`.
pub const IOTLB_INV: u32 = 1 << 0;
/// Invalidate the extended (first-level) IOTLB.
pub const EXTENDED_IOTLB_INV: u32 = 1 << 1;
/// Invalidate the device IOTLB (ATS).
pub const DEVICE_IOTLB_INV: u32 = 1 << 2;
/// Invalidate the extended device IOTLB.
pub const EXTENDED_DEVICE_IOTLB_INV: u32 = 1 << 3;
/// Invalidate the PASID cache.
pub const PASID_CACHE_INV: u32 = 1 << 4;
const INV_TYPES: u32 = (1 << 5) - 1;
const IOTLB_TYPES: u32 =
    IOTLB_INV | EXTENDED_IOTLB_INV | DEVICE_IOTLB_INV | EXTENDED_DEVICE_IOTLB_INV;

/// `granularity` values.
pub const DEFAULT_INV_GRN: u8 = 0;
/// Invalidate the pages `[addr, addr + size)` of one PASID.
pub const PAGE_SELECTIVE_INV: u8 = 1 << 0;
/// Invalidate everything of one PASID.
pub const PASID_SELECTIVE_INV: u8 = 1 << 1;

/// `flags` (hint) bits; accepted and otherwise ignored by the model.
pub const INVALIDATE_HINT_BIT: u64 = 1 << 0;
/// Hint: the entries are global (all PASIDs).
pub const GLOBAL_HINT_BIT: u64 = 1 << 1;
/// Hint: drain pending reads.
pub const DRAIN_READ_BIT: u64 = 1 << 2;
/// Hint: drain pending writes.
pub const DRAIN_WRITE_BIT: u64 = 1 << 3;
/// Hint: global device-TLB invalidation.
pub const DEVICE_TLB_GLOBAL_BIT: u64 = 1 << 4;
const HINT_BITS: u64 = (1 << 5) - 1;

/// Largest PASID + 1 (20-bit PASIDs).
pub const PASID_LIMIT: u32 = 1 << 20;

/// `struct vfio_device_svm` of the RFC (BIND_TASK / UNBIND_TASK).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vfio_device_svm {
    /// Size of the argument, in bytes.
    pub argsz: u32,
    /// 0 for BIND_TASK; RELEASE_* for UNBIND_TASK.
    pub flags: u32,
    /// The PASID (written by BIND_TASK, read by UNBIND_TASK).
    pub pasid: u32,
}

/// The header of `VFIO_DEVICE_SVM`'s argument; `data[length]` follows at
/// offset 12.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vfio_device_svm_hdr {
    /// Size of the argument, in bytes, data included.
    pub argsz: u32,
    /// One `VFIO_SVM_*` operation.
    pub flags: u32,
    /// Bytes of data that follow the header.
    pub length: u32,
}

/// `BIND_PASIDTP` data: `{ __u64 ptr; __u32 size; }` (16 bytes with tail
/// padding; the first 12 are required).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct pasid_table_info {
    /// Guest physical address of the guest PASID table.
    pub ptr: u64,
    /// Size of the table (log2 of the number of entries, as VT-d encodes it).
    pub size: u32,
}

/// `PASSDOWN_INVALIDATE` data (48 bytes; the first 44, through `pfsid`,
/// are required).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct iommu_svm_tlb_invalidate_info {
    /// `*_INV` bits: which caches.
    pub inv_type: u32,
    /// The PASID (for PASID or page selective invalidation).
    pub pasid: u32,
    /// First address (page selective).
    pub addr: u64,
    /// Bytes (page selective).
    pub size: u64,
    /// `*_INV_GRN` / `*_SELECTIVE_INV`: how much.
    pub granularity: u8,
    /// `*_HINT_BIT` / `DRAIN_*` hints.
    pub flags: u64,
    /// Address mask hint (VT-d `am`).
    pub mip: u8,
    /// Physical source id of the device (device IOTLB).
    pub pfsid: u16,
}

const _: () = {
    assert!(size_of::<vfio_device_svm>() == 12);
    assert!(offset_of!(vfio_device_svm, pasid) == 8);
    assert!(size_of::<vfio_device_svm_hdr>() == 12);
    assert!(offset_of!(vfio_device_svm_hdr, length) == 8);
    assert!(size_of::<pasid_table_info>() == 16);
    assert!(offset_of!(pasid_table_info, size) == 8);
    assert!(offset_of!(iommu_svm_tlb_invalidate_info, inv_type) == 0);
    assert!(offset_of!(iommu_svm_tlb_invalidate_info, pasid) == 4);
    assert!(offset_of!(iommu_svm_tlb_invalidate_info, addr) == 8);
    assert!(offset_of!(iommu_svm_tlb_invalidate_info, size) == 16);
    assert!(offset_of!(iommu_svm_tlb_invalidate_info, granularity) == 24);
    assert!(offset_of!(iommu_svm_tlb_invalidate_info, flags) == 32);
    assert!(offset_of!(iommu_svm_tlb_invalidate_info, mip) == 40);
    assert!(offset_of!(iommu_svm_tlb_invalidate_info, pfsid) == 42);
    assert!(size_of::<iommu_svm_tlb_invalidate_info>() == 48);
};

/// Bytes of `BIND_PASIDTP` data that must be present (`ptr`, `size`).
pub const PASID_TABLE_INFO_MINSZ: usize = 12;
/// Bytes of `PASSDOWN_INVALIDATE` data that must be present (through `pfsid`).
pub const INVALIDATE_INFO_MINSZ: usize = 44;

/// How an unbound PASID may be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvmRelease {
    /// Neither FLUSHED nor CLEAN: never reused.
    Retire,
    /// FLUSHED: reusable once the IOMMU has flushed it.
    Flushed,
    /// CLEAN: reusable at once.
    Clean,
}

impl SvmRelease {
    /// From FLUSHED/CLEAN bits (CLEAN wins when both are set).
    pub fn from_bits(flushed: bool, clean: bool) -> Self {
        match (flushed, clean) {
            (_, true) => SvmRelease::Clean,
            (true, false) => SvmRelease::Flushed,
            (false, false) => SvmRelease::Retire,
        }
    }
}

/// Which entries a passed-down invalidation removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvmGranularity {
    /// Every entry of the device.
    Global,
    /// The entries of one PASID.
    Pasid(u32),
    /// The pages `[addr, addr + size)` of one PASID.
    Page {
        /// The PASID.
        pasid: u32,
        /// First address.
        addr: u64,
        /// Bytes.
        size: u64,
    },
}

/// A decoded, validated `iommu_svm_tlb_invalidate_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvmInvalidate {
    /// IOTLB, extended IOTLB, device IOTLB or extended device IOTLB.
    pub iotlb: bool,
    /// The PASID cache too.
    pub pasid_cache: bool,
    /// How much.
    pub granularity: SvmGranularity,
}

impl iommu_svm_tlb_invalidate_info {
    /// Decodes the little-endian bytes of the struct (at least
    /// [`INVALIDATE_INFO_MINSZ`]).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let u8_at = |o: usize| b.get(o).copied();
        let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
        let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
        Some(Self {
            inv_type: u32_at(offset_of!(Self, inv_type))?,
            pasid: u32_at(offset_of!(Self, pasid))?,
            addr: u64_at(offset_of!(Self, addr))?,
            size: u64_at(offset_of!(Self, size))?,
            granularity: u8_at(offset_of!(Self, granularity))?,
            flags: u64_at(offset_of!(Self, flags))?,
            mip: u8_at(offset_of!(Self, mip))?,
            pfsid: u16_at(offset_of!(Self, pfsid))?,
        })
    }

    /// The C bytes of the struct (padding zeroed).
    pub fn to_bytes(&self) -> [u8; 48] {
        let mut b = [0u8; 48];
        let mut put = |o: usize, v: &[u8]| {
            if let Some(s) = b.get_mut(o..o + v.len()) {
                s.copy_from_slice(v);
            }
        };
        put(offset_of!(Self, inv_type), &self.inv_type.to_le_bytes());
        put(offset_of!(Self, pasid), &self.pasid.to_le_bytes());
        put(offset_of!(Self, addr), &self.addr.to_le_bytes());
        put(offset_of!(Self, size), &self.size.to_le_bytes());
        put(offset_of!(Self, granularity), &[self.granularity]);
        put(offset_of!(Self, flags), &self.flags.to_le_bytes());
        put(offset_of!(Self, mip), &[self.mip]);
        put(offset_of!(Self, pfsid), &self.pfsid.to_le_bytes());
        b
    }

    /// Validates: `inv_type` non-zero and known, `granularity` one of the
    /// three values, hint flags known, a selective PASID within 20 bits,
    /// a page-selective range non-empty and not wrapping. EINVAL otherwise.
    pub fn validate(&self) -> Result<SvmInvalidate> {
        if self.inv_type == 0 || self.inv_type & !INV_TYPES != 0 {
            return Err(VfioError::Invalid("inv_type"));
        }
        if self.flags & !HINT_BITS != 0 {
            return Err(VfioError::Invalid("invalidation hint flags"));
        }
        let granularity = match self.granularity {
            DEFAULT_INV_GRN => SvmGranularity::Global,
            PASID_SELECTIVE_INV => SvmGranularity::Pasid(self.pasid),
            PAGE_SELECTIVE_INV => {
                if self.size == 0 || self.addr.checked_add(self.size).is_none() {
                    return Err(VfioError::Invalid("page-selective range"));
                }
                SvmGranularity::Page {
                    pasid: self.pasid,
                    addr: self.addr,
                    size: self.size,
                }
            }
            _ => return Err(VfioError::Invalid("granularity")),
        };
        if granularity != SvmGranularity::Global && self.pasid >= PASID_LIMIT {
            return Err(VfioError::Invalid("PASID beyond 20 bits"));
        }
        Ok(SvmInvalidate {
            iotlb: self.inv_type & IOTLB_TYPES != 0,
            pasid_cache: self.inv_type & PASID_CACHE_INV != 0,
            granularity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidate_info_round_trip_and_validation() {
        let info = iommu_svm_tlb_invalidate_info {
            inv_type: EXTENDED_IOTLB_INV | PASID_CACHE_INV,
            pasid: 5,
            addr: 0x7000_0000,
            size: 0x2000,
            granularity: PAGE_SELECTIVE_INV,
            flags: DRAIN_WRITE_BIT,
            mip: 1,
            pfsid: 0x18,
        };
        let b = info.to_bytes();
        assert_eq!(b[24], PAGE_SELECTIVE_INV);
        assert_eq!(&b[42..44], &0x18u16.to_le_bytes());
        let back = iommu_svm_tlb_invalidate_info::from_bytes(&b[..44]).unwrap();
        assert_eq!(back.to_bytes(), b);
        assert_eq!(
            back.validate().unwrap(),
            SvmInvalidate {
                iotlb: true,
                pasid_cache: true,
                granularity: SvmGranularity::Page {
                    pasid: 5,
                    addr: 0x7000_0000,
                    size: 0x2000
                }
            }
        );
        for bad in [
            iommu_svm_tlb_invalidate_info {
                inv_type: 0,
                ..info
            },
            iommu_svm_tlb_invalidate_info {
                inv_type: 1 << 5,
                ..info
            },
            iommu_svm_tlb_invalidate_info {
                granularity: 3,
                ..info
            },
            iommu_svm_tlb_invalidate_info { size: 0, ..info },
            iommu_svm_tlb_invalidate_info {
                flags: 1 << 5,
                ..info
            },
            iommu_svm_tlb_invalidate_info {
                pasid: 1 << 20,
                ..info
            },
        ] {
            assert_eq!(bad.validate().unwrap_err().errno(), libc::EINVAL);
        }
        assert!(iommu_svm_tlb_invalidate_info::from_bytes(&b[..43]).is_none());
    }
}
