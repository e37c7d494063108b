//! The engine as the benchmarks drive it: a type1v2 container over a memory
//! backend, with one group of one device behind a software VT-d.

use std::sync::Arc;

use soft_iommu::{AddressWidth, Domain, Iommu, IommuConfig};
use softvfio::container::TYPE1V2_IOMMU;
use softvfio::iommu::vtd::VtdUnit;
use softvfio::iommu::IommuUnit;
use softvfio::memory::UserMemory;
use softvfio::platform::{Device, Group, GroupKind};
use softvfio::testing::NullDevice;
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
        let unit: Arc<dyn IommuUnit> = Arc::new(VtdUnit::new(iommu.clone()));
        let name = "0000:00:03.0".to_string();
        let group = Arc::new(Group {
            id: 3,
            kind: GroupKind::Iommu(unit),
            devices: vec![Arc::new(Device {
                name: name.clone(),
                rid: Some(RID),
                model: Arc::new(NullDevice(name)),
            })],
            extra_reserved: Vec::new(),
        });
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
