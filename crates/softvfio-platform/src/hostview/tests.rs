//! The generated tree against what Linux printed (`tests-oracle/`).

use super::*;
use crate::config::Config;
use std::collections::HashMap;

const ORACLE: &str = include_str!("../../../../tests-oracle/kernel-6.1-sysfs.txt");
const ORACLE_MDEV: &str = include_str!("../../../../tests-oracle/kernel-6.1-sysfs-mdev.txt");
const ORACLE_612: &str = include_str!("../../../../tests-oracle/kernel-6.12-sysfs.txt");

/// The recorded oracle: `cat` outputs by path, `ls` listings by directory
/// (name -> (mode string, link target)), `readlink`/`realpath` answers.
struct Oracle {
    cats: HashMap<String, String>,
    lists: HashMap<String, HashMap<String, (String, Option<String>)>>,
    od: Vec<u8>,
}

fn parse(text: &str) -> Oracle {
    let mut cats = HashMap::new();
    let mut lists: HashMap<String, HashMap<String, (String, Option<String>)>> = HashMap::new();
    let mut od = Vec::new();
    let mut section: Option<String> = None;
    let mut body = String::new();
    let mut flush = |section: &Option<String>, body: &str, od: &mut Vec<u8>| {
        let Some(s) = section else { return };
        if let Some(group) = s.strip_prefix("resv ") {
            // reserved_regions, then type, of every group.
            let mut lines: Vec<&str> = body.lines().collect();
            lines.pop();
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            cats.insert(format!("{group}/reserved_regions"), text);
        } else if let Some(p) = s.strip_prefix("cat ") {
            if let Some(content) = body.strip_suffix("[rc=0]\n") {
                cats.insert(p.to_string(), content.to_string());
            }
        } else if let Some(d) = s.strip_prefix("ls ") {
            let mut entries = HashMap::new();
            for line in body.lines() {
                let Some((mode, rest)) = line.split_once(' ') else {
                    continue;
                };
                let (name, target) = match rest.split_once(" -> ") {
                    Some((n, t)) => (n.to_string(), Some(t.to_string())),
                    None => (rest.to_string(), None),
                };
                if name != "." && name != ".." {
                    entries.insert(name, (mode.to_string(), target));
                }
            }
            lists.insert(d.trim_end_matches('/').to_string(), entries);
        } else if s == "od config" {
            for b in body.split_whitespace() {
                if let Ok(v) = u8::from_str_radix(b, 16) {
                    od.push(v);
                }
            }
        }
    };
    for line in text.lines() {
        if let Some(s) = line.strip_prefix("--- ") {
            flush(&section, &body, &mut od);
            section = Some(s.to_string());
            body.clear();
        } else if line.starts_with("=== ") || line.starts_with("dmesg: ") {
            flush(&section, &body, &mut od);
            section = None;
            body.clear();
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    Oracle { cats, lists, od }
}

/// `-r--r--r--` for a node of the view.
fn mode_string(n: &Node) -> String {
    let (kind, mode) = match n {
        Node::Dir => ('d', 0o755),
        Node::File { mode, .. } => ('-', *mode),
        Node::Link(_) => ('l', 0o777),
    };
    let mut s = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn text_of(v: &HostView, path: &str) -> String {
    String::from_utf8(
        v.file(path)
            .unwrap_or_else(|| panic!("no file {path}"))
            .to_vec(),
    )
    .unwrap()
}

/// Every entry the view has in `dir` is in the kernel's listing of
/// `oracle_dir` with the same mode and link target; returns how many.
fn assert_listing_matches(o: &Oracle, v: &HostView, dir: &str, oracle_dir: &str) -> usize {
    let listing = o
        .lists
        .get(oracle_dir)
        .unwrap_or_else(|| panic!("oracle has no listing of {oracle_dir}"));
    let mut n = 0;
    for (name, node) in v.children(dir) {
        let (mode, target) = listing
            .get(name)
            .unwrap_or_else(|| panic!("{dir}/{name} is not in Linux's {oracle_dir}"));
        assert_eq!(&mode_string(node), mode, "mode of {dir}/{name}");
        if let Node::Link(t) = node {
            assert_eq!(Some(t), target.as_ref(), "target of {dir}/{name}");
        }
        n += 1;
    }
    n
}

fn reference() -> HostView {
    HostView::of(&BuiltPlatform::reference().unwrap())
}

const DEV: &str = "/sys/devices/pci0000:00/0000:00:03.0";
const ODEV: &str = "/sys/bus/pci/devices/0000:00:03.0";

#[test]
fn pci_device_files_read_as_linux_shows_them() {
    let o = parse(ORACLE);
    let v = reference();
    for f in [
        "vendor",
        "device",
        "subsystem_vendor",
        "subsystem_device",
        "class",
        "revision",
        "resource",
        "irq",
        "numa_node",
        "modalias",
        "uevent",
        "driver_override",
        "enable",
        "msi_bus",
        "dma_mask_bits",
        "consistent_dma_mask_bits",
        "ari_enabled",
        "broken_parity_status",
        "power_state",
    ] {
        assert_eq!(
            text_of(&v, &format!("{DEV}/{f}")),
            o.cats[&format!("{ODEV}/{f}")],
            "{f}"
        );
    }
    assert_eq!(text_of(&v, &format!("{DEV}/vendor")), "0x1234\n");
    assert_eq!(
        text_of(&v, &format!("{DEV}/resource")).lines().next(),
        Some("0x00000000fea00000 0x00000000feafffff 0x0000000000040200")
    );
    // config: the device model's config space, as Linux reads QEMU's.
    assert_eq!(o.od.len(), 256);
    assert_eq!(v.file(&format!("{DEV}/config")).unwrap(), &o.od[..]);
}

#[test]
fn pci_device_entries_and_links_match_linux() {
    let o = parse(ORACLE);
    let v = reference();
    let n = assert_listing_matches(&o, &v, DEV, ODEV);
    assert_eq!(n, 25);
    assert_eq!(
        v.link(&format!("{DEV}/driver")),
        Some("../../../bus/pci/drivers/vfio-pci")
    );
    assert_eq!(
        v.link(&format!("{DEV}/iommu_group")),
        Some("../../../kernel/iommu_groups/3")
    );
    assert_eq!(
        v.link(&format!("{DEV}/iommu")),
        Some("../../virtual/iommu/dmar0")
    );
    assert_eq!(
        v.link(&format!("{DEV}/subsystem")),
        Some("../../../bus/pci")
    );
    assert!(v.replaces(DEV));
    assert_listing_matches(&o, &v, "/sys/bus/pci/devices", "/sys/bus/pci/devices");
    assert_listing_matches(
        &o,
        &v,
        "/sys/bus/pci/drivers/vfio-pci",
        "/sys/bus/pci/drivers/vfio-pci",
    );
    // vfio-dev/vfio0 as Linux 6.12 shows it (6.1 has no `dev` yet).
    let o612 = parse(ORACLE_612);
    assert_eq!(
        assert_listing_matches(
            &o612,
            &v,
            &format!("{DEV}/vfio-dev/vfio0"),
            &format!("{ODEV}/vfio-dev/vfio0"),
        ),
        4
    );
    assert_eq!(
        text_of(&v, &format!("{DEV}/vfio-dev/vfio0/dev")),
        o612.cats[&format!("{ODEV}/vfio-dev/vfio0/dev")]
    );
    assert_eq!(
        text_of(&v, &format!("{DEV}/vfio-dev/vfio0/uevent")),
        o612.cats[&format!("{ODEV}/vfio-dev/vfio0/uevent")]
    );
}

#[test]
fn group_type_regions_and_devices_match_linux() {
    let o = parse(ORACLE);
    let v = reference();
    let g = "/sys/kernel/iommu_groups/3";
    assert_eq!(
        text_of(&v, &format!("{g}/type")),
        o.cats[&format!("{g}/type")]
    );
    assert_eq!(
        text_of(&v, &format!("{g}/reserved_regions")),
        "0x00000000fee00000 0x00000000feefffff msi\n"
    );
    assert_eq!(
        text_of(&v, &format!("{g}/reserved_regions")),
        o.cats[&format!("{g}/reserved_regions")]
    );
    assert_eq!(assert_listing_matches(&o, &v, g, g), 3);
    assert!(v.replaces(g));
    assert!(!v.replaces("/sys/kernel/iommu_groups"));
    assert_eq!(
        assert_listing_matches(&o, &v, &format!("{g}/devices"), &format!("{g}/devices")),
        1
    );
    assert_eq!(
        v.config_device("/sys/kernel/iommu_groups/3/devices/0000:00:03.0/config"),
        Some("0000:00:03.0")
    );
    assert_eq!(
        v.config_device("/sys/bus/pci/devices/0000:00:03.0/config"),
        Some("0000:00:03.0")
    );
    assert_eq!(
        v.config_device("/sys/bus/pci/devices/0000:00:04.0/config"),
        None
    );
}

#[test]
fn configured_regions_are_listed_sorted_with_their_kind() {
    let cfg = Config::parse(
        "[[device]]\nkind = \"edu\"\nbdf = \"0000:00:04.0\"\ngroup = 5\n\
         [[reserved_region]]\ngroup = 5\nstart = 0x0\nend = 0xffffff\nkind = \"direct-relaxable\"\n",
    )
    .unwrap();
    let v = HostView::of(&crate::build(&cfg).unwrap());
    // The same lines Linux printed for QEMU's group 4.
    let o = parse(ORACLE);
    assert_eq!(
        text_of(&v, "/sys/kernel/iommu_groups/5/reserved_regions"),
        o.cats["/sys/kernel/iommu_groups/4/reserved_regions"]
    );
    assert_eq!(
        v.link("/sys/bus/pci/devices/0000:00:04.0"),
        Some("../../../devices/pci0000:00/0000:00:04.0")
    );
    assert_eq!(
        v.link("/sys/devices/pci0000:00/0000:00:04.0/iommu_group"),
        Some("../../../kernel/iommu_groups/5")
    );
}

#[test]
fn module_parameters_carry_the_platform_values() {
    let o = parse(ORACLE);
    let v = reference();
    let p = "/sys/module/vfio_iommu_type1/parameters";
    for f in [
        "allow_unsafe_interrupts",
        "disable_hugepages",
        "dma_entry_limit",
    ] {
        assert_eq!(
            text_of(&v, &format!("{p}/{f}")),
            o.cats[&format!("{p}/{f}")],
            "{f}"
        );
    }
    assert_eq!(assert_listing_matches(&o, &v, p, p), 3);
    let p = "/sys/module/vfio_pci/parameters";
    assert_eq!(assert_listing_matches(&o, &v, p, p), 5);
    assert_listing_matches(
        &o,
        &v,
        "/sys/module/vfio_pci/drivers",
        "/sys/module/vfio_pci/drivers",
    );
    assert_eq!(
        text_of(&v, "/sys/module/vfio/initstate"),
        o.cats["/sys/module/vfio/initstate"]
    );
    let cfg = Config::parse(
        "[limits]\ndma_entry_limit = 8\n[[device]]\nkind = \"edu\"\nbdf = \"0000:00:03.0\"\ngroup = 3\n",
    )
    .unwrap();
    let v = HostView::of(&crate::build(&cfg).unwrap());
    assert_eq!(
        text_of(
            &v,
            "/sys/module/vfio_iommu_type1/parameters/dma_entry_limit"
        ),
        "8\n"
    );
}

#[test]
fn intel_iommu_registers_read_as_qemus_unit() {
    let o = parse(ORACLE);
    let v = reference();
    let i = "/sys/devices/virtual/iommu/dmar0/intel-iommu";
    let oi = "/sys/class/iommu/dmar0/intel-iommu";
    for f in ["cap", "ecap", "address", "version", "domains_supported"] {
        assert_eq!(
            text_of(&v, &format!("{i}/{f}")),
            o.cats[&format!("{oi}/{f}")],
            "{f}"
        );
    }
    assert_eq!(assert_listing_matches(&o, &v, i, oi), 5);
    assert_listing_matches(&o, &v, "/sys/class/iommu", "/sys/class/iommu");
    assert_listing_matches(
        &o,
        &v,
        "/sys/devices/virtual/iommu/dmar0/devices",
        "/sys/class/iommu/dmar0/devices",
    );
    // A 48-bit unit with snoop control: SAGAW adds 4-level, MGAW 47, ECAP.SC.
    assert_eq!(vtd_cap(48, true, true) >> 8 & 0x1f, 0b110);
    assert_eq!(vtd_cap(48, true, true) >> 16 & 0x3f, 47);
    assert_eq!(vtd_ecap(true) & 1 << 7, 1 << 7);
    assert_eq!(vtd_cap(39, true, true), 0xd2008c22260286);
    assert_eq!(vtd_ecap(false), 0xf00f4a);
}

#[test]
fn mdev_layout_matches_linux_medu() {
    let o = parse(ORACLE_MDEV);
    let uuid = "c0ffee00-0000-4000-8000-000000000001";
    let cfg = Config::parse(&format!(
        "[[device]]\nkind = \"edu\"\nbdf = \"0000:00:03.0\"\ngroup = 3\n\
         [[device]]\nkind = \"mdev-edu\"\nbdf = \"{uuid}\"\ngroup = 5\n"
    ))
    .unwrap();
    let v = HostView::of(&crate::build(&cfg).unwrap());
    let dir = format!("/sys/devices/virtual/medu/medu/{uuid}");
    let odir = format!("/sys/bus/mdev/devices/{uuid}");
    assert_eq!(assert_listing_matches(&o, &v, &dir, &odir), 7);
    assert_eq!(
        text_of(&v, &format!("{dir}/uevent")),
        o.cats[&format!("{odir}/uevent")]
    );
    let vdev = &o.lists[&format!("{odir}/vfio-dev/vfio1")];
    for l in ["device", "subsystem"] {
        assert_eq!(
            v.link(&format!("{dir}/vfio-dev/vfio1/{l}")),
            vdev[l].1.as_deref(),
            "{l}"
        );
    }
    assert_listing_matches(&o, &v, "/sys/bus/mdev/devices", "/sys/bus/mdev/devices");
    assert_listing_matches(&o, &v, "/sys/class/mdev_bus", "/sys/class/mdev_bus");
    let g = "/sys/kernel/iommu_groups/5";
    assert_eq!(assert_listing_matches(&o, &v, g, g), 4);
    assert_listing_matches(&o, &v, &format!("{g}/devices"), &format!("{g}/devices"));
    for f in ["type", "reserved_regions", "name"] {
        assert_eq!(
            text_of(&v, &format!("{g}/{f}")),
            o.cats[&format!("{g}/{f}")],
            "{f}"
        );
    }
    let t = "/sys/devices/virtual/medu/medu/mdev_supported_types/medu-1";
    let ot = "/sys/class/mdev_bus/medu/mdev_supported_types/medu-1";
    assert_eq!(assert_listing_matches(&o, &v, t, ot), 5);
    for f in ["name", "device_api"] {
        assert_eq!(
            text_of(&v, &format!("{t}/{f}")),
            o.cats[&format!("{ot}/{f}")],
            "{f}"
        );
    }
    assert_listing_matches(&o, &v, &format!("{t}/devices"), &format!("{ot}/devices"));
    assert_listing_matches(
        &o,
        &v,
        "/sys/devices/virtual/medu/medu",
        "/sys/class/mdev_bus/medu",
    );
}

#[test]
fn every_ancestor_is_a_directory_and_links_are_relative() {
    let v = reference();
    for (p, n) in v.nodes() {
        assert!(p.starts_with("/sys"), "{p}");
        if let Some((parent, _)) = p.rsplit_once('/') {
            if !parent.is_empty() {
                assert_eq!(v.get(parent), Some(&Node::Dir), "parent of {p}");
            }
        }
        if let Node::Link(t) = n {
            assert!(t.starts_with(".."), "{p} -> {t}");
        }
    }
}

/// The emulated `/dev` nodes' numbers and modes: Linux 6.12's
/// (tests-oracle/kernel-6.12-compat-fd.txt) for the container and
/// `/dev/iommu`; a group's minor its index in group-number order; decimal
/// names only.
#[test]
fn dev_nodes_have_linux_numbers() {
    use softvfio::platform::{Group, GroupKind, Platform};
    let mut p = Platform::new();
    for id in [7, 3, 12] {
        p.add_group(Group {
            id,
            kind: GroupKind::Emulated,
            devices: Vec::new(),
            extra_reserved: Vec::new(),
        });
    }
    assert_eq!(dev_node(&p, "/dev/vfio/vfio"), Some((10, 196, 0o666)));
    assert_eq!(dev_node(&p, "/dev/iommu"), Some((10, 257, 0o660)));
    assert_eq!(dev_node(&p, "/dev/vfio/3"), Some((251, 0, 0o600)));
    assert_eq!(dev_node(&p, "/dev/vfio/7"), Some((251, 1, 0o600)));
    assert_eq!(dev_node(&p, "/dev/vfio/12"), Some((251, 2, 0o600)));
    assert_eq!(group_node(&p, 12), Some((251, 2)));
    for absent in [
        "/dev/vfio/4",
        "/dev/vfio/03",
        "/dev/vfio/",
        "/dev/vfio/devices/vfio0",
    ] {
        assert_eq!(dev_node(&p, absent), None, "{absent}");
    }
    assert_eq!(node_perm(10, 196), 0o666);
    assert_eq!(node_perm(10, 257), 0o660);
    assert_eq!(node_perm(251, 0), 0o600);
    assert_eq!(devtmpfs_statx_mask(libc::STATX_BASIC_STATS), 0x17ff);
    assert_eq!(devtmpfs_statx_mask(0x4000 | 0x800), 0x4fff);
}
