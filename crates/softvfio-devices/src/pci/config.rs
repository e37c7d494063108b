//! A PCI function's configuration space as vfio-pci shows it to user space
//! (`vfio_pci_config.c`), for any emulated function: the model describes
//! its header and capabilities in a [`ConfigLayout`]; this module owns the
//! bytes the program reads and the rules its writes follow.
//!
//! The rules, each measured on Linux 6.1 with QEMU's edu
//! (`tests-oracle/kernel-6.1-vfio-pci.txt`, `cfg_*` lines):
//! - identity, class, subsystem, header type, capability pointer, interrupt
//!   pin and capability headers are read-only;
//! - the command register keeps I/O, memory, bus master, SERR and INTx
//!   disable; the status register is read-only, its interrupt bit shows the
//!   device's INTx line;
//! - BARs are virtual: the address bits below a BAR's size read as zero
//!   (sizing with all ones reads back the size mask), absent BARs and the
//!   ROM BAR of a function without ROM read 0 whatever is written;
//! - the interrupt line is a plain virtual byte;
//! - the MSI flags' low byte is virtual, but its enable bit stays clear
//!   until `VFIO_DEVICE_SET_IRQS` enables MSI, and the queue size is clamped
//!   to the vectors allocated; what the program writes there reaches the
//!   device (clearing the enable bit stops the device's MSI);
//! - every byte from the end of the header up that no capability claims is
//!   virtual and writable (vfio-pci's raw virtualization of unknown space).
//!
//! Beyond edu, for models with more capabilities (from `vfio_pci_config.c`,
//! not measured: no reference device has them):
//! - a 64-bit memory BAR takes the next BAR slot as its upper half, which
//!   is writable in full (the BARs are below 4 GiB in size);
//! - the MSI-X capability is read-only to the program (vfio-pci has no
//!   write permission for it); its enable bit shows whether
//!   `VFIO_DEVICE_SET_IRQS` has MSI-X enabled, its table size is the
//!   model's;
//! - other capabilities a model lists as raw bytes (PCI Express, power
//!   management) are read-only.
//!
//! Capabilities are linked in the order of their offsets.
//!
//! Invariant: `bytes` is what a read returns (except the status interrupt
//! bit, added at read time); `msi_hw` is true only while `msi_mode` is.

/// Conventional PCI: 256 bytes.
pub const CONFIG_SIZE: usize = 256;

/// Command register offset.
pub const PCI_COMMAND: usize = 0x04;
/// Status register offset.
pub const PCI_STATUS: usize = 0x06;
/// First BAR offset.
pub const PCI_BASE_ADDRESS_0: usize = 0x10;
/// Expansion ROM BAR offset.
pub const PCI_ROM_ADDRESS: usize = 0x30;
/// Capability list pointer offset.
pub const PCI_CAPABILITY_LIST: usize = 0x34;
/// Interrupt line offset.
pub const PCI_INTERRUPT_LINE: usize = 0x3c;
/// Interrupt pin offset.
pub const PCI_INTERRUPT_PIN: usize = 0x3d;
/// The end of the type 0 header.
pub const PCI_HEADER_END: usize = 0x40;

/// Command: I/O space decoding.
pub const PCI_COMMAND_IO: u16 = 0x0001;
/// Command: memory space decoding.
pub const PCI_COMMAND_MEMORY: u16 = 0x0002;
/// Command: bus master (DMA and MSI writes).
pub const PCI_COMMAND_MASTER: u16 = 0x0004;
/// Command: SERR# enable.
pub const PCI_COMMAND_SERR: u16 = 0x0100;
/// Command: INTx disable.
pub const PCI_COMMAND_INTX_DISABLE: u16 = 0x0400;

/// Status: INTx asserted.
pub const PCI_STATUS_INTERRUPT: u16 = 0x0008;
/// Status: a capability list exists.
pub const PCI_STATUS_CAP_LIST: u16 = 0x0010;

/// MSI capability id.
pub const PCI_CAP_ID_MSI: u8 = 0x05;
/// MSI flags: enable.
pub const PCI_MSI_FLAGS_ENABLE: u8 = 0x01;
/// MSI flags: Multiple Message Capable (log2 of the vectors offered).
pub const PCI_MSI_FLAGS_QMASK: u8 = 0x0e;
/// MSI flags: Multiple Message Enable (log2 of the vectors allocated).
pub const PCI_MSI_FLAGS_QSIZE: u8 = 0x70;
/// MSI flags: 64-bit message address.
pub const PCI_MSI_FLAGS_64BIT: u8 = 0x80;
/// MSI-X capability id.
pub const PCI_CAP_ID_MSIX: u8 = 0x11;
/// MSI-X message control: enable (bit 15).
pub const PCI_MSIX_FLAGS_ENABLE: u16 = 0x8000;
/// BAR flag: 64-bit memory BAR (memory type 2).
pub const PCI_BASE_ADDRESS_MEM_TYPE_64: u32 = 0x4;

/// Who the function is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIdentity {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Subsystem vendor id.
    pub subsystem_vendor: u16,
    /// Subsystem id.
    pub subsystem_device: u16,
    /// Revision id.
    pub revision: u8,
    /// Class code, 24 bits (class, subclass, programming interface).
    pub class: u32,
}

/// One BAR as firmware assigned it. `size` 0: no BAR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BarLayout {
    /// A power of two of at least 16 (memory BARs), or 0.
    pub size: u32,
    /// The address firmware assigned.
    pub address: u32,
    /// The low flag bits (memory type, prefetchable); 0 for a 32-bit
    /// non-prefetchable memory BAR.
    pub flags: u32,
}

/// An MSI capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiLayout {
    /// Its offset in config space (at or above 0x40).
    pub offset: usize,
    /// log2 of the vectors the function supports (Multiple Message Capable).
    pub vectors_log2: u8,
    /// 64-bit message address.
    pub addr64: bool,
}

impl MsiLayout {
    /// Bytes the capability occupies (no per-vector masking).
    pub fn len(&self) -> usize {
        if self.addr64 {
            14
        } else {
            10
        }
    }

    /// Never: a capability has a header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The vectors the function offers.
    pub fn vectors(&self) -> u32 {
        1 << self.vectors_log2
    }
}

/// An MSI-X capability: where its table and pending-bit array live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    /// Its offset in config space (at or above 0x40).
    pub offset: usize,
    /// Table entries (1 to 2048).
    pub vectors: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the pending-bit array.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

impl MsixLayout {
    /// Bytes the capability occupies.
    pub const LEN: usize = 12;

    /// Bytes of the table in its BAR (16 per entry).
    pub fn table_len(&self) -> u64 {
        16 * u64::from(self.vectors)
    }

    /// Bytes of the PBA in its BAR (one bit per entry, in 8-byte words).
    pub fn pba_len(&self) -> u64 {
        8 * u64::from(self.vectors).div_ceil(64)
    }
}

/// A capability the program may read but not change (PCI Express, power
/// management, ...): its bytes from the capability id on; the next
/// pointer (byte 1) is filled in when the list is linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawCapability {
    /// Its offset in config space (at or above 0x40).
    pub offset: usize,
    /// Its bytes, at least 2.
    pub bytes: Vec<u8>,
}

/// What a model says of its config space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLayout {
    /// Identity registers.
    pub identity: PciIdentity,
    /// BAR0 to BAR5.
    pub bars: [BarLayout; 6],
    /// The command register after firmware and `pci_enable_device`.
    pub command: u16,
    /// Interrupt line as firmware left it.
    pub interrupt_line: u8,
    /// 1 (INTA#) to 4, or 0 without INTx.
    pub interrupt_pin: u8,
    /// The MSI capability, if any.
    pub msi: Option<MsiLayout>,
    /// The MSI-X capability, if any.
    pub msix: Option<MsixLayout>,
    /// Read-only capabilities.
    pub raw_caps: Vec<RawCapability>,
}

impl ConfigLayout {
    /// (offset, length) of every capability, by offset.
    fn capabilities(&self) -> Vec<(usize, usize)> {
        let mut caps: Vec<(usize, usize)> = Vec::new();
        if let Some(m) = self.msi {
            caps.push((m.offset, m.len()));
        }
        if let Some(m) = self.msix {
            caps.push((m.offset, MsixLayout::LEN));
        }
        caps.extend(self.raw_caps.iter().map(|c| (c.offset, c.bytes.len())));
        caps.sort_unstable();
        caps
    }

    /// Is BAR slot `i` the upper half of a 64-bit BAR?
    fn is_upper_half(&self, i: usize) -> bool {
        i > 0
            && self
                .bars
                .get(i - 1)
                .is_some_and(|b| b.size != 0 && b.flags & PCI_BASE_ADDRESS_MEM_TYPE_64 != 0)
    }
}

/// The config space of one function behind vfio-pci.
#[derive(Debug, Clone)]
pub struct VirtualConfig {
    layout: ConfigLayout,
    bytes: [u8; CONFIG_SIZE],
    power_on: [u8; CONFIG_SIZE],
    /// vfio-pci's interrupt type is MSI (`VFIO_DEVICE_SET_IRQS` enabled it):
    /// only then may the program's MSI enable bit stay set.
    msi_mode: bool,
    /// Vectors allocated by SET_IRQS, as a queue-size field (log2).
    msi_qmax: u8,
    /// MSI enable in the function itself: it signals with MSI, not INTx.
    msi_hw: bool,
    /// `VFIO_DEVICE_SET_IRQS` has MSI-X enabled.
    msix_mode: bool,
    /// (offset, length) of every capability, by offset: computed once,
    /// consulted for every byte a program writes.
    caps: Vec<(usize, usize)>,
}

impl VirtualConfig {
    /// Power-on config space of a function with `layout`.
    pub fn new(layout: ConfigLayout) -> Self {
        let mut b = [0u8; CONFIG_SIZE];
        let id = layout.identity;
        put16(&mut b, 0x00, id.vendor);
        put16(&mut b, 0x02, id.device);
        put16(&mut b, PCI_COMMAND, layout.command);
        let caps = layout.capabilities();
        let status = if caps.is_empty() {
            0
        } else {
            PCI_STATUS_CAP_LIST
        };
        put16(&mut b, PCI_STATUS, status);
        b[0x08] = id.revision;
        b[0x09] = (id.class & 0xff) as u8;
        b[0x0a] = ((id.class >> 8) & 0xff) as u8;
        b[0x0b] = ((id.class >> 16) & 0xff) as u8;
        for (i, bar) in layout.bars.iter().enumerate() {
            if bar.size != 0 {
                let mask = !(bar.size.max(16) - 1);
                put32(
                    &mut b,
                    PCI_BASE_ADDRESS_0 + 4 * i,
                    (bar.address & mask) | bar.flags,
                );
            }
        }
        put16(&mut b, 0x2c, id.subsystem_vendor);
        put16(&mut b, 0x2e, id.subsystem_device);
        b[PCI_INTERRUPT_LINE] = layout.interrupt_line;
        b[PCI_INTERRUPT_PIN] = layout.interrupt_pin;
        if let Some(msi) = layout.msi {
            b[msi.offset] = PCI_CAP_ID_MSI;
            let mut flags = (msi.vectors_log2 << 1) & PCI_MSI_FLAGS_QMASK;
            if msi.addr64 {
                flags |= PCI_MSI_FLAGS_64BIT;
            }
            b[msi.offset + 2] = flags;
        }
        if let Some(x) = layout.msix {
            b[x.offset] = PCI_CAP_ID_MSIX;
            put16(&mut b, x.offset + 2, x.vectors.saturating_sub(1) & 0x7ff);
            put32(
                &mut b,
                x.offset + 4,
                (x.table_offset & !7) | u32::from(x.table_bar & 7),
            );
            put32(
                &mut b,
                x.offset + 8,
                (x.pba_offset & !7) | u32::from(x.pba_bar & 7),
            );
        }
        for c in &layout.raw_caps {
            for (i, &v) in c.bytes.iter().enumerate() {
                if let Some(d) = b.get_mut(c.offset + i) {
                    *d = v;
                }
            }
        }
        // Link the list in offset order; the last next pointer is 0.
        let mut next_ptr = PCI_CAPABILITY_LIST;
        for &(off, _) in &caps {
            if let Some(d) = b.get_mut(next_ptr) {
                *d = off as u8;
            }
            next_ptr = off + 1;
        }
        if let Some(d) = b.get_mut(next_ptr) {
            if next_ptr != PCI_CAPABILITY_LIST {
                *d = 0;
            }
        }
        VirtualConfig {
            layout,
            bytes: b,
            power_on: b,
            msi_mode: false,
            msi_qmax: 0,
            msi_hw: false,
            msix_mode: false,
            caps,
        }
    }

    /// What the model described.
    pub fn layout(&self) -> &ConfigLayout {
        &self.layout
    }

    /// Bits a program's write may change at `off`.
    fn write_mask(&self, off: usize) -> u8 {
        if let Some(msi) = self.layout.msi {
            let rel = off.wrapping_sub(msi.offset);
            if rel < msi.len() {
                return match rel {
                    // Capability header and the flags' high byte.
                    0 | 1 | 3 => 0,
                    // The flags' low byte is virtual (even the 64-bit bit,
                    // as measured); the fixup below applies the rules.
                    _ => 0xff,
                };
            }
        }
        // MSI-X and the raw capabilities are read-only.
        if self
            .caps
            .iter()
            .any(|&(start, len)| (start..start + len).contains(&off))
        {
            return 0;
        }
        match off {
            // Command: I/O, memory, bus master | SERR, INTx disable.
            0x04 => 0x07,
            0x05 => 0x05,
            // Cache line size.
            0x0c => 0xff,
            // BARs: sized by the fixup after the write; absent ones read 0;
            // the upper half of a 64-bit BAR takes any value.
            0x10..=0x27 if self.layout.is_upper_half((off - PCI_BASE_ADDRESS_0) / 4) => 0xff,
            0x10..=0x27 if self.layout.bars[(off - PCI_BASE_ADDRESS_0) / 4].size != 0 => 0xff,
            PCI_INTERRUPT_LINE => 0xff,
            // Unclaimed space after the header: raw virtual bytes.
            PCI_HEADER_END..=0xff => 0xff,
            _ => 0,
        }
    }

    /// Back to the state saved when the device was enabled (what vfio-pci
    /// restores on the last close and re-reads on the next open).
    pub fn restore_power_on(&mut self) {
        self.bytes = self.power_on;
        self.msi_mode = false;
        self.msi_qmax = 0;
        self.msi_hw = false;
        self.msix_mode = false;
    }

    /// Reads `out.len()` bytes at `off` (bounds checked by the caller).
    /// `intx_asserted` shows in the status register's interrupt bit.
    pub fn read(&self, off: usize, out: &mut [u8], intx_asserted: bool) {
        for (i, o) in out.iter_mut().enumerate() {
            let at = off + i;
            let mut v = self.bytes.get(at).copied().unwrap_or(0);
            if at == PCI_STATUS && intx_asserted {
                v |= PCI_STATUS_INTERRUPT as u8;
            }
            *o = v;
        }
    }

    /// Writes one naturally aligned chunk of 1, 2 or 4 bytes at `off`.
    pub fn write(&mut self, off: usize, data: &[u8]) {
        for (i, &d) in data.iter().enumerate() {
            let at = off + i;
            let m = self.write_mask(at);
            if let Some(b) = self.bytes.get_mut(at) {
                *b = (*b & !m) | (d & m);
            }
        }
        // BAR sizing: address bits below the BAR size read as zero.
        for (i, bar) in self.layout.bars.iter().enumerate() {
            let at = PCI_BASE_ADDRESS_0 + 4 * i;
            if bar.size != 0 && off < at + 4 && off + data.len() > at {
                let v = get32(&self.bytes, at);
                put32(
                    &mut self.bytes,
                    at,
                    (v & !(bar.size.max(16) - 1)) | bar.flags,
                );
            }
        }
        // vfio-pci re-evaluates the MSI flags whenever a write to the
        // capability reaches up to the flags word (`vfio_msi_config_write`).
        if let Some(msi) = self.layout.msi {
            if (msi.offset..msi.offset + msi.len()).contains(&off) {
                let rel = off - msi.offset;
                if rel <= 2 && rel + data.len() >= 2 {
                    self.msi_flags_fixup(msi);
                }
            }
        }
    }

    fn msi_flags_fixup(&mut self, msi: MsiLayout) {
        let at = msi.offset + 2;
        let mut flags = self.bytes[at];
        // MSI is enabled through VFIO_DEVICE_SET_IRQS, never by config
        // writes alone.
        if !self.msi_mode {
            flags &= !PCI_MSI_FLAGS_ENABLE;
        }
        // The queue size is clamped to the vectors allocated.
        let qsize = ((flags & PCI_MSI_FLAGS_QSIZE) >> 4).min(self.msi_qmax);
        flags = (flags & !PCI_MSI_FLAGS_QSIZE) | (qsize << 4);
        self.bytes[at] = flags;
        // The result is written through to the device.
        self.msi_hw = flags & PCI_MSI_FLAGS_ENABLE != 0;
    }

    /// `VFIO_DEVICE_SET_IRQS` on the MSI index allocated `vectors` (0:
    /// freed them): allocation turns MSI on in the function, freeing turns
    /// it off. The program-visible flags are left as the program wrote them.
    pub fn set_msi_mode(&mut self, vectors: u32) {
        self.msi_mode = vectors > 0;
        // fls(nvec * 2 - 1) - 1: log2 rounded up.
        self.msi_qmax = if vectors > 1 {
            (32 - (vectors - 1).leading_zeros()) as u8
        } else {
            0
        };
        self.msi_hw = self.msi_mode;
    }

    /// Is MSI on in the function (it signals with MSI, not INTx)?
    pub fn msi_enabled(&self) -> bool {
        self.msi_hw
    }

    /// `VFIO_DEVICE_SET_IRQS` on the MSI-X index allocated `vectors` (0:
    /// freed them): the capability's enable bit follows, as the host
    /// kernel sets it when vfio-pci enables MSI-X.
    pub fn set_msix_mode(&mut self, vectors: u32) {
        self.msix_mode = vectors > 0;
        if let Some(x) = self.layout.msix {
            let at = x.offset + 2;
            let ctrl = get16(&self.bytes, at) & !PCI_MSIX_FLAGS_ENABLE;
            let enable = if self.msix_mode {
                PCI_MSIX_FLAGS_ENABLE
            } else {
                0
            };
            put16(&mut self.bytes, at, ctrl | enable);
        }
    }

    /// Is MSI-X on in the function?
    pub fn msix_enabled(&self) -> bool {
        self.msix_mode
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        get16(&self.bytes, PCI_COMMAND)
    }

    /// Memory decoding on?
    pub fn memory_enabled(&self) -> bool {
        self.command() & PCI_COMMAND_MEMORY != 0
    }

    /// Bus master on?
    pub fn bus_master(&self) -> bool {
        self.command() & PCI_COMMAND_MASTER != 0
    }

    /// INTx disable set?
    pub fn intx_disabled(&self) -> bool {
        self.command() & PCI_COMMAND_INTX_DISABLE != 0
    }

    /// The raw bytes (without the dynamic interrupt status bit).
    pub fn bytes(&self) -> &[u8; CONFIG_SIZE] {
        &self.bytes
    }
}

fn put16(b: &mut [u8; CONFIG_SIZE], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8; CONFIG_SIZE], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn get16(b: &[u8; CONFIG_SIZE], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn get32(b: &[u8; CONFIG_SIZE], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> ConfigLayout {
        ConfigLayout {
            identity: PciIdentity {
                vendor: 0x8086,
                device: 0x2021,
                subsystem_vendor: 0x8086,
                subsystem_device: 0,
                revision: 1,
                class: 0x088000,
            },
            bars: [
                BarLayout {
                    size: 0x4000,
                    address: 0xfeb0_0000,
                    flags: 0,
                },
                BarLayout::default(),
                BarLayout {
                    size: 0x1000,
                    address: 0xfeb1_0000,
                    flags: 0,
                },
                BarLayout::default(),
                BarLayout::default(),
                BarLayout::default(),
            ],
            command: PCI_COMMAND_MEMORY,
            interrupt_line: 5,
            interrupt_pin: 1,
            msi: Some(MsiLayout {
                offset: 0x50,
                vectors_log2: 2,
                addr64: true,
            }),
            msix: None,
            raw_caps: Vec::new(),
        }
    }

    /// A CBDMA-like function: 64-bit BAR0, MSI-X at 0x80, a PCIe
    /// capability at 0x90 and PM at 0xe0, no MSI.
    fn msix_layout() -> ConfigLayout {
        let mut l = layout();
        l.bars[0].flags = PCI_BASE_ADDRESS_MEM_TYPE_64;
        l.bars[2] = BarLayout::default();
        l.msi = None;
        l.msix = Some(MsixLayout {
            offset: 0x80,
            vectors: 1,
            table_bar: 0,
            table_offset: 0x2000,
            pba_bar: 0,
            pba_offset: 0x3000,
        });
        l.raw_caps = vec![
            RawCapability {
                offset: 0xe0,
                bytes: vec![0x01, 0, 0x03, 0],
            },
            RawCapability {
                offset: 0x90,
                bytes: vec![0x10, 0, 0x92, 0],
            },
        ];
        l
    }

    #[test]
    fn capabilities_are_linked_by_offset_and_msix_is_read_only() {
        let mut c = VirtualConfig::new(msix_layout());
        let b = c.bytes();
        assert_eq!(b[PCI_CAPABILITY_LIST], 0x80);
        assert_eq!(b[0x80..0x82], [PCI_CAP_ID_MSIX, 0x90]);
        assert_eq!(b[0x90..0x92], [0x10, 0xe0]);
        assert_eq!(b[0xe0..0xe2], [0x01, 0x00]);
        assert_eq!(rd32(&c, 0x80) >> 16, 0); // table size 1: field 0
        assert_eq!(rd32(&c, 0x84), 0x2000);
        assert_eq!(rd32(&c, 0x88), 0x3000);
        c.write(0x82, &[0xff, 0xff]);
        c.write(0x84, &[0xff; 4]);
        c.write(0x92, &[0; 2]);
        assert_eq!(rd32(&c, 0x80), 0x0000_9011);
        assert_eq!(rd32(&c, 0x84), 0x2000);
        assert_eq!(rd32(&c, 0x90), 0x0092_e010);
        assert!(!c.msix_enabled());
        c.set_msix_mode(1);
        assert!(c.msix_enabled());
        assert_eq!(rd32(&c, 0x80) >> 16, 0x8000);
        c.set_msix_mode(0);
        assert_eq!(rd32(&c, 0x80) >> 16, 0);
        c.set_msix_mode(1);
        c.restore_power_on();
        assert!(!c.msix_enabled());
        assert_eq!(rd32(&c, 0x80) >> 16, 0);
    }

    #[test]
    fn a_64bit_bar_sizes_through_both_halves() {
        let mut c = VirtualConfig::new(msix_layout());
        assert_eq!(rd32(&c, 0x10), 0xfeb0_0004);
        assert_eq!(rd32(&c, 0x14), 0);
        c.write(0x10, &[0xff; 4]);
        c.write(0x14, &[0xff; 4]);
        assert_eq!(rd32(&c, 0x10), 0xffff_c004);
        assert_eq!(rd32(&c, 0x14), 0xffff_ffff);
        c.write(0x14, &[0x01, 0, 0, 0]);
        assert_eq!(rd32(&c, 0x14), 1);
        // The slot after the upper half is an absent BAR.
        c.write(0x18, &[0xff; 4]);
        assert_eq!(rd32(&c, 0x18), 0);
    }

    fn rd32(c: &VirtualConfig, off: usize) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b, false);
        u32::from_le_bytes(b)
    }

    #[test]
    fn every_bar_sizes_by_its_layout() {
        let mut c = VirtualConfig::new(layout());
        for (off, want) in [
            (0x10, 0xffff_c000u32),
            (0x14, 0),
            (0x18, 0xffff_f000),
            (0x30, 0),
        ] {
            c.write(off, &[0xff; 4]);
            assert_eq!(rd32(&c, off), want, "BAR at {off:#x}");
        }
    }

    #[test]
    fn msi_enable_only_with_set_irqs_and_queue_clamped() {
        let mut c = VirtualConfig::new(layout());
        // Multiple Message Capable = 4 vectors.
        assert_eq!(c.bytes()[0x52], 0x84);
        c.write(0x52, &[0xf5]);
        assert_eq!(c.bytes()[0x52] & 0x71, 0x00);
        assert!(!c.msi_enabled());
        c.set_msi_mode(2);
        c.write(0x52, &[0xf5]);
        // Enable kept, queue size clamped to 2 vectors (1).
        assert_eq!(c.bytes()[0x52] & 0x71, 0x11);
        assert!(c.msi_enabled());
        c.write(0x52, &[0x84]);
        assert!(!c.msi_enabled());
    }

    #[test]
    fn read_only_fields_and_status_bit() {
        let mut c = VirtualConfig::new(layout());
        c.write(0, &[0; 4]);
        assert_eq!(rd32(&c, 0), 0x2021_8086);
        c.write(0x3c, &[0x5a, 0x00]);
        assert_eq!(c.bytes()[0x3c..0x3e], [0x5a, 1]);
        let mut s = [0u8; 2];
        c.read(PCI_STATUS, &mut s, true);
        assert_eq!(
            u16::from_le_bytes(s),
            PCI_STATUS_CAP_LIST | PCI_STATUS_INTERRUPT
        );
        c.write(0x80, &[1, 2, 3, 4]);
        assert_eq!(rd32(&c, 0x80), 0x0403_0201);
        c.restore_power_on();
        assert_eq!(rd32(&c, 0x80), 0);
    }
}
