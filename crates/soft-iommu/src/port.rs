//! The device side: a DMA port issues translation requests and translated
//! reads and writes for one requester id.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use crate::domain::Domain;
use crate::fault::{Access, DmaRequest, Fault, FaultReason};
use crate::inflight::{bump, PortSlot};
use crate::iotlb::{code_size, Cached, DATA_DIRTY, DATA_READ, DATA_SNOOP, DATA_WRITE};
use crate::memory::{MemFault, PhysMemory};
use crate::pasid::{self, GuestTable, PasidTarget, PASID_LIMIT};
use crate::pte::{
    is_present, level_size, PTE_ACCESSED, PTE_ADDR_MASK, PTE_DIRTY, PTE_IDENTITY_MASK, PTE_READ,
    PTE_SNOOP, PTE_WRITE,
};
use crate::unit::Iommu;

/// Walks retried when the leaf keeps changing under a walk (map/unmap racing
/// with the A/D update) before the request is failed as not present.
const WALK_RETRIES: usize = 16;

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The requested IOVA.
    pub iova: u64,
    /// Where `iova` lands.
    pub phys: u64,
    /// First IOVA of the page (leaf) that translated it.
    pub page_iova: u64,
    /// Where the page starts.
    pub page_phys: u64,
    /// Size of the leaf: 4 KiB, 2 MiB or 1 GiB.
    pub page_size: u64,
    /// A read.
    pub read: bool,
    /// A write.
    pub write: bool,
    /// The leaf's D bit as the translation saw it.
    pub dirty: bool,
    /// The leaf's SNP bit.
    pub snoop: bool,
    /// Served by the IOTLB (no page walk).
    pub cached: bool,
    /// Domain that translated it.
    pub domain: u32,
}

/// Counters of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Translations served by the IOTLB.
    pub iotlb_hits: u64,
    /// Translations that needed a page walk.
    pub iotlb_misses: u64,
    /// Requests that faulted.
    pub faults: u64,
}

struct ContextCache {
    gen: u64,
    domain: Option<Arc<Domain>>,
}

/// The DMA port of one device (requester id) behind a unit.
///
/// A port is `Send` but not `Sync`: each thread that issues DMA uses its own
/// port (`clone()` makes another for the same device). That lets the port
/// track its in-flight DMA in a slot that only its thread writes.
pub struct DmaPort {
    unit: Arc<Iommu>,
    rid: u16,
    slot: Arc<PortSlot>,
    ctx: RefCell<ContextCache>,
    depth: Cell<u32>,
    /// Page-size code of the last hit, probed first next time.
    size_hint: Cell<u32>,
}

impl fmt::Debug for DmaPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaPort")
            .field("unit", &self.unit.name())
            .field("rid", &format_args!("{:#06x}", self.rid))
            .finish_non_exhaustive()
    }
}

impl Clone for DmaPort {
    fn clone(&self) -> Self {
        DmaPort::new(self.unit.clone(), self.rid)
    }
}

impl Drop for DmaPort {
    fn drop(&mut self) {
        self.unit.inflight.unregister(&self.slot);
    }
}

/// Marks a DMA as in flight on its port: invalidations wait for it. Taken by
/// `read`/`write`; take one around `translate` + your own memory access when
/// the access must be covered too. Nests.
pub struct DmaGuard<'a> {
    port: &'a DmaPort,
}

impl Drop for DmaGuard<'_> {
    fn drop(&mut self) {
        let depth = self.port.depth.get().saturating_sub(1);
        self.port.depth.set(depth);
        if depth == 0 {
            self.port.unit.inflight.exit(&self.port.slot);
        }
    }
}

impl DmaPort {
    pub(crate) fn new(unit: Arc<Iommu>, rid: u16) -> Self {
        let slot = unit.inflight.register();
        DmaPort {
            unit,
            rid,
            slot,
            ctx: RefCell::new(ContextCache {
                gen: u64::MAX,
                domain: None,
            }),
            depth: Cell::new(0),
            size_hint: Cell::new(0),
        }
    }

    /// Requester id of the device.
    pub fn rid(&self) -> u16 {
        self.rid
    }

    /// The unit the port belongs to.
    pub fn unit(&self) -> &Arc<Iommu> {
        &self.unit
    }

    /// The port's counters.
    pub fn stats(&self) -> PortStats {
        PortStats {
            iotlb_hits: self.slot.hits.load(Ordering::Relaxed),
            iotlb_misses: self.slot.misses.load(Ordering::Relaxed),
            faults: self.slot.faults.load(Ordering::Relaxed),
        }
    }

    /// Starts an in-flight DMA section.
    pub fn begin(&self) -> DmaGuard<'_> {
        let depth = self.depth.get();
        if depth == 0 {
            self.unit.inflight.enter(&self.slot);
        }
        self.depth.set(depth.saturating_add(1));
        DmaGuard { port: self }
    }

    /// Runs `f` with the device's current domain (the cached context entry,
    /// re-read after any context change).
    #[inline]
    fn with_domain<R>(&self, f: impl FnOnce(Option<&Arc<Domain>>) -> R) -> R {
        let gen = self.unit.ctx_gen.load(Ordering::Acquire);
        if let Ok(cache) = self.ctx.try_borrow() {
            if cache.gen == gen {
                return f(cache.domain.as_ref());
            }
        }
        let fresh = self.unit.context_of(self.rid);
        let stale = match self.ctx.try_borrow_mut() {
            Ok(mut cache) => {
                cache.gen = gen;
                std::mem::replace(&mut cache.domain, fresh.clone())
            }
            Err(_) => None,
        };
        // Dropped outside the borrow: the last reference to a domain
        // invalidates its IOTLB entries.
        drop(stale);
        f(fresh.as_ref())
    }

    fn fault(
        &self,
        req: DmaRequest,
        reason: FaultReason,
        domain: Option<u32>,
        phys: Option<u64>,
    ) -> Fault {
        bump(&self.slot.faults);
        self.unit.record_fault(self.rid, req, reason, domain, phys)
    }

    /// Translates `iova` for `access`, as the device's next request would
    /// (IOTLB first, then a page walk that sets A/D and fills the IOTLB).
    /// A failure is recorded in the fault log and returned.
    #[inline]
    pub fn translate(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        self.translate_request(DmaRequest {
            iova,
            access,
            pasid: None,
        })
    }

    /// Translates a request, which may carry a PASID.
    pub fn translate_request(&self, req: DmaRequest) -> Result<Translation, Fault> {
        self.with_domain(|domain| self.translate_in(domain, req))
    }

    #[inline]
    fn translate_in(
        &self,
        domain: Option<&Arc<Domain>>,
        req: DmaRequest,
    ) -> Result<Translation, Fault> {
        if let Some(pasid) = req.pasid {
            let _guard = self.begin();
            return match self.pasid_target(pasid) {
                None => Err(self.fault(
                    req,
                    FaultReason::PasidNotPresent,
                    domain.map(|d| d.id()),
                    None,
                )),
                Some(PasidTarget::Process(_)) => Ok(process_translation(req, domain)),
                Some(PasidTarget::Guest(table)) => self.translate_nested(domain, &table, req),
            };
        }
        let Some(domain) = domain else {
            return Err(self.fault(req, FaultReason::Blocked, None, None));
        };
        if req.iova > domain.address_width().max_iova() {
            return Err(self.fault(
                req,
                FaultReason::BeyondAddressWidth,
                Some(domain.id()),
                None,
            ));
        }
        if let Some(t) = self.lookup_cached(domain, req) {
            bump(&self.slot.hits);
            return Ok(t);
        }
        bump(&self.slot.misses);
        let _guard = self.begin();
        self.walk_and_fill(domain, req)
            .map_err(|reason| self.fault(req, reason, Some(domain.id()), None))
    }

    #[inline]
    fn lookup_cached(&self, domain: &Domain, req: DmaRequest) -> Option<Translation> {
        let did = domain.id();
        let codes = domain.size_codes();
        let hint = self.size_hint.get();
        if codes & (1 << hint) != 0 {
            if let Some(c) = self.unit.iotlb.lookup(did, req.iova, hint) {
                return cached_translation(c, hint, did, req);
            }
        }
        for code in 0..3 {
            if code == hint || codes & (1 << code) == 0 {
                continue;
            }
            if let Some(c) = self.unit.iotlb.lookup(did, req.iova, code) {
                self.size_hint.set(code);
                return cached_translation(c, code, did, req);
            }
        }
        None
    }

    /// Page walk, A/D update and IOTLB fill. Runs inside a DMA guard so
    /// that the tables it reads stay tables until it is done.
    fn walk_and_fill(&self, domain: &Domain, req: DmaRequest) -> Result<Translation, FaultReason> {
        let did = domain.id();
        let write = req.access == Access::Write;
        for _ in 0..WALK_RETRIES {
            let Some(leaf) = domain.walk(req.iova, true) else {
                return Err(FaultReason::NotPresent);
            };
            let (need, reason) = if write {
                (PTE_WRITE, FaultReason::NoWrite)
            } else {
                (PTE_READ, FaultReason::NoRead)
            };
            if leaf.value & need == 0 {
                return Err(reason);
            }
            // Set A (and D for a write) with a CAS on the entry we walked:
            // never set bits in an entry that was removed or replaced.
            let want = PTE_ACCESSED | if write { PTE_DIRTY } else { 0 };
            let mut value = leaf.value;
            let mut replaced = false;
            while value & want != want {
                match leaf.entry.compare_exchange_weak(
                    value,
                    value | want,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => value |= want,
                    Err(now) => {
                        if !is_present(now)
                            || now & PTE_IDENTITY_MASK != leaf.value & PTE_IDENTITY_MASK
                        {
                            replaced = true;
                            break;
                        }
                        value = now;
                    }
                }
            }
            if replaced {
                continue;
            }
            #[cfg(test)]
            tests::AFTER_WALK.with(|hook| {
                if let Some(f) = hook.borrow_mut().as_mut() {
                    f();
                }
            });
            let size = level_size(leaf.level);
            let code = leaf.level - 1;
            let page_iova = req.iova & !(size - 1);
            let page_phys = value & PTE_ADDR_MASK & !(size - 1);
            let mut flags = 0;
            if value & PTE_READ != 0 {
                flags |= DATA_READ;
            }
            if value & PTE_WRITE != 0 {
                flags |= DATA_WRITE;
            }
            if value & PTE_DIRTY != 0 {
                flags |= DATA_DIRTY;
            }
            if value & PTE_SNOOP != 0 {
                flags |= DATA_SNOOP;
            }
            self.unit
                .iotlb
                .insert(did, page_iova, code, Cached::encode(page_phys, flags));
            // An invalidation may have scanned the IOTLB between our walk and
            // our fill. Either it saw the entry we just filled, or we see the
            // change to the PTE that preceded it (both sides fence): then the
            // entry is ours to remove.
            fence(Ordering::SeqCst);
            let now = leaf.entry.load(Ordering::Relaxed);
            if now & PTE_IDENTITY_MASK != value & PTE_IDENTITY_MASK
                || !is_present(now)
                || (value & PTE_DIRTY != 0 && now & PTE_DIRTY == 0)
            {
                self.unit.iotlb.invalidate_page(did, page_iova, code);
            }
            self.size_hint.set(code);
            return Ok(Translation {
                iova: req.iova,
                phys: page_phys | (req.iova & (size - 1)),
                page_iova,
                page_phys,
                page_size: size,
                read: value & PTE_READ != 0,
                write: value & PTE_WRITE != 0,
                dirty: value & PTE_DIRTY != 0,
                snoop: value & PTE_SNOOP != 0,
                cached: false,
                domain: did,
            });
        }
        Err(FaultReason::NotPresent)
    }

    // ---- requests with PASID ---------------------------------------------------

    fn pasid_target(&self, pasid: u32) -> Option<PasidTarget> {
        if pasid >= PASID_LIMIT {
            return None;
        }
        self.unit.pasid_target(self.rid, pasid)
    }

    /// Nested translation of `req.iova` (a guest virtual address): IOTLB
    /// first, else guest tables (through the second level) and the second
    /// level, filling the IOTLB with the combined page. Runs in a DMA guard.
    fn translate_nested(
        &self,
        domain: Option<&Arc<Domain>>,
        table: &GuestTable,
        req: DmaRequest,
    ) -> Result<Translation, Fault> {
        let Some(domain) = domain else {
            return Err(self.fault(req, FaultReason::Blocked, None, None));
        };
        let did = domain.id();
        let pasid = req.pasid.unwrap_or(0);
        let key = pasid::nested_key(did, self.rid, pasid);
        for code in 0..3 {
            if let Some(c) = self.unit.iotlb.lookup_key(key, req.iova, code) {
                if let Some(t) = cached_translation(c, code, did, req) {
                    bump(&self.slot.hits);
                    return Ok(t);
                }
            }
        }
        bump(&self.slot.misses);
        self.walk_nested(domain, table, req, key)
            .map_err(|reason| self.fault(req, reason, Some(did), None))
    }

    fn walk_nested(
        &self,
        domain: &Domain,
        table: &GuestTable,
        req: DmaRequest,
        key: u64,
    ) -> Result<Translation, FaultReason> {
        let unit = &self.unit;
        if !unit.nested_active.load(Ordering::SeqCst) {
            unit.nested_active.store(true, Ordering::SeqCst);
        }
        let gen0 = unit.nested_gen.load(Ordering::SeqCst);
        let pasid = req.pasid.unwrap_or(0);
        let pml4 = match table.cached(pasid) {
            Some(e) => e,
            None => {
                let e = pasid::pasid_entry(domain, table, pasid)?;
                table.fill(pasid, e, gen0, || unit.nested_gen.load(Ordering::SeqCst));
                e
            }
        };
        let gl = pasid::guest_walk(domain, pml4, req.iova, req.access)?;
        let iova = gl.iova_page | (req.iova & (gl.size - 1));
        if iova > domain.address_width().max_iova() {
            return Err(FaultReason::BeyondAddressWidth);
        }
        let second = self.walk_and_fill(
            domain,
            DmaRequest {
                iova,
                access: req.access,
                pasid: None,
            },
        )?;
        let size = gl.size.min(second.page_size);
        let code = size.trailing_zeros().saturating_sub(12) / 9;
        let page_va = req.iova & !(size - 1);
        let page_phys = second.phys - (req.iova & (size - 1));
        let write = gl.write && second.write;
        let mut flags = DATA_READ;
        if write {
            flags |= DATA_WRITE;
        }
        if second.dirty {
            flags |= DATA_DIRTY;
        }
        if second.snoop {
            flags |= DATA_SNOOP;
        }
        unit.iotlb
            .insert_key(key, page_va, code, Cached::encode(page_phys, flags));
        // An invalidation that scanned before our insert bumped the
        // generation first: then the entry is ours to remove.
        fence(Ordering::SeqCst);
        if unit.nested_gen.load(Ordering::SeqCst) != gen0 {
            unit.iotlb.invalidate_page_key(key, page_va, code);
        }
        Ok(Translation {
            iova: req.iova,
            phys: second.phys,
            page_iova: page_va,
            page_phys,
            page_size: size,
            read: true,
            write,
            dirty: second.dirty,
            snoop: second.snoop,
            cached: false,
            domain: domain.id(),
        })
    }

    /// DMA read of `buf.len()` bytes at virtual address `addr` with PASID
    /// `pasid`: through a process bond (the address is the process's) or
    /// the device's guest PASID table (nested). Stops at the first fault,
    /// which is recorded with the PASID and returned; the bytes before it
    /// were read.
    pub fn read_pasid(&self, pasid: u32, addr: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let len = buf.len();
        self.pasid_transfer(
            pasid,
            addr,
            len,
            Access::Read,
            &mut |mem, phys, done, n| match buf.get_mut(done..done + n) {
                Some(chunk) => mem.read(phys, chunk).map_err(|e| e.phys),
                None => Err(phys),
            },
        )
    }

    /// DMA write of `data` at virtual address `addr` with PASID `pasid`
    /// (see [`DmaPort::read_pasid`]).
    pub fn write_pasid(&self, pasid: u32, addr: u64, data: &[u8]) -> Result<(), Fault> {
        self.pasid_transfer(
            pasid,
            addr,
            data.len(),
            Access::Write,
            &mut |mem, phys, done, n| match data.get(done..done + n) {
                Some(chunk) => mem.write(phys, chunk).map_err(|e| e.phys),
                None => Err(phys),
            },
        )
    }

    fn pasid_transfer(
        &self,
        pasid: u32,
        addr: u64,
        len: usize,
        access: Access,
        io: &mut PasidIo<'_>,
    ) -> Result<(), Fault> {
        let _guard = self.begin();
        self.with_domain(|domain| {
            let did = domain.map(|d| d.id());
            let target = self.pasid_target(pasid);
            let mut done = 0usize;
            while done < len {
                let req = match addr.checked_add(done as u64) {
                    Some(iova) => DmaRequest {
                        iova,
                        access,
                        pasid: Some(pasid),
                    },
                    None => {
                        let req = DmaRequest {
                            iova: addr,
                            access,
                            pasid: Some(pasid),
                        };
                        return Err(self.fault(req, FaultReason::BeyondAddressWidth, did, None));
                    }
                };
                match &target {
                    None => {
                        return Err(self.fault(req, FaultReason::PasidNotPresent, did, None));
                    }
                    Some(PasidTarget::Process(mem)) => {
                        // Identity: the access is the page request.
                        let in_page = 4096 - (req.iova & 0xfff);
                        let n = usize::try_from(in_page).map_or(len - done, |p| p.min(len - done));
                        if io(mem.as_ref(), req.iova, done, n).is_err() {
                            let mut probe = [0u8; 1];
                            let reason = if access == Access::Write
                                && mem.read(req.iova, &mut probe).is_ok()
                            {
                                FaultReason::NoWrite
                            } else {
                                FaultReason::NotPresent
                            };
                            return Err(self.fault(req, reason, did, None));
                        }
                        done += n;
                    }
                    Some(PasidTarget::Guest(table)) => {
                        let t = self.translate_nested(domain, table, req)?;
                        let n = chunk_len(&t, len - done);
                        // translate_nested succeeded, so there is a domain.
                        let Some(d) = domain else {
                            break;
                        };
                        if let Err(phys) = io(d.memory().as_ref(), t.phys, done, n) {
                            return Err(self.fault(
                                req,
                                FaultReason::MemoryError,
                                Some(d.id()),
                                Some(phys),
                            ));
                        }
                        done += n;
                    }
                }
            }
            Ok(())
        })
    }

    /// DMA read of `buf.len()` bytes at `iova` (may cross pages). Stops at
    /// the first fault, which is recorded and returned; the bytes before it
    /// were read.
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), Fault> {
        self.transfer(iova, Transfer::Read(buf))
    }

    /// DMA write of `data` at `iova` (may cross pages). Stops at the first
    /// fault, which is recorded and returned; the bytes before it were written.
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<(), Fault> {
        self.transfer(iova, Transfer::Write(data))
    }

    /// The page-by-page loop shared by [`read`](Self::read) and
    /// [`write`](Self::write): translate, move one chunk, record a fault.
    fn transfer(&self, iova: u64, mut x: Transfer<'_>) -> Result<(), Fault> {
        let _guard = self.begin();
        let len = x.len();
        let access = x.access();
        self.with_domain(|domain| {
            let mut done = 0usize;
            while done < len {
                let req = self.request_at(iova, done, access, domain)?;
                let t = self.translate_in(domain, req)?;
                let n = chunk_len(&t, len - done);
                // translate_in succeeded, so there is a domain.
                let Some(d) = domain else {
                    break;
                };
                if let Err(e) = x.move_chunk(d.memory().as_ref(), t.phys, done, n) {
                    return Err(self.fault(
                        req,
                        FaultReason::MemoryError,
                        Some(d.id()),
                        Some(e.phys),
                    ));
                }
                done += n;
            }
            Ok(())
        })
    }

    fn request_at(
        &self,
        iova: u64,
        done: usize,
        access: Access,
        domain: Option<&Arc<Domain>>,
    ) -> Result<DmaRequest, Fault> {
        match iova.checked_add(done as u64) {
            Some(iova) => Ok(DmaRequest {
                iova,
                access,
                pasid: None,
            }),
            None => Err(self.fault(
                DmaRequest {
                    iova,
                    access,
                    pasid: None,
                },
                FaultReason::BeyondAddressWidth,
                domain.map(|d| d.id()),
                None,
            )),
        }
    }
}

/// Moves `n` bytes at offset `done` of a PASID transfer to or from `phys`
/// of the memory given; the error is the refused physical address.
type PasidIo<'a> = dyn FnMut(&dyn PhysMemory, u64, usize, usize) -> Result<(), u64> + 'a;

/// A request through a process bond: the identity (the process page
/// tables are the first level; the access itself faults pages in).
fn process_translation(req: DmaRequest, domain: Option<&Arc<Domain>>) -> Translation {
    Translation {
        iova: req.iova,
        phys: req.iova,
        page_iova: req.iova & !0xfff,
        page_phys: req.iova & !0xfff,
        page_size: 4096,
        read: true,
        write: true,
        dirty: true,
        snoop: true,
        cached: false,
        domain: domain.map_or(0, |d| d.id()),
    }
}

/// Bytes of the request that the translated page covers.
#[inline]
fn chunk_len(t: &Translation, remaining: usize) -> usize {
    let in_page = t.page_iova + t.page_size - t.iova;
    usize::try_from(in_page).map_or(remaining, |n| n.min(remaining))
}

#[inline]
fn cached_translation(c: Cached, code: u32, did: u32, req: DmaRequest) -> Option<Translation> {
    let allowed = match req.access {
        Access::Read => c.flags & DATA_READ != 0,
        // A clean entry cannot serve a write: the walk must set D first.
        Access::Write => c.flags & (DATA_WRITE | DATA_DIRTY) == DATA_WRITE | DATA_DIRTY,
    };
    if !allowed {
        return None;
    }
    let size = code_size(code);
    Some(Translation {
        iova: req.iova,
        phys: c.phys_base | (req.iova & (size - 1)),
        page_iova: req.iova & !(size - 1),
        page_phys: c.phys_base,
        page_size: size,
        read: c.flags & DATA_READ != 0,
        write: c.flags & DATA_WRITE != 0,
        dirty: c.flags & DATA_DIRTY != 0,
        snoop: c.flags & DATA_SNOOP != 0,
        cached: true,
        domain: did,
    })
}

/// The direction and buffer of one DMA transfer.
enum Transfer<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Transfer<'_> {
    fn len(&self) -> usize {
        match self {
            Transfer::Read(b) => b.len(),
            Transfer::Write(d) => d.len(),
        }
    }

    fn access(&self) -> Access {
        match self {
            Transfer::Read(_) => Access::Read,
            Transfer::Write(_) => Access::Write,
        }
    }

    /// Moves bytes `at..at + n` of the buffer from or to `phys`.
    fn move_chunk(
        &mut self,
        mem: &dyn PhysMemory,
        phys: u64,
        at: usize,
        n: usize,
    ) -> Result<(), MemFault> {
        match self {
            Transfer::Read(b) => match b.get_mut(at..at + n) {
                Some(chunk) => mem.read(phys, chunk),
                None => Ok(()),
            },
            Transfer::Write(d) => match d.get(at..at + n) {
                Some(chunk) => mem.write(phys, chunk),
                None => Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IommuConfig, NullMemory, Prot};

    thread_local! {
        /// Runs between a walk's A/D update and its IOTLB fill.
        pub(super) static AFTER_WALK: RefCell<Option<Box<dyn FnMut()>>> = RefCell::new(None);
    }

    /// The fill race, made deterministic: the leaf is removed and the IOTLB
    /// scanned after the walk read it but before the walk fills the IOTLB.
    /// The filler must notice and drop its entry, or a later request would
    /// use a translation that the invalidation was supposed to remove.
    #[test]
    fn a_fill_that_loses_against_an_invalidation_removes_itself() {
        let unit = Iommu::new(IommuConfig::default());
        let domain = unit.create_domain(Arc::new(NullMemory)).unwrap();
        unit.attach_device(1, &domain).unwrap();
        domain.map(0x1000, 0x5000, 0x1000, Prot::RW).unwrap();
        let port = unit.dma_port(1);
        {
            let unit = unit.clone();
            let domain = domain.clone();
            AFTER_WALK.with(|hook| {
                *hook.borrow_mut() = Some(Box::new(move || {
                    assert_eq!(domain.unmap(0x1000, 0x1000), 0x1000);
                    // The invalidation half of a flush (its wait would wait
                    // for this very DMA).
                    unit.invalidate_range_nowait(domain.id(), 0x1000, 0x2000, 0b111);
                }));
            });
        }
        // The request itself was translated before the unmap: it succeeds.
        let t = port.translate(0x1000, Access::Read).unwrap();
        assert_eq!(t.phys, 0x5000);
        AFTER_WALK.with(|hook| hook.borrow_mut().take());
        assert_eq!(unit.iotlb_stats().valid, 0);
        let f = port.translate(0x1000, Access::Read).unwrap_err();
        assert_eq!(f.reason, FaultReason::NotPresent);
    }

    /// Same with the D bit: dirty harvesting clears D after the walk saw it
    /// set; the entry must not keep serving writes as dirty.
    #[test]
    fn a_dirty_fill_that_loses_against_dirty_clearing_removes_itself() {
        let unit = Iommu::new(IommuConfig::default());
        let domain = unit.create_domain(Arc::new(NullMemory)).unwrap();
        unit.attach_device(1, &domain).unwrap();
        domain.map(0x1000, 0x5000, 0x1000, Prot::RW).unwrap();
        let port = unit.dma_port(1);
        {
            let unit = unit.clone();
            let domain = domain.clone();
            AFTER_WALK.with(|hook| {
                *hook.borrow_mut() = Some(Box::new(move || {
                    let leaf = domain.walk(0x1000, false).unwrap();
                    assert_ne!(leaf.value & PTE_DIRTY, 0);
                    leaf.entry.fetch_and(!PTE_DIRTY, Ordering::SeqCst);
                    unit.invalidate_range_nowait(domain.id(), 0x1000, 0x2000, 0b111);
                }));
            });
        }
        port.translate(0x1000, Access::Write).unwrap();
        AFTER_WALK.with(|hook| hook.borrow_mut().take());
        assert_eq!(unit.iotlb_stats().valid, 0);
        // The next write walks again and sets D.
        assert!(!port.translate(0x1000, Access::Write).unwrap().cached);
        assert_ne!(domain.walk(0x1000, false).unwrap().value & PTE_DIRTY, 0);
    }
}
