//! Fault injection around any IOMMU unit: [`FailingUnit`] wraps a unit (the
//! VT-d adapter, say) and fails chosen domain allocations, device attaches
//! and IOMMU map calls, so that rollback paths run against the real page
//! tables.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::iommu::{DomainOps, IommuError, IommuUnit, Prot, ResvRegion};
use crate::memory::UserMemory;

/// A countdown: `arm(n)` makes the `n`-th call from now (1 = the next) fail,
/// once; `arm(0)` disarms.
#[derive(Debug, Default)]
pub struct Countdown(AtomicU64);

impl Countdown {
    /// Fails the `n`th call from now (0 disarms).
    pub fn arm(&self, n: u64) {
        self.0.store(n, Ordering::SeqCst);
    }

    /// Counts one call; true when this call must fail.
    pub fn fire(&self) -> bool {
        let prev = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
        prev == Ok(1)
    }

    /// Still armed (the failing call has not come)?
    pub fn armed(&self) -> bool {
        self.0.load(Ordering::SeqCst) != 0
    }
}

/// Injection points shared by a [`FailingUnit`] and its domains.
#[derive(Debug, Default)]
pub struct Faults {
    /// Fails a domain allocation.
    pub alloc_domain: Countdown,
    /// Fails a device attach.
    pub attach_device: Countdown,
    /// Fails a domain map.
    pub map: Countdown,
    /// Calls seen, for choosing `n`.
    pub map_calls: AtomicU64,
}

/// An IOMMU unit that forwards to `inner`, failing where [`Faults`] says.
pub struct FailingUnit {
    /// The unit that does the real work.
    pub inner: Arc<dyn IommuUnit>,
    /// The failures armed.
    pub faults: Arc<Faults>,
}

impl FailingUnit {
    /// Wraps `inner` with nothing armed.
    pub fn new(inner: Arc<dyn IommuUnit>) -> Arc<Self> {
        Arc::new(FailingUnit {
            inner,
            faults: Arc::new(Faults::default()),
        })
    }
}

/// A domain of a [`FailingUnit`]; `as_any` is the inner domain's, so the
/// inner unit recognises it on attach.
pub struct FailingDomain {
    inner: Arc<dyn DomainOps>,
    faults: Arc<Faults>,
}

impl DomainOps for FailingDomain {
    fn id(&self) -> u32 {
        self.inner.id()
    }
    fn map(&self, iova: u64, phys: u64, size: u64, prot: Prot) -> Result<(), IommuError> {
        self.faults.map_calls.fetch_add(1, Ordering::SeqCst);
        if self.faults.map.fire() {
            return Err(IommuError::Injected);
        }
        self.inner.map(iova, phys, size, prot)
    }
    fn unmap(&self, iova: u64, size: u64) -> u64 {
        self.inner.unmap(iova, size)
    }
    fn flush(&self, iova: u64, size: u64) {
        self.inner.flush(iova, size)
    }
    fn iova_to_phys(&self, iova: u64) -> Option<u64> {
        self.inner.iova_to_phys(iova)
    }
    fn pgsize_bitmap(&self) -> u64 {
        self.inner.pgsize_bitmap()
    }
    fn aperture(&self) -> (u64, u64) {
        self.inner.aperture()
    }
    fn enforce_cache_coherency(&self) -> bool {
        self.inner.enforce_cache_coherency()
    }
    fn read_and_clear_dirty(&self, iova: u64, size: u64, dirty: &mut dyn FnMut(u64)) {
        self.inner.read_and_clear_dirty(iova, size, dirty)
    }
    fn leaf_counts(&self) -> (u64, u64, u64) {
        self.inner.leaf_counts()
    }
    fn as_any(&self) -> &dyn Any {
        self.inner.as_any()
    }
}

impl IommuUnit for FailingUnit {
    fn name(&self) -> String {
        format!("failing {}", self.inner.name())
    }
    fn alloc_domain(&self, mem: Arc<dyn UserMemory>) -> Result<Arc<dyn DomainOps>, IommuError> {
        if self.faults.alloc_domain.fire() {
            return Err(IommuError::NoMem);
        }
        let inner = self.inner.alloc_domain(mem)?;
        Ok(Arc::new(FailingDomain {
            inner,
            faults: self.faults.clone(),
        }))
    }
    fn attach_device(&self, rid: u16, domain: &Arc<dyn DomainOps>) -> Result<(), IommuError> {
        if self.faults.attach_device.fire() {
            return Err(IommuError::Injected);
        }
        self.inner.attach_device(rid, domain)
    }
    fn detach_device(&self, rid: u16) {
        self.inner.detach_device(rid)
    }
    fn reserved_regions(&self, rid: u16) -> Vec<ResvRegion> {
        self.inner.reserved_regions(rid)
    }
}
