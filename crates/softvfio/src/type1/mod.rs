//! The type1 engine behind [`Container`](crate::Container): the state of a
//! set container, attaching and detaching groups, map and unmap, dirty
//! tracking, and the views `inspect` shows.
//!
//! Semantics follow Linux's `vfio_iommu_type1.c` (v6.1) down to the errno and
//! the order of checks; the reasons are given where the rule is not obvious.
//!
//! # Ranges
//!
//! A range of IOVAs is `[first, last]` with an inclusive `last`, as iommufd
//! writes them: an IOVA can go all the way up to `u64::MAX`, and no end is
//! computed as `iova + size` (which wraps to 0 at the top of the space). The
//! ABI's `(iova, size)` pairs are turned into `[iova, iova + size - 1]`
//! after the wrap check (6.1's EINVAL for a range that wraps).
//!
//! # Invariants
//!
//! With `t` the `Type1` state of a set container and `limit` its
//! `dma_entry_limit` (checked by [`Container::check_invariants`](crate::Container::check_invariants), which the
//! unit tests, the property test and the differential fuzzer call after
//! every step):
//!
//! - mappings (`t.dmas`): each has `size > 0`, is page aligned, does not
//!   wrap, lies in the valid IOVA list (`t.iova_list`, when it has ranges),
//!   and no two overlap;
//! - `t.dma_avail + t.dmas.len() == limit`: every map takes a slot and
//!   every removal gives it back (the issue-16 wrap lost one for good);
//! - `t.vaddr_invalid_count` is the number of mappings whose `vaddr_invalid`
//!   is set; a mapping with external pins never has it set;
//! - `t.num_non_pinned_groups` is the number of attached groups (in a domain
//!   or emulated) whose `pinned_page_dirty_scope` is false;
//! - a mapping is `iommu_mapped` exactly when the container has at least one
//!   IOMMU domain: pinned once and mapped into every domain;
//! - locked pages per mapping: `size / PAGE_SIZE` when `iommu_mapped`, else
//!   the pages pinned through the external API (`ext_pins.pinned_pages()`);
//!   their sum over all containers of an address space is the
//!   [`MmAccount`](crate::account::MmAccount)'s `locked_pages` (tests check
//!   that sum; one container cannot see the others); a mapping pins and
//!   charges the address space that made it (`Dma::space`, else the
//!   container's own memory: `Container::mem_of`), as type1 charges
//!   `dma->mm`;
//! - every mapping has a dirty bitmap exactly while `t.dirty_tracking`;
//! - every domain holds at least one group, and the groups of `t` (domains
//!   and emulated) are exactly the container's `groups`, each once; an IOMMU
//!   is set only while the container holds a group.
//!
//! # Locks
//!
//! Three lock domains, always taken in this order and never the other way:
//!
//! 1. the container's `state` (type1's `iommu->lock`): every control
//!    operation, and the mediated-device paths (`pin_pages`, `unpin_pages`,
//!    `dma_rw`), which reach user memory under it;
//! 2. the host memory backend's pin counts (`HostMemory`'s counts, taken
//!    inside `pin`/`unpin`; never held while a pinned run is reported);
//! 3. the VT-d domain's writer lock and its flush epochs (taken inside
//!    `DomainOps::map`, `unmap` and `flush`).
//!
//! 2 and 3 are never held together. Device DMA through the IOMMU model takes
//! neither 1 nor 2: it translates under the domain's read side and waits
//! for nothing the control path holds. The unmap notifier of mediated
//! devices runs with lock 1 released (devices unpin, which takes it).
//!
//! # Flush before unpin
//!
//! A mapping leaves in this order: unmap from every domain, flush the
//! IOTLBs (which waits for in-flight translations of the range), then unpin
//! and unaccount. Once the pages are unpinned no cached translation can
//! reach them.
//!
//! # Modules
//!
//! - `state`: the type1 state (`Type1`, the container's `State`), the
//!   helpers every operation shares, and `check_invariants`;
//! - `attach`: `VFIO_SET_IOMMU`, group attach and detach, domain replay and
//!   release;
//! - `map`: `VFIO_IOMMU_MAP_DMA` and `VFIO_IOMMU_UNMAP_DMA`, pin and unpin;
//! - `dirty`: `VFIO_IOMMU_DIRTY_PAGES` and the bitmaps of unmap;
//! - `external`: what external pins, unpins and `dma_rw` writes change in
//!   the state, as `Type1` methods;
//! - [`inspect`]: serialisable views of a container;
//! - `tests`: the engine's unit tests.
//!
//! The mediated-device pinning API (`vfio_pin_pages`, `vfio_dma_rw`, the
//! unmap notifier) is in [`crate::external`]; it reads the state through
//! `Type1`'s accessors and changes it only through `Type1` methods. The
//! state's fields are private to this module.

mod attach;
mod dirty;
pub(crate) mod external;
pub mod inspect;
mod map;
pub(crate) mod state;
#[cfg(test)]
mod tests;

pub(crate) use map::{map_run, pin_and_map_pages, unmap_unpin_pages, MapOp, PinRequest};
pub use state::BrokenInvariant;
