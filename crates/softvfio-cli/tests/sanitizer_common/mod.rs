//! The DMA sanitizer's end-to-end checks, shared by the trace-mode tests
//! (`crates/softvfio-cli/tests/sanitizer.rs`) and the preload-mode tests
//! (`crates/softvfio-preload/tests/sanitizer.rs`): `programs/dma_bugs.c`
//! makes one mistake per scenario under `softvfio run --sanitize`, and the
//! report must name it, with the program's own call sites (function and
//! source line, computed here from the C source).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod iommufd;

/// The buggy driver's source.
pub const SOURCE: &str = include_str!("../programs/dma_bugs.c");

/// Builds `dma_bugs.c` with debug info into `dir`, as `name` with the gcc
/// `flags` (optimization, frame pointers, static linking); `None` without
/// gcc.
pub fn build(dir: &Path, name: &str, flags: &[&str]) -> Option<PathBuf> {
    compile(dir, name, "dma_bugs.c", SOURCE, flags)
}

/// Writes `source` as `file` into a directory of its own under `dir` and
/// builds it with `gcc -g -Wall FLAGS` as `name`; `None` without gcc.
pub fn compile(
    dir: &Path,
    name: &str,
    file: &str,
    source: &str,
    flags: &[&str],
) -> Option<PathBuf> {
    if Command::new("gcc").arg("--version").output().is_err() {
        return None;
    }
    // One directory per build: tests build in parallel.
    let dir = dir.join(format!("{name}.d"));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(file);
    let bin = dir.join(name);
    std::fs::write(&src, source).unwrap();
    let out = Command::new("gcc")
        .args(["-g", "-Wall"])
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(bin)
}

/// The usual debug build: no optimization, frame pointers.
pub const DEBUG_FLAGS: &[&str] = &["-O0", "-fno-omit-frame-pointer"];

/// The 1-based line of the first line containing `needle` (after line
/// `from`).
pub fn line_of(needle: &str, from: usize) -> usize {
    line_in(SOURCE, "dma_bugs.c", needle, from)
}

/// The 1-based line of the first line of `source` (named `file`)
/// containing `needle` after line `from`.
pub fn line_in(source: &str, file: &str, needle: &str, from: usize) -> usize {
    source
        .lines()
        .enumerate()
        .skip(from)
        .find(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("{needle} not in {file}"))
}

/// The line of `call` in `main`'s branch for `scenario`.
pub fn scenario_line(scenario: &str, call: &str) -> usize {
    let start = line_of(&format!("!strcmp(what, \"{scenario}\")"), 0);
    line_of(call, start)
}

/// `function (<dir>/dma_bugs.c:LINE)`, as a frame of the report reads (a
/// NUL in a pattern stands for any text: the source's directory).
pub fn frame(function: &str, line: usize) -> String {
    format!("{function} (/\0/dma_bugs.c:{line})")
}

/// Runs `scenario` under `softvfio run --mode MODE --sanitize=strict`
/// (plus `extra`); the exit status and stderr.
pub fn run(
    softvfio: &Path,
    mode: &str,
    bin: &Path,
    scenario: &str,
    extra: &[&str],
) -> (i32, String) {
    let (code, _, stderr) = run_full(softvfio, mode, bin, scenario, extra);
    (code, stderr)
}

/// As [`run`]; the exit status, stdout and stderr.
pub fn run_full(
    softvfio: &Path,
    mode: &str,
    bin: &Path,
    scenario: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let out = Command::new(softvfio)
        .args(["run", "--mode", mode])
        .args(extra)
        .arg("--")
        .arg(bin)
        .arg(scenario)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(&format!("done {scenario}")) || scenario == "leak",
        "the program did not finish: {stdout}\n{stderr}"
    );
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// Does `text` have a line containing every one of `parts`, in order?
pub fn has_line(text: &str, parts: &[&str]) -> bool {
    text.lines().any(|l| {
        let mut rest = l;
        let pieces = parts.iter().flat_map(|p| p.split('\0'));
        pieces.into_iter().all(|p| match rest.find(p) {
            Some(i) => {
                rest = &rest[i + p.len()..];
                true
            }
            None => false,
        })
    })
}

fn assert_line(text: &str, parts: &[&str]) {
    assert!(has_line(text, parts), "no line with {parts:?} in:\n{text}");
}

fn map_frame() -> String {
    frame(
        "map_buffer",
        line_of("ioctl(container, VFIO_IOMMU_MAP_DMA", 0),
    )
}

fn unmap_frame() -> String {
    frame(
        "unmap_buffer",
        line_of("ioctl(container, VFIO_IOMMU_UNMAP_DMA", 0),
    )
}

/// DMA after unmap: the fault, the command that started it, the map and
/// unmap with their call sites.
pub fn after_unmap(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "after-unmap", &["--sanitize=strict"]);
    assert_eq!(code, 1, "strict: a fault fails the run\n{err}");
    assert_line(&err, &["DMA fault #0 [use-after-unmap]: device 0000:00:03.0 (rid 0x0018) write of 256 bytes at IOVA 0x100000: not present"]);
    assert_line(&err, &["  started by: edu DMA command register write (0x98 <- 0x3): 256 bytes, device buffer to RAM, RAM address 0x100000"]);
    assert_line(&err, &["  DMA after unmap: IOVA 0x100000 lies in IOVA 0x100000-0x100fff (4 KiB), no longer mapped:"]);
    let main_map = frame("main", scenario_line("after-unmap", "map_buffer("));
    let main_unmap = frame("main", scenario_line("after-unmap", "unmap_buffer("));
    assert_line(
        &err,
        &[
            "  mapped at ",
            " ms by MAP_DMA (vaddr 0x",
            ", size 4 KiB, prot rw) from ",
            &map_frame(),
            " <- ",
            &main_map,
        ],
    );
    assert_line(
        &err,
        &[
            "  unmapped at ",
            " ms (+",
            " ms after the map) by UNMAP_DMA from ",
            &unmap_frame(),
            " <- ",
            &main_unmap,
        ],
    );
    assert_line(
        &err,
        &["sanitizer: 1 fault(s), 0 stale mapping(s), 0 leak(s), 0 device note(s)"],
    );
    assert_line(
        &err,
        &["softvfio: sanitizer: 1 error(s) (--sanitize=strict)"],
    );
}

/// DMA after an unmap whose map was made 101 frames down a recursion of
/// 1 KiB frames: the map's call site is its innermost three frames, exact
/// (the unwinders walk past the frames they keep, or stop where they may).
pub fn deep(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "deep", &["--sanitize=strict"]);
    assert_eq!(code, 1, "strict: a fault fails the run\n{err}");
    assert_line(&err, &["DMA fault #0 [use-after-unmap]: device 0000:00:03.0 (rid 0x0018) write of 256 bytes at IOVA 0x100000: not present"]);
    let descend_map = frame("descend", line_of("/* deep map */", 0));
    let descend_descent = frame("descend", line_of("/* deep descent */", 0));
    assert_line(
        &err,
        &[
            "  mapped at ",
            " ms by MAP_DMA (vaddr 0x",
            ", size 4 KiB, prot rw) from ",
            &map_frame(),
            " <- ",
            &descend_map,
            " <- ",
            &descend_descent,
        ],
    );
    assert_line(
        &err,
        &[
            " by UNMAP_DMA from ",
            &unmap_frame(),
            " <- ",
            &frame("main", scenario_line("deep", "unmap_buffer(")),
        ],
    );
    assert_line(
        &err,
        &["sanitizer: 1 fault(s), 0 stale mapping(s), 0 leak(s), 0 device note(s)"],
    );
}

/// DMA after an unmap whose map was made in a signal handler running on
/// an alternate stack: the call site goes through the signal frame (the
/// kernel's `ucontext`) into the frame the signal interrupted (`raise` in
/// `main`).
pub fn signal_stack(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "altstack", &["--sanitize=strict"]);
    assert_eq!(code, 1, "strict: a fault fails the run\n{err}");
    assert_line(
        &err,
        &[
            "  mapped at ",
            " ms by MAP_DMA (vaddr 0x",
            ", size 4 KiB, prot rw) from ",
            &map_frame(),
            " <- ",
            &frame("on_signal", line_of("/* signal map", 0)),
            " <- ",
            &frame("main", scenario_line("altstack", "raise(")),
        ],
    );
    assert_line(
        &err,
        &[
            " by UNMAP_DMA from ",
            &unmap_frame(),
            " <- ",
            &frame("main", scenario_line("altstack", "unmap_buffer(")),
        ],
    );
}

/// DMA after an unmap whose map was made by another thread of the
/// program (its own stack): the call site is that thread's.
pub fn thread(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "thread", &["--sanitize=strict"]);
    assert_eq!(code, 1, "strict: a fault fails the run\n{err}");
    assert_line(
        &err,
        &[
            "  mapped at ",
            " ms by MAP_DMA (vaddr 0x",
            ", size 4 KiB, prot rw) from ",
            &map_frame(),
            " <- ",
            &frame("thread_main", line_of("/* thread map */", 0)),
        ],
    );
    assert_line(
        &err,
        &[
            " by UNMAP_DMA from ",
            &unmap_frame(),
            " <- ",
            &frame("main", scenario_line("thread", "unmap_buffer(")),
        ],
    );
}

/// A DMA to an IOVA nothing was mapped at: the nearest mapping named.
pub fn never_mapped(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "never-mapped", &["--sanitize"]);
    assert_eq!(code, 0, "not strict: the program's status\n{err}");
    assert_line(&err, &["DMA fault #0 [never-mapped]: device 0000:00:03.0 (rid 0x0018) write of 256 bytes at IOVA 0x300000: not present"]);
    assert_line(
        &err,
        &[
            "  IOVA 0x300000 was never mapped; nearest mappings: IOVA 0x100000-0x100fff (4 KiB, mapped at ",
            " ms from ",
            &map_frame(),
            " <- ",
            &frame("main", scenario_line("never-mapped", "map_buffer(")),
            ")",
        ],
    );
}

/// A DMA from the mapping of a process that was SIGKILLed. Linux keeps the
/// pinned page past its process: the device reads what the child left
/// there (0x5a). Trace mode matches it: the kernel stops a SIGKILLed
/// process at its exit too, and the supervisor keeps its pinned pages
/// then. The keeper (preload) hears of the death only after the memory is
/// gone: the DMA faults, and the report says why, naming whose memory it
/// was and how that process ended (docs/RELIABILITY.md).
pub fn killed_owner(softvfio: &Path, mode: &str, bin: &Path) {
    let out = Command::new(softvfio)
        .args(["run", "--mode", mode, "--sanitize", "--"])
        .arg(bin)
        .arg("killed-owner")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("done killed-owner"), "{stdout}\n{err}");
    assert_eq!(out.status.code(), Some(0), "not strict\n{err}");
    let child: i32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("child "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no child pid in {stdout}"));
    let section_end = if mode == "trace" {
        assert!(stdout.contains("parent page 5a\n"), "as Linux: {stdout}");
        assert_line(
            &err,
            &["sanitizer: 0 fault(s), 0 stale mapping(s), 0 leak(s)"],
        );
        "  ended: killed by SIGKILL"
    } else {
        assert!(stdout.contains("parent page 00\n"), "{stdout}");
        assert_line(
            &err,
            &["DMA fault #0 [owner-killed]: device 0000:00:03.0 (rid 0x0018) read of 256 bytes at IOVA 0x200000: memory error"],
        );
        assert_line(
            &err,
            &[
                "  IOVA 0x200000 is mapped, but the memory behind it is gone: its owner, process ",
                &format!("{child} ("),
                "was killed by a signal before its pinned pages could be kept",
            ],
        );
        assert_line(
            &err,
            &["sanitizer: 1 fault(s), 0 stale mapping(s), 0 leak(s)"],
        );
        "  ended: killed by a signal"
    };
    // The child's own section says how it ended.
    let section = format!("\nprocess {child} (");
    let after = err
        .split_once(&section)
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no section of {child}\n{err}"));
    assert_eq!(after.lines().nth(1), Some(section_end), "{err}");
}

/// A stale check looks at the mappings whose memory is the calling
/// process's, in any container: a fork child maps its copy of a buffer
/// through the inherited container, closes its VFIO files (the parent alone
/// holds the container) and munmaps the buffer: reported, with the child's
/// call sites. The parent's munmap of its own copy at the same address is
/// not (its pages were never mapped for DMA). In preload mode the fork
/// hands the engine to the keeper, which checks per calling process.
pub fn fork_munmap(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "fork-munmap", &["--sanitize"]);
    assert_eq!(code, 0, "{err}");
    let main = |call: &str| frame("main", scenario_line("fork-munmap", call));
    let map = frame(
        "map_buffer",
        line_of("ioctl(container, VFIO_IOMMU_MAP_DMA", 0),
    );
    let parts = [
        "softvfio sanitizer: stale mapping: munmap of 0x",
        " ms from ",
        &main("munmap(buf, LEN);"),
        "; IOVA 0x200000 (4 KiB) still maps it for DMA, mapped from ",
        &map,
        " <- ",
        &main("map_buffer(buf, 0x200000"),
        ": devices reach pages the program no longer sees",
    ];
    assert!(has_line(&err, &parts), "{err}");
    let moments = err
        .lines()
        .filter(|l| l.starts_with("softvfio sanitizer: stale mapping: "))
        .count();
    assert_eq!(moments, 1, "the parent's munmap is not one\n{err}");
    assert!(
        has_line(
            &err,
            &["sanitizer: 0 fault(s), 1 stale mapping(s), 0 leak(s), 0 device note(s)"]
        ),
        "{err}"
    );
}

/// The device writes a read-only mapping.
pub fn read_only(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "read-only", &["--sanitize=strict"]);
    assert_eq!(code, 1, "{err}");
    assert_line(&err, &["DMA fault #0 [read-only]: device 0000:00:03.0 (rid 0x0018) write of 256 bytes at IOVA 0x100000: no write permission"]);
    assert_line(
        &err,
        &["  IOVA 0x100000 is mapped read-only: the device wrote to it:"],
    );
    assert_line(
        &err,
        &[
            "by MAP_DMA (vaddr 0x",
            ", size 4 KiB, prot r (read-only)) from ",
            &map_frame(),
        ],
    );
}

/// Leaks at exit: the container, its mapping, the device and its MSI
/// eventfd, each with the call that made it.
pub fn leak(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "leak", &["--sanitize=strict"]);
    assert_eq!(code, 1, "strict: leaks fail the run\n{err}");
    let setup = |call: &str| frame("setup", line_of(call, 0));
    let main_setup = frame("main", line_of("  setup();", 0));
    assert_line(
        &err,
        &[
            "leak: container still open with 1 mapping(s), created from ",
            &setup("container = open(\"/dev/vfio/vfio\""),
            " <- ",
            &main_setup,
        ],
    );
    assert_line(
        &err,
        &[
            "leak: IOVA 0x100000 size 4 KiB (vaddr 0x",
            ", 1 page(s) pinned and accounted), created from ",
            &map_frame(),
            " <- ",
            &frame("main", scenario_line("leak", "map_buffer(")),
        ],
    );
    assert_line(
        &err,
        &[
            "leak: device 0000:00:03.0 still open, created from ",
            &setup("device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD"),
            " <- ",
            &main_setup,
        ],
    );
    assert_line(
        &err,
        &[
            "leak: device 0000:00:03.0: eventfds for IRQ index 1, vectors 0..1 still installed, created from ",
            &frame("enable_msi", line_of("ioctl(device, VFIO_DEVICE_SET_IRQS", 0)),
            " <- ",
            &frame("main", scenario_line("leak", "enable_msi(")),
        ],
    );
    assert_line(
        &err,
        &[
            "leak: group 3 (/dev/vfio/3) still open, created from ",
            &setup("group = open(\"/dev/vfio/3\""),
            " <- ",
            &main_setup,
        ],
    );
    assert_line(
        &err,
        &["sanitizer: 0 fault(s), 0 stale mapping(s), 5 leak(s), 0 device note(s)"],
    );
}

/// A container with nothing mapped and a group left open at exit are
/// leaks (as an open device is), each with the call that opened it; strict
/// mode fails the run, plain `--sanitize` keeps the program's status.
pub fn left_open(softvfio: &Path, mode: &str, bin: &Path) {
    let setup = |call: &str| frame("setup", line_of(call, 0));
    let main_setup = frame("main", line_of("  setup();", 0));
    for (flag, status) in [("--sanitize=strict", 1), ("--sanitize", 0)] {
        let (code, err) = run(softvfio, mode, bin, "left-open", &[flag]);
        assert_eq!(code, status, "{flag}\n{err}");
        assert_line(
            &err,
            &[
                "leak: container still open, created from ",
                &setup("container = open(\"/dev/vfio/vfio\""),
                " <- ",
                &main_setup,
            ],
        );
        assert_line(
            &err,
            &[
                "leak: group 3 (/dev/vfio/3) still open, created from ",
                &setup("group = open(\"/dev/vfio/3\""),
                " <- ",
                &main_setup,
            ],
        );
        assert!(!err.contains("leak: device"), "{err}");
        assert_line(
            &err,
            &["sanitizer: 0 fault(s), 0 stale mapping(s), 2 leak(s), 0 device note(s)"],
        );
    }
}

/// A group closed and opened again after a fork with the VFIO files open
/// (in preload mode: after the hand-off to the keeper) and left open: its
/// leak names the call that opened it again.
pub fn reopen_after_handoff(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(
        softvfio,
        mode,
        bin,
        "handoff-reopen",
        &["--sanitize=strict"],
    );
    assert_eq!(code, 1, "strict: leaks\n{err}");
    assert_line(
        &err,
        &[
            "leak: group 3 (/dev/vfio/3) still open, created from ",
            &frame(
                "main",
                scenario_line("reopen", "group = open(\"/dev/vfio/3\""),
            ),
        ],
    );
    assert_line(
        &err,
        &[
            "leak: container still open, created from ",
            &frame("setup", line_of("container = open(\"/dev/vfio/vfio\"", 0)),
        ],
    );
    assert_line(
        &err,
        &["sanitizer: 0 fault(s), 0 stale mapping(s), 2 leak(s), 0 device note(s)"],
    );
}

/// A fork child maps its copy of a buffer through the inherited container,
/// closes its VFIO files (the parent alone holds the container) and
/// munmaps the buffer: a stale mapping of the child's memory, with the
/// child's call sites (in preload mode the child is served by the keeper
/// and holds no VFIO file when it munmaps).
pub fn childs_munmap_after_closing(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "fork-munmap-child", &["--sanitize"]);
    assert_eq!(code, 0, "{err}");
    let main = |call: &str| frame("main", scenario_line("fork-munmap", call));
    assert_line(
        &err,
        &[
            "softvfio sanitizer: stale mapping: munmap of 0x",
            " ms from ",
            &main("munmap(buf, LEN);"),
            "; IOVA 0x200000 (4 KiB) still maps it for DMA, mapped from ",
            &map_frame(),
            " <- ",
            &main("map_buffer(buf, 0x200000"),
            ": devices reach pages the program no longer sees",
        ],
    );
    let moments = err
        .lines()
        .filter(|l| l.starts_with("softvfio sanitizer: stale mapping: "))
        .count();
    assert_eq!(moments, 1, "{err}");
    assert_line(
        &err,
        &["sanitizer: 0 fault(s), 1 stale mapping(s), 0 leak(s), 0 device note(s)"],
    );
}

/// Memory still mapped for DMA goes away: reported at the moment with both
/// call sites, and the device's later access named as a stale mapping.
pub fn stale(softvfio: &Path, mode: &str, bin: &Path, scenario: &str) {
    stale_as(softvfio, mode, bin, scenario, scenario);
}

/// As [`stale`], in a process that forked with its VFIO files open before
/// it maps (`handoff-` scenarios): in preload mode the engine is then the
/// keeper's, and the program's memory calls are checked there.
pub fn stale_after_handoff(softvfio: &Path, mode: &str, bin: &Path, scenario: &str) {
    stale_as(
        softvfio,
        mode,
        bin,
        &format!("handoff-{scenario}"),
        scenario,
    );
}

/// Runs `run_as`, which makes the mistake of `scenario` (whose lines the
/// call sites name).
fn stale_as(softvfio: &Path, mode: &str, bin: &Path, run_as: &str, scenario: &str) {
    let (code, out, err) = run_full(softvfio, mode, bin, run_as, &["--sanitize=strict"]);
    assert_eq!(code, 1, "{err}");
    let (syscall, call) = match scenario {
        "munmap" => ("munmap", "munmap(buf, LEN);"),
        "mremap" => ("mremap", "mremap(buf"),
        "map-fixed" => ("mmap(MAP_FIXED)", "if (mmap(buf, LEN"),
        // Past libc's munmap.
        "raw-munmap" => ("munmap", "syscall(SYS_munmap"),
        // glibc unmaps the large block inside free().
        "free" => ("munmap", "free(big);"),
        // glibc mremaps the large block smaller inside realloc().
        "realloc" => ("mremap", "big = realloc(big"),
        "madv-dontneed" => ("madvise(MADV_DONTNEED)", "int r = madvise(buf"),
        "madv-remove" => ("madvise(MADV_REMOVE)", "int r = madvise(buf"),
        "madv-remove-hole" => ("madvise(MADV_REMOVE)", "int r = madvise(range"),
        s => panic!("no stale scenario {s}"),
    };
    // The range reported is the mapping's page, whatever the call covered.
    assert_eq!(stale_range_len(&err, syscall), Some(0x1000), "{err}");
    if scenario == "madv-dontneed" {
        // softvfio's answer (the pin's mlock), and Linux's in the report.
        assert!(out.contains("madvise 22\n"), "{out}");
        assert_line(&err, &[": devices reach pages the program no longer sees (on Linux the call answers 0 and the program reads new zero-filled pages while the device keeps the old ones; under softvfio the pin's mlock makes MADV_DONTNEED fail with EINVAL)"]);
    }
    if scenario == "madv-remove-hole" {
        // The pin's mlock (Linux: ENOMEM, after the page went).
        assert!(out.contains("madvise 22\n"), "{out}");
    }
    if scenario == "madv-remove" {
        assert!(out.contains("madvise 22\n"), "{out}");
        assert_line(&err, &[": devices reach pages the program no longer sees (on Linux the call answers 0 and punches the pages out of the shared memory: the program reads new zero-filled pages while the device keeps the old ones; under softvfio the pin's mlock makes it fail with EINVAL)"]);
    }
    let main_call = frame("main", scenario_line(scenario, call));
    let main_map = frame("main", scenario_line(scenario, "map_buffer("));
    let moment = format!("softvfio sanitizer: stale mapping: {syscall} of 0x");
    let parts = [
        &moment[..],
        "-0x",
        " ms from ",
        &main_call,
        "; IOVA 0x100000 (4 KiB) still maps it for DMA, mapped from ",
        &map_frame(),
        " <- ",
        &main_map,
        ": devices reach pages the program no longer sees",
    ];
    assert_line(&err, &parts);
    // And again in the report.
    assert_line(&err, &parts[1..]);
    if scenario == "munmap" {
        // The device then wrote where the program no longer has memory.
        assert_line(&err, &["DMA fault #0 [stale-mapping]: device 0000:00:03.0 (rid 0x0018) write of 256 bytes at IOVA 0x100000: memory error"]);
        assert_line(
            &err,
            &[
                "  its memory 0x",
                " went away at ",
                " ms after the map) by munmap from ",
                &main_call,
                " while still mapped for DMA",
            ],
        );
        assert_line(
            &err,
            &["sanitizer: 1 fault(s), 1 stale mapping(s), 0 leak(s), 0 device note(s)"],
        );
    } else {
        assert_line(
            &err,
            &["sanitizer: 0 fault(s), 1 stale mapping(s), 0 leak(s), 0 device note(s)"],
        );
    }
}

/// The length of the range of the first "stale mapping: SYSCALL of
/// 0xA-0xB at" line of `err`.
fn stale_range_len(err: &str, syscall: &str) -> Option<u64> {
    let key = format!("stale mapping: {syscall} of 0x");
    let rest = &err[err.find(&key)? + key.len()..];
    let (range, _) = rest.split_once(" at ")?;
    let (a, b) = range.split_once("-0x")?;
    let a = u64::from_str_radix(a, 16).ok()?;
    let b = u64::from_str_radix(b, 16).ok()?;
    Some(b - a + 1)
}

/// A mistake that is no stale mapping: nothing reported, exit status 0
/// under strict. `heap-free`: a small block's pages stay in the heap
/// (the device and later allocations share them); `madv-free`: Linux
/// never discards a lazily freed page a DMA pin holds (the program keeps
/// it), and under softvfio the pin's mlock makes the call EINVAL;
/// `madv-remove-private`: MADV_REMOVE of private memory takes nothing away
/// (Linux: EINVAL); `madv-remove-then-private`: MADV_REMOVE of a shared
/// page and the private page after it, mapped for DMA, takes the shared
/// page only (Linux stops at the private one: EINVAL); `madv-overflow`,
/// `madv-wrap`: MADV_DONTNEED with a length past the end of the address
/// space or wrapping when rounded up to pages (Linux: EINVAL before any
/// walk, the pages stay); `madv-dontneed-bar`: MADV_DONTNEED of a BAR
/// page and the page after it, mapped for DMA (Linux stops at the BAR:
/// EINVAL; under softvfio the BAR is emulated memory the call passes).
pub fn not_stale(softvfio: &Path, mode: &str, bin: &Path, scenario: &str) {
    let (code, out, err) = run_full(softvfio, mode, bin, scenario, &["--sanitize=strict"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("stale mapping:"), "{err}");
    assert_line(
        &err,
        &["sanitizer: 0 fault(s), 0 stale mapping(s), 0 leak(s), 0 device note(s)"],
    );
    let refused = [
        "madv-free",
        "madv-remove-private",
        "madv-dontneed-mlocked",
        "madv-remove-then-private",
        "madv-overflow",
        "madv-wrap",
        "madv-dontneed-bar",
        "madv-dontneed-bar-merged",
        "madv-dontneed-locked-bar",
    ];
    let refused_up_to_a_bar = [
        "madv-dontneed-bar",
        "madv-dontneed-bar-merged",
        "madv-dontneed-locked-bar",
    ];
    if ["madv-overflow", "madv-wrap"].contains(&scenario) || refused_up_to_a_bar.contains(&scenario)
    {
        // Linux 6.1's answers (tests-oracle/kernel-6.1-dma-bugs-madvise.txt):
        // refused before any page went, the page mapped for DMA stays.
        assert!(out.contains("madvise 22\nkept 1\n"), "{out}");
    }
    if refused.contains(&scenario) {
        // The pin's mlock (Linux: 0 for MADV_FREE, EINVAL for MADV_REMOVE
        // of private memory and for memory the program locked itself).
        assert!(out.contains("madvise 22\n"), "{out}");
    }
}

/// edu's 28-bit DMA mask clamps a 33-bit address into the mapping: no
/// fault, the device's behaviour is named; not an error of the program.
pub fn clamp(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "clamp", &["--sanitize=strict"]);
    assert_eq!(code, 0, "{err}");
    assert_line(&err, &["device: 0000:00:03.0 clamped 1 DMA address(es) to its DMA mask 0xfffffff (device behaviour, not the program's); last: EDU: clamping DMA 0x0000000100100000 to 0x0000000000100000!"]);
    assert_line(
        &err,
        &["sanitizer: 0 fault(s), 0 stale mapping(s), 0 leak(s), 1 device note(s)"],
    );
}

/// A correct driver: an empty report, exit status 0 under strict; without
/// `--sanitize` no sanitizer output at all.
pub fn clean(softvfio: &Path, mode: &str, bin: &Path) {
    let (code, err) = run(softvfio, mode, bin, "clean", &["--sanitize=strict"]);
    assert_eq!(code, 0, "{err}");
    assert_line(
        &err,
        &["sanitizer: 0 fault(s), 0 stale mapping(s), 0 leak(s), 0 device note(s)"],
    );
    let (code, err) = run(softvfio, mode, bin, "after-unmap", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("sanitizer"), "{err}");
}

/// `--report-json` writes the findings; `softvfio inspect --report` shows
/// them as the run did.
pub fn json(softvfio: &Path, mode: &str, bin: &Path, dir: &Path) {
    let file = dir.join(format!("report-{mode}.json"));
    let _ = std::fs::remove_file(&file);
    let (_, err) = run(
        softvfio,
        mode,
        bin,
        "after-unmap",
        &["--sanitize", "--report-json", file.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let f = &v["faults"][0];
    assert_eq!(f["class"], "use-after-unmap", "{v}");
    assert_eq!(f["iova"], 0x100000, "{v}");
    assert_eq!(f["access"], "write", "{v}");
    assert_eq!(f["len"], 256, "{v}");
    assert_eq!(f["device"], "0000:00:03.0", "{v}");
    assert_eq!(v["leaks"].as_array().map(Vec::len), Some(0), "{v}");
    let out = Command::new(softvfio)
        .args(["inspect", "--report"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    let start = err.find("--- softvfio sanitizer ---").expect("report");
    let end = err[start..]
        .find("device note(s)\n")
        .map(|e| start + e + "device note(s)\n".len())
        .expect("report end");
    assert_eq!(shown, &err[start..end]);
}

/// Every scenario shared by the two modes, one test each through the
/// calling file's `$scenario!(name, fn(softvfio, mode, bin))` (its mode and
/// its setup); `sc` and `dir()` are the calling file's.
#[macro_export]
macro_rules! every_scenario {
    ($scenario:ident) => {
        $scenario!(dma_after_unmap_is_explained, sc::after_unmap);
        $scenario!(
            never_mapped_iova_names_the_nearest_mapping,
            sc::never_mapped
        );
        $scenario!(write_to_read_only_mapping, sc::read_only);
        $scenario!(leaks_at_exit_with_call_sites, sc::leak);
        $scenario!(
            open_container_and_group_left_at_exit_are_leaks,
            sc::left_open
        );
        $scenario!(clamped_dma_is_the_device_behaviour, sc::clamp);
        $scenario!(
            a_childs_munmap_of_memory_mapped_in_a_container_it_closed_is_stale,
            sc::fork_munmap
        );
        $scenario!(
            dma_into_a_killed_owners_memory_names_the_kill,
            sc::killed_owner
        );
        $scenario!(clean_driver_reports_nothing, sc::clean);
        $scenario!(call_site_through_a_signal_stack, sc::signal_stack);
        $scenario!(call_site_of_another_thread, sc::thread);
        $scenario!(stale_mapping_after_munmap, |s, m, b| sc::stale(
            s, m, b, "munmap"
        ));
        $scenario!(stale_mapping_after_mremap, |s, m, b| sc::stale(
            s, m, b, "mremap"
        ));
        $scenario!(stale_mapping_after_map_fixed, |s, m, b| sc::stale(
            s,
            m,
            b,
            "map-fixed"
        ));
        $scenario!(stale_mapping_after_raw_syscall_munmap, |s, m, b| sc::stale(
            s,
            m,
            b,
            "raw-munmap"
        ));
        $scenario!(stale_mapping_after_free_of_a_large_block, |s, m, b| {
            sc::stale(s, m, b, "free")
        });
        $scenario!(
            stale_mapping_after_realloc_shrinks_a_large_block,
            |s, m, b| { sc::stale(s, m, b, "realloc") }
        );
        $scenario!(stale_mapping_after_madvise_dontneed, |s, m, b| {
            sc::stale(s, m, b, "madv-dontneed")
        });
        $scenario!(free_of_a_heap_block_is_not_stale, |s, m, b| {
            sc::not_stale(s, m, b, "heap-free")
        });
        $scenario!(madvise_free_is_not_stale, |s, m, b| {
            sc::not_stale(s, m, b, "madv-free")
        });
        $scenario!(
            stale_mapping_after_madvise_remove_of_shared_memory,
            |s, m, b| { sc::stale(s, m, b, "madv-remove") }
        );
        $scenario!(madvise_remove_of_private_memory_is_not_stale, |s, m, b| {
            sc::not_stale(s, m, b, "madv-remove-private")
        });
        $scenario!(stale_mapping_after_madvise_remove_from_a_hole, |s, m, b| {
            sc::stale(s, m, b, "madv-remove-hole")
        });
        $scenario!(
            madvise_remove_stopped_by_private_memory_is_not_stale,
            |s, m, b| { sc::not_stale(s, m, b, "madv-remove-then-private") }
        );
        $scenario!(
            madvise_dontneed_of_memory_the_program_locked_is_not_stale,
            |s, m, b| { sc::not_stale(s, m, b, "madv-dontneed-mlocked") }
        );
        $scenario!(madvise_past_the_address_space_is_not_stale, |s, m, b| {
            sc::not_stale(s, m, b, "madv-overflow")
        });
        $scenario!(madvise_of_a_wrapping_length_is_not_stale, |s, m, b| {
            sc::not_stale(s, m, b, "madv-wrap")
        });
        $scenario!(madvise_dontneed_stopped_by_a_bar_is_not_stale, |s, m, b| {
            sc::not_stale(s, m, b, "madv-dontneed-bar")
        });
        $scenario!(
            madvise_dontneed_stopped_by_a_merged_bar_is_not_stale,
            |s, m, b| { sc::not_stale(s, m, b, "madv-dontneed-bar-merged") }
        );
        $scenario!(
            madvise_dontneed_of_hugetlb_memory_is_not_stale,
            |s, m, b| { sc::not_stale(s, m, b, "madv-dontneed-huge") }
        );
        $scenario!(stale_mapping_after_handoff_free, |s, m, b| {
            sc::stale_after_handoff(s, m, b, "free")
        });
        $scenario!(stale_mapping_after_handoff_madvise_dontneed, |s, m, b| {
            sc::stale_after_handoff(s, m, b, "madv-dontneed")
        });
        $scenario!(stale_mapping_after_handoff_munmap, |s, m, b| {
            sc::stale_after_handoff(s, m, b, "munmap")
        });
        $scenario!(stale_mapping_after_handoff_mremap, |s, m, b| {
            sc::stale_after_handoff(s, m, b, "mremap")
        });
        $scenario!(stale_mapping_after_handoff_map_fixed, |s, m, b| {
            sc::stale_after_handoff(s, m, b, "map-fixed")
        });
        $scenario!(
            a_childs_munmap_after_closing_its_vfio_files_is_stale,
            sc::childs_munmap_after_closing
        );
        $scenario!(
            group_reopened_after_handoff_has_its_call_site,
            sc::reopen_after_handoff
        );
        $scenario!(json_report_and_inspect, |s, m, b| sc::json(s, m, b, &dir()));
    };
}
