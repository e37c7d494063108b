//! Shared set-up for the engine's integration tests: the real simulated
//! memory backend and the real VT-d model behind the engine's traits.
#![allow(dead_code)]

use std::sync::Arc;

use soft_iommu::{Iommu, IommuConfig};
use softvfio::iommu::vtd::VtdUnit;
use softvfio::iommu::{IommuUnit, Prot};
use softvfio::memory::sim::SimMemory;
use softvfio::memory::UserMemory;
use softvfio::platform::{Device, Group, GroupKind};
use softvfio::testing::NullDevice;

pub const TEST_BASE: u64 = 0x7000_0000_0000;

/// Simulated memory of `pages` 4K pages at [`TEST_BASE`] and group 3 with one
/// device (rid 0x18) behind a 39-bit VT-d.
pub fn test_memory_and_group(pages: u64) -> (Arc<dyn UserMemory>, u64, Arc<Group>) {
    let mem = SimMemory::new();
    mem.add_region(TEST_BASE, pages * 4096, 4096, Prot::RW)
        .expect("sim region");
    let (_, group) = vtd_group(3, 0x18);
    (Arc::new(mem), TEST_BASE, group)
}

/// A group with one device behind a fresh 39-bit VT-d unit.
pub fn vtd_group(id: u32, rid: u16) -> (Arc<Iommu>, Arc<Group>) {
    let iommu = Iommu::new(IommuConfig::default());
    let unit: Arc<dyn IommuUnit> = Arc::new(VtdUnit::new(iommu.clone()));
    let name = format!("0000:00:{:02x}.{}", rid >> 3, rid & 7);
    let group = Arc::new(Group {
        id,
        kind: GroupKind::Iommu(unit),
        devices: vec![Arc::new(Device {
            name: name.clone(),
            rid: Some(rid),
            model: Arc::new(NullDevice(name)),
        })],
        extra_reserved: Vec::new(),
    });
    (iommu, group)
}
