//! PASID support: requests-with-PASID translated through per-device PASID
//! state (shared virtual memory).
//!
//! A device (requester id) is in one of two PASID modes:
//!
//! - **Process bonds** ([`Iommu::bind_pasid`](crate::Iommu::bind_pasid)): each
//!   bound PASID names a process address space, given as a [`PhysMemory`]
//!   whose addresses are the process's virtual addresses. The first level is
//!   the process's own page tables, so the translation is the identity and
//!   the access itself is the page request: the memory faults pages in on
//!   demand and refuses unmapped or protected ones, which is recorded as a
//!   fault with the PASID (`NotPresent`, or `NoWrite` for a write to memory
//!   that reads fine). Nothing is pinned and nothing is cached in the IOTLB
//!   (the process page tables have no IOMMU-side cache to invalidate).
//!   PASIDs are 20 bits, allocated per device, lowest free first, starting
//!   at [`FIRST_PASID`] (PASID 0 stands for requests without PASID), at
//!   most [`MAX_BONDS_PER_DEVICE`] at a time.
//!
//! - **A guest PASID table** ([`Iommu::bind_guest_pasid_table`](crate::Iommu::bind_guest_pasid_table),
//!   virtual SVM): `size` 8-byte entries at IOVA `ptr` of the device's
//!   second-level domain. Entry `n` (PASID `n`): bit 0 present, bits 51:12
//!   the IOVA of an x86-64 4-level page table (bits 63:52 must be zero).
//!   A request with PASID `n` for virtual address `va` is translated
//!   guest-virtual → IOVA through that table (P, R/W, PS; 4K/2M/1G; every
//!   table read goes through the second level), then IOVA → host through
//!   the second level. The combined (nested) translation is cached in the
//!   IOTLB under a key naming (domain, requester id, PASID), with the page
//!   size the smaller of the two levels'. The PASID entry itself is cached
//!   in a per-device PASID cache. Changes to guest tables take effect only
//!   after [`Iommu::invalidate_nested`](crate::Iommu::invalidate_nested);
//!   second-level changes (type1 unmap + flush) drop the nested entries of
//!   that domain by themselves.
//!
//! # Concurrency
//! The DMA path looks the PASID up under the unit's PASID mutex after it
//! entered its in-flight section, so unbind (remove, then wait for in-flight
//! DMA) returns only when no DMA uses the bond any more.
//!
//! Nested fills race with invalidations as second-level fills do (see the
//! crate docs), but a nested entry depends on guest memory that the IOMMU
//! cannot re-read cheaply, so the re-check is a generation counter: every
//! nested invalidation bumps `nested_gen` (SeqCst) before it scans; a
//! filler reads it before its walk and, after inserting, fences and reads it
//! again, removing its own entry if it moved. Either the scan sees the new
//! entry or the filler sees the bump. The PASID cache uses the same counter
//! (insert only if unchanged, checked under the cache lock).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::domain::Domain;
use crate::fault::{Access, FaultReason};
use crate::memory::PhysMemory;
use crate::pte::{level_size, PTE_ADDR_MASK, PTE_READ};

/// Width of a PASID.
pub const PASID_BITS: u32 = 20;
/// One past the largest PASID (2^20).
pub const PASID_LIMIT: u32 = 1 << PASID_BITS;
/// The first PASID bind hands out (0 is reserved for requests without PASID).
pub const FIRST_PASID: u32 = 1;
/// Process bonds a device may hold at a time.
pub const MAX_BONDS_PER_DEVICE: usize = 1024;
/// Largest guest PASID table, in entries (one per PASID).
pub const MAX_GUEST_PASID_TABLE_ENTRIES: u32 = PASID_LIMIT;

/// x86-64 first-level entry bits.
pub const GPTE_PRESENT: u64 = 1 << 0;
/// First-level PTE: writable.
pub const GPTE_WRITE: u64 = 1 << 1;
/// First-level PTE: user accessible.
pub const GPTE_USER: u64 = 1 << 2;
/// First-level PTE: accessed.
pub const GPTE_ACCESSED: u64 = 1 << 5;
/// First-level PTE: dirty.
pub const GPTE_DIRTY: u64 = 1 << 6;
/// First-level PTE: a large page.
pub const GPTE_PAGE_SIZE: u64 = 1 << 7;
/// Address field of first-level entries and of guest PASID table entries.
pub const GPTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Guest PASID table entry: present.
pub const PASID_ENTRY_PRESENT: u64 = 1 << 0;

/// What the state of a PASID is when it is unbound (the RFC's release flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PasidRelease {
    /// Neither flushed nor clean: the PASID is never handed out again.
    Retire,
    /// The device flushed its transactions for the PASID (stop marker): the
    /// unit waits for in-flight DMA, then the PASID is reusable.
    Flushed,
    /// Nothing of the PASID is outstanding: reusable at once (after the same
    /// wait, which every unbind does).
    Clean,
}

/// Why a PASID operation failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PasidError {
    /// The device has no second-level domain (a guest table needs one).
    #[error("device {0:#06x} is not attached to a domain")]
    NoDevice(u16),
    /// The device is in the other PASID mode, or a guest table is bound already.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// No PASID left (bond limit, or every PASID retired).
    #[error("no PASID available")]
    NoSpace,
    /// The PASID (or guest table) is not bound.
    #[error("PASID {0:#x} is not bound")]
    NotBound(u32),
    /// A malformed request.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// Part of the guest PASID table is not mapped (readable) in the domain.
    #[error("guest PASID table not mapped at IOVA {iova:#x}")]
    TableNotMapped {
        /// The first IOVA that is not mapped.
        iova: u64,
    },
}

/// Which entries a nested invalidation removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// Every nested entry of the device (all PASIDs).
    Global,
    /// Entries of one PASID.
    Pasid(u32),
    /// Entries of one PASID overlapping `[addr, addr + size)`.
    Page {
        /// The PASID.
        pasid: u32,
        /// First address.
        addr: u64,
        /// Bytes.
        size: u64,
    },
}

/// A guest invalidation passed down to the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NestedInvalidation {
    /// Invalidate nested IOTLB entries (IOTLB, extended IOTLB, device IOTLB,
    /// extended device IOTLB: the model has one IOTLB and no device TLB).
    pub iotlb: bool,
    /// Invalidate the PASID cache (page granularity acts as PASID granularity).
    pub pasid_cache: bool,
    /// How much.
    pub granularity: Granularity,
}

/// A bound guest PASID table and its PASID cache.
pub(crate) struct GuestTable {
    pub(crate) ptr: u64,
    pub(crate) size: u32,
    /// PASID → entry value (the PASID cache).
    cache: Mutex<HashMap<u32, u64>>,
}

impl GuestTable {
    pub(crate) fn new(ptr: u64, size: u32) -> Self {
        GuestTable {
            ptr,
            size,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, u64>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn cached(&self, pasid: u32) -> Option<u64> {
        self.lock().get(&pasid).copied()
    }

    /// Caches `entry` unless an invalidation ran since `gen0` (checked
    /// under the cache lock; see the module docs).
    pub(crate) fn fill(&self, pasid: u32, entry: u64, gen0: u64, gen: impl Fn() -> u64) {
        let mut cache = self.lock();
        if gen() == gen0 {
            cache.insert(pasid, entry);
        }
    }

    pub(crate) fn invalidate(&self, pasid: Option<u32>) {
        let mut cache = self.lock();
        match pasid {
            Some(p) => {
                cache.remove(&p);
            }
            None => cache.clear(),
        }
    }

    pub(crate) fn cached_count(&self) -> usize {
        self.lock().len()
    }
}

/// What a PASID of a device leads to.
#[derive(Clone)]
pub(crate) enum PasidTarget {
    Process(Arc<dyn PhysMemory>),
    Guest(Arc<GuestTable>),
}

/// PASID state of one device.
#[derive(Default)]
pub(crate) struct DevicePasid {
    pub(crate) bonds: BTreeMap<u32, Arc<dyn PhysMemory>>,
    pub(crate) guest: Option<Arc<GuestTable>>,
}

/// PASID state of a unit.
#[derive(Default)]
pub(crate) struct PasidTables {
    pub(crate) devices: HashMap<u16, DevicePasid>,
    /// Retired PASIDs per device (unbound without FLUSHED/CLEAN).
    pub(crate) retired: HashMap<u16, BTreeSet<u32>>,
}

impl PasidTables {
    pub(crate) fn target(&self, rid: u16, pasid: u32) -> Option<PasidTarget> {
        let dev = self.devices.get(&rid)?;
        if let Some(g) = &dev.guest {
            return Some(PasidTarget::Guest(g.clone()));
        }
        dev.bonds
            .get(&pasid)
            .map(|m| PasidTarget::Process(m.clone()))
    }

    /// Lowest PASID of `rid` that is neither bound nor retired.
    pub(crate) fn allocate(&self, rid: u16) -> Option<u32> {
        let bonds = self.devices.get(&rid).map(|d| &d.bonds);
        let retired = self.retired.get(&rid);
        (FIRST_PASID..PASID_LIMIT).find(|p| {
            !bonds.is_some_and(|b| b.contains_key(p)) && !retired.is_some_and(|r| r.contains(p))
        })
    }
}

// ---- IOTLB keys of nested entries -----------------------------------------------

const NESTED_KEY: u64 = 1 << 63;
const KEY_DID_SHIFT: u32 = 36;
const KEY_DID_MASK: u64 = (1 << 27) - 1;
const KEY_RID_SHIFT: u32 = 20;
const KEY_PASID_MASK: u64 = (PASID_LIMIT as u64) - 1;

/// The IOTLB key of nested entries of (domain, device, PASID).
pub(crate) fn nested_key(did: u32, rid: u16, pasid: u32) -> u64 {
    NESTED_KEY
        | ((u64::from(did) & KEY_DID_MASK) << KEY_DID_SHIFT)
        | (u64::from(rid) << KEY_RID_SHIFT)
        | (u64::from(pasid) & KEY_PASID_MASK)
}

/// `(domain id, PASID)` of an IOTLB key.
pub(crate) fn split_key(key: u64) -> (u32, Option<u32>) {
    if key & NESTED_KEY == 0 {
        return (key as u32, None);
    }
    (
        ((key >> KEY_DID_SHIFT) & KEY_DID_MASK) as u32,
        Some((key & KEY_PASID_MASK) as u32),
    )
}

pub(crate) fn key_is_nested_of_did(key: u64, did: u32) -> bool {
    key & NESTED_KEY != 0 && (key >> KEY_DID_SHIFT) & KEY_DID_MASK == u64::from(did) & KEY_DID_MASK
}

pub(crate) fn key_is_nested_of(key: u64, rid: u16, pasid: Option<u32>) -> bool {
    key & NESTED_KEY != 0
        && (key >> KEY_RID_SHIFT) & 0xffff == u64::from(rid)
        && pasid.is_none_or(|p| key & KEY_PASID_MASK == u64::from(p))
}

// ---- the guest walk -------------------------------------------------------------

/// Reads the 8-byte guest entry at `iova` through the second level (needs R).
pub(crate) fn read_iova_u64(domain: &Domain, iova: u64) -> Option<u64> {
    if iova > domain.address_width().max_iova() || !iova.is_multiple_of(8) {
        return None;
    }
    let leaf = domain.walk(iova, false)?;
    if leaf.value & PTE_READ == 0 {
        return None;
    }
    let size = level_size(leaf.level);
    let phys = (leaf.value & PTE_ADDR_MASK & !(size - 1)) | (iova & (size - 1));
    let mut buf = [0u8; 8];
    domain.memory().read(phys, &mut buf).ok()?;
    Some(u64::from_le_bytes(buf))
}

/// The guest PASID table entry of `pasid`: the IOVA of its PML4.
pub(crate) fn pasid_entry(
    domain: &Domain,
    table: &GuestTable,
    pasid: u32,
) -> Result<u64, FaultReason> {
    if pasid >= table.size {
        return Err(FaultReason::PasidNotPresent);
    }
    let iova = table
        .ptr
        .checked_add(u64::from(pasid) * 8)
        .ok_or(FaultReason::GuestTableNotReachable)?;
    let entry = read_iova_u64(domain, iova).ok_or(FaultReason::GuestTableNotReachable)?;
    if entry & PASID_ENTRY_PRESENT == 0 {
        return Err(FaultReason::PasidNotPresent);
    }
    if entry & !GPTE_ADDR_MASK & !0xfff != 0 {
        return Err(FaultReason::InvalidEntry);
    }
    Ok(entry & GPTE_ADDR_MASK)
}

/// A guest leaf: the page (IOVA) `va` lies in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuestLeaf {
    pub(crate) iova_page: u64,
    pub(crate) size: u64,
    pub(crate) write: bool,
}

/// Walks the guest's 4-level table at IOVA `pml4` for `va`.
pub(crate) fn guest_walk(
    domain: &Domain,
    pml4: u64,
    va: u64,
    access: Access,
) -> Result<GuestLeaf, FaultReason> {
    // Canonical 48-bit addresses only.
    let top = va >> 47;
    if top != 0 && top != (1 << 17) - 1 {
        return Err(FaultReason::BeyondAddressWidth);
    }
    let mut table = pml4;
    let mut write = true;
    for level in (1..=4u32).rev() {
        let index = (va >> (12 + 9 * (level - 1))) & 0x1ff;
        let entry =
            read_iova_u64(domain, table + index * 8).ok_or(FaultReason::GuestTableNotReachable)?;
        if entry & GPTE_PRESENT == 0 {
            return Err(FaultReason::NotPresent);
        }
        write &= entry & GPTE_WRITE != 0;
        let leaf = level == 1 || entry & GPTE_PAGE_SIZE != 0;
        if leaf {
            if level == 4 {
                // PS is reserved in a PML4 entry.
                return Err(FaultReason::InvalidEntry);
            }
            let size = level_size(level);
            // Bit 12 is PAT in a large-page entry; 13..log2(size) are reserved.
            if level > 1 && entry & GPTE_ADDR_MASK & (size - 1) & !(1 << 12) != 0 {
                return Err(FaultReason::InvalidEntry);
            }
            if access == Access::Write && !write {
                return Err(FaultReason::NoWrite);
            }
            return Ok(GuestLeaf {
                iova_page: entry & GPTE_ADDR_MASK & !(size - 1),
                size,
                write,
            });
        }
        table = entry & GPTE_ADDR_MASK;
    }
    Err(FaultReason::InvalidEntry)
}
