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
use crate::pasid::{
    self, Granularity, GuestTable, NestedInvalidation, PasidError, PasidRelease, PasidTables,
    PasidTarget, MAX_BONDS_PER_DEVICE, MAX_GUEST_PASID_TABLE_ENTRIES,
};
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
    /// First address.
    pub start: u64,
    /// Last address (inclusive).
    pub end: u64,
    /// What it is.
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
    /// PASID bonds and guest PASID tables, per device.
    pasids: Mutex<PasidTables>,
    /// Bumped (SeqCst) by every invalidation that may remove nested
    /// entries, before it scans (see `pasid.rs`).
    pub(crate) nested_gen: AtomicU64,
    /// A nested entry was ever filled (sticky; lets second-level flushes
    /// skip the nested scan otherwise).
    pub(crate) nested_active: AtomicBool,
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
    /// A unit with `cfg`, no device attached.
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
            pasids: Mutex::new(PasidTables::default()),
            nested_gen: AtomicU64::new(0),
            nested_active: AtomicBool::new(false),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &IommuConfig {
        &self.cfg
    }

    /// Its name.
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
        // Nested entries of the device were built on the old second level.
        self.drop_nested(|key| pasid::key_is_nested_of(key, rid, None));
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
        self.nested_gen.fetch_add(1, Ordering::SeqCst);
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
        // Nested entries are tagged by guest virtual address: any of the
        // domain's may go through the range.
        self.drop_nested(|key| pasid::key_is_nested_of_did(key, did));
    }

    pub(crate) fn invalidate_domain_nowait(&self, did: u32) {
        fence(Ordering::SeqCst);
        self.iotlb.invalidate_domain(did);
        self.invalidate_views(None, None);
        self.drop_nested(|key| pasid::key_is_nested_of_did(key, did));
    }

    pub(crate) fn drop_domain_entries(&self, did: u32) {
        self.iotlb.invalidate_domain(did);
        self.drop_nested(|key| pasid::key_is_nested_of_did(key, did));
    }

    /// Removes nested IOTLB entries whose key matches, if any were ever
    /// filled: bumps the nested generation first (see `pasid.rs`).
    fn drop_nested(&self, pred: impl Fn(u64) -> bool) {
        if !self.nested_active.load(Ordering::SeqCst) {
            return;
        }
        self.nested_gen.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.iotlb.invalidate_keys(pred);
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

    /// IOTLB counters.
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

    // ---- PASIDs (shared virtual memory; see pasid.rs) ----------------------------

    fn lock_pasids(&self) -> std::sync::MutexGuard<'_, PasidTables> {
        self.pasids.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn pasid_target(&self, rid: u16, pasid: u32) -> Option<PasidTarget> {
        self.lock_pasids().target(rid, pasid)
    }

    /// Binds a process address space to device `rid`: DMA tagged with the
    /// returned PASID reaches `mem` at the address it names (the process
    /// page tables are the first level). Lowest free PASID first, from
    /// [`pasid::FIRST_PASID`]; `Busy` when a guest PASID table is bound,
    /// `NoSpace` at [`MAX_BONDS_PER_DEVICE`] bonds or when no PASID is left.
    pub fn bind_pasid(&self, rid: u16, mem: Arc<dyn PhysMemory>) -> Result<u32, PasidError> {
        let mut tables = self.lock_pasids();
        if let Some(dev) = tables.devices.get(&rid) {
            if dev.guest.is_some() {
                return Err(PasidError::Busy("a guest PASID table is bound"));
            }
            if dev.bonds.len() >= MAX_BONDS_PER_DEVICE {
                return Err(PasidError::NoSpace);
            }
        }
        let pasid = tables.allocate(rid).ok_or(PasidError::NoSpace)?;
        tables
            .devices
            .entry(rid)
            .or_default()
            .bonds
            .insert(pasid, mem);
        Ok(pasid)
    }

    /// Ends the bond of `pasid`; returns when no DMA uses it any more.
    /// With [`PasidRelease::Retire`] the PASID is never handed out again.
    pub fn unbind_pasid(
        &self,
        rid: u16,
        pasid: u32,
        release: PasidRelease,
    ) -> Result<(), PasidError> {
        {
            let mut tables = self.lock_pasids();
            let dev = tables
                .devices
                .get_mut(&rid)
                .ok_or(PasidError::NotBound(pasid))?;
            dev.bonds
                .remove(&pasid)
                .ok_or(PasidError::NotBound(pasid))?;
            if dev.bonds.is_empty() && dev.guest.is_none() {
                tables.devices.remove(&rid);
            }
            if release == PasidRelease::Retire {
                tables.retired.entry(rid).or_default().insert(pasid);
            }
        }
        // A flushed PASID waits for the device's outstanding transactions
        // (the stop marker); the model's equivalent is the in-flight wait,
        // which every unbind does so that no DMA uses the bond after this.
        self.synchronize();
        Ok(())
    }

    /// PASIDs bound to processes for device `rid`, ascending.
    pub fn pasid_bonds(&self, rid: u16) -> Vec<u32> {
        self.lock_pasids()
            .devices
            .get(&rid)
            .map(|d| d.bonds.keys().copied().collect())
            .unwrap_or_default()
    }

    /// PASIDs of device `rid` retired by an unbind without FLUSHED/CLEAN.
    pub fn retired_pasids(&self, rid: u16) -> Vec<u32> {
        self.lock_pasids()
            .retired
            .get(&rid)
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The guest PASID table bound to device `rid`: `(ptr, size)`.
    pub fn guest_pasid_table(&self, rid: u16) -> Option<(u64, u32)> {
        let tables = self.lock_pasids();
        let g = tables.devices.get(&rid)?.guest.as_ref()?;
        Some((g.ptr, g.size))
    }

    /// Entries in device `rid`'s PASID cache (guest table mode).
    pub fn pasid_cache_entries(&self, rid: u16) -> usize {
        let tables = self.lock_pasids();
        tables
            .devices
            .get(&rid)
            .and_then(|d| d.guest.as_ref())
            .map_or(0, |g| g.cached_count())
    }

    /// Binds a guest PASID table (virtual SVM): `size` 8-byte entries at
    /// IOVA `ptr` (4 KiB aligned) of device `rid`'s domain, all of it
    /// mapped readable now. PASID-tagged DMA of the device then uses nested
    /// translation (see `pasid.rs`).
    pub fn bind_guest_pasid_table(&self, rid: u16, ptr: u64, size: u32) -> Result<(), PasidError> {
        if size == 0 || size > MAX_GUEST_PASID_TABLE_ENTRIES {
            return Err(PasidError::Invalid("PASID table size"));
        }
        if !ptr.is_multiple_of(4096) {
            return Err(PasidError::Invalid("PASID table not 4 KiB aligned"));
        }
        let len = u64::from(size) * 8;
        let last = ptr
            .checked_add(len - 1)
            .ok_or(PasidError::Invalid("PASID table wraps"))?;
        let domain = self.device_domain(rid).ok_or(PasidError::NoDevice(rid))?;
        let mut page = ptr;
        while page <= last {
            let readable = page <= domain.address_width().max_iova()
                && domain
                    .walk(page, false)
                    .is_some_and(|leaf| leaf.value & crate::pte::PTE_READ != 0);
            if !readable {
                return Err(PasidError::TableNotMapped { iova: page });
            }
            page = match page.checked_add(4096) {
                Some(p) => p,
                None => break,
            };
        }
        let mut tables = self.lock_pasids();
        let dev = tables.devices.entry(rid).or_default();
        if !dev.bonds.is_empty() {
            return Err(PasidError::Busy("process PASIDs are bound"));
        }
        if dev.guest.is_some() {
            return Err(PasidError::Busy("a guest PASID table is bound"));
        }
        dev.guest = Some(Arc::new(GuestTable::new(ptr, size)));
        Ok(())
    }

    /// Unbinds device `rid`'s guest PASID table: its nested translations and
    /// PASID cache go; returns when no DMA uses them.
    pub fn unbind_guest_pasid_table(&self, rid: u16) -> Result<(), PasidError> {
        {
            let mut tables = self.lock_pasids();
            let dev = tables
                .devices
                .get_mut(&rid)
                .ok_or(PasidError::NotBound(0))?;
            if dev.guest.take().is_none() {
                return Err(PasidError::NotBound(0));
            }
            if dev.bonds.is_empty() {
                tables.devices.remove(&rid);
            }
        }
        self.drop_nested(|key| pasid::key_is_nested_of(key, rid, None));
        self.synchronize();
        Ok(())
    }

    /// A guest's invalidation passed down (virtual SVM): removes device
    /// `rid`'s nested IOTLB entries and/or PASID-cache entries at the given
    /// granularity, then waits for in-flight DMA. Needs a bound guest table.
    pub fn invalidate_nested(&self, rid: u16, inv: NestedInvalidation) -> Result<(), PasidError> {
        let guest = {
            let tables = self.lock_pasids();
            tables
                .devices
                .get(&rid)
                .and_then(|d| d.guest.clone())
                .ok_or(PasidError::Invalid("no guest PASID table bound"))?
        };
        let (pasid, range) = match inv.granularity {
            Granularity::Global => (None, None),
            Granularity::Pasid(p) => (Some(p), None),
            Granularity::Page { pasid, addr, size } => {
                if size == 0 {
                    return Err(PasidError::Invalid("page-selective invalidation of size 0"));
                }
                let end = addr
                    .checked_add(size)
                    .ok_or(PasidError::Invalid("invalidation range wraps"))?;
                (Some(pasid), Some((addr, end)))
            }
        };
        if pasid.is_some_and(|p| p >= pasid::PASID_LIMIT) {
            return Err(PasidError::Invalid("PASID beyond 20 bits"));
        }
        self.nested_gen.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if inv.pasid_cache {
            guest.invalidate(pasid);
        }
        if inv.iotlb {
            match (pasid, range, self.device_domain(rid)) {
                (Some(p), Some((start, end)), Some(domain)) => {
                    let key = pasid::nested_key(domain.id(), rid, p);
                    self.iotlb
                        .invalidate_range_key(key, start, end, self.size_codes());
                }
                (p, _, _) => self
                    .iotlb
                    .invalidate_keys(|key| pasid::key_is_nested_of(key, rid, p)),
            }
        }
        self.synchronize();
        Ok(())
    }

    /// Ends every PASID bond and the guest table of device `rid` (the
    /// device fd was closed: the device is quiesced, so its PASIDs are
    /// clean). Retired PASIDs stay retired.
    pub fn release_pasids(&self, rid: u16) {
        let had = self.lock_pasids().devices.remove(&rid).is_some();
        if had {
            self.drop_nested(|key| pasid::key_is_nested_of(key, rid, None));
            self.synchronize();
        }
    }
}
