//! uapi-*: what a VFIO call costs an unmodified program, through
//! `softvfio run` in each mode (issue 18's front-end rows). One C program
//! (`uapi_bench.c`) measures, per round and interleaved, the call and a
//! baseline it makes itself:
//!
//! - **uapi-bar**: a 4-byte `pread` of edu's ID register on the device fd,
//!   against a 4-byte `pread` of a plain file made by the same program
//!   (which, in trace mode, stops in the supervisor too: the note gives
//!   the supervisor's price for a call that is not ours) and against the
//!   same `pread` made natively by this process (the row's baseline).
//! - **uapi-map-4k**: `VFIO_IOMMU_MAP_DMA` + `UNMAP_DMA` of one populated
//!   4 KiB page against `mlock` + `munlock` of it (the kernel's floor for
//!   pinning that page).
//! - **uapi-huge-1g** (trace mode, as in the issue): MAP+UNMAP of 1 GiB of
//!   populated hugetlb memory against `MADV_POPULATE_WRITE` + `mlock` +
//!   `munlock` of it. Needs 512 free 2 MiB pages (raised for the run when
//!   root, as map-2m does).
//! - **uapi-map-fresh**: MAP+UNMAP of 1 GiB of fresh 4K memory (a new
//!   `mmap` every round) against the single-threaded populate, `mlock` and
//!   `munlock` of fresh memory in a helper process. Preload pins on the engine's
//!   pool (every core), trace on the program's thread.
//!
//! trace runs a static build (the trace mode's reason to exist), preload a
//! dynamic one; `trace-ptrace` is trace mode with seccomp user
//! notification switched off (`SOFTVFIO_TRACE_NOTIFY=0`), every call at a
//! ptrace stop as before it, run in the same bench for comparison.
//! `preload-keeper` runs the preload program, then forks once with its VFIO
//! files open, which moves the engine to the keeper (docs/DESIGN.md §5),
//! and measures the bar and map4k rounds again: the cost of a forwarded
//! call, with the same program's in-process figures in the note. The
//! pinning floors run in a helper process forked before any VFIO file is
//! opened, so that measuring them never hands the engine off. Needs gcc and a static libc; skipped, saying why, without.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::stats::{median, spread};
use super::sys::HugePool;
use super::{Better, Ctx, Outcome, PlotData, Row};

const SOURCE: &str = include_str!("uapi_bench.c");
const HUGE_MB: u64 = 1024;
const FRESH_MB: u64 = 1024;

fn build(dir: &Path, static_: bool) -> Result<PathBuf, String> {
    super::build_c_program(dir, "uapi_bench", SOURCE, static_)
}

/// The samples of one program run: per kind ("bar", "map4k", "huge"),
/// (baseline ns, subject ns) per round.
#[derive(Default)]
struct Samples {
    bar: Vec<(f64, f64)>,
    map4k: Vec<(f64, f64)>,
    huge: Vec<(f64, f64)>,
    fresh: Vec<(f64, f64)>,
    /// The bar and map4k rounds after the hand-off to the keeper
    /// (`preload-keeper`).
    kbar: Vec<(f64, f64)>,
    kmap4k: Vec<(f64, f64)>,
}

struct Plan<'a> {
    /// `trace`, `trace-ptrace` (trace with SOFTVFIO_TRACE_NOTIFY=0: every
    /// call at a ptrace stop), `preload` or `preload-keeper` (preload, then
    /// the same calls after a fork with the files open has moved the engine
    /// to the keeper).
    mode: &'a str,
    exe: &'a Path,
    plain: &'a Path,
    rounds: usize,
    bar_iters: usize,
    map_iters: usize,
    huge_mb: u64,
    fresh_mb: u64,
}

fn run(p: &Plan<'_>) -> Result<Samples, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let handoff = p.mode.ends_with("-keeper");
    let mode = p.mode.split('-').next().unwrap_or(p.mode);
    let mut cmd = Command::new(me);
    if p.mode.ends_with("-ptrace") {
        cmd.env("SOFTVFIO_TRACE_NOTIFY", "0");
    }
    cmd.args(["run", "--quiet", "--mode", mode]);
    if p.mode.ends_with("-sanitized") {
        cmd.arg("--sanitize");
    }
    let out = cmd
        .arg("--")
        .arg(p.exe)
        .args(["/dev/vfio/3", "0000:00:03.0"])
        .arg(p.plain)
        .arg(p.rounds.to_string())
        .arg(p.bar_iters.to_string())
        .arg(p.map_iters.to_string())
        .arg(p.huge_mb.to_string())
        .arg(p.fresh_mb.to_string())
        .arg(if handoff { "1" } else { "0" })
        .output()
        .map_err(|e| format!("softvfio run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{} run failed ({}): {}",
            p.mode,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut s = Samples::default();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let mut it = l.split_whitespace();
        let (Some(kind), Some(b), Some(v)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let (Ok(b), Ok(v)) = (b.parse::<f64>(), v.parse::<f64>()) else {
            continue;
        };
        match kind {
            "bar" => s.bar.push((b, v)),
            "map4k" => s.map4k.push((b, v)),
            "huge" => s.huge.push((b, v)),
            "fresh" => s.fresh.push((b, v)),
            "kbar" => s.kbar.push((b, v)),
            "kmap4k" => s.kmap4k.push((b, v)),
            _ => {}
        }
    }
    let want = |mb: u64| if mb > 0 { p.rounds } else { 0 };
    if s.bar.len() != p.rounds
        || s.map4k.len() != p.rounds
        || s.huge.len() != want(p.huge_mb)
        || s.fresh.len() != want(p.fresh_mb)
        || s.kbar.len() != if handoff { p.rounds } else { 0 }
        || s.kmap4k.len() != s.kbar.len()
    {
        return Err(format!("{}: incomplete output of the program", p.mode));
    }
    Ok(s)
}

/// ns of one native 4-byte pread of `plain`, over `iters`.
fn native_pread_ns(plain: &Path, iters: usize) -> Result<f64, String> {
    let f = std::fs::File::open(plain).map_err(|e| e.to_string())?;
    let mut b = [0u8; 4];
    let t = std::time::Instant::now();
    for _ in 0..iters {
        f.read_exact_at(&mut b, 0).map_err(|e| e.to_string())?;
    }
    Ok(t.elapsed().as_nanos() as f64 / iters as f64)
}

fn row(bench: String, base: &[f64], subj: &[f64], baseline: String, note: String) -> Row {
    Row {
        bench,
        value: median(subj),
        unit: "ns",
        baseline,
        baseline_value: median(base),
        better: Better::Lower,
        note,
    }
}

fn firsts(v: &[(f64, f64)]) -> Vec<f64> {
    v.iter().map(|x| x.0).collect()
}

fn seconds(v: &[(f64, f64)]) -> Vec<f64> {
    v.iter().map(|x| x.1).collect()
}

/// Runs each mode's program; `huge` adds the 1 GiB hugetlb round in trace.
fn measure(ctx: &Ctx, huge: bool, want: &str) -> Result<Outcome, String> {
    let dir = std::env::temp_dir().join(format!("softvfio-uapi-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let res = measure_in(ctx, huge, want, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn measure_in(ctx: &Ctx, huge: bool, want: &str, dir: &Path) -> Result<Outcome, String> {
    let (stat, dynamic) = match (build(dir, true), build(dir, false)) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => {
            return Ok(Outcome::Skipped(format!("cannot build the program: {e}")))
        }
    };
    let plain = dir.join("plain");
    std::fs::write(&plain, [0xed, 0, 0, 1]).map_err(|e| e.to_string())?;
    let _pool = if huge {
        match HugePool::reserve(HUGE_MB / 2) {
            Ok(p) => Some(p),
            Err(e) => return Ok(Outcome::Skipped(e)),
        }
    } else {
        None
    };
    let rounds = ctx.reps.max(3);
    let mut rows = Vec::new();
    let modes: &[(&str, &Path)] = if huge {
        &[("trace", &stat)]
    } else if want == "fresh" {
        &[("trace", &stat), ("preload", &dynamic)]
    } else {
        &[
            ("trace", &stat),
            ("trace-ptrace", &stat),
            ("preload", &dynamic),
            ("preload-keeper", &dynamic),
        ]
    };
    for (mode, exe) in modes {
        // Iterations sized so that one round takes tens of ms in either mode.
        // (A forwarded call costs about what a trace-mode call does.)
        let (bar_iters, map_iters) = if mode.starts_with("trace") || mode.ends_with("-keeper") {
            (2000, 500)
        } else {
            (20000, 5000)
        };
        let plan = Plan {
            mode,
            exe,
            plain: &plain,
            rounds,
            bar_iters,
            map_iters,
            huge_mb: if huge { HUGE_MB } else { 0 },
            fresh_mb: if want == "fresh" { FRESH_MB } else { 0 },
        };
        // The native baseline, measured before and after the run.
        let mut native = vec![native_pread_ns(&plain, bar_iters)?];
        let s = run(&plan)?;
        native.push(native_pread_ns(&plain, bar_iters)?);
        let keeper = *mode == "preload-keeper";
        let (bar, map4k) = if keeper {
            (&s.kbar, &s.kmap4k)
        } else {
            (&s.bar, &s.map4k)
        };
        // For the keeper's rows: the in-process calls of the same program
        // run, before its fork.
        let before = |v: &[(f64, f64)], unit: &str| {
            if keeper {
                format!(
                    "; after a fork with the files open (forwarded to the keeper); the same program in process before the fork {}",
                    spread(&seconds(v), 1.0, unit)
                )
            } else {
                String::new()
            }
        };
        match want {
            "bar" => {
                let (plain_in, dev) = (firsts(bar), seconds(bar));
                rows.push(row(
                    format!("uapi-bar:{mode}"),
                    &native,
                    &dev,
                    "4-byte pread of a plain file, natively".into(),
                    format!(
                        "{rounds} rounds of {bar_iters}; device pread {}; the same plain pread in the program under {mode} {}{}",
                        spread(&dev, 1.0, "ns"),
                        spread(&plain_in, 1.0, "ns"),
                        before(&s.bar, "ns")
                    ),
                ));
            }
            "map4k" => {
                let (floor, map) = (firsts(map4k), seconds(map4k));
                rows.push(row(
                    format!("uapi-map-4k:{mode}"),
                    &floor,
                    &map,
                    format!("mlock+munlock of a 4 KiB page in a helper process ({mode} mode)"),
                    format!(
                        "{rounds} rounds of {map_iters} MAP_DMA+UNMAP_DMA of one populated 4 KiB page; {}{}",
                        spread(&map, 1.0, "ns"),
                        before(&s.map4k, "ns")
                    ),
                ));
            }
            "fresh" => {
                let (floor, map) = (firsts(&s.fresh), seconds(&s.fresh));
                let pins = if *mode == "preload" {
                    format!(
                        "the engine pins on {} threads (its pool)",
                        softvfio::memory::host::parallel::default_pin_threads()
                    )
                } else {
                    "the engine pins on the program's thread (injected calls)".into()
                };
                rows.push(row(
                    format!("uapi-map-fresh:{mode}"),
                    &floor,
                    &map,
                    "MADV_POPULATE_WRITE+mlock+munlock of fresh 1 GiB, one thread, in a helper process".into(),
                    format!(
                        "{rounds} rounds of MAP_DMA+UNMAP_DMA of 1 GiB of fresh 4K memory; {pins}; {}; target ratio <= 0.6 (preload)",
                        spread(&map, 1e6, "ms")
                    ),
                ));
            }
            _ => {
                let (floor, map) = (firsts(&s.huge), seconds(&s.huge));
                rows.push(row(
                    format!("uapi-huge-1g:{mode}"),
                    &floor,
                    &map,
                    "MADV_POPULATE_WRITE+mlock+munlock of the same 1 GiB in a helper process".into(),
                    format!(
                        "{rounds} rounds of MAP_DMA+UNMAP_DMA of 1 GiB of populated hugetlb 2M memory; {}",
                        spread(&map, 1e6, "ms")
                    ),
                ));
            }
        }
    }
    Ok(Outcome::Rows(rows))
}

/// uapi-sanitize: the bar and map4k rounds of each mode under `softvfio
/// run --sanitize` against the same rounds without it. One program run of
/// one round per sample, the two kinds alternating (and which goes first
/// alternating too), so that both see the same machine.
pub fn sanitize(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    let dir = std::env::temp_dir().join(format!("softvfio-uapi-san-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let res = sanitize_in(ctx, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn sanitize_in(ctx: &Ctx, dir: &Path) -> Result<Outcome, String> {
    let (stat, dynamic) = match (build(dir, true), build(dir, false)) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => {
            return Ok(Outcome::Skipped(format!("cannot build the program: {e}")))
        }
    };
    let plain = dir.join("plain");
    std::fs::write(&plain, [0xed, 0, 0, 1]).map_err(|e| e.to_string())?;
    let pairs = ctx.reps.max(3);
    let mut rows = Vec::new();
    for (mode, exe) in [("trace", &stat), ("preload", &dynamic)] {
        let (bar_iters, map_iters) = if mode == "trace" {
            (2000, 500)
        } else {
            (20000, 5000)
        };
        let sanitized = format!("{mode}-sanitized");
        // Per pair: (bar, map4k) without, then with the sanitizer.
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for i in 0..pairs {
            let one = |m: &str| {
                run(&Plan {
                    mode: m,
                    exe,
                    plain: &plain,
                    rounds: 1,
                    bar_iters,
                    map_iters,
                    huge_mb: 0,
                    fresh_mb: 0,
                })
                .map(|s| (s.bar[0].1, s.map4k[0].1))
            };
            if i % 2 == 0 {
                off.push(one(mode)?);
                on.push(one(&sanitized)?);
            } else {
                on.push(one(&sanitized)?);
                off.push(one(mode)?);
            }
        }
        for (kind, pick, iters, what) in [
            (
                "uapi-map-4k",
                (|x: &(f64, f64)| x.1) as fn(&(f64, f64)) -> f64,
                map_iters,
                "MAP_DMA+UNMAP_DMA of one populated 4 KiB page",
            ),
            (
                "uapi-bar",
                |x: &(f64, f64)| x.0,
                bar_iters,
                "4-byte BAR pread",
            ),
        ] {
            let base: Vec<f64> = off.iter().map(pick).collect();
            let subj: Vec<f64> = on.iter().map(pick).collect();
            let ratios: Vec<f64> = base.iter().zip(&subj).map(|(b, s)| s / b).collect();
            rows.push(row(
                format!("{kind}:{sanitized}"),
                &base,
                &subj,
                format!("the same calls under {mode} without --sanitize"),
                format!(
                    "{pairs} alternating runs of {iters} {what} each way; sanitized {}; without {}; ratio per pair {}; target ratio <= 1.10",
                    spread(&subj, 1.0, "ns"),
                    spread(&base, 1.0, "ns"),
                    spread(&ratios, 1.0, "x")
                ),
            ));
        }
    }
    Ok(Outcome::Rows(rows))
}

pub fn bar(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    measure(ctx, false, "bar")
}

pub fn map_4k(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    measure(ctx, false, "map4k")
}

pub fn map_fresh(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    measure(ctx, false, "fresh")
}

pub fn huge_1g(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    measure(ctx, true, "huge")
}
