//! The I/OAT DMA engine (tests/platforms/ioat.toml) through the VFIO uAPI
//! in both modes: the register sequence of the VFIO selftests' ioat
//! driver with pread/pwrite, memcpy through the VT-d model, the MSI-X
//! channel interrupt, and unmapped IOVAs as IOMMU faults plus CHANERR.

mod common;

use std::path::Path;

use common::{build_c, softvfio_run};

#[test]
fn ioat_memcpy_msix_and_faults_through_the_uapi() {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/platforms/ioat.toml");
    let cfg = cfg.to_str().expect("utf-8 path");
    for (mode, static_) in [("trace", true), ("preload", false)] {
        let exe = build_c("ioat_memcpy", static_);
        let out = softvfio_run(
            mode,
            &["--config", cfg],
            &exe,
            &["/dev/vfio/4", "0000:00:04.0"],
        );
        assert_eq!(out.code, Some(0), "{mode}:\n{}\n{}", out.stdout, out.stderr);
        let want = "\
bar0_size 0x4000
config_size 0x1000
msix_count 1
id 0x20218086
version 0x33
xfercap 16
after_reset HALTED
msix_enable 0
msix_cap_enabled 1
map 0
memcpy DONE match=1
completed_desc 0x100000
msi_after_memcpy -11
storm DONE
send_msi DONE msi=1
from_unmapped HALTED chanerr=0x100 chanerr_int=0x100
to_unmapped HALTED chanerr=0x200
oversized HALTED chanerr=0x800
msi_after_errors -11
after_errors DONE
unmap 0
done
";
        assert_eq!(out.stdout, want, "{mode}: {}", out.stderr);
        // The two unmapped accesses are IOMMU faults of the device's
        // requester id (0000:00:04.0), reported at the end.
        assert!(
            out.stderr.contains(
                "DMA faults: 2\n  #0    0000:00:04.0 read iova 0x40000000: NotPresent\n  \
                 #1    0000:00:04.0 write iova 0x40000000: NotPresent\n"
            ),
            "{mode}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("no leak"), "{mode}: {}", out.stderr);
    }
}

/// Under `--sanitize`, the channel's refusals are the device's notes: each
/// halt names its CHANERR bits, the descriptor and why (a count over
/// XFERCAP; a source or destination the IOMMU faulted), next to the two
/// IOMMU faults, which are classed as the program's (never mapped).
#[test]
fn sanitizer_names_the_channel_errors_as_device_behaviour() {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/platforms/ioat.toml");
    let cfg = cfg.to_str().expect("utf-8 path");
    for (mode, static_) in [("trace", true), ("preload", false)] {
        let exe = build_c("ioat_memcpy", static_);
        let out = softvfio_run(
            mode,
            &["--config", cfg, "--sanitize"],
            &exe,
            &["/dev/vfio/4", "0000:00:04.0"],
        );
        assert_eq!(out.code, Some(0), "{mode}:\n{}\n{}", out.stdout, out.stderr);
        let note = "device: 0000:00:04.0 halted its DMA channel (device behaviour: CHANERR set, \
                    the descriptor not carried out): CHANERR";
        let want = [
            format!(
                "{note} 0x100 at descriptor 0x100000: source read: DMA read fault at 0x40000000 \
                 after 0 bytes: DMA fault #0: not present on read of IOVA 0x40000000 by device 0x0020"
            ),
            format!(
                "{note} 0x200 at descriptor 0x100000: destination write: DMA write fault at \
                 0x40000000 after 0 bytes: DMA fault #1: not present on write of IOVA 0x40000000 \
                 by device 0x0020"
            ),
            format!(
                "{note} 0x800 at descriptor 0x100000: copy of 0x10001 bytes (XFERCAP allows 1 to \
                 0x10000)"
            ),
        ];
        let notes: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("device: 0000:00:04.0"))
            .collect();
        assert_eq!(notes, want, "{mode}: {}", out.stderr);
        for class in ["DMA fault #0 [never-mapped]", "DMA fault #1 [never-mapped]"] {
            assert!(out.stderr.contains(class), "{mode}: {}", out.stderr);
        }
        // The selftest exits with its container and group open (nothing
        // mapped): both are leaks.
        for leak in ["leak: container still open, created from ", "leak: group "] {
            assert!(out.stderr.contains(leak), "{mode}: {leak}: {}", out.stderr);
        }
        assert!(
            out.stderr
                .contains("sanitizer: 2 fault(s), 0 stale mapping(s), 2 leak(s), 3 device note(s)"),
            "{mode}: {}",
            out.stderr
        );
    }
}
