//! The type1 engine: a container, the groups attached to it, their IOMMU
//! domains, the DMA mappings and the valid IOVA list.
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
//! `dma_entry_limit` (checked by [`Container::check_invariants`], which the
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
//!   that sum; one container cannot see the others);
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

#![allow(missing_docs)] // TODO(issue 16, item 6): document the remaining public items

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::account::OverLimit;
use crate::dirty::{self, DIRTY_BITMAP_SIZE_MAX};
use crate::dma::{Dma, DmaTree};
use crate::error::{Result, VfioError};
use crate::external::{DmaUnmapFn, ExternalDevice, PinTracker, UNMAP_NOTIFY_RETRIES};
use crate::iommu::{DomainOps, IommuUnit, Prot, ResvRegion};
use crate::iova::{IovaList, IovaRange};
use crate::memory::{LockPolicy, MemError, PinnedRun, UserMemory, PAGE_SIZE};
use crate::platform::{Group, GroupKind};

/// `VFIO_TYPE1_IOMMU` and friends (the SET_IOMMU / CHECK_EXTENSION magic).
pub const TYPE1_IOMMU: u64 = 1;
pub const SPAPR_TCE_IOMMU: u64 = 2;
pub const TYPE1V2_IOMMU: u64 = 3;
pub const DMA_CC_IOMMU: u64 = 4;
pub const EEH: u64 = 5;
pub const TYPE1_NESTING_IOMMU: u64 = 6;
pub const SPAPR_TCE_V2_IOMMU: u64 = 7;
pub const NOIOMMU_IOMMU: u64 = 8;
pub const UNMAP_ALL: u64 = 9;
pub const UPDATE_VADDR: u64 = 10;

/// `VFIO_DMA_MAP_FLAG_*`.
pub const MAP_FLAG_READ: u32 = 1 << 0;
pub const MAP_FLAG_WRITE: u32 = 1 << 1;
pub const MAP_FLAG_VADDR: u32 = 1 << 2;
/// `VFIO_DMA_UNMAP_FLAG_*`.
pub const UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;
pub const UNMAP_FLAG_ALL: u32 = 1 << 1;
pub const UNMAP_FLAG_VADDR: u32 = 1 << 2;

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
    pub pgsize: u64,
    pub size: u64,
    pub data: u64,
}

/// What `VFIO_IOMMU_GET_INFO` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Type1Info {
    pub pgsize_bitmap: u64,
    pub dma_avail: u32,
    pub iova_ranges: Vec<IovaRange>,
    /// Migration capability: the dirty-bitmap page sizes and maximum size.
    pub migration_pgsize_bitmap: u64,
    pub max_dirty_bitmap_size: u64,
}

/// A group as attached to a type1 IOMMU.
pub(crate) struct AttachedGroup {
    pub(crate) group: Arc<Group>,
    /// The group only dirties memory through the pinning interface.
    pub(crate) pinned_page_dirty_scope: bool,
}

/// One IOMMU domain of the container.
pub(crate) struct DomainEntry {
    ops: Arc<dyn DomainOps>,
    unit: Arc<dyn IommuUnit>,
    pub(crate) groups: Vec<AttachedGroup>,
    enforce_cache_coherency: bool,
}

/// type1's `struct vfio_iommu`.
pub(crate) struct Type1 {
    pub(crate) v2: bool,
    nesting: bool,
    pub(crate) dmas: DmaTree,
    pub(crate) domains: Vec<DomainEntry>,
    pub(crate) emulated_groups: Vec<AttachedGroup>,
    iova_list: IovaList,
    pub(crate) pgsize_bitmap: u64,
    dma_avail: u32,
    pub(crate) dirty_tracking: bool,
    pub(crate) num_non_pinned_groups: u32,
    pub(crate) vaddr_invalid_count: u32,
}

pub(crate) struct State {
    /// Groups attached to the container (`container->group_list`).
    pub(crate) groups: Vec<Arc<Group>>,
    /// The IOMMU driver data once `VFIO_SET_IOMMU` succeeded.
    pub(crate) iommu: Option<Type1>,
    /// Set when the container is released; wakes vaddr waiters.
    pub(crate) closed: bool,
    /// Devices registered for external pinning (type1's `device_list`):
    /// their `dma_unmap` callbacks are the unmap notifier.
    pub(crate) external_devices: Vec<Arc<ExternalDevice>>,
}

/// A VFIO container (`/dev/vfio/vfio`) with the type1 backend.
pub struct Container {
    id: u64,
    cfg: ContainerConfig,
    mem: Arc<dyn UserMemory>,
    state: Mutex<State>,
    /// Signalled when a vaddr becomes valid again (type1's `vaddr_wait`).
    pub(crate) vaddr_valid: Condvar,
    /// How long an external pin waits for an invalid vaddr, in ms.
    pub(crate) vaddr_wait_ms: AtomicU64,
}

fn page_pages(size: u64) -> u64 {
    size / PAGE_SIZE
}

pub(crate) fn min_pgsize(bitmap: u64) -> u64 {
    if bitmap == 0 {
        PAGE_SIZE
    } else {
        1u64 << bitmap.trailing_zeros()
    }
}

fn over_limit(e: OverLimit) -> VfioError {
    VfioError::NoMem(e.to_string())
}

impl Container {
    /// A new, unset container whose mappings pin `mem`.
    pub fn new(cfg: ContainerConfig, mem: Arc<dyn UserMemory>) -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_CONTAINER_ID.fetch_add(1, Ordering::Relaxed),
            cfg,
            mem,
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
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn memory(&self) -> &Arc<dyn UserMemory> {
        &self.mem
    }

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
    pub fn check_extension(&self, ext: u64) -> i64 {
        let st = self.lock();
        match &st.iommu {
            // No driver yet: poll the registered drivers (type1 only) with no
            // IOMMU data.
            None => match ext {
                TYPE1_IOMMU | TYPE1V2_IOMMU | TYPE1_NESTING_IOMMU | UNMAP_ALL => 1,
                _ => 0,
            },
            Some(t) => match ext {
                TYPE1_IOMMU | TYPE1V2_IOMMU | TYPE1_NESTING_IOMMU | UNMAP_ALL => 1,
                // Disabled with mdevs present: they cannot pin or rw safely
                // while a vaddr is being updated.
                UPDATE_VADDR => i64::from(t.emulated_groups.is_empty()),
                DMA_CC_IOMMU => i64::from(t.domains.iter().all(|d| d.enforce_cache_coherency)),
                _ => 0,
            },
        }
    }

    /// `VFIO_SET_IOMMU`.
    pub fn set_iommu(&self, arg: u64) -> Result<()> {
        let mut st = self.lock();
        // Only a container holding a group may enable an IOMMU, and only once.
        if st.groups.is_empty() || st.iommu.is_some() {
            return Err(VfioError::Invalid("no group attached or IOMMU already set"));
        }
        let (v2, nesting) = match arg {
            TYPE1_IOMMU => (false, false),
            TYPE1V2_IOMMU => (true, false),
            TYPE1_NESTING_IOMMU => (true, true),
            // No registered driver claims it.
            _ => return Err(VfioError::NoDevice),
        };
        let mut t = Type1 {
            v2,
            nesting,
            dmas: DmaTree::default(),
            domains: Vec::new(),
            emulated_groups: Vec::new(),
            iova_list: IovaList::new(),
            pgsize_bitmap: !(PAGE_SIZE - 1),
            dma_avail: self.cfg.dma_entry_limit,
            dirty_tracking: false,
            num_non_pinned_groups: 0,
            vaddr_invalid_count: 0,
        };
        let groups = st.groups.clone();
        for (i, g) in groups.iter().enumerate() {
            if let Err(e) = self.attach_to_type1(&mut t, g) {
                // Undo the groups attached so far; the container stays unset.
                for g in groups[..i].iter().rev() {
                    self.detach_from_type1(&mut t, g.id);
                }
                self.release_type1(&mut t);
                return Err(e);
            }
        }
        st.iommu = Some(t);
        Ok(())
    }

    /// `VFIO_GROUP_SET_CONTAINER` (the container side).
    pub fn attach_group(&self, group: &Arc<Group>) -> Result<()> {
        let mut st = self.lock();
        if st.groups.iter().any(|g| g.id == group.id) {
            return Err(VfioError::Invalid("group already in this container"));
        }
        // A new domain's replay needs every vaddr valid: like type1, wait
        // for the vaddr updates (bounded: the thread that would update may
        // be the one waiting, in a single-threaded front end), then retry
        // the attach from scratch (it changed nothing when it failed).
        let timeout = Duration::from_millis(self.vaddr_wait_ms.load(Ordering::Relaxed));
        let deadline = Instant::now().checked_add(timeout);
        while let Some(t) = st.iommu.as_mut() {
            match self.attach_to_type1(t, group) {
                Ok(()) => break,
                Err(VfioError::Fault) if t.vaddr_invalid_count > 0 && !st.closed => {
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
                Err(e) => return Err(e),
            }
        }
        st.groups.push(group.clone());
        Ok(())
    }

    /// `VFIO_GROUP_UNSET_CONTAINER` (the container side). Never fails. When
    /// the last group leaves, the IOMMU is released with every mapping and
    /// the container returns to the unset state.
    pub fn detach_group(&self, group_id: u32) {
        let mut st = self.lock();
        let Some(pos) = st.groups.iter().position(|g| g.id == group_id) else {
            return;
        };
        st.groups.remove(pos);
        // Its devices are closed by now; forget any registration left.
        st.external_devices.retain(|d| d.group_id() != group_id);
        let now_empty = st.groups.is_empty();
        if let Some(t) = st.iommu.as_mut() {
            self.detach_from_type1(t, group_id);
        }
        if now_empty {
            if let Some(mut t) = st.iommu.take() {
                self.release_type1(&mut t);
            }
            self.vaddr_valid.notify_all();
        }
    }

    /// The container file was closed and no group holds it any more.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.external_devices.clear();
        if let Some(mut t) = st.iommu.take() {
            self.release_type1(&mut t);
        }
        self.vaddr_valid.notify_all();
    }

    // ---- type1 group attach / detach -------------------------------------

    fn attach_to_type1(&self, t: &mut Type1, group: &Arc<Group>) -> Result<()> {
        if t.domains
            .iter()
            .any(|d| d.groups.iter().any(|g| g.group.id == group.id))
            || t.emulated_groups.iter().any(|g| g.group.id == group.id)
        {
            return Err(VfioError::Invalid("group already attached"));
        }
        let unit = match &group.kind {
            GroupKind::Emulated => {
                // An emulated group cannot dirty memory directly; it only
                // uses interfaces that track what they touch.
                t.emulated_groups.push(AttachedGroup {
                    group: group.clone(),
                    pinned_page_dirty_scope: true,
                });
                return Ok(());
            }
            GroupKind::Iommu(unit) => unit.clone(),
        };

        let new_domain = unit
            .alloc_domain(self.mem.clone())
            .map_err(|_| VfioError::Io("cannot allocate an IOMMU domain"))?;
        if t.nesting {
            // VT-d (6.1) has no enable_nesting: iommu_enable_nesting fails.
            return Err(VfioError::Invalid("IOMMU does not support nesting"));
        }
        attach_devices(&unit, group, &new_domain)?;

        let result = self.attach_checked(t, group, &unit, new_domain.clone());
        if result.is_err() {
            detach_devices(&unit, group);
        }
        result
    }

    /// The part of attach after the group's devices point at `new_domain`;
    /// on error the caller detaches the devices again. Nothing in `t`
    /// changes unless everything succeeds.
    fn attach_checked(
        &self,
        t: &mut Type1,
        group: &Arc<Group>,
        unit: &Arc<dyn IommuUnit>,
        new_domain: Arc<dyn DomainOps>,
    ) -> Result<()> {
        let (aper_start, aper_end) = new_domain.aperture();
        if aperture_conflict(t, aper_start, aper_end) {
            return Err(VfioError::Invalid("existing mapping outside the aperture"));
        }
        let resv = group.reserved_regions();
        if resv_conflict(t, &resv) {
            return Err(VfioError::Invalid("existing mapping in a reserved region"));
        }
        // Work on a copy; install it only when everything succeeded.
        let mut iova_copy = t.iova_list.clone();
        iova_copy.resize_to_aperture(aper_start, aper_end);
        iova_copy.exclude_reserved(&resv)?;

        let enforce_cc = new_domain.enforce_cache_coherency();
        let attached = AttachedGroup {
            group: group.clone(),
            pinned_page_dirty_scope: false,
        };

        // Reuse a compatible domain when the unit accepts it.
        for d in t.domains.iter_mut() {
            if d.enforce_cache_coherency != enforce_cc {
                continue;
            }
            detach_devices(unit, group);
            if attach_devices(unit, group, &d.ops).is_ok() {
                d.groups.push(attached);
                t.iova_list = iova_copy;
                t.num_non_pinned_groups += 1;
                return Ok(());
            }
            attach_devices(unit, group, &new_domain)?;
        }

        self.replay(t, &new_domain)?;
        t.domains.push(DomainEntry {
            ops: new_domain,
            unit: unit.clone(),
            groups: vec![attached],
            enforce_cache_coherency: enforce_cc,
        });
        update_pgsize_bitmap(t);
        t.iova_list = iova_copy;
        // An IOMMU-backed group can dirty memory directly: it demotes the
        // dirty scope until it declares itself through the pinning API.
        t.num_non_pinned_groups += 1;
        Ok(())
    }

    /// Maps every existing mapping into a new domain, pinning what is not
    /// pinned yet (type1's `vfio_iommu_replay`). All or nothing.
    fn replay(&self, t: &mut Type1, domain: &Arc<dyn DomainOps>) -> Result<()> {
        self.wait_all_valid(t)?;
        let limit = self.mem.lock_policy().limit_pages;
        // (iova, bytes mapped in the new domain, newly pinned, pages charged)
        let mut done: Vec<(u64, u64, bool, u64)> = Vec::new();
        let mut failure = None;
        for dma in t.dmas.iter() {
            if dma.iommu_mapped {
                // Already pinned for another domain: map the same pages.
                if let Err(e) = domain.map(dma.iova, dma.pinned_vaddr, dma.size, dma.prot) {
                    failure = Some(VfioError::from(e));
                    break;
                }
                done.push((dma.iova, dma.size, false, 0));
            } else {
                let policy = LockPolicy {
                    cap_ipc_lock: dma.lock_cap,
                    limit_pages: limit,
                };
                match self.pin_and_map(dma, std::slice::from_ref(domain), policy) {
                    Ok(charged) => done.push((dma.iova, dma.size, true, charged)),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        if let Some(e) = failure {
            for (iova, size, pinned, charged) in done.into_iter().rev() {
                unmap_all_of(domain.as_ref(), iova, size);
                domain.flush(iova, size);
                if pinned {
                    if let Some(dma) = t.dmas.get(iova) {
                        self.mem.unpin(dma.vaddr, size);
                    }
                    self.mem.account().uncharge(charged);
                }
            }
            return Err(e);
        }
        for (iova, _, pinned, charged) in done {
            if let Some(dma) = t.dmas.get_mut(iova) {
                if pinned {
                    dma.pinned_vaddr = dma.vaddr;
                    // Pages pinned externally were accounted already.
                    dma.locked_pages += charged;
                }
                dma.iommu_mapped = true;
            }
        }
        Ok(())
    }

    fn detach_from_type1(&self, t: &mut Type1, group_id: u32) {
        if let Some(pos) = t
            .emulated_groups
            .iter()
            .position(|g| g.group.id == group_id)
        {
            t.emulated_groups.remove(pos);
            if t.emulated_groups.is_empty() && t.domains.is_empty() {
                self.unmap_unpin_all(t);
            }
            return;
        }
        let Some(di) = t
            .domains
            .iter()
            .position(|d| d.groups.iter().any(|g| g.group.id == group_id))
        else {
            return;
        };
        let mut iova_copy = t.iova_list.clone();
        let domain = &mut t.domains[di];
        let Some(gi) = domain.groups.iter().position(|g| g.group.id == group_id) else {
            return;
        };
        let attached = domain.groups.remove(gi);
        detach_devices(&domain.unit, &attached.group);

        if domain.groups.is_empty() {
            if t.domains.len() == 1 {
                if t.emulated_groups.is_empty() {
                    self.unmap_unpin_all(t);
                } else {
                    self.unmap_unpin_reaccount(t);
                }
            }
            let gone = t.domains.remove(di);
            // Mappings stay in the other domains; drop them from this one.
            if !t.domains.is_empty() {
                for dma in t.dmas.iter().filter(|d| d.iommu_mapped) {
                    unmap_all_of(gone.ops.as_ref(), dma.iova, dma.size);
                }
                gone.ops.flush(0, u64::MAX);
            }
            let (start, end) = t.domains.iter().fold((0u64, u64::MAX), |(s, e), d| {
                let (a, b) = d.ops.aperture();
                (s.max(a), e.min(b))
            });
            iova_copy.expand_to_aperture(start, end);
            update_pgsize_bitmap(t);
        }

        // Recompute on the copy; keep the old list if that fails.
        let resv: Vec<ResvRegion> = t
            .domains
            .iter()
            .flat_map(|d| d.groups.iter())
            .flat_map(|g| g.group.reserved_regions())
            .collect();
        if iova_copy.refresh(&resv).is_ok() {
            t.iova_list = iova_copy;
        }

        if !attached.pinned_page_dirty_scope {
            t.num_non_pinned_groups = t.num_non_pinned_groups.saturating_sub(1);
            // The pages may have been dirtied by the departed group.
            if t.dirty_tracking {
                for dma in t.dmas.iter_mut() {
                    if let Some(bm) = dma.bitmap.as_mut() {
                        dirty::set_all(bm, dma.size / min_pgsize(t.pgsize_bitmap));
                    }
                }
            }
        }
    }

    /// Releases the driver data: every mapping is unmapped and unpinned and
    /// the domains are freed (type1's release).
    fn release_type1(&self, t: &mut Type1) {
        self.unmap_unpin_all(t);
        for d in t.domains.drain(..) {
            for g in &d.groups {
                detach_devices(&d.unit, &g.group);
            }
        }
        t.emulated_groups.clear();
    }

    fn unmap_unpin_all(&self, t: &mut Type1) {
        for iova in t.dmas.keys() {
            self.remove_dma(t, iova);
        }
    }

    /// The last IOMMU-backed domain goes while emulated groups remain: unpin
    /// everything the domain pinned and keep accounted only the pages still
    /// pinned externally (type1's `vfio_iommu_unmap_unpin_reaccount`), one
    /// accounting update per mapping.
    fn unmap_unpin_reaccount(&self, t: &mut Type1) {
        let domains: Vec<Arc<dyn DomainOps>> = t.domains.iter().map(|d| d.ops.clone()).collect();
        for dma in t.dmas.iter_mut() {
            if !dma.iommu_mapped {
                continue;
            }
            for d in &domains {
                unmap_all_of(d.as_ref(), dma.iova, dma.size);
                d.flush(dma.iova, dma.size);
            }
            self.mem.unpin(dma.pinned_vaddr, dma.size);
            let still_pinned = dma.ext_pins.pinned_pages();
            self.mem
                .account()
                .uncharge(dma.locked_pages.saturating_sub(still_pinned));
            dma.locked_pages = still_pinned;
            dma.iommu_mapped = false;
        }
    }

    /// Waits until no mapping has an invalid vaddr (type1's
    /// `vfio_wait_all_valid`). Fails with EFAULT if the container goes away.
    fn wait_all_valid(&self, t: &Type1) -> Result<()> {
        if t.vaddr_invalid_count == 0 {
            return Ok(());
        }
        // Waiting needs the state lock released, which `t` holds: report
        // EFAULT, and `attach_group` waits for the update and retries.
        Err(VfioError::Fault)
    }

    // ---- map / unmap ------------------------------------------------------

    /// `VFIO_IOMMU_MAP_DMA` after the ABI checks (argsz, unknown flags).
    pub fn map_dma(&self, iova: u64, vaddr: u64, size: u64, flags: u32) -> Result<()> {
        let mut st = self.lock();
        let Some(t) = st.iommu.as_mut() else {
            return Err(VfioError::Invalid("no IOMMU set"));
        };
        let set_vaddr = flags & MAP_FLAG_VADDR != 0;
        let prot = Prot {
            read: flags & MAP_FLAG_READ != 0,
            write: flags & MAP_FLAG_WRITE != 0,
        };
        let has_prot = prot.read || prot.write;
        if has_prot == set_vaddr {
            return Err(VfioError::Invalid("need exactly one of prot and VADDR"));
        }
        let pgsize = min_pgsize(t.pgsize_bitmap);
        if size == 0 || (size | iova | vaddr) & (pgsize - 1) != 0 {
            return Err(VfioError::Invalid("size zero or not page aligned"));
        }
        // 6.1's EINVAL (the conformance probe's `map_iova_wrap` and
        // `map_vaddr_wrap`); upstream answers EOVERFLOW since its fix for
        // mappings up to the addressable limit (docs/DESIGN.md).
        let (Some(last), Some(_)) = (iova.checked_add(size - 1), vaddr.checked_add(size - 1))
        else {
            return Err(VfioError::Invalid("address wraps"));
        };

        if set_vaddr {
            let Some(dma) = t.dmas.overlapping(iova, last) else {
                return Err(VfioError::NoEntry);
            };
            if !dma.vaddr_invalid || dma.iova != iova || dma.size != size {
                return Err(VfioError::Invalid(
                    "vaddr update must match an invalidated mapping",
                ));
            }
            if let Some(dma) = t.dmas.get_mut(iova) {
                dma.vaddr = vaddr;
                dma.vaddr_invalid = false;
            }
            t.vaddr_invalid_count = t.vaddr_invalid_count.saturating_sub(1);
            self.vaddr_valid.notify_all();
            return Ok(());
        }
        if t.dmas.overlapping(iova, last).is_some() {
            return Err(VfioError::Exists);
        }
        if t.dma_avail == 0 {
            return Err(VfioError::NoSpace);
        }
        if !t.iova_list.allows(iova, last) {
            return Err(VfioError::Invalid("IOVA outside the valid ranges"));
        }

        // CAP_IPC_LOCK is sampled once, at map time, and kept per mapping.
        let policy = self.mem.lock_policy();
        let mut dma = Dma {
            iova,
            size,
            vaddr,
            prot,
            vaddr_invalid: false,
            lock_cap: policy.cap_ipc_lock,
            iommu_mapped: false,
            pinned_vaddr: vaddr,
            locked_pages: 0,
            bitmap: None,
            ext_pins: PinTracker::new(),
        };
        if t.dirty_tracking {
            // Before pinning: nothing to undo (see dirty::check_bitmap_alloc).
            dirty::check_bitmap_alloc(size / pgsize)?;
        }
        // Without an IOMMU-backed domain nothing is pinned until a device asks.
        if !t.domains.is_empty() {
            let domains: Vec<Arc<dyn DomainOps>> =
                t.domains.iter().map(|d| d.ops.clone()).collect();
            dma.locked_pages = self.pin_and_map(&dma, &domains, policy)?;
            dma.iommu_mapped = true;
        }
        if t.dirty_tracking {
            dma.bitmap = Some(dirty::new_bitmap(size / pgsize));
        }
        // Checked above under the same lock, so the tree accepts it; should
        // it refuse, undo the pins rather than lose a mapping or a slot.
        if let Err(refused) = t.dmas.insert(dma) {
            self.release_dma(t, *refused.0);
            return Err(VfioError::Exists);
        }
        t.dma_avail -= 1;
        Ok(())
    }

    /// Charges, pins and maps `dma` into `domains`; returns the pages
    /// charged. All or nothing.
    fn pin_and_map(
        &self,
        dma: &Dma,
        domains: &[Arc<dyn DomainOps>],
        policy: LockPolicy,
    ) -> Result<u64> {
        // Pages already accounted for external pins (no IOMMU domain existed
        // when they were pinned) are not counted twice (type1 skips pages
        // on the vpfn list).
        let pages = page_pages(dma.size).saturating_sub(dma.locked_pages);
        // One accounting update for the whole mapping (seed 000), made before
        // pinning so that concurrent maps cannot both pass the limit.
        self.mem
            .account()
            .charge(pages, policy)
            .map_err(over_limit)?;
        // Bytes mapped from `dma.iova` (not an end address: a mapping may
        // end at 2^64).
        let mut mapped: u64 = 0;
        let mut iommu_error: Option<VfioError> = None;
        let pin_result = self.mem.pin(
            dma.vaddr,
            dma.size,
            dma.prot.write,
            &mut |run: PinnedRun| {
                let iova = dma.iova + (run.vaddr - dma.vaddr);
                for (i, d) in domains.iter().enumerate() {
                    if let Err(e) = d.map(iova, run.vaddr, run.len, dma.prot) {
                        for undo in &domains[..i] {
                            unmap_all_of(undo.as_ref(), iova, run.len);
                        }
                        iommu_error = Some(e.into());
                        return Err(MemError::Unreachable);
                    }
                }
                mapped = (iova - dma.iova) + run.len;
                Ok(())
            },
        );
        if let Err(e) = pin_result {
            if mapped > 0 {
                for d in domains {
                    unmap_all_of(d.as_ref(), dma.iova, mapped);
                    d.flush(dma.iova, mapped);
                }
            }
            self.mem.account().uncharge(pages);
            return Err(iommu_error.unwrap_or(VfioError::Memory(e)));
        }
        Ok(pages)
    }

    /// Unmaps, flushes (waiting out in-flight DMA), unpins and unaccounts a
    /// mapping, and removes it. Order matters: after this returns no device
    /// can reach the pages.
    fn remove_dma(&self, t: &mut Type1, iova: u64) -> Option<Dma> {
        let dma = t.dmas.remove(iova)?;
        let dma = self.release_dma(t, dma);
        if dma.vaddr_invalid {
            t.vaddr_invalid_count = t.vaddr_invalid_count.saturating_sub(1);
        }
        t.dma_avail = t.dma_avail.saturating_add(1);
        Some(dma)
    }

    /// Unmaps, flushes, unpins and unaccounts a mapping that is no longer
    /// (or never was) in the tree. Flush before unpin: once the pages are
    /// unpinned no IOTLB entry may still reach them.
    fn release_dma(&self, t: &Type1, mut dma: Dma) -> Dma {
        if dma.iommu_mapped {
            for d in &t.domains {
                unmap_all_of(d.ops.as_ref(), dma.iova, dma.size);
            }
            for d in &t.domains {
                d.ops.flush(dma.iova, dma.size);
            }
            self.mem.unpin(dma.pinned_vaddr, dma.size);
        }
        // External pins a device left behind (only on release paths: an
        // unmap notifies the devices first and fails if they keep pins):
        // one pass over the tracker, memory unpinned in runs.
        if !dma.ext_pins.is_empty() {
            for (page, n) in dma.ext_pins.runs() {
                self.mem.unpin(dma.vaddr + page * PAGE_SIZE, n * PAGE_SIZE);
            }
            dma.ext_pins.clear();
        }
        // One accounting update for the mapping and its external pins.
        self.mem.account().uncharge(dma.locked_pages);
        dma.locked_pages = 0;
        dma
    }

    /// `VFIO_IOMMU_UNMAP_DMA` after the ABI checks. Returns the bytes
    /// unmapped (or invalidated); on error nothing is written back.
    ///
    /// Mappings in the range that devices still pin externally are first
    /// announced to every registered device's `dma_unmap` callback with the
    /// container lock released (the devices unpin, which takes the lock),
    /// and the whole request is checked again, as type1's `goto again`
    /// does. A device that keeps its pins after [`UNMAP_NOTIFY_RETRIES`]
    /// further notifications makes the unmap fail with EBUSY with nothing
    /// removed (the kernel `BUG()`s there).
    pub fn unmap_dma(
        &self,
        iova: u64,
        size: u64,
        flags: u32,
        bitmap: Option<UserBitmap>,
    ) -> Result<u64> {
        let mut last_notified: Option<u64> = None;
        let mut retries = 0u32;
        loop {
            let mut st = self.lock();
            match self.unmap_dma_locked(&mut st, iova, size, flags, bitmap)? {
                UnmapStep::Done(unmapped) => return Ok(unmapped),
                UnmapStep::Notify(dma_iova, dma_size) => {
                    if last_notified == Some(dma_iova) {
                        retries += 1;
                        if retries > UNMAP_NOTIFY_RETRIES {
                            tracing::warn!(
                                iova = dma_iova,
                                size = dma_size,
                                "a device keeps external pins after {UNMAP_NOTIFY_RETRIES} unmap notifications"
                            );
                            return Err(VfioError::Busy(
                                "a device did not unpin the pages it pins in the range",
                            ));
                        }
                    } else {
                        last_notified = Some(dma_iova);
                        retries = 0;
                    }
                    let callbacks: Vec<DmaUnmapFn> = st
                        .external_devices
                        .iter()
                        .filter_map(|d| d.dma_unmap().cloned())
                        .collect();
                    drop(st);
                    for notify in callbacks {
                        notify(dma_iova, dma_size);
                    }
                }
            }
        }
    }

    /// One pass of [`Container::unmap_dma`] under the lock.
    fn unmap_dma_locked(
        &self,
        st: &mut State,
        iova: u64,
        size: u64,
        flags: u32,
        bitmap: Option<UserBitmap>,
    ) -> Result<UnmapStep> {
        let Some(t) = st.iommu.as_mut() else {
            return Err(VfioError::Invalid("no IOMMU set"));
        };
        let unmap_all = flags & UNMAP_FLAG_ALL != 0;
        let invalidate_vaddr = flags & UNMAP_FLAG_VADDR != 0;
        let pgsize = min_pgsize(t.pgsize_bitmap);

        if iova & (pgsize - 1) != 0 {
            return Err(VfioError::Invalid("unaligned iova"));
        }
        // The inclusive last byte of the range.
        let last = if unmap_all {
            if iova != 0 || size != 0 {
                return Err(VfioError::Invalid("UNMAP_ALL takes no range"));
            }
            u64::MAX
        } else {
            if size == 0 || size & (pgsize - 1) != 0 {
                return Err(VfioError::Invalid("bad size"));
            }
            // 6.1's EINVAL (the probe's `unmap_wrap`); upstream: EOVERFLOW.
            iova.checked_add(size - 1)
                .ok_or(VfioError::Invalid("range wraps"))?
        };
        let bitmap = if flags & UNMAP_FLAG_GET_DIRTY_BITMAP != 0 {
            match bitmap {
                Some(b) if t.dirty_tracking && b.pgsize == pgsize => Some(b),
                _ => {
                    return Err(VfioError::Invalid(
                        "dirty bitmap needs tracking and min pgsize",
                    ))
                }
            }
        } else {
            None
        };
        // Mediated devices cannot pin or rw safely while a vaddr is being
        // updated (later kernels refuse this with EBUSY too).
        if invalidate_vaddr && !t.emulated_groups.is_empty() {
            return Err(VfioError::Busy("vaddr invalidation with mediated devices"));
        }

        // v2 never bisects a mapping: the range must cover whole mappings.
        if t.v2 && !unmap_all {
            if let Some(d) = t.dmas.containing(iova) {
                if d.iova != iova {
                    return Err(VfioError::Invalid("unmap would bisect a mapping"));
                }
            }
            if let Some(d) = t.dmas.containing(last) {
                if d.last() != last {
                    return Err(VfioError::Invalid("unmap would bisect a mapping"));
                }
            }
        }

        let Some(first) = t.dmas.first_overlapping(iova, last) else {
            return Ok(UnmapStep::Done(0));
        };
        // Sums of mapping sizes wrap as the kernel's `size_t` does: only
        // mappings that together cover all 2^64 bytes can reach it.
        let mut unmapped: u64 = 0;
        // The mappings this request covers (v1 stops at one starting before
        // the range).
        let keys: Vec<u64> = t
            .dmas
            .keys_between(first, last)
            .take_while(|k| t.v2 || iova <= *k)
            .collect();

        if invalidate_vaddr {
            let mut touched = Vec::new();
            for key in keys {
                let Some(dma) = t.dmas.get_mut(key) else {
                    break;
                };
                // Beyond the kernel: external pins were taken at the old
                // address, so their mapping keeps it.
                let pinned = !dma.ext_pins.is_empty();
                if dma.vaddr_invalid || pinned {
                    // Roll back what this call invalidated.
                    for k in touched {
                        if let Some(d) = t.dmas.get_mut(k) {
                            d.vaddr_invalid = false;
                            t.vaddr_invalid_count -= 1;
                        }
                    }
                    return Err(if pinned {
                        VfioError::Busy("mapping has external pins")
                    } else {
                        VfioError::Invalid("vaddr already invalid")
                    });
                }
                dma.vaddr_invalid = true;
                t.vaddr_invalid_count += 1;
                unmapped = unmapped.wrapping_add(dma.size);
                touched.push(key);
            }
            return Ok(UnmapStep::Done(unmapped));
        }

        // Devices must let go of what they pin before anything is removed.
        if let Some(d) = keys
            .iter()
            .filter_map(|k| t.dmas.get(*k))
            .find(|d| !d.ext_pins.is_empty())
        {
            return Ok(UnmapStep::Notify(d.iova, d.size));
        }

        let pinned_dirty_all = t.num_non_pinned_groups > 0;
        let pgshift = pgsize.trailing_zeros();
        let domains: Vec<Arc<dyn DomainOps>> = t.domains.iter().map(|d| d.ops.clone()).collect();
        for key in keys {
            let Some(dma) = t.dmas.get(key) else { break };
            if let Some(b) = bitmap {
                let nbits = dma.size >> pgshift;
                let bits = self.dirty_bits(&domains, dma, pgshift, pinned_dirty_all);
                let bit_offset = (dma.iova - iova) >> pgshift;
                dirty::copy_to_user(self.mem.as_ref(), b.data, &bits, nbits, bit_offset)?;
            }
            unmapped = unmapped.wrapping_add(dma.size);
            self.remove_dma(t, key);
        }
        Ok(UnmapStep::Done(unmapped))
    }

    // ---- info and dirty tracking -----------------------------------------

    /// `VFIO_IOMMU_GET_INFO` contents.
    pub fn info(&self) -> Result<Type1Info> {
        let st = self.lock();
        let Some(t) = st.iommu.as_ref() else {
            return Err(VfioError::Invalid("no IOMMU set"));
        };
        Ok(Type1Info {
            pgsize_bitmap: t.pgsize_bitmap,
            dma_avail: t.dma_avail,
            iova_ranges: t.iova_list.ranges().to_vec(),
            migration_pgsize_bitmap: min_pgsize(t.pgsize_bitmap),
            max_dirty_bitmap_size: DIRTY_BITMAP_SIZE_MAX,
        })
    }

    /// Is the container type1 v2 (or nesting)?
    pub fn is_v2(&self) -> Option<bool> {
        self.lock().iommu.as_ref().map(|t| t.v2)
    }

    /// Checks the relations listed in this module's "Invariants" and
    /// describes the first one broken. Costs a walk over every mapping (and
    /// its external pins): for tests, fuzzers and debugging, not hot paths.
    pub fn check_invariants(&self) -> std::result::Result<(), BrokenInvariant> {
        let st = self.lock();
        let broken = |what: String| Err(BrokenInvariant(what));
        let Some(t) = st.iommu.as_ref() else {
            return Ok(());
        };
        if st.groups.is_empty() {
            return broken("an IOMMU is set on a container with no group".into());
        }
        let limit = self.cfg.dma_entry_limit;
        if u64::from(t.dma_avail) + t.dmas.len() as u64 != u64::from(limit) {
            return broken(format!(
                "dma_avail {} + {} mappings != dma_entry_limit {limit}",
                t.dma_avail,
                t.dmas.len()
            ));
        }
        let mut prev_last: Option<u64> = None;
        let mut invalid = 0u32;
        for d in t.dmas.iter() {
            let at = d.iova;
            if d.size == 0 || (d.iova | d.size) & (PAGE_SIZE - 1) != 0 {
                return broken(format!(
                    "mapping {at:#x} size {:#x} empty or unaligned",
                    d.size
                ));
            }
            let Some(last) = d.iova.checked_add(d.size - 1) else {
                return broken(format!("mapping {at:#x} size {:#x} wraps", d.size));
            };
            if prev_last.is_some_and(|p| p >= d.iova) {
                return broken(format!("mapping {at:#x} overlaps the one before"));
            }
            prev_last = Some(last);
            if !t.iova_list.allows(d.iova, last) {
                return broken(format!("mapping {at:#x}..={last:#x} outside the IOVA list"));
            }
            if d.vaddr_invalid {
                invalid += 1;
                if !d.ext_pins.is_empty() {
                    return broken(format!(
                        "mapping {at:#x} has external pins and an invalid vaddr"
                    ));
                }
            }
            if d.iommu_mapped == t.domains.is_empty() {
                return broken(format!(
                    "mapping {at:#x} iommu_mapped={} with {} domains",
                    d.iommu_mapped,
                    t.domains.len()
                ));
            }
            let want_locked = if d.iommu_mapped {
                d.size / PAGE_SIZE
            } else {
                d.ext_pins.pinned_pages()
            };
            if d.locked_pages != want_locked {
                return broken(format!(
                    "mapping {at:#x} accounts {} locked pages, expected {want_locked}",
                    d.locked_pages
                ));
            }
            if d.bitmap.is_some() != t.dirty_tracking {
                return broken(format!(
                    "mapping {at:#x} has a dirty bitmap: {}, tracking: {}",
                    d.bitmap.is_some(),
                    t.dirty_tracking
                ));
            }
        }
        if invalid != t.vaddr_invalid_count {
            return broken(format!(
                "vaddr_invalid_count {} but {invalid} mappings have an invalid vaddr",
                t.vaddr_invalid_count
            ));
        }
        let attached: Vec<&AttachedGroup> = t
            .domains
            .iter()
            .flat_map(|d| d.groups.iter())
            .chain(t.emulated_groups.iter())
            .collect();
        let non_pinned = attached
            .iter()
            .filter(|g| !g.pinned_page_dirty_scope)
            .count() as u64;
        if non_pinned != u64::from(t.num_non_pinned_groups) {
            return broken(format!(
                "num_non_pinned_groups {} but {non_pinned} groups lack the pinned-page scope",
                t.num_non_pinned_groups
            ));
        }
        if t.domains.iter().any(|d| d.groups.is_empty()) {
            return broken("a domain without groups".into());
        }
        let mut in_type1: Vec<u32> = attached.iter().map(|g| g.group.id).collect();
        let mut in_container: Vec<u32> = st.groups.iter().map(|g| g.id).collect();
        in_type1.sort_unstable();
        in_container.sort_unstable();
        if in_type1 != in_container {
            return broken(format!(
                "groups attached to type1 {in_type1:?} != the container's {in_container:?}"
            ));
        }
        Ok(())
    }

    /// `VFIO_IOMMU_DIRTY_PAGES_FLAG_START`. Starting twice is a no-op.
    pub fn dirty_start(&self) -> Result<()> {
        let mut st = self.lock();
        let Some(t) = st.iommu.as_mut() else {
            return Err(VfioError::Invalid("no IOMMU set"));
        };
        if !t.v2 {
            return Err(VfioError::Access("dirty tracking needs type1v2"));
        }
        if t.dirty_tracking {
            return Ok(());
        }
        let pgsize = min_pgsize(t.pgsize_bitmap);
        // Refuse before allocating any bitmap (see dirty::check_bitmap_alloc).
        for dma in t.dmas.iter() {
            dirty::check_bitmap_alloc(dma.size / pgsize)?;
        }
        for dma in t.dmas.iter_mut() {
            // Pages pinned externally count as dirty from the start
            // (type1's `vfio_dma_populate_bitmap`).
            dma.bitmap = Some(pinned_bitmap(dma, pgsize));
        }
        if self.cfg.precise_dirty {
            // Start from clean IOMMU dirty bits: only later writes count.
            for d in &t.domains {
                for dma in t.dmas.iter() {
                    d.ops.read_and_clear_dirty(dma.iova, dma.size, &mut |_| {});
                }
            }
        }
        t.dirty_tracking = true;
        Ok(())
    }

    /// `VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP`. Stopping twice is a no-op.
    pub fn dirty_stop(&self) -> Result<()> {
        let mut st = self.lock();
        let Some(t) = st.iommu.as_mut() else {
            return Err(VfioError::Invalid("no IOMMU set"));
        };
        if !t.v2 {
            return Err(VfioError::Access("dirty tracking needs type1v2"));
        }
        if t.dirty_tracking {
            t.dirty_tracking = false;
            for dma in t.dmas.iter_mut() {
                dma.bitmap = None;
            }
        }
        Ok(())
    }

    /// `VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP` after the ABI checks: writes
    /// the dirty bits of `[iova, iova + size)` to the user bitmap.
    pub fn dirty_get_bitmap(&self, iova: u64, size: u64, bitmap: UserBitmap) -> Result<()> {
        let mut st = self.lock();
        let Some(t) = st.iommu.as_mut() else {
            return Err(VfioError::Invalid("no IOMMU set"));
        };
        if !t.v2 {
            return Err(VfioError::Access("dirty tracking needs type1v2"));
        }
        let pgsize = min_pgsize(t.pgsize_bitmap);
        if bitmap.pgsize != pgsize {
            return Err(VfioError::Invalid(
                "bitmap pgsize must be the minimum IOMMU page size",
            ));
        }
        if iova & (pgsize - 1) != 0 || size == 0 || size & (pgsize - 1) != 0 {
            return Err(VfioError::Invalid("unaligned range"));
        }
        if !t.dirty_tracking {
            return Err(VfioError::Invalid("dirty tracking not started"));
        }
        let Some(last) = iova.checked_add(size - 1) else {
            return Err(VfioError::Invalid("range wraps"));
        };
        // The range must not bisect a mapping.
        if let Some(d) = t.dmas.containing(iova) {
            if d.iova != iova {
                return Err(VfioError::Invalid("range bisects a mapping"));
            }
        }
        if let Some(d) = t.dmas.containing(last) {
            if d.last() != last {
                return Err(VfioError::Invalid("range bisects a mapping"));
            }
        }
        let pgshift = pgsize.trailing_zeros();
        let all_dirty = t.num_non_pinned_groups > 0;
        let domains: Vec<Arc<dyn DomainOps>> = t.domains.iter().map(|d| d.ops.clone()).collect();
        for key in t.dmas.keys_starting_in(iova, last) {
            let Some(dma) = t.dmas.get_mut(key) else {
                continue;
            };
            let nbits = dma.size >> pgshift;
            let bits = self.dirty_bits(&domains, dma, pgshift, all_dirty);
            let bit_offset = (dma.iova - iova) >> pgshift;
            let res = dirty::copy_to_user(self.mem.as_ref(), bitmap.data, &bits, nbits, bit_offset);
            // Reported pages start clean again, except those still pinned
            // externally, which stay dirty (type1 re-populates them).
            dma.bitmap = Some(pinned_bitmap(dma, pgsize));
            res?;
        }
        Ok(())
    }

    /// The dirty bits to report for `dma`: its own bitmap (pages dirtied
    /// through the pinning interfaces) plus, while a group that can write
    /// memory directly is attached, every mapped page (type1) or, in precise
    /// mode, the pages whose IOMMU dirty bit is set (cleared as read).
    fn dirty_bits(
        &self,
        domains: &[Arc<dyn DomainOps>],
        dma: &Dma,
        pgshift: u32,
        direct_writers: bool,
    ) -> Vec<u64> {
        let nbits = dma.size >> pgshift;
        let mut bits = dma
            .bitmap
            .clone()
            .unwrap_or_else(|| dirty::new_bitmap(nbits));
        if direct_writers && dma.iommu_mapped {
            if self.cfg.precise_dirty {
                for d in domains {
                    d.read_and_clear_dirty(dma.iova, dma.size, &mut |page_iova| {
                        dirty::set_bit(&mut bits, (page_iova - dma.iova) >> pgshift);
                    });
                }
            } else {
                dirty::set_all(&mut bits, nbits);
            }
        }
        bits
    }

    // ---- idiomatic API for Rust callers -----------------------------------

    /// Maps `size` bytes of user memory at `vaddr` to `iova` with `prot`.
    pub fn map(&self, iova: u64, vaddr: u64, size: u64, prot: Prot) -> Result<()> {
        let flags = (if prot.read { MAP_FLAG_READ } else { 0 })
            | (if prot.write { MAP_FLAG_WRITE } else { 0 });
        self.map_dma(iova, vaddr, size, flags)
    }

    /// Unmaps the mappings in `[iova, iova + size)`; returns the bytes unmapped.
    pub fn unmap(&self, iova: u64, size: u64) -> Result<u64> {
        self.unmap_dma(iova, size, 0, None)
    }

    /// Unmaps everything; returns the bytes unmapped.
    pub fn unmap_all(&self) -> Result<u64> {
        self.unmap_dma(0, 0, UNMAP_FLAG_ALL, None)
    }

    /// Marks the vaddr of the mappings in `[iova, iova + size)` invalid
    /// (live update); DMA keeps working. Returns the bytes invalidated.
    pub fn invalidate_vaddr(&self, iova: u64, size: u64) -> Result<u64> {
        self.unmap_dma(iova, size, UNMAP_FLAG_VADDR, None)
    }

    /// Gives an invalidated mapping its new user address.
    pub fn update_vaddr(&self, iova: u64, vaddr: u64, size: u64) -> Result<()> {
        self.map_dma(iova, vaddr, size, MAP_FLAG_VADDR)
    }

    // ---- introspection ----------------------------------------------------

    /// A serialisable view of the container for `inspect` and tests.
    pub fn snapshot(&self) -> ContainerSnapshot {
        let st = self.lock();
        let groups = st.groups.iter().map(|g| g.id).collect();
        let Some(t) = st.iommu.as_ref() else {
            return ContainerSnapshot {
                id: self.id,
                iommu: None,
                groups,
                mappings: Vec::new(),
                domains: Vec::new(),
                iova_ranges: Vec::new(),
                dma_avail: 0,
                dirty_tracking: false,
                locked_pages: self.mem.account().locked_pages(),
                pins: self.mem.stats(),
            };
        };
        ContainerSnapshot {
            id: self.id,
            iommu: Some(if t.nesting {
                "type1-nesting"
            } else if t.v2 {
                "type1v2"
            } else {
                "type1"
            }),
            groups,
            mappings: t
                .dmas
                .iter()
                .map(|d| MappingView {
                    iova: d.iova,
                    size: d.size,
                    vaddr: d.vaddr,
                    read: d.prot.read,
                    write: d.prot.write,
                    vaddr_invalid: d.vaddr_invalid,
                    iommu_mapped: d.iommu_mapped,
                    locked_pages: d.locked_pages,
                    external_pinned_pages: d.ext_pins.pinned_pages(),
                })
                .collect(),
            domains: t
                .domains
                .iter()
                .map(|d| {
                    let (n4k, n2m, n1g) = d.ops.leaf_counts();
                    DomainView {
                        id: d.ops.id(),
                        unit: d.unit.name(),
                        groups: d.groups.iter().map(|g| g.group.id).collect(),
                        enforce_cache_coherency: d.enforce_cache_coherency,
                        pgsize_bitmap: d.ops.pgsize_bitmap(),
                        leaf_entries_4k: n4k,
                        leaf_entries_2m: n2m,
                        leaf_entries_1g: n1g,
                    }
                })
                .collect(),
            iova_ranges: t.iova_list.ranges().to_vec(),
            dma_avail: t.dma_avail,
            dirty_tracking: t.dirty_tracking,
            locked_pages: self.mem.account().locked_pages(),
            pins: self.mem.stats(),
        }
    }
}

/// A relation of the type1 state that does not hold, as
/// [`Container::check_invariants`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenInvariant(pub String);

impl std::fmt::Display for BrokenInvariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "broken type1 invariant: {}", self.0)
    }
}

impl std::error::Error for BrokenInvariant {}

/// What one locked pass of an unmap decided.
enum UnmapStep {
    /// Finished: the bytes unmapped (or invalidated).
    Done(u64),
    /// The mapping `(iova, size)` is pinned externally: notify the devices
    /// and try again.
    Notify(u64, u64),
}

/// A mapping as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MappingView {
    pub iova: u64,
    pub size: u64,
    pub vaddr: u64,
    pub read: bool,
    pub write: bool,
    pub vaddr_invalid: bool,
    pub iommu_mapped: bool,
    pub locked_pages: u64,
    /// Pages pinned through the external API (mediated devices).
    pub external_pinned_pages: u64,
}

/// A domain as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DomainView {
    pub id: u32,
    pub unit: String,
    pub groups: Vec<u32>,
    pub enforce_cache_coherency: bool,
    pub pgsize_bitmap: u64,
    pub leaf_entries_4k: u64,
    pub leaf_entries_2m: u64,
    pub leaf_entries_1g: u64,
}

/// The state of a container.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContainerSnapshot {
    pub id: u64,
    pub iommu: Option<&'static str>,
    pub groups: Vec<u32>,
    pub mappings: Vec<MappingView>,
    pub domains: Vec<DomainView>,
    pub iova_ranges: Vec<IovaRange>,
    pub dma_avail: u32,
    pub dirty_tracking: bool,
    pub locked_pages: u64,
    pub pins: crate::memory::PinStats,
}

fn attach_devices(
    unit: &Arc<dyn IommuUnit>,
    group: &Group,
    domain: &Arc<dyn DomainOps>,
) -> Result<()> {
    let rids: Vec<u16> = group.devices.iter().filter_map(|d| d.rid).collect();
    for (i, rid) in rids.iter().enumerate() {
        if let Err(e) = unit.attach_device(*rid, domain) {
            for done in &rids[..i] {
                unit.detach_device(*done);
            }
            return Err(e.into());
        }
    }
    Ok(())
}

fn detach_devices(unit: &Arc<dyn IommuUnit>, group: &Group) {
    // A domain may be shared by groups behind different units: each group
    // leaves through its own unit, not the one the domain was made on.
    let unit = match &group.kind {
        GroupKind::Iommu(own) => own,
        GroupKind::Emulated => unit,
    };
    for rid in group.devices.iter().filter_map(|d| d.rid) {
        unit.detach_device(rid);
    }
}

/// Removes every translation of `[iova, iova + size)`, looping over
/// `iommu_unmap`'s partial results.
fn unmap_all_of(domain: &dyn DomainOps, iova: u64, size: u64) {
    let mut done = 0u64;
    while done < size {
        let n = domain.unmap(iova + done, size - done);
        if n == 0 {
            // A hole: skip a page and keep going (mapped pieces may follow).
            done += PAGE_SIZE;
        } else {
            done += n;
        }
    }
}

/// A fresh dirty bitmap of `dma` with its externally pinned pages set.
fn pinned_bitmap(dma: &Dma, pgsize: u64) -> Vec<u64> {
    let mut bits = dirty::new_bitmap(dma.size / pgsize);
    let pgshift = pgsize.trailing_zeros();
    for page in dma.ext_pins.pages() {
        dirty::set_bit(&mut bits, (page * PAGE_SIZE) >> pgshift);
    }
    bits
}

fn update_pgsize_bitmap(t: &mut Type1) {
    let mut bitmap = u64::MAX;
    for d in &t.domains {
        bitmap &= d.ops.pgsize_bitmap();
    }
    // Sizes below the CPU page cannot be pinned: fold them into PAGE_SIZE.
    if bitmap & (PAGE_SIZE - 1) != 0 {
        bitmap &= !(PAGE_SIZE - 1);
        bitmap |= PAGE_SIZE;
    }
    if t.domains.is_empty() {
        bitmap = !(PAGE_SIZE - 1);
    }
    t.pgsize_bitmap = bitmap;
}

/// Would a new aperture leave an existing mapping outside? (type1's
/// `vfio_iommu_aper_conflict`, checked against the current list's bounds.)
fn aperture_conflict(t: &Type1, start: u64, end: u64) -> bool {
    let (Some(first), Some(last)) = (t.iova_list.first_start(), t.iova_list.last_end()) else {
        return false;
    };
    if start > last || end < first {
        return true;
    }
    if start > first && t.dmas.overlapping(first, start - 1).is_some() {
        return true;
    }
    if end < last && t.dmas.overlapping(end + 1, last).is_some() {
        return true;
    }
    false
}

/// Does a reserved region overlap an existing mapping?
fn resv_conflict(t: &Type1, resv: &[ResvRegion]) -> bool {
    resv.iter().any(|r| {
        r.kind != crate::iommu::ResvKind::DirectRelaxable
            && t.dmas.overlapping(r.start, r.end).is_some()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iommu::ResvKind;
    use crate::testing::{iommu_group, FakeUnit, VecMemory};
    use std::sync::atomic::Ordering as AO;

    const BASE: u64 = 0x7000_0000_0000;
    const PG: u64 = PAGE_SIZE;
    const RW: u32 = MAP_FLAG_READ | MAP_FLAG_WRITE;

    fn setup(v2: bool) -> (Arc<Container>, Arc<VecMemory>, Arc<FakeUnit>, Arc<Group>) {
        let mem = VecMemory::new(BASE, 256 * PG as usize);
        let unit = FakeUnit::new(39);
        let group = Arc::new(iommu_group(3, 0x18, unit.clone(), Vec::new()));
        let c = Container::new(ContainerConfig::default(), mem.clone());
        c.attach_group(&group).unwrap();
        check(&c);
        c.set_iommu(if v2 { TYPE1V2_IOMMU } else { TYPE1_IOMMU })
            .unwrap();
        (c, mem, unit, group)
    }

    /// The invariants hold: called after every step that changes state.
    fn check(c: &Container) {
        if let Err(broken) = c.check_invariants() {
            panic!("{broken}");
        }
    }

    fn errno<T: std::fmt::Debug>(r: Result<T>) -> i32 {
        r.map(|_| 0).unwrap_or_else(|e| e.errno())
    }

    /// Each relation, broken on purpose, is reported (and named).
    #[test]
    fn check_invariants_reports_each_broken_relation() {
        let (c, ..) = setup(true);
        c.map_dma(0x10_0000, BASE, 4 * PG, RW).unwrap();
        check(&c);
        type Breaker = fn(&mut Type1);
        let breakers: [(&str, Breaker); 5] = [
            ("dma_avail", |t| t.dma_avail -= 1),
            ("vaddr_invalid_count", |t| t.vaddr_invalid_count += 1),
            ("num_non_pinned_groups", |t| t.num_non_pinned_groups += 1),
            ("locked pages", |t| {
                t.dmas.get_mut(0x10_0000).unwrap().locked_pages += 1;
            }),
            ("dirty bitmap", |t| t.dirty_tracking = true),
        ];
        for (what, breaker) in breakers {
            let saved = {
                let mut st = c.lock();
                let t = st.iommu.as_mut().unwrap();
                let saved = (
                    t.dma_avail,
                    t.vaddr_invalid_count,
                    t.num_non_pinned_groups,
                    t.dirty_tracking,
                );
                breaker(t);
                saved
            };
            let err = c.check_invariants().unwrap_err();
            assert!(err.0.contains(what), "{what}: {err}");
            let mut st = c.lock();
            let t = st.iommu.as_mut().unwrap();
            (
                t.dma_avail,
                t.vaddr_invalid_count,
                t.num_non_pinned_groups,
                t.dirty_tracking,
            ) = saved;
            t.dmas.get_mut(0x10_0000).unwrap().locked_pages = 4;
            drop(st);
            check(&c);
        }
    }

    #[test]
    fn set_iommu_rules() {
        let mem = VecMemory::new(BASE, 16 * PG as usize);
        let c = Container::new(ContainerConfig::default(), mem);
        assert_eq!(errno(c.set_iommu(TYPE1V2_IOMMU)), libc::EINVAL);
        check(&c);
        assert_eq!(c.check_extension(TYPE1_IOMMU), 1);
        assert_eq!(c.check_extension(TYPE1V2_IOMMU), 1);
        assert_eq!(c.check_extension(TYPE1_NESTING_IOMMU), 1);
        assert_eq!(c.check_extension(UNMAP_ALL), 1);
        assert_eq!(c.check_extension(UPDATE_VADDR), 0);
        assert_eq!(c.check_extension(DMA_CC_IOMMU), 0);
        assert_eq!(c.check_extension(SPAPR_TCE_IOMMU), 0);
        assert_eq!(c.check_extension(NOIOMMU_IOMMU), 0);
        let unit = FakeUnit::new(39);
        let g = Arc::new(iommu_group(3, 0x18, unit, Vec::new()));
        c.attach_group(&g).unwrap();
        check(&c);
        assert_eq!(errno(c.set_iommu(SPAPR_TCE_IOMMU)), libc::ENODEV);
        check(&c);
        assert_eq!(errno(c.set_iommu(TYPE1V2_IOMMU)), 0);
        check(&c);
        assert_eq!(errno(c.set_iommu(TYPE1V2_IOMMU)), libc::EINVAL);
        check(&c);
        assert_eq!(c.check_extension(UPDATE_VADDR), 1);
        // The fake unit does not enforce coherency.
        assert_eq!(c.check_extension(DMA_CC_IOMMU), 0);
    }

    #[test]
    fn info_reports_reference_iova_list() {
        let (c, ..) = setup(true);
        let info = c.info().unwrap();
        assert_eq!(info.pgsize_bitmap, 0x4020_1000);
        assert_eq!(info.dma_avail, 65535);
        assert_eq!(
            info.iova_ranges,
            vec![
                IovaRange {
                    start: 0,
                    end: 0xfedf_ffff
                },
                IovaRange {
                    start: 0xfef0_0000,
                    end: 0x7f_ffff_ffff
                }
            ]
        );
    }

    #[test]
    fn map_pins_maps_and_accounts_unmap_reverses() {
        let (c, mem, unit, _) = setup(true);
        c.map_dma(0x10_0000, BASE, 4 * PG, RW).unwrap();
        check(&c);
        assert_eq!(mem.account().locked_pages(), 4);
        assert_eq!(mem.account().updates(), 1);
        assert_eq!(mem.total_pins(), 4);
        let d = unit.domains.lock().unwrap()[0].clone();
        assert_eq!(d.iova_to_phys(0x10_1234), Some(BASE + 0x1234));
        assert_eq!(c.unmap_dma(0x10_0000, 4 * PG, 0, None).unwrap(), 4 * PG);
        check(&c);
        assert_eq!(mem.account().locked_pages(), 0);
        assert_eq!(mem.account().updates(), 2);
        assert_eq!(mem.total_pins(), 0);
        assert_eq!(d.iova_to_phys(0x10_1234), None);
        assert_eq!(c.info().unwrap().dma_avail, 65535);
    }

    #[test]
    fn failed_map_leaves_nothing() {
        let (c, mem, unit, _) = setup(true);
        // Pinning fails at the third page.
        mem.fail_pin_after.store(2, AO::SeqCst);
        assert_eq!(errno(c.map_dma(0x10_0000, BASE, 4 * PG, RW)), libc::EFAULT);
        check(&c);
        assert_eq!(mem.total_pins(), 0);
        assert_eq!(mem.account().locked_pages(), 0);
        let d = unit.domains.lock().unwrap()[0].clone();
        assert!(d.pages.lock().unwrap().is_empty());
        assert!(c.snapshot().mappings.is_empty());
        assert_eq!(c.info().unwrap().dma_avail, 65535);
        mem.fail_pin_after.store(u64::MAX, AO::SeqCst);
        // The IOMMU refuses the third page.
        d.fail_map_after.store(2, AO::SeqCst);
        assert_eq!(errno(c.map_dma(0x10_0000, BASE, 4 * PG, RW)), libc::ENOMEM);
        check(&c);
        assert_eq!(mem.total_pins(), 0);
        assert!(d.pages.lock().unwrap().is_empty());
        assert_eq!(mem.account().locked_pages(), 0);
    }

    #[test]
    fn accounting_limit_enomem_and_double_count() {
        let (c, mem, ..) = setup(true);
        *mem.policy.lock().unwrap() = LockPolicy {
            cap_ipc_lock: false,
            limit_pages: 32,
        };
        c.map_dma(0x10_0000, BASE, 16 * PG, RW).unwrap();
        check(&c);
        c.map_dma(0x20_0000, BASE, 16 * PG, RW).unwrap(); // same pages count again
        assert_eq!(mem.account().locked_pages(), 32);
        assert_eq!(
            errno(c.map_dma(0x30_0000, BASE + 16 * PG, PG, RW)),
            libc::ENOMEM
        );
        assert_eq!(mem.account().locked_pages(), 32);
        assert_eq!(mem.pin_count(BASE), 2);
        c.unmap_dma(0, 0, UNMAP_FLAG_ALL, None).unwrap();
        check(&c);
        assert_eq!(mem.account().locked_pages(), 0);
        assert_eq!(mem.total_pins(), 0);
    }

    #[test]
    fn attach_conflicting_reserved_region_is_refused_and_changes_nothing() {
        let (c, mem, _unit, _) = setup(true);
        c.map_dma(0x4000_0000, BASE, 2 * PG, RW).unwrap();
        check(&c);
        let before = c.info().unwrap();
        let unit2 = FakeUnit::new(39);
        let g2 = Arc::new(iommu_group(
            7,
            0x20,
            unit2.clone(),
            vec![ResvRegion {
                start: 0x4000_1000,
                end: 0x4000_1fff,
                kind: ResvKind::Reserved,
            }],
        ));
        assert_eq!(errno(c.attach_group(&g2)), libc::EINVAL);
        check(&c);
        assert_eq!(c.info().unwrap(), before);
        assert_eq!(c.group_count(), 1);
        assert_eq!(unit2.domain_of(0x20), None);
        assert_eq!(mem.total_pins(), 2);
    }

    #[test]
    fn attach_splits_list_and_detach_restores_it() {
        let (c, _mem, unit, _) = setup(true);
        let g2 = Arc::new(iommu_group(
            7,
            0x20,
            unit.clone(),
            vec![ResvRegion {
                start: 0x8000_0000,
                end: 0x8fff_ffff,
                kind: ResvKind::Reserved,
            }],
        ));
        let before = c.info().unwrap().iova_ranges;
        c.attach_group(&g2).unwrap();
        check(&c);
        let during = c.info().unwrap().iova_ranges;
        assert_eq!(
            during,
            vec![
                IovaRange {
                    start: 0,
                    end: 0x7fff_ffff
                },
                IovaRange {
                    start: 0x9000_0000,
                    end: 0xfedf_ffff
                },
                IovaRange {
                    start: 0xfef0_0000,
                    end: 0x7f_ffff_ffff
                }
            ]
        );
        // Same unit, same coherency: the domain is shared.
        assert_eq!(unit.domain_of(0x18), unit.domain_of(0x20));
        assert_eq!(c.snapshot().domains.len(), 1);
        assert_eq!(errno(c.map_dma(0x8000_0000, BASE, PG, RW)), libc::EINVAL);
        check(&c);
        c.detach_group(7);
        check(&c);
        assert_eq!(c.info().unwrap().iova_ranges, before);
        assert_eq!(unit.domain_of(0x20), None);
        assert_eq!(errno(c.map_dma(0x8000_0000, BASE, PG, RW)), 0);
        check(&c);
    }

    #[test]
    fn narrower_aperture_conflict_and_second_domain_replay() {
        let (c, mem, _unit, _) = setup(true);
        c.map_dma(0x40_0000_0000, BASE, PG, RW).unwrap(); // above 2^36
        let narrow = FakeUnit::new(36);
        let g2 = Arc::new(iommu_group(8, 0x28, narrow.clone(), Vec::new()));
        assert_eq!(errno(c.attach_group(&g2)), libc::EINVAL);
        check(&c);
        c.unmap_dma(0x40_0000_0000, PG, 0, None).unwrap();
        check(&c);
        c.map_dma(0x10_0000, BASE, 2 * PG, RW).unwrap();
        check(&c);
        // A unit that refuses the existing 39-bit domain gets its own domain,
        // and existing mappings are replayed into it without pinning again.
        c.attach_group(&g2).unwrap();
        check(&c);
        let snap = c.snapshot();
        assert_eq!(snap.domains.len(), 2);
        assert_eq!(snap.iova_ranges.last().unwrap().end, (1 << 36) - 1);
        let d2 = narrow.domains.lock().unwrap().last().unwrap().clone();
        assert_eq!(d2.iova_to_phys(0x10_1000), Some(BASE + PG));
        assert_eq!(mem.total_pins(), 2);
        assert_eq!(mem.account().locked_pages(), 2);
        c.detach_group(8);
        check(&c);
        assert_eq!(c.snapshot().domains.len(), 1);
        assert_eq!(
            c.info().unwrap().iova_ranges.last().unwrap().end,
            (1 << 39) - 1
        );
        assert!(d2.pages.lock().unwrap().is_empty());
        assert_eq!(mem.total_pins(), 2);
    }

    #[test]
    fn failure_in_replay_rolls_back_attach() {
        let (c, mem, _unit, _) = setup(true);
        c.map_dma(0x10_0000, BASE, 2 * PG, RW).unwrap();
        check(&c);
        c.map_dma(0x20_0000, BASE + 4 * PG, 2 * PG, RW).unwrap();
        check(&c);
        let before = c.info().unwrap();
        let narrow = FakeUnit::new(36);
        // The new domain accepts one map call, then fails.
        narrow.fail_map_after.store(1, AO::SeqCst);
        let g2 = Arc::new(iommu_group(8, 0x28, narrow.clone(), Vec::new()));
        assert_eq!(errno(c.attach_group(&g2)), libc::ENOMEM);
        check(&c);
        assert_eq!(c.info().unwrap(), before);
        assert_eq!(c.snapshot().domains.len(), 1);
        assert_eq!(narrow.domain_of(0x28), None);
        let d2 = narrow.domains.lock().unwrap()[0].clone();
        assert!(d2.pages.lock().unwrap().is_empty());
        assert_eq!(mem.total_pins(), 4);
        assert_eq!(mem.account().locked_pages(), 4);
    }

    #[test]
    fn last_group_detach_releases_everything() {
        let (c, mem, unit, _) = setup(true);
        c.map_dma(0x10_0000, BASE, 8 * PG, RW).unwrap();
        check(&c);
        c.detach_group(3);
        check(&c);
        assert!(!c.iommu_set());
        assert_eq!(mem.total_pins(), 0);
        assert_eq!(mem.account().locked_pages(), 0);
        assert_eq!(unit.domain_of(0x18), None);
    }

    #[test]
    fn v1_unmap_semantics() {
        let (c, ..) = setup(false);
        c.map_dma(0x10_0000, BASE, 4 * PG, RW).unwrap();
        check(&c);
        assert_eq!(c.unmap_dma(0x10_1000, PG, 0, None).unwrap(), 0);
        check(&c);
        assert_eq!(c.unmap_dma(0x10_0000, PG, 0, None).unwrap(), 4 * PG);
        check(&c);
        assert_eq!(errno(c.dirty_start()), libc::EACCES);
        check(&c);
    }

    #[test]
    fn emulated_only_container_records_without_pinning() {
        let mem = VecMemory::new(BASE, 16 * PG as usize);
        let c = Container::new(ContainerConfig::default(), mem.clone());
        let g = Arc::new(Group {
            id: 9,
            kind: GroupKind::Emulated,
            devices: Vec::new(),
            extra_reserved: Vec::new(),
        });
        c.attach_group(&g).unwrap();
        check(&c);
        c.set_iommu(TYPE1V2_IOMMU).unwrap();
        check(&c);
        assert!(c.info().unwrap().iova_ranges.is_empty());
        assert_eq!(c.check_extension(UPDATE_VADDR), 0);
        assert_eq!(c.check_extension(DMA_CC_IOMMU), 1);
        // Any IOVA is valid with an empty list.
        c.map_dma(0xfee0_0000, BASE, 2 * PG, RW).unwrap();
        check(&c);
        assert_eq!(mem.total_pins(), 0);
        assert_eq!(mem.account().locked_pages(), 0);
        // An IOMMU-backed group now conflicts (MSI window mapped).
        let unit = FakeUnit::new(39);
        let g2 = Arc::new(iommu_group(3, 0x18, unit, Vec::new()));
        assert_eq!(errno(c.attach_group(&g2)), libc::EINVAL);
        check(&c);
        c.unmap_dma(0, 0, UNMAP_FLAG_ALL, None).unwrap();
        check(&c);
        c.map_dma(0x10_0000, BASE, 2 * PG, RW).unwrap();
        check(&c);
        c.attach_group(&g2).unwrap();
        check(&c);
        // Replay pinned and accounted the recorded mapping.
        assert_eq!(mem.total_pins(), 2);
        assert_eq!(mem.account().locked_pages(), 2);
        // The IOMMU group leaves; the emulated group remains: unpinned,
        // unaccounted, still recorded.
        c.detach_group(3);
        check(&c);
        assert_eq!(mem.total_pins(), 0);
        assert_eq!(mem.account().locked_pages(), 0);
        assert_eq!(c.snapshot().mappings.len(), 1);
    }
}
