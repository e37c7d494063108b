//! Calls served through seccomp user notification (`Command::user_notification`):
//! the same answers as at a ptrace stop, descriptors installed with
//! `SECCOMP_IOCTL_NOTIF_ADDFD`, no injection possible, and the ptrace
//! stops kept for the rest.

mod common;

use common::*;
use softvfio_trace::{exit_code, Command, Supervisor};
use std::os::fd::OwnedFd;

fn io(n: u32) -> u32 {
    (0x3b << 8) | n
}

#[test]
fn notified_calls_answer_as_at_a_ptrace_stop() {
    let exe = build_c("notify");
    let mut sup = Supervisor::new();
    let mut toy = Toy {
        injector: Some(sup.injector()),
        ..Toy::default()
    };
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let out_path = dir.join(format!("notify-out-{}", std::process::id()));
    let file = std::fs::File::create(&out_path).expect("create");
    let mut cmd = Command::new(&exe);
    cmd.stdout(OwnedFd::from(file));
    // 105 and 102 stay at ptrace stops; the rest is notified.
    let notified = [io(100), io(101), io(103), io(112), io(116), io(117)];
    cmd.user_notification(Some(&notified));
    let status = sup.run(cmd, &mut toy).expect("run");
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    eprintln!("{stdout}");
    assert_eq!(exit_code(status), 0);
    let kv: std::collections::HashMap<&str, &str> =
        stdout.lines().filter_map(|l| l.split_once(' ')).collect();
    let want: &[(&str, &str)] = &[
        ("group_fd_ok", "1"),
        ("is_socket", "1"),
        ("group_cloexec", "0"),
        ("group_o_cloexec", "1"),
        ("objects_differ", "1"),
        ("enoent", "1"),
        ("api", "0"),
        ("rw_ret", "0"),
        ("rw_out", "58"), // in * 2 + argsz
        ("rw_efault", "1"),
        ("inject_refused", "0"),
        ("pwrite", "5"),
        ("pread", "5"),
        ("pread_match", "1"),
        ("pread_efault", "1"),
        ("pread_negative", "1"),
        ("preadv", "5"),
        ("preadv_match", "1"),
        ("devfd_ok", "1"),
        ("devfd_cloexec", "1"),
        ("devfd_is_device", "1"),
        ("object_of_fd", "1"),
        ("status_vmlck", "1"),
        ("plain_file", "1"),
        ("threads_bad", "0"),
        ("child_status", "7"),
        ("released_by_close", "1"),
        ("done", "1"),
    ];
    let bad: Vec<String> = want
        .iter()
        .filter(|(k, v)| kv.get(k) != Some(v))
        .map(|(k, v)| format!("{k}: want {v}, got {:?}", kv.get(k)))
        .collect();
    assert!(bad.is_empty(), "mismatches:\n{}", bad.join("\n"));
    let st = sup.stats();
    // Opens, the listed ioctls and 2000+ preads came by notification.
    assert!(st.notified >= 2000, "{st:?}");
    // Every object was released exactly once by the end.
    let mut ids: Vec<_> = toy.released.iter().map(|(o, _)| *o).collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "an object was released twice");
    assert_eq!(n, toy.objs.len());
}

#[test]
fn without_user_notification_nothing_is_notified() {
    let exe = build_c("notify");
    let mut sup = Supervisor::new();
    let mut toy = Toy {
        injector: Some(sup.injector()),
        ..Toy::default()
    };
    let out = run_with(&mut sup, &exe, &[], &mut toy);
    assert_eq!(exit_code(out.status), 0, "{}", out.stderr);
    let kv = out.kv();
    // At a ptrace stop the 100 injections of request 112 run.
    assert_eq!(kv.get("inject_refused").map(String::as_str), Some("100"));
    assert_eq!(kv.get("threads_bad").map(String::as_str), Some("0"));
    assert_eq!(sup.stats().notified, 0);
}

/// A handler that panics at the program's first ioctl on `/dev/vfio/3`,
/// run with `notified` requests served by user notification: the panic
/// reaches the caller, and the program is killed and reaped (no hang).
fn handler_panic_kills_and_reaps(notified: &[u32]) {
    use softvfio_trace::{Errno, Handler, ObjectId, OpenReply, OpenRequest, Tracee};
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::Arc;
    struct Panicky(Arc<AtomicI32>);
    impl Handler for Panicky {
        fn open(
            &mut self,
            _t: &mut Tracee<'_>,
            req: &OpenRequest,
        ) -> Option<Result<OpenReply, Errno>> {
            (req.path == std::path::Path::new("/dev/vfio/3"))
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
    let exe = build_c("notify");
    let pid = Arc::new(AtomicI32::new(0));
    let mut h = Panicky(pid.clone());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut cmd = Command::new(&exe);
        cmd.user_notification(Some(notified));
        let _ = Supervisor::new().run(cmd, &mut h);
    }));
    assert!(r.is_err(), "the panic reaches the caller");
    let pid = pid.load(Ordering::SeqCst);
    assert!(pid > 0);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "program killed and reaped"
    );
}

#[test]
fn handler_panic_on_the_notification_thread_kills_the_program() {
    handler_panic_kills_and_reaps(&[io(103), io(100)]);
}

/// A handler panic at a ptrace stop while the notification thread waits in
/// NOTIF_RECV (Linux 6.6+): killing and reaping the program wakes that
/// thread. The opens are notified; request 103, the first ioctl, stops.
#[test]
fn handler_panic_at_a_ptrace_stop_ends_the_notification_thread() {
    handler_panic_kills_and_reaps(&[io(100)]);
}

/// Runs `fdcache.c` with user notification; its key/value lines and the
/// run's counters.
fn run_fdcache(
    arg: &str,
    notify: bool,
) -> (
    std::collections::HashMap<String, String>,
    softvfio_trace::RunStats,
) {
    let exe = build_c("fdcache");
    let mut sup = Supervisor::new();
    let mut toy = Toy {
        injector: Some(sup.injector()),
        ..Toy::default()
    };
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let out_path = dir.join(format!("fdcache-out-{}-{arg}-{notify}", std::process::id()));
    let file = std::fs::File::create(&out_path).expect("create");
    let mut cmd = Command::new(&exe);
    cmd.arg(arg).stdout(OwnedFd::from(file));
    if notify {
        cmd.user_notification(Some(&[]));
    }
    let status = sup.run(cmd, &mut toy).expect("run");
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    assert_eq!(exit_code(status), 0, "{stdout}");
    let kv = stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (kv, sup.stats())
}

fn check_fdcache_answers(kv: &std::collections::HashMap<String, String>) {
    let want: &[(&str, &str)] = &[
        ("reads", "100"),
        ("thread_reads", "50"),
        ("dup2", "1"),
        ("after_dup2", "2"),
        ("reads2", "10"),
        ("dup3", "1"),
        ("after_dup3", "2"),
        ("reads3", "10"),
        ("close_range", "1"),
        ("reused3", "1"),
        ("after_close_range", "2"),
        ("reads4", "10"),
        ("reused4", "1"),
        ("after_close", "2"),
        ("reused5", "1"),
        ("after_reopen", "1"),
        ("dup2_dev", "1"),
        ("after_dup2_dev", "1"),
        ("done", "1"),
    ];
    let bad: Vec<String> = want
        .iter()
        .filter(|(k, v)| kv.get(*k).map(String::as_str) != Some(*v))
        .map(|(k, v)| format!("{k}: want {v}, got {:?}", kv.get(*k)))
        .collect();
    assert!(bad.is_empty(), "mismatches:\n{}", bad.join("\n"));
}

/// A notified call finds its descriptor in the cache, and every call that
/// replaces a descriptor (dup2, dup3, close_range, close) is seen: the
/// next call reaches what the number names now.
#[test]
fn descriptor_cache_follows_descriptor_changes() {
    let (kv, st) = run_fdcache("plain", true);
    check_fdcache_answers(&kv);
    // 180 device preads, each thread's first one (and the first after each
    // change) read from /proc: most are cache hits.
    assert!(st.fd_cache_hits >= 150, "{st:?}");
}

/// After io_uring_setup (a ring can close descriptors unseen) the cache is
/// off: the same answers, every one read from /proc.
#[test]
fn descriptor_cache_off_after_io_uring_setup() {
    let (kv, st) = run_fdcache("uring", true);
    check_fdcache_answers(&kv);
    assert_eq!(st.fd_cache_hits, 0, "{st:?}");
}

/// Without a listener, dup2 and the like run without a stop: nothing is
/// cached, every call at its ptrace stop reads /proc, same answers.
#[test]
fn descriptor_cache_needs_the_listener() {
    let (kv, st) = run_fdcache("plain", false);
    check_fdcache_answers(&kv);
    assert_eq!(st.notified, 0, "{st:?}");
    assert_eq!(st.fd_cache_hits, 0, "{st:?}");
}
