//! Shared virtual memory through the VFIO ABI (docs/SVM.md): bind/unbind
//! with the release rules, edu DMA through a PASID into this process's
//! malloc'd memory, two devices, a guest PASID table with nested
//! translation and invalidation passdown, bad input, and one end-to-end
//! static C program under `softvfio run`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use softvfio::device::VfioDeviceModel;
use softvfio::memory::host::HostMemory;
use softvfio::memory::UserMemory;
use softvfio::pasid::*;
use softvfio::uapi::{
    ContainerFile, DeviceFile, FdLookup, IoctlOutcome, Vfio, VFIO_DEVICE_GET_INFO,
    VFIO_GROUP_GET_DEVICE_FD, VFIO_GROUP_SET_CONTAINER, VFIO_IOMMU_MAP_DMA, VFIO_SET_IOMMU,
};
use softvfio_platform::config::{DeviceConfig, DeviceKind};
use softvfio_platform::{build, BuiltPlatform, Config};

const EDU_A: &str = "0000:00:03.0";
const EDU_B: &str = "0000:00:04.0";

/// A user buffer of this process, read and written through the same
/// backend the ioctls use (process_vm_readv/writev), so the compiler never
/// sees memory change behind its back.
struct Buf {
    mem: Arc<HostMemory>,
    bytes: Vec<u8>,
    /// Offset of the (page-aligned, for `aligned`) start in `bytes`.
    start: usize,
    len: usize,
}

impl Buf {
    fn new(mem: &Arc<HostMemory>, len: usize) -> Buf {
        Buf {
            mem: mem.clone(),
            bytes: vec![0; len],
            start: 0,
            len,
        }
    }
    /// A page-aligned buffer (for MAP_DMA).
    fn aligned(mem: &Arc<HostMemory>, len: usize) -> Buf {
        let bytes = vec![0; len + 4096];
        let start = (4096 - bytes.as_ptr() as usize % 4096) % 4096;
        Buf {
            mem: mem.clone(),
            bytes,
            start,
            len,
        }
    }
    fn addr(&self) -> u64 {
        self.bytes.as_ptr() as u64 + self.start as u64
    }
    fn put(&self, off: usize, data: &[u8]) {
        self.mem.write(self.addr() + off as u64, data).unwrap();
    }
    fn put_u32s(&self, v: &[u32]) {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.put(0, &b);
    }
    fn get(&self, off: usize, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read(self.addr() + off as u64, &mut v).unwrap();
        v
    }
    fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.get(off, 4).try_into().unwrap())
    }
}

struct Env {
    built: BuiltPlatform,
    vfio: Arc<Vfio>,
    mem: Arc<HostMemory>,
    container: ContainerFile,
    devs: Vec<DeviceFile>,
}

fn errno(r: softvfio::Result<i64>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.errno(),
    }
}

impl Env {
    /// The reference platform plus, with `two`, a second edu in group 4;
    /// every group in one type1v2 container, every device open.
    fn new(two: bool) -> Env {
        let mut cfg = Config::reference();
        if two {
            cfg.devices.push(DeviceConfig {
                kind: DeviceKind::Edu,
                bdf: EDU_B.into(),
                group: 4,
                dma: None,
                xfercap: None,
            });
        }
        let built = build(&cfg).unwrap();
        let vfio = Arc::new(Vfio::new(built.platform.clone()));
        // SAFETY: the engine writes only the buffers this test maps for DMA and its ioctl
        // arguments, areas no Rust reference covers while the engine runs.
        let mem = Arc::new(unsafe { HostMemory::current() });
        let container = vfio.open_container(mem.clone());
        let mut devs = Vec::new();
        let groups: Vec<u32> = if two { vec![3, 4] } else { vec![3] };
        let fdbuf = Buf::new(&mem, 4);
        for (i, gid) in groups.iter().enumerate() {
            let g = vfio.open_group(*gid).unwrap();
            let c = container.clone();
            vfio.group_ioctl(
                &g,
                VFIO_GROUP_SET_CONTAINER,
                fdbuf.addr(),
                mem.as_ref(),
                &mut |_| FdLookup::Container(c.clone()),
            )
            .unwrap();
            if i == 0 {
                vfio.container_ioctl(&container, VFIO_SET_IOMMU, 3, mem.as_ref())
                    .unwrap();
            }
            let name = if *gid == 3 { EDU_A } else { EDU_B };
            let cname = Buf::new(&mem, 64);
            cname.put(0, format!("{name}\0").as_bytes());
            match vfio
                .group_ioctl(
                    &g,
                    VFIO_GROUP_GET_DEVICE_FD,
                    cname.addr(),
                    mem.as_ref(),
                    &mut |_| FdLookup::NotOpen,
                )
                .unwrap()
            {
                IoctlOutcome::Device(d) => devs.push(d),
                IoctlOutcome::Value(_) => panic!("no device file"),
            }
            vfio.release_group(g);
        }
        Env {
            built,
            vfio,
            mem,
            container,
            devs,
        }
    }

    fn ioctl(&self, dev: usize, req: u64, arg: &Buf) -> i32 {
        errno(self.vfio.device_ioctl(
            &self.devs[dev],
            req,
            arg.addr(),
            self.mem.as_ref(),
            &mut softvfio::testing::no_eventfds,
        ))
    }

    /// BIND_TASK: the PASID or the errno.
    fn bind(&self, dev: usize) -> Result<u32, i32> {
        let a = Buf::new(&self.mem, 12);
        a.put_u32s(&[12, 0, 0xdead]);
        match self.ioctl(dev, VFIO_DEVICE_BIND_TASK, &a) {
            0 => Ok(a.u32_at(8)),
            e => Err(e),
        }
    }

    fn unbind(&self, dev: usize, pasid: u32, flags: u32) -> i32 {
        let a = Buf::new(&self.mem, 12);
        a.put_u32s(&[12, flags, pasid]);
        self.ioctl(dev, VFIO_DEVICE_UNBIND_TASK, &a)
    }

    /// VFIO_DEVICE_SVM with `flags` and `data`.
    fn svm(&self, dev: usize, flags: u32, data: &[u8]) -> i32 {
        let a = Buf::new(&self.mem, 12 + data.len());
        a.put_u32s(&[12 + data.len() as u32, flags, data.len() as u32]);
        a.put(12, data);
        self.ioctl(dev, VFIO_DEVICE_SVM, &a)
    }

    fn invalidate(&self, dev: usize, info: iommu_svm_tlb_invalidate_info) -> i32 {
        self.svm(dev, VFIO_SVM_PASSDOWN_INVALIDATE, &info.to_bytes())
    }

    fn map_dma(&self, iova: u64, buf: &Buf) {
        let a = Buf::new(&self.mem, 32);
        let mut b = Vec::new();
        b.extend_from_slice(&32u32.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&buf.addr().to_le_bytes());
        b.extend_from_slice(&iova.to_le_bytes());
        b.extend_from_slice(&(buf.len as u64).to_le_bytes());
        a.put(0, &b);
        self.vfio
            .container_ioctl(
                &self.container,
                VFIO_IOMMU_MAP_DMA,
                a.addr(),
                self.mem.as_ref(),
            )
            .unwrap();
    }

    fn edu(&self, dev: usize) -> Arc<softvfio_devices::EduDevice> {
        let name = if dev == 0 { EDU_A } else { EDU_B };
        self.built.device(name).unwrap().edu.clone().unwrap()
    }

    /// An edu DMA with PASID `pasid` (None: PASID register off); returns
    /// whether it completed without error.
    fn edu_dma(
        &self,
        dev: usize,
        pasid: Option<u32>,
        src: u64,
        dst: u64,
        cnt: u64,
        to_ram: bool,
    ) -> bool {
        let edu = self.edu(dev);
        let w = |off: u64, v: u64| assert_eq!(edu.region_write(0, off, &v.to_le_bytes()), Ok(8));
        assert_eq!(edu.region_write(7, 4, &0x0106u16.to_le_bytes()), Ok(2));
        let reg = pasid.map_or(0, |p| 0x8000_0000 | p);
        assert_eq!(edu.region_write(0, 0xa0, &reg.to_le_bytes()), Ok(4));
        let errors = edu.stats().dma_faults + edu.stats().dma_errors;
        w(0x80, src);
        w(0x88, dst);
        w(0x90, cnt);
        w(0x98, 1 | if to_ram { 2 } else { 0 });
        let t0 = Instant::now();
        loop {
            let mut v = [0u8; 4];
            edu.region_read(0, 0x98, &mut v).unwrap();
            if u32::from_le_bytes(v) & 1 == 0 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "edu DMA hangs");
            std::thread::sleep(Duration::from_micros(50));
        }
        edu.stats().dma_faults + edu.stats().dma_errors == errors
    }

    /// Copies `len` bytes from virtual address `src` to `dst`, both with
    /// PASID `pasid`, through edu's buffer.
    fn edu_copy(&self, dev: usize, pasid: u32, src: u64, dst: u64, len: u64) -> bool {
        self.edu_dma(dev, Some(pasid), src, 0x40000, len, false)
            && self.edu_dma(dev, Some(pasid), 0x40000, dst, len, true)
    }

    fn faults(&self) -> Vec<soft_iommu::Fault> {
        self.built.iommu.take_faults()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for d in self.devs.drain(..) {
            self.vfio.release_device(d);
        }
        self.vfio.release_container(self.container.clone());
    }
}

#[test]
fn get_info_reports_svm() {
    let env = Env::new(false);
    let a = Buf::new(&env.mem, 24);
    a.put_u32s(&[24]);
    assert_eq!(env.ioctl(0, VFIO_DEVICE_GET_INFO, &a), 0);
    assert_ne!(a.u32_at(4) & VFIO_DEVICE_FLAGS_SVM, 0);
    assert_eq!(VFIO_DEVICE_FLAGS_SVM, 1 << 30);
    assert_eq!(VFIO_DEVICE_BIND_TASK, 0x3b00 | 122);
    assert_eq!(VFIO_DEVICE_UNBIND_TASK, 0x3b00 | 123);
    assert_eq!(VFIO_DEVICE_SVM, 0x3b00 | 124);
}

#[test]
fn bind_and_dma_into_malloc_memory() {
    let env = Env::new(false);
    let pasid = env.bind(0).unwrap();
    assert_eq!(pasid, 1);
    let src = Buf::new(&env.mem, 3 * 4096);
    let dst = Buf::new(&env.mem, 3 * 4096);
    let pattern: Vec<u8> = (0..3000).map(|i: u32| (i * 7 + 3) as u8).collect();
    src.put(100, &pattern);
    // No MAP_DMA anywhere: process virtual addresses, 47-bit, no DMA mask.
    assert!(src.addr() > 1 << 28);
    assert!(env.edu_copy(0, pasid, src.addr() + 100, dst.addr() + 200, 3000));
    assert_eq!(dst.get(200, 3000), pattern);
    assert!(env.faults().is_empty());
    assert_eq!(env.edu(0).stats().dma_pasid, 2);

    // Read-only and unmapped memory: the DMA fails, the fault names the
    // PASID, the process goes on.
    let ro = unsafe_free_mmap(libc::PROT_READ);
    assert!(!env.edu_dma(0, Some(pasid), 0x40000, ro, 64, true));
    let f = env.faults();
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].reason, f[0].pasid, f[0].iova),
        (soft_iommu::FaultReason::NoWrite, Some(pasid), ro)
    );
    let gone = unsafe_free_mmap(libc::PROT_NONE);
    assert!(!env.edu_dma(0, Some(pasid), gone, 0x40000, 64, false));
    let f = env.faults();
    assert_eq!(
        (f[0].reason, f[0].pasid),
        (soft_iommu::FaultReason::NotPresent, Some(pasid))
    );

    // Unbound: the PASID faults.
    assert_eq!(env.unbind(0, pasid, VFIO_SVM_PASID_RELEASE_CLEAN), 0);
    assert!(!env.edu_dma(0, Some(pasid), src.addr(), 0x40000, 64, false));
    assert_eq!(
        env.faults()[0].reason,
        soft_iommu::FaultReason::PasidNotPresent
    );
}

/// A fresh page with protection `prot` (PROT_NONE: never accessible).
fn unsafe_free_mmap(prot: i32) -> u64 {
    // SAFETY: a new anonymous mapping; nothing in Rust refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as u64
}

#[test]
fn unbind_release_modes_and_reuse() {
    let env = Env::new(false);
    let p: Vec<u32> = (0..3).map(|_| env.bind(0).unwrap()).collect();
    assert_eq!(p, vec![1, 2, 3]);
    assert_eq!(env.unbind(0, 2, VFIO_SVM_PASID_RELEASE_CLEAN), 0);
    assert_eq!(env.bind(0), Ok(2));
    assert_eq!(env.unbind(0, 2, VFIO_SVM_PASID_RELEASE_FLUSHED), 0);
    assert_eq!(env.bind(0), Ok(2));
    assert_eq!(env.unbind(0, 1, 0), 0);
    // 1 is retired for good.
    assert_eq!(env.bind(0), Ok(4));
    assert_eq!(env.unbind(0, 1, VFIO_SVM_PASID_RELEASE_CLEAN), libc::ENOENT);
    assert_eq!(env.unbind(0, 77, 0), libc::ENOENT);
    assert_eq!(env.unbind(0, 1 << 20, 0), libc::EINVAL);
    assert_eq!(env.unbind(0, 2, 1 << 2), libc::EINVAL);
    assert_eq!(env.built.iommu.pasid_bonds(0x18), vec![2, 3, 4]);

    // Bad input binds nothing.
    let a = Buf::new(&env.mem, 12);
    a.put_u32s(&[11, 0, 0]);
    assert_eq!(env.ioctl(0, VFIO_DEVICE_BIND_TASK, &a), libc::EINVAL);
    a.put_u32s(&[12, 1, 0]);
    assert_eq!(env.ioctl(0, VFIO_DEVICE_BIND_TASK, &a), libc::EINVAL);
    assert_eq!(
        errno(env.vfio.device_ioctl(
            &env.devs[0],
            VFIO_DEVICE_BIND_TASK,
            8,
            env.mem.as_ref(),
            &mut softvfio::testing::no_eventfds
        )),
        libc::EFAULT
    );
    assert_eq!(env.built.iommu.pasid_bonds(0x18), vec![2, 3, 4]);
}

#[test]
fn bonds_end_when_the_device_closes() {
    let mut env = Env::new(false);
    env.bind(0).unwrap();
    env.bind(0).unwrap();
    env.unbind(0, 1, 0);
    assert_eq!(env.built.iommu.pasid_bonds(0x18), vec![2]);
    let d = env.devs.remove(0);
    env.vfio.release_device(d);
    assert!(env.built.iommu.pasid_bonds(0x18).is_empty());
    assert_eq!(env.built.iommu.retired_pasids(0x18), vec![1]);
}

#[test]
fn two_devices_have_independent_pasids() {
    let env = Env::new(true);
    assert_eq!(env.bind(0), Ok(1));
    assert_eq!(env.bind(1), Ok(1));
    let src = Buf::new(&env.mem, 4096);
    let da = Buf::new(&env.mem, 4096);
    let db = Buf::new(&env.mem, 4096);
    src.put(0, b"same PASID, two devices");
    assert!(env.edu_copy(0, 1, src.addr(), da.addr(), 23));
    assert!(env.edu_copy(1, 1, src.addr(), db.addr(), 23));
    assert_eq!(da.get(0, 23), b"same PASID, two devices");
    assert_eq!(db.get(0, 23), b"same PASID, two devices");
    // Retiring on A leaves B's PASID 1 bound and usable.
    assert_eq!(env.unbind(0, 1, 0), 0);
    assert_eq!(env.bind(0), Ok(2));
    assert_eq!(env.bind(1), Ok(2));
    assert!(env.edu_copy(1, 1, src.addr(), db.addr() + 100, 4));
    assert!(!env.edu_copy(0, 1, src.addr(), da.addr() + 100, 4));
    let f = env.faults();
    assert_eq!((f[0].rid, f[0].pasid), (0x18, Some(1)));
}

#[test]
fn svm_device_ioctl_bad_input() {
    let env = Env::new(false);
    let table = pasid_table(0x100_0000, 8);
    // Unknown flags, two operations, no operation.
    assert_eq!(env.svm(0, 1 << 4, &table), libc::EINVAL);
    assert_eq!(
        env.svm(
            0,
            VFIO_SVM_BIND_PASIDTP | VFIO_SVM_PASSDOWN_INVALIDATE,
            &table
        ),
        libc::EINVAL
    );
    assert_eq!(
        env.svm(
            0,
            VFIO_SVM_BIND_PASIDTP | VFIO_SVM_DEV_PASID_RELEASE_CLEAN,
            &table
        ),
        libc::EINVAL
    );
    assert_eq!(env.svm(0, 0, &table), libc::EINVAL);
    // argsz shorter than the header, or than header + length.
    let a = Buf::new(&env.mem, 28);
    a.put_u32s(&[11, VFIO_SVM_BIND_PASIDTP, 16]);
    assert_eq!(env.ioctl(0, VFIO_DEVICE_SVM, &a), libc::EINVAL);
    a.put_u32s(&[27, VFIO_SVM_BIND_PASIDTP, 16]);
    assert_eq!(env.ioctl(0, VFIO_DEVICE_SVM, &a), libc::EINVAL);
    // Data too short.
    assert_eq!(
        env.svm(0, VFIO_SVM_BIND_PASIDTP, &table[..11]),
        libc::EINVAL
    );
    // A table outside the mappings (nothing mapped yet): EFAULT.
    assert_eq!(env.svm(0, VFIO_SVM_BIND_PASIDTP, &table), libc::EFAULT);
    // Size 0, misaligned.
    assert_eq!(
        env.svm(0, VFIO_SVM_BIND_PASIDTP, &pasid_table(0x100_0000, 0)),
        libc::EINVAL
    );
    assert_eq!(
        env.svm(0, VFIO_SVM_BIND_PASIDTP, &pasid_table(0x100_0008, 8)),
        libc::EINVAL
    );
    // Invalidation without a table; release without a table.
    let inv = iommu_svm_tlb_invalidate_info {
        inv_type: IOTLB_INV,
        ..Default::default()
    };
    assert_eq!(env.invalidate(0, inv), libc::EINVAL);
    assert_eq!(
        env.svm(0, VFIO_SVM_DEV_PASID_RELEASE_CLEAN, &[]),
        libc::ENOENT
    );
    assert_eq!(env.built.iommu.guest_pasid_table(0x18), None);
}

fn pasid_table(ptr: u64, size: u32) -> Vec<u8> {
    let mut v = ptr.to_le_bytes().to_vec();
    v.extend_from_slice(&size.to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    v
}

// ---- guest PASID table (virtual SVM) -------------------------------------------

const BASE: u64 = 0x100_0000;
const PML4: u64 = BASE + 0x1000;
const PDPT: u64 = BASE + 0x2000;
const PD: u64 = BASE + 0x3000;
const PT: u64 = BASE + 0x4000;
const DATA_A: u64 = BASE + 0x10_0000;
const DATA_B: u64 = BASE + 0x10_1000;
const DATA_2M: u64 = BASE + 0x20_0000;
const VA_4K: u64 = 0x5555_0000_0000;
const VA_2M: u64 = VA_4K + 0x20_0000;
const P: u64 = 1;
const RW: u64 = 2;
const PS: u64 = 0x80;

struct GuestEnv {
    env: Env,
    ram: Buf,
}

impl GuestEnv {
    /// 4 MiB of "guest RAM" (malloc'd) mapped at IOVA BASE, with a PASID
    /// table (PASID 1 and 2 present), 4-level tables, 4K pages at VA_4K
    /// (→ DATA_A, DATA_B) and a 2M page at VA_2M, bound with BIND_PASIDTP.
    fn new() -> GuestEnv {
        let env = Env::new(false);
        let ram = Buf::aligned(&env.mem, 0x40_0000);
        env.map_dma(BASE, &ram);
        let g = GuestEnv { env, ram };
        let idx = |va: u64, level: u32| (va >> (12 + 9 * (level - 1))) & 0x1ff;
        g.put(BASE + 8, PML4 | 1);
        g.put(BASE + 16, PML4 | 1);
        g.put(PML4 + idx(VA_4K, 4) * 8, PDPT | P | RW);
        g.put(PDPT + idx(VA_4K, 3) * 8, PD | P | RW);
        g.put(PD + idx(VA_4K, 2) * 8, PT | P | RW);
        g.put(PT, DATA_A | P | RW);
        g.put(PT + 8, DATA_B | P | RW);
        g.put(PD + idx(VA_2M, 2) * 8, DATA_2M | P | RW | PS);
        assert_eq!(
            g.env.svm(0, VFIO_SVM_BIND_PASIDTP, &pasid_table(BASE, 4)),
            0
        );
        g
    }

    fn put(&self, iova: u64, v: u64) {
        self.ram.put((iova - BASE) as usize, &v.to_le_bytes());
    }

    fn get(&self, iova: u64, len: usize) -> Vec<u8> {
        self.ram.get((iova - BASE) as usize, len)
    }

    /// Reads 4 bytes at guest-virtual `va` of `pasid` with edu.
    fn dma_read(&self, pasid: u32, va: u64) -> Option<Vec<u8>> {
        if !self.env.edu_dma(0, Some(pasid), va, 0x40000, 4, false) {
            return None;
        }
        Some(self.env.edu(0).dma_buffer()[..4].to_vec())
    }

    fn retarget(&self) {
        self.ram.put((DATA_A - BASE) as usize, &[0xaa; 4]);
        self.ram.put((DATA_B - BASE) as usize, &[0xbb; 4]);
        assert_eq!(self.dma_read(1, VA_4K), Some(vec![0xaa; 4]));
        assert_eq!(self.dma_read(2, VA_4K), Some(vec![0xaa; 4]));
        self.put(PT, DATA_B | P | RW);
        // Stale until invalidated.
        assert_eq!(self.dma_read(1, VA_4K), Some(vec![0xaa; 4]));
        assert_eq!(self.dma_read(2, VA_4K), Some(vec![0xaa; 4]));
    }
}

fn inv(
    inv_type: u32,
    granularity: u8,
    pasid: u32,
    addr: u64,
    size: u64,
) -> iommu_svm_tlb_invalidate_info {
    iommu_svm_tlb_invalidate_info {
        inv_type,
        pasid,
        addr,
        size,
        granularity,
        ..Default::default()
    }
}

#[test]
fn guest_page_tables_with_4k_and_2m_pages() {
    let g = GuestEnv::new();
    let env = &g.env;
    assert_eq!(env.built.iommu.guest_pasid_table(0x18), Some((BASE, 4)));
    // Process bonds are refused while a guest table is bound.
    assert_eq!(env.bind(0), Err(libc::EBUSY));
    // A copy within the guest: 4K page → crosses into the next 4K page, and
    // into the 2M page.
    g.ram
        .put((DATA_2M - BASE) as usize + 0x1_2345, b"from the 2M page");
    assert!(env.edu_copy(0, 1, VA_2M + 0x1_2345, VA_4K + 0xff8, 16));
    assert_eq!(g.get(DATA_A + 0xff8, 8), b"from the");
    assert_eq!(g.get(DATA_B, 8), b" 2M page");
    assert!(env.faults().is_empty());
    // Faults carry the PASID: a not-present guest PTE, a non-present PASID
    // entry, a PASID beyond the table, a malformed entry.
    assert_eq!(g.dma_read(1, VA_4K + 0x5000), None);
    assert_eq!(g.dma_read(3, VA_4K), None);
    assert_eq!(g.dma_read(9, VA_4K), None);
    g.put(BASE + 24, PML4 | 1 | (1 << 60));
    assert_eq!(g.dma_read(3, VA_4K), None);
    let f: Vec<(soft_iommu::FaultReason, Option<u32>)> =
        env.faults().iter().map(|f| (f.reason, f.pasid)).collect();
    use soft_iommu::FaultReason as R;
    assert_eq!(
        f,
        vec![
            (R::NotPresent, Some(1)),
            (R::PasidNotPresent, Some(3)),
            (R::PasidNotPresent, Some(9)),
            (R::InvalidEntry, Some(3)),
        ]
    );
    // Release with VFIO_DEVICE_SVM: the table goes, its PASIDs fault.
    assert_eq!(env.svm(0, VFIO_SVM_DEV_PASID_RELEASE_FLUSHED, &[]), 0);
    assert_eq!(env.built.iommu.guest_pasid_table(0x18), None);
    assert_eq!(g.dma_read(1, VA_4K), None);
    // Bad invalidation input.
    assert_eq!(env.invalidate(0, inv(0, 0, 0, 0, 0)), libc::EINVAL);
}

#[test]
fn stale_until_global_invalidation() {
    let g = GuestEnv::new();
    g.retarget();
    assert_eq!(
        g.env
            .invalidate(0, inv(EXTENDED_IOTLB_INV, DEFAULT_INV_GRN, 0, 0, 0)),
        0
    );
    assert_eq!(g.dma_read(1, VA_4K), Some(vec![0xbb; 4]));
    assert_eq!(g.dma_read(2, VA_4K), Some(vec![0xbb; 4]));
}

#[test]
fn stale_until_pasid_selective_invalidation() {
    let g = GuestEnv::new();
    g.retarget();
    assert_eq!(
        g.env
            .invalidate(0, inv(IOTLB_INV, PASID_SELECTIVE_INV, 2, 0, 0)),
        0
    );
    assert_eq!(g.dma_read(2, VA_4K), Some(vec![0xbb; 4]));
    assert_eq!(g.dma_read(1, VA_4K), Some(vec![0xaa; 4]));
    assert_eq!(
        g.env
            .invalidate(0, inv(DEVICE_IOTLB_INV, PASID_SELECTIVE_INV, 1, 0, 0)),
        0
    );
    assert_eq!(g.dma_read(1, VA_4K), Some(vec![0xbb; 4]));
}

#[test]
fn stale_until_page_selective_invalidation() {
    let g = GuestEnv::new();
    g.retarget();
    // The next page: no effect.
    assert_eq!(
        g.env.invalidate(
            0,
            inv(
                EXTENDED_DEVICE_IOTLB_INV,
                PAGE_SELECTIVE_INV,
                1,
                VA_4K + 0x1000,
                0x1000
            )
        ),
        0
    );
    assert_eq!(g.dma_read(1, VA_4K), Some(vec![0xaa; 4]));
    assert_eq!(
        g.env.invalidate(
            0,
            inv(EXTENDED_IOTLB_INV, PAGE_SELECTIVE_INV, 1, VA_4K, 0x1000)
        ),
        0
    );
    assert_eq!(g.dma_read(1, VA_4K), Some(vec![0xbb; 4]));
    assert_eq!(g.dma_read(2, VA_4K), Some(vec![0xaa; 4]));
    // Page-selective with size 0 is refused.
    assert_eq!(
        g.env
            .invalidate(0, inv(IOTLB_INV, PAGE_SELECTIVE_INV, 1, VA_4K, 0)),
        libc::EINVAL
    );
}

#[test]
fn pasid_cache_invalidation() {
    let g = GuestEnv::new();
    g.ram.put((DATA_A - BASE) as usize, &[0xaa; 4]);
    assert_eq!(g.dma_read(1, VA_4K), Some(vec![0xaa; 4]));
    // PASID 1 now points at an empty PML4.
    g.put(BASE + 8, (BASE + 0x5000) | 1);
    assert_eq!(
        g.env
            .invalidate(0, inv(IOTLB_INV, PASID_SELECTIVE_INV, 1, 0, 0)),
        0
    );
    assert_eq!(
        g.dma_read(1, VA_4K),
        Some(vec![0xaa; 4]),
        "PASID cache still valid"
    );
    assert_eq!(
        g.env.invalidate(
            0,
            inv(IOTLB_INV | PASID_CACHE_INV, PASID_SELECTIVE_INV, 1, 0, 0)
        ),
        0
    );
    assert_eq!(g.dma_read(1, VA_4K), None);
}

// ---- end to end: a static C program under `softvfio run` -------------------------

const SVM_PROBE: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define VFIO_DEVICE_BIND_TASK _IO(VFIO_TYPE, VFIO_BASE + 22)
#define VFIO_DEVICE_UNBIND_TASK _IO(VFIO_TYPE, VFIO_BASE + 23)
#define VFIO_DEVICE_FLAGS_SVM (1 << 30)
#define VFIO_SVM_PASID_RELEASE_FLUSHED (1 << 0)
#define VFIO_SVM_PASID_RELEASE_CLEAN (1 << 1)
struct vfio_device_svm { uint32_t argsz, flags, pasid; };

static int dev; static uint64_t bar0;
static uint32_t rd32(unsigned off) { uint32_t v = ~0u; pread(dev, &v, 4, bar0 + off); return v; }
static void wr32(unsigned off, uint32_t v) { pwrite(dev, &v, 4, bar0 + off); }
static void wr64(unsigned off, uint64_t v) { pwrite(dev, &v, 8, bar0 + off); }
static void dma(uint64_t src, uint64_t dst, uint64_t cnt, int to_ram) {
  wr64(0x80, src); wr64(0x88, dst); wr64(0x90, cnt); wr64(0x98, 1 | (to_ram ? 2 : 0));
  for (int i = 0; i < 1000000 && (rd32(0x98) & 1); i++) usleep(10);
}

int main(void) {
  int c = open("/dev/vfio/vfio", O_RDWR), g = open("/dev/vfio/3", O_RDWR);
  if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) || ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) { perror("setup"); return 1; }
  dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:00:03.0");
  struct vfio_device_info di = { .argsz = sizeof di };
  ioctl(dev, VFIO_DEVICE_GET_INFO, &di);
  printf("svm_flag %d\n", !!(di.flags & VFIO_DEVICE_FLAGS_SVM));
  struct vfio_region_info ri = { .argsz = sizeof ri, .index = VFIO_PCI_BAR0_REGION_INDEX };
  ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri); bar0 = ri.offset;
  struct vfio_region_info ci = { .argsz = sizeof ci, .index = VFIO_PCI_CONFIG_REGION_INDEX };
  ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ci);
  uint16_t cmd; pread(dev, &cmd, 2, ci.offset + 4); cmd |= 0x6; pwrite(dev, &cmd, 2, ci.offset + 4);

  struct vfio_device_svm s = { .argsz = sizeof s };
  int r = ioctl(dev, VFIO_DEVICE_BIND_TASK, &s);
  printf("bind %d pasid %u\n", r, s.pasid);
  char *src = malloc(10000), *dst = malloc(10000);
  for (int i = 0; i < 10000; i++) { src[i] = (char)(i * 13 + 1); dst[i] = 0; }
  wr32(0xa0, 0x80000000u | s.pasid);
  printf("pasid_reg %#x\n", rd32(0xa0));
  dma((uint64_t)(uintptr_t)(src + 123), 0x40000, 3000, 0);
  dma(0x40000, (uint64_t)(uintptr_t)(dst + 4000), 3000, 1);
  printf("dma_match %d\n", memcmp(src + 123, dst + 4000, 3000) == 0);
  printf("dma_untouched %d\n", dst[3999] == 0 && dst[7000] == 0);

  struct vfio_device_svm u = { .argsz = sizeof u, .flags = 0, .pasid = 12345 };
  printf("unbind_unbound %s\n", ioctl(dev, VFIO_DEVICE_UNBIND_TASK, &u) ? strerror(errno) : "ok");
  u.pasid = s.pasid; u.flags = VFIO_SVM_PASID_RELEASE_CLEAN;
  printf("unbind_clean %d\n", ioctl(dev, VFIO_DEVICE_UNBIND_TASK, &u));
  /* The unbound PASID faults: memory stays as it was. */
  memset(dst, 0, 10000);
  dma(0x40000, (uint64_t)(uintptr_t)dst, 64, 1);
  printf("after_unbind_untouched %d\n", dst[0] == 0 && dst[63] == 0);
  struct vfio_device_svm s2 = { .argsz = sizeof s2 };
  ioctl(dev, VFIO_DEVICE_BIND_TASK, &s2);
  printf("rebind_pasid %u\n", s2.pasid);
  u.pasid = s2.pasid; u.flags = 0;
  printf("unbind_retire %d\n", ioctl(dev, VFIO_DEVICE_UNBIND_TASK, &u));
  struct vfio_device_svm s3 = { .argsz = sizeof s3 };
  ioctl(dev, VFIO_DEVICE_BIND_TASK, &s3);
  printf("after_retire_pasid %u\n", s3.pasid);
  struct vfio_device_svm bad = { .argsz = 4 };
  printf("bind_short_argsz %s\n", ioctl(dev, VFIO_DEVICE_BIND_TASK, &bad) ? strerror(errno) : "ok");
  printf("done\n");
  return 0;
}
"#;

#[test]
fn end_to_end_static_program_under_softvfio_run() {
    if std::process::Command::new("gcc")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no gcc");
        return;
    }
    let dir = std::env::temp_dir().join(format!("svm-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("svm_probe.c");
    let bin = dir.join("svm_probe");
    std::fs::write(&src, SVM_PROBE).unwrap();
    let cc = std::process::Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_softvfio"))
        .args(["run", "--"])
        .arg(&bin)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let _ = std::fs::remove_dir_all(&dir);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.starts_with('[')).collect();
    let want = [
        "svm_flag 1",
        "bind 0 pasid 1",
        "pasid_reg 0x80000001",
        "dma_match 1",
        "dma_untouched 1",
        "unbind_unbound No such file or directory",
        "unbind_clean 0",
        "after_unbind_untouched 1",
        "rebind_pasid 1",
        "unbind_retire 0",
        "after_retire_pasid 2",
        "bind_short_argsz Invalid argument",
        "done",
    ];
    for w in want {
        assert!(
            lines.contains(&w),
            "missing {w:?} in:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
