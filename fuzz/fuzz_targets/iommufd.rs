//! Differential: random sequences of IOAS map, copy, unmap, unmap-all,
//! injected pin failures, device attach/detach and device DMA on the
//! engine's iommufd (simulated memory + VT-d model) and on the reference
//! model `softvfio::testing::ioas_model`. Any difference in errno, bytes,
//! areas, pins, accounting or DMA translation fails, as does a broken
//! invariant or anything left pinned after `/dev/iommu` is closed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use soft_iommu::{Access, Iommu, IommuConfig};
use softvfio::iommu::Prot;
use softvfio::iommufd::Iommufd;
use softvfio::memory::sim::SimMemory;
use softvfio::memory::UserMemory;
use softvfio::testing::ioas_model::IoasModel;
use softvfio::testing::vtd_group;
use softvfio_fuzz::{BoundedAlloc, Bytes};
use std::sync::Arc;

#[global_allocator]
static ALLOC: BoundedAlloc = BoundedAlloc;

const PG: u64 = 4096;
const DATA: u64 = 0x7000_0000_0000;
const DATA_PAGES: u64 = 48;

fn iova(b: &mut Bytes) -> u64 {
    match b.u8() % 16 {
        0 => 0xfedf_e000 + u64::from(b.u8() % 4) * PG,
        1 => (1 << 39) - u64::from(b.u8() % 4 + 1) * PG,
        2 => b.pick(&[0x10_0800, 0, u64::MAX - PG + 1, 1 << 39]),
        _ => 0x10_0000 + u64::from(b.u8() % 32) * PG,
    }
}

fn len(b: &mut Bytes) -> u64 {
    match b.u8() % 16 {
        0 => 0,
        1 => b.pick(&[0x800, PG + 1, u64::MAX - 0xfff]),
        _ => u64::from(b.u8() % 6 + 1) * PG,
    }
}

fn errno<T>(r: softvfio::Result<T>) -> i32 {
    r.map(|_| 0).unwrap_or_else(|e| e.errno())
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let mem = SimMemory::new();
    mem.add_region(DATA, DATA_PAGES * PG, PG, Prot::RW)
        .expect("data");
    let mem = Arc::new(mem);
    let iommu = Iommu::new(IommuConfig::default());
    let group = vtd_group(3, 0x18, &iommu);
    let port = iommu.dma_port(0x18);
    let ctx = Iommufd::new(mem.clone());
    // RLIMIT_MODE 1 (chosen while privileged), then no CAP_IPC_LOCK: the
    // address space's account shows every charge.
    ctx.set_rlimit_mode(1).expect("rlimit mode");
    mem.set_lock_policy(softvfio::account::LockPolicy {
        cap_ipc_lock: false,
        limit_pages: u64::MAX,
    });
    let ids = [ctx.ioas_alloc(), ctx.ioas_alloc()];
    let dev = ctx.bind(&group, &group.devices[0]);
    let mut model = IoasModel {
        memory: Some((DATA, DATA + DATA_PAGES * PG)),
        ..IoasModel::default()
    };
    while !b.is_empty() {
        let what;
        match b.u8() % 8 {
            0 | 1 => {
                let (i, at, page, n) = (
                    usize::from(b.u8() % 2),
                    iova(&mut b),
                    u64::from(b.u8()) % 40,
                    len(&mut b),
                );
                what = format!("map ioas{i} iova={at:#x} page={page} len={n:#x}");
                let uptr = DATA + page * PG;
                let got = errno(ctx.map(ids[i], uptr, n, Some(at), Prot::RW));
                assert_eq!(got, model.map(i, at, uptr, n), "{what}");
            }
            2 => {
                let (i, at, n) = (usize::from(b.u8() % 2), iova(&mut b), len(&mut b));
                what = format!("unmap ioas{i} iova={at:#x} len={n:#x}");
                let got = ctx.unmap(ids[i], at, n).map_err(|e| e.errno());
                assert_eq!(got, model.unmap(i, at, n), "{what}");
            }
            3 => {
                let i = usize::from(b.u8() % 2);
                what = format!("unmap-all ioas{i}");
                assert_eq!(ctx.unmap_all(ids[i]), Ok(model.unmap_all(i)), "{what}");
            }
            4 => {
                let (src, at, n, dst) = (
                    usize::from(b.u8() % 2),
                    iova(&mut b),
                    len(&mut b),
                    iova(&mut b),
                );
                what = format!("copy ioas{src} {at:#x}+{n:#x} -> {dst:#x}");
                let got = errno(ctx.copy(ids[1 - src], ids[src], n, Some(dst), at, Prot::RW));
                assert_eq!(got, model.copy(src, at, n, dst), "{what}");
            }
            5 => {
                // An attach whose pinning fails changes nothing.
                let fail = b.u8() % 4 == 0 && !model.attached && !model.ioas[0].is_empty();
                what = format!("attach fail={fail}");
                if fail {
                    mem.fail_nth_pin(1);
                    let got = errno(ctx.attach(dev, ids[0]));
                    mem.fail_nth_pin(0);
                    // The model refuses first what the engine refuses first.
                    let mut probe = model.clone();
                    match probe.attach() {
                        0 => assert_eq!(got, libc::EFAULT, "{what}"),
                        e => assert_eq!(got, e, "{what}"),
                    }
                } else {
                    assert_eq!(errno(ctx.attach(dev, ids[0])), model.attach(), "{what}");
                }
            }
            6 => {
                what = "detach".to_string();
                ctx.detach(dev);
                model.detach();
            }
            _ => {
                let i = iova(&mut b) + u64::from(b.u8()) * 16;
                let write = b.u8() % 2 == 0;
                what = format!("dma iova={i:#x} write={write}");
                let access = if write { Access::Write } else { Access::Read };
                let want = model.attached.then(|| {
                    model.ioas[0]
                        .iter()
                        .find(|(s, (l, _))| **s <= i && i <= *l)
                        .map(|(s, (_, u))| u + (i - s))
                });
                let got = port.translate(i, access).ok().map(|t| t.phys);
                assert_eq!(got, want.flatten(), "{what}");
            }
        }
        if let Err(broken) = ctx.check_invariants() {
            panic!("{broken} after {what}");
        }
        assert_eq!(
            mem.account().locked_pages(),
            model.charged_pages(),
            "accounting after {what}"
        );
        assert_eq!(
            mem.stats().pin_refs,
            model.pinned_pages(),
            "pins after {what}"
        );
    }
    ctx.close();
    assert_eq!(mem.stats().pin_refs, 0);
    assert_eq!(mem.account().locked_pages(), 0);
    assert!(iommu.devices().is_empty());
});
