//! A VFIO container (`/dev/vfio/vfio`) with the type1 IOMMU backend: the
//! engine's public face. The state machine behind it is in [`crate::type1`]
//! (its header states the invariants, the counters and the lock order).

#![allow(missing_docs)] // TODO(issue 16, item 6): document the remaining public items

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::dirty::DIRTY_BITMAP_SIZE_MAX;
use crate::error::{Result, VfioError};
use crate::iommu::Prot;
use crate::iova::IovaRange;
use crate::memory::{UserMemory, PAGE_SIZE};
use crate::type1::state::{min_pgsize, State};

pub use crate::type1::inspect::{ContainerSnapshot, DomainView, MappingView};
pub use crate::type1::BrokenInvariant;

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

/// A VFIO container (`/dev/vfio/vfio`) with the type1 backend.
pub struct Container {
    pub(crate) id: u64,
    pub(crate) cfg: ContainerConfig,
    pub(crate) mem: Arc<dyn UserMemory>,
    pub(crate) state: Mutex<State>,
    /// Signalled when a vaddr becomes valid again (type1's `vaddr_wait`).
    pub(crate) vaddr_valid: Condvar,
    /// How long an external pin waits for an invalid vaddr, in ms.
    pub(crate) vaddr_wait_ms: AtomicU64,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iommu::ResvKind;
    use crate::iommu::{DomainOps, ResvRegion};
    use crate::memory::LockPolicy;
    use crate::platform::{Group, GroupKind};
    use crate::testing::{iommu_group, FakeUnit, VecMemory};
    use crate::type1::state::Type1;
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
