//! What Linux 6.12's iommufd and VFIO cdev answer (recorded in
//! `tests-oracle/kernel-6.12-iommufd.txt`, printed by
//! `tests-oracle/iommufd_probe.c` in the VM of
//! `../shared/conformance/run-kernel-6.12.sh`: QEMU's edu at 0000:00:03.0 in
//! group 3 behind VT-d, its cdev `/dev/vfio/devices/vfio0`) is what the same
//! probe sees under `softvfio run`: built static under `--mode trace` and
//! dynamic under `--mode preload`. Every line is compared, in order; a
//! mismatch prints each differing line with Linux's answer and ours. The
//! only lines excused are listed in [`DEVIATIONS`], each with the exact
//! answer softvfio gives and why.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use common::{build_c_file, differences, excuse_deviations, result_lines, softvfio_run};

fn oracle_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests-oracle")
}

fn recorded() -> Vec<(String, String)> {
    let path = oracle_dir().join("kernel-6.12-iommufd.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    result_lines(&text)
}

/// Capability number of CAP_SYS_RESOURCE.
const CAP_SYS_RESOURCE: u32 = 24;

/// Does this process (and so the probe it starts) hold CAP_SYS_RESOURCE?
fn cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << CAP_SYS_RESOURCE) != 0)
}

/// What Linux answers here: the recording ran as root with every
/// capability; without CAP_SYS_RESOURCE, 6.12 refuses `RLIMIT_MODE` SET
/// with EPERM before it looks at anything else
/// (`kernel-6.12-iommufd-access.txt`, `acct_set_mode_nocap*`), and the
/// probe then prints the value it passed, unchanged.
fn expected() -> Vec<(String, String)> {
    let caps = cap_sys_resource();
    recorded()
        .into_iter()
        .map(|(k, v)| {
            let set = ["opt_rlimit_set1", "opt_rlimit_set2", "opt_rlimit_set0"];
            if !caps && set.contains(&k.as_str()) {
                let val = v.split_once(' ').map_or("", |(_, rest)| rest).to_string();
                (k, format!("EPERM {val}"))
            } else {
                (k, v)
            }
        })
        .collect()
}

/// Where softvfio answers otherwise: (case, softvfio's exact answer, why).
const DEVIATIONS: &[(&str, &str, &str)] = &[];

fn check(mode: &str, static_: bool) {
    let src = oracle_dir().join("iommufd_probe.c");
    let name = if static_ {
        "iommufd_probe-static"
    } else {
        "iommufd_probe-dynamic"
    };
    let probe = build_c_file(&src, name, static_);
    let out = softvfio_run(
        mode,
        &[],
        &probe,
        &["all", "/dev/vfio/devices/vfio0", "/dev/vfio/3"],
    );
    let want = expected();
    let got = excuse_deviations(DEVIATIONS, &want, &result_lines(&out.stdout));
    let diff = differences(&want, &got);
    assert!(
        diff.is_empty(),
        "{mode}: {} of {} lines differ from Linux 6.12:\n{}\n--- stderr (tail) ---\n{}",
        diff.len(),
        want.len(),
        diff.join("\n"),
        out.stderr
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    out.assert_clean();
}

#[test]
fn static_probe_under_trace_answers_as_linux() {
    check("trace", true);
}

#[test]
fn dynamic_probe_under_preload_answers_as_linux() {
    check("preload", false);
}

#[test]
fn recorded_answers_are_one_complete_run() {
    let lines = recorded();
    assert!(lines.len() > 150, "only {} lines", lines.len());
    assert_eq!(
        lines.last().map(|(k, _)| k.as_str()),
        Some("done"),
        "the recorded run did not finish"
    );
    let names: HashSet<&str> = lines.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names.len(), lines.len(), "a case name is repeated");
}

#[test]
fn deviations_name_recorded_cases() {
    let lines = recorded();
    for (case, ours, _) in DEVIATIONS {
        let linux = lines.iter().find(|(k, _)| k == case);
        assert!(linux.is_some(), "deviation {case} is not a recorded case");
        assert_ne!(
            linux.map(|(_, v)| v.as_str()),
            Some(*ours),
            "{case} is no deviation"
        );
    }
}
