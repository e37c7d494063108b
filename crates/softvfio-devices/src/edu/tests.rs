//! Unit tests: expected values are the ones measured on the reference
//! machine (QEMU 7.2 edu behind Linux 6.1 vfio-pci) unless noted.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use softvfio::device::VfioDeviceModel;

use super::*;
use crate::dma::{DmaError, DmaTarget, VecDmaTarget};

const BAR: u32 = 0;
const CFG: u32 = 7;
const MEM_BASE: u64 = 0x100_0000;
const MEM_LEN: usize = 0x200_0000 + 0x10000;

fn rd(d: &EduDevice, region: u32, off: u64, n: usize) -> Result<Vec<u8>, i32> {
    let mut b = vec![0xaa; n];
    let got = d.region_read(region, off, &mut b)?;
    b.truncate(got);
    Ok(b)
}

fn rd32(d: &EduDevice, off: u64) -> u32 {
    let b = rd(d, BAR, off, 4).unwrap();
    u32::from_le_bytes(b.try_into().unwrap())
}

fn rd64(d: &EduDevice, off: u64) -> u64 {
    let b = rd(d, BAR, off, 8).unwrap();
    u64::from_le_bytes(b.try_into().unwrap())
}

fn wr32(d: &EduDevice, off: u64, v: u32) {
    assert_eq!(d.region_write(BAR, off, &v.to_le_bytes()), Ok(4));
}

fn wr64(d: &EduDevice, off: u64, v: u64) {
    assert_eq!(d.region_write(BAR, off, &v.to_le_bytes()), Ok(8));
}

fn cfg16(d: &EduDevice, off: u64) -> u16 {
    let b = rd(d, CFG, off, 2).unwrap();
    u16::from_le_bytes(b.try_into().unwrap())
}

fn cfg32(d: &EduDevice, off: u64) -> u32 {
    let b = rd(d, CFG, off, 4).unwrap();
    u32::from_le_bytes(b.try_into().unwrap())
}

fn cfg_w16(d: &EduDevice, off: u64, v: u16) {
    assert_eq!(d.region_write(CFG, off, &v.to_le_bytes()), Ok(2));
}

fn cfg_w32(d: &EduDevice, off: u64, v: u32) {
    assert_eq!(d.region_write(CFG, off, &v.to_le_bytes()), Ok(4));
}

fn cfg_w8(d: &EduDevice, off: u64, v: u8) {
    assert_eq!(d.region_write(CFG, off, &[v]), Ok(1));
}

/// The probe's edu_dma(): program and start, then poll the start bit.
fn edu_dma(d: &EduDevice, src: u64, dst: u64, cnt: u64, to_ram: bool) -> u64 {
    wr64(d, 0x80, src);
    wr64(d, 0x88, dst);
    wr64(d, 0x90, cnt);
    wr64(d, 0x98, 1 | if to_ram { 2 } else { 0 });
    let cmd = rd64(d, 0x98);
    assert_eq!(cmd & 1, 0, "DMA still running");
    cmd
}

/// An edu with bus mastering on and 32 MiB of memory at 16 MiB.
fn setup() -> (EduDevice, Arc<VecDmaTarget>) {
    let d = EduDevice::new("0000:00:03.0");
    let mem = Arc::new(VecDmaTarget::new(MEM_BASE, MEM_LEN));
    d.set_dma_target(mem.clone());
    d.open_device();
    let cmd = cfg16(&d, 4);
    cfg_w16(&d, 4, cmd | 0x6);
    (d, mem)
}

fn recorder(d: &EduDevice) -> Arc<Mutex<Vec<u32>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    d.set_irq_notifier(Box::new(move |i| l.lock().unwrap().push(i)));
    log
}

#[test]
fn identification() {
    let (d, _) = setup();
    assert_eq!(rd32(&d, 0), 0x010000ed);
    // RO
    wr32(&d, 0, 0);
    assert_eq!(rd32(&d, 0), 0x010000ed);
}

#[test]
fn liveness_inverts() {
    let (d, _) = setup();
    assert_eq!(rd32(&d, 4), 0);
    wr32(&d, 4, 0x12345678);
    assert_eq!(rd32(&d, 4), 0xedcba987);
    // Narrow writes never reach the register.
    assert_eq!(d.region_write(BAR, 4, &[0x34, 0x12]), Ok(2));
    assert_eq!(rd32(&d, 4), 0xedcba987);
    wr32(&d, 4, 0);
    assert_eq!(rd32(&d, 4), 0xffffffff);
}

#[test]
fn factorial() {
    let (d, _) = setup();
    wr32(&d, 8, 5);
    assert_eq!(rd32(&d, 0x20) & 1, 0, "computing bit clear when done");
    assert_eq!(rd32(&d, 8), 120);
    for (n, want) in [
        (13, 0x7328cc00),
        (0, 1),
        (1, 1),
        (12, 479001600),
        (40, 0),
        (u32::MAX, 0),
    ] {
        wr32(&d, 8, n);
        assert_eq!(rd32(&d, 8), want, "{n}!");
    }
    assert_eq!(d.stats().factorials, 7);
}

#[test]
fn status_and_interrupt_bits() {
    let (d, _) = setup();
    let irqs = recorder(&d);
    wr32(&d, 0x20, 0xff);
    assert_eq!(rd32(&d, 0x20), 0x80, "only IRQFACT is writable");
    wr32(&d, 0x20, 0);
    assert_eq!(rd32(&d, 0x20), 0);

    // raise ORs into status, INTx asserts once (level)
    wr32(&d, 0x60, 0x5);
    assert_eq!(rd32(&d, 0x24), 5);
    assert!(d.intx_asserted());
    assert_eq!(cfg16(&d, 6), 0x0018, "status shows the interrupt");
    wr32(&d, 0x60, 0x10);
    assert_eq!(rd32(&d, 0x24), 0x15);
    assert_eq!(*irqs.lock().unwrap(), vec![0]);
    // partial ack keeps the line up
    wr32(&d, 0x64, 0x4);
    assert_eq!(rd32(&d, 0x24), 0x11);
    assert!(d.intx_asserted());
    wr32(&d, 0x64, 0x11);
    assert_eq!(rd32(&d, 0x24), 0);
    assert!(!d.intx_asserted());
    assert_eq!(cfg16(&d, 6), 0x0010);
    // write-only / read-only registers read all-ones / value
    assert_eq!(rd32(&d, 0x60), 0xffffffff);
    assert_eq!(rd32(&d, 0x64), 0xffffffff);
    wr32(&d, 0x24, 0x77);
    assert_eq!(rd32(&d, 0x24), 0);

    // factorial completion interrupt
    wr32(&d, 0x20, 0x80);
    wr32(&d, 8, 4);
    assert_eq!(rd32(&d, 8), 24);
    assert_eq!(rd32(&d, 0x24), 1);
    assert_eq!(rd32(&d, 0x20), 0x80);
    assert_eq!(*irqs.lock().unwrap(), vec![0, 0]);
    wr32(&d, 0x64, 0xffffffff);

    // DMA completion interrupt 0x100 (cmd bit 2), cmd reads back without start
    wr64(&d, 0x80, MEM_BASE);
    wr64(&d, 0x88, 0x40000);
    wr64(&d, 0x90, 1);
    wr64(&d, 0x98, 5);
    assert_eq!(rd32(&d, 0x24), 0x100);
    assert_eq!(rd32(&d, 0x98), 4);
    // a command write without the start bit is ignored
    wr32(&d, 0x98, 0x6);
    assert_eq!(rd32(&d, 0x98), 4);
    assert_eq!(irqs.lock().unwrap().len(), 3);
}

#[test]
fn dma_roundtrip_like_the_probe() {
    let (d, mem) = setup();
    let pattern: Vec<u8> = (0..4 * 4096).map(|i: usize| (i * 7 + 3) as u8).collect();
    assert!(mem.write_bytes(0x100_0000, &pattern));
    assert_eq!(edu_dma(&d, 0x100_0000 + 100, 0x40000, 3000, false), 0);
    assert_eq!(d.dma_buffer()[..3000], pattern[100..3100]);
    assert_eq!(edu_dma(&d, 0x40000, 0x200_0000 + 200, 3000, true), 2);
    assert_eq!(
        mem.read_bytes(0x200_0000 + 200, 3000).unwrap(),
        pattern[100..3100]
    );
    // nothing outside the destination range changed
    assert_eq!(mem.read_bytes(0x200_0000, 200).unwrap(), vec![0; 200]);
    assert_eq!(
        mem.read_bytes(0x200_0000 + 3200, 100).unwrap(),
        vec![0; 100]
    );
    let s = d.stats();
    assert_eq!(s.dma_commands, 2);
    assert_eq!(s.dma_completed, 2);
    assert_eq!(s.dma_bytes_to_device, 3000);
    assert_eq!(s.dma_bytes_to_memory, 3000);
    assert_eq!(s.dma_errors, 0);
    assert_eq!(s.dma_clamps, 0);
}

#[test]
fn dma_at_buffer_offset() {
    let (d, mem) = setup();
    assert!(mem.write_bytes(MEM_BASE, &[9; 64]));
    edu_dma(&d, MEM_BASE, 0x40000 + 4000, 96, false);
    assert_eq!(d.dma_buffer()[4000..4064], [9; 64]);
    // full buffer and empty transfers are valid (QEMU 7.2 aborted on both)
    edu_dma(&d, MEM_BASE, 0x40000, 4096, false);
    edu_dma(&d, MEM_BASE, 0x40000, 0, false);
    assert_eq!(d.stats().dma_range_errors, 0);
    assert_eq!(d.stats().dma_completed, 3);
}

#[test]
fn dma_address_clamped_to_28_bits() {
    let (d, mem) = setup();
    assert!(mem.write_bytes(0x100_0000, &[0x33; 64]));
    edu_dma(&d, 0x3100_0000, 0x40000, 64, false);
    assert_eq!(d.dma_buffer()[..64], [0x33; 64]);
    let snap = d.snapshot();
    assert_eq!(snap.stats.dma_clamps, 1);
    assert!(snap
        .log
        .iter()
        .any(|l| l == "EDU: clamping DMA 0x0000000031000000 to 0x0000000001000000!"));
    // the register keeps the unclamped value
    assert_eq!(rd64(&d, 0x80), 0x3100_0000);
    // EDU -> RAM clamps the destination
    edu_dma(&d, 0x40000, 0xf200_0000, 16, true);
    assert_eq!(d.stats().dma_clamps, 2);
    assert_eq!(mem.read_bytes(0x200_0000, 16).unwrap(), vec![0x33; 16]);
}

#[test]
fn dma_mask_option() {
    let mut o = EduOptions::new("x");
    o.dma_mask = u64::MAX;
    let d = EduDevice::with_options(o);
    let mem = Arc::new(VecDmaTarget::new(0x1_0000_0000, 4096));
    d.set_dma_target(mem.clone());
    cfg_w16(&d, 4, 0x0107);
    edu_dma(&d, 0x1_0000_0000, 0x40000, 16, false);
    assert_eq!(d.stats().dma_clamps, 0);
    assert_eq!(d.stats().dma_completed, 1);
}

#[test]
fn out_of_range_buffer_rejected_without_crash() {
    let (d, mem) = setup();
    assert!(mem.write_bytes(MEM_BASE, &[0x5a; 0x400]));
    let before = d.dma_buffer();
    let cases = [
        (0x40f00, 0x200),    // runs past the end
        (0x3ff00, 0x10),     // starts below the buffer
        (0x41000, 1),        // starts at the end
        (0x40000, 4097),     // one byte too many
        (0x40000, u64::MAX), // overflow
        (u64::MAX - 3, 8),   // overflow of the address
        (0, 0),              // far below
    ];
    for (i, (dev, cnt)) in cases.into_iter().enumerate() {
        // RAM -> EDU: buffer untouched
        assert_eq!(edu_dma(&d, MEM_BASE, dev, cnt, false), 0);
        assert_eq!(d.dma_buffer(), before);
        // EDU -> RAM: memory untouched
        assert_eq!(edu_dma(&d, dev, 0x200_0000, cnt, true), 2);
        assert_eq!(mem.read_bytes(0x200_0000, 0x400).unwrap(), vec![0; 0x400]);
        assert_eq!(d.stats().dma_range_errors, 2 * (i as u64 + 1));
    }
    assert_eq!(mem.access_counts(), (0, 0), "target never reached");
    let snap = d.snapshot();
    assert_eq!(snap.stats.dma_errors, 14);
    assert!(snap.last_error.unwrap().contains("out of bounds"));
    // the completion interrupt still comes if asked for
    wr64(&d, 0x88, 0x50000);
    wr64(&d, 0x98, 5);
    assert_eq!(rd32(&d, 0x24), 0x100);
    assert_eq!(rd32(&d, 0x98), 4);
}

/// A target that refuses everything but counts attempts.
struct Broken(AtomicU32);

impl DmaTarget for Broken {
    fn dma_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        buf.fill(0xee); // scribbles: the device must not trust it
        Err(DmaError::fault(
            addr,
            crate::dma::DmaAccess::Read,
            0,
            "no mapping",
        ))
    }
    fn dma_write(&self, addr: u64, _: &[u8]) -> Result<(), DmaError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Err(DmaError::fault(
            addr,
            crate::dma::DmaAccess::Write,
            0,
            "no mapping",
        ))
    }
}

#[test]
fn dma_error_path() {
    let (d, mem) = setup();
    // fill the buffer first
    assert!(mem.write_bytes(MEM_BASE, &[0x44; 64]));
    edu_dma(&d, MEM_BASE, 0x40000, 64, false);

    // writes into read-only memory fault, memory untouched
    mem.add_read_only(0x200_0000..0x200_1000);
    edu_dma(&d, 0x40000, 0x200_0000, 64, true);
    assert_eq!(mem.read_bytes(0x200_0000, 64).unwrap(), vec![0; 64]);
    assert_eq!(d.stats().dma_faults, 1);
    assert_eq!(d.stats().dma_errors, 1);
    assert_eq!(d.stats().dma_bytes_to_memory, 0);

    // a write that crosses into read-only memory writes only the prefix
    edu_dma(&d, 0x40000, 0x200_0000 - 16, 64, true);
    assert_eq!(mem.read_bytes(0x200_0000 - 16, 16).unwrap(), vec![0x44; 16]);
    assert_eq!(mem.read_bytes(0x200_0000, 48).unwrap(), vec![0; 48]);
    assert_eq!(d.stats().dma_bytes_to_memory, 16);

    // a read crossing the end of memory: the readable prefix, then zeros
    let end = MEM_BASE + MEM_LEN as u64;
    assert!(mem.write_bytes(end - 32, &[0x22; 32]));
    edu_dma(&d, end - 32, 0x40000, 64, false);
    let buf = d.dma_buffer();
    assert_eq!(buf[..32], [0x22; 32]);
    assert_eq!(buf[32..64], [0; 32]);

    // a target that fails everything: never panics, everything counted
    let broken = Arc::new(Broken(AtomicU32::new(0)));
    d.set_dma_target(broken.clone());
    edu_dma(&d, 0x40000, 0x200_0000, 64, true);
    edu_dma(&d, 0x100_0000, 0x40000, 64, false);
    assert_eq!(broken.0.load(Ordering::Relaxed), 2);
    assert_eq!(d.dma_buffer()[..64], [0; 64], "scribbled bytes not trusted");
    let s = d.stats();
    assert_eq!(s.dma_faults, 5);
    assert_eq!(s.dma_errors, 5);

    // no target at all
    d.clear_dma_target();
    edu_dma(&d, 0x40000, 0x200_0000, 64, true);
    assert_eq!(d.stats().dma_no_target, 1);
    assert_eq!(d.stats().dma_errors, 6);
    assert!(d.snapshot().last_error.unwrap().contains("no DMA target"));
}

#[test]
fn bus_master_disabled_blocks_dma() {
    let (d, mem) = setup();
    assert!(mem.write_bytes(MEM_BASE, &[0x11; 64]));
    edu_dma(&d, MEM_BASE, 0x40000, 64, false);
    assert_eq!(d.dma_buffer()[..64], [0x11; 64]);
    let counts = mem.access_counts();

    cfg_w16(&d, 4, 0x0103);
    // EDU -> RAM: nothing written
    edu_dma(&d, 0x40000, 0x200_0000, 64, true);
    assert_eq!(mem.read_bytes(0x200_0000, 64).unwrap(), vec![0; 64]);
    // RAM -> EDU: the device reads zeros
    edu_dma(&d, MEM_BASE, 0x40000, 64, false);
    assert_eq!(d.dma_buffer()[..64], [0; 64]);
    assert_eq!(mem.access_counts(), counts, "target never reached");
    let s = d.stats();
    assert_eq!(s.dma_blocked_no_bus_master, 2);
    assert_eq!(s.dma_errors, 0, "silent, like the PCI bus");

    cfg_w16(&d, 4, 0x0107);
    edu_dma(&d, MEM_BASE, 0x40000, 64, false);
    assert_eq!(d.dma_buffer()[..64], [0x11; 64]);
}

#[test]
fn config_space_as_measured() {
    let d = EduDevice::new("0000:00:03.0");
    let want: [u32; 20] = [
        0x11e81234, 0x00100103, 0x00ff0010, 0, 0xfea00000, 0, 0, 0, 0, 0, 0, 0x11001af4, 0,
        0x00000040, 0, 0x0000010b, 0x00800005, 0, 0, 0,
    ];
    for (i, w) in want.iter().enumerate() {
        assert_eq!(cfg32(&d, i as u64 * 4), *w, "dword {:#x}", i * 4);
    }
    for off in (0x50..0x100).step_by(4) {
        assert_eq!(cfg32(&d, off), 0);
    }
    // sub-dword and unaligned reads are plain byte views
    assert_eq!(rd(&d, CFG, 1, 1).unwrap(), vec![0x12]);
    assert_eq!(cfg16(&d, 2), 0x11e8);
    assert_eq!(rd(&d, CFG, 1, 4).unwrap(), vec![0x12, 0xe8, 0x11, 0x03]);
    assert_eq!(
        rd(&d, CFG, 0, 8).unwrap(),
        0x0010010311e81234u64.to_le_bytes()
    );
    assert_eq!(rd(&d, CFG, 254, 2).unwrap(), vec![0, 0]);
    // anything not fitting in 256 bytes: EFAULT, nothing done
    assert_eq!(rd(&d, CFG, 252, 8), Err(libc::EFAULT));
    assert_eq!(rd(&d, CFG, 255, 4), Err(libc::EFAULT));
    assert_eq!(rd(&d, CFG, 256, 4), Err(libc::EFAULT));
    assert_eq!(rd(&d, CFG, u64::MAX, 4), Err(libc::EFAULT));
    assert_eq!(d.region_write(CFG, 252, &[0; 8]), Err(libc::EFAULT));
    assert_eq!(rd(&d, CFG, 300, 0), Ok(vec![]));
}

#[test]
fn config_bar_sizing_and_command() {
    let d = EduDevice::new("0000:00:03.0");
    cfg_w32(&d, 0x10, 0xffffffff);
    assert_eq!(cfg32(&d, 0x10), 0xfff00000);
    cfg_w32(&d, 0x10, 0x12345678);
    assert_eq!(cfg32(&d, 0x10), 0x12300000);
    cfg_w8(&d, 0x11, 0xff);
    assert_eq!(cfg32(&d, 0x10), 0x12300000);
    for off in [0x14, 0x18, 0x1c, 0x20, 0x24, 0x30] {
        cfg_w32(&d, off, 0xffffffff);
        assert_eq!(cfg32(&d, off), 0, "unimplemented BAR {off:#x}");
    }
    // read-only fields
    for (off, want) in [
        (0x00, 0x11e81234),
        (0x08, 0x00ff0010),
        (0x2c, 0x11001af4),
        (0x28, 0),
        (0x38, 0),
    ] {
        cfg_w32(&d, off, 0xffffffff);
        assert_eq!(cfg32(&d, off), want, "{off:#x}");
    }
    cfg_w32(&d, 0x0c, 0xffffffff);
    assert_eq!(
        cfg32(&d, 0x0c),
        0xff,
        "only the cache line size is writable"
    );
    cfg_w8(&d, 0x3c, 0xff);
    cfg_w8(&d, 0x3d, 0);
    cfg_w16(&d, 0x3e, 0xffff);
    assert_eq!(cfg32(&d, 0x3c), 0x1ff);
    cfg_w8(&d, 0x34, 0);
    assert_eq!(cfg32(&d, 0x34), 0x40);

    // command: I/O, memory, master, SERR, INTx disable
    assert_eq!(cfg16(&d, 4), 0x0103);
    cfg_w16(&d, 4, 0xffff);
    assert_eq!(cfg16(&d, 4), 0x0507);
    cfg_w16(&d, 6, 0xffff);
    assert_eq!(cfg16(&d, 6), 0x0010);
    cfg_w16(&d, 4, 0);
    assert_eq!(cfg16(&d, 4), 0);
    // memory decoding off: BAR access fails with EIO
    assert_eq!(rd(&d, BAR, 0, 4), Err(libc::EIO));
    assert_eq!(d.region_write(BAR, 4, &[0; 4]), Err(libc::EIO));
    cfg_w16(&d, 4, 0x0103);
    assert_eq!(rd32(&d, 0), 0x010000ed);
    // the probe's read-modify-write of the command register
    let cmd = cfg16(&d, 4) | 0x6;
    cfg_w16(&d, 4, cmd);
    assert_eq!(cfg16(&d, 4), 0x0107);
    assert!(d.snapshot().bus_master);
}

#[test]
fn config_msi_capability() {
    let d = EduDevice::new("0000:00:03.0");
    // flags low byte is virtual; enable needs SET_IRQS, queue size clamps
    cfg_w16(&d, 0x42, 0xffff);
    assert_eq!(cfg32(&d, 0x40), 0x008e0005);
    cfg_w16(&d, 0x42, 0);
    assert_eq!(cfg32(&d, 0x40), 0x00000005);
    cfg_w8(&d, 0x42, 0x0e);
    assert_eq!(cfg32(&d, 0x40), 0x000e0005);
    cfg_w16(&d, 0x42, 0x80);
    cfg_w32(&d, 0x40, 0xffffffff);
    assert_eq!(cfg32(&d, 0x40), 0x008e0005, "id and next are read-only");
    cfg_w32(&d, 0x40, 0x00800005);
    cfg_w8(&d, 0x41, 0x77);
    cfg_w8(&d, 0x43, 0x77);
    assert_eq!(cfg32(&d, 0x40), 0x00800005);
    // address, data and the bytes after the capability are plain storage
    for off in [0x44, 0x48, 0x4c, 0x50, 0xfc] {
        cfg_w32(&d, off, 0x11223344);
        assert_eq!(cfg32(&d, off), 0x11223344, "{off:#x}");
    }
    cfg_w16(&d, 0x4e, 0xabcd);
    assert_eq!(cfg32(&d, 0x4c), 0xabcd3344);

    // with MSI enabled through SET_IRQS the enable bit sticks
    d.set_msi_enabled(true);
    assert_eq!(
        cfg32(&d, 0x40),
        0x00800005,
        "SET_IRQS leaves the flags alone"
    );
    cfg_w8(&d, 0x42, 0x81);
    assert_eq!(cfg32(&d, 0x40), 0x00810005);
    d.set_msi_enabled(false);
    assert_eq!(cfg32(&d, 0x40), 0x00810005);
    cfg_w8(&d, 0x42, 0x81);
    assert_eq!(cfg32(&d, 0x40), 0x00800005);
}

#[test]
fn region_and_irq_info() {
    use vfio_bindings::bindings::vfio::*;
    let d = EduDevice::new("0000:00:03.0");
    assert_eq!(d.name(), "0000:00:03.0");
    assert_eq!(d.flags(), VFIO_DEVICE_FLAGS_PCI);
    assert_eq!(d.flags(), 0x2);
    assert_eq!(d.num_regions(), 9);
    assert_eq!(d.num_irqs(), 5);
    assert!(d.supports_svm());
    let bar0 = d.region_info(0).unwrap();
    // Linux 6.1 on QEMU's edu: read, write, mmap; no capability (MSI only).
    assert_eq!((bar0.flags, bar0.size), (0x7, 0x100000));
    assert!(d.region_caps(0).is_empty());
    for i in 1..=6 {
        let r = d.region_info(i).unwrap();
        assert_eq!((r.flags, r.size), (0, 0), "region {i}");
    }
    let c = d.region_info(7).unwrap();
    assert_eq!((c.flags, c.size), (0x3, 256));
    assert!(d.region_info(8).is_none(), "no VGA");
    assert!(d.region_info(9).is_none());

    let i = |n| d.irq_info(n).map(|x| (x.flags, x.count));
    assert_eq!(i(0), Some((0x7, 1)));
    assert_eq!(i(1), Some((0x9, 1)));
    assert_eq!(i(2), Some((0x9, 0)));
    assert_eq!(i(3), None, "ERR is PCIe only");
    assert_eq!(i(4), Some((0x9, 1)));
    assert_eq!(i(5), None);

    let mut o = EduOptions::new("x");
    o.reset_supported = true;
    let r = EduDevice::with_options(o);
    assert_eq!(r.flags(), VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
}

#[test]
fn bar_accesses_of_every_width() {
    let (d, _) = setup();
    for off in 0..8 {
        assert_eq!(rd(&d, BAR, off, 1).unwrap(), vec![0], "1 byte at {off}");
    }
    assert_eq!(rd(&d, BAR, 0, 2).unwrap(), vec![0, 0]);
    assert_eq!(rd(&d, BAR, 2, 2).unwrap(), vec![0, 0]);
    assert_eq!(rd(&d, BAR, 0, 3).unwrap(), vec![0, 0, 0]);
    assert_eq!(rd(&d, BAR, 2, 4).unwrap(), vec![0; 4], "split 2+2");
    assert_eq!(rd(&d, BAR, 1, 4).unwrap(), vec![0; 4], "split 1+2+1");
    assert_eq!(rd32(&d, 0), 0x010000ed);
    // 8 bytes below 0x80 are split in two 4-byte accesses, as Linux 6.1
    // does (the reference machine read 0x10000ed: id, then liveness 0)
    assert_eq!(rd64(&d, 0), 0x0000_0000_0100_00ed);
    // unimplemented registers
    for off in [0x0c, 0x7c, 0x84, 0x40000, 0xffffc] {
        assert_eq!(rd32(&d, off), 0xffffffff, "{off:#x}");
    }
    // 64-bit DMA registers: 8-byte access whole, 4-byte access low half
    wr64(&d, 0x80, 0x1122334455667788);
    assert_eq!(rd64(&d, 0x80), 0x1122334455667788);
    assert_eq!(rd32(&d, 0x80), 0x55667788);
    assert_eq!(rd32(&d, 0x84), 0xffffffff);
    wr32(&d, 0x80, 0xaabbccdd);
    assert_eq!(rd64(&d, 0x80), 0xaabbccdd, "4-byte write zero-extends");
    wr32(&d, 0x84, 0x99);
    assert_eq!(d.region_write(BAR, 0x80, &[0x34, 0x12]), Ok(2));
    assert_eq!(rd64(&d, 0x80), 0xaabbccdd);
    assert_eq!(rd(&d, BAR, 0x80, 2).unwrap(), vec![0, 0]);
    assert_eq!(rd(&d, BAR, 0x80, 1).unwrap(), vec![0]);
    // 8 bytes at 0x84 are split 4+4
    assert_eq!(
        rd(&d, BAR, 0x84, 8).unwrap(),
        0x00000000ffffffffu64.to_le_bytes()
    );
    // 16 bytes at 0x80: src then dst
    wr64(&d, 0x88, 0x40000);
    let b = rd(&d, BAR, 0x80, 16).unwrap();
    assert_eq!(b[..8], 0xaabbccddu64.to_le_bytes());
    assert_eq!(b[8..], 0x40000u64.to_le_bytes());
    // end of the BAR: short; past it: EINVAL
    assert_eq!(rd(&d, BAR, 0xffffc, 8).unwrap(), vec![0xff; 4]);
    assert_eq!(rd(&d, BAR, 0xfffff, 1).unwrap(), vec![0]);
    assert_eq!(d.region_write(BAR, 0xffffc, &[0; 8]), Ok(4));
    assert_eq!(rd(&d, BAR, 0x100000, 4), Err(libc::EINVAL));
    assert_eq!(rd(&d, BAR, u64::MAX, 4), Err(libc::EINVAL));
    assert_eq!(d.region_write(BAR, 0x100000, &[0; 4]), Err(libc::EINVAL));
    assert_eq!(rd(&d, BAR, 0, 0), Ok(vec![]));
    // other regions
    for region in [1, 2, 3, 4, 5, 6, 8, 9, 1000] {
        assert_eq!(rd(&d, region, 0, 4), Err(libc::EINVAL), "region {region}");
        assert_eq!(d.region_write(region, 0, &[0; 4]), Err(libc::EINVAL));
    }
}

#[test]
fn linux_6_1_access_splitting() {
    let mut o = EduOptions::new("x");
    o.mmio_64bit = false;
    let d = EduDevice::with_options(o);
    // as measured on 6.1: 8-byte accesses are two 4-byte accesses
    assert_eq!(rd64(&d, 0), 0x00000000_010000ed);
    wr64(&d, 0x80, 0x1122334455667788);
    assert_eq!(rd64(&d, 0x80), 0xffffffff_55667788);
}

#[test]
fn reset_semantics() {
    // reference edu: no reset method
    let (d, mem) = setup();
    assert_eq!(d.reset(), Err(libc::EINVAL));
    wr32(&d, 4, 0);
    assert!(mem.write_bytes(MEM_BASE, &[7; 16]));
    edu_dma(&d, MEM_BASE, 0x40000, 16, false);
    d.close_device();
    d.open_device();
    assert_eq!(cfg16(&d, 4), 0x0103, "config restored on close");
    assert_eq!(rd32(&d, 4), 0xffffffff, "registers survive close/open");
    assert_eq!(d.dma_buffer()[..16], [7; 16]);
    d.power_on_reset();
    assert_eq!(rd32(&d, 4), 0);
    assert_eq!(d.dma_buffer(), vec![0; 4096]);

    // an edu that can be reset
    let mut o = EduOptions::new("0000:00:04.0");
    o.reset_supported = true;
    let d = EduDevice::with_options(o);
    d.set_dma_target(mem.clone());
    cfg_w16(&d, 4, 0x0107);
    wr32(&d, 4, 0);
    wr32(&d, 0x20, 0x80);
    wr32(&d, 8, 3);
    edu_dma(&d, MEM_BASE, 0x40000, 16, false);
    wr32(&d, 0xa0, 0x8000_0001);
    assert!(d.intx_asserted());
    assert_eq!(d.reset(), Ok(()));
    let r = d.registers();
    assert_eq!(
        (
            r.liveness,
            r.factorial,
            r.status,
            r.irq_status,
            r.dma_src,
            r.dma_dst,
            r.dma_cnt,
            r.dma_cmd,
            r.pasid
        ),
        (0, 0, 0, 0, 0, 0, 0, 0, 0)
    );
    assert_eq!(r.identification, 0x010000ed);
    assert_eq!(d.dma_buffer(), vec![0; 4096]);
    assert!(!d.intx_asserted());
    assert_eq!(
        cfg16(&d, 4),
        0x0107,
        "config saved and restored around reset"
    );
    assert_eq!(d.stats().resets, 1);
    assert_eq!(d.stats().dma_completed, 1, "counters are history, kept");
}

#[test]
fn msi_delivery() {
    let (d, _) = setup();
    let irqs = recorder(&d);
    d.set_msi_enabled(true);
    // every raise sends an MSI, even with status already set
    wr32(&d, 0x60, 2);
    wr32(&d, 0x60, 4);
    assert_eq!(*irqs.lock().unwrap(), vec![1, 1]);
    assert!(!d.intx_asserted());
    wr32(&d, 0x64, 0xff);
    // no bus master: no MSI
    cfg_w16(&d, 4, 0x0103);
    wr32(&d, 0x60, 2);
    assert_eq!(irqs.lock().unwrap().len(), 2);
    assert_eq!(d.stats().msi_dropped, 1);
    wr32(&d, 0x64, 0xff);
    cfg_w16(&d, 4, 0x0107);
    // user clears the (virtual) enable bit: the device stops using MSI
    cfg_w8(&d, 0x42, 0x80);
    wr32(&d, 0x60, 2);
    assert_eq!(*irqs.lock().unwrap(), vec![1, 1, 0], "back to INTx");
    wr32(&d, 0x64, 0xff);
    d.set_msi_enabled(false);
    assert_eq!(d.stats().msi_sent, 2);
}

#[test]
fn intx_disable_in_command_register() {
    let (d, _) = setup();
    let irqs = recorder(&d);
    cfg_w16(&d, 4, 0x0507);
    wr32(&d, 0x60, 1);
    assert!(d.intx_asserted());
    assert!(!d.intx_pending());
    assert!(irqs.lock().unwrap().is_empty());
    cfg_w16(&d, 4, 0x0107);
    assert_eq!(*irqs.lock().unwrap(), vec![0], "released on enable");
    assert!(d.intx_pending());
    // enabling MSI deasserts INTx
    d.set_msi_enabled(true);
    assert!(!d.intx_asserted());
}

#[test]
fn notifier_may_call_back_into_the_device() {
    let (d, _) = setup();
    let d = Arc::new(d);
    let seen = Arc::new(AtomicU32::new(0));
    let (d2, s2) = (Arc::downgrade(&d), seen.clone());
    d.set_irq_notifier(Box::new(move |_| {
        if let Some(d) = d2.upgrade() {
            let mut b = [0u8; 4];
            if d.region_read(BAR, 0x24, &mut b) == Ok(4) {
                s2.store(u32::from_le_bytes(b), Ordering::SeqCst);
            }
            // the ISR acknowledges
            let _ = d.region_write(BAR, 0x64, &b);
        }
    }));
    wr32(&d, 0x60, 0x42);
    assert_eq!(seen.load(Ordering::SeqCst), 0x42);
    assert_eq!(rd32(&d, 0x24), 0);
    assert!(!d.intx_asserted());
}

#[test]
fn pasid_register_and_dma() {
    let (d, mem) = setup();
    assert_eq!(rd32(&d, 0xa0), 0);
    wr32(&d, 0xa0, 0xffff_ffff);
    assert_eq!(rd32(&d, 0xa0), 0x800f_ffff, "reserved bits read 0");
    wr32(&d, 0xa0, 0x8000_0005);
    assert_eq!(rd32(&d, 0xa0), 0x8000_0005);

    // a 47-bit process address: no clamp, goes through the PASID methods
    let va = 0x7fff_1234_5000u64;
    let proc_mem = Arc::new(VecDmaTarget::new(va, 8192));
    proc_mem.allow_pasid(5);
    assert!(proc_mem.write_bytes(va, &[0xab; 64]));
    d.set_dma_target(proc_mem.clone());
    edu_dma(&d, va, 0x40000, 64, false);
    assert_eq!(d.dma_buffer()[..64], [0xab; 64]);
    edu_dma(&d, 0x40000, va + 4096, 64, true);
    assert_eq!(proc_mem.read_bytes(va + 4096, 64).unwrap(), vec![0xab; 64]);
    assert_eq!(proc_mem.last_pasid(), Some(5));
    let s = d.stats();
    assert_eq!((s.dma_pasid, s.dma_clamps, s.dma_errors), (2, 0, 0));

    // unbound PASID: fault, counted
    wr32(&d, 0xa0, 0x8000_0006);
    edu_dma(&d, 0x40000, va, 64, true);
    assert_eq!(d.stats().dma_faults, 1);

    // a DMA path without PASID support refuses
    d.set_dma_target(mem.clone());
    edu_dma(&d, 0x40000, MEM_BASE, 64, true);
    assert_eq!(d.stats().dma_faults, 2);
    assert!(d.snapshot().last_error.unwrap().contains("PASID"));
    assert_eq!(mem.read_bytes(MEM_BASE, 64).unwrap(), vec![0; 64]);

    // disabled again: ordinary, clamped DMA
    wr32(&d, 0xa0, 5);
    edu_dma(&d, 0x40000, MEM_BASE, 64, true);
    assert_eq!(mem.read_bytes(MEM_BASE, 64).unwrap(), vec![0xab; 64]);
}

#[test]
fn snapshot_serializes() {
    let (d, _) = setup();
    wr32(&d, 4, 1);
    let json = serde_json::to_value(d.snapshot()).unwrap();
    assert_eq!(json["registers"]["liveness"], 0xfffffffeu32);
    assert_eq!(json["registers"]["identification"], 0x010000ed);
    assert_eq!(json["command"], 0x0107);
    assert_eq!(json["dma_target_attached"], true);
    assert!(json["stats"]["dma_clamps"].is_u64());
}

#[test]
fn core_is_usable_alone() {
    // the register model without any PCI wrapper (as a mediated edu would)
    let mut core = EduCore::default();
    let mem = VecDmaTarget::new(0x1000, 4096);
    assert!(mem.write_bytes(0x1000, b"hello"));
    let bus = DmaBus {
        target: Some(&mem),
        bus_master: true,
    };
    core.mmio_write(0x80, 8, 0x1000, bus);
    core.mmio_write(0x88, 8, 0x40000, bus);
    core.mmio_write(0x90, 8, 5, bus);
    assert_eq!(core.mmio_write(0x98, 8, 5, bus), Some(IrqRequest::Raise));
    assert_eq!(&core.dma_buffer()[..5], b"hello");
    assert_eq!(core.mmio_read(0x24, 4), 0x100);
    assert_eq!(
        core.mmio_write(0x64, 4, 0x100, bus),
        Some(IrqRequest::Lower)
    );
    // unaligned accesses are refused by the bus
    assert_eq!(core.mmio_read(0x2, 4), 0);
    assert_eq!(core.mmio_write(0x6, 4, 1, bus), None);
}

#[test]
fn one_wide_write_can_signal_several_times() {
    for mmio_64bit in [false, true] {
        let mut o = EduOptions::new("x");
        o.mmio_64bit = mmio_64bit;
        let d = EduDevice::with_options(o);
        let mem = Arc::new(VecDmaTarget::new(MEM_BASE, 4096));
        d.set_dma_target(mem.clone());
        cfg_w16(&d, 4, 0x0107);
        let irqs = recorder(&d);
        d.set_msi_enabled(true);
        assert!(mem.write_bytes(MEM_BASE, &[1; 8]));
        wr64(&d, 0x80, MEM_BASE);
        wr64(&d, 0x88, 0x40000);
        wr64(&d, 0x90, 8);
        wr32(&d, 0x20, 0x80);
        // 0x08..0xa0 in one pwrite: factorial (IRQ), status keeps IRQFACT,
        // raise 0x60, DMA command with IRQ; the rest rewritten as read
        let mut block = rd(&d, BAR, 0x08, 0x98).unwrap();
        let put = |b: &mut Vec<u8>, off: usize, v: &[u8]| {
            b[off - 8..off - 8 + v.len()].copy_from_slice(v)
        };
        put(&mut block, 0x08, &3u32.to_le_bytes());
        put(&mut block, 0x20, &0x80u32.to_le_bytes());
        put(&mut block, 0x60, &0x8u32.to_le_bytes());
        put(&mut block, 0x64, &0u32.to_le_bytes());
        put(&mut block, 0x98, &5u64.to_le_bytes());
        assert_eq!(d.region_write(BAR, 0x08, &block), Ok(0x98));
        // Below 0x80 the block is written in 4-byte pieces in both modes
        // (factorial, raise and DMA interrupts all happen).
        let _ = mmio_64bit;
        assert_eq!(*irqs.lock().unwrap(), vec![1, 1, 1]);
        assert_eq!(rd32(&d, 0x24), 0x109);
        assert_eq!(rd32(&d, 8), 6);
        assert_eq!(d.dma_buffer()[..8], [1; 8]);
    }
}

/// Loads and stores on a BAR0 mapping, as Linux 6.1 on QEMU (TCG) answers
/// them (tests-oracle/kernel-6.1-mmio-bad.txt): exact widths, two aligned
/// loads around a misaligned one, misaligned stores byte by byte (ignored),
/// SIGBUS with memory decoding off or in low power.
#[test]
fn mapped_accesses_as_measured() {
    use softvfio::device::MappedAccessError;
    let (d, _) = setup();
    let load = |off: u64, n: usize| {
        let mut b = vec![0u8; n];
        d.mapped_read(BAR, off, &mut b).map(|()| {
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(&b);
            u64::from_le_bytes(v)
        })
    };
    let store = |off: u64, v: u64, n: usize| d.mapped_write(BAR, off, &v.to_le_bytes()[..n]);
    wr32(&d, 0x04, 0x11223344);
    assert_eq!(load(0x00, 4), Ok(0x10000ed));
    assert_eq!(load(0x04, 1), Ok(0));
    assert_eq!(load(0x04, 2), Ok(0));
    assert_eq!(load(0x05, 4), Ok(0xeeddcc));
    assert_eq!(load(0x02, 4), Ok(0xccbb0100));
    assert_eq!(load(0x00, 8), Ok(!0));
    assert_eq!(load(0x04, 8), Ok(!0));
    assert_eq!(load(0x10, 4), Ok(0xffff_ffff));
    assert_eq!(load(0xffffc, 4), Ok(0xffff_ffff));
    assert_eq!(store(0x04, 0x55, 1), Ok(()));
    assert_eq!(store(0x04, 0x5555, 2), Ok(()));
    assert_eq!(store(0x05, 0x01020304, 4), Ok(()));
    assert_eq!(rd32(&d, 0x04), 0xeeddccbb);
    assert_eq!(store(0x00, 0x0102030405060708, 8), Ok(()));
    assert_eq!((rd32(&d, 0x00), rd32(&d, 0x04)), (0x10000ed, 0xeeddccbb));
    assert_eq!(store(0x80, 0x1_2345_6789, 8), Ok(()));
    assert_eq!(load(0x80, 8), Ok(0x1_2345_6789));
    assert_eq!(load(0x80, 4), Ok(0x2345_6789));
    assert_eq!(store(0x84, 0x1111222233334444, 8), Ok(()));
    assert_eq!(load(0x80, 8), Ok(0x1_2345_6789));
    // Past the BAR, or a width no instruction has: refused.
    assert_eq!(load(0x100000, 4), Err(MappedAccessError::Bus));
    assert_eq!(load(0xffffe, 4), Err(MappedAccessError::Bus));
    assert_eq!(load(0, 3), Err(MappedAccessError::Bus));
    // Memory decoding off: SIGBUS, both ways; on again: served.
    cfg_w16(&d, 4, cfg16(&d, 4) & !2);
    assert_eq!(load(0x00, 4), Err(MappedAccessError::Bus));
    assert_eq!(store(0x04, 1, 4), Err(MappedAccessError::Bus));
    cfg_w16(&d, 4, cfg16(&d, 4) | 2);
    assert_eq!(load(0x00, 4), Ok(0x10000ed));
}
