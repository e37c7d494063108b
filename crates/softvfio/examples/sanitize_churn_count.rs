//! A fixed number of the `softvfio bench sanitize-churn` pairs, for
//! instruction counts (the bench itself runs for a time budget, so its work
//! varies with the machine):
//!
//! ```text
//! cargo build --release -p softvfio --example sanitize_churn_count
//! valgrind --tool=callgrind target/release/examples/sanitize_churn_count PAIRS plain|sanitized new|ring
//! ```
//!
//! The same engine as the bench (type1v2 over simulated memory behind a
//! VT-d, 4096 live 4K mappings, the sanitized one's history filled first
//! with 8192 pairs); the difference of two runs' totals over the difference
//! of their `PAIRS` is the instructions of one pair, the setup cancelled.

use std::sync::Arc;

use soft_iommu::{AddressWidth, Iommu, IommuConfig};
use softvfio::container::TYPE1V2_IOMMU;
use softvfio::iommu::vtd::VtdUnit;
use softvfio::iommu::{IommuUnit, Prot};
use softvfio::memory::sim::{SimMemory, SIZE_4K};
use softvfio::platform::{Device, Group, GroupKind};
use softvfio::sanitizer::{with_call_site, CallSite, Frame, Sanitizer, SanitizerConfig};
use softvfio::testing::NullDevice;
use softvfio::{Container, ContainerConfig};

const LIVE: u64 = 4096;
const SIM_LIVE: u64 = 0x1000_0000_0000;
const SIM_CHURN: u64 = 0x1100_0000_0000;
const IOVA_CHURN: u64 = 1 << 36;

fn engine(sanitized: bool) -> Arc<Container> {
    let mem = Arc::new(SimMemory::new());
    for base in [SIM_LIVE, SIM_CHURN] {
        mem.add_region(base, LIVE * SIZE_4K, SIZE_4K, Prot::RW)
            .expect("sim region");
    }
    let iommu = Iommu::new(IommuConfig {
        address_width: AddressWidth::Bits39,
        ..IommuConfig::default()
    });
    let unit: Arc<dyn IommuUnit> = Arc::new(VtdUnit::new(iommu));
    let name = "0000:00:03.0".to_string();
    let group = Arc::new(Group {
        id: 3,
        kind: GroupKind::Iommu(unit),
        devices: vec![Arc::new(Device {
            name: name.clone(),
            rid: Some(0x18),
            model: Arc::new(NullDevice(name)),
        })],
        extra_reserved: Vec::new(),
    });
    let c = Container::new(
        ContainerConfig {
            dma_entry_limit: (LIVE + 1024) as u32,
            ..ContainerConfig::default()
        },
        mem,
    );
    c.attach_group(&group).expect("attach");
    c.set_iommu(TYPE1V2_IOMMU).expect("type1v2");
    if sanitized {
        c.set_sanitizer(Sanitizer::new(SanitizerConfig::default()));
    }
    for i in 0..LIVE {
        c.map(i * 2 * SIZE_4K, SIM_LIVE + i * SIZE_4K, SIZE_4K, Prot::RW)
            .expect("live mapping");
    }
    c
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: sanitize_churn_count PAIRS plain|sanitized new|ring";
    let pairs: u64 = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let sanitized = args.get(2).map(String::as_str) == Some("sanitized");
    let ring = if args.get(3).map(String::as_str) == Some("ring") {
        256
    } else {
        LIVE * 16
    };
    let object: Arc<str> = Arc::from("/usr/bin/driver");
    let site = Arc::new(CallSite {
        frames: (0..3u64)
            .map(|i| Frame {
                addr: 0x5555_0000_1000 + i * 0x40,
                object: Some(object.clone()),
                offset: 0x1000 + i * 0x40,
            })
            .collect(),
    });
    let c = engine(sanitized);
    let mut i = 0u64;
    let mut pair = || {
        let n = i;
        i = (i + 1) % ring;
        let iova = IOVA_CHURN + n * SIZE_4K;
        let vaddr = SIM_CHURN + (n % LIVE) * SIZE_4K;
        let op = || {
            c.map(iova, vaddr, SIZE_4K, Prot::RW)
                .and_then(|()| c.unmap(iova, SIZE_4K))
        };
        let r = if sanitized {
            with_call_site(Some(site.clone()), op)
        } else {
            op()
        };
        r.expect("pair");
    };
    // Both sides run the warm-up the sanitized bench side runs.
    for _ in 0..SanitizerConfig::default().max_regions {
        pair();
    }
    for _ in 0..pairs {
        pair();
    }
}
