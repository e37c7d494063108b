//! The device side: translation, permissions, faults, DMA reads and writes,
//! attach/detach and reserved regions.

use std::sync::Arc;

use soft_iommu::{
    Access, AddressWidth, DmaRequest, Error, FaultReason, Iommu, IommuConfig, MemFault, PhysMemory,
    Prot, ReservedKind, ReservedRegion, VecMemory, SIZE_1G, SIZE_2M, SIZE_4K,
};

const RID: u16 = 0x0018; // 00:03.0
const MEM_BASE: u64 = 0x1000_0000;

fn setup() -> (Arc<Iommu>, Arc<soft_iommu::Domain>, Arc<VecMemory>) {
    let unit = Iommu::new(IommuConfig::default());
    let mem = Arc::new(VecMemory::new(MEM_BASE, 8 << 20));
    let domain = unit.create_domain(mem.clone()).unwrap();
    unit.attach_device(RID, &domain).unwrap();
    (unit, domain, mem)
}

#[test]
fn translates_through_mixed_pages_and_copies_across_them() {
    let (unit, domain, mem) = setup();
    // 4K page, then a 2M page, at iova 2M - 4K.
    let iova = SIZE_2M - SIZE_4K;
    domain
        .map(
            iova,
            MEM_BASE + SIZE_2M - SIZE_4K,
            SIZE_4K + SIZE_2M,
            Prot::RW,
        )
        .unwrap();
    assert_eq!(domain.leaf_counts(), (1, 1, 0));
    let port = unit.dma_port(RID);
    let t = port.translate(iova + 0x10, Access::Read).unwrap();
    assert_eq!(t.phys, MEM_BASE + SIZE_2M - SIZE_4K + 0x10);
    assert_eq!(t.page_size, SIZE_4K);
    assert!(!t.cached);
    let t2 = port.translate(iova + 0x20, Access::Read).unwrap();
    assert!(t2.cached);
    let t = port.translate(SIZE_2M + 0x1234, Access::Write).unwrap();
    assert_eq!(t.page_size, SIZE_2M);
    assert_eq!(t.page_iova, SIZE_2M);
    assert_eq!(t.phys, MEM_BASE + SIZE_2M + 0x1234);
    assert!(t.dirty && t.write && t.read);

    let data: Vec<u8> = (0..64u8).collect();
    port.write(SIZE_2M - 32, &data).unwrap();
    let mut direct = vec![0u8; 64];
    mem.read(MEM_BASE + SIZE_2M - 32, &mut direct).unwrap();
    assert_eq!(direct, data);
    let mut back = vec![0u8; 64];
    port.read(SIZE_2M - 32, &mut back).unwrap();
    assert_eq!(back, data);
    port.read(0, &mut []).unwrap();
    assert!(unit.faults().is_empty());
    let s = port.stats();
    assert_eq!(s.faults, 0);
    assert!(s.iotlb_hits >= 2 && s.iotlb_misses >= 2, "{s:?}");
}

#[test]
fn read_only_mapping_faults_on_write() {
    let (unit, domain, _mem) = setup();
    domain.map(0x5000, MEM_BASE, SIZE_4K, Prot::READ).unwrap();
    let port = unit.dma_port(RID);
    port.translate(0x5000, Access::Read).unwrap();
    let fault = port.write(0x5010, &[1, 2, 3]).unwrap_err();
    assert_eq!(fault.reason, FaultReason::NoWrite);
    assert_eq!(fault.rid, RID);
    assert_eq!(fault.iova, 0x5010);
    assert_eq!(fault.access, Access::Write);
    assert_eq!(fault.domain, Some(domain.id()));
    assert_eq!(fault.pasid, None);
    let log = unit.faults();
    assert_eq!(log, vec![fault.clone()]);
    assert_eq!(
        fault.to_string(),
        format!(
            "DMA fault #{}: no write permission on write of IOVA 0x5010 by device 0x0018",
            fault.seq
        )
    );
    // Write-only mapping refuses reads.
    domain.map(0x6000, MEM_BASE, SIZE_4K, Prot::WRITE).unwrap();
    let f = port.translate(0x6000, Access::Read).unwrap_err();
    assert_eq!(f.reason, FaultReason::NoRead);
    port.write(0x6000, &[9]).unwrap();
    assert_eq!(unit.take_faults().len(), 2);
    assert!(unit.faults().is_empty());
    assert_eq!(unit.fault_count(), 2);
    assert_eq!(port.stats().faults, 2);
}

#[test]
fn not_present_and_beyond_width() {
    let (unit, domain, _mem) = setup();
    domain.map(0x1000, MEM_BASE, SIZE_4K, Prot::RW).unwrap();
    let port = unit.dma_port(RID);
    let f = port.translate(0x2000, Access::Read).unwrap_err();
    assert_eq!(f.reason, FaultReason::NotPresent);
    assert_eq!(f.iova, 0x2000);
    // A read that runs off the end of a mapping stops there.
    let mut buf = [0u8; 16];
    let f = port.read(0x1ff8, &mut buf).unwrap_err();
    assert_eq!((f.reason, f.iova), (FaultReason::NotPresent, 0x2000));
    let f = port.translate(1 << 39, Access::Read).unwrap_err();
    assert_eq!(f.reason, FaultReason::BeyondAddressWidth);
    let f = port.write(u64::MAX - 1, &[0; 4]).unwrap_err();
    assert_eq!(f.reason, FaultReason::BeyondAddressWidth);
    // No PASID bound: the PASID entry is not present.
    let f = port
        .translate_request(DmaRequest {
            iova: 0x1000,
            access: Access::Read,
            pasid: Some(5),
        })
        .unwrap_err();
    assert_eq!(f.reason, FaultReason::PasidNotPresent);
    assert_eq!(f.pasid, Some(5));
    let reasons: Vec<FaultReason> = unit.faults().iter().map(|f| f.reason).collect();
    assert_eq!(
        reasons,
        vec![
            FaultReason::NotPresent,
            FaultReason::NotPresent,
            FaultReason::BeyondAddressWidth,
            FaultReason::BeyondAddressWidth,
            FaultReason::PasidNotPresent
        ]
    );
}

#[test]
fn blocked_device_faults() {
    let (unit, domain, _mem) = setup();
    domain.map(0x1000, MEM_BASE, SIZE_4K, Prot::RW).unwrap();
    let other = unit.dma_port(0x0020);
    let f = other.translate(0x1000, Access::Read).unwrap_err();
    assert_eq!(f.reason, FaultReason::Blocked);
    assert_eq!(f.domain, None);
    assert_eq!(f.rid, 0x0020);

    let port = unit.dma_port(RID);
    port.write(0x1000, &[1]).unwrap();
    unit.detach_device(RID);
    assert!(unit.device_domain(RID).is_none());
    let f = port.write(0x1000, &[1]).unwrap_err();
    assert_eq!(f.reason, FaultReason::Blocked);
    // Detaching twice is harmless.
    unit.detach_device(RID);
    unit.attach_device(RID, &domain).unwrap();
    port.write(0x1000, &[2]).unwrap();
    assert_eq!(unit.devices(), vec![(RID, domain.id())]);
}

#[test]
fn switching_domains_takes_effect_at_once() {
    let (unit, d1, _mem) = setup();
    let mem2 = Arc::new(VecMemory::new(0x2000_0000, 1 << 20));
    let d2 = unit.create_domain(mem2.clone()).unwrap();
    assert_ne!(d1.id(), d2.id());
    d1.map(0x1000, MEM_BASE, SIZE_4K, Prot::RW).unwrap();
    d2.map(0x1000, 0x2000_0000, SIZE_4K, Prot::RW).unwrap();
    let port = unit.dma_port(RID);
    assert_eq!(port.translate(0x1000, Access::Read).unwrap().phys, MEM_BASE);
    unit.attach_device(RID, &d2).unwrap();
    let t = port.translate(0x1000, Access::Read).unwrap();
    assert_eq!((t.phys, t.domain), (0x2000_0000, d2.id()));
    port.write(0x1000, b"two").unwrap();
    let mut b = [0u8; 3];
    mem2.read(0x2000_0000, &mut b).unwrap();
    assert_eq!(&b, b"two");
}

struct FailingMemory;

impl PhysMemory for FailingMemory {
    fn read(&self, phys: u64, _buf: &mut [u8]) -> Result<(), MemFault> {
        Err(MemFault { phys })
    }
    fn write(&self, phys: u64, _data: &[u8]) -> Result<(), MemFault> {
        Err(MemFault { phys })
    }
}

#[test]
fn memory_errors_become_faults() {
    let unit = Iommu::new(IommuConfig::default());
    let domain = unit.create_domain(Arc::new(FailingMemory)).unwrap();
    unit.attach_device(RID, &domain).unwrap();
    domain.map(0x3000, 0x7000_0000, SIZE_4K, Prot::RW).unwrap();
    let port = unit.dma_port(RID);
    let f = port.write(0x3008, &[1, 2]).unwrap_err();
    assert_eq!(f.reason, FaultReason::MemoryError);
    assert_eq!(f.phys, Some(0x7000_0008));
    assert_eq!(f.iova, 0x3008);
    let mut buf = [0u8; 2];
    let f = port.read(0x3000, &mut buf).unwrap_err();
    assert_eq!(
        (f.reason, f.access),
        (FaultReason::MemoryError, Access::Read)
    );

    // VecMemory refuses addresses outside it: a mapping past its end.
    let (unit, domain, _mem) = setup();
    domain
        .map(0x1000, MEM_BASE + (8 << 20), SIZE_4K, Prot::RW)
        .unwrap();
    let port = unit.dma_port(RID);
    let f = port.read(0x1000, &mut buf).unwrap_err();
    assert_eq!(f.reason, FaultReason::MemoryError);
}

#[test]
fn fault_log_is_bounded() {
    let unit = Iommu::new(IommuConfig {
        fault_log_capacity: 4,
        ..IommuConfig::default()
    });
    let port = unit.dma_port(1);
    for i in 0..10 {
        assert!(port.translate(i * SIZE_4K, Access::Read).is_err());
    }
    let log = unit.take_faults();
    assert_eq!(log.len(), 4);
    assert_eq!(
        log.iter().map(|f| f.seq).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert!(log.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(unit.fault_overflow(), 6);
    assert_eq!(unit.fault_count(), 10);
    port.translate(0, Access::Write).unwrap_err();
    assert_eq!(unit.faults()[0].seq, 10);
}

#[test]
fn attach_refuses_incompatible_domains() {
    let wide = Iommu::new(IommuConfig {
        name: "dmar1".into(),
        address_width: AddressWidth::Bits48,
        ..IommuConfig::default()
    });
    let narrow = Iommu::new(IommuConfig::default());
    let mem = Arc::new(VecMemory::new(0, 4096));
    let d48 = wide.create_domain(mem.clone()).unwrap();
    let err = narrow.attach_device(RID, &d48).unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "{err}");
    assert!(err.to_string().contains("address width 48"), "{err}");
    // Narrower domains are fine on a wider unit.
    let d39 = narrow.create_domain(mem.clone()).unwrap();
    wide.attach_device(RID, &d39).unwrap();
    d39.map(SIZE_1G, 0, SIZE_4K, Prot::RW).unwrap();
    assert_eq!(
        wide.dma_port(RID)
            .translate(SIZE_1G, Access::Read)
            .unwrap()
            .phys,
        0
    );
    // Page sizes the unit lacks.
    let small = Iommu::new(IommuConfig {
        super_page_1g: false,
        ..IommuConfig::default()
    });
    assert!(matches!(
        small.attach_device(RID, &d39),
        Err(Error::Incompatible { .. })
    ));
    // Snooping the unit cannot enforce.
    let snoop = Iommu::new(IommuConfig {
        snoop_control: true,
        ..IommuConfig::default()
    });
    let ds = snoop.create_domain(mem).unwrap();
    assert!(matches!(
        narrow.attach_device(RID, &ds),
        Err(Error::Incompatible { .. })
    ));
    assert!(narrow.device_domain(RID).is_none());
}

#[test]
fn a_domain_shared_by_two_units_is_flushed_on_both() {
    let a = Iommu::new(IommuConfig::default());
    let b = Iommu::new(IommuConfig {
        name: "dmar1".into(),
        ..IommuConfig::default()
    });
    let mem = Arc::new(VecMemory::new(MEM_BASE, 1 << 20));
    let d = a.create_domain(mem).unwrap();
    a.attach_device(1, &d).unwrap();
    b.attach_device(2, &d).unwrap();
    d.map(0x1000, MEM_BASE, SIZE_4K, Prot::RW).unwrap();
    let pa = a.dma_port(1);
    let pb = b.dma_port(2);
    pa.read(0x1000, &mut [0; 4]).unwrap();
    pb.read(0x1000, &mut [0; 4]).unwrap();
    assert_eq!(b.iotlb_stats().valid, 1);
    d.unmap(0x1000, SIZE_4K);
    d.flush_range(0x1000, SIZE_4K);
    assert_eq!(a.iotlb_stats().valid, 0);
    assert_eq!(b.iotlb_stats().valid, 0);
    assert!(pb.read(0x1000, &mut [0; 4]).is_err());
}

#[test]
fn reserved_regions() {
    let unit = Iommu::new(IommuConfig::default());
    let msi = ReservedRegion {
        start: 0xfee0_0000,
        end: 0xfeef_ffff,
        kind: ReservedKind::Msi,
    };
    assert_eq!(unit.reserved_regions(RID), vec![msi]);
    unit.add_reserved_region(Some(RID), 0x1000, 0x1fff, ReservedKind::Direct)
        .unwrap();
    unit.add_reserved_region(None, 0xf000_0000, 0xf0ff_ffff, ReservedKind::Reserved)
        .unwrap();
    assert_eq!(
        unit.add_reserved_region(None, 2, 1, ReservedKind::Reserved),
        Err(Error::InvalidRegion { start: 2, end: 1 })
    );
    let direct = ReservedRegion {
        start: 0x1000,
        end: 0x1fff,
        kind: ReservedKind::Direct,
    };
    let all = ReservedRegion {
        start: 0xf000_0000,
        end: 0xf0ff_ffff,
        kind: ReservedKind::Reserved,
    };
    assert_eq!(unit.reserved_regions(RID), vec![direct, all, msi]);
    assert_eq!(unit.reserved_regions(0x20), vec![all, msi]);
}

#[test]
fn ports_register_and_unregister() {
    let unit = Iommu::new(IommuConfig::default());
    let p = unit.dma_port(1);
    let q = p.clone();
    assert_eq!(q.rid(), 1);
    assert_eq!(unit.port_count(), 2);
    drop(p);
    drop(q);
    assert_eq!(unit.port_count(), 0);
}
