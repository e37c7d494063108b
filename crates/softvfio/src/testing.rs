//! Small test doubles for the engine's unit tests: a Vec-backed address
//! space and a map-backed IOMMU with failure injection. Integration tests
//! use the real backends (`memory::host`, `memory::sim`, `iommu::vtd`).

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::account::MmAccount;
use crate::device::{IrqInfo, RegionInfo, VfioDeviceModel};
use crate::iommu::{DomainOps, IommuError, IommuUnit, Prot, ResvKind, ResvRegion};
use crate::memory::{LockPolicy, MemError, PinStats, PinnedRun, UserMemory, PAGE_SIZE};
use crate::platform::{Device, Group, GroupKind, Platform};

pub mod churn;
pub mod inject;
pub mod ioas_model;
pub mod model;
pub mod probe;

/// Memory at `[base, base + len)`, all readable and writable.
pub struct VecMemory {
    base: u64,
    data: Mutex<Vec<u8>>,
    pins: Mutex<BTreeMap<u64, u64>>,
    account: Arc<MmAccount>,
    /// What `lock_policy` reports (tests change it).
    pub policy: Mutex<LockPolicy>,
    /// Fail the pin operation when this many more pins have happened.
    pub fail_pin_after: AtomicU64,
    /// What `cap_sys_resource` reports (tests change it).
    pub cap_sys_resource: std::sync::atomic::AtomicBool,
}

impl VecMemory {
    /// `len` bytes of zeroed memory at user address `base`.
    pub fn new(base: u64, len: usize) -> Arc<Self> {
        Arc::new(Self {
            base,
            data: Mutex::new(vec![0; len]),
            pins: Mutex::new(BTreeMap::new()),
            account: Arc::new(MmAccount::new()),
            policy: Mutex::new(LockPolicy {
                cap_ipc_lock: true,
                limit_pages: u64::MAX,
            }),
            fail_pin_after: AtomicU64::new(u64::MAX),
            cap_sys_resource: std::sync::atomic::AtomicBool::new(true),
        })
    }

    fn in_range(&self, addr: u64, len: u64) -> bool {
        let size = self.data.lock().map(|d| d.len() as u64).unwrap_or(0);
        addr >= self.base && addr.saturating_add(len) <= self.base + size
    }

    /// Pin count of the page at `addr`.
    pub fn pin_count(&self, addr: u64) -> u64 {
        self.pins
            .lock()
            .ok()
            .and_then(|p| p.get(&(addr & !(PAGE_SIZE - 1))).copied())
            .unwrap_or(0)
    }

    /// Sum of the pin counts of all pages.
    pub fn total_pins(&self) -> u64 {
        self.pins.lock().map(|p| p.values().sum()).unwrap_or(0)
    }
}

impl UserMemory for VecMemory {
    fn pin(
        &self,
        vaddr: u64,
        len: u64,
        _write: bool,
        on_run: &mut dyn FnMut(PinnedRun) -> Result<(), MemError>,
    ) -> Result<(), MemError> {
        if !self.in_range(vaddr, len) {
            return Err(MemError::Fault);
        }
        let mut done = 0;
        let mut result = Ok(());
        while done < len {
            if self.fail_pin_after.load(Ordering::SeqCst) == 0 {
                result = Err(MemError::Injected);
                break;
            }
            let _ = self
                .fail_pin_after
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
            if let Ok(mut p) = self.pins.lock() {
                *p.entry(vaddr + done).or_insert(0) += 1;
            }
            let run = PinnedRun {
                vaddr: vaddr + done,
                len: PAGE_SIZE,
                page_size: PAGE_SIZE,
                pfn: None,
            };
            done += PAGE_SIZE;
            if let Err(e) = on_run(run) {
                result = Err(e);
                break;
            }
        }
        if result.is_err() {
            self.unpin(vaddr, done);
        }
        result
    }

    fn unpin(&self, vaddr: u64, len: u64) {
        if let Ok(mut p) = self.pins.lock() {
            let mut a = vaddr;
            while a < vaddr + len {
                if let Some(c) = p.get_mut(&a) {
                    *c -= 1;
                    if *c == 0 {
                        p.remove(&a);
                    }
                }
                a += PAGE_SIZE;
            }
        }
    }

    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        if !self.in_range(vaddr, buf.len() as u64) {
            return Err(MemError::Fault);
        }
        let d = self.data.lock().map_err(|_| MemError::Fault)?;
        let off = (vaddr - self.base) as usize;
        buf.copy_from_slice(&d[off..off + buf.len()]);
        Ok(())
    }

    fn write(&self, vaddr: u64, data: &[u8]) -> Result<(), MemError> {
        if !self.in_range(vaddr, data.len() as u64) {
            return Err(MemError::Fault);
        }
        let mut d = self.data.lock().map_err(|_| MemError::Fault)?;
        let off = (vaddr - self.base) as usize;
        d[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn cap_sys_resource(&self) -> bool {
        self.cap_sys_resource.load(Ordering::SeqCst)
    }

    fn lock_policy(&self) -> LockPolicy {
        self.policy.lock().map(|p| *p).unwrap_or(LockPolicy {
            cap_ipc_lock: true,
            limit_pages: u64::MAX,
        })
    }

    fn account(&self) -> &Arc<MmAccount> {
        &self.account
    }

    fn stats(&self) -> PinStats {
        let p = self.pins.lock().map(|p| p.clone()).unwrap_or_default();
        PinStats {
            pinned_pages: p.len() as u64,
            pin_refs: p.values().sum(),
            ..PinStats::default()
        }
    }

    fn describe(&self) -> String {
        "test vec memory".into()
    }
}

/// A map-backed domain: one entry per mapped page.
pub struct FakeDomain {
    id: u32,
    aperture: (u64, u64),
    pgsizes: u64,
    enforce_cc: bool,
    /// Mapped pages: IOVA → (user address, protection).
    pub pages: Mutex<BTreeMap<u64, (u64, Prot)>>,
    /// Fail the map call when this many more maps have happened.
    pub fail_map_after: AtomicU64,
}

impl DomainOps for FakeDomain {
    fn id(&self) -> u32 {
        self.id
    }

    fn map(&self, iova: u64, phys: u64, size: u64, prot: Prot) -> Result<(), IommuError> {
        if self.fail_map_after.load(Ordering::SeqCst) == 0 {
            return Err(IommuError::Injected);
        }
        let _ = self
            .fail_map_after
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
        if iova < self.aperture.0 || iova + size - 1 > self.aperture.1 {
            return Err(IommuError::OutOfRange);
        }
        let mut p = self.pages.lock().map_err(|_| IommuError::NoMem)?;
        let mut off = 0;
        while off < size {
            if p.contains_key(&(iova + off)) {
                return Err(IommuError::AlreadyMapped);
            }
            off += PAGE_SIZE;
        }
        off = 0;
        while off < size {
            p.insert(iova + off, (phys + off, prot));
            off += PAGE_SIZE;
        }
        Ok(())
    }

    fn unmap(&self, iova: u64, size: u64) -> u64 {
        let Ok(mut p) = self.pages.lock() else {
            return 0;
        };
        let mut off = 0;
        while off < size {
            if p.remove(&(iova + off)).is_none() {
                break;
            }
            off += PAGE_SIZE;
        }
        off
    }

    fn flush(&self, _iova: u64, _size: u64) {}

    fn iova_to_phys(&self, iova: u64) -> Option<u64> {
        let p = self.pages.lock().ok()?;
        p.get(&(iova & !(PAGE_SIZE - 1)))
            .map(|(phys, _)| phys + (iova & (PAGE_SIZE - 1)))
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.pgsizes
    }

    fn aperture(&self) -> (u64, u64) {
        self.aperture
    }

    fn enforce_cache_coherency(&self) -> bool {
        self.enforce_cc
    }

    fn read_and_clear_dirty(&self, _iova: u64, _size: u64, _dirty: &mut dyn FnMut(u64)) {}

    fn leaf_counts(&self) -> (u64, u64, u64) {
        (self.pages.lock().map(|p| p.len() as u64).unwrap_or(0), 0, 0)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// An IOMMU unit handing out [`FakeDomain`]s.
pub struct FakeUnit {
    /// Address width in bits.
    pub width: u32,
    /// Domains enforce cache coherency.
    pub enforce_cc: bool,
    /// Reserved regions of every device.
    pub resv: Vec<ResvRegion>,
    next_id: AtomicU32,
    /// Every domain allocated so far.
    pub domains: Mutex<Vec<Arc<FakeDomain>>>,
    /// Attached devices: requester id → domain id.
    pub attached: Mutex<BTreeMap<u16, u32>>,
    /// Domain width this unit accepts at most (refuses wider domains).
    pub max_domain_width: u32,
    /// Fail the map call of newly allocated domains after this many maps.
    pub fail_map_after: AtomicU64,
}

impl FakeUnit {
    /// A unit with `width`-bit IOVAs, no reserved region.
    pub fn new(width: u32) -> Arc<Self> {
        Arc::new(Self {
            width,
            enforce_cc: false,
            resv: vec![ResvRegion {
                start: 0xfee0_0000,
                end: 0xfeef_ffff,
                kind: ResvKind::Msi,
            }],
            next_id: AtomicU32::new(1),
            domains: Mutex::new(Vec::new()),
            attached: Mutex::new(BTreeMap::new()),
            max_domain_width: width,
            fail_map_after: AtomicU64::new(u64::MAX),
        })
    }

    /// The domain the device `rid` is attached to.
    pub fn domain_of(&self, rid: u16) -> Option<u32> {
        self.attached.lock().ok()?.get(&rid).copied()
    }
}

impl IommuUnit for FakeUnit {
    fn name(&self) -> String {
        format!("fake-{}bit", self.width)
    }

    fn alloc_domain(&self, _mem: Arc<dyn UserMemory>) -> Result<Arc<dyn DomainOps>, IommuError> {
        let d = Arc::new(FakeDomain {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            aperture: (0, (1u64 << self.width) - 1),
            pgsizes: 0x4020_1000,
            enforce_cc: self.enforce_cc,
            pages: Mutex::new(BTreeMap::new()),
            fail_map_after: AtomicU64::new(self.fail_map_after.load(Ordering::SeqCst)),
        });
        if let Ok(mut v) = self.domains.lock() {
            v.push(d.clone());
        }
        Ok(d)
    }

    fn attach_device(&self, rid: u16, domain: &Arc<dyn DomainOps>) -> Result<(), IommuError> {
        let Some(fd) = domain.as_any().downcast_ref::<FakeDomain>() else {
            return Err(IommuError::Incompatible("not a fake domain".into()));
        };
        let width = 64 - fd.aperture.1.leading_zeros();
        if width > self.max_domain_width {
            return Err(IommuError::Incompatible("domain too wide".into()));
        }
        if let Ok(mut a) = self.attached.lock() {
            a.insert(rid, fd.id);
        }
        Ok(())
    }

    fn detach_device(&self, rid: u16) {
        if let Ok(mut a) = self.attached.lock() {
            a.remove(&rid);
        }
    }

    fn reserved_regions(&self, _rid: u16) -> Vec<ResvRegion> {
        self.resv.clone()
    }
}

/// A device model with no behaviour (for group tests).
pub struct NullDevice(pub String);

impl VfioDeviceModel for NullDevice {
    fn name(&self) -> &str {
        &self.0
    }
    fn flags(&self) -> u32 {
        2
    }
    fn num_regions(&self) -> u32 {
        9
    }
    fn num_irqs(&self) -> u32 {
        5
    }
    fn region_info(&self, _index: u32) -> Option<RegionInfo> {
        None
    }
    fn irq_info(&self, _index: u32) -> Option<IrqInfo> {
        None
    }
    fn region_read(&self, _i: u32, _o: u64, _b: &mut [u8]) -> Result<usize, i32> {
        Err(libc::EINVAL)
    }
    fn region_write(&self, _i: u32, _o: u64, _d: &[u8]) -> Result<usize, i32> {
        Err(libc::EINVAL)
    }
    fn reset(&self) -> Result<(), i32> {
        Err(libc::EINVAL)
    }
}

/// A group of one device behind `unit`.
pub fn iommu_group(id: u32, rid: u16, unit: Arc<dyn IommuUnit>, extra: Vec<ResvRegion>) -> Group {
    let name = format!("0000:00:{:02x}.{}", rid >> 3, rid & 7);
    Group {
        id,
        kind: GroupKind::Iommu(unit),
        devices: vec![Arc::new(Device {
            name: name.clone(),
            rid: Some(rid),
            model: Arc::new(NullDevice(name)),
        })],
        extra_reserved: extra,
    }
}

/// The reference platform's shape: one device in group 3 behind a 39-bit unit.
pub fn reference_platform(unit: Arc<dyn IommuUnit>) -> Platform {
    let mut p = Platform::new();
    p.add_group(iommu_group(3, 0x18, unit, Vec::new()));
    p
}

/// A group of one [`NullDevice`] (requester id `rid`) behind the VT-d model
/// `iommu`, as integration tests, stress tests and fuzz targets use it.
pub fn vtd_group(id: u32, rid: u16, iommu: &Arc<soft_iommu::Iommu>) -> Arc<Group> {
    let unit: Arc<dyn IommuUnit> = Arc::new(crate::iommu::vtd::VtdUnit::new(iommu.clone()));
    let name = format!("0000:00:{:02x}.{}", rid >> 3, rid & 7);
    Arc::new(Group {
        id,
        kind: GroupKind::Iommu(unit),
        devices: vec![Arc::new(Device {
            name: name.clone(),
            rid: Some(rid),
            model: Arc::new(NullDevice(name)),
        })],
        extra_reserved: Vec::new(),
    })
}

/// An eventfd resolver for callers with no descriptor table (tests, the
/// fuzzer): every non-negative number is a descriptor that is not open.
pub fn no_eventfds(fd: i32) -> crate::eventfd::EventfdArg {
    if fd < 0 {
        crate::eventfd::EventfdArg::Negative(fd)
    } else {
        crate::eventfd::EventfdArg::Error(libc::EBADF)
    }
}
