//! Shared set-up for the engine's integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use softvfio::memory::UserMemory;
use softvfio::platform::Group;
use softvfio::testing::{iommu_group, FakeUnit, VecMemory};

pub const TEST_BASE: u64 = 0x7000_0000_0000;

/// Memory of `pages` pages and a group of one device behind a 39-bit IOMMU.
pub fn test_memory_and_group(pages: u64) -> (Arc<dyn UserMemory>, u64, Arc<Group>) {
    let mem = VecMemory::new(TEST_BASE, (pages * 4096) as usize);
    let unit = FakeUnit::new(39);
    let group = Arc::new(iommu_group(3, 0x18, unit, Vec::new()));
    (mem, TEST_BASE, group)
}
