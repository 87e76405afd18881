//! A full allocation cycle of the master: snapshot of the cluster, the Wasm DRF plugin, every
//! proposal checked, offers recorded — at 1,000 agents × 100 frameworks and 10,000 × 1,000.
//!
//! ```sh
//! cargo bench -p shoal-master --bench allocation
//! ```
//!
//! Each iteration starts from a master whose agents are all free (built outside the timing).
//! The plugin call alone is measured by `cargo bench -p shoal-abi --bench plugins -- drf_`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use shoal_abi::PluginKind;
use shoal_bus::{LocalBus, SharedBus};
use shoal_master::{FrameworkSpec, Master, MasterConfig};
use shoal_protocol::{AgentRegistration, Resources};
use shoal_registry::{Registry, RegistryConfig};
use shoal_runtime::{Runtime, RuntimeConfig};

fn master(registry: &Arc<Registry>, agents: usize, frameworks: usize) -> Arc<Master> {
    let bus: SharedBus = Arc::new(LocalBus::new());
    let m = Master::new(bus, MasterConfig::default(), Some(registry.clone()));
    for i in 0..agents {
        let resources = Resources::parse(&format!(
            "cpus:{};mem:{};disk:100000;ports:[31000-32000]",
            8 + (i % 4) * 8,
            32768 + (i % 3) * 32768
        ))
        .expect("resources");
        m.admit(AgentRegistration {
            id: format!("agent-{i}"),
            hostname: format!("host-{i}"),
            address: None,
            attributes: BTreeMap::from([("rack".to_owned(), format!("r{}", i % 20))]),
            resources,
            tasks: Vec::new(),
        })
        .expect("admit");
    }
    for f in 0..frameworks {
        m.add_framework(FrameworkSpec {
            name: format!("fw-{f}"),
            role: format!("role-{}", f % 10),
            weight: 1.0 + (f % 3) as f64,
            quota: None,
        })
        .expect("framework");
    }
    m
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let (registry, _events) =
        Registry::open(&dir.path().join("registry"), runtime, RegistryConfig::default()).expect("registry");
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(registry.push(PluginKind::Allocator, "drf", Some("1"), shoal_artifacts::DRF, true)).expect("push drf");

    for (agents, frameworks, samples) in [(1_000, 100, 30), (10_000, 1_000, 10)] {
        let probe = rt.block_on(async { master(&registry, agents, frameworks) });
        let report = probe.allocate_once().expect("cycle");
        println!(
            "cycle {agents} agents x {frameworks} frameworks: {} offers, {} refused",
            report.offers.len(),
            report.rejected.len()
        );
        assert_eq!(report.offers.len(), agents, "every agent offered once");
        assert!(report.rejected.is_empty());
        let mut group = c.benchmark_group(format!("cycle_{agents}x{frameworks}"));
        group.sample_size(samples).measurement_time(Duration::from_secs(if agents > 1000 { 20 } else { 5 }));
        group.bench_function("wasm_drf_full_cycle", |b| {
            b.iter_batched(
                || rt.block_on(async { master(&registry, agents, frameworks) }),
                |m| m.allocate_once().expect("cycle"),
                BatchSize::PerIteration,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
