//! edu constants: PCI identity, BAR0 register offsets and bits.

/// PCI vendor ID (QEMU, `PCI_VENDOR_ID_QEMU`).
pub const EDU_VENDOR_ID: u16 = 0x1234;
/// PCI device ID.
pub const EDU_DEVICE_ID: u16 = 0x11e8;
/// PCI revision.
pub const EDU_REVISION: u8 = 0x10;
/// PCI class code (base 0x00, sub-class 0xff = `PCI_CLASS_OTHERS`, prog-if 0).
pub const EDU_CLASS_CODE: u32 = 0x00ff00;
/// Subsystem vendor/device as QEMU fills them in.
pub const EDU_SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
/// Subsystem id (QEMU's default).
pub const EDU_SUBSYSTEM_ID: u16 = 0x1100;

/// BAR0 size: 1 MiB of MMIO.
pub const BAR0_SIZE: u64 = 1 << 20;

/// Identification register value: version 1.0 (`0xRRrr00ed`).
pub const EDU_ID: u32 = 0x0100_00ed;

/// BAR0 register offset (`edu.rst`).
pub const REG_ID: u64 = 0x00;
/// BAR0 register offset (`edu.rst`).
pub const REG_LIVENESS: u64 = 0x04;
/// BAR0 register offset (`edu.rst`).
pub const REG_FACTORIAL: u64 = 0x08;
/// BAR0 register offset (`edu.rst`).
pub const REG_STATUS: u64 = 0x20;
/// BAR0 register offset (`edu.rst`).
pub const REG_IRQ_STATUS: u64 = 0x24;
/// BAR0 register offset (`edu.rst`).
pub const REG_IRQ_RAISE: u64 = 0x60;
/// BAR0 register offset (`edu.rst`).
pub const REG_IRQ_ACK: u64 = 0x64;
/// BAR0 register offset (`edu.rst`).
pub const REG_DMA_SRC: u64 = 0x80;
/// BAR0 register offset (`edu.rst`).
pub const REG_DMA_DST: u64 = 0x88;
/// BAR0 register offset (`edu.rst`).
pub const REG_DMA_CNT: u64 = 0x90;
/// BAR0 register offset (`edu.rst`).
pub const REG_DMA_CMD: u64 = 0x98;
/// softvfio extension (DESIGN.md §3): PASID-tagged DMA control.
pub const REG_PASID: u64 = 0xa0;

/// Status: factorial being computed (read-only).
pub const STATUS_COMPUTING: u32 = 0x01;
/// Status: raise interrupt 0x01 when the factorial is done.
pub const STATUS_IRQFACT: u32 = 0x80;

/// Interrupt status bit raised by a finished factorial.
pub const FACT_IRQ: u32 = 0x0000_0001;
/// Interrupt status bit raised by a finished DMA.
pub const DMA_IRQ: u32 = 0x0000_0100;

/// DMA command: start / in progress.
pub const DMA_CMD_START: u64 = 0x1;
/// DMA command: direction, set = device buffer → RAM.
pub const DMA_CMD_TO_RAM: u64 = 0x2;
/// DMA command: raise `DMA_IRQ` when done.
pub const DMA_CMD_IRQ: u64 = 0x4;

/// PASID register: bit 31 enables PASID-tagged DMA.
pub const PASID_ENABLE: u32 = 1 << 31;
/// PASID register: bits 19:0 hold the PASID.
pub const PASID_MASK: u32 = (1 << 20) - 1;

/// Device address of the DMA buffer.
pub const DMA_BUF_ADDR: u64 = 0x40000;
/// DMA buffer size.
pub const DMA_BUF_SIZE: usize = 4096;

/// QEMU's default `dma_mask`: 28 bits (256 MiB).
pub const DEFAULT_DMA_MASK: u64 = (1 << 28) - 1;
