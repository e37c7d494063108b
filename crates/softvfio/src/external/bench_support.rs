//! Measurements of the external pinning path, for `softvfio bench
//! pin-external` and the criterion bench `benches/pin_external.rs`.
//!
//! Every measurement builds its own container over simulated memory (no
//! real memory behind it, exact pin counts) with one emulated group, the
//! way a mediated device sees the engine: no IOMMU domain, so external pins
//! are accounted.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::container::{Container, ContainerConfig, TYPE1V2_IOMMU};
use crate::error::{Result, VfioError};
use crate::external::{ExternalDevice, PIN_PAGES_MAX_ENTRIES};
use crate::iommu::Prot;
use crate::memory::sim::SimMemory;
use crate::memory::{UserMemory, PAGE_SIZE};
use crate::platform::{Group, GroupKind};

/// Where the simulated memory starts.
const VADDR_BASE: u64 = 0x7f00_0000_0000;
/// Where the mappings start in IOVA space.
const IOVA_BASE: u64 = 0x1_0000_0000;
const GROUP_ID: u32 = 42;

/// How pages are chosen for pinning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinPattern {
    /// Every page of the mappings.
    Dense,
    /// One page in every `stride` (a vGPU pinning what its GTT points at).
    Sparse {
        /// Pages from one pinned page to the next.
        stride: u64,
    },
}

/// What the fixture's `dma_unmap` callback needs, filled in after the
/// device is registered.
type DeviceSlot = (std::sync::Weak<Container>, Arc<ExternalDevice>);

/// A container over simulated memory with one emulated group, one
/// registered device whose `dma_unmap` callback drops every pin it made,
/// and `mappings` mappings of `mapping_bytes` each.
pub struct PinFixture {
    /// The container.
    pub container: Arc<Container>,
    /// Its simulated memory.
    pub memory: Arc<SimMemory>,
    /// The mediated device that pins.
    pub device: Arc<ExternalDevice>,
    /// The IOVAs the device pinned (what its dma_unmap drops).
    pub pinned: Arc<Mutex<BTreeSet<u64>>>,
    /// Bytes per mapping.
    pub mapping_bytes: u64,
    /// Number of mappings.
    pub mappings: u64,
}

impl PinFixture {
    /// Builds the fixture; `mappings * mapping_bytes` bytes of simulated
    /// memory are mapped (not pinned).
    pub fn new(mappings: u64, mapping_bytes: u64) -> Result<Self> {
        let memory = Arc::new(SimMemory::new());
        let total = mappings
            .checked_mul(mapping_bytes)
            .ok_or(VfioError::Invalid("size overflow"))?;
        memory
            .add_region(VADDR_BASE, total, PAGE_SIZE, Prot::RW)
            .map_err(|_| VfioError::Invalid("cannot create simulated memory"))?;
        let dyn_mem: Arc<dyn UserMemory> = memory.clone();
        let container = Container::new(ContainerConfig::default(), dyn_mem);
        let group = Arc::new(Group {
            id: GROUP_ID,
            kind: GroupKind::Emulated,
            devices: Vec::new(),
            extra_reserved: Vec::new(),
        });
        container.attach_group(&group)?;
        container.set_iommu(TYPE1V2_IOMMU)?;
        for i in 0..mappings {
            container.map(
                IOVA_BASE + i * mapping_bytes,
                VADDR_BASE + i * mapping_bytes,
                mapping_bytes,
                Prot::RW,
            )?;
        }
        let pinned: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
        // The callback needs the container and the device; a slot filled
        // after registration breaks the cycle.
        let slot: Arc<Mutex<Option<DeviceSlot>>> = Arc::default();
        let (cb_slot, cb_pinned) = (slot.clone(), pinned.clone());
        let device = container.register_external_device(
            GROUP_ID,
            "bench-mdev",
            Some(Arc::new(move |iova: u64, size: u64| {
                let Some((c, dev)) = cb_slot.lock().ok().and_then(|s| s.clone()) else {
                    return;
                };
                let Some(c) = c.upgrade() else { return };
                let Ok(mut set) = cb_pinned.lock() else {
                    return;
                };
                // Cut the range out of the set in two splits.
                let mut gone = set.split_off(&iova);
                let mut rest = gone.split_off(&iova.saturating_add(size));
                set.append(&mut rest);
                let drop: Vec<u64> = gone.into_iter().collect();
                drop_lock_then_unpin(set, &c, &dev, &drop);
            })),
        )?;
        if let Ok(mut s) = slot.lock() {
            *s = Some((Arc::downgrade(&container), device.clone()));
        }
        Ok(Self {
            container,
            memory,
            device,
            pinned,
            mapping_bytes,
            mappings,
        })
    }

    /// The IOVAs of the pages `pattern` selects, in order.
    pub fn pattern_iovas(&self, pattern: PinPattern) -> Vec<u64> {
        let pages = self.mappings * self.mapping_bytes / PAGE_SIZE;
        let stride = match pattern {
            PinPattern::Dense => 1,
            PinPattern::Sparse { stride } => stride.max(1),
        };
        (0..pages)
            .step_by(stride as usize)
            .map(|p| IOVA_BASE + p * PAGE_SIZE)
            .collect()
    }

    /// Pins `iovas` (consecutive runs batched up to 512 pages per call);
    /// returns the number of pin calls.
    pub fn pin_all(&self, iovas: &[u64]) -> Result<u64> {
        let mut calls = 0u64;
        for (start, n) in batches(iovas) {
            self.container.pin_pages(&self.device, start, n, Prot::RW)?;
            calls += 1;
        }
        if let Ok(mut set) = self.pinned.lock() {
            set.extend(iovas.iter().copied());
        }
        Ok(calls)
    }

    /// Unpins `iovas` with kernel-sized `unpin_pages` calls; returns the
    /// number of calls.
    pub fn unpin_all(&self, iovas: &[u64]) -> Result<u64> {
        let mut calls = 0u64;
        for (start, n) in batches(iovas) {
            self.container.unpin_pages(&self.device, start, n)?;
            calls += 1;
        }
        if let Ok(mut set) = self.pinned.lock() {
            for i in iovas {
                set.remove(i);
            }
        }
        Ok(calls)
    }

    /// Heap bytes of the pin tracking of every mapping.
    pub fn tracking_bytes(&self) -> usize {
        self.container.external_tracking_bytes()
    }
}

fn drop_lock_then_unpin(
    set: std::sync::MutexGuard<'_, BTreeSet<u64>>,
    c: &Container,
    dev: &ExternalDevice,
    iovas: &[u64],
) {
    drop(set);
    if let Err(e) = c.unpin_batch(dev, iovas) {
        tracing::warn!("bench device could not unpin: {e}");
    }
}

/// Consecutive IOVAs grouped into `(first, pages)` runs of at most 512.
fn batches(iovas: &[u64]) -> Vec<(u64, usize)> {
    let mut out: Vec<(u64, usize)> = Vec::new();
    for &iova in iovas {
        match out.last_mut() {
            Some((start, n))
                if *n < PIN_PAGES_MAX_ENTRIES && *start + (*n as u64) * PAGE_SIZE == iova =>
            {
                *n += 1
            }
            _ => out.push((iova, 1)),
        }
    }
    out
}

/// Tracking memory for one pin pattern.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TrackingFootprint {
    /// Bytes mapped.
    pub mapped_bytes: u64,
    /// Pages pinned.
    pub pinned_pages: u64,
    /// Bytes the pin tracking uses.
    pub tracking_bytes: u64,
    /// Tracking bytes per pinned page.
    pub bytes_per_pinned_page: f64,
    /// What the kernel's `struct vfio_pfn` tree would take (40 bytes each).
    pub kernel_rbtree_bytes: u64,
}

/// Bytes of tracking per pinned page when `pattern` is pinned over
/// `mappings` mappings of `mapping_bytes` (1 GiB in total, say).
pub fn tracking_footprint(
    mappings: u64,
    mapping_bytes: u64,
    pattern: PinPattern,
) -> Result<TrackingFootprint> {
    let fx = PinFixture::new(mappings, mapping_bytes)?;
    let iovas = fx.pattern_iovas(pattern);
    fx.pin_all(&iovas)?;
    let bytes = fx.tracking_bytes() as u64;
    let pages = iovas.len() as u64;
    Ok(TrackingFootprint {
        mapped_bytes: mappings * mapping_bytes,
        pinned_pages: pages,
        tracking_bytes: bytes,
        bytes_per_pinned_page: if pages == 0 {
            0.0
        } else {
            bytes as f64 / pages as f64
        },
        kernel_rbtree_bytes: pages * 40,
    })
}

/// Pin and unpin throughput.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PinRate {
    /// Pages pinned (and unpinned).
    pub pages: u64,
    /// Pages per pin or unpin call.
    pub pages_per_call: u64,
    /// Seconds for all pins.
    pub pin_seconds: f64,
    /// Seconds for all unpins.
    pub unpin_seconds: f64,
    /// Pins a second.
    pub pins_per_second: f64,
    /// Unpins a second.
    pub unpins_per_second: f64,
    /// Accounting updates for all the pins, and for all the unpins.
    pub pin_accounting_updates: u64,
    /// Accounting updates the unpins made.
    pub unpin_accounting_updates: u64,
}

/// Pins then unpins `pages` consecutive pages, `pages_per_call` at a time
/// (1..=512).
pub fn pin_unpin_rate(pages: u64, pages_per_call: u64) -> Result<PinRate> {
    let per_call = pages_per_call.clamp(1, PIN_PAGES_MAX_ENTRIES as u64);
    let bytes = pages.div_ceil(512).max(1) * 512 * PAGE_SIZE;
    let fx = PinFixture::new(1, bytes)?;
    let acct = fx.memory.account().clone();
    let dev = fx.device.clone();
    let u0 = acct.updates();
    let t0 = Instant::now();
    let mut done = 0u64;
    while done < pages {
        let n = per_call.min(pages - done);
        fx.container
            .pin_pages(&dev, IOVA_BASE + done * PAGE_SIZE, n as usize, Prot::RW)?;
        done += n;
    }
    let pin_time = t0.elapsed();
    let u1 = acct.updates();
    let t1 = Instant::now();
    done = 0;
    while done < pages {
        let n = per_call.min(pages - done);
        fx.container
            .unpin_pages(&dev, IOVA_BASE + done * PAGE_SIZE, n as usize)?;
        done += n;
    }
    let unpin_time = t1.elapsed();
    let u2 = acct.updates();
    let rate = |d: Duration| pages as f64 / d.as_secs_f64().max(1e-12);
    Ok(PinRate {
        pages,
        pages_per_call: per_call,
        pin_seconds: pin_time.as_secs_f64(),
        unpin_seconds: unpin_time.as_secs_f64(),
        pins_per_second: rate(pin_time),
        unpins_per_second: rate(unpin_time),
        pin_accounting_updates: u1 - u0,
        unpin_accounting_updates: u2 - u1,
    })
}

/// One unmap of a mapping with many external pins.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct UnmapPinned {
    /// Pages pinned when the unmap came.
    pub pinned_pages: u64,
    /// Seconds the unmap took (notification and unpins included).
    pub unmap_seconds: f64,
    /// Accounting updates the unmap made (the device's unpin included).
    pub accounting_updates: u64,
    /// Pages still accounted afterwards (0 expected).
    pub locked_pages_after: u64,
}

/// Maps `pins` pages, pins every one of them, then unmaps the mapping:
/// the device is notified and drops its pins with one batch.
pub fn unmap_with_external_pins(pins: u64) -> Result<UnmapPinned> {
    let fx = PinFixture::new(1, pins.max(1) * PAGE_SIZE)?;
    let iovas = fx.pattern_iovas(PinPattern::Dense);
    fx.pin_all(&iovas)?;
    let acct = fx.memory.account().clone();
    let u0 = acct.updates();
    let t0 = Instant::now();
    fx.container.unmap(IOVA_BASE, pins.max(1) * PAGE_SIZE)?;
    let elapsed = t0.elapsed();
    Ok(UnmapPinned {
        pinned_pages: iovas.len() as u64,
        unmap_seconds: elapsed.as_secs_f64(),
        accounting_updates: acct.updates() - u0,
        locked_pages_after: acct.locked_pages(),
    })
}

/// Everything `softvfio bench pin-external` reports.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PinExternalReport {
    /// Footprint with every page pinned.
    pub dense: TrackingFootprint,
    /// Footprint with sparse pins.
    pub sparse: TrackingFootprint,
    /// Pin and unpin throughput.
    pub rate: PinRate,
    /// Unmap of a mapping with external pins.
    pub unmap: UnmapPinned,
}

/// The whole pin-external benchmark: tracking bytes over 1 GiB of
/// mappings (8 x 128 MiB) dense and sparse (one page in 64), the pin/unpin
/// rate over 256k pages in 512-page calls, and the unmap of one mapping
/// with 256k external pins.
pub fn pin_external_report() -> Result<PinExternalReport> {
    const MIB: u64 = 1 << 20;
    Ok(PinExternalReport {
        dense: tracking_footprint(8, 128 * MIB, PinPattern::Dense)?,
        sparse: tracking_footprint(8, 128 * MIB, PinPattern::Sparse { stride: 64 })?,
        rate: pin_unpin_rate(1 << 18, 512)?,
        unmap: unmap_with_external_pins(1 << 18)?,
    })
}
