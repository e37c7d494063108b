//! edu's PCI configuration space as vfio-pci shows it to user space.
//!
//! vfio-pci passes some fields through to the device and virtualizes others
//! (BARs, interrupt line, MSI capability). Seen from the device fd, the
//! combination behaves byte for byte like the table below, which was
//! measured on the reference machine (QEMU 7.2 `-device edu` on q35 behind
//! Linux 6.1 vfio-pci; see the crate README section in `lib.rs`).

/// Conventional PCI: 256 bytes.
pub const CONFIG_SIZE: usize = 256;

pub const PCI_COMMAND: usize = 0x04;
pub const PCI_STATUS: usize = 0x06;
pub const PCI_BASE_ADDRESS_0: usize = 0x10;
pub const PCI_INTERRUPT_LINE: usize = 0x3c;

pub const PCI_COMMAND_IO: u16 = 0x0001;
pub const PCI_COMMAND_MEMORY: u16 = 0x0002;
pub const PCI_COMMAND_MASTER: u16 = 0x0004;
pub const PCI_COMMAND_SERR: u16 = 0x0100;
pub const PCI_COMMAND_INTX_DISABLE: u16 = 0x0400;

/// Status: INTx asserted.
pub const PCI_STATUS_INTERRUPT: u16 = 0x0008;
pub const PCI_STATUS_CAP_LIST: u16 = 0x0010;

/// Where QEMU's `msi_init(pdev, 0, ...)` puts the MSI capability (the first
/// free offset after the header).
pub const MSI_CAP_OFFSET: usize = 0x40;
/// 64-bit MSI without per-vector masking: 14 bytes.
pub const MSI_CAP_LEN: usize = 14;
pub const PCI_CAP_ID_MSI: u8 = 0x05;
pub const PCI_MSI_FLAGS_ENABLE: u8 = 0x01;
pub const PCI_MSI_FLAGS_QSIZE: u8 = 0x70;
pub const PCI_MSI_FLAGS_64BIT: u8 = 0x80;

/// Command register after firmware and `pci_enable_device`: I/O, memory,
/// SERR (what SeaBIOS sets; the reference shows 0x0103).
const POWER_ON_COMMAND: u16 = PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_SERR;

/// BAR0 flags: 32-bit, non-prefetchable memory (all zero bits).
const BAR0_FLAGS: u32 = 0;

/// The vfio-pci view of edu's config space.
#[derive(Debug, Clone)]
pub struct EduConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    power_on: [u8; CONFIG_SIZE],
    bar0_size: u32,
    /// vfio-pci's interrupt type is MSI (`VFIO_DEVICE_SET_IRQS` enabled it):
    /// only then may the user's MSI enable bit stay set.
    msi_mode: bool,
    /// MSI enable in the device's own capability: what decides whether the
    /// device signals with MSI or INTx.
    msi_hw: bool,
}

/// Bits a user write may change, per byte (everything else is read-only).
fn write_mask(off: usize) -> u8 {
    match off {
        // Command: I/O, memory, bus master | SERR, INTx disable.
        0x04 => 0x07,
        0x05 => 0x05,
        // Cache line size.
        0x0c => 0xff,
        // BAR0 (sized by the fixup after the write). BAR1-5 and the ROM BAR
        // are unimplemented and read 0 whatever is written.
        0x10..=0x13 => 0xff,
        PCI_INTERRUPT_LINE => 0xff,
        // MSI flags low byte is fully virtual (even the 64-bit bit, as
        // measured); the high byte and the cap header are read-only.
        0x42 => 0xff,
        // MSI address, data, and the free space after the capability.
        0x44..=0xff => 0xff,
        _ => 0,
    }
}

impl EduConfigSpace {
    /// Power-on config space with BAR0 at `bar0_address` (as assigned by
    /// firmware) and the given interrupt line.
    pub fn new(bar0_address: u32, interrupt_line: u8, bar0_size: u32) -> Self {
        use super::regs::*;
        let mut b = [0u8; CONFIG_SIZE];
        put16(&mut b, 0x00, EDU_VENDOR_ID);
        put16(&mut b, 0x02, EDU_DEVICE_ID);
        put16(&mut b, PCI_COMMAND, POWER_ON_COMMAND);
        put16(&mut b, PCI_STATUS, PCI_STATUS_CAP_LIST);
        b[0x08] = EDU_REVISION;
        b[0x09] = (EDU_CLASS_CODE & 0xff) as u8;
        b[0x0a] = ((EDU_CLASS_CODE >> 8) & 0xff) as u8;
        b[0x0b] = ((EDU_CLASS_CODE >> 16) & 0xff) as u8;
        let size_mask = !(bar0_size.max(16) - 1);
        put32(
            &mut b,
            PCI_BASE_ADDRESS_0,
            (bar0_address & size_mask) | BAR0_FLAGS,
        );
        put16(&mut b, 0x2c, EDU_SUBSYSTEM_VENDOR_ID);
        put16(&mut b, 0x2e, EDU_SUBSYSTEM_ID);
        b[0x34] = MSI_CAP_OFFSET as u8;
        b[PCI_INTERRUPT_LINE] = interrupt_line;
        b[0x3d] = 1; // INTA#
        b[MSI_CAP_OFFSET] = PCI_CAP_ID_MSI;
        b[MSI_CAP_OFFSET + 1] = 0; // last capability
        b[MSI_CAP_OFFSET + 2] = PCI_MSI_FLAGS_64BIT; // 1 vector, 64-bit
        EduConfigSpace {
            bytes: b,
            power_on: b,
            bar0_size: bar0_size.max(16),
            msi_mode: false,
            msi_hw: false,
        }
    }

    /// Back to the state saved when the device was enabled (what vfio-pci
    /// restores on the last close and re-reads on the next open).
    pub fn restore_power_on(&mut self) {
        self.bytes = self.power_on;
        self.msi_mode = false;
        self.msi_hw = false;
    }

    /// Reads one chunk at `off` (bounds checked by the caller).
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
            let m = write_mask(at);
            if let Some(b) = self.bytes.get_mut(at) {
                *b = (*b & !m) | (d & m);
            }
        }
        // BAR sizing: address bits below the BAR size read as zero.
        if off < PCI_BASE_ADDRESS_0 + 4 && off + data.len() > PCI_BASE_ADDRESS_0 {
            let bar = get32(&self.bytes, PCI_BASE_ADDRESS_0);
            put32(
                &mut self.bytes,
                PCI_BASE_ADDRESS_0,
                (bar & !(self.bar0_size - 1)) | BAR0_FLAGS,
            );
        }
        // vfio-pci re-evaluates the MSI flags whenever a write to the
        // capability reaches up to the flags word (`vfio_msi_config_write`).
        if (MSI_CAP_OFFSET..MSI_CAP_OFFSET + MSI_CAP_LEN).contains(&off) {
            let rel = off - MSI_CAP_OFFSET;
            if rel <= 2 && rel + data.len() >= 2 {
                self.msi_flags_fixup();
            }
        }
    }

    fn msi_flags_fixup(&mut self) {
        let at = MSI_CAP_OFFSET + 2;
        let mut flags = self.bytes[at];
        // MSI is enabled through VFIO_DEVICE_SET_IRQS, never by config
        // writes alone.
        if !self.msi_mode {
            flags &= !PCI_MSI_FLAGS_ENABLE;
        }
        // One vector: the queue size is clamped to 2^0.
        flags &= !PCI_MSI_FLAGS_QSIZE;
        self.bytes[at] = flags;
        // The result is written through to the device.
        self.msi_hw = flags & PCI_MSI_FLAGS_ENABLE != 0;
    }

    /// `VFIO_DEVICE_SET_IRQS` on the MSI index: enabling allocates the
    /// vector, which turns MSI on in the device; disabling frees it. The
    /// user-visible flags are left as the user wrote them.
    pub fn set_msi_mode(&mut self, on: bool) {
        self.msi_mode = on;
        self.msi_hw = on;
    }

    /// Is MSI on in the device (it signals with MSI, not INTx)?
    pub fn msi_enabled(&self) -> bool {
        self.msi_hw
    }

    pub fn command(&self) -> u16 {
        get16(&self.bytes, PCI_COMMAND)
    }

    pub fn memory_enabled(&self) -> bool {
        self.command() & PCI_COMMAND_MEMORY != 0
    }

    pub fn bus_master(&self) -> bool {
        self.command() & PCI_COMMAND_MASTER != 0
    }

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
