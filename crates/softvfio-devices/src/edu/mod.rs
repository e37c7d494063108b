//! QEMU's "edu" educational PCI device.
//!
//! - [`core`]: the BAR0 register model and DMA engine, reusable with any
//!   [`DmaTarget`](crate::dma::DmaTarget) (vfio-pci here, mdev later).
//! - [`config`]: the PCI config space as vfio-pci presents it.
//! - [`device`]: [`EduDevice`], the vfio-pci device
//!   ([`softvfio::device::VfioDeviceModel`]).

pub mod config;
pub mod core;
pub mod device;
pub mod regs;

pub use self::core::{DmaBus, EduCore, EduRegisters, EduStats, IrqRequest};
pub use self::device::{EduDevice, EduOptions, EduSnapshot, IrqNotifier};

#[cfg(test)]
mod tests;
