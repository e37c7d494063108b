//! Errors of the software side (map, unmap, attach, configuration).

use thiserror::Error;

/// Why a domain or unit operation failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// A leaf or a non-empty table already covers part of the range.
    #[error("IOVA {iova:#x} is already mapped")]
    AlreadyMapped {
        /// The first mapped IOVA met.
        iova: u64,
    },
    /// The range leaves the domain's aperture (or wraps around).
    #[error("IOVA range {iova:#x}+{size:#x} is outside the aperture 0..={max_iova:#x}")]
    OutOfRange {
        /// First IOVA of the range.
        iova: u64,
        /// Bytes.
        size: u64,
        /// Last IOVA of the aperture.
        max_iova: u64,
    },
    /// Addresses and sizes must be multiples of 4 KiB.
    #[error("not 4 KiB aligned: iova {iova:#x}, phys {phys:#x}, size {size:#x}")]
    Misaligned {
        /// The IOVA asked for.
        iova: u64,
        /// The physical address asked for.
        phys: u64,
        /// The size asked for.
        size: u64,
    },
    /// A mapping must grant read or write (VT-d has no present-but-no-access entry).
    #[error("mapping grants neither read nor write access")]
    NoAccess,
    /// The physical address does not fit the 52-bit address field.
    #[error("physical address {phys:#x} beyond the 52-bit address field")]
    PhysTooLarge {
        /// The address.
        phys: u64,
    },
    /// The page-table arena is exhausted.
    #[error("out of page-table memory")]
    NoMem,
    /// The domain cannot be used by this unit (intel-iommu refuses the attach).
    #[error("domain {domain} incompatible with {unit}: {reason}")]
    Incompatible {
        /// The domain's id.
        domain: u32,
        /// The unit's name.
        unit: String,
        /// Why.
        reason: String,
    },
    /// A reserved region with `start > end`.
    #[error("invalid reserved region {start:#x}..={end:#x}")]
    InvalidRegion {
        /// First address given.
        start: u64,
        /// Last address given.
        end: u64,
    },
}
