//! How fast the Wasm executor starts tasks, beside the native peer (fork/exec of a process, what
//! the process executor pays), and the per-request cost of a `wasi:http` service that runs each
//! request in a fresh instance.
//!
//! `cargo bench -p shoal-wasm-executor --bench start`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use shoal_wasm_executor::{ExecutorConfig, Exit, TaskLogs, TaskSpec, WasmExecutor};

fn spec(args: &[&str], listen: Option<std::net::SocketAddr>) -> TaskSpec {
    TaskSpec {
        task_id: "bench".into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![],
        sandbox: None,
        memory_limit: 64 << 20,
        listen,
        network: false,
        logs: TaskLogs::new(4096),
        kv: None,
    }
}

fn start(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let exec = WasmExecutor::new(ExecutorConfig::default()).expect("executor");
    let command = exec.prepare(shoal_artifacts::WASM_COMMAND).expect("prepare");
    let service = exec.prepare(shoal_artifacts::WASM_HTTP).expect("prepare");

    let mut group = c.benchmark_group("task_start");
    group.warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5));
    // A command from submission to its exit: instantiate, run `main`, exit 0.
    group.bench_function(BenchmarkId::new("wasm", "command-run-to-exit"), |b| {
        b.to_async(&rt).iter(|| async {
            let mut task = exec.start(&command, spec(&["exit", "0"], None)).await.expect("start");
            assert_eq!(task.wait().await, Exit::Code(0));
        })
    });
    // The native peer: fork/exec of `/bin/true` and its exit.
    group.bench_function(BenchmarkId::new("native", "process-run-to-exit"), |b| {
        b.to_async(&rt).iter(|| async {
            let status = tokio::process::Command::new("/bin/true").status().await.expect("spawn /bin/true");
            assert!(status.success());
        })
    });
    // A service from submission to its first answer.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    group.bench_function(BenchmarkId::new("wasm", "service-start-to-first-response"), |b| {
        b.to_async(&rt).iter(|| async {
            let task =
                exec.start(&service, spec(&[], Some("127.0.0.1:0".parse().expect("addr")))).await.expect("start");
            let url = format!("http://{}/", task.local_addr().expect("addr"));
            let r = http.get(url).send().await.expect("request");
            assert_eq!(r.status().as_u16(), 200);
            task.kill();
        })
    });
    group.finish();

    // Per request on a running service (a fresh instance each time), over a kept-alive connection.
    let task = rt
        .block_on(exec.start(&service, spec(&[], Some("127.0.0.1:0".parse().expect("addr")))))
        .expect("start service");
    let url = format!("http://{}/x", task.local_addr().expect("addr"));
    let keepalive = reqwest::Client::new();
    let mut group = c.benchmark_group("service_request");
    group.warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5));
    group.bench_function(BenchmarkId::new("wasm", "get-fresh-instance"), |b| {
        b.to_async(&rt).iter(|| async {
            let body = keepalive.get(&url).send().await.expect("request").bytes().await.expect("body");
            black_box(body);
        })
    });
    group.finish();
    task.kill();
}

criterion_group!(benches, start);
criterion_main!(benches);
