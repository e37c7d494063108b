//! The DMA sanitizer's end-to-end checks on iommufd (`programs/iommufd_bugs.c`:
//! edu through its cdev bound to `/dev/iommu`), shared by both modes:
//! IOAS_MAP, IOAS_COPY and IOAS_UNMAP feed the same history as type1's
//! calls, with the program's call sites.

use std::path::{Path, PathBuf};

use super::{has_line, run};

/// The buggy iommufd driver's source.
pub const SOURCE: &str = include_str!("../programs/iommufd_bugs.c");

/// Builds `iommufd_bugs.c` (debug info, frame pointers) into `dir`;
/// `None` without gcc.
pub fn build(dir: &Path) -> Option<PathBuf> {
    super::compile(
        dir,
        "iommufd_bugs",
        "iommufd_bugs.c",
        SOURCE,
        super::DEBUG_FLAGS,
    )
}

fn line_of(needle: &str, from: usize) -> usize {
    super::line_in(SOURCE, "iommufd_bugs.c", needle, from)
}

/// `function (<dir>/iommufd_bugs.c:LINE)` (NUL: any directory).
fn frame(function: &str, line: usize) -> String {
    format!("{function} (/\0/iommufd_bugs.c:{line})")
}

/// The frame of `main`'s call `call` in its branch for `scenario`.
fn main_frame(scenario: &str, call: &str) -> String {
    let start = line_of(&format!("!strcmp(what, \"{scenario}\")"), 0);
    frame("main", line_of(call, start))
}

fn map_frame() -> String {
    frame("map_area", line_of("ioctl(iommufd, IOAS_MAP", 0))
}

fn unmap_frame() -> String {
    frame("unmap_area", line_of("ioctl(iommufd, IOAS_UNMAP", 0))
}

fn assert_line(text: &str, parts: &[&str]) {
    assert!(has_line(text, parts), "no line with {parts:?} in:\n{text}");
}

fn summary(faults: usize, leaks: usize) -> String {
    format!("sanitizer: {faults} fault(s), 0 stale mapping(s), {leaks} leak(s), 0 device note(s)")
}

/// DMA after IOAS_UNMAP: the map and the unmap with their call sites.
pub fn after_unmap(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "after-unmap", &["--sanitize=strict"]);
    assert_eq!(code, 1, "strict: a fault fails the run\n{err}");
    assert_line(&err, &["DMA fault #0 [use-after-unmap]: device 0000:00:03.0 (rid 0x0018) write of 256 bytes at IOVA 0x100000: not present"]);
    assert_line(&err, &["  DMA after unmap: IOVA 0x100000 lies in IOVA 0x100000-0x100fff (4 KiB), no longer mapped:"]);
    assert_line(
        &err,
        &[
            "  mapped at ",
            " ms by IOAS_MAP (vaddr 0x",
            ", size 4 KiB, prot rw) from ",
            &map_frame(),
            " <- ",
            &main_frame("after-unmap", "map_area("),
        ],
    );
    assert_line(
        &err,
        &[
            "  unmapped at ",
            " ms after the map) by IOAS_UNMAP from ",
            &unmap_frame(),
            " <- ",
            &main_frame("after-unmap", "unmap_area("),
        ],
    );
    assert_line(&err, &[&summary(1, 0)]);
}

/// DMA into an area IOAS_COPY made and IOAS_UNMAP removed.
pub fn copy_unmap(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "copy-unmap", &["--sanitize=strict"]);
    assert_eq!(code, 1, "{err}");
    assert_line(&err, &["DMA fault #0 [use-after-unmap]: device 0000:00:03.0 (rid 0x0018) write of 256 bytes at IOVA 0x200000: not present"]);
    assert_line(
        &err,
        &[
            "  mapped at ",
            " ms by IOAS_COPY (vaddr 0x",
            ", size 4 KiB, prot rw) from ",
            &frame("copy_area", line_of("ioctl(iommufd, IOAS_COPY", 0)),
            " <- ",
            &main_frame("copy-unmap", "copy_area("),
        ],
    );
    assert_line(
        &err,
        &[
            " by IOAS_UNMAP from ",
            &unmap_frame(),
            " <- ",
            &main_frame("copy-unmap", "unmap_area(ioas, 0x200000"),
        ],
    );
    assert_line(&err, &[&summary(1, 0)]);
}

/// A DMA where no area ever was: the nearest area named.
pub fn never_mapped(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "never-mapped", &["--sanitize"]);
    assert_eq!(code, 0, "not strict\n{err}");
    assert_line(
        &err,
        &[
            "  IOVA 0x300000 was never mapped; nearest mappings: IOVA 0x100000-0x100fff (4 KiB, mapped at ",
            " ms from ",
            &map_frame(),
            " <- ",
            &main_frame("never-mapped", "map_area("),
        ],
    );
}

/// The device writes an area mapped without IOMMU_IOAS_MAP_WRITEABLE.
pub fn read_only(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "read-only", &["--sanitize=strict"]);
    assert_eq!(code, 1, "{err}");
    assert_line(&err, &["DMA fault #0 [read-only]: device 0000:00:03.0 (rid 0x0018) write of 256 bytes at IOVA 0x100000: no write permission"]);
    assert_line(
        &err,
        &[
            " ms by IOAS_MAP (vaddr 0x",
            ", size 4 KiB, prot r (read-only)) from ",
            &map_frame(),
        ],
    );
}

/// Whether this process (and so the program it runs) holds CAP_IPC_LOCK.
fn has_cap_ipc_lock() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 14) != 0)
}

/// An area and the iommufd left open at exit, each with its call site.
pub fn leak(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "leak", &["--sanitize=strict"]);
    assert_eq!(code, 1, "{err}");
    assert_line(
        &err,
        &[
            "leak: iommufd still open with 1 area(s), created from ",
            &frame("setup", line_of("open(\"/dev/iommu\"", 0)),
        ],
    );
    // iommufd charges nothing to a caller with CAP_IPC_LOCK (6.12).
    let accounted = if has_cap_ipc_lock() {
        ", pinned, 0 page(s) accounted), created from "
    } else {
        ", pinned, 1 page(s) accounted), created from "
    };
    assert_line(
        &err,
        &[
            "leak: IOAS 2 IOVA 0x100000 size 4 KiB (uptr 0x",
            accounted,
            &map_frame(),
            " <- ",
            &main_frame("leak", "map_area("),
        ],
    );
    assert_line(
        &err,
        &[
            "leak: device 0000:00:03.0 (/dev/vfio/devices/vfio0) still open, created from ",
            &frame("setup", line_of("open(\"/dev/vfio/devices/vfio0\"", 0)),
        ],
    );
    assert_line(&err, &[&summary(0, 3)]);
}

/// The iommufd and the device cdev left open, nothing mapped: each is a
/// leak with the call that opened it; only `strict` fails the run.
pub fn leak_files(softvfio: &Path, mode: &str, bin: &Path) {
    let lines = |err: &str| {
        assert_line(
            err,
            &[
                "leak: iommufd still open, created from ",
                &frame("setup", line_of("open(\"/dev/iommu\"", 0)),
                " <- ",
                &frame("main", line_of("  setup();", 0)),
            ],
        );
        assert_line(
            err,
            &[
                "leak: device 0000:00:03.0 (/dev/vfio/devices/vfio0) still open, created from ",
                &frame("setup", line_of("open(\"/dev/vfio/devices/vfio0\"", 0)),
                " <- ",
                &frame("main", line_of("  setup();", 0)),
            ],
        );
        assert_line(err, &[&summary(0, 2)]);
    };
    let (code, err) = run(softvfio, mode, bin, "leak-files", &["--sanitize"]);
    assert_eq!(code, 0, "not strict: the program's status\n{err}");
    lines(&err);
    let (code, err) = run(softvfio, mode, bin, "leak-files", &["--sanitize=strict"]);
    assert_eq!(code, 1, "strict: leaks fail the run\n{err}");
    lines(&err);
}

/// Map, DMA, unmap, close: nothing to report.
pub fn clean(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "clean", &["--sanitize=strict"]);
    assert_eq!(code, 0, "{err}");
    assert_line(&err, &[&summary(0, 0)]);
}
