//! vm-start: how long an unmodified QEMU (TCG) under `softvfio run` takes
//! from its start to the guest kernel's first console line (`Linux
//! version ...`; the firmware's lines before it do not count), with 1 and 4 GiB of
//! guest memory, with the emulated edu passed through
//! (`-device vfio-pci,host=0000:00:03.0`: QEMU maps, so pins, all guest
//! memory before the guest runs) and without any device (the baseline,
//! same mode, same run, interleaved). Both modes.
//!
//! The guest is the kernel the QEMU tests use
//! (`$ORACLE_WORK/kroot/boot/vmlinuz-6.1.0-47-amd64`, default
//! `/tmp/type1-oracle`; see crates/softvfio-cli/tests/qemu_passthrough.rs),
//! booted without an initramfs: its first line is all that is
//! waited for, then QEMU is killed. Skipped, saying why, without QEMU or
//! the kernel.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::stats::{interleave, median, spread};
use super::{Better, Ctx, Outcome, PlotData, Row};

const KVER: &str = "6.1.0-47-amd64";
const HOST_EDU: &str = "vfio-pci,host=0000:00:03.0";
/// A start slower than this is a failure, not a figure.
const TIMEOUT: Duration = Duration::from_secs(180);

fn kernel() -> Result<PathBuf, String> {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
    };
    if !on_path("qemu-system-x86_64") {
        return Err("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into());
    }
    let work = std::env::var_os("ORACLE_WORK")
        .map_or_else(|| PathBuf::from("/tmp/type1-oracle"), PathBuf::from);
    let k = work.join(format!("kroot/boot/vmlinuz-{KVER}"));
    if k.is_file() {
        Ok(k)
    } else {
        Err(format!(
            "no guest kernel at {} (apt-get download linux-image-{KVER}-unsigned; dpkg -x it into {})",
            k.display(),
            work.join("kroot").display()
        ))
    }
}

/// Seconds from spawning `softvfio run` to the guest's first console line.
fn start_to_first_line(
    kernel: &PathBuf,
    mode: &str,
    mem: &str,
    device: bool,
) -> Result<f64, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(me);
    cmd.args(["run", "--quiet", "--mode", mode, "--", "qemu-system-x86_64"])
        .args(["-accel", "tcg", "-cpu", "max", "-M", "q35", "-m", mem])
        .args(["-smp", "1", "-net", "none", "-nographic", "-no-reboot"])
        .args(["-serial", "stdio", "-monitor", "none"]);
    if device {
        cmd.args(["-device", HOST_EDU]);
    }
    cmd.arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .env_remove("SOFTVFIO_CONFIG")
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("softvfio run: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut line = Vec::new();
        // The guest kernel's first line (the firmware prints before it).
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(_) if line.windows(13).any(|w| w == b"Linux version") => {
                    let _ = tx.send(Some(Instant::now()));
                    return;
                }
                Ok(_) => {}
            }
        }
    });
    let got = rx.recv_timeout(TIMEOUT);
    // The group made for this run: softvfio, QEMU and anything it started.
    super::sys::kill_group(child.id());
    let _ = child.wait();
    match got {
        Ok(Some(t)) => Ok((t - t0).as_secs_f64()),
        Ok(None) => Err(format!(
            "{mode}, {mem}, device {device}: QEMU printed nothing"
        )),
        Err(_) => Err(format!(
            "{mode}, {mem}, device {device}: no output in {TIMEOUT:?}"
        )),
    }
}

pub fn vm_start(ctx: &Ctx, plots: &mut PlotData) -> Result<Outcome, String> {
    let kernel = match kernel() {
        Ok(k) => k,
        Err(why) => return Ok(Outcome::Skipped(why)),
    };
    let reps = ctx.reps.clamp(1, 3);
    let mut rows = Vec::new();
    for mode in ["trace", "preload"] {
        for mem in ["1G", "4G"] {
            let (base, subj) = interleave(
                reps,
                || start_to_first_line(&kernel, mode, mem, false),
                || start_to_first_line(&kernel, mode, mem, true),
            )?;
            let (b, s) = (median(&base), median(&subj));
            plots
                .vm_start
                .push((format!("{mode} {mem}"), b * 1e3, s * 1e3));
            rows.push(Row {
                bench: format!("vm-start:{mode}:{mem}"),
                value: s * 1e9,
                unit: "ns",
                baseline: format!("the same QEMU without the device ({mode} mode)"),
                baseline_value: b * 1e9,
                better: Better::Lower,
                note: format!(
                    "TCG guest, start to the kernel's first line; with edu {}; without {}",
                    spread(&subj, 1.0, "s"),
                    spread(&base, 1.0, "s")
                ),
            });
        }
    }
    Ok(Outcome::Rows(rows))
}
