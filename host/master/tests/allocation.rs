//! Allocation cycles through the real DRF plugin, and offers taken back when their agent is lost.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is the failure report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use shoal_abi::PluginKind;
use shoal_bus::{LocalBus, SharedBus};
use shoal_master::{AgentRegistration, FrameworkSpec, Master, MasterConfig, Resources};
use shoal_registry::{Registry, RegistryConfig};
use shoal_runtime::{Runtime, RuntimeConfig};

async fn registry(dir: &std::path::Path) -> Arc<Registry> {
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let (registry, _events) =
        Registry::open(&dir.join("registry"), runtime, RegistryConfig::default()).expect("registry");
    registry.push(PluginKind::Allocator, "drf", Some("1"), shoal_artifacts::DRF, true).await.expect("push drf");
    registry
}

fn agent(id: &str, resources: &str) -> AgentRegistration {
    AgentRegistration {
        id: id.into(),
        hostname: format!("{id}.local"),
        address: None,
        attributes: BTreeMap::new(),
        resources: Resources::parse(resources).expect("resources"),
        tasks: Vec::new(),
    }
}

fn framework(name: &str, weight: f64) -> FrameworkSpec {
    FrameworkSpec { name: name.into(), role: name.into(), weight, quota: None }
}

#[tokio::test(flavor = "multi_thread")]
async fn drf_offers_every_free_agent_once_and_never_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = registry(dir.path()).await;
    let bus: SharedBus = Arc::new(LocalBus::new());
    let master = Master::new(bus, MasterConfig::default(), Some(registry));
    for (id, r) in [("a1", "cpus:4;mem:4096"), ("a2", "cpus:4;mem:4096"), ("a3", "cpus:8;mem:8192;ports:[31000-31099]")]
    {
        master.admit(agent(id, r)).expect("admit");
    }
    master.add_framework(framework("web", 1.0)).expect("framework");
    master.add_framework(framework("batch", 1.0)).expect("framework");
    assert!(master.add_framework(framework("zero", 0.0)).unwrap_err().contains("weight"));
    assert!(master.add_framework(framework("Bad Name", 1.0)).is_err());

    let report = tokio::task::spawn_blocking({
        let m = master.clone();
        move || m.allocate_once()
    })
    .await
    .expect("join")
    .expect("cycle");
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(report.offers.len(), 3, "one offer per agent: {:?}", report.offers);
    let by_agent: BTreeMap<&str, &Resources> =
        report.offers.iter().map(|o| (o.agent_id.as_str(), &o.resources)).collect();
    assert_eq!(by_agent["a3"].to_string(), "cpus:8;mem:8192;disk:0;ports:[31000-31099]");
    // DRF: both frameworks get something.
    let frameworks: std::collections::BTreeSet<&str> = report.offers.iter().map(|o| o.framework.as_str()).collect();
    assert_eq!(frameworks.len(), 2, "{:?}", report.offers);

    // Everything is offered: the next cycle has nothing to give.
    let again = master.allocate_once().expect("cycle");
    assert!(again.offers.is_empty(), "offered twice: {:?}", again.offers);
    assert_eq!(master.offers().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn offers_of_a_lost_agent_are_rescinded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = registry(dir.path()).await;
    let bus: SharedBus = Arc::new(LocalBus::new());
    let mut events = bus.subscribe("shoal.evt.offer.>").await.expect("subscribe");
    let config = MasterConfig {
        agent_timeout: Duration::from_millis(400),
        allocation_interval: Some(Duration::from_millis(100)),
        ..MasterConfig::default()
    };
    let master = Master::new(bus.clone(), config, Some(registry));
    master.add_framework(framework("web", 1.0)).expect("framework");
    tokio::spawn(master.clone().run());
    let a1 = tokio::spawn(shoal_master::run_agent(bus.clone(), agent("a1", "cpus:2;mem:1024")));
    let _a2 = tokio::spawn(shoal_master::run_agent(bus.clone(), agent("a2", "cpus:2;mem:1024")));

    // The allocation loop offers both agents to `web`.
    let mut made = 0;
    while made < 2 {
        let e = tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("an offer").expect("open");
        if e.subject == "shoal.evt.offer.web.made" {
            made += 1;
        }
    }
    assert_eq!(master.offers().len(), 2);

    // a1 goes silent: lost, and its offer taken back.
    a1.abort();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("a rescind").expect("open");
        if e.subject == "shoal.evt.offer.web.rescinded" {
            let v: serde_json::Value = serde_json::from_slice(&e.payload).expect("json");
            assert_eq!(v["data"]["offer"]["agent_id"], "a1");
            break;
        }
    }
    let left: Vec<String> = master.offers().into_iter().map(|o| o.agent_id).collect();
    assert_eq!(left, ["a2"]);
}
