//! A VFIO container (`/dev/vfio/vfio`) with the type1 IOMMU backend: the
//! engine's public face. The state machine behind it is in [`crate::type1`]
//! (its header states the invariants, the counters and the lock order).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::{Result, VfioError};
use crate::iommu::Prot;
use crate::iova::IovaRange;
use crate::memory::spaces::{RoutedMemory, SpaceTable};
use crate::memory::{UserMemory, PAGE_SIZE};
use crate::type1::state::State;

pub use crate::type1::inspect::{ContainerSnapshot, DomainView, MappingView};
pub use crate::type1::BrokenInvariant;

// The ABI's numbers, kept here for existing callers: the engine takes the
// typed values below, and `uapi` decodes the numbers into them.
pub use crate::uapi::{
    DMA_CC_IOMMU, EEH, MAP_FLAG_READ, MAP_FLAG_VADDR, MAP_FLAG_WRITE, NOIOMMU_IOMMU,
    SPAPR_TCE_IOMMU, SPAPR_TCE_V2_IOMMU, TYPE1V2_IOMMU, TYPE1_IOMMU, TYPE1_NESTING_IOMMU,
    UNMAP_ALL, UNMAP_FLAG_ALL, UNMAP_FLAG_GET_DIRTY_BITMAP, UNMAP_FLAG_VADDR, UPDATE_VADDR,
};

/// The IOMMU backend `VFIO_SET_IOMMU` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IommuType {
    /// `VFIO_TYPE1_IOMMU`: type1 with v1 unmap semantics (an unmap may
    /// bisect a mapping, and stops at one that starts before the range).
    Type1,
    /// `VFIO_TYPE1v2_IOMMU`: an unmap covers whole mappings only.
    Type1v2,
    /// `VFIO_TYPE1_NESTING_IOMMU`: v2 with nesting, which VT-d in 6.1
    /// cannot do: attaching a group then fails.
    Type1Nesting,
    /// Any other backend number (sPAPR TCE, no-IOMMU...): no driver here
    /// claims it (ENODEV once the container holds a group).
    Other(u64),
}

/// What `VFIO_CHECK_EXTENSION` asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// Whether the backend `VFIO_SET_IOMMU` would accept is available.
    Iommu(IommuType),
    /// `VFIO_UNMAP_ALL`: `VFIO_DMA_UNMAP_FLAG_ALL` is supported.
    UnmapAll,
    /// `VFIO_UPDATE_VADDR`: vaddr invalidation and update (not while
    /// mediated devices are attached).
    UpdateVaddr,
    /// `VFIO_DMA_CC_IOMMU`: every domain enforces cache coherency.
    DmaCacheCoherency,
    /// Anything else (`VFIO_EEH`...): not supported.
    Other(u64),
}

/// The range a `VFIO_IOMMU_UNMAP_DMA` covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmapRange {
    /// `size` bytes from `iova` (page aligned, not wrapping).
    Range {
        /// First IOVA.
        iova: u64,
        /// Bytes.
        size: u64,
    },
    /// Every mapping (`VFIO_DMA_UNMAP_FLAG_ALL`).
    All,
}

/// What a `VFIO_IOMMU_UNMAP_DMA` does to the mappings of its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmapOp {
    /// Unmap, unpin and remove them.
    Unmap,
    /// The same, first copying their dirty bits out to the user bitmap
    /// (`VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`).
    UnmapGetDirty(UserBitmap),
    /// Only mark their user address invalid, for a later update (live
    /// update, `VFIO_DMA_UNMAP_FLAG_VADDR`); DMA keeps working.
    InvalidateVaddr,
}

/// User-space addresses end below this on x86-64 (`TASK_SIZE_MAX`): the
/// kernel's `access_ok` refuses user pointers past it.
pub const USER_ADDR_LIMIT: u64 = (1 << 47) - PAGE_SIZE;

static NEXT_CONTAINER_ID: AtomicU64 = AtomicU64::new(1);

/// Settings of a container, fixed at creation.
#[derive(Debug, Clone, Copy)]
pub struct ContainerConfig {
    /// Mappings a container may hold (`dma_entry_limit`).
    pub dma_entry_limit: u32,
    /// Report only pages the IOMMU saw written (opt-in, beyond the kernel).
    pub precise_dirty: bool,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        Self {
            dma_entry_limit: crate::platform::DEFAULT_DMA_ENTRY_LIMIT,
            precise_dirty: false,
        }
    }
}

/// A user bitmap argument (`struct vfio_bitmap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserBitmap {
    /// Page size of one bit, in bytes.
    pub pgsize: u64,
    /// Size of the bitmap, in bytes.
    pub size: u64,
    /// User address of the bitmap.
    pub data: u64,
}

/// What `VFIO_IOMMU_GET_INFO` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Type1Info {
    /// Page sizes the IOMMU domains map (`iova_pgsizes`).
    pub pgsize_bitmap: u64,
    /// Mappings that may still be made (the DMA_AVAIL capability).
    pub dma_avail: u32,
    /// The valid IOVA ranges (the IOVA_RANGE capability).
    pub iova_ranges: Vec<IovaRange>,
    /// Migration capability: the dirty-bitmap page sizes and maximum size.
    pub migration_pgsize_bitmap: u64,
    /// Largest dirty bitmap a request may ask for, in bytes.
    pub max_dirty_bitmap_size: u64,
}

/// A VFIO container (`/dev/vfio/vfio`) with the type1 backend.
pub struct Container {
    pub(crate) id: u64,
    pub(crate) cfg: ContainerConfig,
    pub(crate) mem: Arc<dyn UserMemory>,
    /// Other address spaces that mappings pin (memory/spaces.rs).
    pub(crate) spaces: Arc<SpaceTable>,
    pub(crate) state: Mutex<State>,
    /// Signalled when a vaddr becomes valid again (type1's `vaddr_wait`).
    pub(crate) vaddr_valid: Condvar,
    /// How long an external pin waits for an invalid vaddr, in ms.
    pub(crate) vaddr_wait_ms: AtomicU64,
    /// The DMA sanitizer recording this container's history, if one runs.
    pub(crate) sanitizer: std::sync::OnceLock<Arc<crate::sanitizer::Sanitizer>>,
}

impl Container {
    /// A new, unset container whose mappings pin `mem`.
    pub fn new(cfg: ContainerConfig, mem: Arc<dyn UserMemory>) -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_CONTAINER_ID.fetch_add(1, Ordering::Relaxed),
            cfg,
            mem,
            spaces: Arc::new(SpaceTable::default()),
            state: Mutex::new(State {
                groups: Vec::new(),
                iommu: None,
                closed: false,
                external_devices: Vec::new(),
            }),
            vaddr_valid: Condvar::new(),
            vaddr_wait_ms: AtomicU64::new(
                u64::try_from(crate::external::DEFAULT_VADDR_WAIT.as_millis()).unwrap_or(u64::MAX),
            ),
            sanitizer: std::sync::OnceLock::new(),
        })
    }

    /// The container's id, unique in this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Records this container's DMA history in `s` from now on (once; a
    /// second sanitizer is ignored).
    pub fn set_sanitizer(self: &Arc<Self>, s: Arc<crate::sanitizer::Sanitizer>) {
        if self.sanitizer.set(s.clone()).is_ok() {
            s.register(self);
        }
    }

    /// The sanitizer's recorder kept in the type1 state's `slot` (made on
    /// first use), if a sanitizer runs: recording then takes no lock but
    /// the container's, which the caller holds.
    #[inline]
    pub(crate) fn history_in<'t>(
        &self,
        slot: &'t mut Option<crate::sanitizer::Recorder>,
    ) -> Option<&'t mut crate::sanitizer::Recorder> {
        if slot.is_none() {
            self.make_recorder(slot);
        }
        slot.as_mut()
    }

    /// The first record of a sanitized container makes its recorder (kept
    /// out of line: a `Recorder` is built in a large stack frame, which
    /// every map and unmap would otherwise set up).
    #[cold]
    #[inline(never)]
    fn make_recorder(&self, slot: &mut Option<crate::sanitizer::Recorder>) {
        if let Some(s) = self.sanitizer.get() {
            *slot = Some(s.recorder());
        }
    }

    /// The sanitizer recording this container, if any.
    pub fn sanitizer(&self) -> Option<&Arc<crate::sanitizer::Sanitizer>> {
        self.sanitizer.get()
    }

    /// The user memory its mappings pin.
    pub fn memory(&self) -> &Arc<dyn UserMemory> {
        &self.mem
    }

    /// What its IOMMU domains reach: its own memory, and the address
    /// spaces of mappings other programs made through it.
    pub(crate) fn domain_memory(&self) -> Arc<dyn UserMemory> {
        Arc::new(RoutedMemory {
            own: self.mem.clone(),
            spaces: self.spaces.clone(),
        })
    }

    /// The settings it was created with.
    pub fn config(&self) -> ContainerConfig {
        self.cfg
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere; the state itself is kept
        // consistent by every operation, so continue with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Is an IOMMU driver set (`VFIO_SET_IOMMU` done)?
    pub fn iommu_set(&self) -> bool {
        self.lock().iommu.is_some()
    }

    /// Number of groups attached.
    pub fn group_count(&self) -> usize {
        self.lock().groups.len()
    }

    /// `VFIO_CHECK_EXTENSION`.
    pub fn check_extension(&self, ext: impl Into<Extension>) -> bool {
        let ext = ext.into();
        let st = self.lock();
        let type1 = matches!(
            ext,
            Extension::Iommu(IommuType::Type1 | IommuType::Type1v2 | IommuType::Type1Nesting)
                | Extension::UnmapAll
        );
        match &st.iommu {
            // No driver yet: poll the registered drivers (type1 only) with no
            // IOMMU data.
            None => type1,
            Some(t) => type1 || t.has_extension(ext),
        }
    }

    // ---- info and dirty tracking -----------------------------------------

    /// `VFIO_IOMMU_GET_INFO` contents.
    pub fn info(&self) -> Result<Type1Info> {
        let st = self.lock();
        let Some(t) = st.iommu.as_ref() else {
            return Err(VfioError::Invalid("no IOMMU set"));
        };
        Ok(t.info())
    }

    /// Is the container type1 v2 (or nesting)?
    pub fn is_v2(&self) -> Option<bool> {
        self.lock().iommu.as_ref().map(|t| t.is_v2())
    }

    // ---- idiomatic API for Rust callers -----------------------------------

    /// `VFIO_IOMMU_MAP_DMA`: maps `size` bytes of user memory at `vaddr`
    /// to `iova`, devices allowed `prot` (at least one of read and write).
    pub fn map(&self, iova: u64, vaddr: u64, size: u64, prot: Prot) -> Result<()> {
        self.map_dma(iova, vaddr, size, crate::type1::MapOp::Map(prot), None)
    }

    /// [`Container::map`] made by the address space `caller` (its
    /// [`UserMemory::shared`] handle): when that is not the container's own
    /// memory, the mapping pins and reaches `caller`'s (a forked child, the
    /// new image after exec), as type1 records the caller's mm.
    pub fn map_as(
        &self,
        iova: u64,
        vaddr: u64,
        size: u64,
        prot: Prot,
        caller: &Arc<dyn UserMemory>,
    ) -> Result<()> {
        self.map_dma(
            iova,
            vaddr,
            size,
            crate::type1::MapOp::Map(prot),
            Some(caller),
        )
    }

    /// Unmaps the mappings in `[iova, iova + size)`; returns the bytes unmapped.
    pub fn unmap(&self, iova: u64, size: u64) -> Result<u64> {
        self.unmap_dma(UnmapRange::Range { iova, size }, UnmapOp::Unmap)
    }

    /// Unmaps everything; returns the bytes unmapped.
    pub fn unmap_all(&self) -> Result<u64> {
        self.unmap_dma(UnmapRange::All, UnmapOp::Unmap)
    }

    /// Marks the vaddr of the mappings in `[iova, iova + size)` invalid
    /// (live update); DMA keeps working. Returns the bytes invalidated.
    pub fn invalidate_vaddr(&self, iova: u64, size: u64) -> Result<u64> {
        self.unmap_dma(UnmapRange::Range { iova, size }, UnmapOp::InvalidateVaddr)
    }

    /// `VFIO_IOMMU_MAP_DMA` with `VFIO_DMA_MAP_FLAG_VADDR`: gives an
    /// invalidated mapping its new user address.
    pub fn update_vaddr(&self, iova: u64, vaddr: u64, size: u64) -> Result<()> {
        self.map_dma(iova, vaddr, size, crate::type1::MapOp::UpdateVaddr, None)
    }

    /// [`Container::update_vaddr`] made by the address space `caller`
    /// (see [`Container::map_as`]): DMA then reaches the new vaddr there.
    pub fn update_vaddr_as(
        &self,
        iova: u64,
        vaddr: u64,
        size: u64,
        caller: &Arc<dyn UserMemory>,
    ) -> Result<()> {
        self.map_dma(
            iova,
            vaddr,
            size,
            crate::type1::MapOp::UpdateVaddr,
            Some(caller),
        )
    }
}
