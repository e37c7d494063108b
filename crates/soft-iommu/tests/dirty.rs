//! Accessed and dirty bits set by device DMA, and dirty harvesting.

use std::sync::Arc;

use soft_iommu::{Access, Domain, Iommu, IommuConfig, NullMemory, Prot, SIZE_2M, SIZE_4K};

fn setup() -> (Arc<Iommu>, Arc<Domain>, soft_iommu::DmaPort) {
    let unit = Iommu::new(IommuConfig::default());
    let d = unit.create_domain(Arc::new(NullMemory)).unwrap();
    unit.attach_device(1, &d).unwrap();
    let port = unit.dma_port(1);
    (unit, d, port)
}

/// (iova, accessed, dirty) of every leaf.
fn ad_bits(d: &Domain) -> Vec<(u64, bool, bool)> {
    d.decode()
        .iter()
        .filter(|p| p.leaf)
        .map(|p| (p.iova, p.accessed, p.dirty))
        .collect()
}

fn harvest(d: &Domain, iova: u64, size: u64) -> Vec<u64> {
    let mut v = Vec::new();
    d.read_and_clear_dirty(iova, size, &mut |p| v.push(p));
    v
}

#[test]
fn dma_sets_accessed_and_dirty_on_the_right_leaf() {
    let (_u, d, port) = setup();
    d.map(0, 0x10_0000, 4 * SIZE_4K, Prot::RW).unwrap();
    assert_eq!(
        ad_bits(&d),
        vec![
            (0, false, false),
            (0x1000, false, false),
            (0x2000, false, false),
            (0x3000, false, false)
        ]
    );
    port.read(0x1000, &mut [0; 8]).unwrap();
    port.write(0x2ffc, &[1; 8]).unwrap(); // dirties 0x2000 and 0x3000
    assert_eq!(
        ad_bits(&d),
        vec![
            (0, false, false),
            (0x1000, true, false),
            (0x2000, true, true),
            (0x3000, true, true)
        ]
    );
    // The walk marks the non-leaf entries it used as accessed too.
    assert!(d.decode().iter().filter(|p| !p.leaf).all(|p| p.accessed));
    // Decoded raw bits: A = bit 8, D = bit 9.
    let raw: Vec<u64> = d
        .decode()
        .iter()
        .filter(|p| p.leaf)
        .map(|p| p.raw)
        .collect();
    assert_eq!(raw[2], 0x10_2000 | 0x3 | 0x100 | 0x200);
}

#[test]
fn first_write_through_a_cached_clean_entry_sets_dirty() {
    let (_u, d, port) = setup();
    d.map(0, 0x10_0000, SIZE_4K, Prot::RW).unwrap();
    port.read(0, &mut [0; 8]).unwrap();
    assert!(port.translate(0, Access::Read).unwrap().cached);
    assert_eq!(ad_bits(&d), vec![(0, true, false)]);
    let t = port.translate(0, Access::Write).unwrap();
    assert!(!t.cached && t.dirty);
    assert_eq!(ad_bits(&d), vec![(0, true, true)]);
    // Now the cached entry is dirty and serves writes.
    assert!(port.translate(0, Access::Write).unwrap().cached);
}

#[test]
fn read_and_clear_dirty_reports_exactly_the_written_pages() {
    let (_u, d, port) = setup();
    d.map(0, 0x10_0000, 64 * SIZE_4K, Prot::RW).unwrap();
    for page in [3u64, 4, 17, 63] {
        port.write(page * SIZE_4K + 100, &[7; 4]).unwrap();
    }
    port.read(5 * SIZE_4K, &mut [0; 4]).unwrap();
    assert_eq!(
        harvest(&d, 0, 64 * SIZE_4K),
        vec![3 * SIZE_4K, 4 * SIZE_4K, 17 * SIZE_4K, 63 * SIZE_4K]
    );
    assert!(ad_bits(&d).iter().all(|&(_, _, dirty)| !dirty));
    assert!(harvest(&d, 0, 64 * SIZE_4K).is_empty());
    // The IOTLB entry of page 3 was invalidated: the next write sets D again.
    port.write(3 * SIZE_4K, &[1]).unwrap();
    assert_eq!(harvest(&d, 0, 64 * SIZE_4K), vec![3 * SIZE_4K]);
    // A restricted range reports and clears only its leaves.
    port.write(10 * SIZE_4K, &[1]).unwrap();
    port.write(20 * SIZE_4K, &[1]).unwrap();
    assert_eq!(harvest(&d, 15 * SIZE_4K, 10 * SIZE_4K), vec![20 * SIZE_4K]);
    assert_eq!(harvest(&d, 0, 64 * SIZE_4K), vec![10 * SIZE_4K]);
}

#[test]
fn a_dirty_super_page_reports_all_its_pages() {
    let (_u, d, port) = setup();
    d.map(SIZE_2M, 0x4000_0000, 2 * SIZE_2M, Prot::RW).unwrap();
    assert_eq!(d.leaf_counts(), (0, 2, 0));
    port.write(3 * SIZE_2M - 8, &[1; 4]).unwrap();
    let pages = harvest(&d, 0, 4 * SIZE_2M);
    assert_eq!(pages.len(), 512);
    assert_eq!(pages[0], 2 * SIZE_2M);
    assert_eq!(pages[511], 3 * SIZE_2M - SIZE_4K);
    assert!(pages.windows(2).all(|w| w[1] == w[0] + SIZE_4K));
    assert_eq!(
        ad_bits(&d),
        vec![(SIZE_2M, false, false), (2 * SIZE_2M, true, false)]
    );
}

#[test]
fn dirty_through_read_only_or_holes() {
    let (_u, d, port) = setup();
    d.map(0, 0x10_0000, SIZE_4K, Prot::READ).unwrap();
    d.map(0x10_0000, 0x20_0000, SIZE_4K, Prot::RW).unwrap();
    assert!(port.write(0, &[1]).is_err());
    port.write(0x10_0000, &[1]).unwrap();
    // Holes are skipped, not a stop.
    assert_eq!(harvest(&d, 0, 1 << 30), vec![0x10_0000]);
    assert!(harvest(&d, 1 << 39, 4096).is_empty());
    assert!(harvest(&d, 0, 0).is_empty());
}
