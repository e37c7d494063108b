//! Measurements of the external pinning path, for `softvfio bench
//! pin-external` and the criterion bench `benches/pin_external.rs`.
//!
//! Every measurement builds its own container over simulated memory (no
//! real memory behind it, exact pin counts) with one emulated group, the
//! way a mediated device sees the engine: no IOMMU domain, so external pins
//! are accounted.
//!
//! [`ChunkedPinTracker`] is the tracker the engine used before issue 17
//! (presence bitmaps of 64 pages in a B-tree, its own memory estimate): kept
//! here only as the baseline of `softvfio bench pin-external`.

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
    /// One page in `every` on average, placed at random (distinct pages,
    /// a fixed seed) and pinned in random order.
    Random {
        /// Pages per pinned page, on average.
        every: u64,
    },
}

/// A small deterministic generator (xorshift64*): the bench's random
/// placements are the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The page offsets `pattern` selects among `pages`, in pin order.
pub fn pattern_pages(pages: u64, pattern: PinPattern) -> Vec<u64> {
    match pattern {
        PinPattern::Dense => (0..pages).collect(),
        PinPattern::Sparse { stride } => (0..pages).step_by(stride.max(1) as usize).collect(),
        PinPattern::Random { every } => {
            // The first pages/every of a Fisher-Yates shuffle: distinct
            // pages, uniformly placed, in random order.
            let n = (pages / every.max(1)) as usize;
            let mut all: Vec<u64> = (0..pages).collect();
            let mut rng = XorShift(0x5eed_0004_0017_0001);
            for i in 0..n.min(all.len()) {
                let j = i + rng.below((all.len() - i) as u64) as usize;
                all.swap(i, j);
            }
            all.truncate(n);
            all
        }
    }
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

    /// The IOVAs of the pages `pattern` selects, in pin order (ascending
    /// but for [`PinPattern::Random`]).
    pub fn pattern_iovas(&self, pattern: PinPattern) -> Vec<u64> {
        let pages = self.mappings * self.mapping_bytes / PAGE_SIZE;
        pattern_pages(pages, pattern)
            .into_iter()
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
    /// What the tracker before issue 17 ([`ChunkedPinTracker`]) reports
    /// for the same pins (its own estimate).
    pub previous_tracker_bytes: u64,
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
    let mut previous: Vec<ChunkedPinTracker> = (0..mappings)
        .map(|_| ChunkedPinTracker::default())
        .collect();
    for &iova in &iovas {
        let off = iova - IOVA_BASE;
        if let Some(t) = previous.get_mut((off / mapping_bytes.max(1)) as usize) {
            t.pin((off % mapping_bytes.max(1)) / PAGE_SIZE);
        }
    }
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
        previous_tracker_bytes: previous.iter().map(|t| t.heap_bytes() as u64).sum(),
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

/// Pins `pattern`'s pages of 8 x 128 MiB mappings through the engine in
/// pin order, one page per call (a device pinning what its page table
/// points at, entry by entry), unpins them the same way, then pins them
/// again and unmaps every mapping (each device notified, dropping its pins
/// in one batch). Returns the rate and the unmap time.
pub fn pattern_rates(pattern: PinPattern) -> Result<(PinRate, f64)> {
    const MIB: u64 = 1 << 20;
    let fx = PinFixture::new(8, 128 * MIB)?;
    let iovas = fx.pattern_iovas(pattern);
    let acct = fx.memory.account().clone();
    let dev = fx.device.clone();
    let u0 = acct.updates();
    let t0 = Instant::now();
    for &iova in &iovas {
        fx.container.pin_pages(&dev, iova, 1, Prot::RW)?;
    }
    let pin_time = t0.elapsed();
    let u1 = acct.updates();
    let t1 = Instant::now();
    for &iova in &iovas {
        fx.container.unpin_pages(&dev, iova, 1)?;
    }
    let unpin_time = t1.elapsed();
    let u2 = acct.updates();
    fx.pin_all(&iovas)?;
    let t2 = Instant::now();
    fx.container
        .unmap(IOVA_BASE, fx.mappings * fx.mapping_bytes)?;
    let unmap_time = t2.elapsed();
    if acct.locked_pages() != 0 {
        return Err(VfioError::Invalid("pages left accounted after unmap"));
    }
    let pages = iovas.len() as u64;
    let rate = |d: Duration| pages as f64 / d.as_secs_f64().max(1e-12);
    Ok((
        PinRate {
            pages,
            pages_per_call: 1,
            pin_seconds: pin_time.as_secs_f64(),
            unpin_seconds: unpin_time.as_secs_f64(),
            pins_per_second: rate(pin_time),
            unpins_per_second: rate(unpin_time),
            pin_accounting_updates: u1 - u0,
            unpin_accounting_updates: u2 - u1,
        },
        unmap_time.as_secs_f64(),
    ))
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

/// Nanoseconds per page to pin, then unpin, `pattern`'s pages over
/// `mappings` trackers of `mapping_pages` each, with the current tracker
/// (`previous == false`) or [`ChunkedPinTracker`]: the trackers alone,
/// without the engine around them. Returns (pin ns, unpin ns, pages).
pub fn tracker_pin_unpin_ns(
    mappings: u64,
    mapping_pages: u64,
    pattern: PinPattern,
    previous: bool,
) -> (f64, f64, u64) {
    let pages = pattern_pages(mappings * mapping_pages, pattern);
    let per = mapping_pages.max(1);
    let (pin, unpin) = if previous {
        let ts = (0..mappings)
            .map(|_| ChunkedPinTracker::default())
            .collect();
        time_pin_unpin(ts, &pages, per, |t, p| t.pin(p), |t, p| t.unpin(p))
    } else {
        let ts = (0..mappings)
            .map(|_| crate::external::PinTracker::new())
            .collect();
        time_pin_unpin(ts, &pages, per, |t, p| t.pin(p), |t, p| t.unpin(p))
    };
    let n = pages.len().max(1) as f64;
    (pin / n, unpin / n, pages.len() as u64)
}

/// Nanoseconds to pin every page of `pages` (page `p` goes to tracker
/// `p / per` at offset `p % per`), then to unpin them all.
fn time_pin_unpin<T, P, U>(
    mut ts: Vec<T>,
    pages: &[u64],
    per: u64,
    mut pin: impl FnMut(&mut T, u64) -> P,
    mut unpin: impl FnMut(&mut T, u64) -> U,
) -> (f64, f64) {
    let t0 = Instant::now();
    for &p in pages {
        if let Some(t) = ts.get_mut((p / per) as usize) {
            std::hint::black_box(pin(t, p % per));
        }
    }
    let pinned = t0.elapsed();
    let t1 = Instant::now();
    for &p in pages {
        if let Some(t) = ts.get_mut((p / per) as usize) {
            std::hint::black_box(unpin(t, p % per));
        }
    }
    let unpinned = t1.elapsed();
    std::hint::black_box(&ts);
    (pinned.as_nanos() as f64, unpinned.as_nanos() as f64)
}

/// The pin tracker of the engine before issue 17, as the baseline of the
/// benchmark: pages in chunks of 64 keyed by page / 64 in a `BTreeMap`, a
/// presence bitmap per chunk and a 64-count array once a page of the chunk
/// is pinned twice. Its memory is its own estimate, as it reported it.
#[derive(Debug, Default)]
pub struct ChunkedPinTracker {
    chunks: std::collections::BTreeMap<u64, Chunk>,
}

#[derive(Debug, Default)]
struct Chunk {
    present: u64,
    counts: Option<Box<[u32; 64]>>,
}

impl ChunkedPinTracker {
    /// Adds a pin; true if the page was not pinned.
    pub fn pin(&mut self, page: u64) -> bool {
        let c = self.chunks.entry(page / 64).or_default();
        let bit = 1u64 << (page % 64);
        let i = (page % 64) as usize;
        if c.present & bit == 0 {
            c.present |= bit;
            if let Some(a) = c.counts.as_mut() {
                a[i] = 1;
            }
            return true;
        }
        let present = c.present;
        let a = c.counts.get_or_insert_with(|| {
            let mut a = Box::new([0u32; 64]);
            for (b, n) in a.iter_mut().enumerate() {
                *n = u32::from(present & (1 << b) != 0);
            }
            a
        });
        a[i] = a[i].saturating_add(1);
        false
    }

    /// Drops a pin; true if it was the page's last.
    pub fn unpin(&mut self, page: u64) -> bool {
        let key = page / 64;
        let Some(c) = self.chunks.get_mut(&key) else {
            return false;
        };
        let bit = 1u64 << (page % 64);
        let i = (page % 64) as usize;
        if c.present & bit == 0 {
            return false;
        }
        if let Some(a) = c.counts.as_mut() {
            if a[i] > 1 {
                a[i] -= 1;
                if a.iter().all(|&n| n <= 1) {
                    c.counts = None;
                }
                return false;
            }
            a[i] = 0;
        }
        c.present &= !bit;
        if c.present == 0 {
            self.chunks.remove(&key);
        }
        true
    }

    /// The estimate the previous tracker reported: a full B-tree node
    /// (16 + 11 entries) spread over 7 entries, plus the count arrays.
    pub fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<u64>() + std::mem::size_of::<Chunk>();
        let tree = (self.chunks.len() * (16 + 11 * entry)).div_ceil(7);
        tree + self.chunks.values().filter(|c| c.counts.is_some()).count() * 256
    }
}
