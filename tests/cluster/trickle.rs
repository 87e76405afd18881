//! Issue 24, host calls inside the deadline, on a real `shoal dev`: twenty targets that answer a
//! health-check plugin's probe one byte at a time (so no single read ever times out) are checked
//! ten times a second each by a Wasm check. The master's allocation cycles keep their period, and
//! other checks still get their turn: a target that answers, registered among them, passes.
//!
//! Checked against the probe without its deadline (each probe then held its thread and its plugin
//! instance for as long as the target trickled): the allocation cycles still came, since the
//! plugin's instance quota (64) keeps the probes off most of the blocking pool, but the answering
//! target never passed within 30 s: the trickling probes held every instance.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use shoal_testkit::eventually_sync;

use super::tasks::http;
use super::{Dev, showing_last};

/// How many trickling targets.
const TARGETS: usize = 20;

/// A server that answers every connection with an HTTP head that never ends, one byte every
/// 100 ms (each connection on its own thread, which ends when the peer goes).
fn trickler() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a')) {
                    if stream.write_all(&[*byte]).is_err() {
                        return;
                    }
                    // The trickle itself: the peer this test plays is slow on purpose.
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
    });
    port
}

/// A server that answers every request at once with an empty 200.
fn answering() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    port
}

/// `shoal_allocation_cycle_seconds_count` on `/metrics`: allocation cycles run so far.
fn cycles(dev: &Dev) -> u64 {
    let (_, metrics) = http(&dev.api, &dev.token, "GET", "/metrics", "");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_allocation_cycle_seconds_count"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn trickling_targets_of_a_wasm_check_leave_allocation_cycles_on_their_period() {
    let dev = Dev::start_args(None, &["--allocation-interval-ms", "100"], &[]);
    let files = tempfile::tempdir().expect("tempdir");
    let wasm = super::write(files.path(), "check.wasm", shoal_artifacts::HTTP_CHECK);
    let (ok, out, err) = dev.cli(&["plugin", "push", "--kind", "health-check", "--name", "http-check", &wasm]);
    assert!(ok, "{out}{err}");
    // The plugin asks one second per read; the check's deadline is 100 ms.
    let check = r#"{"type":"wasm","plugin":"http-check","config":"/","grace_ms":0,"interval_ms":100,"timeout_ms":100,"max_failures":1}"#;
    for i in 0..TARGETS {
        let address = format!("127.0.0.1:{}", trickler());
        let body = format!(r#"{{"address":"{address}","check":{check}}}"#);
        let (status, answer) = http(&dev.api, &dev.token, "PUT", &format!("/v1/services/slow/instances/t{i}"), &body);
        assert_eq!(status, 200, "{answer}");
    }
    // Every check runs and ends by its deadline: all twenty turn critical, the probe timed out
    // (the plugin saw `ProbeError::Timeout` at the deadline) or the check did ("no answer within
    // 100 ms").
    eventually_sync(
        "the twenty trickling instances to be critical",
        Duration::from_secs(30),
        showing_last(|| {
            let (_, body) = http(&dev.api, &dev.token, "GET", "/v1/services/slow", "");
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
            let critical = v["instances"].as_array().into_iter().flatten().filter(|i| {
                i["health"] == "critical"
                    && i["health_output"].as_str().is_some_and(|o| o.contains("within 100 ms") || o.contains("Timeout"))
            });
            if critical.count() == TARGETS { Ok(()) } else { Err(body) }
        }),
    );
    // While the checks go on (200 probes a second, each held by its target until its deadline),
    // the cycles keep coming: a hundred of them at their period of 100 ms take ten seconds; the
    // bound leaves room for a loaded machine, not for a stalled pool (which never gets there).
    let start = cycles(&dev);
    eventually_sync(
        "a hundred more allocation cycles",
        Duration::from_secs(30),
        showing_last(|| {
            let now = cycles(&dev);
            if now >= start + 100 { Ok(()) } else { Err(format!("{} cycles since the checks began", now - start)) }
        }),
    );
    // And checks still get their turn: a target that answers, registered now, turns passing.
    let address = format!("127.0.0.1:{}", answering());
    let body = format!(r#"{{"address":"{address}","check":{check}}}"#);
    let (status, answer) = http(&dev.api, &dev.token, "PUT", "/v1/services/slow/instances/fast", &body);
    assert_eq!(status, 200, "{answer}");
    eventually_sync(
        "the answering instance to pass",
        Duration::from_secs(30),
        showing_last(|| {
            let (_, body) = http(&dev.api, &dev.token, "GET", "/v1/services/slow?healthy=true", "");
            if body.contains("\"fast\"") { Ok(()) } else { Err(body) }
        }),
    );
    dev.interrupt();
}
