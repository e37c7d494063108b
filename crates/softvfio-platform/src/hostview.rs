//! The host's view of the platform in sysfs: what Linux shows under `/sys`
//! for every platform device bound to `vfio-pci` (or, for a mediated
//! device, created on an mdev parent), its IOMMU group, the VFIO modules
//! and the VT-d unit.
//!
//! [`HostView::of`] is a pure function of the built platform: it returns a
//! tree description (directories, files with their contents, symbolic
//! links) that [`mount`] lays over the host's `/sys` in the program's own
//! mount namespace. Layouts and file formats are the ones Linux 6.1 printed
//! for QEMU's edu bound to vfio-pci behind VT-d and for the `medu` mdev
//! (`tests-oracle/kernel-6.1-sysfs*.txt`, asserted in the tests below).
//!
//! Invariants:
//! - every path is absolute, under `/sys`, without `.`/`..` components, and
//!   every ancestor of a node is a [`Node::Dir`] of the view;
//! - symbolic links are relative, as sysfs makes them, so they resolve the
//!   same wherever the tree is reached from;
//! - a directory listed in [`HostView::replaces`] hides the host directory
//!   of the same path entirely (a platform device whose address a host
//!   device also has); every other directory of the view is merged with the
//!   host's (host entries stay, the view's entries win on a name clash).

// The mount namespace setup is the crate's only system-call module.
#[allow(unsafe_code)]
pub mod mount;

use std::collections::{BTreeMap, BTreeSet};

use softvfio::iommu::{ResvKind, ResvRegion};

use crate::build::BuiltPlatform;

/// Major number of `/dev/vfio/devices/vfioN` in `vfio-dev/vfioN/dev`: the
/// dynamic major Linux 6.12 gave the VFIO cdev in the oracle VM.
pub const VFIO_CDEV_MAJOR: u32 = 250;
/// Major number of the group nodes `/dev/vfio/<group>`: Linux allocates it
/// with `alloc_chrdev_region` at VFIO's init, the next dynamic major down
/// from the cdev's; 6.12 gave 251 in the oracle VM
/// (tests-oracle/kernel-6.12-compat-fd.txt, `stx_group_fstat`).
pub const VFIO_GROUP_MAJOR: u32 = 251;
/// `MISC_MAJOR`: `/dev/vfio/vfio` and `/dev/iommu` are misc devices.
pub const MISC_MAJOR: u32 = 10;
/// `VFIO_MINOR`: the container's fixed misc minor (`/dev/vfio/vfio` is
/// 10:196 on every Linux).
pub const VFIO_CONTAINER_MINOR: u32 = 196;
/// `/dev/iommu`'s misc minor: iommufd registers `MISC_DYNAMIC_MINOR`, and
/// the first dynamic misc minor of Linux 6.12 is 257 (what the oracle VM
/// gave, `stx_iommufd_fstat`).
pub const IOMMUFD_MINOR: u32 = 257;

/// The device number `(major, minor)` and permission bits of the emulated
/// `/dev` node `path` of `platform`: `/dev/vfio/vfio` (10:196, 0666),
/// `/dev/iommu` (10:257, 0660), a group's `/dev/vfio/<id>` (251:index,
/// 0600, the index the group has in id order, as Linux's group minors are
/// handed out in the order groups appear) and a device cdev
/// `/dev/vfio/devices/vfioN` (250:N, 0600); the modes are Linux 6.12's
/// (tests-oracle/kernel-6.12-compat-fd.txt). `None`: not a node the
/// platform serves.
pub fn dev_node(platform: &softvfio::platform::Platform, path: &str) -> Option<(u32, u32, u32)> {
    match path {
        "/dev/vfio/vfio" => return Some((MISC_MAJOR, VFIO_CONTAINER_MINOR, 0o666)),
        "/dev/iommu" => return Some((MISC_MAJOR, IOMMUFD_MINOR, 0o660)),
        _ => {}
    }
    // The kernel names nodes by decimal numbers: digits only, no leading
    // zero.
    let number = |digits: &str| -> Option<u32> {
        if digits.is_empty()
            || !digits.bytes().all(|c| c.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return None;
        }
        digits.parse().ok()
    };
    if let Some(n) = path.strip_prefix("/dev/vfio/devices/vfio").and_then(number) {
        let count = softvfio::iommufd::cdev::cdev_devices(platform).len();
        return ((n as usize) < count).then_some((VFIO_CDEV_MAJOR, n, 0o600));
    }
    let id = path.strip_prefix("/dev/vfio/").and_then(number)?;
    group_node(platform, id).map(|(major, minor)| (major, minor, 0o600))
}

/// The device number of group `id`'s node `/dev/vfio/<id>`.
pub fn group_node(platform: &softvfio::platform::Platform, id: u32) -> Option<(u32, u32)> {
    let index = platform.groups.keys().position(|&g| g == id)?;
    Some((VFIO_GROUP_MAJOR, u32::try_from(index).ok()?))
}

/// `stx_attributes_mask` of a devtmpfs node, as Linux 6.12 says for a VFIO
/// node (tests-oracle/kernel-6.12-compat-fd.txt: immutable, append,
/// nodump, automount, mount root, verity, dax).
pub const DEVTMPFS_STATX_ATTRIBUTES: u64 = 0x30_3070;

/// `stx_mask` of a devtmpfs node's `statx` asked with `asked`, as Linux
/// 6.12 answers: the basic fields, the mount id (`STATX_MNT_ID_UNIQUE`
/// when asked, else `STATX_MNT_ID`), the birth time when asked.
pub fn devtmpfs_statx_mask(asked: u32) -> u32 {
    const BASIC_STATS: u32 = 0x7ff;
    const BTIME: u32 = 0x800;
    const MNT_ID: u32 = 0x1000;
    const MNT_ID_UNIQUE: u32 = 0x4000;
    let mnt = if asked & MNT_ID_UNIQUE != 0 {
        MNT_ID_UNIQUE
    } else {
        MNT_ID
    };
    BASIC_STATS | mnt | (asked & BTIME)
}

/// The permission bits of the node `major:minor` (as [`dev_node`]).
pub fn node_perm(major: u32, minor: u32) -> u32 {
    match (major, minor) {
        (MISC_MAJOR, VFIO_CONTAINER_MINOR) => 0o666,
        (MISC_MAJOR, IOMMUFD_MINOR) => 0o660,
        _ => 0o600,
    }
}
/// The MMIO base QEMU's VT-d unit sits at (`intel-iommu/address`).
pub const DMAR_ADDRESS: u64 = 0xfed9_0000;
/// Name of the mdev parent and its driver (as the `medu` kernel module).
pub const MDEV_PARENT: &str = "medu";
/// The one mdev type of the parent.
pub const MDEV_TYPE: &str = "medu-1";

/// One node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory (mode 0755).
    Dir,
    /// A regular file with its permission bits and contents.
    File {
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A symbolic link and its (relative) target.
    Link(String),
}

/// The generated sysfs tree of a platform.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    nodes: BTreeMap<String, Node>,
    replaced: BTreeSet<String>,
    /// `config` file paths (every alias a program may open) -> device name.
    config: BTreeMap<String, String>,
}

/// `0x%04x\n`, as sysfs prints PCI ids.
fn hex4(v: u16) -> Vec<u8> {
    format!("0x{v:04x}\n").into_bytes()
}

fn text(s: impl Into<String>) -> Vec<u8> {
    s.into().into_bytes()
}

/// The kernel's name of a reserved-region type (`iommu_group_resv_type_string`).
pub fn resv_kind_name(kind: ResvKind) -> &'static str {
    match kind {
        ResvKind::Direct => "direct",
        ResvKind::DirectRelaxable => "direct-relaxable",
        ResvKind::Reserved => "reserved",
        ResvKind::Msi => "msi",
        ResvKind::SwMsi => "msi",
    }
}

/// `reserved_regions` of a group: one `0x%016llx 0x%016llx %s` line per
/// region, sorted by start, as `iommu_group_show_resv_regions` prints them.
pub fn reserved_regions_text(regions: &[ResvRegion]) -> String {
    let mut sorted = regions.to_vec();
    sorted.sort_by_key(|r| (r.start, r.end));
    sorted
        .iter()
        .map(|r| {
            format!(
                "0x{:016x} 0x{:016x} {}\n",
                r.start,
                r.end,
                resv_kind_name(r.kind)
            )
        })
        .collect()
}

/// VT-d capability register of the unit (VT-d spec 11.4.2), with the field
/// values QEMU's `intel-iommu,caching-mode=on` reports, so that the
/// reference platform reads exactly as the oracle VM's `dmar0`.
pub fn vtd_cap(address_width: u32, super_2m: bool, super_1g: bool) -> u64 {
    let nd = 6u64; // 65536 domain ids
    let cm = 1u64 << 7; // caching mode
                        // SAGAW: bit 1 = 39-bit (3-level), bit 2 = 48-bit (4-level).
    let sagaw: u64 = if address_width >= 48 { 0b110 } else { 0b010 };
    let mgaw = u64::from(address_width.saturating_sub(1)) & 0x3f;
    let fro = 0x22u64; // fault recording registers at 0x220
    let sllps = u64::from(super_2m) | u64::from(super_1g) << 1;
    let psi = 1u64 << 39; // page-selective invalidation
    let mamv = 18u64; // max address mask value
    let dwd_drd = 0b11u64 << 54; // write and read draining
    nd | cm | sagaw << 8 | mgaw << 16 | fro << 24 | sllps << 34 | psi | mamv << 48 | dwd_drd
}

/// VT-d extended capability register (VT-d spec 11.4.3): queued
/// invalidation, interrupt remapping, pass-through, IOTLB registers at
/// 0xf0, maximum handle mask 15; snoop control when the unit has it.
pub fn vtd_ecap(snoop_control: bool) -> u64 {
    let qi = 1u64 << 1;
    let ir = 1u64 << 3;
    let pt = 1u64 << 6;
    let sc = u64::from(snoop_control) << 7;
    let iro = 0xfu64 << 8;
    let mhmv = 0xfu64 << 20;
    qi | ir | pt | sc | iro | mhmv
}

/// The directory a PCI device sits in: the root bus `pciDDDD:BB`.
fn pci_root(bdf: &str) -> String {
    // Configuration validation makes bdf "DDDD:BB:DD.F".
    format!("pci{}", bdf.get(..7).unwrap_or(bdf))
}

impl HostView {
    /// Every node, by path, in path order (parents before children).
    pub fn nodes(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(p, n)| (p.as_str(), n))
    }

    /// The node at `path`, if the tree has one.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// The contents of a file node.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        match self.nodes.get(path)? {
            Node::File { data, .. } => Some(data),
            _ => None,
        }
    }

    /// The target of a link node.
    pub fn link(&self, path: &str) -> Option<&str> {
        match self.nodes.get(path)? {
            Node::Link(t) => Some(t),
            _ => None,
        }
    }

    /// Does this directory hide the host's directory of the same path?
    pub fn replaces(&self, dir: &str) -> bool {
        self.replaced.contains(dir)
    }

    /// The names of the direct children of `dir`.
    pub fn children<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a str, &'a Node)> + 'a {
        let prefix = format!("{dir}/");
        self.nodes
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .filter_map(move |(p, n)| {
                let name = &p[dir.len() + 1..];
                (!name.contains('/')).then_some((name, n))
            })
    }

    /// The platform device whose `config` file `path` names (a lexically
    /// normalized absolute path), if any.
    pub fn config_device(&self, path: &str) -> Option<&str> {
        self.config.get(path).map(String::as_str)
    }

    fn add(&mut self, path: &str, node: Node) {
        // Ancestors first (the invariant: every ancestor is a Dir).
        let mut end = 0;
        while let Some(i) = path[end + 1..].find('/') {
            end += i + 1;
            self.nodes
                .entry(path[..end].to_string())
                .or_insert(Node::Dir);
        }
        self.nodes.insert(path.to_string(), node);
    }

    fn put_dir(&mut self, path: &str) {
        self.add(path, Node::Dir);
    }

    fn put_file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.add(path, Node::File { mode, data });
    }

    fn put_link(&mut self, path: &str, target: &str) {
        self.add(path, Node::Link(target.to_string()));
    }

    /// The tree Linux shows for `built`.
    pub fn of(built: &BuiltPlatform) -> HostView {
        let mut v = HostView::default();
        let mut pci_devices = Vec::new();
        // vfioN numbers devices in platform order, as registration order
        // numbers them in Linux.
        for (vfio_index, d) in (0u32..).zip(&built.devices) {
            if d.mdev.is_some() {
                v.mdev_device(d.name.as_str(), d.group, vfio_index);
            } else {
                v.pci_device(built, d.name.as_str(), d.group, vfio_index, d);
                pci_devices.push(d.name.clone());
            }
        }
        for (id, group) in &built.platform.groups {
            let g = format!("/sys/kernel/iommu_groups/{id}");
            v.put_dir(&format!("{g}/devices"));
            // A host group of the same number is not the program's.
            v.replaced.insert(g.clone());
            for dev in &group.devices {
                let target = if group.is_emulated() {
                    format!(
                        "../../../../devices/virtual/{MDEV_PARENT}/{MDEV_PARENT}/{}",
                        dev.name
                    )
                } else {
                    format!("../../../../devices/{}/{}", pci_root(&dev.name), dev.name)
                };
                v.put_link(&format!("{g}/devices/{}", dev.name), &target);
            }
            let kind = if group.is_emulated() {
                "unknown"
            } else {
                "DMA"
            };
            v.put_file(&format!("{g}/type"), 0o644, text(format!("{kind}\n")));
            v.put_file(
                &format!("{g}/reserved_regions"),
                0o444,
                text(reserved_regions_text(&group.reserved_regions())),
            );
            if group.is_emulated() {
                // vfio names the iommu_group it allocates for emulated devices.
                v.put_file(&format!("{g}/name"), 0o444, text("vfio-noiommu\n"));
            }
        }
        v.modules(built, !pci_devices.is_empty());
        v.dmar(built, &pci_devices);
        v
    }

    fn pci_device(
        &mut self,
        built: &BuiltPlatform,
        bdf: &str,
        group: u32,
        vfio_index: u32,
        d: &crate::build::BuiltDevice,
    ) {
        let root = pci_root(bdf);
        let dir = format!("/sys/devices/{root}/{bdf}");
        self.put_dir(&dir);
        self.replaced.insert(dir.clone());
        let cfg = d.config_bytes();
        let b = |i: usize| cfg.get(i).copied().unwrap_or(0);
        let w16 = |i: usize| u16::from_le_bytes([b(i), b(i + 1)]);
        let (vendor, device) = (w16(0x00), w16(0x02));
        let (sub_vendor, sub_device) = (w16(0x2c), w16(0x2e));
        let class = u32::from_le_bytes([b(0x09), b(0x0a), b(0x0b), 0]);
        let f = |name: &str| format!("{dir}/{name}");
        self.put_file(&f("vendor"), 0o444, hex4(vendor));
        self.put_file(&f("device"), 0o444, hex4(device));
        self.put_file(&f("subsystem_vendor"), 0o444, hex4(sub_vendor));
        self.put_file(&f("subsystem_device"), 0o444, hex4(sub_device));
        self.put_file(&f("class"), 0o444, text(format!("0x{class:06x}\n")));
        self.put_file(&f("revision"), 0o444, text(format!("0x{:02x}\n", b(0x08))));
        self.put_file(&f("config"), 0o644, cfg.clone());
        // resource: start, end, flags of the 6 BARs, the ROM and the 6
        // bridge windows. BAR0 is MMIO (IORESOURCE_MEM |
        // IORESOURCE_SIZEALIGN, and IORESOURCE_MEM_64 for a 64-bit BAR,
        // whose upper half's line stays empty); its size is the region's.
        let bar0_low = u32::from_le_bytes([b(0x10), b(0x11), b(0x12), b(0x13)]);
        let mem64 = bar0_low & 0x4 != 0;
        let bar0 = if mem64 {
            u64::from(bar0_low & !0xf)
                | (u64::from(u32::from_le_bytes([b(0x14), b(0x15), b(0x16), b(0x17)])) << 32)
        } else {
            u64::from(bar0_low & !0xf)
        };
        let bar0_size = d
            .region_size(vfio_bindings::bindings::vfio::VFIO_PCI_BAR0_REGION_INDEX)
            .max(1);
        let flags: u64 = if mem64 { 0x140200 } else { 0x40200 };
        let mut resource = format!(
            "0x{:016x} 0x{:016x} 0x{:016x}\n",
            bar0,
            bar0 + bar0_size - 1,
            flags
        );
        for _ in 1..13 {
            resource.push_str(&format!("0x{0:016x} 0x{0:016x} 0x{0:016x}\n", 0));
        }
        self.put_file(&f("resource"), 0o444, text(resource));
        self.put_file(&f("irq"), 0o444, text(format!("{}\n", b(0x3c))));
        self.put_file(&f("numa_node"), 0o644, text("-1\n"));
        let modalias = format!(
            "pci:v{:08X}d{:08X}sv{:08X}sd{:08X}bc{:02X}sc{:02X}i{:02X}",
            vendor,
            device,
            sub_vendor,
            sub_device,
            class >> 16,
            (class >> 8) & 0xff,
            class & 0xff
        );
        self.put_file(&f("modalias"), 0o444, text(format!("{modalias}\n")));
        self.put_file(
            &f("uevent"),
            0o644,
            text(format!(
                "DRIVER=vfio-pci\nPCI_CLASS={class:X}\nPCI_ID={vendor:04X}:{device:04X}\nPCI_SUBSYS_ID={sub_vendor:04X}:{sub_device:04X}\nPCI_SLOT_NAME={bdf}\nMODALIAS={modalias}\n"
            )),
        );
        self.put_file(&f("driver_override"), 0o644, text("(null)\n"));
        self.put_file(&f("enable"), 0o644, text("0\n"));
        self.put_file(&f("msi_bus"), 0o644, text("1\n"));
        self.put_file(&f("dma_mask_bits"), 0o444, text("32\n"));
        self.put_file(&f("consistent_dma_mask_bits"), 0o444, text("32\n"));
        self.put_file(&f("ari_enabled"), 0o444, text("0\n"));
        self.put_file(&f("broken_parity_status"), 0o644, text("0\n"));
        self.put_file(&f("power_state"), 0o444, text("D0\n"));
        self.put_link(&f("driver"), "../../../bus/pci/drivers/vfio-pci");
        self.put_link(
            &f("iommu_group"),
            &format!("../../../kernel/iommu_groups/{group}"),
        );
        self.put_link(
            &f("iommu"),
            &format!("../../virtual/iommu/{}", built.iommu.name()),
        );
        self.put_link(&f("subsystem"), "../../../bus/pci");
        self.vfio_dev(&dir, bdf, vfio_index, "../../../../../class/vfio-dev");
        self.put_link(
            &format!("/sys/bus/pci/devices/{bdf}"),
            &format!("../../../devices/{root}/{bdf}"),
        );
        self.put_link(
            &format!("/sys/bus/pci/drivers/vfio-pci/{bdf}"),
            &format!("../../../../devices/{root}/{bdf}"),
        );
        for alias in [
            format!("{dir}/config"),
            format!("/sys/bus/pci/devices/{bdf}/config"),
            format!("/sys/bus/pci/drivers/vfio-pci/{bdf}/config"),
            format!("/sys/kernel/iommu_groups/{group}/devices/{bdf}/config"),
        ] {
            self.config.insert(alias, bdf.to_string());
        }
    }

    /// `vfio-dev/vfioN` of a device directory (the VFIO cdev's sysfs node).
    fn vfio_dev(&mut self, dev_dir: &str, name: &str, index: u32, class_link: &str) {
        let d = format!("{dev_dir}/vfio-dev/vfio{index}");
        self.put_link(&format!("{d}/device"), &format!("../../../{name}"));
        self.put_link(&format!("{d}/subsystem"), class_link);
        self.put_file(
            &format!("{d}/dev"),
            0o444,
            text(format!("{VFIO_CDEV_MAJOR}:{index}\n")),
        );
        self.put_file(
            &format!("{d}/uevent"),
            0o644,
            text(format!(
                "MAJOR={VFIO_CDEV_MAJOR}\nMINOR={index}\nDEVNAME=vfio/devices/vfio{index}\n"
            )),
        );
    }

    fn mdev_device(&mut self, uuid: &str, group: u32, vfio_index: u32) {
        let parent = format!("/sys/devices/virtual/{MDEV_PARENT}/{MDEV_PARENT}");
        let dir = format!("{parent}/{uuid}");
        self.put_dir(&dir);
        self.replaced.insert(dir.clone());
        let f = |name: &str| format!("{dir}/{name}");
        self.put_link(
            &f("driver"),
            &format!("../../../../../bus/mdev/drivers/{MDEV_PARENT}"),
        );
        self.put_link(
            &f("iommu_group"),
            &format!("../../../../../kernel/iommu_groups/{group}"),
        );
        self.put_link(
            &f("mdev_type"),
            &format!("../mdev_supported_types/{MDEV_TYPE}"),
        );
        self.put_link(&f("subsystem"), "../../../../../bus/mdev");
        self.put_file(&f("uevent"), 0o644, text(format!("DRIVER={MDEV_PARENT}\n")));
        self.put_file(&f("remove"), 0o200, Vec::new());
        self.vfio_dev(
            &dir,
            uuid,
            vfio_index,
            "../../../../../../../class/vfio-dev",
        );
        // The parent and its one type.
        let t = format!("{parent}/mdev_supported_types/{MDEV_TYPE}");
        self.put_file(
            &format!("{t}/name"),
            0o444,
            text(format!("{MDEV_PARENT}\n")),
        );
        self.put_file(&format!("{t}/device_api"), 0o444, text("vfio-pci\n"));
        // The platform's mdevs are fixed: no more can be created.
        self.put_file(&format!("{t}/available_instances"), 0o444, text("0\n"));
        self.put_file(&format!("{t}/create"), 0o200, Vec::new());
        self.put_link(&format!("{t}/devices/{uuid}"), &format!("../../../{uuid}"));
        self.put_link(
            &format!("{parent}/subsystem"),
            &format!("../../../../class/{MDEV_PARENT}"),
        );
        self.put_file(&format!("{parent}/uevent"), 0o644, Vec::new());
        self.put_link(
            &format!("/sys/class/mdev_bus/{MDEV_PARENT}"),
            &format!("../../devices/virtual/{MDEV_PARENT}/{MDEV_PARENT}"),
        );
        self.put_link(
            &format!("/sys/bus/mdev/devices/{uuid}"),
            &format!("../../../devices/virtual/{MDEV_PARENT}/{MDEV_PARENT}/{uuid}"),
        );
        self.put_link(
            &format!("/sys/bus/mdev/drivers/{MDEV_PARENT}/{uuid}"),
            &format!("../../../../devices/virtual/{MDEV_PARENT}/{MDEV_PARENT}/{uuid}"),
        );
    }

    fn modules(&mut self, built: &BuiltPlatform, has_pci: bool) {
        let live = || text("live\n");
        for m in ["vfio", "vfio_iommu_type1", "vfio_pci_core", "vfio_pci"] {
            self.put_file(&format!("/sys/module/{m}/initstate"), 0o444, live());
        }
        let p = "/sys/module/vfio_iommu_type1/parameters";
        self.put_file(&format!("{p}/allow_unsafe_interrupts"), 0o644, text("N\n"));
        self.put_file(&format!("{p}/disable_hugepages"), 0o644, text("N\n"));
        self.put_file(
            &format!("{p}/dma_entry_limit"),
            0o644,
            text(format!("{}\n", built.platform.dma_entry_limit)),
        );
        let p = "/sys/module/vfio_pci/parameters";
        for (name, mode) in [
            ("disable_denylist", 0o444),
            ("disable_idle_d3", 0o644),
            ("disable_vga", 0o444),
            ("enable_sriov", 0o644),
            ("nointxmask", 0o644),
        ] {
            self.put_file(&format!("{p}/{name}"), mode, text("N\n"));
        }
        self.put_link(
            "/sys/module/vfio_pci/drivers/pci:vfio-pci",
            "../../../bus/pci/drivers/vfio-pci",
        );
        let drv = "/sys/bus/pci/drivers/vfio-pci";
        if has_pci {
            for name in ["bind", "new_id", "remove_id", "uevent", "unbind"] {
                self.put_file(&format!("{drv}/{name}"), 0o200, Vec::new());
            }
            self.put_link(&format!("{drv}/module"), "../../../../module/vfio_pci");
        } else {
            self.put_dir(drv);
        }
    }

    fn dmar(&mut self, built: &BuiltPlatform, pci_devices: &[String]) {
        let cfg = built.iommu.config();
        let name = built.iommu.name();
        let width = match cfg.address_width {
            soft_iommu::AddressWidth::Bits48 => 48,
            _ => 39,
        };
        let d = format!("/sys/devices/virtual/iommu/{name}");
        let i = format!("{d}/intel-iommu");
        self.put_file(
            &format!("{i}/address"),
            0o444,
            text(format!("{DMAR_ADDRESS:x}\n")),
        );
        self.put_file(
            &format!("{i}/cap"),
            0o444,
            text(format!(
                "{:x}\n",
                vtd_cap(width, cfg.super_page_2m, cfg.super_page_1g)
            )),
        );
        self.put_file(
            &format!("{i}/ecap"),
            0o444,
            text(format!("{:x}\n", vtd_ecap(cfg.snoop_control))),
        );
        self.put_file(&format!("{i}/version"), 0o444, text("1:0\n"));
        self.put_file(&format!("{i}/domains_supported"), 0o444, text("65536\n"));
        self.put_dir(&format!("{d}/devices"));
        for bdf in pci_devices {
            self.put_link(
                &format!("{d}/devices/{bdf}"),
                &format!("../../../../{}/{bdf}", pci_root(bdf)),
            );
        }
        self.put_link(&format!("{d}/subsystem"), "../../../../class/iommu");
        self.put_file(&format!("{d}/uevent"), 0o644, Vec::new());
        self.put_link(
            &format!("/sys/class/iommu/{name}"),
            &format!("../../devices/virtual/iommu/{name}"),
        );
    }
}

#[cfg(test)]
mod tests;
