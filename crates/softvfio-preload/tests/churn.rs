//! Opening and closing containers, groups and devices thousands of times
//! (with dup, dup2, fcntl(F_DUPFD_CLOEXEC) and mappings left for the
//! release) leaks no descriptor and no memory, in both modes.

mod common;

use common::{build_c, preloaded, softvfio_run};

const ROUNDS: &str = "2000";

fn check(out: &common::Output, in_process: bool) {
    out.assert_clean();
    assert_eq!(out.get("failures"), "0");
    assert_eq!(out.get("rounds"), ROUNDS);
    assert_eq!(out.get("closed_fd_ioctl"), "EBADF");
    let before: i64 = out.get("fds_before").parse().expect("number");
    let first: i64 = out.get("fds_after_first").parse().expect("number");
    let after: i64 = out.get("fds_after").parse().expect("number");
    // No growth after the first round.
    assert_eq!(after, first, "descriptors leaked:\n{}", out.stdout);
    if in_process {
        // The engine's own /proc/self/maps and pagemap, kept open.
        assert!(after - before <= 2, "{}", out.stdout);
    } else {
        assert_eq!(after, before, "{}", out.stdout);
    }
}

#[test]
fn churn_under_trace_leaks_nothing() {
    let exe = build_c("churn", false);
    check(&softvfio_run("trace", &[], &exe, &[ROUNDS]), false);
}

#[test]
fn churn_under_preload_leaks_nothing() {
    let exe = build_c("churn", false);
    check(&softvfio_run("preload", &[], &exe, &[ROUNDS]), true);
}

#[test]
fn churn_with_plain_ld_preload() {
    // The library alone, without `softvfio run`: a process that used VFIO
    // reports at exit; SOFTVFIO_QUIET silences it.
    let exe = build_c("churn", false);
    check(&preloaded(&exe, &[ROUNDS], &[]), true);
    let quiet = preloaded(&exe, &["3"], &[("SOFTVFIO_QUIET", "1")]);
    assert_eq!(quiet.code, Some(0));
    assert!(quiet.stderr.is_empty(), "{}", quiet.stderr);
}
