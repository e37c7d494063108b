//! `vfio_ioctls::VfioOps` for `Container` (feature `vfio-ioctls`, on for
//! this crate's tests): a VMM written against rust-vmm's VFIO crate maps
//! and unmaps guest memory through the engine.

use softvfio::container::{Container, ContainerConfig, TYPE1V2_IOMMU};
use vfio_ioctls::{VfioError, VfioOps};

mod common;

#[test]
fn vfio_ops_maps_and_unmaps_through_the_engine() {
    let (mem, base, group) = common::test_memory_and_group(16);
    let c = Container::new(ContainerConfig::default(), mem.clone());
    c.attach_group(&group).unwrap();
    c.set_iommu(TYPE1V2_IOMMU).unwrap();
    let ops: &dyn VfioOps = c.as_ref();
    let guest = base as *mut u8;
    // SAFETY: `base` is simulated memory (SimMemory): no Rust object of
    // this process lives at that address, and the pointer is never
    // dereferenced, only passed on as the mapping's user address.
    unsafe { ops.vfio_dma_map(0x10_0000, 8 * 4096, guest) }.unwrap();
    let snap = c.snapshot();
    assert_eq!(snap.mappings.len(), 1);
    let m = &snap.mappings[0];
    assert_eq!((m.iova, m.size, m.vaddr), (0x10_0000, 8 * 4096, base));
    assert!(m.read && m.write);
    assert_eq!(mem.account().locked_pages(), 8);

    // The same IOVA again: the engine's EEXIST.
    // SAFETY: as above.
    let again = unsafe { ops.vfio_dma_map(0x10_0000, 4096, guest) };
    match again {
        Err(VfioError::IommuDmaMap(e)) => assert_eq!(e.errno(), libc::EEXIST),
        other => panic!("expected IommuDmaMap(EEXIST), got {other:?}"),
    }
    // v2 refuses to bisect the mapping: EINVAL.
    match ops.vfio_dma_unmap(0x10_0000, 4096) {
        Err(VfioError::IommuDmaUnmap(e)) => assert_eq!(e.errno(), libc::EINVAL),
        other => panic!("expected IommuDmaUnmap(EINVAL), got {other:?}"),
    }
    // Nothing mapped there: 0 bytes unmapped is a size mismatch.
    assert!(matches!(
        ops.vfio_dma_unmap(0x40_0000, 4096),
        Err(VfioError::InvalidDmaUnmapSize)
    ));
    ops.vfio_dma_unmap(0x10_0000, 8 * 4096).unwrap();
    assert!(c.snapshot().mappings.is_empty());
    assert_eq!(mem.account().locked_pages(), 0);
    assert!(ops.as_any().downcast_ref::<Container>().is_some());
    assert_eq!(c.check_invariants(), Ok(()));
}
