//! Compact tracking of external pins (seed 004), measured with a counting
//! allocator: at most 8 bytes per pinned page when dense, memory that
//! follows what is pinned (not the mapping size) when sparse, and the
//! estimate `PinTracker::heap_bytes` reports close to what is allocated.
//! Unmapping 256k external pins takes one accounting update.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use softvfio::external::bench_support::{
    pin_unpin_rate, tracking_footprint, unmap_with_external_pins, PinFixture, PinPattern,
};
use softvfio::external::PinTracker;
use softvfio::memory::UserMemory;

/// Live heap bytes of the whole test binary.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap bytes a tracker with `pages` pinned holds, measured. Tests in this
/// file run one at a time for this (see `LOCK`).
fn measured(pages: impl Iterator<Item = u64>) -> (PinTracker, usize) {
    let before = LIVE.load(Ordering::SeqCst);
    let mut t = PinTracker::new();
    for p in pages {
        t.pin(p).unwrap();
    }
    let after = LIVE.load(Ordering::SeqCst);
    (t, (after - before).max(0) as usize)
}

static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn dense_pins_take_at_most_8_bytes_a_page() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let pages = 1u64 << 18; // 1 GiB of 4 KiB pages
                            // Each page pinned once (a caching device), then each pinned twice.
    let (t1, once) = measured(0..pages);
    let (t2, twice) = measured((0..pages).flat_map(|p| [p, p]));
    for (what, t, bytes) in [("once", &t1, once), ("twice", &t2, twice)] {
        let per_page = bytes as f64 / pages as f64;
        let est = t.heap_bytes() as f64;
        eprintln!(
            "dense, pinned {what}: {bytes} bytes for {pages} pages = {per_page:.2} B/page (estimate {:.2})",
            est / pages as f64
        );
        assert!(per_page <= 8.0, "{per_page} bytes per pinned page");
        assert!(
            (est - bytes as f64).abs() / (bytes as f64) < 0.25,
            "estimate {est} vs measured {bytes}"
        );
    }
    assert_eq!(t2.pin_refs(), 2 * pages);
}

#[test]
fn sparse_pins_cost_what_is_pinned_not_the_mapping_size() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // 4096 pins one per 64 pages (a 1 GiB mapping) and the same number
    // spread over a 1 TiB mapping: the same memory.
    let (t1, small) = measured((0..4096u64).map(|i| i * 64));
    let (t2, huge) = measured((0..4096u64).map(|i| i * (1 << 16)));
    eprintln!(
        "sparse: {:.1} B/pin over 1 GiB, {:.1} B/pin over 1 TiB (estimates {:.1}, {:.1})",
        small as f64 / 4096.0,
        huge as f64 / 4096.0,
        t1.heap_bytes() as f64 / 4096.0,
        t2.heap_bytes() as f64 / 4096.0
    );
    // The kernel's rb-tree node is ~40 bytes; a pin alone in its 64 pages
    // costs about that here.
    assert!(small as f64 / 4096.0 <= 64.0);
    assert!((t1.heap_bytes() as f64 - small as f64).abs() / (small as f64) < 0.25);
    assert!((huge as f64 - small as f64).abs() / (small as f64) < 0.1);
    // Unpinning gives the memory back.
    let before = LIVE.load(Ordering::SeqCst);
    let mut t1 = t1;
    for i in 0..4096u64 {
        assert!(t1.unpin(i * 64));
    }
    // Other threads of the harness allocate too: allow them some slack.
    let freed = before - LIVE.load(Ordering::SeqCst);
    assert!(
        freed as f64 >= 0.9 * small as f64,
        "freed {freed} of {small}"
    );
    assert!(t1.is_empty());
    assert_eq!(t1.heap_bytes(), 0);
    drop(t2);
}

#[test]
fn footprints_over_one_gib_of_mappings() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dense = tracking_footprint(8, 128 << 20, PinPattern::Dense).unwrap();
    assert_eq!(dense.pinned_pages, 1 << 18);
    assert!(dense.bytes_per_pinned_page <= 8.0, "{dense:?}");
    let sparse = tracking_footprint(8, 128 << 20, PinPattern::Sparse { stride: 64 }).unwrap();
    assert_eq!(sparse.pinned_pages, 1 << 12);
    assert!(sparse.bytes_per_pinned_page <= 64.0, "{sparse:?}");
    // Sparse memory follows the pins: 64 times fewer pages, no more bytes.
    assert!(sparse.tracking_bytes <= dense.tracking_bytes, "{sparse:?}");
    eprintln!("{dense:?}\n{sparse:?}");
}

#[test]
fn unmapping_256k_external_pins_is_one_accounting_update() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let r = unmap_with_external_pins(1 << 18).unwrap();
    eprintln!("{r:?}");
    assert_eq!(r.pinned_pages, 1 << 18);
    assert_eq!(r.accounting_updates, 1);
    assert_eq!(r.locked_pages_after, 0);

    // The release path (device gone, pins left behind): also one update.
    let fx = PinFixture::new(1, (1 << 18) * 4096).unwrap();
    let iovas = fx.pattern_iovas(PinPattern::Dense);
    let calls = fx.pin_all(&iovas).unwrap();
    assert_eq!(calls, 512);
    assert_eq!(fx.memory.account().locked_pages(), 1 << 18);
    let u = fx.memory.account().updates();
    fx.container.close();
    assert_eq!(fx.memory.account().updates() - u, 1);
    assert_eq!(fx.memory.account().locked_pages(), 0);
    assert_eq!(fx.memory.stats().pin_refs, 0);
}

#[test]
fn pin_and_unpin_make_one_accounting_update_per_call() {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let r = pin_unpin_rate(1 << 16, 512).unwrap();
    eprintln!("{r:?}");
    assert_eq!(r.pin_accounting_updates, (1 << 16) / 512);
    assert_eq!(r.unpin_accounting_updates, (1 << 16) / 512);
}
