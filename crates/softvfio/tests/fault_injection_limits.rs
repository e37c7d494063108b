//! Bounded resources: no argument makes the engine allocate in proportion
//! to a size the caller chose. A counting allocator records the largest
//! single allocation while each request runs:
//! - huge argsz on every ioctl that takes one (only the fixed struct is
//!   copied in);
//! - a huge user dirty bitmap size (refused by verify_bitmap_size);
//! - pread/pwrite of u64::MAX bytes (capped at 1 MiB);
//! - GET_DEVICE_FD with a name of 1 MiB and no NUL (read up to 4 KiB);
//! - a configuration over 1 MiB;
//! - dma_entry_limit mappings, then ENOSPC;
//! - dirty tracking over a huge mapping of a container with only an
//!   emulated (mediated) group, where nothing is pinned at map time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use softvfio::container::{Container, ContainerConfig, TYPE1V2_IOMMU};
use softvfio::iommu::Prot;
use softvfio::memory::sim::SimMemory;
use softvfio::memory::UserMemory;
use softvfio::platform::{Device, Group, GroupKind, Platform};
use softvfio::testing::NullDevice;
use softvfio::uapi::*;

/// Records the largest allocation made while `ARMED` is set.
struct Counting;
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static ARMED: AtomicUsize = AtomicUsize::new(0);
/// One measurement at a time (tests run in parallel threads).
static SERIAL: Mutex<()> = Mutex::new(());

// SAFETY: forwards every call to `System` unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) != 0 {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: same layout as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) != 0 {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) != 0 {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result and the largest allocation it made.
fn largest_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.store(0, Ordering::SeqCst);
    ARMED.store(1, Ordering::SeqCst);
    let r = f();
    ARMED.store(0, Ordering::SeqCst);
    (r, LARGEST.load(Ordering::SeqCst))
}

const ARG: u64 = 0x1000_0000;
const DATA: u64 = 0x2000_0000;
const KIB64: usize = 64 << 10;

fn memory() -> Arc<SimMemory> {
    let m = SimMemory::new();
    m.add_region(ARG, 2 << 20, 4096, Prot::RW).unwrap();
    m.add_region(DATA, 64 * 4096, 4096, Prot::RW).unwrap();
    Arc::new(m)
}

fn put(mem: &SimMemory, fields: &[u64], widths: &[usize]) {
    let mut b = Vec::new();
    for (v, w) in fields.iter().zip(widths) {
        b.extend_from_slice(&v.to_ne_bytes()[..*w]);
    }
    mem.write(ARG, &b).unwrap();
}

#[test]
fn huge_argsz_bitmap_and_lengths_are_never_allocated() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let built = softvfio_platform_free_reference();
    let vfio = Vfio::new(built);
    let mem = memory();
    let user: &dyn UserMemory = mem.as_ref();
    let c = vfio.open_container(mem.clone());
    let g = vfio.open_group(3).unwrap();
    let cf = c.clone();
    mem.write(ARG, &0i32.to_ne_bytes()).unwrap();
    assert!(vfio
        .group_ioctl(&g, VFIO_GROUP_SET_CONTAINER, ARG, user, &mut |_| {
            FdLookup::Container(cf.clone())
        })
        .is_ok());
    vfio.container_ioctl(&c, VFIO_SET_IOMMU, TYPE1V2_IOMMU, user)
        .unwrap();
    let max = u64::from(u32::MAX);

    // MAP_DMA with argsz u32::MAX: maps (argsz only needs to be large enough).
    put(&mem, &[max, 3, DATA, 0x10_0000, 0x4000], &[4, 4, 8, 8, 8]);
    let (r, big) = largest_alloc(|| vfio.container_ioctl(&c, VFIO_IOMMU_MAP_DMA, ARG, user));
    assert!(r.is_ok());
    assert!(big < KIB64, "MAP_DMA allocated {big} bytes");
    // GET_INFO with argsz u32::MAX: the capability chain is written, small.
    put(&mem, &[max, 0], &[4, 4]);
    let (r, big) = largest_alloc(|| vfio.container_ioctl(&c, VFIO_IOMMU_GET_INFO, ARG, user));
    assert!(r.is_ok());
    assert!(big < KIB64, "GET_INFO allocated {big} bytes");
    // Dirty tracking on; GET_BITMAP and UNMAP with a bitmap of 2^60 bytes.
    put(&mem, &[12, 1], &[4, 4]);
    vfio.container_ioctl(&c, VFIO_IOMMU_DIRTY_PAGES, ARG, user)
        .unwrap();
    put(
        &mem,
        &[max, 4, 0x10_0000, 0x4000, 4096, 1 << 60, DATA],
        &[4, 4, 8, 8, 8, 8, 8],
    );
    let (r, big) = largest_alloc(|| vfio.container_ioctl(&c, VFIO_IOMMU_DIRTY_PAGES, ARG, user));
    assert_eq!(r.unwrap_err().errno(), libc::EINVAL);
    assert!(big < KIB64, "GET_BITMAP allocated {big} bytes");
    put(
        &mem,
        &[max, 1, 0x10_0000, 0x4000, 4096, 1 << 60, DATA],
        &[4, 4, 8, 8, 8, 8, 8],
    );
    let (r, big) = largest_alloc(|| vfio.container_ioctl(&c, VFIO_IOMMU_UNMAP_DMA, ARG, user));
    assert_eq!(r.unwrap_err().errno(), libc::EINVAL);
    assert!(big < KIB64, "UNMAP_DMA with bitmap allocated {big} bytes");
    // UNMAP_DMA with argsz u32::MAX and a right-sized bitmap works.
    put(
        &mem,
        &[max, 1, 0x10_0000, 0x4000, 4096, 8, DATA + 0x8000],
        &[4, 4, 8, 8, 8, 8, 8],
    );
    let (r, big) = largest_alloc(|| vfio.container_ioctl(&c, VFIO_IOMMU_UNMAP_DMA, ARG, user));
    assert!(r.is_ok(), "{:?}", r.err());
    assert!(big < KIB64, "UNMAP_DMA allocated {big} bytes");

    // GET_DEVICE_FD with 1 MiB of name and no NUL: EINVAL after 4 KiB.
    mem.write(ARG, &vec![b'a'; 1 << 20]).unwrap();
    let (r, big) = largest_alloc(|| {
        vfio.group_ioctl(&g, VFIO_GROUP_GET_DEVICE_FD, ARG, user, &mut |_| {
            FdLookup::NotOpen
        })
    });
    assert_eq!(r.err().map(|e| e.errno()), Some(libc::EINVAL));
    assert!(big <= 8192, "GET_DEVICE_FD allocated {big} bytes");
    mem.write(ARG, b"0000:00:03.0\0").unwrap();
    let Ok(IoctlOutcome::Device(dev)) =
        vfio.group_ioctl(&g, VFIO_GROUP_GET_DEVICE_FD, ARG, user, &mut |_| {
            FdLookup::NotOpen
        })
    else {
        panic!("no device fd");
    };
    // Device info with argsz u32::MAX.
    put(&mem, &[max, 0], &[4, 4]);
    let (r, big) = largest_alloc(|| {
        vfio.device_ioctl(
            &dev,
            VFIO_DEVICE_GET_INFO,
            ARG,
            user,
            &mut softvfio::testing::no_eventfds,
        )
    });
    assert!(r.is_ok());
    assert!(big < KIB64);
    // pread/pwrite of u64::MAX bytes: at most 1 MiB is buffered.
    for write in [false, true] {
        let (_, big) = largest_alloc(|| {
            if write {
                vfio.device_pwrite(&dev, user, ARG, u64::MAX, 0)
            } else {
                vfio.device_pread(&dev, user, ARG, u64::MAX, 0)
            }
        });
        assert!(
            big <= (1 << 20) + 4096,
            "pread/pwrite allocated {big} bytes"
        );
    }
    vfio.release_device(dev);
    vfio.release_group(g);
    vfio.release_container(c);
    assert_eq!(mem.stats().pin_refs, 0);
    assert_eq!(mem.account().locked_pages(), 0);
}

/// The reference platform's shape with a null device (this crate cannot
/// depend on softvfio-platform).
fn softvfio_platform_free_reference() -> Arc<Platform> {
    let iommu = soft_iommu::Iommu::new(soft_iommu::IommuConfig::default());
    let unit = Arc::new(softvfio::iommu::vtd::VtdUnit::new(iommu));
    Arc::new(softvfio::testing::reference_platform(unit))
}

#[test]
fn dma_entry_limit_bounds_the_mappings() {
    let mem = memory();
    let iommu = soft_iommu::Iommu::new(soft_iommu::IommuConfig::default());
    let group = softvfio::testing::vtd_group(3, 0x18, &iommu);
    let c = Container::new(
        ContainerConfig {
            dma_entry_limit: 16,
            precise_dirty: false,
        },
        mem.clone(),
    );
    c.attach_group(&group).unwrap();
    c.set_iommu(TYPE1V2_IOMMU).unwrap();
    for i in 0..16 {
        c.map(0x10_0000 + i * 4096, DATA + i * 4096, 4096, Prot::RW)
            .unwrap();
    }
    let e = c
        .map(0x20_0000, DATA + 16 * 4096, 4096, Prot::RW)
        .unwrap_err();
    assert_eq!(e.errno(), libc::ENOSPC);
    assert_eq!(c.info().unwrap().dma_avail, 0);
    c.detach_group(3);
    assert_eq!(mem.stats().pin_refs, 0);
}

/// With only an emulated group nothing is pinned at map time, so a mapping
/// may cover most of the 64-bit space; starting dirty tracking must then
/// refuse (ENOMEM, as the kernel's kvzalloc does) instead of allocating a
/// bitmap sized by the mapping.
#[test]
fn dirty_tracking_of_a_huge_unpinned_mapping_is_refused_not_allocated() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mem = memory();
    let group = Arc::new(Group {
        id: 7,
        kind: GroupKind::Emulated,
        devices: vec![Arc::new(Device {
            name: "c0ffee00-0000-4000-8000-000000000001".into(),
            rid: None,
            model: Arc::new(NullDevice("mdev".into())),
        })],
        extra_reserved: Vec::new(),
    });
    let c = Container::new(ContainerConfig::default(), mem.clone());
    c.attach_group(&group).unwrap();
    c.set_iommu(TYPE1V2_IOMMU).unwrap();
    let size = 1u64 << 62;
    c.map(0, DATA, size, Prot::RW).unwrap();
    let (r, big) = largest_alloc(|| c.dirty_start());
    assert!(big < (1 << 31), "dirty start allocated {big} bytes");
    assert_eq!(r.map_err(|e| e.errno()), Err(libc::ENOMEM));
    // A mapping made while tracking is on is refused the same way.
    c.unmap_all().unwrap();
    c.dirty_start().unwrap();
    let (r, big) = largest_alloc(|| c.map(0, DATA, size, Prot::RW));
    assert!(big < (1 << 31), "map allocated {big} bytes");
    assert_eq!(r.map_err(|e| e.errno()), Err(libc::ENOMEM));
    assert!(c.snapshot().mappings.is_empty());
    c.detach_group(7);
}
