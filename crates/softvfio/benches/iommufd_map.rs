//! Map + unmap through iommufd's IOAS against the same through a type1
//! container, in one run (the baseline): simulated memory, the VT-d model,
//! one device attached, 4 KiB and 2 MiB mappings of 4 KiB pages. Both pin,
//! charge and map through the same helpers, so the ratio is the cost of
//! each front's bookkeeping (type1's mapping tree and `dma_avail`, iommufd's
//! areas, reserved list and object table).

#![allow(missing_docs)] // criterion's macros define undocumented public functions

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use softvfio::container::{Container, ContainerConfig, TYPE1V2_IOMMU};
use softvfio::iommu::Prot;
use softvfio::iommufd::Iommufd;
use softvfio::memory::sim::SimMemory;
use softvfio::memory::{UserMemory, PAGE_SIZE};
use softvfio::testing::vtd_group;

const DATA: u64 = 0x7000_0000_0000;
const MIB: u64 = 1 << 20;

fn memory() -> Arc<SimMemory> {
    let mem = SimMemory::new();
    mem.add_region(DATA, 64 * MIB, PAGE_SIZE, Prot::RW)
        .expect("region");
    Arc::new(mem)
}

fn map_unmap(c: &mut Criterion) {
    let mut g = c.benchmark_group("map+unmap");
    for size in [PAGE_SIZE, 2 * MIB] {
        g.throughput(Throughput::Bytes(size));
        let slots = 32 * MIB / size;

        let mem = memory();
        let iommu = soft_iommu::Iommu::new(soft_iommu::IommuConfig::default());
        let group = vtd_group(3, 0x18, &iommu);
        let user: Arc<dyn UserMemory> = mem.clone();
        let container = Container::new(ContainerConfig::default(), user);
        container.attach_group(&group).expect("attach");
        container.set_iommu(TYPE1V2_IOMMU).expect("set_iommu");
        let mut next = 0u64;
        g.bench_function(format!("type1 {}K", size / 1024), |b| {
            b.iter(|| {
                let k = next % slots;
                next += 1;
                let iova = 0x1000_0000 + k * size;
                container
                    .map(iova, DATA + k * size, size, Prot::RW)
                    .expect("map");
                container.unmap(iova, size).expect("unmap");
            })
        });
        container.detach_group(group.id);

        let mem = memory();
        let iommu = soft_iommu::Iommu::new(soft_iommu::IommuConfig::default());
        let group = vtd_group(3, 0x18, &iommu);
        let ctx = Iommufd::new(mem.clone());
        let ioas = ctx.ioas_alloc();
        let dev = ctx.bind(&group, &group.devices[0]);
        ctx.attach(dev, ioas).expect("attach");
        let mut next = 0u64;
        g.bench_function(format!("iommufd {}K", size / 1024), |b| {
            b.iter(|| {
                let k = next % slots;
                next += 1;
                let iova = 0x1000_0000 + k * size;
                ctx.map(ioas, DATA + k * size, size, Some(iova), Prot::RW)
                    .expect("map");
                ctx.unmap(ioas, iova, size).expect("unmap");
            })
        });
        ctx.close();
    }
    g.finish();
}

criterion_group!(benches, map_unmap);
criterion_main!(benches);
