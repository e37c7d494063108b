//! The measurements of `benches/iommu.rs` as plain code, so that
//! `softvfio bench` can run them without criterion. Each fixture sets up a
//! unit, a domain and mappings; its step methods are one operation.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, Iotlb, Permissions};

use crate::{
    Access, AddressWidth, DmaPort, Domain, Error, Iommu, IommuConfig, NullMemory, Prot, SIZE_1G,
    SIZE_2M, SIZE_4K,
};

/// Deterministic shuffle (xorshift), so runs are comparable.
fn shuffle(v: &mut [u64], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

/// IOVA base of the translation fixtures.
const IOVA_BASE: u64 = 0x1_0000_0000;

/// `pages` 4 KiB mappings whose physical pages are scattered, so that
/// neither IOTLB can merge neighbours; translations are requested in a
/// shuffled order.
pub struct TranslateFixture {
    /// The unit.
    pub unit: Arc<Iommu>,
    /// The domain the device is attached to.
    pub domain: Arc<Domain>,
    /// The device's DMA port.
    pub port: DmaPort,
    iovas: Vec<u64>,
    next: usize,
    vm_tlb: Iotlb,
}

impl TranslateFixture {
    /// `pages` scattered mappings behind an IOTLB of `iotlb_capacity` entries.
    pub fn new(pages: usize, iotlb_capacity: usize) -> Result<Self, Error> {
        let unit = Iommu::new(IommuConfig {
            iotlb_capacity,
            ..IommuConfig::default()
        });
        let domain = unit.create_domain(Arc::new(NullMemory))?;
        let mut vm_tlb = Iotlb::new();
        let mut phys_pages: Vec<u64> = (0..pages as u64).collect();
        shuffle(&mut phys_pages, 0x1234_5678);
        let mut iovas = Vec::with_capacity(pages);
        for (i, p) in phys_pages.iter().enumerate() {
            let iova = IOVA_BASE + i as u64 * SIZE_4K;
            let phys = 0x80_0000_0000 + p * SIZE_4K;
            domain.map(iova, phys, SIZE_4K, Prot::RW)?;
            // Infallible in vm-memory 0.18.
            let _ = vm_tlb.set_mapping(
                GuestAddress(iova),
                GuestAddress(phys),
                SIZE_4K as usize,
                Permissions::ReadWrite,
            );
            iovas.push(iova + 0x10);
        }
        shuffle(&mut iovas, 0x9abc_def0);
        unit.attach_device(0x18, &domain)?;
        let port = unit.dma_port(0x18);
        Ok(TranslateFixture {
            unit,
            domain,
            port,
            iovas,
            next: 0,
            vm_tlb,
        })
    }

    /// The IOVAs the fixture cycles through, in request order.
    pub fn iovas(&self) -> &[u64] {
        &self.iovas
    }

    /// Hits: fewer pages than the IOTLB holds.
    pub fn hits() -> Result<Self, Error> {
        let mut f = Self::new(1024, 4096)?;
        for _ in 0..2048 {
            f.translate_next();
        }
        Ok(f)
    }

    /// Misses: 64 times more pages than the IOTLB holds (a miss is a full
    /// 3-level walk, A-bit check and IOTLB fill).
    pub fn misses() -> Result<Self, Error> {
        Self::new(64 * 4096, 4096)
    }

    #[inline]
    fn next_iova(&mut self) -> u64 {
        let iova = self.iovas.get(self.next).copied().unwrap_or(IOVA_BASE);
        self.next += 1;
        if self.next == self.iovas.len() {
            self.next = 0;
        }
        iova
    }

    /// One translation through the port; returns the physical address.
    #[inline]
    pub fn translate_next(&mut self) -> u64 {
        let iova = self.next_iova();
        self.port
            .translate(iova, Access::Read)
            .map(|t| t.phys)
            .unwrap_or(0)
    }

    /// One lookup of the same mapping in vm-memory's `Iotlb` (the baseline).
    #[inline]
    pub fn vm_lookup_next(&mut self) -> u64 {
        let iova = self.next_iova();
        match Iotlb::lookup(&self.vm_tlb, GuestAddress(iova), 8, Permissions::Read) {
            Ok(mut it) => it.next().map(|r| r.base.0).unwrap_or(0),
            Err(_) => 0,
        }
    }
}

/// Map/unmap churn on a domain that already holds `live` 4 KiB mappings.
pub struct MapFixture {
    /// The unit.
    pub unit: Arc<Iommu>,
    /// The domain.
    pub domain: Arc<Domain>,
    slots: u64,
    next: u64,
}

impl MapFixture {
    /// A domain of `width` holding `live` mappings.
    pub fn new(live: u64, width: AddressWidth) -> Result<Self, Error> {
        let unit = Iommu::new(IommuConfig {
            address_width: width,
            ..IommuConfig::default()
        });
        let domain = unit.create_domain(Arc::new(NullMemory))?;
        // Live mappings, 4K pages (phys offset by one page: no super pages).
        if live > 0 {
            domain.map(0, SIZE_4K, live * SIZE_4K, Prot::RW)?;
        }
        Ok(MapFixture {
            unit,
            domain,
            slots: live.max(1),
            next: 0,
        })
    }

    /// Maps and unmaps one 4 KiB page (cycling over as many slots as there
    /// are live mappings, next to them).
    #[inline]
    pub fn map_unmap_4k(&mut self) {
        let iova = 0x40_0000_0000 + self.next * SIZE_4K;
        self.next = (self.next + 1) % self.slots;
        let _ = self.domain.map(iova, 0x1000_0000 + iova, SIZE_4K, Prot::RW);
        black_box(self.domain.unmap(iova, SIZE_4K));
    }

    /// Maps, unmaps and flushes one 4 KiB page (what an unmap that must not
    /// return before DMA stops costs), with one idle port on the unit.
    #[inline]
    pub fn map_unmap_flush_4k(&mut self) {
        let iova = 0x40_0000_0000 + self.next * SIZE_4K;
        self.next = (self.next + 1) % self.slots;
        let _ = self.domain.map(iova, 0x1000_0000 + iova, SIZE_4K, Prot::RW);
        black_box(self.domain.unmap(iova, SIZE_4K));
        self.domain.flush_range(iova, SIZE_4K);
    }

    /// Maps 1 GiB as 512 2 MiB pages (phys 2M- but not 1G-aligned), unmaps it.
    #[inline]
    pub fn map_unmap_1g_as_2m(&mut self) {
        let iova = 0x40_0000_0000;
        let _ = self.domain.map(iova, SIZE_1G + SIZE_2M, SIZE_1G, Prot::RW);
        black_box(self.domain.unmap(iova, SIZE_1G));
    }

    /// Maps 1 TiB as 1 GiB pages and unmaps it (needs a 48-bit fixture).
    #[inline]
    pub fn map_unmap_1t_as_1g(&mut self) {
        let iova = 1u64 << 42;
        let _ = self.domain.map(iova, 1 << 43, 1 << 40, Prot::RW);
        black_box(self.domain.unmap(iova, 1 << 40));
    }
}

/// One measured operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// What was measured.
    pub name: &'static str,
    /// Nanoseconds per operation.
    pub ns_per_op: f64,
    /// Operations measured.
    pub ops: u64,
}

/// Runs `op` in batches until `budget` is spent; nanoseconds per call.
pub fn measure(name: &'static str, budget: Duration, mut op: impl FnMut()) -> Measurement {
    for _ in 0..64 {
        op();
    }
    let mut batch = 16u64;
    let mut ops = 0u64;
    let start = Instant::now();
    loop {
        for _ in 0..batch {
            op();
        }
        ops += batch;
        let elapsed = start.elapsed();
        if elapsed >= budget {
            return Measurement {
                name,
                ns_per_op: elapsed.as_nanos() as f64 / ops as f64,
                ops,
            };
        }
        if elapsed < budget / 16 {
            batch = batch.saturating_mul(2);
        }
    }
}

/// Every measurement of the bench, each for about `budget`.
pub fn run_all(budget: Duration) -> Result<Vec<Measurement>, Error> {
    let mut out = Vec::new();
    let mut hit = TranslateFixture::hits()?;
    out.push(measure("translate IOTLB hit (4K)", budget, || {
        black_box(hit.translate_next());
    }));
    out.push(measure(
        "vm-memory Iotlb lookup (same pages)",
        budget,
        || {
            black_box(hit.vm_lookup_next());
        },
    ));
    drop(hit);
    let mut miss = TranslateFixture::misses()?;
    out.push(measure(
        "translate IOTLB miss (3-level walk)",
        budget,
        || {
            black_box(miss.translate_next());
        },
    ));
    out.push(measure(
        "vm-memory Iotlb lookup (256k pages)",
        budget,
        || {
            black_box(miss.vm_lookup_next());
        },
    ));
    drop(miss);
    let mut churn = MapFixture::new(65536, AddressWidth::Bits39)?;
    out.push(measure("map+unmap 4K (64k live)", budget, || {
        churn.map_unmap_4k()
    }));
    let port = churn.unit.dma_port(0x18);
    out.push(measure("map+unmap+flush 4K (64k live)", budget, || {
        churn.map_unmap_flush_4k()
    }));
    drop(port);
    out.push(measure("map+unmap 1G as 512 x 2M", budget, || {
        churn.map_unmap_1g_as_2m()
    }));
    drop(churn);
    let mut wide = MapFixture::new(0, AddressWidth::Bits48)?;
    out.push(measure("map+unmap 1T as 1024 x 1G", budget, || {
        wide.map_unmap_1t_as_1g()
    }));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_translate_and_churn() {
        let mut f = TranslateFixture::new(64, 4096).unwrap();
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..128 {
            ours.push(f.translate_next());
        }
        for _ in 0..128 {
            theirs.push(f.vm_lookup_next());
        }
        assert_eq!(ours, theirs);
        assert!(ours.iter().all(|&p| p >= 0x80_0000_0000));
        assert_eq!(f.port.stats().iotlb_misses, 64);
        let mut m = MapFixture::new(16, AddressWidth::Bits39).unwrap();
        m.map_unmap_4k();
        m.map_unmap_1g_as_2m();
        assert_eq!(m.domain.leaf_counts(), (16, 0, 0));
        let mut w = MapFixture::new(0, AddressWidth::Bits48).unwrap();
        w.map_unmap_1t_as_1g();
        assert_eq!(w.domain.leaf_counts(), (0, 0, 0));
        let r = measure("noop", Duration::from_millis(5), || {});
        assert!(r.ops > 0);
    }
}
