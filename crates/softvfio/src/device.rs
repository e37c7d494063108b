//! The device side of VFIO: what a device model offers through its device
//! file descriptor (vfio-pci style regions, interrupts, reset).

use crate::eventfd::EventfdArg;

/// `VFIO_PCI_*_REGION_INDEX` offsets are `index << 40` in the device fd.
pub const REGION_OFFSET_SHIFT: u32 = 40;

/// Region flags (`VFIO_REGION_INFO_FLAG_*`).
pub const REGION_FLAG_READ: u32 = 1 << 0;
/// `VFIO_REGION_INFO_FLAG_WRITE`.
pub const REGION_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_REGION_INFO_FLAG_MMAP`.
pub const REGION_FLAG_MMAP: u32 = 1 << 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
/// `VFIO_DEVICE_GET_REGION_INFO`'s answer for one region.
pub struct RegionInfo {
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Bytes in the region (0: the region does not exist).
    pub size: u64,
}

/// A capability of a region in `VFIO_DEVICE_GET_REGION_INFO`'s chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionCap {
    /// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`: only these (offset, size) areas
    /// of the region may be mapped.
    SparseMmap(Vec<(u64, u64)>),
    /// `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`: the BAR holds the MSI-X table
    /// and may be mapped whole anyway (vfio-pci since Linux 4.16).
    MsixMappable,
}

/// Why a load or store on a memory-mapped region cannot be performed: the
/// program gets the signal the kernel's fault handler would give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappedAccessError {
    /// `SIGBUS`: vfio-pci's fault handler refuses the page (memory
    /// decoding off, the device in a low-power state).
    Bus,
    /// Another errno of the model (reported as a bus error too).
    Errno(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
/// `VFIO_DEVICE_GET_IRQ_INFO`'s answer for one interrupt index.
pub struct IrqInfo {
    /// `VFIO_IRQ_INFO_*`.
    pub flags: u32,
    /// Interrupts (vectors) of the index.
    pub count: u32,
}

/// The action of a `VFIO_DEVICE_SET_IRQS` request (`VFIO_IRQ_SET_ACTION_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqAction {
    /// `VFIO_IRQ_SET_ACTION_MASK`.
    Mask,
    /// `VFIO_IRQ_SET_ACTION_UNMASK`.
    Unmask,
    /// `VFIO_IRQ_SET_ACTION_TRIGGER`.
    Trigger,
    /// No action bit, or more than one: vfio-pci finds no handler (ENOTTY).
    Unknown,
}

/// The data of a `VFIO_DEVICE_SET_IRQS` request, `count` entries.
#[derive(Debug)]
pub enum IrqData {
    /// `VFIO_IRQ_SET_DATA_NONE`.
    None,
    /// `VFIO_IRQ_SET_DATA_BOOL`: one flag per interrupt.
    Bool(Vec<bool>),
    /// `VFIO_IRQ_SET_DATA_EVENTFD`: one descriptor per interrupt.
    Eventfds(Vec<EventfdArg>),
}

/// A `VFIO_DEVICE_SET_IRQS` request that passed the generic checks of
/// `vfio_set_irqs_validate_and_prepare` (index, start/count against the
/// index's interrupt count, one data type, the data copied in).
#[derive(Debug)]
pub struct IrqSet {
    /// `VFIO_PCI_*_IRQ_INDEX`.
    pub index: u32,
    /// First interrupt (vector) of the index affected.
    pub start: u32,
    /// Interrupts affected (0 with DATA_NONE: disable the index).
    pub count: u32,
    /// What to do.
    pub action: IrqAction,
    /// With what.
    pub data: IrqData,
}

/// A `VFIO_DEVICE_IOEVENTFD` request after the generic checks (flags, one
/// size bit, fd >= -1).
#[derive(Debug)]
pub struct IoeventfdRequest {
    /// The region index (from the fd offset).
    pub region: u32,
    /// Offset within the region.
    pub offset: u64,
    /// The value written when the eventfd fires.
    pub data: u64,
    /// The access width: 1, 2, 4 or 8.
    pub size: u32,
    /// The eventfd, or `Negative(-1)` to remove a registration.
    pub fd: EventfdArg,
    /// The device itself, for the writes the eventfd triggers later.
    pub device: std::sync::Weak<dyn VfioDeviceModel>,
}

/// `VFIO_DEVICE_FEATURE` operations asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureOps {
    /// `VFIO_DEVICE_FEATURE_GET`.
    pub get: bool,
    /// `VFIO_DEVICE_FEATURE_SET`.
    pub set: bool,
    /// `VFIO_DEVICE_FEATURE_PROBE`.
    pub probe: bool,
}

/// A device-specific `VFIO_DEVICE_FEATURE` request (the features the vfio
/// core does not handle itself).
#[derive(Debug)]
pub struct FeatureRequest {
    /// `VFIO_DEVICE_FEATURE_*` number.
    pub feature: u32,
    /// GET, SET, PROBE as asked.
    pub ops: FeatureOps,
    /// The bytes after the header (`argsz - 16` of them).
    pub data: Vec<u8>,
    /// For features whose payload names an eventfd
    /// (`LOW_POWER_ENTRY_WITH_WAKEUP`): the first payload word resolved.
    pub eventfd: Option<EventfdArg>,
    /// Could the payload be read? (A handler that copies it in answers
    /// EFAULT when not.)
    pub payload_readable: bool,
    /// The caller's `argsz`.
    pub argsz: u32,
}

/// A device as its VFIO device fd shows it. Errors are errno values.
pub trait VfioDeviceModel: Send + Sync {
    /// The name `VFIO_GROUP_GET_DEVICE_FD` takes: a PCI address
    /// ("0000:00:03.0") or an mdev UUID.
    fn name(&self) -> &str;
    /// `VFIO_DEVICE_FLAGS_*` for `VFIO_DEVICE_GET_INFO`.
    fn flags(&self) -> u32;
    /// Regions of the device fd (`num_regions`).
    fn num_regions(&self) -> u32;
    /// Interrupt indexes (`num_irqs`).
    fn num_irqs(&self) -> u32;
    /// A region's info; `None` answers EINVAL.
    fn region_info(&self, index: u32) -> Option<RegionInfo>;
    /// An interrupt index's info; `None` answers EINVAL.
    fn irq_info(&self, index: u32) -> Option<IrqInfo>;
    /// Reads `buf.len()` bytes at `offset` of region `index`; returns the
    /// count read (short at the end of the region).
    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<usize, i32>;
    /// Writes `data` at `offset` of region `index`; returns the count
    /// written.
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<usize, i32>;
    /// The capabilities of region `index` (`VFIO_REGION_INFO_FLAG_CAPS`),
    /// in chain order.
    fn region_caps(&self, index: u32) -> Vec<RegionCap> {
        let _ = index;
        Vec::new()
    }
    /// One load of exactly `data.len()` (1, 2, 4 or 8) bytes at `offset` of
    /// a region mapped with `mmap` (a region whose info has
    /// `REGION_FLAG_MMAP`): what a CPU load on a real BAR mapping reaches,
    /// so no splitting into the chunks `pread` uses. The default goes
    /// through [`Self::region_read`].
    fn mapped_read(
        &self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), MappedAccessError> {
        match self.region_read(index, offset, data) {
            Ok(n) if n == data.len() => Ok(()),
            Ok(_) => Err(MappedAccessError::Bus),
            Err(e) => Err(MappedAccessError::Errno(e)),
        }
    }
    /// One store of exactly `data.len()` bytes on a mapped region.
    fn mapped_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), MappedAccessError> {
        match self.region_write(index, offset, data) {
            Ok(n) if n == data.len() => Ok(()),
            Ok(_) => Err(MappedAccessError::Bus),
            Err(e) => Err(MappedAccessError::Errno(e)),
        }
    }
    /// One read of `data.len()` (1, 2, 4 or 8) bytes at `offset` of region
    /// `index` by another device's DMA (peer to peer, [`crate::p2p`]):
    /// what a CPU load on a mapping gives, but never waiting for the
    /// device's lock. The default refuses it (Unsupported Request).
    fn peer_read(
        &self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), crate::p2p::PeerAccessError> {
        let _ = (index, offset, data);
        Err(crate::p2p::PeerAccessError::Refused)
    }
    /// One write by another device's DMA; see [`Self::peer_read`].
    fn peer_write(
        &self,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), crate::p2p::PeerAccessError> {
        let _ = (index, offset, data);
        Err(crate::p2p::PeerAccessError::Refused)
    }
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
    /// The emulated iommufd access of a device without an IOMMU bound
    /// through iommufd (its cdev, or a group on `/dev/iommu`), given after
    /// the bind and taken back with `None` before the unbind: a mediated
    /// device pins and reads memory through it instead of a container
    /// (Linux: `vfio_device->iommufd_access`). Others ignore it.
    fn attach_iommufd_access(&self, access: Option<std::sync::Arc<crate::iommufd::IommufdAccess>>) {
        let _ = access;
    }
    /// First open of the device fd (`open_device`).
    fn open_device(&self) {}
    /// Last close of the device fd (`close_device`): stop DMA, drop pins.
    fn close_device(&self) {}
    /// Does the device support shared virtual memory (PASID bind)?
    fn supports_svm(&self) -> bool {
        false
    }
    /// Does the device take `VFIO_DEVICE_SET_IRQS` and
    /// `VFIO_DEVICE_IOEVENTFD` as vfio-pci does (generic checks first)? A
    /// device whose driver lacks them answers ENOTTY to both.
    fn vfio_pci_irqs(&self) -> bool {
        false
    }
    /// `VFIO_DEVICE_SET_IRQS` after the generic checks.
    fn set_irqs(&self, set: IrqSet) -> Result<(), i32> {
        let _ = set;
        Err(libc::ENOTTY)
    }
    /// `VFIO_DEVICE_IOEVENTFD` after the generic checks.
    fn ioeventfd(&self, req: IoeventfdRequest) -> Result<(), i32> {
        let _ = req;
        Err(libc::ENOTTY)
    }
    /// A device-specific `VFIO_DEVICE_FEATURE` (the driver's
    /// `device_feature` op): the value the ioctl returns, or an errno. The
    /// payload to copy back for GET is left in `req.data`. A driver without
    /// the op answers EINVAL, as the VFIO core does.
    fn device_feature(&self, req: &mut FeatureRequest) -> Result<i64, i32> {
        let _ = req;
        Err(libc::EINVAL)
    }
    /// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` / `VFIO_DEVICE_PCI_HOT_RESET`:
    /// the errno of vfio-pci's probe for a slot or bus reset
    /// (`pci_probe_reset_slot`, then `pci_probe_reset_bus`). The emulated
    /// PCI functions sit on the root bus with no hotplug slot, where Linux
    /// finds neither: ENODEV. Devices that are not PCI functions do not
    /// know the requests: ENOTTY.
    fn hot_reset_probe(&self) -> i32 {
        libc::ENOTTY
    }
}
