//! The DMA sanitizer end to end in preload mode (`softvfio run --mode
//! preload --sanitize`): the same mistakes and report checks as the
//! trace-mode tests (`crates/softvfio-cli/tests/sanitizer.rs`), with call
//! sites taken from the caller's stack inside the library.

mod common;
#[path = "../../softvfio-cli/tests/sanitizer_common/mod.rs"]
mod sanitizer_common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sanitizer_common as sc;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("sanitizer-preload")
}

/// `softvfio` (with the preload library next to it) and the program, built
/// once; `None` without gcc.
fn setup() -> Option<(&'static Path, &'static Path)> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    let bin = BIN
        .get_or_init(|| sc::build(&dir(), "dma_bugs", sc::DEBUG_FLAGS))
        .as_deref()?;
    Some((common::artifacts().softvfio.as_path(), bin))
}

macro_rules! scenario {
    ($name:ident, $f:expr) => {
        #[test]
        fn $name() {
            let Some((softvfio, bin)) = setup() else {
                eprintln!("skipped: no gcc");
                return;
            };
            $f(softvfio, "preload", bin);
        }
    };
}

every_scenario!(scenario);

/// An optimized program without frame pointers.
#[test]
fn optimized_program_without_frame_pointers() {
    let Some((softvfio, _)) = setup() else {
        eprintln!("skipped: no gcc");
        return;
    };
    let bin = sc::build(&dir(), "dma_bugs_o2", &["-O2", "-fomit-frame-pointer"]).unwrap();
    sc::after_unmap(softvfio, "preload", &bin);
    sc::stale(softvfio, "preload", &bin, "munmap");
    sc::deep(softvfio, "preload", &bin);
    sc::signal_stack(softvfio, "preload", &bin);
    sc::thread(softvfio, "preload", &bin);
}

/// A deep stack in the debug build (frame pointers).
#[test]
fn deep_stack_call_sites() {
    let Some((softvfio, bin)) = setup() else {
        eprintln!("skipped: no gcc");
        return;
    };
    sc::deep(softvfio, "preload", bin);
}

/// `softvfio` and the iommufd twin of the buggy driver
/// (`programs/iommufd_bugs.c`), built once; `None` without gcc.
fn iommufd_setup() -> Option<(&'static Path, &'static Path)> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    let bin = BIN.get_or_init(|| sc::iommufd::build(&dir())).as_deref()?;
    Some((common::artifacts().softvfio.as_path(), bin))
}

macro_rules! iommufd_scenario {
    ($name:ident, $f:expr) => {
        #[test]
        fn $name() {
            let Some((softvfio, bin)) = iommufd_setup() else {
                eprintln!("skipped: no gcc");
                return;
            };
            $f(softvfio, "preload", bin);
        }
    };
}

iommufd_scenario!(iommufd_dma_after_ioas_unmap, sc::iommufd::after_unmap);
iommufd_scenario!(iommufd_dma_after_unmap_of_a_copy, sc::iommufd::copy_unmap);
iommufd_scenario!(
    iommufd_never_mapped_names_the_nearest_area,
    sc::iommufd::never_mapped
);
iommufd_scenario!(iommufd_write_to_read_only_area, sc::iommufd::read_only);
iommufd_scenario!(iommufd_leaks_at_exit_with_call_sites, sc::iommufd::leak);
iommufd_scenario!(
    iommufd_open_files_left_at_exit_are_leaks,
    sc::iommufd::leak_files
);
iommufd_scenario!(iommufd_clean_driver_reports_nothing, sc::iommufd::clean);

/// The plugin of `programs/dlswap.c`.
const DLSWAP_LIB: &str = include_str!("programs/dlswap_lib.c");

/// Call sites across `dlclose` and `dlopen`: plugin A maps and unmaps from
/// `call_map`/`call_unmap` and is unloaded; plugin B (the same code, built
/// from a copy of the source with a comment line first: same layout, its
/// lines one further down) is loaded at A's address and maps from the same
/// places, leaving the mapping at exit. The leak names B's `plugin_map`,
/// file and line, in process and after the hand-off (the keeper resolves
/// the sites). Before the library counted unloads, the walk's maps still
/// had A's object at those addresses and the repeated address tuple hit
/// the recent call sites: the report named `liba.c:12`.
#[test]
fn call_sites_follow_dlclose_and_dlopen_at_the_same_address() {
    let Some(a) = sc::compile(
        &dir(),
        "liba.so",
        "liba.c",
        DLSWAP_LIB,
        &["-O0", "-fno-omit-frame-pointer", "-shared", "-fPIC"],
    ) else {
        eprintln!("skipped: no gcc");
        return;
    };
    let b_source = format!("/* plugin B */\n{DLSWAP_LIB}");
    let b = sc::compile(
        &dir(),
        "libb.so",
        "libb.c",
        &b_source,
        &["-O0", "-fno-omit-frame-pointer", "-shared", "-fPIC"],
    )
    .unwrap();
    let main_source = include_str!("programs/dlswap.c");
    let bin = sc::compile(
        &dir(),
        "dlswap",
        "dlswap.c",
        main_source,
        &["-O0", "-fno-omit-frame-pointer"],
    )
    .unwrap();
    let map_line = sc::line_in(DLSWAP_LIB, "liba.c", "VFIO_IOMMU_MAP_DMA, &m", 0);
    let call_line = sc::line_in(main_source, "dlswap.c", "return f(c, buf, iova, 4096);", 0);
    let main_line = sc::line_in(main_source, "dlswap.c", "if (call_map(b, container", 0);
    let softvfio = &common::artifacts().softvfio;
    for handoff in [false, true] {
        let mut cmd = std::process::Command::new(softvfio);
        cmd.args(["run", "--mode", "preload", "--sanitize=strict", "--"])
            .arg(&bin)
            .arg(&a)
            .arg(&b);
        if handoff {
            cmd.arg("handoff");
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        // B's code at A's addresses is what the case is about.
        assert_eq!(stdout, "same-base 1\ndone dlswap\n", "{err}");
        assert_eq!(
            out.status.code(),
            Some(1),
            "strict: the leaks fail the run\n{err}"
        );
        let b_frame = format!("plugin_map (/\0/libb.c:{})", map_line + 1);
        let call_frame = format!("call_map (/\0/dlswap.c:{call_line})");
        let main_frame = format!("main (/\0/dlswap.c:{main_line})");
        assert!(
            sc::has_line(
                &err,
                &[
                    "leak: IOVA 0x100000 size 4 KiB (vaddr 0x",
                    ", 1 page(s) pinned and accounted), created from ",
                    &b_frame,
                    " <- ",
                    &call_frame,
                    " <- ",
                    &main_frame,
                ],
            ),
            "handoff {handoff}: the leak does not name B's frame:\n{err}"
        );
        // The history names each plugin's calls as its own.
        let a_map = format!("plugin_map (/\0/liba.c:{map_line})");
        let a_unmap_line = sc::line_in(DLSWAP_LIB, "liba.c", "VFIO_IOMMU_UNMAP_DMA, &u", 0);
        let a_unmap = format!("by UNMAP_DMA from plugin_unmap (/\0/liba.c:{a_unmap_line})");
        assert!(
            sc::has_line(
                &err,
                &[
                    "  history: IOVA 0x100000-0x100fff (4 KiB): mapped at ",
                    " by MAP_DMA ",
                    &a_map,
                    &a_unmap,
                    " by MAP_DMA ",
                    &b_frame
                ],
            ),
            "handoff {handoff}: the history does not name A's then B's calls:\n{err}"
        );
    }
}

/// A fiber on a stack mapped in the gap below the main thread's `[stack]`
/// (`programs/fiber_gap.c`, built without frame pointers: the stack
/// switch's frame is described relative to the stack pointer, so its
/// caller's words lie past the fiber stack's top). The walk reads the
/// fiber's stack up to its mapping's end and keeps the frames on it: the
/// leak names `fiber_map <- fiber_entry <- on_stack`. Before, the main
/// thread's bounds reached down over the gap (glibc's answer, to
/// `RLIMIT_STACK`), the walk read past the fiber's top and the program
/// died of SIGSEGV inside the library (status 139, every run).
#[test]
fn a_fiber_stack_below_the_main_stack_is_read_within_its_mapping() {
    let source = include_str!("programs/fiber_gap.c");
    let Some(bin) = sc::compile(
        &dir(),
        "fiber_gap",
        "fiber_gap.c",
        source,
        &["-O0", "-fomit-frame-pointer"],
    ) else {
        eprintln!("skipped: no gcc");
        return;
    };
    let line = |needle: &str| sc::line_in(source, "fiber_gap.c", needle, 0);
    let softvfio = &common::artifacts().softvfio;
    // The fiber's place depends on where the stack is (ASLR): a few runs.
    for _ in 0..3 {
        let out = std::process::Command::new(softvfio)
            .args(["run", "--mode", "preload", "--sanitize=strict", "--"])
            .arg(&bin)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "done fiber_gap\n",
            "{err}"
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "strict: the leaks fail the run\n{err}"
        );
        let fiber_map = format!(
            "fiber_map (/\0/fiber_gap.c:{})",
            line("die(\"MAP_DMA from the fiber\")")
        );
        let fiber_entry = format!("fiber_entry (/\0/fiber_gap.c:{})", line("  fiber_map();"));
        let on_stack = format!("on_stack (/\0/fiber_gap.c:{})", line("__asm__ volatile"));
        assert!(
            sc::has_line(
                &err,
                &[
                    "leak: IOVA 0x200000 size 4 KiB (vaddr 0x",
                    ", 1 page(s) pinned and accounted), created from ",
                    &fiber_map,
                    " <- ",
                    &fiber_entry,
                    " <- ",
                    &on_stack,
                ],
            ),
            "{err}"
        );
        let main = format!(
            "main (/\0/fiber_gap.c:{})",
            line("if (ioctl(container, VFIO_IOMMU_MAP_DMA, &m)) die(\"MAP_DMA\");")
        );
        assert!(
            sc::has_line(&err, &["leak: IOVA 0x100000 size 4 KiB", &main]),
            "{err}"
        );
    }
}

/// The lines Linux 6.1 printed for `dma_bugs SCENARIO`
/// (`tests-oracle/kernel-6.1-dma-bugs-madvise.txt`, its `== SCENARIO`
/// section).
fn linux_printed(scenario: &str) -> String {
    let oracle = include_str!("../../../tests-oracle/kernel-6.1-dma-bugs-madvise.txt");
    let head = format!("== {scenario}\n");
    let at = oracle
        .find(&head)
        .unwrap_or_else(|| panic!("{scenario} not recorded"))
        + head.len();
    let rest = &oracle[at..];
    rest[..rest.find("\n== ").map_or(rest.len(), |e| e + 1)].to_string()
}

/// Runs `scenario` under the sanitizer (strict) and without it: the
/// program prints what Linux 6.1 printed, and the sanitizer reports no
/// stale mapping (nothing mapped for DMA went on Linux).
fn madvise_as_linux(scenario: &str) {
    let Some((softvfio, bin)) = setup() else {
        eprintln!("skipped: no gcc");
        return;
    };
    sc::not_stale(softvfio, "preload", bin, scenario);
    for extra in [&["--sanitize=strict"][..], &[]] {
        let (code, out, err) = sc::run_full(softvfio, "preload", bin, scenario, extra);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, linux_printed(scenario), "{extra:?}\n{err}");
    }
}

/// An emulated BAR merged by the kernel with the `PROT_NONE` reservation
/// before it (one maps line): the sanitizer's model of Linux's walk stops
/// at the BAR inside the line. Before, it looked at each line's start only
/// and reported the page after the BAR as a stale mapping.
#[test]
fn madvise_dontneed_stopped_by_a_merged_bar_answers_as_linux() {
    madvise_as_linux("madv-dontneed-bar-merged");
}

/// `MADV_DONTNEED_LOCKED` stops at a BAR with EINVAL, as on Linux. Before,
/// the call passed over the emulation's memory and, the advice ignoring
/// the pin's mlock, zapped the page mapped for DMA after it: it answered 0,
/// the program lost its bytes ("kept 0"), and the sanitizer reported a
/// stale mapping.
#[test]
fn madvise_dontneed_locked_stopped_by_a_bar_answers_as_linux() {
    madvise_as_linux("madv-dontneed-locked-bar");
}

/// `MADV_DONTNEED` of hugetlb memory mapped for DMA: from inside a huge
/// page EINVAL, of its first 4 KiB 0 with nothing gone (Linux 6.1 rounds
/// the end down to the huge page). Before, the sanitizer took the range as
/// asked and reported both calls as stale mappings. Needs huge pages
/// (`/proc/sys/vm/nr_hugepages`; the program dies without).
#[test]
fn madvise_dontneed_of_hugetlb_memory_answers_as_linux() {
    madvise_as_linux("madv-dontneed-huge");
}
