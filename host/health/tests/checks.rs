//! Checks against real listeners, real HTTP servers and real shell commands on loopback.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is the failure report

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use shoal_health::{CheckKind, CheckSpec, HealthChecker, HealthUpdate, Status, Target};
use shoal_testkit::eventually;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// An HTTP server answering every request with the status in `status`; abort the handle to kill it.
async fn http_server(status: Arc<AtomicU16>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let status = status.clone();
            conns.spawn(async move {
                let service = service_fn(move |_req| {
                    let code = status.load(Ordering::Relaxed);
                    async move {
                        Ok::<_, Infallible>(
                            hyper::Response::builder().status(code).body(Full::new(Bytes::from_static(b"ok"))).unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

fn checker() -> (HealthChecker, mpsc::UnboundedReceiver<HealthUpdate>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let checker = HealthChecker::new(
        Arc::new(move |u| {
            let _ = tx.send(u);
        }),
        None,
    );
    (checker, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<HealthUpdate>) -> HealthUpdate {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("an update within 10 s").expect("sink open")
}

fn fast(kind: CheckKind) -> CheckSpec {
    CheckSpec { grace_ms: 0, interval_ms: 100, timeout_ms: 100, max_failures: 3, ..CheckSpec::new(kind) }
}

#[tokio::test]
async fn http_check_follows_the_status_and_gives_up_on_a_dead_server() {
    let status = Arc::new(AtomicU16::new(200));
    let (addr, server) = http_server(status.clone()).await;
    let (checker, mut rx) = checker();
    let target = Target { address: "127.0.0.1".into(), ports: vec![addr.port()] };
    checker.start("web-1", target, fast(CheckKind::Http { port: None, path: "/health".into() })).unwrap();

    let u = next(&mut rx).await;
    assert_eq!((u.id.as_str(), u.kind, u.state.status), ("web-1", "http", Status::Healthy));
    assert_eq!(u.state.message, "HTTP 200");

    // 3xx passes, 5xx fails.
    status.store(302, Ordering::Relaxed);
    eventually("a check to see the HTTP 302", Duration::from_secs(10), || {
        std::future::ready((checker.state("web-1").unwrap().message == "HTTP 302").then_some(()))
    })
    .await;
    assert_eq!(checker.state("web-1").unwrap().status, Status::Healthy);
    status.store(503, Ordering::Relaxed);
    let u = next(&mut rx).await;
    assert_eq!(
        (u.state.status, u.state.consecutive_failures, u.state.message.as_str()),
        (Status::Unhealthy, 1, "HTTP 503")
    );
    status.store(200, Ordering::Relaxed);
    assert_eq!(next(&mut rx).await.state.status, Status::Healthy);

    // Kill the server: unhealthy at once, given up after three failures in a row.
    server.abort();
    let _ = server.await;
    let u = next(&mut rx).await;
    assert_eq!(u.state.status, Status::Unhealthy);
    let u = next(&mut rx).await;
    assert!(u.state.given_up, "{u:?}");
    assert_eq!(u.state.consecutive_failures, 3);
    assert!(checker.stop("web-1"));
    assert!(checker.state("web-1").is_none());
}

#[tokio::test]
async fn tcp_check_and_grace_period() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener); // nothing listens: connection refused
    let (checker, mut rx) = checker();
    let target = Target { address: "127.0.0.1".into(), ports: vec![port] };
    let spec = CheckSpec { grace_ms: 600, ..fast(CheckKind::Tcp { port: None }) };
    checker.start("db-1", target, spec).unwrap();
    // During the grace period failures do not count: no update, state unknown.
    let s = eventually("two checks within the grace period", Duration::from_secs(10), || {
        let s = checker.state("db-1").unwrap();
        std::future::ready((s.runs >= 2).then_some(s))
    })
    .await;
    assert_eq!((s.status, s.consecutive_failures), (Status::Unknown, 0), "{s:?}");
    assert!(s.runs >= 2, "{s:?}");
    assert!(rx.try_recv().is_err());
    // Start listening before the grace period ends: healthy.
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let accept = tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    let u = next(&mut rx).await;
    assert_eq!(u.state.status, Status::Healthy, "{u:?}");
    accept.abort();
    let _ = accept.await;
    assert_eq!(next(&mut rx).await.state.status, Status::Unhealthy);
    checker.stop_all();
}

#[tokio::test]
async fn command_check_exit_status_output_and_timeout() {
    let (checker, mut rx) = checker();
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("ready");
    let target = Target { address: "10.1.2.3".into(), ports: vec![8080] };
    let command = format!("echo checking $SHOAL_CHECK_HOST:$SHOAL_CHECK_PORT; test -f {}", flag.display());
    checker.start("cmd", target.clone(), fast(CheckKind::Command { command })).unwrap();
    let u = next(&mut rx).await;
    assert_eq!(u.state.status, Status::Unhealthy);
    assert!(u.state.message.contains("checking 10.1.2.3:8080"), "{}", u.state.message);
    std::fs::write(&flag, b"").unwrap();
    assert_eq!(next(&mut rx).await.state.status, Status::Healthy);

    // A command that outlives its timeout fails (and is killed).
    let slow =
        CheckSpec { timeout_ms: 200, interval_ms: 300, ..fast(CheckKind::Command { command: "sleep 5".into() }) };
    let outcome = checker.check_once(&target, &slow).await.unwrap();
    assert!(!outcome.passed);
    assert_eq!(outcome.message, "no answer within 200 ms");
    checker.stop_all();
}

#[tokio::test]
async fn bad_specs_change_nothing_and_wasm_needs_a_runner() {
    let (checker, _rx) = checker();
    let target = Target { address: "127.0.0.1".into(), ports: vec![1] };
    let bad = CheckSpec { timeout_ms: 5_000, interval_ms: 1_000, ..CheckSpec::new(CheckKind::Tcp { port: None }) };
    assert!(checker.start("x", target.clone(), bad).unwrap_err().to_string().contains("timeout_ms"));
    assert!(checker.ids().is_empty());
    let wasm = fast(CheckKind::Wasm { plugin: "json-status".into(), config: String::new() });
    let outcome = checker.check_once(&target, &wasm).await.unwrap();
    assert!(!outcome.passed && outcome.message.contains("not available"), "{outcome:?}");
}

#[tokio::test]
async fn many_checks_keep_their_schedule() {
    // 500 HTTP checks every 200 ms against 5 servers for 2 seconds (the 10 000 a second of the
    // benchmark are not a test: tests share two cores).
    let status = Arc::new(AtomicU16::new(200));
    let mut ports = Vec::new();
    for _ in 0..5 {
        ports.push(http_server(status.clone()).await.0.port());
    }
    let (checker, _rx) = checker();
    for i in 0..500 {
        let target = Target { address: "127.0.0.1".into(), ports: vec![ports[i % ports.len()]] };
        let spec =
            CheckSpec { interval_ms: 200, timeout_ms: 200, ..fast(CheckKind::Http { port: None, path: "/".into() }) };
        checker.start(format!("t{i}"), target, spec).unwrap();
    }
    // Time passing is the point here: the checks run on their schedule for 2 seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = checker.stats();
    checker.stop_all();
    // Behaviour, not speed: every check ran about once per interval and none failed. (Lateness
    // under load is measured by `cargo bench -p shoal-health`.)
    assert_eq!(stats.failures, 0, "{stats:?}");
    assert!(stats.runs >= 500 * 7, "{stats:?}");
    assert!((0..500).all(|i| checker.state(&format!("t{i}")).is_none()));
}
