//! The vfio-pci core for emulated PCI functions: what Linux's
//! `vfio-pci-core` adds around a PCI device, independent of the device
//! model. A model (such as [`crate::edu::EduDevice`]) keeps its registers
//! and config space and composes these parts:
//!
//! - [`irqs::VfioPciIrqs`]: `VFIO_DEVICE_SET_IRQS` (INTx with automasking
//!   and unmask eventfds, MSI, MSI-X, ERR, REQ) and the device side of
//!   interrupt delivery (INTx line level, MSI vectors) into the program's
//!   eventfds;
//! - [`ioeventfd::Ioeventfds`], for `VFIO_DEVICE_IOEVENTFD`;
//! - [`power::PciPower`]: `VFIO_DEVICE_FEATURE`'s low-power features;
//! - [`regions`]: BAR region flags and capabilities (mmap, MSI-X);
//! - [`config::VirtualConfig`]: config space as vfio-pci virtualizes it
//!   (BAR sizing, command register, interrupt line and pin, MSI enable
//!   following SET_IRQS), from the layout the model describes.
//!
//! The generic argument checks of these ioctls are in
//! `softvfio::device_ioctl`; this module holds the state behind them.

pub mod config;
pub mod ioeventfd;
pub mod irqs;
pub mod power;
pub mod regions;

pub use config::{ConfigLayout, VirtualConfig};
pub use ioeventfd::Ioeventfds;
pub use irqs::{IrqCapabilities, IrqMode, IrqStats, VfioPciIrqs};
pub use power::PciPower;

/// One access to a region of a device file (`pread`/`pwrite` or a load or
/// store on a mapping): the bytes to fill or to write.
pub(crate) enum RegionAccess<'a> {
    /// Fill the buffer.
    Read(&'a mut [u8]),
    /// Write these bytes.
    Write(&'a [u8]),
}

impl RegionAccess<'_> {
    /// Bytes accessed.
    pub(crate) fn len(&self) -> usize {
        match self {
            RegionAccess::Read(b) => b.len(),
            RegionAccess::Write(d) => d.len(),
        }
    }
}

/// Locks a device model's state. State stays consistent between
/// statements, so a panic on another thread must not turn every later
/// access into a panic too.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
