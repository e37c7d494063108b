//! sanitize-churn, sanitize-dma: what the DMA sanitizer (docs/SANITIZER.md)
//! costs when nothing faults. Each runs the same engine twice in the same
//! process, with the sanitizer recording (and a call site set, as the front
//! ends set one per call) and without; the baseline is the run without.
//! Target: at most 10% slower.

use std::sync::Arc;

use soft_iommu::{AddressWidth, Iommu, IommuConfig};
use softvfio::container::{Container, ContainerConfig, TYPE1V2_IOMMU};
use softvfio::device::VfioDeviceModel;
use softvfio::iommu::vtd::VtdUnit;
use softvfio::iommu::{IommuUnit, Prot};
use softvfio::memory::sim::{SimMemory, SIZE_4K};
use softvfio::platform::{Device, Group, GroupKind};
use softvfio::sanitizer::{with_call_site, CallSite, Frame, Sanitizer, SanitizerConfig};
use softvfio_devices::{EduDevice, EduOptions, IommuDmaTarget};

use super::engine::Engine;
use super::stats::{interleave, median, ns_per_op, paired_ratios, spread};
use super::{Better, Ctx, Outcome, PlotData, Row};

const LIVE: u64 = 4096;
const SIM_LIVE: u64 = 0x1000_0000_0000;
const SIM_CHURN: u64 = 0x1100_0000_0000;
const IOVA_CHURN: u64 = 1 << 36;

/// A call site like the ones the front ends capture (three frames).
fn site() -> Arc<CallSite> {
    let object: Arc<str> = Arc::from("/usr/bin/driver");
    Arc::new(CallSite {
        frames: (0..3u64)
            .map(|i| Frame {
                addr: 0x5555_0000_1000 + i * 0x40,
                object: Some(object.clone()),
                offset: 0x1000 + i * 0x40,
            })
            .collect(),
    })
}

fn churn_engine(sanitizer: Option<Arc<Sanitizer>>) -> Result<Arc<Container>, String> {
    let mem = Arc::new(SimMemory::new());
    for base in [SIM_LIVE, SIM_CHURN] {
        mem.add_region(base, LIVE * SIZE_4K, SIZE_4K, Prot::RW)
            .map_err(|e| format!("sim region: {e}"))?;
    }
    let e = Engine::new(mem, AddressWidth::Bits39, (LIVE + 1024) as u32)?;
    let c = e.container.clone();
    if let Some(s) = sanitizer {
        c.set_sanitizer(s);
    }
    for i in 0..LIVE {
        c.map(i * 2 * SIZE_4K, SIM_LIVE + i * SIZE_4K, SIZE_4K, Prot::RW)
            .map_err(|err| format!("live mapping {i}: {err}"))?;
    }
    Ok(c)
}

/// 4K map+unmap pairs with 4096 live mappings: at distinct IOVAs (every pair
/// a new region for the sanitizer's history, which therefore also forgets
/// one: the worst case), and cycling over 256 IOVAs (a driver's ring of
/// buffers: regions are reused).
pub fn churn(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    Ok(Outcome::Rows(vec![
        churn_with(ctx, LIVE * 16, "", "each pair a new IOVA region")?,
        churn_with(ctx, 256, ":ring", "pairs cycling over 256 IOVAs")?,
    ]))
}

fn churn_with(ctx: &Ctx, ring: u64, suffix: &str, what: &str) -> Result<Row, String> {
    let site = site();
    let failed = std::cell::Cell::new(0u64);
    let pair = |c: &Container, i: &mut u64, with_site: bool| {
        let n = *i;
        *i = (*i + 1) % ring;
        let iova = IOVA_CHURN + n * SIZE_4K;
        let vaddr = SIM_CHURN + (n % LIVE) * SIZE_4K;
        let op = || {
            c.map(iova, vaddr, SIZE_4K, Prot::RW)
                .and_then(|()| c.unmap(iova, SIZE_4K))
        };
        let r = if with_site {
            with_call_site(Some(site.clone()), op)
        } else {
            op()
        };
        if r.is_err() {
            failed.set(failed.get() + 1);
        }
    };
    // A fresh engine for every repetition, so that neither side keeps the
    // warmer allocations; the sanitized side starts with a full history.
    let regions = std::cell::Cell::new(0usize);
    let (base, subj) = interleave(
        ctx.reps.max(3) * 2,
        || {
            let c = churn_engine(None)?;
            let mut i = 0;
            Ok(1e9 / ns_per_op(ctx.budget, || pair(&c, &mut i, false)))
        },
        || {
            let s = Sanitizer::new(SanitizerConfig::default());
            let c = churn_engine(Some(s.clone()))?;
            let mut i = 0;
            // Fill the history first: the measured pairs also forget regions.
            for _ in 0..SanitizerConfig::default().max_regions {
                pair(&c, &mut i, true);
            }
            let r = 1e9 / ns_per_op(ctx.budget, || pair(&c, &mut i, true));
            regions.set(s.region_count());
            Ok(r)
        },
    )?;
    if failed.get() > 0 {
        return Err(format!("churn: {} map/unmap pairs failed", failed.get()));
    }
    Ok(Row {
        bench: format!("sanitize-churn{suffix}"),
        value: median(&subj),
        unit: "pairs/s",
        baseline: "the same engine without the sanitizer".into(),
        baseline_value: median(&base),
        better: Better::Higher,
        note: format!(
            "4K map+unmap pairs, {LIVE} live, {what} ({} regions kept); sanitized {}; each repetition's ratio {}; target ratio >= 0.90",
            regions.get(),
            spread(&subj, 1e6, "M pairs/s"),
            paired_ratios(&base, &subj)
        ),
    })
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
    with_call_site(Some(site()), || c.map(IOVA, RAM, RAM_SIZE, Prot::RW))
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
    let bytes = 2.0 * SIZE_4K as f64;
    let (base, subj) = interleave(
        ctx.reps.max(3) * 2,
        || {
            Ok(bytes * 1e9
                / ns_per_op(ctx.budget, || {
                    a += 1;
                    ok.set(ok.get() & transfer(&plain, a));
                }))
        },
        || {
            Ok(bytes * 1e9
                / ns_per_op(ctx.budget, || {
                    b += 1;
                    ok.set(ok.get() & transfer(&sanitized, b));
                }))
        },
    )?;
    let faults = plain.stats().dma_faults + sanitized.stats().dma_faults;
    if !ok.get() || faults > 0 {
        return Err(format!("DMA failed ({faults} faults)"));
    }
    Ok(Outcome::Rows(vec![Row {
        bench: "sanitize-dma".into(),
        value: median(&subj),
        unit: "B/s",
        baseline: "the same device and engine without the sanitizer".into(),
        baseline_value: median(&base),
        better: Better::Higher,
        note: format!(
            "edu 4 KiB to RAM and back through VT-d; sanitized {}; each repetition's ratio {}; target ratio >= 0.90",
            spread(&subj, 1e9, "GB/s"),
            paired_ratios(&base, &subj)
        ),
    }]))
}
