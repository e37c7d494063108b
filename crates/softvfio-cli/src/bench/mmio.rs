//! mmio-trap: the cost of one trapped load on an mmap'd BAR (a SIGSEGV
//! resolved by the trace supervisor or the preload library's handler, the
//! instruction emulated on edu) next to the same 4-byte read with `pread`
//! on the device file, in the same program, interleaved, under
//! `softvfio run --mode trace` (static build) and `--mode preload`
//! (dynamic build). Needs gcc (and a static libc for trace mode); skipped,
//! saying why, without them.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::stats::{median, spread};
use super::{Better, Ctx, Outcome, PlotData, Row};

const SOURCE: &str = include_str!("mmio_bench.c");

fn build(dir: &Path, static_: bool) -> Result<PathBuf, String> {
    super::build_c_program(dir, "mmio_bench", SOURCE, static_)
}

/// (pread ns, mmap ns) per round of one run.
fn run(mode: &str, exe: &Path, rounds: usize, iters: usize) -> Result<Vec<(f64, f64)>, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(me)
        .args(["run", "--mode", mode, "--"])
        .arg(exe)
        .args(["/dev/vfio/3", "0000:00:03.0"])
        .arg(rounds.to_string())
        .arg(iters.to_string())
        .env("SOFTVFIO_QUIET", "1")
        .output()
        .map_err(|e| format!("softvfio run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{mode} run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.strip_prefix("round ")?.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect();
    if rows.len() != rounds {
        return Err(format!(
            "{mode}: {} of {rounds} rounds reported",
            rows.len()
        ));
    }
    Ok(rows)
}

pub fn trap(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    let dir = std::env::temp_dir().join(format!("softvfio-mmio-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let built = (build(&dir, true), build(&dir, false));
    let (stat, dynamic) = match built {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(Outcome::Skipped(format!("cannot build the program: {e}")));
        }
    };
    let rounds = ctx.reps.max(3);
    let mut rows = Vec::new();
    for (mode, exe, iters) in [("trace", &stat, 2000), ("preload", &dynamic, 20000)] {
        let r = run(mode, exe, rounds, iters);
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let base: Vec<f64> = r.iter().map(|x| x.0).collect();
        let subj: Vec<f64> = r.iter().map(|x| x.1).collect();
        rows.push(Row {
            bench: format!("mmio-trap:{mode}"),
            value: median(&subj),
            unit: "ns",
            baseline: format!("4-byte pread of the same register ({mode} mode)"),
            baseline_value: median(&base),
            better: Better::Lower,
            note: format!(
                "{rounds} rounds of {iters}; mmap load {}; pread {}",
                spread(&subj, 1.0, "ns"),
                spread(&base, 1.0, "ns")
            ),
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Outcome::Rows(rows))
}
