//! The lifetime of interrupt eventfds under `softvfio run`, in both modes,
//! as Linux 6.1 gives it (`tests-oracle/kernel-6.1-vfio-pci.txt` covers the
//! answers; this covers the references): the engine keeps its own reference
//! to a trigger, so closing the program's descriptor does not stop delivery;
//! every reference, watcher thread and descriptor the engine took for the
//! device is released with the device's last close; a program that exits
//! with interrupts, an unmask eventfd and an ioeventfd still enabled leaves
//! nothing behind (the end report's leak check).

mod common;

use common::{build_c, softvfio_run};

fn run(mode: &str, static_: bool, args: &[&str]) -> common::Output {
    let exe = build_c("irq_lifetime", static_);
    let mut all = vec!["/dev/vfio/3", "0000:00:03.0"];
    all.extend_from_slice(args);
    softvfio_run(mode, &[], &exe, &all)
}

fn check_closed(mode: &str, static_: bool) {
    let out = run(mode, static_, &[]);
    assert_eq!(out.get("intx_enable"), "0");
    assert_eq!(out.get("intx_after_close_events"), "1");
    assert_eq!(out.get("unmask_eventfd"), "0");
    assert_eq!(out.get("ioeventfd"), "0");
    assert_eq!(out.get("ioeventfd_landed"), "0xedcba987");
    assert_eq!(out.get("fds_after_close"), "0");
    assert_eq!(out.get("intx_after_device_close_events"), "0");
    assert_eq!(out.get("done"), "1");
    out.assert_clean();
}

fn check_exit_enabled(mode: &str, static_: bool) {
    let out = run(mode, static_, &["exit-enabled"]);
    assert_eq!(out.get("ioeventfd_landed"), "0xedcba987");
    assert_eq!(out.get("exiting"), "1");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // What the program left open is released (device included: its
    // triggers and watchers go with it) and nothing stays pinned.
    assert!(
        out.stderr
            .contains("after release: 0 pinned pages, 0 accounted pages: no leak"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("left open by the program:"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("left open by the program: nothing"),
        "{}",
        out.stderr
    );
}

#[test]
fn trace_trigger_outlives_program_descriptor_and_device_close_releases_it() {
    check_closed("trace", true);
}

#[test]
fn preload_trigger_outlives_program_descriptor_and_device_close_releases_it() {
    check_closed("preload", false);
}

#[test]
fn trace_exit_with_interrupts_enabled_leaves_nothing() {
    check_exit_enabled("trace", true);
}

#[test]
fn preload_exit_with_interrupts_enabled_leaves_nothing() {
    check_exit_enabled("preload", false);
}
