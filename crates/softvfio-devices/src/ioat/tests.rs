//! The I/OAT device driven through its vfio-pci regions the way the VFIO
//! selftests' `lib/drivers/ioat` and `vfio_pci_driver_test` drive it.

use std::sync::Arc;

use softvfio::device::{IrqAction, IrqData, IrqSet, VfioDeviceModel};
use softvfio::eventfd::{Eventfd, EventfdArg};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX as BAR0, VFIO_PCI_CONFIG_REGION_INDEX as CONFIG,
    VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX,
};

use super::channel::status;
use super::regs::*;
use super::{IoatDevice, IoatOptions};
use crate::dma::{DmaTarget, VecDmaTarget};

const MEM: u64 = 0x100_0000;
const CH: u64 = CHANNEL_BASE;

struct Rig {
    dev: IoatDevice,
    mem: Arc<VecDmaTarget>,
}

fn rig(xfercap: u8) -> Rig {
    let mut opts = IoatOptions::new("0000:00:04.0");
    opts.xfercap = xfercap;
    let dev = IoatDevice::with_options(opts);
    let mem = Arc::new(VecDmaTarget::new(MEM, 0x40_0000));
    dev.set_dma_target(mem.clone());
    dev.open_device();
    Rig { dev, mem }
}

fn rd(d: &IoatDevice, off: u64, n: usize) -> u64 {
    let mut b = [0u8; 8];
    assert_eq!(d.region_read(BAR0, off, &mut b[..n]), Ok(n));
    u64::from_le_bytes(b)
}

fn wr(d: &IoatDevice, off: u64, n: usize, v: u64) {
    assert_eq!(d.region_write(BAR0, off, &v.to_le_bytes()[..n]), Ok(n));
}

fn cfg_rd32(d: &IoatDevice, off: u64) -> u32 {
    let mut b = [0u8; 4];
    assert_eq!(d.region_read(CONFIG, off, &mut b), Ok(4));
    u32::from_le_bytes(b)
}

fn cfg_wr(d: &IoatDevice, off: u64, data: &[u8]) {
    assert_eq!(d.region_write(CONFIG, off, data), Ok(data.len()));
}

fn desc(size: u32, ctl: u32, src: u64, dst: u64, next: u64) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[0..4].copy_from_slice(&size.to_le_bytes());
    b[4..8].copy_from_slice(&ctl.to_le_bytes());
    b[8..16].copy_from_slice(&src.to_le_bytes());
    b[16..24].copy_from_slice(&dst.to_le_bytes());
    b[24..32].copy_from_slice(&next.to_le_bytes());
    b
}

/// `ioat_init`: memory + bus master + INTx disable, reset, MSI-X.
fn init(r: &Rig) -> Eventfd {
    cfg_wr(&r.dev, 4, &(0x0002u16 | 0x0004 | 0x0400).to_le_bytes());
    reset(r);
    wr(&r.dev, INTRCTRL, 1, u64::from(INTRCTRL_MSIX_VECTOR_CONTROL));
    let e = Eventfd::new().unwrap();
    r.dev
        .set_irqs(IrqSet {
            index: VFIO_PCI_MSIX_IRQ_INDEX,
            start: 0,
            count: 1,
            action: IrqAction::Trigger,
            data: IrqData::Eventfds(vec![EventfdArg::Fd(e.try_clone().unwrap())]),
        })
        .unwrap();
    e
}

/// `ioat_reset`: clear errors, CHANCMD reset, wait, expect HALTED.
fn reset(r: &Rig) {
    let d = &r.dev;
    let e = cfg_rd32(d, PCI_CHANERR_INT as u64);
    cfg_wr(d, PCI_CHANERR_INT as u64, &e.to_le_bytes());
    let e = rd(d, CH + CHANERR, 4);
    wr(d, CH + CHANERR, 4, e);
    wr(d, CH + CHANCMD, 1, u64::from(CHANCMD_RESET));
    assert_eq!(rd(d, CH + CHANCMD, 1) as u8 & CHANCMD_RESET, 0);
    assert_eq!(rd(d, CH + CHANSTS, 8) & CHANSTS_STATUS, status::HALTED);
}

/// `__ioat_memcpy_start` with a descriptor at `d` linked to itself.
fn memcpy_start(r: &Rig, d: u64, src: u64, dst: u64, size: u32, count: u16, int_en: bool) {
    r.mem
        .dma_write(d, &desc(size, u32::from(int_en), src, dst, d))
        .unwrap();
    wr(&r.dev, CH + CHAINADDR, 8, d);
    wr(
        &r.dev,
        CH + CHANCTRL,
        2,
        u64::from(CHANCTRL_INT_REARM | CHANCTRL_ANY_ERR_ABORT_EN),
    );
    wr(&r.dev, CH + DMACOUNT, 2, u64::from(count));
}

/// `ioat_memcpy_wait`: DONE, then suspend. Err(()) when HALTED.
fn memcpy_wait(r: &Rig) -> Result<(), u32> {
    let st = rd(&r.dev, CH + CHANSTS, 8) & CHANSTS_STATUS;
    if st == status::HALTED {
        let err = rd(&r.dev, CH + CHANERR, 4) as u32;
        reset(r);
        return Err(err);
    }
    assert_eq!(st, status::DONE);
    wr(&r.dev, CH + CHANCMD, 1, u64::from(CHANCMD_SUSPEND));
    assert_eq!(
        rd(&r.dev, CH + CHANSTS, 8) & CHANSTS_STATUS,
        status::SUSPENDED
    );
    Ok(())
}

#[test]
fn probe_sees_a_version_3_3_cbdma_with_one_msix_vector() {
    let r = rig(20);
    let d = &r.dev;
    assert_eq!(cfg_rd32(d, 0), 0x2021_8086);
    assert_eq!(rd(d, VER, 1), 0x33);
    assert_eq!(rd(d, CHANCNT, 1), 1);
    assert_eq!(rd(d, XFERCAP, 1), 20);
    assert_eq!(rd(d, PERPORTOFFSET, 2), 0x80);
    assert_eq!(rd(d, CH + DMA_COMP, 2), 2);
    assert_eq!(
        d.irq_info(VFIO_PCI_MSIX_IRQ_INDEX).map(|i| i.count),
        Some(1)
    );
    assert_eq!(d.irq_info(VFIO_PCI_MSI_IRQ_INDEX).map(|i| i.count), Some(0));
    assert_eq!(
        d.irq_info(VFIO_PCI_INTX_IRQ_INDEX).map(|i| i.count),
        Some(1)
    );
    assert_eq!(d.irq_info(VFIO_PCI_ERR_IRQ_INDEX).map(|i| i.count), Some(1));
    assert_eq!(d.region_info(CONFIG).map(|i| i.size), Some(4096));
    assert_eq!(d.region_info(BAR0).map(|i| i.size), Some(0x4000));
    // Capability list: MSI-X (table and PBA in BAR0), PCIe, PM.
    assert_eq!(cfg_rd32(d, 0x34) & 0xff, 0x80);
    assert_eq!(cfg_rd32(d, 0x80) & 0xffff, 0x9011);
    assert_eq!(cfg_rd32(d, 0x84), 0x2000);
    assert_eq!(cfg_rd32(d, 0x88), 0x3000);
    assert_eq!(cfg_rd32(d, 0x90) & 0xffff, 0xe010);
    assert_eq!(cfg_rd32(d, 0x100), 0x0001_0018);
    // 64-bit BAR0.
    assert_eq!(cfg_rd32(d, 0x10), 0xfeb0_0004);
    // The MSI-X table reads as ones; the PBA as the device's (0).
    assert_eq!(rd(d, 0x2000, 8), u64::MAX);
    assert_eq!(rd(d, 0x3000, 8), 0);
}

#[test]
fn memcpy_success_storm_and_send_msi_as_the_selftest_does() {
    let r = rig(16);
    let msi = init(&r);
    let (d, src, dst) = (MEM + 0x40, MEM + 0x10_0000, MEM + 0x20_0000);
    r.mem.dma_write(src, &vec![b'x'; 0x1_0000]).unwrap();
    r.mem.dma_write(dst, &vec![b'y'; 0x1_0000]).unwrap();
    memcpy_start(&r, d, src, dst, 0x1_0000, 1, false);
    assert_eq!(memcpy_wait(&r), Ok(()));
    assert_eq!(r.mem.read_bytes(dst, 0x1_0000), Some(vec![b'x'; 0x1_0000]));
    assert_eq!(msi.consume(), None, "no MSI without int_en");

    // A storm: the same descriptor 500 times.
    memcpy_start(&r, d, src, dst, 0x1_0000, 500, false);
    assert_eq!(memcpy_wait(&r), Ok(()));
    assert_eq!(r.dev.snapshot().stats.descriptors, 501);

    // send_msi: an 8-byte copy with int_en signals vector 0 once.
    memcpy_start(&r, d, src, dst + 0x1_0000, 8, 1, true);
    assert_eq!(memcpy_wait(&r), Ok(()));
    assert_eq!(msi.consume(), Some(1));
    // CHANSTS names the completed descriptor.
    assert_eq!(
        rd(&r.dev, CH + CHANSTS, 8) & CHANSTS_COMPLETED_DESCRIPTOR_ADDR,
        d
    );
    // Without bus mastering no MSI is sent (and no DMA happens).
    cfg_wr(&r.dev, 4, &(0x0002u16 | 0x0400).to_le_bytes());
    memcpy_start(&r, d, src, dst, 8, 1, true);
    assert_eq!(memcpy_wait(&r), Err(CHANERR_NEXT_ADDR_ERR));
    assert_eq!(msi.consume(), None);
}

#[test]
fn unmapped_iovas_halt_the_channel_without_an_interrupt() {
    let r = rig(16);
    let msi = init(&r);
    let (d, buf) = (MEM + 0x40, MEM + 0x10_0000);
    let unmapped = 0x4000_0000;
    memcpy_start(&r, d, unmapped, buf, 0x1000, 1, false);
    assert_eq!(memcpy_wait(&r), Err(CHANERR_READ_DATA_ERR));
    memcpy_start(&r, d, buf, unmapped, 0x1000, 1, false);
    assert_eq!(memcpy_wait(&r), Err(CHANERR_WRITE_DATA_ERR));
    assert_eq!(msi.consume(), None);
    // The error reached CHANERR_INT in config space until reset cleared it.
    memcpy_start(&r, d, buf, buf + 0x2000, 0x1_0001, 1, false);
    assert_eq!(rd(&r.dev, CH + CHANERR, 4) as u32, CHANERR_LENGTH_ERR);
    assert_eq!(cfg_rd32(&r.dev, PCI_CHANERR_INT as u64), CHANERR_LENGTH_ERR);
    assert_eq!(memcpy_wait(&r), Err(CHANERR_LENGTH_ERR));
    assert_eq!(cfg_rd32(&r.dev, PCI_CHANERR_INT as u64), 0);
    // And the channel works again.
    memcpy_start(&r, d, buf, buf + 0x2000, 0x1000, 1, false);
    assert_eq!(memcpy_wait(&r), Ok(()));
}

#[test]
fn registers_compose_from_partial_and_wide_accesses() {
    let r = rig(16);
    let d = &r.dev;
    cfg_wr(d, 4, &0x0006u16.to_le_bytes());
    // CHAINADDR in two halves or whole.
    wr(d, CH + CHAINADDR, 4, 0x1234_5640);
    wr(d, CH + CHAINADDR + 4, 4, 0x1);
    assert_eq!(rd(d, CH + CHAINADDR, 8), 0x1_1234_5640);
    assert_eq!(rd(d, CH + CHAINADDR + 4, 4), 1);
    wr(d, CH + CHANCMP, 8, 0xdead_beef_0000);
    assert_eq!(rd(d, CH + CHANCMP, 8), 0xdead_beef_0000);
    // One 8-byte read over CHANCTRL, DMA_COMP, CHANCMD, DMACOUNT.
    wr(d, CH + CHANCTRL, 2, 0x0018);
    assert_eq!(rd(d, CH, 8), 0x0000_0000_0002_0018);
    // Reserved offsets read 0 and ignore writes; read-only ones keep.
    wr(d, 0x40, 4, 0xffff_ffff);
    assert_eq!(rd(d, 0x40, 4), 0);
    wr(d, VER, 1, 0x11);
    assert_eq!(rd(d, VER, 1), 0x33);
    // Memory decoding off: EIO.
    cfg_wr(d, 4, &0u16.to_le_bytes());
    assert_eq!(d.region_read(BAR0, 0, &mut [0u8; 4]), Err(libc::EIO));
    // Past the BAR: EINVAL; config past 4 KiB: EFAULT.
    assert_eq!(
        d.region_read(BAR0, 0x4000, &mut [0u8; 4]),
        Err(libc::EINVAL)
    );
    assert_eq!(
        d.region_read(CONFIG, 0xffe, &mut [0u8; 4]),
        Err(libc::EFAULT)
    );
}

#[test]
fn msix_enable_shows_in_config_and_intx_follows_master_int_en() {
    let r = rig(16);
    let d = &r.dev;
    assert_eq!(cfg_rd32(d, 0x80) >> 31, 0);
    let _msi = init(&r);
    assert_eq!(cfg_rd32(d, 0x80) >> 31, 1);
    assert!(d.snapshot().msix_enabled);
    d.close_device();
    assert_eq!(cfg_rd32(d, 0x80) >> 31, 0);
    // INTx: MASTER_INT_EN and an interrupting descriptor assert the line;
    // re-arming through CHANCTRL acknowledges it.
    d.open_device();
    cfg_wr(d, 4, &0x0006u16.to_le_bytes());
    wr(d, INTRCTRL, 1, u64::from(INTRCTRL_MASTER_INT_EN));
    memcpy_start(&r, MEM + 0x40, MEM + 0x1000, MEM + 0x2000, 64, 1, true);
    assert_eq!(rd(d, ATTNSTATUS, 4), 1);
    assert_eq!(
        rd(d, INTRCTRL, 1) as u8,
        INTRCTRL_MASTER_INT_EN | INTRCTRL_INT_STATUS | INTRCTRL_INT
    );
    wr(d, CH + CHANCTRL, 2, u64::from(CHANCTRL_INT_REARM));
    assert_eq!(rd(d, ATTNSTATUS, 4), 0);
}
