//! The model behind vm-memory's [`vm_memory::Iommu`] trait, so that rust-vmm
//! VMMs can put it in front of emulated devices (`vm_memory::IommuMemory`).
//!
//! vm-memory wants translations served from its own [`vm_memory::Iotlb`]; a
//! [`VmIommu`] keeps one per device, fills it from the model on a miss (a
//! page walk through a [`DmaPort`], which sets A/D and records faults), and
//! the unit invalidates it with every IOTLB invalidation. vm-memory holds
//! the read guard of that IOTLB while it accesses memory
//! (`IommuMemorySliceIterator` owns the `IotlbIterator`), so an invalidation,
//! which takes the write lock, also waits for those accesses to finish.
//! Consequence: do not flush or unmap+flush from inside such an access.

use std::fmt;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use vm_memory::iommu::{Error as VmError, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, Iotlb, Permissions};

use crate::fault::Access;
use crate::port::{DmaPort, Translation};

/// Lookup/fill rounds before giving up on a range that keeps changing.
const FILL_ROUNDS: usize = 4;

pub(crate) struct VmShared {
    rid: u16,
    tlb: RwLock<Iotlb>,
    port: Mutex<DmaPort>,
    /// Mappings inserted since the last full invalidation, to bound the
    /// (otherwise unbounded) vm-memory IOTLB.
    filled: AtomicUsize,
    capacity: usize,
}

impl VmShared {
    pub(crate) fn rid(&self) -> u16 {
        self.rid
    }

    fn write(&self) -> RwLockWriteGuard<'_, Iotlb> {
        self.tlb.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops cached translations of `[start, end)`, or all of them.
    pub(crate) fn invalidate(&self, range: Option<(u64, u64)>) {
        let mut tlb = self.write();
        match range {
            Some((start, end)) if end > start => {
                let len = usize::try_from(end - start).unwrap_or(usize::MAX);
                // vm-memory computes `start + len` without overflow checks.
                let len = len.min(usize::try_from(u64::MAX - start).unwrap_or(usize::MAX));
                tlb.invalidate_mapping(GuestAddress(start), len);
            }
            Some(_) => {}
            None => {
                tlb.invalidate_all();
                self.filled.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// One device's view of the unit as a [`vm_memory::Iommu`].
#[derive(Clone)]
pub struct VmIommu {
    shared: Arc<VmShared>,
}

impl fmt::Debug for VmIommu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmIommu")
            .field("rid", &format_args!("{:#06x}", self.shared.rid))
            .finish_non_exhaustive()
    }
}

fn cannot_resolve(iova: u64, length: usize, reason: String) -> VmError {
    VmError::CannotResolve {
        iova_range: IovaRange {
            base: GuestAddress(iova),
            length,
        },
        reason,
    }
}

impl VmIommu {
    pub(crate) fn new(port: DmaPort, rid: u16, capacity: usize) -> Self {
        VmIommu {
            shared: Arc::new(VmShared {
                rid,
                tlb: RwLock::new(Iotlb::new()),
                port: Mutex::new(port),
                filled: AtomicUsize::new(0),
                capacity,
            }),
        }
    }

    pub(crate) fn shared_weak(&self) -> Weak<VmShared> {
        Arc::downgrade(&self.shared)
    }

    /// Requester id of the device.
    pub fn rid(&self) -> u16 {
        self.shared.rid
    }

    /// Translates one page for `access` through the model.
    fn translate_page(
        port: &DmaPort,
        iova: u64,
        access: Permissions,
    ) -> Result<Translation, String> {
        let read = || {
            port.translate(iova, Access::Read)
                .map_err(|f| f.to_string())
        };
        let write = || {
            port.translate(iova, Access::Write)
                .map_err(|f| f.to_string())
        };
        match access {
            Permissions::Write => write(),
            Permissions::ReadWrite => {
                read()?;
                write()
            }
            Permissions::Read | Permissions::No => read(),
        }
    }

    /// Fills `[start, start + len)` into the vm-memory IOTLB.
    fn fill(
        &self,
        tlb: &mut Iotlb,
        start: u64,
        len: usize,
        access: Permissions,
    ) -> Result<(), VmError> {
        // Pairs with the fence an invalidation issues before it checks
        // whether any view exists: either it sees this view, or this fill
        // sees the page-table change that preceded the invalidation.
        fence(Ordering::SeqCst);
        let port = self.shared.port.lock().unwrap_or_else(|e| e.into_inner());
        let end = start.saturating_add(len as u64);
        let mut iova = start;
        while iova < end {
            let t = Self::translate_page(&port, iova, access)
                .map_err(|reason| cannot_resolve(start, len, reason))?;
            // Grant write only through a dirty leaf, so that the first write
            // after the D bit was cleared comes back here and sets it.
            let perm = match (t.read, t.write && t.dirty) {
                (true, true) => Permissions::ReadWrite,
                (true, false) => Permissions::Read,
                (false, true) => Permissions::Write,
                (false, false) => Permissions::No,
            };
            let page_len = usize::try_from(t.page_size).unwrap_or(usize::MAX);
            tlb.set_mapping(
                GuestAddress(t.page_iova),
                GuestAddress(t.page_phys),
                page_len,
                perm,
            )?;
            self.shared.filled.fetch_add(1, Ordering::Relaxed);
            iova = t.page_iova.saturating_add(t.page_size);
        }
        Ok(())
    }
}

impl vm_memory::Iommu for VmIommu {
    type IotlbGuard<'a> = RwLockReadGuard<'a, Iotlb>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, VmError> {
        if iova.0.checked_add(length as u64).is_none() {
            return Err(cannot_resolve(
                iova.0,
                length,
                "range wraps around".to_string(),
            ));
        }
        for _ in 0..FILL_ROUNDS {
            let guard = self.shared.tlb.read().unwrap_or_else(|e| e.into_inner());
            let fails = match Iotlb::lookup(guard, iova, length, access) {
                Ok(it) => return Ok(it),
                Err(fails) => fails,
            };
            let mut tlb = self.shared.write();
            if self.shared.filled.load(Ordering::Relaxed) >= self.shared.capacity {
                tlb.invalidate_all();
                self.shared.filled.store(0, Ordering::Relaxed);
            }
            for range in fails.misses.iter().chain(fails.access_fails.iter()) {
                self.fill(&mut tlb, range.base.0, range.length, access)?;
            }
        }
        Err(cannot_resolve(
            iova.0,
            length,
            "translation kept changing".to_string(),
        ))
    }
}
