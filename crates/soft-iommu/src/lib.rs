//! A software model of an Intel VT-d IOMMU: second-level I/O page tables in
//! the real entry format, a bounded IOTLB, fault recording, and DMA ports
//! through which device models issue translated reads and writes.
//!
//! ```
//! use std::sync::Arc;
//! use soft_iommu::{Access, Iommu, IommuConfig, Prot, VecMemory};
//!
//! let unit = Iommu::new(IommuConfig::default());
//! let domain = unit.create_domain(Arc::new(VecMemory::new(0x10_0000, 0x20_0000))).unwrap();
//! domain.map(0x4000_0000, 0x10_0000, 0x2000, Prot::RW).unwrap();
//! unit.attach_device(0x18, &domain).unwrap();
//!
//! let port = unit.dma_port(0x18);
//! port.write(0x4000_0ffe, b"hi!").unwrap(); // crosses a page
//! assert_eq!(port.translate(0x4000_1000, Access::Read).unwrap().phys, 0x10_1000);
//!
//! assert_eq!(domain.unmap(0x4000_0000, 0x2000), 0x2000);
//! domain.flush_range(0x4000_0000, 0x2000); // no DMA uses the old pages after this
//! assert!(port.read(0x4000_0000, &mut [0u8; 4]).is_err());
//! assert_eq!(unit.take_faults().len(), 1);
//! ```
//!
//! # Structure
//! - [`Iommu`]: one DMAR unit: context entries (requester id → [`Domain`]),
//!   the IOTLB, the fault log, reserved regions, [`DmaPort`]s.
//! - [`Domain`]: a 3-level (39-bit) or 4-level (48-bit) second-level page
//!   table: 512 x 64-bit entries per 4 KiB table, R/W/PS/A/D/SNP bits and a
//!   51:12 address field, as in the VT-d spec. Tables live in an arena private
//!   to the domain; a non-leaf entry holds `table index << 12`.
//! - [`DmaPort`]: the device side. `translate` goes IOTLB first, then walks
//!   the tables, sets A (and D for writes) on the leaf and fills the IOTLB;
//!   `read`/`write` move bytes through [`PhysMemory`].
//! - [`VmIommu`]: the same translations behind `vm_memory::Iommu`.
//! - [`pasid`]: requests with PASID: process bonds (shared virtual memory)
//!   and guest PASID tables with nested translation (virtual SVM), their
//!   IOTLB entries and invalidation. `DmaPort::read_pasid`/`write_pasid`
//!   are the device side.
//! - [`bench_support`]: the measurements of `benches/iommu.rs` as plain
//!   functions, for `softvfio bench`.
//!
//! # Concurrency
//! Device DMA from many threads runs concurrently with map/unmap/flush on the
//! same domain, and the DMA path takes no lock that map/unmap callers take.
//!
//! **Page tables.** Entries are `AtomicU64`. Writers (map, unmap, dirty
//! harvesting, decode) serialize on a per-domain mutex; page walks read
//! entries with acquire loads and publish nothing but A/D bits, which they set
//! with a compare-and-swap on the value they walked, so a bit is never set in
//! an entry that was removed or replaced meanwhile (a plain `fetch_or` could
//! resurrect A/D bits in a cleared entry). A table is never freed under a
//! walker: tables stay in the arena until the domain is dropped. The one
//! exception is a super page replacing an empty subtree of small-page tables;
//! those tables are retired and reused only after the next flush of the
//! domain, whose wait (below) outlasts every walker that may be in them.
//!
//! **IOTLB.** A bounded set-associative cache keyed by (domain id, IOVA
//! page, page size). Each way is a seqlock, so a lookup is a handful of
//! loads and never writes shared memory; fills and invalidations take the
//! way's sequence with a CAS. A write may only use an entry whose cached D
//! bit is set: a clean entry sends the write to a page walk that sets D.
//!
//! **In-flight DMA and flush.** `Domain::flush_range` (and every
//! invalidation entry point) must return only when no DMA that translated
//! through a removed entry is still running. The model uses an epoch scheme
//! in the spirit of quiescent-state RCU, with one slot per port (see
//! `inflight.rs`): a DMA publishes "in flight since epoch e" in its port's
//! slot (one SeqCst store and two loads, no read-modify-write, on a cache
//! line no other thread writes); a flush invalidates, bumps the epoch and
//! waits until every slot is idle or newer than the bump. Why this rather
//! than the alternatives: a reader/writer lock or a shared in-flight counter
//! would make every DMA write a shared cache line (and a lock would stall
//! DMA during map/unmap); crossbeam-epoch's global collector is built for
//! deferred frees, not for "wait until these readers are done", and a
//! flush here must not be starved by a device that keeps doing DMA, which
//! the epoch comparison guarantees (DMA that starts after the bump is not
//! waited for). Ports are `Send` but not `Sync` so that each slot has one
//! writer; clone a port per thread.
//!
//! **The fill race.** A walk may read an entry just before unmap clears it
//! and insert the translation into the IOTLB after the flush scanned it.
//! The filler therefore fences (SeqCst) and re-reads the leaf after
//! inserting, and the invalidation fences before scanning: either the scan
//! sees the new entry, or the filler sees the cleared (or D-cleared) leaf
//! and removes its entry itself — before it leaves its DMA section, which
//! the flush is waiting for.
//!
//! **Context changes.** Ports cache their device's context entry and
//! re-read it when the unit's context generation moves; attach/detach bump
//! it and then wait for in-flight DMA, so after `detach_device` returns the
//! device's DMA faults.
//!
//! A flush must not be called from inside a DMA of the same unit on the same
//! thread (e.g. from a `PhysMemory` callback): it would wait for itself.

#![forbid(unsafe_code)]

mod config;
mod domain;
mod error;
mod fault;
mod inflight;
mod iotlb;
mod memory;
pub mod pasid;
mod port;
mod pte;
mod unit;
mod vm;

pub mod bench_support;

pub use config::{
    AddressWidth, IommuConfig, MSI_WINDOW_END, MSI_WINDOW_START, SIZE_1G, SIZE_2M, SIZE_4K,
};
pub use domain::{Domain, Prot, PteInfo, TableStats};
pub use error::Error;
pub use fault::{with_dma_origin, Access, DmaOrigin, DmaRequest, Fault, FaultReason};
pub use iotlb::{IotlbEntry, IotlbStats};
pub use memory::{MemFault, NullMemory, PhysMemory, VecMemory};
pub use pasid::{Granularity, NestedInvalidation, PasidError, PasidRelease};
pub use port::{DmaGuard, DmaPort, PortStats, Translation};
pub use pte::{
    ENTRIES_PER_TABLE, PTE_ACCESSED, PTE_ADDR_MASK, PTE_DIRTY, PTE_PAGE_SIZE, PTE_READ, PTE_SNOOP,
    PTE_WRITE,
};
pub use unit::{Iommu, ReservedKind, ReservedRegion};
pub use vm::VmIommu;
