//! The external (mediated device) pinning path: pin/unpin throughput in
//! kernel-sized calls, and the unmap of a mapping with 256k external pins
//! (the device is notified and drops its pins with one batch). The tracking
//! footprint is printed once (bytes per pinned page from dense to one page
//! in 4096, over 1 GiB of mappings), and the tracker alone is timed on one
//! page in 64 at random against the previous tracker.

#![allow(missing_docs)] // criterion's macros define undocumented public functions

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use softvfio::external::bench_support::{
    tracker_pin_unpin_ns, tracking_footprint, unmap_with_external_pins, PinFixture, PinPattern,
};
use softvfio::iommu::Prot;
use softvfio::memory::{UserMemory, PAGE_SIZE};

const MIB: u64 = 1 << 20;

fn footprint() {
    for (name, pattern) in [
        ("dense", PinPattern::Dense),
        ("random 1/4", PinPattern::Random { every: 4 }),
        ("random 1/64", PinPattern::Random { every: 64 }),
        ("sparse 1/64 in order", PinPattern::Sparse { stride: 64 }),
        ("random 1/512", PinPattern::Random { every: 512 }),
        ("random 1/4096", PinPattern::Random { every: 4096 }),
    ] {
        match tracking_footprint(8, 128 * MIB, pattern) {
            Ok(f) => eprintln!(
                "pin-external footprint {name}: {} pins, {} bytes, {:.2} B/pinned page (previous tracker: {} bytes, kernel rb-tree: {} bytes)",
                f.pinned_pages, f.tracking_bytes, f.bytes_per_pinned_page, f.previous_tracker_bytes, f.kernel_rbtree_bytes
            ),
            Err(e) => eprintln!("pin-external footprint {name}: {e}"),
        }
    }
}

fn pin_unpin(c: &mut Criterion) {
    footprint();
    let mut g = c.benchmark_group("pin-external");
    let Ok(fx) = PinFixture::new(1, 64 * MIB) else {
        eprintln!("cannot build the fixture");
        return;
    };
    let pages = 64 * MIB / PAGE_SIZE;
    for per_call in [1u64, 512] {
        g.throughput(Throughput::Elements(per_call));
        let mut next = 0u64;
        g.bench_function(format!("pin+unpin {per_call} pages/call"), |b| {
            b.iter(|| {
                let iova = 0x1_0000_0000 + (next % (pages / per_call)) * per_call * PAGE_SIZE;
                next += 1;
                let r = fx
                    .container
                    .pin_pages(&fx.device, iova, per_call as usize, Prot::RW);
                black_box(&r);
                let _ = fx
                    .container
                    .unpin_pages(&fx.device, iova, per_call as usize);
            })
        });
    }
    g.finish();
}

fn tracker_sparse(c: &mut Criterion) {
    let mut g = c.benchmark_group("pin-external-tracker");
    g.sample_size(10);
    let pattern = PinPattern::Random { every: 64 };
    for (name, previous) in [("current", false), ("previous", true)] {
        g.bench_function(format!("pin+unpin random 1/64, {name} tracker"), |b| {
            b.iter(|| black_box(tracker_pin_unpin_ns(8, 32768, pattern, previous)))
        });
    }
    g.finish();
}

fn unmap_pinned(c: &mut Criterion) {
    let mut g = c.benchmark_group("pin-external-unmap");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    let pins = 1u64 << 18;
    g.throughput(Throughput::Elements(pins));
    g.bench_function("unmap 256k external pins", |b| {
        b.iter_batched(
            || {
                let fx = PinFixture::new(1, pins * PAGE_SIZE).ok()?;
                let iovas = fx.pattern_iovas(PinPattern::Dense);
                fx.pin_all(&iovas).ok()?;
                Some(fx)
            },
            |fx| {
                if let Some(fx) = fx {
                    let u = fx.memory.account().updates();
                    let r = fx.container.unmap(0x1_0000_0000, pins * PAGE_SIZE);
                    black_box((&r, fx.memory.account().updates() - u));
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    if let Ok(r) = unmap_with_external_pins(pins) {
        eprintln!(
            "pin-external unmap: {} pins in {:.2} ms, {} accounting update(s), {} pages left accounted",
            r.pinned_pages,
            r.unmap_seconds * 1e3,
            r.accounting_updates,
            r.locked_pages_after
        );
    }
}

criterion_group!(benches, pin_unpin, tracker_sparse, unmap_pinned);
criterion_main!(benches);
