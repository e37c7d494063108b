//! The engine as the benchmarks drive it: a type1v2 container over a memory
//! backend, with one group of one device behind a software VT-d.

use std::sync::Arc;

use soft_iommu::{AddressWidth, Domain, Iommu, IommuConfig};
use softvfio::container::TYPE1V2_IOMMU;
use softvfio::memory::UserMemory;
use softvfio::{Container, ContainerConfig};

/// Requester id of the benchmark device (00:03.0).
pub const RID: u16 = 0x18;

/// A container with its VT-d unit.
pub struct Engine {
    pub container: Arc<Container>,
    pub iommu: Arc<Iommu>,
}

impl Engine {
    /// A type1v2 container over `mem`, group 3 behind a VT-d of `width`,
    /// at most `dma_entry_limit` mappings.
    pub fn new(
        mem: Arc<dyn UserMemory>,
        width: AddressWidth,
        dma_entry_limit: u32,
    ) -> Result<Engine, String> {
        let iommu = Iommu::new(IommuConfig {
            address_width: width,
            ..IommuConfig::default()
        });
        let group = softvfio::testing::vtd_group(3, RID, &iommu);
        let container = Container::new(
            ContainerConfig {
                dma_entry_limit,
                ..ContainerConfig::default()
            },
            mem,
        );
        container
            .attach_group(&group)
            .map_err(|e| format!("attach group: {e}"))?;
        container
            .set_iommu(TYPE1V2_IOMMU)
            .map_err(|e| format!("set type1v2: {e}"))?;
        Ok(Engine { container, iommu })
    }

    /// The I/O page table the device uses.
    pub fn domain(&self) -> Result<Arc<Domain>, String> {
        self.iommu
            .device_domain(RID)
            .ok_or_else(|| "the device has no domain".to_string())
    }
}
