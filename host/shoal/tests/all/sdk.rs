//! The plugin SDK end to end, through the real `shoal` binary and the real language tool chains:
//!
//! - every example plugin (`examples/*/plugin.json`), whatever its language, is built by its own
//!   `build.sh` and passes its world's conformance suite (`examples/conformance/<kind>/`) and its
//!   own cases (`examples/<name>/tests/`) with `shoal plugin test`;
//! - the default Rust plugins pass the same suites;
//! - `shoal plugin new` scaffolds, for every kind and language, a project whose `test.sh` (build,
//!   then `shoal plugin test`) passes.
//!
//! A missing tool chain (componentize-py, componentize-js, wit-bindgen, clang for wasm32-wasi…)
//! fails these tests with the build script's message: `.ci/run` installs them all.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::SHOAL;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Run a shell script; panic with its output and `hint` when it fails.
fn sh(script: &Path, envs: &[(&str, &Path)], hint: &str) -> String {
    let out = Command::new("sh")
        .arg(script)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_os_str())))
        .env("SHOAL", SHOAL)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed ({hint}):\n{}", script.display(), text(&out));
    text(&out)
}

/// `shoal plugin test --kind kind wasm cases…`; panics with the report when a case fails.
fn plugin_test(kind: &str, wasm: &Path, cases: &[PathBuf]) -> String {
    let out = Command::new(SHOAL).args(["plugin", "test", "--kind", kind]).arg(wasm).args(cases).output().expect("run");
    let report = text(&out);
    assert!(out.status.success(), "{} fails its cases:\n{report}", wasm.display());
    assert!(report.contains(" passed, 0 failed"), "{report}");
    report
}

#[test]
fn every_example_plugin_passes_its_conformance_suite() {
    let examples = root().join("examples");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&examples)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("plugin.json").exists())
        .collect();
    dirs.sort();
    let names: Vec<String> = dirs.iter().map(|d| d.file_name().expect("name").to_string_lossy().into_owned()).collect();
    for expected in ["c-spread-allocator", "js-sticky-router", "python-canary-router"] {
        assert!(names.iter().any(|n| n == expected), "example {expected} is missing from {names:?}");
    }
    for dir in &dirs {
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("plugin.json")).expect("read")).expect("JSON");
        let kind = manifest["kind"].as_str().expect("plugin.json names the plugin's `kind`");
        sh(&dir.join("build.sh"), &[], "is its language's tool chain installed? `.ci/run` installs them");
        let wasm = dir.join("build/plugin.wasm");
        let report = plugin_test(kind, &wasm, &[examples.join("conformance").join(kind), dir.join("tests")]);
        let suite = std::fs::read_dir(examples.join("conformance").join(kind)).expect("suite").count();
        let own = std::fs::read_dir(dir.join("tests")).expect("tests/").count();
        assert!(report.contains(&format!("{} passed, 0 failed", suite + own)), "{report}");
    }
}

#[test]
fn the_default_rust_plugins_pass_the_conformance_suites() {
    let files = tempfile::tempdir().expect("tempdir");
    let suites = root().join("examples/conformance");
    let plugins: &[(&str, &str, &[u8])] = shoal_artifacts::DEFAULT_PLUGINS;
    for (kind, name, bytes) in plugins {
        let wasm = files.path().join(format!("{name}.wasm"));
        std::fs::write(&wasm, bytes).expect("write");
        plugin_test(kind, &wasm, &[suites.join(kind)]);
    }
}

#[test]
fn plugin_new_scaffolds_projects_that_build_and_pass_their_test_in_every_language() {
    let work = tempfile::tempdir().expect("tempdir");
    // The Rust projects share one target dir, so the SDK and wit-bindgen are compiled once.
    let rust_target = work.path().join("rust-target");
    let langs = ["c", "rust", "python", "js"];
    let kinds = ["router", "allocator", "health-check", "framework"];
    // One thread per language: the tool chains are mostly single-threaded.
    std::thread::scope(|scope| {
        for lang in langs {
            let (work, rust_target) = (work.path(), &rust_target);
            scope.spawn(move || {
                for kind in kinds {
                    let dir = work.join(format!("{lang}-{kind}"));
                    let out = Command::new(SHOAL)
                        .args(["plugin", "new", "--kind", kind, "--lang", lang])
                        .arg(&dir)
                        .output()
                        .expect("run");
                    assert!(out.status.success(), "plugin new --kind {kind} --lang {lang}: {}", text(&out));
                    for file in ["wit/worlds.wit", "wit/types.wit", "build.sh", "test.sh", "README.md"] {
                        assert!(dir.join(file).exists(), "{lang} {kind}: {file} missing");
                    }
                    let report = sh(
                        &dir.join("test.sh"),
                        &[("CARGO_TARGET_DIR", rust_target)],
                        &format!("the {lang} {kind} template; is the {lang} tool chain installed?"),
                    );
                    assert!(report.contains("1 passed, 0 failed"), "{lang} {kind}: {report}");
                }
            });
        }
    });

    // Scaffolding refuses to overwrite and checks its arguments.
    let out = Command::new(SHOAL)
        .args(["plugin", "new", "--kind", "router", "--lang", "python"])
        .arg(work.path().join("c-router"))
        .output()
        .expect("run");
    assert!(!out.status.success() && text(&out).contains("is not empty"), "{}", text(&out));
    let out = Command::new(SHOAL)
        .args(["plugin", "new", "--kind", "scheduler", "--lang", "c"])
        .arg(work.path().join("x"))
        .output()
        .expect("run");
    assert!(!out.status.success(), "an unknown kind must fail");
}

#[test]
fn plugin_test_reports_a_wrong_answer() {
    let files = tempfile::tempdir().expect("tempdir");
    let wasm = files.path().join("rr.wasm");
    std::fs::write(&wasm, shoal_artifacts::ROUND_ROBIN).expect("write");
    let case = files.path().join("wrong.json");
    std::fs::write(
        &case,
        r#"{"description": "wrong on purpose",
            "input": {"endpoints": [{"id": "a", "address": "10.0.0.1:80"}, {"id": "b", "address": "10.0.0.2:80"}],
                      "requests": [{}, {}]},
            "expect": {"picks": [0, 0]}}"#,
    )
    .expect("write");
    let out = Command::new(SHOAL).args(["plugin", "test", "--kind", "router"]).arg(&wasm).arg(&case).output().expect("run");
    assert!(!out.status.success());
    let report = text(&out);
    assert!(report.contains("$.picks[1]: expected 0, got 1") && report.contains("0 passed, 1 failed"), "{report}");
}

#[test]
fn the_wit_reference_matches_the_wit() {
    let out = Command::new("python3")
        .arg(root().join("sdk/wit-reference.py"))
        .arg("--check")
        .output()
        .expect("python3 runs sdk/wit-reference.py");
    assert!(out.status.success(), "{}", text(&out));
}
