//! End-to-end behaviour of the supervisor with a toy handler.

mod common;

use common::*;
use softvfio_trace::{exit_code, Errno, InjectError, PassThrough, Supervisor};

fn expect(kv: &std::collections::HashMap<String, String>, key: &str, want: &str) {
    assert_eq!(kv.get(key).map(String::as_str), Some(want), "key {key}");
}

#[test]
fn basic_program_under_toy_handler() {
    let exe = build_c("basic");
    let mut sup = Supervisor::new();
    let mut toy = Toy {
        injector: Some(sup.injector()),
        ..Toy::default()
    };
    let out = run_with(&mut sup, &exe, &[], &mut toy);
    eprintln!("stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    assert_eq!(exit_code(out.status), 0);
    let kv = out.kv();
    let checks: &[(&str, &str)] = &[
        ("group_fd_ok", "1"),
        ("container_fd_ok", "1"),
        ("fstat_ok", "1"),
        ("is_socket", "1"),
        ("api", "0"),
        ("unknown_ret", "-1"),
        ("unknown_errno", "25"), // ENOTTY
        ("rw_ret", "0"),
        ("rw_out", "58"),
        ("badptr_ret", "-1"),
        ("badptr_errno", "14"), // EFAULT
        ("fionread", "0"),
        ("fionread_val", "0"),
        ("read_eof", "0"),
        ("ids_differ", "1"),
        ("dup_same_obj", "1"),
        ("released_after_first_close", "0"),
        ("dupfd_100", "1"),
        ("dupfd_same_obj", "1"),
        ("released_after_second_close", "0"),
        ("released_after_last_close", "1"),
        ("ioctl_closed_errno", "9"), // EBADF from the kernel
        ("reopen_saw_release", "1"),
        ("released_after_dup2", "1"),
        ("devfd_ok", "1"),
        ("devfd_cloexec", "1"),
        ("devfd_is_device", "1"),
        ("object_of_fd", "1"),
        ("object_of_fd_stdin_errno", "9"),
        ("open4", "-1"),
        ("open4_errno", "2"), // ENOENT
        ("openat_rel", "0"),  // a group, not a device
        ("pwrite", "5"),
        ("pread", "5"),
        ("pread_match", "1"),
        ("pread_eof", "0"),
        ("pread_short", "6"),
        ("preadv", "5"),
        ("preadv_match", "1"),
        ("pwritev", "4"),
        ("pwritev_match", "1"),
        ("pread_efault", "-1"),
        ("pread_efault_errno", "14"),
        ("pread_container_errno", "22"),
        ("pread_negative_errno", "22"),
        ("vmlck_self", "4242"),
        ("vmlck_thread_self", "4242"),
        ("status_has_name", "1"),
        ("status_write_fails", "1"),
        ("stat_not_claimed", "1"),
        ("inject_then_pass_ok", "1"),
        ("file_io_ok", "1"),
        ("mlock_vmlck", "64"),
        ("munlock_vmlck", "0"),
        ("inject_many", "100"),
        ("injector_other_thread_refused", "1"),
        ("tiny_stack_open_ok", "1"),
        ("sigqueue_ioctl", "0"),
        ("sigqueue_count", "1"),
        ("sigqueue_code_ok", "1"),
        ("sigqueue_value", "4242"),
        ("tkill_ioctl", "0"),
        ("tkill_count", "1"),
        ("tkill_code_ok", "1"),
        ("tkill_pid_ok", "1"),
        ("plain_signal_count", "1"),
        ("fork_child_ok", "1"),
        ("fork_no_release", "0"),
        ("child_exec_status", "3"),
        ("posix_spawn_status", "4"),
        ("child_stopped", "1"),
        ("child_cont_exit", "5"),
        ("threads_bad", "0"),
        ("done", "1"),
    ];
    let mut bad = Vec::new();
    for (k, v) in checks {
        if kv.get(*k).map(String::as_str) != Some(*v) {
            bad.push(format!("{k}: want {v}, got {:?}", kv.get(*k)));
        }
    }
    assert!(bad.is_empty(), "mismatches:\n{}", bad.join("\n"));
    // Every object was released exactly once, and the run accounted for it.
    let mut ids: Vec<_> = toy.released.iter().map(|(o, _)| *o).collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "an object was released twice");
    assert_eq!(n, toy.objs.len(), "every object released by the end");
    // Closes inside the program release with the thread stopped; the last
    // ones (exit) without.
    assert!(toy.released.iter().filter(|(_, with_t)| *with_t).count() >= 4);
    assert_eq!(toy.release_inject_failures, 0);
    let st = sup.stats();
    assert!(st.injected >= 100);
    assert!(st.requeued >= 2, "signal stash path exercised: {st:?}");
    assert_eq!(st.released as usize, n);
    assert!(toy.forked.len() >= 4, "forks seen: {:?}", toy.forked);
    assert!(toy.execs.len() >= 3, "execs seen: {:?}", toy.execs);
    assert!(toy.exited.len() >= 5, "exits seen: {:?}", toy.exited);
    // After the run the injector refuses politely.
    assert_eq!(sup.injector().mlock(0, 4096), Err(Errno::ESRCH));
    assert_eq!(
        sup.injector().inject_syscall(libc::SYS_getpid, [0; 6]),
        Err(InjectError::NotStopped)
    );
}

#[test]
fn exit_codes_and_signals() {
    let exe = build_c("die");
    let out = run(&exe, &["exit7"], &mut PassThrough);
    assert_eq!(out.status.code(), Some(7));
    let out = run(&exe, &["segv"], &mut PassThrough);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV));
    assert_eq!(exit_code(out.status), 128 + libc::SIGSEGV);
    let out = run(&exe, &["kill"], &mut PassThrough);
    assert_eq!(out.status.signal(), Some(libc::SIGKILL));
    assert_eq!(exit_code(out.status), 137);
    // Killed while holding a handler object: the object is released.
    let mut toy = Toy::default();
    let out = run(&exe, &["kill-holding"], &mut toy);
    assert_eq!(out.status.signal(), Some(libc::SIGKILL));
    assert_eq!(toy.objs.len(), 1);
    assert_eq!(toy.released.len(), 1);
    assert!(
        !toy.released[0].1,
        "released after exit, without a stopped thread"
    );
    // A non-leader thread execs (the thread id changes).
    let out = run(&exe, &["thread-exec"], &mut PassThrough);
    assert_eq!(out.status.code(), Some(7));
    // Close-on-exec objects are released across exec, others survive it.
    let mut toy = Toy::default();
    let out = run(&exe, &["exec-cloexec"], &mut toy);
    assert_eq!(out.status.code(), Some(1), "releases seen after exec");
    assert_eq!(toy.released.len(), 2);
    assert_eq!(toy.release_inject_failures, 0);
    // Threads exiting with exit_group from a non-main thread.
    let out = run(&exe, &["thread-exit"], &mut PassThrough);
    assert_eq!(out.status.code(), Some(9));
}

/// Runs `f` on a thread; fails the test if it takes longer than `secs`.
fn with_timeout<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .expect("supervisor hung")
}

#[test]
fn process_exits_while_a_thread_is_in_the_handler() {
    let exe = build_c("die");
    for (how, code) in [
        ("exit-during-ioctl-leader", 9),
        ("exit-during-ioctl-thread", 9),
    ] {
        let exe = exe.clone();
        let (status, toy) = with_timeout(30, move || {
            let mut toy = Toy::default();
            let out = run(&exe, &[how], &mut toy);
            (out.status, toy)
        });
        assert_eq!(status.code(), Some(code), "{how}");
        assert_eq!(toy.released.len(), 1, "{how}");
        assert_eq!(toy.inject_failures, vec![InjectError::Gone], "{how}");
    }
}

#[test]
fn spawn_errors() {
    let mut sup = Supervisor::new();
    let err = sup
        .run(
            softvfio_trace::Command::new("/nonexistent/program"),
            &mut PassThrough,
        )
        .expect_err("must fail");
    match err {
        softvfio_trace::TraceError::Spawn { errno, .. } => assert_eq!(errno, Errno::ENOENT),
        e => panic!("unexpected error {e}"),
    }
    let err = sup
        .run(
            softvfio_trace::Command::new("no-such-program-in-path-xyz"),
            &mut PassThrough,
        )
        .expect_err("must fail");
    assert!(matches!(
        err,
        softvfio_trace::TraceError::Spawn {
            errno: Errno::ENOENT,
            ..
        }
    ));
}

#[test]
fn dynamic_binary_passes_through() {
    // A dynamically linked program from PATH: its loader's opens and preads
    // stop in the supervisor and pass through.
    let out = run(
        std::path::Path::new("/bin/sh"),
        &["-c", "echo hello; exit 4"],
        &mut PassThrough,
    );
    assert_eq!(out.stdout, "hello\n");
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn close_flush_path() {
    // The path used on kernels before 6.7 (one extra trip through user
    // mode before looking for releases) must give the same results.
    let exe = build_c("basic");
    let mut sup = Supervisor::new();
    sup.set_close_flush(true);
    let mut toy = Toy {
        injector: Some(sup.injector()),
        ..Toy::default()
    };
    let out = run_with(&mut sup, &exe, &[], &mut toy);
    assert_eq!(exit_code(out.status), 0, "{}", out.stdout);
    let kv = out.kv();
    expect(&kv, "released_after_first_close", "0");
    expect(&kv, "released_after_second_close", "0");
    expect(&kv, "released_after_last_close", "1");
    expect(&kv, "reopen_saw_release", "1");
    expect(&kv, "done", "1");
}

#[test]
fn handler_panic_kills_and_reaps_the_program() {
    use softvfio_trace::{Handler, ObjectId, OpenReply, OpenRequest, Tracee};
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::Arc;
    struct Panicky(Arc<AtomicI32>);
    impl Handler for Panicky {
        fn open(
            &mut self,
            _t: &mut Tracee<'_>,
            req: &OpenRequest,
        ) -> Option<Result<OpenReply, Errno>> {
            (req.path == std::path::Path::new("/dev/vfio/vfio"))
                .then_some(Ok(OpenReply::Object(ObjectId(1))))
        }
        fn ioctl(
            &mut self,
            t: &mut Tracee<'_>,
            _obj: ObjectId,
            _request: u64,
            _arg: u64,
        ) -> Result<i64, Errno> {
            self.0.store(t.pid(), Ordering::SeqCst);
            panic!("handler bug");
        }
    }
    let exe = build_c("bench");
    let pid = Arc::new(AtomicI32::new(0));
    let mut h = Panicky(pid.clone());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&exe, &["10"], &mut h);
    }));
    assert!(r.is_err());
    let pid = pid.load(Ordering::SeqCst);
    assert!(pid > 0);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "program killed and reaped"
    );
}
