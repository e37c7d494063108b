//! The engine's IOMMU traits over the soft-iommu VT-d model.
//!
//! - [`VtdUnit`] is one DMAR unit ([`soft_iommu::Iommu`]) as an [`IommuUnit`];
//! - [`VtdDomain`] is a [`soft_iommu::Domain`] as [`DomainOps`];
//! - [`UserPhysMemory`] lets translated DMA reach a [`UserMemory`]: the
//!   "physical" address of the model is the user virtual address of the
//!   pinned page, so a page the user unmapped since is a recorded
//!   memory-error fault, never a crash.

use std::any::Any;
use std::sync::Arc;

use soft_iommu::{Domain, Iommu, IommuConfig, MemFault, PhysMemory, ReservedKind};

use crate::iommu::{DomainOps, IommuError, IommuUnit, Prot, ResvKind, ResvRegion};
use crate::memory::UserMemory;

/// DMA through the model lands in user memory.
pub struct UserPhysMemory {
    mem: Arc<dyn UserMemory>,
}

impl UserPhysMemory {
    /// DMA through the model reaches `mem`.
    pub fn new(mem: Arc<dyn UserMemory>) -> Self {
        UserPhysMemory { mem }
    }

    /// The user memory behind it.
    pub fn user_memory(&self) -> &Arc<dyn UserMemory> {
        &self.mem
    }
}

impl PhysMemory for UserPhysMemory {
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        self.mem.dma_read(phys, buf).map_err(|_| MemFault { phys })
    }

    fn write(&self, phys: u64, data: &[u8]) -> Result<(), MemFault> {
        self.mem
            .dma_write(phys, data)
            .map_err(|_| MemFault { phys })
    }
}

/// The model's errors as the engine's (and so as the kernel's errno).
fn to_engine_error(e: soft_iommu::Error) -> IommuError {
    use soft_iommu::Error as E;
    match e {
        E::AlreadyMapped { .. } => IommuError::AlreadyMapped,
        E::OutOfRange { .. } | E::PhysTooLarge { .. } => IommuError::OutOfRange,
        // type1 never maps without access rights; the kernel's answer to
        // either is EINVAL, which is what Misaligned reports.
        E::Misaligned { .. } | E::NoAccess | E::InvalidRegion { .. } => IommuError::Misaligned,
        E::NoMem => IommuError::NoMem,
        E::Incompatible { reason, .. } => IommuError::Incompatible(reason),
    }
}

fn to_engine_kind(kind: ReservedKind) -> ResvKind {
    match kind {
        ReservedKind::Direct => ResvKind::Direct,
        ReservedKind::DirectRelaxable => ResvKind::DirectRelaxable,
        ReservedKind::Reserved => ResvKind::Reserved,
        ReservedKind::Msi => ResvKind::Msi,
        ReservedKind::SwMsi => ResvKind::SwMsi,
    }
}

/// The model's kind for an engine kind (for configured reserved regions).
pub fn to_model_kind(kind: ResvKind) -> ReservedKind {
    match kind {
        ResvKind::Direct => ReservedKind::Direct,
        ResvKind::DirectRelaxable => ReservedKind::DirectRelaxable,
        ResvKind::Reserved => ReservedKind::Reserved,
        ResvKind::Msi => ReservedKind::Msi,
        ResvKind::SwMsi => ReservedKind::SwMsi,
    }
}

/// A VT-d domain as the engine sees it.
pub struct VtdDomain {
    domain: Arc<Domain>,
}

impl VtdDomain {
    /// The engine's view of a model domain.
    pub fn new(domain: Arc<Domain>) -> Self {
        VtdDomain { domain }
    }

    /// The model's domain (page-table dump, IOTLB ids, ...).
    pub fn domain(&self) -> &Arc<Domain> {
        &self.domain
    }

    /// The VT-d domain behind an engine domain, if it is one.
    pub fn of(domain: &dyn DomainOps) -> Option<&VtdDomain> {
        domain.as_any().downcast_ref::<VtdDomain>()
    }
}

impl DomainOps for VtdDomain {
    fn id(&self) -> u32 {
        self.domain.id()
    }

    fn map(&self, iova: u64, phys: u64, size: u64, prot: Prot) -> Result<(), IommuError> {
        let prot = soft_iommu::Prot {
            read: prot.read,
            write: prot.write,
        };
        self.domain
            .map(iova, phys, size, prot)
            .map_err(to_engine_error)
    }

    fn map_capped(
        &self,
        iova: u64,
        phys: u64,
        size: u64,
        prot: Prot,
        max_page: u64,
    ) -> Option<Result<(), IommuError>> {
        let prot = soft_iommu::Prot {
            read: prot.read,
            write: prot.write,
        };
        Some(
            self.domain
                .map_capped(iova, phys, size, prot, max_page)
                .map_err(to_engine_error),
        )
    }

    fn unmap(&self, iova: u64, size: u64) -> u64 {
        self.domain.unmap(iova, size)
    }

    fn flush(&self, iova: u64, size: u64) {
        self.domain.flush_range(iova, size);
    }

    fn iova_to_phys(&self, iova: u64) -> Option<u64> {
        self.domain.iova_to_phys(iova)
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.domain.pgsize_bitmap()
    }

    fn aperture(&self) -> (u64, u64) {
        self.domain.aperture()
    }

    fn enforce_cache_coherency(&self) -> bool {
        self.domain.enforce_cache_coherency()
    }

    fn read_and_clear_dirty(&self, iova: u64, size: u64, dirty: &mut dyn FnMut(u64)) {
        self.domain.read_and_clear_dirty(iova, size, dirty);
    }

    fn leaf_counts(&self) -> (u64, u64, u64) {
        self.domain.leaf_counts()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A VT-d DMAR unit as the engine sees it.
pub struct VtdUnit {
    iommu: Arc<Iommu>,
}

impl VtdUnit {
    /// The engine's view of a model unit.
    pub fn new(iommu: Arc<Iommu>) -> Self {
        VtdUnit { iommu }
    }

    /// A unit with its own model instance.
    pub fn with_config(cfg: IommuConfig) -> Self {
        VtdUnit::new(Iommu::new(cfg))
    }

    /// The model: DMA ports, fault log, IOTLB statistics.
    pub fn iommu(&self) -> &Arc<Iommu> {
        &self.iommu
    }
}

impl IommuUnit for VtdUnit {
    fn name(&self) -> String {
        self.iommu.name().to_string()
    }

    fn alloc_domain(&self, mem: Arc<dyn UserMemory>) -> Result<Arc<dyn DomainOps>, IommuError> {
        let domain = self
            .iommu
            .create_domain(Arc::new(UserPhysMemory::new(mem)))
            .map_err(to_engine_error)?;
        Ok(Arc::new(VtdDomain::new(domain)))
    }

    fn attach_device(&self, rid: u16, domain: &Arc<dyn DomainOps>) -> Result<(), IommuError> {
        let Some(vtd) = VtdDomain::of(domain.as_ref()) else {
            return Err(IommuError::Incompatible(format!(
                "domain {} is not a VT-d domain",
                domain.id()
            )));
        };
        self.iommu
            .attach_device(rid, vtd.domain())
            .map_err(to_engine_error)
    }

    fn detach_device(&self, rid: u16) {
        self.iommu.detach_device(rid);
    }

    fn reserved_regions(&self, rid: u16) -> Vec<ResvRegion> {
        self.iommu
            .reserved_regions(rid)
            .into_iter()
            .map(|r| ResvRegion {
                start: r.start,
                end: r.end,
                kind: to_engine_kind(r.kind),
            })
            .collect()
    }

    fn hw_info(&self) -> Option<crate::iommu::HwInfo> {
        Some(vtd_hw_info(self.iommu.config()))
    }

    fn supports_pasid(&self) -> bool {
        true
    }

    fn bind_pasid(&self, rid: u16, mem: Arc<dyn UserMemory>) -> crate::Result<u32> {
        self.iommu
            .bind_pasid(rid, Arc::new(UserPhysMemory::new(mem)))
            .map_err(to_svm_error)
    }

    fn unbind_pasid(
        &self,
        rid: u16,
        pasid: u32,
        release: crate::pasid::SvmRelease,
    ) -> crate::Result<()> {
        use crate::pasid::SvmRelease;
        let release = match release {
            SvmRelease::Retire => soft_iommu::PasidRelease::Retire,
            SvmRelease::Flushed => soft_iommu::PasidRelease::Flushed,
            SvmRelease::Clean => soft_iommu::PasidRelease::Clean,
        };
        self.iommu
            .unbind_pasid(rid, pasid, release)
            .map_err(to_svm_error)
    }

    fn bind_pasid_table(&self, rid: u16, ptr: u64, size: u32) -> crate::Result<()> {
        self.iommu
            .bind_guest_pasid_table(rid, ptr, size)
            .map_err(to_svm_error)
    }

    fn unbind_pasid_table(&self, rid: u16) -> crate::Result<()> {
        self.iommu
            .unbind_guest_pasid_table(rid)
            .map_err(to_svm_error)
    }

    fn invalidate(&self, rid: u16, inv: crate::pasid::SvmInvalidate) -> crate::Result<()> {
        use crate::pasid::SvmGranularity;
        let granularity = match inv.granularity {
            SvmGranularity::Global => soft_iommu::Granularity::Global,
            SvmGranularity::Pasid(p) => soft_iommu::Granularity::Pasid(p),
            SvmGranularity::Page { pasid, addr, size } => {
                soft_iommu::Granularity::Page { pasid, addr, size }
            }
        };
        self.iommu
            .invalidate_nested(
                rid,
                soft_iommu::NestedInvalidation {
                    iotlb: inv.iotlb,
                    pasid_cache: inv.pasid_cache,
                    granularity,
                },
            )
            .map_err(to_svm_error)
    }

    fn release_pasids(&self, rid: u16) {
        self.iommu.release_pasids(rid);
    }
}

/// PASID errors as the engine's (see docs/SVM.md for the errno table).
fn to_svm_error(e: soft_iommu::PasidError) -> crate::VfioError {
    use crate::VfioError;
    use soft_iommu::PasidError as E;
    match e {
        E::NoDevice(_) => VfioError::NoDevice,
        E::Busy(what) => VfioError::Busy(what),
        E::NoSpace => VfioError::NoSpace,
        E::NotBound(_) => VfioError::NoEntry,
        E::Invalid(what) => VfioError::Invalid(what),
        E::TableNotMapped { .. } => VfioError::Fault,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use soft_iommu::{Access, AddressWidth, FaultReason};

    use super::*;
    use crate::account::MmAccount;
    use crate::memory::{LockPolicy, MemError, PinStats, PinnedRun, PAGE_SIZE};

    /// User memory at `[base, base + len)`; pinning just reports runs.
    struct TestMemory {
        base: u64,
        bytes: Mutex<Vec<u8>>,
        account: Arc<MmAccount>,
    }

    impl TestMemory {
        fn new(base: u64, len: usize) -> Arc<Self> {
            Arc::new(TestMemory {
                base,
                bytes: Mutex::new(vec![0; len]),
                account: Arc::new(MmAccount::new()),
            })
        }

        fn offset(&self, vaddr: u64, len: usize) -> Result<usize, MemError> {
            let bytes = self.bytes.lock().unwrap();
            let off = vaddr.checked_sub(self.base).ok_or(MemError::Fault)? as usize;
            if off + len > bytes.len() {
                return Err(MemError::Fault);
            }
            Ok(off)
        }
    }

    impl UserMemory for TestMemory {
        fn pin(
            &self,
            vaddr: u64,
            len: u64,
            _write: bool,
            on_run: &mut dyn FnMut(PinnedRun) -> Result<(), MemError>,
        ) -> Result<(), MemError> {
            self.offset(vaddr, len as usize)?;
            on_run(PinnedRun {
                vaddr,
                len,
                page_size: PAGE_SIZE,
                pfn: None,
            })
        }

        fn unpin(&self, _vaddr: u64, _len: u64) {}

        fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), MemError> {
            let off = self.offset(vaddr, buf.len())?;
            buf.copy_from_slice(&self.bytes.lock().unwrap()[off..off + buf.len()]);
            Ok(())
        }

        fn write(&self, vaddr: u64, data: &[u8]) -> Result<(), MemError> {
            let off = self.offset(vaddr, data.len())?;
            self.bytes.lock().unwrap()[off..off + data.len()].copy_from_slice(data);
            Ok(())
        }

        fn lock_policy(&self) -> LockPolicy {
            LockPolicy {
                cap_ipc_lock: true,
                limit_pages: u64::MAX,
            }
        }

        fn account(&self) -> &Arc<MmAccount> {
            &self.account
        }

        fn stats(&self) -> PinStats {
            PinStats::default()
        }

        fn describe(&self) -> String {
            "test".to_string()
        }
    }

    const BASE: u64 = 0x7f00_0000_0000; // 2M aligned, like a user mapping
    const RID: u16 = 0x18;

    fn setup() -> (VtdUnit, Arc<TestMemory>, Arc<dyn DomainOps>) {
        let unit = VtdUnit::with_config(IommuConfig::default());
        let mem = TestMemory::new(BASE, 4 << 20);
        let domain = unit.alloc_domain(mem.clone()).unwrap();
        (unit, mem, domain)
    }

    #[test]
    fn map_attach_dma_unmap_flush() {
        let (unit, mem, domain) = setup();
        assert_eq!(unit.name(), "dmar0");
        assert_eq!(domain.pgsize_bitmap(), 0x4020_1000);
        assert_eq!(domain.aperture(), (0, (1 << 39) - 1));
        assert!(!domain.enforce_cache_coherency());
        // 2M + 4K at 2M-aligned iova and user address: one 2M leaf, one 4K.
        domain
            .map(0x20_0000, BASE, (2 << 20) + 4096, Prot::RW)
            .unwrap();
        assert_eq!(domain.leaf_counts(), (1, 1, 0));
        assert_eq!(domain.iova_to_phys(0x20_0010), Some(BASE + 0x10));
        unit.attach_device(RID, &domain).unwrap();

        let port = unit.iommu().dma_port(RID);
        port.write(0x20_0000 + (2 << 20) - 2, b"edge").unwrap();
        let mut buf = [0u8; 4];
        mem.read(BASE + (2 << 20) - 2, &mut buf).unwrap();
        assert_eq!(&buf, b"edge");

        let mut dirty = Vec::new();
        domain.read_and_clear_dirty(0, 1 << 30, &mut |iova| dirty.push(iova));
        assert_eq!(dirty.len(), 513); // the 2M page and the 4K page
        assert_eq!(dirty[512], 0x40_0000);

        assert_eq!(domain.unmap(0x20_0000, 4096), 2 << 20);
        domain.flush(0x20_0000, 2 << 20);
        let f = port.read(0x20_0000, &mut buf).unwrap_err();
        assert_eq!(f.reason, FaultReason::NotPresent);
        assert_eq!(f.rid, RID);

        unit.detach_device(RID);
        let f = port.translate(0x40_0000, Access::Read).unwrap_err();
        assert_eq!(f.reason, FaultReason::Blocked);
    }

    #[test]
    fn errors_map_to_the_engine_errno() {
        let (_unit, _mem, domain) = setup();
        domain.map(0, BASE, 4096, Prot::READ).unwrap();
        let e = domain.map(0, BASE, 4096, Prot::READ).unwrap_err();
        assert_eq!(e, IommuError::AlreadyMapped);
        assert_eq!(e.errno(), libc::EEXIST);
        let e = domain.map(1 << 39, BASE, 4096, Prot::READ).unwrap_err();
        assert_eq!(e, IommuError::OutOfRange);
        assert_eq!(e.errno(), libc::EINVAL);
        let e = domain.map(0x1800, BASE, 4096, Prot::READ).unwrap_err();
        assert_eq!(e, IommuError::Misaligned);
        let e = domain.map(0x2000, BASE, 4096, Prot::default()).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
    }

    #[test]
    fn dma_to_memory_the_user_lost_is_a_fault() {
        let (unit, _mem, domain) = setup();
        // Mapped beyond what the test memory holds (the user unmapped it).
        domain
            .map(0x1000, BASE + (4 << 20), 4096, Prot::RW)
            .unwrap();
        unit.attach_device(RID, &domain).unwrap();
        let port = unit.iommu().dma_port(RID);
        let f = port.write(0x1000, &[1, 2, 3]).unwrap_err();
        assert_eq!(f.reason, FaultReason::MemoryError);
        assert_eq!(f.phys, Some(BASE + (4 << 20)));
        assert_eq!(unit.iommu().faults().len(), 1);
    }

    struct OtherDomain;

    impl DomainOps for OtherDomain {
        fn id(&self) -> u32 {
            999
        }
        fn map(&self, _: u64, _: u64, _: u64, _: Prot) -> Result<(), IommuError> {
            Ok(())
        }
        fn unmap(&self, _: u64, _: u64) -> u64 {
            0
        }
        fn flush(&self, _: u64, _: u64) {}
        fn iova_to_phys(&self, _: u64) -> Option<u64> {
            None
        }
        fn pgsize_bitmap(&self) -> u64 {
            4096
        }
        fn aperture(&self) -> (u64, u64) {
            (0, u64::MAX)
        }
        fn enforce_cache_coherency(&self) -> bool {
            false
        }
        fn read_and_clear_dirty(&self, _: u64, _: u64, _: &mut dyn FnMut(u64)) {}
        fn leaf_counts(&self) -> (u64, u64, u64) {
            (0, 0, 0)
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    #[test]
    fn attach_refuses_wider_and_foreign_domains() {
        let narrow = VtdUnit::with_config(IommuConfig::default());
        let wide = VtdUnit::with_config(IommuConfig {
            name: "dmar1".into(),
            address_width: AddressWidth::Bits48,
            ..IommuConfig::default()
        });
        let mem = TestMemory::new(BASE, 4096);
        let d48 = wide.alloc_domain(mem.clone()).unwrap();
        assert_eq!(d48.aperture(), (0, (1 << 48) - 1));
        let e = narrow.attach_device(RID, &d48).unwrap_err();
        assert!(
            matches!(e, IommuError::Incompatible(ref s) if s.contains("address width")),
            "{e}"
        );
        let foreign: Arc<dyn DomainOps> = Arc::new(OtherDomain);
        assert!(matches!(
            narrow.attach_device(RID, &foreign),
            Err(IommuError::Incompatible(_))
        ));
        // The engine then allocates a domain on the unit itself.
        let d39 = narrow.alloc_domain(mem).unwrap();
        narrow.attach_device(RID, &d39).unwrap();
        assert_ne!(d39.id(), d48.id());
        assert!(VtdDomain::of(d39.as_ref()).is_some());
        assert!(VtdDomain::of(foreign.as_ref()).is_none());
    }

    #[test]
    fn reserved_regions_include_the_msi_window() {
        let unit = VtdUnit::with_config(IommuConfig::default());
        unit.iommu()
            .add_reserved_region(
                Some(RID),
                0xa_0000,
                0xb_ffff,
                to_model_kind(ResvKind::Direct),
            )
            .unwrap();
        assert_eq!(
            unit.reserved_regions(RID),
            vec![
                ResvRegion {
                    start: 0xa_0000,
                    end: 0xb_ffff,
                    kind: ResvKind::Direct
                },
                ResvRegion {
                    start: 0xfee0_0000,
                    end: 0xfeef_ffff,
                    kind: ResvKind::Msi
                },
            ]
        );
        assert_eq!(unit.reserved_regions(0x20).len(), 1);
    }
}

/// The capability and extended capability registers of a unit with this
/// configuration, laid out as the VT-d specification (11.4.2, 11.4.3) and
/// valued as QEMU's `intel-iommu` (the reference platform) reports them:
/// 16-bit domain ids, caching mode, 1 fault register at 0x220, page
/// selective invalidation, 2^18-page invalidation hints, drain reads and
/// writes; queued invalidation, interrupt remapping, pass-through, the
/// IOTLB registers at 0xf0. The address width, super pages and snoop
/// control follow the configuration. Linux 6.12 flags every VT-d unit
/// with erratum 772415 (`IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17`).
pub fn vtd_hw_info(cfg: &soft_iommu::IommuConfig) -> crate::iommu::HwInfo {
    let bits = u64::from(cfg.address_width.bits());
    let levels = u64::from(cfg.address_width.levels());
    let nd = 6u64; // 16-bit domain ids
    let caching_mode = 1u64 << 7;
    let sagaw = 1u64 << (8 + levels - 2); // bit 1: 3 levels, bit 2: 4 levels
    let mgaw = (bits - 1) << 16;
    let fro = (0x220u64 / 16) << 24;
    let sllps = (u64::from(cfg.super_page_2m) | (u64::from(cfg.super_page_1g) << 1)) << 34;
    let psi = 1u64 << 39;
    let mamv = 18u64 << 48;
    let drain = (1u64 << 54) | (1u64 << 55);
    let cap = nd | caching_mode | sagaw | mgaw | fro | sllps | psi | mamv | drain;
    let qi = 1u64 << 1;
    let ir = 1u64 << 3;
    let pt = 1u64 << 6;
    let sc = u64::from(cfg.snoop_control) << 7;
    let iro = 0xfu64 << 8;
    let mhmv = 0xfu64 << 20;
    crate::iommu::HwInfo {
        flags: 1,
        cap_reg: cap,
        ecap_reg: qi | ir | pt | sc | iro | mhmv,
    }
}

#[cfg(test)]
mod hw_info_tests {
    #[test]
    fn default_unit_reports_qemus_registers() {
        // What Linux 6.12 read from QEMU's intel-iommu (aw-bits=39,
        // caching-mode=on, intremap=on): tests-oracle/kernel-6.12-iommufd.txt.
        let info = super::vtd_hw_info(&soft_iommu::IommuConfig::default());
        assert_eq!(info.cap_reg, 0xd2008c22260286);
        assert_eq!(info.ecap_reg, 0xf00f4a);
        assert_eq!(info.flags, 1);
    }
}
