//! map-4k, map-thp, map-2m: map+unmap of real memory of this process through
//! the engine (pin: populate + mlock + PFN read; VT-d page-table writes;
//! locked-memory accounting; then the reverse), against the bare floor of
//! the same memory: `MADV_POPULATE_WRITE` + `mlock` + `munlock`.
//!
//! Two variants, each with baseline and subject on the same kind of memory:
//! - `fresh`: new memory for every repetition of either side (dominated by
//!   the kernel allocating and zeroing pages);
//! - `populated`: one area written once, pinned and unpinned again and
//!   again by both sides (the cost of pinning memory that is already there).

use std::sync::Arc;

use soft_iommu::AddressWidth;
use softvfio::iommu::Prot;
use softvfio::memory::host::{parallel, HostMemory};

use super::engine::Engine;
use super::stats::{interleave, median, spread};
use super::sys::{self, Area, HugePool};
use super::{Better, Ctx, Outcome, PlotData, Row};

const GIB: f64 = (1u64 << 30) as f64;
const M2: u64 = 2 << 20;
/// Where the benchmarks map host memory in IOVA space (inside 39 bits).
const IOVA: u64 = 0x40_0000_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backing {
    Base4k,
    Thp,
    Huge2m,
}

impl Backing {
    fn name(self) -> &'static str {
        match self {
            Backing::Base4k => "map-4k",
            Backing::Thp => "map-thp",
            Backing::Huge2m => "map-2m",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Backing::Base4k => "4K",
            Backing::Thp => "THP",
            Backing::Huge2m => "hugetlb 2M",
        }
    }

    fn area(self, len: u64) -> Result<Area, String> {
        match self {
            Backing::Base4k => Area::anon(len),
            Backing::Thp => Area::thp(len),
            Backing::Huge2m => Area::hugetlb_2m(len),
        }
    }
}

/// What one engine map+unmap saw.
#[derive(Debug, Default, Clone, Copy)]
struct MapSample {
    map_ns: f64,
    unmap_ns: f64,
    /// IOMMU leaf entries (4K, 2M, 1G) while mapped.
    leaves: (u64, u64, u64),
    /// Bytes smaps showed as AnonHugePages while mapped.
    thp_bytes: u64,
}

fn engine_map_unmap(e: &Engine, a: &Area) -> Result<MapSample, String> {
    let c = &e.container;
    let t = std::time::Instant::now();
    c.map(IOVA, a.start, a.len, Prot::RW)
        .map_err(|err| format!("engine map of {} bytes: {err}", a.len))?;
    let map_ns = t.elapsed().as_nanos() as f64;
    // Not timed: what backs the mapping.
    let leaves = e.domain()?.leaf_counts();
    let thp_bytes = sys::anon_huge_bytes(a.start, a.start + a.len);
    let t = std::time::Instant::now();
    let n = c
        .unmap(IOVA, a.len)
        .map_err(|err| format!("engine unmap: {err}"))?;
    let unmap_ns = t.elapsed().as_nanos() as f64;
    if n != a.len {
        return Err(format!("unmapped {n} bytes, {} mapped", a.len));
    }
    Ok(MapSample {
        map_ns,
        unmap_ns,
        leaves,
        thp_bytes,
    })
}

fn per_gib(ns: f64, len: u64) -> f64 {
    ns * GIB / len as f64
}

/// Floor vs engine on `len` bytes: fresh memory each time or one populated
/// area. Returns (floor samples, engine samples), in ns.
fn compare(
    e: &Engine,
    kind: Backing,
    len: u64,
    reps: usize,
    fresh: bool,
) -> Result<(Vec<f64>, Vec<MapSample>), String> {
    let mut samples = Vec::new();
    let populated = if fresh {
        None
    } else {
        let a = kind.area(len)?;
        a.touch();
        // Warm up both: the first fault-in after the write is cheaper than
        // any later one (after an mlock/munlock cycle).
        sys::floor_ns(a.start, a.len)?;
        engine_map_unmap(e, &a)?;
        Some(a)
    };
    let (floor, _) = interleave(
        reps,
        || match &populated {
            Some(a) => sys::floor_ns(a.start, a.len),
            None => sys::floor_ns_fresh(|| kind.area(len)),
        },
        || {
            let s = match &populated {
                Some(a) => engine_map_unmap(e, a)?,
                None => {
                    let a = kind.area(len)?;
                    engine_map_unmap(e, &a)?
                }
            };
            samples.push(s);
            Ok(s.map_ns + s.unmap_ns)
        },
    )?;
    Ok((floor, samples))
}

fn rows_of(kind: Backing, variant: &str, len: u64, floor: &[f64], samples: &[MapSample]) -> Row {
    let total: Vec<f64> = samples
        .iter()
        .map(|s| per_gib(s.map_ns + s.unmap_ns, len))
        .collect();
    let maps: Vec<f64> = samples.iter().map(|s| per_gib(s.map_ns, len)).collect();
    let unmaps: Vec<f64> = samples.iter().map(|s| per_gib(s.unmap_ns, len)).collect();
    let floor: Vec<f64> = floor.iter().map(|&f| per_gib(f, len)).collect();
    let last = samples.last().copied().unwrap_or_default();
    let mut note = format!(
        "{} MiB; map {:.2} ms/GiB + unmap {:.2} ms/GiB; engine {}, floor {}; IOMMU leaves 4K/2M/1G {}/{}/{}",
        len >> 20,
        median(&maps) / 1e6,
        median(&unmaps) / 1e6,
        spread(&total, 1e6, "ms/GiB"),
        spread(&floor, 1e6, "ms/GiB"),
        last.leaves.0,
        last.leaves.1,
        last.leaves.2
    );
    if kind == Backing::Thp {
        note.push_str(&format!(
            "; THP used for {:.0}% of the memory (AnonHugePages)",
            100.0 * last.thp_bytes as f64 / len as f64
        ));
    }
    note.push_str("; target ratio <= 1.25");
    Row {
        bench: format!("{}:{variant}", kind.name()),
        value: median(&total),
        unit: "ns/GiB",
        baseline: format!(
            "populate+mlock+munlock, {} memory, {}",
            variant,
            kind.label()
        ),
        baseline_value: median(&floor),
        better: Better::Lower,
        note,
    }
}

fn family(ctx: &Ctx, plots: &mut PlotData, kind: Backing) -> Result<Outcome, String> {
    let len = ctx.size_bytes;
    let _pool = if kind == Backing::Huge2m {
        match HugePool::reserve(len / M2) {
            Ok(p) => {
                if let Some(old) = p.raised_from() {
                    eprintln!(
                        "map-2m: raised nr_hugepages from {old} for the run (restored after)"
                    );
                }
                Some(p)
            }
            Err(why) => return Ok(Outcome::Skipped(why)),
        }
    } else {
        None
    };
    // SAFETY: the only user addresses the engine is given are this
    // command's own mmap areas (raw addresses; no Rust reference to them is
    // used while the engine runs), so any write it makes is allowed.
    #[allow(unsafe_code)]
    let mem = Arc::new(unsafe { HostMemory::current() }.with_pin_threads(1));
    let e = Engine::new(mem, AddressWidth::Bits39, u32::from(u16::MAX))?;
    // A probe: hugetlb memory may still be refused (cgroup limits).
    if kind == Backing::Huge2m {
        if let Err(why) = kind
            .area(M2)
            .and_then(|a| sys::madvise(a.start, a.len, libc::MADV_POPULATE_WRITE).map(|()| a))
        {
            return Ok(Outcome::Skipped(format!("hugetlb memory unusable: {why}")));
        }
    }
    let mut rows = Vec::new();
    let (floor, samples) = compare(&e, kind, len, ctx.reps, true)?;
    rows.push(rows_of(kind, "fresh", len, &floor, &samples));
    let (floor, samples) = compare(&e, kind, len, ctx.reps, false)?;
    rows.push(rows_of(kind, "populated", len, &floor, &samples));
    // The same with the pin pool (the machine's thread count), against the
    // same single-threaded floor.
    let threads = parallel::default_pin_threads();
    if threads > 1 {
        // SAFETY: as above.
        #[allow(unsafe_code)]
        let mem = Arc::new(unsafe { HostMemory::current() }.with_pin_threads(threads));
        let ep = Engine::new(mem, AddressWidth::Bits39, u32::from(u16::MAX))?;
        let (floor, samples) = compare(&ep, kind, len, ctx.reps, true)?;
        rows.push(parallel_row(
            rows_of(kind, "fresh", len, &floor, &samples),
            threads,
        ));
        if kind == Backing::Base4k {
            let (floor, samples) = compare(&ep, kind, len, ctx.reps, false)?;
            rows.push(parallel_row(
                rows_of(kind, "populated", len, &floor, &samples),
                threads,
            ));
        }
    }
    if kind == Backing::Huge2m {
        rows.push(huge_vs_4k(&e, len, ctx.reps)?);
    }
    if ctx.plot {
        let mut eng = Vec::new();
        let mut flo = Vec::new();
        for div in [8u64, 4, 2, 1] {
            let l = (len / div).max(M2) & !(M2 - 1);
            let (f, s) = compare(&e, kind, l, 3, false)?;
            let t: Vec<f64> = s.iter().map(|s| s.map_ns + s.unmap_ns).collect();
            let gib = l as f64 / GIB;
            eng.push((gib, median(&t) / 1e6));
            flo.push((gib, median(&f) / 1e6));
        }
        plots
            .map_vs_size
            .push((format!("engine {}", kind.label()), eng));
        plots
            .map_vs_size
            .push((format!("floor {}", kind.label()), flo));
    }
    Ok(Outcome::Rows(rows))
}

/// A row of [`rows_of`] for the engine pinning on `threads` threads (the
/// floor stays single-threaded: it is what Linux does for one MAP_DMA).
fn parallel_row(mut row: Row, threads: usize) -> Row {
    row.bench.push_str("-parallel");
    row.note = row.note.replace(
        "; target ratio <= 1.25",
        &format!(
            "; engine pins on {threads} threads, floor on one; target ratio <= 0.6 for fresh 4K memory"
        ),
    );
    row
}

/// The engine on populated hugetlb 2M memory against the engine on populated
/// 4K memory of the same size, interleaved (target: 8x faster per GiB).
fn huge_vs_4k(e: &Engine, len: u64, reps: usize) -> Result<Row, String> {
    let small = Backing::Base4k.area(len)?;
    small.touch();
    let huge = Backing::Huge2m.area(len)?;
    huge.touch();
    engine_map_unmap(e, &small)?;
    engine_map_unmap(e, &huge)?;
    let (b, s) = interleave(
        reps,
        || engine_map_unmap(e, &small).map(|s| s.map_ns + s.unmap_ns),
        || engine_map_unmap(e, &huge).map(|s| s.map_ns + s.unmap_ns),
    )?;
    Ok(Row {
        bench: "map-2m:vs-4k".into(),
        value: per_gib(median(&s), len),
        unit: "ns/GiB",
        baseline: "engine map+unmap of populated 4K memory (same run)".into(),
        baseline_value: per_gib(median(&b), len),
        better: Better::Lower,
        note: "target ratio <= 0.125 (2M at least 8x faster per GiB)".into(),
    })
}

pub fn map_4k(ctx: &Ctx, plots: &mut PlotData) -> Result<Outcome, String> {
    family(ctx, plots, Backing::Base4k)
}

pub fn map_thp(ctx: &Ctx, plots: &mut PlotData) -> Result<Outcome, String> {
    family(ctx, plots, Backing::Thp)
}

pub fn map_2m(ctx: &Ctx, plots: &mut PlotData) -> Result<Outcome, String> {
    family(ctx, plots, Backing::Huge2m)
}
