//! Leak check in process: containers, groups and devices opened and closed
//! many times through the byte-level uAPI over this process's own memory
//! (the host backend: real mlock, real pins), closing in every order, with
//! and without mappings left in place. Afterwards: no pin, no accounted
//! page, no mlocked page (VmLck of this process back to its start), no
//! descriptor left open, nothing left attached. Alone in its test binary:
//! it counts this process's descriptors and VmLck.

use std::sync::Arc;

use softvfio::memory::host::HostMemory;
use softvfio::memory::UserMemory;
use softvfio::uapi::{
    FdLookup, IoctlOutcome, Vfio, VFIO_GROUP_GET_DEVICE_FD, VFIO_GROUP_SET_CONTAINER,
    VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA, VFIO_SET_IOMMU,
};
use softvfio_platform::BuiltPlatform;

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn vmlck_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn open_map_close_cycles_leave_no_pin_no_lock_no_descriptor() {
    let built = BuiltPlatform::reference().unwrap();
    let vfio = Vfio::new(built.platform.clone());
    // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
    // arguments, areas no Rust reference covers while the engine runs.
    let mem = Arc::new(unsafe { HostMemory::current() });
    let user: &dyn UserMemory = mem.as_ref();
    // Page-aligned memory to map, and argument structs, in this process.
    let mut backing = vec![1u8; 65 * 4096];
    let base = (backing.as_mut_ptr() as u64 + 4095) & !4095;
    let mut args = vec![0u8; 256];
    let arg = args.as_mut_ptr() as u64;

    let lck = vmlck_kb();
    // The backend opens some descriptors lazily, once (/proc/<pid>/maps,
    // ...): count after a first cycle, so that only per-cycle leaks show.
    let mut fds = 0;
    for i in 0..2001u64 {
        if i == 1 {
            fds = fd_count();
        }
        let c = vfio.open_container(mem.clone());
        let g = vfio.open_group(3).unwrap();
        user.write(arg, &0i32.to_ne_bytes()).unwrap();
        let cf = c.clone();
        let r = vfio.group_ioctl(&g, VFIO_GROUP_SET_CONTAINER, arg, user, &mut |_| {
            FdLookup::Container(cf.clone())
        });
        assert!(r.is_ok());
        vfio.container_ioctl(&c, VFIO_SET_IOMMU, 3, user).unwrap();
        user.write(arg, b"0000:00:03.0\0").unwrap();
        let dev = match vfio.group_ioctl(&g, VFIO_GROUP_GET_DEVICE_FD, arg, user, &mut |_| {
            FdLookup::NotOpen
        }) {
            Ok(IoctlOutcome::Device(d)) => d,
            _ => panic!("no device fd"),
        };
        let size = (1 + i % 64) * 4096;
        let mut map = Vec::new();
        for v in [32u32, 3] {
            map.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [base, 0x10_0000, size] {
            map.extend_from_slice(&v.to_ne_bytes());
        }
        user.write(arg, &map).unwrap();
        vfio.container_ioctl(&c, VFIO_IOMMU_MAP_DMA, arg, user)
            .unwrap();
        if i == 0 {
            assert_eq!(vmlck_kb() - lck, size / 1024, "pinned pages are mlocked");
        }
        if i % 2 == 0 {
            let mut unmap = Vec::new();
            for v in [24u32, 0] {
                unmap.extend_from_slice(&v.to_ne_bytes());
            }
            for v in [0x10_0000u64, size] {
                unmap.extend_from_slice(&v.to_ne_bytes());
            }
            user.write(arg, &unmap).unwrap();
            vfio.container_ioctl(&c, VFIO_IOMMU_UNMAP_DMA, arg, user)
                .unwrap();
        }
        match i % 3 {
            0 => {
                vfio.release_device(dev);
                vfio.release_group(g);
                vfio.release_container(c);
            }
            1 => {
                vfio.release_container(c);
                vfio.release_device(dev);
                vfio.release_group(g);
            }
            _ => {
                vfio.release_group(g);
                vfio.release_container(c);
                vfio.release_device(dev);
            }
        }
    }
    assert!(
        vfio.attached_containers().is_empty(),
        "a container stayed attached"
    );
    assert!(built.iommu.devices().is_empty(), "a device stayed attached");
    assert_eq!(mem.stats().pin_refs, 0, "pins survived");
    assert_eq!(mem.account().locked_pages(), 0, "accounting survived");
    assert_eq!(vmlck_kb(), lck, "mlocked pages survived");
    assert_eq!(fd_count(), fds, "descriptors leaked");
    drop(args);
    drop(backing);
}
