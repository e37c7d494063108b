//! Assembles a running platform from a [`Config`]: one VT-d unit, the device
//! models wired to DMA ports of that unit, and the IOMMU groups the VFIO
//! front ends open.

use std::sync::Arc;

use soft_iommu::{AddressWidth, Iommu, IommuConfig as UnitConfig};
use softvfio::iommu::vtd::VtdUnit;
use softvfio::iommu::{IommuUnit, ResvRegion};
use softvfio::platform::{Device, Group, GroupKind, Platform};
use softvfio_devices::{EduDevice, EduOptions, IommuDmaTarget};

use crate::config::{parse_bdf, Config, ConfigError, DeviceKind};

/// A device model of the platform, for `inspect`, `demo` and reports.
#[derive(Clone)]
pub struct BuiltDevice {
    pub name: String,
    pub group: u32,
    pub rid: Option<u16>,
    pub edu: Arc<EduDevice>,
}

/// A platform ready for a VFIO front end.
pub struct BuiltPlatform {
    pub config: Config,
    pub platform: Arc<Platform>,
    /// The VT-d unit every IOMMU-backed group sits behind.
    pub iommu: Arc<Iommu>,
    pub devices: Vec<BuiltDevice>,
}

impl BuiltPlatform {
    /// The platform of the conformance reference.
    pub fn reference() -> Result<Self, ConfigError> {
        build(&Config::reference())
    }

    pub fn device(&self, name: &str) -> Option<&BuiltDevice> {
        self.devices.iter().find(|d| d.name == name)
    }
}

/// Builds the platform a configuration describes.
pub fn build(cfg: &Config) -> Result<BuiltPlatform, ConfigError> {
    cfg.validate()?;
    let unit_cfg = UnitConfig {
        address_width: if cfg.iommu.address_width == 48 {
            AddressWidth::Bits48
        } else {
            AddressWidth::Bits39
        },
        iotlb_capacity: cfg.iommu.iotlb_entries,
        snoop_control: cfg.iommu.snoop_control,
        ..UnitConfig::default()
    };
    let iommu = Iommu::new(unit_cfg);
    let unit: Arc<dyn IommuUnit> = Arc::new(VtdUnit::new(iommu.clone()));

    let mut platform = Platform::new();
    platform.dma_entry_limit = cfg.limits.dma_entry_limit;
    platform.precise_dirty = cfg.dirty.precise;

    let mut devices = Vec::new();
    let mut groups: std::collections::BTreeMap<u32, Vec<Arc<Device>>> = Default::default();
    for (i, d) in cfg.devices.iter().enumerate() {
        match d.kind {
            DeviceKind::Edu => {
                let rid = parse_bdf(&d.bdf).ok_or_else(|| ConfigError::Invalid {
                    key: format!("device[{i}].bdf"),
                    reason: "not a PCI address".into(),
                })?;
                let edu = Arc::new(EduDevice::with_options(EduOptions::new(d.bdf.clone())));
                edu.set_dma_target(Arc::new(IommuDmaTarget::for_device(&iommu, rid)));
                groups.entry(d.group).or_default().push(Arc::new(Device {
                    name: d.bdf.clone(),
                    rid: Some(rid),
                    model: edu.clone(),
                }));
                devices.push(BuiltDevice {
                    name: d.bdf.clone(),
                    group: d.group,
                    rid: Some(rid),
                    edu,
                });
            }
            DeviceKind::MdevEdu => {
                // The mediated edu pins through the external API of the
                // engine (vfio_pin_pages/vfio_dma_rw), which is not built yet.
                return Err(ConfigError::Invalid {
                    key: format!("device[{i}].kind"),
                    reason: "\"mdev-edu\" needs the external pinning API, which this build does not have yet".into(),
                });
            }
        }
    }
    for (id, devs) in groups {
        let extra: Vec<ResvRegion> = cfg
            .reserved_regions
            .iter()
            .filter(|r| r.group == id)
            .map(|r| ResvRegion {
                start: r.start,
                end: r.end,
                kind: r.kind,
            })
            .collect();
        platform.add_group(Group {
            id,
            kind: GroupKind::Iommu(unit.clone()),
            devices: devs,
            extra_reserved: extra,
        });
    }
    Ok(BuiltPlatform {
        config: cfg.clone(),
        platform: Arc::new(platform),
        iommu,
        devices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_platform_shape() {
        let p = BuiltPlatform::reference().unwrap();
        let g = p.platform.group(3).unwrap();
        assert_eq!(g.devices.len(), 1);
        assert_eq!(g.devices[0].name, "0000:00:03.0");
        assert_eq!(g.devices[0].rid, Some(0x18));
        let resv = g.reserved_regions();
        assert_eq!(resv.len(), 1);
        assert_eq!((resv[0].start, resv[0].end), (0xfee0_0000, 0xfeef_ffff));
        assert_eq!(p.platform.dma_entry_limit, 65535);
    }

    #[test]
    fn configured_regions_join_the_group() {
        let cfg = Config::parse(
            "[[device]]\nkind = \"edu\"\nbdf = \"0000:00:04.0\"\ngroup = 5\n[[reserved_region]]\ngroup = 5\nstart = 0x100000\nend = 0x1fffff\n",
        )
        .unwrap();
        let p = build(&cfg).unwrap();
        let resv = p.platform.group(5).unwrap().reserved_regions();
        assert_eq!(resv.len(), 2);
        assert!(resv
            .iter()
            .any(|r| r.start == 0x10_0000 && r.end == 0x1f_ffff));
    }
}
