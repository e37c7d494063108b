//! pin-external: the external (mediated device) pinning interface, through
//! `softvfio::external::bench_support` — bytes of tracking per pinned page
//! (dense, random 1/4, 1/64, 1/512 and 1/4096, and one page in 64 in order),
//! the tracker's own pin and unpin time against the previous tracker, pins
//! and unpins per second through the engine, unmap of a mapping with 256k
//! pinned pages.
//!
//! Baselines: for the time figures, a per-page tree of the kind the kernel
//! keeps (`struct vfio_pfn` in an rbtree: one node per pinned page, with its
//! pin count), as a BTreeMap built and emptied in the same run; for the
//! tracking figures, the kernel's ~40 bytes per pinned page (computed: it is
//! a size, not a time), with the previous tracker's figure in the note; for
//! the tracker times, the previous tracker (kept in `bench_support` as
//! `ChunkedPinTracker`) on the same pages in the same order.

use std::collections::BTreeMap;
use std::hint::black_box;

use softvfio::external::bench_support::{
    pattern_pages, pattern_rates, pin_unpin_rate, tracker_pin_unpin_ns, tracking_footprint,
    unmap_with_external_pins, PinPattern,
};

use super::stats::{interleave, median, spread, time_ns};
use super::{Better, Ctx, Outcome, PlotData, Row};

const PAGES: u64 = 1 << 18;
const PER_CALL: u64 = 512;
const MIB: u64 = 1 << 20;

/// The kernel-like per-page pin tree: insert `pages` pages in calls of
/// `per_call` (one node per page, count 1), then remove them. Returns
/// (pin ns, unpin ns).
fn pin_tree(pages: u64, per_call: u64) -> (f64, f64) {
    let mut tree: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
    let (pin, ()) = time_ns(|| {
        let mut done = 0;
        while done < pages {
            let n = per_call.min(pages - done);
            for p in done..done + n {
                let e = tree.entry(0x1_0000_0000 + p * 4096).or_insert((p, 0));
                e.1 += 1;
            }
            done += n;
        }
        black_box(&tree);
    });
    let (unpin, ()) = time_ns(|| {
        for p in 0..pages {
            black_box(tree.remove(&(0x1_0000_0000 + p * 4096)));
        }
    });
    (pin, unpin)
}

/// The densities of the tracking-bytes rows: name, pattern, target
/// (bytes per pinned page, issue 17) over 8 x 128 MiB mappings.
const FOOTPRINTS: [(&str, PinPattern, f64); 6] = [
    ("dense", PinPattern::Dense, 1.0),
    ("random-1/4", PinPattern::Random { every: 4 }, 40.0),
    ("random-1/64", PinPattern::Random { every: 64 }, 16.0),
    ("sparse", PinPattern::Sparse { stride: 64 }, 40.0),
    ("random-1/512", PinPattern::Random { every: 512 }, 40.0),
    ("random-1/4096", PinPattern::Random { every: 4096 }, 40.0),
];

/// The per-page pin tree on given pages (IOVA-keyed, count 1): insert in
/// order, then remove in the same order. Returns (pin ns, unpin ns).
fn page_tree(pages: &[u64]) -> (f64, f64) {
    let mut tree: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
    let (pin, ()) = time_ns(|| {
        for &p in pages {
            let e = tree.entry(0x1_0000_0000 + p * 4096).or_insert((p, 0));
            e.1 += 1;
        }
        black_box(&tree);
    });
    let (unpin, ()) = time_ns(|| {
        for &p in pages {
            black_box(tree.remove(&(0x1_0000_0000 + p * 4096)));
        }
    });
    (pin, unpin)
}

pub fn pin_external(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    let err = |e: softvfio::VfioError| format!("external pinning: {e}");
    let mut rows = Vec::new();
    for (label, pattern, target) in FOOTPRINTS {
        let f = tracking_footprint(8, 128 * MIB, pattern).map_err(err)?;
        let pages = f.pinned_pages.max(1) as f64;
        let how = match pattern {
            PinPattern::Dense => "every page, in order".to_string(),
            PinPattern::Sparse { stride } => format!("one page in {stride}, in order"),
            PinPattern::Random { every } => {
                format!("one page in {every} at random, in random order")
            }
        };
        rows.push(Row {
            bench: format!("pin-external:bytes-per-page-{label}"),
            value: f.bytes_per_pinned_page,
            unit: "bytes/page",
            baseline: "kernel vfio_pfn rbtree node per pinned page (computed, 40 B)".into(),
            baseline_value: f.kernel_rbtree_bytes as f64 / pages,
            better: Better::Lower,
            note: format!(
                "{} pages pinned ({how}) over 8 x 128 MiB mappings, {} B of tracking; previous tracker {:.2} B/page; target <= {target} B/page",
                f.pinned_pages,
                f.tracking_bytes,
                f.previous_tracker_bytes as f64 / pages
            ),
        });
    }
    // The trackers alone, current against previous, same pages and order.
    let reps = ctx.reps.max(3);
    for (label, pattern) in [
        ("dense", PinPattern::Dense),
        ("random-1/64", PinPattern::Random { every: 64 }),
    ] {
        let mapping_pages = 128 * MIB / 4096;
        let (mut old_unpin, mut new_unpin) = (Vec::new(), Vec::new());
        let (old_pin, new_pin) = interleave(
            reps,
            || {
                let (p, u, _) = tracker_pin_unpin_ns(8, mapping_pages, pattern, true);
                old_unpin.push(u);
                Ok(p)
            },
            || {
                let (p, u, _) = tracker_pin_unpin_ns(8, mapping_pages, pattern, false);
                new_unpin.push(u);
                Ok(p)
            },
        )?;
        for (what, new, old) in [
            ("pin", &new_pin, &old_pin),
            ("unpin", &new_unpin, &old_unpin),
        ] {
            rows.push(Row {
                bench: format!("pin-external:tracker-{what}-{label}"),
                value: median(new),
                unit: "ns/page",
                baseline: "previous tracker (64-page chunks in a BTreeMap), same pages, same order"
                    .into(),
                baseline_value: median(old),
                better: Better::Lower,
                note: format!(
                    "8 trackers of 32768 pages; current {}; previous {}",
                    spread(new, 1.0, "ns"),
                    spread(old, 1.0, "ns")
                ),
            });
        }
    }
    let mut rates = Vec::new();
    let mut tree_unpins = Vec::new();
    let (tree_pins, _) = interleave(
        reps,
        || {
            let (p, u) = pin_tree(PAGES, PER_CALL);
            tree_unpins.push(u);
            Ok(p)
        },
        || {
            let r = pin_unpin_rate(PAGES, PER_CALL).map_err(err)?;
            rates.push(r);
            Ok(r.pin_seconds)
        },
    )?;
    let pins: Vec<f64> = rates.iter().map(|r| r.pins_per_second).collect();
    let unpins: Vec<f64> = rates.iter().map(|r| r.unpins_per_second).collect();
    let per_s = |ns: &[f64]| -> Vec<f64> { ns.iter().map(|&n| PAGES as f64 * 1e9 / n).collect() };
    let last = rates.last().copied();
    let calls = PAGES.div_ceil(PER_CALL);
    let (pin_upd, unpin_upd) = last
        .map(|r| (r.pin_accounting_updates, r.unpin_accounting_updates))
        .unwrap_or_default();
    rows.push(Row {
        bench: "pin-external:pin-rate".into(),
        value: median(&pins),
        unit: "pages/s",
        baseline: "per-page BTreeMap pin tree (kernel vfio_pfn style), same pages".into(),
        baseline_value: median(&per_s(&tree_pins)),
        better: Better::Higher,
        note: format!(
            "{PAGES} pages in {calls} calls of {PER_CALL}; {pin_upd} accounting updates for {calls} pin calls (target: 1 a call); engine {}",
            spread(&pins, 1e6, "M pages/s")
        ),
    });
    rows.push(Row {
        bench: "pin-external:unpin-rate".into(),
        value: median(&unpins),
        unit: "pages/s",
        baseline: "per-page BTreeMap pin tree (kernel vfio_pfn style), same pages".into(),
        baseline_value: median(&per_s(&tree_unpins)),
        better: Better::Higher,
        note: format!("{unpin_upd} accounting updates for {calls} unpin calls (target: 1 a call)"),
    });
    // Scattered pins through the engine, one page per call, and the unmap
    // of the eight mappings holding them.
    let pattern = PinPattern::Random { every: 64 };
    let sparse_pages = pattern_pages(8 * 128 * MIB / 4096, pattern);
    let (mut s_rates, mut s_unmaps, mut t_unpins, mut t_rm) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (t_pins, _) = interleave(
        reps,
        || {
            let (p, u) = page_tree(&sparse_pages);
            t_unpins.push(u);
            t_rm.push(u);
            Ok(p)
        },
        || {
            let (r, unmap) = pattern_rates(pattern).map_err(err)?;
            s_rates.push(r);
            s_unmaps.push(unmap * 1e9);
            Ok(r.pin_seconds)
        },
    )?;
    let n = sparse_pages.len() as f64;
    let per_s = |ns: &[f64]| -> Vec<f64> { ns.iter().map(|&t| n * 1e9 / t).collect() };
    let s_pins: Vec<f64> = s_rates.iter().map(|r| r.pins_per_second).collect();
    let s_unpins: Vec<f64> = s_rates.iter().map(|r| r.unpins_per_second).collect();
    let (s_pu, s_uu) = s_rates
        .last()
        .map(|r| (r.pin_accounting_updates, r.unpin_accounting_updates))
        .unwrap_or_default();
    rows.push(Row {
        bench: "pin-external:pin-rate-random-1/64".into(),
        value: median(&s_pins),
        unit: "pages/s",
        baseline: "per-page BTreeMap pin tree (kernel vfio_pfn style), same pages, same order"
            .into(),
        baseline_value: median(&per_s(&t_pins)),
        better: Better::Higher,
        note: format!(
            "{n} pages, one in 64 at random over 8 x 128 MiB, in random order, 1 page a call; {s_pu} accounting updates; engine {}",
            spread(&s_pins, 1e6, "M pages/s")
        ),
    });
    rows.push(Row {
        bench: "pin-external:unpin-rate-random-1/64".into(),
        value: median(&s_unpins),
        unit: "pages/s",
        baseline: "per-page BTreeMap pin tree (kernel vfio_pfn style), same pages, same order"
            .into(),
        baseline_value: median(&per_s(&t_unpins)),
        better: Better::Higher,
        note: format!(
            "{s_uu} accounting updates; engine {}",
            spread(&s_unpins, 1e6, "M pages/s")
        ),
    });
    rows.push(Row {
        bench: "pin-external:unmap-random-1/64".into(),
        value: median(&s_unmaps) / 1e6,
        unit: "ms",
        baseline: "removal of the same pages from a per-page BTreeMap pin tree".into(),
        baseline_value: median(&t_rm) / 1e6,
        better: Better::Lower,
        note: format!(
            "unmap of 8 x 128 MiB holding {n} scattered pins, each device notified; engine {}",
            spread(&s_unmaps, 1e6, "ms")
        ),
    });
    let mut unmaps = Vec::new();
    let mut info = None;
    let (tree_rm, _) = interleave(
        reps,
        || Ok(pin_tree(PAGES, PER_CALL).1),
        || {
            let u = unmap_with_external_pins(PAGES).map_err(err)?;
            info = Some(u);
            unmaps.push(u.unmap_seconds * 1e9);
            Ok(0.0)
        },
    )?;
    let note = info
        .map(|u| {
            format!(
                "{} pinned pages; {} accounting updates; {} pages still accounted after",
                u.pinned_pages, u.accounting_updates, u.locked_pages_after
            )
        })
        .unwrap_or_default();
    rows.push(Row {
        bench: "pin-external:unmap-256k".into(),
        value: median(&unmaps) / 1e6,
        unit: "ms",
        baseline: "removal of the same 256k pages from a per-page BTreeMap pin tree".into(),
        baseline_value: median(&tree_rm) / 1e6,
        better: Better::Lower,
        note,
    });
    Ok(Outcome::Rows(rows))
}
