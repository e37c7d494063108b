//! Device models for softvfio.
//!
//! [`edu::EduDevice`] is QEMU's `edu` PCI device (`docs/specs/edu.rst`,
//! `hw/misc/edu.c`) as Linux vfio-pci presents it, plus the PASID register
//! of DESIGN.md §3. Its DMA goes through a [`dma::DmaTarget`], so the same
//! register model can sit behind the software IOMMU or a mediated-device
//! pinning path.
//!
//! [`mdev::MdevEdu`] is the same device as a mediated device: its DMA goes
//! through the container's external pinning API instead of an IOMMU.
//!
//! [`ioat::IoatDevice`] is Intel's I/OAT DMA engine (CBDMA), the device
//! Linux's VFIO selftests drive in `vfio_pci_driver_test`.
//!
//! [`pci`] is the part of vfio-pci they share: config space
//! virtualization, SET_IRQS, ioeventfds, power features.
//!
//! # Measured behaviour
//!
//! Where the specification is silent the model follows what a probe saw on
//! the reference machine (`shared/conformance/run-kernel.sh`: QEMU 7.2
//! `-device edu`, Linux 6.1 vfio-pci, VT-d):
//!
//! - device flags 0x2 (no reset method), regions 9 / IRQs 5; VGA region
//!   info and ERR IRQ info are EINVAL, REQ has count 1;
//! - BAR accesses narrower than 4 bytes read 0 and are dropped; 4-byte
//!   reads of unimplemented registers return 0xffffffff; reads past the BAR
//!   are short, at or beyond it EINVAL; with memory decoding off, EIO;
//! - config accesses that do not fit in 256 bytes are EFAULT;
//! - DMA with Bus Master Enable clear reads zeros and writes nothing; a
//!   faulting read yields the readable prefix and zeros after it; MSI needs
//!   Bus Master Enable;
//! - INTx is level-triggered: one event per rising edge, the status
//!   register's interrupt bit follows the line.
//!
//! BAR0 is mmap-able as on Linux: loads and stores on the mapping are
//! trapped and performed by `mapped_read`/`mapped_write` (docs/MMIO.md).
//!
//! Deliberate differences: 8-byte
//! accesses to the 64-bit DMA registers reach the device whole (newer
//! vfio-pci; below 0x80 they are split as in 6.1; see
//! [`edu::EduOptions::mmio_64bit`]); DMA runs synchronously inside the
//! command write; an out-of-bounds DMA buffer range is rejected instead of
//! aborting QEMU (7.2 even aborts on a full 4096-byte or a 0-byte
//! transfer, an off-by-one fixed in later QEMU, whose check we use).

#![forbid(unsafe_code)]

pub mod dma;
pub mod edu;
pub mod ioat;
pub mod iommu;
pub mod mdev;
pub mod pci;

pub use dma::{DmaAccess, DmaError, DmaTarget, VecDmaTarget};
pub use edu::{EduDevice, EduOptions};
pub use ioat::{IoatDevice, IoatOptions};
pub use iommu::IommuDmaTarget;
pub use mdev::{MdevDmaMode, MdevEdu, MdevEduOptions};
