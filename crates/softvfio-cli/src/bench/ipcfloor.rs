//! ipc-floor: what one request/answer round trip between two processes
//! costs on this machine, per transport, each against a native system call
//! measured in the same round (`ipc_floor.c`): a SOCK_SEQPACKET pair (the
//! keeper's transport before), pipes, eventfds, a futex word in shared
//! memory with and without a bounded spin first (the keeper's transport
//! now). These are the floors of `uapi-bar:preload-keeper`;
//! docs/DESIGN.md §5, "The transport".

use super::stats::{median, spread};
use super::{Better, Ctx, Outcome, PlotData, Row};
use std::process::Command;

const SOURCE: &str = include_str!("ipc_floor.c");

const KINDS: &[(&str, &str)] = &[
    ("seqpacket", "64-byte record each way over SOCK_SEQPACKET"),
    ("pipe", "one byte each way over two pipes"),
    ("eventfd", "an eventfd each way"),
    ("futex", "a shared-memory word, both sides in FUTEX_WAIT"),
    (
        "spin-futex",
        "a shared-memory word, each side spinning up to 5 us before FUTEX_WAIT",
    ),
];

pub fn ipc_floor(ctx: &Ctx, _plots: &mut PlotData) -> Result<Outcome, String> {
    let dir = std::env::temp_dir().join(format!("softvfio-ipc-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let res = measure(ctx, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn measure(ctx: &Ctx, dir: &std::path::Path) -> Result<Outcome, String> {
    let exe = match super::build_c_program(dir, "ipc_floor", SOURCE, false) {
        Ok(e) => e,
        Err(e) => return Ok(Outcome::Skipped(format!("cannot build the program: {e}"))),
    };
    let rounds = ctx.reps.max(3);
    let iters = 3000;
    let out = Command::new(&exe)
        .args([rounds.to_string(), iters.to_string()])
        .output()
        .map_err(|e| format!("ipc_floor: {e}"))?;
    if !out.status.success() {
        return Ok(Outcome::Skipped(format!(
            "ipc_floor failed ({})",
            out.status
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    for (kind, what) in KINDS {
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
            return Err(format!("ipc_floor: {kind}: incomplete output"));
        }
        rows.push(Row {
            bench: format!("ipc-floor:{kind}"),
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
