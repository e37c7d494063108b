//! Errors of the software side (map, unmap, attach, configuration).

#![allow(missing_docs)] // TODO(issue 16, item 6): document the remaining public items

use thiserror::Error;

/// Why a domain or unit operation failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// A leaf or a non-empty table already covers part of the range.
    #[error("IOVA {iova:#x} is already mapped")]
    AlreadyMapped { iova: u64 },
    /// The range leaves the domain's aperture (or wraps around).
    #[error("IOVA range {iova:#x}+{size:#x} is outside the aperture 0..={max_iova:#x}")]
    OutOfRange { iova: u64, size: u64, max_iova: u64 },
    /// Addresses and sizes must be multiples of 4 KiB.
    #[error("not 4 KiB aligned: iova {iova:#x}, phys {phys:#x}, size {size:#x}")]
    Misaligned { iova: u64, phys: u64, size: u64 },
    /// A mapping must grant read or write (VT-d has no present-but-no-access entry).
    #[error("mapping grants neither read nor write access")]
    NoAccess,
    /// The physical address does not fit the 52-bit address field.
    #[error("physical address {phys:#x} beyond the 52-bit address field")]
    PhysTooLarge { phys: u64 },
    /// The page-table arena is exhausted.
    #[error("out of page-table memory")]
    NoMem,
    /// The domain cannot be used by this unit (intel-iommu refuses the attach).
    #[error("domain {domain} incompatible with {unit}: {reason}")]
    Incompatible {
        domain: u32,
        unit: String,
        reason: String,
    },
    /// A reserved region with `start > end`.
    #[error("invalid reserved region {start:#x}..={end:#x}")]
    InvalidRegion { start: u64, end: u64 },
}
