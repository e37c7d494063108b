//! "mdev-edu": QEMU's edu device as a mediated device (seed 000).
//!
//! The registers, config space and DMA engine are the edu's ([`EduDevice`]
//! over [`crate::edu::EduCore`]); what changes is the path to memory. A
//! mediated device has no IOMMU: it is named by a UUID, sits in an emulated
//! group, and reaches the user's memory through the container it was opened
//! in — [`Container::pin_pages`] (the default: pages are pinned on first use
//! and kept in a sparse cache, as a vGPU pins what its GTT points at) or
//! [`Container::dma_rw`] (no pins). When the user unmaps, the container's
//! unmap notifier calls the device, which drops every cached pin in the
//! range with one batch. Bound through iommufd (its cdev, or its group on
//! `/dev/iommu`), the same two paths go through the device's emulated
//! access on an IOAS instead ([`IommufdAccess`]: `iommufd_access_pin_pages`
//! and `iommufd_access_rw`), whose unmap callback is the same notifier.
//!
//! Lock order: device registers → pin cache → container. The notifier runs
//! with the container lock released and takes only the pin cache.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use softvfio::device::{IrqInfo, IrqSet, RegionInfo, VfioDeviceModel};
use softvfio::external::{DmaUnmapFn, ExternalDevice};
use softvfio::iommu::Prot;
use softvfio::iommufd::IommufdAccess;
use softvfio::memory::PAGE_SIZE;
use softvfio::Container;
use vfio_bindings::bindings::vfio::VFIO_DEVICE_FLAGS_RESET;

use crate::dma::{DmaAccess, DmaError, DmaTarget};
use crate::edu::{EduDevice, EduOptions};

/// How the device's DMA reaches memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum MdevDmaMode {
    /// `vfio_pin_pages` on first use, pins cached until the unmap notifier
    /// or device close.
    #[default]
    Pin,
    /// `vfio_dma_rw` for every access, nothing pinned.
    Rw,
}

/// How to build an [`MdevEdu`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdevEduOptions {
    /// The mdev UUID (what `VFIO_GROUP_GET_DEVICE_FD` takes).
    pub uuid: String,
    /// The emulated IOMMU group the device is in.
    pub group: u32,
    /// How DMA reaches memory: pinned pages or `dma_rw`.
    pub mode: MdevDmaMode,
}

impl MdevEduOptions {
    /// A mediated edu named `uuid` in group `group`.
    pub fn new(uuid: impl Into<String>, group: u32) -> Self {
        Self {
            uuid: uuid.into(),
            group,
            mode: MdevDmaMode::Pin,
        }
    }
}

/// Counters of the mediated DMA path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MdevStats {
    /// `pin_pages` calls made.
    pub pin_calls: u64,
    /// Page accesses served from the pin cache.
    pub cache_hits: u64,
    /// Pages pinned now (cache entries).
    pub cached_pages: u64,
    /// Unmap notifications received.
    pub unmap_notifications: u64,
    /// Pages unpinned because of a notification.
    pub unpinned_on_notify: u64,
    /// `dma_rw` calls made.
    pub rw_calls: u64,
}

/// A page the device pinned.
#[derive(Debug, Clone, Copy)]
struct CachedPin {
    vaddr: u64,
    /// Pins this device holds on the page (a read pin, then a write pin).
    refs: u32,
    writable: bool,
}

#[derive(Default)]
struct PathState {
    container: Option<Arc<Container>>,
    device: Option<Arc<ExternalDevice>>,
    /// The iommufd access, when bound through iommufd (no container then).
    access: Option<Arc<IommufdAccess>>,
    /// Pinned pages by page IOVA: sparse, only what DMA touched.
    cache: BTreeMap<u64, CachedPin>,
    stats: MdevStats,
}

/// The DMA path of a mediated device: pins (or rw) through its container.
pub struct MdevDmaPath {
    name: String,
    group: u32,
    mode: MdevDmaMode,
    state: Mutex<PathState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One DMA transfer's buffer.
enum Xfer<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Xfer<'_> {
    fn len(&self) -> usize {
        match self {
            Xfer::Read(b) => b.len(),
            Xfer::Write(d) => d.len(),
        }
    }

    fn access(&self) -> DmaAccess {
        match self {
            Xfer::Read(_) => DmaAccess::Read,
            Xfer::Write(_) => DmaAccess::Write,
        }
    }
}

impl MdevDmaPath {
    fn new(name: String, group: u32, mode: MdevDmaMode) -> Arc<Self> {
        Arc::new(Self {
            name,
            group,
            mode,
            state: Mutex::new(PathState::default()),
        })
    }

    /// Opens the path in `container`: registers the device with its unmap
    /// callback.
    fn attach(self: &Arc<Self>, container: Arc<Container>) {
        self.detach();
        let weak: Weak<MdevDmaPath> = Arc::downgrade(self);
        let notify: DmaUnmapFn = Arc::new(move |iova, size| {
            if let Some(path) = weak.upgrade() {
                path.on_dma_unmap(iova, size);
            }
        });
        match container.register_external_device(self.group, &self.name, Some(notify)) {
            Ok(dev) => {
                let mut st = lock(&self.state);
                st.container = Some(container);
                st.device = Some(dev);
            }
            Err(e) => tracing::warn!(device = %self.name, "mdev cannot register: {e}"),
        }
    }

    /// Opens the path through an iommufd access: its unmap callback is
    /// the same notifier.
    fn attach_access(self: &Arc<Self>, access: Arc<IommufdAccess>) {
        self.detach();
        let weak: Weak<MdevDmaPath> = Arc::downgrade(self);
        let notify: DmaUnmapFn = Arc::new(move |iova, size| {
            if let Some(path) = weak.upgrade() {
                path.on_dma_unmap(iova, size);
            }
        });
        access.set_unmap_callback(Some(notify));
        lock(&self.state).access = Some(access);
    }

    /// Closes the path: drops every pin and the registration.
    fn detach(&self) {
        let mut st = lock(&self.state);
        Self::drop_pins(&mut st, 0, u64::MAX);
        if let (Some(c), Some(dev)) = (st.container.take(), st.device.take()) {
            c.unregister_external_device(&dev);
        }
        if let Some(a) = st.access.take() {
            a.set_unmap_callback(None);
        }
    }

    /// The unmap notifier: unpin everything cached in `[iova, iova + size)`.
    fn on_dma_unmap(&self, iova: u64, size: u64) {
        let mut st = lock(&self.state);
        st.stats.unmap_notifications += 1;
        let n = Self::drop_pins(&mut st, iova, size);
        st.stats.unpinned_on_notify += n;
    }

    /// Unpins the cached pages in the range with one batch; returns pages.
    fn drop_pins(st: &mut PathState, iova: u64, size: u64) -> u64 {
        let end = iova.saturating_add(size);
        let pages: Vec<(u64, CachedPin)> =
            st.cache.range(iova..end).map(|(k, v)| (*k, *v)).collect();
        if pages.is_empty() {
            return 0;
        }
        let mut iovas = Vec::with_capacity(pages.len());
        for (page, pin) in &pages {
            st.cache.remove(page);
            for _ in 0..pin.refs {
                iovas.push(*page);
            }
        }
        st.stats.cached_pages = st.cache.len() as u64;
        if let (Some(c), Some(dev)) = (&st.container, &st.device) {
            if let Err(e) = c.unpin_batch(dev, &iovas) {
                tracing::warn!("mdev unpin failed: {e}");
            }
        }
        if let Some(a) = &st.access {
            for iova in iovas {
                a.unpin_pages(iova, 1);
            }
        }
        pages.len() as u64
    }

    fn stats(&self) -> MdevStats {
        lock(&self.state).stats
    }

    /// The user address of the page at `page_iova`, pinning it on first use
    /// (again for write when it was pinned for read only).
    fn pinned_vaddr(st: &mut PathState, page_iova: u64, write: bool) -> Result<u64, String> {
        if let Some(pin) = st.cache.get(&page_iova) {
            if pin.writable || !write {
                let vaddr = pin.vaddr;
                st.stats.cache_hits += 1;
                return Ok(vaddr);
            }
        }
        // medu (Linux's reference mdev) pins IOMMU_READ for a device read
        // and IOMMU_READ|IOMMU_WRITE for a write, so a write into a
        // write-only mapping is refused (EPERM) as in Linux.
        let prot = Prot { read: true, write };
        let pinned = match (&st.container, &st.device, &st.access) {
            (Some(c), Some(dev), _) => c.pin_pages(dev, page_iova, 1, prot),
            (_, _, Some(a)) => a.pin_pages(page_iova, 1, write),
            _ => return Err("device not open".into()),
        };
        let vaddrs = pinned.map_err(|e| format!("vfio_pin_pages: {e} (errno {})", e.errno()))?;
        let vaddr = vaddrs.first().copied().ok_or("no page returned")?;
        st.stats.pin_calls += 1;
        let entry = st.cache.entry(page_iova).or_insert(CachedPin {
            vaddr,
            refs: 0,
            writable: false,
        });
        entry.refs += 1;
        entry.writable |= write;
        st.stats.cached_pages = st.cache.len() as u64;
        Ok(vaddr)
    }

    fn transfer(&self, addr: u64, mut xfer: Xfer<'_>) -> Result<(), DmaError> {
        let access = xfer.access();
        let write = access == DmaAccess::Write;
        let len = xfer.len();
        let mut st = lock(&self.state);
        let mut done = 0usize;
        while done < len {
            let Some(cur) = addr.checked_add(done as u64) else {
                return Err(DmaError::fault(addr, access, done, "address wraps"));
            };
            let page = cur & !(PAGE_SIZE - 1);
            let n = (len - done).min((page + PAGE_SIZE - cur) as usize);
            let result = match self.mode {
                MdevDmaMode::Pin => Self::pinned_vaddr(&mut st, page, write).and_then(|vaddr| {
                    let mem = match (&st.container, &st.access) {
                        (Some(c), _) => c.memory().clone(),
                        (None, Some(a)) => a.memory().ok_or("iommufd is gone")?,
                        _ => return Err("device not open".to_string()),
                    };
                    let at = vaddr + (cur - page);
                    let r = match &mut xfer {
                        Xfer::Read(b) => b.get_mut(done..done + n).map(|s| mem.read(at, s)),
                        Xfer::Write(d) => d.get(done..done + n).map(|s| mem.write(at, s)),
                    };
                    match r {
                        Some(Ok(())) => Ok(()),
                        Some(Err(e)) => Err(format!("memory: {e}")),
                        None => Err("buffer bounds".into()),
                    }
                }),
                MdevDmaMode::Rw => {
                    st.stats.rw_calls += 1;
                    let path = match (&st.container, &st.device, &st.access) {
                        (Some(c), Some(dev), _) => Some((Some((c, dev)), None)),
                        (_, _, Some(a)) => Some((None, Some(a))),
                        _ => None,
                    };
                    match path {
                        Some((container, access)) => {
                            let r = match (&mut xfer, container, access) {
                                (Xfer::Read(b), Some((c, dev)), _) => {
                                    b.get_mut(done..done + n).map(|s| c.dma_read(dev, cur, s))
                                }
                                (Xfer::Write(d), Some((c, dev)), _) => {
                                    d.get(done..done + n).map(|s| c.dma_write(dev, cur, s))
                                }
                                (Xfer::Read(b), None, Some(a)) => {
                                    b.get_mut(done..done + n).map(|s| a.dma_read(cur, s))
                                }
                                (Xfer::Write(d), None, Some(a)) => {
                                    d.get(done..done + n).map(|s| a.dma_write(cur, s))
                                }
                                _ => None,
                            };
                            match r {
                                Some(Ok(())) => Ok(()),
                                Some(Err(e)) => {
                                    Err(format!("vfio_dma_rw: {e} (errno {})", e.errno()))
                                }
                                None => Err("buffer bounds".into()),
                            }
                        }
                        _ => Err("device not open".into()),
                    }
                }
            };
            if let Err(reason) = result {
                return Err(DmaError::fault(cur, access, done, reason));
            }
            done += n;
        }
        Ok(())
    }
}

impl DmaTarget for MdevDmaPath {
    fn dma_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.transfer(addr, Xfer::Read(buf))
    }

    fn dma_write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        self.transfer(addr, Xfer::Write(data))
    }
}

/// QEMU's edu as a mediated device.
pub struct MdevEdu {
    opts: MdevEduOptions,
    edu: Arc<EduDevice>,
    path: Arc<MdevDmaPath>,
}

impl std::fmt::Debug for MdevEdu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdevEdu")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl MdevEdu {
    /// The device with `opts`.
    pub fn new(opts: MdevEduOptions) -> Arc<Self> {
        let mut edu_opts = EduOptions::new(opts.uuid.clone());
        // medu copies page by page and stops at the first page it cannot
        // pin: what a faulting read could not reach keeps its old bytes.
        // (In dma_rw mode the engine's `dma_rw` zeroes the one chunk whose
        // read faulted, as `copy_from_user` does: tests-oracle/MEDU-DIFFS.md
        // cause R.)
        edu_opts.zero_fill_faulted_reads = false;
        let edu = Arc::new(EduDevice::with_options(edu_opts));
        let path = MdevDmaPath::new(opts.uuid.clone(), opts.group, opts.mode);
        edu.set_dma_target(path.clone());
        Arc::new(Self { opts, edu, path })
    }

    /// The options it was built with.
    pub fn options(&self) -> &MdevEduOptions {
        &self.opts
    }

    /// The edu register model behind the mediated device.
    pub fn edu(&self) -> &Arc<EduDevice> {
        &self.edu
    }

    /// Counters.
    pub fn stats(&self) -> MdevStats {
        self.path.stats()
    }

    /// Pages the device pins now.
    pub fn cached_pins(&self) -> Vec<u64> {
        lock(&self.path.state).cache.keys().copied().collect()
    }
}

impl VfioDeviceModel for MdevEdu {
    fn name(&self) -> &str {
        &self.opts.uuid
    }

    /// medu's GET_INFO: a PCI device with a reset (so QEMU resets it with
    /// `VFIO_DEVICE_RESET` rather than looking for a bus reset).
    fn flags(&self) -> u32 {
        self.edu.flags() | VFIO_DEVICE_FLAGS_RESET
    }

    fn num_regions(&self) -> u32 {
        self.edu.num_regions()
    }

    fn num_irqs(&self) -> u32 {
        self.edu.num_irqs()
    }

    /// edu's regions without `REGION_FLAG_MMAP`: medu's BAR is emulated
    /// through read/write only, as a mediated device's usually is.
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.edu.region_info(index).map(|r| RegionInfo {
            flags: r.flags & !softvfio::device::REGION_FLAG_MMAP,
            ..r
        })
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        self.edu.irq_info(index)
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<usize, i32> {
        self.edu.region_read(index, offset, buf)
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<usize, i32> {
        self.edu.region_write(index, offset, data)
    }

    /// medu's `VFIO_DEVICE_RESET`: the DMA and interrupt registers; the
    /// config space and the DMA buffer stay (no PCI function reset happens
    /// to a mediated device).
    fn reset(&self) -> Result<(), i32> {
        self.edu.reset_dma_and_interrupts();
        Ok(())
    }

    fn attach_container(&self, container: Option<Arc<Container>>) {
        match container {
            Some(c) => self.path.attach(c),
            None => self.path.detach(),
        }
    }

    fn attach_iommufd_access(&self, access: Option<Arc<IommufdAccess>>) {
        match access {
            Some(a) => self.path.attach_access(a),
            None => self.path.detach(),
        }
    }

    fn open_device(&self) {
        self.edu.open_device();
    }

    /// Stops DMA and drops every pin (a closing mdev must unpin).
    fn close_device(&self) {
        self.edu.close_device();
        let mut st = lock(&self.path.state);
        MdevDmaPath::drop_pins(&mut st, 0, u64::MAX);
    }

    /// PASID-tagged DMA needs an IOMMU; the mediated path has none.
    fn supports_svm(&self) -> bool {
        false
    }

    /// edu's INTx and MSI, as a vendor driver that implements
    /// `VFIO_DEVICE_SET_IRQS` for its mdev offers them (medu, the reference
    /// for the DMA path, has no interrupts; a device whose config space
    /// names an interrupt pin must serve SET_IRQS, or QEMU refuses it).
    fn vfio_pci_irqs(&self) -> bool {
        self.edu.vfio_pci_irqs()
    }

    fn set_irqs(&self, set: IrqSet) -> Result<(), i32> {
        self.edu.set_irqs(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IommuDmaTarget;
    use soft_iommu::{Iommu, IommuConfig};
    use softvfio::container::TYPE1V2_IOMMU;
    use softvfio::iommu::vtd::VtdUnit;
    use softvfio::iommu::IommuUnit;
    use softvfio::memory::sim::SimMemory;
    use softvfio::memory::UserMemory;
    use softvfio::platform::{Device, Group, GroupKind};
    use softvfio::ContainerConfig;
    use vfio_bindings::bindings::vfio::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX};

    const BASE: u64 = 0x7000_0000_0000;
    const PG: u64 = PAGE_SIZE;
    const UUID: &str = "c0ffee00-0000-4000-8000-000000000001";

    struct Rig {
        c: Arc<Container>,
        mem: Arc<SimMemory>,
        dev: Arc<dyn VfioDeviceModel>,
        mdev: Option<Arc<MdevEdu>>,
    }

    fn sim() -> Arc<SimMemory> {
        let m = SimMemory::new();
        m.add_region(BASE, 64 * PG, PG, Prot::RW).unwrap();
        Arc::new(m)
    }

    fn open(mem: &Arc<SimMemory>, group: Group, dev: Arc<dyn VfioDeviceModel>) -> Arc<Container> {
        let dyn_mem: Arc<dyn UserMemory> = mem.clone();
        let c = Container::new(ContainerConfig::default(), dyn_mem);
        c.attach_group(&Arc::new(group)).unwrap();
        c.set_iommu(TYPE1V2_IOMMU).unwrap();
        dev.attach_container(Some(c.clone()));
        dev.open_device();
        c
    }

    /// edu behind the VT-d model, as the default platform has it.
    fn edu_rig() -> Rig {
        let mem = sim();
        let iommu = Iommu::new(IommuConfig::default());
        let unit: Arc<dyn IommuUnit> = Arc::new(VtdUnit::new(iommu.clone()));
        let edu = Arc::new(EduDevice::new("0000:00:03.0"));
        edu.set_dma_target(Arc::new(IommuDmaTarget::for_device(&iommu, 0x18)));
        let dev: Arc<dyn VfioDeviceModel> = edu;
        let group = Group {
            id: 3,
            kind: GroupKind::Iommu(unit),
            devices: vec![Arc::new(Device {
                name: "0000:00:03.0".into(),
                rid: Some(0x18),
                model: dev.clone(),
            })],
            extra_reserved: Vec::new(),
        };
        let c = open(&mem, group, dev.clone());
        Rig {
            c,
            mem,
            dev,
            mdev: None,
        }
    }

    fn mdev_rig(mode: MdevDmaMode) -> Rig {
        let mem = sim();
        let mdev = MdevEdu::new(MdevEduOptions {
            uuid: UUID.into(),
            group: 7,
            mode,
        });
        let dev: Arc<dyn VfioDeviceModel> = mdev.clone();
        let group = Group {
            id: 7,
            kind: GroupKind::Emulated,
            devices: vec![Arc::new(Device {
                name: UUID.into(),
                rid: None,
                model: dev.clone(),
            })],
            extra_reserved: Vec::new(),
        };
        let c = open(&mem, group, dev.clone());
        Rig {
            c,
            mem,
            dev,
            mdev: Some(mdev),
        }
    }

    fn wr64(d: &dyn VfioDeviceModel, off: u64, v: u64) {
        d.region_write(VFIO_PCI_BAR0_REGION_INDEX, off, &v.to_le_bytes())
            .unwrap();
    }

    fn rd32(d: &dyn VfioDeviceModel, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.region_read(VFIO_PCI_BAR0_REGION_INDEX, off, &mut b)
            .unwrap();
        u32::from_le_bytes(b)
    }

    fn edu_dma(d: &dyn VfioDeviceModel, src: u64, dst: u64, cnt: u64, to_ram: bool) {
        wr64(d, 0x80, src);
        wr64(d, 0x88, dst);
        wr64(d, 0x90, cnt);
        wr64(d, 0x98, 1 | if to_ram { 2 } else { 0 });
        assert_eq!(rd32(d, 0x98) & 1, 0, "DMA runs inside the command write");
    }

    fn byte(mem: &SimMemory, vaddr: u64) -> u8 {
        let mut b = [0u8; 1];
        mem.read(vaddr, &mut b).unwrap();
        b[0]
    }

    /// The DMA part of the conformance probe's `case_dma`; returns what it
    /// observes.
    fn program(r: &Rig) -> Vec<String> {
        let (c, mem, d) = (&r.c, &r.mem, r.dev.as_ref());
        let mut out = vec![format!("id {:#x}", rd32(d, 0))];
        let mut cmd = [0u8; 2];
        d.region_read(VFIO_PCI_CONFIG_REGION_INDEX, 4, &mut cmd)
            .unwrap();
        let cmd = (u16::from_le_bytes(cmd) | 0x6).to_le_bytes();
        d.region_write(VFIO_PCI_CONFIG_REGION_INDEX, 4, &cmd)
            .unwrap();
        let (src, dst) = (BASE, BASE + 16 * PG);
        let pattern: Vec<u8> = (0..4 * PG as usize).map(|i| (i * 7 + 3) as u8).collect();
        mem.write(src, &pattern).unwrap();
        mem.write(dst, &vec![0u8; 4 * PG as usize]).unwrap();
        c.map(0x100_0000, src, 4 * PG, Prot::READ).unwrap();
        c.map(0x200_0000, dst, 4 * PG, Prot::RW).unwrap();
        edu_dma(d, 0x100_0000 + 100, 0x40000, 3000, false);
        edu_dma(d, 0x40000, 0x200_0000 + 200, 3000, true);
        let mut got = vec![0u8; 3000];
        mem.read(dst + 200, &mut got).unwrap();
        out.push(format!("roundtrip match={}", got[..] == pattern[100..3100]));
        // A write into a read-only mapping is blocked.
        mem.write(src, &[0x11; PG as usize]).unwrap();
        mem.write(dst, &[0x22; 64]).unwrap();
        edu_dma(d, 0x200_0000, 0x40000, 64, false);
        edu_dma(d, 0x40000, 0x100_0000, 64, true);
        out.push(format!(
            "write_to_readonly_blocked={}",
            byte(mem, src) == 0x11
        ));
        // DMA after unmap does not reach the old pages.
        c.unmap(0x200_0000, 4 * PG).unwrap();
        mem.write(dst, &[0x33; 64]).unwrap();
        mem.write(src, &[0x44; 64]).unwrap();
        c.map(0x100_0000 + 8 * PG, src, PG, Prot::READ).unwrap();
        edu_dma(d, 0x100_0000 + 8 * PG, 0x40000, 64, false);
        edu_dma(d, 0x40000, 0x200_0000, 64, true);
        out.push(format!("after_unmap_blocked={}", byte(mem, dst) == 0x33));
        // A transfer that runs off the end of a mapping: the prefix only.
        c.map(0x300_0000, dst + 8 * PG, PG, Prot::RW).unwrap();
        edu_dma(d, 0x300_0000 + PG - 16, 0x40000, 64, true);
        let mut tail = [0u8; 16];
        mem.read(dst + 9 * PG - 16, &mut tail).unwrap();
        out.push(format!("prefix={tail:02x?}"));
        out.push(format!(
            "status={:#x} irq={:#x}",
            rd32(d, 0x20),
            rd32(d, 0x24)
        ));
        out
    }

    #[test]
    fn mdev_edu_gives_the_same_dma_results_as_edu_behind_the_iommu() {
        let reference = program(&edu_rig());
        assert_eq!(reference[1], "roundtrip match=true");
        assert_eq!(reference[2], "write_to_readonly_blocked=true");
        assert_eq!(reference[3], "after_unmap_blocked=true");
        for mode in [MdevDmaMode::Pin, MdevDmaMode::Rw] {
            let r = mdev_rig(mode);
            assert_eq!(program(&r), reference, "{mode:?}");
        }
    }

    /// GET_INFO says RESET, as medu's does, and VFIO_DEVICE_RESET clears
    /// what medu's clears (DMA registers, status, interrupt status), not
    /// liveness, the factorial or the DMA buffer; INTx and MSI are served.
    #[test]
    fn reset_and_interrupts_as_an_mdev_vendor_driver_gives_them() {
        let r = mdev_rig(MdevDmaMode::Pin);
        let d = r.dev.as_ref();
        assert_eq!(
            d.flags(),
            vfio_bindings::bindings::vfio::VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET
        );
        assert!(d.vfio_pci_irqs());
        let Some(m) = r.mdev.clone() else { return };
        d.region_write(VFIO_PCI_CONFIG_REGION_INDEX, 4, &6u16.to_le_bytes())
            .unwrap();
        r.mem.write(BASE, &[0xab; 64]).unwrap();
        r.c.map(0x100_0000, BASE, PG, Prot::RW).unwrap();
        edu_dma(d, 0x100_0000, 0x40000, 64, false);
        let buffer = m.edu().dma_buffer();
        assert_eq!(buffer[..64], [0xab; 64]);
        wr64(d, 0x04, 0x1234_5678);
        wr64(d, 0x08, 5);
        wr64(d, 0x20, 0x80);
        wr64(d, 0x60, 0x100);
        wr64(d, 0x80, 0x40000);
        wr64(d, 0x88, 0x1000);
        wr64(d, 0x90, 8);
        assert_eq!(rd32(d, 0x24), 0x100);
        d.reset().unwrap();
        assert_eq!(rd32(d, 0x04), !0x1234_5678u32);
        assert_eq!(rd32(d, 0x08), 120);
        for off in [0x20, 0x24, 0x80, 0x88, 0x90, 0x98] {
            assert_eq!(rd32(d, off), 0, "register {off:#x}");
        }
        assert_eq!(m.edu().dma_buffer(), buffer);
    }

    #[test]
    fn pins_are_cached_sparse_and_dropped_on_unmap_and_close() {
        let r = mdev_rig(MdevDmaMode::Pin);
        let (c, mem) = (&r.c, &r.mem);
        let Some(m) = r.mdev.clone() else { return };
        let d = r.dev.as_ref();
        d.region_write(VFIO_PCI_CONFIG_REGION_INDEX, 4, &6u16.to_le_bytes())
            .unwrap();
        c.map(0x100_0000, BASE, 32 * PG, Prot::RW).unwrap();
        // Two pages far apart: only they are pinned (a GTT-like pattern).
        edu_dma(d, 0x100_0000 + 3 * PG, 0x40000, 64, false);
        edu_dma(d, 0x40000, 0x100_0000 + 20 * PG, 64, true);
        assert_eq!(
            m.cached_pins(),
            vec![0x100_0000 + 3 * PG, 0x100_0000 + 20 * PG]
        );
        assert_eq!(c.external_pins(), (2, 2));
        assert_eq!(mem.account().locked_pages(), 2);
        // Again: served from the cache, no new pin.
        edu_dma(d, 0x100_0000 + 3 * PG, 0x40000, 64, false);
        let s = m.stats();
        assert_eq!(s.pin_calls, 2);
        assert!(s.cache_hits >= 1);
        // A write to a page pinned for read pins it again, for write.
        edu_dma(d, 0x40000, 0x100_0000 + 3 * PG, 64, true);
        assert_eq!(c.external_pins(), (2, 3));
        // The unmap notifier drops them, the unmap succeeds.
        assert_eq!(c.unmap(0x100_0000, 32 * PG).unwrap(), 32 * PG);
        let s = m.stats();
        assert_eq!((s.unmap_notifications, s.unpinned_on_notify), (1, 2));
        assert!(m.cached_pins().is_empty());
        assert_eq!(mem.account().locked_pages(), 0);
        assert_eq!(mem.stats().pin_refs, 0);
        // Close drops pins and the registration.
        c.map(0x100_0000, BASE, 32 * PG, Prot::RW).unwrap();
        edu_dma(d, 0x100_0000, 0x40000, 64, false);
        assert_eq!(mem.account().locked_pages(), 1);
        d.close_device();
        d.attach_container(None);
        assert_eq!(mem.account().locked_pages(), 0);
        assert_eq!(c.external_device_count(), 0);
        assert!(!d.supports_svm());
        assert_eq!(d.name(), UUID);
    }
}
