//! Measures the cost of interception and injection (prints; loose checks).
//! Run with `cargo test -p softvfio-trace --release --test overhead -- --nocapture`.

mod common;

use common::*;

#[test]
fn overhead() {
    let exe = build_c("bench");
    let mut toy = Toy::default();
    let out = run(&exe, &["5000"], &mut toy);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    eprintln!("{}", out.stdout);
    let kv = out.kv();
    let ns = |k: &str| kv[k].parse::<f64>().unwrap_or(f64::MAX);
    // Untraced system calls run at native speed (no stop).
    assert!(ns("ns_getppid_untraced") < 5_000.0);
    assert!(ns("ns_ioctl_other_untraced") < 5_000.0);
    // An intercepted call is a few microseconds, not milliseconds.
    assert!(ns("ns_ioctl_served") < 500_000.0);
    assert!(ns("ns_ioctl_2_injections") > ns("ns_ioctl_served"));
}
