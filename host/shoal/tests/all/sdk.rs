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

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use shoal_testkit::eventually_sync;

use super::SHOAL;

/// Runs its closure if the test panics while the guard lives: a wait that gives up can then say
/// what it saw last (`eventually_sync` only knows what it was waiting for).
struct OnPanic<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnPanic<F> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            (self.0)();
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Deadline of one plugin call in the conformance runs: they test behaviour, and the tests share
/// two cores with the rest of the suite, where an interpreted plugin's call can take longer than a
/// router's production deadline of 50 ms (`shoal plugin bench` measures speed, on a quiet machine).
const TEST_DEADLINE_MS: &str = "10000";

/// Run a shell script; panic with its output and `hint` when it fails.
fn sh(script: &Path, envs: &[(&str, &Path)], hint: &str) -> String {
    let out = Command::new("sh")
        .arg(script)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_os_str())))
        .env("SHOAL", SHOAL)
        .env("SHOAL_TEST_DEADLINE_MS", TEST_DEADLINE_MS)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed ({hint}):\n{}", script.display(), text(&out));
    text(&out)
}

/// `shoal plugin test --kind kind wasm cases…`; panics with the report when a case fails.
fn plugin_test(kind: &str, wasm: &Path, cases: &[PathBuf]) -> String {
    let out = Command::new(SHOAL)
        .args(["plugin", "test", "--kind", kind])
        .arg(wasm)
        .args(cases)
        .env("SHOAL_TEST_DEADLINE_MS", TEST_DEADLINE_MS)
        .output()
        .expect("run");
    let report = text(&out);
    assert!(out.status.success(), "{} fails its cases:\n{report}", wasm.display());
    assert!(report.contains(" passed, 0 failed"), "{report}");
    report
}

/// Build `examples/<name>` with its `build.sh` once per test run (tests run in parallel and share
/// the build directory); returns its component.
fn built(dir: &Path) -> PathBuf {
    static BUILT: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.contains(dir) {
        sh(&dir.join("build.sh"), &[], "is its language's tool chain installed? `.ci/run` installs them");
        built.insert(dir.to_owned());
    }
    dir.join("build/plugin.wasm")
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
    for expected in ["c-spread-allocator", "js-sticky-router", "python-canary-router", "python-json-health-check"] {
        assert!(names.iter().any(|n| n == expected), "example {expected} is missing from {names:?}");
    }
    for dir in &dirs {
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("plugin.json")).expect("read")).expect("JSON");
        let kind = manifest["kind"].as_str().expect("plugin.json names the plugin's `kind`");
        let wasm = built(dir);
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
    // The default plugins, and the host's test framework (no default framework may be missing
    // from the framework suite's users).
    let mut plugins: Vec<(&str, &str, &[u8])> = shoal_artifacts::DEFAULT_PLUGINS.to_vec();
    plugins.push(("framework", "keeper", shoal_artifacts::KEEPER_FRAMEWORK));
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
    let out =
        Command::new(SHOAL).args(["plugin", "test", "--kind", "router"]).arg(&wasm).arg(&case).output().expect("run");
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

/// A tiny HTTP/1.1 upstream that answers every request with its own name, on a thread.
fn upstream(name: &'static str) -> String {
    serve("200 OK", name)
}

/// A tiny HTTP/1.1 server that answers every request with `status` and `body`, on a thread;
/// returns its address.
fn serve(status: &'static str, body: &'static str) -> String {
    serve_with(status, body, false)
}

/// [`serve`], the body sent in two chunks (`Transfer-Encoding: chunked`) when `chunked`.
fn serve_with(status: &'static str, body: &'static str, chunked: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                // Serve requests on this connection until the peer closes it (the gateway keeps
                // upstream connections alive).
                loop {
                    let mut line = String::new();
                    let mut length = 0usize;
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = header.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut request_body = vec![0; length];
                    if reader.read_exact(&mut request_body).is_err() {
                        return;
                    }
                    let answer = if chunked {
                        let (a, b) = body.split_at(body.len() / 2);
                        format!(
                            "HTTP/1.1 {status}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                            a.len(),
                            b.len()
                        )
                    } else {
                        format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}", body.len())
                    };
                    if stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `GET path` through the gateway with `headers`: (status, body).
fn get(gateway: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(gateway).expect("connect to the gateway");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: shop.test\r\nconnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The demo of the SDK, as a user runs it: the Python and JavaScript example routers are
/// uploaded to a real `shoal dev`, put in front of real upstreams, and route real requests.
#[test]
fn example_routers_route_real_traffic() {
    let examples = root().join("examples");
    let canary = built(&examples.join("python-canary-router"));
    let sticky = built(&examples.join("js-sticky-router"));

    let data = tempfile::tempdir().expect("tempdir");
    // The agent's sandboxes must be enterable by its unprivileged task user.
    let enterable = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o711);
    std::fs::set_permissions(data.path(), enterable).expect("chmod");
    let mut child = Command::new(SHOAL)
        .args(["dev", "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0", "--data-dir"])
        .arg(data.path().join("shoal"))
        .arg("--sandbox-dir")
        .arg(data.path().join("sandboxes"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn shoal dev");
    let stdout = child.stdout.take().expect("stdout");
    let _dev = Dev(child);
    let (mut api, mut gateway, mut token) = (None, None, None);
    let mut lines = BufReader::new(stdout).lines();
    while api.is_none() || gateway.is_none() || token.is_none() {
        let line = lines.next().expect("shoal dev printed its addresses").expect("line");
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("API:") {
            api = Some(rest.trim().trim_end_matches("/v1").to_owned());
        } else if let Some(rest) = line.strip_prefix("gateway:") {
            gateway = rest
                .split_whitespace()
                .next()
                .map(|u| u.trim_start_matches("http://").trim_end_matches('/').to_owned());
        } else if let Some(path) = line.strip_prefix("admin token: in ") {
            token = Some(std::fs::read_to_string(path).expect("the admin token file").trim().to_owned());
        }
    }
    let (api, gateway, token) = (api.expect("api"), gateway.expect("gateway"), token.expect("token"));
    let cli = |args: &[&str]| {
        let out = Command::new(SHOAL)
            .args(args)
            .env("SHOAL_API", &api)
            .env("SHOAL_TOKEN", &token)
            .output()
            .expect("run the CLI");
        assert!(out.status.success(), "shoal {}: {}", args.join(" "), text(&out));
        text(&out)
    };

    cli(&["plugin", "push", "--kind", "router", "--name", "canary", "--activate", &canary.display().to_string()]);
    cli(&["plugin", "push", "--kind", "router", "--name", "sticky", "--activate", &sticky.display().to_string()]);
    let (stable_1, stable_2, canary_1) = (upstream("stable-1"), upstream("stable-2"), upstream("canary-1"));
    cli(&["service", "register", "shop", "stable-1", "--address", &stable_1]);
    cli(&["service", "register", "shop", "stable-2", "--address", &stable_2]);
    cli(&[
        "service",
        "register",
        "shop",
        "canary-1",
        "--address",
        &canary_1,
        "--label",
        "track=canary",
        "--label",
        "canary-percent=25",
    ]);
    let (a, b, c) = (upstream("cart-a"), upstream("cart-b"), upstream("cart-c"));
    for (id, addr) in [("cart-a", &a), ("cart-b", &b), ("cart-c", &c)] {
        cli(&["service", "register", "cart", id, "--address", addr]);
    }
    cli(&["route", "put", "shop", "--service", "shop", "--prefix", "/shop", "--router", "canary"]);
    cli(&["route", "put", "cart", "--service", "cart", "--prefix", "/cart", "--router", "sticky"]);

    // Routes and instances reach the gateway asynchronously, and a Python or JavaScript
    // component takes seconds to compile on a busy machine: wait for the first answer.
    eventually_sync("the canary route to answer through the Python router", Duration::from_secs(90), || {
        (get(&gateway, "/shop", &[("x-canary", "always")]) == (200, "canary-1".to_owned())).then_some(())
    });

    // Python canary router: the header forces the pool; without it the canary gets its share.
    for _ in 0..10 {
        assert_eq!(get(&gateway, "/shop", &[("x-canary", "always")]), (200, "canary-1".to_owned()));
        let (status, body) = get(&gateway, "/shop", &[("x-canary", "never")]);
        assert!(status == 200 && body.starts_with("stable-"), "{status} {body}");
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..80 {
        let (status, body) = get(&gateway, "/shop/items", &[]);
        assert_eq!(status, 200, "{body}");
        *counts.entry(body).or_default() += 1;
    }
    // 25 % of 80 is 20; each gateway worker has its own instance and counter, so allow slack.
    let to_canary = counts.get("canary-1").copied().unwrap_or(0);
    assert!((10..=30).contains(&to_canary), "canary share off: {counts:?}");
    assert!(counts.contains_key("stable-1") && counts.contains_key("stable-2"), "{counts:?}");

    // JavaScript sticky router: a session stays on one upstream; sessions spread. Wait until the
    // router answers (the gateway serves round-robin until it can call it): six answers in a row
    // for one session from the same upstream, which round-robin over three cannot give.
    let last = RefCell::new(BTreeSet::<(u16, String)>::new());
    let report = OnPanic(|| eprintln!("the cart route's last answers: {:?}", last.borrow()));
    eventually_sync("the cart route to answer through the JavaScript router", Duration::from_secs(90), || {
        let answers: BTreeSet<_> = (0..6).map(|_| get(&gateway, "/cart", &[("x-session-id", "alice")])).collect();
        let routed = answers.len() == 1 && answers.iter().all(|(status, _)| *status == 200);
        *last.borrow_mut() = answers;
        routed.then_some(())
    });
    drop(report);
    let mut seen = BTreeSet::new();
    for session in ["alice", "ivan", "dave"] {
        let first = get(&gateway, "/cart", &[("x-session-id", session)]);
        assert_eq!(first.0, 200);
        for _ in 0..5 {
            assert_eq!(get(&gateway, "/cart", &[("x-session-id", session)]), first, "session {session} moved");
        }
        seen.insert(first.1);
    }
    // FNV-1a modulo 3: alice -> 2, ivan -> 0, dave -> 1 (see examples/js-sticky-router/tests).
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// componentize-js's engine collects garbage lazily, so a JavaScript instance's memory grows
/// call after call (at 32 MiB, a router failed after about 25,000 calls). The pool retires an
/// instance that used half its memory headroom; 60,000 calls on one plugin must all succeed.
#[test]
fn a_javascript_router_survives_many_calls() {
    let wasm = built(&root().join("examples/js-sticky-router"));
    let out = Command::new(SHOAL)
        .args(["plugin", "bench", "--kind", "router", "--iterations", "60000", "--json", "--input"])
        .arg(root().join("examples/js-sticky-router/tests/sticky.json"))
        .arg(&wasm)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["call"], "route");
    assert!(report["call_median_us"].as_f64().is_some_and(|us| us > 0.0), "{report}");
}

/// The Python JSON health check against live HTTP servers: cases written with their ports.
#[test]
fn the_json_health_check_reads_a_live_status_field() {
    let wasm = built(&root().join("examples/python-json-health-check"));
    let cases = tempfile::tempdir().expect("tempdir");
    let live = [
        ("ok", "200 OK", r#"{"status": "ok", "version": 3}"#, "", "Healthy"),
        ("down", "200 OK", r#"{"status": "down"}"#, "", "Unhealthy"),
        ("error-status", "503 Service Unavailable", r#"{"status": "ok"}"#, "", "Unhealthy"),
        ("not-json", "200 OK", "<html>fine</html>", "", "Unhealthy"),
        ("nested", "200 OK", r#"{"checks": {"db": "UP"}}"#, r#"{"field": "checks.db", "path": "/ready"}"#, "Healthy"),
        ("missing-field", "200 OK", r#"{"checks": {}}"#, r#"{"field": "checks.db"}"#, "Unhealthy"),
        // Issue 24: a chunked reply is read as its body, not its framing.
        ("chunked", "200 OK", r#"{"status": "ok", "version": 4}"#, "", "Healthy"),
    ];
    for (name, status, body, config, verdict) in live {
        let addr = serve_with(status, body, name == "chunked");
        let port: u16 = addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        let case = serde_json::json!({
            "description": name,
            "input": {"target": {"task_id": "t1", "address": "127.0.0.1", "ports": [port], "config": config}},
            "expect": {"result": {"status": verdict}},
        });
        std::fs::write(cases.path().join(format!("{name}.json")), case.to_string()).expect("write case");
    }
    let report = plugin_test("health-check", &wasm, &[cases.path().to_owned()]);
    assert!(report.contains("7 passed, 0 failed"), "{report}");
}
