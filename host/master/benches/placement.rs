//! Placement throughput: tasks placed per second by a framework plugin over many agents — the
//! allocation cycle (Wasm DRF), the framework's `resource-offers` call and the master's checks of
//! every launch, repeated until every task asked for is placed. Agents are simulated (admitted
//! without the bus), launches are journaled in the master's state and recorded but not sent; the
//! clock stops once the journal's writes are durable (replicated, with `STATE=replicated`), as
//! they must be before a launch leaves. `STATE` as in `common/state.rs`: a single master's local
//! state (the default) or a leader's replicated one, on three nats-servers started here.
//!
//! ```text
//! cargo bench --bench placement                      # service framework, 5,000 agents, 10,000 tasks
//! AGENTS=5000 TASKS=20000 FRAMEWORK=keeper cargo bench --bench placement
//! STATE=replicated cargo bench --bench placement     # the same, journaled through JetStream
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_abi::{HttpRequest, PluginKind};
use shoal_bus::{LocalBus, SharedBus};
use shoal_master::{Master, MasterConfig, MasterParts};
use shoal_protocol::{AgentRegistration, Resources};
use shoal_registry::{Registry, RegistryConfig};
use shoal_runtime::{Runtime, RuntimeConfig};

mod common {
    pub mod state;
}
use common::state::{cpu_time, open_state, plugin_data};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let agents = env("AGENTS", 5000);
    let tasks = env("TASKS", 10_000);
    let framework = std::env::var("FRAMEWORK").unwrap_or_else(|_| "service".into());
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(RuntimeConfig { cache_dir: Some(dir.path().join("cache")), ..RuntimeConfig::default() })
        .expect("runtime");
    let (state, _keep) = open_state(dir.path()).await;
    let (registry, _events) =
        Registry::open_on(state, runtime, RegistryConfig::default(), Some(plugin_data())).expect("registry");
    registry.push(PluginKind::Allocator, "drf", Some("1"), shoal_artifacts::DRF, true).await.expect("drf");
    let (bytes, request) = match framework.as_str() {
        "keeper" => (
            shoal_artifacts::KEEPER_FRAMEWORK,
            HttpRequest {
                method: "POST".into(),
                path: "/keep".into(),
                query: String::new(),
                headers: vec![],
                body: format!("{tasks} exec sleep 600").into_bytes(),
            },
        ),
        _ => (
            shoal_artifacts::SERVICE,
            HttpRequest {
                method: "PUT".into(),
                path: "/apps/bench".into(),
                query: String::new(),
                headers: vec![("content-type".into(), "application/json".into())],
                body: serde_json::to_vec(&serde_json::json!({
                    "id": "bench", "instances": tasks, "cmd": "exec sleep 600",
                    "cpus": 0.1, "mem": 32, "ports": 1,
                }))
                .expect("json"),
            },
        ),
    };
    registry.push(PluginKind::Framework, &framework, Some("1"), bytes, true).await.expect("framework");
    let (journal, flush) = shoal_master::registry_journal(&registry);
    let bus: SharedBus = Arc::new(LocalBus::new());
    let master = Master::with_parts(
        bus,
        MasterConfig { allocation_interval: None, ..MasterConfig::default() },
        MasterParts {
            registry: Some(registry.clone()),
            journal: Some(journal.clone()),
            journal_flush: Some(flush.clone()),
            ..MasterParts::default()
        },
    );
    for i in 0..agents {
        master
            .admit(AgentRegistration {
                id: format!("agent-{i}"),
                hostname: format!("host-{i}"),
                address: None,
                attributes: BTreeMap::from([("rack".to_owned(), format!("r{}", i % 40))]),
                resources: Resources::parse("cpus:16;mem:65536;disk:100000;ports:[31000-31999]").expect("resources"),
                tasks: Vec::new(),
            })
            .expect("admit");
    }
    master.sync_framework_plugins();
    let response = master.framework_request(&framework, request).await.expect("the framework answers");
    assert!(response.status < 300, "{}: {}", response.status, String::from_utf8_lossy(&response.body));

    let started = Instant::now();
    let cpu_before = cpu_time();
    let mut placed = 0;
    let mut rounds = 0;
    while placed < tasks && started.elapsed() < Duration::from_secs(120) {
        let me = master.clone();
        let fw = framework.clone();
        placed += tokio::task::spawn_blocking(move || me.place_once(&fw)).await.expect("join").expect("round");
        rounds += 1;
    }
    flush().await.expect("the journal's writes are durable");
    let took = started.elapsed();
    let cpu = cpu_time() - cpu_before;
    println!(
        "{framework}: {placed} tasks placed on {agents} agents in {took:.2?} ({rounds} rounds): {:.0} tasks/s, CPU {:.2?} ({:.0} µs/task)",
        placed as f64 / took.as_secs_f64(),
        cpu,
        cpu.as_secs_f64() * 1e6 / placed.max(1) as f64
    );
}
