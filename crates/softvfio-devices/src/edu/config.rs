//! edu's PCI configuration space: what QEMU's `edu` puts in its header and
//! capability list, as firmware left it on the reference machine (QEMU 7.2
//! `-device edu` on q35 behind Linux 6.1 vfio-pci: command 0x103, BAR0 at
//! 0xfea00000, interrupt line 0x0b, MSI capability at 0x40 with one vector
//! and 64-bit addresses). vfio-pci's virtualization of it is the shared
//! [`crate::pci::config::VirtualConfig`].

pub use crate::pci::config::CONFIG_SIZE;
use crate::pci::config::{
    BarLayout, ConfigLayout, MsiLayout, PciIdentity, VirtualConfig, PCI_COMMAND_IO,
    PCI_COMMAND_MEMORY, PCI_COMMAND_SERR,
};

use super::regs::{
    EDU_CLASS_CODE, EDU_DEVICE_ID, EDU_REVISION, EDU_SUBSYSTEM_ID, EDU_SUBSYSTEM_VENDOR_ID,
    EDU_VENDOR_ID,
};

/// Where QEMU's `msi_init(pdev, 0, ...)` puts the MSI capability (the first
/// free offset after the header).
pub const MSI_CAP_OFFSET: usize = 0x40;

/// Command register after firmware and `pci_enable_device`: I/O, memory,
/// SERR (what SeaBIOS sets; the reference shows 0x0103).
const POWER_ON_COMMAND: u16 = PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_SERR;

/// edu's layout with BAR0 (32-bit, non-prefetchable memory) at
/// `bar0_address` and the given interrupt line.
pub fn edu_layout(bar0_address: u32, interrupt_line: u8, bar0_size: u32) -> ConfigLayout {
    let mut bars = [BarLayout::default(); 6];
    bars[0] = BarLayout {
        size: bar0_size.max(16),
        address: bar0_address,
        flags: 0,
    };
    ConfigLayout {
        identity: PciIdentity {
            vendor: EDU_VENDOR_ID,
            device: EDU_DEVICE_ID,
            subsystem_vendor: EDU_SUBSYSTEM_VENDOR_ID,
            subsystem_device: EDU_SUBSYSTEM_ID,
            revision: EDU_REVISION,
            class: EDU_CLASS_CODE,
        },
        bars,
        command: POWER_ON_COMMAND,
        interrupt_line,
        interrupt_pin: 1, // INTA#
        msi: Some(MsiLayout {
            offset: MSI_CAP_OFFSET,
            vectors_log2: 0,
            addr64: true,
        }),
        msix: None,
        raw_caps: Vec::new(),
    }
}

/// edu's config space as vfio-pci shows it.
pub fn edu_config(bar0_address: u32, interrupt_line: u8, bar0_size: u32) -> VirtualConfig {
    VirtualConfig::new(edu_layout(bar0_address, interrupt_line, bar0_size))
}
