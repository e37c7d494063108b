//! `softvfio run` with whole programs as QEMU is one: `--stats` counts the
//! program's DMA map calls by size and its region accesses (exact counts
//! for a known sequence); a program killed with interrupts enabled leaves
//! no eventfd, thread or mapping in the supervisor, seen from a shell of the
//! same session while it goes on.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `tests/programs/NAME.c` into a file of its own per call: tests
/// run in parallel, and a gcc writing the file another test is executing
/// makes that exec fail with ETXTBSY.
fn build(name: &str) -> Option<PathBuf> {
    static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/programs/{name}.c"));
    let out =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}-{n}", std::process::id()));
    let st = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .ok()?;
    st.success().then_some(out)
}

#[test]
fn stats_count_dma_map_calls_by_size_and_region_accesses() {
    let Some(exe) = build("stats_program") else {
        eprintln!("skipped: cannot build a C program (gcc)");
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_softvfio"))
        .args(["run", "--mode", "trace", "--stats", "--"])
        .arg(&exe)
        .output()
        .expect("run softvfio");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout, "bad 0\n");
    let stats: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            l.starts_with("MAP_DMA") || l.starts_with("UNMAP_DMA") || l.starts_with("region")
        })
        .collect();
    assert_eq!(
        stats,
        [
            "MAP_DMA: 3 call(s) of 20480 bytes, 1 failed; by size: 0x1000:1 0x2000:2",
            "UNMAP_DMA: 2 call(s) of 8192 bytes, 1 failed; by size: 0x0:1 0x2000:1",
            "region reads: 2, region writes: 1",
        ],
        "{stderr}"
    );
    // Without --stats: no such lines.
    let out = Command::new(env!("CARGO_BIN_EXE_softvfio"))
        .args(["run", "--mode", "trace", "--"])
        .arg(&exe)
        .output()
        .expect("run softvfio");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("MAP_DMA"));
}

/// With `--sanitize`, `--stats` also says what capturing the program's call
/// sites cost: one capture per recorded call at least (each MAP_DMA and
/// UNMAP_DMA, failed ones included), their time and their stack reads.
#[test]
fn stats_measure_the_sanitizer_call_site_capture() {
    let Some(exe) = build("stats_program") else {
        eprintln!("skipped: cannot build a C program (gcc)");
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_softvfio"))
        .args(["run", "--mode", "trace", "--stats", "--sanitize", "--"])
        .arg(&exe)
        .output()
        .expect("run softvfio");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("sanitizer call sites: "))
        .unwrap_or_else(|| panic!("no call-site line in {stderr}"));
    let (count, rest) = line.split_once(" captured in ").unwrap();
    let count: u64 = count.parse().unwrap();
    assert!(count >= 5, "{line}");
    let (ms, each) = rest.split_once(" ms (").unwrap();
    let ms: f64 = ms.parse().unwrap();
    let (each, reads) = each.split_once(" us each), ").unwrap();
    let each: f64 = each.parse().unwrap();
    // Each walk reads the stack at least once.
    let reads: u64 = reads.strip_suffix(" stack reads").unwrap().parse().unwrap();
    assert!(reads >= count, "{line}");
    assert!(ms > 0.0 && each > 0.0, "{line}");
    assert!(
        (each * count as f64 / 1e3 - ms).abs() <= 0.01 + ms * 0.01,
        "{line}"
    );
}

/// The shell runs under the supervisor (its parent) and counts the
/// supervisor's eventfds and threads before, while `irq_hold` has
/// interrupts enabled, and after SIGKILL; `softvfio inspect` shows the
/// mappings during and after.
const SCRIPT: &str = r#"
sup=$PPID
count() { echo "eventfds=$(ls -l /proc/$sup/fd | grep -c eventfd) threads=$(ls /proc/$sup/task | wc -l)"; }
echo "before $(count)"
"$HOLD" "$KIND" > "$OUT" &
pid=$!
while ! grep -q enabled "$OUT" 2>/dev/null; do sleep 0.05; done
echo "during $(count)"
"$SOFTVFIO" inspect --pid $sup | grep -c "iova 0x100000 size 1 MiB"
kill -9 $pid
wait $pid
echo "status $?"
sleep 0.3
echo "after $(count)"
"$SOFTVFIO" inspect --pid $sup | grep -c "no open containers"
"#;

fn killed_with_interrupts_enabled(kind: &str) {
    let Some(hold) = build("irq_hold") else {
        eprintln!("skipped: cannot build a C program (gcc)");
        return;
    };
    let out_file = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("irq-hold-{kind}-{}.txt", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_softvfio"))
        .args(["run", "--mode", "trace", "--", "sh", "-c", SCRIPT])
        .env("HOLD", &hold)
        .env("KIND", kind)
        .env("OUT", &out_file)
        .env("SOFTVFIO", env!("CARGO_BIN_EXE_softvfio"))
        .output()
        .expect("run softvfio");
    let _ = std::fs::remove_file(&out_file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}\n{stderr}");
    let threads = lines[0].rsplit("threads=").next().unwrap_or("");
    assert_eq!(
        lines[0],
        format!("before eventfds=0 threads={threads}"),
        "{stdout}"
    );
    // The engine holds the program's interrupt eventfd, as the kernel does.
    assert_eq!(
        lines[1],
        format!("during eventfds=1 threads={threads}"),
        "{stdout}"
    );
    assert_eq!(lines[2], "1", "the mapping is in place:\n{stdout}");
    assert_eq!(lines[3], "status 137", "{stdout}");
    assert_eq!(
        lines[4],
        format!("after eventfds=0 threads={threads}"),
        "{stdout}"
    );
    assert_eq!(lines[5], "1", "no container left:\n{stdout}");
    assert!(
        stderr.contains("after release: 0 pinned pages, 0 accounted pages: no leak"),
        "{stderr}"
    );
}

#[test]
fn killed_with_msi_enabled_leaves_nothing() {
    killed_with_interrupts_enabled("msi");
}

#[test]
fn killed_with_intx_enabled_leaves_nothing() {
    killed_with_interrupts_enabled("intx");
}
