//! The DMA sanitizer end to end in trace mode (`softvfio run --sanitize`):
//! each mistake of `programs/dma_bugs.c` and the report it gets, call
//! sites included (see `sanitizer_common`). The preload-mode twin is
//! `crates/softvfio-preload/tests/sanitizer.rs`.

mod sanitizer_common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sanitizer_common as sc;

fn softvfio() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_softvfio"))
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("sanitizer-trace")
}

/// The program, built once (dynamic), or `None` without gcc.
fn program() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| sc::build(&dir(), "dma_bugs", sc::DEBUG_FLAGS))
        .as_deref()
}

macro_rules! scenario {
    ($name:ident, $f:expr) => {
        #[test]
        fn $name() {
            let Some(bin) = program() else {
                eprintln!("skipped: no gcc");
                return;
            };
            $f(softvfio(), "trace", bin);
        }
    };
}

every_scenario!(scenario);

/// A static program: libc's wrappers are in the program's own file, and are
/// still left out of its call sites.
#[test]
fn static_program_call_sites() {
    let Some(bin) = sc::build(&dir(), "dma_bugs_static", &["-O0", "-static"]) else {
        eprintln!("skipped: no gcc");
        return;
    };
    sc::after_unmap(softvfio(), "trace", &bin);
    sc::leak(softvfio(), "trace", &bin);
}

/// An optimized program without frame pointers: call sites come from the
/// objects' call frame information.
#[test]
fn optimized_program_without_frame_pointers() {
    let Some(bin) = sc::build(&dir(), "dma_bugs_o2", &["-O2", "-fomit-frame-pointer"]) else {
        eprintln!("skipped: no gcc");
        return;
    };
    sc::after_unmap(softvfio(), "trace", &bin);
    sc::stale(softvfio(), "trace", &bin, "munmap");
    sc::deep(softvfio(), "trace", &bin);
    sc::signal_stack(softvfio(), "trace", &bin);
    sc::thread(softvfio(), "trace", &bin);
}

/// A deep stack in the debug build (frame pointers).
#[test]
fn deep_stack_call_sites() {
    let Some(bin) = program() else {
        eprintln!("skipped: no gcc");
        return;
    };
    sc::deep(softvfio(), "trace", bin);
}

/// `softvfio demo --sanitizer` runs the buggy driver's three headline
/// scenarios and shows their reports.
#[test]
fn demo_shows_the_three_reports() {
    let Some(_) = program() else {
        eprintln!("skipped: no gcc");
        return;
    };
    let out = std::process::Command::new(softvfio())
        .args(["demo", "--sanitizer"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for s in ["after-unmap", "munmap", "leak"] {
        assert!(
            stdout.contains(&format!(
                "$ softvfio run --mode trace --sanitize -- dma_bugs {s}"
            )),
            "{stdout}"
        );
    }
    for line in [
        "DMA fault #0 [use-after-unmap]: device 0000:00:03.0 (rid 0x0018) write of 256 bytes at IOVA 0x100000: not present",
        "DMA fault #0 [stale-mapping]: device 0000:00:03.0 (rid 0x0018) write of 256 bytes at IOVA 0x100000: memory error",
        "sanitizer: 0 fault(s), 0 stale mapping(s), 5 leak(s), 0 device note(s)",
    ] {
        assert!(stderr.lines().any(|l| l == line), "{line}\n{stderr}");
    }
}

/// `softvfio inspect` of a live `--sanitize` session shows the findings so
/// far (trace mode serves the snapshot socket).
#[test]
fn live_inspect_shows_the_findings() {
    use std::io::{BufRead, Write};
    let Some(bin) = program() else {
        eprintln!("skipped: no gcc");
        return;
    };
    let socket = dir().join(format!("inspect-{}.sock", std::process::id()));
    let mut child = std::process::Command::new(softvfio())
        .args(["run", "--sanitize", "--inspect-socket"])
        .arg(&socket)
        .arg("--")
        .arg(bin)
        .arg("hold")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "holding\n");
    let json = std::process::Command::new(softvfio())
        .args(["inspect", "--json", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let text = std::process::Command::new(softvfio())
        .args(["inspect", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(child.wait().unwrap().success());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let f = &v["sanitizer"]["faults"][0];
    assert_eq!(f["class"], "use-after-unmap", "{v}");
    assert_eq!(f["iova"], 0x100000, "{v}");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines().any(|l| l == "DMA fault #0 [use-after-unmap]: device 0000:00:03.0 (rid 0x0018) write of 256 bytes at IOVA 0x100000: not present"),
        "{text}"
    );
}

/// The iommufd twin of the buggy driver (`programs/iommufd_bugs.c`),
/// built once.
fn iommufd_program() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| sc::iommufd::build(&dir())).as_deref()
}

macro_rules! iommufd_scenario {
    ($name:ident, $f:expr) => {
        #[test]
        fn $name() {
            let Some(bin) = iommufd_program() else {
                eprintln!("skipped: no gcc");
                return;
            };
            $f(softvfio(), "trace", bin);
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

/// A forking program: each process has its own section in the end report
/// and in `--report-json`, with the history of what it mapped and
/// unmapped and the leaks it made (the child mapped through the container
/// it inherited; the parent keeps the files). Preload: the keeper serves
/// both processes after the fork and notes each (before: no section).
#[test]
fn each_process_of_a_fork_has_its_own_history_and_leaks() {
    fork_sections("trace");
}

#[test]
fn each_process_of_a_fork_has_its_own_history_and_leaks_preload() {
    fork_sections("preload");
}

fn fork_sections(mode: &str) {
    let Some(bin) = program() else {
        eprintln!("skipped: no gcc");
        return;
    };
    let json = dir().join(format!("fork-report-{mode}.json"));
    let out = std::process::Command::new(softvfio())
        .args(["run", "--mode", mode, "--sanitize=strict", "--report-json"])
        .arg(&json)
        .arg("--")
        .arg(bin)
        .arg("fork")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("done fork"), "{stdout}\n{err}");
    assert_eq!(out.status.code(), Some(1), "strict: leaks\n{err}");
    let pid_of = |who: &str| -> i32 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(who)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {who} pid in {stdout}"))
    };
    let (parent, child) = (pid_of("parent "), pid_of("child "));
    // A process's section: its header and its indented lines.
    let section = |pid: i32| -> Vec<&str> {
        let head = format!("process {pid} ({}): ", bin.display());
        let mut lines = err.lines().skip_while(|l| !l.starts_with(&head));
        let first = lines
            .next()
            .unwrap_or_else(|| panic!("no {head} in\n{err}"));
        std::iter::once(first)
            .chain(lines.take_while(|l| l.starts_with("  ")))
            .collect()
    };
    let has = |lines: &[&str], parts: &[&str]| {
        assert!(
            sc::has_line(&lines.join("\n"), parts),
            "no line with {parts:?} in:\n{}",
            lines.join("\n")
        )
    };
    let map = sc::frame(
        "map_buffer",
        sc::line_of("ioctl(container, VFIO_IOMMU_MAP_DMA", 0),
    );
    let unmap = sc::frame(
        "unmap_buffer",
        sc::line_of("ioctl(container, VFIO_IOMMU_UNMAP_DMA", 0),
    );
    let fork_line = |call: &str| sc::frame("main", sc::scenario_line("fork", call));
    let p = section(parent);
    assert!(
        p[0].ends_with("2 region(s) in its history, 4 leak(s)"),
        "{}",
        p[0]
    );
    has(
        &p,
        &[
            "  history: IOVA 0x100000-0x100fff (4 KiB): mapped at ",
            " by MAP_DMA (vaddr 0x",
            ", size 4 KiB, prot rw) from ",
            &map,
            " <- ",
            &fork_line("map_buffer(buf, IOVA"),
            "; unmapped at ",
            " by UNMAP_DMA from ",
            &unmap,
            " <- ",
            &fork_line("unmap_buffer(IOVA)"),
        ],
    );
    has(
        &p,
        &[
            "  history: IOVA 0x300000-0x300fff (4 KiB): mapped at ",
            " from ",
            &map,
            " <- ",
            &fork_line("map_buffer(buf, 0x300000"),
        ],
    );
    has(
        &p,
        &[
            "  leak: container still open with 2 mapping(s), created from ",
            "setup (",
        ],
    );
    has(
        &p,
        &[
            "  leak: IOVA 0x300000 size 4 KiB (vaddr 0x",
            &fork_line("map_buffer(buf, 0x300000"),
        ],
    );
    has(
        &p,
        &[
            "  leak: device 0000:00:03.0 still open, created from ",
            "setup (",
        ],
    );
    has(
        &p,
        &[
            "  leak: group 3 (/dev/vfio/3) still open, created from ",
            "setup (",
        ],
    );
    assert!(!p.iter().any(|l| l.contains("0x200000")), "{p:#?}");
    let c = section(child);
    assert_eq!(c.len(), 3, "{c:#?}");
    assert!(
        c[0].ends_with("1 region(s) in its history, 1 leak(s)"),
        "{}",
        c[0]
    );
    has(
        &c,
        &[
            "  history: IOVA 0x200000-0x200fff (4 KiB): mapped at ",
            " by MAP_DMA (vaddr 0x",
            " from ",
            &map,
            " <- ",
            &fork_line("map_buffer(anon(), 0x200000"),
        ],
    );
    has(
        &c,
        &[
            "  leak: IOVA 0x200000 size 4 KiB (vaddr 0x",
            &fork_line("map_buffer(anon(), 0x200000"),
        ],
    );
    assert!(
        sc::has_line(
            &err,
            &["sanitizer: 0 fault(s), 0 stale mapping(s), 5 leak(s), 0 device note(s)"]
        ),
        "{err}"
    );
    // The same sections in the JSON report.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let procs = report["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 2, "{procs:#?}");
    let by_pid = |pid: i32| {
        procs
            .iter()
            .find(|p| p["pid"] == pid)
            .unwrap_or_else(|| panic!("no {pid} in {procs:#?}"))
    };
    for (pid, regions, leaks) in [(parent, 2, 4), (child, 1, 1)] {
        let p = by_pid(pid);
        assert_eq!(p["program"], bin.display().to_string());
        assert_eq!(p["history"].as_array().unwrap().len(), regions, "{p:#?}");
        assert_eq!(p["leaks"].as_array().unwrap().len(), leaks, "{p:#?}");
    }
    assert_eq!(by_pid(child)["leaks"][0]["kind"], "mapping");
    assert_eq!(report["leaks"].as_array().unwrap().len(), 5);
}

/// An exec'd image is a process of its own: the image before the exec and
/// the one after each have their section (same pid and program), the first
/// with what it mapped and unmapped and the container it opened, the second
/// with what it mapped through the container it kept.
#[test]
fn each_image_of_an_exec_has_its_own_history_and_leaks() {
    exec_sections("trace");
}

#[test]
fn each_image_of_an_exec_has_its_own_history_and_leaks_preload() {
    exec_sections("preload");
}

fn exec_sections(mode: &str) {
    let Some(bin) = program() else {
        eprintln!("skipped: no gcc");
        return;
    };
    let (code, err) = sc::run(softvfio(), mode, bin, "exec", &["--sanitize=strict"]);
    assert_eq!(code, 1, "strict: leaks\n{err}");
    let head = "process ";
    let program = format!(" ({}): ", bin.display());
    // The sections, in order: header and indented lines.
    let mut sections: Vec<Vec<&str>> = Vec::new();
    for l in err.lines() {
        if l.starts_with(head) && l.contains(&program) {
            sections.push(vec![l]);
        } else if let Some(s) = sections.last_mut().filter(|_| l.starts_with("  ")) {
            s.push(l);
        }
    }
    assert_eq!(sections.len(), 2, "{err}");
    let pid = |s: &[&str]| s[0].split(' ').nth(1).unwrap().to_string();
    assert_eq!(pid(&sections[0]), pid(&sections[1]), "one pid, two images");
    let (before, after) = (sections[0].join("\n"), sections[1].join("\n"));
    let map = sc::frame(
        "map_buffer",
        sc::line_of("ioctl(container, VFIO_IOMMU_MAP_DMA", 0),
    );
    let image_line = sc::line_of("map_buffer(anon(), 0x400000", 0);
    assert!(
        sections[0][0].ends_with("1 region(s) in its history, 2 leak(s)"),
        "{before}"
    );
    assert!(
        sc::has_line(
            &before,
            &[
                "  history: IOVA 0x100000-0x100fff (4 KiB): mapped at ",
                " from ",
                &map,
                " <- ",
                &sc::frame("main", sc::scenario_line("exec", "map_buffer(buf, IOVA")),
                "; unmapped at ",
                " by UNMAP_DMA from ",
            ]
        ),
        "{before}"
    );
    assert!(
        sc::has_line(
            &before,
            &[
                "  leak: container still open with 1 mapping(s), created from ",
                "setup ("
            ]
        ),
        "{before}"
    );
    assert!(
        sc::has_line(
            &before,
            &[
                "  leak: group 3 (/dev/vfio/3) still open, created from ",
                "setup ("
            ]
        ),
        "{before}"
    );
    assert!(
        sections[1][0].ends_with("1 region(s) in its history, 1 leak(s)"),
        "{after}"
    );
    assert!(
        sc::has_line(
            &after,
            &[
                "  history: IOVA 0x400000-0x400fff (4 KiB): mapped at ",
                " from ",
                &map,
                " <- ",
                &sc::frame("main", image_line),
            ]
        ),
        "{after}"
    );
    assert!(
        sc::has_line(
            &after,
            &[
                "  leak: IOVA 0x400000 size 4 KiB (vaddr 0x",
                " created from ",
                &map,
                " <- ",
                &sc::frame("main", image_line)
            ]
        ),
        "{after}"
    );
    assert!(
        !after.contains("0x100000") && !before.contains("0x400000"),
        "{err}"
    );
}
