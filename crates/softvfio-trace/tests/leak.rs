//! Opening and closing handler objects many times leaks no descriptor,
//! neither in the program nor in the supervisor. Alone in its test binary
//! so that no other test opens descriptors while it counts.

mod common;

use common::*;
use softvfio_trace::Supervisor;

#[test]
fn open_close_5000_times_leaks_nothing() {
    let exe = build_c("churn");
    // Warm up (lazily opened descriptors of the test process itself).
    let _ = run(&exe, &["10"], &mut Toy::default());
    let before = fd_count();
    let mut sup = Supervisor::new();
    let mut toy = Toy::default();
    let out = run_with(&mut sup, &exe, &["5000"], &mut toy);
    let after = fd_count();
    assert_eq!(out.status.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let kv = out.kv();
    assert_eq!(kv["bad"], "0");
    assert_eq!(kv["before"], kv["after"], "program descriptors leaked");
    assert_eq!(before, after, "supervisor descriptors leaked");
    assert_eq!(toy.opens, 5000);
    assert_eq!(toy.released.len(), 5000);
    assert!(
        toy.released.iter().all(|(_, with_tracee)| *with_tracee),
        "released at the close, thread stopped"
    );
    let st = sup.stats();
    assert_eq!(st.installed, 5000);
    assert_eq!(st.released, 5000);
    eprintln!("stats: {st:?}");
}
