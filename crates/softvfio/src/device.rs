//! The device side of VFIO: what a device model offers through its device
//! file descriptor (vfio-pci style regions, interrupts, reset).

#![allow(missing_docs)] // documented with the vfio-pci work

/// `VFIO_PCI_*_REGION_INDEX` offsets are `index << 40` in the device fd.
pub const REGION_OFFSET_SHIFT: u32 = 40;

/// Region flags (`VFIO_REGION_INFO_FLAG_*`).
pub const REGION_FLAG_READ: u32 = 1 << 0;
pub const REGION_FLAG_WRITE: u32 = 1 << 1;
pub const REGION_FLAG_MMAP: u32 = 1 << 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RegionInfo {
    pub flags: u32,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IrqInfo {
    pub flags: u32,
    pub count: u32,
}

/// A device as its VFIO device fd shows it. Errors are errno values.
pub trait VfioDeviceModel: Send + Sync {
    /// The name `VFIO_GROUP_GET_DEVICE_FD` takes: a PCI address
    /// ("0000:00:03.0") or an mdev UUID.
    fn name(&self) -> &str;
    /// `VFIO_DEVICE_FLAGS_*` for `VFIO_DEVICE_GET_INFO`.
    fn flags(&self) -> u32;
    fn num_regions(&self) -> u32;
    fn num_irqs(&self) -> u32;
    fn region_info(&self, index: u32) -> Option<RegionInfo>;
    fn irq_info(&self, index: u32) -> Option<IrqInfo>;
    /// Reads `buf.len()` bytes at `offset` of region `index`; returns the
    /// count read (short at the end of the region).
    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<usize, i32>;
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<usize, i32>;
    /// `VFIO_DEVICE_RESET`.
    fn reset(&self) -> Result<(), i32>;
    /// The container of the device's group, given at first open (before
    /// `open_device`) and taken back with `None` after the last close (after
    /// `close_device`). A mediated device pins and reads memory through it
    /// (Linux: `vfio_device->group->container`); devices behind an IOMMU
    /// ignore it.
    fn attach_container(&self, container: Option<std::sync::Arc<crate::Container>>) {
        let _ = container;
    }
    /// First open of the device fd (`open_device`).
    fn open_device(&self) {}
    /// Last close of the device fd (`close_device`): stop DMA, drop pins.
    fn close_device(&self) {}
    /// Does the device support shared virtual memory (PASID bind)?
    fn supports_svm(&self) -> bool {
        false
    }
}
