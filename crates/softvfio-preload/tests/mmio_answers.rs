//! Memory-mapped BARs (trapped MMIO) against Linux 6.1: the programs
//! `tests-oracle/mmio_traffic.c` (all of edu's register traffic, through
//! pread/pwrite and through an mmap of BAR0), `tests-oracle/mmio_split.c`
//! (MAP_DMA of a range half BAR, half memory) and `tests-oracle/mmio_bad.c`
//! (unusual accesses, mmap arguments, munmap/mremap/mprotect/MAP_FIXED/fork, a
//! program SIGSEGV handler, SSE/AVX and string moves) run under
//! `softvfio run`, static under trace mode and dynamic under preload mode,
//! and must print what Linux 6.1 printed on QEMU's edu
//! (`kernel-6.1-mmio-traffic.txt`, `kernel-6.1-mmio-bad.txt`, recorded by
//! `tests-oracle/record-mmio.sh`), except for the documented deviations,
//! each asserted exactly. The traffic through the mapping must also print
//! what the traffic through pread/pwrite prints.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{build_c, build_c_file, result_lines, softvfio_run};

fn oracle_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests-oracle")
}

fn recorded(name: &str) -> Vec<(String, String)> {
    let path = oracle_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    result_lines(&text)
}

/// (mode or "both", case, softvfio's exact answer, why).
const DEVIATIONS: &[(&str, &str, &str, &str)] = &[
    (
        "both",
        "pread_dma_regs_read8",
        "src=0x1000000 dst=0x40000 cnt=0x40",
        "an 8-byte pread of edu's 64-bit registers reaches the device whole, as since \
         Linux 6.14 (EduOptions::mmio_64bit; 6.1 splits it and reads ~0 above bit 31)",
    ),
    (
        "both",
        "bar_part_read",
        "0x00000000",
        "edu's DMA read of its own BAR is a completer abort (a DMA fault; edu zero-fills \
         the buffer): our models run their DMA inside the register write that starts it, \
         holding the device, so the read could never complete; QEMU's edu runs its DMA \
         from a timer and reads its own registers (docs/MMIO.md, \"Peer to peer\")",
    ),
];

fn run(program: &str, mode: &str) -> (Vec<(String, String)>, common::Output) {
    let static_ = mode == "trace";
    let src = oracle_dir().join(format!("{program}.c"));
    let exe = build_c_file(&src, &format!("{program}-{mode}"), static_);
    let out = softvfio_run(mode, &[], &exe, &["/dev/vfio/3", "0000:00:03.0"]);
    (result_lines(&out.stdout), out)
}

/// `got` against `want`: every line equal, in the same order, except the
/// deviations of `mode`, which must show exactly their documented answer.
fn compare(mode: &str, want: &[(String, String)], got: &[(String, String)]) -> Vec<String> {
    let got_map: HashMap<&str, &str> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut out = Vec::new();
    for (name, linux) in want {
        let dev = DEVIATIONS
            .iter()
            .find(|(m, c, _, _)| (*m == mode || *m == "both") && c == name);
        let expect = dev.map_or(linux.as_str(), |(_, _, ours, _)| *ours);
        match got_map.get(name.as_str()) {
            None => out.push(format!("{name}: missing (linux `{linux}`)")),
            Some(g) if *g != expect => out.push(format!(
                "{name}: linux `{linux}` want `{expect}` softvfio `{g}`"
            )),
            Some(_) => {}
        }
    }
    let names_want: Vec<&str> = want.iter().map(|(k, _)| k.as_str()).collect();
    let names_got: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    if out.is_empty() && names_want != names_got {
        out.push(format!("other lines or order: {names_got:?}"));
    }
    out
}

fn check(program: &str, mode: &str) -> Vec<(String, String)> {
    let want = recorded(&format!("kernel-6.1-{}.txt", program.replace('_', "-")));
    let (got, out) = run(program, mode);
    let diff = compare(mode, &want, &got);
    assert!(
        diff.is_empty(),
        "{program} under {mode}: {} of {} lines differ from Linux 6.1:\n{}\n--- stderr ---\n{}",
        diff.len(),
        want.len(),
        diff.join("\n"),
        out.stderr
    );
    // The programs exit with their files and mappings open, as Linux
    // allows: nothing may leak.
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("after release: 0 pinned pages, 0 accounted pages: no leak"),
        "{}",
        out.stderr
    );
    got
}

/// The mmap half of the traffic prints what the pread half prints (but for
/// the 8-byte reads, which differ on Linux 6.1 by design).
fn mmap_half_matches_pread_half(lines: &[(String, String)]) {
    let half = |prefix: &str| -> Vec<(String, String)> {
        lines
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|c| (c.to_string(), v.clone())))
            .collect()
    };
    let (p, m) = (half("pread_"), half("mmap_"));
    assert_eq!(p.len(), 15, "{p:?}");
    assert_eq!(p, m);
}

#[test]
fn recorded_runs_are_complete() {
    for (file, n) in [
        ("kernel-6.1-mmio-traffic.txt", 32),
        ("kernel-6.1-mmio-bad.txt", 84),
        ("kernel-6.1-mmio-split.txt", 27),
    ] {
        let lines = recorded(file);
        assert_eq!(lines.len(), n, "{file}");
        assert_eq!(
            lines.last().map(|(k, _)| k.as_str()),
            Some("done"),
            "{file}"
        );
    }
    let traffic = recorded("kernel-6.1-mmio-traffic.txt");
    let get = |k: &str| traffic.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(
        get("region_info_bar0").as_deref(),
        Some("flags=0x7 size=0x100000")
    );
    assert_eq!(
        get("mmap_dma_regs_read8").as_deref(),
        Some("src=0x1000000 dst=0x40000 cnt=0x40")
    );
    // On Linux 6.1 the halves differ only in the 8-byte reads.
    let mut linux = traffic.clone();
    linux.retain(|(k, _)| !k.ends_with("dma_regs_read8"));
    let half = |p: &str| -> Vec<(String, String)> {
        linux
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(p).map(|c| (c.to_string(), v.clone())))
            .collect()
    };
    assert_eq!(half("pread_"), half("mmap_"));
}

#[test]
fn deviations_name_recorded_cases() {
    let mut all = recorded("kernel-6.1-mmio-traffic.txt");
    all.extend(recorded("kernel-6.1-mmio-bad.txt"));
    all.extend(recorded("kernel-6.1-mmio-split.txt"));
    for (_, case, ours, why) in DEVIATIONS {
        let linux = all.iter().find(|(k, _)| k == case).map(|(_, v)| v.as_str());
        assert!(linux.is_some(), "deviation for unknown case `{case}`");
        assert_ne!(linux, Some(*ours), "`{case}` is no deviation: {why}");
    }
}

#[test]
fn traffic_under_trace_as_linux_and_as_pread() {
    let got = check("mmio_traffic", "trace");
    mmap_half_matches_pread_half(&got);
}

#[test]
fn traffic_under_preload_as_linux_and_as_pread() {
    let got = check("mmio_traffic", "preload");
    mmap_half_matches_pread_half(&got);
}

#[test]
fn bad_input_under_trace_as_linux() {
    check("mmio_bad", "trace");
}

#[test]
fn bad_input_under_preload_as_linux() {
    check("mmio_bad", "preload");
}

/// An instruction the emulator refuses stops the program (SIGKILL) with a
/// report naming it, its address and the BAR offset; the program never
/// runs on.
#[test]
fn unsupported_instruction_stops_the_program_with_a_report() {
    for mode in ["trace", "preload"] {
        let exe = build_c("mmio_fatal", mode == "trace");
        let out = softvfio_run(mode, &[], &exe, &["/dev/vfio/3", "0000:00:03.0"]);
        assert_eq!(out.stdout, "mapped 1\n", "{mode}: {}", out.stderr);
        assert_eq!(
            out.code,
            Some(128 + libc::SIGKILL),
            "{mode}: {}",
            out.stderr
        );
        let report = out
            .stderr
            .lines()
            .find(|l| l.contains("cannot emulate"))
            .unwrap_or_else(|| panic!("{mode}: no report in {}", out.stderr));
        assert!(
            report.contains("cannot emulate `setne ["),
            "{mode}: {report}"
        );
        assert!(report.contains("+10h]` at rip 0x"), "{mode}: {report}");
        assert!(report.contains("(BAR 0 offset 0x10)"), "{mode}: {report}");
        assert!(
            report.contains("stopping the program (SIGKILL)"),
            "{mode}: {report}"
        );
    }
}

/// MAP_DMA of a BAR mapping (peer to peer): mapped and unmapped with
/// nothing pinned or charged (type1v2 refuses to split it, EINVAL); a
/// range of the BAR's last page and a PROT_NONE page is EFAULT; edu's DMA
/// to the IOVA reaches its own liveness register (the write is posted
/// while edu is busy with the DMA, and lands when it is done), with no
/// fault.
#[test]
fn map_dma_of_a_bar_mapping() {
    for mode in ["trace", "preload"] {
        let exe = build_c("mmio_p2p", mode == "trace");
        let out = softvfio_run(mode, &[], &exe, &["/dev/vfio/3", "0000:00:03.0"]);
        assert_eq!(
            out.stdout,
            "map_full_bar 0\nmap_part_bar_part_none 14\nliveness_before 0x00000000\n\
             dma_done cmd=0x2\nliveness_after 0xffffffff\n\
             unmap_part 22\nunmap_whole 0\nmunmap 0\n",
            "{mode}: {}",
            out.stderr
        );
        assert_eq!(out.code, Some(0), "{mode}: {}", out.stderr);
        assert!(
            out.stderr.contains("DMA faults: none\n"),
            "{mode}: {}",
            out.stderr
        );
        assert!(
            out.stderr
                .contains("after release: 0 pinned pages, 0 accounted pages: no leak"),
            "{mode}: {}",
            out.stderr
        );
    }
}

/// A range half BAR mapping, half memory (`tests-oracle/mmio_split.c`):
/// each part mapped as Linux 6.1 maps it (the memory charged, the BAR
/// not), DMA into both parts, and the unmap, as Linux printed.
#[test]
fn split_range_under_trace_as_linux() {
    check("mmio_split", "trace");
}

#[test]
fn split_range_under_preload_as_linux() {
    check("mmio_split", "preload");
}

/// Trapped loads from three threads (one on a SIGSTKSZ alternate signal
/// stack) while a fourth maps, protects and unmaps memory and maps and
/// unmaps a second BAR mapping: every load gives edu's ID, and each of the
/// program's own faults (a PROT_NONE page) reaches its handler.
#[test]
fn threads_fault_while_another_remaps() {
    for mode in ["trace", "preload"] {
        let exe = build_c("mmio_threads", mode == "trace");
        let out = softvfio_run(mode, &[], &exe, &["/dev/vfio/3", "0000:00:03.0"]);
        assert_eq!(
            out.stdout, "readers bad=0 churn=0\n",
            "{mode}: {}",
            out.stderr
        );
        assert_eq!(out.code, Some(0), "{mode}: {}", out.stderr);
    }
}
