//! Many threads, injections, a signal flood and short-lived children at
//! once: nothing is lost, nothing hangs.

mod common;

use common::*;
use softvfio_trace::Supervisor;

#[test]
fn threads_signals_children_and_injections() {
    let exe = build_c("stress");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sup = Supervisor::new();
        let mut toy = Toy::default();
        let out = run_with(&mut sup, &exe, &[], &mut toy);
        let _ = tx.send((out, toy, sup.stats()));
    });
    let (out, toy, stats) = rx
        .recv_timeout(std::time::Duration::from_secs(300))
        .expect("supervisor hung");
    eprintln!("{}{}\n{stats:?}", out.stdout, out.stderr);
    assert_eq!(out.status.code(), Some(0));
    let kv = out.kv();
    assert_eq!(kv["bad"], "0");
    assert!(kv["signals"].parse::<u64>().unwrap_or(0) > 0);
    assert_eq!(toy.release_inject_failures, 0);
    // Every object opened was released once.
    assert_eq!(toy.released.len(), toy.objs.len());
}
