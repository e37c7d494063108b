//! The conformance probe (a static binary) runs under the supervisor with a
//! handler that claims nothing: everything passes through to the kernel of
//! this machine, which has no VFIO, so the probe stops where it must.

mod common;

use common::*;
use softvfio_trace::PassThrough;
use std::path::Path;

#[test]
fn type1_probe_passes_through() {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/type1_probe.c");
    if !src.exists() {
        eprintln!("skipping: {} not found", src.display());
        return;
    }
    if Path::new("/dev/vfio/vfio").exists() {
        eprintln!("skipping: this machine has a real /dev/vfio/vfio");
        return;
    }
    let exe = build_c_file(&src, "type1_probe");
    let out = run(&exe, &["/dev/vfio/3", "0000:00:03.0"], &mut PassThrough);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr
            .contains("open container: No such file or directory"),
        "stderr: {}",
        out.stderr
    );
    // case_container ran against the real kernel first: open failed, so
    // every ioctl on fd -1 failed.
    assert!(out.stdout.contains("api_version"), "stdout: {}", out.stdout);
    assert!(out
        .stdout
        .lines()
        .any(|l| l.starts_with("api_version") && l.trim_end().ends_with("-1")));
}
