//! The emulated platform as the engine sees it: IOMMU groups, the devices in
//! them, and the IOMMU unit behind each (or none, for mediated devices).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::device::VfioDeviceModel;
use crate::iommu::{IommuUnit, ResvRegion};

/// The kernel's default `dma_entry_limit` module parameter.
pub const DEFAULT_DMA_ENTRY_LIMIT: u32 = 65535;

/// A device in a group.
pub struct Device {
    /// PCI address ("0000:00:03.0") or mdev UUID.
    pub name: String,
    /// PCI requester id, for devices behind an IOMMU.
    pub rid: Option<u16>,
    /// The device model behind its VFIO device fd.
    pub model: Arc<dyn VfioDeviceModel>,
}

/// How a group's DMA is translated.
#[derive(Clone)]
pub enum GroupKind {
    /// Devices behind an IOMMU unit: type1 gives the group an IOMMU domain.
    Iommu(Arc<dyn IommuUnit>),
    /// Mediated devices with no IOMMU of their own (Linux's
    /// `vfio_register_emulated_iommu_dev`): no domain, pinning on demand.
    Emulated,
}

/// An IOMMU group (`/dev/vfio/<id>`).
pub struct Group {
    /// Group number (`/dev/vfio/<id>`).
    pub id: u32,
    /// Behind an IOMMU unit, or mediated.
    pub kind: GroupKind,
    /// The devices in the group.
    pub devices: Vec<Arc<Device>>,
    /// Reserved regions configured for this group on top of what the IOMMU
    /// reports for its devices (firmware-reserved ranges, say).
    pub extra_reserved: Vec<ResvRegion>,
}

impl Group {
    /// A group of mediated devices (no IOMMU domain)?
    pub fn is_emulated(&self) -> bool {
        matches!(self.kind, GroupKind::Emulated)
    }

    /// All reserved regions of the group: each device's, from its IOMMU unit,
    /// plus the configured ones.
    pub fn reserved_regions(&self) -> Vec<ResvRegion> {
        let mut out = Vec::new();
        if let GroupKind::Iommu(unit) = &self.kind {
            for dev in &self.devices {
                if let Some(rid) = dev.rid {
                    for r in unit.reserved_regions(rid) {
                        if !out.contains(&r) {
                            out.push(r);
                        }
                    }
                }
            }
        }
        for r in &self.extra_reserved {
            if !out.contains(r) {
                out.push(*r);
            }
        }
        out
    }

    /// The device named `name` (PCI address or mdev UUID).
    pub fn device(&self, name: &str) -> Option<&Arc<Device>> {
        self.devices.iter().find(|d| d.name == name)
    }
}

/// Everything a VFIO front end can open.
pub struct Platform {
    /// Groups by number.
    pub groups: BTreeMap<u32, Arc<Group>>,
    /// `dma_entry_limit` for new containers.
    pub dma_entry_limit: u32,
    /// Report precise dirty pages from the IOMMU's dirty bits instead of
    /// type1's "every pinned page is dirty".
    pub precise_dirty: bool,
    /// `(group, device name)` of `/dev/vfio/devices/vfioN`, by N; empty:
    /// by group number, then the group's device order.
    pub cdev_order: Vec<(u32, String)>,
}

impl Platform {
    /// A platform with no group and the kernel's default limits.
    pub fn new() -> Self {
        Self {
            groups: BTreeMap::new(),
            dma_entry_limit: DEFAULT_DMA_ENTRY_LIMIT,
            precise_dirty: false,
            cdev_order: Vec::new(),
        }
    }

    /// Adds (or replaces) a group.
    pub fn add_group(&mut self, group: Group) {
        self.groups.insert(group.id, Arc::new(group));
    }

    /// The group numbered `id`.
    pub fn group(&self, id: u32) -> Option<&Arc<Group>> {
        self.groups.get(&id)
    }
}

impl Default for Platform {
    fn default() -> Self {
        Self::new()
    }
}
