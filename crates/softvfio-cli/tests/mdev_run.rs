//! The same static VFIO program (`programs/mdev_dma_program.c`, the DMA part
//! of the conformance probe) under `softvfio run` against edu behind the
//! VT-d model and against mdev-edu (pinning through the external API): the
//! DMA results must be identical. Only two lines may differ, as the kernel
//! says they do: vaddr invalidation is EBUSY with mediated devices, and the
//! dirty bitmap of a mediated-only container holds just the pages the
//! device pinned.
//!
//! Needs a C compiler with a static libc and ptrace; without them the test
//! says why and passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const UUID: &str = "c0ffee00-0000-4000-8000-000000000001";

fn softvfio_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_softvfio"))
}

fn run(
    bin: &Path,
    config: Option<&Path>,
    program: &Path,
    group: &str,
    dev: &str,
) -> BTreeMap<String, String> {
    let mut cmd = Command::new(bin);
    cmd.arg("run");
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd
        .arg("--")
        .arg(program)
        .arg(group)
        .arg(dev)
        .output()
        .expect("run softvfio");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.lines().any(|l| l == "done"),
        "program did not finish:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().to_string()))
        })
        .collect()
}

#[test]
fn mdev_edu_and_edu_behind_the_iommu_give_the_same_dma_results() {
    let bin = softvfio_bin();
    let work = std::env::temp_dir().join(format!("softvfio-mdev-run-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let program = work.join("dma_program");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/mdev_dma_program.c");
    let cc = Command::new("cc")
        .args(["-O1", "-static", "-o"])
        .arg(&program)
        .arg(&src)
        .status();
    if !matches!(cc, Ok(s) if s.success()) {
        eprintln!("skipped: cannot build a static C program");
        return;
    }
    let config = work.join("mdev.toml");
    std::fs::write(
        &config,
        format!("[[device]]\nkind = \"mdev-edu\"\nbdf = \"{UUID}\"\ngroup = 10\n"),
    )
    .unwrap();

    let edu = run(&bin, None, &program, "/dev/vfio/3", "0000:00:03.0");
    let mdev = run(&bin, Some(&config), &program, "/dev/vfio/10", UUID);
    let _ = std::fs::remove_dir_all(&work);
    eprintln!("edu:  {edu:#?}\nmdev: {mdev:#?}");

    assert_eq!(edu["dma_roundtrip"], "0 0 match=1");
    assert_eq!(edu["dma_write_to_readonly_blocked"], "1");
    assert_eq!(edu["dma_after_unmap_blocked"], "1");
    for (k, v) in &edu {
        match k.as_str() {
            "vaddr_invalidate" => {
                assert_eq!(v, "0");
                assert_eq!(mdev[k], "EBUSY");
            }
            "dirty_after_device_write" => {
                // Every mapped page counts behind the IOMMU; only the page
                // the mediated device pinned (and wrote) otherwise.
                assert_eq!(v, "0 bm=0xf");
                assert_eq!(mdev[k], "0 bm=0x2");
            }
            _ => assert_eq!(mdev.get(k), Some(v), "{k}"),
        }
    }
    assert_eq!(edu.len(), mdev.len());
}
