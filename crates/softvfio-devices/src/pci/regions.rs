//! BAR regions as vfio-pci presents them: `VFIO_DEVICE_GET_REGION_INFO`'s
//! flags and capability chain for a BAR (Linux 6.1
//! `vfio_pci_core_ioctl`, `vfio_pci_probe_mmaps`, `msix_mmappable_cap`).
//!
//! Invariants:
//! - A BAR without a size has flags 0 and no capability.
//! - A memory BAR with a size is mmap-able (`REGION_FLAG_MMAP`; vfio-pci
//!   reserves a whole page behind a smaller BAR so that it can be mapped);
//!   an I/O-port BAR is not.
//! - The BAR holding the MSI-X table (and PBA) is mapped whole: since
//!   Linux 4.16 vfio-pci no longer cuts the table out with a sparse-mmap
//!   capability but adds `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`; `pread` and
//!   `pwrite` still skip the table ([`msix_excluded`]).

use softvfio::device::{
    RegionCap, RegionInfo, REGION_FLAG_MMAP, REGION_FLAG_READ, REGION_FLAG_WRITE,
};

/// One BAR of a PCI function, as the model describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarLayout {
    /// Bytes (0: the BAR is not implemented).
    pub size: u64,
    /// A memory BAR (else an I/O-port BAR).
    pub memory: bool,
}

/// Where the MSI-X table and PBA are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    /// The BAR (region index) holding the table.
    pub bar: u32,
    /// Offset of the table in the BAR.
    pub table_offset: u64,
    /// Bytes of the table (16 per vector).
    pub table_size: u64,
}

/// The region info vfio-pci gives for `bar`.
pub fn bar_region_info(bar: BarLayout) -> RegionInfo {
    if bar.size == 0 {
        return RegionInfo { flags: 0, size: 0 };
    }
    let mut flags = REGION_FLAG_READ | REGION_FLAG_WRITE;
    if bar.memory {
        flags |= REGION_FLAG_MMAP;
    }
    RegionInfo {
        flags,
        size: bar.size,
    }
}

/// The capability chain vfio-pci gives for BAR `index`: MSIX_MAPPABLE on
/// the mmap-able BAR that holds the MSI-X table, nothing otherwise.
pub fn bar_region_caps(index: u32, bar: BarLayout, msix: Option<MsixLayout>) -> Vec<RegionCap> {
    let info = bar_region_info(bar);
    match msix {
        Some(m) if m.bar == index && info.flags & REGION_FLAG_MMAP != 0 => {
            vec![RegionCap::MsixMappable]
        }
        _ => Vec::new(),
    }
}

/// The part of `[offset, offset + len)` of BAR `index` that `pread` and
/// `pwrite` leave alone because it is the MSI-X table (`vfio_pci_bar_rw`'s
/// `x_start..x_end`, the table's bytes `msix_offset..+msix_size`): reads
/// there give 0xff bytes, writes are dropped. `None` when they do not meet.
pub fn msix_excluded(
    index: u32,
    offset: u64,
    len: u64,
    msix: Option<MsixLayout>,
) -> Option<(u64, u64)> {
    let m = msix.filter(|m| m.bar == index)?;
    let start = offset.max(m.table_offset);
    let end = offset
        .saturating_add(len)
        .min(m.table_offset.saturating_add(m.table_size));
    (start < end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use softvfio::device::{IrqInfo, VfioDeviceModel};
    use softvfio::uapi::{build_region_caps, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE};

    /// A function with a 16 KiB memory BAR0, an MSI-X table in BAR2 (8 KiB),
    /// a 256-byte I/O BAR4 and nothing else.
    struct MsixModel;

    const BARS: [BarLayout; 6] = [
        BarLayout {
            size: 0x4000,
            memory: true,
        },
        BarLayout {
            size: 0,
            memory: true,
        },
        BarLayout {
            size: 0x2000,
            memory: true,
        },
        BarLayout {
            size: 0,
            memory: true,
        },
        BarLayout {
            size: 0x100,
            memory: false,
        },
        BarLayout {
            size: 0,
            memory: true,
        },
    ];
    const MSIX: MsixLayout = MsixLayout {
        bar: 2,
        table_offset: 0x1000,
        table_size: 0x40,
    };

    impl VfioDeviceModel for MsixModel {
        fn name(&self) -> &str {
            "0000:00:04.0"
        }
        fn flags(&self) -> u32 {
            2
        }
        fn num_regions(&self) -> u32 {
            9
        }
        fn num_irqs(&self) -> u32 {
            5
        }
        fn region_info(&self, index: u32) -> Option<RegionInfo> {
            BARS.get(index as usize).map(|b| bar_region_info(*b))
        }
        fn region_caps(&self, index: u32) -> Vec<RegionCap> {
            BARS.get(index as usize)
                .map(|b| bar_region_caps(index, *b, Some(MSIX)))
                .unwrap_or_default()
        }
        fn irq_info(&self, _index: u32) -> Option<IrqInfo> {
            None
        }
        fn region_read(&self, _i: u32, _o: u64, _b: &mut [u8]) -> Result<usize, i32> {
            Err(libc::EINVAL)
        }
        fn region_write(&self, _i: u32, _o: u64, _d: &[u8]) -> Result<usize, i32> {
            Err(libc::EINVAL)
        }
        fn reset(&self) -> Result<(), i32> {
            Err(libc::EINVAL)
        }
    }

    #[test]
    fn flags_of_each_bar() {
        let m = MsixModel;
        let flags: Vec<u32> = (0..6).map(|i| m.region_info(i).unwrap().flags).collect();
        assert_eq!(flags, vec![0x7, 0, 0x7, 0, 0x3, 0]);
    }

    #[test]
    fn msix_bar_gets_msix_mappable_only() {
        let m = MsixModel;
        for i in 0..6 {
            let want = if i == 2 {
                vec![RegionCap::MsixMappable]
            } else {
                Vec::new()
            };
            assert_eq!(m.region_caps(i), want, "BAR{i}");
        }
        // The chain: one 8-byte header, id 3, version 1, next 0.
        let chain = build_region_caps(&m.region_caps(2));
        let mut want = Vec::new();
        want.extend_from_slice(&VFIO_REGION_INFO_CAP_MSIX_MAPPABLE.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        assert_eq!(chain, want);
    }

    #[test]
    fn an_io_bar_holding_the_table_is_not_mappable() {
        let io = BarLayout {
            size: 0x100,
            memory: false,
        };
        let m = MsixLayout { bar: 4, ..MSIX };
        assert!(bar_region_caps(4, io, Some(m)).is_empty());
    }

    #[test]
    fn table_exclusion_for_pread() {
        assert_eq!(
            msix_excluded(2, 0, 0x2000, Some(MSIX)),
            Some((0x1000, 0x1040))
        );
        assert_eq!(
            msix_excluded(2, 0x1030, 0x20, Some(MSIX)),
            Some((0x1030, 0x1040))
        );
        assert_eq!(msix_excluded(2, 0x1040, 4, Some(MSIX)), None);
        assert_eq!(msix_excluded(0, 0x1000, 4, Some(MSIX)), None);
        assert_eq!(msix_excluded(2, 0x1000, 4, None), None);
    }
}
