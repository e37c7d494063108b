//! QEMU's edu device as a vfio-pci device: regions, interrupts, config
//! space, open/close/reset, all as Linux 6.1 vfio-pci presents a QEMU edu.

use std::sync::{Arc, Mutex};

use softvfio::device::{
    FeatureRequest, IoeventfdRequest, IrqInfo, IrqSet, MappedAccessError, RegionCap, RegionInfo,
    VfioDeviceModel, REGION_FLAG_READ, REGION_FLAG_WRITE,
};
use softvfio::p2p::{DeviceLock, PeerAccessError};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_BAR5_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS, VFIO_PCI_ROM_REGION_INDEX,
};

use super::config::{edu_config, CONFIG_SIZE};
use super::core::{DmaBus, EduCore, EduRegisters, EduStats, IrqRequest};
use super::regs::{BAR0_SIZE, DEFAULT_DMA_MASK};
use crate::dma::DmaTarget;
use crate::pci::config::VirtualConfig;
use crate::pci::regions::{bar_region_caps, bar_region_info, BarLayout};
use crate::pci::{lock, Ioeventfds, IrqCapabilities, IrqMode, PciPower, RegionAccess, VfioPciIrqs};

/// Edu's one BAR: 1 MiB of memory space.
const BAR0: BarLayout = BarLayout {
    size: BAR0_SIZE,
    memory: true,
};

/// Called with the VFIO IRQ index (`VFIO_PCI_INTX_IRQ_INDEX` or
/// `VFIO_PCI_MSI_IRQ_INDEX`) each time the device signals that interrupt.
pub type IrqNotifier = Box<dyn Fn(u32) + Send + Sync>;

/// The notifier as stored: cloned out of its lock before being called.
type SharedNotifier = Arc<dyn Fn(u32) + Send + Sync>;

/// How to build an [`EduDevice`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EduOptions {
    /// The name `VFIO_GROUP_GET_DEVICE_FD` takes.
    pub name: String,
    /// DMA mask for ordinary (non-PASID) DMA; QEMU's default is 28 bits.
    pub dma_mask: u64,
    /// BAR0 address as firmware assigned it (what config space shows).
    pub bar0_address: u32,
    /// Interrupt line register as firmware left it.
    pub interrupt_line: u8,
    /// Advertise `VFIO_DEVICE_FLAGS_RESET` and honour `VFIO_DEVICE_RESET`
    /// (and reset on open/close). The reference edu has no reset method
    /// (conventional PCI, no FLR, no PM capability, on the root bus), so
    /// vfio-pci reports flags 0x2 and `VFIO_DEVICE_RESET` fails with EINVAL;
    /// set this to model an edu that can be reset.
    pub reset_supported: bool,
    /// Pass naturally aligned 8-byte accesses to the 64-bit DMA registers
    /// (BAR0 0x80 and up) to the device as one access, as vfio-pci does
    /// since it gained 64-bit MMIO support (Linux 6.14); 8-byte accesses
    /// below 0x80 are always split as Linux 6.1 splits them. Linux 6.1 splits them into two 4-byte accesses, which makes
    /// edu's 64-bit registers unreachable above bit 31 (a write to 0x84 is
    /// ignored) and so rules out 47-bit PASID addresses. For accesses the
    /// conformance probe makes (8-byte writes of values below 4 GiB) both
    /// give the same result.
    pub mmio_64bit: bool,
    /// What a DMA read that faults leaves in the device buffer after the
    /// bytes it could read: zeros (`true`, QEMU's edu behind an IOMMU, where
    /// unassigned memory reads as zeros) or the old bytes (`false`, a
    /// mediated device that copies page by page and stops at the first page
    /// it cannot pin, as Linux's medu sample does).
    pub zero_fill_faulted_reads: bool,
}

impl EduOptions {
    /// The reference platform's edu at `name`.
    pub fn new(name: impl Into<String>) -> Self {
        EduOptions {
            name: name.into(),
            dma_mask: DEFAULT_DMA_MASK,
            bar0_address: 0xfea0_0000,
            interrupt_line: 0x0b,
            reset_supported: false,
            mmio_64bit: true,
            zero_fill_faulted_reads: true,
        }
    }
}

impl Default for EduOptions {
    fn default() -> Self {
        EduOptions::new("0000:00:03.0")
    }
}

/// Everything [`EduDevice::snapshot`] reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EduSnapshot {
    /// The device's name (BDF).
    pub name: String,
    /// Register values.
    pub registers: EduRegisters,
    /// Counters.
    pub stats: EduStats,
    /// The command register.
    pub command: u16,
    /// Memory decoding on.
    pub memory_enabled: bool,
    /// Bus master on.
    pub bus_master: bool,
    /// The device signals with MSI.
    pub msi_enabled: bool,
    /// The INTx line is asserted.
    pub intx_asserted: bool,
    /// A DMA target (IOMMU port or pinning path) is set.
    pub dma_target_attached: bool,
    /// The last DMA error, if any.
    pub last_error: Option<String>,
    /// The device's recent log lines.
    pub log: Vec<String>,
}

struct Inner {
    core: EduCore,
    cfg: VirtualConfig,
    /// INTx level driven by the device (independent of INTx disable).
    intx: bool,
}

/// QEMU's edu device behind vfio-pci.
///
/// Lock order: `inner`, then the vfio-pci core's locks (`irqs`). `inner`
/// is a [`DeviceLock`]: DMA runs under it, and another device's DMA into
/// this BAR (peer to peer) only tries it (`softvfio::p2p`).
pub struct EduDevice {
    opts: EduOptions,
    inner: DeviceLock<Inner>,
    dma: Mutex<Option<Arc<dyn DmaTarget>>>,
    notifier: Mutex<Option<SharedNotifier>>,
    /// vfio-pci's interrupt state: the program's eventfds.
    irqs: Arc<VfioPciIrqs>,
    ioeventfds: Ioeventfds,
    power: PciPower,
}

impl std::fmt::Debug for EduDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EduDevice")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// Interrupts to deliver once the device lock is released, so a notifier
/// may call back into the device. (Allocates only when something fires.)
#[derive(Default)]
struct Pending {
    irqs: Vec<u32>,
}

impl Pending {
    fn push(&mut self, index: u32) {
        self.irqs.push(index);
    }
}

/// vfio-pci's access splitting (`do_io_rw`, `vfio_config_do_rw`): the
/// largest naturally aligned access that fits.
/// Size of the next BAR access vfio-pci makes. 8-byte accesses reach the
/// device whole only at the 64-bit DMA registers (0x80 and up, where edu
/// takes 8 bytes); below them they are split in two 4-byte accesses as
/// Linux 6.1 does, so an 8-byte read at 0 gives the identification register
/// and the liveness register, exactly as on the reference machine.
fn chunk(off: u64, remaining: usize, max: usize) -> usize {
    if max >= 8 && remaining >= 8 && off.is_multiple_of(8) && off >= WIDE_REGS_START {
        8
    } else if remaining >= 4 && off.is_multiple_of(4) {
        4
    } else if remaining >= 2 && off.is_multiple_of(2) {
        2
    } else {
        1
    }
}

/// First BAR0 offset whose registers take 8-byte accesses.
const WIDE_REGS_START: u64 = 0x80;

impl EduDevice {
    /// The reference platform's edu (28-bit DMA mask, no reset) at `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_options(EduOptions::new(name))
    }

    /// An edu with the given options.
    pub fn with_options(opts: EduOptions) -> Self {
        let inner = Inner {
            core: {
                let mut c = EduCore::new(opts.dma_mask);
                c.set_zero_fill_faulted_reads(opts.zero_fill_faulted_reads);
                c
            },
            cfg: edu_config(opts.bar0_address, opts.interrupt_line, BAR0_SIZE as u32),
            intx: false,
        };
        EduDevice {
            opts,
            inner: DeviceLock::new(inner),
            dma: Mutex::new(None),
            notifier: Mutex::new(None),
            irqs: VfioPciIrqs::new(IrqCapabilities {
                intx: true,
                msi_vectors: 1,
                msix_vectors: 0,
                pcie: false,
            }),
            ioeventfds: Ioeventfds::default(),
            power: PciPower::default(),
        }
    }

    /// The options it was built with.
    pub fn options(&self) -> &EduOptions {
        &self.opts
    }

    /// Where the device's DMA goes (the IOMMU's port for this device, or a
    /// mediated pinning path). Without one, every DMA faults.
    pub fn set_dma_target(&self, target: Arc<dyn DmaTarget>) {
        *lock(&self.dma) = Some(target);
    }

    /// Removes the DMA target: every DMA faults.
    pub fn clear_dma_target(&self) {
        *lock(&self.dma) = None;
    }

    /// The VFIO layer's hook: called outside the device lock with the IRQ
    /// index each time the device signals (INTx: on a rising edge while
    /// not disabled in the command register; MSI: on every raise).
    pub fn set_irq_notifier(&self, f: IrqNotifier) {
        *lock(&self.notifier) = Some(Arc::from(f));
    }

    /// Removes the notifier.
    pub fn clear_irq_notifier(&self) {
        *lock(&self.notifier) = None;
    }

    /// `VFIO_DEVICE_SET_IRQS` enabled (`true`) or disabled MSI: the device
    /// then signals with MSI instead of INTx. Enabling MSI deasserts INTx.
    pub fn set_msi_enabled(&self, on: bool) {
        let mut g = self.inner.lock();
        g.cfg.set_msi_mode(u32::from(on));
        if g.cfg.msi_enabled() {
            g.intx = false;
            self.irqs.set_intx_line(false);
        }
    }

    /// The vfio-pci interrupt state (eventfds, masking) of this device.
    pub fn irqs(&self) -> &Arc<VfioPciIrqs> {
        &self.irqs
    }

    /// Is the INTx line asserted (interrupt status non-zero, MSI off)?
    /// vfio-pci re-signals on unmask while this holds.
    pub fn intx_asserted(&self) -> bool {
        self.inner.lock().intx
    }

    /// Asserted and not disabled in the command register: an unmask should
    /// signal INTx again.
    pub fn intx_pending(&self) -> bool {
        let g = self.inner.lock();
        g.intx && !g.cfg.intx_disabled()
    }

    /// Registers and DMA buffer to power-on state, whatever
    /// [`EduOptions::reset_supported`] says (for tools and tests).
    pub fn power_on_reset(&self) {
        let mut g = self.inner.lock();
        self.reset_core(&mut g);
    }

    fn reset_core(&self, g: &mut Inner) {
        g.core.reset();
        g.intx = false;
        self.irqs.set_intx_line(false);
    }

    /// [`EduCore::reset_dma_and_interrupts`], and the INTx line lowered:
    /// the reset of edu as a mediated device.
    pub fn reset_dma_and_interrupts(&self) {
        let mut g = self.inner.lock();
        g.core.reset_dma_and_interrupts();
        g.intx = false;
        self.irqs.set_intx_line(false);
    }

    /// The registers' current values.
    pub fn registers(&self) -> EduRegisters {
        self.inner.lock().core.registers()
    }

    /// Counters.
    pub fn stats(&self) -> EduStats {
        self.inner.lock().core.stats().clone()
    }

    /// A copy of the 4 KiB DMA buffer.
    pub fn dma_buffer(&self) -> Vec<u8> {
        self.inner.lock().core.dma_buffer().to_vec()
    }

    /// A copy of the config space as the device fd shows it.
    pub fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let g = self.inner.lock();
        let mut out = [0u8; CONFIG_SIZE];
        g.cfg.read(0, &mut out, g.intx);
        out
    }

    /// Everything `inspect` shows of the device.
    pub fn snapshot(&self) -> EduSnapshot {
        let attached = lock(&self.dma).is_some();
        let g = self.inner.lock();
        EduSnapshot {
            name: self.opts.name.clone(),
            registers: g.core.registers(),
            stats: g.core.stats().clone(),
            command: g.cfg.command(),
            memory_enabled: g.cfg.memory_enabled(),
            bus_master: g.cfg.bus_master(),
            msi_enabled: g.cfg.msi_enabled(),
            intx_asserted: g.intx,
            dma_target_attached: attached,
            last_error: g.core.last_error().map(str::to_owned),
            log: g.core.log_lines().map(str::to_owned).collect(),
        }
    }

    fn notify(&self, pending: Pending) {
        if pending.irqs.is_empty() {
            return;
        }
        let Some(f) = lock(&self.notifier).clone() else {
            return;
        };
        for index in pending.irqs {
            f(index);
        }
    }

    /// Delivers an interrupt request the way QEMU's PCI core does: MSI
    /// writes reach vfio-pci's MSI handler, the INTx line its INTx handler
    /// (which signal the program's eventfds).
    fn deliver(&self, g: &mut Inner, req: IrqRequest, pending: &mut Pending) {
        match req {
            IrqRequest::Raise if g.cfg.msi_enabled() => {
                // An MSI is a memory write: it needs Bus Master Enable
                // (measured: no event without it).
                if g.cfg.bus_master() {
                    g.core.stats_mut().msi_sent += 1;
                    self.irqs.send_msi(0);
                    pending.push(VFIO_PCI_MSI_IRQ_INDEX);
                } else {
                    g.core.stats_mut().msi_dropped += 1;
                }
            }
            IrqRequest::Raise => {
                if !g.intx {
                    g.intx = true;
                    g.core.stats_mut().intx_asserts += 1;
                    self.irqs.set_intx_line(true);
                    if !g.cfg.intx_disabled() {
                        pending.push(VFIO_PCI_INTX_IRQ_INDEX);
                    }
                }
            }
            IrqRequest::Lower => {
                if !g.cfg.msi_enabled() {
                    g.intx = false;
                    self.irqs.set_intx_line(false);
                }
            }
        }
    }

    fn bar0_rw(&self, offset: u64, access: RegionAccess<'_>) -> Result<usize, i32> {
        let len = access.len();
        if offset >= BAR0_SIZE {
            return Err(libc::EINVAL);
        }
        // Short access at the end of the BAR.
        let len = len.min((BAR0_SIZE - offset) as usize);
        if len == 0 {
            return Ok(0);
        }
        let dma = lock(&self.dma).clone();
        let mut pending = Pending::default();
        let max = if self.opts.mmio_64bit { 8 } else { 4 };
        {
            let mut g = self.inner.lock();
            // BAR access with memory decoding off fails (vfio-pci checks
            // the virtual command register before every access).
            if !g.cfg.memory_enabled() {
                return Err(libc::EIO);
            }
            let mut done = 0usize;
            match access {
                RegionAccess::Read(out) => {
                    while done < len {
                        let off = offset + done as u64;
                        let n = chunk(off, len - done, max);
                        let v = g.core.mmio_read(off, n).to_le_bytes();
                        if let (Some(dst), Some(src)) = (out.get_mut(done..done + n), v.get(..n)) {
                            dst.copy_from_slice(src);
                        }
                        done += n;
                    }
                }
                RegionAccess::Write(data) => {
                    while done < len {
                        let off = offset + done as u64;
                        let n = chunk(off, len - done, max);
                        let mut v = [0u8; 8];
                        if let (Some(dst), Some(src)) = (v.get_mut(..n), data.get(done..done + n)) {
                            dst.copy_from_slice(src);
                        }
                        let bus = DmaBus {
                            target: dma.as_deref(),
                            bus_master: g.cfg.bus_master(),
                        };
                        if let Some(req) = g.core.mmio_write(off, n, u64::from_le_bytes(v), bus) {
                            self.deliver(&mut g, req, &mut pending);
                        }
                        done += n;
                    }
                }
            }
        }
        self.notify(pending);
        Ok(len)
    }

    /// A CPU load or store on a mapping of BAR0, as QEMU (TCG) performs it
    /// on edu's memory region behind a vfio-pci mapping on Linux 6.1
    /// (tests-oracle/kernel-6.1-mmio-bad.txt): a naturally aligned access
    /// reaches edu with its own width (edu ignores widths other than 4 and
    /// 8, and 1- and 2-byte reads give 0); a misaligned load is two aligned
    /// loads of its width around it, combined; a misaligned store is stored
    /// byte by byte (which edu ignores). With memory decoding off or the
    /// function in low power, vfio-pci's fault handler gives SIGBUS.
    ///
    /// `peer`: another device's DMA (p2p), which takes the lock only if it
    /// is free. Errors: `Refused` where a CPU access gets SIGBUS.
    fn bar0_mapped(
        &self,
        index: u32,
        offset: u64,
        access: RegionAccess<'_>,
        peer: bool,
    ) -> Result<(), PeerAccessError> {
        let width = access.len();
        let end = offset.checked_add(width as u64);
        if index != VFIO_PCI_BAR0_REGION_INDEX
            || !matches!(width, 1 | 2 | 4 | 8)
            || end.is_none_or(|e| e > BAR0_SIZE)
        {
            return Err(PeerAccessError::Refused);
        }
        if self.power.engaged() {
            return Err(PeerAccessError::Refused);
        }
        let dma = lock(&self.dma).clone();
        let mut pending = Pending::default();
        {
            let mut g = if peer {
                self.inner.try_lock_for_peer()?
            } else {
                self.inner.lock()
            };
            if !g.cfg.memory_enabled() {
                return Err(PeerAccessError::Refused);
            }
            let w = width as u64;
            let misalign = offset % w;
            match access {
                RegionAccess::Read(out) => {
                    let v = if misalign == 0 {
                        g.core.mmio_read(offset, width)
                    } else {
                        let low = offset - misalign;
                        let lo = g.core.mmio_read(low, width);
                        let hi = if low + 2 * w <= BAR0_SIZE {
                            g.core.mmio_read(low + w, width)
                        } else {
                            0
                        };
                        let mut both = [0u8; 16];
                        both[..8].copy_from_slice(&lo.to_le_bytes());
                        both[width..width + 8].copy_from_slice(&hi.to_le_bytes());
                        let m = misalign as usize;
                        let mut b = [0u8; 8];
                        b[..width].copy_from_slice(&both[m..m + width]);
                        u64::from_le_bytes(b)
                    };
                    out.copy_from_slice(&v.to_le_bytes()[..width]);
                }
                RegionAccess::Write(data) => {
                    let mut parts = [(0u64, 0usize, 0u64); 8];
                    let n = if misalign == 0 {
                        let mut v = [0u8; 8];
                        v[..width].copy_from_slice(data);
                        parts[0] = (offset, width, u64::from_le_bytes(v));
                        1
                    } else {
                        for (i, b) in data.iter().enumerate() {
                            parts[i] = (offset + i as u64, 1, u64::from(*b));
                        }
                        width
                    };
                    for &(off, size, val) in &parts[..n] {
                        let bus = DmaBus {
                            target: dma.as_deref(),
                            bus_master: g.cfg.bus_master(),
                        };
                        if let Some(req) = g.core.mmio_write(off, size, val, bus) {
                            self.deliver(&mut g, req, &mut pending);
                        }
                    }
                }
            }
        }
        self.notify(pending);
        Ok(())
    }

    fn config_rw(&self, offset: u64, access: RegionAccess<'_>) -> Result<usize, i32> {
        let len = access.len();
        if len == 0 {
            return Ok(0);
        }
        // vfio-pci refuses any config access that does not fit entirely.
        let end = offset.checked_add(len as u64).ok_or(libc::EFAULT)?;
        if offset >= CONFIG_SIZE as u64 || end > CONFIG_SIZE as u64 {
            return Err(libc::EFAULT);
        }
        let offset = offset as usize;
        let mut pending = Pending::default();
        {
            let mut g = self.inner.lock();
            match access {
                RegionAccess::Read(out) => {
                    // Reads have no side effects: one pass is equivalent to
                    // vfio-pci's aligned chunks.
                    g.cfg.read(offset, out, g.intx);
                }
                RegionAccess::Write(data) => {
                    let was_disabled = g.cfg.intx_disabled();
                    let was_msi = g.cfg.msi_enabled();
                    let mut done = 0usize;
                    while done < len {
                        let off = offset + done;
                        let n = chunk(off as u64, len - done, 4);
                        if let Some(d) = data.get(done..done + n) {
                            g.cfg.write(off, d);
                        }
                        done += n;
                    }
                    if g.cfg.msi_enabled() && !was_msi {
                        // Turning MSI on deasserts INTx.
                        g.intx = false;
                        self.irqs.set_intx_line(false);
                    }
                    // vfio-pci masks INTx while the virtual INTx disable
                    // bit is set, and unmasks (re-sending a pending
                    // interrupt) when it is cleared.
                    if was_disabled != g.cfg.intx_disabled() {
                        self.irqs.set_intx_disable(g.cfg.intx_disabled());
                    }
                    // Clearing INTx disable lets an asserted line through.
                    if was_disabled && !g.cfg.intx_disabled() && g.intx && !g.cfg.msi_enabled() {
                        pending.push(VFIO_PCI_INTX_IRQ_INDEX);
                    }
                }
            }
        }
        self.notify(pending);
        Ok(len)
    }

    fn region_rw(&self, index: u32, offset: u64, access: RegionAccess<'_>) -> Result<usize, i32> {
        match index {
            VFIO_PCI_BAR0_REGION_INDEX => self.bar0_rw(offset, access),
            VFIO_PCI_CONFIG_REGION_INDEX => self.config_rw(offset, access),
            // Unimplemented BARs, no ROM, no VGA: vfio-pci answers EINVAL.
            _ => Err(libc::EINVAL),
        }
    }
}

impl VfioDeviceModel for EduDevice {
    fn name(&self) -> &str {
        &self.opts.name
    }

    fn flags(&self) -> u32 {
        if self.opts.reset_supported {
            VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET
        } else {
            VFIO_DEVICE_FLAGS_PCI
        }
    }

    fn num_regions(&self) -> u32 {
        VFIO_PCI_NUM_REGIONS
    }

    fn num_irqs(&self) -> u32 {
        VFIO_PCI_NUM_IRQS
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        match index {
            // mmap-able: each load and store on the mapping faults and is
            // performed by `mapped_read`/`mapped_write` (docs/MMIO.md).
            VFIO_PCI_BAR0_REGION_INDEX => Some(bar_region_info(BAR0)),
            i if i <= VFIO_PCI_BAR5_REGION_INDEX || i == VFIO_PCI_ROM_REGION_INDEX => {
                Some(RegionInfo { flags: 0, size: 0 })
            }
            VFIO_PCI_CONFIG_REGION_INDEX => Some(RegionInfo {
                flags: REGION_FLAG_READ | REGION_FLAG_WRITE,
                size: CONFIG_SIZE as u64,
            }),
            // VGA (index 8) only exists for VGA devices: EINVAL.
            _ => None,
        }
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        self.irqs.irq_info(index)
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<usize, i32> {
        self.region_rw(index, offset, RegionAccess::Read(buf))
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<usize, i32> {
        self.region_rw(index, offset, RegionAccess::Write(data))
    }

    fn region_caps(&self, index: u32) -> Vec<RegionCap> {
        match index {
            // MSI only: no MSI-X table, no capability.
            VFIO_PCI_BAR0_REGION_INDEX => bar_region_caps(index, BAR0, None),
            _ => Vec::new(),
        }
    }

    fn mapped_read(
        &self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), MappedAccessError> {
        self.bar0_mapped(index, offset, RegionAccess::Read(data), false)
            .map_err(|_| MappedAccessError::Bus)
    }

    fn mapped_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), MappedAccessError> {
        self.bar0_mapped(index, offset, RegionAccess::Write(data), false)
            .map_err(|_| MappedAccessError::Bus)
    }

    /// Another device's DMA reaches the registers as a CPU access on the
    /// mapping does (QEMU dispatches both to edu's MMIO handler).
    fn peer_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), PeerAccessError> {
        self.bar0_mapped(index, offset, RegionAccess::Read(data), true)
    }

    fn peer_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), PeerAccessError> {
        self.bar0_mapped(index, offset, RegionAccess::Write(data), true)
    }

    /// vfio-pci saves config space, resets the function, restores config
    /// space: only the device's internal state changes.
    fn reset(&self) -> Result<(), i32> {
        if !self.opts.reset_supported {
            return Err(libc::EINVAL);
        }
        let mut g = self.inner.lock();
        self.reset_core(&mut g);
        Ok(())
    }

    /// vfio-pci enables the device and re-reads config space; a function
    /// reset only happens if the device has a reset method.
    fn open_device(&self) {
        let mut g = self.inner.lock();
        g.cfg.restore_power_on();
        if self.opts.reset_supported {
            self.reset_core(&mut g);
        }
    }

    /// vfio-pci clears bus master, tears down interrupts, tries a reset and
    /// restores the config space saved at enable time. DMA runs inside
    /// register writes, so none is in flight here.
    fn close_device(&self) {
        // Interrupts off and every eventfd released first
        // (`vfio_pci_core_disable` tears down IRQs before the reset).
        self.irqs.release();
        self.ioeventfds.clear();
        self.power.exit();
        let mut g = self.inner.lock();
        g.cfg.restore_power_on();
        if self.opts.reset_supported {
            self.reset_core(&mut g);
        }
    }

    fn vfio_pci_irqs(&self) -> bool {
        true
    }

    fn set_irqs(&self, set: IrqSet) -> Result<(), i32> {
        // Hold the device lock across the change so an interrupt raised
        // meanwhile sees either the old or the new delivery type.
        let mut g = self.inner.lock();
        let msi_vectors = |m: IrqMode| match m {
            IrqMode::Msi { vectors } => vectors,
            _ => 0,
        };
        let before = msi_vectors(self.irqs.mode());
        let r = self.irqs.set_irqs(set);
        // Enabling MSI allocates the vectors, which turns MSI on in the
        // device; disabling frees them and turns it off. Other requests
        // leave the device's MSI enable as the program's config writes
        // left it.
        let vectors = msi_vectors(self.irqs.mode());
        if vectors != before {
            g.cfg.set_msi_mode(vectors);
            if vectors > 0 {
                g.intx = false;
                self.irqs.set_intx_line(false);
            }
        }
        r
    }

    fn ioeventfd(&self, req: IoeventfdRequest) -> Result<(), i32> {
        let len = self.region_info(req.region).map_or(0, |r| r.size);
        self.ioeventfds.request(req, len, None)
    }

    fn device_feature(&self, req: &mut FeatureRequest) -> Result<i64, i32> {
        self.power.feature(req)
    }

    /// On the root bus, without a hotplug slot: neither a slot nor a bus
    /// reset can reach it.
    fn hot_reset_probe(&self) -> i32 {
        libc::ENODEV
    }

    fn supports_svm(&self) -> bool {
        true
    }
}
