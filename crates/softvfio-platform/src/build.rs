//! Assembles a running platform from a [`Config`]: one VT-d unit, the device
//! models wired to DMA ports of that unit, and the IOMMU groups the VFIO
//! front ends open.

use std::sync::Arc;

use soft_iommu::{AddressWidth, Iommu, IommuConfig as UnitConfig};
use softvfio::iommu::vtd::VtdUnit;
use softvfio::iommu::{IommuUnit, ResvRegion};
use softvfio::platform::{Device, Group, GroupKind, Platform};
use softvfio_devices::{
    EduDevice, EduOptions, IoatDevice, IoatOptions, IommuDmaTarget, MdevEdu, MdevEduOptions,
};

use crate::config::{parse_bdf, Config, ConfigError, DeviceKind};

/// A device model of the platform, for `inspect`, `demo` and reports.
#[derive(Clone)]
pub struct BuiltDevice {
    /// Its name (PCI address or UUID).
    pub name: String,
    /// Its group.
    pub group: u32,
    /// Requester id, for a device behind the IOMMU.
    pub rid: Option<u16>,
    /// The edu register model (for a mediated device, the one behind it);
    /// `None` for another kind of device.
    pub edu: Option<Arc<EduDevice>>,
    /// The mediated device, for kind "mdev-edu".
    pub mdev: Option<Arc<MdevEdu>>,
    /// The I/OAT DMA engine, for kind "ioat".
    pub ioat: Option<Arc<IoatDevice>>,
}

impl BuiltDevice {
    /// Its conventional config space (256 bytes) as the device fd shows it:
    /// what sysfs `config` gives an unprivileged reader.
    pub fn config_bytes(&self) -> Vec<u8> {
        if let Some(edu) = &self.edu {
            edu.config_bytes().to_vec()
        } else if let Some(ioat) = &self.ioat {
            ioat.config_bytes().to_vec()
        } else {
            Vec::new()
        }
    }

    /// Size of region `index` of the device (0 when it has none).
    pub fn region_size(&self, index: u32) -> u64 {
        use softvfio::device::VfioDeviceModel;
        let model: Option<&dyn VfioDeviceModel> = if let Some(m) = &self.mdev {
            Some(m.as_ref())
        } else if let Some(e) = &self.edu {
            Some(e.as_ref())
        } else if let Some(i) = &self.ioat {
            Some(i.as_ref())
        } else {
            None
        };
        model
            .and_then(|m| m.region_info(index))
            .map_or(0, |r| r.size)
    }

    /// The model's state for `inspect` and reports.
    pub fn snapshot(&self) -> serde_json::Value {
        let v = if let Some(edu) = &self.edu {
            serde_json::to_value(edu.snapshot())
        } else if let Some(ioat) = &self.ioat {
            serde_json::to_value(ioat.snapshot())
        } else {
            Ok(serde_json::Value::Null)
        };
        v.unwrap_or(serde_json::Value::Null)
    }
}

/// A platform ready for a VFIO front end.
pub struct BuiltPlatform {
    /// The configuration it was built from.
    pub config: Config,
    /// The platform the engine serves.
    pub platform: Arc<Platform>,
    /// The VT-d unit every IOMMU-backed group sits behind.
    pub iommu: Arc<Iommu>,
    /// The devices, in configuration order.
    pub devices: Vec<BuiltDevice>,
}

impl BuiltPlatform {
    /// The platform of the conformance reference.
    pub fn reference() -> Result<Self, ConfigError> {
        build(&Config::reference())
    }

    /// The device named `name`.
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
    softvfio::memory::host::parallel::set_default_pin_threads(cfg.engine.pin_threads as usize);

    let mut devices = Vec::new();
    let mut groups: std::collections::BTreeMap<u32, Vec<Arc<Device>>> = Default::default();
    // Groups of mediated devices are emulated (config validation keeps
    // them apart from groups of devices behind the IOMMU).
    let mut mdev_groups: std::collections::BTreeSet<u32> = Default::default();
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
                platform.cdev_order.push((d.group, d.bdf.clone()));
                devices.push(BuiltDevice {
                    name: d.bdf.clone(),
                    group: d.group,
                    rid: Some(rid),
                    edu: Some(edu),
                    mdev: None,
                    ioat: None,
                });
            }
            DeviceKind::Ioat => {
                let rid = parse_bdf(&d.bdf).ok_or_else(|| ConfigError::Invalid {
                    key: format!("device[{i}].bdf"),
                    reason: "not a PCI address".into(),
                })?;
                let mut opts = IoatOptions::new(d.bdf.clone());
                if let Some(x) = d.xfercap {
                    opts.xfercap = x;
                }
                let ioat = Arc::new(IoatDevice::with_options(opts));
                ioat.set_dma_target(Arc::new(IommuDmaTarget::for_device(&iommu, rid)));
                groups.entry(d.group).or_default().push(Arc::new(Device {
                    name: d.bdf.clone(),
                    rid: Some(rid),
                    model: ioat.clone(),
                }));
                platform.cdev_order.push((d.group, d.bdf.clone()));
                devices.push(BuiltDevice {
                    name: d.bdf.clone(),
                    group: d.group,
                    rid: Some(rid),
                    edu: None,
                    mdev: None,
                    ioat: Some(ioat),
                });
            }
            DeviceKind::MdevEdu => {
                // No requester id, no IOMMU: its DMA goes through the
                // container it is opened in (pin_pages / dma_rw).
                let mut opts = MdevEduOptions::new(d.bdf.clone(), d.group);
                if d.dma == Some(crate::config::MdevDma::Rw) {
                    opts.mode = softvfio_devices::mdev::MdevDmaMode::Rw;
                }
                let mdev = MdevEdu::new(opts);
                mdev_groups.insert(d.group);
                groups.entry(d.group).or_default().push(Arc::new(Device {
                    name: d.bdf.clone(),
                    rid: None,
                    model: mdev.clone(),
                }));
                platform.cdev_order.push((d.group, d.bdf.clone()));
                devices.push(BuiltDevice {
                    name: d.bdf.clone(),
                    group: d.group,
                    rid: None,
                    edu: Some(mdev.edu().clone()),
                    mdev: Some(mdev),
                    ioat: None,
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
            kind: if mdev_groups.contains(&id) {
                GroupKind::Emulated
            } else {
                GroupKind::Iommu(unit.clone())
            },
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

    /// An I/OAT engine next to the edu: its own group behind the same VT-d
    /// unit, its DMA translated by its requester id, its config space in
    /// the sysfs view's reader.
    #[test]
    fn ioat_sits_behind_the_iommu_in_its_own_group() {
        use softvfio::device::VfioDeviceModel;
        let cfg = Config::parse(
            "[[device]]\nkind = \"edu\"\nbdf = \"0000:00:03.0\"\ngroup = 3\n\
             [[device]]\nkind = \"ioat\"\nbdf = \"0000:00:04.0\"\ngroup = 4\nxfercap = 14\n",
        )
        .unwrap();
        let p = build(&cfg).unwrap();
        let g = p.platform.group(4).unwrap();
        assert_eq!(g.devices[0].rid, Some(0x20));
        assert!(matches!(g.kind, GroupKind::Iommu(_)));
        let d = p.device("0000:00:04.0").unwrap();
        assert!(d.edu.is_none());
        let ioat = d.ioat.as_ref().unwrap();
        assert_eq!(ioat.options().xfercap, 14);
        assert_eq!(d.config_bytes()[..4], [0x86, 0x80, 0x21, 0x20]);
        assert_eq!(d.region_size(0), 0x4000);
        assert_eq!(ioat.region_info(7).map(|r| r.size), Some(4096));
        assert_eq!(d.snapshot()["name"], "0000:00:04.0");
    }

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
    fn mdev_edu_sits_in_an_emulated_group_named_by_its_uuid() {
        let uuid = "c0ffee00-0000-4000-8000-000000000001";
        let cfg = Config::parse(&format!(
            "[[device]]\nkind = \"edu\"\nbdf = \"0000:00:03.0\"\ngroup = 3\n[[device]]\nkind = \"mdev-edu\"\nbdf = \"{uuid}\"\ngroup = 10\n"
        ))
        .unwrap();
        let p = build(&cfg).unwrap();
        let g = p.platform.group(10).unwrap();
        assert!(g.is_emulated());
        assert!(g.reserved_regions().is_empty());
        assert_eq!(g.devices[0].name, uuid);
        assert_eq!(g.devices[0].rid, None);
        assert!(!p.platform.group(3).unwrap().is_emulated());
        let d = p.device(uuid).unwrap();
        assert!(d.mdev.is_some());
        assert_eq!(d.edu.as_ref().unwrap().options().name, uuid);
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
