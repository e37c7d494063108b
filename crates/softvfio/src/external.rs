//! The external API of a container: what a mediated device (a vGPU, say),
//! which has no IOMMU of its own, uses to reach the user's memory (seed 000).
//!
//! Linux: `vfio_pin_pages`, `vfio_unpin_pages`, `vfio_dma_rw` in
//! `vfio_main.c` and their type1 halves in `vfio_iommu_type1.c` (v6.1), plus
//! the device's `dma_unmap` callback that `VFIO_IOMMU_UNMAP_DMA` calls before
//! it removes a mapping the device still pins. The errno and the order of
//! the checks are the kernel's; where we differ it says so below.
//!
//! - A device registers with the container it is opened in
//!   ([`Container::register_external_device`], Linux's
//!   `vfio_iommu_type1_register_device` at open time) and gets an
//!   [`ExternalDevice`] handle that every call takes.
//! - Pins are kept per mapping in a [`PinTracker`] (a page-offset indexed
//!   structure of pin counts, seed 004), counted once however often a page
//!   is pinned, and accounted against RLIMIT_MEMLOCK only while no
//!   IOMMU-backed domain exists (those pinned and accounted the whole
//!   mapping already). Each call makes at most one accounting update.
//! - "phys" of a pinned page is its user virtual address, as everywhere in
//!   softvfio: the device reads and writes it through [`Container::memory`].
//!
//! Decisions where the kernel gives no usable answer:
//! - A device that does not unpin when notified: the kernel `BUG()`s after
//!   10 retries. We fail the unmap with EBUSY after the same number of
//!   notifications, before anything was removed (the notifications run
//!   first, for every pinned mapping in the range).
//! - A pin or `dma_rw` that meets an invalidated vaddr waits, like 6.1, on
//!   the container's condition variable; it fails with EFAULT (what the
//!   kernel returns when the wait is interrupted) when the container is
//!   closed, loses its IOMMU, or after [`Container::set_vaddr_wait_timeout`]
//!   (default 5 s): our supervisor is single-threaded, and the thread that
//!   would update the vaddr may be the one waiting.
//! - Mappings with external pins refuse `VFIO_DMA_UNMAP_FLAG_VADDR` with
//!   EBUSY (the pins were taken at the old address); with emulated groups
//!   attached every vaddr invalidation is EBUSY, as in later kernels.
//! - Releasing the container (or the last group) drops pins devices left
//!   behind, in one pass; the kernel warns and leaks them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use crate::container::Container;

use crate::error::{Result, VfioError};
use crate::iommu::Prot;
use crate::memory::{LockPolicy, MemError, UserMemory, PAGE_SIZE};
use crate::type1::state::{State, Type1};

#[cfg(feature = "bench-support")]
pub mod bench_support;
mod tracker;

pub use tracker::{PinCountOverflow, PinTracker};

/// `VFIO_PIN_PAGES_MAX_ENTRIES`: `PAGE_SIZE / sizeof(unsigned long)`.
pub const PIN_PAGES_MAX_ENTRIES: usize = 512;

/// Notifications of one mapping before an unmap gives up (the kernel's
/// `BUG_ON(++retries > 10)`).
pub const UNMAP_NOTIFY_RETRIES: u32 = 10;

/// How long a pin waits for an invalidated vaddr by default.
pub const DEFAULT_VADDR_WAIT: Duration = Duration::from_secs(5);

/// A device's `dma_unmap` callback: `(iova, size)` of a mapping about to
/// be unmapped. Called with no container lock held; it must unpin every
/// page it pinned in that range (it may call back into the container).
pub type DmaUnmapFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

/// A device registered with a container for external pinning (the
/// kernel's `vfio_device` on the type1 `device_list`).
pub struct ExternalDevice {
    id: u64,
    container_id: u64,
    group_id: u32,
    name: String,
    dma_unmap: Option<DmaUnmapFn>,
}

impl std::fmt::Debug for ExternalDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalDevice")
            .field("id", &self.id)
            .field("container_id", &self.container_id)
            .field("group_id", &self.group_id)
            .field("name", &self.name)
            .field("has_dma_unmap", &self.dma_unmap.is_some())
            .finish()
    }
}

impl ExternalDevice {
    /// The registration's id, unique in this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The group of the device.
    pub fn group_id(&self) -> u32 {
        self.group_id
    }

    /// The device's name (mdev UUID).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn dma_unmap(&self) -> Option<&DmaUnmapFn> {
        self.dma_unmap.as_ref()
    }
}

/// A page to pin, as planned before anything is committed.
use crate::type1::external::ExternalPin as PlannedPin;

/// What a pin call will commit once every page passed.
#[derive(Default)]
struct PinPlan {
    pins: Vec<PlannedPin>,
    vaddrs: Vec<u64>,
    /// Memory runs pinned so far `(vaddr, len)`, undone on failure.
    pinned_runs: Vec<(u64, u64)>,
    /// New pages that will be accounted.
    accounted: u64,
}

/// Consecutive new pages whose memory is pinned with one call.
#[derive(Clone, Copy)]
struct PendingRun {
    vaddr: u64,
    len: u64,
    write: bool,
}

fn lacks(granted: Prot, asked: Prot) -> bool {
    (asked.read && !granted.read) || (asked.write && !granted.write)
}

impl Container {
    /// How long [`Container::pin_pages`] and [`Container::dma_rw`] wait for
    /// an invalidated vaddr to be updated before failing with EFAULT.
    pub fn set_vaddr_wait_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.vaddr_wait_ms.store(ms, Ordering::Relaxed);
    }

    /// Registers a device of group `group_id` for the external API, with
    /// its `dma_unmap` callback (Linux registers at device open). EINVAL if
    /// the group is not in this container or no IOMMU is set.
    pub fn register_external_device(
        &self,
        group_id: u32,
        name: &str,
        dma_unmap: Option<DmaUnmapFn>,
    ) -> Result<Arc<ExternalDevice>> {
        let mut st = self.lock();
        if !st.groups.iter().any(|g| g.id == group_id) {
            return Err(VfioError::Invalid("group not in this container"));
        }
        if st.iommu.is_none() {
            return Err(VfioError::Invalid("no IOMMU set"));
        }
        let dev = Arc::new(ExternalDevice {
            id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
            container_id: self.id(),
            group_id,
            name: name.to_owned(),
            dma_unmap,
        });
        st.external_devices.push(dev.clone());
        Ok(dev)
    }

    /// Removes a registration (device close). Pins stay with their mappings.
    pub fn unregister_external_device(&self, dev: &ExternalDevice) {
        self.lock().external_devices.retain(|d| d.id != dev.id);
    }

    /// Devices registered now.
    pub fn external_device_count(&self) -> usize {
        self.lock().external_devices.len()
    }

    /// Heap bytes of the external pin tracking of every mapping.
    pub fn external_tracking_bytes(&self) -> usize {
        let st = self.lock();
        st.iommu
            .as_ref()
            .map(|t| t.dmas().iter().map(|d| d.ext_pins.heap_bytes()).sum())
            .unwrap_or(0)
    }

    /// Pages pinned externally and the sum of their pin counts, over every
    /// mapping.
    pub fn external_pins(&self) -> (u64, u64) {
        let st = self.lock();
        st.iommu
            .as_ref()
            .map(|t| {
                t.dmas().iter().fold((0, 0), |(p, r), d| {
                    (p + d.ext_pins.pinned_pages(), r + d.ext_pins.pin_refs())
                })
            })
            .unwrap_or((0, 0))
    }

    /// The pin count of the page at `iova` (0 when not pinned or mapped).
    pub fn external_pin_count(&self, iova: u64) -> u32 {
        let st = self.lock();
        let Some(t) = st.iommu.as_ref() else { return 0 };
        t.dmas()
            .containing(iova)
            .map(|d| d.ext_pins.count((iova - d.iova) / PAGE_SIZE))
            .unwrap_or(0)
    }

    fn is_registered(st: &State, dev: &ExternalDevice) -> bool {
        st.external_devices.iter().any(|d| d.id == dev.id)
    }

    /// `vfio_pin_pages`: pins `npage` pages from `iova` for `dev`, checking
    /// `prot` against each mapping; returns the address of each page (its
    /// user virtual address). All or nothing.
    ///
    /// Errors: EINVAL for `npage == 0`, a device not registered, a group
    /// with more than one device, an unmapped IOVA or a device without a
    /// `dma_unmap` callback; E2BIG above [`PIN_PAGES_MAX_ENTRIES`]; EACCES
    /// on a type1 v1 container; EPERM when a mapping does not allow `prot`;
    /// EFAULT when memory cannot be pinned (or a vaddr wait is abandoned);
    /// ENOMEM over RLIMIT_MEMLOCK.
    pub fn pin_pages(
        &self,
        dev: &ExternalDevice,
        iova: u64,
        npage: usize,
        prot: Prot,
    ) -> Result<Vec<u64>> {
        if npage == 0 {
            return Err(VfioError::Invalid("npage is zero"));
        }
        let st = self.lock();
        if !Self::is_registered(&st, dev) {
            return Err(VfioError::Invalid("device not open in this container"));
        }
        if npage > PIN_PAGES_MAX_ENTRIES {
            return Err(VfioError::TooBig(
                "more than VFIO_PIN_PAGES_MAX_ENTRIES pages",
            ));
        }
        // Linux 6.1: pinning is refused for groups of more than one device.
        if st
            .groups
            .iter()
            .find(|g| g.id == dev.group_id)
            .is_some_and(|g| g.devices.len() > 1)
        {
            return Err(VfioError::Invalid("group has more than one device"));
        }
        let Some(t) = st.iommu.as_ref() else {
            return Err(VfioError::NoTty);
        };
        if !t.is_v2() {
            return Err(VfioError::Access("external pinning needs type1v2"));
        }
        let len = (npage as u64) * PAGE_SIZE;
        let mut st = self.wait_vaddr_valid(st, iova, len)?;
        // type1 refuses pins no one could be told to drop.
        if dev.dma_unmap.is_none() {
            return Err(VfioError::Invalid("device has no dma_unmap callback"));
        }
        let Some(t) = st.iommu.as_mut() else {
            return Err(VfioError::Fault);
        };
        let do_accounting = t.accounts_external_pins();
        let limit = do_accounting.then(|| self.memory().lock_policy().limit_pages);
        let plan = self.plan_pins(t, iova, npage, prot, limit)?;
        // Cannot fail: plan_pins checked every count under the same lock.
        let failed = t.record_external_pins(&plan.pins, do_accounting);
        if failed > 0 {
            tracing::error!(failed, "pins not recorded after planning");
        }
        // One accounting update for the whole call (seed 000).
        self.memory().account().charge_unchecked(plan.accounted);

        // A group whose device pins pages reports dirt through the pins only.
        t.set_pinned_page_dirty_scope(dev.group_id);
        Ok(plan.vaddrs)
    }

    /// Walks the pages of a pin call in order with the kernel's checks,
    /// pinning the memory of pages not pinned yet (consecutive ones in one
    /// call); on error every memory pin made here is undone.
    fn plan_pins(
        &self,
        t: &Type1,
        iova: u64,
        npage: usize,
        prot: Prot,
        limit: Option<u64>,
    ) -> Result<PinPlan> {
        let mut plan = PinPlan {
            pins: Vec::with_capacity(npage),
            vaddrs: Vec::with_capacity(npage),
            ..PinPlan::default()
        };
        let mut pending: Option<PendingRun> = None;
        for i in 0..npage as u64 {
            let Some(page_iova) = iova.checked_add(i * PAGE_SIZE) else {
                return Err(self.abort_plan(plan, pending, VfioError::Invalid("IOVA wraps")));
            };
            let Some(dma) = t.dmas().containing(page_iova) else {
                return Err(self.abort_plan(plan, pending, VfioError::Invalid("IOVA not mapped")));
            };
            if dma.space.is_some() {
                // The pins of one call are taken and dropped in the
                // container's own address space; a mapping another
                // program made through it (fork, exec) is not pinned
                // externally yet (docs/RELIABILITY.md, "Process model").
                return Err(self.abort_plan(
                    plan,
                    pending,
                    VfioError::Memory(crate::memory::MemError::Fault),
                ));
            }
            if lacks(dma.prot, prot) {
                return Err(self.abort_plan(
                    plan,
                    pending,
                    VfioError::NotPermitted("mapping does not allow this access"),
                ));
            }
            let page = (page_iova - dma.iova) / PAGE_SIZE;
            let vaddr = dma.vaddr + page * PAGE_SIZE;
            plan.vaddrs.push(vaddr);
            let count = dma.ext_pins.count(page);
            if count > 0 {
                if count == u32::MAX {
                    return Err(self.abort_plan(
                        plan,
                        pending,
                        VfioError::NoMem("pin count overflow".into()),
                    ));
                }
                plan.pins.push(PlannedPin {
                    dma_iova: dma.iova,
                    page,
                    new: false,
                });
                continue;
            }
            if let Some(limit_pages) = limit {
                let policy = LockPolicy {
                    cap_ipc_lock: dma.lock_cap,
                    limit_pages,
                };
                if let Err(over) = self.memory().account().check(plan.accounted + 1, policy) {
                    // The kernel pins a page before accounting it: a page
                    // that cannot be pinned reports EFAULT, not ENOMEM.
                    let err = match self.flush_run(&mut plan, pending.take()) {
                        Err(e) => e,
                        Ok(()) => {
                            match self
                                .memory()
                                .pin(vaddr, PAGE_SIZE, dma.prot.write, &mut |_| Ok(()))
                            {
                                Err(e) => VfioError::Memory(e),
                                Ok(()) => {
                                    self.memory().unpin(vaddr, PAGE_SIZE);
                                    VfioError::NoMem(over.to_string())
                                }
                            }
                        }
                    };
                    return Err(self.abort_plan(plan, None, err));
                }
                plan.accounted += 1;
            }
            plan.pins.push(PlannedPin {
                dma_iova: dma.iova,
                page,
                new: true,
            });
            match pending.as_mut() {
                Some(r) if r.vaddr + r.len == vaddr && r.write == dma.prot.write => {
                    r.len += PAGE_SIZE;
                }
                _ => {
                    if let Err(e) = self.flush_run(&mut plan, pending.take()) {
                        return Err(self.abort_plan(plan, None, e));
                    }
                    pending = Some(PendingRun {
                        vaddr,
                        len: PAGE_SIZE,
                        write: dma.prot.write,
                    });
                }
            }
        }
        if let Err(e) = self.flush_run(&mut plan, pending.take()) {
            return Err(self.abort_plan(plan, None, e));
        }
        Ok(plan)
    }

    /// Pins the memory of a pending run of new pages.
    fn flush_run(&self, plan: &mut PinPlan, run: Option<PendingRun>) -> Result<()> {
        let Some(r) = run else { return Ok(()) };
        self.memory()
            .pin(r.vaddr, r.len, r.write, &mut |_| Ok(()))
            .map_err(VfioError::Memory)?;
        plan.pinned_runs.push((r.vaddr, r.len));
        Ok(())
    }

    /// Undoes the memory pins of a failed plan; an earlier page's failure
    /// wins, so the pending run is pinned first to find out.
    fn abort_plan(
        &self,
        mut plan: PinPlan,
        pending: Option<PendingRun>,
        err: VfioError,
    ) -> VfioError {
        let err = match self.flush_run(&mut plan, pending) {
            Err(earlier) => earlier,
            Ok(()) => err,
        };
        for (vaddr, len) in plan.pinned_runs {
            self.memory().unpin(vaddr, len);
        }
        err
    }

    /// `vfio_unpin_pages`: drops one pin of each of `npage` pages from
    /// `iova`. Pages that are not pinned are skipped, as in the kernel.
    /// The kernel returns nothing and warns on bad input; we return EINVAL
    /// (npage 0, device not registered, an unmapped IOVA: the pages before
    /// it are unpinned, as in the kernel), E2BIG (too many pages) or EACCES
    /// (type1 v1).
    pub fn unpin_pages(&self, dev: &ExternalDevice, iova: u64, npage: usize) -> Result<()> {
        if npage == 0 {
            return Err(VfioError::Invalid("npage is zero"));
        }
        let mut st = self.lock();
        if !Self::is_registered(&st, dev) {
            return Err(VfioError::Invalid("device not open in this container"));
        }
        if npage > PIN_PAGES_MAX_ENTRIES {
            return Err(VfioError::TooBig(
                "more than VFIO_PIN_PAGES_MAX_ENTRIES pages",
            ));
        }
        let Some(t) = st.iommu.as_mut() else {
            return Err(VfioError::NoTty);
        };
        if !t.is_v2() {
            return Err(VfioError::Access("external pinning needs type1v2"));
        }
        let iovas = (0..npage as u64).map_while(|i| iova.checked_add(i * PAGE_SIZE));
        if self.unpin_iovas(t, iovas, true) == npage {
            Ok(())
        } else {
            Err(VfioError::Invalid("IOVA not mapped"))
        }
    }

    /// Drops one pin of each page in `iovas` (any number, any order; pages
    /// not pinned or not mapped are skipped) with one accounting update:
    /// what a device uses to let go of everything it cached when told a
    /// mapping goes away. Beyond the kernel, which caps each call at 512.
    pub fn unpin_batch(&self, dev: &ExternalDevice, iovas: &[u64]) -> Result<()> {
        let mut st = self.lock();
        if !Self::is_registered(&st, dev) {
            return Err(VfioError::Invalid("device not open in this container"));
        }
        let Some(t) = st.iommu.as_mut() else {
            return Err(VfioError::NoTty);
        };
        if !t.is_v2() {
            return Err(VfioError::Access("external pinning needs type1v2"));
        }
        self.unpin_iovas(t, iovas.iter().copied(), false);
        Ok(())
    }

    /// Unpins page by page; stops at the first unmapped IOVA when
    /// `stop_at_hole`. Returns the IOVAs processed. Memory is unpinned in
    /// runs and accounting updated once.
    fn unpin_iovas(
        &self,
        t: &mut Type1,
        iovas: impl Iterator<Item = u64>,
        stop_at_hole: bool,
    ) -> usize {
        let released = t.drop_external_pins(iovas, stop_at_hole);
        for (vaddr, len) in released.runs {
            self.memory().unpin(vaddr, len);
        }
        self.memory().account().uncharge(released.unaccount);
        released.processed
    }

    /// `vfio_dma_rw`: reads (`write == false`) or writes `data` at `iova`
    /// through the user's mappings, across mapping boundaries, without
    /// pinning. EINVAL for an empty buffer, a device not registered or an
    /// unmapped IOVA; EPERM when the mapping is not readable (even for a
    /// write, as in the kernel) or not writable for a write; EFAULT when
    /// memory is missing. Chunks before a failure stay transferred.
    pub fn dma_rw(
        &self,
        dev: &ExternalDevice,
        iova: u64,
        data: &mut [u8],
        write: bool,
    ) -> Result<()> {
        if write {
            self.rw(dev, iova, RwBuf::Write(data))
        } else {
            self.rw(dev, iova, RwBuf::Read(data))
        }
    }

    /// [`Container::dma_rw`] reading into `buf`.
    pub fn dma_read(&self, dev: &ExternalDevice, iova: u64, buf: &mut [u8]) -> Result<()> {
        self.rw(dev, iova, RwBuf::Read(buf))
    }

    /// [`Container::dma_rw`] writing `data`.
    pub fn dma_write(&self, dev: &ExternalDevice, iova: u64, data: &[u8]) -> Result<()> {
        self.rw(dev, iova, RwBuf::Write(data))
    }

    fn rw(&self, dev: &ExternalDevice, iova: u64, mut buf: RwBuf<'_>) -> Result<()> {
        let len = buf.len();
        if len == 0 {
            return Err(VfioError::Invalid("empty buffer"));
        }
        let mut st = self.lock();
        if !Self::is_registered(&st, dev) {
            return Err(VfioError::Invalid("device not open in this container"));
        }
        let write = matches!(buf, RwBuf::Write(_));
        let mut done = 0usize;
        while done < len {
            let cur = iova
                .checked_add(done as u64)
                .ok_or(VfioError::Invalid("IOVA wraps"))?;
            st = self.wait_vaddr_valid(st, cur, 1)?;
            let Some(t) = st.iommu.as_mut() else {
                return Err(VfioError::Fault);
            };
            let Some(dma) = t.dmas().containing(cur) else {
                return Err(VfioError::Invalid("IOVA not mapped"));
            };
            if (write && !dma.prot.write) || !dma.prot.read {
                return Err(VfioError::NotPermitted(
                    "mapping does not allow this access",
                ));
            }
            let offset = cur - dma.iova;
            let n = (len - done).min(usize::try_from(dma.size - offset).unwrap_or(usize::MAX));
            let vaddr = dma.vaddr + offset;
            let res = match &mut buf {
                RwBuf::Read(b) => b
                    .get_mut(done..done + n)
                    .map(|s| read_like_copy_from_user(self.mem_of(dma).as_ref(), vaddr, s)),
                // copy_to_user: the program's current protections apply
                // (UserMemory::write), unlike DMA to pinned pages.
                RwBuf::Write(d) => d
                    .get(done..done + n)
                    .map(|s| self.mem_of(dma).write(vaddr, s)),
            };
            match res {
                Some(Ok(())) => {}
                _ => return Err(VfioError::Fault),
            }
            if write {
                let dma_iova = dma.iova;
                t.mark_written(dma_iova, offset, n as u64);
            }
            done += n;
        }
        Ok(())
    }

    /// Waits until every mapping under `[iova, iova + size)` has a valid
    /// vaddr (type1's `vfio_find_dma_valid` loop). EINVAL when a page is not
    /// mapped while waiting is needed; EFAULT when the wait is abandoned.
    fn wait_vaddr_valid<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        iova: u64,
        size: u64,
    ) -> Result<MutexGuard<'a, State>> {
        let timeout = Duration::from_millis(self.vaddr_wait_ms.load(Ordering::Relaxed));
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if st.closed {
                return Err(VfioError::Fault);
            }
            let Some(t) = st.iommu.as_ref() else {
                return Err(VfioError::Fault);
            };
            if t.vaddr_invalid_count() == 0 {
                return Ok(st);
            }
            let mut must_wait = false;
            let mut cur = iova;
            // Inclusive bounds: the range may end at the top of the space.
            let last = iova.saturating_add(size.max(1) - 1);
            let probe = PAGE_SIZE.min(size.max(1)) - 1;
            loop {
                let Some(dma) = t.dmas().overlapping(cur, cur.saturating_add(probe)) else {
                    return Err(VfioError::Invalid("IOVA not mapped"));
                };
                if dma.vaddr_invalid {
                    must_wait = true;
                    break;
                }
                match dma.last().checked_add(1) {
                    Some(next) if next > cur && next <= last => cur = next,
                    _ => break,
                }
            }
            if !must_wait {
                return Ok(st);
            }
            let now = Instant::now();
            let remaining = match deadline {
                Some(d) if d > now => d - now,
                Some(_) => return Err(VfioError::Fault),
                None => Duration::from_secs(3600),
            };
            st = match self.vaddr_valid.wait_timeout(st, remaining) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// Reads user memory at `vaddr` as the kernel's `copy_from_user` does for
/// `vfio_dma_rw`: when part of the range cannot be read, the bytes before
/// the first unreadable page are copied and everything from that page on
/// is zeroed (the kernel clears the uncopied tail of the destination), and
/// the call fails. Linux 6.1 with medu in `dma_rw` mode shows exactly this
/// in the device buffer after a faulting read (tests-oracle/MEDU-DIFFS.md,
/// cause R).
pub(crate) fn read_like_copy_from_user(
    mem: &dyn UserMemory,
    vaddr: u64,
    buf: &mut [u8],
) -> std::result::Result<(), MemError> {
    // The program's current protections apply (UserMemory::read: a
    // PROT_NONE page faults), as for any user access in the kernel.
    let Err(first) = mem.read(vaddr, buf) else {
        return Ok(());
    };
    // Only on the failure path: find the readable prefix page by page.
    let mut copied = 0usize;
    while copied < buf.len() {
        let at = vaddr.wrapping_add(copied as u64);
        let n = (buf.len() - copied).min((PAGE_SIZE - (at & (PAGE_SIZE - 1))) as usize);
        let Some(piece) = buf.get_mut(copied..copied + n) else {
            break;
        };
        if mem.read(at, piece).is_err() {
            break;
        }
        copied += n;
    }
    if let Some(tail) = buf.get_mut(copied..) {
        tail.fill(0);
    }
    Err(first)
}

enum RwBuf<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl RwBuf<'_> {
    fn len(&self) -> usize {
        match self {
            RwBuf::Read(b) => b.len(),
            RwBuf::Write(d) => d.len(),
        }
    }
}
