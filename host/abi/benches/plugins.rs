//! Benchmarks of the plugin runtime: typed calls into the default plugins, each beside the same
//! algorithm compiled natively, measured in the same run.
//!
//! Run with `cargo bench -p shoal-abi --bench plugins`. After criterion's own report, a summary
//! prints the median of every benchmark measured in this run, its native peer and the ratio, and
//! the goal. Groups:
//!
//! - `router_call_16`: one `route` on a reused instance, 16 endpoints, table unchanged;
//! - `instance`: instantiation from `InstancePre` (pooling allocator) and an empty call;
//! - `drf_1000x100`, `drf_10000x1000`: one DRF allocation cycle;
//! - `router_callers`: total call throughput of one plugin shared by 1, 2 or 4 threads.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use shoal_abi::{
    Agent, AllocatorWorld, AnyPlugin, Attribute, ClusterSnapshot, DeclineFilter, Endpoint, FrameworkInfo, Offer,
    PluginKind, PortRange, Resources, RouteRequest, RouteTable, RouterWorld, Scalar,
};
use shoal_runtime::{Plugin, PluginScope, Runtime, RuntimeConfig};

// ---------------------------------------------------------------------------------------------
// Loading

fn runtime() -> &'static Runtime {
    static RUNTIME: std::sync::OnceLock<Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(RuntimeConfig::default()).expect("runtime"))
}

fn load(kind: PluginKind, name: &str, bytes: &[u8]) -> AnyPlugin {
    AnyPlugin::load(runtime(), kind, bytes, PluginScope::detached(kind.as_str(), name, "bench"), kind.default_limits())
        .expect("load plugin")
}

fn router(name: &str, bytes: &[u8]) -> Arc<Plugin<RouterWorld>> {
    match load(PluginKind::Router, name, bytes) {
        AnyPlugin::Router(p) => p,
        _ => unreachable!("loaded as a router"),
    }
}

fn allocator(name: &str, bytes: &[u8]) -> Arc<Plugin<AllocatorWorld>> {
    match load(PluginKind::Allocator, name, bytes) {
        AnyPlugin::Allocator(p) => p,
        _ => unreachable!("loaded as an allocator"),
    }
}

// ---------------------------------------------------------------------------------------------
// Native routers: the algorithms of plugins/round-robin and plugins/weighted-round-robin, with
// per-instance state in a struct instead of a guest thread-local.

/// Native twin of `plugins/round-robin`.
#[derive(Default)]
struct NativeRoundRobin {
    healthy: Vec<bool>,
    next: usize,
}

impl NativeRoundRobin {
    fn update(&mut self, endpoints: &[Endpoint]) {
        self.healthy = endpoints.iter().map(|e| e.healthy).collect();
        self.next = 0;
    }

    fn route(&mut self, _request: &RouteRequest) -> Option<u32> {
        let n = self.healthy.len();
        let start = self.next;
        let pick = (0..n).map(|k| (start + k) % n).find(|&i| self.healthy[i])?;
        self.next = (pick + 1) % n;
        Some(pick as u32)
    }
}

/// Native twin of `plugins/weighted-round-robin` (nginx's smooth weighted round-robin).
#[derive(Default)]
struct NativeWeightedRoundRobin {
    weights: Vec<i64>,
    current: Vec<i64>,
}

impl NativeWeightedRoundRobin {
    fn update(&mut self, endpoints: &[Endpoint]) {
        self.weights = endpoints.iter().map(|e| if e.healthy { i64::from(e.weight) } else { 0 }).collect();
        self.current = vec![0; endpoints.len()];
    }

    fn route(&mut self, _request: &RouteRequest) -> Option<u32> {
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (i, &w) in self.weights.iter().enumerate() {
            if w <= 0 {
                continue;
            }
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(best as u32)
    }
}

/// Native twin of `plugins/source-hash`: FNV-1a of the client address, jump hash, rehash past
/// unhealthy endpoints.
#[derive(Default)]
struct NativeSourceHash {
    healthy: Vec<bool>,
}

impl NativeSourceHash {
    fn update(&mut self, endpoints: &[Endpoint]) {
        self.healthy = endpoints.iter().map(|e| e.healthy).collect();
    }

    fn route(&mut self, request: &RouteRequest) -> Option<u32> {
        use shoal_keyspace::{fnv1a64 as fnv1a, jump_hash};
        let n = self.healthy.len() as u32;
        let key = match request.headers.get("x-hash-key").and_then(|v| v.to_str().ok()) {
            Some(key) => key.to_owned(),
            None => request.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        };
        let mut hash = fnv1a(key.as_bytes());
        for _ in 0..n.max(8) {
            let pick = jump_hash(hash, n);
            if self.healthy[pick as usize] {
                return Some(pick);
            }
            hash = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        }
        let start = jump_hash(fnv1a(key.as_bytes()), n);
        (0..n).map(|k| (start + k) % n).find(|&i| self.healthy[i as usize])
    }
}

/// Native twin of `plugins/least-connections`.
#[derive(Default)]
struct NativeLeastConnections {
    weights: Vec<u64>,
    rotate: usize,
}

impl NativeLeastConnections {
    fn update(&mut self, endpoints: &[Endpoint]) {
        self.weights = endpoints.iter().map(|e| if e.healthy { u64::from(e.weight.max(1)) } else { 0 }).collect();
    }

    fn route(&mut self, request: &RouteRequest) -> Option<u32> {
        let n = self.weights.len();
        let start = self.rotate % n;
        self.rotate = start + 1;
        let active =
            |i: usize| u64::from(request.active.get(i).map_or(0, |a| a.load(std::sync::atomic::Ordering::Relaxed)));
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if self.weights[i] == 0 {
                continue;
            }
            if best.is_none_or(|b| active(i) * self.weights[b] < active(b) * self.weights[i]) {
                best = Some(i);
            }
        }
        best.map(|i| i as u32)
    }
}

// ---------------------------------------------------------------------------------------------
// Native DRF: the algorithm of plugins/drf, with the sdk's `Resources` helpers it uses.

fn res_empty() -> Resources {
    Resources { cpus: 0.0, mem_mb: 0.0, disk_mb: 0.0, ports: Vec::new(), scalars: Vec::new() }
}

fn res_scalar(r: &Resources, name: &str) -> f64 {
    r.scalars.iter().filter(|s| s.name == name).map(|s| s.value).sum()
}

fn res_add(r: &mut Resources, other: &Resources) {
    r.cpus += other.cpus;
    r.mem_mb += other.mem_mb;
    r.disk_mb += other.disk_mb;
    r.ports.extend(other.ports.iter().copied());
    for s in &other.scalars {
        match r.scalars.iter_mut().find(|m| m.name == s.name) {
            Some(m) => m.value += s.value,
            None => r.scalars.push(Scalar { name: s.name.clone(), value: s.value }),
        }
    }
}

fn res_dominant_share(r: &Resources, total: &Resources) -> f64 {
    let share = |used: f64, all: f64| if all > 0.0 { used / all } else { 0.0 };
    let mut max = share(r.cpus, total.cpus).max(share(r.mem_mb, total.mem_mb)).max(share(r.disk_mb, total.disk_mb));
    for s in &r.scalars {
        max = max.max(share(s.value, res_scalar(total, &s.name)));
    }
    max
}

struct Entry {
    share: f64,
    index: usize,
    name_rank: usize,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        other.share.total_cmp(&self.share).then_with(|| other.name_rank.cmp(&self.name_rank))
    }
}

fn weighted_share(allocated: &Resources, total: &Resources, weight: f64) -> f64 {
    let weight = if weight > 0.0 { weight } else { 1.0 };
    res_dominant_share(allocated, total) / weight
}

fn under_quota(framework: &FrameworkInfo, allocated: &Resources, free: &Resources) -> Option<Resources> {
    let Some(quota) = &framework.quota else { return Some(free.clone()) };
    let room = |q: f64, a: f64| (q - a).max(0.0);
    let capped = Resources {
        cpus: free.cpus.min(room(quota.cpus, allocated.cpus)),
        mem_mb: free.mem_mb.min(room(quota.mem_mb, allocated.mem_mb)),
        disk_mb: free.disk_mb.min(room(quota.disk_mb, allocated.disk_mb)),
        ports: free.ports.clone(),
        scalars: free.scalars.clone(),
    };
    let useful = (free.cpus <= 0.0 || capped.cpus > 0.0)
        && (free.mem_mb <= 0.0 || capped.mem_mb > 0.0)
        && (capped.cpus > 0.0 || capped.mem_mb > 0.0);
    useful.then_some(capped)
}

/// Native twin of `plugins/drf`. It borrows the snapshot, as a native allocator in the host would;
/// the plugin gets its own copy, lifted from linear memory, which is part of what the Wasm call costs.
fn native_drf(snapshot: &ClusterSnapshot) -> Vec<Offer> {
    let mut total = res_empty();
    for agent in &snapshot.agents {
        res_add(&mut total, &agent.total);
    }
    let frameworks = &snapshot.frameworks;
    let mut allocated: Vec<Resources> = frameworks.iter().map(|f| f.allocated.clone()).collect();

    let mut by_name: Vec<usize> = (0..frameworks.len()).collect();
    by_name.sort_by(|&a, &b| frameworks[a].name.cmp(&frameworks[b].name));
    let mut rank = vec![0; frameworks.len()];
    for (r, &i) in by_name.iter().enumerate() {
        rank[i] = r;
    }

    let mut heap: BinaryHeap<Entry> = frameworks
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.suppressed)
        .map(|(i, f)| Entry { share: weighted_share(&allocated[i], &total, f.weight), index: i, name_rank: rank[i] })
        .collect();

    let mut offers = Vec::new();
    let mut skipped = Vec::new();
    for agent in &snapshot.agents {
        if agent.free.cpus <= 0.0 && agent.free.mem_mb <= 0.0 {
            continue;
        }
        while let Some(entry) = heap.pop() {
            let f = &frameworks[entry.index];
            let filtered = f.filters.iter().any(|d| d.agent_id == agent.id && d.until_ms > snapshot.now_ms);
            let offer = if filtered { None } else { under_quota(f, &allocated[entry.index], &agent.free) };
            match offer {
                Some(resources) => {
                    res_add(&mut allocated[entry.index], &resources);
                    offers.push(Offer { framework: f.name.clone(), agent_id: agent.id.clone(), resources });
                    heap.push(Entry { share: weighted_share(&allocated[entry.index], &total, f.weight), ..entry });
                    break;
                }
                None => skipped.push(entry),
            }
        }
        heap.extend(skipped.drain(..));
    }
    offers
}

// ---------------------------------------------------------------------------------------------
// Inputs

const ENDPOINTS: usize = 16;

fn route_table() -> RouteTable {
    RouteTable {
        generation: 1,
        endpoints: (0..ENDPOINTS)
            .map(|i| Endpoint {
                id: format!("task-{i:04}"),
                address: format!("10.0.{}.{}:8080", i / 256, i % 256),
                weight: 1 + (i % 4) as u32,
                labels: vec![Attribute { name: "version".into(), value: "2".into() }],
                // Two of the 16 are unhealthy.
                healthy: i % 7 != 3,
            })
            .collect(),
    }
}

/// A request of a client, with in-flight counts for the 16 endpoints.
fn request() -> RouteRequest {
    RouteRequest {
        method: http::Method::GET,
        host: "app.example.com".into(),
        path: "/api/v1/items".into(),
        client_ip: Some("198.51.100.23".parse().expect("IP")),
        headers: http::HeaderMap::new(),
        active: (0..ENDPOINTS).map(|i| AtomicU32::new((i % 5) as u32)).collect(),
    }
}

const NOW_MS: u64 = 1_700_000_000_000;

fn agent_id(i: usize) -> String {
    format!("agent-{i:05}")
}

/// A deterministic cluster: agents of 8 to 64 cpus, one in ten full, one in fifty with GPUs;
/// frameworks already holding resources, a fifth with weight 2, a tenth with a quota, a
/// twentieth suppressed, a quarter with decline filters (five live, one expired).
fn snapshot(agents: usize, frameworks: usize) -> ClusterSnapshot {
    let agents = (0..agents)
        .map(|i| {
            let cpus = [8.0, 16.0, 32.0, 64.0][i % 4];
            let gpus = if i % 50 == 0 { vec![Scalar { name: "gpus".into(), value: 4.0 }] } else { vec![] };
            let total = Resources {
                cpus,
                mem_mb: cpus * 4096.0,
                disk_mb: 500_000.0,
                ports: vec![PortRange { begin: 31000, end: 32000 }],
                scalars: gpus,
            };
            let free = match i % 10 {
                9 => Resources { cpus: 0.0, mem_mb: 0.0, disk_mb: 0.0, ports: vec![], scalars: vec![] },
                k if k % 3 == 0 => total.clone(),
                _ => Resources {
                    cpus: cpus / 2.0,
                    mem_mb: cpus * 1024.0,
                    disk_mb: 200_000.0,
                    ports: vec![PortRange { begin: 31500, end: 32000 }],
                    scalars: total.scalars.clone(),
                },
            };
            Agent {
                id: agent_id(i),
                hostname: format!("{}.cluster.local", agent_id(i)),
                attributes: vec![
                    Attribute { name: "zone".into(), value: format!("z{}", i % 3) },
                    Attribute { name: "rack".into(), value: format!("r{}", i % 40) },
                ],
                total,
                free,
            }
        })
        .collect::<Vec<_>>();
    let n_agents = agents.len();
    let frameworks = (0..frameworks)
        .map(|j| {
            let allocated = Resources {
                cpus: (j % 17) as f64 * 4.0,
                mem_mb: (j % 13) as f64 * 8192.0,
                disk_mb: 0.0,
                ports: vec![],
                scalars: vec![],
            };
            let quota = (j % 10 == 0).then(|| Resources {
                cpus: allocated.cpus + 64.0,
                mem_mb: allocated.mem_mb + 262_144.0,
                disk_mb: 1e9,
                ports: vec![],
                scalars: vec![],
            });
            let filters = if j % 4 == 0 {
                (0..5)
                    .map(|k| DeclineFilter {
                        agent_id: agent_id((j * 7 + k * 13) % n_agents),
                        until_ms: NOW_MS + 5_000,
                    })
                    .chain([DeclineFilter { agent_id: agent_id((j * 3) % n_agents), until_ms: NOW_MS - 1 }])
                    .collect()
            } else {
                vec![]
            };
            FrameworkInfo {
                name: format!("framework-{j:04}"),
                role: if j % 3 == 0 { "analytics".into() } else { "*".into() },
                weight: if j % 5 == 0 { 2.0 } else { 1.0 },
                quota,
                allocated,
                filters,
                suppressed: j % 20 == 19,
            }
        })
        .collect();
    ClusterSnapshot { now_ms: NOW_MS, agents, frameworks }
}

// ---------------------------------------------------------------------------------------------
// Benchmarks

fn router_call(c: &mut Criterion) {
    let table = route_table();
    let mut req = request();
    let mut group = c.benchmark_group("router_call_16");
    group.warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5));

    macro_rules! rule {
        ($name:literal, $bytes:expr, $native:ty) => {{
            let wasm = router($name, $bytes);
            let mut native = <$native>::default();
            native.update(&table.endpoints);
            // The Wasm and native versions must agree before their speed is worth comparing.
            for i in 0..100u8 {
                req.client_ip = Some(std::net::IpAddr::from([198, 51, 100, i]));
                let picked = shoal_abi::route(&wasm, &table, &mut req).expect("route");
                assert_eq!(picked, native.route(&req), "{}: Wasm and native disagree", $name);
            }
            group.bench_function(BenchmarkId::new("wasm", $name), |b| {
                b.iter(|| shoal_abi::route(&wasm, &table, black_box(&mut req)).expect("route"))
            });
            group.bench_function(BenchmarkId::new("native", $name), |b| b.iter(|| native.route(black_box(&req))));
        }};
    }
    rule!("round-robin", shoal_artifacts::ROUND_ROBIN, NativeRoundRobin);
    rule!("weighted-round-robin", shoal_artifacts::WEIGHTED_ROUND_ROBIN, NativeWeightedRoundRobin);
    rule!("source-hash", shoal_artifacts::SOURCE_HASH, NativeSourceHash);
    rule!("least-connections", shoal_artifacts::LEAST_CONNECTIONS, NativeLeastConnections);
    // Source hash keyed by a header (one header read instead of a header miss and the address).
    req.headers.insert("x-hash-key", http::HeaderValue::from_static("session-0f3a9c"));
    rule!("source-hash-by-header", shoal_artifacts::SOURCE_HASH, NativeSourceHash);
    group.finish();
}

fn instance(c: &mut Criterion) {
    let rr = router("round-robin", shoal_artifacts::ROUND_ROBIN);
    let table = route_table();
    let mut group = c.benchmark_group("instance");
    group.warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5));

    // A fresh instance from InstancePre in a pooling-allocator slot; dropping it (and so
    // returning the slot) is outside the timed region.
    group.bench_function(BenchmarkId::new("wasm", "instantiate"), |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let instance = rr.instantiate().expect("instantiate");
                elapsed += start.elapsed();
                drop(black_box(instance));
            }
            elapsed
        })
    });
    // The same with the drop timed: the whole cost of an instance used once.
    group.bench_function(BenchmarkId::new("wasm", "instantiate+drop"), |b| {
        b.iter(|| drop(black_box(rr.instantiate().expect("instantiate"))))
    });
    // A fresh instance and one empty call (`on-complete`, which the router ignores); drop untimed.
    group.bench_function(BenchmarkId::new("wasm", "instantiate+empty-call"), |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let mut instance = rr.instantiate().expect("instantiate");
                instance
                    .bindings
                    .shoal_plugin_routing()
                    .call_on_complete(&mut instance.store, 0, 200, 1_000)
                    .expect("on-complete");
                elapsed += start.elapsed();
                drop(black_box(instance));
            }
            elapsed
        })
    });
    // For reference: the same empty call through `Plugin::call` on a pooled, reused instance.
    group.bench_function(BenchmarkId::new("wasm", "empty-call-reused"), |b| {
        b.iter(|| shoal_abi::route_complete(&rr, &table, black_box(0), 200, 1_000).expect("on-complete"))
    });
    group.finish();
}

fn drf_group(c: &mut Criterion, agents: usize, frameworks: usize, samples: usize, time: Duration) {
    let drf = allocator("drf", shoal_artifacts::DRF);
    let snap = snapshot(agents, frameworks);
    let wasm = shoal_abi::allocate(&drf, &snap).expect("allocate");
    let native = native_drf(&snap);
    assert_eq!(wasm, native, "DRF {agents}x{frameworks}: Wasm and native disagree");
    println!("drf {agents} agents x {frameworks} frameworks: {} offers", wasm.len());

    let mut group = c.benchmark_group(format!("drf_{agents}x{frameworks}"));
    group.sample_size(samples).warm_up_time(Duration::from_secs(1)).measurement_time(time);
    group.bench_function(BenchmarkId::new("wasm", "allocate"), |b| {
        b.iter(|| shoal_abi::allocate(&drf, black_box(&snap)).expect("allocate"))
    });
    group.bench_function(BenchmarkId::new("native", "allocate"), |b| b.iter(|| native_drf(black_box(&snap))));
    group.finish();
}

fn drf(c: &mut Criterion) {
    drf_group(c, 1_000, 100, 50, Duration::from_secs(5));
    drf_group(c, 10_000, 1_000, 10, Duration::from_secs(10));
}

/// Run `iters` calls split over `callers` threads; the time from their common start to the last
/// one's end.
fn spread<S: Send>(callers: usize, iters: u64, state: impl Fn() -> S + Sync, call: impl Fn(&mut S) + Sync) -> Duration {
    let barrier = Barrier::new(callers + 1);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..callers as u64)
            .map(|k| {
                let n = iters / callers as u64 + u64::from(k < iters % callers as u64);
                let (barrier, state, call) = (&barrier, &state, &call);
                scope.spawn(move || {
                    let mut s = state();
                    barrier.wait();
                    for _ in 0..n {
                        call(&mut s);
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for t in threads {
            t.join().expect("caller thread");
        }
        start.elapsed()
    })
}

fn callers(c: &mut Criterion) {
    let rr = router("round-robin", shoal_artifacts::ROUND_ROBIN);
    let table = route_table();
    let req = request();
    let mut group = c.benchmark_group("router_callers");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    for n in [1, 2, 4] {
        group.bench_function(BenchmarkId::new("wasm", n), |b| {
            b.iter_custom(|iters| {
                spread(
                    n,
                    iters,
                    || RouteRequest { path: req.path.clone(), ..RouteRequest::default() },
                    |req| {
                        black_box(shoal_abi::route(&rr, &table, black_box(req)).expect("route"));
                    },
                )
            })
        });
    }
    for n in [1, 4] {
        group.bench_function(BenchmarkId::new("native", n), |b| {
            b.iter_custom(|iters| {
                spread(
                    n,
                    iters,
                    || {
                        let mut r = NativeRoundRobin::default();
                        r.update(&table.endpoints);
                        r
                    },
                    |r| {
                        black_box(r.route(black_box(&req)));
                    },
                )
            })
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Summary: medians of this run from criterion's estimates, side by side.

fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    // target/release/deps/plugins-<hash>
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors().nth(3).map(|t| t.join("criterion")).unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// Median in ns of `group/id`, if measured by this process.
fn median_ns(started: SystemTime, group: &str, id: &str) -> Option<f64> {
    let path = criterion_dir().join(group).join(id).join("new/estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < started {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn human(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn summary(started: SystemTime) {
    struct Row {
        group: &'static str,
        wasm: &'static str,
        native: Option<&'static str>,
        goal_ns: Option<f64>,
    }
    let row = |group, wasm, native, goal_ns| Row { group, wasm, native, goal_ns };
    let rows = [
        row("router_call_16", "wasm/round-robin", Some("native/round-robin"), Some(1e3)),
        row("router_call_16", "wasm/weighted-round-robin", Some("native/weighted-round-robin"), Some(1e3)),
        row("router_call_16", "wasm/source-hash", Some("native/source-hash"), Some(1e3)),
        row("router_call_16", "wasm/least-connections", Some("native/least-connections"), Some(1e3)),
        row("instance", "wasm/instantiate", None, Some(50e3)),
        row("instance", "wasm/instantiate+drop", None, None),
        row("instance", "wasm/instantiate+empty-call", None, None),
        row("instance", "wasm/empty-call-reused", None, None),
        row("drf_1000x100", "wasm/allocate", Some("native/allocate"), Some(5e6)),
        row("drf_10000x1000", "wasm/allocate", Some("native/allocate"), None),
    ];
    let mut lines = Vec::new();
    for r in &rows {
        let Some(wasm) = median_ns(started, r.group, r.wasm) else { continue };
        let native = r.native.and_then(|n| median_ns(started, r.group, n));
        let (native_text, ratio) = match native {
            Some(n) => (human(n), format!("{:.1}x", wasm / n)),
            None => ("-".into(), "-".into()),
        };
        let goal = match r.goal_ns {
            Some(g) => format!("<= {} {}", human(g), if wasm <= g { "PASS" } else { "FAIL" }),
            None => "-".into(),
        };
        lines.push(format!(
            "{:<48} {:>12} {:>12} {:>9}  {}",
            format!("{}/{}", r.group, r.wasm),
            human(wasm),
            native_text,
            ratio,
            goal
        ));
    }
    // Throughput: calls per second of all callers together, against one caller.
    let per_sec = |id: &str| median_ns(started, "router_callers", id).map(|ns| 1e9 / ns);
    let one = per_sec("wasm/1");
    for id in ["wasm/1", "wasm/2", "wasm/4", "native/1", "native/4"] {
        let Some(rate) = per_sec(id) else { continue };
        let base = if id.starts_with("wasm") { one } else { per_sec("native/1") };
        let vs_one = base.map(|b| format!("{:.2}x of 1 caller", rate / b)).unwrap_or_default();
        let vs_native = match id {
            "wasm/1" => per_sec("native/1"),
            "wasm/4" => per_sec("native/4"),
            _ => None,
        }
        .map(|n| format!(", native/wasm {:.1}x", n / rate))
        .unwrap_or_default();
        lines.push(format!("{:<48} {:>12.0} calls/s  {vs_one}{vs_native}", format!("router_callers/{id}"), rate));
    }
    if lines.is_empty() {
        return;
    }
    println!("\nSummary (medians of this run)");
    println!("{:<48} {:>12} {:>12} {:>9}  goal", "benchmark", "wasm", "native", "ratio");
    for line in lines {
        println!("{line}");
    }
}

criterion_group!(benches, router_call, instance, drf, callers);

fn main() {
    let started = SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary(started);
}
