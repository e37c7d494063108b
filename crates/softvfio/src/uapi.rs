//! The byte-level VFIO ABI: the ioctls of `linux/vfio.h` on container, group
//! and device files, taking the caller's argument pointer and returning the
//! result or an errno, exactly as the kernel does.
//!
//! Front ends (the ptrace supervisor of `softvfio run`, an LD_PRELOAD
//! library, a vfio-user server) stay thin: they map a file descriptor to a
//! [`ContainerFile`], [`GroupFile`] or [`DeviceFile`] and call in here with a
//! [`UserMemory`] through which argument structs are copied in and out
//! (`copy_from_user`/`copy_to_user`). Struct layouts come from the
//! `vfio-bindings` crate; every size and offset below is derived from them.

use std::collections::HashMap;
use std::mem::{offset_of, size_of};
use std::sync::{Arc, Mutex, MutexGuard};

use vfio_bindings::bindings::vfio::{
    vfio_bitmap, vfio_device_info, vfio_group_status, vfio_info_cap_header,
    vfio_iommu_type1_dirty_bitmap, vfio_iommu_type1_dirty_bitmap_get, vfio_iommu_type1_dma_map,
    vfio_iommu_type1_dma_unmap, vfio_iommu_type1_info, vfio_iommu_type1_info_cap_iova_range,
    vfio_iommu_type1_info_cap_migration, vfio_iommu_type1_info_dma_avail, vfio_iova_range,
    vfio_irq_info, vfio_region_info, VFIO_API_VERSION, VFIO_IOMMU_INFO_CAPS,
    VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
    VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
};
use vfio_bindings::bindings::vfio::{
    VFIO_SPAPR_TCE_v2_IOMMU, VFIO_TYPE1v2_IOMMU, VFIO_DMA_CC_IOMMU, VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_VADDR, VFIO_DMA_MAP_FLAG_WRITE, VFIO_DMA_UNMAP_FLAG_ALL,
    VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, VFIO_DMA_UNMAP_FLAG_VADDR, VFIO_EEH, VFIO_NOIOMMU_IOMMU,
    VFIO_SPAPR_TCE_IOMMU, VFIO_TYPE1_IOMMU, VFIO_UNMAP_ALL, VFIO_UPDATE_VADDR,
};

use crate::container::{
    Container, ContainerConfig, Extension, IommuType, UnmapOp, UnmapRange, UserBitmap,
    USER_ADDR_LIMIT,
};
use crate::device::REGION_OFFSET_SHIFT;
use crate::dirty::verify_bitmap_size;
use crate::error::{Result, VfioError};
use crate::iommu::Prot;
use crate::memory::UserMemory;
use crate::pasid::{
    iommu_svm_tlb_invalidate_info, SvmRelease, INVALIDATE_INFO_MINSZ, PASID_LIMIT,
    PASID_TABLE_INFO_MINSZ, VFIO_DEVICE_BIND_TASK, VFIO_DEVICE_FLAGS_SVM, VFIO_DEVICE_SVM,
    VFIO_DEVICE_UNBIND_TASK, VFIO_SVM_BIND_PASIDTP, VFIO_SVM_DEV_PASID_RELEASE_CLEAN,
    VFIO_SVM_DEV_PASID_RELEASE_FLUSHED, VFIO_SVM_PASID_RELEASE_CLEAN,
    VFIO_SVM_PASID_RELEASE_FLUSHED, VFIO_SVM_PASSDOWN_INVALIDATE,
};
use crate::platform::{Device, Group, GroupKind, Platform};

/// `_IO(VFIO_TYPE, VFIO_BASE + n)`: VFIO ioctls carry no size or direction.
pub const fn vfio_io(n: u64) -> u64 {
    (0x3b << 8) | (100 + n)
}

/// `VFIO_GET_API_VERSION`.
pub const VFIO_GET_API_VERSION: u64 = vfio_io(0);
/// `VFIO_CHECK_EXTENSION`.
pub const VFIO_CHECK_EXTENSION: u64 = vfio_io(1);
/// `VFIO_SET_IOMMU`.
pub const VFIO_SET_IOMMU: u64 = vfio_io(2);
/// `VFIO_GROUP_GET_STATUS`.
pub const VFIO_GROUP_GET_STATUS: u64 = vfio_io(3);
/// `VFIO_GROUP_SET_CONTAINER`.
pub const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
/// `VFIO_GROUP_UNSET_CONTAINER`.
pub const VFIO_GROUP_UNSET_CONTAINER: u64 = vfio_io(5);
/// `VFIO_GROUP_GET_DEVICE_FD`.
pub const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
/// `VFIO_DEVICE_GET_INFO`.
pub const VFIO_DEVICE_GET_INFO: u64 = vfio_io(7);
/// `VFIO_DEVICE_GET_REGION_INFO`.
pub const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
/// `VFIO_DEVICE_GET_IRQ_INFO`.
pub const VFIO_DEVICE_GET_IRQ_INFO: u64 = vfio_io(9);
/// `VFIO_DEVICE_SET_IRQS`.
pub const VFIO_DEVICE_SET_IRQS: u64 = vfio_io(10);
/// `VFIO_DEVICE_RESET`.
pub const VFIO_DEVICE_RESET: u64 = vfio_io(11);
/// `VFIO_IOMMU_GET_INFO`.
pub const VFIO_IOMMU_GET_INFO: u64 = vfio_io(12);
/// `VFIO_IOMMU_MAP_DMA`.
pub const VFIO_IOMMU_MAP_DMA: u64 = vfio_io(13);
/// `VFIO_IOMMU_UNMAP_DMA`.
pub const VFIO_IOMMU_UNMAP_DMA: u64 = vfio_io(14);
/// `VFIO_IOMMU_DIRTY_PAGES`.
pub const VFIO_IOMMU_DIRTY_PAGES: u64 = vfio_io(17);

/// `VFIO_SET_IOMMU` / `VFIO_CHECK_EXTENSION` arguments: the IOMMU types
/// and extensions (vfio-bindings' values, as `u64` like the ioctl's
/// argument).
pub const TYPE1_IOMMU: u64 = VFIO_TYPE1_IOMMU as u64;
/// `VFIO_SPAPR_TCE_IOMMU`.
pub const SPAPR_TCE_IOMMU: u64 = VFIO_SPAPR_TCE_IOMMU as u64;
/// `VFIO_TYPE1v2_IOMMU`.
pub const TYPE1V2_IOMMU: u64 = VFIO_TYPE1v2_IOMMU as u64;
/// `VFIO_DMA_CC_IOMMU`.
pub const DMA_CC_IOMMU: u64 = VFIO_DMA_CC_IOMMU as u64;
/// `VFIO_EEH`.
pub const EEH: u64 = VFIO_EEH as u64;
/// `VFIO_TYPE1_NESTING_IOMMU` (6; gone from the newer headers vfio-bindings
/// follows, still in 6.1's).
pub const TYPE1_NESTING_IOMMU: u64 = 6;
/// `VFIO_SPAPR_TCE_v2_IOMMU`.
pub const SPAPR_TCE_V2_IOMMU: u64 = VFIO_SPAPR_TCE_v2_IOMMU as u64;
/// `VFIO_NOIOMMU_IOMMU`.
pub const NOIOMMU_IOMMU: u64 = VFIO_NOIOMMU_IOMMU as u64;
/// `VFIO_UNMAP_ALL`.
pub const UNMAP_ALL: u64 = VFIO_UNMAP_ALL as u64;
/// `VFIO_UPDATE_VADDR`.
pub const UPDATE_VADDR: u64 = VFIO_UPDATE_VADDR as u64;

/// `VFIO_DMA_MAP_FLAG_READ`.
pub const MAP_FLAG_READ: u32 = VFIO_DMA_MAP_FLAG_READ;
/// `VFIO_DMA_MAP_FLAG_WRITE`.
pub const MAP_FLAG_WRITE: u32 = VFIO_DMA_MAP_FLAG_WRITE;
/// `VFIO_DMA_MAP_FLAG_VADDR`.
pub const MAP_FLAG_VADDR: u32 = VFIO_DMA_MAP_FLAG_VADDR;
/// `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`.
pub const UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
/// `VFIO_DMA_UNMAP_FLAG_ALL`.
pub const UNMAP_FLAG_ALL: u32 = VFIO_DMA_UNMAP_FLAG_ALL;
/// `VFIO_DMA_UNMAP_FLAG_VADDR`.
pub const UNMAP_FLAG_VADDR: u32 = VFIO_DMA_UNMAP_FLAG_VADDR;

impl From<u64> for IommuType {
    /// The `VFIO_SET_IOMMU` argument.
    fn from(arg: u64) -> Self {
        match arg {
            TYPE1_IOMMU => IommuType::Type1,
            TYPE1V2_IOMMU => IommuType::Type1v2,
            TYPE1_NESTING_IOMMU => IommuType::Type1Nesting,
            other => IommuType::Other(other),
        }
    }
}

impl From<u64> for Extension {
    /// The `VFIO_CHECK_EXTENSION` argument.
    fn from(arg: u64) -> Self {
        match arg {
            TYPE1_IOMMU | TYPE1V2_IOMMU | TYPE1_NESTING_IOMMU => {
                Extension::Iommu(IommuType::from(arg))
            }
            UNMAP_ALL => Extension::UnmapAll,
            UPDATE_VADDR => Extension::UpdateVaddr,
            DMA_CC_IOMMU => Extension::DmaCacheCoherency,
            other => Extension::Other(other),
        }
    }
}

/// Does `asked` (the `VFIO_GROUP_GET_DEVICE_FD` argument) name the device
/// called `name`? An mdev is matched by its UUID exactly (6.1's default
/// `strcmp`); a PCI device as `vfio_pci_core_match` does: its address,
/// optionally followed by a space and options. Spaces alone after the
/// address match (Linux 6.1: a descriptor for "0000:00:03.0 "); any option
/// is an error here (`vf_token=` is for SR-IOV PFs and VFs, which the
/// platform has none of: EINVAL, as the kernel answers for a device that is
/// neither); anything else right after the address is another name.
fn device_name_matches(name: &str, asked: &str) -> Result<bool> {
    let is_pci = name.len() == 12 && name.as_bytes().get(4) == Some(&b':');
    if !is_pci {
        return Ok(name == asked);
    }
    let Some(rest) = asked.strip_prefix(name) else {
        return Ok(false);
    };
    if rest.is_empty() {
        return Ok(true);
    }
    if !rest.starts_with(' ') {
        return Ok(false);
    }
    if rest.bytes().all(|b| b == b' ') {
        return Ok(true);
    }
    Err(VfioError::Invalid("unrecognized device option"))
}

/// `VFIO_IOMMU_MAP_DMA` once its struct is copied in: decodes `flags` (EINVAL
/// for an unknown bit, or unless exactly one of a protection and
/// `VFIO_DMA_MAP_FLAG_VADDR` is given) and asks the engine. Also for tests
/// and fuzzers that speak the ABI's flags without the bytes.
pub fn map_dma(c: &Container, iova: u64, vaddr: u64, size: u64, flags: u32) -> Result<()> {
    map_dma_as(c, iova, vaddr, size, flags, None)
}

/// [`map_dma`] made by the address space `caller` (the calling program's
/// [`UserMemory::shared`] handle, when it has one): see
/// [`Container::map_as`].
pub fn map_dma_as(
    c: &Container,
    iova: u64,
    vaddr: u64,
    size: u64,
    flags: u32,
    caller: Option<&Arc<dyn UserMemory>>,
) -> Result<()> {
    if flags & !(MAP_FLAG_READ | MAP_FLAG_WRITE | MAP_FLAG_VADDR) != 0 {
        return Err(VfioError::Invalid("unknown map flags"));
    }
    let prot = Prot {
        read: flags & MAP_FLAG_READ != 0,
        write: flags & MAP_FLAG_WRITE != 0,
    };
    match (prot.read || prot.write, flags & MAP_FLAG_VADDR != 0, caller) {
        (true, false, Some(m)) => c.map_as(iova, vaddr, size, prot, m),
        (true, false, None) => c.map(iova, vaddr, size, prot),
        (false, true, Some(m)) => c.update_vaddr_as(iova, vaddr, size, m),
        (false, true, None) => c.update_vaddr(iova, vaddr, size),
        _ => Err(VfioError::Invalid("need exactly one of prot and VADDR")),
    }
}

/// `VFIO_IOMMU_UNMAP_DMA` once its struct (and bitmap) are copied in:
/// decodes `flags` (EINVAL for an unknown bit, a dirty bitmap with ALL or
/// VADDR, a missing bitmap, or ALL with a range) and asks the engine.
/// Returns the bytes unmapped.
pub fn unmap_dma(
    c: &Container,
    iova: u64,
    size: u64,
    flags: u32,
    bitmap: Option<UserBitmap>,
) -> Result<u64> {
    let known = UNMAP_FLAG_GET_DIRTY_BITMAP | UNMAP_FLAG_ALL | UNMAP_FLAG_VADDR;
    if flags & !known != 0 {
        return Err(VfioError::Invalid("unknown unmap flags"));
    }
    let dirty = flags & UNMAP_FLAG_GET_DIRTY_BITMAP != 0;
    if dirty && flags & (UNMAP_FLAG_ALL | UNMAP_FLAG_VADDR) != 0 {
        return Err(VfioError::Invalid("dirty bitmap with ALL or VADDR"));
    }
    let range = if flags & UNMAP_FLAG_ALL != 0 {
        if iova != 0 || size != 0 {
            return Err(VfioError::Invalid("UNMAP_ALL takes no range"));
        }
        UnmapRange::All
    } else {
        UnmapRange::Range { iova, size }
    };
    let op = match (dirty, bitmap) {
        (true, Some(b)) => UnmapOp::UnmapGetDirty(b),
        (true, None) => return Err(VfioError::Invalid("dirty bitmap missing")),
        (false, _) if flags & UNMAP_FLAG_VADDR != 0 => UnmapOp::InvalidateVaddr,
        (false, _) => UnmapOp::Unmap,
    };
    c.unmap_dma(range, op)
}

/// `VFIO_GROUP_FLAGS_*`.
pub const GROUP_FLAGS_VIABLE: u32 = 1 << 0;
/// `VFIO_GROUP_FLAGS_CONTAINER_SET`.
pub const GROUP_FLAGS_CONTAINER_SET: u32 = 1 << 1;

/// `VFIO_IOMMU_DIRTY_PAGES_FLAG_*`.
pub const DIRTY_PAGES_FLAG_START: u32 = 1 << 0;
/// `VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP_TRACKING`.
pub const DIRTY_PAGES_FLAG_STOP: u32 = 1 << 1;
/// `VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP`.
pub const DIRTY_PAGES_FLAG_GET_BITMAP: u32 = 1 << 2;

/// The kernel's PAGE_SIZE bound on the device name string.
const DEVICE_NAME_MAX: usize = 4096;

/// `offsetofend(type, field)`.
macro_rules! end_of {
    ($t:ty, $f:ident) => {{
        // The field's size, found through a never-called projection.
        const fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
            size_of::<F>()
        }
        offset_of!($t, $f) + field_size(|s: &$t| &s.$f)
    }};
}

/// A little-endian view of an argument struct copied in from user memory.
pub(crate) struct Wire(pub(crate) Vec<u8>);

impl Wire {
    /// `copy_from_user(len bytes at addr)`.
    pub(crate) fn read(user: &dyn UserMemory, addr: u64, len: usize) -> Result<Wire> {
        let mut buf = vec![0u8; len];
        user.read(addr, &mut buf).map_err(|_| VfioError::Fault)?;
        Ok(Wire(buf))
    }

    /// `copy_from_user` of an argument struct whose first field is `argsz`:
    /// EINVAL when the caller's argsz is below `minsz`.
    pub(crate) fn read_args(user: &dyn UserMemory, addr: u64, minsz: usize) -> Result<Wire> {
        let w = Wire::read(user, addr, minsz)?;
        if (w.u32_at(0) as usize) < minsz {
            return Err(VfioError::Invalid("argsz too small"));
        }
        Ok(w)
    }

    pub(crate) fn u32_at(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        if let Some(s) = self.0.get(off..off + 4) {
            b.copy_from_slice(s);
        }
        u32::from_ne_bytes(b)
    }

    pub(crate) fn u64_at(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        if let Some(s) = self.0.get(off..off + 8) {
            b.copy_from_slice(s);
        }
        u64::from_ne_bytes(b)
    }

    pub(crate) fn put_u16(&mut self, off: usize, v: u16) {
        if let Some(s) = self.0.get_mut(off..off + 2) {
            s.copy_from_slice(&v.to_ne_bytes());
        }
    }

    pub(crate) fn put_u32(&mut self, off: usize, v: u32) {
        if let Some(s) = self.0.get_mut(off..off + 4) {
            s.copy_from_slice(&v.to_ne_bytes());
        }
    }

    pub(crate) fn put_u64(&mut self, off: usize, v: u64) {
        if let Some(s) = self.0.get_mut(off..off + 8) {
            s.copy_from_slice(&v.to_ne_bytes());
        }
    }

    /// `copy_to_user` of the first `len` bytes.
    pub(crate) fn write_back(&self, user: &dyn UserMemory, addr: u64, len: usize) -> Result<()> {
        let len = len.min(self.0.len());
        user.write(addr, &self.0[..len])
            .map_err(|_| VfioError::Fault)
    }
}

/// The kernel's `access_ok`: a user range must lie below the user limit.
fn access_ok(addr: u64, size: u64) -> bool {
    addr.checked_add(size)
        .is_some_and(|end| end <= USER_ADDR_LIMIT)
}

/// What a successful ioctl returns to the caller.
pub enum IoctlOutcome {
    /// The system call's return value.
    Value(i64),
    /// `VFIO_GROUP_GET_DEVICE_FD`: the front end installs a new file
    /// descriptor for this device and returns its number.
    Device(DeviceFile),
}

/// What a file descriptor named in `VFIO_GROUP_SET_CONTAINER` refers to.
pub enum FdLookup {
    /// Not an open descriptor (EBADF).
    NotOpen,
    /// Open, but not a VFIO container (EINVAL).
    NotContainer,
    /// The descriptor is a container.
    Container(ContainerFile),
    /// The descriptor is `/dev/iommu` (the group's devices are bound to it
    /// and attached to its compatibility IOAS when opened).
    Iommufd(Arc<crate::iommufd::Iommufd>),
}

/// An open `/dev/vfio/vfio`.
#[derive(Clone)]
pub struct ContainerFile {
    /// The container (type1 state) behind the file.
    pub container: Arc<Container>,
}

/// An open `/dev/vfio/<group>`.
#[derive(Clone)]
pub struct GroupFile {
    /// The group behind the file.
    pub group: Arc<Group>,
}

/// An open device fd.
#[derive(Clone)]
pub struct DeviceFile {
    /// The device's group.
    pub group: Arc<Group>,
    /// The device.
    pub device: Arc<Device>,
}

/// Per-group open state (the kernel's `struct vfio_group` bookkeeping).
#[derive(Default)]
struct GroupState {
    /// The group file is open (only one open at a time).
    file_open: bool,
    container: Option<Arc<Container>>,
    /// Open device fds of the group; each holds the group file.
    open_devices: usize,
    /// Open count per device name (open_device/close_device).
    device_opens: HashMap<String, usize>,
    /// Devices of the group bound to an iommufd through their cdev: the
    /// group cannot be opened meanwhile (`vfio_device_block_group`).
    cdev_bound: usize,
    /// The iommufd `VFIO_GROUP_SET_CONTAINER` named instead of a container.
    iommufd: Option<Arc<crate::iommufd::Iommufd>>,
    /// Device ids in that iommufd of the group's open devices, by name.
    iommufd_devices: HashMap<String, u32>,
}

/// The VFIO subsystem over one platform: what `/dev/vfio` exposes.
pub struct Vfio {
    platform: Arc<Platform>,
    groups: Mutex<HashMap<u32, GroupState>>,
    /// The DMA sanitizer new containers record into, if one runs.
    sanitizer: std::sync::OnceLock<Arc<crate::sanitizer::Sanitizer>>,
}

impl Vfio {
    /// The VFIO subsystem over `platform`, with nothing open.
    pub fn new(platform: Arc<Platform>) -> Self {
        Self {
            platform,
            groups: Mutex::new(HashMap::new()),
            sanitizer: std::sync::OnceLock::new(),
        }
    }

    /// Records the DMA history of every container opened from now on in
    /// `s` (`softvfio run --sanitize`); once.
    pub fn set_sanitizer(&self, s: Arc<crate::sanitizer::Sanitizer>) {
        let _ = self.sanitizer.set(s);
    }

    /// The sanitizer, if one runs.
    pub fn sanitizer(&self) -> Option<&Arc<crate::sanitizer::Sanitizer>> {
        self.sanitizer.get()
    }

    /// The platform served.
    pub fn platform(&self) -> &Arc<Platform> {
        &self.platform
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<u32, GroupState>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The containers currently attached to groups (for `inspect`).
    pub fn attached_containers(&self) -> Vec<Arc<Container>> {
        let mut out: Vec<Arc<Container>> = Vec::new();
        for st in self.groups().values() {
            if let Some(c) = &st.container {
                if !out.iter().any(|o| Arc::ptr_eq(o, c)) {
                    out.push(c.clone());
                }
            }
        }
        out
    }

    // ---- open / release ---------------------------------------------------

    /// `open("/dev/vfio/vfio")`: a new container whose mappings pin `mem`.
    pub fn open_container(&self, mem: Arc<dyn UserMemory>) -> ContainerFile {
        let cfg = ContainerConfig {
            dma_entry_limit: self.platform.dma_entry_limit,
            precise_dirty: self.platform.precise_dirty,
        };
        let container = Container::new(cfg, mem);
        if let Some(s) = self.sanitizer.get() {
            container.set_sanitizer(s.clone());
        }
        ContainerFile { container }
    }

    /// `open("/dev/vfio/<id>")`: ENOENT for no such group, EBUSY when the
    /// group is open already.
    pub fn open_group(&self, id: u32) -> Result<GroupFile> {
        let group = self.platform.group(id).cloned().ok_or(VfioError::NoEntry)?;
        let mut groups = self.groups();
        let st = groups.entry(id).or_default();
        // A group file may be open once; devices keep it alive after close.
        if st.file_open || st.open_devices > 0 || st.cdev_bound > 0 {
            return Err(VfioError::Busy(
                "group already open or a device bound via its cdev",
            ));
        }
        st.file_open = true;
        Ok(GroupFile { group })
    }

    /// Last close of a container fd. Groups still attached keep it alive.
    pub fn release_container(&self, file: ContainerFile) {
        if file.container.group_count() == 0 {
            file.container.close();
        }
    }

    /// Last close of a group fd: the group leaves its container once no
    /// device fd holds it.
    pub fn release_group(&self, file: GroupFile) {
        let mut groups = self.groups();
        if let Some(st) = groups.get_mut(&file.group.id) {
            st.file_open = false;
            if st.open_devices == 0 {
                if let Some(c) = st.container.take() {
                    c.detach_group(file.group.id);
                }
                st.iommufd = None;
            }
        }
    }

    /// Last close of a device fd.
    pub fn release_device(&self, file: DeviceFile) {
        let mut groups = self.groups();
        let Some(st) = groups.get_mut(&file.group.id) else {
            return;
        };
        st.open_devices = st.open_devices.saturating_sub(1);
        if let Some(n) = st.device_opens.get_mut(&file.device.name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.device_opens.remove(&file.device.name);
                file.device.model.close_device();
                file.device.model.attach_container(None);
                if let (Some(ctx), Some(dev_id)) =
                    (&st.iommufd, st.iommufd_devices.remove(&file.device.name))
                {
                    file.device.model.attach_iommufd_access(None);
                    ctx.unbind(dev_id);
                }
                // Shared virtual memory bonds end with the last close.
                if let (GroupKind::Iommu(unit), Some(rid)) = (&file.group.kind, file.device.rid) {
                    unit.release_pasids(rid);
                }
            }
        }
        if st.open_devices == 0 && !st.file_open {
            if let Some(c) = st.container.take() {
                c.detach_group(file.group.id);
            }
            st.iommufd = None;
        }
    }

    /// Binding a device through its cdev: EBUSY while its group is open
    /// (or one of its devices through it); opens the device model on its
    /// first open.
    pub(crate) fn cdev_open_device(&self, group: &Group, device: &Device) -> Result<()> {
        let mut groups = self.groups();
        let st = groups.entry(group.id).or_default();
        if st.file_open || st.open_devices > 0 {
            return Err(VfioError::Busy("the group is open"));
        }
        st.cdev_bound += 1;
        let opens = st.device_opens.entry(device.name.clone()).or_insert(0);
        *opens += 1;
        if *opens == 1 {
            device.model.open_device();
        }
        Ok(())
    }

    /// Last close of a bound cdev: the reverse of `cdev_open_device`.
    pub(crate) fn cdev_close_device(&self, group: &Group, device: &Device) {
        let mut groups = self.groups();
        let Some(st) = groups.get_mut(&group.id) else {
            return;
        };
        st.cdev_bound = st.cdev_bound.saturating_sub(1);
        if let Some(n) = st.device_opens.get_mut(&device.name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.device_opens.remove(&device.name);
                device.model.close_device();
                if let (GroupKind::Iommu(unit), Some(rid)) = (&group.kind, device.rid) {
                    unit.release_pasids(rid);
                }
            }
        }
    }

    // ---- container ioctls -------------------------------------------------

    /// An ioctl on a container fd.
    pub fn container_ioctl(
        &self,
        file: &ContainerFile,
        request: u64,
        arg: u64,
        user: &dyn UserMemory,
    ) -> Result<i64> {
        let c = &file.container;
        match request {
            VFIO_GET_API_VERSION => Ok(i64::from(VFIO_API_VERSION)),
            VFIO_CHECK_EXTENSION => Ok(i64::from(c.check_extension(arg))),
            VFIO_SET_IOMMU => c.set_iommu(arg).map(|()| 0),
            _ if !c.iommu_set() => Err(VfioError::Invalid("no IOMMU driver set")),
            VFIO_IOMMU_GET_INFO => self.iommu_get_info(c, arg, user).map(|()| 0),
            VFIO_IOMMU_MAP_DMA => self.iommu_map_dma(c, arg, user).map(|()| 0),
            VFIO_IOMMU_UNMAP_DMA => self.iommu_unmap_dma(c, arg, user).map(|()| 0),
            VFIO_IOMMU_DIRTY_PAGES => self.iommu_dirty_pages(c, arg, user).map(|()| 0),
            _ => Err(VfioError::NoTty),
        }
    }

    fn iommu_get_info(&self, c: &Container, arg: u64, user: &dyn UserMemory) -> Result<()> {
        let info_size = size_of::<vfio_iommu_type1_info>();
        let mut minsz = end_of!(vfio_iommu_type1_info, iova_pgsizes);
        // Older callers do not know cap_offset: it cannot be required.
        let capsz = end_of!(vfio_iommu_type1_info, cap_offset);
        let mut w = Wire::read(user, arg, minsz)?;
        w.0.resize(info_size, 0);
        let argsz = w.u32_at(offset_of!(vfio_iommu_type1_info, argsz));
        if (argsz as usize) < minsz {
            return Err(VfioError::Invalid("argsz too small"));
        }
        if argsz as usize >= capsz {
            minsz = capsz;
            w.put_u32(offset_of!(vfio_iommu_type1_info, cap_offset), 0);
        }
        let info = c.info()?;
        let mut flags = VFIO_IOMMU_INFO_PGSIZES;
        w.put_u64(
            offset_of!(vfio_iommu_type1_info, iova_pgsizes),
            info.pgsize_bitmap,
        );

        let caps = build_info_caps(&info);
        if !caps.is_empty() {
            flags |= VFIO_IOMMU_INFO_CAPS;
            let need = (info_size + caps.len()) as u32;
            if argsz < need {
                // Tell the caller how much room the capabilities need.
                w.put_u32(offset_of!(vfio_iommu_type1_info, argsz), need);
            } else {
                let mut chain = caps;
                shift_cap_chain(&mut chain, info_size as u32);
                user.write(arg + info_size as u64, &chain)
                    .map_err(|_| VfioError::Fault)?;
                w.put_u32(
                    offset_of!(vfio_iommu_type1_info, cap_offset),
                    info_size as u32,
                );
            }
        }
        w.put_u32(offset_of!(vfio_iommu_type1_info, flags), flags);
        w.write_back(user, arg, minsz)
    }

    fn iommu_map_dma(&self, c: &Container, arg: u64, user: &dyn UserMemory) -> Result<()> {
        let minsz = end_of!(vfio_iommu_type1_dma_map, size);
        let w = Wire::read(user, arg, minsz)?;
        let argsz = w.u32_at(offset_of!(vfio_iommu_type1_dma_map, argsz));
        let flags = w.u32_at(offset_of!(vfio_iommu_type1_dma_map, flags));
        let mask = MAP_FLAG_READ | MAP_FLAG_WRITE | MAP_FLAG_VADDR;
        if (argsz as usize) < minsz || flags & !mask != 0 {
            return Err(VfioError::Invalid("bad argsz or unknown flags"));
        }
        map_dma_as(
            c,
            w.u64_at(offset_of!(vfio_iommu_type1_dma_map, iova)),
            w.u64_at(offset_of!(vfio_iommu_type1_dma_map, vaddr)),
            w.u64_at(offset_of!(vfio_iommu_type1_dma_map, size)),
            flags,
            user.shared().as_ref(),
        )
    }

    fn iommu_unmap_dma(&self, c: &Container, arg: u64, user: &dyn UserMemory) -> Result<()> {
        let minsz = end_of!(vfio_iommu_type1_dma_unmap, size);
        let mut w = Wire::read(user, arg, minsz)?;
        let argsz = w.u32_at(offset_of!(vfio_iommu_type1_dma_unmap, argsz));
        let flags = w.u32_at(offset_of!(vfio_iommu_type1_dma_unmap, flags));
        let iova = w.u64_at(offset_of!(vfio_iommu_type1_dma_unmap, iova));
        let size = w.u64_at(offset_of!(vfio_iommu_type1_dma_unmap, size));
        let mask = UNMAP_FLAG_GET_DIRTY_BITMAP | UNMAP_FLAG_VADDR | UNMAP_FLAG_ALL;
        if (argsz as usize) < minsz || flags & !mask != 0 {
            return Err(VfioError::Invalid("bad argsz or unknown flags"));
        }
        if flags & UNMAP_FLAG_GET_DIRTY_BITMAP != 0
            && flags & (UNMAP_FLAG_ALL | UNMAP_FLAG_VADDR) != 0
        {
            return Err(VfioError::Invalid("dirty bitmap with ALL or VADDR"));
        }
        let mut bitmap = None;
        if flags & UNMAP_FLAG_GET_DIRTY_BITMAP != 0 {
            let bsz = size_of::<vfio_bitmap>();
            if (argsz as usize) < minsz + bsz {
                return Err(VfioError::Invalid("argsz has no room for the bitmap"));
            }
            let b = read_bitmap(user, arg + minsz as u64)?;
            if !access_ok(b.data, b.size) {
                return Err(VfioError::Invalid("bitmap outside user memory"));
            }
            verify_bitmap_size(size.checked_shr(pgshift(b.pgsize)).unwrap_or(0), b.size)?;
            bitmap = Some(b);
        }
        let unmapped = unmap_dma(c, iova, size, flags, bitmap)?;
        w.put_u64(offset_of!(vfio_iommu_type1_dma_unmap, size), unmapped);
        w.write_back(user, arg, minsz)
    }

    fn iommu_dirty_pages(&self, c: &Container, arg: u64, user: &dyn UserMemory) -> Result<()> {
        if c.is_v2() == Some(false) {
            return Err(VfioError::Access("dirty tracking needs type1v2"));
        }
        let minsz = end_of!(vfio_iommu_type1_dirty_bitmap, flags);
        let w = Wire::read(user, arg, minsz)?;
        let argsz = w.u32_at(offset_of!(vfio_iommu_type1_dirty_bitmap, argsz));
        let flags = w.u32_at(offset_of!(vfio_iommu_type1_dirty_bitmap, flags));
        let mask = DIRTY_PAGES_FLAG_START | DIRTY_PAGES_FLAG_STOP | DIRTY_PAGES_FLAG_GET_BITMAP;
        if (argsz as usize) < minsz || flags & !mask != 0 {
            return Err(VfioError::Invalid("bad argsz or unknown flags"));
        }
        // Exactly one operation per call.
        if flags.count_ones() != 1 {
            return Err(VfioError::Invalid("exactly one dirty-pages flag"));
        }
        if flags & DIRTY_PAGES_FLAG_START != 0 {
            return c.dirty_start();
        }
        if flags & DIRTY_PAGES_FLAG_STOP != 0 {
            return c.dirty_stop();
        }
        let data_size = (argsz as usize).saturating_sub(minsz);
        let get_size = size_of::<vfio_iommu_type1_dirty_bitmap_get>();
        if data_size < get_size {
            return Err(VfioError::Invalid("argsz has no room for the range"));
        }
        let g = Wire::read(user, arg + minsz as u64, get_size)?;
        let iova = g.u64_at(offset_of!(vfio_iommu_type1_dirty_bitmap_get, iova));
        let size = g.u64_at(offset_of!(vfio_iommu_type1_dirty_bitmap_get, size));
        let b = read_bitmap(
            user,
            arg + (minsz + offset_of!(vfio_iommu_type1_dirty_bitmap_get, bitmap)) as u64,
        )?;
        if iova.checked_add(size).is_none() {
            return Err(VfioError::Invalid("range wraps"));
        }
        if !access_ok(b.data, b.size) {
            return Err(VfioError::Invalid("bitmap outside user memory"));
        }
        verify_bitmap_size(size.checked_shr(pgshift(b.pgsize)).unwrap_or(0), b.size)?;
        c.dirty_get_bitmap(iova, size, b)
    }

    // ---- group ioctls -----------------------------------------------------

    /// An ioctl on a group fd. `lookup_fd` resolves the container fd number
    /// passed to `VFIO_GROUP_SET_CONTAINER` in the caller's fd table.
    pub fn group_ioctl(
        &self,
        file: &GroupFile,
        request: u64,
        arg: u64,
        user: &dyn UserMemory,
        lookup_fd: &mut dyn FnMut(i32) -> FdLookup,
    ) -> Result<IoctlOutcome> {
        let id = file.group.id;
        match request {
            VFIO_GROUP_GET_STATUS => {
                let minsz = end_of!(vfio_group_status, flags);
                let mut w = Wire::read_args(user, arg, minsz)?;
                let attached = self
                    .groups()
                    .get(&id)
                    .is_some_and(|s| s.container.is_some() || s.iommufd.is_some());
                let flags = if attached {
                    GROUP_FLAGS_VIABLE | GROUP_FLAGS_CONTAINER_SET
                } else {
                    GROUP_FLAGS_VIABLE
                };
                w.put_u32(offset_of!(vfio_group_status, flags), flags);
                w.write_back(user, arg, minsz)?;
                Ok(IoctlOutcome::Value(0))
            }
            VFIO_GROUP_SET_CONTAINER => {
                let w = Wire::read(user, arg, 4)?;
                // A negative fd is simply not open (fdget fails): EBADF.
                let fd = w.u32_at(0) as i32;
                if fd < 0 {
                    return Err(VfioError::BadFd);
                }
                let container = match lookup_fd(fd) {
                    FdLookup::NotOpen => return Err(VfioError::BadFd),
                    FdLookup::NotContainer => return Err(VfioError::Invalid("not a container fd")),
                    FdLookup::Container(c) => c.container,
                    FdLookup::Iommufd(ctx) => {
                        let mut groups = self.groups();
                        let st = groups.entry(id).or_default();
                        if st.container.is_some() || st.iommufd.is_some() {
                            return Err(VfioError::Invalid("group already has a container"));
                        }
                        // iommufd_vfio_compat_ioas_create: the IOAS the
                        // group's devices attach to exists from now on.
                        ctx.compat_ioas_get_or_create()?;
                        st.iommufd = Some(ctx);
                        return Ok(IoctlOutcome::Value(0));
                    }
                };
                let mut groups = self.groups();
                let st = groups.entry(id).or_default();
                if st.container.is_some() || st.iommufd.is_some() {
                    return Err(VfioError::Invalid("group already has a container"));
                }
                container.attach_group(&file.group)?;
                st.container = Some(container);
                Ok(IoctlOutcome::Value(0))
            }
            VFIO_GROUP_UNSET_CONTAINER => {
                let mut groups = self.groups();
                let st = groups.entry(id).or_default();
                if st.iommufd.is_some() && st.container.is_none() {
                    if st.open_devices > 0 {
                        return Err(VfioError::Busy("devices of the group are open"));
                    }
                    st.iommufd = None;
                    return Ok(IoctlOutcome::Value(0));
                }
                let Some(c) = st.container.clone() else {
                    return Err(VfioError::Invalid("no container set"));
                };
                if st.open_devices > 0 {
                    return Err(VfioError::Busy("devices of the group are open"));
                }
                st.container = None;
                drop(groups);
                c.detach_group(id);
                Ok(IoctlOutcome::Value(0))
            }
            VFIO_GROUP_GET_DEVICE_FD => {
                let name = read_cstring(user, arg, DEVICE_NAME_MAX)?;
                let mut found = None;
                for d in &file.group.devices {
                    if device_name_matches(&d.name, &name)? {
                        found = Some(d.clone());
                        break;
                    }
                }
                let device = found.ok_or(VfioError::NoDevice)?;
                let mut groups = self.groups();
                let st = groups.entry(id).or_default();
                if let Some(ctx) = st.iommufd.clone() {
                    // Through iommufd: the device is bound to it and
                    // attached to its compatibility IOAS (vfio_df_open).
                    if !st.device_opens.contains_key(&device.name) {
                        let dev_id = ctx.bind(&file.group, &device);
                        let attached = ctx
                            .compat_ioas_get_or_create()
                            .and_then(|ioas| ctx.attach(dev_id, ioas));
                        if let Err(e) = attached {
                            ctx.unbind(dev_id);
                            return Err(e);
                        }
                        if ctx.is_access(dev_id) {
                            device.model.attach_iommufd_access(Some(
                                crate::iommufd::IommufdAccess::new(&ctx, dev_id),
                            ));
                        }
                        st.iommufd_devices.insert(device.name.clone(), dev_id);
                        device.model.open_device();
                    }
                    *st.device_opens.entry(device.name.clone()).or_insert(0) += 1;
                    st.open_devices += 1;
                    return Ok(IoctlOutcome::Device(DeviceFile {
                        group: file.group.clone(),
                        device,
                    }));
                }
                let container = match &st.container {
                    Some(c) if c.iommu_set() => c.clone(),
                    _ => return Err(VfioError::Invalid("group has no container with an IOMMU")),
                };
                let opens = st.device_opens.entry(device.name.clone()).or_insert(0);
                *opens += 1;
                if *opens == 1 {
                    device.model.attach_container(Some(container));
                    device.model.open_device();
                }
                st.open_devices += 1;
                Ok(IoctlOutcome::Device(DeviceFile {
                    group: file.group.clone(),
                    device,
                }))
            }
            _ => Err(VfioError::NoTty),
        }
    }

    // ---- device ioctls and region access ----------------------------------

    /// An ioctl on a device fd. `eventfds` resolves descriptor numbers in
    /// the argument (interrupt triggers, ioeventfds) in the caller's table.
    pub fn device_ioctl(
        &self,
        file: &DeviceFile,
        request: u64,
        arg: u64,
        user: &dyn UserMemory,
        eventfds: &mut crate::device_ioctl::EventfdResolver<'_>,
    ) -> Result<i64> {
        let model = &file.device.model;
        match request {
            VFIO_DEVICE_GET_INFO => {
                let mut minsz = end_of!(vfio_device_info, num_irqs);
                // The kernel measures "has cap_offset" with the type1 info
                // struct's cap_offset end (same offset, 20).
                let capsz = end_of!(vfio_iommu_type1_info, cap_offset);
                let mut w = Wire::read(user, arg, minsz)?;
                w.0.resize(size_of::<vfio_device_info>(), 0);
                if (w.u32_at(offset_of!(vfio_device_info, argsz)) as usize) < minsz {
                    return Err(VfioError::Invalid("argsz too small"));
                }
                if w.u32_at(offset_of!(vfio_device_info, argsz)) as usize >= capsz {
                    minsz = capsz;
                    w.put_u32(offset_of!(vfio_device_info, cap_offset), 0);
                }
                let svm = if svm_unit(file).is_ok() {
                    VFIO_DEVICE_FLAGS_SVM
                } else {
                    0
                };
                w.put_u32(offset_of!(vfio_device_info, flags), model.flags() | svm);
                w.put_u32(
                    offset_of!(vfio_device_info, num_regions),
                    model.num_regions(),
                );
                w.put_u32(offset_of!(vfio_device_info, num_irqs), model.num_irqs());
                w.write_back(user, arg, minsz)?;
                Ok(0)
            }
            VFIO_DEVICE_GET_REGION_INFO => {
                let minsz = end_of!(vfio_region_info, offset);
                let mut w = Wire::read_args(user, arg, minsz)?;
                let index = w.u32_at(offset_of!(vfio_region_info, index));
                let info = model
                    .region_info(index)
                    .ok_or(VfioError::Invalid("no such region"))?;
                let mut flags = info.flags;
                w.put_u32(offset_of!(vfio_region_info, cap_offset), 0);
                w.put_u64(offset_of!(vfio_region_info, size), info.size);
                w.put_u64(
                    offset_of!(vfio_region_info, offset),
                    u64::from(index) << REGION_OFFSET_SHIFT,
                );
                // vfio_pci_ioctl_get_region_info: a chain that does not fit
                // reports the size it needs in argsz, cap_offset 0.
                let caps = build_region_caps(&model.region_caps(index));
                if !caps.is_empty() {
                    flags |= VFIO_REGION_INFO_FLAG_CAPS;
                    let info_size = size_of::<vfio_region_info>();
                    let need = (info_size + caps.len()) as u32;
                    if w.u32_at(offset_of!(vfio_region_info, argsz)) < need {
                        w.put_u32(offset_of!(vfio_region_info, argsz), need);
                    } else {
                        let mut chain = caps;
                        shift_cap_chain(&mut chain, info_size as u32);
                        user.write(arg + info_size as u64, &chain)
                            .map_err(|_| VfioError::Fault)?;
                        w.put_u32(offset_of!(vfio_region_info, cap_offset), info_size as u32);
                    }
                }
                w.put_u32(offset_of!(vfio_region_info, flags), flags);
                w.write_back(user, arg, minsz)?;
                Ok(0)
            }
            VFIO_DEVICE_GET_IRQ_INFO => {
                let minsz = end_of!(vfio_irq_info, count);
                let mut w = Wire::read_args(user, arg, minsz)?;
                let index = w.u32_at(offset_of!(vfio_irq_info, index));
                let info = model
                    .irq_info(index)
                    .ok_or(VfioError::Invalid("no such irq index"))?;
                w.put_u32(offset_of!(vfio_irq_info, flags), info.flags);
                w.put_u32(offset_of!(vfio_irq_info, count), info.count);
                w.write_back(user, arg, minsz)?;
                Ok(0)
            }
            VFIO_DEVICE_RESET => model.reset().map(|()| 0).map_err(VfioError::Errno),
            VFIO_DEVICE_SET_IRQS => {
                crate::device_ioctl::set_irqs(model.as_ref(), arg, user, eventfds)
            }
            crate::device_ioctl::VFIO_DEVICE_IOEVENTFD => {
                crate::device_ioctl::ioeventfd(model, arg, user, eventfds)
            }
            crate::device_ioctl::VFIO_DEVICE_FEATURE => {
                crate::device_ioctl::device_feature(model.as_ref(), arg, user, eventfds)
            }
            crate::device_ioctl::VFIO_DEVICE_GET_PCI_HOT_RESET_INFO
            | crate::device_ioctl::VFIO_DEVICE_PCI_HOT_RESET => {
                crate::device_ioctl::hot_reset(model.as_ref(), request, arg, user)
            }
            VFIO_DEVICE_BIND_TASK => self.svm_bind_task(file, arg, user).map(|()| 0),
            VFIO_DEVICE_UNBIND_TASK => self.svm_unbind_task(file, arg, user).map(|()| 0),
            VFIO_DEVICE_SVM => self.device_svm(file, arg, user).map(|()| 0),
            _ => Err(VfioError::NoTty),
        }
    }

    // ---- shared virtual memory (crate::pasid, docs/SVM.md) -----------------

    /// `VFIO_DEVICE_BIND_TASK`: binds the caller's address space; writes
    /// the PASID back. Nothing stays bound when the copy-out fails.
    fn svm_bind_task(&self, file: &DeviceFile, arg: u64, user: &dyn UserMemory) -> Result<()> {
        let minsz = size_of::<crate::pasid::vfio_device_svm>();
        let mut w = Wire::read(user, arg, minsz)?;
        if (w.u32_at(offset_of!(crate::pasid::vfio_device_svm, argsz)) as usize) < minsz {
            return Err(VfioError::Invalid("argsz too small"));
        }
        if w.u32_at(offset_of!(crate::pasid::vfio_device_svm, flags)) != 0 {
            return Err(VfioError::Invalid("unknown flags"));
        }
        let (unit, rid) = svm_unit(file)?;
        let mem = user.svm_view().ok_or(VfioError::NoDevice)?;
        let pasid = unit.bind_pasid(rid, mem)?;
        w.put_u32(offset_of!(crate::pasid::vfio_device_svm, pasid), pasid);
        if let Err(e) = w.write_back(user, arg, minsz) {
            let _ = unit.unbind_pasid(rid, pasid, SvmRelease::Clean);
            return Err(e);
        }
        Ok(())
    }

    /// `VFIO_DEVICE_UNBIND_TASK`: ENOENT when the PASID is not bound.
    fn svm_unbind_task(&self, file: &DeviceFile, arg: u64, user: &dyn UserMemory) -> Result<()> {
        let minsz = size_of::<crate::pasid::vfio_device_svm>();
        let w = Wire::read(user, arg, minsz)?;
        if (w.u32_at(offset_of!(crate::pasid::vfio_device_svm, argsz)) as usize) < minsz {
            return Err(VfioError::Invalid("argsz too small"));
        }
        let flags = w.u32_at(offset_of!(crate::pasid::vfio_device_svm, flags));
        if flags & !(VFIO_SVM_PASID_RELEASE_FLUSHED | VFIO_SVM_PASID_RELEASE_CLEAN) != 0 {
            return Err(VfioError::Invalid("unknown flags"));
        }
        let pasid = w.u32_at(offset_of!(crate::pasid::vfio_device_svm, pasid));
        if pasid >= PASID_LIMIT {
            return Err(VfioError::Invalid("PASID beyond 20 bits"));
        }
        let (unit, rid) = svm_unit(file)?;
        let release = SvmRelease::from_bits(
            flags & VFIO_SVM_PASID_RELEASE_FLUSHED != 0,
            flags & VFIO_SVM_PASID_RELEASE_CLEAN != 0,
        );
        unit.unbind_pasid(rid, pasid, release)
    }

    /// `VFIO_DEVICE_SVM`: exactly one operation per call: BIND_PASIDTP,
    /// PASSDOWN_INVALIDATE, or a release (FLUSHED and/or CLEAN) that
    /// unbinds the guest PASID table.
    fn device_svm(&self, file: &DeviceFile, arg: u64, user: &dyn UserMemory) -> Result<()> {
        use crate::pasid::vfio_device_svm_hdr as Hdr;
        let minsz = size_of::<Hdr>();
        let w = Wire::read(user, arg, minsz)?;
        let argsz = u64::from(w.u32_at(offset_of!(Hdr, argsz)));
        if argsz < minsz as u64 {
            return Err(VfioError::Invalid("argsz too small"));
        }
        let flags = w.u32_at(offset_of!(Hdr, flags));
        let length = u64::from(w.u32_at(offset_of!(Hdr, length)));
        if argsz < minsz as u64 + length {
            return Err(VfioError::Invalid("argsz smaller than the header and data"));
        }
        let release = VFIO_SVM_DEV_PASID_RELEASE_FLUSHED | VFIO_SVM_DEV_PASID_RELEASE_CLEAN;
        let data_at = arg + minsz as u64;
        match flags {
            VFIO_SVM_BIND_PASIDTP => {
                if length < PASID_TABLE_INFO_MINSZ as u64 {
                    return Err(VfioError::Invalid("pasid_table_info too short"));
                }
                let d = Wire::read(user, data_at, PASID_TABLE_INFO_MINSZ)?;
                let ptr = d.u64_at(offset_of!(crate::pasid::pasid_table_info, ptr));
                let size = d.u32_at(offset_of!(crate::pasid::pasid_table_info, size));
                let (unit, rid) = svm_unit(file)?;
                unit.bind_pasid_table(rid, ptr, size)
            }
            VFIO_SVM_PASSDOWN_INVALIDATE => {
                if length < INVALIDATE_INFO_MINSZ as u64 {
                    return Err(VfioError::Invalid("invalidate info too short"));
                }
                let d = Wire::read(user, data_at, INVALIDATE_INFO_MINSZ)?;
                let info = iommu_svm_tlb_invalidate_info::from_bytes(&d.0)
                    .ok_or(VfioError::Invalid("invalidate info too short"))?;
                let inv = info.validate()?;
                let (unit, rid) = svm_unit(file)?;
                unit.invalidate(rid, inv)
            }
            f if f != 0 && f & !release == 0 => {
                let (unit, rid) = svm_unit(file)?;
                unit.unbind_pasid_table(rid)
            }
            _ => Err(VfioError::Invalid("flags")),
        }
    }

    /// `pread` on a device fd: region `offset >> 40`, into user memory.
    pub fn device_pread(
        &self,
        file: &DeviceFile,
        user: &dyn UserMemory,
        buf: u64,
        len: u64,
        offset: u64,
    ) -> Result<i64> {
        let (index, off) = split_region_offset(offset);
        let len = usize::try_from(len.min(1 << 20)).map_err(|_| VfioError::Invalid("len"))?;
        let mut data = vec![0u8; len];
        let n = file
            .device
            .model
            .region_read(index, off, &mut data)
            .map_err(VfioError::Errno)?;
        user.write(buf, &data[..n.min(len)])
            .map_err(|_| VfioError::Fault)?;
        Ok(n as i64)
    }

    /// `pwrite` on a device fd.
    pub fn device_pwrite(
        &self,
        file: &DeviceFile,
        user: &dyn UserMemory,
        buf: u64,
        len: u64,
        offset: u64,
    ) -> Result<i64> {
        let (index, off) = split_region_offset(offset);
        let len = usize::try_from(len.min(1 << 20)).map_err(|_| VfioError::Invalid("len"))?;
        let mut data = vec![0u8; len];
        user.read(buf, &mut data).map_err(|_| VfioError::Fault)?;
        let n = file
            .device
            .model
            .region_write(index, off, &data)
            .map_err(VfioError::Errno)?;
        Ok(n as i64)
    }
}

/// The IOMMU unit and requester id of a device that can do shared virtual
/// memory: the model supports it and its unit translates PASIDs. ENODEV
/// otherwise.
fn svm_unit(file: &DeviceFile) -> Result<(&Arc<dyn crate::iommu::IommuUnit>, u16)> {
    let GroupKind::Iommu(unit) = &file.group.kind else {
        return Err(VfioError::NoDevice);
    };
    match file.device.rid {
        Some(rid) if file.device.model.supports_svm() && unit.supports_pasid() => Ok((unit, rid)),
        _ => Err(VfioError::NoDevice),
    }
}

fn split_region_offset(offset: u64) -> (u32, u64) {
    let index = offset >> REGION_OFFSET_SHIFT;
    let off = offset & ((1u64 << REGION_OFFSET_SHIFT) - 1);
    (u32::try_from(index).unwrap_or(u32::MAX), off)
}

fn pgshift(pgsize: u64) -> u32 {
    // __ffs(0) is undefined in the kernel; any shift then fails the checks.
    if pgsize == 0 {
        64
    } else {
        pgsize.trailing_zeros()
    }
}

fn read_bitmap(user: &dyn UserMemory, addr: u64) -> Result<UserBitmap> {
    let w = Wire::read(user, addr, size_of::<vfio_bitmap>())?;
    Ok(UserBitmap {
        pgsize: w.u64_at(offset_of!(vfio_bitmap, pgsize)),
        size: w.u64_at(offset_of!(vfio_bitmap, size)),
        data: w.u64_at(offset_of!(vfio_bitmap, data)),
    })
}

/// `strndup_user(arg, PAGE_SIZE)`: EFAULT when unreadable, EINVAL when no
/// NUL within the bound.
fn read_cstring(user: &dyn UserMemory, addr: u64, max: usize) -> Result<String> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 64];
    while out.len() < max {
        // Read byte-wise near page ends so an unmapped next page does not
        // fail a string that ends before it.
        let to_page_end = (4096 - ((addr + out.len() as u64) % 4096)) as usize;
        let n = chunk.len().min(to_page_end).min(max - out.len());
        user.read(addr + out.len() as u64, &mut chunk[..n])
            .map_err(|_| VfioError::Fault)?;
        if let Some(p) = chunk[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..p]);
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Err(VfioError::Invalid("device name too long"))
}

/// Builds the GET_INFO capability chain in the kernel's order (MIGRATION,
/// DMA_AVAIL, IOVA_RANGE), packed with no padding between entries; `next`
/// offsets are relative to the chain's start until shifted.
fn build_info_caps(info: &crate::container::Type1Info) -> Vec<u8> {
    let mut chain: Vec<u8> = Vec::new();
    let mut last_header: Option<usize> = None;
    let mut add = |chain: &mut Vec<u8>, id: u32, body: &dyn Fn(&mut Wire)| {
        let start = chain.len();
        let size = match id {
            VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION => size_of::<vfio_iommu_type1_info_cap_migration>(),
            VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => size_of::<vfio_iommu_type1_info_dma_avail>(),
            _ => {
                size_of::<vfio_iommu_type1_info_cap_iova_range>()
                    + info.iova_ranges.len() * size_of::<vfio_iova_range>()
            }
        };
        let mut w = Wire(vec![0u8; size]);
        w.put_u16(offset_of!(vfio_info_cap_header, id), id as u16);
        w.put_u16(offset_of!(vfio_info_cap_header, version), 1);
        body(&mut w);
        if let Some(prev) = last_header {
            let next_off = prev + offset_of!(vfio_info_cap_header, next);
            chain[next_off..next_off + 4].copy_from_slice(&(start as u32).to_ne_bytes());
        }
        last_header = Some(start);
        chain.extend_from_slice(&w.0);
    };
    add(&mut chain, VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, &|w| {
        w.put_u32(offset_of!(vfio_iommu_type1_info_cap_migration, flags), 0);
        w.put_u64(
            offset_of!(vfio_iommu_type1_info_cap_migration, pgsize_bitmap),
            info.migration_pgsize_bitmap,
        );
        w.put_u64(
            offset_of!(vfio_iommu_type1_info_cap_migration, max_dirty_bitmap_size),
            info.max_dirty_bitmap_size,
        );
    });
    add(&mut chain, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, &|w| {
        w.put_u32(
            offset_of!(vfio_iommu_type1_info_dma_avail, avail),
            info.dma_avail,
        );
    });
    // A container with only mediated devices has no IOVA list: no capability.
    if !info.iova_ranges.is_empty() {
        add(&mut chain, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, &|w| {
            w.put_u32(
                offset_of!(vfio_iommu_type1_info_cap_iova_range, nr_iovas),
                info.iova_ranges.len() as u32,
            );
            let base = offset_of!(vfio_iommu_type1_info_cap_iova_range, iova_ranges);
            for (i, r) in info.iova_ranges.iter().enumerate() {
                let at = base + i * size_of::<vfio_iova_range>();
                w.put_u64(at + offset_of!(vfio_iova_range, start), r.start);
                w.put_u64(at + offset_of!(vfio_iova_range, end), r.end);
            }
        });
    }
    chain
}

/// `VFIO_REGION_INFO_FLAG_CAPS`.
pub const VFIO_REGION_INFO_FLAG_CAPS: u32 = 1 << 3;
/// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`.
pub const VFIO_REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
/// `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`.
pub const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: u16 = 3;

/// Builds a region's capability chain (`vfio_info_add_capability`): each
/// entry a `vfio_info_cap_header` (id, version 1, next) and its body, 8-byte
/// aligned, `next` relative to the chain's start until shifted.
/// `vfio_region_info_cap_sparse_mmap`: header, `nr_areas`, a reserved u32,
/// then (offset, size) u64 pairs.
pub fn build_region_caps(caps: &[crate::device::RegionCap]) -> Vec<u8> {
    use crate::device::RegionCap;
    let header = size_of::<vfio_info_cap_header>();
    let next_field = offset_of!(vfio_info_cap_header, next);
    let mut chain: Vec<u8> = Vec::new();
    let mut last: Option<usize> = None;
    for cap in caps {
        let start = chain.len();
        let (id, body) = match cap {
            RegionCap::MsixMappable => (VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, Vec::new()),
            RegionCap::SparseMmap(areas) => {
                let mut b = Vec::with_capacity(8 + areas.len() * 16);
                b.extend_from_slice(&(areas.len() as u32).to_ne_bytes());
                b.extend_from_slice(&0u32.to_ne_bytes());
                for (off, size) in areas {
                    b.extend_from_slice(&off.to_ne_bytes());
                    b.extend_from_slice(&size.to_ne_bytes());
                }
                (VFIO_REGION_INFO_CAP_SPARSE_MMAP, b)
            }
        };
        let mut w = Wire(vec![0u8; header]);
        w.put_u16(offset_of!(vfio_info_cap_header, id), id);
        w.put_u16(offset_of!(vfio_info_cap_header, version), 1);
        chain.extend_from_slice(&w.0);
        chain.extend_from_slice(&body);
        chain.resize(chain.len().next_multiple_of(8), 0);
        if let Some(prev) = last {
            if let Some(s) = chain.get_mut(prev + next_field..prev + next_field + 4) {
                s.copy_from_slice(&(start as u32).to_ne_bytes());
            }
        }
        last = Some(start);
    }
    chain
}

/// Makes the chain's `next` offsets relative to the info struct
/// (`vfio_info_cap_shift`).
fn shift_cap_chain(chain: &mut [u8], by: u32) {
    let next_field = offset_of!(vfio_info_cap_header, next);
    let mut at = 0usize;
    loop {
        let Some(s) = chain.get_mut(at + next_field..at + next_field + 4) else {
            return;
        };
        let mut b = [0u8; 4];
        b.copy_from_slice(s);
        let next = u32::from_ne_bytes(b);
        if next == 0 {
            return;
        }
        s.copy_from_slice(&(next + by).to_ne_bytes());
        at = next as usize;
    }
}

/// What an `mmap` of a device file maps: `region` of `model`, from byte
/// `offset` of the region on.
#[derive(Clone)]
pub struct MappedRegion {
    /// The device model whose registers the mapping reaches.
    pub model: Arc<dyn crate::device::VfioDeviceModel>,
    /// The region index (`VFIO_PCI_BAR0_REGION_INDEX`...).
    pub region: u32,
    /// The region offset the mapping starts at (page aligned).
    pub offset: u64,
    /// The session's key of the device file mapped (see
    /// `frontend::Session::mmap`): a mapping holds the file open, as the
    /// kernel's `vma->vm_file` does.
    pub file: u64,
}

impl std::fmt::Debug for MappedRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedRegion")
            .field("device", &self.model.name())
            .field("region", &self.region)
            .field("offset", &self.offset)
            .finish()
    }
}

impl Vfio {
    /// `mmap(len, MAP_SHARED or not)` of a device fd at file offset
    /// `offset`, with `vfio_pci_core_mmap`'s checks, in its order: a region
    /// that exists and is mmap-able (`REGION_FLAG_MMAP`: BARs with a size;
    /// never config space, ROM or VGA), a shared mapping, the range within
    /// the page-aligned region. Each failure is EINVAL. The generic checks
    /// of `mmap` itself (length 0, an offset that is not page aligned) are
    /// the front end's: the kernel makes them before the driver is asked.
    pub fn device_mmap(
        &self,
        file: &DeviceFile,
        offset: u64,
        len: u64,
        shared: bool,
    ) -> Result<MappedRegion> {
        let (index, start) = split_region_offset(offset);
        let model = &file.device.model;
        let info = model
            .region_info(index)
            .ok_or(VfioError::Invalid("no such region"))?;
        if !shared {
            return Err(VfioError::Invalid("private mapping of a device"));
        }
        if info.flags & crate::device::REGION_FLAG_MMAP == 0 || info.size == 0 {
            return Err(VfioError::Invalid("region not mmap-able"));
        }
        let page = crate::memory::PAGE_SIZE;
        let phys_len = info.size.div_ceil(page) * page;
        match start.checked_add(len) {
            Some(end) if end <= phys_len => Ok(MappedRegion {
                model: model.clone(),
                region: index,
                offset: start,
                file: 0,
            }),
            _ => Err(VfioError::Invalid("mapping past the region")),
        }
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    /// Linux 6.1's answers (run-kernel.sh, edu at 0000:00:03.0).
    #[test]
    fn device_names_as_vfio_pci_core_match() {
        let dev = "0000:00:03.0";
        assert_eq!(device_name_matches(dev, "0000:00:03.0").ok(), Some(true));
        assert_eq!(device_name_matches(dev, "0000:00:03.0 ").ok(), Some(true));
        assert_eq!(device_name_matches(dev, "0000:00:03.0   ").ok(), Some(true));
        assert_eq!(device_name_matches(dev, " 0000:00:03.0").ok(), Some(false));
        assert_eq!(device_name_matches(dev, "0000:00:03.0x").ok(), Some(false));
        assert_eq!(device_name_matches(dev, "0000:00:03.").ok(), Some(false));
        assert_eq!(
            device_name_matches(dev, "0000:00:03.0  vf_token=x")
                .map_err(|e| e.errno())
                .err(),
            Some(libc::EINVAL)
        );
        let uuid = "c0ffee00-0000-4000-8000-000000000001";
        assert_eq!(device_name_matches(uuid, uuid).ok(), Some(true));
        let spaced = format!("{uuid} ");
        assert_eq!(device_name_matches(uuid, &spaced).ok(), Some(false));
    }
}
