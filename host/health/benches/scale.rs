//! Health checking at scale: N checks with a 1 s interval (so N checks a second) from one checker
//! against real HTTP servers and TCP listeners on loopback, for a while; prints how many ran, how
//! many ticks were missed and how late runs started, and the CPU time used.
//!
//! ```sh
//! cargo bench -p shoal-health --bench scale                  # 10 000 http + 10 000 tcp checks, 20 s each
//! cargo bench -p shoal-health --bench scale -- 20000 30      # 20 000 checks, 30 s
//! ```
//!
//! The targets run on their own single-threaded runtime (one core's worth at most); the checker on
//! a multi-threaded one, as in `shoal agent`.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is the failure report

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use shoal_health::{CheckKind, CheckSpec, HealthChecker, Target};

const SERVERS: usize = 50;

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (clock ticks of 100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, r)| r.split(' ').collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let checks: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);

    // Targets: HTTP servers answering 200, on their own thread.
    let targets = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ports: Vec<u16> = targets.block_on(async {
        let mut ports = Vec::new();
        for _ in 0..SERVERS {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            ports.push(listener.local_addr().unwrap().port());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    tokio::spawn(async move {
                        let service = service_fn(|_req| async {
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        }
        ports
    });
    std::thread::spawn(move || targets.block_on(std::future::pending::<()>()));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    for kind in ["http", "tcp"] {
        runtime.block_on(async {
            let checker = HealthChecker::new(Arc::new(|_| {}), None);
            let cpu0 = cpu_seconds();
            let t0 = Instant::now();
            for i in 0..checks {
                let target = Target { address: "127.0.0.1".into(), ports: vec![ports[i % ports.len()]] };
                let kind = match kind {
                    "http" => CheckKind::Http { port: None, path: "/health".into() },
                    _ => CheckKind::Tcp { port: None },
                };
                let spec = CheckSpec { grace_ms: 0, interval_ms: 1000, timeout_ms: 1000, ..CheckSpec::new(kind) };
                checker.start(format!("task-{i}"), target, spec).unwrap();
            }
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            let stats = checker.stats();
            let elapsed = t0.elapsed().as_secs_f64();
            checker.stop_all();
            let cpu = cpu_seconds() - cpu0;
            println!(
                "{kind}: {checks} checks at 1 s for {elapsed:.1} s: {} runs ({:.0}/s), {} failed, {} ticks missed, \
                 start delay p50 < {} us, p99 < {} us, max {} us; CPU {:.2} s ({:.0}% of one core, targets included)",
                stats.runs,
                stats.runs as f64 / elapsed,
                stats.failures,
                stats.missed,
                stats.late_p50_us,
                stats.late_p99_us,
                stats.late_max_us,
                cpu,
                100.0 * cpu / elapsed
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        });
    }
}
