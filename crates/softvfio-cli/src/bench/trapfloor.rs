//! trap-floor: what the kernel mechanisms under trace mode cost on this
//! machine, per call, each against a native system call measured in the
//! same round (`trap_floor.c`): a seccomp user notification served by a
//! thread waiting in `NOTIF_RECV` with the synchronous wake-up (trace mode
//! now) or polling first (before); a seccomp ptrace stop; the same stop
//! with one injected call; the `/proc/<pid>/fd` readlink that tells which
//! object a descriptor is. These are the floors of `uapi-bar:trace` (one
//! notification) and `uapi-map-4k:trace` (two stops, two injections);
//! docs/PERFORMANCE.md, "The cost of a trapped call".

use super::stats::{median, spread};
use super::{Better, Ctx, Outcome, PlotData, Row};
use std::process::Command;

const SOURCE: &str = include_str!("trap_floor.c");

const KINDS: &[(&str, &str)] = &[
    (
        "notif-recv",
        "user notification, supervisor waiting in NOTIF_RECV with SYNC_WAKE_UP",
    ),
    ("notif-poll", "user notification, supervisor polling first"),
    ("ptrace-stop", "seccomp ptrace stop, resumed"),
    (
        "ptrace-inject",
        "seccomp ptrace stop with one injected system call",
    ),
    ("proc-fd", "readlink of /proc/<pid>/fd/<n> (a socket)"),
];

pub fn trap_floor(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    floor_rows(
        ctx,
        &FloorProgram {
            name: "trap-floor",
            program: "trap_floor",
            source: SOURCE,
            iters: 5000,
            kinds: KINDS,
            // No seccomp or no ptrace here (a container forbidding them).
            unavailable: "seccomp user notification or ptrace unavailable",
        },
    )
}

/// A floor program: C that prints, per round, one line `KIND BASE VALUE`
/// (ns per call of a native system call and of the mechanism) for each of
/// its kinds; one row per kind, the medians over the rounds.
pub(super) struct FloorProgram {
    /// The bench's name, the rows' prefix (`trap-floor`).
    pub name: &'static str,
    /// The program's name (`trap_floor`).
    pub program: &'static str,
    /// Its C source.
    pub source: &'static str,
    /// Calls per round.
    pub iters: usize,
    /// Its kinds, with what each measures.
    pub kinds: &'static [(&'static str, &'static str)],
    /// What a failed run means here.
    pub unavailable: &'static str,
}

/// Builds and runs `p` (in a directory of its own), its rows.
pub(super) fn floor_rows(ctx: &Ctx, p: &FloorProgram) -> Result<Outcome, String> {
    let dir = std::env::temp_dir().join(format!("softvfio-{}-{}", p.name, std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let res = measure(ctx, &dir, p);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn measure(ctx: &Ctx, dir: &std::path::Path, p: &FloorProgram) -> Result<Outcome, String> {
    let exe = match super::build_c_program(dir, p.program, p.source, false) {
        Ok(e) => e,
        Err(e) => return Ok(Outcome::Skipped(format!("cannot build the program: {e}"))),
    };
    let rounds = ctx.reps.max(3);
    let iters = p.iters;
    let out = Command::new(&exe)
        .args([rounds.to_string(), iters.to_string()])
        .output()
        .map_err(|e| format!("{}: {e}", p.program))?;
    if !out.status.success() {
        return Ok(Outcome::Skipped(format!(
            "{} failed ({}): {}",
            p.program, out.status, p.unavailable
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    for (kind, what) in p.kinds {
        let mut base = Vec::new();
        let mut val = Vec::new();
        for l in text.lines() {
            let mut it = l.split_whitespace();
            if it.next() != Some(kind) {
                continue;
            }
            let (Some(Ok(b)), Some(Ok(v))) = (
                it.next().map(str::parse::<f64>),
                it.next().map(str::parse::<f64>),
            ) else {
                continue;
            };
            base.push(b);
            val.push(v);
        }
        if val.len() != rounds {
            return Err(format!("{}: {kind}: incomplete output", p.program));
        }
        rows.push(Row {
            bench: format!("{}:{kind}", p.name),
            value: median(&val),
            unit: "ns",
            baseline: "native getppid".into(),
            baseline_value: median(&base),
            better: Better::Lower,
            note: format!(
                "{what}; {rounds} rounds of {iters}; {}",
                spread(&val, 1.0, "ns")
            ),
        });
    }
    Ok(Outcome::Rows(rows))
}
