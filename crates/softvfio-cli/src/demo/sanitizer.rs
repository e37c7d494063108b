//! `softvfio demo --sanitizer`: a small buggy VFIO driver
//! (`tests/programs/dma_bugs.c`, compiled here with gcc) run under
//! `softvfio run --sanitize` in three of its scenarios: DMA after unmap,
//! DMA into memory the program freed (munmap) while it was still mapped,
//! and a leaked mapping; each with the report the sanitizer gives.

use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = include_str!("../../tests/programs/dma_bugs.c");

const SCENARIOS: &[(&str, &str)] = &[
    (
        "after-unmap",
        "the driver unmaps its buffer, then starts a DMA to it",
    ),
    (
        "munmap",
        "the driver frees (munmaps) memory still mapped for DMA, then the device writes it",
    ),
    (
        "leak",
        "the driver exits with a mapping, its device and an MSI eventfd still set up",
    ),
];

pub fn main(mode: &str) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("softvfio-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = run(&dir, mode);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(dir: &std::path::Path, mode: &str) -> Result<(), String> {
    let src = dir.join("dma_bugs.c");
    let bin = dir.join("dma_bugs");
    std::fs::write(&src, SOURCE).map_err(|e| format!("{}: {e}", src.display()))?;
    let cc = Command::new("gcc")
        .args(["-O0", "-g", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(|e| format!("this demo compiles a C program and needs gcc: {e}"))?;
    if !cc.status.success() {
        return Err(format!(
            "gcc failed: {}",
            String::from_utf8_lossy(&cc.stderr)
        ));
    }
    let me: PathBuf = std::env::current_exe().map_err(|e| e.to_string())?;
    for (scenario, what) in SCENARIOS {
        println!("=== {scenario}: {what}");
        println!("$ softvfio run --mode {mode} --sanitize -- dma_bugs {scenario}");
        let status = Command::new(&me)
            .args(["run", "--mode", mode, "--sanitize", "--"])
            .arg(&bin)
            .arg(scenario)
            .status()
            .map_err(|e| e.to_string())?;
        println!("(exit status {})\n", status.code().unwrap_or(-1));
    }
    Ok(())
}
