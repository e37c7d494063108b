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
