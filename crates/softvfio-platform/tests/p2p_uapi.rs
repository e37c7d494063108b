//! Peer-to-peer DMA through the byte-level uAPI, in this process
//! (docs/MMIO.md, "Peer to peer"): on the I/OAT platform
//! (`tests/platforms/ioat.toml`), edu's BAR0 is "mapped" with
//! `Vfio::device_mmap` at a reserved address (recorded as the front ends
//! record it), MAP_DMA'd next to real memory in one type1 container with
//! both groups, and the I/OAT engine, programmed through its BAR0, copies
//! between that memory and edu's registers through the VT-d model.

use std::mem::size_of;
use std::sync::{Arc, Mutex};

use softvfio::barmap::BarMappings;
use softvfio::memory::host::HostMemory;
use softvfio::memory::UserMemory;
use softvfio::uapi::*;
use vfio_bindings::bindings::vfio::*;

const PG: u64 = 4096;
const RW: u32 = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
const CH: u64 = 0x80;
const MEM_IOVA: u64 = 0x10_0000;
const EDU_IOVA: u64 = 0x400_0000;

/// Anonymous memory (`prot`), unmapped on drop.
struct Anon {
    addr: u64,
    len: u64,
}

impl Anon {
    fn new(len: u64, prot: i32) -> Anon {
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
        Anon {
            addr: p as u64,
            len,
        }
    }

    fn write(&self, off: u64, data: &[u8]) {
        assert!(off + data.len() as u64 <= self.len);
        // SAFETY: inside our own writable mapping; no Rust reference to it
        // exists (device DMA writes it through process_vm_writev).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), (self.addr + off) as *mut u8, data.len())
        };
    }

    fn read(&self, off: u64, n: usize) -> Vec<u8> {
        assert!(off + n as u64 <= self.len);
        let mut v = vec![0u8; n];
        // SAFETY: as in `write`; the engine does not write it meanwhile
        // (DMA runs inside the register writes of this thread).
        unsafe { std::ptr::copy_nonoverlapping((self.addr + off) as *const u8, v.as_mut_ptr(), n) };
        v
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len as usize) };
    }
}

fn ptr<T>(v: &T) -> u64 {
    v as *const T as u64
}

struct Setup {
    vfio: Vfio,
    mem: Arc<HostMemory>,
    container: ContainerFile,
    edu: DeviceFile,
    ioat: DeviceFile,
    _groups: Vec<GroupFile>,
}

impl Setup {
    fn new(bars: Arc<Mutex<BarMappings>>) -> Setup {
        let cfg = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/platforms/ioat.toml"
        );
        let cfg = softvfio_platform::Config::from_file(cfg).unwrap();
        let built = softvfio_platform::build(&cfg).unwrap();
        let vfio = Vfio::new(built.platform.clone());
        // SAFETY: the engine writes only the memory this test maps for DMA
        // (`Anon`, no Rust reference to it) and its ioctl arguments.
        let mem = Arc::new(unsafe { HostMemory::current() });
        mem.set_device_ranges(Arc::new(move |vaddr, len| {
            bars.lock().unwrap().device_ranges(vaddr, len)
        }));
        let container = vfio.open_container(mem.clone());
        let mut groups = Vec::new();
        let mut devices = Vec::new();
        for (id, name) in [(3, "0000:00:03.0"), (4, "0000:00:04.0")] {
            let g = vfio.open_group(id).unwrap();
            let cf = container.clone();
            let mut lookup = |_fd: i32| FdLookup::Container(cf.clone());
            let fd = 3i32;
            vfio.group_ioctl(
                &g,
                VFIO_GROUP_SET_CONTAINER,
                ptr(&fd),
                mem.as_ref(),
                &mut lookup,
            )
            .unwrap();
            if id == 3 {
                vfio.container_ioctl(
                    &container,
                    VFIO_SET_IOMMU,
                    VFIO_TYPE1v2_IOMMU.into(),
                    mem.as_ref(),
                )
                .unwrap();
            }
            let c = std::ffi::CString::new(name).unwrap();
            match vfio
                .group_ioctl(
                    &g,
                    VFIO_GROUP_GET_DEVICE_FD,
                    c.as_ptr() as u64,
                    mem.as_ref(),
                    &mut lookup,
                )
                .unwrap()
            {
                IoctlOutcome::Device(d) => devices.push(d),
                IoctlOutcome::Value(v) => panic!("no device: {v}"),
            }
            groups.push(g);
        }
        let ioat = devices.pop().unwrap();
        let edu = devices.pop().unwrap();
        Setup {
            vfio,
            mem,
            container,
            edu,
            ioat,
            _groups: groups,
        }
    }

    fn map(&self, iova: u64, vaddr: u64, size: u64) -> i32 {
        let m = vfio_iommu_type1_dma_map {
            argsz: size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags: RW,
            vaddr,
            iova,
            size,
        };
        match self.vfio.container_ioctl(
            &self.container,
            VFIO_IOMMU_MAP_DMA,
            ptr(&m),
            self.mem.as_ref(),
        ) {
            Ok(_) => 0,
            Err(e) => e.errno(),
        }
    }

    fn unmap(&self, iova: u64, size: u64) -> (i32, u64) {
        let u = [size_of::<vfio_iommu_type1_dma_unmap>() as u64, iova, size];
        let r = self.vfio.container_ioctl(
            &self.container,
            VFIO_IOMMU_UNMAP_DMA,
            ptr(&u),
            self.mem.as_ref(),
        );
        (r.err().map_or(0, |e| e.errno()), u[2])
    }
}

fn wr(d: &DeviceFile, region: u32, off: u64, v: u64, n: usize) {
    assert_eq!(
        d.device
            .model
            .region_write(region, off, &v.to_le_bytes()[..n]),
        Ok(n)
    );
}

fn rd(d: &DeviceFile, region: u32, off: u64, n: usize) -> u64 {
    let mut b = [0u8; 8];
    assert_eq!(d.device.model.region_read(region, off, &mut b[..n]), Ok(n));
    u64::from_le_bytes(b)
}

/// One I/OAT descriptor (at `MEM_IOVA`) copying `size` bytes; returns the
/// channel status (1 DONE, 3 HALTED).
fn ioat_copy(s: &Setup, mem: &Anon, src: u64, dst: u64, size: u32) -> u64 {
    let mut desc = [0u8; 64];
    desc[0..4].copy_from_slice(&size.to_le_bytes());
    desc[8..16].copy_from_slice(&src.to_le_bytes());
    desc[16..24].copy_from_slice(&dst.to_le_bytes());
    desc[24..32].copy_from_slice(&MEM_IOVA.to_le_bytes());
    mem.write(0, &desc);
    wr(&s.ioat, 0, CH + 0x10, MEM_IOVA, 8);
    wr(&s.ioat, 0, CH, 0x0009, 2);
    wr(&s.ioat, 0, CH + 0x06, 1, 2);
    let st = rd(&s.ioat, 0, CH + 0x08, 8) & 7;
    if st == 1 {
        wr(&s.ioat, 0, CH + 0x04, 0x04, 1);
    }
    st
}

#[test]
fn ioat_copies_between_memory_and_edu_registers() {
    let bars = Arc::new(Mutex::new(BarMappings::new()));
    let s = Setup::new(bars.clone());
    // Memory decoding and bus mastering on, for both devices.
    wr(&s.edu, VFIO_PCI_CONFIG_REGION_INDEX, 4, 6, 2);
    wr(&s.ioat, VFIO_PCI_CONFIG_REGION_INDEX, 4, 0x0406, 2);
    // Reset the channel as the selftests' driver does.
    wr(&s.ioat, 0, CH + 0x04, 0x20, 1);
    assert_eq!(rd(&s.ioat, 0, CH + 0x04, 1) & 0x20, 0);

    // edu's BAR0 "mapped" at a reserved PROT_NONE range, as the front
    // ends map it.
    let bar_size = 1 << 20;
    let placeholder = Anon::new(bar_size, libc::PROT_NONE);
    let target = s.vfio.device_mmap(&s.edu, 0, bar_size, true).unwrap();
    bars.lock().unwrap().insert(
        placeholder.addr,
        bar_size,
        target,
        libc::PROT_READ | libc::PROT_WRITE,
    );
    let mem = Anon::new(16 * PG, libc::PROT_READ | libc::PROT_WRITE);
    assert_eq!(s.map(MEM_IOVA, mem.addr, mem.len), 0);
    assert_eq!(s.map(EDU_IOVA, placeholder.addr, bar_size), 0);
    // Only the memory is charged.
    assert_eq!(s.mem.account().locked_pages(), 16);

    // Memory -> edu's liveness register: it reads the complement.
    mem.write(PG, &0x1234_5678u32.to_le_bytes());
    assert_eq!(ioat_copy(&s, &mem, MEM_IOVA + PG, EDU_IOVA + 4, 4), 1);
    assert_eq!(rd(&s.edu, 0, 4, 4), 0xedcb_a987);
    // Memory -> the factorial register, computed.
    mem.write(PG, &6u32.to_le_bytes());
    assert_eq!(ioat_copy(&s, &mem, MEM_IOVA + PG, EDU_IOVA + 8, 4), 1);
    assert_eq!(rd(&s.edu, 0, 8, 4), 720);
    // edu's identification and DMA registers -> memory (4-byte and two
    // 8-byte reads).
    wr(&s.edu, 0, 0x80, 0xabc0, 8);
    wr(&s.edu, 0, 0x88, 0x40000, 8);
    assert_eq!(ioat_copy(&s, &mem, EDU_IOVA, MEM_IOVA + 2 * PG, 4), 1);
    assert_eq!(
        ioat_copy(&s, &mem, EDU_IOVA + 0x80, MEM_IOVA + 2 * PG + 8, 16),
        1
    );
    let mut want = 0x0100_00edu32.to_le_bytes().to_vec();
    want.extend_from_slice(&[0; 4]);
    want.extend_from_slice(&0xabc0u64.to_le_bytes());
    want.extend_from_slice(&0x40000u64.to_le_bytes());
    assert_eq!(mem.read(2 * PG, 24), want);

    // Memory decoding off on edu: the copy into its BAR fails (the
    // engine halts with a write error, an IOMMU fault is recorded).
    wr(&s.edu, VFIO_PCI_CONFIG_REGION_INDEX, 4, 4, 2);
    assert_eq!(ioat_copy(&s, &mem, MEM_IOVA + PG, EDU_IOVA + 4, 4), 3);
    assert_eq!(rd(&s.ioat, 0, CH + 0x28, 4), 0x200);

    assert_eq!(s.unmap(EDU_IOVA, bar_size), (0, bar_size));
    assert_eq!(s.unmap(MEM_IOVA, mem.len), (0, mem.len));
    assert_eq!(s.mem.account().locked_pages(), 0);
    assert_eq!(s.mem.stats().pinned_pages, 0);
}
