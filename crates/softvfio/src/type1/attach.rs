//! `VFIO_SET_IOMMU`, group attach and detach: domains, replay of the
//! existing mappings into a new domain, the IOVA list, release.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state::*;
use crate::container::*;
use crate::dirty::{self};
use crate::dma::DmaTree;
use crate::error::{Result, VfioError};
use crate::iommu::{DomainOps, IommuUnit, ResvRegion};
use crate::iova::IovaList;
use crate::memory::{LockPolicy, PAGE_SIZE};
use crate::platform::{Group, GroupKind};

impl Container {
    /// `VFIO_SET_IOMMU`.
    pub fn set_iommu(&self, kind: impl Into<IommuType>) -> Result<()> {
        let kind = kind.into();
        let mut st = self.lock();
        // Only a container holding a group may enable an IOMMU, and only once.
        if st.groups.is_empty() || st.iommu.is_some() {
            return Err(VfioError::Invalid("no group attached or IOMMU already set"));
        }
        let (v2, nesting) = match kind {
            IommuType::Type1 => (false, false),
            IommuType::Type1v2 => (true, false),
            IommuType::Type1Nesting => (true, true),
            // No registered driver claims it.
            IommuType::Other(_) => return Err(VfioError::NoDevice),
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
            history: None,
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

    pub(crate) fn attach_to_type1(&self, t: &mut Type1, group: &Arc<Group>) -> Result<()> {
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
            .alloc_domain(self.domain_memory())
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
    pub(crate) fn attach_checked(
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
    pub(crate) fn replay(&self, t: &mut Type1, domain: &Arc<dyn DomainOps>) -> Result<()> {
        self.wait_all_valid(t)?;
        // (iova, bytes mapped in the new domain, newly pinned, pages charged)
        let mut done: Vec<(u64, u64, bool, u64)> = Vec::new();
        let mut failure = None;
        for dma in t.dmas.iter() {
            if dma.iommu_mapped {
                // Already pinned for another domain: map the same pages.
                let phys = Self::phys_of(dma, dma.pinned_vaddr);
                if let Err(e) = domain.map(dma.iova, phys, dma.size, dma.prot) {
                    failure = Some(VfioError::from(e));
                    break;
                }
                done.push((dma.iova, dma.size, false, 0));
            } else {
                let policy = LockPolicy {
                    cap_ipc_lock: dma.lock_cap,
                    limit_pages: self.mem_of(dma).lock_policy().limit_pages,
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
                        self.mem_of(dma).unpin(dma.vaddr, size);
                        self.mem_of(dma).account().uncharge(charged);
                    }
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

    pub(crate) fn detach_from_type1(&self, t: &mut Type1, group_id: u32) {
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
                        dma.bitmap_touched = true;
                    }
                }
            }
        }
    }

    /// Releases the driver data: every mapping is unmapped and unpinned and
    /// the domains are freed (type1's release).
    pub(crate) fn release_type1(&self, t: &mut Type1) {
        self.unmap_unpin_all(t);
        for d in t.domains.drain(..) {
            for g in &d.groups {
                detach_devices(&d.unit, &g.group);
            }
        }
        t.emulated_groups.clear();
    }

    pub(crate) fn unmap_unpin_all(&self, t: &mut Type1) {
        for iova in t.dmas.keys() {
            let history = self.remove_dma(t, iova).map(|d| d.history);
            if let Some(h) = self.history_in(&mut t.history) {
                h.record_released_at(history.unwrap_or_default(), self.id, iova);
            }
        }
    }

    /// The last IOMMU-backed domain goes while emulated groups remain: unpin
    /// everything the domain pinned and keep accounted only the pages still
    /// pinned externally (type1's `vfio_iommu_unmap_unpin_reaccount`), one
    /// accounting update per mapping.
    pub(crate) fn unmap_unpin_reaccount(&self, t: &mut Type1) {
        let domains: Vec<Arc<dyn DomainOps>> = t.domains.iter().map(|d| d.ops.clone()).collect();
        for dma in t.dmas.iter_mut() {
            if !dma.iommu_mapped {
                continue;
            }
            for d in &domains {
                unmap_all_of(d.as_ref(), dma.iova, dma.size);
                d.flush(dma.iova, dma.size);
            }
            let mem = self.mem_of(dma).clone();
            mem.unpin(dma.pinned_vaddr, dma.size);
            let still_pinned = dma.ext_pins.pinned_pages();
            mem.account()
                .uncharge(dma.locked_pages.saturating_sub(still_pinned));
            dma.locked_pages = still_pinned;
            dma.iommu_mapped = false;
        }
    }

    /// Waits until no mapping has an invalid vaddr (type1's
    /// `vfio_wait_all_valid`). Fails with EFAULT if the container goes away.
    pub(crate) fn wait_all_valid(&self, t: &Type1) -> Result<()> {
        if t.vaddr_invalid_count == 0 {
            return Ok(());
        }
        // Waiting needs the state lock released, which `t` holds: report
        // EFAULT, and `attach_group` waits for the update and retries.
        Err(VfioError::Fault)
    }
}

pub(crate) fn attach_devices(
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

pub(crate) fn detach_devices(unit: &Arc<dyn IommuUnit>, group: &Group) {
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

pub(crate) fn update_pgsize_bitmap(t: &mut Type1) {
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
pub(crate) fn aperture_conflict(t: &Type1, start: u64, end: u64) -> bool {
    let (Some(first), Some(last)) = (t.iova_list.first_start(), t.iova_list.last_end()) else {
        return false;
    };
    if start > last || end < first {
        return true;
    }
    if start > first && t.dmas.any_overlapping(first, start - 1).is_some() {
        return true;
    }
    if end < last && t.dmas.any_overlapping(end + 1, last).is_some() {
        return true;
    }
    false
}

/// Does a reserved region overlap an existing mapping?
pub(crate) fn resv_conflict(t: &Type1, resv: &[ResvRegion]) -> bool {
    resv.iter().any(|r| {
        r.kind != crate::iommu::ResvKind::DirectRelaxable
            && t.dmas.any_overlapping(r.start, r.end).is_some()
    })
}
