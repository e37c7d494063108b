//! A VMM's view of softvfio: the engine embedded as a library, with no
//! ioctls and no file descriptors.
//!
//! The pieces a VMM puts together:
//! - guest memory: here a simulated address space ([`SimMemory`]); a real
//!   VMM would hand its own guest RAM over with
//!   `HostMemory::current()` (an `unsafe fn`: read its contract);
//! - the IOMMU: the VT-d model ([`soft_iommu::Iommu`]) behind the engine's
//!   [`IommuUnit`] trait;
//! - a device: QEMU's `edu`, whose DMA goes through the IOMMU with its
//!   requester id;
//! - the type1 engine: a [`Container`] the device's group is attached to,
//!   with the guest's RAM mapped at the IOVAs the guest driver uses.
//!
//! Then the guest driver's view: program the device's DMA registers, let it
//! copy guest memory into its buffer and back, unmap, and see the next DMA
//! fault instead of reaching the memory.
//!
//! Run with `cargo run -p softvfio-platform --example embed`.

use std::sync::Arc;

use soft_iommu::{Iommu, IommuConfig};
use softvfio::container::{Container, ContainerConfig, TYPE1V2_IOMMU};
use softvfio::device::VfioDeviceModel;
use softvfio::iommu::vtd::VtdUnit;
use softvfio::iommu::{IommuUnit, Prot};
use softvfio::memory::sim::SimMemory;
use softvfio::memory::UserMemory;
use softvfio::platform::{Device, Group, GroupKind};
use softvfio_devices::{EduDevice, EduOptions, IommuDmaTarget};

/// Where the guest's RAM is in the VMM's address space.
const GUEST_RAM: u64 = 0x7f00_0000_0000;
const GUEST_RAM_SIZE: u64 = 1 << 20;
/// The IOVA the guest driver gives the device for its RAM (below edu's
/// 28-bit DMA mask).
const IOVA: u64 = 0x10_0000;
/// edu's registers (QEMU `docs/specs/edu.rst`) and its buffer's address.
const DMA_SRC: u64 = 0x80;
const DMA_DST: u64 = 0x88;
const DMA_COUNT: u64 = 0x90;
const DMA_CMD: u64 = 0x98;
const EDU_BUFFER: u64 = 0x40000;
const CMD_START: u64 = 1;
const CMD_TO_RAM: u64 = 2;
/// The PCI config region's index and the command register's offset.
const CONFIG_REGION: u32 = 7;
const PCI_COMMAND: u64 = 4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Guest memory, as the engine sees it.
    let ram = SimMemory::new();
    ram.add_region(GUEST_RAM, GUEST_RAM_SIZE, 4096, Prot::RW)?;
    let ram = Arc::new(ram);

    // The VT-d model and an edu device at 0000:00:03.0 (requester id 0x18)
    // whose DMA is translated by it.
    let iommu = Iommu::new(IommuConfig::default());
    let unit: Arc<dyn IommuUnit> = Arc::new(VtdUnit::new(iommu.clone()));
    let rid = 0x18;
    let edu = Arc::new(EduDevice::with_options(EduOptions::new("0000:00:03.0")));
    edu.set_dma_target(Arc::new(IommuDmaTarget::for_device(&iommu, rid)));
    let group = Arc::new(Group {
        id: 3,
        kind: GroupKind::Iommu(unit),
        devices: vec![Arc::new(Device {
            name: "0000:00:03.0".into(),
            rid: Some(rid),
            model: edu.clone(),
        })],
        extra_reserved: Vec::new(),
    });

    // The type1 engine: attach the group, choose type1v2, map guest RAM.
    let container = Container::new(ContainerConfig::default(), ram.clone());
    container.attach_group(&group)?;
    container.set_iommu(TYPE1V2_IOMMU)?;
    container.map(IOVA, GUEST_RAM, GUEST_RAM_SIZE, Prot::RW)?;
    let info = container.info()?;
    println!(
        "mapped {} KiB at IOVA {IOVA:#x}; page sizes {:#x}; {} mappings left",
        GUEST_RAM_SIZE >> 10,
        info.pgsize_bitmap,
        info.dma_avail
    );

    // The guest driver: enable bus mastering, put a message in RAM, and have
    // the device copy it into its buffer and back to another place in RAM.
    edu.region_write(CONFIG_REGION, PCI_COMMAND, &0x0006u16.to_le_bytes())
        .map_err(|e| format!("config write: errno {e}"))?;
    let message = b"hello from guest RAM";
    ram.write(GUEST_RAM + 0x1000, message)?;
    let len = message.len() as u64;
    dma(&edu, IOVA + 0x1000, EDU_BUFFER, len, CMD_START)?;
    dma(&edu, EDU_BUFFER, IOVA + 0x2000, len, CMD_START | CMD_TO_RAM)?;
    let mut back = vec![0u8; message.len()];
    ram.read(GUEST_RAM + 0x2000, &mut back)?;
    println!("device copied: {:?}", String::from_utf8_lossy(&back));
    assert_eq!(&back, message);

    // After the unmap the device's DMA faults in the IOMMU: RAM is unchanged.
    let unmapped = container.unmap(IOVA, GUEST_RAM_SIZE)?;
    ram.write(GUEST_RAM + 0x3000, &[0u8; 32])?;
    dma(&edu, EDU_BUFFER, IOVA + 0x3000, len, CMD_START | CMD_TO_RAM)?;
    let mut after = vec![0u8; message.len()];
    ram.read(GUEST_RAM + 0x3000, &mut after)?;
    println!(
        "unmapped {unmapped} bytes; DMA afterwards reached RAM: {}; IOMMU faults logged: {}",
        after == message,
        iommu.fault_count()
    );
    assert!(after.iter().all(|&b| b == 0));
    container.check_invariants()?;
    container.detach_group(group.id);
    Ok(())
}

/// Programs one edu DMA transfer through BAR0, as a guest driver does.
fn dma(edu: &EduDevice, src: u64, dst: u64, count: u64, cmd: u64) -> Result<(), String> {
    for (reg, value) in [
        (DMA_SRC, src),
        (DMA_DST, dst),
        (DMA_COUNT, count),
        (DMA_CMD, cmd),
    ] {
        edu.region_write(0, reg, &value.to_le_bytes())
            .map_err(|e| format!("BAR0 write at {reg:#x}: errno {e}"))?;
    }
    Ok(())
}
