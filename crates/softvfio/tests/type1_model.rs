//! Property test: random sequences of map, unmap, vaddr invalidate/update and
//! unmap-all on the engine agree with a small reference model of type1 (what
//! is mapped where, the sizes returned, the errno, dma_avail), and the pins
//! and accounting always equal what the model says is mapped.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use softvfio::container::{
    Container, ContainerConfig, MAP_FLAG_READ, MAP_FLAG_VADDR, MAP_FLAG_WRITE, TYPE1V2_IOMMU,
    TYPE1_IOMMU, UNMAP_FLAG_ALL, UNMAP_FLAG_VADDR,
};
use softvfio::memory::UserMemory;
use softvfio::uapi::{map_dma, unmap_dma};

mod common;

const PG: u64 = 4096;
const LIMIT: u32 = 12;
const RW: u32 = MAP_FLAG_READ | MAP_FLAG_WRITE;

#[derive(Debug, Clone)]
enum Op {
    Map {
        iova: u64,
        size: u64,
        vpage: u64,
        flags: u32,
    },
    Unmap {
        iova: u64,
        size: u64,
    },
    UnmapAll,
    Invalidate {
        iova: u64,
        size: u64,
    },
    InvalidateAll,
    Update {
        iova: u64,
        size: u64,
        vpage: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct M {
    size: u64,
    invalid: bool,
}

/// type1 as a list of mappings, written from the rules, not the engine.
struct Model {
    v2: bool,
    maps: BTreeMap<u64, M>,
    backing_pages: u64,
}

const EINVAL: i32 = libc::EINVAL;

impl Model {
    fn avail(&self) -> u32 {
        LIMIT - self.maps.len() as u32
    }

    fn overlapping(&self, iova: u64, size: u64) -> Vec<u64> {
        let end = u128::from(iova) + u128::from(size);
        self.maps
            .iter()
            .filter(|(k, m)| u128::from(**k) < end && u128::from(**k + m.size) > u128::from(iova))
            .map(|(k, _)| *k)
            .collect()
    }

    fn in_msi(iova: u64, size: u64) -> bool {
        iova < 0xfef0_0000 && iova + size > 0xfee0_0000
    }

    fn map(&mut self, iova: u64, size: u64, vpage: u64, flags: u32) -> Result<u64, i32> {
        let set_vaddr = flags & MAP_FLAG_VADDR != 0;
        let prot = flags & RW != 0;
        if prot == set_vaddr || size == 0 || !size.is_multiple_of(PG) || !iova.is_multiple_of(PG) {
            return Err(EINVAL);
        }
        let hits = self.overlapping(iova, size);
        if set_vaddr {
            if hits.is_empty() {
                return Err(libc::ENOENT);
            }
            let m = self.maps[&hits[0]];
            if hits.len() != 1 || hits[0] != iova || m.size != size || !m.invalid {
                return Err(EINVAL);
            }
            self.maps.insert(
                iova,
                M {
                    size,
                    invalid: false,
                },
            );
            return Ok(0);
        }
        if !hits.is_empty() {
            return Err(libc::EEXIST);
        }
        if self.maps.len() as u32 == LIMIT {
            return Err(libc::ENOSPC);
        }
        if Self::in_msi(iova, size) {
            return Err(EINVAL);
        }
        if vpage + size / PG > self.backing_pages {
            return Err(libc::EFAULT);
        }
        self.maps.insert(
            iova,
            M {
                size,
                invalid: false,
            },
        );
        Ok(0)
    }

    fn unmap(&mut self, iova: u64, size: u64, all: bool, invalidate: bool) -> Result<u64, i32> {
        if !iova.is_multiple_of(PG) {
            return Err(EINVAL);
        }
        let (iova, size) = if all {
            if iova != 0 || size != 0 {
                return Err(EINVAL);
            }
            (0, u64::MAX)
        } else {
            if size == 0 || !size.is_multiple_of(PG) || iova.checked_add(size - 1).is_none() {
                return Err(EINVAL);
            }
            (iova, size)
        };
        let mut hits = self.overlapping(iova, size);
        if self.v2 && !all {
            let first_bisected = hits.first().is_some_and(|k| *k < iova);
            let last_bisected = hits.last().is_some_and(|k| {
                u128::from(*k + self.maps[k].size) > u128::from(iova) + u128::from(size)
            });
            if first_bisected || last_bisected {
                return Err(EINVAL);
            }
        }
        if !self.v2 && hits.first().is_some_and(|k| *k < iova) {
            // v1: a range starting inside a mapping unmaps nothing.
            hits.clear();
        }
        let mut total = 0;
        if invalidate {
            if hits.iter().any(|k| self.maps[k].invalid) {
                return Err(EINVAL);
            }
            for k in hits {
                let m = self.maps.get_mut(&k).expect("hit exists");
                m.invalid = true;
                total += m.size;
            }
            return Ok(total);
        }
        for k in hits {
            total += self.maps.remove(&k).map(|m| m.size).unwrap_or(0);
        }
        Ok(total)
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    // Small windows so that overlaps, bisections and exact matches are common.
    let iova = prop_oneof![
        8 => (0u64..48).prop_map(|p| 0x10_0000 + p * PG),
        1 => (0u64..4).prop_map(|p| 0xfedf_e000 + p * PG),
        1 => Just(0x10_0800u64),
    ];
    let size = prop_oneof![
        8 => (1u64..8).prop_map(|p| p * PG),
        1 => Just(0u64),
        1 => Just(PG + 1),
    ];
    let flags = prop_oneof![
        6 => Just(RW),
        1 => Just(MAP_FLAG_READ),
        1 => Just(0u32),
        1 => Just(RW | MAP_FLAG_VADDR),
    ];
    prop_oneof![
        6 => (iova.clone(), size.clone(), 0u64..70, flags).prop_map(|(iova, size, vpage, flags)| Op::Map { iova, size, vpage, flags }),
        4 => (iova.clone(), size.clone()).prop_map(|(iova, size)| Op::Unmap { iova, size }),
        1 => Just(Op::UnmapAll),
        2 => (iova.clone(), size.clone()).prop_map(|(iova, size)| Op::Invalidate { iova, size }),
        1 => Just(Op::InvalidateAll),
        2 => (iova, size, 0u64..60).prop_map(|(iova, size, vpage)| Op::Update { iova, size, vpage }),
    ]
}

fn run(v2: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    const BACKING: u64 = 64;
    let (mem, base, platform_group) = common::test_memory_and_group(BACKING);
    let c = Container::new(
        ContainerConfig {
            dma_entry_limit: LIMIT,
            precise_dirty: false,
        },
        mem.clone(),
    );
    c.attach_group(&platform_group)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    c.set_iommu(if v2 { TYPE1V2_IOMMU } else { TYPE1_IOMMU })
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut model = Model {
        v2,
        maps: BTreeMap::new(),
        backing_pages: BACKING,
    };
    for op in ops {
        let (got, want) = match *op {
            Op::Map {
                iova,
                size,
                vpage,
                flags,
            } => (
                map_dma(&c, iova, base + vpage * PG, size, flags).map(|()| 0),
                model.map(iova, size, vpage, flags),
            ),
            Op::Update { iova, size, vpage } => (
                map_dma(&c, iova, base + vpage * PG, size, MAP_FLAG_VADDR).map(|()| 0),
                model.map(iova, size, vpage, MAP_FLAG_VADDR),
            ),
            Op::Unmap { iova, size } => (
                unmap_dma(&c, iova, size, 0, None),
                model.unmap(iova, size, false, false),
            ),
            Op::UnmapAll => (
                unmap_dma(&c, 0, 0, UNMAP_FLAG_ALL, None),
                model.unmap(0, 0, true, false),
            ),
            Op::Invalidate { iova, size } => (
                unmap_dma(&c, iova, size, UNMAP_FLAG_VADDR, None),
                model.unmap(iova, size, false, true),
            ),
            Op::InvalidateAll => (
                unmap_dma(&c, 0, 0, UNMAP_FLAG_ALL | UNMAP_FLAG_VADDR, None),
                model.unmap(0, 0, true, true),
            ),
        };
        let got = got.map_err(|e| e.errno());
        prop_assert_eq!(got, want, "op {:?}", op);
        prop_assert_eq!(c.check_invariants(), Ok(()), "after {:?}", op);
        let snap = c.snapshot();
        let engine: Vec<(u64, u64, bool)> = snap
            .mappings
            .iter()
            .map(|m| (m.iova, m.size, m.vaddr_invalid))
            .collect();
        let expect: Vec<(u64, u64, bool)> = model
            .maps
            .iter()
            .map(|(k, m)| (*k, m.size, m.invalid))
            .collect();
        prop_assert_eq!(engine, expect, "after {:?}", op);
        prop_assert_eq!(c.info().map(|i| i.dma_avail).ok(), Some(model.avail()));
        let mapped_pages: u64 = model.maps.values().map(|m| m.size / PG).sum();
        prop_assert_eq!(mem.account().locked_pages(), mapped_pages);
        prop_assert_eq!(mem.stats().pin_refs, mapped_pages);
    }
    c.detach_group(platform_group.id);
    prop_assert_eq!(c.check_invariants(), Ok(()), "after detach");
    prop_assert_eq!(mem.account().locked_pages(), 0);
    prop_assert_eq!(mem.stats().pin_refs, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn v2_matches_model(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        run(true, &ops)?;
    }

    #[test]
    fn v1_matches_model(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        run(false, &ops)?;
    }
}

#[test]
fn memory_is_shared_by_reference() {
    // The helper hands out the memory the container pins: check the wiring.
    let (mem, base, _) = common::test_memory_and_group(4);
    let mut b = [0u8; 4];
    assert!(mem.read(base, &mut b).is_ok());
    let _: Arc<dyn UserMemory> = mem;
}
