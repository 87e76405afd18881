//! Fencing with leader terms, against a real store node on the in-process bus: admin requests and
//! shard maps of a term lower than the highest the node has seen (a deposed master's) are
//! refused, also after the node restarts on the same directory; a newer leader's map replaces a
//! deposed leader's even at a lower epoch; clients' reads and writes go on throughout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_bus::{LocalBus, SharedBus};
use shoal_store::client::StoreClient;
use shoal_store::coordinator::Coordinator;
use shoal_store::node::StoreNode;
use shoal_store::wire::{self, Admin, Channel, Reply, Request, WireError};
use shoal_store::{Durability, PutOptions, ShardMap, Store};
use shoal_testkit::eventually;
use tokio::task::JoinHandle;

const PATIENCE: Duration = Duration::from_secs(20);

/// The coordinator of a master of leader term `term`, keeping its map in `state`, serving the
/// bus until its task is aborted.
fn coordinator(bus: &SharedBus, state: &Arc<shoal_state::StateDb>, term: u64) -> (Arc<Coordinator>, JoinHandle<()>) {
    let coordinator = crate::coordinator_of(bus, state.clone(), 2, 1, term);
    let task = tokio::spawn({
        let coordinator = coordinator.clone();
        async move {
            let _ = coordinator.run().await;
        }
    });
    (coordinator, task)
}

/// Store node `a` on `dir`, serving the bus until its task is aborted. Waits for an earlier node
/// on `dir` in this process to have closed its shards (RocksDB locks them).
async fn node(bus: &SharedBus, dir: &std::path::Path) -> (Arc<StoreNode>, JoinHandle<()>) {
    let store = eventually("the shards to be free to open", PATIENCE, || {
        std::future::ready(Store::open_node(dir, "a", Durability::Wal).ok())
    })
    .await;
    let node = StoreNode::new(store, bus.clone()).expect("store node");
    let task = tokio::spawn({
        let node = node.clone();
        async move {
            let _ = node.run().await;
        }
    });
    (node, task)
}

async fn stop(task: JoinHandle<()>) {
    task.abort();
    let _ = task.await;
}

/// `command` at `term` to node `a`'s admin subject, as the master sends it, until the node
/// answers (a node just started may not have subscribed yet).
async fn admin(bus: &SharedBus, term: u64, command: Admin) -> Reply {
    let payload = Bytes::from(wire::encode(&Request::Admin { term, command }));
    let reply = eventually("node a to answer on its admin subject", PATIENCE, || {
        let (bus, payload) = (bus.clone(), payload.clone());
        async move { bus.request(&Channel::Admin.subject("a"), payload, Duration::from_secs(5)).await.ok() }
    })
    .await;
    wire::decode(&reply.payload).expect("a reply")
}

fn map(term: u64, epoch: u64) -> ShardMap {
    ShardMap { term, epoch, shards: vec!["a".into(), "a".into()], ..ShardMap::default() }
}

fn served(node: &StoreNode) -> (u64, u64) {
    let map = node.store().shard_map();
    (map.term, map.epoch)
}

async fn wait_for_map(node: &StoreNode, want: (u64, u64)) {
    eventually(&format!("node a to serve the map of (term, epoch) {want:?}"), PATIENCE, || {
        std::future::ready((served(node) == want).then_some(()))
    })
    .await;
}

/// A client write and read back: the data plane works, whatever the terms.
async fn write_and_read(bus: &SharedBus, value: &str) {
    let client = StoreClient::new(bus.clone(), None);
    let version = client.put("app", "k", value.as_bytes(), PutOptions::default()).await.expect("put");
    let entry = client.get("app", "k").await.expect("get").expect("the key");
    assert_eq!((entry.value.as_slice(), entry.version), (value.as_bytes(), version));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_node_refuses_a_deposed_masters_commands_and_maps() {
    shoal_testkit::init_tracing();
    let bus: SharedBus = Arc::new(LocalBus::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let node_dir = dir.path().join("a");
    let maps = shoal_state::StateDb::open_local(&dir.path().join("master"), &[shoal_store::coordinator::STORE_TABLE])
        .expect("the master's state");
    let (_, leader_of_term_3) = coordinator(&bus, &maps, 3);
    let (a, running) = node(&bus, &node_dir).await;
    // The node learns the leader's term from its registration's map.
    wait_for_map(&a, (3, 1)).await;
    assert_eq!(a.highest_term(), 3);
    write_and_read(&bus, "under term 3").await;

    // A command and a map of term 2 are refused; the same of term 3 are obeyed.
    let stale = admin(&bus, 2, Admin::Count { shard: 0 }).await;
    assert!(matches!(stale, Reply::Error(WireError::StaleTerm(2, 3))), "{stale:?}");
    assert!(matches!(admin(&bus, 3, Admin::Count { shard: 0 }).await, Reply::Count(_)));
    let stale = admin(&bus, 2, Admin::Map { map: map(2, 9) }).await;
    assert!(matches!(stale, Reply::Error(WireError::StaleTerm(2, 3))), "{stale:?}");
    assert_eq!(served(&a), (3, 1), "a stale map was taken");
    // An admin request of term 3 carrying a map of term 2 does not slip it in either.
    let stale = admin(&bus, 3, Admin::Map { map: map(2, 9) }).await;
    assert!(matches!(stale, Reply::Error(WireError::StaleTerm(2, 3))), "{stale:?}");
    assert!(matches!(admin(&bus, 3, Admin::Map { map: map(3, 5) }).await, Reply::Ok));
    assert_eq!(served(&a), (3, 5));
    let stale = admin(&bus, 2, Admin::CreateShard { shard: 7 }).await;
    assert!(matches!(stale, Reply::Error(WireError::StaleTerm(2, 3))), "{stale:?}");
    assert_eq!(a.store().held(), [0, 1], "a refused command created a shard");

    // The leader of term 3 is deposed; the leader of term 4 has the map at epoch 1 (the epoch-5
    // map never reached it). Its map replaces the deposed leader's when the node registers.
    stop(leader_of_term_3).await;
    let (_, leader_of_term_4) = coordinator(&bus, &maps, 4);
    wait_for_map(&a, (4, 1)).await;
    assert_eq!(a.highest_term(), 4);
    let stale = admin(&bus, 3, Admin::Map { map: map(3, 6) }).await;
    assert!(matches!(stale, Reply::Error(WireError::StaleTerm(3, 4))), "{stale:?}");
    let stale = admin(&bus, 3, Admin::DropShard { shard: 1 }).await;
    assert!(matches!(stale, Reply::Error(WireError::StaleTerm(3, 4))), "{stale:?}");
    assert_eq!((served(&a), a.store().held()), ((4, 1), vec![0, 1]));
    write_and_read(&bus, "under term 4").await;

    // The node restarts on the same directory: it still refuses the deposed leader.
    stop(running).await;
    drop(a);
    let (a, _running) = node(&bus, &node_dir).await;
    assert_eq!(a.highest_term(), 4, "the term was forgotten across a restart");
    let stale = admin(&bus, 3, Admin::Count { shard: 0 }).await;
    assert!(matches!(stale, Reply::Error(WireError::StaleTerm(3, 4))), "{stale:?}");
    wait_for_map(&a, (4, 1)).await;
    assert!(matches!(admin(&bus, 4, Admin::Count { shard: 0 }).await, Reply::Count(_)));
    write_and_read(&bus, "after the restart").await;
    stop(leader_of_term_4).await;
}
