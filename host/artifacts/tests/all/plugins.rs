//! The default plugins answer right.

use std::collections::HashMap;
use std::sync::Arc;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use shoal_abi::{
    Agent, AnyPlugin, ClusterSnapshot, DeclineFilter, Endpoint, FrameworkInfo, PluginKind, Resources, RouteRequest,
    RouteTable, RouterWorld,
};
use shoal_runtime::Plugin;

use crate::load;

macro_rules! assert_test_exists {
    ($name:ident) => {
        #[allow(unused_imports)]
        use self::$name as _;
    };
}
shoal_artifacts::foreach_plugin!(assert_test_exists);

fn router(bytes: &[u8]) -> Arc<Plugin<RouterWorld>> {
    match load(PluginKind::Router, bytes) {
        AnyPlugin::Router(p) => p,
        _ => unreachable!(),
    }
}

/// A route table; every call makes a new generation, as the gateway does on any change.
fn table(weights: &[u32], healthy: &[bool]) -> RouteTable {
    static GENERATION: AtomicU64 = AtomicU64::new(1);
    RouteTable {
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        endpoints: weights
            .iter()
            .zip(healthy)
            .enumerate()
            .map(|(i, (&weight, &healthy))| Endpoint {
                id: format!("e{i}"),
                address: format!("10.0.0.{i}:80"),
                weight,
                labels: vec![],
                healthy,
            })
            .collect(),
    }
}

fn up(n: usize) -> Vec<bool> {
    vec![true; n]
}

fn request(client_ip: &str) -> RouteRequest {
    RouteRequest {
        method: http::Method::GET,
        host: "app.test".into(),
        path: "/".into(),
        client_ip: Some(client_ip.parse().expect("an IP address")),
        ..RouteRequest::default()
    }
}

fn route(p: &Plugin<RouterWorld>, t: &RouteTable, mut request: RouteRequest) -> Option<u32> {
    shoal_abi::route(p, t, &mut request).expect("route")
}

fn picks(p: &Plugin<RouterWorld>, t: &RouteTable, n: usize) -> Vec<Option<u32>> {
    (0..n).map(|_| route(p, t, request("192.0.2.1"))).collect()
}

fn counts(picks: &[Option<u32>]) -> HashMap<Option<u32>, usize> {
    let mut m = HashMap::new();
    for p in picks {
        *m.entry(*p).or_default() += 1;
    }
    m
}

#[test]
fn round_robin() {
    let p = router(shoal_artifacts::ROUND_ROBIN);
    assert_eq!(picks(&p, &table(&[1, 1, 1], &up(3)), 6), [0, 1, 2, 0, 1, 2].map(Some));
    assert_eq!(picks(&p, &table(&[1, 1, 1], &[true, false, true]), 4), [0, 2, 0, 2].map(Some));
    assert_eq!(picks(&p, &table(&[1, 1, 1], &[false, false, false]), 2), [None, None]);
}

#[test]
fn random() {
    let p = router(shoal_artifacts::RANDOM);
    let t = table(&[1, 1, 1, 1], &[true, true, false, true]);
    let got = counts(&picks(&p, &t, 30_000));
    assert_eq!(got.get(&Some(2)), None, "unhealthy endpoint picked: {got:?}");
    for i in [0, 1, 3] {
        let n = got[&Some(i)];
        assert!((9_000..11_000).contains(&n), "endpoint {i} got {n} of 30000: {got:?}");
    }
}

#[test]
fn source_hash() {
    let p = router(shoal_artifacts::SOURCE_HASH);
    let t = table(&[1, 1, 1], &up(3));
    // The same client always lands on the same endpoint.
    let first = route(&p, &t, request("198.51.100.7"));
    for _ in 0..100 {
        assert_eq!(route(&p, &t, request("198.51.100.7")), first);
    }
    // Many clients spread over every endpoint.
    let ips: Vec<String> = (0..3000).map(|i| format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)).collect();
    let spread = counts(&ips.iter().map(|ip| route(&p, &t, request(ip))).collect::<Vec<_>>());
    for i in 0..3 {
        assert!(spread[&Some(i)] > 800, "uneven spread {spread:?}");
    }
    // The `X-Hash-Key` header, when present, is the key instead of the client address.
    let keyed = |ip: &str| {
        let mut r = request(ip);
        r.headers.insert("x-hash-key", http::HeaderValue::from_static("user-42"));
        route(&p, &t, r)
    };
    let by_key = keyed("10.0.0.1");
    assert!(ips.iter().take(50).all(|ip| keyed(ip) == by_key), "the hash key header is not the key");
    // When the key's endpoint is down, the key moves, and moves to the same place every time.
    let first = first.expect("a pick");
    let mut healthy = up(3);
    healthy[first as usize] = false;
    let down = table(&[1, 1, 1], &healthy);
    let moved = route(&p, &down, request("198.51.100.7"));
    assert!(moved.is_some() && moved != Some(first));
    assert_eq!(route(&p, &down, request("198.51.100.7")), moved);
    // A fourth endpoint takes about a quarter of the keys and moves nobody else.
    let t4 = table(&[1, 1, 1, 1], &up(4));
    let mut changed = 0;
    for ip in &ips {
        let before = route(&p, &t, request(ip));
        let after = route(&p, &t4, request(ip));
        if before != after {
            assert_eq!(after, Some(3), "a key moved between old endpoints");
            changed += 1;
        }
    }
    assert!((600..900).contains(&changed), "{changed} of 3000 keys moved");
}

#[test]
fn weighted_round_robin() {
    let p = router(shoal_artifacts::WEIGHTED_ROUND_ROBIN);
    // nginx's smooth sequence for 5:1:1.
    assert_eq!(picks(&p, &table(&[5, 1, 1], &up(3)), 7), [0, 0, 1, 0, 2, 0, 0].map(Some));
    let got = counts(&picks(&p, &table(&[5, 1, 1], &up(3)), 700));
    assert_eq!((got[&Some(0)], got[&Some(1)], got[&Some(2)]), (500, 100, 100));
    // Weight 0 and unhealthy endpoints are never picked.
    let got = counts(&picks(&p, &table(&[0, 1, 3], &[true, false, true]), 50));
    assert_eq!(got.get(&Some(2)), Some(&50));
}

#[test]
fn weighted_random() {
    let p = router(shoal_artifacts::WEIGHTED_RANDOM);
    let got = counts(&picks(&p, &table(&[3, 1, 0], &up(3)), 40_000));
    assert_eq!(got.get(&Some(2)), None, "weight 0 picked: {got:?}");
    let ratio = got[&Some(0)] as f64 / got[&Some(1)] as f64;
    assert!((2.8..3.2).contains(&ratio), "ratio {ratio} for weights 3:1 ({got:?})");
    assert_eq!(picks(&p, &table(&[3, 1, 0], &[false, false, true]), 3), [None, None, None]);
}

#[test]
fn least_connections() {
    let p = router(shoal_artifacts::LEAST_CONNECTIONS);
    let busy = |t: &RouteTable, active: [u32; 3]| {
        let mut r = request("192.0.2.9");
        r.active = active.into_iter().map(AtomicU32::new).collect();
        route(&p, t, r)
    };
    let t = table(&[1, 1, 1], &up(3));
    for _ in 0..10 {
        assert_eq!(busy(&t, [5, 0, 3]), Some(1));
    }
    // Ties rotate, so idle endpoints share the load.
    let got = counts(&(0..300).map(|_| busy(&t, [2, 2, 2])).collect::<Vec<_>>());
    assert_eq!(got.len(), 3, "ties did not rotate: {got:?}");
    // Connections are weighed: 2 active on weight 4 beats 1 active on weight 1.
    let t = table(&[1, 4, 1], &up(3));
    assert_eq!(busy(&t, [1, 2, 9]), Some(1));
    // Unhealthy idle endpoints are skipped.
    let t = table(&[1, 4, 1], &[true, false, true]);
    assert!(busy(&t, [9, 0, 9]) != Some(1));
}

fn agent(id: &str, cpus: f64, mem: f64) -> Agent {
    let r = Resources { cpus, mem_mb: mem, disk_mb: 0.0, ports: vec![], scalars: vec![] };
    Agent { id: id.into(), hostname: format!("{id}.local"), attributes: vec![], total: r.clone(), free: r }
}

fn framework(name: &str, weight: f64, cpus: f64) -> FrameworkInfo {
    FrameworkInfo {
        name: name.into(),
        role: "*".into(),
        weight,
        quota: None,
        allocated: Resources { cpus, mem_mb: 0.0, disk_mb: 0.0, ports: vec![], scalars: vec![] },
        filters: vec![],
        suppressed: false,
    }
}

#[test]
fn drf() {
    let AnyPlugin::Allocator(p) = load(PluginKind::Allocator, shoal_artifacts::DRF) else { unreachable!() };
    let agents =
        vec![agent("a1", 4.0, 4096.0), agent("a2", 4.0, 4096.0), agent("a3", 4.0, 4096.0), agent("a4", 4.0, 4096.0)];
    let pairs = |snapshot: &ClusterSnapshot| -> Vec<(String, String)> {
        shoal_abi::allocate(&p, snapshot).expect("allocate").into_iter().map(|o| (o.framework, o.agent_id)).collect()
    };
    let own = |v: &[(&str, &str)]| v.iter().map(|(f, a)| (f.to_string(), a.to_string())).collect::<Vec<_>>();

    // "a" already holds half the cluster's cpus: "b" gets agents until it is as poor, then
    // ties go by name.
    let mut snap = ClusterSnapshot {
        now_ms: 1_000,
        agents: agents.clone(),
        frameworks: vec![framework("a", 1.0, 8.0), framework("b", 1.0, 0.0)],
    };
    assert_eq!(pairs(&snap), own(&[("b", "a1"), ("b", "a2"), ("a", "a3"), ("b", "a4")]));

    // Weight 0.5 doubles b's share: after one agent b is as "rich" as a.
    snap.frameworks[1].weight = 0.5;
    assert_eq!(pairs(&snap), own(&[("b", "a1"), ("a", "a2"), ("b", "a3"), ("a", "a4")]));
    snap.frameworks[1].weight = 1.0;

    // A decline filter on a1 sends a1 elsewhere; an expired one does not.
    snap.frameworks[1].filters = vec![DeclineFilter { agent_id: "a1".into(), until_ms: 2_000 }];
    assert_eq!(pairs(&snap)[0], ("a".to_string(), "a1".to_string()));
    snap.frameworks[1].filters[0].until_ms = 500;
    assert_eq!(pairs(&snap)[0], ("b".to_string(), "a1".to_string()));

    // Suppressed frameworks get nothing.
    snap.frameworks[1].suppressed = true;
    assert!(pairs(&snap).iter().all(|(f, _)| f == "a"));
    snap.frameworks[1].suppressed = false;

    // Quota caps what is offered: "a" may hold 9 cpus and holds 8.
    snap.frameworks[0].quota = Some(Resources { cpus: 9.0, mem_mb: 1e9, disk_mb: 1e9, ports: vec![], scalars: vec![] });
    let offers = shoal_abi::allocate(&p, &snap).expect("allocate");
    let to_a: Vec<_> = offers.iter().filter(|o| o.framework == "a").collect();
    assert_eq!(to_a.len(), 1);
    assert_eq!(to_a[0].resources.cpus, 1.0);

    // Offers never exceed an agent's free resources, and every agent with free resources is offered once.
    assert_eq!(offers.len(), 4);
    for o in &offers {
        let a = agents.iter().find(|a| a.id == o.agent_id).expect("known agent");
        assert!(o.resources.cpus <= a.free.cpus && o.resources.mem_mb <= a.free.mem_mb);
    }

    // No frameworks or no agents: no offers.
    assert!(
        shoal_abi::allocate(&p, &ClusterSnapshot { now_ms: 0, agents: agents.clone(), frameworks: vec![] })
            .expect("allocate")
            .is_empty()
    );
    assert!(
        shoal_abi::allocate(&p, &ClusterSnapshot { now_ms: 0, agents: vec![], frameworks: snap.frameworks.clone() })
            .expect("allocate")
            .is_empty()
    );
}

#[test]
fn binpack() {
    let AnyPlugin::Allocator(p) = load(PluginKind::Allocator, shoal_artifacts::BINPACK) else { unreachable!() };
    let mut a2 = agent("a2", 4.0, 4096.0);
    a2.free.cpus = 1.0; // 75 % used: the fullest
    let mut a3 = agent("a3", 4.0, 4096.0);
    a3.free.cpus = 3.0;
    let full = {
        let mut a = agent("a4", 4.0, 4096.0);
        a.free.cpus = 0.0;
        a
    };
    let agents = vec![agent("a1", 4.0, 4096.0), a2, a3, full];
    let snap = ClusterSnapshot {
        now_ms: 1_000,
        agents: agents.clone(),
        frameworks: vec![framework("a", 1.0, 0.0), framework("b", 1.0, 0.0)],
    };
    let pairs: Vec<(String, String)> =
        shoal_abi::allocate(&p, &snap).expect("allocate").into_iter().map(|o| (o.framework, o.agent_id)).collect();
    // One agent per framework, fullest first; a full agent is never offered.
    assert_eq!(pairs, vec![("a".to_string(), "a2".to_string()), ("b".to_string(), "a3".to_string())]);
    // A declined agent goes to the next fullest.
    let mut snap2 = snap.clone();
    snap2.frameworks[0].filters = vec![DeclineFilter { agent_id: "a2".into(), until_ms: 5_000 }];
    let first = shoal_abi::allocate(&p, &snap2).expect("allocate");
    assert_eq!((first[0].framework.as_str(), first[0].agent_id.as_str()), ("a", "a3"));
    // Suppressed frameworks get nothing; no agents, no offers.
    snap2.frameworks[0].suppressed = true;
    snap2.frameworks[1].suppressed = true;
    assert!(shoal_abi::allocate(&p, &snap2).expect("allocate").is_empty());
}

#[test]
fn service() {
    use shoal_abi::scheduling::{OfferInfo, Operation};
    use shoal_abi::{FrameworkInput, FrameworkOutput, HttpRequest, PortRange};
    use shoal_runtime::{MemoryKv, PluginScope};
    let scope =
        PluginScope { kv: Some(Arc::new(MemoryKv::default())), ..PluginScope::detached("framework", "service", "1") };
    let AnyPlugin::Framework(p) = AnyPlugin::load(
        crate::runtime(),
        PluginKind::Framework,
        shoal_artifacts::SERVICE,
        scope,
        PluginKind::Framework.default_limits(),
    )
    .expect("service loads") else {
        unreachable!()
    };
    let call = |input: FrameworkInput<'_>| shoal_abi::framework_call(&p, "", input).expect("call");
    let request = |method: &str, path: &str, body: &str| HttpRequest {
        method: method.into(),
        path: path.into(),
        query: String::new(),
        headers: vec![],
        body: body.as_bytes().to_vec(),
    };
    // A bad definition is refused with the field named.
    let FrameworkOutput::Response(r) =
        call(FrameworkInput::Request(&request("PUT", "/apps/web", r#"{"id":"web","cmd":"x","cpus":-1}"#)))
    else {
        unreachable!()
    };
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("cpus"));
    // Three instances spread over two offers, each with one exact port of its offer.
    let FrameworkOutput::Response(r) = call(FrameworkInput::Request(&request(
        "PUT",
        "/apps/web",
        r#"{"id":"web","instances":3,"cmd":"sleep 60","cpus":0.5,"mem":64,"ports":1}"#,
    ))) else {
        unreachable!()
    };
    assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.body));
    let offer = |id: &str, begin: u16| OfferInfo {
        id: id.into(),
        agent_id: format!("agent-{id}"),
        hostname: format!("host-{id}"),
        attributes: vec![],
        resources: Resources {
            cpus: 4.0,
            mem_mb: 4096.0,
            disk_mb: 0.0,
            ports: vec![PortRange { begin, end: begin + 9 }],
            scalars: vec![],
        },
    };
    let offers = [offer("1", 31000), offer("2", 32000)];
    let FrameworkOutput::Operations(ops) = call(FrameworkInput::Offers(&offers)) else { unreachable!() };
    let launched: Vec<(String, usize)> = ops
        .iter()
        .filter_map(|o| match o {
            Operation::Launch(l) => Some((l.offer_id.clone(), l.tasks.len())),
            _ => None,
        })
        .collect();
    assert_eq!(launched.iter().map(|(_, n)| n).sum::<usize>(), 3, "{ops:?}");
    assert_eq!(launched.len(), 2, "spread over both offers: {ops:?}");
}

#[test]
fn batch() {
    use shoal_abi::scheduling::Operation;
    use shoal_abi::{FrameworkInput, FrameworkOutput, HttpRequest};
    use shoal_runtime::{MemoryKv, PluginScope};
    let scope =
        PluginScope { kv: Some(Arc::new(MemoryKv::default())), ..PluginScope::detached("framework", "batch", "1") };
    let AnyPlugin::Framework(p) = AnyPlugin::load(
        crate::runtime(),
        PluginKind::Framework,
        shoal_artifacts::BATCH,
        scope,
        PluginKind::Framework.default_limits(),
    )
    .expect("batch loads") else {
        unreachable!()
    };
    let call = |input: FrameworkInput<'_>| shoal_abi::framework_call(&p, "", input).expect("call");
    let put = |body: &str| HttpRequest {
        method: "PUT".into(),
        path: "/jobs/report".into(),
        query: String::new(),
        headers: vec![],
        body: body.as_bytes().to_vec(),
    };
    let FrameworkOutput::Response(r) = call(FrameworkInput::Request(&put(r#"{"cmd":"true","schedule":"99 * * * *"}"#)))
    else {
        unreachable!()
    };
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("minute"));
    let FrameworkOutput::Response(r) = call(FrameworkInput::Request(&put(r#"{"cmd":"true","max_retries":1}"#))) else {
        unreachable!()
    };
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let offer = shoal_abi::scheduling::OfferInfo {
        id: "o1".into(),
        agent_id: "a1".into(),
        hostname: "h1".into(),
        attributes: vec![],
        resources: Resources { cpus: 1.0, mem_mb: 512.0, disk_mb: 0.0, ports: vec![], scalars: vec![] },
    };
    let FrameworkOutput::Operations(ops) = call(FrameworkInput::Offers(std::slice::from_ref(&offer))) else {
        unreachable!()
    };
    assert!(
        matches!(ops.as_slice(), [Operation::Launch(l)] if l.tasks.len() == 1 && l.tasks[0].task_id == "report.r1.a1"),
        "{ops:?}"
    );
}

/// The six default routers ignore `on-complete` and say so (`route-request.completions(false)`),
/// so the gateway skips that call; a router that says nothing (the hostile test router on a
/// harmless path) keeps getting it.
#[test]
fn default_routers_decline_completions() {
    let t = table(&[1, 1, 1], &up(3));
    for (name, bytes) in [
        ("round-robin", shoal_artifacts::ROUND_ROBIN),
        ("random", shoal_artifacts::RANDOM),
        ("source-hash", shoal_artifacts::SOURCE_HASH),
        ("weighted-round-robin", shoal_artifacts::WEIGHTED_ROUND_ROBIN),
        ("weighted-random", shoal_artifacts::WEIGHTED_RANDOM),
        ("least-connections", shoal_artifacts::LEAST_CONNECTIONS),
    ] {
        let p = router(bytes);
        let routed = shoal_abi::route_full(&p, &t, &mut request("192.0.2.1")).expect("route");
        assert!(routed.pick.is_some(), "{name}: {routed:?}");
        assert!(!routed.wants_complete, "{name} should decline completions: {routed:?}");
    }
    let silent = router(shoal_artifacts::HOSTILE_ROUTER);
    let routed = shoal_abi::route_full(&silent, &t, &mut request("192.0.2.1")).expect("route");
    assert_eq!(routed, shoal_abi::Routed { pick: Some(0), wants_complete: true });
}
