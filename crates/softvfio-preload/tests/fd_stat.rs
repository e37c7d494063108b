//! A descriptor opened from a VFIO `/dev` node stats as that node, in both
//! modes: `/dev/vfio/vfio` (10:196, 0666), a group (251:index, 0600),
//! `/dev/iommu` (10:257, 0660) and a device cdev (250:N, 0600), as Linux
//! 6.12 answers (tests-oracle/kernel-6.12-fd-stat.txt, the same program
//! run there; kernel-6.12-compat-fd.txt: `stx_*_fstat`, `stx_*_0`). Every
//! way to stat the path and the descriptor agrees field by field (mode,
//! rdev, ino, dev, nlink, uid, gid).

mod common;

use common::{build_c, softvfio_run};

/// Linux 6.12's output of run `n` (1: the nodes, 2: after a fork) of
/// `fd_stat.c` (tests-oracle/kernel-6.12-fd-stat.txt).
fn recorded(n: u32) -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests-oracle/kernel-6.12-fd-stat.txt"
    );
    let text = std::fs::read_to_string(path).expect("recording");
    let head = format!("# run {n}:");
    text.lines()
        .skip_while(|l| !l.starts_with(&head))
        .skip(1)
        .take_while(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Per node: the path's `stat`, then every other way (lstat, statx of the
/// path, fstat, fstatat and statx with `AT_EMPTY_PATH` of an opened
/// descriptor) agreeing with it, `statx` answering Linux 6.12's mask for
/// `STATX_BASIC_STATS` (basic fields and the mount id, 0x17ff).
fn fd_stat(mode: &str) {
    let exe = build_c("fd_stat", mode == "trace");
    let out = softvfio_run(mode, &[], &exe, &["/dev/vfio/3"]);
    let mut want = Vec::new();
    for (node, number, perm) in [
        ("container", "10:196", "666"),
        ("group", "251:0", "600"),
        ("iommufd", "10:257", "660"),
        ("cdev", "250:0", "600"),
    ] {
        want.extend([
            format!("{node} stat chr=1 {number} perm={perm} nlink=1 uid=0 gid=0"),
            format!("{node} lstat_same 1"),
            format!("{node} statx_path_same 1 mask=0x17ff"),
            format!("{node} fstat_same 1 chr=1 {number}"),
            format!("{node} fstatat_empty_same 1"),
            format!("{node} statx_empty_same 1 mask=0x17ff"),
        ]);
    }
    want.push("nogroup stat No such file or directory".into());
    assert_eq!(recorded(1), want, "Linux 6.12");
    let got: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(got, want, "{}", out.stderr);
    out.assert_clean();
}

#[test]
fn fd_stat_matches_path_in_trace_mode() {
    fd_stat("trace");
}

#[test]
fn fd_stat_matches_path_in_preload_mode() {
    fd_stat("preload");
}

/// After a fork (preload: after the hand-off, the keeper answers) the
/// container's and the group's descriptors still stat as their nodes, in
/// the child and in the parent.
fn fd_stat_after_fork(mode: &str) {
    let exe = build_c("fd_stat", mode == "trace");
    let out = softvfio_run(mode, &[], &exe, &["/dev/vfio/3", "fork"]);
    let want = "child_container 1 chr=1 10:196\n\
                child_group 1 chr=1 251:0\n\
                parent_container 1 chr=1 10:196\n\
                parent_group 1 chr=1 251:0\n";
    assert_eq!(out.stdout, want, "{}", out.stderr);
    assert_eq!(recorded(2).join("\n") + "\n", want, "Linux 6.12");
    out.assert_clean();
}

#[test]
fn fd_stat_after_fork_preload() {
    fd_stat_after_fork("preload");
}

#[test]
fn fd_stat_after_fork_trace() {
    fd_stat_after_fork("trace");
}
