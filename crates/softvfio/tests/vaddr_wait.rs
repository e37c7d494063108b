//! A group attach that must replay mappings into a new domain waits, as
//! type1's `vfio_wait_all_valid` does, until every invalidated vaddr has
//! been updated; it gives up with EFAULT after the container's vaddr wait
//! timeout, changing nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use soft_iommu::{AddressWidth, Iommu, IommuConfig};
use softvfio::container::{Container, ContainerConfig, TYPE1V2_IOMMU};
use softvfio::iommu::vtd::VtdUnit;
use softvfio::iommu::{IommuUnit, Prot};
use softvfio::memory::sim::SimMemory;
use softvfio::platform::{Device, Group, GroupKind};
use softvfio::testing::NullDevice;

const BASE: u64 = 0x7000_0000_0000;
const PG: u64 = 4096;

fn group(id: u32, rid: u16, width: AddressWidth) -> Arc<Group> {
    let unit: Arc<dyn IommuUnit> = Arc::new(VtdUnit::new(Iommu::new(IommuConfig {
        address_width: width,
        ..IommuConfig::default()
    })));
    let name = format!("0000:00:{:02x}.0", rid >> 3);
    Arc::new(Group {
        id,
        kind: GroupKind::Iommu(unit),
        devices: vec![Arc::new(Device {
            name: name.clone(),
            rid: Some(rid),
            model: Arc::new(NullDevice(name)),
        })],
        extra_reserved: Vec::new(),
    })
}

/// A container on a 48-bit domain with one mapping whose vaddr is invalid.
fn invalidated() -> Arc<Container> {
    let mem = Arc::new(SimMemory::new());
    mem.add_region(BASE, 1 << 20, PG, Prot::RW).unwrap();
    let c = Container::new(ContainerConfig::default(), mem);
    c.attach_group(&group(3, 0x18, AddressWidth::Bits48))
        .unwrap();
    c.set_iommu(TYPE1V2_IOMMU).unwrap();
    c.map(0x10_0000, BASE, 4 * PG, Prot::RW).unwrap();
    assert_eq!(c.invalidate_vaddr(0x10_0000, 4 * PG).unwrap(), 4 * PG);
    c
}

#[test]
fn attach_needing_replay_waits_for_the_vaddr_update() {
    let c = invalidated();
    let updater = {
        let c = c.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            c.update_vaddr(0x10_0000, BASE, 4 * PG).unwrap();
        })
    };
    let start = Instant::now();
    // A 39-bit unit cannot use the 48-bit domain: a new domain, a replay.
    c.attach_group(&group(4, 0x20, AddressWidth::Bits39))
        .unwrap();
    let waited = start.elapsed();
    updater.join().unwrap();
    assert!(
        waited >= Duration::from_millis(100),
        "attach returned after {waited:?}"
    );
    let snap = c.snapshot();
    assert_eq!(snap.domains.len(), 2);
    assert_eq!(snap.groups, vec![3, 4]);
    assert!(!snap.mappings[0].vaddr_invalid);
}

#[test]
fn attach_gives_up_after_the_timeout_and_changes_nothing() {
    let c = invalidated();
    c.set_vaddr_wait_timeout(Duration::from_millis(200));
    let before = c.snapshot();
    let start = Instant::now();
    let err = c
        .attach_group(&group(4, 0x20, AddressWidth::Bits39))
        .unwrap_err();
    assert_eq!(err.errno(), libc::EFAULT);
    assert!(start.elapsed() >= Duration::from_millis(150));
    let after = c.snapshot();
    assert_eq!(after.groups, before.groups);
    assert_eq!(after.domains, before.domains);
    assert_eq!(after.iova_ranges, before.iova_ranges);
    // A group that can share the existing domain needs no replay: no wait.
    let start = Instant::now();
    c.attach_group(&group(5, 0x28, AddressWidth::Bits48))
        .unwrap();
    assert!(start.elapsed() < Duration::from_millis(150));
}
