//! `softvfio run --config`: a bad file exits 2 naming the key; another
//! topology (two edu devices in groups 3 and 4, a 48-bit IOMMU, a DMA entry
//! limit of 8) is what a program sees, in both modes. And `--mode auto`.

mod common;

use std::path::PathBuf;

use common::{artifacts, build_c, softvfio_run};

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("preload-configs");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

const TWO_EDUS: &str = r#"
[[device]]
kind = "edu"
bdf = "0000:00:03.0"
group = 3

[[device]]
kind = "edu"
bdf = "0000:00:04.0"
group = 4

[iommu]
address_width = 48

[limits]
dma_entry_limit = 8
"#;

#[test]
fn bad_config_exits_2_naming_the_key() {
    let truth = PathBuf::from("/bin/true");
    let cases = [
        (
            "unknown-key.toml",
            "[iommu]\naddress_width = 39\nbogus_key = 1\n",
            "bogus_key",
        ),
        (
            "bad-width.toml",
            "[iommu]\naddress_width = 40\n",
            "address_width",
        ),
        (
            "bad-bdf.toml",
            "[[device]]\nkind = \"edu\"\nbdf = \"nope\"\ngroup = 3\n",
            "bdf",
        ),
    ];
    for mode in ["trace", "preload", "auto"] {
        for (name, text, key) in cases {
            let cfg = write_config(name, text);
            let out = softvfio_run(
                mode,
                &["--config", cfg.to_str().expect("utf-8")],
                &truth,
                &[],
            );
            assert_eq!(out.code, Some(2), "{mode} {name}: {}", out.stderr);
            assert!(
                out.stderr.contains(key),
                "{mode} {name}: message without `{key}`: {}",
                out.stderr
            );
            assert!(!out.stderr.contains("program ended"), "{}", out.stderr);
        }
    }
}

#[test]
fn another_topology_is_what_the_program_sees() {
    let cfg = write_config("two-edus.toml", TWO_EDUS);
    let exe = build_c("topology", false);
    for mode in ["trace", "preload"] {
        let out = softvfio_run(
            mode,
            &["--config", cfg.to_str().expect("utf-8")],
            &exe,
            &["/dev/vfio/3", "0000:00:03.0", "/dev/vfio/4", "0000:00:04.0"],
        );
        out.assert_clean();
        assert_eq!(out.get("devices"), "both", "{mode}");
        assert_eq!(out.get("dma_avail"), "8", "{mode}");
        assert_eq!(out.get("iova_end"), "0xffffffffffff", "{mode}");
        // Above 2^39, which the reference platform's 39-bit VT-d refuses.
        assert_eq!(out.get("map_above_2^39"), "0", "{mode}");
        // The ninth mapping exceeds the entry limit.
        assert_eq!(out.get("map_fails_at"), "9 ENOSPC", "{mode}");
    }
}

#[test]
fn auto_mode_preloads_dynamic_programs_and_traces_static_ones() {
    let _ = artifacts();
    let dynamic = build_c("showenv", false);
    let out = softvfio_run("auto", &[], &dynamic, &[]);
    out.assert_clean();
    assert_eq!(out.get("ld_preload"), "set");
    let static_ = build_c("showenv", true);
    let out = softvfio_run("auto", &[], &static_, &[]);
    out.assert_clean();
    assert_eq!(out.get("ld_preload"), "unset");
    // A static program under --mode preload is not reached by the library.
    let out = softvfio_run("preload", &[], &static_, &[]);
    assert_eq!(out.code, Some(0));
    assert!(!out.stderr.contains("program ended"), "{}", out.stderr);
    assert!(out.stderr.contains("statically linked"), "{}", out.stderr);
}
