//! Descriptor operations of whole programs (QEMU) on VFIO files, with the
//! program built as Debian builds QEMU (`_FORTIFY_SOURCE=2`, 64-bit file
//! offsets): the fortified `__open64_2`/`__open_2`, `__pread64_chk`/
//! `__pread_chk` (and their abort on a read larger than the buffer),
//! `dup2`/`dup3` over VFIO descriptors and `close_range`, and the same
//! calls through `syscall(2)`. The same answers
//! under preload and trace, and nothing left open.

mod common;

use std::process::Command;

use common::{build_c, softvfio_run};

const EXPECTED: &[(&str, &str)] = &[
    ("open64_2_api", "0"),
    ("open_2_api", "0"),
    ("pread64_chk_id", "0x11e81234"),
    ("pread_chk_len", "4"),
    ("pread_chk_id", "0x11e81234"),
    ("pread_chk_overflow", "SIGABRT"),
    ("dup2", "100"),
    ("close_original", "0"),
    ("dup2_copy_id", "0x11e81234"),
    ("unset_while_device_open", "EBUSY"),
    ("dup2_over_device", "100"),
    // /dev/null now: end of file.
    ("dup2_over_device_pread", "0"),
    ("unset_after_dup2_over", "0"),
    ("dup3", "101"),
    ("dup3_group_status", "0 flags=0x3"),
    ("dup3_cloexec", "1"),
    ("dup3_same_fd", "EINVAL"),
    ("device_again", "0"),
    ("close_range_cloexec", "0"),
    ("cloexec_marked", "1"),
    ("cloexec_still_serves", "0x11e81234"),
    ("close_range", "0"),
    ("closed_range_ioctl", "EBADF"),
    ("unset_after_close_range", "0"),
    // Through syscall(2): the same answers (before, preload kept serving
    // the closed descriptors: 1 instead of EBADF).
    ("raw_open_api", "0"),
    ("raw_ioctl_type1v2", "1"),
    ("raw_dup2", "210"),
    ("raw_dup2_copy_type1v2", "1"),
    ("raw_close", "0"),
    ("raw_closed_ioctl", "EBADF"),
    ("raw_close_range", "0"),
    ("raw_closed_range_ioctl", "EBADF"),
    ("raw_close_bad", "EBADF"),
    ("close_range_all", "0"),
    ("closed_container_ioctl", "EBADF"),
];

fn check(out: &common::Output) {
    out.assert_clean();
    let got: Vec<(String, String)> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let want: Vec<(String, String)> = EXPECTED
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(got, want, "stderr:\n{}", out.stderr);
    // The child's abort is glibc's own message.
    assert!(
        out.stderr.contains("*** buffer overflow detected ***"),
        "{}",
        out.stderr
    );
}

#[test]
fn fdops_program_calls_the_fortified_entry_points() {
    let exe = build_c("fdops", false);
    let nm = Command::new("nm").arg("-D").arg(&exe).output().expect("nm");
    let syms = String::from_utf8_lossy(&nm.stdout);
    for s in ["__open64_2", "__pread64_chk", "__pread_chk", "close_range"] {
        assert!(
            syms.lines().any(|l| l.contains(&format!(" {s}@"))),
            "{s} not imported:\n{syms}"
        );
    }
}

#[test]
fn fdops_under_preload() {
    let exe = build_c("fdops", false);
    check(&softvfio_run(
        "preload",
        &[],
        &exe,
        &["/dev/vfio/3", "0000:00:03.0"],
    ));
}

#[test]
fn fdops_under_trace() {
    let exe = build_c("fdops", false);
    check(&softvfio_run(
        "trace",
        &[],
        &exe,
        &["/dev/vfio/3", "0000:00:03.0"],
    ));
}

/// What `rawcancel` prints on Linux (checked against the program run
/// without softvfio below): each raw call made with a cancel pending, the
/// thread reaching the `pthread_testcancel` after them, canceled there.
const RAW_CANCEL: &str =
    "pread 0\nclose 0\nclosed_fd EBADF\nopenat_ok 1\nclose_again 0\nstage 4\nended canceled\n";

/// `syscall(2)` is no cancellation point (glibc's is the `syscall`
/// instruction and nothing else), also for the numbers preload serves
/// through hooks that call libc's wrappers, which are: a pending deferred
/// cancel does not act inside a raw `close`/`openat`/`pread64`, nor end
/// the thread before the call closed its descriptor.
#[test]
fn raw_syscall_is_no_cancellation_point() {
    let exe = build_c("rawcancel", false);
    let native = Command::new(&exe).output().expect("run rawcancel");
    assert!(native.status.success());
    assert_eq!(String::from_utf8_lossy(&native.stdout), RAW_CANCEL);
    for mode in ["preload", "trace"] {
        let out = softvfio_run(mode, &[], &exe, &[]);
        out.assert_clean();
        assert_eq!(out.stdout, RAW_CANCEL, "{mode}: {}", out.stderr);
    }
}
