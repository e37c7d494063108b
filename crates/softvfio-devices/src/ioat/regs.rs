//! Register map of Intel's I/OAT DMA engine ("Crystal Beach DMA", CBDMA)
//! version 3.3, as Linux's `drivers/dma/ioat/registers.h` and `hw.h` and
//! the VFIO selftests' `lib/drivers/ioat` use it: the device registers at
//! the start of BAR0, one channel's registers at [`CHANNEL_BASE`], the
//! error registers in extended config space, and the 64-byte descriptor.

/// PCI vendor: Intel.
pub const VENDOR_ID: u16 = 0x8086;
/// PCI device: Sky Lake-E CBDMA (`PCI_DEVICE_ID_INTEL_IOAT_SKX`).
pub const DEVICE_ID: u16 = 0x2021;
/// Class code: system peripheral, other.
pub const CLASS_CODE: u32 = 0x08_80_00;
/// Revision of the modelled part.
pub const REVISION: u8 = 0x04;

/// BAR0 size: device registers, one channel, MSI-X table and PBA.
pub const BAR0_SIZE: u64 = 0x4000;
/// MSI-X table offset in BAR0.
pub const MSIX_TABLE_OFFSET: u32 = 0x2000;
/// MSI-X PBA offset in BAR0.
pub const MSIX_PBA_OFFSET: u32 = 0x3000;
/// Config space of a PCI Express function.
pub const CONFIG_SPACE_SIZE: usize = 4096;

// Device registers (BAR0).
/// Channel count (8-bit).
pub const CHANCNT: u64 = 0x00;
/// log2 of the largest transfer one descriptor may ask for (8-bit).
pub const XFERCAP: u64 = 0x01;
/// General control (8-bit).
pub const GENCTRL: u64 = 0x02;
/// Interrupt control (8-bit).
pub const INTRCTRL: u64 = 0x03;
/// Attention status, a bit per channel with an interrupt pending (32-bit).
pub const ATTNSTATUS: u64 = 0x04;
/// Version (8-bit).
pub const VER: u64 = 0x08;
/// Offset of the first channel's registers (16-bit).
pub const PERPORTOFFSET: u64 = 0x0a;
/// Interrupt delay (16-bit).
pub const INTRDELAY: u64 = 0x0c;
/// Device status (16-bit).
pub const DEVICE_STATUS: u64 = 0x0e;
/// DMA capabilities (32-bit).
pub const DMA_CAP: u64 = 0x10;
/// DCA register block offset (16-bit; 0: no DCA).
pub const DCAOFFSET: u64 = 0x14;

/// Version 3.3.
pub const VERSION_3_3: u8 = 0x33;

/// INTRCTRL: master interrupt enable (INTx and MSI).
pub const INTRCTRL_MASTER_INT_EN: u8 = 0x01;
/// INTRCTRL: an interrupt is pending (read-only).
pub const INTRCTRL_INT_STATUS: u8 = 0x02;
/// INTRCTRL: INT_STATUS and MASTER_INT_EN (read-only).
pub const INTRCTRL_INT: u8 = 0x04;
/// INTRCTRL: each channel signals its own MSI-X vector.
pub const INTRCTRL_MSIX_VECTOR_CONTROL: u8 = 0x08;

/// Where channel 0's registers start in BAR0; each channel has this many.
pub const CHANNEL_BASE: u64 = 0x80;
/// Size of one channel's register block.
pub const CHANNEL_SIZE: u64 = 0x80;

// Channel registers (offsets from the channel's base).
/// Channel control (16-bit).
pub const CHANCTRL: u64 = 0x00;
/// DMA compatibility (16-bit, read-only).
pub const DMA_COMP: u64 = 0x02;
/// Channel command (8-bit).
pub const CHANCMD: u64 = 0x04;
/// DMA count: descriptors appended so far (16-bit).
pub const DMACOUNT: u64 = 0x06;
/// Channel status (64-bit, read-only).
pub const CHANSTS: u64 = 0x08;
/// Descriptor chain address (64-bit).
pub const CHAINADDR: u64 = 0x10;
/// Completion writeback address (64-bit).
pub const CHANCMP: u64 = 0x18;
/// Current descriptor address (64-bit, read-only).
pub const CDAR: u64 = 0x20;
/// Channel error (32-bit, write 1 to clear).
pub const CHANERR: u64 = 0x28;
/// Channel error mask (32-bit).
pub const CHANERR_MASK: u64 = 0x2c;

/// CHANCTRL: re-arm the completion interrupt (cleared when it fires).
pub const CHANCTRL_INT_REARM: u16 = 0x0001;
/// CHANCTRL: write the completion status on an error.
pub const CHANCTRL_ERR_COMPLETION_EN: u16 = 0x0004;
/// CHANCTRL: halt on any error.
pub const CHANCTRL_ANY_ERR_ABORT_EN: u16 = 0x0008;
/// CHANCTRL: interrupt on an error.
pub const CHANCTRL_ERR_INT_EN: u16 = 0x0010;
/// DMA_COMP: compatible with the version 2 ring interface.
pub const DMA_COMP_V2: u16 = 0x0002;

/// CHANCMD: reset the channel (self-clearing).
pub const CHANCMD_RESET: u8 = 0x20;
/// CHANCMD: resume a suspended channel.
pub const CHANCMD_RESUME: u8 = 0x10;
/// CHANCMD: abort: halt now.
pub const CHANCMD_ABORT: u8 = 0x08;
/// CHANCMD: suspend after the current descriptor.
pub const CHANCMD_SUSPEND: u8 = 0x04;
/// CHANCMD: descriptors were appended (version 1 interface).
pub const CHANCMD_APPEND: u8 = 0x02;
/// CHANCMD: start (version 1 interface).
pub const CHANCMD_START: u8 = 0x01;

/// CHANSTS: the status field.
pub const CHANSTS_STATUS: u64 = 0x7;
/// CHANSTS: the completed descriptor's address field.
pub const CHANSTS_COMPLETED_DESCRIPTOR_ADDR: u64 = !0x3f;

/// CHANERR: a source read failed with an address error.
pub const CHANERR_SRC_ADDR_ERR: u32 = 0x0001;
/// CHANERR: a destination write failed with an address error.
pub const CHANERR_DEST_ADDR_ERR: u32 = 0x0002;
/// CHANERR: fetching the next descriptor failed.
pub const CHANERR_NEXT_ADDR_ERR: u32 = 0x0004;
/// CHANERR: a descriptor address is not 64-byte aligned.
pub const CHANERR_NEXT_DESC_ALIGN_ERR: u32 = 0x0008;
/// CHANERR: CHAINADDR holds an unusable value.
pub const CHANERR_CHAIN_ADDR_VALUE_ERR: u32 = 0x0010;
/// CHANERR: a command the channel's state does not allow.
pub const CHANERR_CHANCMD_ERR: u32 = 0x0020;
/// CHANERR: a read got an error response.
pub const CHANERR_READ_DATA_ERR: u32 = 0x0100;
/// CHANERR: a write got an error response.
pub const CHANERR_WRITE_DATA_ERR: u32 = 0x0200;
/// CHANERR: the descriptor's control field is invalid.
pub const CHANERR_CONTROL_ERR: u32 = 0x0400;
/// CHANERR: the descriptor's size is invalid.
pub const CHANERR_LENGTH_ERR: u32 = 0x0800;
/// CHANERR: the completion writeback failed.
pub const CHANERR_COMPLETION_ADDR_ERR: u32 = 0x1000;

// Extended config space.
/// Uncorrectable DMA error status (32-bit, write 1 to clear).
pub const PCI_DMAUNCERRSTS: usize = 0x148;
/// Channel errors seen by the internal error logic (32-bit, W1C).
pub const PCI_CHANERR_INT: usize = 0x180;
/// Mask of [`PCI_CHANERR_INT`] (32-bit).
pub const PCI_CHANERRMSK_INT: usize = 0x184;

/// Descriptor size and alignment.
pub const DESC_SIZE: u64 = 64;
/// Descriptor control: interrupt on completion.
pub const DESC_CTL_INT_EN: u32 = 1 << 0;
/// Descriptor control: write the completion status.
pub const DESC_CTL_COMPL_WRITE: u32 = 1 << 3;
/// Descriptor control: a null descriptor (moves nothing).
pub const DESC_CTL_NULL: u32 = 1 << 5;
/// Descriptor control: the operation (bits 24..32).
pub const DESC_CTL_OP_SHIFT: u32 = 24;
/// Operation: memory copy.
pub const OP_COPY: u32 = 0x00;
