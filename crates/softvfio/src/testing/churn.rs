//! The sanitizer's churn workload, as `softvfio bench sanitize-churn`
//! measures it and the `sanitize_churn_count` example counts it: a type1v2
//! container (or an iommufd IOAS with the device attached: [`Backend`])
//! over simulated memory, one device behind a 39-bit VT-d, 4096
//! live 4K mappings, and 4K map+unmap pairs either at a new IOVA each pair
//! (every pair a new region of the sanitizer's history, which therefore
//! also forgets one: its worst case) or cycling over a ring of IOVAs (a
//! driver's ring of buffers). One definition, so that the bench and the
//! instruction counts measure the same engine and the same warm-up.
//!
//! Invariant: a sanitized workload records each pair under the same call
//! site, set per call as the front ends set theirs.

use std::sync::Arc;

use soft_iommu::{AddressWidth, Iommu, IommuConfig};

use crate::container::{Container, ContainerConfig, TYPE1V2_IOMMU};
use crate::error::Result;
use crate::iommu::Prot;
use crate::iommufd::Iommufd;
use crate::memory::sim::{SimMemory, SIZE_4K};
use crate::sanitizer::{with_call_site, CallSite, Frame, Sanitizer, SanitizerConfig};

/// Mappings that stay live while the pairs run.
pub const LIVE: u64 = 4096;
/// A ring this long never reuses an IOVA before its region was forgotten:
/// every pair is a new region.
pub const NEW_REGION_EACH_PAIR: u64 = LIVE * 16;
/// The ring of IOVAs of the ring workload (a driver's ring of buffers).
pub const RING: u64 = 256;

const SIM_LIVE: u64 = 0x1000_0000_0000;
const SIM_CHURN: u64 = 0x1100_0000_0000;
const IOVA_CHURN: u64 = 1 << 36;

/// A call site like the ones the front ends capture (three frames of a
/// driver binary).
pub fn call_site() -> Arc<CallSite> {
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

/// The uAPI whose engine runs the pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A type1v2 container (`VFIO_IOMMU_MAP_DMA`/`UNMAP_DMA`).
    Type1,
    /// An iommufd IOAS with the device attached through an automatic
    /// domain (`IOMMU_IOAS_MAP`/`IOMMU_IOAS_UNMAP`).
    Iommufd,
}

/// The engine of a [`Churn`].
enum Engine {
    Type1(Arc<Container>),
    Iommufd { ctx: Arc<Iommufd>, ioas: u32 },
}

impl Engine {
    fn map(&self, iova: u64, vaddr: u64) -> Result<()> {
        match self {
            Engine::Type1(c) => c.map(iova, vaddr, SIZE_4K, Prot::RW),
            Engine::Iommufd { ctx, ioas } => ctx
                .map(*ioas, vaddr, SIZE_4K, Some(iova), Prot::RW)
                .map(drop),
        }
    }

    fn unmap(&self, iova: u64) -> Result<()> {
        match self {
            Engine::Type1(c) => c.unmap(iova, SIZE_4K).map(drop),
            Engine::Iommufd { ctx, ioas } => ctx.unmap(*ioas, iova, SIZE_4K).map(drop),
        }
    }

    /// A map of `vaddr` at `iova` and its unmap: one copy of the code for
    /// both sides of a measurement (see [`Churn::pair`]).
    #[inline(never)]
    fn map_unmap(&self, iova: u64, vaddr: u64) -> Result<()> {
        self.map(iova, vaddr).and_then(|()| self.unmap(iova))
    }
}

/// One engine running the workload.
pub struct Churn {
    engine: Engine,
    sanitizer: Option<Arc<Sanitizer>>,
    site: Arc<CallSite>,
    ring: u64,
    next: u64,
}

impl Churn {
    /// A fresh engine with its live mappings, its pairs cycling over `ring`
    /// IOVAs ([`NEW_REGION_EACH_PAIR`] for a new region each pair),
    /// recording into `sanitizer` if given.
    pub fn new(ring: u64, sanitizer: Option<Arc<Sanitizer>>) -> Result<Churn> {
        Self::with_backend(Backend::Type1, ring, sanitizer)
    }

    /// [`Churn::new`] through `backend`'s uAPI.
    pub fn with_backend(
        backend: Backend,
        ring: u64,
        sanitizer: Option<Arc<Sanitizer>>,
    ) -> Result<Churn> {
        let mem = Arc::new(SimMemory::new());
        for base in [SIM_LIVE, SIM_CHURN] {
            mem.add_region(base, LIVE * SIZE_4K, SIZE_4K, Prot::RW)
                .map_err(|_| crate::error::VfioError::Invalid("churn memory"))?;
        }
        let iommu = Iommu::new(IommuConfig {
            address_width: AddressWidth::Bits39,
            ..IommuConfig::default()
        });
        let group = super::vtd_group(3, 0x18, &iommu);
        let engine = match backend {
            Backend::Type1 => {
                let container = Container::new(
                    ContainerConfig {
                        dma_entry_limit: (LIVE + 1024) as u32,
                        ..ContainerConfig::default()
                    },
                    mem,
                );
                container.attach_group(&group)?;
                container.set_iommu(TYPE1V2_IOMMU)?;
                if let Some(s) = &sanitizer {
                    container.set_sanitizer(s.clone());
                }
                Engine::Type1(container)
            }
            Backend::Iommufd => {
                let ctx = Iommufd::new(mem);
                let ioas = ctx.ioas_alloc();
                let Some(device) = group.devices.first() else {
                    return Err(crate::error::VfioError::Invalid(
                        "churn group without a device",
                    ));
                };
                let dev = ctx.bind(&group, device);
                ctx.attach(dev, ioas)?;
                if let Some(s) = &sanitizer {
                    ctx.set_sanitizer(s.clone());
                }
                Engine::Iommufd { ctx, ioas }
            }
        };
        for i in 0..LIVE {
            engine.map(i * 2 * SIZE_4K, SIM_LIVE + i * SIZE_4K)?;
        }
        Ok(Churn {
            engine,
            sanitizer,
            site: call_site(),
            ring: ring.max(1),
            next: 0,
        })
    }

    /// One map+unmap pair of the next IOVA of the ring (under the call site
    /// when sanitized). The pair itself is one function out of line
    /// (`Engine::map_unmap`): the plain and the sanitized side of a
    /// measurement run the same machine code (inlined into each side, the
    /// two copies were laid out apart, and a build's layout alone moved the
    /// ratio by several points).
    #[inline]
    pub fn pair(&mut self) -> Result<()> {
        let n = self.next;
        self.next = (n + 1) % self.ring;
        let iova = IOVA_CHURN + n * SIZE_4K;
        let vaddr = SIM_CHURN + (n % LIVE) * SIZE_4K;
        let e = &self.engine;
        if self.sanitizer.is_some() {
            with_call_site(Some(&self.site), || e.map_unmap(iova, vaddr))
        } else {
            e.map_unmap(iova, vaddr)
        }
    }

    /// As many pairs as a sanitizer remembers regions, so that a sanitized
    /// engine starts with a full history (the measured pairs then forget
    /// regions as they add them); a plain engine runs the same pairs, so
    /// that both have touched the same IOVAs and page tables.
    pub fn warm_up(&mut self) -> Result<()> {
        for _ in 0..SanitizerConfig::default().max_regions {
            self.pair()?;
        }
        Ok(())
    }

    /// The regions the sanitizer keeps (0 without one).
    pub fn regions(&self) -> usize {
        self.sanitizer.as_ref().map_or(0, |s| s.region_count())
    }

    /// The type1 container (`None` for an iommufd engine).
    pub fn container(&self) -> Option<&Arc<Container>> {
        match &self.engine {
            Engine::Type1(c) => Some(c),
            Engine::Iommufd { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both kinds of workload run their pairs; a sanitized one keeps at most
    /// the configured regions and a plain one none; the live mappings stay.
    #[test]
    fn pairs_run_and_the_history_is_bounded() {
        let max = SanitizerConfig::default().max_regions;
        // New regions: the live ones and the newest `max` unmapped ones (the
        // 4096 warm-up pairs and 1000 more made 5096, the oldest
        // forgotten). The ring: the live ones and the ring's.
        for (backend, ring, regions) in [
            (Backend::Type1, NEW_REGION_EACH_PAIR, LIVE as usize + max),
            (Backend::Type1, RING, LIVE as usize + RING as usize),
            (Backend::Iommufd, NEW_REGION_EACH_PAIR, LIVE as usize + max),
            (Backend::Iommufd, RING, LIVE as usize + RING as usize),
        ] {
            let mut plain = Churn::with_backend(backend, ring, None).unwrap();
            let mut sanitized = Churn::with_backend(
                backend,
                ring,
                Some(Sanitizer::new(SanitizerConfig::default())),
            )
            .unwrap();
            plain.warm_up().unwrap();
            sanitized.warm_up().unwrap();
            for _ in 0..1000 {
                plain.pair().unwrap();
                sanitized.pair().unwrap();
            }
            assert_eq!(plain.regions(), 0);
            assert_eq!(sanitized.regions(), regions, "{backend:?} ring {ring}");
        }
    }
}
