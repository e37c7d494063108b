//! uapi-stat: what the stat family costs a program under `softvfio run`
//! for files that are not VFIO's, as programs call it all the time
//! (stdio's `fstat`, `opendir`, QEMU's start-up). One C program
//! (`stat_bench.c`) times libc's `fstat` of a plain file's descriptor,
//! `stat` of its absolute path and `statx` of it; the row's baseline is the
//! same program run natively, the runs alternating (and which goes first
//! alternating too), one round each.
//!
//! Modes: `trace` (the stat family served by seccomp user notification,
//! the supervisor letting these calls continue to the kernel),
//! `trace-ptrace` (`SOFTVFIO_TRACE_NOTIFY=0`: every call at a ptrace stop,
//! how trace mode served the stat family before), `preload` (libc's
//! functions hooked in process). Under softvfio the program opens the VFIO
//! container first, as QEMU holds its VFIO files while it runs: the
//! supervisor then has objects to tell the file's descriptor from (a
//! `/proc/<tid>/fd` lookup per `fstat`). Needs gcc and a static libc;
//! skipped, saying why, without.

use std::path::Path;
use std::process::Command;

use super::stats::{median, spread};
use super::{Better, Ctx, Outcome, PlotData, Row};

const SOURCE: &str = include_str!("stat_bench.c");

/// The program's lines, in its order.
const CALLS: [&str; 3] = ["fstat", "stat", "statx"];

/// One run of one round of `iters` calls each: ns per call, in [`CALLS`]
/// order. `mode` None: natively.
fn one(mode: Option<&str>, exe: &Path, plain: &Path, iters: usize) -> Result<[f64; 3], String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = match mode {
        None => Command::new(exe),
        Some(m) => {
            let mut c = Command::new(&me);
            if m.ends_with("-ptrace") {
                c.env("SOFTVFIO_TRACE_NOTIFY", "0");
            }
            let base = m.split('-').next().unwrap_or(m);
            c.args(["run", "--quiet", "--mode", base, "--"]).arg(exe);
            c
        }
    };
    let out = cmd
        .arg(plain)
        .arg("1")
        .arg(iters.to_string())
        .arg(if mode.is_some() { "1" } else { "0" })
        .output()
        .map_err(|e| format!("run {}: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} run failed ({}): {}",
            mode.unwrap_or("native"),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut ns = [f64::NAN; 3];
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((k, v)) = l.split_once(' ') else {
            continue;
        };
        if let (Some(i), Ok(v)) = (CALLS.iter().position(|c| *c == k), v.parse::<f64>()) {
            ns[i] = v;
        }
    }
    if ns.iter().any(|v| v.is_nan()) {
        return Err(format!(
            "{}: incomplete output of the program",
            mode.unwrap_or("native")
        ));
    }
    Ok(ns)
}

pub fn stat_family(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    let dir = std::env::temp_dir().join(format!("softvfio-uapi-stat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let res = measure_in(ctx, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn measure_in(ctx: &Ctx, dir: &Path) -> Result<Outcome, String> {
    let build = |static_| super::build_c_program(dir, "stat_bench", SOURCE, static_);
    let (stat, dynamic) = match (build(true), build(false)) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => {
            return Ok(Outcome::Skipped(format!("cannot build the program: {e}")))
        }
    };
    let plain = dir.join("plain");
    std::fs::write(&plain, b"plain\n").map_err(|e| e.to_string())?;
    let pairs = ctx.reps.max(3);
    let mut rows = Vec::new();
    for (mode, exe, iters) in [
        ("trace", &stat, 2000),
        ("trace-ptrace", &stat, 1000),
        ("preload", &dynamic, 20000),
    ] {
        let (mut native, mut subject) = (Vec::new(), Vec::new());
        for i in 0..pairs {
            if i % 2 == 0 {
                native.push(one(None, exe, &plain, iters)?);
                subject.push(one(Some(mode), exe, &plain, iters)?);
            } else {
                subject.push(one(Some(mode), exe, &plain, iters)?);
                native.push(one(None, exe, &plain, iters)?);
            }
        }
        for (k, call) in CALLS.iter().enumerate() {
            let base: Vec<f64> = native.iter().map(|v| v[k]).collect();
            let subj: Vec<f64> = subject.iter().map(|v| v[k]).collect();
            rows.push(Row {
                bench: format!("uapi-stat:{call}:{mode}"),
                value: median(&subj),
                unit: "ns",
                baseline: format!("libc {call} of a plain file, natively (the same program)"),
                baseline_value: median(&base),
                better: Better::Lower,
                note: format!(
                    "{pairs} alternating runs of {iters} calls; under {mode} {}; natively {}; the program holds the VFIO container open",
                    spread(&subj, 1.0, "ns"),
                    spread(&base, 1.0, "ns")
                ),
            });
        }
    }
    Ok(Outcome::Rows(rows))
}
