//! The `shoal` command line on its own (no server): help, and `plugin check` on fixtures.

use std::path::Path;
use std::process::Command;

mod admin;
mod sdk;

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path.display().to_string()
}

#[test]
fn help_lists_the_commands() {
    let out = Command::new(SHOAL).arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["dev", "plugin", "events"] {
        assert!(text.contains(command), "{command} missing from --help:\n{text}");
    }
    let out = Command::new(SHOAL).args(["plugin", "push", "--kind", "router"]).output().expect("run");
    assert!(!out.status.success(), "missing arguments must fail");
}

#[test]
fn plugin_check_runs_a_component_on_a_fixture() {
    let files = tempfile::tempdir().expect("tempdir");
    let wasm = write(files.path(), "wrr.wasm", shoal_artifacts::WEIGHTED_ROUND_ROBIN);
    let fixture = serde_json::json!({
        "endpoints": [
            {"id": "a", "address": "10.0.0.1:80", "weight": 5, "labels": []},
            {"id": "b", "address": "10.0.0.2:80", "weight": 1, "labels": []},
            {"id": "c", "address": "10.0.0.3:80", "weight": 1, "labels": []}
        ],
        "requests": (0..7).map(|_| serde_json::json!({"method": "GET", "host": "h", "path": "/", "client_ip": "1.2.3.4"})).collect::<Vec<_>>()
    });
    let input = write(files.path(), "fixture.json", fixture.to_string().as_bytes());
    let out = Command::new(SHOAL)
        .args(["plugin", "check", "--kind", "router", &wasm, "--input", &input])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON answer");
    assert_eq!(answer, serde_json::json!({"picks": [0, 0, 1, 0, 2, 0, 0]}));

    // A fixture of the wrong shape is a clear error.
    let bad = write(files.path(), "bad.json", br#"{"snapshot": {}}"#);
    let out = Command::new(SHOAL)
        .args(["plugin", "check", "--kind", "router", &wasm, "--input", &bad])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fixture does not fit a router plugin"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check(kind: &str, wasm: &[u8], fixture: &str) -> serde_json::Value {
    let files = tempfile::tempdir().expect("tempdir");
    let wasm = write(files.path(), "plugin.wasm", wasm);
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fixtures").join(fixture);
    let out = Command::new(SHOAL)
        .args(["plugin", "check", "--kind", kind, &wasm, "--input"])
        .arg(&input)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON answer")
}

#[test]
fn the_example_fixtures_run_on_the_default_plugins() {
    let picks = check("router", shoal_artifacts::WEIGHTED_ROUND_ROBIN, "router-weighted.json");
    // 5:1:1 smooth sequence, then endpoint a goes unhealthy.
    assert_eq!(picks, serde_json::json!({"picks": [0, 0, 1, 0, 2, 0, 1]}));

    let offers = check("allocator", shoal_artifacts::DRF, "allocator-two-frameworks.json");
    let pairs: Vec<(String, String)> = offers["offers"]
        .as_array()
        .expect("offers")
        .iter()
        .map(|o| (o["framework"].as_str().unwrap_or("").to_owned(), o["agent_id"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(pairs, [("batch".to_owned(), "a1".to_owned()), ("services".to_owned(), "a2".to_owned())]);
    assert_eq!(offers["offers"][0]["resources"]["ports"], serde_json::json!([{"begin": 31000, "end": 31099}]));
}
