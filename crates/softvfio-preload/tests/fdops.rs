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

/// What `rawcancel /dev/vfio/N` prints after [`RAW_CANCEL`]: per phase
/// (the engine in the process, then the keeper after a `posix_spawn` made
/// by a thread with a cancel pending), a thread
/// with a cancel pending makes VFIO ioctls, another munmaps memory mapped
/// for DMA and frees a mapped heap block still mapped for DMA. glibc's
/// `ioctl`, `munmap` and `free` are no cancellation points: each thread is
/// canceled at its `pthread_testcancel`, with every answer as on Linux
/// (Linux 6.1 printed these lines: `kernel-6.1-rawcancel.txt`).
fn vfio_cancel_lines() -> String {
    let mut s = String::from(RAW_CANCEL);
    for phase in ["in_process", "keeper"] {
        for (k, v) in [
            ("ioctl_type1v2", "1"),
            ("ioctl_map", "0"),
            ("ioctl_unmap", "0"),
            ("ioctl_stage", "3"),
            ("ioctl_ended", "canceled"),
            ("munmap", "0"),
            ("munmap_stage", "2"),
            ("munmap_ended", "canceled"),
            ("unmap_after", "0"),
            ("unmap_heap_after", "0"),
        ] {
            s.push_str(&format!("{phase}_{k} {v}\n"));
        }
        if phase == "in_process" {
            // posix_spawn (the hand-off), then fork, by one thread.
            s.push_str("spawn 0\nspawn_stage 2\nspawn_ended canceled\n");
            s.push_str("spawned_exit 0\nforked_exit 0\n");
        }
    }
    s
}

/// The library's own work inside hooked calls that are no cancellation
/// points (a VFIO `ioctl`: the engine's work, or the keeper's messages
/// after the hand-off; `munmap` and `free` under the sanitizer: the
/// stale-mapping check, the call-site capture's read of /proc/self/maps;
/// `posix_spawn`: the hand-off) runs with cancellation disabled. Before, the pending cancel acted in
/// the keeper connection's `recvmsg`/`poll` (the unwind then aborted the
/// program: "FATAL: exception not rethrown").
#[test]
fn vfio_calls_are_no_cancellation_points() {
    let exe = build_c("rawcancel", false);
    let want = vfio_cancel_lines();
    // Linux 6.1's answers (tests-oracle/README.md, "Cancellation points").
    let path = format!(
        "{}/../../tests-oracle/kernel-6.1-rawcancel.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    let linux = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(want, linux, "Linux 6.1 printed");
    for mode in ["preload", "trace"] {
        let out = softvfio_run(mode, &[], &exe, &["/dev/vfio/3"]);
        out.assert_clean();
        assert_eq!(out.stdout, want, "{mode}: {}", out.stderr);
        let out = softvfio_run(mode, &["--sanitize"], &exe, &["/dev/vfio/3"]);
        out.assert_clean();
        assert_eq!(out.stdout, want, "{mode} --sanitize: {}", out.stderr);
        // Each phase's munmap and free are stale mappings.
        assert!(
            out.stderr
                .contains("sanitizer: 0 fault(s), 4 stale mapping(s), 0 leak(s)"),
            "{mode}: {}",
            out.stderr
        );
    }
    // The keeper's records on the socket alone: every forwarded call
    // waits in `recvmsg` (through the shared area a quick answer may
    // arrive while the caller still spins, and no cancellation point is
    // reached either way).
    for sanitize in ["", "on"] {
        let mut env = vec![("SOFTVFIO_KEEPER_SOCKET_ONLY", "1")];
        if !sanitize.is_empty() {
            env.push(("SOFTVFIO_SANITIZE", sanitize));
        }
        let out = common::preloaded(&exe, &["/dev/vfio/3"], &env);
        assert_eq!(out.code, Some(0), "{env:?}: {}", out.stderr);
        assert_eq!(out.stdout, want, "{env:?}: {}", out.stderr);
    }
}
