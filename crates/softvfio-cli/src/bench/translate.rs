//! translate-hit, translate-miss: one device translation through a VT-d
//! DMA port, against vm-memory's `Iotlb` lookup over the same mappings
//! (soft-iommu's `bench_support` fixtures: scattered 4 KiB pages, requests in
//! a shuffled order).

use std::hint::black_box;

use soft_iommu::bench_support::TranslateFixture;

use super::stats::{median, ns_per_op, spread};
use super::{Better, Ctx, Outcome, PlotData, Row};

fn run(
    ctx: &Ctx,
    plots: &mut PlotData,
    mut f: TranslateFixture,
    name: &str,
    pages: &str,
    target: &str,
) -> Result<Outcome, String> {
    let before = f.port.stats();
    // Baseline and subject alternate by repetition (both use the fixture,
    // so `interleave`'s two closures cannot hold it at once).
    let mut base = Vec::new();
    let mut subj = Vec::new();
    let lookup = |f: &mut TranslateFixture| {
        ns_per_op(ctx.budget, || {
            black_box(f.vm_lookup_next());
        })
    };
    let translate = |f: &mut TranslateFixture| {
        ns_per_op(ctx.budget, || {
            black_box(f.translate_next());
        })
    };
    for i in 0..ctx.reps.max(3) * 2 {
        if i % 2 == 0 {
            base.push(lookup(&mut f));
            subj.push(translate(&mut f));
        } else {
            subj.push(translate(&mut f));
            base.push(lookup(&mut f));
        }
    }
    let after = f.port.stats();
    let hits = after.iotlb_hits - before.iotlb_hits;
    let misses = after.iotlb_misses - before.iotlb_misses;
    let miss_pct = 100.0 * misses as f64 / (hits + misses).max(1) as f64;
    let v = median(&subj);
    let b = median(&base);
    plots.translate.push((format!("softvfio {name}"), v));
    plots
        .translate
        .push((format!("vm-memory Iotlb ({name} set)"), b));
    Ok(Outcome::Rows(vec![Row {
        bench: format!("translate-{name}"),
        value: v,
        unit: "ns",
        baseline: format!("vm-memory Iotlb lookup, same {pages} mappings"),
        baseline_value: b,
        better: Better::Lower,
        note: format!(
            "{pages} scattered 4K pages; {miss_pct:.1}% IOTLB misses; engine {}; {target}",
            spread(&subj, 1.0, "ns")
        ),
    }]))
}

pub fn hit(ctx: &Ctx, plots: &mut PlotData) -> Result<Outcome, String> {
    let f = TranslateFixture::hits().map_err(|e| format!("fixture: {e}"))?;
    run(ctx, plots, f, "hit", "1024", "target ratio <= 0.5")
}

pub fn miss(ctx: &Ctx, plots: &mut PlotData) -> Result<Outcome, String> {
    let f = TranslateFixture::misses().map_err(|e| format!("fixture: {e}"))?;
    run(ctx, plots, f, "miss", "262144", "target < 100 ns")
}
