//! Mappings that reach the top of the 64-bit IOVA space, through the
//! byte-level uAPI (issue 16).
//!
//! A container whose only group is mediated has no IOMMU aperture, so a
//! mapping may end at 2^64 (its last byte is `u64::MAX`). Linux 6.1 computes
//! the exclusive end `iova + size` there, which wraps to 0: a second map at
//! the same IOVA then succeeds, and unmap misses the mapping. Upstream fixed
//! this in the series that handles mappings "up to the addressable limit";
//! we give upstream's answers for these mappings: they behave like any other
//! (overlaps are EEXIST, unmap and unmap-all find them, every `dma_avail`
//! slot comes back). A range that wraps past 2^64 is still refused with the
//! EINVAL that 6.1 answers (the conformance probe's `map_iova_wrap`,
//! `map_vaddr_wrap` and `unmap_wrap`); upstream answers EOVERFLOW there
//! (docs/DESIGN.md, "Decisions").

use std::sync::Arc;

use softvfio::container::{TYPE1V2_IOMMU, TYPE1_IOMMU};
use softvfio::iommu::Prot;
use softvfio::memory::sim::SimMemory;
use softvfio::memory::UserMemory;
use softvfio::platform::{Device, Group, GroupKind, Platform, DEFAULT_DMA_ENTRY_LIMIT};
use softvfio::testing::NullDevice;
use softvfio::uapi::*;

const ARG: u64 = 0x1000_0000;
const DATA: u64 = 0x2000_0000;
const PG: u64 = 4096;
/// The last page of the IOVA space.
const TOP: u64 = u64::MAX - (PG - 1);
const MAP_RW: u32 = 3;
const UNMAP_ALL_FLAG: u32 = 1 << 1;
/// `VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL`.
const CAP_DMA_AVAIL: u16 = 3;

struct Rig {
    vfio: Vfio,
    mem: Arc<SimMemory>,
    container: ContainerFile,
}

impl Rig {
    /// A container holding one mediated group (no IOMMU, no aperture),
    /// set to `iommu_type`, all through ioctls.
    fn new(iommu_type: u64) -> Self {
        let mut platform = Platform::new();
        platform.add_group(Group {
            id: 7,
            kind: GroupKind::Emulated,
            devices: vec![Arc::new(Device {
                name: "c0ffee00-0000-4000-8000-000000000001".into(),
                rid: None,
                model: Arc::new(NullDevice("mdev".into())),
            })],
            extra_reserved: Vec::new(),
        });
        let vfio = Vfio::new(Arc::new(platform));
        let mem = SimMemory::new();
        mem.add_region(ARG, 64 * PG, PG, Prot::RW).unwrap();
        mem.add_region(DATA, 64 * PG, PG, Prot::RW).unwrap();
        let mem = Arc::new(mem);
        let container = vfio.open_container(mem.clone());
        let group = vfio.open_group(7).unwrap();
        mem.write(ARG, &0i32.to_ne_bytes()).unwrap();
        let cf = container.clone();
        let user: &dyn UserMemory = mem.as_ref();
        assert!(vfio
            .group_ioctl(&group, VFIO_GROUP_SET_CONTAINER, ARG, user, &mut |_| {
                FdLookup::Container(cf.clone())
            })
            .is_ok());
        assert_eq!(
            vfio.container_ioctl(&container, VFIO_SET_IOMMU, iommu_type, user)
                .map_err(|e| e.errno()),
            Ok(0)
        );
        Self {
            vfio,
            mem,
            container,
        }
    }

    /// One container ioctl; the engine's invariants hold after it.
    fn ioctl(&self, request: u64) -> Result<i64, i32> {
        let r = self
            .vfio
            .container_ioctl(&self.container, request, ARG, self.mem.as_ref())
            .map_err(|e| e.errno());
        assert_eq!(self.container.container.check_invariants(), Ok(()));
        r
    }

    /// `VFIO_IOMMU_MAP_DMA` of `struct vfio_iommu_type1_dma_map`.
    fn map(&self, iova: u64, vaddr: u64, size: u64) -> Result<i64, i32> {
        let mut b = Vec::new();
        b.extend_from_slice(&32u32.to_ne_bytes());
        b.extend_from_slice(&MAP_RW.to_ne_bytes());
        b.extend_from_slice(&vaddr.to_ne_bytes());
        b.extend_from_slice(&iova.to_ne_bytes());
        b.extend_from_slice(&size.to_ne_bytes());
        self.mem.write(ARG, &b).unwrap();
        self.ioctl(VFIO_IOMMU_MAP_DMA)
    }

    /// `VFIO_IOMMU_UNMAP_DMA`; returns the `size` field written back.
    fn unmap(&self, iova: u64, size: u64, flags: u32) -> Result<u64, i32> {
        let mut b = Vec::new();
        b.extend_from_slice(&24u32.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&iova.to_ne_bytes());
        // A marker: on failure nothing is written back.
        b.extend_from_slice(&size.to_ne_bytes());
        self.mem.write(ARG, &b).unwrap();
        self.ioctl(VFIO_IOMMU_UNMAP_DMA)?;
        let mut out = [0u8; 8];
        self.mem.read(ARG + 16, &mut out).unwrap();
        Ok(u64::from_ne_bytes(out))
    }

    /// `dma_avail` from `VFIO_IOMMU_GET_INFO`'s capability chain.
    fn dma_avail(&self) -> u32 {
        let argsz = 4096u32;
        let mut b = vec![0u8; argsz as usize];
        b[..4].copy_from_slice(&argsz.to_ne_bytes());
        self.mem.write(ARG, &b).unwrap();
        assert_eq!(self.ioctl(VFIO_IOMMU_GET_INFO), Ok(0));
        self.mem.read(ARG, &mut b).unwrap();
        let u16_at = |o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
        // struct vfio_iommu_type1_info: argsz, flags, iova_pgsizes, cap_offset.
        let mut off = u32_at(16) as usize;
        while off != 0 {
            // struct vfio_info_cap_header: id, version, next.
            if u16_at(off) == CAP_DMA_AVAIL {
                return u32_at(off + 8);
            }
            off = u32_at(off + 4) as usize;
        }
        panic!("GET_INFO has no DMA_AVAIL capability");
    }
}

fn top_of_the_space_behaves_like_any_mapping(iommu_type: u64) {
    let rig = Rig::new(iommu_type);
    let limit = DEFAULT_DMA_ENTRY_LIMIT;
    assert_eq!(rig.dma_avail(), limit);

    // The last page maps (its last byte is u64::MAX).
    assert_eq!(rig.map(TOP, DATA, PG), Ok(0));
    assert_eq!(rig.dma_avail(), limit - 1);
    // The same IOVA again, and ranges overlapping it, exist already.
    assert_eq!(rig.map(TOP, DATA + PG, PG), Err(libc::EEXIST));
    assert_eq!(rig.map(TOP - PG, DATA, 2 * PG), Err(libc::EEXIST));
    assert_eq!(rig.map(TOP - 16 * PG, DATA, 17 * PG), Err(libc::EEXIST));
    assert_eq!(rig.dma_avail(), limit - 1);
    // The page below is free.
    assert_eq!(rig.map(TOP - PG, DATA, PG), Ok(0));
    assert_eq!(rig.dma_avail(), limit - 2);
    // Ranges past 2^64 wrap: 6.1's EINVAL, with nothing written back.
    assert_eq!(rig.map(TOP, DATA, 2 * PG), Err(libc::EINVAL));
    assert_eq!(rig.unmap(TOP, 2 * PG, 0), Err(libc::EINVAL));
    assert_eq!(rig.dma_avail(), limit - 2);

    // Unmapping the last page by its range finds it.
    assert_eq!(rig.unmap(TOP, PG, 0), Ok(PG));
    assert_eq!(rig.dma_avail(), limit - 1);
    assert_eq!(rig.unmap(TOP, PG, 0), Ok(0));

    // Map it again; unmap-all reports both mappings and frees every slot.
    assert_eq!(rig.map(TOP, DATA, PG), Ok(0));
    assert_eq!(rig.map(TOP, DATA, PG), Err(libc::EEXIST));
    assert_eq!(rig.dma_avail(), limit - 2);
    assert_eq!(rig.unmap(0, 0, UNMAP_ALL_FLAG), Ok(2 * PG));
    assert_eq!(rig.dma_avail(), limit);
    assert_eq!(rig.unmap(0, 0, UNMAP_ALL_FLAG), Ok(0));
    // And the space is free again.
    assert_eq!(rig.map(TOP, DATA, PG), Ok(0));
    assert_eq!(rig.map(TOP - PG, DATA, PG), Ok(0));
    assert_eq!(rig.unmap(TOP - PG, 2 * PG, 0), Ok(2 * PG));
    assert_eq!(rig.dma_avail(), limit);
}

#[test]
fn top_page_mapping_type1v2() {
    top_of_the_space_behaves_like_any_mapping(TYPE1V2_IOMMU);
}

#[test]
fn top_page_mapping_type1() {
    top_of_the_space_behaves_like_any_mapping(TYPE1_IOMMU);
}

/// A mapping covering the whole space but the first page ends at 2^64 too
/// (user address 0: nothing is pinned without an IOMMU domain);
/// v2 unmap of a range that would bisect it is refused, the exact range
/// unmaps it.
#[test]
fn mapping_up_to_the_limit_is_not_bisected() {
    let rig = Rig::new(TYPE1V2_IOMMU);
    assert_eq!(rig.map(PG, 0, 0u64.wrapping_sub(PG)), Ok(0));
    assert_eq!(rig.map(TOP, DATA, PG), Err(libc::EEXIST));
    assert_eq!(rig.map(0, DATA, PG), Ok(0));
    assert_eq!(rig.unmap(TOP, PG, 0), Err(libc::EINVAL));
    assert_eq!(rig.unmap(PG, 2 * PG, 0), Err(libc::EINVAL));
    assert_eq!(
        rig.unmap(PG, 0u64.wrapping_sub(PG), 0),
        Ok(0u64.wrapping_sub(PG))
    );
    assert_eq!(rig.dma_avail(), DEFAULT_DMA_ENTRY_LIMIT - 1);
    assert_eq!(rig.unmap(0, 0, UNMAP_ALL_FLAG), Ok(PG));
    assert_eq!(rig.dma_avail(), DEFAULT_DMA_ENTRY_LIMIT);
}
