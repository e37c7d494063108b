//! One DMAR unit: context entries (device → domain), the IOTLB, the fault
//! log, reserved regions and the DMA ports of the devices behind it.

use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::config::{IommuConfig, MSI_WINDOW_END, MSI_WINDOW_START, SIZE_1G, SIZE_2M};
use crate::domain::Domain;
use crate::error::Error;
use crate::fault::{DmaRequest, Fault, FaultLog, FaultReason};
use crate::inflight::InFlight;
use crate::iotlb::{Iotlb, IotlbEntry, IotlbStats};
use crate::memory::PhysMemory;
use crate::port::DmaPort;
use crate::vm::{VmIommu, VmShared};

/// Kind of a reserved IOVA region (Linux `enum iommu_resv_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservedKind {
    /// Identity-mapped, cannot be released (RMRR).
    Direct,
    /// Identity-mapped, may be released for device assignment.
    DirectRelaxable,
    /// Must not be mapped.
    Reserved,
    /// Hardware MSI doorbell window.
    Msi,
    /// Software-managed MSI window.
    SwMsi,
}

/// A reserved IOVA range `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReservedRegion {
    pub start: u64,
    pub end: u64,
    pub kind: ReservedKind,
}

/// One VT-d DMAR unit.
pub struct Iommu {
    cfg: IommuConfig,
    this: Weak<Iommu>,
    contexts: Mutex<HashMap<u16, Arc<Domain>>>,
    /// Bumped on every context change: ports cache their context entry and
    /// re-read it when this moves (the context-cache invalidation).
    pub(crate) ctx_gen: AtomicU64,
    pub(crate) iotlb: Iotlb,
    pub(crate) inflight: InFlight,
    faults: FaultLog,
    reserved: Mutex<Vec<(Option<u16>, ReservedRegion)>>,
    vm_views: Mutex<Vec<Weak<VmShared>>>,
    /// Any vm-memory view ever made (skips the views lock on flushes).
    has_vm_views: AtomicBool,
}

impl std::fmt::Debug for Iommu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iommu")
            .field("name", &self.cfg.name)
            .field("address_width", &self.cfg.address_width)
            .finish_non_exhaustive()
    }
}

impl Iommu {
    pub fn new(cfg: IommuConfig) -> Arc<Self> {
        Arc::new_cyclic(|this| Iommu {
            iotlb: Iotlb::new(cfg.iotlb_capacity),
            faults: FaultLog::new(cfg.fault_log_capacity),
            cfg,
            this: this.clone(),
            contexts: Mutex::new(HashMap::new()),
            ctx_gen: AtomicU64::new(0),
            inflight: InFlight::new(),
            reserved: Mutex::new(Vec::new()),
            vm_views: Mutex::new(Vec::new()),
            has_vm_views: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &IommuConfig {
        &self.cfg
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Page sizes of the domains this unit creates.
    pub fn pgsize_bitmap(&self) -> u64 {
        self.cfg.pgsize_bitmap()
    }

    /// A new, empty domain with this unit's address width and page sizes;
    /// DMA through it reaches `mem`.
    pub fn create_domain(&self, mem: Arc<dyn PhysMemory>) -> Result<Arc<Domain>, Error> {
        Ok(Arc::new(Domain::new(
            self.cfg.address_width,
            self.cfg.pgsize_bitmap(),
            self.cfg.snoop_control,
            mem,
            self.this.clone(),
        )?))
    }

    fn lock_contexts(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Arc<Domain>>> {
        self.contexts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Points device `rid` at `domain` (writes its context entry). Like
    /// intel-iommu, refuses a domain that is wider than the unit, uses page
    /// sizes the unit lacks, or enforces snooping the unit cannot do.
    pub fn attach_device(&self, rid: u16, domain: &Arc<Domain>) -> Result<(), Error> {
        let incompatible = |reason: String| Error::Incompatible {
            domain: domain.id(),
            unit: self.cfg.name.clone(),
            reason,
        };
        if domain.address_width() > self.cfg.address_width {
            return Err(incompatible(format!(
                "domain address width {} exceeds the unit's {}",
                domain.address_width().bits(),
                self.cfg.address_width.bits()
            )));
        }
        if domain.pgsize_bitmap() & !self.cfg.pgsize_bitmap() != 0 {
            return Err(incompatible(format!(
                "domain page sizes {:#x} not all supported by the unit ({:#x})",
                domain.pgsize_bitmap(),
                self.cfg.pgsize_bitmap()
            )));
        }
        if domain.enforce_cache_coherency() && !self.cfg.snoop_control {
            return Err(incompatible(
                "domain enforces snooping; unit has no snoop control".to_string(),
            ));
        }
        domain.add_unit(self.this.clone());
        let old = self.lock_contexts().insert(rid, domain.clone());
        self.context_changed(rid, old);
        Ok(())
    }

    /// Returns device `rid` to blocking: every DMA it issues from now on
    /// faults. Returns when none of its DMA is still in flight.
    pub fn detach_device(&self, rid: u16) {
        let old = self.lock_contexts().remove(&rid);
        if old.is_some() {
            self.context_changed(rid, old);
        }
    }

    fn context_changed(&self, rid: u16, old: Option<Arc<Domain>>) {
        self.ctx_gen.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.invalidate_views(Some(rid), None);
        self.inflight.synchronize();
        if let Some(old) = old {
            let still_used = self.lock_contexts().values().any(|d| Arc::ptr_eq(d, &old));
            if !still_used {
                self.iotlb.invalidate_domain(old.id());
            }
        }
    }

    /// The domain device `rid` is attached to.
    pub fn device_domain(&self, rid: u16) -> Option<Arc<Domain>> {
        self.lock_contexts().get(&rid).cloned()
    }

    /// Attached devices and their domain ids, by requester id.
    pub fn devices(&self) -> Vec<(u16, u32)> {
        let mut v: Vec<(u16, u32)> = self
            .lock_contexts()
            .iter()
            .map(|(rid, d)| (*rid, d.id()))
            .collect();
        v.sort_unstable();
        v
    }

    /// Adds a reserved region for device `rid`, or for every device (`None`).
    pub fn add_reserved_region(
        &self,
        rid: Option<u16>,
        start: u64,
        end: u64,
        kind: ReservedKind,
    ) -> Result<(), Error> {
        if start > end {
            return Err(Error::InvalidRegion { start, end });
        }
        self.reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((rid, ReservedRegion { start, end, kind }));
        Ok(())
    }

    /// Reserved regions of device `rid`: the MSI window, then the configured
    /// ones, sorted by start.
    pub fn reserved_regions(&self, rid: u16) -> Vec<ReservedRegion> {
        let mut v = vec![ReservedRegion {
            start: MSI_WINDOW_START,
            end: MSI_WINDOW_END,
            kind: ReservedKind::Msi,
        }];
        let reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        v.extend(
            reserved
                .iter()
                .filter(|(r, _)| r.is_none_or(|r| r == rid))
                .map(|(_, region)| *region),
        );
        v.sort_by_key(|r| (r.start, r.end));
        v
    }

    /// The DMA port of device `rid`: what the device model issues requests
    /// through. One port per thread (clone it for more).
    pub fn dma_port(self: &Arc<Self>, rid: u16) -> DmaPort {
        DmaPort::new(self.clone(), rid)
    }

    /// A `vm_memory::Iommu` view of device `rid`'s translations.
    pub fn vm_iommu(self: &Arc<Self>, rid: u16) -> VmIommu {
        let port = self.dma_port(rid);
        let view = VmIommu::new(port, rid, self.cfg.iotlb_capacity.max(1024));
        let mut views = self.vm_views.lock().unwrap_or_else(|e| e.into_inner());
        views.retain(|v| v.strong_count() > 0);
        views.push(view.shared_weak());
        self.has_vm_views.store(true, Ordering::SeqCst);
        view
    }

    // ---- invalidation --------------------------------------------------------

    fn size_codes(&self) -> u32 {
        1 | u32::from(self.cfg.pgsize_bitmap() & SIZE_2M != 0) << 1
            | u32::from(self.cfg.pgsize_bitmap() & SIZE_1G != 0) << 2
    }

    /// Page-selective invalidation of domain `did`'s entries overlapping
    /// `[iova, iova + size)`, then waits for in-flight DMA (an invalidation
    /// descriptor followed by an invalidation-wait descriptor).
    pub fn invalidate_iotlb_range(&self, did: u32, iova: u64, size: u64) {
        self.invalidate_range_nowait(did, iova, iova.saturating_add(size), self.size_codes());
        self.synchronize();
    }

    /// Domain-selective invalidation, then waits for in-flight DMA.
    pub fn invalidate_iotlb_domain(&self, did: u32) {
        self.invalidate_domain_nowait(did);
        self.synchronize();
    }

    /// Global invalidation, then waits for in-flight DMA.
    pub fn invalidate_iotlb_global(&self) {
        fence(Ordering::SeqCst);
        self.iotlb.invalidate_all();
        self.invalidate_views(None, None);
        self.synchronize();
    }

    pub(crate) fn invalidate_range_nowait(&self, did: u32, start: u64, end: u64, codes: u32) {
        // Pairs with the fence in the port's fill (see the crate docs).
        fence(Ordering::SeqCst);
        self.iotlb.invalidate_range(did, start, end, codes);
        self.invalidate_views(None, Some((start, end)));
    }

    pub(crate) fn invalidate_domain_nowait(&self, did: u32) {
        fence(Ordering::SeqCst);
        self.iotlb.invalidate_domain(did);
        self.invalidate_views(None, None);
    }

    pub(crate) fn drop_domain_entries(&self, did: u32) {
        self.iotlb.invalidate_domain(did);
    }

    /// Waits until no DMA that began before this call is in flight.
    pub(crate) fn synchronize(&self) {
        self.inflight.synchronize();
    }

    /// vm-memory views cache translations without a domain tag: invalidate
    /// the range in all of them (or all of one device's).
    fn invalidate_views(&self, rid: Option<u16>, range: Option<(u64, u64)>) {
        // Callers fence (SeqCst) after changing page tables or contexts;
        // VmIommu::fill fences before it translates (see there).
        if !self.has_vm_views.load(Ordering::SeqCst) {
            return;
        }
        let views: Vec<Arc<VmShared>> = {
            let views = self.vm_views.lock().unwrap_or_else(|e| e.into_inner());
            views.iter().filter_map(Weak::upgrade).collect()
        };
        for view in views {
            if rid.is_none_or(|rid| view.rid() == rid) {
                view.invalidate(range);
            }
        }
    }

    // ---- IOTLB and faults ------------------------------------------------------

    pub fn iotlb_stats(&self) -> IotlbStats {
        self.iotlb.stats()
    }

    /// Snapshot of the valid IOTLB entries.
    pub fn iotlb_entries(&self) -> Vec<IotlbEntry> {
        self.iotlb.entries()
    }

    pub(crate) fn record_fault(
        &self,
        rid: u16,
        req: DmaRequest,
        reason: FaultReason,
        domain: Option<u32>,
        phys: Option<u64>,
    ) -> Fault {
        self.faults.record(rid, req, reason, domain, phys)
    }

    /// The fault records kept (oldest first).
    pub fn faults(&self) -> Vec<Fault> {
        self.faults.snapshot()
    }

    /// Drains the fault records (clears the fault recording registers).
    pub fn take_faults(&self) -> Vec<Fault> {
        self.faults.take()
    }

    /// Faults lost because the log was full.
    pub fn fault_overflow(&self) -> u64 {
        self.faults.overflow()
    }

    /// Faults seen since creation (kept or not).
    pub fn fault_count(&self) -> u64 {
        self.faults.total()
    }

    /// DMA ports alive on this unit.
    pub fn port_count(&self) -> usize {
        self.inflight.ports()
    }

    pub(crate) fn context_of(&self, rid: u16) -> Option<Arc<Domain>> {
        self.lock_contexts().get(&rid).cloned()
    }
}
