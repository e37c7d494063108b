//! rust-vmm's vfio-ioctls (examples/vfio_ioctls_edu.rs) maps, unmaps and
//! checks edu DMA under `softvfio run`, in both modes.

mod common;

use common::{artifacts, softvfio_run};

fn run(mode: &str) {
    let a = artifacts();
    let out = softvfio_run(mode, &[], &a.example, &[]);
    out.assert_clean();
    for check in [
        "pci_id",
        "edu_ident",
        "dma_round_trip",
        "dma_after_unmap_blocked",
        "dma_second_mapping",
    ] {
        assert_eq!(out.get(check), "ok", "{mode}: {check}\n{}", out.stdout);
    }
    assert!(out.stdout.lines().any(|l| l == "done"), "{}", out.stdout);
    // The one DMA after the unmap faulted in the IOMMU.
    assert!(out.stderr.contains("DMA faults: 1"), "{}", out.stderr);
    assert!(
        out.stderr.contains("write iova 0x101000: NotPresent"),
        "{}",
        out.stderr
    );
}

#[test]
fn vfio_ioctls_edu_dma_under_trace() {
    run("trace");
}

#[test]
fn vfio_ioctls_edu_dma_under_preload() {
    run("preload");
}
