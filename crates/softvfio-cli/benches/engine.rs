//! Criterion versions of `softvfio bench`: each subject next to its baseline
//! (short runs: ~2 s of measurement each). The fixtures are those of the
//! CLI's bench module.

#![allow(missing_docs)] // criterion's macros define undocumented public functions

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use soft_iommu::bench_support::TranslateFixture;
use soft_iommu::AddressWidth;
use softvfio::container::UserBitmap;
use softvfio::iommu::Prot;
use softvfio::memory::host::HostMemory;
use softvfio::memory::sim::{SimMemory, SIZE_1G, SIZE_2M, SIZE_4K};

#[allow(dead_code)]
#[path = "../src/bench/mod.rs"]
mod bench;

use bench::engine::Engine;
use bench::sim::{btree_pages, BTreeMapper};
use bench::sys::{self, Area, HugePool};

const IOVA: u64 = 0x40_0000_0000;
/// Host memory per map measurement (small: criterion repeats it often).
const HOST_LEN: u64 = 64 << 20;

fn engine_pair(e: &Engine, a: &Area) {
    let c = &e.container;
    if c.map(IOVA, a.start, a.len, Prot::RW).is_ok() {
        black_box(c.unmap(IOVA, a.len).ok());
    }
}

fn map_host(c: &mut Criterion) {
    let mut g = c.benchmark_group("map-populated-64MiB");
    g.throughput(Throughput::Bytes(HOST_LEN));
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let Ok(e) = Engine::new(
        Arc::new(unsafe { HostMemory::current() }),
        AddressWidth::Bits39,
        65535,
    ) else {
        eprintln!("skipped: engine set-up failed");
        return;
    };
    let pool = HugePool::reserve(HOST_LEN / SIZE_2M);
    type Make = fn(u64) -> Result<Area, String>;
    let kinds: [(&str, Make); 3] = [
        ("4k", Area::anon),
        ("thp", Area::thp),
        ("2m", Area::hugetlb_2m),
    ];
    for (name, make) in kinds {
        if name == "2m" {
            if let Err(why) = &pool {
                eprintln!("map-2m skipped: {why}");
                continue;
            }
        }
        let a = match make(HOST_LEN) {
            Ok(a) => a,
            Err(why) => {
                eprintln!("map-{name} skipped: {why}");
                continue;
            }
        };
        a.touch();
        g.bench_function(format!("floor-{name}"), |b| {
            b.iter(|| black_box(sys::floor_ns(a.start, a.len).ok()))
        });
        g.bench_function(format!("engine-{name}"), |b| b.iter(|| engine_pair(&e, &a)));
    }
    g.finish();
    drop(pool);
}

fn map_1t_sim(c: &mut Criterion) {
    let mut g = c.benchmark_group("map-1t-sim");
    g.throughput(Throughput::Bytes(1 << 40));
    let mem = Arc::new(SimMemory::new());
    let vaddr = 0x2000_0000_0000;
    if mem.add_region(vaddr, 1 << 40, SIZE_1G, Prot::RW).is_err() {
        return;
    }
    let Ok(e) = Engine::new(mem, AddressWidth::Bits48, 65535) else {
        return;
    };
    let cont = e.container.clone();
    g.bench_function("engine-1g", |b| {
        b.iter(|| {
            if cont.map(1 << 42, vaddr, 1 << 40, Prot::RW).is_ok() {
                black_box(cont.unmap(1 << 42, 1 << 40).ok());
            }
        })
    });
    g.bench_function("btreemap-1024-entries", |b| {
        b.iter(|| black_box(btree_pages(1024, SIZE_1G)))
    });
    g.finish();
}

fn translate(c: &mut Criterion) {
    let mut g = c.benchmark_group("translate");
    if let Ok(mut f) = TranslateFixture::hits() {
        g.bench_function("hit", |b| b.iter(|| black_box(f.translate_next())));
        g.bench_function("vm-memory-iotlb-1024", |b| {
            b.iter(|| black_box(f.vm_lookup_next()))
        });
    }
    if let Ok(mut f) = TranslateFixture::misses() {
        g.bench_function("miss", |b| b.iter(|| black_box(f.translate_next())));
        g.bench_function("vm-memory-iotlb-256k", |b| {
            b.iter(|| black_box(f.vm_lookup_next()))
        });
    }
    g.finish();
}

fn churn_4k(c: &mut Criterion) {
    const LIVE: u64 = 65536;
    // Churned pages above every live mapping (the interleaved layout of
    // `softvfio bench churn-4k` is too slow for criterion: see
    // docs/PERFORMANCE.md).
    let mut g = c.benchmark_group("churn-4k-64k-live");
    g.throughput(Throughput::Elements(1));
    let mem = Arc::new(SimMemory::new());
    let (live_va, churn_va) = (0x1000_0000_0000u64, 0x1100_0000_0000u64);
    for base in [live_va, churn_va] {
        if mem
            .add_region(base, LIVE * SIZE_4K, SIZE_4K, Prot::RW)
            .is_err()
        {
            return;
        }
    }
    let Ok(e) = Engine::new(mem, AddressWidth::Bits39, (LIVE + 1024) as u32) else {
        return;
    };
    let cont = e.container.clone();
    let mut mapper = BTreeMapper::default();
    for i in 0..LIVE {
        let (iova, va) = (0x1_0000_0000 + i * SIZE_4K, live_va + i * SIZE_4K);
        if cont.map(iova, va, SIZE_4K, Prot::RW).is_err() {
            return;
        }
        mapper.map(iova, va, SIZE_4K);
    }
    let mut next = 0u64;
    g.bench_function("engine-pair", |b| {
        b.iter(|| {
            let off = next * SIZE_4K;
            next = (next + 1) % LIVE;
            let _ = cont.map(IOVA + off, churn_va + off, SIZE_4K, Prot::RW);
            black_box(cont.unmap(IOVA + off, SIZE_4K).ok());
        })
    });
    let mut next = 0u64;
    g.bench_function("btreemap-pair", |b| {
        b.iter(|| {
            let off = next * SIZE_4K;
            next = (next + 1) % LIVE;
            black_box(mapper.map(IOVA + off, churn_va + off, SIZE_4K));
            black_box(mapper.unmap(IOVA + off, SIZE_4K));
        })
    });
    g.finish();
}

fn dirty_get(c: &mut Criterion) {
    const SIZE: u64 = 64 << 30;
    let bitmap_bytes = SIZE / SIZE_4K / 8;
    let mut g = c.benchmark_group("dirty-get-64GiB");
    let mem = Arc::new(SimMemory::new());
    let (va, bm) = (0x2000_0000_0000u64, 0x3000_0000_0000u64);
    if mem.add_region(va, SIZE, SIZE_2M, Prot::RW).is_err()
        || mem.add_region(bm, bitmap_bytes, SIZE_4K, Prot::RW).is_err()
    {
        return;
    }
    let Ok(e) = Engine::new(mem, AddressWidth::Bits39, 65535) else {
        return;
    };
    let cont = e.container.clone();
    for i in 0..64 {
        if cont
            .map(
                0x10_0000_0000 + i * SIZE_1G,
                va + i * SIZE_1G,
                SIZE_1G,
                Prot::RW,
            )
            .is_err()
        {
            return;
        }
    }
    if cont.dirty_start().is_err() {
        return;
    }
    let bitmap = UserBitmap {
        pgsize: SIZE_4K,
        size: bitmap_bytes,
        data: bm,
    };
    g.bench_function("engine-get-bitmap", |b| {
        b.iter(|| black_box(cont.dirty_get_bitmap(0x10_0000_0000, SIZE, bitmap).ok()))
    });
    let words = (bitmap_bytes / 8) as usize;
    let (mut src, mut dst) = (vec![0u64; words], vec![0u64; words]);
    g.bench_function("memset-memcpy-2MiB", |b| {
        b.iter(|| sys::fill_and_copy(&mut src, &mut dst))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300))
        .sample_size(10);
    targets = translate, churn_4k, map_1t_sim, dirty_get, map_host
}
criterion_main!(benches);
