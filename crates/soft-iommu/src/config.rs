//! Configuration of one DMAR unit.

/// 4 KiB base page.
pub const SIZE_4K: u64 = 1 << 12;
/// 2 MiB super page (level-2 leaf).
pub const SIZE_2M: u64 = 1 << 21;
/// 1 GiB super page (level-3 leaf).
pub const SIZE_1G: u64 = 1 << 30;

/// The x86 interrupt-remapping / MSI doorbell window, reserved for every device.
pub const MSI_WINDOW_START: u64 = 0xfee0_0000;
/// Last byte of the MSI window.
pub const MSI_WINDOW_END: u64 = 0xfeef_ffff;

/// Adjusted guest address width of second-level tables: the number of
/// table levels follows from it (VT-d SAGAW: 39 bits = 3 levels, 48 = 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum AddressWidth {
    /// 39-bit IOVA space, 3-level tables (the default platform).
    #[default]
    Bits39,
    /// 48-bit IOVA space, 4-level tables.
    Bits48,
}

impl AddressWidth {
    /// Width in bits.
    pub const fn bits(self) -> u32 {
        match self {
            AddressWidth::Bits39 => 39,
            AddressWidth::Bits48 => 48,
        }
    }

    /// Number of second-level table levels.
    pub const fn levels(self) -> u32 {
        match self {
            AddressWidth::Bits39 => 3,
            AddressWidth::Bits48 => 4,
        }
    }

    /// Highest IOVA of the aperture.
    pub const fn max_iova(self) -> u64 {
        (1u64 << self.bits()) - 1
    }

    /// The width for `bits`, if the model supports it (39 or 48).
    pub const fn from_bits(bits: u32) -> Option<Self> {
        match bits {
            39 => Some(AddressWidth::Bits39),
            48 => Some(AddressWidth::Bits48),
            _ => None,
        }
    }
}

/// Configuration of one DMAR unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IommuConfig {
    /// Name for reports ("dmar0").
    pub name: String,
    /// IOVA width of the domains this unit creates and the widest it accepts.
    pub address_width: AddressWidth,
    /// IOTLB entries (rounded down to a power of two, at least 4).
    pub iotlb_capacity: usize,
    /// ECAP.SC: leaves carry SNP, so the domain can enforce cache coherency.
    pub snoop_control: bool,
    /// CAP.SLLPS bit 0: 2 MiB second-level pages.
    pub super_page_2m: bool,
    /// CAP.SLLPS bit 1: 1 GiB second-level pages.
    pub super_page_1g: bool,
    /// Fault recording registers (records kept before overflow).
    pub fault_log_capacity: usize,
}

impl Default for IommuConfig {
    fn default() -> Self {
        IommuConfig {
            name: "dmar0".to_string(),
            address_width: AddressWidth::Bits39,
            iotlb_capacity: 4096,
            snoop_control: false,
            super_page_2m: true,
            super_page_1g: true,
            fault_log_capacity: 256,
        }
    }
}

impl IommuConfig {
    /// Page sizes this unit maps (bit n set = 2^n bytes): 0x40201000 by default.
    pub fn pgsize_bitmap(&self) -> u64 {
        let mut bitmap = SIZE_4K;
        if self.super_page_2m {
            bitmap |= SIZE_2M;
        }
        if self.super_page_1g {
            bitmap |= SIZE_1G;
        }
        bitmap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_reference_platform() {
        let cfg = IommuConfig::default();
        assert_eq!(cfg.pgsize_bitmap(), 0x4020_1000);
        assert_eq!(cfg.address_width.bits(), 39);
        assert_eq!(cfg.address_width.levels(), 3);
        assert_eq!(cfg.address_width.max_iova(), 0x7f_ffff_ffff);
        assert_eq!(AddressWidth::from_bits(48), Some(AddressWidth::Bits48));
        assert_eq!(AddressWidth::from_bits(57), None);
    }
}
