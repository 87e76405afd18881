//! Issue 24, the API against its own document: Schemathesis (PyPI, `pip install schemathesis`)
//! reads `/v1/openapi.json` from a real `shoal dev` and sends every operation generated requests
//! with an admin token: examples, boundary values, random valid and invalid data, and stateful
//! sequences that follow what one answer returns into the next request. Every check is on: no 5xx,
//! every status, content type, header and body as documented (SSE events included), invalid
//! requests refused, valid ones accepted. The few exceptions are in `schemathesis.toml`, each
//! with its reason.
//!
//! The document includes the frameworks' own routes (`/v1/apps…`, `/v1/jobs…`,
//! `/v1/frameworks/{service,batch}/…`), as the running frameworks describe them: generated apps
//! and jobs are deployed for real on the local agent.
//!
//! One worker: with two, CPython 3.11 (before 3.11.8) sometimes fails Hypothesis's parsing of its
//! own source in two threads at once ("AST constructor recursion depth mismatch", seen here),
//! which Schemathesis reports as an error of the run.
//!
//! Blocking queries are cut to one second (`--max-query-time-s 1`): a generated `index` is
//! usually ahead of the store, and each such request would otherwise wait the default 30-60 s.
//! Event streams never end by themselves: Schemathesis checks the events that came within its
//! request timeout (5 s), which also bounds how long the run takes.

use std::process::Command;
use std::time::Duration;

use super::Dev;

/// The command; `.ci/run` installs schemathesis 4.32.5 from PyPI, the version this was run with.
const SCHEMATHESIS: &str = "schemathesis";

#[test]
fn every_api_operation_answers_as_its_openapi_document_says() {
    let dev = Dev::start_args(None, &["--max-query-time-s", "1"], &[]);
    let framework_routes = framework_routes(&dev);
    for route in ["/v1/apps/{id}", "/v1/jobs/{id}/run", "/v1/frameworks/service/tasks", "/v1/frameworks/batch/jobs"] {
        assert!(framework_routes.iter().any(|r| r == route), "{route} is not documented: {framework_routes:?}");
    }
    let out = tempfile::tempdir().expect("tempdir");
    let report = out.path().join("report.json");
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/schemathesis.toml");
    let run = Command::new(SCHEMATHESIS)
        .current_dir(out.path())
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{}/v1/openapi.json", dev.api)])
        .args(["--header", &format!("Authorization: Bearer {}", dev.token)])
        .args(["--max-examples", "30", "--seed", "1", "--workers", "1", "--no-color"])
        .args(["--generation-database", "none", "--request-timeout", "5"])
        .args(["--report", "json", "--report-json-path"])
        .arg(&report)
        .output()
        .unwrap_or_else(|e| panic!("run `{SCHEMATHESIS}` (pip install schemathesis): {e}"));
    let text = String::from_utf8_lossy(&run.stdout);
    let summary = text.rsplit_once("SUMMARY").map_or(&text[..], |(_, s)| s);
    println!("schemathesis: {summary}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("the JSON report")).expect("report JSON");
    let tested = report["operations"]["tested"].as_u64().unwrap_or(0);
    let cases = &report["test_cases"];
    println!(
        "operations tested: {tested} of {}; test cases generated: {}, with failures: {}, errored: {}",
        report["operations"]["total"], cases["generated"], cases["with_failures"], cases["errored"]
    );
    assert_eq!(report["failures"], serde_json::json!([]), "failures:\n{text}");
    assert_eq!(report["errors"], serde_json::json!([]), "errors:\n{text}");
    assert!(run.status.success(), "schemathesis exited with {}:\n{text}", run.status);
    // Not vacuous: every documented operation ran, with real volume.
    assert!(tested >= 69, "only {tested} operations were tested:\n{text}");
    assert!(cases["generated"].as_u64().unwrap_or(0) >= 1000, "too few test cases:\n{text}");
}

/// The documented routes that a framework answers, once both default frameworks run (they
/// start with `shoal dev`, a moment after its API answers).
fn framework_routes(dev: &Dev) -> Vec<String> {
    shoal_testkit::eventually_sync("both default frameworks in the document", Duration::from_secs(60), || {
        let (status, body) = super::tasks::http(&dev.api, &dev.token, "GET", "/v1/openapi.json", "");
        assert_eq!(status, 200, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).expect("the OpenAPI document");
        let routes: Vec<String> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .filter(|p| p.starts_with("/v1/apps") || p.starts_with("/v1/jobs") || p.starts_with("/v1/frameworks/"))
            .cloned()
            .collect();
        let both = routes.iter().any(|r| r.starts_with("/v1/apps")) && routes.iter().any(|r| r.starts_with("/v1/jobs"));
        both.then_some(routes)
    })
}
