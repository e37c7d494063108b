//! `stat` of `/dev/vfio/devices/vfioN` agrees with sysfs `vfio-dev/vfioN/dev`
//! (QEMU refuses a cdev whose `st_rdev` differs), in both modes: preload
//! hooks libc's stat family, trace mode answers the system calls (`stat`,
//! `lstat`, `newfstatat`, `statx`).

mod common;

use common::{build_c, softvfio_run};

#[test]
fn cdev_stat_matches_sysfs_in_preload_mode() {
    let exe = build_c("cdev_stat", false);
    let out = softvfio_run("preload", &[], &exe, &["0000:00:03.0"]);
    assert!(out.stdout.contains("sysfs_dev 250:0\n"), "{}", out.stdout);
    assert!(
        out.stdout.contains("stat_vfio0 chr=1 250:0 same=1\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("stat_vfio9 No such file or directory\n"),
        "{}",
        out.stdout
    );
}

/// QEMU's sequence (iommufd_cdev_getfd) under trace: every way to stat
/// the node answers the device number sysfs gives; other names and a bad
/// buffer get the kernel's answers.
#[test]
fn cdev_stat_matches_sysfs_in_trace_mode() {
    let exe = build_c("cdev_stat", true);
    let out = softvfio_run("trace", &[], &exe, &["0000:00:03.0", "all"]);
    let want = "sysfs_name vfio0\n\
                sysfs_dev 250:0\n\
                stat_vfio0 chr=1 250:0 same=1\n\
                stat_vfio9 No such file or directory\n\
                lstat_vfio0 0 chr=1 250:0 mode=600\n\
                fstatat_relative 0 250:0\n\
                statx_vfio0 0 chr=1 250:0\n\
                stat_vfio01 No such file or directory\n\
                stat_bad_buffer Bad address\n\
                open_bind 0\n";
    assert_eq!(out.stdout, want);
    out.assert_clean();
}

/// After a fork (in preload mode, after the hand-off to the keeper) the
/// opened cdev's `fstat`, in the child and in the parent, and `stat` of its
/// path still answer the node sysfs names (before: the eventfd's stat, and
/// ENOENT for the path); other descriptors are untouched.
fn cdev_stat_after_fork(mode: &str) {
    let exe = build_c("cdev_stat", mode == "trace");
    let out = softvfio_run(mode, &[], &exe, &["0000:00:03.0", "fork"]);
    for (k, v) in [
        ("fstat_before", "0 chr=1 250:0"),
        ("fstat_child", "0 chr=1 250:0"),
        ("stat_child", "0 chr=1 250:0"),
        ("stat_child_vfio9", "No such file or directory"),
        ("fstat_parent_after", "0 chr=1 250:0"),
        ("fstat_other", "0 chr=1 1:3"),
    ] {
        assert_eq!(out.get(k), v, "{k}\n{}\n{}", out.stdout, out.stderr);
    }
    out.assert_clean();
}

#[test]
fn cdev_stat_after_fork_preload() {
    cdev_stat_after_fork("preload");
}

#[test]
fn cdev_stat_after_fork_trace() {
    cdev_stat_after_fork("trace");
}
