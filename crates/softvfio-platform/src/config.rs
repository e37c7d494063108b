//! The platform configuration file (TOML).
//!
//! ```toml
//! [iommu]
//! address_width = 39          # 39 (3-level) or 48 (4-level)
//! iotlb_entries = 4096
//! snoop_control = false       # VFIO_DMA_CC_IOMMU
//!
//! [limits]
//! dma_entry_limit = 65535
//!
//! [dirty]
//! precise = false             # report only pages the IOMMU saw written
//!
//! [engine]
//! pin_threads = 0             # threads a large MAP_DMA pins on; 0: every core, 1: the caller only
//!
//! [[device]]
//! kind = "edu"                # or "mdev-edu", "ioat"
//! bdf = "0000:00:03.0"        # PCI address; a UUID for mdev-edu
//! group = 3
//! dma = "pin"                 # mdev-edu only: pin (vfio_pin_pages, cached) | rw (vfio_dma_rw)
//! xfercap = 20                # ioat only: log2 of the largest copy per descriptor
//!
//! [[reserved_region]]
//! group = 3
//! start = 0xfed00000
//! end = 0xfed0ffff            # inclusive
//! kind = "reserved"           # reserved | msi | direct | direct-relaxable
//! ```
//! Every error names the key it is about.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use softvfio::iommu::ResvKind;
use thiserror::Error;

/// A configuration problem, naming the key at fault.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The system's reason.
        reason: String,
    },
    /// Not valid TOML for this format (the parser's message).
    #[error("{0}")]
    Syntax(String),
    /// A value the format does not allow.
    #[error("{key}: {reason}")]
    Invalid {
        /// The key at fault (`device[0].bdf`).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
/// The `[iommu]` table: the VT-d model.
pub struct IommuConfig {
    #[serde(default = "default_width")]
    /// IOVA width in bits: 39 (default) or 48.
    pub address_width: u32,
    #[serde(default = "default_iotlb")]
    /// IOTLB entries (default 4096).
    pub iotlb_entries: usize,
    #[serde(default)]
    /// Snoop control: domains can enforce cache coherency.
    pub snoop_control: bool,
}

fn default_width() -> u32 {
    39
}

fn default_iotlb() -> usize {
    4096
}

impl Default for IommuConfig {
    fn default() -> Self {
        Self {
            address_width: default_width(),
            iotlb_entries: default_iotlb(),
            snoop_control: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
/// The `[limits]` table.
pub struct LimitsConfig {
    #[serde(default = "default_entry_limit")]
    /// Mappings per container (the kernel's `dma_entry_limit`, 65535).
    pub dma_entry_limit: u32,
}

fn default_entry_limit() -> u32 {
    softvfio::platform::DEFAULT_DMA_ENTRY_LIMIT
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            dma_entry_limit: default_entry_limit(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
/// The `[dirty]` table.
pub struct DirtyConfig {
    #[serde(default)]
    /// Report precise dirty pages from the IOMMU's dirty bits (opt-in).
    pub precise: bool,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
/// The `[engine]` table.
pub struct EngineConfig {
    #[serde(default)]
    /// Threads that fault in and lock one large mapping (docs/PERFORMANCE.md,
    /// "Pinning in parallel"): 0 follows the machine's cores, 1 pins on the
    /// calling thread only, as Linux does. Applies where the pinning calls
    /// run in the engine's own process (preload mode, an embedding VMM).
    pub pin_threads: u32,
}

/// The most pin threads a configuration may ask for.
pub const MAX_PIN_THREADS: u32 = 1024;

/// Device models a configuration can name.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum DeviceKind {
    #[serde(rename = "edu")]
    /// QEMU's edu behind the IOMMU.
    Edu,
    #[serde(rename = "mdev-edu")]
    /// A mediated edu: no IOMMU, DMA through the pinning API.
    MdevEdu,
    #[serde(rename = "ioat")]
    /// Intel's I/OAT DMA engine (CBDMA 8086:2021) behind the IOMMU.
    Ioat,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
/// A `[[device]]` entry.
pub struct DeviceConfig {
    /// What the device is.
    pub kind: DeviceKind,
    /// PCI address (`0000:00:03.0`) or, for a mediated device, its UUID.
    pub bdf: String,
    /// Its IOMMU group.
    pub group: u32,
    /// How a mediated device reaches memory (`mdev-edu` only): pinned
    /// pages cached until the unmap notification (`pin`, the default, medu's
    /// default) or `vfio_dma_rw` for every access (`rw`, medu's `use_rw=1`).
    #[serde(default)]
    pub dma: Option<MdevDma>,
    /// log2 of the largest copy one I/OAT descriptor may ask for (`ioat`
    /// only; 12 to 24, default 20: 1 MiB).
    #[serde(default)]
    pub xfercap: Option<u8>,
}

/// The `dma` key of a mediated device.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum MdevDma {
    /// `vfio_pin_pages` on first use, pins cached.
    #[serde(rename = "pin")]
    Pin,
    /// `vfio_dma_rw` for every access.
    #[serde(rename = "rw")]
    Rw,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
/// A `[[reserved_region]]` entry.
pub struct ReservedRegionConfig {
    /// The group it applies to.
    pub group: u32,
    /// First IOVA.
    pub start: u64,
    /// Last IOVA (inclusive).
    pub end: u64,
    #[serde(default = "default_resv_kind")]
    /// What it is reserved for (default: reserved).
    pub kind: ResvKind,
}

fn default_resv_kind() -> ResvKind {
    ResvKind::Reserved
}

/// A whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    /// The IOMMU model.
    pub iommu: IommuConfig,
    #[serde(default)]
    /// Limits.
    pub limits: LimitsConfig,
    #[serde(default)]
    /// Dirty tracking.
    pub dirty: DirtyConfig,
    #[serde(default)]
    /// The engine's own resources.
    pub engine: EngineConfig,
    #[serde(default, rename = "device")]
    /// The devices.
    pub devices: Vec<DeviceConfig>,
    #[serde(default, rename = "reserved_region")]
    /// Extra reserved regions.
    pub reserved_regions: Vec<ReservedRegionConfig>,
}

/// The largest configuration file accepted (bounded resources).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// The most devices a configuration may declare.
pub const MAX_DEVICES: usize = 256;

/// A PCI address `DDDD:BB:DD.F`, as requester id `BB << 8 | DD << 3 | F`.
pub fn parse_bdf(s: &str) -> Option<u16> {
    let (domain, rest) = s.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    if domain.len() != 4 || bus.len() != 2 || dev.len() != 2 || func.len() != 1 {
        return None;
    }
    u16::from_str_radix(domain, 16).ok()?;
    let bus = u16::from_str_radix(bus, 16).ok()?;
    let dev = u16::from_str_radix(dev, 16).ok()?;
    let func = u16::from_str_radix(func, 16).ok()?;
    if dev > 0x1f || func > 7 {
        return None;
    }
    Some(bus << 8 | dev << 3 | func)
}

/// A UUID in its canonical 8-4-4-4-12 hex form (the name of an mdev).
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

impl Config {
    /// The platform of the conformance reference: one edu device at
    /// 0000:00:03.0, alone in group 3, behind a 39-bit VT-d.
    pub fn reference() -> Self {
        Config {
            iommu: IommuConfig::default(),
            limits: LimitsConfig::default(),
            dirty: DirtyConfig::default(),
            engine: EngineConfig::default(),
            devices: vec![DeviceConfig {
                kind: DeviceKind::Edu,
                bdf: "0000:00:03.0".into(),
                group: 3,
                dma: None,
                xfercap: None,
            }],
            reserved_regions: Vec::new(),
        }
    }

    /// Reads and checks the file at `path`.
    pub fn from_file(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read(path).map_err(|e| ConfigError::Read {
            path: path.into(),
            reason: e.to_string(),
        })?;
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::Read {
                path: path.into(),
                reason: format!("larger than {MAX_CONFIG_BYTES} bytes"),
            });
        }
        let text = String::from_utf8(text).map_err(|_| ConfigError::Read {
            path: path.into(),
            reason: "not UTF-8".into(),
        })?;
        Self::parse(&text)
    }

    /// Parses and validates a configuration.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::Syntax(format!(
                "configuration larger than {MAX_CONFIG_BYTES} bytes"
            )));
        }
        let cfg: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Syntax(e.to_string().trim().to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the relations the TOML types cannot express (names, groups, widths).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.iommu.address_width, 39 | 48) {
            return Err(invalid(
                "iommu.address_width",
                format!("{} is not supported (39 or 48)", self.iommu.address_width),
            ));
        }
        if self.iommu.iotlb_entries == 0 || self.iommu.iotlb_entries > 1 << 20 {
            return Err(invalid("iommu.iotlb_entries", "must be 1..=1048576"));
        }
        if self.limits.dma_entry_limit == 0 {
            return Err(invalid("limits.dma_entry_limit", "must be at least 1"));
        }
        if self.engine.pin_threads > MAX_PIN_THREADS {
            return Err(invalid(
                "engine.pin_threads",
                format!("at most {MAX_PIN_THREADS} (0: every core)"),
            ));
        }
        if self.devices.is_empty() {
            return Err(invalid("device", "at least one [[device]] is needed"));
        }
        if self.devices.len() > MAX_DEVICES {
            return Err(invalid("device", format!("at most {MAX_DEVICES} devices")));
        }
        let mut names = BTreeSet::new();
        let mut group_kind: BTreeMap<u32, bool> = BTreeMap::new();
        for (i, d) in self.devices.iter().enumerate() {
            let key = format!("device[{i}].bdf");
            if d.xfercap.is_some() && d.kind != DeviceKind::Ioat {
                return Err(invalid(
                    format!("device[{i}].xfercap"),
                    "only an I/OAT device (ioat) takes `xfercap`".to_string(),
                ));
            }
            if let Some(x) = d.xfercap {
                if !(12..=24).contains(&x) {
                    return Err(invalid(
                        format!("device[{i}].xfercap"),
                        format!("{x} is outside 12..=24 (4 KiB to 16 MiB per descriptor)"),
                    ));
                }
            }
            match d.kind {
                DeviceKind::Edu | DeviceKind::Ioat => {
                    if d.dma.is_some() {
                        return Err(invalid(
                            format!("device[{i}].dma"),
                            "only a mediated device (mdev-edu) takes `dma`".to_string(),
                        ));
                    }
                    if parse_bdf(&d.bdf).is_none() {
                        return Err(invalid(
                            key,
                            format!("{:?} is not a PCI address like 0000:00:03.0", d.bdf),
                        ));
                    }
                }
                DeviceKind::MdevEdu => {
                    if !is_uuid(&d.bdf) {
                        return Err(invalid(
                            key,
                            format!(
                                "{:?} is not a UUID (a mediated device is named by one)",
                                d.bdf
                            ),
                        ));
                    }
                }
            }
            if !names.insert(d.bdf.to_ascii_lowercase()) {
                return Err(invalid(key, format!("{:?} is declared twice", d.bdf)));
            }
            let emulated = d.kind == DeviceKind::MdevEdu;
            if let Some(prev) = group_kind.insert(d.group, emulated) {
                if prev != emulated {
                    return Err(invalid(
                        format!("device[{i}].group"),
                        format!("group {} mixes mediated and IOMMU-backed devices", d.group),
                    ));
                }
            }
        }
        for (i, r) in self.reserved_regions.iter().enumerate() {
            if r.start > r.end {
                return Err(invalid(
                    format!("reserved_region[{i}].end"),
                    "end is below start",
                ));
            }
            if r.start % 4096 != 0 || r.end % 4096 != 4095 {
                return Err(invalid(
                    format!("reserved_region[{i}].start"),
                    "region must cover whole 4 KiB pages (start aligned, end = aligned - 1)",
                ));
            }
            match group_kind.get(&r.group) {
                None => {
                    return Err(invalid(
                        format!("reserved_region[{i}].group"),
                        format!("no device is in group {}", r.group),
                    ))
                }
                Some(true) => {
                    return Err(invalid(
                        format!("reserved_region[{i}].group"),
                        format!("group {} is a mediated-device group (no IOMMU)", r.group),
                    ))
                }
                Some(false) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_example_parses() {
        let c = Config::parse(
            r#"
[iommu]
address_width = 48
[limits]
dma_entry_limit = 8
[[device]]
kind = "edu"
bdf = "0000:00:03.0"
group = 3
[[device]]
kind = "mdev-edu"
bdf = "c0ffee00-0000-4000-8000-000000000001"
group = 10
[[reserved_region]]
group = 3
start = 0x10000000
end = 0x1fffffff
"#,
        )
        .unwrap();
        assert_eq!(c.iommu.address_width, 48);
        assert_eq!(c.limits.dma_entry_limit, 8);
        assert_eq!(c.devices.len(), 2);
        assert_eq!(c.devices[1].kind, DeviceKind::MdevEdu);
        assert_eq!(c.reserved_regions[0].kind, ResvKind::Reserved);
        assert_eq!(c.reserved_regions[0].end, 0x1fff_ffff);
    }

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key() {
        let dev = "[[device]]\nkind = \"edu\"\nbdf = \"0000:00:03.0\"\ngroup = 3\n";
        assert_eq!(
            err(&format!("[iommu]\naddress_width = 40\n{dev}")),
            "iommu.address_width: 40 is not supported (39 or 48)"
        );
        assert!(err(&format!("[iommu]\nwidth = 39\n{dev}")).contains("unknown field `width`"));
        assert!(
            err("[[device]]\nkind = \"gpu\"\nbdf = \"0000:00:03.0\"\ngroup = 3\n").contains("kind")
        );
        assert_eq!(
            err("[[device]]\nkind = \"edu\"\nbdf = \"00:03.0\"\ngroup = 3\n"),
            "device[0].bdf: \"00:03.0\" is not a PCI address like 0000:00:03.0"
        );
        assert_eq!(
            err("[[device]]\nkind = \"mdev-edu\"\nbdf = \"0000:00:03.0\"\ngroup = 3\n"),
            "device[0].bdf: \"0000:00:03.0\" is not a UUID (a mediated device is named by one)"
        );
        assert_eq!(
            err(&format!(
                "{dev}[[reserved_region]]\ngroup = 4\nstart = 0\nend = 0xfff\n"
            )),
            "reserved_region[0].group: no device is in group 4"
        );
        assert_eq!(
            err(&format!(
                "{dev}[[reserved_region]]\ngroup = 3\nstart = 0x2000\nend = 0xfff\n"
            )),
            "reserved_region[0].end: end is below start"
        );
        assert_eq!(
            err(&format!("[limits]\ndma_entry_limit = 0\n{dev}")),
            "limits.dma_entry_limit: must be at least 1"
        );
        assert_eq!(err(""), "device: at least one [[device]] is needed");
        assert!(err(&format!("{dev}{dev}")).contains("declared twice"));
    }

    #[test]
    fn engine_pin_threads_key() {
        let dev = "[[device]]\nkind = \"edu\"\nbdf = \"0000:00:03.0\"\ngroup = 3\n";
        assert_eq!(Config::parse(dev).unwrap().engine.pin_threads, 0);
        let c = Config::parse(&format!("[engine]\npin_threads = 1\n{dev}")).unwrap();
        assert_eq!(c.engine.pin_threads, 1);
        assert_eq!(
            err(&format!("[engine]\npin_threads = 1025\n{dev}")),
            "engine.pin_threads: at most 1024 (0: every core)"
        );
        assert!(err(&format!("[engine]\npin_threads = -1\n{dev}")).contains("pin_threads"));
        assert!(err(&format!("[engine]\nthreads = 2\n{dev}")).contains("unknown field"));
    }

    #[test]
    fn ioat_device_and_its_xfercap_key() {
        let ioat = |extra: &str| {
            format!("[[device]]\nkind = \"ioat\"\nbdf = \"0000:00:04.0\"\ngroup = 4\n{extra}")
        };
        let c = Config::parse(&ioat("xfercap = 16\n")).unwrap();
        assert_eq!(c.devices[0].kind, DeviceKind::Ioat);
        assert_eq!(c.devices[0].xfercap, Some(16));
        assert_eq!(
            err(&ioat("xfercap = 30\n")),
            "device[0].xfercap: 30 is outside 12..=24 (4 KiB to 16 MiB per descriptor)"
        );
        assert_eq!(
            err(&ioat("dma = \"rw\"\n")),
            "device[0].dma: only a mediated device (mdev-edu) takes `dma`"
        );
        assert_eq!(
            err("[[device]]\nkind = \"edu\"\nbdf = \"0000:00:03.0\"\ngroup = 3\nxfercap = 16\n"),
            "device[0].xfercap: only an I/OAT device (ioat) takes `xfercap`"
        );
        assert_eq!(
            err("[[device]]\nkind = \"ioat\"\nbdf = \"c0ffee00-0000-4000-8000-000000000001\"\ngroup = 3\n"),
            "device[0].bdf: \"c0ffee00-0000-4000-8000-000000000001\" is not a PCI address like 0000:00:03.0"
        );
    }

    #[test]
    fn mdev_dma_mode_key() {
        let uuid = "c0ffee00-0000-4000-8000-000000000001";
        let mdev = |dma: &str| {
            format!("[[device]]\nkind = \"mdev-edu\"\nbdf = \"{uuid}\"\ngroup = 10\n{dma}")
        };
        let c = Config::parse(&mdev("dma = \"rw\"\n")).unwrap();
        assert_eq!(c.devices[0].dma, Some(MdevDma::Rw));
        let c = Config::parse(&mdev("")).unwrap();
        assert_eq!(c.devices[0].dma, None);
        let built = crate::build(&Config::parse(&mdev("dma = \"rw\"\n")).unwrap()).unwrap();
        let m = built.devices[0].mdev.as_ref().unwrap();
        assert_eq!(m.options().mode, softvfio_devices::MdevDmaMode::Rw);
        assert!(err(&mdev("dma = \"dma\"\n")).contains("dma"));
        assert_eq!(
            err("[[device]]\nkind = \"edu\"\nbdf = \"0000:00:03.0\"\ngroup = 3\ndma = \"rw\"\n"),
            "device[0].dma: only a mediated device (mdev-edu) takes `dma`"
        );
    }

    #[test]
    fn bdf_and_uuid_parsing() {
        assert_eq!(parse_bdf("0000:00:03.0"), Some(0x18));
        assert_eq!(parse_bdf("0000:01:1f.7"), Some(0x1ff));
        assert_eq!(parse_bdf("0000:00:20.0"), None);
        assert_eq!(parse_bdf("0000:00:03"), None);
        assert!(is_uuid("c0ffee00-0000-4000-8000-000000000001"));
        assert!(!is_uuid("c0ffee00-0000-4000-8000-00000000000"));
    }

    #[test]
    fn reference_is_valid() {
        Config::reference().validate().unwrap();
    }
}
