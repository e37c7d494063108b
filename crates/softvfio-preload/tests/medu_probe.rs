//! The kernel conformance probe of `../shared/conformance` against a
//! mediated device: Linux 6.1 with `../shared/conformance/mdev/medu.c`
//! printed `tests-oracle/medu-6.1-probe-pin.txt` (medu's pin cache) and
//! `medu-6.1-probe-rw.txt` (`use_rw=1`, `vfio_dma_rw`); softvfio's
//! `mdev-edu` in the same two DMA modes must print the same lines, in both
//! front ends (static probe under trace, dynamic probe under preload).
//!
//! What the probe shows that an IOMMU-backed device does not: with only an
//! emulated group in the container, pgsizes is PAGE_MASK, there is no
//! IOVA_RANGE capability (so the aperture and the MSI window are mappable),
//! MAP_DMA pins and accounts nothing (memory that is unmapped, PROT_NONE or
//! read-only maps fine), a VADDR invalidation is EBUSY, and the dirty
//! bitmap reports only the pages the device pinned and wrote.

mod common;

use std::path::{Path, PathBuf};

use common::{artifacts, build_c_file, result_lines, softvfio_run, HugeMount};

const UUID: &str = "c0ffee00-0000-4000-8000-000000000001";

/// check.sh's ALLOWED: the kernel's module parameter file, which no user
/// space implementation provides at that sysfs path.
const ALLOWED: [&str; 5] = [
    "entry_limit_default",
    "entry_limit_8",
    "entry_limit_avail",
    "entry_limit_after_unmap",
    "entry_limit",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// (name, value) lines without the ALLOWED ones.
fn compared(lines: Vec<(String, String)>) -> Vec<(String, String)> {
    lines
        .into_iter()
        .filter(|(k, _)| !ALLOWED.contains(&k.as_str()))
        .collect()
}

fn probe_matches_medu(medu_mode: &str, config: &str) {
    let conf = repo().join("../shared/conformance");
    let src = conf.join("type1_probe.c");
    assert!(src.is_file(), "{} is absent", src.display());
    let Some(huge) = HugeMount::new() else {
        eprintln!("skipped: needs root and a hugetlbfs mount, as check.sh");
        return;
    };
    let _ = artifacts();
    let recorded = repo().join(format!("tests-oracle/medu-6.1-probe-{medu_mode}.txt"));
    let want = compared(result_lines(
        &std::fs::read_to_string(&recorded).expect("recording"),
    ));
    assert_eq!(want.len(), 147, "{} is one whole run", recorded.display());
    assert_eq!(want.last().map(|(k, _)| k.as_str()), Some("done"));

    let config = repo().join("tests-oracle").join(config);
    let config = config.to_str().expect("utf-8 path");
    let hugedir = huge.dir.to_str().expect("utf-8 path");
    let args = ["/dev/vfio/10", UUID, hugedir];
    for (mode, static_) in [("trace", true), ("preload", false)] {
        let probe = build_c_file(
            &src,
            if static_ {
                "type1_probe-static"
            } else {
                "type1_probe-dynamic"
            },
            static_,
        );
        let out = softvfio_run(mode, &["--config", config], &probe, &args);
        assert_eq!(out.code, Some(0), "{mode}:\n{}\n{}", out.stdout, out.stderr);
        let got = compared(result_lines(&out.stdout));
        for (i, w) in want.iter().enumerate() {
            assert_eq!(
                got.get(i),
                Some(w),
                "{mode}, medu {medu_mode}: line {i} differs from {}",
                recorded.display()
            );
        }
        assert_eq!(got.len(), want.len(), "{mode}: {}", out.stdout);
        assert!(out.stderr.contains("no leak"), "{mode}: {}", out.stderr);
    }
}

/// One test for both DMA modes: each run maps 2 MiB pages from a hugetlbfs
/// mount, and two at once could run the machine's few huge pages out.
#[test]
fn mdev_edu_answers_the_probe_as_medu_in_both_dma_modes() {
    probe_matches_medu("pin", "medu-platform.toml");
    probe_matches_medu("rw", "medu-platform-rw.toml");
}
