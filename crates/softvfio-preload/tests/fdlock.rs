//! Descriptor calls (`close`, `dup`, `fcntl`, `fstat`, `ioctl`) on
//! descriptors that are not VFIO files, while the process holds VFIO
//! files: answered without the library's state lock (crate `streams`'
//! "ours" set), and right across descriptor number reuse.

mod common;

use common::{build_c, softvfio_run, Output};

fn run(args: &[&str]) -> Output {
    let out = softvfio_run("preload", &[], &build_c("fdlock", false), args);
    out.assert_clean();
    out
}

fn number(out: &Output, key: &str) -> f64 {
    out.get(key)
        .parse()
        .unwrap_or_else(|_| panic!("{key}: {}", out.stdout))
}

/// One thread pins 512 MiB in a `MAP_DMA` (the state lock held) while
/// another does close(dup()), fcntl(F_GETFL), fstat and ioctl(FIONREAD)
/// of a pipe once a millisecond. Before, each of those took the state lock
/// for any descriptor: none returned during the map.
#[test]
fn pipe_descriptor_calls_return_while_another_thread_is_in_a_long_map() {
    let out = run(&["busy-map", "/dev/vfio/3", "512"]);
    assert_eq!(out.get("map"), "0");
    assert_eq!(out.get("pipe_answers"), "0");
    let map_ms = number(&out, "map_ms");
    assert!(map_ms >= 20.0, "the map took {map_ms} ms");
    let during = number(&out, "calls_during_map");
    let longest_us = number(&out, "longest_calls_us");
    assert!(
        during >= 5.0,
        "{during} rounds during a {map_ms} ms map\n{}",
        out.stdout
    );
    assert!(
        longest_us * 2.0 < map_ms * 1000.0,
        "a round took {longest_us} us of a {map_ms} ms map"
    );
}

/// A timer signal every 50 us whose handler does close(dup(pipe)) and
/// fstat of the pipe lands in the fork window (the state lock held by the
/// forking thread): no deadlock, the pipe's answers.
#[test]
fn a_signal_handler_dup_close_fstat_in_the_fork_window_does_not_deadlock() {
    let out = run(&["signal-fork", "/dev/vfio/3", "100"]);
    assert_eq!(out.get("forks"), "100");
    assert_eq!(out.get("handler_called"), "yes");
    assert_eq!(out.get("handler_bad"), "0");
    assert_eq!(out.get("container_api"), "0");
}

/// A container's number reused by a pipe answers as the pipe; a container
/// copy `dup2`'d or `F_DUPFD`'d onto a number answers as the container; a
/// pipe put back over it answers as the pipe.
#[test]
fn reused_numbers_answer_as_their_new_object() {
    let out = run(&["reuse", "/dev/vfio/3"]);
    for (k, v) in [
        ("pipe_took_container_number", "1"),
        ("reused_pipe_answers", "0"),
        ("reused_lseek", "ESPIPE"),
        ("copy_api", "0"),
        ("dup2_over_pipe", "1"),
        ("dup2_api", "0"),
        ("pipe_over_container_answers", "0"),
        ("dupfd_api", "0"),
        ("dupfd_pipe_same_number", "1"),
        ("dupfd_pipe_answers", "0"),
        ("group_still_viable", "1"),
    ] {
        assert_eq!(out.get(k), v, "{k}\n{}", out.stdout);
    }
}
