//! Seed 003 with the real backends: the valid IOVA list is the intersection
//! of every domain's aperture minus every group's reserved regions; attach
//! works on a copy and changes nothing when it fails; detach restores.

use std::sync::Arc;

use soft_iommu::{AddressWidth, Iommu, IommuConfig};
use softvfio::container::{Container, ContainerConfig, TYPE1V2_IOMMU};
use softvfio::iommu::vtd::VtdUnit;
use softvfio::iommu::{IommuUnit, Prot, ResvKind, ResvRegion};
use softvfio::iova::IovaRange;
use softvfio::memory::sim::SimMemory;
use softvfio::memory::UserMemory;
use softvfio::platform::{Device, Group, GroupKind};
use softvfio::testing::NullDevice;

const BASE: u64 = 0x7000_0000_0000;
const PG: u64 = 4096;

fn unit(width: AddressWidth) -> (Arc<Iommu>, Arc<dyn IommuUnit>) {
    let iommu = Iommu::new(IommuConfig {
        address_width: width,
        ..IommuConfig::default()
    });
    let unit: Arc<dyn IommuUnit> = Arc::new(VtdUnit::new(iommu.clone()));
    (iommu, unit)
}

fn group(id: u32, rid: u16, unit: &Arc<dyn IommuUnit>, extra: Vec<ResvRegion>) -> Arc<Group> {
    let name = format!("0000:00:{:02x}.{}", rid >> 3, rid & 7);
    Arc::new(Group {
        id,
        kind: GroupKind::Iommu(unit.clone()),
        devices: vec![Arc::new(Device {
            name: name.clone(),
            rid: Some(rid),
            model: Arc::new(NullDevice(name)),
        })],
        extra_reserved: extra,
    })
}

fn emulated(id: u32) -> Arc<Group> {
    Arc::new(Group {
        id,
        kind: GroupKind::Emulated,
        devices: Vec::new(),
        extra_reserved: Vec::new(),
    })
}

fn r(start: u64, end: u64) -> IovaRange {
    IovaRange { start, end }
}

fn resv(start: u64, end: u64) -> ResvRegion {
    ResvRegion {
        start,
        end,
        kind: ResvKind::Reserved,
    }
}

fn setup() -> (Arc<Container>, Arc<SimMemory>, Arc<Iommu>) {
    let mem = Arc::new(SimMemory::new());
    mem.add_region(BASE, 1 << 30, PG, Prot::RW).unwrap();
    let c = Container::new(ContainerConfig::default(), mem.clone());
    let (iommu, u) = unit(AddressWidth::Bits39);
    c.attach_group(&group(3, 0x18, &u, Vec::new())).unwrap();
    c.set_iommu(TYPE1V2_IOMMU).unwrap();
    (c, mem, iommu)
}

const REFERENCE: [IovaRange; 2] = [
    IovaRange {
        start: 0,
        end: 0xfedf_ffff,
    },
    IovaRange {
        start: 0xfef0_0000,
        end: 0x7f_ffff_ffff,
    },
];

#[test]
fn conflicting_reserved_region_is_refused_and_nothing_changes() {
    let (c, mem, _iommu) = setup();
    c.map(0x4000_0000, BASE, 4 * PG, Prot::RW).unwrap();
    let before = c.snapshot();
    let (iommu2, u2) = unit(AddressWidth::Bits39);
    let g = group(4, 0x20, &u2, vec![resv(0x4000_2000, 0x4000_2fff)]);
    assert_eq!(c.attach_group(&g).unwrap_err().errno(), libc::EINVAL);
    let after = c.snapshot();
    assert_eq!(after.iova_ranges, before.iova_ranges);
    assert_eq!(after.mappings, before.mappings);
    assert_eq!(after.domains, before.domains);
    assert_eq!(after.groups, vec![3]);
    // The refused group's device is blocked again.
    assert!(iommu2.device_domain(0x20).is_none());
    assert_eq!(mem.stats().pin_refs, 4);
    assert_eq!(mem.account().locked_pages(), 4);
}

#[test]
fn attach_splits_the_list_and_detach_restores_it() {
    let (c, _mem, iommu) = setup();
    let u: Arc<dyn IommuUnit> = Arc::new(VtdUnit::new(iommu.clone()));
    assert_eq!(c.info().unwrap().iova_ranges, REFERENCE.to_vec());
    let g = group(
        5,
        0x28,
        &u,
        vec![
            resv(0x8000_0000, 0x8fff_ffff),
            resv(0x10_0000_0000, 0x10_0000_0fff),
        ],
    );
    c.attach_group(&g).unwrap();
    assert_eq!(
        c.info().unwrap().iova_ranges,
        vec![
            r(0, 0x7fff_ffff),
            r(0x9000_0000, 0xfedf_ffff),
            r(0xfef0_0000, 0xf_ffff_ffff),
            r(0x10_0000_1000, 0x7f_ffff_ffff)
        ]
    );
    // Both devices share one domain (same unit, same coherency).
    assert_eq!(c.snapshot().domains.len(), 1);
    assert_eq!(
        iommu.device_domain(0x18).map(|d| d.id()),
        iommu.device_domain(0x28).map(|d| d.id())
    );
    assert_eq!(
        c.map(0x8000_0000, BASE, PG, Prot::RW).unwrap_err().errno(),
        libc::EINVAL
    );
    c.detach_group(5);
    assert_eq!(c.info().unwrap().iova_ranges, REFERENCE.to_vec());
    c.map(0x8000_0000, BASE, PG, Prot::RW).unwrap();
}

#[test]
fn a_wider_unit_shares_a_narrower_domain() {
    let (c, _mem, iommu39) = setup();
    let (iommu48, u48) = unit(AddressWidth::Bits48);
    c.attach_group(&group(6, 0x30, &u48, Vec::new())).unwrap();
    // VT-d lets a device behind a 48-bit unit use a 39-bit domain.
    assert_eq!(c.snapshot().domains.len(), 1);
    assert_eq!(
        iommu48.device_domain(0x30).map(|d| d.id()),
        iommu39.device_domain(0x18).map(|d| d.id())
    );
    assert_eq!(c.info().unwrap().iova_ranges, REFERENCE.to_vec());
}

#[test]
fn a_narrower_unit_gets_its_own_domain_and_the_aperture_intersects() {
    let mem = Arc::new(SimMemory::new());
    mem.add_region(BASE, 1 << 30, PG, Prot::RW).unwrap();
    let c = Container::new(ContainerConfig::default(), mem.clone());
    let (iommu48, u48) = unit(AddressWidth::Bits48);
    c.attach_group(&group(3, 0x18, &u48, Vec::new())).unwrap();
    c.set_iommu(TYPE1V2_IOMMU).unwrap();
    assert_eq!(
        c.info().unwrap().iova_ranges,
        vec![r(0, 0xfedf_ffff), r(0xfef0_0000, 0xffff_ffff_ffff)]
    );
    c.map(0x10_0000, BASE, 8 * PG, Prot::RW).unwrap();
    let (iommu39, u39) = unit(AddressWidth::Bits39);
    c.attach_group(&group(6, 0x30, &u39, Vec::new())).unwrap();
    let snap = c.snapshot();
    assert_eq!(
        snap.domains.len(),
        2,
        "a 39-bit unit cannot use the 48-bit domain"
    );
    assert_eq!(
        snap.iova_ranges,
        REFERENCE.to_vec(),
        "intersection of 48 and 39 bits"
    );
    // Replay mapped the same pages into the new domain, pinned once.
    let d39 = iommu39.device_domain(0x30).unwrap();
    assert_eq!(d39.iova_to_phys(0x10_3000), Some(BASE + 3 * PG));
    assert_eq!(
        iommu48.device_domain(0x18).unwrap().iova_to_phys(0x10_3000),
        Some(BASE + 3 * PG)
    );
    assert_eq!(mem.stats().pin_refs, 8);
    assert_eq!(mem.account().locked_pages(), 8);
    // New mappings go to both domains.
    c.map(0x20_0000, BASE + 64 * PG, PG, Prot::RW).unwrap();
    assert_eq!(d39.iova_to_phys(0x20_0000), Some(BASE + 64 * PG));
    // Beyond 39 bits is now refused.
    assert_eq!(
        c.map(1 << 40, BASE, PG, Prot::RW).unwrap_err().errno(),
        libc::EINVAL
    );
    c.detach_group(6);
    let snap = c.snapshot();
    assert_eq!(snap.domains.len(), 1);
    assert_eq!(
        snap.iova_ranges,
        vec![r(0, 0xfedf_ffff), r(0xfef0_0000, 0xffff_ffff_ffff)]
    );
    assert_eq!(
        d39.iova_to_phys(0x20_0000),
        None,
        "the departed domain is emptied"
    );
    assert_eq!(mem.stats().pin_refs, 9);
    c.detach_group(3);
    assert!(!c.iommu_set());
    assert_eq!(mem.stats().pin_refs, 0);
    assert_eq!(mem.account().locked_pages(), 0);
}

#[test]
fn existing_mapping_beyond_a_narrower_aperture_refuses_attach() {
    let mem = Arc::new(SimMemory::new());
    mem.add_region(BASE, 1 << 20, PG, Prot::RW).unwrap();
    let c = Container::new(ContainerConfig::default(), mem.clone());
    let (_i48, u48) = unit(AddressWidth::Bits48);
    c.attach_group(&group(3, 0x18, &u48, Vec::new())).unwrap();
    c.set_iommu(TYPE1V2_IOMMU).unwrap();
    c.map(1 << 40, BASE, PG, Prot::RW).unwrap();
    let before = c.snapshot();
    let (i39, u39) = unit(AddressWidth::Bits39);
    assert_eq!(
        c.attach_group(&group(4, 0x20, &u39, Vec::new()))
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    assert_eq!(c.snapshot().iova_ranges, before.iova_ranges);
    assert!(i39.device_domain(0x20).is_none());
}

/// Mappings recorded while only an emulated group is attached are pinned by
/// the replay of the first IOMMU-backed attach; a pin failure at any
/// position rolls the attach back completely.
#[test]
fn pin_failure_at_every_position_of_replay_rolls_back() {
    for nth in 1..=6u64 {
        let mem = Arc::new(SimMemory::new());
        mem.add_region(BASE, 1 << 24, PG, Prot::RW).unwrap();
        // 2M-page backed region: each huge page is one pin operation.
        mem.add_region(BASE + (1 << 30), 8 << 20, 2 << 20, Prot::RW)
            .unwrap();
        let c = Container::new(ContainerConfig::default(), mem.clone());
        c.attach_group(&emulated(9)).unwrap();
        c.set_iommu(TYPE1V2_IOMMU).unwrap();
        c.map(0x10_0000, BASE, 4 * PG, Prot::RW).unwrap();
        c.map(0x4000_0000, BASE + (1 << 30), 8 << 20, Prot::RW)
            .unwrap();
        assert_eq!(mem.stats().pin_refs, 0, "emulated only: nothing pinned");
        let before = c.snapshot();
        let (iommu, u) = unit(AddressWidth::Bits39);
        mem.fail_nth_pin(nth);
        let res = c.attach_group(&group(3, 0x18, &u, Vec::new()));
        mem.fail_nth_pin(0);
        if nth <= 5 {
            // 1 op for the 4K run + 4 huge pages: every position fails.
            assert!(res.is_err(), "failure at pin op {nth} must fail the attach");
            let after = c.snapshot();
            assert_eq!(after.iova_ranges, before.iova_ranges, "nth {nth}");
            assert_eq!(after.mappings, before.mappings, "nth {nth}");
            assert!(after.domains.is_empty(), "nth {nth}");
            assert_eq!(mem.stats().pin_refs, 0, "nth {nth}");
            assert_eq!(mem.account().locked_pages(), 0, "nth {nth}");
            assert!(iommu.device_domain(0x18).is_none(), "nth {nth}");
        } else {
            res.unwrap();
            assert_eq!(mem.stats().pin_refs, 4 + 2048);
            assert_eq!(mem.account().locked_pages(), 4 + 2048);
            let d = iommu.device_domain(0x18).unwrap();
            assert_eq!(d.leaf_counts(), (4, 4, 0));
        }
    }
}

#[test]
fn last_iommu_group_leaving_opens_the_whole_space() {
    // With only emulated groups left there is no aperture and nothing to
    // exclude: the kernel computes [0, u64::MAX], and the container stays
    // usable.
    let (c, _mem, _iommu) = setup();
    c.attach_group(&emulated(9)).unwrap();
    c.detach_group(3);
    let ranges = c.info().unwrap().iova_ranges;
    assert_eq!(ranges, vec![r(0, u64::MAX)]);
    c.map(0xfee0_0000, BASE, PG, Prot::RW).unwrap();
}

/// A VT-d unit whose reported reserved regions can be changed, to make the
/// recompute at detach fail.
struct ShiftingUnit {
    inner: VtdUnit,
    cover_everything: std::sync::atomic::AtomicBool,
}

impl IommuUnit for ShiftingUnit {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn alloc_domain(
        &self,
        mem: Arc<dyn UserMemory>,
    ) -> Result<Arc<dyn softvfio::iommu::DomainOps>, softvfio::iommu::IommuError> {
        self.inner.alloc_domain(mem)
    }
    fn attach_device(
        &self,
        rid: u16,
        d: &Arc<dyn softvfio::iommu::DomainOps>,
    ) -> Result<(), softvfio::iommu::IommuError> {
        self.inner.attach_device(rid, d)
    }
    fn detach_device(&self, rid: u16) {
        self.inner.detach_device(rid)
    }
    fn reserved_regions(&self, rid: u16) -> Vec<ResvRegion> {
        if self
            .cover_everything
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            vec![resv(0, u64::MAX)]
        } else {
            self.inner.reserved_regions(rid)
        }
    }
}

#[test]
fn detach_never_fails_and_keeps_the_old_list_when_recompute_fails() {
    let mem = Arc::new(SimMemory::new());
    mem.add_region(BASE, 1 << 20, PG, Prot::RW).unwrap();
    let c = Container::new(ContainerConfig::default(), mem.clone());
    let shifting = Arc::new(ShiftingUnit {
        inner: VtdUnit::new(Iommu::new(IommuConfig::default())),
        cover_everything: std::sync::atomic::AtomicBool::new(false),
    });
    let su: Arc<dyn IommuUnit> = shifting.clone();
    let (_i, u) = unit(AddressWidth::Bits39);
    c.attach_group(&group(3, 0x18, &su, Vec::new())).unwrap();
    c.set_iommu(TYPE1V2_IOMMU).unwrap();
    c.attach_group(&group(4, 0x20, &u, vec![resv(0x1000_0000, 0x1fff_ffff)]))
        .unwrap();
    c.map(0x10_0000, BASE, PG, Prot::RW).unwrap();
    let before = c.info().unwrap().iova_ranges;
    assert_eq!(before.len(), 3);
    // Group 3 now reports a region covering everything: the recompute at
    // group 4's detach finds no valid IOVA. Detach still succeeds and the
    // old list stays.
    shifting
        .cover_everything
        .store(true, std::sync::atomic::Ordering::SeqCst);
    c.detach_group(4);
    assert_eq!(c.snapshot().groups, vec![3]);
    assert_eq!(c.info().unwrap().iova_ranges, before);
    assert_eq!(mem.stats().pin_refs, 1);
}
