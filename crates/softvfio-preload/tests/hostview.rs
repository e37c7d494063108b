//! The host's view of the platform in sysfs, as an unmodified program sees
//! it under `softvfio run` in both modes (`programs/hostview.c`: static for
//! trace, dynamic for preload): links, realpath, stat, directory listings,
//! file contents, the live `config`, from a second thread too; the host's
//! own entries untouched, and the host's device at a platform address
//! shadowed. The expected contents are Linux's (tests-oracle/
//! kernel-6.1-sysfs.txt; the generator's unit tests compare every file).

mod common;

use common::{build_c, softvfio_run, Output};
use std::collections::BTreeSet;
use std::path::Path;

const BDF: &str = "0000:00:03.0";
const UUID: &str = "c0ffee00-0000-4000-8000-000000000001";

/// The host's own PCI devices and where their links point.
fn host_pci_links() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/bus/pci/devices").unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let target = std::fs::read_link(e.path()).unwrap();
        out.push((name, target.to_string_lossy().into_owned()));
    }
    out
}

/// Every PCI device the program listed, with its link target.
fn listed(out: &Output) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = out
        .kv()
        .into_iter()
        .filter_map(|(k, t)| Some((k.strip_prefix("link:")?.to_string(), t)))
        .collect();
    v.sort();
    v
}

fn assert_reference_view(out: &Output, bdf: &str, group: &str) {
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let root = format!("/sys/devices/pci0000:00/{bdf}");
    let expect = [
        ("lstat_dev_is_link", "1".to_string()),
        ("stat_dev_is_dir", "1".to_string()),
        ("realpath_dev", root.clone()),
        (
            "iommu_group",
            format!("../../../kernel/iommu_groups/{group}"),
        ),
        (
            "iommu_group_real",
            format!("/sys/kernel/iommu_groups/{group}"),
        ),
        ("group", group.to_string()),
        ("driver", "../../../bus/pci/drivers/vfio-pci".to_string()),
        ("iommu", "../../virtual/iommu/dmar0".to_string()),
        ("subsystem", "../../../bus/pci".to_string()),
        ("vendor", "0x1234".to_string()),
        ("device", "0x11e8".to_string()),
        ("subsystem_vendor", "0x1af4".to_string()),
        ("subsystem_device", "0x1100".to_string()),
        ("class", "0x00ff00".to_string()),
        ("revision", "0x10".to_string()),
        ("irq", "11".to_string()),
        ("numa_node", "-1".to_string()),
        ("vfio-dev/vfio0/dev", "250:0".to_string()),
        ("config_mode", "644".to_string()),
        ("config_size", "256".to_string()),
        ("config", "256 34 12 e8 11 03 01 10 00".to_string()),
        (
            "reserved_regions",
            "0x00000000fee00000 0x00000000feefffff msi".to_string(),
        ),
        ("group_type", "DMA".to_string()),
        ("group_device_real", root.clone()),
        ("driver_device_real", root.clone()),
        ("dma_entry_limit", "65535".to_string()),
        ("disable_hugepages", "N".to_string()),
        ("allow_unsafe_interrupts", "N".to_string()),
        ("module_vfio", "1".to_string()),
        ("module_vfio_pci", "1".to_string()),
        ("dmar_cap", "d2008c22260286".to_string()),
        ("dmar_ecap", "f00f4a".to_string()),
        ("dmar_address", "fed90000".to_string()),
        ("listed_bdf", "1".to_string()),
        (
            "thread",
            format!("../../../kernel/iommu_groups/{group} 0x1234"),
        ),
        ("config_write", "2".to_string()),
        // Memory decoding toggled through the device fd shows in sysfs.
        ("config_after", "256 34 12 e8 11 01 01 10 00".to_string()),
        ("config_after_fopen", "8 01 01".to_string()),
        ("done", "1".to_string()),
    ];
    for (k, v) in expect {
        assert_eq!(out.get(k), v, "{k}");
    }
    let resource = out.get("resource");
    let lines: Vec<&str> = resource.split('|').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 13);
    assert_eq!(
        lines[0],
        "0x00000000fea00000 0x00000000feafffff 0x0000000000040200"
    );
    // The host's devices are all there, unchanged; the platform's device
    // is there once (replacing the host's at the same address).
    let mut expected: Vec<(String, String)> = host_pci_links()
        .into_iter()
        .filter(|(n, _)| n != bdf)
        .collect();
    expected.push((
        bdf.to_string(),
        format!("../../../devices/pci0000:00/{bdf}"),
    ));
    expected.sort();
    assert_eq!(listed(out), expected);
    let names: BTreeSet<_> = listed(out).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), expected.len(), "no duplicate entries");
}

/// `softvfio run --mode MODE -- program BDF` with `env` added; as `nobody`
/// (through setpriv(1), which needs root) when `drop_root`.
fn run_with_env(drop_root: bool, mode: &str, prog: &Path, env: &[(&str, &str)]) -> Output {
    let a = common::artifacts();
    let mut cmd = if drop_root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&a.softvfio);
        c
    } else {
        std::process::Command::new(&a.softvfio)
    };
    cmd.args(["run", "--mode", mode, "--"])
        .arg(prog)
        .arg(BDF)
        .env_remove("SOFTVFIO_QUIET")
        .env_remove("SOFTVFIO_CONFIG")
        .env_remove("SOFTVFIO_PRELOAD_LIB")
        .env_remove("LD_PRELOAD")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run softvfio");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The host's own sysfs is not changed by a run.
fn host_vendor(bdf: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/bus/pci/devices/{bdf}/vendor")).ok()
}

/// A host PCI device other than the platform's: its directory, vendor,
/// driver link and number of entries, as the host shows them.
fn other_host_device() -> Option<(String, String, String, usize)> {
    let (name, _) = host_pci_links().into_iter().find(|(n, _)| n != BDF)?;
    let dir = format!("/sys/bus/pci/devices/{name}");
    let vendor = std::fs::read_to_string(format!("{dir}/vendor")).ok()?;
    let driver = std::fs::read_link(format!("{dir}/driver"))
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "ERR2".into());
    // readdir counts `.` and `..` too.
    let entries = std::fs::read_dir(&dir).ok()?.count() + 2;
    Some((dir, vendor.trim().to_string(), driver, entries))
}

#[test]
fn trace_mode_static_program_sees_the_platform_in_sysfs() {
    let before = host_vendor(BDF);
    let prog = build_c("hostview", true);
    let out = softvfio_run("trace", &[], &prog, &[BDF]);
    assert_reference_view(&out, BDF, "3");
    out.assert_clean();
    assert_eq!(host_vendor(BDF), before);
    // On these machines the host has its own 0000:00:03.0: shadowed.
    if let Some(v) = before {
        assert_ne!(v, "0x1234\n");
    }
}

#[test]
fn preload_mode_dynamic_program_sees_the_platform_in_sysfs() {
    let prog = build_c("hostview", false);
    let out = softvfio_run("preload", &[], &prog, &[BDF]);
    assert_reference_view(&out, BDF, "3");
    out.assert_clean();
}

#[test]
fn host_entries_outside_the_platform_read_as_on_the_host() {
    let (dir, vendor, driver, entries) =
        other_host_device().expect("the host has a PCI device besides the platform's");
    for (mode, static_) in [("trace", true), ("preload", false)] {
        let prog = build_c("hostview", static_);
        let out = run_with_env(false, mode, &prog, &[("HOSTVIEW_HOST_DEV", &dir)]);
        assert_reference_view(&out, BDF, "3");
        assert_eq!(out.get("host_vendor"), vendor, "{mode}");
        assert_eq!(out.get("host_driver"), driver, "{mode}");
        assert_eq!(out.get("host_entries"), entries.to_string(), "{mode}");
    }
}

#[test]
fn a_platform_address_the_host_lacks_is_added_beside_the_hosts_devices() {
    let bdf = "0000:00:1d.0";
    assert!(host_vendor(bdf).is_none(), "the host has {bdf}");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let cfg = dir.join("hostview-1d.toml");
    std::fs::write(
        &cfg,
        format!("[[device]]\nkind = \"edu\"\nbdf = \"{bdf}\"\ngroup = 7\n"),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    for (mode, static_) in [("trace", true), ("preload", false)] {
        let prog = build_c("hostview", static_);
        let out = softvfio_run(mode, &["--config", cfg], &prog, &[bdf]);
        assert_reference_view(&out, bdf, "7");
    }
    assert!(host_vendor(bdf).is_none());
}

#[test]
fn mediated_device_appears_on_the_mdev_bus_with_its_group_and_type() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let cfg = dir.join("hostview-mdev.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[device]]\nkind = \"edu\"\nbdf = \"{BDF}\"\ngroup = 3\n\
             [[device]]\nkind = \"mdev-edu\"\nbdf = \"{UUID}\"\ngroup = 10\n"
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    for (mode, static_) in [("trace", true), ("preload", false)] {
        let prog = build_c("hostview", static_);
        let out = softvfio_run(mode, &["--config", cfg], &prog, &[BDF, UUID]);
        assert_reference_view(&out, BDF, "3");
        assert_eq!(
            out.get("mdev_real"),
            format!("/sys/devices/virtual/medu/medu/{UUID}")
        );
        assert_eq!(
            out.get("mdev_iommu_group"),
            "../../../../../kernel/iommu_groups/10"
        );
        assert_eq!(out.get("mdev_group_real"), "/sys/kernel/iommu_groups/10");
        assert_eq!(out.get("mdev_device_api"), "vfio-pci");
        assert_eq!(out.get("mdev_type_name"), "medu");
    }
}

/// Without root, `softvfio run` lays the view in a user namespace of its
/// own that keeps the user's ids. As root, the test drops to `nobody` with
/// setpriv(1) to take that path.
#[test]
fn unprivileged_runs_get_the_view_through_a_user_namespace() {
    for (mode, static_) in [("trace", true), ("preload", false)] {
        let prog = build_c("hostview", static_);
        let out = run_with_env(common::is_root(), mode, &prog, &[]);
        assert!(!out.stderr.contains("warning"), "{}", out.stderr);
        assert_reference_view(&out, BDF, "3");
        out.assert_clean();
    }
}

/// `SOFTVFIO_HOSTVIEW=0`: the program sees the host's own sysfs, `config`
/// included (no front end serves it from the model then).
#[test]
fn hostview_off_leaves_the_hosts_sysfs() {
    let dev = format!("/sys/bus/pci/devices/{BDF}");
    let vendor = std::fs::read_to_string(format!("{dev}/vendor"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "ERR2".into());
    let config = match std::fs::read(format!("{dev}/config")) {
        Ok(b) => {
            let mut s = b.len().to_string();
            for x in b.iter().take(8) {
                s.push_str(&format!(" {x:02x}"));
            }
            s
        }
        Err(_) => "ERR2".into(),
    };
    for (mode, static_) in [("trace", true), ("preload", false)] {
        let prog = build_c("hostview", static_);
        let out = run_with_env(false, mode, &prog, &[("SOFTVFIO_HOSTVIEW", "0")]);
        assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
        assert_eq!(out.get("iommu_group"), "ERR2", "{mode}");
        assert_eq!(out.get("vendor"), vendor, "{mode}");
        assert_eq!(out.get("config"), config, "{mode}");
        assert_eq!(out.get("config_after"), config, "{mode}");
        let host_vfio = Path::new("/sys/module/vfio").is_dir();
        assert_eq!(
            out.get("module_vfio"),
            (host_vfio as u8).to_string(),
            "{mode}"
        );
    }
}
