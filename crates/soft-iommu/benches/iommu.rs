//! Translation and map/unmap costs of the VT-d model, with vm-memory's
//! `Iotlb` lookup over the same mappings as the baseline.

#![allow(missing_docs)] // criterion's macros define undocumented public functions

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use soft_iommu::bench_support::{MapFixture, TranslateFixture};
use soft_iommu::AddressWidth;

fn translate(c: &mut Criterion) {
    let mut g = c.benchmark_group("translate");
    g.throughput(Throughput::Elements(1));
    let mut hit = TranslateFixture::hits().unwrap();
    g.bench_function("iotlb-hit", |b| b.iter(|| black_box(hit.translate_next())));
    g.bench_function("vm-memory-iotlb-lookup", |b| {
        b.iter(|| black_box(hit.vm_lookup_next()))
    });
    drop(hit);
    let mut miss = TranslateFixture::misses().unwrap();
    g.bench_function("iotlb-miss-walk", |b| {
        b.iter(|| black_box(miss.translate_next()))
    });
    g.bench_function("vm-memory-iotlb-lookup-256k", |b| {
        b.iter(|| black_box(miss.vm_lookup_next()))
    });
    let stats = miss.port.stats();
    eprintln!(
        "miss fixture: {} hits, {} misses ({:.1}% misses)",
        stats.iotlb_hits,
        stats.iotlb_misses,
        100.0 * stats.iotlb_misses as f64 / (stats.iotlb_hits + stats.iotlb_misses).max(1) as f64
    );
    g.finish();
}

fn map_unmap(c: &mut Criterion) {
    let mut g = c.benchmark_group("map-unmap");
    let mut churn = MapFixture::new(65536, AddressWidth::Bits39).unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("4k-pair-64k-live", |b| b.iter(|| churn.map_unmap_4k()));
    let port = churn.unit.dma_port(0x18);
    g.bench_function("4k-pair-flush-64k-live", |b| {
        b.iter(|| churn.map_unmap_flush_4k())
    });
    drop(port);
    g.throughput(Throughput::Bytes(1 << 30));
    g.bench_function("1g-as-2m", |b| b.iter(|| churn.map_unmap_1g_as_2m()));
    drop(churn);
    let mut wide = MapFixture::new(0, AddressWidth::Bits48).unwrap();
    g.throughput(Throughput::Bytes(1 << 40));
    g.bench_function("1t-as-1g", |b| b.iter(|| wide.map_unmap_1t_as_1g()));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30);
    targets = translate, map_unmap
}
criterion_main!(benches);
