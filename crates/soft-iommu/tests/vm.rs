//! The model behind vm-memory's `Iommu` trait.

use std::sync::Arc;

use soft_iommu::{FaultReason, Iommu, IommuConfig, NullMemory, Prot, SIZE_2M, SIZE_4K};
use vm_memory::iommu::{Error as VmError, MappedRange};
use vm_memory::{GuestAddress, Iommu as VmIommuTrait, Permissions};

fn ranges(
    view: &impl VmIommuTrait,
    iova: u64,
    len: usize,
    access: Permissions,
) -> Result<Vec<(u64, usize)>, VmError> {
    Ok(view
        .translate(GuestAddress(iova), len, access)?
        .map(|MappedRange { base, length }| (base.0, length))
        .collect())
}

#[test]
fn translates_through_the_vm_memory_trait() {
    let unit = Iommu::new(IommuConfig::default());
    let d = unit.create_domain(Arc::new(NullMemory)).unwrap();
    unit.attach_device(3, &d).unwrap();
    // 4K pages whose memory is not contiguous, then a 2M page.
    d.map(0x10_0000, 0x9000, SIZE_4K, Prot::RW).unwrap();
    d.map(0x10_1000, 0x3000, SIZE_4K, Prot::READ).unwrap();
    d.map(SIZE_2M, 0x4000_0000, SIZE_2M, Prot::RW).unwrap();
    let view = unit.vm_iommu(3);
    assert_eq!(view.rid(), 3);

    assert_eq!(
        ranges(&view, 0x10_0ff0, 0x20, Permissions::Read).unwrap(),
        vec![(0x9ff0, 0x10), (0x3000, 0x10)]
    );
    assert_eq!(
        ranges(&view, SIZE_2M + 0x1234, 0x10_0000, Permissions::ReadWrite).unwrap(),
        vec![(0x4000_1234, 0x10_0000)]
    );
    // A write needs W.
    let err = ranges(&view, 0x10_0ff0, 0x20, Permissions::Write).unwrap_err();
    assert!(matches!(err, VmError::CannotResolve { .. }), "{err}");
    assert!(err.to_string().contains("no write permission"), "{err}");
    let faults = unit.take_faults();
    assert_eq!(faults.len(), 1);
    assert_eq!(
        (faults[0].reason, faults[0].iova, faults[0].rid),
        (FaultReason::NoWrite, 0x10_1000, 3)
    );
    // Not mapped.
    assert!(ranges(&view, 0x20_0000 - 8, 16, Permissions::Read).is_err());
    assert_eq!(unit.take_faults()[0].reason, FaultReason::NotPresent);
    // Wrapping ranges are refused without a fault.
    assert!(ranges(&view, u64::MAX - 4, 16, Permissions::Read).is_err());
    assert!(unit.faults().is_empty());
}

#[test]
fn vm_memory_writes_set_dirty_bits_and_invalidation_reaches_the_view() {
    let unit = Iommu::new(IommuConfig::default());
    let d = unit.create_domain(Arc::new(NullMemory)).unwrap();
    unit.attach_device(3, &d).unwrap();
    d.map(0, 0x8000, 2 * SIZE_4K, Prot::RW).unwrap();
    let view = unit.vm_iommu(3);

    ranges(&view, 0, 8, Permissions::Read).unwrap();
    let dirty = |d: &soft_iommu::Domain| -> Vec<u64> {
        let mut v = Vec::new();
        d.read_and_clear_dirty(0, 2 * SIZE_4K, &mut |p| v.push(p));
        v
    };
    assert!(dirty(&d).is_empty());
    // The first write after a read-only fill goes back to the model: D set.
    ranges(&view, 0x10, 8, Permissions::Write).unwrap();
    assert_eq!(dirty(&d), vec![0]);
    // Harvesting invalidated the view too: the next write sets D again.
    ranges(&view, 0x10, 8, Permissions::Write).unwrap();
    assert_eq!(dirty(&d), vec![0]);

    // Unmap + flush: the view stops translating.
    ranges(&view, 0, 8, Permissions::Read).unwrap();
    assert_eq!(d.unmap(0, 2 * SIZE_4K), 2 * SIZE_4K);
    ranges(&view, 0x1000, 8, Permissions::Read).unwrap_err();
    ranges(&view, 0, 8, Permissions::Read).unwrap(); // stale, until flushed
    d.flush_range(0, 2 * SIZE_4K);
    ranges(&view, 0, 8, Permissions::Read).unwrap_err();

    // Detach: the device is blocked through the view as well.
    d.map(0, 0x8000, SIZE_4K, Prot::RW).unwrap();
    ranges(&view, 0, 8, Permissions::Read).unwrap();
    unit.detach_device(3);
    let err = ranges(&view, 0, 8, Permissions::Read).unwrap_err();
    assert!(err.to_string().contains("blocked"), "{err}");
}
