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

#[path = "../../master/benches/common/state.rs"]
mod state;
use state::{cpu_time, open_state, plugin_data};

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
    // The journal of `shoal master`, flushed before launches.
    let (journal, flush) = shoal_master::registry_journal(&registry);
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
    let artifacts = shoal_task_io::ArtifactStore::open(state.clone()).expect("artifacts");
    let digest = artifacts.put(shoal_artifacts::WASM_HTTP).await.expect("artifact").digest;
    tokio::spawn(artifacts.serve(bus.clone()));
    let registration = AgentRegistration {
        id: "bench".into(),
        hostname: "localhost".into(),
        address: Some("127.0.0.1".into()),
        attributes: BTreeMap::new(),
        // Below Linux's ephemeral range (32768-60999): the nats-servers of STATE=replicated (and
        // anything else on the machine) take their ports there, and a Wasm service given one of
        // them could not listen (found as deploys that never ran, always near the 98th).
        resources: Resources::parse("cpus:1000;mem:1000000;ports:[21000-22999]").expect("resources"),
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
            // A deploy that never runs (its launch refused: a leader that lost its lease cannot
            // journal it) ends the run with the reason instead of waiting forever.
            tokio::time::timeout(Duration::from_secs(10), running.next())
                .await
                .unwrap_or_else(|_| panic!("deploy #{i} did not run within 10 s (leading: {:?})", state.is_writer()))
                .expect("running event");
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
