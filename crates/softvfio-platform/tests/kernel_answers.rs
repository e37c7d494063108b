//! The byte-level uAPI, driven with the structs of `linux/vfio.h` in this
//! process's memory, on the reference platform (real process memory, the
//! VT-d model, the edu device), asserting what Linux 6.1 answered to the same
//! requests: `shared/conformance/kernel-6.1.txt` (the probe) and
//! `tests-oracle/kernel-6.1-extra.txt` (extra questions asked with
//! `run-kernel.sh`; the program is `tests-oracle/oracle_extra.c`).

use std::mem::size_of;
use std::sync::Arc;

use softvfio::memory::host::HostMemory;
use softvfio::memory::UserMemory;
use softvfio::uapi::*;
use softvfio_platform::BuiltPlatform;
use vfio_bindings::bindings::vfio::*;

const PG: u64 = 4096;
const RW: u32 = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
const EINVAL: i32 = libc::EINVAL;

fn ptr<T>(v: &T) -> u64 {
    v as *const T as u64
}

/// A user pointer to a struct the call writes into.
fn out<T>(v: &mut T) -> u64 {
    v as *mut T as u64
}

/// Page-aligned anonymous memory filled with 0x5a, unmapped on drop.
struct Anon {
    addr: u64,
    len: u64,
}

impl Anon {
    fn new(pages: u64) -> Anon {
        Self::with_prot(pages, libc::PROT_READ | libc::PROT_WRITE)
    }

    fn with_prot(pages: u64, prot: i32) -> Anon {
        let len = pages * PG;
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        if prot & libc::PROT_WRITE != 0 {
            // SAFETY: the mapping is ours and writable.
            unsafe { std::ptr::write_bytes(p as *mut u8, 0x5a, len as usize) };
        }
        Anon {
            addr: p as u64,
            len,
        }
    }

    fn at(&self, page: u64) -> u64 {
        self.addr + page * PG
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping lives as long as self and &mut self makes this
        // the only view (device DMA writes through process_vm_writev, not
        // through a Rust reference).
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len as usize) }
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len as usize) };
    }
}

struct Harness {
    built: BuiltPlatform,
    vfio: Vfio,
    mem: Arc<HostMemory>,
    container: ContainerFile,
    group: Option<GroupFile>,
}

fn errno<T>(r: softvfio::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.errno(),
    }
}

impl Harness {
    fn new() -> Harness {
        let built = BuiltPlatform::reference().unwrap();
        let vfio = Vfio::new(built.platform.clone());
        // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
        // arguments, areas no Rust reference covers while the engine runs.
        let mem = Arc::new(unsafe { HostMemory::current() });
        let container = vfio.open_container(mem.clone());
        Harness {
            built,
            vfio,
            mem,
            container,
            group: None,
        }
    }

    /// Opens group 3, attaches it and sets `iommu_type` (0: none).
    fn attached(iommu_type: u64) -> Harness {
        let mut h = Harness::new();
        h.group = Some(h.vfio.open_group(3).unwrap());
        assert_eq!(h.set_container(3), 0);
        if iommu_type != 0 {
            assert_eq!(h.c(VFIO_SET_IOMMU, iommu_type), 0);
        }
        h
    }

    fn c(&self, req: u64, arg: u64) -> i32 {
        errno(
            self.vfio
                .container_ioctl(&self.container, req, arg, self.mem.as_ref()),
        )
    }

    fn cval(&self, req: u64, arg: u64) -> i64 {
        self.vfio
            .container_ioctl(&self.container, req, arg, self.mem.as_ref())
            .unwrap()
    }

    fn g(&self, req: u64, arg: u64, fd: FdLookupKind) -> Result<IoctlOutcome, i32> {
        let cf = self.container.clone();
        let mut lookup = |_fd: i32| match fd {
            FdLookupKind::Container => FdLookup::Container(cf.clone()),
            FdLookupKind::NotOpen => FdLookup::NotOpen,
            FdLookupKind::Foreign => FdLookup::NotContainer,
        };
        self.vfio
            .group_ioctl(
                self.group.as_ref().unwrap(),
                req,
                arg,
                self.mem.as_ref(),
                &mut lookup,
            )
            .map_err(|e| e.errno())
    }

    fn set_container(&self, fd: i32) -> i32 {
        let kind = if fd < 0 || fd == 999 {
            FdLookupKind::NotOpen
        } else {
            FdLookupKind::Container
        };
        match self.g(VFIO_GROUP_SET_CONTAINER, ptr(&fd), kind) {
            Ok(_) => 0,
            Err(e) => e,
        }
    }

    fn status(&self) -> u32 {
        let mut st = vfio_group_status {
            argsz: size_of::<vfio_group_status>() as u32,
            flags: 0,
        };
        self.g(VFIO_GROUP_GET_STATUS, out(&mut st), FdLookupKind::Container)
            .ok()
            .unwrap();
        st.flags
    }

    fn device(&self, name: &str) -> Result<DeviceFile, i32> {
        let c = std::ffi::CString::new(name).unwrap();
        match self.g(
            VFIO_GROUP_GET_DEVICE_FD,
            c.as_ptr() as u64,
            FdLookupKind::Container,
        )? {
            IoctlOutcome::Device(d) => Ok(d),
            IoctlOutcome::Value(_) => panic!("no device"),
        }
    }

    fn map(&self, iova: u64, vaddr: u64, size: u64, flags: u32) -> i32 {
        let m = vfio_iommu_type1_dma_map {
            argsz: size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags,
            vaddr,
            iova,
            size,
        };
        self.c(VFIO_IOMMU_MAP_DMA, ptr(&m))
    }

    /// Unmap; returns (errno, size field afterwards).
    fn unmap(&self, iova: u64, size: u64, flags: u32) -> (i32, u64) {
        let u = [
            (size_of::<vfio_iommu_type1_dma_unmap>() as u64) | (u64::from(flags) << 32),
            iova,
            size,
        ];
        let r = self.c(VFIO_IOMMU_UNMAP_DMA, ptr(&u));
        (r, u[2])
    }

    fn dma_avail(&self) -> u32 {
        let buf = vec![0u8; 4096];
        let mut b = buf;
        b[..4].copy_from_slice(&4096u32.to_ne_bytes());
        assert_eq!(self.c(VFIO_IOMMU_GET_INFO, b.as_ptr() as u64), 0);
        let mut off = u32::from_ne_bytes(b[16..20].try_into().unwrap()) as usize;
        while off != 0 {
            let id = u16::from_ne_bytes(b[off..off + 2].try_into().unwrap());
            if u32::from(id) == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL {
                return u32::from_ne_bytes(b[off + 8..off + 12].try_into().unwrap());
            }
            off = u32::from_ne_bytes(b[off + 4..off + 8].try_into().unwrap()) as usize;
        }
        panic!("no DMA_AVAIL capability");
    }

    fn dirty(&self, flags: u32) -> i32 {
        let d: [u32; 2] = [8, flags];
        self.c(VFIO_IOMMU_DIRTY_PAGES, ptr(&d))
    }

    fn dirty_get(&self, iova: u64, size: u64, pgsize: u64, bmsize: u64, bm: &mut [u64]) -> i32 {
        // struct vfio_iommu_type1_dirty_bitmap + _get: argsz, flags, iova, size, pgsize, size, data
        let d: [u64; 6] = [
            48 | (u64::from(VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP) << 32),
            iova,
            size,
            pgsize,
            bmsize,
            bm.as_mut_ptr() as u64,
        ];
        self.c(VFIO_IOMMU_DIRTY_PAGES, ptr(&d))
    }
}

#[derive(Clone, Copy)]
enum FdLookupKind {
    Container,
    NotOpen,
    Foreign,
}

#[test]
fn container_and_extensions() {
    let h = Harness::new();
    assert_eq!(h.cval(VFIO_GET_API_VERSION, 0), 0);
    let want = [
        (1, 1),
        (2, 0),
        (3, 1),
        (4, 0),
        (5, 0),
        (6, 1),
        (7, 0),
        (8, 0),
        (9, 1),
        (10, 0),
        (11, 0),
    ];
    for (ext, v) in want {
        assert_eq!(h.cval(VFIO_CHECK_EXTENSION, ext), v, "extension {ext}");
    }
    assert_eq!(h.c(VFIO_SET_IOMMU, 3), EINVAL);
    assert_eq!(h.map(0, 0, PG, RW), EINVAL);
}

#[test]
fn extensions_after_set_iommu_match_the_kernel() {
    // oracle: v1_check_extension_* and v2_check_extension_*
    for t in [1u64, 3] {
        let h = Harness::attached(t);
        let want = [
            (1, 1),
            (2, 0),
            (3, 1),
            (4, 0),
            (5, 0),
            (6, 1),
            (7, 0),
            (8, 0),
            (9, 1),
            (10, 1),
            (11, 0),
        ];
        for (ext, v) in want {
            assert_eq!(
                h.cval(VFIO_CHECK_EXTENSION, ext),
                v,
                "type {t} extension {ext}"
            );
        }
    }
}

#[test]
fn set_iommu_rules() {
    let h = Harness::attached(0);
    assert_eq!(h.status(), 0x3);
    assert_eq!(h.c(VFIO_SET_IOMMU, 2), libc::ENODEV);
    // oracle: set_iommu_nesting EINVAL, then v1 still possible
    assert_eq!(h.c(VFIO_SET_IOMMU, 6), EINVAL);
    assert_eq!(h.c(VFIO_SET_IOMMU, 1), 0);
    assert_eq!(h.c(VFIO_SET_IOMMU, 3), EINVAL);
}

#[test]
fn group_rules() {
    let h = Harness::new();
    let g = h.vfio.open_group(3).unwrap();
    // oracle: group_open_twice EBUSY
    assert_eq!(errno(h.vfio.open_group(3)), libc::EBUSY);
    assert_eq!(errno(h.vfio.open_group(4)), libc::ENOENT);
    let mut h = h;
    h.group = Some(g);
    assert_eq!(h.status(), 0x1);
    // oracle: device_fd_no_container EINVAL
    assert_eq!(h.device("0000:00:03.0").err(), Some(EINVAL));
    // oracle: set_container_minus1 / badfd EBADF, devnull EINVAL
    assert_eq!(h.set_container(-1), libc::EBADF);
    assert_eq!(h.set_container(999), libc::EBADF);
    let fd = 5i32;
    assert_eq!(
        h.g(VFIO_GROUP_SET_CONTAINER, ptr(&fd), FdLookupKind::Foreign)
            .err(),
        Some(EINVAL)
    );
    // oracle: set_container_badptr EFAULT
    assert_eq!(
        h.g(VFIO_GROUP_SET_CONTAINER, 8, FdLookupKind::Container)
            .err(),
        Some(libc::EFAULT)
    );
    assert_eq!(h.set_container(3), 0);
    // oracle: set_container_again EINVAL
    assert_eq!(h.set_container(3), EINVAL);
    // oracle: device_fd_no_iommu EINVAL
    assert_eq!(h.device("0000:00:03.0").err(), Some(EINVAL));
    assert_eq!(h.c(VFIO_SET_IOMMU, 3), 0);
    assert_eq!(h.device("0000:ff:1f.7").err(), Some(libc::ENODEV));
    // oracle: device_fd_long_name EINVAL, device_fd_bad_ptr EFAULT
    assert_eq!(h.device(&"a".repeat(4999)).err(), Some(EINVAL));
    assert_eq!(
        h.g(VFIO_GROUP_GET_DEVICE_FD, 8, FdLookupKind::Container)
            .err(),
        Some(libc::EFAULT)
    );
    let d1 = h.device("0000:00:03.0").unwrap();
    // oracle: device_fd_twice ok
    let d2 = h.device("0000:00:03.0").unwrap();
    assert_eq!(
        h.g(VFIO_GROUP_UNSET_CONTAINER, 0, FdLookupKind::Container)
            .err(),
        Some(libc::EBUSY)
    );
    // oracle: container_unknown_ioctl / group_unknown_ioctl ENOTTY
    assert_eq!(h.c(vfio_io(15), 0), libc::ENOTTY);
    assert_eq!(
        h.g(vfio_io(15), 0, FdLookupKind::Container).err(),
        Some(libc::ENOTTY)
    );
    // Group file closed while devices are open: reopening is EBUSY.
    h.vfio.release_group(h.group.take().unwrap());
    assert_eq!(errno(h.vfio.open_group(3)), libc::EBUSY);
    h.vfio.release_device(d1);
    h.vfio.release_device(d2);
    // oracle: group_reopen_after_close ok; the container went back to unset
    let g = h.vfio.open_group(3).unwrap();
    assert!(!h.container.container.iommu_set());
    h.group = Some(g);
    assert_eq!(h.status(), 0x1);
}

#[test]
fn container_fd_closed_while_group_attached() {
    let mut h = Harness::attached(3);
    h.vfio.release_container(h.container.clone());
    // oracle: status_after_container_close 0x3, device_fd_after_container_close ok
    assert_eq!(h.status(), 0x3);
    let d = h.device("0000:00:03.0").unwrap();
    h.vfio.release_device(d);
    assert_eq!(
        h.g(VFIO_GROUP_UNSET_CONTAINER, 0, FdLookupKind::Container)
            .ok()
            .map(|_| 0),
        Some(0)
    );
    h.vfio.release_group(h.group.take().unwrap());
}

#[test]
fn get_info_layout_matches_the_kernel() {
    let h = Harness::attached(3);
    let mut buf = vec![0u8; 4096];
    // info_argsz_0
    assert_eq!(h.c(VFIO_IOMMU_GET_INFO, buf.as_mut_ptr() as u64), EINVAL);
    // info_minimal: argsz 16
    buf[..4].copy_from_slice(&16u32.to_ne_bytes());
    assert_eq!(h.c(VFIO_IOMMU_GET_INFO, buf.as_mut_ptr() as u64), 0);
    assert_eq!(u32::from_ne_bytes(buf[4..8].try_into().unwrap()), 0x3);
    assert_eq!(
        u64::from_ne_bytes(buf[8..16].try_into().unwrap()),
        0x4020_1000
    );
    assert_eq!(u32::from_ne_bytes(buf[0..4].try_into().unwrap()), 116);
    assert_eq!(&buf[16..24], &[0u8; 8], "nothing written past minsz");
    // info_no_room_for_caps: argsz 24 → argsz 116, cap_offset 0
    buf.fill(0);
    buf[..4].copy_from_slice(&24u32.to_ne_bytes());
    buf[16..20].copy_from_slice(&0xffu32.to_ne_bytes());
    assert_eq!(h.c(VFIO_IOMMU_GET_INFO, buf.as_mut_ptr() as u64), 0);
    assert_eq!(u32::from_ne_bytes(buf[0..4].try_into().unwrap()), 116);
    assert_eq!(u32::from_ne_bytes(buf[16..20].try_into().unwrap()), 0);
    // info_full
    buf.fill(0);
    buf[..4].copy_from_slice(&4096u32.to_ne_bytes());
    assert_eq!(h.c(VFIO_IOMMU_GET_INFO, buf.as_mut_ptr() as u64), 0);
    let u16at = |o: usize| u16::from_ne_bytes(buf[o..o + 2].try_into().unwrap());
    let u32at = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().unwrap());
    let u64at = |o: usize| u64::from_ne_bytes(buf[o..o + 8].try_into().unwrap());
    assert_eq!(u32at(0), 4096);
    assert_eq!(u32at(16), 24);
    // cap_migration off=24 ver=1 flags=0 pgsize_bitmap=0x1000 max=0x10000000
    assert_eq!((u16at(24), u16at(26), u32at(28)), (2, 1, 56));
    assert_eq!((u32at(32), u64at(40), u64at(48)), (0, 0x1000, 0x1000_0000));
    // cap_dma_avail off=56 avail=65535
    assert_eq!(
        (u16at(56), u16at(58), u32at(60), u32at(64)),
        (3, 1, 68, 65535)
    );
    // cap_iova_range off=68 nr=2
    assert_eq!((u16at(68), u16at(70), u32at(72), u32at(76)), (1, 1, 0, 2));
    assert_eq!((u64at(84), u64at(92)), (0, 0xfedf_ffff));
    assert_eq!((u64at(100), u64at(108)), (0xfef0_0000, 0x7f_ffff_ffff));
    assert_eq!(&buf[116..124], &[0u8; 8]);
}

#[test]
fn map_rules() {
    let h = Harness::attached(3);
    let b = Anon::new(64);
    assert_eq!(h.map(0x10_0000, b.addr, PG, RW), 0);
    assert_eq!(h.dma_avail(), 65534);
    assert_eq!(h.map(0x20_0800, b.addr, PG, RW), EINVAL);
    assert_eq!(h.map(0x20_0000, b.addr + 8, PG, RW), EINVAL);
    assert_eq!(h.map(0x20_0000, b.addr, PG + PG / 2, RW), EINVAL);
    assert_eq!(h.map(0x20_0000, b.addr, 0, RW), EINVAL);
    assert_eq!(h.map(0x20_0000, b.addr, PG, 0), EINVAL);
    assert_eq!(h.map(0x30_0000, b.addr, PG, VFIO_DMA_MAP_FLAG_READ), 0);
    assert_eq!(h.map(0x40_0000, b.addr, PG, VFIO_DMA_MAP_FLAG_WRITE), 0);
    assert_eq!(h.map(0x50_0000, b.addr, PG, RW | (1 << 7)), EINVAL);
    let small = vfio_iommu_type1_dma_map {
        argsz: 8,
        flags: RW,
        vaddr: b.addr,
        iova: 0x60_0000,
        size: PG,
    };
    assert_eq!(h.c(VFIO_IOMMU_MAP_DMA, ptr(&small)), EINVAL);
    let mut large = [0u8; 96];
    large[..32].copy_from_slice(unsafe_bytes(&vfio_iommu_type1_dma_map {
        argsz: 96,
        flags: RW,
        vaddr: b.addr,
        iova: 0x60_0000,
        size: PG,
    }));
    assert_eq!(h.c(VFIO_IOMMU_MAP_DMA, large.as_ptr() as u64), 0);
    assert_eq!(h.map(0x10_0000, b.addr, PG, RW), libc::EEXIST);
    assert_eq!(h.map(0x100_0000, b.addr, 4 * PG, RW), 0);
    assert_eq!(h.map(0x100_0000 - PG, b.addr, 2 * PG, RW), libc::EEXIST);
    assert_eq!(h.map(0x100_0000 + 3 * PG, b.addr, 2 * PG, RW), libc::EEXIST);
    assert_eq!(h.map(0x100_0000 + PG, b.addr, PG, RW), libc::EEXIST);
    assert_eq!(h.map(0x100_0000 - PG, b.addr, 8 * PG, RW), libc::EEXIST);
    assert_eq!(h.map(0x100_0000 - PG, b.addr, PG, RW), 0);
    assert_eq!(h.map(0x100_0000 + 4 * PG, b.addr, PG, RW), 0);
    assert_eq!(h.map(0x200_0000, b.addr, PG, RW), 0);
    assert_eq!(h.map(0xffff_ffff_ffff_f000, b.addr, 2 * PG, RW), EINVAL);
    assert_eq!(h.map(0xffff_ffff_ffff_f000, b.addr, PG, RW), EINVAL);
    assert_eq!(h.map(0x300_0000, 0xffff_ffff_ffff_f000, 2 * PG, RW), EINVAL);
    assert_eq!(h.map(1 << 48, b.addr, PG, RW), EINVAL);
    assert_eq!(h.map(1 << 39, b.addr, PG, RW), EINVAL);
    assert_eq!(h.map(0xfee0_0000, b.addr, PG, RW), EINVAL);
    assert_eq!(h.map(0xfedf_f000, b.addr, 2 * PG, RW), EINVAL);
    assert_eq!(h.map(0xfedf_f000, b.addr, PG, RW), 0);
    assert_eq!(h.map(0xfef0_0000, b.addr, PG, RW), 0);
    let none = Anon::with_prot(4, libc::PROT_NONE);
    assert_eq!(h.map(0x400_0000, none.addr, PG, RW), libc::EFAULT);
    let gone = none.addr;
    drop(none);
    assert_eq!(h.map(0x400_0000, gone, PG, RW), libc::EFAULT);
    // oracle: map_null_vaddr EFAULT
    assert_eq!(h.map(0x400_0000, 0, PG, RW), libc::EFAULT);
    let ro = Anon::with_prot(4, libc::PROT_READ);
    assert_eq!(h.map(0x500_0000, ro.addr, PG, RW), libc::EFAULT);
    assert_eq!(h.map(0x500_0000, ro.addr, PG, VFIO_DMA_MAP_FLAG_READ), 0);
    // Half backed: the mapping after `b` is a guard we create as PROT_NONE.
    let hb = Anon::new(4);
    // SAFETY: making the last two pages of our own mapping inaccessible.
    unsafe {
        libc::mprotect(
            hb.at(2) as *mut libc::c_void,
            (2 * PG) as usize,
            libc::PROT_NONE,
        )
    };
    let before = h.mem.stats();
    assert_eq!(h.map(0x600_0000, hb.addr, 4 * PG, RW), libc::EFAULT);
    assert_eq!(
        h.mem.stats().pin_refs,
        before.pin_refs,
        "nothing pinned by the failed map"
    );
    assert_eq!(h.dma_avail(), 65524);
}

/// The bytes of a plain C struct.
fn unsafe_bytes<T>(v: &T) -> &[u8] {
    // SAFETY: T is a repr(C) struct of integers (vfio-bindings); reading its
    // bytes is defined.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }
}

#[test]
fn unmap_rules() {
    let h = Harness::attached(3);
    let b = Anon::new(64);
    assert_eq!(h.map(0x10_0000, b.addr, 3 * PG, RW), 0);
    assert_eq!(h.unmap(0x10_0000 + PG, PG, 0), (EINVAL, PG));
    assert_eq!(h.unmap(0x10_0000, PG, 0), (EINVAL, PG));
    assert_eq!(h.unmap(0x10_0000 + 2 * PG, PG, 0), (EINVAL, PG));
    assert_eq!(h.unmap(0x10_0000 - PG, 2 * PG, 0), (EINVAL, 2 * PG));
    assert_eq!(h.unmap(0x10_0000 + 2 * PG, 4 * PG, 0), (EINVAL, 4 * PG));
    assert_eq!(h.unmap(0x10_0000, 3 * PG, 0), (0, 3 * PG));
    assert_eq!(h.unmap(0x10_0000, 3 * PG, 0), (0, 0));
    h.map(0x20_0000, b.addr, PG, RW);
    h.map(0x20_1000, b.at(1), 2 * PG, RW);
    h.map(0x30_0000, b.at(4), PG, RW);
    assert_eq!(h.unmap(0x20_0000, 0x10_1000, 0), (0, 0x4000));
    assert_eq!(h.unmap(0x70_0000, PG, 0), (0, 0));
    assert_eq!(h.unmap(0x70_0000, 0, 0), (EINVAL, 0));
    assert_eq!(h.unmap(0x70_0800, PG, 0), (EINVAL, PG));
    assert_eq!(h.unmap(0x70_0000, PG + 1, 0), (EINVAL, PG + 1));
    assert_eq!(h.unmap(0xffff_ffff_ffff_f000, 2 * PG, 0), (EINVAL, 2 * PG));
    assert_eq!(h.unmap(0x70_0000, PG, 1 << 6), (EINVAL, PG));
    let small = [8u64, 0x70_0000, PG];
    assert_eq!(h.c(VFIO_IOMMU_UNMAP_DMA, ptr(&small)), EINVAL);
    h.map(0x80_0000, b.addr, PG, RW);
    h.map(0x90_0000, b.at(1), PG, RW);
    assert_eq!(
        h.unmap(0x80_0000, PG, VFIO_DMA_UNMAP_FLAG_ALL),
        (EINVAL, PG)
    );
    assert_eq!(h.unmap(0, 0, VFIO_DMA_UNMAP_FLAG_ALL), (0, 2 * PG));
    assert_eq!(h.unmap(0, 0, VFIO_DMA_UNMAP_FLAG_ALL), (0, 0));
    assert_eq!(
        h.unmap(
            0,
            0,
            VFIO_DMA_UNMAP_FLAG_ALL | VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP
        )
        .0,
        EINVAL
    );
    assert_eq!(h.dma_avail(), 65535);
    assert_eq!(h.mem.account().locked_pages(), 0);
}

#[test]
fn v1_unmap_rules() {
    let h = Harness::attached(1);
    let b = Anon::new(16);
    h.map(0x10_0000, b.addr, 4 * PG, RW);
    assert_eq!(h.unmap(0x10_0000 + PG, PG, 0), (0, 0));
    assert_eq!(h.unmap(0x10_0000, PG, 0), (0, 4 * PG));
    assert_eq!(h.unmap(0, 0, VFIO_DMA_UNMAP_FLAG_ALL), (0, 0));
    // oracle: v1 vaddr invalidate/update work; unmap inside 0; straddle start unmaps whole
    h.map(0x10_0000, b.addr, 4 * PG, RW);
    assert_eq!(
        h.unmap(0x10_0000, 4 * PG, VFIO_DMA_UNMAP_FLAG_VADDR),
        (0, 4 * PG)
    );
    assert_eq!(h.map(0x10_0000, b.addr, 4 * PG, VFIO_DMA_MAP_FLAG_VADDR), 0);
    assert_eq!(h.unmap(0x10_1000, PG, 0), (0, 0));
    assert_eq!(h.unmap(0xf_f000, 2 * PG, 0), (0, 4 * PG));
    // oracle: v1_dirty_start EACCES (also with a short argsz)
    assert_eq!(h.dirty(VFIO_IOMMU_DIRTY_PAGES_FLAG_START), libc::EACCES);
    let d: [u32; 2] = [4, VFIO_IOMMU_DIRTY_PAGES_FLAG_START];
    assert_eq!(h.c(VFIO_IOMMU_DIRTY_PAGES, ptr(&d)), libc::EACCES);
}

#[test]
fn vaddr_rules() {
    let h = Harness::attached(3);
    let b = Anon::new(16);
    let b2 = Anon::new(16);
    assert_eq!(h.map(0x10_0000, b.addr, 4 * PG, RW), 0);
    assert_eq!(
        h.unmap(0x10_0000, 4 * PG, VFIO_DMA_UNMAP_FLAG_VADDR),
        (0, 4 * PG)
    );
    assert_eq!(
        h.unmap(0x10_0000, 4 * PG, VFIO_DMA_UNMAP_FLAG_VADDR),
        (EINVAL, 4 * PG)
    );
    assert_eq!(h.map(0x10_0000, b2.addr, 4 * PG, RW), libc::EEXIST);
    assert_eq!(
        h.map(0x10_0000, b2.addr, 2 * PG, VFIO_DMA_MAP_FLAG_VADDR),
        EINVAL
    );
    assert_eq!(
        h.map(
            0x10_0000,
            b2.addr,
            4 * PG,
            VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_VADDR
        ),
        EINVAL
    );
    assert_eq!(
        h.map(0x10_0800, b2.addr, 4 * PG, VFIO_DMA_MAP_FLAG_VADDR),
        EINVAL
    );
    assert_eq!(
        h.map(0x10_0000, b2.addr, 4 * PG, VFIO_DMA_MAP_FLAG_VADDR),
        0
    );
    assert_eq!(
        h.map(0x10_0000, b2.addr, 4 * PG, VFIO_DMA_MAP_FLAG_VADDR),
        EINVAL
    );
    assert_eq!(
        h.map(0x90_0000, b2.addr, 4 * PG, VFIO_DMA_MAP_FLAG_VADDR),
        libc::ENOENT
    );
    assert_eq!(
        h.unmap(0x10_0000, 2 * PG, VFIO_DMA_UNMAP_FLAG_VADDR),
        (EINVAL, 2 * PG)
    );
    assert_eq!(
        h.unmap(0, 0, VFIO_DMA_UNMAP_FLAG_VADDR | VFIO_DMA_UNMAP_FLAG_ALL),
        (0, 4 * PG)
    );
    assert_eq!(
        h.unmap(
            0x10_0000,
            4 * PG,
            VFIO_DMA_UNMAP_FLAG_VADDR | VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP
        )
        .0,
        EINVAL
    );
    assert_eq!(h.unmap(0x10_0000, 4 * PG, 0), (0, 4 * PG));
    assert_eq!(h.mem.account().locked_pages(), 0);
}

#[test]
fn dirty_rules() {
    let h = Harness::attached(3);
    let b = Anon::new(64);
    let mut bm = [0u64; 8];
    h.map(0x10_0000, b.addr, 8 * PG, RW);
    assert_eq!(h.dirty_get(0x10_0000, 8 * PG, PG, 8, &mut bm), EINVAL);
    assert_eq!(h.dirty(0), EINVAL);
    assert_eq!(
        h.dirty(VFIO_IOMMU_DIRTY_PAGES_FLAG_START | VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP),
        EINVAL
    );
    assert_eq!(h.dirty(VFIO_IOMMU_DIRTY_PAGES_FLAG_START), 0);
    assert_eq!(h.dirty(VFIO_IOMMU_DIRTY_PAGES_FLAG_START), 0);
    assert_eq!(h.dirty_get(0x10_0000, 8 * PG, PG, 8, &mut bm), 0);
    assert_eq!(bm[0], 0xff);
    bm[0] = 0;
    assert_eq!(h.dirty_get(0x10_0000, 8 * PG, PG, 8, &mut bm), 0);
    assert_eq!(bm[0], 0xff);
    assert_eq!(h.dirty_get(0x10_0000, 8 * PG, 2 * PG, 8, &mut bm), EINVAL);
    assert_eq!(h.dirty_get(0x10_0000, 8 * PG, PG, 0, &mut bm), EINVAL);
    assert_eq!(h.dirty_get(0x10_0000, 4 * PG, PG, 8, &mut bm), EINVAL);
    assert_eq!(h.dirty_get(0x90_0000, 4 * PG, PG, 8, &mut bm), 0);
    assert_eq!(h.dirty_get(0x10_0800, 8 * PG, PG, 8, &mut bm), EINVAL);
    // A bitmap pointer outside user space is EINVAL (access_ok), an
    // unmapped one EFAULT.
    let far = [
        48 | (u64::from(VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP) << 32),
        0x10_0000,
        8 * PG,
        PG,
        8,
        1 << 47,
    ];
    assert_eq!(h.c(VFIO_IOMMU_DIRTY_PAGES, ptr(&far)), EINVAL);
    let unmapped = [
        48 | (u64::from(VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP) << 32),
        0x10_0000,
        8 * PG,
        PG,
        8,
        8,
    ];
    assert_eq!(h.c(VFIO_IOMMU_DIRTY_PAGES, ptr(&unmapped)), libc::EFAULT);
    assert_eq!(h.map(0x20_0000, b.at(16), 4 * PG, RW), 0);
    bm[0] = 0;
    assert_eq!(h.dirty_get(0x20_0000, 4 * PG, PG, 8, &mut bm), 0);
    assert_eq!(bm[0], 0xf);
    // Two mappings in one request, the second at a bit offset of 16: its
    // bits are ORed in after the first's.
    bm.fill(0);
    assert_eq!(h.dirty_get(0x10_0000, 0x10_4000, PG, 64, &mut bm), 0);
    assert_eq!(bm[0], 0xff);
    assert_eq!(bm[4], 0xf);
    // unmap with a dirty bitmap
    bm.fill(0);
    let u: [u64; 6] = [
        48 | (u64::from(VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP) << 32),
        0x10_0000,
        8 * PG,
        PG,
        8,
        bm.as_mut_ptr() as u64,
    ];
    assert_eq!(h.c(VFIO_IOMMU_UNMAP_DMA, ptr(&u)), 0);
    assert_eq!((u[2], bm[0]), (0x8000, 0xff));
    // oracle: unmap_bitmap_not_tracking EINVAL
    assert_eq!(h.dirty(VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP), 0);
    assert_eq!(h.dirty(VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP), 0);
    let u2: [u64; 6] = [
        48 | (u64::from(VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP) << 32),
        0x20_0000,
        4 * PG,
        PG,
        8,
        bm.as_mut_ptr() as u64,
    ];
    assert_eq!(h.c(VFIO_IOMMU_UNMAP_DMA, ptr(&u2)), EINVAL);
}

#[test]
fn accounting_counts_per_mapping() {
    let h = Harness::attached(3);
    let b = Anon::new(64);
    let acct = || h.mem.account().locked_pages();
    h.map(0x10_0000, b.addr, 16 * PG, RW);
    assert_eq!(acct(), 16);
    h.map(0x20_0000, b.addr, 16 * PG, RW);
    assert_eq!(acct(), 32);
    assert_eq!(h.mem.pin_count(b.addr), 2);
    h.unmap(0x10_0000, 16 * PG, 0);
    assert_eq!(acct(), 16);
    assert_eq!(h.mem.pin_count(b.addr), 1);
    h.unmap(0, 0, VFIO_DMA_UNMAP_FLAG_ALL);
    assert_eq!(acct(), 0);
    assert_eq!(h.mem.pin_count(b.addr), 0);
}

#[test]
fn device_regions_and_irqs_match_the_kernel() {
    let h = Harness::attached(3);
    let d = h.device("0000:00:03.0").unwrap();
    let dev = |req: u64, arg: u64| {
        errno(h.vfio.device_ioctl(
            &d,
            req,
            arg,
            h.mem.as_ref(),
            &mut softvfio::testing::no_eventfds,
        ))
    };
    // oracle: device_info 0 flags=0x2 regions=9 irqs=5 cap_offset=0 (argsz 20)
    let mut info = [20u32, 0, 0, 0, 0xff, 0xee];
    assert_eq!(dev(VFIO_DEVICE_GET_INFO, out(&mut info)), 0);
    // Plus softvfio's VFIO_DEVICE_FLAGS_SVM (1 << 30, docs/SVM.md): edu
    // supports PASID bind here, which the kernel's vfio-pci does not offer.
    assert_eq!(info[1] & (1 << 30), 1 << 30);
    info[1] &= !(1 << 30);
    assert_eq!(info, [20, 0x2, 9, 5, 0, 0xee]);
    let mut small = [12u32, 0, 0, 0];
    assert_eq!(dev(VFIO_DEVICE_GET_INFO, out(&mut small)), EINVAL);
    // oracle: region_info_*; BAR0 is read/write/mmap (0x7), as on Linux:
    // its mapping traps each access into the model (docs/MMIO.md).
    let want: [(u32, i32, u32, u64); 10] = [
        (0, 0, 0x7, 0x10_0000),
        (1, 0, 0, 0),
        (2, 0, 0, 0),
        (3, 0, 0, 0),
        (4, 0, 0, 0),
        (5, 0, 0, 0),
        (6, 0, 0, 0),
        (7, 0, 0x3, 0x100),
        (8, EINVAL, 0, 0),
        (9, EINVAL, 0, 0),
    ];
    for (index, err, flags, size) in want {
        let mut ri = vfio_region_info {
            argsz: 32,
            flags: 0,
            index,
            cap_offset: 0,
            size: 0,
            offset: 0,
        };
        assert_eq!(
            dev(VFIO_DEVICE_GET_REGION_INFO, out(&mut ri)),
            err,
            "region {index}"
        );
        if err == 0 {
            assert_eq!(
                (ri.flags, ri.size, ri.offset),
                (flags, size, u64::from(index) << 40),
                "region {index}"
            );
        }
    }
    // oracle: irq_info_*
    let want_irq: [(u32, i32, u32, u32); 6] = [
        (0, 0, 0x7, 1),
        (1, 0, 0x9, 1),
        (2, 0, 0x9, 0),
        (3, EINVAL, 0, 0),
        (4, 0, 0x9, 1),
        (5, EINVAL, 0, 0),
    ];
    for (index, err, flags, count) in want_irq {
        let mut ii = vfio_irq_info {
            argsz: 16,
            flags: 0,
            index,
            count: 0,
        };
        assert_eq!(
            dev(VFIO_DEVICE_GET_IRQ_INFO, out(&mut ii)),
            err,
            "irq {index}"
        );
        if err == 0 {
            assert_eq!((ii.flags, ii.count), (flags, count), "irq {index}");
        }
    }
    // oracle: device_reset EINVAL
    assert_eq!(dev(VFIO_DEVICE_RESET, 0), EINVAL);
    // config space: the kernel's first 0x44 bytes (command as vfio-pci virtualises it)
    let mut cfg = [0u8; 256];
    let n = h
        .vfio
        .device_pread(&d, h.mem.as_ref(), cfg.as_mut_ptr() as u64, 256, 7 << 40)
        .unwrap();
    assert_eq!(n, 256);
    assert_eq!(&cfg[0..4], &[0x34, 0x12, 0xe8, 0x11]);
    assert_eq!(&cfg[8..12], &[0x10, 0x00, 0xff, 0x00]);
    assert_eq!(&cfg[0x10..0x14], &[0x00, 0x00, 0xa0, 0xfe]);
    assert_eq!(&cfg[0x2c..0x30], &[0xf4, 0x1a, 0x00, 0x11]);
    assert_eq!(cfg[0x34], 0x40);
    assert_eq!(&cfg[0x3c..0x3e], &[0x0b, 0x01]);
    assert_eq!(&cfg[0x40..0x44], &[0x05, 0x00, 0x80, 0x00]);
    // oracle: config_read_past_end EFAULT, bar0 past end EINVAL, straddle short
    let mut v = [0u8; 8];
    let rd = |off: u64, len: u64, v: &mut [u8; 8]| {
        h.vfio
            .device_pread(&d, h.mem.as_ref(), v.as_mut_ptr() as u64, len, off)
            .map_err(|e| e.errno())
    };
    assert_eq!(rd((7 << 40) + 256, 4, &mut v), Err(libc::EFAULT));
    assert_eq!(rd(0x10_0000, 4, &mut v), Err(EINVAL));
    assert_eq!(rd(0xf_fffe, 4, &mut v), Ok(2));
    assert_eq!(rd(9 << 40, 4, &mut v), Err(EINVAL));
    assert_eq!(rd(1 << 40, 4, &mut v), Err(EINVAL));
    assert_eq!(rd(8 << 40, 4, &mut v), Err(EINVAL));
    assert_eq!(rd(0, 8, &mut v), Ok(8));
    assert_eq!(u64::from_ne_bytes(v), 0x0100_00ed);
    // BAR sizing through config space
    let ones = 0xffff_ffffu32;
    h.vfio
        .device_pwrite(&d, h.mem.as_ref(), ptr(&ones), 4, (7 << 40) + 0x10)
        .unwrap();
    assert_eq!(rd((7 << 40) + 0x10, 4, &mut v), Ok(4));
    assert_eq!(u32::from_ne_bytes(v[..4].try_into().unwrap()), 0xfff0_0000);
    h.vfio.release_device(d);
}

/// The probe's `case_dma`, through the byte-level API and the edu device.
#[test]
fn dma_through_the_iommu() {
    let h = Harness::attached(3);
    let d = h.device("0000:00:03.0").unwrap();
    let wr = |off: u64, val: u64| {
        h.vfio
            .device_pwrite(&d, h.mem.as_ref(), ptr(&val), 8, off)
            .unwrap();
    };
    let cmd = 0x0006u16;
    h.vfio
        .device_pwrite(&d, h.mem.as_ref(), ptr(&cmd), 2, (7 << 40) + 4)
        .unwrap();
    let edu_dma = |src: u64, dst: u64, cnt: u64, to_ram: bool| {
        wr(0x80, src);
        wr(0x88, dst);
        wr(0x90, cnt);
        wr(0x98, 1 | if to_ram { 2 } else { 0 });
    };
    let mut src = Anon::new(4);
    let mut dst = Anon::new(4);
    for (i, b) in src.bytes().iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    dst.bytes().fill(0);
    assert_eq!(
        h.map(0x100_0000, src.addr, 4 * PG, VFIO_DMA_MAP_FLAG_READ),
        0
    );
    assert_eq!(h.map(0x200_0000, dst.addr, 4 * PG, RW), 0);
    edu_dma(0x100_0000 + 100, 0x40000, 3000, false);
    edu_dma(0x40000, 0x200_0000 + 200, 3000, true);
    assert_eq!(&src.bytes()[100..3100], &dst.bytes()[200..3200]);
    // A write into a read-only mapping is blocked and logged.
    src.bytes()[..PG as usize].fill(0x11);
    dst.bytes()[..64].fill(0x22);
    edu_dma(0x200_0000, 0x40000, 64, false);
    edu_dma(0x40000, 0x100_0000, 64, true);
    assert_eq!(src.bytes()[0], 0x11);
    let faults = h.built.iommu.faults();
    assert_eq!(faults.len(), 1);
    assert_eq!((faults[0].rid, faults[0].iova), (0x18, 0x100_0000));
    assert_eq!(format!("{:?}", faults[0].reason), "NoWrite");
    // After unmap the old pages are out of reach.
    assert_eq!(h.unmap(0x200_0000, 4 * PG, 0), (0, 4 * PG));
    dst.bytes()[..64].fill(0x33);
    src.bytes()[..64].fill(0x44);
    assert_eq!(
        h.map(0x100_0000 + 8 * PG, src.addr, PG, VFIO_DMA_MAP_FLAG_READ),
        0
    );
    edu_dma(0x100_0000 + 8 * PG, 0x40000, 64, false);
    edu_dma(0x40000, 0x200_0000, 64, true);
    assert_eq!(dst.bytes()[0], 0x33);
    // vaddr invalidated: the pinned pages keep working.
    assert_eq!(
        h.unmap(0x100_0000, 4 * PG, VFIO_DMA_UNMAP_FLAG_VADDR),
        (0, 4 * PG)
    );
    assert_eq!(h.map(0x300_0000, dst.addr, PG, RW), 0);
    src.bytes()[..64].fill(0x55);
    edu_dma(0x100_0000, 0x40000, 64, false);
    edu_dma(0x40000, 0x300_0000, 64, true);
    assert_eq!(dst.bytes()[0], 0x55);
    // Device DMA into memory the user took away: a fault, never a crash.
    // The page is replaced by an inaccessible one rather than unmapped: the
    // tests of this binary share one address space, and a freed range can
    // be another test's next mmap, which the DMA would then reach.
    let victim = Anon::new(1);
    assert_eq!(h.map(0x400_0000, victim.addr, PG, RW), 0);
    // SAFETY: replaces this test's own page; no reference covers it.
    let p = unsafe {
        libc::mmap(
            victim.addr as *mut libc::c_void,
            PG as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, victim.addr);
    edu_dma(0x40000, 0x400_0000, 64, true);
    let last = h.built.iommu.faults().pop().unwrap();
    assert_eq!(
        (last.iova, format!("{:?}", last.reason)),
        (0x400_0000, "MemoryError".to_string())
    );
    drop(victim);
    h.vfio.release_device(d);
    assert_eq!(h.unmap(0, 0, VFIO_DMA_UNMAP_FLAG_ALL).0, 0);
    assert_eq!(h.mem.account().locked_pages(), 0);
}
