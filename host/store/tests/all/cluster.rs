//! The store as a cluster on the in-process bus: a coordinator (the master's part), store nodes
//! with real RocksDB shards, and clients routing by the map. Moves run while writers and readers
//! keep going; every acknowledged write must be readable afterwards, never stale, versions
//! monotonic per key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use shoal_bus::{LocalBus, SharedBus};
use shoal_store::client::StoreClient;
use shoal_store::coordinator::{Coordinator, MoveStatus};
use shoal_store::node::StoreNode;
use shoal_store::{Durability, PutOptions, Store, StoreError};
use shoal_testkit::eventually;

struct Cluster {
    bus: SharedBus,
    coordinator: Arc<Coordinator>,
    dir: tempfile::TempDir,
    nodes: BTreeMap<String, tokio::task::JoinHandle<()>>,
}

impl Cluster {
    async fn new(initial_shards: u32) -> Cluster {
        shoal_testkit::init_tracing();
        let bus: SharedBus = Arc::new(LocalBus::new());
        let dir = tempfile::tempdir().expect("tempdir");
        let coordinator = crate::coordinator_of(&bus, crate::local_state(dir.path()), initial_shards, 1, 1);
        tokio::spawn(coordinator.clone().run());
        Cluster { bus, coordinator, dir, nodes: BTreeMap::new() }
    }

    async fn start_node(&mut self, id: &str) {
        let store = Store::open_node(&self.dir.path().join(id), id, Durability::Wal).expect("open node");
        let node = StoreNode::new(store, self.bus.clone()).expect("store node");
        let handle = tokio::spawn(async move {
            let _ = node.run().await;
        });
        self.nodes.insert(id.to_owned(), handle);
        let coordinator = self.coordinator.clone();
        eventually(&format!("store node {id} to register"), Duration::from_secs(10), || {
            let status = coordinator.status();
            async move { status.nodes.iter().any(|n| n.node == id && n.alive).then_some(()) }
        })
        .await;
    }

    /// Aborts node `id` and waits until its task is gone (and with it the node's subscriptions).
    async fn stop_node(&mut self, id: &str) {
        if let Some(handle) = self.nodes.remove(id) {
            handle.abort();
            let _ = handle.await;
        }
    }

    fn client(&self) -> Arc<StoreClient> {
        StoreClient::new(self.bus.clone(), None)
    }

    async fn wait_for_move(&self, id: u64) -> MoveStatus {
        let coordinator = self.coordinator.clone();
        eventually("the move to end", Duration::from_secs(60), || {
            let status = coordinator.status();
            async move { status.last_move.filter(|m| m.id == id) }
        })
        .await
    }
}

/// A writer owns its keys: after each acknowledged put it reads the key back and must see exactly
/// what it wrote, at exactly the acknowledged version (no lost, stale or reordered write). It
/// returns the last acknowledged value and version of every key.
async fn writer(
    client: Arc<StoreClient>,
    name: String,
    keys: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> BTreeMap<String, (String, u64)> {
    let mut last: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        for k in 0..keys {
            let key = format!("{name}/{k}");
            let value = format!("{name}-{k}-{round}");
            let version = client.put("load", &key, value.as_bytes(), PutOptions::default()).await.expect("put");
            if let Some((_, previous)) = last.get(&key) {
                assert!(version > *previous, "{key}: version {version} after {previous}");
            }
            let read = client.get("load", &key).await.expect("get").expect("a written key is there");
            assert_eq!(String::from_utf8_lossy(&read.value), value, "{key} read back stale");
            assert_eq!(read.version, version, "{key} read back at another version");
            last.insert(key, (value, version));
            acked.fetch_add(1, Ordering::Relaxed);
        }
    }
    last
}

/// Waits until the writers have acknowledged `writes` more writes than when it was called: the
/// load is running on the current map.
async fn load_progress(acked: &AtomicU64, writes: u64, what: &str) {
    let from = acked.load(Ordering::Relaxed);
    eventually(what, Duration::from_secs(20), || {
        std::future::ready((acked.load(Ordering::Relaxed) >= from + writes).then_some(()))
    })
    .await;
}

async fn count_all(client: &StoreClient, namespace: &str) -> BTreeMap<String, (Vec<u8>, u64)> {
    let mut all = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = client.list(namespace, "", cursor.as_deref(), 1000).await.expect("list");
        for e in page.entries {
            assert!(all.insert(e.key.clone(), (e.value, e.version)).is_none(), "{} listed twice", e.key);
        }
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return all,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_out_and_in_under_load_lose_nothing() {
    let mut cluster = Cluster::new(2).await;
    cluster.start_node("a").await;
    let client = cluster.client();
    eventually("the first map", Duration::from_secs(10), || {
        let map = cluster.coordinator.map();
        async move { (map.shard_count() == 2).then_some(()) }
    })
    .await;

    // Keys that never change: a reader checks them all through the moves.
    let fixed = 3000;
    for i in 0..fixed {
        client.put("fixed", &format!("k{i}"), format!("v{i}").as_bytes(), PutOptions::default()).await.expect("put");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(writer(cluster.client(), format!("w{w}"), 50, stop.clone(), acked.clone())))
        .collect();
    let reader = {
        let (client, stop) = (cluster.client(), stop.clone());
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in (0..fixed).step_by(7) {
                    let entry = client.get("fixed", &format!("k{i}")).await.expect("get").expect("fixed key present");
                    assert_eq!(entry.value, format!("v{i}").into_bytes(), "fixed key k{i}");
                    reads += 1;
                }
            }
            reads
        })
    };

    // Grow onto a second node while the load runs.
    cluster.start_node("b").await;
    load_progress(&acked, 200, "the writers to write before the scale-out").await;
    let started = cluster.coordinator.scale_out(Some("b".into())).await.expect("scale out");
    assert_eq!((started.from_shards, started.to_shards), (2, 3));
    // One move at a time.
    assert!(cluster.coordinator.scale_out(None).await.is_err(), "a second move is refused while one runs");
    let done = cluster.wait_for_move(started.id).await;
    assert_eq!(done.phase, "finished", "move failed: {:?}", done.error);
    assert!(done.freeze_ms.is_some());
    let map = cluster.coordinator.map();
    assert_eq!(map.shard_count(), 3);
    assert_eq!(map.node_of(2), Some("b"));
    load_progress(&acked, 200, "the writers to write on the map of 3 shards").await;

    // And back in.
    let started = cluster.coordinator.scale_in().await.expect("scale in");
    assert_eq!((started.from_shards, started.to_shards), (3, 2));
    let done = cluster.wait_for_move(started.id).await;
    assert_eq!(done.phase, "finished", "move failed: {:?}", done.error);
    load_progress(&acked, 200, "the writers to write on the map of 2 shards again").await;

    stop.store(true, Ordering::Relaxed);
    let mut last = BTreeMap::new();
    for w in writers {
        last.extend(w.await.expect("writer"));
    }
    let reads = reader.await.expect("reader");
    assert!(acked.load(Ordering::Relaxed) > 200, "the writers made progress");
    assert!(reads > 100, "the reader made progress");

    // Everything acknowledged is there, once, at its last version; nothing else is.
    let fresh = cluster.client();
    let listed = count_all(&fresh, "load").await;
    assert_eq!(listed.len(), last.len());
    for (key, (value, version)) in &last {
        let (v, ver) = listed.get(key).expect("listed");
        assert_eq!(String::from_utf8_lossy(v), *value, "{key}");
        assert_eq!(ver, version, "{key}");
    }
    let fixed_listed = count_all(&fresh, "fixed").await;
    assert_eq!(fixed_listed.len(), fixed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_moves_only_the_keys_whose_hash_changed() {
    let mut cluster = Cluster::new(4).await;
    cluster.start_node("a").await;
    cluster.start_node("b").await;
    let client = cluster.client();
    eventually("the first map", Duration::from_secs(10), || {
        let map = cluster.coordinator.map();
        async move { (map.shard_count() == 4).then_some(()) }
    })
    .await;
    let n = 5000;
    let mut before = BTreeMap::new();
    for i in 0..n {
        let key = format!("key-{i}");
        let v = client.put("moves", &key, b"x", PutOptions::default()).await.expect("put");
        before.insert(key, v);
    }
    let started = cluster.coordinator.scale_out(Some("b".into())).await.expect("scale out");
    let done = cluster.wait_for_move(started.id).await;
    assert_eq!(done.phase, "finished", "{:?}", done.error);
    let expected = before.keys().filter(|k| shoal_keyspace::shard_of("moves", k, 5) == 4).count();
    // Only the moving keys were copied (the catch-up finds no writes here).
    assert_eq!(done.keys_copied, expected as u64, "copied exactly the keys whose jump hash changed");
    let share = expected as f64 / n as f64;
    assert!((share - 0.2).abs() < 0.03, "about 1/5 of the keys moved: {share}");
    // Versions survive the move, and a new write of a moved key gets a higher one.
    let listed = count_all(&client, "moves").await;
    for (key, version) in &before {
        assert_eq!(listed.get(key).map(|e| e.1), Some(*version), "{key} kept its version");
    }
    let moved = before.keys().find(|k| shoal_keyspace::shard_of("moves", k, 5) == 4).expect("a moved key");
    let v = client.put("moves", moved, b"y", PutOptions::default()).await.expect("put");
    assert!(v > before[moved]);
    // Compare-and-set against the version from before the move still works.
    let err = client
        .put("moves", moved, b"z", PutOptions { version: Some(before[moved]), ttl: None })
        .await
        .expect_err("stale version refused");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_down_fails_only_its_shards() {
    let mut cluster = Cluster::new(2).await;
    cluster.start_node("a").await;
    cluster.start_node("b").await;
    eventually("the first map", Duration::from_secs(10), || {
        let map = cluster.coordinator.map();
        async move { (map.shard_count() == 2).then_some(()) }
    })
    .await;
    let started = cluster.coordinator.scale_out(Some("b".into())).await.expect("scale out");
    let done = cluster.wait_for_move(started.id).await;
    assert_eq!(done.phase, "finished", "{:?}", done.error);
    let client = cluster.client();
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    for k in &keys {
        client.put("ns", k, b"v", PutOptions::default()).await.expect("put");
    }
    cluster.stop_node("b").await;
    let (mut served, mut refused) = (0, 0);
    for k in &keys {
        match client.get("ns", k).await {
            Ok(Some(_)) => {
                assert_ne!(shoal_keyspace::shard_of("ns", k, 3), 2);
                served += 1;
            }
            Err(StoreError::Unavailable { shard, node, .. }) => {
                assert_eq!((shard, node.as_str()), (2, "b"));
                refused += 1;
            }
            other => panic!("{k}: {other:?}"),
        }
    }
    assert!(served > 0 && refused > 0, "served {served}, refused {refused}");
    // A move needs its participants: refused while b is away? The map still lists b; scale-in
    // would move b's keys, which nobody can read, so it must fail rather than lose them.
    let started = cluster.coordinator.scale_in().await.expect("scale in starts");
    let done = cluster.wait_for_move(started.id).await;
    assert_eq!(done.phase, "failed", "a move whose source is down fails");
    assert_eq!(cluster.coordinator.map().shard_count(), 3, "the map did not change");
    // The shards on a keep serving.
    let k = keys.iter().find(|k| shoal_keyspace::shard_of("ns", k, 3) != 2).expect("a key on a");
    assert!(client.get("ns", k).await.expect("get").is_some());
}
