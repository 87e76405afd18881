//! Allocation cycles through the real DRF plugin, offers taken back when their agent is lost, and
//! offers of a cycle older than a deploy held back until the next one (the real `service` plugin).

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is the failure report

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use shoal_abi::PluginKind;
use shoal_bus::{LocalBus, SharedBus};
use shoal_master::{FrameworkSpec, Master, MasterConfig};
use shoal_protocol::{AgentRegistration, Resources};
use shoal_registry::{Registry, RegistryConfig};
use shoal_runtime::{Runtime, RuntimeConfig};
use shoal_testkit::eventually;

/// Runs its closure if the test panics while the guard lives: a wait that gives up can then say
/// what it saw last (`eventually` only knows what it was waiting for).
struct OnPanic<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnPanic<F> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            (self.0)();
        }
    }
}

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
    assert!(master.add_framework(framework("zero", 0.0)).unwrap_err().to_string().contains("weight"));
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
    let a1 = tokio::spawn(shoal_agent::run_agent(bus.clone(), agent("a1", "cpus:2;mem:1024")));
    let _a2 = tokio::spawn(shoal_agent::run_agent(bus.clone(), agent("a2", "cpus:2;mem:1024")));

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

/// The race behind a deploy that once landed on two agents of three: a cycle took its snapshot
/// while the `service` framework still declined a6 (a4 and a5's filters had expired), the deploy
/// reached the framework, then the cycle's offers did. The framework must not place the whole
/// app on the offers of that older view: they are held back and go out with the next cycle's,
/// which has a6 too.
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_placed_during_a_cycle_sees_every_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = registry(dir.path()).await;
    registry.push(PluginKind::Framework, "service", Some("1"), shoal_artifacts::SERVICE, true).await.expect("service");
    let bus: SharedBus = Arc::new(LocalBus::new());
    // No allocation loop: the test runs the cycles.
    let config = MasterConfig { allocation_interval: None, ..MasterConfig::default() };
    let master = Master::new(bus, config, Some(registry));
    master.sync_framework_plugins();
    let cycle = || {
        let m = master.clone();
        async move { tokio::task::spawn_blocking(move || m.allocate_once()).await.expect("join").expect("cycle") }
    };
    let view = |m: &Master| m.framework_views().into_iter().find(|f| f.spec.name == "service").expect("service");

    // a6 is offered first; with nothing to run, the framework declines it for a while.
    master.admit(agent("a6", "cpus:2;mem:1024;ports:[31000-31009]")).expect("admit");
    let first = cycle().await;
    assert_eq!(first.offers.len(), 1);
    master.dispatch_offers(&first);
    let filters = RefCell::new(String::new());
    let report = OnPanic(|| eprintln!("a6 was not declined: {}", filters.borrow()));
    eventually("the service framework to decline a6", Duration::from_secs(20), || {
        let seen = view(&master).filters;
        *filters.borrow_mut() = format!("{seen:?}");
        std::future::ready(seen.contains_key("a6").then_some(()))
    })
    .await;
    drop(report);

    // A cycle offers a4 and a5 only; before its offers arrive, an app of 5 is deployed.
    for id in ["a4", "a5"] {
        master.admit(agent(id, "cpus:2;mem:1024;ports:[31000-31009]")).expect("admit");
    }
    let before = cycle().await;
    let mut offered: Vec<&str> = before.offers.iter().map(|o| o.agent_id.as_str()).collect();
    offered.sort();
    assert_eq!(offered, ["a4", "a5"]);
    let deploy = shoal_abi::HttpRequest {
        method: "PUT".into(),
        path: "/apps/web".into(),
        query: String::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: serde_json::to_vec(&serde_json::json!({
            "id": "web", "instances": 5, "cmd": "exec sleep 600", "cpus": 0.1, "mem": 32, "ports": 1,
            "constraints": [["@hostname", "MAX_PER", "3"]],
        }))
        .expect("json"),
    };
    let answer = master.framework_request("service", deploy).await.expect("the framework answers");
    assert!(answer.status < 300, "{}: {}", answer.status, String::from_utf8_lossy(&answer.body));
    assert!(view(&master).filters.is_empty(), "the deploy revives the framework");
    master.dispatch_offers(&before);

    // The next cycle offers a6; the framework gets all three agents at once.
    let after = cycle().await;
    assert_eq!(after.offers.iter().map(|o| o.agent_id.as_str()).collect::<Vec<_>>(), ["a6"]);
    master.dispatch_offers(&after);
    let placed = RefCell::new(String::new());
    let report = OnPanic(|| eprintln!("placed only {}", placed.borrow()));
    let tasks = eventually("the 5 tasks of the app to be placed", Duration::from_secs(20), || {
        let tasks = master.tasks();
        if tasks.len() >= 5 {
            return std::future::ready(Some(tasks));
        }
        *placed.borrow_mut() = format!("{tasks:?}");
        std::future::ready(None)
    })
    .await;
    drop(report);
    let mut per_agent: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &tasks {
        *per_agent.entry(t.info.agent_id.as_str()).or_default() += 1;
    }
    assert_eq!(tasks.len(), 5, "{per_agent:?}");
    assert_eq!(per_agent.len(), 3, "the app spreads over every agent: {per_agent:?}");
}
