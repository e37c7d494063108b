//! `softvfio inspect --json --pid` against a running `softvfio run`
//! session shows the program's mapping.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{artifacts, build_c};

#[test]
fn inspect_shows_a_running_sessions_mapping() {
    let a = artifacts();
    let exe = build_c("hold", false);
    let mut child = Command::new(&a.softvfio)
        .args(["run", "--"])
        .arg(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start softvfio run");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    lines.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "mapped");

    let out = Command::new(&a.softvfio)
        .args(["inspect", "--json", "--pid", &pid.to_string()])
        .output()
        .expect("run inspect");
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    // Let the program finish (its stdin closes) before asserting.
    drop(child.stdin.take());
    let status = child.wait().expect("wait");
    assert!(
        out.status.success(),
        "inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(status.success());

    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["supervisor_pid"].as_u64(), Some(u64::from(pid)));
    let containers = v["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{json}");
    let maps = containers[0]["mappings"].as_array().expect("mappings");
    assert!(
        maps.iter()
            .any(|m| m["iova"].as_u64() == Some(0xabc000) && m["size"].as_u64() == Some(0x4000)),
        "mapping 0xabc000+16K not in {json}"
    );
    assert_eq!(containers[0]["groups"], serde_json::json!([3]), "{json}");
}
