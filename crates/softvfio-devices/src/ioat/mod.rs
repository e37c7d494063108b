//! Intel's I/OAT DMA engine (Crystal Beach DMA, 8086:2021, version 3.3)
//! with one channel, as Linux's `drivers/dma/ioat` and the VFIO selftests'
//! `lib/drivers/ioat` drive it: memory-to-memory copies described by
//! 64-byte descriptors in a chain, completion status, channel errors and
//! an MSI-X channel interrupt, behind the VT-d model like edu.
//!
//! - [`regs`]: the register map and descriptor format;
//! - [`channel`]: one channel's registers and descriptor engine (pure: it
//!   is given a [`crate::DmaTarget`]);
//! - [`device`]: the vfio-pci device (config space, BAR0, interrupts).
//!
//! Bad descriptors never crash anything: an access the IOMMU refuses is an
//! IOMMU fault (recorded by the VT-d model) and a CHANERR bit, and the
//! channel halts until it is reset, as the hardware does.

pub mod channel;
pub mod device;
pub mod regs;

pub use channel::{ChannelStats, IoatChannel};
pub use device::{IoatDevice, IoatOptions, IoatSnapshot};

#[cfg(test)]
mod tests;
