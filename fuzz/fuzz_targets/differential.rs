//! Differential: random sequences of map, unmap, vaddr invalidate/update,
//! unmap-all, injected pin failures, attach/detach of a second group and
//! device DMA, run on the engine (simulated memory + VT-d model) and on the
//! reference model of `softvfio::testing::model`. Any difference in result,
//! errno, mapping list, dma_avail, pins, accounting or DMA translation fails.
#![no_main]

use libfuzzer_sys::fuzz_target;
use soft_iommu::{Access, Iommu, IommuConfig};
use softvfio::uapi::{map_dma, unmap_dma};
use softvfio::container::{
    Container, ContainerConfig, MAP_FLAG_READ, MAP_FLAG_VADDR, MAP_FLAG_WRITE, TYPE1V2_IOMMU,
    TYPE1_IOMMU, UNMAP_FLAG_ALL, UNMAP_FLAG_VADDR,
};
use softvfio::iommu::Prot;
use softvfio::memory::sim::{SimMemory, SIZE_2M};
use softvfio::memory::UserMemory;
use softvfio::testing::model::{Type1Model, UserRegion};
use softvfio::testing::vtd_group;
use softvfio_fuzz::{BoundedAlloc, Bytes};
use std::sync::Arc;

#[global_allocator]
static ALLOC: BoundedAlloc = BoundedAlloc;

const PG: u64 = 4096;
const DATA: u64 = 0x7000_0000_0000;
const DATA_PAGES: u64 = 64;
const RO: u64 = DATA + DATA_PAGES * PG; // touching: runs may chain into it
const RO_PAGES: u64 = 4;
const HUGE: u64 = 0x7100_0000_0000;
const RW: u32 = MAP_FLAG_READ | MAP_FLAG_WRITE;

fn iova(b: &mut Bytes) -> u64 {
    match b.u8() % 16 {
        0 => 0xfedf_e000 + u64::from(b.u8() % 4) * PG, // around the MSI window
        1 => (1 << 39) - u64::from(b.u8() % 4 + 1) * PG, // aperture end
        2 => b.pick(&[0x10_0800, 0x20_0000, 0, 1 << 39]),
        _ => 0x10_0000 + u64::from(b.u8() % 48) * PG,
    }
}

fn size(b: &mut Bytes) -> u64 {
    match b.u8() % 16 {
        0 => 0,
        1 => PG + 1,
        2 => b.pick(&[SIZE_2M, 1 << 39, u64::MAX - 0xfff]),
        _ => u64::from(b.u8() % 8 + 1) * PG,
    }
}

fn vaddr(b: &mut Bytes) -> u64 {
    match b.u8() % 16 {
        0 => RO + u64::from(b.u8() % 4) * PG,
        1 => HUGE + u64::from(b.u8() % 2) * SIZE_2M,
        2 => b.pick(&[0, DATA + 0x800, u64::MAX - 0xfff]),
        _ => DATA + u64::from(b.u8() % 70) * PG,
    }
}

fn flags(b: &mut Bytes) -> u32 {
    match b.u8() % 10 {
        0 => MAP_FLAG_READ,
        1 => 0,
        2 => RW | MAP_FLAG_VADDR,
        3 => MAP_FLAG_WRITE,
        _ => RW,
    }
}

fn errno<T>(r: softvfio::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.errno())
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let v2 = !b.u8().is_multiple_of(4);
    let limit = u32::from(b.u8() % 12) + 1;

    let mem = SimMemory::new();
    mem.add_region(DATA, DATA_PAGES * PG, PG, Prot::RW)
        .expect("data");
    mem.add_region(
        RO,
        RO_PAGES * PG,
        PG,
        Prot {
            read: true,
            write: false,
        },
    )
    .expect("ro");
    mem.add_region(HUGE, 2 * SIZE_2M, SIZE_2M, Prot::RW)
        .expect("huge");
    let mem = Arc::new(mem);
    let user: Arc<dyn UserMemory> = mem.clone();

    let iommu_a = Iommu::new(IommuConfig::default());
    // Snoop control differs: the second group gets its own domain, so its
    // attach replays every mapping.
    let iommu_b = Iommu::new(IommuConfig {
        snoop_control: true,
        ..IommuConfig::default()
    });
    let group_a = vtd_group(3, 0x18, &iommu_a);
    let group_b = vtd_group(4, 0x20, &iommu_b);
    let port_a = iommu_a.dma_port(0x18);
    let port_b = iommu_b.dma_port(0x20);

    let c = Container::new(
        ContainerConfig {
            dma_entry_limit: limit,
            precise_dirty: false,
        },
        user,
    );
    // An attach that must replay an invalidated vaddr waits for its update;
    // nobody else will update it here: fail at once (EFAULT).
    c.set_vaddr_wait_timeout(std::time::Duration::ZERO);
    c.attach_group(&group_a).expect("attach");
    c.set_iommu(if v2 { TYPE1V2_IOMMU } else { TYPE1_IOMMU })
        .expect("set_iommu");
    let mut model = Type1Model::new(
        v2,
        limit,
        Type1Model::reference_iova_list(),
        vec![
            UserRegion {
                start: DATA,
                len: DATA_PAGES * PG,
                writable: true,
            },
            UserRegion {
                start: RO,
                len: RO_PAGES * PG,
                writable: false,
            },
            UserRegion {
                start: HUGE,
                len: 2 * SIZE_2M,
                writable: true,
            },
        ],
    );
    let mut b_attached = false;

    let mut steps = 0;
    while !b.is_empty() && steps < 200 {
        steps += 1;
        let op = b.u8() % 16;
        let what;
        match op {
            0..=5 => {
                let (i, v, s, f) = (iova(&mut b), vaddr(&mut b), size(&mut b), flags(&mut b));
                // Sometimes the pin of this map fails.
                let inject = op == 5;
                what =
                    format!("map iova={i:#x} vaddr={v:#x} size={s:#x} flags={f} inject={inject}");
                if inject {
                    mem.fail_nth_pin(1);
                }
                let got = errno(map_dma(&c, i, v, s, f));
                mem.fail_nth_pin(0);
                let want =
                    if inject && model.map_would_succeed(i, v, s, f) && f & MAP_FLAG_VADDR == 0 {
                        Err(libc::EFAULT)
                    } else {
                        model.map(i, v, s, f)
                    };
                assert_eq!(got, want, "{what}");
            }
            6..=8 => {
                let (i, s) = (iova(&mut b), size(&mut b));
                what = format!("unmap iova={i:#x} size={s:#x}");
                assert_eq!(
                    errno(unmap_dma(&c, i, s, 0, None)),
                    model.unmap(i, s, 0),
                    "{what}"
                );
            }
            9 => {
                what = "unmap all".to_string();
                assert_eq!(
                    errno(unmap_dma(&c, 0, 0, UNMAP_FLAG_ALL, None)),
                    model.unmap(0, 0, UNMAP_FLAG_ALL),
                    "{what}"
                );
            }
            10 => {
                let (i, s) = (iova(&mut b), size(&mut b));
                let all = b.u8().is_multiple_of(4);
                let fl = UNMAP_FLAG_VADDR | if all { UNMAP_FLAG_ALL } else { 0 };
                let (i, s) = if all { (0, 0) } else { (i, s) };
                what = format!("invalidate iova={i:#x} size={s:#x} all={all}");
                assert_eq!(
                    errno(unmap_dma(&c, i, s, fl, None)),
                    model.unmap(i, s, fl),
                    "{what}"
                );
            }
            11 => {
                let (i, s, v) = (iova(&mut b), size(&mut b), vaddr(&mut b));
                what = format!("update iova={i:#x} size={s:#x} vaddr={v:#x}");
                assert_eq!(
                    errno(map_dma(&c, i, v, s, MAP_FLAG_VADDR)),
                    model.map(i, v, s, MAP_FLAG_VADDR),
                    "{what}"
                );
            }
            12 => {
                what = "attach b".to_string();
                let got = errno(c.attach_group(&group_b));
                let want = if b_attached {
                    Err(libc::EINVAL)
                } else {
                    model.replay_ok()
                };
                assert_eq!(got, want, "{what}");
                if got.is_ok() {
                    b_attached = true;
                }
            }
            13 => {
                what = "detach b".to_string();
                c.detach_group(group_b.id);
                b_attached = false;
            }
            _ => {
                // DMA through both devices translates exactly what the model
                // says is mapped, to the pages pinned for it.
                let i = iova(&mut b) + u64::from(b.u8()) * 16;
                let write = b.u8().is_multiple_of(2);
                what = format!("dma iova={i:#x} write={write}");
                let access = if write { Access::Write } else { Access::Read };
                let want = model
                    .lookup(i)
                    .filter(|(_, m)| if write { m.write } else { m.read });
                let got_a = port_a.translate(i, access).ok().map(|t| t.phys);
                let want_phys = want.map(|(k, m)| m.vaddr + (i - k));
                assert_eq!(got_a, want_phys, "{what} through a");
                let got_b = port_b.translate(i, access).ok().map(|t| t.phys);
                assert_eq!(got_b, want_phys.filter(|_| b_attached), "{what} through b");
            }
        }
        // The engine's own relations (counters, tree, groups) hold too.
        if let Err(broken) = c.check_invariants() {
            panic!("{broken} after {what}");
        }
        let snap = c.snapshot();
        let engine: Vec<(u64, u64, bool)> = snap
            .mappings
            .iter()
            .map(|m| (m.iova, m.size, m.vaddr_invalid))
            .collect();
        assert_eq!(engine, model.listing(), "mappings after {what}");
        assert_eq!(snap.dma_avail, model.avail(), "dma_avail after {what}");
        assert_eq!(
            mem.account().locked_pages(),
            model.mapped_pages(),
            "accounting after {what}"
        );
        assert_eq!(
            mem.stats().pin_refs,
            model.mapped_pages(),
            "pins after {what}"
        );
        assert_eq!(
            snap.domains.len(),
            1 + usize::from(b_attached),
            "domains after {what}"
        );
    }
    c.detach_group(group_b.id);
    c.detach_group(group_a.id);
    assert_eq!(mem.stats().pin_refs, 0);
    assert_eq!(mem.account().locked_pages(), 0);
    assert!(iommu_a.devices().is_empty() && iommu_b.devices().is_empty());
});
