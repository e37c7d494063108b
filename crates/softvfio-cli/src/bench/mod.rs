//! `softvfio bench`: named benchmarks, each against a baseline measured in
//! the same run (repetitions of baseline and subject interleaved, medians
//! reported), printed as a table or as JSON lines, with optional SVG charts.
//!
//! One file per family: [`host`] (map+pin of real memory), [`sim`]
//! (TiB-scale simulated memory, 4K churn, dirty bitmaps), [`translate`]
//! (device translation), [`external`] (external pinning). [`sys`] holds the
//! system calls, [`stats`] the timing helpers, [`plot`] the SVG writer.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Args;

pub mod doc;
pub mod engine;
pub mod external;
pub mod host;
pub mod ipcfloor;
pub mod irq;
pub mod mmio;
pub mod plot;
pub mod sanitize;
pub mod sim;
pub mod stats;
// mmap, mlock and friends for the measurements, each with its SAFETY argument.
#[allow(unsafe_code)]
pub mod sys;
pub mod translate;
pub mod trapfloor;
pub mod uapi;
pub mod uapistat;
pub mod vmstart;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Benchmarks to run (all when none is given); `list` shows them.
    names: Vec<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Write SVG charts into DIR.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
    /// Host memory mapped by map-4k, map-thp and map-2m, in GiB.
    #[arg(long, default_value_t = 1.0)]
    size_gib: f64,
    /// Repetitions of each baseline/subject pair (medians are reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Time budget of one repetition of the fast benchmarks, in ms.
    #[arg(long, default_value_t = 200)]
    budget_ms: u64,
    /// Also write the results, the date, the machine and its load into
    /// FILE, between the markers `<!-- softvfio-bench:begin -->` and
    /// `<!-- softvfio-bench:end -->` (appended when absent), e.g.
    /// `softvfio bench --plot docs/perf --doc docs/PERFORMANCE.md`.
    #[arg(long, value_name = "FILE")]
    doc: Option<PathBuf>,
}

/// What one benchmark family needs from the command line.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub size_bytes: u64,
    pub reps: usize,
    pub budget: Duration,
    pub plot: bool,
}

/// Lower or higher values are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

impl Better {
    fn as_str(self) -> &'static str {
        match self {
            Better::Lower => "lower",
            Better::Higher => "higher",
        }
    }
}

/// One figure against its baseline.
#[derive(Debug, Clone)]
pub struct Row {
    pub bench: String,
    pub value: f64,
    pub unit: &'static str,
    pub baseline: String,
    pub baseline_value: f64,
    pub better: Better,
    /// Shown in the table only (target, spread, what was measured).
    pub note: String,
}

impl Row {
    pub fn ratio(&self) -> f64 {
        if self.baseline_value == 0.0 {
            f64::NAN
        } else {
            self.value / self.baseline_value
        }
    }

    fn json(&self) -> serde_json::Value {
        let num = |v: f64| {
            serde_json::Number::from_f64(v)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null)
        };
        serde_json::json!({
            "bench": self.bench,
            "value": num(self.value),
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_value": num(self.baseline_value),
            "ratio": num(self.ratio()),
            "better": self.better.as_str(),
        })
    }
}

/// What a benchmark produced.
pub enum Outcome {
    Rows(Vec<Row>),
    /// Cannot run here; the reason is printed, nothing is faked.
    Skipped(String),
}

/// Data for the charts, filled by the benchmarks that ran.
#[derive(Debug, Default)]
pub struct PlotData {
    /// Map+unmap time against size: (series name, [(GiB, ms)]).
    pub map_vs_size: Vec<(String, Vec<(f64, f64)>)>,
    /// Translation latency bars: (label, ns).
    pub translate: Vec<(String, f64)>,
    /// 1 TiB simulated map+unmap bars: (label, ms).
    pub sim_1t: Vec<(String, f64)>,
    /// QEMU start to first guest line: (mode and size, without the device
    /// ms, with it ms).
    pub vm_start: Vec<(String, f64, f64)>,
}

type BenchFn = fn(&Ctx, &mut PlotData) -> Result<Outcome, String>;

/// The registry: name, what it measures, the function.
const BENCHES: &[(&str, &str, BenchFn)] = &[
    (
        "map-4k",
        "map+unmap of host 4K memory through the engine vs populate+mlock+munlock",
        host::map_4k,
    ),
    (
        "map-thp",
        "map+unmap of MADV_HUGEPAGE memory through the engine vs populate+mlock+munlock",
        host::map_thp,
    ),
    (
        "map-2m",
        "map+unmap of hugetlbfs 2M memory through the engine vs populate+mlock+munlock",
        host::map_2m,
    ),
    (
        "map-1t-sim",
        "map+unmap of 1 TiB simulated memory (1G and 2M pages) vs BTreeMap of the same entries",
        sim::map_1t,
    ),
    (
        "translate-hit",
        "device translation, IOTLB hit, vs vm-memory Iotlb lookup",
        translate::hit,
    ),
    (
        "translate-miss",
        "device translation, IOTLB miss (page walk), vs vm-memory Iotlb lookup",
        translate::miss,
    ),
    (
        "churn-4k",
        "4K map+unmap pairs with 64k live mappings through the engine vs a BTreeMap mapper",
        sim::churn_4k,
    ),
    (
        "pin-external",
        "external (mdev) pinning: bytes per pinned page, pins/s, unpin of 256k pages",
        external::pin_external,
    ),
    (
        "irq-intx",
        "edu INTx to the program's eventfd (raise, read, ack, unmask) vs eventfd write+read",
        irq::intx,
    ),
    (
        "irq-msi",
        "edu MSI to the program's eventfd (raise, read, ack) vs eventfd write+read",
        irq::msi,
    ),
    (
        "sanitize-churn",
        "4K map+unmap pairs (type1 and iommufd) with the DMA sanitizer recording vs the same engine without",
        sanitize::churn,
    ),
    (
        "sanitize-dma",
        "edu DMA through VT-d with the DMA sanitizer on vs off",
        sanitize::dma,
    ),
    (
        "mmio-trap",
        "a load on an mmap'd BAR (trapped, emulated) vs pread of the same register, trace and preload",
        mmio::trap,
    ),
    (
        "dirty-get",
        "GET_BITMAP over 64 GiB of mappings vs filling and copying a bitmap of that size",
        sim::dirty_get,
    ),
    (
        "uapi-bar",
        "a 4-byte BAR register pread through `softvfio run`, trace and preload, vs a native pread of a plain file",
        uapi::bar,
    ),
    (
        "uapi-map-4k",
        "MAP_DMA+UNMAP_DMA of 4 KiB through `softvfio run`, trace and preload, vs mlock+munlock of the page",
        uapi::map_4k,
    ),
    (
        "uapi-sanitize",
        "MAP_DMA+UNMAP_DMA of 4 KiB and a 4-byte BAR pread under `softvfio run --sanitize`, trace and preload, vs the same mode without it",
        uapi::sanitize,
    ),
    (
        "uapi-stat",
        "libc fstat, stat and statx of a plain file through `softvfio run`, trace (notified), trace with ptrace stops and preload, vs the same natively",
        uapistat::stat_family,
    ),
    (
        "trap-floor",
        "the kernel mechanisms under trace mode (user notification, ptrace stop, injection, /proc fd lookup) vs a native system call",
        trapfloor::trap_floor,
    ),
    (
        "ipc-floor",
        "one request/answer round trip between two processes (socket, pipe, eventfd, futex, spin then futex) vs a native system call",
        ipcfloor::ipc_floor,
    ),
    (
        "uapi-huge-1g",
        "MAP_DMA+UNMAP_DMA of 1 GiB hugetlb through `softvfio run` (trace) vs populate+mlock+munlock",
        uapi::huge_1g,
    ),
    (
        "uapi-map-fresh",
        "MAP_DMA+UNMAP_DMA of 1 GiB of fresh 4K memory through `softvfio run`, trace and preload, vs one-thread populate+mlock+munlock",
        uapi::map_fresh,
    ),
    (
        "vm-start",
        "QEMU (TCG, 1 and 4 GiB) under softvfio run, start to the guest's first line, with edu vs no device",
        vmstart::vm_start,
    ),
];

pub fn main(args: BenchArgs) -> u8 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("softvfio bench: {e}");
            1
        }
    }
}

fn run(args: BenchArgs) -> Result<(), String> {
    if args.names.iter().any(|n| n == "list") {
        for (name, what, _) in BENCHES {
            println!("{name:<15} {what}");
        }
        return Ok(());
    }
    for n in &args.names {
        if !BENCHES.iter().any(|(name, _, _)| name == n) {
            return Err(format!("unknown benchmark {n:?} (`softvfio bench list`)"));
        }
    }
    if args.size_gib.is_nan() || args.size_gib <= 0.0 || args.size_gib > 64.0 {
        return Err("--size-gib must be in (0, 64]".into());
    }
    let size_bytes = ((args.size_gib * (1u64 << 30) as f64) as u64) & !((2 << 20) - 1);
    if size_bytes == 0 {
        return Err("--size-gib must be at least 2 MiB".into());
    }
    let ctx = Ctx {
        size_bytes,
        reps: args.reps.max(1),
        budget: Duration::from_millis(args.budget_ms.max(1)),
        plot: args.plot.is_some(),
    };
    if let Some(dir) = &args.plot {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut plots = PlotData::default();
    let mut all = Vec::new();
    let mut skipped = Vec::new();
    let load_before = doc::load_average();
    let mut out = std::io::stdout().lock();
    for (name, _, f) in BENCHES {
        if !args.names.is_empty() && !args.names.iter().any(|n| n == name) {
            continue;
        }
        eprintln!("running {name} ...");
        match f(&ctx, &mut plots).map_err(|e| format!("{name}: {e}"))? {
            Outcome::Rows(rows) => {
                for r in &rows {
                    if args.json {
                        let _ = writeln!(out, "{}", r.json());
                    }
                }
                all.extend(rows);
            }
            Outcome::Skipped(why) => {
                skipped.push((name.to_string(), why.clone()));
                if args.json {
                    eprintln!("{name}: skipped: {why}");
                } else {
                    let _ = writeln!(out, "{name}: skipped: {why}");
                }
            }
        }
        let _ = out.flush();
    }
    if !args.json {
        write_table(&mut out, &all);
    }
    let load_after = doc::load_average();
    let mut charts = Vec::new();
    if let Some(dir) = &args.plot {
        for (file, svg) in plot::charts(&plots, &all) {
            let path = dir.join(file);
            std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
            eprintln!("wrote {}", path.display());
            charts.push(path);
        }
    }
    if let Some(file) = &args.doc {
        let run = doc::Run {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            load_before,
            load_after,
            rows: &all,
            skipped: &skipped,
            charts: &charts,
        };
        doc::update(file, &run)?;
        eprintln!("wrote the results into {}", file.display());
    }
    Ok(())
}

/// A value in its unit, scaled for reading.
pub fn human(v: f64, unit: &str) -> String {
    if let Some(rest) = unit.strip_prefix("ns") {
        let (s, u) = if v >= 1e9 {
            (v / 1e9, "s")
        } else if v >= 1e6 {
            (v / 1e6, "ms")
        } else if v >= 1e3 {
            (v / 1e3, "µs")
        } else {
            (v, "ns")
        };
        return format!("{s:.3} {u}{rest}");
    }
    if unit == "bytes" {
        let (s, u) = if v >= (1u64 << 30) as f64 {
            (v / (1u64 << 30) as f64, "GiB")
        } else if v >= (1u64 << 20) as f64 {
            (v / (1u64 << 20) as f64, "MiB")
        } else if v >= 1024.0 {
            (v / 1024.0, "KiB")
        } else {
            (v, "B")
        };
        return format!("{s:.2} {u}");
    }
    if v >= 1e6 {
        format!("{:.3}M {unit}", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k {unit}", v / 1e3)
    } else {
        format!("{v:.3} {unit}")
    }
}

fn write_table(out: &mut impl Write, rows: &[Row]) {
    if rows.is_empty() {
        return;
    }
    let w0 = rows.iter().map(|r| r.bench.len()).max().unwrap_or(5).max(5);
    let _ = writeln!(
        out,
        "\n{:<w0$}  {:>20}  {:>20}  {:>8}  baseline / notes",
        "bench", "value", "baseline value", "ratio"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<w0$}  {:>20}  {:>20}  {:>8.3}  {} ({} is better){}",
            r.bench,
            human(r.value, r.unit),
            human(r.baseline_value, r.unit),
            r.ratio(),
            r.baseline,
            r.better.as_str(),
            if r.note.is_empty() {
                String::new()
            } else {
                format!("; {}", r.note)
            }
        );
    }
}

/// Writes a C benchmark program's `source` as `NAME.c` into `dir` and
/// builds it with `gcc -O2` (and `-static`): the executable
/// (`NAME-static` for the static build), or why it could not be built.
pub(crate) fn build_c_program(
    dir: &Path,
    name: &str,
    source: &str,
    static_: bool,
) -> Result<PathBuf, String> {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).map_err(|e| format!("write {}: {e}", src.display()))?;
    let exe = dir.join(if static_ {
        format!("{name}-static")
    } else {
        name.to_owned()
    });
    let mut cmd = Command::new("gcc");
    cmd.args(["-O2", "-o"]).arg(&exe).arg(&src);
    if static_ {
        cmd.arg("-static");
    }
    match cmd.status() {
        Ok(s) if s.success() => Ok(exe),
        Ok(s) => Err(format!("gcc failed ({s})")),
        Err(e) => Err(format!("gcc: {e}")),
    }
}
