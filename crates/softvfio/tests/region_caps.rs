//! `VFIO_DEVICE_GET_REGION_INFO`'s capability chain and `mmap`'s checks
//! through the uAPI, with a device model whose BAR2 holds an MSI-X table
//! (`MSIX_MAPPABLE`) and whose BAR4 is mappable only in parts (a sparse-mmap
//! capability): argsz too small for the chain (the size needed, cap_offset
//! 0), large enough (the chain after the 32-byte struct, `next` offsets
//! from the struct's start), and `vfio_pci_core_mmap`'s refusals.

use std::sync::Arc;

use softvfio::device::{
    IrqInfo, RegionCap, RegionInfo, VfioDeviceModel, REGION_FLAG_MMAP, REGION_FLAG_READ,
    REGION_FLAG_WRITE,
};
use softvfio::iommu::Prot;
use softvfio::memory::sim::SimMemory;
use softvfio::memory::UserMemory;
use softvfio::platform::{Device, Group, GroupKind, Platform};
use softvfio::uapi::*;

const ARG: u64 = 0x1000_0000;
const RW: u32 = REGION_FLAG_READ | REGION_FLAG_WRITE;

struct Model;

impl VfioDeviceModel for Model {
    fn name(&self) -> &str {
        "0000:00:04.0"
    }
    fn flags(&self) -> u32 {
        2
    }
    fn num_regions(&self) -> u32 {
        9
    }
    fn num_irqs(&self) -> u32 {
        5
    }
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let (flags, size) = match index {
            0 => (RW | REGION_FLAG_MMAP, 0x1000),
            2 => (RW | REGION_FLAG_MMAP, 0x4000),
            4 => (RW | REGION_FLAG_MMAP, 0x3000),
            7 => (RW, 256),
            i if i < 7 => (0, 0),
            _ => return None,
        };
        Some(RegionInfo { flags, size })
    }
    fn region_caps(&self, index: u32) -> Vec<RegionCap> {
        match index {
            2 => vec![RegionCap::MsixMappable],
            4 => vec![
                RegionCap::SparseMmap(vec![(0, 0x1000), (0x2000, 0x1000)]),
                RegionCap::MsixMappable,
            ],
            _ => Vec::new(),
        }
    }
    fn irq_info(&self, _index: u32) -> Option<IrqInfo> {
        None
    }
    fn region_read(&self, _i: u32, _o: u64, _b: &mut [u8]) -> Result<usize, i32> {
        Err(libc::EINVAL)
    }
    fn region_write(&self, _i: u32, _o: u64, _d: &[u8]) -> Result<usize, i32> {
        Err(libc::EINVAL)
    }
    fn reset(&self) -> Result<(), i32> {
        Err(libc::EINVAL)
    }
}

fn setup() -> (Vfio, Arc<SimMemory>, DeviceFile) {
    let iommu = soft_iommu::Iommu::new(soft_iommu::IommuConfig::default());
    let unit = Arc::new(softvfio::iommu::vtd::VtdUnit::new(iommu));
    let mut p = Platform::new();
    p.add_group(Group {
        id: 3,
        kind: GroupKind::Iommu(unit),
        devices: vec![Arc::new(Device {
            name: "0000:00:04.0".to_string(),
            rid: Some(0x20),
            model: Arc::new(Model),
        })],
        extra_reserved: Vec::new(),
    });
    let vfio = Vfio::new(Arc::new(p));
    let mem = SimMemory::new();
    mem.add_region(ARG, 1 << 20, 4096, Prot::RW).unwrap();
    let mem = Arc::new(mem);
    let c = vfio.open_container(mem.clone());
    let g = vfio.open_group(3).unwrap();
    let user: &dyn UserMemory = mem.as_ref();
    let cfd = c.clone();
    mem.write(ARG, &0i32.to_ne_bytes()).unwrap();
    vfio.group_ioctl(&g, VFIO_GROUP_SET_CONTAINER, ARG, user, &mut |_| {
        FdLookup::Container(cfd.clone())
    })
    .unwrap();
    vfio.container_ioctl(&c, VFIO_SET_IOMMU, 3, user).unwrap();
    mem.write(ARG, b"0000:00:04.0\0").unwrap();
    let Ok(IoctlOutcome::Device(dev)) =
        vfio.group_ioctl(&g, VFIO_GROUP_GET_DEVICE_FD, ARG, user, &mut |_| {
            FdLookup::NotOpen
        })
    else {
        panic!("no device fd");
    };
    (vfio, mem, dev)
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

/// GET_REGION_INFO of `index` with `argsz`: (errno, the first `argsz`
/// bytes back, as u32 words).
fn region_info(
    vfio: &Vfio,
    mem: &SimMemory,
    dev: &DeviceFile,
    index: u32,
    argsz: u32,
) -> (i32, Vec<u32>) {
    let mut arg = vec![0u8; 256];
    arg[0..4].copy_from_slice(&argsz.to_ne_bytes());
    arg[8..12].copy_from_slice(&index.to_ne_bytes());
    mem.write(ARG, &arg).unwrap();
    let r = vfio.device_ioctl(
        dev,
        VFIO_DEVICE_GET_REGION_INFO,
        ARG,
        mem,
        &mut softvfio::testing::no_eventfds,
    );
    let mut back = vec![0u8; (argsz as usize).clamp(32, 256)];
    mem.read(ARG, &mut back).unwrap();
    (r.err().map_or(0, |e| e.errno()), u32s(&back))
}

#[test]
fn capability_chains_as_vfio_pci_writes_them() {
    let (vfio, mem, dev) = setup();
    // BAR0: no capability; flags read|write|mmap, cap_offset 0.
    let (e, w) = region_info(&vfio, &mem, &dev, 0, 32);
    assert_eq!((e, &w[..4]), (0, &[32, 0x7, 0, 0][..]));
    // BAR2: MSIX_MAPPABLE (8 bytes). argsz 32: FLAG_CAPS, argsz 40, no chain.
    let (e, w) = region_info(&vfio, &mem, &dev, 2, 32);
    assert_eq!((e, &w[..4]), (0, &[40, 0xf, 2, 0][..]));
    // argsz 40: the chain at 32; header id 3, version 1, next 0.
    let (e, w) = region_info(&vfio, &mem, &dev, 2, 40);
    assert_eq!(e, 0);
    assert_eq!(&w[..4], &[40, 0xf, 2, 32]);
    assert_eq!(&w[8..10], &[3 | (1 << 16), 0]);
    // BAR4: sparse mmap (8 + 8 + 2 x 16 = 48 bytes) then MSIX_MAPPABLE (8).
    let (e, w) = region_info(&vfio, &mem, &dev, 4, 32);
    assert_eq!((e, &w[..4]), (0, &[32 + 56, 0xf, 4, 0][..]));
    let (e, w) = region_info(&vfio, &mem, &dev, 4, 128);
    assert_eq!(e, 0);
    assert_eq!(&w[..4], &[128, 0xf, 4, 32]);
    // At 32: id 1, version 1, next 80 (32 + 48); nr_areas 2, reserved;
    // (0, 0x1000), (0x2000, 0x1000).
    assert_eq!(&w[8..14], &[1 | (1 << 16), 80, 2, 0, 0, 0]);
    assert_eq!(&w[14..20], &[0x1000, 0, 0x2000, 0, 0x1000, 0]);
    // At 80: id 3, version 1, next 0.
    assert_eq!(&w[20..22], &[3 | (1 << 16), 0]);
    // Config space: no MMAP flag, no chain.
    let (e, w) = region_info(&vfio, &mem, &dev, 7, 128);
    assert_eq!((e, &w[..4]), (0, &[128, 0x3, 7, 0][..]));
}

#[test]
fn mmap_checks_as_vfio_pci_core_mmap() {
    let (vfio, _mem, dev) = setup();
    let at = |index: u64, off: u64| (index << 40) + off;
    let einval = |r: softvfio::Result<MappedRegion>| r.err().map(|e| e.errno());
    let ok = vfio.device_mmap(&dev, at(2, 0x1000), 0x3000, true).unwrap();
    assert_eq!((ok.region, ok.offset), (2, 0x1000));
    assert_eq!(ok.model.name(), "0000:00:04.0");
    // Private mapping, past the region, config space, an absent BAR, an
    // index past the regions.
    assert_eq!(
        einval(vfio.device_mmap(&dev, at(2, 0), 0x1000, false)),
        Some(libc::EINVAL)
    );
    assert_eq!(
        einval(vfio.device_mmap(&dev, at(2, 0x1000), 0x4000, true)),
        Some(libc::EINVAL)
    );
    assert_eq!(
        einval(vfio.device_mmap(&dev, at(7, 0), 0x1000, true)),
        Some(libc::EINVAL)
    );
    assert_eq!(
        einval(vfio.device_mmap(&dev, at(1, 0), 0x1000, true)),
        Some(libc::EINVAL)
    );
    assert_eq!(
        einval(vfio.device_mmap(&dev, at(9, 0), 0x1000, true)),
        Some(libc::EINVAL)
    );
    // A range whose end wraps.
    assert_eq!(
        einval(vfio.device_mmap(&dev, at(2, 0x1000), u64::MAX, true)),
        Some(libc::EINVAL)
    );
}
