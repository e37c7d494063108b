//! sanitize-churn, sanitize-dma: what the DMA sanitizer (docs/SANITIZER.md)
//! costs when nothing faults. Each runs the same engine twice in the same
//! process, with the sanitizer recording (and a call site set, as the front
//! ends set one per call) and without; the baseline is the one without.
//! Target: at most 10% slower.
//!
//! The two are measured in short alternating blocks on one thread, timed by
//! the thread's CPU clock (see [`paired_blocks`]): on a shared machine a
//! burst of load lands in a block or two of either side, not on one side's
//! whole run (as with two long runs, where one repetition gave 0.715 and
//! the next 1.028). The row's ratio is the median over the repetitions of
//! the ratio of their totals (all blocks, rare expensive ones included);
//! the note gives the paired blocks' ratios too. Rates are per second of
//! the thread's CPU time.

use std::sync::Arc;

use soft_iommu::{Iommu, IommuConfig};
use softvfio::container::{Container, ContainerConfig, TYPE1V2_IOMMU};
use softvfio::device::VfioDeviceModel;
use softvfio::iommu::vtd::VtdUnit;
use softvfio::iommu::{IommuUnit, Prot};
use softvfio::memory::sim::{SimMemory, SIZE_4K};
use softvfio::platform::{Device, Group, GroupKind};
use softvfio::sanitizer::{with_call_site, Sanitizer, SanitizerConfig};
use softvfio::testing::churn::{call_site, Backend, Churn, LIVE, NEW_REGION_EACH_PAIR, RING};
use softvfio_devices::{EduDevice, EduOptions, IommuDmaTarget};

use super::stats::{median, paired_blocks, ratio_spread, spread, PairedBlocks};
use super::{Better, Ctx, Outcome, PlotData, Row};

/// The nominal length of one block of [`paired_blocks`] (in CPU time):
/// long next to the clock read and the switch between the two engines'
/// working sets, short next to a scheduler's time slice.
const BLOCK: std::time::Duration = std::time::Duration::from_millis(2);

/// 4K map+unmap pairs with 4096 live mappings (`softvfio::testing::churn`):
/// at distinct IOVAs (every pair a new region for the sanitizer's history,
/// which therefore also forgets one: the worst case), and cycling over 256
/// IOVAs (a driver's ring of buffers: regions are reused); through a type1
/// container and through an iommufd IOAS (whose areas the sanitizer
/// records in the context's own recorder, as a container's mappings in
/// the container's).
pub fn churn(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    let new = "each pair a new IOVA region";
    let ring = "pairs cycling over 256 IOVAs";
    Ok(Outcome::Rows(vec![
        churn_with(ctx, Backend::Type1, NEW_REGION_EACH_PAIR, "", new)?,
        churn_with(ctx, Backend::Type1, RING, ":ring", ring)?,
        churn_with(ctx, Backend::Iommufd, NEW_REGION_EACH_PAIR, ":iommufd", new)?,
        churn_with(ctx, Backend::Iommufd, RING, ":iommufd-ring", ring)?,
    ]))
}

fn churn_with(
    ctx: &Ctx,
    backend: Backend,
    ring: u64,
    suffix: &str,
    what: &str,
) -> Result<Row, String> {
    let failed = std::cell::Cell::new(0u64);
    let count = |r: softvfio::Result<()>| {
        if r.is_err() {
            failed.set(failed.get() + 1);
        }
    };
    // A fresh pair of engines for every repetition, so that neither side
    // keeps the warmer allocations; both run the same warm-up, which leaves
    // the sanitized one with a full history (the measured pairs also forget
    // regions).
    let mut regions = 0usize;
    let mut runs = Vec::new();
    for rep in 0..ctx.reps.max(3) * 2 {
        let engine =
            |s| Churn::with_backend(backend, ring, s).map_err(|e| format!("churn engine: {e}"));
        let mut plain = engine(None)?;
        let mut sanitized = engine(Some(Sanitizer::new(SanitizerConfig::default())))?;
        count(plain.warm_up());
        count(sanitized.warm_up());
        runs.push(paired_blocks(
            ctx.budget,
            BLOCK,
            rep as u64,
            || count(plain.pair()),
            || count(sanitized.pair()),
        )?);
        regions = sanitized.regions();
    }
    if failed.get() > 0 {
        return Err(format!("churn: {} map/unmap pairs failed", failed.get()));
    }
    let m = Measured::of(&runs, 1.0);
    Ok(Row {
        bench: format!("sanitize-churn{suffix}"),
        value: m.value,
        unit: "pairs/s",
        baseline: "the same engine without the sanitizer".into(),
        baseline_value: m.baseline,
        better: Better::Higher,
        note: format!(
            "4K {} pairs, {LIVE} live, {what} ({regions} regions kept); {}; sanitized {}; target ratio >= 0.90",
            match backend {
                Backend::Type1 => "MAP_DMA+UNMAP_DMA",
                Backend::Iommufd => "IOAS_MAP+IOAS_UNMAP",
            },
            m.blocks,
            spread(&m.subj, 1e6, "M pairs/s"),
        ),
    })
}

/// What the rows report from repetitions of [`paired_blocks`].
struct Measured {
    /// The baseline's rate: the median of the repetitions'.
    baseline: f64,
    /// The baseline's rate times the median over the repetitions of the
    /// ratio of their totals (so that the row's ratio is that median): a
    /// repetition's total counts every block, the rare expensive work of
    /// either side included (a table's growth, a rehash), which a median of
    /// block ratios would leave out.
    value: f64,
    /// Each repetition's subject rate.
    subj: Vec<f64>,
    /// The note on the blocks and the repetitions.
    blocks: String,
}

impl Measured {
    /// Rates are `per_op` units per operation.
    fn of(runs: &[PairedBlocks], per_op: f64) -> Measured {
        let base: Vec<f64> = runs.iter().map(|r| per_op * 1e9 / r.base_ns).collect();
        let subj: Vec<f64> = runs.iter().map(|r| per_op * 1e9 / r.subj_ns).collect();
        let totals: Vec<f64> = runs.iter().map(|r| r.base_ns / r.subj_ns).collect();
        let ratios: Vec<f64> = runs.iter().flat_map(|r| r.ratios.iter().copied()).collect();
        let ops = runs.first().map_or(0, |r| r.ops_per_block);
        let baseline = median(&base);
        Measured {
            baseline,
            value: baseline * median(&totals),
            blocks: format!(
                "ratio of each repetition's totals over paired blocks of {}..{} ms of the thread's CPU time in random order ({ops} operations a nominal block in the first repetition): {:.3}..{:.3}, median {:.3} over {}; paired block ratios {}",
                BLOCK.as_millis() / 2,
                BLOCK.as_millis() * 3 / 2,
                totals.iter().copied().fold(f64::NAN, f64::min),
                totals.iter().copied().fold(f64::NAN, f64::max),
                median(&totals),
                totals.len(),
                ratio_spread(&ratios),
            ),
            subj,
        }
    }
}

const RAM: u64 = 0x7f00_0000_0000;
const RAM_SIZE: u64 = 1 << 20;
const IOVA: u64 = 0x10_0000;

/// An edu behind a VT-d and a container over simulated RAM, mapped.
fn dma_setup(
    sanitizer: Option<Arc<Sanitizer>>,
) -> Result<(Arc<EduDevice>, Arc<Container>), String> {
    let ram = Arc::new(SimMemory::new());
    ram.add_region(RAM, RAM_SIZE, SIZE_4K, Prot::RW)
        .map_err(|e| format!("sim region: {e}"))?;
    let iommu = Iommu::new(IommuConfig::default());
    let unit: Arc<dyn IommuUnit> = Arc::new(VtdUnit::new(iommu.clone()));
    let edu = Arc::new(EduDevice::with_options(EduOptions::new("0000:00:03.0")));
    edu.set_dma_target(Arc::new(IommuDmaTarget::for_device(&iommu, 0x18)));
    let group = Arc::new(Group {
        id: 3,
        kind: GroupKind::Iommu(unit),
        devices: vec![Arc::new(Device {
            name: "0000:00:03.0".into(),
            rid: Some(0x18),
            model: edu.clone(),
        })],
        extra_reserved: Vec::new(),
    });
    let c = Container::new(ContainerConfig::default(), ram);
    if let Some(s) = sanitizer {
        c.set_sanitizer(s);
    }
    c.attach_group(&group).map_err(|e| e.to_string())?;
    c.set_iommu(TYPE1V2_IOMMU).map_err(|e| e.to_string())?;
    with_call_site(Some(&call_site()), || c.map(IOVA, RAM, RAM_SIZE, Prot::RW))
        .map_err(|e| e.to_string())?;
    edu.open_device();
    edu.region_write(7, 4, &0x0006u16.to_le_bytes())
        .map_err(|e| format!("config: errno {e}"))?;
    Ok((edu, c))
}

/// One 4 KiB edu transfer to RAM and one back, through BAR0.
fn transfer(edu: &EduDevice, n: u64) -> bool {
    let off = (n % (RAM_SIZE / SIZE_4K)) * SIZE_4K;
    [
        (0x80u64, 0x40000u64, 0x88u64, IOVA + off, 3u64),
        (0x80, IOVA + off, 0x88, 0x40000, 1),
    ]
    .iter()
    .all(|&(src_reg, src, dst_reg, dst, cmd)| {
        [(src_reg, src), (dst_reg, dst), (0x90, SIZE_4K), (0x98, cmd)]
            .iter()
            .all(|(reg, v)| edu.region_write(0, *reg, &v.to_le_bytes()).is_ok())
    })
}

/// edu DMA throughput (4 KiB each way) through the IOMMU, sanitizer on vs
/// off.
pub fn dma(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    let (plain, _c1) = dma_setup(None)?;
    let (sanitized, _c2) = dma_setup(Some(Sanitizer::new(SanitizerConfig::default())))?;
    let ok = std::cell::Cell::new(true);
    let (mut a, mut b) = (0u64, 0u64);
    let mut runs = Vec::new();
    for rep in 0..ctx.reps.max(3) * 2 {
        runs.push(paired_blocks(
            ctx.budget,
            BLOCK,
            rep as u64,
            || {
                a += 1;
                ok.set(ok.get() & transfer(&plain, a));
            },
            || {
                b += 1;
                ok.set(ok.get() & transfer(&sanitized, b));
            },
        )?);
    }
    let faults = plain.stats().dma_faults + sanitized.stats().dma_faults;
    if !ok.get() || faults > 0 {
        return Err(format!("DMA failed ({faults} faults)"));
    }
    let m = Measured::of(&runs, 2.0 * SIZE_4K as f64);
    Ok(Outcome::Rows(vec![Row {
        bench: "sanitize-dma".into(),
        value: m.value,
        unit: "B/s",
        baseline: "the same device and engine without the sanitizer".into(),
        baseline_value: m.baseline,
        better: Better::Higher,
        note: format!(
            "edu 4 KiB to RAM and back through VT-d; {}; sanitized {}; target ratio >= 0.90",
            m.blocks,
            spread(&m.subj, 1e9, "GB/s"),
        ),
    }]))
}

#[cfg(test)]
mod tests {
    // Unused where the module is included by the criterion bench.
    #[allow(unused_imports)]
    use super::*;

    /// The row's ratio is the median over the repetitions of the ratio of
    /// their totals (not of the block ratios, which leave rare expensive
    /// blocks out); its baseline the median repetition's rate.
    #[test]
    fn rows_report_the_median_ratio_of_totals() {
        let run = |base_ns: f64, subj_ns: f64, ratios: &[f64]| PairedBlocks {
            base_ns,
            subj_ns,
            ratios: ratios.to_vec(),
            ops_per_block: 5000,
        };
        let runs = [
            run(400.0, 500.0, &[0.90, 0.92, 0.50]),
            run(500.0, 520.0, &[0.95, 1.60]),
            run(250.0, 300.0, &[0.91]),
        ];
        let m = Measured::of(&runs, 1.0);
        // Rates 2.5M, 2M, 4M pairs/s: the median 2.5M.
        assert_eq!(m.baseline, 2.5e6);
        // Totals 0.800, 0.962, 0.833: the median 0.833 (the block
        // ratios' median would be 0.915).
        assert!((m.value / m.baseline - 250.0 / 300.0).abs() < 1e-12);
        assert_eq!(m.subj.len(), 3);
        assert!(m.blocks.contains("5000 operations a nominal block"));
        assert!(m.blocks.contains("0.800..0.962, median 0.833 over 3"));
        assert!(m.blocks.contains(
            "paired block ratios median 0.915, quartiles 0.900..0.950, min..max 0.500..1.600 over 6"
        ));
    }
}
