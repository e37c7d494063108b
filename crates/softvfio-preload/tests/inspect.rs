//! `softvfio inspect --json --pid` against a running `softvfio run`
//! session shows the program's mapping.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{artifacts, build_c};

/// Capability number of CAP_IPC_LOCK.
const CAP_IPC_LOCK: u32 = 14;

/// Does this process (and so the program it starts) hold `cap` in its
/// effective set?
fn capable(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << cap) != 0)
}

/// Pages iommufd charges for the program's 4-page area: none when it may
/// lock memory without limit (CAP_IPC_LOCK: Linux 6.12 charges nothing,
/// docs/IOMMUFD.md "Accounting"), else the 4 pages.
fn iommufd_charged() -> u64 {
    if capable(CAP_IPC_LOCK) {
        0
    } else {
        4
    }
}

#[test]
fn inspect_shows_a_running_sessions_mapping() {
    let a = artifacts();
    let exe = build_c("hold", false);
    let mut child = Command::new(&a.softvfio)
        .args(["run", "--"])
        .arg(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start softvfio run");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    lines.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "mapped");

    let out = Command::new(&a.softvfio)
        .args(["inspect", "--json", "--pid", &pid.to_string()])
        .output()
        .expect("run inspect");
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    // Let the program finish (its stdin closes) before asserting.
    drop(child.stdin.take());
    let status = child.wait().expect("wait");
    assert!(
        out.status.success(),
        "inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(status.success());

    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["supervisor_pid"].as_u64(), Some(u64::from(pid)));
    let containers = v["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{json}");
    let maps = containers[0]["mappings"].as_array().expect("mappings");
    assert!(
        maps.iter()
            .any(|m| m["iova"].as_u64() == Some(0xabc000) && m["size"].as_u64() == Some(0x4000)),
        "mapping 0xabc000+16K not in {json}"
    );
    assert_eq!(containers[0]["groups"], serde_json::json!([3]), "{json}");
}

#[test]
fn inspect_shows_an_iommufd_sessions_ioas_hwpt_and_area() {
    let a = artifacts();
    let exe = build_c("hold_iommufd", false);
    let mut child = Command::new(&a.softvfio)
        .args(["run", "--"])
        .arg(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start softvfio run");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    lines.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "mapped");

    let json_out = Command::new(&a.softvfio)
        .args(["inspect", "--json", "--pid", &pid.to_string()])
        .output()
        .expect("run inspect");
    let text_out = Command::new(&a.softvfio)
        .args(["inspect", "--pid", &pid.to_string()])
        .output()
        .expect("run inspect");
    drop(child.stdin.take());
    let status = child.wait().expect("wait");
    assert!(status.success());
    let json = String::from_utf8_lossy(&json_out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let ctxs = v["iommufds"].as_array().expect("iommufds");
    assert_eq!(ctxs.len(), 1, "{json}");
    let ioas = ctxs[0]["ioas"].as_array().expect("ioas");
    assert_eq!(ioas.len(), 1, "{json}");
    let area = &ioas[0]["areas"][0];
    assert_eq!(area["iova"].as_u64(), Some(0xabc000), "{json}");
    assert_eq!(area["last"].as_u64(), Some(0xabc000 + 0x4000 - 1), "{json}");
    assert_eq!(area["pinned"].as_bool(), Some(true), "{json}");
    assert_eq!(area["charged"].as_u64(), Some(iommufd_charged()), "{json}");
    let hwpts = ctxs[0]["hwpts"].as_array().expect("hwpts");
    assert_eq!(hwpts.len(), 1, "{json}");
    assert_eq!(hwpts[0]["auto"].as_bool(), Some(true), "{json}");
    assert_eq!(hwpts[0]["ioas"], ioas[0]["id"], "{json}");
    let text = String::from_utf8_lossy(&text_out.stdout);
    assert!(text.contains("area 0xabc000-0xabffff uptr"), "{text}");
    assert!(text.contains("(automatic)"), "{text}");
}

/// A program that exits with `/dev/iommu` and a bound cdev open: the end
/// report names what it left (one iommufd, its IOAS and HWPT, the area and
/// its pages) and, after release, no pin or charge is left.
#[test]
fn end_report_lists_iommufd_leftovers_and_no_leak() {
    let a = artifacts();
    for (mode, static_) in [("trace", true), ("preload", false)] {
        let exe = build_c("hold_iommufd", static_);
        let out = Command::new(&a.softvfio)
            .args(["run", "--mode", mode, "--"])
            .arg(&exe)
            .arg("leave-open")
            .stdin(Stdio::null())
            .output()
            .expect("softvfio run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}: {stderr}");
        assert_eq!(stdout.trim(), "mapped", "{mode}");
        let want = format!(
            "left open by the program: 0 container(s), 0 group(s), 1 device(s); 1 mapping(s) of 16 KiB, {} pages accounted",
            iommufd_charged()
        );
        assert!(stderr.contains(&want), "{mode}: {stderr}");
        assert!(
            stderr.contains("1 /dev/iommu file(s) with 1 IOAS(es), 1 HWPT(s)"),
            "{mode}: {stderr}"
        );
        assert!(
            stderr.contains("after release: 0 pinned pages, 0 accounted pages: no leak"),
            "{mode}: {stderr}"
        );
    }
}
