//! Benchmarks over simulated memory: map-1t-sim, churn-4k, dirty-get.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use soft_iommu::AddressWidth;
use softvfio::container::UserBitmap;
use softvfio::iommu::Prot;
use softvfio::memory::sim::{SimMemory, SIZE_1G, SIZE_2M, SIZE_4K};

use super::engine::Engine;
use super::stats::{interleave, median, ns_per_op, spread, time_ns};
use super::sys;
use super::{Better, Ctx, Outcome, PlotData, Row};

const TIB: u64 = 1 << 40;
/// Simulated user addresses (below the x86-64 user limit of 128 TiB).
const VADDR_1G: u64 = 0x2000_0000_0000;
const VADDR_2M: u64 = 0x3000_0000_0000;
/// IOVA of the 1 TiB mappings (inside 48 bits).
const IOVA_1T: u64 = 1 << 42;
/// Bytes of one pin-count segment as stored (key + value of its BTreeMap
/// entry, without node overhead).
const SEGMENT_BYTES: u64 = 32;

/// The simplest mapper that records huge-page entries: one BTreeMap entry
/// per page, inserted, then removed.
pub fn btree_pages(count: u64, page: u64) -> f64 {
    let (ns, ()) = time_ns(|| {
        let mut m: BTreeMap<u64, u64> = BTreeMap::new();
        for i in 0..count {
            m.insert(IOVA_1T + i * page, VADDR_1G + i * page);
        }
        black_box(&m);
        for i in 0..count {
            black_box(m.remove(&(IOVA_1T + i * page)));
        }
    });
    ns
}

pub fn map_1t(ctx: &Ctx, plots: &mut PlotData) -> Result<Outcome, String> {
    let mut rows = Vec::new();
    for (page, vaddr, label) in [(SIZE_1G, VADDR_1G, "1g"), (SIZE_2M, VADDR_2M, "2m")] {
        let mem = Arc::new(SimMemory::new());
        mem.add_region(vaddr, TIB, page, Prot::RW)
            .map_err(|e| format!("sim region: {e}"))?;
        let e = Engine::new(mem.clone(), AddressWidth::Bits48, u32::from(u16::MAX))?;
        let c = e.container.clone();
        let domain = e.domain()?;
        // Tracking memory, once, while mapped.
        c.map(IOVA_1T, vaddr, TIB, Prot::RW)
            .map_err(|err| format!("map 1 TiB of {label} pages: {err}"))?;
        let tables = domain.table_stats();
        let leaves = domain.leaf_counts();
        let segments = mem.tracked_segments() as u64;
        c.unmap(IOVA_1T, TIB)
            .map_err(|err| format!("unmap 1 TiB: {err}"))?;
        let count = TIB / page;
        let reps = ctx.reps.max(5) * 2;
        let (base, subj) = interleave(
            reps,
            || Ok(btree_pages(count, page)),
            || {
                let (ns, r) = time_ns(|| {
                    c.map(IOVA_1T, vaddr, TIB, Prot::RW)?;
                    c.unmap(IOVA_1T, TIB)
                });
                r.map_err(|err| format!("map+unmap 1 TiB: {err}"))?;
                Ok(ns)
            },
        )?;
        let ms = |v: &[f64]| median(v) / 1e6;
        let target = "; target <= 10 ms";
        rows.push(Row {
            bench: format!("map-1t-sim:{label}"),
            value: ms(&subj),
            unit: "ms",
            baseline: format!("BTreeMap insert+remove of the {count} {label} page entries"),
            baseline_value: ms(&base),
            better: Better::Lower,
            note: format!(
                "map+unmap of 1 TiB through the engine (48-bit VT-d, leaves 4K/2M/1G {}/{}/{}); engine {}{target}",
                leaves.0,
                leaves.1,
                leaves.2,
                spread(&subj, 1e6, "ms")
            ),
        });
        // Tracking: page tables plus pin-count segments, against the page
        // tables a 4K-granular mapping of the same 1 TiB needs (computed).
        let pt_4k = (TIB / SIZE_4K) * 8 + (TIB / SIZE_2M) * 8 + (TIB / SIZE_1G) * 8 + 4096;
        let ours = tables.arena_bytes + segments * SEGMENT_BYTES;
        rows.push(Row {
            bench: format!("map-1t-sim:{label}:tracking"),
            value: ours as f64,
            unit: "bytes",
            baseline: "4K-granular page tables for 1 TiB (computed, 8 B a 4K page + upper levels)"
                .into(),
            baseline_value: pt_4k as f64,
            better: Better::Lower,
            note: format!(
                "page-table arena {} B ({} tables), pin tracking {segments} segment(s) x {SEGMENT_BYTES} B",
                tables.arena_bytes, tables.allocated
            ),
        });
        plots.sim_1t.push((format!("engine {label}"), ms(&subj)));
        plots.sim_1t.push((format!("BTreeMap {label}"), ms(&base)));
    }
    Ok(Outcome::Rows(rows))
}

/// A plain virtio-iommu style mapper (crosvm's `BasicMemoryMapper`,
/// cloud-hypervisor's per-domain mappings): IOVA → (address, size) in a
/// BTreeMap, overlap refused on map, entries inside the range removed on
/// unmap.
#[derive(Default)]
pub struct BTreeMapper {
    maps: BTreeMap<u64, (u64, u64)>,
}

impl BTreeMapper {
    pub fn map(&mut self, iova: u64, addr: u64, size: u64) -> bool {
        let end = iova + size;
        if let Some((&s, &(_, sz))) = self.maps.range(..end).next_back() {
            if s + sz > iova {
                return false;
            }
        }
        self.maps.insert(iova, (addr, size));
        true
    }

    pub fn unmap(&mut self, iova: u64, size: u64) -> u64 {
        let end = iova + size;
        let keys: Vec<u64> = self.maps.range(iova..end).map(|(&k, _)| k).collect();
        let mut n = 0;
        for k in keys {
            if let Some((_, sz)) = self.maps.remove(&k) {
                n += sz;
            }
        }
        n
    }
}

const LIVE: u64 = 65536;
const IOVA_BASE: u64 = 0x1_0000_0000;
const SIM_LIVE: u64 = 0x1000_0000_0000;
const SIM_CHURN: u64 = 0x1100_0000_0000;

/// Where live and churned mappings sit in IOVA space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Live mappings on even pages, churned ones on the odd pages between
    /// them (an IOVA allocator reusing holes).
    Interleaved,
    /// Churned mappings in a range above every live one.
    Above,
}

impl Layout {
    fn live_iova(self, i: u64) -> u64 {
        match self {
            Layout::Interleaved => IOVA_BASE + 2 * i * SIZE_4K,
            Layout::Above => IOVA_BASE + i * SIZE_4K,
        }
    }

    fn churn_iova(self, i: u64) -> u64 {
        match self {
            Layout::Interleaved => IOVA_BASE + (2 * i + 1) * SIZE_4K,
            Layout::Above => 0x40_0000_0000 + i * SIZE_4K,
        }
    }
}

pub fn churn_4k(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    let mut rows = Vec::new();
    for (layout, suffix, what) in [
        (
            Layout::Interleaved,
            "",
            "churned 4K pages interleaved with the live ones",
        ),
        (
            Layout::Above,
            ":above",
            "churned 4K pages in a range above every live one",
        ),
    ] {
        rows.push(churn(ctx, layout, suffix, what)?);
    }
    Ok(Outcome::Rows(rows))
}

fn churn(ctx: &Ctx, layout: Layout, suffix: &str, what: &str) -> Result<Row, String> {
    let mem = Arc::new(SimMemory::new());
    for base in [SIM_LIVE, SIM_CHURN] {
        mem.add_region(base, LIVE * SIZE_4K, SIZE_4K, Prot::RW)
            .map_err(|e| format!("sim region: {e}"))?;
    }
    let e = Engine::new(mem, AddressWidth::Bits39, (LIVE + 1024) as u32)?;
    let c = e.container.clone();
    let mut mapper = BTreeMapper::default();
    for i in 0..LIVE {
        let iova = layout.live_iova(i);
        c.map(iova, SIM_LIVE + i * SIZE_4K, SIZE_4K, Prot::RW)
            .map_err(|err| format!("live mapping {i}: {err}"))?;
        mapper.map(iova, SIM_LIVE + i * SIZE_4K, SIZE_4K);
    }
    let mut failed = None;
    let mut next = 0u64;
    let mut next_b = 0u64;
    let (base, subj) = interleave(
        ctx.reps.max(3) * 2,
        || {
            let ns = ns_per_op(ctx.budget, || {
                let i = next_b;
                next_b = (next_b + 1) % LIVE;
                let iova = layout.churn_iova(i);
                black_box(mapper.map(iova, SIM_CHURN + i * SIZE_4K, SIZE_4K));
                black_box(mapper.unmap(iova, SIZE_4K));
            });
            Ok(1e9 / ns)
        },
        || {
            let ns = ns_per_op(ctx.budget, || {
                let i = next;
                next = (next + 1) % LIVE;
                let iova = layout.churn_iova(i);
                let r = c
                    .map(iova, SIM_CHURN + i * SIZE_4K, SIZE_4K, Prot::RW)
                    .and_then(|()| c.unmap(iova, SIZE_4K));
                if let Err(err) = r {
                    failed.get_or_insert(err);
                }
            });
            Ok(1e9 / ns)
        },
    )?;
    if let Some(err) = failed {
        return Err(format!("churn map/unmap: {err}"));
    }
    let live = c.snapshot().mappings.len();
    Ok(Row {
        bench: format!("churn-4k{suffix}"),
        value: median(&subj),
        unit: "pairs/s",
        baseline: "BTreeMap virtio-iommu style mapper, same pairs, 64k live".into(),
        baseline_value: median(&base),
        better: Better::Higher,
        note: format!(
            "engine over sim memory + VT-d, {live} live mappings, {what}; engine {}; target >= 2M pairs/s and >= 0.5x",
            spread(&subj, 1e6, "M pairs/s")
        ),
    })
}

const DIRTY_SIZE: u64 = 64 << 30;
const DIRTY_IOVA: u64 = 0x10_0000_0000;
const SIM_DIRTY: u64 = 0x2000_0000_0000;
const SIM_BITMAP: u64 = 0x3000_0000_0000;

pub fn dirty_get(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    let bitmap_bytes = DIRTY_SIZE / SIZE_4K / 8;
    let mem = Arc::new(SimMemory::new());
    mem.add_region(SIM_DIRTY, DIRTY_SIZE, SIZE_2M, Prot::RW)
        .map_err(|e| format!("sim region: {e}"))?;
    mem.add_region(SIM_BITMAP, bitmap_bytes, SIZE_4K, Prot::RW)
        .map_err(|e| format!("sim region: {e}"))?;
    let e = Engine::new(mem, AddressWidth::Bits39, u32::from(u16::MAX))?;
    let c = e.container.clone();
    // 64 mappings of 1 GiB, as guest RAM split in slots.
    for i in 0..64 {
        c.map(
            DIRTY_IOVA + i * SIZE_1G,
            SIM_DIRTY + i * SIZE_1G,
            SIZE_1G,
            Prot::RW,
        )
        .map_err(|err| format!("map: {err}"))?;
    }
    c.dirty_start()
        .map_err(|err| format!("dirty start: {err}"))?;
    let words = (bitmap_bytes / 8) as usize;
    let mut src = vec![0u64; words];
    let mut dst = vec![0u64; words];
    // A sample is the mean of CALLS calls (one call is ~0.1 ms: a single
    // one is at the mercy of one preemption on a loaded machine).
    const CALLS: u32 = 16;
    let (base, subj) = interleave(
        ctx.reps.max(5) * 2,
        || {
            let (ns, ()) = time_ns(|| {
                for _ in 0..CALLS {
                    sys::fill_and_copy(&mut src, &mut dst);
                }
            });
            Ok(ns / f64::from(CALLS))
        },
        || {
            let (ns, r) = time_ns(|| {
                (0..CALLS).try_for_each(|_| {
                    c.dirty_get_bitmap(
                        DIRTY_IOVA,
                        DIRTY_SIZE,
                        UserBitmap {
                            pgsize: SIZE_4K,
                            size: bitmap_bytes,
                            data: SIM_BITMAP,
                        },
                    )
                })
            });
            r.map_err(|err| format!("GET_BITMAP: {err}"))?;
            Ok(ns / f64::from(CALLS))
        },
    )?;
    Ok(Outcome::Rows(vec![Row {
        bench: "dirty-get".into(),
        value: median(&subj) / 1e6,
        unit: "ms",
        baseline: format!(
            "set all bits of a {} KiB bitmap and copy it (memset + memcpy)",
            bitmap_bytes >> 10
        ),
        baseline_value: median(&base) / 1e6,
        better: Better::Lower,
        note: format!(
            "64 x 1 GiB mappings (sim, 2M pages), tracking started, all pages reported dirty; a sample is the mean of {CALLS} calls; engine {}; target ratio <= 1.5",
            spread(&subj, 1e6, "ms")
        ),
    }]))
}
