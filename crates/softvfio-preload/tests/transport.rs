//! The transport of forwarded calls after the keeper hand-off (preload,
//! docs/DESIGN.md §5, "The transport"): a shared-memory area per
//! connection with spin-then-futex waits. Each case runs with the sides
//! spinning (up to 20 µs) and never spinning (every wait a futex wait), so both
//! paths are taken whatever the machine's load.

mod common;

use common::{build_c, preloaded, softvfio_run, Output};

const GROUP: &str = "/dev/vfio/3";
const BDF: &str = "0000:00:03.0";
const SPINS: [&str; 2] = ["20000", "0"];

fn run(case: &str, spin: &str) -> Output {
    let exe = build_c("transport", false);
    softvfio_run("preload", &[], &exe, &[case, GROUP, BDF, spin])
}

fn expect(out: &Output, want: &[(&str, &str)]) {
    for (k, v) in want {
        assert_eq!(
            out.get(k),
            *v,
            "{k}\nstdout:\n{}\nstderr:\n{}",
            out.stdout,
            out.stderr
        );
    }
}

/// The calls go through the shared area (one mapping of it; a forked
/// child has its own, not its parent's), and threads of one process
/// calling at once (BAR reads and MAP+UNMAP pairs at their own IOVAs) get
/// every answer right.
#[test]
fn threads_calling_at_once_share_one_connection() {
    for spin in SPINS {
        let out = run("threads", spin);
        expect(
            &out,
            &[
                ("areas_mapped", "1"),
                ("child_areas_mapped", "1 ok"),
                ("threads_wrong", "0"),
            ],
        );
        out.assert_clean();
    }
}

/// A signal every 200 µs (handler without SA_RESTART) while calls wait
/// for the keeper: the wait resumes; no call fails, none gives EINTR (a
/// VFIO pread or ioctl on Linux does not either).
#[test]
fn a_signal_during_the_wait_resumes_it() {
    for spin in SPINS {
        let out = run("signal", spin);
        expect(
            &out,
            &[
                ("signal_wrong", "0"),
                ("signal_eintr", "0"),
                ("signal_delivered", "yes"),
            ],
        );
        out.assert_clean();
    }
}

/// Callers SIGKILLed in the middle of calls: the keeper neither hangs nor
/// leaks (the end report's release is clean) and answers the next caller
/// at once.
#[test]
fn callers_killed_mid_call_leave_the_keeper_serving() {
    for spin in SPINS {
        let out = run("caller_killed", spin);
        expect(
            &out,
            &[
                ("killed_callers", "12"),
                ("after_kills_read", "ok"),
                ("after_kills_map_unmap", "0"),
                ("after_kills_prompt", "yes"),
                ("after_kills_unmap_left", "0"),
            ],
        );
        out.assert_clean();
    }
}

/// The keeper SIGKILLed while a thread waits for its answer: that call
/// and the next give EIO within a second, nothing hangs.
#[test]
fn a_dead_keeper_gives_eio() {
    let exe = build_c("transport", false);
    for spin in SPINS {
        let out = preloaded(&exe, &["keeper_killed", GROUP, BDF, spin], &[]);
        expect(
            &out,
            &[
                ("keeper_found", "yes"),
                ("waiting_caller_gets", "EIO"),
                ("waiting_caller_prompt", "yes"),
                ("next_call_gets", "EIO"),
            ],
        );
        assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    }
}
