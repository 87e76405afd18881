//! The same plugin worlds written in different languages, side by side in one run: the example
//! plugins of `examples/` (Python, JavaScript, C, built by their own `build.sh`) beside the
//! default Rust plugins. Per component: its size (printed), instantiation from `InstancePre`
//! (pooling allocator), and one call on a reused instance.
//!
//! Run with:
//!
//! ```sh
//! for e in python-canary-router js-sticky-router c-spread-allocator; do examples/$e/build.sh; done
//! cargo bench -p shoal-abi --bench languages
//! ```

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use criterion::{Criterion, criterion_group, criterion_main};
use shoal_abi::{AnyPlugin, ClusterSnapshot, Endpoint, PluginKind, RouteRequest, RouteTable};
use shoal_runtime::{PluginScope, Runtime, RuntimeConfig};

fn runtime() -> &'static Runtime {
    static RUNTIME: std::sync::OnceLock<Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(RuntimeConfig::default()).expect("runtime"))
}

/// An example's component, built by its `build.sh`.
fn example(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name).join("build/plugin.wasm");
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; build it first with examples/{name}/build.sh", path.display()))
}

fn load(kind: PluginKind, name: &str, bytes: &[u8]) -> AnyPlugin {
    println!("{kind} {name}: {} bytes", bytes.len());
    AnyPlugin::load(runtime(), kind, bytes, PluginScope::detached(kind.as_str(), name, "bench"), kind.default_limits())
        .expect("load")
}

fn routers() -> Vec<(&'static str, AnyPlugin)> {
    vec![
        ("rust-round-robin", load(PluginKind::Router, "rr", shoal_artifacts::ROUND_ROBIN)),
        ("rust-source-hash", load(PluginKind::Router, "sh", shoal_artifacts::SOURCE_HASH)),
        ("python-canary", load(PluginKind::Router, "canary", &example("python-canary-router"))),
        ("js-sticky", load(PluginKind::Router, "sticky", &example("js-sticky-router"))),
    ]
}

fn allocators() -> Vec<(&'static str, AnyPlugin)> {
    vec![
        ("rust-drf", load(PluginKind::Allocator, "drf", shoal_artifacts::DRF)),
        ("c-spread", load(PluginKind::Allocator, "spread", &example("c-spread-allocator"))),
    ]
}

fn instantiate(plugin: &AnyPlugin) {
    match plugin {
        AnyPlugin::Router(p) => drop(black_box(p.instantiate().expect("instantiate"))),
        AnyPlugin::Allocator(p) => drop(black_box(p.instantiate().expect("instantiate"))),
        AnyPlugin::HealthCheck(p) => drop(black_box(p.instantiate().expect("instantiate"))),
        AnyPlugin::Framework(p) => drop(black_box(p.instantiate().expect("instantiate"))),
    }
}

/// 16 healthy endpoints; the request carries a session header and a client address, so every
/// rule reads what it needs (round-robin nothing, the canary one header, the others a header or
/// the address).
fn table_and_request() -> (RouteTable, RouteRequest) {
    let endpoints = (0..16)
        .map(|i| Endpoint {
            id: format!("e{i}"),
            address: format!("10.0.0.{i}:8080"),
            weight: 1,
            labels: Vec::new(),
            healthy: true,
        })
        .collect();
    let mut headers = http::HeaderMap::new();
    headers.insert("x-session-id", http::HeaderValue::from_static("alice"));
    let request = RouteRequest {
        client_ip: Some("198.51.100.23".parse().expect("IP")),
        headers,
        active: (0..16).map(|_| AtomicU32::new(0)).collect::<Arc<[AtomicU32]>>(),
        ..RouteRequest::default()
    };
    (RouteTable { generation: 1, endpoints }, request)
}

/// 100 agents, 10 frameworks.
fn snapshot() -> ClusterSnapshot {
    let text = serde_json::json!({
        "now_ms": 1_000_000,
        "agents": (0..100).map(|i| serde_json::json!({
            "id": format!("a{i}"), "hostname": format!("h{i}"), "attributes": [],
            "total": {"cpus": 16.0, "mem_mb": 65536.0, "disk_mb": 0.0, "ports": [{"begin": 31000, "end": 31999}], "scalars": []},
            "free": {"cpus": 8.0, "mem_mb": 32768.0, "disk_mb": 0.0, "ports": [{"begin": 31000, "end": 31999}], "scalars": []},
        })).collect::<Vec<_>>(),
        "frameworks": (0..10).map(|i| serde_json::json!({
            "name": format!("f{i}"), "role": format!("r{i}"), "weight": 1.0, "quota": null, "filters": [], "suppressed": false,
            "allocated": {"cpus": i as f64, "mem_mb": 1024.0 * i as f64, "disk_mb": 0.0, "ports": [], "scalars": []},
        })).collect::<Vec<_>>(),
    });
    serde_json::from_value(text).expect("snapshot")
}

fn languages(c: &mut Criterion) {
    let routers = routers();
    let allocators = allocators();
    let mut group = c.benchmark_group("instantiate");
    for (name, plugin) in routers.iter().chain(&allocators) {
        group.bench_function(*name, |b| b.iter(|| instantiate(plugin)));
    }
    group.finish();

    let (table, mut request) = table_and_request();
    let mut group = c.benchmark_group("route_16");
    for (name, plugin) in &routers {
        let AnyPlugin::Router(p) = plugin else { unreachable!("a router") };
        group.bench_function(*name, |b| {
            b.iter(|| black_box(shoal_abi::route(p, &table, &mut request).expect("route")));
        });
    }
    group.finish();

    let snapshot = snapshot();
    let mut group = c.benchmark_group("allocate_100x10");
    for (name, plugin) in &allocators {
        let AnyPlugin::Allocator(p) = plugin else { unreachable!("an allocator") };
        group.bench_function(*name, |b| b.iter(|| black_box(shoal_abi::allocate(p, &snapshot).expect("allocate"))));
    }
    group.finish();
}

criterion_group!(benches, languages);
criterion_main!(benches);
