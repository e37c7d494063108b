//! Unit tests of the type1 engine, through `Container` (and, to break
//! an invariant on purpose, the state itself).

use std::sync::Arc;

use super::state::Type1;
use crate::container::*;
use crate::error::Result;
use crate::iommu::ResvKind;
use crate::iommu::{DomainOps, ResvRegion};
use crate::iova::IovaRange;
use crate::memory::LockPolicy;
use crate::memory::{UserMemory, PAGE_SIZE};
use crate::platform::{Group, GroupKind};
use crate::testing::{iommu_group, FakeUnit, VecMemory};
use crate::uapi::{map_dma, unmap_dma};
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
    map_dma(&c, 0x10_0000, BASE, 4 * PG, RW).unwrap();
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
    assert!(c.check_extension(TYPE1_IOMMU));
    assert!(c.check_extension(TYPE1V2_IOMMU));
    assert!(c.check_extension(TYPE1_NESTING_IOMMU));
    assert!(c.check_extension(UNMAP_ALL));
    assert!(!c.check_extension(UPDATE_VADDR));
    assert!(!c.check_extension(DMA_CC_IOMMU));
    assert!(!c.check_extension(SPAPR_TCE_IOMMU));
    assert!(!c.check_extension(NOIOMMU_IOMMU));
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
    assert!(c.check_extension(UPDATE_VADDR));
    // The fake unit does not enforce coherency.
    assert!(!c.check_extension(DMA_CC_IOMMU));
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
    map_dma(&c, 0x10_0000, BASE, 4 * PG, RW).unwrap();
    check(&c);
    assert_eq!(mem.account().locked_pages(), 4);
    assert_eq!(mem.account().updates(), 1);
    assert_eq!(mem.total_pins(), 4);
    let d = unit.domains.lock().unwrap()[0].clone();
    assert_eq!(d.iova_to_phys(0x10_1234), Some(BASE + 0x1234));
    assert_eq!(unmap_dma(&c, 0x10_0000, 4 * PG, 0, None).unwrap(), 4 * PG);
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
    assert_eq!(
        errno(map_dma(&c, 0x10_0000, BASE, 4 * PG, RW)),
        libc::EFAULT
    );
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
    assert_eq!(
        errno(map_dma(&c, 0x10_0000, BASE, 4 * PG, RW)),
        libc::ENOMEM
    );
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
    map_dma(&c, 0x10_0000, BASE, 16 * PG, RW).unwrap();
    check(&c);
    map_dma(&c, 0x20_0000, BASE, 16 * PG, RW).unwrap(); // same pages count again
    assert_eq!(mem.account().locked_pages(), 32);
    assert_eq!(
        errno(map_dma(&c, 0x30_0000, BASE + 16 * PG, PG, RW)),
        libc::ENOMEM
    );
    assert_eq!(mem.account().locked_pages(), 32);
    assert_eq!(mem.pin_count(BASE), 2);
    unmap_dma(&c, 0, 0, UNMAP_FLAG_ALL, None).unwrap();
    check(&c);
    assert_eq!(mem.account().locked_pages(), 0);
    assert_eq!(mem.total_pins(), 0);
}

#[test]
fn attach_conflicting_reserved_region_is_refused_and_changes_nothing() {
    let (c, mem, _unit, _) = setup(true);
    map_dma(&c, 0x4000_0000, BASE, 2 * PG, RW).unwrap();
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
    assert_eq!(errno(map_dma(&c, 0x8000_0000, BASE, PG, RW)), libc::EINVAL);
    check(&c);
    c.detach_group(7);
    check(&c);
    assert_eq!(c.info().unwrap().iova_ranges, before);
    assert_eq!(unit.domain_of(0x20), None);
    assert_eq!(errno(map_dma(&c, 0x8000_0000, BASE, PG, RW)), 0);
    check(&c);
}

#[test]
fn narrower_aperture_conflict_and_second_domain_replay() {
    let (c, mem, _unit, _) = setup(true);
    map_dma(&c, 0x40_0000_0000, BASE, PG, RW).unwrap(); // above 2^36
    let narrow = FakeUnit::new(36);
    let g2 = Arc::new(iommu_group(8, 0x28, narrow.clone(), Vec::new()));
    assert_eq!(errno(c.attach_group(&g2)), libc::EINVAL);
    check(&c);
    unmap_dma(&c, 0x40_0000_0000, PG, 0, None).unwrap();
    check(&c);
    map_dma(&c, 0x10_0000, BASE, 2 * PG, RW).unwrap();
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
    map_dma(&c, 0x10_0000, BASE, 2 * PG, RW).unwrap();
    check(&c);
    map_dma(&c, 0x20_0000, BASE + 4 * PG, 2 * PG, RW).unwrap();
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
    map_dma(&c, 0x10_0000, BASE, 8 * PG, RW).unwrap();
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
    map_dma(&c, 0x10_0000, BASE, 4 * PG, RW).unwrap();
    check(&c);
    assert_eq!(unmap_dma(&c, 0x10_1000, PG, 0, None).unwrap(), 0);
    check(&c);
    assert_eq!(unmap_dma(&c, 0x10_0000, PG, 0, None).unwrap(), 4 * PG);
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
    assert!(!c.check_extension(UPDATE_VADDR));
    assert!(c.check_extension(DMA_CC_IOMMU));
    // Any IOVA is valid with an empty list.
    map_dma(&c, 0xfee0_0000, BASE, 2 * PG, RW).unwrap();
    check(&c);
    assert_eq!(mem.total_pins(), 0);
    assert_eq!(mem.account().locked_pages(), 0);
    // An IOMMU-backed group now conflicts (MSI window mapped).
    let unit = FakeUnit::new(39);
    let g2 = Arc::new(iommu_group(3, 0x18, unit, Vec::new()));
    assert_eq!(errno(c.attach_group(&g2)), libc::EINVAL);
    check(&c);
    unmap_dma(&c, 0, 0, UNMAP_FLAG_ALL, None).unwrap();
    check(&c);
    map_dma(&c, 0x10_0000, BASE, 2 * PG, RW).unwrap();
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

/// With the DMA sanitizer, each mapping carries the slot of its history:
/// its vaddr invalidation, update and unmap are recorded there (no lookup),
/// and a region mapped twice shows both mappings' events, in order.
#[test]
fn mappings_carry_their_sanitizer_history() {
    use crate::sanitizer::{EventKind, HistorySlot, Sanitizer, SanitizerConfig};
    let (c, ..) = setup(true);
    let s = Sanitizer::new(SanitizerConfig::default());
    c.set_sanitizer(s.clone());
    map_dma(&c, 0x10_0000, BASE, 2 * PG, RW).unwrap();
    map_dma(&c, 0x20_0000, BASE + 2 * PG, PG, RW).unwrap();
    let slots: Vec<HistorySlot> = {
        let mut st = c.lock();
        let t = st.iommu.as_mut().unwrap();
        [0x10_0000, 0x20_0000]
            .iter()
            .map(|&iova| t.dmas.get(iova).unwrap().history)
            .collect()
    };
    assert!(slots.iter().all(|&h| h != HistorySlot::NONE));
    assert_ne!(slots[0], slots[1]);
    assert_eq!(c.invalidate_vaddr(0x10_0000, 2 * PG).unwrap(), 2 * PG);
    c.update_vaddr(0x10_0000, BASE + 8 * PG, 2 * PG).unwrap();
    assert_eq!(c.unmap(0x10_0000, 2 * PG).unwrap(), 2 * PG);
    map_dma(&c, 0x10_0000, BASE, PG, RW).unwrap();
    let r = s.region(c.id(), 0x10_0000).unwrap();
    let kinds: Vec<EventKind> = r.events.iter().map(|e| e.kind).collect();
    let map = |vaddr, size| EventKind::Map {
        vaddr,
        size,
        prot: crate::iommu::Prot::RW,
    };
    assert_eq!(
        kinds,
        vec![
            map(BASE, 2 * PG),
            EventKind::InvalidateVaddr,
            EventKind::UpdateVaddr {
                vaddr: BASE + 8 * PG
            },
            EventKind::Unmap,
            map(BASE, PG),
        ]
    );
    assert!(r.mapped);
    assert_eq!(r.size, PG);
    // Two regions, one of them mapped twice.
    assert_eq!(s.region_count(), 2);
}

/// The sanitizer's history of a container lives under the container's
/// lock while its type1 state does; when that goes (the last group
/// detached), the history moves to the sanitizer's shared tables: a region
/// mapped before and after shows both histories, in order, with their call
/// sites, and the container's own drop loses nothing.
#[test]
fn a_released_containers_history_is_kept() {
    use crate::sanitizer::{with_call_site, CallSite, EventKind, Frame, Sanitizer, StaleCause};
    let (c, _mem, _unit, group) = setup(true);
    let s = Sanitizer::new(crate::sanitizer::SanitizerConfig::default());
    c.set_sanitizer(s.clone());
    let site = |addr| {
        Arc::new(CallSite {
            frames: vec![Frame {
                addr,
                object: Some("/bin/prog".into()),
                offset: addr - 0x40_0000,
            }],
        })
    };
    with_call_site(Some(&site(0x40_1000)), || {
        map_dma(&c, 0x10_0000, BASE, PG, RW).unwrap()
    });
    map_dma(&c, 0x20_0000, BASE + PG, PG, RW).unwrap();
    assert_eq!(c.unmap(0x20_0000, PG).unwrap(), PG);
    // The last group goes: type1 releases the live mapping.
    c.detach_group(group.id);
    assert!(c.lock().iommu.is_none());
    c.attach_group(&group).unwrap();
    c.set_iommu(TYPE1V2_IOMMU).unwrap();
    with_call_site(Some(&site(0x40_2000)), || {
        map_dma(&c, 0x10_0000, BASE + 2 * PG, 2 * PG, RW).unwrap()
    });
    let map = |vaddr, size| EventKind::Map {
        vaddr,
        size,
        prot: crate::iommu::Prot::RW,
    };
    let check_region = |s: &Sanitizer| {
        let r = s.region(c.id(), 0x10_0000).unwrap();
        let kinds: Vec<EventKind> = r.events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![
                map(BASE, PG),
                EventKind::Released,
                map(BASE + 2 * PG, 2 * PG)
            ]
        );
        let addr = |i: usize| r.events[i].site.as_ref().map(|s| s.frames[0].addr);
        assert_eq!(
            (addr(0), addr(1), addr(2)),
            (Some(0x40_1000), None, Some(0x40_2000))
        );
        assert!(r.mapped);
        assert_eq!(r.size, 2 * PG);
        let unmapped = s.region(c.id(), 0x20_0000).unwrap();
        assert_eq!(unmapped.events.len(), 2);
        assert!(!unmapped.mapped);
        assert_eq!(s.region_count(), 2);
    };
    check_region(&s);
    // A stale check reaches the mapping under the container's lock.
    let hits = s.memory_going_away(None, BASE + 3 * PG, 0x10_0000, StaleCause::Munmap);
    assert_eq!(hits.len(), 1);
    assert_eq!(
        (hits[0].region.iova, hits[0].vaddr, hits[0].len),
        (0x10_0000, BASE + 3 * PG, PG)
    );
    // Closed and dropped: everything is in the shared tables now.
    c.close();
    let id = c.id();
    let s2 = s.clone();
    drop(c);
    let r = s2.region(id, 0x10_0000).unwrap();
    assert_eq!(r.events.len(), 5);
    assert!(matches!(r.events[3].kind, EventKind::Stale { .. }));
    assert_eq!(r.events[4].kind, EventKind::Released);
    assert!(!r.mapped);
    assert_eq!(s2.region_count(), 2);
}
