//! Page-table layout: page-size selection, exact entries, unmap semantics.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use soft_iommu::{
    AddressWidth, Domain, Error, Iommu, IommuConfig, NullMemory, Prot, PteInfo, SIZE_1G, SIZE_2M,
    SIZE_4K,
};

fn unit_with(cfg: IommuConfig) -> (Arc<Iommu>, Arc<Domain>) {
    let unit = Iommu::new(cfg);
    let domain = unit.create_domain(Arc::new(NullMemory)).unwrap();
    (unit, domain)
}

fn unit39() -> (Arc<Iommu>, Arc<Domain>) {
    unit_with(IommuConfig::default())
}

/// (level, index, raw) of every entry.
fn entries(d: &Domain) -> Vec<(u32, u16, u64)> {
    d.decode()
        .iter()
        .map(|p| (p.level, p.index, p.raw))
        .collect()
}

fn leaves(d: &Domain) -> Vec<PteInfo> {
    d.decode().into_iter().filter(|p| p.leaf).collect()
}

#[test]
fn mixed_page_sizes_exact_entries() {
    let (_u, d) = unit39();
    // 4M + 8K at 2M-aligned iova and phys: two 2M leaves, two 4K leaves.
    d.map(
        0x20_0000,
        0x4020_0000,
        4 * SIZE_2M / 2 + 2 * SIZE_4K,
        Prot::RW,
    )
    .unwrap();
    assert_eq!(
        entries(&d),
        vec![
            (3, 0, 0x1003),             // root -> level-2 table (arena table 1)
            (2, 1, 0x4020_0000 | 0x83), // 2M leaf: PS|W|R
            (2, 2, 0x4040_0000 | 0x83), // 2M leaf
            (2, 3, 0x2003),             // -> level-1 table (arena table 2)
            (1, 0, 0x4060_0000 | 0x3),  // 4K leaf
            (1, 1, 0x4060_1000 | 0x3),  // 4K leaf
        ]
    );
    assert_eq!(d.leaf_counts(), (2, 2, 0));
    let l = leaves(&d);
    assert_eq!(l[0].iova, 0x20_0000);
    assert_eq!(l[0].size, SIZE_2M);
    assert!(l[0].page_size && l[0].read && l[0].write && !l[0].accessed && !l[0].dirty);
    assert_eq!(l[0].addr, 0x4020_0000);
    assert_eq!(l[3].iova, 0x60_1000);
    assert_eq!(l[3].size, SIZE_4K);
    assert!(!l[3].page_size);
    assert_eq!(d.iova_to_phys(0x20_0123), Some(0x4020_0123));
    assert_eq!(d.iova_to_phys(0x60_1fff), Some(0x4060_1fff));
    assert_eq!(d.iova_to_phys(0x60_2000), None);
    // A range picks the entries that cover it (and the tables above them).
    let part: Vec<(u32, u16)> = d
        .decode_range(0x60_1000, 1)
        .iter()
        .map(|p| (p.level, p.index))
        .collect();
    assert_eq!(part, vec![(3, 0), (2, 3), (1, 1)]);
    assert!(d.decode_range(1 << 30, 1 << 30).is_empty());
    let dump = d.dump();
    assert_eq!(dump.lines().count(), 6);
    assert!(dump.contains("2M"), "{dump}");
}

#[test]
fn read_only_and_write_only_entries() {
    let (_u, d) = unit39();
    d.map(0, 0x1000, SIZE_4K, Prot::READ).unwrap();
    d.map(SIZE_4K, 0x2000, SIZE_4K, Prot::WRITE).unwrap();
    let l = leaves(&d);
    assert_eq!(l[0].raw, 0x1000 | 0x1);
    assert_eq!(l[1].raw, 0x2000 | 0x2);
    assert_eq!(
        d.map(2 * SIZE_4K, 0, SIZE_4K, Prot::default()),
        Err(Error::NoAccess)
    );
}

#[test]
fn page_size_follows_alignment_of_iova_and_phys() {
    struct Case {
        iova: u64,
        phys: u64,
        size: u64,
        expect: (u64, u64, u64),
    }
    let cases = [
        // Both 1G-aligned: 1G + 2M + 4K.
        Case {
            iova: SIZE_1G,
            phys: 2 * SIZE_1G,
            size: SIZE_1G + SIZE_2M + SIZE_4K,
            expect: (1, 1, 1),
        },
        // iova 1G-aligned, phys only 2M-aligned: 2M pages.
        Case {
            iova: SIZE_1G,
            phys: SIZE_1G + SIZE_2M,
            size: SIZE_1G,
            expect: (0, 512, 0),
        },
        // Both 2M-aligned, phys offset by 4K from iova alignment: 4K only.
        Case {
            iova: SIZE_2M,
            phys: SIZE_2M + SIZE_4K,
            size: 2 * SIZE_2M,
            expect: (1024, 0, 0),
        },
        // iova misaligned w.r.t. 2M, phys aligned: 4K only.
        Case {
            iova: SIZE_2M + SIZE_4K,
            phys: SIZE_2M,
            size: 2 * SIZE_2M,
            expect: (1024, 0, 0),
        },
        // Head and tail of 4K around 2M pages in the middle.
        Case {
            iova: SIZE_2M - SIZE_4K,
            phys: 3 * SIZE_2M - SIZE_4K,
            size: SIZE_4K + 2 * SIZE_2M + SIZE_4K,
            expect: (2, 2, 0),
        },
        // Smaller than a super page even when aligned.
        Case {
            iova: 0,
            phys: 0,
            size: SIZE_2M - SIZE_4K,
            expect: (511, 0, 0),
        },
        // 1G-aligned but only 1G - 4K long: 511 2M + 511 4K.
        Case {
            iova: SIZE_1G,
            phys: SIZE_1G,
            size: SIZE_1G - SIZE_4K,
            expect: (511, 511, 0),
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let (_u, d) = unit39();
        d.map(c.iova, c.phys, c.size, Prot::RW).unwrap();
        assert_eq!(d.leaf_counts(), c.expect, "case {i}");
        assert_eq!(d.mapped_bytes(), c.size, "case {i}");
        let mut off = 0;
        while off < c.size {
            assert_eq!(
                d.iova_to_phys(c.iova + off),
                Some(c.phys + off),
                "case {i} off {off:#x}"
            );
            off += 0x3000 + SIZE_4K * 7;
        }
        assert_eq!(
            d.iova_to_phys(c.iova + c.size - 1),
            Some(c.phys + c.size - 1)
        );
        assert_eq!(d.iova_to_phys(c.iova + c.size), None);
        // Unmapping the whole range returns its size exactly.
        assert_eq!(d.unmap(c.iova, c.size), c.size, "case {i}");
        assert_eq!(d.leaf_counts(), (0, 0, 0));
        assert!(leaves(&d).is_empty());
    }
}

#[test]
fn every_4k_alignment_within_a_super_page() {
    let (_u, d) = unit39();
    for k in 0..512u64 {
        let iova = SIZE_1G + k * SIZE_4K;
        let phys = 4 * SIZE_1G + k * SIZE_4K;
        d.map(iova, phys, SIZE_2M, Prot::RW).unwrap();
        let expect = if k == 0 { (0, 1, 0) } else { (512, 0, 0) };
        assert_eq!(d.leaf_counts(), expect, "k {k}");
        assert_eq!(d.iova_to_phys(iova + SIZE_2M - 1), Some(phys + SIZE_2M - 1));
        assert_eq!(d.unmap(iova, SIZE_2M), SIZE_2M);
        d.flush_all();
    }
    // iova vs phys misaligned by 4K: never a super page.
    d.map(0, SIZE_4K, 4 * SIZE_2M, Prot::RW).unwrap();
    assert_eq!(d.leaf_counts(), (2048, 0, 0));
}

#[test]
fn super_pages_can_be_disabled() {
    let (_u, d) = unit_with(IommuConfig {
        super_page_1g: false,
        ..IommuConfig::default()
    });
    assert_eq!(d.pgsize_bitmap(), SIZE_4K | SIZE_2M);
    d.map(0, 0, SIZE_1G, Prot::RW).unwrap();
    assert_eq!(d.leaf_counts(), (0, 512, 0));
    let (_u, d) = unit_with(IommuConfig {
        super_page_1g: false,
        super_page_2m: false,
        ..IommuConfig::default()
    });
    assert_eq!(d.pgsize_bitmap(), SIZE_4K);
    d.map(0, 0, 2 * SIZE_2M, Prot::RW).unwrap();
    assert_eq!(d.leaf_counts(), (1024, 0, 0));
}

#[test]
fn unmap_removes_super_pages_whole() {
    let (_u, d) = unit39();
    d.map(SIZE_2M, SIZE_2M, SIZE_2M, Prot::RW).unwrap();
    assert_eq!(d.unmap(SIZE_2M, SIZE_4K), SIZE_2M);
    assert_eq!(d.iova_to_phys(SIZE_2M + 0x5000), None);

    // A hit in the middle of a super page removes it whole too.
    d.map(SIZE_2M, SIZE_2M, SIZE_2M, Prot::RW).unwrap();
    assert_eq!(d.unmap(SIZE_2M + 0x10_0000, SIZE_4K), SIZE_2M);
    assert_eq!(d.leaf_counts(), (0, 0, 0));

    // 1G page hit by a 4K unmap.
    d.map(SIZE_1G, SIZE_1G, SIZE_1G, Prot::RW).unwrap();
    assert_eq!(d.unmap(SIZE_1G, SIZE_4K), SIZE_1G);

    // A range covering 4K pages then a 2M page then a 4K page.
    d.map(
        SIZE_2M - 2 * SIZE_4K,
        SIZE_2M - 2 * SIZE_4K,
        2 * SIZE_4K + SIZE_2M + SIZE_4K,
        Prot::RW,
    )
    .unwrap();
    assert_eq!(d.leaf_counts(), (3, 1, 0));
    // Asking for 3 pages: two 4K pages, then the 2M page whole.
    assert_eq!(
        d.unmap(SIZE_2M - 2 * SIZE_4K, 3 * SIZE_4K),
        2 * SIZE_4K + SIZE_2M
    );
    assert_eq!(d.leaf_counts(), (1, 0, 0));
    assert_eq!(d.unmap(2 * SIZE_2M, SIZE_4K), SIZE_4K);
}

#[test]
fn unmap_stops_at_the_first_hole() {
    let (_u, d) = unit39();
    d.map(0x1000, 0x1000, 0x2000, Prot::RW).unwrap(); // 0x1000..0x3000
    d.map(0x4000, 0x4000, 0x1000, Prot::RW).unwrap(); // hole at 0x3000
    assert_eq!(d.unmap(0x1000, 0x4000), 0x2000);
    assert_eq!(d.iova_to_phys(0x4000), Some(0x4000));
    // Starting at a hole unmaps nothing.
    assert_eq!(d.unmap(0x3000, 0x2000), 0);
    assert_eq!(d.iova_to_phys(0x4000), Some(0x4000));
    // A hole at the level of a whole missing table.
    d.map(0x40_0000, 0x40_0000, 0x1000, Prot::RW).unwrap();
    assert_eq!(d.unmap(0x4000, 0x40_0000), 0x1000);
    assert_eq!(d.iova_to_phys(0x40_0000), Some(0x40_0000));
    // Misaligned requests do nothing (Linux warns and returns 0).
    assert_eq!(d.unmap(0x40_0800, 0x1000), 0);
    assert_eq!(d.unmap(0x40_0000, 0x800), 0);
    assert_eq!(d.unmap(0x40_0000, 0), 0);
    assert_eq!(d.unmap(1 << 40, 0x1000), 0);
    assert_eq!(d.unmap(0x40_0000, 0x1000), 0x1000);
}

#[test]
fn map_errors_change_nothing() {
    let (_u, d) = unit39();
    d.map(0x10_0000, 0x10_0000, 0x4000, Prot::RW).unwrap();
    let before = entries(&d);
    // Overlaps at its end: the pages mapped before the conflict are undone.
    assert_eq!(
        d.map(0x0c_0000, 0x50_0000, 0x4_2000, Prot::RW),
        Err(Error::AlreadyMapped { iova: 0x10_0000 })
    );
    assert_eq!(entries(&d), before);
    assert_eq!(d.leaf_counts(), (4, 0, 0));
    assert_eq!(d.iova_to_phys(0x0c_0000), None);
    // A super page over a table that holds mappings.
    assert_eq!(
        d.map(0, 0, SIZE_2M, Prot::RW),
        Err(Error::AlreadyMapped { iova: 0 })
    );
    assert_eq!(entries(&d), before);
    // A 4K page under an existing super page.
    d.map(SIZE_1G, SIZE_1G, SIZE_1G, Prot::READ).unwrap();
    assert_eq!(
        d.map(SIZE_1G + SIZE_2M, 0, SIZE_4K, Prot::RW),
        Err(Error::AlreadyMapped {
            iova: SIZE_1G + SIZE_2M
        })
    );
    assert_eq!(
        d.map(0x1001, 0, 0x1000, Prot::RW),
        Err(Error::Misaligned {
            iova: 0x1001,
            phys: 0,
            size: 0x1000
        })
    );
    assert!(matches!(
        d.map(0, 0x800, 0x1000, Prot::RW),
        Err(Error::Misaligned { .. })
    ));
    assert!(matches!(
        d.map(0, 0, 0x1800, Prot::RW),
        Err(Error::Misaligned { .. })
    ));
    assert_eq!(d.map(0x7000, 0, 0, Prot::RW), Ok(()));
    assert!(matches!(
        d.map(0, 1 << 52, 0x1000, Prot::RW),
        Err(Error::PhysTooLarge { .. })
    ));
}

#[test]
fn aperture_is_enforced() {
    let (_u, d) = unit39();
    let top = (1u64 << 39) - SIZE_4K;
    assert_eq!(d.aperture(), (0, (1 << 39) - 1));
    assert_eq!(
        d.map(top, 0, 2 * SIZE_4K, Prot::RW),
        Err(Error::OutOfRange {
            iova: top,
            size: 2 * SIZE_4K,
            max_iova: (1 << 39) - 1
        })
    );
    assert!(matches!(
        d.map(u64::MAX - 0xfff, 0, 0x2000, Prot::RW),
        Err(Error::OutOfRange { .. })
    ));
    d.map(top, 0x5000, SIZE_4K, Prot::RW).unwrap();
    assert_eq!(d.iova_to_phys(top + 0xfff), Some(0x5fff));
    assert_eq!(d.iova_to_phys(1 << 39), None);
    // Unmap is clipped to the aperture.
    assert_eq!(d.unmap(top, 1 << 20), SIZE_4K);
}

#[test]
fn four_level_tables_for_48_bits() {
    let (_u, d) = unit_with(IommuConfig {
        address_width: AddressWidth::Bits48,
        ..IommuConfig::default()
    });
    assert_eq!(d.aperture(), (0, (1 << 48) - 1));
    let iova = (1u64 << 47) | SIZE_1G;
    d.map(iova, SIZE_1G, SIZE_1G, Prot::RW).unwrap();
    assert_eq!(entries(&d), vec![(4, 256, 0x1003), (3, 1, SIZE_1G | 0x83)]);
    assert_eq!(d.iova_to_phys(iova + 12345), Some(SIZE_1G + 12345));
    d.map(0x1000, 0x1000, 0x1000, Prot::READ).unwrap();
    let levels: Vec<u32> = d.decode().iter().map(|p| p.level).collect();
    assert_eq!(levels, vec![4, 3, 2, 1, 4, 3]);
    // 1 TiB of 1G pages.
    d.map(1 << 42, 1 << 43, 1 << 40, Prot::RW).unwrap();
    assert_eq!(d.leaf_counts(), (1, 0, 1 + 1024));
    assert_eq!(d.unmap(1 << 42, 1 << 40), 1 << 40);
}

#[test]
fn snoop_control_sets_snp_in_leaves() {
    let (_u, d) = unit_with(IommuConfig {
        snoop_control: true,
        ..IommuConfig::default()
    });
    assert!(d.enforce_cache_coherency());
    d.map(0, 0, SIZE_2M + SIZE_4K, Prot::RW).unwrap();
    let l = leaves(&d);
    assert_eq!(l.len(), 2);
    assert!(l.iter().all(|p| p.snoop && p.raw & (1 << 11) != 0));
    let (_u, d) = unit39();
    assert!(!d.enforce_cache_coherency());
}

#[test]
fn super_page_replaces_empty_tables_and_recycles_them_after_flush() {
    let (_u, d) = unit39();
    d.map(SIZE_4K, SIZE_4K, SIZE_4K, Prot::RW).unwrap();
    assert_eq!(d.unmap(SIZE_4K, SIZE_4K), SIZE_4K);
    let stats = d.table_stats();
    assert_eq!(stats.allocated, 3); // root, level 2, level 1
                                    // The now-empty level-1 table makes room for a 2M leaf.
    d.map(0, 0, SIZE_2M, Prot::RW).unwrap();
    assert_eq!(d.leaf_counts(), (0, 1, 0));
    assert_eq!(d.table_stats().retired, 1);
    d.flush_range(0, SIZE_2M);
    assert_eq!(d.table_stats().retired, 0);
    assert_eq!(d.table_stats().free, 1);
    // The next table comes from the free list, zeroed.
    d.map(SIZE_2M + SIZE_4K, 0, SIZE_4K, Prot::RW).unwrap();
    assert_eq!(d.table_stats().allocated, 3);
    assert_eq!(d.table_stats().free, 0);
    assert_eq!(d.leaf_counts(), (1, 1, 0));
    assert_eq!(d.decode().iter().filter(|p| p.level == 1).count(), 1);

    // Same for a 1G page over an empty level-2 table with an empty level-1 table.
    let (_u, d) = unit39();
    d.map(SIZE_1G + SIZE_4K, 0, SIZE_4K, Prot::RW).unwrap();
    d.unmap(SIZE_1G + SIZE_4K, SIZE_4K);
    d.map(SIZE_1G, 0, SIZE_1G, Prot::RW).unwrap();
    assert_eq!(d.leaf_counts(), (0, 0, 1));
    assert_eq!(d.table_stats().retired, 2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random maps and unmaps of whole earlier mappings agree with a model
    /// that tracks 4K pages.
    #[test]
    fn random_map_unmap_matches_a_page_model(ops in prop::collection::vec(
        (any::<bool>(), 0u64..2048, 1u64..1100, 0u64..4, any::<u8>()), 1..40)) {
        let (_u, d) = unit39();
        let mut pages: BTreeMap<u64, u64> = BTreeMap::new();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (is_map, start, len, phys_shift, pick) in ops {
            if is_map || ranges.is_empty() {
                let iova = start * SIZE_4K;
                let size = len * SIZE_4K;
                // phys: same alignment as iova, or shifted by a few pages.
                let phys = 0x10_0000_0000 + iova + phys_shift * SIZE_4K;
                let conflict = (0..len).any(|i| pages.contains_key(&(iova + i * SIZE_4K)));
                let r = d.map(iova, phys, size, Prot::RW);
                prop_assert_eq!(r.is_err(), conflict);
                if !conflict {
                    for i in 0..len {
                        pages.insert(iova + i * SIZE_4K, phys + i * SIZE_4K);
                    }
                    ranges.push((iova, size));
                }
            } else {
                let (iova, size) = ranges.remove(pick as usize % ranges.len());
                prop_assert_eq!(d.unmap(iova, size), size);
                for i in 0..size / SIZE_4K {
                    pages.remove(&(iova + i * SIZE_4K));
                }
            }
            d.flush_all();
        }
        for page in (0..2048 + 1100).map(|p| p * SIZE_4K) {
            prop_assert_eq!(d.iova_to_phys(page + 8), pages.get(&page).map(|p| p + 8));
        }
        prop_assert_eq!(d.mapped_bytes(), pages.len() as u64 * SIZE_4K);
    }
}

/// `map_capped` gives the leaves of one `map` per page of the cap: a 1 GiB
/// aligned range capped at 2M is 512 2M leaves (not one 1G leaf), capped at
/// 4K it is 4K leaves only; translations are the same.
#[test]
fn capped_map_uses_no_page_above_the_cap() {
    let cfg = IommuConfig {
        address_width: AddressWidth::Bits48,
        ..IommuConfig::default()
    };
    let (_u, d) = unit_with(cfg.clone());
    assert_ne!(d.pgsize_bitmap() & SIZE_1G, 0, "the unit offers 1G pages");
    d.map_capped(0x4000_0000, 0x8000_0000, SIZE_1G, Prot::RW, SIZE_2M)
        .unwrap();
    assert_eq!(d.leaf_counts(), (0, 512, 0));
    assert_eq!(d.iova_to_phys(0x4000_0000 + 0x12_3456), Some(0x8012_3456));
    let (_u, d) = unit_with(cfg.clone());
    d.map_capped(0x4000_0000, 0x8000_0000, 4 * SIZE_2M, Prot::RW, SIZE_4K)
        .unwrap();
    assert_eq!(d.leaf_counts(), (4 * 512, 0, 0));
    // No cap: what map gives.
    let (_u, d) = unit_with(cfg);
    d.map_capped(0x4000_0000, 0x8000_0000, SIZE_1G, Prot::RW, u64::MAX)
        .unwrap();
    assert_eq!(d.leaf_counts(), (0, 0, 1));
}
