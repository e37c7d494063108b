//! The kernel conformance probe of `../shared/conformance`, built
//! dynamically, under the preload library: compared line by line with what
//! Linux 6.1 printed (the lines check.sh allows to differ aside), and with
//! what the same binary prints under `softvfio run` in trace mode.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{artifacts, build_c_file, preloaded, result_lines, softvfio_run, HugeMount};

/// check.sh's ALLOWED: the kernel's module parameter file, which no user
/// space implementation provides at that sysfs path.
const ALLOWED: [&str; 5] = [
    "entry_limit_default",
    "entry_limit_8",
    "entry_limit_avail",
    "entry_limit_after_unmap",
    "entry_limit",
];

/// Lines that depend on the address-space layout of a dynamically linked
/// program, not on the VFIO implementation: `map_half_unbacked` maps 2
/// pages past the end of a fresh 64-page mmap, which in the kernel's
/// (static) run were unmapped, but in a dynamic program fall into ld.so's
/// anonymous mapping just above (mmap places the buffer right below it), so
/// the pin succeeds and one more DMA entry is used. Which of the two a run
/// sees depends on the run's layout; the test checks that each run gives
/// one of the two consistent pairs.
const LAYOUT: [&str; 2] = ["map_half_unbacked", "map_dma_avail_end"];

fn grouped(lines: &[(String, String)]) -> HashMap<String, Vec<String>> {
    let mut d: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in lines {
        d.entry(k.clone()).or_default().push(v.clone());
    }
    d
}

#[test]
fn dynamic_probe_under_preload_matches_the_kernel() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance");
    let src = conf.join("type1_probe.c");
    if !src.is_file() {
        eprintln!("skipped: {} not found", src.display());
        return;
    }
    let Some(huge) = HugeMount::new() else {
        eprintln!("skipped: needs root and a hugetlbfs mount, as check.sh");
        return;
    };
    let _ = artifacts();
    let probe = build_c_file(&src, "type1_probe-dynamic", false);
    let hugedir = huge.dir.to_str().expect("utf-8 path");
    let args = ["/dev/vfio/3", "0000:00:03.0", hugedir];

    let pre = preloaded(&probe, &args, &[]);
    assert_eq!(
        pre.code,
        Some(0),
        "probe under preload:\n{}\n{}",
        pre.stdout,
        pre.stderr
    );
    let got = grouped(&result_lines(&pre.stdout));
    let kernel = std::fs::read_to_string(conf.join("kernel-6.1.txt")).expect("kernel-6.1.txt");
    let want = grouped(&result_lines(&kernel));

    let (mut passed, mut failed, mut layout) = (0, Vec::new(), 0);
    for (name, values) in &want {
        if ALLOWED.contains(&name.as_str()) {
            continue;
        }
        for (i, v) in values.iter().enumerate() {
            let g = got
                .get(name)
                .and_then(|g| g.get(i))
                .map(String::as_str)
                .unwrap_or("<missing>");
            if g == v {
                passed += 1;
            } else if LAYOUT.contains(&name.as_str()) {
                layout += 1;
            } else {
                failed.push(format!("{name}: kernel={v:?} preload={g:?}"));
            }
        }
    }
    eprintln!(
        "dynamic probe under preload: {passed} passed, {layout} layout-dependent, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "differences:\n{}", failed.join("\n"));
    assert!(passed >= 140, "only {passed} lines compared");
    assert!(pre.stderr.contains("no leak"), "{}", pre.stderr);

    // The same binary under ptrace: every line the same but the
    // layout-dependent ones, which depend on where this run's mmap put the
    // buffer (address-space randomization): in each run they must be one
    // of the two consistent answers (the pages past the buffer unmapped,
    // as in the kernel's run, or inside ld.so's mapping).
    let tr = softvfio_run("trace", &["-q"], &probe, &args);
    assert_eq!(
        tr.code,
        Some(0),
        "probe under trace:\n{}\n{}",
        tr.stdout,
        tr.stderr
    );
    let without_layout = |text: &str| -> Vec<(String, String)> {
        result_lines(text)
            .into_iter()
            .filter(|(k, _)| !LAYOUT.contains(&k.as_str()))
            .collect()
    };
    assert_eq!(
        without_layout(&tr.stdout),
        without_layout(&pre.stdout),
        "trace and preload differ"
    );
    for (mode, text) in [("trace", &tr.stdout), ("preload", &pre.stdout)] {
        let g = grouped(&result_lines(text));
        let pair = (
            g["map_half_unbacked"][0].as_str(),
            g["map_dma_avail_end"][0].as_str(),
        );
        assert!(
            pair == ("EFAULT", "65524") || pair == ("0", "65523"),
            "{mode}: layout lines {pair:?}"
        );
    }
}
