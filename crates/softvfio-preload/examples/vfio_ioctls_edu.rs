//! A VFIO program built on rust-vmm's `vfio-ioctls`, for the tests: it
//! opens a container and the edu device through the crate (group found
//! through an `iommu_group` link, as under sysfs), maps a buffer, has the
//! device copy a page through its DMA engine and back, checks the bytes,
//! unmaps, and checks that DMA to the unmapped IOVA is blocked.
//!
//! Usage: `vfio_ioctls_edu [BDF] [GROUP]` (default 0000:00:03.0, group 3);
//! run it under `softvfio run` (either mode). Prints `check value` lines and
//! exits 0 when every check passed.

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfio_bindings::bindings::vfio::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};

const PAGE: usize = 4096;
const IOVA: u64 = 0x10_0000;
const EDU_BUF: u64 = 0x4_0000;
const REG_DMA_SRC: u64 = 0x80;
const REG_DMA_DST: u64 = 0x88;
const REG_DMA_COUNT: u64 = 0x90;
const REG_DMA_CMD: u64 = 0x98;
const DMA_START: u64 = 1;
const DMA_TO_RAM: u64 = 2;

type Res<T> = Result<T, Box<dyn Error>>;

/// Anonymous memory the device reaches; only touched through raw pointers
/// (the device writes it behind the compiler's back).
struct DmaBuf {
    ptr: *mut u8,
    len: usize,
}

impl DmaBuf {
    fn new(len: usize) -> Res<Self> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err("mmap failed".into());
        }
        Ok(Self { ptr: p.cast(), len })
    }

    fn set(&self, i: usize, v: u8) {
        assert!(i < self.len);
        // SAFETY: in bounds of our mapping; volatile because the device
        // writes it too.
        unsafe { self.ptr.add(i).write_volatile(v) }
    }

    fn get(&self, i: usize) -> u8 {
        assert!(i < self.len);
        // SAFETY: as in `set`.
        unsafe { self.ptr.add(i).read_volatile() }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn read64(dev: &VfioDevice, off: u64) -> u64 {
    let mut b = [0u8; 8];
    dev.region_read(VFIO_PCI_BAR0_REGION_INDEX, &mut b, off);
    u64::from_le_bytes(b)
}

fn write64(dev: &VfioDevice, off: u64, v: u64) {
    dev.region_write(VFIO_PCI_BAR0_REGION_INDEX, &v.to_le_bytes(), off);
}

fn read32(dev: &VfioDevice, index: u32, off: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.region_read(index, &mut b, off);
    u32::from_le_bytes(b)
}

/// Runs one edu DMA and waits for it to finish.
fn dma(dev: &VfioDevice, src: u64, dst: u64, count: u64, to_ram: bool) -> Res<()> {
    write64(dev, REG_DMA_SRC, src);
    write64(dev, REG_DMA_DST, dst);
    write64(dev, REG_DMA_COUNT, count);
    let cmd = DMA_START | if to_ram { DMA_TO_RAM } else { 0 };
    write64(dev, REG_DMA_CMD, cmd);
    let start = Instant::now();
    while read64(dev, REG_DMA_CMD) & DMA_START != 0 {
        if start.elapsed() > Duration::from_secs(10) {
            return Err("edu DMA did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn check(name: &str, ok: bool, failures: &mut u32) {
    println!("{name} {}", if ok { "ok" } else { "FAILED" });
    if !ok {
        *failures += 1;
    }
}

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let bdf = args.next().unwrap_or_else(|| "0000:00:03.0".into());
    let group = args.next().unwrap_or_else(|| "3".into());

    // vfio-ioctls finds the group from the `iommu_group` link of the
    // device's sysfs directory; give it one.
    let sysfs = std::env::temp_dir().join(format!("vfio-ioctls-edu-{}", std::process::id()));
    let dev_dir: PathBuf = sysfs.join(&bdf);
    std::fs::create_dir_all(&dev_dir)?;
    std::os::unix::fs::symlink(
        format!("../../../kernel/iommu_groups/{group}"),
        dev_dir.join("iommu_group"),
    )?;
    let res = run(&dev_dir);
    let _ = std::fs::remove_dir_all(&sysfs);
    let failures = res?;
    if failures > 0 {
        return Err(format!("{failures} check(s) failed").into());
    }
    println!("done");
    Ok(())
}

fn run(dev_dir: &std::path::Path) -> Res<u32> {
    let mut failures = 0;
    let container = Arc::new(VfioContainer::new(None)?);
    let device = VfioDevice::new(dev_dir, container.clone() as Arc<dyn VfioOps>, false)?;

    let id = read32(&device, VFIO_PCI_CONFIG_REGION_INDEX, 0);
    check("pci_id", id == 0x11e8_1234, &mut failures);
    // Bus master on (command register bit 2).
    let mut cmd = [0u8; 2];
    device.region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut cmd, 4);
    let cmd = u16::from_le_bytes(cmd) | 0x4;
    device.region_write(VFIO_PCI_CONFIG_REGION_INDEX, &cmd.to_le_bytes(), 4);
    let ident = read32(&device, VFIO_PCI_BAR0_REGION_INDEX, 0);
    check("edu_ident", ident & 0xff == 0xed, &mut failures);

    let buf = DmaBuf::new(2 * PAGE)?;
    for i in 0..PAGE {
        buf.set(i, (i * 7 + 3) as u8);
        buf.set(PAGE + i, 0);
    }
    // SAFETY: the buffer lives until after the unmap below and is only
    // accessed through raw pointers meanwhile.
    unsafe { container.vfio_dma_map(IOVA, 2 * PAGE, buf.ptr) }?;
    println!("map ok");

    // RAM -> device buffer, then device buffer -> the second page.
    dma(&device, IOVA, EDU_BUF, PAGE as u64, false)?;
    dma(&device, EDU_BUF, IOVA + PAGE as u64, PAGE as u64, true)?;
    let same = (0..PAGE).all(|i| buf.get(PAGE + i) == buf.get(i));
    check("dma_round_trip", same, &mut failures);

    container.vfio_dma_unmap(IOVA, 2 * PAGE)?;
    println!("unmap ok");

    // After the unmap the IOMMU blocks the device: the page stays as it is.
    for i in 0..PAGE {
        buf.set(PAGE + i, 0xaa);
    }
    dma(&device, EDU_BUF, IOVA + PAGE as u64, PAGE as u64, true)?;
    let untouched = (0..PAGE).all(|i| buf.get(PAGE + i) == 0xaa);
    check("dma_after_unmap_blocked", untouched, &mut failures);

    // Map again at another IOVA, within the 28-bit DMA mask.
    // SAFETY: as above.
    unsafe { container.vfio_dma_map(0x0fff_0000, PAGE, buf.ptr.add(PAGE)) }?;
    dma(&device, EDU_BUF, 0x0fff_0000, PAGE as u64, true)?;
    let again = (0..PAGE).all(|i| buf.get(PAGE + i) == buf.get(i));
    check("dma_second_mapping", again, &mut failures);
    container.vfio_dma_unmap(0x0fff_0000, PAGE)?;
    drop(device);
    drop(container);
    Ok(failures)
}
