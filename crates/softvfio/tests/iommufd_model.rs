//! Property test: random sequences of IOAS map, copy, unmap, unmap-all and
//! device attach/detach on the engine's iommufd agree with the reference
//! model `softvfio::testing::ioas_model` (Linux 6.12's rules): the same
//! errno, bytes and areas, pins equal to the model's pinned pages and the
//! account to its charged pages (copies share their source's charge) after
//! every step, the invariants kept, and nothing left pinned or
//! charged once `/dev/iommu` is closed.

use std::sync::Arc;

use proptest::prelude::*;
use softvfio::iommu::Prot;
use softvfio::iommufd::Iommufd;
use softvfio::memory::UserMemory;
use softvfio::testing::ioas_model::IoasModel;
use softvfio::testing::{iommu_group, FakeUnit, VecMemory};

const PG: u64 = 4096;
const BASE: u64 = 0x7000_0000_0000;

#[derive(Debug, Clone)]
enum Op {
    Map {
        ioas: usize,
        iova: u64,
        page: u64,
        len: u64,
    },
    Unmap {
        ioas: usize,
        iova: u64,
        len: u64,
    },
    UnmapAll {
        ioas: usize,
    },
    Copy {
        src: usize,
        src_iova: u64,
        len: u64,
        dst_iova: u64,
    },
    Attach,
    Detach,
}

fn iova() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (0u64..24).prop_map(|p| 0x10_0000 + p * PG),
        1 => (0u64..4).prop_map(|p| 0xfedf_e000 + p * PG),
        1 => (1u64..3).prop_map(|p| (1 << 39) - p * PG),
        1 => Just(0x10_0800u64),
        1 => Just(u64::MAX - PG + 1),
    ]
}

fn len() -> impl Strategy<Value = u64> {
    prop_oneof![8 => (1u64..6).prop_map(|p| p * PG), 1 => Just(0u64), 1 => Just(0x800u64)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..2, iova(), 0u64..32, len()).prop_map(|(ioas, iova, page, len)| Op::Map { ioas, iova, page, len }),
        4 => (0usize..2, iova(), len()).prop_map(|(ioas, iova, len)| Op::Unmap { ioas, iova, len }),
        1 => (0usize..2).prop_map(|ioas| Op::UnmapAll { ioas }),
        3 => (0usize..2, iova(), len(), iova()).prop_map(|(src, src_iova, len, dst_iova)| Op::Copy { src, src_iova, len, dst_iova }),
        2 => Just(Op::Attach),
        1 => Just(Op::Detach),
    ]
}

fn errno<T>(r: softvfio::Result<T>) -> i32 {
    r.map(|_| 0).unwrap_or_else(|e| e.errno())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn iommufd_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mem = VecMemory::new(BASE, 40 * PG as usize);
        // No CAP_IPC_LOCK and RLIMIT_MODE 1: the address space's account
        // shows every charge.
        mem.policy.lock().unwrap().cap_ipc_lock = false;
        let unit = FakeUnit::new(39);
        let group = Arc::new(iommu_group(3, 0x18, unit.clone(), Vec::new()));
        let ctx = Iommufd::new(mem.clone());
        ctx.set_rlimit_mode(1).unwrap();
        let ids = [ctx.ioas_alloc(), ctx.ioas_alloc()];
        let dev = ctx.bind(&group, &group.devices[0]);
        let mut model = IoasModel::default();
        for op in &ops {
            match *op {
                Op::Map { ioas, iova, page, len } => {
                    let uptr = BASE + page * PG;
                    let got = errno(ctx.map(ids[ioas], uptr, len, Some(iova), Prot::RW));
                    prop_assert_eq!(got, model.map(ioas, iova, uptr, len), "{:?}", op);
                }
                Op::Unmap { ioas, iova, len } => {
                    let got = ctx.unmap(ids[ioas], iova, len).map_err(|e| e.errno());
                    prop_assert_eq!(got, model.unmap(ioas, iova, len), "{:?}", op);
                }
                Op::UnmapAll { ioas } => {
                    prop_assert_eq!(ctx.unmap_all(ids[ioas]), Ok(model.unmap_all(ioas)));
                }
                Op::Copy { src, src_iova, len, dst_iova } => {
                    let got = errno(ctx.copy(ids[1 - src], ids[src], len, Some(dst_iova), src_iova, Prot::RW));
                    prop_assert_eq!(got, model.copy(src, src_iova, len, dst_iova), "{:?}", op);
                }
                Op::Attach => {
                    let got = errno(ctx.attach(dev, ids[0]));
                    prop_assert_eq!(got, model.attach(), "{:?}", op);
                }
                Op::Detach => {
                    ctx.detach(dev);
                    model.detach();
                }
            }
            if let Err(broken) = ctx.check_invariants() {
                prop_assert!(false, "after {:?}: {}", op, broken);
            }
            let snap = ctx.snapshot();
            for (i, id) in ids.iter().enumerate() {
                let areas: Vec<(u64, u64, u64)> = snap
                    .ioas
                    .iter()
                    .find(|v| v.id == *id)
                    .map(|v| v.areas.iter().map(|a| (a.iova, a.last, a.uptr)).collect())
                    .unwrap_or_default();
                let want: Vec<(u64, u64, u64)> =
                    model.ioas[i].iter().map(|(s, (l, u))| (*s, *l, *u)).collect();
                prop_assert_eq!(areas, want, "IOAS {} after {:?}", i, op);
            }
            prop_assert_eq!(mem.total_pins(), model.pinned_pages(), "pins after {:?}", op);
            prop_assert_eq!(mem.account().locked_pages(), model.charged_pages(), "account after {:?}", op);
        }
        ctx.close();
        prop_assert_eq!(mem.total_pins(), 0);
        prop_assert_eq!(mem.account().locked_pages(), 0);
    }
}
