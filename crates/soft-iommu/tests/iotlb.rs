//! IOTLB behaviour: stale entries until invalidation, invalidation
//! granularity, capacity.

use std::sync::Arc;

use soft_iommu::{
    Access, FaultReason, Iommu, IommuConfig, NullMemory, PhysMemory, Prot, VecMemory, SIZE_2M,
    SIZE_4K,
};

const MEM_BASE: u64 = 0x1000_0000;

#[test]
fn stale_entry_is_used_until_flushed() {
    let unit = Iommu::new(IommuConfig::default());
    let mem = Arc::new(VecMemory::new(MEM_BASE, 1 << 20));
    let domain = unit.create_domain(mem.clone()).unwrap();
    unit.attach_device(1, &domain).unwrap();
    domain.map(0x4000, MEM_BASE, SIZE_4K, Prot::RW).unwrap();
    mem.write(MEM_BASE, b"old!").unwrap();
    let port = unit.dma_port(1);
    let mut buf = [0u8; 4];
    port.read(0x4000, &mut buf).unwrap();
    port.write(0x4008, b"dirty").unwrap(); // cached entry is now dirty

    assert_eq!(domain.unmap(0x4000, SIZE_4K), SIZE_4K);
    assert_eq!(domain.iova_to_phys(0x4000), None);
    // Hardware behaviour: without an invalidation the IOTLB still translates.
    let t = port.translate(0x4000, Access::Read).unwrap();
    assert!(t.cached);
    assert_eq!(t.phys, MEM_BASE);
    port.read(0x4000, &mut buf).unwrap();
    assert_eq!(&buf, b"old!");
    port.write(0x4010, b"stale").unwrap();
    assert!(unit.faults().is_empty());

    domain.flush_range(0x4000, SIZE_4K);
    let f = port.read(0x4000, &mut buf).unwrap_err();
    assert_eq!(f.reason, FaultReason::NotPresent);
    assert_eq!(unit.iotlb_stats().valid, 0);
}

#[test]
fn a_clean_stale_entry_cannot_serve_a_write() {
    // A write needs D in the entry; a clean entry sends it to a walk, which
    // finds the leaf gone.
    let unit = Iommu::new(IommuConfig::default());
    let domain = unit.create_domain(Arc::new(NullMemory)).unwrap();
    unit.attach_device(1, &domain).unwrap();
    domain.map(0x4000, MEM_BASE, SIZE_4K, Prot::RW).unwrap();
    let port = unit.dma_port(1);
    port.read(0x4000, &mut [0; 4]).unwrap();
    domain.unmap(0x4000, SIZE_4K);
    port.read(0x4000, &mut [0; 4]).unwrap();
    let f = port.write(0x4000, &[0; 4]).unwrap_err();
    assert_eq!(f.reason, FaultReason::NotPresent);
}

/// Two domains, two devices, some cached pages each.
fn two_domains() -> (
    Arc<Iommu>,
    Arc<soft_iommu::Domain>,
    Arc<soft_iommu::Domain>,
    soft_iommu::DmaPort,
    soft_iommu::DmaPort,
) {
    let unit = Iommu::new(IommuConfig::default());
    let d1 = unit.create_domain(Arc::new(NullMemory)).unwrap();
    let d2 = unit.create_domain(Arc::new(NullMemory)).unwrap();
    unit.attach_device(1, &d1).unwrap();
    unit.attach_device(2, &d2).unwrap();
    d1.map(0, MEM_BASE, 4 * SIZE_4K, Prot::RW).unwrap();
    d1.map(SIZE_2M, 2 * SIZE_2M, SIZE_2M, Prot::RW).unwrap();
    d2.map(0, MEM_BASE, 4 * SIZE_4K, Prot::RW).unwrap();
    let p1 = unit.dma_port(1);
    let p2 = unit.dma_port(2);
    for i in 0..4 {
        p1.translate(i * SIZE_4K, Access::Read).unwrap();
        p2.translate(i * SIZE_4K, Access::Read).unwrap();
    }
    p1.translate(SIZE_2M + 0x5000, Access::Read).unwrap();
    assert_eq!(unit.iotlb_stats().valid, 9);
    (unit, d1, d2, p1, p2)
}

fn cached(unit: &Iommu, did: u32) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = unit
        .iotlb_entries()
        .iter()
        .filter(|e| e.domain == did)
        .map(|e| (e.iova, e.page_size))
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn page_selective_invalidation() {
    let (unit, d1, d2, _p1, _p2) = two_domains();
    unit.invalidate_iotlb_range(d1.id(), SIZE_4K, SIZE_4K);
    assert_eq!(
        cached(&unit, d1.id()),
        vec![
            (0, SIZE_4K),
            (2 * SIZE_4K, SIZE_4K),
            (3 * SIZE_4K, SIZE_4K),
            (SIZE_2M, SIZE_2M)
        ]
    );
    assert_eq!(cached(&unit, d2.id()).len(), 4);
    // A 4K invalidation inside a 2M entry removes the 2M entry.
    unit.invalidate_iotlb_range(d1.id(), SIZE_2M + 0x10_0000, SIZE_4K);
    assert_eq!(cached(&unit, d1.id()).len(), 3);
    // Through the domain.
    d1.flush_range(0, SIZE_4K);
    assert_eq!(
        cached(&unit, d1.id()),
        vec![(2 * SIZE_4K, SIZE_4K), (3 * SIZE_4K, SIZE_4K)]
    );
    assert_eq!(cached(&unit, d2.id()).len(), 4);
}

#[test]
fn domain_selective_invalidation() {
    let (unit, d1, d2, _p1, _p2) = two_domains();
    unit.invalidate_iotlb_domain(d1.id());
    assert!(cached(&unit, d1.id()).is_empty());
    assert_eq!(cached(&unit, d2.id()).len(), 4);
    d2.flush_all();
    assert_eq!(unit.iotlb_stats().valid, 0);
}

#[test]
fn global_invalidation() {
    let (unit, _d1, _d2, p1, _p2) = two_domains();
    unit.invalidate_iotlb_global();
    assert_eq!(unit.iotlb_stats().valid, 0);
    assert_eq!(unit.iotlb_stats().invalidated, 9);
    // Refilled on the next request.
    assert!(!p1.translate(0, Access::Read).unwrap().cached);
    assert!(p1.translate(0, Access::Read).unwrap().cached);
}

#[test]
fn capacity_is_respected() {
    let unit = Iommu::new(IommuConfig {
        iotlb_capacity: 64,
        ..IommuConfig::default()
    });
    let d = unit.create_domain(Arc::new(NullMemory)).unwrap();
    unit.attach_device(1, &d).unwrap();
    d.map(0, SIZE_4K, 4096 * SIZE_4K, Prot::RW).unwrap();
    let port = unit.dma_port(1);
    for i in 0..4096 {
        port.translate(i * SIZE_4K, Access::Read).unwrap();
        assert!(unit.iotlb_stats().valid <= 64);
    }
    let s = unit.iotlb_stats();
    assert_eq!(s.capacity, 64);
    assert_eq!(s.fills, 4096);
    assert!(s.valid > 32, "{s:?}");
    assert_eq!(s.evictions, s.fills - s.valid as u64);
    assert_eq!(port.stats().iotlb_misses, 4096);
}

#[test]
fn dropping_a_domain_frees_its_entries() {
    let unit = Iommu::new(IommuConfig::default());
    let d = unit.create_domain(Arc::new(NullMemory)).unwrap();
    unit.attach_device(1, &d).unwrap();
    d.map(0, 0, SIZE_4K, Prot::RW).unwrap();
    let port = unit.dma_port(1);
    port.translate(0, Access::Read).unwrap();
    assert_eq!(unit.iotlb_stats().valid, 1);
    unit.detach_device(1);
    // Detach of the last device using the domain drops its entries.
    assert_eq!(unit.iotlb_stats().valid, 0);
    unit.attach_device(1, &d).unwrap();
    port.translate(0, Access::Read).unwrap();
    unit.detach_device(1);
    drop(d);
    // The port still caches the old context until its next request.
    assert!(port.translate(0, Access::Read).is_err());
    assert_eq!(unit.iotlb_stats().valid, 0);
}

#[test]
fn vec_memory_reads_back_through_the_iotlb() {
    let unit = Iommu::new(IommuConfig::default());
    let mem = Arc::new(VecMemory::new(0, 1 << 16));
    let d = unit.create_domain(mem.clone()).unwrap();
    unit.attach_device(7, &d).unwrap();
    d.map(0x10_0000, 0x8000, 0x2000, Prot::RW).unwrap();
    let port = unit.dma_port(7);
    for round in 0..3u8 {
        port.write(0x10_0ff0, &[round; 32]).unwrap();
        let mut b = [0u8; 32];
        mem.read(0x8ff0, &mut b).unwrap();
        assert_eq!(b, [round; 32]);
    }
    assert!(port.stats().iotlb_hits >= 4);
}

/// A range flush probes only the page sizes the domain has mapped leaves
/// of; a cached 2 MiB entry (the domain's first 2M leaf, mapped after 4K
/// ones) is still found and dropped, and so is one whose leaf was
/// unmapped before the flush.
#[test]
fn range_flush_drops_entries_of_every_leaf_size_the_domain_used() {
    let unit = Iommu::new(IommuConfig::default());
    let domain = unit.create_domain(Arc::new(NullMemory)).unwrap();
    unit.attach_device(1, &domain).unwrap();
    let port = unit.dma_port(1);
    domain.map(0x4000, MEM_BASE, SIZE_4K, Prot::RW).unwrap();
    port.read(0x4000, &mut [0; 4]).unwrap();
    domain.unmap(0x4000, SIZE_4K);
    domain.flush_range(0x4000, SIZE_4K);
    assert_eq!(unit.iotlb_stats().valid, 0);
    // The first 2M leaf, cached, then unmapped: the flush must find it.
    domain.map(SIZE_2M, MEM_BASE, SIZE_2M, Prot::RW).unwrap();
    port.read(SIZE_2M + 0x1000, &mut [0; 4]).unwrap();
    assert_eq!(unit.iotlb_stats().valid, 1);
    assert_eq!(domain.unmap(SIZE_2M, SIZE_2M), SIZE_2M);
    assert!(
        port.translate(SIZE_2M + 0x3000, Access::Read)
            .unwrap()
            .cached
    );
    domain.flush_range(SIZE_2M, SIZE_2M);
    assert_eq!(unit.iotlb_stats().valid, 0);
    let f = port.read(SIZE_2M + 0x1000, &mut [0; 4]).unwrap_err();
    assert_eq!(f.reason, FaultReason::NotPresent);
}
