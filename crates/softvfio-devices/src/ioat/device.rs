//! The I/OAT DMA engine as a vfio-pci device: config space (conventional
//! part through the shared [`VirtualConfig`], extended part with the error
//! registers), BAR0 with the device and channel registers, the MSI-X table
//! and PBA, interrupts through the shared [`VfioPciIrqs`], resets.
//!
//! BAR0 accesses are composed register by register: a read returns each
//! byte of whatever register covers it (reserved bytes read 0), a write
//! merges its bytes into each register it covers and writes that register
//! whole, in ascending address order. So an 8-byte CHAINADDR write and two
//! 4-byte halves give the same result, and DMACOUNT acts on any write that
//! reaches it.
//!
//! Interrupts: when the channel asks for one, ATTNSTATUS bit 0 is set; with
//! MSI-X enabled (through `VFIO_DEVICE_SET_IRQS`) and INTRCTRL's
//! MSIX_VECTOR_CONTROL or MASTER_INT_EN set, vector 0 is sent (a memory
//! write: Bus Master Enable is needed); otherwise, with MASTER_INT_EN, the
//! INTx line is raised. ATTNSTATUS (and the INTx line) clear when the
//! driver re-arms the channel through CHANCTRL.
//!
//! Lock order: `inner`, then the vfio-pci core's locks (`irqs`).

use std::sync::{Arc, Mutex};

use softvfio::device::{
    FeatureRequest, IoeventfdRequest, IrqInfo, IrqSet, RegionInfo, VfioDeviceModel,
    REGION_FLAG_READ, REGION_FLAG_WRITE,
};
use softvfio::p2p::{DeviceLock, PeerAccessError};
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_BAR5_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_NUM_IRQS,
    VFIO_PCI_NUM_REGIONS, VFIO_PCI_ROM_REGION_INDEX,
};

use super::channel::{ChannelStats, IoatChannel};
use super::regs::*;
use crate::dma::DmaTarget;
use crate::pci::config::{
    BarLayout, ConfigLayout, MsixLayout, PciIdentity, RawCapability, VirtualConfig, CONFIG_SIZE,
    PCI_BASE_ADDRESS_MEM_TYPE_64, PCI_COMMAND_MEMORY, PCI_COMMAND_SERR,
};
use crate::pci::{lock, Ioeventfds, IrqCapabilities, IrqMode, PciPower, RegionAccess, VfioPciIrqs};

/// How to build an [`IoatDevice`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoatOptions {
    /// The name `VFIO_GROUP_GET_DEVICE_FD` takes (its PCI address).
    pub name: String,
    /// BAR0 address as firmware assigned it.
    pub bar0_address: u32,
    /// log2 of the largest copy one descriptor may ask for (XFERCAP).
    pub xfercap: u8,
}

impl IoatOptions {
    /// A CBDMA channel at `name` with 1 MiB descriptors.
    pub fn new(name: impl Into<String>) -> Self {
        IoatOptions {
            name: name.into(),
            bar0_address: 0xfeb0_0000,
            xfercap: 20,
        }
    }
}

/// Everything `inspect` shows of the device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IoatSnapshot {
    /// The device's name (BDF).
    pub name: String,
    /// CHANSTS.
    pub chansts: u64,
    /// CHANERR.
    pub chanerr: u32,
    /// Channel counters.
    pub stats: ChannelStats,
    /// The command register.
    pub command: u16,
    /// MSI-X enabled through SET_IRQS.
    pub msix_enabled: bool,
    /// The last error the channel ran into (cleared by a channel reset).
    pub last_error: Option<String>,
    /// The errors that halted the channel lately, oldest first, kept
    /// across resets (at most `channel::FAULT_LOG`).
    pub error_log: Vec<String>,
}

fn describe_fault(f: &super::channel::ChannelFault) -> String {
    format!(
        "CHANERR {:#x} at descriptor {:#x}: {}",
        f.chanerr, f.descriptor, f.reason
    )
}

/// BAR0 as vfio-pci's region code sees it: memory, mmap-able.
const BAR0: crate::pci::regions::BarLayout = crate::pci::regions::BarLayout {
    size: BAR0_SIZE,
    memory: true,
};

/// The offset in config space where the PCI Express capability sits.
const PCIE_CAP_OFFSET: usize = 0x90;
/// The offset of the MSI-X capability.
const MSIX_CAP_OFFSET: usize = 0x80;
/// The offset of the power-management capability.
const PM_CAP_OFFSET: usize = 0xe0;
/// The extended capability at 0x100 (Latency Tolerance Reporting, v1).
const LTR_ECAP_HEADER: u32 = 0x0001_0018;

/// CBDMA's conventional config space: 64-bit BAR0, MSI-X with one vector
/// (table and PBA in BAR0), a PCI Express capability (root complex
/// integrated endpoint), power management; INTA#.
fn ioat_layout(bar0_address: u32) -> ConfigLayout {
    let mut bars = [BarLayout::default(); 6];
    bars[0] = BarLayout {
        size: BAR0_SIZE as u32,
        address: bar0_address,
        flags: PCI_BASE_ADDRESS_MEM_TYPE_64,
    };
    // PCI Express capability, version 2, device/port type 9 (root complex
    // integrated endpoint); the rest of its 60 bytes read 0.
    let mut pcie = vec![0u8; 0x3c];
    pcie[0] = 0x10;
    pcie[2] = 0x92;
    ConfigLayout {
        identity: PciIdentity {
            vendor: VENDOR_ID,
            device: DEVICE_ID,
            subsystem_vendor: VENDOR_ID,
            subsystem_device: 0,
            revision: REVISION,
            class: CLASS_CODE,
        },
        bars,
        command: PCI_COMMAND_MEMORY | PCI_COMMAND_SERR,
        interrupt_line: 0x0a,
        interrupt_pin: 1,
        msi: None,
        msix: Some(MsixLayout {
            offset: MSIX_CAP_OFFSET,
            vectors: 1,
            table_bar: 0,
            table_offset: MSIX_TABLE_OFFSET,
            pba_bar: 0,
            pba_offset: MSIX_PBA_OFFSET,
        }),
        raw_caps: vec![
            RawCapability {
                offset: PCIE_CAP_OFFSET,
                bytes: pcie,
            },
            // Power management version 3, PMCSR No_Soft_Reset clear.
            RawCapability {
                offset: PM_CAP_OFFSET,
                bytes: vec![0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00],
            },
        ],
    }
}

struct Inner {
    cfg: VirtualConfig,
    channel: IoatChannel,
    genctrl: u8,
    intrctrl: u8,
    intrdelay: u16,
    attnstatus: u32,
    /// Extended config: DMAUNCERRSTS, CHANERR_INT, CHANERRMSK_INT.
    dmauncerrsts: u32,
    chanerr_int: u32,
    chanerrmsk_int: u32,
    intx: bool,
}

impl Inner {
    fn new(opts: &IoatOptions) -> Self {
        Inner {
            cfg: VirtualConfig::new(ioat_layout(opts.bar0_address)),
            channel: IoatChannel::new(opts.xfercap),
            genctrl: 0,
            intrctrl: 0,
            intrdelay: 0,
            attnstatus: 0,
            dmauncerrsts: 0,
            chanerr_int: 0,
            chanerrmsk_int: 0,
            intx: false,
        }
    }
}

/// Intel's I/OAT DMA engine (CBDMA, 8086:2021, version 3.3, one channel)
/// behind vfio-pci.
pub struct IoatDevice {
    opts: IoatOptions,
    inner: DeviceLock<Inner>,
    dma: Mutex<Option<Arc<dyn DmaTarget>>>,
    irqs: Arc<VfioPciIrqs>,
    ioeventfds: Ioeventfds,
    power: PciPower,
}

impl std::fmt::Debug for IoatDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoatDevice")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// [`IoatDevice::bar0_rw`]'s answer to a p2p access.
fn peer_result(r: Result<usize, i32>, len: usize) -> Result<(), PeerAccessError> {
    match r {
        Ok(n) if n == len => Ok(()),
        Err(libc::EAGAIN) => Err(PeerAccessError::Busy {
            by_this_thread: false,
        }),
        Err(libc::EDEADLK) => Err(PeerAccessError::Busy {
            by_this_thread: true,
        }),
        _ => Err(PeerAccessError::Refused),
    }
}

/// The largest naturally aligned access of at most 8 bytes that fits.
fn chunk(off: u64, remaining: usize, max: usize) -> usize {
    [8usize, 4, 2]
        .into_iter()
        .find(|&n| n <= max && remaining >= n && off.is_multiple_of(n as u64))
        .unwrap_or(1)
}

/// The device register (offset, width) covering BAR0 offset `off`, below
/// the channel block.
fn device_register(off: u64) -> Option<(u64, usize)> {
    let regs: [(u64, usize); 11] = [
        (CHANCNT, 1),
        (XFERCAP, 1),
        (GENCTRL, 1),
        (INTRCTRL, 1),
        (ATTNSTATUS, 4),
        (VER, 1),
        (PERPORTOFFSET, 2),
        (INTRDELAY, 2),
        (DEVICE_STATUS, 2),
        (DMA_CAP, 4),
        (DCAOFFSET, 2),
    ];
    regs.into_iter()
        .find(|&(base, width)| (base..base + width as u64).contains(&off))
}

/// The register (BAR0 offset, width) covering `off`, device or channel.
fn register_at(off: u64) -> Option<(u64, usize)> {
    if off < CHANNEL_BASE {
        return device_register(off);
    }
    let rel = off.checked_sub(CHANNEL_BASE)?;
    if rel >= CHANNEL_SIZE {
        return None;
    }
    // Channel registers are naturally aligned: try each width.
    [8u64, 4, 2, 1].into_iter().find_map(|w| {
        let base = rel - rel % w;
        (IoatChannel::register_width(base) == Some(w as usize))
            .then_some((CHANNEL_BASE + base, w as usize))
    })
}

impl IoatDevice {
    /// A CBDMA channel with `opts`.
    pub fn with_options(opts: IoatOptions) -> Self {
        let inner = Inner::new(&opts);
        IoatDevice {
            opts,
            inner: DeviceLock::new(inner),
            dma: Mutex::new(None),
            irqs: VfioPciIrqs::new(IrqCapabilities {
                intx: true,
                msi_vectors: 0,
                msix_vectors: 1,
                pcie: true,
            }),
            ioeventfds: Ioeventfds::default(),
            power: PciPower::default(),
        }
    }

    /// The options it was built with.
    pub fn options(&self) -> &IoatOptions {
        &self.opts
    }

    /// Where the device's DMA goes (its IOMMU port).
    pub fn set_dma_target(&self, target: Arc<dyn DmaTarget>) {
        *lock(&self.dma) = Some(target);
    }

    /// The vfio-pci interrupt state of this device.
    pub fn irqs(&self) -> &Arc<VfioPciIrqs> {
        &self.irqs
    }

    /// The conventional config space as the device fd shows it.
    pub fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let g = self.inner.lock();
        let mut out = [0u8; CONFIG_SIZE];
        g.cfg.read(0, &mut out, g.intx);
        out
    }

    /// Everything `inspect` shows of the device.
    pub fn snapshot(&self) -> IoatSnapshot {
        let g = self.inner.lock();
        IoatSnapshot {
            name: self.opts.name.clone(),
            chansts: g.channel.chansts(),
            chanerr: g.channel.chanerr(),
            stats: g.channel.stats().clone(),
            command: g.cfg.command(),
            msix_enabled: g.cfg.msix_enabled(),
            last_error: g.channel.last_fault().map(describe_fault),
            error_log: g.channel.fault_log().map(describe_fault).collect(),
        }
    }

    fn device_read(g: &Inner, base: u64) -> u64 {
        match base {
            CHANCNT => 1,
            XFERCAP => u64::from(g.channel.max_transfer().trailing_zeros()),
            GENCTRL => u64::from(g.genctrl),
            INTRCTRL => {
                let mut v = g.intrctrl & (INTRCTRL_MASTER_INT_EN | INTRCTRL_MSIX_VECTOR_CONTROL);
                if g.attnstatus != 0 {
                    v |= INTRCTRL_INT_STATUS;
                    if g.intrctrl & INTRCTRL_MASTER_INT_EN != 0 {
                        v |= INTRCTRL_INT;
                    }
                }
                u64::from(v)
            }
            ATTNSTATUS => u64::from(g.attnstatus),
            VER => u64::from(VERSION_3_3),
            PERPORTOFFSET => CHANNEL_BASE,
            INTRDELAY => u64::from(g.intrdelay),
            _ => 0,
        }
    }

    /// One BAR0 read of `n` (1..=8) bytes at `off`, composed from the
    /// registers that cover it.
    fn mmio_read(g: &Inner, off: u64, n: usize) -> u64 {
        let table = u64::from(MSIX_TABLE_OFFSET)..u64::from(MSIX_TABLE_OFFSET) + 16;
        let mut v = 0u64;
        for i in 0..n as u64 {
            let at = off + i;
            let byte = if table.contains(&at) {
                // vfio-pci keeps the MSI-X table to itself: reads give ones.
                0xff
            } else if let Some((base, _)) = register_at(at) {
                let reg = if base < CHANNEL_BASE {
                    Self::device_read(g, base)
                } else {
                    g.channel.read_register(base - CHANNEL_BASE)
                };
                (reg >> (8 * (at - base))) as u8
            } else {
                0
            };
            v |= u64::from(byte) << (8 * i);
        }
        v
    }

    /// One BAR0 write: each register it covers gets its merged new value.
    fn mmio_write(
        &self,
        g: &mut Inner,
        off: u64,
        n: usize,
        value: u64,
        dma: Option<&dyn DmaTarget>,
    ) -> bool {
        let mut interrupt = false;
        let end = off + n as u64;
        let mut at = off;
        while at < end {
            let Some((base, width)) = register_at(at) else {
                at += 1;
                continue;
            };
            let reg_end = base + width as u64;
            let mut reg = if base < CHANNEL_BASE {
                Self::device_read(g, base)
            } else {
                g.channel.read_register(base - CHANNEL_BASE)
            };
            for b in at.max(base)..reg_end.min(end) {
                let byte = (value >> (8 * (b - off))) & 0xff;
                let shift = 8 * (b - base);
                reg = (reg & !(0xff << shift)) | (byte << shift);
            }
            if base < CHANNEL_BASE {
                match base {
                    GENCTRL => g.genctrl = reg as u8,
                    INTRCTRL => {
                        g.intrctrl =
                            reg as u8 & (INTRCTRL_MASTER_INT_EN | INTRCTRL_MSIX_VECTOR_CONTROL)
                    }
                    INTRDELAY => g.intrdelay = reg as u16 & 0x3fff,
                    _ => {}
                }
            } else {
                let ch_off = base - CHANNEL_BASE;
                let before = g.channel.chanerr();
                let ev = g.channel.write_register(ch_off, reg, dma);
                let new_errors = g.channel.chanerr() & !before;
                if new_errors != 0 {
                    g.chanerr_int |= new_errors & !g.chanerrmsk_int;
                    tracing::debug!(target: "softvfio::ioat", "IOAT {}: channel halted, CHANERR {:#x}", self.opts.name, g.channel.chanerr());
                }
                if ch_off == CHANCTRL && reg as u16 & CHANCTRL_INT_REARM != 0 {
                    // Re-armed: the pending attention is acknowledged.
                    g.attnstatus = 0;
                    if g.intx {
                        g.intx = false;
                        self.irqs.set_intx_line(false);
                    }
                }
                if ev.interrupt {
                    g.attnstatus |= 1;
                    interrupt = true;
                }
            }
            at = reg_end;
        }
        interrupt
    }

    /// Signals the channel's interrupt as the device is configured to.
    fn deliver(&self, g: &mut Inner) {
        let vector_enabled =
            g.intrctrl & (INTRCTRL_MSIX_VECTOR_CONTROL | INTRCTRL_MASTER_INT_EN) != 0;
        if matches!(self.irqs.mode(), IrqMode::Msix { .. }) {
            if vector_enabled && g.cfg.bus_master() {
                self.irqs.send_msi(0);
            }
        } else if g.intrctrl & INTRCTRL_MASTER_INT_EN != 0 && !g.intx {
            g.intx = true;
            self.irqs.set_intx_line(true);
        }
    }

    /// A BAR0 access: the program's (`pread`/`pwrite`, a load or store on
    /// the mapping), or another device's DMA (`peer`: the lock is only
    /// tried; busy is `EAGAIN`, busy with this very thread `EDEADLK`, and
    /// the function in low power `EIO`).
    fn bar0_rw(&self, offset: u64, access: RegionAccess<'_>, peer: bool) -> Result<usize, i32> {
        if offset >= BAR0_SIZE {
            return Err(libc::EINVAL);
        }
        let len = access.len().min((BAR0_SIZE - offset) as usize);
        if len == 0 {
            return Ok(0);
        }
        if peer && self.power.engaged() {
            return Err(libc::EIO);
        }
        let dma = lock(&self.dma).clone();
        let mut g = if peer {
            match self.inner.try_lock_for_peer() {
                Ok(g) => g,
                Err(PeerAccessError::Busy {
                    by_this_thread: true,
                }) => return Err(libc::EDEADLK),
                Err(_) => return Err(libc::EAGAIN),
            }
        } else {
            self.inner.lock()
        };
        if !g.cfg.memory_enabled() {
            return Err(libc::EIO);
        }
        // No bus mastering: the engine's requests go nowhere.
        let target = if g.cfg.bus_master() {
            dma.as_deref()
        } else {
            None
        };
        let mut done = 0usize;
        match access {
            RegionAccess::Read(out) => {
                while done < len {
                    let off = offset + done as u64;
                    let n = chunk(off, len - done, 8);
                    let v = Self::mmio_read(&g, off, n).to_le_bytes();
                    if let (Some(dst), Some(src)) = (out.get_mut(done..done + n), v.get(..n)) {
                        dst.copy_from_slice(src);
                    }
                    done += n;
                }
            }
            RegionAccess::Write(data) => {
                while done < len {
                    let off = offset + done as u64;
                    let n = chunk(off, len - done, 8);
                    let mut v = [0u8; 8];
                    if let (Some(dst), Some(src)) = (v.get_mut(..n), data.get(done..done + n)) {
                        dst.copy_from_slice(src);
                    }
                    if self.mmio_write(&mut g, off, n, u64::from_le_bytes(v), target) {
                        self.deliver(&mut g);
                    }
                    done += n;
                }
            }
        }
        Ok(len)
    }

    fn ext_config_read(g: &Inner, at: usize) -> u8 {
        let word = |v: u32, base: usize| (v >> (8 * (at - base))) as u8;
        match at {
            0x100..=0x103 => word(LTR_ECAP_HEADER, 0x100),
            PCI_DMAUNCERRSTS..=0x14b => word(g.dmauncerrsts, PCI_DMAUNCERRSTS),
            PCI_CHANERR_INT..=0x183 => word(g.chanerr_int, PCI_CHANERR_INT),
            PCI_CHANERRMSK_INT..=0x187 => word(g.chanerrmsk_int, PCI_CHANERRMSK_INT),
            _ => 0,
        }
    }

    fn ext_config_write(g: &mut Inner, at: usize, byte: u8) {
        let shift = |base: usize| 8 * (at - base);
        match at {
            // Write one to clear.
            PCI_DMAUNCERRSTS..=0x14b => {
                g.dmauncerrsts &= !(u32::from(byte) << shift(PCI_DMAUNCERRSTS))
            }
            PCI_CHANERR_INT..=0x183 => {
                g.chanerr_int &= !(u32::from(byte) << shift(PCI_CHANERR_INT))
            }
            PCI_CHANERRMSK_INT..=0x187 => {
                let s = shift(PCI_CHANERRMSK_INT);
                g.chanerrmsk_int = (g.chanerrmsk_int & !(0xff << s)) | (u32::from(byte) << s);
            }
            _ => {}
        }
    }

    fn config_rw(&self, offset: u64, access: RegionAccess<'_>) -> Result<usize, i32> {
        let len = access.len();
        if len == 0 {
            return Ok(0);
        }
        let end = offset.checked_add(len as u64).ok_or(libc::EFAULT)?;
        if end > CONFIG_SPACE_SIZE as u64 {
            return Err(libc::EFAULT);
        }
        let offset = offset as usize;
        let mut g = self.inner.lock();
        match access {
            RegionAccess::Read(out) => {
                for (i, o) in out.iter_mut().enumerate() {
                    let at = offset + i;
                    *o = if at < CONFIG_SIZE {
                        let mut b = [0u8; 1];
                        g.cfg.read(at, &mut b, g.intx);
                        b[0]
                    } else {
                        Self::ext_config_read(&g, at)
                    };
                }
            }
            RegionAccess::Write(data) => {
                let was_disabled = g.cfg.intx_disabled();
                let mut done = 0usize;
                while done < len {
                    let off = offset + done;
                    let n = chunk(off as u64, len - done, 4);
                    if let Some(d) = data.get(done..done + n) {
                        if off < CONFIG_SIZE {
                            g.cfg.write(off, d);
                        } else {
                            for (i, &b) in d.iter().enumerate() {
                                Self::ext_config_write(&mut g, off + i, b);
                            }
                        }
                    }
                    done += n;
                }
                if was_disabled != g.cfg.intx_disabled() {
                    self.irqs.set_intx_disable(g.cfg.intx_disabled());
                }
            }
        }
        Ok(len)
    }

    /// The device's registers and channel to power-on state (the
    /// channel's counters survive); config space is the caller's business.
    fn reset_registers(&self, g: &mut Inner) {
        g.channel.reset();
        g.genctrl = 0;
        g.intrctrl = 0;
        g.intrdelay = 0;
        g.attnstatus = 0;
        g.dmauncerrsts = 0;
        g.chanerr_int = 0;
        g.chanerrmsk_int = 0;
        g.intx = false;
        self.irqs.set_intx_line(false);
    }

    fn region_rw(&self, index: u32, offset: u64, access: RegionAccess<'_>) -> Result<usize, i32> {
        match index {
            VFIO_PCI_BAR0_REGION_INDEX => self.bar0_rw(offset, access, false),
            VFIO_PCI_CONFIG_REGION_INDEX => self.config_rw(offset, access),
            _ => Err(libc::EINVAL),
        }
    }
}

impl VfioDeviceModel for IoatDevice {
    fn name(&self) -> &str {
        &self.opts.name
    }

    /// A PCI Express endpoint with a power-management reset (No_Soft_Reset
    /// clear), so vfio-pci can reset it.
    fn flags(&self) -> u32 {
        VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET
    }

    fn num_regions(&self) -> u32 {
        VFIO_PCI_NUM_REGIONS
    }

    fn num_irqs(&self) -> u32 {
        VFIO_PCI_NUM_IRQS
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        match index {
            VFIO_PCI_BAR0_REGION_INDEX => Some(crate::pci::regions::bar_region_info(BAR0)),
            i if i <= VFIO_PCI_BAR5_REGION_INDEX || i == VFIO_PCI_ROM_REGION_INDEX => {
                Some(RegionInfo { flags: 0, size: 0 })
            }
            VFIO_PCI_CONFIG_REGION_INDEX => Some(RegionInfo {
                flags: REGION_FLAG_READ | REGION_FLAG_WRITE,
                size: CONFIG_SPACE_SIZE as u64,
            }),
            _ => None,
        }
    }

    /// BAR0 holds the MSI-X table: mapped whole, with MSIX_MAPPABLE.
    fn region_caps(&self, index: u32) -> Vec<softvfio::device::RegionCap> {
        match index {
            VFIO_PCI_BAR0_REGION_INDEX => crate::pci::regions::bar_region_caps(
                index,
                BAR0,
                Some(crate::pci::regions::MsixLayout {
                    bar: VFIO_PCI_BAR0_REGION_INDEX,
                    table_offset: u64::from(MSIX_TABLE_OFFSET),
                    table_size: 16,
                }),
            ),
            _ => Vec::new(),
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

    /// Another device's DMA reaches BAR0 as `pread`/`pwrite` does (each
    /// p2p access is one naturally aligned access of at most 8 bytes, so
    /// nothing is split further).
    fn peer_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), PeerAccessError> {
        let len = data.len();
        if index != VFIO_PCI_BAR0_REGION_INDEX {
            return Err(PeerAccessError::Refused);
        }
        peer_result(self.bar0_rw(offset, RegionAccess::Read(data), true), len)
    }

    fn peer_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), PeerAccessError> {
        if index != VFIO_PCI_BAR0_REGION_INDEX {
            return Err(PeerAccessError::Refused);
        }
        peer_result(
            self.bar0_rw(offset, RegionAccess::Write(data), true),
            data.len(),
        )
    }

    fn reset(&self) -> Result<(), i32> {
        let mut g = self.inner.lock();
        self.reset_registers(&mut g);
        Ok(())
    }

    fn open_device(&self) {
        let mut g = self.inner.lock();
        g.cfg.restore_power_on();
        self.reset_registers(&mut g);
    }

    fn close_device(&self) {
        self.irqs.release();
        self.ioeventfds.clear();
        self.power.exit();
        let mut g = self.inner.lock();
        g.cfg.restore_power_on();
        self.reset_registers(&mut g);
    }

    fn vfio_pci_irqs(&self) -> bool {
        true
    }

    fn set_irqs(&self, set: IrqSet) -> Result<(), i32> {
        let mut g = self.inner.lock();
        let r = self.irqs.set_irqs(set);
        let vectors = match self.irqs.mode() {
            IrqMode::Msix { vectors } => vectors,
            _ => 0,
        };
        if (vectors > 0) != g.cfg.msix_enabled() {
            g.cfg.set_msix_mode(vectors);
            if vectors > 0 {
                g.intx = false;
                self.irqs.set_intx_line(false);
            }
        }
        r
    }

    fn ioeventfd(&self, req: IoeventfdRequest) -> Result<(), i32> {
        let len = self.region_info(req.region).map_or(0, |r| r.size);
        let msix = Some((
            VFIO_PCI_BAR0_REGION_INDEX,
            u64::from(MSIX_TABLE_OFFSET),
            16u64,
        ));
        self.ioeventfds.request(req, len, msix)
    }

    fn device_feature(&self, req: &mut FeatureRequest) -> Result<i64, i32> {
        self.power.feature(req)
    }

    /// On the root bus, like the reference edu: no bus reset.
    fn hot_reset_probe(&self) -> i32 {
        libc::ENODEV
    }

    fn supports_svm(&self) -> bool {
        false
    }
}
