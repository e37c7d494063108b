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
