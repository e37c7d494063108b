//! A 64-bit program's i386 system calls (`int $0x80`) and `statx` of its
//! VFIO descriptors under `softvfio run --mode trace`, against Linux 6.12:
//! `tests-oracle/compat_fd_probe.c`, whose answers on the reference kernel
//! are `tests-oracle/kernel-6.12-compat-fd.txt`.
//!
//! - The i386 `ioctl` of a VFIO request on the container, group and device
//!   is served as Linux's `compat_ptr_ioctl` serves it (a 32-bit pointer,
//!   MAP_DMA's pinning included); on `/dev/iommu`, which has no
//!   `compat_ioctl`, it is ENOTTY.
//! - The i386 `close`, `dup2`, `dup3` and `close_range` of a VFIO
//!   descriptor whose number the supervisor knew, then a pipe or a file
//!   taking that number: the number's answers are the new file's (before,
//!   the descriptor cache still named the object: the container's API
//!   version on a pipe); and the other way, a plain file's number taken by
//!   an object.
//! - `statx` of a fault queue and of a device's descriptor (anonymous
//!   inodes in Linux) answers as the running kernel answers for its
//!   anonymous inode, whatever mask, sync flags or path form (`NULL` with
//!   `AT_EMPTY_PATH`) is asked; of a VFIO cdev, as devtmpfs answers for the
//!   node (mask, attributes mask, device number).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The probe, static (its 32-bit pointers need globals below 4 GiB, and
/// trace mode runs static programs as well as dynamic ones).
fn probe() -> PathBuf {
    let src = repo().join("tests-oracle/compat_fd_probe.c");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "compat_fd_probe-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let st = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run gcc");
    assert!(st.success(), "gcc failed for {}", src.display());
    out
}

/// `name value` lines (and `done`).
fn lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| *l == "done" || l.contains(' '))
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (k.to_string(), v.trim().to_string())
        })
        .collect()
}

/// The probe's answers under trace, with edu at 0000:00:03.0 in group 3
/// (its cdev vfio0).
fn traced() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let cfg = dir.join(format!(
        "compat-fd-{}-{:?}.toml",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(
        &cfg,
        "[[device]]\nkind = \"edu\"\nbdf = \"0000:00:03.0\"\ngroup = 3\n",
    )
    .expect("config");
    let exe = probe();
    let out = Command::new(env!("CARGO_BIN_EXE_softvfio"))
        .args(["run", "--mode", "trace", "--config"])
        .arg(&cfg)
        .arg("--")
        .arg(&exe)
        .args(["/dev/vfio/3", "0000:00:03.0", "/dev/vfio/devices/vfio0"])
        .env_remove("SOFTVFIO_CONFIG")
        .env_remove("LD_PRELOAD")
        .output()
        .expect("run softvfio");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("no leak"), "{stderr}");
    lines(&stdout)
}

fn recorded() -> Vec<(String, String)> {
    let path = repo().join("tests-oracle/kernel-6.12-compat-fd.txt");
    let want = lines(&std::fs::read_to_string(path).expect("recording"));
    assert_eq!(want.len(), 212);
    assert_eq!(want.last().map(|(k, _)| k.as_str()), Some("done"));
    want
}

/// Where softvfio answers otherwise than Linux 6.12, on purpose: edu's
/// `VFIO_DEVICE_GET_INFO` has the SVM flag (1 << 30) of softvfio's
/// bind/unbind extension (docs/SVM.md).
const DEVIATIONS: &[(&str, &str)] = &[("d32_info", "0 flags=0x40000002 regions=9 irqs=5")];

#[test]
fn i386_calls_on_vfio_descriptors_answer_as_linux_under_trace() {
    let want = recorded();
    let got = traced();
    let first = |v: &[(String, String)]| -> Vec<(String, String)> {
        v.iter()
            .take_while(|(k, _)| !k.starts_with("stx_"))
            .cloned()
            .collect()
    };
    let (want, got) = (first(&want), first(&got));
    assert_eq!(want.len(), 62);
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((gk, gv), (wk, wv)) in got.iter().zip(&want) {
        assert_eq!(gk, wk);
        match DEVIATIONS.iter().find(|(k, _)| k == gk) {
            Some((_, ours)) => assert_eq!(gv, ours, "{gk} (Linux: {wv})"),
            None => assert_eq!(gv, wv, "{gk}"),
        }
    }
}

/// The `stx_KIND_CASE` lines of one run, by case.
fn stx_of(lines: &[(String, String)], kind: &str) -> HashMap<String, String> {
    let prefix = format!("stx_{kind}_");
    lines
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v.clone())))
        .collect()
}

/// The return value (`0` or `-1 ERRNO`) of a `stx_` line.
fn ret(v: &str) -> &str {
    if v.starts_with("-1 ") {
        v.split(' ').take(2).last().unwrap_or(v)
    } else {
        v.split(' ').next().unwrap_or(v)
    }
}

#[test]
fn statx_of_vfio_descriptors_answers_as_linux_under_trace() {
    let want = recorded();
    let got = traced();
    let cases = stx_of(&want, "eventfd");
    assert_eq!(cases.len(), 21);
    // Linux 6.12: a fault queue's and a device's descriptors are the
    // anonymous inode, asked any way (the mask asked changes the answer:
    // STATX_MNT_ID_UNIQUE; a reserved bit, both sync flags, an unknown
    // flag: EINVAL; a NULL path with AT_EMPTY_PATH: the descriptor).
    for kind in ["fault", "device"] {
        assert_eq!(stx_of(&want, kind), cases, "Linux: {kind}");
    }
    assert_eq!(
        cases["mnt_id_unique"].split(' ').nth(1),
        Some("mask=0x47ff")
    );
    assert_eq!(cases["null_path"], cases["basic"]);
    // Under trace the same relation, with the running kernel's answers
    // for its anonymous inode (the host's may differ from 6.12's).
    let host = stx_of(&got, "eventfd");
    assert_eq!(host.len(), cases.len());
    for kind in ["fault", "device"] {
        let ours = stx_of(&got, kind);
        for (case, v) in &host {
            assert_eq!(ours.get(case), Some(v), "{kind} {case}");
        }
    }
    // The cdev: devtmpfs's node as Linux 6.12 answers it (its mode, device
    // number, mask with the mount id and the birth time when asked,
    // attributes mask), where the running kernel takes the call as 6.12
    // does; where it does not (a flag a later kernel accepts), the
    // running kernel's verdict.
    // So do the container (10:196), the group (251:0) and `/dev/iommu`
    // (10:257): character devices, not the sockets behind them.
    for node in ["cdev", "container", "group", "iommufd"] {
        let node_want = stx_of(&want, node);
        let ours_all = stx_of(&got, node);
        assert_eq!(node_want.len(), cases.len(), "{node}");
        assert_eq!(ours_all.len(), cases.len(), "{node}");
        let mut compared = 0;
        for (case, v) in &node_want {
            let ours = &ours_all[case];
            if ret(&host[case]) == ret(&cases[case]) {
                assert_eq!(ours, v, "{node} {case}");
                compared += 1;
            } else {
                assert_eq!(ret(ours), ret(&host[case]), "{node} {case}");
            }
        }
        assert!(compared >= 20, "{node} {compared}");
    }
}
