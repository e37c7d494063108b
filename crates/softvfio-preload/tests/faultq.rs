//! A process holding an iommufd fault queue under `--mode preload`: its
//! other `read`/`write` calls take no lock of the library (a lock-free set of
//! the queue's descriptor numbers, `src/streams.rs`), and every copy of the
//! queue's descriptor reads as the queue (`tests/programs/faultq.c`).
//!
//! The answers are Linux 6.12's: the program's `answers` run (its dups,
//! fork, syscall and exec cases) is recorded in
//! `tests-oracle/kernel-6.12-faultq.txt`, and both front ends must print it
//! line for line; the per-case tests below spell their part out. On a
//! queue (as in `kernel-6.12-iommufd-fault.txt`): a read of whole records
//! (40 bytes each) 0, of part of one ESPIPE, a response naming no pending
//! fault EINVAL, `readv` segment by segment.

mod common;

use std::path::{Path, PathBuf};

use common::{build_c, result_lines, softvfio_run, Output};

fn program() -> PathBuf {
    build_c("faultq", false)
}

fn run(args: &[&str]) -> Output {
    let out = softvfio_run("preload", &[], &program(), args);
    out.assert_clean();
    out
}

fn lines(out: &Output) -> Vec<(String, String)> {
    result_lines(&out.stdout)
}

fn expect(out: &Output, want: &[(&str, &str)]) {
    let got = lines(out);
    let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(got, want, "stderr:\n{}", out.stderr);
}

fn number(out: &Output, key: &str) -> f64 {
    out.get(key)
        .parse()
        .unwrap_or_else(|_| panic!("{key}: {}", out.stdout))
}

/// One thread pins 512 MiB in a `MAP_DMA` (the library's state lock held
/// throughout) while another writes a pipe once a millisecond: its writes
/// return during the map. Before, each write of the process looked its
/// descriptor up under that lock and waited for the map's end: no write
/// returned while the map ran (0 of them, the map 220-260 ms).
#[test]
fn a_pipe_write_returns_while_another_thread_is_in_a_long_map() {
    let out = run(&["busy-map", "/dev/vfio/3", "512"]);
    assert_eq!(out.get("map"), "0");
    assert_eq!(out.get("unmap"), "0");
    let map_ms = number(&out, "map_ms");
    // A map short enough to end before the first write would prove nothing.
    assert!(map_ms >= 20.0, "the map took {map_ms} ms");
    let during = number(&out, "writes_during_map");
    let longest_us = number(&out, "longest_write_us");
    assert!(
        during >= 5.0,
        "{during} writes returned during a {map_ms} ms map\n{}",
        out.stdout
    );
    assert!(
        longest_us * 2.0 < map_ms * 1000.0,
        "a write took {longest_us} us of a {map_ms} ms map"
    );
    assert_eq!(out.get("after_map_read_40"), "0 0");
    assert_eq!(out.get("after_map_read_32"), "-1 ESPIPE");
}

/// A timer signal every 50 us, whose handler writes a pipe, lands in the
/// window where the forking thread holds the library's locks (the state
/// lock in the atfork handlers, the keeper client's across the fork). The
/// handler's write takes no lock now; before, it waited for the lock its
/// own thread held and the run ended by the program's alarm (SIGALRM after
/// 60 s) within the first forks.
#[test]
fn a_signal_handler_writing_in_the_fork_window_does_not_deadlock() {
    let out = run(&["signal-fork", "100"]);
    expect(
        &out,
        &[
            ("forks", "100"),
            ("handler_wrote", "yes"),
            ("after_forks_read_40", "0 0"),
            ("after_forks_read_32", "-1 ESPIPE"),
        ],
    );
}

/// Every way to copy the queue's descriptor gives a descriptor that reads
/// as the queue; a copy closed by `close` or `close_range` is closed
/// (EBADF, not the queue's answer); its number, once taken by a pipe (and
/// a copy with a pipe `dup2`'d over it), reads the pipe.
#[test]
fn copies_of_a_queue_read_as_the_queue_and_its_reused_number_as_a_pipe() {
    let out = run(&["dups"]);
    expect(
        &out,
        &[
            ("numbers", "100 101 1 1"),
            ("dup_read_40", "0 0"),
            ("dup_read_32", "-1 ESPIPE"),
            ("dup2_read_40", "0 0"),
            ("dup2_read_32", "-1 ESPIPE"),
            ("dup3_read_40", "0 0"),
            ("dup3_read_32", "-1 ESPIPE"),
            ("dupfd_read_40", "0 0"),
            ("dupfd_read_32", "-1 ESPIPE"),
            ("dupfd_cloexec_read_40", "0 0"),
            ("dupfd_cloexec_read_32", "-1 ESPIPE"),
            ("dup_write_unknown_cookie", "-1 EINVAL"),
            ("dup3_readv_40_40", "0 0"),
            ("close_range", "0"),
            ("close_range_read_40", "-1 EBADF"),
            ("closed_read_40", "-1 EBADF"),
            ("pipe_took_queue_number", "1"),
            ("pipe_write_5", "5 0"),
            ("pipe_read_5", "5 0"),
            ("pipe_data", "abcde"),
            ("pipe_write_3", "3 0"),
            ("dup2_over_read_3", "3 0"),
            ("dup2_over_data", "xyz"),
            ("dup_after_read_40", "0 0"),
            ("dup_after_read_32", "-1 ESPIPE"),
        ],
    );
}

/// A forked child inherits the set with its memory: its reads and writes
/// of the inherited queue are the queue's.
#[test]
fn a_forked_child_reads_its_inherited_queue() {
    let out = run(&["fork"]);
    expect(
        &out,
        &[
            ("child_read_40", "0 0"),
            ("child_read_32", "-1 ESPIPE"),
            ("child_write_unknown_cookie", "-1 EINVAL"),
            ("child_exit", "0"),
            ("parent_read_40", "0 0"),
            ("parent_read_32", "-1 ESPIPE"),
        ],
    );
}

/// An exec closes the close-on-exec queue (as 6.12 makes it): its number,
/// taken by an ordinary file in the new image, reads the file. A queue
/// made inheritable stays a queue in the new image (before, the new image
/// knew of no queue and its read blocked on the stand-in eventfd until
/// the program's alarm).
#[test]
fn exec_closes_a_cloexec_queue_and_serves_a_kept_one() {
    let out = run(&["exec"]);
    expect(
        &out,
        &[
            ("queue_cloexec", "1"),
            ("image_file_read", "8 0"),
            ("image_file_data", "filedata"),
            ("image_kept_read_40", "0 0"),
            ("image_kept_read_32", "-1 ESPIPE"),
        ],
    );
}

/// `syscall(SYS_read/SYS_write/SYS_readv/SYS_writev, ...)` through libc's
/// `syscall` on the queue answers as `read`/`write`; on a pipe it is the
/// kernel's call, errno untouched by a success. Before, the queue's reads
/// went to the stand-in eventfd and blocked (the program's alarm ended it).
#[test]
fn raw_syscall_reads_and_writes_of_a_queue_are_served() {
    let out = run(&["syscall"]);
    expect(
        &out,
        &[
            ("sys_read_40", "0 0"),
            ("sys_read_32", "-1 ESPIPE"),
            ("sys_write_unknown_cookie", "-1 EINVAL"),
            ("sys_write_7", "-1 ESPIPE"),
            ("sys_readv_40_40", "0 0"),
            ("sys_writev_8", "-1 EINVAL"),
            ("sys_pipe_write", "3 errno_kept=1"),
            ("sys_pipe_read", "3 abc errno_kept=1"),
            ("sys_pipe_read_empty", "-1 EAGAIN"),
            ("sys_pipe_writev", "4 0"),
            ("sys_pipe_readv", "4 0"),
            ("sys_pipe_readv_data", "defg"),
            ("sys_read_bad_fd", "-1 EBADF"),
        ],
    );
}

/// The dups, fork, syscall and exec cases in one run, under `mode`: every
/// line as Linux 6.12 printed it.
fn answers(mode: &str) {
    let prog = build_c("faultq", mode == "trace");
    let out = softvfio_run(mode, &[], &prog, &["answers"]);
    out.assert_clean();
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests-oracle/kernel-6.12-faultq.txt");
    let want = result_lines(&std::fs::read_to_string(path).expect("recording"));
    assert_eq!(want.len(), 49);
    assert_eq!(lines(&out), want, "{mode}\nstderr:\n{}", out.stderr);
}

#[test]
fn queue_copies_fork_exec_and_syscall_answer_as_linux_under_preload() {
    answers("preload");
}

#[test]
fn queue_copies_fork_exec_and_syscall_answer_as_linux_under_trace() {
    answers("trace");
}
