//! The sparse pin tracker behind the external API, on a mapping of 1 TiB of
//! simulated memory: pins at both ends and in the middle, repeated pins,
//! the memory they take, and the unmap whose notifier drops them.

use softvfio::external::bench_support::PinFixture;
use softvfio::iommu::Prot;
use softvfio::memory::{UserMemory, PAGE_SIZE};

const IOVA_BASE: u64 = 0x1_0000_0000;

#[test]
fn pins_at_the_ends_of_a_terabyte_mapping() {
    let size = 1u64 << 40;
    let fx = PinFixture::new(1, size).unwrap();
    let last = IOVA_BASE + size - PAGE_SIZE;
    let middle = IOVA_BASE + size / 2;
    let c = &fx.container;
    for iova in [IOVA_BASE, last, middle, last] {
        c.pin_pages(&fx.device, iova, 1, Prot::RW).unwrap();
    }
    // Two pages across the end of the mapping: EINVAL, nothing pinned.
    let err = c.pin_pages(&fx.device, last, 2, Prot::RW).unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    assert_eq!(c.external_pins(), (3, 4));
    assert_eq!(c.external_pin_count(IOVA_BASE), 1);
    assert_eq!(c.external_pin_count(last), 2);
    assert_eq!(c.external_pin_count(middle), 1);
    assert_eq!(c.external_pin_count(middle + PAGE_SIZE), 0);
    assert_eq!(fx.memory.account().locked_pages(), 3);
    // One sparse block: 32 bytes, 3 entries (the counts are in them).
    assert_eq!(c.external_tracking_bytes(), 32 + 3 * 8);
    c.unpin_pages(&fx.device, last, 1).unwrap();
    assert_eq!(c.external_pin_count(last), 1);
    assert_eq!(fx.memory.account().locked_pages(), 3);
    // The device pinned through the fixture's record only what pin_all
    // records: record these so that its dma_unmap drops them.
    if let Ok(mut set) = fx.pinned.lock() {
        set.extend([IOVA_BASE, middle, last]);
    }
    assert_eq!(c.unmap(IOVA_BASE, size).unwrap(), size);
    assert_eq!(c.external_pins(), (0, 0));
    assert_eq!(c.external_tracking_bytes(), 0);
    assert_eq!(fx.memory.account().locked_pages(), 0);
    assert_eq!(fx.memory.stats().pin_refs, 0);
}
