//! The byte-level VFIO entry: random sequences of container, group, device
//! and IOMMU requests with random argsz, flags, fields and argument pointers
//! (valid, unmapped, read-only, past the user limit), over simulated user
//! memory, the VT-d model and QEMU's edu device of the reference platform,
//! with device DMA in between.
//!
//! Oracles: no panic; no allocation sized by user input (the bounded
//! allocator); after every request the pinned and accounted pages equal
//! what the containers' mappings hold; after everything is closed, no pin,
//! no accounted page and no VFIO state remains.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use soft_iommu::Access;
use softvfio::iommu::Prot;
use softvfio::memory::sim::{SimMemory, SIZE_2M};
use softvfio::memory::UserMemory;
use softvfio::uapi::*;
use softvfio_fuzz::{BoundedAlloc, Bytes};
use softvfio_platform::BuiltPlatform;

#[global_allocator]
static ALLOC: BoundedAlloc = BoundedAlloc;

/// Where argument structs are built.
const ARG: u64 = 0x1000_0000;
const ARG_LEN: u64 = 4 * 4096;
/// Memory to map: 64 writable pages, 4 read-only pages, 2 huge pages.
const DATA: u64 = 0x2000_0000;
const DATA_LEN: u64 = 64 * 4096;
const RO: u64 = 0x3000_0000;
const HUGE: u64 = 0x4000_0000;

const REQUESTS: [u64; 17] = [
    VFIO_GET_API_VERSION,
    VFIO_CHECK_EXTENSION,
    VFIO_SET_IOMMU,
    VFIO_GROUP_GET_STATUS,
    VFIO_GROUP_SET_CONTAINER,
    VFIO_GROUP_UNSET_CONTAINER,
    VFIO_GROUP_GET_DEVICE_FD,
    VFIO_DEVICE_GET_INFO,
    VFIO_DEVICE_GET_REGION_INFO,
    VFIO_DEVICE_GET_IRQ_INFO,
    VFIO_DEVICE_SET_IRQS,
    VFIO_DEVICE_RESET,
    VFIO_IOMMU_GET_INFO,
    VFIO_IOMMU_MAP_DMA,
    VFIO_IOMMU_UNMAP_DMA,
    VFIO_IOMMU_DIRTY_PAGES,
    vfio_io(15),
];

/// `FUZZ_TRACE=1` prints every request and its result (to check what a
/// seed reaches).
fn trace() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

fn memory() -> Arc<SimMemory> {
    let m = SimMemory::new();
    m.add_region(ARG, ARG_LEN, 4096, Prot::RW)
        .expect("arg region");
    m.add_region(DATA, DATA_LEN, 4096, Prot::RW)
        .expect("data region");
    m.add_region(
        RO,
        4 * 4096,
        4096,
        Prot {
            read: true,
            write: false,
        },
    )
    .expect("ro region");
    m.add_region(HUGE, 2 * SIZE_2M, SIZE_2M, Prot::RW)
        .expect("huge region");
    Arc::new(m)
}

/// An argument pointer: mostly the argument area, sometimes an edge.
fn pointer(b: &mut Bytes) -> u64 {
    match b.u8() % 16 {
        0 => 0,
        1 => ARG + ARG_LEN - u64::from(b.u8() % 64), // runs off the area
        2 => RO,                                     // read-only: write-back faults
        3 => b.u64(),
        4 => (1 << 47) - 8,
        _ => ARG + u64::from(b.u8() % 8) * 8,
    }
}

/// Writes `n` steered fields at `at`: argsz first, then flags, then 64-bit
/// fields, then raw bytes.
fn build_struct(b: &mut Bytes, mem: &SimMemory, at: u64, request: u64) {
    let argsz_hints: &[u64] = &[8, 16, 20, 24, 32, 40, 48, 56, 64, 72, 4096];
    let flag_hints: &[u64] = &[0, 1, 2, 3, 4, 5, 6, 7, 8, 0x10, 0x80];
    let mut buf = Vec::with_capacity(256);
    if request == VFIO_GROUP_SET_CONTAINER {
        buf.extend_from_slice(&(b.pick(&[0, 1, 2, 3, 4, 5]) as u32).to_le_bytes());
    } else if request == VFIO_GROUP_GET_DEVICE_FD {
        let name: &[u8] = match b.u8() % 4 {
            0 => b"0000:00:03.0\0",
            1 => b"0000:00:04.0\0",
            2 => b"",
            _ => b"0000:00:03.0",
        };
        buf.extend_from_slice(name);
        if b.u8().is_multiple_of(4) {
            // A long string with no NUL inside the argument area.
            buf.resize(200, b'a');
        }
    } else {
        buf.extend_from_slice(&(b.pick(argsz_hints) as u32).to_le_bytes());
        buf.extend_from_slice(&(b.pick(flag_hints) as u32).to_le_bytes());
        let field_hints: &[u64] = &[
            0,
            0x1000,
            0x2000,
            0x10_0000,
            0x10_1000,
            0xfee0_0000,
            DATA,
            DATA + 0x1000,
            HUGE,
            RO,
            ARG + 0x2000,
            DATA_LEN,
            0x4000,
            SIZE_2M,
            (1 << 39) - 0x1000,
        ];
        let n = 1 + b.u8() % 6;
        for _ in 0..n {
            buf.extend_from_slice(&b.pick(field_hints).to_le_bytes());
        }
        let raw = usize::from(b.u8() % 32);
        buf.extend(b.bytes(raw));
    }
    // Partial writes near the end of the area are fine: the rest faults.
    let _ = mem.write(at, &buf);
}

#[derive(Default)]
struct Open {
    containers: Vec<ContainerFile>,
    groups: Vec<GroupFile>,
    devices: Vec<DeviceFile>,
}

/// Pins and accounting equal what the containers' mappings hold.
fn check_accounting(mem: &SimMemory, open: &Open, vfio: &Vfio) {
    let mut containers: Vec<Arc<softvfio::Container>> = open
        .containers
        .iter()
        .map(|c| c.container.clone())
        .collect();
    for c in vfio.attached_containers() {
        if !containers.iter().any(|o| Arc::ptr_eq(o, &c)) {
            containers.push(c);
        }
    }
    let mut locked = 0;
    let mut pinned_pages = 0;
    for c in &containers {
        let snap = c.snapshot();
        for m in &snap.mappings {
            locked += m.locked_pages;
            if m.iommu_mapped {
                pinned_pages += m.size / 4096;
            }
        }
    }
    assert_eq!(mem.account().locked_pages(), locked, "accounting");
    assert_eq!(mem.stats().pin_refs, pinned_pages, "pin references");
}

fuzz_target!(|data: &[u8]| {
    let Ok(built) = BuiltPlatform::reference() else {
        return;
    };
    let vfio = Vfio::new(built.platform.clone());
    let mem = memory();
    let user: &dyn UserMemory = mem.as_ref();
    let port = built.iommu.dma_port(0x18);
    let mut open = Open::default();
    let mut b = Bytes::new(data);
    let mut steps = 0;
    while !b.is_empty() && steps < 256 {
        steps += 1;
        match b.u8() % 12 {
            0 => {
                if open.containers.len() < 4 {
                    let c = vfio.open_container(mem.clone());
                    open.containers.push(c);
                }
            }
            1 => {
                if !open.containers.is_empty() {
                    let i = usize::from(b.u8()) % open.containers.len();
                    vfio.release_container(open.containers.remove(i));
                }
            }
            2 => {
                let id = b.pick(&[3, 3, 3, 4, 0]) as u32;
                if let Ok(g) = vfio.open_group(id) {
                    open.groups.push(g);
                }
            }
            3 => {
                if !open.groups.is_empty() {
                    let i = usize::from(b.u8()) % open.groups.len();
                    vfio.release_group(open.groups.remove(i));
                }
            }
            4..=6 => {
                if open.containers.is_empty() {
                    continue;
                }
                let c = open.containers[usize::from(b.u8()) % open.containers.len()].clone();
                let request = REQUESTS[usize::from(b.u8()) % REQUESTS.len()];
                let arg = if matches!(request, VFIO_CHECK_EXTENSION | VFIO_SET_IOMMU) {
                    b.pick(&[1, 3, 6, 9, 10, 4, 8, 0])
                } else {
                    let p = pointer(&mut b);
                    build_struct(&mut b, &mem, p, request);
                    p
                };
                let r = vfio.container_ioctl(&c, request, arg, user);
                if trace() {
                    eprintln!(
                        "container ioctl {request:#x} arg {arg:#x}: {:?}",
                        r.map_err(|e| e.errno())
                    );
                }
            }
            7 => {
                if open.groups.is_empty() {
                    continue;
                }
                let g = open.groups[usize::from(b.u8()) % open.groups.len()].clone();
                let request = REQUESTS[usize::from(b.u8()) % REQUESTS.len()];
                let p = pointer(&mut b);
                build_struct(&mut b, &mem, p, request);
                let containers = open.containers.clone();
                let sel = b.u8();
                let mut lookup = |fd: i32| match (fd, sel % 4) {
                    (_, 0) => FdLookup::NotOpen,
                    (_, 1) => FdLookup::NotContainer,
                    (fd, _) if !containers.is_empty() => {
                        FdLookup::Container(containers[fd as usize % containers.len()].clone())
                    }
                    _ => FdLookup::NotOpen,
                };
                let r = vfio.group_ioctl(&g, request, p, user, &mut lookup);
                if trace() {
                    eprintln!(
                        "group ioctl {request:#x}: {}",
                        match &r {
                            Ok(IoctlOutcome::Value(v)) => format!("{v}"),
                            Ok(IoctlOutcome::Device(_)) => "device fd".into(),
                            Err(e) => format!("errno {}", e.errno()),
                        }
                    );
                }
                if let Ok(IoctlOutcome::Device(d)) = r {
                    if open.devices.len() < 4 {
                        open.devices.push(d);
                    } else {
                        vfio.release_device(d);
                    }
                }
            }
            8 => {
                if open.devices.is_empty() {
                    continue;
                }
                let d = open.devices[usize::from(b.u8()) % open.devices.len()].clone();
                let request = REQUESTS[usize::from(b.u8()) % REQUESTS.len()];
                let p = pointer(&mut b);
                build_struct(&mut b, &mem, p, request);
                let r = vfio.device_ioctl(&d, request, p, user, &mut softvfio::testing::no_eventfds);
                if trace() {
                    eprintln!("device ioctl {request:#x}: {:?}", r.map_err(|e| e.errno()));
                }
            }
            9 => {
                if open.devices.is_empty() {
                    continue;
                }
                let d = open.devices[usize::from(b.u8()) % open.devices.len()].clone();
                let region = b.pick(&[0, 0, 0, 7, 1, 9]);
                let off = b.pick(&[0x80, 0x88, 0x90, 0x98, 0x4, 0x8, 0x20, 0x24, 0x60, 0, 4]);
                let len = b.pick(&[4, 8, 1, 2, 4096, 1 << 20, 1 << 21, u64::MAX]);
                let buf = pointer(&mut b);
                let offset = (region << 40).wrapping_add(off);
                if b.u8().is_multiple_of(2) {
                    let v = b.pick(&[0x1000, 0x2000, 0x10_0000, 1, 5, 0x100, 0x4_0000]);
                    let _ = mem.write(buf, &v.to_le_bytes());
                    let r = vfio.device_pwrite(&d, user, buf, len, offset);
                    if trace() {
                        eprintln!(
                            "pwrite {offset:#x} len {len:#x} value {v:#x}: {:?}",
                            r.map_err(|e| e.errno())
                        );
                    }
                } else {
                    let r = vfio.device_pread(&d, user, buf, len, offset);
                    if trace() {
                        eprintln!(
                            "pread {offset:#x} len {len:#x}: {:?}",
                            r.map_err(|e| e.errno())
                        );
                    }
                }
            }
            10 => {
                if open.devices.is_empty() {
                    continue;
                }
                let i = usize::from(b.u8()) % open.devices.len();
                vfio.release_device(open.devices.remove(i));
            }
            _ => {
                // Device DMA through the VT-d model at a steered IOVA.
                let iova = b.pick(&[0, 0x1000, 0x2000, 0x10_0000, 0x10_1000, 0xfee0_0000]);
                let len = usize::from(b.u8()) * 16 + 1;
                let r = if b.u8().is_multiple_of(2) {
                    port.write(iova, &vec![0xa5; len])
                } else {
                    let mut buf = vec![0u8; len];
                    port.read(iova, &mut buf)
                };
                if trace() {
                    eprintln!(
                        "dma {iova:#x}+{len}: {}",
                        if r.is_ok() { "ok" } else { "fault" }
                    );
                }
                let _ = port.translate(iova, Access::Read);
            }
        }
        check_accounting(&mem, &open, &vfio);
    }
    for d in open.devices.drain(..) {
        vfio.release_device(d);
    }
    for g in open.groups.drain(..) {
        vfio.release_group(g);
    }
    for c in open.containers.drain(..) {
        vfio.release_container(c);
    }
    assert!(
        vfio.attached_containers().is_empty(),
        "a container stayed attached"
    );
    assert_eq!(mem.stats().pin_refs, 0, "pins survived the last close");
    assert_eq!(
        mem.account().locked_pages(),
        0,
        "accounting survived the last close"
    );
    assert!(
        built.iommu.devices().is_empty(),
        "a device stayed attached to a domain"
    );
});
