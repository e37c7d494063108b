//! `softvfio bench --json`: one JSON object per line with the documented
//! keys (the quickest benchmark, with a tiny time budget).

use std::process::Command;

#[test]
fn bench_json_schema() {
    let out = Command::new(env!("CARGO_BIN_EXE_softvfio"))
        .args([
            "bench",
            "translate-hit",
            "--json",
            "--reps",
            "1",
            "--budget-ms",
            "2",
        ])
        .output()
        .expect("run softvfio bench");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(!lines.is_empty(), "no output");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON object a line");
        let o = v.as_object().expect("an object");
        let mut keys: Vec<&str> = o.keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "baseline",
                "baseline_value",
                "bench",
                "better",
                "ratio",
                "unit",
                "value"
            ]
        );
        assert!(o["bench"].as_str().unwrap().starts_with("translate-hit"));
        assert_eq!(o["unit"], "ns");
        assert_eq!(o["better"], "lower");
        let value = o["value"].as_f64().unwrap();
        let base = o["baseline_value"].as_f64().unwrap();
        let ratio = o["ratio"].as_f64().unwrap();
        assert!(value > 0.0 && base > 0.0);
        assert!((ratio - value / base).abs() < 1e-9 * ratio.abs().max(1.0));
    }
}

#[test]
fn bench_unknown_name_fails() {
    let out = Command::new(env!("CARGO_BIN_EXE_softvfio"))
        .args(["bench", "no-such-bench"])
        .output()
        .expect("run softvfio bench");
    assert!(!out.status.success());
}
